//! The one place where an offset or id read from shared memory becomes a reference.
//!
//! An [`Area`] is a checked view of a range of a mapping (the whole pool file, or one of the areas
//! the header names). Every value read from shared memory is a claim, not a fact: [`Area::get`],
//! [`Area::slice`] and [`Area::read`] check that the claimed range lies inside the area and is
//! aligned for its type before making a reference or a copy, and answer an error otherwise. No
//! other code adds an offset to a base address.
//!
//! Writes: this module writes nothing by itself. References it hands out are to types whose every
//! change goes through atomics or `UnsafeCell` ([`Shared`]); plain fields are written only by
//! [`Area::write`], whose caller promises that nobody reads those bytes yet (the creator, before
//! it publishes the structure with one atomic store).

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::error::{Error, Result};

/// A type that may be referenced in shared memory by many processes at once.
///
/// # Safety
/// The type is `#[repr(C)]` (or a primitive), holds no pointer, is valid for every bit pattern
/// (a file full of garbage must not make a reference to it undefined behaviour), and is changed
/// only through atomics or `UnsafeCell`, so that `&T` may be held while other processes write it.
pub(crate) unsafe trait Shared: Sync {}

// SAFETY: atomics are valid for every bit pattern and change only atomically.
unsafe impl Shared for AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU64 {}

/// A type that may be copied out of (or, before publication, into) shared memory.
///
/// # Safety
/// The type is `#[repr(C)]` (or a primitive), `Copy`, holds no pointer and is valid for every bit
/// pattern, padding included (it has none).
pub(crate) unsafe trait Plain: Copy {}

// SAFETY: integers and arrays of them are valid for every bit pattern.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// A checked view of `len` bytes of shared memory. Copies are cheap and all refer to the same bytes.
#[derive(Clone, Copy)]
pub(crate) struct Area<'a> {
    base: *mut u8,
    len: usize,
    /// Named in messages ("slots area: ...").
    what: &'static str,
    _bytes: PhantomData<&'a UnsafeCell<[u8]>>,
}

// SAFETY: an `Area` only hands out references to `Shared` types (which are `Sync` and change only
// through atomics) and copies of `Plain` ones; the bytes stay mapped for `'a`.
unsafe impl Send for Area<'_> {}
// SAFETY: as above.
unsafe impl Sync for Area<'_> {}

impl std::fmt::Debug for Area<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Area").field("what", &self.what).field("base", &self.base).field("len", &self.len).finish()
    }
}

impl<'a> Area<'a> {
    /// A view of `len` bytes at `base`.
    ///
    /// # Safety
    /// The bytes are mapped, readable and writable for `'a`, and no Rust reference other than the
    /// ones this view hands out covers them (they are shared memory, written by other processes).
    pub(crate) unsafe fn from_raw(base: *mut u8, len: usize, what: &'static str) -> Area<'a> {
        Area { base, len, what, _bytes: PhantomData }
    }

    /// A view of memory this process owns, borrowed exclusively for `'a` (tests, scratch copies).
    #[cfg(test)]
    pub(crate) fn from_mut(bytes: &'a mut [u8], what: &'static str) -> Area<'a> {
        Area { base: bytes.as_mut_ptr(), len: bytes.len(), what, _bytes: PhantomData }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn what(&self) -> &'static str {
        self.what
    }

