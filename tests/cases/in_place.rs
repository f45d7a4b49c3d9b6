//! Restoring over an existing directory (`--in-place`, `--delete`, `--dry-run`): the refusal
//! without a flag, the safety snapshot and its id, a dry run that lists exactly what the real
//! run then changes, and `kill -9` at several moments leaving the old tree or the new one with
//! the old kept beside it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

#[path = "in_place_hostile.rs"]
mod hostile;

/// Sizes of the large files: a restore and a safety snapshot that take long enough to be killed.
#[derive(Clone, Copy)]
struct Sizes {
    old_big: u64,
    new_big: u64,
}

const SMALL: Sizes = Sizes { old_big: 4096, new_big: 8192 };

fn file(path: &Path, content: &[u8], mode: u32, mtime: i64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime, 0);
}

fn big(path: &Path, len: u64, seed: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_noise_file(path, len, seed);
    set_mtime(path, 1_700_000_100 + seed as i64, 0);
}

fn symlink(target: &str, path: &Path, mtime: i64) {
    std::os::unix::fs::symlink(target, path).unwrap();
    set_mtime(path, mtime, 0);
}

/// Fixed directory mtimes, deepest first, so two builds of a tree are identical.
fn settle_dirs(root: &Path, dirs: &[&str]) {
    let mut dirs: Vec<&str> = dirs.to_vec();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for dir in dirs {
        set_mtime(&root.join(dir), 1_690_000_000, 0);
    }
}

/// The tree that stands in the target before the restore.
fn build_old(root: &Path, sizes: Sizes) {
    fs::create_dir_all(root).unwrap();
    file(&root.join("same.txt"), b"identical on both sides", 0o644, 1_700_000_001);
    file(&root.join("changed.txt"), b"old content", 0o644, 1_700_000_002);
    file(&root.join("mode.sh"), b"#!/bin/sh\necho hi\n", 0o644, 1_700_000_003);
    file(&root.join("extra.log"), b"only in the target", 0o600, 1_700_000_004);
    file(&root.join("extra-dir/inner.txt"), b"only in the target, below", 0o644, 1_700_000_005);
    file(&root.join("typechange-a"), b"a file that becomes a directory", 0o644, 1_700_000_006);
    file(&root.join("typechange-b/y"), b"a directory that becomes a file", 0o644, 1_700_000_007);
    symlink("old-target", &root.join("link"), 1_700_000_008);
    file(&root.join("sub/keep.txt"), b"kept below", 0o644, 1_700_000_009);
    file(&root.join("sub/gone.txt"), b"gone below", 0o644, 1_700_000_010);
    big(&root.join("big.bin"), sizes.old_big, 1);
    settle_dirs(root, &["extra-dir", "typechange-b", "sub", "."]);
}

/// The tree the snapshot holds.
fn build_new(root: &Path, sizes: Sizes) {
    fs::create_dir_all(root).unwrap();
    file(&root.join("same.txt"), b"identical on both sides", 0o644, 1_700_000_001);
    file(&root.join("changed.txt"), b"new content!", 0o644, 1_700_000_002);
    file(&root.join("mode.sh"), b"#!/bin/sh\necho hi\n", 0o755, 1_700_000_003);
    file(&root.join("typechange-a/x"), b"now below a directory", 0o644, 1_700_000_011);
    file(&root.join("typechange-b"), b"now a file", 0o644, 1_700_000_012);
    symlink("new-target", &root.join("link"), 1_700_000_008);
    file(&root.join("sub/keep.txt"), b"kept below", 0o644, 1_700_000_009);
    file(&root.join("sub/new.txt"), b"new below", 0o644, 1_700_000_013);
    file(&root.join("newdir/deep/file.txt"), b"all new", 0o640, 1_700_000_014);
    big(&root.join("big.bin"), sizes.new_big, 2);
    big(&root.join("big2.bin"), sizes.new_big, 3);
    settle_dirs(root, &["typechange-a", "sub", "newdir/deep", "newdir", "."]);
}

/// A repository holding a snapshot of the new tree; returns (repo, new source, its id).
fn setup(scratch: &Scratch, sizes: Sizes) -> (PathBuf, PathBuf, String) {
    let (repo, source) = (scratch.join("repo"), scratch.join("new"));
    build_new(&source, sizes);
    init(&repo);
    let id = json(cairn(&repo).arg("snapshot").arg(&source))["id"].as_str().unwrap().to_string();
    (repo, source, id)
}

