//! Object records: one 64-byte, cache-line-aligned record per live object, addressed by a 32-bit
//! id, in a mapping that becomes resident as ids are used.
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
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::alloc::Block;
use crate::error::{Bytes, Error, Result};

/// Keys up to this long live in the record; longer ones get their own allocation.
pub const INLINE_KEY: usize = 16;

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
    #[inline]
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
    #[inline]
    fn fields(&self) -> &Fields {
        // SAFETY: per the ownership rule, nobody writes `fields` while a caller can reach this
        // record through a reference it holds.
        unsafe { &*self.fields.get() }
    }

    #[inline]
    pub fn key(&self) -> &[u8] {
        self.fields().key()
    }

    #[inline]
    pub fn size(&self) -> usize {
        self.fields().size
    }

    #[inline]
    pub fn offset(&self) -> usize {
        self.fields().offset
    }

    #[inline]
    pub fn parts(&self) -> Option<&[(usize, usize)]> {
        self.fields().parts.as_deref().map(|p| &**p)
    }

    #[inline]
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub fn mark_sealed(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    #[inline]
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn set_last_used(&self, nanos: u64) {
        self.last_used.store(nanos, Ordering::Relaxed);
    }

    /// Adds a reference. Only for a holder of a reference, or under the index's lock while the
    /// index holds one.
    #[inline]
    pub fn acquire(&self) {
        self.refs.fetch_add(1, Ordering::Relaxed);
    }

    /// References now.
    #[inline]
    pub fn refs(&self) -> u32 {
        self.refs.load(Ordering::Acquire)
    }

    /// Drops a reference; answers true when it was the last, and the caller now owns the record
    /// and must [`Record::retire`] it.
    #[inline]
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
    unsafe fn init(&self, block: Block, size: usize, key: &[u8], parts: Option<PartTable>, refs: u32) {
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

/// Records addressed by id: one anonymous mapping of `max_objects` records, reserved at open
/// and not charged against memory (`MAP_NORESERVE`); a page of records becomes resident when an
/// id on it is first used. All-zero bytes are an empty record, so the mapping needs no setup, and
/// `get` is one addition.
pub struct Records {
    base: NonNull<Record>,
    len: usize,
    /// One past the highest id handed to `get` for writing (see `init`): the records to drop.
    used: AtomicUsize,
}

// SAFETY: `Records` owns its mapping; the records in it are `Sync` and `Send`.
unsafe impl Send for Records {}
// SAFETY: as above.
unsafe impl Sync for Records {}

impl Records {
    /// Room for ids below `max_objects` (at least 1).
    pub fn new(max_objects: usize) -> Result<Records> {
        let len = max_objects.max(1);
        let bytes = len
            .checked_mul(size_of::<Record>())
            .ok_or_else(|| Error::InvalidArgument(format!("max_objects {max_objects} is too large to address")))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::system(
                format!("mapping records for {max_objects} objects ({})", Bytes(bytes as u64)),
                std::io::Error::last_os_error(),
            ));
        }
        // mmap answers page-aligned memory (so 64-byte aligned) and never NULL on success.
        let base = NonNull::new(ptr.cast::<Record>()).ok_or_else(|| Error::Internal("mmap answered NULL".into()))?;
        Ok(Records { base, len, used: AtomicUsize::new(0) })
    }

    /// The record of `id`, which must be below `max_objects`.
    #[inline]
    pub fn get(&self, id: u32) -> &Record {
        let id = id as usize;
        assert!(id < self.len, "record {id} of {}", self.len);
        // SAFETY: in bounds of the mapping, which lives as long as `self`; zero bytes are a valid
        // (empty) record, and records are only mutated through atomics or by their owner.
        unsafe { &*self.base.as_ptr().add(id) }
    }

    /// Fills an owned record for a new object with `refs` references (see [`Record::init`]).
    ///
    /// # Safety
    /// As for [`Record::init`]: the caller owns record `id`.
    pub unsafe fn init(&self, id: u32, block: Block, size: usize, key: &[u8], parts: Option<PartTable>, refs: u32) {
        // Written only when the high-water mark grows: this line is read by every access, and a
        // write per create would bounce it between the cores that create.
        if self.used.load(Ordering::Relaxed) <= id as usize {
            self.used.fetch_max(id as usize + 1, Ordering::Relaxed);
        }
        // SAFETY: per the contract.
        unsafe { self.get(id).init(block, size, key, parts, refs) }
    }

    /// Bytes of records that have been used (resident, at 64 bytes each).
    pub fn bytes_used(&self) -> usize {
        self.used.load(Ordering::Relaxed) * size_of::<Record>()
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let used = *self.used.get_mut();
        // SAFETY: records below `used` may own a long key or a part table; nobody else can reach
        // them now (`&mut self`), and each is dropped once. Then the mapping is unmapped once.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), used));
            libc::munmap(self.base.as_ptr().cast(), self.len * size_of::<Record>());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_one_cache_line_and_all_zero_is_empty() {
        assert_eq!((size_of::<Record>(), align_of::<Record>()), (64, 64));
        let records = Records::new(3).unwrap();
        let r = records.get(2);
        assert_eq!(
            (r.key(), r.size(), r.offset(), r.refs(), r.is_sealed(), r.parts()),
            (&b""[..], 0, 0, 0, false, None)
        );
    }

    #[test]
    fn short_and_long_keys_read_back_and_long_ones_are_freed_on_retire() {
        let records = Records::new(10).unwrap();
        let long = vec![7u8; 300];
        for key in [&b"k"[..], &[1u8; INLINE_KEY][..], &long[..], b""] {
            // SAFETY: the record has no references and only this test uses it.
            unsafe { records.init(3, Block::from_parts(128, 64, 5), 10, key, None, 1) };
            let r = records.get(3);
            assert_eq!((r.key(), r.size(), r.offset(), r.refs()), (key, 10, 128, 1));
            assert!(r.release());
            // SAFETY: `release` answered true.
            let block = unsafe { r.retire() };
            assert_eq!(block.parts(), (128, 64, 5));
            assert_eq!(r.key(), b"");
        }
    }

    #[test]
    fn live_long_keys_and_parts_are_freed_when_the_records_are_dropped() {
        // Leak checkers (the sanitizer and valgrind runs of the test suite) see the difference.
        let records = Records::new(4).unwrap();
        // SAFETY: unreferenced records, private to this test.
        unsafe { records.init(1, Block::from_parts(0, 64, 0), 1, &[9u8; 100], Some(vec![(64, 1)].into()), 1) };
        assert_eq!(records.bytes_used(), 128);
        drop(records);
    }

    #[test]
    fn references_count_down_to_the_owner() {
        let records = Records::new(1).unwrap();
        // SAFETY: unreferenced and private to this test.
        unsafe { records.init(0, Block::from_parts(0, 0, u32::MAX), 0, b"k", Some(vec![(64, 3)].into()), 2) };
        let r = records.get(0);
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
    #[should_panic(expected = "record 5 of 5")]
    fn an_id_past_max_objects_is_refused() {
        Records::new(5).unwrap().get(5);
    }
}
