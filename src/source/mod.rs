//! Reading sources into the repository: walking directory trees into tree blobs and content
//! chunks ([`archiver`]), with exclusion patterns ([`exclude`]).

pub mod archiver;
pub mod exclude;
pub mod sqlite;

use std::os::unix::fs::MetadataExt;

use crate::format::tree::Metadata;

/// The metadata cairn keeps, from an `lstat` result.
pub fn metadata_of(meta: &std::fs::Metadata) -> Metadata {
    Metadata {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        ctime_sec: meta.ctime(),
        ctime_nsec: meta.ctime_nsec() as u32,
        dev: meta.dev(),
        ino: meta.ino(),
        nlink: meta.nlink(),
        size: if meta.is_file() { meta.size() } else { 0 },
    }
}
