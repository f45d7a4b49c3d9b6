//! The source walk under attack: directories swapped for symlinks while it runs, files changed
//! while they are read, and trees deeper than the walk stores. Nothing from outside the source
//! may enter a snapshot, nothing torn may be called complete, and nothing may crash the run.
//!
//! The deterministic cases pause the walk at a known entry: with one worker thread
//! (`RAYON_NUM_THREADS=1`) entries are archived in name order, and a database that another
//! connection holds under an exclusive lock keeps the worker waiting (up to `--sqlite-timeout`)
//! while the test changes the tree behind it.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::support::*;

/// Starts `cairn snapshot` in the background with its output captured.
fn spawn(command: &mut Command) -> Child {
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cairn starts")
}

/// Waits for a background run and prints its output, as [`run`] does.
fn finish(child: Child) -> Output {
    let output = child.wait_with_output().unwrap();
    eprintln!(
        "-> {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Calls `probe` every millisecond until it gives a value, for at most `limit`.
fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(value) = probe() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// The file positions of the descriptors process `pid` holds open on `path` (canonical).
fn positions(pid: u32, path: &Path) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    fds.flatten()
        .filter(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
        .filter_map(|fd| fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("pos:")).and_then(|p| p.trim().parse().ok()))
        .collect()
}

/// A rollback-journal database holding one row, and a connection that keeps it under an
/// exclusive lock until it is dropped or commits: a reader waits on it. Its journal is kept in
/// memory, so committing never looks the database's directory up again by path.
fn locked_database(path: &Path) -> Connection {
    let db = Connection::open(path).unwrap();
    db.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES ('inside');").unwrap();
    db.execute_batch("PRAGMA journal_mode=MEMORY; BEGIN EXCLUSIVE; INSERT INTO t VALUES ('pending');").unwrap();
    db
}

/// A database with one row of `text`, in WAL mode with the row still in its `-wal` file.
fn database_with(path: &Path, text: &str) -> Connection {
    let db = Connection::open(path).unwrap();
    db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);").unwrap();
    db.execute("INSERT INTO t VALUES (?1)", [text]).unwrap();
    db
}

fn rows(path: &Path) -> Vec<String> {
    let db = Connection::open(path).unwrap();
    let mut statement = db.prepare("SELECT x FROM t ORDER BY rowid").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
}

/// Every path `cairn ls` lists in snapshot `id`.
fn listing(repo: &Path, id: &str) -> String {
    ok(cairn(repo).args(["ls", id]))
}

/// A directory outside the source whose entries have names found nowhere else.
fn outside_tree(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..5 {
        fs::write(dir.join(format!("OUTSIDE-SECRET-{i}")), b"not part of the source\n").unwrap();
    }
}

#[test]
fn directory_swapped_for_a_symlink_in_a_loop_is_never_followed() {
    let scratch = Scratch::new("swap-loop");
    let (source, outside, repo) = (scratch.join("src"), scratch.join("outside"), scratch.join("repo"));
    outside_tree(&outside);
    // Files before the directories keep the workers busy between a directory's stat and its
    // opening, the window the swapper aims at.
    fs::create_dir_all(&source).unwrap();
    for i in 0..4 {
        write_noise_file(&source.join(format!("a-big-{i}")), 4 << 20, i);
    }
    let dirs = 12;
    for d in 0..dirs {
        let dir = source.join(format!("d{d:02}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..10 {
            fs::write(dir.join(format!("file-{f}")), format!("{d} {f}\n")).unwrap();
        }
    }
    init(&repo);
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (source, outside, stop, swaps) = (source.clone(), outside.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            let mut d = 0;
            while !stop.load(Relaxed) {
                let dir = source.join(format!("d{d:02}"));
                let away = scratch_away(&dir);
                fs::rename(&dir, &away).unwrap();
                std::os::unix::fs::symlink(&outside, &dir).unwrap();
                std::thread::sleep(Duration::from_micros(300));
                fs::remove_file(&dir).unwrap();
                fs::rename(&away, &dir).unwrap();
                swaps.fetch_add(1, Relaxed);
                d = (d + 1) % dirs;
            }
        })
    };
    let mut followed = Vec::new();
    for round in 0..25 {
        let output = run(cairn(&repo).args(["--json", "snapshot"]).arg(&source));
        let code = output.status.code();
        assert!(matches!(code, Some(0 | 3)), "round {round}: exit {code:?}");
        let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let id = out["id"].as_str().unwrap().to_string();
        let listed = listing(&repo, &id);
        if listed.contains("OUTSIDE-SECRET") {
            followed.push(round);
        }
    }
    stop.store(true, Relaxed);
    swapper.join().unwrap();
    eprintln!("{} swaps", swaps.load(Relaxed));
    assert!(swaps.load(Relaxed) > 100, "the swapper kept swapping");
    assert!(followed.is_empty(), "rounds {followed:?} stored files from outside the source");
}

