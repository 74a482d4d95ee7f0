//! The pool file's header and the checked layout of its areas.
//!
//! The file starts with a [`Header`]: magic, layout version, header size, the file's length, the
//! alignment of the data area, a generation, the creating process and user, the offset and length
//! of every area, and a `state` word. Metadata areas come first, each on its own page; the data
//! area (what RDMA registers and what object pointers point into) comes last, aligned to the huge
//! page size, so no metadata byte is ever inside a registered range.
//!
//! Writes: only the creator writes the header, once, while `state` is [`INITIALISING`] (a freshly
//! made file is all zeros); it then publishes the pool with one atomic store of [`READY`] to
//! `state`, after every area is initialised. Nobody writes the header after that. An attacher
//! loads `state` first (acquire), copies the header out ([`read`]) and validates the copy
//! ([`Header::validate`]); a file whose state is not `READY` is half-initialised and refused.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::shm::offset::{Area, Plain};

/// The first eight bytes of every pool file.
pub(crate) const MAGIC: [u8; 8] = *b"ZCOPYSHM";
/// Changes whenever the layout of any structure in the file changes.
pub(crate) const LAYOUT_VERSION: u32 = 7;
/// `state` of a file whose creator has not published it (yet, or ever: it may have died).
pub(crate) const INITIALISING: u32 = 0;
/// `state` of a published pool.
pub(crate) const READY: u32 = u32::from_le_bytes(*b"RDY1");
/// Every metadata area starts on a page of its own.
pub(crate) const METADATA_ALIGN: u64 = 4096;
/// The data area's alignment unless asked otherwise: the x86-64 huge page.
#[cfg(test)]
pub(crate) const DEFAULT_DATA_ALIGN: u64 = 2 << 20;
/// The largest data alignment accepted (a 1 GiB huge page).
pub(crate) const MAX_DATA_ALIGN: u64 = 1 << 30;

/// The areas of a pool file, in file order. The engine sizes the metadata areas; an area of
/// length 0 is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AreaKind {
    /// The process slots ([`crate::shm::slots`]).
    Slots,
    /// Per-process reference ledgers.
    Ledgers,
    /// Robust mutexes and futex words ([`crate::shm::lock`]).
    Locks,
    /// Object records.
    Records,
    /// The key index.
    Index,
    /// The allocator's state.
    Alloc,
    /// Long keys and part tables.
    Keys,
    /// Object memory: registered for RDMA, handed out as pointers. Never holds metadata.
    Data,
}

/// How many areas a header describes.
pub(crate) const AREAS: usize = 8;

impl AreaKind {
    pub(crate) const ALL: [AreaKind; AREAS] = [
        AreaKind::Slots,
        AreaKind::Ledgers,
        AreaKind::Locks,
        AreaKind::Records,
        AreaKind::Index,
        AreaKind::Alloc,
        AreaKind::Keys,
        AreaKind::Data,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            AreaKind::Slots => "slots area",
            AreaKind::Ledgers => "ledgers area",
            AreaKind::Locks => "locks area",
            AreaKind::Records => "records area",
            AreaKind::Index => "index area",
            AreaKind::Alloc => "allocator area",
            AreaKind::Keys => "keys area",
            AreaKind::Data => "data area",
        }
    }
}

/// Where one area lies in the file.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub offset: u64,
    pub len: u64,
}

const _: () = assert!(size_of::<Span>() == 16);

// SAFETY: two u64, `#[repr(C)]`, no padding.
unsafe impl Plain for Span {}

/// The pool file's first bytes. Read as a copy: the copy is what gets validated and used.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub layout_version: u32,
    /// An `AtomicU32` in the file (see the module's documentation); a plain copy here.
    pub state: u32,
    pub header_size: u32,
    pub creator_pid: u32,
    pub creator_uid: u32,
    /// Zero.
    pub reserved: u32,
    /// The length the creator gave the file; the file may not be shorter.
    pub file_len: u64,
    /// The data area's alignment, a power of two (the huge page size it was laid out for).
    pub data_align: u64,
    /// Differs between any two pools made under one name, so a process can tell a pool that was
    /// removed and made again from the one it attached. Never 0.
    pub generation: u64,
    /// Zero.
    pub reserved2: u64,
    /// Indexed by [`AreaKind`].
    pub areas: [Span; AREAS],
}

/// Where the state word lies, for its atomic loads and store.
pub(crate) const STATE_OFFSET: u64 = offset_of!(Header, state) as u64;
/// Bytes of the header.
pub(crate) const HEADER_SIZE: u64 = size_of::<Header>() as u64;

