//! RFC 6479 anti-replay sliding window (wireguard-go `replay/`; the same rules as
//! `x0tta6bl4.protocol.replay.ReplayFilter`).
//!
//! A ring of [`RING_BLOCKS`] 64-bit blocks; bit `c mod 64` of block `(c / 64) mod RING_BLOCKS`
//! records counter `c`. A counter above the highest seen clears the blocks it enters and is
//! accepted; otherwise it is accepted iff it is at most [`WINDOW_SIZE`] behind the highest and
//! its bit is clear. Counters at or above the caller's `limit` are never accepted.
//!
//! Call it only after the packet's tag verified. Not thread-safe: the owning keypair
//! serialises calls.

/// 64-bit blocks in the ring (`REPLAY_RING_BLOCKS`).
pub const RING_BLOCKS: usize = 128;
const BLOCK_MASK: usize = RING_BLOCKS - 1;
/// Counters this far behind the highest one seen are still accepted (`REPLAY_WINDOW_SIZE`).
pub const WINDOW_SIZE: u64 = (RING_BLOCKS as u64 - 1) * 64;

/// The window of one receive key.
#[derive(Clone)]
pub struct ReplayFilter {
    last: u64,
    ring: [u64; RING_BLOCKS],
}

impl Default for ReplayFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayFilter {
    pub const fn new() -> Self {
        Self { last: 0, ring: [0; RING_BLOCKS] }
    }

    /// Forget every counter seen.
    pub fn reset(&mut self) {
        self.last = 0;
        self.ring = [0; RING_BLOCKS];
    }

    /// Record `counter`; true if it is new, inside the window and below `limit`.
    #[inline]
    pub fn validate_counter(&mut self, counter: u64, limit: u64) -> bool {
        if counter >= limit {
            return false;
        }
        let index_block = counter >> 6;
        if counter > self.last {
            // Move the window: the blocks it enters are cleared (at most the whole ring).
            let current = self.last >> 6;
            let diff = (index_block - current).min(RING_BLOCKS as u64);
            for i in 1..=diff {
                self.ring[((current + i) as usize) & BLOCK_MASK] = 0;
            }
            self.last = counter;
        } else if self.last - counter > WINDOW_SIZE {
            return false;
        }
        let slot = &mut self.ring[(index_block as usize) & BLOCK_MASK];
        let bit = 1u64 << (counter & 63);
        if *slot & bit != 0 {
            return false;
        }
        *slot |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_reorder_replay_and_too_old() {
        let mut f = ReplayFilter::new();
        let limit = u64::MAX;
        for c in 0..20_000u64 {
            assert!(f.validate_counter(c, limit));
        }
        assert!(!f.validate_counter(19_999, limit));
        assert!(!f.validate_counter(19_999 - WINDOW_SIZE - 1, limit));
        let mut g = ReplayFilter::new();
        assert!(g.validate_counter(WINDOW_SIZE + 10, limit));
        assert!(g.validate_counter(10, limit));
        assert!(!g.validate_counter(9, limit));
        assert!(!g.validate_counter(10, limit));
        assert!(!g.validate_counter(limit, limit));
    }
}
