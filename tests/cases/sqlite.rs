//! Live SQLite databases: consistent captures under concurrent writers, no companion files, safe
//! restores, and nothing left behind by a killed capture.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::support::*;

pub fn wal_database(path: &Path) -> Connection {
    let db = Connection::open(path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS a(id INTEGER PRIMARY KEY, body TEXT);
         CREATE TABLE IF NOT EXISTS b(id INTEGER PRIMARY KEY, body TEXT);",
    )
    .unwrap();
    db
}

/// Commits transactions that insert one row into each of `a` and `b` until told to stop.
pub fn start_pair_writer(path: PathBuf, stop: Arc<AtomicBool>, commits: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let db = wal_database(&path);
        let mut i = 0u64;
        while !stop.load(Relaxed) {
            let body = format!("row {i} {}", "payload text ".repeat(20));
            db.execute_batch("BEGIN IMMEDIATE").unwrap();
            db.execute("INSERT INTO a(body) VALUES (?1)", [&body]).unwrap();
            db.execute("INSERT INTO b(body) VALUES (?1)", [&body]).unwrap();
            db.execute_batch("COMMIT").unwrap();
            commits.fetch_add(1, Relaxed);
            i += 1;
        }
    })
}

/// Text-like row content (letters and spaces, compressible like real text), distinct per seed.
pub fn text_row(len: usize, seed: u64) -> String {
    noise(len, seed).iter().map(|b| if b % 6 == 0 { ' ' } else { (b'a' + b % 26) as char }).collect()
}

pub fn counts(path: &Path) -> (i64, i64) {
    let db = Connection::open(path).unwrap();
    let count = |t: &str| db.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).unwrap();
    (count("a"), count("b"))
}

pub fn integrity(path: &Path) -> String {
    Connection::open(path).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

#[test]
fn snapshots_under_a_busy_writer_restore_consistent_databases() {
    let scratch = Scratch::new("sqlite-invariant");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db_path = data.join("app.db");
    drop(wal_database(&db_path));
    init(&repo);
    let (stop, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = start_pair_writer(db_path.clone(), stop.clone(), commits.clone());
    let mut ids = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        let out = json(cairn(&repo).arg("snapshot").arg("--sqlite").arg(&db_path));
        ids.push(out["id"].as_str().unwrap().to_string());
    }
    stop.store(true, Relaxed);
    writer.join().unwrap();
    assert!(commits.load(Relaxed) > 100, "the writer kept committing: {}", commits.load(Relaxed));

    let mut seen = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let target = scratch.join(format!("restored-{i}"));
        ok(cairn(&repo).args(["restore", id, "--target"]).arg(&target));
        let restored = target.join("app.db");
        let names: Vec<String> =
            fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["app.db".to_string()], "no companion files are needed or restored");
        assert_eq!(integrity(&restored), "ok");
        let (a, b) = counts(&restored);
        assert_eq!(a, b, "snapshot {i} is one committed transaction");
        seen.push(a);
    }
    eprintln!("rows in successive snapshots under a busy writer: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]) && seen[0] < seen[4], "{seen:?}");
}

