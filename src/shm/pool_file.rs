//! A pool file end to end: create it (make the file, map it, let the caller initialise its areas,
//! write the header, publish) or attach it (open and check the file, map it, validate the header).
//!
//! Writes: [`PoolFile::create`] writes the header and hands the unpublished file to the caller's
//! initialiser, which writes the areas; both happen before the one atomic store that publishes
//! the pool. An attached `PoolFile` writes nothing by itself.
//!
//! Creation lock: the creator holds an OFD write lock on the file's first byte
//! ([`CREATION_BYTE`], in the header's page, so never a slot's byte: slots start a page later)
//! from just after making the file until just after publishing it. A file that is not published
//! and whose creation lock anyone can take was therefore left by a creator that died: attach says
//! so, and [`PoolFile::remove_if_abandoned`] removes it, holding the lock while it checks and
//! unlinks. One window remains, between the creator's `open` and its lock, where a remover can
//! take the lock of a live creator's file; the creator closes it by checking, once it holds the
//! lock, that its file still has a name, and making the file again if not. (An attach in that
//! window may say the creator died; it would refuse the unpublished file anyway.)

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};
use crate::region::{not_in_children, NotInChildren};
use crate::shm::file::{self, Mapping, Sharing};
#[cfg(test)]
use crate::shm::header::AreaKind;
use crate::shm::header::{self, Layout, HEADER_SIZE, INITIALISING, MAGIC, READY, STATE_OFFSET};
use crate::shm::offset::Area;
use crate::shm::slots::{ofd_lock, ofd_lock_wait};

/// The byte whose lock the creator holds until it publishes the pool.
pub(crate) const CREATION_BYTE: u64 = 0;

const _: () = {
    assert!(CREATION_BYTE < header::METADATA_ALIGN, "slot locks start at the slots area, a page or more in");
    assert!(STATE_OFFSET + 4 <= 16, "the probe reads the magic and the state word");
};

/// Which of a new pool file's blocks to reserve before its areas are initialised (the rest are
/// allocated by the file system when first touched).
#[derive(Debug, Clone, Copy)]
// The engine reserves ranges; the tests use the other two.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Reserve<'r> {
    Nothing,
    All,
    /// These (offset, length) ranges.
    Ranges(&'r [(u64, u64)]),
}

/// An open, mapped pool file and its validated layout. The mapping lives as long as this value;
/// closing the file (dropping it) releases every `fcntl` lock taken through it.
pub(crate) struct PoolFile {
    /// Keeps `file` out of fork children, so that a child does not hold this process's slot
    /// locks after it died. Declared first: it must drop before `file` closes.
    _not_in_children: NotInChildren,
    file: File,
    map: Mapping,
    layout: Layout,
}

/// How far a pool file's creation got, as seen by a process that does not hold its creation lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Creation {
    Published,
    /// Not published, and its creator holds the creation lock: it is alive.
    InProgress,
    /// Not published, and nobody holds the creation lock: its creator died.
    Abandoned,
    /// Not something a creator leaves (other bytes than a header or zeros).
    NotAPool,
}

/// The creation lock, held through one open file description; dropped unlocks it.
struct CreationLock<'f>(&'f File);

impl Drop for CreationLock<'_> {
    fn drop(&mut self) {
        // Unlocking a byte this description holds cannot fail; were it to, closing the file drops it.
        let _ = ofd_lock(self.0, CREATION_BYTE, libc::F_UNLCK);
    }
}

