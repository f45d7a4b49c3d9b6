//! `cairn repair index [--read-all-packs] [--drop-lost-dictionaries] [--dry-run]`

use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use cairn::progress::Progress;
use cairn::repair;
use cairn::repository::lock::LockKind;

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Rebuild the index from the packs' own trailers (after an index file was lost or damaged)
    Index(IndexArgs),
}

#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    /// Read the trailer of every pack, not only of those no intact index file names
    #[arg(long)]
    read_all_packs: bool,
    /// Drop from the index the blobs compressed with a dictionary that is missing or damaged
    /// (`cairn check` names it), so that the next snapshot stores them again. Keep the lost file's
    /// name: should it turn up, put it back and run `repair index --read-all-packs` before prune
    #[arg(long)]
    drop_lost_dictionaries: bool,
    /// Print what would be rebuilt, and change nothing
    #[arg(long)]
    dry_run: bool,
}

impl IndexArgs {
    fn options(&self) -> repair::Options {
        repair::Options { read_all_packs: self.read_all_packs, drop_lost_dictionaries: self.drop_lost_dictionaries }
    }
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let Args::Index(args) = args;
    let repo = context.open()?;
    let _lock = repo.lock(LockKind::Exclusive, "repair index", context.lock_wait)?;
    let progress = Progress::new("trailers", context.quiet || context.json);
    if args.dry_run {
        let plan = repair::plan(&repo, args.options(), &progress)?;
        if context.json {
            outln!("{}", serde_json::json!({ "dry_run": true, "plan": plan }));
        } else {
            describe(&plan, context.quiet);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut plan_json = serde_json::Value::Null;
    let repaired = repair::repair(&repo, args.options(), &progress, |plan| {
        if !context.json {
            describe(plan, context.quiet);
        }
        plan_json = serde_json::to_value(plan).unwrap_or_default();
    });
    let report = super::audited(repaired)?;
    if context.json {
        outln!("{}", serde_json::json!({ "plan": plan_json, "report": report }));
    } else if !context.quiet && report.index_files_written + report.index_files_deleted > 0 {
        outln!(
            "index rebuilt: {} index files written, {} deleted; run `cairn check` to see what is still missing",
            report.index_files_written,
            report.index_files_deleted
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Says what the plan found: problems on stderr, the summary on stdout.
fn describe(plan: &repair::RepairPlan, quiet: bool) {
    for file in &plan.damaged_index_files {
        errln!("warning: damaged index file {file} is replaced");
    }
    for pack in &plan.disputed {
        errln!("warning: index files disagree about pack {pack}: its own trailer decides");
    }
    for pack in &plan.missing {
        errln!("warning: pack {pack} is missing: its blobs are dropped from the index");
    }
    for unreadable in &plan.unreadable {
        let what = match unreadable.kept {
            true => "the entries an index file had for it are kept",
            false => "it stays unindexed",
        };
        errln!("warning: pack {}: {}; {what}", unreadable.pack, unreadable.reason);
    }
    for lost in &plan.lost_dictionaries {
        errln!(
            "warning: {}: the {} blobs compressed with it are dropped from the index; the next snapshot stores \
             what it still has of them again (same ids, so earlier snapshots get them back); the rest stay lost \
             (`cairn check` names the files). Should the file turn up, put it back and run `cairn repair index \
             --read-all-packs` before any prune",
            lost.reason,
            lost.blobs
        );
    }
    if quiet {
        return;
    }
    if plan.is_noop() {
        outln!("the index already names every pack present: nothing to rebuild");
    } else {
        outln!(
            "repair plan: {} packs present, {} indexed from an index file, {} from their own trailer; {} missing packs \
             ({} blobs) and {} damaged index files dropped; {} index files replaced",
            plan.packs,
            plan.from_index,
            plan.from_trailer.len(),
            plan.missing.len(),
            plan.missing_blobs,
            plan.damaged_index_files.len(),
            plan.index_files
        );
    }
}
