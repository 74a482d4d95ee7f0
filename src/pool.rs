//! The safe Rust API: a pool of objects living in one mapped region.
//!
//! `Pool::open` maps the region; `create` reserves a writable buffer for a key in place; `seal`
//! makes it immutable and visible; `get` hands out read references to the same bytes; dropping a
//! [`Buffer`] releases it. `delete` removes a key at once while readers keep their bytes until they
//! release. Closing the pool refuses new work; memory stays mapped until the last buffer is gone.
//!
//! A child forked from a process with a pool has no mapping of its memory (`MADV_DONTFORK`) and
//! a copy of its locks as they were at the fork. There every call on the parent's pool and
//! buffers answers [`Error::ForkedChild`] before touching either, and dropping them does nothing
//! (see [`Pool`]).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::alloc::{AllocError, Arena, SharedArena};
use crate::error::{Bytes, Error, Key, Result};
use crate::index::{Candidate, Index, IndexError, Lookup};
use crate::parts::Layout;
use crate::rdma::{RdmaDesc, RdmaMode, Registrations};
use crate::record::{PartTable, Record, Records};
use crate::region::{PageMode, Region, RegionOptions};
use crate::shared::{Opening, SharedBuffer, SharedInner, SharedPool};

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Pool size when none is given.
pub const DEFAULT_POOL_SIZE: usize = 256 << 20;
/// Every data pointer is aligned to at least this many bytes.
pub const ALIGNMENT: usize = crate::alloc::GRANULE;

/// How to open a pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Bytes of object memory (rounded up to 64); the mapping behind it is rounded up to the page
    /// size in use.
    pub size: usize,
    pub pages: PageMode,
    /// Touch every page at open, so no object write ever takes a page fault.
    pub prefault: bool,
    /// `mlock` the region, so it is never swapped out.
    pub lock_memory: bool,
    /// Most objects live at once; 0 derives it from the size (one per 4 KiB, at least 1024).
    pub max_objects: usize,
    /// Whether to register the region with the RDMA devices at open.
    pub rdma: RdmaMode,
    /// The devices to register with, by name; `None` is all of them.
    pub rdma_devices: Option<Vec<String>>,
    /// When a create does not fit, evict sealed objects nobody holds, least recently used
    /// first, until it fits or nothing evictable is left (also under concurrent creates). Off by
    /// default: a store that must not lose data never evicts silently.
    pub evict_lru: bool,
    /// A name makes the pool shared: backed by the file `zcopy.<name>` in `shared_dir`
    /// (`/dev/shm` when `None`), which other processes attach with [`Pool::attach`]. `None` is
    /// a pool private to this process.
    pub name: Option<String>,
    /// Directory of a shared pool's file (a hugetlbfs mount for huge pages).
    pub shared_dir: Option<std::path::PathBuf>,
    /// A shared pool's file is mode 0660 (the owner's group may attach) instead of 0600.
    pub group_shared: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            size: DEFAULT_POOL_SIZE,
            pages: PageMode::TransparentHuge,
            prefault: true,
            lock_memory: false,
            max_objects: 0,
            rdma: RdmaMode::Auto,
            rdma_devices: None,
            evict_lru: false,
            name: None,
            shared_dir: None,
            group_shared: false,
        }
    }
}

impl PoolOptions {
    fn shared_options(&self) -> crate::shared::SharedOptions {
        crate::shared::SharedOptions {
            dir: self.shared_dir.clone(),
            group: self.group_shared,
            prefault: self.prefault,
            lock_memory: self.lock_memory,
            rdma: self.rdma,
            rdma_devices: self.rdma_devices.clone(),
        }
    }

    fn effective_max_objects(&self, capacity: usize) -> usize {
        match self.max_objects {
            0 => (capacity / 4096).clamp(1024, 1 << 24),
            n => n,
        }
    }
}

/// How long `get` waits for a key to be created and sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Answer at once.
    Now,
    For(Duration),
    Forever,
}

impl Wait {
    /// The C convention: 0 = now, > 0 = milliseconds, -1 = forever.
    pub fn from_millis(ms: i64) -> Result<Wait> {
        match ms {
            0 => Ok(Wait::Now),
            -1 => Ok(Wait::Forever),
            ms if ms > 0 => Ok(Wait::For(Duration::from_millis(ms as u64))),
            ms => Err(Error::InvalidArgument(format!(
                "timeout {ms} ms: use 0 (no wait), -1 (forever) or a positive count"
            ))),
        }
    }

