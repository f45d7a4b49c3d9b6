//! Writing and reading the run audit: every `snapshot`, `check` and `drill` leaves a record in
//! the repository, success or failure, so a missed or failed backup shows up in `cairn status`
//! instead of on the day of the disaster. Record layout: store-format/audit.md.

use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::clock::now_ms;
use crate::crypto::Keys;
use crate::error::Result;
use crate::format::audit::{AuditRecord, Outcome};
use crate::id::Id;
use crate::repository::{FileKind, Repository};

/// The `command` of a start record: a run that has begun ([`Run::begin`]). Its `details` name
/// the command and the process; the run's own record shares its nonce. A start record that no
/// record answers, of a process that is gone, is a run that was killed (store-format/audit.md).
pub const START: &str = "start";

/// The `command` of a record that retires a source or an offsite destination by hand.
pub const RETIRE: &str = "retire";

/// The `command` of the record of each source's stored bytes and cost that `cairn run` writes.
pub const STATS: &str = "stats";

/// Runs of this process that have begun and not ended, with where their records go: a signal
/// that ends the process writes them as failed ([`interrupted`]).
static OPEN: Mutex<Vec<(AuditRecord, Writer)>> = Mutex::new(Vec::new());

/// Writes records into one repository (sealed with its keys, if it has them).
#[derive(Clone)]
struct Writer {
    backend: Arc<dyn Backend>,
    keys: Option<Keys>,
}

impl Writer {
    fn of(repo: &Repository) -> Writer {
        Writer { backend: repo.backend_arc(), keys: repo.keys().cloned() }
    }

    fn write(&self, record: &AuditRecord) -> Result<()> {
        let bytes = crate::format::envelope::seal_file(record.encode(), self.keys.as_ref());
        self.backend.put(&FileKind::Audit.name(&Id::of(&bytes)), &bytes)?;
        Ok(())
    }
}

/// A record being filled in while a command runs.
pub struct Run {
    pub record: AuditRecord,
}

/// What an audited verb gives back: its own result, and why its records could not be written,
/// if they could not. Failing to write them never fails the verb: a committed snapshot stays
/// committed, a verb's own error stays the error.
#[must_use]
pub struct Audited<T> {
    pub result: Result<T>,
    pub audit_error: Option<String>,
    /// The record as it ended (to copy it elsewhere: a drill of an offsite copy).
    pub record: AuditRecord,
}

/// Writes `record` (a run's, or a copy of it marked for its reader) into another repository too;
/// what could not be written there joins `audit_error` (an [`Audited`] run's).
pub(crate) fn write_copy(audit_error: &mut Option<String>, other: &Repository, record: &AuditRecord) {
    if let Err(e) = write(other, record) {
        let failed = format!("its copy in {}: {e}", other.backend().location());
        *audit_error = Some(match audit_error.take() {
            Some(before) => format!("{before}; {failed}"),
            None => failed,
        });
    }
}

impl Run {
    pub fn start(command: &str, source: &str) -> Run {
        Run {
            record: AuditRecord {
                command: command.to_string(),
                source: source.to_string(),
                hostname: crate::host::hostname(),
                started_ms: now_ms(),
                ended_ms: 0,
                outcome: Outcome::Failed,
                snapshot: None,
                files: 0,
                bytes: 0,
                errors: Vec::new(),
                details: serde_json::Value::Null,
                nonce: Id(crate::id::random_bytes()).short(),
            },
        }
    }

    /// Writes the start record of this run into `repo`, and keeps the run open until
    /// [`Run::finish`]: if a signal ends the process first, [`interrupted`] writes its record
    /// as failed; if `kill -9` does, `cairn status` finds the start record unanswered.
    pub fn begin(&self, repo: &Repository) -> Result<()> {
        let writer = Writer::of(repo);
        OPEN.lock().expect("poisoned").push((self.record.clone(), writer.clone()));
        // What the run's details say so far (a sync's destination), and who runs it.
        let mut details = match &self.record.details {
            serde_json::Value::Object(known) => known.clone(),
            _ => serde_json::Map::new(),
        };
        details.insert("command".into(), self.record.command.clone().into());
        details.insert("pid".into(), std::process::id().into());
        // The pid alone names this process only in its pid namespace (a container's pid 1 is
        // the host's init too): what tells it from another of that number.
        if let Some(identity) = crate::host::ProcessIdentity::of_self() {
            identity.record_into(&mut details);
        }
        let start = AuditRecord {
            command: START.to_string(),
            ended_ms: self.record.started_ms,
            outcome: Outcome::Ok,
            details: serde_json::Value::Object(details),
            ..self.record.clone()
        };
        writer.write(&start)
    }

    /// Runs `work` between this run's start record and its end record in `repo`, the lifecycle
    /// of every verb (store-format/audit.md). `work` fills in the record (files, bytes, errors,
    /// details) and says how the run went; an error ends it as failed, with the error.
    pub fn around<T>(
        self,
        repo: &Repository,
        work: impl FnOnce(&mut AuditRecord) -> Result<(T, Outcome)>,
    ) -> Audited<T> {
        self.around_from(repo, true, work)
    }

