//! Restoring an SQLite database: written and checked in a private directory beside its
//! destination, then moved over the destination in one rename.
//!
//! A database is never written in place: a failed or damaged restore must leave the existing
//! database as it was, so the new one is written whole, fsynced and `PRAGMA integrity_check`ed
//! first. Where it waits matters. A directory below the target may be writable by others (one
//! that existed before the restore), and whatever stands under a name there can be swapped
//! between two calls that use the name: with a temporary file beside the destination, a racing
//! writer replaced it with a symlink to a database of its own, which was checked in its place
//! and renamed over the destination (issue 20, the review of item 2). So the file is written in
//! a directory that restore creates beside the destination and that nobody but its user can
//! change ([`Dir::make_private_dir`]). SQLite opens it there through that directory's
//! descriptor ([`Dir::proc_path`]), and the rename takes it from there ([`Dir::move_to`]): it
//! is the file restore wrote, checked by device and inode before and after each step, whatever
//! happens to the private directory's name outside.
//!
//! The steps and what a crash between them leaves: store-format/tree.md, "Restoring databases".

use std::collections::HashSet;
use std::fs::File;
use std::io::{Error, ErrorKind};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use super::Restorer;
use crate::format::tree::Node;
use crate::fs_at::{is_dir, is_file, stat_fd, Dir, Place};
use crate::id::Id;
use crate::source::sqlite;

/// What private directories are named after: `.<name>.cairn-restore-<r>` beside `<name>`.
const MARK: &[u8] = b".cairn-restore-";

/// Added to an old companion's name while it waits in the private directory: not `<name>-wal`,
/// so SQLite never pairs it with the new database beside it.
const SET_ASIDE: &[u8] = b".old";

/// `.<name>.cairn-restore-<r>` (`<r>`: 8 random hex digits): hidden beside the database
/// `<name>`, and named after it, so whoever finds one left by a killed restore knows what it is.
fn staging_name(database: &[u8]) -> Vec<u8> {
    let random = Id(crate::id::random_bytes()).short();
    [b".", database, MARK, random.as_bytes()].concat()
}

