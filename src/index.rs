//! Key → object id, sharded so that readers of different keys do not contend.
//!
//! Holds each entry's visibility (created or sealed), lets readers wait for a key to be sealed, and
//! removes keys on abort and delete. A slot is the object's 32-bit record id; keys are compared in
//! the records, so the index costs about 10 bytes per key. While its key is present the index
//! holds one reference to the record; whoever else holds one keeps the object alive after its key
//! is gone, which is how delete-while-referenced works.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use hashbrown::HashTable;

use crate::record::{Record, Records};

const SHARDS: usize = 64;

/// The state of a key at one moment.
pub enum Lookup {
    /// Sealed; a reference was taken for the caller.
    Sealed(u32),
    Unsealed,
    Absent,
}

#[derive(Debug, PartialEq, Eq)]
pub enum IndexError {
    AlreadyExists,
    NotFound,
    NotSealed,
    AlreadySealed,
    Timeout,
    Closed,
}

/// Keeps the `n` items of `items` with the smallest keys, in key order: a partial sort, for the
/// eviction candidates of one scan.
pub(crate) fn first_by_key<T, K: Ord>(items: &mut Vec<T>, n: usize, key: impl Fn(&T) -> K + Copy) {
    if items.len() > n {
        if n == 0 {
            items.clear();
            return;
        }
        items.select_nth_unstable_by_key(n - 1, key);
        items.truncate(n);
    }
    items.sort_unstable_by_key(key);
}

#[cfg(test)]
thread_local! {
    /// Scans [`Index::evictable`] made on this thread.
    pub(crate) static EVICTABLE_SCANS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A sealed object nobody but the index held when the index was scanned, for eviction.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub last_used: u64,
    hash: u64,
    pub id: u32,
}

#[repr(align(128))]
struct Shard {
    table: Mutex<HashTable<u32>>,
    sealed: Condvar,
    /// Threads waiting on `sealed`; changed and read only under `table`'s lock, so a seal that
    /// sees none skips the wake-up (a system call) and no waiter can miss it.
    waiters: AtomicU32,
}

