//! Key → object, sharded so that readers of different keys do not contend.
//!
//! Holds each entry's visibility (created or sealed), lets readers wait for a key to be sealed, and
//! removes keys on abort and delete. An entry is an `Arc`; whoever else holds a clone keeps the
//! object alive after its key is gone, which is how delete-while-referenced works.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

const SHARDS: usize = 64;

/// What the index needs to know of an object.
pub trait Entry {
    fn key(&self) -> &Arc<[u8]>;
    fn is_sealed(&self) -> bool;
    /// Makes the object sealed. Called once, under the shard's lock.
    fn mark_sealed(&self);
    /// When the entry was last used (sealed or read); smaller is older. For eviction.
    fn last_used(&self) -> u64 {
        0
    }
}

/// The state of a key at one moment.
pub enum Lookup<T> {
    Sealed(Arc<T>),
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

type Map<T> = HashMap<Arc<[u8]>, Arc<T>, foldhash::fast::RandomState>;

#[repr(align(128))]
struct Shard<T> {
    map: Mutex<Map<T>>,
    sealed: Condvar,
}

pub struct Index<T> {
    shards: Box<[Shard<T>]>,
    hasher: foldhash::fast::RandomState,
    closed: AtomicBool,
}

impl<T: Entry> Default for Index<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Entry> Index<T> {
    pub fn new() -> Self {
        let shards = (0..SHARDS).map(|_| Shard { map: Mutex::new(Map::default()), sealed: Condvar::new() }).collect();
        Index { shards, hasher: Default::default(), closed: AtomicBool::new(false) }
    }

