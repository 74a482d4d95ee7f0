//! Integration tests of the safe Rust API (`zcopy::Pool`, `zcopy::Buffer`) against the lifecycle
//! contract in DESIGN.md and the doc comments in `src/pool.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zcopy::pool::Wait;
use zcopy::{Error, PageMode, Pool, PoolOptions};

const MIB: usize = 1 << 20;

fn pool_with(size: usize, max_objects: usize) -> Pool {
    Pool::open(&PoolOptions { size, pages: PageMode::Small, max_objects, ..Default::default() })
        .expect("open a small pool")
}

fn small_pool() -> Pool {
    pool_with(8 * MIB, 0)
}

/// A recognisable fill: byte `i` of a value tagged `tag`.
fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag)).collect()
}

/// Creates, fills with `data` through the writable slice, seals.
fn put_via_buffer(pool: &Pool, key: &[u8], data: &[u8]) -> zcopy::Buffer {
    let mut buf = pool.create(key, data.len()).expect("create");
    buf.as_mut_slice().expect("fresh buffer is writable").copy_from_slice(data);
    buf.seal().expect("seal");
    buf
}

// ---------------------------------------------------------------------------------------------
// Round trip and zero copy
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_reader_sees_writers_bytes_at_the_same_aligned_address() {
    let pool = small_pool();
    let data = pattern(7, 1000);
    let mut w = pool.create(b"obj", data.len()).unwrap();
    assert_eq!(w.len(), 1000);
    assert_eq!(w.key(), b"obj");
    assert!(!w.is_sealed());
    let wptr = w.as_mut_ptr().expect("creator's unsealed buffer is writable");
    assert_eq!(wptr as usize % 64, 0, "data pointer must be 64-byte aligned");
    assert_eq!(wptr as *const u8, w.as_ptr());
    let (base, len) = pool.region();
    assert!(wptr as usize >= base as usize && wptr as usize + 1000 <= base as usize + len, "pointer inside region");
    {
        let s = w.as_mut_slice().unwrap();
        assert_eq!(s.len(), 1000);
        s.copy_from_slice(&data);
    }
    w.seal().unwrap();
    assert!(w.is_sealed());
    assert!(w.as_mut_ptr().is_none(), "no writable pointer after seal");
    assert!(w.as_mut_slice().is_none(), "no writable slice after seal");
    assert_eq!(w.as_slice(), &data[..], "writer's buffer stays a read reference");

    let r = pool.get(b"obj", Wait::Now).unwrap();
    assert_eq!(r.as_ptr(), wptr as *const u8, "zero copy: reader sees the writer's address");
    assert_eq!(r.offset(), w.offset());
    assert_eq!(r.as_slice(), &data[..]);
    assert_eq!(r.len(), 1000);
    assert!(r.is_sealed());
    let mut r2 = pool.get(b"obj", Wait::For(Duration::from_millis(10))).unwrap();
    assert!(r2.as_mut_ptr().is_none(), "get buffers are never writable");
    assert!(r2.as_mut_slice().is_none(), "get buffers are never writable");
    assert_eq!(r2.as_ptr(), wptr as *const u8);
    assert!(pool.contains(b"obj"));
}

#[test]
fn every_data_pointer_is_64_byte_aligned_for_odd_sizes() {
    let pool = small_pool();
    let mut held = Vec::new();
    for (i, size) in [1usize, 3, 63, 64, 65, 100, 127, 129, 4095, 4097].into_iter().enumerate() {
        let b = pool.create(format!("k{i}").as_bytes(), size).unwrap();
        assert_eq!(b.as_ptr() as usize % 64, 0, "size {size}");
        assert_eq!(b.len(), size);
        held.push(b);
    }
    let s = pool.stats();
    assert_eq!(s.used_bytes % 64, 0);
    let expected: u64 = [1u64, 3, 63, 64, 65, 100, 127, 129, 4095, 4097].iter().map(|n| n.div_ceil(64) * 64).sum();
    assert_eq!(s.used_bytes, expected);
}

#[test]
fn size_zero_object_is_a_valid_empty_value() {
    let pool = small_pool();
    let mut w = pool.create(b"empty", 0).unwrap();
    assert_eq!(w.len(), 0);
    assert!(w.is_empty());
    assert_eq!(w.as_ptr() as usize % 64, 0);
    assert_eq!(w.as_mut_slice().map(|s| s.len()), Some(0));
    w.seal().unwrap();
    let r = pool.get(b"empty", Wait::Now).unwrap();
    assert_eq!(r.len(), 0);
    assert!(r.as_slice().is_empty());
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 1, 1));
    let mut dst = [0xAAu8; 4];
    assert_eq!(pool.get_into(b"empty", Wait::Now, &mut dst).unwrap(), 0);
    assert_eq!(dst, [0xAA; 4]);
    assert_eq!(pool.get_into(b"empty", Wait::Now, &mut []).unwrap(), 0);
    drop((w, r));
    pool.delete(b"empty").unwrap();
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0));
    pool.put(b"empty2", &[]).unwrap();
    assert!(pool.contains(b"empty2"));
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

