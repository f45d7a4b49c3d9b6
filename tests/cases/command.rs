//! Command sources: `cairn snapshot --stdin-from-command` (and `--stdin`) store a stream as one
//! file, in bounded memory; a command that fails, is killed or cannot be found commits nothing;
//! `kind = "command"` sources in `cairn run` fail alone, and drill like any other.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

/// `sqlite3 DB .dump`, run in `dir`.
fn dump(dir: &Path, db: &str) -> Vec<u8> {
    let out = Command::new("sqlite3").arg(db).arg(".dump").current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A database of a few thousand rows, made with the sqlite3 command line tool.
fn make_database(path: &Path) {
    let sql = "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, note TEXT);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
        INSERT INTO orders SELECT i, 'customer ' || (i % 97), hex(randomblob(40)) FROM n;
        CREATE INDEX by_customer ON orders(customer);";
    let out = Command::new("sqlite3").arg(path).arg(sql).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn snapshot_list(repo: &Path) -> Vec<serde_json::Value> {
    json(cairn(repo).arg("snapshots")).as_array().unwrap().clone()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_sqlite_dump_restores_byte_for_byte() {
    let scratch = Scratch::new("command-dump");
    let (repo, target) = (scratch.join("repo"), scratch.join("restored"));
    make_database(&scratch.join("app.db"));
    init(&repo);
    // Run in the scratch directory; the command gets its source's name, not the password.
    let line = r#"test -z "$CAIRN_PASSWORD" && test "$CAIRN_SOURCE" = appdb && sqlite3 app.db .dump"#;
    let saved = json(
        cairn(&repo)
            .args(["snapshot", "--stdin-from-command", line, "--stdin-filename", "db.sql", "--source", "appdb"])
            .args(["--tag", "nightly"])
            .current_dir(scratch.path()),
    );
    let expected = dump(scratch.path(), "app.db");
    assert!(expected.len() > 300_000, "{} bytes", expected.len());
    assert_eq!(saved["summary"]["bytes"], expected.len() as u64);
    assert_eq!(saved["summary"]["files"], 1);
    let listed = snapshot_list(&repo);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["paths"], serde_json::json!(["command:db.sql"]));
    assert_eq!(listed[0]["source"], "appdb");

    // restore, dump, and the database it rebuilds.
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    let restored = target.join("db.sql");
    assert!(fs::read(&restored).unwrap() == expected, "restored dump differs");
    assert_eq!(fs::metadata(&restored).unwrap().permissions().mode() & 0o7_777, 0o600);
    let dumped = run(cairn(&repo).args(["dump", "latest", "db.sql"]));
    assert!(dumped.status.success() && dumped.stdout == expected, "cairn dump differs");
    let rebuilt = Command::new("sqlite3")
        .arg(scratch.join("rebuilt.db"))
        .stdin(fs::File::open(&restored).unwrap())
        .status()
        .unwrap();
    assert!(rebuilt.success());
    assert!(dump(scratch.path(), "rebuilt.db") == expected, "the dump rebuilds the same database");

    // A drill restores the file to a scratch directory and verifies it.
    let drills = scratch.join("drills");
    let report = json(cairn(&repo).args(["drill", "--source", "appdb", "--scratch"]).arg(&drills));
    assert_eq!((report["checks_failed"].clone(), report["checks_passed"].clone()), (0.into(), 1.into()), "{report}");
    // Restoring over a directory that holds more: refused without a flag, --in-place replaces
    // the dump and keeps the rest.
    fs::write(&restored, b"stale").unwrap();
    fs::write(target.join("other"), b"kept").unwrap();
    assert_eq!(run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target)).status.code(), Some(1));
    ok(cairn(&repo).args(["restore", "latest", "--source", "appdb", "--in-place", "--target"]).arg(&target));
    assert!(fs::read(&restored).unwrap() == expected);
    assert_eq!(fs::read(target.join("other")).unwrap(), b"kept");
}

