//! `cairn sync`: copies snapshots, and exactly the packs and index entries they need, from one
//! repository to another, usually an offsite object store. Packs are copied whole and verbatim
//! (their names are the hash of their bytes, so a copy is the same pack); what the destination
//! already holds is not sent again. What is written, and in which order: store-format/sync.md.
//!
//! The order is the commit order of a snapshot: packs, then index files naming them, then the
//! manifests. So the destination never lists a snapshot before all its data is there, and a sync
//! killed anywhere leaves only packs that no index names yet; the next run finds them by listing
//! `packs/` and indexes them instead of uploading them again.
//!
//! Sync never deletes in the destination: everything it writes there is a create-only put, so it
//! works with credentials that can only create objects, and a compromised source host cannot use
//! it to destroy the offsite history. Retention there belongs to a trusted side.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use rayon::prelude::*;
use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::check::verify_blob;
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::index::{IndexFile, IndexedPack};
use crate::format::pack::BlobKind;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{ChunkList, Content, Tree};
use crate::id::Id;
use crate::progress::Progress;
use crate::prune::Reachable;
use crate::repository::index::Index;
use crate::repository::lock::{Lock, LockKind};
use crate::repository::{FileKind, Indexed, Location, NewKeys, Passphrase, Repository};
use crate::walk::{depth_first, Open, Step, Visitor};

/// Packs named per index file that sync writes.
const PACKS_PER_INDEX_FILE: usize = 256;

pub struct SyncOptions {
    /// Copies in flight at once.
    pub parallel: usize,
    /// Attempts per object before giving up on it (each attempt reads and verifies again).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// How long to wait for the destination's lock.
    pub lock_wait: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions { parallel: 4, attempts: 4, backoff: Duration::from_secs(1), lock_wait: Duration::ZERO }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    /// Snapshots selected in the source.
    pub snapshots: u64,
    /// Of those, already in the destination.
    pub snapshots_present: u64,
    /// Copied by this run (ids).
    pub snapshots_copied: Vec<String>,
    /// Not copied because data they need could not be read or sent (ids).
    pub snapshots_failed: Vec<String>,
    /// Blobs the copied snapshots reach that the destination's index lacked.
    pub blobs_needed: u64,
    pub packs_copied: u64,
    /// Packs found complete in the destination (from an interrupted run) and indexed.
    pub packs_present: u64,
    pub bytes_copied: u64,
    pub index_files_written: u64,
    /// Compression dictionary files the destination lacked, copied.
    pub dictionaries_copied: u64,
    /// Attempts repeated after a failure.
    pub retries: u64,
    pub errors: Vec<String>,
}

/// What a sync found at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// A repository with this one's key material: packs and manifests copy as they are.
    SameKeys,
    /// A repository with other key material (`one_encrypted`: one is encrypted and the other
    /// not; else two master keys): every blob is re-encoded for it.
    OtherKeys { one_encrypted: bool },
    /// Created by this sync with the source's parameters; `encrypted` when a passphrase was
    /// given (an encrypted source's master key is shared, wrapped under that passphrase).
    Created { encrypted: bool },
}

/// Opens the repository at `location` (an encrypted one with `passphrase`), or creates it sharing
/// the source's parameters and, if the source is encrypted, its master key (wrapped under
/// `passphrase`), so that sealed packs and manifests copy verbatim. Encrypted whenever there is a
/// passphrase: an offsite copy above all; a plain source is then re-encoded. An encrypted source
/// with no passphrase for its destination is an error, with nothing created.
pub fn open_or_create(
    source: &Repository,
    location: &Location,
    passphrase: Option<&str>,
) -> Result<(Repository, Destination)> {
    let given = passphrase.map_or(Passphrase::None, Passphrase::Given);
    let found = |dest: Repository| {
        let found = match shares_keys(source, &dest) {
            true => Destination::SameKeys,
            false => Destination::OtherKeys { one_encrypted: source.keys().is_some() != dest.keys().is_some() },
        };
        (dest, found)
    };
    match Repository::open(location, given) {
        Err(Error::NotARepository(_)) => {}
        Ok(dest) => return Ok(found(dest)),
        Err(e) => return Err(e),
    }
    let mut config = crate::format::config::Config::new_random();
    config.chunker = source.config().chunker;
    config.compression_level = source.config().compression_level;
    config.pack_target_size = source.config().pack_target_size;
    let keys = match (source.keys(), passphrase) {
        (Some(keys), Some(passphrase)) => {
            NewKeys::Shared { master: keys.master.clone(), passphrase: passphrase.to_string() }
        }
        (Some(_), None) => {
            return Err(Error::Invalid(format!(
                "{location} would be encrypted like this repository: give its password"
            )))
        }
        (None, Some(passphrase)) => NewKeys::New { passphrase: passphrase.to_string() },
        (None, None) => NewKeys::None,
    };
    match Repository::create(location, config, keys) {
        Ok(dest) => Ok((dest, Destination::Created { encrypted: passphrase.is_some() })),
        // Another sync (or init) created it meanwhile: it is the destination, as if found.
        Err(e) => match Repository::open(location, given) {
            Ok(dest) => Ok(found(dest)),
            Err(_) => Err(e),
        },
    }
}

