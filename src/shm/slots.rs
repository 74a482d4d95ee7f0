//! Process slots: a fixed table in shared memory, one slot per attached process, and liveness
//! through open-file-description locks the kernel drops when their holder dies.
//!
//! Slot `i` is owned by whoever holds the write lock (`fcntl(F_OFD_SETLK)`) on its first byte in
//! the pool file. A process takes a free slot at attach ([`Slots::claim`]) and holds its lock
//! until it closes the pool or dies; the kernel releases the lock either way. A slot that says
//! [`LIVE`] but whose lock a survivor can take therefore belongs to a dead process, and the
//! survivor holding that lock is the only one that may clean up after it
//! ([`Slots::take_if_dead`]); if the cleaner dies too, the slot stays `LIVE` and unlocked, and the
//! next survivor starts the cleanup again (so cleanup must be idempotent).
//!
//! Writes: a slot's fields are written only by the holder of its byte lock: the owner when it
//! claims and releases it, a cleaner when it frees a dead owner's slot. `state` is written last,
//! with a release store, so a slot is `LIVE` only once its `pid` and `incarnation` are written.
//! Anyone may read any slot at any time (diagnostics, [`Slots::check`]). The exception is the
//! slot's record cache, part of the pool's shared state (see `Store::flush_cache`).
//!
//! OFD locks belong to an open file description, not to a process: two descriptions of the pool
//! file conflict even inside one process, which lets tests play several processes with threads;
//! a `fork` child would share its parent's description, and with it the parent's slots until both
//! were gone, but the library's fork handler points the child's copy at `/dev/null`
//! ([`crate::region::not_in_children`]), so a parent's death is seen while its children live.
//! Locks taken through one description do not exclude each other, so this process keeps its own
//! record of the slots it holds through that description (`held`): use one [`Slots`] per open
//! pool file.

use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::shm::header::{AreaKind, Layout};
use crate::shm::offset::{Area, Shared};

/// Nobody owns the slot and nothing needs cleaning up.
pub(crate) const FREE: u32 = 0;
/// A process claimed the slot; it is alive while the slot's lock is held.
pub(crate) const LIVE: u32 = 1;
/// The most slots a pool may have.
pub(crate) const MAX_SLOTS: u64 = 1 << 16;
/// Records a slot's cache keeps (the rest of the slot's cache line).
pub(crate) const SLOT_CACHE: usize = 8;

/// One process's slot.
#[repr(C, align(64))]
pub(crate) struct Slot {
    /// [`FREE`] or [`LIVE`].
    state: AtomicU32,
    /// The owner's process id (the latest owner's, once free again).
    pid: AtomicU32,
    /// Bumped at every claim, so that (slot, incarnation) names one process's tenure; never 0
    /// while `LIVE`.
    incarnation: AtomicU64,
    /// Zero.
    reserved: [AtomicU64; 2],
    /// Records this process freed with their blocks of object memory kept, for its next
    /// creates (id + 1 each, 0 for none): filled and taken from by the owner's threads one at a
    /// time, under a lock of the pool (its mutex, or a chain's); emptied, with atomic swaps,
    /// under the pool's mutex by any process. Empty while `FREE`.
    cache: [AtomicU32; SLOT_CACHE],
}

const _: () = {
    assert!(size_of::<Slot>() == 64);
    assert!(offset_of!(Slot, state) == 0);
    assert!(offset_of!(Slot, pid) == 4);
    assert!(offset_of!(Slot, incarnation) == 8);
    assert!(offset_of!(Slot, reserved) == 16);
    assert!(offset_of!(Slot, cache) == 32);
};

// SAFETY: `#[repr(C)]`, atomics only (and padding), valid for every bit pattern.
unsafe impl Shared for Slot {}

impl Slot {
    pub(crate) fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Relaxed)
    }

    /// The slot's record cache.
    pub(crate) fn cache(&self) -> &[AtomicU32; SLOT_CACHE] {
        &self.cache
    }

    /// The invariants of slot number `index` (named in the error).
    pub(crate) fn check(&self, index: usize) -> Result<()> {
        let corrupt =
            |why: String| Err(Error::Internal(format!("shared pool metadata is corrupt: slot {index}: {why}")));
        match self.state() {
            FREE => Ok(()),
            LIVE if self.incarnation() != 0 => Ok(()),
            LIVE => corrupt("live with incarnation 0".into()),
            other => corrupt(format!("state 0x{other:08x}")),
        }
    }
}

/// The slot table of one open pool file.
pub(crate) struct Slots<'a> {
    table: &'a [Slot],
    file: &'a File,
    /// Offset of the table in the file (see [`Slots::lock_byte`]).
    first_byte: u64,
    /// The slots this process holds the lock of, through `file`.
    held: Box<[AtomicBool]>,
}

