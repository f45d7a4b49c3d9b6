//! `cairn prune`: mark every blob the remaining snapshots reach, then sweep.
//!
//! Plan first, then act. The plan: packs with no live blob are deleted; packs with some dead
//! blobs are repacked (their live blobs copied, verified and still compressed, into new packs),
//! most wasteful first, until the dead bytes left are at most `--max-unused` percent of the live
//! ones; packs that no index names (left by interrupted snapshots) are deleted. Marking can only
//! err toward keeping: a tree that cannot be read aborts the prune.
//!
//! Order of execution, each step durable before the next (store-format/README.md, "Prune"):
//! 1. new packs with the repacked blobs (and index files for them);
//! 2. new index files naming every pack that stays;
//! 3. the old index files are deleted;
//! 4. the dead and repacked packs are deleted.
//!
//! A crash anywhere leaves every live blob reachable through some index file; running prune
//! again finishes the job. An exclusive repository lock keeps snapshots out meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::index::IndexedPack;
use crate::format::pack::BlobEntry;
use crate::format::snapshot::Snapshot;
use crate::format::tree::Content;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::index::Index;
use crate::repository::packer::BlobStore;
use crate::repository::{FileKind, Indexed, Repository};

#[derive(Debug, Default, Serialize)]
pub struct PrunePlan {
    pub snapshots: u64,
    pub packs: u64,
    pub live_blobs: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    /// Packs with no live blob.
    pub delete: Vec<String>,
    /// Packs whose live blobs are copied out before they are deleted.
    pub repack: Vec<String>,
    pub repack_blobs: u64,
    pub repack_bytes: u64,
    /// Pack files that no index names.
    pub unreferenced: Vec<String>,
    /// Bytes the deletions free (before the repacked copies are added back).
    pub bytes_freed: u64,
    /// Live blobs with a copy in a pack about to go, whose copy the index picks was read and
    /// verified first.
    pub copies_verified: u64,
    #[serde(skip)]
    internal: Internal,
}

#[derive(Debug, Default)]
struct Internal {
    /// Every pack any index file names, with all its blobs.
    packs: BTreeMap<Id, IndexedPack>,
    index_files: Vec<Id>,
    live: HashSet<Id>,
    /// Per pack, the live blobs at the place the index picks: what a repack copies.
    keep: HashMap<Id, Vec<BlobEntry>>,
    repack: Vec<Id>,
    delete: Vec<Id>,
    unreferenced: Vec<Id>,
}

/// Blobs reachable from snapshot trees: every tree and every chunk below them. Shared by prune's
/// mark and by `stats`.
#[derive(Debug, Default)]
pub struct Reachable {
    pub blobs: HashSet<Id>,
    /// Trees walked, kept apart from `blobs` so a data chunk that happens to share a tree's id
    /// can never stop that tree from being walked.
    walked: HashSet<Id>,
}

impl Reachable {
    /// Adds everything below the tree `root`; a tree already walked is not walked again
    /// ([`crate::walk::each_tree`]).
    pub fn add_tree(&mut self, repo: &Indexed, root: Id) -> Result<()> {
        let blobs = &mut self.blobs;
        crate::walk::each_tree(repo, [root], &mut self.walked, |id, tree| {
            blobs.insert(*id);
            for node in &tree.nodes {
                if let Content::File { chunks } = &node.content {
                    // List blobs are live, and every chunk their chain expands to; a chain that
                    // cannot be read stops the walk, as a tree that cannot.
                    blobs.extend(chunks.lists().iter().copied());
                    blobs.extend(repo.chunk_list(chunks)?.iter().copied());
                }
            }
            Ok(())
        })
    }
}

/// What to do when blobs the snapshots need are in no index file.
const REPAIR_ADVICE: &str = "an index file may be lost: run `cairn repair index`, which rebuilds the index from \
    the packs, then `cairn check` (if they are in no pack either, check names the files lost: forget the snapshots \
    that need them)";

/// The last word before anything is deleted: the place the index takes each live blob from is
/// in a pack that stays, or among the blobs a repack copies out. The plan is built to keep this;
/// this check makes a mistake in it (or in what it was given) stop the prune instead of costing
/// data.
fn ensure_live_blobs_stay(index: &Index, internal: &Internal) -> Result<()> {
    let deleted: HashSet<&Id> = internal.delete.iter().chain(&internal.unreferenced).collect();
    let repacked: HashSet<&Id> = internal.repack.iter().collect();
    let copied: HashSet<(Id, u32)> = internal
        .repack
        .iter()
        .filter_map(|pack| internal.keep.get(pack))
        .flatten()
        .map(|blob| (blob.id, blob.offset))
        .collect();
    for id in &internal.live {
        let Some(at) = index.get(id) else { continue }; // refused earlier
        let pack = index.pack_id(&at);
        if deleted.contains(&pack) || (repacked.contains(&pack) && !copied.contains(&(*id, at.offset))) {
            return Err(Error::Refused(format!(
                "blob {} is live in pack {}, which the plan would delete; nothing was deleted: run `cairn check`",
                id.short(),
                pack.short()
            )));
        }
    }
    // A lookup in a damaged block of the local sorted copy answers "absent": a plan made with one
    // may count a live copy as dead.
    if index.damaged() {
        return Err(Error::Refused(
            "the local sorted copy of the index was found damaged while planning (it has been removed); nothing was \
             deleted: run prune again"
                .to_string(),
        ));
    }
    Ok(())
}