    pub(crate) fn millis(self) -> i64 {
        match self {
            Wait::Now => 0,
            Wait::For(d) => d.as_millis().min(i64::MAX as u128) as i64,
            Wait::Forever => -1,
        }
    }
}

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of object memory.
    pub capacity_bytes: u64,
    /// Bytes reserved by live objects (each rounded up to 64).
    pub used_bytes: u64,
    /// The longest free range, in bytes: a create of this size or less fits now (below `max_objects`).
    pub largest_free_block: u64,
    /// Objects holding memory: created, sealed, and deleted-but-still-referenced.
    pub object_count: u64,
    /// Keys present (created or sealed).
    pub key_count: u64,
    pub max_objects: u64,
    /// Page size the region was laid out for.
    pub page_size: u64,
    /// Time `open` spent mapping, prefaulting and locking the region.
    pub open_nanos: u64,
    /// RDMA registrations of the region: one per device at open, one per `register_pd`.
    pub rdma_registrations: u64,
    /// Time `open` spent registering the region with RDMA devices.
    pub rdma_register_nanos: u64,
    /// Objects evicted to make room (only with `evict_lru`).
    pub evictions: u64,
    /// Creates that failed for lack of space or of object slots.
    pub creates_refused: u64,
    /// Processes attached to a shared pool now, this one included (alive, holding a slot); 0
    /// for a private pool.
    pub processes_attached: u64,
    /// Dead processes whose references, creates and slots were reclaimed, over the shared
    /// pool's life; 0 for a private pool.
    pub processes_reclaimed: u64,
    /// Times a process found the shared pool's lock abandoned by a process that died holding it
    /// and rebuilt the state behind it; 0 for a private pool.
    pub lock_repairs: u64,
}

/// The shared state. Aligned so that the `Arc` counts (bumped by every create and free) and the
/// arena lock (taken by both) do not share a cache line with what every call reads.
///
/// Every record with references keeps one strong count of this `Arc` (taken at create, given back
/// when its last reference goes), so the region stays mapped while any buffer lives. A freed small
/// record waits in a thread's cache together with its count, and the next create of the same size
/// takes both, so creating and freeing objects never touches the shared reference count.
#[repr(align(128))]
pub(crate) struct Inner {
    /// Declared before `region`: memory registrations go before the memory is unmapped.
    rdma: Registrations,
    region: Region,
    /// Bytes objects can use (`PoolOptions::size` in whole granules); never changes.
    capacity: usize,
    records: Records,
    index: Index,
    /// Freed blocks are cached with their record id and the `Arc<Inner>` count their record held.
    arena: SharedArena<Arc<Inner>>,
    evict_lru: bool,
    /// Eviction candidates left from the last scan of the index, oldest first.
    victims: Mutex<std::vec::IntoIter<Candidate>>,
    /// Zero of the recency clock (`Record::last_used`).
    epoch: Instant,
    evictions: AtomicU64,
    creates_refused: AtomicU64,
}

impl Inner {
    /// `ForkedChild` in a forked child of the process that opened the pool, which has no mapping
    /// of its memory and must not take its locks (another thread may have held them at the fork).
    #[inline]
    fn check_mapped(&self) -> Result<()> {
        if self.region.is_mapped_here() {
            return Ok(());
        }
        Err(Error::ForkedChild { pid: self.region.mapped_by() })
    }

    /// Records a use of `rec`, for LRU eviction.
    fn touch(&self, rec: &Record) {
        if self.evict_lru {
            rec.set_last_used(self.epoch.elapsed().as_nanos() as u64);
        }
    }
}

/// Drops one reference to record `id` of the pool at `pool`; the last one frees the object's block
/// and gives back the record's count of the pool, which may unmap it.
///
/// `pool` comes from `Arc::as_ptr` or `Arc::into_raw` of the pool's `Arc<Inner>`, and the caller
/// holds the reference it drops.
fn release(pool: NonNull<Inner>, id: u32) {
    // SAFETY: the reference being dropped keeps its record's count of the pool, so it is alive.
    let rec = unsafe { pool.as_ref() }.records.get(id);
    release_record(pool, rec, id);
}

/// [`release`] for a caller that has the record at hand.
fn release_record(pool: NonNull<Inner>, rec: &Record, id: u32) {
    if !rec.release() {
        return;
    }
    // SAFETY: `release` answered true, so this thread owns the record.
    let block = unsafe { rec.retire() };
    // SAFETY: the record held one strong count of the pool's `Arc`, taken with `Arc::into_raw`
    // (see `Pool::create_object`); it is given back here, once.
    let token = unsafe { Arc::from_raw(pool.as_ptr()) };
    // The slot is its own allocation: putting the pool's `Arc` into it borrows nothing of the pool,
    // which a concurrent `close` may free once it drains the slot.
    let slot = token.arena.slot();
    if let Err((block, id, token)) = slot.put(block, id, token) {
        token.arena.free(block, id);
    }
}

/// An open pool. Thread-safe: share it by reference across threads. Dropping it closes it.
///
/// A child forked after the pool was opened has no mapping of its memory: there every fallible
/// method of the pool and its buffers answers [`Error::ForkedChild`], `contains` answers false,
/// `stats` is all zero, dropping the pool or a buffer does nothing (its state is the parent's,
/// copied), and a buffer's bytes must not be read. Open a pool in the child instead.
pub struct Pool {
    backend: Backend,
}

/// Where a pool's state lives: in this process, or in a file several processes map.
#[derive(Clone)]
pub(crate) enum Backend {
    Local(Arc<Inner>),
    Shared(SharedPool),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Local(inner) => f.debug_struct("Pool").field("region", &inner.region).finish(),
            Backend::Shared(shared) => f.debug_struct("Pool").field("shared", &shared.name()).finish(),
        }
    }
}

impl Backend {
    /// `Pool::get` on a clone of the pool's state, for a caller that must not borrow the `Pool`
    /// while it waits (a concurrent close may free it).
    pub(crate) fn get(&self, key: &[u8], wait: Wait) -> Result<Buffer> {
        match self {
            Backend::Local(inner) => inner.get(key, wait),
            Backend::Shared(shared) => shared_get(shared, key, wait),
        }
    }
}