impl<'a> Slots<'a> {
    /// The slot table of a mapped, validated pool file; `file` is the open file it was mapped from.
    pub(crate) fn new(pool: &Area<'a>, layout: &Layout, file: &'a File) -> Result<Slots<'a>> {
        let span = layout.span(AreaKind::Slots);
        let size = size_of::<Slot>() as u64;
        let count = span.len / size;
        if span.len % size != 0 || count > MAX_SLOTS {
            return Err(Error::InvalidArgument(format!(
                "not a usable zcopy pool file: a slots area of {} bytes is not 1 to {MAX_SLOTS} slots",
                span.len
            )));
        }
        let table = pool.slice::<Slot>(span.offset, count)?;
        let held = (0..count).map(|_| AtomicBool::new(false)).collect();
        Ok(Slots { table, file, first_byte: span.offset, held })
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Slot `index`, checked.
    pub(crate) fn slot(&self, index: usize) -> Result<&'a Slot> {
        self.table.get(index).ok_or_else(|| {
            Error::Internal(format!("shared pool metadata is corrupt: slot {index} of {}", self.table.len()))
        })
    }

    /// Takes the first free slot: locks its byte, then writes pid, a new incarnation and `LIVE`.
    /// Slots a dead process left `LIVE` are not taken before [`Slots::take_if_dead`] frees them.
    pub(crate) fn claim(&self) -> Result<SlotGuard<'_>> {
        for index in 0..self.table.len() {
            if !self.acquire(index)? {
                continue;
            }
            let slot = &self.table[index];
            if slot.state() != FREE {
                self.release(index);
                continue;
            }
            slot.pid.store(std::process::id(), Ordering::Relaxed);
            let mut incarnation = slot.incarnation.load(Ordering::Relaxed).wrapping_add(1);
            if incarnation == 0 {
                incarnation = 1;
            }
            slot.incarnation.store(incarnation, Ordering::Relaxed);
            slot.state.store(LIVE, Ordering::Release);
            return Ok(SlotGuard { slots: self, index, incarnation });
        }
        Err(Error::system(
            format!(
                "attach: all {} process slots are taken (by live processes, or dead ones not cleaned up yet)",
                self.table.len()
            ),
            io::Error::from_raw_os_error(libc::EUSERS),
        ))
    }

    /// The liveness probe: when slot `index` says `LIVE` but its lock can be taken, its owner is
    /// dead, and the returned [`DeadSlot`] makes this caller its only cleaner. `None` when the
    /// owner is alive, the slot is free, or another survivor is cleaning it up right now.
    pub(crate) fn take_if_dead(&self, index: usize) -> Result<Option<DeadSlot<'_>>> {
        let slot = self.slot(index)?;
        if !self.acquire(index)? {
            return Ok(None);
        }
        if slot.state() != LIVE {
            self.release(index);
            return Ok(None);
        }
        Ok(Some(DeadSlot { slots: self, index, pid: slot.pid(), incarnation: slot.incarnation() }))
    }

    /// Every slot's invariants.
    pub(crate) fn check(&self) -> Result<()> {
        self.table.iter().enumerate().try_for_each(|(index, slot)| slot.check(index))
    }

    /// Takes slot `index`'s lock, unless this process already holds it through this file.
    fn acquire(&self, index: usize) -> Result<bool> {
        if self.held[index].compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Ok(false);
        }
        let locked = ofd_lock(self.file, self.lock_byte(index), libc::F_WRLCK);
        if !matches!(locked, Ok(true)) {
            self.held[index].store(false, Ordering::Release);
        }
        locked.map_err(|e| Error::system(format!("fcntl(F_OFD_SETLK) on process slot {index}"), e))
    }

    fn release(&self, index: usize) {
        // Unlocking a byte this description holds cannot fail; were it to, closing the file drops it.
        let _ = ofd_lock(self.file, self.lock_byte(index), libc::F_UNLCK);
        self.held[index].store(false, Ordering::Release);
    }

    /// Slot `index`'s first byte in the file, which its lock covers.
    fn lock_byte(&self, index: usize) -> u64 {
        self.first_byte + (size_of::<Slot>() * index) as u64
    }
}

/// Takes (`F_WRLCK`) or drops (`F_UNLCK`) the lock on one byte without waiting; `Ok(false)` when
/// another open file description holds it. Also used on the pool file's creation byte
/// ([`crate::shm::pool_file`]), which is not a slot's.
pub(crate) fn ofd_lock(file: &File, byte: u64, kind: libc::c_int) -> io::Result<bool> {
    ofd_lock_cmd(file, byte, kind, libc::F_OFD_SETLK)
}

