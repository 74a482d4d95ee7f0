//! `zc_pool`: opening, closing, reading and deleting.

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;
use std::time::Instant;

use super::buffer::zc_buffer;
use super::status::{record_message, status_of, zc_status, ZC_OK};
use super::{arg, array_arg, array_out, guard, guard_status, guard_value, invalid, key_arg, out_arg};
use crate::error::Result;
use crate::pool::{Pool, PoolOptions, Wait, DEFAULT_POOL_SIZE};
use crate::rdma::RdmaMode;
use crate::region::PageMode;

/// Anonymous memory advised for transparent huge pages (the default).
pub const ZC_PAGES_TRANSPARENT_HUGE: u32 = 0;
/// Anonymous memory in 4 KiB pages.
pub const ZC_PAGES_SMALL: u32 = 1;
/// Explicit huge pages: `MAP_HUGETLB`, or a file on the hugetlbfs mount named by `hugetlbfs_dir`.
pub const ZC_PAGES_HUGETLB: u32 = 2;
/// Register with every RDMA device if there are any (the default); none is local mode.
pub const ZC_RDMA_AUTO: u32 = 0;
/// Do not register at open (`zc_pool_register_pd` still works).
pub const ZC_RDMA_OFF: u32 = 1;
/// Fail with `ZC_ERR_RDMA` unless the region is registered with at least one device.
pub const ZC_RDMA_REQUIRED: u32 = 2;
/// A full pool refuses creates with `ZC_ERR_OUT_OF_MEMORY` (the default).
pub const ZC_EVICT_NONE: u32 = 0;
/// A create that does not fit evicts sealed objects nobody holds, least recently used
/// (sealed or got) first, until it fits; referenced and unsealed objects are never evicted.
/// It answers `ZC_ERR_OUT_OF_MEMORY` only when nothing left is evictable, also while other
/// threads create and evict at the same time.
pub const ZC_EVICT_LRU: u32 = 1;
/// Longest key, in bytes.
pub const ZC_MAX_KEY_LEN: usize = 4096;
/// Alignment of every data pointer, in bytes.
pub const ZC_ALIGNMENT: usize = 64;
/// Pool size `zc_pool_options_init` sets: 256 MiB.
pub const ZC_DEFAULT_POOL_SIZE: u64 = 256 << 20;

const _: () = assert!(ZC_MAX_KEY_LEN == crate::pool::MAX_KEY_LEN && ZC_ALIGNMENT == crate::pool::ALIGNMENT);
const _: () = assert!(ZC_DEFAULT_POOL_SIZE == DEFAULT_POOL_SIZE as u64);

/// An open pool of objects in one mapped region.
///
/// Thread-safe: every function taking a `zc_pool *` may be called from any number of threads at
/// once, except `zc_pool_close`, which must not race with other calls on the same pool (calls
/// already blocked in `zc_get` are woken and answer `ZC_ERR_POOL_CLOSED`).
/// Buffers may outlive it: memory stays mapped until the last `zc_buffer` is released.
///
/// Not inherited by `fork()`: the pool's memory is advised `MADV_DONTFORK`, so a forked child has
/// no mapping of its parent's pool and must not use it. There every call on it answers
/// `ZC_ERR_POOL_CLOSED` (with a message naming the fork), `zc_contains` false,
/// `zc_pool_rdma_count` 0 and `zc_pool_rdma_pd` NULL, without touching the pool's memory or
/// waiting on its locks; `zc_pool_close` frees only the handle. Open a pool in the child instead.
///
/// Functions: `zc_pool_options_init`, `zc_pool_open`, `zc_pool_close`, `zc_pool_get_stats`,
/// `zc_create_buffer`, `zc_create_parts`, `zc_create_batch`, `zc_get`, `zc_get_batch`, `zc_put`, `zc_get_into`,
/// `zc_delete`, `zc_contains`, `zc_pool_region`, `zc_pool_rdma_count`, `zc_pool_rdma_pd`,
/// `zc_pool_register_pd`.
pub struct zc_pool {
    pool: Pool,
}

