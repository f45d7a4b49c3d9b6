//! Restoring a snapshot (or parts of it) into a target directory.
//!
//! Files are written in parallel, each chunk verified against its id as it is read, so a damaged
//! repository can never restore wrong bytes silently: the damaged file is reported and every other
//! file still restores. Hard links are made after all content is written; directory metadata is
//! applied last, deepest first, because creating entries changes a directory's mtime and a
//! read-only directory would refuse the entries still to come.
//!
//! Nothing below the target is reached by path. Every entry is created, replaced or changed
//! through its parent directory's descriptor without following a symlink ([`crate::fs_at`]),
//! so whatever was planted below the target, before the restore or while it runs, is replaced
//! (a non-directory where the snapshot has an entry) or fails that entry, and nothing is ever
//! written outside. Only the target itself is opened by its path: it is the user's choice. A
//! database is checked and renamed into place from a private directory ([`database`]), never
//! by a name that others can swap. A directory that already stood in the target and is open to
//! anyone its snapshot metadata closes it to is closed while restore fills it
//! ([`Restorer::close_reused`]).
//!
//! The walk is [`crate::walk::Parallel`] (a drill's check of what restore wrote walks the same
//! way): no walk recurses in proportion to depth. Below [`crate::walk::ROUND_DEPTH`] levels a
//! directory is left for a later round that starts from it, so a crafted tree 100,000 levels
//! deep costs rounds, not stack, and restores like any other. From an object store, the blobs
//! are read in the order of a plan ([`plan`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::snapshot::{Snapshot, SourceError};
use crate::format::tree::{Content, Metadata, Node, Xattr};
use crate::fs_at::{set_metadata_fd, stat_fd, Dir, Place};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::reader::PlannedReads;
use crate::repository::Indexed;
use crate::source::sqlite;
use crate::walk::{InParallel, Parallel};

mod attributes;
mod database;
pub mod in_place;
mod plan;
mod sparse;
mod writes;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (relative to its root); empty restores everything.
    pub includes: Vec<Vec<u8>>,
    /// Leave existing files whose content already matches the snapshot (their metadata is still
    /// restored), so a restore into a non-empty target writes only what differs. A file with
    /// more than one name is always written anew ([`Restorer::keep_identical`]).
    pub skip_identical: bool,
    /// Leave aligned blocks of zeros in files as holes ([`sparse`]).
    pub sparse: bool,
    /// Stop once the target's file system has fewer bytes free than this (a drill's scratch
    /// directory must never fill the disk it shares with the services it serves): looked at
    /// every [`LOOK_EVERY`] bytes written, a file counting a block at least. The restore then
    /// fails with [`Error::NoSpace`].
    pub keep_free: Option<u64>,
    /// Set (by a signal handler, say) to stop early: entries not yet begun are left out, and
    /// the restore returns [`Error::Interrupted`].
    pub cancel: Option<&'static AtomicBool>,
    /// The target, already open: restored into through it, never by `target`'s path again (a
    /// name that anyone who can write its parent could have pointed elsewhere since it was
    /// checked); `target` then only names it in messages.
    pub opened: Option<Arc<Dir>>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Entries that were not restored, with the reason.
    pub errors: Vec<SourceError>,
    /// Sockets in the snapshot; they are recorded but cannot be restored.
    pub sockets_skipped: u64,
    /// Files left as they were because their content already matched (`skip_identical`).
    pub files_unchanged: u64,
    /// Extended attributes that could not be set for who restores or where (a `security.*` or
    /// `trusted.*` one without privilege, a file system without them): warned of, not errors.
    pub xattrs_not_restored: u64,
}

/// An entry below the target: the directory it is in, and its name there.
type Entry = (Arc<Place>, Vec<u8>);

/// A directory restore made, with the metadata and extended attributes it gets last.
type MadeDir = (Arc<Place>, Metadata, Vec<Xattr>);

struct Restorer<'a> {
    repo: &'a Indexed<'a>,
    /// On an object store: the content's reads, planned by pack ([`PlannedReads`]).
    reads: Option<&'a PlannedReads<'a>>,
    progress: &'a Progress,
    /// The target as given: only for messages.
    target: &'a Path,
    /// The target, open: every entry is reached from it.
    root: Arc<Dir>,
    /// Set with `skip_identical`: cuts existing files to compare them with the snapshot.
    compare: Option<crate::chunking::Chunker>,
    /// Runs of zeros are left as holes ([`RestoreOptions::sparse`]).
    sparse: bool,
    zeros: ZeroRun,
    /// [`RestoreOptions::keep_free`], the bytes written since the free space was last looked
    /// at, how many more before it is looked at again, and whether it fell below.
    keep_free: Option<u64>,
    unlooked: AtomicU64,
    look_every: AtomicU64,
    full: AtomicBool,
    unchanged: AtomicU64,
    /// This process's effective user and group, and whether it is root.
    euid: u32,
    egid: u32,
    as_root: bool,
    /// When this restore began, in Unix seconds: what is older was left by another one.
    started: i64,
    cancel: Option<&'a AtomicBool>,
    errors: Mutex<Vec<SourceError>>,
    /// (dev, inode) of multiply-linked files to the first entry restored for them.
    link_sources: Mutex<HashMap<(u64, u64), Entry>>,
    links: Mutex<Vec<(Entry, (u64, u64))>>,
    /// Multiply-linked files whose content failed: their other names must fail too.
    failed: Mutex<HashSet<(u64, u64)>>,
    /// Directories made, for their metadata at the end.
    dirs: Mutex<Vec<MadeDir>>,
    /// (device, inode) of the directories made under names like those of restore's private
    /// directories for databases, which are never taken for leftovers ([`database`]).
    made_dirs: Mutex<HashSet<(u64, u64)>>,
    /// On an object store, unless with holes: files' blobs are written on threads of their own.
    writes: Option<writes::Writes>,
    /// Files of `writes` whose content failed, removed at the end.
    unfinished: Mutex<Vec<Entry>>,
    files: AtomicU64,
    dir_count: AtomicU64,
    bytes: AtomicU64,
    sockets: AtomicU64,
    xattrs_not_restored: AtomicU64,
}

