//! Opening a repository's index: the sorted copy ([`super::sorted`]) if it is current, else
//! built again, plus the delta of index files newer than it.
//!
//! Where the copy lives: `<cache root>/<repository id>/sorted-index-<location hash>`, the
//! directory an object-store repository already keeps its cache in (`--cache-dir`,
//! `CAIRN_CACHE_DIR`, `$XDG_CACHE_HOME/cairn`), for local repositories too: the copy is the
//! user's, not the repository's (a repository may be read-only, or shared by users whose caches
//! differ), and the location hash keeps apart two repositories with one id (a sync destination
//! on the same machine). Without a cache (`--no-cache`, or `check`, which reads no cache) the
//! copy is built in an unnamed temporary file that goes with the process.
//!
//! When it is built again: its head lists the index files it was built from. If one of them is
//! no longer listed (prune and repair rewrite the index), or the copy fails its checks (missing,
//! truncated, another version, a checksum that does not match), it is rebuilt from every index
//! file. Files listed that it does not name (snapshots since) are read into the delta; past
//! [`DELTA_LIMIT`] blobs or [`DELTA_FILES`] files the copy and the delta are merged into a new
//! copy in one streaming pass. Two processes may
//! build at once: each writes its own temporary file and renames it into place, the last rename
//! wins, and each reads the copy it built (both are correct).
//!
//! A repository whose copy cannot be written at all (not even a temporary file) keeps its index
//! in memory, as before.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::build::{unnamed_file, write_merged, Builder, RUN_ENTRIES};
use super::sorted::{Head, SortedFile};
use super::Index;
use crate::error::{Error, Result};
use crate::format::index::{IndexFile, IndexedPack};
use crate::id::Id;
use crate::repository::{FileKind, Repository};

/// Blobs the in-memory delta may hold (56 MiB) before the copy is merged with it.
pub(crate) const DELTA_LIMIT: usize = 1 << 20;
/// Index files the delta may come from (each a read at every open, on an object store a round
/// trip) before the copy is merged with it.
const DELTA_FILES: usize = 256;
/// Bytes of index files decoded at once while building.
const READ_BATCH: u64 = 64 << 20;
/// Bytes of an index file per blob, nearly (a 48-byte entry plus its share of the pack record).
const BYTES_PER_BLOB: u64 = 48;

/// An index file listed: its id, key and length.
type Listed = (Id, String, u64);

/// The index of `repo` (see the module doc).
pub(crate) fn load(repo: &Repository) -> Result<Index> {
    let listed = list(repo)?;
    let place = place(repo);
    match sorted(repo, &place, &listed) {
        Ok(index) => Ok(index),
        Err(_) if place.path.is_some() => {
            let temporary = Place { dir: std::env::temp_dir(), path: None };
            Ok(sorted(repo, &temporary, &listed).unwrap_or_else(|_| in_memory(repo, &listed)))
        }
        Err(_) => Ok(in_memory(repo, &listed)),
    }
}

/// The index files listed, in name order (names that are not ids are left out).
fn list(repo: &Repository) -> Result<Vec<Listed>> {
    let dir = FileKind::Index.dir();
    let listed = repo.backend.list(dir)?;
    if let Some(cache) = &repo.cache {
        let names: std::collections::HashSet<&str> = listed.iter().map(|(key, _)| key.as_str()).collect();
        cache.retain(dir, |key| names.contains(key));
    }
    let mut ids: Vec<Listed> =
        listed.into_iter().filter_map(|(key, len)| Some((FileKind::Index.id_of(&key)?, key, len))).collect();
    ids.sort_unstable_by_key(|listed| listed.0);
    Ok(ids)
}

/// An index file read whole and checked (its envelope, and every pack and entry decoded once),
/// held as its bytes: its packs are decoded again one at a time where they are used, so a file of
/// 8 million entries costs its 400 MB of bytes, not twice that.
pub(crate) struct CheckedFile {
    bytes: Vec<u8>,
    file: String,
}

