//! Names that are not UTF-8, or that a terminal would misread, through every command that shows
//! or takes one: `ls` shows them escaped and takes that form back, JSON carries their bytes,
//! `--include`, `dump` and `find` take them as they are, `diff` names them, and a tar export
//! gives them back byte for byte.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// The bytes a JSON entry stands for: its `_raw` base64 where it has one, else its text.
fn bytes_of(entry: &Value, key: &str) -> Vec<u8> {
    match entry.get(format!("{key}_raw")) {
        Some(raw) => cairn::base64::decode(raw.as_str().unwrap()).unwrap(),
        None => entry[key].as_str().unwrap().as_bytes().to_vec(),
    }
}

fn at(root: &Path, name: &[u8]) -> std::path::PathBuf {
    root.join(OsStr::from_bytes(name))
}

/// A tree of awkward names: Latin-1, bytes that are no encoding, a backslash, a newline, an
/// escape sequence, a hard link and a symlink target that are not UTF-8.
fn awkward_tree(tree: &Path) {
    fs::create_dir_all(at(tree, b"dir-\xff\xfe")).unwrap();
    fs::write(at(tree, b"dir-\xff\xfe/inside"), b"inside a directory named in no encoding").unwrap();
    fs::write(at(tree, b"caf\xe9.txt"), b"latin-1").unwrap();
    fs::write(at(tree, b"back\\slash"), b"backslash").unwrap();
    fs::write(at(tree, b"new\nline"), b"newline").unwrap();
    fs::write(at(tree, b"\x1b[31mred"), b"escape").unwrap();
    fs::write(at(tree, "日本語.txt".as_bytes()), b"utf-8").unwrap();
    fs::hard_link(at(tree, b"caf\xe9.txt"), at(tree, b"link-\xe9")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9.txt"), at(tree, b"symlink-\xe9")).unwrap();
}

#[test]
fn names_that_are_not_utf8_are_shown_escaped_carried_in_json_and_taken_back() {
    let scratch = Scratch::new("names");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    awkward_tree(&tree);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&tree));

    // Text: one line per entry, escaped, nothing a terminal would act on.
    let listing = run(cairn(&repo).args(["ls", "latest"]));
    assert!(listing.status.success());
    let text = std::str::from_utf8(&listing.stdout).expect("ls prints UTF-8");
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
    for shown in [
        "/caf\\xe9.txt",
        "/dir-\\xff\\xfe",
        "/dir-\\xff\\xfe/inside",
        "/back\\\\slash",
        "/new\\nline",
        "/\\x1b[31mred",
        "/日本語.txt",
    ] {
        assert!(text.lines().any(|line| line == shown), "{shown} not in\n{text}");
    }
    assert_eq!(text.lines().count(), 9, "{text}");
    let long = ok(cairn(&repo).args(["ls", "latest", "--long"]));
    assert!(long.contains("/symlink-\\xe9 -> caf\\xe9.txt"), "{long}");

    // JSON: the bytes of every path and link target, exactly.
    let listing = ok(cairn(&repo).args(["--json", "ls", "latest"]));
    let mut paths = Vec::new();
    for line in listing.lines() {
        let entry: Value = serde_json::from_str(line).unwrap();
        let path = bytes_of(&entry, "path");
        assert!(at(&tree, &path[1..]).symlink_metadata().is_ok(), "{entry}");
        if entry["type"] == "symlink" {
            assert_eq!(bytes_of(&entry, "target"), b"caf\xe9.txt");
        }
        if std::str::from_utf8(&path).is_ok() {
            assert!(entry.get("path_raw").is_none(), "{entry}");
        }
        paths.push(path);
    }
    assert!(paths.contains(&b"/dir-\xff\xfe/inside".to_vec()), "{paths:?}");

    // Restore takes the name as it is, or as ls showed it.
    for (include, restored) in [
        (OsStr::from_bytes(b"/caf\xe9.txt"), &b"caf\xe9.txt"[..]),
        (OsStr::new("/dir-\\xff\\xfe"), b"dir-\xff\xfe/inside"),
        (OsStr::new("/back\\\\slash"), b"back\\slash"),
    ] {
        let target = scratch.join(format!("only-{}", paths.len()));
        let _ = fs::remove_dir_all(&target);
        ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target).arg("--include").arg(include));
        assert_eq!(fs::read(at(&target, restored)).unwrap(), fs::read(at(&tree, restored)).unwrap());
        assert_eq!(fs::read_dir(&target).unwrap().count(), 1, "{include:?}");
    }
    // A name that is the escaped form of another: the form ls shows of each names it, the
    // text that could mean either is refused.
    fs::write(at(&tree, b"literal\\xe9"), b"a name with a backslash, x, e, 9").unwrap();
    fs::write(at(&tree, b"literal\xe9"), b"a name with the byte e9").unwrap();
    fs::write(at(&tree, b"only\\x41"), b"no A file beside it").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&tree));
    let dumped = run(cairn(&repo).args(["dump", "latest", "/literal\\\\xe9"]));
    assert_eq!(dumped.stdout, b"a name with a backslash, x, e, 9");
    let dumped = run(cairn(&repo).args(["dump", "latest", "/literal\\xe9"]));
    assert!(!dumped.status.success(), "{dumped:?}");
    let err = String::from_utf8_lossy(&dumped.stderr);
    assert!(err.contains("names two entries") && err.contains("/literal\\\\xe9 and /literal\\xe9"), "{err}");
    let dumped = run(cairn(&repo).args(["dump", "latest"]).arg(OsStr::from_bytes(b"/literal\xe9")));
    assert_eq!(dumped.stdout, b"a name with the byte e9");
    let dumped = run(cairn(&repo).args(["dump", "latest", "/only\\x41"]));
    assert_eq!(dumped.stdout, b"no A file beside it", "the name as typed, where no A file exists");
    let dumped = run(cairn(&repo).args(["dump", "latest", "/caf\\xe9.txt"]));
    assert_eq!(dumped.stdout, b"latin-1");
    let dumped = run(cairn(&repo).args(["dump", "latest"]).arg(OsStr::from_bytes(b"/dir-\xff\xfe/inside")));
    assert_eq!(dumped.stdout, b"inside a directory named in no encoding");
    // ls from a directory named in no encoding, given as ls showed it.
    let inside = ok(cairn(&repo).args(["ls", "latest", "/dir-\\xff\\xfe"]));
    assert_eq!(inside.lines().collect::<Vec<_>>(), ["/dir-\\xff\\xfe", "/dir-\\xff\\xfe/inside"]);
    // A missing path is still an error that shows what was asked.
    let missing = run(cairn(&repo).args(["dump", "latest"]).arg(OsStr::from_bytes(b"/caf\xe8.txt")));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("caf\\xe8.txt"), "{missing:?}");
}

