//! Helpers for the shm tests: scratch directories on tmpfs, a guard for the process's umask,
//! child processes to kill, and small published pool files.

use std::io::{BufRead, BufReader, Lines, Write};
use std::mem::size_of;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::shm::file::Sharing;
use crate::shm::header::{self, AreaKind, Layout, AREAS};
use crate::shm::lock::SharedMutex;
use crate::shm::pool_file::PoolFile;
use crate::shm::slots::Slot;

/// A fresh directory under `/dev/shm` (tmpfs, where pools live), removed with its contents on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = PathBuf::from(format!(
            "/dev/shm/zcopy-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Held by tests that change the umask or create files whose mode they check.
pub(crate) fn umask_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held while this process starts a child, and by tests that release an OFD lock by closing its
/// file: between fork and exec a child holds copies of every descriptor, so a lock released by
/// closing one stays held until that child has exec'd (`Command::spawn` returns after the exec).
pub(crate) fn fork_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The environment variable that turns a run of this test binary into a child with a role.
const CHILD_ENV: &str = "ZCOPY_SHM_TEST_CHILD";

/// This test binary run again as a child process that plays `role` in the test named `test`
/// (which calls [`child_role`] first). Its stdout is read line by line; dropping it kills it.
pub(crate) struct ChildProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stdin: Option<std::process::ChildStdin>,
}

impl ChildProcess {
    pub(crate) fn spawn(test: &str, role: &str, pool: &Path) -> ChildProcess {
        Self::start(test, role, pool, false)
    }

    /// As [`ChildProcess::spawn`], with a pipe to the child's stdin ([`ChildProcess::send`]).
    pub(crate) fn spawn_with_stdin(test: &str, role: &str, pool: &Path) -> ChildProcess {
        Self::start(test, role, pool, true)
    }

    fn start(test: &str, role: &str, pool: &Path, stdin: bool) -> ChildProcess {
        let forking = fork_lock();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1", "--quiet"])
            .env(CHILD_ENV, format!("{role}:{}", pool.display()))
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        drop(forking);
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdin = child.stdin.take();
        ChildProcess { child, lines, stdin }
    }

    /// Writes `line` to the child's stdin.
    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("started with spawn_with_stdin");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the first line the child printed that starts with `prefix`.
    pub(crate) fn expect(&mut self, prefix: &str) -> String {
        for line in self.lines.by_ref() {
            if let Some(rest) = line.unwrap().strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("the child exited before it said {prefix:?}: {:?}", self.child.wait());
    }

    /// SIGKILL, and wait until the process is gone (so the kernel has dropped its locks).
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    pub(crate) fn wait_success(&mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a child started with `role`, the pool it works on; `None` in a normal test run.
pub(crate) fn child_role(role: &str) -> Option<PathBuf> {
    let spec = std::env::var(CHILD_ENV).ok()?;
    let (r, path) = spec.split_once(':')?;
    (r == role).then(|| PathBuf::from(path))
}

/// Says `line` to the parent at once.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Blocks until the parent kills this process.
pub(crate) fn park() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Process slots in the pools [`create_pool`] makes.
pub(crate) const TEST_SLOTS: u64 = 8;

/// A published pool file at `path` with [`TEST_SLOTS`] slots and a page of locks (a mutex at
/// offset 0, zeros after it).
pub(crate) fn create_pool(path: &Path) -> PoolFile {
    let mut metadata = [0; AREAS];
    metadata[AreaKind::Slots as usize] = TEST_SLOTS * size_of::<Slot>() as u64;
    metadata[AreaKind::Locks as usize] = 4096;
    let layout = Layout::plan(metadata, 4096, 4096, header::fresh_generation()).unwrap();
    PoolFile::create(path, &layout, Sharing::Owner, crate::shm::pool_file::Reserve::All, |file, layout| {
        let locks = layout.area(file, AreaKind::Locks)?;
        // SAFETY: `create` runs this before it publishes the file, which nobody uses yet.
        unsafe { locks.get::<SharedMutex>(0)?.init() }
    })
    .unwrap()
}

/// The pool file at `path`, attached the way the engine will.
pub(crate) fn attach(path: &Path) -> PoolFile {
    PoolFile::attach(path, Sharing::Owner).unwrap()
}
