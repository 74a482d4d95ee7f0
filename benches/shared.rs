//! `cargo bench --bench shared`: shared pools (one pool file, several processes), each figure
//! printed next to a baseline measured in the same run, as a ratio. `-- --quick` for a shorter run,
//! `-- --only cycle,many` for some groups alone.
//!
//! The bench is its own other process: it starts copies of itself with `ZCOPY_SHARED_BENCH_ROLE`
//! set to `worker`, which attach the pools they are told to by name and answer one line per
//! command read from stdin (see [`worker`]). Every child is killed and reaped by PID when its
//! handle drops, and every pool file is unlinked when its name's guard drops, also on a panic.
//!
//! Every figure is the median of several rounds, printed with its spread (min–max). Within a
//! round the candidate and its baselines run one after the other, so drift of a noisy machine (a
//! busy neighbour, frequency changes) hits them alike. Rates of two threads or processes count what each did in
//! one window of the monotonic clock, which every process reads the same.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zcopy::pool::Wait;
use zcopy::{Buffer, Pool, PoolOptions, RdmaMode};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const ROLE: &str = "ZCOPY_SHARED_BENCH_ROLE";

struct Settings {
    /// Length of one timed batch of a per-operation figure.
    batch: Duration,
    /// Length of one window of a rate.
    window: Duration,
    rounds: usize,
    /// Live objects of the random-order lookup.
    objects: usize,
    /// References held by the process that is killed.
    refs: usize,
    attach_gib: usize,
}

