//! Encryption at rest: no plaintext and no meaningful id in the repository, every changed byte
//! detected, clear errors for wrong, missing and removed keys, key management.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

const MARKERS: [&str; 4] = ["ZEBRA-QUARTZ-7731", "secret-file-name-9k2", "marker-in-a-db-row-55", "tag-owl-1187"];

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A source tree with distinctive strings in file content (compressible and not), a file name,
/// a directory name, a symlink target and an SQLite row; snapshotted with a tag and a source name.
fn encrypted_repo(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join(MARKERS[1])).unwrap();
    fs::write(source.join("text.txt"), MARKERS[0].repeat(1000)).unwrap();
    fs::write(source.join(MARKERS[1]).join("f"), format!("{}{}", MARKERS[0], String::from_utf8_lossy(&noise(5000, 3))))
        .unwrap();
    std::os::unix::fs::symlink(MARKERS[1], source.join("link")).unwrap();
    let db = rusqlite::Connection::open(source.join("app.db")).unwrap();
    db.execute_batch(&format!("CREATE TABLE t(x TEXT); INSERT INTO t VALUES ('{}');", MARKERS[2])).unwrap();
    drop(db);
    init(&repo);
    ok(cairn(&repo).args(["snapshot", "--source", "service", "--tag", MARKERS[3]]).arg(&source));
    ok(cairn(&repo).args(["check", "--read-data"]));
    (source, repo)
}

