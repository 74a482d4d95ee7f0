//! Per-slot reference ledgers: what each process holds (creates not sealed yet, read references),
//! so that reclaiming a dead process's slot can undo it.
//!
//! The Ledgers area holds one ledger per process slot, all the same size: a [`LedgerHeader`] and
//! an array of [`Entry`]. An entry is empty, a create in progress (`CREATING`, an object id), or
//! references on one object (`HELD`, an id and a count) with possibly one change in flight
//! (`TAKING` or `RELEASING`, with the count it will have after the change in `target`). Entries
//! are found in O(1): a new one comes off a free list threaded through the empty entries, or past
//! the high-water mark; the caller keeps the entry's index (a [`Handle`]) for the later calls on
//! that object. Several entries may name one object (the engine gives each buffer its own).
//! Ids carry the record's generation, so an entry never names a later object that reuses the
//! record.
//!
//! How the engine uses them (`crate::shm::store`): every ledger change and the record change it
//! goes with happen under the pool's one mutex, ledger first. A record's reference count is
//! derived from the ledgers (plus the index's and the creator's), so after a process dies
//! holding the mutex, half-way between the two, the next holder recomputes the counts from the
//! ledgers ([`Ledger::entries`], an in-flight change counting at its target) and then undoes the
//! dead process's ledger and empties it ([`Ledger::clear`]). Undoing under the mutex is
//! idempotent the same way: a cleaner that dies part-way leaves the entries it had not cleared
//! yet, and the counts are derived again from what is left.
//!
//! Writes: a ledger is written by the process owning its slot, under the pool's mutex, and by
//! the cleaner holding a dead owner's slot lock and the mutex ([`Ledger::clear`],
//! [`Ledger::reset`]). Every field is an atomic; an entry's `state` is stored last, with release,
//! after the fields it publishes. Anyone may read a ledger ([`Ledger::check`]).

use std::io;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::shm::offset::{Area, Shared};

/// Nothing recorded.
pub(crate) const EMPTY: u32 = 0;
/// An object created but not sealed yet.
pub(crate) const CREATING: u32 = 1;
/// `count` references held, nothing in flight.
pub(crate) const HELD: u32 = 2;
/// `count` references held, `target` perhaps taken in the record already.
pub(crate) const TAKING: u32 = 3;
/// `count` references held, perhaps released down to `target` in the record already.
pub(crate) const RELEASING: u32 = 4;

/// The most references one entry may count; more is corruption.
pub(crate) const MAX_COUNT: u64 = 1 << 40;

/// The head of one slot's ledger. Aligned to 8 only, like [`Entry`], so that the ledgers of any
/// capacity follow each other without gaps.
#[repr(C)]
pub(crate) struct LedgerHeader {
    /// Entries at or past this index have never been used since the last reset (so are empty).
    high_water: AtomicU64,
    /// One more than the first entry of the free list (empty entries below the high-water mark),
    /// or 0 when it is empty: all zeros is an empty ledger.
    free_head: AtomicU64,
    /// Zero.
    reserved: [AtomicU64; 5],
    /// Entries whose file blocks the engine reserved ([`Ledger::back`]); 0 for a ledger it
    /// never used. Entries past it may be holes of the file: nobody touches them.
    backed: AtomicU64,
}

const _: () = {
    assert!(size_of::<LedgerHeader>() == 64);
    assert!(offset_of!(LedgerHeader, high_water) == 0);
    assert!(offset_of!(LedgerHeader, free_head) == 8);
    assert!(offset_of!(LedgerHeader, backed) == 56);
    assert!(std::mem::align_of::<LedgerHeader>() == 8 && std::mem::align_of::<Entry>() == 8);
};

/// One thing a process holds.
#[repr(C)]
pub(crate) struct Entry {
    /// [`EMPTY`], [`CREATING`], [`HELD`], [`TAKING`] or [`RELEASING`]; stored last.
    state: AtomicU32,
    /// Zero.
    reserved: AtomicU32,
    /// The object's id while in use; while on the free list, the next one as `free_head` says it.
    id: AtomicU64,
    count: AtomicU64,
    /// The count after the change in flight (`TAKING`, `RELEASING`).
    target: AtomicU64,
}

