//! The benchmark suite, shared by `cargo bench` and the demo (`examples/demo.rs`).
//!
//! Everything goes through the C ABI, the way engines call zcopy. Every figure is printed next to
//! a baseline measured in the same run, as a ratio; each figure is the median of several runs.

use std::ffi::c_char;
use std::hint::black_box;
use std::ptr;
use std::time::{Duration, Instant};

use zcopy::ffi::buffer::*;
use zcopy::ffi::pool::*;
use zcopy::ffi::status::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// A pool opened through the C ABI, closed on drop.
pub struct CPool(*mut zc_pool);

fn check(status: zc_status, what: &str) {
    if status != ZC_OK {
        // SAFETY: zc_last_error_message never returns NULL and the string is NUL-terminated.
        let msg = unsafe { std::ffi::CStr::from_ptr(zc_last_error_message()) };
        panic!("{what}: {}", msg.to_string_lossy());
    }
}

impl CPool {
    pub fn open(size: usize, page_mode: u32) -> CPool {
        let mut opts = std::mem::MaybeUninit::<zc_pool_options>::uninit();
        let mut pool = ptr::null_mut();
        // SAFETY: init fills every field of `opts`; open gets valid pointers.
        unsafe {
            zc_pool_options_init(opts.as_mut_ptr());
            let mut opts = opts.assume_init();
            opts.size = size as u64;
            opts.page_mode = page_mode;
            check(zc_pool_open(&opts, &mut pool), "zc_pool_open");
        }
        CPool(pool)
    }

    fn key(key: &[u8]) -> (*const c_char, usize) {
        (key.as_ptr().cast(), key.len())
    }

    pub fn create(&self, key: &[u8], size: usize) -> *mut zc_buffer {
        let (k, n) = Self::key(key);
        let mut buf = ptr::null_mut();
        // SAFETY: live pool, key slice, writable out.
        check(unsafe { zc_create_buffer(self.0, k, n, size, &mut buf) }, "zc_create_buffer");
        buf
    }

    /// Creates, fills with `byte` and seals; returns the sealed handle.
    pub fn store(&self, key: &[u8], size: usize, byte: u8) -> *mut zc_buffer {
        let buf = self.create(key, size);
        // SAFETY: an unsealed writer's data pointer is valid for `size` writable bytes.
        unsafe {
            ptr::write_bytes(zc_buffer_data(buf), byte, size);
            check(zc_seal(buf), "zc_seal");
        }
        buf
    }

    pub fn get(&self, key: &[u8]) -> *mut zc_buffer {
        let (k, n) = Self::key(key);
        let mut buf = ptr::null_mut();
        // SAFETY: live pool, key slice, writable out.
        check(unsafe { zc_get(self.0, k, n, 0, &mut buf) }, "zc_get");
        buf
    }

    pub fn delete(&self, key: &[u8]) {
        let (k, n) = Self::key(key);
        // SAFETY: live pool and key slice.
        check(unsafe { zc_delete(self.0, k, n) }, "zc_delete");
    }

    pub fn stats(&self) -> zc_pool_stats {
        let mut s = zc_pool_stats::default();
        // SAFETY: live pool, writable out.
        check(unsafe { zc_pool_get_stats(self.0, &mut s) }, "zc_pool_get_stats");
        s
    }

    pub fn raw(&self) -> *mut zc_pool {
        self.0
    }
}

// SAFETY: zc_pool is thread-safe (every call on it may run concurrently except close, which
// only Drop does, after all users are gone).
unsafe impl Send for CPool {}
// SAFETY: as above.
unsafe impl Sync for CPool {}

impl Drop for CPool {
    fn drop(&mut self) {
        // SAFETY: the pool came from zc_pool_open and is closed once.
        unsafe { zc_pool_close(self.0) };
    }
}

/// Releases a handle.
///
/// # Safety
/// `buf` is a live handle, released only this once.
pub unsafe fn release(buf: *mut zc_buffer) {
    // SAFETY: per the contract above.
    unsafe { zc_release(buf) };
}

/// Nanoseconds per call of `f`: runs it in growing batches until one batch takes `min_time`, then
/// takes the median of `runs` such batches.
fn ns_per_iter(min_time: Duration, runs: usize, mut f: impl FnMut()) -> f64 {
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() >= min_time / 4 || iters >= 1 << 30 {
            break;
        }
        iters *= 2;
    }
    iters *= 4;
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[runs / 2]
}

