//! Reading many data blobs from an object store by pack, not by blob.
//!
//! A restore knows every blob it will read before it writes anything: the chunks of the files
//! below what it restores, in the order it writes them. [`PlannedReads`] groups them by pack
//! into "segments", one ranged GET each: the span of a pack's needed blobs, split where a span
//! would exceed [`MAX_SEGMENT`] and at the largest gaps between them ([`segments`] says when).
//! Fetcher threads fetch the segments ahead of the writer, several at once, each cut into its
//! blobs as it arrives ([`crate::backend::Backend::get_parts`]);
//! a blob is decoded and checked (decrypted, decompressed, hashed against its id, as by
//! [`Repository::read_blob`]) when it is read.
//!
//! Memory stays within [`BUDGET`]: a segment's bytes are dropped once every planned read of its
//! blobs is made, and a fetcher only starts a segment when the bytes held and in flight leave
//! room for it. When they do not, it drops the fetched segment whose next planned read lies furthest
//! ahead (Belady's rule), if that is further than the segment it wants; a dropped segment is
//! fetched again, for the blobs still to be read only, when its turn comes. A segment the writer
//! is waiting for is fetched at once, whatever the budget, so the writer never waits on itself.
//!
//! When the writer reads every planned blob in order (no files left as they were), decoder
//! threads take the blobs in plan order and decode them ahead of it, up to [`WINDOW`] decoded
//! bytes: the writer then only writes (restore hands even that to threads of its own), and
//! decoding runs on the other cores (measured on the toolchain from a loopback S3: 3.0 s with two
//! decoders, 3.8 s with none, on 2 cores).
//!
//! The plan follows the writer's order (restore writes in plan order on an object store), but
//! nothing depends on it being right: a blob read more often than planned is read alone; with
//! decoders, a read further on in the plan than the writer is (a file that failed half way)
//! skips what lies between; without, a planned read never made only leaves its segment first in
//! line to be dropped. Retries of dropped connections happen in the backend
//! ([`crate::backend::object`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::index::{Index, Location};
use super::Repository;
use crate::error::{Error, Result};
use crate::id::{Id, IdMap};

/// A segment spans at most this many bytes of its pack: packs are 16 MiB by default, so the
/// blobs a restore needs from one pack are read in one request.
pub const MAX_SEGMENT: u64 = 32 * 1024 * 1024;

/// Bytes of segments held and in flight beyond which no segment is fetched ahead.
pub const BUDGET: u64 = 64 * 1024 * 1024;

/// Segments fetched at once.
pub const FETCHERS: usize = 4;

/// Decoded bytes that decoders hold ahead of the writer, beyond which they wait.
pub const WINDOW: u64 = 16 * 1024 * 1024;

/// Decoder threads at most (one per core otherwise).
pub const DECODERS: usize = 4;

/// Reads between wakings of the fetchers when nothing else wakes them.
const NUDGE: u64 = 64;

/// Bytes of blobs dropped between two [`give_back`]s.
const GIVE_BACK_EVERY: u64 = 16 * 1024 * 1024;

/// Hands freed memory back to the system. Fetchers allocate the blobs and the writer's side
/// frees them, and glibc keeps what one thread frees of another's allocations in that thread's
/// arena: without this a restore from S3 held twice the memory it used (measured on the
/// toolchain: 258 MiB at most for 130 MiB of blobs held).
fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub struct PlannedReads<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// The planned reads by blob ([`Reads`]).
    reads: Reads,
    state: Mutex<State>,
    /// Readers wait on it for a fetch to end.
    fetched: Condvar,
    /// Fetchers wait on it for room, or for a segment to fetch.
    room: Condvar,
    ahead: Option<Ahead>,
    /// [`BUDGET`], but for tests.
    budget: u64,
    /// Packs a blob of which failed its checks when read together with others and again alone:
    /// damaged where they are stored, so their other failing blobs are not read again (a
    /// damaged pack of thousands of small blobs would cost as many requests).
    damaged_packs: Mutex<BTreeSet<Id>>,
}

/// The planned reads by blob. Each planned blob has a number (in the order of its first read)
/// that the plan's tables are indexed by: a plan of the toolchain's 70,000 blobs took 65 ms to
/// make with a map by id for each of them.
struct Reads {
    /// Each planned blob's number.
    numbers: IdMap<u32>,
    /// Its positions in the plan: those of blob `b` are `positions[starts[b]..starts[b + 1]]`,
    /// ascending.
    starts: Vec<usize>,
    positions: Vec<usize>,
}

impl Reads {
    fn number(&self, id: &Id) -> Option<usize> {
        self.numbers.get(id).map(|&b| b as usize)
    }

    /// The plan positions of blob number `b`'s reads, ascending.
    fn of(&self, b: usize) -> &[usize] {
        &self.positions[self.starts[b]..self.starts[b + 1]]
    }
}

/// Blobs decoded ahead of the writer, in plan order.
struct Ahead {
    /// The planned reads, in order.
    order: Vec<Id>,
    state: Mutex<AheadState>,
    /// The writer waits on it for the read it is at.
    decoded: Condvar,
    /// Decoders wait on it for room in the window.
    space: Condvar,
}