/// Whether `name` is that of a private directory for `database`: `.<database>.cairn-restore-`
/// and 8 hex digits.
fn is_staging_name(name: &[u8], database: &[u8]) -> bool {
    let prefix = [b".", database, MARK].concat();
    name.strip_prefix(prefix.as_slice())
        .is_some_and(|random| random.len() == 8 && random.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Whether `name` may be that of a private directory for some database: restore notes the
/// directories it makes under such names ([`Restorer::note_made_dir`]) so that none is ever taken
/// for a leftover.
pub(super) fn may_be_staging(name: &[u8]) -> bool {
    name.first() == Some(&b'.') && name.windows(MARK.len()).any(|w| w == MARK)
}

/// Takes `dir`'s lock, exclusive, waiting for it if `wait`; whether it was taken. A restore holds
/// the lock of its private directory as long as it uses it, and the kernel drops it when the
/// restore ends however it ends (`kill -9` too). Another restore looking for leftovers holds it
/// for a moment only, so a restore that made the directory waits for it.
fn lock(dir: &Dir, wait: bool) -> bool {
    let how = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    // SAFETY: plain syscall on a valid descriptor.
    unsafe { libc::flock(dir.as_fd().as_raw_fd(), how) == 0 }
}

/// Removes the private directories that killed restores of `database` left in `parent` (all but
/// `ours`) and returns their names. Called once the new database is in place: whatever they hold
/// then belongs to a database that is gone (a new one never moved in, or the old companions of
/// one replaced since). Only what surely is such a leftover: named for this database; not one
/// this restore made (`made`: a directory of that name restored from the snapshot); not locked
/// by a restore still running ([`lock`]); private to this user; holding nothing but regular files
/// under the names a restore gives them, and something (an empty one made since this restore
/// began, `started` in Unix seconds with a second of slack for a coarse clock, may be another
/// restore's between making and locking it). One listing of `parent` per database restored:
/// databases are few.
fn remove_leftovers(
    parent: &Dir,
    database: &[u8],
    ours: &[u8],
    started: i64,
    made: &HashSet<(u64, u64)>,
) -> Vec<Vec<u8>> {
    let Ok(names) = parent.names() else { return Vec::new() };
    let known = [database.to_vec(), [database, b"-wal", SET_ASIDE].concat(), [database, b"-shm", SET_ASIDE].concat()];
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut removed = Vec::new();
    for name in names.into_iter().filter(|name| name != ours && is_staging_name(name, database)) {
        let Ok(dir) = parent.open_dir(&name) else { continue };
        let Ok(st) = stat_fd(dir.as_fd()) else { continue };
        if st.st_uid != me || st.st_mode & 0o077 != 0 || made.contains(&(st.st_dev, st.st_ino)) || !lock(&dir, false) {
            continue;
        }
        let Ok(inside) = dir.names() else { continue };
        if !inside.iter().all(|entry| known.contains(entry) && dir.stat(entry).is_ok_and(|s| is_file(&s))) {
            continue;
        }
        if inside.is_empty() && st.st_ctime >= started - 1 {
            continue;
        }
        let emptied = inside.iter().all(|entry| dir.remove_non_dir(entry).is_ok());
        let same = parent.stat(&name).is_ok_and(|now| (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino));
        if emptied && same && parent.remove_dir(&name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// A private directory beside the destination of a database: holds the new database (under the
/// destination's name) until it is moved out, and the old database's `-wal` and `-shm` while it
/// is replaced. Removed when dropped, however the restore of the database ended, unless an old
/// companion could not be put back (that is reported, with this directory's path).
struct Staging<'a> {
    /// The directory of the destination, which holds this one.
    parent: &'a Dir,
    /// This directory's name in `parent`, and its (device, inode).
    name: Vec<u8>,
    identity: (u64, u64),
    dir: Dir,
    /// The database's name, here and in `parent`.
    database: &'a [u8],
}

impl<'a> Staging<'a> {
    fn create(parent: &'a Dir, database: &'a [u8]) -> std::io::Result<Staging<'a>> {
        let name = staging_name(database);
        let dir = parent.make_private_dir(&name)?;
        // Held until it is closed, when this is dropped: no other restore takes it for a
        // leftover meanwhile. (Where locks are not kept, no restore can take one either.)
        lock(&dir, true);
        let st = stat_fd(dir.as_fd())?;
        Ok(Staging { parent, name, identity: (st.st_dev, st.st_ino), dir, database })
    }

    /// Whether the new database here is still `file` (same device and inode).
    fn holds(&self, file: &File) -> std::io::Result<()> {
        let (listed, open) = (self.dir.stat(self.database)?, stat_fd(file.as_fd())?);
        if (listed.st_dev, listed.st_ino) != (open.st_dev, open.st_ino) {
            return Err(Error::other("the restored file was replaced in restore's private directory"));
        }
        Ok(())
    }

    /// `PRAGMA integrity_check` of the new database, `file`, as SQLite reads it here; "ok" when
    /// it is sound.
    fn integrity_check(&self, file: &File) -> String {
        let checked = self.holds(file).and_then(|_| self.dir.proc_path(self.database)).map(|path| {
            let verdict = sqlite::integrity_check_verbatim(&path);
            // Only this user can swap it; checked again all the same.
            self.holds(file).map_or_else(|e| e.to_string(), |_| verdict)
        });
        checked.unwrap_or_else(|e| e.to_string())
    }

    /// Moves the new database, `file`, over the destination (a file or symlink there is
    /// replaced; a directory fails it). The old database's `-wal` and `-shm` are moved in here
    /// first, because SQLite would replay a stale WAL into the new file, and deleted once the
    /// new database is in place; if it cannot be, they are put back, and the old database stays
    /// exactly as it was. `shown`: this directory's path, for messages. `only_new`: nothing at
    /// the destination is replaced (`AlreadyExists` then).
    fn replace(&self, file: &File, shown: &Path, only_new: bool) -> Result<(), String> {
        let mut set_aside = Vec::new();
        let mut moved = || -> std::io::Result<()> {
            for suffix in [&b"-wal"[..], b"-shm"] {
                let companion = [self.database, suffix].concat();
                match self.parent.stat(&companion) {
                    // Not SQLite's: a directory is left where it is.
                    Ok(st) if is_dir(&st) => {}
                    Ok(_) => {
                        let aside = [&companion, SET_ASIDE].concat();
                        self.parent.move_to(&companion, &self.dir, &aside)?;
                        set_aside.push((companion, aside));
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            self.holds(file)?;
            match only_new {
                true => self.dir.move_new_to(self.database, self.parent, self.database),
                false => self.dir.move_to(self.database, self.parent, self.database),
            }
        };
        if let Err(e) = moved() {
            let mut message = e.to_string();
            for (companion, aside) in &set_aside {
                if let Err(back) = self.dir.move_to(aside, self.parent, companion) {
                    let (companion, aside) = (String::from_utf8_lossy(companion), String::from_utf8_lossy(aside));
                    message += &format!(
                        "; the old {companion} could not be put back ({back}): it is {aside} in {}",
                        shown.display()
                    );
                }
            }
            return Err(message);
        }
        self.parent.sync().map_err(|e| format!("fsync of the directory: {e}"))?;
        for (_, aside) in set_aside {
            let _ = self.dir.remove_non_dir(&aside);
        }
        Ok(())
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // The new database, if it is still here (it failed), then this directory, if it is
        // empty and still under its name: someone who can write in the parent may have moved
        // it away, and what they put there instead is not ours to remove.
        let _ = self.dir.remove_non_dir(self.database);
        if self.parent.stat(&self.name).is_ok_and(|st| (st.st_dev, st.st_ino) == self.identity) {
            let _ = self.parent.remove_dir(&self.name);
        }
    }
}

impl Restorer<'_> {
    /// Writes a database in a private directory beside its destination, checks it, and only
    /// then moves it in place; returns its length. A failure leaves the existing database as it
    /// was.
    pub(super) fn database_file(
        &self,
        node: &Node,
        first: Option<Vec<u8>>,
        chunks: &[Id],
        dir: &Dir,
        place: &Place,
    ) -> Result<u64, String> {
        let staging = Staging::create(dir, &node.name)
            .map_err(|e| format!("creating a private directory to restore the database in: {e}"))?;
        let (file, written) =
            self.write_content(&staging.dir, &node.name, 0o600, first, chunks, node.meta.size, true)?;
        // Checked before its mode is applied: a mode without owner read must not fail it.
        let verdict = staging.integrity_check(&file);
        // A damaged image never replaces a file (nor one that appears meanwhile: it is moved in
        // only where nothing is); where there is none, it is the snapshot's only copy of what the
        // database held (damaged when it was read, or since): it is written, and reported.
        let existing = dir.stat(&node.name).is_ok();
        if verdict != "ok" && existing {
            return Err(format!(
                "restored database fails integrity_check, existing file kept: {verdict} (restore it into an empty \
                 --target to get the snapshot's image as it is)"
            ));
        }
        self.file_metadata(&file, &node.meta, &node.xattrs, || self.shown(place, &node.name))?;
        staging
            .replace(&file, &self.shown(place, &staging.name), verdict != "ok")
            .map_err(|e| format!("replacing the database: {e}"))?;
        let made = self.made_dirs.lock().expect("poisoned").clone();
        for name in remove_leftovers(dir, &node.name, &staging.name, self.started, &made) {
            let shown = self.shown(place, &name);
            self.progress
                .warn(&format!("note: {}: removed, left by an interrupted restore", crate::names::shown_path(&shown)));
        }
        if verdict != "ok" {
            return Err(format!("restored as the snapshot holds it, but it fails integrity_check: {verdict}"));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    fn scratch(name: &str) -> (PathBuf, Dir) {
        let path = std::env::temp_dir().join(format!("cairn-restore-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        let dir = Dir::open(&path).unwrap();
        (path, dir)
    }

    /// The bytes of a small valid database holding `value`.
    fn database(path: &Path, value: &str) -> Vec<u8> {
        let connection = rusqlite::Connection::open(path).unwrap();
        connection.execute_batch("CREATE TABLE t(x)").unwrap();
        connection.execute("INSERT INTO t VALUES (?1)", [value]).unwrap();
        drop(connection);
        std::fs::read(path).unwrap()
    }

    fn names(path: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_private_directory_is_known_by_its_name() {
        let name = staging_name(b"app.db");
        assert!(is_staging_name(&name, b"app.db"));
        assert!(!is_staging_name(&name, b"app"));
        for other in [
            &b".app.db.cairn-restore-1234567"[..],
            b".app.db.cairn-restore-1234567g",
            b".app.db.cairn-restore-12345678.x",
        ] {
            assert!(!is_staging_name(other, b"app.db"), "{}", String::from_utf8_lossy(other));
        }
    }

    /// Someone who can write beside the destination moves the private directory away and plants
    /// a symlink to a database of their own under its name, after the write and again after the
    /// check: the check reads the file restore wrote, the rename moves it, and nothing planted
    /// is removed or followed. A file swapped inside the private directory (only its own user
    /// can) is refused rather than checked.
    #[test]
    fn the_check_and_the_rename_take_the_written_file_only() {
        let (path, parent) = scratch("swap");
        let ours = database(&path.join("ours"), "restored");
        database(&path.join("theirs.db"), "planted");
        std::fs::write(path.join("app.db"), b"old").unwrap();
        let staging = Staging::create(&parent, b"app.db").unwrap();
        let mut file = staging.dir.create_file(b"app.db").unwrap();
        file.write_all(&ours).unwrap();
        let name = path.join(OsStr::from_bytes(&staging.name));
        let moved = path.join("moved");
        std::fs::rename(&name, &moved).unwrap();
        std::os::unix::fs::symlink(path.join("theirs.db"), &name).unwrap();
        assert_eq!(staging.integrity_check(&file), "ok");
        std::fs::remove_file(&name).unwrap();
        std::fs::create_dir(&name).unwrap();
        staging.replace(&file, &name, false).unwrap();
        drop(staging);
        assert_eq!(std::fs::read(path.join("app.db")).unwrap(), ours);
        assert!(std::fs::symlink_metadata(path.join("app.db")).unwrap().is_file());
        assert!(name.is_dir(), "what was planted under the private directory's name stays");
        assert_eq!(names(&moved), Vec::<String>::new(), "the private directory was emptied");

        let staging = Staging::create(&parent, b"app.db").unwrap();
        let mut file = staging.dir.create_file(b"app.db").unwrap();
        file.write_all(&ours).unwrap();
        let inside = path.join(OsStr::from_bytes(&staging.name)).join("app.db");
        std::fs::remove_file(&inside).unwrap();
        std::os::unix::fs::symlink(path.join("theirs.db"), &inside).unwrap();
        assert!(staging.integrity_check(&file).contains("replaced"));
        assert!(staging.replace(&file, &name, false).unwrap_err().contains("replaced"));
        drop(staging);
        assert_eq!(std::fs::read(path.join("app.db")).unwrap(), ours);
        std::fs::remove_dir_all(&path).unwrap();
    }

    /// A rename that fails (a directory at the destination) puts the old `-wal` and `-shm` back
    /// as they were, and the private directory goes; so it does after a success, and the old
    /// companions with it.
    #[test]
    fn a_failed_rename_puts_the_companions_back_and_leaves_nothing_behind() {
        let (path, parent) = scratch("companions");
        let ours = database(&path.join("ours"), "restored");
        std::fs::remove_file(path.join("ours")).unwrap();
        std::fs::create_dir(path.join("app.db")).unwrap();
        std::fs::write(path.join("app.db-wal"), b"old wal").unwrap();
        std::fs::write(path.join("app.db-shm"), b"old shm").unwrap();
        let replace = || {
            let staging = Staging::create(&parent, b"app.db").unwrap();
            let mut file = staging.dir.create_file(b"app.db").unwrap();
            file.write_all(&ours).unwrap();
            staging.replace(&file, Path::new("shown"), false)
        };
        replace().unwrap_err();
        assert_eq!(names(&path), ["app.db", "app.db-shm", "app.db-wal"]);
        assert_eq!(std::fs::read(path.join("app.db-wal")).unwrap(), b"old wal");
        assert_eq!(std::fs::read(path.join("app.db-shm")).unwrap(), b"old shm");

        std::fs::remove_dir(path.join("app.db")).unwrap();
        replace().unwrap();
        assert_eq!(names(&path), ["app.db"]);
        assert_eq!(std::fs::read(path.join("app.db")).unwrap(), ours);
        std::fs::remove_dir_all(&path).unwrap();
    }
}
