//! Object records: one 64-byte, cache-line-aligned record per live object, in chunks that are
//! allocated as the number of live objects grows and addressed by a 32-bit id.
//!
//! A record holds everything the pool knows of an object: its block, size, key (inline up to
//! [`INLINE_KEY`] bytes), part table, whether it is sealed, when it was last used, and a count of
//! its references (the index's, while its key is present, and one per buffer). Each record owns
//! its cache line, so readers of different objects never contend, and the 64 bytes are the whole
//! per-object cost besides the index slot and the allocator node.
//!
//! Ownership: a record with no references belongs to whoever holds its id outside the pool (the
//! allocator's free list or a thread's cache); only that owner writes its fields, before the
//! record is published under the index's lock. Fields other than the atomics are never written
//! while the record has references.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crate::alloc::Block;

/// Keys up to this long live in the record; longer ones get their own allocation.
pub const INLINE_KEY: usize = 16;
/// Records per chunk: 64 KiB.
const CHUNK: usize = 1024;

/// Offset (from the object's first byte) and length of each part of a multi-part object.
pub type PartTable = Box<[(usize, usize)]>;

/// The key's bytes: inline when short, else a pointer to a boxed slice of `key_len` bytes.
#[derive(Clone, Copy)]
union KeyBytes {
    inline: [u8; INLINE_KEY],
    heap: *mut u8,
}

/// The fields written once per life of an object, by the record's owner.
struct Fields {
    offset: usize,
    size: usize,
    /// The allocator's node for the block.
    node: u32,
    key_len: u32,
    parts: Option<Box<PartTable>>,
    key: KeyBytes,
}

impl Fields {
    const EMPTY: Fields =
        Fields { offset: 0, size: 0, node: 0, key_len: 0, parts: None, key: KeyBytes { inline: [0; INLINE_KEY] } };

    fn key(&self) -> &[u8] {
        let len = self.key_len as usize;
        if len <= INLINE_KEY {
            // SAFETY: keys of at most INLINE_KEY bytes are stored inline.
            unsafe { &self.key.inline[..len] }
        } else {
            // SAFETY: longer keys are a leaked `Box<[u8]>` of `key_len` bytes, freed only by
            // `clear`, which needs `&mut self`.
            unsafe { std::slice::from_raw_parts(self.key.heap, len) }
        }
    }

    fn set_key(&mut self, key: &[u8]) {
        self.clear_key();
        if key.len() <= INLINE_KEY {
            let mut inline = [0; INLINE_KEY];
            inline[..key.len()].copy_from_slice(key);
            self.key = KeyBytes { inline };
        } else {
            self.key = KeyBytes { heap: Box::into_raw(Box::<[u8]>::from(key)).cast() };
        }
        // Keys are at most MAX_KEY_LEN (4 KiB) long.
        self.key_len = key.len() as u32;
    }

    fn clear_key(&mut self) {
        let len = self.key_len as usize;
        if len > INLINE_KEY {
            // SAFETY: a long key is the `Box<[u8]>` of `len` bytes leaked by `set_key`, freed once
            // because `key_len` is reset right after.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.key.heap, len)) });
        }
        self.key_len = 0;
    }
}

impl Drop for Fields {
    fn drop(&mut self) {
        self.clear_key();
    }
}

/// One object's record.
#[repr(C, align(64))]
pub struct Record {
    /// References: the index's while the key is present, plus one per buffer.
    refs: AtomicU32,
    sealed: AtomicBool,
    /// Nanoseconds since the pool's epoch when it was sealed or last read (kept only when the pool
    /// evicts).
    last_used: AtomicU64,
    fields: UnsafeCell<Fields>,
}

const _: () = assert!(std::mem::size_of::<Record>() == 64);

// SAFETY: `fields` is written only by the record's owner while no other thread can reach the
// record (no references, see the module's documentation), and the writes are published by the
// lock or hand-over that gives other threads the id. Everything else is atomic.
unsafe impl Sync for Record {}
// SAFETY: as above; the heap key is owned by the record.
unsafe impl Send for Record {}

impl Record {
    fn new() -> Record {
        Record {
            refs: AtomicU32::new(0),
            sealed: AtomicBool::new(false),
            last_used: AtomicU64::new(0),
            fields: UnsafeCell::new(Fields::EMPTY),
        }
    }

    fn fields(&self) -> &Fields {
        // SAFETY: per the ownership rule, nobody writes `fields` while a caller can reach this
        // record through a reference it holds.
        unsafe { &*self.fields.get() }
    }

    pub fn key(&self) -> &[u8] {
        self.fields().key()
    }

    pub fn size(&self) -> usize {
        self.fields().size
    }

    pub fn offset(&self) -> usize {
        self.fields().offset
    }

