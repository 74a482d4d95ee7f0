//! Per-slot reference ledgers: what each process holds (creates not sealed yet, read references),
//! so that reclaiming a dead process's slot can undo it ([`Ledger::replay`]).
//!
//! The Ledgers area holds one ledger per process slot, all the same size: a [`LedgerHeader`] and
//! an array of [`Entry`]. An entry is empty, a create in progress (`CREATING`, an object id), or
//! references on one object (`HELD`, an id and a count) with possibly one change in flight
//! (`TAKING` or `RELEASING`, with the count it will have after the change in `target`). Entries
//! are found in O(1): a new one comes off a free list threaded through the empty entries, or past
//! the high-water mark; the caller keeps the entry's index (a [`Handle`]) for the later calls on
//! that object, and keeps at most one reference entry per object (more references go through
//! [`Ledger::begin_take_more`]), because replay checks an entry against the record's count for
//! the whole slot.
//!
//! Crash consistency. Each change is recorded here before the object record changes, and settled
//! here after, so the ledger always over-approximates what the process holds:
//! * create: `CREATING` is stored before the record is claimed; the entry is emptied after the
//!   record is sealed or aborted. Replay calls `abort_create(id)`, which the engine makes a no-op
//!   for an id that is sealed, aborted or was never claimed (ids carry the record's generation,
//!   so an id is never reused).
//! * take `n` references: `target = count + n`, then `TAKING` (release store), then the record's
//!   count for this slot goes up by `n`, then `count = target`, then `HELD`.
//! * release `n`: `target = count - n`, then `RELEASING`, then the record's count for this slot
//!   goes down by `n`, then `count = target` and `HELD` (or the entry is emptied when 0).
//!
//! A process killed between the two steps leaves `TAKING` or `RELEASING`, and the ledger alone
//! cannot tell whether the record changed. The record can: the engine keeps, in each record's
//! reference table, the count held by each slot, and [`Undo::held`] reads it. Replay accepts only
//! the two values the protocol allows (`count` or `target`; anything else is corruption) and drops
//! exactly that many. Every intermediate state is one of these: between `count = target` and the
//! state store, both values are the same. Before dropping, replay turns the entry into
//! `RELEASING` from the record's count to 0, through states that each allow the record's count
//! as it is, so a replay killed anywhere, even after dropping but before emptying the entry, is
//! settled the same way by the next one: replay is idempotent. Nobody else can change the dead
//! slot's counts meanwhile (its slot lock makes the replayer the only cleaner), so the record's
//! answer is stable.
//!
//! Writes: a ledger is written by the process owning its slot, one thread at a time (the engine
//! serialises its calls), and by the cleaner holding a dead owner's slot lock (replay and
//! [`Ledger::reset`]). Every field is an atomic; an entry's `state` is stored last, with release,
//! after the fields it publishes. The free list and the high-water mark are used only by the owner;
//! replay ignores the free list and scans up to the high-water mark, which is raised before an
//! entry past it is first written. Anyone may read a ledger ([`Ledger::check`]).

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
    reserved: [AtomicU64; 6],
}

const _: () = {
    assert!(size_of::<LedgerHeader>() == 64);
    assert!(offset_of!(LedgerHeader, high_water) == 0);
    assert!(offset_of!(LedgerHeader, free_head) == 8);
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

/// What replay does to object records; the engine implements it on its record operations.
pub(crate) trait Undo {
    /// Aborts the create of `id` if it is still unsealed; a no-op for a sealed, aborted or never
    /// claimed id.
    fn abort_create(&mut self, id: u64) -> Result<()>;
    /// The references the dead slot holds on `id`, as the record's reference table counts them.
    fn held(&mut self, id: u64) -> Result<u64>;
    /// Drops `count` of the dead slot's references on `id` in one step.
    fn drop_refs(&mut self, id: u64, count: u64) -> Result<()>;
}

/// What a replay undid.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub creates: u64,
    pub references: u64,
}

