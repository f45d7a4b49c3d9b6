//! `cairn mount`: the real binary mounts a real repository with FUSE, every file is read back
//! through the mount and compared with its source, writes fail, and the mount ends cleanly.
//! FUSE must work here (/dev/fuse, and fusermount to unmount): a machine without it fails these
//! tests rather than skipping them.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A `cairn mount` running in the background, its standard error in a file; unmounted (and
/// killed, if it still runs) when dropped, so a failing test leaves no mount behind.
struct Mounted {
    child: Option<Child>,
    at: PathBuf,
    log: PathBuf,
}

impl Mounted {
    fn start(repo: &Path, at: &Path, log: PathBuf, extra: &[&str]) -> Mounted {
        let mut command = cairn(repo);
        command.arg("mount").arg(at).args(extra).stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap());
        let child = default_signals(&mut command).spawn().expect("cairn mount starts");
        let mut mounted = Mounted { child: Some(child), at: at.to_path_buf(), log };
        mounted.wait_until_mounted();
        mounted
    }

    /// Waits for the mount to show its top directories; panics with cairn's message if it
    /// ends first (no FUSE here, say) or takes too long.
    fn wait_until_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.at.join("snapshots").is_dir() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cairn mount ended with {status} before mounting: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "not mounted after 60 s: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for cairn to end (after an unmount or a signal) and returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(Instant::now() < deadline, "cairn mount still runs 30 s after its unmount");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = fusermount(&self.at);
            std::thread::sleep(Duration::from_millis(200));
            let _ = child.kill();
            let _ = child.wait();
            let _ = fusermount(&self.at);
        }
    }
}

/// `fusermount -u` (fuse2) or `fusermount3 -u` (fuse3), whichever is installed.
fn fusermount(at: &Path) -> std::process::Output {
    for program in ["fusermount", "fusermount3"] {
        if let Ok(output) = Command::new(program).arg("-u").arg(at).output() {
            return output;
        }
    }
    panic!("neither fusermount nor fusermount3 is installed (Debian: fuse3)");
}

