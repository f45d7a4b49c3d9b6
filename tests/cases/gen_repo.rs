//! The repository generator of `benches/gen_repo` (the scale benchmark of issue 26), at a small
//! scale: what it writes must pass `check --read-data`, list, restore byte for byte, and prune
//! clean, or the numbers measured on its 10^8-blob repositories mean nothing.

use std::fs;
use std::path::Path;

use crate::support::*;

#[path = "../../benches/gen_repo/generate.rs"]
#[allow(dead_code)]
mod generate;

/// 10^4 blobs in 10 packs, files of 16 blobs, 8 files a directory, 4 directories a directory:
/// 625 files, 79 leaf directories, a root of two directories (the first holds 512 files).
fn small(repo: &Path) -> generate::Options {
    let mut options = generate::Options::new(10_000, repo.to_path_buf());
    options.pack_size = Some(64 * 1024);
    options.chunks_per_file = 16;
    options.files_per_dir = 8;
    options.fanout = 4;
    options
}

/// The content the generator gives file `number` of the small layout.
fn expected_file(options: &generate::Options, number: u64) -> Vec<u8> {
    let start = number * options.chunks_per_file;
    let end = options.blobs.min(start + options.chunks_per_file);
    (start..end).flat_map(|blob| generate::blob_bytes(blob, options.blob_size)).collect()
}

fn listed_files(repo: &Path, tag: &str) -> Vec<serde_json::Value> {
    let out = ok(cairn(repo).args(["--json", "ls", "latest", "--tag", tag]));
    let entries: Vec<serde_json::Value> = out.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    entries.into_iter().filter(|entry| entry["type"] == "file").collect()
}

#[test]
fn generated_repository_checks_restores_and_prunes_clean() {
    let scratch = Scratch::new("gen-repo");
    let repo = scratch.join("repo");
    let options = small(&repo);
    let report = generate::generate(&options).unwrap();
    assert_eq!((report.data_packs, report.files), (10, 625));
    ok(cairn(&repo).args(["check", "--read-data"]));

    // Every blob is referenced: the files' sizes add up to every blob's bytes.
    let files = listed_files(&repo, "all");
    assert_eq!(files.len(), 625);
    let total: u64 = files.iter().map(|file| file["size"].as_u64().unwrap()).sum();
    assert_eq!(total, options.blobs * options.blob_size as u64);
    assert_eq!(files[0]["path"], "/d000000/d000000/d000000/d000000/000000");

    // A whole restore gives every file the blobs it names, in order.
    let target = scratch.join("all");
    ok(cairn(&repo).args(["restore", "latest", "--tag", "all", "--target"]).arg(&target));
    let last = target.join("d000001/d000000/d000003/d000002/000000");
    assert_eq!(fs::read(&last).unwrap(), expected_file(&options, 624));
    assert_eq!(fs::read(target.join("d000000/d000000/d000000/d000000/000001")).unwrap(), expected_file(&options, 1));

    // One file alone, as big_index.sh restores it.
    let one = scratch.join("one");
    let first = "/d000000/d000000/d000000/d000000/000000";
    ok(cairn(&repo).args(["restore", "latest", "--tag", "all", "--include", first, "--target"]).arg(&one));
    assert_eq!(fs::read(one.join(&first[1..])).unwrap(), expected_file(&options, 0));

    // Forgetting `all` leaves `part` (the root's first directory: 512 files, 8,192 blobs) and
    // frees the rest; the pruned repository checks clean and still restores `part` whole.
    let packs_before = count_packs(&repo);
    let all = report.all.unwrap().to_hex();
    ok(cairn(&repo).args(["forget", &all, "--prune", "--max-unused", "0"]));
    assert!(count_packs(&repo) < packs_before, "prune deleted no pack");
    ok(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(listed_files(&repo, "part").len(), 512);
    let part = scratch.join("part");
    ok(cairn(&repo).args(["restore", "latest", "--tag", "part", "--target"]).arg(&part));
    let kept = part.join("d000000/d000003/d000003/d000003/000007");
    assert_eq!(fs::read(kept).unwrap(), expected_file(&options, 511));
}

fn count_packs(repo: &Path) -> usize {
    let mut count = 0;
    for dir in fs::read_dir(repo.join("packs")).unwrap() {
        count += fs::read_dir(dir.unwrap().path()).unwrap().count();
    }
    count
}

#[test]
fn generator_refuses_a_directory_that_is_not_empty_and_bad_options() {
    let scratch = Scratch::new("gen-repo-refuses");
    let repo = scratch.join("repo");
    fs::create_dir_all(&repo).unwrap();
    fs::write(repo.join("precious"), b"keep me").unwrap();
    let error = generate::generate(&small(&repo)).unwrap_err();
    assert!(error.contains("not empty"), "{error}");
    assert_eq!(fs::read_dir(&repo).unwrap().count(), 1);
    assert_eq!(fs::read(repo.join("precious")).unwrap(), b"keep me");

    let fresh = scratch.join("fresh");
    let mut options = small(&fresh);
    options.blob_size = 8;
    assert!(generate::generate(&options).unwrap_err().contains("--blob-size"));
    assert!(!fresh.exists(), "a refused run must not create the repository");
}
