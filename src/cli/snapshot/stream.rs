//! `cairn snapshot --stdin-from-command COMMAND | --stdin [--stdin-filename NAME]`: a stream
//! backed up as one file ([`cairn::backup::stream`]), such as a database dump. The command runs
//! with `sh -c`, its standard error passed on; one that does not exit with status 0 fails the
//! snapshot and leaves none.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::super::{format, Context};
use super::Args;
use cairn::backup::stream::{check_filename, Origin, StreamOptions};
use cairn::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct StreamArgs {
    /// Back up standard input as one file (named by --stdin-filename)
    #[arg(long, conflicts_with_all = ["paths", "sqlite", "stdin_from_command"])]
    stdin: bool,
    /// Back up what this shell command (`sh -c`) prints as one file, a database dump say: a
    /// command that exits non-zero or is killed stores no snapshot
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["paths", "sqlite"])]
    stdin_from_command: Option<String>,
    /// The file's name in the snapshot, with --stdin or --stdin-from-command [default: stdin]
    #[arg(long, value_name = "NAME")]
    stdin_filename: Option<String>,
    /// The directory the command runs in (`cairn run` gives the config's, as for hooks)
    #[arg(long, value_name = "DIR", hide = true, requires = "stdin_from_command")]
    stdin_command_dir: Option<PathBuf>,
}

impl StreamArgs {
    /// Whether a stream flag was given: the command is then this module's.
    pub fn wanted(&self) -> bool {
        self.stdin || self.stdin_from_command.is_some() || self.stdin_filename.is_some()
    }
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let stream = args.stream;
    if !stream.stdin && stream.stdin_from_command.is_none() {
        bail!("--stdin-filename names the file of --stdin or --stdin-from-command: give one of them");
    }
    if !args.excludes.is_empty() || args.raw_sqlite || args.walk.any() {
        bail!("--exclude, --exclude-*, --one-file-system and --raw-sqlite choose files of a tree: a stream has none");
    }
    let options = StreamOptions {
        filename: stream.stdin_filename.unwrap_or_else(|| "stdin".into()),
        origin: if stream.stdin { Origin::Stdin } else { Origin::Command },
        tags: args.tags,
        source: args.source,
        host: args.host,
        min_free: args.min_free,
    };
    // Mistakes of the command line store nothing and touch no repository.
    check_filename(&options.filename)?;
    if stream.stdin && std::io::stdin().is_terminal() {
        bail!("--stdin reads standard input, which is a terminal: pipe the data in (`pg_dump db | cairn snapshot --stdin --stdin-filename db.sql`), or use --stdin-from-command");
    }
    let key = options.source_key();
    let (repo, _lock) = super::open_locked(context, options.min_free, &key)?;
    let progress = Progress::new("snapshot", context.quiet || context.json);
    let audited = match &stream.stdin_from_command {
        Some(line) => {
            let mut command = std::process::Command::new("sh");
            command.args(["-c", line]);
            // The command is given what it needs, not the repository's password.
            super::super::password::withhold_from(&mut command);
            if !options.source.is_empty() {
                command.env("CAIRN_SOURCE", &options.source);
            }
            if let Some(dir) = &stream.stdin_command_dir {
                command.current_dir(dir);
            }
            cairn::backup::stream::snapshot_command(&repo, &options, command, &progress)
        }
        None => cairn::backup::stream::snapshot_reader(&repo, &options, &mut std::io::stdin().lock(), &progress),
    };
    let outcome = super::super::audited(audited)?;
    super::super::warn_damage(&repo);
    super::super::keep_reserve(&repo);
    let s = &outcome.snapshot;
    if context.json {
        outln!("{}", super::outcome_json(&outcome));
    } else if !context.quiet {
        outln!(
            "snapshot {} saved: {} as {}; added {} ({} stored) in {}, {:.1}s",
            outcome.id.short(),
            format::bytes(s.summary.bytes),
            options.filename,
            format::bytes(s.summary.bytes_added),
            format::bytes(s.summary.stored_bytes_added),
            format::count(outcome.packs_written, "pack"),
            s.duration_ms as f64 / 1000.0,
        );
    }
    Ok(ExitCode::SUCCESS)
}