/// One slot's ledger.
pub(crate) struct Ledger<'a> {
    slot: usize,
    header: &'a LedgerHeader,
    entries: &'a [Entry],
}

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
        Ok(Ledger { slot, header, entries })
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.entries.len() as u64
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

    /// Undoes everything a dead owner's ledger records, and empties it. The caller holds the
    /// slot's lock ([`crate::shm::slots::DeadSlot`]). Idempotent: a replay killed part-way is
    /// finished by the next one, which drops nothing twice.
    pub(crate) fn replay(&self, undo: &mut impl Undo) -> Result<Replayed> {
        let mut done = Replayed::default();
        for index in 0..self.high_water()? {
            let entry = self.entry(index)?;
            let state = entry.state.load(Ordering::Acquire);
            let id = entry.id.load(Ordering::Relaxed);
            let (count, target) = (entry.count.load(Ordering::Relaxed), entry.target.load(Ordering::Relaxed));
            self.check_entry(index, state, id, count, target)?;
            match state {
                EMPTY => continue,
                CREATING => {
                    undo.abort_create(id)?;
                    entry.state.store(EMPTY, Ordering::Release);
                    done.creates += 1;
                    continue;
                }
                _ => {}
            }
            let held = undo.held(id)?;
            let other = if state == HELD { count } else { target };
            if held != count && held != other {
                let allowed = if other == count { format!("{count}") } else { format!("{count} or {other}") };
                return Err(corrupt(
                    self.slot,
                    format!(
                        "entry {index} (state {state}) allows {allowed} references on {id}, its record says {held}"
                    ),
                ));
            }
            if held > 0 {
                // Turn the entry into a release of exactly `held` to 0 before dropping, through
                // states that each allow the record's unchanged count, so that a replay killed
                // anywhere here or after the drop is settled by the next one.
                if held != count {
                    entry.count.store(held, Ordering::Relaxed);
                }
                if state == TAKING {
                    entry.state.store(HELD, Ordering::Release);
                }
                entry.target.store(0, Ordering::Relaxed);
                entry.state.store(RELEASING, Ordering::Release);
                undo.drop_refs(id, held)?;
                done.references += held;
            }
            entry.state.store(EMPTY, Ordering::Release);
        }
        self.reset();
        Ok(done)
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
    pub(crate) fn check(&self, id_limit: u64) -> Result<()> {
        let high = self.high_water()?;
        if self.header.reserved.iter().any(|r| r.load(Ordering::Relaxed) != 0) {
            return Err(corrupt(self.slot, "reserved header fields are not zero".into()));
        }
        for (index, entry) in self.entries.iter().enumerate() {
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

    /// A record table: the references held per id by the one slot replayed, and creates.
    #[derive(Default)]
    struct Records {
        refs: Vec<u64>,
        unsealed: Vec<bool>,
        dropped: u64,
    }

    impl Undo for Records {
        fn abort_create(&mut self, id: u64) -> Result<()> {
            self.unsealed[id as usize] = false;
            Ok(())
        }
        fn held(&mut self, id: u64) -> Result<u64> {
            Ok(self.refs[id as usize])
        }
        fn drop_refs(&mut self, id: u64, count: u64) -> Result<()> {
            let refs = &mut self.refs[id as usize];
            assert!(*refs >= count, "dropped {count} of {refs} on {id}");
            *refs -= count;
            self.dropped += count;
            Ok(())
        }
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
    fn replay_visits_exactly_the_live_entries_and_empties_the_ledger() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        let ledger = Ledger::new(&area, 1, 0).unwrap();
        ledger.reset();
        let mut records = Records { refs: vec![0; 16], unsealed: vec![false; 16], dropped: 0 };
        // Settled references, an emptied entry, a sealed create, and one change in flight of
        // each kind, before and after the record changed.
        let mut take = |id: u64, n: u64, settle: bool, record: bool| {
            let h = ledger.begin_take(id, n).unwrap();
            if record {
                records.refs[id as usize] += n;
            }
            if settle {
                ledger.settle(h).unwrap();
            }
            h
        };
        take(1, 3, true, true);
        let gone = take(2, 1, true, true);
        take(3, 2, false, false);
        take(4, 2, false, true);
        let partly = take(5, 4, true, true);
        let partly2 = take(6, 4, true, true);
        ledger.begin_release(gone, 1).unwrap();
        records.refs[2] -= 1;
        ledger.settle(gone).unwrap();
        ledger.begin_release(partly, 1).unwrap();
        ledger.begin_release(partly2, 1).unwrap();
        records.refs[6] -= 1;
        let sealed = ledger.begin_create(8).unwrap();
        ledger.end_create(sealed).unwrap();
        ledger.begin_create(9).unwrap();
        records.unsealed[9] = true;
        ledger.begin_create(10).unwrap();

        let mut visited = Vec::new();
        struct Spy<'r>(&'r mut Records, &'r mut Vec<(char, u64, u64)>);
        impl Undo for Spy<'_> {
            fn abort_create(&mut self, id: u64) -> Result<()> {
                self.1.push(('a', id, 0));
                self.0.abort_create(id)
            }
            fn held(&mut self, id: u64) -> Result<u64> {
                self.0.held(id)
            }
            fn drop_refs(&mut self, id: u64, count: u64) -> Result<()> {
                self.1.push(('d', id, count));
                self.0.drop_refs(id, count)
            }
        }
        let done = ledger.replay(&mut Spy(&mut records, &mut visited)).unwrap();
        visited.sort_unstable();
        assert_eq!(visited, [('a', 9, 0), ('a', 10, 0), ('d', 1, 3), ('d', 4, 2), ('d', 5, 4), ('d', 6, 3)]);
        assert_eq!(done, Replayed { creates: 2, references: 12 });
        assert!(records.refs.iter().all(|&r| r == 0) && records.unsealed.iter().all(|&u| !u));
        assert_eq!(ledger.live().unwrap(), 0);
        assert_eq!(ledger.replay(&mut records).unwrap(), Replayed::default(), "nothing left to replay");
        ledger.check(16).unwrap();
    }

    #[test]
    fn replay_refuses_a_record_count_the_entry_does_not_allow() {
        let mut m = mem();
        let area = Area::from_mut(&mut m.0, "ledgers area");
        let ledger = Ledger::new(&area, 1, 0).unwrap();
        ledger.reset();
        let h = ledger.begin_take(3, 2).unwrap();
        ledger.settle(h).unwrap();
        let mut records = Records { refs: vec![0; 4], unsealed: vec![false; 4], dropped: 0 };
        records.refs[3] = 5;
        let e = ledger.replay(&mut records).unwrap_err();
        assert!(e.to_string().contains("allows 2 references on 3, its record says 5"), "{e}");
        assert_eq!(records.dropped, 0);
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
        assert!(ledger.replay(&mut Records::default()).is_err(), "replay refuses what check refuses");
    }

    /// A shared file playing a pool: a violations word, the records (references the replayed
    /// slot holds per id, create states per id) and one ledger of [`BIG`] entries.
    mod shared {
        use super::*;
        use crate::shm::file::{self, Mapping, Sharing};
        use std::path::Path;

        /// Ids the working child uses (one ledger entry per object at most, so at most this many).
        pub(super) const IDS: u64 = 256;
        /// Entries of the ledger, and ids of the records.
        pub(super) const BIG: u64 = 100_000;
        const REFS: u64 = 4096;
        const CREATED: u64 = REFS + 8 * BIG;
        const LEDGER: u64 = CREATED + 4 * BIG;
        pub(super) const UNSEALED: u32 = 1;
        pub(super) const SEALED: u32 = 2;

        pub(super) fn len() -> u64 {
            LEDGER + area_len(1, BIG).unwrap()
        }

        pub(super) fn create(path: &Path) -> Mapping {
            let f = file::create(path, len(), Sharing::Owner, true).unwrap();
            Mapping::new(&f, len()).unwrap()
        }

        pub(super) fn open(path: &Path) -> Mapping {
            let opened = file::open(path, Sharing::Owner).unwrap();
            Mapping::new(&opened.file, opened.len).unwrap()
        }

        /// The records, as the engine's record operations would change them.
        pub(super) struct Model<'a> {
            pub violations: &'a AtomicU64,
            pub refs: &'a [AtomicU64],
            pub created: &'a [AtomicU32],
        }

        pub(super) fn parts<'a>(map: &'a Mapping) -> (Model<'a>, Ledger<'a>) {
            let area = map.area();
            let model = Model {
                violations: area.get(0).unwrap(),
                refs: area.slice(REFS, BIG).unwrap(),
                created: area.slice(CREATED, BIG).unwrap(),
            };
            let ledger = Ledger::new(&area.sub(LEDGER, area_len(1, BIG).unwrap(), "ledgers area").unwrap(), 1, 0);
            (model, ledger.unwrap())
        }

        impl Undo for Model<'_> {
            fn abort_create(&mut self, id: u64) -> Result<()> {
                let _ = self.created[id as usize].compare_exchange(UNSEALED, 0, Ordering::AcqRel, Ordering::Relaxed);
                Ok(())
            }
            fn held(&mut self, id: u64) -> Result<u64> {
                Ok(self.refs[id as usize].load(Ordering::Acquire))
            }
            fn drop_refs(&mut self, id: u64, count: u64) -> Result<()> {
                let refs = &self.refs[id as usize];
                if refs.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(count)).is_err() {
                    self.violations.fetch_add(1, Ordering::AcqRel);
                    return Err(Error::Internal(format!("dropped {count} references on {id} never taken")));
                }
                Ok(())
            }
        }
    }

    use crate::shm::testutil::{child_role, park, say, ChildProcess, TempDir};
    use std::collections::HashMap;

    const CHILD_TEST: &str = "shm::ledger::tests::child_process_role";

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// The children of the tests below: one takes, releases and creates without end, as an
    /// engine would (ledger first, record second, ledger settled third); one replays.
    #[test]
    fn child_process_role() {
        if let Some(path) = child_role("ledger-work") {
            let map = shared::open(&path);
            let (model, ledger) = shared::parts(&map);
            let mut held: HashMap<u64, (Handle, u64)> = HashMap::new();
            let mut seed = u64::from(std::process::id()) | 1;
            say("READY");
            loop {
                let r = xorshift(&mut seed);
                let id = r % shared::IDS;
                if r % 8 == 0 {
                    let h = ledger.begin_create(id).unwrap();
                    if model.created[id as usize]
                        .compare_exchange(0, shared::UNSEALED, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        let done = if r % 16 == 0 { shared::SEALED } else { 0 };
                        model.created[id as usize].store(done, Ordering::Release);
                    }
                    ledger.end_create(h).unwrap();
                    continue;
                }
                let n = 1 + (r >> 8) % 3;
                match held.get(&id).copied() {
                    None => {
                        let h = ledger.begin_take(id, n).unwrap();
                        model.refs[id as usize].fetch_add(n, Ordering::AcqRel);
                        ledger.settle(h).unwrap();
                        held.insert(id, (h, n));
                    }
                    Some((h, count)) if r % 2 == 0 => {
                        ledger.begin_take_more(h, n).unwrap();
                        model.refs[id as usize].fetch_add(n, Ordering::AcqRel);
                        ledger.settle(h).unwrap();
                        held.insert(id, (h, count + n));
                    }
                    Some((h, count)) => {
                        let n = n.min(count);
                        ledger.begin_release(h, n).unwrap();
                        model.refs[id as usize].fetch_sub(n, Ordering::AcqRel);
                        if ledger.settle(h).unwrap() {
                            held.insert(id, (h, count - n));
                        } else {
                            held.remove(&id);
                        }
                    }
                }
            }
        }
        if let Some(path) = child_role("ledger-replay") {
            let map = shared::open(&path);
            let (mut model, ledger) = shared::parts(&map);
            say("READY");
            ledger.replay(&mut model).unwrap();
            say("DONE");
            park();
        }
    }

    /// Asserts the records and the ledger agree after a replay: nothing held, nothing unsealed.
    fn assert_all_undone(model: &shared::Model<'_>, ledger: &Ledger<'_>) {
        assert_eq!(model.violations.load(Ordering::Acquire), 0, "a reference was dropped that was never taken");
        for id in 0..shared::BIG as usize {
            assert_eq!(model.refs[id].load(Ordering::Acquire), 0, "references on {id} left");
            assert_ne!(model.created[id].load(Ordering::Acquire), shared::UNSEALED, "create of {id} left");
        }
        assert_eq!(ledger.live().unwrap(), 0);
        ledger.check(shared::BIG).unwrap();
    }

    #[test]
    fn a_process_sigkilled_at_random_moments_leaves_a_ledger_whose_replay_drops_each_reference_once() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let map = shared::create(&path);
        let (mut model, ledger) = shared::parts(&map);
        ledger.reset();
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let (mut in_flight, mut holding) = (0, 0);
        for round in 0..200 {
            let mut child = ChildProcess::spawn(CHILD_TEST, "ledger-work", &path);
            child.expect("READY");
            std::thread::sleep(std::time::Duration::from_micros(xorshift(&mut seed) % 3000));
            child.kill();
            ledger.check(shared::BIG).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let states: Vec<u32> = ledger.entries[..ledger.high_water().unwrap() as usize]
                .iter()
                .map(|e| e.state.load(Ordering::Acquire))
                .collect();
            in_flight += states.iter().any(|&s| matches!(s, TAKING | RELEASING | CREATING)) as u32;
            holding += states.contains(&HELD) as u32;
            ledger.replay(&mut model).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_all_undone(&model, &ledger);
            for created in model.created {
                created.store(0, Ordering::Relaxed);
            }
        }
        assert!(in_flight > 0 && holding > 0, "kills landed mid-change {in_flight} and between changes {holding}");
    }

    #[test]
    fn a_replayer_sigkilled_mid_replay_leaves_a_ledger_the_next_replay_finishes_exactly() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let map = shared::create(&path);
        let (mut model, ledger) = shared::parts(&map);
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut cut = 0;
        for round in 0..20 {
            ledger.reset();
            // A full ledger of every kind of entry, each change in flight in both of its steps.
            for id in 0..shared::BIG {
                let step = id % 6;
                if step == 0 {
                    ledger.begin_create(id).unwrap();
                    model.created[id as usize].store(shared::UNSEALED, Ordering::Relaxed);
                    continue;
                }
                let h = ledger.begin_take(id, 2).unwrap();
                if step >= 2 {
                    model.refs[id as usize].fetch_add(2, Ordering::Relaxed);
                }
                if step >= 3 {
                    ledger.settle(h).unwrap();
                }
                if step >= 4 {
                    ledger.begin_release(h, 1).unwrap();
                }
                if step >= 5 {
                    model.refs[id as usize].fetch_sub(1, Ordering::Relaxed);
                }
            }
            let e = ledger.begin_create(0).unwrap_err();
            assert!(e.to_string().contains("is full (100000 entries)"), "{e}");
            ledger.check(shared::BIG).unwrap();

            let mut child = ChildProcess::spawn(CHILD_TEST, "ledger-replay", &path);
            child.expect("READY");
            std::thread::sleep(std::time::Duration::from_micros(xorshift(&mut seed) % 20_000));
            child.kill();
            let left = ledger.live().unwrap();
            cut += (left > 0 && left < shared::BIG) as u32;
            ledger.check(shared::BIG).unwrap_or_else(|e| panic!("round {round}: {e}"));
            ledger.replay(&mut model).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_all_undone(&model, &ledger);
        }
        assert!(cut > 0, "no kill landed mid-replay");
    }
}
