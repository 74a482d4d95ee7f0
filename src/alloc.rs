//! O(1) offset allocation over the region, in 64-byte units.
//!
//! The region is split into segments (at most 256 GiB each, the reach of a 32-bit count of 64-byte
//! units, or less when a memory registration must not be crossed); each segment has its own
//! two-level segregated-fit allocator (`offset-allocator`). A block never straddles two segments.
//! Metadata lives here, outside the pool's memory; only offsets are handed out.
//!
//! [`SharedArena`] makes it thread-safe: one lock around the arena, plus small per-thread caches
//! of recently freed small blocks, so that threads that create and free objects of the same size
//! do not bounce the allocator's cache lines between cores on every operation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
        self.segments.iter().map(|s| s.alloc.storage_report().largest_free_region as usize * GRANULE).max().unwrap_or(0)
    }

    /// Starts and lengths of the segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.segments.iter().map(|s| (s.start, s.len))
    }
}

/// Per-thread caches kept by a [`SharedArena`].
const CACHE_SLOTS: usize = 16;
/// Most blocks one cache holds.
const CACHE_BLOCKS: usize = 32;
/// Largest block a cache keeps; larger frees go straight back to the arena, where they coalesce.
const CACHE_MAX_BLOCK: usize = 256 << 10;

#[repr(align(128))]
struct Padded<T>(T);

/// What a [`SharedArena`] holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub capacity: usize,
    /// Bytes held by live objects (cached free blocks are not counted).
    pub used: usize,
    /// Live objects, including size-0 ones.
    pub live: usize,
    pub max_objects: usize,
    pub largest_free: usize,
}

/// A thread-safe [`Arena`]. A freed block of at most 256 KiB first goes to the freeing thread's
/// cache, and a request of the same rounded size takes it from there without touching the shared
/// arena. When the arena cannot serve a request, every cache is flushed back and the request is
/// tried once more, so cached blocks never make a create fail.
///
/// Each cached block travels with its owner's token `T` (the pool keeps its `Arc` there), so
/// a create served from the cache moves a token instead of touching a shared reference count.
/// Tokens the arena does not keep are handed back to the caller, who drops them outside.
pub struct SharedArena<T> {
    arena: Padded<Mutex<Arena>>,
    slots: Box<[Arc<CacheSlot<T>>]>,
}

/// One thread's cache. Reference-counted on its own, so that a token can be put into it without
/// borrowing the arena: the token may be what keeps the arena alive.
pub struct CacheSlot<T> {
    cache: Padded<Mutex<Cache<T>>>,
}

struct Cache<T> {
    blocks: Vec<(Block, T)>,
    bytes: usize,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single call that completes or panics before changing
    // anything, so a poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn my_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % CACHE_SLOTS;
    }
    SLOT.with(|s| *s)
}

impl<T> CacheSlot<T> {
    /// Keeps `block` and `token` if the block is small and there is room; else gives both back.
    pub fn put(&self, block: Block, token: T) -> Result<(), (Block, T)> {
        if block.len == 0 || block.len > CACHE_MAX_BLOCK {
            return Err((block, token));
        }
        let mut cache = lock(&self.cache.0);
        if cache.closed || cache.blocks.len() >= CACHE_BLOCKS {
            return Err((block, token));
        }
        cache.bytes += block.len;
        cache.blocks.push((block, token));
        Ok(())
    }
}

impl<T> SharedArena<T> {
    pub fn new(arena: Arena) -> SharedArena<T> {
        let slot =
            || Arc::new(CacheSlot { cache: Padded(Mutex::new(Cache { blocks: Vec::new(), bytes: 0, closed: false })) });
        SharedArena { arena: Padded(Mutex::new(arena)), slots: (0..CACHE_SLOTS).map(|_| slot()).collect() }
    }

    /// A block of at least `size` bytes, with the token it was cached with, if it was.
    pub fn allocate(&self, size: usize) -> Result<(Block, Option<T>), AllocError> {
        let len = size.div_ceil(GRANULE).saturating_mul(GRANULE);
        if size > 0 && len <= CACHE_MAX_BLOCK {
            let mut cache = lock(&self.slots[my_slot()].cache.0);
            if let Some(i) = cache.blocks.iter().rposition(|(b, _)| b.len == len) {
                let (block, token) = cache.blocks.swap_remove(i);
                cache.bytes -= block.len;
                return Ok((block, Some(token)));
            }
        }
        let first = lock(&self.arena.0).allocate(size);
        let block = match first {
            Err(_) => {
                let flushed = self.flush();
                if flushed.is_empty() {
                    first
                } else {
                    let retried = lock(&self.arena.0).allocate(size);
                    drop(flushed);
                    retried
                }
            }
            ok => ok,
        }?;
        Ok((block, None))
    }

    /// The calling thread's cache; free a block with `slot().put(..)`, and with [`Self::free`]
    /// when the cache gives it back.
    pub fn slot(&self) -> Arc<CacheSlot<T>> {
        self.slots[my_slot()].clone()
    }

    /// Returns `block` to the arena, bypassing the caches.
    pub fn free(&self, block: Block) {
        lock(&self.arena.0).free(block);
    }

    /// Returns every cached block to the arena and hands back their tokens.
    #[must_use = "the tokens must be dropped by the caller"]
    pub fn flush(&self) -> Vec<T> {
        self.drain(false)
    }

