//! A pool several processes share by name: this process's side of it.
//!
//! The pool's state lives in its file ([`crate::shm::store`]); this module maps the file, takes a
//! process slot, keeps this process's reference ledger, registers the data area for RDMA, and
//! turns the store's operations into buffers. A get of a sealed key and a release take no lock
//! (see [`crate::shm::store`]); everything else runs under the pool's one robust mutex. A
//! process that finds the mutex's last holder dead rebuilds the derived state from the records
//! ([`Store::rebuild`]); dead processes' slots are reclaimed at open, attach and close, when a
//! create runs out of room, and on request ([`SharedPool::reclaim`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::alloc::GRANULE;
use crate::error::{Bytes, Error, Key, Result};
use crate::pool::check_key;
use crate::rdma::{RdmaDesc, RdmaMode, Registrations};
use crate::shm::file::Sharing;
use crate::shm::header::{self, AreaKind, Layout};
use crate::shm::ledger::{self, Handle, Ledger};
use crate::shm::lock::{self, Acquired};
use crate::shm::name::{PoolName, DEFAULT_DIR, PREFIX};
use crate::shm::offset::Area;
use crate::shm::pool_file::{PoolFile, Reserve};
use crate::shm::slots::{SlotGuard, Slots, LIVE};
use crate::shm::store::{ledger_id, DELETED, SEALED};
use crate::shm::store::{
    Chains, Config, Counts, CreateError, Deleted, Locked, Lookup, Object, PartTable, Store, Victim,
};

/// How to create or attach a shared pool.
#[derive(Debug, Clone)]
pub struct SharedOptions {
    /// Directory of the pool file: `/dev/shm` when `None`, or a hugetlbfs mount.
    pub dir: Option<PathBuf>,
    /// Group members may attach too (mode 0660) instead of only the owner (0600).
    pub group: bool,
    /// Touch every data page at open or attach.
    pub prefault: bool,
    pub lock_memory: bool,
    pub rdma: RdmaMode,
    pub rdma_devices: Option<Vec<String>>,
}

/// What a process attached to a pool is doing, as seen from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInfo {
    pub slot: usize,
    pub pid: u32,
    /// False for a process that died without closing, whose slot waits to be reclaimed.
    pub alive: bool,
}

/// One process's handle on a shared pool. Views into the mapping are declared before the mapping
/// (`file`), so they drop first.
pub(crate) struct SharedInner {
    /// Declared first: registrations go before the memory is unmapped.
    rdma: Registrations,
    pub(crate) store: Store<'static>,
    /// This process's ledger; `None` for an inspector, which holds no slot.
    ledger: Option<Ledger<'static>>,
    /// The entries of `ledger` this process has handed out and not in use.
    free_entries: Arc<FreeEntries>,
    /// Eviction candidates left from this process's last scan, for its next creates.
    victims: Mutex<std::vec::IntoIter<Victim>>,
    slot: Option<SlotGuard<'static>>,
    slots: Box<Slots<'static>>,
    closed: AtomicBool,
    data: Area<'static>,
    fork_generation: u64,
    pid: u32,
    name: String,
    path: PathBuf,
    open_time: Duration,
    /// Declared last: the mapping every view above borrows (kept for its `Drop`).
    _file: Box<PoolFile>,
}

// SAFETY: the views point into a shared mapping that lives as long as `self` and is only changed
// through atomics or under the pool's mutex; the rest is `Sync` already.
unsafe impl Send for SharedInner {}
// SAFETY: as above.
unsafe impl Sync for SharedInner {}

impl Drop for SharedInner {
    /// The last buffer is gone: records a release cached after `close` go back before the slot
    /// is freed (a process that cannot take the mutex here leaves them to the next owner of its
    /// slot, who gives them back when it opens).
    fn drop(&mut self) {
        if self.check_mapped().is_err() {
            return;
        }
        if let Some(ledger) = &self.ledger {
            if let Ok(g) = self.lock() {
                let _ = self.store.flush_cache(&g, ledger.slot());
            }
        }
    }
}

/// A process's handle on a shared pool.
pub(crate) type SharedPool = Arc<SharedHandle>;

/// The pool, and a lease on it for each shard of threads: a buffer keeps the pool mapped by
/// holding its thread's lease, so that threads taking buffers count them on cache lines of their
/// own rather than all on the pool's one reference count.
pub(crate) struct SharedHandle {
    inner: Arc<SharedInner>,
    leases: [Padded<Arc<Lease>>; SHARDS],
}

/// Keeps a shared pool mapped while buffers hold it.
pub(crate) struct Lease(Arc<SharedInner>);

impl std::ops::Deref for SharedHandle {
    type Target = SharedInner;
    fn deref(&self) -> &SharedInner {
        &self.inner
    }
}

impl std::ops::Deref for Lease {
    type Target = SharedInner;
    fn deref(&self) -> &SharedInner {
        &self.0
    }
}

impl SharedHandle {
    fn new(inner: Arc<SharedInner>) -> SharedPool {
        let leases = std::array::from_fn(|_| Padded(Arc::new(Lease(inner.clone()))));
        Arc::new(SharedHandle { inner, leases })
    }

    /// This thread's lease, for a new buffer.
    #[inline(always)]
    fn lease(&self) -> Arc<Lease> {
        self.leases[shard()].0.clone()
    }

    pub(crate) fn create(&self, key: &[u8], size: usize, parts: Option<&[(usize, usize)]>) -> Result<SharedBuffer> {
        self.check_open()?;
        check_key(key)?;
        if size as u64 > self.store.cfg.capacity {
            return Err(Error::InvalidArgument(format!(
                "size {} is larger than the whole pool ({})",
                Bytes(size as u64),
                Bytes(self.store.cfg.capacity)
            )));
        }
        let ledger = self.ledger()?;
        // Worked out before the mutex is taken, so that it is held for less.
        let hash = self.store.hash(key);
        let table: Option<PartTable> = parts.map(Into::into);
        let h = self.take_entry(ledger)?;
        let made = self.create_in(ledger, h, key, hash, size, parts, table);
        if made.is_err() {
            self.free_entries.give(h);
        }
        made
    }

    #[allow(clippy::too_many_arguments)]
    fn create_in(
        &self,
        ledger: &Ledger<'_>,
        h: Handle,
        key: &[u8],
        hash: u64,
        size: usize,
        parts: Option<&[(usize, usize)]>,
        table: Option<PartTable>,
    ) -> Result<SharedBuffer> {
        // Under the lock of the key's chain alone when this process keeps a record of this size
        // (see Store::create_cached), else under the pool's mutex as well.
        if parts.is_none() && self.store.may_have_cached(ledger.slot(), (size as u64).div_ceil(GRANULE as u64)) {
            if let Some(c) = self.store.chains_fast(hash)? {
                match self.store.create_cached(&c, ledger, h, key, hash, size as u64) {
                    Ok(Some(obj)) => return Ok(SharedBuffer { pool: self.lease(), obj, entry: h, writer: true, hash }),
                    Ok(None) | Err(CreateError::AlreadyExists { unsealed: true }) => {}
                    Err(CreateError::AlreadyExists { unsealed: false }) => {
                        return Err(Error::AlreadyExists(Key::new(key)))
                    }
                    Err(CreateError::Other(e)) => return Err(e),
                    Err(_) => {}
                }
            }
        }
        let mut reclaimed = false;
        let mut eviction = Eviction::default();
        loop {
            let g = self.lock()?;
            let c = self.chains(&g, hash)?;
            let made = self.store.create(&g, &c, ledger, h, key, hash, size as u64, parts);
            drop(c);
            let e = match made {
                Ok(mut obj) => {
                    drop(g);
                    obj.parts = table;
                    return Ok(SharedBuffer { pool: self.lease(), obj, entry: h, writer: true, hash });
                }
                // An unsealed key may be the create of a process that died: reclaiming aborts it.
                Err(CreateError::AlreadyExists { unsealed }) => {
                    if unsealed && !reclaimed {
                        reclaimed = true;
                        if self.reclaim_locked(&g)? > 0 {
                            continue;
                        }
                    }
                    return Err(Error::AlreadyExists(Key::new(key)));
                }
                Err(CreateError::Other(e)) => return Err(e),
                Err(e) => e,
            };
            // Out of room: give back what dead processes held, then evict, then refuse.
            if !reclaimed {
                reclaimed = true;
                if self.reclaim_locked(&g)? > 0 {
                    continue;
                }
            }
            if self.store.cfg.evict_lru && self.evict_one(&g, &mut eviction)? {
                continue;
            }
            self.store.note_refused();
            let counts = self.store.counts(&g);
            return Err(match e {
                CreateError::NoSpace { largest_free } => Error::PoolFull {
                    requested: size as u64,
                    largest_free,
                    used: counts.used,
                    capacity: counts.capacity,
                },
                CreateError::KeyHeapFull => self.store.key_heap_full(),
                _ => Error::ObjectLimit { limit: counts.max_objects },
            });
        }
    }

