//! Restore drills: prove that a snapshot really restores, with evidence.
//!
//! A drill restores a snapshot into a scratch directory, then checks every restored entry against
//! the snapshot (type, mode, mtime, size, symlink target, and content re-chunked and compared chunk
//! id by chunk id), runs `PRAGMA integrity_check` on every SQLite database it restored, records
//! the evidence in the audit log, and removes the scratch directory on every exit path it
//! controls. Scratch directories left by a killed drill are removed by the next one.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Node};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::index::Index;
use crate::repository::Repository;
use crate::restore::{restore, RestoreOptions};

/// Which snapshot to drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Latest,
    Random,
    /// An id or unique id prefix.
    Id(String),
}

impl Pick {
    pub fn parse(text: &str) -> Pick {
        match text {
            "latest" => Pick::Latest,
            "random" => Pick::Random,
            other => Pick::Id(other.to_string()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub snapshot: String,
    pub source: String,
    pub files: u64,
    pub bytes: u64,
    pub checks_passed: u64,
    pub checks_failed: u64,
    /// One line per failed check, naming the path.
    pub failures: Vec<String>,
    /// SQLite databases found among the restored files and their integrity check result.
    pub databases: Vec<DatabaseCheck>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct DatabaseCheck {
    pub path: String,
    pub result: String,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.checks_failed == 0
    }
}

/// Picks the snapshot to drill among those of `source` (a `--source` name or a snapshot's paths).
pub fn pick_snapshot(repo: &Repository, pick: &Pick, source: Option<&str>) -> Result<(Id, Snapshot)> {
    if let Pick::Id(id) = pick {
        return repo.find_snapshot(id);
    }
    let mut candidates = repo.snapshots()?;
    if let Some(source) = source {
        candidates.retain(|(_, s)| s.source_key() == source);
    }
    if candidates.is_empty() {
        return Err(Error::NoSuchSnapshot(source.map_or("any snapshot".into(), |s| format!("a snapshot of {s}"))));
    }
    let chosen = match pick {
        Pick::Random => {
            u64::from_le_bytes(crate::id::random_bytes()[..8].try_into().expect("8")) as usize % candidates.len()
        }
        _ => candidates.len() - 1,
    };
    Ok(candidates.swap_remove(chosen))
}

/// Removes the scratch directory however the drill ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Removes a tree even where the restore left read-only directories.
fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(meta) = fs::symlink_metadata(&dir) {
            if meta.is_dir() {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
                if let Ok(entries) = fs::read_dir(&dir) {
                    pending.extend(entries.flatten().map(|e| e.path()));
                }
            }
        }
    }
    let _ = fs::remove_dir_all(path);
}

/// Removes `cairn-drill-<pid>-*` directories whose process is gone.
fn remove_stale_scratch(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("cairn-drill-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if !crate::backend::local::process_alive(pid) {
            remove_tree(&entry.path());
        }
    }
}