/// Nested directories, a name that is not UTF-8, symlinks (one dangling), hard links, an empty
/// file, a FIFO, modes and owners, times to the nanosecond, and a file of several MiB that
/// spans many chunks.
fn make_tree(root: &Path) {
    let deep = root.join("a/b/c/d");
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf.txt"), b"deep down\n").unwrap();
    fs::write(root.join("a/b/notes.txt"), b"some notes\n".repeat(100)).unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1.txt")), b"not utf-8 name").unwrap();
    fs::create_dir(root.join(std::ffi::OsStr::from_bytes(b"dir-\xff"))).unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"dir-\xff/inner")), b"inside").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    write_noise_file(&root.join("big.bin"), 6 * 1024 * 1024 + 12_345, 7);
    fs::write(root.join("a/original"), b"linked content\n").unwrap();
    fs::hard_link(root.join("a/original"), root.join("a/b/second-link")).unwrap();
    fs::hard_link(root.join("a/original"), root.join("third-link")).unwrap();
    symlink("b/notes.txt", root.join("a/relative-link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::write(root.join("secret"), b"owner only").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(root.join("secret"), Some(1234), Some(5678)).unwrap();
    }
    set_mtime(&root.join("a/b/notes.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("dangling"), 1_500_000_000, 987_654_321);
    set_mtime(&root.join("empty"), -86_400, 0);
    // Directories last: entries made in them move their times.
    set_mtime(&deep, 1_400_000_000, 5);
    set_mtime(&root.join("a"), 1_300_000_000, 0);
}

/// A SQLite database in WAL mode with a few thousand rows.
fn make_database(path: &Path) {
    let db = crate::sqlite::wal_database(path);
    db.execute_batch("BEGIN").unwrap();
    for i in 0..3000 {
        db.execute("INSERT INTO a(body) VALUES (?1)", [format!("row {i} {}", "x".repeat(i % 200))]).unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
}

fn expect_read_only(result: std::io::Result<()>, what: &str) {
    match result {
        Ok(()) => panic!("{what} succeeded on the read-only mount"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}"),
    }
}

#[test]
fn every_file_reads_back_through_the_mount_and_writes_fail() {
    let scratch = Scratch::new("mount");
    let (data, repo, mnt, dbdir) =
        (scratch.join("data"), scratch.join("repo"), scratch.join("mnt"), scratch.join("db"));
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&dbdir).unwrap();
    fs::create_dir(&mnt).unwrap();
    make_tree(&data);
    make_database(&dbdir.join("app.db"));
    init(&repo);
    let tree = json(cairn(&repo).args(["snapshot", "--source", "tree"]).arg(&data));
    let db = json(cairn(&repo).args(["snapshot", "--source", "db", "--sqlite"]).arg(dbdir.join("app.db")));
    let restored = scratch.join("restored-db");
    ok(cairn(&repo).args(["restore", db["id"].as_str().unwrap(), "--target"]).arg(&restored));

    let mut mounted = Mounted::start(&repo, &mnt, scratch.join("mount.log"), &[]);
    // The same snapshot by source, by time and by id.
    let by_source = mnt.join("sources/tree/latest");
    assert_same_tree(&data, &by_source);
    let short = &tree["id"].as_str().unwrap()[..8];
    assert_same_tree(&data, &mnt.join("ids").join(short));
    let listed: Vec<String> =
        fs::read_dir(mnt.join("snapshots")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let name = listed.iter().find(|n| n.contains(short)).unwrap_or_else(|| panic!("{short} in {listed:?}"));
    assert!(name.ends_with(&format!("-{short}-tree")), "{name}");
    assert_same_tree(&data, &mnt.join("snapshots").join(name));
    let latest = fs::read_link(mnt.join("snapshots/latest")).unwrap();
    assert!(latest.to_str().unwrap().ends_with(&format!("-{}-db", &db["id"].as_str().unwrap()[..8])), "{latest:?}");
    // The database reads as restore writes it, and SQLite finds it whole where it lies.
    let db_view = mnt.join("sources/db/latest");
    assert_same_tree(&restored, &db_view);
    let captured = db_view.join(fs::read_dir(&db_view).unwrap().next().unwrap().unwrap().file_name());
    let uri = format!("file:{}?immutable=1", captured.display());
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let connection = rusqlite::Connection::open_with_flags(uri, flags).unwrap();
    let rows: i64 = connection.query_row("SELECT count(*) FROM a", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 3000);
    drop(connection);
    // A read at an odd offset across a chunk border, and the end of the big file.
    let mut big = fs::File::open(by_source.join("big.bin")).unwrap();
    let expected = fs::read(data.join("big.bin")).unwrap();
    std::io::Seek::seek(&mut big, std::io::SeekFrom::Start(3_000_001)).unwrap();
    let mut tail = Vec::new();
    big.read_to_end(&mut tail).unwrap();
    assert!(tail == expected[3_000_001..], "the tail of big.bin from an odd offset differs");
    drop(big); // an open file keeps the mount busy

    // Nothing can be changed.
    let file = by_source.join("a/b/notes.txt");
    expect_read_only(fs::write(&file, b"changed"), "overwriting a file");
    expect_read_only(fs::OpenOptions::new().append(true).open(&file).map(drop), "opening for append");
    expect_read_only(fs::write(by_source.join("new-file"), b"x"), "creating a file");
    expect_read_only(fs::create_dir(by_source.join("new-dir")), "making a directory");
    expect_read_only(fs::remove_file(&file), "removing a file");
    expect_read_only(fs::remove_dir_all(by_source.join("a/b/c")), "removing a directory");
    expect_read_only(fs::rename(&file, by_source.join("moved")), "renaming");
    expect_read_only(fs::set_permissions(&file, fs::Permissions::from_mode(0o777)), "chmod");
    expect_read_only(symlink("x", by_source.join("new-link")), "making a symlink");
    expect_read_only(fs::hard_link(&file, by_source.join("new-hard-link")), "making a hard link");
    expect_read_only(fs::create_dir(mnt.join("snapshots/new")), "making a directory at the top");
    assert_eq!(fs::read(&file).unwrap(), b"some notes\n".repeat(100), "the file is as it was");

    let unmount = fusermount(&mnt);
    assert!(unmount.status.success(), "fusermount -u: {}", String::from_utf8_lossy(&unmount.stderr));
    assert_eq!(mounted.wait(), Some(0), "cairn mount after fusermount -u: {}", mounted.stderr());
    assert!(mounted.stderr().contains("unmounted"), "{}", mounted.stderr());
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0, "the mount point is an empty directory again");
}

#[test]
fn new_snapshots_appear_and_a_signal_unmounts_cleanly() {
    let scratch = Scratch::new("mount-signal");
    let (data, repo, mnt) = (scratch.join("data"), scratch.join("repo"), scratch.join("mnt"));
    fs::create_dir_all(&data).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(data.join("file"), b"first").unwrap();
    init(&repo);
    ok(cairn(&repo).args(["snapshot", "--source", "app"]).arg(&data));
    let mut mounted = Mounted::start(&repo, &mnt, scratch.join("mount.log"), &["--source", "app"]);
    assert_eq!(fs::read(mnt.join("sources/app/latest/file")).unwrap(), b"first");
    fs::write(data.join("file"), b"second, longer").unwrap();
    let second = json(cairn(&repo).args(["snapshot", "--source", "app"]).arg(&data));
    ok(cairn(&repo).args(["snapshot", "--source", "other"]).arg(&data));
    // The list is read again when a top directory is listed, at most every few seconds.
    let id = mnt.join("ids").join(&second["id"].as_str().unwrap()[..8]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(mnt.join("ids")).unwrap().count() < 2 || !id.exists() {
        assert!(Instant::now() < deadline, "the new snapshot never appeared: {}", mounted.stderr());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(fs::read(id.join("file")).unwrap(), b"second, longer", "its blobs are read from the new index");
    assert!(!mnt.join("sources/other").exists(), "--source app shows no other source");

    let pid = mounted.child.as_ref().unwrap().id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(mounted.wait(), Some(0), "cairn mount after SIGTERM: {}", mounted.stderr());
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0, "unmounted: {}", mounted.stderr());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "still in the mount table: {mounts}");
}

#[test]
fn a_damaged_chunk_fails_its_read_and_says_which_file() {
    let scratch = Scratch::new("mount-damage");
    let (data, repo, mnt) = (scratch.join("data"), scratch.join("repo"), scratch.join("mnt"));
    fs::create_dir_all(&data).unwrap();
    fs::create_dir(&mnt).unwrap();
    write_noise_file(&data.join("big.bin"), 4 * 1024 * 1024, 11);
    fs::write(data.join("small"), b"intact").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&data));
    // The largest pack holds the big file's chunks: one flipped byte in its middle.
    let (pack, len) = packs_by_size(&repo).pop().unwrap();
    flip_byte(&pack, len / 2, 0x10);
    let mut mounted = Mounted::start(&repo, &mnt, scratch.join("mount.log"), &[]);
    let latest = fs::read_link(mnt.join("snapshots/latest")).unwrap();
    let root = mnt.join("snapshots").join(latest);
    let error = fs::read(root.join("big.bin")).expect_err("a damaged chunk never reads as bytes");
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert!(mounted.stderr().contains("big.bin") && mounted.stderr().contains("warning"), "{}", mounted.stderr());
    assert!(fusermount(&mnt).status.success());
    assert_eq!(mounted.wait(), Some(0), "{}", mounted.stderr());
}

