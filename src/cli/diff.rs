//! `cairn diff A B`: what changed from snapshot A to snapshot B ([`cairn::diff`]).

use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::diff::{Change, Entry};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The snapshot before: an id, a unique id prefix, or `latest` (of the filters)
    old: String,
    /// The snapshot after
    new: String,
    // Last: the heading it sets ("Which snapshots") would also cover the flags after it.
    #[command(flatten)]
    filters: super::filter::FilterArgs,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let ((old_id, old), indexed) = super::find_with_index(&repo, &args.old, &args.filters)?;
    let (new_id, new) = super::filter::find(&repo, &args.new, &args.filters)?;
    super::warn_damage(&repo);
    let mut changes: Vec<Entry> = Vec::new();
    let summary = cairn::diff::diff(&indexed, &old.tree, &new.tree, |entry| {
        if context.json {
            changes.push(entry.clone());
        } else if !context.quiet {
            if super::output::closed() {
                return ControlFlow::Break(()); // nobody reads the rest
            }
            outln!("{}", line(entry));
        }
        ControlFlow::Continue(())
    })?;
    if context.json {
        let json = serde_json::json!({
            "old": old_id.to_hex(),
            "new": new_id.to_hex(),
            "changes": changes,
            "summary": summary,
        });
        outln!("{json}");
    } else if !context.quiet {
        outln!(
            "{} -> {}: {} added, {} removed, {} modified, {} changed type, {} metadata only; {} added, {} removed",
            old_id.short(),
            new_id.short(),
            summary.added,
            summary.removed,
            summary.modified,
            summary.type_changed,
            summary.metadata_changed,
            format::bytes(summary.bytes_added),
            format::bytes(summary.bytes_removed),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `+ /path (12 KiB)`, as restic marks them: `+` added, `-` removed, `M` modified, `T` type
/// changed, `U` metadata only.
fn line(entry: &Entry) -> String {
    let mark = match entry.change {
        Change::Added => "+",
        Change::Removed => "-",
        Change::Modified => "M",
        Change::Type => "T",
        Change::Metadata => "U",
    };
    let dir = if entry.kind == "dir" { "/" } else { "" };
    let size = match (entry.change, entry.size_before, entry.size_after) {
        (Change::Removed, Some(size), _) | (Change::Added, _, Some(size)) if entry.kind == "file" => {
            format!(" ({})", format::bytes(size))
        }
        (Change::Modified, Some(before), Some(after)) if entry.kind == "file" => {
            format!(" ({} -> {})", format::bytes(before), format::bytes(after))
        }
        _ => String::new(),
    };
    format!("{mark}    {}{dir}{size}", cairn::names::shown(&entry.path))
}
