//! Repositories written by earlier format versions still open and restore.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support::*;

fn lcg_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn repository_v1_still_restores() {
    check_fixture("repo-v1", None);
}

/// The first encrypted repository (format version 1 with encryption mode 1), password
/// `fixture password`: every later cairn must still open it with that password.
#[test]
fn encrypted_repository_v1_still_restores() {
    check_fixture("repo-v1-encrypted", Some("fixture password"));
}

fn check_fixture(name: &str, password: Option<&str>) {
    let scratch = Scratch::new(&format!("fixture-{name}"));
    let repo = scratch.join("repo");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(status.success());
    let cairn = |repo: &Path| {
        let mut command = cairn(repo);
        if let Some(password) = password {
            command.env("CAIRN_PASSWORD", password);
        }
        command
    };

    let list = json(cairn(&repo).arg("snapshots"));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["tags"][0], "fixture");
    assert_eq!(list[0]["source"], "fixture");
    assert_eq!(list[0]["complete"], true);

    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(fs::read(target.join("hello.txt")).unwrap(), b"hello from format v1\n");
    assert_eq!(fs::read(target.join("dir/noise.bin")).unwrap(), lcg_bytes(20_000, 11));
    let text: String = (0..3000).map(|i| format!("line {i} of a log that compresses well\n")).collect();
    assert_eq!(fs::read_to_string(target.join("dir/text.log")).unwrap(), text);
    assert_eq!(fs::read_link(target.join("dir/link")).unwrap(), Path::new("../hello.txt"));
    assert!(fs::read_dir(target.join("empty")).unwrap().next().is_none());
    for entry in ["hello.txt", "dir/noise.bin", "dir/text.log", "dir/link", "empty", "dir"] {
        let meta = fs::symlink_metadata(target.join(entry)).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1767323045, 123456789), "{entry}");
    }

    // A new snapshot goes into the old repository (git dropped its empty directories) and
    // dedups against the old data.
    fs::remove_file(target.join("hello.txt")).unwrap();
    let second = json(cairn(&repo).arg("snapshot").arg(&target));
    assert_eq!(second["summary"]["files"], 2);
    assert!(second["summary"]["stored_bytes_added"].as_u64().unwrap() < 2000, "{second}");
}
