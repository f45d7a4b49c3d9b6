//! Monitoring that never lies (issue 22): what `cairn status` judges and the records that every
//! run leaves, whether it ends well, fails, is interrupted or is killed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// `cairn run --config CONFIG`, the clock moved `days` ahead.
fn cairn_run(config: &Path, days: i64) -> Command {
    let mut command = cairn_bare();
    command.arg("run").arg("--config").arg(config).env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG");
    command.env("CAIRN_CLOCK_OFFSET", (days * 86_400).to_string());
    with_password(&mut command);
    command
}

/// `cairn status --json ARGS` and its exit code.
fn status_of<S: AsRef<std::ffi::OsStr>>(command: &mut Command, args: &[S]) -> (serde_json::Value, Option<i32>) {
    let out = run(command.args(["status", "--json"]).args(args));
    let stdout = String::from_utf8_lossy(&out.stdout);
    (serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON {stdout:?}: {e}")), out.status.code())
}

fn source<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let sources = status["sources"].as_array().unwrap();
    sources.iter().find(|s| s["source"] == name).unwrap_or_else(|| panic!("no source {name} in {status}"))
}

fn problems(value: &serde_json::Value) -> String {
    value["problems"].to_string()
}

/// A repository with one snapshot of a small source named `app`.
fn one_source(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let (src, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), "content").unwrap();
    init(&repo);
    ok(cairn(&repo).args(["snapshot", "--source", "app"]).arg(&src));
    (src, repo)
}

#[test]
fn a_repository_without_a_snapshot_is_not_healthy() {
    let scratch = Scratch::new("monitor-empty");
    let repo = scratch.join("repo");
    init(&repo);
    let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(1), "{status}");
    assert!(problems(&status).contains("holds no snapshot"), "{status}");
}

/// The record a sync leaves in its destination is complete (its end and outcome set) and says
/// what it is: a copy received, not a failed offsite copy of the destination's own.
#[test]
fn a_sync_destination_shows_what_it_received_and_is_healthy() {
    let scratch = Scratch::new("monitor-dest");
    let (_, repo) = one_source(&scratch);
    let dest = scratch.join("dest");
    ok(cairn(&repo).arg("sync").arg("--to").arg(&dest));
    let (status, code) = status_of(&mut cairn(&dest), &[] as &[&str]);
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["offsite"].as_array().unwrap().len(), 0, "{status}");
    let received = &status["received"][0];
    assert_eq!(received["last_outcome"], "ok", "{status}");
    assert_eq!(received["to"], repo.to_str().unwrap(), "{status}");
    assert!(received["last_sync"]["age_seconds"].as_i64().unwrap() < 60, "{status}");
    // And the source's own view of the sync is complete too.
    let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["offsite"][0]["last_outcome"], "ok", "{status}");
}

