//! Chunk lists in list blobs (tree version 3, store-format/tree.md "Chunk lists"): a database that
//! changes in a few pages costs a small patch per snapshot, not its whole list; chains roll over
//! to a fresh FULL list after 16; every snapshot restores byte for byte, checks clean, and stays
//! restorable after older snapshots are forgotten and pruned; damage to a list blob fails its
//! file only.

use std::fs;
use std::path::Path;

use cairn::format::pack::BlobKind;
use cairn::format::tree::{ChunkList, Content};
use cairn::repository::{Indexed, Location, Passphrase, Repository};
use rusqlite::Connection;

use crate::support::*;

fn open(repo: &Path) -> Repository {
    Repository::open(&Location::parse(&repo.to_string_lossy()), Passphrase::Given(PASSWORD)).unwrap()
}

/// Stored bytes of every tree-kind blob (trees and list blobs) the index names.
fn tree_bytes(repo: &Path) -> u64 {
    let repo = open(repo);
    let index = repo.load_index().unwrap();
    index
        .entries()
        .map(|entry| entry.unwrap().1)
        .filter(|entry| entry.kind == BlobKind::Tree)
        .map(|entry| entry.stored_len as u64)
        .sum()
}

/// The chunk list of the file `name` in the root tree of snapshot `id`.
fn chunk_list(repo: &Path, id: &str, name: &str) -> ChunkList {
    let repo = open(repo);
    let indexed = Indexed::load(&repo).unwrap();
    let (_, snapshot) = repo.find_snapshot(id).unwrap();
    let tree = indexed.read_tree(&snapshot.tree).unwrap();
    match &tree.find(name.as_bytes()).expect("the file's node").content {
        Content::File { chunks } => chunks.clone(),
        other => panic!("{name} is a {}", other.type_name()),
    }
}

/// Text-like bytes (letters and spaces), distinct per seed.
fn text(len: usize, seed: u64) -> String {
    noise(len, seed).iter().map(|b| if b % 6 == 0 { ' ' } else { (b'a' + b % 26) as char }).collect()
}

/// Checkpoints the WAL into the main file, which then holds the image a capture stores.
fn settled_bytes(db: &Connection, path: &Path) -> Vec<u8> {
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    fs::read(path).unwrap()
}

