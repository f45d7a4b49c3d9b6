//! Walks a directory tree into the repository: each directory becomes a tree blob, each file a
//! list of content chunk ids, bottom-up, so an unchanged subtree re-encodes to the id it had
//! before and costs nothing.
//!
//! Parallelism: the entries of a directory are processed with rayon, subdirectories recursing
//! into the same pool, and the chunks of one window of a large file are hashed and compressed in
//! parallel too, so both cores stay busy on many small files and on one large file alike. Memory
//! is one read window per worker (plus the packs being filled), whatever the file sizes.
//!
//! Nothing outside the source: below a source root every entry is reached through its
//! directory's descriptor and never through a symlink ([`super::nofollow`]). An entry replaced
//! between its listing and its opening is looked at again (a file replaced by a rename is
//! stored as it is now), except a directory, which is reported and not stored: a swapped
//! directory is never followed. A directory's descriptor is closed as soon as its last entry
//! has been opened, so a chain of directories holds few descriptors however deep it is.
//!
//! Depth: the walk recurses once per directory level, so it stops at [`MAX_DEPTH`] levels below
//! the snapshot's root; the deepest directory is stored without its entries, and reported.
//!
//! Nothing torn: a file's status (size, mtime, ctime, inode) is taken through its descriptor
//! before and after each read, and only a read during which it held still, begun at least
//! [`IN_FLIGHT`] after the file was last modified, is taken as is ([`settling`]). A file that
//! changes during every one of [`READ_ATTEMPTS`] reads is stored as last read, with the length
//! that was read, and reported (borg's "file changed while we backed it up").
//!
//! Change detection: a file whose size, mtime, ctime and inode match its node in the parent
//! snapshot (and whose chunks are all in the index) reuses that chunk list without being read,
//! unless the parent snapshot reported an error for its path.
//!
//! Extended attributes: read for every entry after its content, through its directory and
//! checked to belong to it ([`super::attributes`]).
//!
//! Errors: a source entry that cannot be read is recorded (the snapshot is then marked incomplete)
//! and the walk goes on; a repository write failure aborts the snapshot.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayon::prelude::*;

use super::exclude::Excludes;
use super::lists::ListWriter;
use super::nofollow::{fstat, Dir, Kind, OpenError, Stat};
use super::sqlite;
use super::walk_options::WalkOptions;
use crate::chunking::{Chunker, READ_WINDOW};
use crate::compression::Dictionary;
use crate::error::{Error, Result};
use crate::format::pack::BlobKind;
use crate::format::snapshot::SourceError;
use crate::format::tree::{ChunkList, Content, Metadata, Node, Tree};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::index::Index;
use crate::repository::packer::BlobStore;
use crate::repository::Repository;

/// The most directory levels a snapshot holds: a path in a snapshot has at most this many
/// components below its root tree. A directory at this level is stored with its metadata and
/// an empty tree, and reported (`not stored: its entries lie deeper than …`).
///
/// Why this many: the walk recurses once per level on a worker's stack, measured at 4.1 KiB
/// per level in a release build and 5.0 KiB in a test build (a 30,000-level chain without the
/// bound overflowed the snapshot's 64 MiB worker stacks, `take_snapshot` in src/backup.rs, at
/// about 15,800 and 13,400 levels). At the bound a chain takes about 5 MiB, so a worker that
/// steals other chains while it waits still has room for a dozen. A branching tree holds one
/// descriptor per level at most (a chain holds a few: a directory is closed once its last entry
/// is opened), well within the open-file limit the binary raises at start. Real trees stay far
/// below: paths this deep pass Linux's PATH_MAX (4096 bytes) once names average three bytes.
pub const MAX_DEPTH: usize = 1024;

/// How often a file that changes while it is read is read again before it is stored as read
/// the last time, and reported.
pub const READ_ATTEMPTS: u32 = 3;

/// How long a write that began before a read may still be copying into the file: a write of
/// tens of MiB into the page cache. Much longer would take from a file written more often (a
/// log) every quiet moment to be read in: it would be reported at every snapshot.
const IN_FLIGHT: Duration = Duration::from_millis(50);

/// How much longer to wait before reading a file whose status shows it modified less than
/// [`IN_FLIGHT`] ago, if it does. A write sets mtime when it begins and copies afterwards, so a
/// read that overlaps a write begun just before the status was taken sees the same status after
/// it and is torn all the same (within one tick of the file system's clock, a second write does
/// not move mtime either). Only a write that has been copying for longer than `IN_FLIGHT` can
/// tear a read that starts once the file is that old. An mtime more than `IN_FLIGHT` ahead (or
/// one no clock can hold) was set by hand, as a write sets the present: no write is waited for.
fn settling(stat: &Stat) -> Option<Duration> {
    let age = std::time::SystemTime::now().duration_since(stat.modified()?);
    match age {
        Ok(age) if age < IN_FLIGHT => Some(IN_FLIGHT - age),
        Err(ahead) if ahead.duration() <= IN_FLIGHT => Some(IN_FLIGHT + ahead.duration()),
        _ => None,
    }
}

