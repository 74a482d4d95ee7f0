//! The state of a shared pool that lives in the pool file: object records, the key index, the
//! allocators of object memory and of long keys and part tables, counters and the futex words
//! `get` waits on. Everything is addressed by ids and offsets.
//!
//! Locks: the pool's robust mutex, and [`STRIPES`] robust locks over the index chains (bucket
//! `b`'s chain under stripe `b % STRIPES`), each with counts of its own. The mutex guards the
//! allocators, the free-record list, the pool's counters and the high-water mark; a chain's lock
//! guards the chain, the records in it and its stripe's counts. Most changes take the mutex, then
//! the lock of the one chain they touch ([`Store::chains`]). A create of a short key with no parts
//! into a record its process keeps with a block of the right size ([`Store::create_cached`]), and
//! the delete of such an object ([`Store::delete_fast`]), take the chain's lock alone
//! ([`Store::chains_fast`]): processes creating and deleting different keys then wait for nobody.
//! Only a holder of the mutex takes more than one chain lock, in order ([`Store::all_chains`]),
//! and nobody holding a chain lock waits for the mutex, so no wait goes round in a cycle. The
//! creator initialises everything before the pool is published. Outside the locks: the seal words,
//! bumped by a seal and read by gets; a record's state at a seal (one compare-and-swap by its
//! creator) and when a deleted record is freed (one compare-and-swap, [`Store::claim`], which
//! decides among the processes that may free it); its `holders` bits, which a reader sets; and its
//! `last_used`, which a reader refreshes.
//!
//! Reading takes no lock. A get finds a sealed record through the index without any lock
//! ([`Store::peek`]), publishes a reference in its own ledger and re-reads the record's state
//! and generation ([`Store::still`]); a delete (or an eviction) marks the record `DELETED` and
//! then looks for references in the ledgers ([`Store::held`]). Both steps are sequentially
//! consistent, so either the reader sees the mark and withdraws, or the deleter sees the
//! reference and leaves the object for its last reader to free ([`Store::free_if_unheld`]). An
//! object's fields (its key, offset, size and part table) never change while the record has the
//! generation a reference names, so a reader copies them once its reference is confirmed.
//!
//! Records are the truth. Who reads an object is nowhere but in the ledgers (a record's
//! `holders` bits only say which ledgers to look in), and the index, both allocators, the list
//! of free ids and the counters are derived from the records. So when a process dies holding a
//! lock, half-way through any change, the next taker of that lock marks a repair pending, and
//! [`Store::rebuild`], under the mutex and every chain lock, recomputes all of it from the records
//! and the ledgers; the dead process's slot is then reclaimed like any other, by emptying its
//! ledger. [`Store::check`] verifies that everything stored equals what would be derived.
//!
//! Two parts of that derived state are kept apart, so that processes creating and deleting at
//! once do not write the same lines: the counts of objects, keys and bytes the chain-only creates
//! and deletes changed, in their stripe (the pool's counts are the control block's plus every
//! stripe's), and in each process's slot a cache of up to eight records it freed with their
//! blocks of object memory kept, which its next creates of the same sizes take back
//! ([`Store::free_record`]). The owner's threads fill and take from its cache one at a time;
//! any process may empty it under the mutex ([`Store::flush_cache`]): when its process closes or
//! is reclaimed, when a create would fail for lack of memory or records, and when the counters
//! are read. A rebuild empties them all.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::mem::size_of;
use std::sync::atomic::{
    AtomicU32, AtomicU64, Ordering,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

use crate::alloc::{NodeCell, Tlsf, TlsfCore, GRANULE};
use crate::error::{Error, Result};
use crate::index::first_by_key;
use crate::shm::header::{AreaKind, Layout, AREAS};
use crate::shm::ledger::{self, Handle, Ledger, CREATING};
use crate::shm::lock::{Acquired, MutexGuard, SharedMutex};
use crate::shm::offset::{Area, Shared};
use crate::shm::slots::{Slot, LIVE};

/// A record no object uses.
pub(crate) const FREE: u32 = 0;
/// Created, writable by its creator, not visible to `get`.
pub(crate) const UNSEALED: u32 = 1;
/// Sealed: immutable and visible.
pub(crate) const SEALED: u32 = 2;
/// Deleted or evicted: its key is gone, readers may still hold it.
pub(crate) const DELETED: u32 = 3;

/// No node, no record.
const NIL: u32 = u32::MAX;
/// Keys up to this long live in the record.
pub(crate) const INLINE_KEY: usize = 16;
/// Futex words `get` waits on, chosen by key hash: as many as the chain locks, picked by the same
/// bits of the hash, so that two keys share a seal word's line only when they share a chain lock.
pub(crate) const SEAL_WORDS: usize = 256;
/// Process slots of a shared pool.
pub(crate) const DEFAULT_SLOTS: u64 = 64;
/// Locks over the index chains: bucket `b`'s chain is under stripe `b % STRIPES`. Two processes creating
/// and deleting one key each wait for each other only when their keys share a stripe (1 in 256).
pub(crate) const STRIPES: usize = 256;

// A repair holds every chain lock and the mutex at once, each linked in the thread's robust list,
// which the kernel walks at the thread's death only up to 2048 entries.
const _: () = assert!(STRIPES + 1 < 2048);
/// Words of the key heap's reservation bitmap: at most 4096 chunks.
const KEY_CHUNK_WORDS: usize = 64;
/// Allocator nodes reserved at a time (about 1 MiB of them).
const NODE_CHUNK: u64 = (1 << 20) / size_of::<NodeCell>() as u64;

/// The largest data area one allocator describes (2^31 units of 64 bytes).
pub(crate) const MAX_DATA: u64 = (1 << 31) * GRANULE as u64;

#[cfg(test)]
thread_local! {
    /// Scans [`Store::lru_victims`] made on this thread.
    pub(crate) static LRU_SCANS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Runs once, in [`Store::uncache_exact`], between its read of a cache entry and its swap:
    /// where another process may empty the entry and reuse the record.
    pub(crate) static BEFORE_UNCACHE: std::cell::Cell<Option<CacheHook>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
pub(crate) type CacheHook = Box<dyn FnOnce(&AtomicU32, &Rec)>;

/// Ledger entries a delete reads under the mutex, at most, when it looks for references; above
/// this it looks without the mutex (a process holding 100,000 references made each delete of an
/// object it read scan 1.6 MB, 250 µs in which no other process could create or delete).
const LONG_LEDGERS: u64 = 4096;

/// A block of object memory: its allocator node and first unit.
type Block = (u32, u32);

/// The largest object a delete keeps in its process's record cache with its block (64 KiB):
/// larger blocks go back to the allocator at once, so that no process sits on much memory.
const CACHED_UNITS: u64 = (64 << 10) / GRANULE as u64;

/// A sealed object offered for eviction ([`Store::lru_victims`]), as it was when offered.
pub(crate) struct Victim {
    id: u32,
    generation: u32,
    last_used: u32,
}

/// Adds to a counter only the holder of its lock changes: a load and a store, no locked instruction.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

#[cold]
fn corrupt(why: String) -> Error {
    Error::Internal(format!("shared pool metadata is corrupt: {why}"))
}

#[cold]
#[inline(never)]
fn outside_data(id: u32, offset: u64, size: u64) -> Error {
    corrupt(format!("object {id}: {size} bytes at {offset} lie outside the data area"))
}

/// The creator's choices, fixed for the pool's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    /// Bytes of object memory (a multiple of 64).
    pub capacity: u64,
    pub max_objects: u64,
    /// Index buckets (a power of two, at least `max_objects`).
    pub buckets: u64,
    /// Bytes of long-key and part-table storage (a multiple of 64).
    pub key_heap: u64,
    pub slots: u64,
    /// Entries of each process's reference ledger.
    pub ledger_capacity: u64,
    /// Hash seed of the index, the same in every process.
    pub seed: u64,
    pub evict_lru: bool,
}

const CONFIG_WORDS: usize = 8;

impl Config {
    /// The configuration for `capacity` bytes (rounded up to 64) and `max_objects` objects.
    pub(crate) fn new(capacity: u64, max_objects: u64, evict_lru: bool, seed: u64) -> Result<Config> {
        let capacity = capacity.div_ceil(GRANULE as u64) * GRANULE as u64;
        if capacity == 0 || capacity > MAX_DATA {
            return Err(Error::InvalidArgument(format!(
                "a shared pool holds 64 B to {} of object memory, not {capacity} bytes",
                crate::error::Bytes(MAX_DATA)
            )));
        }
        if max_objects == 0 || max_objects > 1 << 28 {
            return Err(Error::InvalidArgument(format!(
                "a shared pool holds 1 to {} objects, not {max_objects}",
                1u64 << 28
            )));
        }
        let key_heap = (max_objects * 32 + (1 << 20)).div_ceil(GRANULE as u64) * GRANULE as u64;
        Ok(Config {
            capacity,
            max_objects,
            // Two buckets or more per object: chains of about half an entry at the limit, so a
            // lookup reads about 1.25 records instead of 1.5. Pools made with fewer keep theirs.
            buckets: (2 * max_objects).next_power_of_two(),
            key_heap,
            slots: DEFAULT_SLOTS,
            // An entry per buffer a process holds; the area is sparse and not reserved up front.
            ledger_capacity: (4 * max_objects).max(4096),
            seed,
            evict_lru,
        })
    }

    fn words(&self) -> [u64; CONFIG_WORDS] {
        [
            self.capacity,
            self.max_objects,
            self.buckets,
            self.key_heap,
            self.slots,
            self.ledger_capacity,
            self.seed,
            self.evict_lru as u64,
        ]
    }

    fn from_words(w: [u64; CONFIG_WORDS]) -> Result<Config> {
        let cfg = Config {
            capacity: w[0],
            max_objects: w[1],
            buckets: w[2],
            key_heap: w[3],
            slots: w[4],
            ledger_capacity: w[5],
            seed: w[6],
            evict_lru: w[7] == 1,
        };
        let bad = |why: &str| Err(corrupt(format!("configuration: {why} ({cfg:?})")));
        if cfg.capacity == 0 || cfg.capacity > MAX_DATA || cfg.capacity % GRANULE as u64 != 0 {
            return bad("object memory size");
        }
        if cfg.max_objects == 0 || cfg.max_objects > 1 << 28 || cfg.ledger_capacity < cfg.max_objects.min(1024) {
            return bad("object limit");
        }
        if !cfg.buckets.is_power_of_two() || cfg.buckets < cfg.max_objects || cfg.buckets > 1 << 29 {
            return bad("index size");
        }
        if cfg.key_heap == 0 || cfg.key_heap > MAX_DATA || cfg.key_heap % GRANULE as u64 != 0 {
            return bad("key storage size");
        }
        if cfg.slots == 0 || cfg.slots > crate::shm::slots::MAX_SLOTS || w[7] > 1 {
            return bad("slots or eviction");
        }
        Ok(cfg)
    }

    /// Nodes each allocator may need: one per live block and per free range between them.
    fn nodes(&self) -> u64 {
        2 * self.max_objects + 2
    }

    fn alloc_header(&self) -> u64 {
        (size_of::<TlsfCore>() as u64).next_multiple_of(64)
    }

    /// The metadata areas' lengths for [`Layout::plan`].
    pub(crate) fn metadata(&self) -> Result<[u64; AREAS]> {
        let too_big = || Error::InvalidArgument(format!("a shared pool of {} objects is too large", self.max_objects));
        let mut m = [0; AREAS];
        m[AreaKind::Slots as usize] = self.slots * size_of::<Slot>() as u64;
        m[AreaKind::Ledgers as usize] = ledger::area_len(self.slots, self.ledger_capacity).ok_or_else(too_big)?;
        m[AreaKind::Locks as usize] = size_of::<Control>() as u64;
        m[AreaKind::Records as usize] = self.max_objects * size_of::<Rec>() as u64;
        m[AreaKind::Index as usize] = self.buckets * 4;
        m[AreaKind::Alloc as usize] = 2 * self.alloc_header() + 2 * self.nodes() * size_of::<NodeCell>() as u64;
        m[AreaKind::Keys as usize] = self.key_heap;
        Ok(m)
    }
}

/// The pool's control block (the Locks area): the mutex, the configuration, counters, and the
/// seal words.
#[repr(C, align(64))]
pub(crate) struct Control {
    mutex: SharedMutex,
    config: [AtomicU64; CONFIG_WORDS],
    /// Dead processes whose slots were reclaimed.
    reclaimed: AtomicU64,
    evictions: AtomicU64,
    creates_refused: AtomicU64,
    /// The recency clock of LRU eviction: bumped at every seal and get.
    clock: AtomicU64,
    /// Derived counters (see the module's documentation).
    live: AtomicU64,
    used: AtomicU64,
    keys: AtomicU64,
    /// Record ids at or past this were never used.
    high_water: AtomicU64,
    /// One more than the first free record below the high-water mark (chained through `next`),
    /// or 0.
    free_head: AtomicU64,
    /// Repairs after a process died holding one of the pool's locks.
    repairs: AtomicU64,
    /// Nodes of each allocator whose file blocks are reserved (the node arrays are reserved as
    /// they grow, so that memory follows the objects in use, and no touch of them can fail).
    data_nodes_backed: AtomicU64,
    key_nodes_backed: AtomicU64,
    reserved: [AtomicU64; 4],
    /// 1 from a holder's death until a rebuild succeeds. Read by every get, written almost never:
    /// on a line of its own, which no create or delete writes.
    repair_pending: AtomicU64,
    reserved_too: [AtomicU64; 7],
    /// The seal words, one cache line each, so that processes sealing objects of different keys
    /// at once rarely write one line.
    seals: [SealLine; SEAL_WORDS],
    /// One bit per chunk of the key heap whose file blocks are reserved.
    key_chunks: [AtomicU64; KEY_CHUNK_WORDS],
    /// The locks over the index chains, with the counts changed under each.
    stripes: [Stripe; STRIPES],
}

/// The lock of the index chains of the buckets `s`, `s + STRIPES`, ..., and what the creates and
/// deletes made under it alone changed the pool's counts of objects, keys and bytes by (wrapping
/// differences: the pool's counts are the control block's plus every stripe's). Two lines: the
/// mutex's, and the counts', written only by the lock's holder.
#[repr(C, align(64))]
struct Stripe {
    mutex: SharedMutex,
    objects: AtomicU64,
    keys: AtomicU64,
    bytes: AtomicU64,
}

/// A seal word and its count of waiters, alone on a cache line.
#[repr(C, align(64))]
struct SealLine {
    /// Bumped by every seal of a key whose hash picks this line: the futex word gets wait on.
    word: AtomicU32,
    /// Gets waiting on `word`, so a seal makes the wake system call only when someone waits. A
    /// waiter killed while waiting leaves its count behind: later seals of that word then wake
    /// nobody, at the cost of a system call.
    waiters: AtomicU32,
}

const _: () = {
    assert!(size_of::<SealLine>() == 64);
    assert!(size_of::<Stripe>() == 128);
    assert!(size_of::<Control>() == 64 + 64 + 128 + 64 + 64 * SEAL_WORDS + 8 * KEY_CHUNK_WORDS + 128 * STRIPES);
    assert!(std::mem::offset_of!(Control, repair_pending) == 256);
    assert!(std::mem::offset_of!(Control, config) == 64);
    assert!(std::mem::offset_of!(Control, reclaimed) == 128);
    assert!(std::mem::offset_of!(Control, seals) == 320);
    assert!(std::mem::offset_of!(Control, key_chunks) == 320 + 64 * SEAL_WORDS);
    assert!(std::mem::offset_of!(Control, data_nodes_backed) == 208);
    assert!(std::mem::offset_of!(Control, stripes) == 320 + 64 * SEAL_WORDS + 8 * KEY_CHUNK_WORDS);
};

// SAFETY: `#[repr(C)]`, atomics and `SharedMutex`es (themselves `Shared`), valid for any bytes.
unsafe impl Shared for Control {}

/// One object's record: 64 bytes, one cache line (the Records area starts on a page), so a get
/// reads one line of it.
#[repr(C, align(64))]
pub(crate) struct Rec {
    /// The record's state ([`FREE`], [`UNSEALED`], [`SEALED`] or [`DELETED`]) and its
    /// generation, bumped at every create that uses the record so that (id, generation) names
    /// one object: one word ([`stamp`]), so that a reader reads both at once.
    stamp: AtomicU64,
    /// Bit `slot % 32` of every process slot whose ledger may hold a reference on the object:
    /// where a deleter looks. Set by a reader before it publishes its reference; only a create
    /// clears it.
    holders: AtomicU32,
    /// The next record in the bucket's chain, or in the free list: id + 1, or 0 at the end.
    next: AtomicU32,
    /// The key's length (low [`KEY_LEN_BITS`] bits) and the number of parts (the rest).
    shape: AtomicU32,
    /// The object memory allocator's node of the block, or NIL for an empty object.
    node: AtomicU32,
    /// The key heap allocator's node of the long key and part table, or NIL.
    key_node: AtomicU32,
    /// Where the object's block starts in the data area, in units of 64 bytes.
    offset_units: AtomicU32,
    /// Where the long key's bytes, then the part table (8-aligned), start in the key heap, in
    /// units of 64 bytes.
    extra_units: AtomicU32,
    /// The LRU clock's low 32 bits at the object's last seal or get.
    last_used: AtomicU32,
    size: AtomicU64,
    inline: [AtomicU64; 2],
}

/// Bits of [`Rec`]'s `shape` holding the key's length (at most `MAX_KEY_LEN`, 4096).
const KEY_LEN_BITS: u32 = 13;

const _: () = {
    assert!(size_of::<Rec>() == 64);
    assert!(std::mem::offset_of!(Rec, stamp) == 0);
    assert!(std::mem::offset_of!(Rec, holders) == 8);
    assert!(std::mem::offset_of!(Rec, shape) == 16);
    assert!(std::mem::offset_of!(Rec, size) == 40);
    assert!(std::mem::offset_of!(Rec, inline) == 48);
    assert!(crate::pool::MAX_KEY_LEN < 1 << KEY_LEN_BITS);
    assert!(crate::parts::MAX_PARTS < 1 << (32 - KEY_LEN_BITS));
};

/// A record's state and generation as its `stamp` word: the two 32-bit halves that hold the
/// state (the word's first four bytes) and the generation (the next four), as the two fields of
/// the earlier layout did.
#[inline]
const fn stamp(state: u32, generation: u32) -> u64 {
    if cfg!(target_endian = "little") {
        (generation as u64) << 32 | state as u64
    } else {
        (state as u64) << 32 | generation as u64
    }
}

/// The state and the generation of a [`stamp`].
#[inline]
const fn unstamp(word: u64) -> (u32, u32) {
    if cfg!(target_endian = "little") {
        (word as u32, (word >> 32) as u32)
    } else {
        ((word >> 32) as u32, word as u32)
    }
}

impl Rec {
    #[inline]
    fn state(&self, order: Ordering) -> u32 {
        unstamp(self.stamp.load(order)).0
    }

    #[inline]
    fn generation(&self, order: Ordering) -> u32 {
        unstamp(self.stamp.load(order)).1
    }

    /// Sets the state and keeps the generation, under the lock that guards the record. The
    /// generation changes only under that lock, and the state too but for a seal
    /// ([`Store::seal`]) of an unsealed record, which this overwrites as a store of the state
    /// alone would, and a [`Store::claim`], which only a deleted record undergoes.
    fn set_state(&self, state: u32, order: Ordering) {
        let (now, generation) = unstamp(self.stamp.load(Relaxed));
        if now != UNSEALED {
            self.stamp.store(stamp(state, generation), order);
            return;
        }
        // Never fails: the closure always answers a word.
        let _ = self.stamp.fetch_update(order, Relaxed, |word| Some(stamp(state, unstamp(word).1)));
    }

    /// Sets the generation of a record nobody else changes now (a free record its caller took).
    fn set_generation(&self, generation: u32, order: Ordering) {
        let state = self.state(Relaxed);
        self.stamp.store(stamp(state, generation), order);
    }

    #[inline]
    fn key_len(&self) -> usize {
        (self.shape.load(Relaxed) & ((1 << KEY_LEN_BITS) - 1)) as usize
    }

    #[inline]
    fn parts(&self) -> u64 {
        (self.shape.load(Relaxed) >> KEY_LEN_BITS) as u64
    }

    /// The block's offset in the data area.
    #[inline]
    fn offset(&self) -> u64 {
        self.offset_units.load(Relaxed) as u64 * GRANULE as u64
    }

    /// The long key's and part table's offset in the key heap.
    #[inline]
    fn extra(&self) -> u64 {
        self.extra_units.load(Relaxed) as u64 * GRANULE as u64
    }
}

// SAFETY: `#[repr(C)]`, atomics only, no padding, valid for every bit pattern.
unsafe impl Shared for Rec {}

/// Offset (from the object's first byte) and length of each part, copied out.
pub(crate) type PartTable = Box<[(usize, usize)]>;

/// What a process keeps of an object it holds: copied out once it holds a reference, never
/// changing. Its key stays in the pool ([`Store::key_in_place`]).
pub(crate) struct Object {
    pub id: u32,
    pub generation: u32,
    pub offset: u64,
    pub size: u64,
    pub parts: Option<PartTable>,
}

#[inline]
pub(crate) fn ledger_id(id: u32, generation: u32) -> u64 {
    (generation as u64) << 32 | id as u64
}

#[inline]
pub(crate) fn split_ledger_id(id: u64) -> (u32, u32) {
    (id as u32, (id >> 32) as u32)
}

/// A sealed record [`Store::peek`] found without the mutex: the object of (`id`, `generation`)
/// when it was read, and the record, to confirm it once a reference is published.
#[derive(Clone, Copy)]
pub(crate) struct Found<'a> {
    pub id: u32,
    pub generation: u32,
    rec: &'a Rec,
}