/// Whether the index takes `blob` from this place in `pack`.
fn picked(index: &Index, pack: &Id, blob: &BlobEntry) -> bool {
    index.get(&blob.id).is_some_and(|at| index.pack_id(&at) == *pack && at.offset == blob.offset)
}

/// A pack about to be deleted or repacked may hold copies of live blobs that are dead only because
/// the index picks another copy. Before such a copy goes, the picked one is read and verified: a
/// damaged or forged index file (one a host with create-only rights could write, sorting first and
/// placing real blob ids in a pack of garbage) would otherwise make prune delete the only real
/// copy. Returns how many copies were verified; an error (nothing deleted) if one fails.
fn verify_picked_copies(repo: &Indexed, internal: &Internal) -> Result<u64> {
    let index = repo.index();
    let mut picked_elsewhere: Vec<Id> = internal
        .delete
        .iter()
        .chain(&internal.repack)
        .filter_map(|pack| internal.packs.get(pack))
        .flat_map(|pack| pack.blobs.iter().map(move |blob| (pack.id, blob)))
        .filter(|(pack, blob)| internal.live.contains(&blob.id) && !picked(index, pack, blob))
        .map(|(_, blob)| blob.id)
        .collect();
    picked_elsewhere.sort_unstable();
    picked_elsewhere.dedup();
    picked_elsewhere.par_iter().try_for_each(|id| {
        repo.read_blob(id).map(|_| ()).map_err(|e| {
            Error::Refused(format!(
                "blob {} is live, and the copy the index picks cannot be read ({e}) while a pack about to go \
                 holds another; nothing was deleted: run `cairn check --read-data`",
                id.short()
            ))
        })
    })?;
    Ok(picked_elsewhere.len() as u64)
}

/// Every blob reachable from the snapshots. Fails rather than guess on an unreadable tree.
fn mark(repo: &Indexed, snapshots: &[(Id, Snapshot)]) -> Result<HashSet<Id>> {
    let mut reachable = Reachable::default();
    for (id, snapshot) in snapshots {
        reachable.add_tree(repo, snapshot.tree).map_err(|e| {
            let advice = match e {
                Error::MissingBlob(_) => REPAIR_ADVICE,
                _ => "run `cairn check`",
            };
            Error::Refused(format!("snapshot {}: {e}; nothing was deleted ({advice})", id.short()))
        })?;
    }
    Ok(reachable.blobs)
}

/// Prune deletes only in a whole repository: every blob the snapshots reach must be in the index,
/// in a pack that is there. Where one is not (an index file lost, a pack gone), the packs that
/// hold what the snapshots need would look unreferenced or dead, and deleting them would destroy
/// what a repair could still save; so nothing is deleted, and the error says how to recover.
fn refuse_unless_whole(index: &Index, live: &HashSet<Id>, present: &HashMap<Id, u64>) -> Result<()> {
    let mut unindexed = live.iter().filter(|id| !index.contains(id));
    if let Some(first) = unindexed.next() {
        return Err(Error::Refused(format!(
            "{} blobs that snapshots need are in no index file (blob {} among them); nothing was deleted: {REPAIR_ADVICE}",
            1 + unindexed.count(),
            first.short()
        )));
    }
    let gone: BTreeSet<Id> = live
        .iter()
        .filter_map(|id| index.get(id))
        .map(|at| index.pack_id(&at))
        .filter(|p| !present.contains_key(p))
        .collect();
    if let Some(first) = gone.first() {
        return Err(Error::Refused(format!(
            "{} packs that hold blobs snapshots need are missing (pack {} among them); nothing was deleted: run `cairn \
             check` to see which files they cost",
            gone.len(),
            first.short()
        )));
    }
    Ok(())
}

