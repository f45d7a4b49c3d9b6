//! The `cairn` binary: parse arguments, run the command, turn the outcome into an exit code
//! (0 success, 1 failure, 3 snapshot stored but incomplete).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // glibc raises its mmap threshold to the largest block ever freed, after which freed read
    // windows and packs stay in the heap instead of going back to the system: a fixed threshold
    // keeps peak memory at what is really in use (measured: 124 -> 60 MiB on a 2 GiB file).
    // Fixing it also leaves the trim threshold at 128 KiB, so every freed blob buffer was handed
    // back and faulted in again: keeping up to 4 MiB free at a heap's top halves the page faults
    // of a check --read-data (280k -> 130k, 0.98 -> 0.89 s) for 4 MiB more memory.
    // A snapshot's walk keeps a directory open per level it is inside, up to 1024 in a branching
    // tree (MAX_DEPTH, src/source/archiver.rs): the soft limit on open files, often 1024, is
    // raised to the hard one, which any process may do.
    // SAFETY: mallopt only tunes the allocator; called before any thread starts. getrlimit and
    // setrlimit read and write a valid struct.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        let mut files = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 && files.rlim_cur < files.rlim_max {
            files.rlim_cur = files.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &files);
        }
    }
    // Before any thread starts: every thread inherits the blocked signals.
    cli::signals::install();
    let args = <cli::Cli as clap::Parser>::parse();
    let outcome = cli::run(args);
    // Output that could not be written fails a command that otherwise succeeded.
    let outcome = match (outcome, cli::output::failure()) {
        (Ok(_), Some(e)) => Err(anyhow::Error::new(e).context("writing to standard output")),
        (outcome, _) => outcome,
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            cli::output::error_line(format_args!("error: {}", message(&error)));
            if full_disk(&error) {
                cli::output::error_line(format_args!(
                    "hint: the file system is full: free some space on it and run the command again (nothing \
                     half-written was kept). On a repository's disk, `cairn forget --keep-... --prune` frees space, \
                     on the reserve a local repository keeps for this where it has one; without one, forget needs \
                     room for a lock file, and prune for new index files and the packs it repacks before it \
                     deletes old ones"
                ));
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the error, or one of its causes, is a full file system or quota.
fn full_disk(error: &anyhow::Error) -> bool {
    let full = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(full)
            || matches!(cause.downcast_ref::<cairn::error::Error>(), Some(cairn::error::Error::Io { source, .. }) if full(source))
    })
}

/// The error and its causes, joined by `: `, leaving out a cause that its parent's message
/// already ends with (an I/O error shows its path and its cause in one message).
fn message(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