#[test]
fn keys_with_nul_bytes_are_distinct_binary_keys() {
    let pool = small_pool();
    let keys: [&[u8]; 5] = [b"a\0b", b"a\0c", b"a", b"a\0", b"\0"];
    for (i, k) in keys.iter().enumerate() {
        pool.put(k, &pattern(i as u8, 10 + i)).unwrap();
    }
    assert_eq!(pool.stats().key_count, 5);
    for (i, k) in keys.iter().enumerate() {
        let b = pool.get(k, Wait::Now).unwrap();
        assert_eq!(b.key(), *k);
        assert_eq!(b.as_slice(), &pattern(i as u8, 10 + i)[..], "key {k:?}");
    }
    pool.delete(b"a\0").unwrap();
    assert!(!pool.contains(b"a\0"));
    assert!(pool.contains(b"a"));
    assert!(pool.contains(b"a\0b"));
}

#[test]
fn keys_differing_only_in_length_are_distinct() {
    let pool = small_pool();
    for n in 1..=4usize {
        pool.put(&vec![b'k'; n], &[n as u8; 3]).unwrap();
    }
    for n in 1..=4usize {
        assert_eq!(pool.get(&vec![b'k'; n], Wait::Now).unwrap().as_slice(), &[n as u8; 3]);
    }
    assert!(matches!(pool.get(&[b'k'; 5], Wait::Now), Err(Error::NotFound(_))));
}

#[test]
fn empty_and_over_long_keys_are_invalid_arguments_and_4096_bytes_works() {
    let pool = small_pool();
    let long = vec![b'x'; 4097];
    for key in [&b""[..], &long[..]] {
        assert!(matches!(pool.create(key, 8), Err(Error::InvalidArgument(_))), "create {}", key.len());
        assert!(matches!(pool.get(key, Wait::Now), Err(Error::InvalidArgument(_))), "get {}", key.len());
        assert!(
            matches!(pool.get(key, Wait::For(Duration::from_millis(5))), Err(Error::InvalidArgument(_))),
            "get For {}",
            key.len()
        );
        assert!(matches!(pool.delete(key), Err(Error::InvalidArgument(_))), "delete {}", key.len());
        assert!(matches!(pool.put(key, b"v"), Err(Error::InvalidArgument(_))), "put {}", key.len());
        let mut dst = [0u8; 4];
        assert!(matches!(pool.get_into(key, Wait::Now, &mut dst), Err(Error::InvalidArgument(_))));
        assert!(!pool.contains(key));
    }
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0), "rejected calls hold nothing");

    let max = vec![b'y'; 4096];
    assert_eq!(max.len(), zcopy::pool::MAX_KEY_LEN);
    put_via_buffer(&pool, &max, b"max key");
    let b = pool.get(&max, Wait::Now).unwrap();
    assert_eq!(b.as_slice(), b"max key");
    assert_eq!(b.key(), &max[..]);
    drop(b);
    pool.delete(&max).unwrap();
    assert!(!pool.contains(&max));
}

// ---------------------------------------------------------------------------------------------
// States: exists, not sealed, not found, timeouts, waiting
// ---------------------------------------------------------------------------------------------

#[test]
fn create_of_an_existing_created_or_sealed_key_is_already_exists() {
    let pool = small_pool();
    let w = pool.create(b"k", 16).unwrap();
    assert!(matches!(pool.create(b"k", 16), Err(Error::AlreadyExists(_))));
    assert!(matches!(pool.put(b"k", b"x"), Err(Error::AlreadyExists(_))));
    let mut w = w;
    w.as_mut_slice().unwrap().copy_from_slice(&[5; 16]);
    w.seal().unwrap();
    assert!(matches!(pool.create(b"k", 16), Err(Error::AlreadyExists(_))));
    assert!(matches!(pool.put(b"k", b"x"), Err(Error::AlreadyExists(_))));
    assert_eq!(pool.get(b"k", Wait::Now).unwrap().as_slice(), &[5; 16], "failed create left the value alone");
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (64, 1, 1));
}

#[test]
fn get_now_is_not_sealed_for_created_and_not_found_for_absent() {
    let pool = small_pool();
    let _w = pool.create(b"created", 8).unwrap();
    assert!(matches!(pool.get(b"created", Wait::Now), Err(Error::NotSealed(_))));
    assert!(!pool.contains(b"created"), "unsealed keys are invisible");
    assert!(matches!(pool.get(b"absent", Wait::Now), Err(Error::NotFound(_))));
    assert!(!pool.contains(b"absent"));
}

#[test]
fn get_with_timeout_on_unsealed_or_absent_key_times_out_after_the_wait() {
    let pool = small_pool();
    let _w = pool.create(b"created", 8).unwrap();
    for key in [&b"created"[..], b"absent"] {
        let t = Instant::now();
        let r = pool.get(key, Wait::For(Duration::from_millis(30)));
        let elapsed = t.elapsed();
        assert!(matches!(r, Err(Error::Timeout { ms: 30, .. })), "{key:?}: {r:?}");
        assert!(elapsed >= Duration::from_millis(30), "{key:?} returned after {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{key:?} returned after {elapsed:?}");
    }
}

#[test]
fn wait_from_millis_follows_the_c_convention() {
    assert_eq!(Wait::from_millis(0).unwrap(), Wait::Now);
    assert_eq!(Wait::from_millis(-1).unwrap(), Wait::Forever);
    assert_eq!(Wait::from_millis(25).unwrap(), Wait::For(Duration::from_millis(25)));
    assert!(matches!(Wait::from_millis(-2), Err(Error::InvalidArgument(_))));
}

