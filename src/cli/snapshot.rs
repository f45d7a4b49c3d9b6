//! `cairn snapshot PATH...`: back up files and directories.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context, EXIT_INCOMPLETE};
use cairn::backup::{resolve_paths, take_snapshot, SnapshotOptions};
use cairn::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files and directories to back up
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Name what is backed up (for instance the service), used to pick the parent snapshot
    #[arg(long, value_name = "NAME", default_value = "")]
    source: String,
    /// Leave out entries matching a glob: a pattern without `/` matches names at any depth, one
    /// with `/` the absolute path (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    // Check the sources before creating or touching the repository: a typo writes nothing.
    resolve_paths(&args.paths)?;
    let repo = context.open_or_create()?;
    let repo_root = std::path::absolute(&context.repo_path).unwrap_or_else(|_| context.repo_path.clone());
    let options = SnapshotOptions {
        paths: args.paths,
        tags: args.tags,
        source: args.source,
        excludes: args.excludes,
        skip: vec![repo_root],
    };
    let progress = Progress::new("snapshot", context.quiet || context.json);
    let outcome = take_snapshot(&repo, &options, &progress)?;
    super::warn_damage(&repo);
    let s = &outcome.snapshot;
    let summary = &s.summary;
    if context.json {
        let json = serde_json::json!({
            "id": outcome.id.to_hex(),
            "short_id": outcome.id.short(),
            "complete": s.is_complete(),
            "errors": s.errors,
            "summary": summary,
            "packs_written": outcome.packs_written,
            "duration_ms": s.duration_ms,
        });
        println!("{json}");
    } else if !context.quiet {
        println!(
            "snapshot {} saved: {} files, {} dirs, {} ({} files read); added {} ({} stored) in {} packs, {:.1}s",
            outcome.id.short(),
            summary.files,
            summary.dirs,
            format::bytes(summary.bytes),
            summary.files_read,
            format::bytes(summary.bytes_added),
            format::bytes(summary.stored_bytes_added),
            outcome.packs_written,
            s.duration_ms as f64 / 1000.0,
        );
    }
    if !s.is_complete() {
        eprintln!(
            "warning: snapshot {} is incomplete: {} entries could not be read (listed above)",
            outcome.id.short(),
            s.errors.len()
        );
        return Ok(ExitCode::from(EXIT_INCOMPLETE));
    }
    Ok(ExitCode::SUCCESS)
}