pub struct Index {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    closed: AtomicBool,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard { table: Mutex::new(HashTable::new()), sealed: Condvar::new(), waiters: AtomicU32::new(0) })
            .collect();
        Index { shards, hasher: Default::default(), closed: AtomicBool::new(false) }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a hash. Bits 32..38: the table uses the low bits to place a slot and the top 7
    /// as its tag, and a shard whose keys shared those would probe more.
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    fn lock<'a>(&self, shard: &'a Shard) -> MutexGuard<'a, HashTable<u32>> {
        // A panic while holding a shard lock cannot leave the table half-updated (every update is
        // one table call), so a poisoned lock is still consistent.
        shard.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find<'t>(table: &'t HashTable<u32>, recs: &Records, hash: u64, key: &[u8]) -> Option<&'t u32> {
        table.find(hash, |&id| recs.get(id).key() == key)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Keys present (created or sealed). Takes every shard's lock in turn: for stats, not hot paths.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| self.lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the record `make` fills for `key` if `key` is absent; `make` answers its id, with a
    /// reference for the index already counted. `make` runs under the shard lock, so a failed
    /// `make` (pool full) never races with another insert of the same key.
    pub fn insert_with<E>(
        &self,
        recs: &Records,
        key: &[u8],
        make: impl FnOnce() -> Result<u32, E>,
    ) -> Result<Result<u32, E>, IndexError> {
        let hash = self.hash(key);
        let mut table = self.lock(self.shard(hash));
        if self.is_closed() {
            return Err(IndexError::Closed);
        }
        if Self::find(&table, recs, hash, key).is_some() {
            return Err(IndexError::AlreadyExists);
        }
        let id = match make() {
            Ok(id) => id,
            Err(e) => return Ok(Err(e)),
        };
        table.insert_unique(hash, id, |&id| self.hash(recs.get(id).key()));
        Ok(Ok(id))
    }

    /// Seals record `id` (which must be the unsealed entry under its key) and wakes its waiters.
    pub fn seal(&self, recs: &Records, id: u32) -> Result<(), IndexError> {
        let rec = recs.get(id);
        let hash = self.hash(rec.key());
        let shard = self.shard(hash);
        let table = self.lock(shard);
        if rec.is_sealed() {
            return Err(IndexError::AlreadySealed);
        }
        // Keys are unique, so the record is the entry under its key if it is in the table at all.
        if table.find(hash, |&x| x == id).is_none() {
            // Only `close` removes an unsealed entry that is not aborted.
            return Err(IndexError::Closed);
        }
        rec.mark_sealed();
        let waiting = shard.waiters.load(Ordering::Relaxed) > 0;
        drop(table);
        if waiting {
            shard.sealed.notify_all();
        }
        Ok(())
    }

    /// The key's state now.
    pub fn lookup(&self, recs: &Records, key: &[u8]) -> Lookup {
        let hash = self.hash(key);
        let table = self.lock(self.shard(hash));
        match Self::find(&table, recs, hash, key) {
            Some(&id) => acquire_if_sealed(recs.get(id), id).map_or(Lookup::Unsealed, Lookup::Sealed),
            None => Lookup::Absent,
        }
    }

    /// Waits until `key` is sealed, `deadline` passes (`None`: forever) or the index closes, and
    /// answers it with a reference taken for the caller.
    pub fn wait_sealed(&self, recs: &Records, key: &[u8], deadline: Option<Instant>) -> Result<u32, IndexError> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let mut table = self.lock(shard);
        loop {
            if self.is_closed() {
                return Err(IndexError::Closed);
            }
            if let Some(id) = Self::find(&table, recs, hash, key).and_then(|&id| acquire_if_sealed(recs.get(id), id)) {
                return Ok(id);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(IndexError::Timeout);
                    }
                    Some(d - now)
                }
            };
            shard.waiters.fetch_add(1, Ordering::Relaxed);
            table = match timeout {
                None => shard.sealed.wait(table).unwrap_or_else(|p| p.into_inner()),
                Some(t) => shard.sealed.wait_timeout(table, t).unwrap_or_else(|p| p.into_inner()).0,
            };
            shard.waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn contains_sealed(&self, recs: &Records, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let table = self.lock(self.shard(hash));
        matches!(Self::find(&table, recs, hash, key), Some(&id) if recs.get(id).is_sealed())
    }

    /// Removes the key of unsealed record `id` if it is still in the index (abort). Answers true
    /// when it did; the caller then drops the index's reference. Idempotent.
    pub fn remove_unsealed(&self, recs: &Records, id: u32) -> bool {
        let rec = recs.get(id);
        let hash = self.hash(rec.key());
        let mut table = self.lock(self.shard(hash));
        if rec.is_sealed() {
            return false;
        }
        match table.find_entry(hash, |&x| x == id) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Removes a sealed key (delete) and answers its id, whose index reference the caller drops;
    /// an unsealed one is left alone.
    pub fn remove_sealed(&self, recs: &Records, key: &[u8]) -> Result<u32, IndexError> {
        let hash = self.hash(key);
        let mut table = self.lock(self.shard(hash));
        if self.is_closed() {
            return Err(IndexError::Closed);
        }
        match table.find_entry(hash, |&id| recs.get(id).key() == key) {
            Err(_) => Err(IndexError::NotFound),
            Ok(entry) if !recs.get(*entry.get()).is_sealed() => Err(IndexError::NotSealed),
            Ok(entry) => Ok(entry.remove().0),
        }
    }

    /// Sealed entries that nobody but the index holds (evictable), oldest use first: at most
    /// `limit` of them, the oldest, found by a partial sort.
    pub fn evictable(&self, recs: &Records, limit: usize) -> Vec<Candidate> {
        #[cfg(test)]
        EVICTABLE_SCANS.with(|c| c.set(c.get() + 1));
        if limit == 0 {
            return Vec::new();
        }
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let table = self.lock(shard);
            for &id in table.iter() {
                let rec = recs.get(id);
                if rec.is_sealed() && rec.refs() == 1 {
                    found.push(Candidate { last_used: rec.last_used(), hash: self.hash(rec.key()), id });
                }
            }
        }
        first_by_key(&mut found, limit, |c| c.last_used);
        found
    }

    /// Removes a candidate if it is still in the index, sealed, held by nobody but the index, and
    /// unused since the scan (checked under the shard's lock, where no reader can take a reference
    /// meanwhile). Answers its id, whose index reference the caller drops.
    pub fn evict(&self, recs: &Records, c: Candidate) -> Option<u32> {
        let mut table = self.lock(self.shard(c.hash));
        let entry = table.find_entry(c.hash, |&x| x == c.id).ok()?;
        let rec = recs.get(c.id);
        if rec.is_sealed() && rec.refs() == 1 && rec.last_used() == c.last_used {
            return Some(entry.remove().0);
        }
        None
    }

    /// Closes the index: every later insert, seal, delete and wait fails with `Closed`, every
    /// waiter wakes, and every entry's id is handed back for the caller to drop its reference.
    pub fn close(&self) -> Vec<u32> {
        self.closed.store(true, Ordering::Release);
        let mut ids = Vec::new();
        for shard in self.shards.iter() {
            let mut table = self.lock(shard);
            ids.extend(table.drain());
            drop(table);
            shard.sealed.notify_all();
        }
        ids
    }
}