/// A typo (`cairn snapshot /does-not-exist`, a sync to a bucket that is not there) fails status
/// until it is retired by hand; a config retires everything it does not name, and fails what
/// it names and was never snapshotted.
#[test]
fn a_typo_is_retired_and_a_config_decides_what_is_judged() {
    let scratch = Scratch::new("monitor-retire");
    let (src, repo) = one_source(&scratch);
    let typo = scratch.join("does-not-exist");
    assert!(!run(cairn(&repo).arg("snapshot").arg(&typo)).status.success());
    let (before, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(1), "{before}");
    assert!(problems(source(&before, typo.to_str().unwrap())).contains("failed"), "{before}");

    let (retired, code) = status_of(&mut cairn(&repo), &[std::ffi::OsStr::new("--retire"), typo.as_os_str()]);
    assert_eq!(code, Some(0), "{retired}");
    assert_eq!(source(&retired, typo.to_str().unwrap())["retired"], true, "{retired}");
    assert_eq!(source(&retired, "app")["retired"], false, "{retired}");
    // Running again un-retires it: its failure counts again.
    assert!(!run(cairn(&repo).arg("snapshot").arg(&typo)).status.success());
    assert_eq!(status_of(&mut cairn(&repo), &[] as &[&str]).1, Some(1));

    // A config: `app` and `db` configured, `db` never snapshotted; the typo not configured.
    let config = scratch.join("cairn.toml");
    fs::write(
        &config,
        format!(
            "[[source]]\nname = \"app\"\npaths = [\"{}\"]\n\n[[source]]\nname = \"db\"\npaths = [\"{}\"]\n",
            src.display(),
            src.display()
        ),
    )
    .unwrap();
    let (judged, code) = status_of(&mut cairn(&repo), &[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    assert_eq!(code, Some(1), "{judged}");
    assert_eq!(problems(source(&judged, "db")), r#"["never snapshotted"]"#, "{judged}");
    assert_eq!(source(&judged, typo.to_str().unwrap())["retired"], true, "{judged}");
    assert_eq!(source(&judged, "app")["problems"].as_array().unwrap().len(), 0, "{judged}");
    ok(cairn(&repo).args(["snapshot", "--source", "db"]).arg(&src));
    assert_eq!(status_of(&mut cairn(&repo), &[std::ffi::OsStr::new("--config"), config.as_os_str()]).1, Some(0));
    // CAIRN_CONFIG names it as well; --no-config judges everything found.
    assert_eq!(status_of(cairn(&repo).env("CAIRN_CONFIG", &config), &[] as &[&str]).1, Some(0));
    assert_eq!(status_of(cairn(&repo).env("CAIRN_CONFIG", &config), &["--no-config"]).1, Some(1));
}

/// Two 64 MiB files of noise: a snapshot of them runs long enough to be stopped half way.
fn big_source(scratch: &Scratch) -> PathBuf {
    let src = scratch.join("big");
    fs::create_dir_all(&src).unwrap();
    for i in 0..2 {
        write_noise_file(&src.join(format!("big-{i}")), 64 << 20, i);
    }
    src
}

/// Starts a snapshot of `src` and returns it once it has written its first pack.
fn snapshot_under_way(repo: &Path, src: &Path) -> std::process::Child {
    let packs = pack_count(repo);
    let mut command = cairn(repo);
    command.args(["snapshot", "--source", "big"]).arg(src).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = default_signals(&mut command).spawn().unwrap();
    let started = Instant::now();
    while pack_count(repo) == packs && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack written");
        std::thread::sleep(Duration::from_micros(300));
    }
    assert!(child.try_wait().unwrap().is_none(), "the snapshot ended before it could be stopped");
    child
}

/// `kill -9` leaves a start record that nothing answers: status reports the run as killed (and a
/// repository whose only snapshot was killed holds none, which is no health). SIGINT and SIGTERM
/// write the failed record themselves, say so and exit 128 + the signal. A good run clears it.
#[test]
fn interrupted_and_killed_runs_are_reported_as_failed() {
    let scratch = Scratch::new("monitor-killed");
    let (src, repo) = (big_source(&scratch), scratch.join("repo"));
    init(&repo);

    let mut child = snapshot_under_way(&repo, &src);
    child.kill().unwrap();
    child.wait().unwrap();
    let (status1, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(1), "{status1}");
    assert!(problems(&status1).contains("holds no snapshot"), "{status1}");
    assert!(problems(source(&status1, "big")).contains("killed"), "{status1}");

    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let child = snapshot_under_way(&repo, &src);
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + signal), "{stderr}");
        assert!(stderr.contains(&format!("interrupted by {name}")), "{stderr}");
        let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
        assert_eq!(code, Some(1), "{status}");
        let problems = problems(source(&status, "big"));
        assert!(problems.contains(&format!("interrupted by {name}")) && !problems.contains("killed"), "{status}");
    }

    ok(cairn(&repo).args(["snapshot", "--source", "big"]).arg(&src));
    let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(0), "{status}");

    // A sync killed half way is a failed sync to its destination.
    let dest = scratch.join("dest");
    let mut sync = cairn(&repo).arg("sync").arg("--to").arg(&dest).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while !fs::read_dir(dest.join("packs")).is_ok_and(|mut d| d.next().is_some()) && sync.try_wait().unwrap().is_none()
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack sent");
        std::thread::sleep(Duration::from_micros(300));
    }
    assert!(sync.try_wait().unwrap().is_none(), "the sync ended before it could be killed");
    sync.kill().unwrap();
    sync.wait().unwrap();
    let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(1), "{status}");
    let text = problems(&status);
    assert!(text.contains(&format!("last sync to {} failed", dest.display())) && text.contains("killed"), "{status}");
}

/// A run that is going on is no problem: its start record is answered by a live process.
#[test]
fn a_run_under_way_is_listed_as_running() {
    let scratch = Scratch::new("monitor-running");
    let (_, repo) = one_source(&scratch);
    let src = big_source(&scratch);
    let mut child = snapshot_under_way(&repo, &src);
    let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(status["running"].to_string().contains("snapshot (pid"), "{status}");
    assert_eq!(code, Some(0), "{status}");
}

