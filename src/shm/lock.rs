//! Locks that survive their owner, and waiting across processes.
//!
//! [`SharedMutex`] is a `pthread_mutex_t` made process-shared and robust: when a process dies
//! holding it, the next [`SharedMutex::lock`] answers [`Acquired::OwnerDied`]; the caller repairs
//! the state the mutex protects (from the records, which are the truth) and calls
//! [`Repair::consistent`]. A repair abandoned without `consistent()` leaves the mutex
//! unrecoverable for good, as POSIX specifies: every later `lock` is an error, because the state
//! behind it may be half-changed.
//!
//! [`wait`] and [`wake_all`] are a futex on a 32-bit word in shared memory, without
//! `FUTEX_PRIVATE_FLAG`, so a wake in one process reaches waiters in every process that maps the
//! word. Waiters check the word again after every wake, spurious or not.
//!
//! Writes: the creator initialises each mutex once ([`SharedMutex::init`]) before the pool is
//! published; after that only glibc and the kernel write its bytes, inside `lock`/`unlock`. While a
//! thread holds a robust mutex, glibc links it into that thread's robust list with pointers of the
//! holder's address space: the one place where shared memory holds pointers, used only by the
//! holder and by the kernel at the holder's death. Futex words are written by whoever the owning
//! structure says, with atomics.

use std::cell::UnsafeCell;
use std::io;
use std::marker::PhantomData;
use std::mem::{offset_of, size_of, MaybeUninit};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::shm::offset::Shared;

/// `trylock` attempts before a `lock` sleeps.
const SPINS: u32 = 200;

/// How long a `lock` waits before it answers an error. Sections under the lock take microseconds
/// (a rebuild of a million records, the longest, well under a second): a lock held this long
/// belongs to a stuck process or is a corrupt word naming no live holder, which would otherwise
/// leave every process that touches the pool (and `zcopy list`) waiting for ever.
pub(crate) const LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// One wait of [`SharedMutex::lock`] in the kernel, re-armed until [`LOCK_PATIENCE`] (so that a
/// jump of the wall clock, which `pthread_mutex_timedlock` measures against, cannot stretch it).
const LOCK_SLICE: Duration = Duration::from_millis(100);

/// `ready` of a mutex the creator initialised.
const MUTEX_READY: u32 = u32::from_le_bytes(*b"MTX1");

/// A robust, process-shared mutex in shared memory; one cache line.
#[repr(C, align(64))]
pub(crate) struct SharedMutex {
    /// [`MUTEX_READY`] once `init` is done.
    ready: AtomicU32,
    raw: UnsafeCell<libc::pthread_mutex_t>,
}

const _: () = {
    assert!(size_of::<libc::pthread_mutex_t>() <= 56);
    assert!(size_of::<SharedMutex>() == 64);
    assert!(offset_of!(SharedMutex, ready) == 0);
    assert!(offset_of!(SharedMutex, raw) == 8);
};

// SAFETY: the raw mutex is changed only by glibc's lock/unlock, which synchronise themselves.
unsafe impl Sync for SharedMutex {}
// SAFETY: `#[repr(C)]`, an atomic and a `pthread_mutex_t` (integers at the Rust level, so any
// bytes are a value), changed only atomically or inside glibc's mutex calls.
unsafe impl Shared for SharedMutex {}

impl std::fmt::Debug for SharedMutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMutex").field("at", &self.raw.get()).finish_non_exhaustive()
    }
}

fn check_rc(rc: libc::c_int, what: &str) -> Result<()> {
    match rc {
        0 => Ok(()),
        rc => Err(Error::system(what, io::Error::from_raw_os_error(rc))),
    }
}

impl SharedMutex {
    /// Makes the bytes a robust, process-shared, error-checking mutex, unlocked.
    ///
    /// # Safety
    /// Only the creator calls this, once, before the pool is published: no thread of any process
    /// uses the mutex yet.
    pub(crate) unsafe fn init(&self) -> Result<()> {
        let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is initialised by pthread_mutexattr_init before any other use, and
        // destroyed once below; `self.raw` is not in use per this function's contract.
        unsafe {
            check_rc(libc::pthread_mutexattr_init(attr.as_mut_ptr()), "pthread_mutexattr_init")?;
            let attr = attr.as_mut_ptr();
            let made = check_rc(libc::pthread_mutexattr_setpshared(attr, libc::PTHREAD_PROCESS_SHARED), "setpshared")
                .and_then(|()| {
                    check_rc(libc::pthread_mutexattr_setrobust(attr, libc::PTHREAD_MUTEX_ROBUST), "setrobust")
                })
                .and_then(|()| {
                    check_rc(libc::pthread_mutexattr_settype(attr, libc::PTHREAD_MUTEX_ERRORCHECK), "settype")
                })
                .and_then(|()| check_rc(libc::pthread_mutex_init(self.raw.get(), attr), "pthread_mutex_init"));
            libc::pthread_mutexattr_destroy(attr);
            made?;
        }
        self.ready.store(MUTEX_READY, Ordering::Release);
        Ok(())
    }

