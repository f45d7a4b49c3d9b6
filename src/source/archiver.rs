//! Walks a directory tree into the repository: each directory becomes a tree blob, each file a
//! list of content chunk ids, bottom-up, so an unchanged subtree re-encodes to the id it had
//! before and costs nothing.
//!
//! Parallelism: the entries of a directory are processed with rayon, subdirectories recursing
//! into the same pool, and the chunks of one window of a large file are hashed and compressed in
//! parallel too, so both cores stay busy on many small files and on one large file alike. Memory
//! is one read window per worker (plus the packs being filled), whatever the file sizes.
//!
//! Change detection: a file whose size, mtime, ctime and inode match its node in the parent
//! snapshot (and whose chunks are all in the index) reuses that chunk list without being read.
//!
//! Errors: a source entry that cannot be read is recorded (the snapshot is then marked incomplete)
//! and the walk goes on; a repository write failure aborts the snapshot.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use rayon::prelude::*;

use super::exclude::Excludes;
use super::metadata_of;
use super::sqlite;
use crate::chunking::{Chunker, READ_WINDOW};
use crate::error::{Error, Result};
use crate::format::pack::BlobKind;
use crate::format::snapshot::SourceError;
use crate::format::tree::{Content, Metadata, Node, Tree};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::index::Index;
use crate::repository::packer::BlobStore;
use crate::repository::Repository;

#[derive(Default)]
pub struct Counts {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub bytes: AtomicU64,
    pub files_read: AtomicU64,
    /// SQLite databases captured through SQLite.
    pub databases: AtomicU64,
}

pub struct Archiver<'a> {
    pub repo: &'a Repository,
    pub index: &'a Index,
    pub store: &'a BlobStore<'a>,
    pub chunker: Chunker,
    pub excludes: &'a Excludes,
    /// Paths never entered (the repository itself, when it lies inside a source).
    pub skip: Vec<PathBuf>,
    pub progress: &'a Progress,
    /// Capture SQLite databases through SQLite, waiting up to this long for a lock; `None` stores
    /// them as raw files (`--raw-sqlite`).
    pub sqlite: Option<Duration>,
    /// Paths given with `--sqlite`: each must be a database.
    pub required_databases: HashSet<PathBuf>,
    pub errors: Mutex<Vec<SourceError>>,
    pub counts: Counts,
    pub prefetch: Prefetch,
}

/// Why reading a file stopped: the source or the repository.
enum FileError {
    Source(std::io::Error),
    Repository(Error),
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        FileError::Source(e)
    }
}

impl<'a> Archiver<'a> {
    /// Records a source entry that could not be read; the snapshot will say it is incomplete.
    pub fn record(&self, path: &Path, message: impl std::fmt::Display) {
        let error = SourceError { path: path.display().to_string(), message: message.to_string() };
        self.progress.warn(&format!("warning: {}: {}", error.path, error.message));
        self.errors.lock().expect("poisoned").push(error);
    }

    /// The parent snapshot's tree for a directory node, if it has one and it can be read. A
    /// damaged parent only costs re-reading: it is never trusted blindly.
    pub fn parent_subtree(&self, parent: Option<&Node>) -> Option<Tree> {
        match parent.map(|n| &n.content) {
            Some(Content::Dir { subtree }) => self.repo.read_tree(self.index, subtree).ok(),
            _ => None,
        }
    }

