//! Repository locks (`locks/<id>`): commands that add or read data hold a shared lock, `prune`
//! holds an exclusive one, so a prune never deletes a pack that a running snapshot or sync has
//! written but not yet indexed, or that it is about to reference. See store-format/locks.md.
//!
//! A lock is a create-only file, so the scheme needs no atomic rename and works on object
//! stores. Taking a lock writes it, then lists the locks: two writers that race both see each
//! other's file, and at least one backs off. A lock is refreshed (rewritten under a new name)
//! every five minutes while held; one whose writer on this host is gone, or that the store has
//! not seen rewritten for 30 minutes, is stale.
//!
//! Ages are measured by the store's clock (each file's last-modified time, against that of the
//! file just written), never by the clock of the host that wrote the lock: a host whose clock is
//! wrong, or a hostile one, can neither make a running command's lock look abandoned nor keep an
//! abandoned one alive.
//!
//! A holder that may not delete (a host with create-only credentials for its offsite copy) ends
//! a lock file by writing its release marker `locks/<id>.released` instead; a holder that may
//! delete removes released lock files and their markers when it next looks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::backend::{permission_denied, Backend};
use crate::error::{Error, Result};
use crate::format::envelope;
use crate::id::Id;

pub const MAGIC: &[u8; 8] = b"CAIRNLCK";
pub const VERSION: u16 = 1;
/// How often a held lock is rewritten, and when an unrefreshed one counts as abandoned.
pub const REFRESH: Duration = Duration::from_secs(300);
pub const STALE_AFTER: Duration = Duration::from_secs(1800);
/// A holder whose last rewrite is older than this stops before its next commit write
/// ([`Lock::check_held`]): one refresh interval before others may call it stale.
pub const HELD_FOR_SURE: Duration = Duration::from_secs(STALE_AFTER.as_secs() - REFRESH.as_secs());
/// The end of a release marker's name: `locks/<name>.released` releases `locks/<name>`.
pub const RELEASED: &str = ".released";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// How a holder ends lock files: its own (on release, refresh, or backing off) and stale ones it
/// finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Delete them, and clear away released lock files and markers. Where the credentials do not
    /// allow a delete, fall back to [`Release::Mark`].
    Delete,
    /// Write a release marker for each; delete nothing (a holder with create-only rights).
    Mark,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub kind: LockKind,
    pub command: String,
    pub hostname: String,
    pub pid: u32,
    /// When it was (re)written, Unix milliseconds by the writer's clock (for messages, and for
    /// ages on stores that keep no modification times).
    pub time_ms: i64,
    pub nonce: String,
}

/// The body of a release marker: the lock file it ends, as a shared lock (what an older cairn,
/// which does not know markers, takes it for), and the name it releases.
#[derive(Serialize)]
struct Marker<'a> {
    #[serde(flatten)]
    lock: LockFile,
    releases: &'a str,
}

impl LockFile {
    pub fn encode(&self) -> Vec<u8> {
        envelope::seal(MAGIC, VERSION, &serde_json::to_vec(self).expect("lock files serialise"))
    }

    pub fn decode(data: &[u8], file: &str) -> Result<LockFile> {
        let (_, body) = envelope::open(data, MAGIC, VERSION, file)?;
        serde_json::from_slice(body).map_err(|e| Error::corrupt(file, format!("lock file: {e}")))
    }

    /// The release marker of this lock file, stored as `locks/<name>.released`.
    fn marker(&self, name: &str) -> Vec<u8> {
        let lock = LockFile { kind: LockKind::Shared, ..self.clone() };
        let body = serde_json::to_vec(&Marker { lock, releases: name }).expect("markers serialise");
        envelope::seal(MAGIC, VERSION, &body)
    }

    /// `age_ms`: since it was written, by the store's clock where known.
    fn is_stale(&self, age_ms: i64) -> bool {
        let ours = self.hostname == crate::backup::hostname();
        (ours && !crate::backend::local::process_alive(self.pid as i32)) || age_ms > STALE_AFTER.as_millis() as i64
    }

