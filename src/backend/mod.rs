//! Where repository files live. The trait has the few verbs a chunk store needs; everything
//! above it (packing, indexing, snapshots) is written against it, so an object store can stand in
//! for the local directory. Keys are `/`-separated relative paths such as `packs/ab/<id>`.
//!
//! Invariant every implementation keeps: [`Backend::put`] is create-only and durable. When it
//! returns, the object is complete and will survive a crash; a crash during a put leaves either
//! nothing under the key or, at most, a temporary file that no reader ever looks at.

pub mod local;
pub mod object;

use crate::error::Result;

pub trait Backend: Send + Sync {
    /// A human-readable location, for messages.
    fn location(&self) -> String;

    fn get(&self, key: &str) -> Result<Vec<u8>>;

    /// Like [`Backend::get`], into `out` (replacing what it held), reusing its memory where the
    /// backend can: a fresh buffer per 16 MiB pack costs a page fault per 4 KiB. (Not a memory
    /// map: a read error on a mapped page kills the process, and `check` exists to report them.)
    fn get_into(&self, key: &str, out: &mut Vec<u8>) -> Result<()> {
        *out = self.get(key)?;
        Ok(())
    }

    /// A hint that the whole object will be read soon, so the backend can start fetching it
    /// while the caller works on something else. It may do nothing; it never fails.
    fn will_read(&self, _key: &str) {}

    /// `len` bytes from `offset`. Reading past the end is an error.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

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

/// Requests an object-store backend has sent, by kind. A listing counts one request per page of
/// up to 1000 keys. Retries inside the HTTP client are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub get: u64,
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
