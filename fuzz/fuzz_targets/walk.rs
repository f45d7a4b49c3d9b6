//! Every walker of stored trees on a crafted snapshot must end with a value or an error, never a
//! panic or an abort (a stack overflow aborts the process). The input is a small program that
//! builds the snapshot's trees in a repository in memory (`memory://`), and its first byte picks
//! the walker: check, check --read-data, prune's plan, stats, restore, drill, sync (same keys and
//! re-encoding), and the listing walk with `find_node`.
//!
//! The program, one operation per byte after the first (see `build`), can nest trees far deeper
//! than any real file system (`chain`), name blobs that were never stored, and use a data chunk
//! where a tree is expected. `regressions/walk-*` hold one deep input per walker.
#![no_main]

use std::ops::ControlFlow;
use std::path::PathBuf;

use cairn::format::pack::BlobKind;
use cairn::format::snapshot::{Snapshot, Summary};
use cairn::format::tree::{Content, Metadata, Node, Tree};
use cairn::id::Id;
use cairn::progress::Progress;
use cairn::repository::lock::LockKind;
use cairn::repository::packer::BlobStore;
use cairn::repository::{NewKeys, Repository};
use libfuzzer_sys::fuzz_target;

/// The deepest chain one operation builds.
const MAX_CHAIN: usize = 200_000;

/// Runs the program in `ops` against a blob store; returns the root tree's id.
fn build(repo: &Repository, ops: &[u8]) -> Id {
    let index = repo.load_index().expect("an empty index");
    let store = BlobStore::new(repo, &index);
    let meta = Metadata { mode: 0o755, mtime_sec: 1_700_000_000, nlink: 1, ..Default::default() };
    let file = |content: &[u8]| Content::File { chunks: vec![store.store(BlobKind::Data, content).unwrap()].into() };
    let dir = |items: Vec<Content>| {
        let nodes = items
            .into_iter()
            .enumerate()
            .map(|(i, content)| Node { name: format!("{i:03}").into_bytes(), meta, content, xattrs: Vec::new() })
            .collect();
        Content::Dir { subtree: store.store(BlobKind::Tree, &Tree { nodes }.encode()).unwrap() }
    };
    let mut stack: Vec<Content> = Vec::new();
    let mut bytes = ops.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 8 {
            0 => stack.push(file(&[arg; 100])),
            1 => stack.push(Content::File { chunks: vec![Id::of(&[arg])].into() }),
            2 => {
                let take = (arg as usize % 8 + 1).min(stack.len());
                let items = stack.split_off(stack.len() - take);
                stack.push(dir(items));
            }
            3 => {
                let depth = (arg as usize) << 8 | bytes.next().unwrap_or(0) as usize;
                let depth = (depth * 4).min(MAX_CHAIN);
                let mut top = stack.pop().unwrap_or_else(|| file(b"bottom"));
                for _ in 0..depth {
                    top = dir(vec![top]);
                }
                stack.push(top);
            }
            4 => stack.push(Content::Symlink { target: vec![b'.'; arg as usize % 4 + 1] }),
            5 => stack.push(Content::Dir { subtree: Id::of(&[arg, 1]) }),
            6 => {
                let Content::File { chunks } = file(&[arg; 7]) else { unreachable!() };
                stack.push(Content::Dir { subtree: chunks.inline().expect("one inline chunk")[0] });
            }
            _ => {
                if let Some(top) = stack.last().cloned() {
                    stack.push(top);
                }
            }
        }
    }
    let Content::Dir { subtree: root } = dir(stack) else { unreachable!() };
    store.finish().unwrap();
    root
}

fn snapshot_of(tree: Id) -> Snapshot {
    Snapshot {
        time_sec: 1_700_000_000,
        time_nsec: 0,
        duration_ms: 1,
        tree,
        parent: None,
        hostname: "fuzz".into(),
        username: "fuzz".into(),
        source: "walk".into(),
        paths: vec![b"/walk".to_vec()],
        tags: Vec::new(),
        summary: Summary::default(),
        errors: Vec::new(),
    }
}

/// A directory of this process's own, empty, for restores and drills.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-fuzz-walk-{}", std::process::id()));
    remove(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn remove(dir: &std::path::Path) {
    let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(dir).status();
    let _ = std::fs::remove_dir_all(dir);
}

/// A second repository to sync into: with the source's keys (none), or with keys of its own.
fn destination(source: &Repository, encrypted: bool) -> Repository {
    let keys = match encrypted {
        true => NewKeys::New { passphrase: "fuzz".into() },
        false => NewKeys::None,
    };
    Repository::create(&"memory://dest".into(), source.config().clone(), keys).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&walker, ops)) = data.split_first() else { return };
    // Key files of the re-encoding destination: the cheapest Argon2id there is.
    std::env::set_var("CAIRN_KDF_MEMORY_KIB", "8");
    let repo = Repository::create(&"memory://walk".into(), cairn::format::config::Config::new_random(), NewKeys::None).unwrap();
    let root = build(&repo, ops);
    let snapshot = snapshot_of(root);
    let id = repo.save_snapshot(&snapshot).unwrap();
    let progress = Progress::new("fuzz", true);
    let indexed = cairn::repository::Indexed::load(&repo).unwrap();
    match walker % 9 {
        0 => _ = cairn::check::check(&repo, None, Default::default(), &progress),
        1 => _ = cairn::check::check(&repo, Some(cairn::check::Subset::All), Default::default(), &progress),
        2 => _ = cairn::prune::plan(&repo, 5.0),
        3 => _ = cairn::stats::stats(&repo),
        4 => {
            let target = scratch();
            let options = cairn::restore::RestoreOptions { target: target.clone(), ..Default::default() };
            _ = cairn::restore::restore(&indexed, &id, &snapshot, &options, &progress);
            remove(&target);
        }
        5 => {
            let parent = scratch();
            _ = cairn::drill::drill(&repo, &id, &snapshot, &parent, &progress, None);
            remove(&parent);
        }
        6 | 7 => {
            let dest = destination(&repo, walker % 9 == 7);
            let held = dest.lock(LockKind::Shared, "fuzz", std::time::Duration::ZERO).unwrap();
            let mut report = Default::default();
            let missing = vec![(id, snapshot.clone())];
            _ = match cairn::sync::shares_keys(&repo, &dest) {
                true => cairn::sync::copy(&repo, &dest, &held, missing, &Default::default(), &progress, &mut report),
                false => cairn::sync::copy_reencoded(&repo, &dest, &held, missing, &progress, &mut report),
            };
        }
        _ => {
            let mut deepest: Vec<u8> = Vec::new();
            // The deepest entry that is not a directory: copying every directory's path as it
            // grows would cost memory quadratic in the depth.
            let _ = cairn::walk::each_entry(&indexed, &root, Vec::new(), |node, path| {
                let leaf = !matches!(node.content, Content::Dir { .. });
                if leaf && path.len() > deepest.len() {
                    deepest = path.to_vec();
                }
                ControlFlow::Continue(())
            });
            _ = cairn::restore::find_node(&indexed, &root, &deepest, "fuzz");
        }
    }
});
