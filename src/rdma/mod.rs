//! RDMA registration of the whole region, once, with every verbs device (or the named ones), and
//! on protection domains that callers own; descriptors for posting RDMA straight from a buffer.
//!
//! No device (no rdma-core, or a kernel without RDMA: `ibv_get_device_list` fails with ENOSYS) is
//! local mode, not an error, unless the caller required RDMA.

pub mod verbs;

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Bytes, Error, Result};
use verbs::{ibv_context, ibv_device, ibv_device_attr, ibv_mr, ibv_pd, Verbs};

/// Most registrations one pool holds (devices at open plus caller PDs).
pub const MAX_REGISTRATIONS: usize = 32;

const ACCESS: c_int = verbs::IBV_ACCESS_LOCAL_WRITE | verbs::IBV_ACCESS_REMOTE_READ | verbs::IBV_ACCESS_REMOTE_WRITE;

/// Whether a pool registers its region at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RdmaMode {
    /// Register with every device (or the named ones) if there are any; none is local mode.
    #[default]
    Auto,
    /// Never register at open (`register_pd` still works).
    Off,
    /// Fail to open unless at least one device is registered.
    Required,
}

/// Where a buffer's bytes are for RDMA: the address and length to post, with the keys of one
/// registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaDesc {
    pub addr: u64,
    pub length: u64,
    pub lkey: u32,
    pub rkey: u32,
}

/// One memory region of a registration.
struct Chunk {
    mr: *mut ibv_mr,
    lkey: u32,
    rkey: u32,
}

/// A device zcopy opened itself; closed when the registration drops.
struct OwnedDevice {
    context: *mut ibv_context,
}

/// The region registered on one protection domain, split into chunks of `chunk_len` bytes.
struct Registration {
    name: String,
    pd: *mut ibv_pd,
    /// `Some` when zcopy opened the device and allocated the PD.
    owned: Option<OwnedDevice>,
    chunks: Mutex<Vec<Chunk>>,
    /// Keys copied out of `chunks`, readable without a lock; empty never.
    keys: Box<[(u32, u32)]>,
    live: AtomicBool,
}

// SAFETY: the verbs objects behind these pointers may be used from any thread (libibverbs is
// thread-safe); the only mutation, deregistration, happens once, under `chunks`' lock.
unsafe impl Send for Registration {}
// SAFETY: as above; shared access only reads copied keys and the PD pointer.
unsafe impl Sync for Registration {}

impl Registration {
    fn deregister(&self, verbs: &Verbs) {
        let mut chunks = self.chunks.lock().unwrap_or_else(|p| p.into_inner());
        self.live.store(false, Ordering::Release);
        for chunk in chunks.drain(..) {
            // SAFETY: each MR came from ibv_reg_mr and is deregistered once (drained here).
            unsafe { (verbs.dereg_mr)(chunk.mr) };
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(verbs) = Verbs::get() else { return };
        self.deregister(verbs);
        if let Some(dev) = &self.owned {
            // SAFETY: the PD and context were created by zcopy for this registration only, and
            // every MR on them is gone.
            unsafe {
                (verbs.dealloc_pd)(self.pd);
                (verbs.close_device)(dev.context);
            }
        }
    }
}

/// Every registration of one pool's region.
pub struct Registrations {
    base: *mut u8,
    len: usize,
    chunk_len: usize,
    slots: Box<[OnceLock<Registration>]>,
    count: AtomicU32,
    /// Set by `close_caller_pds`; also serialises `register_pd`.
    closed: Mutex<bool>,
    open_time: Duration,
}

// SAFETY: `base` is only used as an address to register and to compute descriptors; the
// registrations are Send + Sync.
unsafe impl Send for Registrations {}
// SAFETY: as above.
unsafe impl Sync for Registrations {}

fn os_error(what: &str) -> Error {
    Error::Rdma(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// The devices present, by name, or why none can be listed.
fn list_devices(verbs: &Verbs) -> std::result::Result<DeviceList, String> {
    let mut n: c_int = 0;
    // SAFETY: `n` is writable; the list is freed below (the device pointers stay valid while
    // any device is open, per libibverbs).
    let list = unsafe { (verbs.get_device_list)(&mut n) };
    if list.is_null() {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no RDMA support (ibv_get_device_list: ENOSYS)".into(),
            _ => format!("ibv_get_device_list: {e}"),
        });
    }
    let mut devices = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: the list holds `n` device pointers.
        let dev = unsafe { *list.add(i) };
        // SAFETY: `dev` is a listed device; the name is a C string owned by it.
        let name = unsafe { CStr::from_ptr((verbs.get_device_name)(dev)) }.to_string_lossy().into_owned();
        devices.push((name, dev));
    }
    // SAFETY: `list` came from ibv_get_device_list. Devices stay valid after the list is freed
    // only while opened; they are opened right after this, before anything else can unload them.
    unsafe { (verbs.free_device_list)(list) };
    Ok(devices)
}