#[test]
fn forever_getter_in_another_thread_is_woken_by_seal() {
    let pool = small_pool();
    let data = pattern(3, 4096);
    let (got, wptr) = std::thread::scope(|s| {
        let getter = s.spawn(|| {
            let b = pool.get(b"later", Wait::Forever).expect("woken by seal");
            (b.as_ptr() as usize, b.as_slice().to_vec(), Instant::now())
        });
        std::thread::sleep(Duration::from_millis(30));
        let mut w = pool.create(b"later", data.len()).unwrap();
        w.as_mut_slice().unwrap().copy_from_slice(&data);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!getter.is_finished(), "getter must not return before seal");
        let wptr = w.as_ptr() as usize;
        let sealing = Instant::now();
        w.seal().unwrap();
        (getter.join().unwrap(), (wptr, sealing))
    });
    let (wptr, sealing) = wptr;
    assert_eq!(got.0, wptr, "the woken getter sees the writer's address");
    assert_eq!(got.1, data);
    // Causal, not timed: the get returned after the seal began (a late-scheduled getter thread
    // on a busy machine waits less wall time, never less than that).
    assert!(got.2 >= sealing, "the getter returned before the seal");
}

// ---------------------------------------------------------------------------------------------
// Abort, release, seal twice
// ---------------------------------------------------------------------------------------------

#[test]
fn dropping_an_unsealed_buffer_aborts_it_and_frees_its_memory() {
    let pool = small_pool();
    let w = pool.create(b"tmp", MIB).unwrap();
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (MIB as u64, 1, 1));
    drop(w);
    assert!(matches!(pool.get(b"tmp", Wait::Now), Err(Error::NotFound(_))));
    assert!(matches!(pool.delete(b"tmp"), Err(Error::NotFound(_))));
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0));
    // The key can be created again.
    let w = pool.create(b"tmp", 100).unwrap();
    assert_eq!(pool.stats().used_bytes, 128);
    assert!(w.abort().is_ok(), "explicit abort of an unsealed buffer");
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0));
    assert!(matches!(pool.get(b"tmp", Wait::Now), Err(Error::NotFound(_))));
}

#[test]
fn abort_on_a_sealed_buffer_fails_and_gives_it_back_readable() {
    let pool = small_pool();
    let data = pattern(9, 300);
    let w = put_via_buffer(&pool, b"k", &data);
    let (e, w) = match w.abort() {
        Err(pair) => pair,
        Ok(()) => panic!("abort of a sealed buffer must fail"),
    };
    assert!(matches!(e, Error::AlreadySealed(_)), "{e:?}");
    assert_eq!(w.as_slice(), &data[..], "buffer given back untouched");
    assert!(pool.contains(b"k"));
    assert_eq!(pool.get(b"k", Wait::Now).unwrap().as_slice(), &data[..]);
    // A reader's buffer cannot be aborted either.
    let r = pool.get(b"k", Wait::Now).unwrap();
    match r.abort() {
        Err((Error::AlreadySealed(_), r)) => assert_eq!(r.as_slice(), &data[..]),
        other => panic!("abort of a get buffer: {:?}", other.map_err(|(e, _)| e)),
    }
    drop(w);
    assert!(pool.contains(b"k"), "releasing the sealed writer does not remove the key");
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (320, 1, 1));
}

#[test]
fn sealing_twice_or_sealing_a_get_buffer_is_already_sealed() {
    let pool = small_pool();
    let mut w = pool.create(b"k", 10).unwrap();
    w.seal().unwrap();
    assert!(matches!(w.seal(), Err(Error::AlreadySealed(_))));
    let mut r = pool.get(b"k", Wait::Now).unwrap();
    assert!(matches!(r.seal(), Err(Error::AlreadySealed(_))));
    assert!(pool.contains(b"k"));
}

// ---------------------------------------------------------------------------------------------
// Delete
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_while_referenced_removes_key_at_once_and_frees_at_last_release() {
    let pool = small_pool();
    let old = pattern(1, 1000);
    let w = put_via_buffer(&pool, b"k", &old);
    let r = pool.get(b"k", Wait::Now).unwrap();
    let old_ptr = r.as_ptr();
    assert_eq!(pool.stats().used_bytes, 1024);

    pool.delete(b"k").unwrap();
    assert!(!pool.contains(b"k"));
    assert!(matches!(pool.get(b"k", Wait::Now), Err(Error::NotFound(_))));
    assert!(matches!(pool.delete(b"k"), Err(Error::NotFound(_))));
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (1024, 1, 0), "memory held by readers");

    // Re-create under the same key with new content.
    let new = pattern(2, 500);
    let w2 = put_via_buffer(&pool, b"k", &new);
    assert_ne!(w2.as_ptr(), old_ptr, "new object must not reuse memory still referenced");
    assert_eq!(pool.get(b"k", Wait::Now).unwrap().as_slice(), &new[..]);
    assert_eq!(r.as_slice(), &old[..], "old reader keeps the old bytes");
    assert_eq!(w.as_slice(), &old[..], "old writer keeps the old bytes");
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (1024 + 512, 2, 1));

    drop(w);
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count), (1024 + 512, 2), "one reference still held");
    assert_eq!(r.as_slice(), &old[..]);
    drop(r);
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (512, 1, 1), "freed at the last release");
    drop(w2);
    assert_eq!(pool.get(b"k", Wait::Now).unwrap().as_slice(), &new[..]);
}

