//! `cairn repair index`: rebuilds the index from what the packs say about themselves.
//!
//! An index file only repeats the trailers of the packs it names (store-format/index.md). When
//! one is lost or damaged, the blobs it named are still in their packs, but nothing finds them:
//! `check` reports them "not in the index", and prune refuses to run rather than delete packs
//! that snapshots need. restic's `repair index` is the anchor; cairn's pack trailers allow the
//! same (store-format/prune.md, "Repair index").
//!
//! Plan, then act. The plan takes each pack file present: its entries come from the intact index
//! files that name it with its length, when they agree, or else (and for every pack with
//! `read_all_packs`) from its own trailer. A pack whose trailer cannot be read keeps the entries an index file had for
//! it, if any, so its intact blobs still restore; without those it stays unindexed, for `check`
//! to report. Packs that index files name but that are gone are dropped. Executing writes index
//! files for every pack present, each durable before the next step, and only then deletes the
//! old index files. A crash in between leaves old and new files naming the same blobs, which is
//! harmless, and a second run finishes. Repair deletes nothing but index files it has replaced.

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::index::IndexedPack;
use crate::format::pack::{self, BlobEntry, Codec};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::{FileKind, Repository};

/// Trailers read at once: each is one or two small ranged reads, mostly waiting for the disk or
/// the network.
const TRAILERS_AT_ONCE: usize = 16;

#[derive(Debug, Default, Serialize)]
pub struct RepairPlan {
    /// Pack files present.
    pub packs: u64,
    /// Packs whose entries are taken from an intact index file.
    pub from_index: u64,
    /// Packs indexed from their own trailer (ids).
    pub from_trailer: Vec<String>,
    /// Packs whose trailer cannot be read, and why; `kept` when an index file's entries for them
    /// are kept.
    pub unreadable: Vec<Unreadable>,
    /// Packs that index files name but that are gone (ids), and how many blobs they held.
    pub missing: Vec<String>,
    pub missing_blobs: u64,
    /// Index files that could not be read (they are replaced).
    pub damaged_index_files: Vec<String>,
    /// Packs that index files disagree about (ids): their trailers are read, and the index
    /// files are replaced.
    pub disputed: Vec<String>,
    /// Dictionaries found missing or damaged, and how many blobs compressed with each are
    /// dropped from the index.
    pub lost_dictionaries: Vec<LostDictionary>,
    /// Index files there are now.
    pub index_files: u64,
    #[serde(skip)]
    internal: Internal,
}

#[derive(Debug, Serialize)]
pub struct Unreadable {
    pub pack: String,
    pub reason: String,
    pub kept: bool,
}

#[derive(Debug, Serialize)]
pub struct LostDictionary {
    pub dictionary: String,
    pub reason: String,
    pub blobs: u64,
}

#[derive(Debug, Default)]
struct Internal {
    /// Every pack present with the entries the new index gives it, in pack id order.
    packs: Vec<IndexedPack>,
    /// Every index file there is now, intact or not.
    old_files: Vec<Id>,
}

impl RepairPlan {
    /// Whether the index already says exactly what the plan would write.
    pub fn is_noop(&self) -> bool {
        self.from_trailer.is_empty()
            && self.missing.is_empty()
            && self.damaged_index_files.is_empty()
            && self.disputed.is_empty()
            && self.lost_dictionaries.iter().all(|d| d.blobs == 0)
    }
}

/// What a repair may do beyond rebuilding the index from the packs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Read every pack's trailer, not only those of packs no intact index file names.
    pub read_all_packs: bool,
    /// Drop the blobs compressed with a dictionary that is missing or damaged.
    pub drop_lost_dictionaries: bool,
}

