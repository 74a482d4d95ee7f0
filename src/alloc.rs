//! O(1) offset allocation over the region, in 64-byte units, and the ids of object records.
//!
//! The region is split into segments (at most 128 GiB each, the reach of a 31-bit count of 64-byte
//! units, or less when a memory registration must not be crossed); each segment has its own
//! two-level segregated-fit allocator ([`Tlsf`]). A block never straddles two segments. Metadata
//! lives here, outside the pool's memory; only offsets are handed out.
//!
//! The allocator keeps one 24-byte node per live block and per free range between blocks, in a
//! vector that grows with use: a pool sized for millions of objects pays for the nodes it uses,
//! not for the ones it could use. Its state is atomics only, without pointers, so the same
//! allocator also runs over state kept in shared memory ([`Tlsf::from_parts`] over a [`TlsfCore`]
//! and a slice of [`NodeCell`]s), with its callers serialised by one process-shared mutex.
//!
//! [`SharedArena`] makes it thread-safe: one lock around the arena, plus small per-thread caches
//! of recently freed small blocks, so that threads that create and free objects of the same size
//! do not bounce the allocator's cache lines between cores on every operation.

use std::mem::{offset_of, size_of};
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Allocation granularity and alignment, in bytes.
pub const GRANULE: usize = 64;
/// The largest segment one allocator describes: 2^31 units, so a unit count always fits 31 bits.
pub const MAX_SEGMENT: usize = (1usize << 31) * GRANULE;

/// No node.
const NIL: u32 = u32::MAX;
/// `prev_free` of a node that is allocated (or recycled), so not in any free list.
const USED: u32 = u32::MAX - 1;
/// Size classes: 8 exact classes below 8 units, then 8 per power of two up to 2^32.
const BINS: usize = 256;
/// The allocator's state is all atomics, so that it can live in memory shared by processes; every
/// access is relaxed, as the caller serialises all operations (a mutex orders them).
const R: Ordering = Ordering::Relaxed;

/// One range of units, live block or free range, as a plain value: a copy of a [`NodeCell`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// First unit of the range, from the start of the segment.
    offset: u32,
    /// Units in the range.
    size: u32,
    /// The ranges just before and after this one in the segment.
    prev: u32,
    next: u32,
    /// Links in the free list of the node's size class; `prev_free == USED` when allocated.
    prev_free: u32,
    next_free: u32,
}

impl Node {
    fn load(cell: &NodeCell) -> Node {
        Node {
            offset: cell.offset.load(R),
            size: cell.size.load(R),
            prev: cell.prev.load(R),
            next: cell.next.load(R),
            prev_free: cell.prev_free.load(R),
            next_free: cell.next_free.load(R),
        }
    }

    fn store(cell: &NodeCell, node: Node) {
        cell.offset.store(node.offset, R);
        cell.size.store(node.size, R);
        cell.prev.store(node.prev, R);
        cell.next.store(node.next, R);
        cell.prev_free.store(node.prev_free, R);
        cell.next_free.store(node.next_free, R);
    }
}

/// Where a [`Node`] is kept: the same fields, as atomics, so that nodes can live in shared memory.
/// All zeros is a valid (meaningless) cell.
#[repr(C)]
#[derive(Debug, Default)]
pub struct NodeCell {
    offset: AtomicU32,
    size: AtomicU32,
    prev: AtomicU32,
    next: AtomicU32,
    prev_free: AtomicU32,
    next_free: AtomicU32,
}

const _: () = {
    assert!(size_of::<NodeCell>() == 24);
    assert!(offset_of!(NodeCell, offset) == 0);
    assert!(offset_of!(NodeCell, size) == 4);
    assert!(offset_of!(NodeCell, prev) == 8);
    assert!(offset_of!(NodeCell, next) == 12);
    assert!(offset_of!(NodeCell, prev_free) == 16);
    assert!(offset_of!(NodeCell, next_free) == 20);
};

impl NodeCell {
    fn new(node: Node) -> NodeCell {
        let cell = NodeCell::default();
        Node::store(&cell, node);
        cell
    }
}

/// The allocator's state apart from its nodes, as atomics, so that it can live in shared memory.
/// All zeros is a valid core that is not initialised yet: [`Tlsf::init`] or [`Tlsf::rebuild`]
/// makes it an allocator.
#[repr(C)]
#[derive(Debug)]
pub struct TlsfCore {
    /// Recycled node ids, chained through `next_free`.
    spare: AtomicU32,
    units: AtomicU32,
    free_units: AtomicU64,
    /// Nodes in use or recycled: the ids below it (the high-water mark).
    len: AtomicU32,
    /// The node at offset 0, `NIL` when there are no units. Set by `init` and `rebuild` only: the
    /// first range is never merged into one before it, so its node lives until the next `init`.
    first: AtomicU32,
    heads: [AtomicU32; BINS],
    /// Bit `c` set when class `c` has a free range.
    nonempty: [AtomicU64; BINS / 64],
}

const _: () = {
    assert!(size_of::<TlsfCore>() == 1080);
    assert!(offset_of!(TlsfCore, spare) == 0);
    assert!(offset_of!(TlsfCore, units) == 4);
    assert!(offset_of!(TlsfCore, free_units) == 8);
    assert!(offset_of!(TlsfCore, len) == 16);
    assert!(offset_of!(TlsfCore, first) == 20);
    assert!(offset_of!(TlsfCore, heads) == 24);
    assert!(offset_of!(TlsfCore, nonempty) == 1048);
};

impl TlsfCore {
    /// The core of an allocator over no units, with no nodes.
    pub fn new() -> TlsfCore {
        TlsfCore {
            spare: AtomicU32::new(NIL),
            units: AtomicU32::new(0),
            free_units: AtomicU64::new(0),
            len: AtomicU32::new(0),
            first: AtomicU32::new(NIL),
            heads: [const { AtomicU32::new(NIL) }; BINS],
            nonempty: [const { AtomicU64::new(0) }; BINS / 64],
        }
    }
}

impl Default for TlsfCore {
    fn default() -> TlsfCore {
        TlsfCore::new()
    }
}

/// Where an allocator's nodes live: a growing vector in process memory, or a fixed slice in shared
/// memory. The number of nodes in use is `core.len` in both.
pub trait Nodes {
    /// Node `id`. Panics when `id` is past the nodes.
    fn cell(&self, id: u32) -> &NodeCell;
    /// Stores `node` as node `core.len` and counts it; `None` when there is no room.
    fn push(&mut self, core: &TlsfCore, node: Node) -> Option<u32>;
    /// Nodes in use or recycled (`core.len`, never more than there are cells): the valid ids are
    /// below it.
    fn count(&self, core: &TlsfCore) -> usize;
}

/// Nodes in process memory; the vector grows with use and keeps its cells across `init`.
impl Nodes for Vec<NodeCell> {
    #[inline]
    fn cell(&self, id: u32) -> &NodeCell {
        &self[id as usize]
    }

    fn push(&mut self, core: &TlsfCore, node: Node) -> Option<u32> {
        let id = (core.len.load(R) as usize).min(self.len());
        if id < self.len() {
            Node::store(&self[id], node);
        } else {
            Vec::push(self, NodeCell::new(node));
        }
        // Node ids stay below USED: a segment holds at most 2^31 units, so at most 2^31 ranges.
        core.len.store(id as u32 + 1, R);
        Some(id as u32)
    }

    fn count(&self, core: &TlsfCore) -> usize {
        (core.len.load(R) as usize).min(self.len())
    }
}