    /// The mutex's invariant: it was initialised.
    pub(crate) fn check(&self) -> Result<()> {
        match self.ready.load(Ordering::Acquire) {
            MUTEX_READY => Ok(()),
            other => Err(Error::Internal(format!(
                "shared pool metadata is corrupt: a mutex was never initialised (0x{other:08x})"
            ))),
        }
    }

    /// Waits for the mutex. [`Acquired::OwnerDied`] when its last holder died holding it.
    pub(crate) fn lock(&self) -> Result<Acquired<'_>> {
        self.check()?;
        // Sections under the lock last a few hundred nanoseconds: spinning on `trylock` for
        // about as long, before sleeping in the kernel, keeps two busy processes from turning
        // every handover into a pair of futex system calls.
        let mut rc = libc::EBUSY;
        for _ in 0..SPINS {
            // SAFETY: as below; trylock never blocks.
            rc = unsafe { libc::pthread_mutex_trylock(self.raw.get()) };
            if rc != libc::EBUSY {
                break;
            }
            std::hint::spin_loop();
        }
        if rc == libc::EBUSY {
            let deadline = Instant::now() + LOCK_PATIENCE;
            loop {
                let until = wall_clock_in(LOCK_SLICE);
                // SAFETY: the creator initialised the mutex (checked above) and the memory stays
                // mapped while `self` is borrowed; glibc touches only the mutex and this
                // thread's robust list; `until` is a valid timespec for the call.
                rc = unsafe { libc::pthread_mutex_timedlock(self.raw.get(), &until) };
                if rc != libc::ETIMEDOUT || Instant::now() >= deadline {
                    break;
                }
            }
            if rc == libc::ETIMEDOUT {
                return Err(Error::system(
                    format!(
                        "take a shared pool's lock: held for more than {} s (by thread id {} in its word); a \
                         process is stuck inside the pool, or the lock word is corrupt",
                        LOCK_PATIENCE.as_secs(),
                        self.owner_word() & 0x3fff_ffff
                    ),
                    io::Error::from_raw_os_error(libc::ETIMEDOUT),
                ));
            }
        }
        match rc {
            0 => Ok(Acquired::Locked(MutexGuard { mutex: self, on_panic: None, _thread_bound: PhantomData })),
            libc::EOWNERDEAD => Ok(Acquired::OwnerDied(Repair { mutex: self, _thread_bound: PhantomData })),
            libc::ENOTRECOVERABLE => Err(Error::Internal(
                "a process died holding a shared pool lock and the state behind it was not repaired".into(),
            )),
            libc::EDEADLK => Err(Error::Internal("this thread already holds the shared pool lock".into())),
            rc => Err(Error::system("pthread_mutex_lock on a shared pool lock", io::Error::from_raw_os_error(rc))),
        }
    }

    /// The lock word glibc keeps first in the mutex (the holder's thread id and flag bits), for
    /// a message.
    fn owner_word(&self) -> u32 {
        // SAFETY: the word is the first 4 bytes of the mapped, aligned mutex; it is read once,
        // racing glibc's atomic updates, which a volatile read of an aligned u32 tolerates.
        unsafe { std::ptr::read_volatile(self.raw.get().cast::<u32>()) }
    }

    fn unlock(&self) {
        // SAFETY: called only by the guard of the thread that holds the mutex. It cannot fail for
        // the holder; were the bytes corrupted, the next `lock` reports it, so nothing is lost by
        // not panicking in a destructor here.
        let _ = unsafe { libc::pthread_mutex_unlock(self.raw.get()) };
    }
}