fn max_mr_size(verbs: &Verbs, context: *mut ibv_context, name: &str) -> Result<u64> {
    let mut attr = std::mem::MaybeUninit::<ibv_device_attr>::zeroed();
    // SAFETY: `context` is an open device; `attr` is larger than struct ibv_device_attr.
    let rc = unsafe { (verbs.query_device)(context, attr.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::Rdma(format!("ibv_query_device({name}): {}", std::io::Error::from_raw_os_error(rc))));
    }
    // SAFETY: zero-initialised and then filled by ibv_query_device.
    Ok(unsafe { attr.assume_init() }.max_mr_size)
}

/// Devices by name.
type DeviceList = Vec<(String, *mut ibv_device)>;

/// Why a pool has no device to register with.
enum NoDevice {
    /// Nothing to register with (no rdma-core, no kernel support, no device): local mode unless
    /// RDMA is required.
    Unavailable(String),
    /// The caller named a device that does not exist among those present.
    Error(Error),
}

/// The verbs and the devices to register with: all present, or the named ones.
fn find_devices(names: Option<&[String]>) -> std::result::Result<(&'static Verbs, DeviceList), NoDevice> {
    let verbs = Verbs::get().map_err(|why| NoDevice::Unavailable(why.to_string()))?;
    let present = list_devices(verbs).map_err(NoDevice::Unavailable)?;
    if present.is_empty() {
        return Err(NoDevice::Unavailable("no RDMA device found".into()));
    }
    let Some(names) = names else { return Ok((verbs, present)) };
    let mut chosen = Vec::new();
    for name in names {
        match present.iter().find(|(n, _)| n == name) {
            Some(d) => chosen.push(d.clone()),
            None => {
                let have: Vec<&str> = present.iter().map(|(n, _)| n.as_str()).collect();
                return Err(NoDevice::Error(Error::Rdma(format!(
                    "no RDMA device named {name:?} (present: {})",
                    have.join(", ")
                ))));
            }
        }
    }
    Ok((verbs, chosen))
}

impl Registrations {
    fn empty(base: *mut u8, len: usize, page: usize) -> Registrations {
        Registrations {
            base,
            len,
            chunk_len: crate::alloc::MAX_SEGMENT / page * page,
            slots: (0..MAX_REGISTRATIONS).map(|_| OnceLock::new()).collect(),
            count: AtomicU32::new(0),
            closed: Mutex::new(false),
            open_time: Duration::ZERO,
        }
    }

