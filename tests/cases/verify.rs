//! check, drill, status and the audit log.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

/// Checks every file of `expected` against `restored`, except paths at or below `skip`.
fn assert_unaffected_restored(expected: &Path, restored: &Path, skip: &BTreeSet<String>, prefix: &str) {
    for entry in fs::read_dir(expected).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}/{name}");
        if skip.contains(&path) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            assert_unaffected_restored(&entry.path(), &restored.join(&name), skip, &path);
        } else {
            let got = fs::read(restored.join(&name)).unwrap_or_else(|e| panic!("{path} not restored: {e}"));
            assert!(got == fs::read(entry.path()).unwrap(), "{path} restored wrong");
        }
    }
}

#[test]
fn check_read_data_finds_fifty_flipped_bytes_and_names_what_they_hit() {
    let scratch = Scratch::new("flips");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    init(&repo);
    // Three snapshots of a changing tree; keep a copy of each state to compare restores with.
    let mut states = Vec::new();
    for round in 0..3u64 {
        for i in 0..12u64 {
            let dir = source.join(format!("d{}", i % 3));
            fs::create_dir_all(&dir).unwrap();
            let len = 200_000 + ((i * 7 + round * 13) % 5) * 700_000;
            write_noise_file(&dir.join(format!("f{i}-{}", (i + round) % 4)), len, i * 100 + round);
        }
        let id = json(cairn(&repo).arg("snapshot").arg(&source))["id"].as_str().unwrap().to_string();
        let copy = scratch.join(format!("state-{round}"));
        assert!(std::process::Command::new("cp").arg("-a").arg(&source).arg(&copy).status().unwrap().success());
        states.push((id, copy));
    }
    ok(cairn(&repo).args(["check", "--read-data"]));

    // 50 flips at distinct places, spread by size over every other pack, so that the report can
    // be held to naming exactly the damaged packs.
    let all: Vec<(PathBuf, u64)> = packs_by_size(&repo).into_iter().step_by(2).collect();
    assert!(packs_by_size(&repo).len() >= 4, "enough packs to leave some intact");
    let total: u64 = all.iter().map(|(_, len)| len).sum();
    let mut places = BTreeSet::new();
    let mut seed = 0x1234_5678_9abc_def1u64;
    while places.len() < 50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut at = seed % total;
        let (pack, _) = all
            .iter()
            .find(|(_, len)| {
                if at < *len {
                    true
                } else {
                    at -= len;
                    false
                }
            })
            .unwrap();
        places.insert((pack.clone(), at));
    }
    for (pack, at) in &places {
        flip_byte(pack, *at, 0x5a);
    }
    let flipped: BTreeSet<String> =
        places.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();

    let out = run(cairn(&repo).args(["check", "--read-data", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged: BTreeSet<String> =
        report["damaged_packs"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    assert_eq!(damaged, flipped, "every flipped pack, and only those, is reported");
    let affected = report["affected"].as_array().unwrap();
    assert!(!affected.is_empty());
    eprintln!(
        "{} flips in {} packs: {} errors, {} affected paths",
        places.len(),
        flipped.len(),
        report["errors"].as_array().unwrap().len(),
        affected.len()
    );

    // Every affected path is named per snapshot; everything else still restores exactly.
    for (id, state) in &states {
        let skip: BTreeSet<String> = affected
            .iter()
            .filter(|a| id.starts_with(a["snapshot"].as_str().unwrap()))
            .map(|a| a["path"].as_str().unwrap().to_string())
            .collect();
        let target = scratch.join(format!("restore-{}", &id[..8]));
        let restore = run(cairn(&repo).args(["--quiet", "restore", id, "--target"]).arg(&target));
        assert_eq!(restore.status.success(), skip.is_empty());
        if !skip.contains("/") {
            assert_unaffected_restored(state, &target, &skip, "");
        }
    }
}

fn small_repo(scratch: &Scratch) -> PathBuf {
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("sub")).unwrap();
    write_noise_file(&source.join("sub/big"), 3 << 20, 5);
    fs::write(source.join("small"), "text ".repeat(1000)).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    ok(cairn(&repo).arg("check"));
    repo
}

fn check_fails_with(repo: &Path, needle: &str) {
    let out = run(cairn(repo).arg("check"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

#[test]
fn structural_check_finds_truncated_and_missing_files_and_bad_trees() {
    let scratch = Scratch::new("structure");
    let repo = small_repo(&scratch);
    // Truncated data pack.
    let (data_pack, len) = packs_by_size(&repo).last().cloned().unwrap();
    let original = fs::read(&data_pack).unwrap();
    fs::write(&data_pack, &original[..len as usize - 100]).unwrap();
    check_fails_with(&repo, "truncated or overwritten");
    check_fails_with(&repo, "/sub/big");
    // Deleted pack.
    fs::remove_file(&data_pack).unwrap();
    check_fails_with(&repo, "is missing");
    fs::write(&data_pack, &original).unwrap();
    ok(cairn(&repo).arg("check"));
    // Deleted index file.
    let index = fs::read_dir(repo.join("index")).unwrap().next().unwrap().unwrap().path();
    let index_bytes = fs::read(&index).unwrap();
    fs::remove_file(&index).unwrap();
    check_fails_with(&repo, "not in the index");
    fs::write(&index, &index_bytes).unwrap();
    // A corrupt tree blob (the tree pack is the small one).
    let (tree_pack, _) = packs_by_size(&repo).first().cloned().unwrap();
    flip_byte(&tree_pack, 20, 0x5a);
    check_fails_with(&repo, "directory listing unreadable");
}

/// `check --read-data` reads its first packs before it holds its lock (while the key is derived):
/// packs read before that come anywhere in its order are verified once and not read again, and
/// the buffer of one deleted since (by a prune that held the lock) serves the others.
#[test]
fn check_verifies_packs_read_before_it_was_locked() {
    use cairn::check::{check, Prefetched, Subset};
    use cairn::progress::Progress;
    use cairn::repository::Repository;
    let scratch = Scratch::new("prefetch");
    let repo = scratch.join("repo");
    init(&repo);
    for seed in 0..6 {
        let source = scratch.join(format!("src{seed}"));
        fs::create_dir_all(&source).unwrap();
        write_noise_file(&source.join("file"), 200 << 10, seed);
        ok(cairn(&repo).arg("snapshot").arg(&source));
    }
    let location = repo.to_string_lossy();
    let opened = Repository::open(
        &cairn::repository::Location::parse(&location),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    let mut packs: Vec<_> = opened.list_packs().unwrap().0.into_keys().collect();
    packs.sort_unstable();
    assert!(packs.len() >= 6, "{} packs", packs.len());
    let backend = cairn::repository::Location::parse(&location).backend().unwrap();
    let quiet = Progress::new("check", true);
    // The first packs of one part come later in the whole.
    for part in [Subset::Part { n: 2, m: 2 }, Subset::All] {
        let report = check(&opened, Some(Subset::All), Prefetched::read(&*backend, part), &quiet).result.unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(report.packs_read, packs.len() as u64);
    }
    let prefetched = Prefetched::read(&*backend, Subset::All);
    fs::remove_file(repo.join(cairn::repository::FileKind::Pack.name(&packs[0]))).unwrap();
    let report = check(&opened, Some(Subset::All), prefetched, &quiet).result.unwrap();
    assert_eq!(report.packs_read, packs.len() as u64 - 1);
    assert!(report.errors.iter().any(|e| e.contains("is missing")), "{:?}", report.errors);
}

/// A pack no index names (left by a killed snapshot) is only a warning, even damaged: nothing is
/// restored from it, and prune removes it. The indexed packs still count in full.
#[test]
fn read_data_only_warns_about_a_damaged_leftover_pack() {
    let scratch = Scratch::new("leftover");
    let repo = small_repo(&scratch);
    let (pack, _) = packs_by_size(&repo).pop().unwrap();
    let name = "ab".repeat(32);
    let leftover = repo.join("packs").join(&name[..2]).join(&name);
    fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    fs::copy(&pack, &leftover).unwrap(); // a copy under another name: its bytes do not match it
    let out = run(cairn(&repo).args(["check", "--read-data", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("not in any index") && warnings.contains("does not match its id"), "{warnings}");
    // A damaged blob in the leftover copy is a warning too: the index takes it from the original.
    flip_byte(&leftover, 3000, 0x5a);
    let out = run(cairn(&repo).args(["check", "--read-data", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("the index takes it from another copy"), "{warnings}");
    // Damage to an indexed pack is still an error.
    flip_byte(&pack, 3000, 0x5a);
    let out = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/sub/big"));
}

#[test]
fn drill_passes_on_a_healthy_repository_and_names_damage() {
    let scratch = Scratch::new("drill");
    let (source, repo, drills) = (scratch.join("src"), scratch.join("repo"), scratch.join("drills"));
    fs::create_dir_all(source.join("db")).unwrap();
    write_noise_file(&source.join("payload"), 2 << 20, 8);
    fs::write(source.join("notes.txt"), b"notes").unwrap();
    let db = rusqlite::Connection::open(source.join("db/app.sqlite")).unwrap();
    // A live WAL database of many pages: captured one chunk per page, which the drill must verify.
    db.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);").unwrap();
    for i in 0..3000 {
        db.execute("INSERT INTO t VALUES (?1)", [format!("row {i} {}", "text ".repeat(20))]).unwrap();
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source).args(["--source", "app"]));
    drop(db);

    // An existing scratch parent (one the drill creates is removed again: restore_safety.rs).
    fs::create_dir(&drills).unwrap();
    let report = json(cairn(&repo).args(["drill", "--source", "app", "--scratch"]).arg(&drills));
    assert_eq!(report["checks_failed"], 0, "{report}");
    assert_eq!(report["checks_passed"], 4, "payload, notes.txt, db/ and db/app.sqlite");
    assert_eq!(report["databases"][0]["path"], "/db/app.sqlite");
    assert_eq!(report["databases"][0]["result"], "ok");
    assert!(fs::read_dir(&drills).unwrap().next().is_none(), "scratch removed");
    let status = json(cairn(&repo).args(["status", "--max-drill-age", "1h"]));
    assert!(status["sources"][0]["last_drill_ok"].is_object(), "{status}");

    // Damage a chunk of the payload: the drill fails, names the file, and cleans up.
    let (pack, _) = packs_by_size(&repo).into_iter().max_by_key(|(_, len)| *len).unwrap();
    flip_byte(&pack, 100_000, 0x5a);
    let out = run(cairn(&repo).args(["drill", "--scratch"]).arg(&drills));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/payload"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
    assert!(fs::read_dir(&drills).unwrap().next().is_none(), "scratch removed after a failed drill");
    // status reports the failed drill.
    let out = run(cairn(&repo).arg("status"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("last drill failed"));
}

#[test]
fn status_goes_stale_with_the_clock() {
    let scratch = Scratch::new("status");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"x").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source).args(["--source", "svc"]));
    let fresh = run(cairn(&repo).args(["status", "--max-age", "1h"]));
    assert_eq!(fresh.status.code(), Some(0));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let later = run(cairn(&repo).args(["status", "--max-age", "1h"]).env("CAIRN_NOW", (now + 3601 + 60).to_string()));
    assert_eq!(later.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&later.stdout).contains("newest snapshot is"));
    // The Prometheus file says the same.
    let prom = scratch.join("cairn.prom");
    let _ = run(cairn(&repo)
        .args(["status", "--max-age", "1h", "--prometheus"])
        .arg(&prom)
        .env("CAIRN_NOW", (now + 7200).to_string()));
    let text = fs::read_to_string(&prom).unwrap();
    assert!(text.contains("cairn_source_healthy{source=\"svc\"} 0"), "{text}");
    assert!(text.contains("cairn_healthy 0"), "{text}");
    // A failed snapshot run makes the source fail until a snapshot succeeds again.
    let failed = run(cairn(&repo).arg("snapshot").arg(scratch.join("gone")).args(["--source", "svc"]));
    assert_eq!(failed.status.code(), Some(1));
    let out = run(cairn(&repo).arg("status"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("last snapshot failed"));
    ok(cairn(&repo).arg("snapshot").arg(&source).args(["--source", "svc"]));
    ok(cairn(&repo).arg("status"));
}

#[test]
fn restore_skip_identical_writes_only_what_differs() {
    let scratch = Scratch::new("skip");
    let (source, repo, target) = (scratch.join("src"), scratch.join("repo"), scratch.join("out"));
    crate::roundtrip::build_special_tree(&source);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    fs::write(target.join("dir/small.txt"), b"edited locally").unwrap();
    let report = json(cairn(&repo).args(["restore", "latest", "--skip-identical", "--target"]).arg(&target));
    let summary = &report["summary"];
    // Rewritten: the edited file, and both names of the hard link (a file with other names is
    // never kept: they could be anywhere; the second name is linked to the new file again).
    assert_eq!(summary["files"].as_u64().unwrap() - summary["files_unchanged"].as_u64().unwrap(), 3, "{summary}");
    assert_same_tree(&source, &target);
}
