//! Hostile targets and hostile snapshots: restore never writes outside `--target`, whatever
//! symlinks are planted below it (before or during the restore), never checks or renames a
//! database that someone else swapped in, closes a reused directory open beyond its snapshot
//! metadata while it fills it, and deep trees never abort `ls`, `restore` or `drill`. A drill,
//! or a database's restore, leaves nothing behind where it was pointed.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::support::*;

/// Every entry below `dir`, as relative paths: a directory that must stay empty.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path.clone());
            }
            found.push(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    found
}

/// A snapshot of `x/evil`, `x/sub/deeper`, a FIFO and a symlink in `x`, a file at the top.
fn snapshot_with_x(scratch: &Scratch) -> PathBuf {
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("x/sub")).unwrap();
    fs::write(source.join("x/evil"), b"written by the restore").unwrap();
    fs::write(source.join("x/sub/deeper"), b"deeper").unwrap();
    fs::write(source.join("top"), b"top").unwrap();
    symlink("evil", source.join("x/link")).unwrap();
    let fifo = CString::new(source.join("x/fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    repo
}

/// `target/x` is a symlink to `outside`; whatever mode, nothing may appear in `outside`, and the
/// restored `x` is a real directory holding what the snapshot has.
fn assert_symlinked_x_not_followed(extra: &[&str]) {
    let scratch = Scratch::new("planted-dir");
    let repo = snapshot_with_x(&scratch);
    let (target, outside) = (scratch.join("target"), scratch.join("outside"));
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, target.join("x")).unwrap();
    let out = run(cairn(&repo).args(["restore", "latest", "--overwrite", "--target"]).arg(&target).args(extra));
    assert_eq!(entries(&outside), Vec::<PathBuf>::new(), "restore wrote outside the target");
    assert!(out.status.success(), "the symlink in the way is replaced, as any non-directory is");
    assert!(fs::symlink_metadata(target.join("x")).unwrap().is_dir());
    assert_eq!(fs::read(target.join("x/evil")).unwrap(), b"written by the restore");
}

#[test]
fn include_does_not_follow_a_planted_symlinked_directory() {
    assert_symlinked_x_not_followed(&["--include", "x/evil"]);
    assert_symlinked_x_not_followed(&["--include", "x/evil", "--skip-identical"]);
    assert_symlinked_x_not_followed(&["--include", "/x"]);
}

#[test]
fn full_restore_does_not_follow_a_planted_symlinked_directory() {
    assert_symlinked_x_not_followed(&[]);
    assert_symlinked_x_not_followed(&["--skip-identical"]);
}

/// With `--skip-identical`, a symlink to an outside file with the very content the snapshot
/// holds is not "identical": it is replaced, and the outside file keeps its metadata.
#[test]
fn skip_identical_never_takes_a_symlink_for_the_file() {
    let scratch = Scratch::new("identical-link");
    let repo = snapshot_with_x(&scratch);
    let (target, outside) = (scratch.join("target"), scratch.join("outside"));
    fs::create_dir_all(target.join("x")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("evil");
    fs::write(&victim, b"written by the restore").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o604)).unwrap();
    set_mtime(&victim, 1_000_000_000, 7);
    symlink(&victim, target.join("x/evil")).unwrap();
    // And a symlinked directory whose file matches too, reached through `--include`.
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("sub/deeper"), b"deeper").unwrap();
    set_mtime(&outside.join("sub/deeper"), 1_000_000_000, 7);
    symlink(outside.join("sub"), target.join("x/sub")).unwrap();

    for include in ["x/evil", "x/sub/deeper"] {
        let out = run(cairn(&repo)
            .args(["restore", "latest", "--skip-identical", "--include", include, "--target"])
            .arg(&target)
            .arg("--json"));
        assert!(out.status.success());
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["summary"]["files_unchanged"], 0, "{include}: a symlink is not the file");
    }
    for (path, mode) in [(&victim, 0o604), (&outside.join("sub/deeper"), 0o644)] {
        let meta = fs::symlink_metadata(path).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 7), "{}", path.display());
        assert_eq!(meta.mode() & 0o7777, mode, "{}", path.display());
    }
    assert!(fs::symlink_metadata(target.join("x/evil")).unwrap().is_file());
    assert!(fs::symlink_metadata(target.join("x/sub")).unwrap().is_dir());
    assert_eq!(fs::read(target.join("x/sub/deeper")).unwrap(), b"deeper");
}

/// A database is written beside its destination, checked, and renamed into place: all of it in
/// the real directory, never through a symlink planted at the directory or at the database.
#[test]
fn a_database_is_never_written_through_a_planted_symlink() {
    let scratch = Scratch::new("planted-db");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("db")).unwrap();
    let connection = rusqlite::Connection::open(source.join("db/app.db")).unwrap();
    connection.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES ('restored');").unwrap();
    drop(connection);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let (target, outside) = (scratch.join("target"), scratch.join("outside"));
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, target.join("db")).unwrap();
    ok(cairn(&repo).args(["restore", "latest", "--overwrite", "--include", "db/app.db", "--target"]).arg(&target));
    assert_eq!(entries(&outside), Vec::<PathBuf>::new(), "restore wrote outside the target");

    // Symlinks at the database and at its companions are replaced or set aside, not followed.
    fs::write(outside.join("old.db"), b"outside database").unwrap();
    fs::write(outside.join("old-wal"), b"outside wal").unwrap();
    fs::remove_file(target.join("db/app.db")).unwrap();
    symlink(outside.join("old.db"), target.join("db/app.db")).unwrap();
    symlink(outside.join("old-wal"), target.join("db/app.db-wal")).unwrap();
    ok(cairn(&repo).args(["restore", "latest", "--overwrite", "--target"]).arg(&target));
    assert_eq!(fs::read(outside.join("old.db")).unwrap(), b"outside database");
    assert_eq!(fs::read(outside.join("old-wal")).unwrap(), b"outside wal");
    assert!(fs::symlink_metadata(target.join("db/app.db")).unwrap().is_file());
    assert!(fs::symlink_metadata(target.join("db/app.db-wal")).is_err(), "the old -wal is set aside");
    let restored = rusqlite::Connection::open(target.join("db/app.db")).unwrap();
    let value: String = restored.query_row("SELECT x FROM t", [], |row| row.get(0)).unwrap();
    assert_eq!(value, "restored");
}

