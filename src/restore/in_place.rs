//! Restoring over an existing directory without losing it: the flow around [`super::restore`].
//!
//! An empty or missing target is restored into as it always was, marked unfinished until every
//! entry is restored ([`unfinished`]): a target that holds that mark is restored into again as
//! an empty one. A target with anything else in it is refused unless the caller chose how
//! ([`Mode`]); the refusal says what would change.
//! Before anything that exists is replaced or deleted, a *safety snapshot* of the whole target
//! is taken, tagged `protected` and `pre-restore` (source name `pre-restore`), so the state
//! before the restore is itself restorable; a safety snapshot that cannot be taken whole stops
//! the restore before it changes anything. [`crate::select`] never chooses one as `latest`
//! unless the filters name it, or the next `restore latest` would bring back what was replaced.
//!
//! [`Mode::InPlace`] never writes into the target. It builds the new tree in a private staging
//! directory beside it, `.<name>.cairn-staging-<inode>-<random>` (same file system), where the
//! target's entries that stay (outside the `--include` paths, or not in the snapshot without
//! `--delete`) are hard-linked or recreated (`plan.rs`); restores the snapshot into it; checks
//! the result against the snapshot; makes it durable (`syncfs`); then swaps it with the target
//! in one step (`renameat2(RENAME_EXCHANGE)`), checks that what went out is the directory it
//! planned against (or swaps back and refuses: the name was given to something else meanwhile),
//! and renames the old tree, now under the staging name, to `<name>.bak` (or `.bak.2`, ...),
//! which is kept. At every moment the target's name
//! holds a whole tree, the old or the new one:
//!
//! | killed | target | beside it | the next restore of that target |
//! |---|---|---|---|
//! | before the exchange | the old tree | a staging directory (partial or whole new tree) | removes it |
//! | between exchange and rename | the new tree | the old tree under the staging name | renames it to `.bak` |
//! | after the rename | the new tree | `<name>.bak`: the old tree | nothing to do |
//!
//! The `<inode>` in the staging name is the old target's: a leftover whose own inode is that
//! one holds the old tree (it was swapped out); any other is an unfinished staging directory.
//! Only a killed run's leftovers are touched: a running restore holds a lock on the target and
//! on its staging directory, which the kernel drops when it dies; a second restore of the same
//! target refuses while the first runs (`leftovers.rs` says why and how).
//!
//! [`Mode::Overwrite`] writes into the target directly, as restore did before: for a mount
//! point (nothing can be swapped there), `/`, or a disk without room for a second tree. Not
//! atomic: the safety snapshot is the way back.
//!
//! Every restore that starts changing anything writes one audit record (`restore`, with the
//! target, the safety snapshot and the outcome); a failure to write it (a read-only repository)
//! is reported in [`Report::audit_error`], never fails the restore. `--dry-run` and refusals
//! write nothing anywhere.

mod leftovers;
mod mounts;
mod plan;
pub mod unfinished;

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;

use crate::audit::Run;
use crate::backup::{take_snapshot, SnapshotOptions};
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::snapshot::Snapshot;
use crate::fs_at::{remove_tree_if, stat_fd, Dir};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::lock::Lock;
use crate::repository::{Indexed, Repository};

use leftovers::{keep_as_bak, leftovers, lock_waiting, try_lock, Flock};
use plan::{Compare, Walker, Want};
pub use plan::{Plan, MAX_LEVELS};

/// The tags of a safety snapshot: `protected` keeps it from every retention policy.
pub const SAFETY_TAGS: [&str; 2] = ["protected", Snapshot::SAFETY];
/// The source name of safety snapshots.
pub const SAFETY_SOURCE: &str = Snapshot::SAFETY;

/// What to do when the target is not empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Refuse, saying what would change.
    #[default]
    Refuse,
    /// Safety snapshot, staging directory, swap, old tree kept as `.bak`.
    InPlace,
    /// Safety snapshot, then write into the target directly.
    Overwrite,
}

#[derive(Default)]
pub struct Options {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore; empty restores everything.
    pub includes: Vec<Vec<u8>>,
    pub mode: Mode,
    /// Remove what the snapshot (its included part) does not have ([`Mode::InPlace`] only).
    pub delete: bool,
    /// Compute and return the plan; change nothing, not even the repository.
    pub dry_run: bool,
    /// Allow `/` as the target (with [`Mode::Overwrite`]).
    pub force_root: bool,
    /// See [`super::RestoreOptions::skip_identical`] (direct restores only).
    pub skip_identical: bool,
    /// See [`super::RestoreOptions::sparse`].
    pub sparse: bool,
    /// Paths the safety snapshot never enters: a local repository, which `--in-place` also
    /// refuses to find inside the target.
    pub skip: Vec<PathBuf>,
    pub cancel: Option<&'static AtomicBool>,
    /// Directories (canonical paths) the target must lie in, if any (`cairn serve`'s restore
    /// roots): checked on the directories as opened, so a link swapped in after the caller's
    /// own check of the path cannot lead the restore out of them.
    pub within: Vec<PathBuf>,
    /// The command's read lock, if it hands it over: released once the snapshot has been read,
    /// beside the write of the end record (two round trips at once on an object store).
    pub lock: Option<Lock>,
}

