//! `cairn run`: the whole scheduled cycle from one config file, its failures one step at a time,
//! the run lock, the disk guard, and `cairn config check`.

use std::fs;
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
    let mut command = Command::new(CAIRN);
    command.arg("run").arg("--config").arg(config).env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG");
    with_password(&mut command);
    for (key, value) in s3().env() {
        command.env(key, value);
    }
    command.stdin(Stdio::null());
    command
}

fn commands_in_audit(repo: &Path) -> Vec<(String, String, String)> {
    let repo = Repository::open_with(&repo.to_string_lossy(), PASSWORD).unwrap();
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
    ok(Command::new(CAIRN).args(["config", "check", "--config"]).arg(&s.config));
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
    let output = run(Command::new(CAIRN).args(["config", "check", "--config"]).arg(&config));
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
    let refused = run(Command::new(CAIRN).args(["run", "--config"]).arg(&config));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing was run"));
    // The example is valid apart from its paths.
    let example = ok(Command::new(CAIRN).args(["config", "example"]));
    fs::write(&config, example).unwrap();
    let checked = run(Command::new(CAIRN).args(["config", "check", "--config"]).arg(&config));
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(
        text.lines().filter(|l| l.contains(": ") && !l.ends_with("problems")).all(|l| l.contains("does not exist")),
        "{text}"
    );
}