/// Takes the lock on one byte, waiting while another open file description holds it.
pub(crate) fn ofd_lock_wait(file: &File, byte: u64) -> io::Result<()> {
    loop {
        match ofd_lock_cmd(file, byte, libc::F_WRLCK, libc::F_OFD_SETLKW) {
            Ok(true) => return Ok(()),
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn ofd_lock_cmd(file: &File, byte: u64, kind: libc::c_int, cmd: libc::c_int) -> io::Result<bool> {
    // SAFETY: `flock` is plain integers; all zeros is a valid value (and `l_pid` must be 0).
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = kind as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request.l_start = byte as libc::off_t;
    request.l_len = 1;
    // SAFETY: F_OFD_SETLK and F_OFD_SETLKW read the `flock` passed by pointer, which lives across
    // the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &request) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// This process's slot. Dropping it frees the slot: the engine empties the slot's ledger first.
pub(crate) struct SlotGuard<'s> {
    slots: &'s Slots<'s>,
    index: usize,
    incarnation: u64,
}

impl std::fmt::Debug for SlotGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard").field("index", &self.index).field("incarnation", &self.incarnation).finish()
    }
}

impl SlotGuard<'_> {
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    #[cfg(test)]
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slots.table[self.index].state.store(FREE, Ordering::Release);
        self.slots.release(self.index);
    }
}

/// A dead process's slot, locked by this process, which alone may clean up after it. [`finish`]
/// frees the slot; dropping it unfinished leaves the slot `LIVE` for another survivor to retry.
///
/// [`finish`]: DeadSlot::finish
pub(crate) struct DeadSlot<'s> {
    slots: &'s Slots<'s>,
    index: usize,
    pid: u32,
    incarnation: u64,
}

impl std::fmt::Debug for DeadSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadSlot")
            .field("index", &self.index)
            .field("pid", &self.pid)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

#[cfg(test)]
impl DeadSlot<'_> {
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The dead owner's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The dead owner's incarnation of the slot.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }
}

impl DeadSlot<'_> {
    /// Marks the slot free, after its ledger was replayed and emptied.
    pub(crate) fn finish(self) {
        self.slots.table[self.index].state.store(FREE, Ordering::Release);
    }
}

