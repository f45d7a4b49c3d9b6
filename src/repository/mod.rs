//! A repository: its config, its snapshots, and reading verified blobs through the index.
//!
//! Layout (store-format/README.md, "Repository layout"):
//! `config`, `packs/XY/<pack id>`, `index/<id>`, `snapshots/<id>`, `tmp/`. The repository exists
//! once `config` does; `init` writes it last.

pub mod index;
pub mod lock;
pub mod packer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::backend::local::LocalBackend;
use crate::backend::object::{is_url, ObjectBackend};
use crate::backend::Backend;
use crate::chunking::Chunker;
use crate::compression;
use crate::error::{Error, Result};
use crate::format::config::Config;
use crate::format::index::IndexFile;
use crate::format::snapshot::Snapshot;
use crate::format::tree::Tree;
use crate::id::Id;
use index::{Index, Location};

/// Top-level entries of a repository directory.
const LAYOUT: [&str; 6] = ["tmp", "packs", "index", "snapshots", "audit", "locks"];

pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    damage: Mutex<Vec<Error>>,
}

impl Repository {
    /// Creates a repository in `path`, which must be missing or an empty directory (or hold only
    /// the skeleton of an `init` that was interrupted before it wrote `config`).
    pub fn init(path: &Path) -> Result<Repository> {
        Self::init_with(path, Config::new_random())
    }