/// How often an entry found replaced between its listing and its opening is looked at again.
const REPLACED_ATTEMPTS: u32 = 3;

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
    /// Other file systems, cache directories, marker files ([`super::walk_options`]).
    pub walk: &'a WalkOptions,
    /// Directories never entered, by device and inode (the repository itself, when it lies
    /// inside a source, whichever path leads to it).
    pub skip: HashSet<(u64, u64)>,
    /// Paths (as errors name them) the parent snapshot reported: read again whatever their
    /// metadata says, since what the parent stored for them may be torn.
    pub reread: HashSet<String>,
    pub progress: &'a Progress,
    /// Capture SQLite databases through SQLite, waiting up to this long for a lock; `None` stores
    /// them as raw files (`--raw-sqlite`).
    pub sqlite: Option<Duration>,
    /// Paths given with `--sqlite`: each must be a database.
    pub required_databases: HashSet<PathBuf>,
    /// Follow no symlink among a source path's parents either ([`Dir::open_beneath_root`]).
    pub symlinked_parents_refused: bool,
    pub errors: Mutex<Vec<SourceError>>,
    pub counts: Counts,
    pub prefetch: Prefetch,
}

/// Databases smaller than this are compressed without a dictionary: the dictionary's file would
/// cost more than it saves.
const DICTIONARY_MIN_DATABASE: u64 = 8 << 20;

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

/// Where an entry lies: its name and its directory's location, made into a path only when one
/// is needed (a message, a path pattern), so a deep walk holds a name per level, not a path.
#[derive(Clone, Copy)]
pub struct Location<'a> {
    parent: Option<&'a Location<'a>>,
    /// The entry's name; for a source root, its whole path.
    name: &'a [u8],
}

impl<'a> Location<'a> {
    pub fn root(path: &'a Path) -> Location<'a> {
        Location { parent: None, name: path.as_os_str().as_bytes() }
    }

    fn child(&'a self, name: &'a [u8]) -> Location<'a> {
        Location { parent: Some(self), name }
    }

    pub fn path(&self) -> PathBuf {
        let mut names = vec![self.name];
        let mut at = self;
        while let Some(parent) = at.parent {
            names.push(parent.name);
            at = parent;
        }
        let mut path = PathBuf::new();
        names.iter().rev().for_each(|name| path.push(std::ffi::OsStr::from_bytes(name)));
        path
    }
}

/// What became of one look at an entry.
enum Look {
    Node(Node),
    /// A database stored as it lies beside its hot journal, and the journal.
    WithJournal(Node, Node),
    /// Excluded, vanished, or could not be read (the last is recorded).
    Skip,
    /// Something else stands under its name now.
    Replaced,
}

/// Why a listed file was not opened: [`Look::Skip`] or [`Look::Replaced`].
enum Unopened {
    Skip,
    Replaced,
}

impl From<Unopened> for Look {
    fn from(unopened: Unopened) -> Look {
        match unopened {
            Unopened::Skip => Look::Skip,
            Unopened::Replaced => Look::Replaced,
        }
    }
}

/// What an entry is stored as: its node and, for a database stored as it lies beside its hot
/// journal, the journal's node (named as the walk would have found it).
type Stored = Option<(Node, Option<Node>)>;

impl<'a> Archiver<'a> {
    /// Records a source entry that could not be read; the snapshot will say it is incomplete.
    pub fn record(&self, path: &Path, message: impl std::fmt::Display) {
        // Shown as names are ([`crate::names`]): a crafted name neither drives the terminal nor
        // forges a line of the error list that `cairn log` and `status` print.
        let path = crate::names::shown_path(path).into_owned();
        let error = SourceError { path, message: message.to_string() };
        self.progress.warn(&format!("warning: {}: {}", error.path, error.message));
        self.errors.lock().expect("poisoned").push(error);
    }

    fn record_at(&self, at: &Location<'_>, message: impl std::fmt::Display) {
        self.record(&at.path(), message)
    }

    /// The parent snapshot's tree for a directory node, if it has one and it can be read. A
    /// damaged parent only costs re-reading: it is never trusted blindly.
    pub fn parent_subtree(&self, parent: Option<&Node>) -> Option<Tree> {
        match parent.map(|n| &n.content) {
            Some(Content::Dir { subtree }) => self.repo.read_tree(self.index, subtree).ok(),
            _ => None,
        }
    }

    /// Opens a source root, or the directory of one (`follow`: it may be a symlink), by its
    /// path; symlinks among its parents are followed unless [`Archiver::symlinked_parents_refused`].
    pub fn open_root(&self, path: &Path, follow: bool) -> std::io::Result<Dir> {
        match self.symlinked_parents_refused {
            true => Dir::open_beneath_root(path),
            false => Dir::open(path, follow),
        }
    }

    /// Archives the source root directory at `path` (its parents may be symlinks, itself not),
    /// or the directory `opened` for it, and returns its tree id. One that cannot be opened is
    /// recorded and stored empty.
    pub fn root_tree(&self, path: &Path, opened: Option<Dir>, parent: Option<&Tree>) -> Result<Id> {
        if self.required_databases.contains(path) {
            self.record(path, not_a_database_file(Kind::Dir));
            return self.store_tree(&Tree::default(), path);
        }
        match opened.map_or_else(|| self.open_root(path, false), Ok) {
            Ok(dir) => self.dir_tree(dir, &Location::root(path), 1, parent),
            Err(e) => {
                self.record(path, format!("listing directory: {e}"));
                self.store_tree(&Tree::default(), path)
            }
        }
    }