#[test]
fn delete_of_unsealed_is_not_sealed_and_of_absent_is_not_found() {
    let pool = small_pool();
    let w = pool.create(b"k", 8).unwrap();
    assert!(matches!(pool.delete(b"k"), Err(Error::NotSealed(_))));
    assert!(matches!(pool.create(b"k", 8), Err(Error::AlreadyExists(_))), "delete left the unsealed key alone");
    assert!(matches!(pool.delete(b"nope"), Err(Error::NotFound(_))));
    drop(w);
    assert!(matches!(pool.delete(b"k"), Err(Error::NotFound(_))));
}

// ---------------------------------------------------------------------------------------------
// Capacity limits
// ---------------------------------------------------------------------------------------------

#[test]
fn pool_full_reports_the_request_and_recovers_after_deletes() {
    let pool = small_pool();
    let mut n = 0usize;
    let err = loop {
        match pool.put(format!("big{n}").as_bytes(), &vec![n as u8; MIB]) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n <= 8, "an 8 MiB pool cannot hold more than eight 1 MiB objects");
    };
    assert!(n >= 6, "only {n} MiB objects fit in an 8 MiB pool");
    match &err {
        Error::PoolFull { requested, largest_free, used, capacity } => {
            assert_eq!(*requested, MIB as u64);
            assert_eq!(*capacity, 8 * MIB as u64);
            assert_eq!(*used, (n * MIB) as u64);
            assert!(*largest_free < MIB as u64);
        }
        other => panic!("expected PoolFull, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("pool full: asked"), "{msg}");
    assert!(msg.contains("1 MiB"), "{msg}");
    // The failed create left no trace.
    assert!(matches!(pool.get(format!("big{n}").as_bytes(), Wait::Now), Err(Error::NotFound(_))));
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), ((n * MIB) as u64, n as u64, n as u64));

    pool.delete(b"big0").unwrap();
    pool.delete(b"big1").unwrap();
    pool.put(b"again", &vec![0xEE; MIB]).unwrap();
    assert_eq!(pool.get(b"again", Wait::Now).unwrap().as_slice(), &vec![0xEE; MIB][..]);
    for i in 2..n {
        let b = pool.get(format!("big{i}").as_bytes(), Wait::Now).unwrap();
        assert!(b.as_slice().iter().all(|&x| x == i as u8), "object big{i} intact");
    }
}

#[test]
fn size_larger_than_capacity_is_invalid_argument() {
    let pool = small_pool();
    assert!(matches!(pool.create(b"huge", 8 * MIB + 1), Err(Error::InvalidArgument(_))));
    assert!(matches!(pool.create(b"huge", usize::MAX), Err(Error::InvalidArgument(_))));
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0));
}

#[test]
fn largest_free_block_can_be_created_right_now() {
    let pool = small_pool();
    let lf = pool.stats().largest_free_block;
    assert!(lf > 0 && lf <= 8 * MIB as u64, "{lf}");
    let b = pool.create(b"lf", lf as usize).expect("a create of largest_free_block must succeed");
    drop(b);
    // Fragment, then try again.
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(pool.create(format!("f{i}").as_bytes(), 700 * 1024).unwrap());
    }
    held.remove(3);
    held.remove(5);
    let lf = pool.stats().largest_free_block;
    assert!(lf > 0);
    let b = pool.create(b"lf2", lf as usize).expect("a create of largest_free_block must succeed");
    assert_eq!(b.len() as u64, lf);
}

#[test]
fn largest_free_block_is_exact_and_a_create_of_any_size_up_to_it_fits() {
    // One 64-byte object at the start of a 1 MiB pool leaves a free range of 1 MiB - 64 bytes;
    // requests just below it sit in the same size class of the allocator and must still fit.
    let pool = pool_with(MIB, 0);
    let _first = pool.create(b"first", 64).unwrap();
    let lf = pool.stats().largest_free_block as usize;
    assert_eq!(lf, MIB - 64);
    for size in [lf, lf - 1, lf - 64, lf - 4096, lf / 2 + 1] {
        let b = pool.create(b"big", size).unwrap_or_else(|e| panic!("{size} bytes of {lf} free: {e}"));
        assert_eq!(b.len(), size);
    }
    match pool.create(b"big", lf + 1).map(|_| ()).unwrap_err() {
        Error::PoolFull { requested, largest_free, .. } => {
            assert_eq!((requested, largest_free), (lf as u64 + 1, lf as u64))
        }
        e => panic!("expected PoolFull, got {e}"),
    }
}