/// Plans a repair. The caller holds the exclusive lock. A pack or index file that cannot be read
/// for a passing reason (an I/O error rather than damage) stops the plan: the index is never
/// rebuilt from a partial view.
pub fn plan(repo: &Repository, options: Options, progress: &Progress) -> Result<RepairPlan> {
    let read_all_packs = options.read_all_packs;
    let merged = repo.indexed_packs()?;
    let mut plan = RepairPlan::default();
    for damage in repo.take_damage() {
        match damage {
            Error::Corrupt { file, .. } => plan.damaged_index_files.push(file),
            other => return Err(Error::Refused(format!("{other}; nothing was changed"))),
        }
    }
    // Files whose name is not an id are not cairn's: they are left alone.
    let mut old_files: Vec<Id> = repo.list_files(FileKind::Index)?.into_iter().map(|(id, _)| id).collect();
    old_files.sort();
    plan.index_files = old_files.len() as u64;
    // What intact index files say, all of them; a pack they disagree about is read again.
    let (indexed, disputed) = (merged.packs, merged.disputed);
    plan.disputed = disputed.iter().map(|id| id.to_hex()).collect();
    let (present, _) = repo.list_packs()?;
    plan.packs = present.len() as u64;
    let mut missing: Vec<&IndexedPack> = indexed.values().filter(|p| !present.contains_key(&p.id)).collect();
    missing.sort_by_key(|p| p.id);
    plan.missing = missing.iter().map(|p| p.id.to_hex()).collect();
    plan.missing_blobs = missing.iter().map(|p| p.blobs.len() as u64).sum();

    let mut to_read: Vec<(Id, u64)> = Vec::new();
    let mut packs = Vec::with_capacity(present.len());
    for (&id, &len) in &present {
        match indexed.get(&id) {
            Some(pack) if pack.len == len && !read_all_packs && !disputed.contains(&id) => packs.push(pack.clone()),
            _ => to_read.push((id, len)),
        }
    }
    plan.from_index = packs.len() as u64;
    to_read.sort_unstable();
    // The dictionaries each pack's trailer lists, for the trailers read.
    let mut listed: HashMap<Id, Vec<Id>> = HashMap::new();
    for (id, len, trailer) in read_trailers(repo, &to_read, progress) {
        match trailer {
            Ok(pack::Trailer { entries: blobs, dictionaries }) => {
                listed.insert(id, dictionaries);
                packs.push(IndexedPack { id, len, blobs });
            }
            Err(e @ Error::Corrupt { .. }) => {
                let old = indexed.get(&id).filter(|old| old.len == len);
                plan.unreadable.push(Unreadable { pack: id.to_hex(), reason: e.to_string(), kept: old.is_some() });
                packs.extend(old.cloned());
            }
            Err(e) => return Err(Error::Refused(format!("pack {}: {e}; nothing was changed", id.short()))),
        }
    }
    let from_trailer: HashSet<Id> = listed.keys().copied().collect();
    if options.drop_lost_dictionaries {
        plan.lost_dictionaries = drop_blobs_of_lost_dictionaries(repo, &mut packs, &mut listed, &indexed, progress)?;
    }
    // A pack read from its trailer that the index already names exactly (after the drop) needs
    // no new entry.
    for pack in packs.iter().filter(|p| from_trailer.contains(&p.id)) {
        if !matches!(indexed.get(&pack.id), Some(old) if old.len == pack.len && old.blobs == pack.blobs) {
            plan.from_trailer.push(pack.id.to_hex());
        }
    }
    plan.from_trailer.sort();
    packs.sort_by_key(|p| p.id);
    plan.internal = Internal { packs, old_files };
    progress.finish();
    Ok(plan)
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub index_files_written: u64,
    pub index_files_deleted: u64,
}

/// An index repair as the audited run `repair` (store-format/audit.md): [`plan`] (which `planned`
/// is shown before anything changes), then the plan carried out. The caller holds the exclusive
/// lock. What `cairn repair index` runs, and what an embedder calls.
pub fn repair(
    repo: &Repository,
    options: Options,
    progress: &Progress,
    planned: impl FnOnce(&RepairPlan),
) -> Audited<RepairReport> {
    Run::start("repair", "").after(repo, |record| {
        let plan = self::plan(repo, options, progress)?;
        planned(&plan);
        let shown = serde_json::to_value(&plan).unwrap_or_default();
        let report = execute(repo, plan)?;
        record.details = serde_json::json!({ "plan": shown, "report": report });
        Ok((report, Outcome::Ok))
    })
}

/// The trailers of `packs` (id, length), read [`TRAILERS_AT_ONCE`] at a time.
fn read_trailers(repo: &Repository, packs: &[(Id, u64)], progress: &Progress) -> Vec<(Id, u64, Result<pack::Trailer>)> {
    progress.add_total(packs.len() as u64);
    let read = |&(id, len): &(Id, u64)| {
        let key = FileKind::Pack.name(&id);
        let range = |offset, n| repo.read_file_range(FileKind::Pack, &id, offset, n);
        let trailer = crate::check::read_trailer(repo, &key, len, &range);
        progress.add_bytes(1);
        (id, len, trailer)
    };
    match rayon::ThreadPoolBuilder::new().num_threads(TRAILERS_AT_ONCE).build() {
        Ok(pool) => pool.install(|| packs.par_iter().map(read).collect()),
        Err(_) => packs.iter().map(read).collect(),
    }
}