/// Nodes in a fixed slice (in shared memory): full when `core.len` reaches its length.
impl Nodes for &[NodeCell] {
    #[inline]
    fn cell(&self, id: u32) -> &NodeCell {
        &self[id as usize]
    }

    fn push(&mut self, core: &TlsfCore, node: Node) -> Option<u32> {
        let id = core.len.load(R);
        if (id as usize) >= self.len() || id >= USED {
            return None;
        }
        Node::store(&self[id as usize], node);
        core.len.store(id + 1, R);
        Some(id)
    }

    fn count(&self, core: &TlsfCore) -> usize {
        (core.len.load(R) as usize).min(self.len())
    }
}

/// The size class a free range of `size` units (≥ 1) is filed under: exact below 8, then 3
/// mantissa bits, so every class spans at most 1/8 of its smallest size.
fn class_of(size: u32) -> usize {
    if size < 8 {
        return size as usize;
    }
    let shift = 28 - size.leading_zeros(); // log2(size) - 3
    ((shift + 1) * 8 + ((size >> shift) & 7)) as usize
}

/// Smallest size filed under `class`.
fn class_floor(class: usize) -> u64 {
    if class < 8 {
        return class as u64;
    }
    let shift = class / 8 - 1;
    ((8 + class % 8) as u64) << shift
}

/// Two-level segregated fit over `units` units: allocate and free in O(1), adjacent free ranges
/// merged at once. A request is first served from a size class whose every range fits it; when
/// there is none, the class holding ranges both larger and smaller than the request is searched
/// first-fit, so a request no larger than [`Tlsf::largest_free`] always succeeds.
///
/// The state is a [`TlsfCore`] and the [`Nodes`], both behind whatever holds them: by default a
/// box and a vector in process memory ([`Tlsf::new`]), or references into shared memory
/// ([`Tlsf::from_parts`]), where the caller serialises every call under one mutex.
pub struct Tlsf<C: Deref<Target = TlsfCore> = Box<TlsfCore>, N: Nodes = Vec<NodeCell>> {
    core: C,
    nodes: N,
}

impl Tlsf {
    /// An allocator over `units` units (at most 2^31), all free.
    pub fn new(units: u32) -> Tlsf {
        let mut t = Tlsf::from_parts(Box::new(TlsfCore::new()), Vec::new());
        t.init(units);
        t
    }
}

impl<C: Deref<Target = TlsfCore>, N: Nodes> Tlsf<C, N> {
    /// An allocator over existing state (e.g. in shared memory), used as it is.
    pub fn from_parts(core: C, nodes: N) -> Self {
        Tlsf { core, nodes }
    }

    /// (Re)initialises the state: `units` units (at most 2^31), all free, no nodes but the one
    /// free range. Panics when `units` is too large or there is no room for that node.
    pub fn init(&mut self, units: u32) {
        if let Err(e) = self.rebuild(units, &[]) {
            panic!("{e}");
        }
    }

    /// (Re)initialises the state with the given blocks in use: `used` holds `(first unit, units)`
    /// pairs sorted by offset, non-overlapping, each of at least one unit and all within `units`
    /// (at most 2^31); every gap between them becomes a free range. Answers, for each block in
    /// order, the node to free it with.
    ///
    /// Refuses bad input before changing anything. When the nodes cannot hold every range, the
    /// state is left as an allocator over no units.
    pub fn rebuild(&mut self, units: u32, used: &[(u32, u32)]) -> Result<Vec<u32>, String> {
        if units as u64 > 1 << 31 {
            return Err(format!("segment of {units} units is too long"));
        }
        let mut end = 0u64;
        for (i, &(first, size)) in used.iter().enumerate() {
            if size == 0 {
                return Err(format!("used block {i} at unit {first} is empty"));
            }
            if (first as u64) < end {
                return Err(format!("used block {i} at unit {first} starts before the block before it ends ({end})"));
            }
            end = first as u64 + size as u64;
            if end > units as u64 {
                return Err(format!("used block {i} at unit {first} ends at unit {end}, past the {units} units"));
            }
        }
        self.reset(units);
        let mut ids = Vec::with_capacity(used.len());
        let (mut at, mut last) = (0, NIL);
        for &(first, size) in used {
            if first > at {
                last = self.append(at, first - at, last, true)?;
            }
            last = self.append(first, size, last, false)?;
            ids.push(last);
            at = first + size;
        }
        if at < units {
            self.append(at, units - at, last, true)?;
        }
        Ok(ids)
    }

    /// Empties the state: `units` units, no nodes, no free ranges.
    fn reset(&mut self, units: u32) {
        let core = &*self.core;
        core.spare.store(NIL, R);
        core.units.store(units, R);
        core.free_units.store(0, R);
        core.len.store(0, R);
        core.first.store(NIL, R);
        core.heads.iter().for_each(|h| h.store(NIL, R));
        core.nonempty.iter().for_each(|w| w.store(0, R));
    }

    /// Adds the range after node `last` (`NIL` for the first range), free or used; answers its node.
    fn append(&mut self, offset: u32, size: u32, last: u32, free: bool) -> Result<u32, String> {
        let node = Node { offset, size, prev: last, next: NIL, prev_free: USED, next_free: NIL };
        let Some(id) = self.new_node(node) else {
            let have = self.nodes.count(&self.core);
            self.reset(0);
            return Err(format!("no room for more than {have} nodes"));
        };
        if last == NIL {
            self.core.first.store(id, R);
        } else {
            self.nodes.cell(last).next.store(id, R);
        }
        if free {
            self.link(id);
            let free_units = &self.core.free_units;
            free_units.store(free_units.load(R) + size as u64, R);
        }
        Ok(id)
    }

    /// A recycled node, else a new one; `None` when the nodes are full.
    fn new_node(&mut self, node: Node) -> Option<u32> {
        let spare = self.core.spare.load(R);
        if spare != NIL {
            let cell = self.nodes.cell(spare);
            self.core.spare.store(cell.next_free.load(R), R);
            Node::store(cell, node);
            return Some(spare);
        }
        self.nodes.push(&self.core, node)
    }

    fn recycle(&mut self, id: u32) {
        let n = self.nodes.cell(id);
        n.prev_free.store(USED, R);
        n.next_free.store(self.core.spare.load(R), R);
        self.core.spare.store(id, R);
    }

    fn is_free(&self, id: u32) -> bool {
        self.nodes.cell(id).prev_free.load(R) != USED
    }

    /// Files free node `id` under its size class.
    fn link(&mut self, id: u32) {
        let n = self.nodes.cell(id);
        let class = class_of(n.size.load(R));
        let head = self.core.heads[class].load(R);
        if head != NIL {
            self.nodes.cell(head).prev_free.store(id, R);
        }
        n.prev_free.store(NIL, R);
        n.next_free.store(head, R);
        self.core.heads[class].store(id, R);
        let word = &self.core.nonempty[class / 64];
        word.store(word.load(R) | 1 << (class % 64), R);
    }

    /// Takes free node `id` out of its class's list and marks it used.
    fn unlink(&mut self, id: u32) {
        let n = self.nodes.cell(id);
        let (prev_free, next_free) = (n.prev_free.load(R), n.next_free.load(R));
        if prev_free != NIL {
            self.nodes.cell(prev_free).next_free.store(next_free, R);
        } else {
            let class = class_of(n.size.load(R));
            self.core.heads[class].store(next_free, R);
            if next_free == NIL {
                let word = &self.core.nonempty[class / 64];
                word.store(word.load(R) & !(1 << (class % 64)), R);
            }
        }
        if next_free != NIL {
            self.nodes.cell(next_free).prev_free.store(prev_free, R);
        }
        n.prev_free.store(USED, R);
    }