/// The wall clock `after` from now, as `pthread_mutex_timedlock` takes its deadline.
fn wall_clock_in(after: Duration) -> libc::timespec {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid out-pointer; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let nanos = now.tv_nsec as u64 + after.subsec_nanos() as u64;
    libc::timespec {
        tv_sec: now.tv_sec + after.as_secs() as libc::time_t + (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    }
}

/// What [`SharedMutex::lock`] got.
#[derive(Debug)]
pub(crate) enum Acquired<'a> {
    Locked(MutexGuard<'a>),
    /// The previous holder died holding the mutex: repair, then [`Repair::consistent`].
    OwnerDied(Repair<'a>),
}

/// Holds the mutex; dropping it unlocks. Bound to the locking thread.
#[derive(Debug)]
pub(crate) struct MutexGuard<'a> {
    mutex: &'a SharedMutex,
    /// Set to 1 when a panic unwinds through the guard (see [`MutexGuard::flag_on_panic`]).
    on_panic: Option<&'a AtomicU64>,
    _thread_bound: PhantomData<*const ()>,
}

impl<'a> MutexGuard<'a> {
    /// Has a panic that unwinds through this guard store 1 in `flag` before it unlocks: the
    /// holder stopped somewhere inside a change, as a holder that died would, and the flag tells
    /// the next holder to repair the state.
    pub(crate) fn flag_on_panic(&mut self, flag: &'a AtomicU64) {
        self.on_panic = Some(flag);
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.on_panic {
            if std::thread::panicking() {
                flag.store(1, Ordering::Release);
            }
        }
        self.mutex.unlock();
    }
}

/// Holds a mutex whose previous holder died. Dropping it without [`Repair::consistent`] unlocks
/// it and leaves it unrecoverable.
#[derive(Debug)]
pub(crate) struct Repair<'a> {
    mutex: &'a SharedMutex,
    _thread_bound: PhantomData<*const ()>,
}

impl<'a> Repair<'a> {
    /// Declares the protected state repaired; the mutex works normally again.
    pub(crate) fn consistent(self) -> Result<MutexGuard<'a>> {
        // SAFETY: this thread holds the mutex in the owner-died state (that is what `Repair` is).
        let rc = unsafe { libc::pthread_mutex_consistent(self.mutex.raw.get()) };
        check_rc(rc, "pthread_mutex_consistent")?;
        let mutex = self.mutex;
        std::mem::forget(self);
        Ok(MutexGuard { mutex, on_panic: None, _thread_bound: PhantomData })
    }
}

impl Drop for Repair<'_> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

/// Sleeps while `word` holds `expected`, until another thread or process changes it and calls
/// [`wake_all`], or `timeout` passes (`None`: no limit). `Ok(true)` once the word differs,
/// `Ok(false)` on timeout. Wakes that leave the word unchanged put the caller back to sleep.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Result<bool> {
    let deadline = timeout.map(|t| Instant::now().checked_add(t));
    loop {
        if word.load(Ordering::Acquire) != expected {
            return Ok(true);
        }
        let remaining = match deadline {
            None | Some(None) => None,
            Some(Some(deadline)) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(false),
            },
        };
        let ts = remaining.map(|left| libc::timespec {
            tv_sec: left.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |ts| ts as *const libc::timespec);
        // SAFETY: `word` is a live, aligned u32 (an `AtomicU32`); `ts_ptr` is null or points to
        // `ts`, alive across the call. FUTEX_WAIT only reads both.
        let rc = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, ts_ptr) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT)) {
                return Err(Error::system("futex(FUTEX_WAIT) on a shared pool word", e));
            }
        }
    }
}

