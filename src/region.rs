//! The pool's memory: one mapping with a stable base address for the pool's whole life.
//!
//! Anonymous memory with transparent huge pages (the default), plain 4 KiB pages, or explicit huge
//! pages (`MAP_HUGETLB`, or a file on a hugetlbfs mount). Huge-page advice is given before the first
//! touch so the prefault lands in huge pages; the region is excluded from `fork` children
//! (`MADV_DONTFORK`), which RDMA registration needs; it can be locked in RAM.
//!
//! A forked child therefore has no mapping of a region its parent mapped. The first `map`
//! installs a `pthread_atfork` child handler that bumps a process-wide fork generation; each region
//! remembers the generation it was mapped in, so [`Region::is_mapped_here`] is one relaxed load
//! and a compare, cheap enough for every call of the pool. The same handler points the child's
//! copies of the descriptors registered with [`not_in_children`] at `/dev/null`: a shared pool's
//! file, whose locks tell other processes that this one is alive.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use memmap2::{Advice, MmapOptions, MmapRaw};

use crate::error::{Bytes, Error, Result};

const SMALL_PAGE: usize = 4096;
const DEFAULT_HUGE_PAGE: usize = 2 << 20;

/// Bumped in every child `fork()` makes, once the handler is installed (see [`watch_forks`]).
/// Every pool call reads it: it has a cache line of its own, so no write to a neighbouring static
/// ever invalidates it.
static FORK_GENERATION: ForkGeneration = ForkGeneration(AtomicU64::new(0));

#[repr(align(128))]
struct ForkGeneration(AtomicU64);

extern "C" fn forked_child() {
    // Async-signal-safe, as a handler that runs in the child of a multi-threaded parent must be.
    FORK_GENERATION.0.fetch_add(1, Ordering::Relaxed);
    drop_parent_files();
}

/// How many descriptors [`not_in_children`] can hold at once; past that, a descriptor is shared
/// with children as any other is.
const CHILD_DROPS: usize = 1024;

/// The descriptors [`not_in_children`] registered, -1 in free entries.
static CHILD_DROP_FDS: [AtomicI32; CHILD_DROPS] = [const { AtomicI32::new(-1) }; CHILD_DROPS];

/// In a fork child: points every registered descriptor at `/dev/null`, so the open file
/// description behind it is the parent's alone again (its OFD locks are then released when the
/// parent dies, whatever the child does), and a later close of that number closes `/dev/null`.
/// Only async-signal-safe calls: `open`, `dup3` and `close`.
fn drop_parent_files() {
    if CHILD_DROP_FDS.iter().all(|fd| fd.load(Ordering::Relaxed) < 0) {
        return;
    }
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if null < 0 {
        return;
    }
    for entry in &CHILD_DROP_FDS {
        let fd = entry.load(Ordering::Relaxed);
        // A registered descriptor is open (it is registered after its open and unregistered
        // before its close), so `open` above cannot have answered its number.
        if fd >= 0 && fd != null {
            // SAFETY: replaces this child's copy of `fd` only; the parent's table is its own.
            unsafe { libc::dup3(null, fd, libc::O_CLOEXEC) };
        }
    }
    // SAFETY: `null` was opened above and nothing else refers to it.
    unsafe { libc::close(null) };
}

/// Keeps a descriptor out of the children this process forks (see [`drop_parent_files`]) while
/// it lives. Drop it before closing the descriptor.
#[derive(Debug)]
pub(crate) struct NotInChildren(Option<usize>);

/// Registers `fd` (open, and kept open until the answer drops) so that children forked from now
/// on do not share its open file description. Best effort: with every entry taken, `fd` is
/// shared as before.
pub(crate) fn not_in_children(fd: RawFd) -> Result<NotInChildren> {
    watch_forks()?;
    let entry =
        CHILD_DROP_FDS.iter().position(|e| e.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok());
    Ok(NotInChildren(entry))
}

impl Drop for NotInChildren {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            CHILD_DROP_FDS[i].store(-1, Ordering::Release);
        }
    }
}