const _: () = {
    assert!(size_of::<Entry>() == 32);
    assert!(offset_of!(Entry, state) == 0);
    assert!(offset_of!(Entry, reserved) == 4);
    assert!(offset_of!(Entry, id) == 8);
    assert!(offset_of!(Entry, count) == 16);
    assert!(offset_of!(Entry, target) == 24);
};

// SAFETY: `#[repr(C)]`, atomics only, no padding, valid for every bit pattern.
unsafe impl Shared for LedgerHeader {}
// SAFETY: as above.
unsafe impl Shared for Entry {}

/// The bytes of the Ledgers area for `slots` ledgers of `capacity` entries each.
pub(crate) fn area_len(slots: u64, capacity: u64) -> Option<u64> {
    capacity.checked_mul(size_of::<Entry>() as u64)?.checked_add(size_of::<LedgerHeader>() as u64)?.checked_mul(slots)
}

/// An entry of this process's ledger, kept by the caller between the calls on one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle(u64);

/// One slot's ledger.
pub(crate) struct Ledger<'a> {
    slot: usize,
    /// Where this ledger starts in the Ledgers area.
    base: u64,
    header: &'a LedgerHeader,
    entries: &'a [Entry],
}

/// Entries reserved at a time (64 KiB of them).
const BACKING_CHUNK: u64 = 2048;

fn corrupt(slot: usize, why: String) -> Error {
    Error::Internal(format!("shared pool metadata is corrupt: ledger of slot {slot}: {why}"))
}

impl<'a> Ledger<'a> {
    /// The ledger of slot `slot` in a Ledgers area holding `slots` equal ledgers.
    pub(crate) fn new(area: &Area<'a>, slots: usize, slot: usize) -> Result<Ledger<'a>> {
        let per_slot = area.len() / slots.max(1);
        let head = size_of::<LedgerHeader>();
        if slots == 0 || per_slot < head || area.len() % slots != 0 || (per_slot - head) % size_of::<Entry>() != 0 {
            return Err(Error::InvalidArgument(format!(
                "not a usable zcopy pool file: a ledgers area of {} bytes is not {slots} ledgers",
                area.len()
            )));
        }
        if slot >= slots {
            return Err(corrupt(slot, format!("no such slot of {slots}")));
        }
        let base = (per_slot * slot) as u64;
        let header = area.get::<LedgerHeader>(base)?;
        let entries = area.slice::<Entry>(base + head as u64, ((per_slot - head) / size_of::<Entry>()) as u64)?;
        Ok(Ledger { slot, base, header, entries })
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Makes sure the next entry [`Ledger::begin_create`] or [`Ledger::begin_take`] can take has
    /// file blocks behind it: when the free list is empty and the high-water mark has reached the
    /// reserved entries, `reserve(offset in the Ledgers area, length)` reserves the next chunk.
    /// The header's own page is the creator's to reserve. Called by the owner, before each take.
    pub(crate) fn back(&self, reserve: impl FnOnce(u64, u64) -> Result<()>) -> Result<()> {
        let backed = self.header.backed.load(Ordering::Relaxed).min(self.capacity());
        if self.header.free_head.load(Ordering::Relaxed) != 0 || self.high_water()? < backed {
            return Ok(());
        }
        let upto = (backed + BACKING_CHUNK).min(self.capacity());
        if upto == backed {
            return Ok(());
        }
        let entry = size_of::<Entry>() as u64;
        reserve(self.base + size_of::<LedgerHeader>() as u64 + backed * entry, (upto - backed) * entry)?;
        self.header.backed.store(upto, Ordering::Relaxed);
        Ok(())
    }

    /// The entries [`Ledger::check_within`] may read in a ledger the engine reserves lazily.
    pub(crate) fn backed(&self) -> u64 {
        self.header.backed.load(Ordering::Relaxed).min(self.capacity())
    }

    /// Entry `index`, checked (an index read from shared memory is a claim).
    fn entry(&self, index: u64) -> Result<&'a Entry> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .ok_or_else(|| corrupt(self.slot, format!("entry {index} of {}", self.entries.len())))
    }

    /// The high-water mark, checked.
    fn high_water(&self) -> Result<u64> {
        let high = self.header.high_water.load(Ordering::Acquire);
        if high > self.capacity() {
            return Err(corrupt(self.slot, format!("high-water mark {high} past {} entries", self.capacity())));
        }
        Ok(high)
    }

    /// An empty entry, taken off the free list or past the high-water mark (raised first, so
    /// replay scans the entry from before it is written).
    fn allocate(&self) -> Result<(u64, &'a Entry)> {
        let high = self.high_water()?;
        let next = self.header.free_head.load(Ordering::Relaxed);
        if next != 0 {
            let index = next - 1;
            let entry = self.entry(index)?;
            if index >= high || entry.state.load(Ordering::Relaxed) != EMPTY {
                return Err(corrupt(self.slot, format!("entry {index} on the free list is in use or past {high}")));
            }
            self.header.free_head.store(entry.id.load(Ordering::Relaxed), Ordering::Relaxed);
            return Ok((index, entry));
        }
        if high == self.capacity() {
            return Err(Error::system(
                format!("the reference ledger of process slot {} is full ({high} entries)", self.slot),
                io::Error::from_raw_os_error(libc::ENOBUFS),
            ));
        }
        self.header.high_water.store(high + 1, Ordering::Release);
        Ok((high, self.entry(high)?))
    }

    fn free(&self, index: u64, entry: &Entry) {
        entry.state.store(EMPTY, Ordering::Release);
        entry.id.store(self.header.free_head.load(Ordering::Relaxed), Ordering::Relaxed);
        self.header.free_head.store(index + 1, Ordering::Relaxed);
    }

    /// The entry of `handle` in `state`.
    fn in_state(&self, handle: Handle, state: u32) -> Result<&'a Entry> {
        let entry = self.entry(handle.0)?;
        let found = entry.state.load(Ordering::Relaxed);
        if found != state {
            return Err(corrupt(self.slot, format!("entry {} is in state {found}, expected {state}", handle.0)));
        }
        Ok(entry)
    }