#[test]
fn a_changing_database_costs_a_patch_per_snapshot_and_every_snapshot_restores() {
    let scratch = Scratch::new("lists-database");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    let path = data.join("app.db");
    let db = Connection::open(&path).unwrap();
    db.execute_batch(
        "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT);",
    )
    .unwrap();
    db.execute_batch("BEGIN").unwrap();
    for i in 0..3000u64 {
        db.execute("INSERT INTO t(body) VALUES (?1)", [text(2000, i)]).unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    init(&repo);

    let mut snapshots: Vec<(String, Vec<u8>)> = Vec::new();
    let mut full_list = 0u64;
    for round in 0..22u64 {
        if round > 0 {
            // A few rows changed, one added: a handful of pages of about 1,600.
            for k in 0..3 {
                let id = (round * 131 + k * 977) % 3000 + 1;
                db.execute("UPDATE t SET body = ?1 WHERE id = ?2", (text(2000, 10_000 + round * 10 + k), id)).unwrap();
            }
            db.execute("INSERT INTO t(body) VALUES (?1)", [text(500, 50_000 + round)]).unwrap();
        }
        let expected = settled_bytes(&db, &path);
        let before = tree_bytes(&repo);
        let out = json(cairn(&repo).arg("snapshot").arg(&data));
        let id = out["id"].as_str().unwrap().to_string();
        let added = tree_bytes(&repo) - before;
        let ChunkList::Stored { count, lists } = chunk_list(&repo, &id, "app.db") else {
            panic!("a database of {} pages keeps its list in list blobs", expected.len() / 4096)
        };
        assert_eq!(count, expected.len() as u64 / 4096);
        // A chain grows by one patch per snapshot and rolls over to a FULL list after 16.
        assert_eq!(lists.len() as u64, round % 16 + 1, "snapshot {round}");
        if round == 0 {
            full_list = 32 * count;
            assert!(added > full_list / 2, "the first snapshot stores the FULL list: {added} bytes of trees");
        } else if lists.len() > 1 {
            // The tree, and a patch of a few pages: far below a list of 32 bytes per page.
            assert!(
                added < full_list / 10,
                "snapshot {round} added {added} bytes of trees and lists, a FULL list is {full_list}"
            );
        }
        snapshots.push((id, expected));
    }
    drop(db);

    ok(cairn(&repo).args(["check", "--read-data"]));
    let restore_all = |snapshots: &[(String, Vec<u8>)], label: &str| {
        for (i, (id, expected)) in snapshots.iter().enumerate() {
            let target = scratch.join(format!("{label}-{i}"));
            ok(cairn(&repo).args(["restore", id, "--target"]).arg(&target));
            assert!(fs::read(target.join("app.db")).unwrap() == *expected, "snapshot {i} restores byte for byte");
            fs::remove_dir_all(&target).unwrap();
        }
    };
    restore_all(&snapshots, "restored");

    // Forgetting the first ten (the FULL list of the first chain is still needed by the later
    // snapshots of that chain) and pruning keeps the others restorable and the repository clean.
    let forgotten: Vec<&str> = snapshots[..10].iter().map(|(id, _)| id.as_str()).collect();
    ok(cairn(&repo).arg("forget").args(&forgotten));
    ok(cairn(&repo).arg("prune"));
    ok(cairn(&repo).args(["check", "--read-data"]));
    restore_all(&snapshots[10..], "after-prune");
}

#[test]
fn an_insertion_in_a_large_file_is_a_patch() {
    let scratch = Scratch::new("lists-insertion");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    small_chunk_repository(&repo);
    let file = data.join("big.bin");
    let content = noise(1 << 20, 7);
    fs::write(&file, &content).unwrap();
    let first = json(cairn(&repo).arg("snapshot").arg(&data));
    let ChunkList::Stored { count, lists } = chunk_list(&repo, first["id"].as_str().unwrap(), "big.bin") else {
        panic!("thousands of chunks are kept in list blobs")
    };
    assert!(count > 2000 && lists.len() == 1, "{count} chunks, {} list blobs", lists.len());

    let mut changed = content[..500_000].to_vec();
    changed.extend_from_slice(b"a few bytes inserted in the middle");
    changed.extend_from_slice(&content[500_000..]);
    fs::write(&file, &changed).unwrap();
    let before = tree_bytes(&repo);
    let second = json(cairn(&repo).arg("snapshot").arg(&data));
    let added = tree_bytes(&repo) - before;
    let ChunkList::Stored { lists: after, .. } = chunk_list(&repo, second["id"].as_str().unwrap(), "big.bin") else {
        panic!("still in list blobs")
    };
    assert_eq!(after.len(), 2, "the FULL list and one patch");
    assert_eq!(after[0], lists[0], "the FULL list is shared");
    assert!(added < 32 * count / 10, "{added} bytes of trees and lists for a FULL list of {}", 32 * count);

    // An unchanged file keeps its node as it is; a small file stays inline.
    fs::write(data.join("small.txt"), b"small").unwrap();
    let third = json(cairn(&repo).arg("snapshot").arg(&data));
    let id = third["id"].as_str().unwrap();
    assert_eq!(chunk_list(&repo, id, "big.bin").lists(), &after[..]);
    assert!(chunk_list(&repo, id, "small.txt").inline().is_some());
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", second["id"].as_str().unwrap(), "--target"]).arg(&target));
    assert!(fs::read(target.join("big.bin")).unwrap() == changed);
    let dumped = cairn(&repo).args(["dump", id, "big.bin"]).output().unwrap();
    assert!(dumped.status.success() && dumped.stdout == changed, "dump gives the file");
    ok(cairn(&repo).args(["check", "--read-data"]));
    ok(cairn(&repo).args(["drill", "--snapshot", id, "--scratch"]).arg(scratch.path()));
}

#[test]
fn the_same_content_under_another_chain_is_no_change_in_a_diff() {
    let scratch = Scratch::new("lists-diff");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    small_chunk_repository(&repo);
    let file = data.join("big.bin");
    let content = noise(1 << 20, 11);
    let write = |bytes: &[u8]| {
        fs::write(&file, bytes).unwrap();
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
    };
    let snapshot = || json(cairn(&repo).arg("snapshot").arg(&data))["id"].as_str().unwrap().to_string();
    write(&content);
    let first = snapshot();
    let mut changed = content.clone();
    changed[400_000..400_100].fill(b'x');
    write(&changed);
    let second = snapshot();
    write(&content);
    let third = snapshot();
    let (one, three) = (chunk_list(&repo, &first, "big.bin"), chunk_list(&repo, &third, "big.bin"));
    assert_ne!(one.lists(), three.lists(), "back to the first content, under a longer chain: {three:?}");

    let changes = |a: &str, b: &str| json(cairn(&repo).args(["diff", a, b]))["changes"].as_array().unwrap().len();
    assert_eq!(changes(&first, &third), 0, "the same chunks, listed by another chain");
    assert_eq!(changes(&first, &second), 1);
    assert_eq!(changes(&second, &third), 1);
}

#[test]
fn a_missing_list_blob_fails_its_file_only_and_check_and_prune_say_so() {
    let scratch = Scratch::new("lists-missing");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    small_chunk_repository(&repo);
    fs::write(data.join("big.bin"), noise(1 << 20, 9)).unwrap();
    fs::write(data.join("other.txt"), b"still restores").unwrap();
    let first = json(cairn(&repo).arg("snapshot").arg(&data));
    let id = first["id"].as_str().unwrap().to_string();
    let lists = chunk_list(&repo, &id, "big.bin").lists().to_vec();

    // The list blob's index entry is lost: rewrite the index without it (plain repository).
    drop_from_index(&repo, &lists[0]);
    let target = scratch.join("restored");
    let out = run(cairn(&repo).args(["restore", &id, "--target"]).arg(&target));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("big.bin"), "{stderr}");
    assert_eq!(fs::read(target.join("other.txt")).unwrap(), b"still restores");
    let checked = run(cairn(&repo).arg("check"));
    assert!(!checked.status.success());
    let report = String::from_utf8_lossy(&checked.stdout) + String::from_utf8_lossy(&checked.stderr);
    assert!(report.contains(&format!("chunk list {} is not in the index", lists[0].short())), "{report}");
    assert!(!run(cairn(&repo).arg("prune")).status.success(), "prune refuses a repository that is not whole");
}