impl Found<'_> {
    /// The object's [`ledger_id`].
    #[inline]
    pub(crate) fn ledger_id(&self) -> u64 {
        ledger_id(self.id, self.generation)
    }

    /// Marks process slot `slot` as one that may hold a reference on the record, before it
    /// publishes one. A bit already set costs no write (a hot object stays shared by the caches).
    #[inline]
    pub(crate) fn mark_holder(&self, slot: usize) {
        Self::mark(self.rec, slot);
    }

    #[inline]
    fn mark(rec: &Rec, slot: usize) {
        let bit = Store::holder_bit(slot);
        if rec.holders.load(Acquire) & bit == 0 {
            rec.holders.fetch_or(bit, SeqCst);
        }
    }

    /// Whether the record still holds this object in `state` ([`Store::still`]).
    #[inline]
    pub(crate) fn still(&self, state: u32) -> bool {
        Self::is(self.rec, self.generation, state)
    }

    #[inline]
    fn is(rec: &Rec, generation: u32, state: u32) -> bool {
        rec.stamp.load(SeqCst) == stamp(state, generation)
    }
}

/// What a create took for its object: the record, the block of object memory (node, offset)
/// and the key heap's block of its long key and part table (node, offset), with its number of
/// parts.
struct Made {
    id: u32,
    node: u32,
    offset: u64,
    key_node: u32,
    extra: u64,
    parts: u32,
}

/// Why a create failed.
#[derive(Debug)]
pub(crate) enum CreateError {
    /// The key is there: `unsealed` when its create is not sealed yet (its creator may be dead).
    AlreadyExists {
        unsealed: bool,
    },
    NoSpace {
        largest_free: u64,
    },
    ObjectLimit,
    KeyHeapFull,
    Other(Error),
}

impl From<Error> for CreateError {
    fn from(e: Error) -> Self {
        CreateError::Other(e)
    }
}

/// The state of a key at one moment.
pub(crate) enum Lookup {
    /// Sealed; a reference was taken for the caller.
    Sealed(Object),
    Unsealed,
    Absent,
}

/// Counters, read under the mutex.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub capacity: u64,
    pub used: u64,
    pub largest_free: u64,
    pub live: u64,
    pub keys: u64,
    pub max_objects: u64,
    pub reclaimed: u64,
    pub evictions: u64,
    pub creates_refused: u64,
    /// Rebuilds after a process died holding the pool's mutex.
    pub repairs: u64,
}

/// A pool file's shared state, viewed through one process's mapping.
pub(crate) struct Store<'a> {
    pub cfg: Config,
    ctl: &'a Control,
    recs: &'a [Rec],
    buckets: &'a [AtomicU32],
    data_core: &'a TlsfCore,
    data_nodes: &'a [NodeCell],
    key_core: &'a TlsfCore,
    key_nodes: &'a [NodeCell],
    keys: Area<'a>,
    ledgers: Area<'a>,
    /// The process slots, for their record caches.
    slot_table: &'a [Slot],
    /// Every slot's ledger, where deleters look for references.
    ledger_views: Box<[Ledger<'a>]>,
    /// Serialises this process's threads taking records from and putting records into its
    /// slot's cache (which other processes only empty, with atomic swaps).
    cache_lock: std::sync::Mutex<()>,
    hasher: foldhash::fast::FixedState,
    /// The pool file, to reserve the blocks of metadata that grows with use; `None` while the
    /// creator initialises the file (whose first chunks it reserved when making it).
    file: Option<&'a std::fs::File>,
    /// Where the node arrays and the key heap start in the file.
    data_nodes_at: u64,
    key_nodes_at: u64,
    keys_at: u64,
    ledgers_at: u64,
}

