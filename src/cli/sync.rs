//! `cairn sync --to LOCATION`: ship snapshots to another repository (offsite), then optionally
//! apply the destination's own retention.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use super::forget::{PolicyArgs, PruneArgs};
use super::{format, Context};
use cairn::audit::Run;
use cairn::format::audit::Outcome;
use cairn::progress::Progress;
use cairn::repository::lock::LockKind;
use cairn::repository::{NewKeys, Repository};
use cairn::retention::plan;
use cairn::sync::{copy, missing_snapshots, SyncOptions, SyncReport};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Destination repository: a directory, s3://bucket/prefix, gs://bucket/prefix or
    /// az://container/prefix; created with this repository's parameters if it does not exist
    #[arg(long, value_name = "LOCATION")]
    to: String,
    /// Only snapshots of this source (repeatable; default: all)
    #[arg(long, value_name = "NAME")]
    source: Vec<String>,
    /// The destination's password, from the first line of this file (default: this repository's)
    #[arg(long, env = "CAIRN_TO_PASSWORD_FILE", value_name = "FILE")]
    to_password_file: Option<std::path::PathBuf>,
    /// Packs copied at once (each holds one pack, up to 16 MiB, in memory)
    #[arg(long, value_name = "N", default_value_t = 4)]
    parallel: usize,
    /// Afterwards, apply the --keep-* policy to the destination and prune it
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    prune_args: PruneArgs,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let policy = args.policy.policy();
    if args.prune && policy.is_empty() {
        bail!("--prune needs a --keep-* policy for the destination");
    }
    if !args.prune && !policy.is_empty() {
        bail!("--keep-* options apply to the destination only with --prune");
    }
    let source = context.open_cached()?;
    let mut audit = Run::start("sync", &args.source.join(" "));
    // In the start record too: a sync that is killed is then a failed sync to its destination.
    audit.record.details = serde_json::json!({ "to": args.to, "sources": args.source });
    super::begin_audit(&audit, &source);
    let mut report = SyncReport::default();
    let result = sync(context, &source, &args, &mut report);
    let dest = result.as_ref().ok();
    let requests = dest.and_then(|d| d.backend().requests());
    audit.record.files = report.snapshots_copied.len() as u64;
    audit.record.bytes = report.bytes_copied;
    audit.record.errors = report.errors.clone();
    audit.record.details =
        serde_json::json!({ "to": args.to, "sources": args.source, "report": report, "requests": requests });
    let outcome = match &result {
        Err(e) => {
            audit.record.errors.push(format!("{e:#}"));
            Outcome::Failed
        }
        Ok(_) if !report.snapshots_failed.is_empty() => Outcome::Incomplete,
        Ok(_) => Outcome::Ok,
    };
    // A destination that received data gets the record too, so its own audit shows when and
    // from where (as received, not as an offsite copy of its own), complete with its end and
    // outcome. An up-to-date sync writes nothing there.
    let received = report.packs_copied + report.snapshots_copied.len() as u64 > 0;
    if let (Some(dest), true) = (dest, received) {
        let mut copy = audit.ended_copy(outcome);
        copy.details["received_from"] = serde_json::json!(context.location());
        if let Err(e) = cairn::audit::write(dest, &copy) {
            errln!("warning: could not write the audit record to {}: {e}", args.to);
        }
    }
    super::finish_audit(audit, &source, outcome);
    super::warn_damage(&source);
    let dest = result?;
    if context.json {
        outln!("{}", serde_json::json!({ "to": args.to, "report": report, "requests": requests }));
    } else if !context.quiet {
        outln!(
            "synced to {}: {} copied, {} already there; {} ({}) sent, {} found from an earlier run, {}",
            args.to,
            format::count(report.snapshots_copied.len() as u64, "snapshot"),
            report.snapshots_present,
            format::count(report.packs_copied, "pack"),
            format::bytes(report.bytes_copied),
            report.packs_present,
            format::count(report.index_files_written, "index file"),
        );
        if let Some(r) = requests {
            outln!(
                "requests: {} (get {}, put {}, head {}, list {}, delete {})",
                r.total(),
                r.get,
                r.put,
                r.head,
                r.list,
                r.delete
            );
        }
    }
    for error in &report.errors {
        errln!("error: {error}");
    }
    if !report.snapshots_failed.is_empty() {
        errln!(
            "error: {} could not be copied: {}",
            format::count(report.snapshots_failed.len() as u64, "snapshot"),
            report.snapshots_failed.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    if args.prune {
        check_may_delete(&dest, &args.to)?;
        let lock = dest.lock(LockKind::Exclusive, "sync --prune", context.lock_wait)?;
        super::warn_forged_markers(&lock);
        let nested = Context { quiet: context.quiet || context.json, json: false, ..context.clone() };
        super::forget::forget(&nested, &dest, &plan(&dest.snapshots()?, &policy), false)?;
        return super::forget::prune(&nested, &dest, &args.prune_args, false);
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies what is missing; returns the destination. With nothing missing, the destination sees
/// only the reads of its config (and key file) and the listings of its keys and snapshots.
fn sync(context: &Context, source: &Repository, args: &Args, report: &mut SyncReport) -> Result<Repository> {
    let _source_lock = super::read_lock(source, "sync", context.lock_wait)?;
    let dest = open_or_create(context, source, &args.to, args.to_password_file.as_deref())?;
    let shared = cairn::sync::shares_keys(source, &dest);
    let missing = if shared {
        missing_snapshots(source, &dest, &args.source, report)?
    } else {
        cairn::sync::missing_by_identity(source, &dest, &args.source, report)?
    };
    if missing.is_empty() {
        return Ok(dest);
    }
    // Taken and released with puts alone: sync never deletes in the destination, so that it
    // works with credentials that may only create objects there (store-format/locks.md).
    let dest_lock = dest.lock_create_only(LockKind::Shared, "sync", context.lock_wait)?;
    let progress = Progress::new("sync", context.quiet || context.json);
    if shared {
        let options = SyncOptions { parallel: args.parallel.max(1), ..SyncOptions::default() };
        copy(source, &dest, &dest_lock, missing, &options, &progress, report)?;
    } else {
        cairn::sync::copy_reencoded(source, &dest, &dest_lock, missing, &progress, report)?;
    }
    drop(dest_lock);
    super::warn_damage(&dest);
    Ok(dest)
}

/// `--prune` deletes in the destination, which is the trusted side's business: with credentials
/// that may not delete there (the protected host's create-only ones), stop before the forget, with
/// nothing deleted. Costs one request: a delete of a name that never exists.
fn check_may_delete(dest: &Repository, location: &str) -> Result<()> {
    let probe = format!("snapshots/{}.delete-check", cairn::id::Id(cairn::id::random_bytes()).to_hex());
    match dest.backend().delete(&probe) {
        Err(e) if cairn::backend::permission_denied(&e) => bail!(
            "these credentials cannot delete in {location} (a delete was refused), so nothing was forgotten or \
             pruned there: `sync --prune` is for the trusted side. Run `cairn sync` here without --prune, and \
             `cairn --repo {location} forget --keep-... --prune` on the trusted side with its own credentials"
        ),
        other => Ok(other?),
    }
}

/// Opens the destination, or creates it sharing the source's parameters and, if the source is
/// encrypted, its master key (wrapped under the same passphrase), so sealed packs and manifests
/// copy verbatim. An existing destination must share the key material.
fn open_or_create(
    context: &Context,
    source: &Repository,
    location: &str,
    password_file: Option<&std::path::Path>,
) -> Result<Repository> {
    // The destination's password: its own file if given, else the one this command has.
    let passphrase = match password_file {
        Some(path) => Some(super::password::from_file(path)?),
        None => context.password.read(location)?,
    };
    let opened = match &passphrase {
        Some(passphrase) => Repository::open_with(location, passphrase),
        None => Repository::open_location(location, cairn::repository::Passphrase::None),
    };
    match opened {
        Err(cairn::error::Error::NotARepository(_)) => {}
        Ok(dest) => {
            if !cairn::sync::shares_keys(source, &dest) && !context.quiet && !context.json {
                errln!(
                    "note: {location} has other key material ({}): every blob is re-encoded for it",
                    if source.keys().is_some() != dest.keys().is_some() {
                        "one is encrypted, the other not"
                    } else {
                        "another master key"
                    }
                );
            }
            return Ok(dest);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening the destination {location}"))),
    }
    let mut config = cairn::format::config::Config::new_random();
    config.chunker = source.config().chunker;
    config.compression_level = source.config().compression_level;
    config.pack_target_size = source.config().pack_target_size;
    // Encrypted whenever there is a password: an offsite copy above all. An encrypted source
    // shares its master key, so its sealed data copies as it is; a plain one is re-encoded.
    let keys = match (source.keys(), passphrase) {
        (Some(keys), Some(passphrase)) => NewKeys::Shared { master: keys.master.clone(), passphrase },
        (Some(_), None) => bail!("{location} would be encrypted like this repository: give its password"),
        (None, Some(passphrase)) => NewKeys::New { passphrase },
        (None, None) => {
            errln!(
                "warning: {location} will NOT be encrypted: no password was given (CAIRN_PASSWORD, --to-password-file)"
            );
            NewKeys::None
        }
    };
    let dest = Repository::init_location_with(location, config, keys)
        .with_context(|| format!("creating the destination repository {location}"))?;
    if !context.quiet && !context.json {
        errln!("created repository {} at {location}", dest.config().repo_id.short());
    }
    Ok(dest)
}
