//! Snapshot then restore reproduces the tree exactly: metadata, links, odd names, special files.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A small tree with every kind of entry cairn must keep.
pub fn build_special_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    fs::write(root.join("dir/small.txt"), b"hello cairn\n").unwrap();
    fs::write(root.join("dir/nested/text.log"), "line of log text\n".repeat(50_000)).unwrap();
    write_noise_file(&root.join("dir/nested/deeper/big.bin"), 9 * 1024 * 1024 + 123, 7);
    // The same content twice: dedup must not confuse the two files.
    fs::write(root.join("dir/copy-a"), noise(300_000, 9)).unwrap();
    fs::write(root.join("dir/copy-b"), noise(300_000, 9)).unwrap();
    // Hard links, one pair across directories.
    fs::write(root.join("dir/linked"), b"linked content").unwrap();
    fs::hard_link(root.join("dir/linked"), root.join("dir/nested/linked-again")).unwrap();
    // Symlinks: relative, absolute, dangling, to a directory.
    symlink("small.txt", root.join("dir/rel-link")).unwrap();
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("dir/nested", root.join("dir-link")).unwrap();
    // Names that are not UTF-8, and names that need quoting.
    fs::write(root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"bytes name").unwrap();
    fs::create_dir(root.join(OsStr::from_bytes(b"dir-\xff\xfe"))).unwrap();
    fs::write(root.join(OsStr::from_bytes(b"dir-\xff\xfe/inside")), b"x").unwrap();
    fs::write(root.join("space and\nnewline"), b"y").unwrap();
    // Modes: executable, private, setuid, sticky directory.
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("secret"), b"s").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("setuid"), b"s").unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(root.join("read-only-dir")).unwrap();
    fs::write(root.join("read-only-dir/inner"), b"r").unwrap();
    fs::set_permissions(root.join("read-only-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    // A FIFO and a socket.
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let _listener = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    // Exact mtimes with nanoseconds, directories last (creating entries changes them).
    let mut stamp = 1_600_000_000;
    for entry in
        ["empty-file", "dir/small.txt", "dir/nested/text.log", "run.sh", "secret", "dir/rel-link", "dangling", "fifo"]
    {
        stamp += 1;
        set_mtime(&root.join(entry), stamp, 123_456_789);
    }
    for dir in ["dir/nested/deeper", "dir/nested", "dir", "empty-dir", "sticky", "read-only-dir"] {
        stamp += 1;
        set_mtime(&root.join(dir), stamp, 987_654_321);
    }
}

#[test]
fn special_tree_round_trips_exactly() {
    let scratch = Scratch::new("special");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("restored"));
    build_special_tree(&source);
    init(&repo);
    let out = run(cairn(&repo).arg("snapshot").arg(&source));
    assert!(out.status.success());
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sockets are recorded but not restored"));
    assert_same_tree(&source, &target);
}

/// Restoring over a target that holds other things: files in the way are replaced, a symlink
/// in a file's place is replaced (never written through), and nothing outside is touched.
#[test]
fn restore_replaces_what_is_in_the_way_without_following_symlinks() {
    let scratch = Scratch::new("in-the-way");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("restored"));
    fs::create_dir_all(source.join("dir")).unwrap();
    fs::write(source.join("a.txt"), b"snapshot a").unwrap();
    fs::write(source.join("dir/b.txt"), b"snapshot b").unwrap();
    fs::set_permissions(source.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&source.join("a.txt"), 1_600_000_000, 5);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let victim = scratch.join("victim");
    fs::write(&victim, b"outside the target").unwrap();
    fs::create_dir_all(target.join("dir")).unwrap();
    symlink(&victim, target.join("a.txt")).unwrap();
    fs::write(target.join("dir/b.txt"), b"an older, longer b that must go").unwrap();
    ok(cairn(&repo).args(["restore", "latest", "--overwrite", "--target"]).arg(&target));

    assert_eq!(fs::read(&victim).unwrap(), b"outside the target");
    let a = fs::symlink_metadata(target.join("a.txt")).unwrap();
    assert!(a.file_type().is_file());
    assert_eq!(a.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&a), 1_600_000_000);
    assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"snapshot a");
    assert_eq!(fs::read(target.join("dir/b.txt")).unwrap(), b"snapshot b");
}

#[test]
fn toolchain_round_trips_byte_identical() {
    let sysroot = std::process::Command::new("rustc").args(["--print", "sysroot"]).output().unwrap();
    let sysroot = String::from_utf8(sysroot.stdout).unwrap().trim().to_string();
    let source = Path::new(&sysroot);
    let scratch = Scratch::new("toolchain");
    let (repo, target) = (scratch.join("repo"), scratch.join("restored"));
    init(&repo);
    let snapshot = json(cairn(&repo).arg("snapshot").arg(source));
    assert!(snapshot["summary"]["files"].as_u64().unwrap() > 1000, "{snapshot}");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(source, &target);
}

