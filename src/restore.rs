//! Restoring a snapshot (or parts of it) into a target directory.
//!
//! Files are written in parallel, each chunk verified against its id as it is read, so a damaged
//! repository can never restore wrong bytes silently: the damaged file is reported and every other
//! file still restores. Hard links are made after all content is written; directory metadata is
//! applied last, deepest first, because creating entries changes a directory's mtime and a
//! read-only directory would refuse the entries still to come.
//!
//! An existing non-directory entry at a restored path is replaced, never written through (it may
//! be a symlink pointing outside the target).

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::snapshot::{Snapshot, SourceError};
use crate::format::tree::{Content, Metadata, Node, Tree};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::index::Index;
use crate::repository::Repository;
use crate::source::sqlite;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (relative to its root); empty restores everything.
    pub includes: Vec<String>,
    /// Leave existing files whose content already matches the snapshot (their metadata is still
    /// restored), so a restore into a non-empty target writes only what differs.
    pub skip_identical: bool,
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
}

struct Restorer<'a> {
    repo: &'a Repository,
    index: &'a Index,
    progress: &'a Progress,
    /// Set with `skip_identical`: cuts existing files to compare them with the snapshot.
    compare: Option<crate::chunking::Chunker>,
    unchanged: AtomicU64,
    as_root: bool,
    errors: Mutex<Vec<SourceError>>,
    /// (dev, inode) of multiply-linked files to the first path restored for them.
    link_sources: Mutex<HashMap<(u64, u64), PathBuf>>,
    links: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// Multiply-linked files whose content failed: their other names must fail too.
    failed: Mutex<HashSet<PathBuf>>,
    dirs: Mutex<Vec<(PathBuf, Metadata)>>,
    files: AtomicU64,
    dir_count: AtomicU64,
    bytes: AtomicU64,
    sockets: AtomicU64,
}

/// Splits an include path into its components, ignoring `/`, `.` and empty parts.
fn components(path: &str) -> Vec<&[u8]> {
    path.as_bytes().split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".").collect()
}

/// Finds the node at `path` below the root tree; `None` for the root itself.
pub fn find_node(repo: &Repository, index: &Index, root: &Id, path: &str, snapshot: &str) -> Result<Option<Node>> {
    let parts = components(path);
    let missing = || Error::NoSuchPath { snapshot: snapshot.to_string(), path: path.to_string() };
    let mut tree = repo.read_tree(index, root)?;
    let mut found = None;
    for (i, part) in parts.iter().enumerate() {
        let node = tree.find(part).ok_or_else(missing)?.clone();
        if i + 1 < parts.len() {
            match &node.content {
                Content::Dir { subtree } => tree = repo.read_tree(index, subtree)?,
                _ => return Err(missing()),
            }
        }
        found = Some(node);
    }
    Ok(found)
}

