//! Where repository files live. The trait has the few verbs a chunk store needs; everything
//! above it (packing, indexing, snapshots) is written against it, so an object store can stand in
//! for the local directory. Keys are `/`-separated relative paths such as `packs/ab/<id>`.
//!
//! Invariant every implementation keeps: [`Backend::put`] is create-only and durable. When it
//! returns, the object is complete and will survive a crash; a crash during a put leaves either
//! nothing under the key or, at most, a temporary file that no reader ever looks at.

pub mod ahead;
pub mod local;
pub mod object;
mod open_packs;
mod page_cache;

use crate::error::Result;

pub trait Backend: Send + Sync {
    /// A human-readable location, for messages.
    fn location(&self) -> String;

    fn get(&self, key: &str) -> Result<Vec<u8>>;

    /// Reads a whole object into `out` (replacing what it held) for one pass over every byte,
    /// reusing its memory. A local backend reads straight from the disk into it (`O_DIRECT`):
    /// no copy out of the page cache, and a `check` of the whole repository does not evict what
    /// the machine's services keep cached. (Not a memory map: a read error on a mapped page kills
    /// the process, and `check` exists to report them.)
    fn read_once(&self, key: &str, out: &mut WholeObject) -> Result<()> {
        out.hold(self.get(key)?);
        Ok(())
    }

    /// `len` bytes from `offset`. Reading past the end is an error.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The parts `(offset, len)` of `key` (in order, not overlapping, not empty), read with one request
    /// for the span from the first to the end of the last, each part in its own buffer: the
    /// gaps between them are not kept once the parts are. This default reads the span whole
    /// and copies the parts out of it; object stores cut the body into the parts as it arrives,
    /// never holding the span, which is what a restore's budget counts on (its planned reads
    /// serve object stores only, [`crate::repository::reader`]).
    fn get_parts(&self, key: &str, parts: &[(u64, usize)]) -> Result<Vec<Vec<u8>>> {
        let Some((start, end)) = span(parts) else { return Ok(Vec::new()) };
        let whole = self.get_range(key, start, end - start)?;
        Ok(parts.iter().map(|&(at, len)| whole[(at - start) as usize..][..len].to_vec()).collect())
    }

    /// The object's length in bytes.
    fn size(&self, key: &str) -> Result<u64>;

    /// Stores `data` under `key` if nothing is there yet. Returns `false` (and changes nothing) if
    /// the key already exists: every key cairn writes is content-addressed or written once.
    fn put(&self, key: &str, data: &[u8]) -> Result<bool>;

    /// [`Backend::put`] taking the bytes by value, which saves an object store a copy.
    fn put_vec(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        self.put(key, &data)
    }

    /// Every object below `prefix` (a directory key such as `snapshots`), as (key, length).
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;

    /// [`Backend::list`] with each object's last-modified time, in Unix milliseconds by the
    /// store's own clock (a file's mtime, an object's `Last-Modified`), where the store keeps
    /// one. Lock ages are measured with it, so that no writer's clock decides them
    /// (store-format/locks.md).
    fn list_with_times(&self, prefix: &str) -> Result<Vec<(String, u64, Option<i64>)>> {
        Ok(self.list(prefix)?.into_iter().map(|(key, len)| (key, len, None)).collect())
    }

    fn delete(&self, key: &str) -> Result<()>;

    fn exists(&self, key: &str) -> Result<bool>;

    /// Removes temporary files whose writer is gone (a killed run); returns how many. Backends
    /// without temporary files (create-only object puts) have nothing to do.
    fn remove_stale_temp_files(&self) -> usize {
        0
    }

    /// A path on the file system that holds the repository, for free-space checks; `None` for
    /// object stores.
    fn disk_path(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Requests sent so far, for backends that bill per request (object stores).
    fn requests(&self) -> Option<RequestCounts> {
        None
    }
}

/// The bytes from the first of `parts` to the end of the last, or `None` when there are none.
pub fn span(parts: &[(u64, usize)]) -> Option<(u64, u64)> {
    let (first, last) = (parts.first()?, parts.last()?);
    Some((first.0, last.0 + last.1 as u64))
}

/// Whether an error is a refusal for want of rights (a 403 from an object store, `EACCES` from a
/// file system): credentials that may create objects but not delete them get it for a delete.
pub fn permission_denied(error: &crate::error::Error) -> bool {
    matches!(error, crate::error::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Requests an object-store backend has sent, by kind. A listing counts one request per page of
/// up to 1000 keys. Retries inside the HTTP client are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub get: u64,
    /// Bytes the GETs asked for (each whole object, or range, once however often it was tried).
    pub get_bytes: u64,
    pub put: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.get + self.put + self.head + self.list + self.delete
    }
}

/// The bytes of a whole object read by [`Backend::read_once`], in memory reused from object to
/// object. They start at an offset aligned for direct I/O.
#[derive(Default)]
pub struct WholeObject {
    memory: Vec<u8>,
    start: usize,
    len: usize,
}

impl WholeObject {
    /// Alignment of the bytes' address and of direct reads' lengths (a block of any disk).
    pub const ALIGN: usize = 4096;

    pub fn bytes(&self) -> &[u8] {
        &self.memory[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.memory[self.start..self.start + self.len]
    }

    /// Memory held, in bytes.
    pub fn capacity(&self) -> usize {
        self.memory.capacity()
    }

    /// Room for an object of `len` bytes: aligned, and `len` rounded up to [`Self::ALIGN`] long.
    /// Memory too large to allocate is an error, not an abort.
    pub fn room(&mut self, len: usize) -> std::io::Result<&mut [u8]> {
        let span = len.next_multiple_of(Self::ALIGN);
        if self.memory.capacity() < span + Self::ALIGN {
            // The old bytes are not copied over. The new memory is reserved in whole huge pages,
            // so that a slightly larger object fits in it later without moving.
            self.memory = Vec::new();
            let reserve = (span + Self::ALIGN).next_multiple_of(crate::disk::HUGE_PAGE);
            self.memory.try_reserve_exact(reserve).map_err(std::io::Error::other)?;
            crate::disk::advise_huge_pages(self.memory.spare_capacity_mut());
        }
        if self.memory.len() < span + Self::ALIGN {
            self.memory.resize(span + Self::ALIGN, 0);
        }
        self.start = self.memory.as_ptr().align_offset(Self::ALIGN);
        self.len = len;
        Ok(&mut self.memory[self.start..self.start + span])
    }

    /// Takes `bytes`, read by other means, as the object.
    pub fn hold(&mut self, bytes: Vec<u8>) {
        (self.len, self.start, self.memory) = (bytes.len(), 0, bytes);
    }
}
