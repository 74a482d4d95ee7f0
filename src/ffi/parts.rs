//! Reading multi-part objects from raw bytes (docs/FORMAT.md): for a reader that has only the
//! bytes, such as the target of a remote RDMA READ.

use super::status::zc_status;
use super::{array_arg, guard, out_arg};
use crate::parts;

/// Checks the multi-part header at the start of `bytes` (`len` bytes) and writes the number of
/// parts to `*out_count`. `ZC_ERR_INVALID_ARGUMENT` with the reason if the bytes are not a whole,
/// valid multi-part object.
///
/// # Safety
/// `bytes` points to `len` readable bytes (NULL if 0); `out_count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_parts_count(bytes: *const u8, len: usize, out_count: *mut usize) -> zc_status {
    guard("zc_parts_count", || {
        // SAFETY: per the contract above.
        let bytes = unsafe { array_arg(bytes, len, "bytes") }?;
        let out_count = out_arg(out_count, "out_count")?;
        let n = parts::count(bytes)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out_count.write(n) };
        Ok(())
    })
}

/// Writes the offset (from `bytes`) and length of part `index` of the multi-part object in
/// `bytes` to `*offset` and `*part_len`, after checking it lies inside the `len` bytes.
///
/// # Safety
/// `bytes` points to `len` readable bytes (NULL if 0); `offset` and `part_len` are NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn zc_parts_locate(
    bytes: *const u8,
    len: usize,
    index: usize,
    offset: *mut usize,
    part_len: *mut usize,
) -> zc_status {
    guard("zc_parts_locate", || {
        // SAFETY: per the contract above.
        let bytes = unsafe { array_arg(bytes, len, "bytes") }?;
        let (offset, part_len) = (out_arg(offset, "offset")?, out_arg(part_len, "part_len")?);
        let (at, n) = parts::locate(bytes, index)?;
        // SAFETY: both non-NULL and writable per the contract.
        unsafe {
            offset.write(at);
            part_len.write(n);
        }
        Ok(())
    })
}