    fn shard(&self, key: &[u8]) -> &Shard<T> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h >> 58) as usize % SHARDS]
    }

    fn lock<'a>(&self, shard: &'a Shard<T>) -> MutexGuard<'a, Map<T>> {
        // A panic while holding a shard lock cannot leave the map half-updated (every update is
        // one HashMap call), so a poisoned lock is still consistent.
        shard.map.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Inserts a new, unsealed entry made by `make` if `key` is absent. `make` runs under the shard
    /// lock, so a failed `make` (pool full) never races with another insert of the same key.
    pub fn insert_with<E>(
        &self,
        key: &[u8],
        make: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Result<Arc<T>, E>, IndexError> {
        let shard = self.shard(key);
        let mut map = self.lock(shard);
        if self.is_closed() {
            return Err(IndexError::Closed);
        }
        if map.contains_key(key) {
            return Err(IndexError::AlreadyExists);
        }
        let entry = match make() {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        map.insert(entry.key().clone(), entry.clone());
        Ok(Ok(entry))
    }

    /// Seals `entry` (which must be the unsealed entry under its key) and wakes its waiters.
    pub fn seal(&self, entry: &Arc<T>) -> Result<(), IndexError> {
        let shard = self.shard(entry.key());
        let map = self.lock(shard);
        if entry.is_sealed() {
            return Err(IndexError::AlreadySealed);
        }
        match map.get(&**entry.key()) {
            Some(current) if Arc::ptr_eq(current, entry) => {
                entry.mark_sealed();
                drop(map);
                shard.sealed.notify_all();
                Ok(())
            }
            // Only `close` removes an unsealed entry that is not aborted.
            _ => Err(IndexError::Closed),
        }
    }

    /// The key's state now.
    pub fn lookup(&self, key: &[u8]) -> Lookup<T> {
        let map = self.lock(self.shard(key));
        match map.get(key) {
            Some(e) if e.is_sealed() => Lookup::Sealed(e.clone()),
            Some(_) => Lookup::Unsealed,
            None => Lookup::Absent,
        }
    }

    /// Waits until `key` is sealed, `deadline` passes (`None`: forever) or the index closes.
    pub fn wait_sealed(&self, key: &[u8], deadline: Option<Instant>) -> Result<Arc<T>, IndexError> {
        let shard = self.shard(key);
        let mut map = self.lock(shard);
        loop {
            if self.is_closed() {
                return Err(IndexError::Closed);
            }
            if let Some(e) = map.get(key) {
                if e.is_sealed() {
                    return Ok(e.clone());
                }
            }
            map = match deadline {
                None => shard.sealed.wait(map).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(IndexError::Timeout);
                    }
                    shard.sealed.wait_timeout(map, d - now).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
    }

    pub fn contains_sealed(&self, key: &[u8]) -> bool {
        matches!(self.lock(self.shard(key)).get(key), Some(e) if e.is_sealed())
    }

    /// Removes the key of an unsealed `entry` if it is still this entry's (abort). Idempotent.
    pub fn remove_unsealed(&self, entry: &Arc<T>) -> bool {
        let mut map = self.lock(self.shard(entry.key()));
        match map.get(&**entry.key()) {
            Some(current) if Arc::ptr_eq(current, entry) && !entry.is_sealed() => {
                let removed = map.remove(&**entry.key());
                drop(map);
                drop(removed);
                true
            }
            _ => false,
        }
    }

    /// Removes a sealed key (delete) and returns its entry; an unsealed one is left alone.
    pub fn remove_sealed(&self, key: &[u8]) -> Result<Arc<T>, IndexError> {
        let mut map = self.lock(self.shard(key));
        if self.is_closed() {
            return Err(IndexError::Closed);
        }
        match map.get(key) {
            None => Err(IndexError::NotFound),
            Some(e) if !e.is_sealed() => Err(IndexError::NotSealed),
            Some(_) => map.remove(key).ok_or(IndexError::NotFound),
        }
    }

    /// Sealed entries that nobody but the index holds (evictable), oldest use first.
    pub fn evictable(&self) -> Vec<(u64, Arc<[u8]>)> {
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let map = self.lock(shard);
            for e in map.values() {
                if e.is_sealed() && Arc::strong_count(e) == 1 {
                    found.push((e.last_used(), e.key().clone()));
                }
            }
        }
        found.sort_unstable_by_key(|(used, _)| *used);
        found
    }

    /// Removes `key` if it is still sealed and held by nobody but the index (checked under the
    /// shard's lock, where no reader can take a reference meanwhile) and returns it.
    pub fn evict(&self, key: &[u8]) -> Option<Arc<T>> {
        let mut map = self.lock(self.shard(key));
        match map.get(key) {
            Some(e) if e.is_sealed() && Arc::strong_count(e) == 1 => map.remove(key),
            _ => None,
        }
    }

    /// Closes the index: every later insert, seal, delete and wait fails with `Closed`, every
    /// waiter wakes, and every entry is handed back to the caller to drop.
    pub fn close(&self) -> Vec<Arc<T>> {
        self.closed.store(true, Ordering::Release);
        let mut entries = Vec::new();
        for shard in self.shards.iter() {
            let mut map = self.lock(shard);
            entries.extend(map.drain().map(|(_, e)| e));
            drop(map);
            shard.sealed.notify_all();
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[derive(Debug)]
    struct Obj {
        key: Arc<[u8]>,
        sealed: AtomicBool,
    }

    impl Entry for Obj {
        fn key(&self) -> &Arc<[u8]> {
            &self.key
        }
        fn is_sealed(&self) -> bool {
            self.sealed.load(Ordering::Acquire)
        }
        fn mark_sealed(&self) {
            self.sealed.store(true, Ordering::Release)
        }
    }

    fn obj(key: &[u8]) -> Result<Arc<Obj>, ()> {
        Ok(Arc::new(Obj { key: key.into(), sealed: AtomicBool::new(false) }))
    }

    fn state(ix: &Index<Obj>, key: &[u8]) -> &'static str {
        match ix.lookup(key) {
            Lookup::Sealed(_) => "sealed",
            Lookup::Unsealed => "unsealed",
            Lookup::Absent => "absent",
        }
    }

    #[test]
    fn states_move_absent_unsealed_sealed_absent() {
        let ix = Index::new();
        assert_eq!(state(&ix, b"k"), "absent");
        let e = ix.insert_with(b"k", || obj(b"k")).unwrap().unwrap();
        assert_eq!(state(&ix, b"k"), "unsealed");
        assert!(!ix.contains_sealed(b"k"));
        assert_eq!(ix.remove_sealed(b"k").unwrap_err(), IndexError::NotSealed);
        ix.seal(&e).unwrap();
        assert_eq!(state(&ix, b"k"), "sealed");
        assert!(ix.contains_sealed(b"k"));
        assert_eq!(ix.seal(&e).unwrap_err(), IndexError::AlreadySealed);
        assert_eq!(ix.len(), 1);
        let removed = ix.remove_sealed(b"k").unwrap();
        assert!(Arc::ptr_eq(&removed, &e));
        assert_eq!(state(&ix, b"k"), "absent");
        assert_eq!(ix.remove_sealed(b"k").unwrap_err(), IndexError::NotFound);
        assert_eq!(ix.len(), 0);
    }

    #[test]
    fn duplicate_insert_is_refused_without_calling_make() {
        let ix = Index::new();
        ix.insert_with(b"k", || obj(b"k")).unwrap().unwrap();
        let r = ix.insert_with(b"k", || -> Result<Arc<Obj>, ()> { panic!("make must not run") });
        assert_eq!(r.err(), Some(IndexError::AlreadyExists));
    }

    #[test]
    fn keys_differing_only_after_a_nul_byte_or_in_length_are_distinct() {
        let ix = Index::new();
        for k in [&b"a\0b"[..], b"a\0c", b"a", b"a\0"] {
            ix.insert_with(k, || obj(k)).unwrap().unwrap();
        }
        assert_eq!(ix.len(), 4);
    }

    #[test]
    fn abort_removes_only_the_same_unsealed_entry() {
        let ix = Index::new();
        let first = ix.insert_with(b"k", || obj(b"k")).unwrap().unwrap();
        assert!(ix.remove_unsealed(&first));
        assert!(!ix.remove_unsealed(&first), "second abort is a no-op");
        let second = ix.insert_with(b"k", || obj(b"k")).unwrap().unwrap();
        assert!(!ix.remove_unsealed(&first), "a stale handle must not remove a new entry");
        assert_eq!(state(&ix, b"k"), "unsealed");
        ix.seal(&second).unwrap();
        assert!(!ix.remove_unsealed(&second), "sealed entries are not aborted");
    }

    #[test]
    fn waiter_is_woken_by_seal_from_another_thread() {
        let ix = Arc::new(Index::<Obj>::new());
        let ix2 = ix.clone();
        let waiter = std::thread::spawn(move || {
            ix2.wait_sealed(b"k", Some(Instant::now() + Duration::from_secs(10))).map(|e| e.key.to_vec())
        });
        std::thread::sleep(Duration::from_millis(20));
        let e = ix.insert_with(b"k", || obj(b"k")).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        ix.seal(&e).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(b"k".to_vec()));
    }

    #[test]
    fn wait_times_out_on_unsealed_key() {
        let ix = Index::new();
        ix.insert_with(b"k", || obj(b"k")).unwrap().unwrap();
        let t = Instant::now();
        let r = ix.wait_sealed(b"k", Some(t + Duration::from_millis(30)));
        assert_eq!(r.err(), Some(IndexError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn only_sealed_entries_nobody_holds_are_evictable() {
        let ix = Index::new();
        let sealed = ix.insert_with(b"sealed", || obj(b"sealed")).unwrap().unwrap();
        ix.seal(&sealed).unwrap();
        let held = ix.insert_with(b"held", || obj(b"held")).unwrap().unwrap();
        ix.seal(&held).unwrap();
        let _unsealed = ix.insert_with(b"unsealed", || obj(b"unsealed")).unwrap().unwrap();
        drop(sealed);
        let keys: Vec<Vec<u8>> = ix.evictable().into_iter().map(|(_, k)| k.to_vec()).collect();
        assert_eq!(keys, vec![b"sealed".to_vec()]);
        assert!(ix.evict(b"held").is_none(), "a referenced entry stays");
        assert!(ix.evict(b"unsealed").is_none(), "an unsealed entry stays");
        assert!(ix.evict(b"sealed").is_some());
        assert_eq!(state(&ix, b"sealed"), "absent");
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn close_wakes_waiters_hands_back_entries_and_refuses_new_work() {
        let ix = Arc::new(Index::<Obj>::new());
        let e = ix.insert_with(b"a", || obj(b"a")).unwrap().unwrap();
        ix.seal(&e).unwrap();
        ix.insert_with(b"b", || obj(b"b")).unwrap().unwrap();
        let ix2 = ix.clone();
        let waiter = std::thread::spawn(move || ix2.wait_sealed(b"never", None).err());
        std::thread::sleep(Duration::from_millis(20));
        let entries = ix.close();
        assert_eq!(entries.len(), 2);
        assert_eq!(waiter.join().unwrap(), Some(IndexError::Closed));
        assert_eq!(ix.insert_with(b"c", || obj(b"c")).err(), Some(IndexError::Closed));
        assert_eq!(ix.remove_sealed(b"a").err(), Some(IndexError::Closed));
        assert_eq!(ix.len(), 0);
    }
}
