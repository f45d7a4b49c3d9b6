//! `cairn check`: find damage and say exactly what it affects.
//!
//! Structural pass (always): every index file, snapshot manifest and audit record decodes and
//! matches its name;
//! every indexed pack exists, has the indexed length, a valid header, and a trailer that lists
//! each indexed blob at the indexed place; every snapshot's trees decode and hash to their ids,
//! and every chunk they name is in the index. With `--read-data` (or a deterministic subset),
//! every selected pack is read whole: its BLAKE3 must equal its name, and every blob in it must
//! decompress and hash to its id. Finally every damaged or missing blob is traced to the
//! snapshots and file paths that need it.
//!
//! Check only reads; it never repairs (a later `prune` does). Reading is parallel, one pack at a
//! time per worker, so memory stays at a few packs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::pack::{self, BlobEntry, TrailerRead, HEADER_LEN, TAIL_LEN};
use crate::format::snapshot::Snapshot;
use crate::format::tree::Content;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::index::Index;
use crate::repository::Repository;

/// How many packs `--read-data` asks the backend to fetch ahead of the ones being verified
/// (4 packs are 64 MiB of page cache, enough to keep a disk busy while two cores decompress).
const READ_AHEAD: usize = 4;

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

pub fn check(repo: &Repository, read_data: Option<Subset>, progress: &Progress) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let findings = Findings::default();
    // Packs are read in the order of their ids, and the reads of the next few are started ahead
    // of the workers, so the disk never waits on the CPU nor the CPU on the disk; the first ones
    // while the index and snapshots load.
    let on_disk = list_packs(repo, &mut report)?;
    let mut to_read: Vec<&Id> = on_disk.keys().filter(|id| read_data.is_some_and(|s| s.selects(id))).collect();
    to_read.sort_unstable();
    let hinted = AtomicUsize::new(0);
    let read_ahead = |done: usize| loop {
        let next = hinted.load(Relaxed);
        if next >= to_read.len() || next >= done + READ_AHEAD {
            break;
        }
        if hinted.compare_exchange(next, next + 1, Relaxed, Relaxed).is_ok() {
            repo.backend().will_read(&Repository::pack_key(to_read[next]));
        }
    };
    let index = repo.load_index()?;
    let snapshots = repo.snapshots()?;
    crate::audit::read_all(repo)?;
    read_ahead(0);
    for damage in repo.take_damage() {
        findings.error(damage.to_string());
    }
    report.index_files = repo.backend().list("index")?.len() as u64;
    report.snapshots = snapshots.len() as u64;

    // Index entries grouped by pack.
    let mut by_pack: BTreeMap<Id, Vec<BlobEntry>> = BTreeMap::new();
    for (pack, entry) in index.entries() {
        by_pack.entry(pack).or_default().push(entry);
    }
    for (pack, _) in &index.packs {
        by_pack.entry(*pack).or_default();
    }
    for id in on_disk.keys() {
        if !by_pack.contains_key(id) {
            report.warnings.push(format!(
                "pack {} is not in any index (left by an interrupted snapshot; prune removes it)",
                id.short()
            ));
        }
    }
    let indexed_len: HashMap<Id, u64> = index.packs.iter().copied().collect();
    report.packs = by_pack.len() as u64;

    let packs_read = AtomicU64::new(0);
    let bytes_read = AtomicU64::new(0);
    let blobs_verified = AtomicU64::new(0);
    if let Some(subset) = read_data {
        let total: u64 = by_pack.keys().filter(|id| subset.selects(id)).filter_map(|id| on_disk.get(id)).sum();
        progress.add_total(total);
    }
    let started = AtomicUsize::new(0);
    // The snapshot trees are walked meanwhile, on a thread of their own: on an intact repository
    // that walk is the final one, and reading trees waits on the disk more than on the CPU.
    let walk_all = |bad| walk(repo, &index, &snapshots, bad);
    let first_walk = std::thread::scope(|scope| {
        let first_walk = scope.spawn(|| walk_all(HashMap::new()));
        by_pack.iter().par_bridge().for_each(|(pack, entries)| {
            let key = Repository::pack_key(pack);
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
            let selected = read_data.is_some_and(|s| s.selects(pack));
            if selected {
                read_ahead(started.fetch_add(1, Relaxed));
            }
            let whole = match selected.then(|| repo.backend().get_whole(&key)) {
                Some(Ok(bytes)) => Some(bytes),
                Some(Err(e)) => {
                    findings.bad_pack(pack, format!("pack {}: cannot read: {e}", pack.short()));
                    None
                }
                None => None,
            };
            // The structure from the pack just read, or from its header and trailer alone.
            let len = whole.as_ref().map_or(actual_len, |bytes| bytes.len() as u64);
            let read_range = |offset: u64, n: u64| match &whole {
                Some(bytes) => Ok(bytes[offset as usize..(offset + n) as usize].to_vec()),
                None => repo.backend().get_range(&key, offset, n),
            };
            if let Err(e) = check_pack_structure(repo, &key, pack, len, entries, &findings, &read_range) {
                findings.bad_pack(pack, format!("pack {}: {e}", pack.short()));
            }
            if let Some(bytes) = &whole {
                packs_read.fetch_add(1, Relaxed);
                bytes_read.fetch_add(bytes.len() as u64, Relaxed);
                if Id::of(bytes) != *pack {
                    findings
                        .bad_pack(pack, format!("pack {} content does not match its id: it is damaged", pack.short()));
                }
                // Blob by blob in parallel too: packs alone leave a core idle at the end.
                entries.par_iter().for_each(|entry| {
                    blobs_verified.fetch_add(1, Relaxed);
                    if let Err(reason) = verify_blob(repo, pack, bytes, entry) {
                        findings.error(format!("blob {} in pack {}: {reason}", entry.id.short(), pack.short()));
                        findings.bad_blob(&entry.id, format!("it is damaged ({reason})"));
                    }
                });
                progress.add_bytes(bytes.len() as u64);
            }
        });
        first_walk.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    report.packs_read = packs_read.into_inner();
    report.bytes_read = bytes_read.into_inner();
    report.blobs_verified = blobs_verified.into_inner();

    // Trace every bad or missing blob to the snapshots and paths that need it: walk again only if
    // reading the packs found any.
    let bad = findings.bad_blobs.into_inner().expect("poisoned");
    let walker = if bad.is_empty() { first_walk } else { walk_all(bad) };
    report.trees = walker.trees;
    let mut affected = walker.affected;
    affected.sort();
    affected.dedup();
    let mut errors = findings.errors.into_inner().expect("poisoned");
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

/// Every pack file on disk with its length; stray names are warnings.
fn list_packs(repo: &Repository, report: &mut CheckReport) -> Result<HashMap<Id, u64>> {
    let (packs, strays) = repo.list_packs()?;
    report.warnings.extend(strays.iter().map(|key| format!("stray file {key} in packs/ (not a pack name)")));
    Ok(packs)
}

/// Header magic and version, and a trailer that lists every indexed blob at its indexed place.
/// `read_range(offset, len)` reads part of the pack, which is `len` bytes long; it is only asked
/// for ranges inside those bytes.
fn check_pack_structure(
    repo: &Repository,
    key: &str,
    pack: &Id,
    len: u64,
    entries: &[BlobEntry],
    findings: &Findings,
    read_range: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
) -> Result<()> {
    let file = repo.describe(key);
    if len < (HEADER_LEN + TAIL_LEN) as u64 {
        entries.iter().for_each(|e| findings.bad_blob(&e.id, format!("pack {} is truncated", pack.short())));
        return Err(Error::corrupt(file, "shorter than a pack header and trailer"));
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
    let trailer = loop {
        let tail = read_range(len - want, want)?;
        match pack::decode_trailer_with(&tail, len, &file, keys) {
            Ok(TrailerRead::Entries(trailer)) => break trailer,
            Ok(TrailerRead::NeedMore(n)) if (n as u64) > want && (n as u64) <= len => want = n as u64,
            Ok(TrailerRead::NeedMore(_)) => return Err(Error::corrupt(file, "trailer length is inconsistent")),
            Err(e) => {
                // Without a trailer nothing in the pack can be confirmed.
                entries
                    .iter()
                    .for_each(|e| findings.bad_blob(&e.id, format!("pack {} has no valid trailer", pack.short())));
                return Err(e);
            }
        }
    };
    let listed: HashMap<Id, BlobEntry> = trailer.into_iter().map(|e| (e.id, e)).collect();
    for entry in entries {
        if listed.get(&entry.id) != Some(entry) {
            findings.error(format!(
                "pack {}: the index places blob {} where the pack's trailer does not",
                pack.short(),
                entry.id.short()
            ));
            findings.bad_blob(&entry.id, format!("pack {} disagrees with the index", pack.short()));
        }
    }
    Ok(())
}

/// Decompresses one blob from a whole pack and checks its id.
pub(crate) fn verify_blob(
    repo: &Repository,
    pack_id: &Id,
    pack: &[u8],
    entry: &BlobEntry,
) -> std::result::Result<(), String> {
    let stored = pack.get(entry.offset as usize..entry.end() as usize).ok_or("it lies outside the pack")?;
    BLOB_BUFFERS
        .with(|cell| {
            let (opened, plain) = &mut *cell.borrow_mut();
            repo.open_blob(entry, stored, pack_id, opened, plain).map(|_| ())
        })
        .map_err(|e| match e {
            Error::BadBlob { reason, .. } => reason,
            other => other.to_string(),
        })
}

/// Walks every snapshot's trees, naming each path that needs a blob in `bad`, a tree that does not
/// decode, or a chunk the index lacks.
fn walk<'a>(
    repo: &'a Repository,
    index: &'a Index,
    snapshots: &[(Id, Snapshot)],
    bad: HashMap<Id, String>,
) -> Walker<'a> {
    let mut walker = Walker { repo, index, bad, clean: HashSet::new(), affected: Vec::new(), trees: 0 };
    for (id, snapshot) in snapshots {
        walker.tree(&id.short(), &snapshot.tree, "");
    }
    walker
}

/// Walks snapshot trees, naming every path that needs a bad or missing blob. Subtrees found clean
/// once are not walked again (snapshots share most of their trees).
struct Walker<'a> {
    repo: &'a Repository,
    index: &'a Index,
    bad: HashMap<Id, String>,
    clean: HashSet<Id>,
    affected: Vec<Affected>,
    trees: u64,
}