    /// The first non-empty class at or above `class`.
    fn class_from(&self, class: usize) -> Option<usize> {
        let nonempty = &self.core.nonempty;
        let mut word = class / 64;
        let mut bits = nonempty.get(word)?.load(R) & (!0u64 << (class % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            bits = nonempty.get(word)?.load(R);
        }
    }

    /// A free range of at least `units` units: from a class that surely fits, else first fit in
    /// the request's own class.
    fn find(&self, units: u32) -> Option<u32> {
        let own = class_of(units);
        let sure = if class_floor(own) == units as u64 { own } else { own + 1 };
        if let Some(class) = self.class_from(sure) {
            return Some(self.core.heads[class].load(R));
        }
        let mut id = self.core.heads[own].load(R);
        while id != NIL {
            let n = self.nodes.cell(id);
            if n.size.load(R) >= units {
                return Some(id);
            }
            id = n.next_free.load(R);
        }
        None
    }

    /// Reserves `units` (≥ 1) units; answers the node to free it with and its first unit. `None`
    /// when no free range fits, or when a new node is needed and the nodes are full.
    pub fn allocate(&mut self, units: u32) -> Option<(u32, u32)> {
        let free_units = self.core.free_units.load(R);
        if units == 0 || units as u64 > free_units {
            return None;
        }
        let id = self.find(units)?;
        let n = Node::load(self.nodes.cell(id));
        // The node for the rest comes first, so that running out of nodes changes nothing.
        let rest = if n.size > units {
            let rest = Node {
                offset: n.offset + units,
                size: n.size - units,
                prev: id,
                next: n.next,
                prev_free: USED,
                next_free: NIL,
            };
            Some(self.new_node(rest)?)
        } else {
            None
        };
        self.unlink(id);
        if let Some(rest) = rest {
            if n.next != NIL {
                self.nodes.cell(n.next).prev.store(rest, R);
            }
            let cell = self.nodes.cell(id);
            cell.next.store(rest, R);
            cell.size.store(units, R);
            self.link(rest);
        }
        self.core.free_units.store(free_units - units as u64, R);
        Some((id, n.offset))
    }

    /// Frees the range of node `id` (from [`Tlsf::allocate`] or [`Tlsf::rebuild`], freed once)
    /// and merges it with free neighbours.
    pub fn free(&mut self, id: u32) {
        debug_assert!(!self.is_free(id), "node {id} freed twice");
        let n = self.nodes.cell(id);
        let free_units = &self.core.free_units;
        free_units.store(free_units.load(R) + n.size.load(R) as u64, R);
        let next = n.next.load(R);
        if next != NIL && self.is_free(next) {
            self.unlink(next);
            self.absorb_next(id);
        }
        let prev = self.nodes.cell(id).prev.load(R);
        if prev != NIL && self.is_free(prev) {
            self.unlink(prev);
            self.absorb_next(prev);
            self.link(prev);
        } else {
            self.link(id);
        }
    }

    /// Extends node `id` over the node after it, which must be out of every free list, and
    /// recycles that node.
    fn absorb_next(&mut self, id: u32) {
        let n = self.nodes.cell(id);
        let next = n.next.load(R);
        let after = self.nodes.cell(next);
        let (size, after) = (after.size.load(R), after.next.load(R));
        n.size.store(n.size.load(R) + size, R);
        n.next.store(after, R);
        if after != NIL {
            self.nodes.cell(after).prev.store(id, R);
        }
        self.recycle(next);
    }

    /// Units of the longest free range (exact: the top class is searched).
    pub fn largest_free(&self) -> u32 {
        let nonempty = &self.core.nonempty;
        let Some((top, bits)) = (0..nonempty.len()).rev().find_map(|w| {
            let bits = nonempty[w].load(R);
            (bits != 0).then_some((w, bits))
        }) else {
            return 0;
        };
        let class = top * 64 + 63 - bits.leading_zeros() as usize;
        let mut best = 0;
        let mut id = self.core.heads[class].load(R);
        while id != NIL {
            let n = self.nodes.cell(id);
            best = best.max(n.size.load(R));
            id = n.next_free.load(R);
        }
        best
    }

    pub fn free_units(&self) -> u64 {
        self.core.free_units.load(R)
    }

    pub fn units(&self) -> u32 {
        self.core.units.load(R)
    }

    /// Nodes ever needed at once since the last `init` (the high-water mark), for tests of memory use.
    pub fn nodes_allocated(&self) -> usize {
        self.nodes.count(&self.core)
    }

    /// Verifies every invariant of the state: the ranges chained from the first node tile all the
    /// units with consistent links; the free ranges are exactly those in the free lists, each in
    /// the list of its class, doubly linked, with the class's non-empty bit set; no two free
    /// ranges are adjacent; `free_units` is their sum; every other node is recycled. Answers the
    /// first violation found. Never panics, however the state is corrupted: every id is checked
    /// and every walk visits each node at most once.
    pub fn check(&self) -> Result<(), String> {
        const RANGE: u8 = 1;
        const LISTED: u8 = 2;
        const SPARE: u8 = 4;
        let core = &*self.core;
        let count = self.nodes.count(core);
        let units = core.units.load(R);
        if units as u64 > 1 << 31 {
            return Err(format!("segment of {units} units is too long"));
        }
        let node = |id: u32, what: &dyn Fn() -> String| {
            if id >= USED || id as usize >= count {
                return Err(format!("{}: node {id} is not one of the {count} nodes", what()));
            }
            Ok(Node::load(self.nodes.cell(id)))
        };
        let mut seen = vec![0u8; count];

        // The ranges, in address order from the first node.
        let (mut at, mut before, mut before_free) = (0u64, NIL, false);
        let (mut ranges, mut free_ranges, mut free_sum) = (0usize, 0usize, 0u64);
        let mut id = core.first.load(R);
        while id != NIL {
            let n = node(id, &|| format!("range at unit {at}"))?;
            if seen[id as usize] != 0 {
                return Err(format!("range at unit {at}: node {id} is already a range before it"));
            }
            seen[id as usize] = RANGE;
            if n.offset as u64 != at || n.prev != before {
                return Err(format!(
                    "range at unit {at}: node {id} has offset {} and prev {}, expected prev {before}",
                    n.offset, n.prev
                ));
            }
            if n.size == 0 || at + n.size as u64 > units as u64 {
                return Err(format!("range at unit {at}: node {id} has size {} in {units} units", n.size));
            }
            let free = n.prev_free != USED;
            if free {
                if before_free {
                    return Err(format!("free ranges at unit {at} and before it are not merged"));
                }
                free_ranges += 1;
                free_sum += n.size as u64;
            }
            ranges += 1;
            (at, before, before_free) = (at + n.size as u64, id, free);
            id = n.next;
        }
        if at != units as u64 {
            return Err(format!("the ranges end at unit {at}, not at {units}"));
        }

        // The free lists.
        let mut listed = 0;
        for class in 0..BINS {
            let head = core.heads[class].load(R);
            let bit = core.nonempty[class / 64].load(R) >> (class % 64) & 1 != 0;
            if bit != (head != NIL) {
                return Err(format!("class {class}: non-empty bit is {bit} but the list head is {head}"));
            }
            let (mut id, mut before) = (head, NIL);
            while id != NIL {
                let n = node(id, &|| format!("free list of class {class} after node {before}"))?;
                let marks = seen[id as usize];
                if marks & RANGE == 0 || marks & LISTED != 0 {
                    return Err(format!("class {class}: node {id} is not a range or is listed twice"));
                }
                seen[id as usize] |= LISTED;
                if n.prev_free != before || class_of(n.size) != class {
                    return Err(format!(
                        "class {class}: node {id} of size {} (class {}) has prev_free {}, expected {before}",
                        n.size,
                        class_of(n.size),
                        n.prev_free
                    ));
                }
                listed += 1;
                (before, id) = (id, n.next_free);
            }
        }
        if listed != free_ranges {
            return Err(format!("{free_ranges} free ranges but {listed} nodes in the free lists"));
        }
        let free_units = core.free_units.load(R);
        if free_units != free_sum {
            return Err(format!("free_units is {free_units} but the free ranges hold {free_sum}"));
        }

        // The recycled nodes.
        let (mut spare, mut id) = (0, core.spare.load(R));
        while id != NIL {
            let n = node(id, &|| format!("spare node {spare}"))?;
            if seen[id as usize] != 0 || n.prev_free != USED {
                return Err(format!("spare node {id} is also a range, listed twice, or not marked used"));
            }
            seen[id as usize] = SPARE;
            spare += 1;
            id = n.next_free;
        }
        if ranges + spare != count {
            return Err(format!("{ranges} ranges and {spare} spare nodes, but {count} nodes"));
        }
        Ok(())
    }

    /// The blocks in use, in address order, as (node, first unit, units): what the callers of
    /// [`Tlsf::allocate`] hold, for checking their records against. Meant after [`Tlsf::check`]
    /// passed; on a corrupted chain it stops at the first bad id and visits each node at most once.
    pub fn used_blocks(&self) -> Vec<(u32, u32, u32)> {
        let count = self.nodes.count(&self.core);
        let mut used = Vec::new();
        let mut id = self.core.first.load(R);
        for _ in 0..count {
            if id >= USED || id as usize >= count {
                break;
            }
            let n = Node::load(self.nodes.cell(id));
            if n.prev_free == USED {
                used.push((id, n.offset, n.size));
            }
            id = n.next;
        }
        used
    }
}

/// One allocated range. Give it back with [`Arena::free`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Byte offset of the block from the start of the region; a multiple of [`GRANULE`].
    pub offset: usize,
    /// Bytes reserved (the request rounded up to [`GRANULE`]).
    pub len: usize,
    /// The segment allocator's node for the block; `NIL` for an empty block.
    node: u32,
}

