//! `cairn sync --to LOCATION`: ship snapshots to another repository (offsite), then optionally
//! apply the destination's own retention.

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::forget::{PolicyArgs, PruneArgs};
use super::{format, Context};
use cairn::progress::Progress;
use cairn::repository::lock::LockKind;
use cairn::repository::reserve::FORGET_NEEDS;
use cairn::repository::{Location, Repository};
use cairn::retention::plan;
use cairn::sync::{Destination, Request, SyncOptions, Synced};

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
    let to = Location::parse(&args.to);
    // A sync that cannot begin (its lock refused, the destination's password unreadable) is a
    // failed sync to its destination.
    let failed = |e: anyhow::Error| {
        if let Err(w) = cairn::sync::failed_before(&source, &to, &args.source, &format!("{e:#}")) {
            errln!("warning: could not write the audit record of this run: {w}");
        }
        e
    };
    let source_lock = super::read_lock(&source, "sync", context.lock_wait).map_err(failed)?;
    // The destination's password: its own file if given, else the one this command has.
    let passphrase = match &args.to_password_file {
        Some(path) => Some(super::password::from_file(path).map_err(failed)?),
        None => context.password.read(&args.to).map_err(failed)?,
    };
    let options =
        SyncOptions { parallel: args.parallel.max(1), lock_wait: context.lock_wait, ..SyncOptions::default() };
    let progress = Progress::new("sync", context.quiet || context.json);
    let talk = !context.quiet && !context.json;
    let found = |dest: &Repository, found: Destination| match found {
        Destination::SameKeys => {}
        Destination::OtherKeys { one_encrypted } if talk => errln!(
            "note: {} has other key material ({}): every blob is re-encoded for it",
            args.to,
            if one_encrypted { "one is encrypted, the other not" } else { "another master key" }
        ),
        Destination::OtherKeys { .. } => {}
        Destination::Created { encrypted } => {
            if !encrypted {
                errln!(
                    "warning: {} is NOT encrypted: no password was given (CAIRN_PASSWORD, --to-password-file)",
                    args.to
                );
            }
            if talk {
                errln!("created repository {} at {}", dest.config().repo_id.short(), args.to);
            }
        }
    };
    let request = Request { to: &to, passphrase: passphrase.as_deref(), sources: &args.source, options };
    let synced = cairn::sync::sync(&source, &request, &progress, found);
    drop(source_lock);
    super::warn_damage(&source);
    let Synced { dest, report, requests } =
        super::audited(synced).map_err(|e| anyhow::Error::new(e).context(format!("syncing to {}", args.to)))?;
    super::warn_damage(&dest);
    if context.json {
        outln!("{}", serde_json::json!({ "to": args.to, "report": report, "requests": requests }));
    } else if !context.quiet {
        outln!(
            "synced to {}: {} copied, {} already there; {} ({}) sent, {} found from an earlier run, {}{}",
            args.to,
            format::count(report.snapshots_copied.len() as u64, "snapshot"),
            report.snapshots_present,
            format::count(report.packs_copied, "pack"),
            format::bytes(report.bytes_copied),
            report.packs_present,
            format::count(report.index_files_written, "index file"),
            match report.dictionaries_copied {
                0 => String::new(),
                n => format!(", {}", format::count(n, "dictionary")),
            },
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
        // On a full disk, the forget and prune run on the destination's reserve (its lock file is
        // their first write), as `forget --prune` there would; the prune sets it aside again.
        let room = super::forget::make_room(&dest, FORGET_NEEDS, None, "sync --prune")?;
        let locked = dest.lock(LockKind::Exclusive, "sync --prune", context.lock_wait).and_then(|lock| {
            super::warn_forged_markers(&lock);
            Ok((lock, plan(&dest.snapshots()?, &policy)))
        });
        let (_lock, decisions) = match locked {
            Ok(locked) => locked,
            Err(e) => {
                super::forget::finish_room(&dest, room, false);
                return Err(e.into());
            }
        };
        let nested = Context { quiet: context.quiet || context.json, json: false, ..context.clone() };
        return super::forget::forget_and_prune(&nested, &dest, &decisions, &args.prune_args, room);
    }
    super::keep_reserve(&dest);
    Ok(ExitCode::SUCCESS)
}

/// `--prune` deletes in the destination, which is the trusted side's business: with credentials
/// that may not delete there (the protected host's create-only ones), stop before the forget, with
/// nothing deleted. Costs one request: a delete of a name that never exists.
fn check_may_delete(dest: &Repository, location: &str) -> Result<()> {
    match dest.may_delete()? {
        false => bail!(
            "these credentials cannot delete in {location} (a delete was refused), so nothing was forgotten or \
             pruned there: `sync --prune` is for the trusted side. Run `cairn sync` here without --prune, and \
             `cairn --repo {location} forget --keep-... --prune` on the trusted side with its own credentials"
        ),
        true => Ok(()),
    }
}