/// What [`sync`] did.
pub struct Synced {
    /// The destination, open.
    pub dest: Repository,
    pub report: SyncReport,
    /// The requests the destination's backend sent (an object store's).
    pub requests: Option<crate::backend::RequestCounts>,
}

/// What a [`sync`] copies, and where to.
pub struct Request<'a> {
    /// The destination repository.
    pub to: &'a Location,
    /// Its passphrase (none: it is, or is created, plain).
    pub passphrase: Option<&'a str>,
    /// The sources whose snapshots are copied (all if empty).
    pub sources: &'a [String],
    pub options: SyncOptions,
}

/// A sync to the repository at `to` as the audited run `sync` (store-format/audit.md): opens or
/// creates it ([`open_or_create`], whose answer goes to `found`), copies the snapshots of
/// `sources` (all if empty) that it lacks, and writes the record here; a destination that
/// received anything gets a copy of it too, marked `received_from` (store-format/sync.md). Ok
/// when every selected snapshot is there, incomplete when some could not be copied. The caller
/// holds a shared lock on `source`; the destination's is taken here, with puts alone. What
/// `cairn sync` runs, and what an embedder calls.
pub fn sync(
    source: &Repository,
    request: &Request,
    progress: &Progress,
    found: impl FnOnce(&Repository, Destination),
) -> Audited<Synced> {
    let mut audited = run(request.to, request.sources).around(source, |record| {
        let mut report = SyncReport::default();
        let mut dest = None;
        let result = copy_missing(source, request, progress, found, &mut report, &mut dest);
        let requests = dest.as_ref().and_then(|d: &Repository| d.backend().requests());
        record.files = report.snapshots_copied.len() as u64;
        record.bytes = report.bytes_copied;
        record.errors = report.errors.clone();
        // Beside the destination and sources the run names from its start.
        record.details["report"] = serde_json::json!(report);
        record.details["requests"] = serde_json::json!(requests);
        result?;
        let outcome = match report.snapshots_failed.is_empty() {
            true => Outcome::Ok,
            false => Outcome::Incomplete,
        };
        let dest = dest.expect("opened when the copy succeeded");
        Ok((Synced { dest, report, requests }, outcome))
    });
    // An up-to-date sync writes nothing there (a dictionary copied back is no new data).
    if let Ok(synced) = &audited.result {
        if synced.report.packs_copied + synced.report.snapshots_copied.len() as u64 > 0 {
            let mut copy = audited.record.clone();
            copy.details["received_from"] = serde_json::json!(source.backend().location());
            crate::audit::write_copy(&mut audited.audit_error, &synced.dest, &copy);
        }
    }
    audited
}

/// A sync's run, which names its destination from the start: a sync that is killed is then a
/// failed sync to it.
fn run(to: &Location, sources: &[String]) -> Run {
    let mut run = Run::start("sync", &sources.join(" "));
    run.record.details = serde_json::json!({ "to": to.to_string(), "sources": sources });
    run
}

/// Records a sync to `to` that could not begin (its lock was refused, say) as failed with `error`.
pub fn failed_before(source: &Repository, to: &Location, sources: &[String], error: &str) -> Result<()> {
    let mut run = run(to, sources);
    run.record.errors.push(error.to_string());
    run.finish(source, Outcome::Failed)
}