impl Block {
    /// What an object record keeps to free its block later: offset, length and node.
    pub fn parts(&self) -> (usize, usize, u32) {
        (self.offset, self.len, self.node)
    }

    /// The block [`Block::parts`] described.
    pub fn from_parts(offset: usize, len: usize, node: u32) -> Block {
        Block { offset, len, node }
    }
}

/// Why an allocation failed.
#[derive(Debug, PartialEq, Eq)]
pub enum AllocError {
    /// No segment has a free range this large.
    NoSpace { largest_free: usize },
    /// As many blocks are live as the arena was sized for.
    TooManyObjects { limit: usize },
}

/// The allocator for one region, and the ids of the objects living in it (each live block has
/// one id below `max_objects`). Not thread-safe: the pool keeps it behind a mutex.
pub struct Arena {
    segments: Vec<Tlsf>,
    segment_len: usize,
    capacity: usize,
    used: usize,
    live: usize,
    max_objects: usize,
    /// Ids of freed objects, reused before new ones.
    free_ids: Vec<u32>,
    next_id: u32,
}

impl Arena {
    /// An arena over `len` bytes (rounded down to [`GRANULE`]) holding at most `max_objects` live
    /// blocks (at most 2^31), with no segment longer than `segment_limit` bytes.
    pub fn new(len: usize, max_objects: usize, segment_limit: usize) -> Arena {
        let len = len / GRANULE * GRANULE;
        let segment_len = (segment_limit.min(MAX_SEGMENT) / GRANULE * GRANULE).max(GRANULE);
        let max_objects = max_objects.clamp(1, 1 << 31);
        let mut segments = Vec::new();
        let mut start = 0;
        while start < len {
            let seg_len = segment_len.min(len - start);
            segments.push(Tlsf::new((seg_len / GRANULE) as u32));
            start += seg_len;
        }
        Arena { segments, segment_len, capacity: len, used: 0, live: 0, max_objects, free_ids: Vec::new(), next_id: 0 }
    }

    /// Reserves `size` bytes (rounded up to [`GRANULE`]) and an object id. Size 0 reserves no
    /// bytes but still counts as a live object.
    pub fn allocate(&mut self, size: usize) -> Result<(Block, u32), AllocError> {
        if self.live >= self.max_objects {
            return Err(AllocError::TooManyObjects { limit: self.max_objects });
        }
        let block = if size == 0 {
            Block { offset: 0, len: 0, node: NIL }
        } else {
            self.allocate_bytes(size).ok_or_else(|| AllocError::NoSpace { largest_free: self.largest_free() })?
        };
        self.used += block.len;
        self.live += 1;
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        Ok((block, id))
    }

    fn allocate_bytes(&mut self, size: usize) -> Option<Block> {
        let units = u32::try_from(size.div_ceil(GRANULE)).ok()?;
        self.segments.iter_mut().enumerate().find_map(|(i, seg)| {
            let (node, first) = seg.allocate(units)?;
            Some(Block { offset: i * self.segment_len + first as usize * GRANULE, len: units as usize * GRANULE, node })
        })
    }

    /// Returns a block and its id. Each must be freed exactly once (the pool's records guarantee it).
    pub fn free(&mut self, block: Block, id: u32) {
        if block.node != NIL {
            self.segments[block.offset / self.segment_len].free(block.node);
        }
        self.used -= block.len;
        self.live -= 1;
        self.free_ids.push(id);
    }

    /// Total bytes under management.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes reserved by live blocks.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Live blocks, including size-0 ones.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn max_objects(&self) -> usize {
        self.max_objects
    }

    /// The longest free range in bytes: a create of this size, or less, succeeds now.
    pub fn largest_free(&self) -> usize {
        self.segments.iter().map(|s| s.largest_free() as usize * GRANULE).max().unwrap_or(0)
    }

    /// Starts and lengths of the segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.segments.iter().enumerate().map(|(i, s)| (i * self.segment_len, s.units() as usize * GRANULE))
    }

    /// Allocator nodes in use or recycled, over all segments (each 24 bytes).
    pub fn nodes_allocated(&self) -> usize {
        self.segments.iter().map(Tlsf::nodes_allocated).sum()
    }
}

/// Per-thread caches kept by a [`SharedArena`].
const CACHE_SLOTS: usize = 16;
/// Most blocks one cache holds.
const CACHE_BLOCKS: usize = 32;
/// Largest block a cache keeps; larger frees go straight back to the arena, where they coalesce.
const CACHE_MAX_BLOCK: usize = 256 << 10;

#[repr(align(128))]
struct Padded<T>(T);

/// What a [`SharedArena`] holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub capacity: usize,
    /// Bytes held by live objects (cached free blocks are not counted).
    pub used: usize,
    /// Live objects, including size-0 ones.
    pub live: usize,
    pub max_objects: usize,
    pub largest_free: usize,
}