/// Proof that the caller holds the pool's mutex.
pub(crate) type Locked<'g> = MutexGuard<'g>;

/// Proof that the caller holds the locks of index chains ([`STRIPES`]): of one stripe, or of
/// all of them (with the pool's mutex, taken first: see [`Store::all_chains`]).
pub(crate) enum Chains<'g> {
    One { stripe: usize, _guard: MutexGuard<'g> },
    All { _guards: Vec<MutexGuard<'g>> },
}

impl Chains<'_> {
    /// Whether the chain of bucket `bucket` is under these locks.
    fn covers(&self, bucket: usize) -> bool {
        match self {
            Chains::One { stripe, .. } => bucket % STRIPES == *stripe,
            Chains::All { .. } => true,
        }
    }

    /// Where changes to the counts made under these locks alone go.
    fn tally(&self) -> Tally {
        match self {
            Chains::One { stripe, .. } => Tally::Stripe(*stripe),
            Chains::All { .. } => Tally::Pool,
        }
    }
}

/// Which counters a change of the counts goes to: the control block's (under the pool's mutex),
/// or a stripe's (under that stripe's lock).
#[derive(Clone, Copy)]
enum Tally {
    Pool,
    Stripe(usize),
}

/// What a delete left to do ([`Store::delete_fast`], [`Store::delete`]).
pub(crate) enum Deleted {
    /// The object is freed, or left to its last reader.
    Done,
    /// The key is gone and the object marked deleted; the caller looks for references without
    /// the mutex ([`Store::held`]) and frees it with [`Store::free_deleted`] if there are none.
    Later(u32, u32),
}

