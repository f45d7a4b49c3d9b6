//! Which packs ranged reads have moved on from, and when their pages may leave the page cache.
//!
//! A local restore reads packs through the page cache. Left there, a repository's worth of
//! packs that no one reads again (7.4 GiB at a million files) evicts what the machine's services
//! keep cached, and on a virtual machine the restored files' new pages cost several times more
//! than reusing the packs' memory (a million files: 48.5 s with every pack kept, 39-42 s with
//! each dropped once four others were left after it). So packs a thread has moved on from are
//! dropped (`POSIX_FADV_DONTNEED`), oldest first, once more than [`Left::keep`] are left.
//!
//! But a file whose chunks lie in many packs comes back to each of them again and again: a
//! database snapshotted daily for months has each day's changed pages in that day's pack. Four
//! kept packs then made every return a read from disk (the last of 30 daily snapshots of a
//! 300 MiB database restored in 7.5 s, 2.4 s with nothing dropped; after 164 days, 38.6 s
//! against 2.3 s for the first). So a pack opened again after it was dropped doubles the number
//! kept, up to [`MAX_KEPT`]: a restore that reads each pack once drops as before, and one that
//! returns pays for a few returns before its packs stay.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

/// Packs kept when no return has been seen: enough that the other threads are done with them,
/// and that a pack of trees, read between packs of data, stays.
const FIRST_KEPT: usize = 4;

/// The most packs kept (16 GiB of 16 MiB packs: in practice, every pack a restore comes back to).
const MAX_KEPT: usize = 1024;

/// Dropped packs remembered, to notice a return to one.
const REMEMBERED: usize = 4096;

/// The packs left behind, kept and dropped.
#[derive(Debug)]
pub(super) struct Left {
    /// How many left packs stay cached.
    keep: usize,
    /// Counts leavings: the stamp of the latest.
    clock: u64,
    /// Kept packs, with the stamp of when they were last left.
    kept: HashMap<PathBuf, u64>,
    /// The same, oldest first.
    by_age: BTreeMap<u64, PathBuf>,
    /// Packs dropped from the cache, each with the stamp of its latest drop, and the drops in
    /// order (a pack dropped, read again and dropped again is in it twice; only its latest drop
    /// forgets it).
    dropped: HashMap<PathBuf, u64>,
    dropped_order: VecDeque<(u64, PathBuf)>,
}

impl Default for Left {
    fn default() -> Left {
        Left {
            keep: FIRST_KEPT,
            clock: 0,
            kept: HashMap::new(),
            by_age: BTreeMap::new(),
            dropped: HashMap::new(),
            dropped_order: VecDeque::new(),
        }
    }
}

impl Left {
    /// A thread moves on from `previous` (if it read one) to read from `path`: the packs to drop
    /// from the page cache now. `path` is taken in first, so that leaving `previous` never drops
    /// the pack about to be read.
    pub(super) fn moved(&mut self, previous: Option<PathBuf>, path: &Path) -> Vec<PathBuf> {
        self.opening(path);
        previous.map(|previous| self.left(previous)).unwrap_or_default()
    }

    /// A thread opens `path` to read from it: a return to a dropped pack keeps twice as many.
    /// A pack being read is not one to drop; it is kept again when it is left.
    fn opening(&mut self, path: &Path) {
        if let Some(stamp) = self.kept.remove(path) {
            self.by_age.remove(&stamp);
        }
        if self.dropped.remove(path).is_some() {
            self.keep = (self.keep * 2).min(MAX_KEPT);
        }
    }

    /// A thread moved on from `path`: the packs to drop from the page cache now, if any.
    fn left(&mut self, path: PathBuf) -> Vec<PathBuf> {
        self.clock += 1;
        if let Some(stamp) = self.kept.insert(path.clone(), self.clock) {
            self.by_age.remove(&stamp);
        }
        self.by_age.insert(self.clock, path);
        let mut drop = Vec::new();
        while self.kept.len() > self.keep {
            let (_, oldest) = self.by_age.pop_first().expect("as many as kept");
            self.kept.remove(&oldest);
            self.remember(oldest.clone());
            drop.push(oldest);
        }
        drop
    }

    fn remember(&mut self, path: PathBuf) {
        self.dropped.insert(path.clone(), self.clock);
        self.dropped_order.push_back((self.clock, path));
        if self.dropped_order.len() > REMEMBERED {
            if let Some((stamp, forgotten)) = self.dropped_order.pop_front() {
                if self.dropped.get(&forgotten) == Some(&stamp) {
                    self.dropped.remove(&forgotten);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `packs` in order (opening each, leaving the one before): the packs dropped.
    fn read(left: &mut Left, last: &mut Option<PathBuf>, packs: impl IntoIterator<Item = usize>) -> Vec<PathBuf> {
        let mut dropped = Vec::new();
        for pack in packs {
            let path = PathBuf::from(format!("packs/{pack}"));
            if last.as_ref() == Some(&path) {
                continue;
            }
            let previous = last.replace(path.clone());
            dropped.extend(left.moved(previous, &path));
        }
        dropped
    }

    #[test]
    fn packs_read_once_are_dropped_four_behind() {
        let (mut left, mut last) = (Left::default(), None);
        let dropped = read(&mut left, &mut last, 0..100);
        let expected: Vec<PathBuf> = (0..95).map(|p| PathBuf::from(format!("packs/{p}"))).collect();
        assert_eq!(dropped, expected);
        assert_eq!(left.keep, FIRST_KEPT);
    }

    #[test]
    fn a_file_that_keeps_returning_to_its_packs_stops_dropping_them() {
        let (mut left, mut last) = (Left::default(), None);
        // Thirty packs visited round and round, as a database's pages from thirty days.
        let first_rounds = read(&mut left, &mut last, (0..3).flat_map(|_| 0..30));
        assert!(!first_rounds.is_empty());
        let later = read(&mut left, &mut last, (0..20).flat_map(|_| 0..30));
        assert_eq!(later, Vec::<PathBuf>::new(), "once the returns were seen, every pack stays");
        assert!(left.keep >= 30 && left.keep <= MAX_KEPT);
    }

    #[test]
    fn a_pack_left_again_is_kept_from_then() {
        let (mut left, mut last) = (Left::default(), None);
        // 0 is left, 1..4 follow, then 0 again: it is the newest, so 1 goes first.
        let dropped = read(&mut left, &mut last, [0, 1, 2, 3, 4, 0, 5]);
        assert_eq!(dropped, vec![PathBuf::from("packs/1")]);
    }

    #[test]
    fn a_pack_dropped_twice_is_remembered_by_its_latest_drop() {
        let mut left = Left::default();
        let pack = PathBuf::from("packs/again");
        left.remember(pack.clone());
        left.opening(&pack);
        left.clock += 1;
        left.remember(pack.clone());
        let keep = left.keep;
        for n in 0..REMEMBERED - 1 {
            left.clock += 1;
            left.remember(PathBuf::from(format!("packs/{n}")));
        }
        left.opening(&pack);
        assert_eq!(left.keep, keep * 2, "the first drop's turn to be forgotten came, not the second's");
    }

    #[test]
    fn the_number_kept_is_bounded_and_so_is_what_is_remembered() {
        let (mut left, mut last) = (Left::default(), None);
        read(&mut left, &mut last, (0..4).flat_map(|_| 0..3000));
        assert_eq!(left.keep, MAX_KEPT);
        assert_eq!(left.kept.len(), MAX_KEPT);
        assert!(left.dropped.len() <= REMEMBERED && left.dropped_order.len() <= REMEMBERED);
    }
}
