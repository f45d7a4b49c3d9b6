//! `cairn drill [--snapshot ID|latest|random] [FILTERS] [--scratch DIR]`: a restore drill.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;

use super::{format, signals, Context};
use cairn::audit::Run;
use cairn::drill::{drill_picked, Pick};
use cairn::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot to drill: an id or prefix, `latest` or `random` (of those the filters select; a
    /// safety snapshot of an in-place restore only if they name it: --source pre-restore)
    #[arg(long, default_value = "latest", value_name = "ID|latest|random")]
    snapshot: String,
    #[command(flatten)]
    filters: super::filter::FilterArgs,
    /// Where to make the scratch directory (default: the system temporary directory)
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// Also write the drill's record into this repository (`cairn run` drilling an offsite copy
    /// records it in the local repository too, where `cairn status` looks)
    #[arg(long, value_name = "REPO", hide = true)]
    record_to: Vec<String>,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let (repo, lock) = context.open_cached_read_locked("drill")?;
    // The repositories that get a copy of the drill's record.
    let mut also = Vec::new();
    for location in &args.record_to {
        match context.open_at(location) {
            Ok(other) => also.push(other),
            Err(e) => errln!("warning: could not write the drill's record to {location}: {e}"),
        }
    }
    let _lock = match lock {
        Ok(lock) => lock,
        Err(e) => {
            // A drill that cannot run is a failed drill, where the drill's records go.
            let source = args.filters.source.as_deref().unwrap_or("");
            let mut run = Run::start("drill", source);
            run.record.errors.push(e.to_string());
            run.close(cairn::format::audit::Outcome::Failed);
            // The copies name the repository drilled, as a drill's own copies do.
            let mut copy = run.record.clone();
            copy.details = serde_json::json!({ "repository": repo.backend().location() });
            let records = std::iter::once((&repo, &run.record)).chain(also.iter().map(|other| (other, &copy)));
            for (target, record) in records {
                if let Err(w) = cairn::audit::write(target, record) {
                    errln!("warning: could not write the audit record of this run: {w}");
                }
            }
            return Err(e);
        }
    };
    let scratch = args.scratch.unwrap_or_else(std::env::temp_dir);
    let progress = Progress::new("drill", context.quiet || context.json);
    // Only now: until the drill starts (waiting for the lock, say) nothing needs cleaning up. A
    // drill may have gigabytes restored in its scratch directory, which nothing else would remove
    // until the next drill: a signal stops it cleanly rather than ending the process.
    signals::cancel_instead();
    let pick = Pick::parse(&args.snapshot);
    let drilled =
        drill_picked(&repo, &pick, &args.filters.filter(), &scratch, &progress, Some(&signals::CANCEL), &also);
    super::warn_damage(&repo);
    let report = match super::audited(drilled) {
        Ok(report) => report,
        Err(cairn::error::Error::Interrupted) => {
            let signal = signals::SIGNAL.load(Ordering::SeqCst);
            errln!("error: drill interrupted by signal {signal}; its scratch directory was removed");
            return Ok(ExitCode::from(128 + signal as u8));
        }
        Err(e) => return Err(e.into()),
    };

    if context.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        for failure in &report.failures {
            errln!("error: {failure}");
        }
        if !context.quiet {
            outln!(
                "drill of snapshot {} ({}): {}: {}, {} restored and verified, {} passed, {} failed, {} checked, {:.1}s",
                &report.snapshot[..8],
                report.source,
                if report.passed() { "PASSED" } else { "FAILED" },
                format::count(report.files, "file"),
                format::bytes(report.bytes),
                format::count(report.checks_passed, "check"),
                report.checks_failed,
                format::count(report.databases.len() as u64, "SQLite database"),
                report.duration_ms as f64 / 1000.0
            );
        }
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