fn human_size(n: usize) -> String {
    if n >= MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n / KIB)
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// One line of the report.
pub struct Row {
    pub name: String,
    pub zcopy: String,
    pub baseline: String,
    pub ratio: f64,
    pub ratio_means: &'static str,
    pub target: String,
    pub met: bool,
}

fn row(
    name: String,
    zcopy: String,
    baseline: String,
    ratio: f64,
    ratio_means: &'static str,
    target: String,
    met: bool,
) -> Row {
    Row { name, zcopy, baseline, ratio, ratio_means, target, met }
}

pub struct Settings {
    pub min_time: Duration,
    pub runs: usize,
    pub open_gib: usize,
}

impl Settings {
    pub fn full() -> Settings {
        Settings { min_time: Duration::from_millis(200), runs: 5, open_gib: 1 }
    }
    pub fn quick() -> Settings {
        Settings { min_time: Duration::from_millis(60), runs: 3, open_gib: 1 }
    }
}

/// get + release of a sealed object, against copying it out (`zc_get_into`, the copy-on-read path).
fn bench_get(s: &Settings, rows: &mut Vec<Row>) {
    let pool = CPool::open(256 * MIB, ZC_PAGES_TRANSPARENT_HUGE);
    let mut dst = vec![0u8; 64 * MIB];
    for size in [4 * KIB, MIB, 64 * MIB] {
        let key = format!("get-{size}");
        let writer = pool.store(key.as_bytes(), size, 7);
        let (k, n) = CPool::key(key.as_bytes());
        let get_ns = ns_per_iter(s.min_time, s.runs, || {
            let mut buf = ptr::null_mut();
            // SAFETY: live pool, key slice, writable out; the handle is released at once.
            unsafe {
                zc_get(pool.raw(), k, n, 0, &mut buf);
                black_box(zc_buffer_const_data(buf));
                zc_release(buf);
            }
        });
        let copy_ns = ns_per_iter(s.min_time, s.runs, || {
            let mut got = 0usize;
            // SAFETY: live pool, key slice, `dst` holds 64 MiB.
            unsafe { zc_get_into(pool.raw(), k, n, 0, dst.as_mut_ptr(), dst.len(), &mut got) };
            black_box(&dst);
        });
        // SAFETY: `writer` is live and released once.
        unsafe { release(writer) };
        pool.delete(key.as_bytes());
        rows.push(row(
            format!("get + release, {}", human_size(size)),
            fmt_ns(get_ns),
            format!("{} (zc_get_into copy)", fmt_ns(copy_ns)),
            copy_ns / get_ns,
            "× faster",
            "≤ 150 ns, flat in size".into(),
            get_ns <= 150.0,
        ));
    }
}

/// One thread's create + seal + get + release + delete cycles on 4 KiB objects for `time`.
fn cycles(pool: &CPool, thread: usize, time: Duration) -> u64 {
    let key = format!("cycle-{thread}");
    let (k, n) = CPool::key(key.as_bytes());
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < time {
        for _ in 0..256 {
            let mut w = ptr::null_mut();
            let mut r = ptr::null_mut();
            // SAFETY: live pool, key slice, writable outs; each handle is released once.
            unsafe {
                zc_create_buffer(pool.raw(), k, n, 4 * KIB, &mut w);
                zc_buffer_data(w).cast::<u64>().write(count);
                zc_seal(w);
                zc_get(pool.raw(), k, n, 0, &mut r);
                black_box(zc_buffer_const_data(r));
                zc_release(r);
                zc_release(w);
                zc_delete(pool.raw(), k, n);
            }
            count += 1;
        }
    }
    count
}