/// Rewrites a plain repository's index without blob `id`: every index file is replaced by one
/// naming the same packs and entries but that one.
fn drop_from_index(repo: &Path, id: &cairn::id::Id) {
    use cairn::repository::FileKind;
    let opened = open(repo);
    let packs = opened.indexed_packs().unwrap();
    let kept: Vec<_> = packs
        .packs
        .into_values()
        .map(|mut pack| {
            pack.blobs.retain(|blob| blob.id != *id);
            pack
        })
        .collect();
    let old = opened.list_files(FileKind::Index).unwrap();
    opened.write_index_files(&kept).unwrap();
    for (file, _) in old {
        opened.delete_file(FileKind::Index, &file).unwrap();
    }
}

#[test]
fn sync_copies_list_blobs_and_recodes_them_for_other_keys() {
    let scratch = Scratch::new("lists-sync");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    small_chunk_repository(&repo);
    let content = noise(1 << 20, 11);
    fs::write(data.join("big.bin"), &content).unwrap();
    json(cairn(&repo).arg("snapshot").arg(&data));
    let mut changed = content.clone();
    changed.splice(700_000..700_000, b"inserted".iter().copied());
    fs::write(data.join("big.bin"), &changed).unwrap();
    let second = json(cairn(&repo).arg("snapshot").arg(&data));
    assert_eq!(chunk_list(&repo, second["id"].as_str().unwrap(), "big.bin").lists().len(), 2);

    // A destination with the source's parameters (no keys, packs copied as they are), and one
    // with keys of its own (every blob, list blobs included, stored again with its ids).
    let (same, other) = (scratch.join("same"), scratch.join("other"));
    init(&other);
    let password = scratch.join("password");
    fs::write(&password, PASSWORD).unwrap();
    for dest in [&same, &other] {
        ok(cairn(&repo).arg("sync").arg("--to").arg(dest).arg("--to-password-file").arg(&password));
        ok(cairn(dest).args(["check", "--read-data"]));
        let copied = json(cairn(dest).arg("snapshots"));
        for (i, expected) in [&content, &changed].into_iter().enumerate() {
            let id = copied[i]["id"].as_str().unwrap();
            let target = scratch.join(format!("restored-{}-{i}", dest.file_name().unwrap().to_string_lossy()));
            ok(cairn(dest).args(["restore", id, "--target"]).arg(&target));
            assert!(fs::read(target.join("big.bin")).unwrap() == *expected, "snapshot {i} from {}", dest.display());
        }
        // Recoded as one list of the file's chunks, not list by list (an earlier list may name
        // chunks a prune deleted: the test below).
        let latest = copied[1]["id"].as_str().unwrap();
        assert_eq!(chunk_list(dest, latest, "big.bin").lists().len(), 1, "{}", dest.display());
    }
    assert_ne!(
        chunk_list(&other, json(cairn(&other).arg("snapshots"))[1]["id"].as_str().unwrap(), "big.bin").lists()[0],
        chunk_list(&repo, second["id"].as_str().unwrap(), "big.bin").lists()[0],
        "recoded for the other keys"
    );
}