/// A thread-safe [`Arena`]. A freed block of at most 256 KiB first goes to the freeing thread's
/// cache with its object id, and a request of the same rounded size takes both from there without
/// touching the shared arena. When the arena cannot serve a request, every cache is flushed back
/// and the request is tried once more under the same hold of the arena's lock, so cached blocks
/// never make a create fail, even while other threads allocate.
///
/// Each cached block travels with its owner's token `T` (the pool keeps its `Arc` there), so
/// a create served from the cache moves a token instead of touching a shared reference count.
/// Tokens the arena does not keep are handed back to the caller, who drops them outside.
pub struct SharedArena<T> {
    arena: Padded<Mutex<Arena>>,
    slots: Box<[Arc<CacheSlot<T>>]>,
}

/// One thread's cache. Reference-counted on its own, so that a token can be put into it without
/// borrowing the arena: the token may be what keeps the arena alive.
pub struct CacheSlot<T> {
    cache: Padded<Mutex<Cache<T>>>,
}

struct Cache<T> {
    blocks: Vec<(Block, u32, T)>,
    bytes: usize,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single call that completes or panics before changing
    // anything, so a poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn my_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % CACHE_SLOTS;
    }
    SLOT.with(|s| *s)
}

impl<T> CacheSlot<T> {
    /// Keeps `block`, its object `id` and `token` if the block is small and there is room; else
    /// gives them back.
    pub fn put(&self, block: Block, id: u32, token: T) -> Result<(), (Block, u32, T)> {
        if block.len == 0 || block.len > CACHE_MAX_BLOCK {
            return Err((block, id, token));
        }
        let mut cache = lock(&self.cache.0);
        if cache.closed || cache.blocks.len() >= CACHE_BLOCKS {
            return Err((block, id, token));
        }
        cache.bytes += block.len;
        cache.blocks.push((block, id, token));
        Ok(())
    }
}

impl<T> SharedArena<T> {
    pub fn new(arena: Arena) -> SharedArena<T> {
        let slot =
            || Arc::new(CacheSlot { cache: Padded(Mutex::new(Cache { blocks: Vec::new(), bytes: 0, closed: false })) });
        SharedArena { arena: Padded(Mutex::new(arena)), slots: (0..CACHE_SLOTS).map(|_| slot()).collect() }
    }

    /// A block of at least `size` bytes and an object id, with the token they were cached with, if
    /// they were.
    pub fn allocate(&self, size: usize) -> Result<(Block, u32, Option<T>), AllocError> {
        let len = size.div_ceil(GRANULE).saturating_mul(GRANULE);
        if size > 0 && len <= CACHE_MAX_BLOCK {
            let mut cache = lock(&self.slots[my_slot()].cache.0);
            if let Some(i) = cache.blocks.iter().rposition(|(b, _, _)| b.len == len) {
                let (block, id, token) = cache.blocks.swap_remove(i);
                cache.bytes -= block.len;
                return Ok((block, id, Some(token)));
            }
        }
        let first = lock(&self.arena.0).allocate(size);
        let (block, id) = match first {
            Err(_) => {
                // Another thread's cache may hold the room (or the object ids) this request
                // needs: take every cached block back and retry under the same hold of the
                // arena's lock, so no other thread can take the returned room in between.
                let cached = self.take_cached(false);
                if cached.is_empty() {
                    first
                } else {
                    let mut arena = lock(&self.arena.0);
                    let tokens = Self::give_back(&mut arena, cached);
                    let retried = arena.allocate(size);
                    drop(arena);
                    drop(tokens);
                    retried
                }
            }
            ok => ok,
        }?;
        Ok((block, id, None))
    }

    /// The calling thread's cache; free a block with `slot().put(..)`, and with [`Self::free`]
    /// when the cache gives it back.
    pub fn slot(&self) -> Arc<CacheSlot<T>> {
        self.slots[my_slot()].clone()
    }

    /// Returns `block` and its object `id` to the arena, bypassing the caches.
    pub fn free(&self, block: Block, id: u32) {
        lock(&self.arena.0).free(block, id);
    }

    /// Returns every cached block to the arena and hands back their tokens.
    #[must_use = "the tokens must be dropped by the caller"]
    pub fn flush(&self) -> Vec<T> {
        self.drain(false)
    }

    /// Stops caching for good and hands back the cached tokens.
    #[must_use = "the tokens must be dropped by the caller"]
    pub fn close(&self) -> Vec<T> {
        self.drain(true)
    }

    fn drain(&self, close: bool) -> Vec<T> {
        let cached = self.take_cached(close);
        Self::give_back(&mut lock(&self.arena.0), cached)
    }

    /// Empties every cache (and stops caching for good if `close`).
    fn take_cached(&self, close: bool) -> Vec<(Block, u32, T)> {
        let mut taken = Vec::new();
        for slot in self.slots.iter() {
            let mut cache = lock(&slot.cache.0);
            cache.closed |= close;
            cache.bytes = 0;
            taken.append(&mut cache.blocks);
        }
        taken
    }

    /// Frees cached blocks into `arena` and hands back their tokens.
    fn give_back(arena: &mut Arena, cached: Vec<(Block, u32, T)>) -> Vec<T> {
        cached
            .into_iter()
            .map(|(block, id, token)| {
                arena.free(block, id);
                token
            })
            .collect()
    }

    pub fn usage(&self) -> Usage {
        let (cached_blocks, cached_bytes) = self.slots.iter().fold((0, 0), |(n, b), slot| {
            let cache = lock(&slot.cache.0);
            (n + cache.blocks.len(), b + cache.bytes)
        });
        let arena = lock(&self.arena.0);
        Usage {
            capacity: arena.capacity(),
            used: arena.used() - cached_bytes,
            live: arena.live() - cached_blocks,
            max_objects: arena.max_objects(),
            largest_free: arena.largest_free(),
        }
    }
}

#[cfg(test)]
mod tlsf_tests {
    use super::*;

    /// A small deterministic generator, so failures replay.
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

    #[test]
    fn every_size_falls_in_the_class_whose_floor_is_at_most_it() {
        let sizes = (1..70_000u32).chain([1 << 20, (1 << 20) + 1, (1 << 31) - 1, 1 << 31, u32::MAX]);
        for s in sizes {
            let c = class_of(s);
            assert!(c < BINS - 1, "class {c} of {s}");
            assert!(class_floor(c) <= s as u64 && (s as u64) < class_floor(c + 1), "size {s} in class {c}");
        }
    }

    /// Longest run of free units in `used`.
    fn longest_free_run(used: &[bool]) -> u32 {
        let (mut best, mut run) = (0, 0);
        for &u in used {
            run = if u { 0 } else { run + 1 };
            best = best.max(run);
        }
        best
    }

    #[test]
    fn random_allocations_never_overlap_and_largest_free_is_exact_and_always_fits() {
        const UNITS: u32 = 4096;
        let mut t = Tlsf::new(UNITS);
        let mut used = vec![false; UNITS as usize];
        let mut live: Vec<(u32, u32, u32)> = Vec::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for step in 0..20_000 {
            if live.is_empty() || rng.below(100) < 55 {
                let span = if rng.below(4) == 0 { 600 } else { 40 };
                let units = 1 + rng.below(span) as u32;
                match t.allocate(units) {
                    Some((node, first)) => {
                        let range = first as usize..(first + units) as usize;
                        assert!(range.end <= UNITS as usize, "step {step}: past the end");
                        assert!(used[range.clone()].iter().all(|u| !u), "step {step}: overlap at {first}");
                        used[range].iter_mut().for_each(|u| *u = true);
                        live.push((node, first, units));
                    }
                    None => assert!(units > longest_free_run(&used), "step {step}: {units} units refused"),
                }
            } else {
                let (node, first, units) = live.swap_remove(rng.below(live.len() as u64) as usize);
                t.free(node);
                used[first as usize..(first + units) as usize].iter_mut().for_each(|u| *u = false);
            }
            let largest = longest_free_run(&used);
            assert_eq!(t.largest_free(), largest, "step {step}");
            assert_eq!(t.free_units(), used.iter().filter(|u| !**u).count() as u64, "step {step}");
            if largest > 0 && step % 10 == 0 {
                let (node, _) =
                    t.allocate(largest).unwrap_or_else(|| panic!("step {step}: largest free {largest} refused"));
                t.free(node);
            }
        }
        for (node, _, _) in live {
            t.free(node);
        }
        assert_eq!((t.largest_free(), t.free_units()), (UNITS, UNITS as u64), "frees coalesce back to one range");
    }