/// Splits an include path into its components, ignoring `/`, `.` and empty parts.
fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".").collect()
}

/// Finds the node at `path` below the root tree; `None` for the root itself. One tree is read
/// per component, in a loop: a path of any depth costs no stack.
pub fn find_node(repo: &Indexed, root: &Id, path: &[u8], snapshot: &str) -> Result<Option<Node>> {
    let parts = components(path);
    let missing = || Error::NoSuchPath { snapshot: snapshot.to_string(), path: crate::names::shown(path).into_owned() };
    let mut tree = repo.read_tree(root)?;
    let mut found = None;
    for (i, part) in parts.iter().enumerate() {
        let node = tree.find(part).ok_or_else(missing)?.clone();
        if i + 1 < parts.len() {
            match &node.content {
                Content::Dir { subtree } => tree = repo.read_tree(subtree)?,
                _ => return Err(missing()),
            }
        }
        found = Some(node);
    }
    Ok(found)
}

/// A path found in a snapshot ([`locate`]).
#[derive(Debug, Clone)]
pub struct Located {
    /// The path as it was meant: as given, or what its escapes stand for.
    pub meant: Vec<u8>,
    /// Its path in the snapshot's tree.
    pub inside: Vec<u8>,
    /// Its entry; `None` for the tree's root.
    pub node: Option<Node>,
}