    pub fn parts(&self) -> Option<&[(usize, usize)]> {
        self.fields().parts.as_deref().map(|p| &**p)
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub fn mark_sealed(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub fn set_last_used(&self, nanos: u64) {
        self.last_used.store(nanos, Ordering::Relaxed);
    }

    /// Adds a reference. Only for a holder of a reference, or under the index's lock while the
    /// index holds one.
    pub fn acquire(&self) {
        self.refs.fetch_add(1, Ordering::Relaxed);
    }

    /// References now.
    pub fn refs(&self) -> u32 {
        self.refs.load(Ordering::Acquire)
    }

    /// Drops a reference; answers true when it was the last, and the caller now owns the record
    /// and must [`Record::retire`] it.
    pub fn release(&self) -> bool {
        if self.refs.fetch_sub(1, Ordering::Release) != 1 {
            return false;
        }
        std::sync::atomic::fence(Ordering::Acquire);
        true
    }

    /// Fills an owned record for a new object with `refs` references.
    ///
    /// # Safety
    /// The caller owns the record: it has no references and no other thread uses its id.
    pub unsafe fn init(&self, block: Block, size: usize, key: &[u8], parts: Option<PartTable>, refs: u32) {
        // SAFETY: owned per the contract, so no other access to `fields` exists.
        let f = unsafe { &mut *self.fields.get() };
        let (offset, _, node) = block.parts();
        f.offset = offset;
        f.size = size;
        f.node = node;
        f.parts = parts.map(Box::new);
        f.set_key(key);
        self.sealed.store(false, Ordering::Relaxed);
        self.last_used.store(0, Ordering::Relaxed);
        self.refs.store(refs, Ordering::Release);
    }

    /// Empties a record whose last reference is gone and answers its block, to free.
    ///
    /// # Safety
    /// The caller owns the record: [`Record::release`] answered true for it.
    pub unsafe fn retire(&self) -> Block {
        // SAFETY: owned per the contract.
        let f = unsafe { &mut *self.fields.get() };
        f.clear_key();
        f.parts = None;
        Block::from_parts(f.offset, f.size.div_ceil(crate::alloc::GRANULE) * crate::alloc::GRANULE, f.node)
    }
}

/// Records addressed by id, in chunks allocated on first use.
pub struct Records {
    chunks: Box<[AtomicPtr<Record>]>,
}

impl Records {
    /// Room for ids below `max_objects`; no record is allocated yet.
    pub fn new(max_objects: usize) -> Records {
        Records { chunks: (0..max_objects.div_ceil(CHUNK)).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect() }
    }

    /// The record of `id`, which must be below `max_objects` and [`Records::ensure`]d.
    pub fn get(&self, id: u32) -> &Record {
        let id = id as usize;
        let chunk = self.chunks[id / CHUNK].load(Ordering::Acquire);
        assert!(!chunk.is_null(), "record {id} was never allocated");
        // SAFETY: a non-null chunk is a leaked `Box<[Record]>` of CHUNK records that lives as long
        // as `self`.
        unsafe { &*chunk.add(id % CHUNK) }
    }

    /// Allocates the chunk holding `id` if it is not yet.
    pub fn ensure(&self, id: u32) {
        let slot = &self.chunks[id as usize / CHUNK];
        if !slot.load(Ordering::Acquire).is_null() {
            return;
        }
        let chunk: Box<[Record]> = (0..CHUNK).map(|_| Record::new()).collect();
        let ptr = Box::into_raw(chunk).cast::<Record>();
        if slot.compare_exchange(std::ptr::null_mut(), ptr, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // SAFETY: `ptr` was leaked just above and lost the race, so nobody else has it.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, CHUNK)) });
        }
    }

    /// Bytes of records allocated.
    pub fn bytes(&self) -> usize {
        self.chunks.iter().filter(|c| !c.load(Ordering::Relaxed).is_null()).count() * CHUNK * size_of::<Record>()
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        for chunk in self.chunks.iter() {
            let ptr = chunk.load(Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: each non-null chunk is a `Box<[Record]>` of CHUNK records leaked by
                // `ensure`, freed once here.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, CHUNK)) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_one_cache_line() {
        assert_eq!((size_of::<Record>(), align_of::<Record>()), (64, 64));
    }

    #[test]
    fn short_and_long_keys_read_back_and_long_ones_are_freed_on_retire() {
        let records = Records::new(10);
        records.ensure(3);
        let r = records.get(3);
        let long = vec![7u8; 300];
        for key in [&b"k"[..], &[1u8; INLINE_KEY][..], &long[..], b""] {
            // SAFETY: the record has no references and only this test uses it.
            unsafe { r.init(Block::from_parts(128, 64, 5), 10, key, None, 1) };
            assert_eq!((r.key(), r.size(), r.offset(), r.refs()), (key, 10, 128, 1));
            assert!(r.release());
            // SAFETY: `release` answered true.
            let block = unsafe { r.retire() };
            assert_eq!(block.parts(), (128, 64, 5));
            assert_eq!(r.key(), b"");
        }
    }

    #[test]
    fn references_count_down_to_the_owner() {
        let records = Records::new(1);
        records.ensure(0);
        let r = records.get(0);
        // SAFETY: unreferenced and private to this test.
        unsafe { r.init(Block::from_parts(0, 0, u32::MAX), 0, b"k", Some(vec![(64, 3)].into()), 2) };
        r.acquire();
        assert_eq!(r.parts(), Some(&[(64, 3)][..]));
        assert!(!r.release());
        assert!(!r.release());
        assert!(r.release());
        // SAFETY: `release` answered true.
        unsafe { r.retire() };
        assert_eq!(r.parts(), None);
    }

    #[test]
    fn chunks_are_allocated_only_for_ids_in_use() {
        let records = Records::new(5 * CHUNK);
        assert_eq!(records.bytes(), 0);
        records.ensure(0);
        records.ensure(CHUNK as u32 - 1);
        assert_eq!(records.bytes(), CHUNK * 64);
        records.ensure(4 * CHUNK as u32);
        assert_eq!(records.bytes(), 2 * CHUNK * 64);
    }
}