/// Hard links are made after all content: into the real directory, replacing a planted
/// symlink, never through a symlinked directory.
#[test]
fn a_hard_link_is_never_made_through_a_planted_symlink() {
    let scratch = Scratch::new("planted-link");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("a")).unwrap();
    fs::create_dir_all(source.join("b")).unwrap();
    fs::write(source.join("a/first"), b"linked").unwrap();
    fs::hard_link(source.join("a/first"), source.join("b/second")).unwrap();
    fs::hard_link(source.join("a/first"), source.join("a/third")).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let (target, outside) = (scratch.join("target"), scratch.join("outside"));
    fs::create_dir_all(target.join("a")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"outside").unwrap();
    symlink(&outside, target.join("b")).unwrap();
    symlink(outside.join("victim"), target.join("a/third")).unwrap();
    let args = ["restore", "latest", "--overwrite", "--include", "a", "--include", "b/second", "--target"];
    ok(cairn(&repo).args(args).arg(&target));
    assert_eq!(entries(&outside), vec![PathBuf::from("victim")], "restore wrote outside the target");
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"outside");
    let first = fs::symlink_metadata(target.join("a/first")).unwrap();
    for other in ["a/third", "b/second"] {
        let meta = fs::symlink_metadata(target.join(other)).unwrap();
        assert!(meta.is_file(), "{other}");
        assert_eq!((meta.dev(), meta.ino()), (first.dev(), first.ino()), "{other} is a hard link to a/first");
    }
}

/// An attacker who can write into the target swaps a directory for a symlink to `outside`
/// while restores run, over and over: not one byte may land outside. Failed entries are
/// allowed (they are reported); escaping is not.
#[test]
fn a_racing_attacker_never_gets_a_byte_outside() {
    let scratch = Scratch::new("race");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    for dir in ["d", "d/e", "d/e/f"] {
        fs::create_dir_all(source.join(dir)).unwrap();
        for i in 0..60 {
            fs::write(source.join(format!("{dir}/file-{i}")), format!("{dir} {i}")).unwrap();
        }
        symlink("file-0", source.join(format!("{dir}/link"))).unwrap();
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let (target, outside) = (scratch.join("target"), scratch.join("outside"));
    fs::create_dir_all(&outside).unwrap();
    // Directory metadata is applied last: it must not land on `outside` either.
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o751)).unwrap();
    set_mtime(&outside, 1_000_000_000, 7);
    let untouched =
        |meta: fs::Metadata| (meta.mode() & 0o7777, meta.mtime(), meta.mtime_nsec()) == (0o751, 1_000_000_000, 7);
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, target, outside) = (stop.clone(), target.clone(), outside.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for dir in ["d", "d/e", "d/e/f"] {
                    let (real, moved) = (target.join(dir), target.join(format!("{dir}.moved")));
                    if fs::rename(&real, &moved).is_ok() {
                        let _ = symlink(&outside, &real);
                        std::thread::yield_now();
                        let _ = fs::remove_file(&real);
                        let _ = fs::rename(&moved, &real);
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    for round in 0..30 {
        let _ = Command::new("rm").arg("-rf").arg(&target).status();
        fs::create_dir_all(&target).unwrap();
        let mode: &[&str] = match round % 3 {
            0 => &[],
            1 => &["--include", "d/e/f"],
            _ => &["--skip-identical"],
        };
        let out = cairn(&repo).args(["restore", "latest", "--quiet", "--target"]).arg(&target).args(mode).output();
        let found = entries(&outside);
        let code = out.unwrap().status.code();
        let meta = fs::symlink_metadata(&outside).unwrap();
        if !found.is_empty() || !untouched(meta.clone()) || !matches!(code, Some(0 | 1)) {
            stop.store(true, Ordering::Relaxed);
            panic!("round {round}: exit {code:?}, outside the target: {found:?}, its metadata: {meta:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(attacker.join().unwrap() > 0, "the attacker never got to swap anything");
}

/// The private directory in which `dir`'s database `app.db` is being restored, once it holds the
/// new file; not `stored`, a directory of such a name that the snapshot holds.
fn staging_in(dir: &Path, stored: &str) -> Option<String> {
    fs::read_dir(dir).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|name| {
        name.starts_with(".app.db.cairn-restore-") && name != stored && dir.join(name).join("app.db").exists()
    })
}

/// `kill -9` while a database is restored leaves its private directory, recognisable by its name
/// beside the database. The next restore of that database removes it once the new database is in
/// place, and says so, however soon after the kill it runs (it once kept what was made less than
/// two seconds before it began). What only looks like one is left: another user's, one that holds
/// what a restore never puts there, another database's, one a restore still running holds locked,
/// and one that the snapshot itself has beside the database.
#[test]
fn the_next_restore_removes_what_a_killed_one_left() {
    let scratch = Scratch::new("killed-db");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("db")).unwrap();
    text_database(&source.join("db/app.db"), 16_000, 4);
    let stored = source.join("db/.app.db.cairn-restore-5a5a5a5a");
    fs::create_dir(&stored).unwrap();
    fs::write(stored.join("app.db"), b"the snapshot's").unwrap();
    fs::set_permissions(&stored, fs::Permissions::from_mode(0o700)).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let (target, dir) = (scratch.join("target"), scratch.join("target/db"));
    let leftover = (0..5)
        .find_map(|_| {
            let _ = fs::remove_dir_all(&target);
            let mut child =
                cairn(&repo).args(["restore", "latest", "--quiet", "--target"]).arg(&target).spawn().unwrap();
            let found = loop {
                if let Some(name) = staging_in(&dir, ".app.db.cairn-restore-5a5a5a5a") {
                    break Some(name);
                }
                if child.try_wait().unwrap().is_some() {
                    break None;
                }
            };
            child.kill().unwrap();
            child.wait().unwrap();
            found
        })
        .expect("never caught a restore with its database in the private directory");
    let random = leftover.strip_prefix(".app.db.cairn-restore-").unwrap();
    assert!(random.len() == 8 && random.bytes().all(|b| b.is_ascii_hexdigit()), "{leftover}");

    let mut decoys = vec![(".app.db.cairn-restore-0badf00d", "keep"), (".other.db.cairn-restore-12345678", "other.db")];
    if is_root() {
        decoys.push((".app.db.cairn-restore-deadbeef", "app.db"));
    }
    for (name, inside) in &decoys {
        fs::create_dir(dir.join(name)).unwrap();
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join(name).join(inside), b"not restore's").unwrap();
    }
    if is_root() {
        std::os::unix::fs::chown(dir.join(".app.db.cairn-restore-deadbeef"), Some(65534), None).unwrap();
    }
    // A restore still running holds its private directory locked (this process stands in).
    let running = dir.join(".app.db.cairn-restore-c0ffee00");
    fs::create_dir(&running).unwrap();
    fs::set_permissions(&running, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(running.join("app.db"), b"a running restore's").unwrap();
    let held = fs::File::open(&running).unwrap();
    // SAFETY: plain syscall on a valid descriptor.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let _ = fs::remove_dir_all(dir.join(".app.db.cairn-restore-5a5a5a5a"));
    let out = run(cairn(&repo).args(["restore", "latest", "--overwrite", "--target"]).arg(&target));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&leftover) && stderr.contains("left by an interrupted restore"), "{stderr}");
    assert!(fs::symlink_metadata(dir.join(&leftover)).is_err(), "{leftover} is still there");
    for (name, inside) in &decoys {
        assert_eq!(fs::read(dir.join(name).join(inside)).unwrap(), b"not restore's", "{name}");
    }
    assert_eq!(fs::read(running.join("app.db")).unwrap(), b"a running restore's");
    assert_eq!(fs::read(dir.join(".app.db.cairn-restore-5a5a5a5a/app.db")).unwrap(), b"the snapshot's");
    assert_eq!(fs::read(dir.join("app.db")).unwrap(), fs::read(source.join("db/app.db")).unwrap());
    drop(held);
}

/// A directory that already stands where the snapshot has one and is open to someone the
/// snapshot closes it to (here: another owner, mode 0777) is closed, root's and 0700, before
/// restore writes anything in it, until its metadata is applied at the end. One open only to
/// those the snapshot lets in too (same owner and mode) is left as it is throughout. Root only:
/// it takes other owners.
#[test]
fn a_reused_directory_open_to_others_is_closed_while_restore_fills_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    const BIG: u64 = 32 << 20;
    let chown = |path: &Path| std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    let chmod = |path: &Path, mode| fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    let scratch = Scratch::new("reused-dir");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    for (seed, name) in ["closed", "shared"].into_iter().enumerate() {
        fs::create_dir_all(source.join(name)).unwrap();
        write_noise_file(&source.join(name).join("big"), BIG, seed as u64);
        chmod(&source.join(name), 0o755);
    }
    chown(&source.join("shared"));
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let target = scratch.join("target");
    let (closed, shared) = (target.join("closed"), target.join("shared"));
    let owner_and_mode = |path: &Path| fs::symlink_metadata(path).map(|m| (m.uid(), m.mode() & 0o7777)).unwrap();
    let mut seen_mid_way = [0u32; 2];
    for _ in 0..5 {
        let _ = fs::remove_dir_all(&target);
        for (dir, mode) in [(&closed, 0o777), (&shared, 0o755)] {
            fs::create_dir_all(dir).unwrap();
            chown(dir);
            chmod(dir, mode);
        }
        let args = ["restore", "latest", "--quiet", "--overwrite", "--target"];
        let mut child = cairn(&repo).args(args).arg(&target).spawn().unwrap();
        let status = loop {
            let done = child.try_wait().unwrap();
            for (i, (dir, expected)) in [(&closed, (0, 0o700)), (&shared, (NOBODY, 0o755))].into_iter().enumerate() {
                // Mid-way: restore has begun writing in the directory and not finished.
                if !fs::symlink_metadata(dir.join("big")).is_ok_and(|m| m.len() < BIG) {
                    continue;
                }
                let found = owner_and_mode(dir);
                // Still mid-way after the look (else the restore may have finished in between,
                // under load, and the directory have its final mode by right).
                if !fs::symlink_metadata(dir.join("big")).is_ok_and(|m| m.len() < BIG) {
                    continue;
                }
                if found != expected {
                    let _ = child.kill();
                    let (path, (uid, mode), (want_uid, want_mode)) = (dir.display(), found, expected);
                    panic!("{path} while restore fills it: uid {uid}, mode {mode:o}; expected uid {want_uid}, mode {want_mode:o}");
                }
                seen_mid_way[i] += 1;
            }
            if let Some(status) = done {
                break status;
            }
        };
        assert!(status.success());
        assert_eq!(owner_and_mode(&closed), (0, 0o755), "the snapshot's metadata at the end");
        assert_eq!(owner_and_mode(&shared), (NOBODY, 0o755));
        if seen_mid_way.iter().all(|&n| n > 0) {
            return;
        }
    }
    panic!("never saw a restore mid-way in 5 tries: {seen_mid_way:?}");
}

