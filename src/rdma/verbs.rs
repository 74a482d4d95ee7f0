//! libibverbs, loaded at run time with `dlopen("libibverbs.so.1")`.
//!
//! `libzcopy.so` has no link-time dependency on rdma-core: it loads on hosts without it (and then
//! runs in local mode) and uses whatever provider the host has. Only the struct fields zcopy
//! reads are declared; `c_tests/test_verbs_layout.c` checks each size and offset against the
//! system's `<infiniband/verbs.h>`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// `struct ibv_device`, never looked into.
#[repr(C)]
pub struct ibv_device {
    _opaque: [u8; 0],
}

/// `struct ibv_context`, never looked into.
#[repr(C)]
pub struct ibv_context {
    _opaque: [u8; 0],
}

/// The leading fields of `struct ibv_pd`.
#[repr(C)]
pub struct ibv_pd {
    pub context: *mut ibv_context,
    pub handle: u32,
}

/// `struct ibv_mr`.
#[repr(C)]
pub struct ibv_mr {
    pub context: *mut ibv_context,
    pub pd: *mut ibv_pd,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}

/// The leading fields of `struct ibv_device_attr`, padded to more than its full size so that
/// `ibv_query_device` can write all of it.
#[repr(C)]
pub struct ibv_device_attr {
    pub fw_ver: [c_char; 64],
    pub node_guid: u64,
    pub sys_image_guid: u64,
    pub max_mr_size: u64,
    _rest: [u64; DEVICE_ATTR_REST_WORDS],
}

/// Words after `max_mr_size`: the full struct is 232 bytes in rdma-core; 512 leaves room.
pub const DEVICE_ATTR_REST_WORDS: usize = (512 - 88) / 8;

pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_WRITE: c_int = 1 << 1;
pub const IBV_ACCESS_REMOTE_READ: c_int = 1 << 2;

type GetDeviceList = unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device;
type FreeDeviceList = unsafe extern "C" fn(*mut *mut ibv_device);
type GetDeviceName = unsafe extern "C" fn(*mut ibv_device) -> *const c_char;
type OpenDevice = unsafe extern "C" fn(*mut ibv_device) -> *mut ibv_context;
type CloseDevice = unsafe extern "C" fn(*mut ibv_context) -> c_int;
type QueryDevice = unsafe extern "C" fn(*mut ibv_context, *mut ibv_device_attr) -> c_int;
type AllocPd = unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_pd;
type DeallocPd = unsafe extern "C" fn(*mut ibv_pd) -> c_int;
type RegMr = unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr;
type DeregMr = unsafe extern "C" fn(*mut ibv_mr) -> c_int;

/// The verbs zcopy calls, resolved once per process.
pub struct Verbs {
    pub get_device_list: GetDeviceList,
    pub free_device_list: FreeDeviceList,
    pub get_device_name: GetDeviceName,
    pub open_device: OpenDevice,
    pub close_device: CloseDevice,
    pub query_device: QueryDevice,
    pub alloc_pd: AllocPd,
    pub dealloc_pd: DeallocPd,
    pub reg_mr: RegMr,
    pub dereg_mr: DeregMr,
}

/// The library to load: `ZCOPY_IBVERBS` overrides it (tests use it to simulate a host without
/// rdma-core); the default is the SONAME every rdma-core install provides.
fn library_name() -> std::ffi::CString {
    let name = std::env::var("ZCOPY_IBVERBS").unwrap_or_else(|_| "libibverbs.so.1".into());
    std::ffi::CString::new(name).unwrap_or_else(|_| c"libibverbs.so.1".to_owned())
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc, read at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated, valid until the next dl* call on this thread.
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    }
}

/// Looks up `name` in `lib` as a function of type `F`.
///
/// # Safety
/// `F` must be the function pointer type of the C function `name`.
unsafe fn symbol<F: Copy>(lib: *mut c_void, name: &CStr) -> Result<F, String> {
    // SAFETY: `lib` is a live handle from dlopen and `name` a C string.
    let ptr = unsafe { libc::dlsym(lib, name.as_ptr()) };
    if ptr.is_null() {
        return Err(format!("libibverbs has no {}: {}", name.to_string_lossy(), dlerror_text()));
    }
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: the caller names the right function type, and a data pointer from dlsym of a
    // function has the same size and representation as a function pointer on this platform.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
}

impl Verbs {
    fn load() -> Result<Verbs, String> {
        let name = library_name();
        // SAFETY: `name` is a C string. The handle is kept for the life of the process: providers
        // do not expect to be unloaded.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(format!("{} could not be loaded: {}", name.to_string_lossy(), dlerror_text()));
        }
        // SAFETY: each type alias above is the prototype of the same-named verbs function.
        unsafe {
            Ok(Verbs {
                get_device_list: symbol(lib, c"ibv_get_device_list")?,
                free_device_list: symbol(lib, c"ibv_free_device_list")?,
                get_device_name: symbol(lib, c"ibv_get_device_name")?,
                open_device: symbol(lib, c"ibv_open_device")?,
                close_device: symbol(lib, c"ibv_close_device")?,
                query_device: symbol(lib, c"ibv_query_device")?,
                alloc_pd: symbol(lib, c"ibv_alloc_pd")?,
                dealloc_pd: symbol(lib, c"ibv_dealloc_pd")?,
                reg_mr: symbol(lib, c"ibv_reg_mr")?,
                dereg_mr: symbol(lib, c"ibv_dereg_mr")?,
            })
        }
    }

    /// The process's verbs, or why there are none.
    pub fn get() -> Result<&'static Verbs, &'static str> {
        static VERBS: OnceLock<Result<Verbs, String>> = OnceLock::new();
        VERBS.get_or_init(Verbs::load).as_ref().map_err(String::as_str)
    }
}
