//! The sorted copy of the index kept in the cache directory (src/repository/index/open.rs): it
//! is found again, it follows new index files, a prune's rewrite, and damage, and it is never
//! trusted over the repository.

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

/// The sorted copies below `cache`.
fn copies(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in fs::read_dir(cache).into_iter().flatten().flatten() {
        for file in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            if file.file_name().to_string_lossy().starts_with("sorted-index-") {
                found.push(file.path());
            }
        }
    }
    found
}

fn round(encryption: &[&str]) {
    let scratch = Scratch::new("index-copy");
    let (repo, cache, source) = (scratch.join("repo"), scratch.join("cache"), scratch.join("source"));
    ok(cairn_at(&repo, &cache).arg("init").args(encryption));
    fs::create_dir_all(&source).unwrap();
    for n in 0..20u64 {
        write_noise_file(&source.join(format!("file-{n}")), 20_000 + n * 999, n);
    }
    ok(cairn_at(&repo, &cache).args(["snapshot"]).arg(&source));
    ok(cairn_at(&repo, &cache).args(["snapshot"]).arg(&source));
    let copy = copies(&cache);
    assert_eq!(copy.len(), 1, "one copy for the repository: {copy:?}");
    let copy = copy[0].clone();
    // Built when the repository was empty, the copy names no index file yet: removed, it is
    // built from the two snapshots' index files.
    fs::remove_file(&copy).unwrap();
    ok(cairn_at(&repo, &cache).args(["ls", "latest"]));
    let built = fs::read(&copy).unwrap();

    // New index files since the copy are read beside it: the copy stays.
    write_noise_file(&source.join("new"), 50_000, 99);
    ok(cairn_at(&repo, &cache).args(["snapshot"]).arg(&source));
    let target = scratch.join("restored");
    ok(cairn_at(&repo, &cache).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    assert!(fs::read(&copy).unwrap() == built, "a delta does not rebuild the copy");

    // A prune rewrites the index files: the next open builds the copy again.
    fs::remove_file(source.join("file-3")).unwrap();
    ok(cairn_at(&repo, &cache).args(["snapshot"]).arg(&source));
    ok(cairn_at(&repo, &cache).args(["forget", "--keep-last", "1", "--prune"]));
    ok(cairn_at(&repo, &cache).args(["check", "--read-data"]));
    ok(cairn_at(&repo, &cache).args(["ls", "latest"]));
    // Each build salts its checksums afresh: other bytes.
    assert!(fs::read(&copy).unwrap() != built, "the copy of index files prune removed is built again");

    // Truncated: refused at open and built again; the restore is whole.
    let bytes = fs::read(&copy).unwrap();
    fs::write(&copy, &bytes[..bytes.len() - 10]).unwrap();
    fs::remove_dir_all(&target).unwrap();
    ok(cairn_at(&repo, &cache).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    assert_eq!(fs::read(&copy).unwrap().len(), bytes.len(), "a truncated copy is built again");

    // A flipped bit in its blocks: never a wrong location. The command that finds it may see
    // blobs as absent (a snapshot stores them again); the copy is removed and the next one
    // builds it again, and every snapshot restores.
    flip_byte(&copy, 100, 0x10);
    write_noise_file(&source.join("after"), 30_000, 7);
    ok(cairn_at(&repo, &cache).args(["snapshot"]).arg(&source));
    assert!(!copy.exists() || fs::read(&copy).unwrap() != bytes, "the damaged copy is not kept");
    fs::remove_dir_all(&target).unwrap();
    ok(cairn_at(&repo, &cache).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    ok(cairn_at(&repo, &cache).args(["check", "--read-data"]));

    // Without a cache the copy is a temporary file: nothing is left.
    let before = copies(&cache);
    ok(cairn_at(&repo, &cache).args(["--no-cache", "snapshot"]).arg(&source));
    assert_eq!(copies(&cache), before);
    assert!(fs::read_dir(copy.parent().unwrap())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn the_sorted_copy_follows_the_index_of_a_plain_repository() {
    round(&["--encryption", "none"]);
}

#[test]
fn the_sorted_copy_of_an_encrypted_repository_follows_its_index() {
    round(&[]);
}
