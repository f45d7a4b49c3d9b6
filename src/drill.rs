//! Restore drills: prove that a snapshot really restores, with evidence.
//!
//! A drill restores a snapshot into a scratch directory, then checks every restored entry against
//! the snapshot (type, mode, mtime, size, symlink target, and content re-chunked and compared chunk
//! id by chunk id), runs `PRAGMA integrity_check` on every SQLite database it restored, records
//! the evidence in the audit log, and removes the scratch directory on every exit path it
//! controls, an interruption included (the caller's `cancel` flag, set on SIGINT or SIGTERM by
//! the binary); so are the parents of a scratch directory that the drill had to create. Scratch
//! directories left by a killed drill (`kill -9`) are removed by the next one.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Node, Tree};
use crate::fs_at::{is_dir, is_file, remove_tree, Dir, Place};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::{Indexed, Repository};
use crate::restore::{restore, RestoreOptions};
/// Which snapshot to drill: `latest`, `random` or an id, as every command picks one.
pub use crate::select::{Filter, Pick};
use crate::walk::{depth_first, InParallel, Open, Parallel, Step, Visitor};

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

/// A drill as the audited run `drill` (store-format/audit.md) of the snapshot `pick` selects
/// among those `filter` does: restored below `scratch_parent` and verified ([`drill`]); ok when
/// every check passes. Its record names the snapshot's source, so a killed drill is a failed
/// drill of that source. The record is also written into each repository of `also` (`cairn run`
/// drilling an offsite copy records it where the local status looks), naming this one in
/// `details.repository`; what could not be written there is in `audit_error`. What `cairn drill`
/// runs, and what an embedder calls.
pub fn drill_picked(
    repo: &Repository,
    pick: &Pick,
    filter: &Filter,
    scratch_parent: &Path,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
    also: &[Repository],
) -> Audited<DrillReport> {
    let picked = pick_snapshot(repo, pick, filter);
    let mut run = match &picked {
        Ok((id, snapshot)) => {
            let mut run = Run::start("drill", &snapshot.source_key());
            run.record.snapshot = Some(id.to_hex());
            run
        }
        Err(_) => Run::start("drill", filter.source.as_deref().unwrap_or("")),
    };
    let drilled = repo.backend().location();
    let named = |mut details: serde_json::Value| {
        if !also.is_empty() {
            details["repository"] = serde_json::json!(drilled);
        }
        details
    };
    run.record.details = named(serde_json::json!({}));
    // The start record once the snapshot is picked (store-format/audit.md, "start").
    let picked_one = picked.is_ok();
    let mut audited = run.around_from(repo, picked_one, |record| {
        let (id, snapshot) = picked?;
        let report = drill(repo, &id, &snapshot, scratch_parent, progress, cancel)?;
        record.files = report.files;
        record.bytes = report.bytes;
        record.errors = report.failures.iter().take(100).cloned().collect();
        record.details = named(serde_json::json!({
            "checks_passed": report.checks_passed,
            "checks_failed": report.checks_failed,
            "databases": report.databases,
            "duration_ms": report.duration_ms,
        }));
        let how = if report.passed() { Outcome::Ok } else { Outcome::Failed };
        Ok((report, how))
    });
    for other in also {
        crate::audit::write_copy(&mut audited.audit_error, other, &audited.record);
    }
    audited
}

/// Picks the snapshot to drill among those `filter` selects.
pub fn pick_snapshot(repo: &Repository, pick: &Pick, filter: &Filter) -> Result<(Id, Snapshot)> {
    crate::select::find(repo, pick, filter)
}

/// Removes the scratch directory however the drill ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// The directories a drill created to reach its scratch parent: removed (when empty) however
/// the drill ends, so a `--scratch` that did not exist leaves nothing behind.
struct CreatedParents(Vec<PathBuf>);

impl CreatedParents {
    /// Creates `path` and its missing parents, private to this user, remembering which.
    fn create(path: &Path) -> Result<CreatedParents> {
        let mut missing = Vec::new();
        let mut at = Some(path);
        while let Some(dir) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            missing.push(dir.to_path_buf());
            at = dir.parent();
        }
        let mut created = CreatedParents(Vec::new());
        for dir in missing.into_iter().rev() {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => created.0.push(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&dir, e)),
            }
        }
        Ok(created)
    }
}