    fn publish(entry: &Entry, id: u64, count: u64, target: u64, state: u32) {
        entry.id.store(id, Ordering::Relaxed);
        entry.count.store(count, Ordering::Relaxed);
        entry.target.store(target, Ordering::Relaxed);
        entry.state.store(state, Ordering::Release);
    }

    /// Records a create of `id`, before the record is claimed.
    pub(crate) fn begin_create(&self, id: u64) -> Result<Handle> {
        let (index, entry) = self.allocate()?;
        Self::publish(entry, id, 0, 0, CREATING);
        Ok(Handle(index))
    }

    /// Forgets a create, after its record was sealed or aborted.
    pub(crate) fn end_create(&self, handle: Handle) -> Result<()> {
        let entry = self.in_state(handle, CREATING)?;
        self.free(handle.0, entry);
        Ok(())
    }

    /// Records the first `n` references on `id`, before the record counts them; then
    /// [`Ledger::settle`].
    pub(crate) fn begin_take(&self, id: u64, n: u64) -> Result<Handle> {
        if n == 0 || n > MAX_COUNT {
            return Err(Error::InvalidArgument(format!("cannot take {n} references at once")));
        }
        let (index, entry) = self.allocate()?;
        Self::publish(entry, id, 0, n, TAKING);
        Ok(Handle(index))
    }

    /// Records `n` more references on the object of `handle`; then [`Ledger::settle`].
    #[cfg(test)]
    pub(crate) fn begin_take_more(&self, handle: Handle, n: u64) -> Result<()> {
        let entry = self.in_state(handle, HELD)?;
        let target = entry.count.load(Ordering::Relaxed).saturating_add(n);
        if n == 0 || target > MAX_COUNT {
            return Err(Error::InvalidArgument(format!("cannot take {n} more references on entry {}", handle.0)));
        }
        entry.target.store(target, Ordering::Relaxed);
        entry.state.store(TAKING, Ordering::Release);
        Ok(())
    }

