//! Restores over a target against what a hostile tester found: a second restore of a target
//! while the first runs; a user's files named like cairn's leftovers; the attributes of the
//! directories an in-place restore swaps but does not restore; no `.bak` name free; a file
//! system mounted below the target.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// An exclusive `flock` on a directory, held until dropped: what a running restore holds.
struct Held {
    _file: fs::File,
}

fn hold(dir: &Path) -> Held {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(dir).unwrap();
    // SAFETY: a valid descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "flock {}: {}", dir.display(), std::io::Error::last_os_error());
    Held { _file: file }
}

/// Stops `child` (SIGSTOP) as soon as `ready` holds; false when it ended first.
fn stopped_once(child: &mut std::process::Child, ready: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while !ready() && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: a child of this process.
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    child.try_wait().unwrap().is_none()
}

fn snapshot_count(repo: &Path) -> usize {
    json(cairn(repo).args(["snapshots", "--source", "pre-restore"])).as_array().unwrap().len()
}

/// While a restore holds the target's lock, a second one refuses and changes nothing: not the
/// target, not the running restore's staging directory, not the repository. A staging directory
/// whose lock is held is never taken for a killed run's, even once the target is free; freed, it
/// is removed by the next restore.
#[test]
fn a_second_restore_refuses_while_one_runs_and_never_touches_its_staging_directory() {
    let scratch = Scratch::new("inplace-live");
    let (repo, source, _) = setup(&scratch, SMALL);
    let (target, pristine) = (scratch.join("target"), scratch.join("pristine"));
    build_old(&target, SMALL);
    build_old(&pristine, SMALL);
    let inode = fs::metadata(&target).unwrap().ino();
    let staging = scratch.join(format!(".target.cairn-staging-{inode}-feedbeef"));
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("half-restored"), b"being written").unwrap();
    let (target_lock, staging_lock) = (hold(&target), hold(&staging));

    let out = run(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("another restore into {} is running (pid {})", target.display(), std::process::id());
    assert!(err.contains(&expected) && err.contains("nothing was changed"), "{err}");
    assert_eq!(digest(&target), digest(&pristine), "the target is untouched");
    assert_eq!(fs::read(staging.join("half-restored")).unwrap(), b"being written", "the live staging stays");
    assert_eq!(snapshot_count(&repo), 0, "no safety snapshot either");
    assert_eq!(beside(&target), (vec![staging.clone()], vec![]));

    // A dry run says whose it is, and a restore with the target free leaves it alone too.
    let dry = json(cairn(&repo).args(["restore", "latest", "--in-place", "--dry-run", "--target"]).arg(&target));
    assert!(dry["leftovers"][0].as_str().unwrap().contains("belongs to a restore that is running"), "{dry}");
    drop(target_lock);
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
    assert!(report["leftovers"][0].as_str().unwrap().contains("running"), "{report}");
    assert_same_tree(&source, &target);
    assert_eq!(fs::read(staging.join("half-restored")).unwrap(), b"being written");

    // Its process gone, it is a killed run's leftover: removed.
    drop(staging_lock);
    fs::write(target.join("changed.txt"), b"edited").unwrap();
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
    assert!(report["leftovers"][0].as_str().unwrap().starts_with("removed "), "{report}");
    assert!(!staging.exists());
    assert_same_tree(&source, &target);
}

/// Two real restores: the first stopped (SIGSTOP) once its staging directory exists, the second
/// refuses, naming the first's pid; the first, continued, finishes with the new tree in place and
/// the old one at `.bak`.
#[test]
fn a_restore_stopped_midway_keeps_a_second_one_out_and_then_finishes() {
    let scratch = Scratch::new("inplace-two");
    let sizes = Sizes { old_big: 16 << 20, new_big: 16 << 20 };
    let (repo, source, _) = setup(&scratch, sizes);
    let pristine = scratch.join("pristine");
    build_old(&pristine, sizes);
    let args = ["--quiet", "restore", "latest", "--in-place", "--delete", "--target"];
    for attempt in 0..3 {
        let target = scratch.join(format!("target-{attempt}"));
        build_old(&target, sizes);
        let mut first = cairn(&repo).args(args).arg(&target).spawn().unwrap();
        if !stopped_once(&mut first, || !beside(&target).0.is_empty()) {
            eprintln!("attempt {attempt}: the first restore ended before it was stopped; again");
            continue;
        }
        let second = run(cairn(&repo).args(args).arg(&target));
        // SAFETY: a child of this process.
        unsafe { libc::kill(first.id() as i32, libc::SIGCONT) };
        let status = first.wait().unwrap();
        assert_eq!(second.status.code(), Some(1));
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(err.contains(&format!("is running (pid {})", first.id())), "{err}");
        assert!(status.success(), "the first restore finishes");
        assert_same_tree(&source, &target);
        let (staging, baks) = beside(&target);
        assert!(staging.is_empty(), "{staging:?}");
        assert_eq!(baks.len(), 1, "{baks:?}");
        assert_eq!(digest(&baks[0]), digest(&pristine), "the old tree is kept whole");
        return;
    }
    panic!("the first restore always ended before it could be stopped");
}