/// Where the swapper parks a directory while a symlink stands in its place.
fn scratch_away(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap().to_os_string();
    name.push(".away");
    dir.with_file_name(name)
}

#[test]
fn directory_swapped_before_it_is_opened_is_reported_not_followed() {
    let scratch = Scratch::new("swap-before");
    let (source, outside, repo) = (scratch.join("src"), scratch.join("outside"), scratch.join("repo"));
    outside_tree(&outside);
    fs::create_dir_all(source.join("d")).unwrap();
    fs::write(source.join("d/inside"), b"inside\n").unwrap();
    let lock = locked_database(&source.join("a.db"));
    init(&repo);
    let child = spawn(
        cairn(&repo).env("RAYON_NUM_THREADS", "1").args(["--json", "snapshot", "--sqlite-timeout", "60s"]).arg(&source),
    );
    // The walk has stat'ed the root's entries (`d` is a directory) and waits on `a.db`.
    let a_db = fs::canonicalize(source.join("a.db")).unwrap();
    let pid = child.id();
    assert!(wait_for(Duration::from_secs(60), || (!positions(pid, &a_db).is_empty()).then_some(())).is_some());
    fs::rename(source.join("d"), source.join("d.away")).unwrap();
    std::os::unix::fs::symlink(&outside, source.join("d")).unwrap();
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(3), "the swapped directory is reported");
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let errors = out["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["path"].as_str().unwrap().ends_with("/src/d")), "{out}");
    let listed = listing(&repo, out["id"].as_str().unwrap());
    assert!(!listed.contains("OUTSIDE-SECRET"), "followed the symlink: {listed}");
    assert!(listed.contains("/a.db"), "{listed}");
}

#[test]
fn directory_swapped_after_it_is_opened_is_read_through_its_descriptor() {
    let scratch = Scratch::new("swap-after");
    let (source, outside, repo) = (scratch.join("src"), scratch.join("outside"), scratch.join("repo"));
    // The outside directory has what the walk will look for next: a file `f` and a database
    // `b.db` whose newest row is only in its -wal.
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("f"), b"OUTSIDE-SECRET file\n").unwrap();
    let outside_db = database_with(&outside.join("b.db"), "OUTSIDE-SECRET row");
    fs::create_dir_all(source.join("d")).unwrap();
    fs::write(source.join("d/f"), b"inside file\n").unwrap();
    let inside_db = database_with(&source.join("d/b.db"), "inside row");
    let lock = locked_database(&source.join("d/a.db"));
    init(&repo);
    let child = spawn(
        cairn(&repo).env("RAYON_NUM_THREADS", "1").args(["--json", "snapshot", "--sqlite-timeout", "60s"]).arg(&source),
    );
    // The walk has opened `d` and listed it, and waits on `d/a.db`.
    let a_db = fs::canonicalize(source.join("d/a.db")).unwrap();
    let pid = child.id();
    assert!(wait_for(Duration::from_secs(60), || (!positions(pid, &a_db).is_empty()).then_some(())).is_some());
    fs::rename(source.join("d"), source.join("d.away")).unwrap();
    std::os::unix::fs::symlink(&outside, source.join("d")).unwrap();
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let output = finish(child);
    assert!(output.status.success(), "the directory was opened before the swap: nothing to report");
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", out["id"].as_str().unwrap(), "--target"]).arg(&target));
    assert_eq!(rows(&target.join("d/b.db")), ["inside row"]);
    assert_eq!(fs::read(target.join("d/f")).unwrap(), b"inside file\n");
    assert_eq!(rows(&target.join("d/a.db")), ["inside", "pending"]);
    drop((outside_db, inside_db));
}

