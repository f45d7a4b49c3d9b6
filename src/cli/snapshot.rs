//! `cairn snapshot PATH...`: back up files and directories; a stream (standard input, a
//! command's output) is [`stream`]'s.

mod stream;

mod walk;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context, EXIT_INCOMPLETE};
use std::os::unix::ffi::OsStrExt;

use cairn::audit::Run;
use cairn::backup::{normalize_paths, resolve_paths, SnapshotOptions};
use cairn::format::snapshot::source_key;
use cairn::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files and directories to back up (SQLite databases inside are captured through SQLite)
    #[arg(value_name = "PATH", required_unless_present_any = ["sqlite", "stdin", "stdin_from_command"])]
    paths: Vec<PathBuf>,
    /// An SQLite database to capture consistently while it is in use (repeatable)
    #[arg(long, value_name = "DB_PATH")]
    sqlite: Vec<PathBuf>,
    /// Store SQLite databases and their -wal/-shm/-journal files as plain files
    #[arg(long)]
    raw_sqlite: bool,
    /// How long to wait for a database another process holds locked
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = cairn::clock::parse_duration)]
    sqlite_timeout: std::time::Duration,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG", value_parser = cairn::names::label)]
    tags: Vec<String>,
    /// Name what is backed up (for instance the service), used to pick the parent snapshot
    #[arg(long, value_name = "NAME", default_value = "", value_parser = cairn::names::label)]
    source: String,
    /// Record this host name instead of the machine's (a container's random name, say): the
    /// parent snapshot and `--host` filters go by it
    #[arg(long, value_name = "NAME", value_parser = cairn::names::label)]
    host: Option<String>,
    /// Leave out entries matching a glob: a pattern without `/` matches names at any depth, one
    /// with `/` the absolute path (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    #[command(flatten)]
    walk: walk::WalkArgs,
    /// Disk guard: refuse to start, or stop before a write, that would leave less free space on
    /// the repository's file system (a local repository only): 10%, 5GiB, 500MiB
    #[arg(long, env = "CAIRN_MIN_FREE", value_name = "SIZE", value_parser = cairn::disk::MinFree::parse)]
    min_free: Option<cairn::disk::MinFree>,
    #[command(flatten)]
    stream: stream::StreamArgs,
}

fn record_failure(repo: &cairn::repository::Repository, source: &str, error: &str) {
    if let Err(e) = Run::failed_before(repo, "snapshot", source, error) {
        errln!("warning: could not write the audit record of this run: {e}");
    }
}

/// The repository, opened (or created) for a snapshot of the source `key`, and its shared lock.
/// The disk guard comes before anything is written, even before the repository is created; a
/// snapshot that cannot run (the guard, or a prune holding the repository too long) is a missed
/// backup: it leaves a failed audit record like any other failure.
fn open_locked(
    context: &Context,
    min_free: Option<cairn::disk::MinFree>,
    key: &str,
) -> Result<(cairn::repository::Repository, cairn::repository::lock::Lock)> {
    let local_root = cairn::repository::Location::parse(&context.location()).path().map(|p| p.to_path_buf());
    if let (Some(min), Some(root)) = (min_free, &local_root) {
        if let Err(e) = min.check(root, 0) {
            if let Ok(repo) = context.open() {
                record_failure(&repo, key, &e.to_string());
            }
            return Err(e.into());
        }
    }
    let mut repo = context.open_or_create()?;
    context.cache_for(&mut repo);
    match repo.lock(cairn::repository::lock::LockKind::Shared, "snapshot", context.lock_wait) {
        Ok(lock) => Ok((repo, lock)),
        Err(e) => {
            record_failure(&repo, key, &e.to_string());
            Err(e.into())
        }
    }
}

/// A saved snapshot as `--json` prints it, for a tree or a stream alike (`cairn run` and
/// `cairn serve` read it).
fn outcome_json(outcome: &cairn::backup::SnapshotOutcome) -> serde_json::Value {
    let s = &outcome.snapshot;
    serde_json::json!({
        "id": outcome.id.to_hex(),
        "short_id": outcome.id.short(),
        "complete": s.is_complete(),
        "errors": s.errors,
        "summary": s.summary,
        "packs_written": outcome.packs_written,
        "databases": outcome.databases,
        "duration_ms": s.duration_ms,
    })
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    if args.stream.wanted() {
        return stream::run(context, args);
    }
    let recorded: Vec<Vec<u8>> =
        normalize_paths(&args.paths).iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect();
    let key = source_key(&args.source, &recorded);
    // Check the sources before creating or touching the repository: a typo stores nothing. An
    // existing repository still gets an audit record of the failed run, so it is not missed.
    let checked = if args.paths.is_empty() { Ok(Vec::new()) } else { resolve_paths(&args.paths) };
    let (excludes, walk) = match checked.and_then(|_| args.walk.resolve(&args.excludes)) {
        Ok(resolved) => resolved,
        Err(e) => {
            if let Ok(repo) = context.open() {
                record_failure(&repo, &key, &e.to_string());
            }
            return Err(e.into());
        }
    };
    let (repo, _lock) = open_locked(context, args.min_free, &key)?;
    // A local repository inside a source is never backed up into itself.
    let local_root = cairn::repository::Location::parse(&context.location()).path().map(|p| p.to_path_buf());
    let repo_root: Vec<PathBuf> =
        local_root.iter().map(|root| std::path::absolute(root).unwrap_or_else(|_| root.clone())).collect();
    let options = SnapshotOptions {
        paths: args.paths,
        tags: args.tags,
        source: args.source,
        host: args.host,
        excludes,
        walk,
        skip: repo_root,
        sqlite_paths: args.sqlite,
        raw_sqlite: args.raw_sqlite,
        sqlite_timeout: args.sqlite_timeout,
        min_free: args.min_free,
        opened_root: None,
        symlinked_parents_refused: false,
    };
    let progress = Progress::new("snapshot", context.quiet || context.json);
    let outcome = super::audited(cairn::backup::snapshot(&repo, &options, &progress))?;
    super::warn_damage(&repo);
    super::keep_reserve(&repo);
    let s = &outcome.snapshot;
    let summary = &s.summary;
    if context.json {
        outln!("{}", outcome_json(&outcome));
    } else if !context.quiet {
        outln!(
            "snapshot {} saved: {} ({}), {}, {} ({} read); added {} ({} stored) in {}, {:.1}s",
            outcome.id.short(),
            format::count(summary.files, "file"),
            format::count(outcome.databases, "SQLite database"),
            format::count(summary.dirs, "dir"),
            format::bytes(summary.bytes),
            format::count(summary.files_read, "file"),
            format::bytes(summary.bytes_added),
            format::bytes(summary.stored_bytes_added),
            format::count(outcome.packs_written, "pack"),
            s.duration_ms as f64 / 1000.0,
        );
    }
    if !s.is_complete() {
        errln!(
            "warning: snapshot {} is incomplete: {} could not be read (listed above)",
            outcome.id.short(),
            format::count(s.errors.len() as u64, "entry")
        );
        return Ok(ExitCode::from(EXIT_INCOMPLETE));
    }
    Ok(ExitCode::SUCCESS)
}