    /// Records the release of `n` of the references of `handle`, before the record drops them;
    /// then [`Ledger::settle`].
    pub(crate) fn begin_release(&self, handle: Handle, n: u64) -> Result<()> {
        let entry = self.in_state(handle, HELD)?;
        let count = entry.count.load(Ordering::Relaxed);
        if n == 0 || n > count {
            return Err(Error::InvalidArgument(format!(
                "cannot release {n} of {count} references on entry {}",
                handle.0
            )));
        }
        entry.target.store(count - n, Ordering::Relaxed);
        entry.state.store(RELEASING, Ordering::Release);
        Ok(())
    }

    /// Settles the change in flight on `handle` once the record made it. Answers whether the
    /// entry still holds references (`false`: it was emptied and the handle is spent).
    pub(crate) fn settle(&self, handle: Handle) -> Result<bool> {
        let entry = self.entry(handle.0)?;
        let state = entry.state.load(Ordering::Relaxed);
        if state != TAKING && state != RELEASING {
            return Err(corrupt(self.slot, format!("entry {} settled in state {state}", handle.0)));
        }
        let target = entry.target.load(Ordering::Relaxed);
        if target == 0 {
            self.free(handle.0, entry);
            return Ok(false);
        }
        entry.count.store(target, Ordering::Relaxed);
        entry.state.store(HELD, Ordering::Release);
        Ok(true)
    }

    /// Every entry in use, checked, as (state, id, count, target): for an engine that changes
    /// ledgers and records under one lock and rebuilds the records' counts from the ledgers.
    pub(crate) fn entries(&self) -> Result<Vec<(u32, u64, u64, u64)>> {
        let mut found = Vec::new();
        for index in 0..self.high_water()? {
            let entry = self.entry(index)?;
            let state = entry.state.load(Ordering::Acquire);
            let id = entry.id.load(Ordering::Relaxed);
            let (count, target) = (entry.count.load(Ordering::Relaxed), entry.target.load(Ordering::Relaxed));
            self.check_entry(index, state, id, count, target)?;
            if state != EMPTY {
                found.push((state, id, count, target));
            }
        }
        Ok(found)
    }

    /// Empties every entry and the ledger, after the engine undid what they recorded.
    pub(crate) fn clear(&self) -> Result<()> {
        for index in 0..self.high_water()? {
            self.entry(index)?.state.store(EMPTY, Ordering::Release);
        }
        self.reset();
        Ok(())
    }

    /// Empties a ledger whose entries are all empty (after a replay); a new one, all zeros, is
    /// empty already.
    pub(crate) fn reset(&self) {
        self.header.free_head.store(0, Ordering::Relaxed);
        self.header.high_water.store(0, Ordering::Release);
    }

    /// Entries in use.
    #[cfg(test)]
    pub(crate) fn live(&self) -> Result<u64> {
        let high = self.high_water()?;
        Ok(self.entries[..high as usize].iter().filter(|e| e.state.load(Ordering::Relaxed) != EMPTY).count() as u64)
    }

    fn check_entry(&self, index: u64, state: u32, id: u64, count: u64, target: u64) -> Result<()> {
        let why = match state {
            EMPTY | CREATING => None,
            HELD if count == 0 || count > MAX_COUNT => Some(format!("holds {count} references")),
            TAKING if target > MAX_COUNT || count > target || target == 0 => {
                Some(format!("takes references from {count} to {target}"))
            }
            RELEASING if count > MAX_COUNT || target > count => {
                Some(format!("releases references from {count} to {target}"))
            }
            HELD | TAKING | RELEASING => None,
            other => Some(format!("state 0x{other:08x}")),
        };
        match why {
            Some(why) => Err(corrupt(self.slot, format!("entry {index} (id {id}) {why}"))),
            None => Ok(()),
        }
    }

    /// The invariants: high-water mark within capacity; reserved fields zero; each entry's state
    /// known and its counts in range; ids of entries in use below `id_limit`; entries past the
    /// high-water mark empty.
    #[cfg(test)]
    pub(crate) fn check(&self, id_limit: u64) -> Result<()> {
        self.check_within(id_limit, self.capacity())
    }

