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

    /// `len` bytes from `offset`. Reading past the end is an error.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The object's length in bytes.
    fn size(&self, key: &str) -> Result<u64>;

    /// Stores `data` under `key` if nothing is there yet. Returns `false` (and changes nothing) if
    /// the key already exists: every key cairn writes is content-addressed or written once.
    fn put(&self, key: &str, data: &[u8]) -> Result<bool>;

    /// Every object below `prefix` (a directory key such as `snapshots`), as (key, length).
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;

    fn delete(&self, key: &str) -> Result<()>;

    fn exists(&self, key: &str) -> Result<bool>;

    /// Removes temporary files whose writer is gone (a killed run); returns how many. Backends
    /// without temporary files (create-only object puts) have nothing to do.
    fn remove_stale_temp_files(&self) -> usize {
        0
    }
}
