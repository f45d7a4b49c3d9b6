//! Key management against hostile states: key files that open with the password but belong to
//! no repository (an `init` that crashed before its config, a copy from elsewhere), damaged key
//! files, duplicate passwords; and password sources that give more than a line of UTF-8.

use std::fs;
use std::path::Path;

use crate::support::*;

/// The key files in `repo`'s `keys/`.
fn key_files(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(repo.join("keys")).unwrap().map(|e| e.unwrap().path()).collect();
    out.sort();
    out
}

/// The id of the key `key list` marks as the one that opened the repository.
fn current_key(repo: &Path) -> String {
    let keys = json(cairn(repo).args(["key", "list"]));
    let current = keys.as_array().unwrap().iter().find(|k| k["current"] == true).expect("a current key");
    current["id"].as_str().unwrap().to_string()
}

/// A key file copied from another repository opens with the same password but holds another
/// master key: counting files in keys/ took it for a second key, and `key remove` deleted the
/// only one that opens the repository. The key that opened the repository is never removed, and
/// `init` deletes the key files an interrupted `init` left once its own config is written.
#[test]
fn the_key_in_use_is_never_removed_and_init_clears_leftover_keys() {
    let scratch = Scratch::new("keys-leftover");
    let other = scratch.join("other");
    init(&other);
    let repo = scratch.join("repo");
    fs::create_dir_all(repo.join("keys")).unwrap();
    for key in key_files(&other) {
        fs::copy(&key, repo.join("keys").join(key.file_name().unwrap())).unwrap();
    }
    ok(cairn(&repo).arg("init"));
    assert_eq!(key_files(&repo).len(), 1, "init removes the key files no repository owns");

    // The same state made after init: a foreign key beside the real one.
    for key in key_files(&other) {
        fs::copy(&key, repo.join("keys").join(key.file_name().unwrap())).unwrap();
    }
    let current = current_key(&repo);
    let refused = run(cairn(&repo).args(["key", "remove", &current[..8]]));
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("opened the repository") && said.contains("another"), "{refused:?}");
    ok(cairn(&repo).arg("snapshots"));

    // With a second password the first key may go: opened by the second, it is not in use.
    let second = scratch.join("second");
    fs::write(&second, "another passphrase\n").unwrap();
    ok(cairn(&repo).args(["key", "add", "--new-password-file"]).arg(&second));
    ok(cairn(&repo).arg("--password-file").arg(&second).args(["key", "remove", &current[..8]]));
    ok(cairn(&repo).arg("--password-file").arg(&second).arg("snapshots"));
}

