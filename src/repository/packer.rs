//! The blob store used while writing: dedups blobs against the index and against what this run
//! already stored, compresses them, groups them into packs of the configured target size (data and
//! trees in separate packs, so tree walks never read file content), writes each full pack, and
//! hands each full pack to [`super::upload::Uploads`], which puts it and writes index files for
//! the packs once they are durable, while the workers go on.
//!
//! Ordering invariant (store-format/README.md, "Commit order"): a pack is durable before any
//! index file names it, and [`BlobStore::finish`] returns only once every blob handed to
//! [`BlobStore::store`] (or `store_in`, `store_verbatim`) is in a durable pack and a durable
//! index file. Only then may a snapshot manifest refer to them. A failed upload fails the next
//! [`BlobStore::store`] that fills a pack, and [`BlobStore::finish`], with its error.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::index::{Index, SortedIds};
use super::upload::{uploaders_for, PackBytes, Uploads};
use super::Repository;
use crate::compression::{self, Dictionary};
use crate::crypto::Keys;
use crate::error::Result;
use crate::format::envelope::{ENCRYPTION_AES256GCM, ENCRYPTION_NONE};
use crate::format::index::IndexedPack;
use crate::format::pack::{self, BlobEntry, BlobKind, Codec};
use crate::id::Id;

/// Accumulates one pack in memory.
struct Packer {
    bytes: Vec<u8>,
    entries: Vec<BlobEntry>,
    /// The dictionary each entry's blob is compressed with, if its codec is 2: the pack's list
    /// ([`Packer::dictionaries`]) comes from it, and [`Packer::absorb`] moves blobs with it.
    named: Vec<Option<Id>>,
    target: usize,
    keys: Option<Keys>,
    /// The buffer of an earlier pack, emptied for the next one (a local repository's: an object
    /// store's put takes the buffer): a fresh 20 MiB buffer costs a page fault per 4 KiB.
    spare: Option<Vec<u8>>,
}

impl Packer {
    fn new(target: usize, keys: Option<Keys>) -> Packer {
        Packer { bytes: Vec::new(), entries: Vec::new(), named: Vec::new(), target, keys, spare: None }
    }

    /// Adds a stored blob (compressed with `dictionary`, if its codec is 2); returns the finished
    /// pack when the target size is reached.
    fn add(&mut self, blob: Stored<'_>) -> Option<PackBytes> {
        let Stored { id, kind, codec, bytes: stored, raw_len, dictionary } = blob;
        if self.bytes.is_empty() {
            if let Some(spare) = self.spare.take() {
                self.bytes = spare;
            }
            self.bytes.reserve(self.target + self.target / 4);
            let mode = if self.keys.is_some() { ENCRYPTION_AES256GCM } else { ENCRYPTION_NONE };
            self.bytes.extend_from_slice(&pack::header_for(mode));
        }
        self.entries.push(BlobEntry {
            id,
            kind,
            codec,
            offset: self.bytes.len() as u32,
            stored_len: stored.len() as u32,
            raw_len,
        });
        self.bytes.extend_from_slice(stored);
        self.named.push(dictionary.filter(|_| codec == Codec::ZstdDict));
        if self.bytes.len() >= self.target {
            self.take()
        } else {
            None
        }
    }

    fn take(&mut self) -> Option<PackBytes> {
        if self.entries.is_empty() {
            return None;
        }
        let dictionaries = self.dictionaries();
        let mut bytes = std::mem::take(&mut self.bytes);
        let entries = std::mem::take(&mut self.entries);
        self.named.clear();
        bytes[8..10].copy_from_slice(&pack::version_for(&entries).to_le_bytes());
        bytes.extend_from_slice(&pack::trailer_with(&entries, &dictionaries, self.keys.as_ref()));
        let id = Id::of(&bytes);
        Some(PackBytes { pack: IndexedPack { id, len: bytes.len() as u64, blobs: entries }, bytes })
    }

