//! Stress: random operations from 4 threads through the C ABI, checked against a shadow model,
//! then one million live small objects to measure metadata bytes per object: once with 12-byte
//! keys (kept inside the object's record) and once with 48-byte keys (allocated on their own).
//!
//!   cargo run --release --example stress -- [--ops N] [--seconds S] [--live N]
//!
//! Each thread owns 64 keys whose every answer is predicted exactly by its model (statuses and
//! contents), and all threads share 64 more keys where races decide the answer: there each
//! status must be one the contract allows, and every byte read is checked against the header
//! its writer put in the object. Misuses (double seal, abort after seal, get of an unsealed key,
//! delete of an unsealed key, NULL and oversized arguments) are part of the mix. At the end every
//! counter must be back to zero.

use std::collections::HashMap;
use std::ffi::c_char;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zcopy::ffi::buffer::*;
use zcopy::ffi::pool::*;
use zcopy::ffi::status::*;

struct Pool(*mut zc_pool);
// SAFETY: zc_pool is thread-safe for every call but close, which runs after the threads end.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

fn open(size: u64, max_objects: u64) -> Pool {
    let mut o = std::mem::MaybeUninit::<zc_pool_options>::uninit();
    let mut p = ptr::null_mut();
    // SAFETY: init fills every field; open gets valid pointers.
    unsafe {
        zc_pool_options_init(o.as_mut_ptr());
        let mut o = o.assume_init();
        o.size = size;
        o.max_objects = max_objects;
        assert_eq!(zc_pool_open(&o, &mut p), ZC_OK);
    }
    Pool(p)
}

fn stats(p: &Pool) -> zc_pool_stats {
    let mut s = zc_pool_stats::default();
    // SAFETY: live pool, writable out.
    assert_eq!(unsafe { zc_pool_get_stats(p.0, &mut s) }, ZC_OK);
    s
}

fn message() -> String {
    // SAFETY: never NULL, NUL-terminated.
    unsafe { std::ffi::CStr::from_ptr(zc_last_error_message()) }.to_string_lossy().into_owned()
}

/// xorshift64*: small, fast, deterministic per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every object starts with (key id, generation, size) and then bytes derived from them.
fn fill(data: *mut u8, size: usize, key: u64, gen: u64) {
    // SAFETY: the caller passes a writer's data pointer valid for `size` bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(data, size) };
    let head = [key.to_le_bytes(), gen.to_le_bytes(), (size as u64).to_le_bytes()].concat();
    let n = head.len().min(size);
    bytes[..n].copy_from_slice(&head[..n]);
    for (i, b) in bytes.iter_mut().enumerate().skip(n) {
        *b = (key as u8).wrapping_mul(31) ^ (gen as u8) ^ (i as u8);
    }
}