/// [`Backend::get`] of a shared pool: out of line, so that a private pool's get stays as short
/// as it is without shared pools.
#[inline(never)]
fn shared_get(shared: &SharedPool, key: &[u8], wait: Wait) -> Result<Buffer> {
    shared.get_as(key, wait, Buffer::shared)
}

/// One reference to one object. Writable while its creator has not sealed it; read-only after.
/// Dropping it releases the reference; dropping an unsealed one aborts the object.
pub struct Buffer {
    kind: Kind,
}

enum Kind {
    Local(LocalBuffer),
    Shared(SharedBuffer),
}

/// A buffer of a private pool.
struct LocalBuffer {
    /// The pool; kept alive by the record's count of it while this buffer's reference lives.
    pool: NonNull<Inner>,
    /// The object's record (records never move while the pool lives), and its id.
    rec: NonNull<Record>,
    id: u32,
    writer: bool,
}

// SAFETY: a buffer is a reference to an immutable (sealed) or exclusively owned (unsealed, only
// writable through `&mut Buffer`) record and block, and the pool it points to is `Sync`.
unsafe impl Send for LocalBuffer {}
// SAFETY: as above; `&Buffer` gives only reads.
unsafe impl Sync for LocalBuffer {}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key is empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!("key of {} bytes is longer than {MAX_KEY_LEN}", key.len())));
    }
    Ok(())
}

fn index_error(e: IndexError, key: &[u8], wait: Wait) -> Error {
    match e {
        IndexError::AlreadyExists => Error::AlreadyExists(Key::new(key)),
        IndexError::NotFound => Error::NotFound(Key::new(key)),
        IndexError::NotSealed => Error::NotSealed(Key::new(key)),
        IndexError::AlreadySealed => Error::AlreadySealed(Key::new(key)),
        IndexError::Timeout => Error::Timeout { key: Key::new(key), ms: wait.millis() },
        IndexError::Closed => Error::PoolClosed,
    }
}

/// Eviction candidates one scan of the index keeps, at most.
const VICTIMS: usize = 16384;

impl Inner {
    /// Evicts the least recently used object nobody holds, taking candidates from the pool's
    /// list (from a scan of the index, oldest first, kept for the next creates: a create that
    /// evicts thousands of objects, or thousands of creates that evict one each, scan the index
    /// once per `VICTIMS` evictions, not once each) and scanning again when they run out. A
    /// candidate is evicted only if it is still in the index, sealed, unheld and unused since
    /// the scan. Other threads create, seal and evict meanwhile: a scan's candidates may all be
    /// gone by the time they are tried while newer objects have become evictable, so only a
    /// scan that finds nothing ends the search. Answers the evicted id, whose index reference
    /// the caller drops.
    fn evict_one(&self) -> Option<u32> {
        let mut victims = self.victims.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(id) = victims.find_map(|c| self.index.evict(&self.records, c)) {
                return Some(id);
            }
            *victims = self.index.evictable(&self.records, VICTIMS).into_iter();
            if victims.len() == 0 {
                return None;
            }
        }
    }

    /// Drops the index's reference to an evicted object (its last: nobody else held it) and
    /// returns its block straight to the shared arena rather than to this thread's cache, where
    /// it would neither merge with its free neighbours nor be seen by another thread's create.
    fn free_evicted(self: &Arc<Self>, id: u32) {
        let rec = self.records.get(id);
        if !rec.release() {
            return;
        }
        // SAFETY: `release` answered true, so this thread owns the record.
        let block = unsafe { rec.retire() };
        // SAFETY: the record held one strong count of the pool's `Arc`, taken with `Arc::into_raw`
        // (see `Pool::create_object`); it is given back here, once. `self` keeps the pool alive.
        drop(unsafe { Arc::from_raw(Arc::as_ptr(self)) });
        self.arena.free(block, id);
    }

    pub(crate) fn get(self: &Arc<Self>, key: &[u8], wait: Wait) -> Result<Buffer> {
        self.check_mapped()?;
        check_key(key)?;
        if self.index.is_closed() {
            return Err(Error::PoolClosed);
        }
        let found = match self.index.lookup(&self.records, key) {
            Lookup::Sealed(id) => Ok(id),
            Lookup::Unsealed if wait == Wait::Now => Err(IndexError::NotSealed),
            Lookup::Absent if wait == Wait::Now => Err(IndexError::NotFound),
            _ => {
                let deadline = match wait {
                    Wait::For(d) => Instant::now().checked_add(d),
                    _ => None,
                };
                self.index.wait_sealed(&self.records, key, deadline)
            }
        };
        let id = found.map_err(|e| index_error(e, key, wait))?;
        let rec = self.records.get(id);
        self.touch(rec);
        Ok(Buffer { kind: Kind::Local(LocalBuffer { pool: self.ptr(), rec: NonNull::from(rec), id, writer: false }) })
    }

    /// The pool's address with the provenance of its `Arc`, for buffers and `release`.
    fn ptr(self: &Arc<Self>) -> NonNull<Inner> {
        NonNull::new(Arc::as_ptr(self).cast_mut()).expect("an Arc's pointer is never null")
    }
}