/// The node at `path` in `snapshot` ([`find_node`]; `short` names the snapshot in errors), with
/// the path it has in the tree. A snapshot of one directory holds its contents at its root, so
/// where the tree has no such path, the directory's own path (as `cairn snapshot` was given it)
/// names the root and the paths below it the entries below. A path that is the escaped form
/// `cairn ls` shows of a name ([`crate::names::unescape`]) names that name; where the same text
/// is also a name itself (`a\\x41`, holding a backslash), and both exist and differ, the path is
/// refused as ambiguous, never taken to mean one of them.
pub fn locate(repo: &Indexed, snapshot: &Snapshot, path: &[u8], short: &str) -> Result<Located> {
    let found = |meant: &[u8]| {
        locate_exactly(repo, snapshot, meant, short).map(|(inside, node)| Located {
            meant: meant.to_vec(),
            inside,
            node,
        })
    };
    let exact = found(path);
    let Some(unescaped) = crate::names::unescape(path) else { return exact };
    match (exact, found(&unescaped)) {
        (Err(missing @ Error::NoSuchPath { .. }), Err(Error::NoSuchPath { .. })) => Err(missing),
        (Err(Error::NoSuchPath { .. }), decoded) => decoded,
        (exact, Err(Error::NoSuchPath { .. })) => exact,
        (Ok(exact), Ok(decoded)) if exact.inside == decoded.inside => Ok(exact),
        (Ok(_), Ok(_)) => Err(Error::Invalid(format!(
            "{} names two entries of snapshot {short}, which `cairn ls` shows as {} and {}: give one of those",
            crate::names::shown(&unescaped),
            crate::names::shown(path),
            crate::names::shown(&unescaped),
        ))),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn locate_exactly(repo: &Indexed, snapshot: &Snapshot, path: &[u8], short: &str) -> Result<(Vec<u8>, Option<Node>)> {
    match find_node(repo, &snapshot.tree, path, short) {
        Err(missing @ Error::NoSuchPath { .. }) => match snapshot.below_its_path(path) {
            Some(inside) => match find_node(repo, &snapshot.tree, &inside, short) {
                Ok(node) => Ok((inside, node)),
                Err(Error::NoSuchPath { .. }) => Err(missing),
                Err(e) => Err(e),
            },
            None => Err(missing),
        },
        found => found.map(|node| (path.to_vec(), node)),
    }
}

/// The entries to restore: the components of each include with its node (none for the root),
/// without includes inside another one (they would be restored twice, racing).
type Selection = Vec<(Vec<Vec<u8>>, Option<Node>)>;

/// `id` names the snapshot in the error for an include it lacks: the id the user gave or chose,
/// not its root tree's.
fn select(repo: &Indexed, id: &Id, snapshot: &Snapshot, includes: &[Vec<u8>]) -> Result<Selection> {
    if includes.is_empty() {
        return Ok(vec![(Vec::new(), None)]);
    }
    let short = id.short();
    let mut selected = Vec::new();
    for include in includes {
        let Located { inside, node, .. } = locate(repo, snapshot, include, &short)?;
        selected.push((components(&inside).iter().map(|p| p.to_vec()).collect::<Vec<_>>(), node));
    }
    Ok(outermost(selected))
}

/// The selection without entries inside another selected one (or equal to it).
fn outermost(mut selected: Selection) -> Selection {
    // Sorted by components, an entry comes right after the entries it is inside.
    selected.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept: Selection = Vec::new();
    for (parts, node) in selected {
        if !kept.last().is_some_and(|(outer, _)| parts.starts_with(outer)) {
            kept.push((parts, node));
        }
    }
    kept
}

/// Restores the snapshot `id` (its manifest `snapshot`) as `options` say.
pub fn restore(
    repo: &Indexed,
    id: &Id,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreSummary> {
    // Resolve every include before writing anything, so a typo changes nothing.
    let selected = select(repo, id, snapshot, &options.includes)?;
    // A target that restore makes (and any missing directory above it) is made as `mkdir -p`
    // makes it: the snapshot holds no metadata of the directory its source was (its content goes
    // straight into the target), and a source restored where it was, on the day of the
    // disaster, must come back as open as a service expects it (0700 would lock out a service
    // that runs as another user). What is private below it keeps the snapshot's modes, and the
    // parents of an `--include` are made private (below).
    let root = match &options.opened {
        Some(dir) => dir.try_clone().map_err(|e| Error::io(&options.target, e))?,
        None => {
            fs::create_dir_all(&options.target).map_err(|e| Error::io(&options.target, e))?;
            Dir::open(&options.target).map_err(|e| Error::io(&options.target, e))?
        }
    };
    let zeros = ZeroRun::of(repo);
    if repo.backend().disk_path().is_some() {
        return restore_selected(repo, snapshot, options, progress, root, &selected, zeros, None);
    }
    // An object store: every request costs a round trip, so the content is read by pack, ahead
    // of a walk that reads it in the plan's order, on one thread; unless it may leave files as
    // they were, decoders decode ahead of it on the other cores, and unless it leaves holes,
    // writers write what it read on threads of their own ([`writes`]).
    let blobs = plan::planned_blobs(repo, snapshot, &selected, &zeros.id);
    let plan = PlannedReads::new(repo.repo(), repo.index(), blobs, !options.skip_identical);
    let writer = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| Error::Resources { what: "the restore thread", reason: e.to_string() })?;
    writer.install(|| {
        plan.run(|reads| restore_selected(repo, snapshot, options, progress, root, &selected, zeros, Some(reads)))
    })
}

/// The chunk of a run of zeros as the repository cuts it (a thin image's unwritten space is a
/// row of them): its id says what it holds, so it is written from memory, never read and
/// decoded again for each (a 20 GiB hole is 5,120 of them).
struct ZeroRun {
    id: Id,
    bytes: Vec<u8>,
}

impl ZeroRun {
    fn of(repo: &Indexed) -> ZeroRun {
        let (len, id) = repo.chunker().zero_run();
        ZeroRun { id, bytes: vec![0; len] }
    }
}

/// Bytes written between two looks at the free space ([`RestoreOptions::keep_free`]).
const LOOK_EVERY: u64 = 8 << 20;

/// The most a file's content is gathered before it is written (below the allocator's threshold
/// for a mapping of its own, as a file of a million is restored on each of several threads).
const WRITE_BUFFER: usize = 64 * 1024;

/// Where a file's content goes: gathered into fewer writes, and with holes for `--sparse`.
enum Out<'f> {
    Dense(std::io::BufWriter<&'f fs::File>),
    Sparse(sparse::Holes<'f>),
}

impl Out<'_> {
    /// Writes what is gathered; with holes, sets the length (the trailing zeros' hole).
    fn finish(self) -> std::io::Result<()> {
        match self {
            Out::Dense(mut out) => out.flush(),
            Out::Sparse(out) => out.finish(),
        }
    }
}

impl Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Dense(out) => out.write(buf),
            Out::Sparse(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Dense(out) => out.flush(),
            Out::Sparse(out) => out.flush(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_selected(
    repo: &Indexed,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &Progress,
    root: Dir,
    selected: &Selection,
    zeros: ZeroRun,
    reads: Option<&PlannedReads>,
) -> Result<RestoreSummary> {
    // SAFETY: geteuid and getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let restorer = Restorer {
        repo,
        reads,
        progress,
        target: &options.target,
        root: Arc::new(root),
        compare: options.skip_identical.then(|| repo.chunker()),
        sparse: options.sparse,
        zeros,
        keep_free: options.keep_free,
        // Looked at on the first write.
        unlooked: AtomicU64::new(LOOK_EVERY),
        look_every: AtomicU64::new(LOOK_EVERY),
        full: AtomicBool::new(false),
        unchanged: AtomicU64::new(0),
        euid,
        egid,
        as_root: euid == 0,
        started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
        cancel: options.cancel,
        errors: Mutex::new(Vec::new()),
        link_sources: Mutex::new(HashMap::new()),
        links: Mutex::new(Vec::new()),
        failed: Mutex::new(HashSet::new()),
        dirs: Mutex::new(Vec::new()),
        made_dirs: Mutex::new(HashSet::new()),
        writes: (reads.is_some() && !options.sparse && writes::may_run()).then(writes::Writes::new),
        unfinished: Mutex::new(Vec::new()),
        files: AtomicU64::new(0),
        dir_count: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        sockets: AtomicU64::new(0),
        xattrs_not_restored: AtomicU64::new(0),
    };
    if options.includes.is_empty() {
        progress.add_total(snapshot.summary.bytes);
    }
    let walk = Parallel::new(repo, &restorer.root, &restorer);
    std::thread::scope(|scope| {
        if let Some(writes) = &restorer.writes {
            for n in 0..writes::WRITERS {
                let restorer = &restorer;
                scope.spawn(move || restorer.write_queued(writes, n));
            }
        }
        // The writers end once the walk is done and the queue empty, however the walk ends.
        let _closer = restorer.writes.as_ref().map(writes::Closer);
        selected.par_iter().for_each(|(parts, node)| match node {
            None => walk.tree(&restorer.root, &Place::root(), &snapshot.tree),
            Some(node) => {
                if let Some((dir, place)) = restorer.include_parents(parts) {
                    // An include is restored as its content says, never as a raw copy.
                    walk.entry(node, &HashSet::new(), dir.as_ref().unwrap_or(&restorer.root), &place);
                }
            }
        });
        walk.finish();
    });
    let mut cache = DirCache::new(restorer.root.clone());
    restorer.remove_unfinished(&mut cache);
    if restorer.full.load(Relaxed) {
        progress.finish();
        let free = options.keep_free.unwrap_or(0) >> 20;
        return Err(Error::NoSpace(format!(
            "{}: stopped with less than {free} MiB left free on its file system",
            options.target.display()
        )));
    }
    if restorer.cancelled() {
        progress.finish();
        return Err(Error::Interrupted);
    }
    restorer.finish_links(&mut cache);
    restorer.finish_dirs(&mut cache);
    progress.finish();
    Ok(RestoreSummary {
        files: restorer.files.load(Relaxed),
        dirs: restorer.dir_count.load(Relaxed),
        bytes: restorer.bytes.load(Relaxed),
        errors: restorer.errors.into_inner().expect("poisoned"),
        sockets_skipped: restorer.sockets.load(Relaxed),
        files_unchanged: restorer.unchanged.load(Relaxed),
        xattrs_not_restored: restorer.xattrs_not_restored.load(Relaxed),
    })
}

/// The names among a directory's `nodes` stored together with a `-wal` or `-journal` beside
/// them: databases copied as they lay (`--raw-sqlite`, or beside a hot journal), whole only with
/// that companion, which SQLite applies when it opens them.
pub(crate) fn stored_as_they_lay(nodes: &[Node]) -> HashSet<Vec<u8>> {
    let names: HashSet<&[u8]> = nodes.iter().map(|n| n.name.as_slice()).collect();
    let companion = |node: &&Node| crate::source::sqlite::has_needed_companion(&node.name, |name| names.contains(name));
    nodes.iter().filter(companion).map(|n| n.name.clone()).collect()
}

impl InParallel for Restorer<'_> {
    /// The names of a directory to restore as plain bytes: a database stored together with its
    /// -wal or -journal is a raw copy ([`stored_as_they_lay`]), restored beside its companions,
    /// never checked or swapped in.
    type Listing = HashSet<Vec<u8>>;

    fn listing(&self, nodes: &[Node]) -> HashSet<Vec<u8>> {
        stored_as_they_lay(nodes)
    }

    /// Restores `node` into `dir` (which is `place`); a directory is made, to be walked.
    /// `raw`: the names to restore as plain bytes even if their content is an SQLite database.
    fn entry(&self, node: &Node, raw: &HashSet<Vec<u8>>, dir: &Dir, place: &Arc<Place>) -> Option<(Dir, Arc<Place>)> {
        if self.cancelled() {
            return None;
        }
        let raw_database = raw.contains(&node.name);
        let name = node.name.as_slice();
        let result = match &node.content {
            Content::Dir { .. } => {
                // Private until its own metadata is applied at the end.
                let child = match dir.make_dir(name, 0o700) {
                    Ok(child) => child,
                    Err(e) => {
                        self.record(&self.shown(place, name), e);
                        return None;
                    }
                };
                self.close_reused(&child, &node.meta);
                self.note_made_dir(name, &child);
                self.used(sparse::BLOCK as u64);
                let child_place = place.child(name);
                self.dir_count.fetch_add(1, Relaxed);
                self.dirs.lock().expect("poisoned").push((child_place.clone(), node.meta, node.xattrs.clone()));
                return Some((child, child_place));
            }
            Content::File { chunks } => {
                let key = (node.meta.dev, node.meta.ino);
                if node.meta.nlink > 1 {
                    let mut sources = self.link_sources.lock().expect("poisoned");
                    if sources.contains_key(&key) {
                        self.links.lock().expect("poisoned").push(((place.clone(), name.to_vec()), key));
                        return None;
                    }
                    sources.insert(key, (place.clone(), name.to_vec()));
                }
                // A chain that cannot be read fails this file only, as a missing chunk does.
                let written = match self.repo.chunk_list(chunks) {
                    Ok(chunks) => self.file(node, &chunks, dir, place, raw_database),
                    Err(e) => Err(e.to_string()),
                };
                if written.is_err() && node.meta.nlink > 1 {
                    self.failed.lock().expect("poisoned").insert(key);
                }
                written
            }
            Content::Symlink { target } => dir
                .symlink(target, name)
                .map_err(|e| e.to_string())
                .and_then(|_| self.metadata(dir, name, &node.meta, &node.xattrs, true, || self.shown(place, name))),
            Content::Fifo => self.special(dir, place, node, libc::S_IFIFO, 0),
            Content::CharDevice { rdev } => self.special(dir, place, node, libc::S_IFCHR, *rdev),
            Content::BlockDevice { rdev } => self.special(dir, place, node, libc::S_IFBLK, *rdev),
            Content::Socket => {
                self.sockets.fetch_add(1, Relaxed);
                let shown = self.shown(place, name);
                self.progress.warn(&format!(
                    "note: {}: sockets are recorded but not restored",
                    crate::names::shown_path(&shown)
                ));
                return None;
            }
        };
        if let Err(message) = result {
            self.record(&self.shown(place, name), message);
        }
        None
    }

    fn unreadable(&self, place: &Place, error: Error) {
        self.record(&place.path(self.target), format!("cannot read directory listing: {error}"))
    }

    fn unopened(&self, place: &Place, error: std::io::Error) {
        self.record(&place.path(self.target), error)
    }

    fn cancelled(&self) -> bool {
        self.cancelled()
    }
}

impl Restorer<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|cancel| cancel.load(Relaxed)) || self.full.load(Relaxed)
    }

    /// Counts `bytes` written (or a block for a file or directory) and, if the restore must keep
    /// some free space ([`RestoreOptions::keep_free`]), looks at it on the first write, then
    /// every [`LOOK_EVERY`] bytes, or every half of what is left above the limit once that is
    /// less (64 KiB at least).
    fn used(&self, bytes: u64) {
        let Some(keep) = self.keep_free else { return };
        if self.unlooked.fetch_add(bytes, Relaxed) + bytes < self.look_every.load(Relaxed) {
            return;
        }
        self.unlooked.store(0, Relaxed);
        let Some(space) = crate::disk::space_of(self.root.as_fd()) else { return };
        match space.free.checked_sub(keep) {
            None => self.full.store(true, Relaxed),
            Some(above) => self.look_every.store((above / 2).clamp(64 << 10, LOOK_EVERY), Relaxed),
        }
    }

    fn record(&self, path: &Path, message: impl std::fmt::Display) {
        let path = crate::names::shown_path(path).into_owned();
        let error = SourceError { path, message: message.to_string() };
        self.progress.warn(&format!("error: {}: {}", error.path, error.message));
        self.errors.lock().expect("poisoned").push(error);
    }

    /// The path of `name` in `place`, for messages.
    fn shown(&self, place: &Place, name: &[u8]) -> PathBuf {
        place.path(self.target).join(OsStr::from_bytes(name))
    }

    /// The parent directories of an include, created if missing (a non-directory in the way is
    /// replaced, as for any restored entry; never followed): the one that holds it (`None`: the
    /// root) and its place; `None` if one could not be made (recorded). Those made are private
    /// (0700) and stay so: they get no metadata from the snapshot, and the umask's 0755 would
    /// open what the snapshot's closed directories kept private (`private/sub` of a 0700
    /// `private`). Those that exist keep theirs.
    fn include_parents(&self, parts: &[Vec<u8>]) -> Option<(Option<Dir>, Arc<Place>)> {
        let (_, parents) = parts.split_last()?;
        let mut place = Place::root();
        let mut dir: Option<Dir> = None;
        for name in parents {
            let made = dir.as_ref().unwrap_or(&self.root).make_dir(name, 0o700);
            match made {
                Ok(next) => dir = Some(next),
                Err(e) => {
                    self.record(&self.shown(&place, name), e);
                    return None;
                }
            }
            place = place.child(name);
        }
        Some((dir, place))
    }

    /// Closes a directory that already stood where the snapshot has one, if it is open to anyone
    /// the snapshot's metadata (`meta`) closes it to: another owner, or group or other bits the
    /// snapshot does not grant. It becomes what the directories restore creates are until the
    /// end, when its metadata is applied: mode 0700, and root's when restore runs as root.
    ///
    /// Why: while restore fills it, whoever can write in it could swap what restore creates (move
    /// a file away and plant a symlink or a file of their own under its name, swap the source of
    /// a hard link before it is linked, or a FIFO before it is chowned by name), and whoever can
    /// search it could open files that the snapshot keeps from them; the directory would then get
    /// the snapshot's owner and mode over what they left. Left open when everyone who can use it
    /// now may also use it by the snapshot: they could do the same after the restore, so nothing
    /// is gained, and restoring /home or / in place must not lock users out of their directories
    /// while it runs. The target itself and the parents of an `--include` get no metadata from
    /// the snapshot and are left as they are (include parents private where restore made them). A
    /// restore interrupted or killed leaves a closed
    /// directory closed, as it leaves the ones it created; restoring again finishes them. Best
    /// effort: if the file system refuses (no owners), the directory stays as it was; databases
    /// are safe in it either way ([`database`]).
    fn close_reused(&self, dir: &Dir, meta: &Metadata) {
        let Ok(st) = stat_fd(dir.as_fd()) else { return };
        let found = Found { uid: st.st_uid, gid: st.st_gid, mode: st.st_mode };
        if !open_beyond_snapshot(&found, meta, self.euid, self.as_root) || (st.st_uid != self.euid && !self.as_root) {
            return;
        }
        let mtime = (st.st_mtime, st.st_mtime_nsec as u32);
        let _ = set_metadata_fd(dir.as_fd(), self.as_root.then_some((0, st.st_gid)), 0o700, mtime);
    }

    /// Notes `dir`, just made as `name`, if restore could take it for the private directory of
    /// a database that a killed restore left ([`database`]).
    fn note_made_dir(&self, name: &[u8], dir: &Dir) {
        if database::may_be_staging(name) {
            if let Ok(st) = stat_fd(dir.as_fd()) {
                self.made_dirs.lock().expect("poisoned").insert((st.st_dev, st.st_ino));
            }
        }
    }

    fn special(&self, dir: &Dir, place: &Place, node: &Node, kind: libc::mode_t, rdev: u64) -> Result<(), String> {
        let name = node.name.as_slice();
        dir.mknod(name, kind, rdev).map_err(|e| e.to_string())?;
        self.metadata(dir, name, &node.meta, &node.xattrs, false, || self.shown(place, name))
    }

    /// With `skip_identical`: whether `name` already is a regular file with exactly this
    /// content; if so its metadata is restored through the file opened for the comparison. A
    /// symlink is never the file, whatever it points to; nor is a file with more than one name,
    /// even where the snapshot's has several: its other names may be anywhere on the file system
    /// (a hard link planted in the target to a file outside), and keeping it would set the
    /// snapshot's owner, mode (setuid too) and mtime on that file and link the snapshot's other
    /// names to it. Such a file is written anew, which breaks its links; hard links among the
    /// snapshot's names are made again from the new file.
    fn keep_identical(&self, node: &Node, chunks: &[Id], dir: &Dir, place: &Place) -> Result<bool, String> {
        let Some(chunker) = &self.compare else { return Ok(false) };
        let Ok(Some((file, st))) = dir.open_regular(&node.name) else { return Ok(false) };
        if st.st_size as u64 != node.meta.size || st.st_nlink > 1 {
            return Ok(false);
        }
        if !crate::source::same_content(chunker, &file, node.meta.size, chunks).unwrap_or(false) {
            return Ok(false);
        }
        self.file_metadata(&file, &node.meta, &node.xattrs, || self.shown(place, &node.name))?;
        Ok(true)
    }

    fn file(
        &self,
        node: &Node,
        chunks: &[Id],
        dir: &Dir,
        place: &Arc<Place>,
        raw_database: bool,
    ) -> Result<(), String> {
        if self.keep_identical(node, chunks, dir, place)? {
            if let Some(reads) = self.reads {
                reads.skip(chunks);
            }
            self.unchanged.fetch_add(1, Relaxed);
            self.files.fetch_add(1, Relaxed);
            self.progress.file_done(node.meta.size);
            return Ok(());
        }
        // A database is written and checked in a private directory beside its destination before
        // it replaces anything (`database`): a failed restore leaves the existing one as it was.
        let first = match chunks.first() {
            Some(id) if *id == self.zeros.id => Some(self.zeros.bytes.clone()),
            Some(id) => Some(self.blob(id).map_err(|e| e.to_string())?),
            None => None,
        };
        let database = !raw_database && first.as_deref().is_some_and(|d| d.starts_with(sqlite::HEADER));
        let written = if database {
            if let Some(writes) = &self.writes {
                writes.drain();
            }
            self.database_file(node, first, chunks, dir, place)?
        } else if let Some(writes) = &self.writes {
            // Finished, and counted, once its blobs are written.
            return self.queue_file(writes, node, first, chunks, dir, place);
        } else {
            // Metadata through the open file: no more lookups of its name.
            let mode = self.creation_mode(&node.meta, &node.xattrs);
            let (file, written) = self.write_content(dir, &node.name, mode, first, chunks, node.meta.size, false)?;
            self.file_metadata(&file, &node.meta, &node.xattrs, || self.shown(place, &node.name))?;
            written
        };
        self.files.fetch_add(1, Relaxed);
        self.bytes.fetch_add(written, Relaxed);
        self.progress.file_done(0);
        Ok(())
    }

    /// Writes a file's chunks (the first already read) to a new file `name` in `dir`, made with
    /// `mode`, replacing a non-directory entry there; returns the open file and its length.
    #[allow(clippy::too_many_arguments)]
    fn write_content(
        &self,
        dir: &Dir,
        name: &[u8],
        mode: u32,
        first: Option<Vec<u8>>,
        chunks: &[Id],
        expected: u64,
        sync: bool,
    ) -> Result<(fs::File, u64), String> {
        let file = dir.create_file_mode(name, mode).map_err(|e| e.to_string())?;
        self.used(sparse::BLOCK as u64);
        match self.fill(file, first, chunks, expected, sync) {
            Ok(done) => Ok(done),
            Err(e) => {
                // A file cut short (a full disk, a chunk that cannot be read) is not left behind
                // under its name, where it would pass for the snapshot's content.
                let _ = dir.remove_non_dir(name);
                Err(e)
            }
        }
    }

    /// Writes a file's chunks into `file`, just created: the body of [`Restorer::write_content`].
    fn fill(
        &self,
        file: fs::File,
        first: Option<Vec<u8>>,
        chunks: &[Id],
        expected: u64,
        sync: bool,
    ) -> Result<(fs::File, u64), String> {
        // Small chunks (a database's pages) are gathered into fewer writes: 109,000 calls of 4 KiB
        // for a 426 MiB database otherwise. Chunks as large as the buffer go straight through.
        let mut out = match self.sparse {
            false => Out::Dense(std::io::BufWriter::with_capacity((expected as usize).clamp(1, WRITE_BUFFER), &file)),
            true => Out::Sparse(sparse::Holes::new(&file)),
        };
        let mut written = 0u64;
        let mut write = |data: &[u8]| -> Result<(), String> {
            out.write_all(data).map_err(|e| e.to_string())?;
            self.used(data.len() as u64);
            written += data.len() as u64;
            self.progress.add_bytes(data.len() as u64);
            Ok(())
        };
        if let Some(first) = first {
            write(&first)?;
            self.written(first);
        }
        for id in chunks.iter().skip(1) {
            if self.cancelled() {
                return Err("interrupted".into());
            }
            if *id == self.zeros.id {
                write(&self.zeros.bytes)?;
                continue;
            }
            let blob = self.blob(id).map_err(|e| e.to_string())?;
            write(&blob)?;
            self.written(blob);
        }
        out.finish().map_err(|e| e.to_string())?;
        if written != expected {
            return Err(format!("restored {written} bytes, the snapshot recorded {expected}"));
        }
        if sync {
            file.sync_all().map_err(|e| e.to_string())?;
        }
        Ok((file, written))
    }

    /// Gives the buffer of a blob written back for the planned reads' next ones
    /// ([`crate::buffers`]).
    fn written(&self, blob: Vec<u8>) {
        if self.reads.is_some() {
            crate::buffers::give(blob);
        }
    }

    /// A data blob, through the planned reads where there are some.
    fn blob(&self, id: &Id) -> Result<Vec<u8>> {
        match self.reads {
            Some(reads) => reads.read(id),
            None => self.repo.read_blob(id),
        }
    }

    fn owner(&self, meta: &Metadata) -> Option<(u32, u32)> {
        self.as_root.then_some((meta.uid, meta.gid))
    }

    /// The mode a file is made with: the snapshot's permission bits where nothing that follows
    /// would have kept them from others until then (its owner stays who restores, it has no
    /// extended attributes to set first, no setuid, setgid or sticky bit); else private (0600)
    /// until its metadata is set. The directories restore makes are private until the end, but
    /// the target and the directories of a tree restored over are not. Its metadata then sets
    /// only what the umask or a default ACL made differ ([`set_made_metadata_fd`]).
    fn creation_mode(&self, meta: &Metadata, xattrs: &[Xattr]) -> u32 {
        let stays = self.owner(meta).map_or(true, |owner| owner == (self.euid, self.egid));
        match stays && xattrs.is_empty() && meta.mode & 0o7000 == 0 {
            true => meta.mode & 0o777,
            false => 0o600,
        }
    }

    /// Removes the files of [`writes`] whose content failed, so that none is left cut short under
    /// its name.
    fn remove_unfinished(&self, cache: &mut DirCache) {
        let mut unfinished = std::mem::take(&mut *self.unfinished.lock().expect("poisoned"));
        unfinished.sort_by_key(|(place, _)| Arc::as_ptr(place) as usize);
        for (place, name) in unfinished {
            if let Err(e) = cache.open(&place).and_then(|dir| dir.remove_non_dir(&name)) {
                self.record(&self.shown(&place, &name), format!("cannot remove what was written of it: {e}"));
            }
        }
    }

    fn finish_links(&self, cache: &mut DirCache) {
        let failed = std::mem::take(&mut *self.failed.lock().expect("poisoned"));
        let sources = std::mem::take(&mut *self.link_sources.lock().expect("poisoned"));
        let mut links = std::mem::take(&mut *self.links.lock().expect("poisoned"));
        // Links into one directory one after another: its descriptor stays in the cache.
        links.sort_by_key(|((place, _), _)| Arc::as_ptr(place) as usize);
        for ((place, name), key) in links {
            let (source_place, source_name) = &sources[&key];
            let first = self.shown(source_place, source_name);
            if failed.contains(&key) {
                self.record(
                    &self.shown(&place, &name),
                    format!("not restored: its hard link {} failed", crate::names::shown_path(&first)),
                );
                continue;
            }
            let linked = cache
                .open(source_place)
                .and_then(|from| cache.open(&place).and_then(|to| to.hard_link(&name, &from, source_name)));
            match linked {
                Ok(()) => {
                    self.files.fetch_add(1, Relaxed);
                }
                Err(e) => self.record(
                    &self.shown(&place, &name),
                    format!("hard link to {}: {e}", crate::names::shown_path(&first)),
                ),
            }
        }
    }

    fn finish_dirs(&self, cache: &mut DirCache) {
        let mut dirs = std::mem::take(&mut *self.dirs.lock().expect("poisoned"));
        dirs.sort_by_key(|(place, _, _)| std::cmp::Reverse(place.depth()));
        for (place, meta, xattrs) in dirs {
            let applied = cache.open(&place).map_err(|e| e.to_string()).and_then(|dir| {
                // Before the mode may close the directory to us: its parent is next.
                cache.adopt_parent(&place, &dir);
                self.file_metadata(&*dir, &meta, &xattrs, || place.path(self.target))
            });
            if let Err(e) = applied {
                self.record(&place.path(self.target), e);
            }
        }
    }
}

