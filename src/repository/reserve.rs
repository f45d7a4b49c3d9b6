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

/// The reserve's size for an index of `index_bytes` in a repository whose packs are at most
/// `pack_bytes`: what a prune needs beside what it repacks ([`prune_needs`]) and room to repack
/// one pack (so that a prune on a full disk can always free the dead part of one), rounded up
/// to [`STEP`].
pub fn target(index_bytes: u64, pack_bytes: u64) -> u64 {
    (prune_needs(index_bytes) + pack_bytes).div_ceil(STEP) * STEP
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

/// The reserve's first bytes: a file by its name without them is not cairn's and is left alone.
pub const MAGIC: &[u8; 8] = b"CAIRNRSV";

/// Room a forget needs: its lock file, its audit record, the manifests it writes (`tag` copies).
pub const FORGET_NEEDS: u64 = 1 << 20;

/// Room a prune needs beside what it repacks, for an index of `index_bytes`: its new index files
/// and [`FORGET_NEEDS`] (what [`target`] sets aside, unrounded).
pub fn prune_needs(index_bytes: u64) -> u64 {
    index_bytes + index_bytes / 8 + FORGET_NEEDS
}

/// The reserve of the repository at `root`, if there is one and it is cairn's: a plain file of
/// one name that this user owns and that starts with [`MAGIC`], opened for appending without
/// following a symlink, with the bytes it holds on disk (a file cut longer than it was written
/// holds only what was written). `Ok(None)` when there is none; an error when something else is
/// there, which is never written to or removed.
fn open(root: &Path) -> Result<Option<(File, u64)>> {
    use std::os::unix::fs::FileExt;
    let path = root.join(NAME);
    let not_ours =
        |why: &str| Err(Error::Invalid(format!("{}: {why}: not cairn's reserve, left alone", path.display())));
    let file = match OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return not_ours("a symlink"),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
    if !meta.file_type().is_file() {
        return not_ours("not a plain file");
    }
    // Another name of a file (a hard link planted in a repository others may write to) or
    // another user's file: appending would write into it, removing it would free nothing.
    // SAFETY: geteuid cannot fail.
    if meta.nlink() != 1 || meta.uid() != unsafe { libc::geteuid() } {
        return not_ours("another name of a file, or another user's file");
    }
    let mut magic = [0u8; 8];
    if file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
        return not_ours("it does not start as the reserve does");
    }
    Ok(Some((file, meta.len().min(meta.blocks() * 512))))
}

/// Makes the reserve of the repository at `root` as large as `target`, only where the file system
/// keeps at least `target` free beside it: the reserve never takes the last of a disk. Its bytes
/// are random, so that a compressing or deduplicating file system really sets them aside.
pub fn keep(root: &Path, target: u64) -> Result<Kept> {
    grow(root, target, target)
}

