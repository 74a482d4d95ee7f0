//! Shared pools through the Rust API: several processes (real ones, started by the test) on one
//! pool, by name; crashes; files that are not pools; the state's invariants after each.

mod common;

use std::time::Duration;

use common::children::{park, role, say, Child};
use zcopy::pool::Wait;
use zcopy::{Error, Pool, PoolOptions, RdmaMode};

/// A pool name unique to this process and test; the file is removed when the guard drops.
struct Name(String);

impl Name {
    fn new(test: &str) -> Name {
        let name = format!("t{}-{test}", std::process::id());
        let _ = Pool::unlink(&name, None);
        Name(name)
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = Pool::unlink(&self.0, None);
    }
}

fn local() -> PoolOptions {
    PoolOptions { rdma: RdmaMode::Off, prefault: false, ..Default::default() }
}

fn create(name: &Name, size: usize) -> Pool {
    Pool::open(&PoolOptions { size, name: Some(name.0.clone()), ..local() }).expect("create a shared pool")
}

/// A shared pool of `size` bytes and at most `max_objects` objects.
fn create_limited(name: &Name, size: usize, max_objects: usize) -> Pool {
    Pool::open(&PoolOptions { size, max_objects, name: Some(name.0.clone()), ..local() }).expect("create a shared pool")
}

/// The pool holds nothing, its memory is one free range again, and its invariants hold.
fn assert_empty_and_whole(pool: &Pool) {
    let s = pool.stats();
    assert_eq!((s.object_count, s.key_count, s.used_bytes), (0, 0, 0));
    assert_eq!(s.largest_free_block, s.capacity_bytes, "every block merged back");
    pool.check().unwrap();
}

fn attach(name: &str) -> Pool {
    Pool::attach(name, &local()).expect("attach")
}

