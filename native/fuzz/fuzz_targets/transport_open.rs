//! The transport session's open on arbitrary datagrams (and a valid one with arbitrary
//! tampering): never panics; only authentic packets open (arbitrary bytes open only if they
//! are a datagram the key holder sealed: the fuzzer's dictionary does learn genuine
//! datagrams of earlier runs, the keys being fixed); the replay window never lets one through
//! twice.
#![no_main]
use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use x0tta6bl4_native::transport::{Keys, Limits, SessionCore};

static SEALED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = ([7u8; 32], [9u8; 32]);
    let mut sender = SessionCore::new(Limits::default()).unwrap();
    let mut receiver = SessionCore::new(Limits::default()).unwrap();
    sender.install(&Keys { send_key: &a, recv_key: &b, local_index: 1, remote_index: 2, is_initiator: false }, 0.0).unwrap();
    receiver.install(&Keys { send_key: &b, recv_key: &a, local_index: 2, remote_index: 1, is_initiator: false }, 0.0).unwrap();
    // Arbitrary bytes open only if they are a genuine datagram (a forgery of a 128-bit tag is
    // not found by a fuzzer).
    let mut junk = data.to_vec();
    if receiver.open_in_place(&mut junk, 1.0).is_ok() {
        let sealed = SEALED.lock().unwrap();
        assert!(sealed.as_ref().is_some_and(|s| s.contains(&digest(data))));
    }
    let mut receiver = SessionCore::new(Limits::default()).unwrap();
    receiver.install(&Keys { send_key: &b, recv_key: &a, local_index: 2, remote_index: 1, is_initiator: false }, 0.0).unwrap();
    // A genuine packet with the input XORed over it: opens only if unchanged, and only once.
    let genuine = sender.seal(data.get(..data.len().min(1400)).unwrap_or(&[]), 1.0).unwrap();
    SEALED.lock().unwrap().get_or_insert_with(HashSet::new).insert(digest(&genuine));
    let mut tampered = genuine.clone();
    for (i, x) in data.iter().enumerate().take(tampered.len()) {
        tampered[i] ^= x;
    }
    let changed = tampered != genuine;
    let opened = receiver.open_in_place(&mut tampered, 1.0).is_ok();
    assert!(!(opened && changed));
    let mut again = genuine.clone();
    let first = receiver.open_in_place(&mut again, 1.0).is_ok();
    let mut replay = genuine;
    assert!(!(first && receiver.open_in_place(&mut replay, 1.0).is_ok()));
});
