//! `cairn forget [ID...] [--keep-* ...] [--dry-run] [--prune]` and `cairn prune`.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::{format, Context};
use cairn::clock::parse_duration;
use cairn::id::Id;
use cairn::progress::Progress;
use cairn::prune;
use cairn::repository::lock::LockKind;
use cairn::repository::Repository;
use cairn::retention::{plan, plan_named, Decision, Policy};

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
    /// Forget the named snapshots even if they are tagged `protected`
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

impl PruneArgs {
    /// A prune on a full disk: repacking writes the live blobs of a pack before it frees the
    /// pack, so it only deletes (what no snapshot needs) and repacks nothing.
    fn deleting_only(self) -> PruneArgs {
        PruneArgs { max_unused: f64::MAX, ..self }
    }
}

/// Before a forget or a prune takes its lock: on a full disk, releases the repository's reserve
/// ([`Repository::make_room`]) and says so; whether it did (a prune then only deletes).
fn make_room(repo: &Repository, command: &str) -> Result<bool> {
    let Some(room) = repo.make_room()? else { return Ok(false) };
    let prunes = command != "forget";
    let repacks = if prunes { ", and repacks nothing this time (a prune with room to spare does)" } else { "" };
    if room.released > 0 {
        errln!(
            "note: the repository's file system has {} free: `{command}` runs on the {} its reserve held{repacks}",
            format::bytes(room.free),
            format::bytes(room.released),
        );
    } else if prunes {
        errln!("note: the repository's file system has {} free (and no reserve){repacks}", format::bytes(room.free));
    }
    Ok(true)
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
    let mut prune_args = args.prune_args;
    if !args.dry_run && make_room(&repo, if args.prune { "forget --prune" } else { "forget" })? {
        prune_args = prune_args.deleting_only();
    }
    let kind = if args.prune { LockKind::Exclusive } else { LockKind::Shared };
    let lock = repo.lock(kind, "forget", context.lock_wait)?;
    super::warn_forged_markers(&lock);
    let decisions: Vec<Decision> = if args.ids.is_empty() {
        let mut snapshots = repo.snapshots()?;
        // A manifest that cannot be read is no snapshot to a policy: refuse rather than judge
        // the others without it.
        if let Some(first) = repo.take_damage().first() {
            bail!(
                "{first}: refusing to apply a retention policy while a snapshot manifest is damaged; nothing was \
                 forgotten: move the damaged file out of snapshots/ (`cairn check` lists what is damaged)"
            );
        }
        if let Some(source) = &args.source {
            snapshots.retain(|(_, s)| &s.source_key() == source);
        }
        plan(&snapshots, &policy)
    } else {
        let mut named = Vec::new();
        for spec in &args.ids {
            named.push(repo.find_snapshot(spec)?.0);
        }
        // Every copy of a named snapshot goes with it; a protected one only with --force.
        plan_named(&repo.snapshots()?, &named, args.force)?
    };
    if args.prune && !args.dry_run {
        return forget_and_prune(context, &repo, &decisions, &prune_args);
    }
    forget(context, &repo, &decisions, args.dry_run)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the decisions and (unless `dry_run`) removes the snapshots they do not keep; the caller
/// holds a lock.
pub fn forget(context: &Context, repo: &Repository, decisions: &[Decision], dry_run: bool) -> Result<()> {
    let removed: Vec<&Decision> = decisions.iter().filter(|d| !d.keep).collect();
    if context.json {
        outln!("{}", serde_json::json!({ "dry_run": dry_run, "snapshots": decisions }));
    } else if !context.quiet {
        for decision in decisions {
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
pub fn forget_and_prune(
    context: &Context,
    repo: &Repository,
    decisions: &[Decision],
    args: &PruneArgs,
) -> Result<ExitCode> {
    let mut leaving = HashSet::new();
    for decision in decisions.iter().filter(|d| !d.keep) {
        leaving.insert(Id::from_hex(&decision.id).ok_or_else(|| anyhow!("not a snapshot id: {}", decision.id))?);
    }
    pruned(context, repo, args, &leaving, || forget(context, repo, decisions, false))
}

pub fn run_prune(context: &Context, mut args: PruneOnlyArgs) -> Result<ExitCode> {
    let repo = context.open()?;
    if !args.dry_run && make_room(&repo, "prune")? {
        args.args = args.args.deleting_only();
    }
    let lock = repo.lock(LockKind::Exclusive, "prune", context.lock_wait)?;
    super::warn_forged_markers(&lock);
    prune(context, &repo, &args.args, args.dry_run)
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
    pruned(context, repo, args, &HashSet::new(), || Ok(()))
}

/// A prune with the snapshots `leaving` removed by `forget` once the plan is made (see
/// [`prune::prune`]); prints the plan and the report.
fn pruned(
    context: &Context,
    repo: &Repository,
    args: &PruneArgs,
    leaving: &HashSet<Id>,
    forget: impl FnOnce() -> Result<()>,
) -> Result<ExitCode> {
    let progress = Progress::new("prune", context.quiet || context.json);
    let mut plan_json = serde_json::Value::Null;
    let pruned = prune::prune(repo, args.max_unused, args.keep_audit, &progress, leaving, |plan| {
        forget().map_err(|e| cairn::error::Error::Invalid(format!("{e:#}")))?;
        show_plan(context, plan);
        plan_json = serde_json::to_value(plan).unwrap_or_default();
        Ok(())
    });
    let prune::Pruned { report, audit: compacted } = super::audited(pruned)?;
    super::keep_reserve(repo);
    if context.json {
        outln!("{}", serde_json::json!({ "plan": plan_json, "report": report, "audit": compacted }));
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