const _: () = {
    assert!(offset_of!(Header, magic) == 0);
    assert!(offset_of!(Header, layout_version) == 8);
    assert!(offset_of!(Header, state) == 12);
    assert!(offset_of!(Header, header_size) == 16);
    assert!(offset_of!(Header, creator_pid) == 20);
    assert!(offset_of!(Header, creator_uid) == 24);
    assert!(offset_of!(Header, reserved) == 28);
    assert!(offset_of!(Header, file_len) == 32);
    assert!(offset_of!(Header, data_align) == 40);
    assert!(offset_of!(Header, generation) == 48);
    assert!(offset_of!(Header, reserved2) == 56);
    assert!(offset_of!(Header, areas) == 64);
    assert!(size_of::<Header>() == 192);
    assert!(HEADER_SIZE <= METADATA_ALIGN);
};

// SAFETY: integers, arrays of integers and `Span`s, `#[repr(C)]`, no padding (size asserted).
unsafe impl Plain for Header {}

fn not_a_pool(why: String) -> Error {
    Error::InvalidArgument(format!("not a usable zcopy pool file: {why}"))
}

/// The checked positions of a pool file's areas. Made by [`Layout::plan`] (creator) or
/// [`Header::validate`] (attacher); either way [`Layout::check`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub file_len: u64,
    pub data_align: u64,
    pub generation: u64,
    areas: [Span; AREAS],
}

impl Layout {
    /// Lays out a file with the given metadata area lengths (indexed by [`AreaKind`], the `Data`
    /// entry ignored) and at least `data_len` bytes of data aligned to `data_align`.
    pub(crate) fn plan(metadata: [u64; AREAS], data_len: u64, data_align: u64, generation: u64) -> Result<Layout> {
        let overflow = || Error::InvalidArgument(format!("a pool of {data_len} data bytes overflows the file size"));
        let up = |v: u64, a: u64| v.checked_next_multiple_of(a).ok_or_else(overflow);
        if !data_align.is_power_of_two() || !(METADATA_ALIGN..=MAX_DATA_ALIGN).contains(&data_align) {
            return Err(Error::InvalidArgument(format!("data alignment {data_align} is not a page size")));
        }
        if data_len == 0 || metadata[AreaKind::Slots as usize] == 0 || generation == 0 {
            return Err(Error::InvalidArgument(
                "a pool needs data bytes, a slots area and a non-zero generation".into(),
            ));
        }
        let mut areas = [Span::default(); AREAS];
        let mut pos = METADATA_ALIGN;
        for kind in &AreaKind::ALL[..AREAS - 1] {
            let len = metadata[*kind as usize];
            if len > 0 {
                areas[*kind as usize] = Span { offset: pos, len };
                pos = up(pos.checked_add(len).ok_or_else(overflow)?, METADATA_ALIGN)?;
            }
        }
        let data = Span { offset: up(pos, data_align)?, len: up(data_len, data_align)? };
        areas[AreaKind::Data as usize] = data;
        let file_len = data.offset.checked_add(data.len).ok_or_else(overflow)?;
        let layout = Layout { file_len, data_align, generation, areas };
        layout.check()?;
        Ok(layout)
    }

    pub(crate) fn span(&self, kind: AreaKind) -> Span {
        self.areas[kind as usize]
    }