/// `cairn run` with its drill on the offsite copy: the drill counts for the local status too.
#[test]
fn an_offsite_drill_counts_in_the_local_status() {
    let scratch = Scratch::new("monitor-offsite-drill");
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/file"), "content").unwrap();
    let config = scratch.join("cairn.toml");
    fs::write(
        &config,
        "repository = \"repo\"\ntemp_dir = \".\"\ncost_per_gib_month = 20.0\n[[source]]\nname = \"src\"\npaths = [\"src\"]\n\n\
         [[offsite]]\nname = \"away\"\nrepository = \"away\"\n\n[drill]\nevery = \"1h\"\nrepository = \"away\"\n",
    )
    .unwrap();
    ok(&mut cairn_run(&config, 0));
    let repo = scratch.join("repo");
    let (status, code) = status_of(
        &mut cairn(&repo),
        &[std::ffi::OsStr::new("--max-drill-age"), "1h".as_ref(), "--config".as_ref(), config.as_os_str()],
    );
    assert_eq!(code, Some(0), "{status}");
    assert!(source(&status, "src")["last_drill_ok"].is_object(), "{status}");

    // The Prometheus file carries it all, per source.
    let prom = scratch.join("cairn.prom");
    let (_, code) = status_of(
        &mut cairn(&repo),
        &[std::ffi::OsStr::new("--prometheus"), prom.as_os_str(), "--config".as_ref(), config.as_os_str()],
    );
    assert_eq!(code, Some(0));
    let text = fs::read_to_string(&prom).unwrap();
    let value = |prefix: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let away = scratch.join("away");
    assert!(value("cairn_snapshot_age_seconds{source=\"src\"}") < 600.0);
    assert!(value("cairn_drill_age_seconds{source=\"src\"}") < 600.0);
    assert!(value(&format!("cairn_offsite_age_seconds{{source=\"src\",to=\"{}\"}}", away.display())) < 600.0);
    assert_eq!(value("cairn_last_run_success{source=\"src\",command=\"snapshot\"}"), 1.0);
    assert_eq!(value("cairn_last_run_success{source=\"src\",command=\"drill\"}"), 1.0);
    assert!(value("cairn_stored_bytes{source=\"src\"}") > 0.0);
    assert!(value("cairn_monthly_cost{source=\"src\"}") > 0.0);
    assert_eq!(value("cairn_healthy "), 1.0);
}