/// The same cycle through the one-copy paths: zc_put (copy in) + zc_get_into (copy out) + delete.
fn copy_cycles(pool: &CPool, time: Duration) -> u64 {
    let key = b"copy-cycle";
    let (k, n) = CPool::key(key);
    let src = vec![1u8; 4 * KIB];
    let mut dst = vec![0u8; 4 * KIB];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < time {
        for _ in 0..256 {
            let mut got = 0;
            // SAFETY: live pool, key slice, src/dst hold 4 KiB.
            unsafe {
                zc_put(pool.raw(), k, n, src.as_ptr(), src.len());
                zc_get_into(pool.raw(), k, n, 0, dst.as_mut_ptr(), dst.len(), &mut got);
                zc_delete(pool.raw(), k, n);
            }
            black_box(&dst);
            count += 1;
        }
    }
    count
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_cycle(s: &Settings, rows: &mut Vec<Row>) {
    let pool = CPool::open(64 * MIB, ZC_PAGES_TRANSPARENT_HUGE);
    let time = s.min_time * 2;
    let rate = |count: u64| count as f64 / time.as_secs_f64();
    let one = median((0..s.runs).map(|_| rate(cycles(&pool, 0, time))).collect());
    let copy = median((0..s.runs).map(|_| rate(copy_cycles(&pool, time))).collect());
    let two = median(
        (0..s.runs)
            .map(|_| {
                std::thread::scope(|sc| {
                    let a = sc.spawn(|| cycles(&pool, 1, time));
                    let b = sc.spawn(|| cycles(&pool, 2, time));
                    rate(a.join().unwrap() + b.join().unwrap())
                })
            })
            .collect(),
    );
    assert_eq!(pool.stats().used_bytes, 0, "cycles must leave the pool empty");
    rows.push(row(
        "create+seal+get+release+delete, 4 KiB, 1 thread".into(),
        format!("{:.2} M/s", one / 1e6),
        format!("{:.2} M/s (zc_put + zc_get_into)", copy / 1e6),
        one / copy,
        "× faster",
        "≥ 2 M cycles/s".into(),
        one >= 2e6,
    ));
    rows.push(row(
        "same cycle, 2 threads".into(),
        format!("{:.2} M/s", two / 1e6),
        format!("{:.2} M/s (1 thread)", one / 1e6),
        two / one,
        "× of 1 thread",
        "≥ 1.6× one thread".into(),
        two >= 1.6 * one,
    ));
}

/// A 64 MiB one-copy put (create + memcpy + seal) against a bare memcpy into prefaulted memory.
fn bench_put(s: &Settings, rows: &mut Vec<Row>) {
    let size = 64 * MIB;
    let pool = CPool::open(256 * MIB, ZC_PAGES_TRANSPARENT_HUGE);
    let src = vec![3u8; size];
    let mut dst = vec![0u8; size];
    dst.fill(1);
    let memcpy_ns = ns_per_iter(s.min_time, s.runs, || {
        dst.copy_from_slice(&src);
        black_box(&dst);
    });
    let put_ns = ns_per_iter(s.min_time, s.runs, || {
        let buf = pool.create(b"put", size);
        // SAFETY: an unsealed writer's data pointer is valid for `size` writable bytes; `src`
        // holds `size` bytes and does not overlap the pool.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), zc_buffer_data(buf), size);
            zc_seal(buf);
            release(buf);
        }
        pool.delete(b"put");
    });
    let ratio = memcpy_ns / put_ns;
    rows.push(row(
        "one-copy put, 64 MiB".into(),
        format!("{} ({:.1} GB/s)", fmt_ns(put_ns), size as f64 / put_ns),
        format!("{} (memcpy, {:.1} GB/s)", fmt_ns(memcpy_ns), size as f64 / memcpy_ns),
        ratio,
        "× memcpy speed",
        "≥ 0.9× memcpy".into(),
        ratio >= 0.9,
    ));
}

/// Time for `zc_pool_open` (map + prefault) per GiB with transparent huge pages and with 4 KiB pages.
fn bench_open(s: &Settings, rows: &mut Vec<Row>) {
    let size = s.open_gib << 30;
    let open_ms = |mode| {
        median(
            (0..s.runs.min(3))
                .map(|_| {
                    let t = Instant::now();
                    let pool = CPool::open(size, mode);
                    let ms = t.elapsed().as_secs_f64() * 1e3 / s.open_gib as f64;
                    drop(pool);
                    ms
                })
                .collect(),
        )
    };
    let thp = open_ms(ZC_PAGES_TRANSPARENT_HUGE);
    let small = open_ms(ZC_PAGES_SMALL);
    rows.push(row(
        "pool open + prefault, per GiB".into(),
        format!("{thp:.1} ms (huge pages)"),
        format!("{small:.1} ms (4 KiB pages)"),
        small / thp,
        "× faster",
        "report".into(),
        true,
    ));
}

pub fn run(s: &Settings) -> Vec<Row> {
    let mut rows = Vec::new();
    bench_get(s, &mut rows);
    bench_cycle(s, &mut rows);
    bench_put(s, &mut rows);
    bench_open(s, &mut rows);
    rows
}

pub fn print(rows: &[Row]) {
    println!("| benchmark | zcopy | baseline (same run) | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} {} | {} | {} |",
            r.name,
            r.zcopy,
            r.baseline,
            r.ratio,
            r.ratio_means,
            r.target,
            if r.met { "yes" } else { "no" }
        );
    }
}