impl Pool {
    /// Maps and prepares the region. Fails with `InvalidArgument` for a bad size, `System` when
    /// the memory cannot be mapped, prefaulted or locked. With a `name`, creates a shared pool
    /// (see [`Pool::attach`]); a pool of that name must not exist.
    pub fn open(opts: &PoolOptions) -> Result<Pool> {
        if let Some(name) = &opts.name {
            if opts.size == 0 {
                return Err(Error::InvalidArgument("pool size 0: give at least 1 byte".into()));
            }
            let capacity = opts.size.div_ceil(ALIGNMENT) * ALIGNMENT;
            let how = Opening::Create {
                size: capacity as u64,
                max_objects: opts.effective_max_objects(capacity) as u64,
                evict_lru: opts.evict_lru,
            };
            let shared = SharedInner::open(name, how, &opts.shared_options())?;
            return Ok(Pool { backend: Backend::Shared(shared) });
        }
        let region = Region::map(&RegionOptions {
            len: opts.size,
            pages: opts.pages.clone(),
            prefault: opts.prefault,
            lock: opts.lock_memory,
        })?;
        // Capacity is what was asked for (in whole granules), not the page-rounded mapping, so
        // a 1 MiB pool holds 1 MiB whatever page size backs it.
        let capacity = opts.size.div_ceil(ALIGNMENT) * ALIGNMENT;
        let rdma = Registrations::open(
            region.base(),
            region.len(),
            region.page_size(),
            opts.rdma,
            opts.rdma_devices.as_deref(),
        )?;
        let max_objects = opts.effective_max_objects(capacity);
        // Blocks never straddle two memory registrations.
        let arena = Arena::new(capacity, max_objects, rdma.chunk_len());
        let records = Records::new(arena.max_objects())?;
        Ok(Pool {
            backend: Backend::Local(Arc::new(Inner {
                rdma,
                region,
                capacity,
                records,
                index: Index::new(),
                arena: SharedArena::new(arena),
                evict_lru: opts.evict_lru,
                victims: Mutex::new(Vec::new().into_iter()),
                epoch: Instant::now(),
                evictions: AtomicU64::new(0),
                creates_refused: AtomicU64::new(0),
            })),
        })
    }

    /// Attaches the shared pool `name`, created by another process (or by this one): the same
    /// objects, mapped at this process's own address. Of `opts` only the directory, the group
    /// sharing, prefault, memory locking and RDMA fields apply; the size and limits are the
    /// creator's. Refuses a file that is not a pool of this layout version, a truncated one,
    /// and one owned by another user unless it is group-shared and `group_shared` is set.
    pub fn attach(name: &str, opts: &PoolOptions) -> Result<Pool> {
        let shared = SharedInner::open(name, Opening::Attach, &opts.shared_options())?;
        Ok(Pool { backend: Backend::Shared(shared) })
    }

    /// Removes the shared pool `name`'s file (in `dir`, `/dev/shm` when `None`). Processes
    /// attached keep using it; a new pool of that name can be created at once.
    pub fn unlink(name: &str, dir: Option<&std::path::Path>) -> Result<()> {
        crate::shared::unlink(name, dir)
    }

    /// Removes the shared pool `name`'s file (in `dir`, `/dev/shm` when `None`) if, and only if,
    /// its creator died before publishing it: never a published pool, never a file a live process
    /// is still creating, never a file that is not a pool's (decided under the file's creation
    /// lock). Answers whether it removed it.
    pub fn remove_abandoned(name: &str, dir: Option<&std::path::Path>) -> Result<bool> {
        let path = crate::shared::pool_path(name, dir)?;
        crate::shm::pool_file::PoolFile::remove_if_abandoned(&path, crate::shm::file::Sharing::Group)
    }

    /// Checks `name` against the rules for shared pool names (1 to 128 bytes of ASCII letters,
    /// digits, `_`, `-` and `.`, starting with a letter, a digit or `_`, with no `..`), as
    /// opening, attaching and removing a pool do first.
    pub fn check_name(name: &str) -> Result<()> {
        crate::shared::pool_path(name, None).map(drop)
    }

    /// Opens the shared pool `name` for inspection only, as an operator's tool does: no process
    /// slot, no RDMA, no objects (create and get answer `InvalidArgument`); stats, check,
    /// reclaim and the process list work.
    pub fn inspect(name: &str, dir: Option<&std::path::Path>) -> Result<Pool> {
        let opts = crate::shared::SharedOptions {
            dir: dir.map(Into::into),
            group: true,
            prefault: false,
            lock_memory: false,
            rdma: RdmaMode::Off,
            rdma_devices: None,
        };
        let shared = SharedInner::open(name, Opening::Inspect, &opts)?;
        Ok(Pool { backend: Backend::Shared(shared) })
    }

    /// The processes holding slots of a shared pool, alive or dead (not reclaimed yet); empty
    /// for a private pool.
    pub fn processes(&self) -> Result<Vec<crate::shared::ProcessInfo>> {
        match &self.backend {
            Backend::Local(inner) => inner.check_mapped().map(|()| Vec::new()),
            Backend::Shared(shared) => shared.processes(),
        }
    }

