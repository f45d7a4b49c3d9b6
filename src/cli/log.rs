//! `cairn log`: the audit log, oldest first, filtered by source, command, outcome and time.
//! Runs that were killed (a start record nothing answers, of a process that is gone) show as
//! failed, as `cairn status` counts them; answered start records are not shown.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::{format, Context};
use cairn::clock::parse_duration;
use cairn::format::audit::{AuditRecord, Outcome};
use cairn::select::At;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only records of this source (its name, or its paths as `cairn snapshots` shows them)
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Only records of this command: snapshot, check, drill, sync, prune, restore, run, hook, ...
    #[arg(long, value_name = "COMMAND")]
    command: Option<String>,
    /// Only runs that ended this way: ok, incomplete or failed
    #[arg(long, value_name = "OUTCOME", value_parser = parse_outcome)]
    outcome: Option<Outcome>,
    /// Only runs that ended within this long before now (7d, 12h)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only runs that ended at or before TIME (RFC 3339, or `2026-12-04 10:00` in UTC)
    #[arg(long, value_name = "TIME", value_parser = At::parse)]
    until: Option<At>,
    /// At most this many records, the newest
    #[arg(long, value_name = "N")]
    last: Option<usize>,
}

fn parse_outcome(text: &str) -> std::result::Result<Outcome, String> {
    serde_json::from_value(serde_json::json!(text)).map_err(|_| format!("{text:?}: give ok, incomplete or failed"))
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let mut repo = context.open()?;
    context.cache_for(&mut repo);
    let now = super::status::now_ms()?;
    let records = cairn::audit::read_all(&repo)?;
    let (records, _) = cairn::status::with_killed_runs(&repo, records, now);
    let mut shown: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.command != cairn::audit::START)
        .filter(|r| args.source.as_ref().map_or(true, |s| &r.source == s))
        .filter(|r| args.command.as_ref().map_or(true, |c| &r.command == c))
        .filter(|r| args.outcome.map_or(true, |o| r.outcome == o))
        .filter(|r| args.since.map_or(true, |d| r.ended_ms >= now - d.as_millis() as i64))
        .filter(|r| args.until.as_ref().map_or(true, |at| r.ended_ms.div_euclid(1000) <= at.sec))
        .collect();
    if let Some(last) = args.last {
        shown.drain(..shown.len().saturating_sub(last));
    }
    super::warn_damage(&repo);
    if context.json {
        outln!("{}", serde_json::to_string(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    for record in shown {
        let outcome = match record.outcome {
            Outcome::Ok => "ok",
            Outcome::Incomplete => "INCOMPLETE",
            Outcome::Failed => "FAILED",
        };
        let what = match (&record.snapshot, record.errors.first()) {
            (_, Some(error)) => error.clone(),
            (Some(id), None) => format!("snapshot {}", &id[..id.len().min(8)]),
            (None, None) => String::new(),
        };
        let target = ["to", "received_from", "repository", "target"].iter().find_map(|k| record.details[*k].as_str());
        let source = match (record.source.as_str(), target) {
            ("", Some(target)) => target.to_string(),
            (source, Some(target)) => format!("{source} -> {target}"),
            (source, None) => source.to_string(),
        };
        // Messages quote names from backed-up trees and records may come from another host: a
        // newline or an escape sequence in them must not forge a line or drive the terminal.
        let shown = |text: &str| cairn::names::shown(text.as_bytes()).into_owned();
        outln!(
            "{}  {:<8} {:<10} {:<24} {:>7}  {}",
            format::utc(record.ended_ms.div_euclid(1000)),
            shown(&record.command),
            outcome,
            if source.is_empty() { "-".to_string() } else { shown(&source) },
            format!("{:.1}s", (record.ended_ms - record.started_ms) as f64 / 1000.0),
            shown(&what)
        );
    }
    Ok(ExitCode::SUCCESS)
}