#[test]
fn config_check_speaks_json() {
    let scratch = Scratch::new("monitor-config-json");
    let config = scratch.join("cairn.toml");
    fs::write(&config, "[[source]]\nname = \"a\"\npaths = [\"/\"]\nbogus = 1\n").unwrap();
    let out = run(cairn_bare().args(["--json", "config", "check", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"][0]["line"], 4, "{report}");
}

/// SIGTERM to `cairn run` (systemd stopping it) while a hook runs: the hook is stopped too, and
/// the run's record says it failed, interrupted.
#[test]
fn a_stopped_cycle_stops_its_step_and_records_why() {
    let scratch = Scratch::new("monitor-run-signal");
    fs::create_dir_all(scratch.join("src")).unwrap();
    let config = scratch.join("cairn.toml");
    let (port, seen) = http_server();
    fs::write(
        &config,
        format!(
            "repository = \"repo\"\n[[source]]\nname = \"src\"\npaths = [\"src\"]\nbefore = \"sleep 30\"\n\n\
             [notify]\nfailure = \"http://127.0.0.1:{port}/fail\"\n"
        ),
    )
    .unwrap();
    let mut command = cairn_run(&config, 0);
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command.spawn().unwrap();
    // The hook runs once the repository is there.
    while !scratch.join("repo/config").exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "the run never created its repository");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "the hook was not stopped");
    let repo = cairn::repository::Repository::open(
        &cairn::repository::Location::parse(&scratch.join("repo").to_string_lossy()),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    let records = cairn::audit::read_all(&repo).unwrap();
    let run = records.iter().find(|r| r.command == "run").expect("the run's record");
    assert_eq!(run.outcome, cairn::format::audit::Outcome::Failed);
    assert!(run.errors.iter().any(|e| e.contains("interrupted by SIGTERM")), "{:?}", run.errors);
    // Status says so too, though no step failed on its own.
    let mut command = cairn(&scratch.join("repo"));
    let (status, code) = status_of(&mut command, &["--no-config"]);
    assert_eq!(code, Some(1), "{status}");
    assert!(problems(&status).contains("last run failed") && problems(&status).contains("SIGTERM"), "{status}");
    // And the monitor heard of it: the failure ping, saying why.
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.iter().any(|(_, path, body)| path == "/fail" && body.contains("interrupted by SIGTERM")),
        "{requests:?}"
    );
}

/// A month of daily `cairn run`s in a minute (the clock moved a day per cycle with
/// CAIRN_CLOCK_OFFSET): one source whose path vanishes on day 25 (still failing at the end), a
/// sync that fails on day 12 (fixed the next day), a run killed with `kill -9` on day 15 (the
/// next run supersedes it) and a source dropped from the config on day 10 (retired). At the end
/// status names exactly the problem still current, and `cairn log` shows every one of them.
#[test]
fn a_simulated_month_ends_with_exactly_the_current_problems() {
    let scratch = Scratch::new("monitor-month");
    for dir in ["web", "flaky", "old"] {
        fs::create_dir_all(scratch.join(dir)).unwrap();
        fs::write(scratch.join(dir).join("file"), dir).unwrap();
    }
    let config = scratch.join("cairn.toml");
    let write_config = |with_old: bool| {
        let old = if with_old { "[[source]]\nname = \"old\"\npaths = [\"old\"]\n" } else { "" };
        let text = format!(
            "repository = \"repo\"\ntemp_dir = \".\"\n\n[retention]\nkeep_daily = 7\n\n\
             [[source]]\nname = \"web\"\npaths = [\"web\"]\nbefore = \"sh hook.sh\"\n\n\
             [[source]]\nname = \"flaky\"\npaths = [\"flaky\"]\n\n{old}\n\
             [[offsite]]\nname = \"away\"\nrepository = \"away\"\n\n[drill]\nevery = \"7d\"\n\n\
             [check]\nread_data_days = 7\n"
        );
        fs::write(&config, text).unwrap();
    };
    write_config(true);
    // The hook stalls only when told to, and says where it is.
    fs::write(scratch.join("hook.sh"), "echo $$ > hook.pid\nif [ -e stall ]; then touch stalled; sleep 60; fi\n")
        .unwrap();
    let day = |n: u64| {
        let mut command = cairn_run(&config, n as i64);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    };
    let (away, parked) = (scratch.join("away"), scratch.join("away.parked"));
    for n in 0..30u64 {
        match n {
            10 => write_config(false),
            12 => {
                fs::rename(&away, &parked).unwrap();
                fs::write(&away, "not a repository").unwrap();
            }
            13 => {
                fs::remove_file(&away).unwrap();
                fs::rename(&parked, &away).unwrap();
            }
            25 => fs::remove_dir_all(scratch.join("flaky")).unwrap(),
            _ => {}
        }
        fs::write(scratch.join("web/file"), format!("day {n}")).unwrap();
        if n == 15 {
            fs::write(scratch.join("stall"), "").unwrap();
            let mut run = day(n).spawn().unwrap();
            let started = Instant::now();
            while !scratch.join("stalled").exists() {
                assert!(started.elapsed() < Duration::from_secs(30), "the hook never stalled");
                std::thread::sleep(Duration::from_millis(5));
            }
            run.kill().unwrap();
            run.wait().unwrap();
            let hook: i32 = fs::read_to_string(scratch.join("hook.pid")).unwrap().trim().parse().unwrap();
            unsafe { libc::kill(-hook, libc::SIGKILL) };
            fs::remove_file(scratch.join("stall")).unwrap();
            continue;
        }
        let out = day(n).output().unwrap();
        let expect_ok = !matches!(n, 12) && n < 25;
        assert_eq!(out.status.success(), expect_ok, "day {n}: {out:?}");
    }

    let repo = scratch.join("repo");
    let at_end = (30 * 86_400).to_string();
    let mut command = cairn(&repo);
    command.env("CAIRN_CLOCK_OFFSET", &at_end);
    let (status, code) = status_of(
        &mut command,
        &[
            std::ffi::OsStr::new("--max-age"),
            "26h".as_ref(),
            "--max-drill-age".as_ref(),
            "8d".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
    );
    assert_eq!(code, Some(1), "{status}");
    assert_eq!(status["problems"].as_array().unwrap().len(), 0, "nothing repository-wide is current: {status}");
    let failing: Vec<&str> = (status["sources"].as_array().unwrap().iter())
        .filter(|s| !s["problems"].as_array().unwrap().is_empty())
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["flaky"], "{status}");
    assert!(problems(source(&status, "flaky")).contains("last snapshot failed"), "{status}");
    assert_eq!(source(&status, "old")["retired"], true, "{status}");
    assert_eq!(status["offsite"][0]["last_outcome"], "ok", "{status}");

    let mut command = cairn(&repo);
    command.env("CAIRN_CLOCK_OFFSET", &at_end);
    let log = json(command.arg("log"));
    let entries = log.as_array().unwrap();
    let has = |command: &str, source: &str, outcome: &str, text: &str| {
        entries.iter().any(|r| {
            r["command"] == command
                && (source.is_empty() || r["source"] == source)
                && r["outcome"] == outcome
                && (text.is_empty() || r.to_string().contains(text))
        })
    };
    assert!(has("snapshot", "flaky", "failed", ""), "the failed source");
    assert!(has("sync", "", "failed", ""), "the failed sync");
    assert!(has("run", "", "failed", "killed"), "the killed run");
    assert!(has("snapshot", "old", "ok", ""), "the retired source's runs");
    // Every cycle left its run record (the killed one as killed).
    assert_eq!(entries.iter().filter(|r| r["command"] == "run").count(), 30);
}

/// Per source, the newest snapshot each sync put offsite, with its age: a copy older than
/// --max-offsite-age, or none, is a problem until the next sync.
#[test]
fn offsite_coverage_is_judged_per_source() {
    let scratch = Scratch::new("monitor-offsite");
    let (src, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), "v1").unwrap();
    init(&repo);
    let dest = scratch.join("dest");
    let three_days_ago = (-3 * 86_400).to_string();
    ok(cairn(&repo).env("CAIRN_CLOCK_OFFSET", &three_days_ago).args(["snapshot", "--source", "app"]).arg(&src));
    ok(cairn(&repo).env("CAIRN_CLOCK_OFFSET", &three_days_ago).arg("sync").arg("--to").arg(&dest));
    fs::write(src.join("file"), "v2").unwrap();
    ok(cairn(&repo).args(["snapshot", "--source", "app"]).arg(&src));
    ok(cairn(&repo).args(["snapshot", "--source", "db"]).arg(&src));
    let (status, code) = status_of(&mut cairn(&repo), &["--max-offsite-age", "1d"]);
    assert_eq!(code, Some(1), "{status}");
    assert!(problems(source(&status, "app")).contains("newest copy in"), "{status}");
    assert!(problems(source(&status, "app")).contains("is 3d old"), "{status}");
    assert!(problems(source(&status, "db")).contains("no copy in"), "{status}");
    let copy = &source(&status, "app")["offsite"][0];
    assert!(copy["age_seconds"].as_i64().unwrap() >= 3 * 86_400, "{status}");

    ok(cairn(&repo).arg("sync").arg("--to").arg(&dest));
    let (status, code) = status_of(&mut cairn(&repo), &["--max-offsite-age", "1d"]);
    assert_eq!(code, Some(0), "{status}");
    let newest = source(&status, "app")["latest_snapshot"]["snapshot"].clone();
    assert_eq!(source(&status, "app")["offsite"][0]["snapshot"], newest, "{status}");
}