/// A sync into another repository's keys recodes every chunk of a file kept in list blobs; the
/// first list of a chain names chunks that later lists replaced, which a prune deletes once the
/// snapshot that needed them is forgotten. The sync read them to recode them, and failed for that
/// file's snapshot on every run ("blob ... is not in the repository index").
#[test]
fn sync_recodes_a_pruned_chain_for_other_keys() {
    let scratch = Scratch::new("lists-sync-pruned");
    let (data, repo, other) = (scratch.join("data"), scratch.join("repo"), scratch.join("other"));
    fs::create_dir_all(&data).unwrap();
    small_chunk_repository(&repo);
    let content = noise(1 << 20, 12);
    fs::write(data.join("big.bin"), &content).unwrap();
    let first = json(cairn(&repo).arg("snapshot").arg(&data));
    let mut changed = content.clone();
    changed.splice(700_000..700_000, b"inserted".iter().copied());
    fs::write(data.join("big.bin"), &changed).unwrap();
    json(cairn(&repo).arg("snapshot").arg(&data));
    ok(cairn(&repo).args(["forget", first["id"].as_str().unwrap(), "--prune", "--max-unused", "0"]));
    ok(cairn(&repo).args(["check", "--read-data"]));
    init(&other);
    let password = scratch.join("password");
    fs::write(&password, PASSWORD).unwrap();
    ok(cairn(&repo).arg("sync").arg("--to").arg(&other).arg("--to-password-file").arg(&password));
    ok(cairn(&other).args(["check", "--read-data"]));
    let target = scratch.join("restored");
    ok(cairn(&other).args(["restore", "latest", "--target"]).arg(&target));
    assert!(fs::read(target.join("big.bin")).unwrap() == changed);
}