    /// Archives the source root at `path` as one node called `name`, at `level` in the
    /// snapshot's tree (the root tree's entries are level 1). `None` when it is excluded,
    /// vanished, or could not be read (the last is recorded); a database stored beside its hot
    /// journal brings the journal too. Like `lstat`, a symlink at `path`
    /// is stored as a symlink; symlinks among its parents are followed.
    pub fn root_node(&self, path: &Path, name: Vec<u8>, parent: Option<&Node>, level: usize) -> Result<Vec<Node>> {
        let (Some(directory), Some(leaf)) = (path.parent(), path.file_name()) else {
            self.record(path, "not a file or directory name");
            return Ok(Vec::new());
        };
        let dir = match self.open_root(directory, true) {
            Ok(dir) => dir,
            Err(e) => {
                self.record(path, format!("opening its directory: {e}"));
                return Ok(Vec::new());
            }
        };
        let (directory_at, leaf) = (Location::root(directory), leaf.as_bytes().to_vec());
        let Some(stat) = self.stat(&dir, &directory_at.child(&leaf), &leaf) else {
            return Ok(Vec::new());
        };
        let companion = sqlite::has_needed_companion(&leaf, |name| dir.stat(name).is_ok());
        // A source root is entered whatever file system it is on.
        let entry =
            Entry { dir: Arc::new(dir), name: leaf, stat, previous: parent, companion, prefetched: 0, device: None };
        let Some((node, journal)) = self.entry_node(entry, &directory_at, level)? else { return Ok(Vec::new()) };
        let journal = journal.map(|journal| Node { name: [&name, &b"-journal"[..]].concat(), ..journal });
        Ok([Node { name, ..node }].into_iter().chain(journal).collect())
    }

    /// Archives the open directory `dir` at `at`, whose entries are at `level`, and returns its
    /// tree id. Every entry is stat'ed first, so the files that must be read can be handed to
    /// [`Prefetch`] before any worker reads one.
    fn dir_tree(&self, dir: Dir, at: &Location<'_>, level: usize, parent: Option<&Tree>) -> Result<Id> {
        let mut names = dir.names().unwrap_or_else(|e| {
            self.record_at(at, format!("listing directory: {e}"));
            Vec::new()
        });
        names.sort_unstable();
        self.walk.keep_only_markers(&dir, &mut names);
        let device = self.walk.device_below(&dir);
        let listed: HashSet<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        let dir = Arc::new(dir);
        let mut entries: Vec<Entry<'_>> = names
            .par_iter()
            .filter_map(|name| {
                if self.is_database_companion(&dir, at, name, &listed) {
                    return None;
                }
                let stat = self.stat(&dir, &at.child(name), name)?;
                let companion = sqlite::has_needed_companion(name, |companion| listed.contains(companion));
                let previous = parent.and_then(|t| t.find(name));
                let dir = Arc::clone(&dir);
                Some(Entry { dir, name: name.clone(), stat, previous, companion, prefetched: 0, device })
            })
            .collect();
        self.prefetch_reads(&mut entries, at);
        // From here the entries hold the directory open, each until it no longer needs it.
        drop(dir);
        let stored: Vec<Stored> = entries
            .into_par_iter()
            .map(|entry| {
                let prefetched = entry.prefetched;
                let node = self.entry_node(entry, at, level);
                self.prefetch.release(prefetched);
                node
            })
            .collect::<Result<_>>()?;
        let mut nodes = Vec::with_capacity(stored.len());
        let mut journals = false;
        for (node, journal) in stored.into_iter().flatten() {
            nodes.push(node);
            journals |= journal.is_some();
            nodes.extend(journal);
        }
        if journals {
            in_name_order(&mut nodes);
        }
        let tree = Tree { nodes };
        self.store(&tree, || at.path())
    }

