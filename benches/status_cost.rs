//! What `cairn status` costs with 10 runs in the audit log and with 10,000 (issue 22): wall
//! time and requests, on a local directory and on an object store, with an empty cache and a
//! warm one, before and after the compaction of `cairn prune` (30 days kept).
//!
//! usage: cargo bench --bench status_cost -- LOCATION_PREFIX...
//!   Each prefix gets `-10` and `-10000` appended: a directory path (created; removed first), or
//!   an `s3://bucket/prefix` URL whose bucket exists (benches/status_cost.sh starts moto_server
//!   and runs both). The runs span the year before now, evenly, one source of three each, every
//!   one a start record and its end record, as `cairn run` leaves them.

use std::time::{Duration, Instant};

use cairn::audit::Run;
use cairn::format::audit::{AuditRecord, Outcome};
use cairn::format::config::Config;
use cairn::repository::{NewKeys, Repository};
use cairn::status::{status, Thresholds};
use rayon::prelude::*;

fn main() {
    let prefixes: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if prefixes.is_empty() {
        eprintln!("usage: cargo bench --bench status_cost -- LOCATION_PREFIX... (a directory or s3://bucket/prefix)");
        std::process::exit(2);
    }
    println!("{:<44} {:>6} {:>8} {:>9} {:>9} {:>9}", "repository", "runs", "records", "status", "ms", "requests");
    for prefix in &prefixes {
        for runs in [10u64, 10_000] {
            measure(&format!("{prefix}-{runs}"), runs);
        }
    }
}

fn measure(location: &str, runs: u64) {
    if !cairn::backend::object::is_url(location) {
        let _ = std::fs::remove_dir_all(location);
    }
    let repo = Repository::create(&location.into(), Config::new_random(), NewKeys::None).expect("init");
    let now = cairn::clock::now_ms();
    let year = 365 * 86_400_000i64;
    let records: Vec<AuditRecord> = (0..runs)
        .flat_map(|n| {
            let command = ["snapshot", "snapshot", "drill", "sync"][n as usize % 4];
            let mut run = Run::start(command, ["web", "db", "uploads"][n as usize % 3]);
            run.record.started_ms = now - year + (n as i64) * year / runs as i64;
            run.record.ended_ms = run.record.started_ms + 60_000;
            run.record.outcome = if n % 50 == 7 { Outcome::Failed } else { Outcome::Ok };
            if command == "sync" {
                run.record.details = serde_json::json!({ "to": "s3://offsite/copy" });
            }
            let start = AuditRecord {
                command: cairn::audit::START.into(),
                ended_ms: run.record.started_ms,
                details: serde_json::json!({ "command": command, "pid": 1 }),
                ..run.record.clone()
            };
            [start, run.record]
        })
        .collect();
    records.par_iter().for_each(|record| cairn::audit::write(&repo, record).expect("write"));
    let cache = std::env::temp_dir().join(format!("cairn-status-cost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let thresholds = Thresholds { max_age: Some(Duration::from_secs(86_400)), ..Thresholds::default() };
    let timed = |label: &str| {
        let mut repo = Repository::open(&location.into(), cairn::repository::Passphrase::None).expect("open");
        repo.use_cache(&cache).expect("cache");
        let before = repo.backend().requests().unwrap_or_default().total();
        let started = Instant::now();
        let status = status(&repo, now, &thresholds, None).expect("status");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let requests = repo.backend().requests().map(|r| (r.total() - before).to_string()).unwrap_or("-".into());
        let listed = repo.backend().list("audit").expect("list").len();
        assert_eq!(status.sources.len(), 3);
        println!("{location:<44} {runs:>6} {listed:>8} {label:>9} {ms:>9.1} {requests:>9}");
    };
    timed("cold");
    timed("warm");
    let compacted = cairn::audit::compact(&repo, now, cairn::audit::KEEP_WITHIN_DEFAULT, false).expect("compact");
    let _ = std::fs::remove_dir_all(&cache);
    eprintln!("  compacted: {} of {} records deleted", compacted.deleted, compacted.records);
    timed("pruned");
    timed("warm");
    let _ = std::fs::remove_dir_all(&cache);
}
