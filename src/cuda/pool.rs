//! Graph-private memory. While a graph is captured, every buffer the captured code allocates
//! is carved from one device allocation that the graph owns (its arena), instead of becoming a
//! pair of memory nodes in the graph. A replay then launches kernels and GEMMs only, at fixed
//! addresses, and the graph's memory is reserved once, when it is captured.
//!
//! Reuse inside the arena is safe for the same reason stream-ordered allocation is: the device
//! runs everything on one stream, so a range freed by one captured operation and handed to a
//! later one is written only after every earlier use has finished. No other code is given arena
//! memory, so nothing outside the graph can be overwritten by a replay.
//!
//! The arena's size is learnt by capturing once: offsets are assigned as if the arena were
//! unbounded, the buffers that fall beyond the arena's capacity are ordinary stream allocations
//! (memory nodes, as without an arena), and the high-water mark of the offsets is the capacity
//! the next capture needs. A step allocates the same sizes in the same order every time, so the
//! second capture fits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{CudaBuffer, CudaDevice};
use crate::Result;

/// Every range is a multiple of this: enough for 16-byte vector accesses and cuBLASLt's
/// preferred 256-byte alignment (the stream allocator's own granularity is coarser).
pub const POOL_ALIGN: usize = 256;

/// Offsets into a region that grows on demand: best fit among the freed ranges, neighbours
/// merged, the top of the region given back when its last range is freed.
#[derive(Debug, Default)]
pub(crate) struct RangeAllocator {
    /// Freed ranges below `top`: offset → length, never two adjacent.
    free: BTreeMap<usize, usize>,
    /// End of the highest range in use.
    top: usize,
    /// Largest `top` ever: the capacity that holds every allocation made so far.
    high_water: usize,
}

impl RangeAllocator {
    /// The offset of a new range of `bytes` (rounded up to [`POOL_ALIGN`]).
    pub fn alloc(&mut self, bytes: usize) -> usize {
        let len = Self::rounded(bytes);
        // Best fit: the smallest freed range that holds it (lowest offset on ties).
        let best = self.free.iter().filter(|&(_, &l)| l >= len).min_by_key(|&(&o, &l)| (l, o)).map(|(&o, &l)| (o, l));
        if let Some((offset, l)) = best {
            self.free.remove(&offset);
            if l > len {
                self.free.insert(offset + len, l - len);
            }
            return offset;
        }
        let offset = self.top;
        self.top += len;
        self.high_water = self.high_water.max(self.top);
        offset
    }

    /// Returns the range at `offset` of `bytes` (as given to [`RangeAllocator::alloc`]).
    pub fn free(&mut self, offset: usize, bytes: usize) {
        let (mut start, mut end) = (offset, offset + Self::rounded(bytes));
        debug_assert!(end <= self.top, "freeing a range above the top");
        if let Some((&o, &l)) = self.free.range(..start).next_back() {
            debug_assert!(o + l <= start, "freeing a range twice");
            if o + l == start {
                self.free.remove(&o);
                start = o;
            }
        }
        if let Some(l) = self.free.remove(&end) {
            end += l;
        }
        if end == self.top {
            self.top = start;
        } else {
            self.free.insert(start, end - start);
        }
    }

    /// The capacity that holds every range allocated so far at its offset.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Bytes in ranges still allocated.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.top - self.free.values().sum::<usize>()
    }

    fn rounded(bytes: usize) -> usize {
        bytes.max(1).div_ceil(POOL_ALIGN) * POOL_ALIGN
    }
}

/// One captured graph's arena and the bookkeeping of its ranges.
pub(crate) struct GraphPool {
    ranges: Mutex<RangeAllocator>,
    /// The arena (None when the capacity is zero: the learning capture).
    arena: Option<CudaBuffer>,
    capacity: usize,
    /// Whether any buffer fell outside the arena.
    overflowed: std::sync::atomic::AtomicBool,
    /// Fill each buffer with 0xff bytes where the graph first gets it, so that a replay reading
    /// memory the step never wrote sees NaN (set for tests: `CASCADE_POISON_GRAPH_MEMORY=1`).
    poison: bool,
}

impl GraphPool {
    /// A pool with an arena of `capacity` bytes (allocated now, outside any capture).
    pub fn new(dev: &Arc<CudaDevice>, capacity: usize, poison: bool) -> Result<Arc<GraphPool>> {
        let arena = if capacity > 0 { Some(dev.alloc_stream(capacity)?) } else { None };
        Ok(Arc::new(GraphPool { ranges: Mutex::default(), arena, capacity, overflowed: false.into(), poison }))
    }