/// A snapshot whose tree is `depth` directories named `d`, one inside the other, with a file
/// `leaf` at the bottom, crafted through the library (the snapshot side cannot walk that deep).
fn deep_repository(repo: &Path, depth: usize) -> String {
    use cairn::format::pack::BlobKind;
    use cairn::format::snapshot::{Snapshot, Summary};
    use cairn::format::tree::{Content, Metadata, Node, Tree};
    use cairn::repository::packer::BlobStore;
    use cairn::repository::Repository;

    let repository = Repository::create(
        &cairn::repository::Location::directory(repo),
        cairn::format::config::Config::new_random(),
        cairn::repository::NewKeys::None,
    )
    .unwrap();
    let index = repository.load_index().unwrap();
    let store = BlobStore::new(&repository, &index);
    let content = b"at the bottom";
    let meta = |mode: u32, size: u64| Metadata {
        mode,
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
        mtime_sec: 1_600_000_000,
        mtime_nsec: 5,
        nlink: 1,
        size,
        ..Default::default()
    };
    let chunk = store.store(BlobKind::Data, content).unwrap();
    let leaf = Node {
        name: b"leaf".to_vec(),
        meta: meta(0o640, content.len() as u64),
        content: Content::File { chunks: vec![chunk].into() },
        xattrs: Vec::new(),
    };
    let mut tree = Tree { nodes: vec![leaf] };
    for _ in 0..depth {
        let subtree = store.store(BlobKind::Tree, &tree.encode()).unwrap();
        tree = Tree {
            nodes: vec![Node {
                name: b"d".to_vec(),
                meta: meta(0o750, 0),
                content: Content::Dir { subtree },
                xattrs: Vec::new(),
            }],
        };
    }
    let root = store.store(BlobKind::Tree, &tree.encode()).unwrap();
    store.finish().unwrap();
    let snapshot = Snapshot {
        time_sec: 1_700_000_000,
        tree: root,
        hostname: "deep".into(),
        username: "test".into(),
        paths: vec![b"/deep".to_vec()],
        summary: Summary { files: 1, dirs: depth as u64, bytes: content.len() as u64, ..Default::default() },
        ..Default::default()
    };
    repository.save_snapshot(&snapshot).unwrap().to_hex()
}