pub fn plan(repo: &Repository, max_unused_percent: f64) -> Result<PrunePlan> {
    // Every damaged file must stop the prune: a skipped manifest would look like a snapshot that
    // does not exist, and the data only it needs would be deleted.
    let snapshots = repo.snapshots()?;
    let loaded = Indexed::load(repo)?;
    let index = loaded.index();
    let indexed = repo.indexed_packs()?;
    if let Some(first) = repo.take_damage().first() {
        return Err(Error::Refused(format!("{first}: refusing to prune a repository with damaged files")));
    }
    // A pack's entries are what every index file lists for it; files that disagree are damage (or
    // a file forged to hide live blobs): deleting by either list could destroy what the other holds.
    if let Some(first) = indexed.disputed.first() {
        return Err(Error::Refused(format!(
            "index files disagree about what {} packs hold (pack {} among them); nothing was deleted: run `cairn \
             repair index`, which reads those packs' own trailers",
            indexed.disputed.len(),
            first.short()
        )));
    }
    let mut plan = PrunePlan { snapshots: snapshots.len() as u64, ..Default::default() };
    let live = mark(&loaded, &snapshots)?;
    let present = repo.list_packs()?.0;
    refuse_unless_whole(index, &live, &present)?;
    let mut internal = Internal { live, index_files: indexed.files, packs: indexed.packs, ..Default::default() };
    // A blob is live in exactly one place: where the index finds it. Copies elsewhere are dead.
    let mut candidates: Vec<(f64, Id, u64)> = Vec::new();
    for (pack_id, pack) in &internal.packs {
        let (mut live_bytes, mut dead_bytes) = (0u64, 0u64);
        for blob in &pack.blobs {
            if picked(index, pack_id, blob) && internal.live.contains(&blob.id) {
                live_bytes += blob.stored_len as u64;
                plan.live_blobs += 1;
                internal.keep.entry(*pack_id).or_default().push(*blob);
            } else {
                dead_bytes += blob.stored_len as u64;
            }
        }
        plan.live_bytes += live_bytes;
        plan.dead_bytes += dead_bytes;
        if live_bytes == 0 {
            internal.delete.push(*pack_id);
            plan.bytes_freed += pack.len;
        } else if dead_bytes > 0 {
            candidates.push((dead_bytes as f64 / (live_bytes + dead_bytes) as f64, *pack_id, dead_bytes));
        }
    }
    // Repack the most wasteful packs until what stays dead is within the allowance.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let allowance = (plan.live_bytes as f64 * max_unused_percent / 100.0) as u64;
    let mut remaining: u64 = candidates.iter().map(|c| c.2).sum();
    for (_, pack_id, dead) in candidates {
        if remaining <= allowance {
            break;
        }
        remaining -= dead;
        internal.repack.push(pack_id);
        plan.bytes_freed += dead;
        for blob in internal.keep.get(&pack_id).into_iter().flatten() {
            plan.repack_blobs += 1;
            plan.repack_bytes += blob.stored_len as u64;
        }
    }
    plan.copies_verified = verify_picked_copies(&loaded, &internal)?;
    for (id, len) in present {
        if !internal.packs.contains_key(&id) {
            internal.unreferenced.push(id);
            plan.bytes_freed += len;
        }
    }
    internal.unreferenced.sort();
    ensure_live_blobs_stay(index, &internal)?;
    plan.packs = internal.packs.len() as u64;
    plan.delete = internal.delete.iter().map(|id| id.to_hex()).collect();
    plan.repack = internal.repack.iter().map(|id| id.to_hex()).collect();
    plan.unreferenced = internal.unreferenced.iter().map(|id| id.to_hex()).collect();
    plan.internal = internal;
    Ok(plan)
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub packs_written: u64,
    pub index_files_written: u64,
    pub index_files_deleted: u64,
    pub bytes_freed: u64,
}

/// A gap between live blobs below which one read is cheaper than two.
const READ_GAP: u64 = 256 << 10;

/// Copies the live blobs of one pack being repacked into `store`, verifying each. Only the runs
/// of the pack that hold live blobs are read.
fn copy_live_blobs(
    repo: &Repository,
    store: &BlobStore<'_>,
    pack: &IndexedPack,
    keep: &HashMap<Id, Vec<BlobEntry>>,
    progress: &Progress,
) -> Result<()> {
    let pack_id = &pack.id;
    let key = FileKind::Pack.name(pack_id);
    let damaged = |e: Error| Error::Refused(format!("{e}; nothing was deleted (run `cairn check`)"));
    let mut blobs: Vec<&BlobEntry> = keep.get(pack_id).into_iter().flatten().collect();
    blobs.sort_by_key(|b| b.offset);
    let mut rest = &blobs[..];
    while let Some(first) = rest.first() {
        let start = first.offset as u64;
        let mut end = first.end();
        let mut run = 1;
        while let Some(next) = rest.get(run).filter(|b| b.offset as u64 <= end + READ_GAP) {
            end = end.max(next.end());
            run += 1;
        }
        // The index's word is checked against the pack's indexed length before anything is
        // allocated for it.
        if end > pack.len {
            return Err(damaged(Error::corrupt(&key, "a live blob lies past the end of the pack")));
        }
        let bytes = repo.read_file_range(FileKind::Pack, pack_id, start, end - start).map_err(damaged)?;
        for blob in &rest[..run] {
            let stored = bytes
                .get((blob.offset as u64 - start) as usize..(blob.end() - start) as usize)
                .ok_or_else(|| Error::corrupt(&key, "blob lies outside the pack"))?;
            repo.decode_blob(blob, stored, pack_id).map_err(damaged)?;
            store.store_verbatim(blob.id, blob.kind, blob.codec, stored, blob.raw_len)?;
            progress.add_bytes(stored.len() as u64);
        }
        rest = &rest[run..];
    }
    Ok(())
}

