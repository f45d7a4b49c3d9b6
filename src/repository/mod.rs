//! A repository: its config, its snapshots, and reading verified blobs through the index.
//!
//! Layout (store-format/README.md, "Repository layout"):
//! `config`, `packs/XY/<pack id>`, `index/<id>`, `snapshots/<id>`, `tmp/`. The repository exists
//! once `config` does; `init` writes it last.

pub mod cache;
pub mod index;
pub mod layout;
pub mod location;
pub mod lock;
pub mod packer;
pub mod reader;
pub mod reserve;
pub mod upload;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::backend::local::LocalBackend;
use crate::backend::Backend;
use crate::chunking::Chunker;
use crate::compression::{self, Dictionary};
use crate::crypto::{Keys, MasterKey};
use crate::error::{Error, Result};
use crate::format::chunk_list;
use crate::format::config::Config;
use crate::format::envelope;
use crate::format::index::{IndexFile, IndexedPack};
use crate::format::key::KeyFile;
use crate::format::pack::{BlobEntry, BlobKind, Codec};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{ChunkList, Tree};
use crate::id::{BlobHasher, Id};
use index::Index;
pub use layout::FileKind;
use layout::CONFIG;
pub use location::Location;

/// Packs named per index file when prune or repair rewrites the index.
pub const PACKS_PER_INDEX_FILE: usize = 256;

pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    damage: Mutex<Vec<Error>>,
    /// The keys of an encrypted repository, and the key file they were opened with.
    keys: Option<Keys>,
    key_used: Option<Id>,
    /// Copies of immutable files of an object-store repository ([`cache`]), once enabled.
    cache: Option<cache::Cache>,
    /// Held while a tree pack is fetched into the cache, so parallel readers fetch it once.
    tree_fetch: Mutex<()>,
    /// Held while a dictionary is read ([`Repository::dictionary`]).
    dictionary_fetch: Mutex<()>,
    /// The cache root, where the sorted copy of the index is kept ([`index::open`]).
    index_dir: Option<PathBuf>,
    /// The compression dictionaries read or written so far.
    dictionaries: Mutex<HashMap<Id, Arc<Dictionary>>>,
    /// Dictionaries found missing or damaged, with why: not read again for each blob that names
    /// one, and a blob that fails for want of one is not read again either.
    lost_dictionaries: Mutex<HashMap<Id, String>>,
}

/// Loaded compression dictionaries a repository keeps at most (one per large database; each a
/// few hundred KiB loaded).
const DICTIONARIES_KEPT: usize = 64;

/// The passphrase an opening gives a repository that turns out to be encrypted.
#[derive(Clone, Copy)]
pub enum Passphrase<'a> {
    /// None: an encrypted repository fails to open, saying so.
    None,
    Given(&'a str),
    /// Asked for only when the repository is encrypted: a plain one never prompts a terminal or
    /// runs a password command.
    Ask(&'a (dyn Fn() -> Result<String> + Sync)),
}

/// How `init` protects a new repository (store-format/encryption.md).
pub enum NewKeys {
    /// No encryption (`--encryption none`).
    None,
    /// A new random master key, wrapped under this passphrase.
    New { passphrase: String },
    /// An existing master key (sync's destination shares the source's), under this passphrase.
    Shared { master: MasterKey, passphrase: String },
}

/// Threads for reading many small files from an object store: each mostly waits for its round
/// trip, so there are many more of them than cores.
fn round_trips() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .thread_name(|n| format!("round-trip-{n}"))
            .build()
            .expect("a thread pool")
    })
}

/// Every snapshot id listed, and the manifests read of those not known before
/// ([`Repository::snapshots_besides`]).
pub type SnapshotsBesides = (Vec<Id>, Vec<(Id, Snapshot)>);

/// The readable snapshots, oldest first, and what was said of each snapshot file that was not.
pub type SnapshotsAndDamage = (Vec<(Id, Snapshot)>, Vec<String>);

/// Directories that only a repository that took a snapshot holds files in. A location without
/// `config` but with files there is a repository that lost its config, not a place for a new one:
/// a new key and config there would hide every earlier snapshot behind another key. (`keys/`
/// alone is what an interrupted `init` leaves, which may be created again.)
const HELD_BY_A_REPOSITORY: [&str; 2] = ["snapshots", "index"];

/// Refuses `backend`, which has no `config`, if it holds files in [`HELD_BY_A_REPOSITORY`]; a
/// listing that fails refuses too.
fn refuse_lost_config(backend: &dyn Backend, location: &str) -> Result<()> {
    for dir in HELD_BY_A_REPOSITORY {
        if !backend.list(dir)?.is_empty() {
            return Err(Error::Refused(format!(
                "{location} has no config file but holds a repository's {dir}/: its config is lost; refusing to \
                 create a new repository over it (put the config back from a copy of the repository, or choose \
                 another location)"
            )));
        }
    }
    Ok(())
}

impl Repository {
    fn assemble(backend: Arc<dyn Backend>, config: Config, keys: Option<Keys>, key_used: Option<Id>) -> Repository {
        Repository {
            backend,
            config,
            damage: Mutex::new(Vec::new()),
            keys,
            key_used,
            cache: None,
            tree_fetch: Mutex::new(()),
            dictionary_fetch: Mutex::new(()),
            index_dir: None,
            dictionaries: Mutex::default(),
            lost_dictionaries: Mutex::default(),
        }
    }

    /// Creates a repository at `location`, encrypted unless `keys` is [`NewKeys::None`]. A
    /// directory must be missing or empty (or hold only the skeleton of an `init` that was
    /// interrupted before it wrote `config`). On an object store there are no directories: the
    /// key file and `config` are the only writes. `config` comes last: until it exists there is no
    /// repository. `config`: [`Config::new_random`], or given parameters (sync creates its
    /// destination with the source's chunker, compression and pack size).
    pub fn create(location: &Location, config: Config, keys: NewKeys) -> Result<Repository> {
        let backend: Arc<dyn Backend> = match location {
            Location::Directory(path) => Arc::new(Self::create_directory(path)?),
            Location::ObjectStore { url, settings } => {
                let backend = location::object(url, settings)?;
                if backend.exists(CONFIG)? {
                    return Err(Error::AlreadyExists(PathBuf::from(url)));
                }
                refuse_lost_config(&backend, url)?;
                Arc::new(backend)
            }
        };
        let repo = Self::init_backend(backend, &location.to_string(), config, keys)?;
        // Best effort: where there is no room for it yet, the first snapshot with room sets it.
        let _ = repo.keep_reserve();
        Ok(repo)
    }

