//! Writing and reading the run audit: every `snapshot`, `check` and `drill` leaves a record in
//! the repository, success or failure, so a missed or failed backup shows up in `cairn status`
//! instead of on the day of the disaster. Record layout: store-format/audit.md.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::Backend;
use crate::crypto::Keys;
use crate::error::Result;
use crate::format::audit::{AuditRecord, Outcome};
use crate::id::Id;
use crate::repository::Repository;

/// The `command` of a start record: a run that has begun ([`Run::begin`]). Its `details` name
/// the command and the process; the run's own record shares its nonce. A start record that no
/// record answers, of a process that is gone, is a run that was killed (store-format/audit.md).
pub const START: &str = "start";

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
        let plain = record.encode();
        let bytes = match &self.keys {
            Some(keys) => crate::format::envelope::encrypt(&plain, keys),
            None => plain,
        };
        self.backend.put(&format!("audit/{}", Id::of(&bytes).to_hex()), &bytes)?;
        Ok(())
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A record being filled in while a command runs.
pub struct Run {
    pub record: AuditRecord,
}

impl Run {
    pub fn start(command: &str, source: &str) -> Run {
        Run {
            record: AuditRecord {
                command: command.to_string(),
                source: source.to_string(),
                hostname: crate::backup::hostname(),
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
        let start = AuditRecord {
            command: START.to_string(),
            ended_ms: self.record.started_ms,
            outcome: Outcome::Ok,
            details: serde_json::json!({ "command": self.record.command, "pid": std::process::id() }),
            ..self.record.clone()
        };
        writer.write(&start)
    }

    /// Stamps the end time and outcome into the record.
    pub fn close(&mut self, outcome: Outcome) {
        self.record.ended_ms = now_ms();
        self.record.outcome = outcome;
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
        repo.read_all_named("audit", AuditRecord::decode)?.into_iter().map(|(_, r)| r).collect();
    records.sort_by(|a, b| (a.started_ms, a.ended_ms, &a.nonce).cmp(&(b.started_ms, b.ended_ms, &b.nonce)));
    Ok(records)
}