    fn describe(&self, age_ms: i64) -> String {
        format!(
            "{} lock of `cairn {}` (pid {} on {}, written {}s ago)",
            match self.kind {
                LockKind::Shared => "a shared",
                LockKind::Exclusive => "an exclusive",
            },
            self.command,
            self.pid,
            self.hostname,
            age_ms / 1000
        )
    }
}

/// One entry of `locks/`: key and last-modified time (Unix ms, the store's clock) if known.
type Listed = (String, Option<i64>);

fn list(backend: &dyn Backend) -> Result<Vec<Listed>> {
    Ok(backend.list_with_times("locks")?.into_iter().map(|(key, _, modified)| (key, modified)).collect())
}

/// The store's time, learnt from the last-modified time of a lock file just written and listed:
/// local monotonic time since that listing is added to it. It runs slightly behind the store
/// (the put and the listing took time), so ages it gives err toward young, that is, live.
#[derive(Clone, Copy)]
struct StoreClock {
    store_ms: i64,
    at: Instant,
}

impl StoreClock {
    fn of(listing: &[Listed], key: &str) -> Option<StoreClock> {
        let store_ms = listing.iter().find(|(k, _)| k == key)?.1?;
        Some(StoreClock { store_ms, at: Instant::now() })
    }

    fn now_ms(&self) -> i64 {
        self.store_ms + self.at.elapsed().as_millis() as i64
    }
}

/// The lock files of one repository, and how this process ends them.
struct Locks {
    backend: Arc<dyn Backend>,
    release: Release,
    /// Set once a delete was refused for want of rights: later ends go straight to markers.
    denied: AtomicBool,
}

impl Locks {
    fn write(&self, kind: LockKind, command: &str) -> Result<(String, LockFile)> {
        let file = LockFile {
            kind,
            command: command.to_string(),
            hostname: crate::backup::hostname(),
            pid: std::process::id(),
            time_ms: crate::audit::now_ms(),
            nonce: Id(crate::id::random_bytes()).short(),
        };
        let bytes = file.encode();
        let key = format!("locks/{}", Id::of(&bytes).to_hex());
        self.backend.put(&key, &bytes)?;
        Ok((key, file))
    }

    /// Ends the lock file `key` (whose content is `file`): deletes it, or writes its marker.
    fn end(&self, key: &str, file: &LockFile) -> Result<()> {
        if self.release == Release::Delete && !self.denied.load(Relaxed) {
            match self.backend.delete(key) {
                Err(e) if permission_denied(&e) => self.denied.store(true, Relaxed),
                done => return done,
            }
        }
        let name = key.rsplit('/').next().unwrap_or(key);
        self.backend.put(&format!("{key}{RELEASED}"), &file.marker(name)).map(|_| ())
    }

    /// Deletes a released lock file or a marker, where this holder may.
    fn clear(&self, key: &str) -> Result<()> {
        if self.release == Release::Mark || self.denied.load(Relaxed) {
            return Ok(());
        }
        match self.backend.delete(key) {
            Err(e) if permission_denied(&e) => {
                self.denied.store(true, Relaxed);
                Ok(())
            }
            done => done,
        }
    }

    /// The live locks in `listing`, other than `ours`, that conflict with `kind`, with their
    /// ages. Ends the stale ones and clears released ones on the way. `clock` is the store's
    /// time; without it, ages come from the writers' clocks.
    fn conflicts(
        &self,
        listing: &[Listed],
        kind: LockKind,
        ours: Option<&str>,
        clock: Option<StoreClock>,
    ) -> Result<Vec<(LockFile, i64)>> {
        let names: HashSet<&str> = listing.iter().map(|(key, _)| key.as_str()).collect();
        let (store_now, local_now) = (clock.map(|c| c.now_ms()), crate::audit::now_ms());
        let mut found = Vec::new();
        for (key, modified) in listing {
            if Some(key.as_str()) == ours {
                continue;
            }
            if let Some(released) = key.strip_suffix(RELEASED) {
                if !names.contains(released) {
                    self.clear(key)?; // its lock file was cleared before
                }
                continue;
            }
            let marker = format!("{key}{RELEASED}");
            if names.contains(marker.as_str()) {
                // The lock file first: a marker left alone is ignored, a lock file left alone
                // would count as live again.
                self.clear(key)?;
                self.clear(&marker)?;
                continue;
            }
            let lock = match self.backend.get(key).and_then(|bytes| LockFile::decode(&bytes, key)) {
                Ok(lock) => lock,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue, // released meanwhile
                Err(e) => return Err(Error::Invalid(format!("{e}: remove it by hand if no cairn is running"))),
            };
            let age = match (store_now, modified) {
                (Some(now), Some(modified)) => now - modified,
                _ => local_now - lock.time_ms,
            };
            if lock.is_stale(age) {
                self.end(key, &lock)?;
            } else if kind == LockKind::Exclusive || lock.kind == LockKind::Exclusive {
                found.push((lock, age));
            }
        }
        Ok(found)
    }
}