/// `[check] read_data_days = 2`: each run reads the day's half of the packs; status (given the
/// config) flags a half not read within two days and one of grace.
#[test]
fn a_read_data_rotation_that_falls_behind_is_flagged() {
    let scratch = Scratch::new("monitor-rotation");
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/file"), "content").unwrap();
    let config = scratch.join("cairn.toml");
    fs::write(
        &config,
        "repository = \"repo\"\n[[source]]\nname = \"src\"\npaths = [\"src\"]\n\n[check]\nread_data_days = 2\n",
    )
    .unwrap();
    let at_day = |n: i64| (n * 86_400).to_string();
    let cycle = |n: i64| ok(&mut cairn_run(&config, n));
    let repo = scratch.join("repo");
    let status_at = |n: i64| {
        let mut command = cairn(&repo);
        command.env("CAIRN_CLOCK_OFFSET", at_day(n));
        status_of(&mut command, &[std::ffi::OsStr::new("--config"), config.as_os_str()])
    };
    let first = cycle(0);
    assert!(first.contains("check --read-data-subset"), "{first}");
    let (status, code) = status_at(0);
    assert_eq!(code, Some(1), "{status}");
    assert_eq!(problems(&status).matches("never read").count(), 1, "one half read, the other not yet: {status}");
    cycle(1);
    assert_eq!(status_at(1).1, Some(0));
    let (status, code) = status_at(5);
    assert_eq!(code, Some(1), "{status}");
    assert_eq!(problems(&status).matches("rotation behind").count(), 2, "{status}");
}

/// A loopback HTTP server that answers 200 to everything and keeps (method, path, body).
/// What [`http_server`] saw: (method, path, body) of each request.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

fn http_server() -> (u16, Seen) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            kept.lock().unwrap().push((method, path, String::from_utf8_lossy(&body).into_owned()));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