    /// A buffer of `bytes` for the capture in progress.
    pub fn alloc(self: &Arc<Self>, dev: &Arc<CudaDevice>, bytes: usize) -> Result<CudaBuffer> {
        let offset = self.lock().alloc(bytes);
        let len = RangeAllocator::rounded(bytes);
        let (ptr, overflow) = match &self.arena {
            Some(arena) if offset + len <= self.capacity => (arena.ptr() + offset as u64, None),
            // Beyond the arena (or no arena yet: the sizing capture): a stream allocation.
            _ => {
                self.overflowed.store(true, std::sync::atomic::Ordering::Relaxed);
                match dev.alloc_stream(bytes) {
                    Ok(b) => (b.ptr(), Some(Box::new(b))),
                    Err(e) => {
                        self.lock().free(offset, bytes);
                        return Err(e);
                    }
                }
            }
        };
        if self.poison {
            dev.memset(ptr, 0xff, bytes.max(1))?;
        }
        Ok(CudaBuffer { ptr, bytes: bytes.max(1), backing: super::Backing::Pool { pool: self.clone(), offset, _overflow: overflow } })
    }

    /// Gives back a buffer's range (its drop).
    pub fn release(&self, offset: usize, bytes: usize) {
        self.lock().free(offset, bytes);
    }

    /// Whether some buffer did not fit in the arena (the graph then has memory nodes).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The arena size that would have held every buffer of the capture.
    pub fn high_water(&self) -> usize {
        self.lock().high_water()
    }

    /// The arena's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RangeAllocator> {
        // A panic while the lock was held leaves the map consistent (every update is one call).
        self.ranges.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_reused_merged_and_returned_to_the_top() {
        let mut r = RangeAllocator::default();
        let a = r.alloc(1000); // 1024
        let b = r.alloc(256);
        let c = r.alloc(1);
        assert_eq!((a, b, c), (0, 1024, 1280));
        assert_eq!(r.high_water(), 1536);
        // A freed range is reused by a request that fits, split at its start.
        r.free(a, 1000);
        assert_eq!(r.alloc(300), 0);
        assert_eq!(r.alloc(700), 1536, "768 bytes do not fit the 512 left at 512");
        assert_eq!(r.alloc(500), 512);
        // Best fit: 256 bytes go to the 256-byte hole, not the larger one.
        r.free(0, 300);
        r.free(b, 256);
        assert_eq!(r.alloc(200), 1024);
        // Neighbours merge: freeing 512..1024 joins 0..512 into one 1024-byte hole.
        r.free(1536, 700);
        r.free(512, 500);
        assert_eq!(r.alloc(1024), 0);
        // Freeing the topmost range lowers the top, and the hole under it with it.
        r.free(0, 1024);
        r.free(c, 1);
        assert_eq!(r.in_use(), 256);
        r.free(1024, 200);
        assert_eq!(r.in_use(), 0);
        assert_eq!(r.alloc(4096), 0, "an empty region starts at 0 again");
        assert_eq!(r.high_water(), 4096);
    }

    /// A random sequence of allocations and frees (a step's pattern, with long-lived and
    /// short-lived buffers): ranges never overlap, `in_use` is exact, and replaying the same
    /// sequence gives the same offsets and the same high-water mark.
    #[test]
    fn random_sequences_never_overlap_and_replay_identically() {
        let run = |seed: u64| {
            let mut rng = crate::testing::TestRng::new(seed);
            let mut r = RangeAllocator::default();
            let mut live: Vec<(usize, usize)> = Vec::new();
            let mut offsets = Vec::new();
            for _ in 0..4000 {
                let u = rng.uniform();
                if live.is_empty() || u < 0.55 {
                    let bytes = 1 + (rng.uniform() * rng.uniform() * 300_000.0) as usize;
                    let o = r.alloc(bytes);
                    assert_eq!(o % POOL_ALIGN, 0);
                    for &(lo, lb) in &live {
                        let (end, lend) = (o + RangeAllocator::rounded(bytes), lo + RangeAllocator::rounded(lb));
                        assert!(end <= lo || lend <= o, "[{o}, {end}) overlaps [{lo}, {lend})");
                    }
                    live.push((o, bytes));
                    offsets.push(o);
                } else {
                    let i = (rng.uniform() * live.len() as f32) as usize % live.len();
                    let (o, b) = live.swap_remove(i);
                    r.free(o, b);
                }
                assert_eq!(r.in_use(), live.iter().map(|&(_, b)| RangeAllocator::rounded(b)).sum::<usize>());
                assert!(r.top <= r.high_water());
            }
            (offsets, r.high_water())
        };
        assert_eq!(run(3), run(3));
    }
}
