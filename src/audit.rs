//! Writing and reading the run audit: every `snapshot`, `check` and `drill` leaves a record in
//! the repository, success or failure, so a missed or failed backup shows up in `cairn status`
//! instead of on the day of the disaster. Record layout: store-format/audit.md.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::format::audit::{AuditRecord, Outcome};
use crate::id::Id;
use crate::repository::Repository;

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

    /// Stamps the end time and outcome and writes the record.
    pub fn finish(mut self, repo: &Repository, outcome: Outcome) -> Result<()> {
        self.record.ended_ms = now_ms();
        self.record.outcome = outcome;
        write(repo, &self.record)
    }
}

pub fn write(repo: &Repository, record: &AuditRecord) -> Result<()> {
    let bytes = repo.seal_file(record.encode());
    repo.backend().put(&format!("audit/{}", Id::of(&bytes).to_hex()), &bytes)?;
    Ok(())
}

/// Every readable audit record, oldest first. Damaged records are skipped and reported through
/// [`Repository::take_damage`].
pub fn read_all(repo: &Repository) -> Result<Vec<AuditRecord>> {
    let mut records: Vec<AuditRecord> =
        repo.read_all_named("audit", AuditRecord::decode)?.into_iter().map(|(_, r)| r).collect();
    records.sort_by(|a, b| (a.started_ms, a.ended_ms, &a.nonce).cmp(&(b.started_ms, b.ended_ms, &b.nonce)));
    Ok(records)
}
