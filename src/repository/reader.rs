//! Reading many data blobs from an object store by pack, not by blob.
//!
//! A restore knows every blob it will read before it writes anything: the chunks of the files
//! below what it restores, in the order it writes them. [`PlannedReads`] groups them by pack
//! into "segments", one ranged GET each: the span of a pack's needed blobs (split only where a
//! span would exceed [`MAX_SEGMENT`]). Fetcher threads fetch the segments ahead of the writer,
//! several at once; a blob is decoded and checked (decrypted, decompressed, hashed against its
//! id, as by [`Repository::read_blob`]) when it is read.
//!
//! Memory stays within [`BUDGET`]: a segment's bytes are dropped once every planned read of its
//! blobs is made, and a fetcher only starts a segment when the bytes held and in flight leave
//! room for it. When they do not, it drops the decoded segment whose next planned read lies furthest
//! ahead (Belady's rule), if that is further than the segment it wants; a dropped segment is
//! fetched again, for the blobs still to be read only, when its turn comes. A segment the writer
//! is waiting for is fetched at once, whatever the budget, so the writer never waits on itself.
//!
//! The plan follows the writer's order (restore writes in plan order on an object store), but
//! nothing depends on it being right: a blob read more often than planned is read alone, and a
//! planned read never made (a file that failed half way) only leaves its segment first in line
//! to be dropped. Retries of dropped connections happen in the backend
//! ([`crate::backend::object`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::index::{Index, Location};
use super::Repository;
use crate::error::{Error, Result};
use crate::id::Id;

/// A segment spans at most this many bytes of its pack: packs are 16 MiB by default, so the
/// blobs a restore needs from one pack are read in one request.
pub const MAX_SEGMENT: u64 = 32 * 1024 * 1024;

/// Bytes of segments held and in flight beyond which no segment is fetched ahead.
pub const BUDGET: u64 = 96 * 1024 * 1024;

/// Segments fetched at once.
pub const FETCHERS: usize = 4;

pub struct PlannedReads<'a> {
    repo: &'a Repository,
    index: &'a Index,
    state: Mutex<State>,
    changed: Condvar,
}

struct Segment {
    pack: Id,
    /// The planned blobs in it, by offset.
    blobs: Vec<Id>,
    /// Plan positions of the reads of its blobs, in order; `next` of them are made.
    positions: Vec<u64>,
    next: usize,
    slot: Slot,
    /// Bytes it holds or has reserved in [`State::held`].
    held: u64,
}

enum Slot {
    /// Not fetched, or dropped to stay within the budget.
    Waiting,
    Fetching,
    /// The stored bytes of each blob still to be read.
    Ready(HashMap<Id, Arc<Vec<u8>>>),
    /// The fetch failed: every read of its blobs gets this error.
    Failed(String),
}

struct State {
    segments: Vec<Segment>,
    /// Each planned blob: its segment and reads left.
    blobs: HashMap<Id, (usize, u32)>,
    /// Waiting segments with reads left, by next planned read.
    waiting: BTreeSet<(u64, usize)>,
    /// Reads and skips made so far: where the writer is in the plan.
    position: u64,
    held: u64,
    stop: bool,
}

impl Segment {
    fn next_use(&self) -> Option<u64> {
        self.positions.get(self.next).copied()
    }
}

impl State {
    /// The next planned read of segment `n`, or `u64::MAX` when the writer has gone past it (a
    /// planned read that was never made): its bytes are the first to drop.
    fn due(&self, n: usize) -> u64 {
        match self.segments[n].next_use() {
            Some(at) if at + 1 >= self.position => at,
            _ => u64::MAX,
        }
    }

    fn wait_for_fetch(&mut self, n: usize) {
        if let Some(at) = self.segments[n].next_use() {
            self.waiting.insert((at, n));
        }
    }
}