#[test]
fn partial_restore_and_ls() {
    let scratch = Scratch::new("partial");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("restored"));
    build_special_tree(&source);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let listing = ok(cairn(&repo).args(["ls", "latest"]));
    assert!(listing.lines().any(|l| l == "/dir/nested/deeper/big.bin"), "{listing}");
    let listing = ok(cairn(&repo).args(["ls", "latest", "dir/nested"]));
    assert_eq!(listing.lines().next(), Some("/dir/nested"));
    assert!(listing.lines().all(|l| l.starts_with("/dir/nested")), "{listing}");
    let entries: Vec<serde_json::Value> = ok(cairn(&repo).args(["ls", "latest", "--json", "dir"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries
        .iter()
        .any(|e| e["path"] == "/dir/rel-link" && e["type"] == "symlink" && e["target"] == "small.txt"));

    ok(cairn(&repo)
        .args(["restore", "latest", "--include", "dir/nested", "--include", "/run.sh", "--target"])
        .arg(&target));
    assert_same_tree(&source.join("dir/nested"), &target.join("dir/nested"));
    assert_eq!(fs::read(target.join("run.sh")).unwrap(), fs::read(source.join("run.sh")).unwrap());
    let top: Vec<_> = fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(top.len(), 2, "only the included paths: {top:?}");

    // A path that is not in the snapshot is an error, and nothing is written.
    let missing_target = scratch.join("never");
    let out = run(cairn(&repo).args(["restore", "latest", "--include", "no/such", "--target"]).arg(&missing_target));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such"));
    assert!(!missing_target.exists());
}

#[test]
fn several_paths_keep_their_absolute_layout() {
    let scratch = Scratch::new("multi");
    let (repo, target) = (scratch.join("repo"), scratch.join("restored"));
    fs::create_dir_all(scratch.join("a/data")).unwrap();
    fs::create_dir_all(scratch.join("b/data")).unwrap();
    fs::write(scratch.join("a/data/one"), b"1").unwrap();
    fs::write(scratch.join("b/data/two"), b"2").unwrap();
    fs::write(scratch.join("lonely-file"), b"3").unwrap();
    init(&repo);
    ok(cairn(&repo)
        .arg("snapshot")
        .arg(scratch.join("a/data"))
        .arg(scratch.join("b/data"))
        .arg(scratch.join("lonely-file")));
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    let base = target.join(scratch.path().strip_prefix("/").unwrap());
    assert_eq!(fs::read(base.join("a/data/one")).unwrap(), b"1");
    assert_eq!(fs::read(base.join("b/data/two")).unwrap(), b"2");
    assert_eq!(fs::read(base.join("lonely-file")).unwrap(), b"3");

    // One file on its own restores as that file inside the target.
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("lonely-file")));
    let single = scratch.join("single");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&single));
    assert_eq!(fs::read(single.join("lonely-file")).unwrap(), b"3");
}

#[test]
fn default_repository_is_created_on_first_snapshot() {
    let scratch = Scratch::new("default");
    let home = scratch.join("home");
    let source = scratch.join("src");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"content").unwrap();
    let plain = |args: &[&str]| {
        let mut command = cairn_bare();
        command.args(args).env("HOME", &home).env_remove("XDG_DATA_HOME").env_remove("CAIRN_REPO");
        command
    };
    ok(plain(&["snapshot"]).arg(&source));
    assert!(home.join(".local/share/cairn/repo/config").exists());
    let listed = ok(&mut plain(&["snapshots", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&listed).unwrap().as_array().unwrap().len(), 1);
    ok(plain(&["restore", "latest", "--target"]).arg(scratch.join("out")));
    assert_eq!(fs::read(scratch.join("out/f")).unwrap(), b"content");
}

#[test]
fn a_trailing_slash_follows_a_symlinked_directory() {
    let scratch = Scratch::new("slash");
    let (repo, real) = (scratch.join("repo"), scratch.join("real"));
    fs::create_dir_all(&real).unwrap();
    fs::write(real.join("inside"), b"content").unwrap();
    symlink(&real, scratch.join("link")).unwrap();
    init(&repo);
    let mut slashed = scratch.join("link").into_os_string();
    slashed.push("/");
    ok(cairn(&repo).arg("snapshot").arg(&slashed));
    let listing = ok(cairn(&repo).args(["ls", "latest"]));
    assert_eq!(listing.trim(), "/inside", "the directory behind the link, not the link");
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("link")));
    let listing = ok(cairn(&repo).args(["ls", "--long", "latest"]));
    assert!(listing.contains("symlink"), "without the slash, the link itself: {listing}");
}

/// Files are made with the snapshot's permission bits where they keep them (an owner that
/// stays, no attributes, no setuid, setgid or sticky bit), and only what then differs is set
/// again: whatever the umask or a default ACL on the target did to them, every mode and owner
/// comes back as the snapshot has it.
#[test]
fn modes_come_back_whatever_the_umask_or_a_default_acl() {
    let scratch = Scratch::new("modes-umask");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("dir")).unwrap();
    let mut modes = vec![0o644, 0o755, 0o666, 0o600, 0o400, 0o777, 0o640, 0o000];
    if is_root() {
        modes.extend([0o4755, 0o2750, 0o1777]);
    }
    for (n, mode) in modes.iter().enumerate() {
        let path = source.join(format!("dir/m{mode:o}"));
        fs::write(&path, format!("file {n}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
    if is_root() {
        fs::write(source.join("dir/nobodys"), b"owned by another").unwrap();
        std::os::unix::fs::chown(source.join("dir/nobodys"), Some(65534), Some(65534)).unwrap();
        fs::set_permissions(source.join("dir/nobodys"), fs::Permissions::from_mode(0o640)).unwrap();
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    for (n, umask) in [0o077, 0o000, 0o022].into_iter().enumerate() {
        let target = scratch.join(format!("restored-{n}"));
        fs::create_dir(&target).unwrap();
        // The third target gives its new files a default ACL's modes instead of the umask's.
        let acl = n == 2
            && Command::new("setfacl")
                .args(["-d", "-m", "u::r--,g::---,o::---"])
                .arg(&target)
                .status()
                .is_ok_and(|s| s.success());
        let mut restore = cairn(&repo);
        restore.args(["restore", "latest", "--target"]).arg(&target);
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut restore, move || {
                libc::umask(umask);
                Ok(())
            });
        }
        ok(&mut restore);
        assert_same_tree(&source, &target);
        if n == 2 && !acl {
            eprintln!("no default ACL checked: setfacl is missing or refused");
        }
    }
}
