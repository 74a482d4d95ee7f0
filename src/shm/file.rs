//! The pool file: created exclusively, opened without following links, checked, mapped, unlinked.
//!
//! The creator makes the file with `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`, sets its mode exactly
//! (with `fchmod`, so the umask cannot change it), sizes it, and by default reserves its memory
//! with `posix_fallocate`, so that a full `/dev/shm` fails the create with `ENOSPC` instead of
//! killing a process with `SIGBUS` at its first touch of a missing page later. An attacher opens
//! with `O_NOFOLLOW|O_NONBLOCK` and refuses anything but a regular file owned by its own user,
//! unless it asked for a group-shared pool and the file grants the group read and write access.
//! Files that any user may access are always refused: another user could have planted them.
//!
//! Writes: the file's bytes are written only through the mapping ([`Mapping::area`]), under the
//! rules of the modules that own each area; this module writes none of them.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Bytes, Error, Result};
use crate::shm::offset::Area;

/// Who may attach a pool besides the user that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Only the creating user: mode 0600.
    Owner,
    /// The creating user and the file's group: mode 0660.
    Group,
}

impl Sharing {
    pub(crate) fn mode(self) -> u32 {
        match self {
            Sharing::Owner => 0o600,
            Sharing::Group => 0o660,
        }
    }
}

/// Creates the pool file at `path` exclusively, with exactly `sharing`'s mode, `len` bytes long
/// (all zeros). With `preallocate`, its memory is reserved now; a full file system fails here.
/// On any failure after the file was made, it is removed again.
pub(crate) fn create(path: &Path, len: u64, sharing: Sharing, preallocate: bool) -> Result<File> {
    if len == 0 {
        return Err(Error::InvalidArgument("a pool file cannot be empty".into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(sharing.mode())
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::AlreadyExists { " (a pool of that name exists)" } else { "" };
            Error::system(format!("create the pool file {}{hint}", path.display()), e)
        })?;
    let sized = size(&file, path, len, sharing, preallocate);
    if sized.is_err() {
        // The file is ours (made with O_EXCL just above, in a directory where only we may remove
        // it), so removing it by name cannot remove someone else's.
        let _ = std::fs::remove_file(path);
    }
    sized.map(|()| file)
}

fn size(file: &File, path: &Path, len: u64, sharing: Sharing, preallocate: bool) -> Result<()> {
    // The umask applied to the mode given to open(); fchmod sets it exactly.
    file.set_permissions(Permissions::from_mode(sharing.mode()))
        .map_err(|e| Error::system(format!("fchmod {:o} {}", sharing.mode(), path.display()), e))?;
    file.set_len(len).map_err(|e| Error::system(format!("size {} to {}", path.display(), Bytes(len)), e))?;
    if preallocate {
        let signed =
            i64::try_from(len).map_err(|_| Error::InvalidArgument(format!("pool file size {len} too large")))?;
        // SAFETY: plain system call on a descriptor this function's caller owns.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, signed) };
        if rc != 0 {
            return Err(Error::system(
                format!("reserve {} for {} (is the file system full?)", Bytes(len), path.display()),
                io::Error::from_raw_os_error(rc),
            ));
        }
    }
    Ok(())
}

/// Reserves the file's blocks for `[offset, offset + len)` (`posix_fallocate`), so that no
/// later touch of that range can fail with `SIGBUS` on a full file system; a full file system
/// fails here instead, with a status.
pub(crate) fn reserve(file: &File, offset: u64, len: u64, path: &Path) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(at), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(Error::InvalidArgument(format!("reserve {len} bytes at {offset}: out of range")));
    };
    // SAFETY: plain system call on a descriptor the caller owns.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), at, n) };
    if rc != 0 {
        return Err(Error::system(
            format!("reserve {} of {} (is the file system full?)", Bytes(len), path.display()),
            io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

/// An attached pool file and what `fstat` said of it.
#[derive(Debug)]
pub(crate) struct Opened {
    pub file: File,
    /// The file's length now; the header's claimed length is checked against it.
    pub len: u64,
}

/// Opens an existing pool file for attaching, refusing links, anything but a regular file, and a
/// file this user must not trust (see the module's documentation).
pub(crate) fn open(path: &Path, sharing: Sharing) -> Result<Opened> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        // O_NONBLOCK: a FIFO planted at the path must not hang the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::ELOOP) { " (it is a symbolic link: refused)" } else { "" };
            Error::system(format!("open the pool file {}{hint}", path.display()), e)
        })?;
    let meta = file.metadata().map_err(|e| Error::system(format!("fstat {}", path.display()), e))?;
    let refuse = |why: String| {
        Err(Error::system(format!("attach {}: {why}", path.display()), io::Error::from_raw_os_error(libc::EACCES)))
    };
    if !meta.file_type().is_file() {
        return refuse("not a regular file".into());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o7007 != 0 {
        return refuse(format!("mode {mode:04o} is not a pool's (0600 or 0660): refused"));
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        let group_shared = mode & 0o060 == 0o060 && in_group(meta.gid())?;
        if sharing != Sharing::Group || !group_shared {
            return refuse(format!(
                "owned by uid {}, not by this process's uid {euid}, and not a group-shared pool this process \
                 asked for (mode {mode:04o}, group {})",
                meta.uid(),
                meta.gid()
            ));
        }
    }
    Ok(Opened { file, len: meta.len() })
}

/// Whether this process belongs to group `gid` (effective or supplementary).
fn in_group(gid: u32) -> Result<bool> {
    // SAFETY: getegid cannot fail and touches no memory.
    if unsafe { libc::getegid() } == gid {
        return Ok(true);
    }
    // SAFETY: a count of 0 only asks how many groups there are.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(Error::system("getgroups", io::Error::last_os_error()));
    }
    let mut groups = vec![0; n as usize];
    // SAFETY: `groups` has room for the `n` entries asked for.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    if got < 0 {
        return Err(Error::system("getgroups", io::Error::last_os_error()));
    }
    Ok(groups[..got as usize].contains(&gid))
}