impl<'a> PlannedReads<'a> {
    /// Plans reads of `blobs`, in the order they will be read (a blob read twice is listed
    /// twice). Blobs the index does not have are left to [`Repository::read_blob`], which
    /// reports them.
    pub fn new(repo: &'a Repository, index: &'a Index, blobs: impl IntoIterator<Item = Id>) -> PlannedReads<'a> {
        let mut positions: HashMap<Id, Vec<u64>> = HashMap::new();
        // Positions count planned reads only: blobs not in the index are never planned.
        for (at, id) in blobs.into_iter().filter(|id| index.contains(id)).enumerate() {
            positions.entry(id).or_default().push(at as u64);
        }
        let mut by_pack: HashMap<u32, Vec<(&Location, Id)>> = HashMap::new();
        for id in positions.keys() {
            let location = index.get(id).expect("only indexed blobs are planned");
            by_pack.entry(location.pack).or_default().push((location, *id));
        }
        let mut segments = Vec::new();
        for (pack, mut blobs) in by_pack {
            blobs.sort_by_key(|(location, _)| location.offset);
            let mut start = u64::MAX;
            let mut ids: Vec<Id> = Vec::new();
            for (location, id) in blobs {
                let end = location.offset as u64 + location.stored_len as u64;
                if !ids.is_empty() && end - start > MAX_SEGMENT {
                    segments.push((pack, std::mem::take(&mut ids)));
                }
                if ids.is_empty() {
                    start = location.offset as u64;
                }
                ids.push(id);
            }
            segments.push((pack, ids));
        }
        let mut state = State {
            segments: Vec::with_capacity(segments.len()),
            blobs: HashMap::with_capacity(positions.len()),
            waiting: BTreeSet::new(),
            position: 0,
            held: 0,
            stop: false,
        };
        for (n, (pack, ids)) in segments.into_iter().enumerate() {
            let mut reads = Vec::new();
            for id in &ids {
                let at = &positions[id];
                reads.extend_from_slice(at);
                state.blobs.insert(*id, (n, at.len() as u32));
            }
            reads.sort_unstable();
            let segment = Segment {
                pack: index.packs[pack as usize].0,
                blobs: ids,
                positions: reads,
                next: 0,
                slot: Slot::Waiting,
                held: 0,
            };
            state.segments.push(segment);
            state.wait_for_fetch(n);
        }
        PlannedReads { repo, index, state: Mutex::new(state), changed: Condvar::new() }
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
        let n = match state.blobs.get(id) {
            Some(&(n, left)) if left > 0 => n,
            // Not planned, or read more often than planned: read alone.
            _ => {
                drop(state);
                return self.repo.read_blob(self.index, id);
            }
        };
        loop {
            match &state.segments[n].slot {
                Slot::Ready(..) | Slot::Failed(_) => break,
                Slot::Fetching => state = self.changed.wait(state).expect("poisoned"),
                Slot::Waiting => {
                    let at = state.segments[n].next_use().unwrap_or(u64::MAX);
                    state.waiting.remove(&(at, n));
                    state = self.fetch(state, n);
                }
            }
        }
        let last = state.blobs.get(id).is_some_and(|&(_, left)| left == 1);
        let found = match &mut state.segments[n].slot {
            Slot::Ready(stored) => {
                let bytes = match last {
                    true => stored.remove(id),
                    false => stored.get(id).cloned(),
                };
                if let Some(bytes) = bytes.as_ref().filter(|_| last) {
                    state.segments[n].held -= bytes.len() as u64;
                    state.held -= bytes.len() as u64;
                }
                // A ready segment holds every blob with reads left; were it not so, the blob
                // would be read alone below rather than not at all.
                Ok(bytes)
            }
            Slot::Failed(message) => Err(message.clone()),
            _ => unreachable!("the loop above waits for these"),
        };
        let pack = state.segments[n].pack;
        self.used(&mut state, id, n);
        drop(state);
        let location = self.index.get(id).expect("planned blobs are indexed");
        match found {
            Ok(Some(stored)) => self.repo.decode_located(id, location, &stored, &pack),
            Ok(None) => self.repo.read_blob(self.index, id),
            Err(message) => Err(Error::io(
                format!("{}/{}", self.repo.backend().location(), Repository::pack_key(&pack)),
                std::io::Error::other(message),
            )),
        }
    }

    /// Tells the plan that `blobs` will not be read after all (a file left as it was).
    pub fn skip(&self, blobs: &[Id]) {
        let mut state = self.lock();
        for id in blobs {
            let Some(&(n, left)) = state.blobs.get(id) else { continue };
            if left == 0 {
                continue;
            }
            if let Slot::Ready(stored) = &mut state.segments[n].slot {
                if let Some(bytes) = (left == 1).then(|| stored.remove(id)).flatten() {
                    state.segments[n].held -= bytes.len() as u64;
                    state.held -= bytes.len() as u64;
                }
            }
            self.used(&mut state, id, n);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("poisoned")
    }

    /// One planned read of `id`, in segment `n`, made (or skipped).
    fn used(&self, state: &mut State, id: &Id, n: usize) {
        state.position += 1;
        if let Some((_, left)) = state.blobs.get_mut(id) {
            *left = left.saturating_sub(1);
        }
        let waiting = matches!(state.segments[n].slot, Slot::Waiting);
        if waiting {
            state.waiting.remove(&(state.segments[n].next_use().unwrap_or(u64::MAX), n));
        }
        let segment = &mut state.segments[n];
        segment.next = (segment.next + 1).min(segment.positions.len());
        if segment.next_use().is_none() {
            if let Slot::Ready(..) | Slot::Failed(_) = segment.slot {
                state.held -= segment.held;
                segment.held = 0;
                segment.slot = Slot::Waiting;
            }
        } else if waiting {
            state.wait_for_fetch(n);
        }
        self.changed.notify_all();
    }

    /// A fetcher: fetches the waiting segment needed soonest while the budget allows, until told
    /// to stop.
    fn fetch_ahead(&self) {
        let mut state = self.lock();
        while !state.stop {
            let Some(&(at, n)) = state.waiting.first() else {
                state = self.changed.wait(state).expect("poisoned");
                continue;
            };
            let need = self.reserve(&state, n);
            if state.held > 0 && state.held + need > BUDGET && !self.drop_one_due_after(&mut state, at) {
                state = self.changed.wait(state).expect("poisoned");
                continue;
            }
            if state.held == 0 || state.held + need <= BUDGET {
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

    /// The blobs of segment `n` still to be read, and the range of the pack that holds them.
    fn remaining(&self, state: &State, n: usize) -> (Vec<(Id, Location)>, u64, u64) {
        let blobs: Vec<(Id, Location)> = (state.segments[n].blobs.iter())
            .filter(|id| state.blobs.get(id).is_some_and(|&(_, left)| left > 0))
            .map(|id| (*id, *self.index.get(id).expect("planned blobs are indexed")))
            .collect();
        let start = blobs.iter().map(|(_, l)| l.offset as u64).min().unwrap_or(0);
        let end = blobs.iter().map(|(_, l)| l.offset as u64 + l.stored_len as u64).max().unwrap_or(0);
        (blobs, start, end)
    }

    /// Bytes a fetch of segment `n` holds: the range of its blobs still to be read.
    fn reserve(&self, state: &State, n: usize) -> u64 {
        let (_, start, end) = self.remaining(state, n);
        end - start
    }

    /// Fetches segment `n` (taken out of the waiting set) with the lock released, and returns
    /// the lock. It keeps the stored bytes of the blobs still to be read, each on its own, so
    /// that each is dropped as soon as its last read is made.
    fn fetch<'s>(&'s self, mut state: MutexGuard<'s, State>, n: usize) -> MutexGuard<'s, State> {
        let (blobs, start, end) = self.remaining(&state, n);
        state.held += end - start;
        let segment = &mut state.segments[n];
        segment.slot = Slot::Fetching;
        segment.held = end - start;
        let key = Repository::pack_key(&segment.pack);
        drop(state);
        let fetched = self.repo.backend().get_range(&key, start, end - start).map(|span| {
            let blob = |(id, l): &(Id, Location)| {
                let at = (l.offset as u64 - start) as usize;
                (*id, Arc::new(span[at..at + l.stored_len as usize].to_vec()))
            };
            blobs.iter().map(blob).collect::<HashMap<_, _>>()
        });
        let mut guard = self.lock();
        let state = &mut *guard;
        state.held -= end - start;
        state.segments[n].held = 0;
        state.segments[n].slot = match fetched {
            Ok(mut stored) => {
                // Less the blobs skipped while it was on its way.
                let blobs = &state.blobs;
                stored.retain(|id, _| blobs.get(id).is_some_and(|&(_, left)| left > 0));
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
        self.changed.notify_all();
        guard
    }
}