    /// Writes the key file (if encrypted), then `config`, the commit point of `init`.
    fn init_backend(
        backend: Arc<dyn Backend>,
        location: &str,
        mut config: Config,
        new_keys: NewKeys,
    ) -> Result<Repository> {
        let sealed_by = match new_keys {
            NewKeys::None => None,
            NewKeys::New { passphrase } => {
                // A secret gear table: chunk boundaries then say nothing about known files.
                config.chunker.gear_seed = u64::from_le_bytes(crate::crypto::secure_random());
                Some((MasterKey::random(), passphrase))
            }
            NewKeys::Shared { master, passphrase } => Some((master, passphrase)),
        };
        // Key files already there belong to no repository: there is no config, and
        // `refuse_lost_config` saw no snapshots or index (an `init` that crashed before its
        // config, or a copy). Kept, one would open with the same passphrase, count as a second key
        // of this repository, and cost every opening a key derivation. Beside packs or
        // dictionaries they are kept all the same: they may be all that can still read that data.
        let data = !backend.list("packs")?.is_empty() || !backend.list("dicts")?.is_empty();
        let leftovers = if data { Vec::new() } else { key_ids(backend.list(FileKind::Key.dir())?) };
        let repo = match sealed_by {
            Some((master, passphrase)) => {
                let key_used = write_key_file(&*backend, &master, &passphrase)?;
                Self::assemble(backend, config, Some(Keys::new(master)), Some(key_used))
            }
            None => Self::assemble(backend, config, None, None),
        };
        if !repo.backend.put(CONFIG, &repo.seal_file(repo.config.encode()))? {
            // Another `init` got here first: the key file just written is of no repository.
            if let Some(key) = repo.key_used {
                let _ = repo.delete_file(FileKind::Key, &key);
            }
            return Err(Error::AlreadyExists(PathBuf::from(location)));
        }
        // Only now, with the config written, is the location this repository's: a crash before
        // leaves the leftovers for the next `init` to remove. A leftover that cannot be deleted
        // (create-only credentials) does not fail the `init` that just committed: it opens
        // nothing here and `key remove` never removes the key in use, so it costs an opening
        // one key derivation, no more.
        for key in leftovers.iter().filter(|key| Some(**key) != repo.key_used) {
            let _ = repo.delete_file(FileKind::Key, key);
        }
        Ok(repo)
    }

