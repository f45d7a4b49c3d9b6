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
    let mut command = Command::new(CAIRN);
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
}