    /// Registers `[base, base + len)` as `mode` says, with the devices `devices` names (all when
    /// `None`). Every step is rolled back if any fails.
    pub fn open(base: *mut u8, len: usize, page: usize, mode: RdmaMode, devices: Option<&[String]>) -> Result<Self> {
        let mut regs = Registrations::empty(base, len, page);
        if mode == RdmaMode::Off {
            return Ok(regs);
        }
        let started = Instant::now();
        let (verbs, chosen) = match find_devices(devices) {
            Ok(found) => found,
            Err(NoDevice::Unavailable(why)) if mode == RdmaMode::Required => {
                return Err(Error::Rdma(format!("RDMA required but unavailable: {why}")))
            }
            Err(NoDevice::Unavailable(_)) => return Ok(regs),
            Err(NoDevice::Error(e)) => return Err(e),
        };
        if chosen.len() > MAX_REGISTRATIONS {
            return Err(Error::Rdma(format!(
                "{} devices: at most {MAX_REGISTRATIONS} can be registered",
                chosen.len()
            )));
        }
        // Open every device first: the smallest max_mr_size decides how the region is split.
        let mut opened = Vec::new();
        for (name, dev) in chosen {
            // SAFETY: `dev` came from the device list.
            let context = unsafe { (verbs.open_device)(dev) };
            if context.is_null() {
                let e = os_error(&format!("ibv_open_device({name})"));
                close_all(verbs, opened);
                return Err(e);
            }
            opened.push((name, context));
        }
        for (name, context) in &opened {
            match max_mr_size(verbs, *context, name) {
                Ok(max) => regs.chunk_len = regs.chunk_len.min(max.min(usize::MAX as u64) as usize / page * page),
                Err(e) => {
                    close_all(verbs, opened);
                    return Err(e);
                }
            }
        }
        if let Some(cap) = mr_size_cap() {
            regs.chunk_len = regs.chunk_len.min(cap / page * page);
        }
        if regs.chunk_len == 0 {
            close_all(verbs, opened);
            return Err(Error::Rdma(format!(
                "memory registrations would be smaller than a page ({page} bytes): check max_mr_size and ZCOPY_RDMA_MAX_MR_SIZE"
            )));
        }
        // Each context passes to its registration, which closes it on drop (also on failure).
        let mut opened = opened.into_iter();
        while let Some((name, context)) = opened.next() {
            // SAFETY: `context` is an open device.
            let pd = unsafe { (verbs.alloc_pd)(context) };
            if pd.is_null() {
                let e = os_error(&format!("ibv_alloc_pd({name})"));
                close_all(verbs, std::iter::once((name, context)).chain(opened).collect());
                return Err(e);
            }
            if let Err(e) = regs.register(verbs, name, pd, Some(OwnedDevice { context })) {
                close_all(verbs, opened.collect());
                return Err(e);
            }
        }
        regs.open_time = started.elapsed();
        Ok(regs)
    }

    /// Registers the whole region on `pd` and appends the registration. On failure nothing of it
    /// stays (an owned device is closed).
    fn register(&self, verbs: &Verbs, name: String, pd: *mut ibv_pd, owned: Option<OwnedDevice>) -> Result<u32> {
        let index = self.count.load(Ordering::Acquire);
        if index as usize >= MAX_REGISTRATIONS {
            drop(Registration {
                name,
                pd,
                owned,
                chunks: Mutex::new(Vec::new()),
                keys: Box::new([]),
                live: AtomicBool::new(false),
            });
            return Err(Error::Rdma(format!("at most {MAX_REGISTRATIONS} registrations per pool")));
        }
        let mut reg = Registration {
            name,
            pd,
            owned,
            chunks: Mutex::new(Vec::new()),
            keys: Box::new([]),
            live: AtomicBool::new(true),
        };
        let mut chunks = Vec::new();
        let mut off = 0;
        while off < self.len {
            let n = self.chunk_len.min(self.len - off);
            // SAFETY: `pd` is a live protection domain and [base + off, base + off + n) lies
            // inside the mapped region, which outlives this registration.
            let mr = unsafe { (verbs.reg_mr)(pd, self.base.add(off).cast::<c_void>(), n, ACCESS) };
            if mr.is_null() {
                let e = os_error(&format!(
                    "ibv_reg_mr of {} on {} (is RLIMIT_MEMLOCK large enough? see `ulimit -l`)",
                    Bytes(n as u64),
                    reg.name
                ));
                *reg.chunks.get_mut().unwrap_or_else(|p| p.into_inner()) = chunks;
                drop(reg);
                return Err(e);
            }
            // SAFETY: a non-NULL MR from ibv_reg_mr.
            let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
            chunks.push(Chunk { mr, lkey, rkey });
            off += n;
        }
        reg.keys = chunks.iter().map(|c| (c.lkey, c.rkey)).collect();
        *reg.chunks.get_mut().unwrap_or_else(|p| p.into_inner()) = chunks;
        if self.slots[index as usize].set(reg).is_err() {
            return Err(Error::Internal("registration slot already taken".into()));
        }
        self.count.store(index + 1, Ordering::Release);
        Ok(index)
    }