#[test]
fn standard_input_is_a_source_too() {
    let scratch = Scratch::new("command-stdin");
    let repo = scratch.join("repo");
    let mut child = cairn(&repo)
        .args(["--quiet", "snapshot", "--stdin", "--stdin-filename", "notes.txt"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"line one\nline two\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(snapshot_list(&repo)[0]["paths"], serde_json::json!(["stdin:notes.txt"]));
    assert_eq!(ok(cairn(&repo).args(["dump", "latest", "notes.txt"])), "line one\nline two\n");
    // The default name; an empty stream is an empty file.
    ok(cairn(&repo).args(["snapshot", "--stdin"]));
    assert_eq!(ok(cairn(&repo).args(["dump", "latest", "stdin"])), "");

    // Mistakes of the command line store nothing, and create no repository.
    let fresh = scratch.join("never");
    for (args, says) in [
        (vec!["--stdin", "--stdin-filename", "a/b"], "holds a `/`"),
        (vec!["--stdin", "--stdin-filename", ".."], "is not a file name"),
        (vec!["--stdin-filename", "x", "/"], "give one of them"),
        (vec!["--stdin-from-command", "true", "--exclude", "*.log"], "a stream has none"),
    ] {
        let out = run(cairn(&fresh).arg("snapshot").args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = run(cairn(&fresh).args(["snapshot", "--stdin"]).arg(scratch.path()));
    assert_eq!(out.status.code(), Some(2), "a path and --stdin: {}", stderr(&out));
    assert!(!fresh.exists());
}

#[test]
fn a_failing_command_commits_nothing_and_says_why() {
    let scratch = Scratch::new("command-fail");
    let repo = scratch.join("repo");
    init(&repo);
    let cases = [
        // Enough output that packs are written before the failure.
        (
            "head -c 40000000 /dev/urandom; echo 'pg_dump: error: connection to server lost' >&2; exit 3",
            vec!["exited with status 3", "connection to server lost"],
        ),
        ("echo partial; kill -KILL $$", vec!["was killed by signal 9 (SIGKILL)"]),
        ("echo partial; kill -TERM $$", vec!["was killed by signal 15 (SIGTERM)"]),
        ("no-such-dump-tool --all", vec!["exited with status 127", "not found"]),
        // Its output closed early, its failure after: the status is still waited for.
        ("echo partial; exec >&-; sleep 1; exit 4", vec!["exited with status 4"]),
    ];
    for (line, says) in &cases {
        let out = run(cairn(&repo).args(["snapshot", "--source", "db", "--stdin-from-command", line]));
        assert_eq!(out.status.code(), Some(1), "{line}");
        let text = stderr(&out);
        for expected in says {
            assert!(text.contains(expected), "{line}: {text}");
        }
        assert!(text.contains("no snapshot was written"), "{text}");
    }
    assert!(pack_count(&repo) > 0, "the first command's output reached packs");
    assert!(snapshot_list(&repo).is_empty(), "no snapshot of a failed command");
    let log = json(cairn(&repo).arg("log"));
    let failed = log.as_array().unwrap().iter().filter(|r| r["command"] == "snapshot" && r["outcome"] == "failed");
    assert_eq!(failed.count(), cases.len(), "{log}");
    // The packs it left are garbage a check accepts and a prune removes.
    ok(cairn(&repo).arg("check"));
    ok(cairn(&repo).arg("prune"));
    assert_eq!(pack_count(&repo), 0);
}

#[test]
fn a_large_output_is_stored_in_bounded_memory() {
    const LEN: u64 = 320 << 20;
    let scratch = Scratch::new("command-large");
    let (repo, big) = (scratch.join("repo"), scratch.join("big"));
    write_noise_file(&big, LEN, 11);
    init(&repo);
    // Through a pipe the command never holds whole either: `cat` of incompressible data.
    let line = format!("cat '{}'", big.display());
    let (code, rss) = run_measuring_rss(cairn(&repo).args([
        "--quiet",
        "snapshot",
        "--stdin-from-command",
        &line,
        "--stdin-filename",
        "big",
    ]));
    eprintln!("peak RSS storing {} MiB from a command: {} MiB", LEN >> 20, rss >> 20);
    assert_eq!(code, 0);
    assert!(rss < 160 << 20, "peak RSS {} MiB", rss >> 20);
    // Every byte came back, streamed and compared as it is read.
    let mut dumped = cairn(&repo).args(["dump", "latest", "big"]).stdout(Stdio::piped()).spawn().unwrap();
    let (mut out, mut original) = (dumped.stdout.take().unwrap(), fs::File::open(&big).unwrap());
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut total = 0u64;
    loop {
        let got = read_full(&mut out, &mut a);
        assert_eq!(read_full(&mut original, &mut b[..got.max(1)]), got, "lengths differ at {total}");
        assert!(a[..got] == b[..got], "content differs near byte {total}");
        total += got as u64;
        if got == 0 {
            break;
        }
    }
    assert!(dumped.wait().unwrap().success());
    assert_eq!(total, LEN);
}

/// Reads until `buffer` is full or the stream ends.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

#[test]
fn a_run_reports_a_failing_command_source_alone() {
    let scratch = Scratch::new("command-run");
    fs::create_dir_all(scratch.join("files")).unwrap();
    fs::write(scratch.join("files/a.txt"), b"tree source").unwrap();
    make_database(&scratch.join("app.db"));
    let config = scratch.join("cairn.toml");
    let text = r#"repository = "repo"
temp_dir = "."

[retention]
keep_last = 2

[[source]]
name = "files"
paths = ["files"]

[[source]]
name = "appdb"
kind = "command"
command = "sqlite3 app.db .dump"
filename = "app.sql"

[[source]]
name = "broken"
kind = "command"
command = "echo half a dump; echo 'dump: out of memory' >&2; exit 3"

[drill]
every = "1h"
"#;
    fs::write(&config, text).unwrap();
    // From another directory: the command runs in the config's, as hooks do.
    let mut command = cairn_bare();
    command.args(["run", "--json", "--config"]).arg(&config).current_dir("/");
    command.env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG").stdin(Stdio::null());
    with_password(&mut command);
    let output = run(&mut command);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let step = |name: &str| report["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).cloned();
    for good in ["snapshot files", "snapshot appdb", "forget appdb", "prune", "drill files", "drill appdb"] {
        assert_eq!(step(good).map(|s| s["outcome"].clone()), Some("ok".into()), "{good}: {report}");
    }
    let broken = step("snapshot broken").unwrap();
    assert_eq!(broken["outcome"], "failed");
    let said = broken["output"].to_string();
    assert!(said.contains("exited with status 3") && said.contains("out of memory"), "{said}");
    assert!(step("drill broken").is_none(), "nothing to drill");

    let repo = scratch.join("repo");
    let restored = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--source", "appdb", "--target"]).arg(&restored));
    assert!(fs::read(restored.join("app.sql")).unwrap() == dump(scratch.path(), "app.db"));
    assert!(json(cairn(&repo).args(["snapshots", "--source", "broken"])).as_array().unwrap().is_empty());
    let log = json(cairn(&repo).arg("log"));
    let outcome = |command: &str, source: &str| {
        let records = log.as_array().unwrap().iter();
        records.filter(|r| r["command"] == command && r["source"] == source).map(|r| r["outcome"].clone()).next_back()
    };
    assert_eq!(outcome("snapshot", "broken"), Some("failed".into()), "{log}");
    assert_eq!(outcome("snapshot", "appdb"), Some("ok".into()));
    assert_eq!(outcome("drill", "appdb"), Some("ok".into()));
    assert_eq!(outcome("run", ""), Some("failed".into()));
}

#[test]
fn a_signal_that_ends_cairn_ends_its_command_too() {
    let scratch = Scratch::new("command-signal");
    let (repo, pid_file) = (scratch.join("repo"), scratch.join("command.pid"));
    init(&repo);
    // The command prints a little, then waits without writing: no SIGPIPE would ever end it.
    let line = format!("echo started; echo $$ > '{}'; exec sleep 60", pid_file.display());
    let mut child = default_signals(cairn(&repo).args(["snapshot", "--stdin-from-command", &line]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = pid_from(&pid_file);
    // SAFETY: sends SIGTERM to the cairn process this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let mut said = String::new();
    child.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    assert!(said.contains("interrupted by SIGTERM"), "{said}");
    assert!(ends_within(pid, 10), "the command outlived cairn");
    assert!(snapshot_list(&repo).is_empty());
}

/// Whether `pid` has ended and waits for its parent to reap it.
fn is_zombie(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// `command` started in a session of its own, without a controlling terminal, as under cron or
/// systemd (on a terminal, a command stays in the terminal's process group: it may prompt there).
fn detached(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and allocates nothing.
    unsafe { command.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }) }
}

/// Waits up to `seconds` for process `pid` to end; whether it did.
fn ends_within(pid: u32, seconds: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// The pid a command wrote to `file`, once it has.
fn pid_from(file: &Path) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(pid) = fs::read_to_string(file).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "the command never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A command is a shell line: what it starts in the background (a dump piped through a
/// compressor, a helper) ends with it when a signal ends cairn, not only the shell itself.
#[test]
fn a_signal_that_ends_cairn_ends_what_its_command_started() {
    let scratch = Scratch::new("command-group");
    let (repo, pid_file) = (scratch.join("repo"), scratch.join("helper.pid"));
    init(&repo);
    let line = format!("echo started; sleep 120 & echo $! > '{}'; wait", pid_file.display());
    let mut child = default_signals(detached(cairn(&repo).args(["snapshot", "--stdin-from-command", &line])))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let helper = pid_from(&pid_file);
    // SAFETY: sends SIGTERM to the cairn process this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    let ended = ends_within(helper, 10);
    // SAFETY: ends the helper if the test failed, so it does not outlive the test run.
    unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) };
    assert!(ended, "what the command started outlived cairn");
    assert!(snapshot_list(&repo).is_empty());
}

/// Storing a command's output fails (here the disk guard stops it at a pack write) while a
/// process the command started still holds its output open: cairn stops them all and fails at
/// once, rather than waiting for that process to end by itself.
#[test]
fn a_failed_store_stops_everything_the_command_started() {
    let scratch = Scratch::new("command-abandon");
    let (repo, pid_file) = (scratch.join("repo"), scratch.join("helper.pid"));
    init(&repo);
    let line = format!("sleep 120 & echo $! > '{}'; head -c 48000000 /dev/urandom; wait", pid_file.display());
    let free = cairn::disk::space(&repo).unwrap().free;
    let min = (free - (8 << 20)).to_string();
    let started = std::time::Instant::now();
    let out = run(detached(cairn(&repo).args(["snapshot", "--min-free", &min, "--stdin-from-command", &line])));
    let helper = pid_from(&pid_file);
    let ended = ends_within(helper, 10);
    // SAFETY: as above.
    unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk guard"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "cairn waited for the helper to end");
    assert!(ended, "what the command started outlived the failed snapshot");
    assert!(snapshot_list(&repo).is_empty());
}

/// README: "The command line is not stored (it may hold a password)". A failing command's error
/// says how it ended, not its line: the error goes into the audit record (synced offsite),
/// `cairn status` and notifications.
#[test]
fn a_failing_commands_line_is_in_no_error_record_or_status() {
    let scratch = Scratch::new("command-secret");
    let repo = scratch.join("repo");
    init(&repo);
    let out = run(cairn(&repo).args(["snapshot", "--source", "db", "--stdin-from-command", "false -pHUNTER2 shop"]));
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("exited with status 1"), "{text}");
    let log = json(cairn(&repo).arg("log")).to_string();
    let status = String::from_utf8_lossy(&run(cairn(&repo).args(["status", "--json"])).stdout).into_owned();
    for shown in [&text, &log, &status] {
        assert!(!shown.contains("HUNTER2"), "{shown}");
    }
    assert!(log.contains("exited with status 1"), "{log}");
}