    /// The address of `len` bytes at `offset`, aligned to `align`: the only bounds check.
    #[inline]
    fn locate(&self, offset: u64, len: u64, align: usize) -> Result<*mut u8> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > self.len as u64) {
            return Err(self.outside(offset, len));
        }
        // In bounds, so `offset` fits a usize and the sum stays inside the mapping.
        let addr = self.base.wrapping_add(offset as usize);
        if (addr as usize) % align != 0 {
            return Err(self.misaligned(offset, align));
        }
        Ok(addr)
    }

    #[cold]
    fn outside(&self, offset: u64, len: u64) -> Error {
        Error::Internal(format!(
            "shared pool metadata is corrupt: {} bytes at offset {offset} lie outside the {} ({} bytes)",
            len, self.what, self.len
        ))
    }

    #[cold]
    fn misaligned(&self, offset: u64, align: usize) -> Error {
        Error::Internal(format!(
            "shared pool metadata is corrupt: offset {offset} in the {} is not aligned to {align}",
            self.what
        ))
    }

    /// The `T` at `offset`.
    pub(crate) fn get<T: Shared>(&self, offset: u64) -> Result<&'a T> {
        let addr = self.locate(offset, size_of::<T>() as u64, align_of::<T>())?;
        // SAFETY: `locate` checked that the range is inside this area, which is mapped for `'a`,
        // and aligned for `T`; `T: Shared` is valid for any bytes and changes only atomically.
        Ok(unsafe { &*addr.cast::<T>() })
    }

    /// `count` consecutive `T`s at `offset`; index the result with `.get(id)` to check an id.
    pub(crate) fn slice<T: Shared>(&self, offset: u64, count: u64) -> Result<&'a [T]> {
        let len = count.checked_mul(size_of::<T>() as u64).ok_or_else(|| {
            Error::Internal(format!("shared pool metadata is corrupt: {count} entries overflow the {}", self.what))
        })?;
        let addr = self.locate(offset, len, align_of::<T>())?;
        // SAFETY: as in `get`, for `count` elements; `len` fits the area, so `count` fits a usize.
        Ok(unsafe { std::slice::from_raw_parts(addr.cast::<T>(), count as usize) })
    }

    /// A copy of the `T` at `offset`. Volatile: the bytes may change under us, and the copy is what
    /// gets validated, so a writer cannot change a value between its check and its use.
    pub(crate) fn read<T: Plain>(&self, offset: u64) -> Result<T> {
        let addr = self.locate(offset, size_of::<T>() as u64, align_of::<T>())?;
        // SAFETY: in bounds and aligned (checked above); `T: Plain` is valid for any bytes.
        Ok(unsafe { addr.cast::<T>().read_volatile() })
    }

    /// Writes `value` at `offset`.
    ///
    /// # Safety
    /// Nobody reads or writes these bytes concurrently: the structure is not published yet (its
    /// publishing atomic store comes after), and no reference handed out by this area covers them.
    pub(crate) unsafe fn write<T: Plain>(&self, offset: u64, value: T) -> Result<()> {
        let addr = self.locate(offset, size_of::<T>() as u64, align_of::<T>())?;
        // SAFETY: in bounds and aligned (checked above); exclusive per the caller's promise.
        unsafe { addr.cast::<T>().write_volatile(value) };
        Ok(())
    }

    /// Whether the `want.len()` bytes at `offset` are `want`, read volatile (they may change
    /// under a reader that holds no lock) and without copying them out.
    pub(crate) fn bytes_equal(&self, offset: u64, want: &[u8]) -> Result<bool> {
        let addr = self.locate(offset, want.len() as u64, 1)?;
        for (i, &byte) in want.iter().enumerate() {
            // SAFETY: `locate` checked that all `want.len()` bytes lie inside this mapped area.
            if unsafe { addr.add(i).read_volatile() } != byte {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes `src` at `offset`.
    ///
    /// # Safety
    /// As for [`Area::write`]: nobody reads or writes these bytes concurrently (they are not
    /// published yet).
    pub(crate) unsafe fn write_bytes(&self, offset: u64, src: &[u8]) -> Result<()> {
        let addr = self.locate(offset, src.len() as u64, 1)?;
        // SAFETY: in bounds (checked above); exclusive per the caller's promise; `src` is this
        // process's memory, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr, src.len()) };
        Ok(())
    }

    /// The address of byte `offset` (at most the area's length), for data handed to callers.
    #[inline]
    pub(crate) fn ptr_at(&self, offset: u64, len: u64) -> Result<*mut u8> {
        self.locate(offset, len, 1)
    }

    /// The sub-area of `len` bytes at `offset`, for the areas a validated layout names.
    pub(crate) fn sub(&self, offset: u64, len: u64, what: &'static str) -> Result<Area<'a>> {
        let base = self.locate(offset, len, 1)?;
        Ok(Area { base, len: len as usize, what, _bytes: PhantomData })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[repr(C, align(64))]
    struct Buf([u8; 256]);

    fn buf() -> Box<Buf> {
        let mut b = Box::new(Buf([0; 256]));
        for (i, byte) in b.0.iter_mut().enumerate() {
            *byte = i as u8;
        }
        b
    }

    #[test]
    fn get_and_read_return_the_bytes_at_the_offset() {
        let mut b = buf();
        let area = Area::from_mut(&mut b.0, "test area");
        let word: &AtomicU32 = area.get(8).unwrap();
        assert_eq!(word.load(Ordering::Relaxed), u32::from_ne_bytes([8, 9, 10, 11]));
        assert_eq!(area.read::<u64>(248).unwrap(), u64::from_ne_bytes([248, 249, 250, 251, 252, 253, 254, 255]));
        assert_eq!(area.read::<[u8; 3]>(253).unwrap(), [253, 254, 255]);
        word.store(0xdead_beef, Ordering::Relaxed);
        assert_eq!(area.read::<u32>(8).unwrap(), 0xdead_beef);
    }

    #[test]
    fn offsets_past_the_end_or_overflowing_are_errors_naming_the_area() {
        let mut b = buf();
        let area = Area::from_mut(&mut b.0, "test area");
        for offset in [253, 256, 1 << 40, u64::MAX - 2, u64::MAX] {
            let e = area.get::<AtomicU32>(offset).unwrap_err();
            assert!(matches!(e, Error::Internal(_)), "{e}");
            assert!(e.to_string().contains("outside the test area (256 bytes)"), "{e}");
            assert!(area.read::<u64>(offset).is_err());
        }
        assert!(area.read::<[u8; 0]>(256).is_ok(), "an empty range at the end is inside");
    }

    #[test]
    fn misaligned_offsets_are_errors() {
        let mut b = buf();
        let area = Area::from_mut(&mut b.0, "test area");
        for offset in [1, 2, 3, 5, 6, 7] {
            let e = area.get::<AtomicU32>(offset).unwrap_err();
            assert!(e.to_string().contains("not aligned to 4"), "{e}");
        }
        assert!(area.get::<AtomicU64>(4).is_err());
        assert!(area.read::<u8>(3).is_ok());
    }

    #[test]
    fn slice_checks_count_overflow_and_bounds_and_ids_index_it_checked() {
        let mut b = buf();
        let area = Area::from_mut(&mut b.0, "test area");
        let table: &[AtomicU64] = area.slice(64, 24).unwrap();
        assert_eq!(table.len(), 24);
        assert!(table.get(24).is_none(), "an id past the table is refused by the slice");
        assert!(area.slice::<AtomicU64>(64, 25).is_err());
        assert!(area.slice::<AtomicU64>(0, u64::MAX / 4).is_err());
        assert!(area.slice::<AtomicU64>(8, u64::MAX).unwrap_err().to_string().contains("overflow"));
        assert_eq!(area.slice::<AtomicU64>(256, 0).unwrap().len(), 0);
    }

    #[test]
    fn sub_areas_are_checked_against_their_parent_and_checked_in_turn() {
        let mut b = buf();
        let area = Area::from_mut(&mut b.0, "file");
        let sub = area.sub(128, 64, "slots area").unwrap();
        assert_eq!((sub.len(), sub.what()), (64, "slots area"));
        assert_eq!(sub.read::<u8>(0).unwrap(), 128);
        let e = sub.read::<u64>(64).unwrap_err();
        assert!(e.to_string().contains("outside the slots area (64 bytes)"), "{e}");
        assert!(area.sub(200, 57, "x").is_err());
        assert!(area.sub(u64::MAX, 2, "x").is_err());
    }

    #[test]
    fn write_then_read_round_trips() {
        let mut b = buf();
        let area = Area::from_mut(&mut b.0, "test area");
        // SAFETY: the buffer is this test's alone.
        unsafe { area.write::<u64>(16, 0x0102_0304_0506_0708).unwrap() };
        assert_eq!(area.read::<u64>(16).unwrap(), 0x0102_0304_0506_0708);
        // SAFETY: as above; the write is refused before it touches memory.
        assert!(unsafe { area.write::<u64>(250, 1) }.is_err());
    }
}