    /// The directory skeleton of a new local repository.
    fn create_directory(path: &Path) -> Result<LocalBackend> {
        let backend = LocalBackend::new(path);
        if path.join(CONFIG).exists() {
            return Err(Error::AlreadyExists(path.to_path_buf()));
        }
        refuse_lost_config(&backend, &path.display().to_string())?;
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                // The reserve of a repository whose config was lost is of no use to anyone else.
                let reserve = name == reserve::NAME && reserve::is_ours(path);
                if !reserve && !layout::directories().any(|l| name == l) {
                    return Err(Error::Refused(format!(
                        "{} is not empty: refusing to create a repository among other files",
                        path.display()
                    )));
                }
            }
        }
        // Missing parents too are the owner's alone ([`crate::backend::local::DIR_MODE`]); a
        // directory that exists keeps the mode its owner gave it.
        std::os::unix::fs::DirBuilderExt::mode(
            std::fs::DirBuilder::new().recursive(true),
            crate::backend::local::DIR_MODE,
        )
        .create(path)
        .map_err(|e| Error::io(path, e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::disk::sync_dir(parent)?;
        }
        // The 256 `packs/XY/` directories come with the first pack named into each: created
        // empty, they would take a megabyte of a small repository.
        for dir in layout::directories() {
            backend.create_dir(dir)?;
        }
        Ok(backend)
    }

    /// Opens the repository at `location`; an encrypted one with the passphrase `passphrase`
    /// gives (asked for only then).
    pub fn open(location: &Location, passphrase: Passphrase) -> Result<Repository> {
        Self::open_on(location.backend()?, location, passphrase)
    }

    /// [`Repository::open`] on a backend made for `location` before ([`Location::backend`]: so
    /// that it could be read from while the key is derived, or one built with other settings).
    /// Nothing runs beside the key derivation that writes: a wrong passphrase leaves the
    /// repository as it was, and is said at once (no lock is taken to wait on).
    pub fn open_on(backend: Arc<dyn Backend>, location: &Location, passphrase: Passphrase) -> Result<Repository> {
        // One request, not a look and then a read: on an object store each is a round trip. The
        // key files are listed beside it: an encrypted repository (the usual kind) needs them next.
        let (config, key_files) = std::thread::scope(|scope| {
            let key_files = scope.spawn(|| backend.list(FileKind::Key.dir()));
            let config = backend.get(CONFIG);
            (config, key_files.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        });
        let bytes = match config {
            Err(Error::Io { source, .. })
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) =>
            {
                // Not a repository, unless it is one that lost its config: say so, for `init`
                // (which is what "no repository" advises) refuses it too.
                if let Err(lost @ Error::Refused(_)) = refuse_lost_config(&*backend, &location.to_string()) {
                    return Err(lost);
                }
                return Err(Error::NotARepository(PathBuf::from(location.to_string())));
            }
            read => read?,
        };
        let file = format!("{}/{CONFIG}", backend.location());
        if !envelope::is_encrypted(&bytes) {
            let config = Config::decode(&bytes, &file)?;
            return Ok(Self::assemble(backend, config, None, None));
        }
        let passphrase = match passphrase {
            Passphrase::Given(given) => given.to_string(),
            Passphrase::Ask(ask) => ask()?,
            Passphrase::None => return Err(Error::PasswordNeeded(location.to_string())),
        };
        // The key is the one that opens `config`: a key file left by an `init` that crashed
        // before its config may open with the same passphrase but hold another master key.
        let (keys, key_used, plain) = unlock(&*backend, key_files, &location.to_string(), &passphrase, |keys| {
            envelope::decrypt(&bytes, Some(keys), &file)
        })?;
        let config = Config::decode(&plain, &file)?;
        Ok(Self::assemble(backend, config, Some(keys), Some(key_used)))
    }

    /// The keys of an encrypted repository.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// The id of the key file this repository was opened with, if encrypted.
    pub fn key_used(&self) -> Option<Id> {
        self.key_used
    }

    /// Every key file, with its id, and each decoded or why it could not be. A damaged key file
    /// is listed, not an error: opening skips it, and `key remove` must reach it.
    pub fn key_files(&self) -> Result<Vec<(Id, Result<KeyFile>)>> {
        let location = self.backend.location();
        let listed = key_ids(self.backend.list(FileKind::Key.dir())?);
        Ok(listed.into_iter().map(|id| (id, read_key_file(&*self.backend, &location, &id))).collect())
    }

    /// Wraps the master key under another passphrase; returns the new key file's id. Refused
    /// when a key file of this repository already opens with `passphrase`: two would make
    /// `key passwd` (or removing one) leave the passphrase working while saying it changed.
    /// Finding out costs one key derivation per key file, as a wrong passphrase does when opening
    /// (25 ms at the default parameters): a rare command with a handful of keys can afford it.
    pub fn add_key(&self, passphrase: &str) -> Result<Id> {
        let keys = self.keys.as_ref().ok_or(Error::NotEncrypted)?;
        if let Some(id) = self.key_opening(passphrase)? {
            return Err(Error::Refused(format!(
                "key {} already opens the repository with this password: choose another one (`key list` shows the keys)",
                id.short()
            )));
        }
        write_key_file(&*self.backend, &keys.master, passphrase)
    }

    /// The key file that opens with `passphrase` to this repository's master key, if any (a key
    /// file of another master key, or a damaged one, opens nothing here).
    fn key_opening(&self, passphrase: &str) -> Result<Option<Id>> {
        let Some(keys) = &self.keys else { return Ok(None) };
        let ours = keys.master.to_bytes();
        for (id, file) in self.key_files()? {
            let Ok(file) = file else { continue };
            let wrapping = crate::crypto::wrapping_key(passphrase.as_bytes(), &file.salt, file.kdf)?;
            let opened = crate::crypto::unwrap(&wrapping, &file.binding(), &file.wrapped);
            if opened.is_some_and(|master| master.to_bytes() == ours) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Deletes the key file `id`, never the one this repository was opened with. That one is the
    /// only key file known to open it: another that opens with a passphrase may still hold
    /// another master key (left by an `init` that crashed, or copied from another repository),
    /// which a count of the files in `keys/` cannot tell. So the last working key always stays.
    pub fn remove_key(&self, id: &Id) -> Result<()> {
        let listed = key_ids(self.backend.list(FileKind::Key.dir())?);
        let short = id.short();
        if !listed.contains(id) {
            return Err(Error::NoSuchKey(short));
        }
        if Some(*id) == self.key_used && listed.len() == 1 {
            return Err(Error::Refused(format!(
                "key {short} is the repository's last key: removing it would make everything unreadable"
            )));
        }
        if Some(*id) == self.key_used {
            return Err(Error::Refused(format!(
                "key {short} opened the repository, and the other key files may not (one left by an \
                 interrupted init opens nothing): open the repository with another key's password to remove \
                 this one, or give it a new password with `key passwd`"
            )));
        }
        self.delete_file(FileKind::Key, id)
    }

    /// Replaces the key file this repository was opened with by one for `passphrase`: the new
    /// key file is written before the old one is deleted, so a crash between leaves both working.
    pub fn replace_key(&self, passphrase: &str) -> Result<Id> {
        let old = self.key_used.ok_or(Error::NotEncrypted)?;
        let added = self.add_key(passphrase)?;
        self.delete_file(FileKind::Key, &old)?;
        Ok(added)
    }

    /// Seals an encoded envelope file before it is written (unchanged without encryption).
    pub fn seal_file(&self, plain: Vec<u8>) -> Vec<u8> {
        envelope::seal_file(plain, self.keys.as_ref())
    }

    /// Seals a stored (compressed) blob; its id is authenticated with it.
    pub fn seal_blob(&self, id: &Id, stored: Vec<u8>) -> Vec<u8> {
        match &self.keys {
            Some(keys) => keys.seal(&id.0, &stored),
            None => stored,
        }
    }

    /// The plain content of a blob from its stored bytes: opened, decompressed and checked
    /// against its id.
    pub fn decode_blob(&self, entry: &BlobEntry, stored: &[u8], pack: &Id) -> Result<Vec<u8>> {
        let (mut opened, mut plain) = (Vec::new(), Vec::new());
        self.open_blob(entry, stored, pack, &mut opened, &mut plain)?;
        // Whichever buffer `open_blob` left the plain bytes in.
        Ok(match entry.codec {
            Codec::Zstd | Codec::ZstdDict => plain,
            Codec::Raw if self.keys.is_some() => opened,
            Codec::Raw => stored.to_vec(),
        })
    }

    /// Like [`Repository::decode_blob`], without copying: the plain bytes are `stored` itself
    /// for a blob stored raw, `opened` (which receives the decrypted bytes) for one stored raw
    /// and encrypted, else `plain`. Both buffers keep their memory for the next blob, so
    /// verifying a pack allocates nothing.
    pub fn open_blob<'a>(
        &self,
        entry: &BlobEntry,
        stored: &'a [u8],
        pack: &Id,
        opened: &'a mut Vec<u8>,
        plain: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let compressed: &'a [u8] = match &self.keys {
            Some(keys) => {
                keys.open_into(&entry.id.0, stored, opened, "blob").map_err(|e| unopened(entry, pack, e))?;
                opened
            }
            None => stored,
        };
        self.finish_blob(entry, pack, compressed, plain)
    }

    /// Like [`Repository::decode_blob`], decrypting where the stored bytes lie (which leaves them
    /// decrypted, or scrambled if the blob is damaged) and decoding into `plain` (replacing what it
    /// held, using its memory), so that a reader that keeps its buffers allocates nothing.
    pub fn decode_blob_in_place(
        &self,
        entry: &BlobEntry,
        stored: &mut [u8],
        pack: &Id,
        plain: &mut Vec<u8>,
    ) -> Result<()> {
        if entry.codec != Codec::Raw {
            self.open_blob_in_place(entry, stored, pack, plain)?;
            return Ok(());
        }
        // Stored raw, the content lies in `stored`, where `plain` cannot borrow it from.
        let mut unused = Vec::new();
        let content = self.open_blob_in_place(entry, stored, pack, &mut unused)?;
        plain.clear();
        plain.extend_from_slice(content);
        Ok(())
    }

    /// Like [`Repository::open_blob`], decrypting where the stored bytes lie (which leaves them
    /// decrypted, or scrambled if the blob is damaged).
    pub fn open_blob_in_place<'a>(
        &self,
        entry: &BlobEntry,
        stored: &'a mut [u8],
        pack: &Id,
        plain: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let compressed: &'a [u8] = match &self.keys {
            Some(keys) => keys.open_in_place(&entry.id.0, stored, "blob").map_err(|e| unopened(entry, pack, e))?,
            None => stored,
        };
        self.finish_blob(entry, pack, compressed, plain)
    }

    /// Decompresses an opened blob (into `plain` unless it is stored raw) and checks its id.
    fn finish_blob<'a>(
        &self,
        entry: &BlobEntry,
        pack: &Id,
        compressed: &'a [u8],
        plain: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let bad = |reason: String| Error::BadBlob { id: entry.id, pack: *pack, reason };
        let content: &'a [u8] = match entry.codec {
            Codec::Raw if compressed.len() == entry.raw_len as usize => compressed,
            Codec::ZstdDict => {
                let (dictionary, frame) = compression::dictionary_of(compressed).map_err(bad)?;
                let dictionary = self.dictionary(&dictionary).map_err(|e| bad(e.to_string()))?;
                compression::decompress_with(frame, &dictionary, entry.raw_len, plain).map_err(bad)?;
                plain
            }
            codec => {
                compression::decompress_into(codec, compressed, entry.raw_len, plain).map_err(bad)?;
                plain
            }
        };
        if self.hasher().id(content) != entry.id {
            return Err(bad("content does not hash to its id".into()));
        }
        Ok(content)
    }

    /// The compression dictionary `id` (`dicts/<id>`, store-format/dictionary.md), read once.
    pub fn dictionary(&self, id: &Id) -> Result<Arc<Dictionary>> {
        let kept = || self.dictionaries.lock().expect("poisoned").get(id).cloned();
        if let Some(found) = kept() {
            return Ok(found);
        }
        // One read at a time: the decoders of a restore all wanted the same one at once, and
        // each fetched it.
        let _one_fetch = self.dictionary_fetch.lock().expect("poisoned");
        if let Some(found) = kept() {
            return Ok(found);
        }
        let key = FileKind::Dictionary.name(id);
        if let Some(why) = self.lost_dictionaries.lock().expect("poisoned").get(id) {
            return Err(Error::corrupt(self.describe(&key), why.clone()));
        }
        let loaded = self.load_dictionary(id, &key);
        if let Err(Error::Corrupt { reason, .. }) = &loaded {
            self.lost_dictionaries.lock().expect("poisoned").insert(*id, reason.clone());
        }
        loaded
    }

    /// Whether a dictionary was found missing or damaged: a blob compressed with one may have
    /// failed for want of it, which reading the blob again cannot mend.
    pub(crate) fn lost_a_dictionary(&self) -> bool {
        !self.lost_dictionaries.lock().expect("poisoned").is_empty()
    }

    /// Reads and loads the dictionary `id` from the file `key`.
    fn load_dictionary(&self, id: &Id, key: &str) -> Result<Arc<Dictionary>> {
        let missing = || Error::corrupt(self.describe(key), "the dictionary is missing");
        let (_, plain) = match self.read_named(FileKind::Dictionary, key) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Err(missing()),
            other => other?.ok_or_else(missing),
        }?;
        let file = self.describe(key);
        let bytes = crate::format::dictionary::decode(&plain, &file)?;
        let loaded = Dictionary::new(*id, bytes, self.config.compression_level)
            .ok_or_else(|| Error::corrupt(&file, "zstd cannot load it as a dictionary"))?;
        Ok(self.keep_dictionary(loaded))
    }

    /// Keeps a loaded dictionary for the next blob that names it; at most
    /// [`DICTIONARIES_KEPT`], so a repository of many cannot fill memory.
    fn keep_dictionary(&self, dictionary: Dictionary) -> Arc<Dictionary> {
        self.lost_dictionaries.lock().expect("poisoned").remove(&dictionary.id);
        let dictionary = Arc::new(dictionary);
        let mut kept = self.dictionaries.lock().expect("poisoned");
        if kept.len() >= DICTIONARIES_KEPT {
            kept.clear();
        }
        kept.insert(dictionary.id, dictionary.clone());
        dictionary
    }

    /// The dictionary that blob `id` names, if it is stored with one ([`Codec::ZstdDict`]): read
    /// from its stored bytes, without decoding it.
    pub(crate) fn dictionary_of_blob(&self, index: &Index, id: &Id) -> Result<Option<Id>> {
        let Some(location) = index.get(id).filter(|l| l.codec == Codec::ZstdDict) else { return Ok(None) };
        let key = FileKind::Pack.name(&index.pack_id(&location));
        let stored = self.backend.get_range(&key, location.offset as u64, location.stored_len as u64)?;
        self.stored_dictionary(id, &stored)
    }

    /// The dictionary that `entry`, a blob of `pack` whose trailer lists `listed`
    /// (store-format/pack.md), names: none unless its codec is 2; the only one listed; else what
    /// its stored bytes say (one read).
    pub(crate) fn dictionary_in_pack(&self, pack: &Id, listed: &[Id], entry: &BlobEntry) -> Result<Option<Id>> {
        match (entry.codec, listed) {
            (Codec::ZstdDict, [only]) => Ok(Some(*only)),
            (Codec::ZstdDict, _) => {
                let stored =
                    self.read_file_range(FileKind::Pack, pack, entry.offset as u64, entry.stored_len as u64)?;
                self.stored_dictionary(&entry.id, &stored)
            }
            _ => Ok(None),
        }
    }

    /// The dictionary that the stored bytes of blob `id`, a codec 2 blob, name; `None` if they
    /// name none (too short to).
    pub(crate) fn stored_dictionary(&self, id: &Id, stored: &[u8]) -> Result<Option<Id>> {
        let mut opened = Vec::new();
        let opened = match &self.keys {
            Some(keys) => {
                keys.open_into(&id.0, stored, &mut opened, "blob")?;
                &opened[..]
            }
            None => stored,
        };
        Ok(compression::dictionary_of(opened).ok().map(|(dictionary, _)| dictionary))
    }

    /// Stores a new compression dictionary (durable when this returns, before any blob compressed
    /// with it is written) and returns it, ready for use.
    pub fn add_dictionary(&self, bytes: &[u8]) -> Result<Arc<Dictionary>> {
        let sealed = self.seal_file(crate::format::dictionary::encode(bytes));
        let id = Id::of(&sealed);
        let loaded = Dictionary::new(id, bytes, self.config.compression_level)
            .ok_or_else(|| Error::Invalid("zstd cannot load the dictionary it trained".into()))?;
        self.put_file_raw(FileKind::Dictionary, &id, &sealed)?;
        Ok(self.keep_dictionary(loaded))
    }

    /// How blob ids are computed here.
    pub fn hasher(&self) -> BlobHasher {
        self.keys.as_ref().map_or_else(BlobHasher::default, |k| BlobHasher::keyed(k.master.id))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// [`Repository::backend`], shared.
    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Takes a repository lock for `command` (see [`lock`]), waiting up to `wait`.
    pub fn lock(&self, kind: lock::LockKind, command: &str, wait: std::time::Duration) -> Result<lock::Lock> {
        lock::Lock::acquire(self.backend.clone(), kind, command, wait)
    }

    /// [`Repository::lock`] taken, refreshed and released with create-only puts alone: lock files
    /// end by release markers, never by deletes (`cairn sync` into an append-only destination).
    pub fn lock_create_only(
        &self,
        kind: lock::LockKind,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<lock::Lock> {
        lock::Lock::acquire_with(self.backend.clone(), kind, command, wait, lock::Release::Mark)
    }

    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.config.chunker).with_hasher(self.hasher())
    }

    /// The files of `kind` with their lengths; names that are not this kind's (strays, a
    /// writer's temporary files) are left out.
    pub fn list_files(&self, kind: FileKind) -> Result<Vec<(Id, u64)>> {
        let listed = self.backend.list(kind.dir())?;
        Ok(listed.into_iter().filter_map(|(name, len)| Some((kind.id_of(&name)?, len))).collect())
    }

    /// The bytes all files below `kind`'s directory take, strays included.
    pub fn stored_bytes(&self, kind: FileKind) -> Result<u64> {
        Ok(self.backend.list(kind.dir())?.iter().map(|(_, len)| len).sum())
    }

    /// Reads the file of `kind` named `id` as it is stored (sealed, not verified).
    pub fn read_file_raw(&self, kind: FileKind, id: &Id) -> Result<Vec<u8>> {
        self.backend.get(&kind.name(id))
    }

    /// Reads `len` bytes at `offset` of the file of `kind` named `id`, as they are stored.
    pub fn read_file_range(&self, kind: FileKind, id: &Id, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.backend.get_range(&kind.name(id), offset, len)
    }

    /// Writes the file of `kind` named `id` (bytes already sealed, whose hash is `id`) with
    /// create-only semantics; `false` if it was already there. Durable when this returns.
    pub fn put_file_raw(&self, kind: FileKind, id: &Id, bytes: &[u8]) -> Result<bool> {
        self.backend.put(&kind.name(id), bytes)
    }

    /// Deletes the file of `kind` named `id` (gone already is fine).
    pub fn delete_file(&self, kind: FileKind, id: &Id) -> Result<()> {
        self.backend.delete(&kind.name(id))
    }

    /// Whether these credentials may delete here (create-only ones may not): one delete of a
    /// name that never exists.
    pub fn may_delete(&self) -> Result<bool> {
        match self.backend.delete(&FileKind::Snapshot.probe("delete-check")) {
            Err(e) if crate::backend::permission_denied(&e) => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// Every pack file present, with its length; keys under `packs/` that are not pack names
    /// are returned apart, as strays.
    pub fn list_packs(&self) -> Result<(std::collections::HashMap<Id, u64>, Vec<String>)> {
        list_packs(&*self.backend)
    }

    /// Names a repository file in messages: its location and key.
    pub fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.backend.location())
    }

    /// Reads every index file. A damaged index file is skipped and recorded (see
    /// [`Repository::take_damage`]): its blobs then count as missing, which only makes a snapshot
    /// store them again and makes a restore report exactly the files that need them.
    pub fn load_index(&self) -> Result<Index> {
        let index = index::open::load(self)?;
        if let Some(cache) = &self.cache {
            // Tree packs that a prune has removed from the store.
            let packs: std::collections::HashSet<String> =
                index.packs.iter().map(|(pack, _)| FileKind::Pack.name(pack)).collect();
            cache.retain(FileKind::Pack.dir(), |key| packs.contains(key));
        }
        Ok(index)
    }

    /// Every readable snapshot, oldest first. Damaged manifests are skipped and recorded, so one
    /// bad file never hides the others.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        Ok(self.snapshots_and_damage()?.0)
    }

    /// [`Repository::snapshots`], and what was said of each snapshot file that could not be read
    /// (recorded as damage too, with whatever else the process found damaged meanwhile).
    pub fn snapshots_and_damage(&self) -> Result<SnapshotsAndDamage> {
        let kind = FileKind::Snapshot;
        let listed = self.listed_for_reading(kind)?;
        let noted = Mutex::new(Vec::new());
        let decode = |bytes: Vec<u8>, file: &str| Snapshot::decode(&bytes, file);
        let mut out = self.read_listed_noting(kind, &listed, &decode, Some(&noted));
        out.sort_by_key(|(id, s)| (s.time_sec, s.time_nsec, *id));
        Ok((out, noted.into_inner().expect("poisoned")))
    }

    /// The files of `kind` listed, and the cache's copies of those no longer listed dropped.
    fn listed_for_reading(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let dir = kind.dir();
        let listed = self.backend.list(dir)?;
        if let Some(cache) = &self.cache {
            let names: std::collections::HashSet<&str> = listed.iter().map(|(key, _)| key.as_str()).collect();
            cache.retain(dir, |key| names.contains(key));
        }
        Ok(listed)
    }

    /// Decodes every file of `kind`. Files that fail (their hash or their decoding) are skipped
    /// and recorded as damage; a listing failure is an error.
    pub fn read_all_named<T: Send>(
        &self,
        kind: FileKind,
        decode: impl Fn(&[u8], &str) -> Result<T> + Sync,
    ) -> Result<Vec<(Id, T)>> {
        let listed = self.listed_for_reading(kind)?;
        Ok(self.read_listed(kind, &listed, &|bytes: Vec<u8>, file: &str| decode(&bytes, file)))
    }

    /// The snapshots there are now, reading only the manifests that `known` does not hold yet
    /// (a long-running reader, `cairn serve`, keeps those it decoded; they never change): every
    /// id listed, and the new manifests.
    pub fn snapshots_besides(&self, known: &(dyn Fn(&Id) -> bool + Sync)) -> Result<SnapshotsBesides> {
        let kind = FileKind::Snapshot;
        let listed = self.listed_for_reading(kind)?;
        let ids: Vec<Id> = listed.iter().filter_map(|(key, _)| kind.id_of(key)).collect();
        let new: Vec<(String, u64)> =
            listed.into_iter().filter(|(key, _)| kind.id_of(key).is_some_and(|id| !known(&id))).collect();
        Ok((ids, self.read_listed(kind, &new, &|bytes: Vec<u8>, file: &str| Snapshot::decode(&bytes, file))))
    }

    /// Reads and decodes the files `listed`, in parallel; `decode` owns the bytes it is given (an
    /// index file at 10^8 blobs is hundreds of megabytes: its decoder keeps them, not a copy).
    fn read_listed<T: Send>(
        &self,
        kind: FileKind,
        listed: &[(String, u64)],
        decode: &(impl Fn(Vec<u8>, &str) -> Result<T> + Sync),
    ) -> Vec<(Id, T)> {
        self.read_listed_noting(kind, listed, decode, None)
    }

    /// [`Repository::read_listed`], also noting in `noted` what is said of each file that is
    /// damaged.
    fn read_listed_noting<T: Send>(
        &self,
        kind: FileKind,
        listed: &[(String, u64)],
        decode: &(impl Fn(Vec<u8>, &str) -> Result<T> + Sync),
        noted: Option<&Mutex<Vec<String>>>,
    ) -> Vec<(Id, T)> {
        // In parallel: a year of nightly runs leaves hundreds of small files, each a disk seek, or
        // on an object store a round trip, of which many more are in flight at once than there
        // are cores (measured: 20,000 audit records from loopback S3 in 49.6 s on 2 threads).
        let read = || listed.par_iter().filter_map(|(key, _)| self.read_decoded(kind, key, decode, noted)).collect();
        match self.backend.disk_path() {
            Some(_) => read(),
            None => round_trips().install(read),
        }
    }

    /// One content-named file, decoded; `None` if it is not there any more, not named by an id,
    /// or damaged (recorded).
    fn read_decoded<T>(
        &self,
        kind: FileKind,
        key: &str,
        decode: impl Fn(Vec<u8>, &str) -> Result<T>,
        noted: Option<&Mutex<Vec<String>>>,
    ) -> Option<(Id, T)> {
        let decoded = self
            .read_named(kind, key)
            .and_then(|found| found.map(|(id, bytes)| Ok((id, decode(bytes, &self.describe(key))?))).transpose());
        match decoded {
            Ok(entry) => entry,
            // Removed between the listing and the read (a forget or prune): not damage.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                if let Some(noted) = noted {
                    noted.lock().expect("poisoned").push(e.to_string());
                }
                self.record_damage(e);
                None
            }
        }
    }

    /// Reads a file named by the hash of its content. `None` for names that are not ids (never
    /// cairn's: an editor's backup, say); an error if the content does not match the name.
    fn read_named(&self, kind: FileKind, key: &str) -> Result<Option<(Id, Vec<u8>)>> {
        // Exactly the names `list_files` lists, and prune and repair delete.
        let Some(id) = kind.id_of(key) else {
            return Ok(None);
        };
        let cached = self.cache.as_ref().and_then(|cache| cache.read(key)).filter(|bytes| Id::of(bytes) == id);
        let bytes = match cached {
            Some(bytes) => bytes,
            None => {
                let mut bytes = self.backend.get(key)?;
                if Id::of(&bytes) != id {
                    // Read once more: what a link (or a flaky disk) changed on the way is not
                    // what the store holds.
                    bytes = self.backend.get(key)?;
                }
                if Id::of(&bytes) != id {
                    return Err(Error::corrupt(
                        self.describe(key),
                        "content does not match its name: the file is damaged",
                    ));
                }
                if let Some(cache) = &self.cache {
                    cache.write(key, &bytes);
                }
                bytes
            }
        };
        Ok(Some((id, self.open_named(key, bytes)?)))
    }

    /// The plain envelope of the file `key`'s bytes: opened with the key when sealed.
    fn open_named(&self, key: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        if envelope::is_encrypted(&bytes) {
            return envelope::decrypt(&bytes, self.keys.as_ref(), &self.describe(key));
        }
        if self.keys.is_some() {
            // Only a holder of the key can write a sealed file; a plain one was put there by
            // someone else.
            return Err(Error::corrupt(self.describe(key), "not sealed, in an encrypted repository"));
        }
        Ok(bytes)
    }

    fn record_damage(&self, error: Error) {
        self.damage.lock().expect("poisoned").push(error);
    }

    /// Repository files that were skipped because they are damaged, since the last call.
    pub fn take_damage(&self) -> Vec<Error> {
        std::mem::take(&mut *self.damage.lock().expect("poisoned"))
    }

    /// Resolves `latest` (the newest snapshot but a safety snapshot), a full id or a unique id
    /// prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_of(spec, None)
    }

    /// [`Repository::find_snapshot`] among the snapshots of one source (its `--source` name, or
    /// its paths) when `source` is given; [`crate::select::find`] takes every filter.
    pub fn find_snapshot_of(&self, spec: &str, source: Option<&str>) -> Result<(Id, Snapshot)> {
        use crate::select::{find, Filter, Pick};
        let pick = if spec == "latest" { Pick::Latest } else { Pick::Id(spec.to_string()) };
        find(self, &pick, &Filter::of_source(source))
    }

    /// What the index files say about each pack, all of them together: a pack's entries are the
    /// union of what every intact index file lists for it. Files that disagree about a pack (another
    /// length or other entries: damage, or an index file forged to hide live blobs) make it
    /// disputed; its trailer says what it holds. Damaged files are skipped and recorded, as by
    /// [`Repository::load_index`].
    pub fn indexed_packs(&self) -> Result<IndexedPacks> {
        let mut merged = IndexedPacks::default();
        for (id, file) in self.read_all_named(FileKind::Index, IndexFile::decode)? {
            merged.files.push(id);
            for mut pack in file.packs {
                pack.blobs.sort_unstable_by_key(|b| (b.offset, b.id));
                match merged.packs.entry(pack.id) {
                    std::collections::btree_map::Entry::Vacant(free) => _ = free.insert(pack),
                    std::collections::btree_map::Entry::Occupied(mut known) => {
                        if known.get().len != pack.len || known.get().blobs != pack.blobs {
                            merged.disputed.insert(pack.id);
                            let known = known.get_mut();
                            let listed: std::collections::HashSet<BlobEntry> = known.blobs.iter().copied().collect();
                            known.blobs.extend(pack.blobs.into_iter().filter(|b| !listed.contains(b)));
                        }
                    }
                }
            }
        }
        Ok(merged)
    }

    /// Writes index files naming `packs`, [`PACKS_PER_INDEX_FILE`] to a file in the order given,
    /// each durable when this returns; returns their ids. How prune and repair rewrite the
    /// index (store-format/index.md, "What writers put in an index file").
    pub fn write_index_files(&self, packs: &[IndexedPack]) -> Result<Vec<Id>> {
        let mut written = Vec::new();
        for group in packs.chunks(PACKS_PER_INDEX_FILE) {
            let bytes = self.seal_file(IndexFile { packs: group.to_vec() }.encode());
            let id = Id::of(&bytes);
            self.put_file_raw(FileKind::Index, &id, &bytes)?;
            written.push(id);
        }
        Ok(written)
    }

    /// Writes a snapshot manifest: the commit point of a snapshot. Call only after the blob
    /// store has finished.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let bytes = self.seal_file(snapshot.encode());
        let id = Id::of(&bytes);
        self.put_file_raw(FileKind::Snapshot, &id, &bytes)?;
        Ok(id)
    }

    /// Why the snapshot file `id`, read afresh, holds no snapshot: `Some(why)` when it is
    /// damaged where it is stored, `None` when it reads as a snapshot. Damaged means: bytes that
    /// two reads agree on and that do not match the file's name; or bytes that match it (as
    /// written) and yet fail their checksum, do not open with this repository's key (or are not
    /// sealed at all, in an encrypted repository), or do not decode. A file that cannot be
    /// read, reads differently twice, or has a version or an encryption mode this cairn does
    /// not know (a newer cairn's) is an error: that tells nothing about its bytes.
    pub fn snapshot_damage(&self, id: &Id) -> Result<Option<String>> {
        let key = FileKind::Snapshot.name(id);
        let file = self.describe(&key);
        let bytes = self.backend.get(&key)?;
        if Id::of(&bytes) != *id {
            if self.backend.get(&key)? != bytes {
                return Err(Error::io(
                    &file,
                    std::io::Error::other(
                        "two reads of it brought different bytes: the link or the store changes them on the way, so \
                         whether the file itself is damaged cannot be told",
                    ),
                ));
            }
            return Ok(Some(format!("{file}: its content does not match its name: the file is damaged")));
        }
        let known = [envelope::ENCRYPTION_NONE, envelope::ENCRYPTION_AES256GCM];
        if let Some(mode) = bytes.get(10).copied().filter(|mode| !known.contains(mode)) {
            return Err(Error::UnsupportedVersion {
                file,
                what: "encryption mode",
                found: mode.into(),
                supported: envelope::ENCRYPTION_AES256GCM.into(),
            });
        }
        match self.open_named(&key, bytes).and_then(|plain| Snapshot::decode(&plain, &file).map(drop)) {
            Ok(()) => Ok(None),
            Err(e @ Error::Corrupt { .. }) => Ok(Some(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Deletes the snapshot manifest named `id` (its hex form; a name that is not one is refused,
    /// so no other file can be reached through it).
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        let id = Id::from_hex(id).ok_or_else(|| Error::NoSuchSnapshot(id.to_string()))?;
        self.delete_file(FileKind::Snapshot, &id)
    }

    /// Keeps copies of this object-store repository's immutable files below `root` from now on
    /// ([`cache`]). A repository in a directory has no use for one. Both keep the sorted copy
    /// of their index there ([`index::open`]).
    pub fn use_cache(&mut self, root: &Path) -> Result<()> {
        self.index_dir = Some(root.to_path_buf());
        if self.backend.disk_path().is_none() {
            self.cache = Some(cache::Cache::open(root, &self.config.repo_id).map_err(|e| Error::io(root, e))?);
        }
        Ok(())
    }

    /// Reads a blob through `index`, decodes it and checks that it hashes to `id` (what
    /// [`Indexed::read_blob`] does; here for an index still growing, as a snapshot's).
    pub(crate) fn read_blob(&self, index: &Index, id: &Id) -> Result<Vec<u8>> {
        let location = &index.get(id).ok_or(Error::MissingBlob(*id))?;
        let pack = index.pack_id(location);
        let key = FileKind::Pack.name(&pack);
        if location.kind == BlobKind::Tree {
            if let Some(cache) = &self.cache {
                return self.read_cached_tree(cache, &key, id, location, &pack);
            }
        }
        match self.read_located(index, id, location) {
            // What a link changed on the way is not what the store holds: read once more. (A
            // disk's second read would come from the same page cache.)
            Err(e) if self.worth_reading_again(&e, location) => self.read_located(index, id, location),
            read => read,
        }
    }

    /// Whether a blob at `location` that failed with `error` may read whole a second time: its
    /// bytes failed their checks (not the read itself, which the backend retries), they came
    /// over a link, and not for want of a dictionary found lost.
    pub(crate) fn worth_reading_again(&self, error: &Error, location: &index::Location) -> bool {
        matches!(error, Error::BadBlob { .. })
            && self.backend.disk_path().is_none()
            && !(location.codec == Codec::ZstdDict && self.lost_a_dictionary())
    }

    /// Reads blob `id`, at `location` in `index`, from its pack by itself, decodes it and checks
    /// it: for [`Self::read_blob`], and for a blob that a read of many together fetched changed
    /// on the way.
    pub(crate) fn read_located(&self, index: &Index, id: &Id, location: &index::Location) -> Result<Vec<u8>> {
        let pack = index.pack_id(location);
        let key = FileKind::Pack.name(&pack);
        let stored = self.backend.get_range(&key, location.offset as u64, location.stored_len as u64)?;
        self.decode_located(id, location, &stored, &pack)
    }

    /// The plain content of blob `id`, stored at `location` in `pack` as `stored`, checked.
    pub fn decode_located(&self, id: &Id, location: &index::Location, stored: &[u8], pack: &Id) -> Result<Vec<u8>> {
        self.decode_blob(&location.entry(id), stored, pack)
    }

    /// A tree blob from the cached copy of its pack, which is fetched whole (and checked against
    /// its name) when there is none: walking a snapshot's trees then costs a request per tree
    /// pack, not per tree. A copy whose blob fails is fetched again, once.
    fn read_cached_tree(
        &self,
        cache: &cache::Cache,
        key: &str,
        id: &Id,
        location: &index::Location,
        pack: &Id,
    ) -> Result<Vec<u8>> {
        let (offset, len) = (location.offset as u64, location.stored_len as usize);
        if let Some(stored) = cache.read_range(key, offset, len) {
            if let Ok(plain) = self.decode_located(id, location, &stored, pack) {
                return Ok(plain);
            }
        }
        let _one_fetch = self.tree_fetch.lock().expect("poisoned");
        // Another thread may have fetched it while this one waited.
        if let Some(plain) =
            cache.read_range(key, offset, len).and_then(|stored| self.decode_located(id, location, &stored, pack).ok())
        {
            return Ok(plain);
        }
        let whole = self.backend.get(key)?;
        if Id::of(&whole) != *pack {
            return Err(Error::corrupt(self.describe(key), "content does not match its name: the pack is damaged"));
        }
        cache.write(key, &whole);
        let stored = whole.get(offset as usize..offset as usize + len).ok_or_else(|| {
            Error::corrupt(self.describe(key), format!("too short for blob {} at {offset}", id.short()))
        })?;
        self.decode_located(id, location, stored, pack)
    }

    /// [`Repository::read_blob`] of a tree, decoded.
    pub(crate) fn read_tree(&self, index: &Index, id: &Id) -> Result<Tree> {
        let bytes = self.read_blob(index, id)?;
        Tree::decode(&bytes, &format!("tree {}", id.short()))
    }

    /// A file's chunk ids: the node's own, or its chain of list blobs read (from the tree cache
    /// when there is one, as trees are) and expanded (store-format/tree.md, "Chunk lists"). Every
    /// reader of file content goes through here. A list blob missing from the index is
    /// [`Error::MissingBlob`], as a missing chunk is.
    pub(crate) fn chunk_list<'a>(&self, index: &Index, chunks: &'a ChunkList) -> Result<Cow<'a, [Id]>> {
        match chunks {
            ChunkList::Inline(ids) => Ok(Cow::Borrowed(ids)),
            ChunkList::Stored { count, lists } => {
                // Read one at a time: a hostile chain of 1 GiB lists holds two, not sixteen.
                let blobs = lists.iter().map(|id| Ok((self.read_blob(index, id)?, format!("list {}", id.short()))));
                Ok(Cow::Owned(chunk_list::expand(blobs, *count)?))
            }
        }
    }
}

/// A repository with its index loaded: what reads trees and blobs by their ids (rustic's
/// indexed repository is the anchor). Everything a repository does, it does too (it derefs to
/// it); what needs the index takes one of these rather than a repository and an index apart.
pub struct Indexed<'r> {
    repo: &'r Repository,
    index: Index,
}