struct AheadState {
    /// The next position a decoder takes.
    claimed: usize,
    /// The writer's next position.
    cursor: usize,
    /// Decoded blobs not yet read, by position (all at or after `cursor`).
    ready: BTreeMap<usize, Result<Vec<u8>>>,
    /// Their decoded bytes.
    bytes: u64,
    /// [`WINDOW`], but for tests.
    window: u64,
    /// The position the writer waits for, if it waits.
    writer_waits: Option<usize>,
    /// Decoders waiting for room.
    idle: usize,
    stop: bool,
}

impl AheadState {
    /// Whether a decoder may take the next read: the window has room, or the writer has caught up.
    fn has_room(&self) -> bool {
        self.bytes < self.window || self.claimed <= self.cursor
    }
}

impl Ahead {
    fn lock(&self) -> MutexGuard<'_, AheadState> {
        self.state.lock().expect("poisoned")
    }

    /// Wakes the decoders waiting for room, if there is room now. (Waking them on every read
    /// cost a tenth of a restore's time in futex calls.)
    fn wake_decoders(&self, state: &AheadState) {
        if state.idle > 0 && state.has_room() {
            self.space.notify_all();
        }
    }

    /// The first planned read of `id` at or after position `from`.
    fn position(&self, reads: &Reads, id: &Id, from: usize) -> Option<usize> {
        // The writer reads in plan order: almost always, its read is the one at `from`.
        if self.order.get(from) == Some(id) {
            return Some(from);
        }
        let at = reads.of(reads.number(id)?);
        at.get(at.partition_point(|&p| p < from)).copied()
    }
}

/// Stops the fetchers and decoders when the work ends, however it ends.
struct Stop<'s, 'a>(&'s PlannedReads<'a>);

impl Drop for Stop<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.room.notify_all();
        if let Some(ahead) = &self.0.ahead {
            ahead.lock().stop = true;
            ahead.decoded.notify_all();
            ahead.space.notify_all();
        }
    }
}

struct Segment {
    pack: Id,
    /// The planned blobs in it (their numbers), by offset.
    blobs: Vec<u32>,
    /// Plan positions of the reads of its blobs, in order; `next` of them are made.
    positions: Vec<u64>,
    next: usize,
    slot: Slot,
    /// Bytes it holds or has reserved in [`State::held`].
    held: u64,
    /// What a fetch of it would hold now, once worked out ([`PlannedReads::reserve`]); a read
    /// of one of its blobs clears it.
    need: Option<u64>,
}

enum Slot {
    /// Not fetched, or dropped to stay within the budget.
    Waiting,
    Fetching,
    /// The stored bytes of each blob still to be read.
    Ready(IdMap<Arc<Vec<u8>>>),
    /// The fetch failed: every read of its blobs gets this error.
    Failed(String),
}

/// A planned blob: where it is, found once when the plan is made.
struct Planned {
    id: Id,
    segment: usize,
    /// Planned reads not yet made.
    left: u32,
    location: Location,
}

struct State {
    segments: Vec<Segment>,
    /// The planned blobs, by number.
    blobs: Vec<Planned>,
    /// Waiting segments with reads left, by next planned read.
    waiting: BTreeSet<(u64, usize)>,
    /// Reads and skips made so far: where the writer is in the plan.
    position: u64,
    /// Whether a read is ever left unmade: true for one reader in plan order, who may give up a
    /// file half way; false with decoders, who make (or skip) every read, several at once.
    may_leave: bool,
    held: u64,
    /// Bytes of blobs dropped since memory was last given back ([`give_back`]).
    freed: u64,
    /// Bytes of blobs dropped since the fetchers were last woken: they are woken for room
    /// once it is a sixteenth of the budget, not for each blob.
    unnoticed: u64,
    stop: bool,
}

impl Segment {
    fn next_use(&self) -> Option<u64> {
        self.positions.get(self.next).copied()
    }
}

impl State {
    /// The next planned read of segment `n`, or `u64::MAX` when the reader has gone past it (a
    /// planned read that was never made): its bytes are the first to drop. (Decoders make their
    /// reads out of order, so one behind the count of those made is still to come.)
    fn due(&self, n: usize) -> u64 {
        match self.segments[n].next_use() {
            Some(at) if at + 1 >= self.position || !self.may_leave => at,
            _ => u64::MAX,
        }
    }

    fn wait_for_fetch(&mut self, n: usize) {
        if let Some(at) = self.segments[n].next_use() {
            self.waiting.insert((at, n));
        }
    }
}

/// Bytes a gap between two needed blobs of a pack must span for the pack to be read in two
/// requests rather than one ([`segments`]).
pub const SKIPPED_GAP: u64 = 1024 * 1024;

