//! Compression dictionaries (store-format/dictionary.md): a large database's pages are compressed
//! with a dictionary trained on its first pages and kept for its next snapshots; every reader
//! decodes them, sync carries the dictionary, prune keeps it, and a lost or damaged one is named
//! and fails only the files that need it.

use std::fs;
use std::path::{Path, PathBuf};

use cairn::backend::Backend as _;

use crate::backends::{s3, BUCKET};
use crate::sqlite::{text_row, wal_database};
use crate::support::*;

/// A database of about 9 MiB of text rows, checkpointed so that its file is its whole content.
fn database(path: &Path, rows: u64) {
    let db = wal_database(path);
    db.execute_batch("BEGIN").unwrap();
    for i in 0..rows {
        db.execute("INSERT INTO a(body) VALUES (?1)", [text_row(3000, i)]).unwrap();
    }
    db.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
}

/// Rewrites `rows` rows from `first` on, as a day of updates does.
fn update(path: &Path, first: u64, rows: u64) {
    let db = wal_database(path);
    for i in first..first + rows {
        db.execute("UPDATE a SET body = ?1 WHERE id = ?2", (text_row(3000, 1_000_000 + i), i as i64)).unwrap();
    }
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
}

fn dictionaries(repo: &Path) -> Vec<PathBuf> {
    match fs::read_dir(repo.join("dicts")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Restores the latest snapshot of `repo` and returns the database's bytes.
fn restored(repo: &Path, target: &Path) -> Vec<u8> {
    let _ = fs::remove_dir_all(target);
    ok(cairn(repo).args(["restore", "latest", "--target"]).arg(target));
    fs::read(target.join("app.db")).unwrap()
}

#[test]
fn a_large_database_is_stored_with_a_dictionary_that_every_reader_uses() {
    let scratch = Scratch::new("dict-readers");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db = data.join("app.db");
    database(&db, 3000);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&data));
    assert_eq!(dictionaries(&repo).len(), 1, "one dictionary, trained on the database");
    // The packs holding its pages are version 3, whose trailer lists it; the others version 1.
    let mut versions: Vec<u16> = packs_by_size(&repo)
        .iter()
        .map(|(pack, _)| {
            let bytes = fs::read(pack).unwrap();
            u16::from_le_bytes([bytes[8], bytes[9]])
        })
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions, [1, 3]);
    update(&db, 1, 60);
    let image = fs::read(&db).unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&data));
    assert_eq!(dictionaries(&repo).len(), 1, "the next snapshot uses the same dictionary");
    ok(cairn(&repo).args(["check", "--read-data"]));
    assert!(restored(&repo, &scratch.join("out")) == image, "the restored database differs");

    // sync into a new repository copies packs, and the dictionary with them.
    let copy = scratch.join("copy");
    ok(cairn(&repo).arg("sync").arg("--to").arg(&copy));
    assert_eq!(dictionaries(&copy).len(), 1);
    ok(cairn(&copy).args(["check", "--read-data"]));
    assert!(restored(&copy, &scratch.join("out")) == image, "the copy restores a different database");
    // Into a repository of other keys every blob is encoded again (without the dictionary).
    let other = scratch.join("other");
    init(&other);
    ok(cairn(&repo).arg("sync").arg("--to").arg(&other));
    ok(cairn(&other).args(["check", "--read-data"]));
    assert!(restored(&other, &scratch.join("out")) == image, "the re-encoded copy differs");

    // prune keeps the dictionary that the snapshot it keeps needs; its repacked packs list it,
    // so a plain check would still see it lost.
    let pruned = ok(cairn(&repo).args(["forget", "--keep-last", "1", "--prune", "--max-unused", "0"]));
    assert!(pruned.contains("repack 1") || pruned.contains("repack 2"), "{pruned}");
    assert_eq!(dictionaries(&repo).len(), 1);
    ok(cairn(&repo).args(["check", "--read-data"]));
    assert!(restored(&repo, &scratch.join("out")) == image);
    let [dictionary] = dictionaries(&repo).try_into().unwrap();
    let kept = fs::read(&dictionary).unwrap();
    fs::remove_file(&dictionary).unwrap();
    let out = run(cairn(&repo).arg("check"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("app.db"));
    fs::write(&dictionary, kept).unwrap();
}

/// `data/` holding a database large enough for a dictionary, and the database's bytes.
pub fn database_in(scratch: &Scratch) -> (PathBuf, Vec<u8>) {
    let data = scratch.join("data");
    fs::create_dir_all(&data).unwrap();
    database(&data.join("app.db"), 3000);
    let image = fs::read(data.join("app.db")).unwrap();
    (data, image)
}

