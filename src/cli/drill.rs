//! `cairn drill [--snapshot ID|latest|random] [FILTERS] [--scratch DIR]`: a restore drill.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::Result;

use super::{format, Context};
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
}

/// Set by SIGINT, SIGTERM or SIGHUP: the drill stops and removes its scratch directory.
static CANCEL: AtomicBool = AtomicBool::new(false);
/// The signal that set [`CANCEL`], for the exit code (128 + signal, as a shell reports it).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
    CANCEL.store(true, Ordering::SeqCst);
    // A second signal ends the process at once, as if no handler were installed.
    // SAFETY: signal() is async-signal-safe; SIG_DFL is a valid disposition.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// Stops the drill cleanly on the signals that end a service or an interactive command: a drill
/// may have gigabytes restored in its scratch directory, and nothing else would remove them
/// until the next drill.
fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores to atomics and calls signal().
        unsafe { libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let (repo, lock) = context.open_cached_read_locked("drill")?;
    let mut audit = Run::start("drill", args.filters.source.as_deref().unwrap_or(""));
    let _lock = match lock {
        Ok(lock) => lock,
        Err(e) => {
            audit.record.errors.push(e.to_string());
            super::finish_audit(audit, &repo, Outcome::Failed);
            return Err(e);
        }
    };
    let scratch = args.scratch.unwrap_or_else(std::env::temp_dir);
    let progress = Progress::new("drill", context.quiet || context.json);
    // Only now: until the drill starts (waiting for the lock, say) nothing needs cleaning up.
    catch_signals();
    let outcome =
        pick_snapshot(&repo, &Pick::parse(&args.snapshot), &args.filters.filter()).and_then(|(id, snapshot)| {
            audit.record.source = snapshot.source_key();
            audit.record.snapshot = Some(id.to_hex());
            drill(&repo, &id, &snapshot, &scratch, &progress, Some(&CANCEL))
        });
    super::warn_damage(&repo);
    let report = match outcome {
        Ok(report) => report,
        Err(cairn::error::Error::Interrupted) => {
            let signal = SIGNAL.load(Ordering::SeqCst);
            let message = format!("drill interrupted by signal {signal}; its scratch directory was removed");
            audit.record.errors.push(message.clone());
            super::finish_audit(audit, &repo, Outcome::Failed);
            errln!("error: {message}");
            return Ok(ExitCode::from(128 + signal as u8));
        }
        Err(e) => {
            audit.record.errors.push(e.to_string());
            super::finish_audit(audit, &repo, Outcome::Failed);
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
    super::finish_audit(audit, &repo, if report.passed() { Outcome::Ok } else { Outcome::Failed });

    if context.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        for failure in &report.failures {
            errln!("error: {failure}");
        }
        if !context.quiet {
            outln!(
                "drill of snapshot {} ({}): {}: {} files, {} restored and verified, {} checks passed, {} failed, {} SQLite databases checked, {:.1}s",
                &report.snapshot[..8],
                report.source,
                if report.passed() { "PASSED" } else { "FAILED" },
                report.files,
                format::bytes(report.bytes),
                report.checks_passed,
                report.checks_failed,
                report.databases.len(),
                report.duration_ms as f64 / 1000.0
            );
        }
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
