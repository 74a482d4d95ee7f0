//! Per-slot reference ledgers: what each process holds (creates not sealed yet, read references),
//! so that a deleter can tell whether anyone still reads an object, and reclaiming a dead
//! process's slot can give back what it held.
//!
//! The Ledgers area holds one ledger per process slot, all the same size: a [`LedgerHeader`] and
//! an array of [`Entry`]. An entry is empty, a create in progress (`CREATING`, an object id), or
//! one read reference (`HELD`, an object id). Ids carry the record's generation, so an entry
//! never names a later object that reuses the record.
//!
//! Entries are handed out by the owning process: it raises the high-water mark a batch at a
//! time ([`Ledger::grow`], serialised by the owner) and keeps the free entries in its own memory,
//! so that each thread publishes and withdraws references in entries nobody else writes. How the
//! engine uses them (`crate::shm::store`): a reader publishes `HELD` in its entry
//! ([`Ledger::hold`], sequentially consistent) and then re-reads the object's record; a deleter
//! marks the record deleted and then scans the ledgers ([`Ledger::holds`]). One of the two sees
//! the other, so an object is never freed under a reader that found it. A record's readers are
//! nowhere but in the ledgers: after a process dies, emptying its ledger ([`Ledger::clear`]) is
//! all it takes to give its references back.
//!
//! Writes: an entry is written by the thread of the owning process that took it, and by the
//! cleaner holding a dead owner's slot lock ([`Ledger::clear`]); the header by the owner under
//! its own lock ([`Ledger::grow`]) and by the cleaner. Anyone may read a ledger.

use std::io;
use std::mem::{offset_of, size_of};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::shm::offset::{Area, Shared};

/// Nothing recorded.
pub(crate) const EMPTY: u32 = 0;
/// An object created but not sealed yet.
pub(crate) const CREATING: u32 = 1;
/// One read reference on an object.
pub(crate) const HELD: u32 = 2;

/// The head of one slot's ledger. Aligned to 8 only, like [`Entry`], so that the ledgers of any
/// capacity follow each other without gaps.
#[repr(C)]
pub(crate) struct LedgerHeader {
    /// Entries at or past this index have never been handed out since the last clear (so are
    /// empty).
    high_water: AtomicU64,
    /// Zero.
    reserved: [AtomicU64; 6],
    /// Entries whose file blocks the owner reserved ([`Ledger::grow`]); 0 for a ledger never
    /// used. Entries past it may be holes of the file: nobody touches them.
    backed: AtomicU64,
}

const _: () = {
    assert!(size_of::<LedgerHeader>() == 64);
    assert!(offset_of!(LedgerHeader, high_water) == 0);
    assert!(offset_of!(LedgerHeader, reserved) == 8);
    assert!(offset_of!(LedgerHeader, backed) == 56);
    assert!(std::mem::align_of::<LedgerHeader>() == 8 && std::mem::align_of::<Entry>() == 8);
};

/// One thing a process holds.
#[repr(C)]
pub(crate) struct Entry {
    /// [`EMPTY`], [`CREATING`] or [`HELD`]; stored after `id`.
    state: AtomicU32,
    /// Zero.
    reserved: AtomicU32,
    /// The object's id (record id and generation) while in use.
    id: AtomicU64,
}

const _: () = {
    assert!(size_of::<Entry>() == 16);
    assert!(offset_of!(Entry, state) == 0);
    assert!(offset_of!(Entry, reserved) == 4);
    assert!(offset_of!(Entry, id) == 8);
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
pub(crate) struct Handle(pub(crate) u64);

/// One slot's ledger.
#[derive(Clone)]
pub(crate) struct Ledger<'a> {
    slot: usize,
    /// Where this ledger starts in the Ledgers area.
    base: u64,
    header: &'a LedgerHeader,
    entries: &'a [Entry],
}

/// Entries reserved at a time (64 KiB of them).
const BACKING_CHUNK: u64 = 4096;