    /// Archives the directory at `path` and returns its tree id. Every entry is stat'ed first, so
    /// the files that must be read can be handed to [`Prefetch`] before any worker reads one.
    pub fn dir_tree(&self, path: &Path, parent: Option<&Tree>) -> Result<Id> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        match std::fs::read_dir(path) {
            Ok(entries) => {
                for entry in entries {
                    match entry {
                        Ok(entry) => names.push(entry.file_name().as_bytes().to_vec()),
                        Err(e) => self.record(path, format!("listing directory: {e}")),
                    }
                }
            }
            Err(e) => self.record(path, format!("listing directory: {e}")),
        }
        names.sort_unstable();
        let listed: HashSet<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        let mut entries: Vec<Entry<'_>> = names
            .par_iter()
            .filter_map(|name| {
                if self.is_database_companion(path, name, &listed) {
                    return None;
                }
                let path = path.join(OsStr::from_bytes(name));
                let stat = self.stat(&path)?;
                let wal_sibling = listed.contains([name.as_slice(), b"-wal"].concat().as_slice());
                let previous = parent.and_then(|t| t.find(name));
                Some(Entry { path, name: name.clone(), stat, previous, wal_sibling, prefetched: 0 })
            })
            .collect();
        self.prefetch_reads(&mut entries);
        let nodes: Vec<Option<Node>> = entries
            .into_par_iter()
            .map(|entry| {
                let node = self.node_of(&entry.path, entry.name, &entry.stat, entry.previous, entry.wal_sibling);
                self.prefetch.release(entry.prefetched);
                node
            })
            .collect::<Result<_>>()?;
        let tree = Tree { nodes: nodes.into_iter().flatten().collect() };
        self.store_tree(&tree, path)
    }

    /// Asks the kernel to start reading the files of `entries` that will be read (new or
    /// changed), within the prefetch budget.
    fn prefetch_reads(&self, entries: &mut [Entry<'_>]) {
        for entry in entries {
            let meta = &entry.stat;
            let will_read = meta.is_file()
                && meta.len() > 0
                && self.previous_chunks(&entry.path, &metadata_of(meta), entry.previous, entry.wal_sibling).is_none();
            if will_read {
                entry.prefetched = self.prefetch.start(&entry.path, meta.len());
            }
        }
    }

    /// The parent node's chunk list, for a file whose metadata says it is unchanged (a possibly
    /// live database never is). Whether those chunks are all still stored is the caller's check.
    fn previous_chunks<'n>(
        &self,
        path: &Path,
        meta: &Metadata,
        parent: Option<&'n Node>,
        wal_sibling: bool,
    ) -> Option<&'n Vec<Id>> {
        match parent {
            Some(Node { meta: old, content: Content::File { chunks }, .. })
                if metadata_unchanged(old, meta) && !self.may_be_live_database(path, wal_sibling) =>
            {
                Some(chunks)
            }
            _ => None,
        }
    }

    /// Stores a directory's tree blob, refusing one too large to ever be read back.
    pub fn store_tree(&self, tree: &Tree, path: &Path) -> Result<Id> {
        let encoded = tree.encode();
        if encoded.len() > crate::compression::MAX_BLOB_LEN as usize {
            return Err(Error::Invalid(format!(
                "{}: directory listing of {} entries is too large for one tree blob",
                path.display(),
                tree.nodes.len()
            )));
        }
        self.store.store(BlobKind::Tree, &encoded)
    }

    /// Whether `name` is the `-wal`, `-shm` or `-journal` file of a database in the same
    /// directory: the database's captured image includes what they hold, so they are not stored.
    fn is_database_companion(&self, dir: &Path, name: &[u8], listed: &HashSet<&[u8]>) -> bool {
        self.sqlite.is_some()
            && sqlite::companion_of(name).is_some_and(|base| {
                let database = dir.join(OsStr::from_bytes(base));
                listed.contains(base)
                    && !self.excludes.excludes(&database)
                    && std::fs::symlink_metadata(&database).is_ok_and(|m| m.is_file())
                    && sqlite::is_database(&database)
            })
    }

    /// Archives one entry of any type as a node called `name`. `None` when the entry is
    /// excluded, vanished, or could not be read (the last is recorded). `wal_sibling`: a
    /// `<name>-wal` file sits beside it, so a database's content may have changed even where its
    /// own metadata did not.
    pub fn node(&self, path: &Path, name: Vec<u8>, parent: Option<&Node>, wal_sibling: bool) -> Result<Option<Node>> {
        match self.stat(path) {
            Some(stat) => self.node_of(path, name, &stat, parent, wal_sibling),
            None => Ok(None),
        }
    }

    /// The entry's metadata, or `None` when it is excluded, vanished, or cannot be stat'ed (the
    /// last is recorded).
    fn stat(&self, path: &Path) -> Option<std::fs::Metadata> {
        if self.excludes.excludes(path) || self.skip.iter().any(|s| s == path) {
            return None;
        }
        match std::fs::symlink_metadata(path) {
            Ok(stat) => Some(stat),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None, // deleted meanwhile
            Err(e) => {
                self.record(path, e);
                None
            }
        }
    }

    /// Archives the entry at `path`, whose metadata is `stat`, as a node called `name`.
    fn node_of(
        &self,
        path: &Path,
        name: Vec<u8>,
        stat: &std::fs::Metadata,
        parent: Option<&Node>,
        wal_sibling: bool,
    ) -> Result<Option<Node>> {
        let mut meta = metadata_of(stat);
        let kind = stat.file_type();
        let content = if kind.is_dir() {
            let previous = self.parent_subtree(parent);
            let subtree = self.dir_tree(path, previous.as_ref())?;
            self.counts.dirs.fetch_add(1, Relaxed);
            Content::Dir { subtree }
        } else if kind.is_file() {
            match self.file_chunks(path, &meta, parent, wal_sibling)? {
                Some((chunks, size)) => {
                    meta.size = size;
                    self.counts.files.fetch_add(1, Relaxed);
                    self.counts.bytes.fetch_add(size, Relaxed);
                    Content::File { chunks }
                }
                None => return Ok(None),
            }
        } else if kind.is_symlink() {
            match std::fs::read_link(path) {
                Ok(target) => Content::Symlink { target: target.as_os_str().as_bytes().to_vec() },
                Err(e) => {
                    self.record(path, format!("reading symlink: {e}"));
                    return Ok(None);
                }
            }
        } else if kind.is_fifo() {
            Content::Fifo
        } else if kind.is_socket() {
            Content::Socket
        } else if kind.is_char_device() {
            Content::CharDevice { rdev: stat.rdev() }
        } else if kind.is_block_device() {
            Content::BlockDevice { rdev: stat.rdev() }
        } else {
            self.record(path, "unknown file type");
            return Ok(None);
        };
        Ok(Some(Node { name, meta, content }))
    }

    /// The chunk ids and length of a file's content, reusing the parent's list when the file is
    /// unchanged, and reading SQLite databases through SQLite. `None` if the file could not be
    /// read (recorded).
    fn file_chunks(
        &self,
        path: &Path,
        meta: &Metadata,
        parent: Option<&Node>,
        wal_sibling: bool,
    ) -> Result<Option<(Vec<Id>, u64)>> {
        let must_be_database = self.required_databases.contains(path);
        if let Some(chunks) = self.previous_chunks(path, meta, parent, wal_sibling) {
            if chunks.iter().all(|id| self.store.contains(id)) {
                self.progress.file_done(meta.size);
                return Ok(Some((chunks.clone(), meta.size)));
            }
        }
        let file = match open_for_reading(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                self.record(path, e);
                return Ok(None);
            }
        };
        if let Some(timeout) = self.sqlite {
            if sqlite::has_header(&file) {
                drop(file);
                return self.database_chunks(path, timeout);
            }
        }
        if must_be_database && !sqlite::has_header(&file) {
            self.record(path, "not an SQLite database");
            return Ok(None);
        }
        let mut ids = Vec::new();
        let read = self.chunker.for_each_window(file, READ_WINDOW, meta.size as usize, |window, chunks| {
            let stored: Vec<Id> = chunks
                .par_iter()
                .map(|range| self.store.store(BlobKind::Data, &window[range.clone()]))
                .collect::<Result<_>>()
                .map_err(FileError::Repository)?;
            ids.extend(stored);
            self.progress.add_bytes(chunks.last().map_or(0, |c| c.end) as u64);
            Ok(())
        });
        match read {
            Ok(size) => {
                self.counts.files_read.fetch_add(1, Relaxed);
                self.progress.file_done(0);
                Ok(Some((ids, size)))
            }
            Err(FileError::Source(e)) => {
                self.record(path, format!("reading: {e}"));
                Ok(None)
            }
            Err(FileError::Repository(e)) => Err(e),
        }
    }
}

