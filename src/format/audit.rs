//! Audit records (`audit/<id>`): one small file per command run, saying what ran, for which
//! source, when, and how it ended. One file per record makes concurrent writers safe (create-only
//! puts of distinct names) and means a crash can at worst lose the record being written, never
//! hide earlier ones. The body is JSON inside the common envelope, so new fields can be added
//! without a version change. See store-format/audit.md.

use serde::{Deserialize, Serialize};

use super::envelope;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"CAIRNAUD";
pub const VERSION: u16 = 1;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Stored, but not everything could be read (a snapshot with source errors).
    Incomplete,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The command: `snapshot`, `check`, `drill`, ...
    pub command: String,
    /// The source the run concerned (its `--source` name, or its paths); empty if none.
    #[serde(default)]
    pub source: String,
    pub hostname: String,
    /// Start and end, Unix milliseconds.
    pub started_ms: i64,
    pub ended_ms: i64,
    pub outcome: Outcome,
    /// The snapshot made, checked or drilled, if any.
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub errors: Vec<String>,
    /// Command-specific evidence (a drill's checks, a check's counts).
    #[serde(default)]
    pub details: serde_json::Value,
    /// Random, so that two otherwise identical records never share a name.
    pub nonce: String,
}

impl AuditRecord {
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("audit records always serialise");
        envelope::seal(MAGIC, VERSION, &body)
    }

    pub fn decode(data: &[u8], file: &str) -> Result<AuditRecord> {
        let (_version, body) = envelope::open(data, MAGIC, VERSION, file)?;
        serde_json::from_slice(body).map_err(|e| Error::corrupt(file, format!("audit record: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(command in "[a-z]{1,10}", source in "\\PC{0,20}", started in any::<i32>(), files in any::<u64>(), errors in proptest::collection::vec("\\PC{0,30}", 0..3)) {
            let record = AuditRecord {
                command,
                source,
                hostname: "h".into(),
                started_ms: started as i64,
                ended_ms: started as i64 + 5,
                outcome: Outcome::Incomplete,
                snapshot: Some("ab".into()),
                files,
                bytes: 7,
                errors,
                details: serde_json::json!({"checks": 3}),
                nonce: "n".into(),
            };
            prop_assert_eq!(AuditRecord::decode(&record.encode(), "a").unwrap(), record);
        }

        #[test]
        fn noise_and_truncation_are_errors(data in proptest::collection::vec(any::<u8>(), 0..200), cut in 1usize..100) {
            prop_assert!(AuditRecord::decode(&data, "a").is_err());
            let sealed = envelope::seal(MAGIC, VERSION, b"{\"command\":\"x\"}");
            prop_assert!(AuditRecord::decode(&sealed, "a").is_err(), "missing fields");
            let good = AuditRecord {
                command: "x".into(), source: String::new(), hostname: "h".into(), started_ms: 0, ended_ms: 0,
                outcome: Outcome::Ok, snapshot: None, files: 0, bytes: 0, errors: vec![], details: serde_json::Value::Null, nonce: "n".into(),
            }.encode();
            prop_assert!(AuditRecord::decode(&good[..good.len().saturating_sub(cut)], "a").is_err());
        }
    }

    /// Pins the JSON field names and outcome spellings: renaming a Rust field must not silently
    /// change the format. Unknown fields are ignored and optional ones default.
    #[test]
    fn stored_record_still_decodes() {
        let body = br#"{"command":"drill","source":"app","hostname":"h1","started_ms":1,"ended_ms":2,
            "outcome":"incomplete","snapshot":"ab","files":3,"bytes":4,"errors":["e"],"details":{"k":1},
            "nonce":"n","added_by_a_later_version":true}"#;
        let record = AuditRecord::decode(&envelope::seal(MAGIC, VERSION, body), "a").unwrap();
        assert_eq!((record.command.as_str(), record.outcome, record.files), ("drill", Outcome::Incomplete, 3));
        let minimal =
            br#"{"command":"check","hostname":"h","started_ms":0,"ended_ms":0,"outcome":"failed","nonce":"n"}"#;
        let record = AuditRecord::decode(&envelope::seal(MAGIC, VERSION, minimal), "a").unwrap();
        assert_eq!((record.source.as_str(), record.snapshot, record.errors.len()), ("", None, 0));
    }
}
