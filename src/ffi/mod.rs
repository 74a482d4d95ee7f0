//! The C ABI: a thin skin over [`crate::pool`]. Nothing but argument checks, the panic boundary,
//! status mapping and ownership transfer lives here; `include/zcopy.h` is generated from it.
//!
//! Every export runs inside [`guard`], so a Rust panic becomes `ZC_ERR_INTERNAL` and never
//! unwinds into C. Out-parameters are written only on success.

#![allow(non_camel_case_types)]

pub mod buffer;
pub mod parts;
pub mod pool;
pub mod status;

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, Result};
use crate::pool::MAX_KEY_LEN;
use status::{record_error, status_of, zc_status, ZC_ERR_INTERNAL, ZC_OK};

/// Runs `body` behind the panic boundary and turns its result into a status, recording the
/// message of a failure for `zc_last_error_message`.
pub(crate) fn guard(name: &str, body: impl FnOnce() -> Result<()>) -> zc_status {
    guard_status(name, || body().map(|()| ZC_OK))
}

/// Like [`guard`], for a body that picks its own status on success (the batch calls, which
/// record per-item failures themselves).
pub(crate) fn guard_status(name: &str, body: impl FnOnce() -> Result<zc_status>) -> zc_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            record_error(&e);
            status_of(&e)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            record_error(&Error::Internal(format!("{name} panicked: {what}")));
            ZC_ERR_INTERNAL
        }
    }
}

/// Runs an infallible accessor behind the panic boundary, answering `fallback` if it panics.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Borrows a non-NULL pointer argument.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` for `'a`.
pub(crate) unsafe fn arg<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    // SAFETY: the caller promises `ptr` is NULL or valid for `'a`; NULL is refused here.
    unsafe { ptr.as_ref() }.ok_or_else(|| invalid(format!("{name} is NULL")))
}

/// Checks an out-parameter is non-NULL before any work is done.
pub(crate) fn out_arg<T>(ptr: *mut T, name: &str) -> Result<*mut T> {
    if ptr.is_null() {
        return Err(invalid(format!("{name} is NULL")));
    }
    Ok(ptr)
}

/// Borrows a key given as pointer + length. The length is checked before the bytes are read.
///
/// # Safety
/// When `len` is within limits and `ptr` is non-NULL, `ptr` points to `len` readable bytes.
pub(crate) unsafe fn key_arg<'a>(ptr: *const c_char, len: usize) -> Result<&'a [u8]> {
    if len > MAX_KEY_LEN {
        return Err(invalid(format!("key of {len} bytes is longer than {MAX_KEY_LEN}")));
    }
    if len == 0 {
        return Err(invalid("key is empty"));
    }
    if ptr.is_null() {
        return Err(invalid("key is NULL"));
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes behind it.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// Borrows an array argument of `n` elements; NULL is allowed only when `n` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `n` readable `T`s for `'a`.
pub(crate) unsafe fn array_arg<'a, T>(ptr: *const T, n: usize, name: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises `n` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// Mutable version of [`array_arg`].
///
/// # Safety
/// `ptr` is NULL or points to `n` writable `T`s for `'a`, not aliased elsewhere meanwhile.
pub(crate) unsafe fn array_out<'a, T>(ptr: *mut T, n: usize, name: &str) -> Result<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises `n` writable, unaliased elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
}

#[cfg(test)]
mod tests {
    use super::status::{zc_last_error_message, ZC_ERR_INVALID_ARGUMENT};
    use super::*;

    fn last_error() -> String {
        // SAFETY: zc_last_error_message never returns NULL; the string lives until the next
        // failing call on this thread.
        unsafe { std::ffi::CStr::from_ptr(zc_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_inside_an_export_becomes_internal_error_with_its_message() {
        let status = guard("zc_test_export", || panic!("boom {}", 42));
        assert_eq!(status, ZC_ERR_INTERNAL);
        assert_eq!(last_error(), "internal error: zc_test_export panicked: boom 42");
        assert_eq!(guard_value(7, || panic!("in an accessor")), 7);
    }

    #[test]
    fn the_message_of_a_bad_pool_name_names_its_kind_once() {
        let mut pool = std::ptr::null_mut();
        // SAFETY: a C string, NULL options (allowed) and a valid out-pointer.
        let status = unsafe { super::pool::zc_pool_attach(c"a/b".as_ptr(), std::ptr::null(), &mut pool) };
        assert_eq!(status, ZC_ERR_INVALID_ARGUMENT);
        assert!(pool.is_null(), "out is written only on success");
        let message = last_error();
        assert!(message.starts_with("invalid argument: pool name \"a/b\": contains '/'"), "{message}");
        assert_eq!(message.matches("invalid argument").count(), 1, "{message}");
        let shown = crate::pool::Pool::attach("a/b", &Default::default()).err().map(|e| e.to_string());
        assert_eq!(shown.as_deref(), Some(message.as_str()), "the C message is the Rust error's");
    }

    #[test]
    fn errors_map_to_their_status_and_message() {
        assert_eq!(guard("zc_test_export", || Err(invalid("size is 0"))), ZC_ERR_INVALID_ARGUMENT);
        assert_eq!(last_error(), "invalid argument: size is 0");
        assert_eq!(guard("zc_test_export", || Ok(())), ZC_OK);
        assert_eq!(last_error(), "invalid argument: size is 0", "success leaves the last error alone");
    }
}