impl<'r> Indexed<'r> {
    /// `repo` with `index` (loaded before, as `check` loads it beside its reads).
    pub fn new(repo: &'r Repository, index: Index) -> Indexed<'r> {
        Indexed { repo, index }
    }

    /// `repo` with its index read now ([`Repository::load_index`]).
    pub fn load(repo: &'r Repository) -> Result<Indexed<'r>> {
        Ok(Indexed { repo, index: repo.load_index()? })
    }

    pub fn repo(&self) -> &'r Repository {
        self.repo
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Reads a blob, decodes it and checks that it hashes to `id`.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        self.repo.read_blob(&self.index, id)
    }

    /// Reads and decodes the tree `id`.
    pub fn read_tree(&self, id: &Id) -> Result<Tree> {
        self.repo.read_tree(&self.index, id)
    }

    /// A file's chunk ids, its list blobs expanded ([`Repository::chunk_list`]).
    pub fn chunk_list<'a>(&self, chunks: &'a ChunkList) -> Result<Cow<'a, [Id]>> {
        self.repo.chunk_list(&self.index, chunks)
    }
}

impl std::ops::Deref for Indexed<'_> {
    type Target = Repository;

    fn deref(&self) -> &Repository {
        self.repo
    }
}

/// What [`Repository::indexed_packs`] found.
#[derive(Debug, Default)]
pub struct IndexedPacks {
    /// Every pack an intact index file names, with the union of the entries the files list, in
    /// pack order.
    pub packs: std::collections::BTreeMap<Id, IndexedPack>,
    /// Packs that index files disagree about.
    pub disputed: std::collections::BTreeSet<Id>,
    /// The intact index files (ids).
    pub files: Vec<Id>,
}