const DEEP: usize = 30_000;

/// Opens `root/d/d/.../d/leaf` (`depth` directories) one component at a time: the path is far
/// longer than PATH_MAX.
fn read_deep_leaf(root: &Path, depth: usize) -> Vec<u8> {
    let c = |s: &[u8]| CString::new(s).unwrap();
    let mut fd = unsafe { libc::open(c(root.as_os_str().as_bytes()).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd >= 0, "open {}", root.display());
    for level in 0..depth {
        let next = unsafe { libc::openat(fd, c(b"d").as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW) };
        unsafe { libc::close(fd) };
        assert!(next >= 0, "directory at depth {level} missing: {}", std::io::Error::last_os_error());
        fd = next;
    }
    let leaf = unsafe { libc::openat(fd, c(b"leaf").as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW) };
    unsafe { libc::close(fd) };
    assert!(leaf >= 0, "leaf missing: {}", std::io::Error::last_os_error());
    let mut file = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(leaf) };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
    bytes
}

/// Removes a tree deeper than `fs::remove_dir_all` and `Scratch` can.
fn remove_deep(path: &Path) {
    let status = Command::new("rm").arg("-rf").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn ls_lists_a_deep_tree() {
    let scratch = Scratch::new("deep-ls");
    let repo = scratch.join("repo");
    deep_repository(&repo, DEEP);
    let mut child = cairn(&repo).args(["ls", "latest"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut lines, mut last_line, mut buffer) = (0usize, 0usize, vec![0u8; 1 << 20]);
    let mut current = 0usize;
    loop {
        let n = std::io::Read::read(&mut stdout, &mut buffer).unwrap();
        if n == 0 {
            break;
        }
        for &byte in &buffer[..n] {
            if byte == b'\n' {
                lines += 1;
                last_line = current;
                current = 0;
            } else {
                current += 1;
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines, DEEP + 1, "every directory and the leaf");
    assert_eq!(last_line, 2 * DEEP + "/leaf".len(), "the last line is the leaf's whole path");
}

#[test]
fn restore_and_find_node_handle_a_deep_tree() {
    let scratch = Scratch::new("deep-restore");
    let (repo, target) = (scratch.join("repo"), scratch.join("target"));
    deep_repository(&repo, DEEP);
    let out = run(cairn(&repo).args(["restore", "latest", "--quiet", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_deep_leaf(&target, DEEP), b"at the bottom");
    remove_deep(&target);

    // An include deep inside: found by an iterative lookup, restored below its parents.
    let include = "d/".repeat(DEEP - 2) + "d";
    let args = ["restore", "latest", "--quiet", "--overwrite", "--include", &include, "--target"];
    let out = run(cairn(&repo).args(args).arg(&target));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_deep_leaf(&target, DEEP), b"at the bottom");
    remove_deep(&target);
}

#[test]
fn drill_verifies_a_deep_tree_and_removes_it() {
    let scratch = Scratch::new("deep-drill");
    let (repo, drills) = (scratch.join("repo"), scratch.join("drills"));
    deep_repository(&repo, DEEP);
    fs::create_dir(&drills).unwrap();
    let out = run(cairn(&repo).args(["drill", "--json", "--scratch"]).arg(&drills));
    let leftovers = entries_shallow(&drills);
    remove_deep(&drills);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checks_failed"], 0, "{report}");
    assert_eq!(report["checks_passed"], DEEP as u64 + 1, "{report}");
    assert_eq!(leftovers, Vec::<PathBuf>::new(), "the scratch directory is removed");
}

/// The names directly in `dir` (a deep tree below cannot be walked with paths).
fn entries_shallow(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).unwrap().map(|e| PathBuf::from(e.unwrap().file_name())).collect()
}

/// A `--scratch` directory that does not exist is created for the drill and removed after it,
/// with every parent the drill had to create: nothing is left where nobody asked.
#[test]
fn drill_leaves_no_directory_it_created() {
    let scratch = Scratch::new("drill-parents");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("dir")).unwrap();
    fs::write(source.join("dir/file"), b"content").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let missing = scratch.join("missing");
    let report = json(cairn(&repo).args(["drill", "--scratch"]).arg(missing.join("deeper/still")));
    assert_eq!(report["checks_failed"], 0, "{report}");
    assert!(fs::symlink_metadata(&missing).is_err(), "the drill left {} behind", missing.display());

    // A failed drill too.
    let (pack, _) = packs_by_size(&repo).pop().unwrap();
    flip_byte(&pack, 40, 0xff);
    let out = run(cairn(&repo).args(["drill", "--scratch"]).arg(missing.join("deeper")));
    assert_eq!(out.status.code(), Some(1));
    assert!(fs::symlink_metadata(&missing).is_err(), "the failed drill left {} behind", missing.display());
}

/// A drill stopped by SIGTERM or SIGINT (systemd stopping it, Ctrl-C) removes its scratch
/// directory and the parents it created before it exits, and says it was interrupted.
#[test]
fn an_interrupted_drill_leaves_nothing_behind() {
    let scratch = Scratch::new("drill-signal");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    for i in 0..4 {
        write_noise_file(&source.join(format!("big-{i}")), 64 << 20, i);
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let parent = scratch.join("missing");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let scratch_dir = parent.join("drills");
        let child = cairn(&repo).args(["drill", "--scratch"]).arg(&scratch_dir).stderr(Stdio::piped()).spawn().unwrap();
        // Signal once the restore has begun writing into the scratch directory.
        let started = std::time::Instant::now();
        while !fs::read_dir(&scratch_dir).is_ok_and(|mut d| d.next().is_some()) {
            assert!(started.elapsed().as_secs() < 60, "the drill never made its scratch directory");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        // Twice, as under systemd when `cairn run` passes on the signal the unit's processes all
        // got: the echo must not cut the cleanup short.
        std::thread::sleep(std::time::Duration::from_millis(20));
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + signal), "{stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(fs::symlink_metadata(&parent).is_err(), "signal {signal}: the drill left {} behind", parent.display());
    }

    // kill -9 cannot be caught: the next drill removes what it left, without following a
    // symlink found in it.
    let (drills, outside) = (scratch.join("drills"), scratch.join("outside"));
    fs::create_dir_all(&drills).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), b"keep").unwrap();
    let mut child = cairn(&repo).args(["drill", "--scratch"]).arg(&drills).stderr(Stdio::null()).spawn().unwrap();
    while !fs::read_dir(&drills).unwrap().any(|e| fs::read_dir(e.unwrap().path()).is_ok_and(|mut d| d.next().is_some()))
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = entries_shallow(&drills);
    assert_eq!(left.len(), 1, "kill -9 leaves the scratch directory: {left:?}");
    symlink(&outside, drills.join(&left[0]).join("planted")).unwrap();
    let report = json(cairn(&repo).args(["drill", "--scratch"]).arg(&drills));
    assert_eq!(report["checks_failed"], 0, "{report}");
    assert_eq!(entries_shallow(&drills), Vec::<PathBuf>::new(), "the next drill removed the leftovers");
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
}

/// Reports whether anyone opened a file: an inotify watch on its inode, so an open through any
/// symlink or path counts.
struct OpenWatch(std::os::fd::OwnedFd);

impl OpenWatch {
    fn new(path: &Path) -> OpenWatch {
        use std::os::fd::FromRawFd;
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let watch = unsafe { libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), c.as_ptr(), libc::IN_OPEN) };
        assert!(watch >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
        OpenWatch(fd)
    }

    fn opened(&self) -> bool {
        let mut events = [0u8; 4096];
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0);
        unsafe { libc::read(fd, events.as_mut_ptr().cast(), events.len()) > 0 }
    }
}

