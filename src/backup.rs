//! Taking a snapshot: resolve the source paths, find the parent snapshot for change detection,
//! archive the sources into blobs, make them durable, then write the manifest (the commit point).
//!
//! With one source directory the snapshot's root tree is that directory; with several paths (or
//! one non-directory) the root mirrors their absolute paths, as restic does, so they never
//! collide. A snapshot of a stream (standard input, a command's output) is [`stream`]'s.

pub mod stream;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;

use crate::audit::{Audited, Run};
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::snapshot::{source_key, Snapshot, Summary};
use crate::format::tree::{Content, Node, Tree};
use crate::host::hostname;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::packer::BlobStore;
use crate::repository::Repository;
use crate::source::archiver::{Archiver, Counts, Prefetch, MAX_DEPTH};
use crate::source::exclude::{check_patterns, Excludes};
use crate::source::metadata_of;
use crate::source::nofollow::Dir;
use crate::source::walk_options::WalkOptions;

#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    /// A name for what is backed up (`--source`); empty for none.
    pub source: String,
    /// The host name to record (`--host`); `None` for this machine's.
    pub host: Option<String>,
    pub excludes: Vec<String>,
    /// Paths never entered, such as the repository itself.
    pub skip: Vec<PathBuf>,
    /// `--sqlite` paths: each must be an SQLite database; a missing one is recorded, not fatal.
    pub sqlite_paths: Vec<PathBuf>,
    /// Store databases as raw files instead of capturing them through SQLite (`--raw-sqlite`).
    pub raw_sqlite: bool,
    /// The disk guard: stop before a pack write would leave less free space than this.
    pub min_free: Option<crate::disk::MinFree>,
    /// How long to wait for a database that another process holds locked.
    pub sqlite_timeout: std::time::Duration,
    /// What the walk leaves out besides `excludes`: other file systems, cache and marked
    /// directories.
    pub walk: WalkOptions,
    /// The one directory in `paths`, already open: archived through this descriptor, never
    /// opened again by its name, which may lead elsewhere by now (an in-place restore's safety
    /// snapshot is of the directory the restore writes into).
    pub opened_root: Option<Arc<std::os::fd::OwnedFd>>,
    /// Follow no symlink anywhere in `paths`, not even among their parents: a symlink there
    /// leaves that path unread, recorded as an error (the safety snapshot of entries of `/`,
    /// where a user could otherwise point one of their own directories at another's files).
    pub symlinked_parents_refused: bool,
}

pub struct SnapshotOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
    pub packs_written: u64,
    /// SQLite databases captured through SQLite.
    pub databases: u64,
}

/// Absolute, lexically normalised source paths that exist, without duplicates or paths nested in
/// another given path. Fails, before anything is written, on a missing path.
pub fn resolve_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::Invalid("no source path given".into()));
    }
    for path in paths {
        let absolute = normalize(&std::path::absolute(path).map_err(|e| Error::io(path, e))?);
        if std::fs::symlink_metadata(&absolute).is_err() {
            return Err(Error::MissingSource(path.clone()));
        }
    }
    Ok(normalize_paths(paths))
}

/// The paths as a snapshot records them (absolute, normalised, sorted, no duplicates, no path
/// nested in another), whether or not they exist. A path written with a trailing `/` means the
/// directory it leads to, as with rsync: a symlink given as `link/` is followed.
pub fn normalize_paths(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            let followed = p.as_os_str().as_bytes().ends_with(b"/").then(|| std::fs::canonicalize(p).ok()).flatten();
            followed.unwrap_or_else(|| normalize(&std::path::absolute(p).unwrap_or_else(|_| p.clone())))
        })
        .collect();
    out.sort();
    out.dedup();
    let all = out.clone();
    out.retain(|p| !all.iter().any(|other| other != p && p.starts_with(other)));
    out
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        // SAFETY: getuid cannot fail.
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }))
}