    /// Registers the region on a protection domain the caller owns. The caller's PD must outlive
    /// the pool's `close`, which deregisters it.
    ///
    /// # Safety
    /// `pd` is NULL or a live `struct ibv_pd *`.
    pub unsafe fn register_pd(&self, pd: *mut ibv_pd) -> Result<u32> {
        if pd.is_null() {
            return Err(Error::InvalidArgument("ibv_pd is NULL".into()));
        }
        let verbs = Verbs::get().map_err(|why| Error::Rdma(why.to_string()))?;
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(Error::PoolClosed);
        }
        // SAFETY: non-NULL, and live per the contract; its first field is the context.
        let context = unsafe { (*pd).context };
        let index = self.count.load(Ordering::Acquire);
        let name = format!("caller PD #{index}");
        let max = max_mr_size(verbs, context, &name)?;
        if (max as u128) < self.chunk_len.min(self.len) as u128 {
            return Err(Error::Rdma(format!(
                "the PD's device registers at most {} per region; this pool is split in {} regions",
                Bytes(max),
                Bytes(self.chunk_len as u64)
            )));
        }
        let index = self.register(verbs, name, pd, None)?;
        drop(closed);
        Ok(index)
    }

    /// Deregisters the caller-owned PDs' registrations (so callers can free their PDs after
    /// closing the pool) and refuses new ones. The pool's own registrations stay until the last
    /// buffer is released.
    pub fn close_caller_pds(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        *closed = true;
        let Ok(verbs) = Verbs::get() else { return };
        for reg in self.slots.iter().filter_map(OnceLock::get).filter(|r| r.owned.is_none()) {
            reg.deregister(verbs);
        }
    }

    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// The `struct ibv_pd *` of registration `index`, NULL past the end.
    pub fn pd(&self, index: u32) -> *mut ibv_pd {
        self.slot(index).map_or(std::ptr::null_mut(), |r| r.pd)
    }

    fn slot(&self, index: u32) -> Option<&Registration> {
        if index < self.count() {
            self.slots.get(index as usize).and_then(OnceLock::get)
        } else {
            None
        }
    }

    /// Size of the chunks the region is registered in: no object may straddle two.
    pub fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    /// Time spent registering at open.
    pub fn open_time(&self) -> Duration {
        self.open_time
    }

    /// The descriptor of `[offset, offset + len)` under registration `index`.
    pub fn desc(&self, index: u32, offset: usize, len: usize) -> Result<RdmaDesc> {
        let Some(reg) = self.slot(index) else {
            return Err(match self.count() {
                0 => Error::Rdma("the pool has no RDMA registration (local mode)".into()),
                n => Error::InvalidArgument(format!("registration {index} does not exist (the pool has {n})")),
            });
        };
        if !reg.live.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }
        let (lkey, rkey) = reg.keys[offset / self.chunk_len];
        Ok(RdmaDesc { addr: self.base as u64 + offset as u64, length: len as u64, lkey, rkey })
    }
}

/// `ZCOPY_RDMA_MAX_MR_SIZE`: a cap on each memory registration's size, below what devices allow
/// (to work around a provider's limits, or to exercise the split in tests).
fn mr_size_cap() -> Option<usize> {
    std::env::var("ZCOPY_RDMA_MAX_MR_SIZE").ok().and_then(|v| v.trim().parse().ok())
}

fn close_all(verbs: &Verbs, opened: Vec<(String, *mut ibv_context)>) {
    for (_, context) in opened {
        // SAFETY: each context was opened by zcopy and has nothing allocated on it.
        unsafe { (verbs.close_device)(context) };
    }
}