/// Owner, group and mode of a directory found in the target.
struct Found {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// Whether the directory `found` lets anyone use it whom the snapshot's `meta` does not, for a
/// restore running as user `me` (`as_root`: as root, which also restores owner and group): an
/// owner other than `me` and the snapshot's, group bits the snapshot does not grant or granted
/// to another group, other bits the snapshot does not grant.
fn open_beyond_snapshot(found: &Found, meta: &Metadata, me: u32, as_root: bool) -> bool {
    let (owner, group) = if as_root { (meta.uid, meta.gid) } else { (found.uid, found.gid) };
    let mode = found.mode & 0o777;
    let owner_may = found.uid == me || found.uid == owner;
    let group_may = mode & 0o070 == 0 || (found.gid == group && mode & 0o070 & !meta.mode == 0);
    let others_may = mode & 0o007 & !meta.mode == 0;
    !(owner_may && group_may && others_may)
}

/// Directories opened by place for the last steps (hard links, directory metadata), so that
/// each is not walked down to from the target again. Bounded: descriptors are limited.
struct DirCache {
    root: Arc<Dir>,
    open: HashMap<usize, (Arc<Place>, Arc<Dir>, u64)>,
    uses: u64,
    /// [`CACHED_DIRS`], or a quarter of the files this process may open if less.
    most: usize,
}

/// Directories the cache keeps open at most (under a low `RLIMIT_NOFILE`, fewer: at a limit
/// of 256 it took them all, and the metadata of later directories failed with EMFILE).
const CACHED_DIRS: usize = 256;

impl DirCache {
    fn new(root: Arc<Dir>) -> DirCache {
        let most = crate::fs_at::open_files_limit()
            .map_or(CACHED_DIRS, |files| (files / 4).clamp(2, CACHED_DIRS as u64) as usize);
        DirCache { root, open: HashMap::new(), uses: 0, most }
    }

