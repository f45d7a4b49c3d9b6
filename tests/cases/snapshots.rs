//! Incremental behaviour, dedup, bounded memory, exclusions and incomplete snapshots.

use std::fs;

use crate::support::*;

#[test]
fn unchanged_tree_writes_no_pack_and_reads_no_file() {
    let scratch = Scratch::new("unchanged");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    crate::roundtrip::build_special_tree(&source);
    init(&repo);
    let first = json(cairn(&repo).arg("snapshot").arg(&source));
    assert!(first["summary"]["files_read"].as_u64().unwrap() > 5, "{first}");
    let packs = pack_count(&repo);
    let second = json(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(second["summary"]["files_read"], 0, "{second}");
    assert_eq!(second["summary"]["blobs_added"], 0, "{second}");
    assert_eq!(second["packs_written"], 0, "{second}");
    assert_eq!(pack_count(&repo), packs);
    assert_eq!(second["summary"]["files"], first["summary"]["files"]);

    // Touching one file makes exactly that file be read again.
    fs::write(source.join("dir/small.txt"), b"changed\n").unwrap();
    let third = json(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(third["summary"]["files_read"], 1, "{third}");
}

#[test]
fn one_byte_inserted_at_the_start_stores_at_most_three_chunks() {
    let scratch = Scratch::new("insert");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir(&source).unwrap();
    let data = noise(64 << 20, 42);
    fs::write(source.join("big"), &data).unwrap();
    init(&repo);
    let first = json(cairn(&repo).arg("snapshot").arg(&source));
    let chunks = first["summary"]["blobs_added"].as_u64().unwrap() - 1; // one tree blob
    assert!(chunks >= 30, "64 MiB at 1 MiB average: {chunks} chunks");

    let mut shifted = vec![0xA5u8];
    shifted.extend_from_slice(&data);
    fs::write(source.join("big"), &shifted).unwrap();
    let second = json(cairn(&repo).arg("snapshot").arg(&source));
    // The directory's tree blob changes too; everything else is file content.
    let new_chunks = second["summary"]["blobs_added"].as_u64().unwrap() - 1;
    eprintln!("one-byte insert into 64 MiB: {new_chunks} new chunks of {chunks}");
    assert!(new_chunks <= 3, "{second}");
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert!(fs::read(target.join("big")).unwrap() == shifted);
}

#[test]
fn two_gib_file_snapshots_in_bounded_memory() {
    let scratch = Scratch::new("rss");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir(&source).unwrap();
    write_noise_file(&source.join("huge"), 2 << 30, 3);
    init(&repo);
    let (code, rss) = run_measuring_rss(cairn(&repo).args(["--quiet", "snapshot"]).arg(&source));
    eprintln!("peak RSS snapshotting a 2 GiB file: {} MiB", rss >> 20);
    assert_eq!(code, 0);
    assert!(rss < 256 << 20, "peak RSS {} MiB", rss >> 20);
    // The stored data really is all there: restore and compare sizes and a sample.
    fs::remove_file(source.join("huge")).unwrap();
    let listing = ok(cairn(&repo).args(["ls", "--json", "latest", "huge"]));
    let entry: serde_json::Value = serde_json::from_str(listing.lines().next().unwrap()).unwrap();
    assert_eq!(entry["size"], 2u64 << 30);
}

#[test]
fn excludes_leave_out_matching_entries() {
    let scratch = Scratch::new("exclude");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("restored"));
    fs::create_dir_all(source.join("app/cache")).unwrap();
    fs::write(source.join("app/cache/blob"), b"c").unwrap();
    fs::write(source.join("app/data.db"), b"d").unwrap();
    fs::write(source.join("app/debug.log"), b"l").unwrap();
    init(&repo);
    ok(cairn(&repo)
        .arg("snapshot")
        .arg(&source)
        .args(["--exclude", "*.log", "--exclude"])
        .arg(source.join("app/cache")));
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert!(target.join("app/data.db").exists());
    assert!(!target.join("app/debug.log").exists());
    assert!(!target.join("app/cache").exists());
}

#[test]
fn repository_inside_the_source_is_skipped() {
    let scratch = Scratch::new("inside");
    let source = scratch.join("src");
    let repo = source.join("backup-repo");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"x").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let listing = ok(cairn(&repo).args(["ls", "latest"]));
    assert_eq!(listing.trim(), "/f");
}