/// The most recent snapshot of the same paths, host and source name, used for change detection.
fn find_parent(repo: &Repository, host: &str, source: &str, paths: &[Vec<u8>]) -> Result<Option<(Id, Snapshot)>> {
    Ok(repo.snapshots()?.into_iter().rev().find(|(_, s)| s.hostname == host && s.source == source && s.paths == paths))
}

/// A snapshot as the audited run `snapshot` (store-format/audit.md): its start record, then
/// [`take_snapshot`], then its record: ok, incomplete (entries that could not be read, listed in
/// its errors) or failed. What `cairn snapshot` runs, and what an embedder calls.
pub fn snapshot(repo: &Repository, options: &SnapshotOptions, progress: &Progress) -> Audited<SnapshotOutcome> {
    let recorded: Vec<Vec<u8>> =
        normalize_paths(&options.paths).iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
    Run::start("snapshot", &source_key(&options.source, &recorded)).around(repo, |record| {
        let outcome = take_snapshot(repo, options, progress)?;
        let snapshot = &outcome.snapshot;
        record.source = snapshot.source_key();
        record.snapshot = Some(outcome.id.to_hex());
        record.files = snapshot.summary.files;
        record.bytes = snapshot.summary.bytes;
        record.errors = snapshot.errors.iter().take(100).map(|e| format!("{}: {}", e.path, e.message)).collect();
        record.details = serde_json::json!({ "summary": snapshot.summary, "packs_written": outcome.packs_written });
        let how = if snapshot.is_complete() { Outcome::Ok } else { Outcome::Incomplete };
        Ok((outcome, how))
    })
}