/// Options for `zc_pool_open`. Fill it with `zc_pool_options_init`, then change what you need.
///
/// `reserved` must stay zero: later versions give those bytes meaning (with zero meaning the old
/// behaviour), so programs built against this header keep working with newer libraries.
#[repr(C)]
pub struct zc_pool_options {
    /// Bytes of object memory (rounded up to 64; the mapping is rounded up to the page size).
    /// Default 256 MiB.
    pub size: u64,
    /// Most objects live at once; 0 (the default) derives it from `size`: one per 4 KiB, at least 1024.
    pub max_objects: u64,
    /// With `ZC_PAGES_HUGETLB`: a directory on a hugetlbfs mount, or NULL for `MAP_HUGETLB`.
    /// Borrowed for the duration of `zc_pool_open` only.
    pub hugetlbfs_dir: *const c_char,
    /// One of `ZC_PAGES_*`. Default `ZC_PAGES_TRANSPARENT_HUGE`.
    pub page_mode: u32,
    /// Touch every page at open, so object writes never fault. Default true.
    pub prefault: bool,
    /// `mlock` the pool (needs `RLIMIT_MEMLOCK` or `CAP_IPC_LOCK`). Default false.
    pub lock_memory: bool,
    /// One of `ZC_RDMA_*`. Default `ZC_RDMA_AUTO`.
    pub rdma: u32,
    /// Comma-separated names of the RDMA devices to register with ("mlx5_0,mlx5_1"); NULL (the
    /// default) is every device. Borrowed for the duration of `zc_pool_open` only.
    pub rdma_devices: *const c_char,
    /// One of `ZC_EVICT_*`. Default `ZC_EVICT_NONE`: a full pool refuses creates.
    pub eviction: u32,
    /// File mode of a shared pool's file: 0 (the default) is 0600, only this user may attach;
    /// 0660 lets the file's group attach too. Nothing else is accepted.
    pub shared_mode: u32,
    /// NULL (the default): a pool private to this process. A name (ASCII letters, digits, '_',
    /// '-', '.'; at most 128 bytes; no "..") creates a pool other processes attach with
    /// `zc_pool_attach`, backed by the file `/dev/shm/zcopy.<name>` (or `zcopy.<name>` in
    /// `hugetlbfs_dir` with `ZC_PAGES_HUGETLB`). Creating a name that exists fails with
    /// `ZC_ERR_SYSTEM` (`EEXIST`). Borrowed for the duration of the call only.
    pub name: *const c_char,
    /// Must be zero.
    pub reserved: [u64; 4],
}

/// Counters of a pool, filled by `zc_pool_get_stats`.
#[repr(C)]
#[derive(Default)]
pub struct zc_pool_stats {
    /// Bytes of object memory.
    pub capacity_bytes: u64,
    /// Bytes reserved by live objects (each rounded up to 64).
    pub used_bytes: u64,
    /// The longest free range, in bytes: `zc_create_buffer` of this size or less fits now (below
    /// `max_objects`).
    pub largest_free_block: u64,
    /// Objects holding memory: created, sealed, and deleted-but-still-referenced.
    pub object_count: u64,
    /// Keys present (created or sealed).
    pub key_count: u64,
    /// Most objects live at once.
    pub max_objects: u64,
    /// Page size the pool was laid out for.
    pub page_size: u64,
    /// Nanoseconds `zc_pool_open` spent mapping, prefaulting and locking the memory.
    pub open_nanos: u64,
    /// RDMA registrations of the pool (`zc_pool_rdma_count`).
    pub rdma_registrations: u64,
    /// Nanoseconds `zc_pool_open` spent registering the pool with RDMA devices.
    pub rdma_register_nanos: u64,
    /// Objects evicted to make room (`ZC_EVICT_LRU` only).
    pub evictions: u64,
    /// Creates refused with `ZC_ERR_OUT_OF_MEMORY`.
    pub creates_refused: u64,
    /// Processes attached to a shared pool now, this one included; 0 for a private pool.
    pub processes_attached: u64,
    /// Dead processes whose references, creates and slots were reclaimed, over the shared pool's
    /// life; 0 for a private pool.
    pub processes_reclaimed: u64,
    /// Times a process found a shared pool's lock abandoned by a process that died holding it
    /// and rebuilt the pool's state from its records; 0 for a private pool.
    pub lock_repairs: u64,
    /// Zero in this version; later versions fill them.
    pub reserved: [u64; 1],
}

/// Where a buffer's bytes are for RDMA: post `addr`/`length` with `lkey` locally, or hand
/// `addr`/`rkey` to a peer. Valid while the buffer is held and the pool's registration lives.
#[repr(C)]
pub struct zc_rdma_desc {
    /// Virtual address of the first byte (the registration's IOVA is the address).
    pub addr: u64,
    /// Bytes.
    pub length: u64,
    /// Local key, for this process's work requests.
    pub lkey: u32,
    /// Remote key, for a peer's RDMA READ (sealed) or WRITE (created).
    pub rkey: u32,
}

fn defaults() -> zc_pool_options {
    zc_pool_options {
        size: ZC_DEFAULT_POOL_SIZE,
        max_objects: 0,
        hugetlbfs_dir: std::ptr::null(),
        page_mode: ZC_PAGES_TRANSPARENT_HUGE,
        prefault: true,
        lock_memory: false,
        rdma: ZC_RDMA_AUTO,
        rdma_devices: std::ptr::null(),
        eviction: ZC_EVICT_NONE,
        shared_mode: 0,
        name: std::ptr::null(),
        reserved: [0; 4],
    }
}