    /// [`Run::around`] without the start record: for a short command whose kill leaves nothing
    /// to see to (forget, tag, repair), which `status` should then not report as killed.
    pub fn after<T>(
        self,
        repo: &Repository,
        work: impl FnOnce(&mut AuditRecord) -> Result<(T, Outcome)>,
    ) -> Audited<T> {
        self.around_from(repo, false, work)
    }

    /// [`Run::around`], with its start record or ([`Run::after`]) without.
    pub(crate) fn around_from<T>(
        mut self,
        repo: &Repository,
        start_record: bool,
        work: impl FnOnce(&mut AuditRecord) -> Result<(T, Outcome)>,
    ) -> Audited<T> {
        let begun = if start_record { self.begin(repo) } else { Ok(()) };
        let (result, outcome) = match work(&mut self.record) {
            Ok((value, outcome)) => (Ok(value), outcome),
            Err(e) => {
                self.record.errors.push(e.to_string());
                (Err(e), Outcome::Failed)
            }
        };
        let record = self.ended_copy(outcome);
        let finished = self.finish(repo, outcome);
        let audit_error = match (begun, finished) {
            (_, Err(e)) => Some(e.to_string()),
            (Err(e), Ok(())) => Some(format!("its start record: {e}")),
            (Ok(()), Ok(())) => None,
        };
        Audited { result, audit_error, record }
    }

    /// Writes the record of a run of `command` that failed with `error` before it could begin
    /// (a source path that is missing, a lock that could not be taken): a missed run is seen.
    pub fn failed_before(repo: &Repository, command: &str, source: &str, error: &str) -> Result<()> {
        let mut run = Run::start(command, source);
        run.record.errors.push(error.to_string());
        run.finish(repo, Outcome::Failed)
    }

    /// Stamps the end time and outcome into the record.
    pub fn close(&mut self, outcome: Outcome) {
        self.record.ended_ms = now_ms();
        self.record.outcome = outcome;
    }

    /// A copy of the record as it would end now with `outcome` (for another repository).
    pub fn ended_copy(&self, outcome: Outcome) -> AuditRecord {
        let mut copy = Run { record: self.record.clone() };
        copy.close(outcome);
        copy.record
    }

    /// Stamps the end time and outcome and writes the record.
    pub fn finish(mut self, repo: &Repository, outcome: Outcome) -> Result<()> {
        OPEN.lock().expect("poisoned").retain(|(open, _)| open.nonce != self.record.nonce);
        self.close(outcome);
        write(repo, &self.record)
    }
}

/// Writes the records of the runs still open as failed, `why` their error (a signal ends the
/// process); returns what could not be written.
pub fn interrupted(why: &str) -> Vec<String> {
    let open = std::mem::take(&mut *OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let mut failures = Vec::new();
    for (mut record, writer) in open {
        record.ended_ms = now_ms();
        record.outcome = Outcome::Failed;
        record.errors.push(why.to_string());
        if let Err(e) = writer.write(&record) {
            failures.push(format!("the audit record of this {} could not be written: {e}", record.command));
        }
    }
    failures
}

pub fn write(repo: &Repository, record: &AuditRecord) -> Result<()> {
    Writer::of(repo).write(record)
}

/// Every readable audit record, oldest first. Damaged records are skipped and reported through
/// [`Repository::take_damage`].
pub fn read_all(repo: &Repository) -> Result<Vec<AuditRecord>> {
    let mut records: Vec<AuditRecord> =
        repo.read_all_named(FileKind::Audit, AuditRecord::decode)?.into_iter().map(|(_, r)| r).collect();
    records.sort_by(chronological);
    Ok(records)
}

/// The order of the log: by start, then end, then nonce (store-format/audit.md, "Reading").
pub fn chronological(a: &AuditRecord, b: &AuditRecord) -> std::cmp::Ordering {
    (a.started_ms, a.ended_ms, &a.nonce).cmp(&(b.started_ms, b.ended_ms, &b.nonce))
}

/// The positions in `records` of the start records that no record answers (the run's own, by
/// nonce and host): runs still going, or killed.
pub fn unanswered_starts(records: &[AuditRecord]) -> std::collections::BTreeSet<usize> {
    let answered: std::collections::HashSet<(&str, &str)> =
        records.iter().filter(|r| r.command != START).map(|r| (r.nonce.as_str(), r.hostname.as_str())).collect();
    (records.iter().enumerate())
        .filter(|(_, r)| r.command == START && !answered.contains(&(r.nonce.as_str(), r.hostname.as_str())))
        .map(|(n, _)| n)
        .collect()
}

/// Records younger than this are all kept by [`compact`] unless told otherwise.
pub const KEEP_WITHIN_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// What [`compact`] kept and deleted.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Compacted {
    pub records: usize,
    pub kept: usize,
    pub deleted: usize,
}