/// The snapshot itself, with no audit record: the building block of [`snapshot`] and of an
/// in-place restore's safety snapshot (which the restore's own record names).
pub fn take_snapshot(repo: &Repository, options: &SnapshotOptions, progress: &Progress) -> Result<SnapshotOutcome> {
    let started = Instant::now();
    let start_time = crate::clock::now();
    if options.opened_root.is_some() && (options.paths.len() != 1 || !options.sqlite_paths.is_empty()) {
        return Err(Error::Invalid("an opened source root must be the one source path".into()));
    }
    if !options.paths.is_empty() && options.opened_root.is_none() {
        resolve_paths(&options.paths)?;
    }
    check_patterns(&options.excludes).map_err(Error::Exclude)?;
    options.walk.check().map_err(Error::MarkerName)?;
    let requested = normalize_paths(&[options.paths.clone(), options.sqlite_paths.clone()].concat());
    if requested.is_empty() {
        return Err(Error::Invalid("no source path given".into()));
    }
    let path_bytes: Vec<Vec<u8>> = requested.iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
    // The layout follows what was asked for, not what exists today, so it never flips between
    // snapshots of the same source when a database comes or goes.
    let single = requested.len() == 1;
    let opened = match &options.opened_root {
        Some(fd) => Some(Dir::opened(fd.try_clone().map_err(|e| Error::io(&requested[0], e))?)),
        None => None,
    };
    let paths: Vec<PathBuf> =
        requested.into_iter().filter(|p| opened.is_some() || std::fs::symlink_metadata(p).is_ok()).collect();
    // Checked one by one: a missing --sqlite path nested in a tree path is reported too.
    let missing: Vec<PathBuf> = options
        .sqlite_paths
        .iter()
        .flat_map(|p| normalize_paths(std::slice::from_ref(p)))
        .filter(|p| std::fs::symlink_metadata(p).is_err())
        .collect();
    let host = options.host.clone().unwrap_or_else(hostname);
    repo.backend().remove_stale_temp_files();
    let index = repo.load_index()?;
    let parent = find_parent(repo, &host, &options.source, &path_bytes)?;
    let parent_root = parent.as_ref().and_then(|(_, s)| repo.read_tree(&index, &s.tree).ok());

    let mut store = BlobStore::new(repo, &index);
    store.min_free = options.min_free;
    let excludes = Excludes::new(&options.excludes);
    let archiver = Archiver {
        repo,
        index: &index,
        store: &store,
        chunker: repo.chunker(),
        excludes: &excludes,
        walk: &options.walk,
        skip: options.skip.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| (m.dev(), m.ino())).collect(),
        reread: parent.iter().flat_map(|(_, s)| s.errors.iter().map(|e| e.path.clone())).collect(),
        progress,
        sqlite: (!options.raw_sqlite).then_some(options.sqlite_timeout),
        required_databases: normalize_paths(&options.sqlite_paths).into_iter().collect(),
        symlinked_parents_refused: options.symlinked_parents_refused,
        errors: Mutex::new(Vec::new()),
        counts: Counts::default(),
        prefetch: Prefetch::default(),
    };
    for path in &missing {
        archiver.record(path, "database does not exist");
    }
    // The walk recurses once per directory level on the workers' stacks, to MAX_DEPTH levels
    // (src/source/archiver.rs says what that takes): give them room.
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(64 << 20)
        .build()
        .map_err(|e| Error::Resources { what: "worker threads", reason: e.to_string() })?;
    let stop_scan = AtomicBool::new(false);
    let tree = std::thread::scope(|scope| {
        if progress.is_drawn() {
            scope.spawn(|| scan_totals(&paths, &excludes, &options.walk, progress, &stop_scan));
        }
        let tree = pool.install(|| archive_roots(&archiver, &paths, single, opened, parent_root.as_ref()));
        stop_scan.store(true, Relaxed);
        tree
    })?;
    store.finish()?;
    progress.finish();

    let counts = &archiver.counts;
    let stats = &store.stats;
    let snapshot = Snapshot {
        time_sec: start_time.as_secs() as i64,
        time_nsec: start_time.subsec_nanos(),
        duration_ms: started.elapsed().as_millis() as u64,
        tree,
        parent: parent.map(|(id, _)| id),
        hostname: host,
        username: username(),
        source: options.source.clone(),
        paths: path_bytes,
        tags: options.tags.clone(),
        summary: Summary {
            files: counts.files.load(Relaxed),
            dirs: counts.dirs.load(Relaxed),
            bytes: counts.bytes.load(Relaxed),
            files_read: counts.files_read.load(Relaxed),
            blobs_added: stats.blobs.load(Relaxed),
            bytes_added: stats.bytes.load(Relaxed),
            stored_bytes_added: stats.stored_bytes.load(Relaxed),
        },
        errors: archiver.errors.into_inner().expect("poisoned"),
    };
    let id = repo.save_snapshot(&snapshot)?;
    Ok(SnapshotOutcome {
        id,
        snapshot,
        packs_written: stats.packs.load(Relaxed),
        databases: counts.databases.load(Relaxed),
    })
}

/// Path components as a trie: a leaf is a requested path, inner nodes are its ancestors.
enum Trie {
    Leaf,
    Inner(BTreeMap<Vec<u8>, Trie>),
}

/// `single`: exactly one path was asked for (it is the root, or the root's one entry);
/// `opened`: that path's directory, already open.
fn archive_roots(
    archiver: &Archiver<'_>,
    paths: &[PathBuf],
    single: bool,
    opened: Option<Dir>,
    parent: Option<&Tree>,
) -> Result<Id> {
    if let ([only], true) = (paths, single) {
        if opened.is_some() || (only.is_dir() && !only.is_symlink()) {
            return archiver.root_tree(only, opened, parent);
        }
    }
    let mut root = BTreeMap::new();
    for path in paths {
        let parts: Vec<Vec<u8>> = if single {
            vec![path.file_name().map_or(b"root".to_vec(), |n| n.as_bytes().to_vec())]
        } else {
            path.components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part.as_bytes().to_vec()),
                    _ => None,
                })
                .collect()
        };
        let mut level = &mut root;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let slot =
                level.entry(part.clone()).or_insert_with(
                    || {
                        if last {
                            Trie::Leaf
                        } else {
                            Trie::Inner(BTreeMap::new())
                        }
                    },
                );
            match slot {
                Trie::Inner(children) if !last => level = children,
                _ => break,
            }
        }
    }
    let prefix = match (single, paths.first()) {
        (true, Some(only)) => only.parent().unwrap_or(Path::new("/")).to_path_buf(),
        _ => PathBuf::from("/"),
    };
    archive_trie(archiver, &prefix, &root, parent, 1)
}