    /// The dictionaries the pack's codec 2 blobs name, each once, in the order of their first
    /// blob (store-format/pack.md).
    fn dictionaries(&self) -> Vec<Id> {
        let mut listed: Vec<Id> = Vec::new();
        for &dictionary in self.named.iter().flatten() {
            if !listed.contains(&dictionary) {
                listed.push(dictionary);
            }
        }
        listed
    }

    /// Moves the blobs of `other`, a partly filled pack, into this one, in their order (stored
    /// blobs are sealed on their own, so a blob's bytes are the same in any pack); returns the
    /// packs this fills on the way.
    fn absorb(&mut self, other: &mut Packer) -> Vec<PackBytes> {
        let (bytes, entries, named) =
            (std::mem::take(&mut other.bytes), std::mem::take(&mut other.entries), std::mem::take(&mut other.named));
        let mut full = Vec::new();
        for (entry, dictionary) in entries.iter().zip(named) {
            let stored = &bytes[entry.offset as usize..][..entry.stored_len as usize];
            full.extend(self.add(Stored::of(entry, stored, dictionary)));
        }
        full
    }
}

/// A blob in its stored form, on its way into a pack.
pub struct Stored<'a> {
    pub id: Id,
    pub kind: BlobKind,
    pub codec: Codec,
    pub bytes: &'a [u8],
    pub raw_len: u32,
    /// The dictionary a codec 2 blob names.
    pub dictionary: Option<Id>,
}

impl<'a> Stored<'a> {
    /// The blob a pack's `entry` describes, its stored `bytes` copied from that pack as they are.
    pub fn of(entry: &BlobEntry, bytes: &'a [u8], dictionary: Option<Id>) -> Stored<'a> {
        Stored { id: entry.id, kind: entry.kind, codec: entry.codec, bytes, raw_len: entry.raw_len, dictionary }
    }
}

/// Blob ids a run has stored. A million of them in a hash set take about 66 MiB; recent ones
/// live in a small set, merged into a sorted table of 32 bytes an id once they number
/// [`RECENT_IDS`] or an eighth of the table (so merging stays linear in the ids stored).
#[derive(Default)]
struct Added {
    recent: HashSet<Id>,
    settled: SortedIds<()>,
}

const RECENT_IDS: usize = 1 << 16;

impl Added {
    fn contains(&self, id: &Id) -> bool {
        self.recent.contains(id) || self.settled.get(id).is_some()
    }

    /// Adds `id`; false if it was there already.
    fn insert(&mut self, id: Id) -> bool {
        if self.settled.get(&id).is_some() || !self.recent.insert(id) {
            return false;
        }
        if self.recent.len() >= RECENT_IDS.max(self.settled.len() / 8) {
            let recent = std::mem::take(&mut self.recent);
            self.settled.merge(recent.into_iter().map(|id| (id, ())).collect());
        }
        true
    }
}

/// Counters of what a run added.
#[derive(Default)]
pub struct AddedStats {
    pub blobs: AtomicU64,
    pub bytes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub packs: AtomicU64,
}

/// Data packs filled at once at most, and the pack targets they may add up to (beyond it there
/// are fewer, one at least): each holds up to its target and a quarter more.
const DATA_PACKERS: usize = 4;
const DATA_PACKERS_TARGETS: u64 = 64 << 20;

/// Which of a [`BlobStore`]'s data packs a blob goes to ([`BlobStore::lane`]).
#[derive(Clone, Copy)]
pub struct Lane(usize);

pub struct BlobStore<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// Ids stored by this run (the index holds the rest).
    added: Mutex<Added>,
    /// Data packs being filled, one per worker thread (see [`BlobStore::lane`]).
    data: Vec<Mutex<Packer>>,
    trees: Mutex<Packer>,
    /// Puts the full packs and their index files.
    uploads: Uploads,
    /// Every pack this store wrote, with its blobs, if `record_written` (prune needs them); filled
    /// by [`BlobStore::finish`].
    pub written: Mutex<Vec<IndexedPack>>,
    pub record_written: bool,
    /// The index files written, filled by [`BlobStore::finish`].
    pub index_files: Mutex<Vec<Id>>,
    pub stats: AddedStats,
    /// The disk guard: no pack write may take the repository's file system below this.
    pub min_free: Option<crate::disk::MinFree>,
    /// Names the blobs: a chunk of zeros of the largest size is hashed once.
    names: crate::chunking::ZeroMemo,
}