    /// Stops caching for good and hands back the cached tokens.
    #[must_use = "the tokens must be dropped by the caller"]
    pub fn close(&self) -> Vec<T> {
        self.drain(true)
    }

    fn drain(&self, close: bool) -> Vec<T> {
        let mut taken = Vec::new();
        for slot in self.slots.iter() {
            let mut cache = lock(&slot.cache.0);
            cache.closed |= close;
            cache.bytes = 0;
            taken.append(&mut cache.blocks);
        }
        let mut arena = lock(&self.arena.0);
        taken
            .into_iter()
            .map(|(block, token)| {
                arena.free(block);
                token
            })
            .collect()
    }

    pub fn usage(&self) -> Usage {
        let (cached_blocks, cached_bytes) = self.slots.iter().fold((0, 0), |(n, b), slot| {
            let cache = lock(&slot.cache.0);
            (n + cache.blocks.len(), b + cache.bytes)
        });
        let arena = lock(&self.arena.0);
        Usage {
            capacity: arena.capacity(),
            used: arena.used() - cached_bytes,
            live: arena.live() - cached_blocks,
            max_objects: arena.max_objects(),
            largest_free: arena.largest_free(),
        }
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

#[cfg(test)]
mod shared_tests {
    use super::*;

    fn shared(len: usize, max_objects: usize) -> SharedArena<u32> {
        SharedArena::new(Arena::new(len, max_objects, MAX_SEGMENT))
    }

    /// Frees the way the pool does: into this thread's cache, else into the arena. Answers the
    /// token the arena gave back.
    fn free(a: &SharedArena<u32>, block: Block, token: u32) -> Option<u32> {
        match a.slot().put(block, token) {
            Ok(()) => None,
            Err((block, token)) => {
                a.free(block);
                Some(token)
            }
        }
    }

    #[test]
    fn freed_small_block_is_reused_from_the_cache_with_its_token_and_not_counted_as_used() {
        let a = shared(1 << 20, 1024);
        let (b, token) = a.allocate(4096).unwrap();
        assert_eq!(token, None);
        assert_eq!(free(&a, b, 7), None, "small block is cached with its token");
        let u = a.usage();
        assert_eq!((u.used, u.live), (0, 0));
        let (again, token) = a.allocate(4090).unwrap();
        assert_eq!((again.offset, token), (b.offset, Some(7)), "same rounded size comes from the cache");
        assert_eq!(a.usage().used, 4096);
        assert_eq!(free(&a, again, 8), None);
    }

    #[test]
    fn large_blocks_are_not_cached_and_their_token_comes_back() {
        let a = shared(4 << 20, 1024);
        let (b, _) = a.allocate(1 << 20).unwrap();
        assert_eq!(free(&a, b, 9), Some(9));
        assert_eq!(a.usage().used, 0);
    }

    #[test]
    fn cached_blocks_are_flushed_when_the_arena_cannot_serve() {
        let a = shared(256 << 10, 1024);
        let blocks: Vec<Block> = (0..4).map(|_| a.allocate(64 << 10).unwrap().0).collect();
        for (i, b) in blocks.into_iter().enumerate() {
            assert_eq!(free(&a, b, i as u32), None);
        }
        // All 256 KiB sit in the cache as 64 KiB blocks; a 256 KiB request must still succeed.
        let (whole, token) = a.allocate(256 << 10).unwrap();
        assert_eq!((whole.offset, whole.len, token), (0, 256 << 10, None));
        assert_eq!(a.usage().used, 256 << 10);
    }

    #[test]
    fn cached_blocks_do_not_count_against_max_objects() {
        let a = shared(1 << 20, 2);
        let (x, _) = a.allocate(64).unwrap();
        let (y, _) = a.allocate(64).unwrap();
        let _ = (free(&a, x, 0), free(&a, y, 0));
        let (big, _) = a.allocate(1024).unwrap();
        let (other, _) = a.allocate(2048).unwrap();
        assert_eq!(a.usage().live, 2);
        assert_eq!(a.allocate(64).unwrap_err(), AllocError::TooManyObjects { limit: 2 });
        let _ = (free(&a, big, 0), free(&a, other, 0));
    }

    #[test]
    fn close_hands_back_every_cached_token_and_stops_caching() {
        let a = shared(1 << 20, 1024);
        let (x, _) = a.allocate(64).unwrap();
        let (y, _) = a.allocate(128).unwrap();
        let _ = (free(&a, x, 1), free(&a, y, 2));
        let mut tokens = a.close();
        tokens.sort();
        assert_eq!(tokens, vec![1, 2]);
        let (z, _) = a.allocate(64).unwrap();
        assert_eq!(free(&a, z, 3), Some(3), "after close nothing is cached");
        assert_eq!(a.usage().used, 0);
    }

    #[test]
    fn threads_allocating_and_freeing_leave_the_arena_empty() {
        let a = shared(8 << 20, 4096);
        std::thread::scope(|s| {
            for t in 0..4 {
                let a = &a;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..5000 {
                        held.push(a.allocate(64 * (1 + (i + t) % 9)).unwrap().0);
                        if held.len() > 20 {
                            let _ = free(a, held.swap_remove(i % held.len()), 0);
                        }
                    }
                    for b in held {
                        let _ = free(a, b, 0);
                    }
                });
            }
        });
        let u = a.usage();
        assert_eq!((u.used, u.live), (0, 0));
        let _ = a.flush();
        assert_eq!(a.allocate(8 << 20).unwrap().0.len, 8 << 20, "everything coalesces after a flush");
    }
}