/// Wakes every thread of every process waiting on `word`; how many were woken.
pub(crate) fn wake_all(word: &AtomicU32) -> Result<usize> {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not dereference anything else.
    let rc = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, libc::c_int::MAX) };
    if rc < 0 {
        return Err(Error::system("futex(FUTEX_WAKE) on a shared pool word", io::Error::last_os_error()));
    }
    Ok(rc as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::header::AreaKind;
    use crate::shm::pool_file::PoolFile;
    use crate::shm::testutil::{attach, child_role, create_pool, park, say, ChildProcess, TempDir};
    use std::sync::atomic::AtomicU64;

    const CHILD_TEST: &str = "shm::lock::tests::child_process_role";

    fn mutex(pool: &PoolFile) -> &SharedMutex {
        pool.area_of(AreaKind::Locks).unwrap().get::<SharedMutex>(0).unwrap()
    }

    fn word(pool: &PoolFile) -> &AtomicU32 {
        pool.area_of(AreaKind::Locks).unwrap().get::<AtomicU32>(64).unwrap()
    }

    /// The child's side of the tests below.
    #[test]
    fn child_process_role() {
        if let Some(path) = child_role("hold-mutex") {
            let pool = attach(&path);
            let Acquired::Locked(_guard) = mutex(&pool).lock().unwrap() else { panic!("owner died") };
            say("LOCKED");
            park();
        }
        if let Some(path) = child_role("futex-wait") {
            let pool = attach(&path);
            say("WAITING");
            assert!(wait(word(&pool), 0, Some(Duration::from_secs(30))).unwrap());
            say(&format!("WOKEN {}", word(&pool).load(Ordering::Acquire)));
        }
    }

    /// A pool whose mutex a child process held when it was SIGKILLed.
    fn pool_with_dead_holder(dir: &TempDir) -> PoolFile {
        let path = dir.path("pool");
        let pool = create_pool(&path);
        let mut child = ChildProcess::spawn(CHILD_TEST, "hold-mutex", &path);
        child.expect("LOCKED");
        child.kill();
        pool
    }

    #[test]
    fn lock_after_the_holder_is_sigkilled_reports_owner_died_and_works_after_consistent() {
        let dir = TempDir::new();
        let pool = pool_with_dead_holder(&dir);
        let m = mutex(&pool);
        let Acquired::OwnerDied(repair) = m.lock().unwrap() else { panic!("the holder's death was not reported") };
        drop(repair.consistent().unwrap());
        for _ in 0..3 {
            assert!(matches!(m.lock().unwrap(), Acquired::Locked(_)));
        }
        m.check().unwrap();
    }

    #[test]
    fn a_repair_abandoned_without_consistent_leaves_the_mutex_unrecoverable() {
        let dir = TempDir::new();
        let pool = pool_with_dead_holder(&dir);
        let m = mutex(&pool);
        assert!(matches!(m.lock().unwrap(), Acquired::OwnerDied(_)));
        let e = m.lock().unwrap_err();
        assert!(e.to_string().contains("not repaired"), "{e}");
    }

    #[test]
    fn the_mutex_excludes_threads_refuses_relocking_and_uninitialised_bytes() {
        let dir = TempDir::new();
        let pool = create_pool(&dir.path("pool"));
        let m = mutex(&pool);
        let counter = pool.area_of(AreaKind::Locks).unwrap().get::<AtomicU64>(128).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..5000 {
                        let Acquired::Locked(_guard) = m.lock().unwrap() else { panic!("owner died") };
                        // A non-atomic increment: correct only under mutual exclusion.
                        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 10_000);
        let _held = m.lock().unwrap();
        assert!(m.lock().unwrap_err().to_string().contains("already holds"));
        let never = pool.area_of(AreaKind::Locks).unwrap().get::<SharedMutex>(256).unwrap();
        assert!(never.check().is_err());
        assert!(never.lock().unwrap_err().to_string().contains("never initialised"));
    }

    #[test]
    fn a_wake_in_one_process_reaches_a_waiter_in_another_which_rechecks_the_word() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let pool = create_pool(&path);
        let mut child = ChildProcess::spawn(CHILD_TEST, "futex-wait", &path);
        child.expect("WAITING");
        // A wake that leaves the word alone reaches the sleeping child, which sleeps on.
        let started = Instant::now();
        while wake_all(word(&pool)).unwrap() == 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "the child never slept on the word");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        word(&pool).store(7, Ordering::Release);
        wake_all(word(&pool)).unwrap();
        assert_eq!(child.expect("WOKEN"), "7");
        child.wait_success();
        assert!(started.elapsed() < Duration::from_secs(25), "woken by the wake, not by its timeout");
    }

    #[test]
    fn wait_honours_its_timeout_and_sleeps_through_wakes_that_change_nothing() {
        let dir = TempDir::new();
        let pool = create_pool(&dir.path("pool"));
        let w = word(&pool);
        let started = Instant::now();
        assert!(!wait(w, 0, Some(Duration::from_millis(150))).unwrap());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(5), "{took:?}");
        assert!(wait(w, 1, Some(Duration::ZERO)).unwrap(), "a word that already differs answers at once");
        assert!(!wait(w, 0, Some(Duration::ZERO)).unwrap());

        let started = Instant::now();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| wait(w, 0, Some(Duration::from_millis(300))).unwrap());
            while !waiter.is_finished() {
                wake_all(w).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(!waiter.join().unwrap(), "spurious wakes do not end the wait");
        });
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