/// The bytes every object in these tests holds: a function of its key and length.
fn pattern(key: &[u8], len: usize) -> Vec<u8> {
    let seed = key.iter().fold(7u8, |a, &b| a.wrapping_mul(31).wrapping_add(b));
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn put(pool: &Pool, key: &[u8], len: usize) {
    let mut b = pool.create(key, len).unwrap();
    b.as_mut_slice().unwrap().copy_from_slice(&pattern(key, len));
    b.seal().unwrap();
}

/// The roles children play, each attaching the pool named by its argument.
#[test]
fn child_roles() {
    if let Some(name) = role("reader") {
        // Reads "a", says where its bytes are in this process, holds them until killed.
        let pool = attach(&name);
        let buf = pool.get(b"a", Wait::For(Duration::from_secs(10))).unwrap();
        let (base, len) = pool.region();
        let at = buf.as_ptr() as usize;
        let inside = at >= base as usize && at + buf.len() <= base as usize + len;
        say(&format!("read {} {} {inside}", buf.len(), buf.as_slice() == pattern(b"a", buf.len())));
        park();
    }
    if let Some(name) = role("holder") {
        // Holds a read reference on "sealed", an unsealed create of "half", and 100 more read
        // references; killed holding them.
        let pool = attach(&name);
        let held = pool.get(b"sealed", Wait::Now).unwrap();
        let mut half = pool.create(b"half", 4096).unwrap();
        half.as_mut_slice().unwrap()[0] = 1;
        let many: Vec<_> = (0..100).map(|_| pool.get(b"sealed", Wait::Now).unwrap()).collect();
        say(&format!("holding {}", many.len() + 1));
        let _keep = (held, half, many);
        park();
    }
    if let Some(name) = role("sealer") {
        // Creates "late" after the parent says go (on stdin's end), seals it, exits cleanly.
        let pool = attach(&name);
        std::thread::sleep(Duration::from_millis(200));
        put(&pool, b"late", 1000);
        say("sealed");
    }
    if let Some(name) = role("rereader") {
        // Reads race-0..race-3 over and over for 600 ms while the parent deletes and makes them
        // again; every value is one byte repeated. Says how many reads it made and how many saw
        // mixed bytes.
        let pool = attach(&name);
        say("ready");
        let (mut reads, mut torn) = (0u64, 0u64);
        let until = std::time::Instant::now() + Duration::from_millis(600);
        while std::time::Instant::now() < until {
            for i in 0..4 {
                if let Ok(b) = pool.get(format!("race-{i}").as_bytes(), Wait::Now) {
                    let bytes = b.as_slice();
                    reads += 1;
                    torn += u64::from(!bytes.iter().all(|&x| x == bytes[0]));
                }
            }
        }
        say(&format!("read {reads} torn {torn}"));
    }
    if let Some(name) = role("churner") {
        // Creates eight 64 KiB objects and deletes them (a process keeps such records and
        // blocks for its next creates), keeps three 1000-byte ones, deletes the parent's "p0",
        // and is killed keeping all of it.
        let pool = attach(&name);
        for i in 0..8 {
            put(&pool, format!("churn-{i}").as_bytes(), 64 << 10);
        }
        for i in 0..8 {
            pool.delete(format!("churn-{i}").as_bytes()).unwrap();
        }
        for i in 0..3 {
            put(&pool, format!("kept-{i}").as_bytes(), 1000);
        }
        pool.delete(b"p0").unwrap();
        say("done");
        park();
    }
    if let Some(name) = role("keeper") {
        // Creates eight objects of a size given after the name ("NAME SIZE") and deletes them
        // all, then stays alive keeping their records and blocks.
        let (name, size) = name.split_once(' ').unwrap();
        let size: usize = size.parse().unwrap();
        let pool = attach(name);
        for i in 0..8 {
            put(&pool, format!("keep-{i}").as_bytes(), size);
        }
        for i in 0..8 {
            pool.delete(format!("keep-{i}").as_bytes()).unwrap();
        }
        say("done");
        park();
    }
    if let Some(name) = role("racer") {
        // Creates keys race-0..race-199 as fast as it can; says how many it won.
        let pool = attach(&name);
        say("ready");
        let mut won = 0;
        for i in 0..200 {
            match pool.create(format!("race-{i}").as_bytes(), 64) {
                Ok(mut b) => {
                    b.seal().unwrap();
                    won += 1;
                }
                Err(Error::AlreadyExists(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        say(&format!("won {won}"));
    }
}

#[test]
fn a_process_that_attaches_reads_the_creators_bytes_in_place_in_its_own_mapping() {
    let name = Name::new("read");
    let pool = create(&name, 1 << 20);
    put(&pool, b"a", 5000);
    let mut child = Child::spawn("child_roles", "reader", &name.0);
    assert_eq!(child.expect("read"), "5000 true true");
    assert_eq!(pool.stats().processes_attached, 2);
    child.kill();
    pool.check().unwrap();
}

#[test]
fn a_process_killed_holding_references_and_an_unsealed_create_is_reclaimed_and_nothing_sealed_is_lost() {
    let name = Name::new("reclaim");
    let pool = create(&name, 1 << 20);
    put(&pool, b"sealed", 3000);
    let before = pool.stats();
    let mut child = Child::spawn("child_roles", "holder", &name.0);
    assert_eq!(child.expect("holding"), "101");
    let during = pool.stats();
    assert_eq!((during.object_count, during.key_count, during.processes_attached), (2, 2, 2));
    assert!(matches!(pool.create(b"half", 10), Err(Error::AlreadyExists(_))));
    pool.delete(b"sealed").unwrap();
    assert!(!pool.contains(b"sealed"));
    child.kill();
    assert_eq!(pool.reclaim().unwrap(), 1);
    assert_eq!(pool.reclaim().unwrap(), 0, "reclaimed once");
    let after = pool.stats();
    assert_eq!((after.object_count, after.key_count, after.used_bytes), (0, 0, 0));
    assert_eq!((after.processes_attached, after.processes_reclaimed), (1, 1));
    assert_eq!(before.capacity_bytes, after.capacity_bytes);
    pool.check().unwrap();
    put(&pool, b"half", 100);
    assert_eq!(pool.get(b"half", Wait::Now).unwrap().as_slice(), pattern(b"half", 100));
}

#[test]
fn a_dead_process_is_reclaimed_when_another_attaches_or_a_create_runs_out_of_room() {
    let name = Name::new("implicit");
    let pool = create(&name, 64 << 10);
    put(&pool, b"sealed", 1000);
    let mut child = Child::spawn("child_roles", "holder", &name.0);
    child.expect("holding");
    child.kill();
    // The holder's unsealed 4 KiB create is still counted; a create that needs all the room
    // left reclaims it first.
    let need = (64 << 10) - 1024 - 64;
    let big = pool.create(b"big", need).expect("a create out of room reclaims the dead first");
    assert_eq!(pool.stats().processes_reclaimed, 1);
    drop(big);
    let mut child = Child::spawn("child_roles", "holder", &name.0);
    child.expect("holding");
    child.kill();
    let other = attach(&name.0);
    assert_eq!(other.stats().processes_reclaimed, 2, "attach reclaims the dead");
    pool.check().unwrap();
}

#[test]
fn a_get_waiting_in_one_process_is_woken_by_a_seal_in_another() {
    let name = Name::new("wake");
    let pool = create(&name, 1 << 20);
    let mut child = Child::spawn("child_roles", "sealer", &name.0);
    let got = pool.get(b"late", Wait::For(Duration::from_secs(10))).unwrap();
    assert_eq!(got.as_slice(), pattern(b"late", 1000));
    assert_eq!(child.expect("sealed"), "");
    child.wait_success(Duration::from_secs(10));
}

#[test]
fn two_processes_creating_the_same_keys_at_once_each_key_has_exactly_one_winner() {
    let name = Name::new("race");
    let pool = create(&name, 1 << 20);
    let mut a = Child::spawn("child_roles", "racer", &name.0);
    let mut b = Child::spawn("child_roles", "racer", &name.0);
    a.expect("ready");
    b.expect("ready");
    let won_a: u64 = a.expect("won").parse().unwrap();
    let won_b: u64 = b.expect("won").parse().unwrap();
    assert_eq!(won_a + won_b, 200);
    assert_eq!(pool.stats().key_count, 200);
    pool.check().unwrap();
}

#[test]
fn delete_in_one_process_while_another_holds_the_object_keeps_its_bytes_until_released() {
    let name = Name::new("delete");
    let a = create(&name, 1 << 20);
    let b = attach(&name.0);
    put(&a, b"k", 777);
    let held = b.get(b"k", Wait::Now).unwrap();
    a.delete(b"k").unwrap();
    assert!(!b.contains(b"k"));
    put(&a, b"other", 777);
    assert_eq!(held.as_slice(), pattern(b"k", 777));
    assert_eq!(a.stats().object_count, 2);
    drop(held);
    assert_eq!(a.stats().object_count, 1);
    a.check().unwrap();
}

#[test]
fn closing_one_process_keeps_the_objects_for_the_others_and_for_a_later_attach() {
    let name = Name::new("close");
    let a = create(&name, 1 << 20);
    let b = attach(&name.0);
    put(&a, b"kept", 100);
    let mut unsealed = a.create(b"unsealed", 10).unwrap();
    unsealed.as_mut_slice().unwrap()[0] = 9;
    let held = b.get(b"kept", Wait::Now).unwrap();
    a.close();
    assert!(matches!(a.get(b"kept", Wait::Now), Err(Error::PoolClosed)));
    unsealed.seal().expect("a buffer outlives its pool's close");
    drop((unsealed, a));
    assert_eq!(held.as_slice(), pattern(b"kept", 100));
    assert_eq!(b.get(b"unsealed", Wait::Now).unwrap().as_slice()[0], 9);
    drop((held, b));
    let later = attach(&name.0);
    assert_eq!(later.get(b"kept", Wait::Now).unwrap().as_slice(), pattern(b"kept", 100));
    assert_eq!(later.stats().processes_attached, 1);
    later.check().unwrap();
    drop(later);
    Pool::unlink(&name.0, None).unwrap();
    match Pool::attach(&name.0, &local()) {
        Err(Error::System { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
}

#[test]
fn creating_a_name_that_exists_fails_and_leaves_the_pool_untouched() {
    let name = Name::new("exists");
    let a = create(&name, 1 << 20);
    put(&a, b"k", 10);
    let e = Pool::open(&PoolOptions { size: 1 << 20, name: Some(name.0.clone()), ..local() }).unwrap_err();
    assert!(e.to_string().contains(&name.0), "{e}");
    assert!(matches!(e, Error::System { ref source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists));
    assert!(a.contains(b"k"));
}

#[test]
fn bad_names_are_refused_before_any_file_is_touched() {
    for bad in ["", "a/b", "..", "a..b", "-x", &"n".repeat(129), "sp ace"] {
        let e = Pool::attach(bad, &local()).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        let e = Pool::open(&PoolOptions { name: Some(bad.into()), ..local() }).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
    }
}

#[test]
fn files_that_are_not_pools_truncated_or_of_another_version_are_refused_with_a_status() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = Name::new("garbage");
    let path = format!("/dev/shm/zcopy.{}", name.0);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    f.write_all(&[0xabu8; 8192]).unwrap();
    drop(f);
    let e = Pool::attach(&name.0, &local()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("not a usable zcopy pool file"), "{e}");
    std::fs::remove_file(&path).unwrap();

    let pool = create(&name, 1 << 20);
    put(&pool, b"k", 10);
    drop(pool);
    let len = std::fs::metadata(&path).unwrap().len();
    let bytes = std::fs::read(&path).unwrap();
    // Another layout version.
    let mut other = bytes.clone();
    other[8] = other[8].wrapping_add(1);
    std::fs::write(&path, &other).unwrap();
    let e = Pool::attach(&name.0, &local()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // Truncated, at several lengths.
    for cut in [0, 100, 4096, len / 2, len - 4096] {
        std::fs::write(&path, &bytes[..cut as usize]).unwrap();
        let e = Pool::attach(&name.0, &local()).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "cut at {cut}: {e}");
    }
    std::fs::write(&path, &bytes).unwrap();
    let again = attach(&name.0);
    assert_eq!(again.get(b"k", Wait::Now).unwrap().as_slice(), pattern(b"k", 10));
}

#[test]
fn a_corrupted_record_or_index_answers_a_status_never_a_crash() {
    use std::os::unix::fs::FileExt;
    let name = Name::new("corrupt");
    let pool = create(&name, 1 << 20);
    for i in 0..50 {
        put(&pool, format!("key-{i}").as_bytes(), 100 + i);
    }
    pool.check().unwrap();
    let path = pool.path().unwrap().to_owned();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let header = {
        let mut h = vec![0u8; 192];
        file.read_exact_at(&mut h, 0).unwrap();
        h
    };
    // The areas' spans follow 64 bytes of fixed fields: (offset, len) per area, Records 4th,
    // Index 5th.
    let span = |i: usize| {
        let at = 64 + 16 * i;
        let word = |o: usize| u64::from_ne_bytes(header[o..o + 8].try_into().unwrap());
        (word(at), word(at + 8))
    };
    let (records, _) = span(3);
    let (index, index_len) = span(4);
    // Record 3's size field (at 40 in each 64-byte record) reaching far outside the data.
    file.write_all_at(&u64::MAX.to_ne_bytes(), records + 3 * 64 + 40).unwrap();
    assert!(matches!(pool.check(), Err(Error::Internal(_))));
    for i in 0..50 {
        // Every get answers: the bytes, or a status for the corrupted one.
        match pool.get(format!("key-{i}").as_bytes(), Wait::Now) {
            Ok(b) => assert_eq!(b.len(), 100 + i),
            Err(e) => assert!(matches!(e, Error::Internal(_)), "{e}"),
        }
    }
    // Every bucket of the index pointing at ids far past the records.
    let junk: Vec<u8> = (0..index_len / 4).flat_map(|_| 0x7fff_fff0u32.to_ne_bytes()).collect();
    file.write_all_at(&junk, index).unwrap();
    for i in 0..50 {
        let e = pool.get(format!("key-{i}").as_bytes(), Wait::Now).unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e}");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
    assert!(pool.create(b"new", 10).is_err());
    assert!(!pool.contains(b"key-1"));
}

/// The offset in pool file `file` of the Records area (the 4th area span, after 64 bytes of fixed
/// header fields).
fn records_at(file: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut span = [0u8; 8];
    file.read_exact_at(&mut span, 64 + 16 * 3).unwrap();
    u64::from_ne_bytes(span)
}

#[test]
fn check_refuses_records_whose_memory_or_key_storage_is_not_exactly_their_own_allocator_block() {
    use std::os::unix::fs::FileExt;
    let name = Name::new("claims");
    let pool = create(&name, 1 << 20);
    // Keys longer than 16 bytes live in the key storage heap, each in a block of its own.
    let key = |i: usize| format!("a-key-long-enough-for-the-heap-{i:02}");
    for i in 0..50 {
        put(&pool, key(i).as_bytes(), 100);
    }
    pool.check().unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(pool.path().unwrap()).unwrap();
    let records = records_at(&file);
    // The u32 fields of a 64-byte record: node 20, key_node 24, offset_units 28, extra_units 32.
    let (node, key_node, offset_units, extra_units) = (20, 24, 28, 32);
    let at = |id: u64, field: u64| records + 64 * id + field;
    let read = |id: u64, field: u64| {
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, at(id, field)).unwrap();
        u32::from_ne_bytes(word)
    };
    let write = |id: u64, field: u64, value: u32| file.write_all_at(&value.to_ne_bytes(), at(id, field)).unwrap();
    // Sets fields of record 5, asserts check names the violation, then puts the fields back.
    let refused = |changes: &[(u64, u32)], wants: &[&str]| {
        let saved: Vec<(u64, u32)> = changes.iter().map(|&(field, _)| (field, read(5, field))).collect();
        for &(field, value) in changes {
            write(5, field, value);
        }
        let e = pool.check().unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e}");
        for want in wants {
            assert!(e.to_string().contains(want), "{changes:?}: {want:?} not in: {e}");
        }
        for (field, value) in saved {
            write(5, field, value);
        }
        pool.check().unwrap();
    };
    // One bit flipped in each field that places the record's bytes.
    refused(&[(node, read(5, node) ^ 1)], &["record 5", "object memory", "allocator node"]);
    refused(&[(offset_units, read(5, offset_units) ^ 1)], &["record 5", "object memory", "allocator node"]);
    refused(&[(key_node, read(5, key_node) ^ 1)], &["record 5", "key storage", "allocator node"]);
    refused(&[(extra_units, read(5, extra_units) ^ 1)], &["record 5", "key storage", "allocator node"]);
    // A node that is no block in use, and no node for bytes the record holds.
    refused(&[(node, u32::MAX - 1)], &["record 5", "object memory", "not a block in use"]);
    refused(&[(key_node, u32::MAX)], &["record 5", "key storage", "not a block in use"]);
    // Record 4's block, named whole by record 5: two keys would share an address.
    refused(
        &[(node, read(4, node)), (offset_units, read(4, offset_units))],
        &["records 4 and 5 share", "object memory"],
    );
    refused(
        &[(key_node, read(4, key_node)), (extra_units, read(4, extra_units))],
        &["records 4 and 5 share", "key storage"],
    );
    for i in 0..50 {
        assert_eq!(pool.get(key(i).as_bytes(), Wait::Now).unwrap().as_slice(), pattern(key(i).as_bytes(), 100));
    }
}

/// Huge pages reserved for a test (root only), given back when dropped.
struct HugePages {
    before: String,
}

impl HugePages {
    fn reserve(pages: u64) -> Option<HugePages> {
        const KNOB: &str = "/proc/sys/vm/nr_hugepages";
        let before = std::fs::read_to_string(KNOB).ok()?.trim().to_owned();
        let want = before.parse::<u64>().ok()? + pages;
        std::fs::write(KNOB, want.to_string()).ok()?;
        let now: u64 = std::fs::read_to_string(KNOB).ok()?.trim().parse().ok()?;
        let guard = HugePages { before };
        (now >= want).then_some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/vm/nr_hugepages", &self.before);
    }
}

#[test]
fn a_shared_pool_in_a_hugetlbfs_directory_is_made_of_huge_pages_and_attached_by_name() {
    let Some(_reserved) = HugePages::reserve(16) else {
        eprintln!("skipped: cannot reserve huge pages here (needs root and free memory)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("zcopy-shared-hugetlbfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "hugetlbfs", "none"]).arg(&dir).status();
    if !matches!(mounted, Ok(s) if s.success()) {
        let _ = std::fs::remove_dir(&dir);
        eprintln!("skipped: cannot mount hugetlbfs here");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let name = format!("t{}-huge", std::process::id());
        let opts = PoolOptions { size: 2 << 20, max_objects: 256, shared_dir: Some(dir.clone()), ..local() };
        let pool = Pool::open(&PoolOptions { name: Some(name.clone()), ..opts.clone() }).unwrap();
        put(&pool, b"k", 100_000);
        let other = Pool::attach(&name, &opts).unwrap();
        let got = other.get(b"k", Wait::Now).unwrap();
        assert_eq!(got.as_slice(), pattern(b"k", 100_000));
        assert_eq!(other.stats().page_size, 2 << 20);
        let maps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let at = got.as_ptr() as usize;
        let entry = maps
            .split("\n")
            .collect::<Vec<_>>()
            .windows(12)
            .find(|w| {
                let mut range = w[0].split(' ').next().unwrap_or("").split('-');
                let lo = usize::from_str_radix(range.next().unwrap_or("z"), 16).unwrap_or(usize::MAX);
                let hi = usize::from_str_radix(range.next().unwrap_or("0"), 16).unwrap_or(0);
                lo <= at && at < hi
            })
            .map(|w| w.join("\n"))
            .expect("the object's mapping in smaps");
        assert!(entry.contains(&format!("zcopy.{name}")), "{entry}");
        assert!(entry.contains("KernelPageSize:     2048 kB"), "{entry}");
        other.check().unwrap();
        drop((got, other, pool));
        Pool::unlink(&name, Some(&dir)).unwrap();
    });
    let unmounted = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(matches!(unmounted, Ok(s) if s.success()), "the mount stays busy after the pool is gone");
}

#[test]
fn metadata_that_grows_on_a_full_file_system_fails_creates_with_a_status_never_sigbus() {
    let dir = std::env::temp_dir().join(format!("zcopy-small-tmpfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "none"]).arg(&dir).status();
    if !matches!(mounted, Ok(s) if s.success()) {
        let _ = std::fs::remove_dir(&dir);
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let name = format!("t{}-fullfs", std::process::id());
        let opts = PoolOptions { size: 1 << 20, max_objects: 100_000, shared_dir: Some(dir.clone()), ..local() };
        let pool = Pool::open(&PoolOptions { name: Some(name.clone()), ..opts.clone() }).unwrap();
        let blocks = |p: &Pool| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p.path().unwrap()).unwrap().blocks() * 512
        };
        let start = blocks(&pool);
        // 2000-byte keys fill the key heap, whose blocks are reserved as it grows, until the
        // 16 MiB file system is full: then creates answer a status.
        let mut refused = None;
        for i in 0..4000 {
            let key = format!("{i:02000}");
            match pool.create(key.as_bytes(), 0) {
                Ok(mut b) => b.seal().unwrap(),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (made, e) = refused.expect("the file system filled up");
        assert!(made > 100, "{made} creates before the file system was full");
        assert!(matches!(e, Error::System { ref source, .. } if source.raw_os_error() == Some(libc::ENOSPC)), "{e}");
        assert!(blocks(&pool) > start, "the key heap's blocks were reserved as it grew");
        // Everything made before is intact and the pool consistent.
        for i in (0..made).step_by(97) {
            assert!(pool.contains(format!("{i:02000}").as_bytes()));
        }
        pool.check().unwrap();
        drop(pool);
        Pool::unlink(&name, Some(&dir)).unwrap();
    });
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_shared_pools_metadata_takes_memory_as_objects_use_it_not_for_its_limits() {
    use std::os::unix::fs::MetadataExt;
    let name = Name::new("sparse");
    let pool = Pool::open(&PoolOptions { size: 1 << 20, max_objects: 1 << 20, name: Some(name.0.clone()), ..local() })
        .unwrap();
    let meta = std::fs::metadata(pool.path().unwrap()).unwrap();
    let resident = meta.blocks() * 512 - (1 << 20);
    // Records (64 bytes) and the index are reserved for every possible object; allocator nodes,
    // long keys and part tables, and ledgers only as they are used.
    let per_object = resident as f64 / (1 << 20) as f64;
    assert!(per_object < 100.0, "{per_object:.1} bytes of metadata per possible object");
    assert!(meta.len() > 10 * resident, "the file lays out far more than it holds: {} of {}", resident, meta.len());
}

#[test]
fn an_evicting_shared_pool_evicts_what_no_process_holds_least_recently_used_first() {
    let name = Name::new("evict");
    let opts = PoolOptions { size: 64 << 10, name: Some(name.0.clone()), evict_lru: true, ..local() };
    let a = Pool::open(&opts).unwrap();
    let b = attach(&name.0);
    for i in 0..8 {
        put(&a, format!("k{i}").as_bytes(), 8 << 10);
    }
    // B holds k0 and reads k1, making k2 the least recently used object nobody holds.
    let held = b.get(b"k0", Wait::Now).unwrap();
    drop(b.get(b"k1", Wait::Now).unwrap());
    put(&b, b"new", 8 << 10);
    let s = a.stats();
    assert_eq!(s.evictions, 1);
    assert!(!a.contains(b"k2"), "the least recently used object nobody holds went");
    for key in [&b"k0"[..], b"k1", b"k3", b"new"] {
        assert!(a.contains(key), "{}", String::from_utf8_lossy(key));
    }
    assert_eq!(held.as_slice(), pattern(b"k0", 8 << 10));
    // Everything else held: a create that cannot fit is refused with the pool full.
    let all: Vec<_> = (0..8).filter_map(|i| b.get(format!("k{i}").as_bytes(), Wait::Now).ok()).collect();
    let newest = b.get(b"new", Wait::Now).unwrap();
    assert!(matches!(a.create(b"more", 8 << 10), Err(Error::PoolFull { .. })));
    assert_eq!(a.stats().creates_refused, 1);
    drop((all, newest, held));
    a.check().unwrap();
}

#[test]
fn readers_racing_deletes_and_creates_of_the_same_keys_never_see_wrong_bytes_and_leak_nothing() {
    race_deletes_and_creates("race", 0);
}

#[test]
fn readers_racing_deletes_that_scan_long_ledgers_without_the_lock_never_see_wrong_bytes_and_leak_nothing() {
    // With 5000 references held by this process, its ledger is long enough that every delete of
    // an object it read looks for references without the pool's lock, then frees under it.
    race_deletes_and_creates("race-long", 5000);
}

/// Readers take no lock: each get publishes its reference and re-checks the record, while a
/// writer deletes and makes the keys again. Every value is one byte repeated (its version), so a
/// reader that got a freed or reused block would see mixed bytes. `held` references on other
/// objects are kept throughout.
fn race_deletes_and_creates(what: &str, held: usize) {
    let name = Name::new(what);
    let pool = create_limited(&name, 2 << 20, 8192);
    let holds: Vec<_> = (0..held)
        .map(|i| {
            let key = format!("held-{i}").into_bytes();
            put(&pool, &key, 8);
            pool.get(&key, Wait::Now).unwrap()
        })
        .collect();
    let keys: Vec<Vec<u8>> = (0..4).map(|i| format!("race-{i}").into_bytes()).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (reads, versions) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for key in &keys {
                            if let Ok(b) = pool.get(key, Wait::Now) {
                                let bytes = b.as_slice();
                                assert!(bytes.iter().all(|&x| x == bytes[0]), "mixed bytes in {key:?}");
                                n += 1;
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        let mut versions = 0u32;
        let until = std::time::Instant::now() + Duration::from_millis(600);
        while std::time::Instant::now() < until && versions < 200_000 {
            versions += 1;
            let key = &keys[versions as usize % keys.len()];
            let _ = pool.delete(key);
            let mut b = pool.create(key, 1000 + (versions as usize % 7) * 64).unwrap();
            b.as_mut_slice().unwrap().fill(versions as u8);
            b.seal().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>(), versions)
    });
    assert!(reads > 0 && versions > 100, "{reads} reads, {versions} versions");
    pool.check().unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.object_count, s.key_count),
        (4 + held as u64, 4 + held as u64),
        "only the last version of each key is left"
    );
    for key in &keys {
        pool.delete(key).unwrap();
    }
    for (i, h) in holds.iter().enumerate() {
        assert_eq!(h.as_slice(), pattern(format!("held-{i}").as_bytes(), 8));
    }
    drop(holds);
    for i in 0..held {
        pool.delete(format!("held-{i}").as_bytes()).unwrap();
    }
    let s = pool.stats();
    assert_eq!((s.object_count, s.key_count, s.used_bytes), (0, 0, 0));
    pool.check().unwrap();
}

#[test]
fn a_delete_that_scans_long_ledgers_without_the_lock_frees_what_nobody_holds_and_leaves_what_is_held() {
    let name = Name::new("long-ledger");
    let pool = create_limited(&name, 1 << 20, 8192);
    let holds: Vec<_> = (0..5000)
        .map(|i| {
            let key = format!("h{i}").into_bytes();
            put(&pool, &key, 8);
            pool.get(&key, Wait::Now).unwrap()
        })
        .collect();
    put(&pool, b"read-once", 4096);
    put(&pool, b"still-read", 4096);
    drop(pool.get(b"read-once", Wait::Now).unwrap());
    let reader = pool.get(b"still-read", Wait::Now).unwrap();
    let before = pool.stats();
    // Read by this process, so its 5000-entry ledger is searched: no reference, freed at once.
    pool.delete(b"read-once").unwrap();
    let after = pool.stats();
    assert_eq!(before.object_count - after.object_count, 1);
    assert_eq!(before.used_bytes - after.used_bytes, 4096);
    // Held: the key goes, the bytes stay until the reader releases them.
    pool.delete(b"still-read").unwrap();
    assert!(!pool.contains(b"still-read"));
    assert!(matches!(pool.get(b"still-read", Wait::Now), Err(Error::NotFound(_))));
    assert_eq!(pool.stats().object_count, after.object_count);
    assert_eq!(reader.as_slice(), pattern(b"still-read", 4096));
    pool.check().unwrap();
    drop(reader);
    let last = pool.stats();
    assert_eq!((after.object_count - last.object_count, after.used_bytes - last.used_bytes), (1, 4096));
    drop(holds);
    pool.check().unwrap();
}

#[test]
fn threads_that_come_and_go_give_their_ledger_entries_back_and_never_fill_it() {
    // A ledger holds max(4 × max_objects, 4096) entries. Each thread keeps the entry it used last
    // for its next get: one that ends must give it back, or 5000 short-lived threads would fill
    // the ledger.
    let name = Name::new("churn");
    let pool = create_limited(&name, 1 << 20, 16);
    put(&pool, b"k", 100);
    for _ in 0..50 {
        std::thread::scope(|s| {
            for _ in 0..100 {
                s.spawn(|| assert_eq!(pool.get(b"k", Wait::Now).unwrap().as_slice(), pattern(b"k", 100)));
            }
        });
    }
    let held: Vec<_> = (0..4000).map(|_| pool.get(b"k", Wait::Now).unwrap()).collect();
    assert_eq!(held.len(), 4000);
    drop(held);
    pool.check().unwrap();
}

#[test]
fn gets_waiting_for_keys_sealed_without_the_lock_are_all_woken_none_waits_out_its_timeout() {
    // A seal takes no lock: a get that found the key unsealed must still be woken by it, whatever
    // the interleaving. A lost wake-up would leave a get sleeping until its 20 s timeout.
    let name = Name::new("wake");
    let pool = create(&name, 4 << 20);
    let n = 1000;
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = std::time::Instant::now();
            let mut slowest = Duration::ZERO;
            for i in 0..n {
                let t = std::time::Instant::now();
                let b = pool.get(format!("w{i}").as_bytes(), Wait::For(Duration::from_secs(20))).unwrap();
                assert_eq!(b.as_slice(), pattern(format!("w{i}").as_bytes(), 64));
                slowest = slowest.max(t.elapsed());
            }
            (started.elapsed(), slowest)
        });
        for i in 0..n {
            let key = format!("w{i}");
            if i % 10 == 0 {
                // Let the waiter get ahead and fall asleep on this key.
                std::thread::sleep(Duration::from_micros(300));
            }
            let mut b = pool.create(key.as_bytes(), 64).unwrap();
            b.as_mut_slice().unwrap().copy_from_slice(&pattern(key.as_bytes(), 64));
            if i % 3 == 0 {
                std::thread::yield_now();
            }
            b.seal().unwrap();
        }
        let (total, slowest) = waiter.join().unwrap();
        assert!(slowest < Duration::from_secs(10), "a get waited {slowest:?} (all {n}: {total:?})");
    });
    pool.check().unwrap();
    assert_eq!(pool.stats().key_count, n as u64);
}

#[test]
fn a_reader_process_racing_deletes_and_creates_in_another_never_sees_a_freed_or_reused_block() {
    let name = Name::new("xrace");
    let pool = create(&name, 1 << 20);
    let value = |key: &[u8], v: u32| {
        let mut b = pool.create(key, 2000 + (v as usize % 5) * 64).unwrap();
        b.as_mut_slice().unwrap().fill(v as u8);
        b.seal().unwrap();
    };
    for i in 0..4 {
        value(format!("race-{i}").as_bytes(), i);
    }
    let mut child = Child::spawn("child_roles", "rereader", &name.0);
    child.expect("ready");
    let mut versions = 4u32;
    let until = std::time::Instant::now() + Duration::from_millis(700);
    while std::time::Instant::now() < until && versions < 400_000 {
        let key = format!("race-{}", versions % 4);
        pool.delete(key.as_bytes()).unwrap();
        value(key.as_bytes(), versions);
        versions += 1;
    }
    let said = child.expect("read");
    let words: Vec<&str> = said.split_whitespace().collect();
    let (reads, torn): (u64, u64) = (words[0].parse().unwrap(), words[2].parse().unwrap());
    assert!(reads > 100 && versions > 100, "{said}, {versions} versions");
    assert_eq!(torn, 0, "{said}");
    child.wait_success(Duration::from_secs(10));
    pool.check().unwrap();
    let s = pool.stats();
    assert_eq!((s.object_count, s.key_count), (4, 4));
}

#[test]
fn long_keys_are_found_without_the_lock_compared_in_place_and_distinguished_by_their_last_byte() {
    let name = Name::new("longkeys");
    let pool = create(&name, 1 << 20);
    let reader = attach(&name.0);
    for len in [17usize, 200, 4096] {
        let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let mut b = a.clone();
        *b.last_mut().unwrap() ^= 1;
        put(&pool, &a, 300);
        assert_eq!(reader.get(&a, Wait::Now).unwrap().as_slice(), pattern(&a, 300));
        assert!(matches!(reader.get(&b, Wait::Now), Err(Error::NotFound(_))), "{len}-byte key");
        put(&pool, &b, 100);
        assert_eq!(reader.get(&b, Wait::Now).unwrap().as_slice(), pattern(&b, 100));
        assert_eq!(reader.get(&a, Wait::Now).unwrap().key(), &a[..]);
        pool.delete(&a).unwrap();
        assert!(matches!(reader.get(&a, Wait::Now), Err(Error::NotFound(_))));
    }
    pool.check().unwrap();
}

#[test]
fn a_process_reuses_the_record_and_block_it_freed_for_its_next_create_of_that_size() {
    let name = Name::new("reuse");
    let pool = create(&name, 1 << 20);
    let at = |b: &zcopy::Buffer| b.as_ptr() as usize - pool.region().0 as usize;
    let mut first = pool.create(b"a", 4096).unwrap();
    let offset = at(&first);
    first.seal().unwrap();
    drop(first);
    pool.delete(b"a").unwrap();
    // Another process creating meanwhile gets another block: this one is kept for its owner.
    let other = attach(&name.0);
    let theirs = other.create(b"b", 4096).unwrap();
    assert_ne!(theirs.as_ptr() as usize - other.region().0 as usize, offset);
    let again = pool.create(b"c", 4096).unwrap();
    assert_eq!(at(&again), offset, "the next create of that size takes the block back");
    pool.check().unwrap();
    drop((theirs, again));
    assert_empty_and_whole(&pool);
}

#[test]
fn what_a_killed_process_kept_for_its_next_creates_and_its_counts_are_given_back_at_reclaim() {
    let name = Name::new("keptdead");
    let pool = create_limited(&name, 1 << 20, 32);
    put(&pool, b"p0", 1000);
    put(&pool, b"p1", 1000);
    let mut child = Child::spawn("child_roles", "churner", &name.0);
    child.expect("done");
    child.kill();
    assert_eq!(pool.reclaim().unwrap(), 1);
    // Checked before anything else gives the cache back: a free slot keeps nothing.
    pool.check().unwrap();
    let s = pool.stats();
    assert_eq!((s.object_count, s.key_count, s.used_bytes), (4, 4, 4 * 1024), "p1 and the three kept");
    assert_eq!(pool.get(b"kept-2", Wait::Now).unwrap().as_slice(), pattern(b"kept-2", 1000));
    for key in ["p1", "kept-0", "kept-1", "kept-2"] {
        pool.delete(key.as_bytes()).unwrap();
    }
    assert_empty_and_whole(&pool);
}

#[test]
fn a_create_that_finds_no_room_or_no_record_takes_back_what_other_live_processes_keep() {
    let name = Name::new("keptlive");
    let pool = create_limited(&name, 1 << 20, 10);
    // A live process keeps eight records: ten creates here need them back.
    let mut records = Child::spawn("child_roles", "keeper", &format!("{} 64", name.0));
    records.expect("done");
    for i in 0..10 {
        put(&pool, format!("small-{i}").as_bytes(), 64);
    }
    assert!(matches!(pool.create(b"one-more", 64), Err(Error::ObjectLimit { .. })), "ten is the limit");
    pool.check().unwrap();
    for i in 0..10 {
        pool.delete(format!("small-{i}").as_bytes()).unwrap();
    }
    // Another keeps eight 120 KiB blocks, most of the memory: a create of all but 8 KiB needs
    // them back (and the small blocks this process kept, lest they split the free space).
    let mut blocks = Child::spawn("child_roles", "keeper", &format!("{} {}", name.0, 120 << 10));
    blocks.expect("done");
    let big = pool.create(b"big", (1 << 20) - (8 << 10)).expect("the blocks another process keeps are given back");
    pool.check().unwrap();
    drop(big);
    records.kill();
    blocks.kill();
    pool.reclaim().unwrap();
    assert_empty_and_whole(&pool);
}

#[test]
fn a_lock_word_corrupted_to_name_no_live_holder_answers_a_status_in_bounded_time_never_hangs() {
    use std::os::unix::fs::FileExt;
    let name = Name::new("badlock");
    let pool = create(&name, 1 << 20);
    put(&pool, b"kept", 100);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(pool.path().unwrap()).unwrap();
    let mut span = [0u8; 8];
    file.read_exact_at(&mut span, 64 + 16 * 2).unwrap(); // the Locks area, the 3rd span
    let word = u64::from_ne_bytes(span) + 8; // the mutex's own word, after its 8-byte tag
    file.write_all_at(&0x3fff_fff0u32.to_ne_bytes(), word).unwrap(); // a thread id nobody has
    let started = std::time::Instant::now();
    let e = pool.create(b"new", 10).expect_err("the lock cannot be taken");
    let waited = started.elapsed();
    assert!(e.to_string().contains("held for more than 5 s"), "{e}");
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(15), "{waited:?}");
    // The word put back, the pool works and kept what it held.
    file.write_all_at(&0u32.to_ne_bytes(), word).unwrap();
    assert_eq!(pool.get(b"kept", Wait::Now).unwrap().as_slice(), pattern(b"kept", 100));
    put(&pool, b"new", 10);
    pool.check().unwrap();
}

