//! `cairn dump SNAPSHOT PATH [--archive tar]`: a file of a snapshot to standard output, chunk by
//! chunk, each verified as it is read; memory holds one chunk at a time, whatever the file's
//! size. With `--archive tar`, a directory (or `/`, the whole snapshot) as a tar stream
//! ([`cairn::export`]): the portable export, which any `tar` reads.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::Context;
use cairn::format::tree::{Content, Node};
use cairn::restore::locate;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id, unique id prefix, or `latest` (of the filters)
    snapshot: String,
    /// The file inside the snapshot, as `cairn ls` shows it (a directory, or `/`, with --archive)
    path: OsString,
    /// Write PATH and everything below it as an archive of this format (`tar`: POSIX pax)
    #[arg(long, value_name = "FORMAT", value_parser = ["tar"])]
    archive: Option<String>,
    // Last: the heading it sets ("Which snapshots") would also cover the flags after it.
    #[command(flatten)]
    filters: super::filter::FilterArgs,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let ((id, snapshot), indexed) = super::find_with_index(&repo, &args.snapshot, &args.filters)?;
    super::warn_damage(&repo);
    let located = locate(&indexed, &snapshot, args.path.as_bytes(), &id.short())?;
    let (inside, node) = (located.inside, located.node);
    let path = cairn::names::shown(&located.meant);
    if args.archive.is_some() {
        let (root, prefix) = match &node {
            None => (snapshot.tree, Vec::new()),
            Some(Node { content: Content::Dir { subtree }, .. }) => (*subtree, inside),
            Some(other) => bail!("{path} is a {}: --archive takes a directory", other.content.type_name()),
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        let exported = match cairn::export::tar(&indexed, &root, &prefix, &mut out) {
            Ok(exported) => exported,
            // Nobody reads the rest (`| head`): quietly, as the listings end.
            Err(cairn::error::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(ExitCode::SUCCESS)
            }
            Err(e) => return Err(e.into()),
        };
        if exported.sockets_skipped > 0 {
            errln!(
                "note: {} left out: a tar archive cannot hold sockets",
                super::format::count(exported.sockets_skipped, "socket")
            );
        }
        if exported.xattrs_skipped > 0 {
            errln!(
                "note: {} left out: a tar record cannot name an attribute holding `=` or a newline",
                super::format::count(exported.xattrs_skipped, "extended attribute")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(node) = node else { bail!("{path} is the snapshot's root, a directory: give a file in it") };
    let Content::File { chunks } = &node.content else {
        bail!("{path} in snapshot {} is a {}, not a file", id.short(), node.content.type_name());
    };
    let mut written = 0u64;
    for chunk in indexed.chunk_list(chunks)?.iter() {
        if super::output::closed() {
            return Ok(ExitCode::SUCCESS); // nobody reads the rest
        }
        let bytes = indexed.read_blob(chunk)?;
        written += bytes.len() as u64;
        super::output::bytes(&bytes);
    }
    if written != node.meta.size {
        bail!("{} holds {written} bytes, not the {} its entry says: the snapshot is damaged", path, node.meta.size);
    }
    Ok(ExitCode::SUCCESS)
}