/// A valid SQLite database at `path` holding `rows` rows of text: about `rows` × 1 KiB.
fn text_database(path: &Path, rows: u64, seed: u64) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT); BEGIN").unwrap();
    for i in 0..rows {
        let body: String = noise(1000, seed + i).iter().map(|b| (b'a' + b % 26) as char).collect();
        connection.execute("INSERT INTO t(body) VALUES (?1)", [body]).unwrap();
    }
    connection.execute_batch("COMMIT").unwrap();
}

/// The review's race (issue 20, item 2): while a database is restored, an attacker who can write
/// in its directory keeps replacing every `.*.cairn-restore-*` entry there with a symlink to a
/// link it controls, which points at a valid database of its own. Restore must never open the
/// attacker's database, never leave a symlink at the database's name, and either put the
/// snapshot's database there or report the entry failed and keep the old database.
#[test]
fn a_racing_attacker_never_gets_its_database_checked_or_renamed_in() {
    let scratch = Scratch::new("race-db");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("db")).unwrap();
    text_database(&source.join("db/app.db"), 8_000, 1);
    let snapshot_bytes = fs::read(source.join("db/app.db")).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let (target, outside) = (scratch.join("target"), scratch.join("outside"));
    let dir = target.join("db");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    text_database(&outside.join("attacker.db"), 10, 2);
    symlink(outside.join("attacker.db"), outside.join("link")).unwrap();
    text_database(&scratch.join("old.db"), 10, 3);
    let old_bytes = fs::read(scratch.join("old.db")).unwrap();
    let watch = OpenWatch::new(&outside.join("attacker.db"));

    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, dir, link) = (stop.clone(), dir.clone(), outside.join("link"));
        std::thread::spawn(move || {
            let (mut swaps, mut planted) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let Ok(listing) = fs::read_dir(&dir) else { continue };
                for entry in listing.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let ours = name.starts_with('.') && name.contains(".cairn-restore-") && !name.ends_with(".moved");
                    if !ours || entry.file_type().map_or(true, |t| t.is_symlink()) {
                        continue;
                    }
                    planted += 1;
                    let (path, plant) = (entry.path(), dir.join(format!(".plant-{planted}")));
                    if symlink(&link, &plant).is_err() {
                        continue;
                    }
                    // A file is replaced at once; a directory is moved out of the way first.
                    if fs::rename(&plant, &path).is_err()
                        && (fs::rename(&path, dir.join(format!("{name}.moved"))).is_err()
                            || fs::rename(&plant, &path).is_err())
                    {
                        let _ = fs::remove_file(&plant);
                        continue;
                    }
                    swaps += 1;
                }
            }
            swaps
        })
    };
    let mut restored = 0;
    let mut fail = None;
    for round in 0..9 {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir(&path));
        }
        fs::write(dir.join("app.db"), &old_bytes).unwrap();
        let mode: &[&str] = match round % 3 {
            0 => &[],
            1 => &["--include", "db/app.db"],
            _ => &["--skip-identical"],
        };
        let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target).args(mode));
        let code = out.status.code();
        let kind = fs::symlink_metadata(dir.join("app.db")).map(|m| m.file_type());
        let opened = watch.opened().then_some("restore opened the attacker's database; ");
        fail = if !kind.as_ref().is_ok_and(|k| k.is_file()) {
            Some(format!("round {round}: {}exit {code:?}, app.db is {kind:?}", opened.unwrap_or("")))
        } else if let Some(opened) = opened {
            Some(format!("round {round}: {opened}exit {code:?}"))
        } else {
            let bytes = fs::read(dir.join("app.db")).unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            match code {
                Some(0) if bytes == snapshot_bytes => {
                    restored += 1;
                    None
                }
                Some(1) if bytes == old_bytes && stderr.contains("app.db") => None,
                _ => Some(format!(
                    "round {round}: exit {code:?}, app.db holds neither the snapshot nor the old database"
                )),
            }
        };
        if fail.is_some() {
            break;
        }
        // What is left beside the database is the attacker's: its symlinks, and restore's
        // private directories that it moved away, emptied.
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let (name, kind) = (entry.file_name(), entry.file_type().unwrap());
            let emptied = kind.is_dir() && fs::read_dir(entry.path()).unwrap().next().is_none();
            if name != "app.db" && !kind.is_symlink() && !emptied {
                fail = Some(format!("round {round}: restore left {name:?} ({kind:?}) behind"));
            }
        }
        if fail.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    if let Some(fail) = fail {
        panic!("{fail} (the attacker swapped {swaps} entries)");
    }
    assert!(swaps > 0, "the attacker never got to swap anything");
    assert!(restored > 0, "no round restored the database");
}