    /// The path of a shared pool's file; `None` for a private pool.
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Shared(shared) => Some(shared.path()),
        }
    }

    /// A shared pool's name; `None` for a private one.
    pub fn name(&self) -> Option<&str> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Shared(shared) => Some(shared.name()),
        }
    }

    /// Reclaims what dead processes attached to a shared pool held (their unsealed creates,
    /// read references and slots); answers how many processes. 0 for a private pool.
    pub fn reclaim(&self) -> Result<u64> {
        match &self.backend {
            Backend::Local(inner) => inner.check_mapped().map(|()| 0),
            Backend::Shared(shared) => shared.reclaim(),
        }
    }

    /// Verifies every invariant of a shared pool's state (`zcopy check`); `Ok` for a private pool.
    pub fn check(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(inner) => inner.check_mapped(),
            Backend::Shared(shared) => shared.check(),
        }
    }

    /// The pool's state, for a caller that must not borrow this `Pool` while it waits.
    pub(crate) fn share(&self) -> Backend {
        self.backend.clone()
    }

    /// Reserves `size` bytes for `key` and returns the writable buffer. The key stays invisible to
    /// `get` until the buffer is sealed. Contents of a new buffer are unspecified.
    pub fn create(&self, key: &[u8], size: usize) -> Result<Buffer> {
        self.create_object(key, size, None)
    }

    /// Reserves one object holding parts of these sizes, each 64-byte aligned, behind the
    /// self-describing header of `docs/FORMAT.md` (written here). Write each part through
    /// [`Buffer::part_mut`]; the header must stay as it is.
    pub fn create_parts(&self, key: &[u8], sizes: &[usize]) -> Result<Buffer> {
        let layout = Layout::new(sizes)?;
        let mut buf = self.create_object(key, layout.total_len, Some(&layout.parts))?;
        match buf.as_mut_slice() {
            Some(bytes) => layout.write_header(bytes),
            None => return Err(Error::Internal("new buffer is not writable".into())),
        }
        Ok(buf)
    }

    fn create_object(&self, key: &[u8], size: usize, parts: Option<&[(usize, usize)]>) -> Result<Buffer> {
        let inner = match &self.backend {
            Backend::Local(inner) => inner,
            Backend::Shared(shared) => return shared.create(key, size, parts).map(Buffer::shared),
        };
        inner.check_mapped()?;
        check_key(key)?;
        let capacity = inner.capacity;
        if size > capacity {
            return Err(Error::InvalidArgument(format!(
                "size {} is larger than the whole pool ({})",
                Bytes(size as u64),
                Bytes(capacity as u64)
            )));
        }
        let mut retried = false;
        loop {
            let made = inner.index.insert_with(&inner.records, key, || {
                let (block, id, cached) = inner.arena.allocate(size).map_err(|e| alloc_error(inner, e, size))?;
                // The record keeps one count of the pool: the one cached with it, or a new one.
                let pool = Arc::into_raw(cached.unwrap_or_else(|| inner.clone()));
                let parts: Option<PartTable> = parts.map(Into::into);
                // SAFETY: the arena handed out `id`, so nobody else holds it or its record. Two
                // references: the index's and the creator's.
                unsafe { inner.records.init(id, block, size, key, parts, 2) };
                debug_assert_eq!(pool, Arc::as_ptr(inner));
                Ok(id)
            });
            let e = match made {
                Ok(Ok(id)) => {
                    let rec = NonNull::from(inner.records.get(id));
                    return Ok(Buffer { kind: Kind::Local(LocalBuffer { pool: inner.ptr(), rec, id, writer: true }) });
                }
                Ok(Err(e)) => e,
                Err(e) => return Err(index_error(e, key, Wait::Now)),
            };
            let out_of_room = matches!(e, Error::PoolFull { .. } | Error::ObjectLimit { .. });
            // With eviction on, evict least recently used objects one by one (outside any
            // lock of the index) until the create fits or nothing is left to evict.
            if out_of_room && inner.evict_lru {
                if let Some(id) = inner.evict_one() {
                    inner.evictions.fetch_add(1, Ordering::Relaxed);
                    inner.free_evicted(id);
                    continue;
                }
                // Nothing is evictable now, but other threads' evictions, deletes and aborts may
                // have freed room since this create last tried: try once more before refusing.
                if !retried {
                    retried = true;
                    continue;
                }
            }
            if out_of_room {
                inner.creates_refused.fetch_add(1, Ordering::Relaxed);
            }
            return Err(e);
        }
    }

    /// A read reference to the sealed object under `key`: the same bytes its creator wrote.
    pub fn get(&self, key: &[u8], wait: Wait) -> Result<Buffer> {
        self.backend.get(key, wait)
    }

    /// Removes `key` at once. Readers holding it keep valid, unchanged bytes until they release;
    /// the memory is freed at the last release. Only sealed keys can be deleted (an unsealed one
    /// belongs to its creator, who aborts it).
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        let inner = match &self.backend {
            Backend::Local(inner) => inner,
            Backend::Shared(shared) => return shared.delete(key),
        };
        inner.check_mapped()?;
        check_key(key)?;
        let id = inner.index.remove_sealed(&inner.records, key).map_err(|e| index_error(e, key, Wait::Now))?;
        release(inner.ptr(), id);
        Ok(())
    }

    /// Whether `key` is sealed (and so visible to `get`). False for bad keys, after close and in a
    /// forked child.
    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.backend {
            Backend::Local(inner) => {
                inner.check_mapped().is_ok()
                    && check_key(key).is_ok()
                    && inner.index.contains_sealed(&inner.records, key)
            }
            Backend::Shared(shared) => shared.contains(key),
        }
    }
}