/// One entry as a restore changes it: kind, mode, mtime (not for directories), a hash of the
/// content or symlink target.
type Digest = BTreeMap<String, (String, u32, Option<(i64, i64)>, u64)>;

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn digest(root: &Path) -> Digest {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for item in fs::read_dir(root.join(&relative)).unwrap() {
            let item = item.unwrap();
            let rel = relative.join(item.file_name());
            let meta = fs::symlink_metadata(item.path()).unwrap();
            let (kind, body) = if meta.is_dir() {
                pending.push(rel.clone());
                ("dir", Vec::new())
            } else if meta.file_type().is_symlink() {
                ("symlink", fs::read_link(item.path()).unwrap().into_os_string().into_encoded_bytes())
            } else {
                ("file", fs::read(item.path()).unwrap())
            };
            let mtime = (!meta.is_dir()).then(|| (meta.mtime(), meta.mtime_nsec()));
            let mode = if kind == "symlink" { 0 } else { meta.mode() & 0o7777 };
            out.insert(rel.to_string_lossy().into_owned(), (kind.to_string(), mode, mtime, hash(&body)));
        }
    }
    out
}

/// Every file below `dir` (a repository), to show that a command wrote nothing there.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for item in fs::read_dir(&at).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if !path.starts_with(dir.join("locks")) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    out.sort();
    out
}

/// What changed from `before` to `after`, as (created, replaced, deleted), each sorted.
fn diff(before: &Digest, after: &Digest) -> (Vec<String>, Vec<String>, Vec<String>) {
    let created = after.keys().filter(|k| !before.contains_key(*k)).cloned().collect();
    let deleted = before.keys().filter(|k| !after.contains_key(*k)).cloned().collect();
    let replaced = before.iter().filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v)).map(|(k, _)| k.clone());
    (created, replaced.collect(), deleted)
}

/// Names beside `target` that a restore of it left: staging directories and `.bak`s.
fn beside(target: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let (mut staging, mut baks) = (Vec::new(), Vec::new());
    for item in fs::read_dir(target.parent().unwrap()).unwrap() {
        let entry = item.unwrap().file_name().to_string_lossy().into_owned();
        if entry.starts_with(&format!(".{name}.cairn-staging-")) {
            staging.push(target.with_file_name(&entry));
        } else if entry.starts_with(&format!("{name}.bak")) {
            baks.push(target.with_file_name(&entry));
        }
    }
    staging.sort();
    baks.sort();
    (staging, baks)
}

#[test]
fn a_non_empty_target_is_refused_without_a_flag_and_the_error_says_what_would_happen() {
    let scratch = Scratch::new("inplace-refuse");
    let (repo, _, _) = setup(&scratch, SMALL);
    let (target, pristine) = (scratch.join("target"), scratch.join("pristine"));
    build_old(&target, SMALL);
    build_old(&pristine, SMALL);
    let repo_files = files_below(&repo);
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in
        ["is not empty", "would create 6, replace 6 and delete 1 entries", "--in-place", "--delete", "--dry-run"]
    {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    assert_eq!(digest(&target), digest(&pristine), "the target is untouched");
    assert_eq!(files_below(&repo), repo_files, "nothing was written to the repository, no audit record either");
    assert_eq!(beside(&target), (vec![], vec![]));

    // An empty target needs no flag; nor does a missing one.
    fs::create_dir(scratch.join("empty")).unwrap();
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(scratch.join("empty")));
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(scratch.join("missing")));
    assert_eq!(digest(&scratch.join("empty")), digest(&scratch.join("new")));
}