/// Makes the reserve as large as `target` where `beside` bytes stay free after.
fn grow(root: &Path, target: u64, beside: u64) -> Result<Kept> {
    let path = root.join(NAME);
    let found = open(root)?;
    let have = found.as_ref().map_or(0, |(_, have)| *have);
    if have >= target {
        return Ok(Kept::Already(have));
    }
    let Some(space) = crate::disk::space(root) else {
        return Ok(Kept::NoRoom { free: 0, need: target - have + beside });
    };
    let need = (target - have) + beside;
    if space.free < need {
        return Ok(Kept::NoRoom { free: space.free, need });
    }
    let (mut file, made) = match found {
        Some((file, _)) => (file, false),
        None => match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(crate::backend::local::FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => (file, true),
            // Made by another process meanwhile: its turn.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Kept::Busy),
            Err(e) => return Err(Error::io(&path, e)),
        },
    };
    // SAFETY: a valid descriptor; the lock goes with it when the file is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(Kept::Busy),
            _ => Err(Error::io(&path, e)),
        };
    }
    // Read again under the lock: another process may have grown it meanwhile. What the file
    // holds beyond what it was written with (cut longer) is cut off first.
    let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
    let have = if made { 0 } else { meta.len().min(meta.blocks() * 512) };
    if have >= target {
        return Ok(Kept::Already(have));
    }
    let written = (|| {
        if made || meta.len() < MAGIC.len() as u64 {
            file.set_len(0)?;
            file.write_all(MAGIC)?;
        } else if meta.len() > have {
            file.set_len(have.max(MAGIC.len() as u64))?;
        }
        let len = file.metadata()?.len();
        fill(&mut file, target.saturating_sub(len))
    })();
    if let Err(e) = written {
        // Room taken by others meanwhile: give back what was added, never fill the disk.
        let _ = file.set_len(if made { 0 } else { have });
        let _ = file.sync_all();
        if made {
            let _ = std::fs::remove_file(&path);
        }
        return match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Ok(Kept::NoRoom { free: 0, need }),
            _ => Err(Error::io(&path, e)),
        };
    }
    if made {
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
/// Anything else by that name is not the reserve and is left alone ([`open`]).
pub fn release(root: &Path) -> Result<u64> {
    let path = root.join(NAME);
    let Ok(Some((_, had))) = open(root) else { return Ok(0) };
    match std::fs::remove_file(&path) {
        Ok(()) => {
            crate::disk::sync_dir(root)?;
            Ok(had)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Whether a file named like the reserve in a directory is cairn's ([`open`]).
pub fn is_ours(root: &Path) -> bool {
    matches!(open(root), Ok(Some(_)))
}

/// The room a forget or prune has on a local repository's file system.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// Bytes free.
    pub free: u64,
    /// Bytes the reserve holds (0 once released).
    pub reserve: u64,
    /// Bytes this command released.
    pub released: u64,
}

impl Repository {
    /// The reserve's size for this repository now ([`target`]).
    fn target(&self, index_bytes: u64) -> u64 {
        let pack = self.config.pack_target_size as u64 + self.config.chunker.max_size as u64;
        target(index_bytes, pack)
    }

    /// The bytes of the files of its index; `None` on an object store.
    fn index_bytes(&self) -> Result<Option<u64>> {
        if self.backend.disk_path().is_none() {
            return Ok(None);
        }
        Ok(Some(self.backend.list(super::FileKind::Index.dir())?.iter().map(|(_, len)| len).sum()))
    }

    /// Sets the reserve aside, or grows it with the index, where there is room ([`keep`]);
    /// `None` on an object store.
    pub fn keep_reserve(&self) -> Result<Option<Kept>> {
        let (Some(root), Some(index)) = (self.backend.disk_path(), self.index_bytes()?) else { return Ok(None) };
        keep(&root, self.target(index)).map(Some)
    }

    /// What a prune needs beside what it repacks ([`prune_needs`]); 0 on an object store.
    pub fn prune_needs(&self) -> Result<u64> {
        Ok(self.index_bytes()?.map_or(0, prune_needs))
    }

    /// The room on this local repository's file system, releasing the reserve when fewer than
    /// `need` bytes are free: what a forget or prune must write before it deletes
    /// ([`FORGET_NEEDS`], [`Repository::prune_needs`]). `None` on an object store, or where the
    /// free space cannot be read.
    pub fn make_room(&self, need: u64, before: Option<Room>) -> Result<Option<Room>> {
        let Some(root) = self.backend.disk_path() else { return Ok(None) };
        let Some(space) = crate::disk::space(&root) else { return Ok(None) };
        let reserve = open(&root).ok().flatten().map_or(0, |(_, have)| have);
        let mut room = Room { free: space.free, reserve, released: before.map_or(0, |b| b.released) };
        if space.free < need && reserve > 0 {
            let released = release(&root)?;
            room = Room { free: space.free + released, reserve: 0, released: room.released + released };
        }
        Ok(Some(room))
    }

    /// After a forget or prune that released the reserve (`released` bytes): sets it aside again
    /// as [`keep`] does, or, where the file system lacks the room that asks, as large as it was,
    /// or as what is free if less: what the command did not use is the reserve again, for the
    /// next command on a full disk.
    pub fn restore_reserve(&self, released: u64) -> Result<Option<Kept>> {
        let (Some(root), Some(index)) = (self.backend.disk_path(), self.index_bytes()?) else { return Ok(None) };
        let target = self.target(index);
        match keep(&root, target)? {
            // The command's audit record and lock file took a few pages of it: what is free.
            Kept::NoRoom { free, .. } if released > 0 && free / 4096 * 4096 > MAGIC.len() as u64 => {
                grow(&root, released.min(target).min(free / 4096 * 4096), 0).map(Some)
            }
            kept => Ok(Some(kept)),
        }
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
        let pack = 20 << 20;
        assert_eq!(target(0, pack), 6 * STEP);
        assert_eq!(target(10 << 20, pack), 9 * STEP);
        for index in [0, 1, 1 << 20, 100 << 20, 5 << 30] {
            let t = target(index, pack);
            assert!(
                t % STEP == 0 && t >= prune_needs(index) + pack && t < prune_needs(index) + pack + STEP,
                "{index}: {t}"
            );
        }
    }

    #[test]
    fn it_is_made_of_random_bytes_grown_and_released() {
        let root = scratch("grow");
        assert_eq!(keep(&root, STEP).unwrap(), Kept::Grown(STEP));
        let bytes = std::fs::read(root.join(NAME)).unwrap();
        assert_eq!(bytes.len() as u64, STEP);
        assert_eq!(&bytes[..8], MAGIC);
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

    /// A reserve cut longer than it was written (sparse) counts what it holds, and grows by
    /// writing the rest.
    #[test]
    fn a_reserve_cut_longer_counts_what_it_holds() {
        let root = scratch("sparse");
        keep(&root, STEP).unwrap();
        std::fs::OpenOptions::new().write(true).open(root.join(NAME)).unwrap().set_len(1 << 40).unwrap();
        match keep(&root, 2 * STEP).unwrap() {
            Kept::Grown(n) => assert_eq!(n, 2 * STEP),
            other => panic!("{other:?}"),
        }
        let meta = std::fs::metadata(root.join(NAME)).unwrap();
        assert_eq!(meta.len(), 2 * STEP, "the hole was cut off and the rest written");
        assert_eq!(release(&root).unwrap(), 2 * STEP);
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

    /// A file by its name that cairn did not make (a user's own, a hard link to another file, a
    /// symlink: a hostile or careless hand) is never written into, followed or removed.
    #[test]
    fn what_cairn_did_not_make_is_left_alone() {
        let root = scratch("others");
        let victim = root.join("victim");
        type Plant<'a> = (&'a str, &'a dyn Fn(&Path));
        let plants: [Plant; 3] = [
            ("own file", &|at| std::fs::write(at, b"my notes").unwrap()),
            ("hard link", &|at| std::fs::hard_link(&victim, at).unwrap()),
            ("symlink", &|at| std::os::unix::fs::symlink(&victim, at).unwrap()),
        ];
        for (what, plant) in plants {
            std::fs::write(&victim, b"keep me").unwrap();
            plant(&root.join(NAME));
            let before = std::fs::read(root.join(NAME)).unwrap();
            assert!(keep(&root, STEP).unwrap_err().to_string().contains("left alone"), "{what}");
            assert_eq!(release(&root).unwrap(), 0, "{what}");
            assert!(!is_ours(&root), "{what}");
            assert_eq!(std::fs::read(root.join(NAME)).unwrap(), before, "{what}");
            assert_eq!(std::fs::read(&victim).unwrap(), b"keep me", "{what}");
            std::fs::remove_file(root.join(NAME)).unwrap();
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
