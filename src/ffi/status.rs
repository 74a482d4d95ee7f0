//! Status codes, their names, and the thread's last error message.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::error::Error;

/// The result of every fallible call. 0 is success; the numbers never change once published.
/// Unknown values (from a newer library) are still accepted by `zc_status_str`.
pub type zc_status = u32;

/// Success.
pub const ZC_OK: zc_status = 0;
/// A NULL, an empty or too long key, a size or option out of range, a bad timeout.
pub const ZC_ERR_INVALID_ARGUMENT: zc_status = 1;
/// No such key (or, for `zc_get` with timeout 0, not created yet).
pub const ZC_ERR_NOT_FOUND: zc_status = 2;
/// `zc_create_buffer` of a key that is created or sealed.
pub const ZC_ERR_ALREADY_EXISTS: zc_status = 3;
/// The key is created but not sealed: `zc_get` with timeout 0, `zc_delete`.
pub const ZC_ERR_NOT_SEALED: zc_status = 4;
/// `zc_seal` or `zc_abort` of a buffer that is sealed or was obtained by `zc_get`.
pub const ZC_ERR_ALREADY_SEALED: zc_status = 5;
/// No free block large enough, or the pool's object limit is reached.
pub const ZC_ERR_OUT_OF_MEMORY: zc_status = 6;
/// `zc_get` waited its whole timeout and the key was not sealed.
pub const ZC_ERR_TIMEOUT: zc_status = 7;
/// The pool was closed (also answered to `zc_get` calls blocked while it closed), or it belongs to
/// the parent of this forked process, which has no mapping of it.
pub const ZC_ERR_POOL_CLOSED: zc_status = 8;
/// RDMA registration or descriptor failure.
pub const ZC_ERR_RDMA: zc_status = 9;
/// The operating system refused (mmap, madvise, mlock, hugetlbfs).
pub const ZC_ERR_SYSTEM: zc_status = 10;
/// A bug in zcopy; the message says where.
pub const ZC_ERR_INTERNAL: zc_status = 11;

/// The one mapping from core errors to status codes.
pub(crate) fn status_of(e: &Error) -> zc_status {
    match e {
        Error::InvalidArgument(_) => ZC_ERR_INVALID_ARGUMENT,
        Error::NotFound(_) => ZC_ERR_NOT_FOUND,
        Error::AlreadyExists(_) => ZC_ERR_ALREADY_EXISTS,
        Error::NotSealed(_) => ZC_ERR_NOT_SEALED,
        Error::AlreadySealed(_) => ZC_ERR_ALREADY_SEALED,
        Error::PoolFull { .. } | Error::ObjectLimit { .. } => ZC_ERR_OUT_OF_MEMORY,
        Error::Timeout { .. } => ZC_ERR_TIMEOUT,
        Error::PoolClosed | Error::ForkedChild { .. } => ZC_ERR_POOL_CLOSED,
        Error::Rdma(_) => ZC_ERR_RDMA,
        Error::System { .. } => ZC_ERR_SYSTEM,
        Error::Internal(_) => ZC_ERR_INTERNAL,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::from(c"no error"));
}

pub(crate) fn record_error(e: &Error) {
    record_message(&e.to_string());
}

pub(crate) fn record_message(msg: &str) {
    let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_else(|_| CString::from(c"(unprintable error)"));
    LAST_ERROR.with(|slot| *slot.borrow_mut() = msg);
}

/// A static, human-readable name for `status`. Never NULL: unknown codes give "unknown status".
///
/// Borrowed: the string is static and must not be freed.
#[no_mangle]
pub extern "C" fn zc_status_str(status: zc_status) -> *const c_char {
    let s: &'static std::ffi::CStr = match status {
        ZC_OK => c"ok",
        ZC_ERR_INVALID_ARGUMENT => c"invalid argument",
        ZC_ERR_NOT_FOUND => c"not found",
        ZC_ERR_ALREADY_EXISTS => c"already exists",
        ZC_ERR_NOT_SEALED => c"not sealed",
        ZC_ERR_ALREADY_SEALED => c"already sealed",
        ZC_ERR_OUT_OF_MEMORY => c"out of memory",
        ZC_ERR_TIMEOUT => c"timed out",
        ZC_ERR_POOL_CLOSED => c"pool closed",
        ZC_ERR_RDMA => c"rdma error",
        ZC_ERR_SYSTEM => c"system error",
        ZC_ERR_INTERNAL => c"internal error",
        _ => c"unknown status",
    };
    s.as_ptr()
}

/// The message of the last failure of a zcopy call on the calling thread ("no error" before any).
/// It names the failure's kind itself (`invalid argument: pool name "a/b": contains '/' ...`), so
/// print it alone, not after `zc_status_str`. Successful calls leave it unchanged. Never NULL.
///
/// Borrowed: valid until the next failing zcopy call on this thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn zc_last_error_message() -> *const c_char {
    super::guard_value(c"internal error while reading the last error".as_ptr(), || {
        LAST_ERROR.with(|slot| slot.borrow().as_ptr())
    })
}