/// `data/` holding a database large enough for a dictionary and `notes.txt`, snapshotted into a
/// new `repo`; returns both and the dictionary's file.
fn database_and_a_file_snapshotted(scratch: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    database(&data.join("app.db"), 3000);
    fs::write(data.join("notes.txt"), b"not compressed with a dictionary").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&data));
    let [dictionary] = dictionaries(&repo).try_into().unwrap();
    (data, repo, dictionary)
}

#[test]
fn a_lost_or_damaged_dictionary_is_named_and_fails_only_its_database() {
    let scratch = Scratch::new("dict-lost");
    let (data, repo, dictionary) = database_and_a_file_snapshotted(&scratch);
    let name = dictionary.file_name().unwrap().to_str().unwrap().to_string();
    let original = fs::read(&dictionary).unwrap();
    let offsite = scratch.join("offsite");
    ok(cairn(&repo).arg("sync").arg("--to").arg(&offsite));

    let restore_fails_the_database = |why: &str| {
        let target = scratch.join("out");
        let _ = fs::remove_dir_all(&target);
        let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("app.db") && err.contains(&format!("dicts/{name}")) && err.contains(why), "{err}");
        assert_eq!(fs::read(target.join("notes.txt")).unwrap(), b"not compressed with a dictionary");
        assert!(!target.join("app.db").exists());
    };

    flip_byte(&dictionary, original.len() as u64 / 2, 0x10);
    let out = run(cairn(&repo).arg("check"));
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains(&format!("dicts/{name}")) && said.contains("damaged"), "{said}");
    restore_fails_the_database("damaged");

    // A lost dictionary is found by a plain check too: the trailers of the packs whose blobs
    // name it list it. The database is what it costs, and nothing else.
    fs::remove_file(&dictionary).unwrap();
    for read_data in [false, true] {
        let out = run(cairn(&repo).arg("check").args(read_data.then_some("--read-data")));
        let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert_ne!(out.status.code(), Some(0), "{said}");
        assert!(said.contains(&format!("dicts/{name}: the dictionary is missing")), "{said}");
        assert!(said.contains("app.db") && !said.contains("notes.txt"), "{said}");
    }
    restore_fails_the_database("missing");

    // The next snapshot reuses the database's stored pages, which still name the lost
    // dictionary: it says so and is incomplete; it trains another for the pages it stores.
    update(&data.join("app.db"), 1, 10);
    let out = run(cairn(&repo).arg("snapshot").arg(&data));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "stored, but incomplete: {err}");
    assert!(err.contains("app.db") && err.contains("need a dictionary that cannot be read"), "{err}");
    assert_eq!(dictionaries(&repo).len(), 1);

    // As check advises, a copy that has it gives it back, though it has no snapshot to send:
    // then everything checks and restores.
    let out = ok(cairn(&offsite).arg("sync").arg("--to").arg(&repo));
    assert!(out.contains("1 dictionary"), "{out}");
    assert_eq!(dictionaries(&repo).len(), 2);
    ok(cairn(&repo).args(["check", "--read-data"]));
    assert!(restored(&repo, &scratch.join("out")) == fs::read(data.join("app.db")).unwrap());
}