/// The plan's segments: each pack's planned blobs in offset order, cut where a segment would
/// span more than [`MAX_SEGMENT`] of the pack. A pack whose blobs are read all along the plan (a
/// database's pages changed on one day of many, read from start to end of the file) is also cut
/// where the blobs' first reads would lie more than `spread` bytes of the plan apart (stored
/// bytes of the reads before), so that each segment is held for a stretch of the plan, not
/// fetched whole again for each of its blobs once more packs are live than the budget holds. A
/// pack half of whose bytes are read within `spread` stays whole (the toolchain's packs: a burst
/// of files, then blobs other files share read over a third of the plan, which the budget holds
/// while they wait).
///
/// The largest gaps of at least [`SKIPPED_GAP`] between needed blobs (blobs of other snapshots)
/// within those segments are not read either, at most one for every two packs, so that skipping
/// them adds at most one request for every two packs: the toolchain's second version needs 343
/// MiB from 33 packs, whose spans held 87 MiB more, 57 MiB of it in 22 gaps of 1 MiB or more.
fn segments(blobs: &[(Id, Location)], first_read: &[u64], spread: u64) -> Vec<(u32, Vec<u32>)> {
    // Fewer than 2^32 blobs: `PlannedReads::new` numbers them by u32.
    let mut by_place: Vec<u32> = (0..blobs.len()).map(|b| b as u32).collect();
    by_place.sort_unstable_by_key(|&b| (blobs[b as usize].1.pack, blobs[b as usize].1.offset));
    let location = |b: u32| &blobs[b as usize].1;
    let packs: Vec<&[u32]> = by_place.chunk_by(|&a, &b| location(a).pack == location(b).pack).collect();
    let cap = packs.len() / 2;
    let mut segments = Vec::new();
    for in_pack in packs {
        let pack = location(in_pack[0]).pack;
        let spread = match read_in_a_burst(in_pack, blobs, first_read, spread) {
            true => u64::MAX,
            false => spread,
        };
        let (mut start, mut earliest, mut latest) = (0u64, 0u64, 0u64);
        let mut numbers: Vec<u32> = Vec::new();
        for &b in in_pack {
            let location = location(b);
            let end = location.offset as u64 + location.stored_len as u64;
            let at = first_read[b as usize];
            if !numbers.is_empty() && (end - start > MAX_SEGMENT || at.max(latest) - at.min(earliest) > spread) {
                segments.push((pack, std::mem::take(&mut numbers)));
            }
            if numbers.is_empty() {
                (start, earliest, latest) = (location.offset as u64, at, at);
            }
            (earliest, latest) = (earliest.min(at), latest.max(at));
            numbers.push(b);
        }
        segments.push((pack, numbers));
    }
    // The largest gaps inside those segments, each as (its bytes, the blob it lies before); a
    // segment split at one spans less, so it stays within both limits above.
    let mut gaps: Vec<(u64, u32)> = (segments.iter())
        .flat_map(|(_, numbers)| numbers.windows(2))
        .map(|pair| {
            let (before, after) = (location(pair[0]), location(pair[1]));
            ((after.offset as u64).saturating_sub(before.offset as u64 + before.stored_len as u64), pair[1])
        })
        .filter(|&(gap, _)| gap >= SKIPPED_GAP)
        .collect();
    gaps.sort_unstable_by(|a, b| b.cmp(a));
    gaps.truncate(cap);
    if gaps.is_empty() {
        return segments;
    }
    let skipped: std::collections::HashSet<u32> = gaps.into_iter().map(|(_, b)| b).collect();
    let mut split = Vec::with_capacity(segments.len() + skipped.len());
    for (pack, numbers) in segments {
        let mut rest = numbers.as_slice();
        while let Some(at) = rest.iter().skip(1).position(|b| skipped.contains(b)) {
            let (before, after) = rest.split_at(at + 1);
            split.push((pack, before.to_vec()));
            rest = after;
        }
        split.push((pack, rest.to_vec()));
    }
    split
}

/// Whether half the bytes of a pack's planned blobs (`in_pack`, numbers in `blobs`) or more are
/// first read within `spread` bytes of the plan of each other.
fn read_in_a_burst(in_pack: &[u32], blobs: &[(Id, Location)], first_read: &[u64], spread: u64) -> bool {
    let mut reads: Vec<(u64, u64)> =
        in_pack.iter().map(|&b| (first_read[b as usize], blobs[b as usize].1.stored_len as u64)).collect();
    reads.sort_unstable();
    let total: u64 = reads.iter().map(|&(_, len)| len).sum();
    let (mut from, mut within, mut most) = (0, 0u64, 0u64);
    for &(at, len) in &reads {
        within += len;
        while at - reads[from].0 > spread {
            within -= reads[from].1;
            from += 1;
        }
        most = most.max(within);
    }
    most * 2 >= total
}

