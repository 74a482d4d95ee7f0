//! Coverage-guided model check of the C ABI.
//!
//! The input is decoded (with `arbitrary`) into at most 200 operations on up to two pools, eight
//! keys (binary keys with NUL bytes, a 4096-byte key and the invalid empty key among them), sizes
//! from 0 past the pool's capacity and up to 16 live handles, writers and readers. Every status
//! and every observable value (sizes, addresses, bytes, counters) is checked against a small
//! reference model of the lifecycle in `include/zcopy.h`; a mismatch panics, which libFuzzer
//! reports as a crash with the message.
//!
//! The model: per pool instance, key -> object id; per object, created or sealed, whether the
//! key still names it (deleted-but-referenced objects do not), how many handles reference it, and
//! where it lives (its offset in the region), so the model can tell exactly when a create must
//! fit (see `Inst::fit`). Each object's bytes are derived from its id, so a reader verifies them.
//! A released handle is dropped from the table (using it again is undefined); a closed pool is
//! never called again (its slot is re-opened instead), but its handles live on.
//!
//! A create must succeed whenever a free range of its size exists (the allocator searches its
//! size class first-fit before giving up), and `largest_free_block` must be the longest free range.
//!
//! `ZC_FUZZ_TRACE=1` prints every call and its status to stderr (for a reproducer's call
//! sequence).

#![no_main]

use std::collections::BTreeMap;
use std::ffi::{c_char, CStr};
use std::mem::MaybeUninit;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use zcopy::ffi::buffer::*;
use zcopy::ffi::parts::*;
use zcopy::ffi::pool::*;
use zcopy::ffi::status::*;

const MAX_OPS: usize = 200;
const MAX_HANDLES: usize = 16;
const SLOTS: usize = 2;
const KEYS: usize = 8;
/// Index of the empty key: a byte string of length 0 is never a valid key.
const EMPTY_KEY: usize = 7;
/// Check the counters of every pool after this many operations.
const CHECK_EVERY: usize = 8;
const GRANULE: usize = 64;
/// Stands in an out-parameter before a call, to see that a failing call left it alone.
const SENTINEL: usize = 0x5a5a_5a50;

static LONG_KEY: [u8; 4096] = [b'k'; 4096];
static TOO_LONG_KEY: [u8; 4097] = [b'K'; 4097];

fn key_bytes(k: usize) -> &'static [u8] {
    match k {
        0 => b"a",
        1 => b"b",
        2 => b"\0",
        3 => b"a\0",
        4 => b"a\0b",
        5 => b"\xff\xfe\x00\x01",
        6 => &LONG_KEY,
        _ => b"",
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| env_flag("ZC_FUZZ_TRACE"))
}

macro_rules! trace {
    ($($t:tt)*) => {
        if tracing() {
            eprintln!($($t)*);
        }
    };
}

fn status_str(s: zc_status) -> &'static str {
    let p = zc_status_str(s);
    assert!(!p.is_null(), "zc_status_str({s}) is NULL");
    // SAFETY: non-NULL; the strings are static.
    unsafe { CStr::from_ptr(p) }.to_str().expect("status names are ASCII")
}

fn name(s: zc_status) -> String {
    format!("{s} ({})", status_str(s))
}

fn last_error() -> String {
    // SAFETY: never NULL; valid until the next failing call on this thread.
    unsafe { CStr::from_ptr(zc_last_error_message()) }.to_string_lossy().into_owned()
}

/// Compares a status with the model's, and checks a failure left a message.
#[track_caller]
fn check(call: &str, got: zc_status, want: zc_status) {
    trace!("  {call} -> {}", name(got));
    assert_ne!(got, ZC_ERR_INTERNAL, "{call}: ZC_ERR_INTERNAL: {}", last_error());
    assert_ne!(status_str(got), "unknown status", "{call}: answered {got}, not a published status");
    assert!(
        got == want,
        "MODEL MISMATCH: {call} answered {}, the model expects {} (last error: {})",
        name(got),
        name(want),
        last_error()
    );
    if got != ZC_OK {
        let msg = last_error();
        assert!(!msg.is_empty() && msg != "no error", "{call}: failed with {} but left no message", name(got));
    }
}

// ---------------------------------------------------------------------------------------------
// Content: each object's bytes are a function of its id (and part index).

fn word(seed: u64, i: u64) -> u64 {
    let x = (seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29) ^ i
}

/// The byte ranges of an object that are written and checked: all of an object up to 16 KiB;
/// of a larger one the first and last 4 KiB and one 64-byte window in every 4 KiB between (the
/// allocator's placement is checked exactly elsewhere, by the model's offsets).
fn windows(size: usize) -> impl Iterator<Item = (usize, usize)> {
    let small = size <= 16 << 10;
    let head = if small { size } else { 4096 };
    let tail_start = (size.saturating_sub(4096)) / 8 * 8;
    let middle = (1..if small { 0 } else { size / 4096 })
        .map(|k| k * 4096 + (k * 8 * 64) % 4096)
        .filter(move |&at| at >= head && at + 64 <= tail_start)
        .map(|at| (at, at + 64));
    std::iter::once((0, head)).chain(middle).chain((!small).then_some((tail_start, size)))
}

/// Writes the pattern of `seed` into the windows of `out`.
fn fill(seed: u64, out: &mut [u8]) {
    for (a, b) in windows(out.len()) {
        let mut words = out[a..b].chunks_exact_mut(8);
        let mut i = a as u64 / 8;
        for w in &mut words {
            let w: &mut [u8; 8] = w.try_into().expect("8 bytes");
            *w = word(seed, i).to_le_bytes();
            i += 1;
        }
        let rest = words.into_remainder();
        let n = rest.len();
        rest.copy_from_slice(&word(seed, i).to_le_bytes()[..n]);
    }
}

/// Checks the windows of `bytes` hold the pattern of `seed`.
#[track_caller]
fn verify(what: &str, seed: u64, bytes: &[u8]) {
    for (a, b) in windows(bytes.len()) {
        let mut words = bytes[a..b].chunks_exact(8);
        let mut i = a as u64 / 8;
        let mut bad = None;
        for w in &mut words {
            if u64::from_le_bytes(w.try_into().expect("8 bytes")) != word(seed, i) {
                bad = Some(i as usize * 8);
                break;
            }
            i += 1;
        }
        if bad.is_none() {
            let rest = words.remainder();
            if rest != &word(seed, i).to_le_bytes()[..rest.len()] {
                bad = Some(i as usize * 8);
            }
        }
        if let Some(at) = bad {
            panic!("CONTENT MISMATCH: {what}: bytes {at}.. of {} differ from what was written", bytes.len());
        }
    }
}

/// Checks the windows of `bytes` still hold the byte `b`.
fn untouched(bytes: &[u8], b: u8) -> bool {
    windows(bytes.len()).all(|(s, e)| bytes[s..e].iter().all(|&x| x == b))
}

fn part_seed(seed: u64, i: usize) -> u64 {
    seed ^ ((i as u64 + 1) << 56)
}

/// Parts of one object (docs/FORMAT.md): (offset, length) of each part.
type Parts = Vec<(usize, usize)>;

/// Multi-part layout (docs/FORMAT.md): total length and the parts, or None if it overflows.
fn layout(sizes: &[usize]) -> Option<(usize, Parts)> {
    let header = (32 + 16 * sizes.len()).next_multiple_of(64);
    let mut at = header;
    let mut parts = Vec::new();
    for &len in sizes {
        parts.push((at, len));
        at = at.checked_add(len)?.checked_next_multiple_of(64)?;
    }
    Some((at, parts))
}

// ---------------------------------------------------------------------------------------------
// The model.

struct Obj {
    inst: usize,
    key: usize,
    size: usize,
    /// Bytes reserved: the size rounded up to 64.
    alloc: usize,
    offset: usize,
    addr: usize,
    parts: Option<Parts>,
    /// Written in full (plain: every byte; parts: every part), so readers can check the bytes.
    filled: bool,
    sealed: bool,
    /// The key still names this object (not deleted, aborted or closed).
    in_index: bool,
    refs: usize,
}

struct Inst {
    /// NULL once closed.
    ptr: *mut zc_pool,
    capacity: usize,
    max_objects: usize,
    base: usize,
    keys: [Option<u64>; KEYS],
}