/// # Safety
/// `ptr` is NULL or a NUL-terminated string.
unsafe fn c_str_arg<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map(Some).map_err(|_| invalid(format!("{name} is not valid UTF-8")))
}

/// # Safety
/// `hugetlbfs_dir` and `rdma_devices` are NULL or NUL-terminated strings.
unsafe fn options_from_c(o: &zc_pool_options) -> Result<PoolOptions> {
    if let Some(i) = o.reserved.iter().position(|&r| r != 0) {
        return Err(invalid(format!(
            "options.reserved[{i}] is not zero: call zc_pool_options_init, or use the header matching this library"
        )));
    }
    let size = usize::try_from(o.size).map_err(|_| invalid(format!("size {} does not fit in memory", o.size)))?;
    if size == 0 {
        return Err(invalid("pool size is 0"));
    }
    let max_objects = usize::try_from(o.max_objects)
        .ok()
        .filter(|&n| n <= u32::MAX as usize / 2 - 2)
        .ok_or_else(|| invalid(format!("max_objects {} is above {}", o.max_objects, u32::MAX / 2 - 2)))?;
    let pages = match o.page_mode {
        ZC_PAGES_TRANSPARENT_HUGE => PageMode::TransparentHuge,
        ZC_PAGES_SMALL => PageMode::Small,
        ZC_PAGES_HUGETLB => {
            // SAFETY: NULL or a C string per the contract.
            let dir = unsafe { c_str_arg(o.hugetlbfs_dir, "hugetlbfs_dir") }?;
            PageMode::HugeTlb { dir: dir.map(PathBuf::from) }
        }
        other => return Err(invalid(format!("page_mode {other} is not one of ZC_PAGES_*"))),
    };
    let rdma = match o.rdma {
        ZC_RDMA_AUTO => RdmaMode::Auto,
        ZC_RDMA_OFF => RdmaMode::Off,
        ZC_RDMA_REQUIRED => RdmaMode::Required,
        other => return Err(invalid(format!("rdma {other} is not one of ZC_RDMA_*"))),
    };
    // SAFETY: NULL or a C string per the contract.
    let rdma_devices = match unsafe { c_str_arg(o.rdma_devices, "rdma_devices") }? {
        None => None,
        Some(list) => {
            let names: Vec<String> =
                list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
            if names.is_empty() {
                return Err(invalid("rdma_devices names no device: use NULL for all devices"));
            }
            Some(names)
        }
    };
    let evict_lru = match o.eviction {
        ZC_EVICT_NONE => false,
        ZC_EVICT_LRU => true,
        other => return Err(invalid(format!("eviction {other} is not one of ZC_EVICT_*"))),
    };
    let group_shared = match o.shared_mode {
        0 | 0o600 => false,
        0o660 => true,
        other => return Err(invalid(format!("shared_mode {other:o} (octal) is not 0, 0600 or 0660"))),
    };
    // SAFETY: NULL or a C string per the contract.
    let name = unsafe { c_str_arg(o.name, "name") }?.map(String::from);
    // Where a shared pool's file lives: also read by `zc_pool_attach`, whose options carry no name.
    let shared_dir = match (&name, &pages) {
        (_, PageMode::HugeTlb { dir: Some(dir) }) => Some(dir.clone()),
        (Some(_), PageMode::HugeTlb { dir: None }) => {
            return Err(invalid("a shared pool with ZC_PAGES_HUGETLB needs hugetlbfs_dir, where its file lives"))
        }
        _ => None,
    };
    Ok(PoolOptions {
        size,
        pages,
        prefault: o.prefault,
        lock_memory: o.lock_memory,
        max_objects,
        rdma,
        rdma_devices,
        evict_lru,
        name,
        shared_dir,
        group_shared,
    })
}

/// Fills every field of `*opts` with its default. NULL is a no-op.
///
/// # Safety
/// `opts` is NULL or points to writable memory for one `zc_pool_options`.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_options_init(opts: *mut zc_pool_options) {
    guard_value((), || {
        if !opts.is_null() {
            // SAFETY: non-NULL and writable per the contract above.
            unsafe { opts.write(defaults()) };
        }
    })
}