/// [`Repository::list_packs`] on a backend not yet opened as a repository.
pub fn list_packs(backend: &dyn Backend) -> Result<(std::collections::HashMap<Id, u64>, Vec<String>)> {
    let mut packs = std::collections::HashMap::new();
    let mut strays = Vec::new();
    for (key, len) in backend.list(FileKind::Pack.dir())? {
        match FileKind::Pack.id_of(&key) {
            Some(id) => {
                packs.insert(id, len);
            }
            _ => strays.push(key),
        }
    }
    Ok((packs, strays))
}

/// The default repository: `$XDG_DATA_HOME/cairn/repo`, or `~/.local/share/cairn/repo`.
pub fn default_location() -> Option<PathBuf> {
    Some(xdg_base("XDG_DATA_HOME", ".local/share")?.join("cairn").join("repo"))
}

/// An XDG base directory: the variable `var` if set, else `below_home` in the home directory.
pub(crate) fn xdg_base(var: &str, below_home: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| PathBuf::from(home).join(below_home)))
}

/// Writes a key file wrapping `master` under `passphrase`; returns its id.
fn write_key_file(backend: &dyn Backend, master: &MasterKey, passphrase: &str) -> Result<Id> {
    let mut file = KeyFile {
        kdf: crate::crypto::KdfParams::default_for_new_keys(),
        salt: crate::crypto::secure_random(),
        created_ms: crate::clock::now_ms(),
        hostname: crate::host::hostname(),
        wrapped: Vec::new(),
    };
    let wrapping = crate::crypto::wrapping_key(passphrase.as_bytes(), &file.salt, file.kdf)?;
    file.wrapped = crate::crypto::wrap(&wrapping, &file.binding(), master);
    let bytes = file.encode();
    let id = Id::of(&bytes);
    backend.put(&FileKind::Key.name(&id), &bytes)?;
    Ok(id)
}

