//! The mark of a restore into an empty target that has not finished.
//!
//! A restore into an empty (or missing) target writes straight into it: killed half way, it
//! leaves files cut short under their own names, and the target is no longer empty, so the next
//! restore would refuse it and ask for a mode that first takes a safety snapshot of the partial
//! tree. So before it writes anything, such a restore puts [`NAME`] in the target (synced, with
//! the directory) and removes it once every entry is restored; one that ends with errors keeps
//! it. The mark's text names the snapshot, the `--include` paths (hex) and the target directory
//! (device and inode) it stands for, and the mark file's own birth (or, where the file system
//! records none, when its text was written):
//!
//! ```text
//! cairn restore: snapshot <64 hex digits> is being restored into this directory, ...
//! dir <device>:<inode>
//! born <seconds>.<nanoseconds>     or     written <seconds>.<nanoseconds>
//! include <hex of the path>
//! ```
//!
//! A mark is a regular file of the restoring user's with one name, whose text is that of a mark
//! put in this very directory as this very file: a copy of a mark (captured by a snapshot and
//! restored, even into the same directory, or into one that got the same inode number) is born
//! later than it says, or changed later than its text was written; or an empty file that is the
//! target's only entry (killed before the text was written).
//! A restore of the snapshot it names, without a mode, goes on as into an empty target, writing
//! every entry anew, and removes the mark only if it restored at least what the mark stands for
//! (no `--include`, or paths that hold those, however written). A restore of another snapshot is refused: finishing one
//! snapshot with another would leave a mix of the two.
//!
//! Limit: the mark goes as soon as the last entry is written, not once the file system has it on
//! disk (cairn does not flush a restore into an empty target, as restic and borg do not): after a
//! power cut right after a restore, files the kernel had not yet written back may be short with
//! the mark already gone.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use crate::fs_at::{stat_fd, Dir};
use crate::id::{from_hex, to_hex, Id};

/// The mark's name in the target.
pub const NAME: &str = ".cairn-restore-unfinished";

/// How the mark's text begins.
const SAYS: &str = "cairn restore: snapshot ";

/// A mark's text is at most this long (a mark with thousands of `--include` paths is not one).
const MOST: u64 = 1 << 20;

/// Seconds between the time a mark's text records and its file's last change, at most, where
/// the file system records no birth time.
const WRITTEN_WITHIN: i64 = 5;

/// A time as seconds and nanoseconds.
type Stamp = (i64, u32);

/// The birth time of `file`, if its file system records one, and its last change (ctime).
fn times(file: &std::fs::File) -> Option<(Option<Stamp>, Stamp)> {
    use std::os::fd::AsRawFd;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let mask = libc::STATX_BTIME | libc::STATX_CTIME;
    // SAFETY: a valid descriptor, an empty path with AT_EMPTY_PATH, and room for one statx.
    let done = unsafe { libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, mask, stx.as_mut_ptr()) };
    if done != 0 {
        return None;
    }
    // SAFETY: statx succeeded, so it filled the struct (zeroed before).
    let stx = unsafe { stx.assume_init() };
    let born = (stx.stx_mask & libc::STATX_BTIME != 0).then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec));
    Some((born, (stx.stx_ctime.tv_sec, stx.stx_ctime.tv_nsec)))
}

/// What a mark found in a target stands for.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A restore of this snapshot (full id, hex), of these `--include` paths (none: all of it).
    Restore { snapshot: String, includes: Vec<Vec<u8>> },
    /// An empty mark, alone in the target: the restore was killed before it wrote anything.
    Empty,
}

/// A mark this restore put or finishes, known by its inode: the snapshot may hold an entry of
/// the same name, restored over it, which is then never removed as the mark. It is kept open, so
/// that its inode is not freed and given to that entry (tmpfs and ext4 hand a freed one out again
/// at once).
pub struct Mark {
    _open: std::fs::File,
    id: (u64, u64),
}

