//! The `zcopy` tool, run as a program against shared pools these tests make with the Rust API:
//! what `list`, `stat`, `check`, `reclaim` and `rm` print and how they exit, for healthy pools, a
//! pool a killed process was attached to, missing pools, files that are not pools, and bad usage.
//!
//! Most tests keep their pools in a private directory (`--dir`), so that they never inspect, and
//! never disturb, the pools other programs on this host are using; the tests of the default
//! directory use names with this process's id and remove their files whatever happens.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use zcopy::error::Bytes;
use zcopy::pool::Wait;
use zcopy::{Pool, PoolOptions, RdmaMode};

// ---------------------------------------------------------------------------------------------
// Running the tool

/// What one run of the tool did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Held while this process starts a program and while it closes a pool: a program forked before
/// the close holds a copy of the descriptor whose lock marks this process attached, until it
/// execs, and would make this process look alive to a tool run right after.
fn fork_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn zcopy(args: &[&str]) -> Run {
    let forking = fork_lock();
    let out = Command::new(env!("CARGO_BIN_EXE_zcopy")).args(args).stdin(Stdio::null()).output().unwrap();
    drop(forking);
    Run {
        code: out.status.code().unwrap_or_else(|| panic!("zcopy {args:?} died: {:?}", out.status)),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `zcopy args... --dir dir`, which must succeed.
fn zcopy_ok(dir: &Path, args: &[&str]) -> String {
    let run = zcopy_in(dir, args);
    assert_eq!(run.code, 0, "zcopy {args:?}:\n{run:?}");
    assert!(run.stderr.is_empty(), "zcopy {args:?} succeeded but wrote to stderr:\n{run:?}");
    run.stdout
}

fn zcopy_in(dir: &Path, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    let dir = dir.to_str().unwrap();
    all.extend(["--dir", dir]);
    zcopy(&all)
}

/// Asserts `run` failed as an operation (exit 1) with one line on stderr naming `name`.
fn assert_failed_naming(run: &Run, name: &str) {
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line on stderr:\n{run:?}");
    assert!(run.stderr.contains(&format!("\"{name}\"")), "the message names the pool:\n{run:?}");
}

// ---------------------------------------------------------------------------------------------
// Pools, directories and files that go away at the end

/// A fresh directory on tmpfs for this test's pools, removed with its contents on drop. Its name
/// does not start with `zcopy.`, so `zcopy list` of /dev/shm does not take it for a pool.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = PathBuf::from(format!(
            "/dev/shm/zcopy-cli-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the pool file `<dir>/zcopy.<name>` on drop, whether a test passed or not.
struct Unlink {
    name: String,
    dir: Option<PathBuf>,
}

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Pool::unlink(&self.name, self.dir.as_deref());
    }
}

/// A pool name no other process uses: the tag and this process's id.
fn unique(tag: &str) -> String {
    format!("cli-{}-{tag}", std::process::id())
}

fn options(name: &str, dir: Option<&Path>) -> PoolOptions {
    PoolOptions {
        name: Some(name.to_owned()),
        shared_dir: dir.map(Path::to_path_buf),
        size: 1 << 20,
        prefault: false,
        rdma: RdmaMode::Off,
        ..PoolOptions::default()
    }
}

/// Creates shared pool `name` (in `dir`, /dev/shm when `None`) with a guard that removes it.
fn create_pool(name: &str, dir: Option<&Path>) -> (Pool, Unlink) {
    let guard = Unlink { name: name.to_owned(), dir: dir.map(Path::to_path_buf) };
    let pool = Pool::open(&options(name, dir)).unwrap();
    (pool, guard)
}

/// Seals `key` with `size` bytes.
fn put(pool: &Pool, key: &str, size: usize) {
    let mut buf = pool.create(key.as_bytes(), size).unwrap();
    buf.as_mut_slice().unwrap().fill(7);
    buf.seal().unwrap();
}

/// Closes this process's handle on a pool: its slot is free when this returns.
fn close(pool: Pool) {
    let _forking = fork_lock();
    pool.close();
    drop(pool);
}