/// A user's files named like cairn's private directories, at any depth, are in the safety
/// snapshot like any other: it brings back what `--overwrite` and `--in-place --delete` replace.
#[test]
fn the_safety_snapshot_keeps_files_named_like_leftovers_of_cairn() {
    let named = [".notes.cairn-restore-2024", "deep/.x.cairn-staging-y", "deep/.app.db.cairn-restore-0badf00d/app.db"];
    for flags in [&["--overwrite"][..], &["--in-place", "--delete"]] {
        let scratch = Scratch::new("inplace-named");
        let (repo, tree, back) = (scratch.join("repo"), scratch.join("b"), scratch.join("back"));
        init(&repo);
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("a"), b"a").unwrap();
        for name in named {
            fs::create_dir_all(tree.join(name).parent().unwrap()).unwrap();
            fs::write(tree.join(name), b"v1").unwrap();
        }
        ok(cairn(&repo).arg("snapshot").arg(&tree));
        for name in named {
            fs::write(tree.join(name), b"v2 edits").unwrap();
        }
        let report = json(cairn(&repo).args(["restore", "latest", "--target"]).arg(&tree).args(flags));
        assert_eq!(fs::read(tree.join(named[0])).unwrap(), b"v1", "{flags:?}: restored");
        ok(cairn(&repo).args(["restore", report["safety_snapshot"].as_str().unwrap(), "--target"]).arg(&back));
        for name in named {
            assert_eq!(fs::read(back.join(name)).ok().as_deref(), Some(&b"v2 edits"[..]), "{flags:?}: {name}");
        }
    }
}