pub fn restore(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreSummary> {
    let restorer = Restorer {
        repo,
        index,
        progress,
        compare: options.skip_identical.then(|| repo.chunker()),
        unchanged: AtomicU64::new(0),
        // SAFETY: geteuid cannot fail.
        as_root: unsafe { libc::geteuid() } == 0,
        errors: Mutex::new(Vec::new()),
        link_sources: Mutex::new(HashMap::new()),
        links: Mutex::new(Vec::new()),
        failed: Mutex::new(HashSet::new()),
        dirs: Mutex::new(Vec::new()),
        files: AtomicU64::new(0),
        dir_count: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        sockets: AtomicU64::new(0),
    };
    // Resolve every include before writing anything, so a typo changes nothing.
    let short = snapshot.tree.short();
    let mut selected: Vec<(PathBuf, Option<Node>)> = Vec::new();
    if options.includes.is_empty() {
        selected.push((options.target.clone(), None));
    } else {
        for include in &options.includes {
            let node = find_node(repo, index, &snapshot.tree, include, &short)?;
            let mut path = options.target.clone();
            components(include).iter().for_each(|p| path.push(OsStr::from_bytes(p)));
            selected.push((path, node));
        }
    }
    fs::create_dir_all(&options.target).map_err(|e| Error::io(&options.target, e))?;
    if options.includes.is_empty() {
        progress.add_total(snapshot.summary.bytes);
    }
    selected.par_iter().for_each(|(path, node)| match node {
        None => restorer.tree(&snapshot.tree, path),
        Some(node) => {
            if let Some(parent) = path.parent() {
                if let Err(e) = fs::create_dir_all(parent) {
                    restorer.record(parent, e);
                    return;
                }
            }
            restorer.node(node, path, false);
        }
    });
    restorer.finish_links();
    restorer.finish_dirs();
    progress.finish();
    Ok(RestoreSummary {
        files: restorer.files.load(Relaxed),
        dirs: restorer.dir_count.load(Relaxed),
        bytes: restorer.bytes.load(Relaxed),
        errors: restorer.errors.into_inner().expect("poisoned"),
        sockets_skipped: restorer.sockets.load(Relaxed),
        files_unchanged: restorer.unchanged.load(Relaxed),
    })
}

impl Restorer<'_> {
    fn record(&self, path: &Path, message: impl std::fmt::Display) {
        let error = SourceError { path: path.display().to_string(), message: message.to_string() };
        self.progress.warn(&format!("error: {}: {}", error.path, error.message));
        self.errors.lock().expect("poisoned").push(error);
    }

    fn tree(&self, id: &Id, dir: &Path) {
        let tree: Tree = match self.repo.read_tree(self.index, id) {
            Ok(tree) => tree,
            Err(e) => return self.record(dir, format!("cannot read directory listing: {e}")),
        };
        // A database stored together with its -wal or -journal (a --raw-sqlite snapshot) is a raw
        // copy: it is restored as plain bytes beside its companions, never checked or swapped in.
        let names: HashSet<&[u8]> = tree.nodes.iter().map(|n| n.name.as_slice()).collect();
        tree.nodes.par_iter().for_each(|node| {
            let raw = [&b"-wal"[..], b"-journal"]
                .iter()
                .any(|suffix| names.contains([&node.name, *suffix].concat().as_slice()));
            self.node(node, &dir.join(OsStr::from_bytes(&node.name)), raw)
        });
    }

    /// `raw_database`: restore as plain bytes even if the content is an SQLite database.
    fn node(&self, node: &Node, path: &Path, raw_database: bool) {
        let result = match &node.content {
            Content::Dir { subtree } => {
                match fs::symlink_metadata(path) {
                    Ok(meta) if meta.is_dir() => {}
                    _ => {
                        if let Err(e) = remove_non_dir(path).and_then(|_| fs::create_dir(path)) {
                            return self.record(path, e);
                        }
                    }
                }
                self.dir_count.fetch_add(1, Relaxed);
                self.dirs.lock().expect("poisoned").push((path.to_path_buf(), node.meta));
                self.tree(subtree, path);
                return;
            }
            Content::File { chunks } => {
                if node.meta.nlink > 1 {
                    let key = (node.meta.dev, node.meta.ino);
                    let mut sources = self.link_sources.lock().expect("poisoned");
                    if let Some(first) = sources.get(&key) {
                        self.links.lock().expect("poisoned").push((path.to_path_buf(), first.clone()));
                        return;
                    }
                    sources.insert(key, path.to_path_buf());
                }
                let written = self.file(node, chunks, path, raw_database);
                if written.is_err() && node.meta.nlink > 1 {
                    self.failed.lock().expect("poisoned").insert(path.to_path_buf());
                }
                written
            }
            Content::Symlink { target } => remove_non_dir(path)
                .and_then(|_| std::os::unix::fs::symlink(OsStr::from_bytes(target), path))
                .map_err(|e| e.to_string())
                .and_then(|_| self.metadata(path, &node.meta, true)),
            Content::Fifo => make_node(path, libc::S_IFIFO, 0).and_then(|_| self.metadata(path, &node.meta, false)),
            Content::CharDevice { rdev } => {
                make_node(path, libc::S_IFCHR, *rdev).and_then(|_| self.metadata(path, &node.meta, false))
            }
            Content::BlockDevice { rdev } => {
                make_node(path, libc::S_IFBLK, *rdev).and_then(|_| self.metadata(path, &node.meta, false))
            }
            Content::Socket => {
                self.sockets.fetch_add(1, Relaxed);
                self.progress.warn(&format!("note: {}: sockets are recorded but not restored", path.display()));
                return;
            }
        };
        if let Err(message) = result {
            self.record(path, message);
        }
    }

    /// Whether the file at `path` already holds exactly this content.
    fn already_there(&self, node: &Node, chunks: &[Id], path: &Path) -> bool {
        let Some(chunker) = &self.compare else { return false };
        matches!(fs::symlink_metadata(path), Ok(meta) if meta.is_file() && meta.len() == node.meta.size)
            && crate::source::same_content(chunker, path, node.meta.size, chunks).unwrap_or(false)
    }

    fn file(&self, node: &Node, chunks: &[Id], path: &Path, raw_database: bool) -> std::result::Result<(), String> {
        if self.already_there(node, chunks, path) {
            self.metadata(path, &node.meta, false)?;
            self.unchanged.fetch_add(1, Relaxed);
            self.files.fetch_add(1, Relaxed);
            self.progress.file_done(node.meta.size);
            return Ok(());
        }
        // A database is written beside its destination and checked before it replaces anything:
        // a failed restore leaves the existing database as it was.
        let first = match chunks.first() {
            Some(id) => Some(self.repo.read_blob(self.index, id).map_err(|e| e.to_string())?),
            None => None,
        };
        let database = !raw_database && first.as_deref().is_some_and(|d| d.starts_with(sqlite::HEADER));
        let written = if database {
            self.database_file(node, first, chunks, path)?
        } else {
            // Metadata through the open file: no more lookups of its path.
            let (file, written) = self.write_content(path, first, chunks, node.meta.size, false)?;
            self.file_metadata(&file, &node.meta)?;
            written
        };
        self.files.fetch_add(1, Relaxed);
        self.bytes.fetch_add(written, Relaxed);
        self.progress.file_done(0);
        Ok(())
    }

    /// Writes a database beside `path`, checks it, and only then puts it in place; returns its
    /// length. A failure leaves the existing database as it was.
    fn database_file(
        &self,
        node: &Node,
        first: Option<Vec<u8>>,
        chunks: &[Id],
        path: &Path,
    ) -> std::result::Result<u64, String> {
        let destination = temporary_sibling(path);
        let result = self.write_content(&destination, first, chunks, node.meta.size, true).and_then(|(_, written)| {
            // Checked before its mode is applied: a mode without owner read must not fail it.
            let verdict = sqlite::integrity_check(&destination);
            if verdict != "ok" {
                return Err(format!("restored database fails integrity_check, existing file kept: {verdict}"));
            }
            self.metadata(&destination, &node.meta, false)?;
            replace_database(&destination, path).map_err(|e| format!("replacing the database: {e}"))?;
            Ok(written)
        });
        if result.is_err() {
            let _ = fs::remove_file(&destination);
        }
        result
    }

    /// Writes a file's chunks (the first already read) to a new file at `path`, replacing a
    /// non-directory entry there; returns the open file and its length.
    fn write_content(
        &self,
        path: &Path,
        first: Option<Vec<u8>>,
        chunks: &[Id],
        expected: u64,
        sync: bool,
    ) -> std::result::Result<(fs::File, u64), String> {
        // O_EXCL never follows a symlink in the way. Trying first saves a lookup per file in the
        // usual restore into an empty target.
        let create = || OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => remove_non_dir(path).and_then(|_| create()),
            other => other,
        }
        .map_err(|e| e.to_string())?;
        let mut written = 0u64;
        let mut write = |data: &[u8]| -> std::result::Result<(), String> {
            file.write_all(data).map_err(|e| e.to_string())?;
            written += data.len() as u64;
            self.progress.add_bytes(data.len() as u64);
            Ok(())
        };
        if let Some(first) = first {
            write(&first)?;
        }
        for id in chunks.iter().skip(1) {
            write(&self.repo.read_blob(self.index, id).map_err(|e| e.to_string())?)?;
        }
        if written != expected {
            return Err(format!("restored {written} bytes, the snapshot recorded {expected}"));
        }
        if sync {
            file.sync_all().map_err(|e| e.to_string())?;
        }
        Ok((file, written))
    }

    /// [`Restorer::metadata`] for a regular file still open.
    fn file_metadata(&self, file: &fs::File, meta: &Metadata) -> std::result::Result<(), String> {
        use std::os::fd::AsRawFd;
        if self.as_root {
            std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid)).map_err(|e| format!("chown: {e}"))?;
        }
        file.set_permissions(fs::Permissions::from_mode(meta.mode)).map_err(|e| format!("chmod: {e}"))?;
        let times = mtime_only(meta.mtime_sec, meta.mtime_nsec);
        // SAFETY: a valid descriptor and two timespecs, as futimens requires.
        if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
            return Err(format!("setting mtime: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Owner (as root), mode (not for symlinks), then mtime, in that order: chown clears setuid.
    fn metadata(&self, path: &Path, meta: &Metadata, symlink: bool) -> std::result::Result<(), String> {
        if self.as_root {
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(|e| format!("chown: {e}"))?;
        }
        if !symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).map_err(|e| format!("chmod: {e}"))?;
        }
        set_mtime(path, meta.mtime_sec, meta.mtime_nsec).map_err(|e| format!("setting mtime: {e}"))
    }

    fn finish_links(&self) {
        let failed = std::mem::take(&mut *self.failed.lock().expect("poisoned"));
        for (path, first) in std::mem::take(&mut *self.links.lock().expect("poisoned")) {
            if failed.contains(&first) {
                self.record(&path, format!("not restored: its hard link {} failed", first.display()));
                continue;
            }
            match remove_non_dir(&path).and_then(|_| fs::hard_link(&first, &path)) {
                Ok(()) => {
                    self.files.fetch_add(1, Relaxed);
                }
                Err(e) => self.record(&path, format!("hard link to {}: {e}", first.display())),
            }
        }
    }

    fn finish_dirs(&self) {
        let mut dirs = std::mem::take(&mut *self.dirs.lock().expect("poisoned"));
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, meta) in dirs {
            if let Err(e) = self.metadata(&path, &meta, false) {
                self.record(&path, e);
            }
        }
    }
}