/// Installs the fork handler, once per process. Before it is installed no region exists, so a
/// fork then needs no counting. (`_Fork()` and raw `clone()` run no handlers: not covered.)
fn watch_forks() -> Result<()> {
    static INSTALLED: OnceLock<libc::c_int> = OnceLock::new();
    // SAFETY: registers a plain `extern "C"` function with no state; it only adds to an atomic.
    let rc = *INSTALLED.get_or_init(|| unsafe { libc::pthread_atfork(None, None, Some(forked_child)) });
    if rc != 0 {
        return Err(Error::system("pthread_atfork (to notice fork children)", io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// The current fork generation, with the fork handler installed: a mapping made now is this
/// process's while [`fork_generation_now`] still answers the same.
pub(crate) fn fork_generation() -> Result<u64> {
    watch_forks()?;
    Ok(FORK_GENERATION.0.load(Ordering::Relaxed))
}

/// The fork generation now, one relaxed load.
#[inline]
pub(crate) fn fork_generation_now() -> u64 {
    FORK_GENERATION.0.load(Ordering::Relaxed)
}

/// How the region's pages are backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageMode {
    /// Anonymous memory advised with `MADV_HUGEPAGE` (falls back to 4 KiB pages where the kernel
    /// has no huge page to give).
    TransparentHuge,
    /// Anonymous memory in 4 KiB pages (`MADV_NOHUGEPAGE`).
    Small,
    /// Explicit huge pages: anonymous `MAP_HUGETLB` when `dir` is `None`, else a file created and
    /// unlinked at once in `dir`, which must be on a hugetlbfs mount. Fails when none are reserved.
    HugeTlb { dir: Option<PathBuf> },
}

/// What to map.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    pub len: usize,
    pub pages: PageMode,
    pub prefault: bool,
    pub lock: bool,
}

/// One mapping. Dropping it unmaps the memory (after unlocking it, if it was locked).
pub struct Region {
    map: MmapRaw,
    /// Offset of the usable range inside `map` (anonymous THP mappings are over-mapped by one huge
    /// page so the usable range can start on a huge-page boundary).
    start: usize,
    len: usize,
    page_size: usize,
    locked: bool,
    map_time: Duration,
    _file: Option<File>,
    /// The fork generation and process that mapped the region.
    generation: u64,
    pid: u32,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.base())
            .field("len", &self.len)
            .field("page_size", &self.page_size)
            .field("locked", &self.locked)
            .finish()
    }
}

impl Region {
    /// Maps, advises, prefaults and (optionally) locks a region of at least `opts.len` bytes.
    /// The length is rounded up to the page size in use.
    pub fn map(opts: &RegionOptions) -> Result<Region> {
        if opts.len == 0 {
            return Err(Error::InvalidArgument("pool size must be greater than zero".into()));
        }
        let started = Instant::now();
        watch_forks()?;
        let mut region = match &opts.pages {
            PageMode::TransparentHuge => Self::map_anon(opts.len, thp_size(), Advice::HugePage)?,
            PageMode::Small => Self::map_anon(opts.len, SMALL_PAGE, Advice::NoHugePage)?,
            PageMode::HugeTlb { dir: None } => Self::map_hugetlb_anon(opts.len)?,
            PageMode::HugeTlb { dir: Some(dir) } => Self::map_hugetlbfs(opts.len, dir)?,
        };
        region
            .map
            .advise_range(Advice::DontFork, region.start, region.len)
            .map_err(|e| Error::system("madvise(MADV_DONTFORK) on the pool", e))?;
        if opts.prefault {
            region.prefault()?;
        }
        if opts.lock {
            region.lock()?;
        }
        region.map_time = started.elapsed();
        Ok(region)
    }

    fn map_anon(len: usize, align: usize, advice: Advice) -> Result<Region> {
        let len = round_up(len, align)?;
        let map_len =
            len.checked_add(align).ok_or_else(|| Error::InvalidArgument(format!("pool size {len} overflows")))?;
        let map: MmapRaw = MmapOptions::new()
            .len(map_len)
            .map_anon()
            .map_err(|e| Error::system(format!("mmap of {} anonymous memory", Bytes(map_len as u64)), e))?
            .into();
        let addr = map.as_mut_ptr() as usize;
        let start = round_up(addr, align)? - addr;
        // Advice before the first touch decides the page size the prefault gets. A kernel without
        // THP answers EINVAL; the pool then simply runs on small pages.
        let _ = map.advise_range(advice, start, len);
        Ok(Region::new(map, start, len, align, None))
    }

