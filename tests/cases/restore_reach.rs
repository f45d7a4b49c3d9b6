//! What a restore reaches beyond the entries it writes: it never changes a file outside the
//! target through a hard link planted in it (`--skip-identical` writes such a file anew rather
//! than keep it), and the directories it creates for the parents of an `--include` are private
//! (0700), so a file the snapshot kept behind a closed directory is not
//! opened to everyone on the way out.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::*;

const NOBODY: u32 = 65534;

/// Owner, group, mode (with its special bits), link count and mtime of `path`.
fn stat(path: &Path) -> (u32, u32, u32, u64, (i64, i64)) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777, meta.nlink(), (meta.mtime(), meta.mtime_nsec()))
}

/// The hostile tester's case: a snapshot of `app/x` and `app/y`, one setuid file with two names;
/// then `app/x` is replaced by a hard link to a file outside with the very content. A restore
/// with `--skip-identical` once took that inode for the file, set the snapshot's owner, setuid
/// mode and mtime on it, and linked `app/y` to it. The outside file must keep all of its
/// metadata and links; the target gets a file of its own with both names.
#[test]
fn skip_identical_never_changes_a_file_outside_through_a_hard_link() {
    let scratch = Scratch::new("outside-link");
    let (app, outside, repo) = (scratch.join("app"), scratch.join("outside"), scratch.join("repo"));
    fs::create_dir_all(&app).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(app.join("x"), b"payload\n").unwrap();
    fs::hard_link(app.join("x"), app.join("y")).unwrap();
    fs::set_permissions(app.join("x"), fs::Permissions::from_mode(0o4755)).unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&app));

    fs::remove_file(app.join("x")).unwrap();
    fs::remove_file(app.join("y")).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, b"payload\n").unwrap();
    if is_root() {
        std::os::unix::fs::chown(&victim, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&victim, 1_000_000_000, 7);
    fs::hard_link(&victim, app.join("x")).unwrap();
    let before = stat(&victim);
    assert_eq!(before.3, 2);

    let report = json(cairn(&repo).args(["restore", "latest", "--skip-identical", "--target"]).arg(&app));
    assert_eq!(report["summary"]["files_unchanged"], 0, "a file with a link outside is not kept: {report}");
    let (uid, gid, mode, links, mtime) = stat(&victim);
    assert_eq!((uid, gid, mode, mtime), (before.0, before.1, before.2, before.4), "the outside file was changed");
    assert_eq!(links, 1, "the target's names were linked to the outside file");
    let (x, y) = (fs::metadata(app.join("x")).unwrap(), fs::metadata(app.join("y")).unwrap());
    assert_eq!((x.dev(), x.ino()), (y.dev(), y.ino()), "x and y are one file again");
    assert_ne!(x.ino(), fs::metadata(&victim).unwrap().ino());
    assert_eq!((x.mode() & 0o7777, x.nlink()), (0o4755, 2));
    assert_eq!(fs::read(app.join("y")).unwrap(), b"payload\n");
}

/// A snapshot entry with one name: a target file linked outside is not kept either (it never
/// was), and a file with one name and the same content still is.
#[test]
fn skip_identical_keeps_only_files_with_one_name() {
    let scratch = Scratch::new("one-name");
    let (app, outside, repo) = (scratch.join("app"), scratch.join("outside"), scratch.join("repo"));
    fs::create_dir_all(&app).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(app.join("single"), b"single\n").unwrap();
    fs::write(app.join("kept"), b"kept\n").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&app));
    fs::remove_file(app.join("single")).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, b"single\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(&victim, app.join("single")).unwrap();

    let report = json(cairn(&repo).args(["restore", "latest", "--skip-identical", "--target"]).arg(&app));
    assert_eq!(report["summary"]["files_unchanged"], 1, "{report}");
    assert_eq!(stat(&victim).2, 0o600);
    assert_eq!(stat(&victim).3, 1);
    assert_eq!(fs::read(app.join("single")).unwrap(), b"single\n");
}

/// A private subtree restored through `--include`: the parents restore makes for it are 0700,
/// never the umask's 0755 that would open `private/sub/file` to everyone whom the snapshot's
/// 0700 `private` kept out. A target that already exists keeps its mode.
#[test]
fn the_include_parents_restore_creates_are_private() {
    let scratch = Scratch::new("private-parents");
    let (source, repo) = (scratch.join("src1"), scratch.join("repo"));
    fs::create_dir_all(source.join("private/sub")).unwrap();
    fs::write(source.join("private/sub/file"), b"secret").unwrap();
    for dir in [&source, &source.join("private")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));

    let mode = |path: &Path| fs::symlink_metadata(path).unwrap().mode() & 0o7777;
    // The target is made as `mkdir -p` makes a directory here (the umask's).
    fs::create_dir(scratch.join("probe")).unwrap();
    let made = mode(&scratch.join("probe"));
    let target = scratch.join("r2/deeper");
    ok(cairn(&repo).args(["restore", "latest", "--include", "private/sub", "--target"]).arg(&target));
    assert_eq!(fs::read(target.join("private/sub/file")).unwrap(), b"secret");
    assert_eq!(mode(&target.join("private")), 0o700, "the include's parent restore created");
    assert_eq!((mode(&target), mode(&scratch.join("r2"))), (made, made), "the target and its parent");

    // A whole restore into a new target: what is below it has the snapshot's modes.
    let whole = scratch.join("whole");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&whole));
    assert_eq!(mode(&whole), made);
    assert_eq!(mode(&whole.join("private")), 0o700);

    // An empty target that exists keeps its mode, and so does a parent that exists.
    let open = scratch.join("open");
    fs::create_dir_all(open.join("private")).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o751)).unwrap();
    fs::set_permissions(open.join("private"), fs::Permissions::from_mode(0o750)).unwrap();
    ok(cairn(&repo).args(["restore", "latest", "--overwrite", "--include", "private/sub", "--target"]).arg(&open));
    assert_eq!(mode(&open), 0o751);
    assert_eq!(mode(&open.join("private")), 0o750);
}