impl<'a> PlannedReads<'a> {
    /// Plans reads of `blobs`, in the order they will be read (a blob read twice is listed
    /// twice), decoded ahead of the reader when `ahead` (it reads them all, skipping none).
    /// Blobs the index does not have are left to [`Repository::read_blob`], which reports them.
    pub fn new(repo: &'a Repository, index: &'a Index, blobs: Vec<Id>, ahead: bool) -> PlannedReads<'a> {
        Self::with_budget(repo, index, blobs, ahead, BUDGET)
    }

    /// [`PlannedReads::new`] within `budget` bytes ([`BUDGET`] but for tests).
    fn with_budget(
        repo: &'a Repository,
        index: &'a Index,
        blobs: Vec<Id>,
        ahead: bool,
        budget: u64,
    ) -> PlannedReads<'a> {
        let spread = budget / 2;
        // Positions count planned reads only: blobs not in the index are never planned. Each is
        // looked up once, here (a lookup is a search of the index on disk), and numbered.
        let mut numbers: IdMap<u32> = IdMap::with_capacity_and_hasher(blobs.len(), Default::default());
        let mut located: Vec<(Id, Location)> = Vec::new();
        // Per blob: the stored bytes of the plan before its first read, and its reads.
        let mut first_read: Vec<u64> = Vec::new();
        let mut count: Vec<usize> = Vec::new();
        let mut order: Vec<Id> = Vec::with_capacity(blobs.len());
        let mut order_numbers: Vec<u32> = Vec::with_capacity(blobs.len());
        let mut planned = 0u64;
        for id in blobs {
            let b = match numbers.get(&id) {
                Some(&b) => b,
                None => {
                    let Some(location) = index.get(&id) else { continue };
                    // Each holds an entry in memory: 2^32 of them would need over 100 GiB first.
                    let b = u32::try_from(located.len()).expect("fewer than 2^32 blobs in a plan");
                    numbers.insert(id, b);
                    located.push((id, location));
                    first_read.push(planned);
                    count.push(0);
                    b
                }
            };
            planned += located[b as usize].1.stored_len as u64;
            count[b as usize] += 1;
            order.push(id);
            order_numbers.push(b);
        }
        // Each blob's positions, by a counting sort of the plan.
        let mut starts: Vec<usize> = Vec::with_capacity(count.len() + 1);
        starts.push(0);
        for &c in &count {
            starts.push(starts[starts.len() - 1] + c);
        }
        let mut filled: Vec<usize> = starts[..count.len()].to_vec();
        let mut positions = vec![0; order.len()];
        for (at, &b) in order_numbers.iter().enumerate() {
            positions[filled[b as usize]] = at;
            filled[b as usize] += 1;
        }
        let reads = Reads { numbers, starts, positions };
        let segments = segments(&located, &first_read, spread);
        let mut state = State {
            segments: Vec::with_capacity(segments.len()),
            blobs: Vec::with_capacity(located.len()),
            waiting: BTreeSet::new(),
            position: 0,
            may_leave: !ahead,
            held: 0,
            freed: 0,
            unnoticed: 0,
            stop: false,
        };
        let mut segment_of = vec![0usize; located.len()];
        for (n, (pack, numbers)) in segments.into_iter().enumerate() {
            let mut at: Vec<u64> = Vec::new();
            for &b in &numbers {
                at.extend(reads.of(b as usize).iter().map(|&p| p as u64));
                segment_of[b as usize] = n;
            }
            at.sort_unstable();
            let segment = Segment {
                pack: index.packs[pack as usize].0,
                blobs: numbers,
                positions: at,
                next: 0,
                slot: Slot::Waiting,
                held: 0,
                need: None,
            };
            state.segments.push(segment);
            state.wait_for_fetch(n);
        }
        state.blobs = (located.iter().zip(segment_of))
            .enumerate()
            .map(|(b, (&(id, location), segment))| Planned {
                id,
                segment,
                left: u32::try_from(count[b]).unwrap_or(u32::MAX),
                location,
            })
            .collect();
        let ahead = ahead.then(|| Ahead {
            order,
            state: Mutex::new(AheadState {
                claimed: 0,
                cursor: 0,
                ready: BTreeMap::new(),
                bytes: 0,
                window: WINDOW,
                writer_waits: None,
                idle: 0,
                stop: false,
            }),
            decoded: Condvar::new(),
            space: Condvar::new(),
        });
        PlannedReads {
            repo,
            index,
            reads,
            state: Mutex::new(state),
            fetched: Condvar::new(),
            room: Condvar::new(),
            ahead,
            budget,
            damaged_packs: Mutex::default(),
        }
    }

    /// Runs `work` with this plan's fetchers (and decoders) reading ahead; they stop when it
    /// returns.
    pub fn run<R>(&self, work: impl FnOnce(&Self) -> R) -> R {
        let done = std::thread::scope(|scope| {
            for _ in 0..FETCHERS {
                scope.spawn(|| self.fetch_ahead());
            }
            if let Some(ahead) = &self.ahead {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                for _ in 0..cores.clamp(1, DECODERS) {
                    scope.spawn(|| self.decode_ahead(ahead));
                }
            }
            let _stop = Stop(self);
            work(self)
        });
        crate::buffers::release();
        done
    }

    /// The plain content of blob `id`, checked.
    pub fn read(&self, id: &Id) -> Result<Vec<u8>> {
        let Some(ahead) = &self.ahead else { return self.take(id) };
        let mut state = ahead.lock();
        let Some(at) = ahead.position(&self.reads, id, state.cursor) else {
            // Not planned, or read more often than planned: read alone.
            drop(state);
            return self.repo.read_blob(self.index, id);
        };
        state = self.advance(ahead, state, at);
        loop {
            if let Some(read) = state.ready.remove(&at) {
                state.writer_waits = None;
                state.bytes -= read.as_ref().map_or(0, |plain| plain.len() as u64);
                state.cursor = at + 1;
                ahead.wake_decoders(&state);
                return read;
            }
            state.writer_waits = Some(at);
            state = ahead.decoded.wait(state).expect("poisoned");
        }
    }

    /// Tells the plan that `blobs` will not be read after all (a file left as it was).
    pub fn skip(&self, blobs: &[Id]) {
        let Some(ahead) = &self.ahead else { return self.skip_planned(blobs) };
        for id in blobs {
            let mut state = ahead.lock();
            if let Some(at) = ahead.position(&self.reads, id, state.cursor) {
                state = self.advance(ahead, state, at + 1);
            }
        }
    }

    /// Moves the writer to position `to` (reads before it are never made: a file that failed half
    /// way, or skipped): drops what was decoded for them, and skips those no decoder has taken.
    fn advance<'s>(
        &self,
        ahead: &'s Ahead,
        mut state: MutexGuard<'s, AheadState>,
        to: usize,
    ) -> MutexGuard<'s, AheadState> {
        if to <= state.cursor {
            return state;
        }
        let kept = state.ready.split_off(&to);
        let dropped: u64 = state.ready.values().map(|read| read.as_ref().map_or(0, |plain| plain.len() as u64)).sum();
        state.bytes -= dropped;
        state.ready = kept;
        state.cursor = to;
        ahead.wake_decoders(&state);
        if state.claimed < to {
            let skipped = ahead.order[state.claimed..to].to_vec();
            state.claimed = to;
            drop(state);
            self.skip_planned(&skipped);
            state = ahead.lock();
        }
        state
    }

    /// A decoder: takes the next planned read and decodes it, until the plan is done or it is
    /// told to stop; waits while [`WINDOW`] bytes are decoded ahead, unless the writer waits
    /// for the next one.
    fn decode_ahead(&self, ahead: &Ahead) {
        loop {
            let mut state = ahead.lock();
            let at = loop {
                if state.stop || state.claimed >= ahead.order.len() {
                    return;
                }
                if state.has_room() {
                    state.claimed += 1;
                    break state.claimed - 1;
                }
                state.idle += 1;
                state = ahead.space.wait(state).expect("poisoned");
                state.idle -= 1;
            };
            drop(state);
            let read = self.take(&ahead.order[at]);
            let mut state = ahead.lock();
            if at >= state.cursor {
                state.bytes += read.as_ref().map_or(0, |plain| plain.len() as u64);
                state.ready.insert(at, read);
            }
            if state.writer_waits == Some(at) || state.stop {
                ahead.decoded.notify_one();
            }
        }
    }

    /// The next planned read of `id`, decoded and checked.
    fn take(&self, id: &Id) -> Result<Vec<u8>> {
        let b = self.reads.number(id);
        let mut state = self.lock();
        let (b, n, location) = match b.map(|b| (b, &state.blobs[b])) {
            Some((b, planned)) if planned.left > 0 => (b, planned.segment, planned.location),
            // Not planned, or read more often than planned: read alone.
            _ => {
                drop(state);
                return self.repo.read_blob(self.index, id);
            }
        };
        loop {
            match &state.segments[n].slot {
                Slot::Ready(..) | Slot::Failed(_) => break,
                Slot::Fetching => state = self.fetched.wait(state).expect("poisoned"),
                Slot::Waiting => {
                    let at = state.segments[n].next_use().unwrap_or(u64::MAX);
                    state.waiting.remove(&(at, n));
                    state = self.fetch(state, n);
                }
            }
        }
        let found = match &state.segments[n].slot {
            // A ready segment holds every blob with reads left; were it not so, the blob would
            // be read alone below rather than not at all.
            Slot::Ready(stored) => Ok(stored.get(id).cloned()),
            Slot::Failed(message) => Err(message.clone()),
            _ => unreachable!("the loop above waits for these"),
        };
        let pack = state.segments[n].pack;
        self.used(&mut state, b);
        drop(state);
        match found {
            Ok(Some(stored)) => self.decode(id, &location, stored, &pack),
            Ok(None) => self.repo.read_blob(self.index, id),
            Err(message) => Err(Error::io(
                format!("{}/{}", self.repo.backend().location(), super::FileKind::Pack.name(&pack)),
                std::io::Error::other(message),
            )),
        }
    }

    /// A fetched blob, decoded into a kept buffer ([`crate::buffers`]) that the writer gives
    /// back; decrypted in place after its last planned read, and its stored bytes given back.
    /// One that fails its checks is read again by itself, once, unless its pack proved damaged
    /// so ([`Repository::worth_reading_again`] says when): a byte a link changed on the way must
    /// not cost a restore the file, nor a drill its verdict.
    fn decode(&self, id: &Id, location: &Location, stored: Arc<Vec<u8>>, pack: &Id) -> Result<Vec<u8>> {
        let decoded = match Arc::try_unwrap(stored) {
            Ok(mut stored) => {
                let mut plain = crate::buffers::take(location.raw_len as usize);
                let decoded = self.repo.decode_blob_in_place(&location.entry(id), &mut stored, pack, &mut plain);
                crate::buffers::give(stored);
                decoded.map(|()| plain)
            }
            // Still held for another read of the same blob.
            Err(shared) => self.repo.decode_located(id, location, &shared, pack),
        };
        match decoded {
            Err(e) if self.repo.worth_reading_again(&e, location) && !self.damaged().contains(pack) => {
                let again = self.repo.read_located(self.index, id, location);
                if let Err(Error::BadBlob { .. }) = again {
                    self.damaged().insert(*pack);
                }
                again
            }
            decoded => decoded,
        }
    }

    /// The planned reads of `blobs` will not be made.
    fn skip_planned(&self, blobs: &[Id]) {
        let mut state = self.lock();
        for b in blobs.iter().filter_map(|id| self.reads.number(id)) {
            if state.blobs[b].left > 0 {
                self.used(&mut state, b);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("poisoned")
    }

    fn damaged(&self) -> MutexGuard<'_, BTreeSet<Id>> {
        self.damaged_packs.lock().expect("poisoned")
    }

    /// One planned read of blob number `b` made (or skipped): drops the blob's bytes after its
    /// last read, and its segment after its last. Wakes the fetchers when that makes room
    /// (a segment, or a sixteenth of the budget in blobs) or changes what they wait for, and
    /// every [`NUDGE`] reads (each moves what is due when).
    fn used(&self, state: &mut State, b: usize) {
        state.position += 1;
        let mut nudge = state.position % NUDGE == 0;
        let planned = &mut state.blobs[b];
        let n = planned.segment;
        planned.left = planned.left.saturating_sub(1);
        if planned.left == 0 {
            let id = planned.id;
            if let Slot::Ready(stored) = &mut state.segments[n].slot {
                if let Some(bytes) = stored.remove(&id) {
                    state.segments[n].held -= bytes.len() as u64;
                    state.held -= bytes.len() as u64;
                    state.freed += bytes.len() as u64;
                    state.unnoticed += bytes.len() as u64;
                    nudge |= state.unnoticed >= self.budget / 16;
                }
            }
        }
        let waiting = matches!(state.segments[n].slot, Slot::Waiting);
        if waiting {
            state.waiting.remove(&(state.segments[n].next_use().unwrap_or(u64::MAX), n));
        }
        let segment = &mut state.segments[n];
        segment.next = (segment.next + 1).min(segment.positions.len());
        segment.need = None;
        if segment.next_use().is_none() {
            if let Slot::Ready(..) | Slot::Failed(_) = segment.slot {
                state.held -= segment.held;
                segment.held = 0;
                segment.slot = Slot::Waiting;
                nudge = true;
            }
        } else if waiting {
            state.wait_for_fetch(n);
            nudge = true;
        }
        if nudge {
            state.unnoticed = 0;
            self.room.notify_all();
        }
    }

    /// A fetcher: fetches the waiting segment needed soonest while the budget allows, until told
    /// to stop.
    fn fetch_ahead(&self) {
        let mut state = self.lock();
        while !state.stop {
            let Some(&(at, n)) = state.waiting.first() else {
                state = self.room.wait(state).expect("poisoned");
                continue;
            };
            let need = self.reserve(&mut state, n);
            if state.held > 0 && state.held + need > self.budget && !self.drop_one_due_after(&mut state, at) {
                state = self.room.wait(state).expect("poisoned");
                continue;
            }
            if state.held == 0 || state.held + need <= self.budget {
                state.waiting.remove(&(at, n));
                state = self.fetch(state, n);
            }
        }
    }

    /// Drops the fetched segment whose next read lies furthest ahead, if after `at`; whether
    /// one was dropped.
    fn drop_one_due_after(&self, state: &mut State, at: u64) -> bool {
        let furthest = (0..state.segments.len())
            .filter(|&n| matches!(state.segments[n].slot, Slot::Ready(..)))
            .map(|n| (state.due(n), n))
            .max();
        match furthest {
            Some((due, n)) if due > at => {
                state.held -= state.segments[n].held;
                state.segments[n].held = 0;
                state.segments[n].slot = Slot::Waiting;
                state.wait_for_fetch(n);
                true
            }
            _ => false,
        }
    }

    /// The blobs of segment `n` still to be read, and their stored bytes: what a fetch of them
    /// holds (the body is cut into them as it arrives; what lies between them is never kept).
    fn remaining(&self, state: &State, n: usize) -> (Vec<(Id, Location)>, u64) {
        let blobs: Vec<(Id, Location)> = (state.segments[n].blobs.iter())
            .map(|&b| &state.blobs[b as usize])
            .filter(|planned| planned.left > 0)
            .map(|planned| (planned.id, planned.location))
            .collect();
        let bytes = blobs.iter().map(|(_, l)| l.stored_len as u64).sum();
        (blobs, bytes)
    }

    /// Bytes a fetch of segment `n` holds: its blobs still to be read.
    fn reserve(&self, state: &mut State, n: usize) -> u64 {
        if let Some(need) = state.segments[n].need {
            return need;
        }
        let (_, bytes) = self.remaining(state, n);
        state.segments[n].need = Some(bytes);
        bytes
    }

    /// Fetches segment `n` (taken out of the waiting set) with the lock released, and returns
    /// the lock. It keeps the stored bytes of the blobs still to be read, each on its own, so
    /// that each is dropped as soon as its last read is made.
    fn fetch<'s>(&'s self, mut state: MutexGuard<'s, State>, n: usize) -> MutexGuard<'s, State> {
        let (blobs, bytes) = self.remaining(&state, n);
        state.held += bytes;
        let segment = &mut state.segments[n];
        segment.slot = Slot::Fetching;
        segment.held = bytes;
        let key = super::FileKind::Pack.name(&segment.pack);
        let give = state.freed >= GIVE_BACK_EVERY;
        if give {
            state.freed = 0;
        }
        drop(state);
        if give {
            give_back();
        }
        let parts: Vec<(u64, usize)> = blobs.iter().map(|(_, l)| (l.offset as u64, l.stored_len as usize)).collect();
        let fetched =
            self.repo.backend().get_parts(&key, &parts).map(|stored| {
                blobs.iter().map(|(id, _)| *id).zip(stored.into_iter().map(Arc::new)).collect::<IdMap<_>>()
            });
        let mut guard = self.lock();
        let state = &mut *guard;
        state.held -= bytes;
        state.segments[n].held = 0;
        state.segments[n].slot = match fetched {
            Ok(mut stored) => {
                // Less the blobs skipped while it was on its way.
                let (blobs, reads) = (&state.blobs, &self.reads);
                stored.retain(|id, _| reads.number(id).is_some_and(|b| blobs[b].left > 0));
                let held: u64 = stored.values().map(|b| b.len() as u64).sum();
                state.held += held;
                state.segments[n].held = held;
                Slot::Ready(stored)
            }
            Err(e) => Slot::Failed(e.to_string()),
        };
        if state.segments[n].next_use().is_none() {
            state.held -= state.segments[n].held;
            state.segments[n].held = 0;
            state.segments[n].slot = Slot::Waiting;
        }
        self.fetched.notify_all();
        self.room.notify_all();
        guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::config::Config;
    use crate::format::pack::BlobKind;
    use crate::repository::packer::BlobStore;
    use crate::repository::NewKeys;

    /// A repository in memory with `n` blobs of 1 to 20 KiB in packs of about 64 KiB, and the
    /// blobs' ids and contents.
    fn repository(n: usize) -> (Repository, Index, Vec<(Id, Vec<u8>)>) {
        let config = Config { pack_target_size: 64 * 1024, ..Config::new_random() };
        let repo = Repository::create(&"memory://reads".into(), config, NewKeys::None).unwrap();
        let mut seed = 21u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let blobs: Vec<Vec<u8>> =
            (0..n).map(|_| (0..1024 + next() % (19 * 1024)).map(|_| next() as u8).collect()).collect();
        let nothing = Index::default();
        let store = BlobStore::new(&repo, &nothing);
        let stored = blobs.into_iter().map(|data| (store.store(BlobKind::Data, &data).unwrap(), data)).collect();
        store.finish().unwrap();
        let index = repo.load_index().unwrap();
        (repo, index, stored)
    }

    impl PlannedReads<'_> {
        /// Decoders hold about two blobs ahead, so that they wait for room all the time.
        fn small_window(&mut self) {
            if let Some(ahead) = &mut self.ahead {
                ahead.state.get_mut().unwrap().window = 32 * 1024;
            }
        }
    }

    /// Runs `test` on its own thread and fails if it has not ended within a minute: a lost
    /// wake-up hangs the readers rather than failing them.
    fn within_a_minute(test: impl FnOnce() + Send + 'static) {
        let (done, ended) = std::sync::mpsc::channel();
        let test = std::thread::spawn(move || {
            test();
            done.send(()).ok();
        });
        match ended.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(()) => test.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(test.join().unwrap_err()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung: a lost wake-up"),
        }
    }

    fn gets(repo: &Repository) -> u64 {
        repo.backend().requests().unwrap().get
    }

    #[test]
    fn in_plan_order_each_pack_is_read_once() {
        within_a_minute(|| {
            let (repo, index, blobs) = repository(200);
            let packs = index.packs.len() as u64;
            assert!(packs > 10, "{packs} packs");
            for ahead in [false, true] {
                let before = gets(&repo);
                let mut plan = PlannedReads::new(&repo, &index, blobs.iter().map(|(id, _)| *id).collect(), ahead);
                plan.small_window();
                plan.run(|reads| {
                    for (id, data) in &blobs {
                        assert_eq!(&reads.read(id).unwrap(), data);
                    }
                });
                assert_eq!(gets(&repo) - before, packs, "ahead: {ahead}");
            }
        });
    }

    /// A reader that strays from its plan: a file given up half way, blobs skipped, a blob read
    /// twice in a row and again much later, one never planned, one the index does not have.
    /// Every read is right, nothing hangs, and the packs are read about once each.
    #[test]
    fn every_straying_from_the_plan_still_reads_right() {
        within_a_minute(|| {
            let (repo, index, blobs) = repository(300);
            let id = |n: usize| blobs[n].0;
            let mut order: Vec<Id> = (0..250).map(id).collect();
            order.insert(100, id(99)); // 99 twice in a row
            order.push(id(7)); // and 7 again at the end
            let unknown = Id([7; 32]);
            order.insert(20, unknown); // never stored: not planned
            for ahead in [false, true] {
                let before = gets(&repo);
                let mut plan = PlannedReads::new(&repo, &index, order.clone(), ahead);
                plan.small_window();
                plan.run(|reads| {
                    let check =
                        |n: usize| assert_eq!(reads.read(&id(n)).unwrap(), blobs[n].1, "blob {n}, ahead {ahead}");
                    (0..20).for_each(check);
                    assert!(reads.read(&unknown).is_err());
                    (20..40).for_each(check);
                    // 40..60 given up half way: never read, nor skipped.
                    (60..70).for_each(check);
                    reads.skip(&(70..90).map(id).collect::<Vec<_>>());
                    (90..100).for_each(check);
                    check(99);
                    (100..250).for_each(check);
                    check(280); // never planned
                    check(7);
                    check(7); // once more than planned
                });
                let read = gets(&repo) - before;
                assert!(
                    read <= index.packs.len() as u64 + 8,
                    "{read} GETs for {} packs, ahead {ahead}",
                    index.packs.len()
                );
            }
        });
    }

    /// One blob read again every few reads (a chunk many files share) while the budget holds
    /// two packs: the decoders, reading at once and out of step, must not take its pack for one
    /// whose reads are over and drop it each time (that sent a GET per read of it).
    #[test]
    fn a_blob_read_all_along_is_not_fetched_for_each_read() {
        within_a_minute(|| {
            let (repo, index, blobs) = repository(300);
            let shared = blobs[0].0;
            let mut order = Vec::new();
            for (n, (id, _)) in blobs.iter().enumerate().skip(1) {
                order.push(*id);
                if n % 4 == 0 {
                    order.push(shared);
                }
            }
            for ahead in [false, true] {
                let before = gets(&repo);
                let mut plan = PlannedReads::new(&repo, &index, order.clone(), ahead);
                plan.budget = 128 * 1024;
                plan.small_window();
                plan.run(|reads| {
                    for id in &order {
                        let data = &blobs.iter().find(|(b, _)| b == id).unwrap().1;
                        assert_eq!(&reads.read(id).unwrap(), data);
                    }
                });
                let read = gets(&repo) - before;
                let packs = index.packs.len() as u64;
                assert!(read <= 3 * packs, "{read} GETs for {packs} packs and 75 reads of one blob, ahead {ahead}");
            }
        });
    }

    /// A database's pages from many days: each pack holds some of the file's pages in file order,
    /// and the restore reads them all along the file, going from pack to pack at each page. With
    /// a budget of four packs, a pack fetched whole was dropped before its next page and fetched
    /// again for its remaining pages each time (a GET of most of a pack per page). Each pack is
    /// now read in stretches of the plan: about the bytes needed, and never a GET per read.
    #[test]
    fn pages_spread_over_many_packs_are_not_fetched_again_and_again() {
        within_a_minute(|| {
            let (repo, index, blobs) = repository(600);
            let mut by_pack: BTreeMap<u32, Vec<(u32, Id)>> = BTreeMap::new();
            for (id, _) in &blobs {
                let location = index.get(id).unwrap();
                by_pack.entry(location.pack).or_default().push((location.offset, *id));
            }
            let packs: Vec<Vec<Id>> = by_pack
                .into_values()
                .map(|mut pack| {
                    pack.sort();
                    pack.into_iter().map(|(_, id)| id).collect()
                })
                .collect();
            let deepest = packs.iter().map(Vec::len).max().unwrap();
            let order: Vec<Id> =
                (0..deepest).flat_map(|n| packs.iter().filter_map(move |p| p.get(n).copied())).collect();
            assert!(packs.len() > 50 && order.len() == blobs.len(), "{} packs", packs.len());
            let needed: u64 = order.iter().map(|id| index.get(id).unwrap().stored_len as u64).sum();
            for ahead in [false, true] {
                let before = repo.backend().requests().unwrap();
                let plan = PlannedReads::with_budget(&repo, &index, order.clone(), ahead, 4 * 64 * 1024);
                plan.run(|reads| {
                    for id in &order {
                        let data = &blobs.iter().find(|(b, _)| b == id).unwrap().1;
                        assert_eq!(&reads.read(id).unwrap(), data);
                    }
                });
                let after = repo.backend().requests().unwrap();
                let (gets, bytes) = (after.get - before.get, after.get_bytes - before.get_bytes);
                assert!(gets <= order.len() as u64, "{gets} GETs for {} reads, ahead {ahead}", order.len());
                assert!(bytes <= 2 * needed, "{bytes} bytes fetched for {needed} needed, ahead {ahead}");
            }
        });
    }

    #[test]
    fn the_largest_gaps_between_needed_blobs_are_not_read_one_for_every_two_packs() {
        // Five packs, each with a needed blob at its start and one after a gap of other blobs;
        // the last one's gap makes a span beyond MAX_SEGMENT, cut there anyway.
        let gaps: [u32; 5] = [5 << 20, 4 << 20, 2 << 20, 512 << 10, 40 << 20];
        let mut blobs = Vec::new();
        for (pack, gap) in gaps.into_iter().enumerate() {
            for offset in [0, (100 << 10) + gap] {
                let location = Location {
                    pack: pack as u32,
                    offset,
                    stored_len: 100 << 10,
                    raw_len: 100 << 10,
                    kind: crate::format::pack::BlobKind::Data,
                    codec: crate::format::pack::Codec::Raw,
                };
                blobs.push((Id::of(&[pack as u8, (offset > 0) as u8]), location));
            }
        }
        let first_read = vec![0; blobs.len()];
        let mut cut: Vec<u32> = (segments(&blobs, &first_read, u64::MAX).into_iter())
            .filter(|(_, numbers)| numbers.len() == 1)
            .map(|(pack, _)| pack)
            .collect();
        cut.sort_unstable();
        // The two largest gaps within a segment are skipped (two requests each, the cap for five
        // packs); 2 MiB is beyond the cap, and 512 KiB is read rather than asked for apart.
        assert_eq!(cut, [0, 0, 1, 1, 4, 4]);
    }

    #[test]
    fn work_that_ends_early_or_panics_stops_the_readers() {
        let (repo, index, blobs) = repository(100);
        let order: Vec<Id> = blobs.iter().map(|(id, _)| *id).collect();
        let plan = PlannedReads::new(&repo, &index, order.clone(), true);
        assert_eq!(plan.run(|reads| reads.read(&order[0]).unwrap()), blobs[0].1);
        let plan = PlannedReads::new(&repo, &index, order, true);
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan.run(|_| panic!("the writer failed"))));
        assert!(panicked.is_err());
    }
}
