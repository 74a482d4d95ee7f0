//! Opt-in LRU eviction: only sealed objects nobody holds are evicted, least recently used
//! (sealed or read) first, and only when a create would otherwise fail.

use zcopy::pool::Wait;
use zcopy::{Error, PageMode, Pool, PoolOptions};

const KIB: usize = 1 << 10;

fn pool(size: usize, evict: bool) -> Pool {
    Pool::open(&PoolOptions { size, pages: PageMode::Small, prefault: false, evict_lru: evict, ..Default::default() })
        .unwrap()
}

fn store(pool: &Pool, key: &str, size: usize, byte: u8) {
    let mut b = pool.create(key.as_bytes(), size).unwrap();
    b.as_mut_slice().unwrap().fill(byte);
    b.seal().unwrap();
}

fn present(pool: &Pool, key: &str) -> bool {
    pool.contains(key.as_bytes())
}

#[test]
fn eviction_is_off_by_default_and_a_full_pool_refuses() {
    let p = Pool::open(&PoolOptions { size: 64 * KIB, pages: PageMode::Small, ..Default::default() }).unwrap();
    for i in 0..4 {
        store(&p, &format!("k{i}"), 16 * KIB, i);
    }
    let e = p.create(b"more", 16 * KIB).unwrap_err();
    assert!(matches!(e, Error::PoolFull { .. }), "{e}");
    let s = p.stats();
    assert_eq!((s.evictions, s.creates_refused, s.key_count), (0, 1, 4));
}

#[test]
fn least_recently_used_sealed_object_goes_first_and_a_get_refreshes_it() {
    let p = pool(64 * KIB, true);
    for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
        store(&p, k, 16 * KIB, i as u8);
    }
    drop(p.get(b"a", Wait::Now).unwrap()); // "a" is now the most recently used
    store(&p, "e", 16 * KIB, 9);
    assert!(!present(&p, "b"), "b was the least recently used");
    assert!(present(&p, "a") && present(&p, "c") && present(&p, "d") && present(&p, "e"));
    store(&p, "f", 16 * KIB, 9);
    assert!(!present(&p, "c"));
    store(&p, "g", 16 * KIB, 9);
    assert!(!present(&p, "d"));
    store(&p, "h", 16 * KIB, 9);
    assert!(!present(&p, "a"), "a goes last of the old ones");
    let s = p.stats();
    assert_eq!((s.evictions, s.creates_refused), (4, 0));
    assert_eq!(p.get(b"h", Wait::Now).unwrap().as_slice(), &[9u8; 16 * KIB][..]);
}

#[test]
fn referenced_and_unsealed_objects_are_never_evicted() {
    let p = pool(64 * KIB, true);
    store(&p, "held", 16 * KIB, 1);
    let reader = p.get(b"held", Wait::Now).unwrap();
    let mut unsealed = p.create(b"unsealed", 16 * KIB).unwrap();
    unsealed.as_mut_slice().unwrap().fill(2);
    store(&p, "old", 16 * KIB, 3);
    store(&p, "older-use", 16 * KIB, 4);
    // Needs two slots: only "old" and "older-use" may go.
    let big = p.create(b"big", 32 * KIB).unwrap();
    assert!(!present(&p, "old") && !present(&p, "older-use"));
    assert!(present(&p, "held"));
    assert_eq!(reader.as_slice(), &[1u8; 16 * KIB][..]);
    assert_eq!(unsealed.as_slice(), &[2u8; 16 * KIB][..]);
    unsealed.seal().unwrap();
    drop(big);
    assert_eq!(p.stats().evictions, 2);
}

#[test]
fn when_nothing_can_be_evicted_the_create_fails_naming_the_request_and_largest_block() {
    let p = pool(64 * KIB, true);
    let mut readers = Vec::new();
    for i in 0..4 {
        store(&p, &format!("k{i}"), 16 * KIB, i);
        readers.push(p.get(format!("k{i}").as_bytes(), Wait::Now).unwrap());
    }
    let e = p.create(b"more", 16 * KIB).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::PoolFull { .. }));
    assert!(msg.contains("asked 16 KiB") && msg.contains("largest free block 0 B"), "{msg}");
    let s = p.stats();
    assert_eq!((s.evictions, s.creates_refused, s.key_count), (0, 1, 4));
    drop(readers);
    // Now they are evictable.
    p.create(b"more", 16 * KIB).unwrap().seal().unwrap();
    assert_eq!(p.stats().evictions, 1);
}