    fn init_with(path: &Path, config: Config) -> Result<Repository> {
        let backend = LocalBackend::new(path);
        if path.join("config").exists() {
            return Err(Error::AlreadyExists(path.to_path_buf()));
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !LAYOUT.iter().any(|l| name == *l) {
                    return Err(Error::Invalid(format!(
                        "{} is not empty: refusing to create a repository among other files",
                        path.display()
                    )));
                }
            }
        }
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::backend::local::sync_dir(parent)?;
        }
        for dir in LAYOUT {
            backend.create_dir(dir)?;
        }
        for byte in 0..=255u8 {
            backend.create_dir(&format!("packs/{byte:02x}"))?;
        }
        if !backend.put("config", &config.encode())? {
            return Err(Error::AlreadyExists(path.to_path_buf()));
        }
        Ok(Repository { backend: Arc::new(backend), config, damage: Mutex::new(Vec::new()) })
    }

    /// Creates a repository at a directory path or an object-store URL (`s3://bucket/prefix`,
    /// `memory://`). On an object store there are no directories: `config` is the only write.
    pub fn init_location(location: &str) -> Result<Repository> {
        Self::init_location_with(location, Config::new_random())
    }

    /// [`Repository::init_location`] with given parameters (sync creates its destination with
    /// the source's chunker, compression and pack size, and a repository id of its own).
    pub fn init_location_with(location: &str, config: Config) -> Result<Repository> {
        if !is_url(location) {
            return Self::init_with(Path::new(local_path(location)), config);
        }
        let backend = ObjectBackend::open(location)?;
        if backend.exists("config")? || !backend.put("config", &config.encode())? {
            return Err(Error::AlreadyExists(PathBuf::from(location)));
        }
        Ok(Repository { backend: Arc::new(backend), config, damage: Mutex::new(Vec::new()) })
    }

    /// Opens a repository at a directory path or an object-store URL.
    pub fn open_location(location: &str) -> Result<Repository> {
        if !is_url(location) {
            return Self::open(Path::new(local_path(location)));
        }
        Self::open_backend(Arc::new(ObjectBackend::open(location)?), location)
    }

    /// Opens a repository on a backend built by the caller (tests with explicit settings).
    pub fn open_backend(backend: Arc<dyn Backend>, location: &str) -> Result<Repository> {
        if !backend.exists("config")? {
            return Err(Error::NotARepository(PathBuf::from(location)));
        }
        let bytes = backend.get("config")?;
        let config = Config::decode(&bytes, &format!("{}/config", backend.location()))?;
        Ok(Repository { backend, config, damage: Mutex::new(Vec::new()) })
    }

    pub fn open(path: &Path) -> Result<Repository> {
        let backend = LocalBackend::new(path);
        if !backend.exists("config")? {
            return Err(Error::NotARepository(path.to_path_buf()));
        }
        let bytes = backend.get("config")?;
        let config = Config::decode(&bytes, &path.join("config").display().to_string())?;
        Ok(Repository { backend: Arc::new(backend), config, damage: Mutex::new(Vec::new()) })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Takes a repository lock for `command` (see [`lock`]), waiting up to `wait`.
    pub fn lock(&self, kind: lock::LockKind, command: &str, wait: std::time::Duration) -> Result<lock::Lock> {
        lock::Lock::acquire(self.backend.clone(), kind, command, wait)
    }

    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.config.chunker)
    }

    pub fn pack_key(id: &Id) -> String {
        let hex = id.to_hex();
        format!("packs/{}/{hex}", &hex[..2])
    }

    /// Every pack file present, with its length; keys under `packs/` that are not pack names
    /// are returned apart, as strays.
    pub fn list_packs(&self) -> Result<(std::collections::HashMap<Id, u64>, Vec<String>)> {
        let mut packs = std::collections::HashMap::new();
        let mut strays = Vec::new();
        for (key, len) in self.backend.list("packs")? {
            match Id::from_hex(key.rsplit('/').next().unwrap_or_default()) {
                Some(id) if key == Self::pack_key(&id) => {
                    packs.insert(id, len);
                }
                _ => strays.push(key),
            }
        }
        Ok((packs, strays))
    }

    /// Names a repository file in messages: its location and key.
    pub fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.backend.location())
    }

    /// Reads every index file. A damaged index file is skipped and recorded (see
    /// [`Repository::take_damage`]): its blobs then count as missing, which only makes a snapshot
    /// store them again and makes a restore report exactly the files that need them.
    pub fn load_index(&self) -> Result<Index> {
        let mut index = Index::default();
        for (_, file) in self.read_all_named("index", IndexFile::decode)? {
            index.add_file(&file);
        }
        Ok(index)
    }

    /// Every readable snapshot, oldest first. Damaged manifests are skipped and recorded, so one
    /// bad file never hides the others.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut out = self.read_all_named("snapshots", Snapshot::decode)?;
        out.sort_by_key(|(id, s)| (s.time_sec, s.time_nsec, *id));
        Ok(out)
    }

    /// Decodes every content-named file below `dir`. Files that fail (their hash or their
    /// decoding) are skipped and recorded as damage; a listing failure is an error.
    pub fn read_all_named<T>(&self, dir: &str, decode: impl Fn(&[u8], &str) -> Result<T>) -> Result<Vec<(Id, T)>> {
        let mut out = Vec::new();
        for (key, _) in self.backend.list(dir)? {
            let decoded = self
                .read_named(&key)
                .and_then(|found| found.map(|(id, bytes)| Ok((id, decode(&bytes, &self.describe(&key))?))).transpose());
            match decoded {
                Ok(Some(entry)) => out.push(entry),
                Ok(None) => {}
                // Removed between the listing and the read (a forget or prune): not damage.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self.record_damage(e),
            }
        }
        Ok(out)
    }

    /// Reads a file named by the hash of its content. `None` for names that are not ids (never
    /// cairn's: an editor's backup, say); an error if the content does not match the name.
    fn read_named(&self, key: &str) -> Result<Option<(Id, Vec<u8>)>> {
        let Some(id) = Id::from_hex(key.rsplit('/').next().unwrap_or_default()) else {
            return Ok(None);
        };
        let bytes = self.backend.get(key)?;
        if Id::of(&bytes) != id {
            return Err(Error::corrupt(self.describe(key), "content does not match its name: the file is damaged"));
        }
        Ok(Some((id, bytes)))
    }

    fn record_damage(&self, error: Error) {
        self.damage.lock().expect("poisoned").push(error);
    }

    /// Repository files that were skipped because they are damaged, since the last call.
    pub fn take_damage(&self) -> Vec<Error> {
        std::mem::take(&mut *self.damage.lock().expect("poisoned"))
    }

    /// Resolves `latest`, a full id or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_of(spec, None)
    }

    /// [`Repository::find_snapshot`] among the snapshots of one source (its `--source` name, or
    /// its paths) when `source` is given.
    pub fn find_snapshot_of(&self, spec: &str, source: Option<&str>) -> Result<(Id, Snapshot)> {
        let mut all = self.snapshots()?;
        if let Some(source) = source {
            all.retain(|(_, s)| s.source_key() == source);
        }
        if spec == "latest" {
            let what = source.map_or_else(|| spec.to_string(), |s| format!("{spec} of source {s}"));
            return all.pop().ok_or(Error::NoSuchSnapshot(what));
        }
        let wanted = spec.to_ascii_lowercase();
        let mut matching = all.into_iter().filter(|(id, _)| !wanted.is_empty() && id.to_hex().starts_with(&wanted));
        match (matching.next(), matching.next()) {
            (Some(found), None) => Ok(found),
            (Some(_), Some(_)) => Err(Error::AmbiguousSnapshot(spec.to_string())),
            (None, _) => Err(Error::NoSuchSnapshot(spec.to_string())),
        }
    }

    /// Writes a snapshot manifest: the commit point of a snapshot. Call only after the blob
    /// store has finished.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let bytes = snapshot.encode();
        let id = Id::of(&bytes);
        self.backend.put(&format!("snapshots/{}", id.to_hex()), &bytes)?;
        Ok(id)
    }

    /// Reads a blob, decodes it and checks that it hashes to `id`.
    pub fn read_blob(&self, index: &Index, id: &Id) -> Result<Vec<u8>> {
        let location = index.get(id).ok_or(Error::MissingBlob(*id))?;
        self.read_blob_at(index, id, location)
    }

    fn read_blob_at(&self, index: &Index, id: &Id, l: &Location) -> Result<Vec<u8>> {
        let pack = index.pack_id(l);
        let stored = self.backend.get_range(&Self::pack_key(&pack), l.offset as u64, l.stored_len as u64)?;
        let what = format!("blob {} in pack {}", id.short(), pack.short());
        let plain = compression::decompress(l.codec, &stored, l.raw_len, &what).map_err(|e| Error::BadBlob {
            id: *id,
            pack,
            reason: e.to_string(),
        })?;
        if Id::of(&plain) != *id {
            return Err(Error::BadBlob { id: *id, pack, reason: "content does not hash to its id".into() });
        }
        Ok(plain)
    }

    pub fn read_tree(&self, index: &Index, id: &Id) -> Result<Tree> {
        let bytes = self.read_blob(index, id)?;
        Tree::decode(&bytes, &format!("tree {}", id.short()))
    }
}

/// The directory of a local location: a path, or a `file://` URL.
pub fn local_path(location: &str) -> &str {
    location.strip_prefix("file://").unwrap_or(location)
}

/// The default repository: `$XDG_DATA_HOME/cairn/repo`, or `~/.local/share/cairn/repo`.
pub fn default_location() -> Option<PathBuf> {
    let data_home = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| PathBuf::from(home).join(".local/share"))
    })?;
    Some(data_home.join("cairn").join("repo"))
}