/// The work of [`sync`]; `dest` is set once the destination is open. With nothing missing, the
/// destination sees only the reads of its config (and key file) and the listings of its keys,
/// snapshots and (sharing the source's keys) dictionaries; it is written to only if it lacks a
/// dictionary the source has.
fn copy_missing(
    source: &Repository,
    request: &Request,
    progress: &Progress,
    found: impl FnOnce(&Repository, Destination),
    report: &mut SyncReport,
    dest: &mut Option<Repository>,
) -> Result<()> {
    let Request { to, passphrase, sources, ref options } = *request;
    let (opened, destination) = open_or_create(source, to, passphrase)?;
    found(&opened, destination);
    let dest = dest.insert(opened);
    // A plain source's new encrypted destination has other keys too.
    let shared = shares_keys(source, dest);
    let missing = match shared {
        true => missing_snapshots(source, dest, sources, report)?,
        false => missing_by_identity(source, dest, sources, report)?,
    };
    if missing.is_empty() {
        // A dictionary lost there is still copied back: the snapshots there need it. The lock
        // is taken only once one is read and checked, ready to go.
        if shared {
            let lacking = lacking_dictionaries(source, dest, options, report)?;
            let mut held = None;
            let lock = || dest.lock_create_only(LockKind::Shared, "sync", options.lock_wait);
            copy_dictionaries(source, dest, lacking, options, report, || lock().map(|l| held = Some(l)))?;
            // Released (a release marker put) only now, after the last put.
            drop(held);
        }
        return Ok(());
    }
    // Taken and released with puts alone: sync never deletes in the destination, so that it
    // works with credentials that may only create objects there (store-format/locks.md).
    let held = dest.lock_create_only(LockKind::Shared, "sync", options.lock_wait)?;
    dest.backend().remove_stale_temp_files(); // a killed sync's: no snapshot ever runs there
    match shared {
        true => copy(source, dest, &held, missing, options, progress, report),
        false => copy_reencoded(source, dest, &held, missing, progress, report),
    }
}

/// The snapshots of `source` (all, or those whose source key is in `sources`) that `dest` does
/// not list. Only lists the destination's snapshots (an up-to-date sync then lists its
/// dictionaries too, [`copy_missing`]).
pub fn missing_snapshots(
    source: &Repository,
    dest: &Repository,
    sources: &[String],
    report: &mut SyncReport,
) -> Result<Vec<(Id, Snapshot)>> {
    let present: HashSet<Id> = dest.list_files(FileKind::Snapshot)?.into_iter().map(|(id, _)| id).collect();
    select_missing(source, sources, report, |id, _| present.contains(id))
}

/// The source's snapshots (all, or those of `sources`) that `present` does not claim, counting
/// both in the report.
fn select_missing(
    source: &Repository,
    sources: &[String],
    report: &mut SyncReport,
    present: impl Fn(&Id, &Snapshot) -> bool,
) -> Result<Vec<(Id, Snapshot)>> {
    let selected: Vec<(Id, Snapshot)> = source
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| sources.is_empty() || sources.contains(&s.source_key()))
        .collect();
    report.snapshots = selected.len() as u64;
    let missing: Vec<(Id, Snapshot)> = selected.into_iter().filter(|(id, s)| !present(id, s)).collect();
    report.snapshots_present = report.snapshots - missing.len() as u64;
    Ok(missing)
}