    fn map_hugetlb_anon(len: usize) -> Result<Region> {
        let page = DEFAULT_HUGE_PAGE;
        let len = round_up(len, page)?;
        let map: MmapRaw = MmapOptions::new()
            .len(len)
            .huge(Some(page.trailing_zeros() as u8))
            .map_anon()
            .map_err(|e| {
                Error::system(
                    format!(
                        "mmap(MAP_HUGETLB) of {} (are huge pages reserved in /proc/sys/vm/nr_hugepages?)",
                        Bytes(len as u64)
                    ),
                    e,
                )
            })?
            .into();
        Ok(Region::new(map, 0, len, page, None))
    }

    fn map_hugetlbfs(len: usize, dir: &Path) -> Result<Region> {
        let page = hugetlbfs_page_size(dir)?;
        let len = round_up(len, page)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!("zcopy-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::system(format!("create {}", path.display()), e))?;
        // The name is only needed to create the file; the mapping keeps the memory.
        let _ = std::fs::remove_file(&path);
        file.set_len(len as u64).map_err(|e| {
            Error::system(format!("size {} to {} (not enough free huge pages?)", path.display(), Bytes(len as u64)), e)
        })?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| Error::system(format!("mmap of {}", path.display()), e))?;
        Ok(Region::new(map, 0, len, page, Some(file)))
    }

    fn new(map: MmapRaw, start: usize, len: usize, page_size: usize, file: Option<File>) -> Region {
        Region {
            map,
            start,
            len,
            page_size,
            locked: false,
            map_time: Duration::ZERO,
            _file: file,
            generation: FORK_GENERATION.0.load(Ordering::Relaxed),
            pid: std::process::id(),
        }
    }

    fn prefault(&self) -> Result<()> {
        match self.map.advise_range(Advice::PopulateWrite, self.start, self.len) {
            Ok(()) => Ok(()),
            // Kernels before 5.14 do not know MADV_POPULATE_WRITE: touch every page instead.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.touch_pages();
                Ok(())
            }
            Err(e) => Err(Error::system(format!("prefault of {} (MADV_POPULATE_WRITE)", Bytes(self.len as u64)), e)),
        }
    }

    fn touch_pages(&self) {
        let base = self.base();
        for off in (0..self.len).step_by(self.page_size.min(SMALL_PAGE)) {
            // SAFETY: `off < self.len`, so the byte lies inside this live, writable mapping, and
            // no object has been handed out yet, so nobody else reads or writes it.
            unsafe { base.add(off).write_volatile(0) };
        }
    }

    fn lock(&mut self) -> Result<()> {
        // SAFETY: mlock only reads the address range, which is this live mapping.
        let rc = unsafe { libc::mlock(self.base() as *const libc::c_void, self.len) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(Error::system(
                format!("mlock of {} (check `ulimit -l` / RLIMIT_MEMLOCK)", Bytes(self.len as u64)),
                e,
            ));
        }
        self.locked = true;
        Ok(())
    }

    /// The first usable byte. Stable for the region's life; aligned to `page_size()`.
    pub fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr().wrapping_add(self.start)
    }

    /// Usable bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The page size the region was laid out for (the huge page size when huge pages were asked for).
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Time spent mapping, advising, prefaulting and locking.
    pub fn map_time(&self) -> Duration {
        self.map_time
    }

    /// Whether the region is mapped in this process: false in a child forked after it was mapped,
    /// which has no mapping of it (`MADV_DONTFORK`).
    #[inline]
    pub fn is_mapped_here(&self) -> bool {
        self.generation == FORK_GENERATION.0.load(Ordering::Relaxed)
    }

    /// The process that mapped the region.
    pub fn mapped_by(&self) -> u32 {
        self.pid
    }

    /// The address of byte `offset`. The only place where the pool turns an offset into a pointer.
    pub fn ptr_at(&self, offset: usize) -> *mut u8 {
        debug_assert!(offset <= self.len);
        self.base().wrapping_add(offset)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.locked {
            // SAFETY: the range is this mapping, still live until `self.map` drops after this.
            unsafe { libc::munlock(self.base() as *const libc::c_void, self.len) };
        }
    }
}