#[test]
fn in_place_takes_a_protected_safety_snapshot_first_and_reports_its_id() {
    let scratch = Scratch::new("inplace-safety");
    let (repo, source, _) = setup(&scratch, SMALL);
    let (target, pristine) = (scratch.join("target"), scratch.join("pristine"));
    build_old(&target, SMALL);
    build_old(&pristine, SMALL);
    let audits = fs::read_dir(repo.join("audit")).map(|d| d.count()).unwrap_or(0);
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    let safety = report["safety_snapshot"].as_str().unwrap().to_string();
    assert_eq!(safety.len(), 64);
    assert_eq!(report["how"], "in-place");
    let listed = json(cairn(&repo).arg("snapshots"));
    let entry = listed.as_array().unwrap().iter().find(|s| s["id"] == safety.as_str()).expect("listed");
    assert_eq!(strings(&entry["tags"]), vec!["pre-restore", "protected"]);
    assert_eq!(fs::read_dir(repo.join("audit")).unwrap().count(), audits + 2, "the start record and the restore's own");

    // The safety snapshot restores the old tree; the old tree also stands at .bak.
    let back = scratch.join("back");
    ok(cairn(&repo).args(["restore", &safety, "--target"]).arg(&back));
    assert_same_tree(&pristine, &back);
    let bak = PathBuf::from(report["backup"].as_str().unwrap());
    assert_eq!(bak, scratch.join("target.bak"));
    assert_same_tree(&pristine, &bak);
    assert_eq!(beside(&target).0, Vec::<PathBuf>::new(), "no staging directory left");

    // Without --delete, what the snapshot lacks stays; everything else is the snapshot's.
    let (new, got) = (digest(&source), digest(&target));
    for (path, entry) in &new {
        assert_eq!(got.get(path), Some(entry), "{path}");
    }
    let extra: Vec<&String> = got.keys().filter(|k| !new.contains_key(*k)).collect();
    assert_eq!(extra, ["extra-dir", "extra-dir/inner.txt", "extra.log", "sub/gone.txt"]);

    // Text output names the safety snapshot too; an unchanged target takes none.
    let text = ok(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    assert!(!text.contains("safety snapshot"), "nothing replaced, no safety snapshot: {text}");
    fs::write(target.join("changed.txt"), b"edited").unwrap();
    let text = ok(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    assert!(text.contains("safety snapshot: "), "{text}");
    assert_eq!(
        beside(&target).1.len(),
        2,
        "each swap keeps its old tree, none without changes: {:?}",
        beside(&target).1
    );
}

#[test]
fn latest_at_and_drills_choose_a_safety_snapshot_only_when_the_filters_name_it() {
    let scratch = Scratch::new("inplace-latest");
    let (repo, _, id) = setup(&scratch, SMALL);
    let target = scratch.join("target");
    build_old(&target, SMALL);
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    let safety = report["safety_snapshot"].as_str().unwrap().to_string();
    let restored = |name: &str, filters: &[&str]| {
        let mut command = cairn(&repo);
        command.args(["restore", "latest"]).args(filters).arg("--target").arg(scratch.join(name));
        json(&mut command)["snapshot"].as_str().unwrap().to_string()
    };
    // The next `restore latest` brings back the snapshot, not the tree it just replaced.
    assert_eq!(restored("again", &[]), id);
    assert_eq!(restored("again-at", &["--at", "2999-01-01"]), id);
    let listed = ok(cairn(&repo).args(["ls", "latest"]));
    assert!(!listed.contains("extra.log"), "ls latest lists the safety snapshot: {listed}");
    for pick in ["latest", "random"] {
        let drill = json(cairn(&repo).args(["drill", "--snapshot", pick, "--scratch"]).arg(scratch.join("drills")));
        assert_eq!(drill["snapshot"], id.as_str(), "drill {pick}");
    }
    // Named by the filters or by its id, it is there to choose.
    assert_eq!(restored("named-source", &["--source", "pre-restore"]), safety);
    assert_eq!(restored("named-tag", &["--tag", "pre-restore"]), safety);
    let out = run(cairn(&repo).args(["restore", "latest", "--tag", "protected", "--target"]).arg(scratch.join("none")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only snapshots") && err.contains("--source pre-restore"), "{err}");
}

#[test]
fn dry_run_lists_exactly_what_the_real_run_then_changes() {
    for delete in [false, true] {
        let scratch = Scratch::new("inplace-dry");
        let (repo, _, _) = setup(&scratch, SMALL);
        let target = scratch.join("target");
        build_old(&target, SMALL);
        let flags: &[&str] = if delete { &["--in-place", "--delete"] } else { &["--in-place"] };
        let before = digest(&target);
        let repo_files = files_below(&repo);
        let dry = json(cairn(&repo).args(["restore", "latest", "--dry-run", "--target"]).arg(&target).args(flags));
        assert_eq!(dry["how"], "dry-run");
        assert_eq!(digest(&target), before, "a dry run changes nothing");
        assert_eq!(files_below(&repo), repo_files, "not even the repository");
        let text = ok(cairn(&repo).args(["restore", "latest", "--dry-run", "--target"]).arg(&target).args(flags));
        assert!(text.contains(&format!("replace  {}/changed.txt", target.display())), "{text}");

        json(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target).args(flags));
        let (created, replaced, deleted) = diff(&before, &digest(&target));
        let plan = &dry["plan"];
        assert_eq!(strings(&plan["created"]), created, "delete: {delete}");
        assert_eq!(strings(&plan["replaced"]), replaced, "delete: {delete}");
        assert_eq!(strings(&plan["deleted"]), deleted, "delete: {delete}");
        assert_eq!(plan["unchanged"], 2, "same.txt and sub/keep.txt");
        let kept = strings(&plan["kept"]);
        if delete {
            assert!(kept.is_empty());
            assert!(deleted.contains(&"extra.log".to_string()) && deleted.contains(&"sub/gone.txt".to_string()));
        } else {
            assert_eq!(kept, ["extra-dir", "extra.log", "sub/gone.txt"]);
        }
        assert!(replaced.contains(&"mode.sh".to_string()), "a mode change counts: {replaced:?}");
    }
}

/// Hard links are part of what a restore gives back: a target whose files hold the snapshot's
/// bytes but are linked otherwise (two names of one file where the snapshot has two files, or
/// the other way round) is not the snapshot. In-place used to call it "nothing to do", and a
/// write through one name then changed the other.
#[test]
fn in_place_gives_back_the_snapshots_hard_links() {
    let scratch = Scratch::new("inplace-links");
    let (apart, linked, repo) = (scratch.join("apart"), scratch.join("linked"), scratch.join("repo"));
    for dir in [&apart, &linked] {
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a"), b"same bytes").unwrap();
    }
    fs::write(apart.join("sub/b"), b"same bytes").unwrap();
    fs::hard_link(linked.join("a"), linked.join("sub/b")).unwrap();
    for dir in [&apart, &linked] {
        for name in ["a", "sub/b"] {
            let set = Command::new("touch").args(["-d", "2024-01-01 00:00:00"]).arg(dir.join(name)).status();
            assert!(set.unwrap().success());
        }
    }
    init(&repo);
    let id = |source: &Path| json(cairn(&repo).arg("snapshot").arg(source))["id"].as_str().unwrap().to_string();
    let (apart_id, linked_id) = (id(&apart), id(&linked));
    let inodes =
        |dir: &Path| (fs::metadata(dir.join("a")).unwrap().ino(), fs::metadata(dir.join("sub/b")).unwrap().ino());
    // Each snapshot restored in place over the other's tree: both names replaced, links as in
    // the snapshot; then again: nothing to do.
    for (snapshot, target, want_linked) in [(&apart_id, &linked, false), (&linked_id, &apart, true)] {
        let dry = json(cairn(&repo).args(["restore", snapshot, "--in-place", "--dry-run", "--target"]).arg(target));
        assert_eq!(strings(&dry["plan"]["replaced"]), ["a", "sub/b"], "{dry}");
        let report = json(cairn(&repo).args(["restore", snapshot, "--in-place", "--target"]).arg(target));
        assert!(report["safety_snapshot"].is_string(), "{report}");
        let (a, b) = inodes(target);
        assert_eq!(a == b, want_linked, "{}", target.display());
        let again = json(cairn(&repo).args(["restore", snapshot, "--in-place", "--dry-run", "--target"]).arg(target));
        assert!(strings(&again["plan"]["replaced"]).is_empty(), "{again}");
        assert_eq!(again["plan"]["unchanged"], 2, "{again}");
    }
}

#[test]
fn delete_makes_the_target_match_the_snapshot() {
    let scratch = Scratch::new("inplace-delete");
    let (repo, source, _) = setup(&scratch, SMALL);
    let (target, pristine) = (scratch.join("target"), scratch.join("pristine"));
    build_old(&target, SMALL);
    build_old(&pristine, SMALL);
    ok(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    assert_same_tree(&pristine, &scratch.join("target.bak"));

    // --overwrite writes into the target, after the same safety snapshot; it removes nothing,
    // so a directory where the snapshot has a file is reported, and the rest restored.
    let out = run(cairn(&repo).args(["--json", "restore", "latest", "--overwrite", "--target"]).arg(&pristine));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typechange-b: a directory is in the way"));
    let direct: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(direct["how"], "overwrite");
    assert_eq!(direct["safety_snapshot"].as_str().map(str::len), Some(64));
    assert_eq!(digest(&pristine)["changed.txt"], digest(&source)["changed.txt"]);
    assert!(pristine.join("extra.log").exists(), "nothing is deleted");

    // A repository inside the target would be swapped out with the old tree: refused.
    let out = run(cairn(&target.join("repo")).args(["init"]));
    assert!(out.status.success());
    let out = run(cairn(&target.join("repo")).args(["snapshot"]).arg(&source));
    assert!(out.status.success());
    let inside = run(cairn(&target.join("repo")).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    assert_eq!(inside.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&inside.stderr).contains("lies inside the target"));

    // --delete needs --in-place: --overwrite writes into the target and removes nothing.
    let out = run(cairn(&repo).args(["restore", "latest", "--overwrite", "--delete", "--target"]).arg(&pristine));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--delete works with --in-place only"));
}

/// Whatever stands in the target or beside it (symlinks to outside, a `.bak` planted as a
/// symlink, another user's directory named like a staging one) is moved or left, never followed.
#[test]
fn planted_symlinks_and_names_are_never_followed() {
    let scratch = Scratch::new("inplace-hostile");
    let (repo, source, _) = setup(&scratch, SMALL);
    let (target, outside) = (scratch.join("target"), scratch.join("outside"));
    build_old(&target, SMALL);
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"outside").unwrap();
    // Where the snapshot has a directory, and where it has nothing.
    fs::remove_dir_all(target.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("planted")).unwrap();
    std::os::unix::fs::symlink(&outside, scratch.join("target.bak")).unwrap();
    let foreign = scratch.join(".target.cairn-staging-1-00000000");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("theirs"), b"not cairn's").unwrap();
    if is_root() {
        std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
    }
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));

    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "nothing written outside");
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"outside");
    assert!(target.join("sub").is_dir() && !fs::symlink_metadata(target.join("sub")).unwrap().is_symlink());
    assert_eq!(fs::read_link(target.join("planted")).unwrap(), outside, "kept as the symlink it is");
    assert_eq!(fs::read_link(scratch.join("target.bak")).unwrap(), outside, "a planted .bak is left alone");
    assert_eq!(PathBuf::from(report["backup"].as_str().unwrap()), scratch.join("target.bak.2"));
    assert_eq!(fs::read_link(scratch.join("target.bak.2/sub")).unwrap(), outside, "the old tree, as it was");
    if is_root() {
        assert_eq!(fs::read(foreign.join("theirs")).unwrap(), b"not cairn's", "another user's directory stays");
        assert!(report["leftovers"][0].as_str().unwrap().contains("not this user's"), "{report}");
    }
    let new = digest(&source);
    let got = digest(&target);
    for (path, entry) in &new {
        assert_eq!(got.get(path), Some(entry), "{path}");
    }
}

