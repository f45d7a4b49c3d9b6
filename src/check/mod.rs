//! `cairn check`: find damage and say exactly what it affects.
//!
//! Structural pass (always): every index file, snapshot manifest and audit record decodes and
//! matches its name;
//! every indexed pack exists, has the indexed length, a valid header, and a trailer that lists
//! each indexed blob at the indexed place; every snapshot's trees decode and hash to their ids,
//! and every chunk they name is in the index. With `--read-data` (or a deterministic subset),
//! every selected pack is read whole: its BLAKE3 must equal its name, and every blob its trailer
//! lists must decrypt, decompress and hash to its id. Damage counts where the index takes a blob
//! from; in a pack no index names it is only a warning, unless that pack holds blobs the
//! snapshots need and the index lacks (an index file was lost: an error that points at `cairn
//! repair index`). Finally every damaged or missing blob is traced to the snapshots and file
//! paths that need it ([`trees`]), and the report says how to recover.
//!
//! Check only reads; it never repairs (`repair index` rebuilds the index, prune removes
//! leftovers). Packs are read into two buffers, one verified while the next is read, so memory
//! stays at two packs, while the index and trees load beside them.

mod trees;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};

use rayon::prelude::*;
use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::backend::{Backend, WholeObject};
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::pack::{self, BlobEntry, TrailerRead, HEADER_LEN, TAIL_LEN};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::{FileKind, Repository};
use trees::{all_trees_intact, walk, Walked};

/// How many packs `--read-data` holds in memory at once: one being verified, one being read (or
/// read and waiting).
const PACK_BUFFERS: usize = 2;

/// Threads reading packs: two, so that the first two packs arrive together, and an object store
/// has two downloads going.
const PACK_READERS: usize = 2;

/// Threads loading the index, snapshots and trees beside the packs being read.
const LOADER_THREADS: usize = 4;

/// The largest blob buffer a worker keeps for its next blob (data chunks are 4 MiB at most by
/// default; a larger one is freed after use rather than held for the rest of the check).
const KEEP_BLOB_BUFFER: usize = 16 << 20;

/// The largest pack buffer kept for the next pack (packs are about 16 MiB; a larger stray file's
/// buffer is freed rather than held for the rest of the check).
const KEEP_PACK_BUFFER: usize = 64 << 20;

thread_local! {
    /// Where this worker opens and decompresses blobs, reused from blob to blob.
    static BLOB_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Which packs `--read-data` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    All,
    /// Part `n` of `m` (1-based): packs whose id, read as a number, is `n - 1` modulo `m`.
    Part {
        n: u64,
        m: u64,
    },
    /// About this percentage of packs, chosen by id.
    Percent(f64),
}

