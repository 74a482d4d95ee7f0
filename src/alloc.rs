//! O(1) offset allocation over the region, in 64-byte units.
//!
//! The region is split into segments (at most 256 GiB each, the reach of a 32-bit count of 64-byte
//! units, or less when a memory registration must not be crossed); each segment has its own
//! two-level segregated-fit allocator (`offset-allocator`). A block never straddles two segments.
//! Metadata lives here, outside the pool's memory; only offsets are handed out.

use offset_allocator::{Allocation, Allocator};

/// Allocation granularity and alignment, in bytes.
pub const GRANULE: usize = 64;
/// The largest segment one allocator can describe.
pub const MAX_SEGMENT: usize = (u32::MAX as usize / 2 + 1) * GRANULE;

/// One allocated range. Give it back with [`Arena::free`].
#[derive(Clone, Copy)]
pub struct Block {
    /// Byte offset of the block from the start of the region; a multiple of [`GRANULE`].
    pub offset: usize,
    /// Bytes reserved (the request rounded up to [`GRANULE`]).
    pub len: usize,
    slot: Option<(u32, Allocation)>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

/// Why an allocation failed.
#[derive(Debug, PartialEq, Eq)]
pub enum AllocError {
    /// No segment has a free range this large.
    NoSpace { largest_free: usize },
    /// As many blocks are live as the arena was sized for.
    TooManyObjects { limit: usize },
}

struct Segment {
    start: usize,
    len: usize,
    alloc: Allocator,
}

/// The allocator for one region. Not thread-safe: the pool keeps it behind a mutex.
pub struct Arena {
    segments: Vec<Segment>,
    capacity: usize,
    used: usize,
    live: usize,
    max_objects: usize,
}

impl Arena {
    /// An arena over `len` bytes (rounded down to [`GRANULE`]) holding at most `max_objects` live
    /// blocks, with no segment longer than `segment_limit` bytes.
    pub fn new(len: usize, max_objects: usize, segment_limit: usize) -> Arena {
        let len = len / GRANULE * GRANULE;
        let segment_limit = (segment_limit.min(MAX_SEGMENT) / GRANULE * GRANULE).max(GRANULE);
        let max_objects = max_objects.max(1);
        // Each live block, and each free range between them, takes one allocator node.
        let nodes = max_objects.saturating_mul(2).saturating_add(2).min(u32::MAX as usize - 2) as u32;
        let mut segments = Vec::new();
        let mut start = 0;
        while start < len {
            let seg_len = segment_limit.min(len - start);
            segments.push(Segment {
                start,
                len: seg_len,
                alloc: Allocator::with_max_allocs((seg_len / GRANULE) as u32, nodes),
            });
            start += seg_len;
        }
        Arena { segments, capacity: len, used: 0, live: 0, max_objects }
    }

    /// Reserves `size` bytes (rounded up to [`GRANULE`]). Size 0 reserves nothing but still counts
    /// as a live object.
    pub fn allocate(&mut self, size: usize) -> Result<Block, AllocError> {
        if self.live >= self.max_objects {
            return Err(AllocError::TooManyObjects { limit: self.max_objects });
        }
        if size == 0 {
            self.live += 1;
            return Ok(Block { offset: 0, len: 0, slot: None });
        }
        let units = size.div_ceil(GRANULE);
        if let Ok(units32) = u32::try_from(units) {
            for (i, seg) in self.segments.iter_mut().enumerate() {
                if units > seg.len / GRANULE {
                    continue;
                }
                if let Some(a) = seg.alloc.allocate(units32) {
                    let len = units * GRANULE;
                    self.used += len;
                    self.live += 1;
                    return Ok(Block {
                        offset: seg.start + a.offset as usize * GRANULE,
                        len,
                        slot: Some((i as u32, a)),
                    });
                }
            }
        }
        Err(AllocError::NoSpace { largest_free: self.largest_free() })
    }

    /// Returns a block. Each block must be freed exactly once (the pool's `Drop` guarantees it).
    pub fn free(&mut self, block: Block) {
        if let Some((seg, a)) = block.slot {
            self.segments[seg as usize].alloc.free(a);
            self.used -= block.len;
        }
        self.live -= 1;
    }

    /// Total bytes under management.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes reserved by live blocks.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Live blocks, including size-0 ones.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn max_objects(&self) -> usize {
        self.max_objects
    }