/// Copies `missing` (from [`missing_snapshots`]) and everything they need. The caller holds a
/// shared lock on both repositories, `held` the destination's: index files and manifests are
/// written only while it is surely held. Snapshots whose data cannot all be copied are left out
/// and named in the report; the others are still copied.
pub fn copy(
    source: &Repository,
    dest: &Repository,
    held: &Lock,
    missing: Vec<(Id, Snapshot)>,
    options: &SyncOptions,
    progress: &Progress,
    report: &mut SyncReport,
) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    // The source's index, and each pack's entries (what the destination's index will say): all
    // that the index files list for it (a pack they disagree about is verified blob by blob before
    // it is sent, like every other, so a listed blob it lacks fails its snapshots, by name).
    let source_packs = source.indexed_packs()?.packs;
    // After the index is read: a pack it names was written after its dictionary, which this
    // listing then finds.
    let lacking = lacking_dictionaries(source, dest, options, report)?;
    copy_dictionaries(source, dest, lacking, options, report, || Ok(()))?;
    // In pack id order, so every sync picks the same copy of a blob stored twice.
    let source = Indexed::new(source, Index::build([IndexFile { packs: source_packs.values().cloned().collect() }]));
    let source_index = source.index();
    let (reachable, mut missing) = reach(&source, missing, report);
    let dest_index = dest.load_index()?;
    let needed: HashSet<Id> = reachable.into_iter().filter(|id| !dest_index.contains(id)).collect();
    report.blobs_needed = needed.len() as u64;

    // Blobs the source cannot provide make the snapshots that need them fail, not the sync.
    let mut unavailable: HashSet<Id> = HashSet::new();
    let mut packs: Vec<Id> = Vec::new();
    let mut seen = HashSet::new();
    for id in &needed {
        match source_index.get(id) {
            Some(location) => {
                let pack = source_index.pack_id(&location);
                if seen.insert(pack) {
                    packs.push(pack);
                }
            }
            None => {
                unavailable.insert(*id);
            }
        }
    }
    packs.sort();
    if !unavailable.is_empty() {
        report.errors.push(format!("{} blobs the snapshots need are not in the source's index", unavailable.len()));
    }

    let (in_dest, _) = dest.list_packs()?;
    let total: u64 = packs.iter().map(|p| source_packs[p].len).sum();
    progress.add_total(total);
    // Packs that could not be copied, with the error; `None` for those not attempted.
    let failed: Mutex<Vec<(Id, Option<Error>)>> = Mutex::new(Vec::new());
    let copied = Mutex::new(Vec::new());
    let retries = AtomicU64::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.parallel.max(1))
        .build()
        .map_err(|e| Error::Resources { what: "sync threads", reason: e.to_string() })?;
    // Once a pack has failed for want of the destination (not for damage in the source), the
    // others would only wait through the same retries: they are not attempted.
    let unreachable = AtomicBool::new(false);
    pool.install(|| {
        packs.par_iter().for_each(|pack_id| {
            let pack = &source_packs[pack_id];
            progress.add_bytes(pack.len);
            match in_dest.get(pack_id) {
                Some(len) if *len == pack.len => {
                    copied.lock().expect("poisoned").push((pack.clone(), false));
                    return;
                }
                // Replacing it would take a delete: it is for the trusted side to remove.
                Some(len) => {
                    failed.lock().expect("poisoned").push((*pack_id, Some(damaged_in_dest(dest, pack, *len))));
                    return;
                }
                None => {}
            }
            if unreachable.load(Relaxed) {
                failed.lock().expect("poisoned").push((*pack_id, None));
                return;
            }
            match with_retries(options, &retries, || copy_pack(&source, dest, pack)) {
                Ok(sent) => copied.lock().expect("poisoned").push((pack.clone(), sent)),
                Err(e) => {
                    if !is_source_damage(&e) {
                        unreachable.store(true, Relaxed);
                    }
                    failed.lock().expect("poisoned").push((*pack_id, Some(e)));
                }
            }
        })
    });
    report.retries = retries.into_inner();
    let failed = failed.into_inner().expect("poisoned");
    let skipped = failed.iter().filter(|(_, error)| error.is_none()).count();
    if skipped > 0 {
        report.errors.push(format!("{skipped} packs were not attempted after the destination failed"));
    }
    for (pack_id, error) in failed {
        if let Some(error) = error {
            report.errors.push(format!("pack {}: {error}", pack_id.short()));
        }
        unavailable.extend(source_packs[&pack_id].blobs.iter().map(|b| b.id).filter(|id| needed.contains(id)));
    }

    // Index the packs that arrived, then publish the snapshots whose data is all there.
    let copied = copied.into_inner().expect("poisoned");
    for (pack, sent) in &copied {
        if *sent {
            report.packs_copied += 1;
            report.bytes_copied += pack.len;
        } else {
            report.packs_present += 1;
        }
    }
    let mut indexed: Vec<IndexedPack> = copied.into_iter().map(|(pack, _)| pack).collect();
    indexed.sort_by_key(|pack| pack.id);
    for chunk in indexed.chunks(PACKS_PER_INDEX_FILE) {
        held.check_held()?;
        let bytes = dest.seal_file(IndexFile { packs: chunk.to_vec() }.encode());
        let id = Id::of(&bytes);
        with_retries(options, &AtomicU64::new(0), || dest.put_file_raw(FileKind::Index, &id, &bytes))?;
        report.index_files_written += 1;
    }
    if !unavailable.is_empty() {
        missing.retain(|(id, snapshot)| {
            let mut own = Reachable::default();
            let complete = own.add_tree(&source, snapshot.tree).is_ok()
                && own.blobs.iter().all(|blob| !unavailable.contains(blob));
            if !complete {
                report.snapshots_failed.push(id.to_hex());
            }
            complete
        });
    }
    for (id, _) in &missing {
        let bytes = source.read_file_raw(FileKind::Snapshot, id)?;
        if Id::of(&bytes) != *id {
            let file = source.describe(&FileKind::Snapshot.name(id));
            report.errors.push(format!("{file}: content does not match its name"));
            report.snapshots_failed.push(id.to_hex());
            continue;
        }
        held.check_held()?;
        with_retries(options, &AtomicU64::new(0), || dest.put_file_raw(FileKind::Snapshot, id, &bytes))?;
        report.snapshots_copied.push(id.to_hex());
    }
    progress.finish();
    Ok(())
}

