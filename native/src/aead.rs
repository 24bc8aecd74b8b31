//! AES-256-GCM through ring (`ring::aead`), with the transport's nonce construction
//! `0x00000000 ‖ counter u64` (big-endian). ring was chosen by measurement over aws-lc-rs and
//! RustCrypto `aes-gcm` (docs/transport.md, "Native data plane").

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Bytes of an AES-256-GCM key and tag.
pub const KEY_SIZE: usize = 32;
pub const TAG_SIZE: usize = 16;

/// One direction's cipher. Never printed: `Debug` is not implemented.
pub struct Cipher(LessSafeKey);

#[inline]
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl Cipher {
    /// `None` unless `key` is 32 bytes.
    pub fn new(key: &[u8]) -> Option<Self> {
        if key.len() != KEY_SIZE {
            return None;
        }
        UnboundKey::new(&AES_256_GCM, key).ok().map(|k| Cipher(LessSafeKey::new(k)))
    }

    /// Encrypt `buf[start..]` in place under `counter` with associated data `aad` and append
    /// the tag.
    #[inline]
    /// False only if ring refuses (a plaintext beyond GCM's limit: never for a datagram).
    pub fn seal_in_place(&self, counter: u64, aad: &[u8], buf: &mut Vec<u8>, start: usize) -> bool {
        if start > buf.len() {
            return false;
        }
        match self.0.seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut buf[start..]) {
            Ok(tag) => {
                buf.extend_from_slice(tag.as_ref());
                true
            }
            Err(_) => false,
        }
    }

    /// Verify and decrypt `ct_and_tag` in place; the plaintext length, or `None` if the tag
    /// does not verify.
    #[inline]
    pub fn open_in_place(&self, counter: u64, aad: &[u8], ct_and_tag: &mut [u8]) -> Option<usize> {
        self.0
            .open_in_place(nonce(counter), Aad::from(aad), ct_and_tag)
            .ok()
            .map(|pt| pt.len())
    }
}
