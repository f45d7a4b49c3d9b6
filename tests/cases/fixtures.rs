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

/// The first repository with version 2 trees (extended attributes and ACLs): a version 2 root
/// tree over a version 1 subtree.
#[test]
fn repository_v2_still_restores() {
    let scratch = Scratch::new("fixture-repo-v2");
    let repo = scratch.join("repo");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v2");
    assert!(std::process::Command::new("cp").arg("-r").arg(fixture).arg(&repo).status().unwrap().success());
    let list = json(cairn(&repo).arg("snapshots"));
    assert_eq!((list[0]["tags"][0].as_str(), list[0]["complete"].as_bool()), (Some("fixture"), Some(true)));
    ok(cairn(&repo).args(["check", "--read-data"]));

    let target = scratch.join("restored");
    let restored = json(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(fs::read(target.join("hello.txt")).unwrap(), b"hello from format v2\n");
    assert_eq!(fs::read(target.join("acl.txt")).unwrap(), b"acl\n");
    assert_eq!(fs::read(target.join("dir/plain.txt")).unwrap(), b"no attributes here\n");
    assert_eq!(fs::read_link(target.join("dir/link")).unwrap(), Path::new("../hello.txt"));
    for entry in ["hello.txt", "acl.txt", "dir", "dir/plain.txt", "dir/link"] {
        let meta = fs::symlink_metadata(target.join(entry)).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1767323045, 123456789), "{entry}");
    }
    if !set_xattr(&scratch.join("probe"), "user.probe", b"") && !probe(&scratch) {
        eprintln!("skipped the attributes: {} keeps none", scratch.path().display());
        return;
    }
    assert_eq!(restored["summary"]["xattrs_not_restored"], 0, "{restored}");
    let hex =
        |text: &str| (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect();
    let expected: [(&str, &str, Vec<u8>); 5] = [
        ("hello.txt", "user.greeting", b"hello".to_vec()),
        ("hello.txt", "user.binary", vec![0, 0xff, 1, 2]),
        (
            "acl.txt",
            "system.posix_acl_access",
            hex("0200000001000600ffffffff02000400feff000004000400ffffffff10000400ffffffff20000400ffffffff"),
        ),
        (
            "dir",
            "system.posix_acl_default",
            hex("0200000001000700ffffffff02000500feff000004000500ffffffff10000500ffffffff20000500ffffffff"),
        ),
        ("dir", "user.dir", b"d".to_vec()),
    ];
    for (entry, name, value) in expected {
        assert_eq!(xattr(&target.join(entry), name), Some(value), "{entry} {name}");
    }
    assert_eq!(xattr(&target.join("dir/plain.txt"), "system.posix_acl_access"), None);
    assert_eq!(fs::symlink_metadata(target.join("acl.txt")).unwrap().mode() & 0o7777, 0o644);

    // A new snapshot of what was restored has the same attributes and metadata: diff finds no
    // change (it leaves out inodes and ctimes), and the content is stored once.
    let again = json(cairn(&repo).arg("snapshot").arg(&target));
    assert_eq!(again["summary"]["blobs_added"], 2, "the two trees only: {again}");
    let ids = [list[0]["id"].as_str().unwrap(), again["id"].as_str().unwrap()];
    let diff = json(cairn(&repo).arg("diff").args(ids));
    if is_root() {
        // Owners are restored only as root, and the fixture's are root's.
        assert_eq!(diff["changes"], serde_json::json!([]), "{diff}");
    }
}

/// The first repository with version 3 trees (a database's chunk list in list blobs): two
/// snapshots, the second's database a FULL list and one patch, beside an inline small file.
#[test]
fn repository_v3_still_restores() {
    let scratch = Scratch::new("fixture-repo-v3");
    let repo = scratch.join("repo");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v3");
    assert!(std::process::Command::new("cp").arg("-r").arg(fixture).arg(&repo).status().unwrap().success());
    let list = json(cairn(&repo).arg("snapshots"));
    assert_eq!(list.as_array().unwrap().len(), 2);
    ok(cairn(&repo).args(["check", "--read-data"]));
    let expected = [
        "bbfd52d856758f5c6af24a751578f0e7264998e89c05c24e552d74026eae1da3",
        "52475d6c436f291868f7cdb3b208f5cd098dfeca2d0ab7cc480de65c4a716b94",
    ];
    for (i, hash) in expected.iter().enumerate() {
        let target = scratch.join(format!("restored-{i}"));
        let id = list[i]["id"].as_str().unwrap();
        ok(cairn(&repo).args(["restore", id, "--target"]).arg(&target));
        assert_eq!(fs::read(target.join("hello.txt")).unwrap(), b"hello from format v3\n");
        assert_eq!(&sha256(&target.join("app.db")), hash, "snapshot {i}'s database");
        let meta = fs::symlink_metadata(target.join("app.db")).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1767323045, 123456789));
    }
    // A new snapshot of the restored database (another path, so no parent) dedups every page:
    // it adds a FULL list and a tree only.
    let again = json(cairn(&repo).arg("snapshot").arg(scratch.join("restored-1")));
    assert_eq!(again["summary"]["blobs_added"], 2, "{again}");
    ok(cairn(&repo).arg("check"));
}