    fn key(place: &Arc<Place>) -> usize {
        Arc::as_ptr(place) as usize
    }

    fn cached(&mut self, place: &Arc<Place>) -> Option<Arc<Dir>> {
        if place.depth() == 0 {
            return Some(self.root.clone());
        }
        self.uses += 1;
        let uses = self.uses;
        self.open.get_mut(&Self::key(place)).map(|(_, dir, used)| {
            *used = uses;
            dir.clone()
        })
    }

    fn insert(&mut self, place: &Arc<Place>, dir: Arc<Dir>) {
        if self.open.len() >= self.most {
            // Close the half used longest ago.
            let mut uses: Vec<u64> = self.open.values().map(|(_, _, used)| *used).collect();
            let (_, median, _) = uses.select_nth_unstable(self.most / 2);
            let median = *median;
            self.open.retain(|_, (_, _, used)| *used > median);
        }
        self.uses += 1;
        self.open.insert(Self::key(place), (place.clone(), dir, self.uses));
    }

    /// Opens the directory at `place`: from the nearest open directory above it, one name at a
    /// time, never following a symlink.
    fn open(&mut self, place: &Arc<Place>) -> std::io::Result<Arc<Dir>> {
        let mut missing = Vec::new();
        let mut at = place.clone();
        let mut dir = loop {
            if let Some(dir) = self.cached(&at) {
                break dir;
            }
            let parent = at.parent().expect("only the root has no parent").clone();
            missing.push(at);
            at = parent;
        };
        for place in missing.into_iter().rev() {
            dir = Arc::new(dir.open_dir(place.name())?);
            self.insert(&place, dir.clone());
        }
        Ok(dir)
    }

