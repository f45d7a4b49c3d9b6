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
        let list: Vec<_> = snapshots.iter().map(|(id, s)| manifest(id, s)).collect();
        outln!("{}", serde_json::Value::Array(list));
        return Ok(code);
    }
    if context.quiet {
        snapshots.iter().for_each(|(id, _)| outln!("{id}"));
        return Ok(code);
    }
    // Each column as wide as its widest cell, so long host names, tags and `incomplete(N)`
    // never push the columns after them out of line; paths come last and run on.
    let header = ["id", "time (UTC)", "host", "source", "files", "size", "status", "tags", "paths"];
    let rows: Vec<[String; 9]> = snapshots
        .iter()
        .map(|(id, s)| {
            let status = if s.is_complete() { "ok".to_string() } else { format!("incomplete({})", s.errors.len()) };
            let paths: Vec<_> = s.paths.iter().map(|p| cairn::names::shown(p).into_owned()).collect();
            [
                id.short(),
                format::utc(s.time_sec),
                // Manifests may come from another host: its names pass one escaping rule.
                cairn::names::shown(s.hostname.as_bytes()).into_owned(),
                cairn::names::shown(s.source.as_bytes()).into_owned(),
                s.summary.files.to_string(),
                format::bytes(s.summary.bytes),
                status,
                cairn::names::shown(s.tags.join(",").as_bytes()).into_owned(),
                paths.join(" "),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 9]| {
        let mut out = String::new();
        for (n, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = width.saturating_sub(cell.chars().count());
            match n {
                8 => out.push_str(cell),
                // Counts and sizes are right-aligned.
                4 | 5 => out.push_str(&format!("{}{cell}  ", " ".repeat(pad))),
                _ => out.push_str(&format!("{cell}{}  ", " ".repeat(pad))),
            }
        }
        out.trim_end().to_string()
    };
    outln!("{}", line(header));
    for row in &rows {
        outln!("{}", line(row.each_ref().map(String::as_str)));
    }
    let count = if filter.is_set() {
        let at = filter.at.iter().map(|at| format!("--at {:?}", at.text));
        let flags: Vec<String> = [filter.describe()].into_iter().filter(|d| !d.is_empty()).chain(at).collect();
        let total = super::format::count(total as u64, "snapshot");
        format!("{} of {total} match {}", snapshots.len(), flags.join(" "))
    } else {
        super::format::count(total as u64, "snapshot")
    };
    outln!("{count}; {}", encryption_text(&repo));
    Ok(code)
}

/// A snapshot's manifest as `--json` lists it (and `cairn serve` answers it).
pub fn manifest(id: &cairn::id::Id, s: &cairn::format::snapshot::Snapshot) -> serde_json::Value {
    let mut json = serde_json::json!({
        "id": id.to_hex(),
        "short_id": id.short(),
        "time": s.time_sec,
        "time_nsec": s.time_nsec,
        "time_utc": format::utc(s.time_sec),
        "hostname": s.hostname,
        "username": s.username,
        "source": s.source,
        "paths": s.paths.iter().map(|p| cairn::names::json(p).0).collect::<Vec<_>>(),
        "tags": s.tags,
        "tree": s.tree.to_hex(),
        "parent": s.parent.map(|p| p.to_hex()),
        "complete": s.is_complete(),
        "errors": s.errors,
        "summary": s.summary,
    });
    // The bytes of paths that are not UTF-8, in base64 where they are (null where not).
    let raw: Vec<Option<String>> = s.paths.iter().map(|p| cairn::names::json(p).1).collect();
    if raw.iter().any(Option::is_some) {
        json["paths_raw"] = raw.into();
    }
    json
}

/// How the repository is protected, in words for listings.
pub fn encryption_text(repo: &cairn::repository::Repository) -> &'static str {
    if repo.keys().is_some() {
        "encrypted (AES-256-GCM)"
    } else {
        "NOT ENCRYPTED (created with --encryption none or without a password)"
    }
}
