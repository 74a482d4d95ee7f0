//! Child processes for tests that need several processes: the test binary runs itself again with
//! a role in the environment, and the role's test function plays it.

use std::io::{BufRead, BufReader, Lines, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "ZCOPY_TEST_ROLE";

/// This test binary run as a child playing `role` (with `arg`) in the test named `test`, which
/// calls [`role`] first. Its stdout is read line by line; dropping it kills it.
pub struct Child {
    child: std::process::Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Child {
    pub fn spawn(test: &str, role: &str, arg: &str) -> Child {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([test, "--exact", "--nocapture", "--test-threads=1", "--quiet"])
            .env(ROLE_ENV, format!("{role}:{arg}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a child test process");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Child { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the first line the child printed that starts with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        for line in self.lines.by_ref() {
            if let Some(rest) = line.expect("child's stdout").strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("the child exited before it said {prefix:?}: {:?}", self.child.wait());
    }

    /// SIGKILL, and wait until the process is gone (so the kernel has dropped its locks).
    pub fn kill(&mut self) {
        // SAFETY: a plain system call on this test's own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let status = self.child.wait().expect("wait for the child");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    /// Waits (at most `limit`) for a clean exit.
    pub fn wait_success(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                assert!(status.success(), "{status:?}");
                return;
            }
            assert!(start.elapsed() < limit, "the child did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a child started with `role`, its argument; `None` in a normal test run.
pub fn role(role: &str) -> Option<String> {
    let spec = std::env::var(ROLE_ENV).ok()?;
    let (r, arg) = spec.split_once(':')?;
    (r == role).then(|| arg.to_owned())
}

/// Says `line` to the parent at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}

/// Blocks until the parent kills this process.
pub fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