#[test]
fn no_plaintext_and_no_known_ids_in_the_repository() {
    let scratch = Scratch::new("enc-plaintext");
    let (source, repo) = encrypted_repo(&scratch);
    // The plain BLAKE3 ids of the source's content, which an unencrypted repository would hold.
    let known_ids: Vec<String> = ["text.txt", "app.db"]
        .iter()
        .map(|f| blake3::hash(&fs::read(source.join(f)).unwrap()).to_hex().to_string())
        .collect();
    let files = files_below(&repo);
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let bytes = fs::read(file).unwrap();
        for marker in MARKERS.iter().chain([&"service"]) {
            assert!(!contains(&bytes, marker.as_bytes()), "{marker} in {}", file.display());
        }
        let name = file.display().to_string();
        for id in &known_ids {
            assert!(!name.contains(&id[..16]), "a plain content id names {name}");
            assert!(!contains(&bytes, &hex_to_bytes(&id[..32])), "a plain content id inside {name}");
        }
    }
    // And yet everything restores.
    let target = scratch.join("out");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(fs::read(target.join("text.txt")).unwrap(), fs::read(source.join("text.txt")).unwrap());
    let listed = ok(cairn(&repo).arg("snapshots"));
    assert!(listed.contains("encrypted (AES-256-GCM)"), "{listed}");
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// Flipping a byte anywhere in any repository object is detected by `check --read-data`: packs,
/// index files and manifests fail their checksum or authentication, the config and the key file
/// fail the opening of the repository. A restore detects every flip in what it reads: all of
/// those files, and a pack's blobs (it reads blobs by their place in the index, never a pack's
/// header or trailer, so a flip there leaves what it restores intact and is `check`'s to find).
#[test]
fn every_flipped_byte_is_detected() {
    let scratch = Scratch::new("enc-flips");
    let (_, repo) = encrypted_repo(&scratch);
    let pristine = scratch.join("pristine");
    copy_tree(&repo, &pristine);
    // Random bytes set aside for a full disk, read by nothing (store-format/README.md, "The reserve").
    fs::remove_file(pristine.join("reserve")).unwrap();
    let mut checked = 0;
    for file in files_below(&pristine) {
        let relative = file.strip_prefix(&pristine).unwrap().to_path_buf();
        let dir = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        if dir == "audit" || dir == "locks" || dir == "tmp" {
            continue; // audit records are checked by status below; locks are not secret
        }
        let len = fs::metadata(&file).unwrap().len();
        // Bytes 17 and 41 of a pack lie in its first blob (the blob area begins after the
        // 16-byte header; a sealed blob is a 24-byte nonce, then the ciphertext and its tag),
        // whatever the pack's size; its middle may lie in the trailer of a small one.
        let offsets = [0, 12, 17, 41, len / 2, len.saturating_sub(50), len - 1];
        for offset in offsets.into_iter().filter(|o| *o < len) {
            let work = scratch.join("work");
            let _ = fs::remove_dir_all(&work);
            copy_tree(&pristine, &work);
            flip_byte(&work.join(&relative), offset, 0x20);
            let check = run(cairn(&work).args(["check", "--read-data"]));
            let out = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
            assert!(!check.status.success(), "{} byte {offset}: check passed:\n{out}", relative.display());
            assert!(
                ["damaged", "authentication failed", "wrong password", "checksum", "does not match", "corrupt"]
                    .iter()
                    .any(|w| out.contains(w)),
                "{} byte {offset}: unclear report:\n{out}",
                relative.display()
            );
            let in_blobs = offset == 17 || offset == 41;
            if dir != "packs" || in_blobs {
                let target = scratch.join("restored");
                let _ = fs::remove_dir_all(&target);
                let restore = run(cairn(&work).args(["restore", "latest", "--target"]).arg(&target));
                assert!(!restore.status.success(), "{} byte {offset}: restore succeeded", relative.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked}");
    // A damaged audit record is reported by status.
    let audit = files_below(&repo.join("audit")).pop().unwrap();
    let len = fs::metadata(&audit).unwrap().len();
    flip_byte(&audit, len / 2, 1);
    let status = run(cairn(&repo).arg("status"));
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("damaged repository file"));
}

fn copy_tree(from: &Path, to: &Path) {
    assert!(std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

#[test]
fn wrong_missing_and_removed_keys_are_clear_errors() {
    let scratch = Scratch::new("enc-keys");
    let (_, repo) = encrypted_repo(&scratch);
    let before = files_below(&repo);

    let wrong = run(cairn(&repo).arg("snapshots").env("CAIRN_PASSWORD", "not the password"));
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong password"), "{wrong:?}");
    let snapshot = run(cairn(&repo).arg("snapshot").arg(scratch.join("src")).env("CAIRN_PASSWORD", "nope"));
    assert_eq!(snapshot.status.code(), Some(1));
    // restore and drill take their lock only once the key opened the repository.
    let target = scratch.join("target");
    let restore = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target).env("CAIRN_PASSWORD", "nope"));
    assert!(String::from_utf8_lossy(&restore.stderr).contains("wrong password"), "{restore:?}");
    let drill = run(cairn(&repo).arg("drill").env("CAIRN_PASSWORD", "nope"));
    assert!(String::from_utf8_lossy(&drill.stderr).contains("wrong password"), "{drill:?}");
    assert!(!target.exists(), "a wrong password restores nothing");
    assert_eq!(files_below(&repo), before, "a wrong password writes nothing");
    let none = run(cairn(&repo).arg("snapshots").env_remove("CAIRN_PASSWORD"));
    assert!(String::from_utf8_lossy(&none.stderr).contains("is encrypted: give its password"), "{none:?}");

    // Key management: add, list, change, remove; never the last key.
    let second = scratch.join("second-password");
    fs::write(&second, "a second passphrase\n").unwrap();
    ok(cairn(&repo).args(["key", "add", "--new-password-file"]).arg(&second));
    let keys = json(cairn(&repo).args(["key", "list"]));
    assert_eq!(keys.as_array().unwrap().len(), 2);
    ok(cairn(&repo).arg("snapshots").env_remove("CAIRN_PASSWORD").env("CAIRN_PASSWORD_FILE", &second));
    ok(cairn(&repo).arg("--password-file").arg(&second).arg("snapshots").env_remove("CAIRN_PASSWORD"));
    ok(cairn(&repo).args(["--password-command", "echo a second passphrase", "snapshots"]).env_remove("CAIRN_PASSWORD"));
    let first_id =
        keys.as_array().unwrap().iter().find(|k| k["current"] == true).unwrap()["id"].as_str().unwrap().to_string();
    // Not with its own password: the key that opened the repository is never removed.
    let in_use = run(cairn(&repo).args(["key", "remove", &first_id[..8]]));
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("opened the repository"), "{in_use:?}");
    ok(cairn(&repo).args(["key", "remove", &first_id[..8]]).env("CAIRN_PASSWORD", "a second passphrase"));
    let gone = run(cairn(&repo).arg("snapshots"));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("wrong password"), "the removed key no longer opens it");
    let with_second = |c: &mut std::process::Command| {
        c.env("CAIRN_PASSWORD", "a second passphrase");
    };
    let mut last = cairn(&repo);
    with_second(&mut last);
    let keys = json(last.args(["key", "list"]));
    let last_id = keys[0]["id"].as_str().unwrap().to_string();
    let mut remove_last = cairn(&repo);
    with_second(&mut remove_last);
    let refused = run(remove_last.args(["key", "remove", &last_id]));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("last key"), "{refused:?}");
    let mut passwd = cairn(&repo);
    with_second(&mut passwd);
    ok(passwd.args(["key", "passwd"]).env("CAIRN_NEW_PASSWORD", PASSWORD));
    ok(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(json(cairn(&repo).args(["key", "list"])).as_array().unwrap().len(), 1);

    // Without any key file the repository cannot be opened, and says why.
    for key in files_below(&repo.join("keys")) {
        fs::remove_file(key).unwrap();
    }
    let missing = run(cairn(&repo).arg("snapshots"));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no key file"), "{missing:?}");
}

