//! A local cache of an object-store repository's immutable files: index files, snapshot
//! manifests, audit records and tree packs. Every one of them is named by the BLAKE3 of its
//! content (store-format/README.md, "Ids"), so a cached copy never goes stale; at most it is no
//! longer needed. With it, a second `ls` or restore costs a listing and a handful of requests
//! instead of one per tree, as restic's cache does. It holds the store's own bytes, sealed as
//! they are there: nothing in it is plaintext that the repository keeps encrypted.
//!
//! Nothing read from it is trusted: index files, manifests and audit records are checked against
//! their names on every read, a pack against its name when it is fetched and each of its blobs
//! against its id when it is read (by the repository); a copy that fails is removed and fetched
//! again. `check` never reads through a cache: it verifies the store itself.
//!
//! Layout: `<root>/<repository id>/<key>`, the repository's own keys (`index/<id>`,
//! `packs/XY/<id>`, ...). Files are written to a temporary name and renamed, so a reader never
//! sees half of one; they are not synced: a copy lost in a crash is fetched again. The root is
//! private to its user (mode 0700).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::FileKind;
use crate::id::Id;

pub struct Cache {
    dir: PathBuf,
}

/// Temporary names of this process's writes are unique by this counter.
static WRITES: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// The cache of the repository `repo_id` below `root`, created if missing.
    pub fn open(root: &Path, repo_id: &Id) -> io::Result<Cache> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root)?;
        let dir = root.join(repo_id.to_hex());
        fs::DirBuilder::new().mode(0o700).create(&dir).or_else(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })?;
        Ok(Cache { dir })
    }

    /// The default root: `$XDG_CACHE_HOME/cairn`, or `~/.cache/cairn`.
    pub fn default_root() -> Option<PathBuf> {
        Some(super::xdg_base("XDG_CACHE_HOME", ".cache")?.join("cairn"))
    }

    /// Where `key` is kept; `None` for a key that is not one of cairn's (only lower-case hex
    /// digits and `/` between them): nothing outside the cache is ever named.
    fn path(&self, key: &str) -> Option<PathBuf> {
        let mut parts = key.split('/');
        let top = parts.next()?;
        let known =
            [FileKind::Index, FileKind::Snapshot, FileKind::Audit, FileKind::Pack].iter().any(|kind| kind.dir() == top);
        let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let rest: Vec<&str> = parts.collect();
        (known && !rest.is_empty() && rest.iter().all(|p| hex(p))).then(|| self.dir.join(key))
    }

    /// The cached copy of `key`, if there is one.
    pub fn read(&self, key: &str) -> Option<Vec<u8>> {
        fs::read(self.path(key)?).ok()
    }

    /// `len` bytes at `offset` of the cached copy of `key`, if there is one that long.
    pub fn read_range(&self, key: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let file = fs::File::open(self.path(key)?).ok()?;
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset).ok()?;
        Some(bytes)
    }

    /// Keeps a copy of `key`. Best effort: a cache that cannot be written only costs requests.
    pub fn write(&self, key: &str, bytes: &[u8]) {
        let Some(path) = self.path(key) else { return };
        let Some(parent) = path.parent() else { return };
        let temp = parent.join(format!(".{}-{}.tmp", std::process::id(), WRITES.fetch_add(1, Relaxed)));
        let written = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .and_then(|()| fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp))
            .and_then(|file| file.write_all_at(bytes, 0))
            .and_then(|()| fs::rename(&temp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
    }

    /// Drops the cached copy of `key` (found damaged).
    pub fn remove(&self, key: &str) {
        if let Some(path) = self.path(key) {
            let _ = fs::remove_file(path);
        }
    }

    /// Removes the cached files below `dir` (a top-level key such as `index`) that `keep` does
    /// not want any more: what prune or forget removed from the store.
    pub fn retain(&self, dir: &str, keep: impl Fn(&str) -> bool) {
        let Some(top) = self.path(&format!("{dir}/0")).and_then(|p| p.parent().map(Path::to_path_buf)) else { return };
        let mut stack = vec![(top, dir.to_string())];
        while let Some((path, key)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&path) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = format!("{key}/{name}");
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => stack.push((entry.path(), child)),
                    Ok(_) if !keep(&child) => {
                        let _ = fs::remove_file(entry.path());
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_and_drops_copies_inside_its_directory_only() {
        let root = std::env::temp_dir().join(format!("cairn-cache-test-{}", std::process::id()));
        let cache = Cache::open(&root, &Id::of(b"repo")).unwrap();
        let key = format!("packs/ab/{}", Id::of(b"pack").to_hex());
        assert_eq!(cache.read(&key), None);
        cache.write(&key, b"0123456789");
        assert_eq!(cache.read(&key).unwrap(), b"0123456789");
        assert_eq!(cache.read_range(&key, 2, 3).unwrap(), b"234");
        assert_eq!(cache.read_range(&key, 8, 3), None, "past the end");
        for bad in ["config", "../x", "index/../../x", "index/ABC", "index/", "locks/00", "index/0a/../0b"] {
            cache.write(bad, b"x");
            assert_eq!(cache.read(bad), None, "{bad}");
        }
        let other = format!("index/{}", Id::of(b"index").to_hex());
        cache.write(&other, b"i");
        cache.retain(FileKind::Pack.dir(), |k| k != key);
        assert_eq!(cache.read(&key), None);
        assert_eq!(cache.read(&other).unwrap(), b"i", "another directory is left alone");
        cache.remove(&other);
        assert_eq!(cache.read(&other), None);
        let mode = fs::metadata(&root).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
        fs::remove_dir_all(&root).unwrap();
    }
}