/// Takes a reference to a sealed record for a reader; called under the shard lock, where the
/// index's own reference keeps the record alive.
fn acquire_if_sealed(rec: &Record, id: u32) -> Option<u32> {
    rec.is_sealed().then(|| {
        rec.acquire();
        id
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::Block;
    use std::sync::Arc;
    use std::time::Duration;

    /// Records for ids 0..64, and a `make` that fills record `id` for `key` with the index's
    /// reference and the creator's.
    struct Fixture {
        recs: Records,
        ix: Index,
    }

    impl Fixture {
        fn new() -> Fixture {
            let recs = Records::new(64).unwrap();
            Fixture { recs, ix: Index::new() }
        }

        fn insert(&self, key: &[u8], id: u32) -> Result<u32, IndexError> {
            self.ix
                .insert_with(&self.recs, key, || -> Result<u32, ()> {
                    // SAFETY: each test uses each id once, so the record is unreferenced.
                    unsafe { self.recs.init(id, Block::from_parts(0, 0, u32::MAX), 0, key, None, 2) };
                    Ok(id)
                })
                .map(|made| made.unwrap())
        }

        fn state(&self, key: &[u8]) -> &'static str {
            match self.ix.lookup(&self.recs, key) {
                Lookup::Sealed(id) => {
                    assert!(!self.recs.get(id).release(), "the lookup's reference is not the last");
                    "sealed"
                }
                Lookup::Unsealed => "unsealed",
                Lookup::Absent => "absent",
            }
        }
    }

    #[test]
    fn states_move_absent_unsealed_sealed_absent() {
        let f = Fixture::new();
        assert_eq!(f.state(b"k"), "absent");
        let id = f.insert(b"k", 1).unwrap();
        assert_eq!(f.state(b"k"), "unsealed");
        assert!(!f.ix.contains_sealed(&f.recs, b"k"));
        assert_eq!(f.ix.remove_sealed(&f.recs, b"k").unwrap_err(), IndexError::NotSealed);
        f.ix.seal(&f.recs, id).unwrap();
        assert_eq!(f.state(b"k"), "sealed");
        assert!(f.ix.contains_sealed(&f.recs, b"k"));
        assert_eq!(f.ix.seal(&f.recs, id).unwrap_err(), IndexError::AlreadySealed);
        assert_eq!(f.ix.len(), 1);
        assert_eq!(f.ix.remove_sealed(&f.recs, b"k"), Ok(id));
        assert_eq!(f.state(b"k"), "absent");
        assert_eq!(f.ix.remove_sealed(&f.recs, b"k").unwrap_err(), IndexError::NotFound);
        assert_eq!(f.ix.len(), 0);
    }

    #[test]
    fn lookup_of_a_sealed_key_takes_a_reference_for_the_reader() {
        let f = Fixture::new();
        let id = f.insert(b"k", 1).unwrap();
        f.ix.seal(&f.recs, id).unwrap();
        assert_eq!(f.recs.get(id).refs(), 2);
        assert!(matches!(f.ix.lookup(&f.recs, b"k"), Lookup::Sealed(1)));
        assert_eq!(f.recs.get(id).refs(), 3);
        assert!(matches!(f.ix.wait_sealed(&f.recs, b"k", None), Ok(1)));
        assert_eq!(f.recs.get(id).refs(), 4);
    }

    #[test]
    fn duplicate_insert_is_refused_without_calling_make() {
        let f = Fixture::new();
        f.insert(b"k", 1).unwrap();
        let r = f.ix.insert_with(&f.recs, b"k", || -> Result<u32, ()> { panic!("make must not run") });
        assert_eq!(r.err(), Some(IndexError::AlreadyExists));
    }

    #[test]
    fn keys_differing_only_after_a_nul_byte_in_length_or_past_the_inline_limit_are_distinct() {
        let f = Fixture::new();
        let long_a = [b'x'; 40];
        let mut long_b = long_a;
        long_b[39] = b'y';
        for (id, k) in [&b"a\0b"[..], b"a\0c", b"a", b"a\0", &long_a, &long_b, &long_a[..17]].into_iter().enumerate() {
            f.insert(k, id as u32).unwrap();
        }
        assert_eq!(f.ix.len(), 7);
        assert_eq!(f.insert(&long_b, 10).err(), Some(IndexError::AlreadyExists));
    }

    #[test]
    fn thousands_of_keys_are_found_after_the_tables_grow() {
        let recs = Records::new(5000).unwrap();
        let ix = Index::new();
        for id in 0..5000u32 {
            let key = format!("key-{id}");
            let made = ix.insert_with(&recs, key.as_bytes(), || -> Result<u32, ()> {
                // SAFETY: a fresh id, unreferenced.
                unsafe { recs.init(id, Block::from_parts(0, 0, u32::MAX), 0, key.as_bytes(), None, 1) };
                Ok(id)
            });
            assert_eq!(made, Ok(Ok(id)));
            ix.seal(&recs, id).unwrap();
        }
        for id in (0..5000u32).step_by(7) {
            assert!(ix.contains_sealed(&recs, format!("key-{id}").as_bytes()));
            assert_eq!(ix.remove_sealed(&recs, format!("key-{id}").as_bytes()), Ok(id));
        }
        assert_eq!(ix.len(), 5000 - 715);
        assert!(!ix.contains_sealed(&recs, b"key-7"));
        assert!(ix.contains_sealed(&recs, b"key-8"));
    }

    #[test]
    fn abort_removes_only_the_same_unsealed_entry() {
        let f = Fixture::new();
        let first = f.insert(b"k", 1).unwrap();
        assert!(f.ix.remove_unsealed(&f.recs, first));
        assert!(!f.ix.remove_unsealed(&f.recs, first), "second abort is a no-op");
        let second = f.insert(b"k", 2).unwrap();
        assert!(!f.ix.remove_unsealed(&f.recs, first), "a stale id must not remove a new entry");
        assert_eq!(f.state(b"k"), "unsealed");
        f.ix.seal(&f.recs, second).unwrap();
        assert!(!f.ix.remove_unsealed(&f.recs, second), "sealed entries are not aborted");
    }

    #[test]
    fn waiter_is_woken_by_seal_from_another_thread() {
        let f = Arc::new(Fixture::new());
        let f2 = f.clone();
        let waiter = std::thread::spawn(move || {
            f2.ix.wait_sealed(&f2.recs, b"k", Some(Instant::now() + Duration::from_secs(10)))
        });
        std::thread::sleep(Duration::from_millis(20));
        let id = f.insert(b"k", 3).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        f.ix.seal(&f.recs, id).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(3));
    }

    #[test]
    fn wait_times_out_on_unsealed_key() {
        let f = Fixture::new();
        f.insert(b"k", 1).unwrap();
        let t = Instant::now();
        let r = f.ix.wait_sealed(&f.recs, b"k", Some(t + Duration::from_millis(30)));
        assert_eq!(r.err(), Some(IndexError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn only_sealed_entries_nobody_holds_are_evictable_oldest_first() {
        let f = Fixture::new();
        let (old, held, new) =
            (f.insert(b"old", 1).unwrap(), f.insert(b"held", 2).unwrap(), f.insert(b"new", 3).unwrap());
        f.insert(b"unsealed", 4).unwrap();
        for (id, used) in [(old, 10), (held, 5), (new, 20)] {
            f.ix.seal(&f.recs, id).unwrap();
            f.recs.get(id).set_last_used(used);
        }
        // The creators of `old` and `new` release theirs; `held` keeps its creator's reference.
        assert!(!f.recs.get(old).release() && !f.recs.get(new).release());
        let found = f.ix.evictable(&f.recs, 10);
        assert_eq!(found.iter().map(|c| c.id).collect::<Vec<_>>(), vec![old, new]);
        assert_eq!(f.ix.evictable(&f.recs, 1).iter().map(|c| c.id).collect::<Vec<_>>(), vec![old], "the oldest only");
        f.recs.get(new).set_last_used(30);
        assert_eq!(f.ix.evict(&f.recs, found[1]), None, "used since the scan");
        assert_eq!(f.ix.evict(&f.recs, found[0]), Some(old));
        assert_eq!(f.ix.evict(&f.recs, found[0]), None, "already gone");
        assert_eq!(f.state(b"old"), "absent");
        assert_eq!(f.ix.len(), 3);
    }

    #[test]
    fn close_wakes_waiters_hands_back_entries_and_refuses_new_work() {
        let f = Arc::new(Fixture::new());
        let a = f.insert(b"a", 1).unwrap();
        f.ix.seal(&f.recs, a).unwrap();
        f.insert(b"b", 2).unwrap();
        let f2 = f.clone();
        let waiter = std::thread::spawn(move || f2.ix.wait_sealed(&f2.recs, b"never", None).err());
        std::thread::sleep(Duration::from_millis(20));
        let mut ids = f.ix.close();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(waiter.join().unwrap(), Some(IndexError::Closed));
        assert_eq!(f.insert(b"c", 3).err(), Some(IndexError::Closed));
        assert_eq!(f.ix.remove_sealed(&f.recs, b"a").err(), Some(IndexError::Closed));
        assert_eq!(f.ix.len(), 0);
    }
}
