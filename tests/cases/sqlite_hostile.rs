//! Databases planted to make a snapshot write, delete, hang or lie: a snapshot only ever reads
//! what it backs up, whoever can write into the tree.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::support::*;

/// A rollback-journal database of one table at `path`; its bytes.
fn rollback_database(path: &Path) -> Vec<u8> {
    let db = Connection::open(path).unwrap();
    db.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES ('kept');").unwrap();
    drop(db);
    fs::read(path).unwrap()
}

/// Writes a hot rollback journal beside the database at `db` that names `victim` as its
/// super-journal: SQLite rolling it back deletes the super-journal once no journal needs it
/// (sqlite.org/fileformat2.html, "The Rollback Journal").
fn forge_hot_journal(db: &Path, victim: &Path) {
    const MAGIC: [u8; 8] = cairn::source::sqlite::JOURNAL_MAGIC;
    let pages = (fs::metadata(db).unwrap().len() / 4096) as u32;
    let mut journal = MAGIC.to_vec();
    for field in [0u32, 0, pages, 512, 4096] {
        journal.extend_from_slice(&field.to_be_bytes()); // records, nonce, pages, sector, page size
    }
    journal.resize(512, 0);
    let name = victim.as_os_str().as_encoded_bytes();
    journal.extend_from_slice(&(0x4000_0000u32 / 4096 + 1).to_be_bytes()); // the lock-byte page
    journal.extend_from_slice(name);
    journal.extend_from_slice(&(name.len() as u32).to_be_bytes());
    journal.extend_from_slice(&name.iter().map(|&b| b as u32).sum::<u32>().to_be_bytes());
    journal.extend_from_slice(&MAGIC);
    fs::write(db.with_file_name("app.db-journal"), journal).unwrap();
}

/// A hot journal left by a crash (or forged by whoever can write into the tree) is never rolled
/// back by a snapshot: rolling back writes the database, deletes the journal, and deletes the
/// file the journal names as its super-journal, anywhere on the machine. One that names a
/// super-journal is not stored either (restored where that file is missing, SQLite would take
/// the transaction for committed): the database is reported, and nothing is changed.
#[test]
fn a_hot_journal_naming_a_super_journal_is_reported_and_neither_rolled_back_nor_followed() {
    let scratch = Scratch::new("sqlite-hot-journal");
    let (data, repo, outside) = (scratch.join("data"), scratch.join("repo"), scratch.join("outside"));
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("keep");
    fs::write(&victim, b"precious").unwrap();
    let db = data.join("app.db");
    let image = rollback_database(&db);
    forge_hot_journal(&db, &victim);
    let journal = fs::read(data.join("app.db-journal")).unwrap();
    init(&repo);
    for how in [&["snapshot"][..], &["snapshot", "--sqlite"]] {
        let source = if how.len() == 1 { data.clone() } else { db.clone() };
        let out = run(cairn(&repo).args(how).arg(&source));
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{said}");
        assert!(said.contains("app.db") && said.contains("hot journal"), "{said}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious", "the file the journal names is still there");
        assert_eq!(fs::read(&db).unwrap(), image, "the database is not written");
        assert_eq!(fs::read(data.join("app.db-journal")).unwrap(), journal, "the journal is left as it was");
    }
}

/// A database copied in the middle of a write transaction, with the journal that transaction
/// wrote (what a crash leaves): the snapshot stores both, and the restored database, once
/// opened, is the one from before the transaction, whole.
#[test]
fn a_database_left_by_a_crash_restores_to_its_last_commit() {
    let scratch = Scratch::new("sqlite-crashed");
    let (live, data, repo) = (scratch.join("live"), scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&live).unwrap();
    fs::create_dir_all(&data).unwrap();
    let writer = Connection::open(live.join("app.db")).unwrap();
    writer.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA cache_size=1; CREATE TABLE t(x);").unwrap();
    writer.execute_batch("BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<2000) INSERT INTO t SELECT printf('%0500d', i) FROM n; COMMIT;").unwrap();
    // A transaction too large for its cache writes pages into the database before it commits.
    writer.execute_batch("BEGIN; UPDATE t SET x = 'changed ' || x;").unwrap();
    for name in ["app.db", "app.db-journal"] {
        fs::copy(live.join(name), data.join(name)).unwrap();
    }
    writer.execute_batch("ROLLBACK").unwrap();
    assert_ne!(fs::read(data.join("app.db")).unwrap(), fs::read(live.join("app.db")).unwrap(), "pages were spilled");
    init(&repo);
    let out = run(cairn(&repo).arg("snapshot").arg(&data));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("hot journal"), "{said}");
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    let restored = Connection::open(target.join("app.db")).unwrap();
    let check: String = restored.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
    let (rows, changed): (i64, i64) = restored
        .query_row("SELECT count(*), sum(x LIKE 'changed%') FROM t", [], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    assert_eq!((rows, changed), (2000, 0), "the last commit, without the interrupted transaction");
    assert!(!target.join("app.db-journal").exists(), "SQLite rolled the journal back");
    // The database file alone is not the database: a drill does not fail on it.
    ok(cairn(&repo).arg("drill"));
    // Unchanged, it is read again with its journal, never taken from the last snapshot alone.
    let again = json(cairn(&repo).arg("snapshot").arg(&data));
    assert_eq!(again["complete"], true, "{again}");
    let listed = ok(cairn(&repo).args(["ls", again["id"].as_str().unwrap()]));
    assert!(listed.lines().any(|line| line == "/app.db-journal"), "{listed}");
}