#[test]
fn unreadable_file_makes_an_incomplete_snapshot() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("unreadable");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("sub")).unwrap();
    fs::write(source.join("readable"), b"ok").unwrap();
    fs::write(source.join("sub/locked"), b"secret").unwrap();
    fs::set_permissions(source.join("sub/locked"), fs::Permissions::from_mode(0o000)).unwrap();
    init(&repo);
    open_up(scratch.path());
    let _ = std::process::Command::new("chmod").arg("-R").arg("a+rwX").arg(&repo).status();
    let out = run(as_unprivileged(&repo).arg("snapshot").arg(&source));
    assert_eq!(out.status.code(), Some(3), "incomplete snapshots exit 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sub/locked") && stderr.contains("incomplete"), "{stderr}");
    let list = json(cairn(&repo).arg("snapshots"));
    let snapshot = &list[0];
    assert_eq!(snapshot["complete"], false);
    assert!(snapshot["errors"][0]["path"].as_str().unwrap().ends_with("sub/locked"));
    let table = ok(cairn(&repo).arg("snapshots"));
    assert!(table.contains("incomplete(1)"), "{table}");
    // What could be read was stored.
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(fs::read(target.join("readable")).unwrap(), b"ok");
}

/// The README's `ls latest /var/lib/registry`: a snapshot of one directory holds its contents at
/// the root, and the directory's own path still names them, for `ls` and `restore --include`;
/// the listing reads as a table whatever the host, tags and status, and counts agree with nouns.
#[test]
fn a_source_path_names_what_a_snapshot_of_it_holds_and_the_listing_reads_well() {
    let scratch = Scratch::new("source-path");
    let (source, repo) = (scratch.join("registry"), scratch.join("repo"));
    fs::create_dir_all(source.join("v2/blobs")).unwrap();
    fs::write(source.join("v2/blobs/layer"), b"layer").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source).args(["--tag", "nightly", "--tag", "a-rather-long-tag-name"]));
    let path = source.display().to_string();
    assert_eq!(ok(cairn(&repo).args(["ls", "latest", &path])).lines().last(), Some(&*format!("{path}/v2/blobs/layer")));
    assert!(ok(cairn(&repo).args(["ls", "latest", &format!("{path}/v2/blobs/layer"), "-l"])).contains("5 B"));
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--include", &format!("{path}/v2")]).arg("--target").arg(&target));
    assert_eq!(fs::read(target.join("v2/blobs/layer")).unwrap(), b"layer");
    let (code, err) = {
        let out = run(cairn(&repo).args(["ls", "latest", &format!("{path}/nope")]));
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("has no path \"{path}/nope\"")), "{err}");

    // Another host, an incomplete status: every column stays in line with its header.
    ok(cairn(&repo).arg("snapshot").arg(&source).args(["--host", "a-host-name-longer-than-twelve"]));
    let listing = ok(cairn(&repo).arg("snapshots"));
    let lines: Vec<&str> = listing.lines().collect();
    let column = |line: &str, word: &str| line.find(word).unwrap();
    for (header, cell) in [("status", "ok"), ("tags", "nightly"), ("paths", &*path)] {
        assert_eq!(column(lines[0], header), column(lines[1], cell), "{listing}");
    }
    assert_eq!(column(lines[0], "paths"), column(lines[2], &path), "{listing}");
    assert!(lines[3].starts_with("2 snapshots;"), "{listing}");
    let one = ok(cairn(&repo).args(["snapshots", "--host", "a-host-name-longer-than-twelve"]));
    assert!(one.lines().last().unwrap().starts_with("1 of 2 snapshots match"), "{one}");
    let saved = ok(cairn(&repo).arg("snapshot").arg(&source));
    assert!(saved.contains(": 1 file (0 SQLite databases), 2 dirs,"), "{saved}");
}
