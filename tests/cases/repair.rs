//! A repository that lost an index file: nothing that deletes may run on it (prune, forget
//! --prune, sync --prune), check says how to recover, and `repair index` rebuilds the index from
//! the packs' own trailers. Nor may a forged index file make prune delete real data.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::format::index::IndexFile;
use cairn::format::pack::BlobKind;
use cairn::id::Id;
use cairn::repository::Repository;

use crate::support::*;

fn open(repo: &Path) -> Repository {
    Repository::open(
        &cairn::repository::Location::parse(&repo.to_string_lossy()),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap()
}

/// Rewrites the repository's index as one file naming the packs that hold trees and one naming
/// the packs of data alone (as a snapshot of many packs writes them); returns the data one.
fn split_index(repo: &Path) -> PathBuf {
    let opened = open(repo);
    let files = opened.read_all_named(cairn::repository::FileKind::Index, IndexFile::decode).unwrap();
    let packs: Vec<_> = files.iter().flat_map(|(_, file)| file.packs.clone()).collect();
    let (trees, data): (Vec<_>, Vec<_>) =
        packs.into_iter().partition(|p| p.blobs.iter().any(|b| b.kind == BlobKind::Tree));
    assert!(!trees.is_empty() && !data.is_empty());
    let mut written = Vec::new();
    for packs in [trees, data] {
        let bytes = opened.seal_file(IndexFile { packs }.encode());
        let key = format!("index/{}", Id::of(&bytes).to_hex());
        opened.backend().put(&key, &bytes).unwrap();
        written.push(key);
    }
    for (id, _) in files {
        fs::remove_file(repo.join(format!("index/{}", id.to_hex()))).unwrap();
    }
    repo.join(&written[1])
}

/// Every pack file with its length.
fn packs(repo: &Path) -> Vec<(PathBuf, u64)> {
    let mut packs = packs_by_size(repo);
    packs.sort();
    packs
}

fn source_tree(scratch: &Scratch) -> PathBuf {
    let source = scratch.join("src");
    fs::create_dir_all(source.join("d")).unwrap();
    for i in 0..4 {
        write_noise_file(&source.join(format!("d/f{i}")), 3_000_000, 70 + i);
    }
    fs::write(source.join("small"), b"small file").unwrap();
    source
}

fn stderr(command: &mut std::process::Command) -> (Option<i32>, String) {
    let out = run(command);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn nothing_deletes_while_an_index_file_is_missing_and_repair_index_rebuilds_it() {
    let scratch = Scratch::new("lost-index");
    let (source, repo, aside) = (source_tree(&scratch), scratch.join("repo"), scratch.join("aside"));
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let offsite = scratch.join("offsite");
    ok(cairn(&repo).arg("sync").arg("--to").arg(&offsite));
    let lost = split_index(&repo);
    ok(cairn(&repo).args(["check", "--read-data"]));
    fs::rename(&lost, &aside).unwrap();
    let before = packs(&repo);

    // check fails, points at repair and never at prune.
    for args in [&["check"][..], &["check", "--read-data"]] {
        let (code, err) = stderr(cairn(&repo).args(args));
        assert_eq!(code, Some(1), "{args:?}");
        assert!(err.contains("cairn repair index"), "{args:?}: {err}");
        assert!(!err.contains("prune removes"), "{args:?}: {err}");
    }
    // Nothing that deletes runs.
    for args in [&["prune"][..], &["prune", "--max-unused", "0"], &["forget", "--keep-last", "1", "--prune"]] {
        let (code, err) = stderr(cairn(&repo).args(args));
        assert_eq!(code, Some(1), "{args:?}");
        assert!(err.contains("nothing was deleted") && err.contains("cairn repair index"), "{args:?}: {err}");
        assert_eq!(packs(&repo), before, "{args:?} deleted nothing");
    }
    // Nor does a sync --prune into a destination in that state.
    ok(cairn(&offsite).args(["check", "--read-data"]));
    fs::rename(split_index(&offsite), scratch.join("offsite-aside")).unwrap();
    let offsite_packs = packs(&offsite);
    let (code, err) = stderr(cairn(&repo).arg("sync").arg("--to").arg(&offsite).args(["--prune", "--keep-last", "1"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("nothing was deleted") && err.contains("cairn repair index"), "{err}");
    assert_eq!(packs(&offsite), offsite_packs);

    // repair index: a dry run changes nothing, the real one makes the repository whole.
    let plan = json(cairn(&repo).args(["repair", "index", "--dry-run"]));
    assert_eq!(plan["plan"]["from_trailer"].as_array().unwrap().len(), before.len() - 1, "{plan}");
    assert!(fs::read_dir(repo.join("index")).unwrap().count() == 1);
    ok(cairn(&repo).args(["repair", "index"]));
    ok(cairn(&repo).args(["check", "--read-data"]));
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    // A second repair has nothing to do; prune now runs and keeps every pack.
    let again = json(cairn(&repo).args(["repair", "index"]));
    assert_eq!(again["report"]["index_files_written"], 0, "{again}");
    ok(cairn(&repo).arg("prune"));
    assert_eq!(packs(&repo), before);
    // The lost file coming back is harmless.
    fs::rename(&aside, &lost).unwrap();
    ok(cairn(&repo).args(["check", "--read-data"]));
}

#[test]
fn repair_index_drops_missing_packs_and_keeps_what_it_cannot_read() {
    let scratch = Scratch::new("repair-damage");
    let (source, repo) = (source_tree(&scratch), scratch.join("repo"));
    write_noise_file(&source.join("large"), 20_000_000, 99);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    // Two packs of data alone: one goes missing, the other's trailer is damaged.
    let opened = open(&repo);
    let files = opened.read_all_named(cairn::repository::FileKind::Index, IndexFile::decode).unwrap();
    let data: Vec<PathBuf> = files
        .iter()
        .flat_map(|(_, f)| &f.packs)
        .filter(|p| p.blobs.iter().all(|b| b.kind == BlobKind::Data))
        .map(|p| repo.join(cairn::repository::FileKind::Pack.name(&p.id)))
        .collect();
    assert!(data.len() >= 2, "{data:?}");
    let (missing, damaged) = (&data[0], &data[1]);
    fs::remove_file(missing).unwrap();
    // The last byte of a pack is in its trailer.
    flip_byte(damaged, fs::metadata(damaged).unwrap().len() - 1, 0x40);

    let plan = json(cairn(&repo).args(["repair", "index", "--read-all-packs", "--dry-run"]));
    let name = |path: &PathBuf| path.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(plan["plan"]["missing"], serde_json::json!([name(missing)]), "{plan}");
    assert_eq!(plan["plan"]["unreadable"][0]["pack"], name(damaged).as_str(), "{plan}");
    ok(cairn(&repo).args(["repair", "index", "--read-all-packs"]));
    // What is lost stays reported by check; the damaged pack keeps its entries, so its intact
    // blobs still restore; the missing pack is no longer named.
    let (code, err) = stderr(cairn(&repo).arg("check"));
    assert_eq!(code, Some(1));
    assert!(!err.contains("is missing"), "{err}");
    let damaged_pack = format!("pack {}: corrupt", &name(damaged)[..8]);
    assert!(err.contains("are in no index file") && err.contains(&damaged_pack), "{err}");
    let files = open(&repo).read_all_named(cairn::repository::FileKind::Index, IndexFile::decode).unwrap();
    let named: Vec<String> = files.iter().flat_map(|(_, f)| f.packs.iter().map(|p| p.id.to_hex())).collect();
    assert!(named.contains(&name(damaged)) && !named.contains(&name(missing)));
    // And prune refuses: files are lost, and deleting would only hide which.
    let (code, err) = stderr(cairn(&repo).arg("prune"));
    assert_eq!(code, Some(1));
    assert!(err.contains("nothing was deleted"), "{err}");
}

/// Errors `check` reports: a killed repair may leave blobs unindexed, but never more than before.
fn check_errors(repo: &Path) -> usize {
    let out = run(cairn(repo).args(["check", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["errors"].as_array().unwrap().len()
}

#[test]
fn repair_killed_at_any_point_loses_nothing_and_finishes_next_time() {
    let scratch = Scratch::new("repair-kill");
    let (source, template) = (scratch.join("src"), scratch.join("template"));
    init(&template);
    fs::create_dir_all(&source).unwrap();
    // Each snapshot writes an index file of its own.
    for i in 0..6u64 {
        write_noise_file(&source.join(format!("f{i}")), 2_000_000, 300 + i);
        ok(cairn(&template).args(["--quiet", "snapshot"]).arg(&source));
    }
    let index_files = |repo: &Path| fs::read_dir(repo.join("index")).unwrap().count();
    let mut names: Vec<PathBuf> = fs::read_dir(template.join("index")).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    fs::remove_file(&names[2]).unwrap();
    let broken = check_errors(&template);
    assert!(broken > 0);

    type Seen = fn(usize, usize) -> bool; // (index files before, now)
    let triggers: [(&str, u64, Option<Seen>); 8] = [
        ("at once", 0, None),
        ("after 5 ms", 5_000, None),
        ("after 15 ms", 15_000, None),
        ("after 30 ms", 30_000, None),
        ("new index file", 0, Some(|before, now| now > before)),
        ("first old index file deleted", 0, Some(|before, now| now == before)),
        ("after 45 ms", 45_000, None),
        ("after 80 ms", 80_000, None),
    ];
    let mut outcomes = Vec::new();
    for (round, (label, delay, seen)) in triggers.into_iter().enumerate() {
        let repo = scratch.join(format!("repo-{round}"));
        assert!(std::process::Command::new("cp").arg("-a").arg(&template).arg(&repo).status().unwrap().success());
        let before = index_files(&repo);
        let mut child = cairn(&repo).args(["--quiet", "repair", "index", "--read-all-packs"]).spawn().unwrap();
        let mut grown = false;
        match seen {
            None => std::thread::sleep(Duration::from_micros(delay)),
            Some(seen) => loop {
                let now = index_files(&repo);
                grown |= now > before;
                // "Deleted" means back to as many files as before after one was added.
                if (seen(before, now) && (label == "new index file" || grown)) || child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            },
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        let errors = check_errors(&repo);
        outcomes.push(format!(
            "round {round} ({label}){}: index files {before} -> {}, check errors {broken} -> {errors}",
            if finished { " (had finished)" } else { "" },
            index_files(&repo)
        ));
        assert!(errors <= broken, "round {round}: a killed repair lost index entries");
        ok(cairn(&repo).args(["--quiet", "repair", "index"]));
        ok(cairn(&repo).args(["check", "--read-data"]));
        let target = scratch.join(format!("restore-{round}"));
        ok(cairn(&repo).args(["--quiet", "restore", "latest", "--target"]).arg(&target));
        assert_same_tree(&source, &target);
        fs::remove_dir_all(&target).unwrap();
        fs::remove_dir_all(&repo).unwrap();
    }
    eprintln!("{}", outcomes.join("\n"));
}

/// A forged index file, sorting before the real one, that places every blob of the real data
/// packs in a pack of garbage: the index then picks the garbage copies, and the real packs hold
/// nothing but "dead" copies. A host with create-only rights can write exactly this.
fn forge_index(repo: &Path) {
    let opened = open(repo);
    let files = opened.read_all_named(cairn::repository::FileKind::Index, IndexFile::decode).unwrap();
    let real_first = files.iter().map(|(id, _)| id.to_hex()).min().unwrap();
    let data: Vec<_> = files
        .iter()
        .flat_map(|(_, f)| f.packs.clone())
        .filter(|p| p.blobs.iter().all(|b| b.kind == BlobKind::Data))
        .collect();
    // A garbage pack for each data pack (a snapshot fills one data pack per walk worker).
    let garbage: Vec<(Id, usize)> = (data.iter().enumerate())
        .map(|(n, p)| {
            let garbage = noise(p.len as usize, 5 + n as u64);
            let id = Id::of(&garbage);
            opened.backend().put(&cairn::repository::FileKind::Pack.name(&id), &garbage).unwrap();
            (id, garbage.len())
        })
        .collect();
    for attempt in 0u64.. {
        let packs = (data.iter().zip(&garbage))
            .map(|(p, &(id, len))| cairn::format::index::IndexedPack { id, len: len as u64 + attempt, ..p.clone() })
            .collect();
        let bytes = opened.seal_file(IndexFile { packs }.encode());
        let name = Id::of(&bytes).to_hex();
        if name < real_first {
            opened.backend().put(&format!("index/{name}"), &bytes).unwrap();
            return;
        }
    }
}

/// A forged index file, sorting first, that names every real pack with its true length but lists
/// in each only one made-up blob: the real entries are still in the real index file.
fn forge_index_hiding_live_blobs(repo: &Path) {
    let files = open(repo).read_all_named(cairn::repository::FileKind::Index, IndexFile::decode).unwrap();
    forge_index_listing_packs_empty(repo, files.into_iter().flat_map(|(_, f)| f.packs).collect());
}

#[test]
fn prune_and_repair_see_every_index_file_naming_a_pack_not_only_the_first() {
    let scratch = Scratch::new("hiding-index");
    let (source, repo) = (source_tree(&scratch), scratch.join("repo"));
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let before = packs(&repo);
    forge_index_hiding_live_blobs(&repo);
    // Prune keeps every pack: the real index file still places live blobs in each.
    let out = run(cairn(&repo).arg("prune"));
    assert!(before.iter().all(|(pack, _)| pack.exists()), "a live pack was deleted");
    assert_eq!(out.status.code(), Some(1), "index files that disagree about a pack stop the prune");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cairn repair index"));
    // Repair reads the trailers of the packs the index files disagree about, and mends the index.
    let plan = json(cairn(&repo).args(["repair", "index", "--dry-run"]));
    assert_eq!(plan["plan"]["from_trailer"].as_array().unwrap().len(), before.len(), "{plan}");
    ok(cairn(&repo).args(["repair", "index"]));
    ok(cairn(&repo).args(["check", "--read-data"]));
    ok(cairn(&repo).arg("prune"));
    assert_eq!(packs(&repo), before);
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
}

#[test]
fn prune_never_trusts_a_forged_index_over_the_packs_it_would_delete() {
    let scratch = Scratch::new("forged-index");
    let (source, repo) = (source_tree(&scratch), scratch.join("repo"));
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let before = packs(&repo);
    let index_files = |repo: &Path| fs::read_dir(repo.join("index")).unwrap().map(|e| e.unwrap().path()).collect();
    let real: Vec<PathBuf> = index_files(&repo);
    forge_index(&repo);
    let (code, err) = stderr(cairn(&repo).arg("prune"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing was deleted") && err.contains("the copy the index picks cannot be read"), "{err}");
    assert!(before.iter().all(|(pack, _)| pack.exists()), "a real pack was deleted");
    // With the forgery removed, prune deletes only the garbage, and everything restores.
    let forged: Vec<PathBuf> = index_files(&repo).into_iter().filter(|f| !real.contains(f)).collect();
    fs::remove_file(&forged[0]).unwrap();
    ok(cairn(&repo).arg("prune"));
    assert_eq!(packs(&repo), before);
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
}

/// The repository's data packs, as its index files list them.
fn data_packs(repo: &Path) -> Vec<cairn::format::index::IndexedPack> {
    let files = open(repo).read_all_named(cairn::repository::FileKind::Index, IndexFile::decode).unwrap();
    files.into_iter().flat_map(|(_, f)| f.packs).filter(|p| p.blobs.iter().all(|b| b.kind == BlobKind::Data)).collect()
}

/// A forged index file, sorting first, that lists each of `packs` with one made-up blob and
/// nothing else: written while a prune plans, it would be the listing the plan's second reading
/// takes for the packs about to go.
fn forge_index_listing_packs_empty(repo: &Path, mut packs: Vec<cairn::format::index::IndexedPack>) {
    let opened = open(repo);
    let files = opened.read_all_named(cairn::repository::FileKind::Index, IndexFile::decode).unwrap();
    let first = files.iter().map(|(id, _)| id.to_hex()).min().unwrap();
    for attempt in 0u64.. {
        for pack in &mut packs {
            let made_up = Id::of(&[pack.id.0.as_slice(), &attempt.to_le_bytes()].concat());
            pack.blobs = vec![cairn::format::pack::BlobEntry { id: made_up, ..pack.blobs[0] }];
        }
        let bytes = opened.seal_file(IndexFile { packs: packs.clone() }.encode());
        let name = Id::of(&bytes).to_hex();
        if name < first {
            opened.backend().put(&format!("index/{name}"), &bytes).unwrap();
            return;
        }
    }
}

#[test]
fn an_index_file_written_while_prune_plans_never_decides_what_it_deletes() {
    let scratch = Scratch::new("forged-mid-prune");
    let (source, repo, pause) = (source_tree(&scratch), scratch.join("repo"), scratch.join("pause"));
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let before = packs(&repo);
    let real = data_packs(&repo);
    // The index picks garbage copies of every data blob: the real data packs look dead, and
    // prune would delete them once it verified the garbage copies, which it cannot.
    forge_index(&repo);
    fs::create_dir(&pause).unwrap();
    let prune = cairn(&repo)
        .arg("prune")
        .env("CAIRN_PRUNE_PAUSE", &pause)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pause.join("marked").exists() {
        assert!(std::time::Instant::now() < deadline, "prune never marked");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now a second forgery, read first, lists the real data packs as holding nothing live.
    forge_index_listing_packs_empty(&repo, real);
    fs::write(pause.join("go"), b"").unwrap();
    let out = prune.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was deleted"), "{err}");
    assert!(before.iter().all(|(pack, _)| pack.exists()), "a real pack was deleted: {err}");
}