#[test]
fn a_missing_file_or_non_empty_mount_point_is_refused() {
    let scratch = Scratch::new("mount-refused");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("file"), b"x").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&data));
    let refused = |at: &Path, says: &str| {
        let output = run(cairn(&repo).arg("mount").arg(at));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cannot mount at") && stderr.contains(says), "{stderr}");
    };
    refused(&scratch.join("missing"), "does not exist: create an empty directory");
    refused(&data.join("file"), "not a directory");
    refused(&data, "not empty");
    assert_eq!(fs::read(data.join("file")).unwrap(), b"x");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(data.to_str().unwrap()), "nothing mounted: {mounts}");
}

#[test]
fn a_name_that_comes_to_mean_another_snapshot_never_serves_the_old_one() {
    let scratch = Scratch::new("mount-rename");
    let (a, b, repo, mnt) = (scratch.join("a"), scratch.join("b"), scratch.join("repo"), scratch.join("mnt"));
    for (dir, content) in [(&a, "AAAA"), (&b, "BBBB")] {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("f"), content).unwrap();
    }
    fs::create_dir(&mnt).unwrap();
    init(&repo);
    let source = mnt.join("sources/same");
    // The first snapshot is read through the mount by its name, its time; a second one in the
    // same second then takes that time as the name of both (each with its id) until the first is
    // forgotten, when the plain time names the second. Tried until both fall in one second.
    let (mut mounted, name, second) = loop {
        let first = json(cairn(&repo).args(["snapshot", "--source", "same"]).arg(&a));
        let mut mounted = Mounted::start(&repo, &mnt, scratch.join("mount.log"), &[]);
        let name = fs::read_dir(&source).unwrap().map(|e| e.unwrap().file_name()).find(|n| n != "latest").unwrap();
        assert_eq!(fs::read(source.join(&name).join("f")).unwrap(), b"AAAA");
        let second = json(cairn(&repo).args(["snapshot", "--source", "same"]).arg(&b));
        let (first_id, second_id) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
        // The time in seconds, as `cairn snapshots` records it (the snapshot command's own JSON
        // has none: comparing its missing fields made every pair look like one second).
        let listed = json(cairn(&repo).args(["snapshots"]));
        let second_of = |id: &str| {
            let found = listed.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap();
            found["time"].as_i64().unwrap()
        };
        if second_of(first_id) == second_of(second_id) {
            ok(cairn(&repo).args(["forget", first_id]));
            break (mounted, name, second_id.to_string());
        }
        assert!(fusermount(&mnt).status.success());
        assert_eq!(mounted.wait(), Some(0), "{}", mounted.stderr());
        ok(cairn(&repo).args(["forget", first_id, second_id]));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = || fs::read_dir(mnt.join("ids")).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    while ids() != [std::ffi::OsStr::new(&second[..8])] {
        assert!(Instant::now() < deadline, "the list never changed: {}", mounted.stderr());
        std::thread::sleep(Duration::from_millis(250));
    }
    // Past the entries' time to live. While the kernel drops its entry for the old meaning, the
    // name may be missing for a while (seen under CI's load); it must never read as the forgotten
    // snapshot.
    std::thread::sleep(Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(30);
    let read = loop {
        match fs::read(source.join(&name).join("f")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250))
            }
            read => break read.unwrap_or_else(|e| panic!("reading the renamed snapshot: {e}; {}", mounted.stderr())),
        }
    };
    assert_eq!(read, b"BBBB", "the name now means the second");
    assert_eq!(fs::read(source.join("latest/f")).unwrap(), b"BBBB");
    assert!(fusermount(&mnt).status.success());
    assert_eq!(mounted.wait(), Some(0), "{}", mounted.stderr());
}

