//! `cairn run`: the whole scheduled cycle from one config file, its failures one step at a time,
//! the run lock, the disk guard, and `cairn config check`.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::repository::Repository;

use crate::backends::{s3, BUCKET};
use crate::sqlite::{counts, integrity, start_pair_writer, wal_database};
use crate::support::*;

/// `cairn run --config FILE` with the S3 server's settings in the environment.
fn cairn_run(config: &Path) -> Command {
    let mut command = cairn_bare();
    command.arg("run").arg("--config").arg(config).env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG");
    with_password(&mut command);
    for (key, value) in s3().env() {
        command.env(key, value);
    }
    command.stdin(Stdio::null());
    command
}

fn commands_in_audit(repo: &Path) -> Vec<(String, String, String)> {
    let repo = Repository::open(
        &cairn::repository::Location::parse(&repo.to_string_lossy()),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    cairn::audit::read_all(&repo)
        .unwrap()
        .into_iter()
        .map(|r| (r.command, r.source, serde_json::to_value(r.outcome).unwrap().as_str().unwrap().to_string()))
        .collect()
}

struct Setup {
    scratch: Scratch,
    repo: PathBuf,
    config: PathBuf,
    offsite: String,
}

/// Two tree sources and a live SQLite database, an offsite copy on the loopback S3 server,
/// retention, and a drill policy.
fn setup(name: &str, extra_source: &str) -> Setup {
    let scratch = Scratch::new(name);
    for dir in ["web", "uploads", "db"] {
        fs::create_dir_all(scratch.join(dir)).unwrap();
    }
    fs::write(scratch.join("web/index.html"), b"<h1>v1</h1>").unwrap();
    write_noise_file(&scratch.join("uploads/photo.jpg"), 3 << 20, 1);
    drop(wal_database(&scratch.join("db/app.db")));
    let offsite = format!("s3://{BUCKET}/run-{name}-{}", std::process::id());
    let config = scratch.join("cairn.toml");
    let text = format!(
        r#"repository = "repo"
temp_dir = "."

[retention]
keep_last = 1

[[source]]
name = "web"
paths = ["web"]
before = "echo before > hook.log"
after = "echo after >> hook.log"

[[source]]
name = "uploads"
paths = ["uploads"]
exclude = ["*.tmp"]

[[source]]
name = "db"
kind = "sqlite"
paths = ["db/app.db"]
{extra_source}
[[offsite]]
name = "s3"
repository = "{offsite}"

[offsite.retention]
keep_last = 1

[drill]
every = "1h"
"#
    );
    fs::write(&config, text).unwrap();
    Setup { repo: scratch.join("repo"), scratch, config, offsite }
}

#[test]
fn two_runs_snapshot_prune_sync_and_drill_everything() {
    let s = setup("run-e2e", "");
    ok(cairn_bare().args(["config", "check", "--config"]).arg(&s.config));
    let db = s.scratch.join("db/app.db");
    let (stop, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = start_pair_writer(db.clone(), stop.clone(), commits.clone());
    std::thread::sleep(Duration::from_millis(200));
    let first = json(&mut cairn_run(&s.config));
    assert_eq!(first["outcome"], "ok", "{first}");
    assert_eq!(fs::read_to_string(s.scratch.join("hook.log")).unwrap(), "before\nafter\n");

    fs::write(s.scratch.join("web/index.html"), b"<h1>v2</h1>").unwrap();
    fs::write(s.scratch.join("uploads/new.txt"), b"second run").unwrap();
    fs::write(s.scratch.join("uploads/skip.tmp"), b"excluded").unwrap();
    let second = json(&mut cairn_run(&s.config));
    stop.store(true, Relaxed);
    writer.join().unwrap();
    assert_eq!(second["outcome"], "ok", "{second}");
    let steps: Vec<&str> = second["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert!(!steps.iter().any(|s| s.starts_with("drill")), "drills are not due again within the hour: {steps:?}");

    // Status is green; retention held locally and offsite.
    ok(cairn(&s.repo).arg("status"));
    let local = json(cairn(&s.repo).arg("snapshots"));
    assert_eq!(local.as_array().unwrap().len(), 3, "keep_last 1 per source: {local}");
    let offsite = PathBuf::from(&s.offsite);
    let with_s3 = |command: &mut Command| {
        for (key, value) in s3().env() {
            command.env(key, value);
        }
    };
    let mut list = cairn(&offsite);
    with_s3(&mut list);
    assert_eq!(json(list.arg("snapshots")).as_array().unwrap().len(), 3);

    // The offsite copy restores: the files of the second run, and a consistent database.
    for source in ["web", "uploads", "db"] {
        let target = s.scratch.join(format!("restored-{source}"));
        let mut restore = cairn(&offsite);
        with_s3(&mut restore);
        ok(restore.args(["restore", "latest", "--source", source, "--target"]).arg(&target));
    }
    let restored_web = s.scratch.join("restored-web");
    assert_eq!(fs::read(restored_web.join("index.html")).unwrap(), b"<h1>v2</h1>");
    let restored_uploads = s.scratch.join("restored-uploads");
    assert!(restored_uploads.join("new.txt").exists() && !restored_uploads.join("skip.tmp").exists());
    let restored_db = s.scratch.join("restored-db/app.db");
    assert_eq!(integrity(&restored_db), "ok");
    let (a, b) = counts(&restored_db);
    assert!(a > 0 && a == b, "{a} vs {b} after {} commits", commits.load(Relaxed));

    // The audit log shows every step of both runs.
    let audit = commands_in_audit(&s.repo);
    for (command, source) in [
        ("snapshot", "web"),
        ("snapshot", "uploads"),
        ("snapshot", "db"),
        ("hook", "web"),
        ("drill", "web"),
        ("drill", "uploads"),
        ("drill", "db"),
    ] {
        assert!(
            audit.iter().any(|(c, s, o)| c == command && s == source && o == "ok"),
            "{command} {source}: {audit:?}"
        );
    }
    for command in ["forget", "prune", "sync", "run"] {
        assert!(audit.iter().filter(|(c, _, o)| c == command && o == "ok").count() >= 2, "{command}: {audit:?}");
    }
}

#[test]
fn failures_fail_only_their_step() {
    let broken = r#"
[[source]]
name = "vanished"
paths = ["no-longer-here"]

[[source]]
name = "hooked"
paths = ["web"]
before = "echo cannot pause >&2; exit 7"
after = "echo after-ran > after.log"
"#;
    let s = setup("run-failures", broken);
    // The offsite server is down: point the config at a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = run(cairn_run(&s.config).arg("--json").env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{dead}")));
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let outcome = |step: &str| {
        report["steps"].as_array().unwrap().iter().find(|s| s["step"] == step).map(|s| s["outcome"].clone())
    };
    assert_eq!(outcome("snapshot vanished"), Some("failed".into()));
    assert_eq!(outcome("before hook hooked"), Some("failed".into()));
    assert_eq!(outcome("snapshot hooked"), Some("failed".into()));
    assert_eq!(outcome("after hook hooked"), Some("ok".into()), "after runs even when before failed");
    assert_eq!(outcome("sync to s3"), Some("failed".into()));
    for good in ["snapshot web", "snapshot uploads", "snapshot db", "prune"] {
        assert_eq!(outcome(good), Some("ok".into()), "{good}: {report}");
    }
    assert!(s.scratch.join("after.log").exists());
    // Each failure left an audit record, and status names them.
    let audit = commands_in_audit(&s.repo);
    for (command, source) in [("snapshot", "vanished"), ("hook", "hooked"), ("sync", "")] {
        assert!(audit.iter().any(|(c, s, o)| c == command && s == source && o == "failed"), "{command}: {audit:?}");
    }
    let status = run(cairn(&s.repo).arg("status"));
    assert!(!status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("last hook failed") && text.contains("exit 7") || text.contains("cannot pause"), "{text}");
    assert!(text.contains("last sync to s3://"), "{text}");
}

#[test]
fn a_second_run_exits_at_once_while_one_is_running() {
    let s = setup("run-lock", "");
    let text = fs::read_to_string(&s.config).unwrap().replace("echo before > hook.log", "sleep 4");
    fs::write(&s.config, text).unwrap();
    let mut first = cairn_run(&s.config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    let second = run(&mut cairn_run(&s.config));
    assert!(started.elapsed() < Duration::from_secs(2), "the second run did not wait");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another `cairn run`") && err.contains("is running"), "{err}");
    assert!(first.wait().unwrap().success());
}

#[test]
fn the_disk_guard_refuses_snapshots_and_writes_nothing() {
    let s = setup("run-disk-guard", "");
    let text =
        fs::read_to_string(&s.config).unwrap().replace("temp_dir = \".\"", "temp_dir = \".\"\nmin_free = \"99.999%\"");
    fs::write(&s.config, text).unwrap();
    init(&s.repo);
    let before = pack_count(&s.repo);
    let output = run(cairn_run(&s.config).arg("--json"));
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for source in ["web", "uploads", "db"] {
        let step =
            report["steps"].as_array().unwrap().iter().find(|s| s["step"] == format!("snapshot {source}")).unwrap();
        assert_eq!(step["outcome"], "failed");
        assert!(step["output"].to_string().contains("disk guard"), "{step}");
    }
    assert_eq!(pack_count(&s.repo), before, "no pack was written");
    assert!(json(cairn(&s.repo).arg("snapshots")).as_array().unwrap().is_empty());
    let audit = commands_in_audit(&s.repo);
    assert_eq!(audit.iter().filter(|(c, _, o)| c == "snapshot" && o == "failed").count(), 3, "{audit:?}");
}

#[test]
fn config_check_reports_each_problem_with_its_line() {
    let scratch = Scratch::new("config-check");
    let config = scratch.join("cairn.toml");
    fs::write(
        &config,
        "repository = \"repo\"\n\n[[source]]\nname = \"web\"\npathz = [\"web\"]\n\n[[source]]\nname = \"db\"\nkind = \"sqlite\"\npaths = [\"missing.db\"]\n\n[retention]\nkeep_daily = \"seven\"\n",
    )
    .unwrap();
    let output = run(cairn_bare().args(["config", "check", "--config"]).arg(&config));
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    let c = config.display();
    for expected in [
        format!("{c}:4: [[source]] number 1 needs `paths`"),
        format!("{c}:5: unknown key `pathz` in [[source]] number 1 (did you mean `paths`?)"),
        format!("{c}:10: path {} does not exist", scratch.join("missing.db").display()),
        format!("{c}:13: `keep_daily` in [retention] must be a whole number ≥ 0, not the string \"seven\""),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    // `run` refuses a config with problems other than missing paths, and says why.
    let refused = run(cairn_bare().args(["run", "--config"]).arg(&config));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing was run"));
    // The example is valid apart from its paths.
    let example = ok(cairn_bare().args(["config", "example"]));
    fs::write(&config, example).unwrap();
    let checked = run(cairn_bare().args(["config", "check", "--config"]).arg(&config));
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(
        text.lines().filter(|l| l.contains(": ") && !l.ends_with("problems")).all(|l| l.contains("does not exist")),
        "{text}"
    );
}

/// A config with one small source and no offsite; `before` is its before hook.
fn small(name: &str, before: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(name);
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/file"), "content").unwrap();
    let config = scratch.join("cairn.toml");
    let text = format!("repository = \"repo\"\n[[source]]\nname = \"src\"\npaths = [\"src\"]\nbefore = \"{before}\"\n");
    fs::write(&config, text).unwrap();
    (scratch, config)
}

/// The short id `cairn run` names its lock after: BLAKE3 of the config's canonical path.
fn lock_id(config: &Path) -> String {
    let canonical = fs::canonicalize(config).unwrap();
    cairn::id::Id::of(canonical.as_os_str().as_encoded_bytes()).short()
}

/// `cairn run` as cron or a system service starts it: no runtime directory in the environment.
fn scheduled(config: &Path) -> Command {
    let mut command = cairn_run(config);
    command.env_remove("XDG_RUNTIME_DIR").env_remove("RUNTIME_DIRECTORY");
    command
}

/// A directory only this user can use, for `RUNTIME_DIRECTORY`.
fn private_dir(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
    path.to_path_buf()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_planted_run_lock_is_never_written_through_and_holds_no_run_off() {
    let (s, config) = small("run-lock-planted", "true");
    let id = lock_id(&config);
    let victim = s.join("victim");
    fs::write(&victim, "precious").unwrap();

    // The review's reproduction: a symlink at the predictable name in the shared temp directory.
    let planted = std::env::temp_dir().join(format!("cairn-run-{id}.lock"));
    let _ = fs::remove_file(&planted);
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let out = run(&mut scheduled(&config));
    let _ = fs::remove_file(&planted);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious", "the run wrote through a planted symlink");
    assert!(out.status.success(), "{}", stderr(&out));

    // Another user's file at that name, locked by its owner: the run is not held off.
    fs::write(&planted, "pid 1").unwrap();
    if is_root() {
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    }
    let held = fs::File::open(&planted).unwrap();
    // SAFETY: a valid open descriptor.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let out = run(&mut scheduled(&config));
    drop(held);
    fs::remove_file(&planted).unwrap();
    assert!(out.status.success(), "a stranger's lock file held the run off: {}", stderr(&out));

    // In a lock directory of this user, a symlink at the lock's own name is refused, not followed.
    let locks = private_dir(&s.join("locks"));
    std::os::unix::fs::symlink(&victim, locks.join(format!("run-{id}.lock"))).unwrap();
    let out = run(scheduled(&config).env("RUNTIME_DIRECTORY", &locks));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("symlink") && stderr(&out).contains(&*locks.to_string_lossy()), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");

    // And so is a symlink in place of the lock directory itself.
    let elsewhere = private_dir(&s.join("elsewhere"));
    std::os::unix::fs::symlink(&elsewhere, s.join("locks-link")).unwrap();
    let out = run(scheduled(&config).env("RUNTIME_DIRECTORY", s.join("locks-link")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn a_run_lock_directory_that_others_can_write_or_own_is_refused() {
    let (s, config) = small("run-lock-dirs", "true");
    for mode in [0o777, 0o1777, 0o770, 0o702] {
        let dir = private_dir(&s.join(format!("open-{mode:o}")));
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let out = run(scheduled(&config).env("RUNTIME_DIRECTORY", &dir));
        assert_eq!(out.status.code(), Some(1), "mode {mode:o}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&*dir.to_string_lossy()) && err.contains("writable"), "mode {mode:o}: {err}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "mode {mode:o}: nothing is created there");
    }
    // Owned by someone else (as root: another uid; otherwise a directory root owns).
    let theirs = if is_root() {
        let dir = private_dir(&s.join("theirs"));
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        dir
    } else {
        PathBuf::from("/")
    };
    let out = run(scheduled(&config).env("RUNTIME_DIRECTORY", &theirs));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&*theirs.to_string_lossy()) && err.contains("owned by uid"), "{err}");
    assert!(!s.join("repo").exists(), "nothing ran");
}

#[test]
fn a_killed_run_leaves_a_lock_file_that_holds_nothing_off() {
    let (s, config) = small("run-lock-killed", "sleep 2");
    let locks = private_dir(&s.join("locks"));
    let lock = locks.join(format!("run-{}.lock", lock_id(&config)));
    let mut first = scheduled(&config)
        .env("RUNTIME_DIRECTORY", &locks)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while fs::read_to_string(&lock).unwrap_or_default() != format!("pid {}", first.id()) {
        assert!(started.elapsed() < Duration::from_secs(20), "the run lock never appeared at {}", lock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::symlink_metadata(&lock).unwrap().permissions().mode() & 0o7777, 0o600);
    // Two runs of one config still exclude each other.
    let second = run(scheduled(&config).env("RUNTIME_DIRECTORY", &locks));
    assert_eq!(second.status.code(), Some(1));
    assert!(stderr(&second).contains(&format!("is running (pid {})", first.id())), "{}", stderr(&second));
    // Killed, the run leaves its file behind; the kernel dropped its lock, so the next run runs.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(lock.exists(), "a killed run cannot remove its lock file");
    let third = run(scheduled(&config).env("RUNTIME_DIRECTORY", &locks));
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(!lock.exists(), "a run that ends removes its lock file");
}

#[test]
fn hooks_start_with_no_signal_blocked() {
    // cairn blocks SIGINT, SIGTERM and SIGHUP to take them on one thread; a hook that kept that
    // mask would ignore the signal a run passes on to it when it is stopped.
    let (s, config) = small("run-hook-signals", "grep SigBlk /proc/self/status > blocked");
    ok(&mut cairn_run(&config));
    let blocked = fs::read_to_string(s.join("blocked")).unwrap();
    assert_eq!(blocked.split_whitespace().collect::<Vec<_>>(), ["SigBlk:", "0000000000000000"]);
}

#[test]
fn a_hooks_flood_of_output_is_kept_bounded() {
    // 8 MB on standard error, as a verbose dump tool writes every run: the run keeps its start
    // and its end, so the audit record stays small.
    let (s, config) = small("run-hook-flood", "yes flooding | head -c 8000000 >&2; echo last line >&2");
    let out = run(&mut cairn_run(&config));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("bytes left out") && text.contains("last line"), "{}", &text[..text.len().min(2000)]);
    let largest = fs::read_dir(s.join("repo/audit")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).max();
    assert!(largest.unwrap() < 512 << 10, "an audit record of {largest:?} bytes");
}

/// A cache flag given to `cairn run` beats CAIRN_CACHE_DIR in its steps too, as on any other
/// command: the snapshot step is a child process, which once got neither flag and so followed
/// the variable (with --no-cache, a cache appeared there all the same).
#[test]
fn cache_flags_reach_the_steps() {
    let (s, config) = small("run-cache-flags", "true");
    let (from_env, from_flag) = (s.join("env-cache"), s.join("flag-cache"));
    let cairn_run = |flags: &[&std::ffi::OsStr]| {
        let mut command = cairn_bare();
        command.args(flags).arg("run").arg("--config").arg(&config);
        command.env("CAIRN_CACHE_DIR", &from_env).env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG");
        with_password(&mut command).stdin(Stdio::null());
        command
    };
    let snapshots = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap()["steps"].to_string();
    let out = ok(&mut cairn_run(&["--json".as_ref(), "--no-cache".as_ref()]));
    assert!(snapshots(&out).contains("snapshot src"), "{out}");
    assert!(!from_env.exists(), "--no-cache, and the step kept a cache in CAIRN_CACHE_DIR");
    ok(&mut cairn_run(&["--cache-dir".as_ref(), from_flag.as_os_str()]));
    assert!(!from_env.exists(), "--cache-dir, and the step kept its cache in CAIRN_CACHE_DIR");
    assert!(
        fs::read_dir(&from_flag).is_ok_and(|mut d| d.next().is_some()),
        "the step kept its cache where --cache-dir says"
    );
}

/// Anything that deletes fails closed: with a damaged index file, the run's retention removes
/// no snapshot (its forget steps ran before its prune found the damage).
#[test]
fn retention_in_a_run_forgets_nothing_in_a_repository_that_is_not_whole() {
    let scratch = Scratch::new("run-not-whole");
    fs::create_dir_all(scratch.join("web")).unwrap();
    let config = scratch.join("cairn.toml");
    fs::write(
        &config,
        "repository = \"repo\"\n\n[retention]\nkeep_last = 1\n\n[[source]]\nname = \"web\"\npaths = [\"web\"]\n",
    )
    .unwrap();
    for i in 0..2 {
        fs::write(scratch.join("web/page.html"), format!("version {i}")).unwrap();
        let report = json(&mut cairn_run(&config));
        assert_eq!(report["outcome"], "ok", "{report}");
    }
    let repo = scratch.join("repo");
    fs::write(scratch.join("web/page.html"), "version 2").unwrap();
    let manifests = || fs::read_dir(repo.join("snapshots")).unwrap().count();
    assert_eq!(manifests(), 1, "keep_last 1");
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("web")));
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("web")));
    let index = fs::read_dir(repo.join("index")).unwrap().next().unwrap().unwrap().path();
    flip_byte(&index, 40, 0x01);
    let out = run(cairn_run(&config).arg("--json"));
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let outcome = |name: &str| {
        let steps = report["steps"].as_array().cloned().unwrap_or_default();
        steps.iter().find(|s| s["step"] == name).map(|s| s["outcome"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(outcome("forget web").as_deref(), Some("failed"), "{report}");
    assert!(manifests() >= 3, "a snapshot was forgotten in a damaged repository: {report}");
}

/// A run killed with SIGKILL (or by the OOM killer) cannot pass the signal on to the step it is
/// running: that step ends with it all the same, instead of going on beside the next run's.
#[test]
fn a_step_ends_with_its_run_killed_by_sigkill() {
    let (s, config) = small("run-killed-step", "echo $$ > hook.pid; exec sleep 60");
    let mut first = cairn_run(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    let pid = loop {
        if let Some(pid) = fs::read_to_string(s.join("hook.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the hook never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    first.kill().unwrap();
    first.wait().unwrap();
    // Gone, or a zombie its new parent has not reaped yet.
    let running = || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    let killed = Instant::now();
    while running() && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still = running();
    if still {
        // SAFETY: a plain kill of the leftover, so that the test leaves nothing running.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(!still, "the step (pid {pid}) went on after its run was killed");
}