struct Handle {
    ptr: *mut zc_buffer,
    obj: u64,
    writer: bool,
}

/// What a create of a given size must answer once arguments and key are fine.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fit {
    Fits,
    /// The object limit is reached.
    Limit,
    /// No free range is large enough (fragmentation, or the pool is full).
    NoRange,
}

struct Model {
    insts: Vec<Inst>,
    slots: [usize; SLOTS],
    objs: BTreeMap<u64, Obj>,
    next_id: u64,
    handles: Vec<Handle>,
}

/// A key argument as passed to the library: valid (model key index) or not.
struct KeyArg {
    ptr: *const c_char,
    len: usize,
    model: Option<usize>,
}

fn key_arg(sel: u8) -> KeyArg {
    match sel {
        0..=247 => {
            let k = sel as usize % KEYS;
            let b = key_bytes(k);
            KeyArg { ptr: b.as_ptr().cast(), len: b.len(), model: (k != EMPTY_KEY).then_some(k) }
        }
        248..=250 => KeyArg { ptr: null(), len: 1 + sel as usize - 248, model: None },
        251 => KeyArg { ptr: null(), len: 0, model: None },
        _ => KeyArg { ptr: TOO_LONG_KEY.as_ptr().cast(), len: TOO_LONG_KEY.len(), model: None },
    }
}

impl Inst {
    fn open(size: usize, max_objects: usize, page_mode: u32, prefault: bool) -> Inst {
        let mut opts = MaybeUninit::<zc_pool_options>::uninit();
        // SAFETY: writable memory for one options struct; init fills every field.
        let mut opts = unsafe {
            zc_pool_options_init(opts.as_mut_ptr());
            opts.assume_init()
        };
        opts.size = size as u64;
        opts.max_objects = max_objects as u64;
        opts.page_mode = page_mode;
        opts.prefault = prefault;
        opts.rdma = ZC_RDMA_OFF;
        let mut pool = null_mut();
        // SAFETY: valid options and out-parameter.
        let st = unsafe { zc_pool_open(&opts, &mut pool) };
        check(&format!("zc_pool_open(size {size}, max_objects {max_objects}, pages {page_mode})"), st, ZC_OK);
        assert!(!pool.is_null());
        let (mut base, mut len) = (null_mut(), 0usize);
        // SAFETY: live pool, writable out-parameters.
        check("zc_pool_region", unsafe { zc_pool_region(pool, &mut base, &mut len) }, ZC_OK);
        let capacity = size.next_multiple_of(GRANULE);
        assert!(len >= capacity, "region of {len} bytes for a pool of {capacity}");
        assert!(!base.is_null());
        let max_objects = if max_objects == 0 { (capacity / 4096).clamp(1024, 1 << 24) } else { max_objects };
        Inst { ptr: pool, capacity, max_objects, base: base as usize, keys: [None; KEYS] }
    }
}

impl Model {
    fn new() -> Model {
        let insts =
            vec![Inst::open(1 << 20, 16, ZC_PAGES_SMALL, false), Inst::open(64 << 10, 4, ZC_PAGES_SMALL, false)];
        Model {
            insts,
            slots: [0, 1],
            objs: BTreeMap::new(),
            next_id: 1,
            handles: Vec::new(),
        }
    }

    /// The pool instance a selector names, or None for a NULL pool argument.
    fn pool_sel(&self, sel: u8) -> Option<usize> {
        (sel < 0xf0).then(|| self.slots[sel as usize % SLOTS])
    }

    fn pool_ptr(&self, inst: Option<usize>) -> *mut zc_pool {
        inst.map_or(null_mut(), |i| self.insts[i].ptr)
    }

    fn handle_sel(&self, sel: u8) -> Option<usize> {
        (sel < 0xf0 && !self.handles.is_empty()).then(|| sel as usize % self.handles.len())
    }

    /// Objects holding memory in an instance: (count, bytes).
    fn usage(&self, inst: usize) -> (usize, usize) {
        self.objs.values().filter(|o| o.inst == inst).fold((0, 0), |(n, b), o| (n + 1, b + o.alloc))
    }

    fn key_count(&self, inst: usize) -> usize {
        self.insts[inst].keys.iter().filter(|k| k.is_some()).count()
    }

    /// The longest free range of an instance, in 64-byte units, from the live objects' places.
    fn largest_gap(&self, inst: usize) -> usize {
        let mut blocks: Vec<(usize, usize)> =
            self.objs.values().filter(|o| o.inst == inst && o.alloc > 0).map(|o| (o.offset, o.alloc)).collect();
        blocks.sort_unstable();
        let mut at = 0;
        let mut best = 0;
        for (off, len) in blocks {
            best = best.max(off - at);
            at = off + len;
        }
        best = best.max(self.insts[inst].capacity - at);
        best / GRANULE
    }

    fn fit(&self, inst: usize, size: usize) -> Fit {
        let (count, _) = self.usage(inst);
        if count >= self.insts[inst].max_objects {
            return Fit::Limit;
        }
        if size == 0 {
            return Fit::Fits;
        }
        let units = size.div_ceil(GRANULE);
        let gap = self.largest_gap(inst);
        if units > gap {
            return Fit::NoRange;
        }
        Fit::Fits
    }

    /// The status a create of `size` bytes for `key` must answer (arguments already checked).
    fn create_status(&self, inst: usize, key: usize, size: usize) -> (zc_status, Fit) {
        if size > self.insts[inst].capacity {
            return (ZC_ERR_INVALID_ARGUMENT, Fit::Fits);
        }
        if self.insts[inst].keys[key].is_some() {
            return (ZC_ERR_ALREADY_EXISTS, Fit::Fits);
        }
        match self.fit(inst, size) {
            Fit::Fits => (ZC_OK, Fit::Fits),
            f => (ZC_ERR_OUT_OF_MEMORY, f),
        }
    }