/// Writes `bytes` at `path`, mode 0600, as a file that has a pool's name but is not a pool.
fn write_junk(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    file.write_all(bytes).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
}

fn junk_bytes() -> Vec<u8> {
    (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Reading the output

/// The row `zcopy list` printed for `name`, split into its columns.
fn list_row(listing: &str, name: &str) -> Vec<String> {
    let row = listing
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{listing}"));
    row.split_whitespace().map(str::to_owned).collect()
}

/// The row `zcopy list` prints for pool `name` with these counters, split the same way.
fn expected_row(name: &str, stats: &zcopy::PoolStats, alive: u64, dead: u64) -> Vec<String> {
    let mut row = vec![name.to_owned()];
    for bytes in [stats.capacity_bytes, stats.used_bytes] {
        row.extend(Bytes(bytes).to_string().split_whitespace().map(str::to_owned));
    }
    row.extend([stats.object_count, stats.key_count, alive, dead].map(|n| n.to_string()));
    row
}

/// The value `zcopy stat` printed for `key` (the first word after it).
fn stat_value(stat: &str, key: &str) -> String {
    stat.lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(key)).then(|| words.next().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{stat}"))
}

/// The `slot N  pid P  alive|dead` lines of `zcopy stat`, as (slot, pid, alive).
fn stat_processes(stat: &str) -> Vec<(u64, u32, bool)> {
    stat.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["slot", slot, "pid", pid, state] => Some((
                    slot.parse().unwrap(),
                    pid.parse().unwrap(),
                    match state {
                        "alive" => true,
                        "dead" => false,
                        other => panic!("state {other} in {line:?}"),
                    },
                )),
                _ => None,
            }
        })
        .collect()
}

/// The counters `zcopy stat` shows, from the API.
fn api_counters(pool: &Pool) -> Vec<(&'static str, u64)> {
    let s = pool.stats();
    vec![
        ("capacity_bytes", s.capacity_bytes),
        ("used_bytes", s.used_bytes),
        ("largest_free_block", s.largest_free_block),
        ("object_count", s.object_count),
        ("key_count", s.key_count),
        ("max_objects", s.max_objects),
        ("evictions", s.evictions),
        ("creates_refused", s.creates_refused),
        ("processes_attached", s.processes_attached),
        ("processes_reclaimed", s.processes_reclaimed),
        ("lock_repairs", s.lock_repairs),
    ]
}