/// A held lock; released (its file deleted, or marked released) when dropped.
pub struct Lock {
    locks: Arc<Locks>,
    /// The current lock file: key and content.
    current: Arc<Mutex<(String, LockFile)>>,
    /// When the current lock file's put started, by the monotonic and the wall clock.
    written: Arc<Mutex<(Instant, SystemTime)>>,
    /// Set when a refresh came [`HELD_FOR_SURE`] or more after the write before it: the lock may
    /// have looked abandoned meanwhile, whatever it looks like now.
    lapsed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl Lock {
    /// Takes a lock of `kind` for `command`, waiting up to `wait` for conflicting ones to go.
    pub fn acquire(backend: Arc<dyn Backend>, kind: LockKind, command: &str, wait: Duration) -> Result<Lock> {
        Self::acquire_with(backend, kind, command, wait, Release::Delete)
    }

    /// [`Lock::acquire`], ending lock files as `release` says.
    pub fn acquire_with(
        backend: Arc<dyn Backend>,
        kind: LockKind,
        command: &str,
        wait: Duration,
        release: Release,
    ) -> Result<Lock> {
        let locks = Arc::new(Locks { backend, release, denied: AtomicBool::new(false) });
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut clock = None;
        loop {
            // Once the store's time is known (after the first round), look before writing, so
            // that waiting costs listings rather than lock files.
            let mut blocking = match clock {
                Some(clock) => locks.conflicts(&list(&*locks.backend)?, kind, None, Some(clock))?,
                None => Vec::new(),
            };
            if blocking.is_empty() {
                let before = (Instant::now(), SystemTime::now());
                let (key, file) = locks.write(kind, command)?;
                // Someone may have written theirs meanwhile: our own file in the listing also
                // tells the store's time.
                let listing = list(&*locks.backend)?;
                clock = StoreClock::of(&listing, &key).or(clock);
                blocking = locks.conflicts(&listing, kind, Some(&key), clock)?;
                if blocking.is_empty() {
                    return Ok(Lock::hold(locks, key, file, before));
                }
                locks.end(&key, &file)?;
            }
            if started.elapsed() >= wait {
                let (first, age) = &blocking[0];
                return Err(Error::Invalid(format!(
                    "the repository is locked by {}: try again when it has finished",
                    first.describe(*age)
                )));
            }
            // Jittered backoff, so two contenders do not keep colliding.
            let jitter = Duration::from_millis(u64::from(crate::id::random_bytes()[0]) * 2);
            std::thread::sleep(pause + jitter);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn hold(locks: Arc<Locks>, key: String, file: LockFile, written: (Instant, SystemTime)) -> Lock {
        let current = Arc::new(Mutex::new((key, file)));
        let written = Arc::new(Mutex::new(written));
        let (stop, lapsed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let refresher = {
            let (locks, current, written, stop, lapsed) =
                (locks.clone(), current.clone(), written.clone(), stop.clone(), lapsed.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Relaxed) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    if last.elapsed() >= REFRESH && !stop.load(Relaxed) {
                        let before = (Instant::now(), SystemTime::now());
                        let (kind, command) = {
                            let held = &current.lock().expect("poisoned").1;
                            (held.kind, held.command.clone())
                        };
                        if let Ok(new) = locks.write(kind, &command) {
                            let previous = std::mem::replace(&mut *written.lock().expect("poisoned"), before);
                            if since(previous) >= HELD_FOR_SURE {
                                lapsed.store(true, Relaxed);
                            }
                            let (old_key, old_file) = std::mem::replace(&mut *current.lock().expect("poisoned"), new);
                            let _ = locks.end(&old_key, &old_file);
                        }
                        last = Instant::now();
                    }
                }
            })
        };
        Lock { locks, current, written, lapsed, stop, refresher: Some(refresher) }
    }

    /// Fails if others may have taken this lock for abandoned at any time since it was taken:
    /// its file is now [`HELD_FOR_SURE`] old or older, or once was before a refresh (refreshes
    /// failed, or the process or its machine was stopped). A holder calls it before each write
    /// that relies on the lock (sync before its index files and each manifest), so that it never
    /// commits what a prune may have undercut.
    pub fn check_held(&self) -> Result<()> {
        let age = since(*self.written.lock().expect("poisoned"));
        if age < HELD_FOR_SURE && !self.lapsed.load(Relaxed) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "the lock on {} went unrenewed for {} s or more, so a prune may have taken it for \
             abandoned: stopping before anything else is written (run the command again)",
            self.locks.backend.location(),
            age.max(HELD_FOR_SURE).as_secs()
        )))
    }
}