/// Every compression dictionary in `lacking` (from [`lacking_dictionaries`]), byte for byte,
/// before any pack: a blob compressed with one names it (store-format/dictionary.md). There are
/// few, and small. `before_first_put` runs once, before the first put (only when a dictionary is
/// read and checked); its error stops the copy. One that cannot be read, or does not match its
/// name, is reported and left behind: the blobs that name it fail verification in
/// [`copy_pack`], and with them only the snapshots that need them.
fn copy_dictionaries(
    source: &Repository,
    dest: &Repository,
    lacking: Vec<Id>,
    options: &SyncOptions,
    report: &mut SyncReport,
    before_first_put: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let retries = AtomicU64::new(0);
    let mut before_first_put = Some(before_first_put);
    for id in lacking {
        let read = with_retries(options, &retries, || {
            let bytes = source.read_file_raw(FileKind::Dictionary, &id)?;
            if Id::of(&bytes) != id {
                let file = source.describe(&FileKind::Dictionary.name(&id));
                return Err(Error::corrupt(file, "content does not match its name: the file is damaged"));
            }
            Ok(bytes)
        });
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) => {
                report.errors.push(format!("dictionary {}: {e}", id.short()));
                continue;
            }
        };
        if let Some(first) = before_first_put.take() {
            first()?;
        }
        match with_retries(options, &retries, || dest.put_file_raw(FileKind::Dictionary, &id, &bytes)) {
            Ok(_) => report.dictionaries_copied += 1,
            Err(e) => report.errors.push(format!("dictionary {}: {e}", id.short())),
        }
    }
    report.retries += retries.into_inner();
    Ok(())
}

/// The compression dictionary files of `source` that `dest` does not list.
fn lacking_dictionaries(
    source: &Repository,
    dest: &Repository,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<Vec<Id>> {
    let retries = AtomicU64::new(0);
    let present: HashSet<Id> = with_retries(options, &retries, || dest.list_files(FileKind::Dictionary))?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let listed = with_retries(options, &retries, || source.list_files(FileKind::Dictionary))?;
    report.retries += retries.into_inner();
    Ok(listed.into_iter().map(|(id, _)| id).filter(|id| !present.contains(id)).collect())
}

/// Every blob the snapshots reach. A snapshot whose trees cannot be read is dropped (and named
/// in the report); the walk of the others is then redone without it, so a tree that failed
/// half-way can never count as walked.
fn reach(
    source: &Indexed,
    snapshots: Vec<(Id, Snapshot)>,
    report: &mut SyncReport,
) -> (HashSet<Id>, Vec<(Id, Snapshot)>) {
    let mut all = Reachable::default();
    if snapshots.iter().all(|(_, s)| all.add_tree(source, s.tree).is_ok()) {
        return (all.blobs, snapshots);
    }
    let mut blobs = HashSet::new();
    let mut good = Vec::new();
    for (id, snapshot) in snapshots {
        let mut own = Reachable::default();
        match own.add_tree(source, snapshot.tree) {
            Ok(()) => {
                blobs.extend(own.blobs);
                good.push((id, snapshot));
            }
            Err(e) => {
                report.errors.push(format!("snapshot {}: {e}", id.short()));
                report.snapshots_failed.push(id.to_hex());
            }
        }
    }
    (blobs, good)
}

/// A pack whose name the destination lists with another length than the source's copy: damage,
/// or a write that was not cairn's. A create-only put never replaces it, and sync never deletes.
fn damaged_in_dest(dest: &Repository, pack: &IndexedPack, len: u64) -> Error {
    Error::corrupt(
        dest.describe(&FileKind::Pack.name(&pack.id)),
        format!(
            "{len} bytes where the source's index records {}: the destination's copy is damaged, and sync \
             never deletes; on the trusted side, `cairn prune` (no index names it) or a delete removes it, and the \
             next sync sends it again",
            pack.len
        ),
    )
}

/// Reads one pack from the source, checks it byte for byte (its name is its hash) and blob by
/// blob, and puts it. Returns whether it was sent.
fn copy_pack(source: &Repository, dest: &Repository, pack: &IndexedPack) -> Result<bool> {
    let key = FileKind::Pack.name(&pack.id);
    let bytes = source.backend().get(&key)?;
    let what = source.describe(&key);
    if bytes.len() as u64 != pack.len || Id::of(&bytes) != pack.id {
        return Err(Error::corrupt(what, "content does not match its name: the source pack is damaged"));
    }
    for blob in &pack.blobs {
        verify_blob(source, &pack.id, &bytes, blob).map_err(|reason| Error::BadBlob {
            id: blob.id,
            pack: pack.id,
            reason,
        })?;
    }
    // A put that finds the pack there already (another sync got it there first) is as good.
    dest.backend().put_vec(&key, bytes)?;
    Ok(true)
}

/// Runs `attempt` until it succeeds or `options.attempts` are used up, waiting with exponential
/// backoff between attempts. Only for idempotent work: every key sync writes is content-named.
fn with_retries<T>(options: &SyncOptions, retries: &AtomicU64, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut wait = options.backoff;
    let mut tries = 1;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if tries >= options.attempts.max(1) || !is_transient(&e) => return Err(e),
            Err(_) => {
                retries.fetch_add(1, Relaxed);
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
                tries += 1;
            }
        }
    }
}