/// A JSON value, enough to read what `zcopy stat --json` prints.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// Parses a whole JSON text, or says where it is not JSON.
    fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser { bytes: text.as_bytes(), at: 0 };
        let value = parser.value()?;
        parser.space();
        if parser.at != parser.bytes.len() {
            return Err(format!("trailing text at byte {}", parser.at));
        }
        Ok(value)
    }

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Object(map) => map.get(key).unwrap_or_else(|| panic!("no key {key:?} in {self:?}")),
            _ => panic!("{self:?} is not an object"),
        }
    }

    fn u64(&self) -> u64 {
        match *self {
            Json::Number(n) if n >= 0.0 && n.fract() == 0.0 => n as u64,
            _ => panic!("{self:?} is not a count"),
        }
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn space(&mut self) {
        while self.bytes.get(self.at).is_some_and(|b| b" \t\r\n".contains(b)) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Result<(), String> {
        self.space();
        if self.bytes.get(self.at) != Some(&byte) {
            return Err(format!("expected {:?} at byte {}", byte as char, self.at));
        }
        self.at += 1;
        Ok(())
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if !self.bytes[self.at..].starts_with(word.as_bytes()) {
            return Err(format!("bad literal at byte {}", self.at));
        }
        self.at += word.len();
        Ok(value)
    }

    fn value(&mut self) -> Result<Json, String> {
        self.space();
        match self.bytes.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut map = BTreeMap::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(map));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    self.eat(b':')?;
                    let value = self.value()?;
                    if map.insert(key.clone(), value).is_some() {
                        return Err(format!("key {key:?} twice"));
                    }
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(map));
                        }
                        _ => return Err(format!("expected ',' or '}}' at byte {}", self.at)),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(format!("expected ',' or ']' at byte {}", self.at)),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while self.bytes.get(self.at).is_some_and(|b| b"+-.eE0123456789".contains(b)) {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.at]).unwrap();
                text.parse().map(Json::Number).map_err(|_| format!("bad number {text:?}"))
            }
            _ => Err(format!("no value at byte {}", self.at)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut text = String::new();
        loop {
            let Some(&b) = self.bytes.get(self.at) else { return Err("unterminated string".into()) };
            self.at += 1;
            match b {
                b'"' => return Ok(text),
                b'\\' => {
                    let escaped = *self.bytes.get(self.at).ok_or("unterminated escape")?;
                    self.at += 1;
                    match escaped {
                        b'"' | b'\\' | b'/' => text.push(escaped as char),
                        b'n' => text.push('\n'),
                        b't' => text.push('\t'),
                        b'r' => text.push('\r'),
                        b'b' => text.push('\u{8}'),
                        b'f' => text.push('\u{c}'),
                        b'u' => {
                            let hex = self.bytes.get(self.at..self.at + 4).ok_or("short \\u escape")?;
                            let code = u32::from_str_radix(std::str::from_utf8(hex).unwrap(), 16)
                                .map_err(|_| "bad \\u escape".to_string())?;
                            text.push(char::from_u32(code).ok_or("\\u escape of a surrogate")?);
                            self.at += 4;
                        }
                        _ => return Err(format!("bad escape at byte {}", self.at)),
                    }
                }
                0..0x20 => return Err(format!("control byte in a string at {}", self.at)),
                _ => {
                    // Copies one UTF-8 sequence whole.
                    let start = self.at - 1;
                    while self.bytes.get(self.at).is_some_and(|b| b & 0xc0 == 0x80) {
                        self.at += 1;
                    }
                    text.push_str(std::str::from_utf8(&self.bytes[start..self.at]).map_err(|e| e.to_string())?);
                }
            }
        }
    }
}

