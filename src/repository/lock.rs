//! Repository locks (`locks/<id>`): commands that add or read data hold a shared lock, `prune`
//! holds an exclusive one, so a prune never deletes a pack that a running snapshot has written
//! but not yet indexed, or that it is about to reference. See store-format/locks.md.
//!
//! A lock is a create-only file, so the scheme needs no atomic rename and works on object
//! stores. Taking a lock writes it, then lists the locks again: two writers that race both see
//! each other's file, and at least one backs off. A lock is refreshed (rewritten under a new name)
//! every five minutes while held; one whose writer on this host is gone, or that has not been
//! refreshed for 30 minutes, is stale and removed.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::envelope;
use crate::id::Id;

pub const MAGIC: &[u8; 8] = b"CAIRNLCK";
pub const VERSION: u16 = 1;
/// How often a held lock is rewritten, and when an unrefreshed one counts as abandoned.
pub const REFRESH: Duration = Duration::from_secs(300);
pub const STALE_AFTER: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub kind: LockKind,
    pub command: String,
    pub hostname: String,
    pub pid: u32,
    /// When it was (re)written, Unix milliseconds.
    pub time_ms: i64,
    pub nonce: String,
}

impl LockFile {
    pub fn encode(&self) -> Vec<u8> {
        envelope::seal(MAGIC, VERSION, &serde_json::to_vec(self).expect("lock files serialise"))
    }

    pub fn decode(data: &[u8], file: &str) -> Result<LockFile> {
        let (_, body) = envelope::open(data, MAGIC, VERSION, file)?;
        serde_json::from_slice(body).map_err(|e| Error::corrupt(file, format!("lock file: {e}")))
    }

    fn is_stale(&self, now_ms: i64) -> bool {
        let ours = self.hostname == crate::backup::hostname();
        (ours && !crate::backend::local::process_alive(self.pid as i32))
            || now_ms - self.time_ms > STALE_AFTER.as_millis() as i64
    }

    fn describe(&self) -> String {
        format!(
            "{} lock of `cairn {}` (pid {} on {}, written {}s ago)",
            match self.kind {
                LockKind::Shared => "a shared",
                LockKind::Exclusive => "an exclusive",
            },
            self.command,
            self.pid,
            self.hostname,
            (crate::audit::now_ms() - self.time_ms) / 1000
        )
    }
}

/// A held lock; released (its file deleted) when dropped.
pub struct Lock {
    backend: Arc<dyn Backend>,
    key: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

fn write(backend: &dyn Backend, kind: LockKind, command: &str) -> Result<String> {
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
    backend.put(&key, &bytes)?;
    Ok(key)
}

/// Live locks other than `ours` that conflict with `kind`; removes stale ones on the way.
fn conflicts(backend: &dyn Backend, kind: LockKind, ours: Option<&str>) -> Result<Vec<LockFile>> {
    let now = crate::audit::now_ms();
    let mut found = Vec::new();
    for (key, _) in backend.list("locks")? {
        if Some(key.as_str()) == ours {
            continue;
        }
        let lock = match backend.get(&key).and_then(|bytes| LockFile::decode(&bytes, &key)) {
            Ok(lock) => lock,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue, // released meanwhile
            Err(e) => return Err(Error::Invalid(format!("{e}: remove it by hand if no cairn is running"))),
        };
        if lock.is_stale(now) {
            backend.delete(&key)?;
        } else if kind == LockKind::Exclusive || lock.kind == LockKind::Exclusive {
            found.push(lock);
        }
    }
    Ok(found)
}

impl Lock {
    /// Takes a lock of `kind` for `command`, waiting up to `wait` for conflicting ones to go.
    pub fn acquire(backend: Arc<dyn Backend>, kind: LockKind, command: &str, wait: Duration) -> Result<Lock> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let mut blocking = conflicts(&*backend, kind, None)?;
            if blocking.is_empty() {
                let key = write(&*backend, kind, command)?;
                // Someone may have written theirs between our look and our write: look again.
                blocking = conflicts(&*backend, kind, Some(&key))?;
                if blocking.is_empty() {
                    return Ok(Lock::hold(backend, key, kind, command.to_string()));
                }
                backend.delete(&key)?;
            }
            if started.elapsed() >= wait {
                return Err(Error::Invalid(format!(
                    "the repository is locked by {}: try again when it has finished",
                    blocking[0].describe()
                )));
            }
            // Jittered backoff, so two contenders do not keep colliding.
            let jitter = Duration::from_millis(u64::from(crate::id::random_bytes()[0]) * 2);
            std::thread::sleep(pause + jitter);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn hold(backend: Arc<dyn Backend>, key: String, kind: LockKind, command: String) -> Lock {
        let key = Arc::new(Mutex::new(key));
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = {
            let (backend, key, stop) = (backend.clone(), key.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Relaxed) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    if last.elapsed() >= REFRESH && !stop.load(Relaxed) {
                        if let Ok(new_key) = write(&*backend, kind, &command) {
                            let old = std::mem::replace(&mut *key.lock().expect("poisoned"), new_key);
                            let _ = backend.delete(&old);
                        }
                        last = Instant::now();
                    }
                }
            })
        };
        Lock { backend, key, stop, refresher: Some(refresher) }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.refresher.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        let _ = self.backend.delete(&self.key.lock().expect("poisoned"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    #[test]
    fn shared_locks_coexist_and_exclusive_ones_exclude() {
        let dir = std::env::temp_dir().join(format!("cairn-lock-{}", Id(crate::id::random_bytes()).short()));
        std::fs::create_dir_all(&dir).unwrap();
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
        let dead = LockFile {
            kind: LockKind::Exclusive,
            command: "prune".into(),
            hostname: crate::backup::hostname(),
            pid: i32::MAX as u32,
            time_ms: crate::audit::now_ms(),
            nonce: "n".into(),
        };
        backend.put("locks/dead", &dead.encode()).unwrap();
        drop(Lock::acquire(backend.clone(), LockKind::Shared, "snapshot", Duration::ZERO).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
