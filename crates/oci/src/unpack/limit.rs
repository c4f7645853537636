//! How much disk an image's layers may unpack to.
//!
//! Layers are untrusted: a 135 KB zstd layer can expand to a terabyte. Each
//! entry is charged, before a byte of it is written, its apparent size in
//! 4 KiB blocks (at least one block: every entry costs an inode and a
//! directory slot), against a budget shared by every layer of one image.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The default budget of one image: 64 GiB unpacked.
pub const DEFAULT_UNPACKED_LIMIT: u64 = 64 << 30;

const BLOCK: u64 = 4096;

/// A budget shared by the clones of one value (the layers of one image).
#[derive(Debug, Clone)]
pub struct SizeLimit {
    limit: u64,
    used: Arc<AtomicU64>,
}

/// Charging an entry went over the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    pub limit: u64,
}

impl SizeLimit {
    pub fn new(limit: u64) -> SizeLimit {
        SizeLimit {
            limit,
            used: Arc::default(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges an entry of `size` bytes.
    pub fn charge(&self, size: u64) -> Result<(), OverLimit> {
        let cost = size.div_ceil(BLOCK).max(1).saturating_mul(BLOCK);
        let over = OverLimit { limit: self.limit };
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(cost).filter(|total| *total <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| over)
    }
}

impl Default for SizeLimit {
    fn default() -> Self {
        SizeLimit::new(DEFAULT_UNPACKED_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cost_whole_blocks_and_clones_share_the_budget() {
        let l = SizeLimit::new(3 * BLOCK);
        let layer2 = l.clone();
        l.charge(0).unwrap();
        layer2.charge(BLOCK + 1).unwrap();
        assert_eq!(l.used(), 3 * BLOCK);
        assert_eq!(l.charge(1), Err(OverLimit { limit: 3 * BLOCK }));
        assert_eq!(layer2.used(), 3 * BLOCK, "a refused charge costs nothing");
        assert!(SizeLimit::new(1 << 40).charge(u64::MAX).is_err());
    }
}