/// Maps a pool as `opts` says (NULL: all defaults) and writes it to `*out`. The pool belongs to
/// this process: a child it forks cannot use it (see `zc_pool`).
///
/// The caller owns `*out` and must free it with `zc_pool_close`.
///
/// # Safety
/// `opts` is NULL or a valid `zc_pool_options`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_open(opts: *const zc_pool_options, out: *mut *mut zc_pool) -> zc_status {
    guard("zc_pool_open", || {
        let out = out_arg(out, "out")?;
        let defaults = defaults();
        // SAFETY: `opts` is NULL or valid per the contract.
        let opts = unsafe { opts.as_ref() }.unwrap_or(&defaults);
        // SAFETY: `hugetlbfs_dir` is NULL or a C string per the contract.
        let opts = unsafe { options_from_c(opts) }?;
        let pool = Pool::open(&opts)?;
        // SAFETY: `out` is non-NULL and writable.
        unsafe { out.write(Box::into_raw(Box::new(zc_pool { pool }))) };
        Ok(())
    })
}

/// Attaches the shared pool `name` (made by `zc_pool_open` with that `name`, in this process
/// or another) and writes it to `*out`: the same objects, at this process's own address, with no
/// copy and no server. Of `opts` (NULL: defaults) only `prefault`, `lock_memory`, `rdma`,
/// `rdma_devices`, `shared_mode` (0660: accept a group-shared file of another user) and, with
/// `ZC_PAGES_HUGETLB`, `hugetlbfs_dir` apply; size and limits are the creator's, and
/// `opts->name` must be NULL or equal to `name`. Every call works on an attached pool as on the
/// one that made it. `ZC_ERR_SYSTEM` (`ENOENT`) when no such pool exists, `ZC_ERR_INVALID_ARGUMENT`
/// for a bad name or a file that is not a pool of this version (truncated, another layout, not
/// a pool), `ZC_ERR_SYSTEM` (`EACCES`) for a file of another user.
///
/// The caller owns `*out` and must free it with `zc_pool_close`.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `opts` is NULL or a valid `zc_pool_options`; `out`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_attach(
    name: *const c_char,
    opts: *const zc_pool_options,
    out: *mut *mut zc_pool,
) -> zc_status {
    guard("zc_pool_attach", || {
        let out = out_arg(out, "out")?;
        // SAFETY: NULL or a C string per the contract.
        let name = unsafe { c_str_arg(name, "name") }?.ok_or_else(|| invalid("name is NULL"))?;
        let mut defaults = defaults();
        defaults.prefault = false;
        // SAFETY: `opts` is NULL or valid per the contract.
        let opts = unsafe { opts.as_ref() }.unwrap_or(&defaults);
        // SAFETY: the strings in `opts` are NULL or C strings per the contract.
        let opts = unsafe { options_from_c(opts) }?;
        if opts.name.as_deref().is_some_and(|n| n != name) {
            return Err(invalid(format!("opts->name {:?} differs from name {name:?}", opts.name)));
        }
        let pool = Pool::attach(name, &opts)?;
        // SAFETY: `out` is non-NULL and writable.
        unsafe { out.write(Box::into_raw(Box::new(zc_pool { pool }))) };
        Ok(())
    })
}

/// Removes the shared pool `name`'s file from `/dev/shm`. Processes attached keep working on it
/// until they close; the name can be created again at once. `ZC_ERR_SYSTEM` (`ENOENT`) when there
/// is no such pool.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_unlink(name: *const c_char) -> zc_status {
    guard("zc_pool_unlink", || {
        // SAFETY: NULL or a C string per the contract.
        let name = unsafe { c_str_arg(name, "name") }?.ok_or_else(|| invalid("name is NULL"))?;
        Pool::unlink(name, None)
    })
}

/// Reclaims what processes that died attached to this shared pool held: their unsealed creates
/// are aborted (the keys can be created again), their references dropped and their slots freed.
/// This also happens at every open, attach and close, and when a create runs out of room. Writes
/// how many processes were reclaimed to `*out_processes` (may be NULL). A private pool has
/// nothing to reclaim (0).
///
/// # Safety
/// `pool` is NULL or live; `out_processes` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_reclaim(pool: *mut zc_pool, out_processes: *mut u64) -> zc_status {
    guard("zc_pool_reclaim", || {
        // SAFETY: NULL or live per the contract.
        let pool = unsafe { arg(pool, "pool") }?;
        let n = pool.pool.reclaim()?;
        if !out_processes.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { out_processes.write(n) };
        }
        Ok(())
    })
}

/// Verifies every invariant of a shared pool's state (records, index, allocators, reference
/// ledgers, counters): `ZC_OK`, or `ZC_ERR_INTERNAL` with a message naming the first violation.
/// A private pool answers `ZC_OK`.
///
/// # Safety
/// `pool` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_check(pool: *const zc_pool) -> zc_status {
    guard("zc_pool_check", || {
        // SAFETY: NULL or live per the contract.
        let pool = unsafe { arg(pool, "pool") }?;
        pool.pool.check()
    })
}

