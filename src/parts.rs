//! The byte format of multi-part objects: one allocation holding N parts, each 64-byte aligned,
//! behind a small self-describing header, so a reader that has only the bytes (a remote RDMA
//! READ, a file) finds the parts. `docs/FORMAT.md` is the specification; this is the one
//! implementation of it, used by the pool to lay objects out and by readers to find parts.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "ZCPARTS\0"
//!      8     2  version (1), little-endian like every integer here
//!     10     2  flags (0)
//!     12     4  part count N
//!     16     4  header length H (a multiple of 64)
//!     20     4  reserved (0)
//!     24     8  total length T (header and parts, each part padded to 64)
//!     32  16*N  per part: offset (8) from the first byte, length (8)
//!   ..H         zero padding
//! ```

use crate::error::{Error, Result};

pub const MAGIC: [u8; 8] = *b"ZCPARTS\0";
pub const VERSION: u16 = 1;
/// Alignment of the header length and of every part.
pub const ALIGN: usize = 64;
/// Most parts one object may have (bounds the header at about 1 MiB).
pub const MAX_PARTS: usize = 1 << 16;
const FIXED: usize = 32;
const ENTRY: usize = 16;

/// Where each part lies in an object, and how long the object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub header_len: usize,
    pub total_len: usize,
    /// (offset, length) of each part.
    pub parts: Vec<(usize, usize)>,
}

fn round_up(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(ALIGN)
}

fn too_big() -> Error {
    Error::InvalidArgument("the parts' sizes add up to more than memory can hold".into())
}

impl Layout {
    /// The layout of an object with parts of these sizes.
    pub fn new(sizes: &[usize]) -> Result<Layout> {
        if sizes.len() > MAX_PARTS {
            return Err(Error::InvalidArgument(format!("{} parts: at most {MAX_PARTS}", sizes.len())));
        }
        let header_len = round_up(FIXED + ENTRY * sizes.len()).ok_or_else(too_big)?;
        let mut at = header_len;
        let mut parts = Vec::with_capacity(sizes.len());
        for &len in sizes {
            parts.push((at, len));
            at = at.checked_add(len).and_then(round_up).ok_or_else(too_big)?;
        }
        Ok(Layout { header_len, total_len: at, parts })
    }

    /// Writes the header into the first `header_len` bytes of `object`.
    pub fn write_header(&self, object: &mut [u8]) {
        let h = &mut object[..self.header_len];
        h.fill(0);
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(self.parts.len() as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(self.header_len as u32).to_le_bytes());
        h[24..32].copy_from_slice(&(self.total_len as u64).to_le_bytes());
        for (i, &(offset, len)) in self.parts.iter().enumerate() {
            let e = FIXED + ENTRY * i;
            h[e..e + 8].copy_from_slice(&(offset as u64).to_le_bytes());
            h[e + 8..e + 16].copy_from_slice(&(len as u64).to_le_bytes());
        }
    }
}

fn bad(why: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("not a valid multi-part object: {}", why.into()))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The number of parts described by the header at the start of `bytes`, after checking the
/// header (magic, version, lengths within `bytes`).
pub fn count(bytes: &[u8]) -> Result<usize> {
    if bytes.len() < FIXED {
        return Err(bad(format!("{} bytes is shorter than the header", bytes.len())));
    }
    if bytes[0..8] != MAGIC {
        return Err(bad("no ZCPARTS magic"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(bad(format!("format version {version}, this library reads {VERSION}")));
    }
    let n = u32_at(bytes, 12) as usize;
    let header_len = u32_at(bytes, 16) as usize;
    let total = u64_at(bytes, 24);
    if n > MAX_PARTS || header_len < FIXED + ENTRY * n || header_len % ALIGN != 0 || header_len > bytes.len() {
        return Err(bad(format!("header of {header_len} bytes for {n} parts in {} bytes", bytes.len())));
    }
    if total > bytes.len() as u64 {
        return Err(bad(format!("the header says {total} bytes, only {} are there", bytes.len())));
    }
    Ok(n)
}

/// Offset and length of part `index`, checked to lie inside `bytes` and to be 64-byte aligned.
pub fn locate(bytes: &[u8], index: usize) -> Result<(usize, usize)> {
    let n = count(bytes)?;
    if index >= n {
        return Err(Error::InvalidArgument(format!("part {index} of an object with {n} parts")));
    }
    let e = FIXED + ENTRY * index;
    let (offset, len) = (u64_at(bytes, e), u64_at(bytes, e + 8));
    let header_len = u32_at(bytes, 16) as u64;
    let fits = offset.checked_add(len).is_some_and(|end| end <= bytes.len() as u64);
    if offset % ALIGN as u64 != 0 || offset < header_len || !fits {
        return Err(bad(format!("part {index} at {offset}+{len} is outside the object or unaligned")));
    }
    Ok((offset as usize, len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(sizes: &[usize]) -> (Layout, Vec<u8>) {
        let layout = Layout::new(sizes).unwrap();
        let mut bytes = vec![0xEEu8; layout.total_len];
        layout.write_header(&mut bytes);
        (layout, bytes)
    }

    #[test]
    fn parts_are_aligned_packed_after_the_header_and_read_back_from_bytes() {
        let (layout, bytes) = object(&[10, 0, 64, 65]);
        assert_eq!(layout.header_len, 128, "32 + 4 * 16 = 96, rounded to 128");
        assert_eq!(layout.parts, vec![(128, 10), (192, 0), (192, 64), (256, 65)]);
        assert_eq!(layout.total_len, 384);
        assert_eq!(count(&bytes).unwrap(), 4);
        for (i, &p) in layout.parts.iter().enumerate() {
            assert_eq!(locate(&bytes, i).unwrap(), p);
        }
        assert_eq!(&bytes[0..8], b"ZCPARTS\0");
    }

    #[test]
    fn zero_parts_is_a_header_only_object() {
        let (layout, bytes) = object(&[]);
        assert_eq!((layout.header_len, layout.total_len), (64, 64));
        assert_eq!(count(&bytes).unwrap(), 0);
        assert!(locate(&bytes, 0).is_err());
    }

    #[test]
    fn damaged_or_truncated_headers_are_refused() {
        let (_, bytes) = object(&[100, 200]);
        assert!(count(&bytes[..20]).is_err());
        assert!(count(&bytes[..100]).is_err(), "shorter than its header length");
        assert!(count(&bytes[..bytes.len() - 1]).is_err(), "shorter than its total length");
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(count(&b).unwrap_err().to_string().contains("magic"));
        let mut b = bytes.clone();
        b[8] = 2;
        assert!(count(&b).unwrap_err().to_string().contains("version 2"));
        let mut b = bytes.clone();
        b[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(locate(&b, 0).is_err(), "part beyond the end");
        let mut b = bytes;
        b[32..40].copy_from_slice(&65u64.to_le_bytes());
        assert!(locate(&b, 0).is_err(), "unaligned part");
    }

    #[test]
    fn sizes_that_overflow_are_invalid_arguments() {
        assert!(Layout::new(&[usize::MAX]).is_err());
        assert!(Layout::new(&[usize::MAX / 2, usize::MAX / 2]).is_err());
        assert!(Layout::new(&vec![1; MAX_PARTS + 1]).is_err());
    }
}
