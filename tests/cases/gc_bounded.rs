//! check and prune in bounded memory (issue 26): prune marks live blobs by their position in the
//! local sorted copy of the index, and check confirms packs by a sum of what the index places in
//! them. Neither may act on a wrong answer: a damaged copy stops a prune (nothing deleted, the next
//! one rebuilds it), and a blob stored in two packs (the index picks one copy) is neither damage to
//! check nor lost by prune.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// `cairn` with its cache (and so the sorted copy) in `cache`.
fn cairn_at(repo: &Path, cache: &Path) -> Command {
    let mut command = cairn(repo);
    command.env("CAIRN_CACHE_DIR", cache);
    command
}

/// The sorted copy below `cache`, if there is one.
fn copy_in(cache: &Path) -> Option<PathBuf> {
    let dirs = fs::read_dir(cache).into_iter().flatten().flatten();
    let files = dirs.flat_map(|dir| fs::read_dir(dir.path()).into_iter().flatten().flatten());
    files.map(|file| file.path()).find(|path| path.file_name().unwrap().to_string_lossy().starts_with("sorted-index-"))
}

/// Every file below `dir`, sorted.
fn names(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    names
}

#[test]
fn a_damaged_sorted_copy_stops_a_prune_and_the_next_prune_rebuilds_it() {
    for encryption in [&["--encryption", "none"][..], &[]] {
        let scratch = Scratch::new("gc-damaged-copy");
        let (repo, cache, source) = (scratch.join("repo"), scratch.join("cache"), scratch.join("source"));
        ok(cairn_at(&repo, &cache).arg("init").args(encryption));
        fs::create_dir_all(&source).unwrap();
        for n in 0..6u64 {
            write_noise_file(&source.join(format!("file-{n}")), 400_000 + n * 999, n);
        }
        let first = json(cairn_at(&repo, &cache).args(["snapshot"]).arg(&source));
        for n in 0..4u64 {
            fs::remove_file(source.join(format!("file-{n}"))).unwrap();
        }
        ok(cairn_at(&repo, &cache).arg("snapshot").arg(&source));
        ok(cairn_at(&repo, &cache).args(["forget", first["id"].as_str().unwrap()]));
        // The copy made at init names no index file (the snapshots' are its delta): removed, it is
        // built again from every index file.
        ok(cairn_at(&repo, &cache).args(["ls", "latest"]));
        fs::remove_file(copy_in(&cache).expect("a sorted copy in the cache")).unwrap();
        ok(cairn_at(&repo, &cache).args(["ls", "latest"]));
        let copy = copy_in(&cache).expect("a sorted copy in the cache");
        assert!(fs::metadata(&copy).unwrap().len() > 6 * 50, "{encryption:?}: the copy holds the blobs");
        // A flipped bit in the copy's first block: the head's checks pass, the block's do not.
        flip_byte(&copy, 40, 0x04);
        let (packs, index) = (names(&repo.join("packs")), names(&repo.join("index")));
        // `cairn prune` builds a copy of its own each run; an embedder whose repository keeps its
        // copy in a cache plans with that one.
        let mut opened = cairn::repository::Repository::open(
            &cairn::repository::Location::parse(&repo.to_string_lossy()),
            cairn::repository::Passphrase::Given(PASSWORD),
        )
        .unwrap();
        opened.use_cache(&cache).unwrap();
        let refused = cairn::prune::plan(&opened, 0.0).expect_err("a plan on a damaged copy");
        let err = refused.to_string();
        assert!(err.contains("sorted copy") && err.contains("nothing was deleted"), "{encryption:?}: {err}");
        assert_eq!(names(&repo.join("packs")), packs, "{encryption:?}: no pack deleted");
        assert_eq!(names(&repo.join("index")), index, "{encryption:?}: the index is as it was");
        assert!(!copy.exists(), "{encryption:?}: the damaged copy is removed");
        let plan = cairn::prune::plan(&opened, 0.0).expect("a plan on the copy built again");
        assert!(!plan.delete.is_empty(), "{encryption:?}: {plan:?}");
        assert!(copy.exists(), "{encryption:?}: the copy is built again");
        // And the prune frees the forgotten files' data.
        let report = json(cairn_at(&repo, &cache).args(["prune", "--max-unused", "0"]));
        assert!(report["report"]["packs_deleted"].as_u64().unwrap() > 0, "{encryption:?}: {report}");
        ok(cairn_at(&repo, &cache).args(["check", "--read-data"]));
        let target = scratch.join("restored");
        ok(cairn_at(&repo, &cache).args(["restore", "latest", "--target"]).arg(&target));
        assert_same_tree(&source, &target);
    }
}

#[test]
fn a_blob_stored_in_two_packs_is_neither_damage_to_check_nor_lost_by_prune() {
    let scratch = Scratch::new("gc-two-copies");
    let (repo, source, aside) = (scratch.join("repo"), scratch.join("source"), scratch.join("aside"));
    init(&repo);
    fs::create_dir_all(&source).unwrap();
    for n in 0..3u64 {
        write_noise_file(&source.join(format!("file-{n}")), 300_000, 10 + n);
    }
    ok(cairn(&repo).arg("snapshot").arg(&source));
    // The index file set aside, the next snapshot stores every blob again, beside a new file (so
    // its pack has other bytes, another name); then both index files are there: every blob of the
    // first snapshot is in two packs, and the index picks one copy of each.
    fs::create_dir_all(&aside).unwrap();
    let first_index = names(&repo.join("index"));
    for file in &first_index {
        fs::rename(file, aside.join(file.file_name().unwrap())).unwrap();
    }
    write_noise_file(&source.join("new"), 200_000, 99);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    for file in &first_index {
        fs::rename(aside.join(file.file_name().unwrap()), file).unwrap();
    }
    // Each pack's trailer lists copies the index takes from the other pack: not damage.
    ok(cairn(&repo).arg("check"));
    ok(cairn(&repo).args(["check", "--read-data"]));
    let before = pack_count(&repo);
    let plan = json(cairn(&repo).args(["prune", "--dry-run", "--max-unused", "0"]));
    assert!(plan["plan"]["dead_bytes"].as_u64().unwrap() > 0, "the copies not picked are dead: {plan}");
    assert_eq!(pack_count(&repo), before, "a dry run deletes nothing");
    ok(cairn(&repo).args(["prune", "--max-unused", "0"]));
    ok(cairn(&repo).args(["check", "--read-data"]));
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
}