#[test]
fn max_objects_limits_live_objects_including_deleted_but_referenced() {
    let pool = pool_with(8 * MIB, 3);
    assert_eq!(pool.stats().max_objects, 3);
    pool.put(b"a", b"1").unwrap();
    pool.put(b"b", &[]).unwrap();
    let c = pool.create(b"c", 100).unwrap();
    let err = pool.create(b"d", 1).unwrap_err();
    assert!(matches!(err, Error::ObjectLimit { limit: 3 }), "{err:?}");
    assert!(err.to_string().contains("object limit"), "{err}");
    assert!(matches!(pool.put(b"d", b"x"), Err(Error::ObjectLimit { .. })));
    assert!(matches!(pool.get(b"d", Wait::Now), Err(Error::NotFound(_))));

    drop(c); // abort frees a slot
    pool.put(b"d", b"4").unwrap();

    let held = pool.get(b"a", Wait::Now).unwrap();
    pool.delete(b"a").unwrap();
    assert!(
        matches!(pool.create(b"e", 1), Err(Error::ObjectLimit { limit: 3 })),
        "a deleted object still referenced keeps its slot"
    );
    assert_eq!(held.as_slice(), b"1");
    drop(held);
    pool.put(b"e", b"5").unwrap();
    let s = pool.stats();
    assert_eq!((s.object_count, s.key_count), (3, 3));
}

// ---------------------------------------------------------------------------------------------
// One-copy put / get_into
// ---------------------------------------------------------------------------------------------

#[test]
fn put_and_get_into_round_trip_and_small_destination_is_invalid_argument() {
    let pool = small_pool();
    let data = pattern(4, 10_000);
    pool.put(b"p", &data).unwrap();
    assert!(pool.contains(b"p"));

    let mut big = vec![0x55u8; 20_000];
    assert_eq!(pool.get_into(b"p", Wait::Now, &mut big).unwrap(), 10_000);
    assert_eq!(&big[..10_000], &data[..]);
    assert!(big[10_000..].iter().all(|&b| b == 0x55), "bytes past the object untouched");

    let mut exact = vec![0u8; 10_000];
    assert_eq!(pool.get_into(b"p", Wait::For(Duration::from_millis(5)), &mut exact).unwrap(), 10_000);
    assert_eq!(exact, data);

    let mut small = vec![0x77u8; 9_999];
    assert!(matches!(pool.get_into(b"p", Wait::Now, &mut small), Err(Error::InvalidArgument(_))));
    assert!(small.iter().all(|&b| b == 0x77), "failed get_into writes nothing");
    assert!(matches!(pool.get_into(b"absent", Wait::Now, &mut big), Err(Error::NotFound(_))));

    // put is zero-copy visible: a get sees the same bytes; get_into holds no reference afterwards.
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (10_048, 1, 1));
    pool.delete(b"p").unwrap();
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0), "get_into released its reference");
}

// ---------------------------------------------------------------------------------------------
// Close
// ---------------------------------------------------------------------------------------------

#[test]
fn after_close_every_operation_is_pool_closed() {
    let pool = small_pool();
    pool.put(b"sealed", b"v").unwrap();
    assert!(!pool.is_closed());
    pool.close();
    assert!(pool.is_closed());
    assert!(matches!(pool.create(b"new", 8), Err(Error::PoolClosed)));
    assert!(matches!(pool.create(b"sealed", 8), Err(Error::PoolClosed)));
    assert!(matches!(pool.get(b"sealed", Wait::Now), Err(Error::PoolClosed)));
    assert!(matches!(pool.get(b"absent", Wait::Now), Err(Error::PoolClosed)));
    assert!(matches!(pool.get(b"sealed", Wait::For(Duration::from_millis(10))), Err(Error::PoolClosed)));
    assert!(matches!(pool.get(b"sealed", Wait::Forever), Err(Error::PoolClosed)));
    assert!(matches!(pool.delete(b"sealed"), Err(Error::PoolClosed)));
    assert!(matches!(pool.delete(b"absent"), Err(Error::PoolClosed)));
    assert!(matches!(pool.put(b"new", b"x"), Err(Error::PoolClosed)));
    let mut dst = [0u8; 8];
    assert!(matches!(pool.get_into(b"sealed", Wait::Now, &mut dst), Err(Error::PoolClosed)));
    assert!(!pool.contains(b"sealed"));
    pool.close(); // idempotent
    assert!(pool.is_closed());
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0), "close dropped the pool's references");
}

#[test]
fn buffers_held_across_close_and_pool_drop_keep_their_bytes() {
    let pool = small_pool();
    let a = pattern(10, 5000);
    let b = pattern(11, 64);
    let wa = put_via_buffer(&pool, b"a", &a);
    pool.put(b"b", &b).unwrap();
    let rb = pool.get(b"b", Wait::Now).unwrap();
    let ra = pool.get(b"a", Wait::Now).unwrap();
    let ptr = ra.as_ptr();
    pool.close();
    assert_eq!(ra.as_slice(), &a[..]);
    assert_eq!(wa.as_slice(), &a[..]);
    assert_eq!(rb.as_slice(), &b[..]);
    let s = pool.stats();
    assert_eq!((s.object_count, s.key_count), (2, 0));
    drop(pool);
    assert_eq!(ra.as_ptr(), ptr);
    assert_eq!(ra.as_slice(), &a[..], "mapping outlives the pool while buffers live");
    assert_eq!(wa.as_slice(), &a[..]);
    assert_eq!(rb.as_slice(), &b[..]);
    drop((wa, ra, rb));
}