#[test]
fn find_diff_and_tar_keep_names_byte_for_byte() {
    let scratch = Scratch::new("names-find");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    awkward_tree(&tree);
    init(&repo);
    let first = json(cairn(&repo).arg("snapshot").arg(&tree))["id"].as_str().unwrap().to_string();

    // find takes a pattern of raw bytes.
    let found = json(cairn(&repo).args(["find"]).arg(OsStr::from_bytes(b"*\xe9*")));
    let matches: Vec<Vec<u8>> = found[0]["matches"].as_array().unwrap().iter().map(|m| bytes_of(m, "path")).collect();
    assert_eq!(matches, [b"/caf\xe9.txt".to_vec(), b"/link-\xe9".to_vec(), b"/symlink-\xe9".to_vec()]);
    // ... or as ls shows names.
    let found = json(cairn(&repo).args(["find", "caf\\xe9*"]));
    assert_eq!(bytes_of(&found[0]["matches"][0], "path"), b"/caf\xe9.txt");
    let text = ok(cairn(&repo).args(["find"]).arg(OsStr::from_bytes(b"inside")));
    assert!(text.contains("/dir-\\xff\\xfe/inside"), "{text}");

    // diff names the changed entries by their bytes.
    fs::write(at(&tree, b"dir-\xff\xfe/inside"), b"changed").unwrap();
    fs::write(at(&tree, b"new-\xfd"), b"added").unwrap();
    let second = json(cairn(&repo).arg("snapshot").arg(&tree))["id"].as_str().unwrap().to_string();
    let diff = json(cairn(&repo).args(["diff", &first, &second]));
    let changed: Vec<(String, Vec<u8>)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap().to_string(), bytes_of(c, "path")))
        .collect();
    assert!(changed.contains(&("modified".into(), b"/dir-\xff\xfe/inside".to_vec())), "{changed:?}");
    assert!(changed.contains(&("added".into(), b"/new-\xfd".to_vec())), "{changed:?}");
    let text = ok(cairn(&repo).args(["diff", &first, &second]));
    assert!(text.contains("+    /new-\\xfd"), "{text}");

    // tar gives the names back as they were.
    let extracted = dump_and_extract(&repo, scratch.path(), &[]);
    assert_same_tree(&tree, &extracted);
}

#[test]
fn sources_whose_paths_differ_only_in_bytes_that_are_not_utf8_stay_two_sources() {
    let scratch = Scratch::new("names-sources");
    let repo = scratch.join("repo");
    let (one, two) = (at(scratch.path(), b"src-\xfe"), at(scratch.path(), b"src-\xff"));
    for (dir, content) in [(&one, "one"), (&two, "two")] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("f"), content).unwrap();
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&one));
    ok(cairn(&repo).arg("snapshot").arg(&two));
    // Keeping the last one per source keeps both.
    ok(cairn(&repo).args(["forget", "--keep-last", "1", "--prune"]));
    let listed = json(cairn(&repo).arg("snapshots"));
    let mut paths: Vec<Vec<u8>> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| cairn::base64::decode(s["paths_raw"][0].as_str().unwrap()).unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, [one.as_os_str().as_bytes().to_vec(), two.as_os_str().as_bytes().to_vec()]);
}

#[test]
fn messages_show_names_escaped_never_raw() {
    let scratch = Scratch::new("names-messages");
    let (repo, tree) = (scratch.join("repo"), scratch.join("tree"));
    fs::create_dir_all(&tree).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(at(&tree, b"\x1b[31mRED\n.sock")).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&tree));
    let out = run(cairn(&repo).args(["restore", "latest", "--target"]).arg(scratch.join("restored")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\\x1b[31mRED\\n.sock: sockets are recorded but not restored"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
}

/// A source, tag or host name with a control character is refused where it is typed: in
/// `status`, `log` and notifications it could pass for other lines.
#[test]
fn a_source_tag_or_host_name_with_a_control_character_is_refused() {
    let scratch = Scratch::new("names-labels");
    let (src, repo) = (scratch.join("src"), scratch.join("repo"));
    std::fs::create_dir_all(&src).unwrap();
    init(&repo);
    for flag in ["--source", "--tag", "--host"] {
        let out = run(cairn(&repo).args(["snapshot", flag, "evil\nok prod"]).arg(&src));
        assert!(!out.status.success(), "{flag}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("control character"), "{flag}");
    }
    assert!(!repo.join("snapshots").read_dir().is_ok_and(|mut d| d.next().is_some()), "nothing was written");
}
