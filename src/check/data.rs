//! `check --read-data`: packs read whole and verified, one being verified while the next is read,
//! so memory stays at [`PACK_BUFFERS`] packs: each pack's bytes must hash to its name, and every
//! blob its trailer lists must decrypt, decompress and hash to its id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};

use rayon::prelude::*;

use super::by_pack::ByPack;
use super::structure::read_trailer;
use super::Subset;
use crate::backend::{Backend, WholeObject};
use crate::error::Error;
use crate::format::pack::BlobEntry;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::{FileKind, Repository};

/// How many packs `--read-data` holds in memory at once: one being verified, one being read (or
/// read and waiting).
const PACK_BUFFERS: usize = 2;

/// Threads reading packs: two, so that the first two packs arrive together, and an object store
/// has two downloads going.
const PACK_READERS: usize = 2;

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

/// What reading packs whole found.
#[derive(Default)]
pub(super) struct PacksRead {
    pub(super) packs: u64,
    pub(super) bytes: u64,
    pub(super) blobs: u64,
    /// Packs that could not be read or do not match their id, and why.
    pub(super) bad_packs: Vec<(Id, String)>,
    /// Blobs that failed, with the pack holding them and why.
    pub(super) failed: Vec<(Id, BlobEntry, String)>,
    /// Packs whose trailer decoded and lists exactly what the index places in them ([`ByPack`]),
    /// with the dictionaries it lists.
    pub(super) trailers_checked: HashMap<Id, Vec<Id>>,
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
pub(super) fn read_packs(
    repo: &Repository,
    packs: &[&Id],
    prefetched: Prefetched,
    progress: &Progress,
    stop: &AtomicBool,
    grouped: &OnceLock<ByPack>,
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
                // A trailer that lists other entries than the index places in the pack is held
                // against them by the structural pass.
                let trailer_checked = match (&trailer, grouped.get()) {
                    (Ok(listed), Some(sums)) => sums.matches(pack, &listed.entries),
                    _ => false,
                };
                let listed = trailer.unwrap_or_default();
                let failed = verify_blobs(repo, pack, bytes, &listed.entries, turn);
                if buffer.capacity() > KEEP_PACK_BUFFER {
                    buffer = WholeObject::default();
                }
                _ = free.send(buffer);
                let mut read = read.lock().expect("poisoned");
                read.packs += 1;
                read.bytes += len;
                read.blobs += listed.entries.len() as u64;
                read.failed.extend(failed);
                if trailer_checked {
                    read.trailers_checked.insert(*pack, listed.dictionaries);
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
