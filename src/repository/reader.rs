//! Reading many data blobs from an object store by pack, not by blob.
//!
//! A restore knows every blob it will read before it writes anything: the chunks of the files
//! below what it restores, in walk order. [`PlannedReads`] groups them by pack, merges blobs
//! that lie close together in one pack into one range ([`GAP`]; a restore that needs most of a
//! pack reads it whole in one request), and fetches those ranges ("segments") on a few threads,
//! ahead of the readers, in the order the walk will first need them. A blob is decoded and
//! checked against its id when it is read, as by [`Repository::read_blob`].
//!
//! Memory stays bounded. A segment is dropped once every planned read of its blobs is made; the
//! fetchers only read ahead while fetched segments hold less than [`BUDGET`]; a reader that needs
//! a segment nobody fetched yet fetches it itself; and beyond twice the budget the segments read
//! least recently are dropped, to be fetched again if they are needed after all. (Restore writes
//! directories in parallel, so its readers are not exactly in walk order.)
//!
//! A failed fetch has been tried again by the backend already (a connection dropped in the middle
//! of a body too: [`crate::backend::object`]). Blobs nobody planned are read one by one.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::index::{Index, Location};
use super::Repository;
use crate::error::{Error, Result};
use crate::id::Id;

/// Blobs of one pack at most this far apart are read in one request: on a link of 100 Mbit/s
/// with 20 ms round trips, reading 256 KiB more costs about what another request does.
pub const GAP: u64 = 256 * 1024;

/// A segment is at most this long: packs are 16 MiB by default, so a pack is read whole.
pub const MAX_SEGMENT: u64 = 32 * 1024 * 1024;

/// Bytes of fetched segments beyond which the fetchers stop reading ahead.
pub const BUDGET: u64 = 96 * 1024 * 1024;

/// Segments fetched at once, ahead of the readers.
pub const FETCHERS: usize = 4;

/// Segments a reader's first touch of a segment asks to be fetched after it.
const READ_AHEAD: usize = 3;

pub struct PlannedReads<'a> {
    repo: &'a Repository,
    index: &'a Index,
    state: Mutex<State>,
    changed: Condvar,
}

struct Segment {
    pack: Id,
    offset: u64,
    len: u64,
    /// Planned reads of its blobs not made yet.
    uses: u64,
    slot: Slot,
    /// When a reader last took a blob from it, on [`State::clock`].
    last_read: u64,
}

enum Slot {
    /// Not fetched (or dropped to stay within the budget).
    Waiting,
    Fetching,
    Ready(Arc<Vec<u8>>),
    Failed(String),
    /// Every planned read made: dropped.
    Done,
}

struct State {
    /// In the order the walk first needs them.
    segments: Vec<Segment>,
    /// Each planned blob's segment.
    blobs: HashMap<Id, usize>,
    /// Segments the fetchers are asked to read, in order.
    queue: std::collections::VecDeque<usize>,
    /// Bytes held by fetched segments and segments being fetched.
    resident: u64,
    clock: u64,
    stop: bool,
}