impl<'a> Store<'a> {
    /// The views of a mapped pool file's areas, checked against `cfg` (the creator's, or the
    /// configuration read back by [`Store::read_config`]).
    pub(crate) fn new(
        file: &Area<'a>,
        layout: &Layout,
        cfg: Config,
        backing: Option<&'a std::fs::File>,
    ) -> Result<Store<'a>> {
        let expect = cfg.metadata()?;
        for kind in AreaKind::ALL {
            if kind != AreaKind::Data && layout.span(kind).len != expect[kind as usize] {
                return Err(Error::InvalidArgument(format!(
                    "not a usable zcopy pool file: its {} is {} bytes, its configuration needs {}",
                    kind.name(),
                    layout.span(kind).len,
                    expect[kind as usize]
                )));
            }
        }
        if layout.span(AreaKind::Data).len < cfg.capacity {
            return Err(Error::InvalidArgument(format!(
                "not a usable zcopy pool file: a data area of {} bytes is smaller than its capacity {}",
                layout.span(AreaKind::Data).len,
                cfg.capacity
            )));
        }
        let area = |kind| layout.area(file, kind);
        let ctl = area(AreaKind::Locks)?.get::<Control>(0)?;
        let recs = area(AreaKind::Records)?.slice::<Rec>(0, cfg.max_objects)?;
        let buckets = area(AreaKind::Index)?.slice::<AtomicU32>(0, cfg.buckets)?;
        let alloc = area(AreaKind::Alloc)?;
        let head = cfg.alloc_header();
        let data_core = alloc.get::<TlsfCore>(0)?;
        let key_core = alloc.get::<TlsfCore>(head)?;
        let nodes_len = cfg.nodes() * size_of::<NodeCell>() as u64;
        let data_nodes = alloc.slice::<NodeCell>(2 * head, cfg.nodes())?;
        let key_nodes = alloc.slice::<NodeCell>(2 * head + nodes_len, cfg.nodes())?;
        let ledgers = area(AreaKind::Ledgers)?;
        let slot_table = area(AreaKind::Slots)?.slice::<Slot>(0, cfg.slots)?;
        let ledger_views = (0..cfg.slots as usize)
            .map(|slot| Ledger::new(&ledgers, cfg.slots as usize, slot))
            .collect::<Result<Box<[_]>>>()?;
        Ok(Store {
            cfg,
            ctl,
            recs,
            buckets,
            data_core,
            data_nodes,
            key_core,
            key_nodes,
            keys: area(AreaKind::Keys)?,
            ledgers,
            slot_table,
            ledger_views,
            cache_lock: std::sync::Mutex::new(()),
            hasher: foldhash::fast::FixedState::with_seed(cfg.seed),
            file: backing,
            data_nodes_at: layout.span(AreaKind::Alloc).offset + 2 * head,
            key_nodes_at: layout.span(AreaKind::Alloc).offset + 2 * head + nodes_len,
            keys_at: layout.span(AreaKind::Keys).offset,
            ledgers_at: layout.span(AreaKind::Ledgers).offset,
        })
    }

    /// The (offset, length) ranges of a new pool file to reserve before [`Store::init`]: all of
    /// it but the ledgers' entries, the node arrays past their first chunk and the key heap,
    /// which are reserved as they are used.
    pub(crate) fn creation_ranges(layout: &Layout, cfg: &Config) -> Vec<(u64, u64)> {
        let ledgers = layout.span(AreaKind::Ledgers);
        let per_slot = ledgers.len / cfg.slots;
        let headers = (0..cfg.slots).map(|slot| (ledgers.offset + slot * per_slot, 64));
        let alloc = layout.span(AreaKind::Alloc);
        let data = layout.span(AreaKind::Data);
        let head = cfg.alloc_header();
        let nodes = NODE_CHUNK.min(cfg.nodes()) * size_of::<NodeCell>() as u64;
        let nodes_len = cfg.nodes() * size_of::<NodeCell>() as u64;
        let mut ranges: Vec<(u64, u64)> = headers.collect();
        ranges.extend([
            (0, ledgers.offset),
            (ledgers.offset + ledgers.len, alloc.offset + 2 * head - (ledgers.offset + ledgers.len)),
            (alloc.offset + 2 * head, nodes),
            (alloc.offset + 2 * head + nodes_len, nodes),
            (data.offset, data.len),
        ]);
        ranges
    }

    /// Hands out `n` more entries of `ledger` ([`Ledger::grow`]), reserving their file blocks.
    pub(crate) fn grow_ledger(&self, ledger: &Ledger<'_>, n: u64) -> Result<std::ops::Range<u64>> {
        ledger.grow(n, |offset, len| match self.file {
            Some(file) => {
                crate::shm::file::reserve(file, self.ledgers_at + offset, len, std::path::Path::new("the pool file"))
            }
            None => Ok(()),
        })
    }

    /// Reserves the file blocks of the first `need` nodes of one allocator, a chunk at a time.
    fn back_nodes(&self, data: bool, need: u64) -> Result<()> {
        let (word, at) = if data {
            (&self.ctl.data_nodes_backed, self.data_nodes_at)
        } else {
            (&self.ctl.key_nodes_backed, self.key_nodes_at)
        };
        let have = word.load(Relaxed).min(self.cfg.nodes());
        if need <= have {
            return Ok(());
        }
        let Some(file) = self.file else { return Ok(()) };
        let upto = need.saturating_add(NODE_CHUNK).min(self.cfg.nodes());
        let cell = size_of::<NodeCell>() as u64;
        crate::shm::file::reserve(file, at + have * cell, (upto - have) * cell, std::path::Path::new("the pool file"))?;
        word.store(upto, Relaxed);
        Ok(())
    }

    /// Bytes of the key heap one reservation chunk covers.
    fn key_chunk(&self) -> u64 {
        self.cfg.key_heap.div_ceil(64 * KEY_CHUNK_WORDS as u64).next_multiple_of(4096).max(64 << 10)
    }

    /// Reserves the file blocks under `[offset, offset + len)` of the key heap.
    fn back_keys(&self, offset: u64, len: u64) -> Result<()> {
        let Some(file) = self.file else { return Ok(()) };
        if len == 0 {
            return Ok(());
        }
        let chunk = self.key_chunk();
        for c in offset / chunk..=(offset + len - 1) / chunk {
            let (word, bit) = (&self.ctl.key_chunks[(c / 64) as usize % KEY_CHUNK_WORDS], 1u64 << (c % 64));
            if word.load(Relaxed) & bit != 0 {
                continue;
            }
            let start = c * chunk;
            let n = chunk.min(self.cfg.key_heap.saturating_sub(start));
            crate::shm::file::reserve(file, self.keys_at + start, n, std::path::Path::new("the pool file"))?;
            word.fetch_or(bit, Relaxed);
        }
        Ok(())
    }

    /// The configuration the creator stored in a published pool file, checked.
    pub(crate) fn read_config(file: &Area<'_>, layout: &Layout) -> Result<Config> {
        let ctl = layout.area(file, AreaKind::Locks)?.get::<Control>(0)?;
        Config::from_words(std::array::from_fn(|i| ctl.config[i].load(Relaxed)))
    }

    /// Initialises a new pool file's state.
    ///
    /// # Safety
    /// Only the creator calls this, before publishing the file (see [`SharedMutex::init`]).
    pub(crate) unsafe fn init(&self) -> Result<()> {
        // SAFETY: per this function's contract.
        unsafe { self.ctl.mutex.init()? };
        for stripe in &self.ctl.stripes {
            // SAFETY: per this function's contract.
            unsafe { stripe.mutex.init()? };
        }
        for (word, value) in self.ctl.config.iter().zip(self.cfg.words()) {
            word.store(value, Relaxed);
        }
        self.data_tlsf().init((self.cfg.capacity / GRANULE as u64) as u32);
        self.key_tlsf().init((self.cfg.key_heap / GRANULE as u64) as u32);
        // The creation ranges reserved the first chunk of each node array.
        let first = NODE_CHUNK.min(self.cfg.nodes());
        self.ctl.data_nodes_backed.store(first, Relaxed);
        self.ctl.key_nodes_backed.store(first, Relaxed);
        Ok(())
    }

    pub(crate) fn mutex(&self) -> &'a SharedMutex {
        &self.ctl.mutex
    }

    /// The stripe whose lock covers the chain of `hash`'s bucket.
    #[inline]
    fn stripe_of(&self, hash: u64) -> usize {
        (hash & (self.cfg.buckets - 1)) as usize % STRIPES
    }

    /// The lock of the chain of `hash`'s bucket, taken without the pool's mutex: for a create or
    /// delete that changes nothing else the mutex guards. `None` when the index cannot be trusted
    /// now: a repair is pending, or this lock's last holder died holding it (the repair is then
    /// marked pending, before the lock is made consistent). The caller then takes the pool's
    /// mutex, which makes the repair.
    #[inline]
    pub(crate) fn chains_fast(&self, hash: u64) -> Result<Option<Chains<'a>>> {
        let stripe = self.stripe_of(hash);
        match self.ctl.stripes[stripe].mutex.lock()? {
            Acquired::Locked(mut guard) => {
                if self.repair_pending_now() {
                    return Ok(None);
                }
                guard.flag_on_panic(&self.ctl.repair_pending);
                Ok(Some(Chains::One { stripe, _guard: guard }))
            }
            Acquired::OwnerDied(repair) => {
                self.ctl.repair_pending.store(1, Release);
                drop(repair.consistent()?);
                Ok(None)
            }
        }
    }

    /// The lock of the chain of `hash`'s bucket, under the pool's mutex: a lock whose holder died
    /// makes the repair ([`Store::all_chains`]) first.
    pub(crate) fn chains(&self, g: &Locked<'_>, hash: u64) -> Result<Chains<'a>> {
        let stripe = self.stripe_of(hash);
        for _ in 0..4 {
            match self.ctl.stripes[stripe].mutex.lock()? {
                Acquired::Locked(mut guard) => {
                    if !self.repair_pending(g) {
                        guard.flag_on_panic(&self.ctl.repair_pending);
                        return Ok(Chains::One { stripe, _guard: guard });
                    }
                }
                Acquired::OwnerDied(repair) => {
                    self.begin_repair(g);
                    drop(repair.consistent()?);
                }
            }
            drop(self.all_chains(g)?);
        }
        Err(Error::Internal("a shared pool's index lock keeps being left by dying processes".into()))
    }

    /// Every chain's lock, under the pool's mutex (so that only one thread of all the processes
    /// holds more than one), in order; when one's holder died, or a repair is pending, the index
    /// and everything derived is rebuilt ([`Store::rebuild`]) before this answers.
    pub(crate) fn all_chains(&self, g: &Locked<'_>) -> Result<Chains<'a>> {
        let mut guards = Vec::with_capacity(STRIPES);
        for stripe in &self.ctl.stripes {
            let mut guard = match stripe.mutex.lock()? {
                Acquired::Locked(guard) => guard,
                Acquired::OwnerDied(repair) => {
                    self.begin_repair(g);
                    repair.consistent()?
                }
            };
            guard.flag_on_panic(&self.ctl.repair_pending);
            guards.push(guard);
        }
        let all = Chains::All { _guards: guards };
        if self.repair_pending(g) {
            self.rebuild(g, &all)?;
        }
        Ok(all)
    }

    pub(crate) fn ledger(&self, slot: usize) -> Result<Ledger<'a>> {
        Ledger::new(&self.ledgers, self.cfg.slots as usize, slot)
    }

    /// The `holders` bit of process slot `slot`.
    #[inline]
    fn holder_bit(slot: usize) -> u32 {
        1 << (slot % 32)
    }

    fn data_tlsf(&self) -> Tlsf<&'a TlsfCore, &'a [NodeCell]> {
        Tlsf::from_parts(self.data_core, self.data_nodes)
    }

    fn key_tlsf(&self) -> Tlsf<&'a TlsfCore, &'a [NodeCell]> {
        Tlsf::from_parts(self.key_core, self.key_nodes)
    }

    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The futex word a `get` of a key with this hash waits on.
    pub(crate) fn seal_word(&self, hash: u64) -> &'a AtomicU32 {
        &self.ctl.seals[(hash % SEAL_WORDS as u64) as usize].word
    }

    /// Every seal word.
    pub(crate) fn seal_words(&self) -> impl Iterator<Item = &'a AtomicU32> {
        self.ctl.seals.iter().map(|line| &line.word)
    }

    /// The count of gets waiting on the seal word of `hash`.
    pub(crate) fn waiters(&self, hash: u64) -> &'a AtomicU32 {
        &self.ctl.seals[(hash % SEAL_WORDS as u64) as usize].waiters
    }

    /// Record `id`, checked (an id read from shared memory is a claim).
    #[inline]
    fn rec(&self, id: u32) -> Result<&'a Rec> {
        match self.recs.get(id as usize) {
            Some(rec) => Ok(rec),
            None => Err(self.no_record(id)),
        }
    }

    #[cold]
    #[inline(never)]
    fn no_record(&self, id: u32) -> Error {
        corrupt(format!("record {id} of {}", self.recs.len()))
    }

    #[inline]
    fn bucket(&self, hash: u64) -> &'a AtomicU32 {
        &self.buckets[(hash & (self.cfg.buckets - 1)) as usize]
    }

    /// [`Store::bucket`], to change its chain or walk it under `c`.
    #[inline]
    fn chain(&self, c: &Chains<'_>, hash: u64) -> &'a AtomicU32 {
        let bucket = (hash & (self.cfg.buckets - 1)) as usize;
        debug_assert!(c.covers(bucket), "bucket {bucket}'s chain is changed under another stripe's lock");
        &self.buckets[bucket]
    }

    #[inline]
    fn key_is(&self, rec: &Rec, key: &[u8], inline: Option<[u64; 2]>) -> Result<bool> {
        if rec.key_len() != key.len() {
            return Ok(false);
        }
        if let Some(words) = inline {
            // A short key is two words of the record (zero-padded): compare them as they are.
            return Ok(rec.inline[0].load(Relaxed) == words[0] && rec.inline[1].load(Relaxed) == words[1]);
        }
        // Compared where it lies (read volatile: a lock-free reader's record may be changing).
        self.keys.bytes_equal(rec.extra(), key)
    }

    /// A key of at most [`INLINE_KEY`] bytes as the two words a record holds it in (the
    /// zero-padded bytes in native order), assembled from whole-word loads.
    #[inline]
    fn inline_words(key: &[u8]) -> Option<[u64; 2]> {
        if key.len() > INLINE_KEY {
            return None;
        }
        if key.len() >= 8 {
            let (lo, hi) = key.split_at(8);
            return Some([u64::from_ne_bytes(lo.try_into().ok()?), Self::word(hi)]);
        }
        Some([Self::word(key), 0])
    }

    /// Up to 8 bytes as a zero-padded native word: `u64::from_ne_bytes` of the bytes padded
    /// with zeros to 8. Assembled from at most two loads of the bytes themselves, overlapping
    /// where the length is not a power of two (the overlap holds the same bytes twice, so OR-ing
    /// them is exact): copying a short key into a zeroed array called memcpy, and the word read
    /// back from that array waited on the copy's stores (half of a create's key lookup).
    #[inline]
    fn word(b: &[u8]) -> u64 {
        let n = b.len().min(8);
        let le = match n {
            8 => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            4..=7 => {
                let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
                let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]) as u64;
                lo | hi << (8 * (n - 4))
            }
            1..=3 => b[0] as u64 | (b[n / 2] as u64) << (8 * (n / 2)) | (b[n - 1] as u64) << (8 * (n - 1)),
            _ => 0,
        };
        // The value whose little-endian bytes are those above; `from_ne_bytes` on a big-endian
        // machine reads the same bytes the other way round.
        le.to_le()
    }

    /// Where the part table of `rec` starts in the key heap.
    fn parts_at(rec: &Rec) -> u64 {
        let len = rec.key_len() as u64;
        let long = if len as usize > INLINE_KEY { len.next_multiple_of(8) } else { 0 };
        rec.extra() + long
    }

    fn parts_of(&self, rec: &Rec) -> Result<Option<PartTable>> {
        let count = rec.parts();
        if count == 0 {
            return Ok(None);
        }
        let size = rec.size.load(Relaxed);
        let table = self.keys.slice::<AtomicU64>(Self::parts_at(rec), 2 * count)?;
        let mut parts = Vec::with_capacity(count as usize);
        for pair in table.chunks_exact(2) {
            let (offset, len) = (pair[0].load(Relaxed), pair[1].load(Relaxed));
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(corrupt(format!("a part of {len} bytes at {offset} lies outside its object of {size}")));
            }
            parts.push((offset as usize, len as usize));
        }
        Ok(Some(parts.into_boxed_slice()))
    }

    /// The object of record `id`, copied out and checked against the pool's bounds, its key
    /// included.
    pub(crate) fn object(&self, id: u32) -> Result<Object> {
        self.key_in_place(id)?;
        self.object_held(id)
    }

    /// [`Store::object`] for a reader that found record `id` by its key and holds a confirmed
    /// reference: the key is the one it looked for, so only the bounds are checked.
    pub(crate) fn object_held(&self, id: u32) -> Result<Object> {
        let rec = self.rec(id)?;
        self.object_in(rec, id, rec.generation(Relaxed))
    }

    /// The object (`id`, `generation`) of `rec`, its block checked against the data area.
    #[inline(always)]
    fn object_in(&self, rec: &Rec, id: u32, generation: u32) -> Result<Object> {
        let (offset, size) = (rec.offset(), rec.size.load(Relaxed));
        if offset.checked_add(size).is_none_or(|end| end > self.cfg.capacity) {
            return Err(outside_data(id, offset, size));
        }
        // The count read here too, so that the common object, without parts, makes no call.
        let parts = if rec.parts() == 0 { None } else { self.parts_of(rec)? };
        Ok(Object { id, generation, offset, size, parts })
    }

    /// The key of record `id` where it lies in the pool, checked: for a holder of a reference
    /// on the object, while its key cannot change.
    pub(crate) fn key_in_place(&self, id: u32) -> Result<&'a [u8]> {
        let rec = self.rec(id)?;
        let len = rec.key_len();
        if len == 0 || len > crate::pool::MAX_KEY_LEN {
            return Err(corrupt(format!("a record's key is {len} bytes long")));
        }
        if len <= INLINE_KEY {
            // SAFETY: the record's two inline words are 16 bytes of the mapping, which lives for
            // 'a; bytes are valid for any value, and `len` is at most 16.
            return Ok(unsafe { std::slice::from_raw_parts(rec.inline.as_ptr().cast::<u8>(), len) });
        }
        let at = self.keys.ptr_at(rec.extra(), len as u64)?;
        // SAFETY: `ptr_at` checked that the `len` bytes lie inside the key heap's mapping, which
        // lives for 'a.
        Ok(unsafe { std::slice::from_raw_parts(at, len) })
    }

    /// The record holding `key` in the index, if any.
    fn find(&self, c: &Chains<'_>, key: &[u8], hash: u64) -> Result<Option<u32>> {
        let mut link = self.chain(c, hash).load(Relaxed);
        let inline = Self::inline_words(key);
        for _ in 0..=self.cfg.max_objects {
            if link == 0 {
                return Ok(None);
            }
            let id = link - 1;
            let rec = self.rec(id)?;
            if self.key_is(rec, key, inline)? {
                return Ok(Some(id));
            }
            link = rec.next.load(Relaxed);
        }
        Err(corrupt("an index chain loops".into()))
    }

    /// The sealed record holding `key`, found without the mutex: a candidate only, which the
    /// caller confirms with [`Found::still`] once its reference is published. `None` when the
    /// index shows no sealed record of the key now, or when what it read was changing under it:
    /// the caller asks again under the mutex.
    #[inline]
    pub(crate) fn peek(&self, key: &[u8], hash: u64) -> Option<Found<'a>> {
        let inline = Self::inline_words(key);
        let mut link = self.bucket(hash).load(Acquire);
        // A chain walked while it changes may lead anywhere: a bounded walk, then the mutex.
        for _ in 0..64 {
            if link == 0 {
                return None;
            }
            let id = link - 1;
            let rec = self.recs.get(id as usize)?;
            // State and generation in one read, with acquire: the key read after it is the
            // object's of that generation (or a later one's, which the caller's re-check of the
            // stamp finds out).
            let (state, generation) = unstamp(rec.stamp.load(Acquire));
            if state == SEALED && self.key_is(rec, key, inline).unwrap_or(false) {
                return Some(Found { id, generation, rec });
            }
            link = rec.next.load(Acquire);
        }
        None
    }

    /// Marks process slot `slot` as one that may hold a reference on record `id`, before it
    /// publishes one (see [`Found::mark_holder`]).
    pub(crate) fn mark_holder(&self, id: u32, slot: usize) -> Result<()> {
        Found::mark(self.rec(id)?, slot);
        Ok(())
    }

    /// Whether record `id` still holds the object of `generation` in `state`, read with the
    /// sequential consistency that orders it against a deleter's scan (see the module's
    /// documentation).
    #[inline]
    pub(crate) fn still(&self, id: u32, generation: u32, state: u32) -> Result<bool> {
        Ok(Found::is(self.rec(id)?, generation, state))
    }

    /// Refreshes the recency of record `id` for LRU eviction, without the mutex: to the clock's
    /// value, which only creates and seals advance, so readers of a hot object write nothing.
    #[inline]
    pub(crate) fn touch(&self, id: u32) {
        if !self.cfg.evict_lru {
            return;
        }
        if let Some(rec) = self.recs.get(id as usize) {
            self.touch_rec(rec);
        }
    }

    fn touch_rec(&self, rec: &Rec) {
        let now = self.ctl.clock.load(Relaxed) as u32;
        if rec.last_used.load(Relaxed) != now {
            rec.last_used.store(now, Relaxed);
        }
    }

    /// [`Store::object_held`] and [`Store::touch`] of a record [`Store::peek`] found, once the
    /// caller's reference on it is confirmed.
    #[inline(always)]
    pub(crate) fn object_found(&self, found: &Found<'a>) -> Result<Object> {
        let obj = self.object_in(found.rec, found.id, found.generation)?;
        if self.cfg.evict_lru {
            self.touch_rec(found.rec);
        }
        Ok(obj)
    }

    /// Whether any ledger holds a reference on (`id`, `generation`), or creates it. Called after
    /// marking the record, with the sequential consistency that orders it against readers.
    pub(crate) fn held(&self, id: u32, generation: u32) -> Result<bool> {
        let lid = ledger_id(id, generation);
        for ledger in self.holder_ledgers(self.rec(id)?.holders.load(SeqCst)) {
            if ledger.holds(lid)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The ledgers a record's holder bits `mask` point to (bit `b` stands for slots `b`,
    /// `b + 32`, ...).
    fn holder_ledgers(&self, mask: u32) -> impl Iterator<Item = &Ledger<'a>> + '_ {
        let bits = std::iter::successors((mask != 0).then_some(mask), |m| Some(m & (m - 1)).filter(|&m| m != 0));
        bits.flat_map(move |m| self.ledger_views.iter().skip(m.trailing_zeros() as usize).step_by(32))
    }

    /// Frees (`id`, `generation`) if it is deleted and nobody holds it any more: what a reader
    /// does after withdrawing its reference from a deleted object, and a delete. `cache` as for
    /// [`Store::free_record`]. Answers whether it freed it.
    pub(crate) fn free_if_unheld(
        &self,
        g: &Locked<'_>,
        id: u32,
        generation: u32,
        cache: Option<usize>,
    ) -> Result<bool> {
        if !self.still(id, generation, DELETED)? || self.held(id, generation)? {
            return Ok(false);
        }
        self.free_record(g, id, generation, cache)
    }

    /// Frees every deleted object nobody holds: those whose last reader died after withdrawing
    /// its reference and before freeing. Answers how many.
    pub(crate) fn sweep(&self, g: &Locked<'_>) -> Result<u64> {
        let high = self.ctl.high_water.load(Relaxed).min(self.cfg.max_objects) as u32;
        let mut freed = 0;
        for id in 0..high {
            let rec = self.rec(id)?;
            if rec.state(Relaxed) == DELETED && self.free_if_unheld(g, id, rec.generation(Relaxed), None)? {
                freed += 1;
            }
        }
        Ok(freed)
    }

    /// Takes record `id`, whose key's hash is `hash`, out of its bucket's chain.
    fn unlink(&self, c: &Chains<'_>, id: u32, hash: u64) -> Result<()> {
        let rec = self.rec(id)?;
        let mut at = self.chain(c, hash);
        for _ in 0..=self.cfg.max_objects {
            let link = at.load(Relaxed);
            if link == 0 {
                return Err(corrupt(format!("record {id} is not in its index chain")));
            }
            if link == id + 1 {
                at.store(rec.next.load(Relaxed), Relaxed);
                rec.next.store(0, Relaxed);
                return Ok(());
            }
            at = &self.rec(link - 1)?.next;
        }
        Err(corrupt("an index chain loops".into()))
    }

    fn tick(&self) -> u64 {
        self.ctl.clock.fetch_add(1, Relaxed) + 1
    }

    /// A free record id: off the free list, else past the high-water mark.
    fn take_id(&self, _: &Locked<'_>) -> Result<Option<u32>> {
        let head = self.ctl.free_head.load(Relaxed);
        if head != 0 {
            let id = u32::try_from(head - 1).map_err(|_| corrupt(format!("free record {head}")))?;
            let rec = self.rec(id)?;
            if rec.state(Relaxed) != FREE {
                return Err(corrupt(format!("record {id} on the free list is in use")));
            }
            self.ctl.free_head.store(rec.next.load(Relaxed) as u64, Relaxed);
            return Ok(Some(id));
        }
        let high = self.ctl.high_water.load(Relaxed);
        if high >= self.cfg.max_objects {
            return Ok(None);
        }
        self.ctl.high_water.store(high + 1, Relaxed);
        Ok(Some(high as u32))
    }

    /// Puts record `id` on the free list, naming no block.
    fn give_id(&self, _: &Locked<'_>, id: u32) -> Result<()> {
        let rec = self.rec(id)?;
        rec.node.store(NIL, Relaxed);
        rec.key_node.store(NIL, Relaxed);
        rec.next.store(self.ctl.free_head.load(Relaxed) as u32, Relaxed);
        self.ctl.free_head.store(id as u64 + 1, Relaxed);
        Ok(())
    }

    /// Creates an unsealed object for `key` (whose [`Store::hash`] is `hash`, computed before
    /// the mutex was taken), recorded as `CREATING` in the empty entry `handle` of `ledger`
    /// before the record is claimed, under the pool's mutex and the lock of the key's chain. The
    /// object answered has no part table: the caller, who has it, copies it before taking the
    /// mutex.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &self,
        g: &Locked<'_>,
        c: &Chains<'_>,
        ledger: &Ledger<'_>,
        handle: Handle,
        key: &[u8],
        hash: u64,
        size: u64,
        parts: Option<&[(usize, usize)]>,
    ) -> std::result::Result<Object, CreateError> {
        if let Some(id) = self.find(c, key, hash)? {
            return Err(CreateError::AlreadyExists { unsealed: self.rec(id)?.state(Relaxed) == UNSEALED });
        }
        let units = size.div_ceil(GRANULE as u64);
        // A record this process freed, with its block when it is of this size; else one off the
        // free list, and when there is none, the records every process keeps are given back.
        let (id, kept) = match self.uncache(g, ledger.slot(), units)? {
            Some(got) => got,
            None => match self.take_id(g)? {
                Some(id) => (id, None),
                None if self.flush_caches(g)? > 0 => match self.take_id(g)? {
                    Some(id) => (id, None),
                    None => return Err(CreateError::ObjectLimit),
                },
                None => return Err(CreateError::ObjectLimit),
            },
        };
        // An allocation adds at most one node to each allocator.
        let nodes = |data: bool| if data { self.data_tlsf() } else { self.key_tlsf() }.nodes_allocated() as u64 + 1;
        if let Err(e) = self.back_nodes(true, nodes(true)).and_then(|()| self.back_nodes(false, nodes(false))) {
            if let Some((node, _)) = kept {
                self.data_tlsf().free(node);
            }
            self.give_id(g, id)?;
            return Err(e.into());
        }
        let (node, offset) = if units == 0 {
            (NIL, 0)
        } else if let Some((node, first)) = kept {
            (node, first as u64 * GRANULE as u64)
        } else {
            let allocate = || u32::try_from(units).ok().and_then(|u| self.data_tlsf().allocate(u));
            let mut got = allocate();
            if got.is_none() && self.flush_caches(g)? > 0 {
                got = allocate();
            }
            match got {
                Some((node, first)) => (node, first as u64 * GRANULE as u64),
                None => {
                    self.give_id(g, id)?;
                    let largest_free = self.data_tlsf().largest_free() as u64 * GRANULE as u64;
                    return Err(CreateError::NoSpace { largest_free });
                }
            }
        };
        let long = if key.len() > INLINE_KEY { key.len().next_multiple_of(8) } else { 0 };
        let extra_len = long + parts.map_or(0, |p| p.len() * 16);
        let (key_node, extra) = if extra_len == 0 {
            (NIL, 0)
        } else {
            match self.key_tlsf().allocate(extra_len.div_ceil(GRANULE) as u32) {
                Some((n, first)) => (n, first as u64 * GRANULE as u64),
                None => {
                    if node != NIL {
                        self.data_tlsf().free(node);
                    }
                    self.give_id(g, id)?;
                    return Err(CreateError::KeyHeapFull);
                }
            }
        };
        // Gives back what this create took, when a later step fails.
        let undo = |e: Error| -> std::result::Result<Object, CreateError> {
            if node != NIL {
                self.data_tlsf().free(node);
            }
            if key_node != NIL {
                self.key_tlsf().free(key_node);
            }
            self.give_id(g, id)?;
            Err(e.into())
        };
        // Everything that can fail before the create is recorded, where `undo` gives back what
        // it took: once recorded, the create only stores. The block comes from an allocator
        // whose state lies in shared memory: it is checked like any block a record names.
        let in_data = match offset.checked_add(size) {
            Some(end) if end <= self.cfg.capacity => Ok(()),
            _ => Err(outside_data(id, offset, size)),
        };
        let ready = in_data.and_then(|()| self.back_keys(extra, extra_len as u64)).and_then(|()| {
            if key.len() > INLINE_KEY {
                // SAFETY: the range was just allocated under the mutex and no record names it yet.
                unsafe { self.keys.write_bytes(extra, key)? };
            }
            if let Some(parts) = parts {
                let table = self.keys.slice::<AtomicU64>(extra + long as u64, 2 * parts.len() as u64)?;
                for (pair, &(o, l)) in table.chunks_exact(2).zip(parts) {
                    pair[0].store(o as u64, Relaxed);
                    pair[1].store(l as u64, Relaxed);
                }
            }
            Ok(())
        });
        let made = Made { id, node, offset, key_node, extra, parts: parts.map_or(0, |p| p.len() as u32) };
        match ready.and_then(|()| self.publish(c, ledger, handle, key, hash, size, &made)) {
            Ok(generation) => {
                self.count(Tally::Pool, 1, 1, units * GRANULE as u64);
                Ok(Object { id, generation, offset, size, parts: None })
            }
            Err(e) => undo(e),
        }
    }

    /// A create ([`Store::create`]) under the lock of the key's chain alone, without the pool's
    /// mutex: of a key held in the record, with no parts, into a record this process freed with
    /// a block of this size, out of its cache. `Ok(None)` when it keeps none: nothing changed,
    /// and the caller makes the create under the mutex.
    pub(crate) fn create_cached(
        &self,
        c: &Chains<'_>,
        ledger: &Ledger<'_>,
        handle: Handle,
        key: &[u8],
        hash: u64,
        size: u64,
    ) -> std::result::Result<Option<Object>, CreateError> {
        let units = size.div_ceil(GRANULE as u64);
        if key.len() > INLINE_KEY || units > CACHED_UNITS {
            return Ok(None);
        }
        if let Some(id) = self.find(c, key, hash)? {
            return Err(CreateError::AlreadyExists { unsealed: self.rec(id)?.state(Relaxed) == UNSEALED });
        }
        let slot = ledger.slot();
        let _mine = self.cache_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some((id, node, first)) = self.uncache_exact(slot, units)? else { return Ok(None) };
        let offset = first as u64 * GRANULE as u64;
        let made = Made { id, node, offset, key_node: NIL, extra: 0, parts: 0 };
        let published = match offset.checked_add(size) {
            Some(end) if end <= self.cfg.capacity => self.publish(c, ledger, handle, key, hash, size, &made),
            _ => Err(outside_data(id, offset, size)),
        };
        match published {
            Ok(generation) => {
                self.count(c.tally(), 1, 1, units * GRANULE as u64);
                Ok(Some(Object { id, generation, offset, size, parts: None }))
            }
            Err(e) => {
                // Back where it was: the entry it came from is still empty, as nothing but this
                // process's threads (serialised here) fills it.
                self.recache(slot, id)?;
                Err(e.into())
            }
        }
    }

    /// The last steps of a create, once the record `made.id` and its blocks are the caller's:
    /// records the create in `ledger`'s entry `handle` (the only step that can fail), then
    /// fills the record and links it into the key's chain. Answers the object's generation.
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        c: &Chains<'_>,
        ledger: &Ledger<'_>,
        handle: Handle,
        key: &[u8],
        hash: u64,
        size: u64,
        made: &Made,
    ) -> Result<u32> {
        let rec = self.rec(made.id)?;
        let mut generation = rec.generation(Relaxed).wrapping_add(1);
        if generation == 0 {
            generation = 1;
        }
        ledger.begin_create(handle, ledger_id(made.id, generation))?;
        // Cleared before the new generation is published: a reader that sees the generation
        // sees the cleared bits, and sets its own after.
        rec.holders.store(Self::holder_bit(ledger.slot()), Relaxed);
        rec.set_generation(generation, Release);
        let inline = Self::inline_words(key).unwrap_or([0, 0]);
        rec.shape.store(key.len() as u32 | (made.parts << KEY_LEN_BITS), Relaxed);
        rec.node.store(made.node, Relaxed);
        rec.key_node.store(made.key_node, Relaxed);
        rec.offset_units.store((made.offset / GRANULE as u64) as u32, Relaxed);
        rec.size.store(size, Relaxed);
        rec.extra_units.store((made.extra / GRANULE as u64) as u32, Relaxed);
        rec.last_used.store(0, Relaxed);
        rec.inline[0].store(inline[0], Relaxed);
        rec.inline[1].store(inline[1], Relaxed);
        let chain = self.chain(c, hash);
        rec.next.store(chain.load(Relaxed), Relaxed);
        rec.set_state(UNSEALED, Release);
        chain.store(made.id + 1, Release);
        Ok(generation)
    }

    /// Seals the unsealed object (`id`, `generation`), without the mutex: only its creator (the
    /// caller) seals or aborts it, and a rebuild keeps it either way, so one compare-and-swap of
    /// its state is the whole change. The creator's `CREATING` entry becomes a read reference
    /// ([`Ledger::sealed`], the caller's, after this). Answers the seal word to wake when gets wait
    /// on it (`Some(None)` when none does), or `None` when the object is no longer unsealed.
    ///
    /// A get that finds the key unsealed reads the seal word before it looks (and counts itself
    /// a waiter before it sleeps): so either it sees the seal, or the word it sleeps on has moved,
    /// or this sees its count and wakes it.
    pub(crate) fn seal(&self, id: u32, generation: u32, hash: u64) -> Result<Option<Option<&'a AtomicU32>>> {
        let rec = self.rec(id)?;
        if rec.generation(Acquire) != generation {
            return Ok(None);
        }
        if self.cfg.evict_lru {
            rec.last_used.store(self.tick() as u32, Relaxed);
        }
        let (unsealed, sealed) = (stamp(UNSEALED, generation), stamp(SEALED, generation));
        if rec.stamp.compare_exchange(unsealed, sealed, SeqCst, SeqCst).is_err() {
            return Ok(None);
        }
        let word = self.seal_word(hash);
        word.fetch_add(1, SeqCst);
        Ok(Some((self.waiters(hash).load(SeqCst) > 0).then_some(word)))
    }

    /// Frees the deleted object (`id`, `generation`) and its blocks, under the pool's mutex,
    /// when it is still that object; answers whether it freed it. With `cache` (the slot of the
    /// process freeing it, its own object), a small object's record goes into that slot's cache
    /// with its block of object memory, for the process's next create of the same size
    /// ([`Store::create_cached`]): the record, the block and the allocator's lines then stay with
    /// one process instead of moving between the processes creating and deleting.
    fn free_record(&self, g: &Locked<'_>, id: u32, generation: u32, cache: Option<usize>) -> Result<bool> {
        let rec = self.rec(id)?;
        let node = rec.node.load(Relaxed);
        let units = rec.size.load(Relaxed).div_ceil(GRANULE as u64);
        if node != NIL {
            self.check_node(self.data_nodes, node)?;
        }
        let key_node = rec.key_node.load(Relaxed);
        if key_node != NIL {
            self.check_node(self.key_nodes, key_node)?;
        }
        if !Self::claim(rec, generation) {
            return Ok(false);
        }
        if key_node != NIL {
            self.key_tlsf().free(key_node);
            rec.key_node.store(NIL, Relaxed);
        }
        self.count(Tally::Pool, -1, 0, (units * GRANULE as u64).wrapping_neg());
        let cached = match cache {
            Some(slot) if units <= CACHED_UNITS => {
                let _mine = self.cache_lock.lock().unwrap_or_else(|e| e.into_inner());
                self.put_cached(slot, id)?
            }
            _ => false,
        };
        if !cached {
            if node != NIL {
                self.data_tlsf().free(node);
            }
            self.give_id(g, id)?;
        }
        Ok(true)
    }

    /// Makes the deleted object (`id`, `generation`) free, its record the caller's: one
    /// compare-and-swap, so that of the processes that may free one object (its deleter, its last
    /// reader, a sweep, under different locks) exactly one does.
    fn claim(rec: &Rec, generation: u32) -> bool {
        rec.stamp.compare_exchange(stamp(DELETED, generation), stamp(FREE, generation), SeqCst, Relaxed).is_ok()
    }

    /// Puts free record `id` (its block still named) into an empty entry of slot `slot`'s cache,
    /// the caller holding `cache_lock`; false when every entry is full.
    fn put_cached(&self, slot: usize, id: u32) -> Result<bool> {
        match self.slot_cache(slot)?.iter().find(|e| e.load(Relaxed) == 0) {
            Some(entry) => {
                entry.store(id + 1, Release);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`Store::put_cached`] of a record taken out of the cache a moment ago.
    fn recache(&self, slot: usize, id: u32) -> Result<()> {
        if self.put_cached(slot, id)? {
            return Ok(());
        }
        Err(corrupt(format!("slot {slot}'s record cache filled while this process held its lock")))
    }

    /// Slot `slot`, checked.
    fn slot_at(&self, slot: usize) -> Result<&'a Slot> {
        match self.slot_table.get(slot) {
            Some(s) => Ok(s),
            None => Err(corrupt(format!("slot {slot} of {}", self.slot_table.len()))),
        }
    }

    /// Slot `slot`'s record cache.
    fn slot_cache(&self, slot: usize) -> Result<&'a [AtomicU32]> {
        Ok(self.slot_at(slot)?.cache())
    }

    /// Changes the counts of objects, keys and bytes in use (`bytes` wrapping: a decrease is its
    /// negation) in the counters of `tally`, whose lock the caller holds.
    fn count(&self, tally: Tally, objects: i64, keys: i64, bytes: u64) {
        let (o, k, b) = match tally {
            Tally::Pool => (&self.ctl.live, &self.ctl.keys, &self.ctl.used),
            Tally::Stripe(i) => {
                let s = &self.ctl.stripes[i];
                (&s.objects, &s.keys, &s.bytes)
            }
        };
        add(o, objects as u64);
        add(k, keys as u64);
        add(b, bytes);
    }

    /// The counts of objects, keys and bytes in use: the pool's counters plus every stripe's.
    fn totals(&self) -> (u64, u64, u64) {
        let (mut live, mut keys, mut used) =
            (self.ctl.live.load(Relaxed), self.ctl.keys.load(Relaxed), self.ctl.used.load(Relaxed));
        for s in &self.ctl.stripes {
            live = live.wrapping_add(s.objects.load(Relaxed));
            keys = keys.wrapping_add(s.keys.load(Relaxed));
            used = used.wrapping_add(s.bytes.load(Relaxed));
        }
        (live, keys, used)
    }

    /// Whether slot `slot`'s cache seems to hold a record with a block of `units` (read without
    /// any lock: a hint, so that a create that would find none takes no lock to look).
    #[inline]
    pub(crate) fn may_have_cached(&self, slot: usize, units: u64) -> bool {
        let Some(s) = self.slot_table.get(slot) else { return false };
        s.cache().iter().any(|e| {
            let link = e.load(Relaxed);
            link != 0
                && self
                    .recs
                    .get(link as usize - 1)
                    .is_some_and(|r| r.size.load(Relaxed).div_ceil(GRANULE as u64) == units)
        })
    }

    /// A record out of slot `slot`'s cache whose block is of `units`, with the block: (id,
    /// node, first unit). The caller holds `cache_lock`; other processes only empty entries.
    fn uncache_exact(&self, slot: usize, units: u64) -> Result<Option<(u32, u32, u32)>> {
        for entry in self.slot_cache(slot)? {
            let link = entry.load(Acquire);
            if link == 0 {
                continue;
            }
            // Until the swap below, another process may empty the entry and reuse the record
            // under the mutex: what is read of the record before it is a guess, not a claim.
            let Some(rec) = self.recs.get(link.wrapping_sub(1) as usize) else {
                return Err(corrupt(format!("slot {slot} caches record {}", link.wrapping_sub(1))));
            };
            if rec.size.load(Relaxed).div_ceil(GRANULE as u64) != units {
                continue;
            }
            #[cfg(test)]
            BEFORE_UNCACHE.with(|hook| hook.take().map(|f| f(entry, rec)));
            // Fails when another process emptied the entry meanwhile (and took the record). Once
            // it succeeds the record is this process's: nobody else fills its entries, so the
            // entry held this record from the read above on, and so the record was free and
            // unchanged all along.
            if entry.compare_exchange(link, 0, Acquire, Relaxed).is_err() {
                continue;
            }
            let rec = self.cached(link)?;
            return Ok(Some((link - 1, rec.node.load(Relaxed), rec.offset_units.load(Relaxed))));
        }
        Ok(None)
    }

    /// A record out of slot `slot`'s cache for a create of `units`, under the pool's mutex: one
    /// whose block is of that size, answered with the block (node, first unit), else any, whose
    /// block goes back to the allocator. `None` when the cache is empty.
    fn uncache(&self, _: &Locked<'_>, slot: usize, units: u64) -> Result<Option<(u32, Option<Block>)>> {
        let _mine = self.cache_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, node, first)) = self.uncache_exact(slot, units)? {
            return Ok(Some((id, (node != NIL).then_some((node, first)))));
        }
        for entry in self.slot_cache(slot)? {
            if let Some(id) = self.take_cached(entry)? {
                return Ok(Some((id, None)));
            }
        }
        Ok(None)
    }

    /// Empties cache entry `entry` (under the pool's mutex), its block back to the allocator:
    /// answers the record's id, or `None` when the entry was empty.
    fn take_cached(&self, entry: &AtomicU32) -> Result<Option<u32>> {
        let link = entry.swap(0, Acquire);
        if link == 0 {
            return Ok(None);
        }
        let rec = self.cached(link)?;
        let node = rec.node.load(Relaxed);
        if node != NIL {
            self.data_tlsf().free(node);
            rec.node.store(NIL, Relaxed);
        }
        Ok(Some(link - 1))
    }

    /// The record a cache entry (id + 1) names, checked: free, its node in the table.
    fn cached(&self, link: u32) -> Result<&'a Rec> {
        let rec = self.rec(link.wrapping_sub(1))?;
        if rec.state(Relaxed) != FREE {
            return Err(corrupt(format!("cached record {} is in use", link - 1)));
        }
        let node = rec.node.load(Relaxed);
        if node != NIL {
            self.check_node(self.data_nodes, node)?;
        }
        Ok(rec)
    }

    /// Gives back everything slot `slot`'s cache holds, under the pool's mutex: the blocks to
    /// the allocator, the records to the free list. When its process closes or is reclaimed,
    /// when a process takes the slot, and for [`Store::flush_caches`]. Answers how many records.
    pub(crate) fn flush_cache(&self, g: &Locked<'_>, slot: usize) -> Result<u64> {
        let mut n = 0;
        for entry in self.slot_cache(slot)? {
            if let Some(id) = self.take_cached(entry)? {
                self.give_id(g, id)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// [`Store::flush_cache`] of every slot: before a create fails for lack of memory or records.
    fn flush_caches(&self, g: &Locked<'_>) -> Result<u64> {
        let mut n = 0;
        for slot in 0..self.slot_table.len() {
            n += self.flush_cache(g, slot)?;
        }
        Ok(n)
    }

    fn check_node(&self, nodes: &[NodeCell], node: u32) -> Result<()> {
        if node as usize >= nodes.len() {
            return Err(corrupt(format!("allocator node {node} of {}", nodes.len())));
        }
        Ok(())
    }

    /// Aborts the unsealed object (`id`, `generation`), under the pool's mutex and the lock of
    /// its key's chain: its key goes, and the object with it (nobody reads an unsealed object;
    /// its creator empties its entry). A no-op (`false`) when it is no longer unsealed. `cache`
    /// as for [`Store::free_record`].
    pub(crate) fn abort(
        &self,
        g: &Locked<'_>,
        c: &Chains<'_>,
        id: u32,
        generation: u32,
        cache: Option<usize>,
    ) -> Result<bool> {
        if !self.still(id, generation, UNSEALED)? {
            return Ok(false);
        }
        self.unlink(c, id, self.hash(self.key_in_place(id)?))?;
        self.rec(id)?.set_state(DELETED, SeqCst);
        self.count(Tally::Pool, 0, -1, 0);
        self.free_record(g, id, generation, cache)
    }

    /// The hash of the key of record `id`, to take its chain's lock: only meaningful while the
    /// record holds the object the caller means, which the caller confirms under the lock.
    fn hash_of(&self, id: u32) -> Result<u64> {
        Ok(self.hash(self.key_in_place(id)?))
    }

    /// The key's state under the lock of its chain: a sealed key's object is the caller's to
    /// publish a reference on (which it may do without re-checking: nothing deletes it while the
    /// lock is held).
    pub(crate) fn lookup(&self, c: &Chains<'_>, key: &[u8], hash: u64) -> Result<Lookup> {
        let Some(id) = self.find(c, key, hash)? else {
            return Ok(Lookup::Absent);
        };
        if self.rec(id)?.state(Relaxed) != SEALED {
            return Ok(Lookup::Unsealed);
        }
        Ok(Lookup::Sealed(self.object(id)?))
    }

    /// Takes sealed record `id` out of the index and marks it deleted, counted in `tally`;
    /// answers its generation.
    fn mark_deleted(&self, c: &Chains<'_>, id: u32, hash: u64, tally: Tally) -> Result<u32> {
        let rec = self.rec(id)?;
        self.unlink(c, id, hash)?;
        rec.set_state(DELETED, SeqCst);
        self.count(tally, 0, -1, 0);
        Ok(rec.generation(Relaxed))
    }

    /// The sealed record of `key` (whose [`Store::hash`] is `hash`), to delete.
    fn to_delete(&self, c: &Chains<'_>, key: &[u8], hash: u64) -> Result<(u32, &'a Rec)> {
        let id = self.find(c, key, hash)?.ok_or_else(|| Error::NotFound(crate::error::Key::new(key)))?;
        let rec = self.rec(id)?;
        if rec.state(Relaxed) != SEALED {
            return Err(Error::NotSealed(crate::error::Key::new(key)));
        }
        Ok((id, rec))
    }

    /// Removes a sealed key, whose [`Store::hash`] is `hash` (computed before the mutex was
    /// taken), under the pool's mutex and the lock of its chain. The object is freed or left to
    /// its last reader, unless the ledgers that may hold it are long: then it is left to the
    /// caller ([`Deleted::Later`]), who looks for references without the mutex.
    pub(crate) fn delete(
        &self,
        g: &Locked<'_>,
        c: &Chains<'_>,
        key: &[u8],
        hash: u64,
        cache: Option<usize>,
    ) -> Result<Deleted> {
        let (id, rec) = self.to_delete(c, key, hash)?;
        let long = self.holders_entries(rec)? >= LONG_LEDGERS;
        let generation = self.mark_deleted(c, id, hash, Tally::Pool)?;
        if long {
            return Ok(Deleted::Later(id, generation));
        }
        self.free_if_unheld(g, id, generation, cache)?;
        Ok(Deleted::Done)
    }

    /// A delete ([`Store::delete`]) under the lock of the key's chain alone, without the pool's
    /// mutex. The object is freed here when nobody holds it and it can go into the cache of this
    /// process (slot `cache`) whole: a key held in the record, no parts, a small block, a free
    /// entry. Otherwise, unless a reader holds it, it is left to the caller ([`Deleted::Later`]),
    /// who frees it under the mutex.
    pub(crate) fn delete_fast(&self, c: &Chains<'_>, key: &[u8], hash: u64, cache: Option<usize>) -> Result<Deleted> {
        let (id, rec) = self.to_delete(c, key, hash)?;
        let generation = self.mark_deleted(c, id, hash, c.tally())?;
        // However long the ledgers, they are read under the chain's lock: it holds up only the
        // creates and deletes of keys of its stripe.
        if self.held(id, generation)? {
            return Ok(Deleted::Done); // its last reader frees it
        }
        let units = rec.size.load(Relaxed).div_ceil(GRANULE as u64);
        let Some(slot) = cache.filter(|_| rec.key_node.load(Relaxed) == NIL && units <= CACHED_UNITS) else {
            return Ok(Deleted::Later(id, generation));
        };
        let node = rec.node.load(Relaxed);
        if node != NIL {
            self.check_node(self.data_nodes, node)?;
        }
        let _mine = self.cache_lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.slot_cache(slot)?.iter().any(|e| e.load(Relaxed) == 0) {
            return Ok(Deleted::Later(id, generation));
        }
        if !Self::claim(rec, generation) {
            return Ok(Deleted::Done); // a reader that withdrew freed it first
        }
        self.count(c.tally(), -1, 0, (units * GRANULE as u64).wrapping_neg());
        self.recache(slot, id)?;
        Ok(Deleted::Done)
    }

    /// Entries up to the high-water marks of the ledgers a record's holder bits point to: what
    /// [`Store::held`] reads.
    fn holders_entries(&self, rec: &Rec) -> Result<u64> {
        self.holder_ledgers(rec.holders.load(Relaxed)).map(|l| l.high_water()).sum()
    }

    /// Frees (`id`, `generation`) if it is still that deleted object, under the pool's mutex,
    /// after a look for references made without the mutex found none ([`Deleted::Later`]). No
    /// second look: the look came after the object was marked deleted (both sequentially
    /// consistent), so a reader that published a reference after it re-checks the record, finds
    /// the mark and withdraws without touching the object; and a reader that withdrew and freed
    /// it first left it free, or reused under another generation.
    pub(crate) fn free_deleted(&self, g: &Locked<'_>, id: u32, generation: u32, cache: Option<usize>) -> Result<bool> {
        self.free_record(g, id, generation, cache)
    }

    /// Whether `key`, whose [`Store::hash`] is `hash`, is sealed.
    pub(crate) fn contains_sealed(&self, c: &Chains<'_>, key: &[u8], hash: u64) -> Result<bool> {
        Ok(match self.find(c, key, hash)? {
            Some(id) => self.rec(id)?.state(Relaxed) == SEALED,
            None => false,
        })
    }

    /// Up to `n` sealed objects no ledger holds, least recently used first: the candidates of
    /// the evictions one create may need, found in one pass over the records (and one over the
    /// ledgers) and ordered by a partial sort. One create that needs many evictions takes them
    /// from this list instead of a scan of every record each.
    pub(crate) fn lru_victims(&self, _: &Locked<'_>, n: usize) -> Result<Vec<Victim>> {
        #[cfg(test)]
        LRU_SCANS.with(|c| c.set(c.get() + 1));
        if n == 0 {
            return Ok(Vec::new());
        }
        let high = self.ctl.high_water.load(Relaxed).min(self.cfg.max_objects) as usize;
        let held = self.ledger_holds()?.0;
        let now = self.ctl.clock.load(Relaxed) as u32;
        let mut candidates: Vec<Victim> = self.recs[..high]
            .iter()
            .enumerate()
            .filter(|(id, r)| r.state(Relaxed) == SEALED && !held.contains_key(&(*id as u32)))
            .map(|(id, r)| Victim {
                id: id as u32,
                generation: r.generation(Relaxed),
                last_used: r.last_used.load(Relaxed),
            })
            .collect();
        // Oldest first: the longest since its last use, on a clock that wraps at 2^32.
        first_by_key(&mut candidates, n, |v| std::cmp::Reverse(now.wrapping_sub(v.last_used)));
        Ok(candidates)
    }

    /// Evicts the first of `victims` that is still the object it was when the list was made
    /// (sealed, the same generation, not used since) and that nobody reads; false when none is.
    pub(crate) fn evict_next(&self, g: &Locked<'_>, victims: &mut std::vec::IntoIter<Victim>) -> Result<bool> {
        for v in victims.by_ref() {
            let rec = self.rec(v.id)?;
            let unchanged =
                || rec.stamp.load(SeqCst) == stamp(SEALED, v.generation) && rec.last_used.load(Relaxed) == v.last_used;
            if !unchanged() {
                continue;
            }
            // The key read may be a later object's, torn: the look again under the lock tells.
            let hash = self.hash_of(v.id)?;
            let c = self.chains(g, hash)?;
            if !unchanged() {
                continue;
            }
            // A reader may take a candidate after the ledgers were read: the mark and a second
            // look settle it, as for a delete; a candidate taken meanwhile is restored and the
            // next tried.
            rec.set_state(DELETED, SeqCst);
            if self.held(v.id, v.generation)? {
                rec.set_state(SEALED, SeqCst);
                continue;
            }
            self.unlink(&c, v.id, hash)?;
            self.count(Tally::Pool, 0, -1, 0);
            drop(c);
            self.free_record(g, v.id, v.generation, None)?;
            self.ctl.evictions.fetch_add(1, Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    /// Rebuilds made so far.
    pub(crate) fn repairs(&self) -> u64 {
        self.ctl.repairs.load(Relaxed)
    }

    pub(crate) fn note_refused(&self) {
        self.ctl.creates_refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn note_reclaimed(&self, _: &Locked<'_>) {
        self.ctl.reclaimed.fetch_add(1, Relaxed);
    }

    /// The counters. The records processes keep in their caches are given back first
    /// ([`Store::flush_caches`]), so that the largest free block is what a create may get (a
    /// corrupt cache is left for [`Store::check`] to report).
    pub(crate) fn counts(&self, g: &Locked<'_>) -> Counts {
        let _ = self.flush_caches(g);
        let (live, keys, used) = self.totals();
        Counts {
            capacity: self.cfg.capacity,
            used,
            largest_free: self.data_tlsf().largest_free() as u64 * GRANULE as u64,
            live,
            keys,
            max_objects: self.cfg.max_objects,
            reclaimed: self.ctl.reclaimed.load(Relaxed),
            evictions: self.ctl.evictions.load(Relaxed),
            creates_refused: self.ctl.creates_refused.load(Relaxed),
            repairs: self.ctl.repairs.load(Relaxed),
        }
    }

    /// What the ledgers record on the objects records hold now (entries naming an earlier
    /// generation are left out): per record id, the `holders` bits of the slots holding read
    /// references on it, and the creates in progress.
    fn ledger_holds(&self) -> Result<(HashMap<u32, u32>, HashMap<u32, u32>)> {
        let mut holds: HashMap<u32, u32> = HashMap::new();
        let mut creating: HashMap<u32, u32> = HashMap::new();
        for ledger in self.ledger_views.iter() {
            for (state, lid) in ledger.entries()? {
                let (id, generation) = split_ledger_id(lid);
                let rec = self.rec(id)?;
                if rec.generation(Relaxed) != generation {
                    continue;
                }
                if state == CREATING {
                    creating.insert(id, generation);
                } else {
                    *holds.entry(id).or_default() |= Self::holder_bit(ledger.slot());
                }
            }
        }
        Ok((holds, creating))
    }

    /// Marks the derived state untrusted until [`Store::rebuild`] succeeds.
    pub(crate) fn begin_repair(&self, _: &Locked<'_>) {
        self.ctl.repair_pending.store(1, Relaxed);
    }

    /// Has a panic under `g` (a bug, or a corrupt id the allocator indexes with) leave the
    /// repair pending, as a holder's death does, instead of a half-made change.
    pub(crate) fn repair_on_panic(&self, g: &mut Locked<'a>) {
        g.flag_on_panic(&self.ctl.repair_pending);
    }

    /// Whether a rebuild started after a holder's death has not succeeded yet.
    pub(crate) fn repair_pending(&self, _: &Locked<'_>) -> bool {
        self.ctl.repair_pending.load(Relaxed) != 0
    }

    /// [`Store::repair_pending`] read without the mutex: a reader that sees it takes the mutex
    /// (and makes the repair) instead of reading the index.
    #[inline]
    pub(crate) fn repair_pending_now(&self) -> bool {
        self.ctl.repair_pending.load(Acquire) != 0
    }

    /// Recomputes everything derived from the records and the ledgers (see the module's
    /// documentation): after a process died holding a lock. Answers how many records were
    /// found half-made or unreachable and freed.
    fn rebuild(&self, g: &Locked<'_>, all: &Chains<'_>) -> Result<u64> {
        let (holds, creating) = self.ledger_holds()?;
        let high = self.ctl.high_water.load(Relaxed).min(self.cfg.max_objects) as usize;
        for bucket in self.buckets {
            bucket.store(0, Relaxed);
        }
        // Cached records are free records: their blocks go back with every other free range.
        // The stripes' counters are recounted into the pool's.
        for slot in self.slot_table {
            for entry in slot.cache() {
                entry.store(0, Relaxed);
            }
        }
        for stripe in &self.ctl.stripes {
            stripe.objects.store(0, Relaxed);
            stripe.keys.store(0, Relaxed);
            stripe.bytes.store(0, Relaxed);
        }
        let mut freed = 0;
        let mut used_blocks = Vec::new();
        let mut key_blocks = Vec::new();
        let (mut live, mut used, mut keys) = (0u64, 0u64, 0u64);
        let mut free_ids = Vec::new();
        for id in 0..high as u32 {
            let rec = self.rec(id)?;
            let state = rec.state(Relaxed);
            if state == FREE {
                free_ids.push(id);
                continue;
            }
            let valid = state <= DELETED && self.object(id).is_ok();
            let held = holds.get(&id).copied().unwrap_or(0);
            let keep = valid
                && match state {
                    UNSEALED => creating.contains_key(&id),
                    SEALED => true,
                    _ => held != 0,
                };
            if !keep {
                rec.set_state(FREE, Release);
                free_ids.push(id); // give_id, below, clears its nodes
                freed += 1;
                continue;
            }
            // Readers outside the mutex may be setting bits now: add, never clear.
            rec.holders.fetch_or(held, SeqCst);
            let units = rec.size.load(Relaxed).div_ceil(GRANULE as u64);
            if units > 0 {
                used_blocks.push((rec.offset_units.load(Relaxed), units as u32, id));
            } else {
                rec.node.store(NIL, Relaxed);
            }
            let long = rec.key_len();
            let extra_len = if long > INLINE_KEY { long.next_multiple_of(8) } else { 0 } + rec.parts() as usize * 16;
            if extra_len > 0 {
                let first = rec.extra_units.load(Relaxed) as u64;
                key_blocks.push((first as u32, extra_len.div_ceil(GRANULE) as u32, id));
            } else {
                rec.key_node.store(NIL, Relaxed);
            }
            live += 1;
            used += units * GRANULE as u64;
            if state != DELETED {
                let key = self.key_in_place(id)?;
                let hash = self.hash(key);
                if self.find(all, key, hash)?.is_some() {
                    // Two records of one key: only corruption makes them; the later one goes
                    // (freed by the sweep that follows a repair, unless someone reads it).
                    rec.set_state(DELETED, SeqCst);
                } else {
                    let chain = self.chain(all, hash);
                    rec.next.store(chain.load(Relaxed), Relaxed);
                    chain.store(id + 1, Release);
                    keys += 1;
                }
            }
        }
        self.back_nodes(true, 2 * used_blocks.len() as u64 + 2)?;
        self.back_nodes(false, 2 * key_blocks.len() as u64 + 2)?;
        self.rebuild_allocator(true, &mut used_blocks)?;
        self.rebuild_allocator(false, &mut key_blocks)?;
        self.ctl.free_head.store(0, Relaxed);
        for &id in free_ids.iter().rev() {
            self.give_id(g, id)?;
        }
        self.ctl.live.store(live, Relaxed);
        self.ctl.used.store(used, Relaxed);
        self.ctl.keys.store(keys, Relaxed);
        self.ctl.repairs.fetch_add(1, Relaxed);
        self.ctl.repair_pending.store(0, Relaxed);
        Ok(freed)
    }

    /// Rebuilds one allocator from the blocks live records hold, sorted here; overlapping
    /// blocks (corruption) are refused.
    fn rebuild_allocator(&self, data: bool, blocks: &mut [(u32, u32, u32)]) -> Result<()> {
        blocks.sort_unstable();
        let ranges: Vec<(u32, u32)> = blocks.iter().map(|&(first, units, _)| (first, units)).collect();
        let (mut tlsf, units) = if data {
            (self.data_tlsf(), self.cfg.capacity / GRANULE as u64)
        } else {
            (self.key_tlsf(), self.cfg.key_heap / GRANULE as u64)
        };
        let nodes =
            tlsf.rebuild(units as u32, &ranges).map_err(|why| corrupt(format!("rebuilding an allocator: {why}")))?;
        for (&(_, _, id), node) in blocks.iter().zip(nodes) {
            let rec = self.rec(id)?;
            if data {
                rec.node.store(node, Relaxed);
            } else {
                rec.key_node.store(node, Relaxed);
            }
        }
        Ok(())
    }

    /// Verifies every invariant: the allocators', each record's fields and bounds, each record's
    /// object memory and key storage against the blocks the allocators have in use (one block
    /// each, none shared, none without a record), each record's holders against the ledgers, each
    /// key reachable in the index and only once, the chains holding only present keys, the
    /// counters against the records, and the ledgers' own.
    pub(crate) fn check(&self, _: &Locked<'_>, all: &Chains<'_>) -> Result<()> {
        self.data_tlsf().check().map_err(|why| corrupt(format!("object memory allocator: {why}")))?;
        self.key_tlsf().check().map_err(|why| corrupt(format!("key storage allocator: {why}")))?;
        for (tlsf, backed) in
            [(self.data_tlsf(), &self.ctl.data_nodes_backed), (self.key_tlsf(), &self.ctl.key_nodes_backed)]
        {
            let (used, backed) = (tlsf.nodes_allocated() as u64, backed.load(Relaxed));
            if used > backed {
                return Err(corrupt(format!("{used} allocator nodes in use, only {backed} reserved in the file")));
            }
        }
        for slot in 0..self.cfg.slots as usize {
            let ledger = self.ledger(slot)?;
            ledger.check_within(u64::MAX, ledger.backed())?;
        }
        let (holds, creating) = self.ledger_holds()?;
        let high = self.ctl.high_water.load(Relaxed);
        if high > self.cfg.max_objects {
            return Err(corrupt(format!("record high-water mark {high} past {}", self.cfg.max_objects)));
        }
        let (mut live, mut used, mut keys) = (0u64, 0u64, 0u64);
        let mut data_blocks = Claims::new("object memory", &self.data_tlsf());
        let mut key_blocks = Claims::new("key storage", &self.key_tlsf());
        let cached = self.check_caches(high, &mut data_blocks)?;
        for id in 0..high as u32 {
            let rec = self.rec(id)?;
            let state = rec.state(Relaxed);
            if state == FREE {
                continue;
            }
            if state > DELETED {
                return Err(corrupt(format!("record {id} in state {state}")));
            }
            let object = self.object(id)?;
            let key = self.key_in_place(id)?;
            data_blocks.claim(id, rec.node.load(Relaxed), rec.offset_units.load(Relaxed), object.size)?;
            key_blocks.claim(id, rec.key_node.load(Relaxed), rec.extra_units.load(Relaxed), Self::extra_len(rec))?;
            let held = holds.get(&id).copied().unwrap_or(0);
            if state == UNSEALED && !creating.contains_key(&id) {
                return Err(corrupt(format!("unsealed record {id} has no creator")));
            }
            if state == UNSEALED && held != 0 {
                return Err(corrupt(format!("unsealed record {id} has readers")));
            }
            // A deleted record nobody holds is allowed: its last reader withdrew and is about
            // to free it.
            let marked = rec.holders.load(SeqCst);
            if marked & held != held {
                return Err(corrupt(format!(
                    "record {id} is held by the ledgers of slots 0x{held:08x} (mod 32), marked 0x{marked:08x}"
                )));
            }
            live += 1;
            used += object.size.div_ceil(GRANULE as u64) * GRANULE as u64;
            let present = self.find(all, key, self.hash(key))?;
            if state == DELETED && present == Some(id) {
                return Err(corrupt(format!("deleted record {id} is still in the index")));
            }
            if state != DELETED {
                if present != Some(id) {
                    return Err(corrupt(format!("record {id} cannot be found by its key")));
                }
                keys += 1;
            }
        }
        let mut chained = 0u64;
        for bucket in self.buckets {
            let mut link = bucket.load(Relaxed);
            while link != 0 {
                chained += 1;
                if chained > keys {
                    return Err(corrupt("the index holds more entries than there are keys".into()));
                }
                link = self.rec(link - 1)?.next.load(Relaxed);
            }
        }
        data_blocks.all_claimed()?;
        key_blocks.all_claimed()?;
        let (stored_live, stored_keys, stored_used) = self.totals();
        let stored = (stored_live, stored_used, stored_keys);
        if stored != (live, used, keys) {
            return Err(corrupt(format!(
                "counters say {stored:?} (objects, bytes, keys), the records {:?}",
                (live, used, keys)
            )));
        }
        let free = self.data_tlsf().free_units() * GRANULE as u64;
        if free + used + cached != self.cfg.capacity {
            return Err(corrupt(format!(
                "{free} bytes free, {used} used and {cached} cached do not add up to {}",
                self.cfg.capacity
            )));
        }
        Ok(())
    }

    /// The record caches' invariants: only live slots cache, each entry a free record below the
    /// high-water mark `high`, none twice, each block one the data allocator has in use (claimed
    /// in `data_blocks`). Answers the bytes their blocks hold.
    fn check_caches(&self, high: u64, data_blocks: &mut Claims) -> Result<u64> {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for (index, slot) in self.slot_table.iter().enumerate() {
            for entry in slot.cache() {
                let link = entry.load(Relaxed);
                if link == 0 {
                    continue;
                }
                let id = link - 1;
                if slot.state() != LIVE {
                    return Err(corrupt(format!("slot {index} is free but caches record {id}")));
                }
                if id as u64 >= high || !seen.insert(id) {
                    return Err(corrupt(format!("slot {index} caches record {id}, past the high-water mark or twice")));
                }
                let rec = self.cached(link)?;
                let size = rec.size.load(Relaxed);
                data_blocks.claim(id, rec.node.load(Relaxed), rec.offset_units.load(Relaxed), size)?;
                bytes += size.div_ceil(GRANULE as u64) * GRANULE as u64;
            }
        }
        Ok(bytes)
    }

    /// Bytes of the key heap record `rec` names: its long key (8-aligned), then its part table.
    fn extra_len(rec: &Rec) -> u64 {
        let long = rec.key_len();
        (if long > INLINE_KEY { long.next_multiple_of(8) } else { 0 }) as u64 + rec.parts() * 16
    }

    /// ENOSPC for a full key heap, as the caller's error.
    pub(crate) fn key_heap_full(&self) -> Error {
        Error::system(
            format!(
                "the pool's storage for long keys and part tables ({}) is full",
                crate::error::Bytes(self.cfg.key_heap)
            ),
            io::Error::from_raw_os_error(libc::ENOSPC),
        )
    }
}

/// For [`Store::check`]: the blocks one allocator has in use, and the records that claimed them.
/// A record's bytes must be exactly one block in use (the node it names, at its offset and of its
/// rounded size), no two records may name one node (the blocks tile the area, so no byte then
/// belongs to two records), and no block in use may belong to no record.
struct Claims {
    what: &'static str,
    /// Node to (first unit, units) of each block in use.
    blocks: HashMap<u32, (u32, u32)>,
    /// Node to the record that claimed it.
    owners: HashMap<u32, u32>,
}

impl Claims {
    fn new(what: &'static str, tlsf: &Tlsf<&TlsfCore, &[NodeCell]>) -> Claims {
        let blocks = tlsf.used_blocks().into_iter().map(|(node, first, units)| (node, (first, units))).collect();
        Claims { what, blocks, owners: HashMap::new() }
    }

    /// Record `id` holds `len` bytes from unit `first` through allocator node `node`; a record
    /// that holds no bytes names no node.
    fn claim(&mut self, id: u32, node: u32, first: u32, len: u64) -> Result<()> {
        let what = self.what;
        let units = len.div_ceil(GRANULE as u64);
        if units == 0 {
            if node != NIL {
                return Err(corrupt(format!("record {id} holds no {what} but names allocator node {node}")));
            }
            return Ok(());
        }
        let Some(&(at, size)) = self.blocks.get(&node) else {
            return Err(corrupt(format!(
                "record {id}: its {what} names allocator node {node}, which is not a block in use"
            )));
        };
        if (at as u64, size as u64) != (first as u64, units) {
            return Err(corrupt(format!(
                "record {id}: its {what} is at unit {first} (length {units}), but its allocator node {node} is a \
                 block at unit {at} (length {size})"
            )));
        }
        if let Some(other) = self.owners.insert(node, id) {
            return Err(corrupt(format!(
                "records {other} and {id} share one block of {what} (allocator node {node}, unit {first})"
            )));
        }
        Ok(())
    }

    /// After every record's claim: each block in use was claimed.
    fn all_claimed(&self) -> Result<()> {
        match self.blocks.iter().find(|(node, _)| !self.owners.contains_key(node)) {
            Some((node, (first, units))) => Err(corrupt(format!(
                "{}: the block at unit {first} (length {units}, allocator node {node}) belongs to no record",
                self.what
            ))),
            None => Ok(()),
        }
    }
}

// SAFETY: `#[repr(C)]`, atomics only, valid for every bit pattern (an allocator's state is
// checked before it is trusted: `Tlsf::check`, and ids bounds-checked throughout, the node
// table's by slice indexing, whose panic under the mutex leaves the repair pending).
unsafe impl Shared for TlsfCore {}
// SAFETY: as above.
unsafe impl Shared for NodeCell {}

#[cfg(test)]
impl Store<'_> {
    /// Where the data allocator's node table starts in the pool file.
    pub(crate) fn data_nodes_at(&self) -> u64 {
        self.data_nodes_at
    }

    /// Leaves every derived structure wrong, as a process dying half-way through a change could:
    /// an empty index, an allocator with every block free, no free ids and wrong counters.
    pub(crate) fn scramble_derived(&self, _: &Locked<'_>) {
        for bucket in self.buckets {
            bucket.store(0, Relaxed);
        }
        self.data_tlsf().init((self.cfg.capacity / GRANULE as u64) as u32);
        self.ctl.free_head.store(0, Relaxed);
        self.ctl.live.store(12345, Relaxed);
        self.ctl.used.store(1, Relaxed);
        self.ctl.keys.store(0, Relaxed);
    }

    /// Leaves the chain `c` covers half-changed, as a process dying inside a create or delete
    /// under that lock alone could: `key` (sealed, in that chain) unlinked but still sealed, and a
    /// record taken out of slot `slot`'s cache and put nowhere. Answers the record's id.
    pub(crate) fn scramble_chain(&self, c: &Chains<'_>, key: &[u8], slot: usize) -> Result<u32> {
        let hash = self.hash(key);
        let id = self.find(c, key, hash)?.ok_or_else(|| corrupt("no such key".into()))?;
        self.unlink(c, id, hash)?;
        let entry = self
            .slot_cache(slot)?
            .iter()
            .find(|e| e.load(Relaxed) != 0)
            .ok_or_else(|| corrupt("empty cache".into()))?;
        Ok(entry.swap(0, Relaxed) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record's inline key words are part of the file format: every way of assembling them
    /// gives what `from_ne_bytes` gives for the key zero-padded to 8 bytes.
    #[test]
    fn short_key_words_equal_the_zero_padded_native_bytes_for_every_length() {
        let bytes: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(0x9E) ^ 0xA5) as u8).collect();
        for start in 0..8 {
            for len in 0..=12 {
                let b = &bytes[start..start + len];
                let mut padded = [0u8; 8];
                padded[..len.min(8)].copy_from_slice(&b[..len.min(8)]);
                assert_eq!(Store::word(b), u64::from_ne_bytes(padded), "{len} bytes at {start}");
            }
        }
        assert_eq!(
            Store::inline_words(b"0123456789abcdef"),
            Some([u64::from_ne_bytes(*b"01234567"), u64::from_ne_bytes(*b"89abcdef")])
        );
        assert_eq!(Store::inline_words(b"abc"), Some([u64::from_ne_bytes(*b"abc\0\0\0\0\0"), 0]));
        assert_eq!(Store::inline_words(b"0123456789abcdefg"), None);
    }
}