/// `[notify]`: pings when a run starts and when it succeeds or fails, and the JSON summary to a
/// webhook, against a server on loopback; one that cannot be reached is a warning in the output
/// and the record, and changes nothing else.
#[test]
fn a_run_notifies_its_start_and_its_end() {
    let scratch = Scratch::new("monitor-notify");
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/file"), "content").unwrap();
    let (port, seen) = http_server();
    let config = scratch.join("cairn.toml");
    let write = |paths: &str, webhook: &str| {
        let text = format!(
            "repository = \"repo\"\n[[source]]\nname = \"src\"\npaths = [{paths}]\n\n[notify]\n\
             start = \"http://127.0.0.1:{port}/ping/start\"\nsuccess = \"http://127.0.0.1:{port}/ping\"\n\
             failure = \"http://127.0.0.1:{port}/ping/fail\"\nwebhook = \"{webhook}\"\n"
        );
        fs::write(&config, text).unwrap();
    };
    let cycle = || run(&mut cairn_run(&config, 0));
    let hook = format!("http://127.0.0.1:{port}/hook");
    write("\"src\"", &hook);
    assert!(cycle().status.success());
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    let paths: Vec<&str> = requests.iter().map(|(_, path, _)| path.as_str()).collect();
    assert_eq!(paths, ["/ping/start", "/ping", "/hook"], "{requests:?}");
    assert!(requests.iter().all(|(method, _, _)| method == "POST"));
    let summary: serde_json::Value = serde_json::from_str(&requests[2].2).unwrap();
    assert_eq!(summary["outcome"], "ok", "{summary}");
    assert!(summary["steps"].as_array().unwrap().iter().any(|s| s["step"] == "snapshot src"), "{summary}");

    write("\"src\", \"missing\"", &hook);
    assert!(!cycle().status.success());
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    let paths: Vec<&str> = requests.iter().map(|(_, path, _)| path.as_str()).collect();
    assert_eq!(paths, ["/ping/start", "/ping/fail", "/hook"], "{requests:?}");
    assert!(requests[1].2.contains("failed"), "the failure ping says what failed: {}", requests[1].2);
    let summary: serde_json::Value = serde_json::from_str(&requests[2].2).unwrap();
    assert_eq!(summary["outcome"], "failed", "{summary}");

    // A webhook nobody answers: the run still succeeds, says so, and records it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    write("\"src\"", &format!("http://127.0.0.1:{closed}/secret-token"));
    let out = cycle();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("notification `webhook`") && stderr.contains("not delivered"), "{stderr}");
    assert!(!stderr.contains("secret-token"), "the URL's path may be a secret: {stderr}");
    let repo = cairn::repository::Repository::open(
        &cairn::repository::Location::parse(&scratch.join("repo").to_string_lossy()),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    let records = cairn::audit::read_all(&repo).unwrap();
    let last_run = records.iter().rev().find(|r| r.command == "run").unwrap();
    assert_eq!(last_run.details["notify_failures"].as_array().unwrap().len(), 1, "{:?}", last_run.details);
}

/// Ctrl-C in a terminal: the progress bar is taken off the screen before the message that says
/// the run was interrupted and recorded as failed (cairn given a terminal by `script`).
#[test]
fn ctrl_c_clears_the_progress_bar_and_says_so() {
    let scratch = Scratch::new("monitor-tty");
    let (src, repo) = (big_source(&scratch), scratch.join("repo"));
    init(&repo);
    let typescript = scratch.join("typescript");
    let line = format!("{CAIRN} --repo {} snapshot --source big {}", repo.display(), src.display());
    let mut command = Command::new("script");
    command.args(["-qfec", &line]).arg(&typescript).stdin(Stdio::null()).stdout(Stdio::null());
    with_password(&mut command).env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG");
    let mut script = command.spawn().expect("script (bsdutils) runs");
    let started = Instant::now();
    let packs = pack_count(&repo);
    while pack_count(&repo) == packs {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack written");
        assert!(script.try_wait().unwrap().is_none(), "the snapshot ended before it could be stopped");
        std::thread::sleep(Duration::from_micros(300));
    }
    let pids = Command::new("pgrep").arg("-f").arg(format!("^{line}")).output().unwrap();
    let pid: i32 = String::from_utf8_lossy(&pids.stdout).lines().next().expect("cairn runs").trim().parse().unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    script.wait().unwrap();
    let shown = String::from_utf8_lossy(&fs::read(&typescript).unwrap()).into_owned();
    let at = shown.find("error: interrupted by SIGINT").unwrap_or_else(|| panic!("no message in {shown:?}"));
    assert!(shown[..at].contains("snapshot "), "the bar was drawn: {shown:?}");
    assert!(
        shown[..at].ends_with("\r\x1b[2K"),
        "the bar is cleared before the message: {:?}",
        &shown[at.saturating_sub(200)..]
    );
}