impl<'a> BlobStore<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index) -> BlobStore<'a> {
        let target = repo.config().pack_target_size as usize;
        let (workers, queued) = uploaders_for(repo.backend());
        BlobStore {
            repo,
            index,
            added: Mutex::new(Added::default()),
            data: (0..(DATA_PACKERS_TARGETS / (target as u64).max(1)).clamp(1, DATA_PACKERS as u64))
                .map(|_| Mutex::new(Packer::new(target, repo.keys().cloned())))
                .collect(),
            // Tree packs stay small: trees are read one at a time, and few exist per run.
            trees: Mutex::new(Packer::new(target.min(4 << 20), repo.keys().cloned())),
            uploads: Uploads::new(repo.backend_arc(), repo.keys().cloned(), workers, queued),
            written: Mutex::new(Vec::new()),
            record_written: false,
            index_files: Mutex::new(Vec::new()),
            stats: AddedStats::default(),
            min_free: None,
            names: crate::chunking::ZeroMemo::new(repo.config().chunker.max_size),
        }
    }

    /// Whether the repository (or this run) already holds `id`.
    pub fn contains(&self, id: &Id) -> bool {
        self.index.contains(id) || self.added.lock().expect("poisoned").contains(id)
    }

    /// Stores `data` unless a blob with its id exists; returns the id. A data blob goes to the
    /// calling thread's data pack ([`BlobStore::lane`]).
    pub fn store(&self, kind: BlobKind, data: &[u8]) -> Result<Id> {
        self.store_in(self.lane(), kind, data, None)
    }

    /// The data pack of the calling thread. Each worker of the walk's pool fills packs of its
    /// own (workers beyond the number of lanes share them; threads of no pool, such as a
    /// stream's reader, fill the first): a worker walks one part of the tree at a time, so each
    /// pack holds files that lie together in the tree, which a restore reads together. With one
    /// pack for all, the workers' blobs alternated in every pack: half of a pack was first read in
    /// one stretch of a restore and half in another, and a restore from an object store had to
    /// hold the other half across the stretch between or fetch the pack again (the toolchain from
    /// a loopback S3: 64 pack GETs for 41 packs, 746 MiB received for 347 MiB of blobs,
    /// benches/README.md). A file's chunks, which several workers compress at once, go
    /// to the lane of the worker that reads the file: take it once per file and store them with
    /// [`BlobStore::store_in`].
    pub fn lane(&self) -> Lane {
        Lane(rayon::current_thread_index().unwrap_or(0) % self.data.len())
    }

    /// [`BlobStore::store`] into `lane` (if a data blob), compressing with `dictionary` if one is
    /// given (a database's pages).
    pub fn store_in(&self, lane: Lane, kind: BlobKind, data: &[u8], dictionary: Option<&Dictionary>) -> Result<Id> {
        let id = self.names.id(self.repo.hasher(), data);
        if self.index.contains(&id) || !self.added.lock().expect("poisoned").insert(id) {
            return Ok(id);
        }
        let (codec, stored) = match dictionary {
            Some(dictionary) => compression::compress_with(data, dictionary),
            None => compression::compress(data, self.repo.config().compression_level),
        };
        let stored = self.repo.seal_blob(&id, stored);
        let raw_len = data.len() as u32;
        self.add(lane, Stored { id, kind, codec, bytes: &stored, raw_len, dictionary: dictionary.map(|d| d.id) })?;
        Ok(id)
    }

    /// Adds a blob already in its stored form (prune's repack copies blobs without recompressing
    /// them). The caller has verified it; it is stored even if the index has it elsewhere.
    pub fn store_verbatim(&self, blob: Stored<'_>) -> Result<()> {
        if !self.added.lock().expect("poisoned").insert(blob.id) {
            return Ok(());
        }
        self.add(self.lane(), blob)
    }

    fn add(&self, lane: Lane, blob: Stored<'_>) -> Result<()> {
        if blob.codec == Codec::ZstdDict && blob.dictionary.is_none() {
            return Err(crate::error::Error::Invalid(format!(
                "blob {} is compressed with a dictionary and none is named",
                blob.id.short()
            )));
        }
        if self.uploads.failed() {
            return self.uploads.check();
        }
        self.stats.blobs.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(blob.raw_len as u64, Relaxed);
        self.stats.stored_bytes.fetch_add(blob.bytes.len() as u64, Relaxed);
        let packer = match blob.kind {
            BlobKind::Data => &self.data[lane.0 % self.data.len()],
            BlobKind::Tree => &self.trees,
        };
        let full = packer.lock().expect("poisoned").add(blob);
        if let Some(full) = full {
            self.uploads.submit(full, self.min_free, self.record_written)?;
            if let Some(spare) = self.uploads.spare() {
                // Kept only if no other worker began the lane's next pack in a new buffer while
                // this one was handed over: a lane holds one buffer, not two.
                let mut packer = packer.lock().expect("poisoned");
                if packer.bytes.capacity() == 0 {
                    packer.spare.get_or_insert(spare);
                }
            }
        }
        Ok(())
    }

    /// Writes the partly filled packs, waits for every upload, and writes an index file for every
    /// pack not yet indexed. After this returns, everything stored is durable and findable.
    pub fn finish(&self) -> Result<()> {
        // The data packs' partly filled ends go out together, as one pack or as few as their
        // bytes make, not one small pack per worker each run.
        let mut first = self.data[0].lock().expect("poisoned");
        for packer in &self.data[1..] {
            let filled = first.absorb(&mut packer.lock().expect("poisoned"));
            for full in filled {
                self.uploads.submit(full, self.min_free, self.record_written)?;
            }
        }
        let last = first.take();
        drop(first);
        let trees = self.trees.lock().expect("poisoned").take();
        for last in last.into_iter().chain(trees) {
            self.uploads.submit(last, self.min_free, self.record_written)?;
        }
        let done = self.uploads.finish()?;
        self.stats.packs.fetch_add(done.packs, Relaxed);
        self.index_files.lock().expect("poisoned").extend(done.index_files);
        self.written.lock().expect("poisoned").extend(done.written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Barrier;

    use super::*;
    use crate::format::config::Config;
    use crate::repository::NewKeys;

    /// Two workers of a pool store blobs in lockstep, as the walk's workers do at once in two
    /// parts of a tree: every full pack holds the blobs of one of them only, so that a restore,
    /// which reads one part of the tree after the other, reads each pack in one stretch; the
    /// partly filled ends of both go out as one pack.
    #[test]
    fn each_worker_fills_packs_of_its_own() {
        let (stored, packs) = stored_by_two_workers(false);
        // 16 blobs fill a pack: 70 a worker make 4 full packs each and 6 + 6 left over.
        assert_eq!(packs.len(), 9, "{packs:?}");
        let mixed: Vec<_> = packs.values().filter(|workers| workers.len() > 1).collect();
        assert_eq!(mixed.len(), 1, "only the last pack holds blobs of both: {packs:?}");
        assert_eq!(stored.iter().map(Vec::len).sum::<usize>(), 140);
    }

    /// The chunks of one file, which several workers compress at once, go to the lane taken by
    /// the worker that reads it: one lane's packs, filled by both in turn.
    #[test]
    fn blobs_stored_in_a_lane_go_to_its_packs_whoever_stores_them() {
        let (_, packs) = stored_by_two_workers(true);
        // 140 blobs in one lane: 8 full packs and 12 left over.
        assert_eq!(packs.len(), 9, "{packs:?}");
        assert!(packs.values().all(|workers| workers.len() == 2), "{packs:?}");
    }

    /// Two workers store 70 incompressible blobs each, in lockstep, into their own lanes or (if
    /// `one_lane`) into the lane of the first; the blobs each stored, and which workers' blobs
    /// each pack holds. Fails rather than hangs when a worker fails (the other would wait at
    /// the barrier).
    #[allow(clippy::type_complexity)]
    fn stored_by_two_workers(one_lane: bool) -> (Vec<Vec<Id>>, HashMap<u32, HashSet<usize>>) {
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(lockstep(one_lane)));
        ended.recv_timeout(std::time::Duration::from_secs(60)).expect("hung or failed")
    }

    #[allow(clippy::type_complexity)]
    fn lockstep(one_lane: bool) -> (Vec<Vec<Id>>, HashMap<u32, HashSet<usize>>) {
        let config = Config { pack_target_size: 64 * 1024, ..Config::new_random() };
        let repo = Repository::create(&"memory://packer".into(), config, NewKeys::None).unwrap();
        let nothing = Index::default();
        let store = BlobStore::new(&repo, &nothing);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let turn = Barrier::new(2);
        let first = pool.install(|| store.lane());
        let stored: Vec<Vec<Id>> = pool.broadcast(|worker| {
            let lane = if one_lane { first } else { store.lane() };
            (0..70u32)
                .map(|n| {
                    turn.wait();
                    // Incompressible: 16 fill a pack.
                    let mut blob = vec![0u8; 4096];
                    blake3::Hasher::new().update(&[worker.index() as u8, n as u8]).finalize_xof().fill(&mut blob);
                    store.store_in(lane, BlobKind::Data, &blob, None).unwrap()
                })
                .collect()
        });
        store.finish().unwrap();
        let index = repo.load_index().unwrap();
        let mut packs: HashMap<u32, HashSet<usize>> = HashMap::new();
        for (worker, ids) in stored.iter().enumerate() {
            for id in ids {
                packs.entry(index.get(id).unwrap().pack).or_default().insert(worker);
            }
        }
        (stored, packs)
    }

    /// A partly filled pack moved into another keeps each blob's dictionary, and the pack lists
    /// each dictionary its blobs name once.
    #[test]
    fn absorbed_blobs_keep_their_dictionaries() {
        let bytes: Vec<[u8; 100]> = (0..5).map(|n| [n; 100]).collect();
        let blob = |n: u8, codec: Codec, dictionary: Option<Id>| Stored {
            id: Id([n; 32]),
            kind: BlobKind::Data,
            codec,
            bytes: &bytes[n as usize],
            raw_len: 300,
            dictionary,
        };
        let (one, two) = (Id([1; 32]), Id([2; 32]));
        let (mut first, mut second) = (Packer::new(1 << 20, None), Packer::new(1 << 20, None));
        assert!(first.add(blob(1, Codec::ZstdDict, Some(one))).is_none());
        assert!(second.add(blob(2, Codec::Zstd, None)).is_none());
        assert!(second.add(blob(3, Codec::ZstdDict, Some(two))).is_none());
        assert!(second.add(blob(4, Codec::ZstdDict, Some(one))).is_none());
        assert!(first.absorb(&mut second).is_empty());
        assert_eq!(first.named, [Some(one), None, Some(two), Some(one)]);
        assert_eq!(first.dictionaries(), [one, two]);
        assert!(second.take().is_none(), "the absorbed pack is empty");
        let pack = first.take().unwrap();
        let offsets: Vec<u32> = pack.pack.blobs.iter().map(|b| b.offset).collect();
        assert_eq!(offsets, [16, 116, 216, 316]);
        for (n, at) in (1..5).zip(offsets) {
            assert!(pack.bytes[at as usize..][..100].iter().all(|&b| b == n), "blob {n}");
        }
    }
}