fn read_key_file(backend: &dyn Backend, location: &str, id: &Id) -> Result<KeyFile> {
    let name = FileKind::Key.name(id);
    KeyFile::decode(&backend.get(&name)?, &format!("{location}/{name}"))
}

/// The key files of a listing of `keys/`: only those named as cairn names them, which are what
/// `key list` shows, `key remove` reaches and an opening tries.
fn key_ids(listed: Vec<(String, u64)>) -> Vec<Id> {
    listed.iter().filter_map(|(name, _)| FileKind::Key.id_of(name)).collect()
}

/// Finds the key file (of `files`, the listing of `keys/`) that `passphrase` opens whose master
/// key also opens the config; returns the keys, the key file's id and what `opens_config` made
/// of the config.
fn unlock<T>(
    backend: &dyn Backend,
    files: Result<Vec<(String, u64)>>,
    location: &str,
    passphrase: &str,
    opens_config: impl Fn(&Keys) -> Result<T>,
) -> Result<(Keys, Id, T)> {
    let files = key_ids(files?);
    if files.is_empty() {
        return Err(Error::Invalid(format!(
            "{location} is encrypted but has no key file (keys/ is empty or missing): it cannot be opened"
        )));
    }
    let mut damaged = Vec::new();
    let mut config_error = None;
    for id in files {
        let file = match read_key_file(backend, location, &id) {
            Ok(file) => file,
            Err(e) => {
                damaged.push(e.to_string());
                continue;
            }
        };
        let wrapping = crate::crypto::wrapping_key(passphrase.as_bytes(), &file.salt, file.kdf)?;
        if let Some(master) = crate::crypto::unwrap(&wrapping, &file.binding(), &file.wrapped) {
            let keys = Keys::new(master);
            match opens_config(&keys) {
                Ok(config) => return Ok((keys, id, config)),
                // The passphrase was right; the config is what failed (damaged, or sealed under
                // another master key).
                Err(e) => config_error = Some(e),
            }
        }
    }
    if let Some(e) = config_error {
        return Err(e);
    }
    let damaged = if damaged.is_empty() {
        String::new()
    } else {
        format!(" ({} damaged key files: {})", damaged.len(), damaged.join("; "))
    };
    Err(Error::WrongPassword(format!("{location}{damaged}")))
}

/// A blob whose authentication failed.
fn unopened(entry: &BlobEntry, pack: &Id, e: Error) -> Error {
    Error::BadBlob { id: entry.id, pack: *pack, reason: e.to_string() }
}
