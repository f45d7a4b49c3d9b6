//! `cairn check [--read-data | --read-data-subset n/m|P%]`

use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::audit::Run;
use cairn::check::{check, Prefetched, Subset};
use cairn::format::audit::Outcome;
use cairn::progress::Progress;
use cairn::repository::Repository;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also read every pack and verify every blob's content
    #[arg(long)]
    read_data: bool,
    /// Read only part of the data: `n/m` (part n of m) or `P%`, chosen by pack id so that
    /// successive runs with 1/m .. m/m cover everything
    #[arg(long, value_name = "n/m|P%", value_parser = Subset::parse, conflicts_with = "read_data")]
    read_data_subset: Option<Subset>,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let subset = if args.read_data { Some(Subset::All) } else { args.read_data_subset };
    // The first packs are read while the key is derived.
    let backend = Repository::backend_at(&context.location())?;
    let prefetch = subset.map(|subset| {
        let backend = backend.clone();
        std::thread::spawn(move || Prefetched::read(&*backend, subset))
    });
    let location = context.location();
    let ask = context.password.asker(&location);
    let repo = Repository::open_location_on(backend, &location, cairn::repository::Passphrase::Ask(&ask))?;
    let lock = super::read_lock(&repo, "check", context.lock_wait)?;
    let prefetched = match prefetch.map(|thread| thread.join()) {
        Some(Ok(prefetched)) => prefetched,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => Prefetched::default(),
    };
    let mut audit = Run::start("check", "");
    super::begin_audit(&audit, &repo);
    let progress = Progress::new("check", context.quiet || context.json);
    let mut report = match check(&repo, subset, prefetched, &progress) {
        Ok(report) => report,
        Err(e) => {
            audit.record.errors.push(e.to_string());
            super::finish_audit(audit, &repo, Outcome::Failed);
            return Err(e.into());
        }
    };
    let forged = lock.as_ref().map(|lock| lock.forged_markers()).unwrap_or_default();
    report.warnings.extend(forged.iter().map(|marker| super::forged_marker(marker)));
    audit.record.bytes = report.bytes_read;
    audit.record.errors = report.errors.iter().take(100).cloned().collect();
    audit.record.details = serde_json::json!({
        "read_data": subset.map(|s| s.to_string()),
        "packs": report.packs,
        "packs_read": report.packs_read,
        "blobs_verified": report.blobs_verified,
        "errors": report.errors.len(),
        "damaged_packs": report.damaged_packs.len(),
        "affected": report.affected.len(),
    });
    super::finish_audit(audit, &repo, if report.is_clean() { Outcome::Ok } else { Outcome::Failed });

    if context.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        for warning in &report.warnings {
            errln!("warning: {warning}");
        }
        for error in &report.errors {
            errln!("error: {error}");
        }
        for advice in &report.advice {
            errln!("hint: {advice}");
        }
        if !context.quiet {
            outln!(
                "checked {} snapshots, {} trees, {} packs{}: {}",
                report.snapshots,
                report.trees,
                report.packs,
                if subset.is_some() {
                    format!(
                        " ({} read, {}, {} blobs verified)",
                        report.packs_read,
                        format::bytes(report.bytes_read),
                        report.blobs_verified
                    )
                } else {
                    String::new()
                },
                if report.is_clean() {
                    "no errors".to_string()
                } else {
                    format!(
                        "{} errors, {} damaged packs, {} paths affected",
                        report.errors.len(),
                        report.damaged_packs.len(),
                        report.affected.len()
                    )
                }
            );
        }
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
