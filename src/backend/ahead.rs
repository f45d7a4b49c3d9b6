//! Listings taken ahead of their use. A command that reads takes its lock and then needs the
//! listings of `snapshots/` and `index/`; on an object store each is a round trip, and the
//! repository cannot decode what they name until its key is derived. [`ListedAhead`] lists them
//! beside the key derivation, once the lock is held, and hands each listing to the next
//! [`Backend::list`] of its directory, once.
//!
//! A listing taken ahead is never older than the command's lock, and any write or delete through
//! this backend drops every listing still held, so a command never reads a listing from before its
//! own changes (an in-place restore's safety snapshot, a lock refreshed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Backend, RequestCounts, WholeObject};
use crate::error::Result;

pub struct ListedAhead {
    inner: Arc<dyn Backend>,
    listings: Mutex<Listings>,
}

#[derive(Default)]
struct Listings {
    by_dir: HashMap<String, Vec<(String, u64)>>,
    /// Counts the writes and deletes: a listing that a write overtook is not kept.
    writes: u64,
}

impl ListedAhead {
    pub fn new(inner: Arc<dyn Backend>) -> ListedAhead {
        ListedAhead { inner, listings: Mutex::new(Listings::default()) }
    }

    /// Lists `dirs` now, all at once, for the next [`Backend::list`] of each. A listing that
    /// fails is not kept, nor one that a write or delete through this backend overtook: the
    /// later `list` asks again.
    pub fn list_ahead(&self, dirs: &[&str]) {
        let writes = self.listings.lock().expect("poisoned").writes;
        type Listing = Result<Vec<(String, u64)>>;
        let listed: Vec<(&str, Listing)> = std::thread::scope(|scope| {
            let running: Vec<_> = dirs.iter().map(|dir| (*dir, scope.spawn(|| self.inner.list(dir)))).collect();
            running
                .into_iter()
                .map(|(dir, thread)| (dir, thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))))
                .collect()
        });
        let mut listings = self.listings.lock().expect("poisoned");
        if listings.writes != writes {
            return;
        }
        for (dir, listing) in listed {
            if let Ok(listing) = listing {
                listings.by_dir.insert(dir.to_string(), listing);
            }
        }
    }

    /// Every listing still held, or still being taken, is dropped: the store is about to change.
    fn forget(&self) {
        let mut listings = self.listings.lock().expect("poisoned");
        listings.by_dir.clear();
        listings.writes += 1;
    }
}

impl Backend for ListedAhead {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.inner.get(key)
    }

    fn read_once(&self, key: &str, out: &mut WholeObject) -> Result<()> {
        self.inner.read_once(key, out)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }

    fn get_parts(&self, key: &str, parts: &[(u64, usize)]) -> Result<Vec<Vec<u8>>> {
        self.inner.get_parts(key, parts)
    }

    fn size(&self, key: &str) -> Result<u64> {
        self.inner.size(key)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.forget();
        self.inner.put(key, data)
    }

    fn put_vec(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        self.forget();
        self.inner.put_vec(key, data)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        match self.listings.lock().expect("poisoned").by_dir.remove(prefix) {
            Some(listing) => Ok(listing),
            None => self.inner.list(prefix),
        }
    }

    fn list_with_times(&self, prefix: &str) -> Result<Vec<(String, u64, Option<i64>)>> {
        self.inner.list_with_times(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.forget();
        self.inner.delete(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key)
    }

    fn remove_stale_temp_files(&self) -> usize {
        self.forget();
        self.inner.remove_stale_temp_files()
    }

    fn disk_path(&self) -> Option<std::path::PathBuf> {
        self.inner.disk_path()
    }

    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    fn listed(backend: &dyn Backend, dir: &str) -> Vec<String> {
        backend.list(dir).unwrap().into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn a_listing_taken_ahead_serves_once_and_never_outlives_a_write() {
        let dir = crate::backend::local::tests::tempdir::Dir::new();
        let local = Arc::new(LocalBackend::new(dir.path()));
        for d in ["snapshots", "index"] {
            local.create_dir(d).unwrap();
        }
        local.put("snapshots/a", b"a").unwrap();
        let ahead = ListedAhead::new(local.clone());
        ahead.list_ahead(&["snapshots", "index"]);
        // Changed behind its back: the listing taken ahead is served, once.
        local.put("snapshots/b", b"b").unwrap();
        assert_eq!(listed(&ahead, "snapshots"), ["snapshots/a"]);
        assert_eq!(listed(&ahead, "snapshots"), ["snapshots/a", "snapshots/b"]);
        // A write through it drops what it still held.
        local.put("index/x", b"x").unwrap();
        ahead.put("snapshots/c", b"c").unwrap();
        assert_eq!(listed(&ahead, "index"), ["index/x"]);
        ahead.list_ahead(&["snapshots"]);
        ahead.delete("snapshots/c").unwrap();
        assert_eq!(listed(&ahead, "snapshots"), ["snapshots/a", "snapshots/b"]);
    }

    /// Lists only once told to, as a slow store would, and says when a listing has begun.
    struct Held {
        inner: LocalBackend,
        begun: Mutex<std::sync::mpsc::Sender<()>>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Backend for Held {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
            self.inner.get_range(key, offset, len)
        }
        fn size(&self, key: &str) -> Result<u64> {
            self.inner.size(key)
        }
        fn put(&self, key: &str, data: &[u8]) -> Result<bool> {
            self.inner.put(key, data)
        }
        fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
            self.begun.lock().unwrap().send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
        fn exists(&self, key: &str) -> Result<bool> {
            self.inner.exists(key)
        }
    }

    #[test]
    fn a_listing_that_a_write_overtook_is_not_kept() {
        let dir = crate::backend::local::tests::tempdir::Dir::new();
        let local = LocalBackend::new(dir.path());
        local.create_dir("snapshots").unwrap();
        let ((go, wait), (begin, begun)) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
        let held = Held { inner: local, begun: Mutex::new(begin), go: Mutex::new(wait) };
        let ahead = ListedAhead::new(Arc::new(held));
        std::thread::scope(|scope| {
            let listing = scope.spawn(|| ahead.list_ahead(&["snapshots"]));
            begun.recv().unwrap();
            // Written while the listing is on its way (a lock refused and deleted, say): the
            // listing may or may not show it, so it must not be served.
            ahead.put("snapshots/a", b"a").unwrap();
            go.send(()).unwrap();
            listing.join().unwrap();
        });
        assert!(ahead.listings.lock().unwrap().by_dir.is_empty(), "an overtaken listing was kept");
        go.send(()).unwrap();
        assert_eq!(listed(&ahead, "snapshots"), ["snapshots/a"]);
        begun.recv().unwrap();
    }
}
