//! `cairn drill [--snapshot ID|latest|random] [FILTERS] [--scratch DIR]`: a restore drill.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;

use super::{format, signals, Context};
use cairn::audit::Run;
use cairn::drill::{drill, pick_snapshot, Pick};
use cairn::format::audit::Outcome;
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

/// Writes the drill's record into its repository and into each of `also`, the drilled
/// repository named in its details there.
fn finish(context: &Context, mut audit: Run, repo: &cairn::repository::Repository, also: &[String], outcome: Outcome) {
    if !also.is_empty() {
        let mut copy = audit.ended_copy(outcome);
        copy.details["repository"] = serde_json::json!(repo.backend().location());
        for location in also {
            let written = context.open_at(location).and_then(|other| cairn::audit::write(&other, &copy));
            if let Err(e) = written {
                errln!("warning: could not write the drill's record to {location}: {e}");
            }
        }
        audit.record.details = copy.details;
    }
    super::finish_audit(audit, repo, outcome);
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let (repo, lock) = context.open_cached_read_locked("drill")?;
    let mut audit = Run::start("drill", args.filters.source.as_deref().unwrap_or(""));
    let _lock = match lock {
        Ok(lock) => lock,
        Err(e) => {
            audit.record.errors.push(e.to_string());
            finish(context, audit, &repo, &args.record_to, Outcome::Failed);
            return Err(e);
        }
    };
    let scratch = args.scratch.unwrap_or_else(std::env::temp_dir);
    let progress = Progress::new("drill", context.quiet || context.json);
    // Only now: until the drill starts (waiting for the lock, say) nothing needs cleaning up. A
    // drill may have gigabytes restored in its scratch directory, which nothing else would remove
    // until the next drill: a signal stops it cleanly rather than ending the process.
    signals::cancel_instead();
    let outcome =
        pick_snapshot(&repo, &Pick::parse(&args.snapshot), &args.filters.filter()).and_then(|(id, snapshot)| {
            audit.record.source = snapshot.source_key();
            audit.record.snapshot = Some(id.to_hex());
            // Once the source is known: a killed drill is then a failed drill of that source,
            // which its next drill clears.
            super::begin_audit(&audit, &repo);
            drill(&repo, &id, &snapshot, &scratch, &progress, Some(&signals::CANCEL))
        });
    super::warn_damage(&repo);
    let report = match outcome {
        Ok(report) => report,
        Err(cairn::error::Error::Interrupted) => {
            let signal = signals::SIGNAL.load(Ordering::SeqCst);
            let message = format!("drill interrupted by signal {signal}; its scratch directory was removed");
            audit.record.errors.push(message.clone());
            finish(context, audit, &repo, &args.record_to, Outcome::Failed);
            errln!("error: {message}");
            return Ok(ExitCode::from(128 + signal as u8));
        }
        Err(e) => {
            audit.record.errors.push(e.to_string());
            finish(context, audit, &repo, &args.record_to, Outcome::Failed);
            return Err(e.into());
        }
    };
    audit.record.files = report.files;
    audit.record.bytes = report.bytes;
    audit.record.errors = report.failures.iter().take(100).cloned().collect();
    audit.record.details = serde_json::json!({
        "checks_passed": report.checks_passed,
        "checks_failed": report.checks_failed,
        "databases": report.databases,
        "duration_ms": report.duration_ms,
    });
    finish(context, audit, &repo, &args.record_to, if report.passed() { Outcome::Ok } else { Outcome::Failed });

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
