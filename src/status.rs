//! `cairn status`: per source, the newest snapshot and its age, the last successful drill and its
//! age, and the last failure, read from the snapshots and the audit log. Thresholds turn staleness
//! into problems, so a monitor or cron job can alert on the exit code or the Prometheus file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::audit;
use crate::error::Result;
use crate::format::audit::{AuditRecord, Outcome};
use crate::repository::Repository;

#[derive(Debug, Default, Serialize)]
pub struct SourceStatus {
    pub source: String,
    /// No longer judged: not in the config that status was given, or retired by hand
    /// (`cairn status --retire`) and not snapshotted since.
    pub retired: bool,
    pub snapshots: u64,
    pub latest_snapshot: Option<Event>,
    pub last_drill_ok: Option<Event>,
    pub last_failure: Option<Failure>,
    /// Per offsite destination, the newest of this source's snapshots there, as the syncs into it
    /// recorded.
    pub offsite: Vec<OffsiteCopy>,
    /// The newest run of each command for this source: how it ended, and when.
    pub last_runs: Vec<LastRun>,
    /// Its share of the repository's stored bytes and what that costs a month, from the
    /// newest `stats` record (`cairn run` writes one each cycle).
    pub stored_bytes: Option<u64>,
    pub monthly_cost: Option<f64>,
    /// Why this source is not healthy; empty when it is.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub snapshot: Option<String>,
    /// Unix milliseconds.
    pub time_ms: i64,
    pub age_seconds: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub command: String,
    pub outcome: Outcome,
    pub time_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OffsiteCopy {
    pub to: String,
    pub snapshot: String,
    /// The snapshot's time, Unix milliseconds.
    pub time_ms: i64,
    pub age_seconds: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub command: String,
    pub time_ms: i64,
    pub age_seconds: i64,
    pub error: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Status {
    pub sources: Vec<SourceStatus>,
    /// The newest `check`, if any, and whether it passed.
    pub last_check: Option<Event>,
    pub last_check_ok: Option<bool>,
    /// Per sync destination, the newest sync and the newest complete one.
    pub offsite: Vec<OffsiteStatus>,
    /// Per repository that synced into this one, the newest sync received.
    pub received: Vec<OffsiteStatus>,
    /// Runs of this host still going (a start record answered by no record, of a live process).
    pub running: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OffsiteStatus {
    pub to: String,
    /// Not in the config that status was given, or retired by hand: listed, not judged.
    pub retired: bool,
    pub last_sync: Event,
    pub last_outcome: Outcome,
    /// The first error of the newest sync, when it did not succeed.
    pub last_error: Option<String>,
    pub last_ok: Option<Event>,
}

impl Status {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty() && self.sources.iter().all(|s| s.problems.is_empty())
    }
}

#[derive(Default)]
pub struct Thresholds {
    pub max_age: Option<Duration>,
    pub max_drill_age: Option<Duration>,
    /// A source whose newest copy in an offsite destination is older than this (or that has none
    /// there) is a problem.
    pub max_offsite_age: Option<Duration>,
}

impl Thresholds {
    /// What a `cairn run` config's schedule implies, for `status --config` (whose flags beat it)
    /// and `cairn serve` alike: with `[serve] run_every`, a newest snapshot (or offsite copy)
    /// older than two cycles is a problem, one missed cycle being allowed; with `[drill] every`,
    /// a last good drill older than that and two cycles more (a drill runs in the first cycle
    /// after it is due; a day per cycle without `run_every`).
    pub fn of_config(config: &crate::run_config::Config) -> Thresholds {
        let cycle = config.serve.run_every;
        let offsite = !config.offsite.is_empty();
        Thresholds {
            // Saturating: a config may give any duration, however absurd.
            max_age: cycle.map(|every| every.saturating_mul(2)),
            max_drill_age: (config.drill.as_ref()).map(|drill| {
                drill.every.saturating_add(cycle.unwrap_or(Duration::from_secs(86_400)).saturating_mul(2))
            }),
            max_offsite_age: cycle.filter(|_| offsite).map(|every| every.saturating_mul(2)),
        }
    }
}

/// What should exist, from a `cairn run` config: its sources' names and its offsite repositories.
/// With it, status judges exactly these; without, every source and destination it finds, less
/// those retired by hand.
#[derive(Debug, Default)]
pub struct Expected {
    pub sources: Vec<String>,
    pub offsite: Vec<String>,
    /// `[check] read_data_days`: every part `k/N` of the rotation read by a good check within
    /// N days (and one of grace).
    pub read_data_days: Option<u32>,
}

/// How far ahead of now a snapshot or record may be dated before its clock counts as wrong:
/// clocks of hosts that share a repository differ by seconds when synchronized.
const FUTURE_TOLERANCE_MS: i64 = 5 * 60_000;

/// Notes that source or destination `name` was active at `time_ms` (against its retirement).
fn active_at(active: &mut BTreeMap<String, i64>, name: &str, time_ms: i64) {
    let last = active.entry(name.to_string()).or_insert(time_ms);
    *last = (*last).max(time_ms);
}

fn event(snapshot: Option<String>, time_ms: i64, now_ms: i64) -> Event {
    Event { snapshot, time_ms, age_seconds: (now_ms - time_ms) / 1000 }
}

/// A duration in seconds as a short age: `45s`, `12m`, `5h`, `3d`.
pub fn age_text(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn status(repo: &Repository, now_ms: i64, thresholds: &Thresholds, expected: Option<&Expected>) -> Result<Status> {
    let mut snapshots = repo.snapshots()?;
    let records = audit::read_all(repo)?;
    let (mut records, running) = with_killed_runs(repo, records, now_ms);
    // What is dated in the future was written by a clock that ran ahead: it would be the newest
    // of its kind until that time and hide every later failure. It counts as older than all else
    // (stable sorts: in their own order among themselves), and is itself a problem.
    let ahead = |time_ms: i64| time_ms > now_ms + FUTURE_TOLERANCE_MS;
    snapshots.sort_by_key(|(_, s)| !ahead(s.time_sec * 1000));
    records.sort_by_key(|r| !ahead(r.started_ms.max(r.ended_ms)));
    let future_snapshots = snapshots.iter().filter(|(_, s)| ahead(s.time_sec * 1000)).count();
    let future_records = records.iter().filter(|r| ahead(r.started_ms.max(r.ended_ms))).count();
    let mut sources: BTreeMap<String, SourceStatus> = BTreeMap::new();
    // Copies of one snapshot (a `cairn tag` killed between its writes) count once.
    let mut seen = std::collections::HashSet::new();
    // When each source or destination was last active, against when it was retired by hand.
    let mut active: BTreeMap<String, i64> = BTreeMap::new();
    let mut retired_at: BTreeMap<String, i64> = BTreeMap::new();
    // Safety snapshots of in-place restores are no source of their own: no schedule, no drill.
    let mut any_snapshot = false;
    // Each source's snapshots in the order they were committed: (commit time, time, id).
    let mut by_source: BTreeMap<String, Vec<(i64, i64, String)>> = BTreeMap::new();
    for (id, snapshot) in snapshots.iter().filter(|(_, s)| !s.is_safety_snapshot()) {
        any_snapshot = true;
        let key = snapshot.source_key();
        let taken_ms = snapshot.time_sec * 1000 + snapshot.time_nsec as i64 / 1_000_000;
        // When it was committed, about: a sync that started before then did not see it.
        let committed_ms = taken_ms + snapshot.duration_ms as i64;
        by_source.entry(key.clone()).or_default().push((committed_ms, taken_ms, id.to_hex()));
        active_at(&mut active, &key, taken_ms);
        let entry = sources.entry(key.clone()).or_insert_with(|| SourceStatus { source: key, ..Default::default() });
        entry.snapshots += u64::from(seen.insert(snapshot.identity()));
        entry.latest_snapshot = Some(event(Some(id.to_hex()), taken_ms, now_ms));
        if !snapshot.is_complete() {
            entry.problems = vec![format!(
                "newest snapshot {} is incomplete: {} entries unreadable",
                id.short(),
                snapshot.errors.len()
            )];
        } else {
            entry.problems.clear();
        }
    }
    for committed in by_source.values_mut() {
        committed.sort();
    }
    // The newest record of each (source, command) decides whether that command is failing now.
    let mut newest: BTreeMap<(String, String), &AuditRecord> = BTreeMap::new();
    let mut offsite: BTreeMap<String, OffsiteStatus> = BTreeMap::new();
    let mut received: BTreeMap<String, OffsiteStatus> = BTreeMap::new();
    let mut status = Status { running, ..Status::default() };
    if future_snapshots + future_records > 0 {
        status.problems.push(format!(
            "{future_snapshots} snapshots and {future_records} audit records are dated in the future: the clock was \
             wrong when they were written (they count as older than everything else; fix the clock, e.g. with NTP)"
        ));
    }
    // (source, destination) -> the newest snapshot a sync put (or found) there: (time, id).
    let mut copies: BTreeMap<(String, String), (i64, String)> = BTreeMap::new();
    // Each `--read-data-subset` part (and `all`) -> when a good check last read it.
    let mut parts_read: BTreeMap<String, i64> = BTreeMap::new();
    let mut stats: Option<&AuditRecord> = None;
    let mut check_killed = false;
    // Each safety snapshot -> the source whose in-place restore took it: restoring one (the way
    // back) is a restore of that source, and `pre-restore` is no source of its own.
    let protected: BTreeMap<&str, &str> = (records.iter())
        .filter(|r| r.command == "restore" && r.source != crate::format::snapshot::Snapshot::SAFETY)
        .filter_map(|r| Some((r.details["safety_snapshot"].as_str()?, r.source.as_str())))
        .collect();
    for record in &records {
        if record.command == audit::START {
            continue;
        }
        if record.command == audit::STATS {
            stats = Some(record);
            continue;
        }
        if record.command == audit::RETIRE {
            retired_at.insert(record.source.clone(), record.ended_ms);
            continue;
        }
        if record.command == "check" {
            status.last_check = Some(event(None, record.ended_ms, now_ms));
            status.last_check_ok = Some(record.outcome == Outcome::Ok);
            check_killed = record.details["killed"].as_bool() == Some(true);
            if let (Some(part), Outcome::Ok) = (record.details["read_data"].as_str(), record.outcome) {
                parts_read.insert(part.to_string(), record.ended_ms);
            }
            continue;
        }
        if record.command == "sync" {
            // The copy a destination keeps of a sync into it is no offsite copy of its own.
            let (map, name) = match record.details["received_from"].as_str() {
                Some(from) => (&mut received, from.to_string()),
                None => (&mut offsite, record.details["to"].as_str().unwrap_or("?").to_string()),
            };
            let last_ok = map.get(&name).and_then(|o: &OffsiteStatus| o.last_ok.clone());
            let this = event(None, record.ended_ms, now_ms);
            let ok = record.outcome == Outcome::Ok;
            let last_ok = if ok { Some(this.clone()) } else { last_ok };
            let last_error = if ok { None } else { record.errors.first().cloned() };
            let last_outcome = record.outcome;
            if record.details["received_from"].is_null() && record.outcome != Outcome::Failed {
                covered(record, &name, &by_source, &mut copies);
            }
            active_at(&mut active, &name, record.ended_ms);
            map.insert(
                name.clone(),
                OffsiteStatus { to: name, retired: false, last_sync: this, last_outcome, last_error, last_ok },
            );
            continue;
        }
        let source = match record.source == crate::format::snapshot::Snapshot::SAFETY {
            // A rollback whose safety snapshot's restore record is gone (compacted) is judged
            // on its own, of no source.
            true => {
                record.snapshot.as_deref().and_then(|id| protected.get(id)).map_or(String::new(), |s| s.to_string())
            }
            false => record.source.clone(),
        };
        if source.is_empty() {
            // A killed run of no source (a check, a prune, a whole cycle) is a problem until the
            // next run of that command.
            newest.insert((String::new(), record.command.clone()), record);
            continue;
        }
        let entry = sources
            .entry(source.clone())
            .or_insert_with(|| SourceStatus { source: source.clone(), ..Default::default() });
        active_at(&mut active, &source, record.ended_ms);
        if record.outcome == Outcome::Failed {
            entry.last_failure = Some(Failure {
                command: record.command.clone(),
                time_ms: record.ended_ms,
                age_seconds: (now_ms - record.ended_ms) / 1000,
                error: record.errors.first().cloned().unwrap_or_default(),
            });
        }
        if record.command == "drill" && record.outcome == Outcome::Ok {
            entry.last_drill_ok = Some(event(record.snapshot.clone(), record.ended_ms, now_ms));
        }
        newest.insert((source, record.command.clone()), record);
    }
    let retired = |name: &str, configured: Option<&Vec<String>>| match configured {
        Some(names) => !names.iter().any(|n| n == name),
        None => retired_at.get(name).is_some_and(|&at| at >= active.get(name).copied().unwrap_or(i64::MIN)),
    };
    if let Some(expected) = expected {
        for name in &expected.sources {
            sources.entry(name.clone()).or_insert_with(|| SourceStatus { source: name.clone(), ..Default::default() });
        }
    }
    for ((source, command), record) in &newest {
        if let Some(entry) = sources.get_mut(source) {
            entry.last_runs.push(LastRun {
                command: command.clone(),
                outcome: record.outcome,
                time_ms: record.ended_ms,
            });
        }
        if record.outcome != Outcome::Failed {
            continue;
        }
        let error = record.errors.first().map_or(String::new(), |e| format!(": {e}"));
        let problem = format!("last {command} failed {} ago{error}", age_text((now_ms - record.ended_ms) / 1000));
        if source.is_empty() {
            // A failed restore of no source is a rollback (a safety snapshot's restore) that failed.
            let rollback = record.command == "restore";
            if record.details["killed"].as_bool() == Some(true) || failed_outside_its_steps(record) || rollback {
                status.problems.push(problem);
            }
            continue;
        }
        sources.get_mut(source).expect("inserted above").problems.push(problem);
    }
    if let Some(stats) = stats {
        for row in stats.details["sources"].as_array().into_iter().flatten() {
            let Some(entry) = row["source"].as_str().and_then(|name| sources.get_mut(name)) else { continue };
            let bytes = row["attributed_bytes"].as_u64().unwrap_or(0);
            entry.stored_bytes = Some(entry.stored_bytes.unwrap_or(0) + bytes);
            if let Some(cost) = row["monthly_cost"].as_f64() {
                entry.monthly_cost = Some(entry.monthly_cost.unwrap_or(0.0) + cost);
            }
        }
    }
    for entry in sources.values_mut() {
        if retired(&entry.source, expected.map(|e| &e.sources)) {
            entry.retired = true;
            entry.problems.clear();
            continue;
        }
        match (&entry.latest_snapshot, thresholds.max_age) {
            (None, _) => entry.problems.push("never snapshotted".into()),
            (Some(latest), Some(max)) if latest.age_seconds > max.as_secs() as i64 => entry.problems.push(format!(
                "newest snapshot is {} old (more than {})",
                age_text(latest.age_seconds),
                age_text(max.as_secs() as i64)
            )),
            _ => {}
        }
        match (&entry.last_drill_ok, thresholds.max_drill_age) {
            (None, Some(_)) => entry.problems.push("no successful drill".into()),
            (Some(drill), Some(max)) if drill.age_seconds > max.as_secs() as i64 => entry.problems.push(format!(
                "last successful drill is {} old (more than {})",
                age_text(drill.age_seconds),
                age_text(max.as_secs() as i64)
            )),
            _ => {}
        }
    }
    for o in offsite.values_mut() {
        o.retired = retired(&o.to, expected.map(|e| &e.offsite));
    }
    // Offsite coverage: every judged source in every destination that is judged.
    let mut destinations: Vec<String> = offsite.values().filter(|o| !o.retired).map(|o| o.to.clone()).collect();
    if let Some(expected) = expected {
        destinations.retain(|to| expected.offsite.contains(to));
        destinations.extend(expected.offsite.iter().filter(|to| !offsite.contains_key(*to)).cloned());
    }
    for entry in sources.values_mut().filter(|s| !s.retired) {
        for to in &destinations {
            let copy = copies.get(&(entry.source.clone(), to.clone()));
            if let Some((time_ms, id)) = copy {
                let age_seconds = (now_ms - time_ms) / 1000;
                entry.offsite.push(OffsiteCopy {
                    to: to.clone(),
                    snapshot: id.clone(),
                    time_ms: *time_ms,
                    age_seconds,
                });
            }
            match (copy, thresholds.max_offsite_age) {
                (None, Some(_)) if entry.snapshots > 0 => entry.problems.push(format!("no copy in {to}")),
                (Some((time_ms, _)), Some(max)) if (now_ms - time_ms) / 1000 > max.as_secs() as i64 => {
                    entry.problems.push(format!(
                        "newest copy in {to} is {} old (more than {})",
                        age_text((now_ms - time_ms) / 1000),
                        age_text(max.as_secs() as i64)
                    ))
                }
                _ => {}
            }
        }
    }
    for o in offsite.values().filter(|o| o.last_outcome != Outcome::Ok && !o.retired) {
        let error = o.last_error.as_ref().map_or(String::new(), |e| format!(": {e}"));
        status.problems.push(format!(
            "last sync to {} {} {} ago{error}",
            o.to,
            if o.last_outcome == Outcome::Failed { "failed" } else { "was incomplete" },
            age_text(o.last_sync.age_seconds)
        ));
    }
    if let Some(expected) = expected {
        for to in expected.offsite.iter().filter(|to| !offsite.contains_key(*to)) {
            status.problems.push(format!("never synced to {to}"));
        }
    }
    if let Some(days) = expected.and_then(|e| e.read_data_days) {
        status.problems.extend(rotation_behind(&parts_read, days, now_ms));
    }
    status.offsite = offsite.into_values().collect();
    status.received = received.into_values().collect();
    if !any_snapshot {
        status.problems.push("the repository holds no snapshot".into());
    }
    match (status.last_check_ok, check_killed) {
        (Some(false), true) => status.problems.push("the last check was killed before it ended".into()),
        (Some(false), false) => status.problems.push("the last check found damage".into()),
        _ => {}
    }
    for damage in repo.take_damage() {
        status.problems.push(format!("damaged repository file: {damage}"));
    }
    status.sources = sources.into_values().collect();
    Ok(status)
}

/// A failed `cairn run` (a cycle) whose failure is none of its steps': a signal stopped it
/// (`interrupted by SIGTERM`), or it could not start at all (`cairn serve`'s queue was full).
/// No step's own record says so, so the run's must, until a later run ends well. A run that
/// failed because a step failed is left to that step's record, which names its source.
fn failed_outside_its_steps(record: &AuditRecord) -> bool {
    let failed_step = |steps: &Vec<serde_json::Value>| steps.iter().any(|step| step["outcome"] == "failed");
    record.command == "run" && !record.details["steps"].as_array().is_some_and(failed_step)
}

/// The parts of a read-data rotation over `days` days not read by a good check within `days` and
/// one day of grace (a check of `all` reads every part).
fn rotation_behind(parts_read: &BTreeMap<String, i64>, days: u32, now_ms: i64) -> Vec<String> {
    let allowed_ms = (i64::from(days) + 1) * 86_400_000;
    let all = parts_read.get("all").copied();
    (1..=days)
        .filter_map(|k| {
            let part = format!("{k}/{days}");
            let read = parts_read.get(&part).copied().max(all);
            match read {
                Some(at) if now_ms - at <= allowed_ms => None,
                Some(at) => Some(format!(
                    "read-data rotation behind: part {part} last read {} ago (every pack is to be read within {days}d)",
                    age_text((now_ms - at) / 1000)
                )),
                None => Some(format!("read-data rotation behind: part {part} never read")),
            }
        })
        .collect()
}

/// What a sync that did not fail put in (or found in) its destination `to`: for each source it
/// selected (`details.sources`, or all), the newest snapshot committed (its time plus its
/// duration) before it started, unless it failed to copy that one.
fn covered(
    record: &AuditRecord,
    to: &str,
    by_source: &BTreeMap<String, Vec<(i64, i64, String)>>,
    copies: &mut BTreeMap<(String, String), (i64, String)>,
) {
    let selected: Vec<&str> = match record.details["sources"].as_array() {
        Some(names) => names.iter().filter_map(|n| n.as_str()).collect(),
        None => record.source.split_whitespace().collect(),
    };
    let failed: Vec<&str> = record.details["report"]["snapshots_failed"]
        .as_array()
        .map_or(Vec::new(), |ids| ids.iter().filter_map(|i| i.as_str()).collect());
    for (source, taken) in by_source.iter() {
        if !selected.is_empty() && !selected.contains(&source.as_str()) {
            continue;
        }
        let before = taken.partition_point(|(committed, _, _)| *committed <= record.started_ms);
        let newest = taken[..before].iter().rev().find(|(_, _, id)| !failed.contains(&id.as_str()));
        if let Some((_, time, id)) = newest {
            let key = (source.clone(), to.to_string());
            if copies.get(&key).map_or(true, |(known, _)| known < time) {
                copies.insert(key, (*time, id.clone()));
            }
        }
    }
}

/// The records with a failed one added for every run killed before it could write its own: a
/// start record that no record answers (by nonce and host), of a process that is gone. Such a
/// run of this host is gone when its process is; one of another host when no live lock file of
/// its process is left (read only then). Returns the runs still going, which are no problem.
pub fn with_killed_runs(
    repo: &Repository,
    mut records: Vec<AuditRecord>,
    now_ms: i64,
) -> (Vec<AuditRecord>, Vec<String>) {
    let open: Vec<&AuditRecord> = audit::unanswered_starts(&records).into_iter().map(|n| &records[n]).collect();
    if open.is_empty() {
        return (records, Vec::new());
    }
    let here = crate::host::hostname();
    // Read once, and only when a run's process cannot be told alive or gone from here.
    let holders = std::cell::OnceCell::new();
    let holders = || holders.get_or_init(|| crate::repository::lock::live_holders(repo.backend()).ok());
    let mut killed = Vec::new();
    let mut running = Vec::new();
    for start in open {
        let command = start.details["command"].as_str().unwrap_or("?").to_string();
        let pid = start.details["pid"].as_u64().unwrap_or(0) as u32;
        // Running while its process holds a live lock (a cycle, which holds none itself, while any
        // of its host's does), or within the default lock wait of its start, when it may still be
        // waiting for one. Unknown (the locks could not be read): taken as running, never as killed.
        let holds_a_lock = || {
            now_ms - start.started_ms < 15 * 60_000
                || holders().as_ref().map_or(true, |h| {
                    h.iter().any(|(host, p)| *host == start.hostname && (*p == pid || command == "run"))
                })
        };
        let alive = match (start.hostname == here, crate::host::ProcessIdentity::recorded_in(&start.details)) {
            // Its pid namespace, start tick and boot tell it from any other process; from a pid
            // namespace that cannot see its own, only its lock can tell.
            (true, Some(identity)) => identity.alive(pid).unwrap_or_else(holds_a_lock),
            // A record from before those were written: by the pid alone. A process of that
            // number started more than a week later is another one.
            (true, None) => {
                pid != 0 && crate::host::process_alive(pid as i32) && now_ms - start.started_ms < 7 * 86_400_000
            }
            (false, _) => holds_a_lock(),
        };
        let what = format!(
            "{command} (pid {pid} on {}, started {} ago)",
            start.hostname,
            age_text((now_ms - start.started_ms) / 1000)
        );
        if alive {
            running.push(what);
            continue;
        }
        let mut details = start.details.clone();
        if let Some(known) = details.as_object_mut() {
            for field in ["command", "pid"].into_iter().chain(crate::host::ProcessIdentity::FIELDS) {
                known.remove(field);
            }
            known.insert("killed".into(), true.into());
        }
        killed.push(AuditRecord {
            command,
            outcome: Outcome::Failed,
            errors: vec![format!("killed: pid {pid} on {} started it and ended without a record", start.hostname)],
            details,
            ..start.clone()
        });
    }
    records.extend(killed);
    records.sort_by(audit::chronological);
    (records, running)
}

/// The status as a Prometheus textfile-collector file: per source the age of its newest
/// snapshot, of its last good drill and of its newest copy in each offsite destination, the
/// outcome and time of its newest run of each command, its stored bytes and their monthly
/// cost, and whether it is healthy; `cairn_healthy` covers it all in one alert rule.
pub fn prometheus(status: &Status) -> String {
    fn label(text: &str) -> String {
        text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let judged = || status.sources.iter().filter(|s| !s.retired);
    let per = |f: &dyn Fn(&SourceStatus) -> Option<f64>| -> Vec<(String, f64)> {
        judged().filter_map(|s| f(s).map(|v| (format!("{{source=\"{}\"}}", label(&s.source)), v))).collect()
    };
    metric(
        "cairn_snapshot_last_timestamp_seconds",
        "Time of the newest snapshot of the source.",
        per(&|s| s.latest_snapshot.as_ref().map(|e| e.time_ms as f64 / 1000.0)),
    );
    metric(
        "cairn_snapshot_age_seconds",
        "Age of the newest snapshot of the source.",
        per(&|s| s.latest_snapshot.as_ref().map(|e| e.age_seconds as f64)),
    );
    metric("cairn_snapshots", "Number of snapshots of the source.", per(&|s| Some(s.snapshots as f64)));
    metric(
        "cairn_drill_last_success_timestamp_seconds",
        "Time of the last successful restore drill of the source.",
        per(&|s| s.last_drill_ok.as_ref().map(|e| e.time_ms as f64 / 1000.0)),
    );
    metric(
        "cairn_drill_age_seconds",
        "Age of the last successful restore drill of the source.",
        per(&|s| s.last_drill_ok.as_ref().map(|e| e.age_seconds as f64)),
    );
    metric(
        "cairn_offsite_age_seconds",
        "Age of the newest snapshot of the source in the offsite destination.",
        judged()
            .flat_map(|s| {
                s.offsite.iter().map(|c| {
                    (format!("{{source=\"{}\",to=\"{}\"}}", label(&s.source), label(&c.to)), c.age_seconds as f64)
                })
            })
            .collect(),
    );
    let per_run = |f: &dyn Fn(&LastRun) -> f64| -> Vec<(String, f64)> {
        judged()
            .flat_map(|s| {
                s.last_runs.iter().map(move |r| {
                    (format!("{{source=\"{}\",command=\"{}\"}}", label(&s.source), label(&r.command)), f(r))
                })
            })
            .collect()
    };
    metric(
        "cairn_last_run_success",
        "1 when the newest run of the command for the source ended ok (or incomplete), 0 when it failed.",
        per_run(&|r| (r.outcome != Outcome::Failed) as u8 as f64),
    );
    metric(
        "cairn_last_run_timestamp_seconds",
        "End of the newest run of the command for the source.",
        per_run(&|r| r.time_ms as f64 / 1000.0),
    );
    metric(
        "cairn_last_failure_timestamp_seconds",
        "Time of the last failed run for the source.",
        per(&|s| s.last_failure.as_ref().map(|f| f.time_ms as f64 / 1000.0)),
    );
    metric(
        "cairn_stored_bytes",
        "The source's share of the repository's stored bytes (from the newest cairn run).",
        per(&|s| s.stored_bytes.map(|b| b as f64)),
    );
    metric(
        "cairn_monthly_cost",
        "What the source's share costs a month at the config's cost_per_gib_month.",
        per(&|s| s.monthly_cost),
    );
    metric(
        "cairn_source_healthy",
        "1 when the source has no problem, else 0.",
        per(&|s| Some(s.problems.is_empty() as u8 as f64)),
    );
    metric(
        "cairn_offsite_last_success_timestamp_seconds",
        "Time of the last complete sync to the destination.",
        status
            .offsite
            .iter()
            .filter(|o| !o.retired)
            .filter_map(|o| {
                o.last_ok.as_ref().map(|e| (format!("{{to=\"{}\"}}", label(&o.to)), e.time_ms as f64 / 1000.0))
            })
            .collect(),
    );
    metric(
        "cairn_healthy",
        "1 when every source and the repository are healthy.",
        vec![(String::new(), status.healthy() as u8 as f64)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Run;
    use crate::repository::NewKeys;

    /// A cycle that `cairn serve` could not start (its queue full) or that a signal stopped
    /// leaves a failed `run` record and nothing else: status is not healthy until a run ends well.
    #[test]
    fn a_run_that_failed_outside_its_steps_is_a_problem_until_one_ends_well() {
        let repo =
            Repository::create(&"memory://run".into(), crate::format::config::Config::new_random(), NewKeys::None)
                .unwrap();
        let now = crate::clock::now_ms() + 60_000;
        let why = "the scheduled cycle could not start: the job queue is full";
        Run::failed_before(&repo, "run", "", why).unwrap();
        let found = status(&repo, now, &Thresholds::default(), None).unwrap();
        assert!(found.problems.iter().any(|p| p.contains("last run failed") && p.contains(why)), "{found:?}");
        // Records of one millisecond would be ordered by their nonces.
        std::thread::sleep(Duration::from_millis(3));
        Run::start("run", "").finish(&repo, Outcome::Ok).unwrap();
        let found = status(&repo, now, &Thresholds::default(), None).unwrap();
        assert!(!found.problems.iter().any(|p| p.contains("last run failed")), "{found:?}");
        // A run that failed because a step did is reported by that step's record instead.
        std::thread::sleep(Duration::from_millis(3));
        let mut run = Run::start("run", "");
        run.record.details = serde_json::json!({ "steps": [{ "step": "snapshot db", "outcome": "failed" }] });
        run.finish(&repo, Outcome::Failed).unwrap();
        let found = status(&repo, now, &Thresholds::default(), None).unwrap();
        assert!(!found.problems.iter().any(|p| p.contains("last run failed")), "{found:?}");
    }

    /// Random runs over a year, each answered by its record or (killed) not: after compaction
    /// status says exactly what it said before, from far fewer records.
    #[test]
    fn compaction_keeps_what_status_says() {
        let repo =
            Repository::create(&"memory://audit".into(), crate::format::config::Config::new_random(), NewKeys::None)
                .unwrap();
        let mut seed = 22u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let day = 86_400_000;
        let now = 1_800_000_000_000;
        let commands = ["snapshot", "drill", "sync", "check", "prune", "hook", "retire"];
        let outcomes = [Outcome::Ok, Outcome::Ok, Outcome::Ok, Outcome::Failed, Outcome::Incomplete];
        for n in 0..1500 {
            let command = commands[next(commands.len() as u64) as usize];
            // `gone` runs only in the first months: its last failure and good drill are old.
            let source = match n < 500 {
                true => ["db", "web", "", "/typo", "gone", "gone"][next(6) as usize],
                false => ["db", "web", "", "/typo"][next(4) as usize],
            };
            let mut run = Run::start(command, source);
            run.record.hostname = "elsewhere".into();
            run.record.started_ms = now - 376 * day + n * day / 4 + next(1000) as i64;
            run.record.ended_ms = run.record.started_ms + 1000;
            run.record.outcome = outcomes[next(outcomes.len() as u64) as usize];
            if command == "sync" {
                let to = ["s3://a/x", "s3://b/y"][next(2) as usize];
                run.record.details = match next(4) {
                    0 => {
                        let from = ["/here", "/there"][next(2) as usize];
                        serde_json::json!({ "to": to, "received_from": from })
                    }
                    _ => serde_json::json!({ "to": to }),
                };
            }
            if command != "retire" && command != "prune" {
                let mut details = run.record.details.as_object().cloned().unwrap_or_default();
                details.insert("command".into(), command.into());
                details.insert("pid".into(), 1.into());
                let start = crate::format::audit::AuditRecord {
                    command: crate::audit::START.into(),
                    ended_ms: run.record.started_ms,
                    outcome: Outcome::Ok,
                    details: serde_json::Value::Object(details),
                    ..run.record.clone()
                };
                crate::audit::write(&repo, &start).unwrap();
                if next(20) == 0 {
                    continue; // killed
                }
            }
            if run.record.outcome != Outcome::Ok {
                run.record.errors.push(format!("error {n}"));
            }
            crate::audit::write(&repo, &run.record).unwrap();
        }
        // `old`: a failed snapshot, then a good one; its last failure is in no newest-of-kind.
        for (days, outcome) in [(300, Outcome::Failed), (299, Outcome::Ok)] {
            let mut run = Run::start("snapshot", "old");
            (run.record.started_ms, run.record.ended_ms, run.record.outcome) =
                (now - days * day, now - days * day, outcome);
            crate::audit::write(&repo, &run.record).unwrap();
        }
        let thresholds = Thresholds {
            max_age: Some(Duration::from_secs(86_400)),
            max_drill_age: Some(Duration::from_secs(7 * 86_400)),
            max_offsite_age: Some(Duration::from_secs(2 * 86_400)),
        };
        let before = serde_json::to_value(status(&repo, now, &thresholds, None).unwrap()).unwrap();
        let listed = |repo: &Repository| repo.list_files(crate::repository::FileKind::Audit).unwrap().len();
        let records = listed(&repo);
        let compacted = crate::audit::compact(&repo, now, Duration::from_secs(30 * 86_400), false).unwrap();
        assert_eq!(compacted.records, records);
        assert_eq!(listed(&repo), compacted.kept);
        assert!(compacted.kept < records / 4, "{compacted:?}");
        let after = serde_json::to_value(status(&repo, now, &thresholds, None).unwrap()).unwrap();
        assert_eq!(before, after);
        // Again: nothing more to drop.
        assert_eq!(crate::audit::compact(&repo, now, Duration::from_secs(30 * 86_400), false).unwrap().deleted, 0);
    }
}