    #[test]
    fn a_request_just_below_a_free_range_in_its_own_class_is_served() {
        // 1000 units sit in the class [960, 1024): a request of 990 is not sure to fit any range
        // there, so it is searched first-fit.
        let mut t = Tlsf::new(1000);
        let (node, first) = t.allocate(990).expect("990 of 1000 free units");
        assert_eq!(first, 0);
        assert_eq!(t.largest_free(), 10);
        t.free(node);
        assert!(t.allocate(1000).is_some());
        assert!(t.allocate(1).is_none());
    }

    #[test]
    fn nodes_grow_with_live_blocks_not_with_capacity() {
        let mut t = Tlsf::new(1 << 31);
        let nodes: Vec<u32> = (0..1000).map(|_| t.allocate(1).unwrap().0).collect();
        assert_eq!(t.nodes_allocated(), 1001, "one per block plus the free rest");
        for n in nodes {
            t.free(n);
        }
        assert_eq!(t.largest_free(), 1 << 31);
        let again: Vec<u32> = (0..1000).map(|_| t.allocate(1).unwrap().0).collect();
        assert_eq!(t.nodes_allocated(), 1001, "freed nodes are reused");
        assert_eq!(again.len(), 1000);
    }

    /// An all-zero core and cells, as a fresh shared mapping holds them.
    fn zeroed_state(cells: usize) -> (Box<TlsfCore>, Vec<NodeCell>) {
        // SAFETY: TlsfCore is only atomic integers, for which all-zero bytes are valid values.
        let core: Box<TlsfCore> = Box::new(unsafe { std::mem::zeroed() });
        (core, (0..cells).map(|_| NodeCell::default()).collect())
    }

    #[test]
    fn an_all_zero_core_is_reported_uninitialised_until_init() {
        let (core, cells) = zeroed_state(4);
        core.units.store(10, R);
        let mut t = Tlsf::from_parts(&*core, &cells[..]);
        assert!(t.check().is_err(), "ten units but no ranges");
        t.init(10);
        assert_eq!(t.check(), Ok(()));
        assert_eq!((t.units(), t.free_units(), t.largest_free(), t.nodes_allocated()), (10, 10, 10, 1));
        assert_eq!(Tlsf::new(0).check(), Ok(()), "no units, no nodes");
        assert_eq!(Tlsf::from_parts(&TlsfCore::new(), &[][..]).check(), Ok(()), "a new core is zero units");
    }

    #[test]
    fn shared_style_allocator_gives_the_same_nodes_and_offsets_as_the_in_process_one() {
        const UNITS: u32 = 4096;
        let mut own = Tlsf::new(UNITS);
        let (core, cells) = zeroed_state(UNITS as usize);
        let mut shared = Tlsf::from_parts(&*core, &cells[..]);
        shared.init(UNITS);
        let mut live = Vec::new();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for step in 0..5000 {
            if live.is_empty() || rng.below(100) < 55 {
                let span = if rng.below(4) == 0 { 600 } else { 40 };
                let units = 1 + rng.below(span) as u32;
                let got = own.allocate(units);
                assert_eq!(shared.allocate(units), got, "step {step}: allocate {units}");
                live.extend(got.map(|(node, _)| node));
            } else {
                let node = live.swap_remove(rng.below(live.len() as u64) as usize);
                own.free(node);
                shared.free(node);
            }
            assert_eq!(shared.check(), Ok(()), "step {step}");
            assert_eq!(own.check(), Ok(()), "step {step}");
            assert_eq!(
                (shared.largest_free(), shared.free_units(), shared.nodes_allocated()),
                (own.largest_free(), own.free_units(), own.nodes_allocated()),
                "step {step}"
            );
        }
        for node in live {
            shared.free(node);
        }
        assert_eq!((shared.largest_free(), shared.free_units()), (UNITS, UNITS as u64));
        assert_eq!(shared.check(), Ok(()));
    }

    #[test]
    fn allocate_answers_none_when_the_fixed_nodes_are_full_and_changes_nothing() {
        let (core, cells) = zeroed_state(3);
        let mut t = Tlsf::from_parts(&*core, &cells[..]);
        t.init(100);
        assert_eq!(t.allocate(10), Some((0, 0)));
        assert_eq!(t.allocate(10), Some((1, 10)));
        assert_eq!(t.nodes_allocated(), 3, "two blocks and the free rest");
        assert_eq!(t.allocate(10), None, "splitting the rest needs a fourth node");
        assert_eq!(t.check(), Ok(()));
        assert_eq!((t.free_units(), t.largest_free(), t.nodes_allocated()), (80, 80, 3));
        // The whole rest needs no new node.
        let (rest, first) = t.allocate(80).expect("an exact fit needs no node");
        assert_eq!((rest, first, t.free_units()), (2, 20, 0));
        t.free(1);
        assert_eq!(t.check(), Ok(()));
        assert_eq!(t.allocate(4), None, "a split of the freed block needs a node again");
        assert_eq!(t.allocate(10), Some((1, 10)));
        for node in [0, 1, 2] {
            t.free(node);
            assert_eq!(t.check(), Ok(()));
        }
        assert_eq!((t.free_units(), t.largest_free()), (100, 100));
        // Merging recycled two nodes: splits work again.
        assert_eq!(t.allocate(5), Some((0, 0)));
        assert_eq!(t.allocate(5), Some((2, 5)));
        assert_eq!(t.check(), Ok(()));
    }

