//! `cairn restore SNAPSHOT --target DIR [--include PATH]...`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::progress::Progress;
use cairn::restore::{restore, RestoreOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id, unique id prefix, or `latest` (the newest the filters select)
    snapshot: String,
    #[command(flatten)]
    filters: super::filter::FilterArgs,
    /// Directory to restore into (created if missing)
    #[arg(long, short, value_name = "DIR")]
    target: PathBuf,
    /// Restore only this path inside the snapshot (repeatable)
    #[arg(long = "include", value_name = "PATH")]
    includes: Vec<String>,
    /// Keep existing files whose content already matches the snapshot; write only what differs
    #[arg(long)]
    skip_identical: bool,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let _lock = super::read_lock(&repo, "restore", context.lock_wait)?;
    let (id, snapshot) = super::filter::find(&repo, &args.snapshot, &args.filters)?;
    let index = repo.load_index()?;
    super::warn_damage(&repo);
    let progress = Progress::new("restore", context.quiet || context.json);
    let options = RestoreOptions {
        target: args.target.clone(),
        includes: args.includes,
        skip_identical: args.skip_identical,
        ..Default::default()
    };
    let summary = restore(&repo, &index, &id, &snapshot, &options, &progress)?;
    if context.json {
        outln!("{}", serde_json::json!({ "snapshot": id.to_hex(), "target": args.target, "summary": summary }));
    } else if !context.quiet {
        outln!(
            "restored snapshot {} to {}: {} files ({} already identical), {} dirs, {} written{}",
            id.short(),
            args.target.display(),
            summary.files,
            summary.files_unchanged,
            summary.dirs,
            format::bytes(summary.bytes),
            if summary.errors.is_empty() { String::new() } else { format!(", {} errors", summary.errors.len()) }
        );
    }
    if !summary.errors.is_empty() {
        errln!("error: {} entries could not be restored (listed above)", summary.errors.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
