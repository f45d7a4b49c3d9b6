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
//!
//! Memory: nothing a blob is held but a bit. Live blobs are marked by their position in the
//! local sorted copy of the index ([`Index::locate`]), live bytes are counted a pack number in one
//! sequential pass over the copy, and index files are read a batch at a time, each pack summed
//! (so two files that disagree are still found). Only the packs about to go have their entries
//! read again. At 10^8 blobs the sets of ids and the entries of every pack were gigabytes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::index::IndexedPack;
use crate::format::pack::{BlobEntry, Codec};
use crate::format::snapshot::Snapshot;
use crate::format::tree::Content;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::index::Index;
use crate::repository::packer::{BlobStore, Stored};
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
    /// Packs worth repacking that were left as they are: the repack would have written more than
    /// the room there was (a full disk).
    pub repack_deferred: u64,
    #[serde(skip)]
    internal: Internal,
}

#[derive(Debug, Default)]
struct Internal {
    /// Every pack any index file names, summed (its entries are not held: at 10^8 blobs they
    /// are gigabytes).
    packs: BTreeMap<Id, PackSummary>,
    index_files: Vec<Id>,
    /// Per pack being repacked, the live blobs at the place the index picks: what a repack copies.
    keep: HashMap<Id, Vec<BlobEntry>>,
    repack: Vec<Id>,
    delete: Vec<Id>,
    unreferenced: Vec<Id>,
}

/// What the index files say about one pack: its length, how many entries and stored bytes they
/// list, and a digest of the entries (sorted by offset), so that two files naming it can be
/// compared without holding either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackSummary {
    len: u64,
    blobs: u64,
    bytes: u64,
    /// Whether an entry has codec 2 (the pack's trailer lists a dictionary).
    dictionary: bool,
    digest: [u8; 32],
}

impl PackSummary {
    fn of(pack: &IndexedPack) -> PackSummary {
        // Stable: entries with one offset and id (damage) keep their order in the file, so two
        // files listing them in other orders are found to disagree, never to agree.
        let mut sorted: Vec<&BlobEntry> = pack.blobs.iter().collect();
        sorted.sort_by_key(|blob| (blob.offset, blob.id));
        let mut encoded = Vec::with_capacity(sorted.len() * 48);
        for blob in sorted {
            blob.encode_into(&mut encoded);
        }
        PackSummary {
            len: pack.len,
            blobs: pack.blobs.len() as u64,
            bytes: pack.blobs.iter().map(|blob| blob.stored_len as u64).sum(),
            dictionary: pack.blobs.iter().any(|blob| blob.codec == Codec::ZstdDict),
            digest: *blake3::hash(&encoded).as_bytes(),
        }
    }

    /// Bytes of the pack that no entry accounts for (blobs `repair index
    /// --drop-lost-dictionaries` dropped), which count as dead: its length less the pack's 64
    /// bytes, the entries' 48 each and their stored bytes, one dictionary id if an entry has codec
    /// 2 and the seal if `sealed`; none under 1 KiB, which more dictionary ids could take
    /// (store-format/pack.md, "Layout"; store-format/prune.md, step 4).
    fn unlisted(&self, sealed: bool) -> u64 {
        let listed = (64 + self.bytes + 48 * self.blobs)
            + if self.dictionary { 32 } else { 0 }
            + if sealed { crate::crypto::OVERHEAD as u64 } else { 0 };
        match self.len.saturating_sub(listed) {
            gap if gap >= 1024 => gap,
            _ => 0,
        }
    }
}

/// Every pack the intact index files name, summed, and the packs two files disagree about
/// (another length or other entries: damage, or a file forged to hide live blobs).
#[derive(Debug, Default)]
struct Summary {
    packs: BTreeMap<Id, PackSummary>,
    files: Vec<Id>,
    disputed: BTreeSet<Id>,
}

