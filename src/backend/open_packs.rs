//! Packs kept open for ranged reads, shared by every thread of a process.
//!
//! A restore of a database snapshotted daily for months reads its pages one by one from as many
//! packs as there were days: opening and closing a pack for each read was a tenth of its time
//! (79,000 opens for 109,000 pages). So up to [`KEPT`] packs stay open, the least recently read
//! closed first; a pack opened again after being closed for room doubles how many are kept (up to
//! [`MOST_KEPT`], and a quarter of the files this process may open): 32 still left a database of
//! 112 days opening a pack for every 2.4 pages (45,700 opens). Not for long: a pack that another process deletes (a prune while a
//! mount serves) keeps its disk space while it is open, so a pack not read for [`IDLE`] is
//! closed at the next read after that (a process that reads nothing more keeps them, as it kept
//! its last pack per thread before), and every pack opened before this process changed the
//! repository is opened again (the caller's `changes` count).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packs kept open at first.
const KEPT: usize = 32;

/// Packs kept open at most, however often packs are opened again.
const MOST_KEPT: usize = 1024;

/// Packs closed for room that are remembered, to tell when one is opened again.
const REMEMBERED: usize = 4096;

/// A pack not read for this long is closed at the next open.
const IDLE: Duration = Duration::from_secs(5);

pub(super) struct OpenPacks {
    files: HashMap<PathBuf, Open>,
    /// Counts reads: the stamp of the latest.
    clock: u64,
    /// When idle packs were last closed.
    swept: Instant,
    /// How many are kept now, and at most.
    kept: usize,
    most: usize,
    /// Packs closed for room since (at most [`REMEMBERED`]).
    closed: std::collections::HashSet<PathBuf>,
}

impl Default for OpenPacks {
    fn default() -> OpenPacks {
        let most =
            crate::fs_at::open_files_limit().map_or(KEPT, |files| (files / 4).clamp(1, MOST_KEPT as u64) as usize);
        OpenPacks {
            files: HashMap::new(),
            clock: 0,
            swept: Instant::now(),
            kept: KEPT.min(most),
            most,
            closed: Default::default(),
        }
    }
}

struct Open {
    /// The caller's count of changes when it was opened.
    changes: u64,
    /// When it was last read: a stamp, and the time.
    used: u64,
    at: Instant,
    file: Arc<File>,
}

impl OpenPacks {
    /// The pack at `path` if it is open and was opened under `changes`.
    pub(super) fn get(&mut self, path: &Path, changes: u64, now: Instant) -> Option<Arc<File>> {
        self.clock += 1;
        if now.saturating_duration_since(self.swept) >= IDLE {
            self.swept = now;
            self.files.retain(|_, open| now.saturating_duration_since(open.at) < IDLE);
        }
        let open = self.files.get_mut(path).filter(|open| open.changes == changes)?;
        (open.used, open.at) = (self.clock, now);
        Some(Arc::clone(&open.file))
    }

    /// Keeps `file`, just opened at `path` under `changes`, open; closes those opened under
    /// other changes, those idle too long, and the least recently read beyond [`KEPT`].
    /// Closes `path` if it is open (its file was deleted: its space is freed once closed).
    pub(super) fn close(&mut self, path: &Path) {
        self.files.remove(path);
    }

    pub(super) fn insert(&mut self, path: PathBuf, changes: u64, file: Arc<File>, now: Instant) {
        self.files.retain(|_, open| open.changes == changes && now.saturating_duration_since(open.at) < IDLE);
        if self.closed.remove(&path) {
            self.kept = (self.kept * 2).min(self.most);
        }
        if self.files.len() >= self.kept {
            if let Some(oldest) = self.files.iter().min_by_key(|(_, open)| open.used).map(|(path, _)| path.clone()) {
                self.files.remove(&oldest);
                if self.closed.len() >= REMEMBERED {
                    self.closed.clear();
                }
                self.closed.insert(oldest);
            }
        }
        self.clock += 1;
        self.files.insert(path, Open { changes, used: self.clock, at: now, file });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<File> {
        Arc::new(File::open("/dev/null").unwrap())
    }

    #[test]
    fn the_least_recently_read_is_closed_first() {
        let (mut open, now) = (OpenPacks::default(), Instant::now());
        for n in 0..KEPT {
            open.insert(PathBuf::from(format!("p{n}")), 0, file(), now);
        }
        assert!(open.get(Path::new("p0"), 0, now).is_some());
        open.insert(PathBuf::from("new"), 0, file(), now);
        assert_eq!(open.files.len(), KEPT);
        assert!(open.get(Path::new("p0"), 0, now).is_some(), "read last, so kept");
        assert!(open.get(Path::new("p1"), 0, now).is_none(), "the least recently read went");
    }

    #[test]
    fn packs_read_in_turn_again_and_again_end_up_all_open() {
        let (mut open, now) = (OpenPacks::default(), Instant::now());
        let mut opened = 0;
        for round in 0..6 {
            for n in 0..112 {
                let path = PathBuf::from(format!("p{n}"));
                if open.get(&path, 0, now).is_none() {
                    opened += 1;
                    open.insert(path, 0, file(), now);
                }
            }
            if round == 5 {
                assert_eq!(open.files.len(), 112);
            }
        }
        // Each pack is opened once, then again while the number kept doubles up to 128.
        assert!(opened < 112 * 3, "{opened} opens");
    }

    #[test]
    fn a_change_or_idleness_closes_packs() {
        let (mut open, now) = (OpenPacks::default(), Instant::now());
        open.insert(PathBuf::from("a"), 0, file(), now);
        assert!(open.get(Path::new("a"), 1, now).is_none(), "opened before a change: opened again");
        open.insert(PathBuf::from("b"), 1, file(), now);
        assert!(!open.files.contains_key(Path::new("a")));
        open.insert(PathBuf::from("c"), 1, file(), now + IDLE);
        assert!(!open.files.contains_key(Path::new("b")), "idle for {IDLE:?}: closed");
        assert!(open.get(Path::new("c"), 1, now + IDLE).is_some());
        open.insert(PathBuf::from("d"), 1, file(), now + IDLE);
        assert!(open.get(Path::new("c"), 1, now + 3 * IDLE).is_none(), "any read closes the idle");
        assert!(open.files.is_empty());
    }
}