    /// Asks the kernel to start reading the files of `entries` that will be read (new or
    /// changed), within the prefetch budget.
    fn prefetch_reads(&self, entries: &mut [Entry<'_>], dir_at: &Location<'_>) {
        for entry in entries {
            let stat = &entry.stat;
            let will_read = stat.is_file()
                && stat.size() > 0
                && self
                    .previous_chunks(&dir_at.child(&entry.name), &stat.metadata(), entry.previous, entry.companion)
                    .is_none();
            if will_read {
                entry.prefetched = self.prefetch.start(&entry.dir, &entry.name, stat.size());
            }
        }
    }

    /// The parent node's chunk list, for a file whose metadata says it is unchanged (a possibly
    /// live database never is, nor a path the parent snapshot reported). Whether those chunks
    /// are all still stored is the caller's check.
    fn previous_chunks<'n>(
        &self,
        at: &Location<'_>,
        meta: &Metadata,
        parent: Option<&'n Node>,
        companion: bool,
    ) -> Option<&'n ChunkList> {
        match parent {
            Some(Node { meta: old, content: Content::File { chunks }, .. })
                if metadata_unchanged(old, meta)
                    && !self.may_be_live_database(at, companion)
                    && !self.reported_by_parent(at) =>
            {
                Some(chunks)
            }
            _ => None,
        }
    }

    /// Stores a directory's tree blob, refusing one too large to ever be read back.
    pub fn store_tree(&self, tree: &Tree, path: &Path) -> Result<Id> {
        self.store(tree, || path.to_path_buf())
    }

    fn store(&self, tree: &Tree, path: impl FnOnce() -> PathBuf) -> Result<Id> {
        let encoded = tree.encode();
        if encoded.len() > crate::compression::MAX_BLOB_LEN as usize {
            return Err(Error::Invalid(format!(
                "{}: directory listing of {} entries is too large for one tree blob",
                path().display(),
                tree.nodes.len()
            )));
        }
        self.store.store(BlobKind::Tree, &encoded)
    }

    /// Whether `name` is the `-wal`, `-shm` or `-journal` file of a database in the same
    /// directory that is captured (its image includes what they hold) or excluded (they are
    /// part of it, even with `--raw-sqlite`): either way they are not stored.
    fn is_database_companion(&self, dir: &Dir, dir_at: &Location<'_>, name: &[u8], listed: &HashSet<&[u8]>) -> bool {
        sqlite::companion_of(name).is_some_and(|base| {
            listed.contains(base)
                && (self.sqlite.is_some() || self.excluded(&dir_at.child(base)))
                && dir.stat(base).is_ok_and(|stat| stat.is_file())
                && dir.open_file(base, libc::O_NONBLOCK).is_ok_and(|file| sqlite::has_header(&file))
        })
    }

    fn excluded(&self, at: &Location<'_>) -> bool {
        self.excludes.excludes_entry(at.name, || at.path())
    }

    /// The entry `name` of `dir`, at `at`: `None` when it is excluded, the repository, vanished,
    /// or cannot be stat'ed (the last is recorded).
    fn stat(&self, dir: &Dir, at: &Location<'_>, name: &[u8]) -> Option<Stat> {
        if self.excluded(at) {
            return None;
        }
        match dir.stat(name) {
            Ok(stat) if stat.kind() == Kind::Dir && self.skip.contains(&(stat.dev(), stat.ino())) => None,
            Ok(stat) => Some(stat),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None, // deleted meanwhile
            Err(e) => {
                self.record_at(at, e);
                None
            }
        }
    }

    /// Whether `at` was given with `--sqlite`.
    fn must_be_database(&self, at: &Location<'_>) -> bool {
        !self.required_databases.is_empty() && self.required_databases.contains(&at.path())
    }

    /// Archives one listed entry of a directory at `dir_at`, at `level`. An entry replaced
    /// since its listing is looked at again, unless it was listed as a directory.
    fn entry_node(&self, entry: Entry<'_>, dir_at: &Location<'_>, level: usize) -> Result<Stored> {
        let Entry { dir, name, mut stat, previous, companion, device, .. } = entry;
        let at = dir_at.child(&name);
        for _ in 0..REPLACED_ATTEMPTS {
            if stat.kind() != Kind::File && self.must_be_database(&at) {
                // Not followed (a symlink), not walked (a directory), not opened (a FIFO).
                self.record_at(&at, not_a_database_file(stat.kind()));
                return Ok(None);
            }
            if stat.kind() == Kind::Dir && device.is_some_and(|device| device != stat.dev()) {
                return Ok(self.mount_point_node(&name, &at, &stat)?.map(|node| (node, None)));
            }
            if stat.kind() == Kind::Dir {
                return Ok(self.dir_node(dir, &at, &stat, previous, level)?.map(|node| (node, None)));
            }
            let read = match self.leaf_node(&dir, &at, &stat, previous, companion)? {
                Look::Node(node) => Some((node, None)),
                Look::WithJournal(node, journal) => Some((node, Some(journal))),
                Look::Skip => return Ok(None),
                Look::Replaced => None,
            };
            if let Some((node, journal)) = read {
                match self.xattrs(&dir, &name, &stat, || at.path()) {
                    Ok(xattrs) => return Ok(Some((Node { xattrs, ..node }, journal))),
                    Err(OpenError::Replaced) => {}
                    Err(_) => return Ok(None),
                }
            }
            match self.stat(&dir, &at, &name) {
                Some(again) => stat = again,
                None => return Ok(None),
            }
        }
        self.record_at(&at, "replaced again and again while being read: not stored");
        Ok(None)
    }

    /// Archives the directory listed as `stat` at `at`, at `level`, opening it through its
    /// parent `dir` (released before descending).
    fn dir_node(
        &self,
        dir: Arc<Dir>,
        at: &Location<'_>,
        stat: &Stat,
        previous: Option<&Node>,
        level: usize,
    ) -> Result<Option<Node>> {
        let xattrs = match self.xattrs(&dir, at.name, stat, || at.path()) {
            Ok(xattrs) => xattrs,
            Err(OpenError::Replaced) => {
                self.record_at(at, "replaced during the snapshot (it was listed as a directory): not stored");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        let subtree = if level >= MAX_DEPTH {
            drop(dir);
            let message =
                format!("not stored: its entries lie deeper than {MAX_DEPTH} levels below the snapshot's root");
            self.record_at(at, message);
            self.store(&Tree::default(), || at.path())?
        } else {
            let opened = dir.open_dir(at.name, stat);
            drop(dir);
            match opened {
                Ok(child) => {
                    let previous = self.parent_subtree(previous);
                    self.dir_tree(child, at, level + 1, previous.as_ref())?
                }
                Err(OpenError::Gone) => return Ok(None), // deleted meanwhile
                Err(OpenError::Replaced) => {
                    self.record_at(at, "replaced during the snapshot (it was listed as a directory): not stored");
                    return Ok(None);
                }
                Err(OpenError::Io(e)) => {
                    self.record_at(at, format!("listing directory: {e}"));
                    self.store(&Tree::default(), || at.path())?
                }
            }
        };
        self.counts.dirs.fetch_add(1, Relaxed);
        Ok(Some(Node { name: at.name.to_vec(), meta: stat.metadata(), content: Content::Dir { subtree }, xattrs }))
    }

    /// Archives an entry other than a directory, listed as `stat`.
    fn leaf_node(
        &self,
        dir: &Dir,
        at: &Location<'_>,
        stat: &Stat,
        previous: Option<&Node>,
        companion: bool,
    ) -> Result<Look> {
        let content = match stat.kind() {
            Kind::File => return self.file_node(dir, at, stat, previous, companion),
            Kind::Symlink => match dir.read_link(at.name) {
                Ok(target) => Content::Symlink { target },
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Look::Replaced), // not a symlink now
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Look::Skip),
                Err(e) => {
                    self.record_at(at, format!("reading symlink: {e}"));
                    return Ok(Look::Skip);
                }
            },
            Kind::Fifo => Content::Fifo,
            Kind::Socket => Content::Socket,
            Kind::CharDevice => Content::CharDevice { rdev: stat.rdev() },
            Kind::BlockDevice => Content::BlockDevice { rdev: stat.rdev() },
            Kind::Dir => return Ok(Look::Replaced), // a directory is looked at by `dir_node`
            Kind::Unknown => {
                self.record_at(at, "unknown file type");
                return Ok(Look::Skip);
            }
        };
        Ok(Look::Node(Node { name: at.name.to_vec(), meta: stat.metadata(), content, xattrs: Vec::new() }))
    }

    /// Archives a regular file listed as `stat`: reusing the parent's chunk list when it is
    /// unchanged, reading SQLite databases through SQLite, and otherwise reading it until one
    /// read sees it hold still.
    fn file_node(
        &self,
        dir: &Dir,
        at: &Location<'_>,
        stat: &Stat,
        previous: Option<&Node>,
        companion: bool,
    ) -> Result<Look> {
        let listed = stat.metadata();
        if let Some(chunks) = self.previous_chunks(at, &listed, previous, companion) {
            if self.lists().all_stored(chunks) {
                self.progress.file_done(listed.size);
                return Ok(Look::Node(self.node(at, listed, chunks.clone())));
            }
        }
        let (file, opened) = match self.open_listed(dir, at, stat) {
            Ok(opened) => opened,
            Err(unopened) => return Ok(unopened.into()),
        };
        if let Some(timeout) = self.sqlite {
            if sqlite::has_header(&file) {
                drop(file);
                return self.database_node(dir, at, stat, timeout, previous);
            }
        }
        if self.must_be_database(at) && !sqlite::has_header(&file) {
            self.record_at(at, "not an SQLite database");
            return Ok(Look::Skip);
        }
        self.read_file(&file, opened, at, previous)
    }

    /// Opens the regular file listed as `stat`, with its status as opened; else what to make of
    /// it (vanished, replaced, or unreadable and recorded).
    fn open_listed(&self, dir: &Dir, at: &Location<'_>, stat: &Stat) -> std::result::Result<(File, Stat), Unopened> {
        let file = match open_for_reading(dir, at.name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unopened::Skip),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Unopened::Replaced), // a symlink now
            Err(e) => {
                self.record_at(at, e);
                return Err(Unopened::Skip);
            }
        };
        match fstat(&file) {
            Ok(opened) if opened.is_file() && opened.same_file(stat) => Ok((file, opened)),
            Ok(_) => Err(Unopened::Replaced),
            Err(e) => {
                self.record_at(at, e);
                Err(Unopened::Skip)
            }
        }
    }

    /// Reads an open regular file's bytes as they lie, until one read sees it hold still.
    fn read_file(&self, file: &File, opened: Stat, at: &Location<'_>, previous: Option<&Node>) -> Result<Look> {
        Ok(match self.read_until_still(file, opened, at)? {
            Some((chunks, status, len)) => {
                self.counts.files_read.fetch_add(1, Relaxed);
                self.progress.file_done(0);
                Look::Node(self.file(at, Metadata { size: len, ..status.metadata() }, chunks, previous)?)
            }
            None => Look::Skip,
        })
    }

    /// A database with a hot journal cannot be read through SQLite: reading would roll the
    /// journal back, writing the source ([`sqlite::CaptureError::HotJournal`]). The journal and
    /// the database are stored as they lie instead, as `--raw-sqlite` stores them, and restored
    /// as plain bytes; SQLite rolls the journal back when the restored database is first opened,
    /// as it would have here. The journal is read first and looked at again once the database
    /// is read, so a rollback meanwhile (which writes the database and removes or clears the
    /// journal) is seen: the database is then read through SQLite again.
    fn hot_database(&self, dir: &Dir, at: &Location<'_>, stat: &Stat, previous: Option<&Node>) -> Result<Look> {
        let journal_name = [at.name, b"-journal"].concat();
        let journal_at = Location { parent: at.parent, name: &journal_name };
        let raw = |at: &Location<'_>, stat: &Stat, previous| match self.open_listed(dir, at, stat) {
            Ok((file, opened)) => self.read_file(&file, opened, at, previous),
            Err(unopened) => Ok(unopened.into()),
        };
        let Some(journal_stat) = dir.stat(&journal_name).ok().filter(Stat::is_file) else {
            return Ok(Look::Replaced); // rolled back meanwhile: read through SQLite
        };
        let journal_file = dir.open_file(&journal_name, libc::O_NONBLOCK);
        if journal_file.is_ok_and(|file| sqlite::names_a_super_journal(&file, journal_stat.size())) {
            // Of a transaction over several databases: SQLite rolls it back only while the
            // super-journal it names exists, which a restore elsewhere may not have (and one
            // planted names any file). Stored, the pair could come back half-written.
            self.record_at(at, sqlite::CaptureError::HotJournal(crate::names::shown(&journal_name).into_owned()));
            return Ok(Look::Skip);
        }
        let journal = match raw(&journal_at, &journal_stat, None)? {
            Look::Node(journal) => journal,
            // Vanished (rolled back meanwhile), or unreadable and recorded.
            Look::Skip if dir.stat(&journal_name).is_err() => return Ok(Look::Replaced),
            other => return Ok(other),
        };
        let database = match raw(at, stat, previous)? {
            Look::Node(database) => database,
            other => return Ok(other),
        };
        if !dir.stat(&journal_name).is_ok_and(|again| metadata_unchanged(&journal.meta, &again.metadata())) {
            return Ok(Look::Replaced);
        }
        let xattrs = match self.xattrs(dir, &journal_name, &journal_stat, || journal_at.path()) {
            Ok(xattrs) => xattrs,
            Err(OpenError::Replaced) => return Ok(Look::Replaced),
            Err(_) => Vec::new(), // recorded; the journal is still needed beside its database
        };
        self.progress.warn(&format!(
            "warning: {}: has a hot journal (left by an interrupted transaction): stored with it as both lie, \
             not read through SQLite; SQLite rolls the journal back when the restored database is first opened",
            crate::names::shown_path(&at.path())
        ));
        Ok(Look::WithJournal(database, Node { xattrs, ..journal }))
    }

    /// A file node for chunks just read, its list inline or in list blobs, patched against the
    /// `previous` node's where that pays ([`super::lists`]).
    fn file(&self, at: &Location<'_>, meta: Metadata, chunks: Vec<Id>, previous: Option<&Node>) -> Result<Node> {
        let parent = match previous {
            Some(Node { content: Content::File { chunks }, .. }) => Some(chunks),
            _ => None,
        };
        Ok(self.node(at, meta, self.lists().content(chunks, parent)?))
    }

    /// A file node, counted.
    fn node(&self, at: &Location<'_>, meta: Metadata, chunks: ChunkList) -> Node {
        self.counts.files.fetch_add(1, Relaxed);
        self.counts.bytes.fetch_add(meta.size, Relaxed);
        Node { name: at.name.to_vec(), meta, content: Content::File { chunks }, xattrs: Vec::new() }
    }

    fn lists(&self) -> ListWriter<'_> {
        ListWriter { repo: self.repo, index: self.index, store: self.store }
    }

    /// Reads an open file into chunks up to [`READ_ATTEMPTS`] times, until its status (through
    /// the descriptor) is the same after a read as before it and the read got exactly its size.
    /// Returns the chunks, the status before the read they came from, and its length; a file
    /// that changed during every read is returned as last read, and recorded. `None` when it
    /// could not be read (recorded).
    fn read_until_still(&self, file: &File, opened: Stat, at: &Location<'_>) -> Result<Option<(Vec<Id>, Stat, u64)>> {
        let mut before = opened;
        let mut last = None;
        // Reads during which the file changed, and reads it held still for that began too soon
        // after a change (read again once it has settled: they do not count as changes).
        let (mut changed, mut early) = (0, 0);
        while changed < READ_ATTEMPTS && early < READ_ATTEMPTS {
            let again = last.is_some();
            let rewound = if again { (&*file).seek(SeekFrom::Start(0)).map(|_| ()) } else { Ok(()) };
            let looked = rewound.and_then(|()| match settling(&before) {
                Some(wait) => {
                    std::thread::sleep(wait);
                    fstat(file)
                }
                None if again => fstat(file),
                None => Ok(before),
            });
            before = match looked {
                Ok(status) => status,
                Err(e) => {
                    self.record_at(at, format!("reading: {e}"));
                    return Ok(None);
                }
            };
            let settled = settling(&before).is_none();
            let (chunks, len) = match self.read_chunks(file, &before) {
                Ok(read) => read,
                Err(FileError::Source(e)) => {
                    self.record_at(at, format!("reading: {e}"));
                    return Ok(None);
                }
                Err(FileError::Repository(e)) => return Err(e),
            };
            let still = fstat(file).is_ok_and(|after| len == before.size() && before.unchanged(&after));
            if still && settled {
                return Ok(Some((chunks, before, len)));
            }
            last = Some((chunks, before, len));
            if still {
                early += 1;
            } else {
                changed += 1;
            }
        }
        let message = match changed {
            READ_ATTEMPTS => format!("changed while being read, {READ_ATTEMPTS} times: stored as last read, possibly inconsistent"),
            _ => format!("modified again within {IN_FLIGHT:?} before each of {READ_ATTEMPTS} reads: stored as last read, possibly inconsistent"),
        };
        self.record_at(at, message);
        Ok(last)
    }

    /// Reads at most `status.size()` bytes of `file` from where it stands (its start), storing
    /// its chunks; returns their ids and the bytes read. Never more than the size: a file
    /// growing faster than it is read cannot keep the read going. A file with holes is read
    /// without them ([`super::holes`]).
    fn read_chunks(&self, file: &File, status: &Stat) -> std::result::Result<(Vec<Id>, u64), FileError> {
        let size = status.size();
        let reader: Box<dyn Read + '_> = match super::holes::sparse(file, size, status.blocks()) {
            true => Box::new(super::holes::Reader::new(file, size)),
            false => Box::new(file.take(size)),
        };
        let mut ids = Vec::new();
        // The file's chunks go to this worker's data pack, whoever compresses them.
        let lane = self.store.lane();
        let read =
            self.chunker.for_each_window::<_, FileError>(reader, READ_WINDOW, size as usize, |window, chunks| {
                let stored: Vec<Id> = chunks
                    .par_iter()
                    .map(|range| self.store.store_in(lane, BlobKind::Data, &window[range.clone()], None))
                    .collect::<Result<_>>()
                    .map_err(FileError::Repository)?;
                ids.extend(stored);
                self.progress.add_bytes(chunks.last().map_or(0, |c| c.end) as u64);
                Ok(())
            })?;
        Ok((ids, read))
    }
}