    /// The area `kind` of a mapping of this file.
    pub(crate) fn area<'a>(&self, file: &Area<'a>, kind: AreaKind) -> Result<Area<'a>> {
        let span = self.span(kind);
        file.sub(span.offset, span.len, kind.name())
    }

    /// The header describing this layout, unpublished.
    pub(crate) fn header(&self, creator_pid: u32, creator_uid: u32) -> Header {
        Header {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            state: INITIALISING,
            header_size: HEADER_SIZE as u32,
            creator_pid,
            creator_uid,
            reserved: 0,
            file_len: self.file_len,
            data_align: self.data_align,
            generation: self.generation,
            reserved2: 0,
            areas: self.areas,
        }
    }

    /// The invariants: every area inside the file and past the header, metadata areas on their
    /// own pages, the data area non-empty and aligned, and no two areas overlapping (so no
    /// metadata inside the data area). Overflow-safe for any field values.
    pub(crate) fn check(&self) -> Result<()> {
        let align = self.data_align;
        if !align.is_power_of_two() || !(METADATA_ALIGN..=MAX_DATA_ALIGN).contains(&align) {
            return Err(not_a_pool(format!("data alignment {align} is not a page size")));
        }
        if self.generation == 0 {
            return Err(not_a_pool("generation 0".into()));
        }
        let mut ends = [(0u64, 0u64, AreaKind::Slots); AREAS];
        for (i, kind) in AreaKind::ALL.into_iter().enumerate() {
            let Span { offset, len } = self.span(kind);
            let name = kind.name();
            let end = offset.checked_add(len).filter(|&end| end <= self.file_len).ok_or_else(|| {
                not_a_pool(format!("the {name} ({len} bytes at {offset}) ends past the file ({} bytes)", self.file_len))
            })?;
            let required = matches!(kind, AreaKind::Slots | AreaKind::Data);
            if len == 0 && (required || offset != 0) {
                return Err(not_a_pool(format!("the {name} is empty at offset {offset}")));
            }
            if len > 0 && offset < METADATA_ALIGN {
                return Err(not_a_pool(format!("the {name} (at {offset}) overlaps the header's page")));
            }
            let want = if kind == AreaKind::Data { align } else { METADATA_ALIGN };
            if offset % want != 0 || (kind == AreaKind::Data && len % align != 0) {
                return Err(not_a_pool(format!("the {name} ({len} bytes at {offset}) is not aligned to {want}")));
            }
            ends[i] = (offset, end, kind);
        }
        ends.sort_unstable_by_key(|&(offset, end, _)| (offset, end));
        for pair in ends.windows(2) {
            let ((_, end, first), (offset, next_end, second)) = (pair[0], pair[1]);
            if offset < end && next_end > offset {
                let why = if first == AreaKind::Data || second == AreaKind::Data {
                    " (metadata must never be reachable through the data area's registration)"
                } else {
                    ""
                };
                return Err(not_a_pool(format!("the {} overlaps the {}{why}", first.name(), second.name())));
            }
        }
        Ok(())
    }
}

impl Header {
    /// Validates this copy of a header against the real length of its file: magic, version,
    /// header size, published state, reserved fields, claimed length, then the layout's
    /// invariants. Any bytes answer a `Layout` or an error, never a panic.
    pub(crate) fn validate(&self, actual_len: u64) -> Result<Layout> {
        if self.magic != MAGIC {
            return Err(not_a_pool(format!("no zcopy magic (found {:02x?})", self.magic)));
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(not_a_pool(format!(
                "layout version {}, this library reads version {LAYOUT_VERSION}",
                self.layout_version
            )));
        }
        if u64::from(self.header_size) != HEADER_SIZE {
            return Err(not_a_pool(format!("header size {}, expected {HEADER_SIZE}", self.header_size)));
        }
        match self.state {
            READY => {}
            INITIALISING => {
                return Err(not_a_pool("not published: still being created, or its creator died creating it".into()))
            }
            other => return Err(not_a_pool(format!("unknown state word 0x{other:08x}"))),
        }
        if self.reserved != 0 || self.reserved2 != 0 {
            return Err(not_a_pool("reserved header fields are not zero".into()));
        }
        if actual_len < self.file_len {
            return Err(not_a_pool(format!("truncated: {actual_len} bytes, its header says {}", self.file_len)));
        }
        let layout = Layout {
            file_len: self.file_len,
            data_align: self.data_align,
            generation: self.generation,
            areas: self.areas,
        };
        layout.check()?;
        Ok(layout)
    }
}

/// A generation for a new pool: the clock in nanoseconds mixed with the process id and a counter,
/// so that pools made again under one name differ. Never 0.
pub(crate) fn fresh_generation() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    (now.rotate_left(16) ^ u64::from(std::process::id()) ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)).max(1)
}

/// A copy of the header at the start of `file`, taken after an acquire load of its state word, so
/// that everything the creator wrote before publishing is in the copy. A copy taken while the
/// creator is still writing may be torn, but then its state is not `READY` and it is refused.
pub(crate) fn read(file: &Area<'_>) -> Result<Header> {
    if (file.len() as u64) < HEADER_SIZE {
        return Err(not_a_pool(format!("truncated: {} bytes, shorter than a header", file.len())));
    }
    let state = file.get::<AtomicU32>(STATE_OFFSET)?.load(Ordering::Acquire);
    let mut header = file.read::<Header>(0)?;
    header.state = state;
    Ok(header)
}