fn alloc_error(inner: &Inner, e: AllocError, size: usize) -> Error {
    match e {
        AllocError::NoSpace { largest_free } => {
            let usage = inner.arena.usage();
            Error::PoolFull {
                requested: size as u64,
                largest_free: largest_free as u64,
                used: usage.used as u64,
                capacity: usage.capacity as u64,
            }
        }
        AllocError::TooManyObjects { limit } => Error::ObjectLimit { limit: limit as u64 },
    }
}

impl Pool {
    /// Creates, copies `data` in and seals: the one-copy put.
    pub fn put(&self, key: &[u8], data: &[u8]) -> Result<()> {
        let mut buf = self.create(key, data.len())?;
        buf.as_mut_slice().ok_or_else(|| Error::Internal("new buffer is not writable".into()))?.copy_from_slice(data);
        buf.seal()
    }

    /// Copies the sealed object under `key` into `dst`: the one-copy get. Returns its size.
    pub fn get_into(&self, key: &[u8], wait: Wait, dst: &mut [u8]) -> Result<usize> {
        self.get(key, wait)?.copy_to(dst)
    }

    /// A snapshot of the counters. Returns the per-thread caches' free blocks to the allocator
    /// first, so `largest_free_block` sees them coalesced. All zero in a forked child.
    pub fn stats(&self) -> PoolStats {
        let inner = match &self.backend {
            Backend::Local(inner) => inner,
            Backend::Shared(shared) => return shared_stats(shared),
        };
        if inner.check_mapped().is_err() {
            return PoolStats::default();
        }
        drop(inner.arena.flush());
        let usage = inner.arena.usage();
        PoolStats {
            capacity_bytes: usage.capacity as u64,
            used_bytes: usage.used as u64,
            largest_free_block: usage.largest_free as u64,
            object_count: usage.live as u64,
            key_count: inner.index.len() as u64,
            max_objects: usage.max_objects as u64,
            page_size: inner.region.page_size() as u64,
            open_nanos: inner.region.map_time().as_nanos() as u64,
            rdma_registrations: inner.rdma.count() as u64,
            rdma_register_nanos: inner.rdma.open_time().as_nanos() as u64,
            evictions: inner.evictions.load(Ordering::Relaxed),
            creates_refused: inner.creates_refused.load(Ordering::Relaxed),
            processes_attached: 0,
            processes_reclaimed: 0,
            lock_repairs: 0,
        }
    }

    /// First byte of the object memory and its length.
    pub fn region(&self) -> (*mut u8, usize) {
        match &self.backend {
            Backend::Local(inner) => (inner.region.base(), inner.region.len()),
            Backend::Shared(shared) => shared.data_region(),
        }
    }

    /// Refuses all new work (`PoolClosed`), wakes every waiting `get`, and drops the pool's own
    /// references. Buffers still held keep their memory mapped until they are released.
    /// Idempotent. A shared pool keeps its objects for the other processes (and for a later
    /// attach): closing detaches this process, once its last buffer is released.
    pub fn close(&self) {
        let inner = match &self.backend {
            Backend::Local(inner) => inner,
            Backend::Shared(shared) => return shared.close(),
        };
        if inner.check_mapped().is_err() {
            return;
        }
        for id in inner.index.close() {
            release(inner.ptr(), id);
        }
        let cached = inner.arena.close();
        drop(cached);
        inner.rdma.close_caller_pds();
    }

    fn rdma(&self) -> Result<&Registrations> {
        self.check_mapped()?;
        Ok(match &self.backend {
            Backend::Local(inner) => &inner.rdma,
            Backend::Shared(shared) => shared.rdma(),
        })
    }

    /// RDMA registrations: one per device registered at open, plus one per `register_pd`.
    pub fn rdma_count(&self) -> u32 {
        self.rdma().map_or(0, |r| r.count())
    }

    /// The `struct ibv_pd *` of registration `index`; NULL past the end.
    pub fn rdma_pd(&self, index: u32) -> *mut std::ffi::c_void {
        self.rdma().map_or(std::ptr::null_mut(), |r| r.pd(index).cast())
    }

    /// Registers the whole object memory on a protection domain the caller owns (`struct ibv_pd *`)
    /// and answers its registration index. The pool deregisters it at `close`; the PD must live
    /// until then.
    ///
    /// # Safety
    /// `pd` is NULL or a live `struct ibv_pd *`.
    pub unsafe fn register_pd(&self, pd: *mut std::ffi::c_void) -> Result<u32> {
        let rdma = self.rdma()?;
        if self.is_closed() {
            return Err(Error::PoolClosed);
        }
        // SAFETY: per the contract above.
        unsafe { rdma.register_pd(pd.cast()) }
    }

    pub fn is_closed(&self) -> bool {
        match &self.backend {
            Backend::Local(inner) => inner.index.is_closed(),
            Backend::Shared(shared) => shared.is_closed(),
        }
    }

    /// `ForkedChild` in a child forked after the pool was opened, which has no mapping of it.
    pub fn check_mapped(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(inner) => inner.check_mapped(),
            Backend::Shared(shared) => shared.check_mapped(),
        }
    }
}