    /// Evicts the least recently used sealed object nobody reads, for a create (whose search
    /// `call` follows); false when there is none. Candidates come from a scan of the records,
    /// kept for this process's next evictions: a create that must evict thousands of objects,
    /// or thousands of creates that evict one each, scan the records a few times, not once per
    /// eviction. A candidate is evicted only if it is still the object it was and unused since,
    /// so a list made by an earlier create is safe to use. Objects become evictable meanwhile
    /// (other processes create and release), so a list used up is followed by a new scan, each
    /// of this create's scans asking for twice as many as the one before; only a scan none of
    /// whose candidates could be evicted (all taken by readers since) ends the search.
    fn evict_one(&self, g: &Locked<'_>, call: &mut Eviction) -> Result<bool> {
        let mut victims = relock(&self.victims);
        loop {
            if self.store.evict_next(g, &mut victims)? {
                call.evicted = true;
                return Ok(true);
            }
            if call.scans > 0 && !call.evicted {
                return Ok(false);
            }
            let batch = VICTIMS.saturating_mul(1 << call.scans.min(20));
            *victims = self.store.lru_victims(g, batch)?.into_iter();
            call.scans += 1;
            call.evicted = false;
            if victims.len() == 0 {
                return Ok(false);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8], wait: crate::pool::Wait) -> Result<SharedBuffer> {
        self.get_as(key, wait, |buf| buf)
    }

    /// [`SharedHandle::get`], the buffer made into the caller's type where it is returned.
    ///
    /// Without the mutex when the key is sealed: finds the record, publishes a reference,
    /// confirms the record did not change meanwhile; else (or when the record changed, or a
    /// repair is pending) under the mutex.
    #[inline]
    pub(crate) fn get_as<T>(
        &self,
        key: &[u8],
        wait: crate::pool::Wait,
        wrap: impl FnOnce(SharedBuffer) -> T,
    ) -> Result<T> {
        self.check_open()?;
        check_key(key)?;
        let ledger = self.ledger()?;
        let hash = self.store.hash(key);
        // A reader that sees a repair pending takes the mutex (and makes the repair) instead of
        // reading the index.
        if !self.store.repair_pending_now() {
            if let Some(found) = self.store.peek(key, hash) {
                let h = self.take_entry(ledger)?;
                // Marked among the record's holders first, so a deleter that sees the reference
                // looks in this slot's ledger.
                found.mark_holder(ledger.slot());
                if let Err(e) = ledger.hold(h, found.ledger_id()) {
                    self.free_entries.give(h);
                    return Err(e);
                }
                if found.still(SEALED) {
                    // Confirmed: the object cannot be freed while the reference stands, so its
                    // fields are the ones its creator wrote.
                    let obj = match self.store.object_found(&found) {
                        Ok(obj) => obj,
                        Err(e) => {
                            self.withdraw(ledger, h, found.id, found.generation)?;
                            return Err(e);
                        }
                    };
                    return Ok(wrap(SharedBuffer { pool: self.lease(), obj, entry: h, writer: false, hash: 0 }));
                }
                self.withdraw(ledger, h, found.id, found.generation)?;
            }
        }
        self.get_locked(ledger, key, hash, wait).map(wrap)
    }

    /// The get of a key the lock-free path did not find sealed: under the mutex, and waiting for
    /// a seal when asked to.
    #[inline(never)]
    fn get_locked(&self, ledger: &Ledger<'_>, key: &[u8], hash: u64, wait: crate::pool::Wait) -> Result<SharedBuffer> {
        use crate::pool::Wait;
        let deadline = match wait {
            Wait::For(d) => Instant::now().checked_add(d),
            _ => None,
        };
        loop {
            let g = self.lock()?;
            if self.is_closed() {
                return Err(Error::PoolClosed);
            }
            // Read before looking: a seal (which takes no lock) after this moves it.
            let word: &AtomicU32 = self.store.seal_word(hash);
            let seen = word.load(Ordering::SeqCst);
            let c = self.chains(&g, hash)?;
            match self.store.lookup(&c, key, hash)? {
                Lookup::Sealed(obj) => {
                    // Under its chain's lock nothing deletes it: no need to confirm.
                    let h = self.hold(ledger, obj.id, obj.generation)?;
                    self.store.touch(obj.id);
                    return Ok(SharedBuffer { pool: self.lease(), obj, entry: h, writer: false, hash: 0 });
                }
                Lookup::Unsealed if wait == Wait::Now => return Err(Error::NotSealed(Key::new(key))),
                Lookup::Absent if wait == Wait::Now => return Err(Error::NotFound(Key::new(key))),
                _ => {}
            }
            let timeout = match (wait, deadline) {
                (Wait::Forever, _) | (_, None) => None,
                (_, Some(d)) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(Error::Timeout { key: Key::new(key), ms: wait.millis() }),
                },
            };
            // Counted before sleeping: a seal after this sees the count, one before it moved the
            // word.
            let waiters = self.store.waiters(hash);
            waiters.fetch_add(1, Ordering::SeqCst);
            drop(c);
            drop(g);
            let waited = lock::wait(word, seen, timeout);
            waiters.fetch_sub(1, Ordering::Relaxed);
            waited?;
        }
    }
}

/// Eviction candidates asked of a create's first scan of the records (see
/// [`SharedHandle::evict_one`]).
const VICTIMS: usize = 256;

/// One create's search for objects to evict: the scans it made, and whether a candidate of the
/// last one was evicted.
#[derive(Default)]
struct Eviction {
    scans: u32,
    evicted: bool,
}

/// Shards of [`FreeEntries`]: threads spread over them.
const SHARDS: usize = 8;
/// Ledger entries a shard takes at a time: few, because a delete scans every entry up to the
/// high-water mark of each ledger that may hold the object (32 made that scan 7 % of a
/// create-to-delete cycle).
const BATCH: u64 = 8;

/// On a cache line (pair) of its own.
#[repr(align(128))]
struct Padded<T>(T);

/// The free entries of this process's ledger, in process memory: sharded, so that threads
/// taking and giving back entries (one per get and release) do not contend. A shard that runs dry
/// takes a batch of new entries from the ledger, so two threads' entries lie on different cache
/// lines.
struct FreeEntries {
    shards: [Padded<Mutex<Vec<u64>>>; SHARDS],
    /// Serialises growing the ledger.
    grow: Mutex<()>,
}

/// Entries a thread keeps for its next gets.
const CACHED: usize = 4;