impl Archiver<'_> {
    /// Whether the file may be a live database, whose content can change without its metadata.
    fn may_be_live_database(&self, path: &Path, wal_sibling: bool) -> bool {
        self.sqlite.is_some() && (wal_sibling || self.required_databases.contains(path))
    }

    /// Captures a live database through SQLite (src/source/sqlite.rs), one chunk per page.
    fn database_chunks(&self, path: &Path, timeout: Duration) -> Result<Option<(Vec<Id>, u64)>> {
        let mut ids = Vec::new();
        let mut size = 0u64;
        let captured = sqlite::capture(path, timeout, READ_WINDOW, |batch, page_size| {
            let stored: Vec<Id> = batch
                .par_chunks(page_size)
                .map(|chunk| self.store.store(BlobKind::Data, chunk))
                .collect::<Result<_>>()?;
            ids.extend(stored);
            size += batch.len() as u64;
            self.progress.add_bytes(batch.len() as u64);
            Ok(())
        });
        match captured {
            Ok(_) => {
                self.counts.files_read.fetch_add(1, Relaxed);
                self.counts.databases.fetch_add(1, Relaxed);
                self.progress.file_done(0);
                Ok(Some((ids, size)))
            }
            Err(sqlite::CaptureError::Sink(e)) => Err(e),
            Err(e) => {
                self.record(path, e);
                Ok(None)
            }
        }
    }
}