/// The mark of a restore that did not finish in `dir`, if it holds one.
pub fn found(dir: &Dir) -> Option<Found> {
    let (mut file, st) = dir.open_regular(NAME.as_bytes()).ok()??;
    // SAFETY: geteuid cannot fail.
    if st.st_uid != unsafe { libc::geteuid() } || st.st_nlink != 1 || st.st_size as u64 > MOST {
        return None;
    }
    if st.st_size == 0 {
        let names = dir.names().ok()?;
        return (names.len() == 1).then_some(Found::Empty);
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    let snapshot = Id::from_hex(lines.next()?.strip_prefix(SAYS)?.get(..64)?)?.to_hex();
    let here = stat_fd(dir.as_fd()).ok()?;
    if lines.next()? != format!("dir {}:{}", here.st_dev, here.st_ino) {
        return None;
    }
    let (born, changed) = times(&file)?;
    let this_file = match lines.next()?.split_once(' ')? {
        ("born", at) => born.is_some_and(|born| at == format!("{}.{:09}", born.0, born.1)),
        // Written (and synced) at once after that time; a copy is changed when it is made.
        ("written", at) => {
            let (sec, nsec) = at.split_once('.')?;
            let at = (sec.parse::<i64>().ok()?, nsec.parse::<u32>().ok()?);
            // A coarse clock may stamp the change a tick before the time taken just ahead of it.
            born.is_none() && changed.0 + 1 >= at.0 && changed.0 <= at.0 + WRITTEN_WITHIN
        }
        _ => false,
    };
    if !this_file {
        return None;
    }
    let includes = lines.map(|line| line.strip_prefix("include ").and_then(from_hex)).collect::<Option<Vec<_>>>()?;
    Some(Found::Restore { snapshot, includes })
}

/// Puts the mark in `dir` for a restore of `snapshot` (`includes`: its `--include` paths), in
/// place of an empty one a killed restore left, durably before the restore writes anything. On
/// a failure it leaves none.
pub fn put(dir: &Dir, snapshot: &Id, includes: &[Vec<u8>]) -> std::io::Result<Mark> {
    let here = stat_fd(dir.as_fd())?;
    let mut file = dir.create_file(NAME.as_bytes())?;
    let written = (|| {
        let born = match times(&file) {
            Some((Some((sec, nsec)), _)) => format!("born {sec}.{nsec:09}"),
            _ => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                format!("written {}.{:09}", now.as_secs(), now.subsec_nanos())
            }
        };
        let mut text = format!(
            "{SAYS}{} is being restored into this directory, which is not whole until this file is gone; \
             restoring that snapshot into it again finishes it.\ndir {}:{}\n{born}\n",
            snapshot.to_hex(),
            here.st_dev,
            here.st_ino
        );
        for path in includes {
            text.push_str(&format!("include {}\n", to_hex(path)));
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        dir.sync()?;
        stat_fd(file.as_fd())
    })();
    match written {
        Ok(st) => Ok(Mark { _open: file, id: (st.st_dev, st.st_ino) }),
        Err(e) => {
            let _ = dir.remove_non_dir(NAME.as_bytes());
            Err(e)
        }
    }
}

/// The mark in `dir` that a restore finishing it will remove ([`found`] said it is one).
pub fn open(dir: &Dir) -> std::io::Result<Mark> {
    match dir.open_regular(NAME.as_bytes())? {
        Some((file, st)) => Ok(Mark { _open: file, id: (st.st_dev, st.st_ino) }),
        None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "the mark is gone")),
    }
}

impl Mark {
    /// Removes the mark from `dir`, where the restore it stood for has finished; an entry of the
    /// snapshot restored over it stays.
    pub fn remove(self, dir: &Dir) -> std::io::Result<()> {
        match dir.stat(NAME.as_bytes()) {
            Ok(st) if (st.st_dev, st.st_ino) == self.id => dir.remove_non_dir(NAME.as_bytes()),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_read_back_only_in_its_own_directory() {
        let root = std::env::temp_dir().join(format!("cairn-mark-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (dir_a, dir_b) = (Dir::open(&a).unwrap(), Dir::open(&b).unwrap());
        let id = Id::of(b"snapshot");
        let includes = vec![b"etc/app".to_vec(), b"odd\nname".to_vec()];
        put(&dir_a, &id, &includes).unwrap();
        let wanted = Found::Restore { snapshot: id.to_hex(), includes };
        assert_eq!(found(&dir_a), Some(wanted));
        // Copied back into its own directory (a snapshot of the target, restored there), it is
        // another file, born later than it says.
        let text = std::fs::read(a.join(NAME)).unwrap();
        std::fs::remove_file(a.join(NAME)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        std::fs::write(a.join(NAME), &text).unwrap();
        let copied = found(&dir_a);
        let born = String::from_utf8_lossy(&text).contains("\nborn ");
        assert!(copied.is_none() || !born, "{copied:?}");
        // Copied elsewhere (a snapshot of the target, restored), it is no mark there.
        std::fs::copy(a.join(NAME), b.join(NAME)).unwrap();
        assert_eq!(found(&dir_b), None);
        // Empty: a mark only when alone.
        std::fs::write(b.join(NAME), b"").unwrap();
        assert_eq!(found(&dir_b), Some(Found::Empty));
        std::fs::write(b.join("data"), b"the user's").unwrap();
        assert_eq!(found(&dir_b), None);
        // Damaged text.
        std::fs::write(a.join(NAME), format!("{SAYS}zz")).unwrap();
        assert_eq!(found(&dir_a), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