/// Drops from `packs` every blob compressed with a dictionary that is missing or damaged: it
/// cannot be read, and while the index has it, every snapshot of its database dedups against it
/// and is incomplete; dropped, the next snapshot stores the page again
/// (store-format/dictionary.md). A pack's dictionaries are those its trailer lists (`listed`
/// holds the trailers already read; the others of packs with codec 2 blobs are read here);
/// version 2 packs list none and keep their blobs. In a pack that lists several, each blob's
/// stored bytes tell which it names. Only a dictionary found missing or damaged counts as lost:
/// any other failure to read one stops the repair.
fn drop_blobs_of_lost_dictionaries(
    repo: &Repository,
    packs: &mut [IndexedPack],
    listed: &mut HashMap<Id, Vec<Id>>,
    indexed: &BTreeMap<Id, IndexedPack>,
    progress: &Progress,
) -> Result<Vec<LostDictionary>> {
    let refused = |what: String, e: Error| Error::Refused(format!("{what}: {e}; nothing was changed"));
    let unread: Vec<(Id, u64)> = packs
        .iter()
        .filter(|p| !listed.contains_key(&p.id) && p.blobs.iter().any(|b| b.codec == Codec::ZstdDict))
        .map(|p| (p.id, p.len))
        .collect();
    for (id, _, trailer) in read_trailers(repo, &unread, progress) {
        match trailer {
            Ok(trailer) => _ = listed.insert(id, trailer.dictionaries),
            // A damaged trailer is for check to report; the pack's blobs stay as they are.
            Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(refused(format!("pack {}", id.short()), e)),
        }
    }
    let mut lost: BTreeMap<Id, LostDictionary> = BTreeMap::new();
    let mut readable: HashSet<Id> = HashSet::new();
    // A dictionary counts as missing only if the listing agrees that it is not there.
    let present: HashSet<Id> = repo.list_files(FileKind::Dictionary)?.into_iter().map(|(id, _)| id).collect();
    for dictionary in listed.values().flatten() {
        if readable.contains(dictionary) || lost.contains_key(dictionary) {
            continue;
        }
        match repo.dictionary(dictionary) {
            Ok(_) => _ = readable.insert(*dictionary),
            Err(e @ Error::Corrupt { .. }) if !present.contains(dictionary) || damaged(repo, dictionary)? => {
                let reason = e.to_string();
                lost.insert(*dictionary, LostDictionary { dictionary: dictionary.to_hex(), reason, blobs: 0 });
            }
            Err(e) => return Err(refused(format!("dictionary {}", dictionary.short()), e)),
        }
    }
    for pack in packs.iter_mut() {
        let Some(dictionaries) = listed.get(&pack.id).filter(|d| d.iter().any(|d| lost.contains_key(d))) else {
            continue;
        };
        let had: HashSet<BlobEntry> =
            indexed.get(&pack.id).map(|old| old.blobs.iter().copied().collect()).unwrap_or_default();
        let mut kept = Vec::with_capacity(pack.blobs.len());
        for blob in std::mem::take(&mut pack.blobs) {
            let named = match repo.dictionary_in_pack(&pack.id, dictionaries, &blob) {
                Ok(named) => named,
                // A damaged blob is for check to report.
                Err(Error::Corrupt { .. }) => None,
                Err(e) => return Err(refused(format!("pack {}", pack.id.short()), e)),
            };
            match named.and_then(|d| lost.get_mut(&d)) {
                // Counted only if the index has it now: one dropped before, read again from the
                // trailer (`--read-all-packs`), changes nothing.
                Some(dictionary) => dictionary.blobs += u64::from(had.contains(&blob)),
                None => kept.push(blob),
            }
        }
        pack.blobs = kept;
    }
    Ok(lost.into_values().filter(|d| d.blobs > 0).collect())
}

/// Whether the dictionary file `id` is damaged: its bytes, read again, do not hash to its name.
/// (One that hashes right and still does not load is no proof of damage: the repair refuses.)
fn damaged(repo: &Repository, id: &Id) -> Result<bool> {
    Ok(Id::of(&repo.read_file_raw(FileKind::Dictionary, id)?) != *id)
}

/// Carries out a plan (nothing, if it changes nothing). The caller holds the exclusive lock the
/// plan was made under.
fn execute(repo: &Repository, plan: RepairPlan) -> Result<RepairReport> {
    let mut report = RepairReport::default();
    if plan.is_noop() {
        return Ok(report);
    }
    let internal = plan.internal;
    let written = repo.write_index_files(&internal.packs)?;
    report.index_files_written = written.len() as u64;
    let written: HashSet<&Id> = written.iter().collect();
    for id in internal.old_files.iter().filter(|id| !written.contains(id)) {
        repo.delete_file(FileKind::Index, id)?;
        report.index_files_deleted += 1;
    }
    Ok(report)
}
