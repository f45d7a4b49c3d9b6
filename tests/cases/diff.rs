//! Looking inside snapshots without restoring them: `cairn diff A B` (every kind of change, and
//! only the directories that changed read) and `cairn find PATTERN`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::support::*;

#[test]
fn diff_names_every_change_and_reads_only_what_changed() {
    let scratch = Scratch::new("diff");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    // A large part that never changes: 40 directories of 5 files.
    for d in 0..40 {
        for f in 0..5 {
            let path = tree.join(format!("still/d{d:02}/f{f}"));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("{d} {f}")).unwrap();
        }
    }
    fs::create_dir_all(tree.join("app/old-dir/deep")).unwrap();
    fs::write(tree.join("app/old-dir/deep/gone.txt"), b"gone").unwrap();
    fs::write(tree.join("app/edited.txt"), b"version one").unwrap();
    fs::write(tree.join("app/chmodded.sh"), b"#!/bin/sh\n").unwrap();
    fs::write(tree.join("app/becomes-dir"), b"a file first").unwrap();
    fs::write(tree.join("app/removed.bin"), noise(5000, 1)).unwrap();
    for path in ["app/edited.txt", "app/chmodded.sh", "app/becomes-dir", "app/removed.bin"] {
        set_mtime(&tree.join(path), 1_700_000_000, 0);
    }
    init(&repo);
    let first = json(cairn(&repo).args(["snapshot"]).arg(&tree))["id"].as_str().unwrap().to_string();

    fs::remove_dir_all(tree.join("app/old-dir")).unwrap();
    fs::write(tree.join("app/edited.txt"), b"version two, longer").unwrap();
    set_mtime(&tree.join("app/edited.txt"), 1_700_000_000, 0);
    fs::set_permissions(tree.join("app/chmodded.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(tree.join("app/becomes-dir")).unwrap();
    fs::create_dir(tree.join("app/becomes-dir")).unwrap();
    fs::remove_file(tree.join("app/removed.bin")).unwrap();
    fs::create_dir_all(tree.join("app/new-dir")).unwrap();
    fs::write(tree.join("app/new-dir/added.txt"), b"added").unwrap();
    let second = json(cairn(&repo).args(["snapshot"]).arg(&tree))["id"].as_str().unwrap().to_string();

    let out = json(cairn(&repo).args(["diff", &first[..8], &second]));
    let changes: Vec<(String, String, String)> = out["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().into(),
                c["path"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("type", "/app/becomes-dir", "dir"),
        ("metadata", "/app/chmodded.sh", "file"),
        ("modified", "/app/edited.txt", "file"),
        ("added", "/app/new-dir", "dir"),
        ("added", "/app/new-dir/added.txt", "file"),
        ("removed", "/app/old-dir", "dir"),
        ("removed", "/app/old-dir/deep", "dir"),
        ("removed", "/app/old-dir/deep/gone.txt", "file"),
        ("removed", "/app/removed.bin", "file"),
    ]
    .iter()
    .map(|(c, p, t)| (c.to_string(), p.to_string(), t.to_string()))
    .collect();
    assert_eq!(changes, expected, "{out}");
    let edited = &out["changes"][2];
    assert_eq!((edited["size_before"].as_u64(), edited["size_after"].as_u64()), (Some(11), Some(19)));
    let summary = &out["summary"];
    assert_eq!(summary["bytes_added"], 19 + 5);
    assert_eq!(summary["bytes_removed"], 4 + 5000 + 11 + 12);
    // The two roots, `app` on both sides, and the four directories on one side only
    // (old-dir, old-dir/deep, new-dir, becomes-dir): never any of `still/`'s 41.
    assert_eq!(summary["trees_read"], 8, "{summary}");

    // As text: restic's marks, a line each, then the counts.
    let text = ok(cairn(&repo).args(["diff", &first, &second]));
    assert!(text.contains("M    /app/edited.txt (11 B -> 19 B)"), "{text}");
    assert!(text.contains("+    /app/new-dir/\n"), "{text}");
    assert!(text.contains("-    /app/removed.bin (4.9 KiB)"), "{text}");
    assert!(text.contains("2 added, 4 removed, 1 modified, 1 changed type, 1 metadata only"), "{text}");

    // The same snapshot twice: nothing, and nothing read.
    let same: Value = json(cairn(&repo).args(["diff", &second, "latest"]));
    assert_eq!((same["changes"].as_array().map(Vec::len), same["summary"]["trees_read"].as_u64()), (Some(0), Some(0)));
    // A snapshot that is not there is an error that names it.
    let missing = run(cairn(&repo).args(["diff", &first, "deadbeef"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("deadbeef"));
}

#[test]
fn find_names_the_snapshots_that_hold_a_match_newest_first() {
    let scratch = Scratch::new("find");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    fs::create_dir_all(tree.join("config")).unwrap();
    fs::write(tree.join("config/a.toml"), b"a = 1").unwrap();
    fs::write(tree.join("app.db"), b"first").unwrap();
    init(&repo);
    let snapshot = |source: &str| {
        json(cairn(&repo).args(["snapshot", "--source", source]).arg(&tree))["id"].as_str().unwrap().to_string()
    };
    let first = snapshot("app");
    fs::remove_file(tree.join("config/a.toml")).unwrap();
    fs::write(tree.join("app.db"), b"second, longer").unwrap();
    let second = snapshot("app");
    let third = snapshot("app"); // nothing changed: the same root tree, walked once
    let other = snapshot("other");

    let found = |args: &[&str]| -> Vec<(String, Vec<String>)> {
        let out = json(cairn(&repo).arg("find").args(args));
        out.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let paths = s["matches"].as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap().to_string());
                (s["snapshot"].as_str().unwrap().to_string(), paths.collect())
            })
            .collect()
    };
    let db = vec!["/app.db".to_string()];
    assert_eq!(
        found(&["app.db"]),
        vec![
            (other.clone(), db.clone()),
            (third.clone(), db.clone()),
            (second.clone(), db.clone()),
            (first.clone(), db.clone())
        ]
    );
    assert_eq!(found(&["*.toml"]), vec![(first.clone(), vec!["/config/a.toml".to_string()])]);
    assert_eq!(found(&["/config/*"]), vec![(first.clone(), vec!["/config/a.toml".to_string()])]);
    // `*` stays within a name: `/a*` is `/app.db`, not `/config/a.toml`.
    assert_eq!(found(&["/a*"]), found(&["app.db"]));
    assert_eq!(found(&["app.db", "--source", "app"]).len(), 3);
    assert_eq!(found(&["nothing-*"]), vec![]);
    let out = json(cairn(&repo).args(["find", "app.db", "--source", "app"]));
    assert_eq!(out[0]["matches"][0]["size"], 14);
    assert_eq!(out[0]["matches"][0]["type"], "file");
    let text = ok(cairn(&repo).args(["find", "*.toml"]));
    assert!(text.contains("/config/a.toml") && text.contains("1 snapshot of 4 hold a match"), "{text}");
}

#[test]
fn dump_writes_a_file_of_a_snapshot_byte_for_byte() {
    let scratch = Scratch::new("dump");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    fs::create_dir_all(tree.join("data")).unwrap();
    let content = noise(3 << 20, 9);
    fs::write(tree.join("data/big.bin"), &content).unwrap();
    fs::write(tree.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("data/big.bin", tree.join("link")).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&tree));
    let out = run(cairn(&repo).args(["dump", "latest", "/data/big.bin"]));
    assert!(out.status.success());
    assert!(out.stdout == content, "the dumped file differs ({} bytes)", out.stdout.len());
    // The path as the snapshot's source names it works too, as with `ls`.
    let whole = tree.join("data/big.bin");
    let out = run(cairn(&repo).args(["dump", "latest"]).arg(&whole));
    assert!(out.stdout == content);
    assert!(run(cairn(&repo).args(["dump", "latest", "/empty"])).stdout.is_empty());
    for (path, says) in [("/data", "is a dir, not a file"), ("/link", "is a symlink"), ("/nope", "nope")] {
        let out = run(cairn(&repo).args(["dump", "latest", path]));
        assert!(!out.status.success() && out.stdout.is_empty(), "{path}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dump_as_tar_is_read_back_by_tar_as_the_source() {
    let scratch = Scratch::new("dump-tar");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    let long = "a-name-longer-than-a-ustar-header-holds-".repeat(3);
    let deep = tree.join(format!("dir/{long}/sub"));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join(format!("{long}.bin")), noise(200_000, 3)).unwrap();
    fs::write(tree.join("dir/empty"), b"").unwrap();
    fs::write(tree.join("dir/grüße.txt"), b"non-ASCII name").unwrap();
    fs::write(tree.join("top.txt"), b"top").unwrap();
    fs::set_permissions(tree.join("top.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(format!("dir/{long}/sub/{long}.bin"), tree.join("link")).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&tree));

    // The whole snapshot, extracted by tar, is the source.
    let extracted = dump_and_extract(&repo, scratch.path(), &[]);
    // Everything below the root (whose own entry is not in the archive): types, modes, times
    // to the nanosecond, owners, link targets and content.
    assert_same_tree(&tree, &extracted);
    // A directory of it, under its own name.
    let out = run(cairn(&repo).args(["dump", "latest", "/dir", "--archive", "tar"]));
    let listed = std::process::Command::new("tar")
        .args(["-tf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&out.stdout)?;
            child.wait_with_output()
        })
        .unwrap();
    let names = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(names.lines().all(|n| n.starts_with("dir/")), "{names}");
    assert!(names.contains("dir/grüße.txt"), "{names}");
    let refused = run(cairn(&repo).args(["dump", "latest", "/top.txt", "--archive", "tar"]));
    assert!(!refused.status.success());
}

#[test]
fn a_live_database_is_diffed_found_and_dumped_as_its_consistent_image() {
    let scratch = Scratch::new("diff-sqlite");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("settings.json"), b"{}").unwrap();
    // A writer keeps the database open in WAL mode: what is stored is SQLite's consistent image.
    let db = crate::sqlite::wal_database(&tree.join("app.db"));
    db.execute("INSERT INTO a(body) VALUES ('first')", []).unwrap();
    init(&repo);
    let first = json(cairn(&repo).arg("snapshot").arg(&tree))["id"].as_str().unwrap().to_string();
    db.execute("INSERT INTO a(body) VALUES ('second')", []).unwrap();
    let second = json(cairn(&repo).arg("snapshot").arg(&tree))["id"].as_str().unwrap().to_string();

    let diff = json(cairn(&repo).args(["diff", &first, &second]));
    let changes: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap().into(), c["path"].as_str().unwrap().into()))
        .collect();
    assert_eq!(changes, [("modified".to_string(), "/app.db".to_string())], "{diff}");
    let found = json(cairn(&repo).args(["find", "*.db"]));
    assert_eq!(found.as_array().unwrap().len(), 2, "{found}");
    assert!(found.as_array().unwrap().iter().all(|s| s["matches"][0]["path"] == "/app.db"), "{found}");
    // The dumped file is a whole database holding both rows, whatever the WAL held.
    let dumped = run(cairn(&repo).args(["dump", "latest", "/app.db"]));
    assert!(dumped.status.success());
    fs::write(scratch.join("dumped.db"), &dumped.stdout).unwrap();
    let copy = rusqlite::Connection::open(scratch.join("dumped.db")).unwrap();
    let rows: i64 = copy.query_row("SELECT count(*) FROM a", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 2);
    let check: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(db);
}
