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
//! leftovers). By concern: packs' structure ([`structure`]), reading data ([`data`]: two pack
//! buffers, one verified while the next is read, while the index and trees load beside them),
//! and tracing damage to paths ([`trees`]); this module runs them and writes the report.

mod by_pack;
mod data;
mod structure;
mod trees;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;
use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::error::Result;
use crate::format::audit::Outcome;
use crate::format::pack::{BlobEntry, Codec};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::{FileKind, Indexed, Repository};
use by_pack::ByPack;
use data::read_packs;
pub(crate) use data::verify_blob;
pub use data::Prefetched;
pub(crate) use structure::read_trailer;
use structure::{check_pack_structure, list_packs, needed_in_unindexed_pack};
use trees::{all_trees_intact, walk, Walked};

/// Threads loading the index, snapshots and trees beside the packs being read.
const LOADER_THREADS: usize = 4;

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
    /// Indexed packs whose trailer lists dictionaries, with them.
    named_dictionaries: Mutex<Vec<(Id, Vec<Id>)>>,
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
    fn named(&self, pack: &Id, dictionaries: &[Id]) {
        if !dictionaries.is_empty() {
            self.named_dictionaries.lock().expect("poisoned").push((*pack, dictionaries.to_vec()));
        }
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
    // What the index places in each pack, summed, once loaded.
    let grouped = OnceLock::new();
    let load = || -> Result<_> {
        // A repository that cannot be loaded stops the reading of packs at once.
        let loaded = (|| Ok((repo.load_index()?, repo.snapshots()?, crate::audit::read_all(repo)?)))();
        let (index, snapshots, _) = loaded.inspect_err(|_| stop.store(true, Relaxed))?;
        let index = Indexed::new(repo, index);
        // On an intact repository this is the final walk.
        let walked = match all_trees_intact(&index, &snapshots) {
            Some(trees) => Walked { bad: HashMap::new(), unindexed: HashSet::new(), affected: Vec::new(), trees },
            None => walk(&index, &snapshots, HashMap::new()),
        };
        _ = grouped.set(ByPack::of(index.index()).map_err(damaged_copy)?);
        Ok((index, snapshots, walked))
    };
    let read = std::thread::scope(|scope| {
        // The loader has a worker pool of its own (where one can be started): its reads are small
        // and many, and in the shared pool each would wait behind whole packs.
        let loader = scope.spawn(|| match rayon::ThreadPoolBuilder::new().num_threads(LOADER_THREADS).build() {
            Ok(pool) => pool.install(load),
            Err(_) => load(),
        });
        let read = read_packs(repo, &to_read, prefetched, progress, &stop, &grouped);
        (loader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), read)
    });
    let ((index, snapshots, first_walk), read) = (read.0?, read.1);
    let sums = grouped.into_inner().expect("loaded with the index");
    for damage in repo.take_damage() {
        findings.error(damage.to_string());
    }
    report.index_files = repo.list_files(FileKind::Index)?.len() as u64;
    report.snapshots = snapshots.len() as u64;
    report.packs_read = read.packs;
    report.bytes_read = read.bytes;
    report.blobs_verified = read.blobs;
    let indexed_len: HashMap<Id, u64> = index.index().packs.iter().copied().collect();
    // Damage matters where the index takes blobs from; a pack no index names is only left over.
    for (pack, message) in read.bad_packs {
        match indexed_len.contains_key(&pack) {
            true => findings.bad_pack(&pack, message),
            false => report.warnings.push(format!("{message} (no index names it; prune removes it)")),
        }
    }
    for (pack, entry, reason) in read.failed {
        let copy = format!("blob {} in pack {} is damaged ({reason})", entry.id.short(), pack.short());
        match index.index().get(&entry.id) {
            Some(at)
                if index.index().pack_id(&at) == pack
                    && at.offset == entry.offset
                    && at.stored_len == entry.stored_len =>
            {
                findings.error(format!("blob {} in pack {}: {reason}", entry.id.short(), pack.short()));
                findings.bad_blob(&entry.id, format!("it is damaged ({reason})"));
            }
            Some(_) => report.warnings.push(format!("{copy}, but the index takes it from another copy")),
            None => report.warnings.push(format!("{copy}, but no index names it")),
        }
    }
    if index.index().damaged() {
        findings.error(
            "the local sorted copy of the index was found damaged (it has been removed): run check again".to_string(),
        );
    }

    report.packs = index.index().packs.len() as u64;
    // A pack whose trailer lists exactly what the index places in it is confirmed by its sum; the
    // others (missing, short, or listing other entries) have their entries gathered, to say which
    // blobs they cost.
    let suspects = Mutex::new(Vec::new());
    index.index().packs.par_iter().for_each(|(pack, expected_len)| {
        let sum = sums.get(pack);
        let confirmed = match on_disk.get(pack) {
            Some(&actual_len) if actual_len == *expected_len && sum.max_end <= actual_len => {
                match read.trailers_checked.get(pack) {
                    Some(dictionaries) => {
                        findings.named(pack, dictionaries);
                        true
                    }
                    None => {
                        let key = FileKind::Pack.name(pack);
                        let read_range = |offset, n| repo.read_file_range(FileKind::Pack, pack, offset, n);
                        let trailer = read_trailer(repo, &key, actual_len, &read_range);
                        trailer.is_ok_and(|listed| {
                            findings.named(pack, &listed.dictionaries);
                            sums.matches(pack, &listed.entries)
                        })
                    }
                }
            }
            _ => false,
        };
        if !confirmed {
            suspects.lock().expect("poisoned").push((*pack, sum.count));
        }
    });
    let mut suspects = suspects.into_inner().expect("poisoned");
    suspects.sort_unstable();
    by_pack::gather(index.index(), &suspects, |group| {
        group.par_iter().for_each(|(pack, entries)| check_pack(repo, pack, entries, &on_disk, &indexed_len, &findings));
    })
    .map_err(damaged_copy)?;
    let (lost_dictionaries, damaged_dictionaries) =
        check_dictionaries(repo, &index, &sums, &findings, &mut report.warnings)?;

    // Trace every bad or missing blob to the snapshots and paths that need it: walk again only if
    // the packs or the index had any.
    let bad = findings.bad_blobs.into_inner().expect("poisoned");
    let walker = if bad.is_empty() { first_walk } else { walk(&index, &snapshots, bad) };
    let mut errors = findings.errors.into_inner().expect("poisoned");
    let mut unindexed_packs: Vec<(&Id, &u64)> =
        on_disk.iter().filter(|(id, _)| !indexed_len.contains_key(id)).collect();
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
             from the packs; if they are in no pack either (or repair dropped them: their dictionary is lost), the \
             paths above are lost unless a new snapshot stores the same content again: forget the snapshots that \
             need them",
            walker.unindexed.len()
        ));
    }
    if lost_dictionaries + damaged_dictionaries > 0 {
        let damaged = match damaged_dictionaries {
            0 => String::new(),
            n => format!(" ({n} damaged: move those files out of dicts/ first)"),
        };
        report.advice.push(format!(
            "{} compression dictionaries cannot be read{damaged}: copy them back from a copy of this repository \
             that shares its keys and has them: `cairn --repo COPY sync --to THIS` copies every dictionary file \
             its destination lacks (and every snapshot COPY has that this repository lacks); with no copy \
             anywhere, `cairn repair index --drop-lost-dictionaries` drops the blobs that need them, so that \
             the next snapshot stores their content again, and check then names what stays lost",
            lost_dictionaries + damaged_dictionaries
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

/// Every compression dictionary file reads and loads, and so does every dictionary an indexed
/// pack's trailer lists (store-format/pack.md); the blobs the index takes from such a pack and
/// that need one that does not are damage. Packs written before format version 5 list none: a
/// lost dictionary of theirs shows only in the blobs `--read-data` decodes. Returns how many
/// dictionaries cannot be read: (missing and needed by a blob the index takes, present but
/// damaged). A missing one that no blob the index takes needs is a warning in `warnings`.
fn check_dictionaries(
    repo: &Repository,
    index: &Indexed,
    sums: &ByPack,
    findings: &Findings,
    warnings: &mut Vec<String>,
) -> Result<(usize, usize)> {
    let mut unusable: HashMap<Id, String> = HashMap::new();
    let present: HashSet<Id> = repo.list_files(FileKind::Dictionary)?.into_iter().map(|(id, _)| id).collect();
    for id in &present {
        if let Err(e) = repo.dictionary(id) {
            unusable.insert(*id, e.to_string());
        }
    }
    let mut naming: HashMap<Id, Vec<Id>> = HashMap::new();
    for (pack, dictionaries) in findings.named_dictionaries.lock().expect("poisoned").drain(..) {
        for dictionary in &dictionaries {
            if !unusable.contains_key(dictionary) {
                if let Err(e) = repo.dictionary(dictionary) {
                    unusable.insert(*dictionary, e.to_string());
                }
            }
        }
        if dictionaries.iter().any(|d| unusable.contains_key(d)) {
            naming.insert(pack, dictionaries);
        }
    }
    // Which blobs the index takes from those packs need a dictionary that cannot be read: each
    // codec 2 blob of a pack that lists only that one; in a pack that lists several, the one its
    // stored bytes name.
    let mut needing: HashMap<Id, u64> = HashMap::new();
    let mut packs: Vec<(Id, u64)> = naming.keys().map(|pack| (*pack, sums.get(pack).count)).collect();
    packs.sort_unstable();
    by_pack::gather(index.index(), &packs, |group| {
        for (pack, entries) in group {
            let listed = &naming[&pack];
            for entry in entries.iter().filter(|e| e.codec == Codec::ZstdDict) {
                match repo.dictionary_in_pack(&pack, listed, entry) {
                    Ok(Some(named)) => {
                        if let Some(reason) = unusable.get(&named) {
                            *needing.entry(named).or_default() += 1;
                            let why = format!("it needs a dictionary that cannot be read ({reason})");
                            findings.bad_blob(&entry.id, why);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => findings.bad_blob(&entry.id, format!("it cannot be read to tell its dictionary ({e})")),
                }
            }
        }
    })
    .map_err(damaged_copy)?;
    // A damaged file is an error whether or not a blob needs it; a missing one when one does
    // (the blobs of a pack that lists it may all be taken from elsewhere, or dropped by `repair
    // index`).
    let mut errors: Vec<(&Id, &String)> = unusable.iter().collect();
    errors.sort_unstable();
    let (mut missing, mut damaged) = (0, 0);
    for (id, error) in errors {
        let blobs = needing.get(id).copied().unwrap_or(0);
        match (present.contains(id), blobs) {
            (false, 0) => {
                warnings.push(format!("{error} (no blob the index takes from the packs that list it needs it)"));
                continue;
            }
            (true, 0) => findings.error(error.clone()),
            (_, n) => findings.error(format!("{error} ({n} blobs the index takes need it)")),
        }
        match present.contains(id) {
            true => damaged += 1,
            false => missing += 1,
        }
    }
    Ok((missing, damaged))
}

/// The error when a scan finds the local sorted copy damaged.
fn damaged_copy(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::corrupt("the local sorted copy of the index", format!("{e}; the next run rebuilds it"))
}

/// The structural check of one pack that did not match its sum, with the entries the index
/// places in it: missing, another length, blobs past its end, a header or trailer that does not
/// decode, or a trailer that does not list each entry where the index places it.
fn check_pack(
    repo: &Repository,
    pack: &Id,
    entries: &[BlobEntry],
    on_disk: &HashMap<Id, u64>,
    indexed_len: &HashMap<Id, u64>,
    findings: &Findings,
) {
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
    let read_range = |offset, n| repo.read_file_range(FileKind::Pack, pack, offset, n);
    if let Err(e) = check_pack_structure(repo, &key, pack, actual_len, entries, findings, &read_range) {
        findings.bad_pack(pack, format!("pack {}: {e}", pack.short()));
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