impl CheckedFile {
    fn check(bytes: Vec<u8>, file: &str) -> Result<CheckedFile> {
        IndexFile::each_pack(&bytes, file, |_| Ok(()))?;
        Ok(CheckedFile { bytes, file: file.to_string() })
    }

    /// Hands each pack to `visit`, in file order.
    pub(crate) fn each_pack(&self, visit: impl FnMut(IndexedPack) -> Result<()>) -> Result<()> {
        IndexFile::each_pack(&self.bytes, &self.file, visit)
    }

    fn into_file(self) -> IndexFile {
        IndexFile::decode(&self.bytes, &self.file).expect("checked when read")
    }
}

/// Reads and checks `files`, in order; damaged ones are recorded and left out.
fn read(repo: &Repository, files: &[Listed]) -> Vec<(Id, CheckedFile)> {
    let keys: Vec<(String, u64)> = files.iter().map(|(_, key, len)| (key.clone(), *len)).collect();
    repo.read_listed(FileKind::Index, &keys, &CheckedFile::check)
}

/// Reads and decodes `files` whole, in order (for a delta, which is small).
fn read_whole(repo: &Repository, files: &[Listed]) -> Vec<(Id, IndexFile)> {
    read(repo, files).into_iter().map(|(name, file)| (name, file.into_file())).collect()
}

fn in_memory(repo: &Repository, listed: &[Listed]) -> Index {
    Index::default().with_delta(read_whole(repo, listed))
}

/// Where the copy is kept: `path` in `dir`, or (no path) an unnamed file in `dir`.
struct Place {
    dir: PathBuf,
    path: Option<PathBuf>,
}

fn place(repo: &Repository) -> Place {
    let made = repo.index_dir.as_ref().and_then(|root| {
        let dir = root.join(repo.config.repo_id.to_hex());
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).ok()?;
        let location = match repo.backend.disk_path() {
            Some(path) => std::path::absolute(&path).unwrap_or(path).display().to_string(),
            None => repo.backend.location(),
        };
        let name = format!("sorted-index-{}", &Id::of(location.as_bytes()).to_hex()[..16]);
        Some(Place { path: Some(dir.join(name)), dir })
    });
    made.unwrap_or_else(|| Place { dir: std::env::temp_dir(), path: None })
}

fn sorted(repo: &Repository, place: &Place, listed: &[Listed]) -> io::Result<Index> {
    if let Some(path) = &place.path {
        let opened =
            fs::File::open(path).and_then(|file| SortedFile::open(file, Some(path.clone()), repo.keys.as_ref()));
        if let Ok((main, head)) = opened {
            if let Some(index) = reuse(repo, place, main, head, listed)? {
                return Ok(index);
            }
        }
    }
    build(repo, place, listed)
}

/// The index on `main` and a delta of the files listed since, or `None` if `main` is stale or
/// the delta too large to read.
fn reuse(
    repo: &Repository,
    place: &Place,
    main: SortedFile,
    head: Head,
    listed: &[Listed],
) -> io::Result<Option<Index>> {
    let mut new = Vec::new();
    let mut known = head.files.iter().peekable();
    for file in listed {
        match known.peek() {
            Some(name) if **name == file.0 => _ = known.next(),
            Some(name) if **name < file.0 => return Ok(None), // removed since
            _ => new.push(file.clone()),
        }
    }
    if known.next().is_some()
        || new.iter().map(|(_, _, len)| len / BYTES_PER_BLOB).sum::<u64>() > DELTA_LIMIT as u64 * 2
    {
        return Ok(None);
    }
    let files = head.files.clone();
    let delta = read_whole(repo, &new);
    let delta_files: Vec<Id> = delta.iter().map(|(name, _)| *name).collect();
    let index = from_main(main, head).with_delta(delta);
    if index.delta.len() <= DELTA_LIMIT && new.len() <= DELTA_FILES {
        return Ok(Some(index));
    }
    let (out, temp) = output(place)?;
    let written = write_merged(&index, &files, &delta_files, out, repo.keys.as_ref());
    install(repo, written, temp, place).map(Some)
}