impl Drop for CreatedParents {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Removes `cairn-drill-<pid>-*` directories whose process is gone.
fn remove_stale_scratch(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("cairn-drill-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if !crate::host::process_alive(pid) {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// What a drill of `snapshot` writes for certain: the bytes of its files without a chunk of
/// zeros (a file with several names once), whose content the restore writes whole. (A file
/// with one may be a thin image, whose chunks around its data are mostly zeros: what it takes
/// is known only once written.) Chunks of zeros are known by their ids: a run of zeros as this
/// repository cuts it and zeroed pages of the usual sizes (a database's). Walks the trees, so it
/// is asked only when the snapshot's size does not fit; it stops once the count passes `limit`,
/// or when `cancel` is set.
fn dense_bytes(repo: &Indexed, snapshot: &Snapshot, limit: u64, cancel: Option<&AtomicBool>) -> u64 {
    struct Sizer<'a> {
        repo: &'a Indexed<'a>,
        zeros: HashSet<Id>,
        linked: HashSet<(u64, u64)>,
        dense: u64,
        limit: u64,
        cancel: Option<&'a AtomicBool>,
    }
    impl Visitor for Sizer<'_> {
        type State = ();
        const PATHS: bool = false;

        fn open(&mut self, id: &Id, _: &[u8]) -> Result<Option<(Tree, ())>> {
            Ok(self.repo.read_tree(id).ok().map(|tree| (tree, ())))
        }

        fn entry(&mut self, dir: &mut Open<()>, at: usize, _: &[u8]) -> Result<Step> {
            if self.dense > self.limit || self.cancel.is_some_and(|cancel| cancel.load(Relaxed)) {
                return Ok(Step::Stop);
            }
            let node = &dir.tree.nodes[at];
            match &node.content {
                Content::Dir { .. } => return Ok(Step::Descend),
                Content::File { chunks }
                    if node.meta.nlink <= 1 || self.linked.insert((node.meta.dev, node.meta.ino)) =>
                {
                    let (mut bytes, mut holes) = (0u64, false);
                    for id in self.repo.chunk_list(chunks).unwrap_or_default().iter() {
                        if self.zeros.contains(id) {
                            holes = true;
                        } else {
                            bytes = bytes.saturating_add(self.repo.index().get(id).map_or(0, |l| l.raw_len as u64));
                        }
                    }
                    if !holes {
                        self.dense = self.dense.saturating_add(bytes);
                    }
                }
                _ => {}
            }
            Ok(Step::Skip)
        }
    }
    let chunker = repo.chunker();
    let (run, run_id) = chunker.zero_run();
    let pages = (9..=16).map(|bits| vec![0; 1 << bits]).filter(|page| page.len() < run);
    let zeros = pages.map(|page| chunker.hasher().id(&page)).chain([run_id]).collect();
    let mut sizer = Sizer { repo, zeros, linked: HashSet::new(), dense: 0, limit, cancel };
    // An unreadable tree counts nothing: the restore reports it.
    let _ = depth_first(&snapshot.tree, Vec::new(), &mut sizer);
    sizer.dense
}

pub fn drill(
    repo: &Repository,
    id: &Id,
    snapshot: &Snapshot,
    scratch_parent: &Path,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
) -> Result<DrillReport> {
    let started = Instant::now();
    let _created = CreatedParents::create(scratch_parent)?;
    remove_stale_scratch(scratch_parent);
    let repo = &Indexed::load(repo)?;
    // The scratch directory never takes its disk below this: the restore stops there.
    let spare: u64 = 64 << 20;
    if let Some(free) = crate::disk::space(scratch_parent).map(|s| s.free) {
        // Room for the files, or at least for those without runs of zeros: the rest (thin
        // images) take what their data does, known once written, and the restore stops if the
        // room runs out.
        let refuse = |needed: u64| {
            Error::NoSpace(format!(
                "{} has {} MiB free, the drill needs {} MiB or more and {} MiB to spare: pass --scratch DIR on a \
                 larger file system",
                scratch_parent.display(),
                free >> 20,
                needed >> 20,
                spare >> 20
            ))
        };
        if free < spare {
            return Err(refuse(0));
        }
        if free < snapshot.summary.bytes.saturating_add(spare) {
            let dense = dense_bytes(repo, snapshot, free - spare, cancel);
            if cancel.is_some_and(|cancel| cancel.load(Relaxed)) {
                return Err(Error::Interrupted);
            }
            if free < dense.saturating_add(spare) {
                return Err(refuse(dense));
            }
        }
    }
    let scratch = Scratch(scratch_parent.join(format!(
        "cairn-drill-{}-{}",
        std::process::id(),
        Id(crate::id::random_bytes()).short()
    )));
    fs::DirBuilder::new().mode(0o700).create(&scratch.0).map_err(|e| Error::io(&scratch.0, e))?;
    // With holes: a drill of a VM image needs room for its data, not for its size.
    let options = RestoreOptions {
        target: scratch.0.clone(),
        sparse: true,
        keep_free: Some(spare),
        cancel,
        ..Default::default()
    };
    let restored = restore(repo, id, snapshot, &options, progress)?;

    let root = Dir::open(&scratch.0).map_err(|e| Error::io(&scratch.0, e))?;
    let verifier = Verifier {
        repo,
        chunker: repo.chunker(),
        scratch: &scratch.0,
        passed: AtomicU64::new(0),
        failures: Mutex::new(
            restored
                .errors
                .iter()
                .map(|e| format!("{}: restore failed: {}", relative(&scratch.0, &e.path), e.message))
                .collect(),
        ),
        databases: Mutex::new(Vec::new()),
        cancel,
    };
    let walk = Parallel::new(repo, &root, &verifier);
    walk.tree(&root, &Place::root(), &snapshot.tree);
    walk.finish();
    let mut failures = verifier.failures.into_inner().expect("poisoned");
    failures.sort();
    let mut databases = verifier.databases.into_inner().expect("poisoned");
    databases.sort_by(|a, b| a.path.cmp(&b.path));
    if cancel.is_some_and(|cancel| cancel.load(Relaxed)) {
        return Err(Error::Interrupted);
    }
    let checks_passed = verifier.passed.into_inner();
    drop(root);
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
    repo: &'a Indexed<'a>,
    chunker: Chunker,
    /// The scratch directory as a path: only for SQLite, which opens databases by path.
    scratch: &'a Path,
    passed: AtomicU64,
    failures: Mutex<Vec<String>>,
    databases: Mutex<Vec<DatabaseCheck>>,
    cancel: Option<&'a AtomicBool>,
}

impl InParallel for Verifier<'_> {
    /// Databases stored as they lay beside a journal or WAL: their file alone is not the
    /// database (a rollback or the WAL completes it when SQLite opens them), so it is not checked.
    type Listing = HashSet<Vec<u8>>;