fn round_up(value: usize, align: usize) -> Result<usize> {
    value
        .checked_next_multiple_of(align)
        .ok_or_else(|| Error::InvalidArgument(format!("size {value} overflows when rounded to {align}")))
}

/// The PMD huge page size transparent huge pages use (2 MiB on x86-64).
fn thp_size() -> usize {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n: &usize| n.is_power_of_two() && n >= SMALL_PAGE)
        .unwrap_or(DEFAULT_HUGE_PAGE)
}

pub(crate) fn hugetlbfs_page_size(dir: &Path) -> Result<usize> {
    let cpath = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidArgument(format!("hugetlbfs path {} contains a NUL byte", dir.display())))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `cpath` is a valid C string and `st` is writable memory of the right type.
    let rc = unsafe { libc::statfs(cpath.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::system(format!("statfs {}", dir.display()), io::Error::last_os_error()));
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    const HUGETLBFS_MAGIC: libc::c_long = 0x9584_58f6;
    if st.f_type as libc::c_long != HUGETLBFS_MAGIC {
        return Err(Error::InvalidArgument(format!("{} is not on a hugetlbfs mount", dir.display())));
    }
    Ok(st.f_bsize as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smaps block of the mapping that contains `addr`.
    fn smaps_of(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut current = String::new();
        let mut inside = false;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = head.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                    if inside {
                        return current;
                    }
                    inside = lo <= addr && addr < hi;
                    current.clear();
                }
            }
            if inside {
                current.push_str(line);
                current.push('\n');
            }
        }
        current
    }

    fn vm_flags(smaps: &str) -> Vec<String> {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .map(|f| f.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn kib(smaps: &str, field: &str) -> u64 {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn thp_region_is_huge_aligned_dontfork_hugepage_advised_and_prefaulted() {
        let r =
            Region::map(&RegionOptions { len: 8 << 20, pages: PageMode::TransparentHuge, prefault: true, lock: false })
                .unwrap();
        assert_eq!(r.len(), 8 << 20);
        assert_eq!(r.base() as usize % thp_size(), 0);
        let smaps = smaps_of(r.base() as usize);
        let flags = vm_flags(&smaps);
        assert!(flags.contains(&"dc".to_string()), "MADV_DONTFORK missing: {flags:?}");
        assert!(flags.contains(&"hg".to_string()), "MADV_HUGEPAGE missing: {flags:?}");
        // Prefaulted: every byte of the usable range is resident before anything writes to it.
        assert!(kib(&smaps, "Rss:") >= 8 << 10, "not prefaulted:\n{smaps}");
    }

    #[test]
    fn small_page_region_is_advised_nohugepage_and_not_resident_without_prefault() {
        let r =
            Region::map(&RegionOptions { len: 1 << 20, pages: PageMode::Small, prefault: false, lock: false }).unwrap();
        let smaps = smaps_of(r.base() as usize);
        let flags = vm_flags(&smaps);
        assert!(flags.contains(&"nh".to_string()), "MADV_NOHUGEPAGE missing: {flags:?}");
        assert!(flags.contains(&"dc".to_string()), "MADV_DONTFORK missing: {flags:?}");
        assert_eq!(kib(&smaps, "Rss:"), 0);
        assert_eq!(r.page_size(), 4096);
    }

    #[test]
    fn region_length_is_rounded_up_to_the_page_size() {
        let r = Region::map(&RegionOptions { len: 5000, pages: PageMode::Small, prefault: true, lock: false }).unwrap();
        assert_eq!(r.len(), 8192);
        let r = Region::map(&RegionOptions { len: 1, pages: PageMode::TransparentHuge, prefault: false, lock: false })
            .unwrap();
        assert_eq!(r.len(), thp_size());
    }

    #[test]
    fn locked_region_shows_locked_flag_and_unlocks_on_drop() {
        let r =
            Region::map(&RegionOptions { len: 1 << 20, pages: PageMode::Small, prefault: true, lock: true }).unwrap();
        assert!(r.is_locked());
        let flags = vm_flags(&smaps_of(r.base() as usize));
        assert!(flags.contains(&"lo".to_string()), "VM_LOCKED missing: {flags:?}");
    }

    #[test]
    fn zero_length_and_overflowing_lengths_are_invalid_arguments() {
        let e =
            Region::map(&RegionOptions { len: 0, pages: PageMode::Small, prefault: false, lock: false }).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = Region::map(&RegionOptions {
            len: usize::MAX - 10,
            pages: PageMode::TransparentHuge,
            prefault: false,
            lock: false,
        })
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn hugetlbfs_path_that_is_not_hugetlbfs_is_refused_with_its_name() {
        let e = Region::map(&RegionOptions {
            len: 4 << 20,
            pages: PageMode::HugeTlb { dir: Some(std::env::temp_dir()) },
            prefault: false,
            lock: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("not on a hugetlbfs mount"), "{e}");
    }

    /// Reserves `pages` more huge pages for the life of the guard (root only); `None` when the
    /// host cannot or will not.
    struct HugePages {
        before: u64,
    }

    impl HugePages {
        const KNOB: &'static str = "/proc/sys/vm/nr_hugepages";

        fn reserve(pages: u64) -> Option<HugePages> {
            let before: u64 = std::fs::read_to_string(Self::KNOB).ok()?.trim().parse().ok()?;
            std::fs::write(Self::KNOB, (before + pages).to_string()).ok()?;
            let guard = HugePages { before };
            let now: u64 = std::fs::read_to_string(Self::KNOB).ok()?.trim().parse().ok()?;
            (now >= before + pages).then_some(guard)
        }
    }

    impl Drop for HugePages {
        fn drop(&mut self) {
            let _ = std::fs::write(Self::KNOB, self.before.to_string());
        }
    }

    #[test]
    fn explicit_huge_pages_back_the_region_with_map_hugetlb_and_with_a_hugetlbfs_file() {
        let Some(_reserved) = HugePages::reserve(4) else {
            eprintln!("skipped: cannot reserve huge pages here (needs root and free memory)");
            return;
        };
        let r = Region::map(&RegionOptions {
            len: 3 << 20,
            pages: PageMode::HugeTlb { dir: None },
            prefault: true,
            lock: false,
        })
        .unwrap();
        assert_eq!((r.len(), r.page_size()), (4 << 20, 2 << 20));
        let smaps = smaps_of(r.base() as usize);
        assert_eq!(kib(&smaps, "KernelPageSize:"), 2048, "{smaps}");
        drop(r);

        let dir = std::env::temp_dir().join(format!("zcopy-hugetlbfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount").args(["-t", "hugetlbfs", "none"]).arg(&dir).status();
        if !matches!(mounted, Ok(s) if s.success()) {
            let _ = std::fs::remove_dir(&dir);
            eprintln!("skipped the hugetlbfs half: cannot mount hugetlbfs here");
            return;
        }
        let mapped = Region::map(&RegionOptions {
            len: 2 << 20,
            pages: PageMode::HugeTlb { dir: Some(dir.clone()) },
            prefault: true,
            lock: false,
        });
        let files_left = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(usize::MAX);
        let shape = mapped
            .as_ref()
            .map(|r| (r.len(), r.page_size(), kib(&smaps_of(r.base() as usize), "KernelPageSize:")))
            .map_err(|e| e.to_string());
        drop(mapped);
        let unmounted = std::process::Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(shape.unwrap(), (2 << 20, 2 << 20, 2048));
        assert_eq!(files_left, 0, "the backing file is unlinked at once");
        assert!(matches!(unmounted, Ok(s) if s.success()), "the mount stays busy after the region is gone");
    }
}
