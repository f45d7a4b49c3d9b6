//! `cairn snapshots [FILTERS]`: list snapshots, oldest first: those the filters select.

use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    filters: super::filter::FilterArgs,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let all = repo.snapshots()?;
    let total = all.len();
    let filter = args.filters.filter();
    let snapshots = filter.apply(all);
    let code = if super::warn_damage(&repo) { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    if context.json {
        let list: Vec<_> = snapshots
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id.to_hex(),
                    "short_id": id.short(),
                    "time": s.time_sec,
                    "time_nsec": s.time_nsec,
                    "time_utc": format::utc(s.time_sec),
                    "hostname": s.hostname,
                    "username": s.username,
                    "source": s.source,
                    "paths": s.paths.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(),
                    "tags": s.tags,
                    "tree": s.tree.to_hex(),
                    "parent": s.parent.map(|p| p.to_hex()),
                    "complete": s.is_complete(),
                    "errors": s.errors,
                    "summary": s.summary,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list));
        return Ok(code);
    }
    if context.quiet {
        snapshots.iter().for_each(|(id, _)| outln!("{id}"));
        return Ok(code);
    }
    outln!(
        "{:<8}  {:<19}  {:<12}  {:<10}  {:>9}  {:>10}  {:<10}  paths",
        "id",
        "time (UTC)",
        "host",
        "source",
        "files",
        "size",
        "status"
    );
    for (id, s) in &snapshots {
        let paths: Vec<_> = s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        let mut status = if s.is_complete() { "ok".to_string() } else { format!("incomplete({})", s.errors.len()) };
        if !s.tags.is_empty() {
            status = format!("{status} [{}]", s.tags.join(","));
        }
        outln!(
            "{:<8}  {:<19}  {:<12}  {:<10}  {:>9}  {:>10}  {:<10}  {}",
            id.short(),
            format::utc(s.time_sec),
            s.hostname,
            s.source,
            s.summary.files,
            format::bytes(s.summary.bytes),
            status,
            paths.join(" ")
        );
    }
    let count = if filter.is_set() {
        let at = filter.at.iter().map(|at| format!("--at {:?}", at.text));
        let flags: Vec<String> = [filter.describe()].into_iter().filter(|d| !d.is_empty()).chain(at).collect();
        format!("{} of {total} snapshots match {}", snapshots.len(), flags.join(" "))
    } else {
        format!("{total} snapshots")
    };
    outln!("{count}; {}", encryption_text(&repo));
    Ok(code)
}

/// How the repository is protected, in words for listings.
pub fn encryption_text(repo: &cairn::repository::Repository) -> &'static str {
    if repo.keys().is_some() {
        "encrypted (AES-256-GCM)"
    } else {
        "NOT ENCRYPTED (created with --encryption none or without a password)"
    }
}
