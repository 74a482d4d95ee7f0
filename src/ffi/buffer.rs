//! `zc_buffer`: one reference to one object.

use super::pool::zc_rdma_desc;
use super::status::zc_status;
use super::{arg, guard, guard_value, out_arg};
use crate::error::Error;
use crate::pool::Buffer;

/// One reference to one object in a pool, from `zc_create_buffer` (writable until sealed) or
/// `zc_get` (read-only). Released with `zc_release`; releasing an unsealed buffer aborts it.
///
/// Thread-safety: a handle may move between threads, and its const accessors may run on several
/// threads at once; `zc_seal`, `zc_abort` and `zc_release` must not race with other calls on the
/// same handle. It may outlive its pool (the memory stays mapped until it is released), but using
/// it after `zc_release` is undefined.
///
/// In a child forked after its pool was opened, the buffer's bytes are not mapped: calls answer
/// `ZC_ERR_POOL_CLOSED`, `zc_buffer_data` and `zc_buffer_const_data` NULL, `zc_buffer_size` and
/// `zc_buffer_part_count` 0, and `zc_release` frees only the handle.
///
/// Functions: `zc_buffer_data`, `zc_buffer_const_data`, `zc_buffer_size`, `zc_buffer_part_count`,
/// `zc_buffer_part`, `zc_buffer_part_mut`, `zc_buffer_rdma_desc`, `zc_seal`, `zc_abort`,
/// `zc_release`.
pub struct zc_buffer {
    buf: Buffer,
}

impl zc_buffer {
    pub(crate) fn into_raw(buf: Buffer) -> *mut zc_buffer {
        Box::into_raw(Box::new(zc_buffer { buf }))
    }
}

/// Makes the object immutable and visible to `zc_get`, and wakes every `zc_get` waiting for it.
/// `ZC_ERR_ALREADY_SEALED` if it is sealed, or if `buf` came from `zc_get`; `ZC_ERR_POOL_CLOSED`
/// if the pool was closed meanwhile (the buffer then can only be released).
///
/// Borrowed: `buf` stays valid, now as a read reference, and must still be freed with `zc_release`.
///
/// # Safety
/// `buf` is NULL or a live handle not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn zc_seal(buf: *mut zc_buffer) -> zc_status {
    guard("zc_seal", || {
        // SAFETY: NULL is refused; otherwise live and unshared per the contract.
        let buf = unsafe { buf.as_mut() }.ok_or_else(|| Error::InvalidArgument("buf is NULL".into()))?;
        buf.buf.seal()
    })
}

/// Discards an unsealed object: its key vanishes and its memory is freed (also after the pool was
/// closed). On a sealed buffer (or one from `zc_get`) it answers `ZC_ERR_ALREADY_SEALED` and
/// changes nothing.
///
/// Consumes `buf` when it answers `ZC_OK`; otherwise `buf` stays valid and must still be released.
///
/// # Safety
/// `buf` is NULL or a live handle not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn zc_abort(buf: *mut zc_buffer) -> zc_status {
    guard("zc_abort", || {
        // SAFETY: NULL is refused; otherwise live per the contract.
        unsafe { arg(buf, "buf") }?.buf.check_abortable()?;
        // SAFETY: `buf` came from `zc_buffer::into_raw` and the caller gives it up on success.
        drop(unsafe { Box::from_raw(buf) });
        Ok(())
    })
}

/// Drops this reference. The last reference to a deleted object frees its memory; releasing an
/// unsealed buffer aborts it. NULL is a no-op. In a child forked after the buffer's pool was
/// opened it frees the handle and leaves the parent's object alone.
///
/// Consumes `buf`; do not use or free it afterwards.
///
/// # Safety
/// `buf` is NULL or a live handle, released only once.
#[no_mangle]
pub unsafe extern "C" fn zc_release(buf: *mut zc_buffer) {
    guard_value((), || {
        if !buf.is_null() {
            // SAFETY: `buf` came from `zc_buffer::into_raw` and is released only once.
            drop(unsafe { Box::from_raw(buf) });
        }
    })
}

/// The writable address of the buffer's bytes: non-NULL only for a buffer from
/// `zc_create_buffer` or `zc_create_parts` that is not sealed yet. NULL for sealed buffers,
/// `zc_get` handles, NULL, and in a forked child (see `zc_buffer`). At least 64-byte aligned.
///
/// Borrowed: valid until `zc_seal(buf)` or `zc_release(buf)`.
///
/// # Safety
/// `buf` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn zc_buffer_data(buf: *mut zc_buffer) -> *mut u8 {
    guard_value(std::ptr::null_mut(), || {
        // SAFETY: NULL or live per the contract.
        match unsafe { buf.as_ref() } {
            Some(b) => b.buf.as_mut_ptr().unwrap_or(std::ptr::null_mut()),
            None => std::ptr::null_mut(),
        }
    })
}