impl Walker<'_> {
    /// Returns whether everything below `id` is intact.
    fn tree(&mut self, snapshot: &str, id: &Id, path: &str) -> bool {
        if self.clean.contains(id) {
            return true;
        }
        let shown = if path.is_empty() { "/" } else { path };
        let lost = |reason: String| Affected {
            snapshot: snapshot.to_string(),
            path: shown.to_string(),
            reason: format!("directory listing unreadable, nothing below can be restored: {reason}"),
        };
        if let Some(reason) = self.bad.get(id) {
            self.affected.push(lost(reason.clone()));
            return false;
        }
        if !self.index.contains(id) {
            self.affected.push(lost(format!("tree {} is not in the index", id.short())));
            return false;
        }
        let tree = match self.repo.read_tree(self.index, id) {
            Ok(tree) => tree,
            Err(e) => {
                self.bad.insert(*id, e.to_string());
                self.affected.push(lost(e.to_string()));
                return false;
            }
        };
        self.trees += 1;
        let mut intact = true;
        for node in &tree.nodes {
            let child = format!("{path}/{}", String::from_utf8_lossy(&node.name));
            match &node.content {
                Content::Dir { subtree } => intact &= self.tree(snapshot, subtree, &child),
                Content::File { chunks } => {
                    let problem = chunks.iter().find_map(|chunk| match self.bad.get(chunk) {
                        Some(reason) => Some(format!("chunk {}: {reason}", chunk.short())),
                        None if !self.index.contains(chunk) => {
                            Some(format!("chunk {} is not in the index", chunk.short()))
                        }
                        None => None,
                    });
                    if let Some(reason) = problem {
                        self.affected.push(Affected { snapshot: snapshot.to_string(), path: child, reason });
                        intact = false;
                    }
                }
                _ => {}
            }
        }
        if intact {
            self.clean.insert(*id);
        }
        intact
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
}