    /// A size that is guaranteed to fit right now (the allocator's bins give a lower bound of the
    /// longest free range, exact for sizes up to a few KiB and within 12.5% beyond).
    pub fn largest_free(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.alloc.storage_report().largest_free_region as usize * GRANULE)
            .max()
            .unwrap_or(0)
    }

    /// Starts and lengths of the segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.segments.iter().map(|s| (s.start, s.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_granule_aligned_disjoint_and_rounded_up() {
        let mut a = Arena::new(1 << 20, 1024, MAX_SEGMENT);
        let sizes = [1usize, 63, 64, 65, 1000, 4096, 100_000];
        let blocks: Vec<Block> = sizes.iter().map(|&s| a.allocate(s).unwrap()).collect();
        for (b, &s) in blocks.iter().zip(&sizes) {
            assert_eq!(b.offset % GRANULE, 0);
            assert_eq!(b.len, s.div_ceil(GRANULE) * GRANULE);
            assert!(b.offset + b.len <= 1 << 20);
        }
        let mut ranges: Vec<(usize, usize)> = blocks.iter().map(|b| (b.offset, b.offset + b.len)).collect();
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {:?}", w);
        }
        assert_eq!(a.used(), blocks.iter().map(|b| b.len).sum::<usize>());
        assert_eq!(a.live(), sizes.len());
    }

    #[test]
    fn exhaustion_reports_largest_free_and_freed_space_is_reused() {
        let mut a = Arena::new(1 << 20, 1024, MAX_SEGMENT);
        let first = a.allocate(512 << 10).unwrap();
        let second = a.allocate(512 << 10).unwrap();
        assert_eq!(a.allocate(64).unwrap_err(), AllocError::NoSpace { largest_free: 0 });
        a.free(first);
        assert_eq!(a.used(), 512 << 10);
        let again = a.allocate(512 << 10).unwrap();
        assert_eq!(again.offset, first.offset);
        a.free(again);
        a.free(second);
        assert_eq!(a.used(), 0);
        assert_eq!(a.live(), 0);
        assert_eq!(a.allocate(1 << 20).unwrap().offset, 0, "frees must coalesce back to one range");
    }

    #[test]
    fn zero_size_blocks_count_as_objects_but_take_no_bytes() {
        let mut a = Arena::new(4096, 2, MAX_SEGMENT);
        let z = a.allocate(0).unwrap();
        assert_eq!((z.len, a.used(), a.live()), (0, 0, 1));
        let _one = a.allocate(1).unwrap();
        assert_eq!(a.allocate(0).unwrap_err(), AllocError::TooManyObjects { limit: 2 });
        a.free(z);
        assert_eq!(a.live(), 1);
    }

    #[test]
    fn one_gib_arena_holds_a_hundred_thousand_live_objects() {
        let mut a = Arena::new(1 << 30, 262_144, MAX_SEGMENT);
        let blocks: Vec<Block> = (0..100_000).map(|i| a.allocate(64 + (i % 7) * 100).unwrap()).collect();
        assert_eq!(a.live(), 100_000);
        for b in blocks {
            a.free(b);
        }
        assert_eq!((a.used(), a.live()), (0, 0));
    }

    #[test]
    fn blocks_never_straddle_a_segment_boundary() {
        let seg = 64 << 10;
        let mut a = Arena::new(256 << 10, 1024, seg);
        assert_eq!(a.segments().count(), 4);
        let mut blocks = Vec::new();
        while let Ok(b) = a.allocate(24 << 10) {
            assert_eq!(b.offset / seg, (b.offset + b.len - 1) / seg, "{b:?} crosses a boundary");
            blocks.push(b);
        }
        // 2 blocks of 24 KiB fit in each 64 KiB segment.
        assert_eq!(blocks.len(), 8);
        assert!(matches!(a.allocate(seg + 64), Err(AllocError::NoSpace { .. })));
    }

    #[test]
    fn request_larger_than_any_segment_fails_without_panicking() {
        let mut a = Arena::new(1 << 20, 16, MAX_SEGMENT);
        assert!(matches!(a.allocate(usize::MAX), Err(AllocError::NoSpace { .. })));
        assert!(matches!(a.allocate(2 << 20), Err(AllocError::NoSpace { .. })));
    }
}