    /// Opens the parent of `place` through `..` of its open `dir`, if not open yet: going up a
    /// deep chain then costs one call per level instead of a walk down from the target.
    fn adopt_parent(&mut self, place: &Arc<Place>, dir: &Dir) {
        let Some(parent) = place.parent() else { return };
        if parent.depth() == 0 || self.open.contains_key(&Self::key(parent)) {
            return;
        }
        if let Ok(up) = dir.open_parent(place.name()) {
            self.insert(parent, Arc::new(up));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_inside_another_are_restored_once() {
        let parts = |path: &str| components(path.as_bytes()).iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        let selected = ["a/b", "b", "a", "a/b/c", "ab", "b", "./a//c"].iter().map(|p| (parts(p), None)).collect();
        let kept: Vec<Vec<Vec<u8>>> = outermost(selected).into_iter().map(|(parts, _)| parts).collect();
        assert_eq!(kept, vec![parts("a"), parts("ab"), parts("b")]);
        let with_root = vec![(parts("a"), None), (parts("/"), None)];
        assert_eq!(outermost(with_root).len(), 1, "the root holds everything");
    }

    #[test]
    fn a_directory_is_closed_when_it_is_open_beyond_the_snapshot() {
        let meta = |uid, gid, mode| Metadata { uid, gid, mode, ..Default::default() };
        let found = |uid, gid, mode| Found { uid, gid, mode: mode | libc::S_IFDIR };
        let snapshot = meta(1000, 1000, 0o750);
        // As root (me = 0):
        for (dir, open) in [
            (found(0, 0, 0o700), false),        // as restore creates it
            (found(1000, 1000, 0o750), false),  // as the snapshot has it
            (found(1000, 1000, 0o700), false),  // closer still
            (found(0, 0, 0o755), true),         // others may search it; the snapshot says no
            (found(1000, 1000, 0o770), true),   // the group may write
            (found(1000, 50, 0o750), true),     // another group
            (found(65534, 1000, 0o700), true),  // another owner
            (found(1000, 1000, 0o2750), false), // special bits are not permissions
        ] {
            assert_eq!(open_beyond_snapshot(&dir, &snapshot, 0, true), open, "{:o}", dir.mode);
        }
        // Not as root: owners are not restored, so only the bits count.
        assert!(!open_beyond_snapshot(&found(1000, 50, 0o750), &snapshot, 1000, false));
        assert!(open_beyond_snapshot(&found(1000, 50, 0o777), &snapshot, 1000, false));
    }

    /// Deepest first, as directory metadata is applied: each directory of a chain far deeper
    /// than the cache is the one the forward walk made, and the cache stays bounded.
    #[test]
    fn the_cache_goes_up_a_deep_chain() {
        let path = std::env::temp_dir().join(format!("cairn-restore-cache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        let root = Arc::new(Dir::open(&path).unwrap());
        let (mut places, mut inodes) = (Vec::new(), Vec::new());
        let (mut dir, mut place) = (root.make_dir(b"d", 0o700).unwrap(), Place::root().child(b"d"));
        for _ in 0..3 * CACHED_DIRS {
            inodes.push(stat_fd(dir.as_fd()).unwrap().st_ino);
            places.push(place.clone());
            dir = dir.make_dir(b"d", 0o700).unwrap();
            place = place.child(b"d");
        }
        let mut cache = DirCache::new(root);
        for (place, inode) in places.iter().zip(&inodes).rev() {
            let dir = cache.open(place).unwrap();
            assert_eq!(stat_fd(dir.as_fd()).unwrap().st_ino, *inode);
            cache.adopt_parent(place, &dir);
            assert!(cache.open.len() <= CACHED_DIRS);
        }
        drop(cache);
        crate::fs_at::remove_tree(&path).unwrap();
    }
}