#[test]
fn forever_getter_blocked_in_another_thread_returns_pool_closed_on_close() {
    let pool = small_pool();
    let _unsealed = pool.create(b"pending", 8).unwrap();
    let (r_absent, r_unsealed) = std::thread::scope(|s| {
        let g1 = s.spawn(|| pool.get(b"never", Wait::Forever).map(|b| b.len()));
        let g2 = s.spawn(|| pool.get(b"pending", Wait::Forever).map(|b| b.len()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!g1.is_finished() && !g2.is_finished(), "getters must block until close");
        pool.close();
        (g1.join().unwrap(), g2.join().unwrap())
    });
    assert!(matches!(r_absent, Err(Error::PoolClosed)), "{r_absent:?}");
    assert!(matches!(r_unsealed, Err(Error::PoolClosed)), "{r_unsealed:?}");
}

#[test]
fn sealing_an_unsealed_buffer_after_close_is_pool_closed() {
    let pool = small_pool();
    let mut w = pool.create(b"late", 128).unwrap();
    w.as_mut_slice().unwrap().fill(1);
    pool.close();
    assert!(matches!(w.seal(), Err(Error::PoolClosed)));
    assert!(!w.is_sealed());
    assert_eq!(pool.stats().object_count, 1, "the creator still holds its memory");
    drop(w);
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

#[test]
fn stats_track_capacity_usage_objects_and_keys_through_a_sequence() {
    let pool = small_pool();
    let s = pool.stats();
    assert_eq!(s.capacity_bytes, 8 * MIB as u64);
    assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0));
    assert_eq!(s.max_objects, (8 * MIB / 4096) as u64, "default: one per 4 KiB");
    assert_eq!(s.page_size, 4096);
    assert!(s.open_nanos > 0);
    assert!(s.largest_free_block > 0 && s.largest_free_block <= s.capacity_bytes);

    let check = |used: u64, objects: u64, keys: u64| {
        let s = pool.stats();
        assert_eq!(s.used_bytes % 64, 0);
        assert_eq!((s.used_bytes, s.object_count, s.key_count), (used, objects, keys));
        assert!(s.largest_free_block <= s.capacity_bytes - s.used_bytes);
        assert_eq!(s.capacity_bytes, 8 * MIB as u64);
    };
    let mut a = pool.create(b"a", 100).unwrap();
    check(128, 1, 1);
    a.seal().unwrap();
    check(128, 1, 1);
    pool.put(b"z", &[]).unwrap();
    check(128, 2, 2);
    let b = pool.create(b"b", 64).unwrap();
    check(192, 3, 3);
    let r = pool.get(b"a", Wait::Now).unwrap();
    check(192, 3, 3);
    drop(b);
    check(128, 2, 2);
    pool.delete(b"a").unwrap();
    check(128, 2, 1);
    drop(a);
    check(128, 2, 1);
    drop(r);
    check(0, 1, 1);
    pool.delete(b"z").unwrap();
    check(0, 0, 0);
}

#[test]
fn default_max_objects_is_size_over_4096_but_at_least_1024() {
    assert_eq!(pool_with(MIB, 0).stats().max_objects, 1024);
    assert_eq!(pool_with(8 * MIB, 0).stats().max_objects, 2048);
    assert_eq!(pool_with(MIB, 7).stats().max_objects, 7);
    // Capacity is the size asked for, rounded up to 64 bytes, whatever the page size.
    let s = pool_with(5000, 0).stats();
    assert_eq!(s.capacity_bytes, 5056);
    assert_eq!(s.max_objects, 1024);
}

// ---------------------------------------------------------------------------------------------
// Open failures
// ---------------------------------------------------------------------------------------------

#[test]
fn open_with_size_zero_is_invalid_argument() {
    let r = Pool::open(&PoolOptions { size: 0, pages: PageMode::Small, ..Default::default() });
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
}

fn meminfo_value(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
}

