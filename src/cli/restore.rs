//! `cairn restore SNAPSHOT --target DIR [--include PATH]... [--in-place [--delete] | --overwrite]
//! [--dry-run]`: the flow over a non-empty target is [`cairn::restore::in_place`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::progress::Progress;
use cairn::restore::in_place::{self, How, Mode};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id, unique id prefix, or `latest` (the newest the filters select; a safety
    /// snapshot of an in-place restore only if they name it: --source pre-restore)
    snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(long, short, value_name = "DIR")]
    target: PathBuf,
    /// Restore only this path inside the snapshot (repeatable), as given or as `cairn ls` shows it
    #[arg(long = "include", value_name = "PATH")]
    includes: Vec<std::ffi::OsString>,
    /// Keep existing files whose content already matches the snapshot; write only what differs
    /// (writes into the target directly, as --overwrite)
    #[arg(long, conflicts_with = "in_place")]
    skip_identical: bool,
    /// Restore over a non-empty target safely: a safety snapshot of it first (tagged protected,
    /// pre-restore), the new tree built beside it and swapped in, the old one kept as NAME.bak
    #[arg(long, conflicts_with = "overwrite")]
    in_place: bool,
    /// Write into a non-empty target directly (after a safety snapshot): for a mount point, /,
    /// or a disk without room for a second tree; not atomic
    #[arg(long)]
    overwrite: bool,
    /// With --in-place: remove what the snapshot (its --include paths) does not have
    #[arg(long)]
    delete: bool,
    /// List what would be created, replaced and deleted; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Leave runs of zeros in files as holes (VM images, preallocated files): they take room for
    /// their data, not their size. As restic and borg, not by default: a file with holes needs
    /// its space when it is written later, and a swap file with holes is refused by swapon
    #[arg(long)]
    sparse: bool,
    /// Allow --target / (with --overwrite)
    #[arg(long)]
    force_root: bool,
    // Last: the heading it sets ("Which snapshots") would also cover the flags after it.
    #[command(flatten)]
    filters: super::filter::FilterArgs,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let (repo, lock) = context.open_cached_read_locked("restore")?;
    let lock = lock?;
    let ((id, snapshot), indexed) = super::find_with_index(&repo, &args.snapshot, &args.filters)?;
    super::warn_damage(&repo);
    let progress = Progress::new("restore", context.quiet || context.json);
    let mode = match (args.in_place, args.overwrite || args.skip_identical) {
        (true, _) => Mode::InPlace,
        (false, true) => Mode::Overwrite,
        (false, false) => Mode::Refuse,
    };
    // A local repository inside the target is never part of its safety snapshot.
    let skip = super::local_repository(&context.location());
    let options = in_place::Options {
        target: args.target.clone(),
        includes: args
            .includes
            .iter()
            .map(|p| std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec())
            .collect(),
        mode,
        delete: args.delete,
        dry_run: args.dry_run,
        force_root: args.force_root,
        skip_identical: args.skip_identical,
        sparse: args.sparse,
        skip,
        cancel: None,
        within: Vec::new(),
        lock,
    };
    let report = in_place::run(&indexed, &id, &snapshot, options, &progress)?;
    for note in &report.leftovers {
        errln!("note: {note}");
    }
    if let Some(error) = &report.audit_error {
        errln!("warning: the restore is done, but its audit record could not be written: {error}");
    }
    if context.json {
        outln!("{}", serde_json::to_value(&report)?);
    } else if report.how == How::DryRun {
        print_plan(&report);
    } else if !context.quiet {
        let summary = &report.summary;
        outln!(
            "restored snapshot {} to {}: {} ({} already identical), {}, {} written{}",
            id.short(),
            report.target.display(),
            format::count(summary.files, "file"),
            summary.files_unchanged,
            format::count(summary.dirs, "dir"),
            format::bytes(summary.bytes),
            match summary.errors.len() {
                0 => String::new(),
                n => format!(", {}", format::count(n as u64, "error")),
            }
        );
        if summary.xattrs_not_restored > 0 {
            let attributes = format::count(summary.xattrs_not_restored, "extended attribute");
            outln!("not restored (warned above): {attributes}, refused for this user or by this file system");
        }
        if let Some(plan) = &report.plan {
            outln!(
                "changed: {} created, {} replaced, {} deleted, {} kept that the snapshot does not have",
                plan.created.len(),
                plan.replaced.len(),
                plan.deleted.len(),
                plan.kept.len()
            );
        }
        if let Some(safety) = &report.safety_snapshot {
            outln!("safety snapshot: {safety}");
        }
        if let Some(backup) = &report.backup {
            outln!("old tree kept at {}", backup.display());
        }
    }
    if !report.summary.errors.is_empty() {
        let entries = format::count(report.summary.errors.len() as u64, "entry");
        errln!("error: {entries} could not be restored (listed above)");
        // ENOSPC, or EDQUOT: a quota is a full disk for whoever restores.
        let full = |e: &cairn::format::snapshot::SourceError| {
            e.message.contains("(os error 28)") || e.message.contains("(os error 122)")
        };
        if !args.sparse && report.summary.errors.iter().any(full) {
            errln!("note: the target's file system is full; files with long runs of zeros (VM images) take room for their data only with --sparse");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--dry-run` without `--json`: one change per line, then the counts.
fn print_plan(report: &in_place::Report) {
    let Some(plan) = &report.plan else { return };
    let target = report.target.display();
    for (verb, paths) in [("create", &plan.created), ("replace", &plan.replaced), ("delete", &plan.deleted)] {
        for path in paths {
            outln!("{verb:<8} {target}/{path}");
        }
    }
    for path in &plan.kept {
        outln!("keep     {target}/{path}");
    }
    outln!(
        "would create {}, replace {}, delete {} and keep {} the snapshot does not have ({} unchanged); nothing was changed",
        plan.created.len(),
        plan.replaced.len(),
        plan.deleted.len(),
        format::count(plan.kept.len() as u64, "entry"),
        plan.unchanged
    );
}
