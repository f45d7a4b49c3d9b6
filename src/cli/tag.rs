//! `cairn tag SNAPSHOT... (--add TAG | --remove TAG | --set TAG)... [--dry-run]`: change the tags
//! of existing snapshots, `protected` above all. How a manifest is replaced: `src/tag.rs`.

use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use cairn::repository::lock::LockKind;
use cairn::tag::{plan, retag, Change};

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true).args(["add", "remove", "set"]))]
pub struct Args {
    /// Snapshots by id, unique id prefix, or `latest`
    #[arg(required = true)]
    snapshots: Vec<String>,
    /// Only consider snapshots of this source when resolving `latest` or a prefix
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Add this tag (repeatable); `protected` keeps a snapshot from every policy and from
    /// `forget ID` without --force
    #[arg(long, value_name = "TAG", value_parser = cairn::names::label)]
    add: Vec<String>,
    /// Remove this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    remove: Vec<String>,
    /// Replace all tags by these (repeatable)
    #[arg(long, value_name = "TAG", conflicts_with_all = ["add", "remove"], value_parser = cairn::names::label)]
    set: Vec<String>,
    /// Print what would change, and change nothing
    #[arg(long)]
    dry_run: bool,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let change = Change { add: args.add, remove: args.remove, set: (!args.set.is_empty()).then_some(args.set) };
    change.check()?;
    let repo = context.open()?;
    // Shared, like forget: a prune must not run while a snapshot's manifest is being replaced.
    let _lock = repo.lock(LockKind::Shared, "tag", context.lock_wait)?;
    let mut named = Vec::new();
    for spec in &args.snapshots {
        named.push(repo.find_snapshot_of(spec, args.source.as_deref())?.0);
    }
    let mut planned = plan(&repo.snapshots()?, &named, &change);
    super::warn_damage(&repo);
    if !args.dry_run {
        super::audited(retag(&repo, &mut planned))?;
    }
    if context.json {
        outln!("{}", serde_json::json!({ "dry_run": args.dry_run, "snapshots": planned }));
    } else if !context.quiet {
        for retag in &planned {
            let tags = format!("[{}]", retag.tags_after.join(", "));
            let merged = match retag.copies.len() {
                1 => String::new(),
                n => format!(" ({n} copies merged)"),
            };
            match (&retag.new_id, retag.changed) {
                (_, false) => outln!("unchanged  {}  {tags}", &retag.id[..8]),
                (Some(new), true) => outln!("tagged     {} -> {}  {tags}{merged}", &retag.id[..8], &new[..8]),
                (None, true) => outln!("would tag  {}  {tags}{merged}", &retag.id[..8]),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