#[test]
fn threads_of_one_process_sharing_its_record_cache_while_stats_empty_it_lose_no_bytes_and_leak_nothing() {
    // Four threads create, read and delete short keys of three sizes (mostly through the record
    // cache their process keeps, under a chain's lock alone), with long keys and aborted creates
    // (under the pool's mutex) between; a fifth thread reads the stats, which empties every cache.
    let name = Name::new("cachethreads");
    let pool = create_limited(&name, 4 << 20, 4096);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (cycles, stats) = std::thread::scope(|s| {
        let pool = &pool;
        let stop = &stop;
        let stats = s.spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let st = pool.stats();
                assert!(st.used_bytes <= st.capacity_bytes, "{st:?}");
                n += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            n
        });
        let workers: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    // A bound in time too, for slow builds on a busy machine.
                    let until = std::time::Instant::now() + Duration::from_secs(20);
                    let mut n = 0usize;
                    while n < 1500 && std::time::Instant::now() < until {
                        let key = match n % 11 {
                            10 => format!("a-long-key-of-thread-{t}-number-{n}"),
                            _ => format!("t{t}-{}", n % 4),
                        };
                        let len = [64, 4096, 100, 65536, 0][n % 5];
                        if n % 7 == 6 {
                            drop(pool.create(key.as_bytes(), len).unwrap()); // aborted
                        }
                        put(pool, key.as_bytes(), len);
                        let got = pool.get(key.as_bytes(), Wait::Now).unwrap();
                        assert_eq!(got.as_slice(), pattern(key.as_bytes(), len), "{key}");
                        drop(got);
                        pool.delete(key.as_bytes()).unwrap();
                        if n % 64 == 63 {
                            let _ = pool.stats(); // the other threads' creates race this one
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let cycles: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (cycles, stats.join().unwrap())
    });
    assert!(cycles >= 400, "{cycles} cycles ({stats} reads of the stats alongside)");
    assert_empty_and_whole(&pool);
}