    #[test]
    fn rebuild_marks_the_given_blocks_used_and_freeing_them_merges_back_to_one_range() {
        const UNITS: u32 = 1000;
        let used = [(0, 10), (20, 5), (25, 100), (500, 1), (999, 1)];
        let mut t = Tlsf::new(UNITS);
        t.allocate(300).unwrap(); // state from before the rebuild is dropped
        let nodes = t.rebuild(UNITS, &used).unwrap();
        assert_eq!(t.check(), Ok(()));
        assert_eq!(nodes.len(), used.len());
        let blocks: Vec<(u32, u32, u32)> =
            nodes.iter().zip(used).map(|(&n, (first, units))| (n, first, units)).collect();
        assert_eq!(t.used_blocks(), blocks, "the used blocks, in address order, with their nodes");
        // Ranges: 0+10 used, 10+10 free, 20+5, 25+100 used, 125+375 free, 500+1 used, 501+498
        // free, 999+1 used.
        assert_eq!(t.nodes_allocated(), 8);
        assert_eq!((t.free_units(), t.largest_free()), (10 + 375 + 498, 498));
        let (gap, first) = t.allocate(498).unwrap();
        assert_eq!(first, 501, "only a gap is handed out");
        t.free(gap);
        let mut rng = Rng(7);
        let mut order = nodes.clone();
        while !order.is_empty() {
            t.free(order.swap_remove(rng.below(order.len() as u64) as usize));
            assert_eq!(t.check(), Ok(()));
        }
        assert_eq!((t.free_units(), t.largest_free()), (UNITS as u64, UNITS));
        assert_eq!(t.allocate(UNITS), Some((t.core.first.load(R), 0)), "one range of all units");

        // The same in a fixed slice holding exactly the ranges, and with no gaps at all.
        let (core, cells) = zeroed_state(8);
        let mut s = Tlsf::from_parts(&*core, &cells[..]);
        assert_eq!(s.rebuild(UNITS, &used), Ok(nodes));
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.rebuild(UNITS, &[(0, 600), (600, 400)]), Ok(vec![0, 1]));
        assert_eq!((s.check(), s.free_units(), s.largest_free()), (Ok(()), 0, 0));
        s.free(1);
        s.free(0);
        assert_eq!((s.check(), s.free_units(), s.largest_free()), (Ok(()), 1000, 1000));
    }

    #[test]
    fn rebuild_refuses_unsorted_overlapping_empty_or_out_of_range_blocks_and_changes_nothing() {
        let mut t = Tlsf::new(1000);
        let (node, _) = t.allocate(10).unwrap();
        for bad in [
            &[(20, 5), (0, 10)][..],
            &[(0, 10), (5, 3)],
            &[(0, 10), (9, 1)],
            &[(995, 10)],
            &[(1000, 1)],
            &[(u32::MAX, 2)],
            &[(5, 0)],
        ] {
            assert!(t.rebuild(1000, bad).is_err(), "{bad:?}");
            assert_eq!(t.check(), Ok(()));
            assert_eq!((t.free_units(), t.nodes_allocated()), (990, 2), "{bad:?}");
        }
        assert!(t.rebuild((1 << 31) + 1, &[]).is_err());
        t.free(node);
        assert_eq!(t.largest_free(), 1000);

        // Too few nodes: refused, and the state is left an allocator over no units.
        let (core, cells) = zeroed_state(2);
        let mut s = Tlsf::from_parts(&*core, &cells[..]);
        assert!(s.rebuild(100, &[(10, 5)]).is_err(), "three ranges in two nodes");
        assert_eq!((s.check(), s.units(), s.free_units(), s.allocate(1)), (Ok(()), 0, 0, None));
        assert_eq!(s.rebuild(100, &[(0, 5)]), Ok(vec![0]));
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn check_reports_corrupted_state_without_panicking() {
        let (core, cells) = zeroed_state(64);
        let mut t = Tlsf::from_parts(&*core, &cells[..]);
        t.init(1000);
        let nodes: Vec<u32> = (0..20).map(|i| t.allocate(1 + i).unwrap().0).collect();
        for &node in nodes.iter().step_by(3) {
            t.free(node);
        }
        assert_eq!(t.check(), Ok(()));
        let class = (0..BINS).find(|&c| core.heads[c].load(R) != NIL).unwrap();
        let free = &cells[core.heads[class].load(R) as usize];
        let used = &cells[nodes[1] as usize];
        let corruptions: [(&AtomicU32, u32); 9] = [
            (&free.size, free.size.load(R) + 1),
            (&free.next_free, 1_000_000),
            (&free.prev_free, 3),
            (&used.prev_free, NIL),
            (&used.next, 1_000_000),
            (&used.next, nodes[1]),
            (&used.prev, NIL),
            (&core.first, 63),
            (&core.spare, nodes[2]),
        ];
        for (i, (field, bad)) in corruptions.into_iter().enumerate() {
            let good = field.swap(bad, R);
            assert!(t.check().is_err(), "corruption {i} not found");
            field.store(good, R);
            assert_eq!(t.check(), Ok(()));
        }
        let word = &core.nonempty[class / 64];
        word.store(word.load(R) & !(1 << (class % 64)), R);
        assert!(t.check().unwrap_err().contains(&format!("class {class}")));
        word.store(word.load(R) | 1 << (class % 64), R);
        core.free_units.store(core.free_units.load(R) - 1, R);
        assert!(t.check().unwrap_err().contains("free_units"));
        core.free_units.store(core.free_units.load(R) + 1, R);
        let len = core.len.swap(u32::MAX, R);
        assert!(t.check().unwrap_err().contains("but 64 nodes"), "the count stops at the cells");
        core.len.store(len, R);
        assert_eq!(t.check(), Ok(()));
        core.len.store(3, R);
        assert!(t.check().is_err(), "ranges past the count");
        core.units.store(u32::MAX, R);
        assert!(t.check().is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(a: &mut Arena, size: usize) -> Block {
        a.allocate(size).unwrap().0
    }

    /// Frees a block, with any id: these tests do not look at ids.
    fn free(a: &mut Arena, b: Block) {
        a.free(b, 0)
    }

    #[test]
    fn blocks_are_granule_aligned_disjoint_and_rounded_up() {
        let mut a = Arena::new(1 << 20, 1024, MAX_SEGMENT);
        let sizes = [1usize, 63, 64, 65, 1000, 4096, 100_000];
        let blocks: Vec<Block> = sizes.iter().map(|&s| block(&mut a, s)).collect();
        for (b, &s) in blocks.iter().zip(&sizes) {
            assert_eq!(b.offset % GRANULE, 0);
            assert_eq!(b.len, s.div_ceil(GRANULE) * GRANULE);
            assert!(b.offset + b.len <= 1 << 20);
        }
        let mut ranges: Vec<(usize, usize)> = blocks.iter().map(|b| (b.offset, b.offset + b.len)).collect();
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {:?}", w);
        }
        assert_eq!(a.used(), blocks.iter().map(|b| b.len).sum::<usize>());
        assert_eq!(a.live(), sizes.len());
    }

    #[test]
    fn ids_are_distinct_below_max_objects_and_reused_after_free() {
        let mut a = Arena::new(1 << 20, 4, MAX_SEGMENT);
        let taken: Vec<(Block, u32)> = (0..4).map(|_| a.allocate(64).unwrap()).collect();
        let mut ids: Vec<u32> = taken.iter().map(|t| t.1).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert_eq!(a.allocate(64).unwrap_err(), AllocError::TooManyObjects { limit: 4 });
        a.free(taken[2].0, taken[2].1);
        assert_eq!(a.allocate(64).unwrap().1, taken[2].1);
    }

    #[test]
    fn exhaustion_reports_largest_free_and_freed_space_is_reused() {
        let mut a = Arena::new(1 << 20, 1024, MAX_SEGMENT);
        let first = block(&mut a, 512 << 10);
        let second = block(&mut a, 512 << 10);
        assert_eq!(a.allocate(64).unwrap_err(), AllocError::NoSpace { largest_free: 0 });
        free(&mut a, first);
        assert_eq!(a.used(), 512 << 10);
        assert_eq!(a.allocate((512 << 10) + 1).unwrap_err(), AllocError::NoSpace { largest_free: 512 << 10 });
        let again = block(&mut a, 512 << 10);
        assert_eq!(again.offset, first.offset);
        free(&mut a, again);
        free(&mut a, second);
        assert_eq!(a.used(), 0);
        assert_eq!(a.live(), 0);
        assert_eq!(block(&mut a, 1 << 20).offset, 0, "frees must coalesce back to one range");
    }

    #[test]
    fn every_size_up_to_largest_free_fits() {
        // A free range of 1 MiB minus 64 B: any request up to it fits, including ones in the same
        // size class as the range.
        let mut a = Arena::new(1 << 20, 1024, MAX_SEGMENT);
        let _first = block(&mut a, 64);
        let largest = a.largest_free();
        assert_eq!(largest, (1 << 20) - 64);
        for size in [largest, largest - 1, largest - 64, largest - 4096, largest / 2 + 1] {
            let b = block(&mut a, size);
            free(&mut a, b);
        }
    }

    #[test]
    fn zero_size_blocks_count_as_objects_but_take_no_bytes() {
        let mut a = Arena::new(4096, 2, MAX_SEGMENT);
        let z = block(&mut a, 0);
        assert_eq!((z.len, a.used(), a.live()), (0, 0, 1));
        let _one = block(&mut a, 1);
        assert_eq!(a.allocate(0).unwrap_err(), AllocError::TooManyObjects { limit: 2 });
        free(&mut a, z);
        assert_eq!(a.live(), 1);
    }

    #[test]
    fn one_gib_arena_holds_a_hundred_thousand_live_objects_with_one_node_each() {
        let mut a = Arena::new(1 << 30, 262_144, MAX_SEGMENT);
        let blocks: Vec<Block> = (0..100_000).map(|i| block(&mut a, 64 + (i % 7) * 100)).collect();
        assert_eq!(a.live(), 100_000);
        assert_eq!(a.nodes_allocated(), 100_001);
        for b in blocks {
            free(&mut a, b);
        }
        assert_eq!((a.used(), a.live()), (0, 0));
        assert_eq!(a.largest_free(), 1 << 30);
    }

    #[test]
    fn blocks_never_straddle_a_segment_boundary() {
        let seg = 64 << 10;
        let mut a = Arena::new(256 << 10, 1024, seg);
        assert_eq!(a.segments().collect::<Vec<_>>(), vec![(0, seg), (seg, seg), (2 * seg, seg), (3 * seg, seg)]);
        let mut blocks = Vec::new();
        while let Ok((b, _)) = a.allocate(24 << 10) {
            assert_eq!(b.offset / seg, (b.offset + b.len - 1) / seg, "{b:?} crosses a boundary");
            blocks.push(b);
        }
        // 2 blocks of 24 KiB fit in each 64 KiB segment.
        assert_eq!(blocks.len(), 8);
        assert!(matches!(a.allocate(seg + 64), Err(AllocError::NoSpace { .. })));
        for b in blocks {
            free(&mut a, b);
        }
        assert_eq!(a.largest_free(), seg);
    }

    #[test]
    fn request_larger_than_any_segment_fails_without_panicking() {
        let mut a = Arena::new(1 << 20, 16, MAX_SEGMENT);
        assert!(matches!(a.allocate(usize::MAX), Err(AllocError::NoSpace { .. })));
        assert!(matches!(a.allocate(2 << 20), Err(AllocError::NoSpace { .. })));
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    fn shared(len: usize, max_objects: usize) -> SharedArena<u32> {
        SharedArena::new(Arena::new(len, max_objects, MAX_SEGMENT))
    }

    /// Frees the way the pool does: into this thread's cache, else into the arena. Answers the
    /// token the arena gave back.
    fn free(a: &SharedArena<u32>, block: Block, id: u32, token: u32) -> Option<u32> {
        match a.slot().put(block, id, token) {
            Ok(()) => None,
            Err((block, id, token)) => {
                a.free(block, id);
                Some(token)
            }
        }
    }

    #[test]
    fn freed_small_block_is_reused_from_the_cache_with_its_id_and_token_and_not_counted_as_used() {
        let a = shared(1 << 20, 1024);
        let (b, id, token) = a.allocate(4096).unwrap();
        assert_eq!(token, None);
        assert_eq!(free(&a, b, id, 7), None, "small block is cached with its token");
        let u = a.usage();
        assert_eq!((u.used, u.live), (0, 0));
        let (again, again_id, token) = a.allocate(4090).unwrap();
        assert_eq!((again.offset, again_id, token), (b.offset, id, Some(7)), "same rounded size comes from the cache");
        assert_eq!(a.usage().used, 4096);
        assert_eq!(free(&a, again, again_id, 8), None);
    }

    #[test]
    fn large_blocks_are_not_cached_and_their_token_comes_back() {
        let a = shared(4 << 20, 1024);
        let (b, id, _) = a.allocate(1 << 20).unwrap();
        assert_eq!(free(&a, b, id, 9), Some(9));
        assert_eq!(a.usage().used, 0);
    }

    #[test]
    fn cached_blocks_are_flushed_when_the_arena_cannot_serve() {
        let a = shared(256 << 10, 1024);
        let blocks: Vec<(Block, u32)> =
            (0..4).map(|_| a.allocate(64 << 10).map(|(b, id, _)| (b, id)).unwrap()).collect();
        for (i, (b, id)) in blocks.into_iter().enumerate() {
            assert_eq!(free(&a, b, id, i as u32), None);
        }
        // All 256 KiB sit in the cache as 64 KiB blocks; a 256 KiB request must still succeed.
        let (whole, _, token) = a.allocate(256 << 10).unwrap();
        assert_eq!((whole.offset, whole.len, token), (0, 256 << 10, None));
        assert_eq!(a.usage().used, 256 << 10);
    }

    #[test]
    fn cached_blocks_do_not_count_against_max_objects() {
        let a = shared(1 << 20, 2);
        let (x, xi, _) = a.allocate(64).unwrap();
        let (y, yi, _) = a.allocate(64).unwrap();
        let _ = (free(&a, x, xi, 0), free(&a, y, yi, 0));
        let (big, bi, _) = a.allocate(1024).unwrap();
        let (other, oi, _) = a.allocate(2048).unwrap();
        assert_eq!(a.usage().live, 2);
        assert_eq!(a.allocate(64).unwrap_err(), AllocError::TooManyObjects { limit: 2 });
        let _ = (free(&a, big, bi, 0), free(&a, other, oi, 0));
    }

    #[test]
    fn close_hands_back_every_cached_token_and_stops_caching() {
        let a = shared(1 << 20, 1024);
        let (x, xi, _) = a.allocate(64).unwrap();
        let (y, yi, _) = a.allocate(128).unwrap();
        let _ = (free(&a, x, xi, 1), free(&a, y, yi, 2));
        let mut tokens = a.close();
        tokens.sort();
        assert_eq!(tokens, vec![1, 2]);
        let (z, zi, _) = a.allocate(64).unwrap();
        assert_eq!(free(&a, z, zi, 3), Some(3), "after close nothing is cached");
        assert_eq!(a.usage().used, 0);
    }

    #[test]
    fn threads_allocating_and_freeing_leave_the_arena_empty() {
        let a = shared(8 << 20, 4096);
        std::thread::scope(|s| {
            for t in 0..4 {
                let a = &a;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..5000 {
                        let (b, id, _) = a.allocate(64 * (1 + (i + t) % 9)).unwrap();
                        held.push((b, id));
                        if held.len() > 20 {
                            let (b, id) = held.swap_remove(i % held.len());
                            let _ = free(a, b, id, 0);
                        }
                    }
                    for (b, id) in held {
                        let _ = free(a, b, id, 0);
                    }
                });
            }
        });
        let u = a.usage();
        assert_eq!((u.used, u.live), (0, 0));
        let _ = a.flush();
        assert_eq!(a.allocate(8 << 20).unwrap().0.len, 8 << 20, "everything coalesces after a flush");
    }
}