/// Under a low limit of open files, a restore of many directories still gives each its mode and
/// mtime: the directories are revisited at the end through a cache of open ones, which took 256
/// whatever the limit (at 256 the metadata of later directories failed with EMFILE).
#[test]
fn a_low_open_file_limit_keeps_every_directorys_metadata() {
    let scratch = Scratch::new("nofile-dirs");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    for i in 0..600 {
        let dir = source.join(format!("d{}", i % 30)).join(format!("e{i}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), format!("{i}")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        set_mtime(&dir, 1_600_000_000 + i as i64, 0);
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let target = scratch.join("restored");
    let mut command = cairn(&repo);
    command.args(["restore", "latest", "--target"]).arg(&target);
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let limit = libc::rlimit { rlim_cur: 200, rlim_max: 200 };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    ok(&mut command);
    assert_same_tree(&source, &target);
}

/// The mark a restore into an empty target keeps there until it is done.
const UNFINISHED: &str = ".cairn-restore-unfinished";

/// `cairn restore latest --target TARGET` under strace, which does `inject` (`SYSCALL:WHAT`)
/// to the calls of that syscall.
fn restore_traced(repo: &Path, target: &Path, inject: &str) -> Command {
    assert!(
        Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace)"
    );
    let syscall = inject.split(':').next().unwrap();
    let restore = cairn(repo);
    let mut traced = Command::new("strace");
    traced.args(["-f", "-qq", "-o", "/dev/null", "-e", &format!("trace={syscall}"), "-e", &format!("inject={inject}")]);
    traced.arg(restore.get_program()).args(restore.get_args());
    traced.args(["restore", "latest", "--quiet", "--target"]).arg(target);
    for (key, value) in restore.get_envs() {
        match value {
            Some(value) => traced.env(key, value),
            None => traced.env_remove(key),
        };
    }
    traced
}

/// `cairn restore latest --target TARGET`, killed (SIGKILL, through strace) at the `n`-th
/// `write` of any of its threads (strace counts per thread): a file's content, the mark, or an
/// audit record.
fn restore_killed_at_write(repo: &Path, target: &Path, n: u32) {
    let mut traced = restore_traced(repo, target, &format!("write:signal=KILL:when={n}"));
    assert!(!run(&mut traced).status.success(), "the restore was not killed at write #{n}");
}

/// A restore into an empty target killed half way leaves files cut short under their names: the
/// target says so (the mark), and the next restore without a flag finishes it exactly and
/// removes the mark, where it used to refuse the target as not empty (and --overwrite stored
/// the broken tree as a protected safety snapshot).
#[test]
fn a_restore_into_an_empty_target_killed_half_way_is_finished_by_the_next() {
    let scratch = Scratch::new("killed-empty");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("target"));
    for i in 0..24u64 {
        let dir = source.join(format!("d{}", i % 3));
        fs::create_dir_all(&dir).unwrap();
        write_noise_file(&dir.join(format!("f{i}")), 300_000 + i * 1000, i);
    }
    fs::set_permissions(source.join("d1"), fs::Permissions::from_mode(0o750)).unwrap();
    init(&repo);
    let first = json(cairn(&repo).args(["--json", "snapshot"]).arg(&source))["id"].as_str().unwrap().to_string();
    // strace counts each thread's writes: the main thread's are the lock's (1), then the mark's
    // (2); each walker thread's are files, one write each (24 among at most three threads: some
    // thread gets to 6); the audit records' come on threads of their own.
    let mut cut_short = 0;
    for n in [2, 3, 4, 6] {
        let _ = fs::remove_dir_all(&target);
        restore_killed_at_write(&repo, &target, n);
        let how = match fs::read_to_string(target.join(UNFINISHED)) {
            // Killed at the write of its text, the mark is empty, and alone: an empty target.
            Ok(mark) if mark.is_empty() => {
                assert_eq!(entries(&target), [PathBuf::from(UNFINISHED)]);
                "empty-target"
            }
            Ok(mark) => {
                assert!(mark.starts_with("cairn restore: snapshot "), "{mark}");
                "unfinished"
            }
            Err(_) => {
                assert!(entries(&target).is_empty(), "killed at #{n}: content without the mark");
                "empty-target"
            }
        };
        let short = (0..24u64).filter(|i| {
            let path = target.join(format!("d{}/f{i}", i % 3));
            fs::metadata(path).is_ok_and(|m| m.len() != 300_000 + i * 1000)
        });
        cut_short += short.count();
        let report = json(cairn(&repo).args(["--json", "restore", "latest", "--target"]).arg(&target));
        assert_eq!(report["how"], how, "killed at #{n}: {report}");
        assert!(report["safety_snapshot"].is_null(), "{report}");
        assert_same_tree(&source, &target);
    }
    assert!(cut_short > 0, "no kill left a file cut short");
    // A mode asked for is followed (a safety snapshot of the partial tree first), and the mark
    // goes once the target is whole: --in-place would otherwise carry it into the new tree as an
    // entry the snapshot does not have.
    for mode in ["--in-place", "--overwrite"] {
        let _ = fs::remove_dir_all(&target);
        let _ = fs::remove_dir_all(scratch.join("target.bak"));
        restore_killed_at_write(&repo, &target, 6);
        assert!(target.join(UNFINISHED).exists(), "{mode}");
        let report = json(cairn(&repo).args(["--json", "restore", "latest", mode, "--target"]).arg(&target));
        assert!(report["safety_snapshot"].is_string(), "{mode}: {report}");
        assert_same_tree(&source, &target);
        if mode == "--in-place" {
            assert!(scratch.join("target.bak").join(UNFINISHED).exists(), "the old tree keeps its mark");
        }
    }

    // Killed restoring d0 and d1: finished with the same paths written otherwise, the mark goes.
    let _ = fs::remove_dir_all(&target);
    // (A walker thread's third write: the main thread's second is the mark's.)
    let mut traced = restore_traced(&repo, &target, "write:signal=KILL:when=3");
    assert!(!run(traced.args(["--include", "d1", "--include", "d0"])).status.success());
    assert!(fs::read(target.join(UNFINISHED)).is_ok_and(|mark| mark.starts_with(b"cairn restore: ")));
    ok(cairn(&repo).args(["restore", "latest", "--include", "/d0/", "--include", "./d1", "--target"]).arg(&target));
    assert!(!target.join(UNFINISHED).exists(), "the same --include paths written otherwise kept the mark");
    // Finished only in part (--include), it keeps the mark: the rest is still cut short.
    let _ = fs::remove_dir_all(&target);
    restore_killed_at_write(&repo, &target, 6);
    let out = run(cairn(&repo).args(["restore", "latest", "--include", "d0", "--target"]).arg(&target));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("--include"), "{stderr}");
    assert!(target.join(UNFINISHED).exists(), "an --include restore removed the mark of a whole one");
    // Another snapshot does not finish it (a mix of the two would pass for a whole tree): refused,
    // nothing changed; the snapshot the mark names does.
    let other = scratch.join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("d0"), b"another tree").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&other));
    let before = entries(&target);
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&first[..8]) && stderr.contains("did not finish"), "{stderr}");
    let out = run(cairn(&repo).args(["restore", "latest", "--dry-run", "--target"]).arg(&target));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a restore without a flag is refused"), "the dry run hides the refusal: {stderr}");
    assert_eq!(entries(&target), before);
    ok(cairn(&repo).args(["restore", &first, "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    // Restored again over a whole tree, the restore now refuses: the mark is gone.
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not empty"));
}

/// Only the mark a restore writes finishes a target without a flag: a link by its name, a
/// directory, a file with other text, or (as root) another user's file leave the target refused
/// as not empty, untouched; a restore that cannot restore everything keeps the mark; and an
/// entry of the snapshot by the mark's name is restored and stays.
#[test]
fn only_a_real_mark_lets_a_restore_into_a_target_that_is_not_empty() {
    let scratch = Scratch::new("mark-forged");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("target"));
    fs::create_dir_all(&source).unwrap();
    write_noise_file(&source.join("data"), 200_000, 7);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let says = "cairn restore: snapshot 00 is being restored into this directory";
    let elsewhere = scratch.join("elsewhere");
    fs::write(&elsewhere, says).unwrap();
    let mut forged = vec!["a link", "a directory", "other text"];
    if is_root() {
        forged.push("another user's");
    }
    for what in forged {
        let _ = fs::remove_dir_all(&target);
        fs::create_dir(&target).unwrap();
        fs::write(target.join("data"), b"the user's own").unwrap();
        let mark = target.join(UNFINISHED);
        match what {
            "a link" => symlink(&elsewhere, &mark).unwrap(),
            "a directory" => fs::create_dir(&mark).unwrap(),
            "other text" => fs::write(&mark, "my notes").unwrap(),
            _ => {
                fs::write(&mark, says).unwrap();
                std::os::unix::fs::chown(&mark, Some(65534), None).unwrap();
            }
        }
        let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("is not empty"), "{what}: {stderr}");
        assert_eq!(fs::read(target.join("data")).unwrap(), b"the user's own", "{what}");
    }

    // A blob that cannot be read: the file fails, the mark stays and says the target is not whole.
    let damaged = scratch.join("damaged");
    ok(Command::new("cp").arg("-a").arg(&repo).arg(&damaged));
    let (pack, len) = packs_by_size(&damaged).into_iter().max_by_key(|(_, len)| *len).unwrap();
    flip_byte(&pack, len / 2, 0x40);
    let _ = fs::remove_dir_all(&target);
    let out = run(cairn(&damaged).args(["restore", "latest", "--target"]).arg(&target));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(UNFINISHED), "{stderr}");
    assert!(fs::read_to_string(target.join(UNFINISHED)).unwrap().starts_with("cairn restore: "));

    // A real mark captured by a snapshot (of a directory a restore was filling) and restored
    // elsewhere is no mark there: the restored tree, then edited, is refused, not overwritten.
    let captured = (2..5)
        .find_map(|n| {
            let killed = scratch.join(format!("killed-{n}"));
            restore_killed_at_write(&repo, &killed, n);
            fs::read(killed.join(UNFINISHED)).ok().filter(|text| text.starts_with(b"cairn restore: snapshot "))
        })
        .expect("no kill left a mark with its text");
    fs::write(source.join(UNFINISHED), &captured).unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let _ = fs::remove_dir_all(&target);
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    fs::write(target.join("data"), b"edited since").unwrap();
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert_eq!(fs::read(target.join("data")).unwrap(), b"edited since");
    fs::remove_file(source.join(UNFINISHED)).unwrap();

    // The snapshot's own entry of that name is restored over the mark, and kept.
    fs::write(source.join(UNFINISHED), b"the snapshot's").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let _ = fs::remove_dir_all(&target);
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(fs::read(target.join(UNFINISHED)).unwrap(), b"the snapshot's");
    assert_same_tree(&source, &target);
}