/// The pack holding blob `id`, by the repository's index.
fn pack_of(repo: &Path, id: &cairn::id::Id) -> cairn::id::Id {
    use cairn::repository::{Location, Passphrase, Repository};
    let repo = Repository::open(&Location::parse(&repo.to_string_lossy()), Passphrase::Given(PASSWORD)).unwrap();
    let index = repo.load_index().unwrap();
    index.pack_id(&index.get(id).expect("the blob is indexed"))
}

#[test]
fn a_file_whose_chunk_list_a_prune_moved_still_reads() {
    use cairn::format::tree::Content;
    use cairn::repository::{Indexed, Location, Passphrase, Repository};
    let scratch = Scratch::new("mount-lists");
    let (data, repo, mnt) = (scratch.join("data"), scratch.join("repo"), scratch.join("mnt"));
    fs::create_dir_all(data.join("gone")).unwrap();
    fs::create_dir(&mnt).unwrap();
    small_chunk_repository(&repo);
    let content = noise(1 << 20, 5);
    fs::write(data.join("big.bin"), &content).unwrap();
    fs::write(data.join("gone/file"), b"only in the first snapshot").unwrap();
    let first = json(cairn(&repo).arg("snapshot").arg(&data))["id"].as_str().unwrap().to_string();
    fs::remove_dir_all(data.join("gone")).unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&data));
    // big.bin's list blob lies in the first snapshot's tree pack, beside two trees only it has.
    let list = {
        let opened = Repository::open(&Location::parse(&repo.to_string_lossy()), Passphrase::Given(PASSWORD)).unwrap();
        let indexed = Indexed::load(&opened).unwrap();
        let tree = indexed.read_tree(&opened.find_snapshot("latest").unwrap().1.tree).unwrap();
        match &tree.find(b"big.bin").unwrap().content {
            Content::File { chunks } => chunks.lists().to_vec(),
            other => panic!("big.bin is a {}", other.type_name()),
        }
    };
    assert_eq!(list.len(), 1, "thousands of chunks are kept in a list blob");
    let before = pack_of(&repo, &list[0]);

    let mut mounted = Mounted::start(&repo, &mnt, scratch.join("mount.log"), &[]);
    let latest = mnt.join("snapshots").join(fs::read_link(mnt.join("snapshots/latest")).unwrap());
    assert!(fs::read_dir(&latest).unwrap().count() == 1, "the second snapshot has big.bin alone");
    ok(cairn(&repo).args(["forget", &first]));
    ok(cairn(&repo).args(["prune", "--max-unused", "0"]));
    assert_ne!(pack_of(&repo, &list[0]), before, "the prune repacked the list blob");
    // The index the mount read names the old pack; once it may read the index again, it does.
    std::thread::sleep(Duration::from_millis(5_500));
    let read = fs::read(latest.join("big.bin"));
    assert!(read.as_ref().is_ok_and(|bytes| *bytes == content), "{read:?}: {}", mounted.stderr());
    assert!(fusermount(&mnt).status.success());
    assert_eq!(mounted.wait(), Some(0), "{}", mounted.stderr());
}
