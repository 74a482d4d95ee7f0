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