/// Someone who can write the target's parent renames the target away once the restore has
/// opened it, and puts a decoy under its name: the restore writes into the directory it opened,
/// so its safety snapshot is of that directory too, never of the decoy (which would leave the
/// real one overwritten with no way back). `--in-place` then refuses at the swap.
#[test]
fn a_decoy_put_under_the_targets_name_never_becomes_the_safety_snapshot() {
    for flags in [&["--overwrite"][..], &["--in-place", "--delete"]] {
        let scratch = Scratch::new("inplace-decoy");
        let (repo, source, _) = setup(&scratch, SMALL);
        let (target, moved, pause) = (scratch.join("target"), scratch.join("moved"), scratch.join("pause"));
        build_old(&target, SMALL);
        let pristine = digest(&target);
        fs::create_dir(&pause).unwrap();
        let mut restore = cairn(&repo)
            .args(["--json", "restore", "latest", "--target"])
            .arg(&target)
            .args(flags)
            .env("CAIRN_RESTORE_PAUSE", &pause)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pause.join("opened").exists() {
            let ended = restore.try_wait().unwrap();
            if ended.is_some() || Instant::now() > deadline {
                let _ = restore.kill();
                let out = restore.wait_with_output().unwrap();
                panic!("{flags:?}: the restore never reached its safety snapshot: {out:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        fs::rename(&target, &moved).unwrap();
        fs::create_dir(&target).unwrap();
        fs::write(target.join("decoy"), b"planted").unwrap();
        fs::write(pause.join("go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // Exit code 1 either way: --overwrite meets the fixture's typechange-b (a directory in
        // the way), --in-place refuses the swap.
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stdout}\n{stderr}");
        // The decoy is left as it was planted, and the safety snapshot brings back the old tree.
        assert_eq!(digest(&target).keys().collect::<Vec<_>>(), ["decoy"], "{flags:?}");
        assert_eq!(fs::read(target.join("decoy")).unwrap(), b"planted");
        // In the report, or (--in-place, which fails) in the error.
        let reported = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|report| report["safety_snapshot"].as_str().map(str::to_string));
        let said = stderr
            .split("safety snapshot ")
            .filter_map(|rest| rest.get(..64))
            .find(|id| id.bytes().all(|b| b.is_ascii_hexdigit()));
        let safety = reported
            .or(said.map(str::to_string))
            .unwrap_or_else(|| panic!("{flags:?}: no safety snapshot reported: {stdout}\n{stderr}"));
        let back = scratch.join("back");
        ok(cairn(&repo).args(["restore", &safety, "--target"]).arg(&back));
        assert_eq!(digest(&back), pristine, "{flags:?}: the safety snapshot is of the old tree");
        if flags == ["--overwrite"] {
            // Written into the directory opened, which now stands at `moved`.
            assert_eq!(digest(&moved)["changed.txt"], digest(&source)["changed.txt"]);
            assert!(stderr.contains("a directory is in the way"), "{stderr}");
        } else {
            assert!(stderr.contains("was replaced"), "{stderr}");
            assert_eq!(digest(&moved), pristine, "the old tree is left whole");
        }
    }
}

/// A target that does not exist and ends in `..` has no name: refused, not taken for `/`, whose
/// entries are restored by their paths (through the `..`, which could lead anywhere by then).
#[test]
fn a_missing_target_ending_in_dot_dot_is_refused() {
    let scratch = Scratch::new("inplace-dotdot");
    let (repo, _, _) = setup(&scratch, SMALL);
    let target = scratch.join("missing").join("..");
    let out = run(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("ends in `..`"), "{err}");
    assert!(!scratch.join("missing").exists());
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
    let (path, name) = (c_path(path), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of the given length.
    unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (path, name) = (c_path(path), std::ffi::CString::new(name).unwrap());
    let mut buffer = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let len = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    (len >= 0).then(|| buffer[..len as usize].to_vec())
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
}

/// `getfacl` of `paths`, or `None` without the acl tools.
fn acls(paths: &[&Path]) -> Option<String> {
    let out = Command::new("getfacl").args(["-c", "-p"]).args(paths).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The swap leaves the target's own extended attributes and ACLs, and those of the directories
/// around an `--include`, as they were: they are not the snapshot's to change.
#[test]
fn in_place_keeps_the_attributes_and_acls_of_the_target_and_of_include_parents() {
    let scratch = Scratch::new("inplace-xattr-root");
    let (repo, tree) = (scratch.join("repo"), scratch.join("xr"));
    init(&repo);
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("a"), b"a").unwrap();
    fs::write(tree.join("sub/b"), b"b").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&tree));
    if !set_xattr(&tree, "user.label", b"svc") {
        eprintln!("skipped: {} keeps no user attributes", tree.display());
        return;
    }
    assert!(set_xattr(&tree.join("sub"), "user.label", b"sub"));
    let setfacl =
        |args: &[&str], path: &Path| Command::new("setfacl").args(args).arg(path).status().is_ok_and(|s| s.success());
    let with_acls = setfacl(&["-m", "u:nobody:rwx"], &tree)
        && setfacl(&["-d", "-m", "u:nobody:rwx"], &tree)
        && setfacl(&["-m", "u:nobody:rwx"], &tree.join("sub"));
    let before = acls(&[&tree, &tree.join("sub")]).filter(|_| with_acls);
    if before.is_none() {
        eprintln!("no ACLs checked: setfacl is missing or refused");
    }
    for include in [&["--include", "sub/b"][..], &[]] {
        fs::write(tree.join("sub/b"), b"changed").unwrap();
        let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&tree).args(include));
        assert_eq!(report["how"], "in-place", "{include:?}");
        assert_eq!(fs::read(tree.join("sub/b")).unwrap(), b"b");
        assert_eq!(get_xattr(&tree, "user.label").as_deref(), Some(&b"svc"[..]), "{include:?}: the target's own");
        if !include.is_empty() {
            assert_eq!(get_xattr(&tree.join("sub"), "user.label").as_deref(), Some(&b"sub"[..]), "include parent");
        }
        if let Some(before) = &before {
            let now = acls(&[&tree]).unwrap();
            let root = before.split("\n\n").next().unwrap();
            assert_eq!(now.trim(), root.trim(), "{include:?}: the target's ACLs");
            if !include.is_empty() {
                assert_eq!(acls(&[&tree, &tree.join("sub")]).as_ref(), Some(before), "the include parent's ACLs");
            }
        }
    }
}