/// A database gets one dictionary, once it is large enough, however it grew; one whose pages do
/// not compress gets none.
#[test]
fn a_database_gets_one_dictionary_once_large_and_compressible() {
    let scratch = Scratch::new("dict-growth");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let db = data.join("app.db");
    database(&db, 1900);
    assert!(fs::metadata(&db).unwrap().len() < 8 << 20);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&data));
    assert!(dictionaries(&repo).is_empty(), "a small database needs none");
    // It grows past the threshold: its first 8 MiB of pages are stored already without a
    // dictionary, and those that change there each day are new every time.
    let conn = wal_database(&db);
    for i in 1900..2300u64 {
        conn.execute("INSERT INTO a(body) VALUES (?1)", [text_row(3000, i)]).unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(conn);
    for day in 0..3 {
        ok(cairn(&repo).arg("snapshot").arg(&data));
        update(&db, 1 + day * 7, 5);
    }
    assert_eq!(dictionaries(&repo).len(), 1, "trained once, then reused");
    ok(cairn(&repo).args(["check", "--read-data"]));

    let blobs = scratch.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let conn = wal_database(&blobs.join("blobs.db"));
    for i in 0..2400u64 {
        conn.execute("INSERT INTO a(body) VALUES (?1)", [noise(4000, i)]).unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(conn);
    let other = scratch.join("other");
    init(&other);
    ok(cairn(&other).arg("snapshot").arg(&blobs));
    assert!(dictionaries(&other).is_empty(), "pages that do not compress get no dictionary");
}

/// Straight into an object store (the dictionary put create-only, like every file there) and
/// back by pack; and a local repository synced up, its dictionary with it, and again once the
/// copy has lost it.
#[test]
fn a_database_with_a_dictionary_goes_to_an_object_store_and_back() {
    let scratch = Scratch::new("dict-s3");
    let (data, image) = database_in(&scratch);
    let on_s3 = |repo: &Path| {
        let mut command = cairn(repo);
        for (key, value) in s3().env() {
            command.env(key, value);
        }
        command.env("CAIRN_CACHE_DIR", scratch.join("cache"));
        command
    };
    let unique = |name: &str| PathBuf::from(format!("s3://{BUCKET}/{name}-{}", std::process::id()));

    let direct = unique("dict-direct");
    ok(on_s3(&direct).arg("init"));
    ok(on_s3(&direct).arg("snapshot").arg(&data));
    ok(on_s3(&direct).args(["check", "--read-data"]));
    let target = scratch.join("from-direct");
    ok(on_s3(&direct).args(["restore", "latest", "--target"]).arg(&target));
    assert!(fs::read(target.join("app.db")).unwrap() == image, "restored from S3, the database differs");

    let local = scratch.join("local");
    init(&local);
    ok(cairn(&local).arg("snapshot").arg(&data));
    let synced = unique("dict-synced");
    ok(on_s3(&local).arg("sync").arg("--to").arg(&synced));
    let target = scratch.join("from-synced");
    ok(on_s3(&synced).args(["restore", "latest", "--target"]).arg(&target));
    assert!(fs::read(target.join("app.db")).unwrap() == image, "synced to S3, the database differs");

    // The offsite copy loses its dictionary: its plain check says so, and the next sync, with no
    // snapshot to send, puts it back.
    let offsite = s3().backend(synced.to_str().unwrap().trim_start_matches(&format!("s3://{BUCKET}/")));
    let listed = offsite.list("dicts").unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    offsite.delete(&listed[0].0).unwrap();
    let out = run(on_s3(&synced).arg("check"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("the dictionary is missing"));
    let out = ok(on_s3(&local).arg("sync").arg("--to").arg(&synced));
    assert!(out.contains("0 snapshots copied") && out.contains("1 dictionary"), "{out}");
    ok(on_s3(&synced).args(["check", "--read-data"]));
}

/// `kill -9` of the first snapshot of a large database, as its dictionary is written and a
/// little after, as its first pack is, and as its first index file is: each time the repository
/// checks clean (a dictionary no pack names yet is harmless), the next snapshot completes and
/// the database restores exactly.
#[test]
fn a_snapshot_killed_around_its_dictionary_leaves_a_repository_that_checks_and_goes_on() {
    let scratch = Scratch::new("dict-killed");
    let (data, image) = database_in(&scratch);
    let count = |repo: &Path, dir: &str| match dir {
        "packs" => pack_count(repo),
        _ => fs::read_dir(repo.join(dir)).map(|d| d.count()).unwrap_or(0),
    };
    let mut outcomes = Vec::new();
    // A file's first appearance in a directory, then a further delay in milliseconds.
    let moments = [("dicts", 0), ("dicts", 3), ("dicts", 15), ("packs", 0), ("index", 0)];
    for (round, (dir, delay)) in moments.into_iter().enumerate() {
        let moment = format!("{dir} + {delay} ms");
        let repo = scratch.join(format!("repo-{round}"));
        init(&repo);
        let mut child = cairn(&repo).args(["--quiet", "snapshot"]).arg(&data).spawn().unwrap();
        while count(&repo, dir) == 0 && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        outcomes.push(format!(
            "{moment}: {} dictionaries, {} packs, {} snapshots{}",
            count(&repo, "dicts"),
            count(&repo, "packs"),
            count(&repo, "snapshots"),
            if finished { " (had finished)" } else { "" }
        ));
        let out = run(cairn(&repo).arg("check"));
        assert!(out.status.success(), "after a kill at {moment}: {}", String::from_utf8_lossy(&out.stderr));
        ok(cairn(&repo).arg("snapshot").arg(&data));
        ok(cairn(&repo).args(["check", "--read-data"]));
        assert!(restored(&repo, &scratch.join("out")) == image, "after a kill at {moment}");
        assert!(dictionaries(&repo).len() <= 2, "after a kill at {moment}: {:?}", dictionaries(&repo));
    }
    eprintln!("{}", outcomes.join("\n"));
}

/// With a dictionary lost and no copy of it anywhere, `repair index` drops the pages that need it
/// from the index: until the database is snapshotted again, check names it as damaged in the
/// earlier snapshots; the next snapshot stores the pages again (same ids), complete, and with
/// them the earlier snapshots restore too.
#[test]
fn repair_index_drops_the_pages_of_a_lost_dictionary_so_the_next_snapshot_stores_them_again() {
    let scratch = Scratch::new("dict-repair");
    let (data, repo, dictionary) = database_and_a_file_snapshotted(&scratch);
    let saved = fs::read(&dictionary).unwrap();
    fs::remove_file(&dictionary).unwrap();

    // Before the repair, every snapshot of the database is incomplete; a repair without the flag
    // leaves the blobs be.
    assert_eq!(run(cairn(&repo).arg("snapshot").arg(&data)).status.code(), Some(3));
    let untouched = ok(cairn(&repo).args(["repair", "index"]));
    assert!(untouched.contains("nothing to rebuild"), "{untouched}");
    let out = run(cairn(&repo).args(["repair", "index", "--drop-lost-dictionaries"]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the dictionary is missing") && err.contains("dropped from the index"), "{err}");
    // Nothing left to drop: a second repair changes nothing, reading every trailer too.
    let again = ok(cairn(&repo).args(["repair", "index", "--drop-lost-dictionaries", "--read-all-packs"]));
    assert!(again.contains("nothing to rebuild"), "{again}");
    // Should the dictionary turn up, reading every trailer brings its blobs back.
    fs::write(&dictionary, &saved).unwrap();
    ok(cairn(&repo).args(["repair", "index", "--read-all-packs"]));
    ok(cairn(&repo).args(["check", "--read-data"]));
    fs::remove_file(&dictionary).unwrap();
    ok(cairn(&repo).args(["repair", "index", "--drop-lost-dictionaries"]));
    let out = run(cairn(&repo).arg("check"));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && said.contains("app.db") && !said.contains("notes.txt"), "{said}");

    ok(cairn(&repo).arg("snapshot").arg(&data));
    ok(cairn(&repo).args(["check", "--read-data"]));
    let image = fs::read(data.join("app.db")).unwrap();
    assert!(restored(&repo, &scratch.join("out")) == image);
    let first = json(cairn(&repo).arg("snapshots"))[0]["id"].as_str().unwrap().to_string();
    let target = scratch.join("first");
    ok(cairn(&repo).args(["restore", &first, "--target"]).arg(&target));
    assert!(fs::read(target.join("app.db")).unwrap() == image, "the first snapshot restores again");
    // The dropped pages' bytes stay in the pack beside its other blobs (notes.txt's, live) until
    // prune repacks it: they count as dead though no index entry lists them.
    let plan = json(cairn(&repo).args(["prune", "--max-unused", "0", "--dry-run"]));
    let dead = plan["plan"]["dead_bytes"].as_u64().unwrap();
    assert!(dead as usize > image.len() / 4, "dead bytes {dead}: the dropped pages are not counted");
    let before = packs_size(&repo);
    ok(cairn(&repo).args(["prune", "--max-unused", "0"]));
    assert!(packs_size(&repo) + dead / 2 < before, "{} of {before} bytes left", packs_size(&repo));
    ok(cairn(&repo).args(["check", "--read-data"]));
    assert!(restored(&repo, &scratch.join("out")) == image);
    let plan = json(cairn(&repo).args(["prune", "--max-unused", "0", "--dry-run"]));
    assert_eq!(plan["plan"]["dead_bytes"].as_u64(), Some(0), "{plan}");
}

/// The bytes of every pack in `repo`.
fn packs_size(repo: &Path) -> u64 {
    let mut total = 0;
    for dir in fs::read_dir(repo.join("packs")).unwrap() {
        for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
            total += pack.unwrap().metadata().unwrap().len();
        }
    }
    total
}

/// A damaged dictionary file (its bytes no longer hash to its name) counts as lost for `repair
/// index --drop-lost-dictionaries` too; after it and a new snapshot, the database restores and
/// only the damaged file is left for check to report.
#[test]
fn repair_index_drops_the_pages_of_a_damaged_dictionary_too() {
    let scratch = Scratch::new("dict-repair-damaged");
    let (data, repo, dictionary) = database_and_a_file_snapshotted(&scratch);
    flip_byte(&dictionary, fs::metadata(&dictionary).unwrap().len() / 2, 0x10);
    let out = run(cairn(&repo).args(["repair", "index", "--drop-lost-dictionaries"]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && err.contains("dropped from the index"), "{err}");
    ok(cairn(&repo).arg("snapshot").arg(&data));
    assert!(restored(&repo, &scratch.join("out")) == fs::read(data.join("app.db")).unwrap());
    let out = run(cairn(&repo).arg("check"));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let name = dictionary.file_name().unwrap().to_str().unwrap();
    assert!(!out.status.success() && said.contains(name) && !said.contains("app.db"), "{said}");
    assert!(said.contains("move those files out of dicts/"), "{said}");
}