/// A drill killed half way (no --source given) is a failed drill of the source it was drilling,
/// which that source's next good drill clears.
#[test]
fn a_killed_drill_is_a_failed_drill_of_its_source() {
    let scratch = Scratch::new("monitor-drill-killed");
    let (src, repo) = (big_source(&scratch), scratch.join("repo"));
    init(&repo);
    ok(cairn(&repo).args(["snapshot", "--source", "big"]).arg(&src));
    let drills = scratch.join("drills");
    let mut child = cairn(&repo).args(["drill", "--scratch"]).arg(&drills).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while !fs::read_dir(&drills)
        .is_ok_and(|d| d.flatten().any(|e| fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some())))
    {
        assert!(started.elapsed() < Duration::from_secs(60), "the drill never started restoring");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(1), "{status}");
    assert!(problems(source(&status, "big")).contains("last drill failed"), "{status}");
    ok(cairn(&repo).args(["drill", "--scratch"]).arg(&drills));
    let (status, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(0), "{status}");
}

/// Compaction deletes audit records only: never one it could not read (a damaged record stays,
/// and status keeps reporting it), and what status says of the runs stays the same.
#[test]
fn prune_compacts_the_audit_log_but_never_a_damaged_record() {
    let scratch = Scratch::new("monitor-compact");
    let (src, repo) = one_source(&scratch);
    for _ in 0..3 {
        ok(cairn(&repo).args(["snapshot", "--source", "app"]).arg(&src));
    }
    let audit_files = || -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(repo.join("audit")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    };
    let damaged = audit_files()[0].clone();
    let len = fs::metadata(&damaged).unwrap().len();
    flip_byte(&damaged, len / 2, 1);
    let before = audit_files().len();
    let (status_before, _) = status_of(&mut cairn(&repo), &[] as &[&str]);
    ok(cairn(&repo).args(["prune", "--keep-audit", "1s"]));
    let after = audit_files();
    assert!(after.contains(&damaged), "the damaged record was deleted");
    assert!(after.len() < before, "nothing was compacted: {} -> {}", before, after.len());
    let (status_after, code) = status_of(&mut cairn(&repo), &[] as &[&str]);
    assert_eq!(code, Some(1), "the damage is still reported: {status_after}");
    assert!(problems(&status_after).contains("damaged repository file"), "{status_after}");
    assert_eq!(source(&status_before, "app")["latest_snapshot"], source(&status_after, "app")["latest_snapshot"]);
    assert_eq!(source(&status_before, "app")["problems"], source(&status_after, "app")["problems"]);
}