#[test]
fn open_with_hugetlb_and_no_reserved_huge_pages_is_a_system_error_naming_map_hugetlb() {
    let free = meminfo_value("HugePages_Free").unwrap_or(0);
    let overcommit: u64 = std::fs::read_to_string("/proc/sys/vm/nr_overcommit_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if free > 0 || overcommit > 0 {
        eprintln!(
            "skipping: HugePages_Free = {free}, nr_overcommit_hugepages = {overcommit}: MAP_HUGETLB may succeed here"
        );
        return;
    }
    let r = Pool::open(&PoolOptions { size: 8 * MIB, pages: PageMode::HugeTlb { dir: None }, ..Default::default() });
    match r {
        Err(e @ Error::System { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("MAP_HUGETLB"), "{msg}");
        }
        other => panic!("expected Error::System, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// xorshift64: small, deterministic, good enough to pick operations.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: u32 = 32;
const HEADER: usize = 16;
const MAGIC: u32 = 0x5A43_4F50;

fn stress_key(k: u32) -> Vec<u8> {
    format!("stress/{k}").into_bytes()
}

fn mix(g: u64) -> u64 {
    let mut z = g.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The size of generation `g`'s value: a header plus 0..=1024 bytes.
fn value_len(g: u64) -> usize {
    HEADER + (mix(g) % 1025) as usize
}

fn body_byte(g: u64, i: usize) -> u8 {
    (mix(g) as u8).wrapping_add((i as u8).wrapping_mul(13))
}

fn fill_value(dst: &mut [u8], k: u32, g: u64) {
    dst[0..4].copy_from_slice(&k.to_le_bytes());
    dst[4..12].copy_from_slice(&g.to_le_bytes());
    dst[12..16].copy_from_slice(&MAGIC.to_le_bytes());
    for (i, b) in dst[HEADER..].iter_mut().enumerate() {
        *b = body_byte(g, i);
    }
}

/// Checks that `v` is a complete value written for key `k`; returns its generation.
fn verify_value(v: &[u8], k: u32, issued: &AtomicU64) -> u64 {
    assert!(v.len() >= HEADER, "value of key {k} too short: {}", v.len());
    let vk = u32::from_le_bytes(v[0..4].try_into().unwrap());
    let g = u64::from_le_bytes(v[4..12].try_into().unwrap());
    let magic = u32::from_le_bytes(v[12..16].try_into().unwrap());
    assert_eq!(magic, MAGIC, "key {k}: torn or foreign header");
    assert_eq!(vk, k, "value under key {k} was written for key {vk}");
    assert!(g < issued.load(Ordering::SeqCst), "key {k}: generation {g} never issued");
    assert_eq!(v.len(), value_len(g), "key {k} gen {g}: wrong length");
    for (i, &b) in v[HEADER..].iter().enumerate() {
        assert_eq!(b, body_byte(g, i), "key {k} gen {g}: byte {i} differs");
    }
    g
}

#[derive(Default, Debug)]
struct Counts {
    puts: u64,
    aborts: u64,
    gets: u64,
    get_intos: u64,
    deletes: u64,
    misses: u64,
}

fn stress_worker(pool: &Pool, seed: u64, issued: &AtomicU64, ops: usize, deadline: Instant) -> Counts {
    let mut rng = XorShift::new(seed);
    let mut c = Counts::default();
    // Read references held across later ops (and across deletes by other threads), re-verified.
    let mut held: Vec<(u32, u64, zcopy::Buffer)> = Vec::new();
    let mut scratch = vec![0u8; HEADER + 1024];
    for op in 0..ops {
        if op % 256 == 0 && Instant::now() >= deadline {
            break;
        }
        let k = rng.below(KEYS as u64) as u32;
        let key = stress_key(k);
        match rng.below(100) {
            0..=29 => {
                let g = issued.fetch_add(1, Ordering::SeqCst);
                match pool.create(&key, value_len(g)) {
                    Ok(mut w) => {
                        assert_eq!(w.as_ptr() as usize % 64, 0);
                        fill_value(w.as_mut_slice().expect("writable"), k, g);
                        if rng.below(8) == 0 {
                            if rng.below(2) == 0 {
                                drop(w); // release of an unsealed buffer aborts it
                            } else {
                                assert!(w.abort().is_ok());
                            }
                            c.aborts += 1;
                        } else {
                            w.seal().expect("seal of own unsealed buffer");
                            assert_eq!(verify_value(w.as_slice(), k, issued), g);
                            c.puts += 1;
                        }
                    }
                    Err(Error::AlreadyExists(_)) => c.misses += 1,
                    Err(e) => panic!("create {k}: {e:?}"),
                }
            }
            30..=59 => {
                let wait = if rng.below(20) == 0 { Wait::For(Duration::from_millis(1)) } else { Wait::Now };
                match pool.get(&key, wait) {
                    Ok(b) => {
                        assert!(b.as_mut_ptr().is_none());
                        let g = verify_value(b.as_slice(), k, issued);
                        c.gets += 1;
                        if rng.below(4) == 0 {
                            held.push((k, g, b));
                            if held.len() > 8 {
                                let (hk, hg, hb) = held.remove(0);
                                assert_eq!(verify_value(hb.as_slice(), hk, issued), hg);
                            }
                        }
                    }
                    Err(Error::NotFound(_) | Error::NotSealed(_) | Error::Timeout { .. }) => c.misses += 1,
                    Err(e) => panic!("get {k}: {e:?}"),
                }
            }
            60..=69 => match pool.get_into(&key, Wait::Now, &mut scratch) {
                Ok(n) => {
                    verify_value(&scratch[..n], k, issued);
                    c.get_intos += 1;
                }
                Err(Error::NotFound(_) | Error::NotSealed(_)) => c.misses += 1,
                Err(e) => panic!("get_into {k}: {e:?}"),
            },
            70..=89 => match pool.delete(&key) {
                Ok(()) => c.deletes += 1,
                Err(Error::NotFound(_) | Error::NotSealed(_)) => c.misses += 1,
                Err(e) => panic!("delete {k}: {e:?}"),
            },
            90..=94 => {
                let _ = pool.contains(&key);
                for (hk, hg, hb) in &held {
                    assert_eq!(verify_value(hb.as_slice(), *hk, issued), *hg, "held reference changed");
                }
            }
            _ => {
                let s = pool.stats();
                assert_eq!(s.used_bytes % 64, 0);
                assert!(s.used_bytes <= s.capacity_bytes);
                assert!(s.key_count <= KEYS as u64, "{s:?}");
                assert!(s.object_count <= s.max_objects);
            }
        }
    }
    for (hk, hg, hb) in &held {
        assert_eq!(verify_value(hb.as_slice(), *hk, issued), *hg);
    }
    c
}

#[test]
fn four_threads_of_random_ops_keep_values_intact_and_leak_nothing() {
    let pool = pool_with(8 * MIB, 0);
    let issued = AtomicU64::new(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts: Vec<Counts> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let (pool, issued) = (&pool, &issued);
                s.spawn(move || {
                    stress_worker(
                        pool,
                        0x1234_5678_9ABC_DEF1 ^ (t + 1).wrapping_mul(0x9E37_79B9),
                        issued,
                        20_000,
                        deadline,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker panicked")).collect()
    });
    for (t, c) in counts.iter().enumerate() {
        assert!(c.puts > 0 && c.gets > 0 && c.deletes > 0 && c.aborts > 0 && c.get_intos > 0, "thread {t}: {c:?}");
    }
    let total: u64 = counts.iter().map(|c| c.puts + c.aborts + c.gets + c.get_intos + c.deletes + c.misses).sum();
    assert!(total > 0);

    // Every creator is gone, so every key present is sealed.
    for k in 0..KEYS {
        match pool.delete(&stress_key(k)) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => panic!("final delete of key {k}: {e:?}"),
        }
    }
    let s = pool.stats();
    assert!(s.used_bytes == 0 && s.object_count == 0 && s.key_count == 0, "leak: {s:?}");
    pool.put(b"after", &vec![1u8; 4 * MIB]).expect("the freed pool takes a large object again");
}

// ---------------------------------------------------------------------------------------------
// fork()
// ---------------------------------------------------------------------------------------------

/// What a forked child sees of its parent's pool and buffers: a `ForkedChild` error from every
/// fallible call (checked before the missing memory or any lock is touched), no writable bytes,
/// and drops that do nothing. Answers the exit code for the child: 0, or the failing step.
fn child_uses_parents_pool(pool: Pool, reader: zcopy::Buffer, mut writer: zcopy::Buffer) -> i32 {
    let forked = |r: Result<(), Error>| matches!(&r, Err(e @ Error::ForkedChild { .. }) if e.to_string().contains("before fork()"));
    let mut dst = [0u8; 64];
    let steps = [
        forked(pool.create(b"new", 64).map(drop)),
        forked(pool.put(b"new", b"x")),
        forked(pool.get(b"kept", Wait::Now).map(drop)),
        forked(pool.get(b"never", Wait::Forever).map(drop)),
        forked(pool.get_into(b"kept", Wait::Now, &mut dst).map(drop)),
        forked(pool.delete(b"kept")),
        !pool.contains(b"kept"),
        pool.stats() == zcopy::PoolStats::default(),
        forked(reader.copy_to(&mut dst).map(drop)),
        forked(reader.rdma_desc(0).map(drop)),
        writer.as_mut_slice().is_none(),
        forked(writer.seal()),
        forked(writer.check_abortable()),
    ];
    drop((reader, writer, pool));
    steps.iter().position(|ok| !ok).map_or(0, |i| 10 + i as i32)
}

#[test]
fn a_forked_child_gets_forked_child_errors_from_its_parents_pool_and_the_parent_is_unaffected() {
    let pool = small_pool();
    let data = pattern(7, 4096);
    put_via_buffer(&pool, b"kept", &data);
    let reader = pool.get(b"kept", Wait::Now).unwrap();
    let mut writer = pool.create(b"pending", 128).unwrap();
    writer.as_mut_slice().unwrap().fill(3);
    // SAFETY: the child only runs zcopy calls that touch neither the unmapped pool memory nor a
    // lock (which is what this test checks), then leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The child's copies of the handles; this branch never returns, so the parent's stay.
        let child = move || child_uses_parents_pool(pool, reader, writer);
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(2);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child failed at step {}", libc::WEXITSTATUS(status) - 10);

    assert_eq!(reader.as_slice(), &data[..]);
    assert_eq!(writer.as_mut_slice().unwrap(), &[3u8; 128][..]);
    writer.seal().unwrap();
    assert_eq!(pool.get(b"pending", Wait::Now).unwrap().as_slice(), &[3u8; 128][..]);
    let s = pool.stats();
    assert_eq!((s.key_count, s.object_count), (2, 2));
    drop((reader, writer));
    pool.delete(b"kept").unwrap();
    assert_eq!(pool.stats().used_bytes, 128);
}

#[test]
fn every_waiting_get_is_woken_by_its_seal_when_seals_skip_wakeups_nobody_waits_for() {
    // A seal wakes waiters only when its shard counts some. 200 gets wait on 100 keys (two per
    // key; with 64 shards, many keys share one) while seals, most of keys nobody waits for,
    // run at the same time. Every get must be answered by its seal, long before its timeout.
    let pool = pool_with(64 * MIB, 0);
    const KEYS: usize = 100;
    let key = |i: usize| format!("wake-{i}").into_bytes();
    let started = Instant::now();
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..2 * KEYS)
            .map(|w| {
                let (pool, k) = (&pool, key(w % KEYS));
                s.spawn(move || {
                    let b = pool.get(&k, Wait::For(Duration::from_secs(30))).expect("woken by the seal");
                    assert_eq!(b.as_slice(), &pattern((w % KEYS) as u8, 100)[..]);
                })
            })
            .collect();
        for round in 0..20 {
            for i in 0..KEYS {
                let noise = format!("noise-{round}-{i}").into_bytes();
                drop(put_via_buffer(&pool, &noise, b"x"));
                pool.delete(&noise).unwrap();
            }
        }
        for i in 0..KEYS {
            drop(put_via_buffer(&pool, &key(i), &pattern(i as u8, 100)));
        }
        for w in waiters {
            w.join().unwrap();
        }
    });
    assert!(started.elapsed() < Duration::from_secs(20), "a waiter slept past its seal");
}