#[test]
fn unencrypted_repositories_say_so_and_still_work() {
    let scratch = Scratch::new("enc-none");
    let repo = scratch.join("repo");
    ok(cairn(&repo).args(["init", "--encryption", "none"]));
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/f"), "visible-marker-31").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("src")));
    assert!(ok(cairn(&repo).arg("snapshots")).contains("NOT ENCRYPTED"));
    assert!(ok(cairn(&repo).arg("status")).contains("NOT ENCRYPTED"));
    let found = files_below(&repo).iter().any(|f| contains(&fs::read(f).unwrap(), b"visible-marker-31"));
    assert!(found, "an unencrypted repository stores content as is (compressed or not)");
    // A plain manifest planted in an encrypted repository is not taken for a snapshot.
    let encrypted = scratch.join("encrypted");
    init(&encrypted);
    for manifest in files_below(&repo.join("snapshots")) {
        fs::copy(&manifest, encrypted.join("snapshots").join(manifest.file_name().unwrap())).unwrap();
    }
    let listed = run(cairn(&encrypted).args(["snapshots", "--json"]));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    assert!(String::from_utf8_lossy(&listed.stderr).contains("not sealed, in an encrypted repository"), "{listed:?}");
    // A sync into an encrypted repository re-encodes (the planted plain manifest is skipped).
    let synced = run(cairn(&repo).args(["sync", "--to"]).arg(&encrypted));
    assert!(synced.status.success(), "{synced:?}");
    assert!(String::from_utf8_lossy(&synced.stderr).contains("re-encoded"), "{synced:?}");
}