/// Probes how far `file` (`len` bytes) got; when the lock could be taken, it is returned held.
fn creation(file: &File, len: u64) -> Result<(Creation, Option<CreationLock<'_>>)> {
    let got = ofd_lock(file, CREATION_BYTE, libc::F_WRLCK)
        .map_err(|e| Error::system("fcntl(F_OFD_SETLK) on the pool file's creation byte", e))?;
    let lock = got.then_some(CreationLock(file));
    let mut head = [0u8; 16];
    let read = if len >= HEADER_SIZE { file.read_exact_at(&mut head, 0) } else { Ok(()) };
    read.map_err(|e| Error::system("read the pool file's header", e))?;
    let magic = &head[..8];
    let at = STATE_OFFSET as usize;
    let state = u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let ours = magic == MAGIC || magic == [0; 8];
    let seen = match (len, state) {
        (0, _) => Creation::Abandoned,
        (len, _) if len < HEADER_SIZE => Creation::NotAPool,
        (_, READY) if magic == MAGIC => Creation::Published,
        (_, INITIALISING) if ours => Creation::Abandoned,
        _ => Creation::NotAPool,
    };
    Ok(match (seen, &lock) {
        (Creation::Abandoned, None) => (Creation::InProgress, None),
        _ => (seen, lock),
    })
}

impl PoolFile {
    /// Creates the pool file at `path` laid out as `layout`, runs `init` on the whole file (still
    /// unpublished: nobody else can attach it yet, so `init` may write plain fields), then writes
    /// the header and publishes it. The creation lock is held throughout. On failure the file is
    /// removed.
    pub(crate) fn create(
        path: &Path,
        layout: &Layout,
        sharing: Sharing,
        reserve: Reserve<'_>,
        init: impl FnOnce(&Area<'_>, &Layout) -> Result<()>,
    ) -> Result<PoolFile> {
        layout.check()?;
        let file = create_locked(path, layout.file_len, sharing, matches!(reserve, Reserve::All))?;
        let _not_in_children = match not_in_children(file.as_raw_fd()) {
            Ok(guard) => guard,
            Err(e) => {
                // Ours, made with O_EXCL, still named and not published (see below).
                let _ = file::unlink(path);
                return Err(e);
            }
        };
        if let Reserve::Ranges(ranges) = reserve {
            if let Err(e) = ranges.iter().try_for_each(|&(at, len)| file::reserve(&file, at, len, path)) {
                // Ours, made with O_EXCL, still named and not published (see below).
                let _ = file::unlink(path);
                return Err(e);
            }
        }
        let made = Mapping::new(&file, layout.file_len).and_then(|map| {
            let area = map.area();
            init(&area, layout)?;
            // SAFETY: the file was made exclusively just above and its state word is still 0, so
            // every attacher refuses it and reads none of its bytes; this process holds no
            // reference into the header.
            unsafe { header::write(&area, &layout.header(std::process::id(), euid()))? };
            header::publish(&area)?;
            Ok(map)
        });
        match made {
            Ok(map) => {
                // Published: from now on nobody may take the file for abandoned.
                drop(CreationLock(&file));
                Ok(PoolFile { _not_in_children, file, map, layout: *layout })
            }
            Err(e) => {
                // Ours, made with O_EXCL and still named (checked under the creation lock, which
                // every remover takes): removing it by name removes no one else's file.
                let _ = file::unlink(path);
                Err(e)
            }
        }
    }

    /// Attaches the pool file at `path`: refuses what [`file::open`] refuses, then anything whose
    /// header does not validate against the file's real length. A file left unpublished by a
    /// creator that died is refused with an error saying so. Errors name the path.
    pub(crate) fn attach(path: &Path, sharing: Sharing) -> Result<PoolFile> {
        let opened = file::open(path, sharing)?;
        let named = |e: Error| match e {
            Error::InvalidArgument(why) => Error::InvalidArgument(format!("attach {}: {why}", path.display())),
            other => other,
        };
        // Why an unpublished file is refused, when its creation lock tells more than its bytes.
        let unpublished = || -> Result<Option<Error>> {
            let why = match creation(&opened.file, opened.len)?.0 {
                Creation::Abandoned => {
                    "not published: its creator died before finishing it (nobody holds its creation lock); the \
                     file can be removed"
                }
                Creation::InProgress => "not published: another process is still creating it",
                Creation::Published | Creation::NotAPool => return Ok(None),
            };
            Ok(Some(named(Error::InvalidArgument(format!("not a usable zcopy pool file: {why}")))))
        };
        if opened.len < HEADER_SIZE {
            if let Some(e) = unpublished()? {
                return Err(e);
            }
            return Err(named(Error::InvalidArgument(format!(
                "not a usable zcopy pool file: truncated: {} bytes, shorter than a header",
                opened.len
            ))));
        }
        let map = Mapping::new(&opened.file, opened.len)?;
        let header = header::read(&map.area()).map_err(named)?;
        if header.state == INITIALISING {
            if let Some(e) = unpublished()? {
                return Err(e);
            }
        }
        let layout = header.validate(opened.len).map_err(named)?;
        let _not_in_children = not_in_children(opened.file.as_raw_fd())?;
        Ok(PoolFile { _not_in_children, file: opened.file, map, layout })
    }

    /// Removes the pool file at `path` if, and only if, its creator died before publishing it:
    /// never a published pool, never a file a live process is creating, never a file that is not
    /// a pool's. Answers whether it removed it.
    pub(crate) fn remove_if_abandoned(path: &Path, sharing: Sharing) -> Result<bool> {
        let opened = file::open(path, sharing)?;
        let (seen, lock) = creation(&opened.file, opened.len)?;
        if seen != Creation::Abandoned || lock.is_none() {
            return Ok(false);
        }
        // Under the creation lock nobody else removes or publishes this file; make sure the name
        // still leads to it before removing the name.
        let named =
            std::fs::symlink_metadata(path).map_err(|e| Error::system(format!("stat {}", path.display()), e))?;
        let ours = opened.file.metadata().map_err(|e| Error::system(format!("fstat {}", path.display()), e))?;
        if (named.dev(), named.ino()) != (ours.dev(), ours.ino()) {
            return Ok(false);
        }
        file::unlink(path)?;
        Ok(true)
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The whole mapped file.
    pub(crate) fn area(&self) -> Area<'_> {
        self.map.area()
    }

    /// One area of the file, as the validated layout places it.
    #[cfg(test)]
    pub(crate) fn area_of(&self, kind: AreaKind) -> Result<Area<'_>> {
        self.layout.area(&self.map.area(), kind)
    }
}