/// A restore into a new target writes through the directory it opened and locked, never by the
/// target's path again: the target renamed away and a symlink put in its place while the restore
/// runs (anyone who can write its parent can) leads nothing into the link's directory, which
/// kept its own content where the restore used to fill it, unasked, without a safety snapshot.
#[test]
fn a_target_swapped_for_a_link_while_restoring_leads_nothing_elsewhere() {
    let scratch = Scratch::new("swapped-target");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("sub")).unwrap();
    fs::write(source.join("top"), b"from the snapshot").unwrap();
    fs::write(source.join("sub/deeper"), b"from the snapshot").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let (target, moved, decoy) = (scratch.join("target"), scratch.join("moved"), scratch.join("decoy"));
    fs::create_dir(&decoy).unwrap();
    fs::write(decoy.join("top"), b"precious").unwrap();
    // The fourth fsync is the target's, once the mark is in it: held there for a second and a half.
    let mut child = restore_traced(&repo, &target, "fsync:delay_exit=1500000:when=4").spawn().unwrap();
    let started = std::time::Instant::now();
    while !target.join(UNFINISHED).exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the restore never marked its target");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    fs::rename(&target, &moved).unwrap();
    symlink(&decoy, &target).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(entries(&decoy), [PathBuf::from("top")]);
    assert_eq!(fs::read(decoy.join("top")).unwrap(), b"precious");
    assert_same_tree(&source, &moved);
}

/// A restore killed outright leaves only its start record, and `cairn log` reports it as killed:
/// that record names the target it was writing, or nothing tells which directory holds the
/// partial tree (it used to carry the source alone).
#[test]
fn a_killed_restore_is_logged_with_its_target() {
    let scratch = Scratch::new("killed-logged");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("target"));
    fs::create_dir(&source).unwrap();
    for i in 0..6u64 {
        write_noise_file(&source.join(format!("f{i}")), 100_000, i);
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let records = || fs::read_dir(repo.join("audit")).map_or(0, |dir| dir.count());
    let before = records();
    // Every write held for a fifth of a second: the start record lands, the files take seconds.
    let mut child = restore_traced(&repo, &target, "write:delay_enter=200000").spawn().unwrap();
    let started = std::time::Instant::now();
    while records() == before {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "no start record");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The restore itself, not the strace around it.
    let pids = run(Command::new("pgrep").arg("-P").arg(child.id().to_string()));
    let pid = String::from_utf8(pids.stdout).unwrap().trim().to_string();
    assert!(run(Command::new("kill").args(["-KILL", &pid])).status.success(), "pid {pid:?} was gone");
    let _ = child.wait();
    assert!(target.join(UNFINISHED).exists(), "killed before it marked its target");
    let log = json(cairn(&repo).arg("log"));
    let restore = log.as_array().unwrap().iter().find(|r| r["command"] == "restore").expect("no restore record");
    assert_eq!(restore["outcome"], "failed", "{restore}");
    assert!(restore["errors"][0].as_str().unwrap().starts_with("killed"), "{restore}");
    assert_eq!(restore["details"]["target"], target.canonicalize().unwrap().to_str().unwrap(), "{restore}");
    let text = ok(cairn(&repo).arg("log"));
    assert!(text.lines().any(|l| l.contains("restore") && l.contains(target.to_str().unwrap())), "{text}");
}