/// Reads the index files a batch at a time, keeping only a [`PackSummary`] a pack.
fn summarize(repo: &Repository) -> Result<Summary> {
    let mut summary = Summary::default();
    crate::repository::index::open::each_file(repo, |name, file| {
        summary.files.push(name);
        file.each_pack(|pack| {
            let (id, sum) = (pack.id, PackSummary::of(&pack));
            match summary.packs.entry(id) {
                std::collections::btree_map::Entry::Vacant(free) => _ = free.insert(sum),
                std::collections::btree_map::Entry::Occupied(known) if *known.get() != sum => {
                    summary.disputed.insert(id);
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
            Ok(())
        })
    })?;
    Ok(summary)
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

/// Unindexed blobs named in a refusal's count before the rest are only counted as "more".
const UNINDEXED_KEPT: usize = 10_000;

/// The blobs the snapshots reach: a bit for each position in the index ([`Index::locate`]),
/// 12.5 MB at 10^8 blobs where a set of ids was gigabytes; and those the index lacks.
struct Live {
    bits: Vec<u64>,
    unindexed: BTreeSet<Id>,
    /// More unindexed blobs than [`UNINDEXED_KEPT`] were met.
    more_unindexed: bool,
}

impl Live {
    fn new(index: &Index) -> Live {
        Live {
            bits: vec![0; index.positions().div_ceil(64) as usize],
            unindexed: BTreeSet::new(),
            more_unindexed: false,
        }
    }

    fn contains(&self, position: u64) -> bool {
        self.bits.get((position / 64) as usize).is_some_and(|word| word >> (position % 64) & 1 == 1)
    }

    /// Marks `ids` (looked up in parallel: a tree names thousands of chunks).
    fn add(&mut self, index: &Index, ids: &[Id]) {
        let found: Vec<Option<u64>> =
            ids.par_iter().with_min_len(256).map(|id| index.locate(id).map(|(position, _)| position)).collect();
        for (id, position) in ids.iter().zip(found) {
            match position {
                Some(position) => self.bits[(position / 64) as usize] |= 1 << (position % 64),
                None if self.unindexed.len() < UNINDEXED_KEPT => _ = self.unindexed.insert(*id),
                None => self.more_unindexed |= !self.unindexed.contains(id),
            }
        }
    }
}

/// The refusal when a block of the local sorted copy failed its check: a lookup in it answers
/// "absent", so a plan made with one may count a live copy as dead.
fn damaged_copy() -> Error {
    Error::Refused(
        "the local sorted copy of the index was found damaged while planning (it has been removed); nothing was \
         deleted: run prune again"
            .to_string(),
    )
}

/// Every blob reachable from the snapshots. Fails rather than guess on an unreadable tree.
fn mark(repo: &Indexed, snapshots: &[(Id, Snapshot)]) -> Result<Live> {
    let index = repo.index();
    let mut live = Live::new(index);
    let mut walked = HashSet::new();
    let mut ids = Vec::new();
    for (id, snapshot) in snapshots {
        crate::walk::each_tree(repo, [snapshot.tree], &mut walked, |tree_id, tree| {
            ids.clear();
            ids.push(*tree_id);
            for node in &tree.nodes {
                if let Content::File { chunks } = &node.content {
                    // List blobs are live, and every chunk their chain expands to; a chain that
                    // cannot be read stops the walk, as a tree that cannot.
                    ids.extend(chunks.lists().iter().copied());
                    ids.extend(repo.chunk_list(chunks)?.iter().copied());
                }
            }
            live.add(index, &ids);
            Ok(())
        })
        .map_err(|e| {
            // A tree looked up in a damaged block of the copy looks missing: not the repository's fault.
            if index.damaged() {
                return damaged_copy();
            }
            let advice = match e {
                Error::MissingBlob(_) => REPAIR_ADVICE,
                _ => "run `cairn check`",
            };
            Error::Refused(format!("snapshot {}: {e}; nothing was deleted ({advice})", id.short()))
        })?;
    }
    Ok(live)
}

/// Prune deletes only in a whole repository: every blob the snapshots reach must be in the index,
/// in a pack that is there. Where one is not (an index file lost, a pack gone), the packs that
/// hold what the snapshots need would look unreferenced or dead, and deleting them would destroy
/// what a repair could still save; so nothing is deleted, and the error says how to recover.
fn refuse_unless_whole(index: &Index, live: &Live, counts: &LiveCounts, present: &HashMap<Id, u64>) -> Result<()> {
    if let Some(first) = live.unindexed.first() {
        let more = if live.more_unindexed { " or more" } else { "" };
        return Err(Error::Refused(format!(
            "{}{more} blobs that snapshots need are in no index file (blob {} among them); nothing was deleted: \
             {REPAIR_ADVICE}",
            live.unindexed.len(),
            first.short()
        )));
    }
    let gone: BTreeSet<Id> = (0..index.packs.len())
        .filter(|&number| counts.blobs[number] > 0)
        .map(|number| index.packs[number].0)
        .filter(|pack| !present.contains_key(pack))
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

/// Per pack number of the index, the live blobs it is picked for and their stored bytes.
struct LiveCounts {
    blobs: Vec<u64>,
    bytes: Vec<u64>,
}

/// Counts the live blobs of each pack: one pass over the index in id order, read sequentially (a
/// lookup a blob would be a random read each). A damaged copy refuses.
fn count_live(index: &Index, live: &Live) -> Result<LiveCounts> {
    let mut counts = LiveCounts { blobs: vec![0; index.packs.len()], bytes: vec![0; index.packs.len()] };
    for item in index.iter_positioned() {
        let (position, _, at) = item.map_err(|_| damaged_copy())?;
        if live.contains(position) {
            counts.blobs[at.pack as usize] += 1;
            counts.bytes[at.pack as usize] += at.stored_len as u64;
        }
    }
    Ok(counts)
}

/// The last word before anything is deleted: the place the index takes each live blob from is
/// in a pack that stays, or among the blobs a repack copies out. The plan is built to keep this;
/// this check (a pass of its own over the index) makes a mistake in it (or in what it was given)
/// stop the prune instead of costing data.
fn ensure_live_blobs_stay(index: &Index, live: &Live, internal: &Internal) -> Result<()> {
    let deleted: HashSet<&Id> = internal.delete.iter().chain(&internal.unreferenced).collect();
    let repacked: HashSet<&Id> = internal.repack.iter().collect();
    let copied: HashSet<(Id, u32)> = internal
        .repack
        .iter()
        .filter_map(|pack| internal.keep.get(pack))
        .flatten()
        .map(|blob| (blob.id, blob.offset))
        .collect();
    if !deleted.is_empty() || !repacked.is_empty() {
        for item in index.iter_positioned() {
            let (position, id, at) = item.map_err(|_| damaged_copy())?;
            if !live.contains(position) {
                continue;
            }
            let pack = index.pack_id(&at);
            if deleted.contains(&pack) || (repacked.contains(&pack) && !copied.contains(&(id, at.offset))) {
                return Err(Error::Refused(format!(
                    "blob {} is live in pack {}, which the plan would delete; nothing was deleted: run `cairn check`",
                    id.short(),
                    pack.short()
                )));
            }
        }
    }
    if index.damaged() {
        return Err(damaged_copy());
    }
    Ok(())
}

/// One pass over the index files for the packs about to go (deleted or repacked): collects what a
/// repack copies (live blobs where the index picks them), and the live blobs that a pack about to
/// go holds a copy of while the index picks another: before such a copy goes, the picked one is
/// read and verified (see [`verify_picked_copies`]).
fn doomed_entries(repo: &Indexed, live: &Live, internal: &mut Internal) -> Result<Vec<Id>> {
    let index = repo.index();
    let repacked: HashSet<Id> = internal.repack.iter().copied().collect();
    let doomed: HashSet<Id> = internal.delete.iter().copied().chain(repacked.iter().copied()).collect();
    let mut done = HashSet::new();
    let mut picked_elsewhere = Vec::new();
    let mut changed = false;
    let (packs, keep) = (&internal.packs, &mut internal.keep);
    crate::repository::index::open::each_file(repo, |_, file| {
        file.each_pack(|pack| {
            if !doomed.contains(&pack.id) {
                return Ok(());
            }
            // Every listing of the pack must be the one the plan summed: a file written since
            // (one listing the pack without a live blob the index picks elsewhere) must not
            // decide which copies are verified before it goes.
            changed |= packs.get(&pack.id) != Some(&PackSummary::of(&pack));
            if !done.insert(pack.id) {
                return Ok(());
            }
            let found: Vec<Option<(u64, crate::repository::index::Location)>> =
                pack.blobs.par_iter().with_min_len(256).map(|blob| index.locate(&blob.id)).collect();
            for (blob, found) in pack.blobs.iter().zip(found) {
                let Some((_, at)) = found.filter(|(position, _)| live.contains(*position)) else { continue };
                if index.pack_id(&at) == pack.id && at.offset == blob.offset {
                    if repacked.contains(&pack.id) {
                        keep.entry(pack.id).or_default().push(*blob);
                    }
                } else {
                    picked_elsewhere.push(blob.id);
                }
            }
            Ok(())
        })
    })?;
    if let Some(first) = repo.take_damage().first() {
        return Err(Error::Refused(format!("{first}: refusing to prune a repository with damaged files")));
    }
    if changed {
        return Err(Error::Refused(
            "the index files changed while pruning (a pack about to go is listed otherwise than when the plan \
             began); nothing was deleted: run `cairn check`, then prune again"
                .to_string(),
        ));
    }
    if done.len() != doomed.len() {
        return Err(Error::Refused(
            "an index file naming a pack about to go could not be read again; nothing was deleted: run prune again"
                .to_string(),
        ));
    }
    picked_elsewhere.sort_unstable();
    picked_elsewhere.dedup();
    Ok(picked_elsewhere)
}

/// A pack about to be deleted or repacked may hold copies of live blobs that are dead only because
/// the index picks another copy. Before such a copy goes, the picked one is read and verified: a
/// damaged or forged index file (one a host with create-only rights could write, sorting first and
/// placing real blob ids in a pack of garbage) would otherwise make prune delete the only real
/// copy. Returns how many copies were verified; an error (nothing deleted) if one fails.
fn verify_picked_copies(repo: &Indexed, picked_elsewhere: &[Id]) -> Result<u64> {
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

/// What to do when blobs the snapshots need are in no index file.
const REPAIR_ADVICE: &str = "an index file may be lost: run `cairn repair index`, which rebuilds the index from \
    the packs, then `cairn check` (if they are in no pack either, check names the files lost: forget the snapshots \
    that need them)";

pub fn plan(repo: &Repository, max_unused_percent: f64) -> Result<PrunePlan> {
    plan_leaving(repo, max_unused_percent, None, &HashSet::new())
}

/// What repacking `packs` packs that hold `blobs` live blobs of `bytes` stored bytes writes: the
/// blobs as stored, a pack trailer entry and a repack index entry each (48 bytes, sealed 40 more:
/// 128 counted), and a pack's header each. Prune plans the room of each repack with it, and
/// forget weighs a plan's repacks against the free space with it.
pub fn repack_writes(bytes: u64, blobs: u64, packs: u64) -> u64 {
    bytes + blobs * 128 + packs * 4096
}

/// [`plan`] as if the snapshots `leaving` were gone: the plan of a prune that follows a forget of
/// them, made (and the repository found whole) before the forget deletes anything.
///
/// `room`: the bytes the repacking may write at most (a full disk, [`Repository::make_room`]):
/// the packs that would take more are left as they are, counted in `repack_deferred`.
pub fn plan_leaving(
    repo: &Repository,
    max_unused_percent: f64,
    room: Option<u64>,
    leaving: &HashSet<Id>,
) -> Result<PrunePlan> {
    // Every damaged file must stop the prune: a skipped manifest would look like a snapshot that
    // does not exist, and the data only it needs would be deleted.
    let mut snapshots = repo.snapshots()?;
    snapshots.retain(|(id, _)| !leaving.contains(id));
    let loaded = Indexed::load(repo)?;
    let index = loaded.index();
    let summary = summarize(repo)?;
    if let Some(first) = repo.take_damage().first() {
        return Err(Error::Refused(format!("{first}: refusing to prune a repository with damaged files")));
    }
    // A pack's entries are what every index file lists for it; files that disagree are damage (or
    // a file forged to hide live blobs): deleting by either list could destroy what the other holds.
    if let Some(first) = summary.disputed.first() {
        return Err(Error::Refused(format!(
            "index files disagree about what {} packs hold (pack {} among them); nothing was deleted: run `cairn \
             repair index`, which reads those packs' own trailers",
            summary.disputed.len(),
            first.short()
        )));
    }
    let mut plan = PrunePlan { snapshots: snapshots.len() as u64, ..Default::default() };
    let live = mark(&loaded, &snapshots)?;
    // A test changes the repository here (`CAIRN_PRUNE_PAUSE`): between the plan's first
    // reading of the index files and its second.
    crate::knobs::pause("CAIRN_PRUNE_PAUSE", "marked");
    // A lookup in a damaged block answers "absent": a blob would look unindexed, or dead.
    if index.damaged() {
        return Err(damaged_copy());
    }
    let present = repo.list_packs()?.0;
    let counts = count_live(index, &live)?;
    refuse_unless_whole(index, &live, &counts, &present)?;
    let mut internal = Internal { index_files: summary.files, packs: summary.packs, ..Default::default() };
    // A blob is live in exactly one place: where the index finds it. Copies elsewhere are dead.
    let mut candidates: Vec<(f64, Id, u64, u64)> = Vec::new();
    for (pack_id, pack) in &internal.packs {
        let number = index.number_of(pack_id).map(|n| n as usize);
        let (blobs, live_bytes) = number.map_or((0, 0), |n| (counts.blobs[n], counts.bytes[n]));
        // The index (the sorted copy) and the index files read since must agree.
        if number.is_none() || blobs > pack.blobs || live_bytes > pack.bytes {
            return Err(Error::Refused(format!(
                "pack {} is not as the index loaded it (an index file changed while prune read it); nothing was \
                 deleted: run prune again",
                pack_id.short()
            )));
        }
        let dead_bytes = pack.bytes - live_bytes + pack.unlisted(repo.keys().is_some());
        plan.live_blobs += blobs;
        plan.live_bytes += live_bytes;
        plan.dead_bytes += dead_bytes;
        if live_bytes == 0 && blobs == 0 {
            internal.delete.push(*pack_id);
            plan.bytes_freed += pack.len;
        } else if dead_bytes > 0 {
            let writes = repack_writes(live_bytes, blobs, 1);
            candidates.push((dead_bytes as f64 / (live_bytes + dead_bytes) as f64, *pack_id, dead_bytes, writes));
        }
    }
    // Repack the most wasteful packs until what stays dead is within the allowance.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let allowance = (plan.live_bytes as f64 * max_unused_percent / 100.0) as u64;
    let mut remaining: u64 = candidates.iter().map(|c| c.2).sum();
    let mut room = room;
    for (_, pack_id, dead, writes) in candidates {
        if remaining <= allowance {
            break;
        }
        if let Some(left) = room.as_mut() {
            if writes > *left {
                plan.repack_deferred += 1;
                continue;
            }
            *left -= writes;
        }
        remaining -= dead;
        internal.repack.push(pack_id);
        plan.bytes_freed += dead;
    }
    let picked_elsewhere = match internal.delete.is_empty() && internal.repack.is_empty() {
        true => Vec::new(),
        false => doomed_entries(&loaded, &live, &mut internal)?,
    };
    for pack_id in &internal.repack {
        for blob in internal.keep.get(pack_id).into_iter().flatten() {
            plan.repack_blobs += 1;
            plan.repack_bytes += blob.stored_len as u64;
        }
    }
    plan.copies_verified = verify_picked_copies(&loaded, &picked_elsewhere)?;
    for (id, len) in present {
        if !internal.packs.contains_key(&id) {
            if index.number_of(&id).is_some() {
                return Err(damaged_copy());
            }
            internal.unreferenced.push(id);
            plan.bytes_freed += len;
        }
    }
    internal.unreferenced.sort();
    ensure_live_blobs_stay(index, &live, &internal)?;
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
    (pack_id, pack): (&Id, &PackSummary),
    keep: &HashMap<Id, Vec<BlobEntry>>,
    progress: &Progress,
) -> Result<()> {
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
            let dictionary = match blob.codec {
                Codec::ZstdDict => repo.stored_dictionary(&blob.id, stored).map_err(damaged)?,
                _ => None,
            };
            store.store_verbatim(Stored::of(blob, stored, dictionary))?;
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

/// A prune as the audited run `prune` (store-format/audit.md): [`plan_leaving`], then `planned`
/// given the plan before anything is deleted (an error there stops the prune), the plan carried
/// out, then the audit log compacted, keeping every record younger than `keep_audit` and of the
/// older ones those `status` reads. The caller holds the exclusive lock. What `cairn prune` runs,
/// and what an embedder calls.
///
/// A forget with a prune removes the snapshots `leaving` in `planned`: only once the plan found
/// the repository whole (a damaged or lost file refuses the prune, and with it the forget), and
/// under the same lock, so the plan is the one for the snapshots that stay.
pub fn prune(
    repo: &Repository,
    max_unused_percent: f64,
    room: Option<u64>,
    keep_audit: std::time::Duration,
    progress: &Progress,
    leaving: &HashSet<Id>,
    planned: impl FnOnce(&PrunePlan) -> Result<()>,
) -> Audited<Pruned> {
    Run::start("prune", "").around(repo, |record| {
        let plan = self::plan_leaving(repo, max_unused_percent, room, leaving)?;
        planned(&plan)?;
        // A killed command's half-written file is dead bytes too (a snapshot removes them as
        // well, but a copy that only syncs and prunes never runs one).
        repo.backend().remove_stale_temp_files();
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

/// The entries of every pack that stays, read again from the index files, each pack as the plan
/// summed it: a file changed or unreadable since stops the prune before the index is rewritten.
fn staying_packs(repo: &Repository, internal: &Internal, gone: &HashSet<&Id>) -> Result<BTreeMap<Id, IndexedPack>> {
    let mut staying = BTreeMap::new();
    crate::repository::index::open::each_file(repo, |_, file| {
        file.each_pack(|mut pack| {
            // Packs the plan did not see are the repack's own, written in step 1.
            let planned = internal.packs.contains_key(&pack.id);
            if planned && !gone.contains(&pack.id) && !staying.contains_key(&pack.id) {
                pack.blobs.sort_unstable_by_key(|b| (b.offset, b.id));
                staying.insert(pack.id, pack);
            }
            Ok(())
        })
    })?;
    let changed = |id: &Id, pack: &IndexedPack| internal.packs.get(id) != Some(&PackSummary::of(pack));
    let expected = internal.packs.keys().filter(|id| !gone.contains(id)).count();
    if !repo.take_damage().is_empty() || staying.len() != expected || staying.iter().any(|(id, p)| changed(id, p)) {
        return Err(Error::Refused(
            "the index files changed or could not be read again while pruning; nothing was deleted: run prune again"
                .to_string(),
        ));
    }
    Ok(staying)
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
        Some(pack) => copy_live_blobs(repo, &store, (pack_id, pack), &internal.keep, progress),
        None => Err(Error::Refused(format!("pack {} to repack is in no index file", pack_id.short()))),
    })?;
    store.finish()?;
    let new_packs = store.written.into_inner().expect("poisoned");
    report.packs_written = new_packs.len() as u64;
    let repack_index_files = store.index_files.into_inner().expect("poisoned");

    // 2. Index files for every pack that stays, plus the new ones.
    let gone: HashSet<&Id> = internal.delete.iter().chain(&internal.repack).collect();
    let staying: Vec<IndexedPack> = staying_packs(repo, &internal, &gone)?.into_values().chain(new_packs).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_no_entry_accounts_for_are_unlisted() {
        let pack = |len, dictionary| PackSummary { len, blobs: 3, bytes: 1000, dictionary, digest: [0; 32] };
        // 64 + 1000 + 3 x 48, plus a dictionary id and the seal where they apply.
        for (len, dictionary, sealed) in
            [(1208, false, false), (1248, false, true), (1240, true, false), (1280, true, true)]
        {
            assert_eq!(pack(len, dictionary).unlisted(sealed), 0, "{len}");
            assert_eq!(pack(len + 32 * 31, dictionary).unlisted(sealed), 0, "more dictionaries: {len}");
            assert_eq!(pack(len + 5000, dictionary).unlisted(sealed), 5000, "{len}");
            assert_eq!(pack(len - 100, dictionary).unlisted(sealed), 0, "{len}");
        }
    }
}
