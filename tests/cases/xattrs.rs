//! Extended attributes, POSIX ACLs and file capabilities round-trip through snapshot and
//! restore on the real file system, compared with getfattr, getfacl and getcap on both sides
//! (store-format/tree.md, "Extended attributes").

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A non-UTF-8 attribute name, and a binary value with NUL and high bytes.
const ODD_NAME: &[u8] = b"user.caf\xe9";
const BINARY: &[u8] = b"\x00\x01\xfe\xff binary \x00";

fn set(path: &Path, name: &[u8], value: &[u8]) {
    let (c_path, c_name) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of value.len() bytes.
    let rc = unsafe { libc::lsetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "lsetxattr {}: {}", path.display(), std::io::Error::last_os_error());
}

fn get(path: &Path, name: &[u8]) -> Option<Vec<u8>> {
    let (c_path, c_name) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    let mut buffer = vec![0u8; 65_536];
    // SAFETY: valid C strings and a buffer of its length.
    let len = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    (len >= 0).then(|| buffer[..len as usize].to_vec())
}

/// The output of a tool run in `dir` on `.`, so that both sides print the same paths.
fn tool(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).arg(".").current_dir(dir).output().expect(program);
    assert!(output.status.success(), "{program}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every attribute of every entry, in hex; without SELinux labels, which the policy gives the
/// restored files by itself.
fn attributes(dir: &Path) -> String {
    tool(dir, "getfattr", &["-R", "-h", "-d", "-m", "-", "-e", "hex"])
}

fn tools_present() -> bool {
    ["getfattr", "getfacl", "setfacl"].iter().all(|t| Command::new(t).arg("--version").output().is_ok())
}

/// The source tree: user attributes (binary values, a non-UTF-8 name, an empty value), an ACL,
/// a default ACL on a directory, a read-only file with an attribute, a link and a FIFO.
fn make_source(source: &Path) -> bool {
    fs::create_dir_all(source.join("shared")).unwrap();
    fs::write(source.join("plain"), b"plain").unwrap();
    fs::write(source.join("acl"), b"acl").unwrap();
    fs::write(source.join("readonly"), b"readonly").unwrap();
    fs::write(source.join("shared/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("plain", source.join("link")).unwrap();
    assert!(Command::new("mkfifo").arg(source.join("fifo")).status().unwrap().success());
    let probe = CString::new(source.join("plain").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and a one-byte value.
    if unsafe { libc::lsetxattr(probe.as_ptr(), c"user.probe".as_ptr(), b"1".as_ptr().cast(), 1, 0) } != 0 {
        eprintln!("skipped: {} keeps no user attributes", source.display());
        return false;
    }
    set(&source.join("plain"), b"user.text", b"some text");
    set(&source.join("plain"), b"user.binary", BINARY);
    set(&source.join("plain"), ODD_NAME, b"odd");
    set(&source.join("plain"), b"user.empty", b"");
    set(&source.join("shared"), b"user.dir", b"on a directory");
    set(&source.join("readonly"), b"user.kept", b"despite mode 0444");
    fs::set_permissions(source.join("readonly"), std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let acl = |args: &[&str], path: &str| {
        assert!(Command::new("setfacl").args(args).arg(source.join(path)).status().unwrap().success());
    };
    acl(&["-m", "u:nobody:r,g:nogroup:rw"], "acl");
    acl(&["-d", "-m", "u:nobody:rx"], "shared");
    acl(&["-m", "u:nobody:rwx"], "shared");
    true
}

#[test]
fn extended_attributes_acls_and_capabilities_round_trip() {
    if !tools_present() {
        panic!("getfattr, getfacl and setfacl are needed: apt-get install attr acl");
    }
    let scratch = Scratch::new("xattrs");
    let (repo, source) = (scratch.join("repo"), scratch.join("source"));
    if !make_source(&source) {
        return;
    }
    // A file capability, as root only (CAP_SETFCAP): chown must come before it on restore.
    let capability = is_root() && Command::new("setcap").arg("--help").output().is_ok();
    if capability {
        fs::copy("/bin/true", source.join("capable")).unwrap();
        let status = Command::new("setcap").arg("cap_net_bind_service+ep").arg(source.join("capable")).status();
        assert!(status.unwrap().success());
    }
    init(&repo);
    let first = json(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(first["complete"], true, "{first}");

    let target = scratch.join("restored");
    let restored = json(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(restored["summary"]["xattrs_not_restored"], 0, "{restored}");
    assert_same_tree(&source, &target);
    assert_eq!(attributes(&target), attributes(&source));
    assert_eq!(tool(&target, "getfacl", &["-R", "-p"]), tool(&source, "getfacl", &["-R", "-p"]));
    assert_eq!(get(&target.join("plain"), ODD_NAME).unwrap(), b"odd");
    assert_eq!(get(&target.join("plain"), b"user.binary").unwrap(), BINARY);
    assert_eq!(get(&target.join("plain"), b"user.empty").unwrap(), b"");
    assert!(get(&target.join("shared"), b"system.posix_acl_default").is_some());
    if capability {
        assert_eq!(tool(&target, "getcap", &["-r"]), tool(&source, "getcap", &["-r"]));
        assert!(tool(&target, "getcap", &["-r"]).contains("cap_net_bind_service"));
    }
    ok(cairn(&repo).arg("check").arg("--read-data"));
    // A drill restores them and checks each entry has them.
    let drill = json(cairn(&repo).args(["drill", "--scratch"]).arg(scratch.join("drills")));
    assert_eq!(drill["checks_failed"], 0, "{drill}");
    assert!(drill["checks_passed"].as_u64() > Some(5), "{drill}");

    // The tar export carries them too, as GNU tar reads them back with --xattrs.
    let extracted = dump_and_extract(&repo, scratch.path(), &["--xattrs", "--xattrs-include=*", "-p"]);
    assert_eq!(attributes(&extracted), attributes(&source));
    assert_eq!(tool(&extracted, "getfacl", &["-R", "-p"]), tool(&source, "getfacl", &["-R", "-p"]));

    // An attribute-only change moves ctime: the next snapshot reads that file again (and only
    // it) and records the change, which diff calls a metadata change.
    set(&source.join("plain"), b"user.text", b"changed text");
    let second = json(cairn(&repo).arg("snapshot").arg(&source));
    assert_eq!(second["summary"]["files_read"], 1, "{second}");
    let ids = [first["id"].as_str().unwrap(), second["id"].as_str().unwrap()];
    let diff = json(cairn(&repo).arg("diff").args(ids));
    assert_eq!(diff["changes"].as_array().unwrap().len(), 1, "{diff}");
    assert_eq!((&diff["changes"][0]["change"], &diff["changes"][0]["path"]), (&"metadata".into(), &"/plain".into()));
    let again = scratch.join("again");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&again));
    assert_eq!(get(&again.join("plain"), b"user.text").unwrap(), b"changed text");
}

/// Attributes the restoring user may not set (`trusted.*` needs root) are warned of and
/// counted, and everything else restores: the exit code stays 0.
#[test]
fn an_attribute_refused_to_the_restoring_user_is_a_warning() {
    if !is_root() {
        eprintln!("skipped: trusted.* attributes can only be written as root");
        return;
    }
    let scratch = Scratch::new("xattrs-refused");
    let (repo, source, target) = (scratch.join("repo"), scratch.join("source"), scratch.join("target"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"content").unwrap();
    set(&source.join("f"), b"trusted.secret", b"root only");
    set(&source.join("f"), b"user.open", b"anyone's");
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    fs::create_dir_all(&target).unwrap();
    open_up(&target);
    open_up(&repo);
    // The repository's files are its owner's alone (0600, directories 0700): let the other user in.
    assert!(std::process::Command::new("chmod").arg("-R").arg("a+rwX").arg(&repo).status().unwrap().success());
    let output = run(as_unprivileged(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("f: extended attribute trusted.secret not restored: Operation not permitted"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("not restored (warned above): 1 extended attribute"), "{stdout}");
    assert_eq!(fs::read(target.join("f")).unwrap(), b"content");
    assert_eq!(get(&target.join("f"), b"user.open").unwrap(), b"anyone's");
    assert_eq!(get(&target.join("f"), b"trusted.secret"), None);
    // An in-place restore by the same user has nothing left to do: the attribute it can never
    // set here is no difference that would replace the file again and again.
    let plan = run(as_unprivileged(&repo)
        .args(["--json", "restore", "latest", "--in-place", "--dry-run", "--target"])
        .arg(&target));
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        (plan["plan"]["replaced"].as_array().map(Vec::len), &plan["plan"]["unchanged"]),
        (Some(0), &1.into()),
        "{plan}"
    );
}

/// An in-place restore notices an attribute-only difference and restores it, and keeps the
/// attributes of a directory it carries over unchanged.
#[test]
fn in_place_restore_restores_attribute_only_changes() {
    let scratch = Scratch::new("xattrs-in-place");
    let (repo, source) = (scratch.join("repo"), scratch.join("source"));
    if !make_source(&source) {
        return;
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let before = attributes(&source);
    set(&source.join("plain"), b"user.text", b"tampered");
    let plan = json(cairn(&repo).args(["restore", "latest", "--in-place", "--dry-run", "--target"]).arg(&source));
    assert_eq!(plan["plan"]["replaced"], serde_json::json!(["plain"]), "{plan}");
    ok(cairn(&repo).args(["restore", "latest", "--in-place", "--target"]).arg(&source));
    assert_eq!(attributes(&source), before);
    assert_eq!(get(&source.join("shared"), b"user.dir").unwrap(), b"on a directory");
}