impl<'a> PlannedReads<'a> {
    /// Plans reads of `blobs` (in the order they will be read; repeats are planned reads too)
    /// from `repo`. Blobs the index does not have are left to [`Repository::read_blob`], which
    /// reports them.
    pub fn new(repo: &'a Repository, index: &'a Index, blobs: impl IntoIterator<Item = Id>) -> PlannedReads<'a> {
        // Each distinct blob's planned reads, in order of the first.
        let mut uses: HashMap<Id, (usize, u64)> = HashMap::new();
        for id in blobs {
            let next = uses.len();
            uses.entry(id).or_insert((next, 0)).1 += 1;
        }
        let mut by_pack: HashMap<u32, Vec<(&Location, Id, usize, u64)>> = HashMap::new();
        for (id, &(first, count)) in &uses {
            if let Some(location) = index.get(id) {
                by_pack.entry(location.pack).or_default().push((location, *id, first, count));
            }
        }
        let mut segments: Vec<(usize, Segment, Vec<Id>)> = Vec::new();
        for (pack, mut blobs) in by_pack {
            blobs.sort_by_key(|(location, ..)| location.offset);
            let mut current: Option<(usize, Segment, Vec<Id>)> = None;
            for (location, id, first, count) in blobs {
                let (start, end) = (location.offset as u64, location.offset as u64 + location.stored_len as u64);
                if let Some((segment_first, segment, ids)) = &mut current {
                    let segment_end = segment.offset + segment.len;
                    if start <= segment_end + GAP && end - segment.offset <= MAX_SEGMENT {
                        segment.len = segment.len.max(end - segment.offset);
                        segment.uses += count;
                        *segment_first = (*segment_first).min(first);
                        ids.push(id);
                        continue;
                    }
                    segments.extend(current.take());
                }
                let segment = Segment {
                    pack: index.packs[pack as usize].0,
                    offset: start,
                    len: end - start,
                    uses: count,
                    slot: Slot::Waiting,
                    last_read: 0,
                };
                current = Some((first, segment, vec![id]));
            }
            segments.extend(current);
        }
        segments.sort_by_key(|(first, ..)| *first);
        let mut blobs = HashMap::with_capacity(uses.len());
        let segments: Vec<Segment> = segments
            .into_iter()
            .enumerate()
            .map(|(n, (_, segment, ids))| {
                blobs.extend(ids.into_iter().map(|id| (id, n)));
                segment
            })
            .collect();
        let queue = (0..segments.len().min(FETCHERS + READ_AHEAD)).collect();
        let state = State { segments, blobs, queue, resident: 0, clock: 0, stop: false };
        PlannedReads { repo, index, state: Mutex::new(state), changed: Condvar::new() }
    }

    /// Requests the plan needs at least: one per segment.
    pub fn segments(&self) -> usize {
        self.lock().segments.len()
    }

    /// Runs `work` with this plan's fetchers reading ahead; they stop when it returns.
    pub fn run<R>(&self, work: impl FnOnce(&Self) -> R) -> R {
        std::thread::scope(|scope| {
            for _ in 0..FETCHERS {
                scope.spawn(|| self.fetch_ahead());
            }
            let result = work(self);
            self.lock().stop = true;
            self.changed.notify_all();
            result
        })
    }

    /// The plain content of blob `id`, checked.
    pub fn read(&self, id: &Id) -> Result<Vec<u8>> {
        let mut state = self.lock();
        let Some(&n) = state.blobs.get(id) else {
            drop(state);
            return self.repo.read_blob(self.index, id);
        };
        let bytes = loop {
            match &state.segments[n].slot {
                Slot::Ready(bytes) => break bytes.clone(),
                Slot::Fetching => state = self.changed.wait(state).expect("poisoned"),
                Slot::Waiting => state = self.fetch(state, n),
                Slot::Failed(message) => {
                    let message = message.clone();
                    self.used(&mut state, n);
                    return Err(Error::io(
                        format!("{}/{}", self.repo.backend().location(), Repository::pack_key(&state.segments[n].pack)),
                        std::io::Error::other(message),
                    ));
                }
                // Read more often than planned: the plan was wrong; read it alone.
                Slot::Done => {
                    drop(state);
                    return self.repo.read_blob(self.index, id);
                }
            }
        };
        let segment = &state.segments[n];
        let (pack, offset) = (segment.pack, segment.offset);
        if segment.last_read == 0 {
            // First touch: whoever reads this now reads the next segments soon.
            let next: Vec<usize> = (n + 1..state.segments.len().min(n + 1 + READ_AHEAD)).collect();
            state.queue.extend(next);
            self.changed.notify_all();
        }
        self.used(&mut state, n);
        drop(state);
        let location = self.index.get(id).expect("planned blobs are indexed");
        let start = (location.offset as u64 - offset) as usize;
        let stored = &bytes[start..start + location.stored_len as usize];
        self.repo.decode_located(id, location, stored, &pack)
    }

    /// Tells the plan that `blobs` will not be read after all (a file left as it was), so their
    /// segments are not kept for them.
    pub fn skip(&self, blobs: &[Id]) {
        let mut state = self.lock();
        for id in blobs {
            if let Some(&n) = state.blobs.get(id) {
                self.used(&mut state, n);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("poisoned")
    }

    /// One planned read of segment `n` made: the last one drops it.
    fn used(&self, state: &mut State, n: usize) {
        state.clock += 1;
        let clock = state.clock;
        let segment = &mut state.segments[n];
        segment.uses = segment.uses.saturating_sub(1);
        segment.last_read = clock;
        if segment.uses == 0 {
            if matches!(segment.slot, Slot::Ready(_)) {
                state.resident -= segment.len;
            }
            if !matches!(segment.slot, Slot::Fetching) {
                segment.slot = Slot::Done;
            }
            self.changed.notify_all();
        }
    }

    /// A fetcher: reads the queued segments while the budget allows, until told to stop.
    fn fetch_ahead(&self) {
        let mut state = self.lock();
        loop {
            if state.stop {
                return;
            }
            let next = state.queue.front().copied();
            match next {
                Some(n) if !matches!(state.segments[n].slot, Slot::Waiting) || state.segments[n].uses == 0 => {
                    state.queue.pop_front();
                }
                Some(n) if state.resident == 0 || state.resident + state.segments[n].len <= BUDGET => {
                    state.queue.pop_front();
                    state = self.fetch(state, n);
                }
                _ => state = self.changed.wait(state).expect("poisoned"),
            }
        }
    }

    /// Fetches segment `n` (which is waiting) with the lock released, and returns it taken again.
    fn fetch<'s>(&'s self, mut state: MutexGuard<'s, State>, n: usize) -> MutexGuard<'s, State> {
        let segment = &mut state.segments[n];
        segment.slot = Slot::Fetching;
        let (key, offset, len) = (Repository::pack_key(&segment.pack), segment.offset, segment.len);
        state.resident += len;
        drop(state);
        let fetched = self.repo.backend().get_range(&key, offset, len);
        let mut state = self.lock();
        let segment = &mut state.segments[n];
        match fetched {
            Ok(_) if segment.uses == 0 => {
                segment.slot = Slot::Done;
                state.resident -= len;
            }
            Ok(bytes) => segment.slot = Slot::Ready(Arc::new(bytes)),
            Err(e) => {
                segment.slot = Slot::Failed(e.to_string());
                state.resident -= len;
            }
        }
        self.evict(&mut state, n);
        self.changed.notify_all();
        state
    }

    /// Beyond twice the budget, drops the fetched segments read least recently (never `keep`,
    /// just fetched) until within the budget again.
    fn evict(&self, state: &mut State, keep: usize) {
        while state.resident > 2 * BUDGET {
            let oldest = (state.segments.iter().enumerate())
                .filter(|(n, s)| *n != keep && matches!(s.slot, Slot::Ready(_)))
                .min_by_key(|(_, s)| s.last_read)
                .map(|(n, _)| n);
            let Some(n) = oldest else { return };
            state.segments[n].slot = Slot::Waiting;
            state.resident -= state.segments[n].len;
            if state.resident <= BUDGET {
                return;
            }
        }
    }
}