    fn listing(&self, nodes: &[Node]) -> HashSet<Vec<u8>> {
        crate::restore::stored_as_they_lay(nodes)
    }

    fn entry(&self, node: &Node, raw: &HashSet<Vec<u8>>, dir: &Dir, place: &Arc<Place>) -> Option<(Dir, Arc<Place>)> {
        self.check(node, dir, place, raw.contains(&node.name))
    }

    fn unreadable(&self, place: &Place, error: Error) {
        self.fail(
            crate::names::shown_path(&place.path(Path::new("/"))).into_owned(),
            format!("directory listing unreadable: {error}"),
        )
    }

    fn unopened(&self, place: &Place, error: std::io::Error) {
        self.fail(crate::names::shown_path(&place.path(Path::new("/"))).into_owned(), format!("cannot open: {error}"))
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|cancel| cancel.load(Relaxed))
    }
}

impl Verifier<'_> {
    /// The entry's path as the report shows it: from the scratch directory, starting with `/`.
    fn shown(place: &Place, name: &[u8]) -> String {
        crate::names::shown_path(&place.path(Path::new("/")).join(OsStr::from_bytes(name))).into_owned()
    }

    fn fail(&self, shown: String, what: String) {
        self.failures.lock().expect("poisoned").push(format!("{shown}: {what}"));
    }

    /// One check per entry: it passes only if everything about the entry matches. Entries are
    /// reached through their directory's descriptor, never by following a symlink. A directory
    /// that is one is returned open, to be walked.
    /// Checks `node` against what was restored; `as_it_lay`: a database stored as it lay beside
    /// its journal or WAL, whose file alone is not checked by SQLite.
    fn check(&self, node: &Node, dir: &Dir, place: &Arc<Place>, as_it_lay: bool) -> Option<(Dir, Arc<Place>)> {
        if matches!(node.content, Content::Socket) {
            return None; // recorded, never restored
        }
        let name = node.name.as_slice();
        let st = match dir.stat(name) {
            Ok(st) => st,
            Err(e) => {
                self.fail(Self::shown(place, name), format!("not restored: {e}"));
                return None;
            }
        };
        let mut below = None;
        let m = &node.meta;
        let mut problems = Vec::new();
        let mode = st.st_mode & 0o7777;
        if !matches!(node.content, Content::Symlink { .. }) && mode != m.mode {
            problems.push(format!("mode {mode:o}, snapshot has {:o}", m.mode));
        }
        if (st.st_mtime, st.st_mtime_nsec as u32) != (m.mtime_sec, m.mtime_nsec) {
            problems.push("mtime differs".to_string());
        }
        match &node.content {
            Content::Dir { .. } if is_dir(&st) => match dir.open_dir(name) {
                Ok(child) => below = Some((child, place.child(name))),
                Err(e) => problems.push(format!("cannot open: {e}")),
            },
            Content::Dir { .. } => problems.push("not a directory".into()),
            Content::File { chunks } => {
                if !is_file(&st) || st.st_size as u64 != m.size {
                    problems.push(format!("size {} (or not a file), snapshot has {}", st.st_size, m.size));
                } else {
                    match dir.open_regular(name) {
                        Ok(Some((file, _))) => {
                            let same = self
                                .repo
                                .chunk_list(chunks)
                                .map(|chunks| crate::source::same_content(&self.chunker, &file, m.size, &chunks));
                            match same {
                                Ok(Ok(true)) if !as_it_lay => self.sqlite(&file, place, name),
                                Ok(Ok(true)) => {}
                                Ok(Ok(false)) => problems.push("content differs from the snapshot".into()),
                                Ok(Err(e)) => problems.push(format!("cannot read back: {e}")),
                                Err(e) => problems.push(format!("its chunk list: {e}")),
                            }
                        }
                        Ok(None) => problems.push("not a regular file".into()),
                        Err(e) => problems.push(format!("cannot read back: {e}")),
                    }
                }
            }
            Content::Symlink { target } => match dir.read_link(name) {
                Ok(found) if found == *target => {}
                _ => problems.push("symlink target differs".into()),
            },
            _ => {}
        }
        // What a restore could set here, it must have set (a drill as root checks them all).
        if crate::xattr::differ(dir.raw_fd(), name, &node.xattrs) {
            problems.push("extended attributes differ from the snapshot".into());
        }
        if problems.is_empty() {
            self.passed.fetch_add(1, Relaxed);
        } else {
            self.fail(Self::shown(place, name), problems.join("; "));
        }
        below
    }

    /// Runs `PRAGMA integrity_check` if the file is an SQLite database.
    fn sqlite(&self, file: &fs::File, place: &Place, name: &[u8]) {
        if !crate::source::sqlite::has_header(file) {
            return;
        }
        let result = crate::source::sqlite::integrity_check(&place.path(self.scratch).join(OsStr::from_bytes(name)));
        let shown = Self::shown(place, name);
        if result != "ok" {
            self.fail(shown.clone(), format!("SQLite integrity_check: {result}"));
        }
        self.databases.lock().expect("poisoned").push(DatabaseCheck { path: shown, result });
    }
}
