//! The core's error type. Each variant maps to exactly one `zc_status` (see `ffi::status`).

use std::fmt;

/// Everything that can go wrong in the core. Messages carry the detail a caller needs to act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("key {0} not found")]
    NotFound(Key),
    #[error("key {0} already exists")]
    AlreadyExists(Key),
    #[error("key {0} is created but not sealed yet")]
    NotSealed(Key),
    #[error("buffer for key {0} is already sealed")]
    AlreadySealed(Key),
    #[error("pool full: asked {}, largest free block {}, {} of {} in use",
            Bytes(*.requested), Bytes(*.largest_free), Bytes(*.used), Bytes(*.capacity))]
    PoolFull { requested: u64, largest_free: u64, used: u64, capacity: u64 },
    #[error("object limit reached: {limit} objects live (raise max_objects when opening the pool)")]
    ObjectLimit { limit: u64 },
    #[error("timed out after {ms} ms waiting for key {key} to be sealed")]
    Timeout { key: Key, ms: i64 },
    #[error("the pool is closed")]
    PoolClosed,
    #[error("pool opened by process {pid} before fork(); a forked child has no mapping of it: open or attach a pool in the child")]
    ForkedChild { pid: u32 },
    #[error("rdma: {0}")]
    Rdma(String),
    #[error("{what}: {source}")]
    System { what: String, source: std::io::Error },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn system(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::System { what: what.into(), source }
    }
}

/// A key as it appears in messages: printable ASCII as is, other bytes escaped, long keys cut.
#[derive(Debug, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    const SHOWN: usize = 64;

    pub(crate) fn new(key: &[u8]) -> Self {
        Key(key[..key.len().min(Self::SHOWN)].to_vec()).with_len(key.len())
    }

    fn with_len(mut self, full_len: usize) -> Self {
        if full_len > Self::SHOWN {
            self.0.extend_from_slice(format!("...({full_len} bytes)").as_bytes());
        }
        self
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in &self.0 {
            match b {
                b'"' | b'\\' => write!(f, "\\{}", b as char)?,
                0x20..=0x7e => write!(f, "{}", b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

/// A byte count printed the way people read it ("64 MiB", "4 KiB", "100 B").
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 || value.fract() == 0.0 {
            write!(f, "{} {}", value as u64, UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_display_escapes_binary_and_cuts_long_keys() {
        assert_eq!(Key::new(b"a\0\"b").to_string(), "\"a\\x00\\\"b\"");
        let long = vec![b'k'; 100];
        let shown = Key::new(&long).to_string();
        assert!(shown.starts_with("\"kkkk"));
        assert!(shown.ends_with("...(100 bytes)\""), "{shown}");
    }

    #[test]
    fn bytes_display_uses_binary_units() {
        assert_eq!(Bytes(100).to_string(), "100 B");
        assert_eq!(Bytes(64 << 20).to_string(), "64 MiB");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
    }

    #[test]
    fn pool_full_message_names_request_and_largest_block() {
        let e = Error::PoolFull { requested: 64 << 20, largest_free: 12 << 20, used: 1 << 30, capacity: 1 << 30 };
        assert_eq!(e.to_string(), "pool full: asked 64 MiB, largest free block 12 MiB, 1 GiB of 1 GiB in use");
    }
}