impl Drop for DeadSlot<'_> {
    fn drop(&mut self) {
        self.slots.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::pool_file::PoolFile;
    use crate::shm::testutil::{
        attach, child_role, create_pool, fork_lock, park, say, ChildProcess, TempDir, TEST_SLOTS,
    };
    use std::sync::{Arc, Barrier};

    const CHILD_TEST: &str = "shm::slots::tests::child_process_role";

    /// The child's side of the tests below: attach the pool, claim a slot, say which, wait to die.
    #[test]
    fn child_process_role() {
        let Some(path) = child_role("claim-slot") else { return };
        let pool = attach(&path);
        let slots = slots_of(&pool);
        let guard = slots.claim().unwrap();
        say(&format!("CLAIMED {} {}", guard.index(), guard.incarnation()));
        park();
    }

    fn slots_of(pool: &PoolFile) -> Slots<'_> {
        Slots::new(&pool.area(), pool.layout(), pool.file()).unwrap()
    }

    #[test]
    fn claims_through_distinct_files_take_distinct_slots_until_none_is_left() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let pools: Vec<_> =
            std::iter::once(create_pool(&path)).chain((1..=TEST_SLOTS).map(|_| attach(&path))).collect();
        let tables: Vec<_> = pools.iter().map(slots_of).collect();
        assert_eq!(tables[0].len(), TEST_SLOTS as usize);
        let guards: Vec<_> = tables[..TEST_SLOTS as usize].iter().map(|s| s.claim().unwrap()).collect();
        let indices: Vec<_> = guards.iter().map(SlotGuard::index).collect();
        assert_eq!(indices, (0..TEST_SLOTS as usize).collect::<Vec<_>>());
        assert!(guards.iter().all(|g| g.incarnation() == 1));
        let e = tables[TEST_SLOTS as usize].claim().unwrap_err();
        assert!(e.to_string().contains("all 8 process slots are taken"), "{e}");
        for index in 0..TEST_SLOTS as usize {
            assert!(tables[TEST_SLOTS as usize].take_if_dead(index).unwrap().is_none(), "slot {index} is alive");
            assert_eq!(tables[0].slot(index).unwrap().pid(), std::process::id());
        }
        tables[0].check().unwrap();
        drop(guards);
        let again = tables[TEST_SLOTS as usize].claim().unwrap();
        assert_eq!((again.index(), again.incarnation()), (0, 2), "a released slot is free again, one incarnation on");
    }

    #[test]
    fn a_process_never_reaps_its_own_live_slot() {
        let dir = TempDir::new();
        let pool = create_pool(&dir.path("pool"));
        let slots = slots_of(&pool);
        let mine = slots.claim().unwrap();
        assert!(slots.take_if_dead(mine.index()).unwrap().is_none());
        assert_eq!(slots.slot(mine.index()).unwrap().state(), LIVE);
        let other = attach(&dir.path("pool"));
        assert!(slots_of(&other).take_if_dead(mine.index()).unwrap().is_none(), "still locked after the probe");
        assert!(slots.slot(99).is_err());
    }

    #[test]
    fn a_sigkilled_process_slot_is_seen_dead_reclaimed_once_and_then_reused() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let pool = create_pool(&path);
        let slots = slots_of(&pool);
        let mut child = ChildProcess::spawn(CHILD_TEST, "claim-slot", &path);
        let claimed = child.expect("CLAIMED");
        assert_eq!(claimed, "0 1");
        assert!(slots.take_if_dead(0).unwrap().is_none(), "the child is alive");
        assert_eq!(slots.slot(0).unwrap().pid(), child.pid());

        child.kill();
        assert_eq!(slots.slot(0).unwrap().state(), LIVE, "death leaves the slot's state alone");
        let survivor = attach(&path);
        let first_claim = slots_of(&survivor).claim().unwrap().index();
        assert_eq!(first_claim, 1, "a dead slot is not claimed before it is cleaned up");
        let dead = slots.take_if_dead(0).unwrap().expect("the killed child's slot is dead");
        assert_eq!((dead.index(), dead.pid(), dead.incarnation()), (0, child.pid(), 1));
        assert!(slots_of(&survivor).take_if_dead(0).unwrap().is_none(), "one cleaner at a time");
        dead.finish();
        assert_eq!(slots.slot(0).unwrap().state(), FREE);
        assert!(slots_of(&survivor).take_if_dead(0).unwrap().is_none(), "a cleaned slot is not dead");
        let reused = slots_of(&survivor).claim().map(|g| (g.index(), g.incarnation())).unwrap();
        assert_eq!(reused, (0, 2));
    }

    #[test]
    fn an_unfinished_cleanup_leaves_the_slot_dead_for_the_next_survivor() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let pool = create_pool(&path);
        let mut child = ChildProcess::spawn(CHILD_TEST, "claim-slot", &path);
        child.expect("CLAIMED");
        child.kill();
        let slots = slots_of(&pool);
        drop(slots.take_if_dead(0).unwrap().expect("dead"));
        let other = attach(&path);
        let again = slots_of(&other);
        let dead = again.take_if_dead(0).unwrap().expect("still dead, for another cleaner");
        dead.finish();
        again.check().unwrap();
    }

    /// A process that dies holding a slot, played by an open file description closed without
    /// releasing it: the kernel drops its lock exactly as at death.
    fn die_holding_a_slot(path: &std::path::Path) -> usize {
        let doomed = attach(path);
        let slots = slots_of(&doomed);
        let guard = slots.claim().unwrap();
        let index = guard.index();
        std::mem::forget(guard);
        index
    }

    #[test]
    fn racing_survivors_reclaim_a_dead_slot_exactly_once() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let _pool = create_pool(&path);
        const SURVIVORS: usize = 4;
        for round in 0..200 {
            // No child may be between fork and exec while the doomed file is closed, or its copy
            // of the descriptor would keep the slot locked (as another test may be starting one).
            let _no_fork = fork_lock();
            let index = die_holding_a_slot(&path);
            let barrier = Arc::new(Barrier::new(SURVIVORS));
            let reclaimed: usize = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..SURVIVORS)
                    .map(|_| {
                        let (barrier, path) = (barrier.clone(), &path);
                        scope.spawn(move || {
                            let survivor = attach(path);
                            let slots = slots_of(&survivor);
                            barrier.wait();
                            let won = match slots.take_if_dead(index).unwrap() {
                                Some(dead) => {
                                    dead.finish();
                                    1
                                }
                                None => 0,
                            };
                            won
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).sum()
            });
            assert_eq!(reclaimed, 1, "round {round}");
        }
    }

    #[test]
    fn check_reports_corrupt_slots() {
        let dir = TempDir::new();
        let pool = create_pool(&dir.path("pool"));
        let slots = slots_of(&pool);
        slots.check().unwrap();
        slots.table[3].state.store(7, Ordering::Relaxed);
        assert!(slots.check().unwrap_err().to_string().contains("slot 3"));
        slots.table[3].state.store(LIVE, Ordering::Relaxed);
        slots.table[3].incarnation.store(0, Ordering::Relaxed);
        assert!(slots.check().unwrap_err().to_string().contains("slot 3: live with incarnation 0"));
    }
}
