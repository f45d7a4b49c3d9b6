//! `cairn forget [ID...] [--keep-* ...] [--dry-run] [--prune]` and `cairn prune`.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{format, Context};
use cairn::clock::parse_duration;
use cairn::id::Id;
use cairn::progress::Progress;
use cairn::prune;
use cairn::repository::lock::{Lock, LockKind};
use cairn::repository::reserve::{Kept, Room, FORGET_NEEDS};
use cairn::repository::FileKind;
use cairn::repository::Repository;
use cairn::retention::{plan, plan_named, Decision, Policy};
use cairn::select::SelectError;

#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove by id or prefix (instead of a policy)
    ids: Vec<String>,
    /// Apply the policy to this source's snapshots only (its --source name, or its paths)
    #[arg(long, value_name = "NAME", conflicts_with = "ids")]
    source: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print the plan, with the reason each snapshot is kept, and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Forget the named snapshots even if they are tagged `protected`, and remove a named
    /// snapshot file that cannot be read (damaged)
    #[arg(long, requires = "ids")]
    force: bool,
    /// Prune afterwards (see `cairn prune`)
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_args: PruneArgs,
}

/// The `--keep-*` options of a retention policy.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Keep the N newest snapshots of each source
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: usize,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: usize,
    /// ... of each of the last N days (UTC)
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: usize,
    /// ... of each of the last N ISO weeks
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: usize,
    /// ... of each of the last N months
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: usize,
    /// ... of each of the last N years
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: usize,
    /// Keep every snapshot younger than this before the source's newest (90m, 7d, 2w)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<Duration>,
    /// Keep snapshots with this tag (repeatable); `protected` ones are always kept
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
}

impl PolicyArgs {
    pub fn policy(&self) -> Policy {
        Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            tags: self.keep_tags.clone(),
        }
    }
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PruneArgs {
    /// Repack until dead bytes are at most this percentage of live ones
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
    max_unused: f64,
    /// Keep every audit record younger than this; of older ones only what `status` reads (the
    /// newest of each kind per source): so `status` costs the same after years of runs
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = cairn::clock::parse_duration)]
    keep_audit: std::time::Duration,
}

/// On a local repository's full disk, the room a forget or prune has ([`Repository::make_room`]):
/// the reserve is released when fewer than `need` bytes are free, and that is said.
pub(super) fn make_room(repo: &Repository, need: u64, before: Option<Room>, command: &str) -> Result<Option<Room>> {
    let room = repo.make_room(need, before)?;
    if let Some(room) = room {
        let released = room.released - before.map_or(0, |b| b.released);
        if released > 0 {
            errln!(
                "note: the repository's file system has {} free: `{command}` runs on the {} its reserve held",
                format::bytes(room.free - released),
                format::bytes(released),
            );
        }
    }
    Ok(room)
}

/// After a forget or prune: a reserve it released is set aside again (as large as it was, where
/// the command freed nothing), and a prune's grows with the index ([`super::keep_reserve`]).
pub(super) fn finish_room(repo: &Repository, room: Option<Room>, pruned: bool) {
    match room {
        Some(room) if room.released > 0 => match repo.restore_reserve(room.released) {
            Ok(Some(Kept::NoRoom { free, .. })) => errln!(
                "warning: the repository's reserve could not be set aside again: its file system has {} free; \
                 forget and prune on a full disk need it (free some space, or forget and prune more)",
                format::bytes(free)
            ),
            Err(e) => errln!("warning: could not set aside the repository's reserve again: {e}"),
            Ok(_) => {}
        },
        _ if pruned => super::keep_reserve(repo),
        _ => {}
    }
}