/// The free entries a thread gave back last, and the pool's list they belong to: a thread that
/// gets and releases in turn (a few buffers at a time) takes and gives back these, touching no
/// lock. Given back to their list when the thread ends.
struct Cached {
    owner: std::sync::Weak<FreeEntries>,
    entries: [u64; CACHED],
    len: usize,
}

impl Drop for Cached {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        if let Some(owner) = self.owner.upgrade() {
            for &entry in &self.entries[..self.len] {
                owner.push(entry);
            }
        }
    }
}

thread_local! {
    static THREAD_ENTRIES: std::cell::RefCell<Option<Cached>> = const { std::cell::RefCell::new(None) };
}

/// A poisoned lock here only means a thread panicked holding a plain list: use it as it is.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This thread's shard of every pool's [`FreeEntries`].
#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
    // `try_with`: also called from a thread-local destructor, at thread exit.
    SHARD.try_with(|s| *s).unwrap_or(0)
}

impl FreeEntries {
    fn new() -> Arc<FreeEntries> {
        Arc::new(FreeEntries { shards: std::array::from_fn(|_| Padded(Mutex::new(Vec::new()))), grow: Mutex::new(()) })
    }

    #[inline]
    fn mine(self: &Arc<Self>, cached: &Cached) -> bool {
        std::sync::Weak::as_ptr(&cached.owner) == Arc::as_ptr(self)
    }

    /// An empty entry of `ledger` for this thread: the one it cached, its shard's, a new batch,
    /// or, when the ledger is full, one another shard keeps.
    #[inline]
    fn take(self: &Arc<Self>, store: &Store<'_>, ledger: &Ledger<'_>) -> Result<Handle> {
        let cached = THREAD_ENTRIES.try_with(|c| match &mut *c.borrow_mut() {
            Some(c) if c.len > 0 && self.mine(c) => {
                c.len -= 1;
                Some(c.entries[c.len])
            }
            _ => None,
        });
        match cached {
            Ok(Some(index)) => Ok(Handle(index)),
            _ => self.take_uncached(store, ledger),
        }
    }

    /// [`FreeEntries::take`] when this thread's cache has none.
    #[inline(never)]
    fn take_uncached(self: &Arc<Self>, store: &Store<'_>, ledger: &Ledger<'_>) -> Result<Handle> {
        let mine = &self.shards[shard()].0;
        if let Some(index) = relock(mine).pop() {
            return Ok(Handle(index));
        }
        let grown = {
            let _g = relock(&self.grow);
            store.grow_ledger(ledger, BATCH)
        };
        match grown {
            Ok(range) => {
                let mut list = relock(mine);
                list.extend(range.rev());
                list.pop().map(Handle).ok_or_else(|| Error::Internal("the ledger grew by no entry".into()))
            }
            Err(full) => self.shards.iter().find_map(|s| relock(&s.0).pop()).map(Handle).ok_or(full),
        }
    }

    /// Gives back an entry: into this thread's cache when that is free (or held for a pool
    /// that is gone), else to this thread's shard.
    #[inline]
    fn give(self: &Arc<Self>, handle: Handle) {
        let cached = THREAD_ENTRIES.try_with(|c| match &mut *c.borrow_mut() {
            Some(c) if c.len < CACHED && self.mine(c) => {
                c.entries[c.len] = handle.0;
                c.len += 1;
                true
            }
            _ => false,
        });
        if cached != Ok(true) {
            self.give_uncached(handle);
        }
    }

    /// [`FreeEntries::give`] when this thread's cache is full or another pool's.
    #[inline(never)]
    fn give_uncached(self: &Arc<Self>, handle: Handle) {
        let cached = THREAD_ENTRIES.try_with(|c| {
            let mut c = c.borrow_mut();
            match &mut *c {
                Some(c) if self.mine(c) => false,
                Some(other) if other.len > 0 && other.owner.strong_count() > 0 => false,
                slot => {
                    // Dropping what was there gives nothing back (it holds no entry, or its pool
                    // is gone).
                    let mut entries = [0; CACHED];
                    entries[0] = handle.0;
                    *slot = Some(Cached { owner: Arc::downgrade(self), entries, len: 1 });
                    true
                }
            }
        });
        if cached != Ok(true) {
            self.push(handle.0);
        }
    }

    fn push(&self, entry: u64) {
        relock(&self.shards[shard()].0).push(entry);
    }
}

/// One reference to one object of a shared pool.
pub(crate) struct SharedBuffer {
    pool: Arc<Lease>,
    obj: Object,
    /// The ledger entry of this buffer: `CREATING` while `writer`, then a read reference (after a
    /// get, or the creator's after its seal).
    entry: Handle,
    /// Created by this buffer and not sealed yet.
    writer: bool,
    /// The key's [`Store::hash`] while `writer` (for the seal, or the abort), else 0.
    hash: u64,
}

/// The path of pool `name` in `dir`.
pub(crate) fn pool_path(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    PoolName::parse(name.as_bytes())?.path(dir)
}

/// Removes pool `name`'s file. Processes attached keep their mappings; the name is free at once.
pub fn unlink(name: &str, dir: Option<&Path>) -> Result<()> {
    let path = pool_path(name, dir)?;
    crate::shm::file::unlink(&path)
}

