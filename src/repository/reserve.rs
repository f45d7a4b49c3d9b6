//! The reserve: room a local repository keeps on its file system for the day that file system is
//! full, so that `forget` and `prune` can still run and free it. Both need to write before they
//! delete (a lock file; a prune its new index files), which a full disk refuses; borg keeps
//! free space back for the same reason. The file, its size and who writes and removes it:
//! store-format/README.md, "The reserve".

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::Repository;
use crate::error::{Error, Result};

/// Its name, in the repository's root.
pub const NAME: &str = "reserve";

/// Its size is a multiple of this.
pub const STEP: u64 = 4 << 20;

/// The reserve's size for an index of `index_bytes`: a prune's new index files (at most the
/// index there is now, and an eighth more for how they are grouped), its lock file and audit
/// record, rounded up to [`STEP`].
pub fn target(index_bytes: u64) -> u64 {
    (index_bytes + index_bytes / 8 + STEP).div_ceil(STEP) * STEP
}

/// What [`keep`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// It was large enough already.
    Already(u64),
    /// It was made, or grown, to this size.
    Grown(u64),
    /// The file system has too little room to set it aside and keep as much free beside it.
    NoRoom { free: u64, need: u64 },
    /// Another process is writing it.
    Busy,
}

/// The reserve of the repository at `root` now: its size, 0 when there is none.
fn size(root: &Path) -> Result<u64> {
    let path = root.join(NAME);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_file() => Ok(meta.size()),
        Ok(_) => Err(Error::Invalid(format!("{} is not a plain file: cairn leaves it alone", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Makes the reserve of the repository at `root` as large as `target`, only where the file system
/// keeps at least `target` free beside it: the reserve never takes the last of a disk. Its bytes
/// are random, so that a compressing or deduplicating file system really sets them aside.
pub fn keep(root: &Path, target: u64) -> Result<Kept> {
    let path = root.join(NAME);
    let have = size(root)?;
    if have >= target {
        return Ok(Kept::Already(have));
    }
    let Some(space) = crate::disk::space(root) else { return Ok(Kept::NoRoom { free: 0, need: target * 2 - have }) };
    let need = (target - have) + target;
    if space.free < need {
        return Ok(Kept::NoRoom { free: space.free, need });
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(crate::backend::local::FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
    // Another name of a file (a hard link planted in a repository others may write to) or
    // another user's file is not the reserve: appending would write into it.
    // SAFETY: geteuid cannot fail.
    if !meta.file_type().is_file() || meta.nlink() != 1 || meta.uid() != unsafe { libc::geteuid() } {
        return Err(Error::Invalid(format!(
            "{} is not a plain file of its own that this user owns: cairn leaves it alone",
            path.display()
        )));
    }
    // SAFETY: a valid descriptor; the lock goes with it when the file is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(Kept::Busy),
            _ => Err(Error::io(&path, e)),
        };
    }
    // Read again under the lock: another process may have grown it meanwhile.
    let have = file.metadata().map_err(|e| Error::io(&path, e))?.size();
    if have >= target {
        return Ok(Kept::Already(have));
    }
    if let Err(e) = fill(&mut file, target - have) {
        // Room taken by others meanwhile: give back what was added, never fill the disk.
        let _ = file.set_len(have);
        let _ = file.sync_all();
        return match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Ok(Kept::NoRoom { free: 0, need }),
            _ => Err(Error::io(&path, e)),
        };
    }
    if have == 0 {
        crate::disk::sync_dir(root)?;
    }
    Ok(Kept::Grown(target))
}

/// Appends `len` random bytes to `file` and syncs it.
fn fill(file: &mut File, len: u64) -> std::io::Result<()> {
    let mut random = blake3::Hasher::new_keyed(&crate::id::random_bytes()).finalize_xof();
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        random.fill(&mut block[..n]);
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Removes the reserve of the repository at `root`; the bytes that frees (0 when there was none).
/// Anything else by that name (a symlink, a directory) is not the reserve and is left alone.
pub fn release(root: &Path) -> Result<u64> {
    let path = root.join(NAME);
    let Ok(had) = size(root) else { return Ok(0) };
    match std::fs::remove_file(&path) {
        Ok(()) => {
            crate::disk::sync_dir(root)?;
            Ok(had)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A full disk, made room on by [`make_room`].
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// Bytes free before.
    pub free: u64,
    /// Bytes the reserve held.
    pub released: u64,
}

impl Repository {
    /// The reserve's size for this repository now ([`target`]); `None` on an object store.
    fn reserve_target(&self) -> Result<Option<u64>> {
        if self.backend.disk_path().is_none() {
            return Ok(None);
        }
        let index: u64 = self.backend.list(super::FileKind::Index.dir())?.iter().map(|(_, len)| len).sum();
        Ok(Some(target(index)))
    }

    /// Sets the reserve aside, or grows it with the index, where there is room ([`keep`]);
    /// `None` on an object store.
    pub fn keep_reserve(&self) -> Result<Option<Kept>> {
        let (Some(root), Some(target)) = (self.backend.disk_path(), self.reserve_target()?) else { return Ok(None) };
        keep(&root, target).map(Some)
    }

    /// For `forget` and `prune`, before they take their lock: when the repository's file system
    /// lacks room for the reserve with as much free beside it (what [`keep`] asks; with the
    /// reserve whole, less free than its size), removes the reserve so that they can write what
    /// they must before they delete. `None` when there is room (or on an object store). A
    /// prune after a forget that released it finds it missing and the disk still short.
    pub fn make_room(&self) -> Result<Option<Room>> {
        let (Some(root), Some(target)) = (self.backend.disk_path(), self.reserve_target()?) else { return Ok(None) };
        let Some(space) = crate::disk::space(&root) else { return Ok(None) };
        let have = size(&root).unwrap_or(0).min(target);
        if space.free >= (target - have) + target {
            return Ok(None);
        }
        Ok(Some(Room { free: space.free, released: release(&root)? }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cairn-reserve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_target_covers_the_index_in_steps() {
        assert_eq!(target(0), STEP);
        assert_eq!(target(1), 2 * STEP);
        assert_eq!(target(10 << 20), 4 * STEP);
        for index in [0, 1, 1 << 20, 100 << 20, 5 << 30] {
            let t = target(index);
            assert!(t % STEP == 0 && t >= index + index / 8 + STEP, "{index}: {t}");
        }
    }

    #[test]
    fn it_is_made_of_random_bytes_grown_and_released() {
        let root = scratch("grow");
        assert_eq!(keep(&root, STEP).unwrap(), Kept::Grown(STEP));
        let bytes = std::fs::read(root.join(NAME)).unwrap();
        assert_eq!(bytes.len() as u64, STEP);
        let compressed = zstd::bulk::compress(&bytes, 3).unwrap();
        assert!(compressed.len() as u64 > STEP * 99 / 100, "compressible: {}", compressed.len());
        assert_eq!(keep(&root, STEP).unwrap(), Kept::Already(STEP));
        assert_eq!(keep(&root, 2 * STEP).unwrap(), Kept::Grown(2 * STEP));
        assert_eq!(std::fs::read(root.join(NAME)).unwrap()[..STEP as usize], bytes[..], "grown by appending");
        assert_eq!(release(&root).unwrap(), 2 * STEP);
        assert!(!root.join(NAME).exists());
        assert_eq!(release(&root).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn it_asks_for_as_much_free_beside_it() {
        let root = scratch("room");
        let free = crate::disk::space(&root).unwrap().free;
        let huge = (free / STEP) * STEP;
        match keep(&root, huge).unwrap() {
            Kept::NoRoom { need, .. } => assert_eq!(need, 2 * huge),
            other => panic!("{other:?}"),
        }
        assert!(!root.join(NAME).exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A hard link named `reserve` to another file is never written into.
    #[test]
    fn another_name_of_a_file_is_never_written_into() {
        let root = scratch("hardlink");
        let victim = root.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::fs::hard_link(&victim, root.join(NAME)).unwrap();
        assert!(keep(&root, STEP).unwrap_err().to_string().contains("leaves it alone"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A symlink named `reserve` (a hostile or careless hand) is never written through, and
    /// releasing removes the link, not what it points to.
    #[test]
    fn a_symlink_by_its_name_is_never_followed() {
        let root = scratch("symlink");
        let victim = root.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, root.join(NAME)).unwrap();
        assert!(keep(&root, STEP).unwrap_err().to_string().contains("not a plain file"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(release(&root).unwrap(), 0, "a symlink is not the reserve");
        assert!(root.join(NAME).is_symlink());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(&root);
    }
}