/// Closes the pool: later calls on its buffers' keys fail with `ZC_ERR_POOL_CLOSED`, blocked
/// `zc_get` calls wake with it, and, on a private pool, every sealed object nobody holds is freed
/// (a shared pool keeps its objects for the other processes and for later attaches; this process's
/// slot is given up). Buffers still held stay valid; the memory is unmapped when the last one is
/// released. NULL is a no-op. In a child forked after the pool was opened it frees the handle and
/// leaves the parent's pool alone.
///
/// Consumes `pool`; do not use it afterwards.
///
/// # Safety
/// `pool` is NULL or came from `zc_pool_open` and was not closed before.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_close(pool: *mut zc_pool) {
    guard_value((), || {
        if !pool.is_null() {
            // SAFETY: `pool` came from `Box::into_raw` in `zc_pool_open` and is closed only once.
            drop(unsafe { Box::from_raw(pool) });
        }
    })
}

/// Writes a snapshot of the pool's counters to `*out`.
///
/// # Safety
/// `pool` is NULL or a live pool; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_get_stats(pool: *const zc_pool, out: *mut zc_pool_stats) -> zc_status {
    guard("zc_pool_get_stats", || {
        // SAFETY: `pool` is NULL or live per the contract.
        let pool = unsafe { arg(pool, "pool") }?;
        let out = out_arg(out, "out")?;
        pool.pool.check_mapped()?;
        let s = pool.pool.stats();
        let stats = zc_pool_stats {
            capacity_bytes: s.capacity_bytes,
            used_bytes: s.used_bytes,
            largest_free_block: s.largest_free_block,
            object_count: s.object_count,
            key_count: s.key_count,
            max_objects: s.max_objects,
            page_size: s.page_size,
            open_nanos: s.open_nanos,
            rdma_registrations: s.rdma_registrations,
            rdma_register_nanos: s.rdma_register_nanos,
            evictions: s.evictions,
            creates_refused: s.creates_refused,
            processes_attached: s.processes_attached,
            processes_reclaimed: s.processes_reclaimed,
            lock_repairs: s.lock_repairs,
            reserved: [0; 1],
        };
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(stats) };
        Ok(())
    })
}

/// Reserves `size` bytes for the key in the pool and writes a writable buffer to `*out`. The key
/// is invisible to `zc_get` until `zc_seal`. Contents of the new bytes are unspecified.
/// `ZC_ERR_ALREADY_EXISTS` if the key is created or sealed; `ZC_ERR_INVALID_ARGUMENT` if `size`
/// exceeds the pool's capacity; `ZC_ERR_OUT_OF_MEMORY` if no free range of the size is there now
/// (any size up to `largest_free_block` in the stats fits) or the object limit is reached.
///
/// The caller owns `*out` and must free it with `zc_release` (which aborts it unless sealed).
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_create_buffer(
    pool: *mut zc_pool,
    key: *const c_char,
    key_len: usize,
    size: usize,
    out: *mut *mut zc_buffer,
) -> zc_status {
    guard("zc_create_buffer", || {
        // SAFETY: per the contract above.
        let (pool, key) = unsafe { (arg(pool, "pool")?, key_arg(key, key_len)?) };
        let out = out_arg(out, "out")?;
        let buf = pool.pool.create(key, size)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(zc_buffer::into_raw(buf)) };
        Ok(())
    })
}

/// Reserves one object made of `n` parts of `sizes[i]` bytes for the key, in one allocation:
/// every part 64-byte aligned, behind a small self-describing header (docs/FORMAT.md) that lets
/// a reader with only the raw bytes find the parts. Write each part through `zc_buffer_part_mut`,
/// then seal as usual; `zc_buffer_size` is the whole object, header included. Fails like
/// `zc_create_buffer`; `sizes` may be NULL when `n` is 0.
///
/// The caller owns `*out` and must free it with `zc_release` (which aborts it unless sealed).
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes; `sizes` to `n` sizes; `out` is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_create_parts(
    pool: *mut zc_pool,
    key: *const c_char,
    key_len: usize,
    sizes: *const usize,
    n: usize,
    out: *mut *mut zc_buffer,
) -> zc_status {
    guard("zc_create_parts", || {
        // SAFETY: per the contract above.
        let (pool, key, sizes) = unsafe { (arg(pool, "pool")?, key_arg(key, key_len)?, array_arg(sizes, n, "sizes")?) };
        let out = out_arg(out, "out")?;
        let buf = pool.pool.create_parts(key, sizes)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(zc_buffer::into_raw(buf)) };
        Ok(())
    })
}

/// `Pool::get`, for calls that may block: a blocked call must survive `zc_pool_close` from another
/// thread, so it waits on the shared state, not on the `zc_pool` that close frees.
fn get(pool: &zc_pool, key: &[u8], wait: Wait) -> Result<crate::Buffer> {
    match wait {
        Wait::Now => pool.pool.get(key, wait),
        _ => pool.pool.share().get(key, wait),
    }
}