/// Sync to a destination with other key material re-encodes every blob for it: a plain local
/// repository gets an encrypted offsite copy, and two encrypted repositories with different
/// keys exchange snapshots. A second sync finds the copies by snapshot identity.
#[test]
fn sync_reencodes_for_a_destination_with_other_keys() {
    let scratch = Scratch::new("enc-sync");
    let (tree, plain) = (scratch.join("tree"), scratch.join("plain"));
    crate::roundtrip::build_special_tree(&tree);
    fs::write(tree.join("marker.txt"), MARKERS[0].repeat(100)).unwrap();
    ok(cairn(&plain).args(["init", "--encryption", "none"]));
    ok(cairn(&plain).args(["snapshot", "--source", "t"]).arg(&tree));
    fs::write(tree.join("second.txt"), "second snapshot").unwrap();
    ok(cairn(&plain).args(["snapshot", "--source", "t"]).arg(&tree));

    // A new destination is created encrypted (a password is given) and filled re-encoded.
    let offsite = scratch.join("offsite");
    let first = json(cairn(&plain).args(["sync", "--to"]).arg(&offsite));
    assert_eq!(first["report"]["snapshots_copied"].as_array().unwrap().len(), 2, "{first}");
    assert!(ok(cairn(&offsite).arg("snapshots")).contains("encrypted (AES-256-GCM)"));
    for file in files_below(&offsite) {
        assert!(!contains(&fs::read(&file).unwrap(), MARKERS[0].as_bytes()), "{}", file.display());
    }
    ok(cairn(&offsite).args(["check", "--read-data"]));
    let restored = scratch.join("restored");
    ok(cairn(&offsite).args(["restore", "latest", "--target"]).arg(&restored));
    assert_same_tree(&tree, &restored);
    let again = json(cairn(&plain).args(["sync", "--to"]).arg(&offsite));
    assert_eq!(again["report"]["snapshots_copied"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["report"]["snapshots_present"], 2);

    // An encrypted repository with another master key and another password.
    let other = scratch.join("other");
    let password_file = scratch.join("other-password");
    fs::write(&password_file, "another password\n").unwrap();
    ok(cairn(&other).arg("init").env("CAIRN_PASSWORD", "another password"));
    let copied = json(cairn(&offsite).args(["sync", "--to"]).arg(&other).arg("--to-password-file").arg(&password_file));
    assert_eq!(copied["report"]["snapshots_copied"].as_array().unwrap().len(), 2, "{copied}");
    let with_other = |args: &[&str]| {
        let mut command = cairn(&other);
        command.args(args).env("CAIRN_PASSWORD", "another password");
        command
    };
    ok(&mut with_other(&["check", "--read-data"]));
    let from_other = scratch.join("from-other");
    ok(with_other(&["restore", "latest", "--target"]).arg(&from_other));
    assert_same_tree(&tree, &from_other);
}

/// Files whose names are not those cairn gives its files are not cairn's: a key file renamed to
/// `keys/<id>.bak` opens nothing (so `key list`, `key remove` and `key passwd` see every key that
/// does), and an index file copied under an upper-case name is neither read nor deleted.
#[test]
fn files_not_named_as_cairn_names_them_are_neither_used_nor_deleted() {
    let scratch = Scratch::new("odd-names");
    let (repo, data) = (scratch.join("repo"), scratch.join("data"));
    init(&repo);
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a"), b"a").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&data));
    let key = files_below(&repo.join("keys")).remove(0);
    let odd_key = repo.join("keys").join(format!("{}.bak", key.file_name().unwrap().to_string_lossy()));
    fs::rename(&key, &odd_key).unwrap();
    let refused = run(cairn(&repo).arg("snapshots"));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has no key file"), "{refused:?}");
    fs::copy(&odd_key, &key).unwrap();
    assert_eq!(json(cairn(&repo).args(["key", "list"])).as_array().unwrap().len(), 1);

    let index = files_below(&repo.join("index")).remove(0);
    let upper = repo.join("index").join(index.file_name().unwrap().to_string_lossy().to_uppercase());
    fs::copy(&index, &upper).unwrap();
    let checked = json(cairn(&repo).arg("check"));
    assert_eq!(checked["index_files"], 1, "{checked}");
    ok(cairn(&repo).args(["repair", "index"]));
    ok(cairn(&repo).args(["prune"]));
    assert!(upper.exists() && odd_key.exists(), "not cairn's: left alone");
}

/// Whether anything was created in a directory since the watch began: an inotify watch, so a
/// file written and removed again at once counts too.
struct CreateWatch(std::os::fd::OwnedFd);

impl CreateWatch {
    fn new(dir: &Path) -> CreateWatch {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let watch = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO) };
        assert!(watch >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
        CreateWatch(fd)
    }

    fn created(&self) -> bool {
        let mut events = [0u8; 4096];
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0);
        unsafe { libc::read(fd, events.as_mut_ptr().cast(), events.len()) > 0 }
    }
}

