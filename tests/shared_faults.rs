//! Fault injection: worker processes run random operations on one shared pool and are SIGKILLed
//! at random moments (most kills land inside a call, many while it holds the pool's lock), and
//! new ones replace them. This process is the checker: it keeps sealed objects of its own and
//! verifies their bytes throughout, and every object a worker reads is verified by that worker
//! (a mismatch exits it with a status the checker fails on). At the end, after reclaiming and
//! deleting everything, the pool must be empty and every invariant must hold.
//!
//! `ZCOPY_FAULT_KILLS` sets the number of kills (default 1000; the long run uses 10000).

mod common;

use std::time::{Duration, Instant};

use common::children::{role, say, Child};
use zcopy::pool::Wait;
use zcopy::{Buffer, Error, Pool, PoolOptions, RdmaMode};

/// Keys the workers use: a small space, so they collide, wait on each other and delete each
/// other's objects.
const WORKER_KEYS: u64 = 200;
const CHECKER_KEYS: usize = 32;
const WORKERS: usize = 3;
/// Exit status of a worker that read bytes that are not what their creator wrote.
const CORRUPT: i32 = 3;

fn options() -> PoolOptions {
    PoolOptions { rdma: RdmaMode::Off, prefault: false, ..Default::default() }
}

/// The bytes of every object: a function of its key and length, so any reader can verify them.
fn pattern(key: &[u8], len: usize) -> Vec<u8> {
    let seed = key.iter().fold(0x5bu8, |a, &b| a.wrapping_mul(33) ^ b);
    (0..len).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn verify(buf: &Buffer) {
    let parts = buf.part_count();
    let ok = if parts > 0 {
        (0..parts).all(|i| {
            let part = buf.part(i).expect("part");
            part == pattern(buf.key(), part.len()).as_slice()
        })
    } else {
        buf.as_slice() == pattern(buf.key(), buf.len()).as_slice()
    };
    if !ok {
        eprintln!(
            "object {:?} of {} bytes does not hold its creator's bytes",
            String::from_utf8_lossy(buf.key()),
            buf.len()
        );
        std::process::exit(CORRUPT);
    }
}

/// One worker: random operations until killed.
fn work(name: &str) -> ! {
    let pool = Pool::attach(name, &options()).expect("attach");
    let mut rng = Rng(u64::from(std::process::id()) << 20 | 0x9e37);
    let mut held: Vec<Buffer> = Vec::new();
    // Half the workers keep over 4096 references (on one of the checker's objects): a delete of
    // an object such a worker read looks for references without the pool's lock, then frees
    // under it (the long-ledger path of Store::delete), so kills land there too.
    let _padding: Vec<Buffer> = if std::process::id() % 2 == 0 {
        (0..4200).map(|_| pool.get(b"checker-0", Wait::Now).expect("the checker's object")).collect()
    } else {
        Vec::new()
    };
    say("ready");
    loop {
        let key = format!("w-{}", rng.below(WORKER_KEYS));
        let key = key.as_bytes();
        match rng.below(10) {
            0..=2 => {
                // Mostly small, so that most of a worker's time is spent inside the pool's calls.
                let len = match rng.below(16) {
                    0 => 0,
                    1 => 4096,
                    2 => rng.below(64 << 10) as usize,
                    _ => rng.below(200) as usize,
                };
                let made = if rng.below(4) == 0 {
                    let sizes = [rng.below(100) as usize, rng.below(300) as usize];
                    pool.create_parts(key, &sizes).map(|mut b| {
                        for i in 0..2 {
                            let part = b.part_mut(i).expect("part");
                            let bytes = pattern(key, part.len());
                            part.copy_from_slice(&bytes);
                        }
                        b
                    })
                } else {
                    pool.create(key, len).map(|mut b| {
                        b.as_mut_slice().expect("writable").copy_from_slice(&pattern(key, len));
                        b
                    })
                };
                match made {
                    Ok(mut b) => match rng.below(8) {
                        0 => drop(b.abort()),
                        1 => drop(b),
                        _ => {
                            b.seal().expect("seal");
                            if held.len() < 16 {
                                held.push(b);
                            }
                        }
                    },
                    Err(Error::AlreadyExists(_) | Error::PoolFull { .. } | Error::ObjectLimit { .. }) => {}
                    Err(e) => panic!("create: {e}"),
                }
            }
            3..=5 => {
                let wait =
                    if rng.below(3) == 0 { Wait::For(Duration::from_micros(rng.below(2000))) } else { Wait::Now };
                match pool.get(key, wait) {
                    Ok(b) => {
                        verify(&b);
                        if held.len() < 16 {
                            held.push(b);
                        }
                    }
                    Err(Error::NotFound(_) | Error::NotSealed(_) | Error::Timeout { .. }) => {}
                    Err(e) => panic!("get: {e}"),
                }
            }
            6 => match pool.delete(key) {
                Ok(()) | Err(Error::NotFound(_) | Error::NotSealed(_)) => {}
                Err(e) => panic!("delete: {e}"),
            },
            7 | 8 => {
                if !held.is_empty() {
                    let i = rng.below(held.len() as u64) as usize;
                    verify(&held[i]);
                    held.swap_remove(i);
                }
            }
            _ => {
                let _ = pool.contains(key);
                let _ = pool.stats();
            }
        }
    }
}

#[test]
fn workers_sigkilled_at_random_moments_lose_no_sealed_bytes_and_leak_nothing() {
    if let Some(name) = role("worker") {
        work(&name);
    }
    let kills: u64 = std::env::var("ZCOPY_FAULT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let name = format!("t{}-faults", std::process::id());
    let _ = Pool::unlink(&name, None);
    let pool = Pool::open(&PoolOptions { size: 16 << 20, max_objects: 4096, name: Some(name.clone()), ..options() })
        .expect("create the pool");
    struct Unlink(String);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = Pool::unlink(&self.0, None);
        }
    }
    let _unlink = Unlink(name.clone());

    // The checker's own objects, and a read reference on every other one.
    let mut mine = Vec::new();
    for i in 0..CHECKER_KEYS {
        let key = format!("checker-{i}");
        let len = 1 + i * 997;
        let mut b = pool.create(key.as_bytes(), len).unwrap();
        b.as_mut_slice().unwrap().copy_from_slice(&pattern(key.as_bytes(), len));
        b.seal().unwrap();
        if i % 2 == 0 {
            mine.push(b);
        }
    }
    let check_mine = |pool: &Pool, mine: &[Buffer]| {
        for b in mine {
            verify(b);
        }
        for i in 0..CHECKER_KEYS {
            let b = pool.get(format!("checker-{i}").as_bytes(), Wait::Now).expect("the checker's object is there");
            assert_eq!(b.len(), 1 + i * 997);
            verify(&b);
        }
    };

    let spawn = || {
        let mut w =
            Child::spawn("workers_sigkilled_at_random_moments_lose_no_sealed_bytes_and_leak_nothing", "worker", &name);
        w.expect("ready");
        w
    };
    let mut workers: Vec<Child> = (0..WORKERS).map(|_| spawn()).collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    let started = Instant::now();
    for kill in 0..kills {
        let i = rng.below(WORKERS as u64) as usize;
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        workers[i].kill();
        workers[i] = spawn();
        if kill % 100 == 99 {
            check_mine(&pool, &mine);
            pool.check().unwrap_or_else(|e| panic!("after {} kills: {e}", kill + 1));
        }
    }
    for w in &mut workers {
        w.kill();
    }
    drop(workers);
    pool.reclaim().unwrap();
    check_mine(&pool, &mine);
    pool.check().unwrap();
    let stats = pool.stats();
    eprintln!(
        "{kills} kills in {:.1} s: {} processes reclaimed, {} lock repairs, {} objects live at the end",
        started.elapsed().as_secs_f64(),
        stats.processes_reclaimed,
        stats.lock_repairs,
        stats.object_count
    );
    assert_eq!(stats.processes_reclaimed, kills + WORKERS as u64, "every killed worker was reclaimed");
    assert_eq!(stats.processes_attached, 1);

    drop(mine);
    for i in 0..WORKER_KEYS {
        let _ = pool.delete(format!("w-{i}").as_bytes());
    }
    for i in 0..CHECKER_KEYS {
        pool.delete(format!("checker-{i}").as_bytes()).unwrap();
    }
    let end = pool.stats();
    assert_eq!((end.used_bytes, end.object_count, end.key_count), (0, 0, 0), "{end:?}");
    assert_eq!(end.largest_free_block, end.capacity_bytes, "every block merged back");
    pool.check().unwrap();
}