/// A restore that fails while building the new tree swaps nothing, leaves nothing beside the
/// target, and its audit record makes `cairn status` show the failure, with the safety snapshot.
#[test]
fn a_failed_in_place_restore_leaves_the_target_as_it_was_and_is_recorded() {
    let scratch = Scratch::new("inplace-failed");
    let (repo, source, _) = setup(&scratch, Sizes { old_big: 4096, new_big: 1 << 20 });
    let (target, pristine) = (scratch.join("target"), scratch.join("pristine"));
    build_old(&target, SMALL);
    build_old(&pristine, SMALL);
    let (largest, _) = packs_by_size(&repo).pop().unwrap();
    flip_byte(&largest, 100, 1);
    let out = run(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was swapped") && err.contains("was taken"), "{err}");
    assert_eq!(digest(&target), digest(&pristine));
    assert_eq!(beside(&target), (vec![], vec![]), "no staging directory, no .bak");
    let status = run(cairn(&repo).args(["status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let key = source.to_string_lossy();
    let entry = status["sources"].as_array().unwrap().iter().find(|s| s["source"] == *key).expect("the source");
    let problems = entry["problems"].to_string();
    assert!(problems.contains("last restore failed") && problems.contains("nothing was swapped"), "{problems}");
    let sources: Vec<&str> =
        status["sources"].as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert!(!sources.contains(&"pre-restore"), "a safety snapshot is no source: {sources:?}");
}

/// The database being restored over may be why: one too damaged to open is kept as it was.
#[test]
fn a_damaged_database_in_the_target_is_kept_byte_for_byte_by_the_safety_snapshot() {
    let scratch = Scratch::new("inplace-damaged-db");
    let (repo, source, _) = setup(&scratch, SMALL);
    let target = scratch.join("target");
    build_old(&target, SMALL);
    let mut damaged = b"SQLite format 3\0".to_vec();
    damaged.extend(noise(8192, 7));
    fs::write(target.join("app.db"), &damaged).unwrap();
    fs::write(target.join("app.db-wal"), noise(4096, 8)).unwrap();
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    let back = scratch.join("back");
    ok(cairn(&repo).args(["restore", report["safety_snapshot"].as_str().unwrap(), "--target"]).arg(&back));
    assert_eq!(fs::read(back.join("app.db")).unwrap(), damaged);
    assert_eq!(fs::read(back.join("app.db-wal")).unwrap(), noise(4096, 8));
}

/// A mount point cannot be renamed: --in-place refuses it and says what to do; --overwrite
/// restores into it. Needs root for a mount namespace of its own (`unshare -m`).
#[test]
fn a_mount_point_is_refused_by_in_place_and_restored_into_by_overwrite() {
    if !is_root() {
        eprintln!("skipped: needs root for unshare -m");
        return;
    }
    let scratch = Scratch::new("inplace-mount");
    let (repo, _, _) = setup(&scratch, SMALL);
    let target = scratch.join("target");
    fs::create_dir(&target).unwrap();
    let in_namespace = |mode: &str| {
        let restore = cairn(&repo);
        let mut command = Command::new("unshare");
        let script =
            r#"t="$1"; mount -t tmpfs tmpfs "$t" && echo old > "$t/changed.txt" && shift && "$@" && ls -A "$t""#;
        command.args(["-m", "sh", "-c", script, "sh"]).arg(&target);
        command.arg(restore.get_program()).args(restore.get_args());
        command.args(["restore", "latest", mode, "--target"]).arg(&target);
        for (key, value) in restore.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        run(&mut command)
    };
    let refused = in_namespace("--in-place");
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("is a mount point") && err.contains("--overwrite"), "{err}");
    assert!(!err.contains("taken of"), "refused before a safety snapshot: {err}");
    let written = in_namespace("--overwrite");
    assert!(written.status.success());
    let listed = String::from_utf8_lossy(&written.stdout);
    assert!(listed.contains("big2.bin") && listed.contains("newdir"), "restored into the mount: {listed}");
    assert!(fs::read_dir(&target).unwrap().next().is_none(), "nothing landed under the mount point");
}

#[test]
fn a_symlinked_target_is_swapped_where_it_leads_and_stays_a_symlink() {
    let scratch = Scratch::new("inplace-symlinked");
    let (repo, source, _) = setup(&scratch, SMALL);
    let (real, link) = (scratch.join("real"), scratch.join("link"));
    build_old(&real, SMALL);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&link));
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), real);
    assert_same_tree(&source, &real);
    assert_eq!(PathBuf::from(report["backup"].as_str().unwrap()), scratch.join("real.bak"));
}