/// Checks an object read back: its header names (key, some generation, its size) and the rest
/// follows from them. Answers the generation.
fn verify(data: *const u8, size: usize, key: u64) -> u64 {
    // SAFETY: a live handle's const data pointer is valid for its size.
    let bytes = unsafe { std::slice::from_raw_parts(data, size) };
    if size < 24 {
        return u64::MAX; // too small to carry a header: only sizes are checked
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(word(0), key, "object of key {key} carries key {}", word(0));
    assert_eq!(word(2), size as u64, "object of key {key} has a header for another size");
    let gen = word(1);
    for (i, &b) in bytes.iter().enumerate().skip(24) {
        assert_eq!(
            b,
            (key as u8).wrapping_mul(31) ^ (gen as u8) ^ (i as u8),
            "torn object: key {key} gen {gen} byte {i}"
        );
    }
    gen
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Absent,
    Created { gen: u64, size: usize },
    Sealed { gen: u64, size: usize },
}

struct Held {
    buf: *mut zc_buffer,
    key: u64,
    writer: bool,
    sealed: bool,
}

#[derive(Default)]
struct Counts {
    ops: u64,
    misuses: u64,
    by_status: [u64; 12],
}

fn key_bytes(id: u64) -> Vec<u8> {
    let mut k = b"key\0".to_vec();
    k.extend_from_slice(&id.to_le_bytes());
    k
}

fn check(got: zc_status, want: zc_status, what: &str) {
    assert_eq!(got, want, "{what}: got {got}, expected {want} ({})", message());
}

fn worker(pool: &Pool, thread: u64, ops: u64, deadline: Instant, next_gen: &AtomicU64) -> Counts {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (thread + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut model: HashMap<u64, State> = HashMap::new();
    let mut held: Vec<Held> = Vec::new();
    let mut c = Counts::default();
    let own = |i: u64| 1000 * (thread + 1) + i; // keys only this thread touches
    let p = pool.0;
    while c.ops < ops {
        if c.ops % 4096 == 0 && Instant::now() > deadline {
            break;
        }
        c.ops += 1;
        let shared = rng.below(4) == 0;
        let id = if shared { rng.below(64) } else { own(rng.below(64)) };
        let key = key_bytes(id);
        let (k, kl) = (key.as_ptr().cast::<c_char>(), key.len());
        let state = if shared { State::Absent } else { *model.get(&id).unwrap_or(&State::Absent) };
        let op = rng.below(100);
        let status = match op {
            // create, fill, and (usually) seal
            0..=29 => {
                let size = [0usize, 1, 24, 63, 64, 65, 512, 4096, 10_000][rng.below(9) as usize];
                let gen = next_gen.fetch_add(1, Ordering::Relaxed);
                let mut b = ptr::null_mut();
                // SAFETY: live pool, key slice, writable out.
                let s = unsafe { zc_create_buffer(p, k, kl, size, &mut b) };
                if !shared {
                    let want = if state == State::Absent { ZC_OK } else { ZC_ERR_ALREADY_EXISTS };
                    check(s, want, "create");
                }
                if s == ZC_OK {
                    // SAFETY: a new writer: its data pointer is valid for `size` bytes.
                    fill(unsafe { zc_buffer_data(b) }, size, id, gen);
                    let seal_now = rng.below(4) != 0;
                    if seal_now {
                        // SAFETY: live writer.
                        let seal = unsafe { zc_seal(b) };
                        check(seal, ZC_OK, "seal");
                    }
                    if !shared {
                        let st = if seal_now { State::Sealed { gen, size } } else { State::Created { gen, size } };
                        model.insert(id, st);
                    }
                    held.push(Held { buf: b, key: id, writer: true, sealed: seal_now });
                }
                s
            }
            // get and verify
            30..=54 => {
                let mut b = ptr::null_mut();
                // SAFETY: live pool, key slice, writable out.
                let s = unsafe { zc_get(p, k, kl, 0, &mut b) };
                match (shared, state) {
                    (true, _) => assert!(matches!(s, ZC_OK | ZC_ERR_NOT_FOUND | ZC_ERR_NOT_SEALED), "shared get: {s}"),
                    (false, State::Absent) => check(s, ZC_ERR_NOT_FOUND, "get absent"),
                    (false, State::Created { .. }) => check(s, ZC_ERR_NOT_SEALED, "get unsealed"),
                    (false, State::Sealed { .. }) => check(s, ZC_OK, "get sealed"),
                }
                if s == ZC_OK {
                    // SAFETY: live reader handle.
                    let (data, size) = unsafe { (zc_buffer_const_data(b), zc_buffer_size(b)) };
                    let gen = verify(data, size, id);
                    if let State::Sealed { gen: want, size: want_size } = state {
                        assert_eq!(size, want_size, "get returned another size");
                        if size >= 24 {
                            assert_eq!(gen, want, "get returned another generation");
                        }
                    }
                    held.push(Held { buf: b, key: id, writer: false, sealed: true });
                }
                s
            }
            // release a random handle (an unsealed writer's release aborts it)
            55..=74 => {
                if held.is_empty() {
                    continue;
                }
                let h = held.swap_remove(rng.below(held.len() as u64) as usize);
                // SAFETY: live handle, released once (removed from `held`).
                let (data, size) = unsafe { (zc_buffer_const_data(h.buf), zc_buffer_size(h.buf)) };
                verify(data, size, h.key);
                // SAFETY: as above.
                unsafe { zc_release(h.buf) };
                if h.writer && !h.sealed && model.contains_key(&h.key) {
                    model.insert(h.key, State::Absent); // releasing an unsealed buffer aborts it
                }
                ZC_OK
            }
            // delete
            75..=86 => {
                // SAFETY: live pool, key slice.
                let s = unsafe { zc_delete(p, k, kl) };
                match (shared, state) {
                    (true, _) => {
                        assert!(matches!(s, ZC_OK | ZC_ERR_NOT_FOUND | ZC_ERR_NOT_SEALED), "shared delete: {s}")
                    }
                    (false, State::Absent) => check(s, ZC_ERR_NOT_FOUND, "delete absent"),
                    (false, State::Created { .. }) => check(s, ZC_ERR_NOT_SEALED, "delete unsealed"),
                    (false, State::Sealed { .. }) => {
                        check(s, ZC_OK, "delete sealed");
                        model.insert(id, State::Absent);
                    }
                }
                s
            }
            // seal a held writer: once (if unsealed) or twice (misuse)
            87..=91 => {
                let writers: Vec<usize> = (0..held.len()).filter(|&i| held[i].writer).collect();
                if writers.is_empty() {
                    continue;
                }
                let h = &mut held[writers[rng.below(writers.len() as u64) as usize]];
                // SAFETY: live writer handle.
                let s = unsafe { zc_seal(h.buf) };
                if h.sealed {
                    check(s, ZC_ERR_ALREADY_SEALED, "double seal");
                    c.misuses += 1;
                } else {
                    check(s, ZC_OK, "seal created");
                    h.sealed = true;
                    if let Some(State::Created { gen, size }) = model.get(&h.key).copied() {
                        model.insert(h.key, State::Sealed { gen, size });
                    }
                }
                s
            }
            // abort a held buffer: fine if unsealed, a status if sealed or a reader
            92..=95 => {
                if held.is_empty() {
                    continue;
                }
                let i = rng.below(held.len() as u64) as usize;
                let h = &held[i];
                let unsealed_writer = h.writer && !h.sealed;
                // SAFETY: live handle; consumed only on ZC_OK, then removed from `held`.
                let s = unsafe { zc_abort(h.buf) };
                if unsealed_writer {
                    check(s, ZC_OK, "abort unsealed");
                    let key = h.key;
                    held.swap_remove(i);
                    if model.contains_key(&key) {
                        model.insert(key, State::Absent);
                    }
                } else {
                    check(s, ZC_ERR_ALREADY_SEALED, "abort sealed");
                    c.misuses += 1;
                }
                s
            }
            // bad arguments: never a crash, always a status, nothing stored changes
            _ => {
                c.misuses += 1;
                let mut b = ptr::null_mut();
                // SAFETY: deliberately invalid arguments the ABI must refuse.
                let s = unsafe {
                    match rng.below(4) {
                        0 => zc_create_buffer(p, ptr::null(), 5, 10, &mut b),
                        1 => zc_create_buffer(p, k, kl, usize::MAX, &mut b),
                        2 => zc_get(p, k, 0, 0, &mut b),
                        _ => zc_get(p, k, kl, -7, &mut b),
                    }
                };
                check(s, ZC_ERR_INVALID_ARGUMENT, "bad argument");
                assert!(b.is_null(), "an out-parameter was written on failure");
                s
            }
        };
        c.by_status[(status as usize).min(11)] += 1;
    }
    for h in held {
        // SAFETY: every remaining handle is live and released once.
        unsafe { zc_release(h.buf) };
    }
    c
}

fn delete_all(pool: &Pool) {
    for id in (0..64).chain((1..=4).flat_map(|t| (0..64).map(move |i| 1000 * t + i))) {
        let key = key_bytes(id);
        // SAFETY: live pool, key slice.
        unsafe { zc_delete(pool.0, key.as_ptr().cast(), key.len()) };
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn live_objects(n: u64, key_len: usize) {
    let key_of = |i: u64| match key_len {
        12 => format!("obj-{i:08}"),
        _ => format!("tenant-a/model-7b/layer-12/kv-block-{i:012}"),
    };
    println!("\n{n} live small objects (64 B each), keys of {} bytes:", key_of(0).len());
    let before = resident_bytes();
    let pool = open(n * 64, n);
    let opened = resident_bytes();
    let started = Instant::now();
    for i in 0..n {
        let key = key_of(i);
        let mut b = ptr::null_mut();
        // SAFETY: live pool, key slice, writable out; the writer is sealed and released.
        unsafe {
            check(zc_create_buffer(pool.0, key.as_ptr().cast(), key.len(), 64, &mut b), ZC_OK, "create");
            check(zc_seal(b), ZC_OK, "seal");
            zc_release(b);
        }
    }
    let filled = resident_bytes();
    let s = stats(&pool);
    assert_eq!(s.object_count, n);
    let pool_data = s.capacity_bytes; // prefaulted at open, so counted in `opened`
    let metadata_at_open = opened.saturating_sub(before).saturating_sub(pool_data);
    let per_object = (filled - opened + metadata_at_open) as f64 / n as f64;
    println!(
        "  created in {:.2} s; metadata: {:.1} MiB at open, {:.1} MiB for the objects (records, index, allocator nodes, keys)",
        started.elapsed().as_secs_f64(),
        metadata_at_open as f64 / (1 << 20) as f64,
        (filled - opened) as f64 / (1 << 20) as f64
    );
    let note =
        if key_len <= 16 { "target: at most 128" } else { "the key, longer than 16 bytes, has its own allocation" };
    println!("  metadata per object beyond its data: {per_object:.0} bytes ({note})");
    for i in 0..n {
        let key = key_of(i);
        // SAFETY: live pool, key slice.
        unsafe { zc_delete(pool.0, key.as_ptr().cast(), key.len()) };
    }
    let s = stats(&pool);
    assert_eq!((s.object_count, s.used_bytes, s.key_count), (0, 0, 0));
    // SAFETY: no handle is left.
    unsafe { zc_pool_close(pool.0) };
    // Give freed heap back to the kernel, so the next measurement starts from what is in use.
    // SAFETY: no allocation is in flight on another thread.
    unsafe { libc::malloc_trim(0) };
}

fn main() {
    let mut ops: u64 = 10_000_000;
    let mut seconds: u64 = 300;
    let mut live: u64 = 1_000_000;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--ops" => ops = w[1].parse().expect("--ops N"),
            "--seconds" => seconds = w[1].parse().expect("--seconds S"),
            "--live" => live = w[1].parse().expect("--live N"),
            _ => {}
        }
    }
    let pool = open(64 << 20, 0);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let next_gen = AtomicU64::new(1);
    let started = Instant::now();
    let counts: Vec<Counts> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (pool, next_gen) = (&pool, &next_gen);
                s.spawn(move || worker(pool, t, ops / 4, deadline, next_gen))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a stress thread failed")).collect()
    });
    let elapsed = started.elapsed();
    delete_all(&pool);
    let s = stats(&pool);
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0), "the pool did not return to empty");
    let total: u64 = counts.iter().map(|c| c.ops).sum();
    let misuses: u64 = counts.iter().map(|c| c.misuses).sum();
    let mut by_status = [0u64; 12];
    for c in &counts {
        for (i, n) in c.by_status.iter().enumerate() {
            by_status[i] += n;
        }
    }
    println!(
        "stress: {total} operations from 4 threads in {:.1} s ({:.2} M ops/s), {misuses} misuses, every answer checked",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64() / 1e6
    );
    let names = [
        "ok",
        "invalid argument",
        "not found",
        "already exists",
        "not sealed",
        "already sealed",
        "out of memory",
        "timeout",
        "pool closed",
        "rdma",
        "system",
        "internal",
    ];
    let shown: Vec<String> =
        by_status.iter().zip(names).filter(|(n, _)| **n > 0).map(|(n, name)| format!("{name} {n}")).collect();
    println!("  statuses: {}", shown.join(", "));
    println!("  after the run: used_bytes 0, object_count 0, key_count 0");
    assert_eq!(by_status[ZC_ERR_INTERNAL as usize], 0, "an internal error happened");
    if total < ops {
        println!("  (stopped by the {seconds} s time limit before {ops} operations)");
    }
    // SAFETY: the threads are done and every handle was released.
    unsafe { zc_pool_close(pool.0) };
    if live > 0 {
        live_objects(live, 12);
        live_objects(live, 48);
    }
    println!("stress: 1 passed, 0 failed");
}