/// A directory entry between its stat and its archiving.
struct Entry<'p> {
    path: PathBuf,
    name: Vec<u8>,
    stat: std::fs::Metadata,
    previous: Option<&'p Node>,
    wal_sibling: bool,
    /// Bytes of the prefetch budget this entry holds until it is archived.
    prefetched: u64,
}

/// A file whose size, mtime, ctime and inode match its parent node is taken as unchanged.
fn metadata_unchanged(old: &Metadata, new: &Metadata) -> bool {
    old.size == new.size
        && (old.mtime_sec, old.mtime_nsec) == (new.mtime_sec, new.mtime_nsec)
        && (old.ctime_sec, old.ctime_nsec) == (new.ctime_sec, new.ctime_nsec)
        && old.ino == new.ino
}

/// File content the kernel may be asked to read ahead of the workers: page cache, not memory of
/// this process. Each worker reads one file at a time, so on a cold disk small files would be
/// served one seek at a time; asking for a directory's files up front keeps the disk's queue
/// full (on the toolchain benchmark, a cold first snapshot takes half the time).
const PREFETCH_BUDGET: u64 = 256 << 20;

/// Read-ahead of whole files with `posix_fadvise(WILLNEED)`, bounded by [`PREFETCH_BUDGET`] of
/// files announced and not yet archived, so a huge directory cannot flood the page cache.
#[derive(Default)]
pub struct Prefetch {
    ahead: AtomicU64,
}

impl Prefetch {
    /// Starts reading the file into the page cache if the budget allows; returns the bytes of
    /// budget taken, to be given back with [`Prefetch::release`] once the file is archived.
    fn start(&self, path: &Path, len: u64) -> u64 {
        let reserved =
            self.ahead.fetch_update(Relaxed, Relaxed, |ahead| (ahead + len <= PREFETCH_BUDGET).then_some(ahead + len));
        if reserved.is_err() {
            return 0;
        }
        // Non-blocking: a FIFO or a file under a lease is simply not prefetched.
        let flags = libc::O_NOATIME | libc::O_NONBLOCK | libc::O_NOFOLLOW;
        let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(path);
        if let Ok(file) = open(flags).or_else(|_| open(flags & !libc::O_NOATIME)) {
            crate::disk::will_need(&file, len);
        }
        len
    }

    fn release(&self, reserved: u64) {
        if reserved > 0 {
            self.ahead.fetch_sub(reserved, Relaxed);
        }
    }
}

/// Opens a file that was a regular file when it was stat'ed: without updating the access time
/// where the kernel allows it (owner or root), never through a symlink, and without hanging
/// should it have been replaced by a FIFO meanwhile (it must still be a regular file). A file
/// under a lease (Samba, NFS delegations) is waited for, as a plain open would.
fn open_for_reading(path: &Path) -> std::io::Result<File> {
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags | libc::O_NOFOLLOW).open(path);
    let file = match open(libc::O_NOATIME | libc::O_NONBLOCK).or_else(|_| open(libc::O_NONBLOCK)) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open(0)?,
        other => other?,
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    // Reads block as usual from here (some FUSE file systems honour O_NONBLOCK on reads).
    // SAFETY: a valid descriptor; F_GETFL/F_SETFL only read and change its status flags.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}