#[test]
fn json_reader_accepts_json_and_refuses_the_rest() {
    let value = Json::parse(r#"{"a": [1, true, null, "x\"\u00e9"], "b": {}}"#).unwrap();
    assert_eq!(
        value.get("a"),
        &Json::Array(vec![Json::Number(1.0), Json::Bool(true), Json::Null, Json::String("x\"é".into())])
    );
    for bad in [r#"{"a": 1,}"#, r#"{"a" 1}"#, "[1 2]", r#"{"a": 1} x"#, r#""a"#, r#"{"a": 1, "a": 2}"#] {
        assert!(Json::parse(bad).is_err(), "{bad} is not JSON");
    }
}

// ---------------------------------------------------------------------------------------------
// A process attached to a pool, to kill

/// The environment variables that turn a run of this test binary into a process with a role.
const CHILD_ROLE: &str = "ZCOPY_CLI_TEST_CHILD";
const CHILD_POOL: &str = "ZCOPY_CLI_TEST_POOL";
const CHILD_DIR: &str = "ZCOPY_CLI_TEST_DIR";

/// Keys the holder child makes: one it creates and never seals, one it holds a reference to.
const UNSEALED_KEY: &str = "unsealed-by-child";
const SEALED_KEY: &str = "sealed";

/// In a run started by [`Holder::spawn`]: attaches the pool, creates an unsealed buffer and gets
/// a sealed one, says "ready", and blocks until killed. Returns in a normal test run.
fn play_holder_if_asked() {
    if std::env::var(CHILD_ROLE).as_deref() != Ok("holder") {
        return;
    }
    let name = std::env::var(CHILD_POOL).unwrap();
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    let pool = Pool::attach(&name, &options(&name, Some(&dir))).unwrap();
    let unsealed = pool.create(UNSEALED_KEY.as_bytes(), 4096).unwrap();
    let sealed = pool.get(SEALED_KEY.as_bytes(), Wait::Now).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    drop(out);
    // Held until the kill: what the tool must reclaim.
    let _held = (pool, unsealed, sealed);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// This test binary run again as a process attached to a pool (see [`play_holder_if_asked`]);
/// killed on drop if the test did not kill it.
struct Holder {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    fn spawn(test: &str, name: &str, dir: &Path) -> Holder {
        let forking = fork_lock();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1", "--quiet"])
            .env(CHILD_ROLE, "holder")
            .env(CHILD_POOL, name)
            .env(CHILD_DIR, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        drop(forking);
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut holder = Holder { child, lines };
        let said_ready = holder.lines.by_ref().any(|line| line.unwrap().trim() == "ready");
        assert!(said_ready, "the holder exited before it was ready: {:?}", holder.child.wait());
        holder
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait until the process is gone (so the kernel has dropped its slot's lock).
    fn kill(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// list

#[test]
fn list_shows_each_pool_with_its_capacity_use_objects_keys_and_processes() {
    let dir = TempDir::new();
    let (a, _a) = create_pool(&unique("list-a"), Some(dir.path()));
    let (b, _b) = create_pool(&unique("list-b"), Some(dir.path()));
    put(&a, "one", 100);
    put(&a, "two", 5000);
    let pending = a.create(b"three", 64).unwrap();
    put(&b, "x", 10);

    let listing = zcopy_ok(dir.path(), &["list"]);
    let header: Vec<&str> = listing.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CAPACITY", "USED", "OBJECTS", "KEYS", "ALIVE", "DEAD"]);
    let stats = a.stats();
    assert_eq!((stats.object_count, stats.key_count), (3, 3));
    assert_eq!(stats.capacity_bytes, 1 << 20);
    assert_eq!(list_row(&listing, &unique("list-a")), expected_row(&unique("list-a"), &stats, 1, 0), "{listing}");
    assert!(list_row(&listing, &unique("list-a")).starts_with(&[unique("list-a"), "1".into(), "MiB".into()]));
    assert_eq!(list_row(&listing, &unique("list-b")), expected_row(&unique("list-b"), &b.stats(), 1, 0), "{listing}");
    assert_eq!(list_row(&listing, &unique("list-b"))[5..], ["1", "1", "1", "0"], "{listing}");
    assert_eq!(listing.lines().count(), 3, "a header and one row per pool:\n{listing}");
    drop(pending);
}

#[test]
fn list_says_so_when_there_are_no_pools() {
    let dir = TempDir::new();
    let out = zcopy_ok(dir.path(), &["list"]);
    assert_eq!(out, format!("no pools in {}\n", dir.path().display()));
}

#[test]
fn list_reports_a_file_it_cannot_inspect_with_the_reason_and_lists_the_rest() {
    let dir = TempDir::new();
    let (pool, _guard) = create_pool(&unique("list-good"), Some(dir.path()));
    put(&pool, "k", 1);
    write_junk(&dir.path().join(format!("zcopy.{}", unique("list-junk"))), &junk_bytes());
    // Another user's pool, when this test may give one away (it runs as root).
    let foreign = unique("list-foreign");
    let (other, _other_guard) = create_pool(&foreign, Some(dir.path()));
    close(other);
    let given_away = std::os::unix::fs::chown(dir.path().join(format!("zcopy.{foreign}")), Some(65534), None).is_ok();

    let listing = zcopy_ok(dir.path(), &["list"]);
    assert_eq!(list_row(&listing, &unique("list-good"))[5..], ["1", "1", "1", "0"], "{listing}");
    let junk = list_row(&listing, &unique("list-junk")).join(" ");
    assert!(junk.contains("cannot inspect") && junk.contains("not a usable zcopy pool file"), "{listing}");
    let foreign_row = list_row(&listing, &foreign).join(" ");
    if given_away {
        assert!(foreign_row.contains("cannot inspect") && foreign_row.contains("owned by uid 65534"), "{listing}");
    } else {
        eprintln!("skipped the other user's pool: chown needs root");
        assert_eq!(list_row(&listing, &foreign)[5..], ["0", "0", "0", "0"], "{listing}");
    }
}

// ---------------------------------------------------------------------------------------------
// stat

#[test]
fn stat_shows_the_counters_the_api_reports_and_each_process() {
    let dir = TempDir::new();
    let name = unique("stat");
    let (pool, _guard) = create_pool(&name, Some(dir.path()));
    for i in 0..5 {
        put(&pool, &format!("key-{i}"), 1000 * (i + 1));
    }
    pool.delete(b"key-0").unwrap();
    let _pending = pool.create(b"pending", 300).unwrap();
    let held = pool.get(b"key-1", Wait::Now).unwrap();
    pool.delete(b"key-1").unwrap(); // an object without a key while `held` lives

    let out = zcopy_ok(dir.path(), &["stat", &name]);
    let expected = api_counters(&pool);
    assert_eq!(pool.stats().object_count, 5, "key-1..4 and pending");
    assert_eq!(pool.stats().key_count, 4, "key-2..4 and pending");
    for (key, value) in &expected {
        assert_eq!(stat_value(&out, key), value.to_string(), "{key} in:\n{out}");
    }
    assert_eq!(stat_value(&out, "pool"), name);
    assert_eq!(stat_value(&out, "file"), pool.path().unwrap().display().to_string());
    assert_eq!(pool.path().unwrap(), dir.path().join(format!("zcopy.{name}")));
    assert_eq!(stat_processes(&out), [(0, std::process::id(), true)], "{out}");
    drop(held);
}

#[test]
fn stat_json_parses_and_holds_the_api_counters_under_their_field_names() {
    let dir = TempDir::new();
    let name = unique("json");
    let (pool, _guard) = create_pool(&name, Some(dir.path()));
    put(&pool, "a", 4096);
    put(&pool, "b", 1);

    let out = zcopy_ok(dir.path(), &["stat", "--json", &name]);
    let json = Json::parse(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    for (key, value) in api_counters(&pool) {
        assert_eq!(json.get(key).u64(), value, "{key} in:\n{out}");
    }
    assert_eq!(json.get("key_count").u64(), 2);
    assert_eq!(json.get("name"), &Json::String(name.clone()));
    assert_eq!(json.get("path"), &Json::String(pool.path().unwrap().display().to_string()));
    let Json::Array(processes) = json.get("processes") else { panic!("processes is not a list:\n{out}") };
    assert_eq!(processes.len(), 1, "{out}");
    assert_eq!(processes[0].get("pid").u64(), u64::from(std::process::id()));
    assert_eq!(processes[0].get("alive"), &Json::Bool(true));
    assert_eq!(processes[0].get("slot").u64(), 0);
}

// ---------------------------------------------------------------------------------------------
// check and reclaim

#[test]
fn check_says_ok_for_a_healthy_pool() {
    let dir = TempDir::new();
    let name = unique("check");
    let (pool, _guard) = create_pool(&name, Some(dir.path()));
    put(&pool, "a", 100);
    let _pending = pool.create(b"b", 100).unwrap();
    assert_eq!(zcopy_ok(dir.path(), &["check", &name]), "ok\n");
}

#[test]
fn check_fails_for_a_record_whose_block_is_another_records() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new();
    let name = unique("check-shared-block");
    let (pool, _guard) = create_pool(&name, Some(dir.path()));
    for i in 0..10 {
        put(&pool, &format!("k{i}"), 8);
    }
    assert_eq!(zcopy_ok(dir.path(), &["check", &name]), "ok\n");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(pool.path().unwrap()).unwrap();
    // The Records area is the 4th span after 64 bytes of fixed header fields; in each 64-byte
    // record, `node` is at 20 and `offset_units` at 28: record 5 made to name record 4's block.
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, 64 + 16 * 3).unwrap();
    let records = u64::from_ne_bytes(word);
    for field in [20, 28] {
        let mut value = [0u8; 4];
        file.read_exact_at(&mut value, records + 4 * 64 + field).unwrap();
        file.write_all_at(&value, records + 5 * 64 + field).unwrap();
    }
    let run = zcopy_in(dir.path(), &["check", &name]);
    assert_failed_naming(&run, &name);
    assert!(run.stderr.contains("records 4 and 5 share one block of object memory"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn reclaim_after_a_killed_process_reports_one_and_leaves_a_pool_that_checks() {
    play_holder_if_asked();
    let dir = TempDir::new();
    let name = unique("reclaim");
    let (pool, _guard) = create_pool(&name, Some(dir.path()));
    put(&pool, SEALED_KEY, 1000);
    let mut holder =
        Holder::spawn("reclaim_after_a_killed_process_reports_one_and_leaves_a_pool_that_checks", &name, dir.path());
    let child = holder.pid();

    let out = zcopy_ok(dir.path(), &["stat", &name]);
    assert_eq!(stat_value(&out, "processes_attached"), "2", "{out}");
    assert_eq!(stat_value(&out, "key_count"), "2", "the sealed key and the child's unsealed one:\n{out}");
    let procs = stat_processes(&out);
    assert!(procs.iter().any(|&(_, pid, alive)| pid == child && alive), "{out}");
    assert_eq!(list_row(&zcopy_ok(dir.path(), &["list"]), &name)[7..], ["2", "0"]);

    holder.kill();
    let listing = zcopy_ok(dir.path(), &["list"]);
    assert_eq!(list_row(&listing, &name)[7..], ["1", "1"], "one alive, one dead:\n{listing}");
    let out = zcopy_ok(dir.path(), &["stat", &name]);
    assert_eq!(stat_value(&out, "processes_attached"), "1", "{out}");
    assert_eq!(stat_value(&out, "processes_reclaimed"), "0", "not before the reclaim:\n{out}");
    assert_eq!(stat_value(&out, "key_count"), "2", "not before the reclaim:\n{out}");
    assert!(stat_processes(&out).contains(&(procs.iter().find(|p| p.1 == child).unwrap().0, child, false)), "{out}");

    assert_eq!(zcopy_ok(dir.path(), &["reclaim", &name]), format!("pool \"{name}\": reclaimed 1 dead process\n"));

    let out = zcopy_ok(dir.path(), &["stat", &name]);
    assert_eq!(stat_value(&out, "processes_reclaimed"), "1", "{out}");
    assert_eq!(stat_value(&out, "processes_attached"), "1", "{out}");
    assert_eq!(stat_value(&out, "key_count"), "1", "the child's unsealed create was aborted:\n{out}");
    assert_eq!(stat_processes(&out), [(0, std::process::id(), true)], "{out}");
    assert_eq!(zcopy_ok(dir.path(), &["check", &name]), "ok\n");
    assert_eq!(zcopy_ok(dir.path(), &["reclaim", &name]), format!("pool \"{name}\": reclaimed 0 dead processes\n"));
    // What the tool did is what the pool sees: the sealed object is there and holds no reference
    // of the dead child's (it can be deleted, and its memory goes).
    assert_eq!(pool.stats().processes_reclaimed, 1);
    pool.delete(SEALED_KEY.as_bytes()).unwrap();
    assert_eq!((pool.stats().object_count, pool.stats().used_bytes), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// rm

#[test]
fn rm_refuses_while_a_live_process_is_attached_and_removes_the_pool_after() {
    let dir = TempDir::new();
    let name = unique("rm");
    let (pool, _guard) = create_pool(&name, Some(dir.path()));
    let path = pool.path().unwrap().to_path_buf();

    let run = zcopy_in(dir.path(), &["rm", &name]);
    assert_failed_naming(&run, &name);
    assert!(run.stderr.contains(&format!("pid {}", std::process::id())), "{run:?}");
    assert!(path.exists(), "a refused rm leaves the file");

    close(pool);
    let out = zcopy_ok(dir.path(), &["rm", &name]);
    assert_eq!(out, format!("removed pool \"{name}\" ({})\n", path.display()));
    assert!(!path.exists());
    assert_failed_naming(&zcopy_in(dir.path(), &["rm", &name]), &name);
}

#[test]
fn rm_force_removes_the_name_while_attached_processes_keep_the_pool() {
    let dir = TempDir::new();
    let name = unique("rm-force");
    let (pool, _guard) = create_pool(&name, Some(dir.path()));
    put(&pool, "kept", 64);
    let path = pool.path().unwrap().to_path_buf();

    let out = zcopy_ok(dir.path(), &["rm", "--force", &name]);
    assert!(out.starts_with(&format!("removed pool \"{name}\"")), "{out}");
    assert!(out.contains(&format!("1 process still attached (pid {})", std::process::id())), "{out}");
    assert!(!path.exists());
    // The name is free at once; this process still has the pool it had.
    let (again, _again_guard) = create_pool(&name, Some(dir.path()));
    assert_eq!(again.stats().key_count, 0);
    assert_eq!(pool.get(b"kept", Wait::Now).unwrap().as_slice(), [7; 64]);
}

#[test]
fn rm_refuses_a_file_that_is_not_a_pool_unless_forced() {
    let dir = TempDir::new();
    let name = unique("rm-junk");
    let path = dir.path().join(format!("zcopy.{name}"));
    write_junk(&path, &junk_bytes());
    let run = zcopy_in(dir.path(), &["rm", &name]);
    assert_failed_naming(&run, &name);
    assert!(run.stderr.contains("--force"), "{run:?}");
    assert!(path.exists());
    zcopy_ok(dir.path(), &["rm", "-f", &name]);
    assert!(!path.exists());
}

#[test]
fn rm_removes_a_file_whose_creator_died_before_publishing_it_without_force() {
    let dir = TempDir::new();
    let name = unique("rm-abandoned");
    let path = dir.path().join(format!("zcopy.{name}"));
    // What a creator leaves when it dies right after making the file: empty, nobody locking it.
    write_junk(&path, &[]);
    let run = zcopy_in(dir.path(), &["stat", &name]);
    assert_failed_naming(&run, &name);
    assert!(run.stderr.contains("creator died") && run.stderr.contains("can be removed"), "{run:?}");
    let out = zcopy_ok(dir.path(), &["rm", &name]);
    assert_eq!(
        out,
        format!("removed pool file \"{name}\" ({}): its creator died before publishing it\n", path.display())
    );
    assert!(!path.exists());
}

// ---------------------------------------------------------------------------------------------
// The default directory, missing pools, usage

#[test]
fn in_dev_shm_a_file_that_is_not_a_pool_fails_stat_and_list_still_succeeds() {
    let name = unique("shm-pool");
    let junk = unique("shm-junk");
    let junk_guard = Unlink { name: junk.clone(), dir: None };
    write_junk(&PathBuf::from(format!("/dev/shm/zcopy.{junk}")), &junk_bytes());
    let (pool, _guard) = create_pool(&name, None);
    put(&pool, "k", 10);

    let run = zcopy(&["stat", &junk]);
    assert_failed_naming(&run, &junk);
    assert!(run.stderr.contains("not a usable zcopy pool file"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");

    let run = zcopy(&["list"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(list_row(&run.stdout, &name)[5..], ["1", "1", "1", "0"], "{run:?}");
    assert!(list_row(&run.stdout, &junk).join(" ").contains("cannot inspect"), "{run:?}");

    let stat = zcopy(&["stat", &name]);
    assert_eq!(stat.code, 0, "{stat:?}");
    assert_eq!(stat_value(&stat.stdout, "file"), format!("/dev/shm/zcopy.{name}"));
    drop(junk_guard);
}

#[test]
fn a_missing_pool_fails_every_command_with_a_message_naming_it() {
    let dir = TempDir::new();
    let name = unique("missing");
    for command in ["stat", "check", "reclaim", "rm"] {
        let run = zcopy_in(dir.path(), &[command, &name]);
        assert_failed_naming(&run, &name);
        assert!(run.stderr.contains("no pool"), "{command}: {run:?}");
        assert!(run.stdout.is_empty(), "{command}: {run:?}");
    }
    let run = zcopy_in(dir.path(), &["rm", "--force", &name]);
    assert_failed_naming(&run, &name);
    // In /dev/shm too, where the message says which file it looked for.
    let run = zcopy(&["stat", &name]);
    assert_failed_naming(&run, &name);
    assert!(run.stderr.contains(&format!("/dev/shm/zcopy.{name}")), "{run:?}");
}

#[test]
fn a_directory_that_does_not_exist_fails_list_naming_it() {
    let dir = TempDir::new();
    let gone = dir.path().join("gone");
    let run = zcopy(&["list", "--dir", gone.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(gone.to_str().unwrap()), "{run:?}");
}

#[test]
fn a_relative_dir_is_taken_from_the_working_directory() {
    let dir = TempDir::new();
    let name = unique("relative");
    let (_pool, _guard) = create_pool(&name, Some(dir.path()));
    let forking = fork_lock();
    let out = Command::new(env!("CARGO_BIN_EXE_zcopy"))
        .args(["check", &name, "--dir", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    drop(forking);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"ok\n");
}

#[test]
fn a_relative_dir_is_resolved_to_the_directory_it_names_and_a_missing_one_fails_naming_it() {
    let dir = TempDir::new();
    let name = unique("relative-dots");
    let (_pool, _guard) = create_pool(&name, Some(dir.path()));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let run_in_dir = |args: &[&str]| {
        let forking = fork_lock();
        let out = Command::new(env!("CARGO_BIN_EXE_zcopy")).args(args).current_dir(dir.path()).output().unwrap();
        drop(forking);
        out
    };
    let out = run_in_dir(&["stat", &name, "--dir", "./sub/.."]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stat_value(&stdout, "file"), dir.path().join(format!("zcopy.{name}")).display().to_string());
    let out = run_in_dir(&["list", "--dir", "sub/gone"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("sub/gone") && stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn an_invalid_pool_name_is_bad_usage_for_every_command() {
    let dir = TempDir::new();
    for command in ["stat", "check", "reclaim", "rm"] {
        for name in ["a/b", "..", "-", ".hidden", "a b"] {
            let run = zcopy_in(dir.path(), &[command, name]);
            assert_eq!(run.code, 2, "zcopy {command} {name:?}: {run:?}");
            assert!(run.stdout.is_empty(), "{run:?}");
            let lines: Vec<&str> = run.stderr.lines().collect();
            assert_eq!(lines.len(), 2, "a message and a usage line: {run:?}");
            assert!(lines[0].starts_with("zcopy: ") && lines[0].contains("pool name"), "{run:?}");
            assert!(lines[1].starts_with(&format!("usage: zcopy {command} ")), "{run:?}");
        }
    }
}

#[test]
fn bad_usage_exits_2_with_a_usage_line() {
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["stat"],
        &["check"],
        &["reclaim"],
        &["rm"],
        &["stat", "a", "b"],
        &["list", "a"],
        &["list", "--json"],
        &["check", "--force", "a"],
        &["stat", "--bogus", "a"],
        &["stat", "a", "--dir"],
        &["help", "frobnicate"],
    ];
    for args in cases {
        let run = zcopy(args);
        assert_eq!(run.code, 2, "zcopy {args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "zcopy {args:?}: {run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "a message and a usage line: {run:?}");
        assert!(lines[0].starts_with("zcopy: "), "{run:?}");
        assert!(lines[1].starts_with("usage: zcopy"), "{run:?}");
    }
    let run = zcopy(&["stat"]);
    assert_eq!(run.stderr.lines().nth(1), Some("usage: zcopy stat [--dir DIR] [--json] NAME"));
}

#[test]
fn help_goes_to_stdout_and_exits_0_for_the_tool_and_each_command() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let run = zcopy(args);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.is_empty(), "{run:?}");
        for command in ["list", "stat NAME", "check NAME", "reclaim NAME", "rm NAME"] {
            assert!(run.stdout.contains(&format!("\n  {command} ")), "{command} in {run:?}");
        }
    }
    for command in ["list", "stat", "check", "reclaim", "rm"] {
        for args in [&[command, "--help"][..], &[command, "-h"], &["help", command], &[command, "x", "-h"]] {
            let run = zcopy(args);
            assert_eq!(run.code, 0, "{args:?}: {run:?}");
            assert!(run.stdout.starts_with(&format!("usage: zcopy {command} ")), "{args:?}: {run:?}");
            assert!(run.stdout.contains("--dir DIR"), "{args:?}: {run:?}");
        }
    }
    let run = zcopy(&["--version"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, format!("zcopy {}\n", env!("CARGO_PKG_VERSION")).as_str()));
}