#[test]
fn the_object_limit_also_evicts() {
    let p = Pool::open(&PoolOptions {
        size: 64 * KIB,
        pages: PageMode::Small,
        prefault: false,
        evict_lru: true,
        max_objects: 3,
        ..Default::default()
    })
    .unwrap();
    for k in ["a", "b", "c"] {
        store(&p, k, 64, 0);
    }
    store(&p, "d", 64, 0);
    assert!(!present(&p, "a") && present(&p, "d"));
    assert_eq!(p.stats().object_count, 3);
}

#[test]
fn eviction_under_threads_keeps_every_read_intact() {
    let p = pool(256 * KIB, true);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let p = &p;
            s.spawn(move || {
                for i in 0..2000u32 {
                    let key = format!("t{t}-{}", i % 50);
                    let _ = p.delete(key.as_bytes());
                    if let Ok(mut b) = p.create(key.as_bytes(), 4 * KIB) {
                        b.as_mut_slice().unwrap().fill(t ^ (i as u8));
                        b.seal().unwrap();
                    }
                    if let Ok(r) = p.get(key.as_bytes(), Wait::Now) {
                        let first = r.as_slice()[0];
                        assert!(r.as_slice().iter().all(|&x| x == first), "torn object");
                    }
                }
            });
        }
    });
    let s = p.stats();
    assert!(s.evictions > 0, "a 256 KiB pool with 200 x 4 KiB keys must evict");
}