/// Time since a moment taken by both clocks: the longer, as the monotonic one does not count
/// the time a suspended machine sleeps and the wall clock may be set back.
fn since((instant, wall): (Instant, SystemTime)) -> Duration {
    instant.elapsed().max(wall.elapsed().unwrap_or_default())
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.refresher.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        let (key, file) = &*self.current.lock().expect("poisoned");
        let _ = self.locks.end(key, file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use std::sync::atomic::AtomicU64;

    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cairn-lock-{}", Id(crate::id::random_bytes()).short()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A directory whose deletes are refused, as with create-only credentials.
    struct CreateOnly {
        inner: LocalBackend,
        deletes: AtomicU64,
    }

    impl Backend for CreateOnly {
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
            self.inner.list(prefix)
        }
        fn list_with_times(&self, prefix: &str) -> Result<Vec<(String, u64, Option<i64>)>> {
            self.inner.list_with_times(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.deletes.fetch_add(1, Relaxed);
            Err(Error::io(key, std::io::Error::from(std::io::ErrorKind::PermissionDenied)))
        }
        fn exists(&self, key: &str) -> Result<bool> {
            self.inner.exists(key)
        }
    }

    fn lock_file(kind: LockKind, hostname: &str, pid: u32, time_ms: i64) -> LockFile {
        LockFile { kind, command: "sync".into(), hostname: hostname.into(), pid, time_ms, nonce: "n".into() }
    }

    fn keys(backend: &dyn Backend) -> Vec<String> {
        backend.list("locks").unwrap().into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_ones_exclude() {
        let dir = scratch();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        let a = Lock::acquire(backend.clone(), LockKind::Shared, "snapshot", Duration::ZERO).unwrap();
        let b = Lock::acquire(backend.clone(), LockKind::Shared, "snapshot", Duration::ZERO).unwrap();
        let refused = Lock::acquire(backend.clone(), LockKind::Exclusive, "prune", Duration::ZERO).err().unwrap();
        assert!(refused.to_string().contains("shared lock of `cairn snapshot`"), "{refused}");
        drop((a, b));
        let exclusive = Lock::acquire(backend.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap();
        assert!(Lock::acquire(backend.clone(), LockKind::Shared, "snapshot", Duration::ZERO).is_err());
        drop(exclusive);
        assert!(backend.list("locks").unwrap().is_empty(), "released locks are removed");
        // A lock whose process is gone is stale and removed.
        let dead = lock_file(LockKind::Exclusive, &crate::backup::hostname(), i32::MAX as u32, crate::audit::now_ms());
        backend.put("locks/dead", &dead.encode()).unwrap();
        drop(Lock::acquire(backend.clone(), LockKind::Shared, "snapshot", Duration::ZERO).unwrap());
        assert!(backend.list("locks").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A holder that may not delete takes, refreshes and releases its lock and ends a stale one
    /// with puts alone; the next holder that may delete clears it all away.
    #[test]
    fn a_create_only_holder_releases_by_marker_and_never_deletes() {
        let dir = scratch();
        let create_only = Arc::new(CreateOnly { inner: LocalBackend::new(&dir), deletes: AtomicU64::new(0) });
        let backend: Arc<dyn Backend> = create_only.clone();
        let dead = lock_file(LockKind::Shared, &crate::backup::hostname(), i32::MAX as u32, crate::audit::now_ms());
        backend.put("locks/dead", &dead.encode()).unwrap();
        let held =
            Lock::acquire_with(backend.clone(), LockKind::Shared, "sync", Duration::ZERO, Release::Mark).unwrap();
        assert_eq!(keys(&*backend).len(), 3, "the stale lock is marked released: {:?}", keys(&*backend));
        // Markers are lock files to an older cairn, shared ones: they never hold off a snapshot.
        let marker = backend.get("locks/dead.released").unwrap();
        assert_eq!(LockFile::decode(&marker, "marker").unwrap().kind, LockKind::Shared);
        let trusted: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        let refused = Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO).err().unwrap();
        assert!(refused.to_string().contains("shared lock of `cairn sync`"), "a held lock holds: {refused}");
        drop(held);
        assert_eq!(create_only.deletes.load(Relaxed), 0, "not one delete was tried");
        let left = keys(&*backend);
        assert_eq!(left.len(), 2, "the lock file and its marker: {left:?}");
        assert!(left[1].ends_with(RELEASED) && left[1].starts_with(&left[0]), "{left:?}");
        // Released locks are not read again, and do not hold off an exclusive lock.
        drop(Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap());
        assert!(keys(&*trusted).is_empty(), "{:?}", keys(&*trusted));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Credentials that cannot delete turn an ordinary holder's deletes into markers.
    #[test]
    fn a_refused_delete_falls_back_to_a_marker() {
        let dir = scratch();
        let create_only = Arc::new(CreateOnly { inner: LocalBackend::new(&dir), deletes: AtomicU64::new(0) });
        drop(Lock::acquire(create_only.clone(), LockKind::Shared, "check", Duration::ZERO).unwrap());
        assert_eq!(create_only.deletes.load(Relaxed), 1);
        drop(Lock::acquire(create_only.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap());
        assert_eq!(keys(&*create_only).len(), 4, "{:?}", keys(&*create_only));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Ages come from the store: a lock just written by a host whose clock is two hours slow is
    /// live; one the store has not seen rewritten for two hours is stale, whatever time it claims.
    #[test]
    fn lock_ages_follow_the_stores_clock_not_the_writers() {
        let dir = scratch();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        let now = crate::audit::now_ms();
        let slow = lock_file(LockKind::Shared, "slow-clock", 1, now - 2 * 3600 * 1000);
        backend.put("locks/slow", &slow.encode()).unwrap();
        let refused = Lock::acquire(backend.clone(), LockKind::Exclusive, "prune", Duration::ZERO).err().unwrap();
        assert!(refused.to_string().contains("slow-clock"), "{refused}");
        std::fs::remove_file(dir.join("locks/slow")).unwrap();

        let future = lock_file(LockKind::Exclusive, "fast-clock", 1, now + 10 * 365 * 24 * 3600 * 1000);
        backend.put("locks/future", &future.encode()).unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(dir.join("locks/future"))
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        drop(Lock::acquire(backend.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap());
        assert!(keys(&*backend).is_empty(), "the abandoned lock was removed: {:?}", keys(&*backend));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_holder_whose_lock_went_unrenewed_stops() {
        let dir = scratch();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        let lock = Lock::acquire(backend, LockKind::Shared, "sync", Duration::ZERO).unwrap();
        lock.check_held().unwrap();
        lock.written.lock().unwrap().1 = SystemTime::now() - HELD_FOR_SURE;
        let error = lock.check_held().unwrap_err().to_string();
        assert!(error.contains("a prune may have taken it for abandoned"), "{error}");
        // Renewed since, but lapsed once: still not to be trusted.
        lock.written.lock().unwrap().1 = SystemTime::now();
        lock.check_held().unwrap();
        lock.lapsed.store(true, Relaxed);
        assert!(lock.check_held().is_err());
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