/// Errors that say the source's copy is bad (so other packs may still go through).
fn is_source_damage(error: &Error) -> bool {
    matches!(error, Error::Corrupt { .. } | Error::BadBlob { .. })
        || matches!(error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Errors worth another attempt: I/O trouble, not damage nor a refusal of rights.
fn is_transient(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. }
        if !matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied))
}

/// Whether two repositories can exchange sealed data as it is: both plain, or the same master key
/// (then blob ids, packs and manifests mean the same in both).
pub fn shares_keys(a: &Repository, b: &Repository) -> bool {
    match (a.keys(), b.keys()) {
        (None, None) => true,
        (Some(a), Some(b)) => a.master.to_bytes() == b.master.to_bytes(),
        _ => false,
    }
}

/// A snapshot's identity across repositories whose manifests differ (re-encoded copies): its
/// start time to the nanosecond, host and source.
fn identity(snapshot: &Snapshot) -> (i64, u32, String, String) {
    (snapshot.time_sec, snapshot.time_nsec, snapshot.hostname.clone(), snapshot.source_key())
}

/// [`missing_snapshots`] for a destination with other key material: a manifest there has another
/// id, so snapshots are matched by [`identity`], which reads every manifest of the destination.
pub fn missing_by_identity(
    source: &Repository,
    dest: &Repository,
    sources: &[String],
    report: &mut SyncReport,
) -> Result<Vec<(Id, Snapshot)>> {
    let present: HashSet<_> = dest.snapshots()?.iter().map(|(_, s)| identity(s)).collect();
    select_missing(source, sources, report, |_, s| present.contains(&identity(s)))
}

/// Copies `missing` into a destination with other key material (one encrypted and the other
/// not, or two master keys): every blob is read from the source (opened and verified), then
/// stored anew in the destination as any snapshot stores it (its ids, compressed, sealed with its
/// key, deduplicated against what it holds), trees are rewritten with the new ids, and each
/// manifest is written anew with the new root tree and no parent. Chunk boundaries stay the
/// source's. The destination's commit order is a snapshot's: packs and index files, then the
/// manifests.
pub fn copy_reencoded(
    source: &Repository,
    dest: &Repository,
    held: &Lock,
    missing: Vec<(Id, Snapshot)>,
    progress: &Progress,
    report: &mut SyncReport,
) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let source = Indexed::load(source)?;
    let dest_index = dest.load_index()?;
    let store = crate::repository::packer::BlobStore::new(dest, &dest_index);
    let mut recoded =
        Recoded { source: &source, store: &store, trees: HashMap::new(), chunks: HashMap::new(), progress };
    let mut manifests = Vec::new();
    for (id, mut snapshot) in missing {
        match recoded.tree(snapshot.tree) {
            Ok(tree) => {
                snapshot.tree = tree;
                snapshot.parent = None;
                manifests.push((id, snapshot));
            }
            Err(e) => {
                report.errors.push(format!("snapshot {}: {e}", id.short()));
                report.snapshots_failed.push(id.to_hex());
            }
        }
    }
    store.finish()?;
    report.blobs_needed = store.stats.blobs.load(Relaxed);
    report.packs_copied = store.stats.packs.load(Relaxed);
    report.bytes_copied = store.stats.stored_bytes.load(Relaxed);
    report.index_files_written = store.index_files.lock().expect("poisoned").len() as u64;
    for (id, snapshot) in manifests {
        held.check_held()?;
        dest.save_snapshot(&snapshot)?;
        report.snapshots_copied.push(id.to_hex());
    }
    progress.finish();
    Ok(())
}

