//! x0tta6bl4's native data plane.
//!
//! Pure-Rust cores (no Python, no `unsafe`): [`replay`] (RFC 6479 window), [`aead`]
//! (AES-256-GCM via ring), [`transport`] (the transport session state machine), [`frames`]
//! (inner frames, zero-copy), [`offload`] (TUN segmentation and coalescing). The PyO3 layer in
//! `py` is the only FFI edge; it is compiled with the `python` feature (the fuzz targets build
//! without it).

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod aead;
pub mod bench;
pub mod frames;
pub mod offload;
pub mod replay;
pub mod transport;

#[cfg(feature = "python")]
mod py;

pub mod dataplane;
pub mod sys;
