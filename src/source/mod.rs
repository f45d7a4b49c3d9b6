//! Reading sources into the repository: walking directory trees into tree blobs and content
//! chunks ([`archiver`]), with exclusion patterns ([`exclude`]) and what else a walk leaves out
//! ([`walk_options`]: other file systems, cache and marked directories), reaching every entry
//! below a source root through its directory's descriptor ([`nofollow`]), capturing live SQLite
//! databases ([`sqlite`]), each entry's extended attributes ([`attributes`]), reading files
//! with holes without reading the holes ([`holes`]), and running a command whose output is
//! backed up ([`command`]).

pub mod archiver;
pub mod attributes;
pub mod command;
pub mod exclude;
pub mod holes;
pub mod lists;
pub mod nofollow;
pub mod sqlite;
pub mod walk_options;

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use rayon::prelude::*;

use crate::chunking::Chunker;
use crate::id::Id;

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

/// Whether the open `file` holds exactly the content of a snapshot's chunk list, cut either
/// way cairn cuts files: by FastCDC, or one chunk per page for a database captured through SQLite
/// (store-format/tree.md, "Databases"). Used by drills and `restore --skip-identical`, which
/// open the file without following symlinks; it is read from its start whatever its position.
pub fn same_content(chunker: &Chunker, file: &std::fs::File, size: u64, chunks: &[Id]) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    // A file with holes (restored with them) is read without them.
    let ids = match holes::sparse(file, meta.len(), meta.blocks()) {
        true => chunker.ids_of(holes::Reader::new(file, u64::MAX), size)?,
        false => {
            std::io::Seek::rewind(&mut &*file)?;
            chunker.ids_of(file, size)?
        }
    };
    if ids == chunks {
        return Ok(true);
    }
    match sqlite::page_size_of(file)? {
        Some(page_size) => Ok(page_ids(file, page_size, chunker.hasher())? == chunks),
        None => Ok(false),
    }
}

/// The ids of a file cut into `page_size` pieces.
fn page_ids(mut file: &std::fs::File, page_size: usize, hasher: crate::id::BlobHasher) -> std::io::Result<Vec<Id>> {
    std::io::Seek::rewind(&mut file)?;
    let window = (16 << 20) / page_size * page_size;
    let mut ids = Vec::new();
    let mut buffer = Vec::with_capacity(window);
    loop {
        buffer.clear();
        (&mut file).take(window as u64).read_to_end(&mut buffer)?;
        if buffer.is_empty() {
            return Ok(ids);
        }
        ids.extend(buffer.par_chunks(page_size).map(|page| hasher.id(page)).collect::<Vec<_>>());
    }
}