/// A read-only reference to the sealed object under the key, written to `*out`: its data pointer
/// is the address the creator wrote, no copy. `timeout_ms`: 0 answers at once
/// (`ZC_ERR_NOT_FOUND`, or `ZC_ERR_NOT_SEALED` for a created key); > 0 waits that long for the key
/// to be created and sealed, then `ZC_ERR_TIMEOUT`; -1 waits forever.
///
/// The caller owns `*out` and must free it with `zc_release`.
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_get(
    pool: *mut zc_pool,
    key: *const c_char,
    key_len: usize,
    timeout_ms: i64,
    out: *mut *mut zc_buffer,
) -> zc_status {
    guard("zc_get", || {
        // SAFETY: per the contract above.
        let (pool, key) = unsafe { (arg(pool, "pool")?, key_arg(key, key_len)?) };
        let out = out_arg(out, "out")?;
        let buf = get(pool, key, Wait::from_millis(timeout_ms)?)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(zc_buffer::into_raw(buf)) };
        Ok(())
    })
}

/// How many leading bytes of the object `zc_get_view` copies into `zc_view::head`.
pub const ZC_VIEW_HEAD_BYTES: usize = 256;

/// A read reference with what a reader needs first, from `zc_get_view` in one call: the handle,
/// the object's address and size, and a copy of its leading bytes (a header to parse without
/// another call).
#[repr(C)]
pub struct zc_view {
    /// The reference, as `zc_get` writes it: the caller owns it and frees it with `zc_release`.
    pub buffer: *mut zc_buffer,
    /// `zc_buffer_const_data(buffer)`.
    pub data: *const u8,
    /// `zc_buffer_size(buffer)`.
    pub size: usize,
    /// The first `min(size, ZC_VIEW_HEAD_BYTES)` bytes of the object; zero after them.
    pub head: [u8; ZC_VIEW_HEAD_BYTES],
}

/// `zc_get`, plus the object's address, size and leading bytes, written to `*out` in one call
/// (for bindings, where every call costs). Waits and fails as `zc_get` does; on failure `*out`
/// is left as it was and nothing is to be released.
///
/// The caller owns `out->buffer` and must free it with `zc_release`.
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_get_view(
    pool: *mut zc_pool,
    key: *const c_char,
    key_len: usize,
    timeout_ms: i64,
    out: *mut zc_view,
) -> zc_status {
    guard("zc_get_view", || {
        // SAFETY: per the contract above.
        let (pool, key) = unsafe { (arg(pool, "pool")?, key_arg(key, key_len)?) };
        let out = out_arg(out, "out")?;
        let buf = get(pool, key, Wait::from_millis(timeout_ms)?)?;
        let bytes = buf.as_slice();
        let lead = bytes.len().min(ZC_VIEW_HEAD_BYTES);
        let mut head = [0u8; ZC_VIEW_HEAD_BYTES];
        head[..lead].copy_from_slice(&bytes[..lead]);
        let (data, size) = (bytes.as_ptr(), bytes.len());
        let view = zc_view { buffer: zc_buffer::into_raw(buf), data, size, head };
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(view) };
        Ok(())
    })
}

/// Removes the key at once; it can be created again. Readers holding the object keep valid,
/// unchanged bytes; its memory is freed at the last `zc_release`. `ZC_ERR_NOT_SEALED` for a
/// created-but-unsealed key (its creator aborts it), `ZC_ERR_NOT_FOUND` for an absent one.
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn zc_delete(pool: *mut zc_pool, key: *const c_char, key_len: usize) -> zc_status {
    guard("zc_delete", || {
        // SAFETY: per the contract above.
        let (pool, key) = unsafe { (arg(pool, "pool")?, key_arg(key, key_len)?) };
        pool.pool.delete(key)
    })
}

/// True if the key is sealed (visible to `zc_get`). False for created-only keys, absent keys,
/// bad arguments and closed pools.
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn zc_contains(pool: *const zc_pool, key: *const c_char, key_len: usize) -> bool {
    guard_value(false, || {
        // SAFETY: per the contract above.
        match unsafe { (arg(pool, "pool"), key_arg(key, key_len)) } {
            (Ok(pool), Ok(key)) => pool.pool.contains(key),
            _ => false,
        }
    })
}

/// Creates the key, copies `size` bytes from `data` into it and seals it: the one-copy put.
/// Fails like `zc_create_buffer`; on failure nothing is stored.
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes; `data` to `size` bytes (NULL if 0).
#[no_mangle]
pub unsafe extern "C" fn zc_put(
    pool: *mut zc_pool,
    key: *const c_char,
    key_len: usize,
    data: *const u8,
    size: usize,
) -> zc_status {
    guard("zc_put", || {
        // SAFETY: per the contract above.
        let (pool, key, data) = unsafe { (arg(pool, "pool")?, key_arg(key, key_len)?, array_arg(data, size, "data")?) };
        pool.pool.put(key, data)
    })
}