#[test]
fn file_rewritten_once_during_the_read_is_stored_whole() {
    let scratch = Scratch::new("rewritten-once");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    let big = source.join("big");
    let size = 96u64 << 20;
    write_noise_file(&big, size, 7);
    let big = fs::canonicalize(&big).unwrap();
    init(&repo);
    let child = spawn(cairn(&repo).args(["--json", "snapshot"]).arg(&source));
    let pid = child.id();
    // Once a second read window is being read (and most of the file is still to read), change
    // the first megabyte: the read so far is stale. (Not sooner: a change within one tick of
    // the file system's clock after the file was opened leaves its mtime as it was, and
    // nothing can see it.)
    let reading = wait_for(Duration::from_secs(60), || {
        positions(pid, &big).into_iter().find(|p| (8 << 20..72 << 20).contains(p))
    });
    assert!(reading.is_some(), "cairn never read the file");
    // Well before the end: the rest of the read takes far longer than this one write.
    let file = fs::OpenOptions::new().write(true).open(&big).unwrap();
    file.write_all_at(&noise(1 << 20, 99), 0).unwrap();
    let output = finish(child);
    assert!(output.status.success(), "a file that changed once and then stayed still is stored whole");
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["complete"], true, "{out}");
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", out["id"].as_str().unwrap(), "--target"]).arg(&target));
    assert!(fs::read(target.join("big")).unwrap() == fs::read(&big).unwrap(), "stored torn");
}

#[test]
fn file_truncated_during_the_read_is_stored_as_it_ends_up() {
    let scratch = Scratch::new("truncated");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    let big = source.join("big");
    let size = 96u64 << 20;
    write_noise_file(&big, size, 8);
    let big = fs::canonicalize(&big).unwrap();
    init(&repo);
    let child = spawn(cairn(&repo).args(["--json", "snapshot"]).arg(&source));
    let pid = child.id();
    let reading = wait_for(Duration::from_secs(60), || {
        positions(pid, &big).into_iter().find(|p| (12 << 20..72 << 20).contains(p))
    });
    assert!(reading.is_some(), "cairn never read the file");
    // Well before the end: the rest of the read takes far longer than this truncation.
    fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(4 << 20).unwrap();
    let output = finish(child);
    assert!(output.status.success());
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["complete"], true, "{out}");
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", out["id"].as_str().unwrap(), "--target"]).arg(&target));
    let restored = fs::read(target.join("big")).unwrap();
    assert_eq!(restored.len(), 4 << 20, "stored a length other than the file's");
    assert!(restored == fs::read(&big).unwrap());
}

