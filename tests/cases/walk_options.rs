//! What a walk leaves out beyond `--exclude` (issue 25, restic/borg parity): other file systems
//! (`--one-file-system`), cache directories (`--exclude-caches`), marked directories
//! (`--exclude-if-present`), patterns from files (`--exclude-file`), the same as `cairn run`
//! config keys; a pattern that can never match is refused before anything is written; an
//! excluded database takes its `-wal`, `-shm` and `-journal` with it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sqlite::wal_database;
use crate::support::*;

/// Every path of the latest snapshot with its type, from `ls --json`.
fn entries(repo: &Path) -> BTreeMap<String, String> {
    let out = ok(cairn(repo).args(["ls", "latest", "--json"]));
    out.lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            (entry["path"].as_str().unwrap().to_string(), entry["type"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Whether the latest snapshot holds `path`.
fn holds(repo: &Path, path: &str) -> bool {
    entries(repo).contains_key(path)
}

/// Runs a command that must fail with exit code 1; returns its stderr.
fn refused(command: &mut Command) -> String {
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "must fail");
    String::from_utf8(output.stderr).unwrap()
}

/// Runs a command that must succeed within a minute (a walk that blocks on a FIFO would not).
fn ok_within_a_minute(command: &mut Command) {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{command:?}: {status}");
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

#[test]
fn one_file_system_stores_a_mount_point_as_an_empty_directory() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let scratch = Scratch::new("walk-xdev");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("sub/deeper")).unwrap();
    fs::write(source.join("sub/deeper/kept.txt"), b"same file system").unwrap();
    let mount = Mount::tmpfs(&source.join("sub/mnt"));
    fs::write(mount.0.join("inner.txt"), b"another file system").unwrap();
    fs::create_dir(mount.0.join("dir")).unwrap();
    fs::set_permissions(&mount.0, fs::Permissions::from_mode(0o750)).unwrap();
    init(&repo);

    ok(cairn(&repo).arg("snapshot").arg(&source));
    assert!(holds(&repo, "/sub/mnt/inner.txt"), "without the flag the walk crosses");
    ok(cairn(&repo).args(["snapshot", "--one-file-system"]).arg(&source));
    let listed = entries(&repo);
    assert_eq!(listed.get("/sub/mnt").map(String::as_str), Some("dir"), "{listed:?}");
    assert!(listed.contains_key("/sub/deeper/kept.txt"), "{listed:?}");
    assert!(!listed.keys().any(|p| p.starts_with("/sub/mnt/")), "nothing below the mount point: {listed:?}");
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(fs::read_dir(target.join("sub/mnt")).unwrap().count(), 0);
    assert_eq!(fs::metadata(target.join("sub/mnt")).unwrap().permissions().mode() & 0o7777, 0o750);

    // A path given is entered whatever file system it is on (-x, as restic and borg spell it).
    ok(cairn(&repo).args(["snapshot", "-x"]).arg(&mount.0).arg(source.join("sub/deeper")));
    let listed = entries(&repo);
    let inner = format!("{}/inner.txt", mount.0.display());
    assert!(listed.contains_key(&inner), "{listed:?}");
    drop(mount);
}

#[test]
fn exclude_caches_keeps_the_directory_and_its_valid_tag_only() {
    let scratch = Scratch::new("walk-caches");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    const SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";
    for dir in ["cache/sub", "fake", "link", "dirtag/CACHEDIR.TAG", "fifo", "plain"] {
        fs::create_dir_all(source.join(dir)).unwrap();
    }
    fs::write(source.join("cache/CACHEDIR.TAG"), format!("{SIGNATURE}\n# This is a cache.\n")).unwrap();
    fs::write(source.join("cache/sub/blob"), b"regenerable").unwrap();
    fs::write(source.join("fake/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc56\n").unwrap();
    // A symlink to a valid tag elsewhere, a directory and a FIFO of that name: none counts.
    std::os::unix::fs::symlink("../cache/CACHEDIR.TAG", source.join("link/CACHEDIR.TAG")).unwrap();
    mkfifo(&source.join("fifo/CACHEDIR.TAG"));
    for dir in ["cache", "fake", "link", "dirtag", "fifo", "plain"] {
        fs::write(source.join(dir).join("data"), dir).unwrap();
    }
    init(&repo);

    ok_within_a_minute(cairn(&repo).args(["snapshot", "--exclude-caches"]).arg(&source));
    let listed = entries(&repo);
    assert_eq!(listed.get("/cache").map(String::as_str), Some("dir"));
    assert_eq!(listed.get("/cache/CACHEDIR.TAG").map(String::as_str), Some("file"));
    assert!(!listed.keys().any(|p| p.starts_with("/cache/") && p != "/cache/CACHEDIR.TAG"), "{listed:?}");
    for dir in ["fake", "link", "dirtag", "fifo", "plain"] {
        assert!(listed.contains_key(&format!("/{dir}/data")), "{dir}: {listed:?}");
    }
    assert_eq!(listed.get("/link/CACHEDIR.TAG").map(String::as_str), Some("symlink"));
    assert_eq!(listed.get("/fifo/CACHEDIR.TAG").map(String::as_str), Some("fifo"));

    // Off by default; and a tag at the root of the source empties the source but the tag.
    ok(cairn(&repo).arg("snapshot").arg(&source));
    assert!(holds(&repo, "/cache/sub/blob"));
    ok(cairn(&repo).args(["snapshot", "--exclude-caches"]).arg(source.join("cache")));
    assert_eq!(entries(&repo).into_keys().collect::<Vec<_>>(), ["/CACHEDIR.TAG"]);
}

#[test]
fn exclude_if_present_skips_what_a_marked_directory_holds() {
    let scratch = Scratch::new("walk-if-present");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    for dir in ["a/deep", "b", "c", "d"] {
        fs::create_dir_all(source.join(dir)).unwrap();
        fs::write(source.join(dir).join("file"), dir).unwrap();
    }
    fs::write(source.join("a/.nobackup"), b"").unwrap();
    fs::write(source.join("b/.skip-me"), b"").unwrap();
    std::os::unix::fs::symlink("../a/.nobackup", source.join("c/.nobackup")).unwrap();
    fs::create_dir(source.join("d/.nobackup")).unwrap();
    init(&repo);
    ok(cairn(&repo)
        .args(["snapshot", "--exclude-if-present", ".nobackup", "--exclude-if-present", ".skip-me"])
        .arg(&source));
    let listed = entries(&repo);
    let kept: Vec<&str> = listed.keys().map(String::as_str).collect();
    assert_eq!(
        kept,
        ["/a", "/a/.nobackup", "/b", "/b/.skip-me", "/c", "/c/.nobackup", "/c/file", "/d", "/d/.nobackup", "/d/file",],
        "a symlink or a directory of the name is no marker"
    );
    let err = refused(cairn(&repo).args(["snapshot", "--exclude-if-present", "a/.nobackup"]).arg(&source));
    assert!(err.contains("--exclude-if-present \"a/.nobackup\": give the name of a file"), "{err}");
}

#[test]
fn exclude_file_patterns_apply_and_its_problems_stop_the_snapshot() {
    let scratch = Scratch::new("walk-exclude-file");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    for dir in ["app/logs", "app/node_modules/x", "keep"] {
        fs::create_dir_all(source.join(dir)).unwrap();
    }
    fs::write(source.join("app/logs/today"), b"log").unwrap();
    fs::write(source.join("app/node_modules/x/index.js"), b"js").unwrap();
    fs::write(source.join("keep/debug.log"), b"log").unwrap();
    fs::write(source.join("keep/notes.txt"), b"notes").unwrap();
    let list = scratch.join("excludes.txt");
    fs::write(&list, format!("# generated files\n\n  *.log\nnode_modules\n{}/app/logs\n", source.display())).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg("--exclude-file").arg(&list).arg(&source));
    let listed: Vec<String> = entries(&repo).into_keys().collect();
    assert_eq!(listed, ["/app", "/keep", "/keep/notes.txt"]);

    // Missing, a directory, a bad pattern at a line, unreadable: an error, nothing written.
    let fresh = scratch.join("fresh-repo");
    let cases: Vec<(PathBuf, &str)> = vec![
        (scratch.join("missing.txt"), "cannot read exclude file"),
        (scratch.path().to_path_buf(), "cannot read exclude file"),
        (scratch.join("bad.txt"), "line 2: pattern \"app/logs\" can never match"),
    ];
    fs::write(scratch.join("bad.txt"), "*.log\napp/logs\n").unwrap();
    for (file, message) in &cases {
        let err = refused(cairn(&fresh).arg("snapshot").arg("--exclude-file").arg(file).arg(&source));
        assert!(err.contains(message) && err.contains(&file.display().to_string()), "{err}");
        assert!(!fresh.exists(), "no repository created");
        let err = refused(cairn(&repo).arg("snapshot").arg("--exclude-file").arg(file).arg(&source));
        assert!(err.contains(message), "{err}");
    }
    assert_eq!(json(cairn(&repo).arg("snapshots")).as_array().unwrap().len(), 1, "no snapshot stored");
    if is_root() {
        let secret = scratch.join("secret.txt");
        fs::write(&secret, "*.log\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        open_up(scratch.path());
        let err = refused(as_unprivileged(&fresh).arg("snapshot").arg("--exclude-file").arg(&secret).arg(&source));
        assert!(err.contains("cannot read exclude file") && err.contains("ermission denied"), "{err}");
        assert!(!fresh.exists(), "no repository created");
    }
}

#[test]
fn a_pattern_that_can_never_match_is_refused_with_its_fix() {
    let scratch = Scratch::new("walk-never");
    let (source, repo) = (scratch.join("srv/app"), scratch.join("repo"));
    fs::create_dir_all(source.join("logs")).unwrap();
    fs::write(source.join("logs/today"), b"log").unwrap();
    fs::write(source.join("app.conf"), b"conf").unwrap();
    let err = refused(cairn(&repo).args(["snapshot", "--exclude", "srv/app/logs"]).arg(&source));
    assert!(err.contains("exclude pattern \"srv/app/logs\" can never match"), "{err}");
    assert!(err.contains("\"/srv/app/logs\"") && err.contains("\"**/srv/app/logs\""), "{err}");
    assert!(!repo.exists(), "nothing written, not even the repository");
    init(&repo);
    for never in ["srv/app/logs", "", "/srv/../logs"] {
        refused(cairn(&repo).args(["snapshot", "--exclude", never]).arg(&source));
    }
    assert_eq!(json(cairn(&repo).arg("snapshots")).as_array().unwrap().len(), 0);
    let log = ok(cairn(&repo).arg("log"));
    assert!(log.contains("can never match"), "the failed run is in the audit log: {log}");
    // The fixes it names work.
    ok(cairn(&repo).args(["snapshot", "--exclude", "**/app/logs"]).arg(&source));
    assert!(!holds(&repo, "/logs") && holds(&repo, "/app.conf"));
    ok(cairn(&repo).args(["snapshot", "--exclude"]).arg(source.join("logs")).arg(&source));
    assert!(!holds(&repo, "/logs"));
}

#[test]
fn an_excluded_database_takes_its_wal_shm_and_journal_along() {
    let scratch = Scratch::new("walk-db-exclude");
    let (source, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("notes.txt"), b"keep me").unwrap();
    // A live WAL database: the writer keeps it open, its newest commits only in the -wal.
    let db = wal_database(&source.join("app.db"));
    db.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    for i in 0..50 {
        db.execute("INSERT INTO a(body) VALUES (?1)", [format!("row {i}")]).unwrap();
    }
    assert!(source.join("app.db-wal").exists() && source.join("app.db-shm").exists());
    // A rollback-journal database with a journal left beside it.
    rusqlite::Connection::open(source.join("old.db")).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
    fs::write(source.join("old.db-journal"), b"stale journal").unwrap();
    // Not a database: its namesake companion is an ordinary file and stays.
    fs::write(source.join("plain"), b"not sqlite").unwrap();
    fs::write(source.join("plain-wal"), b"ordinary").unwrap();
    init(&repo);

    // Stored raw, the companions are in the snapshot: what the exclusion has to take away.
    ok(cairn(&repo).args(["snapshot", "--raw-sqlite"]).arg(&source));
    assert!(holds(&repo, "/app.db-wal") && holds(&repo, "/app.db-shm") && holds(&repo, "/old.db-journal"));
    let all = ["app.db", "app.db-wal", "app.db-shm", "old.db", "old.db-journal"];
    for raw in [true, false] {
        let mut command = cairn(&repo);
        command.args(["snapshot", "--exclude", "*.db"]).arg(&source);
        if raw {
            command.arg("--raw-sqlite");
        }
        ok(&mut command);
        let listed = entries(&repo);
        for name in all {
            assert!(!listed.contains_key(&format!("/{name}")), "raw {raw}: {name} left out: {listed:?}");
        }
        for name in ["notes.txt", "plain", "plain-wal"] {
            assert!(listed.contains_key(&format!("/{name}")), "raw {raw}: {name} kept: {listed:?}");
        }
    }
    drop(db);
}

#[test]
fn config_keys_reach_the_snapshot_and_an_unmatchable_exclude_fails_its_source_only() {
    let scratch = Scratch::new("walk-config");
    let source = scratch.join("src");
    for dir in ["cache", "marked", "logs", "kept"] {
        fs::create_dir_all(source.join(dir)).unwrap();
        fs::write(source.join(dir).join("file"), dir).unwrap();
    }
    fs::write(source.join("cache/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    fs::write(source.join("marked/.nobackup"), "").unwrap();
    fs::write(scratch.join("excludes.txt"), "# logs\n**/logs\n").unwrap();
    let mount = is_root().then(|| Mount::tmpfs(&source.join("mnt")));
    if let Some(mount) = &mount {
        fs::write(mount.0.join("inner"), b"other file system").unwrap();
    }
    let config = scratch.join("cairn.toml");
    let body = "repository = \"repo\"\n\n[[source]]\nname = \"tree\"\npaths = [\"src\"]\nexclude = [\"*.tmp\"]\n\
                exclude_caches = true\nexclude_if_present = [\".nobackup\"]\nexclude_file = [\"excludes.txt\"]\n\
                one_file_system = true\n";
    fs::write(&config, body).unwrap();
    let cairn_run = |config: &Path| {
        let mut command = cairn_bare();
        command.arg("run").arg("--config").arg(config).env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG");
        with_password(&mut command);
        command.stdin(Stdio::null());
        command
    };
    ok(&mut cairn_run(&config));
    let repo = scratch.join("repo");
    let listed: Vec<String> = entries(&repo).into_keys().collect();
    let mut expected = vec!["/cache", "/cache/CACHEDIR.TAG", "/kept", "/kept/file", "/marked", "/marked/.nobackup"];
    if mount.is_some() {
        expected.push("/mnt");
    }
    expected.sort();
    assert_eq!(listed, expected);

    // A pattern that can never match: `config check` names its line; `run` warns of it, fails
    // that source's snapshot and still backs up the other source.
    let bad = scratch.join("bad.toml");
    fs::create_dir_all(scratch.join("other")).unwrap();
    fs::write(scratch.join("other/file"), "other").unwrap();
    let two = body.replace("[\"*.tmp\"]", "[\"*.tmp\",\n  \"src/logs\"]")
        + "\n[[source]]\nname = \"other\"\npaths = [\"other\"]\n";
    fs::write(&bad, two).unwrap();
    let check = run(cairn_bare().args(["config", "check", "--config"]).arg(&bad));
    let text = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success() && text.contains("bad.toml:7: exclude pattern \"src/logs\" can never match"),
        "{text}"
    );
    let count = |source: &str| {
        let listed = json(cairn(&repo).args(["snapshots", "--source", source]));
        listed.as_array().unwrap().len()
    };
    let (tree_before, other_before) = (count("tree"), count("other"));
    let out = run(&mut cairn_run(&bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("bad.toml:7: exclude pattern \"src/logs\" can never match"),
        "{err}"
    );
    assert_eq!((count("tree"), count("other")), (tree_before, other_before + 1), "{err}");
    drop(mount);
}