/// A FIFO (or another file that is not a regular one) in the place of a database's journal,
/// WAL or shared-memory file: opening it would wait for a writer forever. The database is
/// reported and the snapshot goes on.
#[test]
fn a_fifo_beside_a_database_neither_hangs_the_snapshot_nor_passes_silently() {
    for companion in ["app.db-journal", "app.db-wal", "app.db-shm"] {
        let scratch = Scratch::new("sqlite-fifo");
        let (data, repo) = (scratch.join("data"), scratch.join("repo"));
        fs::create_dir_all(&data).unwrap();
        rollback_database(&data.join("app.db"));
        fs::write(data.join("notes.txt"), b"still stored").unwrap();
        let fifo = std::ffi::CString::new(data.join(companion).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        init(&repo);
        let mut child =
            cairn(&repo).arg("snapshot").arg(&data).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("{companion} as a FIFO: the snapshot hangs");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{companion}: {said}");
        assert!(said.contains("app.db"), "{companion}: {said}");
        assert!(fs::metadata(data.join(companion)).unwrap().file_type().is_fifo());
        assert!(ok(cairn(&repo).args(["ls", "latest"])).contains("notes.txt"));
    }
}

/// `--sqlite` names a database: a symlink, a directory, a FIFO or a device there is reported as
/// not one (exit 3), never stored as something else with success.
#[test]
fn sqlite_given_something_other_than_a_database_file_reports_it() {
    let scratch = Scratch::new("sqlite-not-a-file");
    let repo = scratch.join("repo");
    let real = scratch.join("real.db");
    rollback_database(&real);
    let link = scratch.join("link.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let dir = scratch.join("dir.db");
    fs::create_dir_all(&dir).unwrap();
    let fifo = scratch.join("fifo.db");
    let name = std::ffi::CString::new(fifo.clone().into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    init(&repo);
    for path in [&link, &dir, &fifo, Path::new("/dev/null")] {
        let out = run(cairn(&repo).arg("snapshot").arg("--sqlite").arg(path));
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{}: {said}", path.display());
        assert!(said.contains("not an SQLite database"), "{}: {said}", path.display());
    }
}

/// A database locked by another process is waited for `--sqlite-timeout`, not five seconds more
/// (SQLite's default wait, which the first, read-only, attempt kept).
#[test]
fn a_locked_database_is_waited_for_the_timeout_given() {
    let scratch = Scratch::new("sqlite-locked-wait");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let locked = data.join("locked.db");
    let holder = Connection::open(&locked).unwrap();
    holder
        .execute_batch("CREATE TABLE t(x); PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    init(&repo);
    let started = Instant::now();
    let out = run(cairn(&repo).args(["snapshot", "--sqlite-timeout", "1s", "--sqlite"]).arg(&locked));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked.db: database is locked"));
    assert!(took < Duration::from_millis(4500), "waited {took:?} for a timeout of 1 s");
    drop(holder);
}

/// A database damaged inside its pages (not found by a snapshot, which reads pages without
/// checking the b-trees) is restored as the snapshot holds it where no file is in the way, and
/// reported; over an existing file it is refused and the file kept.
#[test]
fn a_damaged_database_is_restored_as_it_is_only_where_nothing_is_in_the_way() {
    let scratch = Scratch::new("sqlite-damaged-restore");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db = data.join("app.db");
    {
        let connection = Connection::open(&db).unwrap();
        connection.execute_batch("CREATE TABLE t(x); BEGIN;").unwrap();
        for i in 0..2000 {
            connection.execute("INSERT INTO t VALUES (?1)", [format!("{i:0>500}")]).unwrap();
        }
        connection.execute_batch("COMMIT").unwrap();
    }
    let mut image = fs::read(&db).unwrap();
    image[3 * 4096..23 * 4096].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7 % 251) as u8);
    fs::write(&db, &image).unwrap();
    init(&repo);
    run(cairn(&repo).arg("snapshot").arg(&data));
    let target = scratch.join("out");
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("app.db") && said.contains("integrity_check"), "{said}");
    assert!(fs::read(target.join("app.db")).unwrap() == image, "the snapshot's image, as it is");
    fs::write(target.join("app.db"), b"the file in the way").unwrap();
    let out = run(cairn(&repo).args(["restore", "latest", "--overwrite", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("existing file kept"));
    assert_eq!(fs::read(target.join("app.db")).unwrap(), b"the file in the way");
}
