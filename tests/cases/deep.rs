//! Crafted snapshots far deeper than any real tree: every walker of stored trees (check, prune's
//! mark, stats, sync, and sync's re-encoding) keeps its own stack, so depth costs memory, never
//! the process's stack.

use std::fs;
use std::path::Path;

use cairn::format::pack::BlobKind;
use cairn::format::snapshot::{Snapshot, Summary};
use cairn::format::tree::{Content, Metadata, Node, Tree};
use cairn::id::Id;
use cairn::repository::packer::BlobStore;
use cairn::repository::Repository;

use crate::support::*;

/// Levels of the crafted snapshots: far past any stack's recursion.
pub const DEPTH: usize = 100_000;

/// Writes a snapshot of `depth` nested directories `d/d/...`, the deepest holding a file `f`
/// with `content`, straight through the library; returns its id. With `missing_chunk`, the file
/// also names a chunk that was never stored (damage for check to trace through every level).
pub fn deep_snapshot(repo: &Path, depth: usize, content: &[u8], missing_chunk: bool) -> String {
    let opened = Repository::open(
        &cairn::repository::Location::parse(&repo.to_string_lossy()),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    let index = opened.load_index().unwrap();
    let store = BlobStore::new(&opened, &index);
    let meta = Metadata { mode: 0o755, mtime_sec: 1_700_000_000, nlink: 1, ..Default::default() };
    let mut chunks = vec![store.store(BlobKind::Data, content).unwrap()];
    if missing_chunk {
        chunks.push(Id::of(b"a chunk no pack holds"));
    }
    let file = Node {
        name: b"f".to_vec(),
        meta: Metadata { mode: 0o644, size: content.len() as u64 + missing_chunk as u64, ..meta },
        content: Content::File { chunks: chunks.into() },
        xattrs: Vec::new(),
    };
    let mut tree = store.store(BlobKind::Tree, &Tree { nodes: vec![file] }.encode()).unwrap();
    for _ in 0..depth {
        let dir = Node { name: b"d".to_vec(), meta, content: Content::Dir { subtree: tree }, xattrs: Vec::new() };
        tree = store.store(BlobKind::Tree, &Tree { nodes: vec![dir] }.encode()).unwrap();
    }
    store.finish().unwrap();
    let summary = Summary { files: 1, dirs: depth as u64, bytes: content.len() as u64, ..Default::default() };
    save_crafted(&opened, tree, &format!("deep-{depth}-{missing_chunk}"), summary)
}

/// Writes the manifest of a crafted snapshot of the tree `tree`; returns its id.
fn save_crafted(opened: &Repository, tree: Id, source: &str, summary: Summary) -> String {
    let snapshot = Snapshot {
        time_sec: 1_700_000_000,
        time_nsec: 0,
        duration_ms: 1,
        tree,
        parent: None,
        hostname: "crafted".into(),
        username: "test".into(),
        source: source.into(),
        paths: vec![format!("/{source}").into_bytes()],
        tags: Vec::new(),
        summary,
        errors: Vec::new(),
    };
    opened.save_snapshot(&snapshot).unwrap().to_hex()
}

/// Writes a snapshot whose every directory names the one below it twice (`a` and `b`), `depth`
/// levels down to a file with a chunk that was never stored: two to the power of `depth` paths
/// over `depth` trees. Returns its id.
pub fn diamond_snapshot(repo: &Path, depth: usize) -> String {
    let opened = Repository::open(
        &cairn::repository::Location::parse(&repo.to_string_lossy()),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    let index = opened.load_index().unwrap();
    let store = BlobStore::new(&opened, &index);
    let meta = Metadata { mode: 0o755, mtime_sec: 1_700_000_000, nlink: 1, ..Default::default() };
    let file = Node {
        name: b"f".to_vec(),
        meta: Metadata { mode: 0o644, size: 1, ..meta },
        content: Content::File { chunks: vec![Id::of(b"a chunk no pack holds either")].into() },
        xattrs: Vec::new(),
    };
    let mut tree = store.store(BlobKind::Tree, &Tree { nodes: vec![file] }.encode()).unwrap();
    for _ in 0..depth {
        let nodes = [b"a", b"b"]
            .map(|name| Node { name: name.to_vec(), meta, content: Content::Dir { subtree: tree }, xattrs: Vec::new() })
            .to_vec();
        tree = store.store(BlobKind::Tree, &Tree { nodes }.encode()).unwrap();
    }
    store.finish().unwrap();
    let summary = Summary { files: 1 << depth.min(62), dirs: depth as u64, bytes: 1, ..Default::default() };
    save_crafted(&opened, tree, "diamond", summary)
}

#[test]
fn check_names_a_damaged_directory_once_however_many_paths_reach_it() {
    let scratch = Scratch::new("diamond");
    let repo = scratch.join("repo");
    init(&repo);
    diamond_snapshot(&repo, 64);
    let out = run(cairn(&repo).args(["check", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let affected = report["affected"].as_array().unwrap();
    // The file once, then each level's second way down as "the same damaged directory".
    assert_eq!(affected.len(), 1 + 64, "{:?}", &affected[..3]);
    assert_eq!(report["trees"], 65);
}

fn code(command: &mut std::process::Command) -> Option<i32> {
    run(command).status.code()
}

#[test]
fn walkers_of_stored_trees_survive_a_hundred_thousand_levels() {
    let scratch = Scratch::new("deep");
    let (repo, offsite) = (scratch.join("repo"), scratch.join("offsite"));
    init(&repo);
    deep_snapshot(&repo, DEPTH, b"at the bottom", false);
    ok(cairn(&repo).args(["check", "--read-data"]));
    ok(cairn(&repo).arg("stats"));
    ok(cairn(&repo).args(["prune", "--dry-run"]));
    ok(cairn(&repo).arg("sync").arg("--to").arg(&offsite));
    ok(cairn(&offsite).arg("check"));
    // Into a plain destination every tree is decoded and encoded again.
    let plain = scratch.join("plain");
    ok(cairn(&plain).args(["init", "--encryption", "none"]));
    ok(cairn(&repo).arg("sync").arg("--to").arg(&plain));
    ok(cairn(&plain).arg("check"));

    // Damage at the bottom: check walks every level to name the file it costs.
    deep_snapshot(&repo, DEPTH, b"at the bottom", true);
    let out = run(cairn(&repo).args(["check", "--json"]));
    assert_eq!(out.status.code(), Some(1), "check exits 1, it does not abort");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let affected = report["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 1, "{:?}", &report["errors"]);
    let path = affected[0]["path"].as_str().unwrap();
    assert_eq!(path.len(), "/d".len() * DEPTH + "/f".len());
    // Prune refuses (a chunk is missing) with an error, never a crash.
    assert_eq!(code(cairn(&repo).arg("prune")), Some(1));
    fs::remove_dir_all(&offsite).unwrap();
    fs::remove_dir_all(&plain).unwrap();
}
