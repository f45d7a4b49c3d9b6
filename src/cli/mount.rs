//! `cairn mount DIR`: the repository's snapshots as a read-only file system at DIR
//! ([`cairn::mount`]), in the foreground until Ctrl-C, SIGTERM or `fusermount -u DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering::SeqCst;

use anyhow::Result;

use super::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An empty directory to mount on
    dir: PathBuf,
    /// Let other users enter the mount too; the kernel checks each entry's recorded permissions
    /// (a user other than root needs user_allow_other in /etc/fuse.conf)
    #[arg(long)]
    allow_other: bool,
    // Last: the heading it sets ("Which snapshots") would also cover the flags after it.
    #[command(flatten)]
    filters: super::filter::FilterArgs,
}

struct Events {
    quiet: bool,
}

impl cairn::mount::Events for Events {
    fn mounted(&self, at: &Path) {
        if !self.quiet {
            errln!(
                "mounted the repository at {0} (snapshots/, sources/, ids/): Ctrl-C or `fusermount -u {0}` unmounts it",
                at.display()
            );
        }
    }

    fn warn(&self, message: &str) {
        errln!("warning: {message}");
    }

    fn stop(&self) -> bool {
        super::signals::CANCEL.load(SeqCst)
    }

    fn busy(&self, at: &Path) {
        errln!(
            "{} is still in use (a shell's working directory, an open file): detached from the directory tree; it ends \
             once they close it (a second Ctrl-C ends it now)",
            at.display()
        );
    }
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    super::warn_damage(&repo);
    // A signal asks the mount to unmount and end, rather than ending the process under it.
    super::signals::cancel_instead();
    let options = cairn::mount::Options { filter: args.filters.filter(), allow_other: args.allow_other };
    let events = Events { quiet: context.quiet || context.json };
    cairn::mount::serve(&repo, &args.dir, &options, &events)?;
    if !events.quiet {
        errln!("unmounted {}", args.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
