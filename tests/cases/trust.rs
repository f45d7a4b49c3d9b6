//! Secrets and places: a flag beats the environment, a config-driven run never creates a plain
//! repository by accident, the contrib units run as committed, and a config's relative paths
//! are relative to the config file (issue 20, items 7 and 10).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::*;

/// `cairn` with no repository or password in its environment at all.
fn bare() -> Command {
    clean(CAIRN)
}

/// `program` with no cairn variable in its environment.
fn clean(program: &str) -> Command {
    let mut command = Command::new(program);
    for var in ["CAIRN_REPO", "CAIRN_CONFIG", "CAIRN_PASSWORD", "CAIRN_PASSWORD_FILE", "CAIRN_PASSWORD_COMMAND"] {
        command.env_remove(var);
    }
    for var in ["CAIRN_NEW_PASSWORD", "CAIRN_NEW_PASSWORD_FILE", "CAIRN_TO_PASSWORD_FILE"] {
        command.env_remove(var);
    }
    command.env("CAIRN_KDF_MEMORY_KIB", "1024").stdin(Stdio::null());
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_secret(path: &Path, text: &str) {
    fs::write(path, format!("{text}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// An encrypted repository under [`PASSWORD`] holding one snapshot of `src/`, and a password
/// file with a wrong password and one with the right one.
fn encrypted(scratch: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let (repo, source) = (scratch.join("repo"), scratch.join("src"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("file"), "content").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let (right, wrong) = (scratch.join("right"), scratch.join("wrong"));
    write_secret(&right, PASSWORD);
    write_secret(&wrong, "not the password");
    (repo, right, wrong)
}

#[test]
fn a_password_flag_beats_every_password_variable() {
    let scratch = Scratch::new("trust-flags");
    let (repo, right, wrong) = encrypted(&scratch);
    let snapshots = |command: &mut Command| run(command.arg("--repo").arg(&repo).args(["snapshots", "--json"]));
    // --password-file against each variable.
    for (var, value) in [
        ("CAIRN_PASSWORD", "not the password".into()),
        ("CAIRN_PASSWORD_FILE", wrong.display().to_string()),
        ("CAIRN_PASSWORD_COMMAND", "echo not the password".into()),
    ] {
        let out = snapshots(bare().arg("--password-file").arg(&right).env(var, &value));
        assert!(out.status.success(), "--password-file lost to {var}: {}", stderr(&out));
        let command = format!("cat {}", right.display());
        let out = snapshots(bare().args(["--password-command", &command]).env(var, &value));
        assert!(out.status.success(), "--password-command lost to {var}: {}", stderr(&out));
    }
    // Two password flags are an error, not a silent choice.
    let both = snapshots(bare().arg("--password-file").arg(&right).args(["--password-command", "echo x"]));
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert!(stderr(&both).contains("cannot be used with"), "{}", stderr(&both));
    // Among the variables alone, the order stays CAIRN_PASSWORD, then _FILE, then _COMMAND.
    let out = snapshots(bare().env("CAIRN_PASSWORD", PASSWORD).env("CAIRN_PASSWORD_FILE", &wrong));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_other_flag_beats_its_variable_too() {
    let scratch = Scratch::new("trust-twins");
    let (repo, right, wrong) = encrypted(&scratch);
    let elsewhere = scratch.join("elsewhere");
    // --repo against CAIRN_REPO.
    let out = run(bare()
        .arg("--repo")
        .arg(&repo)
        .arg("--password-file")
        .arg(&right)
        .arg("snapshots")
        .env("CAIRN_REPO", &elsewhere));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!elsewhere.exists());

    // key add: --new-password-file against CAIRN_NEW_PASSWORD; the new key is the file's.
    let new = scratch.join("new-password");
    write_secret(&new, "the new password");
    let added = run(bare()
        .arg("--repo")
        .arg(&repo)
        .arg("--password-file")
        .arg(&right)
        .args(["key", "add", "--new-password-file"])
        .arg(&new)
        .env("CAIRN_NEW_PASSWORD", "from the environment"));
    assert!(added.status.success(), "{}", stderr(&added));
    let opened = run(bare().arg("--repo").arg(&repo).arg("--password-file").arg(&new).arg("snapshots"));
    assert!(opened.status.success(), "the key added is not --new-password-file's: {}", stderr(&opened));

    // sync: --to-password-file against CAIRN_TO_PASSWORD_FILE; the destination gets the flag's.
    let offsite = scratch.join("offsite");
    let synced = run(bare()
        .arg("--repo")
        .arg(&repo)
        .arg("--password-file")
        .arg(&right)
        .args(["sync", "--to"])
        .arg(&offsite)
        .arg("--to-password-file")
        .arg(&new)
        .env("CAIRN_TO_PASSWORD_FILE", &wrong));
    assert!(synced.status.success(), "{}", stderr(&synced));
    let opened = run(bare().arg("--repo").arg(&offsite).arg("--password-file").arg(&new).arg("snapshots"));
    assert!(opened.status.success(), "{}", stderr(&opened));

    // run: --config against CAIRN_CONFIG, and --password-file against CAIRN_PASSWORD in every
    // child step.
    let config = scratch.join("cairn.toml");
    fs::write(&config, "repository = \"repo\"\n[[source]]\nname = \"src\"\npaths = [\"src\"]\n").unwrap();
    let decoy = scratch.join("decoy.toml");
    fs::write(&decoy, "repository = \"decoy\"\n[[source]]\nname = \"decoy\"\npaths = [\"src\"]\n").unwrap();
    let out = run(bare()
        .arg("--password-file")
        .arg(&right)
        .args(["run", "--config"])
        .arg(&config)
        .env("CAIRN_CONFIG", &decoy)
        .env("CAIRN_PASSWORD", "not the password"));
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!scratch.join("decoy").exists());
    for command in [["config", "check"], ["stats", "--json"]] {
        let out = run(bare()
            .arg("--repo")
            .arg(&repo)
            .arg("--password-file")
            .arg(&right)
            .args(command)
            .arg("--config")
            .arg(&config)
            .env("CAIRN_CONFIG", scratch.join("missing.toml")));
        assert!(out.status.success(), "{command:?}: {}", stderr(&out));
    }

    // snapshot: --min-free against CAIRN_MIN_FREE.
    let out = run(bare()
        .arg("--repo")
        .arg(&repo)
        .arg("--password-file")
        .arg(&right)
        .args(["snapshot", "--min-free", "0"])
        .arg(scratch.join("src"))
        .env("CAIRN_MIN_FREE", "99.999%"));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A config with one source, `src/` next to it (with one file).
fn run_config(scratch: &Scratch, extra: &str) -> PathBuf {
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/file"), "content").unwrap();
    let config = scratch.join("cairn.toml");
    fs::write(&config, format!("repository = \"repo\"\n{extra}\n[[source]]\nname = \"src\"\npaths = [\"src\"]\n"))
        .unwrap();
    config
}

fn run_json(command: &mut Command) -> (Option<i32>, serde_json::Value) {
    let out = run(command.arg("--json"));
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

fn step_outcome(report: &serde_json::Value, step: &str) -> Option<String> {
    let steps = report["steps"].as_array()?;
    steps.iter().find(|s| s["step"] == step).map(|s| s["outcome"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_run_without_a_password_never_creates_a_plain_repository_by_accident() {
    let scratch = Scratch::new("trust-plain");
    let config = run_config(&scratch, "");
    let refused = run(bare().args(["run", "--config"]).arg(&config));
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("encryption = \"none\""), "{}", stderr(&refused));
    assert!(!scratch.join("repo").exists(), "nothing may be created");

    // With a password, the run creates an encrypted repository.
    let (code, report) = run_json(bare().env("CAIRN_PASSWORD", PASSWORD).args(["run", "--config"]).arg(&config));
    assert_eq!(code, Some(0), "{report}");
    let listed = ok(bare().env("CAIRN_PASSWORD", PASSWORD).arg("--repo").arg(scratch.join("repo")).arg("snapshots"));
    assert!(listed.contains("encrypted (AES-256-GCM)"), "{listed}");
    // Without the password, the next run stops before any step (whose children could not ask).
    let (code, report) = run_json(bare().args(["run", "--config"]).arg(&config));
    assert_eq!((code, report), (Some(1), serde_json::Value::Null), "no step ran");

    // A config that says so gets a plain repository, and its offsite copy is still never
    // created plain unless its own table says so too.
    let plain = Scratch::new("trust-plain-declared");
    let offsite = plain.join("offsite");
    let config = run_config(
        &plain,
        &format!("encryption = \"none\"\n[[offsite]]\nname = \"o\"\nrepository = \"{}\"\n", offsite.display()),
    );
    let (code, report) = run_json(bare().args(["run", "--config"]).arg(&config));
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(step_outcome(&report, "snapshot src").as_deref(), Some("ok"), "{report}");
    assert_eq!(step_outcome(&report, "sync to o").as_deref(), Some("failed"), "{report}");
    assert!(report.to_string().contains("encryption = \\\"none\\\""), "{report}");
    assert!(!offsite.exists(), "the offsite copy must not be created plain");
    let listed = ok(bare().arg("--repo").arg(plain.join("repo")).arg("snapshots"));
    assert!(listed.contains("NOT ENCRYPTED"), "{listed}");
    let text = fs::read_to_string(&config).unwrap().replace("[[offsite]]", "[[offsite]]\nencryption = \"none\"");
    fs::write(&config, text).unwrap();
    let (code, report) = run_json(bare().args(["run", "--config"]).arg(&config));
    assert_eq!(code, Some(0), "{report}");
    assert!(ok(bare().arg("--repo").arg(&offsite).arg("snapshots")).contains("NOT ENCRYPTED"));

    // A plain repository that the config does not declare plain (made by an older cairn, say)
    // is still backed up, but the run fails and says why.
    let undeclared = Scratch::new("trust-plain-undeclared");
    let config = run_config(&undeclared, "");
    ok(bare().arg("--repo").arg(undeclared.join("repo")).args(["init", "--encryption", "none"]));
    let (code, report) = run_json(bare().args(["run", "--config"]).arg(&config));
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(step_outcome(&report, "snapshot src").as_deref(), Some("ok"), "{report}");
    assert_eq!(step_outcome(&report, "encryption").as_deref(), Some("failed"), "{report}");
}

/// The committed contrib files with their system paths moved below `root`.
struct Installed {
    root: PathBuf,
    credentials: PathBuf,
}

impl Installed {
    fn new(scratch: &Scratch) -> Installed {
        let root = scratch.join("root");
        for dir in ["etc/cairn", "var/lib/cairn", "var/lib/node_exporter/textfile", "srv/data"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("srv/data/file"), "to protect").unwrap();
        write_secret(&root.join("etc/cairn/password"), "the admin's password");
        let config = format!(
            "repository = \"{0}/var/lib/cairn/repo\"\n[[source]]\nname = \"data\"\npaths = [\"{0}/srv/data\"]\n",
            root.display()
        );
        fs::write(root.join("etc/cairn/config.toml"), config).unwrap();
        Installed { credentials: scratch.join("credentials"), root }
    }

    /// A line of a contrib file as it runs here: system paths below `root`, cairn this build.
    fn localize(&self, line: &str) -> String {
        let root = self.root.display().to_string();
        line.replace("/usr/local/bin/cairn", CAIRN)
            .replace("/etc/cairn/", &format!("{root}/etc/cairn/"))
            .replace("/var/lib/", &format!("{root}/var/lib/"))
            .replace("${CREDENTIALS_DIRECTORY}", &self.credentials.display().to_string())
            .replace("%d", &self.credentials.display().to_string())
    }

    fn prometheus(&self) -> PathBuf {
        self.root.join("var/lib/node_exporter/textfile/cairn.prom")
    }

    fn repo(&self) -> PathBuf {
        self.root.join("var/lib/cairn/repo")
    }
}

/// `key=value` settings of a unit file, in order, the same key possibly more than once.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && l.contains('='))
        .map(|l| {
            let (key, value) = l.split_once('=').unwrap();
            (key.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

#[test]
fn the_contrib_units_run_as_committed_and_write_the_prometheus_file() {
    let scratch = Scratch::new("trust-contrib");
    let installed = Installed::new(&scratch);
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");

    // systemd: the credentials as LoadCredential= would place them, then ExecStart= and, as
    // systemd runs them whether the start failed or not, ExecStopPost= (ExecStartPost= after a
    // good start).
    let service = fs::read_to_string(contrib.join("cairn.service")).unwrap();
    let settings = unit_settings(&service);
    fs::create_dir_all(&installed.credentials).unwrap();
    for (_, value) in settings.iter().filter(|(k, _)| k == "LoadCredential") {
        let (id, source) = value.split_once(':').expect("LoadCredential=ID:PATH");
        fs::copy(installed.localize(source), installed.credentials.join(id)).unwrap();
    }
    assert!(
        !settings.iter().any(|(k, v)| k == "Environment" && v.contains("CAIRN_PASSWORD")),
        "no password in the unit itself"
    );
    // RuntimeDirectory=: the directories systemd makes for the service, with their mode, named
    // in $RUNTIME_DIRECTORY; the run keeps its lock there.
    let mode = settings.iter().find(|(k, _)| k == "RuntimeDirectoryMode").map(|(_, v)| v.as_str()).unwrap_or("0755");
    let runtime: Vec<PathBuf> = settings
        .iter()
        .filter(|(k, _)| k == "RuntimeDirectory")
        .flat_map(|(_, v)| v.split_whitespace())
        .map(|name| scratch.join("run").join(name))
        .collect();
    assert!(!runtime.is_empty(), "the service has a RuntimeDirectory= for its run lock");
    for dir in &runtime {
        fs::create_dir_all(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(u32::from_str_radix(mode, 8).unwrap())).unwrap();
    }
    let runtime_variable = runtime.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    let mut ran = Vec::new();
    for phase in ["ExecStart", "ExecStartPost", "ExecStopPost"] {
        for (_, line) in settings.iter().filter(|(k, _)| k == phase) {
            let line = installed.localize(line);
            let words: Vec<&str> = line.trim_start_matches(['-', '@', '+', '!']).split_whitespace().collect();
            let mut command = clean(words[0]);
            command.args(&words[1..]).env("CREDENTIALS_DIRECTORY", &installed.credentials);
            command.env("RUNTIME_DIRECTORY", &runtime_variable).env_remove("XDG_RUNTIME_DIR");
            let output = run(&mut command);
            assert!(output.status.success(), "{phase}={line}: {}", stderr(&output));
            ran.push(phase);
        }
    }
    assert!(ran.contains(&"ExecStart") && ran.len() >= 2, "{ran:?}");
    assert_eq!(entries(&runtime[0]), Vec::<String>::new(), "the run removed its lock file");
    let metrics = fs::read_to_string(installed.prometheus()).expect("the Prometheus file is written");
    assert!(metrics.contains("cairn_"), "{metrics}");
    let listed = run(bare().arg("--repo").arg(installed.repo()).arg("snapshots"));
    assert!(!listed.status.success(), "the repository must be encrypted: {}", String::from_utf8_lossy(&listed.stdout));
    let password = installed.root.join("etc/cairn/password");
    let listed = ok(bare().arg("--repo").arg(installed.repo()).arg("--password-file").arg(&password).arg("snapshots"));
    assert!(listed.contains("encrypted (AES-256-GCM)") && listed.contains("data"), "{listed}");

    // cron: each line's command through `sh -c`, as cron runs it (no /etc/cairn/env here).
    fs::remove_file(installed.prometheus()).unwrap();
    let cron = fs::read_to_string(contrib.join("cairn.cron")).unwrap();
    let jobs: Vec<&str> = cron.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert_eq!(jobs.len(), 2, "{cron}");
    for job in jobs {
        // Five schedule fields and the user, then the command.
        let mut rest = job;
        for _ in 0..6 {
            rest = rest.trim_start().split_once(char::is_whitespace).unwrap().1;
        }
        assert!(!rest.contains('%'), "cron turns % into a newline: {rest}");
        let output = run(clean("sh").arg("-c").arg(installed.localize(rest.trim())));
        assert!(output.status.success(), "{rest}: {}", stderr(&output));
    }
    assert!(fs::read_to_string(installed.prometheus()).unwrap().contains("cairn_"));
    let snapshots =
        ok(bare().arg("--repo").arg(installed.repo()).arg("--password-file").arg(&password).arg("snapshots"));
    assert!(snapshots.contains("2 snapshots"), "the cron job snapshotted: {snapshots}");
}

/// The README's quick start, word for word: its `cairn run` command and the `status` it
/// promises, with the release binary replaced by this build and the default repository moved
/// into a scratch XDG data directory.
#[test]
fn the_quick_start_works_as_written() {
    let scratch = Scratch::new("trust-quickstart");
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## Quick start").unwrap();
    let block = &readme[start..start + readme[start + 3..].find("\n## ").unwrap()];
    let first = block.lines().find(|l| l.contains("cairn run")).unwrap();
    let command = first.split_once("&& ").expect("cargo build && ...").1.to_string();
    let status = block.split('`').map(|s| s.replace('\n', " ")).find(|s| s.contains("cairn") && s.ends_with(" status"));
    for line in [command, status.expect("the quick start names its status command")] {
        let line = line.replace("./target/release/cairn", CAIRN);
        let mut shell = clean("sh");
        shell.args(["-c", &line]).current_dir(env!("CARGO_MANIFEST_DIR"));
        shell.env("XDG_DATA_HOME", scratch.join("data")).env("CAIRN_KDF_MEMORY_KIB", "1024");
        let output = run(&mut shell);
        assert!(output.status.success(), "{line}: {}", stderr(&output));
    }
    let repo = scratch.join("data/cairn/repo");
    let listed = ok(bare().env("CAIRN_PASSWORD", "quickstart").arg("--repo").arg(&repo).arg("snapshots"));
    assert!(
        listed.contains("encrypted (AES-256-GCM)") && listed.contains("code") && listed.contains("docs"),
        "{listed}"
    );
}

/// Every entry below `dir`, as paths relative to it.
fn entries(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn config_paths_are_relative_to_the_config_file_from_any_directory() {
    let scratch = Scratch::new("trust-places");
    let conf = scratch.join("conf");
    for dir in ["conf/data", "conf/tmp", "elsewhere"] {
        fs::create_dir_all(scratch.join(dir)).unwrap();
    }
    fs::write(conf.join("data/file"), "content").unwrap();
    let text = r#"repository = "repo"
temp_dir = "tmp"

[[source]]
name = "data"
paths = ["data"]
before = "pwd > hook-cwd"

[[offsite]]
name = "o"
repository = "offsite"

[drill]
every = "1h"
"#;
    fs::write(conf.join("cairn.toml"), text).unwrap();
    // From another directory, with the config named relative to it.
    let elsewhere = scratch.join("elsewhere");
    let mut command = bare();
    command.current_dir(&elsewhere).env("CAIRN_PASSWORD", PASSWORD).env_remove("XDG_RUNTIME_DIR");
    let (code, report) = run_json(command.args(["run", "--config", "../conf/cairn.toml"]));
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(entries(&elsewhere), Vec::<String>::new(), "nothing lands in the working directory");
    let canonical = fs::canonicalize(&conf).unwrap();
    assert_eq!(fs::read_to_string(conf.join("hook-cwd")).unwrap().trim(), canonical.to_str().unwrap());
    for repo in [conf.join("repo"), conf.join("offsite")] {
        let listed = json(cairn(&repo).arg("snapshots"));
        assert_eq!(listed.as_array().unwrap().len(), 1, "{}: {listed}", repo.display());
    }
    assert!(report.to_string().contains("drill data"), "the drill ran: {report}");
    assert_eq!(entries(&conf.join("tmp")), Vec::<String>::new(), "the drill scratch is gone");
    assert_eq!(entries(&conf), ["cairn.toml", "data", "hook-cwd", "offsite", "repo", "tmp"]);
}

#[test]
fn a_run_that_cannot_tell_whether_its_repository_exists_creates_nothing() {
    let scratch = Scratch::new("trust-unknown");
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/file"), "content").unwrap();
    // When the run starts, the repository's parent is a regular file, so whether a repository is
    // there cannot be told (ENOTDIR, where an unreadable directory gives EACCES and an object
    // store a 5xx). The before hook clears the fault, as a transient one clears by itself, before
    // the snapshot step.
    fs::write(scratch.join("parent"), "a file, not a directory").unwrap();
    let config = scratch.join("cairn.toml");
    let text = "repository = \"parent/repo\"\n[[source]]\nname = \"src\"\npaths = [\"src\"]\nbefore = \"rm parent && mkdir parent\"\n";
    fs::write(&config, text).unwrap();
    let out = run(bare().args(["run", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!scratch.join("parent/repo").exists(), "a repository was created: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("parent/repo") && err.contains("nothing was run"), "{err}");

    // An object store that does not answer, the same.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    fs::write(&config, "repository = \"s3://nowhere/repo\"\n[[source]]\nname = \"src\"\npaths = [\"src\"]\n").unwrap();
    let mut command = bare();
    for (key, value) in [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")]
    {
        command.env(key, value);
    }
    command.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{dead}")).env("AWS_ALLOW_HTTP", "true");
    let out = run(command.args(["run", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("s3://nowhere/repo") && err.contains("nothing was run"), "{err}");
}

#[test]
fn a_step_never_creates_the_repository_that_vanished_after_the_run_began() {
    // A plain repository the config does not declare plain (an older cairn made it): the run
    // backs it up and reports it. Moved away (an unmounted disk) after the run checked it, it
    // must not come back as a new plain repository that the config never allowed.
    let scratch = Scratch::new("trust-vanished");
    let config = run_config(&scratch, "");
    let text = fs::read_to_string(&config).unwrap() + "before = \"mv repo moved\"\n";
    fs::write(&config, text).unwrap();
    ok(bare().arg("--repo").arg(scratch.join("repo")).args(["init", "--encryption", "none"]));
    let (code, report) = run_json(bare().args(["run", "--config"]).arg(&config));
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(step_outcome(&report, "snapshot src").as_deref(), Some("failed"), "{report}");
    assert!(!scratch.join("repo").exists(), "the step created a repository: {report}");
    assert!(report.to_string().contains("no repository"), "{report}");

    // Nor does a step with a password make a fresh encrypted one in its place.
    fs::rename(scratch.join("moved"), scratch.join("repo")).unwrap();
    let text = fs::read_to_string(&config).unwrap().replace("\n\n[[source]]", "\nencryption = \"none\"\n[[source]]");
    fs::write(&config, text).unwrap();
    let password = scratch.join("password");
    write_secret(&password, PASSWORD);
    let (code, report) = run_json(bare().arg("--password-file").arg(&password).args(["run", "--config"]).arg(&config));
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(step_outcome(&report, "snapshot src").as_deref(), Some("failed"), "{report}");
    assert!(!scratch.join("repo").exists(), "the step created a repository: {report}");
}

#[test]
fn a_password_is_asked_for_only_by_an_encrypted_repository_and_a_run_passes_on_the_flags() {
    let scratch = Scratch::new("trust-asked");
    // A plain repository never runs the password command (nor prompts).
    let plain = scratch.join("plain");
    ok(bare().arg("--repo").arg(&plain).args(["init", "--encryption", "none"]));
    let ran = scratch.join("command-ran");
    let command = format!("touch {}; echo {PASSWORD}", ran.display());
    ok(bare().arg("--repo").arg(&plain).args(["--password-command", &command, "snapshots"]));
    assert!(!ran.exists(), "the password command ran for a plain repository");

    // `cairn run --password-file`: its steps and hooks get the flag's source, not the
    // environment's (a wrong CAIRN_PASSWORD here).
    let right = scratch.join("right");
    write_secret(&right, PASSWORD);
    let config = run_config(&scratch, "");
    let hook =
        format!("echo \"${{CAIRN_PASSWORD:-unset}} $CAIRN_PASSWORD_FILE\" > {}", scratch.join("hook.env").display());
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("paths = [\"src\"]", &format!("paths = [\"src\"]\nbefore = '{hook}'"));
    fs::write(&config, text).unwrap();
    let (code, report) = run_json(
        bare()
            .env("CAIRN_PASSWORD", "not the password")
            .arg("--password-file")
            .arg(&right)
            .args(["run", "--config"])
            .arg(&config),
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(step_outcome(&report, "snapshot src").as_deref(), Some("ok"), "{report}");
    let seen = fs::read_to_string(scratch.join("hook.env")).unwrap();
    assert_eq!(seen.trim(), format!("unset {}", right.display()), "the hook saw another password source");
}