/// Archives the paths of `children` below `prefix`, whose entries are at `level` of the
/// snapshot's tree (the root tree's entries are level 1).
fn archive_trie(
    archiver: &Archiver<'_>,
    prefix: &Path,
    children: &BTreeMap<Vec<u8>, Trie>,
    parent: Option<&Tree>,
    level: usize,
) -> Result<Id> {
    let nodes: Vec<Vec<Node>> = children
        .par_iter()
        .map(|(name, child)| {
            let path = prefix.join(OsStr::from_bytes(name));
            let previous = parent.and_then(|t| t.find(name));
            if level > MAX_DEPTH {
                archiver.record(
                    &path,
                    format!("not stored: it lies deeper than {MAX_DEPTH} levels below the snapshot's root"),
                );
                return Ok(Vec::new());
            }
            match child {
                Trie::Leaf => archiver.root_node(&path, name.clone(), previous, level),
                Trie::Inner(grandchildren) => {
                    // Below it, each root is opened without following a symlink anywhere on its
                    // way, so one put here since is an error there: this check only says so first.
                    if archiver.symlinked_parents_refused {
                        if let Err(e) = archiver.open_root(&path, false) {
                            archiver.record(&path, format!("opening directory: {e}"));
                            return Ok(Vec::new());
                        }
                    }
                    let stat = match std::fs::symlink_metadata(&path) {
                        Ok(stat) => stat,
                        Err(e) => {
                            archiver.record(&path, e);
                            return Ok(Vec::new());
                        }
                    };
                    let previous_tree = archiver.parent_subtree(previous);
                    let subtree = archive_trie(archiver, &path, grandchildren, previous_tree.as_ref(), level + 1)?;
                    let xattrs = crate::source::attributes::xattrs_at_path(&path).unwrap_or_else(|e| {
                        archiver.record(&path, format!("cannot read extended attributes, stored without them: {e}"));
                        Vec::new()
                    });
                    Ok(vec![Node {
                        name: name.clone(),
                        meta: metadata_of(&stat),
                        content: Content::Dir { subtree },
                        xattrs,
                    }])
                }
            }
        })
        .collect::<Result<_>>()?;
    let mut nodes: Vec<Node> = nodes.into_iter().flatten().collect();
    crate::source::archiver::in_name_order(&mut nodes);
    let tree = Tree { nodes };
    archiver.store_tree(&tree, prefix)
}

/// Adds up the sizes of the files to back up, for the progress bar's total and ETA. Runs beside
/// the real walk and stops early when that finishes. It keeps out of what the walk keeps out
/// of, other file systems above all: the walk is waited for, and a hung network mount that
/// `--one-file-system` keeps the walk away from must not hold the snapshot up here.
fn scan_totals(paths: &[PathBuf], excludes: &Excludes, walk: &WalkOptions, progress: &Progress, stop: &AtomicBool) {
    // Each path with the device of the file system its directory keeps to, if any.
    let mut pending: Vec<(PathBuf, Option<u64>)> = paths.iter().map(|p| (p.clone(), None)).collect();
    while let Some((path, device)) = pending.pop() {
        if stop.load(Relaxed) {
            return;
        }
        if excludes.excludes(&path) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            progress.add_total(meta.len());
        } else if meta.is_dir() && !device.is_some_and(|d| d != meta.dev()) && !walk.marks_by_path(&path) {
            let below = walk.one_file_system.then_some(meta.dev());
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| (e.path(), below)));
            }
        }
    }
}