/// The names of the pool files in `dir` (`/dev/shm` by default), sorted.
pub fn list(dir: Option<&Path>) -> Result<Vec<String>> {
    let dir = dir.unwrap_or(Path::new(DEFAULT_DIR));
    let entries = std::fs::read_dir(dir).map_err(|e| Error::system(format!("list {}", dir.display()), e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(PREFIX)).map(str::to_owned))
        .filter(|n| PoolName::parse(n.as_bytes()).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// What opening makes: a new pool, an attach, or an inspector (no slot, no RDMA).
pub(crate) enum Opening {
    Create { size: u64, max_objects: u64, evict_lru: bool },
    Attach,
    Inspect,
}

impl SharedInner {
    /// Creates (`Opening::Create`) or attaches pool `name`.
    pub(crate) fn open(name: &str, how: Opening, opts: &SharedOptions) -> Result<SharedPool> {
        let started = Instant::now();
        let fork_generation = crate::region::fork_generation()?;
        let path = pool_path(name, opts.dir.as_deref())?;
        let sharing = if opts.group { Sharing::Group } else { Sharing::Owner };
        let inspect = matches!(how, Opening::Inspect);
        let pf = match how {
            Opening::Create { size, max_objects, evict_lru } => {
                let cfg = Config::new(size, max_objects, evict_lru, header::fresh_generation())?;
                // In a hugetlbfs directory the file is made of huge pages: the data area starts
                // on one and the file's length is a multiple of one, as hugetlbfs requires.
                let page = match &opts.dir {
                    Some(dir) => crate::region::hugetlbfs_page_size(dir).unwrap_or(4096) as u64,
                    None => 4096,
                };
                let layout = Layout::plan(cfg.metadata()?, cfg.capacity, page, header::fresh_generation())?;
                let ranges = Store::creation_ranges(&layout, &cfg);
                let make = || {
                    PoolFile::create(&path, &layout, sharing, Reserve::Ranges(&ranges), |file, layout| {
                        let store = Store::new(file, layout, cfg, None)?;
                        // SAFETY: `create` runs this before publishing the file, which nobody uses
                        // yet.
                        unsafe { store.init() }
                    })
                };
                match make() {
                    // A file its creator died making (never published) is not a pool: it goes,
                    // under its creation lock, and the name is taken again.
                    Err(Error::System { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists
                            && PoolFile::remove_if_abandoned(&path, sharing).unwrap_or(false) =>
                    {
                        make()?
                    }
                    made => made?,
                }
            }
            Opening::Attach | Opening::Inspect => PoolFile::attach(&path, sharing)?,
        };
        let file = Box::new(pf);
        // SAFETY: `file` is boxed, so the mapping and the `File` keep their addresses when the box
        // moves into the struct below, where it is the last field: every view made here drops
        // before it. Nothing hands these `'static` borrows out of `SharedInner` except tied to
        // a borrow of it or an `Arc` of it.
        let (area, fd): (Area<'static>, &'static File) =
            unsafe { (std::mem::transmute::<Area<'_>, Area<'static>>(file.area()), &*(file.file() as *const File)) };
        let layout = *file.layout();
        let cfg = Store::read_config(&area, &layout)?;
        let store = Store::new(&area, &layout, cfg, Some(fd))?;
        let data = layout.area(&area, AreaKind::Data)?.sub(0, cfg.capacity, "data area")?;
        let slots = Box::new(Slots::new(&area, &layout, fd)?);
        // SAFETY: as above: the box keeps `Slots` at one address and drops after the slot guard.
        let slots_ref: &'static Slots<'static> = unsafe { &*(&*slots as *const Slots<'static>) };
        let base = area.ptr_at(0, 0)?;
        // Not inherited by fork children, like an unnamed pool (RDMA needs it, and a child must
        // attach on its own: it has no slot).
        // SAFETY: the range is this process's mapping of the file, alive while `file` lives.
        unsafe { libc::madvise(base.cast(), area.len(), libc::MADV_DONTFORK) };
        let data_base = data.ptr_at(0, cfg.capacity)?;
        let page = layout.data_align as usize;
        if opts.prefault && !inspect {
            for page in (0..cfg.capacity as usize).step_by(page) {
                // SAFETY: inside the data area of the mapping; reading maps the file's page.
                unsafe { data_base.add(page).read_volatile() };
            }
        }
        if opts.lock_memory && !inspect {
            // SAFETY: the range is the mapped data area.
            if unsafe { libc::mlock(data_base.cast(), cfg.capacity as usize) } != 0 {
                return Err(Error::system(
                    format!("mlock of {} (RLIMIT_MEMLOCK or CAP_IPC_LOCK)", Bytes(cfg.capacity)),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        let (slot, ledger) = if inspect {
            (None, None)
        } else {
            let slot = slots_ref.claim()?;
            let ledger = store.ledger(slot.index())?;
            (Some(slot), Some(ledger))
        };
        let rdma_mode = if inspect { RdmaMode::Off } else { opts.rdma };
        let rdma =
            Registrations::open(data_base, cfg.capacity as usize, page, rdma_mode, opts.rdma_devices.as_deref())?;
        if rdma.count() > 0 && rdma.chunk_len() < cfg.capacity as usize {
            return Err(Error::Rdma(format!(
                "the devices register at most {} at once; a shared pool of {} needs one registration",
                Bytes(rdma.chunk_len() as u64),
                Bytes(cfg.capacity)
            )));
        }
        let inner = Arc::new(SharedInner {
            rdma,
            store,
            ledger,
            free_entries: FreeEntries::new(),
            victims: Mutex::new(Vec::new().into_iter()),
            slot,
            slots,
            closed: AtomicBool::new(false),
            data,
            fork_generation,
            pid: std::process::id(),
            name: name.to_owned(),
            path,
            open_time: Duration::ZERO,
            _file: file,
        });
        if !inspect {
            // Leftovers in this slot's ledger (none, unless its last owner leaked buffers and
            // exited) are undone before this process uses it, then dead processes are reclaimed.
            let g = inner.lock()?;
            let leftovers = match &inner.ledger {
                Some(ledger) => inner.undo_ledger(&g, ledger)? | (inner.store.flush_cache(&g, ledger.slot())? > 0),
                None => false,
            };
            if inner.reclaim_locked(&g)? == 0 && leftovers {
                inner.store.sweep(&g)?;
            }
        }
        let mut inner = inner;
        if let Some(me) = Arc::get_mut(&mut inner) {
            me.open_time = started.elapsed();
        }
        Ok(SharedHandle::new(inner))
    }

    #[inline]
    pub(crate) fn check_mapped(&self) -> Result<()> {
        if crate::region::fork_generation_now() == self.fork_generation {
            return Ok(());
        }
        Err(Error::ForkedChild { pid: self.pid })
    }

    #[inline]
    fn check_open(&self) -> Result<()> {
        self.check_mapped()?;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }
        Ok(())
    }

    #[inline]
    fn ledger(&self) -> Result<&Ledger<'static>> {
        self.ledger.as_ref().ok_or_else(|| Error::InvalidArgument("an inspector handle holds no objects".into()))
    }

    /// Takes the pool's mutex. When its last holder died holding it, the state behind it may be
    /// half-changed: everything derived is rebuilt from the records and the ledgers first, and
    /// the dead are reclaimed.
    fn lock(&self) -> Result<Locked<'static>> {
        let g = match self.store.mutex().lock()? {
            Acquired::Locked(mut g) => {
                self.store.repair_on_panic(&mut g);
                if !self.store.repair_pending(&g) {
                    return Ok(g);
                }
                g
            }
            // A process that dies during the rebuild leaves the mutex owner-dead again for the
            // next one; one whose rebuild fails leaves the repair pending: either way the next
            // holder rebuilds again, so marking the mutex consistent first loses nothing.
            Acquired::OwnerDied(repair) => {
                let mut g = repair.consistent()?;
                self.store.repair_on_panic(&mut g);
                self.store.begin_repair(&g);
                g
            }
        };
        drop(self.store.all_chains(&g)?);
        self.reclaim_locked(&g)?;
        Ok(g)
    }

    /// The lock of the chain of `hash`'s bucket, under the pool's mutex (see [`Store::chains`]):
    /// when taking it repaired what a dead holder left, the dead are reclaimed too, as after a
    /// repair behind the mutex.
    fn chains(&self, g: &Locked<'_>, hash: u64) -> Result<Chains<'static>> {
        let repairs = self.store.repairs();
        let c = self.store.chains(g, hash)?;
        if self.store.repairs() == repairs {
            return Ok(c);
        }
        drop(c);
        self.reclaim_locked(g)?;
        self.store.chains(g, hash)
    }

    /// Undoes what `ledger` records and empties it: aborts its creates and drops its references
    /// (the objects they leave unheld are the caller's to sweep). Answers whether it held any.
    fn undo_ledger(&self, g: &Locked<'_>, ledger: &Ledger<'_>) -> Result<bool> {
        let entries = ledger.entries()?;
        if entries.iter().any(|&(state, _)| state == ledger::CREATING) {
            let all = self.store.all_chains(g)?;
            for &(state, lid) in &entries {
                if state == ledger::CREATING {
                    self.store.abort(g, &all, lid as u32, (lid >> 32) as u32, None)?;
                }
            }
        }
        ledger.clear()?;
        Ok(!entries.is_empty())
    }

    /// Reclaims every dead process's slot, then frees the deleted objects nobody holds any more;
    /// answers how many slots.
    fn reclaim_locked(&self, g: &Locked<'_>) -> Result<u64> {
        let reclaimed = self.reclaim_slots(g)?;
        if reclaimed > 0 {
            self.store.sweep(g)?;
        }
        Ok(reclaimed)
    }

    fn reclaim_slots(&self, g: &Locked<'_>) -> Result<u64> {
        let mut reclaimed = 0;
        let mut repaired = false;
        for index in 0..self.slots.len() {
            if self.slot.as_ref().is_some_and(|s| s.index() == index) {
                continue;
            }
            if self.slots.slot(index)?.state() != LIVE {
                continue;
            }
            let Some(dead) = self.slots.take_if_dead(index)? else { continue };
            if !repaired {
                // A process may die holding a chain's lock, which only that lock's next taker
                // would notice: every lock is taken once, repairing what the dead left.
                drop(self.store.all_chains(g)?);
                repaired = true;
            }
            let ledger = self.store.ledger(index)?;
            self.undo_ledger(g, &ledger)?;
            self.store.flush_cache(g, index)?;
            self.store.note_reclaimed(g);
            dead.finish();
            reclaimed += 1;
        }
        Ok(reclaimed)
    }

    /// Reclaims the slots of processes that died attached; answers how many.
    pub(crate) fn reclaim(&self) -> Result<u64> {
        self.check_mapped()?;
        let g = self.lock()?;
        let reclaimed = self.reclaim_slots(&g)?;
        self.store.sweep(&g)?;
        Ok(reclaimed)
    }

    /// Verifies every invariant of the pool's shared state.
    pub(crate) fn check(&self) -> Result<()> {
        self.check_mapped()?;
        let g = self.lock()?;
        let all = self.store.all_chains(&g)?;
        self.slots.check()?;
        self.store.check(&g, &all)
    }

    /// The processes holding slots.
    pub(crate) fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.check_mapped()?;
        let mut found = Vec::new();
        for index in 0..self.slots.len() {
            let slot = self.slots.slot(index)?;
            if slot.state() != LIVE {
                continue;
            }
            let mine = self.slot.as_ref().is_some_and(|s| s.index() == index);
            // Probing takes the slot's lock for a moment when its owner is dead; dropping the
            // probe leaves the slot for a reclaim.
            let alive = mine || self.slots.take_if_dead(index)?.is_none();
            found.push(ProcessInfo { slot: index, pid: slot.pid(), alive });
        }
        Ok(found)
    }

    pub(crate) fn counts(&self) -> Result<Counts> {
        self.check_mapped()?;
        let g = self.lock()?;
        Ok(self.store.counts(&g))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The page size the data area is laid out for: 4 KiB, or the huge page of a hugetlbfs file.
    pub(crate) fn page_size(&self) -> usize {
        self._file.layout().data_align as usize
    }

    pub(crate) fn open_time(&self) -> Duration {
        self.open_time
    }

    pub(crate) fn rdma(&self) -> &Registrations {
        &self.rdma
    }

    pub(crate) fn data_region(&self) -> (*mut u8, usize) {
        (self.data.ptr_at(0, 0).unwrap_or(std::ptr::null_mut()), self.data.len())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Refuses new work in this process, wakes its waiting gets and reclaims the dead. Objects
    /// stay in the pool; buffers this process holds stay valid until released. Idempotent.
    pub(crate) fn close(&self) {
        if self.check_mapped().is_err() || self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for word in self.store.seal_words() {
            word.fetch_add(1, Ordering::Release);
            let _ = lock::wake_all(word);
        }
        if let Some(ledger) = &self.ledger {
            if let Ok(g) = self.lock() {
                let _ = self.store.flush_cache(&g, ledger.slot());
                let _ = self.reclaim_locked(&g);
            }
        }
        self.rdma.close_caller_pds();
    }

    /// An empty entry of this process's ledger.
    #[inline]
    fn take_entry(&self, ledger: &Ledger<'_>) -> Result<Handle> {
        self.free_entries.take(&self.store, ledger)
    }

    /// Publishes a read reference on (`id`, `generation`) in an empty entry, answered: marks
    /// this slot among the record's holders first, so a deleter that sees the reference looks
    /// here.
    fn hold(&self, ledger: &Ledger<'_>, id: u32, generation: u32) -> Result<Handle> {
        let h = self.take_entry(ledger)?;
        let held = self.store.mark_holder(id, ledger.slot()).and_then(|()| ledger.hold(h, ledger_id(id, generation)));
        match held {
            Ok(()) => Ok(h),
            Err(e) => {
                self.free_entries.give(h);
                Err(e)
            }
        }
    }

    /// Withdraws the read reference in entry `h` on (`id`, `generation`) and gives the entry
    /// back; frees the object when it was deleted and this was its last reader.
    #[inline]
    fn withdraw(&self, ledger: &Ledger<'_>, h: Handle, id: u32, generation: u32) -> Result<()> {
        ledger.empty(h)?;
        self.free_entries.give(h);
        if self.store.still(id, generation, DELETED)? {
            self.free_withdrawn(id, generation)?;
        }
        Ok(())
    }

    /// The end of a [`SharedInner::withdraw`] from a deleted object: frees it if this was its
    /// last reader.
    #[cold]
    #[inline(never)]
    fn free_withdrawn(&self, id: u32, generation: u32) -> Result<()> {
        let g = self.lock()?;
        self.store.free_if_unheld(&g, id, generation, None)?;
        Ok(())
    }

    pub(crate) fn delete(&self, key: &[u8]) -> Result<()> {
        self.check_open()?;
        check_key(key)?;
        // Hashed before the mutex is taken, so that it is held for less.
        let hash = self.store.hash(key);
        let cache = self.ledger.as_ref().map(Ledger::slot);
        // Under the lock of the key's chain alone when that is enough (see Store::delete_fast),
        // else under the pool's mutex as well.
        let deleted = match self.store.chains_fast(hash)? {
            Some(c) => self.store.delete_fast(&c, key, hash, cache)?,
            None => {
                let g = self.lock()?;
                let c = self.chains(&g, hash)?;
                self.store.delete(&g, &c, key, hash, cache)?
            }
        };
        let Deleted::Later(id, generation) = deleted else {
            return Ok(());
        };
        // Long ledgers are read without the mutex. A process killed here leaves the object
        // deleted and unheld, which the next reclaim frees (Store::sweep).
        if self.store.held(id, generation)? {
            return Ok(()); // its last reader frees it
        }
        let g = self.lock()?;
        self.store.free_deleted(&g, id, generation, cache)?;
        Ok(())
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        if self.check_open().is_err() || check_key(key).is_err() {
            return false;
        }
        if self.store.peek(key, self.store.hash(key)).is_some() {
            return true;
        }
        let hash = self.store.hash(key);
        let Ok(g) = self.lock() else { return false };
        match self.chains(&g, hash) {
            Ok(c) => self.store.contains_sealed(&c, key, hash).unwrap_or(false),
            Err(_) => false,
        }
    }
}

impl SharedBuffer {
    pub(crate) fn check_mapped(&self) -> Result<()> {
        self.pool.check_mapped()
    }

    /// The key, read where it lies in the pool (empty in a forked child, which has no mapping).
    pub(crate) fn key(&self) -> &[u8] {
        if self.check_mapped().is_err() {
            return b"";
        }
        self.pool.store.key_in_place(self.obj.id).unwrap_or(b"")
    }

    pub(crate) fn len(&self) -> usize {
        self.obj.size as usize
    }

    pub(crate) fn offset(&self) -> usize {
        self.obj.offset as usize
    }

    pub(crate) fn is_writer(&self) -> bool {
        self.writer
    }

    pub(crate) fn parts(&self) -> Option<&[(usize, usize)]> {
        self.obj.parts.as_deref()
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        // In bounds: the store checked offset + size against the data area when it copied the
        // object out.
        self.pool.data.ptr_at(self.obj.offset, self.obj.size).unwrap_or(std::ptr::null_mut())
    }

    pub(crate) fn rdma_desc(&self, index: u32) -> Result<RdmaDesc> {
        self.check_mapped()?;
        self.pool.rdma.desc(index, self.offset(), self.len())
    }

    /// Seals the object: the creator's reference becomes a read reference of this buffer.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.check_mapped()?;
        if !self.writer {
            return Err(Error::AlreadySealed(Key::new(self.key())));
        }
        let h = self.entry;
        let pool = &self.pool;
        let ledger = pool.ledger()?;
        let Some(word) = pool.store.seal(self.obj.id, self.obj.generation, self.hash)? else {
            // Only a reclaim that took this process for dead aborts its creates.
            return Err(Error::Internal(format!("the unsealed object {} was aborted", Key::new(self.key()))));
        };
        ledger.sealed(h)?;
        self.writer = false;
        if let Some(word) = word {
            lock::wake_all(word)?;
        }
        Ok(())
    }

    /// Releases this reference (aborting the object if it is the creator's, unsealed). Once:
    /// from `drop`.
    #[inline]
    fn release(&mut self) -> Result<()> {
        if self.writer {
            return self.abort();
        }
        let pool = &self.pool;
        pool.withdraw(pool.ledger()?, self.entry, self.obj.id, self.obj.generation)
    }

    /// [`SharedBuffer::release`] of an unsealed create: aborts the object.
    #[inline(never)]
    fn abort(&mut self) -> Result<()> {
        let pool = &self.pool;
        let ledger = pool.ledger()?;
        let h = self.entry;
        let g = pool.lock()?;
        let c = pool.chains(&g, self.hash)?;
        pool.store.abort(&g, &c, self.obj.id, self.obj.generation, Some(ledger.slot()))?;
        ledger.empty(h)?;
        drop(c);
        drop(g);
        pool.free_entries.give(h);
        Ok(())
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        // In a forked child the pool is the parent's: leave it be, and keep the child's copy of
        // its state from ever being dropped (that would unmap and unlock the parent's).
        if self.pool.check_mapped().is_err() {
            std::mem::forget(self.pool.clone());
            return;
        }
        // A failure here means the shared state is corrupt; `zcopy check` reports it, and there is
        // no caller to tell.
        let _ = self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, PoolOptions, Wait};
    use crate::shm::testutil::{child_role, park, say, ChildProcess};

    /// One create that must evict hundreds of objects, and a hundred creates that evict one
    /// each, scan the records a few times in all, and evict the least recently used objects
    /// nobody holds, in that order.
    #[test]
    fn creates_that_evict_many_objects_scan_the_records_a_few_times_and_evict_oldest_first() {
        let name = Name::new("evict-many");
        let opts =
            PoolOptions { size: 2 << 20, max_objects: 1024, evict_lru: true, name: Some(name.0.clone()), ..options() };
        let pool = Pool::open(&opts).unwrap();
        let key = |i: usize| format!("k{i:04}");
        for i in 0..512 {
            let mut w = pool.create(key(i).as_bytes(), 4096).unwrap();
            w.as_mut_slice().unwrap().fill(i as u8);
            w.seal().unwrap();
        }
        assert_eq!(pool.stats().used_bytes, 2 << 20, "the pool is full");
        let held: Vec<_> = (0..10).map(|i| pool.get(key(i).as_bytes(), Wait::Now).unwrap()).collect();
        let scans = || crate::shm::store::LRU_SCANS.with(|c| c.get());
        let before = scans();
        let mut big = pool.create(b"big", 1 << 20).unwrap();
        big.seal().unwrap();
        let evicted = pool.stats().evictions as usize;
        assert!(evicted >= 256, "{evicted} evictions make room for 1 MiB");
        assert!(scans() - before <= 2, "{} scans for one create", scans() - before);
        // The oldest objects nobody holds went, in order; the held ones and the newer stayed.
        let gone: Vec<usize> = (0..512).filter(|&i| !pool.contains(key(i).as_bytes())).collect();
        assert_eq!(gone, (10..10 + evicted).collect::<Vec<_>>());
        for (i, h) in held.iter().enumerate() {
            assert!(h.as_slice().iter().all(|&b| b == i as u8));
        }
        drop(big);
        // One eviction per create, a hundred times: the candidates of one scan serve them all.
        let before = scans();
        let first_left = 10 + evicted;
        for i in 0..100 {
            let mut w = pool.create(format!("n{i:03}").as_bytes(), 4096).unwrap();
            w.as_mut_slice().unwrap().fill(0xEE);
            w.seal().unwrap();
        }
        assert!(scans() - before <= 2, "{} scans for 100 creates", scans() - before);
        let gone_now: Vec<usize> = (first_left..512).filter(|&i| !pool.contains(key(i).as_bytes())).collect();
        assert_eq!(gone_now, (first_left..first_left + 100).collect::<Vec<_>>(), "the 100 oldest left went, in order");
        assert!(pool.contains(b"big"));
        pool.check().unwrap();
        drop(held);
    }

    const CHILD_TEST: &str = "shared::tests::child_process_role";

    fn options() -> PoolOptions {
        PoolOptions { rdma: RdmaMode::Off, prefault: false, ..Default::default() }
    }

    /// A pool name unique to this process; its file is removed when the guard drops, even when
    /// the test fails.
    struct Name(String);

    impl Name {
        fn new(test: &str) -> Name {
            let name = format!("t{}-{test}", std::process::id());
            let _ = Pool::unlink(&name, None);
            Name(name)
        }
    }

    impl Drop for Name {
        fn drop(&mut self) {
            let _ = Pool::unlink(&self.0, None);
        }
    }

    /// The child: attaches the pool, holds a reference and an unsealed create, then takes the
    /// pool's mutex, scrambles everything derived (as a process killed half-way through a change
    /// would leave it) and waits to be killed holding the mutex.
    #[test]
    fn child_process_role() {
        if let Some(path) = child_role("die-releasing-the-last-reference") {
            // Holds the only reference on "gone", which the parent then deletes; withdraws the
            // reference but dies before freeing the object.
            let name = path.to_str().unwrap().to_owned();
            let pool = Pool::attach(&name, &options()).unwrap();
            let crate::pool::Backend::Shared(shared) = pool.share() else { panic!("not shared") };
            let held = shared.get(b"gone", Wait::Now).unwrap();
            say("holding");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            let ledger = shared.ledger().unwrap();
            let h = held.entry;
            assert!(shared.store.still(held.obj.id, held.obj.generation, DELETED).unwrap());
            ledger.empty(h).unwrap();
            say("withdrawn");
            std::mem::forget(held);
            park();
        }
        if let Some(path) = child_role("flush-and-reuse") {
            // On each line: reads the stats (which give back every process's cached records),
            // then creates and seals a long key of 64 bytes, which takes the record freed last.
            let name = path.to_str().unwrap().to_owned();
            let pool = Pool::attach(&name, &options()).unwrap();
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).unwrap() > 0 {
                let _ = pool.stats();
                pool.create(format!("a-long-key-made-by-another-process-{}", line.trim()).as_bytes(), 64)
                    .unwrap()
                    .seal()
                    .unwrap();
                say("done");
                line.clear();
            }
            park();
        }
        if let Some(path) = child_role("die-holding-a-chain-lock") {
            // Keeps a freed record in its cache, then takes the lock of "sealed"'s chain alone (as
            // a create or delete without the pool's mutex does), half-changes what it guards and
            // waits to be killed holding it.
            let name = path.to_str().unwrap().to_owned();
            let pool = Pool::attach(&name, &options()).unwrap();
            pool.create(b"mine", 64).unwrap().seal().unwrap();
            pool.delete(b"mine").unwrap();
            let crate::pool::Backend::Shared(shared) = pool.share() else { panic!("not shared") };
            let c = shared.store.chains_fast(shared.store.hash(b"sealed")).unwrap().expect("no repair pending");
            shared.store.scramble_chain(&c, b"sealed", shared.ledger().unwrap().slot()).unwrap();
            say("locked");
            let _keep = (pool, c);
            park();
        }
        let Some(path) = child_role("die-holding-the-lock") else { return };
        let name = path.to_str().unwrap().to_owned();
        let pool = Pool::attach(&name, &options()).unwrap();
        let held = pool.get(b"sealed", Wait::Now).unwrap();
        let half = pool.create(b"half", 100).unwrap();
        let crate::pool::Backend::Shared(shared) = pool.share() else { panic!("not shared") };
        let Acquired::Locked(g) = shared.store.mutex().lock().unwrap() else { panic!("owner died") };
        shared.store.scramble_derived(&g);
        say("locked");
        let _keep = (held, half, g);
        park();
    }

    #[test]
    fn a_pool_file_laid_out_with_one_index_bucket_per_object_attaches_and_works() {
        // Pools are made with two buckets per object now; a file made with one (the earlier
        // layout, which the configuration records) is used as it is.
        let guard = Name::new("onebucket");
        let path = pool_path(&guard.0, None).unwrap();
        let mut cfg = Config::new(1 << 20, 1000, false, header::fresh_generation()).unwrap();
        assert_eq!(cfg.buckets, 2048, "two buckets or more per object");
        cfg.buckets = 1024;
        let layout = Layout::plan(cfg.metadata().unwrap(), cfg.capacity, 4096, header::fresh_generation()).unwrap();
        let ranges = Store::creation_ranges(&layout, &cfg);
        let made = PoolFile::create(&path, &layout, Sharing::Owner, Reserve::Ranges(&ranges), |file, layout| {
            let store = Store::new(file, layout, cfg, None)?;
            // SAFETY: `create` runs this before publishing the file, which nobody uses yet.
            unsafe { store.init() }
        })
        .unwrap();
        drop(made);
        let pool = Pool::attach(&guard.0, &options()).unwrap();
        let crate::pool::Backend::Shared(shared) = pool.share() else { panic!("not shared") };
        assert_eq!(shared.store.cfg.buckets, 1024);
        for i in 0..1000u32 {
            pool.put(format!("key-{i}").as_bytes(), &i.to_ne_bytes()).unwrap();
        }
        for i in (0..1000u32).rev() {
            assert_eq!(pool.get(format!("key-{i}").as_bytes(), Wait::Now).unwrap().as_slice(), i.to_ne_bytes());
        }
        pool.check().unwrap();
        for i in 0..1000u32 {
            pool.delete(format!("key-{i}").as_bytes()).unwrap();
        }
        assert_eq!(pool.stats().key_count, 0);
        pool.check().unwrap();
    }

    #[test]
    fn a_deleted_object_whose_last_reader_died_before_freeing_it_is_freed_by_the_reclaim() {
        let guard = Name::new("halfrelease");
        let name = guard.0.clone();
        let pool = Pool::open(&PoolOptions { size: 1 << 20, name: Some(name.clone()), ..options() }).unwrap();
        pool.put(b"gone", &[5; 300]).unwrap();
        pool.put(b"kept", &[6; 300]).unwrap();
        let mut child =
            ChildProcess::spawn_with_stdin(CHILD_TEST, "die-releasing-the-last-reference", std::path::Path::new(&name));
        child.expect("holding");
        pool.delete(b"gone").unwrap();
        let s = pool.stats();
        assert_eq!((s.object_count, s.key_count, s.used_bytes), (2, 1, 640), "the child still reads it");
        child.send("go");
        child.expect("withdrawn");
        // Deleted and held by nobody, not freed yet: a state the invariants allow.
        pool.check().unwrap();
        child.kill();
        assert_eq!(pool.reclaim().unwrap(), 1);
        assert_eq!(pool.get(b"kept", Wait::Now).unwrap().as_slice(), &[6; 300][..]);
        let s = pool.stats();
        assert_eq!((s.lock_repairs, s.processes_reclaimed), (0, 1));
        assert_eq!((s.object_count, s.key_count, s.used_bytes), (1, 1, 320));
        pool.check().unwrap();
    }

    #[test]
    fn an_allocator_area_overwritten_with_garbage_is_rebuilt_from_the_records_after_the_call_it_breaks() {
        use std::os::unix::fs::FileExt;
        let guard = Name::new("badalloc");
        let name = guard.0.clone();
        let pool = Pool::open(&PoolOptions { size: 1 << 20, name: Some(name.clone()), ..options() }).unwrap();
        for i in 0..20u8 {
            pool.put(&[b'k', i], &[i; 3000]).unwrap();
        }
        for i in (0..20u8).step_by(3) {
            pool.delete(&[b'k', i]).unwrap();
        }
        let before = pool.stats();
        // Every byte of the allocator's state (area 5 of the header's table) set to 0xff: its
        // node ids point far past its nodes.
        let file = std::fs::OpenOptions::new().read(true).write(true).open(pool.path().unwrap()).unwrap();
        let mut span = [0u8; 16];
        file.read_exact_at(&mut span, 64 + 16 * AreaKind::Alloc as u64).unwrap();
        let (at, len) =
            (u64::from_ne_bytes(span[..8].try_into().unwrap()), u64::from_ne_bytes(span[8..].try_into().unwrap()));
        file.write_all_at(&vec![0xff; len as usize], at).unwrap();
        // The call that meets the garbage fails (an error, or a panic the C API turns into
        // ZC_ERR_INTERNAL), with the repair left pending rather than the change half-made.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.create(b"new", 5000).map(drop)));
        std::panic::set_hook(hook);
        assert!(!matches!(first, Ok(Ok(()))), "a create over a garbage allocator succeeded");
        // The next call rebuilds the allocator from the records: every value is intact, new ones
        // fit where the deleted ones were, and every invariant holds.
        for i in (0..20u8).filter(|i| i % 3 != 0) {
            assert_eq!(pool.get(&[b'k', i], Wait::Now).unwrap().as_slice(), &[i; 3000][..]);
        }
        for i in 0..7u8 {
            pool.put(&[b'n', i], &[i; 3000]).unwrap();
        }
        pool.check().unwrap();
        let s = pool.stats();
        assert_eq!((s.object_count, s.key_count), (before.object_count + 7, before.key_count + 7));
    }

    #[test]
    fn a_create_whose_allocator_answers_a_block_past_the_data_area_fails_and_stores_nothing() {
        use std::os::unix::fs::FileExt;
        let guard = Name::new("blockpast");
        let pool = Pool::open(&PoolOptions { size: 1 << 20, name: Some(guard.0.clone()), ..options() }).unwrap();
        let crate::pool::Backend::Shared(shared) = pool.share() else { panic!("not shared") };
        // The one free block of a fresh pool (node 0) moved past the end of the data area: the
        // allocator answers a block no record may name.
        let file = std::fs::OpenOptions::new().read(true).write(true).open(pool.path().unwrap()).unwrap();
        let units = (shared.store.cfg.capacity / 64) as u32;
        file.write_all_at(&units.to_ne_bytes(), shared.store.data_nodes_at()).unwrap();
        let e = pool.create(b"new", 4096).map(drop).unwrap_err();
        assert!(e.to_string().contains("outside the data area"), "{e}");
        assert!(matches!(pool.get(b"new", Wait::Now), Err(Error::NotFound(_))));
        let s = pool.stats();
        assert_eq!((s.object_count, s.key_count, s.used_bytes), (0, 0, 0));
    }

    #[test]
    fn a_repair_that_fails_is_retried_by_the_next_locker_until_it_succeeds() {
        use std::os::unix::fs::FileExt;
        let guard = Name::new("retry");
        let name = guard.0.clone();
        let pool = Pool::open(&PoolOptions { size: 1 << 20, name: Some(name.clone()), ..options() }).unwrap();
        pool.put(b"sealed", &[3; 100]).unwrap();
        let mut child = ChildProcess::spawn(CHILD_TEST, "die-holding-the-lock", std::path::Path::new(&name));
        child.expect("locked");
        child.kill();
        // The dead child's ledger (slot 1) gets an entry in no known state: the rebuild refuses it.
        let file = std::fs::OpenOptions::new().read(true).write(true).open(pool.path().unwrap()).unwrap();
        let mut span = [0u8; 16];
        file.read_exact_at(&mut span, 64 + 16).unwrap();
        let (at, len) =
            (u64::from_ne_bytes(span[..8].try_into().unwrap()), u64::from_ne_bytes(span[8..].try_into().unwrap()));
        let entry0 = at + len / crate::shm::store::DEFAULT_SLOTS + 64;
        let mut state = [0u8; 4];
        file.read_exact_at(&mut state, entry0).unwrap();
        file.write_all_at(&77u32.to_ne_bytes(), entry0).unwrap();
        // The first locker finds the holder dead and fails to rebuild; the repair stays pending,
        // so even a get (which takes no lock otherwise) goes to the mutex and retries it.
        let e = pool.create(b"new", 1).unwrap_err();
        assert!(e.to_string().contains("state 0x0000004d"), "{e}");
        for _ in 0..2 {
            let e = pool.get(b"sealed", Wait::Now).unwrap_err();
            assert!(e.to_string().contains("state 0x0000004d"), "{e}");
        }
        file.write_all_at(&state, entry0).unwrap();
        assert_eq!(pool.get(b"sealed", Wait::Now).unwrap().as_slice(), &[3; 100][..]);
        let s = pool.stats();
        assert_eq!((s.lock_repairs, s.processes_reclaimed, s.object_count, s.key_count), (1, 1, 1, 1));
        pool.check().unwrap();
    }

    /// Starts child role `role` on pool `name`, kills it once it says it holds a lock, and gets
    /// "sealed" (1000 bytes of 232): the get finds the state repaired and the dead reclaimed, and
    /// the counts as they were.
    fn kill_then_read_sealed(pool: &Pool, name: &str, role: &str) -> crate::pool::Buffer {
        let before = pool.stats();
        let mut child = ChildProcess::spawn(CHILD_TEST, role, std::path::Path::new(name));
        child.expect("locked");
        child.kill();
        let got = pool.get(b"sealed", Wait::Now).unwrap();
        assert_eq!(got.as_slice(), &[1000u16 as u8; 1000][..]);
        let after = pool.stats();
        assert_eq!((after.lock_repairs, after.processes_reclaimed), (1, 1));
        assert_eq!(
            (after.object_count, after.key_count, after.used_bytes),
            (before.object_count, before.key_count, before.used_bytes)
        );
        got
    }

    #[test]
    fn a_process_killed_holding_the_lock_mid_change_is_repaired_from_the_records_by_the_next_locker() {
        let guard = Name::new("lockdeath");
        let name = guard.0.clone();
        let opts = PoolOptions { size: 1 << 20, name: Some(name.clone()), ..options() };
        let pool = Pool::open(&opts).unwrap();
        for (key, len) in [(&b"sealed"[..], 1000), (b"other", 64), (b"empty", 0)] {
            let mut b = pool.create(key, len).unwrap();
            b.as_mut_slice().unwrap().fill(len as u8);
            b.seal().unwrap();
        }
        let mine = pool.get(b"other", Wait::Now).unwrap();
        // The next call finds the mutex abandoned: it rebuilds, then reclaims the dead holder.
        let got = kill_then_read_sealed(&pool, &name, "die-holding-the-lock");
        pool.check().unwrap();
        pool.create(b"half", 10).unwrap().seal().unwrap();
        drop((got, mine));
        for key in [&b"sealed"[..], b"other", b"empty", b"half"] {
            pool.delete(key).unwrap();
        }
        let empty = pool.stats();
        assert_eq!((empty.object_count, empty.key_count, empty.used_bytes), (0, 0, 0));
        assert_eq!(empty.largest_free_block, empty.capacity_bytes, "every block merged back");
        pool.check().unwrap();
    }

    #[test]
    fn a_process_killed_holding_a_chain_lock_mid_change_is_repaired_by_the_next_taker_of_that_lock() {
        let guard = Name::new("chaindeath");
        let name = guard.0.clone();
        let opts = PoolOptions { size: 1 << 20, name: Some(name.clone()), ..options() };
        let pool = Pool::open(&opts).unwrap();
        for (key, len) in [(&b"sealed"[..], 1000), (b"other", 64)] {
            let mut b = pool.create(key, len).unwrap();
            b.as_mut_slice().unwrap().fill(len as u8);
            b.seal().unwrap();
        }
        // "sealed" is missing from its chain: the lock-free get misses it, the locked get takes
        // the chain's lock, finds its holder dead and rebuilds the index from the records.
        let got = kill_then_read_sealed(&pool, &name, "die-holding-a-chain-lock");
        pool.check().unwrap();
        drop(got);
        for key in [&b"sealed"[..], b"other"] {
            pool.delete(key).unwrap();
        }
        let empty = pool.stats();
        assert_eq!((empty.object_count, empty.key_count, empty.used_bytes), (0, 0, 0));
        assert_eq!(
            empty.largest_free_block, empty.capacity_bytes,
            "the record the dead took, and its block, came back"
        );
        pool.check().unwrap();
    }

    #[test]
    fn a_chain_lock_left_by_a_dead_process_is_repaired_by_a_reclaim_though_nobody_takes_it() {
        let guard = Name::new("chainreclaim");
        let name = guard.0.clone();
        let opts = PoolOptions { size: 1 << 20, name: Some(name.clone()), ..options() };
        let pool = Pool::open(&opts).unwrap();
        let mut b = pool.create(b"sealed", 100).unwrap();
        b.as_mut_slice().unwrap().fill(7);
        b.seal().unwrap();
        drop(b);
        let mut child = ChildProcess::spawn(CHILD_TEST, "die-holding-a-chain-lock", std::path::Path::new(&name));
        child.expect("locked");
        child.kill();
        assert_eq!(pool.reclaim().unwrap(), 1);
        let s = pool.stats();
        assert_eq!((s.lock_repairs, s.object_count, s.key_count), (1, 1, 1));
        assert_eq!(s.used_bytes + s.largest_free_block, s.capacity_bytes, "nothing leaked");
        assert!(pool.contains(b"sealed"));
        pool.check().unwrap();
    }

    #[test]
    fn a_cached_record_another_process_takes_back_and_reuses_mid_create_is_passed_over_not_called_corrupt() {
        let guard = Name::new("cachereuse");
        let name = guard.0.clone();
        let pool = Pool::open(&PoolOptions { size: 1 << 20, name: Some(name.clone()), ..options() }).unwrap();
        let mut other = ChildProcess::spawn_with_stdin(CHILD_TEST, "flush-and-reuse", std::path::Path::new(&name));
        // This process keeps the record of "k" (64 bytes) in its cache once "k" is deleted.
        pool.create(b"k", 64).unwrap().seal().unwrap();
        pool.delete(b"k").unwrap();
        // The other process gives the record back and reuses it between this create's read of
        // its cache entry and its swap of it.
        let hook: crate::shm::store::CacheHook = Box::new(move |_, _| {
            other.send("1");
            other.expect("done");
        });
        crate::shm::store::BEFORE_UNCACHE.with(|h| h.set(Some(hook)));
        let mut b = pool.create(b"k", 64).expect("the create goes on under the pool's mutex");
        assert!(crate::shm::store::BEFORE_UNCACHE.with(|h| h.take()).is_none(), "the hook ran");
        b.as_mut_slice().unwrap().fill(9);
        b.seal().unwrap();
        let s = pool.stats();
        assert_eq!((s.object_count, s.key_count), (2, 2));
        pool.check().unwrap();
        assert_eq!(pool.get(b"k", Wait::Now).unwrap().as_slice(), &[9; 64][..]);
    }
}