/// What [`prune`] did: the packs and index files, and the audit log's compaction.
#[derive(Debug, Serialize)]
pub struct Pruned {
    pub report: PruneReport,
    pub audit: crate::audit::Compacted,
}

/// A prune as the audited run `prune` (store-format/audit.md): [`plan`] (which `planned` is shown
/// before anything is deleted), the plan carried out, then the audit log compacted, keeping
/// every record younger than `keep_audit` and of the older ones those `status` reads. The caller
/// holds the exclusive lock. What `cairn prune` runs, and what an embedder calls.
pub fn prune(
    repo: &Repository,
    max_unused_percent: f64,
    keep_audit: std::time::Duration,
    progress: &Progress,
    planned: impl FnOnce(&PrunePlan),
) -> Audited<Pruned> {
    Run::start("prune", "").around(repo, |record| {
        let plan = self::plan(repo, max_unused_percent)?;
        planned(&plan);
        let now = crate::clock::now_ms();
        let report = execute(repo, plan, progress)?;
        let audit = crate::audit::compact(repo, now, keep_audit, false)
            .map_err(|e| Error::Invalid(format!("compacting the audit log: {e}")))?;
        record.bytes = report.bytes_freed;
        let pruned = Pruned { report, audit };
        record.details = serde_json::json!({ "report": pruned.report, "audit": pruned.audit });
        Ok((pruned, Outcome::Ok))
    })
}

/// Carries out a plan. The caller holds the exclusive lock the plan was made under.
fn execute(repo: &Repository, plan: PrunePlan, progress: &Progress) -> Result<PruneReport> {
    let internal = plan.internal;
    let mut report = PruneReport::default();
    // Nothing to free: the index stays as it is (rewriting it would give an encrypted repository
    // new index files on every prune, a put and a delete each on an object store).
    if internal.delete.is_empty() && internal.repack.is_empty() && internal.unreferenced.is_empty() {
        progress.finish();
        return Ok(report);
    }
    let before = repo.stored_bytes(FileKind::Pack)?;

    // 1. Copy the live blobs out of the packs being repacked, verifying each on the way.
    let nothing = Index::default();
    let mut store = BlobStore::new(repo, &nothing);
    store.record_written = true;
    progress.add_total(plan.repack_bytes);
    internal.repack.par_iter().try_for_each(|pack_id| match internal.packs.get(pack_id) {
        Some(pack) => copy_live_blobs(repo, &store, pack, &internal.keep, progress),
        None => Err(Error::Refused(format!("pack {} to repack is in no index file", pack_id.short()))),
    })?;
    store.finish()?;
    let new_packs = store.written.into_inner().expect("poisoned");
    report.packs_written = new_packs.len() as u64;
    let repack_index_files = store.index_files.into_inner().expect("poisoned");

    // 2. Index files for every pack that stays, plus the new ones.
    let gone: HashSet<&Id> = internal.delete.iter().chain(&internal.repack).collect();
    let staying: Vec<IndexedPack> =
        internal.packs.values().filter(|p| !gone.contains(&p.id)).cloned().chain(new_packs).collect();
    let written: HashSet<Id> = repo.write_index_files(&staying)?.into_iter().collect();
    report.index_files_written = written.len() as u64;

    // 3. The old index files go, now that the new ones are durable.
    for id in internal.index_files.iter().chain(&repack_index_files).filter(|id| !written.contains(*id)) {
        repo.delete_file(FileKind::Index, id)?;
        report.index_files_deleted += 1;
    }

    // 4. Then the packs that no index names any more. A pack written again by this run (a
    //    repack of a pack that an interrupted prune already repacked yields the same bytes, so the
    //    same id) is named by the new index and must stay.
    let named: HashSet<Id> = staying.iter().map(|p| p.id).collect();
    let doomed = internal.delete.iter().chain(&internal.repack).chain(&internal.unreferenced);
    for pack_id in doomed.filter(|id| !named.contains(*id)) {
        repo.delete_file(FileKind::Pack, pack_id)?;
        report.packs_deleted += 1;
    }
    let after = repo.stored_bytes(FileKind::Pack)?;
    report.bytes_freed = before.saturating_sub(after);
    progress.finish();
    Ok(report)
}