/// A target whose path is not UTF-8 restores, and its audit record names it (lossily): the
/// record's JSON used to panic on such a path, after the restore had written everything.
#[test]
fn a_target_path_that_is_not_utf8_is_restored_and_recorded() {
    let scratch = Scratch::new("non-utf8-target");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir(&source).unwrap();
    fs::write(source.join("a"), b"content").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let target = scratch.path().join(std::ffi::OsStr::from_bytes(b"t\xff"));
    for flags in [&[][..], &["--in-place"]] {
        let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target).args(flags));
        assert!(out.status.success(), "{flags:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(fs::read(target.join("a")).unwrap(), b"content");
        fs::write(target.join("a"), b"changed").unwrap();
    }
    let log = ok(cairn(&repo).arg("log"));
    assert_eq!(log.lines().filter(|l| l.contains("restore") && l.contains("t\u{fffd}")).count(), 2, "{log}");
}

/// An in-place restore swaps in the new tree only for the directory it planned against and took
/// its safety snapshot of: the target renamed away and a symlink put in its place while the new
/// tree is built used to be swapped out and kept as the `.bak` (reported as the old tree), the
/// new tree in the link's place. Now the swap is undone and the restore refused, nothing moved.
#[test]
fn an_in_place_restore_never_swaps_out_what_replaced_its_target() {
    let scratch = Scratch::new("in-place-swapped");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("target"));
    fs::create_dir(&source).unwrap();
    for i in 0..6u64 {
        write_noise_file(&source.join(format!("f{i}")), 20_000, i);
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    fs::create_dir(&target).unwrap();
    fs::write(target.join("old"), b"the old tree").unwrap();
    let (moved, decoy) = (scratch.join("moved"), scratch.join("decoy"));
    fs::create_dir(&decoy).unwrap();
    fs::write(decoy.join("precious"), b"elsewhere").unwrap();
    // Each restored file's times are set with a fifth of a second's delay: the build takes a
    // second or more, with its staging directory there from the start.
    let mut traced = restore_traced(&repo, &target, "utimensat:delay_enter=200000");
    let mut child = traced.arg("--in-place").spawn().unwrap();
    let staging = || entries_shallow(scratch.path()).into_iter().any(|p| p.to_string_lossy().contains("cairn-staging"));
    let started = std::time::Instant::now();
    while !staging() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the restore never staged");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    fs::rename(&target, &moved).unwrap();
    symlink(&decoy, &target).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the restore swapped out what replaced its target");
    assert_eq!(fs::read_link(&target).unwrap(), decoy, "the link was moved");
    assert_eq!(entries(&decoy), [PathBuf::from("precious")]);
    assert_eq!(entries(&moved), [PathBuf::from("old")]);
    assert!(!scratch.join("target.bak").exists(), "a .bak was made");
    assert!(!staging(), "the staging directory was left");
}

/// A target that is a file, a symlink to one, or a dangling symlink is refused and left as it
/// was: restore used to make its directory in its place, deleting the file (the one a link led
/// to, too) without a safety snapshot. Given restore roots it was already refused.
#[test]
fn a_file_where_the_target_would_be_is_refused_and_kept() {
    let scratch = Scratch::new("file-target");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a"), b"from the snapshot").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let place = scratch.join("place");
    fs::create_dir(&place).unwrap();
    fs::write(place.join("file"), b"important").unwrap();
    fs::write(place.join("victim"), b"precious").unwrap();
    symlink("victim", place.join("link")).unwrap();
    symlink("nowhere", place.join("dangling")).unwrap();
    for name in ["file", "link", "dangling"] {
        for extra in [&[][..], &["--overwrite"], &["--in-place"], &["--dry-run"]] {
            let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(place.join(name)).args(extra));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && stderr.contains("is not a directory"), "{name} {extra:?}: {stderr}");
        }
    }
    assert_eq!(fs::read(place.join("file")).unwrap(), b"important");
    assert_eq!(fs::read(place.join("victim")).unwrap(), b"precious");
    assert_eq!(fs::read_link(place.join("link")).unwrap(), PathBuf::from("victim"));
    assert_eq!(fs::read_link(place.join("dangling")).unwrap(), PathBuf::from("nowhere"));
}

/// A mark captured by a snapshot of the target it was in, and restored into that very directory
/// again (--overwrite), is a copy, born later than it says: no mark. The tree, edited since, is
/// then refused as not empty, not overwritten unasked as an unfinished one.
#[test]
fn a_mark_restored_into_its_own_directory_is_no_mark() {
    let scratch = Scratch::new("mark-copied-back");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("target"));
    for i in 0..12u64 {
        let dir = source.join(format!("d{}", i % 2));
        fs::create_dir_all(&dir).unwrap();
        write_noise_file(&dir.join(format!("f{i}")), 200_000, i);
    }
    init(&repo);
    let first = json(cairn(&repo).args(["--json", "snapshot"]).arg(&source))["id"].as_str().unwrap().to_string();
    restore_killed_at_write(&repo, &target, 4);
    assert!(fs::read(target.join(UNFINISHED)).unwrap().starts_with(b"cairn restore: snapshot "));
    let captured = json(cairn(&repo).args(["--json", "snapshot"]).arg(&target))["id"].as_str().unwrap().to_string();
    ok(cairn(&repo).args(["restore", &first, "--target"]).arg(&target));
    assert!(!target.join(UNFINISHED).exists());
    ok(cairn(&repo).args(["restore", &captured, "--overwrite", "--target"]).arg(&target));
    assert!(target.join(UNFINISHED).exists(), "the snapshot's copy of the mark is restored");
    fs::write(target.join("d0/f0"), b"edited since").unwrap();
    let out = run(cairn(&repo).args(["restore", &first, "--target"]).arg(&target));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not empty"), "{stderr}");
    assert_eq!(fs::read(target.join("d0/f0")).unwrap(), b"edited since");
}
