//! `cairn check [--read-data | --read-data-subset n/m|P%]`

use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::check::{check, Prefetched, Subset};
use cairn::progress::Progress;
use cairn::repository::{Location, Repository};

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
    let backend = Location::parse(&context.location()).backend()?;
    let prefetch = subset.map(|subset| {
        let backend = backend.clone();
        std::thread::spawn(move || Prefetched::read(&*backend, subset))
    });
    let location = context.location();
    let repo = context.opening(&location, |passphrase| {
        Repository::open_on(backend.clone(), &Location::parse(&location), passphrase)
    })?;
    let lock = super::read_lock(&repo, "check", context.lock_wait)?;
    let prefetched = match prefetch.map(|thread| thread.join()) {
        Some(Ok(prefetched)) => prefetched,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => Prefetched::default(),
    };
    let progress = Progress::new("check", context.quiet || context.json);
    let mut report = super::audited(check(&repo, subset, prefetched, &progress))?;
    let forged = lock.as_ref().map(|lock| lock.forged_markers()).unwrap_or_default();
    report.warnings.extend(forged.iter().map(|marker| super::forged_marker(marker)));

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
                "checked {}, {}, {}{}: {}",
                format::count(report.snapshots, "snapshot"),
                format::count(report.trees, "tree"),
                format::count(report.packs, "pack"),
                if subset.is_some() {
                    format!(
                        " ({} read, {}, {} verified)",
                        report.packs_read,
                        format::bytes(report.bytes_read),
                        format::count(report.blobs_verified, "blob")
                    )
                } else {
                    String::new()
                },
                if report.is_clean() {
                    "no errors".to_string()
                } else {
                    format!(
                        "{}, {}, {} affected",
                        format::count(report.errors.len() as u64, "error"),
                        format::count(report.damaged_packs.len() as u64, "damaged pack"),
                        format::count(report.affected.len() as u64, "path")
                    )
                }
            );
        }
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