/// Writes `header` at the start of `file`, unpublished (state [`INITIALISING`]).
///
/// # Safety
/// Only the creator calls this, on the file it just made, before [`publish`]: nobody else reads
/// the header while its state is not `READY`, and this process holds no reference into it.
pub(crate) unsafe fn write(file: &Area<'_>, header: &Header) -> Result<()> {
    // SAFETY: per this function's contract.
    unsafe { file.write(0, Header { state: INITIALISING, ..*header }) }
}

/// Publishes the pool: one release store of [`READY`], after every area is initialised.
pub(crate) fn publish(file: &Area<'_>) -> Result<()> {
    file.get::<AtomicU32>(STATE_OFFSET)?.store(READY, Ordering::Release);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: usize = 64 << 10;

    #[repr(C, align(4096))]
    struct Page([u8; FILE]);

    fn small_layout() -> Layout {
        let mut metadata = [0; AREAS];
        metadata[AreaKind::Slots as usize] = 64 * 64;
        metadata[AreaKind::Locks as usize] = 100;
        metadata[AreaKind::Records as usize] = 5000;
        Layout::plan(metadata, 20_000, METADATA_ALIGN * 2, 7).unwrap()
    }

    /// A buffer holding a published header for `small_layout`.
    fn published() -> (Box<Page>, Layout) {
        let layout = small_layout();
        assert!(layout.file_len as usize <= FILE);
        let mut page = Box::new(Page([0; FILE]));
        let area = Area::from_mut(&mut page.0, "pool file");
        // SAFETY: the buffer is this test's alone.
        unsafe { write(&area, &layout.header(1234, 1000)).unwrap() };
        publish(&area).unwrap();
        (page, layout)
    }

    fn validate_bytes(bytes: &mut [u8], actual_len: u64) -> Result<Layout> {
        read(&Area::from_mut(bytes, "pool file"))?.validate(actual_len)
    }

    /// The layout invariants, written again independently of `Layout::check`.
    fn assert_sound(layout: &Layout, actual_len: u64) {
        assert!(layout.file_len <= actual_len);
        let spans: Vec<(u64, u64, AreaKind)> =
            AreaKind::ALL.iter().map(|&k| (layout.span(k).offset, layout.span(k).len, k)).collect();
        for &(offset, len, kind) in &spans {
            assert!(offset as u128 + len as u128 <= layout.file_len as u128, "{kind:?} {layout:?}");
            if len > 0 {
                assert!(offset >= HEADER_SIZE, "{kind:?} {layout:?}");
            }
        }
        let data = layout.span(AreaKind::Data);
        assert!(data.len > 0 && data.offset % layout.data_align == 0);
        for &(a, alen, ak) in &spans {
            for &(b, blen, bk) in &spans {
                if ak != bk && alen > 0 && blen > 0 {
                    assert!(a + alen <= b || b + blen <= a, "{ak:?} overlaps {bk:?}: {layout:?}");
                }
            }
        }
    }

    #[test]
    fn plan_puts_metadata_on_pages_before_an_aligned_data_area_and_validates() {
        let layout = small_layout();
        assert_eq!(layout.span(AreaKind::Slots), Span { offset: 4096, len: 4096 });
        assert_eq!(layout.span(AreaKind::Ledgers), Span::default());
        assert_eq!(layout.span(AreaKind::Locks), Span { offset: 8192, len: 100 });
        assert_eq!(layout.span(AreaKind::Records), Span { offset: 12288, len: 5000 });
        assert_eq!(layout.span(AreaKind::Data), Span { offset: 24576, len: 24576 });
        assert_eq!(layout.file_len, 49152);
        let (mut page, layout) = published();
        assert_eq!(validate_bytes(&mut page.0, FILE as u64).unwrap(), layout);
        assert_sound(&layout, FILE as u64);
        let default = Layout::plan([4096; AREAS], 1, DEFAULT_DATA_ALIGN, 1).unwrap();
        assert_eq!(default.span(AreaKind::Data), Span { offset: 2 << 20, len: 2 << 20 });
    }

    #[test]
    fn plan_refuses_overflowing_sizes_and_bad_alignments() {
        for (data, align) in [(u64::MAX - 10, 4096), (1, 3), (1, 1024), (1, 2 << 30), (0, 4096)] {
            assert!(
                matches!(Layout::plan([0; AREAS], data, align, 1), Err(Error::InvalidArgument(_))),
                "{data} {align}"
            );
        }
        let mut huge = [0; AREAS];
        huge[0] = u64::MAX - 4096;
        assert!(Layout::plan(huge, 1, 4096, 1).is_err());
        assert!(Layout::plan([0; AREAS], 1, 4096, 1).unwrap_err().to_string().contains("a slots area"));
    }

    #[test]
    fn zeros_an_unpublished_header_other_versions_and_truncation_are_refused_clearly() {
        let mut zeros = vec![0u8; FILE];
        assert!(validate_bytes(&mut zeros, FILE as u64).unwrap_err().to_string().contains("no zcopy magic"));

        let (mut page, layout) = published();
        let area = Area::from_mut(&mut page.0, "pool file");
        area.get::<AtomicU32>(STATE_OFFSET).unwrap().store(INITIALISING, Ordering::Relaxed);
        let e = read(&area).unwrap().validate(FILE as u64).unwrap_err();
        assert!(e.to_string().contains("not published"), "{e}");

        let (mut page, _) = published();
        page.0[8..12].copy_from_slice(&(LAYOUT_VERSION + 1).to_ne_bytes());
        let e = validate_bytes(&mut page.0, FILE as u64).unwrap_err();
        let want = format!("layout version {}, this library reads version {LAYOUT_VERSION}", LAYOUT_VERSION + 1);
        assert!(e.to_string().contains(&want), "{e}");

        let (mut page, _) = published();
        let e = validate_bytes(&mut page.0, layout.file_len - 1).unwrap_err();
        assert!(e.to_string().contains(&format!("truncated: {} bytes", layout.file_len - 1)), "{e}");
        let e = validate_bytes(&mut page.0[..100], 100).unwrap_err();
        assert!(e.to_string().contains("shorter than a header"), "{e}");
    }

    #[test]
    fn every_single_bit_flip_is_refused_or_still_describes_a_sound_layout() {
        let (clean, layout) = published();
        // Fields no flip may survive: magic, version, state, header size, reserved.
        let strict = |byte: usize| byte < 20 || (28..32).contains(&byte) || (56..64).contains(&byte);
        for byte in 0..HEADER_SIZE as usize {
            for bit in 0..8 {
                let mut page = Box::new(Page(clean.0));
                page.0[byte] ^= 1 << bit;
                match validate_bytes(&mut page.0, FILE as u64) {
                    Ok(mutated) => {
                        assert!(!strict(byte), "flip of byte {byte} bit {bit} accepted");
                        assert_sound(&mutated, FILE as u64);
                    }
                    Err(e) => assert!(matches!(e, Error::InvalidArgument(_)), "{e}"),
                }
            }
        }
        // In this packed layout, moving the data area or a metadata area wedged between others by
        // one bit makes it misaligned, overlapping or past the end (the slots area could move into
        // the free page before the data area and still be sound).
        for kind in [AreaKind::Locks, AreaKind::Records, AreaKind::Data] {
            let at = 64 + 16 * kind as usize;
            for bit in 0..64 {
                let mut page = Box::new(Page(clean.0));
                page.0[at..at + 8].copy_from_slice(&(layout.span(kind).offset ^ (1 << bit)).to_ne_bytes());
                assert!(validate_bytes(&mut page.0, FILE as u64).is_err(), "{kind:?} offset bit {bit}");
            }
        }
    }

    #[test]
    fn thousands_of_random_mutations_answer_an_error_or_a_sound_layout() {
        let (clean, _) = published();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for round in 0..4000 {
            let mut page = Box::new(Page(clean.0));
            match round % 4 {
                // A few random bytes anywhere in the header.
                0 | 1 => {
                    for _ in 0..1 + next() % 6 {
                        page.0[(next() % HEADER_SIZE) as usize] = next() as u8;
                    }
                }
                // Random words in the fields past the fixed prefix, so the layout checks run.
                2 => {
                    for _ in 0..1 + next() % 4 {
                        let at = 32 + 8 * (next() % 20) as usize;
                        let value = if next() % 2 == 0 { next() } else { next() % (FILE as u64 * 2) };
                        page.0[at..at + 8].copy_from_slice(&value.to_ne_bytes());
                    }
                }
                // Entirely random bytes.
                _ => page.0[..HEADER_SIZE as usize].iter_mut().for_each(|b| *b = next() as u8),
            }
            let actual = if next() % 8 == 0 { next() % (FILE as u64 * 2) } else { FILE as u64 };
            if let Ok(layout) = validate_bytes(&mut page.0, actual) {
                assert_sound(&layout, actual);
                accepted += 1;
            }
        }
        assert!(accepted < 4000, "the mutations reached the checks");
    }
}