/// A hidden name beside `path` for writing its replacement.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.cairn-restore-{}", Id(crate::id::random_bytes()).short()))
}

/// Puts a checked database in place of the one at `path` (if any). The old database's `-wal` and
/// `-shm` are moved aside first, because SQLite would replay a stale WAL into the new file; they
/// are deleted once the new database is in place. The old file itself stays until the rename.
fn replace_database(new: &Path, path: &Path) -> std::io::Result<()> {
    let mut set_aside = Vec::new();
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let companion = PathBuf::from(companion);
        if fs::symlink_metadata(&companion).is_ok() {
            let aside = temporary_sibling(&companion);
            fs::rename(&companion, &aside)?;
            set_aside.push((aside, companion));
        }
    }
    if let Err(e) = fs::rename(new, path) {
        // Put the old database's companions back: it stays exactly as it was.
        for (aside, companion) in &set_aside {
            let _ = fs::rename(aside, companion);
        }
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        crate::backend::local::sync_dir(dir).map_err(|e| e.into_io())?;
    }
    for (aside, _) in set_aside {
        let _ = fs::remove_file(aside);
    }
    Ok(())
}

/// Removes whatever non-directory entry is at `path`; a missing entry is fine.
fn remove_non_dir(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a directory is in the way"))
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn make_node(path: &Path, kind: libc::mode_t, rdev: u64) -> std::result::Result<(), String> {
    remove_non_dir(path).map_err(|e| e.to_string())?;
    let c = c_path(path).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, rdev as libc::dev_t) } != 0 {
        return Err(format!("mknod: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets the mtime of `path` itself (not a symlink's target), leaving the atime alone.
fn set_mtime(path: &Path, sec: i64, nsec: u32) -> std::io::Result<()> {
    let c = c_path(path)?;
    let times = mtime_only(sec, nsec);
    // SAFETY: `c` is a valid path and `times` holds two timespecs, as utimensat requires.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The (atime, mtime) pair for utimensat/futimens that sets the mtime and leaves the atime.
fn mtime_only(sec: i64, nsec: u32) -> [libc::timespec; 2] {
    [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as libc::c_long },
    ]
}