/// With every `.bak` name taken, the restore refuses before it changes anything: the target,
/// the names beside it and the repository stay as they were.
#[test]
fn no_free_bak_name_refuses_before_anything_changes() {
    let scratch = Scratch::new("inplace-no-bak");
    let (repo, _, _) = setup(&scratch, SMALL);
    let (target, pristine) = (scratch.join("app"), scratch.join("pristine"));
    build_old(&target, SMALL);
    build_old(&pristine, SMALL);
    fs::write(scratch.join("app.bak"), b"taken").unwrap();
    for n in 2..10_000 {
        fs::write(scratch.join(format!("app.bak.{n}")), b"taken").unwrap();
    }
    let out = run(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no name is free") && err.contains("nothing was changed"), "{err}");
    assert_eq!(digest(&target), digest(&pristine), "the target is as it was");
    assert!(beside(&target).0.is_empty(), "no staging directory left");
    assert_eq!(snapshot_count(&repo), 0, "refused before the safety snapshot");
}

/// When keeping the old tree as `.bak` fails after the swap (an I/O error injected by strace
/// into the third `renameat2`, the rename to `.bak`), the error says that the new tree is in
/// place and where the old one is; the next restore keeps it as `.bak`.
#[test]
fn a_failure_after_the_swap_says_the_target_changed_and_where_the_old_tree_is() {
    assert!(
        Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace)"
    );
    let scratch = Scratch::new("inplace-bak-fails");
    let (repo, source, _) = setup(&scratch, SMALL);
    let (target, pristine) = (scratch.join("app"), scratch.join("pristine"));
    build_old(&target, SMALL);
    build_old(&pristine, SMALL);
    let restore = cairn(&repo);
    let mut traced = Command::new("strace");
    traced.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=renameat2", "-e", "inject=renameat2:error=EIO:when=3"]);
    traced.arg(restore.get_program()).args(restore.get_args());
    traced.args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target);
    for (key, value) in restore.get_envs() {
        match value {
            Some(value) => traced.env(key, value),
            None => traced.env_remove(key),
        };
    }
    let out = run(&mut traced);
    assert_eq!(out.status.code(), Some(1));
    let (staging, baks) = beside(&target);
    assert!(baks.is_empty() && staging.len() == 1, "{staging:?} {baks:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let says = format!("the restored tree is in place at {}", target.display());
    assert!(err.contains(&says) && err.contains(&format!("it is at {}", staging[0].display())), "{err}");
    assert_same_tree(&source, &target);
    assert_eq!(digest(&staging[0]), digest(&pristine));
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
    assert!(report["leftovers"][0].as_str().unwrap().contains("is now kept at"), "{report}");
    assert_eq!(digest(&scratch.join("app.bak")), digest(&pristine));
}

/// A file system mounted below the target would be swapped out into the `.bak` with the old
/// tree, and its restored content would land on the parent file system: refused, dry run too,
/// naming the mount point. Needs root (skipped where mounting fails).
#[test]
fn a_mount_point_below_the_target_is_refused_by_in_place() {
    let scratch = Scratch::new("inplace-nested-mount");
    let (repo, _, _) = setup(&scratch, SMALL);
    let target = scratch.join("target");
    build_old(&target, SMALL);
    let data = target.join("sub");
    let Some(_mount) = Mount::try_tmpfs(&data) else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    fs::write(data.join("keep.txt"), b"on the tmpfs").unwrap();
    let before = digest(&target);
    for extra in [&["--dry-run"][..], &[]] {
        let out = run(cairn(&repo)
            .args(["restore", "latest", "--in-place", "--delete", "--target"])
            .arg(&target)
            .args(extra));
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{} is a mount point", data.display())), "{err}");
        assert!(err.contains("--overwrite") && err.contains("nothing was changed"), "{err}");
    }
    assert_eq!(digest(&target), before, "nothing changed");
    assert_eq!(beside(&target), (vec![], vec![]));
    assert_eq!(snapshot_count(&repo), 0, "refused before the safety snapshot");
}

/// Two restores into one target that does not exist yet: the first makes it and locks it before
/// it writes anything, so the second, started while the first is stopped midway, refuses instead
/// of filling the same directory beside it.
#[test]
fn a_second_restore_into_a_new_target_refuses_while_the_first_fills_it() {
    let scratch = Scratch::new("new-target-two");
    let sizes = Sizes { old_big: 16 << 20, new_big: 64 << 20 };
    let (repo, source, _) = setup(&scratch, sizes);
    for attempt in 0..6 {
        let target = scratch.join(format!("new-{attempt}"));
        let mut first = cairn(&repo)
            .args(["--quiet", "restore", "latest", "--target"])
            .arg(&target)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = first.id();
        if !stopped_once(&mut first, || target.exists()) {
            eprintln!("attempt {attempt}: the first restore ended before it was stopped; again");
            continue;
        }
        let second = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
        // SAFETY: a child of this process.
        unsafe { libc::kill(first.id() as i32, libc::SIGCONT) };
        let first = first.wait_with_output().unwrap();
        assert_same_tree(&source, &target);
        // Stopped between making the target and locking it, the first lets the second restore
        // it whole, and then finds it not empty: one restore writes, the other refuses either way.
        let refused = String::from_utf8_lossy(&first.stderr);
        if !first.status.success() && refused.contains("is not empty") && second.status.success() {
            eprintln!("attempt {attempt}: stopped before it locked the target; again");
            continue;
        }
        assert!(first.status.success(), "the first restore finishes: {refused}");
        assert_eq!(second.status.code(), Some(1), "{}", String::from_utf8_lossy(&second.stderr));
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(err.contains(&format!("is running (pid {pid})")), "{err}");
        return;
    }
    panic!("the first restore always ended before it could be stopped");
}