/// Copies the sealed object under the key into `dst` (`dst_capacity` bytes) and writes its size
/// to `*out_size`: the one-copy get. Waits as `zc_get` does. `ZC_ERR_INVALID_ARGUMENT` if the
/// object is larger than `dst_capacity` (nothing is copied; `zc_get` tells its size).
///
/// # Safety
/// `pool` is NULL or live; `key` points to `key_len` bytes; `dst` to `dst_capacity` writable
/// bytes (NULL if 0); `out_size` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_get_into(
    pool: *mut zc_pool,
    key: *const c_char,
    key_len: usize,
    timeout_ms: i64,
    dst: *mut u8,
    dst_capacity: usize,
    out_size: *mut usize,
) -> zc_status {
    guard("zc_get_into", || {
        // SAFETY: per the contract above.
        let (pool, key, dst) =
            unsafe { (arg(pool, "pool")?, key_arg(key, key_len)?, array_out(dst, dst_capacity, "dst")?) };
        let out_size = out_arg(out_size, "out_size")?;
        let n = get(pool, key, Wait::from_millis(timeout_ms)?)?.copy_to(dst)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out_size.write(n) };
        Ok(())
    })
}

/// Arguments shared by the batch calls, checked before any item runs.
struct Batch<'a> {
    keys: &'a [*const c_char],
    key_lens: &'a [usize],
    bufs: &'a mut [*mut zc_buffer],
    statuses: &'a mut [zc_status],
}

impl Batch<'_> {
    /// Runs `item` for each index; records per-item statuses and handles (NULL on failure).
    /// Answers `ZC_OK` if every item succeeded, else the first failure's status, whose message,
    /// prefixed with its index, becomes the thread's last error.
    fn run(&mut self, mut item: impl FnMut(usize, &[u8]) -> Result<crate::Buffer>) -> zc_status {
        let mut first_failure = ZC_OK;
        for i in 0..self.keys.len() {
            // SAFETY: the caller of the batch promises `keys[i]` points to `key_lens[i]` bytes.
            let result = unsafe { key_arg(self.keys[i], self.key_lens[i]) }.and_then(|key| item(i, key));
            match result {
                Ok(buf) => {
                    self.bufs[i] = zc_buffer::into_raw(buf);
                    self.statuses[i] = ZC_OK;
                }
                Err(e) => {
                    self.bufs[i] = std::ptr::null_mut();
                    self.statuses[i] = status_of(&e);
                    if first_failure == ZC_OK {
                        first_failure = status_of(&e);
                        record_message(&format!("item {i}: {e}"));
                    }
                }
            }
        }
        first_failure
    }
}

/// Creates `n` buffers, as `zc_create_buffer` does for each key `i` (`keys[i]`, `key_lens[i]`,
/// `sizes[i]`). Writes one handle (NULL on failure) to `out_bufs[i]` and one status to
/// `out_statuses[i]` per item. Answers `ZC_OK` if all succeeded, else the first failure's status.
/// With a NULL array (and `n > 0`) it answers `ZC_ERR_INVALID_ARGUMENT` and writes nothing.
///
/// The caller owns every non-NULL `out_bufs[i]` and must free each with `zc_release`.
///
/// # Safety
/// Each array is NULL or holds `n` elements; each `keys[i]` points to `key_lens[i]` bytes.
#[no_mangle]
pub unsafe extern "C" fn zc_create_batch(
    pool: *mut zc_pool,
    keys: *const *const c_char,
    key_lens: *const usize,
    sizes: *const usize,
    n: usize,
    out_bufs: *mut *mut zc_buffer,
    out_statuses: *mut zc_status,
) -> zc_status {
    guard_status("zc_create_batch", || {
        // SAFETY: per the contract above.
        let (pool, keys, key_lens, sizes, bufs, statuses) = unsafe {
            (
                arg(pool, "pool")?,
                array_arg(keys, n, "keys")?,
                array_arg(key_lens, n, "key_lens")?,
                array_arg(sizes, n, "sizes")?,
                array_out(out_bufs, n, "out_bufs")?,
                array_out(out_statuses, n, "out_statuses")?,
            )
        };
        Ok(Batch { keys, key_lens, bufs, statuses }.run(|i, key| pool.pool.create(key, sizes[i])))
    })
}