/// Removes the pool file by name. Processes that have it mapped keep their mappings.
pub(crate) fn unlink(path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| Error::system(format!("unlink the pool file {}", path.display()), e))
}

/// The pool file mapped shared, read-write, at this process's own address.
pub(crate) struct Mapping {
    map: MmapRaw,
}

impl Mapping {
    /// Maps the first `len` bytes of `file`. `len` comes from `fstat` or a validated header, never
    /// from an unchecked field: touching a page past the end of the file raises `SIGBUS`.
    pub(crate) fn new(file: &File, len: u64) -> Result<Mapping> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::InvalidArgument(format!("cannot map a pool file of {len} bytes")))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map_err(|e| Error::system(format!("mmap of the {} pool file", Bytes(len as u64)), e))?;
        Ok(Mapping { map })
    }

    /// The whole file, as a checked view.
    pub(crate) fn area(&self) -> Area<'_> {
        // SAFETY: the mapping lives as long as the borrow of `self`, is readable and writable, and
        // this process touches its bytes only through `Area` views.
        unsafe { Area::from_raw(self.map.as_mut_ptr(), self.map.len(), "pool file") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::testutil::{umask_lock, TempDir};
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn os_error(e: &Error) -> Option<i32> {
        match e {
            Error::System { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    #[test]
    fn create_sets_mode_0600_or_0660_exactly_whatever_the_umask() {
        let dir = TempDir::new();
        let _umask = umask_lock();
        for umask in [0o077, 0o000, 0o022] {
            // SAFETY: umask only swaps the process's mask; `umask_lock` keeps other shm tests out.
            let old = unsafe { libc::umask(umask) };
            let private = dir.path(&format!("private-{umask:o}"));
            let group = dir.path(&format!("group-{umask:o}"));
            let made = (create(&private, 4096, Sharing::Owner, false), create(&group, 4096, Sharing::Group, false));
            // SAFETY: as above.
            unsafe { libc::umask(old) };
            made.0.unwrap();
            made.1.unwrap();
            assert_eq!(mode_of(&private), 0o600, "umask {umask:o}");
            assert_eq!(mode_of(&group), 0o660, "umask {umask:o}");
            assert_eq!(std::fs::metadata(&private).unwrap().len(), 4096);
        }
    }

    #[test]
    fn create_refuses_an_existing_file_and_leaves_it_alone() {
        let dir = TempDir::new();
        let path = dir.path("taken");
        std::fs::write(&path, b"someone else's").unwrap();
        let e = create(&path, 4096, Sharing::Owner, true).unwrap_err();
        assert_eq!(os_error(&e), Some(libc::EEXIST), "{e}");
        assert!(e.to_string().contains("a pool of that name exists"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    }

    #[test]
    fn a_symlink_at_the_path_is_refused_by_create_and_by_open() {
        let dir = TempDir::new();
        let target = dir.path("target");
        std::fs::write(&target, b"victim").unwrap();
        let link = dir.path("link");
        symlink(&target, &link).unwrap();
        assert_eq!(os_error(&create(&link, 4096, Sharing::Owner, false).unwrap_err()), Some(libc::EEXIST));
        let e = open(&link, Sharing::Owner).unwrap_err();
        assert_eq!(os_error(&e), Some(libc::ELOOP), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"victim");
        // A dangling link is refused as well, and creates nothing where it points.
        let dangling = dir.path("dangling");
        symlink(dir.path("nowhere"), &dangling).unwrap();
        assert!(create(&dangling, 4096, Sharing::Owner, false).is_err());
        assert!(!dir.path("nowhere").exists());
    }

    #[test]
    fn open_refuses_directories_fifos_and_world_accessible_files() {
        let dir = TempDir::new();
        let sub = dir.path("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(open(&sub, Sharing::Owner).is_err());
        let fifo = dir.path("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open(&fifo, Sharing::Owner).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let path = dir.path("world");
        create(&path, 4096, Sharing::Owner, false).unwrap();
        for mode in [0o666, 0o604, 0o4600, 0o1600] {
            std::fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            let e = open(&path, Sharing::Group).unwrap_err();
            assert!(e.to_string().contains("is not a pool's"), "{mode:o}: {e}");
        }
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(open(&path, Sharing::Owner).unwrap().len, 4096);
    }

    #[test]
    fn open_refuses_another_users_file_unless_group_shared_and_asked_for() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: giving a file to another user needs root");
            return;
        }
        let dir = TempDir::new();
        let path = dir.path("foreign");
        create(&path, 4096, Sharing::Owner, false).unwrap();
        // SAFETY: getegid cannot fail.
        let gid = unsafe { libc::getegid() };
        std::os::unix::fs::chown(&path, Some(65534), Some(gid)).unwrap();
        for sharing in [Sharing::Owner, Sharing::Group] {
            let e = open(&path, sharing).unwrap_err();
            assert_eq!(os_error(&e), Some(libc::EACCES), "{e}");
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
        std::fs::set_permissions(&path, Permissions::from_mode(0o660)).unwrap();
        assert!(open(&path, Sharing::Owner).is_err(), "a group-shared pool is only attached when asked for");
        assert_eq!(open(&path, Sharing::Group).unwrap().len, 4096);
        // Group access to a group this process is not in does not count.
        std::os::unix::fs::chown(&path, None, Some(65534)).unwrap();
        assert!(open(&path, Sharing::Group).is_err());
    }

    #[test]
    fn preallocation_reserves_tmpfs_memory_so_a_full_file_system_fails_at_create() {
        let dir = TempDir::new();
        let reserved = dir.path("reserved");
        let sparse = dir.path("sparse");
        create(&reserved, 4 << 20, Sharing::Owner, true).unwrap();
        create(&sparse, 4 << 20, Sharing::Owner, false).unwrap();
        let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert_eq!(blocks(&reserved), 4 << 20, "posix_fallocate allocates every page on tmpfs");
        assert_eq!(blocks(&sparse), 0, "ftruncate alone allocates nothing");

        let small = dir.path("small");
        std::fs::create_dir(&small).unwrap();
        let mounted =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "none"]).arg(&small).status();
        if !matches!(mounted, Ok(s) if s.success()) {
            eprintln!("skipped the full-file-system half: cannot mount a tmpfs here (needs root)");
            return;
        }
        let full = small.join("pool");
        let refused = create(&full, 8 << 20, Sharing::Owner, true);
        let left_behind = full.exists();
        let lazy = create(&full, 8 << 20, Sharing::Owner, false).map(|_| ());
        let _ = std::fs::remove_file(&full);
        let unmounted = std::process::Command::new("umount").arg(&small).status();
        let e = refused.unwrap_err();
        assert_eq!(os_error(&e), Some(libc::ENOSPC), "{e}");
        assert!(!left_behind, "a failed create removes its file");
        lazy.expect("without preallocation the same create succeeds, and would SIGBUS at first touch");
        assert!(matches!(unmounted, Ok(s) if s.success()));
    }

    #[test]
    fn two_mappings_of_one_file_see_each_others_writes_and_unlink_removes_the_name() {
        let dir = TempDir::new();
        let path = dir.path("shared");
        let file = create(&path, 8192, Sharing::Owner, true).unwrap();
        let opened = open(&path, Sharing::Owner).unwrap();
        assert_eq!(opened.len, 8192);
        let (a, b) = (Mapping::new(&file, 8192).unwrap(), Mapping::new(&opened.file, opened.len).unwrap());
        a.area().get::<AtomicU64>(4096).unwrap().store(42, Ordering::Release);
        assert_eq!(b.area().get::<AtomicU64>(4096).unwrap().load(Ordering::Acquire), 42);
        assert!(Mapping::new(&file, 0).is_err());
        unlink(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(a.area().get::<AtomicU64>(4096).unwrap().load(Ordering::Acquire), 42, "mappings outlive the name");
        assert_eq!(os_error(&unlink(&path).unwrap_err()), Some(libc::ENOENT));
    }
}
