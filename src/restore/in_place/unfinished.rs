//! The mark of a restore into an empty target that has not finished.
//!
//! A restore into an empty (or missing) target writes straight into it: killed half way, it
//! leaves files cut short under their own names, and the target is no longer empty, so the next
//! restore would refuse it and ask for a mode that first takes a safety snapshot of the partial
//! tree. So before it writes anything, such a restore puts [`NAME`] in the target (synced, with
//! the directory) and removes it once every entry is restored. A target holding it (a regular
//! file of the restoring user's, not a link, whose text says what it is) is one a restore did not
//! finish: nobody should take it for whole, and a restore into it again, of any snapshot, goes on
//! as into an empty target, writing every entry anew. A restore that ends with errors keeps it.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use crate::fs_at::{stat_fd, Dir};
use crate::id::Id;

/// The mark's name in the target.
pub const NAME: &str = ".cairn-restore-unfinished";

/// How the mark's text begins.
const SAYS: &[u8] = b"cairn restore: ";

/// A mark this restore put, known by its inode: the snapshot may hold an entry of the same name,
/// restored over it, which is then never removed as the mark. It is kept open, so that its inode
/// is not freed and given to that entry (tmpfs and ext4 hand a freed one out again at once).
pub struct Mark {
    _open: std::fs::File,
    id: (u64, u64),
}

/// Whether `dir` holds the mark of a restore that did not finish. An empty one is a restore's
/// killed before it wrote the text.
pub fn found(dir: &Dir) -> bool {
    let Ok(Some((mut file, st))) = dir.open_regular(NAME.as_bytes()) else { return false };
    // SAFETY: geteuid cannot fail.
    let mine = st.st_uid == unsafe { libc::geteuid() };
    let mut head = [0; SAYS.len()];
    mine && (st.st_size == 0 || file.read_exact(&mut head).is_ok() && head == SAYS)
}

/// Puts the mark in `dir` for a restore of `snapshot`, in place of one a killed restore left,
/// durably before the restore writes anything.
pub fn put(dir: &Dir, snapshot: &Id) -> std::io::Result<Mark> {
    let mut file = dir.create_file(NAME.as_bytes())?;
    let text = format!(
        "cairn restore: snapshot {} is being restored into this directory, which is not whole until this file is \
         gone; restoring into it again finishes it.\n",
        snapshot.to_hex()
    );
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    dir.sync()?;
    let st = stat_fd(file.as_fd())?;
    Ok(Mark { _open: file, id: (st.st_dev, st.st_ino) })
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