/// A wrong password is said at once, with nothing written, even while a prune holds the
/// exclusive lock: restore and drill take their shared lock only once the key opened the
/// repository. They used to take it while the key was derived, so they wrote a lock file, saw
/// the prune's, and waited out --lock-wait (10 minutes by default) before saying the password
/// was wrong. With the right password, restore still waits for the prune, and says why.
#[test]
fn a_wrong_password_is_said_at_once_while_a_prune_holds_the_lock() {
    use std::time::{Duration, Instant};
    let scratch = Scratch::new("enc-wrong-locked");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("target"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"content").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    // A prune that is still running: this test process holds its lock.
    hold_prune_lock(&repo);
    let watch = CreateWatch::new(&repo.join("locks"));
    let restore = ["restore", "latest", "--target", target.to_str().unwrap()];
    for args in [&restore[..], &["drill"]] {
        let started = Instant::now();
        let out = run(cairn(&repo).args(["--lock-wait", "20s"]).args(args).env("CAIRN_PASSWORD", "nope"));
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} waited for the prune's lock");
    }
    assert!(!watch.created(), "a wrong password wrote a lock file");
    assert!(!target.exists(), "a wrong password restores nothing");

    let out = run(cairn(&repo).args(["--lock-wait", "1s"]).args(restore));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("an exclusive lock of `cairn prune`"), "{out:?}");
    assert!(watch.created(), "the right password takes its lock (the watch sees it)");
}

/// Every file and directory cairn makes in a local repository is its owner's alone, whatever the
/// umask: with 022 they were readable by any local user, a plain repository's data and an
/// encrypted one's key files (all an offline guess at the passphrase needs) alike.
#[test]
fn repository_files_are_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let scratch = Scratch::new("enc-modes");
    fs::create_dir_all(scratch.join("src")).unwrap();
    fs::write(scratch.join("src/f"), "data").unwrap();
    let with_umask_022 = |command: &mut std::process::Command| {
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            })
        };
        ok(command);
    };
    let encrypted = scratch.join("parent/encrypted");
    let plain = scratch.join("plain");
    with_umask_022(cairn(&encrypted).arg("init"));
    with_umask_022(cairn(&encrypted).arg("snapshot").arg(scratch.join("src")));
    with_umask_022(cairn(&encrypted).args(["key", "add"]).env("CAIRN_NEW_PASSWORD", "second"));
    with_umask_022(cairn(&plain).arg("snapshot").arg(scratch.join("src")).env_remove("CAIRN_PASSWORD"));
    let mut pending = vec![scratch.join("parent"), plain];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{} has mode {:o}", path.display(), meta.permissions().mode());
        if meta.is_dir() {
            pending.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        seen += 1;
    }
    assert!(seen > 20, "{seen}");
}

/// A password given for a plain repository was silently ignored, so whoever set it believed the
/// backups encrypted. It is said once per command, and the command still succeeds (a cron job
/// that sets one password for every repository must not break).
#[test]
fn a_password_for_a_plain_repository_is_said_unused() {
    let scratch = Scratch::new("enc-unused");
    let repo = scratch.join("repo");
    ok(cairn(&repo).args(["init", "--encryption", "none"]));
    fs::create_dir_all(scratch.join("src")).unwrap();
    for args in
        [vec!["snapshot".into(), scratch.join("src").into_os_string()], vec!["snapshots".into()], vec!["check".into()]]
    {
        let output = run(cairn(&repo).args(&args));
        assert!(output.status.success(), "{output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(said.matches("was not used").count(), 1, "{output:?}");
        assert!(said.contains("NOT encrypted"), "{output:?}");
        let quiet = run(cairn(&repo).args(&args).env_remove("CAIRN_PASSWORD"));
        assert!(!String::from_utf8_lossy(&quiet.stderr).contains("was not used"), "{quiet:?}");
    }
}