/// A truncated key file made `key list` fail and `key remove` of it fail as "corrupt", though
/// opening the repository skips it: it is listed as damaged and can be removed, while the key
/// that opened the repository still cannot.
#[test]
fn a_damaged_key_file_is_listed_and_can_be_removed() {
    let scratch = Scratch::new("keys-damaged");
    let repo = scratch.join("repo");
    init(&repo);
    let current = current_key(&repo);
    ok(cairn(&repo).args(["key", "add"]).env("CAIRN_NEW_PASSWORD", "another passphrase"));
    let damaged = key_files(&repo).into_iter().find(|k| !k.ends_with(&current)).unwrap();
    let bytes = fs::read(&damaged).unwrap();
    fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let damaged_id = damaged.file_name().unwrap().to_string_lossy().into_owned();

    let listed = json(cairn(&repo).args(["key", "list"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let entry = listed.iter().find(|k| k["id"] == damaged_id.as_str()).unwrap();
    assert!(entry["damaged"].as_str().is_some(), "{entry:?}");
    assert!(ok(cairn(&repo).args(["key", "list"])).contains("DAMAGED"));

    let refused = run(cairn(&repo).args(["key", "remove", &current[..8]]));
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    ok(cairn(&repo).args(["key", "remove", &damaged_id[..8]]));
    assert_eq!(key_files(&repo).len(), 1);
    ok(cairn(&repo).arg("snapshots"));
}

/// `key add` accepted a password a key file already had, so `key passwd` later said "password
/// changed" while the twin still opened the repository with the old one. A duplicate is refused,
/// and `key passwd` says how many other key files still open the repository.
#[test]
fn a_password_a_key_already_has_is_refused() {
    let scratch = Scratch::new("keys-duplicate");
    let repo = scratch.join("repo");
    init(&repo);
    let twin = run(cairn(&repo).args(["key", "add"]).env("CAIRN_NEW_PASSWORD", PASSWORD));
    assert_eq!(twin.status.code(), Some(1), "{twin:?}");
    assert!(String::from_utf8_lossy(&twin.stderr).contains("already opens the repository"), "{twin:?}");
    let same = run(cairn(&repo).args(["key", "passwd"]).env("CAIRN_NEW_PASSWORD", PASSWORD));
    assert_eq!(same.status.code(), Some(1), "{same:?}");
    assert_eq!(key_files(&repo).len(), 1);

    ok(cairn(&repo).args(["key", "add"]).env("CAIRN_NEW_PASSWORD", "second"));
    let twin = run(cairn(&repo).args(["key", "add"]).env("CAIRN_NEW_PASSWORD", "second"));
    assert_eq!(twin.status.code(), Some(1), "{twin:?}");
    let changed = run(cairn(&repo).args(["key", "passwd"]).env("CAIRN_NEW_PASSWORD", "third"));
    assert!(changed.status.success(), "{changed:?}");
    assert!(String::from_utf8_lossy(&changed.stderr).contains("1 other key file(s) still open"), "{changed:?}");
    let old = run(cairn(&repo).arg("snapshots"));
    assert!(String::from_utf8_lossy(&old.stderr).contains("wrong password"), "{old:?}");
}

/// Every source gives the first line of what it holds, without a `\r` before its end:
/// `CAIRN_PASSWORD=$'pw\n'` was a wrong password, and `CAIRN_NEW_PASSWORD=$'np\n' key passwd`
/// set a password with a newline in it that no password file or terminal could give again.
#[test]
fn every_password_source_gives_its_first_line() {
    let scratch = Scratch::new("keys-lines");
    let repo = scratch.join("repo");
    init(&repo);
    ok(cairn(&repo).arg("snapshots").env("CAIRN_PASSWORD", format!("{PASSWORD}\n")));
    ok(cairn(&repo).arg("snapshots").env("CAIRN_PASSWORD", format!("{PASSWORD}\r\nsecond line")));
    ok(cairn(&repo).args(["key", "passwd"]).env("CAIRN_NEW_PASSWORD", "new one\n"));
    let file = scratch.join("password");
    fs::write(&file, "new one\r\n").unwrap();
    ok(cairn(&repo).arg("--password-file").arg(&file).arg("snapshots"));
    ok(cairn(&repo).args(["--password-command", "printf 'new one\\nmore'", "snapshots"]));
}

/// Bytes that are not UTF-8 went through a lossy conversion from CAIRN_PASSWORD,
/// CAIRN_NEW_PASSWORD and the password command, so any other invalid bytes of the same count
/// opened the repository (a password file refused them). Every source refuses them.
#[test]
fn a_password_that_is_not_utf8_is_refused_from_every_source() {
    use std::os::unix::ffi::OsStrExt;
    let scratch = Scratch::new("keys-utf8");
    let repo = scratch.join("repo");
    init(&repo);
    let invalid = std::ffi::OsStr::from_bytes(b"pw\xff");
    let refused = |output: std::process::Output| {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("not valid UTF-8"), "{output:?}");
    };
    refused(run(cairn(&repo).args(["key", "add"]).env("CAIRN_NEW_PASSWORD", invalid)));
    refused(run(cairn(&repo).arg("snapshots").env("CAIRN_PASSWORD", invalid)));
    refused(run(cairn(&repo).args(["--password-command", "printf 'pw\\377'", "snapshots"])));
    let file = scratch.join("password");
    fs::write(&file, b"pw\xfe\n").unwrap();
    refused(run(cairn(&repo).arg("--password-file").arg(&file).arg("snapshots")));
    assert_eq!(key_files(&repo).len(), 1);
}

/// A password command whose output never ends (`yes`) ran cairn out of memory (a panic, exit
/// 101), and `--password-file /dev/zero` ate memory: at most a line of 4 KiB is read, and a
/// command that goes on printing is killed, each with a clear error.
#[test]
fn endless_password_sources_are_refused_not_read_into_memory() {
    let scratch = Scratch::new("keys-endless");
    let repo = scratch.join("repo");
    init(&repo);
    for (args, says) in [
        (vec!["--password-command", "yes pw1"], "never to end"),
        (vec!["--password-command", "cat /dev/zero"], "longer than 4096 bytes"),
        (vec!["--password-file", "/dev/zero"], "longer than 4096 bytes"),
    ] {
        let stderr = scratch.join("stderr");
        let mut command = cairn(&repo);
        command.args(&args).arg("snapshots").stderr(fs::File::create(&stderr).unwrap());
        let code = run_killed_above(&mut command, 200 << 20);
        let said = fs::read_to_string(&stderr).unwrap();
        assert_eq!(code, Some(1), "{args:?}: {said}");
        assert!(said.contains(says), "{args:?}: {said}");
    }
}

/// Runs `command` to its end and returns its exit code, or kills it and returns `None` once its
/// resident memory passes `limit` bytes (a test of a bound must not take the machine down when
/// the bound is missing).
fn run_killed_above(command: &mut std::process::Command, limit: u64) -> Option<i32> {
    let mut child = command.spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        let rss_kib: u64 = fs::read_to_string(&status_file)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches(" kB").parse().ok())
            })
            .unwrap_or(0);
        if rss_kib * 1024 > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A repository made while `CAIRN_PASSWORD` was taken whole, from a value that ended in a
/// newline (a secret made from a file): it still opens with that value, which now reads as its
/// first line, and says how to make the first line its password.
#[test]
fn a_key_made_from_a_whole_variable_with_its_newline_still_opens() {
    use cairn::repository::{Location, NewKeys, Repository};
    let scratch = Scratch::new("keys-whole-variable");
    let repo = scratch.join("repo");
    let config = cairn::format::config::Config::new_random();
    let keys = NewKeys::New { passphrase: "secret\n".to_string() };
    Repository::create(&Location::parse(&repo.to_string_lossy()), config, keys).unwrap();
    let out = run(cairn(&repo).env("CAIRN_PASSWORD", "secret\n").arg("snapshots"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("key passwd"), "{err}");
    // The first line alone is wrong until the password is set again, then it is the password.
    let out = run(cairn(&repo).env("CAIRN_PASSWORD", "secret").arg("snapshots"));
    assert_eq!(out.status.code(), Some(1));
    ok(cairn(&repo).env("CAIRN_PASSWORD", "secret\n").env("CAIRN_NEW_PASSWORD", "secret").args(["key", "passwd"]));
    let out = run(cairn(&repo).env("CAIRN_PASSWORD", "secret").arg("snapshots"));
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