impl Archiver<'_> {
    /// Whether the parent snapshot reported an error for the entry at `at`.
    fn reported_by_parent(&self, at: &Location<'_>) -> bool {
        !self.reread.is_empty() && self.reread.contains(&at.path().display().to_string())
    }

    /// Whether the file may be a live database, whose content can change without its metadata
    /// (`companion`: a `-wal` or `-journal` lies beside it; a database stored beside its hot
    /// journal must be read again, with that journal, however unchanged it looks).
    fn may_be_live_database(&self, at: &Location<'_>, companion: bool) -> bool {
        self.sqlite.is_some()
            && (companion || (!self.required_databases.is_empty() && self.required_databases.contains(&at.path())))
    }

    /// The dictionary that the first of `ids` stored with one names, if any (one read).
    fn named_by(&self, ids: &[Id]) -> Option<Id> {
        ids.iter().find_map(|id| self.repo.dictionary_of_blob(self.index, id).ok().flatten())
    }

    /// Loads the dictionary `named` that a database's stored pages name. One that cannot be read
    /// leaves those pages unreadable, and this snapshot reuses them: it is recorded against the
    /// database, so the snapshot is incomplete, never a silent success.
    fn load_named(&self, at: &Location<'_>, named: &Id) -> Option<Arc<Dictionary>> {
        match self.repo.dictionary(named) {
            Ok(dictionary) => Some(dictionary),
            Err(e) => {
                self.record_at(
                    at,
                    format!(
                        "its stored pages need a dictionary that cannot be read ({e}): those pages \
                         cannot be restored; `cairn check --read-data` lists the files they affect"
                    ),
                );
                None
            }
        }
    }

    /// The compression dictionary for a database's pages, from a batch of them, when its previous
    /// snapshot named none: the one that its pages already stored name (a copy of it, snapshotted
    /// under another path), or one trained on the batch if some of its pages are new and they
    /// compress at all. `None` while every page of the batches so far was stored already: the
    /// next batch decides. `lost`: a dictionary they name was found unreadable already.
    fn choose_dictionary(
        &self,
        at: &Location<'_>,
        batch: &[u8],
        page_size: usize,
        lost: bool,
    ) -> Result<Option<Option<Arc<Dictionary>>>> {
        let hasher = self.repo.hasher();
        let ids: Vec<Id> = batch.chunks(page_size).map(|page| hasher.id(page)).collect();
        let stored: Vec<Id> = ids.iter().filter(|id| self.store.contains(id)).copied().collect();
        if !lost {
            if let Some(named) = self.named_by(&stored) {
                return Ok(Some(self.load_named(at, &named)));
            }
        }
        if stored.len() == ids.len() {
            return Ok(None);
        }
        // Pages that zstd cannot shrink (already compressed or encrypted data) would be stored
        // raw whatever the dictionary: training one would only add its file, every snapshot.
        let sample = &batch[..batch.len().min(64 * page_size)];
        let level = self.repo.config().compression_level;
        let shrunk: usize =
            sample.chunks(page_size).map(|page| crate::compression::compress(page, level).1.len()).sum();
        if shrunk * 10 > sample.len() * 9 {
            return Ok(Some(None));
        }
        match Dictionary::train(batch, page_size) {
            Some(bytes) => Ok(Some(Some(self.repo.add_dictionary(&bytes)?))),
            None => Ok(Some(None)),
        }
    }

    /// Captures a live database through SQLite (src/source/sqlite.rs), one chunk per page,
    /// opened through `dir`'s descriptor. Its metadata is the listing's.
    fn database_node(
        &self,
        dir: &Dir,
        at: &Location<'_>,
        stat: &Stat,
        timeout: Duration,
        previous: Option<&Node>,
    ) -> Result<Look> {
        let listed = stat.metadata();
        let mut ids = Vec::new();
        let mut size = 0u64;
        let identity = (listed.dev, listed.ino);
        // A database large enough to be worth a dictionary gets one (store-format/dictionary.md):
        // the one its previous snapshot's pages name, else one chosen from its first pages.
        let mut dictionary = None;
        let mut chosen = listed.size < DICTIONARY_MIN_DATABASE;
        let mut lost = false;
        if let (false, Some(Node { content: Content::File { chunks }, .. })) = (chosen, previous) {
            if let Some(named) = self.repo.chunk_list(self.index, chunks).ok().and_then(|ids| self.named_by(&ids)) {
                dictionary = self.load_named(at, &named);
                (chosen, lost) = (dictionary.is_some(), dictionary.is_none());
            }
        }
        let lane = self.store.lane();
        let captured = sqlite::capture(dir, at.name, identity, timeout, READ_WINDOW, |batch, page_size| {
            if !chosen {
                if let Some(choice) = self.choose_dictionary(at, batch, page_size, lost)? {
                    (dictionary, chosen) = (choice, true);
                }
            }
            let stored: Vec<Id> = batch
                .par_chunks(page_size)
                .map(|chunk| self.store.store_in(lane, BlobKind::Data, chunk, dictionary.as_deref()))
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
                Ok(Look::Node(self.file(at, Metadata { size, ..listed }, ids, previous)?))
            }
            Err(sqlite::CaptureError::Sink(e)) => Err(e),
            Err(sqlite::CaptureError::HotJournal(_)) => self.hot_database(dir, at, stat, previous),
            Err(e) => {
                self.record_at(at, e);
                Ok(Look::Skip)
            }
        }
    }
}