/// How a restore went about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// The target was missing or empty: restored into directly.
    EmptyTarget,
    /// The target holds what a restore that did not finish left ([`unfinished`]): restored into
    /// directly again, every entry written anew.
    Unfinished,
    InPlace,
    Overwrite,
    DryRun,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub snapshot: String,
    pub target: PathBuf,
    pub how: How,
    /// What the restore changes (changed, for a real run); `None` for an empty target.
    pub plan: Option<Plan>,
    /// The full id of the safety snapshot taken before anything was replaced or deleted.
    pub safety_snapshot: Option<String>,
    /// Where the old tree was kept ([`Mode::InPlace`]).
    pub backup: Option<PathBuf>,
    pub summary: super::RestoreSummary,
    /// What was found (and done, or would be done) about directories left by killed restores.
    pub leftovers: Vec<String>,
    /// Why the audit record could not be written, if it could not.
    pub audit_error: Option<String>,
}

/// The target and the directory that holds it, open.
struct Site {
    /// The target, absolute, symlinks resolved where it exists.
    path: PathBuf,
    /// Its parent and its name there; `None` for `/`.
    parent: Option<(Dir, PathBuf, Vec<u8>)>,
    /// The target, if it is a directory, with its stat.
    old: Option<(Dir, libc::stat)>,
}

impl Site {
    fn open(target: &Path) -> Result<Site> {
        let absolute = std::path::absolute(target).map_err(|e| Error::io(target, e))?;
        let path = match std::fs::canonicalize(&absolute) {
            Ok(path) => path,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => absolute,
            Err(e) => return Err(Error::io(target, e)),
        };
        let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
            // Only `/` has no parent and no name. A missing path ending in `..` has none either;
            // it would be restored into as `/` is, its entries by their paths through the `..`.
            if path != Path::new("/") {
                return Err(Error::Invalid(format!(
                    "the target {} ends in `..` and does not exist: give the directory it means by its name",
                    target.display()
                )));
            }
            return Ok(Site { old: Some(open_dir_stat(&path)?), path, parent: None });
        };
        let parent = match Dir::open(parent_path) {
            Ok(dir) => dir,
            // A missing parent: restore creates it, and the target is empty.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Site { path, parent: None, old: None }),
            Err(e) => return Err(Error::io(parent_path, e)),
        };
        let name = name.as_bytes().to_vec();
        let old = match parent.open_dir(&name) {
            Ok(dir) => {
                let st = stat_fd(dir.as_fd()).map_err(|e| Error::io(&path, e))?;
                Some((dir, st))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || crate::fs_at::not_a_directory(&e) => None,
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(Site { parent: Some((parent, parent_path.to_path_buf(), name)), path, old })
    }

    /// Refuses unless the target, as the directories opened for it really are, lies in one of
    /// `roots`.
    fn check_within(&self, roots: &[PathBuf]) -> Result<()> {
        let real = |fd: std::os::fd::BorrowedFd<'_>| {
            use std::os::fd::AsRawFd;
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
        };
        let opened = match (&self.old, &self.parent) {
            (Some((dir, _)), _) => real(dir.as_fd()),
            (None, Some((parent, _, name))) => real(parent.as_fd()).map(|p| p.join(OsStr::from_bytes(name))),
            (None, None) => Some(self.path.clone()),
        };
        match opened {
            Some(path) if path == self.path && roots.iter().any(|root| path.starts_with(root)) => Ok(()),
            _ => Err(Error::Refused(format!(
                "the target {} is not (or no longer) inside a directory restores may write to: nothing was changed",
                self.path.display()
            ))),
        }
    }

