//! `cairn find PATTERN [--source NAME] [FILTERS]`: which snapshots hold matching paths, newest
//! first ([`cairn::find`]).

use std::ffi::OsString;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A name (`*.db`, `settings.json`: at any depth) or a path from the snapshot's root
    /// (`/config/*.toml`, `/data/**/x?`); `*` within a name, `**` across, `?` one character.
    /// Names are matched as the bytes they are: a name that is not UTF-8 is given as it is
    pattern: OsString,
    // Last: the heading it sets ("Which snapshots") would also cover the flags after it.
    #[command(flatten)]
    filters: super::filter::FilterArgs,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let indexed = cairn::repository::Indexed::load(&repo)?;
    let mut snapshots = args.filters.filter().apply(repo.snapshots()?);
    super::warn_damage(&repo);
    snapshots.reverse(); // newest first
    let mut results = Vec::new();
    let mut matched = 0usize;
    cairn::find::find(&indexed, &snapshots, args.pattern.as_bytes(), |id, snapshot, found| {
        matched += 1;
        if context.json {
            results.push(serde_json::json!({
                "snapshot": id.to_hex(),
                "time": snapshot.time_sec,
                "time_utc": format::utc(snapshot.time_sec),
                "source": snapshot.source_key(),
                "hostname": snapshot.hostname,
                "matches": found,
            }));
            return ControlFlow::Continue(());
        }
        if super::output::closed() {
            return ControlFlow::Break(()); // nobody reads the rest
        }
        let source = snapshot.source_key();
        let source = cairn::names::shown(source.as_bytes());
        outln!("snapshot {} of {source} at {}:", id.short(), format::utc(snapshot.time_sec));
        for entry in found {
            outln!(
                "  {:>10}  {}  {}{}",
                format::bytes(entry.size),
                format::utc(entry.mtime),
                cairn::names::shown(&entry.path),
                if entry.kind == "dir" { "/" } else { "" }
            );
        }
        ControlFlow::Continue(())
    })?;
    if context.json {
        outln!("{}", serde_json::Value::Array(results));
    } else if !context.quiet {
        outln!(
            "{} of {} hold a match for \"{}\"",
            format::count(matched as u64, "snapshot"),
            snapshots.len(),
            cairn::names::shown(args.pattern.as_bytes())
        );
    }
    Ok(ExitCode::SUCCESS)
}