    /// [`Ledger::check`] of the first `scan` entries only (those whose blocks are there), and
    /// the high-water mark within them.
    pub(crate) fn check_within(&self, id_limit: u64, scan: u64) -> Result<()> {
        let high = self.high_water()?;
        if self.header.reserved.iter().any(|r| r.load(Ordering::Relaxed) != 0) {
            return Err(corrupt(self.slot, "reserved header fields are not zero".into()));
        }
        if high > scan {
            return Err(corrupt(self.slot, format!("high-water mark {high} past the {scan} entries reserved")));
        }
        for (index, entry) in self.entries.iter().take(scan as usize).enumerate() {
            let index = index as u64;
            if entry.reserved.load(Ordering::Relaxed) != 0 {
                return Err(corrupt(self.slot, format!("entry {index}: reserved field is not zero")));
            }
            let state = entry.state.load(Ordering::Acquire);
            let id = entry.id.load(Ordering::Relaxed);
            let (count, target) = (entry.count.load(Ordering::Relaxed), entry.target.load(Ordering::Relaxed));
            if index >= high && state != EMPTY {
                return Err(corrupt(self.slot, format!("entry {index} past the high-water mark {high} is in use")));
            }
            self.check_entry(index, state, id, count, target)?;
            if state != EMPTY && id >= id_limit {
                return Err(corrupt(self.slot, format!("entry {index} names object {id}, past {id_limit}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Mem([u8; 64 + 32 * 64 + 2 * (64 + 32 * 64)]);

    fn mem() -> Box<Mem> {
        Box::new(Mem([0; 64 + 32 * 64 + 2 * (64 + 32 * 64)]))
    }

    #[test]
    fn record_settle_and_erase_round_trip_and_reuse_entries() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        assert!(Ledger::new(&area, 5, 0).is_err(), "not five equal ledgers");
        let ledger = Ledger::new(&area, 1, 0).unwrap();
        assert_eq!(ledger.capacity(), 3 * 64 + 4);
        ledger.check(0).unwrap();
        assert_eq!(ledger.live().unwrap(), 0, "all zeros is an empty ledger");
        let c = ledger.begin_create(7).unwrap();
        let r = ledger.begin_take(9, 2).unwrap();
        assert_ne!(c, r);
        assert!(ledger.settle(r).unwrap());
        ledger.begin_take_more(r, 3).unwrap();
        assert!(ledger.settle(r).unwrap());
        assert_eq!(ledger.entry(r.0).unwrap().count.load(Ordering::Relaxed), 5);
        ledger.begin_release(r, 4).unwrap();
        assert!(ledger.settle(r).unwrap());
        assert!(ledger.begin_release(r, 2).is_err(), "only 1 is held");
        ledger.end_create(c).unwrap();
        assert!(ledger.end_create(c).is_err(), "spent");
        ledger.begin_release(r, 1).unwrap();
        assert!(!ledger.settle(r).unwrap(), "emptied at 0");
        assert_eq!(ledger.live().unwrap(), 0);
        let again = ledger.begin_take(1, 1).unwrap();
        assert_eq!(again, r, "the last freed entry is reused first");
        assert_eq!(ledger.begin_create(2).unwrap(), c);
        assert_eq!(ledger.header.high_water.load(Ordering::Relaxed), 2);
        ledger.check(10).unwrap();
    }

    #[test]
    fn a_full_ledger_is_a_clear_error_and_nothing_is_overwritten() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        let ledger = Ledger::new(&area, 3, 1).unwrap();
        ledger.reset();
        let cap = ledger.capacity();
        assert_eq!(cap, 64);
        let handles: Vec<_> = (0..cap).map(|i| ledger.begin_create(i).unwrap()).collect();
        let e = ledger.begin_take(1, 1).unwrap_err();
        assert!(e.to_string().contains("ledger of process slot 1 is full (64 entries)"), "{e}");
        assert_eq!(ledger.live().unwrap(), cap);
        ledger.end_create(handles[10]).unwrap();
        assert_eq!(ledger.begin_take(99, 1).unwrap(), handles[10]);
        ledger.check(100).unwrap();

        // Ledgers of an odd capacity: each one's header is still aligned for its atomics.
        let mut fresh = mem();
        let whole = Area::from_mut(&mut fresh.0, "file");
        let odd = whole.sub(0, area_len(3, 63).unwrap(), "ledgers area").unwrap();
        for slot in 0..3 {
            let ledger = Ledger::new(&odd, 3, slot).unwrap();
            assert_eq!(ledger.capacity(), 63);
            ledger.reset();
            let h = ledger.begin_take(5, 1).unwrap();
            assert!(ledger.settle(h).unwrap());
            ledger.check(6).unwrap();
        }
        assert!(area_len(64, 100_000).unwrap() > 64 * 100_000 * 32);
        assert!(area_len(u64::MAX, 2).is_none());
    }

    #[test]
    fn entries_lists_what_is_in_use_and_clear_empties_the_ledger() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        let ledger = Ledger::new(&area, 1, 0).unwrap();
        ledger.reset();
        let c = ledger.begin_create(7).unwrap();
        let held = ledger.begin_take(9, 2).unwrap();
        assert!(ledger.settle(held).unwrap());
        let gone = ledger.begin_take(4, 1).unwrap();
        ledger.begin_release(gone, 0).unwrap_err();
        assert!(ledger.settle(gone).unwrap());
        ledger.begin_release(gone, 1).unwrap();
        assert!(!ledger.settle(gone).unwrap());
        let flying = ledger.begin_take(11, 3).unwrap();
        let mut found = ledger.entries().unwrap();
        found.sort();
        assert_eq!(found, vec![(CREATING, 7, 0, 0), (HELD, 9, 2, 2), (TAKING, 11, 0, 3)]);
        let _ = (c, flying);
        ledger.clear().unwrap();
        assert_eq!(ledger.entries().unwrap(), vec![]);
        assert_eq!(ledger.live().unwrap(), 0);
        ledger.check(100).unwrap();
        assert_eq!(ledger.begin_take(1, 1).unwrap(), Handle(0), "a cleared ledger starts again at entry 0");
    }

    #[test]
    fn check_catches_unknown_states_ids_out_of_range_and_overflowing_counts() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        let ledger = Ledger::new(&area, 1, 0).unwrap();
        ledger.reset();
        let h = ledger.begin_take(3, 2).unwrap();
        ledger.settle(h).unwrap();
        ledger.check(4).unwrap();
        let e = ledger.check(3).unwrap_err();
        assert!(e.to_string().contains("entry 0 names object 3, past 3"), "{e}");
        let entry = ledger.entry(0).unwrap();
        let expect = |needle: &str| {
            let e = ledger.check(4).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().contains("ledger of slot 0"), "{e}");
        };
        entry.count.store(MAX_COUNT + 1, Ordering::Relaxed);
        expect("holds 1099511627777 references");
        entry.count.store(MAX_COUNT, Ordering::Relaxed);
        entry.target.store(MAX_COUNT + 1, Ordering::Relaxed);
        entry.state.store(TAKING, Ordering::Relaxed);
        expect("takes references from 1099511627776 to 1099511627777");
        entry.count.store(1, Ordering::Relaxed);
        entry.target.store(2, Ordering::Relaxed);
        entry.state.store(RELEASING, Ordering::Relaxed);
        expect("releases references from 1 to 2");
        entry.state.store(77, Ordering::Relaxed);
        expect("state 0x0000004d");
        entry.state.store(HELD, Ordering::Relaxed);
        ledger.entry(5).unwrap().state.store(CREATING, Ordering::Relaxed);
        expect("entry 5 past the high-water mark 1 is in use");
        ledger.entry(5).unwrap().state.store(EMPTY, Ordering::Relaxed);
        ledger.entry(7).unwrap().reserved.store(1, Ordering::Relaxed);
        expect("entry 7: reserved field is not zero");
        ledger.entry(7).unwrap().reserved.store(0, Ordering::Relaxed);
        ledger.header.reserved[2].store(9, Ordering::Relaxed);
        expect("reserved header fields are not zero");
        ledger.header.reserved[2].store(0, Ordering::Relaxed);
        ledger.header.high_water.store(ledger.capacity() + 1, Ordering::Relaxed);
        expect("high-water mark");
        assert!(ledger.entries().is_err(), "entries refuses what check refuses");
    }
}