/// Sizes from 64 B to 8 KiB, spread by a small generator so each thread's sequence differs.
fn object_size(thread: u64, i: u64) -> usize {
    let mut x = (thread << 32 | i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    64 + (x % (8 * KIB as u64 - 63)) as usize
}

/// `threads` threads each create, fill, seal and release `creates` objects of 64 B–8 KiB in a
/// 1 MiB evicting pool that nobody else holds anything of, and count the creates refused for
/// lack of room (with the first refusal's message). Stops early once `budget` has passed, so a
/// slow (debug, loaded) machine still finishes; answers how many creates ran.
fn churn(threads: u64, max_objects: usize, creates: u64, budget: std::time::Duration) -> (u64, u64, Option<String>) {
    let p = Pool::open(&PoolOptions {
        size: 1 << 20,
        pages: PageMode::Small,
        prefault: false,
        evict_lru: true,
        max_objects,
        ..Default::default()
    })
    .unwrap();
    let start = std::time::Instant::now();
    let results: Vec<(u64, u64, Option<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let p = &p;
                s.spawn(move || {
                    let (mut done, mut refused, mut first) = (0, 0, None);
                    for i in 0..creates {
                        if i % 256 == 0 && start.elapsed() > budget {
                            break;
                        }
                        let key = format!("t{t}-{i}");
                        match p.create(key.as_bytes(), object_size(t, i)) {
                            Ok(mut b) => {
                                b.as_mut_slice().unwrap().fill(i as u8);
                                b.seal().unwrap();
                            }
                            Err(e @ (Error::PoolFull { .. } | Error::ObjectLimit { .. })) => {
                                refused += 1;
                                first.get_or_insert_with(|| format!("thread {t}, create {i}: {e}"));
                            }
                            Err(e) => panic!("thread {t}, create {i}: {e}"),
                        }
                        done += 1;
                    }
                    (done, refused, first)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let s = p.stats();
    let done: u64 = results.iter().map(|r| r.0).sum();
    let refused: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!(s.creates_refused, refused, "the pool counts the refusals the callers saw");
    assert!(s.evictions > 0, "a 1 MiB pool filled with {done} objects must have evicted");
    (done, refused, results.into_iter().find_map(|r| r.2))
}

/// Creates per thread, and the time the churn tests may take (each stops at whichever comes first).
const CHURN_CREATES: u64 = 100_000;
const CHURN_BUDGET: std::time::Duration = std::time::Duration::from_secs(4);

fn assert_no_refusal(threads: u64, max_objects: usize) {
    let (done, refused, first) = churn(threads, max_objects, CHURN_CREATES, CHURN_BUDGET);
    assert!(done >= 1000 * threads, "only {done} creates ran");
    assert_eq!(refused, 0, "{refused} of {done} creates refused; first: {first:?}");
}

#[test]
fn two_threads_churning_a_size_bound_evicting_pool_are_never_refused() {
    assert_no_refusal(2, 0);
}

#[test]
fn four_threads_churning_a_size_bound_evicting_pool_are_never_refused() {
    assert_no_refusal(4, 0);
}

#[test]
fn two_threads_churning_an_evicting_pool_of_16_objects_are_never_refused() {
    assert_no_refusal(2, 16);
}

#[test]
fn four_threads_churning_an_evicting_pool_of_16_objects_are_never_refused() {
    assert_no_refusal(4, 16);
}

/// Runs `creates` creates of `size` bytes on each of two threads, all expected to be refused;
/// answers the refusals' messages (one per thread) and how long the slower thread took.
fn refused_from_two_threads(p: &Pool, size: usize, creates: u32) -> (Vec<String>, std::time::Duration) {
    let start = std::time::Instant::now();
    let messages = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    let mut last = String::new();
                    for i in 0..creates {
                        let e = p.create(format!("refused-{t}-{i}").as_bytes(), size).unwrap_err();
                        assert!(matches!(e, Error::PoolFull { .. } | Error::ObjectLimit { .. }), "{e}");
                        last = e.to_string();
                    }
                    last
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    (messages, start.elapsed())
}

#[test]
fn a_full_pool_without_eviction_refuses_two_threads_at_once_with_out_of_memory() {
    let p = pool(64 * KIB, false);
    for i in 0..16 {
        store(&p, &format!("k{i}"), 4 * KIB, i);
    }
    let (messages, took) = refused_from_two_threads(&p, 64, 1000);
    assert!(messages.iter().all(|m| m.starts_with("pool full: asked 64 B, largest free block 0 B")), "{messages:?}");
    assert!(took < std::time::Duration::from_secs(5), "2000 refusals took {took:?}");
    let s = p.stats();
    assert_eq!((s.creates_refused, s.evictions, s.key_count), (2000, 0, 16));

    let limited = Pool::open(&PoolOptions {
        size: 64 * KIB,
        pages: PageMode::Small,
        prefault: false,
        max_objects: 16,
        ..Default::default()
    })
    .unwrap();
    for i in 0..16 {
        store(&limited, &format!("k{i}"), 64, i);
    }
    let (messages, _) = refused_from_two_threads(&limited, 64, 1000);
    assert!(messages.iter().all(|m| m.starts_with("object limit reached: 16 objects live")), "{messages:?}");
    assert_eq!(limited.stats().creates_refused, 2000);
}

#[test]
fn an_evicting_pool_whose_objects_are_all_held_refuses_two_threads_at_once() {
    let p = pool(64 * KIB, true);
    let mut readers = Vec::new();
    for i in 0..4 {
        store(&p, &format!("k{i}"), 16 * KIB, i);
        readers.push(p.get(format!("k{i}").as_bytes(), Wait::Now).unwrap());
    }
    let (messages, took) = refused_from_two_threads(&p, 16 * KIB, 500);
    assert!(messages.iter().all(|m| m.starts_with("pool full: asked 16 KiB, largest free block 0 B")), "{messages:?}");
    assert!(took < std::time::Duration::from_secs(5), "1000 refusals took {took:?}");
    let s = p.stats();
    assert_eq!((s.creates_refused, s.evictions, s.key_count), (1000, 0, 4));
    assert!(readers.iter().enumerate().all(|(i, r)| r.as_slice() == &[i as u8; 16 * KIB][..]));
}