#[test]
fn writer_never_stalls_during_a_large_capture() {
    let scratch = Scratch::new("sqlite-latency");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db_path = data.join("big.db");
    let target_bytes: u64 = std::env::var("CAIRN_TEST_DB_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) << 20;
    {
        let db = wal_database(&db_path);
        db.execute_batch("CREATE TABLE IF NOT EXISTS c(id INTEGER PRIMARY KEY, n INTEGER)").unwrap();
        db.execute("INSERT INTO c(n) VALUES (0)", []).unwrap();
        let mut seed = 1;
        while fs::metadata(&db_path).unwrap().len() < target_bytes {
            db.execute_batch("BEGIN").unwrap();
            for _ in 0..2000 {
                seed += 1;
                db.execute("INSERT INTO a(body) VALUES (?1)", [text_row(4000, seed)]).unwrap();
            }
            db.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        }
    }
    init(&repo);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), db_path.clone());
        std::thread::spawn(move || {
            let db = wal_database(&path);
            let (mut latencies, mut failures) = (Vec::new(), 0u64);
            while !stop.load(Relaxed) {
                let started = Instant::now();
                match db.execute("UPDATE c SET n = n + 1 WHERE id = 1", []) {
                    Ok(_) => latencies.push(started.elapsed()),
                    Err(_) => failures += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (latencies, failures)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let out = json(cairn(&repo).arg("snapshot").arg("--sqlite").arg(&db_path));
    let snapshot_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Relaxed);
    let (mut latencies, failures) = writer.join().unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "capture of a {} MiB WAL database: {:.2}s; writer: {} commits, {failures} failed, p99 {:?}, max {:?}",
        fs::metadata(&db_path).unwrap().len() >> 20,
        snapshot_time.as_secs_f64(),
        latencies.len(),
        p99,
        latencies.last().unwrap()
    );
    assert_eq!(out["complete"], true);
    assert_eq!(failures, 0);
    assert!(p99 < Duration::from_millis(20), "p99 commit latency {p99:?}");
}

#[test]
fn tree_with_a_live_database_restores_it_consistent() {
    let scratch = Scratch::new("sqlite-tree");
    let (data, repo) = (scratch.join("volume"), scratch.join("repo"));
    fs::create_dir_all(data.join("uploads")).unwrap();
    fs::write(data.join("uploads/photo.jpg"), noise(300_000, 4)).unwrap();
    fs::write(data.join("config.toml"), b"name = 'app'\n").unwrap();
    let db_path = data.join("state.db");
    let db = wal_database(&db_path);
    db.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    for i in 0..300 {
        db.execute_batch("BEGIN").unwrap();
        db.execute("INSERT INTO a(body) VALUES (?1)", [format!("a{i}")]).unwrap();
        db.execute("INSERT INTO b(body) VALUES (?1)", [format!("b{i}")]).unwrap();
        db.execute_batch("COMMIT").unwrap();
    }
    // The application keeps the database open; its newest commits live only in the WAL.
    assert!(data.join("state.db-wal").exists() && data.join("state.db-shm").exists());
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&data));
    let listing = ok(cairn(&repo).args(["ls", "latest"]));
    assert!(!listing.contains("-wal") && !listing.contains("-shm"), "companions are not stored: {listing}");
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(integrity(&target.join("state.db")), "ok");
    assert_eq!(counts(&target.join("state.db")), (300, 300), "every committed transaction is in the capture");
    assert_eq!(fs::read(target.join("uploads/photo.jpg")).unwrap(), noise(300_000, 4));

    // A raw copy of the database file taken at the same moment misses what is still in the WAL.
    let raw = scratch.join("raw-copy.db");
    fs::copy(&db_path, &raw).unwrap();
    let raw_rows = Connection::open(&raw).map(|c| c.query_row("SELECT count(*) FROM a", [], |r| r.get::<_, i64>(0)));
    eprintln!("raw copy of the main file alone: {raw_rows:?} rows of 300");
    assert!(!matches!(raw_rows, Ok(Ok(300))), "a raw copy without the WAL is stale");
    drop(db);
}

#[test]
fn restore_over_an_existing_database_is_atomic_and_checked() {
    let scratch = Scratch::new("sqlite-restore");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db_path = data.join("app.db");
    {
        let db = wal_database(&db_path);
        db.execute("INSERT INTO a(body) VALUES ('kept')", []).unwrap();
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&data));
    // The live database moves on, with commits still in its WAL.
    let db = wal_database(&db_path);
    db.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    for _ in 0..50 {
        db.execute("INSERT INTO a(body) VALUES ('later')", []).unwrap();
    }
    drop(db);
    ok(cairn(&repo).args(["restore", "latest", "--overwrite", "--target"]).arg(&data));
    assert_eq!(counts(&db_path).0, 1, "the restored state, with no stale WAL replayed into it");
    assert_eq!(integrity(&db_path), "ok");
    let leftovers: Vec<_> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("cairn"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A damaged database in the repository is refused and the existing file is left alone.
    let before = fs::read(&db_path).unwrap();
    let (data_pack, _) = packs_by_size(&repo).pop().unwrap();
    flip_byte(&data_pack, 40, 1);
    let out = run(cairn(&repo).args(["restore", "latest", "--overwrite", "--target"]).arg(&data));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&db_path).unwrap(), before, "existing database untouched");
}

#[test]
fn bad_databases_are_reported_and_the_rest_proceeds() {
    let scratch = Scratch::new("sqlite-bad");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("not-a-db"), b"plain text, not SQLite").unwrap();
    let good = data.join("good.db");
    drop(wal_database(&good));
    let corrupt = data.join("corrupt.db");
    {
        let db = Connection::open(&corrupt).unwrap();
        db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    }
    let mut bytes = fs::read(&corrupt).unwrap();
    bytes[100..4096].fill(0xff);
    fs::write(&corrupt, bytes).unwrap();
    let locked = data.join("locked.db");
    let holder = Connection::open(&locked).unwrap();
    holder
        .execute_batch("CREATE TABLE t(x); PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    init(&repo);
    let out = run(cairn(&repo)
        .arg("snapshot")
        .args(["--sqlite-timeout", "1s", "--sqlite"])
        .arg(data.join("not-a-db"))
        .arg("--sqlite")
        .arg(&corrupt)
        .arg("--sqlite")
        .arg(&locked)
        .arg("--sqlite")
        .arg(data.join("missing.db"))
        .arg("--sqlite")
        .arg(&good));
    assert_eq!(out.status.code(), Some(3), "stored, but incomplete");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "not-a-db: not an SQLite database",
        "corrupt.db: database is corrupt",
        "locked.db: database is locked",
        "missing.db: database does not exist",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from {stderr}");
    }
    let listing = ok(cairn(&repo).args(["ls", "latest"]));
    assert!(listing.contains("good.db"), "{listing}");
    drop(holder);
}

