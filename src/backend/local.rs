//! The local directory backend. A put writes `tmp/<random>.tmp`, fsyncs it, hard-links it to its
//! final name (the link fails if the name exists, which makes the put create-only and atomic),
//! removes the temporary name and fsyncs the directory, so the new entry is durable before the
//! put returns. See store-format/README.md, "Writing files".

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::open_packs::OpenPacks;
use super::page_cache::Left;
use super::{Backend, WholeObject};
use crate::disk::sync_dir;
use crate::error::{Error, IoContext, Result};
use crate::host::process_alive;

/// Where files are written before they are synced and renamed into place.
pub(crate) const TMP: &str = "tmp";

pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Creates a directory below the root (and any missing parents), making each new entry
    /// durable in its parent. Mode [`DIR_MODE`].
    pub fn create_dir(&self, key: &str) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mut path = self.root.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
            match fs::DirBuilder::new().mode(DIR_MODE).create(&path) {
                Ok(()) => sync_dir(path.parent().unwrap_or(&self.root))?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Ok(())
    }
}

/// `tmp/<host>-<pid>-<random>.tmp`: the writer is named, so a later run can tell a temporary file
/// whose writer died from one still being written.
fn temp_name() -> String {
    format!(
        "{}-{}-{}.tmp",
        crate::host::hostname(),
        std::process::id(),
        crate::id::Id(crate::id::random_bytes()).short()
    )
}

/// The mode of every file cairn writes into a local repository: its owner's alone, whatever the
/// umask, as restic and borg do. A plain repository's files are the backed-up data, and an
/// encrypted one's key files are what an offline guess at the passphrase needs. Not 0400,
/// though nothing rewrites a file: `rm -r` of a repository would then ask about every file.
pub const FILE_MODE: u32 = 0o600;
/// The mode of the directories cairn creates in (and for) a local repository.
pub const DIR_MODE: u32 = 0o700;

/// Writes a new file (mode [`FILE_MODE`]) and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