    /// Refuses a file (or a link, a dangling one too) where the target directory would be: it is
    /// neither replaced without a safety snapshot nor followed. (A target given as a link to a
    /// file is that file here: the path is resolved.)
    fn check_not_a_file(&self) -> Result<()> {
        let Some((parent, _, name)) = self.parent.as_ref().filter(|_| self.old.is_none()) else { return Ok(()) };
        match parent.stat(name) {
            Ok(_) => Err(Error::Refused(format!(
                "{} is not a directory: nothing was changed; move it away, or restore to another target",
                self.path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// Takes the target's lock for the rest of the run (held by `old`, the directory opened),
    /// or refuses if a running restore holds it (`leftovers.rs`). Then checks that the target's
    /// name still leads to the directory locked: a restore that ended meanwhile may have swapped
    /// another one in. Returns a note where the file system cannot lock.
    fn lock(&self) -> Result<Option<String>> {
        let Some((old, old_st)) = &self.old else { return Ok(None) };
        match try_lock(old) {
            Flock::Held => {}
            Flock::Busy(pid) => return Err(leftovers::busy(&self.path, pid)),
            Flock::Unsupported(e) => {
                return Ok(Some(format!(
                    "{} cannot be locked ({e}): another restore into it at the same time would not be noticed",
                    self.path.display()
                )))
            }
        }
        let Some((parent, _, name)) = &self.parent else { return Ok(None) };
        match parent.stat(name) {
            Ok(now) if (now.st_dev, now.st_ino) == (old_st.st_dev, old_st.st_ino) => Ok(None),
            _ => Err(Error::Refused(format!(
                "{} was replaced while this restore opened it (by another restore that just finished?): nothing \
                 was changed; restore again",
                self.path.display()
            ))),
        }
    }

    /// Makes the missing target directory as `mkdir -p` would (its parents too, unless the
    /// restore is held within roots, where a missing parent is refused later) and opens it, so
    /// that it is locked before anything is written into it: two restores into one new target
    /// would otherwise fill it together. One that appeared meanwhile is opened as it is: its
    /// lock, or its entries, decide.
    fn made(self, within: bool) -> Result<Site> {
        if self.old.is_some() {
            return Ok(self);
        }
        match &self.parent {
            // Never in place of anything (a file put there since the check is refused below).
            Some((parent, _, name)) => match parent.make_new_dir(name, 0o777) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&self.path, e)),
            },
            None if within => return Ok(self),
            None => std::fs::create_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?,
        }
        let site = Site::open(&self.path)?;
        site.check_not_a_file()?;
        Ok(site)
    }

    fn is_empty(&self) -> Result<bool> {
        match &self.old {
            Some((dir, _)) => Ok(dir.names().map_err(|e| Error::io(&self.path, e))?.is_empty()),
            None => Ok(true),
        }
    }
}

fn open_dir_stat(path: &Path) -> Result<(Dir, libc::stat)> {
    let dir = Dir::open(path).map_err(|e| Error::io(path, e))?;
    let st = stat_fd(dir.as_fd()).map_err(|e| Error::io(path, e))?;
    Ok((dir, st))
}

/// Restores `snapshot` (`id`) as `options` say; see the module doc.
pub fn run(repo: &Indexed, id: &Id, snapshot: &Snapshot, mut options: Options, progress: &Progress) -> Result<Report> {
    let lock = options.lock.take();
    let options = &options;
    let want = plan::want_of(repo, snapshot, &options.includes, &id.short())?;
    let mut site = Site::open(&options.target)?;
    if !options.within.is_empty() {
        site.check_within(&options.within)?;
    }
    site.check_not_a_file()?;
    if !options.dry_run && site.old.is_none() {
        site = site.made(!options.within.is_empty())?;
        if !options.within.is_empty() {
            site.check_within(&options.within)?; // opened again by its path: still within?
        }
    }
    if site.path == Path::new("/") && !(options.force_root && options.mode == Mode::Overwrite) {
        return Err(refuse_root(repo, id, snapshot)?);
    }
    let mut report = Report {
        snapshot: id.to_hex(),
        target: site.path.clone(),
        how: How::EmptyTarget,
        plan: None,
        safety_snapshot: None,
        backup: None,
        summary: super::RestoreSummary::default(),
        leftovers: Vec::new(),
        audit_error: None,
    };
    // Locked before it is judged empty: another restore filling it meanwhile would otherwise
    // find it empty, and this one then write over what that one wrote as into an empty target.
    if !options.dry_run {
        report.leftovers.extend(site.lock()?);
    }
    let mut empty = site.is_empty()?;
    // What a restore that did not finish left ([`unfinished`]): an empty mark alone is an empty
    // target; a restore without a mode of the snapshot a mark names finishes it, and one of
    // another snapshot is refused (finishing one with another would leave a mix of the two); a
    // mode asked for is followed (it snapshots the partial tree first).
    let mark = site.old.as_ref().filter(|_| !empty).and_then(|(dir, _)| unfinished::found(dir));
    match (&mark, options.mode) {
        (Some(unfinished::Found::Empty), _) => empty = true,
        (Some(unfinished::Found::Restore { snapshot: named, .. }), Mode::Refuse) if *named == id.to_hex() => {
            empty = true;
            report.how = How::Unfinished;
            report.leftovers.push(format!(
                "{} holds what a restore of this snapshot that did not finish left ({}): {}",
                site.path.display(),
                unfinished::NAME,
                match options.dry_run {
                    false => "restoring into it again",
                    true => "a restore would write every entry into it again, as into an empty target",
                }
            ));
        }
        (Some(unfinished::Found::Restore { snapshot: named, .. }), Mode::Refuse) => {
            let refusal = format!(
                "{} holds what a restore of snapshot {} that did not finish left ({}): restore that snapshot into \
                 it again to finish it, or restore {} over it with --in-place --delete (after a safety snapshot of \
                 it)",
                site.path.display(),
                named.get(..8).unwrap_or(named),
                unfinished::NAME,
                id.short()
            );
            // A dry run lists what --in-place would do, and says the plain run is refused.
            if !options.dry_run {
                return Err(Error::Refused(format!("{refusal}; nothing was changed")));
            }
            report.leftovers.push(format!("{refusal}: a restore without a flag is refused"));
        }
        _ => {}
    }
    // A run that will change nothing (a dry run, a refusal) only reports what killed runs left.
    let acting = !options.dry_run && (empty || options.mode != Mode::Refuse);
    if options.mode == Mode::InPlace && !empty {
        mounts::refuse_mounts_below(&site.path)?;
    }
    if let Some((parent, parent_path, name)) = &site.parent {
        let current = site.old.as_ref().map(|(_, st)| st.st_ino);
        report.leftovers.extend(leftovers(parent, parent_path, name, current, !acting)?);
    }
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut walker = Walker {
        repo,
        target: &site.path,
        want: &want,
        compare: Compare::Content,
        delete: options.delete,
        chunker: repo.chunker(),
        as_root,
        plan: Plan::default(),
        partial_dirs: Vec::new(),
        linked: Vec::new(),
    };
    if options.dry_run || !empty {
        // An unfinished target is written as an empty one: every entry is created anew.
        let old = site.old.as_ref().map(|(dir, _)| dir).filter(|_| report.how != How::Unfinished);
        walker.walk(old, None)?;
    }
    if options.dry_run {
        report.how = How::DryRun;
        report.plan = Some(walker.plan);
        return Ok(report);
    }
    if !empty {
        report.how = decide(options, &site, id, &walker.plan)?;
        report.plan = Some(walker.plan);
    }
    let mut audit = Run::start("restore", &snapshot.source_key());
    audit.record.snapshot = Some(id.to_hex());
    // The start record carries them: a restore killed outright is reported with the target it
    // left partly written.
    audit.record.details = serde_json::json!({ "target": report.target.to_string_lossy(), "how": report.how });
    // The start record goes beside the restore's first reads: on an object store it is a round
    // trip that nothing else waits for. It is written before the end record all the same.
    let (begun, result) = std::thread::scope(|scope| {
        let begun = scope.spawn(|| audit.begin(repo));
        let result = execute(repo, id, snapshot, options, &site, &want, mark.as_ref(), progress, &mut report);
        (begun.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), result)
    });
    let mut report = std::thread::scope(|scope| {
        if let Some(lock) = lock {
            scope.spawn(move || drop(lock));
        }
        finish(repo, audit, result, report)
    })?;
    if let (Err(e), None) = (begun, &report.audit_error) {
        report.audit_error = Some(format!("its start record: {e}"));
    }
    Ok(report)
}

/// How to restore over the non-empty target, or the refusal.
fn decide(options: &Options, site: &Site, id: &Id, plan: &Plan) -> Result<How> {
    match options.mode {
        Mode::Refuse => Err(refuse_not_empty(&site.path, id, plan, options.delete)),
        Mode::Overwrite if options.delete => Err(Error::Invalid(
            "--delete works with --in-place only: --overwrite writes into the target and removes nothing".into(),
        )),
        Mode::Overwrite => Ok(How::Overwrite),
        Mode::InPlace => {
            if let (Some((parent, parent_path, _)), Some((_, old_st))) = (&site.parent, &site.old) {
                let parent_st = stat_fd(parent.as_fd()).map_err(|e| Error::io(parent_path, e))?;
                if parent_st.st_dev != old_st.st_dev {
                    return Err(Error::Refused(format!(
                        "{} is a mount point: the new tree cannot be built beside it on the same file system and \
                         swapped in; use --overwrite to restore into it directly (after a safety snapshot), or \
                         restore into an empty directory",
                        site.path.display()
                    )));
                }
            }
            // A swap that then finds nowhere to keep the old tree would leave it under the
            // staging name, the target changed and the restore failed.
            if let (Some((parent, parent_path, name)), true) = (&site.parent, swaps(plan)) {
                leftovers::check_bak_free(parent, parent_path, name)?;
            }
            // The swap would move a repository inside the target into the .bak, under the
            // feet of this very restore (and --delete would leave it out of the new tree).
            let inside = options.skip.iter().filter_map(|p| std::fs::canonicalize(p).ok());
            if let Some(repository) = inside.into_iter().find(|p| p.starts_with(&site.path)) {
                return Err(Error::Refused(format!(
                    "the repository {} lies inside the target {}: an in-place restore would move it aside with the \
                     old tree; use --overwrite, or restore elsewhere",
                    repository.display(),
                    site.path.display()
                )));
            }
            Ok(How::InPlace)
        }
    }
}

/// Whether an in-place restore with this plan swaps (else the target already is the snapshot).
fn swaps(plan: &Plan) -> bool {
    !plan.created.is_empty() || plan.touches_existing()
}

/// Writes the audit record of a restore that ended with `result`. Failing to write it is in
/// the report (or appended to the error), never the restore's failure.
fn finish(repo: &Repository, mut audit: Run, result: Result<()>, mut report: Report) -> Result<Report> {
    let outcome = match &result {
        Ok(()) if report.summary.errors.is_empty() => Outcome::Ok,
        Ok(()) => Outcome::Incomplete,
        Err(_) => Outcome::Failed,
    };
    audit.record.files = report.summary.files;
    audit.record.bytes = report.summary.bytes;
    audit.record.errors = match &result {
        Ok(()) => report.summary.errors.iter().take(100).map(|e| format!("{}: {}", e.path, e.message)).collect(),
        Err(e) => vec![e.to_string()],
    };
    audit.record.details = serde_json::json!({
        // Lossy: a path that is not UTF-8 cannot be a JSON string, and must not fail the record.
        "target": report.target.to_string_lossy(),
        "how": report.how,
        "safety_snapshot": report.safety_snapshot,
        "backup": report.backup.as_ref().map(|path| path.to_string_lossy()),
        "plan": report.plan.as_ref().map(|p| serde_json::json!({
            "created": p.created.len(), "replaced": p.replaced.len(), "deleted": p.deleted.len(), "kept": p.kept.len(),
        })),
    });
    let written = audit.finish(repo, outcome).map_err(|e| e.to_string());
    match result {
        Ok(()) => {
            report.audit_error = written.err();
            Ok(report)
        }
        Err(e) => match (written, &report.safety_snapshot) {
            (Ok(()), None) => Err(e),
            (written, safety) => Err(Error::Invalid(format!(
                "{e}{}{}",
                safety.as_ref().map_or(String::new(), |s| format!(" (safety snapshot {s} was taken)")),
                written.err().map_or(String::new(), |w| format!("; the audit record could not be written: {w}")),
            ))),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn execute(
    repo: &Indexed,
    id: &Id,
    snapshot: &Snapshot,
    options: &Options,
    site: &Site,
    want: &Want,
    mark: Option<&unfinished::Found>,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let touches = report.plan.as_ref().is_some_and(Plan::touches_existing);
    if touches {
        // A test swaps the target's name for a decoy here (`CAIRN_RESTORE_PAUSE`).
        crate::knobs::pause("CAIRN_RESTORE_PAUSE", "opened");
        let safety = safety_snapshot(repo, site, report.plan.as_ref(), &options.skip)?;
        progress.warn(&format!(
            "safety snapshot {} taken of {} (tags protected, pre-restore): `cairn restore {} --target {} --in-place --delete` brings it back",
            safety.short(),
            site.path.display(),
            safety.short(),
            site.path.display(),
        ));
        report.safety_snapshot = Some(safety.to_hex());
    }
    // Into the directory Site opened and locked (or made, given roots), never by the target's
    // path again: anyone who can write its parent could have pointed that elsewhere since.
    let direct = |into: &Dir, skip_identical: bool| {
        let core = super::RestoreOptions {
            target: site.path.clone(),
            includes: options.includes.clone(),
            skip_identical,
            sparse: options.sparse,
            keep_free: None,
            cancel: options.cancel,
            opened: Some(std::sync::Arc::new(into.try_clone().map_err(|e| Error::io(&site.path, e))?)),
        };
        super::restore(repo, id, snapshot, &core, progress)
    };
    // The mark of a restore that did not finish, in a target restored over with a mode: it goes
    // once the whole target is the snapshot (--in-place kept it, as an entry the snapshot does
    // not have), unless the snapshot holds an entry of that name.
    let stale_mark = matches!(report.how, How::InPlace | How::Overwrite)
        && options.includes.is_empty()
        && mark.is_some()
        && repo.read_tree(&snapshot.tree).is_ok_and(|top| top.find(unfinished::NAME.as_bytes()).is_none());
    let nothing = report.plan.as_ref().is_some_and(|p| !swaps(p));
    report.summary = match report.how {
        // Nothing to swap: the target already is what the restore would make it.
        How::InPlace if nothing => super::RestoreSummary {
            files_unchanged: report.plan.as_ref().map_or(0, |p| p.unchanged),
            ..Default::default()
        },
        How::InPlace => staged(repo, id, snapshot, options, site, want, progress, report)?,
        How::EmptyTarget | How::Unfinished => {
            let marked = match (&site.old, options.within.is_empty()) {
                (Some((dir, _)), true) => dir.try_clone().map_err(|e| Error::io(&site.path, e))?,
                _ => pinned(site)?,
            };
            let shown = site.path.join(unfinished::NAME);
            // Finishing a restore keeps its mark, which says what it stands for; a new one gets
            // its own.
            let (mark, stands_for) = match mark {
                Some(unfinished::Found::Restore { includes, .. }) if report.how == How::Unfinished => {
                    (unfinished::open(&marked).map_err(|e| Error::io(&shown, e))?, includes.clone())
                }
                _ => {
                    let mark = unfinished::put(&marked, id, &options.includes).map_err(|e| Error::io(&shown, e))?;
                    (mark, options.includes.clone())
                }
            };
            let summary = direct(&marked, options.skip_identical)?;
            // Stopped (a full disk, an interrupt) it returned above, and the mark stays too.
            let covers = covers(&options.includes, &stands_for);
            if summary.errors.is_empty() && covers {
                mark.remove(&marked).map_err(|e| Error::io(&shown, e))?;
            } else if summary.errors.is_empty() {
                report.leftovers.push(format!(
                    "{} keeps {}: the restore it stands for was of more than these --include paths; restore the \
                     snapshot into it again without them to finish it",
                    site.path.display(),
                    unfinished::NAME
                ));
            } else {
                report.leftovers.push(format!(
                    "{} keeps {}: it is not whole; restoring into it again finishes it",
                    site.path.display(),
                    unfinished::NAME
                ));
            }
            summary
        }
        _ => match &site.old {
            Some((dir, _)) => direct(dir, options.skip_identical)?,
            None => return Err(Error::io(&site.path, std::io::Error::from(std::io::ErrorKind::NotFound))),
        },
    };
    if stale_mark && report.summary.errors.is_empty() {
        // --overwrite wrote into the directory opened; --in-place swapped a new one in under the
        // target's name (and checked, at the swap, that the name led to the old one).
        let now = match (report.how, &site.parent, &site.old) {
            (How::InPlace, Some((parent, _, name)), _) => parent.open_dir(name),
            (_, _, Some((dir, _))) => dir.try_clone(),
            _ => return Ok(()),
        };
        // The snapshot has no entry of that name: what is there now is the old mark, carried
        // into the new tree or left where it was. At worst it stays, and says so.
        if let Ok(now) = now {
            if now.stat(unfinished::NAME.as_bytes()).is_ok_and(|st| crate::fs_at::is_file(&st)) {
                let _ = now.remove_non_dir(unfinished::NAME.as_bytes());
            }
        }
    }
    Ok(())
}

/// Whether a restore of the `--include` paths `now` restores all that one of `earlier` did
/// (none: the whole snapshot): each earlier path is one of `now`'s or below one, however
/// written (`a/b`, `/a/b/`, `./a//b`).
fn covers(now: &[Vec<u8>], earlier: &[Vec<u8>]) -> bool {
    let now: Vec<_> = now.iter().map(|path| plan::split(path)).collect();
    if now.is_empty() {
        return true;
    }
    let earlier: Vec<_> = match earlier.is_empty() {
        true => vec![Vec::new()],
        false => earlier.iter().map(|path| plan::split(path)).collect(),
    };
    earlier.iter().all(|path| now.iter().any(|include| path.starts_with(include)))
}

/// The target directory as [`Site`] opened it, or made now where it was missing, for a restore
/// held within roots.
fn pinned(site: &Site) -> Result<Dir> {
    Ok(match (&site.old, &site.parent) {
        (Some((dir, _)), _) => dir.try_clone().map_err(|e| Error::io(&site.path, e))?,
        (None, Some((parent, _, name))) => match parent.stat(name) {
            // A file (or a link) where the directory would be: it is neither replaced
            // without a safety snapshot nor followed.
            Ok(_) => {
                return Err(Error::Refused(format!(
                    "{} is not a directory: nothing was changed; move it away, or restore to another target",
                    site.path.display()
                )))
            }
            // Made as a restore by path makes it (0777 less the umask); anything put in its
            // way since the check above fails it and stays.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                parent.make_new_dir(name, 0o777).map_err(|e| Error::io(&site.path, e))?;
                parent.open_dir(name).map_err(|e| Error::io(&site.path, e))?
            }
            Err(e) => return Err(Error::io(&site.path, e)),
        },
        (None, None) => {
            let why = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the directory that would hold the target does not exist",
            );
            return Err(Error::io(&site.path, why));
        }
    })
}

/// What the safety snapshot covers: the whole target, through the directory `Site` opened (the
/// one the restore writes into: by its name, it would be whatever someone who can write the
/// parent put there since, and the real one would be overwritten with no way back); for `/`,
/// only the entries replaced or deleted (topmost ones; the snapshot mirrors their absolute
/// paths), opened by their paths with no symlink followed on the way.
fn safety_sources(site: &Site, plan: Option<&Plan>) -> Result<(Vec<PathBuf>, Option<Arc<OwnedFd>>)> {
    match (&site.parent, &site.old) {
        (Some(_), Some((dir, _))) => {
            let opened = dir.as_fd().try_clone_to_owned().map_err(|e| Error::io(&site.path, e))?;
            Ok((vec![site.path.clone()], Some(Arc::new(opened))))
        }
        (Some(_), None) => Err(Error::Refused(format!(
            "{} is no directory to take a safety snapshot of: nothing was changed",
            site.path.display()
        ))),
        (None, _) => {
            let changed = plan.into_iter().flat_map(|p| p.replaced.iter().chain(&p.deleted));
            Ok((crate::backup::normalize_paths(&changed.map(|p| site.path.join(p)).collect::<Vec<_>>()), None))
        }
    }
}

/// A snapshot of `paths`, tagged [`SAFETY_TAGS`]; an error unless it is complete. Files are
/// stored as the disk holds them, databases too (raw, with their `-wal` or `-journal`): what
/// is about to be overwritten, byte for byte, even a database too damaged to be opened, which
/// may be why it is being restored. Nothing in the target is left out, not even what looks
/// like a killed restore's private directory (`.<name>.cairn-restore-<r>` beside a database,
/// `.<name>.cairn-staging-…` of a target below): a pattern without `/` matches at any depth, and
/// left out a user's `.notes.cairn-restore-2024`, which the restore then replaced with no way
/// back. No name tells such a leftover from a user's file, and a database's leftover may hold
/// the only copy of its old `-wal`; the target's own staging directories lie beside it.
/// What it covers: [`safety_sources`].
fn safety_snapshot(repo: &Repository, site: &Site, plan: Option<&Plan>, skip: &[PathBuf]) -> Result<Id> {
    let target = &site.path;
    let (paths, opened_root) = safety_sources(site, plan)?;
    let options = SnapshotOptions {
        paths,
        opened_root,
        symlinked_parents_refused: true,
        tags: SAFETY_TAGS.iter().map(|t| t.to_string()).collect(),
        source: SAFETY_SOURCE.into(),
        skip: skip.to_vec(),
        raw_sqlite: true,
        sqlite_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let outcome = take_snapshot(repo, &options, &Progress::hidden()).map_err(|e| match e {
        // What the caller acts on (free space, waiting for the lock) stays what it is.
        e @ (Error::NoSpace(_) | Error::Locked { .. }) => e,
        e => Error::Refused(format!(
            "cannot take the safety snapshot of {} before restoring over it: {e}; nothing was changed (restore into an \
             empty directory instead)",
            target.display()
        )),
    })?;
    if let Some(first) = outcome.snapshot.errors.first() {
        // No way back is needed from a restore that is not made: kept, it would stay protected
        // from every prune, one more at each try.
        let forgotten = crate::retention::forget(
            repo,
            &[crate::retention::Decision {
                id: outcome.id.to_hex(),
                time: outcome.snapshot.time_sec,
                group: SAFETY_SOURCE.into(),
                keep: false,
                reasons: Vec::new(),
                damaged: None,
            }],
        );
        return Err(Error::Refused(format!(
            "the safety snapshot {} of {} is incomplete: {} entries could not be read (first: {}: {}); nothing was \
             restored over them, and {}",
            outcome.id.short(),
            target.display(),
            outcome.snapshot.errors.len(),
            first.path,
            first.message,
            match forgotten.result {
                Ok(_) => "the incomplete snapshot was forgotten".to_string(),
                Err(e) =>
                    format!("it could not be forgotten ({e}): `cairn forget --force {}` does", outcome.id.short()),
            }
        )));
    }
    Ok(outcome.id)
}

/// [`Mode::InPlace`]: stage, restore, check, swap; see the module doc.
#[allow(clippy::too_many_arguments)]
fn staged(
    repo: &Indexed,
    id: &Id,
    snapshot: &Snapshot,
    options: &Options,
    site: &Site,
    want: &Want,
    progress: &Progress,
    report: &mut Report,
) -> Result<super::RestoreSummary> {
    let (Some((parent, parent_path, name)), Some((old, old_st))) = (&site.parent, &site.old) else {
        return Err(Error::Refused(format!("{} has no parent to stage the new tree beside", site.path.display())));
    };
    let random = &Id(crate::id::random_bytes()).to_hex()[..8];
    let staging_name = [b".", &name[..], format!(".cairn-staging-{}-{random}", old_st.st_ino).as_bytes()].concat();
    let staging_path = parent_path.join(OsStr::from_bytes(&staging_name));
    let staging = parent.make_private_dir(&staging_name).map_err(|e| Error::io(&staging_path, e))?;
    // Removed only while its name still holds it: anyone who can write the parent could give
    // that name to another directory (their own, or the old tree they moved away) meanwhile.
    let staging_st = stat_fd(staging.as_fd()).map_err(|e| Error::io(&staging_path, e))?;
    let remove_staging = || remove_tree_if(&staging_path, (staging_st.st_dev, staging_st.st_ino));
    // Held until `staging` is dropped, after the rename to `.bak`: a restore that finds this
    // directory beside the target leaves it alone (`leftovers.rs`). Only one that looks without
    // the target's lock (a dry run, or one about to refuse) can hold it, for the instant it looks:
    // this run waits for that rather than go on with its staging directory unlocked. (A file
    // system without flock leaves it unlocked, as it leaves the target.)
    let _ = lock_waiting(&staging);
    let built = can_exchange(&staging)
        .map_err(|e| {
            Error::Refused(format!(
                "the file system of {} cannot swap two directories in one step ({e}): use --overwrite, or restore \
                 into an empty directory",
                site.path.display()
            ))
        })
        .and_then(|()| build(repo, id, snapshot, options, &staging, old, old_st, want, progress, &site.path));
    let summary = match built {
        Ok(summary) => summary,
        Err(e) => {
            let _ = remove_staging();
            return Err(e);
        }
    };
    if let Err(e) = parent.exchange(&staging_name, name) {
        let _ = remove_staging();
        return Err(Error::Refused(format!(
            "cannot swap the restored tree in for {}: {e}; nothing was changed{}",
            site.path.display(),
            if e.raw_os_error() == Some(libc::EINVAL) {
                " (the file system cannot exchange two names in one step: use --overwrite)"
            } else {
                ""
            }
        )));
    }
    // What went out must be the directory the plan and the safety snapshot are of: anyone who
    // can write the parent could have put something else (a symlink to elsewhere) under the
    // target's name while the tree was built. That is put back, and nothing else moved.
    let swapped_out = parent.stat(&staging_name);
    if !swapped_out.as_ref().is_ok_and(|st| (st.st_dev, st.st_ino) == (old_st.st_dev, old_st.st_ino)) {
        let put_back = parent.exchange(&staging_name, name);
        if put_back.is_ok() {
            let _ = remove_staging();
        }
        let what = match &swapped_out {
            Ok(_) => "it is no longer the directory the restore planned and took its safety snapshot of".to_string(),
            Err(e) => format!("what is there cannot be looked at ({e})"),
        };
        return Err(Error::Refused(match put_back {
            Ok(()) => format!(
                "{} was replaced while the new tree was built: {what}; it was left as it is, nothing was changed",
                site.path.display()
            ),
            Err(e) => format!(
                "{} was replaced while the new tree was built: {what}; the new tree went in its place, and what had \
                 replaced it could not be put back ({e}){}",
                site.path.display(),
                match swapped_out {
                    Ok(_) => format!(": it is at {}", staging_path.display()),
                    Err(_) => String::new(),
                }
            ),
        }));
    }
    // From here the target holds the new tree: an error says so, and where the old one is.
    report.backup = Some(staging_path.clone());
    let swapped = |e: std::io::Error| {
        Error::Invalid(format!(
            "the restored tree is in place at {}, but the old tree could not be kept as a .bak ({e}): it is at {}; \
             rename it yourself (the next in-place restore of the target renames it to a .bak too)",
            site.path.display(),
            staging_path.display()
        ))
    };
    parent.sync().map_err(swapped)?;
    let bak = keep_as_bak(parent, &staging_name, name).map_err(swapped)?;
    let backup = parent_path.join(OsStr::from_bytes(&bak));
    parent.sync().map_err(|e| {
        Error::Invalid(format!(
            "the restored tree is in place at {} and the old one at {}, but flushing {} to disk failed: {e}",
            site.path.display(),
            backup.display(),
            parent_path.display()
        ))
    })?;
    report.backup = Some(backup);
    Ok(summary)
}

/// Whether the file system of `dir` can exchange two names (tried on two empty directories in
/// it, then removed), before a whole tree is built for a swap that would then fail.
fn can_exchange(dir: &Dir) -> std::io::Result<()> {
    let (a, b) = (b".cairn-exchange-a".as_slice(), b".cairn-exchange-b".as_slice());
    dir.make_dir(a, 0o700)?;
    dir.make_dir(b, 0o700)?;
    let exchanged = dir.exchange(a, b);
    dir.remove_dir(a)?;
    dir.remove_dir(b)?;
    exchanged
}

/// Builds the new tree in `staging`: what stays of the old one, the snapshot restored into it
/// (through its descriptor, not by a name others could swap), checked
/// against the snapshot, its kept directories' and its root's metadata (extended attributes and
/// ACLs too) put back, all durable.
#[allow(clippy::too_many_arguments)]
fn build(
    repo: &Indexed,
    id: &Id,
    snapshot: &Snapshot,
    options: &Options,
    staging: &Dir,
    old: &Dir,
    old_st: &libc::stat,
    want: &Want,
    progress: &Progress,
    target: &Path,
) -> Result<super::RestoreSummary> {
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let walker = |compare| Walker {
        repo,
        target,
        want,
        compare,
        delete: options.delete,
        chunker: repo.chunker(),
        as_root,
        plan: Plan::default(),
        partial_dirs: Vec::new(),
        linked: Vec::new(),
    };
    let mut carry = walker(Compare::Names);
    carry.walk(Some(old), Some(staging))?;
    let core = super::RestoreOptions {
        // Messages name the entries where they will be once swapped in.
        target: target.to_path_buf(),
        includes: options.includes.clone(),
        skip_identical: false,
        sparse: options.sparse,
        keep_free: None,
        cancel: options.cancel,
        opened: Some(std::sync::Arc::new(staging.try_clone().map_err(|e| Error::io(target, e))?)),
    };
    let summary = super::restore(repo, id, snapshot, &core, progress)?;
    if let Some(first) = summary.errors.first() {
        return Err(Error::Refused(format!(
            "{} entries could not be restored (first: {}: {}); nothing was swapped: {} is as it was",
            summary.errors.len(),
            first.path,
            first.message,
            target.display()
        )));
    }
    let mut check = walker(Compare::Metadata);
    check.delete = false;
    check.walk(Some(staging), None)?;
    if let Some(first) = check.plan.created.iter().chain(&check.plan.replaced).next() {
        return Err(Error::Refused(format!(
            "the restored tree does not match the snapshot ({} entries missing or different, first: {first}); nothing \
             was swapped: {} is as it was",
            check.plan.created.len() + check.plan.replaced.len(),
            target.display()
        )));
    }
    carry.partial_dirs.sort_by_key(|(parts, _, _)| std::cmp::Reverse(parts.len()));
    for (parts, st, xattrs) in &carry.partial_dirs {
        let mut dir = staging.open_dir(&parts[0]).map_err(|e| Error::io(target, e))?;
        for part in &parts[1..] {
            dir = dir.open_dir(part).map_err(|e| Error::io(target, e))?;
        }
        plan::copy_metadata(&dir, st, xattrs, as_root).map_err(|e| Error::io(target, e))?;
    }
    let xattrs = crate::xattr::read(crate::xattr::Target::Fd(old.raw_fd())).map_err(|e| Error::io(target, e))?;
    plan::copy_metadata(staging, old_st, &xattrs, as_root).map_err(|e| Error::io(target, e))?;
    staging.sync_file_system().map_err(|e| Error::io(target, e))?;
    Ok(summary)
}

/// The error for a non-empty target without a mode: what would happen, and the flags.
fn refuse_not_empty(target: &Path, id: &Id, plan: &Plan, delete: bool) -> Error {
    let first: Vec<&String> = plan.replaced.iter().chain(&plan.deleted).chain(&plan.created).take(5).collect();
    Error::Refused(format!(
        "{} is not empty: restoring snapshot {} there would create {}, replace {} and delete {} entries{}{}. Add \
         --in-place to restore it safely (a safety snapshot of the target first, then the new tree built beside it \
         and swapped in, the old one kept as .bak), --delete to also remove what the snapshot does not have, \
         --dry-run to list every change; or restore into an empty directory",
        target.display(),
        id.short(),
        plan.created.len(),
        plan.replaced.len(),
        plan.deleted.len(),
        if delete || plan.kept.is_empty() {
            String::new()
        } else {
            format!(" and keep {} the snapshot does not have", plan.kept.len())
        },
        if first.is_empty() {
            String::new()
        } else {
            format!(" (first: {})", first.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
        },
    ))
}

/// The error for `/` as the target: where the snapshot's top-level entries would land.
fn refuse_root(repo: &Indexed, id: &Id, snapshot: &Snapshot) -> Result<Error> {
    let tree = repo.read_tree(&snapshot.tree)?;
    let names: Vec<String> = tree.nodes.iter().take(5).map(|n| String::from_utf8_lossy(&n.name).into_owned()).collect();
    let paths: Vec<String> = snapshot.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let holds = if paths.len() == 1 && !paths[0].starts_with('/') {
        // A stream's snapshot (store-format/snapshot.md, "Paths"): one file, from no place on disk.
        format!(
            "one file, {}, the output of {}, which would be written into / itself. Give a directory as --target",
            names.join(", "),
            paths[0]
        )
    } else if paths.len() == 1 {
        format!(
            "the content of one directory, {}, so its top-level entries ({}) would be written into / itself. Give \
             that directory as --target",
            paths[0],
            names.join(", ")
        )
    } else {
        format!("the paths {}, mirrored from /, and would write over them", paths.join(", "))
    };
    Ok(Error::Refused(format!(
        "refusing to restore into /: snapshot {} holds {holds}; if you really mean to restore over /, add \
         --force-root --overwrite (nothing can be swapped at /: it is written directly, after a safety snapshot)",
        id.short()
    )))
}
