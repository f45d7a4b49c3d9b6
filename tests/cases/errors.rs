//! Bad input gets a clear error naming what is wrong, and changes nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::*;

fn stderr_of(command: &mut std::process::Command) -> (Option<i32>, String) {
    let out = run(command);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every file below `dir` with its length, to prove a failed command wrote nothing.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                pending.push(e.path());
            } else {
                out.push((e.path().display().to_string(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

fn repo_with_snapshot(scratch: &Scratch) -> std::path::PathBuf {
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("d")).unwrap();
    fs::write(source.join("d/a"), noise(200_000, 1)).unwrap();
    fs::write(source.join("b"), b"bbb").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    repo
}

#[test]
fn missing_source_path_is_an_error_and_writes_nothing() {
    let scratch = Scratch::new("missing");
    let repo = repo_with_snapshot(&scratch);
    let stored = |repo: &Path| listing(repo).into_iter().filter(|(p, _)| !p.contains("/audit/")).collect::<Vec<_>>();
    let before = stored(&repo);
    let (code, err) = stderr_of(cairn(&repo).arg("snapshot").arg(scratch.join("no-such-dir")));
    assert_eq!(code, Some(1));
    assert!(err.contains("no-such-dir") && err.contains("does not exist"), "{err}");
    assert_eq!(stored(&repo), before, "only the audit record of the failed run is new");
    let failed = run(cairn(&repo).arg("status"));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("last snapshot failed"));

    // Nor does it create the default repository.
    let home = scratch.join("home");
    fs::create_dir(&home).unwrap();
    let mut command = cairn_bare();
    command
        .arg("snapshot")
        .arg(scratch.join("no-such-dir"))
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("CAIRN_REPO");
    assert_eq!(stderr_of(&mut command).0, Some(1));
    assert!(fs::read_dir(&home).unwrap().next().is_none());
}

#[test]
fn uninitialised_repository_is_named() {
    let scratch = Scratch::new("uninit");
    let empty = scratch.join("empty");
    fs::create_dir(&empty).unwrap();
    for args in [&["snapshots"][..], &["ls", "latest"], &["restore", "latest", "--target", "/tmp/x-cairn-never"]] {
        let (code, err) = stderr_of(cairn(&empty).args(args));
        assert_eq!(code, Some(1));
        assert!(err.contains("no repository at") && err.contains("cairn init"), "{err}");
    }
    assert!(fs::read_dir(&empty).unwrap().next().is_none());
    // init refuses a repository that exists, or a directory holding other files.
    init(&scratch.join("repo"));
    let (code, err) = stderr_of(cairn(&scratch.join("repo")).arg("init"));
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    fs::write(empty.join("precious"), b"p").unwrap();
    let (code, err) = stderr_of(cairn(&empty).arg("init"));
    assert_eq!(code, Some(1));
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn corrupt_or_truncated_repository_files_are_named() {
    let scratch = Scratch::new("corrupt");
    let repo = repo_with_snapshot(&scratch);

    let config = repo.join("config");
    let original = fs::read(&config).unwrap();
    let mut damaged = original.clone();
    damaged[40] ^= 1;
    fs::write(&config, &damaged).unwrap();
    let (code, err) = stderr_of(cairn(&repo).arg("snapshots"));
    assert_eq!(code, Some(1));
    assert!(err.contains("config") && err.contains("checksum"), "{err}");
    fs::write(&config, &original[..original.len() / 2]).unwrap();
    let (_, err) = stderr_of(cairn(&repo).arg("snapshots"));
    assert!(err.contains("config") && err.contains("corrupt"), "{err}");
    fs::write(&config, &original).unwrap();

    let snapshot_file = fs::read_dir(repo.join("snapshots")).unwrap().next().unwrap().unwrap().path();
    let bytes = fs::read(&snapshot_file).unwrap();
    fs::write(&snapshot_file, &bytes[..bytes.len() - 10]).unwrap();
    let (code, err) = stderr_of(cairn(&repo).arg("snapshots"));
    assert_eq!(code, Some(1));
    assert!(err.contains(&snapshot_file.file_name().unwrap().to_string_lossy().to_string()), "{err}");
    fs::write(&snapshot_file, &bytes).unwrap();

    let index_file = fs::read_dir(repo.join("index")).unwrap().next().unwrap().unwrap().path();
    let bytes = fs::read(&index_file).unwrap();
    fs::write(&index_file, &bytes[..bytes.len() - 1]).unwrap();
    let (code, err) = stderr_of(cairn(&repo).args(["restore", "latest", "--target"]).arg(scratch.join("out1")));
    assert_eq!(code, Some(1));
    assert!(err.contains(&index_file.file_name().unwrap().to_string_lossy().to_string()), "{err}");
    fs::write(&index_file, &bytes).unwrap();
}

#[test]
fn damaged_pack_fails_only_the_affected_files() {
    let scratch = Scratch::new("badpack");
    let repo = repo_with_snapshot(&scratch);
    // Flip a byte inside the largest data pack (it holds d/a, a 200 kB incompressible file).
    let (pack, _) = packs_by_size(&repo).pop().unwrap();
    flip_byte(&pack, 1000, 0xff);
    let target = scratch.join("out");
    let (code, err) = stderr_of(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(code, Some(1));
    // Sealed blobs fail authentication; plain ones would fail their hash.
    assert!(err.contains("d/a") && err.contains("authentication failed"), "{err}");
    assert_eq!(fs::read(target.join("b")).unwrap(), b"bbb", "unaffected files still restore");
}

/// A damaged byte in a pack's version field read as "unsupported pack version 254": advice to
/// upgrade. check says it may be damage, and check --read-data says it is.
#[test]
fn a_damaged_pack_header_is_not_taken_for_a_newer_cairn() {
    let scratch = Scratch::new("badheader");
    let repo = repo_with_snapshot(&scratch);
    let (pack, _) = packs_by_size(&repo).pop().unwrap();
    flip_byte(&pack, 9, 0xff); // the high byte of the version, after the 8-byte magic
    let said = |args: &[&str]| {
        let output = run(cairn(&repo).args(args));
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    let out = said(&["check"]);
    assert!(
        out.contains("unsupported pack version") && out.contains("a damaged header, or a pack from a newer cairn"),
        "{out}"
    );
    let out = said(&["check", "--read-data"]);
    assert!(out.contains("content does not match its id: it is damaged"), "{out}");
}

#[test]
fn unknown_or_ambiguous_snapshot_ids() {
    let scratch = Scratch::new("ids");
    let repo = repo_with_snapshot(&scratch);
    let (code, err) = stderr_of(cairn(&repo).args(["ls", "ffffffffffff"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("no snapshot matches"), "{err}");
    let id = json(cairn(&repo).arg("snapshots"))[0]["id"].as_str().unwrap().to_string();
    ok(cairn(&repo).args(["ls", &id[..6]]));
    let (code, err) = stderr_of(cairn(&repo).args(["ls", ""]));
    assert_eq!(code, Some(1));
    assert!(err.contains("no snapshot matches"), "{err}");
}

/// The disk guard: a snapshot that would take the repository's file system below `--min-free`
/// is refused before it writes anything (but its failure is recorded), or stopped before the pack
/// write that would cross the line, leaving no snapshot.
#[test]
fn disk_guard_refuses_to_fill_the_disk() {
    let scratch = Scratch::new("disk-guard");
    let repo = repo_with_snapshot(&scratch);
    let stored = |repo: &Path| listing(repo).into_iter().filter(|(p, _)| !p.contains("/audit/")).collect::<Vec<_>>();
    let before = stored(&repo);
    let space = cairn::disk::space(&repo).unwrap();
    let above = format!("{}", space.total + (1 << 30));
    let (code, err) = stderr_of(cairn(&repo).args(["snapshot", "--min-free", &above]).arg(scratch.join("src")));
    assert_eq!(code, Some(1));
    assert!(err.contains("disk guard") && err.contains("MiB free"), "{err}");
    assert_eq!(stored(&repo), before, "nothing but the audit record is written");
    let status = run(cairn(&repo).arg("status"));
    assert!(String::from_utf8_lossy(&status.stdout).contains("disk guard"));
    // A repository that does not exist yet is not created either.
    let fresh = scratch.join("fresh");
    assert_eq!(
        stderr_of(cairn(&fresh).args(["snapshot", "--min-free", "99.999%"]).arg(scratch.join("src"))).0,
        Some(1)
    );
    assert!(!fresh.exists());

    // Enough room to start, not enough for the 64 MiB that follow: the run stops at a pack write.
    // Other tests free space meanwhile, which can let a try through, so each try writes new data.
    let stopped = (0..10u64).any(|attempt| {
        let big = scratch.join(format!("big-{attempt}"));
        fs::create_dir(&big).unwrap();
        write_noise_file(&big.join("noise"), 64 << 20, 3 + attempt);
        let snapshots = json(cairn(&repo).arg("snapshots")).as_array().unwrap().len();
        let free = cairn::disk::space(&repo).unwrap().free;
        let min = (free - (8 << 20)).to_string();
        let (code, err) = stderr_of(cairn(&repo).args(["snapshot", "--min-free", &min]).arg(&big));
        let stopped = code == Some(1) && err.contains("this write needs");
        if stopped {
            let now = json(cairn(&repo).arg("snapshots")).as_array().unwrap().len();
            assert_eq!(now, snapshots, "no snapshot was committed");
        }
        stopped
    });
    assert!(stopped, "the guard stopped the snapshot at a pack write");
    ok(cairn(&repo).args(["check", "--read-data"]));
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let scratch = Scratch::new("closed-stdout");
    let repo = repo_with_snapshot(&scratch);
    for args in [&["ls", "latest"][..], &["ls", "latest", "--json"], &["ls", "latest", "-l"], &["snapshots"]] {
        // The only read end of the pipe is dropped before cairn writes anything: every write fails.
        let mut child = cairn(&repo)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} says nothing: {err}");
    }
    // Any other failure to write the output fails the command.
    if Path::new("/dev/full").exists() {
        let full = fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let (code, err) = stderr_of(cairn(&repo).args(["ls", "latest"]).stdout(full));
        assert_eq!(code, Some(1));
        assert!(err.contains("writing to standard output") && err.contains("No space left"), "{err}");
    }
}

#[test]
fn a_repository_that_cannot_be_written_still_restores_and_checks() {
    // The day of the disaster: the backup disk mounted read-only, or full, or credentials that
    // may only read. Reading commands go on without their shared lock, and say so.
    let scratch = Scratch::new("read-only-repo");
    let source = scratch.join("src");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a"), noise(300_000, 4)).unwrap();
    let repo = scratch.join("repo");
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    open_up(scratch.path());
    // Readable by everyone, writable by its owner only: cairn runs as another user.
    assert!(std::process::Command::new("chmod").args(["-R", "a+rX,go-w"]).arg(&repo).status().unwrap().success());
    if !is_root() {
        assert!(std::process::Command::new("chmod").args(["-R", "a-w"]).arg(&repo).status().unwrap().success());
    }
    let before = listing(&repo);
    let target = scratch.join("target");
    fs::create_dir(&target).unwrap();
    open_up(&target);
    let out = run(as_unprivileged(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without a lock"), "{err}");
    assert!(err.contains("its audit record could not be written"), "{err}");
    assert_eq!(fs::read(target.join("a")).unwrap(), noise(300_000, 4));
    // Over a changed target, --in-place needs its safety snapshot: refused, nothing changed.
    fs::write(target.join("a"), b"changed since").unwrap();
    let out = run(as_unprivileged(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot take the safety snapshot"));
    assert_eq!(fs::read(target.join("a")).unwrap(), b"changed since");
    for args in [&["check", "--read-data"][..], &["ls", "latest"], &["snapshots"]] {
        let out = run(as_unprivileged(&repo).args(args));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(listing(&repo), before, "nothing was written");
    let _ = std::process::Command::new("chmod").args(["-R", "u+w"]).arg(&repo).status();
}

/// An in-place restore whose safety snapshot cannot read all of the target is refused, and that
/// incomplete snapshot is forgotten: it used to stay, protected from every prune, one more each
/// time the restore was tried.
#[test]
fn an_incomplete_safety_snapshot_is_forgotten_with_the_refused_restore() {
    let scratch = Scratch::new("incomplete-safety");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("target"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a"), b"from the snapshot").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    fs::create_dir(&target).unwrap();
    fs::write(target.join("a"), b"the service's").unwrap();
    fs::write(target.join("secret"), b"unreadable").unwrap();
    fs::set_permissions(target.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    open_up(scratch.path());
    if is_root() {
        // cairn runs as nobody, who owns it all and still cannot read a file of mode 000.
        for path in [&repo, &target] {
            assert!(Command::new("chown").args(["-R", "65534:65534"]).arg(path).status().unwrap().success());
        }
    }
    for _ in 0..2 {
        let out = run(as_unprivileged(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("is incomplete") && err.contains("secret") && err.contains("forgotten"), "{err}");
        assert_eq!(fs::read(target.join("a")).unwrap(), b"the service's");
    }
    let listed = json(cairn(&repo).arg("snapshots"));
    assert_eq!(listed.as_array().unwrap().len(), 1, "a safety snapshot stayed: {listed}");
    let _ = fs::set_permissions(target.join("secret"), fs::Permissions::from_mode(0o600));
}

/// A restore onto a disk that fills up: the file that did not fit is named in the error, the run
/// fails, and no copy cut short is left under its name to pass for the snapshot's content; what
/// did fit is whole.
#[test]
fn a_restore_that_fills_the_disk_fails_and_leaves_no_torn_file() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let scratch = Scratch::new("restore-full");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("dir")).unwrap();
    fs::write(source.join("dir/small.txt"), b"fits").unwrap();
    write_noise_file(&source.join("dir/zbig.bin"), 8 << 20, 26);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let mount = Mount::tmpfs(&scratch.join("full"));
    let target = mount.0.join("out");
    let (code, err) = stderr_of(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("zbig.bin") && err.contains("No space left on device"), "{err}");
    assert!(!target.join("dir/zbig.bin").exists(), "a torn copy is left: {:?}", listing(&target));
    assert_eq!(fs::read(target.join("dir/small.txt")).unwrap(), b"fits");
}

/// A repository whose `config` is lost is not a place for a new one: `snapshot` (which creates a
/// missing repository) and `init` refuse, naming the lost file, and write nothing, on a local
/// directory and on an object store. (They used to draw a new key and write a second repository
/// among the old one's files, hiding every earlier snapshot behind another key.)
#[test]
fn a_repository_that_lost_its_config_is_never_created_again_over_its_files() {
    let scratch = Scratch::new("lost-config");
    let repo = repo_with_snapshot(&scratch);
    fs::rename(repo.join("config"), scratch.join("config.saved")).unwrap();
    let before = listing(&repo);
    // `snapshot` and `init` through `command`: each refuses, naming the lost config.
    let refused = |command: &dyn Fn() -> std::process::Command| {
        for verb in ["snapshot", "init"] {
            let mut cairn = command();
            cairn.arg(verb);
            if verb == "snapshot" {
                cairn.arg(scratch.join("src"));
            }
            let (code, said) = stderr_of(&mut cairn);
            assert_eq!(code, Some(1), "{verb}: {said}");
            assert!(said.contains("config") && said.contains("refusing"), "{verb}: {said}");
        }
    };
    refused(&|| cairn(&repo));
    // Commands that only open it say what happened too, not "run `cairn init` first".
    let (code, said) = stderr_of(cairn(&repo).arg("snapshots"));
    assert!(code == Some(1) && said.contains("config is lost"), "{said}");
    assert_eq!(listing(&repo), before, "a refused command wrote into the repository");
    // Its snapshots and index lost too, its packs are still data that only its key file reads:
    // an `init` there may make a new repository, but never removes that key file.
    let saved = scratch.join("saved");
    fs::create_dir_all(&saved).unwrap();
    for dir in ["snapshots", "index", "keys"] {
        fs::rename(repo.join(dir), saved.join(dir)).unwrap();
    }
    fs::create_dir(repo.join("keys")).unwrap();
    for key in fs::read_dir(saved.join("keys")).unwrap() {
        let key = key.unwrap().path();
        fs::copy(&key, repo.join("keys").join(key.file_name().unwrap())).unwrap();
    }
    ok(cairn(&repo).arg("init"));
    for key in fs::read_dir(saved.join("keys")).unwrap() {
        let name = key.unwrap().file_name();
        assert!(repo.join("keys").join(&name).exists(), "init removed the key file {name:?} beside packs");
    }
    for dir in ["snapshots", "index", "keys", "config"] {
        let _ = fs::remove_dir_all(repo.join(dir));
        let _ = fs::remove_file(repo.join(dir));
    }
    for dir in ["snapshots", "index", "keys"] {
        fs::rename(saved.join(dir), repo.join(dir)).unwrap();
    }
    fs::rename(scratch.join("config.saved"), repo.join("config")).unwrap();
    ok(cairn(&repo).arg("check"));

    // On an object store, the same.
    let on_s3 = |repo: &Path| {
        let mut command = cairn(repo);
        for (key, value) in crate::backends::s3().env() {
            command.env(key, value);
        }
        command
    };
    let name = format!("lost-config-{}", std::process::id());
    let url = Path::new("s3://").join(crate::backends::BUCKET).join(&name);
    ok(on_s3(&url).arg("init"));
    ok(on_s3(&url).arg("snapshot").arg(scratch.join("src")));
    let store = crate::backends::s3().backend(&name);
    use cairn::backend::Backend as _;
    let config = store.get("config").unwrap();
    store.delete("config").unwrap();
    let objects = store.list("keys").unwrap().len() + store.list("snapshots").unwrap().len();
    refused(&|| on_s3(&url));
    assert!(!store.exists("config").unwrap());
    assert_eq!(store.list("keys").unwrap().len() + store.list("snapshots").unwrap().len(), objects);
    assert!(store.put("config", &config).unwrap());
    ok(on_s3(&url).arg("check"));
}

/// A repository on a full file system: a forget (which needs room for its lock file) fails,
/// changes nothing, and says what to do rather than only "No space left on device".
#[test]
fn a_full_repository_disk_is_said_with_what_to_do() {
    let scratch = Scratch::new("repo-full");
    let Some(mount) = Mount::try_tmpfs(&scratch.join("disk")) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (source, repo) = (scratch.join("src"), mount.0.join("repo"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a"), b"a").unwrap();
    init(&repo);
    for _ in 0..2 {
        ok(cairn(&repo).arg("snapshot").arg(&source));
    }
    let mut filler = fs::File::create(mount.0.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    let before = listing(&repo);
    let (code, err) = stderr_of(cairn(&repo).args(["forget", "--keep-last", "1"]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("No space left on device") && err.contains("file system is full"), "{err}");
    assert_eq!(listing(&repo), before, "nothing changed");
}

/// A repository whose disk filled up (its own snapshots, or anything else on that disk) is freed
/// by `forget` then `prune` (as `cairn run` does) or `forget --prune`: they run on the reserve
/// the repository set aside, repack within the room there is (a pack half of which no snapshot
/// needs any more frees nothing unless its live half is copied out first), and set the reserve
/// aside again. A forget, which frees nothing itself, gives the reserve back. Without the reserve
/// the forget cannot even write its lock file (the test above).
#[test]
fn a_full_repository_disk_is_freed_by_forget_and_prune_on_the_reserve() {
    let scratch = Scratch::new("repo-full-reserve");
    let Some(mount) = Mount::try_tmpfs_of(&scratch.join("disk"), 96) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (source, repo) = (scratch.join("src"), mount.0.join("repo"));
    fs::create_dir_all(&source).unwrap();
    init(&repo);
    let reserve = repo.join("reserve");
    let reserve_len = || fs::metadata(&reserve).map_or(0, |m| m.len());
    // 1 MiB for a prune's lock file and audit records, beside its index files (none yet), and
    // room to repack a pack (16 MiB and a chunk of 4 MiB), in steps of 4 MiB.
    let full = 24 << 20;
    assert_eq!(reserve_len(), full, "init sets the reserve aside");
    let fill = || {
        let mut filler = fs::File::create(mount.0.join("filler")).unwrap();
        while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    };
    let free = || cairn::disk::space(&mount.0).unwrap().free;
    let restores = || {
        ok(cairn(&repo).arg("check"));
        let out = scratch.join("out");
        let _ = fs::remove_dir_all(&out);
        ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&out));
        assert_same_tree(&source, &out);
    };
    // Packs of a and b; then b goes: part of a pack is dead once the first snapshot is.
    write_noise_file(&source.join("a"), 12 << 20, 10);
    write_noise_file(&source.join("b"), 12 << 20, 20);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    fs::remove_file(source.join("b")).unwrap();
    write_noise_file(&source.join("c"), 12 << 20, 30);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    fill();
    write_noise_file(&source.join("d"), 12 << 20, 40);
    let (code, err) = stderr_of(cairn(&repo).arg("snapshot").arg(&source).arg("--tag").arg("new"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("No space left on device") && err.contains("--prune"), "{err}");
    fs::remove_file(source.join("d")).unwrap();
    // A dry run on a full disk runs without its lock, and releases nothing.
    let (code, err) = stderr_of(cairn(&repo).args(["prune", "--dry-run"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("without a lock") && !err.contains("reserve held"), "{err}");
    assert_eq!(reserve_len(), full, "a dry run released the reserve");
    // What a command on the reserve does not use is the reserve again (less the pages its audit
    // record and lock file took): a prune that frees nothing.
    let (code, err) = stderr_of(cairn(&repo).arg("prune"));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("reserve held") && !err.contains("could not be set aside"), "{err}");
    let about_full = |what: &str| assert!(reserve_len() > full - (64 << 10), "{what}: {} bytes", reserve_len());
    about_full("a prune that freed nothing gives the reserve back");

    // `forget`, then `prune`: the forget runs on the reserve and gives it back.
    let (code, err) = stderr_of(cairn(&repo).args(["forget", "--keep-last", "1"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("reserve held"), "{err}");
    about_full("a forget, which frees nothing, gives the reserve back");
    let out = run(cairn(&repo).arg("prune"));
    let (said, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}{err}");
    assert!(err.contains("reserve held") && !said.contains("repack 0"), "{said}{err}");
    assert!(free() >= 10 << 20, "b's 12 MiB are freed: {} bytes free", free());
    about_full("the reserve is set aside again");
    restores();

    // `forget --prune` on a full disk.
    fs::remove_file(mount.0.join("filler")).unwrap();
    fs::remove_file(source.join("c")).unwrap();
    write_noise_file(&source.join("e"), 12 << 20, 50);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    fill();
    let (code, err) = stderr_of(cairn(&repo).args(["forget", "--keep-last", "1", "--prune"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("reserve held"), "{err}");
    assert!(free() >= 10 << 20, "c's 12 MiB are freed: {} bytes free", free());
    about_full("the reserve is set aside again");
    restores();
}

/// `sync --prune` into a destination whose disk is full runs its forget and prune on the
/// destination's reserve, as `forget --prune` there does: it used to fail taking its lock, so the
/// destination stayed full until someone pruned it by hand.
#[test]
fn a_full_sync_destination_is_freed_by_sync_prune_on_its_reserve() {
    let scratch = Scratch::new("sync-full-reserve");
    let Some(mount) = Mount::try_tmpfs_of(&scratch.join("disk"), 96) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (source, repo, dest) = (scratch.join("src"), scratch.join("repo"), mount.0.join("dest"));
    fs::create_dir_all(&source).unwrap();
    init(&repo);
    init(&dest);
    let sync = || {
        let mut command = cairn(&repo);
        command.arg("sync").arg("--to").arg(&dest);
        command
    };
    write_noise_file(&source.join("a"), 12 << 20, 1);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    ok(&mut sync());
    fs::remove_file(source.join("a")).unwrap();
    write_noise_file(&source.join("b"), 12 << 20, 2);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    ok(&mut sync());
    let mut filler = fs::File::create(mount.0.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    let free = || cairn::disk::space(&mount.0).unwrap().free;
    assert!(free() < 1 << 20, "{} bytes free", free());
    let (code, err) = stderr_of(sync().args(["--prune", "--keep-last", "1"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("reserve held"), "{err}");
    assert!(free() >= 10 << 20, "a's 12 MiB are freed: {} bytes free", free());
    assert!(fs::metadata(dest.join("reserve")).unwrap().len() > (24 << 20) - (64 << 10), "the reserve is back");
    ok(cairn(&dest).arg("check"));
    let out = scratch.join("out");
    ok(cairn(&dest).args(["restore", "latest", "--target"]).arg(&out));
    assert_same_tree(&source, &out);
}

/// `init` into a directory holding a file named `reserve` that cairn did not make (a user's
/// own): refused, and the file is left as it was (growing a reserve appends to it).
#[test]
fn init_never_takes_a_users_file_for_its_reserve() {
    let scratch = Scratch::new("init-reserve");
    let repo = scratch.join("repo");
    fs::create_dir_all(&repo).unwrap();
    fs::write(repo.join("reserve"), b"my notes").unwrap();
    let (code, err) = stderr_of(cairn(&repo).arg("init"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(fs::read(repo.join("reserve")).unwrap(), b"my notes");
}
