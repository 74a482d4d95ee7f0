//! A pool file end to end: create it (make the file, map it, let the caller initialise its areas,
//! write the header, publish) or attach it (open and check the file, map it, validate the header).
//!
//! Writes: [`PoolFile::create`] writes the header and hands the unpublished file to the caller's
//! initialiser, which writes the areas; both happen before the one atomic store that publishes
//! the pool. An attached `PoolFile` writes nothing by itself.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::shm::file::{self, Mapping, Sharing};
use crate::shm::header::{self, AreaKind, Layout, HEADER_SIZE};
use crate::shm::offset::Area;

/// An open, mapped pool file and its validated layout. The mapping lives as long as this value;
/// closing the file (dropping it) releases every `fcntl` lock taken through it.
pub(crate) struct PoolFile {
    file: File,
    map: Mapping,
    layout: Layout,
}

impl PoolFile {
    /// Creates the pool file at `path` laid out as `layout`, runs `init` on the whole file (still
    /// unpublished: nobody else can attach it yet, so `init` may write plain fields), then writes
    /// the header and publishes it. On failure the file is removed.
    pub(crate) fn create(
        path: &Path,
        layout: &Layout,
        sharing: Sharing,
        preallocate: bool,
        init: impl FnOnce(&Area<'_>, &Layout) -> Result<()>,
    ) -> Result<PoolFile> {
        layout.check()?;
        let file = file::create(path, layout.file_len, sharing, preallocate)?;
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
            Ok(map) => Ok(PoolFile { file, map, layout: *layout }),
            Err(e) => {
                // Ours, made with O_EXCL: removing it by name removes no one else's file.
                let _ = file::unlink(path);
                Err(e)
            }
        }
    }

    /// Attaches the pool file at `path`: refuses what [`file::open`] refuses, then anything whose
    /// header does not validate against the file's real length. Errors name the path.
    pub(crate) fn attach(path: &Path, sharing: Sharing) -> Result<PoolFile> {
        let opened = file::open(path, sharing)?;
        let named = |e: Error| match e {
            Error::InvalidArgument(why) => Error::InvalidArgument(format!("attach {}: {why}", path.display())),
            other => other,
        };
        if opened.len < HEADER_SIZE {
            return Err(named(Error::InvalidArgument(format!(
                "not a usable zcopy pool file: truncated: {} bytes, shorter than a header",
                opened.len
            ))));
        }
        let map = Mapping::new(&opened.file, opened.len)?;
        let layout = header::read(&map.area()).and_then(|h| h.validate(opened.len)).map_err(named)?;
        Ok(PoolFile { file: opened.file, map, layout })
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
    pub(crate) fn area_of(&self, kind: AreaKind) -> Result<Area<'_>> {
        self.layout.area(&self.map.area(), kind)
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::header::{fresh_generation, AREAS};
    use crate::shm::testutil::TempDir;
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
        let created = PoolFile::create(&path, &layout, Sharing::Owner, true, |file, layout| {
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
        let e = PoolFile::create(&path, &layout(), Sharing::Owner, true, |_, _| Err(Error::Internal("no".into())));
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
        assert!(refusal(&plant("empty", b"")).contains("truncated: 0 bytes"));

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
            drop(PoolFile::create(&path, &layout, Sharing::Owner, false, |_, _| Ok(())).unwrap());
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
        patch(&newer, 8, &2u32.to_ne_bytes());
        assert!(refusal(&newer).contains("layout version 2, this library reads version 1"));

        let good = make("good");
        PoolFile::attach(&good, Sharing::Owner).unwrap();
    }
}