thread_local! {
    /// The pack this thread last read a range of (see `get_range`).
    static LAST_READ: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// Packs open for ranged reads (see `get_range`).
static OPEN: std::sync::LazyLock<std::sync::Mutex<OpenPacks>> = std::sync::LazyLock::new(Default::default);

/// The packs threads have moved on from (by `get_range`): see [`super::page_cache`].
static LEFT: std::sync::LazyLock<std::sync::Mutex<Left>> = std::sync::LazyLock::new(Default::default);

/// A thread moves on from the pack `previous` to `path`: drops what is no longer kept from the
/// page cache.
fn moved(previous: Option<PathBuf>, path: &Path) {
    use std::os::fd::AsRawFd;
    let dropped = LEFT.lock().expect("poisoned").moved(previous, path);
    // Not kept open: a deleted pack's space must be freed. One deleted since has no pages left.
    for file in dropped.into_iter().filter_map(|path| File::open(path).ok()) {
        // SAFETY: a valid descriptor; the advice only drops clean cached pages of the file.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Puts and deletes so far in this process: a file opened before one may have been replaced.
static CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn changed() {
    CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl LocalBackend {
    /// Every file below the directory `dir` (a key) with its length. Subdirectories are listed
    /// in parallel: on a cold cache, reading the 256 directories of `packs/` one after another
    /// waits for the disk 256 times.
    fn list_dir(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        for entry in entries {
            let entry = entry.at(&path)?;
            let key = format!("{dir}/{}", entry.file_name().to_string_lossy());
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted between the directory read and the stat (a released lock, a pruned
                // pack): it is simply not there any more.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(entry.path(), e)),
            };
            if meta.is_dir() {
                subdirs.push(key);
            } else {
                files.push((key, meta.len()));
            }
        }
        let nested: Vec<Vec<(String, u64)>> = subdirs.par_iter().map(|d| self.list_dir(d)).collect::<Result<_>>()?;
        files.extend(nested.into_iter().flatten());
        Ok(files)
    }
}

impl Backend for LocalBackend {
    fn disk_path(&self) -> Option<PathBuf> {
        Some(self.root.clone())
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        fs::read(&path).at(path)
    }

    fn read_once(&self, key: &str, out: &mut WholeObject) -> Result<()> {
        read_whole(&self.path(key), out, true)
    }

    /// Ranged reads come in runs from the same pack (a restore reads a pack's blobs in order) or
    /// move between the same few (a database's pages from months of snapshots), so packs stay
    /// open ([`OpenPacks`]): a million small files are a million reads, not a million opens.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key);
        let changes = CHANGES.load(std::sync::atomic::Ordering::Relaxed);
        let now = std::time::Instant::now();
        let open = OPEN.lock().expect("poisoned").get(&path, changes, now);
        let file = match open {
            Some(file) => file,
            None => {
                let file = std::sync::Arc::new(File::open(&path).at(&path)?);
                OPEN.lock().expect("poisoned").insert(path.clone(), changes, file.clone(), now);
                file
            }
        };
        LAST_READ.with(|last| {
            let mut last = last.borrow_mut();
            if last.as_ref() != Some(&path) {
                moved(last.replace(path.clone()), &path);
            }
        });
        let mut out = vec![0; len as usize];
        let read = file.read_exact_at(&mut out, offset);
        match read {
            Ok(()) => Ok(out),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(Error::corrupt(
                path.display().to_string(),
                format!("truncated: wanted {len} bytes at offset {offset}"),
            )),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key);
        Ok(fs::metadata(&path).at(path)?.len())
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<bool> {
        changed();
        let target = self.path(key);
        let directory = target.parent().unwrap_or(&self.root);
        if target.exists() {
            // Another writer may have linked it without having synced the directory yet: sync it
            // here, so that whatever this caller writes next may rely on it being durable.
            sync_dir(directory)?;
            return Ok(false);
        }
        let temp = self.root.join(TMP).join(temp_name());
        let written = write_synced(&temp, data).or_else(|e| match e.kind() {
            // A copy of the repository that dropped empty directories (git, some sync tools).
            ErrorKind::NotFound => {
                self.create_dir(TMP).map_err(|e| e.into_io()).and_then(|_| write_synced(&temp, data))
            }
            _ => Err(e),
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(Error::io(&temp, e));
        }
        let mut linked = fs::hard_link(&temp, &target);
        if matches!(&linked, Err(e) if e.kind() == ErrorKind::NotFound) {
            let parent = directory.strip_prefix(&self.root).unwrap_or(directory).to_string_lossy().into_owned();
            linked = self.create_dir(&parent).map_err(|e| e.into_io()).and_then(|_| fs::hard_link(&temp, &target));
        }
        let _ = fs::remove_file(&temp);
        let created = match linked {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io(&target, e)),
        };
        sync_dir(directory)?;
        Ok(created)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = self.list_dir(prefix.trim_end_matches('/'))?;
        out.sort();
        Ok(out)
    }

    /// Each file's mtime: set by the clock of this machine (or of the file server) when the file
    /// was written, the one clock every writer of this directory shares.
    fn list_with_times(&self, prefix: &str) -> Result<Vec<(String, u64, Option<i64>)>> {
        let mut out = Vec::new();
        for (key, len) in self.list(prefix)? {
            let path = self.path(&key);
            match fs::symlink_metadata(&path) {
                Ok(meta) => {
                    let since_epoch = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                    out.push((key, len, since_epoch.map(|d| d.as_millis() as i64)));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {} // deleted since the listing
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Ok(out)
    }

    /// Removes the file and fsyncs its directory, so that a deletion is durable before whatever
    /// the caller does next (prune deletes packs only after the old index files are gone).
    fn delete(&self, key: &str) -> Result<()> {
        changed();
        let path = self.path(key);
        // Held open, a deleted pack would keep its space until this process ends: a prune's
        // repacking reads packs it then deletes, and looks at the free space after.
        OPEN.lock().expect("poisoned").close(&path);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Removes temporary files left by writers on this host that no longer run (a killed
    /// snapshot). Files of live writers, and of other hosts, are left alone. Returns how many.
    fn remove_stale_temp_files(&self) -> usize {
        let host = crate::host::hostname();
        let Ok(entries) = fs::read_dir(self.root.join(TMP)) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_suffix(".tmp") else { continue };
            let mut parts = rest.rsplitn(3, '-');
            let (_random, pid, writer_host) = (parts.next(), parts.next(), parts.next());
            let Some(pid) = pid.and_then(|p| p.parse::<i32>().ok()) else { continue };
            if writer_host == Some(host.as_str()) && !process_alive(pid) && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

/// Reads the file at `path` whole into `out`: direct (`O_DIRECT`) if `direct` and the file system
/// allows it, buffered where it does not, and buffered from where a direct read stopped short,
/// should one.
fn read_whole(path: &Path, out: &mut WholeObject, direct: bool) -> Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let buffered = || File::open(path).at(path);
    let flags = if direct { libc::O_DIRECT } else { 0 };
    let (mut file, mut direct) = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(file) => (file, direct),
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => (buffered()?, false),
        Err(e) => return Err(Error::io(path, e)),
    };
    let len = file.metadata().at(path)?.len() as usize;
    let room = out.room(len).map_err(|e| Error::io(path, e))?;
    let mut done = 0;
    while done < len {
        // A direct read asks for whole blocks; the last one ends short at the end of the file.
        let end = if direct { room.len() } else { len };
        match file.read_at(&mut room[done..end], done as u64) {
            Ok(0) => {
                let shrunk = std::io::Error::new(ErrorKind::UnexpectedEof, "the file shrank while being read");
                return Err(Error::io(path, shrunk));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => (file, direct) = (buffered()?, false),
            Err(e) => return Err(Error::io(path, e)),
        }
        if direct && done < len && done % WholeObject::ALIGN != 0 {
            (file, direct) = (buffered()?, false);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn scratch() -> (tempdir::Dir, LocalBackend) {
        let dir = tempdir::Dir::new();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        fs::create_dir(dir.path().join("snapshots")).unwrap();
        let backend = LocalBackend::new(dir.path());
        (dir, backend)
    }

    /// A tiny scratch directory removed on drop (keeps test dependencies lean).
    pub(crate) mod tempdir {
        pub(crate) struct Dir(std::path::PathBuf);
        impl Dir {
            pub(crate) fn new() -> Dir {
                let path = std::env::temp_dir()
                    .join(format!("cairn-test-{}", &crate::id::Id(crate::id::random_bytes()).to_hex()[..16]));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub(crate) fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn put_is_create_only_and_leaves_no_temp_files() {
        let (_dir, backend) = scratch();
        assert!(backend.put("snapshots/a", b"first").unwrap());
        assert!(!backend.put("snapshots/a", b"second").unwrap());
        assert_eq!(backend.get("snapshots/a").unwrap(), b"first");
        assert_eq!(backend.get_range("snapshots/a", 1, 3).unwrap(), b"irs");
        assert!(backend.get_range("snapshots/a", 3, 3).is_err());
        assert_eq!(backend.list("snapshots").unwrap(), vec![("snapshots/a".to_string(), 5)]);
        assert!(backend.list("tmp").unwrap().is_empty());
        backend.delete("snapshots/a").unwrap();
        assert!(!backend.exists("snapshots/a").unwrap());
    }

    /// Whole reads into one reused buffer, direct and buffered, of lengths around the direct-I/O
    /// block size (in a directory beside the test binary: on a disk, not in memory).
    #[test]
    fn read_whole_reads_files_into_a_reused_buffer() {
        let dir = std::env::current_exe().unwrap().parent().unwrap().join("read-whole-test");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("object");
        for direct in [true, false] {
            let mut buffer = WholeObject::default();
            for len in [5 << 20, 0, 1, 4095, 4096, 4097, (1 << 20) + 3, 5 << 20] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                fs::write(&path, &data).unwrap();
                read_whole(&path, &mut buffer, direct).unwrap();
                assert!(buffer.bytes() == data, "{len} bytes, direct: {direct}");
                assert_eq!(buffer.bytes().as_ptr() as usize % WholeObject::ALIGN, 0);
            }
            assert!(read_whole(&dir.join("missing"), &mut buffer, direct).is_err());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directories_are_recreated() {
        let dir = tempdir::Dir::new();
        let backend = LocalBackend::new(dir.path());
        assert!(backend.put("packs/ab/cd", b"pack").unwrap());
        assert_eq!(backend.get("packs/ab/cd").unwrap(), b"pack");
    }
}
