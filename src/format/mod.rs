//! Pure encoders and decoders for every file cairn writes, one module per page of
//! `store-format/`. Nothing here touches the file system. Decoders take untrusted bytes: they
//! check every length against what is left before reading and return [`Error::Corrupt`], never
//! panic (the fuzz targets in `fuzz/` hold them to that).
//!
//! All integers are little-endian with explicit widths (store-format/README.md, "Conventions").

pub mod audit;
pub mod chunk_list;
pub mod config;
pub mod dictionary;
pub mod envelope;
pub mod index;
pub mod key;
pub mod pack;
pub mod snapshot;
pub mod tree;

use crate::error::{Error, Result};
use crate::id::Id;

/// A bounds-checked cursor over untrusted bytes. Every read names `file` in its error.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], file: &'a str) -> Self {
        Reader { data, pos: 0, file }
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::corrupt(self.file, format!("{reason} (at byte {})", self.pos))
    }

    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.remaining() {
            return Err(self.error(format!("truncated: need {len} bytes, {} left", self.remaining())));
        }
        let out = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn id(&mut self) -> Result<Id> {
        Ok(Id(self.array()?))
    }

    /// A reserved u16 field, which must be zero in this version.
    pub fn reserved16(&mut self) -> Result<()> {
        match self.u16()? {
            0 => Ok(()),
            other => Err(self.error(format!("reserved field is {other}, not zero"))),
        }
    }

    /// A count of items that each take at least `min_item_len` bytes; rejects counts that could not
    /// fit in what is left, so a hostile count cannot make the caller allocate.
    pub fn count(&mut self, min_item_len: usize) -> Result<usize> {
        let count = self.u32()? as usize;
        if count.saturating_mul(min_item_len.max(1)) > self.remaining() {
            return Err(self.error(format!("count {count} exceeds the remaining data")));
        }
        Ok(count)
    }

    /// Bytes prefixed by a u16 length.
    pub fn bytes16(&mut self) -> Result<&'a [u8]> {
        let len = self.u16()? as usize;
        self.bytes(len)
    }

    /// Bytes prefixed by a u32 length.
    pub fn bytes32(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }

    pub fn string16(&mut self) -> Result<String> {
        let raw = self.bytes16()?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.error("string is not UTF-8"))
    }

    /// Fails unless every byte has been consumed.
    pub fn finish(self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.error(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// Little-endian append helpers for encoders.
pub trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_i64(&mut self, v: i64);
    fn put_id(&mut self, id: &Id);
    /// u16 length then bytes. Callers guarantee the length fits (checked where input is built).
    fn put_bytes16(&mut self, bytes: &[u8]);
    fn put_bytes32(&mut self, bytes: &[u8]);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_id(&mut self, id: &Id) {
        self.extend_from_slice(&id.0);
    }
    fn put_bytes16(&mut self, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).expect("caller bounds u16-prefixed fields");
        self.put_u16(len);
        self.extend_from_slice(bytes);
    }
    fn put_bytes32(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("caller bounds u32-prefixed fields");
        self.put_u32(len);
        self.extend_from_slice(bytes);
    }
}