    /// Checks the status of a create against `create_status`.
    #[track_caller]
    fn check_create(&mut self, call: &str, got: zc_status, want: (zc_status, Fit), size: usize, inst: usize) {
        assert!(
            !(got == ZC_ERR_OUT_OF_MEMORY && want.0 == ZC_OK),
            "DOC MISMATCH: {call}: ZC_ERR_OUT_OF_MEMORY for {size} bytes while a free range of {} bytes exists \
             ({} of {} bytes used)",
            self.largest_gap(inst) * GRANULE,
            self.usage(inst).1,
            self.insts[inst].capacity
        );
        check(call, got, want.0);
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records a new object after a successful create, checking where it was placed.
    fn created(
        &mut self,
        inst: usize,
        key: usize,
        size: usize,
        addr: usize,
        parts: Option<Parts>,
        sealed: bool,
    ) -> u64 {
        let i = &self.insts[inst];
        assert_eq!(addr % GRANULE, 0, "data pointer {addr:#x} is not 64-byte aligned");
        assert!(
            addr >= i.base && addr + size <= i.base + i.capacity,
            "object of {size} bytes at {addr:#x} is outside the pool"
        );
        let offset = addr - i.base;
        let alloc = size.next_multiple_of(GRANULE);
        for o in self.objs.values().filter(|o| o.inst == inst && o.alloc > 0) {
            assert!(
                alloc == 0 || offset + alloc <= o.offset || o.offset + o.alloc <= offset,
                "new object [{offset}, +{alloc}) overlaps a live one [{}, +{})",
                o.offset,
                o.alloc
            );
        }
        let id = self.new_id();
        self.objs.insert(
            id,
            Obj { inst, key, size, alloc, offset, addr, parts, filled: false, sealed, in_index: true, refs: 0 },
        );
        self.insts[inst].keys[key] = Some(id);
        id
    }

    /// Drops an object whose memory is free in the model (no key, no handle).
    fn maybe_free(&mut self, id: u64) {
        let o = &self.objs[&id];
        if o.refs == 0 && !o.in_index {
            self.objs.remove(&id);
        }
    }

    fn unindex(&mut self, id: u64) {
        let o = self.objs.get_mut(&id).expect("object");
        if o.in_index {
            o.in_index = false;
            let (inst, key) = (o.inst, o.key);
            self.insts[inst].keys[key] = None;
        }
        self.maybe_free(id);
    }

    /// Takes a new handle into the table; with a full table it is released at once.
    fn adopt(&mut self, ptr: *mut zc_buffer, obj: u64, writer: bool) {
        assert!(!ptr.is_null());
        self.objs.get_mut(&obj).expect("object").refs += 1;
        self.handles.push(Handle { ptr, obj, writer });
        self.check_handle(self.handles.len() - 1, true);
        if self.handles.len() > MAX_HANDLES {
            self.release(0);
        }
    }

    /// Releases handle `h` and removes it from the table.
    fn release(&mut self, h: usize) {
        let hd = self.handles.remove(h);
        trace!(
            "  zc_release(h{h}: key {}, object {}, {})",
            self.objs[&hd.obj].key,
            hd.obj,
            if hd.writer { "writer" } else { "reader" }
        );
        // SAFETY: a live handle, released once (it left the table).
        unsafe { zc_release(hd.ptr) };
        let o = self.objs.get_mut(&hd.obj).expect("object");
        o.refs -= 1;
        if hd.writer && !o.sealed {
            // Releasing an unsealed buffer aborts it.
            o.in_index = false;
            let (inst, key) = (o.inst, o.key);
            if self.insts[inst].keys[key] == Some(hd.obj) {
                self.insts[inst].keys[key] = None;
            }
        }
        self.maybe_free(hd.obj);
    }

    fn writable(&self, h: &Handle) -> bool {
        h.writer && !self.objs[&h.obj].sealed
    }

    /// Checks what a handle shows: size, address, writability, parts and (if written) bytes.
    fn check_handle(&self, h: usize, bytes: bool) {
        let hd = &self.handles[h];
        let o = &self.objs[&hd.obj];
        // SAFETY: live handle.
        let (size, cdata, data, nparts) = unsafe {
            (zc_buffer_size(hd.ptr), zc_buffer_const_data(hd.ptr), zc_buffer_data(hd.ptr), zc_buffer_part_count(hd.ptr))
        };
        let what = format!(
            "handle h{h} of key {} (object {}, {})",
            o.key,
            hd.obj,
            if hd.writer { "writer" } else { "reader" }
        );
        assert_eq!(size, o.size, "{what}: zc_buffer_size");
        assert_eq!(cdata as usize, o.addr, "{what}: zc_buffer_const_data is not the object's address");
        let writable = self.writable(hd);
        if !writable {
            assert!(data.is_null(), "{what}: zc_buffer_data is not NULL on a sealed or read handle");
        } else if o.parts.is_none() {
            assert_eq!(data as usize, o.addr, "{what}: zc_buffer_data of an unsealed creator's buffer");
        }
        assert_eq!(nparts, o.parts.as_ref().map_or(0, |p| p.len()), "{what}: zc_buffer_part_count");
        if !bytes {
            return;
        }
        // SAFETY: the object's bytes stay mapped while the handle lives.
        let all = unsafe { std::slice::from_raw_parts(cdata, size) };
        match &o.parts {
            None => {
                if o.filled {
                    verify(&what, hd.obj, all);
                }
            }
            Some(parts) => {
                let mut n = usize::MAX;
                // SAFETY: `size` readable bytes; writable out-parameter.
                check("zc_parts_count(object bytes)", unsafe { zc_parts_count(cdata, size, &mut n) }, ZC_OK);
                assert_eq!(n, parts.len(), "{what}: zc_parts_count");
                for (i, &(off, len)) in parts.iter().enumerate() {
                    let (mut at, mut l) = (usize::MAX, usize::MAX);
                    // SAFETY: as above.
                    check("zc_parts_locate", unsafe { zc_parts_locate(cdata, size, i, &mut at, &mut l) }, ZC_OK);
                    assert_eq!((at, l), (off, len), "{what}: zc_parts_locate({i})");
                    let (mut p, mut pl) = (null(), usize::MAX);
                    // SAFETY: live handle, writable out-parameters.
                    check("zc_buffer_part", unsafe { zc_buffer_part(hd.ptr, i, &mut p, &mut pl) }, ZC_OK);
                    assert_eq!((p as usize, pl), (o.addr + off, len), "{what}: zc_buffer_part({i})");
                    if o.filled {
                        verify(&format!("{what}, part {i}"), part_seed(hd.obj, i), &all[off..off + len]);
                    }
                }
            }
        }
    }

    /// Compares a pool's counters with the model.
    fn check_stats(&self, inst: usize) {
        let i = &self.insts[inst];
        let mut s = MaybeUninit::<zc_pool_stats>::uninit();
        // SAFETY: live pool, writable out-parameter.
        check("zc_pool_get_stats", unsafe { zc_pool_get_stats(i.ptr, s.as_mut_ptr()) }, ZC_OK);
        // SAFETY: written on success.
        let s = unsafe { s.assume_init() };
        let (count, used) = self.usage(inst);
        let keys = self.key_count(inst);
        let gap = self.largest_gap(inst) * GRANULE;
        let got = (s.capacity_bytes, s.used_bytes, s.object_count, s.key_count, s.max_objects);
        let want = (i.capacity as u64, used as u64, count as u64, keys as u64, i.max_objects as u64);
        assert_eq!(
            got, want,
            "STATS MISMATCH: (capacity, used_bytes, object_count, key_count, max_objects) of pool instance {inst}"
        );
        assert_eq!(s.largest_free_block, gap as u64, "largest_free_block is not the longest free range");
        assert!(s.page_size >= 4096 && s.page_size.is_power_of_two(), "page_size {}", s.page_size);
        assert_eq!((s.rdma_registrations, s.rdma_register_nanos), (0, 0), "RDMA is off");
        assert!(s.reserved.iter().all(|&r| r == 0), "reserved stats fields are not zero");
        // SAFETY: live pool.
        unsafe {
            assert_eq!(zc_pool_rdma_count(i.ptr), 0);
            assert!(zc_pool_rdma_pd(i.ptr, 0).is_null());
        }
    }

    /// Closes the pool instance of a slot (the model: keys gone, unheld objects freed) and opens
    /// a fresh one there.
    fn reopen(&mut self, slot: usize, size_sel: u8, max_sel: u8) {
        let old = self.slots[slot];
        trace!("  zc_pool_close(pool instance {old})");
        // SAFETY: live pool, closed once (its pointer is cleared below).
        unsafe { zc_pool_close(self.insts[old].ptr) };
        self.insts[old].ptr = null_mut();
        let ids: Vec<u64> = self.insts[old].keys.iter().flatten().copied().collect();
        for id in ids {
            self.unindex(id);
        }
        let size = [1 << 20, 64 << 10, 1000, 4096 + 64, 1 << 20, 256 << 10][size_sel as usize % 6];
        let max_objects = [16, 16, 4, 1, 2, 0][max_sel as usize % 6];
        let page_mode = if size_sel & 0x40 != 0 { ZC_PAGES_TRANSPARENT_HUGE } else { ZC_PAGES_SMALL };
        let prefault = size_sel >= 0xf0;
        self.insts.push(Inst::open(size, max_objects, page_mode, prefault));
        self.slots[slot] = self.insts.len() - 1;
        self.check_stats(self.slots[slot]);
    }

    fn size_of(&self, inst: usize, sel: u16) -> usize {
        let cap = self.insts[inst].capacity;
        if sel & 0x8000 != 0 {
            return (sel & 0x7fff) as usize * 33;
        }
        let table = [
            0,
            1,
            63,
            64,
            65,
            100,
            4095,
            4096,
            4097,
            65536,
            cap / 2,
            cap / 4 + 1,
            cap - 64,
            cap - 1,
            cap,
            cap + 1,
            1 << 20,
            (1 << 20) + 1,
            usize::MAX,
            usize::MAX / 2,
        ];
        table[sel as usize % table.len()]
    }

    fn timeout_for(&self, sel: u8, all_sealed: bool) -> i64 {
        match sel % 16 {
            // Waiting calls are made only where the model says they answer at once.
            12 | 13 if all_sealed => 5,
            14 if all_sealed => -1,
            15 => -2 - (sel as i64 / 16),
            _ => 0,
        }
    }

    fn key_state(&self, inst: usize, key: usize) -> Option<&Obj> {
        self.insts[inst].keys[key].map(|id| &self.objs[&id])
    }

    /// The status of a lookup of a key in timeout-0 semantics.
    fn get_status(&self, inst: usize, key: usize) -> zc_status {
        match self.key_state(inst, key) {
            None => ZC_ERR_NOT_FOUND,
            Some(o) if !o.sealed => ZC_ERR_NOT_SEALED,
            Some(_) => ZC_OK,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Operations.

    fn op_create(&mut self, pool: u8, key: u8, size: u16, out_null: bool) {
        let inst = self.pool_sel(pool);
        let k = key_arg(key);
        let size = inst.map_or(64, |i| self.size_of(i, size));
        let mut out = SENTINEL as *mut zc_buffer;
        let outp: *mut *mut zc_buffer = if out_null { null_mut() } else { &mut out };
        let call = format!(
            "zc_create_buffer(pool {inst:?}, key {:?}, size {size}{})",
            k.model,
            if out_null { ", out NULL" } else { "" }
        );
        // SAFETY: pool NULL or live; key valid for its length or NULL; out NULL or writable.
        let st = unsafe { zc_create_buffer(self.pool_ptr(inst), k.ptr, k.len, size, outp) };
        let (Some(inst), Some(key), false) = (inst, k.model, out_null) else {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        };
        let want = self.create_status(inst, key, size);
        self.check_create(&call, st, want, size, inst);
        if st != ZC_OK {
            assert_eq!(out as usize, SENTINEL, "{call}: failed but wrote *out");
            return;
        }
        // SAFETY: a live handle.
        let addr = unsafe { zc_buffer_const_data(out) } as usize;
        let id = self.created(inst, key, size, addr, None, false);
        self.adopt(out, id, true);
    }

    fn op_create_parts(&mut self, pool: u8, key: u8, sizes: [u16; 4], n: u8, sizes_null: bool) {
        let inst = self.pool_sel(pool);
        let k = key_arg(key);
        let n = n as usize % 5;
        let sizes: Vec<usize> = sizes[..n]
            .iter()
            .map(|&s| inst.map_or(1, |i| if s & 0x4000 != 0 { (s & 0x3fff) as usize } else { self.size_of(i, s) }))
            .collect();
        let mut out = SENTINEL as *mut zc_buffer;
        let sizes_ptr = if sizes_null { null() } else { sizes.as_ptr() };
        let call = format!(
            "zc_create_parts(pool {inst:?}, key {:?}, sizes {sizes:?}{})",
            k.model,
            if sizes_null { " as NULL" } else { "" }
        );
        // SAFETY: arrays hold `n` sizes or are NULL; the rest as for create.
        let st = unsafe { zc_create_parts(self.pool_ptr(inst), k.ptr, k.len, sizes_ptr, n, &mut out) };
        let (Some(inst), Some(key)) = (inst, k.model) else {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        };
        if sizes_null && n > 0 {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        }
        let Some((total, parts)) = layout(&sizes) else {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        };
        let want = self.create_status(inst, key, total);
        self.check_create(&call, st, want, total, inst);
        if st != ZC_OK {
            assert_eq!(out as usize, SENTINEL, "{call}: failed but wrote *out");
            return;
        }
        // SAFETY: a live handle.
        let addr = unsafe { zc_buffer_const_data(out) } as usize;
        let id = self.created(inst, key, total, addr, Some(parts), false);
        self.adopt(out, id, true);
    }

    fn op_create_batch(&mut self, pool: u8, items: [(u8, u16); 4], n: u8, null_arr: u8) {
        let inst = self.pool_sel(pool);
        let n = n as usize % 5;
        let keys: Vec<KeyArg> = items[..n].iter().map(|&(k, _)| key_arg(k)).collect();
        let sizes: Vec<usize> = items[..n].iter().map(|&(_, s)| inst.map_or(64, |i| self.size_of(i, s))).collect();
        let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.ptr).collect();
        let key_lens: Vec<usize> = keys.iter().map(|k| k.len).collect();
        let mut bufs = vec![SENTINEL as *mut zc_buffer; n];
        let mut statuses = vec![0xdead_u32; n];
        let which = null_arr % 8; // 0..=4: that array is NULL
        let call = format!(
            "zc_create_batch(pool {inst:?}, keys {:?}, sizes {sizes:?}, null array {})",
            keys.iter().map(|k| k.model).collect::<Vec<_>>(),
            if which < 5 { which as i32 } else { -1 }
        );
        // SAFETY: every array is NULL or holds `n` elements; keys as for create.
        let st = unsafe {
            zc_create_batch(
                self.pool_ptr(inst),
                if which == 0 { null() } else { key_ptrs.as_ptr() },
                if which == 1 { null() } else { key_lens.as_ptr() },
                if which == 2 { null() } else { sizes.as_ptr() },
                n,
                if which == 3 { null_mut() } else { bufs.as_mut_ptr() },
                if which == 4 { null_mut() } else { statuses.as_mut_ptr() },
            )
        };
        let Some(inst) = inst else {
            check(&call, st, ZC_ERR_INVALID_ARGUMENT);
            assert!(bufs.iter().all(|&b| b as usize == SENTINEL), "{call}: failed but wrote out_bufs");
            return;
        };
        if which < 5 && n > 0 {
            check(&call, st, ZC_ERR_INVALID_ARGUMENT);
            assert!(bufs.iter().all(|&b| b as usize == SENTINEL), "{call}: failed but wrote out_bufs");
            assert!(statuses.iter().all(|&s| s == 0xdead), "{call}: failed but wrote out_statuses");
            return;
        }
        // Every item is checked against the model as of the call, the earlier items' creates
        // included; the handles are adopted after: adopting one may release an older handle (a
        // full table), and releasing an unsealed writer aborts a key that a later item created
        // or found already there.
        let mut first = ZC_OK;
        let mut made = Vec::new();
        for i in 0..n {
            let item = format!("{call} item {i}");
            let want = match keys[i].model {
                None => (ZC_ERR_INVALID_ARGUMENT, Fit::Fits),
                Some(key) => self.create_status(inst, key, sizes[i]),
            };
            self.check_create(&item, statuses[i], want, sizes[i], inst);
            if statuses[i] == ZC_OK {
                // SAFETY: a live handle.
                let addr = unsafe { zc_buffer_const_data(bufs[i]) } as usize;
                let id = self.created(inst, keys[i].model.expect("valid key"), sizes[i], addr, None, false);
                made.push((bufs[i], id));
            } else {
                assert!(bufs[i].is_null(), "{item}: failed but its handle is not NULL");
                if first == ZC_OK {
                    first = statuses[i];
                }
            }
        }
        for (buf, id) in made {
            self.adopt(buf, id, true);
        }
        check(&call, st, first);
    }

    fn op_seal(&mut self, h: u8) {
        let Some(h) = self.handle_sel(h) else {
            // SAFETY: NULL is allowed.
            return check("zc_seal(NULL)", unsafe { zc_seal(null_mut()) }, ZC_ERR_INVALID_ARGUMENT);
        };
        let hd = &self.handles[h];
        let o = &self.objs[&hd.obj];
        let want = if !hd.writer || o.sealed {
            ZC_ERR_ALREADY_SEALED
        } else if self.insts[o.inst].ptr.is_null() {
            ZC_ERR_POOL_CLOSED
        } else {
            ZC_OK
        };
        // SAFETY: a live handle.
        let st = unsafe { zc_seal(hd.ptr) };
        check(&format!("zc_seal(h{h}: key {}, object {})", o.key, hd.obj), st, want);
        if st == ZC_OK {
            let id = hd.obj;
            self.objs.get_mut(&id).expect("object").sealed = true;
        }
        self.check_handle(h, false);
    }

    fn op_abort(&mut self, h: u8) {
        let Some(h) = self.handle_sel(h) else {
            // SAFETY: NULL is allowed.
            return check("zc_abort(NULL)", unsafe { zc_abort(null_mut()) }, ZC_ERR_INVALID_ARGUMENT);
        };
        let hd = &self.handles[h];
        let o = &self.objs[&hd.obj];
        let want = if self.writable(hd) { ZC_OK } else { ZC_ERR_ALREADY_SEALED };
        // SAFETY: a live handle; consumed only on success.
        let st = unsafe { zc_abort(hd.ptr) };
        check(&format!("zc_abort(h{h}: key {}, object {})", o.key, hd.obj), st, want);
        if st == ZC_OK {
            let hd = self.handles.remove(h);
            let o = self.objs.get_mut(&hd.obj).expect("object");
            o.refs -= 1;
            self.unindex(hd.obj);
        } else {
            self.check_handle(h, true);
        }
    }

    fn op_release(&mut self, h: u8) {
        match self.handle_sel(h) {
            // SAFETY: NULL is a no-op.
            None => unsafe { zc_release(null_mut()) },
            Some(h) => self.release(h),
        }
    }

    fn op_write(&mut self, h: u8) {
        let Some(h) = self.handle_sel(h) else {
            // SAFETY: NULL is allowed.
            assert!(unsafe { zc_buffer_data(null_mut()) }.is_null());
            return;
        };
        let hd = &self.handles[h];
        let id = hd.obj;
        let o = &self.objs[&id];
        let writable = self.writable(hd);
        match &o.parts {
            None => {
                // SAFETY: a live handle.
                let data = unsafe { zc_buffer_data(hd.ptr) };
                if !writable {
                    assert!(data.is_null(), "zc_buffer_data(h{h}) is not NULL on a sealed or read handle");
                    return;
                }
                assert_eq!(data as usize, o.addr);
                trace!("  write {} bytes through zc_buffer_data(h{h})", o.size);
                // SAFETY: an unsealed creator's buffer: `size` writable bytes.
                fill(id, unsafe { std::slice::from_raw_parts_mut(data, o.size) });
            }
            Some(parts) => {
                if !writable && parts.is_empty() {
                    return;
                }
                for (i, &(off, len)) in parts.iter().enumerate() {
                    let (mut p, mut l) = (SENTINEL as *mut u8, usize::MAX);
                    // SAFETY: a live handle, writable out-parameters.
                    let st = unsafe { zc_buffer_part_mut(hd.ptr, i, &mut p, &mut l) };
                    let call = format!("zc_buffer_part_mut(h{h}, {i})");
                    if !writable {
                        check(&call, st, ZC_ERR_ALREADY_SEALED);
                        assert_eq!(p as usize, SENTINEL, "{call}: failed but wrote *data");
                        return;
                    }
                    check(&call, st, ZC_OK);
                    assert_eq!((p as usize, l), (o.addr + off, len), "{call}");
                    // SAFETY: part `i` of an unsealed creator's buffer.
                    fill(part_seed(id, i), unsafe { std::slice::from_raw_parts_mut(p, l) });
                }
                trace!("  wrote {} parts of h{h}", parts.len());
            }
        }
        self.objs.get_mut(&id).expect("object").filled = true;
    }

    fn op_read(&mut self, h: u8) {
        match self.handle_sel(h) {
            // SAFETY: NULL is allowed for every accessor.
            None => unsafe {
                assert!(zc_buffer_const_data(null()).is_null());
                assert_eq!(zc_buffer_size(null()), 0);
                assert_eq!(zc_buffer_part_count(null()), 0);
            },
            Some(h) => {
                trace!("  read h{h}");
                self.check_handle(h, true);
            }
        }
    }

    fn op_get(&mut self, pool: u8, key: u8, timeout: u8, out_null: bool) {
        let inst = self.pool_sel(pool);
        let k = key_arg(key);
        let sealed = matches!((inst, k.model), (Some(i), Some(key)) if self.get_status(i, key) == ZC_OK);
        let timeout = self.timeout_for(timeout, sealed);
        let mut out = SENTINEL as *mut zc_buffer;
        let outp: *mut *mut zc_buffer = if out_null { null_mut() } else { &mut out };
        let call = format!(
            "zc_get(pool {inst:?}, key {:?}, timeout {timeout}{})",
            k.model,
            if out_null { ", out NULL" } else { "" }
        );
        // SAFETY: pool NULL or live; key valid or NULL; out NULL or writable.
        let st = unsafe { zc_get(self.pool_ptr(inst), k.ptr, k.len, timeout, outp) };
        let (Some(inst), Some(key), false, true) = (inst, k.model, out_null, timeout >= -1) else {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        };
        check(&call, st, self.get_status(inst, key));
        if st != ZC_OK {
            assert_eq!(out as usize, SENTINEL, "{call}: failed but wrote *out");
            return;
        }
        let id = self.insts[inst].keys[key].expect("sealed key");
        self.adopt(out, id, false);
    }

    fn op_get_batch(&mut self, pool: u8, keys: [u8; 4], n: u8, timeout: u8, null_arr: u8) {
        let inst = self.pool_sel(pool);
        let n = n as usize % 5;
        let keys: Vec<KeyArg> = keys[..n].iter().map(|&k| key_arg(k)).collect();
        let all_sealed =
            inst.is_some_and(|i| keys.iter().all(|k| k.model.is_some_and(|key| self.get_status(i, key) == ZC_OK)));
        let timeout = self.timeout_for(timeout, all_sealed);
        let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.ptr).collect();
        let key_lens: Vec<usize> = keys.iter().map(|k| k.len).collect();
        let mut bufs = vec![SENTINEL as *mut zc_buffer; n];
        let mut statuses = vec![0xdead_u32; n];
        let which = null_arr % 8; // 0..=3: that array is NULL
        let call = format!(
            "zc_get_batch(pool {inst:?}, keys {:?}, timeout {timeout}, null array {})",
            keys.iter().map(|k| k.model).collect::<Vec<_>>(),
            if which < 4 { which as i32 } else { -1 }
        );
        // SAFETY: every array is NULL or holds `n` elements.
        let st = unsafe {
            zc_get_batch(
                self.pool_ptr(inst),
                if which == 0 { null() } else { key_ptrs.as_ptr() },
                if which == 1 { null() } else { key_lens.as_ptr() },
                n,
                timeout,
                if which == 2 { null_mut() } else { bufs.as_mut_ptr() },
                if which == 3 { null_mut() } else { statuses.as_mut_ptr() },
            )
        };
        let untouched = |bufs: &[*mut zc_buffer], statuses: &[u32]| {
            assert!(bufs.iter().all(|&b| b as usize == SENTINEL), "{call}: failed but wrote out_bufs");
            assert!(statuses.iter().all(|&s| s == 0xdead), "{call}: failed but wrote out_statuses");
        };
        let Some(inst) = inst else {
            check(&call, st, ZC_ERR_INVALID_ARGUMENT);
            return untouched(&bufs, &statuses);
        };
        if (which < 4 && n > 0) || timeout < -1 {
            check(&call, st, ZC_ERR_INVALID_ARGUMENT);
            return untouched(&bufs, &statuses);
        }
        // Every item's answer and object as of the call: adopting a handle below may release an
        // older one (a full table), which can abort a key that a later item looked up.
        let wants: Vec<(zc_status, Option<u64>)> = keys
            .iter()
            .map(|k| match k.model {
                None => (ZC_ERR_INVALID_ARGUMENT, None),
                Some(key) => (self.get_status(inst, key), self.insts[inst].keys[key]),
            })
            .collect();
        let mut first = ZC_OK;
        for i in 0..n {
            let (want, id) = wants[i];
            check(&format!("{call} item {i}"), statuses[i], want);
            if statuses[i] == ZC_OK {
                self.adopt(bufs[i], id.expect("a sealed key names an object"), false);
            } else {
                assert!(bufs[i].is_null(), "{call} item {i}: failed but its handle is not NULL");
                if first == ZC_OK {
                    first = statuses[i];
                }
            }
        }
        check(&call, st, first);
    }

    fn op_get_into(&mut self, pool: u8, key: u8, timeout: u8, dst: u8) {
        let inst = self.pool_sel(pool);
        let k = key_arg(key);
        let found = match (inst, k.model) {
            (Some(i), Some(key)) => {
                self.key_state(i, key).filter(|o| o.sealed).map(|o| (o.size, o.filled, o.parts.is_some()))
            }
            _ => None,
        };
        let timeout = self.timeout_for(timeout, found.is_some());
        let size = found.map_or(64, |f| f.0);
        // (dst NULL, capacity, out_size NULL)
        let (dst_null, cap, out_null) = match dst % 9 {
            0 => (true, 0, false),
            1 => (true, 16, false),
            2 => (false, 0, false),
            3 => (false, size.saturating_sub(1), false),
            4 => (false, size, false),
            5 => (false, size + 7, false),
            6 => (false, 64 << 10, false),
            7 => (false, size, true),
            _ => (false, 1, false),
        };
        let mut buf = vec![0xa5u8; cap];
        let mut out_size = SENTINEL;
        let call = format!(
            "zc_get_into(pool {inst:?}, key {:?}, timeout {timeout}, dst {}, capacity {cap}{})",
            k.model,
            if dst_null { "NULL" } else { "buffer" },
            if out_null { ", out_size NULL" } else { "" }
        );
        // SAFETY: dst NULL or `cap` writable bytes; out_size NULL or writable.
        let st = unsafe {
            zc_get_into(
                self.pool_ptr(inst),
                k.ptr,
                k.len,
                timeout,
                if dst_null { null_mut() } else { buf.as_mut_ptr() },
                cap,
                if out_null { null_mut() } else { &mut out_size },
            )
        };
        let valid_args = inst.is_some() && k.model.is_some() && !(dst_null && cap > 0) && !out_null && timeout >= -1;
        let want = match (valid_args, inst, k.model) {
            (true, Some(i), Some(key)) => match self.get_status(i, key) {
                ZC_OK if cap < size => ZC_ERR_INVALID_ARGUMENT,
                s => s,
            },
            _ => ZC_ERR_INVALID_ARGUMENT,
        };
        check(&call, st, want);
        if st != ZC_OK {
            assert_eq!(out_size, SENTINEL, "{call}: failed but wrote *out_size");
            assert!(untouched(&buf, 0xa5), "{call}: failed but wrote into dst");
            return;
        }
        assert_eq!(out_size, size, "{call}: *out_size");
        assert!(untouched(&buf[size..], 0xa5), "{call}: wrote past the object's size");
        let (Some(i), Some(key)) = (inst, k.model) else { unreachable!() };
        let id = self.insts[i].keys[key].expect("sealed");
        let o = &self.objs[&id];
        if o.filled {
            match &o.parts {
                None => verify(&call, id, &buf[..size]),
                Some(parts) => {
                    let mut n = 0;
                    // SAFETY: `size` readable bytes.
                    check("zc_parts_count(copy)", unsafe { zc_parts_count(buf.as_ptr(), size, &mut n) }, ZC_OK);
                    assert_eq!(n, parts.len());
                    for (p, &(off, len)) in parts.iter().enumerate() {
                        verify(&format!("{call} part {p}"), part_seed(id, p), &buf[off..off + len]);
                    }
                }
            }
        }
    }

    fn op_put(&mut self, pool: u8, key: u8, size: u16, data_null: bool) {
        let inst = self.pool_sel(pool);
        let k = key_arg(key);
        let mut size = inst.map_or(64, |i| self.size_of(i, size));
        if size > 2 << 20 {
            // `data` must hold `size` bytes: past the pool's capacity, one byte past is enough.
            size = inst.map_or(64, |i| self.insts[i].capacity + 1);
        }
        let id = self.next_id + 1; // the id the object will get
        let mut data = vec![0u8; if data_null { 0 } else { size }];
        fill(id, &mut data);
        let ptr = if data_null { null() } else { data.as_ptr() };
        let call = format!(
            "zc_put(pool {inst:?}, key {:?}, size {size}{})",
            k.model,
            if data_null { ", data NULL" } else { "" }
        );
        // SAFETY: `data` holds `size` bytes, or is NULL.
        let st = unsafe { zc_put(self.pool_ptr(inst), k.ptr, k.len, ptr, size) };
        let (Some(inst), Some(key)) = (inst, k.model) else {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        };
        if data_null && size > 0 {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        }
        let want = self.create_status(inst, key, size);
        self.check_create(&call, st, want, size, inst);
        if st != ZC_OK {
            return;
        }
        // The object's place is learned (and its bytes checked) through a get, released at once.
        let mut r = null_mut();
        let (kb, kl) = (key_bytes(key).as_ptr().cast(), key_bytes(key).len());
        // SAFETY: live pool, valid key, writable out-parameter.
        check("zc_get(after zc_put)", unsafe { zc_get(self.insts[inst].ptr, kb, kl, 0, &mut r) }, ZC_OK);
        // SAFETY: a live handle.
        let (addr, got_size) = unsafe { (zc_buffer_const_data(r), zc_buffer_size(r)) };
        assert_eq!(got_size, size, "{call}: size of the stored object");
        // SAFETY: the object's bytes, mapped while `r` lives.
        verify(&call, id, unsafe { std::slice::from_raw_parts(addr, size) });
        // SAFETY: a live handle, released once.
        unsafe { zc_release(r) };
        let got = self.created(inst, key, size, addr as usize, None, true);
        assert_eq!(got, id);
        self.objs.get_mut(&id).expect("object").filled = true;
    }

    fn op_delete(&mut self, pool: u8, key: u8) {
        let inst = self.pool_sel(pool);
        let k = key_arg(key);
        let call = format!("zc_delete(pool {inst:?}, key {:?})", k.model);
        // SAFETY: pool NULL or live; key valid or NULL.
        let st = unsafe { zc_delete(self.pool_ptr(inst), k.ptr, k.len) };
        let (Some(inst), Some(key)) = (inst, k.model) else {
            return check(&call, st, ZC_ERR_INVALID_ARGUMENT);
        };
        check(&call, st, self.get_status(inst, key));
        if st == ZC_OK {
            let id = self.insts[inst].keys[key].expect("sealed");
            self.unindex(id);
        }
    }

    fn op_contains(&mut self, pool: u8, key: u8) {
        let inst = self.pool_sel(pool);
        let k = key_arg(key);
        // SAFETY: pool NULL or live; key valid or NULL.
        let got = unsafe { zc_contains(self.pool_ptr(inst), k.ptr, k.len) };
        let want = matches!((inst, k.model), (Some(i), Some(key)) if self.get_status(i, key) == ZC_OK);
        trace!("  zc_contains(pool {inst:?}, key {:?}) -> {got}", k.model);
        assert_eq!(got, want, "MODEL MISMATCH: zc_contains(pool {inst:?}, key {:?})", k.model);
    }

    fn op_stats(&mut self, pool: u8, nulls: u8) {
        let inst = self.pool_sel(pool);
        match (inst, nulls % 4) {
            (None, _) => {
                let mut s = MaybeUninit::<zc_pool_stats>::uninit();
                // SAFETY: NULL pool is allowed.
                check(
                    "zc_pool_get_stats(NULL)",
                    unsafe { zc_pool_get_stats(null(), s.as_mut_ptr()) },
                    ZC_ERR_INVALID_ARGUMENT,
                );
                // SAFETY: NULL arguments are allowed.
                let st = unsafe { zc_pool_region(null(), null_mut(), null_mut()) };
                check("zc_pool_region(NULL)", st, ZC_ERR_INVALID_ARGUMENT);
                // SAFETY: NULL is allowed.
                unsafe { assert_eq!(zc_pool_rdma_count(null()), 0) };
                for s in [12, 99, u32::MAX - nulls as u32] {
                    assert_eq!(status_str(s), "unknown status", "zc_status_str({s})");
                }
            }
            (Some(i), 0) => {
                // SAFETY: live pool; NULL out is allowed.
                let st = unsafe { zc_pool_get_stats(self.insts[i].ptr, null_mut()) };
                check("zc_pool_get_stats(out NULL)", st, ZC_ERR_INVALID_ARGUMENT);
            }
            (Some(i), _) => {
                trace!("  zc_pool_get_stats(pool instance {i})");
                self.check_stats(i);
            }
        }
    }

    /// `largest_free_block` is documented as "a size that zc_create_buffer can get right now".
    fn op_create_largest(&mut self, pool: u8, key: u8) {
        let Some(inst) = self.pool_sel(pool) else { return };
        let k = key_arg(key);
        let Some(key) = k.model else { return };
        let mut s = MaybeUninit::<zc_pool_stats>::uninit();
        // SAFETY: live pool, writable out-parameter.
        check("zc_pool_get_stats", unsafe { zc_pool_get_stats(self.insts[inst].ptr, s.as_mut_ptr()) }, ZC_OK);
        // SAFETY: written on success.
        let largest = unsafe { s.assume_init() }.largest_free_block as usize;
        let mut out = null_mut();
        let call = format!("zc_create_buffer(pool {inst}, key {key}, largest_free_block {largest})");
        // SAFETY: live pool, valid key, writable out.
        let st = unsafe { zc_create_buffer(self.insts[inst].ptr, k.ptr, k.len, largest, &mut out) };
        let want = self.create_status(inst, key, largest);
        if want.1 != Fit::Limit && want.0 != ZC_ERR_ALREADY_EXISTS {
            check(&format!("{call} (documented to fit)"), st, ZC_OK);
        }
        self.check_create(&call, st, want, largest, inst);
        if st == ZC_OK {
            // SAFETY: a live handle.
            let addr = unsafe { zc_buffer_const_data(out) } as usize;
            let id = self.created(inst, key, largest, addr, None, false);
            self.adopt(out, id, true);
        }
    }

    fn op_open_bad(&mut self, which: u8) {
        let mut opts = MaybeUninit::<zc_pool_options>::uninit();
        // SAFETY: writable memory for one options struct.
        let mut opts = unsafe {
            zc_pool_options_init(opts.as_mut_ptr());
            opts.assume_init()
        };
        opts.size = 4096;
        opts.page_mode = ZC_PAGES_SMALL;
        opts.prefault = false;
        opts.rdma = ZC_RDMA_OFF;
        let mut out_null = false;
        let what = match which % 7 {
            0 => {
                opts.reserved[0] = 1;
                "reserved[0] = 1"
            }
            1 => {
                opts.size = 0;
                "size 0"
            }
            2 => {
                opts.page_mode = 3 + which as u32;
                "unknown page_mode"
            }
            3 => {
                opts.rdma = 3 + which as u32;
                "unknown rdma mode"
            }
            4 => {
                opts.max_objects = u64::MAX - which as u64;
                "max_objects too large"
            }
            5 => {
                let last = opts.reserved.len() - 1;
                opts.reserved[last] = which as u64 + 1;
                "last reserved word set"
            }
            _ => {
                out_null = true;
                "out NULL"
            }
        };
        let mut pool = SENTINEL as *mut zc_pool;
        // SAFETY: valid options; out NULL or writable.
        let st = unsafe { zc_pool_open(&opts, if out_null { null_mut() } else { &mut pool }) };
        check(&format!("zc_pool_open({what})"), st, ZC_ERR_INVALID_ARGUMENT);
        assert_eq!(pool as usize, SENTINEL, "zc_pool_open({what}) failed but wrote *out");
        // SAFETY: NULL is a no-op.
        unsafe {
            zc_pool_options_init(null_mut());
            zc_pool_close(null_mut());
        }
    }

    fn op_buffer_misc(&mut self, h: u8, index: u8) {
        let idx = index as usize % 6;
        let nulls = index / 6 % 4; // 1: first out NULL, 2: second out NULL
        let Some(h) = self.handle_sel(h) else {
            let (mut p, mut l) = (null(), 0);
            let mut pm = null_mut();
            let mut d = MaybeUninit::<zc_rdma_desc>::uninit();
            // SAFETY: NULL handles are allowed.
            unsafe {
                check("zc_buffer_part(NULL)", zc_buffer_part(null(), 0, &mut p, &mut l), ZC_ERR_INVALID_ARGUMENT);
                check(
                    "zc_buffer_part_mut(NULL)",
                    zc_buffer_part_mut(null_mut(), 0, &mut pm, &mut l),
                    ZC_ERR_INVALID_ARGUMENT,
                );
                check(
                    "zc_buffer_rdma_desc(NULL)",
                    zc_buffer_rdma_desc(null(), 0, d.as_mut_ptr()),
                    ZC_ERR_INVALID_ARGUMENT,
                );
            }
            return;
        };
        let hd = &self.handles[h];
        let o = &self.objs[&hd.obj];
        let part = o.parts.as_ref().and_then(|p| p.get(idx).copied());
        let (mut p, mut l) = (SENTINEL as *const u8, SENTINEL);
        let (pp, lp): (*mut *const u8, *mut usize) =
            (if nulls == 1 { null_mut() } else { &mut p }, if nulls == 2 { null_mut() } else { &mut l });
        // SAFETY: a live handle; out-parameters NULL or writable.
        let st = unsafe { zc_buffer_part(hd.ptr, idx, pp, lp) };
        let want = if nulls == 1 || nulls == 2 || part.is_none() { ZC_ERR_INVALID_ARGUMENT } else { ZC_OK };
        check(&format!("zc_buffer_part(h{h}, {idx}, nulls {nulls})"), st, want);
        match part {
            Some((off, len)) if st == ZC_OK => assert_eq!((p as usize, l), (o.addr + off, len)),
            _ => assert_eq!((p as usize, l), (SENTINEL, SENTINEL), "zc_buffer_part failed but wrote"),
        }
        let (mut pm, mut l) = (SENTINEL as *mut u8, SENTINEL);
        let (pp, lp): (*mut *mut u8, *mut usize) =
            (if nulls == 1 { null_mut() } else { &mut pm }, if nulls == 2 { null_mut() } else { &mut l });
        // SAFETY: as above.
        let st = unsafe { zc_buffer_part_mut(hd.ptr, idx, pp, lp) };
        let want = if nulls == 1 || nulls == 2 || part.is_none() {
            ZC_ERR_INVALID_ARGUMENT
        } else if self.writable(hd) {
            ZC_OK
        } else {
            ZC_ERR_ALREADY_SEALED
        };
        check(&format!("zc_buffer_part_mut(h{h}, {idx}, nulls {nulls})"), st, want);
        match part {
            Some((off, len)) if st == ZC_OK => assert_eq!((pm as usize, l), (o.addr + off, len)),
            _ => assert_eq!((pm as usize, l), (SENTINEL, SENTINEL), "zc_buffer_part_mut failed but wrote"),
        }
        let mut d = MaybeUninit::<zc_rdma_desc>::uninit();
        // SAFETY: a live handle; out NULL or writable.
        let st =
            unsafe { zc_buffer_rdma_desc(hd.ptr, idx as u32, if nulls == 1 { null_mut() } else { d.as_mut_ptr() }) };
        let want = if nulls == 1 { ZC_ERR_INVALID_ARGUMENT } else { ZC_ERR_RDMA };
        check(&format!("zc_buffer_rdma_desc(h{h}, {idx}) in local mode"), st, want);
    }

    /// The raw-bytes reader of the parts format on damaged copies of a real header: it must
    /// refuse or answer ranges inside the bytes, never crash.
    fn op_parse(&mut self, h: u8, at: u8, bytes: [u8; 8], cut: u8) {
        let src: Vec<u8> = match self.handle_sel(h) {
            Some(h) => {
                let hd = &self.handles[h];
                let o = &self.objs[&hd.obj];
                // SAFETY: the object's bytes, mapped while the handle lives.
                unsafe { std::slice::from_raw_parts(zc_buffer_const_data(hd.ptr), o.size.min(4096)) }.to_vec()
            }
            None => bytes.repeat(8),
        };
        let mut b = src;
        if !b.is_empty() {
            let at = at as usize % b.len();
            let end = (at + 8).min(b.len());
            b[at..end].copy_from_slice(&bytes[..end - at]);
            let keep = b.len().saturating_sub((cut as usize % 4) * (cut as usize / 4 % 64));
            b.truncate(keep);
        }
        let mut n = SENTINEL;
        // SAFETY: `b` holds its length (NULL only when empty).
        let st = unsafe { zc_parts_count(if b.is_empty() { null() } else { b.as_ptr() }, b.len(), &mut n) };
        assert!(st == ZC_OK || st == ZC_ERR_INVALID_ARGUMENT, "zc_parts_count: {}", name(st));
        if st != ZC_OK {
            assert_eq!(n, SENTINEL);
            return;
        }
        for i in 0..n.min(8) + 1 {
            let (mut off, mut len) = (SENTINEL, SENTINEL);
            // SAFETY: as above.
            let st = unsafe { zc_parts_locate(b.as_ptr(), b.len(), i, &mut off, &mut len) };
            if i >= n {
                check("zc_parts_locate(past the last part)", st, ZC_ERR_INVALID_ARGUMENT);
            } else if st == ZC_OK {
                assert!(
                    off % 64 == 0 && off + len <= b.len(),
                    "zc_parts_locate({i}) = {off}+{len} outside {} bytes",
                    b.len()
                );
            } else {
                check("zc_parts_locate", st, ZC_ERR_INVALID_ARGUMENT);
            }
        }
    }

    /// Counters of every open pool against the model.
    fn check_all(&self) {
        for &i in &self.slots {
            self.check_stats(i);
        }
    }

    /// End of input: read and release every handle, check the counters, delete every key,
    /// check the pools are empty, close them.
    fn finish(mut self) {
        for h in 0..self.handles.len() {
            self.check_handle(h, true);
        }
        while !self.handles.is_empty() {
            self.release(self.handles.len() - 1);
        }
        self.check_all();
        for slot in 0..SLOTS {
            let inst = self.slots[slot];
            for key in 0..KEYS {
                if let Some(id) = self.insts[inst].keys[key] {
                    assert!(self.objs[&id].sealed, "an unsealed key outlived its writer's release");
                    let kb = key_bytes(key);
                    // SAFETY: live pool, valid key.
                    let st = unsafe { zc_delete(self.insts[inst].ptr, kb.as_ptr().cast(), kb.len()) };
                    check(&format!("zc_delete(pool {inst}, key {key}) at the end"), st, ZC_OK);
                    self.unindex(id);
                }
            }
            self.check_stats(inst);
            let mut s = MaybeUninit::<zc_pool_stats>::uninit();
            // SAFETY: live pool, writable out.
            check("zc_pool_get_stats", unsafe { zc_pool_get_stats(self.insts[inst].ptr, s.as_mut_ptr()) }, ZC_OK);
            // SAFETY: written on success.
            let s = unsafe { s.assume_init() };
            assert_eq!((s.used_bytes, s.object_count, s.key_count), (0, 0, 0), "the pool is not empty at the end");
            assert!(s.largest_free_block > 0 || self.insts[inst].capacity < 64);
            // SAFETY: live pool, closed once.
            unsafe { zc_pool_close(self.insts[inst].ptr) };
            self.insts[inst].ptr = null_mut();
        }
        assert!(
            self.objs.is_empty(),
            "objects outlived every key and handle: {:?}",
            self.objs.keys().collect::<Vec<_>>()
        );
    }
}

/// One operation. Decoded by `Op::decode`: one tag byte, then the fields in order (u8: one
/// byte, u16: two bytes little-endian, bool: the low bit of a byte; missing bytes read as 0).
#[derive(Debug)]
enum Op {
    Create { pool: u8, key: u8, size: u16, out_null: bool },
    CreateParts { pool: u8, key: u8, sizes: [u16; 4], n: u8, sizes_null: bool },
    CreateBatch { pool: u8, items: [(u8, u16); 4], n: u8, null_arr: u8 },
    Seal { h: u8 },
    Abort { h: u8 },
    Release { h: u8 },
    Write { h: u8 },
    Read { h: u8 },
    Get { pool: u8, key: u8, timeout: u8, out_null: bool },
    GetBatch { pool: u8, keys: [u8; 4], n: u8, timeout: u8, null_arr: u8 },
    GetInto { pool: u8, key: u8, timeout: u8, dst: u8 },
    Put { pool: u8, key: u8, size: u16, data_null: bool },
    Delete { pool: u8, key: u8 },
    Contains { pool: u8, key: u8 },
    Stats { pool: u8, nulls: u8 },
    CreateLargest { pool: u8, key: u8 },
    Reopen { slot: u8, size: u8, max_objects: u8 },
    OpenBad { which: u8 },
    BufferMisc { h: u8, index: u8 },
    Parse { h: u8, at: u8, bytes: [u8; 8], cut: u8 },
}

impl Op {
    /// The tag byte modulo 32 picks the operation; the common ones have several tags.
    fn decode(u: &mut Unstructured) -> arbitrary::Result<Op> {
        let tag: u8 = u.arbitrary()?;
        Ok(match tag % 32 {
            0..=2 => {
                Op::Create { pool: u.arbitrary()?, key: u.arbitrary()?, size: u.arbitrary()?, out_null: u.arbitrary()? }
            }
            3 => Op::CreateParts {
                pool: u.arbitrary()?,
                key: u.arbitrary()?,
                sizes: u.arbitrary()?,
                n: u.arbitrary()?,
                sizes_null: u.arbitrary()?,
            },
            4 => Op::CreateBatch {
                pool: u.arbitrary()?,
                items: u.arbitrary()?,
                n: u.arbitrary()?,
                null_arr: u.arbitrary()?,
            },
            5 | 6 => Op::Seal { h: u.arbitrary()? },
            7 => Op::Abort { h: u.arbitrary()? },
            8 | 9 => Op::Release { h: u.arbitrary()? },
            10 | 11 => Op::Write { h: u.arbitrary()? },
            12 => Op::Read { h: u.arbitrary()? },
            13 | 14 => {
                Op::Get { pool: u.arbitrary()?, key: u.arbitrary()?, timeout: u.arbitrary()?, out_null: u.arbitrary()? }
            }
            15 => Op::GetBatch {
                pool: u.arbitrary()?,
                keys: u.arbitrary()?,
                n: u.arbitrary()?,
                timeout: u.arbitrary()?,
                null_arr: u.arbitrary()?,
            },
            16 => {
                Op::GetInto { pool: u.arbitrary()?, key: u.arbitrary()?, timeout: u.arbitrary()?, dst: u.arbitrary()? }
            }
            17 | 18 => {
                Op::Put { pool: u.arbitrary()?, key: u.arbitrary()?, size: u.arbitrary()?, data_null: u.arbitrary()? }
            }
            19 | 20 => Op::Delete { pool: u.arbitrary()?, key: u.arbitrary()? },
            21 => Op::Contains { pool: u.arbitrary()?, key: u.arbitrary()? },
            22 => Op::Stats { pool: u.arbitrary()?, nulls: u.arbitrary()? },
            23 => Op::CreateLargest { pool: u.arbitrary()?, key: u.arbitrary()? },
            24 | 25 => Op::Reopen { slot: u.arbitrary()?, size: u.arbitrary()?, max_objects: u.arbitrary()? },
            26 => Op::OpenBad { which: u.arbitrary()? },
            27 | 28 => Op::BufferMisc { h: u.arbitrary()?, index: u.arbitrary()? },
            29 => Op::Parse { h: u.arbitrary()?, at: u.arbitrary()?, bytes: u.arbitrary()?, cut: u.arbitrary()? },
            _ => Op::Read { h: u.arbitrary()? },
        })
    }
}

fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut m = Model::new();
    let mut ops = 0;
    while ops < MAX_OPS && !u.is_empty() {
        let Ok(op) = Op::decode(&mut u) else { break };
        trace!("op {ops}: {op:?}");
        match op {
            Op::Create { pool, key, size, out_null } => m.op_create(pool, key, size, out_null),
            Op::CreateParts { pool, key, sizes, n, sizes_null } => m.op_create_parts(pool, key, sizes, n, sizes_null),
            Op::CreateBatch { pool, items, n, null_arr } => m.op_create_batch(pool, items, n, null_arr),
            Op::Seal { h } => m.op_seal(h),
            Op::Abort { h } => m.op_abort(h),
            Op::Release { h } => m.op_release(h),
            Op::Write { h } => m.op_write(h),
            Op::Read { h } => m.op_read(h),
            Op::Get { pool, key, timeout, out_null } => m.op_get(pool, key, timeout, out_null),
            Op::GetBatch { pool, keys, n, timeout, null_arr } => m.op_get_batch(pool, keys, n, timeout, null_arr),
            Op::GetInto { pool, key, timeout, dst } => m.op_get_into(pool, key, timeout, dst),
            Op::Put { pool, key, size, data_null } => m.op_put(pool, key, size, data_null),
            Op::Delete { pool, key } => m.op_delete(pool, key),
            Op::Contains { pool, key } => m.op_contains(pool, key),
            Op::Stats { pool, nulls } => m.op_stats(pool, nulls),
            Op::CreateLargest { pool, key } => m.op_create_largest(pool, key),
            Op::Reopen { slot, size, max_objects } => m.reopen(slot as usize % SLOTS, size, max_objects),
            Op::OpenBad { which } => m.op_open_bad(which),
            Op::BufferMisc { h, index } => m.op_buffer_misc(h, index),
            Op::Parse { h, at, bytes, cut } => m.op_parse(h, at, bytes, cut),
        }
        ops += 1;
        if ops % CHECK_EVERY == 0 {
            m.check_all();
        }
    }
    m.finish();
}

fuzz_target!(|data: &[u8]| run(data));