/// An index on `main` alone.
pub(super) fn from_main(main: SortedFile, head: Head) -> Index {
    let mut index = Index::default();
    for (number, pack) in head.packs.iter().enumerate() {
        index.packs.push((pack.id, pack.len));
        index.order.push((head.files[pack.first_file as usize], pack.record));
        index.pack_numbers.insert(pack.id, number as u32);
    }
    index.main = Some(main);
    index
}

/// Builds the copy from every index file, a batch of files at a time.
fn build(repo: &Repository, place: &Place, listed: &[Listed]) -> io::Result<Index> {
    remove_abandoned(&place.dir);
    let mut builder = Builder::new(place.dir.clone(), RUN_ENTRIES, repo.keys.clone());
    for batch in batches(listed) {
        for (name, file) in read(repo, batch) {
            builder.begin_file(name);
            file.each_pack(|pack| builder.add_pack(&pack).map_err(|e| Error::io(&place.dir, e)))
                .map_err(io::Error::other)?;
        }
    }
    let (out, temp) = output(place)?;
    let written = builder.finish(out);
    install(repo, written, temp, place)
}

/// `listed` in batches of about [`READ_BATCH`] bytes (at least one file each).
fn batches(listed: &[Listed]) -> impl Iterator<Item = &[Listed]> {
    let mut rest = listed;
    std::iter::from_fn(move || {
        let (mut end, mut bytes) = (0, 0);
        while end < rest.len() && (end == 0 || bytes + rest[end].2 <= READ_BATCH) {
            bytes += rest[end].2;
            end += 1;
        }
        let (batch, after) = rest.split_at(end);
        rest = after;
        (!batch.is_empty()).then_some(batch)
    })
}

/// Hands every intact index file to `visit`, in name order, reading a batch of files at a time:
/// at 10^8 blobs the files decode to gigabytes, which no one pass over them needs at once.
/// Damaged files are recorded and skipped (see [`Repository::take_damage`]), as by [`load`].
pub(crate) fn each_file(repo: &Repository, mut visit: impl FnMut(Id, CheckedFile) -> Result<()>) -> Result<()> {
    let listed = list(repo)?;
    for batch in batches(&listed) {
        for (name, file) in read(repo, batch) {
            visit(name, file)?;
        }
    }
    Ok(())
}

/// A new file for a copy: a temporary name in the place's directory, or an unnamed file.
fn output(place: &Place) -> io::Result<(fs::File, Option<PathBuf>)> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static MADE: AtomicU64 = AtomicU64::new(0);
    if place.path.is_none() {
        return Ok((unnamed_file(&place.dir)?, None));
    }
    let temp = place.dir.join(format!(".sorted-index-{}-{}.tmp", std::process::id(), MADE.fetch_add(1, Relaxed)));
    let file = fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&temp)?;
    Ok((file, Some(temp)))
}

/// Renames a written copy into place and opens it; a failed write removes its temporary file.
fn install(
    repo: &Repository,
    written: io::Result<(fs::File, Head)>,
    temp: Option<PathBuf>,
    place: &Place,
) -> io::Result<Index> {
    let renamed = written.and_then(|(file, _)| match (&temp, &place.path) {
        (Some(temp), Some(path)) => fs::rename(temp, path).map(|()| (file, Some(path.clone()))),
        _ => Ok((file, None)),
    });
    let (file, path) = match renamed {
        Ok(named) => named,
        Err(e) => {
            if let Some(temp) = &temp {
                let _ = fs::remove_file(temp);
            }
            return Err(e);
        }
    };
    // Read back through its own checks, as any copy is.
    let (main, head) = SortedFile::open(file, path, repo.keys.as_ref())?;
    Ok(from_main(main, head))
}

/// Removes temporary copies whose process is gone (killed while building).
fn remove_abandoned(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".sorted-index-").and_then(|rest| rest.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<libc::pid_t>() else { continue };
        // SAFETY: kill with signal 0 only asks whether the process exists.
        let gone =
            unsafe { libc::kill(pid, 0) } == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_file(entry.path());
        }
    }
}