#[test]
fn killed_captures_leave_no_temporary_files_and_no_lock() {
    let scratch = Scratch::new("sqlite-kill");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db_path = data.join("big.db");
    {
        let db = wal_database(&db_path);
        db.execute_batch("BEGIN").unwrap();
        for i in 0..12_000 {
            db.execute("INSERT INTO a(body) VALUES (?1)", [text_row(8000, i)]).unwrap();
        }
        db.execute_batch("COMMIT").unwrap();
    }
    init(&repo);
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        // Signal as soon as the capture has written its first pack: mid-capture.
        let packs = pack_count(&repo);
        let mut command = cairn(&repo);
        command.args(["--quiet", "snapshot", "--sqlite"]).arg(&db_path);
        let mut child = default_signals(&mut command).spawn().unwrap();
        while pack_count(&repo) == packs && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(300));
        }
        assert!(child.try_wait().unwrap().is_none(), "{name}: the capture ended before it could be interrupted");
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        eprintln!("{name}: {status}");
        assert!(!status.success(), "{name} ended the run");
        // No lock survives: a writer gets an immediate write lock and can checkpoint fully.
        let db = Connection::open(&db_path).unwrap();
        db.busy_timeout(Duration::ZERO).unwrap();
        db.execute_batch("BEGIN IMMEDIATE; INSERT INTO b(body) VALUES ('after'); COMMIT;").unwrap();
        let (busy, _, _): (i64, i64, i64) =
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        assert_eq!(busy, 0, "checkpoint not blocked after {name}");
    }
    // The next run cleans up whatever the killed runs left in tmp/ and succeeds.
    ok(cairn(&repo).arg("snapshot").arg("--sqlite").arg(&db_path));
    let left: Vec<_> = fs::read_dir(repo.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let stray: Vec<_> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("cairn"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn databases_are_stored_one_chunk_per_page() {
    let scratch = Scratch::new("sqlite-pages");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db_path = data.join("app.db");
    {
        let db = wal_database(&db_path);
        for i in 0..2000 {
            db.execute("INSERT INTO a(body) VALUES (?1)", [text_row(300, i)]).unwrap();
        }
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let image = fs::read(&db_path).unwrap();
    let distinct: std::collections::HashSet<[u8; 32]> =
        image.chunks(4096).map(|p| *blake3::hash(p).as_bytes()).collect();
    init(&repo);
    let out = json(cairn(&repo).arg("snapshot").arg("--sqlite").arg(&db_path));
    // Every distinct page is one data blob; the one tree blob is the rest.
    assert_eq!(out["summary"]["blobs_added"].as_u64().unwrap(), distinct.len() as u64 + 1, "{out}");
    assert_eq!(out["summary"]["bytes"].as_u64().unwrap(), image.len() as u64);
    // Restoring onto identical content writes nothing, and a drill verifies it page by page.
    let target = scratch.join("out");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    let again = json(cairn(&repo).args(["restore", "latest", "--skip-identical", "--target"]).arg(&target));
    assert_eq!(again["summary"]["files_unchanged"], 1, "{again}");
    let drill = json(cairn(&repo).args(["drill", "--scratch"]).arg(scratch.join("drills")));
    assert_eq!(drill["checks_failed"], 0, "{drill}");
    assert_eq!(drill["databases"][0]["result"], "ok");
}

#[test]
fn raw_sqlite_snapshots_restore_the_database_with_its_wal() {
    let scratch = Scratch::new("sqlite-raw");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db = wal_database(&data.join("app.db"));
    db.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    for i in 0..100 {
        db.execute("INSERT INTO a(body) VALUES (?1)", [format!("r{i}")]).unwrap();
    }
    init(&repo);
    ok(cairn(&repo).args(["snapshot", "--raw-sqlite"]).arg(&data).arg("--sqlite").arg(data.join("app.db")));
    drop(db);
    let listing = ok(cairn(&repo).args(["ls", "latest"]));
    assert!(listing.contains("app.db-wal"), "raw mode stores the companions: {listing}");
    let target = scratch.join("out");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert!(target.join("app.db-wal").exists(), "the restored WAL is kept beside its database");
    assert_eq!(counts(&target.join("app.db")).0, 100, "the WAL's commits are there");
}