/// Gets `n` keys, as `zc_get` does for each, with one deadline `timeout_ms` from now for the
/// whole batch. Writes one handle (NULL on failure) and one status per item, and answers like
/// `zc_create_batch`.
///
/// The caller owns every non-NULL `out_bufs[i]` and must free each with `zc_release`.
///
/// # Safety
/// Each array is NULL or holds `n` elements; each `keys[i]` points to `key_lens[i]` bytes.
#[no_mangle]
pub unsafe extern "C" fn zc_get_batch(
    pool: *mut zc_pool,
    keys: *const *const c_char,
    key_lens: *const usize,
    n: usize,
    timeout_ms: i64,
    out_bufs: *mut *mut zc_buffer,
    out_statuses: *mut zc_status,
) -> zc_status {
    guard_status("zc_get_batch", || {
        // SAFETY: per the contract above.
        let (pool, keys, key_lens, bufs, statuses) = unsafe {
            (
                arg(pool, "pool")?,
                array_arg(keys, n, "keys")?,
                array_arg(key_lens, n, "key_lens")?,
                array_out(out_bufs, n, "out_bufs")?,
                array_out(out_statuses, n, "out_statuses")?,
            )
        };
        let wait = Wait::from_millis(timeout_ms)?;
        let shared = pool.pool.share();
        let deadline = match wait {
            Wait::For(d) => Instant::now().checked_add(d),
            _ => None,
        };
        Ok(Batch { keys, key_lens, bufs, statuses }.run(|_, key| {
            let item_wait = match (wait, deadline) {
                (Wait::For(_), Some(d)) => Wait::For(d.saturating_duration_since(Instant::now())),
                (w, _) => w,
            };
            shared.get(key, item_wait)
        }))
    })
}

/// RDMA registrations of the pool: one per device registered at open, plus one per
/// `zc_pool_register_pd`. 0 in local mode and for NULL.
///
/// # Safety
/// `pool` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_rdma_count(pool: *const zc_pool) -> u32 {
    guard_value(0, || {
        // SAFETY: NULL or live per the contract.
        unsafe { pool.as_ref() }.map_or(0, |p| p.pool.rdma_count())
    })
}

/// The `struct ibv_pd *` of registration `index` (for creating queue pairs that can use its
/// keys); NULL past the last registration and for NULL.
///
/// Borrowed: owned by the pool (or by the caller, for `zc_pool_register_pd`); valid until the
/// pool is closed and its last buffer released.
///
/// # Safety
/// `pool` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_rdma_pd(pool: *const zc_pool, index: u32) -> *mut c_void {
    guard_value(std::ptr::null_mut(), || {
        // SAFETY: NULL or live per the contract.
        unsafe { pool.as_ref() }.map_or(std::ptr::null_mut(), |p| p.pool.rdma_pd(index))
    })
}

/// Registers the whole pool on a protection domain the caller's engine owns (`struct ibv_pd *`:
/// keys are valid only on queue pairs of the PD that registered them) and writes its
/// registration index to `*out_index`. `ZC_ERR_RDMA` if libibverbs is missing or registration
/// fails.
///
/// Borrowed: the pool deregisters this registration at `zc_pool_close`; `ibv_pd` must stay
/// allocated until then.
///
/// # Safety
/// `pool` is NULL or live; `ibv_pd` is NULL or a live `struct ibv_pd *`; `out_index` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_register_pd(
    pool: *mut zc_pool,
    ibv_pd: *mut c_void,
    out_index: *mut u32,
) -> zc_status {
    guard("zc_pool_register_pd", || {
        // SAFETY: NULL or live per the contract.
        let pool = unsafe { arg(pool, "pool") }?;
        let out_index = out_arg(out_index, "out_index")?;
        if ibv_pd.is_null() {
            return Err(invalid("ibv_pd is NULL"));
        }
        // SAFETY: a live `struct ibv_pd *` per the contract.
        let index = unsafe { pool.pool.register_pd(ibv_pd) }?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out_index.write(index) };
        Ok(())
    })
}

/// Writes the first byte of the pool's mapped region to `*base` and its length to `*length`,
/// for engines that register memory themselves (Mooncake Transfer Engine, NIXL, UCX). Every
/// buffer's bytes lie inside it.
///
/// Borrowed: the region stays mapped until the pool is closed and its last buffer released.
///
/// # Safety
/// `pool` is NULL or live; `base` and `length` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn zc_pool_region(pool: *const zc_pool, base: *mut *mut c_void, length: *mut usize) -> zc_status {
    guard("zc_pool_region", || {
        // SAFETY: NULL or live per the contract.
        let pool = unsafe { arg(pool, "pool") }?;
        let base = out_arg(base, "base")?;
        let length = out_arg(length, "length")?;
        pool.pool.check_mapped()?;
        let (start, len) = pool.pool.region();
        // SAFETY: both non-NULL and writable per the contract.
        unsafe {
            base.write(start.cast());
            length.write(len);
        }
        Ok(())
    })
}