/// Source trees and chunks already stored in the destination, by their source ids.
struct Recoded<'a> {
    source: &'a Indexed<'a>,
    store: &'a crate::repository::packer::BlobStore<'a>,
    trees: HashMap<Id, Id>,
    chunks: HashMap<Id, Id>,
    progress: &'a Progress,
}

impl Recoded<'_> {
    /// The destination id of the source tree `id`, storing it and everything below it: subtrees
    /// are recoded before the trees that name them, as a [`depth_first`] walk closes them.
    fn tree(&mut self, id: Id) -> Result<Id> {
        depth_first(&id, Vec::new(), self)?;
        Ok(self.trees[&id])
    }

    /// The destination id of the source chunk `id`, storing it if this run has not.
    fn chunk(&mut self, id: &Id) -> Result<Id> {
        if let Some(done) = self.chunks.get(id) {
            return Ok(*done);
        }
        let data = self.source.read_blob(id)?;
        self.progress.add_bytes(data.len() as u64);
        let new = self.store.store(BlobKind::Data, &data)?;
        self.chunks.insert(*id, new);
        Ok(new)
    }
}

impl Recoded<'_> {
    /// The destination ids of a file's chunks kept in list blobs, stored as one FULL list of the
    /// recoded chunks. Not list by list: a chain's earlier lists may name chunks that later lists
    /// replaced and a prune deleted (it keeps only what a chain's end names), which cannot be read
    /// to be recoded; a sync into another repository's keys then failed for every such file.
    fn lists(&mut self, chunks: &ChunkList) -> Result<Id> {
        let ids = self.source.chunk_list(chunks)?;
        let recoded = ids.iter().map(|chunk| self.chunk(chunk)).collect::<Result<Vec<Id>>>()?;
        self.store.store(BlobKind::Tree, &crate::format::chunk_list::encode_full(&recoded))
    }
}

impl Visitor for Recoded<'_> {
    type State = ();
    const PATHS: bool = false;

    fn open(&mut self, id: &Id, _: &[u8]) -> Result<Option<(Tree, ())>> {
        match self.trees.contains_key(id) {
            true => Ok(None),
            false => Ok(Some((self.source.read_tree(id)?, ()))),
        }
    }

    fn entry(&mut self, dir: &mut Open<()>, at: usize, _: &[u8]) -> Result<Step> {
        match &mut dir.tree.nodes[at].content {
            Content::Dir { subtree } => match self.trees.get(subtree) {
                Some(done) => *subtree = *done,
                None => return Ok(Step::Descend),
            },
            Content::File { chunks: ChunkList::Inline(chunks) } => {
                for chunk in chunks.iter_mut() {
                    *chunk = self.chunk(chunk)?;
                }
            }
            Content::File { chunks: stored @ ChunkList::Stored { .. } } => {
                let full = self.lists(stored)?;
                if let ChunkList::Stored { lists, .. } = stored {
                    *lists = vec![full];
                }
            }
            _ => {}
        }
        Ok(Step::Skip)
    }

    /// Stores the recoded tree, and names it in its parent's node.
    fn close(&mut self, done: Open<()>, parent: Option<&mut Open<()>>, _: &[u8]) -> Result<()> {
        let new = self.store.store(BlobKind::Tree, &done.tree.encode())?;
        self.trees.insert(done.id, new);
        if let Some(parent) = parent {
            if let Content::Dir { subtree } = &mut parent.tree.nodes[parent.next - 1].content {
                *subtree = new;
            }
        }
        Ok(())
    }
}
