//! `cairn dump SNAPSHOT PATH`: a file of a snapshot to standard output, chunk by chunk, each
//! verified as it is read; memory holds one chunk at a time, whatever the file's size.

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::Context;
use cairn::format::tree::Content;
use cairn::restore::locate;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id, unique id prefix, or `latest` (of the filters)
    snapshot: String,
    /// The file inside the snapshot, as `cairn ls` shows it
    path: String,
    // Last: the heading it sets ("Which snapshots") would also cover the flags after it.
    #[command(flatten)]
    filters: super::filter::FilterArgs,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let ((id, snapshot), indexed) = super::find_with_index(&repo, &args.snapshot, &args.filters)?;
    super::warn_damage(&repo);
    let (_, node) = locate(&indexed, &snapshot, &args.path, &id.short())?;
    let Some(node) = node else { bail!("{} is the snapshot's root, a directory: give a file in it", args.path) };
    let Content::File { chunks } = &node.content else {
        bail!("{} in snapshot {} is a {}, not a file", args.path, id.short(), node.content.type_name());
    };
    let mut written = 0u64;
    for chunk in chunks {
        if super::output::closed() {
            return Ok(ExitCode::SUCCESS); // nobody reads the rest
        }
        let bytes = indexed.read_blob(chunk)?;
        written += bytes.len() as u64;
        super::output::bytes(&bytes);
    }
    if written != node.meta.size {
        bail!(
            "{} holds {written} bytes, not the {} its entry says: the snapshot is damaged",
            args.path,
            node.meta.size
        );
    }
    Ok(ExitCode::SUCCESS)
}