#[test]
fn an_include_restored_in_place_changes_only_that_part() {
    let scratch = Scratch::new("inplace-include");
    let (repo, _, _) = setup(&scratch, SMALL);
    let target = scratch.join("target");
    build_old(&target, SMALL);
    let before = digest(&target);
    let args = ["restore", "latest", "--in-place", "--delete", "--include", "sub", "--target"];
    let report = json(cairn(&repo).args(args).arg(&target));
    let (created, replaced, deleted) = diff(&before, &digest(&target));
    assert_eq!(created, ["sub/new.txt"]);
    assert!(replaced.is_empty(), "{replaced:?}");
    assert_eq!(deleted, ["sub/gone.txt"]);
    assert_eq!(strings(&report["plan"]["deleted"]), deleted);
    assert_eq!(strings(&report["plan"]["created"]), created);
}

#[test]
fn a_single_directory_snapshot_is_never_sprayed_into_the_root() {
    let scratch = Scratch::new("inplace-root");
    let (repo, source) = (scratch.join("repo"), scratch.join("app"));
    let marker = format!("cairn-spray-test-{}", std::process::id());
    fs::create_dir_all(source.join(&marker)).unwrap();
    fs::write(source.join("config.toml"), b"x").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    for extra in [&[][..], &["--in-place"], &["--overwrite"], &["--force-root", "--in-place"]] {
        let out = run(cairn(&repo).args(["restore", "latest", "--target", "/"]).args(extra));
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing to restore into /"), "{err}");
        assert!(err.contains(&marker) && err.contains("--force-root"), "{err}");
        assert!(!Path::new("/").join(&marker).exists(), "nothing sprayed into /");
    }
}