#[test]
fn files_that_keep_changing_are_stored_and_reported() {
    let scratch = Scratch::new("keeps-changing");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    let (rewritten, growing) = (source.join("rewritten"), source.join("growing.log"));
    write_noise_file(&rewritten, 32 << 20, 1);
    write_noise_file(&growing, 32 << 20, 2);
    fs::write(source.join("still"), b"still\n").unwrap();
    init(&repo);
    let stop = Arc::new(AtomicBool::new(false));
    let rewriter = {
        let (path, stop) = (rewritten.clone(), stop.clone());
        std::thread::spawn(move || {
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                file.write_all_at(&noise(4096, i), (i * 7919 % 8192) * 4096).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let appender = {
        let (path, stop) = (growing.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                std::io::Write::write_all(&mut file, &noise(16 << 10, i)).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let output = run(cairn(&repo).args(["--json", "snapshot"]).arg(&source));
    stop.store(true, Relaxed);
    rewriter.join().unwrap();
    appender.join().unwrap();
    assert_eq!(output.status.code(), Some(3), "stored but incomplete");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("changed while"), "{stderr}");
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["complete"], false, "{out}");
    let id = out["id"].as_str().unwrap().to_string();
    let errors = out["errors"].as_array().unwrap();
    for name in ["/rewritten", "/growing.log"] {
        let error = errors.iter().find(|e| e["path"].as_str().unwrap().ends_with(name));
        let error = error.unwrap_or_else(|| panic!("{name} not reported: {out}"));
        assert!(error["message"].as_str().unwrap().contains("changed while"), "{error}");
    }
    let listed = json_lines(cairn(&repo).args(["--json", "ls", &id]));
    let recorded = |name: &str| listed.iter().find(|e| e["path"] == name).unwrap()["size"].as_u64().unwrap();
    let snapshots = json(cairn(&repo).arg("snapshots"));
    let entry = snapshots.as_array().unwrap().iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert_eq!(entry["complete"], false, "{entry}");
    assert_eq!(entry["errors"].as_array().unwrap().len(), 2, "{entry}");
    let table = ok(cairn(&repo).arg("snapshots"));
    assert!(table.contains("incomplete(2)"), "{table}");

    // They are stored, each with the length that was read.
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", &id, "--target"]).arg(&target));
    for name in ["rewritten", "growing.log"] {
        assert_eq!(fs::metadata(target.join(name)).unwrap().len(), recorded(&format!("/{name}")), "{name}");
    }
    assert_eq!(fs::read(target.join("still")).unwrap(), b"still\n");

    // Still now, they are read again and stored whole.
    let again = json(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(again["complete"], true, "{again}");
    let target = scratch.join("restored-again");
    ok(cairn(&repo).args(["restore", again["id"].as_str().unwrap(), "--target"]).arg(&target));
    assert_same_tree(&source, &target);
}

/// Runs with the command's own `--json` and parses one JSON value per line.
fn json_lines(command: &mut Command) -> Vec<serde_json::Value> {
    ok(command).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// A directory `root` holding a chain `d/d/d/...` of `levels` directories with a file `bottom`
/// at its end, made and removed through descriptors, since its paths are far longer than
/// PATH_MAX. Removed on drop: a recursive removal would recurse once per level. On a tmpfs when
/// there is one: ext4 mounted with `discard` takes milliseconds to remove each directory.
struct DeepChain {
    root: PathBuf,
    levels: usize,
}

fn c_name(name: &str) -> CString {
    CString::new(name).unwrap()
}

impl DeepChain {
    fn new(scratch: &Scratch, levels: usize) -> DeepChain {
        let shm = PathBuf::from(format!("/dev/shm/cairn-it-deep-{}", std::process::id()));
        let root = if fs::create_dir(&shm).is_ok() { shm } else { scratch.join("deep") };
        fs::create_dir_all(&root).unwrap();
        let c_root = CString::new(root.as_os_str().as_bytes()).unwrap();
        // SAFETY (all the calls below): valid NUL-terminated names and descriptors this function
        // opened; each descriptor is closed once the next level is open.
        unsafe {
            let mut fd = libc::open(c_root.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(fd >= 0);
            for level in 0..levels {
                assert_eq!(libc::mkdirat(fd, c_name("d").as_ptr(), 0o755), 0, "mkdir at level {level}");
                let next =
                    libc::openat(fd, c_name("d").as_ptr(), libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC);
                assert!(next >= 0, "open at level {level}");
                libc::close(fd);
                fd = next;
            }
            let file =
                libc::openat(fd, c_name("bottom").as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
            assert!(file >= 0);
            libc::close(file);
            libc::close(fd);
        }
        DeepChain { root, levels }
    }
}

impl Drop for DeepChain {
    fn drop(&mut self) {
        let c_root = CString::new(self.root.as_os_str().as_bytes()).unwrap();
        // SAFETY: as in `new`; going up through `..` keeps one descriptor open at a time.
        unsafe {
            let mut fd = libc::open(c_root.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC);
            let mut depth = 0;
            while depth < self.levels {
                let next =
                    libc::openat(fd, c_name("d").as_ptr(), libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC);
                if next < 0 {
                    break;
                }
                libc::close(fd);
                fd = next;
                depth += 1;
            }
            libc::unlinkat(fd, c_name("bottom").as_ptr(), 0);
            for _ in 0..depth {
                let parent = libc::openat(fd, c_name("..").as_ptr(), libc::O_DIRECTORY | libc::O_CLOEXEC);
                libc::unlinkat(parent, c_name("d").as_ptr(), libc::AT_REMOVEDIR);
                libc::close(fd);
                fd = parent;
            }
            libc::close(fd);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// How many directory levels a snapshot holds (`MAX_DEPTH` in src/source/archiver.rs): part of
/// what a snapshot can hold, so pinned here.
const MAX_DEPTH: u64 = 1024;

#[test]
fn tree_30000_levels_deep_is_stored_to_the_bound_and_reported() {
    let scratch = Scratch::new("deep");
    let repo = scratch.join("repo");
    let chain = DeepChain::new(&scratch, 30_000);
    let source = chain.root.clone();
    fs::write(source.join("shallow"), b"shallow\n").unwrap();
    init(&repo);
    // Few descriptors: the walk must not hold one per level of a chain.
    let mut command = cairn(&repo);
    command.args(["--json", "snapshot"]).arg(&source);
    limit_descriptors(&mut command, 256, 256);
    let output = run(&mut command);
    assert_eq!(output.status.code(), Some(3), "stored to the bound, the rest reported");
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let depth = MAX_DEPTH;
    assert_eq!(cairn::source::archiver::MAX_DEPTH as u64, depth, "the bound is part of the format");
    assert_eq!(out["summary"]["dirs"], depth, "every level to the bound is stored: {}", out["summary"]);
    let errors = out["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains(&format!("deeper than {depth} levels")), "{message}");
    let path = errors[0]["path"].as_str().unwrap();
    let below = path.strip_prefix(source.to_str().unwrap()).unwrap();
    assert_eq!(below, "/d".repeat(depth as usize), "the deepest stored directory is named");
    assert_eq!(out["summary"]["files"], 1, "{}", out["summary"]);
}

#[test]
fn source_paths_deeper_than_the_bound_are_reported() {
    // Several paths: the snapshot mirrors their absolute paths, so their depth counts from `/`.
    let scratch = Scratch::new("deep-paths");
    let repo = scratch.join("repo");
    let levels = scratch.path().components().count() - 1;
    let (mut at_bound, mut beyond) = (scratch.join("a"), scratch.join("b"));
    for _ in levels + 1..MAX_DEPTH as usize {
        at_bound.push("a");
        beyond.push("b");
    }
    beyond.push("b");
    fs::create_dir_all(at_bound.join("under")).unwrap();
    fs::create_dir_all(&beyond).unwrap();
    fs::write(beyond.join("file"), b"beyond\n").unwrap();
    init(&repo);
    let output = run(cairn(&repo).args(["--json", "snapshot"]).arg(&at_bound).arg(beyond.join("file")));
    assert_eq!(output.status.code(), Some(3));
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let errors = out["errors"].as_array().unwrap();
    let path_of = |e: &serde_json::Value| PathBuf::from(e["path"].as_str().unwrap());
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| path_of(e) == at_bound), "{errors:?}");
    assert!(errors.iter().any(|e| path_of(e) == beyond), "the first directory beyond: {errors:?}");
    assert_eq!(out["summary"]["files"], 0, "{}", out["summary"]);
}

#[test]
fn comb_1000_levels_deep_does_not_run_out_of_descriptors() {
    // At every level `a` goes on and `b` is empty; with one worker `b` is opened only after
    // all of `a`, so every level's directory stays open meanwhile: 1000 descriptors, more
    // than the soft limit the run starts with.
    let scratch = Scratch::new("comb");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    let mut level = source.clone();
    for _ in 0..1000 {
        fs::create_dir_all(level.join("b")).unwrap();
        level.push("a");
    }
    fs::create_dir_all(&level).unwrap();
    fs::write(level.join("bottom"), b"bottom\n").unwrap();
    init(&repo);
    let mut command = cairn(&repo);
    command.env("RAYON_NUM_THREADS", "1").args(["--json", "snapshot"]).arg(&source);
    limit_descriptors(&mut command, 256, 4096);
    let out: serde_json::Value = serde_json::from_str(&ok(&mut command)).unwrap();
    assert_eq!(out["complete"], true, "{out}");
    assert_eq!(out["summary"]["dirs"], 2000, "{}", out["summary"]);
    assert_eq!(out["summary"]["files"], 1, "{}", out["summary"]);
}

/// Lowers the child's soft and hard limits on open descriptors.
fn limit_descriptors(command: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; it only changes the child's own limit.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A Python process that takes a write lease on `path` (as Samba or an NFS server does), says so
/// on stdout, and gives the lease up `hold` after someone else opens the file (the kernel signals
/// the break).
fn lease_holder(path: &Path, hold: Duration) -> Child {
    let script = format!(
        "import fcntl, os, signal, sys, time\n\
         fd = os.open({path:?}, os.O_RDWR)\n\
         def broken(*_):\n    time.sleep({hold})\n    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)\n    sys.exit(0)\n\
         signal.signal(signal.SIGIO, broken)\n\
         fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)\n\
         print('held', flush=True)\n\
         time.sleep(60)\n",
        path = path.to_str().unwrap(),
        hold = hold.as_secs_f64()
    );
    Command::new("python3").arg("-c").arg(script).stdout(Stdio::piped()).spawn().unwrap()
}

#[test]
fn a_file_under_a_lease_is_waited_for_and_stored_whole() {
    if !is_root() {
        return; // a lease on another user's file needs CAP_LEASE
    }
    let scratch = Scratch::new("lease");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    let leased = source.join("leased");
    write_noise_file(&leased, 300_000, 17);
    init(&repo);
    let mut holder = lease_holder(&leased, Duration::from_millis(300));
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut said).unwrap();
    assert_eq!(said.trim(), "held");
    // A write lease is broken by any open: cairn's non-blocking one fails and starts the break,
    // and cairn then waits for the holder to give the lease up.
    let started = Instant::now();
    let out = json(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(out["summary"]["files"], 1, "{out}");
    holder.kill().ok();
    holder.wait().unwrap();
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    eprintln!("snapshot under a lease took {:?}", started.elapsed());
}

/// A writer rewriting a file whole, in place, one large write at a time: a write sets mtime when
/// it begins, so a read that overlaps one write sees the status unchanged before and after. No
/// snapshot may store half of one version and half of the other as complete.
#[test]
fn a_write_in_flight_during_the_read_is_never_stored_torn_as_complete() {
    let scratch = Scratch::new("write-in-flight");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    let path = source.join("doc");
    const LEN: usize = 4 << 20;
    fs::write(&path, vec![b'A'; LEN]).unwrap();
    init(&repo);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            let versions = [vec![b'A'; LEN], vec![b'B'; LEN]];
            for i in 0.. {
                if stop.load(Relaxed) {
                    break;
                }
                file.write_all_at(&versions[i % 2], 0).unwrap();
            }
        })
    };
    let mut complete = 0;
    for _ in 0..10 {
        let output = run(cairn(&repo).args(["--json", "snapshot"]).arg(&source));
        let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if out["complete"] != true {
            continue;
        }
        complete += 1;
        let stored = run(cairn(&repo).args(["dump", out["id"].as_str().unwrap(), "doc"])).stdout;
        assert_eq!(stored.len(), LEN);
        let torn = stored.iter().filter(|&&b| b == stored[0]).count();
        assert_eq!(torn, LEN, "stored as complete: {torn} bytes of {:?} then the other version", stored[0] as char);
    }
    stop.store(true, Relaxed);
    writer.join().unwrap();
    eprintln!("{complete} of 10 snapshots complete");
    // Once the writer is done, the file is read whole, in one version.
    let out = json(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(out["complete"], true, "{out}");
    let stored = run(cairn(&repo).args(["dump", out["id"].as_str().unwrap(), "doc"])).stdout;
    assert_eq!(stored, fs::read(&path).unwrap());
}

/// A log appended to every 100 ms is read in a quiet moment between two writes: waiting for a
/// write in flight to end never makes a file written that often unreadable.
#[test]
fn a_log_appended_to_often_is_still_read_complete() {
    let scratch = Scratch::new("busy-log");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    let path = source.join("app.log");
    fs::write(&path, b"start\n").unwrap();
    init(&repo);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
            while !stop.load(Relaxed) {
                std::io::Write::write_all(&mut file, b"a line of the log\n").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let outcomes: Vec<serde_json::Value> =
        (0..3).map(|_| json(cairn(&repo).arg("snapshot").arg(&source))["complete"].clone()).collect();
    stop.store(true, Relaxed);
    writer.join().unwrap();
    assert!(outcomes.iter().all(|complete| complete == true), "{outcomes:?}");
}