/// The read-only address of the buffer's bytes, inside the pool; the same address for every
/// reference to the same object. NULL only for a NULL `buf`, and in a forked child (see
/// `zc_buffer`). At least 64-byte aligned.
///
/// Borrowed: valid until `zc_release(buf)`.
///
/// # Safety
/// `buf` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn zc_buffer_const_data(buf: *const zc_buffer) -> *const u8 {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or live per the contract.
        match unsafe { buf.as_ref() } {
            Some(b) if b.buf.check_mapped().is_ok() => b.buf.as_ptr(),
            _ => std::ptr::null(),
        }
    })
}

/// The object's size in bytes (0 for a NULL `buf`, and in a forked child).
///
/// # Safety
/// `buf` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn zc_buffer_size(buf: *const zc_buffer) -> usize {
    guard_value(0, || {
        // SAFETY: NULL or live per the contract.
        match unsafe { buf.as_ref() } {
            Some(b) if b.buf.check_mapped().is_ok() => b.buf.len(),
            _ => 0,
        }
    })
}

/// Writes where the buffer's bytes are for RDMA, with the keys of registration `index`, to
/// `*out`: a created (unsealed) buffer is a target for a peer's RDMA WRITE, a sealed one a source
/// for RDMA READ. `ZC_ERR_RDMA` in local mode (no registration); `ZC_ERR_INVALID_ARGUMENT` for an
/// index past `zc_pool_rdma_count`; `ZC_ERR_POOL_CLOSED` for a caller PD's registration after
/// the pool was closed.
///
/// # Safety
/// `buf` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_buffer_rdma_desc(buf: *const zc_buffer, index: u32, out: *mut zc_rdma_desc) -> zc_status {
    guard("zc_buffer_rdma_desc", || {
        // SAFETY: NULL or live per the contract.
        let buf = unsafe { arg(buf, "buf") }?;
        let out = out_arg(out, "out")?;
        let d = buf.buf.rdma_desc(index)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(zc_rdma_desc { addr: d.addr, length: d.length, lkey: d.lkey, rkey: d.rkey }) };
        Ok(())
    })
}

/// The number of parts of an object made by `zc_create_parts`; 0 for a plain object (and NULL,
/// and in a forked child).
///
/// # Safety
/// `buf` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn zc_buffer_part_count(buf: *const zc_buffer) -> usize {
    guard_value(0, || {
        // SAFETY: NULL or live per the contract.
        match unsafe { buf.as_ref() } {
            Some(b) if b.buf.check_mapped().is_ok() => b.buf.part_count(),
            _ => 0,
        }
    })
}

/// Writes the read-only address and length of part `index` to `*data` and `*len` (64-byte
/// aligned; the address is inside the pool). `ZC_ERR_INVALID_ARGUMENT` for a plain object or an
/// index past the last part.
///
/// Borrowed: valid until `zc_release(buf)`.
///
/// # Safety
/// `buf` is NULL or a live handle; `data` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_buffer_part(
    buf: *const zc_buffer,
    index: usize,
    data: *mut *const u8,
    len: *mut usize,
) -> zc_status {
    guard("zc_buffer_part", || {
        // SAFETY: NULL or live per the contract.
        let buf = unsafe { arg(buf, "buf") }?;
        let (data, len) = (out_arg(data, "data")?, out_arg(len, "len")?);
        let (offset, n) = buf.buf.part_range(index)?;
        // SAFETY: both non-NULL and writable per the contract.
        unsafe {
            data.write(buf.buf.as_ptr().wrapping_add(offset));
            len.write(n);
        }
        Ok(())
    })
}

/// Like `zc_buffer_part`, with a writable address: only for a buffer from `zc_create_parts` that
/// is not sealed yet (`ZC_ERR_ALREADY_SEALED` otherwise).
///
/// Borrowed: valid until `zc_seal(buf)` or `zc_release(buf)`.
///
/// # Safety
/// `buf` is NULL or a live handle; `data` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_buffer_part_mut(
    buf: *mut zc_buffer,
    index: usize,
    data: *mut *mut u8,
    len: *mut usize,
) -> zc_status {
    guard("zc_buffer_part_mut", || {
        // SAFETY: NULL or live per the contract.
        let buf = unsafe { arg(buf, "buf") }?;
        let (data, len) = (out_arg(data, "data")?, out_arg(len, "len")?);
        let (offset, n) = buf.buf.part_range(index)?;
        let Some(base) = buf.buf.as_mut_ptr() else {
            return Err(Error::AlreadySealed(crate::error::Key::new(buf.buf.key())));
        };
        // SAFETY: both non-NULL and writable per the contract.
        unsafe {
            data.write(base.wrapping_add(offset));
            len.write(n);
        }
        Ok(())
    })
}