impl Settings {
    fn full() -> Settings {
        Settings {
            batch: Duration::from_millis(100),
            window: Duration::from_millis(300),
            rounds: 7,
            objects: 1_000_000,
            refs: 100_000,
            attach_gib: 1,
        }
    }
    fn quick() -> Settings {
        Settings {
            batch: Duration::from_millis(25),
            window: Duration::from_millis(80),
            rounds: 3,
            objects: 1_000_000,
            refs: 100_000,
            attach_gib: 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// The figures of one case over the rounds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, x: f64) {
        self.0.push(x);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        v[v.len() / 2]
    }
    fn min(&self) -> f64 {
        self.sorted()[0]
    }
    fn max(&self) -> f64 {
        *self.sorted().last().expect("at least one round")
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, unlike an `Instant`.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until the monotonic clock reads `t`: sleeps most of the way, spins the last millisecond.
fn until(t: u64) {
    loop {
        let now = mono_ns();
        if now >= t {
            return;
        }
        if t - now > 2_000_000 {
            std::thread::sleep(Duration::from_nanos(t - now - 1_000_000));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Runs `op` from `start` until `end` (monotonic ns); answers the operations done and the time
/// they took (the last group of 32 may run a little past `end`, and is counted with its time).
fn run_window(start: u64, end: u64, mut op: impl FnMut()) -> (u64, u64) {
    until(start);
    let mut n = 0u64;
    loop {
        for _ in 0..32 {
            op();
        }
        n += 32;
        let now = mono_ns();
        if now >= end {
            return (n, now - start);
        }
    }
}

/// The next window: starting late enough for every process told about it to be waiting.
fn window(s: &Settings) -> (u64, u64) {
    let start = mono_ns() + 30_000_000;
    (start, start + s.window.as_nanos() as u64)
}

fn rate((n, ns): (u64, u64)) -> f64 {
    n as f64 * 1e9 / ns as f64
}

/// Operations per batch for `run` (which performs the given number of operations) to last
/// about `batch`.
fn calibrate(batch: Duration, mut run: impl FnMut(u64)) -> u64 {
    run(16); // warm-up
    let mut n = 16u64;
    loop {
        let t = Instant::now();
        run(n);
        let took = t.elapsed();
        if took >= batch / 8 || n >= 1 << 30 {
            return ((n as f64 * batch.as_secs_f64() / took.as_secs_f64()) as u64).max(1);
        }
        n *= 2;
    }
}

/// Nanoseconds per operation of one batch of `n`.
fn ns_per_op(n: u64, run: impl FnOnce(u64)) -> f64 {
    let t = Instant::now();
    run(n);
    t.elapsed().as_nanos() as f64 / n as f64
}

/// A get + release of `key`, sealed in `pool`.
fn get_release(pool: &Pool, key: &[u8]) {
    let buf = pool.get(key, Wait::Now).expect("get of a sealed key");
    black_box(buf.as_ptr());
}

fn gets(pool: &Pool, key: &[u8], n: u64) {
    for _ in 0..n {
        get_release(pool, key);
    }
}

/// create(4 KiB) + write one byte + seal + get + release + delete.
fn cycle(pool: &Pool, key: &[u8], byte: u8) {
    let mut w = pool.create(key, 4 * KIB).expect("create");
    w.as_mut_slice().expect("an unsealed buffer is writable")[0] = byte;
    w.seal().expect("seal");
    let r = pool.get(key, Wait::Now).expect("get");
    black_box(r.as_ptr());
    drop(r);
    drop(w);
    pool.delete(key).expect("delete");
}

fn cycle_window(pool: &Pool, key: &[u8], start: u64, end: u64) -> (u64, u64) {
    let mut byte = 0u8;
    run_window(start, end, || {
        byte = byte.wrapping_add(1);
        cycle(pool, key, byte);
    })
}

/// Creates `key` with `size` bytes of `byte` and seals it; the object stays after the writer goes.
fn store(pool: &Pool, key: &[u8], size: usize, byte: u8) {
    let mut w = pool.create(key, size).expect("create");
    w.as_mut_slice().expect("an unsealed buffer is writable").fill(byte);
    w.seal().expect("seal");
}

/// The 16-byte key of object `i` of the many-object benchmarks.
fn object_key(i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("o{i:015}").as_bytes());
    k
}

/// The indices `0..n` in a fixed pseudo-random order (xorshift64*, Fisher–Yates).
fn shuffled(n: usize) -> Vec<usize> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Pools and processes

/// A shared pool name unique to this run; its file is unlinked when this drops.
struct Named(String);

impl Named {
    fn new(what: &str) -> Named {
        Named(format!("bench-{}-{what}", std::process::id()))
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = Pool::unlink(&self.0, None);
    }
}

fn private_opts(size: usize, max_objects: usize) -> PoolOptions {
    PoolOptions { size, max_objects, rdma: RdmaMode::Off, ..PoolOptions::default() }
}

fn shared_opts(name: &Named, size: usize, max_objects: usize, prefault: bool) -> PoolOptions {
    PoolOptions { name: Some(name.0.clone()), prefault, ..private_opts(size, max_objects) }
}

/// A copy of this bench running [`worker`]; killed (SIGKILL by PID) and reaped when dropped.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn() -> Worker {
        let exe = std::env::current_exe().expect("the bench's own path");
        let mut child = Command::new(exe)
            .env(ROLE, "worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Worker { child, stdin, stdout }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").and_then(|()| self.stdin.flush()).expect("write to a worker");
    }

    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from a worker");
        let line = line.trim_end().to_owned();
        match line.strip_prefix("err ") {
            Some(e) => panic!("worker {}: {e}", self.child.id()),
            None if line.is_empty() => panic!("worker {} exited without answering", self.child.id()),
            None => line,
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.reply()
    }

    /// The reply's numbers.
    fn ask_nums(&mut self, cmd: &str) -> Vec<f64> {
        self.send(cmd);
        self.reply_nums()
    }

    fn reply_nums(&mut self) -> Vec<f64> {
        let r = self.reply();
        r.split_whitespace().map(|w| w.parse().unwrap_or_else(|_| panic!("worker reply {r:?}"))).collect()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by PID, then reaps it, so its file descriptors (and the slot lock) are gone.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL a worker");
        self.child.wait().expect("reap a worker");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Both are no-ops for a child already reaped (std does not signal a reaped PID).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process: attaches pools and runs what its parent asks, one reply line per command.
///
/// `attach <name> <prefault 0|1>` → ns the attach took; `detach` → `ok`;
/// `cal <key> <batch ns>` → get + release operations per batch; `gets <key> <n>` → ns per op;
/// `hot <key> <start> <end>` and `cycles <key> <start> <end>` → operations and ns in the window;
/// `hold <n>` → `ready` once it holds one reference to each of the first `n` objects;
/// `release` → ns it took to drop them; `openmap <path>` → ns of open() + mmap of the file.
fn worker() {
    let mut out = std::io::stdout().lock();
    let mut pool: Option<Pool> = None;
    let mut held: Vec<Buffer> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command(&line, &mut pool, &mut held)))
            .unwrap_or_else(|p| {
                let msg =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(msg.unwrap_or_else(|| "panicked".into()))
            });
        let reply = reply.unwrap_or_else(|e| format!("err {}: {e}", line));
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

fn command(line: &str, pool: &mut Option<Pool>, held: &mut Vec<Buffer>) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        words.get(i).and_then(|w| w.parse().ok()).ok_or_else(|| format!("argument {i} is not a number"))
    };
    let p = || pool.as_ref().ok_or_else(|| "not attached".to_string());
    Ok(match words.as_slice() {
        ["attach", name, prefault] => {
            let opts = PoolOptions { prefault: *prefault == "1", rdma: RdmaMode::Off, ..PoolOptions::default() };
            let t = Instant::now();
            let attached = Pool::attach(name, &opts).map_err(|e| e.to_string())?;
            let ns = t.elapsed().as_nanos();
            *pool = Some(attached);
            ns.to_string()
        }
        ["detach"] => {
            held.clear();
            *pool = None;
            "ok".into()
        }
        ["cal", key, _] => {
            let pool = p()?;
            calibrate(Duration::from_nanos(num(2)?), |n| gets(pool, key.as_bytes(), n)).to_string()
        }
        ["gets", key, _] => {
            let pool = p()?;
            format!("{:.3}", ns_per_op(num(2)?, |n| gets(pool, key.as_bytes(), n)))
        }
        ["hot", key, _, _] => {
            let pool = p()?;
            let (n, ns) = run_window(num(2)?, num(3)?, || get_release(pool, key.as_bytes()));
            format!("{n} {ns}")
        }
        ["cycles", key, _, _] => {
            let (n, ns) = cycle_window(p()?, key.as_bytes(), num(2)?, num(3)?);
            format!("{n} {ns}")
        }
        ["hold", _] => {
            let pool = p()?;
            for i in 0..num(1)? as usize {
                held.push(pool.get(&object_key(i), Wait::Now).map_err(|e| e.to_string())?);
            }
            "ready".into()
        }
        ["release"] => {
            let t = Instant::now();
            held.clear();
            t.elapsed().as_nanos().to_string()
        }
        ["openmap", path] => {
            let t = Instant::now();
            let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| e.to_string())?;
            // SAFETY: the mapping is only created and dropped, never read or written here.
            let map = unsafe { memmap2::MmapOptions::new().map_mut(&file) }.map_err(|e| e.to_string())?;
            let ns = t.elapsed().as_nanos();
            drop(map);
            ns.to_string()
        }
        _ => return Err("unknown command".into()),
    })
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// One line of the report.
struct Row {
    name: String,
    zcopy: String,
    baseline: String,
    /// `None` where no ratio means anything (a figure reported on its own).
    ratio: Option<f64>,
    ratio_means: &'static str,
    target: String,
    /// `None` for a figure reported without a target.
    met: Option<bool>,
}

impl Row {
    /// Prints the row as one line as soon as it is measured.
    fn show(self) -> Row {
        let ratio = match self.ratio {
            Some(r) => format!(": {r:.2} {}", self.ratio_means),
            None => String::new(),
        };
        let met = match self.met {
            Some(true) => " met",
            Some(false) => " NOT met",
            None => "",
        };
        println!("  {}: {} vs {}{ratio} [{}]{met}", self.name, self.zcopy, self.baseline, self.target);
        self
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// "median (min–max)" of times in ns.
fn ns_spread(s: &Samples) -> String {
    format!("{} ({}–{})", fmt_ns(s.median()), fmt_ns(s.min()), fmt_ns(s.max()))
}

/// "median (min–max)" of operations per second, in M/s.
fn rate_spread(s: &Samples) -> String {
    format!("{:.2} M/s ({:.2}–{:.2})", s.median() / 1e6, s.min() / 1e6, s.max() / 1e6)
}

fn ms_spread(s: &Samples) -> String {
    format!("{:.2} ms ({:.2}–{:.2})", s.median() / 1e6, s.min() / 1e6, s.max() / 1e6)
}

fn human_size(n: usize) -> String {
    if n >= MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n / KIB)
    }
}

/// The 1, 5 and 15 minute load averages: how busy the machine was besides this bench.
fn load_average() -> String {
    let loads = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loads: Vec<&str> = loads.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} ({cpus} CPUs)", loads.join(" "))
}

fn print_table(rows: &[Row]) {
    println!("| benchmark | zcopy | baseline (same run) | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let ratio = r.ratio.map_or("—".to_string(), |x| format!("{x:.2} {}", r.ratio_means));
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        println!("| {} | {} | {} | {ratio} | {} | {met} |", r.name, r.zcopy, r.baseline, r.target);
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmarks

const GET_SIZES: [usize; 3] = [4 * KIB, MIB, 64 * MIB];

/// 1. get + release of a sealed object: by another process (B) attached to the shared pool, and
///    in the creating process (A), against the same loop on a private pool.
fn bench_get(s: &Settings, rows: &mut Vec<Row>) {
    println!("get + release of a sealed object: another process, and the creator, against a private pool");
    let name = Named::new("get");
    let size = 80 * MIB;
    let shared = Pool::open(&shared_opts(&name, size, 0, true)).expect("open the shared pool");
    let private = Pool::open(&private_opts(size, 0)).expect("open a private pool");
    for (i, &n) in GET_SIZES.iter().enumerate() {
        let key = format!("get-{n}");
        store(&shared, key.as_bytes(), n, i as u8 + 1);
        store(&private, key.as_bytes(), n, i as u8 + 1);
    }
    let mut b = Worker::spawn();
    b.ask(&format!("attach {} 1", name.0));
    let batch_ns = s.batch.as_nanos();
    let mut cross_medians = Vec::new();
    for n in GET_SIZES {
        let key = format!("get-{n}");
        let k = key.as_bytes();
        let it_private = calibrate(s.batch, |i| gets(&private, k, i));
        let it_shared = calibrate(s.batch, |i| gets(&shared, k, i));
        let it_cross = b.ask_nums(&format!("cal {key} {batch_ns}"))[0] as u64;
        let (mut private_ns, mut shared_ns, mut cross_ns) =
            (Samples::default(), Samples::default(), Samples::default());
        for _ in 0..s.rounds {
            private_ns.push(ns_per_op(it_private, |i| gets(&private, k, i)));
            shared_ns.push(ns_per_op(it_shared, |i| gets(&shared, k, i)));
            cross_ns.push(b.ask_nums(&format!("gets {key} {it_cross}"))[0]);
        }
        cross_medians.push(cross_ns.median());
        rows.push(
            Row {
                name: format!("get + release, {}, other process (shared pool)", human_size(n)),
                zcopy: ns_spread(&cross_ns),
                baseline: format!("{} (private pool, in-process)", ns_spread(&private_ns)),
                ratio: Some(cross_ns.median() / private_ns.median()),
                ratio_means: "× private's time",
                target: "≤ 100 ns, flat across sizes".into(),
                met: Some(cross_ns.median() <= 100.0),
            }
            .show(),
        );
        rows.push(
            Row {
                name: format!("get + release, {}, creating process (shared pool)", human_size(n)),
                zcopy: ns_spread(&shared_ns),
                baseline: format!("{} (private pool, in-process)", ns_spread(&private_ns)),
                ratio: Some(shared_ns.median() / private_ns.median()),
                ratio_means: "× private's time",
                target: "≤ 1.2× private".into(),
                met: Some(shared_ns.median() <= 1.2 * private_ns.median()),
            }
            .show(),
        );
    }
    let flat =
        cross_medians.iter().cloned().fold(f64::MIN, f64::max) / cross_medians.iter().cloned().fold(f64::MAX, f64::min);
    rows.push(
        Row {
            name: "get + release, other process: slowest size / fastest size".into(),
            zcopy: format!("{} (slowest)", fmt_ns(cross_medians.iter().cloned().fold(f64::MIN, f64::max))),
            baseline: format!("{} (fastest)", fmt_ns(cross_medians.iter().cloned().fold(f64::MAX, f64::min))),
            ratio: Some(flat),
            ratio_means: "×",
            target: "flat across sizes (≤ 1.2×)".into(),
            met: Some(flat <= 1.2),
        }
        .show(),
    );
    b.ask("detach");
}

/// 2. create(4 KiB) + write one byte + seal + get + release + delete on a shared pool: one
///    process, and two processes on distinct keys, against a private pool's one thread.
fn bench_cycle(s: &Settings, rows: &mut Vec<Row>) {
    println!("create + write + seal + get + release + delete cycles, 4 KiB");
    let name = Named::new("cycle");
    let shared = Pool::open(&shared_opts(&name, 64 * MIB, 0, true)).expect("open the shared pool");
    let private = Pool::open(&private_opts(64 * MIB, 0)).expect("open a private pool");
    let mut a = Worker::spawn();
    let mut b = Worker::spawn();
    a.ask(&format!("attach {} 1", name.0));
    b.ask(&format!("attach {} 1", name.0));
    let (mut private_rate, mut one, mut two) = (Samples::default(), Samples::default(), Samples::default());
    for _ in 0..s.rounds {
        let (start, end) = window(s);
        private_rate.push(rate(cycle_window(&private, b"cycle", start, end)));
        let (start, end) = window(s);
        one.push(reply_rate(&a.ask_nums(&format!("cycles cycle-a {start} {end}"))));
        let (start, end) = window(s);
        a.send(&format!("cycles cycle-a {start} {end}"));
        b.send(&format!("cycles cycle-b {start} {end}"));
        let (ra, rb) = (a.reply_nums(), b.reply_nums());
        two.push(reply_rate(&ra) + reply_rate(&rb));
    }
    let left = shared.stats();
    assert_eq!((left.key_count, left.used_bytes), (0, 0), "the cycles leave the shared pool empty");
    rows.push(
        Row {
            name: "cycle, shared pool, 1 process".into(),
            zcopy: rate_spread(&one),
            baseline: format!("{} (private pool, 1 thread)", rate_spread(&private_rate)),
            ratio: Some(one.median() / private_rate.median()),
            ratio_means: "× private's rate",
            target: "≥ 2 M cycles/s".into(),
            met: Some(one.median() >= 2e6),
        }
        .show(),
    );
    rows.push(
        Row {
            name: "cycle, shared pool, 2 processes (distinct keys), total".into(),
            zcopy: rate_spread(&two),
            baseline: format!("{} (1 process)", rate_spread(&one)),
            ratio: Some(two.median() / one.median()),
            ratio_means: "× 1 process",
            target: "≥ 1.6× one process".into(),
            met: Some(two.median() >= 1.6 * one.median()),
        }
        .show(),
    );
    drop(shared);
}

/// Operations per second of a worker's "operations ns" reply.
fn reply_rate(v: &[f64]) -> f64 {
    v[0] * 1e9 / v[1]
}

/// Bytes the pool file holds in memory (tmpfs blocks), and its length.
fn file_bytes(pool: &Pool) -> (u64, u64) {
    let meta = std::fs::metadata(pool.path().expect("a shared pool has a file")).expect("stat the pool file");
    (meta.blocks() * 512, meta.len())
}

/// One lookup of a key, by one of the cases compared.
type KeyOp<'a> = &'a dyn Fn(&[u8]);

/// 3. Many live objects read in random order: get + release against a hash map lookup plus an
///    atomic increment and decrement; and the metadata each object costs.
fn bench_many(s: &Settings, rows: &mut Vec<Row>) {
    let n = s.objects;
    println!("{n} live objects, 16-byte keys, read in random order");
    let name = Named::new("many");
    // 8-byte objects take 64 bytes each; the data area is a whole number of pages.
    let size = (n * 64 + MIB).next_multiple_of(4096);
    let t = Instant::now();
    let shared = Pool::open(&shared_opts(&name, size, n, true)).expect("open the shared pool");
    let opened = t.elapsed();
    let t = Instant::now();
    for i in 0..n {
        store(&shared, &object_key(i), 8, i as u8);
    }
    let filled = t.elapsed();
    let private = Pool::open(&private_opts(size, n)).expect("open a private pool");
    let t = Instant::now();
    for i in 0..n {
        store(&private, &object_key(i), 8, i as u8);
    }
    let filled_private = t.elapsed();
    let mut map: hashbrown::HashMap<Vec<u8>, AtomicU64, foldhash::fast::RandomState> =
        hashbrown::HashMap::with_capacity_and_hasher(n, Default::default());
    for i in 0..n {
        map.insert(object_key(i).to_vec(), AtomicU64::new(0));
    }
    println!(
        "  shared pool opened in {:.1} ms, filled with {n} objects in {:.2} s ({:.2} µs each); private pool in {:.2} s",
        opened.as_secs_f64() * 1e3,
        filled.as_secs_f64(),
        filled.as_secs_f64() * 1e6 / n as f64,
        filled_private.as_secs_f64()
    );
    let keys: Vec<[u8; 16]> = shuffled(n).into_iter().map(object_key).collect();
    // Each case walks the shuffled list from where its previous batch stopped.
    let walk = |pos: &mut usize, count: u64, op: KeyOp| {
        for _ in 0..count {
            op(&keys[*pos]);
            *pos += 1;
            if *pos == keys.len() {
                *pos = 0;
            }
        }
    };
    let on_shared = |k: &[u8]| get_release(&shared, k);
    let on_private = |k: &[u8]| get_release(&private, k);
    let on_map = |k: &[u8]| {
        let c = map.get(k).expect("every key is in the map");
        c.fetch_add(1, Ordering::AcqRel);
        black_box(c);
        c.fetch_sub(1, Ordering::AcqRel);
    };
    let cases: [KeyOp; 3] = [&on_shared, &on_map, &on_private];
    let mut pos = [0usize; 3];
    let iters: Vec<u64> = (0..3).map(|c| calibrate(s.batch, |i| walk(&mut pos[c], i, cases[c]))).collect::<Vec<_>>();
    let mut samples: [Samples; 3] = Default::default();
    for _ in 0..s.rounds {
        for c in 0..3 {
            samples[c].push(ns_per_op(iters[c], |i| walk(&mut pos[c], i, cases[c])));
        }
    }
    let [shared_ns, map_ns, private_ns] = &samples;
    rows.push(
        Row {
            name: format!("{n} objects, random-order get + release, shared pool"),
            zcopy: ns_spread(shared_ns),
            baseline: format!("{} (HashMap<Vec<u8>, AtomicU64> get + fetch_add + fetch_sub)", ns_spread(map_ns)),
            ratio: Some(shared_ns.median() / map_ns.median()),
            ratio_means: "× HashMap's time",
            target: "≤ 2× HashMap".into(),
            met: Some(shared_ns.median() <= 2.0 * map_ns.median()),
        }
        .show(),
    );
    rows.push(
        Row {
            name: format!("{n} objects, random-order get + release, private pool (reference)"),
            zcopy: ns_spread(private_ns),
            baseline: format!("{} (the same HashMap)", ns_spread(map_ns)),
            ratio: Some(private_ns.median() / map_ns.median()),
            ratio_means: "× HashMap's time",
            target: "report".into(),
            met: None,
        }
        .show(),
    );
    let stats = shared.stats();
    assert_eq!(stats.object_count, n as u64, "every object is live");
    let (held, len) = file_bytes(&shared);
    let data = stats.capacity_bytes;
    let per = |bytes: u64| bytes as f64 / n as f64;
    let resident = per(held.saturating_sub(data));
    rows.push(
        Row {
            name: format!("metadata per object, {n} live objects (max_objects = {n})"),
            zcopy: format!(
                "{resident:.0} B/object in memory (pool file's tmpfs blocks × 512 − the data area's {} MiB)",
                data >> 20
            ),
            baseline: format!(
                "{:.0} B/object laid out (file length − data area, with untouched ledger pages)",
                per(len - data)
            ),
            ratio: None,
            ratio_means: "",
            target: "≤ 128 B/object (in memory)".into(),
            met: Some(resident <= 128.0),
        }
        .show(),
    );
}

/// 4. One hot key read by two threads, and by two processes, against one alone; distinct keys
///    for reference.
fn bench_hot(s: &Settings, rows: &mut Vec<Row>) {
    println!("get + release of one hot key by two threads and by two processes");
    let name = Named::new("hot");
    let shared = Pool::open(&shared_opts(&name, 16 * MIB, 0, true)).expect("open the shared pool");
    store(&shared, b"hot", 64, 1);
    store(&shared, b"other", 64, 2);
    let mut a = Worker::spawn();
    let mut b = Worker::spawn();
    a.ask(&format!("attach {} 1", name.0));
    b.ask(&format!("attach {} 1", name.0));
    let pool = &shared;
    let threads = |keys: &[&'static [u8]], (start, end): (u64, u64)| -> f64 {
        std::thread::scope(|sc| {
            let hs: Vec<_> =
                keys.iter().map(|&k| sc.spawn(move || run_window(start, end, || get_release(pool, k)))).collect();
            hs.into_iter().map(|h| rate(h.join().expect("a bench thread"))).sum()
        })
    };
    let mut processes = |keys: &[&str], (start, end): (u64, u64)| -> f64 {
        let workers = [&mut a, &mut b];
        let mut ws: Vec<&mut Worker> = workers.into_iter().take(keys.len()).collect();
        for (w, k) in ws.iter_mut().zip(keys) {
            w.send(&format!("hot {k} {start} {end}"));
        }
        ws.iter_mut().map(|w| reply_rate(&w.reply_nums())).sum()
    };
    let mut c: [Samples; 6] = Default::default();
    for _ in 0..s.rounds {
        c[0].push(threads(&[b"hot"], window(s)));
        c[1].push(threads(&[b"hot", b"hot"], window(s)));
        c[2].push(threads(&[b"hot", b"other"], window(s)));
        c[3].push(processes(&["hot"], window(s)));
        c[4].push(processes(&["hot", "hot"], window(s)));
        c[5].push(processes(&["hot", "other"], window(s)));
    }
    let mut add = |name: &str, two: &Samples, one: &Samples, what: &str, target: Option<()>| {
        let ratio = two.median() / one.median();
        rows.push(
            Row {
                name: name.into(),
                zcopy: rate_spread(two),
                baseline: format!("{} ({what})", rate_spread(one)),
                ratio: Some(ratio),
                ratio_means: what_ratio(what),
                target: if target.is_some() { "≥ 1.0× one alone (aim 1.6×)".into() } else { "report".into() },
                met: target.map(|()| ratio >= 1.0),
            }
            .show(),
        );
    };
    add("hot key, 2 threads, total", &c[1], &c[0], "1 thread", Some(()));
    add("hot key, 2 processes, total", &c[4], &c[3], "1 process", Some(()));
    add("distinct keys, 2 threads, total (reference)", &c[2], &c[0], "1 thread", None);
    add("distinct keys, 2 processes, total (reference)", &c[5], &c[3], "1 process", None);
}

fn what_ratio(what: &str) -> &'static str {
    if what == "1 thread" {
        "× 1 thread"
    } else {
        "× 1 process"
    }
}

/// 5. Attach of a large pool by a second process, without and with prefault, against open() +
///    mmap of the same file.
fn bench_attach(s: &Settings, rows: &mut Vec<Row>) {
    let gib = s.attach_gib;
    println!("attach of a {gib} GiB pool by another process");
    let name = Named::new("attach");
    let t = Instant::now();
    let pool = Pool::open(&shared_opts(&name, gib * GIB, 0, false)).expect("open the shared pool");
    let path = pool.path().expect("a shared pool has a file").display().to_string();
    println!("  created (prefault off, RDMA off) in {:.1} ms; file {path}", t.elapsed().as_secs_f64() * 1e3);
    let mut w = Worker::spawn();
    // The first attach of a process pays for things once (loading code, the first mappings), and
    // the first touch of a page the creator only reserved (fallocate) has the kernel clear it: both
    // are printed, and left out of the rounds.
    let first = w.ask_nums(&format!("attach {} 0", name.0))[0];
    w.ask("detach");
    let first_prefault = w.ask_nums(&format!("attach {} 1", name.0))[0] / gib as f64;
    w.ask("detach");
    println!(
        "  first attach of the process: {:.2} ms; first attach with prefault (the kernel clears each \
         page at its first touch): {:.1} ms per GiB",
        first / 1e6,
        first_prefault / 1e6
    );
    let (mut attach, mut prefault, mut openmap) = (Samples::default(), Samples::default(), Samples::default());
    for _ in 0..s.rounds {
        attach.push(w.ask_nums(&format!("attach {} 0", name.0))[0]);
        w.ask("detach");
        openmap.push(w.ask_nums(&format!("openmap {path}"))[0]);
        prefault.push(w.ask_nums(&format!("attach {} 1", name.0))[0] / gib as f64);
        w.ask("detach");
    }
    rows.push(
        Row {
            name: format!("attach of a {gib} GiB pool, prefault off"),
            zcopy: ms_spread(&attach),
            baseline: format!("{} (open() + mmap of the file)", ms_spread(&openmap)),
            ratio: Some(attach.median() / openmap.median()),
            ratio_means: "× open + mmap",
            target: "≤ 10 ms".into(),
            met: Some(attach.median() <= 10e6),
        }
        .show(),
    );
    rows.push(
        Row {
            name: "attach with prefault, per GiB".into(),
            zcopy: ms_spread(&prefault),
            baseline: format!("{} (open() + mmap of the file)", ms_spread(&openmap)),
            ratio: Some(prefault.median() / openmap.median()),
            ratio_means: "× open + mmap",
            target: "report".into(),
            met: None,
        }
        .show(),
    );
}

/// 6. Reclaiming a process killed while it held references, against that process releasing
///    them itself.
fn bench_reclaim(s: &Settings, rows: &mut Vec<Row>) {
    let n = s.refs;
    println!("reclaim of a killed process that held {n} references");
    let name = Named::new("reclaim");
    let pool = Pool::open(&shared_opts(&name, (n * 64 + MIB).next_multiple_of(4096), n + 1024, true))
        .expect("open the shared pool");
    for i in 0..n {
        store(&pool, &object_key(i), 8, i as u8);
    }
    let mut live = Worker::spawn();
    live.ask(&format!("attach {} 1", name.0));
    let (mut reclaim, mut release) = (Samples::default(), Samples::default());
    for _ in 0..s.rounds {
        let mut doomed = Worker::spawn();
        doomed.ask(&format!("attach {} 1", name.0));
        assert_eq!(doomed.ask(&format!("hold {n}")), "ready");
        let pid = doomed.pid();
        doomed.kill();
        let t = Instant::now();
        let reclaimed = pool.reclaim().expect("reclaim");
        reclaim.push(t.elapsed().as_nanos() as f64);
        assert_eq!(reclaimed, 1, "reclaim finds the killed process {pid}");
        assert_eq!(live.ask(&format!("hold {n}")), "ready");
        release.push(live.ask_nums("release")[0]);
    }
    pool.check().expect("the pool's invariants hold after the reclaims");
    assert_eq!(pool.stats().processes_reclaimed, s.rounds as u64);
    rows.push(
        Row {
            name: format!("reclaim of a killed process holding {n} references"),
            zcopy: ms_spread(&reclaim),
            baseline: format!("{} (a live process releasing them)", ms_spread(&release)),
            ratio: Some(reclaim.median() / release.median()),
            ratio_means: "× releasing",
            target: "≤ 100 ms".into(),
            met: Some(reclaim.median() <= 100e6),
        }
        .show(),
    );
}

/// One group of the bench: its rows are pushed onto the list.
type Group = fn(&Settings, &mut Vec<Row>);

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("worker") {
        worker();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick { Settings::quick() } else { Settings::full() };
    // `--only NAME[,NAME…]` runs those groups alone (get, cycle, many, hot, attach, reclaim).
    let only: Option<Vec<String>> =
        std::env::args().skip_while(|a| a != "--only").nth(1).map(|v| v.split(',').map(str::to_owned).collect());
    let groups: [(&str, Group); 6] = [
        ("get", bench_get),
        ("cycle", bench_cycle),
        ("many", bench_many),
        ("hot", bench_hot),
        ("attach", bench_attach),
        ("reclaim", bench_reclaim),
    ];
    if let Some(bad) = only.iter().flatten().find(|n| !groups.iter().any(|(g, _)| g == n)) {
        eprintln!("--only: no group {bad:?}; the groups are get, cycle, many, hot, attach, reclaim");
        std::process::exit(2);
    }
    println!(
        "shared pools (RDMA off, /dev/shm): medians of {} rounds, spread (min–max) in brackets; \
         batches of {} ms, rate windows of {} ms",
        s.rounds,
        s.batch.as_millis(),
        s.window.as_millis()
    );
    println!("load average at the start: {}", load_average());
    let started = Instant::now();
    let mut rows = Vec::new();
    for (name, run) in groups {
        if only.as_ref().is_none_or(|o| o.iter().any(|n| n == name)) {
            run(&s, &mut rows);
        }
    }
    println!();
    print_table(&rows);
    println!("\nmeasured in {:.1} s; load average at the end: {}", started.elapsed().as_secs_f64(), load_average());
}