fn shared_stats(shared: &SharedInner) -> PoolStats {
    let Ok(counts) = shared.counts() else { return PoolStats::default() };
    let attached = shared.processes().map_or(0, |p| p.iter().filter(|p| p.alive).count() as u64);
    PoolStats {
        capacity_bytes: counts.capacity,
        used_bytes: counts.used,
        largest_free_block: counts.largest_free,
        object_count: counts.live,
        key_count: counts.keys,
        max_objects: counts.max_objects,
        page_size: shared.page_size() as u64,
        open_nanos: shared.open_time().as_nanos() as u64,
        rdma_registrations: shared.rdma().count() as u64,
        rdma_register_nanos: shared.rdma().open_time().as_nanos() as u64,
        evictions: counts.evictions,
        creates_refused: counts.creates_refused,
        processes_attached: attached,
        processes_reclaimed: counts.reclaimed,
        lock_repairs: counts.repairs,
    }
}

/// Pools dropped in a forked child. Their state is a copy of the parent's and must never be
/// freed there: that would unmap an address range the child may have reused, and release the
/// parent's RDMA registrations through the inherited device handles. Kept here, reachable, so
/// leak checkers do not count them.
static FORK_ORPHANS: Mutex<Vec<Backend>> = Mutex::new(Vec::new());

/// Keeps a forked child's copy of a pool's state from ever being freed (see [`FORK_ORPHANS`]).
fn orphan(backend: Backend) {
    // `try_lock`: a thread of this process may have held the lock when it forked us.
    match FORK_ORPHANS.try_lock() {
        Ok(mut orphans) => orphans.push(backend),
        Err(_) => std::mem::forget(backend),
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.check_mapped().is_err() {
            orphan(self.backend.clone());
            return;
        }
        self.close();
    }
}

impl LocalBuffer {
    fn pool(&self) -> &Inner {
        // SAFETY: this buffer's reference keeps its record's count of the pool.
        unsafe { self.pool.as_ref() }
    }

    fn rec(&self) -> &Record {
        // SAFETY: records live as long as the pool, which this buffer keeps alive.
        unsafe { self.rec.as_ref() }
    }
}

impl Drop for LocalBuffer {
    fn drop(&mut self) {
        // In a forked child the record and the pool are the parent's, copied: leave them be.
        if !self.pool().region.is_mapped_here() {
            return;
        }
        if self.writer && !self.rec().is_sealed() {
            let pool = self.pool();
            if pool.index.remove_unsealed(&pool.records, self.id) {
                // The index's reference; the buffer's own is still held below.
                release_record(self.pool, self.rec(), self.id);
            }
        }
        release_record(self.pool, self.rec(), self.id);
    }
}

impl Buffer {
    fn shared(buf: SharedBuffer) -> Buffer {
        Buffer { kind: Kind::Shared(buf) }
    }

    /// `ForkedChild` in a child forked after the buffer's pool was opened: its bytes are not
    /// mapped there.
    pub fn check_mapped(&self) -> Result<()> {
        match &self.kind {
            Kind::Local(b) => b.pool().check_mapped(),
            Kind::Shared(b) => b.check_mapped(),
        }
    }