#[test]
fn repository_v4_still_restores() {
    let expected = [
        "cd3bfe500d3941136464c650bd052e260eee1eb6118bb4195bfa0b621b0496f3",
        "7f29a8f0e0d9c668129946ece1816c1bfb86f8a5bb70706f6d35128decf4daaa",
    ];
    dictionary_fixture_restores(&Scratch::new("fixture-repo-v4"), 4, expected);
}

#[test]
fn repository_v5_still_restores() {
    let expected = [
        "45e8920c1156a2648b2da0a9063361542bd4380b62ab5898068191a4cdc14520",
        "003a0d326ec2f48b87cc739f93fd44901c3304c4506ed033012c478eb96d0305",
    ];
    let scratch = Scratch::new("fixture-repo-v5");
    let repo = dictionary_fixture_restores(&scratch, 5, expected);
    // Its packs' trailers list the dictionary, so a plain check finds it lost.
    let dictionaries: Vec<_> = fs::read_dir(repo.join("dicts")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dictionaries.len(), 1);
    fs::remove_file(&dictionaries[0]).unwrap();
    let out = run(cairn(&repo).arg("check"));
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("the dictionary is missing") && said.contains("app.db"), "{said}");
}

/// Restores both snapshots of the fixture `repo-vN` of a format with compression dictionaries
/// (store-format/dictionary.md) and snapshots into it; returns the copy of it, in `scratch`.
fn dictionary_fixture_restores(scratch: &Scratch, version: u32, expected: [&str; 2]) -> std::path::PathBuf {
    let repo = scratch.join("repo");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/repo-v{version}"));
    assert!(std::process::Command::new("cp").arg("-r").arg(fixture).arg(&repo).status().unwrap().success());
    let list = json(cairn(&repo).arg("snapshots"));
    assert_eq!(list.as_array().unwrap().len(), 2);
    ok(cairn(&repo).args(["check", "--read-data"]));
    for (i, hash) in expected.iter().enumerate() {
        let target = scratch.join(format!("restored-{i}"));
        let id = list[i]["id"].as_str().unwrap();
        ok(cairn(&repo).args(["restore", id, "--target"]).arg(&target));
        assert_eq!(fs::read(target.join("hello.txt")).unwrap(), format!("hello from format v{version}\n").as_bytes());
        assert_eq!(&sha256(&target.join("app.db")), hash, "snapshot {i}'s database");
    }
    // The restored database, changed and snapshotted under another path: the pages it shares
    // with the fixture's name their dictionary, which compresses its new pages too.
    let source = scratch.join("restored-1");
    let db = rusqlite::Connection::open(source.join("app.db")).unwrap();
    db.execute("UPDATE notes SET body = 'changed once more' WHERE id = 2000", []).unwrap();
    drop(db);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(fs::read_dir(repo.join("dicts")).unwrap().count(), 1, "the dictionary is reused");
    ok(cairn(&repo).args(["check", "--read-data"]));
    repo
}

/// The SHA-256 of a file, as `sha256sum` prints it.
fn sha256(path: &Path) -> String {
    use std::io::Read as _;
    let mut child =
        std::process::Command::new("sha256sum").arg(path).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

/// Whether the scratch directory's file system keeps user attributes.
fn probe(scratch: &Scratch) -> bool {
    fs::write(scratch.join("probe"), b"").unwrap();
    set_xattr(&scratch.join("probe"), "user.probe", b"")
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
    // dedups against the old data. A file with an extended attribute makes its directory's tree
    // a version 2 tree; the others stay version 1, and the repository, old and new trees mixed,
    // checks clean and restores both.
    fs::remove_file(target.join("hello.txt")).unwrap();
    let attribute = set_xattr(&target.join("dir/text.log"), "user.added", b"after format v1");
    let second = json(cairn(&repo).arg("snapshot").arg(&target));
    assert_eq!(second["summary"]["files"], 2);
    assert!(second["summary"]["stored_bytes_added"].as_u64().unwrap() < 2000, "{second}");
    ok(cairn(&repo).arg("check").arg("--read-data"));
    let again = scratch.join("again");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&again));
    assert_eq!(fs::read_to_string(again.join("dir/text.log")).unwrap(), text);
    if attribute {
        let value = xattr(&again.join("dir/text.log"), "user.added");
        assert_eq!(value.as_deref(), Some(&b"after format v1"[..]));
    }
}

/// Sets an extended attribute; false where the file system keeps none.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
    let (path, name) = (std::ffi::CString::new(path.to_str().unwrap()).unwrap(), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of value.len() bytes.
    unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
}

/// An extended attribute's value, if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (path, name) = (std::ffi::CString::new(path.to_str().unwrap()).unwrap(), std::ffi::CString::new(name).unwrap());
    let mut buffer = vec![0u8; 65_536];
    // SAFETY: valid C strings and a buffer of its length.
    let len = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    (len >= 0).then(|| buffer[..len as usize].to_vec())
}