/// The lock of a dry run: where the repository cannot be written (a full disk), it goes on
/// without one and says so (it changes nothing; a run meanwhile may make its plan stale).
fn dry_run_lock(repo: &Repository, kind: LockKind, command: &str, context: &Context) -> Result<Option<Lock>> {
    match repo.lock(kind, command, context.lock_wait) {
        Ok(lock) => {
            super::warn_forged_markers(&lock);
            Ok(Some(lock))
        }
        Err(cairn::error::Error::Io { path, source }) if super::cannot_write(&source) => {
            errln!(
                "warning: {command} --dry-run runs without a lock: the repository cannot be written ({}: {source})",
                path.display()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(clap::Args, Debug)]
pub struct PruneOnlyArgs {
    #[command(flatten)]
    args: PruneArgs,
    /// Print what would be deleted and repacked, and change nothing
    #[arg(long)]
    dry_run: bool,
}

pub fn run_forget(context: &Context, args: ForgetArgs) -> Result<ExitCode> {
    let repo = context.open()?;
    let policy = args.policy.policy();
    if args.ids.is_empty() && policy.is_empty() {
        bail!("give snapshot ids or a --keep-* policy: refusing to guess what to forget");
    }
    if !args.ids.is_empty() && !policy.is_empty() {
        bail!("give either snapshot ids or a --keep-* policy, not both");
    }
    let kind = if args.prune { LockKind::Exclusive } else { LockKind::Shared };
    if args.dry_run {
        let _lock = dry_run_lock(&repo, kind, "forget", context)?;
        let decisions = decide(&repo, &args, &policy)?;
        forget(context, &repo, &decisions, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let command = if args.prune { "forget --prune" } else { "forget" };
    let room = make_room(&repo, FORGET_NEEDS, None, command)?;
    // The prune sets the reserve aside again itself, once it is handed the room.
    let handed = std::cell::Cell::new(false);
    let done = (|| {
        let lock = repo.lock(kind, "forget", context.lock_wait)?;
        super::warn_forged_markers(&lock);
        let decisions = decide(&repo, &args, &policy)?;
        if args.prune {
            handed.set(true);
            return forget_and_prune(context, &repo, &decisions, &args.prune_args, room);
        }
        forget(context, &repo, &decisions, false)?;
        Ok(ExitCode::SUCCESS)
    })();
    if !handed.get() {
        finish_room(&repo, room, false);
    }
    done
}

/// What a forget decides for each snapshot: by `args.ids`, or by `policy`; the caller holds a lock.
fn decide(repo: &Repository, args: &ForgetArgs, policy: &Policy) -> Result<Vec<Decision>> {
    if args.ids.is_empty() {
        let mut snapshots = repo.snapshots()?;
        // A manifest that cannot be read is no snapshot to a policy: refuse rather than judge
        // the others without it.
        if let Some(first) = repo.take_damage().first() {
            bail!(
                "{first}: refusing to apply a retention policy while a snapshot manifest is damaged; nothing was \
                 forgotten: `cairn forget --force ID` removes a damaged file (`cairn check` lists what is damaged)"
            );
        }
        if let Some(source) = &args.source {
            snapshots.retain(|(_, s)| &s.source_key() == source);
        }
        return Ok(plan(&snapshots, policy));
    }
    let mut named = Vec::new();
    let mut damaged = Vec::new();
    // Every snapshot file, damaged ones too: a prefix that names a snapshot and a damaged file
    // is ambiguous, where the choice among snapshots alone would remove the one it can read.
    let files: Vec<String> = repo.list_files(FileKind::Snapshot)?.into_iter().map(|(id, _)| id.to_hex()).collect();
    for spec in &args.ids {
        match repo.find_snapshot(spec) {
            Ok((id, _)) => {
                let chosen = id.to_hex();
                if named_by(&files, spec).any(|file| *file != chosen) {
                    return Err(cairn::error::Error::AmbiguousSnapshot(spec.to_string()).into());
                }
                named.push(id);
            }
            Err(cairn::error::Error::Select(e @ SelectError::Damaged { .. })) => {
                let decision = damaged_file(repo, &files, spec, args, e)?;
                if !damaged.iter().any(|d: &Decision| d.id == decision.id) {
                    damaged.push(decision);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Every copy of a named snapshot goes with it; a protected one only with --force.
    let mut decisions = plan_named(&repo.snapshots()?, &named, args.force)?;
    decisions.extend(damaged);
    Ok(decisions)
}

/// The names among `files` that `spec`, an id or a prefix of one in either case, names.
fn named_by<'f>(files: &'f [String], spec: &str) -> impl Iterator<Item = &'f String> {
    let wanted = spec.to_ascii_lowercase();
    files.iter().filter(move |file| !wanted.is_empty() && file.starts_with(&wanted))
}

/// The removal of the snapshot file `spec` names, when it is one that cannot be read: only with
/// `--force` (what it held is lost to this repository; a copy elsewhere may be whole), never with
/// `--prune` (a prune refuses while it is there, and the forget must change nothing when the
/// prune refuses), and only once it is read afresh and found damaged, not merely unreachable
/// (`unreadable` says why no snapshot was chosen).
/// `files` are the names of every snapshot file.
fn damaged_file(
    repo: &Repository,
    files: &[String],
    spec: &str,
    args: &ForgetArgs,
    unreadable: SelectError,
) -> Result<Decision> {
    let named: Vec<Id> = named_by(files, spec).filter_map(|file| Id::from_hex(file)).collect();
    let id = match named[..] {
        [id] => id,
        [] => bail!("no snapshot matches {spec:?}, and no snapshot file is named so ({unreadable})"),
        _ => return Err(cairn::error::Error::AmbiguousSnapshot(spec.to_string()).into()),
    };
    let why = match repo.snapshot_damage(&id) {
        Ok(why) => why,
        Err(e) => bail!(
            "{e}\nsnapshot file {} cannot be read, and whether it is damaged cannot be told from here; nothing was forgotten",
            id.short()
        ),
    };
    let Some(why) = why else {
        bail!("snapshot file {} could not be read a moment ago and reads now: nothing was forgotten; run the command again", id.short());
    };
    let hex = id.to_hex();
    if !args.force {
        bail!(
            "{why}\nsnapshot file {} holds no snapshot that can be read; nothing was forgotten. `cairn forget --force {hex}` \
             removes the file (a copy elsewhere, such as a sync destination, may still hold the snapshot whole)",
            id.short()
        );
    }
    if args.prune {
        bail!(
            "{why}\nsnapshot file {} cannot be read: remove it with `cairn forget --force {hex}` first, then prune; \
             nothing was forgotten",
            id.short()
        );
    }
    Ok(Decision { id: hex, time: 0, group: String::new(), keep: false, reasons: Vec::new(), damaged: Some(why) })
}

/// Prints the decisions and (unless `dry_run`) removes the snapshots they do not keep; the caller
/// holds a lock.
pub fn forget(context: &Context, repo: &Repository, decisions: &[Decision], dry_run: bool) -> Result<()> {
    let removed: Vec<&Decision> = decisions.iter().filter(|d| !d.keep).collect();
    if context.json {
        outln!("{}", serde_json::json!({ "dry_run": dry_run, "snapshots": decisions }));
    } else if !context.quiet {
        for decision in decisions {
            if decision.damaged.is_some() {
                outln!("remove {}  (a damaged file: it cannot be read)", &decision.id[..8]);
                continue;
            }
            outln!(
                "{} {}  {}  {:<30}  {}",
                if decision.keep { "keep  " } else { "remove" },
                &decision.id[..8],
                format::utc(decision.time),
                decision.group,
                decision.reasons.join(",")
            );
        }
        outln!(
            "{} {}, {} kept",
            format::count(removed.len() as u64, "snapshot"),
            if dry_run { "would be removed" } else { "removed" },
            decisions.len() - removed.len()
        );
    }
    if dry_run {
        return Ok(());
    }
    super::audited(cairn::retention::forget(repo, decisions))?;
    Ok(())
}

/// Removes the snapshots `decisions` do not keep and prunes, the caller holding the exclusive
/// lock: the prune's plan is made first, and a repository it finds damaged (a lost index file, a
/// damaged manifest, a missing pack) refuses both, before any snapshot is removed.
///
/// `room`: what the caller's [`make_room`] found and did (`None`: nothing yet).
pub fn forget_and_prune(
    context: &Context,
    repo: &Repository,
    decisions: &[Decision],
    args: &PruneArgs,
    room: Option<Room>,
) -> Result<ExitCode> {
    let mut leaving = HashSet::new();
    for decision in decisions.iter().filter(|d| !d.keep) {
        let Some(id) = Id::from_hex(&decision.id) else {
            finish_room(repo, room, false);
            bail!("not a snapshot id: {}", decision.id);
        };
        leaving.insert(id);
    }
    // One JSON document: the decisions go into the prune's.
    let quiet = Context { quiet: context.quiet || context.json, json: false, ..context.clone() };
    let said = if context.json { &quiet } else { context };
    let decided = context.json.then_some(decisions);
    pruned(context, repo, args, &leaving, room, decided, || forget(said, repo, decisions, false))
}

pub fn run_prune(context: &Context, args: PruneOnlyArgs) -> Result<ExitCode> {
    let repo = context.open()?;
    if args.dry_run {
        let _lock = dry_run_lock(&repo, LockKind::Exclusive, "prune", context)?;
        return prune(context, &repo, &args.args, true);
    }
    let room = make_room(&repo, FORGET_NEEDS, None, "prune")?;
    let lock = match repo.lock(LockKind::Exclusive, "prune", context.lock_wait) {
        Ok(lock) => lock,
        Err(e) => {
            finish_room(&repo, room, false);
            return Err(e.into());
        }
    };
    super::warn_forged_markers(&lock);
    pruned(context, &repo, &args.args, &HashSet::new(), room, None, || Ok(()))
}

/// Plans and (unless `dry_run`) executes a prune; the caller holds the exclusive lock.
pub fn prune(context: &Context, repo: &Repository, args: &PruneArgs, dry_run: bool) -> Result<ExitCode> {
    if dry_run {
        let plan = prune::plan(repo, args.max_unused)?;
        show_plan(context, &plan);
        let compacted = cairn::audit::compact(repo, cairn::clock::now_ms(), args.keep_audit, true)?;
        if context.json {
            outln!("{}", serde_json::json!({ "dry_run": true, "plan": plan, "audit": compacted }));
        } else if !context.quiet {
            outln!(
                "audit: {} of {} would be deleted",
                compacted.deleted,
                format::count(compacted.records as u64, "record")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    pruned(context, repo, args, &HashSet::new(), None, None, || Ok(()))
}

/// A prune with the snapshots `leaving` removed by `forget` once the plan is made (see
/// [`prune::prune`]); prints the plan and the report. On a local repository the repacking is
/// kept within the room on its disk, the reserve counted in, and the reserve is released if the
/// prune needs it ([`make_room`]; `room`: what the caller found and did), then set aside again.
fn pruned(
    context: &Context,
    repo: &Repository,
    args: &PruneArgs,
    leaving: &HashSet<Id>,
    room: Option<Room>,
    decisions: Option<&[Decision]>,
    forget: impl FnOnce() -> Result<()>,
) -> Result<ExitCode> {
    // A reserve the caller released is given back however this ends.
    let made = repo
        .prune_needs()
        .map_err(anyhow::Error::from)
        .and_then(|needs| Ok((needs, make_room(repo, needs, room, "prune")?)));
    let (needs, mut room) = match made {
        Ok(made) => made,
        Err(e) => {
            finish_room(repo, room, false);
            return Err(e);
        }
    };
    let repack_room = room.map(|r| (r.free + r.reserve).saturating_sub(needs));
    let done = (|| {
        let progress = Progress::new("prune", context.quiet || context.json);
        let mut plan_json = serde_json::Value::Null;
        let pruned = prune::prune(repo, args.max_unused, repack_room, args.keep_audit, &progress, leaving, |plan| {
            let writes = needs + prune::repack_writes(plan.repack_bytes, plan.repack_blobs, plan.repack.len() as u64);
            if room.is_some_and(|r| r.reserve > 0 && r.free < writes) {
                room = make_room(repo, writes, room, "prune")
                    .map_err(|e| cairn::error::Error::Invalid(format!("{e:#}")))?;
            }
            forget().map_err(|e| cairn::error::Error::Invalid(format!("{e:#}")))?;
            show_plan(context, plan);
            if plan.repack_deferred > 0 {
                errln!(
                    "note: {} worth repacking left as they are: the repository's file system lacks the room (a prune \
                     with more room repacks them)",
                    format::count(plan.repack_deferred, "pack")
                );
            }
            plan_json = serde_json::to_value(plan).unwrap_or_default();
            Ok(())
        });
        let prune::Pruned { report, audit: compacted } = super::audited(pruned)?;
        if context.json {
            let mut json = serde_json::json!({ "plan": plan_json, "report": report, "audit": compacted });
            if let Some(decisions) = decisions {
                json["snapshots"] = serde_json::json!(decisions);
            }
            outln!("{json}");
        } else if !context.quiet {
            outln!(
                "pruned: {} deleted, {} written, {} rewritten; {} freed; {} of {} compacted away",
                format::count(report.packs_deleted, "pack"),
                report.packs_written,
                format::count(report.index_files_written, "index file"),
                format::bytes(report.bytes_freed),
                compacted.deleted,
                format::count(compacted.records as u64, "audit record")
            );
        }
        Ok(ExitCode::SUCCESS)
    })();
    finish_room(repo, room, done.is_ok());
    done
}

/// Prints a prune's plan (not with --json: it goes into the JSON report).
fn show_plan(context: &Context, plan: &prune::PrunePlan) {
    if !context.quiet && !context.json {
        outln!(
            "prune plan: {}, {}; live {}, dead {}; delete {}, repack {} ({}, {}), {} unreferenced; frees about {}",
            format::count(plan.snapshots, "snapshot"),
            format::count(plan.packs, "pack"),
            format::bytes(plan.live_bytes),
            format::bytes(plan.dead_bytes),
            format::count(plan.delete.len() as u64, "pack"),
            plan.repack.len(),
            format::count(plan.repack_blobs, "blob"),
            format::bytes(plan.repack_bytes),
            plan.unreferenced.len(),
            format::bytes(plan.bytes_freed)
        );
    }
}