impl std::fmt::Display for Subset {
    /// The form `--read-data-subset` takes (`all` for `--read-data`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subset::All => f.write_str("all"),
            Subset::Part { n, m } => write!(f, "{n}/{m}"),
            Subset::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Subset {
    /// Parses `n/m` or `P%`.
    pub fn parse(text: &str) -> std::result::Result<Subset, String> {
        if let Some(percent) = text.strip_suffix('%') {
            let p: f64 = percent.trim().parse().map_err(|_| format!("bad percentage {text:?}"))?;
            if !(0.0..=100.0).contains(&p) || p == 0.0 {
                return Err(format!("percentage {text:?} must be in (0, 100]"));
            }
            return Ok(Subset::Percent(p));
        }
        let (n, m) = text.split_once('/').ok_or_else(|| format!("subset {text:?} is neither n/m nor P%"))?;
        let (n, m): (u64, u64) = (n.trim().parse().map_err(|_| "bad n")?, m.trim().parse().map_err(|_| "bad m")?);
        if m == 0 || n == 0 || n > m {
            return Err(format!("subset {text:?} needs 1 <= n <= m"));
        }
        Ok(Subset::Part { n, m })
    }

    fn selects(&self, pack: &Id) -> bool {
        let number = u64::from_be_bytes(pack.0[..8].try_into().expect("8 bytes"));
        match *self {
            Subset::All => true,
            Subset::Part { n, m } => number % m == n - 1,
            Subset::Percent(p) => (number >> 11) as f64 / (1u64 << 53) as f64 * 100.0 < p,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub index_files: u64,
    pub snapshots: u64,
    pub packs: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    pub blobs_verified: u64,
    pub trees: u64,
    /// Every problem found, one sentence each.
    pub errors: Vec<String>,
    /// Harmless findings (unreferenced packs left by interrupted snapshots).
    pub warnings: Vec<String>,
    pub damaged_packs: Vec<String>,
    pub damaged_blobs: Vec<String>,
    /// What the damage costs: files (or whole directories) that cannot be restored.
    pub affected: Vec<Affected>,
    /// How to recover from what was found, one sentence each.
    pub advice: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Affected {
    pub snapshot: String,
    pub path: String,
    pub reason: String,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Collects findings from parallel workers.
#[derive(Default)]
struct Findings {
    errors: Mutex<Vec<String>>,
    damaged_packs: Mutex<HashSet<Id>>,
    /// Blob id to why it cannot be used.
    bad_blobs: Mutex<HashMap<Id, String>>,
}

impl Findings {
    fn error(&self, message: String) {
        self.errors.lock().expect("poisoned").push(message);
    }
    fn bad_pack(&self, pack: &Id, message: String) {
        self.damaged_packs.lock().expect("poisoned").insert(*pack);
        self.error(message);
    }
    fn bad_blob(&self, blob: &Id, reason: String) {
        self.bad_blobs.lock().expect("poisoned").entry(*blob).or_insert(reason);
    }
}

/// The first packs `--read-data` reads, read before the repository is open, so that the disk
/// (or the network) is busy while the key is derived. [`check`] verifies them first if they are
/// still there once it holds its lock; their buffers count among the [`PACK_BUFFERS`].
#[derive(Default)]
pub struct Prefetched(Vec<(Id, WholeObject)>);

impl Prefetched {
    /// Reads the first packs in the order [`check`] takes them, one thread each. A pack that
    /// cannot be listed or read is left for the check to meet again, and report.
    pub fn read(backend: &dyn Backend, subset: Subset) -> Prefetched {
        let Ok((packs, _)) = crate::repository::list_packs(backend) else { return Prefetched::default() };
        let mut first: Vec<Id> = packs.into_keys().filter(|id| subset.selects(id)).collect();
        first.sort_unstable();
        first.truncate(PACK_BUFFERS);
        std::thread::scope(|scope| {
            let reads: Vec<_> = first
                .iter()
                .map(|id| {
                    scope.spawn(move || {
                        let mut buffer = WholeObject::default();
                        backend.read_once(&FileKind::Pack.name(id), &mut buffer).ok().map(|()| (*id, buffer))
                    })
                })
                .collect();
            Prefetched(reads.into_iter().filter_map(|read| read.join().ok().flatten()).collect())
        })
    }
}

/// A check as the audited run `check` (store-format/audit.md): ok when the repository is clean,
/// failed with its first errors otherwise. What `cairn check` runs, and what an embedder calls.
pub fn check(
    repo: &Repository,
    read_data: Option<Subset>,
    prefetched: Prefetched,
    progress: &Progress,
) -> Audited<CheckReport> {
    Run::start("check", "").around(repo, |record| {
        let report = verify(repo, read_data, prefetched, progress)?;
        record.bytes = report.bytes_read;
        record.errors = report.errors.iter().take(100).cloned().collect();
        record.details = serde_json::json!({
            "read_data": read_data.map(|s| s.to_string()),
            "packs": report.packs,
            "packs_read": report.packs_read,
            "blobs_verified": report.blobs_verified,
            "errors": report.errors.len(),
            "damaged_packs": report.damaged_packs.len(),
            "affected": report.affected.len(),
        });
        let how = if report.is_clean() { Outcome::Ok } else { Outcome::Failed };
        Ok((report, how))
    })
}

/// The check itself, with no audit record.
fn verify(
    repo: &Repository,
    read_data: Option<Subset>,
    prefetched: Prefetched,
    progress: &Progress,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let findings = Findings::default();
    let on_disk = list_packs(repo, &mut report)?;
    let mut to_read: Vec<&Id> = on_disk.keys().filter(|id| read_data.is_some_and(|s| s.selects(id))).collect();
    to_read.sort_unstable();
    progress.add_total(to_read.iter().map(|id| on_disk[*id]).sum());

    // The packs are read whole (with `--read-data`) while, on a thread of its own, the index,
    // snapshots and audit log load and the snapshot trees are walked: a pack is verified against
    // its own trailer, so neither waits for the other. The index is held against the packs after.
    let stop = AtomicBool::new(false);
    // Index entries grouped by pack, once loaded.
    let grouped = OnceLock::new();
    let load = || -> Result<_> {
        // A repository that cannot be loaded stops the reading of packs at once.
        let loaded = (|| Ok((repo.load_index()?, repo.snapshots()?, crate::audit::read_all(repo)?)))();
        let (index, snapshots, _) = loaded.inspect_err(|_| stop.store(true, Relaxed))?;
        // On an intact repository this is the final walk.
        let walked = match all_trees_intact(repo, &index, &snapshots) {
            Some(trees) => Walked { bad: HashMap::new(), unindexed: HashSet::new(), affected: Vec::new(), trees },
            None => walk(repo, &index, &snapshots, HashMap::new()),
        };
        // Index entries grouped by pack.
        let mut by_pack: BTreeMap<Id, Vec<BlobEntry>> = BTreeMap::new();
        for (pack, entry) in index.entries() {
            by_pack.entry(pack).or_default().push(entry);
        }
        for (pack, _) in &index.packs {
            by_pack.entry(*pack).or_default();
        }
        _ = grouped.set(by_pack);
        Ok((index, snapshots, walked))
    };
    let read = std::thread::scope(|scope| {
        // The loader has a worker pool of its own (where one can be started): its reads are small
        // and many, and in the shared pool each would wait behind whole packs.
        let loader = scope.spawn(|| match rayon::ThreadPoolBuilder::new().num_threads(LOADER_THREADS).build() {
            Ok(pool) => pool.install(load),
            Err(_) => load(),
        });
        let read = read_packs(repo, &to_read, prefetched, progress, &stop, &grouped, &findings);
        (loader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), read)
    });
    let ((index, snapshots, first_walk), read) = (read.0?, read.1);
    let by_pack = grouped.into_inner().expect("loaded with the index");
    for damage in repo.take_damage() {
        findings.error(damage.to_string());
    }
    report.index_files = repo.list_files(FileKind::Index)?.len() as u64;
    report.snapshots = snapshots.len() as u64;
    report.packs_read = read.packs;
    report.bytes_read = read.bytes;
    report.blobs_verified = read.blobs;
    let indexed_len: HashMap<Id, u64> = index.packs.iter().copied().collect();
    // Damage matters where the index takes blobs from; a pack no index names is only left over.
    for (pack, message) in read.bad_packs {
        match indexed_len.contains_key(&pack) {
            true => findings.bad_pack(&pack, message),
            false => report.warnings.push(format!("{message} (no index names it; prune removes it)")),
        }
    }
    for (pack, entry, reason) in read.failed {
        let copy = format!("blob {} in pack {} is damaged ({reason})", entry.id.short(), pack.short());
        match index.get(&entry.id) {
            Some(at) if index.pack_id(at) == pack && at.offset == entry.offset && at.stored_len == entry.stored_len => {
                findings.error(format!("blob {} in pack {}: {reason}", entry.id.short(), pack.short()));
                findings.bad_blob(&entry.id, format!("it is damaged ({reason})"));
            }
            Some(_) => report.warnings.push(format!("{copy}, but the index takes it from another copy")),
            None => report.warnings.push(format!("{copy}, but no index names it")),
        }
    }

    report.packs = by_pack.len() as u64;
    by_pack.par_iter().for_each(|(pack, entries)| {
        let key = FileKind::Pack.name(pack);
        let Some(&actual_len) = on_disk.get(pack) else {
            findings.bad_pack(pack, format!("pack {} is missing ({} blobs lost)", pack.short(), entries.len()));
            entries.iter().for_each(|e| findings.bad_blob(&e.id, format!("its pack {} is missing", pack.short())));
            return;
        };
        let expected_len = indexed_len.get(pack).copied().unwrap_or(0);
        if actual_len != expected_len {
            findings.bad_pack(
                pack,
                format!(
                    "pack {} is {actual_len} bytes, the index says {expected_len}: truncated or overwritten",
                    pack.short()
                ),
            );
        }
        for entry in entries.iter().filter(|e| e.end() > actual_len) {
            findings.bad_blob(&entry.id, format!("it lies past the end of pack {}", pack.short()));
        }
        // Header and trailer by range, unless they were held against the index as the pack was read.
        if read.trailers_checked.contains(pack) {
            return;
        }
        let read_range = |offset, n| repo.read_file_range(FileKind::Pack, pack, offset, n);
        if let Err(e) = check_pack_structure(repo, &key, pack, actual_len, entries, &findings, &read_range) {
            findings.bad_pack(pack, format!("pack {}: {e}", pack.short()));
        }
    });

    // Trace every bad or missing blob to the snapshots and paths that need it: walk again only if
    // the packs or the index had any.
    let bad = findings.bad_blobs.into_inner().expect("poisoned");
    let walker = if bad.is_empty() { first_walk } else { walk(repo, &index, &snapshots, bad) };
    let mut errors = findings.errors.into_inner().expect("poisoned");
    let mut unindexed_packs: Vec<(&Id, &u64)> = on_disk.iter().filter(|(id, _)| !by_pack.contains_key(id)).collect();
    unindexed_packs.sort_unstable();
    for (pack, len) in unindexed_packs {
        match needed_in_unindexed_pack(repo, pack, *len, &walker.unindexed) {
            0 => report.warnings.push(format!(
                "pack {} is not in any index (left by an interrupted snapshot; prune removes it)",
                pack.short()
            )),
            needed => errors.push(format!(
                "pack {} is in no index file but holds {needed} blobs that snapshots need: an index file was lost; \
                 run `cairn repair index` to rebuild the index from the packs",
                pack.short()
            )),
        }
    }
    if !walker.unindexed.is_empty() {
        report.advice.push(format!(
            "{} blobs that snapshots need are in no index file: run `cairn repair index`, which rebuilds the index \
             from the packs; if they are in no pack either, the paths above are lost: forget the snapshots that need \
             them",
            walker.unindexed.len()
        ));
    }
    report.trees = walker.trees;
    let mut affected = walker.affected;
    affected.sort();
    affected.dedup();
    errors.sort();
    errors.extend(affected.iter().map(|a| format!("snapshot {}: {}: {}", a.snapshot, a.path, a.reason)));
    report.errors = errors;
    report.affected = affected;
    let mut packs: Vec<String> =
        findings.damaged_packs.into_inner().expect("poisoned").iter().map(|id| id.to_hex()).collect();
    packs.sort();
    report.damaged_packs = packs;
    let mut blobs: Vec<String> = walker.bad.keys().map(|id| id.to_hex()).collect();
    blobs.sort();
    report.damaged_blobs = blobs;
    progress.finish();
    Ok(report)
}

/// How many of the blobs in `needed` the trailer of a pack that no index names lists; 0 when
/// none are needed or the trailer cannot be read (the pack is then left over, or damaged:
/// `--read-data` reports which).
fn needed_in_unindexed_pack(repo: &Repository, pack: &Id, len: u64, needed: &HashSet<Id>) -> usize {
    if needed.is_empty() {
        return 0;
    }
    let key = FileKind::Pack.name(pack);
    let read_range = |offset, n| repo.read_file_range(FileKind::Pack, pack, offset, n);
    read_trailer(repo, &key, len, &read_range)
        .map_or(0, |listed| listed.iter().filter(|e| needed.contains(&e.id)).count())
}

/// What reading packs whole found.
#[derive(Default)]
struct PacksRead {
    packs: u64,
    bytes: u64,
    blobs: u64,
    /// Packs that could not be read or do not match their id, and why.
    bad_packs: Vec<(Id, String)>,
    /// Blobs that failed, with the pack holding them and why.
    failed: Vec<(Id, BlobEntry, String)>,
    /// Packs whose trailer decoded and was held against the index (by [`compare_trailer`]).
    trailers_checked: HashSet<Id>,
}

/// Reads each pack whole, in the order of their ids, and verifies it: its bytes must hash to its
/// id, and every blob its trailer lists must decode and hash to its id. A trailer that does not
/// decode is left to the structural pass to report. Stops early once `stop` is set.
///
/// Reading and verifying overlap, in [`PACK_BUFFERS`] buffers, the only ones there are:
/// [`PACK_READERS`] threads read packs into free buffers, and a thread per buffer verifies the
/// packs read. Packs take [`Turns`] at the worker pool, so it verifies one pack at a time with
/// every core, and the next pack is read meanwhile. `packs` must be sorted; those `prefetched`
/// are not read again.
fn read_packs(
    repo: &Repository,
    packs: &[&Id],
    prefetched: Prefetched,
    progress: &Progress,
    stop: &AtomicBool,
    grouped: &OnceLock<BTreeMap<Id, Vec<BlobEntry>>>,
    findings: &Findings,
) -> PacksRead {
    let found = Mutex::new(PacksRead::default());
    let read = &found;
    let bad_pack = |pack: &Id, message: String| read.lock().expect("poisoned").bad_packs.push((*pack, message));
    let next = &AtomicUsize::new(0);
    let (free, free_buffers) = mpsc::channel();
    let (full, full_buffers) = mpsc::sync_channel::<(&Id, WholeObject)>(PACK_BUFFERS);
    // Packs read before that are still listed go to the verifiers first; the buffer of one gone
    // since is free. There are PACK_BUFFERS buffers in all.
    let mut read_before = HashSet::new();
    let mut buffers = Vec::new();
    for (id, buffer) in prefetched.0 {
        match packs.binary_search(&&id) {
            Ok(at) => {
                read_before.insert(packs[at]);
                full.send((packs[at], buffer)).expect("the receiver is here");
            }
            Err(_) => buffers.push(buffer),
        }
    }
    buffers.resize_with(PACK_BUFFERS.saturating_sub(read_before.len()), WholeObject::default);
    for buffer in buffers {
        free.send(buffer).expect("the receiver is here");
    }
    let read_before = &read_before;
    let free_buffers = &Mutex::new(free_buffers);
    // Each pack read gets its turn as it is taken from the channel.
    let full_buffers = &Mutex::new((full_buffers, 0));
    let turns = &Turns::default();
    std::thread::scope(|scope| {
        for _ in 0..PACK_READERS {
            let full = full.clone();
            scope.spawn(move || {
                // A buffer whose read failed is kept for the next pack.
                let mut kept = None;
                loop {
                    let n = next.fetch_add(1, Relaxed);
                    if n >= packs.len() || stop.load(Relaxed) {
                        break;
                    }
                    if read_before.contains(packs[n]) {
                        continue;
                    }
                    let Some(mut buffer) = kept.take().or_else(|| free_buffers.lock().expect("poisoned").recv().ok())
                    else {
                        break; // no verifier is left to give buffers back
                    };
                    let pack = packs[n];
                    match repo.backend().read_once(&FileKind::Pack.name(pack), &mut buffer) {
                        Ok(()) => _ = full.send((pack, buffer)),
                        Err(e) => {
                            bad_pack(pack, format!("pack {}: cannot read: {e}", pack.short()));
                            kept = Some(buffer);
                        }
                    }
                }
            });
        }
        // Each channel closes once the threads sending on it are done.
        drop(full);
        for _ in 0..PACK_BUFFERS {
            let free = free.clone();
            scope.spawn(move || loop {
                let (turn, (pack, mut buffer)) = {
                    let (full, turns_given) = &mut *full_buffers.lock().expect("poisoned");
                    let Ok(received) = full.recv() else { break };
                    *turns_given += 1;
                    (Turn { turns, number: *turns_given - 1 }, received)
                };
                let key = FileKind::Pack.name(pack);
                let bytes = buffer.bytes_mut();
                let len = bytes.len() as u64;
                // The whole pack is hashed before its blobs are decrypted in place.
                if Id::of(bytes) != *pack {
                    bad_pack(pack, format!("pack {} content does not match its id: it is damaged", pack.short()));
                }
                let read_range = |offset: u64, n: u64| Ok(bytes[offset as usize..(offset + n) as usize].to_vec());
                let trailer = read_trailer(repo, &key, len, &read_range);
                // Once the index is loaded, the structural pass need not read the trailer again.
                let indexed = grouped.get().and_then(|grouped| grouped.get(pack));
                let trailer_checked = match (&trailer, indexed) {
                    (Ok(listed), Some(entries)) => {
                        compare_trailer(pack, entries, listed, findings);
                        true
                    }
                    _ => false,
                };
                let listed = trailer.unwrap_or_default();
                let failed = verify_blobs(repo, pack, bytes, &listed, turn);
                if buffer.capacity() > KEEP_PACK_BUFFER {
                    buffer = WholeObject::default();
                }
                _ = free.send(buffer);
                let mut read = read.lock().expect("poisoned");
                read.packs += 1;
                read.bytes += len;
                read.blobs += listed.len() as u64;
                read.failed.extend(failed);
                if trailer_checked {
                    read.trailers_checked.insert(*pack);
                }
                progress.add_bytes(len);
            });
        }
        drop(free);
    });
    found.into_inner().expect("poisoned")
}

/// Whose turn it is at the worker pool: packs are numbered as they are taken up, and a pack's
/// blobs start once every blob of the packs before it has been taken by a worker. So the pool
/// works on one pack at a time, whose buffer is soon free for the next read, and a worker done
/// with the last blobs of one pack goes on with the next.
#[derive(Default)]
struct Turns {
    next: Mutex<u64>,
    passed: Condvar,
}

/// A pack's turn: it passes to the next pack when [`Turn::pass`] is called, or at the latest when
/// the turn is dropped (on every path, a panic included).
struct Turn<'a> {
    turns: &'a Turns,
    number: u64,
}

impl Turn<'_> {
    fn wait(&self) {
        let next = self.turns.next.lock().expect("poisoned");
        drop(self.turns.passed.wait_while(next, |next| *next < self.number).expect("poisoned"));
    }

    fn pass(&self) {
        let mut next = self.turns.next.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *next == self.number {
            *next += 1;
            self.turns.passed.notify_all();
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.pass();
    }
}

/// Verifies every blob of a pack held whole, each decrypted where it lies, on every worker once
/// it is this pack's `turn`; returns those that fail, with why.
fn verify_blobs(
    repo: &Repository,
    pack: &Id,
    bytes: &mut [u8],
    entries: &[BlobEntry],
    turn: Turn,
) -> Vec<(Id, BlobEntry, String)> {
    // In pack order, each blob gets its own stretch of the pack. One that overlaps the blob
    // before it, or lies outside the pack (never so in a pack cairn wrote), is verified from a
    // copy first, while every byte is still as read.
    let mut sorted: Vec<&BlobEntry> = entries.iter().collect();
    sorted.sort_unstable_by_key(|e| (e.offset, e.stored_len));
    let (mut own, mut shared, mut end) = (Vec::with_capacity(sorted.len()), Vec::new(), 0);
    for entry in sorted {
        if entry.offset as u64 >= end && entry.end() <= bytes.len() as u64 {
            end = entry.end();
            own.push(entry);
        } else {
            shared.push(entry);
        }
    }
    turn.wait();
    let failure = |entry: &BlobEntry, reason| (*pack, *entry, reason);
    let failed: Mutex<Vec<_>> = Mutex::new(
        shared
            .par_iter()
            .filter_map(|entry| verify_blob(repo, pack, bytes, entry).err().map(|r| failure(entry, r)))
            .collect(),
    );
    let mut stretches = Vec::with_capacity(own.len());
    let (mut rest, mut at) = (bytes, 0);
    for entry in own {
        let (_, from_blob) = std::mem::take(&mut rest).split_at_mut(entry.offset as usize - at);
        let (stored, after) = from_blob.split_at_mut(entry.stored_len as usize);
        stretches.push((entry, stored));
        (rest, at) = (after, entry.end() as usize);
    }
    // Every worker takes blobs, the largest first, until none are left; the last one taken
    // passes the turn. The pack's last blobs are its smallest, so its buffer is free soon after.
    stretches.sort_by_key(|(entry, _)| std::cmp::Reverse(entry.stored_len));
    let stretches = Mutex::new(stretches.into_iter());
    rayon::in_place_scope(|scope| {
        for _ in 0..rayon::current_num_threads() {
            scope.spawn(|_| loop {
                let taken = {
                    let mut stretches = stretches.lock().expect("poisoned");
                    let taken = stretches.next();
                    if stretches.len() == 0 {
                        turn.pass();
                    }
                    taken
                };
                let Some((entry, stored)) = taken else { break };
                let opened =
                    with_blob_buffers(|_, plain| repo.open_blob_in_place(entry, stored, pack, plain).map(|_| ()));
                if let Err(e) = opened {
                    failed.lock().expect("poisoned").push(failure(entry, blob_failure(e)));
                }
            });
        }
    });
    failed.into_inner().expect("poisoned")
}

/// Runs `decode` with this worker's blob buffers (for opened and for plain bytes), kept from blob
/// to blob unless a huge blob grew them.
fn with_blob_buffers<T>(decode: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> T) -> T {
    BLOB_BUFFERS.with(|cell| {
        let (opened, plain) = &mut *cell.borrow_mut();
        let result = decode(opened, plain);
        for buffer in [opened, plain] {
            if buffer.capacity() > KEEP_BLOB_BUFFER {
                *buffer = Vec::new();
            }
        }
        result
    })
}

/// Every pack file on disk with its length; stray names are warnings.
fn list_packs(repo: &Repository, report: &mut CheckReport) -> Result<HashMap<Id, u64>> {
    let (packs, strays) = repo.list_packs()?;
    report.warnings.extend(strays.iter().map(|key| format!("stray file {key} in packs/ (not a pack name)")));
    Ok(packs)
}

/// The blobs a pack's trailer lists, once its header magic and version check out.
/// `read_range(offset, len)` reads part of the pack, which is `len` bytes long; it is only asked
/// for ranges inside those bytes. Damage is an [`Error::Corrupt`]; anything else failed to read.
pub(crate) fn read_trailer(
    repo: &Repository,
    key: &str,
    len: u64,
    read_range: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
) -> Result<Vec<BlobEntry>> {
    let file = repo.describe(key);
    if len < (HEADER_LEN + TAIL_LEN) as u64 {
        return Err(Error::corrupt(file, "shorter than a pack header and trailer: truncated"));
    }
    let mode = pack::check_header(&read_range(0, HEADER_LEN as u64)?, &file)?;
    let keys = match (mode, repo.keys()) {
        (crate::format::envelope::ENCRYPTION_NONE, None) => None,
        (crate::format::envelope::ENCRYPTION_NONE, Some(_)) => {
            return Err(Error::corrupt(file, "a plain pack in an encrypted repository"))
        }
        (_, Some(keys)) => Some(keys),
        (_, None) => return Err(Error::corrupt(file, "an encrypted pack in an unencrypted repository")),
    };
    let mut want = len.min(256 << 10);
    loop {
        let tail = read_range(len - want, want)?;
        match pack::decode_trailer_with(&tail, len, &file, keys)? {
            TrailerRead::Entries(trailer) => return Ok(trailer),
            TrailerRead::NeedMore(n) if (n as u64) > want && (n as u64) <= len => want = n as u64,
            TrailerRead::NeedMore(_) => return Err(Error::corrupt(file, "trailer length is inconsistent")),
        }
    }
}

/// Header magic and version, and a trailer that lists every indexed blob at its indexed place;
/// reads as [`read_trailer`] does.
fn check_pack_structure(
    repo: &Repository,
    key: &str,
    pack: &Id,
    len: u64,
    entries: &[BlobEntry],
    findings: &Findings,
    read_range: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
) -> Result<()> {
    let trailer = read_trailer(repo, key, len, read_range).inspect_err(|e| {
        // Without a trailer nothing in the pack can be confirmed.
        let reason = format!("pack {} has no valid header and trailer ({e})", pack.short());
        entries.iter().for_each(|entry| findings.bad_blob(&entry.id, reason.clone()));
    })?;
    compare_trailer(pack, entries, &trailer, findings);
    Ok(())
}

/// The pack's trailer (`listed`) must list every blob the index places in the pack (`entries`)
/// where the index places it.
fn compare_trailer(pack: &Id, entries: &[BlobEntry], listed: &[BlobEntry], findings: &Findings) {
    let listed: HashMap<Id, &BlobEntry> = listed.iter().map(|e| (e.id, e)).collect();
    for entry in entries {
        if listed.get(&entry.id) != Some(&entry) {
            findings.error(format!(
                "pack {}: the index places blob {} where the pack's trailer does not",
                pack.short(),
                entry.id.short()
            ));
            findings.bad_blob(&entry.id, format!("pack {} disagrees with the index", pack.short()));
        }
    }
}

/// Decompresses one blob from a whole pack and checks its id.
pub(crate) fn verify_blob(
    repo: &Repository,
    pack_id: &Id,
    pack: &[u8],
    entry: &BlobEntry,
) -> std::result::Result<(), String> {
    let stored = pack.get(entry.offset as usize..entry.end() as usize).ok_or("it lies outside the pack")?;
    with_blob_buffers(|opened, plain| repo.open_blob(entry, stored, pack_id, opened, plain).map(|_| ()))
        .map_err(blob_failure)
}

/// Why a blob failed, without the blob and pack its message would repeat.
fn blob_failure(e: Error) -> String {
    match e {
        Error::BadBlob { reason, .. } => reason,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_partition() {
        assert_eq!(Subset::parse("2/5"), Ok(Subset::Part { n: 2, m: 5 }));
        assert_eq!(Subset::parse("10%"), Ok(Subset::Percent(10.0)));
        for bad in ["0/5", "6/5", "1/0", "x", "0%", "101%", "a/b"] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
        let ids: Vec<Id> = (0..1000u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        // The parts of n/m cover every pack exactly once.
        for id in &ids {
            let hits = (1..=4).filter(|n| Subset::Part { n: *n, m: 4 }.selects(id)).count();
            assert_eq!(hits, 1);
        }
        let tenth = ids.iter().filter(|id| Subset::Percent(10.0).selects(id)).count();
        assert!((60..140).contains(&tenth), "{tenth}");
        assert!(ids.iter().all(|id| Subset::Percent(100.0).selects(id)));
    }

    #[test]
    fn a_trailer_must_list_every_indexed_blob_where_the_index_places_it() {
        let pack = Id::of(b"pack");
        let entry = |n: u32, offset| BlobEntry {
            id: Id::of(&n.to_le_bytes()),
            kind: pack::BlobKind::Data,
            codec: pack::Codec::Zstd,
            offset,
            stored_len: 100,
            raw_len: 300,
        };
        let trailer = [entry(1, 16), entry(2, 116), entry(3, 216)];
        // Blobs the index no longer takes from this pack are fine.
        let findings = Findings::default();
        compare_trailer(&pack, &[entry(3, 216), entry(1, 16)], &trailer, &findings);
        assert!(findings.errors.into_inner().unwrap().is_empty());
        // Another offset, and a blob the trailer does not list, are damage to both blobs.
        let findings = Findings::default();
        compare_trailer(&pack, &[entry(2, 120), entry(1, 16), entry(4, 316)], &trailer, &findings);
        assert_eq!(findings.errors.into_inner().unwrap().len(), 2);
        let bad = findings.bad_blobs.into_inner().unwrap();
        assert_eq!(bad.keys().collect::<HashSet<_>>(), HashSet::from([&entry(2, 0).id, &entry(4, 0).id]));
    }
}
