//! cairn as a library, the way a service embeds it: create and open an encrypted repository with
//! a password passed as a value, snapshot a directory that holds an SQLite database in WAL mode
//! while a connection to it is open, list the snapshots, restore the newest one, and read the
//! audit log that the verbs wrote (the same records `cairn snapshot` and `cairn restore` write).
//! No environment variable and no terminal is consulted.
//!
//! Run with `cargo run --example embed [DIR]` (DIR: scratch space, a new temporary directory by
//! default, removed at the end). It exits non-zero if anything differs from what it expects.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::backup::SnapshotOptions;
use cairn::format::config::Config;
use cairn::progress::Progress;
use cairn::repository::lock::LockKind;
use cairn::repository::{Indexed, Location, NewKeys, Passphrase, Repository};
use cairn::restore::in_place;

/// In a real service this comes from its secret store.
const PASSWORD: &str = "correct horse battery staple";

fn main() -> Result<(), Box<dyn Error>> {
    let given = std::env::args_os().nth(1).map(PathBuf::from);
    let scratch =
        given.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("cairn-embed-{}", std::process::id())));
    std::fs::create_dir_all(&scratch)?;
    let result = embed(&scratch);
    if given.is_none() {
        std::fs::remove_dir_all(&scratch)?;
    }
    result
}

fn embed(scratch: &Path) -> Result<(), Box<dyn Error>> {
    // A service's state: a live SQLite database and a file beside it.
    let data = scratch.join("data");
    std::fs::create_dir_all(&data)?;
    let db = rusqlite::Connection::open(data.join("app.db"))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.execute_batch(
        "CREATE TABLE jobs(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO jobs(name) VALUES ('nightly');",
    )?;
    std::fs::write(data.join("settings.json"), br#"{"retries": 3}"#)?;

    // The repository: created once, then opened with the password as a value.
    let location = Location::directory(scratch.join("repo"));
    Repository::create(&location, Config::new_random(), NewKeys::New { passphrase: PASSWORD.into() })?;
    let repo = Repository::open(&location, Passphrase::Given(PASSWORD))?;
    let quiet = Progress::new("embed", true);

    // Snapshot, under the shared lock every writer takes; the database is read through SQLite
    // while `db` stays open.
    let lock = repo.lock(LockKind::Shared, "snapshot", Duration::from_secs(60))?;
    let options = SnapshotOptions { paths: vec![data.clone()], source: "app".into(), ..Default::default() };
    let audited = cairn::backup::snapshot(&repo, &options, &quiet);
    if let Some(e) = audited.audit_error {
        eprintln!("warning: the snapshot's audit record could not be written: {e}");
    }
    let taken = audited.result?;
    drop(lock);
    println!("snapshot {} of {}: {} files", taken.id.short(), taken.snapshot.source, taken.snapshot.summary.files);

    for (id, snapshot) in repo.snapshots()? {
        println!("  {} {} {:?}", id.short(), snapshot.source, snapshot.tags);
    }

    // Restore the newest snapshot into an empty directory.
    let (id, snapshot) = repo.find_snapshot("latest")?;
    let indexed = Indexed::load(&repo)?;
    let target = scratch.join("restored");
    let options = in_place::Options { target: target.clone(), ..Default::default() };
    let report = in_place::run(&indexed, &id, &snapshot, options, &quiet)?;
    println!("restored {} files into {}", report.summary.files, report.target.display());

    // What came back is what was there.
    let restored = rusqlite::Connection::open(target.join("app.db"))?;
    let name: String = restored.query_row("SELECT name FROM jobs WHERE id = 1", [], |row| row.get(0))?;
    let settings = std::fs::read(target.join("settings.json"))?;
    if name != "nightly" || settings != br#"{"retries": 3}"# {
        return Err("the restored tree differs from the source".into());
    }

    // The audit log says what ran, as `cairn log` would show it.
    let log = cairn::audit::read_all(&repo)?;
    let ran: Vec<&str> = log.iter().filter(|r| r.command != cairn::audit::START).map(|r| r.command.as_str()).collect();
    println!("audit log: {}", ran.join(", "));
    if ran != ["snapshot", "restore"] || log.iter().any(|r| r.outcome != cairn::format::audit::Outcome::Ok) {
        return Err(format!("unexpected audit log: {ran:?}").into());
    }
    Ok(())
}