#[cold]
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

    #[inline]
    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Hands out up to `n` more entries, past the high-water mark: with file blocks behind them
    /// (`reserve(offset in the Ledgers area, length)` reserves the next chunks first). The owner
    /// calls this, one thread at a time.
    pub(crate) fn grow(&self, n: u64, reserve: impl FnOnce(u64, u64) -> Result<()>) -> Result<Range<u64>> {
        let high = self.high_water()?;
        let upto = (high + n).min(self.capacity());
        if upto == high {
            return Err(Error::system(
                format!("the reference ledger of process slot {} is full ({high} entries)", self.slot),
                io::Error::from_raw_os_error(libc::ENOBUFS),
            ));
        }
        let backed = self.backed();
        if upto > backed {
            let to = (upto.next_multiple_of(BACKING_CHUNK)).min(self.capacity());
            let entry = size_of::<Entry>() as u64;
            reserve(self.base + size_of::<LedgerHeader>() as u64 + backed * entry, (to - backed) * entry)?;
            self.header.backed.store(to, Ordering::Relaxed);
        }
        self.header.high_water.store(upto, Ordering::Release);
        Ok(high..upto)
    }

    /// The entries [`Ledger::check_within`] may read in a ledger the engine reserves lazily.
    pub(crate) fn backed(&self) -> u64 {
        self.header.backed.load(Ordering::Relaxed).min(self.capacity())
    }

    /// Entry `index`, checked (an index read from shared memory is a claim).
    #[inline]
    fn entry(&self, index: u64) -> Result<&'a Entry> {
        match usize::try_from(index).ok().and_then(|i| self.entries.get(i)) {
            Some(entry) => Ok(entry),
            None => Err(self.no_entry(index)),
        }
    }

    #[cold]
    #[inline(never)]
    fn no_entry(&self, index: u64) -> Error {
        corrupt(self.slot, format!("entry {index} of {}", self.entries.len()))
    }

    /// The high-water mark, checked.
    pub(crate) fn high_water(&self) -> Result<u64> {
        let high = self.header.high_water.load(Ordering::Acquire);
        if high > self.capacity() {
            return Err(corrupt(self.slot, format!("high-water mark {high} past {} entries", self.capacity())));
        }
        Ok(high)
    }

    /// The empty entry of `handle`, handed out to the caller.
    #[inline]
    fn empty_entry(&self, handle: Handle) -> Result<&'a Entry> {
        let entry = self.entry(handle.0)?;
        let found = entry.state.load(Ordering::Relaxed);
        if found != EMPTY {
            return Err(self.not_empty(handle, found));
        }
        Ok(entry)
    }

    #[cold]
    #[inline(never)]
    fn not_empty(&self, handle: Handle, found: u32) -> Error {
        corrupt(self.slot, format!("entry {} is in state {found}, expected it empty", handle.0))
    }

    /// Records a create of `id` in `handle`'s entry, before the record is claimed (under the
    /// pool's mutex, which orders it).
    pub(crate) fn begin_create(&self, handle: Handle, id: u64) -> Result<()> {
        let entry = self.empty_entry(handle)?;
        entry.id.store(id, Ordering::Relaxed);
        entry.state.store(CREATING, Ordering::Release);
        Ok(())
    }

    /// Turns the create of `handle` into a read reference on the same object (its seal).
    pub(crate) fn sealed(&self, handle: Handle) -> Result<()> {
        let entry = self.entry(handle.0)?;
        let found = entry.state.load(Ordering::Relaxed);
        if found != CREATING {
            return Err(corrupt(self.slot, format!("entry {} is in state {found}, not creating", handle.0)));
        }
        entry.state.store(HELD, Ordering::SeqCst);
        Ok(())
    }

    /// Publishes a read reference on `id` in `handle`'s entry. Sequentially consistent: a
    /// deleter that marks the object after this is ordered before the reader's re-check of it
    /// scans this entry.
    #[inline(always)]
    pub(crate) fn hold(&self, handle: Handle, id: u64) -> Result<()> {
        let entry = self.empty_entry(handle)?;
        entry.id.store(id, Ordering::Relaxed);
        entry.state.swap(HELD, Ordering::SeqCst);
        Ok(())
    }

    /// Withdraws what `handle`'s entry records. Sequentially consistent, like [`Ledger::hold`],
    /// so that a releaser re-reading the object after this and a deleter scanning after marking
    /// it cannot both miss each other.
    #[inline]
    pub(crate) fn empty(&self, handle: Handle) -> Result<()> {
        self.entry(handle.0)?.state.swap(EMPTY, Ordering::SeqCst);
        Ok(())
    }

    /// Whether any entry holds or creates `id`.
    pub(crate) fn holds(&self, id: u64) -> Result<bool> {
        let high = self.high_water()?;
        Ok(self.entries[..high as usize]
            .iter()
            .any(|e| e.state.load(Ordering::SeqCst) != EMPTY && e.id.load(Ordering::Relaxed) == id))
    }

    /// Every entry in use, checked, as (state, id).
    pub(crate) fn entries(&self) -> Result<Vec<(u32, u64)>> {
        let mut found = Vec::new();
        for index in 0..self.high_water()? {
            let entry = self.entry(index)?;
            let state = entry.state.load(Ordering::SeqCst);
            self.check_state(index, state)?;
            if state != EMPTY {
                found.push((state, entry.id.load(Ordering::Relaxed)));
            }
        }
        Ok(found)
    }

    /// Empties every entry and the ledger: after its owner died and the engine undid its creates,
    /// or before a new owner starts.
    pub(crate) fn clear(&self) -> Result<()> {
        for index in 0..self.high_water()? {
            self.entry(index)?.state.store(EMPTY, Ordering::SeqCst);
        }
        self.header.high_water.store(0, Ordering::Release);
        Ok(())
    }

    /// Entries in use.
    #[cfg(test)]
    pub(crate) fn live(&self) -> Result<u64> {
        Ok(self.entries()?.len() as u64)
    }

    fn check_state(&self, index: u64, state: u32) -> Result<()> {
        match state {
            EMPTY | CREATING | HELD => Ok(()),
            other => Err(corrupt(self.slot, format!("entry {index} in state 0x{other:08x}"))),
        }
    }

    /// The invariants: high-water mark within capacity; reserved fields zero; each entry's state
    /// known; ids of entries in use below `id_limit`; entries past the high-water mark empty.
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
            if index >= high && state != EMPTY {
                return Err(corrupt(self.slot, format!("entry {index} past the high-water mark {high} is in use")));
            }
            self.check_state(index, state)?;
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
    struct Mem([u8; 64 + 16 * 64 + 2 * (64 + 16 * 64)]);

    fn mem() -> Box<Mem> {
        Box::new(Mem([0; 64 + 16 * 64 + 2 * (64 + 16 * 64)]))
    }

    fn no_reserve(_: u64, _: u64) -> Result<()> {
        Ok(())
    }

    #[test]
    fn grow_hands_out_batches_and_holds_finds_what_entries_publish() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        assert!(Ledger::new(&area, 5, 0).is_err(), "not five equal ledgers");
        let ledger = Ledger::new(&area, 1, 0).unwrap();
        assert_eq!(ledger.capacity(), 200);
        ledger.check(0).unwrap();
        assert_eq!(ledger.live().unwrap(), 0, "all zeros is an empty ledger");
        let mut reserved = Vec::new();
        let first = ledger
            .grow(8, |o, l| {
                reserved.push((o, l));
                Ok(())
            })
            .unwrap();
        assert_eq!(first, 0..8);
        assert_eq!(reserved, vec![(64, 16 * ledger.capacity())], "reserved up to a chunk, capped by capacity");
        let second = ledger.grow(8, |_, _| panic!("already reserved")).unwrap();
        assert_eq!(second, 8..16);
        let (c, r) = (Handle(0), Handle(9));
        ledger.begin_create(c, 7).unwrap();
        ledger.hold(r, 9).unwrap();
        assert!(ledger.hold(r, 10).is_err(), "an entry in use is not handed out twice");
        assert!(ledger.holds(7).unwrap() && ledger.holds(9).unwrap() && !ledger.holds(10).unwrap());
        let mut found = ledger.entries().unwrap();
        found.sort();
        assert_eq!(found, vec![(CREATING, 7), (HELD, 9)]);
        ledger.sealed(c).unwrap();
        assert!(ledger.sealed(c).is_err(), "sealed once");
        assert!(ledger.sealed(r).is_err(), "not a create");
        ledger.empty(r).unwrap();
        assert!(!ledger.holds(9).unwrap());
        assert_eq!(ledger.entries().unwrap(), vec![(HELD, 7)]);
        assert!(ledger.hold(Handle(ledger.capacity()), 1).is_err(), "past the end");
        ledger.check(10).unwrap();
        ledger.clear().unwrap();
        assert_eq!(ledger.entries().unwrap(), vec![]);
        assert_eq!(ledger.grow(1, no_reserve).unwrap(), 0..1, "a cleared ledger starts again at entry 0");
    }

    #[test]
    fn a_full_ledger_is_a_clear_error_and_nothing_is_overwritten() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        let ledger = Ledger::new(&area, 3, 1).unwrap();
        let cap = ledger.capacity();
        assert_eq!(cap, 64);
        assert_eq!(ledger.grow(60, no_reserve).unwrap(), 0..60);
        assert_eq!(ledger.grow(60, no_reserve).unwrap(), 60..64, "the last entries, fewer than asked");
        for i in 0..cap {
            ledger.hold(Handle(i), i).unwrap();
        }
        let e = ledger.grow(1, no_reserve).unwrap_err();
        assert!(e.to_string().contains("ledger of process slot 1 is full (64 entries)"), "{e}");
        assert_eq!(ledger.live().unwrap(), cap);
        ledger.check(100).unwrap();

        // A reservation that fails hands nothing out.
        let other = Ledger::new(&area, 3, 2).unwrap();
        let e = other.grow(4, |_, _| Err(Error::Internal("no space".into()))).unwrap_err();
        assert!(e.to_string().contains("no space"), "{e}");
        assert_eq!(other.grow(4, no_reserve).unwrap(), 0..4);

        // Ledgers of an odd capacity: each one's header is still aligned for its atomics.
        let mut fresh = mem();
        let whole = Area::from_mut(&mut fresh.0, "file");
        let odd = whole.sub(0, area_len(3, 63).unwrap(), "ledgers area").unwrap();
        for slot in 0..3 {
            let ledger = Ledger::new(&odd, 3, slot).unwrap();
            assert_eq!(ledger.capacity(), 63);
            ledger.grow(1, no_reserve).unwrap();
            ledger.hold(Handle(0), 5).unwrap();
            ledger.check(6).unwrap();
        }
        assert!(area_len(64, 100_000).unwrap() > 64 * 100_000 * 16);
        assert!(area_len(u64::MAX, 2).is_none());
    }

    #[test]
    fn check_catches_unknown_states_ids_out_of_range_and_entries_past_the_high_water_mark() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        let ledger = Ledger::new(&area, 1, 0).unwrap();
        ledger.grow(2, no_reserve).unwrap();
        ledger.hold(Handle(0), 3).unwrap();
        ledger.check(4).unwrap();
        let e = ledger.check(3).unwrap_err();
        assert!(e.to_string().contains("entry 0 names object 3, past 3"), "{e}");
        let entry = ledger.entry(0).unwrap();
        let expect = |needle: &str| {
            let e = ledger.check(4).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().contains("ledger of slot 0"), "{e}");
        };
        entry.state.store(77, Ordering::Relaxed);
        expect("state 0x0000004d");
        assert!(ledger.entries().is_err(), "entries refuses what check refuses");
        entry.state.store(HELD, Ordering::Relaxed);
        ledger.entry(5).unwrap().state.store(CREATING, Ordering::Relaxed);
        expect("entry 5 past the high-water mark 2 is in use");
        ledger.entry(5).unwrap().state.store(EMPTY, Ordering::Relaxed);
        ledger.entry(7).unwrap().reserved.store(1, Ordering::Relaxed);
        expect("entry 7: reserved field is not zero");
        ledger.entry(7).unwrap().reserved.store(0, Ordering::Relaxed);
        ledger.header.reserved[2].store(9, Ordering::Relaxed);
        expect("reserved header fields are not zero");
        ledger.header.reserved[2].store(0, Ordering::Relaxed);
        ledger.header.high_water.store(ledger.capacity() + 1, Ordering::Relaxed);
        expect("high-water mark");
        assert!(ledger.holds(3).is_err(), "a scan refuses a high-water mark past the end");
    }
}