/// When a `kill -9` lands in an in-place restore.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// This long after the start (during the safety snapshot, or the restore into staging).
    After(u64),
    /// As soon as the staging directory exists.
    Staging,
    /// As soon as the safety snapshot has written a pack.
    SafetyPack,
    /// At the `n`-th `renameat2` (1: the probe of the file system, 2: the exchange, 3: renaming
    /// the old tree to `.bak`), through strace, before the call happens.
    Rename(u32),
}

fn killed_restore(repo: &Path, target: &Path, moment: Moment) {
    let args = ["--quiet", "restore", "latest", "--in-place", "--delete", "--target"];
    let mut command = cairn(repo);
    command.args(args).arg(target);
    if let Moment::Rename(n) = moment {
        assert!(
            Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()),
            "this test needs strace (apt-get install strace)"
        );
        let mut traced = Command::new("strace");
        traced.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=renameat2", "-e"]);
        traced.arg(format!("inject=renameat2:error=EIO:signal=KILL:when={n}"));
        traced.arg(command.get_program()).args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => traced.env(key, value),
                None => traced.env_remove(key),
            };
        }
        let out = run(&mut traced);
        assert!(!out.status.success(), "killed at renameat2 #{n}");
        return;
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    match moment {
        Moment::After(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Moment::SafetyPack => {
            let before = pack_count(repo);
            while pack_count(repo) == before && child.try_wait().unwrap().is_none() {
                assert!(started.elapsed() < Duration::from_secs(60));
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        _ => {
            while beside(target).0.is_empty() && child.try_wait().unwrap().is_none() {
                assert!(started.elapsed() < Duration::from_secs(60));
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    child.kill().ok();
    child.wait().unwrap();
}

#[test]
fn kill_9_at_any_moment_leaves_the_old_tree_or_the_new_one_with_the_old_beside_it() {
    let scratch = Scratch::new("inplace-kill");
    let sizes = Sizes { old_big: 24 << 20, new_big: 24 << 20 };
    let (repo, source, _) = setup(&scratch, sizes);
    let pristine = scratch.join("pristine");
    build_old(&pristine, sizes);
    let (old, new) = (digest(&pristine), digest(&source));
    // The first safety snapshot writes packs; later ones find the same old tree stored.
    let moments = [
        Moment::SafetyPack,
        Moment::After(30),
        Moment::Staging,
        Moment::Rename(2),
        Moment::Rename(3),
        Moment::Rename(1),
        Moment::After(150),
        Moment::After(900),
    ];
    let mut seen = Vec::new();
    for (round, moment) in moments.into_iter().enumerate() {
        let target = scratch.join(format!("target-{round}"));
        build_old(&target, sizes);
        killed_restore(&repo, &target, moment);
        let now = digest(&target);
        let (staging, baks) = beside(&target);
        let state = if now == old {
            // Not swapped: whatever staging directory is left holds no old tree.
            assert!(baks.is_empty(), "round {round}: {baks:?}");
            "old"
        } else {
            assert!(now == new, "round {round} ({moment:?}): the target is neither the old tree nor the new one");
            // Swapped: the old tree is at .bak, or (killed between the two renames) still under
            // the staging name, which the next restore turns into the .bak.
            let holders: Vec<&PathBuf> = baks.iter().chain(&staging).collect();
            assert_eq!(holders.len(), 1, "round {round}: {holders:?}");
            assert_eq!(digest(holders[0]), old, "round {round}: the old tree is kept whole");
            if baks.is_empty() {
                "new, old under the staging name"
            } else {
                "new, old at .bak"
            }
        };
        seen.push(format!("round {round} {moment:?}: {state}, {} staging dirs", staging.len()));

        // The next restore finishes the job and cleans up what the killed one left.
        let out = ok(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--target"]).arg(&target));
        assert_eq!(digest(&target), new, "round {round}: {out}");
        let (staging, baks) = beside(&target);
        assert!(staging.is_empty(), "round {round}: staging left: {staging:?}");
        assert!(baks.iter().any(|b| digest(b) == old), "round {round}: the old tree is kept at a .bak: {baks:?}");
    }
    eprintln!("{}", seen.join("\n"));
    assert!(seen[0].contains(": old,"), "killed in the safety snapshot: {seen:?}");
    assert!(seen[3].contains(": old,"), "killed at the exchange: old tree stays: {seen:?}");
    assert!(seen[4].contains("old under the staging name"), "killed between the renames: {seen:?}");
    assert!(seen[5].contains(": old,"), "killed at the probe of the file system: {seen:?}");
    ok(cairn(&repo).args(["check", "--read-data"]));
}

/// `root/d/d/.../d` (`depth` directories below `root`); returns the deepest.
fn chain(root: &Path, depth: usize) -> PathBuf {
    let deepest = (0..depth).fold(root.to_path_buf(), |path, _| path.join("d"));
    fs::create_dir_all(&deepest).unwrap();
    deepest
}

#[test]
fn a_deep_target_is_walked_without_recursion_and_one_too_deep_is_refused_unchanged() {
    let scratch = Scratch::new("inplace-deep");
    let (repo, source, target) = (scratch.join("repo"), scratch.join("src"), scratch.join("target"));
    init(&repo);
    // 350 levels: the snapshot's chain ends in a file; the target's in an older one, and it has
    // a chain of 300 of its own that the snapshot lacks (kept by a plain in-place restore, so
    // carried into the new tree level by level; listed level by level by --delete).
    fs::write(chain(&source, 350).join("leaf"), b"new leaf").unwrap();
    ok(cairn(&repo).args(["snapshot", "--source", "deep"]).arg(&source));
    fs::write(chain(&target, 350).join("leaf"), b"old leaf").unwrap();
    fs::write(chain(&target.join("extra"), 300).join("kept"), b"only in the target").unwrap();
    let report = json(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&target));
    assert_eq!(report["how"], "in-place", "{report}");
    assert_eq!(fs::read(chain(&target, 350).join("leaf")).unwrap(), b"new leaf");
    assert_eq!(fs::read(chain(&target.join("extra"), 300).join("kept")).unwrap(), b"only in the target");
    let dry =
        json(cairn(&repo).args(["restore", "latest", "--in-place", "--delete", "--dry-run", "--target"]).arg(&target));
    let deleted = dry["plan"]["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 302, "extra, its 300 levels and the file at the bottom: {dry}");
    assert_eq!(deleted[0], "extra");
    assert!(deleted[301].as_str().unwrap().ends_with("/d/kept"));

    // Past MAX_LEVELS (400) in the target, the staging tree cannot be built: refused, unchanged.
    let (deeper, too_deep) = (scratch.join("deeper"), scratch.join("too-deep"));
    fs::write(chain(&deeper, 420).join("leaf"), b"new").unwrap();
    ok(cairn(&repo).args(["snapshot", "--source", "deeper"]).arg(&deeper));
    fs::write(chain(&too_deep, 420).join("leaf"), b"old").unwrap();
    let out =
        run(cairn(&repo).args(["restore", "latest", "--source", "deeper", "--in-place", "--target"]).arg(&too_deep));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("directory levels deep in the target"), "{stderr}");
    assert_eq!(fs::read(chain(&too_deep, 420).join("leaf")).unwrap(), b"old");
    assert_eq!(beside(&too_deep), (vec![], vec![]), "no staging directory, no .bak");
}
