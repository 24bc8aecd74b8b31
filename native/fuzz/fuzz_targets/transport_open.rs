//! The transport session's open on arbitrary datagrams (and a valid one with arbitrary
//! tampering): never panics; only authentic packets open; the replay window never lets one
//! through twice.
#![no_main]
use libfuzzer_sys::fuzz_target;
use x0tta6bl4_native::transport::{Keys, Limits, SessionCore};

fuzz_target!(|data: &[u8]| {
    let (a, b) = ([7u8; 32], [9u8; 32]);
    let mut sender = SessionCore::new(Limits::default()).unwrap();
    let mut receiver = SessionCore::new(Limits::default()).unwrap();
    sender.install(&Keys { send_key: &a, recv_key: &b, local_index: 1, remote_index: 2, is_initiator: false }, 0.0).unwrap();
    receiver.install(&Keys { send_key: &b, recv_key: &a, local_index: 2, remote_index: 1, is_initiator: false }, 0.0).unwrap();
    // Arbitrary bytes: rejected (a forgery of a 128-bit tag is not found by a fuzzer).
    let mut junk = data.to_vec();
    assert!(receiver.open_in_place(&mut junk, 1.0).is_err());
    // A genuine packet with the input XORed over it: opens only if unchanged, and only once.
    let genuine = sender.seal(data.get(..data.len().min(1400)).unwrap_or(&[]), 1.0).unwrap();
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
