//! Pool names and the path each one maps to.
//!
//! A shared pool is named by the caller and lives at `/dev/shm/zcopy.<name>`, or at
//! `<dir>/zcopy.<name>` when a directory (a hugetlbfs mount) is given. The name becomes one path
//! component, so the rules are conservative:
//!
//! * 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `_`, `-` and `.`;
//! * it starts with a letter, a digit or `_` (so no `.`, `..`, hidden files or option-like names);
//! * no `..` anywhere, so no name can be read as a parent directory.
//!
//! Everything else is refused: `/`, NUL, spaces, control characters, and all non-ASCII text
//! (Unicode names would bring normalisation and look-alike characters into a security decision).
//! The directory must be an absolute path, so that every process that names the pool finds the
//! same file whatever its working directory.
//!
//! Nothing here touches shared memory.

use std::path::{Path, PathBuf};

use crate::error::{Error, Key, Result};

/// Longest pool name, in bytes. With the `zcopy.` prefix it stays well inside `NAME_MAX` (255).
pub(crate) const MAX_NAME_LEN: usize = 128;
/// Where pools live when no directory is given.
pub(crate) const DEFAULT_DIR: &str = "/dev/shm";
/// Every pool file's name starts with this.
pub(crate) const PREFIX: &str = "zcopy.";

/// A validated pool name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolName(String);

impl PoolName {
    /// Checks `name` against the rules above.
    pub(crate) fn parse(name: &[u8]) -> Result<PoolName> {
        let refuse = |why: &str| Err(Error::InvalidArgument(format!("pool name {}: {why}", Key::new(name))));
        if name.is_empty() {
            return refuse("is empty");
        }
        if name.len() > MAX_NAME_LEN {
            return refuse(&format!("is {} bytes long, the limit is {MAX_NAME_LEN}", name.len()));
        }
        if let Some(&bad) = name.iter().find(|&&b| !(b.is_ascii_alphanumeric() || b"_-.".contains(&b))) {
            let what = match bad {
                b'/' => "contains '/'".to_string(),
                0 => "contains a NUL byte".to_string(),
                b' ' => "contains a space".to_string(),
                0x80.. => "contains non-ASCII bytes".to_string(),
                b if b.is_ascii_control() => format!("contains the control character 0x{b:02x}"),
                b => format!("contains '{}'", b as char),
            };
            return refuse(&format!("{what} (allowed: ASCII letters, digits, '_', '-', '.')"));
        }
        if !(name[0].is_ascii_alphanumeric() || name[0] == b'_') {
            return refuse("must start with a letter, a digit or '_'");
        }
        if name.windows(2).any(|w| w == b"..") {
            return refuse("contains '..'");
        }
        // Only ASCII bytes are left, so the conversion cannot fail.
        Ok(PoolName(String::from_utf8_lossy(name).into_owned()))
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool file's path: `<dir>/zcopy.<name>`, `dir` defaulting to `/dev/shm`.
    pub(crate) fn path(&self, dir: Option<&Path>) -> Result<PathBuf> {
        let dir = dir.unwrap_or(Path::new(DEFAULT_DIR));
        if !dir.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "pool directory {} is not an absolute path (every process must find the same file)",
                dir.display()
            )));
        }
        if dir.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(Error::InvalidArgument(format!("pool directory {} contains a NUL byte", dir.display())));
        }
        Ok(dir.join(format!("{PREFIX}{}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(name: &[u8]) -> String {
        match PoolName::parse(name) {
            Err(Error::InvalidArgument(why)) => why,
            other => panic!("{name:?} was not refused as an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn plain_names_are_accepted_and_map_under_dev_shm() {
        for name in ["a", "pool", "Pool_2", "kv-store.v3", "_private", "9lives", "a.b.c", "x-"] {
            let parsed = PoolName::parse(name.as_bytes()).unwrap();
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.path(None).unwrap(), PathBuf::from(format!("/dev/shm/zcopy.{name}")));
        }
        let longest = "n".repeat(MAX_NAME_LEN);
        assert_eq!(PoolName::parse(longest.as_bytes()).unwrap().as_str(), longest);
    }

    #[test]
    fn a_directory_option_moves_the_file_and_must_be_absolute() {
        let name = PoolName::parse(b"kv").unwrap();
        assert_eq!(name.path(Some(Path::new("/mnt/huge"))).unwrap(), PathBuf::from("/mnt/huge/zcopy.kv"));
        let e = name.path(Some(Path::new("huge"))).unwrap_err();
        assert!(e.to_string().contains("not an absolute path"), "{e}");
    }

    #[test]
    fn path_separators_and_dot_names_are_refused_with_the_reason() {
        assert!(refusal(b"").contains("is empty"));
        assert!(refusal(b"a/b").contains("contains '/'"));
        assert!(refusal(b"/etc/passwd").contains("contains '/'"));
        assert!(refusal(b"../x").contains("contains '/'"));
        assert!(refusal(b".").contains("must start with"));
        assert!(refusal(b"..").contains("must start with"));
        assert!(refusal(b".hidden").contains("must start with"));
        assert!(refusal(b"-rf").contains("must start with"));
        assert!(refusal(b"a..b").contains("contains '..'"));
    }

    #[test]
    fn nul_spaces_control_characters_and_unicode_are_refused() {
        assert!(refusal(b"a\0b").contains("NUL"));
        assert!(refusal(b"my pool").contains("space"));
        assert!(refusal(b"a\tb").contains("control character 0x09"));
        assert!(refusal(b"a\nb").contains("control character 0x0a"));
        assert!(refusal(b"a\x7fb").contains("control character 0x7f"));
        assert!(refusal("pöol".as_bytes()).contains("non-ASCII"));
        assert!(refusal("pool\u{200b}".as_bytes()).contains("non-ASCII"));
        assert!(refusal(b"a*b").contains("contains '*'"));
        assert!(refusal(b"a\\b").contains("contains '\\'"));
    }

    #[test]
    fn too_long_names_are_refused_with_the_limit() {
        let long = vec![b'n'; MAX_NAME_LEN + 1];
        assert!(refusal(&long).contains(&format!("is 129 bytes long, the limit is {MAX_NAME_LEN}")));
    }
}