/// Puts a tree's nodes in name order once a database stored beside its hot journal brought the
/// journal, whose name may not follow the database's, and which may be there twice (the walk
/// kept it too, its database not looking like one when it was listed, or it is a source of its
/// own): the first, read with its database, stays.
pub fn in_name_order(nodes: &mut Vec<Node>) {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.dedup_by(|later, first| later.name == first.name);
}

/// What a path given with `--sqlite` that is `kind`, not a regular file, is reported as.
fn not_a_database_file(kind: Kind) -> String {
    format!("not an SQLite database but {}: name the database file itself", kind.described())
}

/// A directory entry between its stat and its archiving.
struct Entry<'p> {
    /// The directory it is listed in, held open until the entry is opened.
    dir: Arc<Dir>,
    name: Vec<u8>,
    stat: Stat,
    previous: Option<&'p Node>,
    companion: bool,
    /// Bytes of the prefetch budget this entry holds until it is archived.
    prefetched: u64,
    /// With `--one-file-system`, the device of its directory: a directory on another is a mount
    /// point, stored empty. `None` for a source root, which is always entered.
    device: Option<u64>,
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
    fn start(&self, dir: &Dir, name: &[u8], len: u64) -> u64 {
        let reserved =
            self.ahead.fetch_update(Relaxed, Relaxed, |ahead| (ahead + len <= PREFETCH_BUDGET).then_some(ahead + len));
        if reserved.is_err() {
            return 0;
        }
        // Non-blocking: a FIFO or a file under a lease is simply not prefetched.
        let flags = libc::O_NOATIME | libc::O_NONBLOCK;
        if let Ok(file) = dir.open_file(name, flags).or_else(|_| dir.open_file(name, flags & !libc::O_NOATIME)) {
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

/// Opens for reading, waiting as a plain open would, the file a lease holds (`O_NONBLOCK` gave
/// `EWOULDBLOCK`), through a descriptor of that very inode (`O_PATH`, reopened through
/// `/proc/self/fd`): a blocking open by name could meet a FIFO swapped in meanwhile and hang.
fn wait_for_lease(located: &File) -> std::io::Result<File> {
    if !located.metadata()?.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    let again = |flags| {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new().read(true).custom_flags(flags).open(format!("/proc/self/fd/{}", located.as_raw_fd()))
    };
    again(libc::O_NOATIME).or_else(|_| again(0))
}

/// Opens the entry `name` of `dir`, listed as a regular file, for reading: without updating the
/// access time where the kernel allows it (owner or root), never through a symlink, and without
/// hanging should it have been replaced by a FIFO meanwhile (the caller checks what it got). A
/// file under a lease (Samba, NFS delegations) is waited for, as a plain open would.
fn open_for_reading(dir: &Dir, name: &[u8]) -> std::io::Result<File> {
    let open = |flags| dir.open_file(name, flags);
    let file = match open(libc::O_NOATIME | libc::O_NONBLOCK).or_else(|_| open(libc::O_NONBLOCK)) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_for_lease(&open(libc::O_PATH)?)?,
        other => other?,
    };
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
