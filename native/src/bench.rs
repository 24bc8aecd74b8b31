//! Timing loops of `x0tta6bl4 bench session` (run with the GIL released): the session's
//! seal+open against the bare AEAD doing the same cryptographic work.

use crate::aead::Cipher;
use crate::transport::{Keys, Limits, SessionCore, HEADER_SIZE};
use std::time::Instant;

/// A confirmed (sender, receiver) pair from the given keys, as after a handshake.
pub fn session_pair(a: &[u8; 32], b: &[u8; 32], max_datagram_size: usize) -> (SessionCore, SessionCore) {
    let limits = Limits { max_datagram_size, ..Limits::default() };
    let mut receiver = SessionCore::new(limits).expect("valid limits");
    let mut sender = SessionCore::new(limits).expect("valid limits");
    receiver
        .install(&Keys { send_key: b, recv_key: a, local_index: 1, remote_index: 2, is_initiator: true }, 0.0)
        .expect("fresh keys");
    sender
        .install(&Keys { send_key: a, recv_key: b, local_index: 2, remote_index: 1, is_initiator: false }, 0.0)
        .expect("fresh keys");
    let mut keepalive = sender.seal(b"", 0.0).expect("current keypair");
    receiver.open_in_place(&mut keepalive, 0.0).expect("own keepalive opens");
    (sender, receiver)
}

/// Seconds for `packets` seal+open round trips of `payload` through a session pair: the
/// data plane's per-packet path (header, counters, keypair lookup, limits, replay window,
/// stats), with one reused buffer per direction as the I/O loop has.
pub fn time_session(sender: &mut SessionCore, receiver: &mut SessionCore, payload: &[u8], packets: u64) -> Result<f64, String> {
    let mut buf: Vec<u8> = Vec::with_capacity(HEADER_SIZE + payload.len() + 16);
    let start = Instant::now();
    for _ in 0..packets {
        buf.clear();
        buf.resize(HEADER_SIZE, 0);
        buf.extend_from_slice(payload);
        sender.seal_reserved(&mut buf, HEADER_SIZE, 1.0).map_err(|e| e.0)?;
        let opened = receiver.open_in_place(&mut buf, 1.0).map_err(|e| e.message)?;
        if opened.len != payload.len() {
            return Err("session round trip changed the payload".into());
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds for `packets` bare AES-256-GCM seal+open round trips: same copy into the buffer,
/// same nonce construction on both ends, 13-byte associated data, no session.
pub fn time_bare(cipher: &Cipher, payload: &[u8], packets: u64) -> Result<f64, String> {
    let mut buf: Vec<u8> = Vec::with_capacity(payload.len() + 16);
    let header = [4u8; HEADER_SIZE];
    let start = Instant::now();
    for counter in 0..packets {
        buf.clear();
        buf.extend_from_slice(payload);
        if !cipher.seal_in_place(counter, &header, &mut buf, 0) {
            return Err("seal failed".into());
        }
        match cipher.open_in_place(counter, &header, &mut buf) {
            Some(n) if n == payload.len() => {}
            _ => return Err("bare AEAD round trip changed the payload".into()),
        }
    }
    Ok(start.elapsed().as_secs_f64())
}