/// Makes the file at `path` and takes its creation lock. A remover may have taken the lock of
/// the new file and removed it in between (it looked abandoned); then the file has no name
/// any more, and it is made again.
fn create_locked(path: &Path, len: u64, sharing: Sharing, preallocate: bool) -> Result<File> {
    for _ in 0..3 {
        let file = file::create(path, len, sharing, preallocate)?;
        ofd_lock_wait(&file, CREATION_BYTE)
            .map_err(|e| Error::system(format!("fcntl(F_OFD_SETLKW) on {}'s creation byte", path.display()), e))?;
        let links = file.metadata().map_err(|e| Error::system(format!("fstat {}", path.display()), e))?.nlink();
        if links > 0 {
            return Ok(file);
        }
    }
    Err(Error::system(
        format!("create the pool file {}: removed three times while being made", path.display()),
        io::Error::from_raw_os_error(libc::EAGAIN),
    ))
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::header::{fresh_generation, AREAS};
    use crate::shm::testutil::{child_role, create_pool, park, say, ChildProcess, TempDir};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn layout() -> Layout {
        let mut metadata = [0; AREAS];
        metadata[AreaKind::Slots as usize] = 512;
        metadata[AreaKind::Records as usize] = 4096;
        Layout::plan(metadata, 8192, 4096, fresh_generation()).unwrap()
    }

    fn refusal(path: &Path) -> String {
        match PoolFile::attach(path, Sharing::Owner) {
            Err(Error::InvalidArgument(why)) => {
                assert!(why.contains(&path.display().to_string()), "{why}");
                why
            }
            Err(other) => panic!("not an invalid argument: {other}"),
            Ok(_) => panic!("{} was attached", path.display()),
        }
    }

    #[test]
    fn create_initialises_areas_before_publishing_and_attach_sees_the_same_layout() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let layout = layout();
        let created = PoolFile::create(&path, &layout, Sharing::Owner, Reserve::All, |file, layout| {
            let records = layout.area(file, AreaKind::Records)?;
            records.get::<AtomicU64>(0)?.store(77, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        let attached = PoolFile::attach(&path, Sharing::Owner).unwrap();
        assert_eq!(attached.layout(), &layout);
        assert_eq!(attached.layout(), created.layout());
        let records = attached.area_of(AreaKind::Records).unwrap();
        assert_eq!(records.get::<AtomicU64>(0).unwrap().load(Ordering::Relaxed), 77);
        let header = header::read(&attached.area()).unwrap();
        assert_eq!((header.creator_pid, header.creator_uid), (std::process::id(), euid()));
        assert_ne!(fresh_generation(), fresh_generation());
    }

    #[test]
    fn a_failed_initialisation_leaves_no_file_behind() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let e =
            PoolFile::create(&path, &layout(), Sharing::Owner, Reserve::All, |_, _| Err(Error::Internal("no".into())));
        assert!(e.is_err());
        assert!(!path.exists());
    }

    #[test]
    fn empty_random_truncated_unpublished_and_other_version_files_are_refused_clearly() {
        let dir = TempDir::new();
        // Files that could be pools as far as their type, owner and mode go.
        let plant = |name: &str, bytes: &[u8]| {
            let path = dir.path(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            path
        };
        assert!(refusal(&plant("empty", b"")).contains("its creator died before finishing it"));
        assert!(refusal(&plant("short", b"ZCOPYSHM")).contains("truncated: 8 bytes"));

        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let bytes: Vec<u8> = (0..65536)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        assert!(refusal(&plant("random", &bytes)).contains("no zcopy magic"));

        let layout = layout();
        let make = |name: &str| {
            let path = dir.path(name);
            drop(PoolFile::create(&path, &layout, Sharing::Owner, Reserve::Nothing, |_, _| Ok(())).unwrap());
            path
        };
        let truncated = make("truncated");
        std::fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(layout.file_len / 2).unwrap();
        assert!(refusal(&truncated).contains(&format!("truncated: {} bytes", layout.file_len / 2)));
        let stub = make("stub");
        std::fs::OpenOptions::new().write(true).open(&stub).unwrap().set_len(100).unwrap();
        assert!(refusal(&stub).contains("shorter than a header"));

        let patch = |path: &Path, at: u64, bytes: &[u8]| {
            std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
        };
        let unpublished = make("unpublished");
        patch(&unpublished, header::STATE_OFFSET, &0u32.to_ne_bytes());
        assert!(refusal(&unpublished).contains("not published"));
        let newer = make("newer");
        patch(&newer, 8, &(header::LAYOUT_VERSION + 1).to_ne_bytes());
        let want = format!(
            "layout version {}, this library reads version {}",
            header::LAYOUT_VERSION + 1,
            header::LAYOUT_VERSION
        );
        assert!(refusal(&newer).contains(&want));

        let good = make("good");
        PoolFile::attach(&good, Sharing::Owner).unwrap();
    }

    const CHILD_TEST: &str = "shm::pool_file::tests::child_process_role";

    /// The children of the tests below: one creates a pool and stops in its initialiser; one
    /// creates a pool with a large data area and says when it is published.
    #[test]
    fn child_process_role() {
        if let Some(path) = child_role("create-and-stop") {
            let _ = PoolFile::create(&path, &layout(), Sharing::Owner, Reserve::All, |_, _| {
                say("INITIALISING");
                park()
            });
        }
        if let Some(path) = child_role("create-large") {
            let mut metadata = [0; AREAS];
            metadata[AreaKind::Slots as usize] = 512;
            metadata[AreaKind::Records as usize] = 1 << 20;
            let layout = Layout::plan(metadata, 32 << 20, 4096, fresh_generation()).unwrap();
            say("READY");
            let pool = PoolFile::create(&path, &layout, Sharing::Owner, Reserve::All, |file, layout| {
                let records = layout.area(file, AreaKind::Records)?;
                for at in (0..1 << 20).step_by(8) {
                    records.get::<AtomicU64>(at)?.store(at, Ordering::Relaxed);
                }
                Ok(())
            });
            pool.unwrap();
            say("PUBLISHED");
            park();
        }
    }

    #[test]
    fn a_creator_killed_mid_initialisation_leaves_a_file_attach_explains_and_only_then_removes() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let mut child = ChildProcess::spawn(CHILD_TEST, "create-and-stop", &path);
        child.expect("INITIALISING");
        let why = refusal(&path);
        assert!(why.contains("not published: another process is still creating it"), "{why}");
        assert!(!PoolFile::remove_if_abandoned(&path, Sharing::Owner).unwrap(), "the creator is alive");
        assert!(path.exists());

        child.kill();
        let why = refusal(&path);
        assert!(why.contains("its creator died before finishing it"), "{why}");
        assert!(why.contains("can be removed"), "{why}");
        assert!(PoolFile::remove_if_abandoned(&path, Sharing::Owner).unwrap());
        assert!(!path.exists());
        drop(create_pool(&path));
        PoolFile::attach(&path, Sharing::Owner).unwrap();
    }

    #[test]
    fn published_pools_and_files_that_are_not_pools_are_never_removed() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let pool = create_pool(&path);
        assert!(!PoolFile::remove_if_abandoned(&path, Sharing::Owner).unwrap());
        drop(pool);
        assert!(!PoolFile::remove_if_abandoned(&path, Sharing::Owner).unwrap(), "nobody attached, still a pool");
        PoolFile::attach(&path, Sharing::Owner).unwrap();

        // A pool published by a creator that died afterwards.
        let published = dir.path("published");
        let mut child = ChildProcess::spawn(CHILD_TEST, "create-large", &published);
        child.expect("PUBLISHED");
        child.kill();
        assert!(!PoolFile::remove_if_abandoned(&published, Sharing::Owner).unwrap());
        PoolFile::attach(&published, Sharing::Owner).unwrap();

        let other = dir.path("other");
        std::fs::write(&other, vec![7u8; 8192]).unwrap();
        std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(!PoolFile::remove_if_abandoned(&other, Sharing::Owner).unwrap());
        assert!(other.exists());
    }

    #[test]
    fn creators_killed_at_random_moments_leave_nothing_or_a_pool_or_a_removable_file() {
        let dir = TempDir::new();
        let path = dir.path("pool");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut outcomes = [0; 3];
        for round in 0..40 {
            let mut child = ChildProcess::spawn(CHILD_TEST, "create-large", &path);
            child.expect("READY");
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(std::time::Duration::from_micros(seed % 20_000));
            child.kill();
            if !path.exists() {
                outcomes[0] += 1;
                continue;
            }
            match PoolFile::attach(&path, Sharing::Owner) {
                Ok(_) => {
                    assert!(!PoolFile::remove_if_abandoned(&path, Sharing::Owner).unwrap(), "round {round}");
                    std::fs::remove_file(&path).unwrap();
                    outcomes[1] += 1;
                }
                Err(e) => {
                    assert!(e.to_string().contains("its creator died before finishing it"), "round {round}: {e}");
                    assert!(PoolFile::remove_if_abandoned(&path, Sharing::Owner).unwrap(), "round {round}");
                    assert!(!path.exists());
                    outcomes[2] += 1;
                }
            }
        }
        assert_eq!(outcomes.iter().sum::<u32>(), 40, "{outcomes:?}");
    }
}