/// Which records [`compact`] keeps: every record that ended within `keep_within_ms` of `now_ms`,
/// and of the older ones those `cairn status` reads, so that it says after compaction what it
/// said before: the newest of each kind (command, source, and for a sync its destination) and
/// each source's newest failure and newest good drill, each destination's newest good sync, the
/// newest good check of each part of a read-data rotation, and
/// every start record that no record answers (a killed run). An answered start record has done
/// its work and goes, however young. Returns the indices of the records to keep.
pub fn to_keep(records: &[AuditRecord], now_ms: i64, keep_within_ms: i64) -> std::collections::BTreeSet<usize> {
    use std::collections::HashMap;
    // Unanswered start records stay; answered ones have done their work, whatever their age.
    let mut keep = unanswered_starts(records);
    // Newest per key: records are oldest first, so the last one seen wins.
    let mut newest: HashMap<(&str, String, String), usize> = HashMap::new();
    for (n, record) in records.iter().enumerate() {
        if record.command == START {
            continue;
        }
        if record.ended_ms >= now_ms - keep_within_ms {
            keep.insert(n);
        }
        // A copy received keeps its own kind per source repository, apart from syncs sent.
        let target = match (record.details["received_from"].as_str(), record.details["to"].as_str()) {
            (Some(from), _) => format!("from {from}"),
            (None, Some(to)) => to.to_string(),
            (None, None) => String::new(),
        };
        newest.insert((record.command.as_str(), record.source.clone(), target.clone()), n);
        // The failures status counts as a source's last one.
        let per_source = !["check", "sync", RETIRE, STATS].contains(&record.command.as_str());
        if record.outcome == Outcome::Failed && per_source && !record.source.is_empty() {
            newest.insert(("failed", record.source.clone(), String::new()), n);
        }
        if let (Some(part), Outcome::Ok, "check") =
            (record.details["read_data"].as_str(), record.outcome, record.command.as_str())
        {
            newest.insert(("good check", String::new(), part.to_string()), n);
        }
        if record.outcome == Outcome::Ok && (record.command == "drill" || record.command == "sync") {
            newest.insert(
                (if record.command == "drill" { "good drill" } else { "good sync" }, record.source.clone(), target),
                n,
            );
        }
    }
    keep.extend(newest.into_values());
    keep
}

/// Deletes the audit records [`to_keep`] does not keep (`dry_run`: counts them only). `cairn
/// prune` runs it holding the exclusive lock. A damaged record is never deleted (it is not read,
/// so nothing is known of it); a listing that fails deletes nothing.
pub fn compact(repo: &Repository, now_ms: i64, keep_within: std::time::Duration, dry_run: bool) -> Result<Compacted> {
    let mut named = repo.read_all_named(FileKind::Audit, AuditRecord::decode)?;
    named.sort_by(|(_, a), (_, b)| chronological(a, b));
    let records: Vec<AuditRecord> = named.iter().map(|(_, r)| r.clone()).collect();
    let keep = to_keep(&records, now_ms, keep_within.as_millis() as i64);
    let mut compacted = Compacted { records: records.len(), kept: keep.len(), deleted: 0 };
    for (n, (id, _)) in named.iter().enumerate() {
        if keep.contains(&n) {
            continue;
        }
        if !dry_run {
            repo.delete_file(FileKind::Audit, id)?;
        }
        compacted.deleted += 1;
    }
    Ok(compacted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::repository::NewKeys;

    /// Every verb's lifecycle: a start record, then its own record, which says how it went; an
    /// error ends it as failed, with the error, and stays the verb's result.
    #[test]
    fn a_run_around_work_leaves_its_start_and_its_end() {
        let config = crate::format::config::Config::new_random();
        let repo = Repository::create(&"memory://around".into(), config, NewKeys::None).unwrap();
        let done = Run::start("snapshot", "web").around(&repo, |record| {
            record.files = 3;
            Ok((7, Outcome::Incomplete))
        });
        assert_eq!((done.result.unwrap(), done.audit_error), (7, None));
        let failed: Audited<()> =
            Run::start("check", "").around(&repo, |_| Err(Error::Invalid("the disk is on fire".into())));
        assert!(matches!(failed.result, Err(Error::Invalid(_))));
        let records = read_all(&repo).unwrap();
        // (Within one millisecond their order is the nonces'.)
        let mut summary: Vec<(&str, Outcome, u64, &[String])> =
            records.iter().map(|r| (r.command.as_str(), r.outcome, r.files, &r.errors[..])).collect();
        summary.sort_by_key(|s| s.0);
        let fire = ["the disk is on fire".to_string()];
        assert_eq!(
            summary,
            [
                ("check", Outcome::Failed, 0, &fire[..]),
                ("snapshot", Outcome::Incomplete, 3, &[][..]),
                (START, Outcome::Ok, 0, &[][..]),
                (START, Outcome::Ok, 0, &[][..])
            ]
        );
        assert!(unanswered_starts(&records).is_empty(), "every start is answered");
    }
}
