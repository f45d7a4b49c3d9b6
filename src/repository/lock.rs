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
//! its lock file by writing a release marker instead; a holder that may delete removes released
//! lock files and their markers when it next looks. A marker is commit-reveal: a lock file is
//! named by the BLAKE3 hash of a secret that only its writer knows, and its marker's name reveals
//! that secret, so a reader can tell by the names alone (no read) that the marker is the
//! holder's. Anyone else's marker (a compromised host's, written to let its writes run during a
//! prune) releases nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
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
/// The end of a release marker's name: `locks/<name>.<secret>.released` releases `locks/<name>`
/// if `<name>` is the BLAKE3 hash of `<secret>`.
pub const RELEASED: &str = ".released";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// How a holder ends its own lock files (on release, after a refresh, or backing off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Delete them; also delete stale lock files, and clear away released lock files and
    /// markers. Where the credentials do not allow a delete, fall back to [`Release::Mark`].
    Delete,
    /// Write the release marker of each; delete nothing (a holder with create-only rights).
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
/// which does not know markers, takes it for), and the name it releases. Readers never read it:
/// what counts is the marker's name.
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

    /// The body of this lock file's release marker.
    fn marker(&self, name: &str) -> Vec<u8> {
        let lock = LockFile { kind: LockKind::Shared, ..self.clone() };
        let body = serde_json::to_vec(&Marker { lock, releases: name }).expect("markers serialise");
        envelope::seal(MAGIC, VERSION, &body)
    }

    /// `age_ms`: since it was written, by the store's clock where known.
    fn is_stale(&self, age_ms: i64) -> bool {
        let ours = self.hostname == crate::host::hostname();
        (ours && !crate::host::process_alive(self.pid as i32)) || age_ms > STALE_AFTER.as_millis() as i64
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

/// A lock file this process wrote: its key `locks/<hex of BLAKE3(secret)>`, its content, and
/// the secret, which stays in memory until the release marker reveals it.
struct Own {
    key: String,
    file: LockFile,
    secret: [u8; 32],
}

impl Own {
    /// `locks/<name>.<secret>.released`.
    fn marker_key(&self) -> String {
        format!("{}.{}{RELEASED}", self.key, Id(self.secret).to_hex())
    }
}

/// For a key ending in [`RELEASED`]: the key of the lock file that the marker names, and whether
/// the marker is that lock's holder's (the 32-byte secret in its name hashes to the lock file's
/// name). A marker of the form `<name>.released` (older cairn's) names `<name>` but reveals
/// nothing, so it is nobody's. `None` for every other key.
fn marker_target(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_suffix(RELEASED)?;
    let Some((lock, secret)) = rest.rsplit_once('.') else {
        return Some((rest, false));
    };
    let name = lock.rsplit('/').next().unwrap_or(lock);
    let genuine = Id::from_hex(secret).is_some_and(|secret| Id::of(&secret.0).to_hex() == name);
    Some((lock, genuine))
}

/// One entry of `locks/`: key and last-modified time (Unix ms, the store's clock) if known.
type Listed = (String, Option<i64>);

fn list(backend: &dyn Backend) -> Result<Vec<Listed>> {
    Ok(backend
        .list_with_times(super::FileKind::Lock.dir())?
        .into_iter()
        .map(|(key, _, modified)| (key, modified))
        .collect())
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
    /// Markers seen that name a listed lock file but are not its holder's (see
    /// [`Lock::forged_markers`]).
    forged: Mutex<BTreeSet<String>>,
}

impl Locks {
    /// Writes a new lock file, named by the hash of a fresh secret (each refresh gets its own:
    /// two files never share a name, and revealing one secret releases one file).
    fn write(&self, kind: LockKind, command: &str) -> Result<Own> {
        let file = LockFile {
            kind,
            command: command.to_string(),
            hostname: crate::host::hostname(),
            pid: std::process::id(),
            time_ms: crate::clock::now_ms(),
            nonce: Id(crate::id::random_bytes()).short(),
        };
        let secret = crate::crypto::secure_random::<32>();
        let key = super::FileKind::Lock.name(&Id::of(&secret));
        self.backend.put(&key, &file.encode())?;
        Ok(Own { key, file, secret })
    }

    /// Ends our own lock file: deletes it, or writes its marker, revealing its secret.
    fn end(&self, own: &Own) -> Result<()> {
        if self.release == Release::Delete && !self.denied.load(Relaxed) {
            match self.backend.delete(&own.key) {
                Err(e) if permission_denied(&e) => self.denied.store(true, Relaxed),
                done => return done,
            }
        }
        let name = own.key.rsplit('/').next().unwrap_or(&own.key);
        self.backend.put(&own.marker_key(), &own.file.marker(name)).map(|_| ())
    }

    /// Deletes a stale lock file, a released one or a marker, where this holder may. A holder
    /// that may not delete leaves a stale lock file of another as it is: it cannot write that
    /// file's marker (only the holder knows the secret), and every reader judges it stale by the
    /// same rules.
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
    /// ages. Clears stale and released ones on the way, and every marker that releases nothing
    /// listed. `clock` is the store's time; without it, ages come from the writers' clocks.
    fn conflicts(
        &self,
        listing: &[Listed],
        kind: LockKind,
        ours: Option<&str>,
        clock: Option<StoreClock>,
    ) -> Result<Vec<(LockFile, i64)>> {
        let names: HashSet<&str> = listing.iter().map(|(key, _)| key.as_str()).collect();
        // Lock files released by their holders' markers, found by the names alone.
        let released: HashMap<&str, &str> = listing
            .iter()
            .filter_map(|(key, _)| match marker_target(key) {
                Some((lock, true)) if names.contains(lock) => Some((lock, key.as_str())),
                _ => None,
            })
            .collect();
        let (store_now, local_now) = (clock.map(|c| c.now_ms()), crate::clock::now_ms());
        let mut found = Vec::new();
        for (key, modified) in listing {
            if Some(key.as_str()) == ours {
                continue;
            }
            if let Some((lock, genuine)) = marker_target(key) {
                if genuine && names.contains(lock) {
                    continue; // cleared after its lock file
                }
                if names.contains(lock) {
                    // Not the holder's: the lock counts as if the marker were not there.
                    self.forged.lock().expect("poisoned").insert(key.clone());
                }
                self.clear(key)?; // releases nothing listed: an orphan, or nobody's
                continue;
            }
            if let Some(marker) = released.get(key.as_str()) {
                // The lock file first: a marker left alone is an orphan, a lock file left alone
                // would count as live again.
                self.clear(key)?;
                self.clear(marker)?;
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
                self.clear(key)?;
            } else if kind == LockKind::Exclusive || lock.kind == LockKind::Exclusive {
                found.push((lock, age));
            }
        }
        Ok(found)
    }
}

/// The hosts and processes that hold live lock files (neither stale nor released), read without
/// clearing anything: for `cairn status`, to tell a run of another host that is still going from
/// one that was killed.
pub fn live_holders(backend: &dyn Backend) -> Result<Vec<(String, u32)>> {
    let listing = list(backend)?;
    let released: HashSet<&str> = listing
        .iter()
        .filter_map(|(key, _)| match marker_target(key) {
            Some((lock, true)) => Some(lock),
            _ => None,
        })
        .collect();
    let now = crate::clock::now_ms();
    let mut holders = Vec::new();
    for (key, _) in listing.iter().filter(|(key, _)| marker_target(key).is_none() && !released.contains(key.as_str())) {
        match backend.get(key).and_then(|bytes| LockFile::decode(&bytes, key)) {
            Ok(lock) if !lock.is_stale(now - lock.time_ms) => holders.push((lock.hostname, lock.pid)),
            Ok(_) => {}
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(holders)
}

/// A held lock; released (its file deleted, or marked released) when dropped.
pub struct Lock {
    locks: Arc<Locks>,
    /// The current lock file.
    current: Arc<Mutex<Own>>,
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
        Self::acquire_then(backend, kind, command, wait, release, &|| ())
    }

    /// [`Lock::acquire_with`] that calls `written` each time its lock file has been written,
    /// before it looks for others: from then on a command that starts in conflict with it sees
    /// it, so what the caller reads from then on is no older than the lock, provided that the
    /// lock is then granted. Should it not be, the lock file is deleted through the same backend
    /// (which [`crate::backend::ahead::ListedAhead`] takes as a change of the store).
    pub fn acquire_then(
        backend: Arc<dyn Backend>,
        kind: LockKind,
        command: &str,
        wait: Duration,
        release: Release,
        written: &dyn Fn(),
    ) -> Result<Lock> {
        let locks =
            Arc::new(Locks { backend, release, denied: AtomicBool::new(false), forged: Mutex::new(BTreeSet::new()) });
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
                let own = locks.write(kind, command)?;
                written();
                // Someone may have written theirs meanwhile: our own file in the listing also
                // tells the store's time.
                let listing = list(&*locks.backend)?;
                clock = StoreClock::of(&listing, &own.key).or(clock);
                blocking = locks.conflicts(&listing, kind, Some(&own.key), clock)?;
                if blocking.is_empty() {
                    return Ok(Lock::hold(locks, own, before));
                }
                locks.end(&own)?;
            }
            if started.elapsed() >= wait {
                let (first, age) = &blocking[0];
                let forged = locks.forged.lock().expect("poisoned");
                let forged = match forged.first() {
                    None => String::new(),
                    Some(marker) => format!(
                        "; {} release markers ({marker} first) were ignored: not written by the holders of the \
                         locks they name, so someone who can write locks/ may be compromised",
                        forged.len()
                    ),
                };
                return Err(Error::Locked { holder: first.describe(*age), note: forged });
            }
            // Jittered backoff, so two contenders do not keep colliding.
            let jitter = Duration::from_millis(u64::from(crate::id::random_bytes()[0]) * 2);
            std::thread::sleep(pause + jitter);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn hold(locks: Arc<Locks>, own: Own, written: (Instant, SystemTime)) -> Lock {
        let current = Arc::new(Mutex::new(own));
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
                            let held = &current.lock().expect("poisoned").file;
                            (held.kind, held.command.clone())
                        };
                        if let Ok(new) = locks.write(kind, &command) {
                            let previous = std::mem::replace(&mut *written.lock().expect("poisoned"), before);
                            if since(previous) >= HELD_FOR_SURE {
                                lapsed.store(true, Relaxed);
                            }
                            let old = std::mem::replace(&mut *current.lock().expect("poisoned"), new);
                            let _ = locks.end(&old);
                        }
                        last = Instant::now();
                    }
                }
            })
        };
        Lock { locks, current, written, lapsed, stop, refresher: Some(refresher) }
    }

    /// The release markers that this holder's looks found naming a listed lock file without being
    /// its holder's (the secret in the name does not hash to the lock file's name). They were
    /// ignored, and deleted where this holder may delete, but they mean that someone who can
    /// write `locks/` tried to make a live lock count as gone: a compromised host, or a cairn
    /// that names its markers the older way (revealing no secret).
    pub fn forged_markers(&self) -> Vec<String> {
        self.locks.forged.lock().expect("poisoned").iter().cloned().collect()
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
        Err(Error::LockLost { location: self.locks.backend.location(), seconds: age.max(HELD_FOR_SURE).as_secs() })
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
        let _ = self.locks.end(&self.current.lock().expect("poisoned"));
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
        let dead = lock_file(LockKind::Exclusive, &crate::host::hostname(), i32::MAX as u32, crate::clock::now_ms());
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
        let dead = lock_file(LockKind::Shared, &crate::host::hostname(), i32::MAX as u32, crate::clock::now_ms());
        backend.put("locks/dead", &dead.encode()).unwrap();
        let held =
            Lock::acquire_with(backend.clone(), LockKind::Shared, "sync", Duration::ZERO, Release::Mark).unwrap();
        // It cannot release the stale lock (only its holder could), and need not: it is stale
        // to every reader.
        assert_eq!(keys(&*backend).len(), 2, "the stale lock and ours: {:?}", keys(&*backend));
        let trusted: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        let refused = Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO).err().unwrap();
        assert!(refused.to_string().contains("shared lock of `cairn sync`"), "a held lock holds: {refused}");
        assert_eq!(keys(&*backend).len(), 1, "the trusted look deleted the stale lock: {:?}", keys(&*backend));
        drop(held);
        assert_eq!(create_only.deletes.load(Relaxed), 0, "not one delete was tried");
        let left = keys(&*backend);
        assert_eq!(left.len(), 2, "the lock file and its marker: {left:?}");
        // `<name>.<secret>.released`, the secret hashing to the lock file's name.
        let (name, secret) = left[1].strip_suffix(RELEASED).unwrap().rsplit_once('.').unwrap();
        assert_eq!(name, left[0]);
        assert_eq!(format!("locks/{}", Id::of(&Id::from_hex(secret).unwrap().0).to_hex()), left[0]);
        assert_eq!(marker_target(&left[1]), Some((left[0].as_str(), true)));
        // Markers are lock files to an older cairn, shared ones: they never hold off a snapshot.
        let marker = backend.get(&left[1]).unwrap();
        assert_eq!(LockFile::decode(&marker, "marker").unwrap().kind, LockKind::Shared);
        // Released locks are not read again, and do not hold off an exclusive lock.
        drop(Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap());
        assert!(keys(&*trusted).is_empty(), "{:?}", keys(&*trusted));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Forges release markers for the lock file `lock` as a host with create-only rights could: in
    /// the form that older cairn honoured by name alone, with a made-up secret, and with the
    /// secret that `genuine` (the genuine marker of another lock file) revealed.
    fn forge_markers(host: &dyn Backend, lock: &str, genuine: &str) -> Vec<String> {
        let body = host.get(lock).unwrap();
        let revealed = &genuine[genuine.find('.').expect("a marker's name has a dot")..];
        let made_up = format!(".{}{RELEASED}", Id(crate::id::random_bytes()).to_hex());
        let forged: Vec<String> =
            [RELEASED, &made_up, revealed].iter().map(|suffix| format!("{lock}{suffix}")).collect();
        for key in &forged {
            host.put(key, &body).unwrap();
        }
        forged
    }

    /// The lock files in `backend` that no marker beside them claims to release.
    fn unmarked(backend: &dyn Backend) -> Vec<String> {
        let all = keys(backend);
        all.iter()
            .filter(|k| !k.ends_with(RELEASED) && !all.iter().any(|m| m.starts_with(&format!("{k}."))))
            .cloned()
            .collect()
    }

    /// Only a lock's holder can release it. Markers that others write for the trusted prune's
    /// live exclusive lock (a compromised host with create-only rights) leave it counting for
    /// every other writer, and nobody deletes its lock file.
    #[test]
    fn a_forged_marker_does_not_release_a_live_exclusive_lock() {
        let dir = scratch();
        let trusted: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        let host: Arc<dyn Backend> =
            Arc::new(CreateOnly { inner: LocalBackend::new(&dir), deletes: AtomicU64::new(0) });
        // An earlier sync's genuine marker, whose secret (if any) is public from now on.
        drop(Lock::acquire_with(host.clone(), LockKind::Shared, "sync", Duration::ZERO, Release::Mark).unwrap());
        let genuine = keys(&*host).into_iter().find(|k| k.ends_with(RELEASED)).unwrap();
        let prune = Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap();
        let live = unmarked(&*trusted);
        assert_eq!(live.len(), 1, "{:?}", keys(&*trusted));
        forge_markers(&*host, &live[0], &genuine);
        for (backend, release) in [(&host, Release::Mark), (&trusted, Release::Delete)] {
            let refused = Lock::acquire_with(backend.clone(), LockKind::Shared, "sync", Duration::ZERO, release)
                .err()
                .expect("the prune's lock still counts");
            assert!(refused.to_string().contains("an exclusive lock of `cairn prune`"), "{refused}");
            assert!(trusted.exists(&live[0]).unwrap(), "the live lock file was not deleted");
        }
        drop(prune);
        drop(Lock::acquire(trusted.clone(), LockKind::Shared, "snapshot", Duration::ZERO).unwrap());
        assert!(keys(&*trusted).is_empty(), "a trusted look clears forged markers too: {:?}", keys(&*trusted));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A forged marker for a running create-only sync's lock does not let a trusted prune run; the
    /// sync's own marker, once it ends, does.
    #[test]
    fn a_forged_marker_does_not_let_a_prune_run_during_a_sync() {
        let dir = scratch();
        let trusted: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        let host: Arc<dyn Backend> =
            Arc::new(CreateOnly { inner: LocalBackend::new(&dir), deletes: AtomicU64::new(0) });
        drop(Lock::acquire_with(host.clone(), LockKind::Shared, "sync", Duration::ZERO, Release::Mark).unwrap());
        let genuine = keys(&*host).into_iter().find(|k| k.ends_with(RELEASED)).unwrap();
        let sync = Lock::acquire_with(host.clone(), LockKind::Shared, "sync", Duration::ZERO, Release::Mark).unwrap();
        let live = unmarked(&*host);
        assert_eq!(live.len(), 1, "{:?}", keys(&*host));
        let mut forged = forge_markers(&*host, &live[0], &genuine);
        forged.sort();
        forged.dedup();
        // A shared lock on the trusted side (a check) runs beside the sync, reports the
        // forgeries and deletes them; the sync's lock file stays.
        let check = Lock::acquire(trusted.clone(), LockKind::Shared, "check", Duration::ZERO).unwrap();
        assert_eq!(check.forged_markers(), forged);
        assert_eq!(unmarked(&*trusted).len(), 2, "the sync's and the check's: {:?}", keys(&*trusted));
        drop(check);
        forge_markers(&*host, &live[0], &genuine);
        let refused = Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO)
            .err()
            .expect("the running sync's lock still counts");
        assert!(refused.to_string().contains("a shared lock of `cairn sync`"), "{refused}");
        assert!(refused.to_string().contains("3 release markers"), "the forgeries are reported: {refused}");
        assert!(trusted.exists(&live[0]).unwrap(), "the live lock file was not deleted");
        drop(sync);
        drop(Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap());
        assert!(keys(&*trusted).is_empty(), "{:?}", keys(&*trusted));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A marker is its lock's holder's exactly when the 32-byte secret in its name hashes to the
    /// lock file's name; a genuine marker whose lock file is gone is an orphan, cleared.
    #[test]
    fn markers_are_judged_by_their_names_alone() {
        let secret = [7u8; 32];
        let lock = format!("locks/{}", Id::of(&secret).to_hex());
        let hex = Id(secret).to_hex();
        assert_eq!(marker_target(&format!("{lock}.{hex}{RELEASED}")), Some((lock.as_str(), true)));
        assert_eq!(marker_target(&format!("{lock}.{}{RELEASED}", hex.to_uppercase())), Some((lock.as_str(), true)));
        assert_eq!(marker_target(&format!("{lock}{RELEASED}")), Some((lock.as_str(), false)), "the older form");
        let other = Id([8u8; 32]).to_hex();
        assert_eq!(marker_target(&format!("{lock}.{other}{RELEASED}")), Some((lock.as_str(), false)));
        assert_eq!(marker_target(&format!("{lock}.{}{RELEASED}", &hex[2..])), Some((lock.as_str(), false)));
        // The hash of a lock file's bytes is no secret: a lock named by its content (as older
        // cairn names them) cannot be released by a marker, whatever its name reveals.
        let body = lock_file(LockKind::Exclusive, "h", 1, 0).encode();
        let named = format!("locks/{}", Id::of(&body).to_hex());
        assert_eq!(
            marker_target(&format!("{named}.{}{RELEASED}", Id::of(&body).to_hex())),
            Some((named.as_str(), false))
        );
        assert_eq!(marker_target(&lock), None);

        let dir = scratch();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
        backend.put(&format!("{lock}.{hex}{RELEASED}"), b"orphan").unwrap();
        let held = Lock::acquire(backend.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap();
        assert!(held.forged_markers().is_empty());
        assert_eq!(keys(&*backend).len(), 1, "the orphan was cleared: {:?}", keys(&*backend));
        drop(held);
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
        let now = crate::clock::now_ms();
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