    pub fn key(&self) -> &[u8] {
        match &self.kind {
            Kind::Local(b) => b.rec().key(),
            Kind::Shared(b) => b.key(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Local(b) => b.rec().size(),
            Kind::Shared(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_sealed(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.rec().is_sealed(),
            Kind::Shared(b) => !b.is_writer(),
        }
    }

    fn is_writer(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.writer,
            Kind::Shared(b) => b.is_writer(),
        }
    }

    /// Copies the bytes into `dst` and answers how many; `InvalidArgument` if `dst` is too small
    /// (nothing is copied then).
    pub fn copy_to(&self, dst: &mut [u8]) -> Result<usize> {
        self.check_mapped()?;
        let src = self.as_slice();
        if dst.len() < src.len() {
            return Err(Error::InvalidArgument(format!(
                "destination holds {} bytes, object {} has {}",
                dst.len(),
                Key::new(self.key()),
                src.len()
            )));
        }
        dst[..src.len()].copy_from_slice(src);
        Ok(src.len())
    }

    /// Offset of the first byte from the start of the pool's object memory.
    pub fn offset(&self) -> usize {
        match &self.kind {
            Kind::Local(b) => b.rec().offset(),
            Kind::Shared(b) => b.offset(),
        }
    }

    fn parts(&self) -> Option<&[(usize, usize)]> {
        match &self.kind {
            Kind::Local(b) => b.rec().parts(),
            Kind::Shared(b) => b.parts(),
        }
    }

    /// Parts of an object made by `create_parts`; 0 for a plain object.
    pub fn part_count(&self) -> usize {
        self.parts().map_or(0, |p| p.len())
    }

    /// Offset (from the object's first byte) and length of part `index`.
    pub fn part_range(&self, index: usize) -> Result<(usize, usize)> {
        self.check_mapped()?;
        match self.parts() {
            None => Err(Error::InvalidArgument(format!(
                "key {} is a plain object, not one made of parts",
                Key::new(self.key())
            ))),
            Some(parts) => parts
                .get(index)
                .copied()
                .ok_or_else(|| Error::InvalidArgument(format!("part {index} of an object with {} parts", parts.len()))),
        }
    }

    pub fn part(&self, index: usize) -> Result<&[u8]> {
        let (offset, len) = self.part_range(index)?;
        Ok(&self.as_slice()[offset..offset + len])
    }

    /// A part's bytes, writable: only for the creator's buffer, until it is sealed.
    pub fn part_mut(&mut self, index: usize) -> Result<&mut [u8]> {
        let (offset, len) = self.part_range(index)?;
        let key = Key::new(self.key());
        match self.as_mut_slice() {
            Some(bytes) => Ok(&mut bytes[offset..offset + len]),
            None => Err(Error::AlreadySealed(key)),
        }
    }

    /// Where the buffer's bytes are for RDMA, with the keys of registration `index`: a target for
    /// a peer's RDMA WRITE while unsealed, a source for RDMA READ once sealed.
    pub fn rdma_desc(&self, index: u32) -> Result<RdmaDesc> {
        self.check_mapped()?;
        match &self.kind {
            Kind::Local(b) => b.pool().rdma.desc(index, self.offset(), self.len()),
            Kind::Shared(b) => b.rdma_desc(index),
        }
    }

    /// Address of the first byte, inside the pool's memory. Valid while this buffer lives, in the
    /// process that opened or attached the pool (see [`Buffer::check_mapped`]).
    pub fn as_ptr(&self) -> *const u8 {
        match &self.kind {
            Kind::Local(b) => b.pool().region.ptr_at(self.offset()),
            Kind::Shared(b) => b.as_ptr(),
        }
    }

    /// Writable address: only for the creator's buffer, only until it is sealed, and not in a
    /// forked child.
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        (self.is_writer() && !self.is_sealed() && self.check_mapped().is_ok()).then(|| self.as_ptr().cast_mut())
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the block [offset, offset + size) lies inside the pool's memory (checked when a
        // shared pool's object was copied out), which stays mapped while this buffer's reference
        // lives. Sealed bytes are never written again through the library; unsealed bytes are
        // written only through `as_mut_slice`, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        let size = self.len();
        // SAFETY: as in `as_slice`; this is the only writable handle to the block and it is
        // borrowed mutably for the slice's life.
        self.as_mut_ptr().map(|p| unsafe { std::slice::from_raw_parts_mut(p, size) })
    }

    /// Makes the object immutable and visible to `get`, and wakes its waiters (in every process,
    /// for a shared pool). The buffer stays a read reference that must still be released.
    pub fn seal(&mut self) -> Result<()> {
        self.check_mapped()?;
        let b = match &mut self.kind {
            Kind::Local(b) => b,
            Kind::Shared(b) => return b.seal(),
        };
        if !b.writer {
            return Err(Error::AlreadySealed(Key::new(b.rec().key())));
        }
        let pool = b.pool();
        pool.index.seal(&pool.records, b.id).map_err(|e| index_error(e, b.rec().key(), Wait::Now))?;
        pool.touch(b.rec());
        Ok(())
    }

    /// Discards an unsealed object: its key vanishes and its memory is freed. On a sealed buffer
    /// it fails with `AlreadySealed` and gives the buffer back untouched.
    pub fn abort(self) -> std::result::Result<(), (Error, Buffer)> {
        match self.check_abortable() {
            Ok(()) => {
                drop(self);
                Ok(())
            }
            Err(e) => Err((e, self)),
        }
    }

    /// Whether `abort` would succeed: only the creator's buffer, before it is sealed.
    pub fn check_abortable(&self) -> Result<()> {
        self.check_mapped()?;
        if self.is_sealed() || !self.is_writer() {
            return Err(Error::AlreadySealed(Key::new(self.key())));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("key", &Key::new(self.key()).to_string())
            .field("len", &self.len())
            .field("sealed", &self.is_sealed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates that evict one object each take their candidates from one scan of the index, and
    /// evict the least recently used objects nobody holds, in that order.
    #[test]
    fn creates_that_evict_one_object_each_share_one_scan_of_the_index_and_evict_oldest_first() {
        let opts = PoolOptions {
            size: 1 << 20,
            max_objects: 1024,
            evict_lru: true,
            rdma: RdmaMode::Off,
            ..Default::default()
        };
        let pool = Pool::open(&opts).unwrap();
        let key = |i: usize| format!("k{i:04}");
        for i in 0..256 {
            let mut w = pool.create(key(i).as_bytes(), 4096).unwrap();
            w.as_mut_slice().unwrap().fill(i as u8);
            w.seal().unwrap();
        }
        let held: Vec<_> = (0..4).map(|i| pool.get(key(i).as_bytes(), Wait::Now).unwrap()).collect();
        let scans = || crate::index::EVICTABLE_SCANS.with(|c| c.get());
        let before = scans();
        for i in 0..100 {
            let mut w = pool.create(format!("n{i:03}").as_bytes(), 4096).unwrap();
            w.as_mut_slice().unwrap().fill(0xEE);
            w.seal().unwrap();
        }
        assert_eq!(pool.stats().evictions, 100);
        assert!(scans() - before <= 1, "{} scans for 100 creates", scans() - before);
        let gone: Vec<usize> = (0..256).filter(|&i| !pool.contains(key(i).as_bytes())).collect();
        assert_eq!(gone, (4..104).collect::<Vec<_>>(), "the oldest objects nobody held went, in order");
        for (i, h) in held.iter().enumerate() {
            assert!(h.as_slice().iter().all(|&b| b == i as u8));
        }
    }
}