/// With CAIRN_REPO exported (as README's examples do) and a config that names its repository,
/// `status --config` and `stats --config` read the repository that `run --config` wrote to:
/// `--repo`, then the config's `repository`, then CAIRN_REPO, for every command.
#[test]
fn status_and_stats_read_the_repository_run_writes_to() {
    let scratch = Scratch::new("monitor-which-repo");
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/file"), "content").unwrap();
    let (repo, other) = (scratch.join("repo"), scratch.join("other"));
    init(&other);
    let config = scratch.join("cairn.toml");
    let text =
        format!("repository = {:?}\n[[source]]\nname = \"app\"\npaths = [\"src\"]\n", repo.display().to_string());
    fs::write(&config, text).unwrap();
    ok(cairn_run(&config, 0).env("CAIRN_REPO", &other));
    let exported = || {
        let mut command = cairn_bare();
        command.env("CAIRN_REPO", &other).env_remove("CAIRN_CONFIG").stdin(Stdio::null());
        with_password(&mut command);
        command
    };
    let (status, code) = status_of(&mut exported(), &[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(source(&status, "app")["snapshots"], 1, "{status}");
    let stats = json(exported().arg("stats").arg("--config").arg(&config));
    assert!(stats.to_string().contains("\"app\""), "{stats}");
    // The variable left unused is said, once; not when it names the config's repository.
    let said = run(exported().arg("stats").arg("--config").arg(&config));
    let err = String::from_utf8_lossy(&said.stderr);
    assert_eq!(err.matches("CAIRN_REPO names").count(), 1, "{err}");
    let said = run(exported().env("CAIRN_REPO", &repo).arg("stats").arg("--config").arg(&config));
    assert!(!String::from_utf8_lossy(&said.stderr).contains("CAIRN_REPO"), "{:?}", said);
    // --repo beats the config.
    let (status, code) =
        status_of(exported().arg("--repo").arg(&other), &[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    assert_eq!(code, Some(1), "{status}");
}

/// A run killed inside a container (a pid namespace, where it was pid 1) is killed, not running:
/// on the host pid 1 is always alive, so the start record's pid alone would keep it "running"
/// for a week. Needs `unshare --pid` (root); skipped without it.
#[test]
fn a_run_killed_in_a_pid_namespace_is_not_running() {
    if !Command::new("unshare").args(["--pid", "--fork", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare --pid is not allowed here");
        return;
    }
    let scratch = Scratch::new("monitor-pidns");
    let (_, repo) = one_source(&scratch);
    let audit_files = || fs::read_dir(repo.join("audit")).map_or(0, |d| d.count());
    let before = audit_files();
    let command = cairn(&repo);
    let inner = command.get_program().to_owned();
    let mut unshare = Command::new("unshare");
    unshare.args(["--pid", "--fork"]).arg(inner).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => unshare.env(key, value),
            None => unshare.env_remove(key),
        };
    }
    unshare.args(["snapshot", "--source", "app", "--stdin-from-command", "sleep 30; echo x", "--stdin-filename", "x"]);
    let mut child = unshare.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while audit_files() == before {
        assert!(started.elapsed() < Duration::from_secs(30), "no start record");
        std::thread::sleep(Duration::from_millis(10));
    }
    let children = fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id())).unwrap();
    let inner_pid: i32 = children.split_whitespace().next().expect("unshare's child").parse().unwrap();
    unsafe { libc::kill(inner_pid, libc::SIGKILL) };
    child.wait().unwrap();
    let (status, code) = status_of(&mut cairn(&repo), &["--no-config"]);
    assert!(status["running"].as_array().unwrap().is_empty(), "{status}");
    assert!(problems(source(&status, "app")).contains("killed"), "{status}");
    assert_eq!(code, Some(1), "{status}");
}

/// A snapshot taken while the clock ran a day ahead does not hide a failure after the clock was
/// put right: it is no longer the newest, and being dated in the future is a problem of its own.
#[test]
fn a_clock_that_ran_ahead_hides_no_later_failure() {
    let scratch = Scratch::new("monitor-future");
    let (src, repo) = one_source(&scratch);
    ok(cairn(&repo).env("CAIRN_CLOCK_OFFSET", "86400").args(["snapshot", "--source", "app"]).arg(&src));
    let out = run(cairn(&repo).args(["snapshot", "--source", "app"]).arg(scratch.join("moved")));
    assert!(!out.status.success());
    let (status, code) = status_of(&mut cairn(&repo), &["--no-config", "--max-age", "26h"]);
    assert_eq!(code, Some(1), "{status}");
    assert!(problems(source(&status, "app")).contains("last snapshot failed"), "{status}");
    assert!(problems(&status).contains("dated in the future"), "{status}");
    assert!(source(&status, "app")["latest_snapshot"]["age_seconds"].as_i64().unwrap() >= 0, "{status}");
}

/// A record's message quoting a hostile file name (or forged by another host) cannot forge a
/// line of `cairn log` or `cairn status`, nor send the terminal an escape sequence; JSON keeps the
/// message as it is.
#[test]
fn log_and_status_escape_control_characters_in_messages() {
    let scratch = Scratch::new("monitor-escape");
    let (_, repo) = one_source(&scratch);
    let opened = cairn::repository::Repository::open(
        &cairn::repository::Location::parse(&repo.to_string_lossy()),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    let forged = "cannot read x\n2026-12-06 10:00:00  snapshot ok         app      1.0s  snapshot 12345678\x1b[2K";
    cairn::audit::Run::failed_before(&opened, "snapshot", "app\u{202e}", forged).unwrap();
    let log = ok(cairn(&repo).arg("log"));
    let status = String::from_utf8_lossy(&run(cairn(&repo).arg("status")).stdout).into_owned();
    for text in [&log, &status] {
        assert!(!text.contains('\x1b') && !text.contains('\u{202e}'), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("2026-12-06 10:00:00")), "{text}");
        assert!(text.contains("cannot read x\\n2026-12-06"), "{text}");
    }
    assert!(json(cairn(&repo).arg("log")).to_string().contains("\\u001b[2K"));
}

/// Rolling an in-place restore back (restoring its safety snapshot) is a restore of the source
/// it protected: `pre-restore` is never listed as a source ("never snapshotted" forever).
#[test]
fn a_rollback_counts_for_the_source_its_safety_snapshot_protected() {
    let scratch = Scratch::new("monitor-rollback");
    let (src, repo) = one_source(&scratch);
    fs::write(src.join("file"), "changed since").unwrap();
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&src));
    let safety = report["safety_snapshot"].as_str().unwrap().to_string();
    ok(cairn(&repo).args(["restore", &safety, "--in-place", "--delete", "--target"]).arg(&src));
    assert_eq!(fs::read_to_string(src.join("file")).unwrap(), "changed since");
    let (status, code) = status_of(&mut cairn(&repo), &["--no-config"]);
    assert!(status["sources"].as_array().unwrap().iter().all(|s| s["source"] != "pre-restore"), "{status}");
    let runs = source(&status, "app")["last_runs"].to_string();
    assert!(runs.contains("restore"), "{status}");
    assert_eq!(code, Some(0), "{status}");
}