pub fn drill(
    repo: &Repository,
    id: &Id,
    snapshot: &Snapshot,
    scratch_parent: &Path,
    progress: &Progress,
) -> Result<DrillReport> {
    let started = Instant::now();
    fs::create_dir_all(scratch_parent).map_err(|e| Error::io(scratch_parent, e))?;
    remove_stale_scratch(scratch_parent);
    if let Some(free) = crate::disk::space(scratch_parent).map(|s| s.free) {
        if free < snapshot.summary.bytes + (64 << 20) {
            return Err(Error::Invalid(format!(
                "{} has {} MiB free, the drill needs about {} MiB: pass --scratch DIR on a larger file system",
                scratch_parent.display(),
                free >> 20,
                snapshot.summary.bytes >> 20
            )));
        }
    }
    let scratch = Scratch(scratch_parent.join(format!(
        "cairn-drill-{}-{}",
        std::process::id(),
        Id(crate::id::random_bytes()).short()
    )));
    fs::create_dir(&scratch.0).map_err(|e| Error::io(&scratch.0, e))?;
    let index = repo.load_index()?;
    let restored =
        restore(repo, &index, snapshot, &RestoreOptions { target: scratch.0.clone(), ..Default::default() }, progress)?;

    let verifier = Verifier {
        repo,
        index: &index,
        chunker: repo.chunker(),
        root: &scratch.0,
        passed: AtomicU64::new(0),
        failures: Mutex::new(
            restored
                .errors
                .iter()
                .map(|e| format!("{}: restore failed: {}", relative(&scratch.0, &e.path), e.message))
                .collect(),
        ),
        databases: Mutex::new(Vec::new()),
    };
    verifier.tree(&snapshot.tree, &scratch.0);
    let mut failures = verifier.failures.into_inner().expect("poisoned");
    failures.sort();
    let mut databases = verifier.databases.into_inner().expect("poisoned");
    databases.sort_by(|a, b| a.path.cmp(&b.path));
    let checks_passed = verifier.passed.into_inner();
    drop(scratch);
    Ok(DrillReport {
        snapshot: id.to_hex(),
        source: snapshot.source_key(),
        files: restored.files,
        bytes: restored.bytes,
        checks_passed,
        checks_failed: failures.len() as u64,
        failures,
        databases,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

fn relative(root: &Path, path: &str) -> String {
    Path::new(path).strip_prefix(root).map_or(path.to_string(), |p| format!("/{}", p.display()))
}

struct Verifier<'a> {
    repo: &'a Repository,
    index: &'a Index,
    chunker: Chunker,
    root: &'a Path,
    passed: AtomicU64,
    failures: Mutex<Vec<String>>,
    databases: Mutex<Vec<DatabaseCheck>>,
}

impl Verifier<'_> {
    fn fail(&self, path: &Path, what: String) {
        let shown = relative(self.root, &path.display().to_string());
        self.failures.lock().expect("poisoned").push(format!("{shown}: {what}"));
    }

    fn tree(&self, id: &Id, dir: &Path) {
        match self.repo.read_tree(self.index, id) {
            Ok(tree) => {
                tree.nodes.par_iter().for_each(|node| self.node(node, &dir.join(OsStr::from_bytes(&node.name))))
            }
            Err(e) => self.fail(dir, format!("directory listing unreadable: {e}")),
        }
    }

    /// One check per entry: it passes only if everything about the entry matches.
    fn node(&self, node: &Node, path: &Path) {
        if matches!(node.content, Content::Socket) {
            return; // recorded, never restored
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) => return self.fail(path, format!("not restored: {e}")),
        };
        let m = &node.meta;
        let mut problems = Vec::new();
        if !is_symlink_content(&node.content) && meta.mode() & 0o7777 != m.mode {
            problems.push(format!("mode {:o}, snapshot has {:o}", meta.mode() & 0o7777, m.mode));
        }
        if (meta.mtime(), meta.mtime_nsec() as u32) != (m.mtime_sec, m.mtime_nsec) {
            problems.push("mtime differs".to_string());
        }
        match &node.content {
            Content::Dir { subtree } => {
                if !meta.is_dir() {
                    problems.push("not a directory".into());
                } else {
                    self.tree(subtree, path);
                }
            }
            Content::File { chunks } => {
                if !meta.is_file() || meta.len() != m.size {
                    problems.push(format!("size {} (or not a file), snapshot has {}", meta.len(), m.size));
                } else {
                    match crate::source::same_content(&self.chunker, path, m.size, chunks) {
                        Ok(true) => self.sqlite(path),
                        Ok(false) => problems.push("content differs from the snapshot".into()),
                        Err(e) => problems.push(format!("cannot read back: {e}")),
                    }
                }
            }
            Content::Symlink { target } => match fs::read_link(path) {
                Ok(found) if found.as_os_str().as_bytes() == target.as_slice() => {}
                _ => problems.push("symlink target differs".into()),
            },
            _ => {}
        }
        if problems.is_empty() {
            self.passed.fetch_add(1, Relaxed);
        } else {
            self.fail(path, problems.join("; "));
        }
    }

    /// Runs `PRAGMA integrity_check` if the file is an SQLite database.
    fn sqlite(&self, path: &Path) {
        if !crate::source::sqlite::is_database(path) {
            return;
        }
        let result = crate::source::sqlite::integrity_check(path);
        let shown = relative(self.root, &path.display().to_string());
        if result != "ok" {
            self.fail(path, format!("SQLite integrity_check: {result}"));
        }
        self.databases.lock().expect("poisoned").push(DatabaseCheck { path: shown, result });
    }
}

fn is_symlink_content(content: &Content) -> bool {
    matches!(content, Content::Symlink { .. })
}
