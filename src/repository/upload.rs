//! Pack uploads off the critical path. A worker that fills a pack hands it to a bounded queue and
//! goes back to chunking and compressing; a few uploader threads put the packs, and the index
//! files that name them, meanwhile. Before, the worker made the put itself, so at most as many
//! puts were in flight as there were workers, and each stalled its worker for a round trip and
//! the transfer (a pack of 16 MiB crossing a link 20 ms away).
//!
//! Invariants (store-format/README.md, "Commit order"):
//! - An index file names only packs whose put has returned: a pack joins the packs waiting for an
//!   index file only once it is durable, and the uploader that makes a batch full writes its
//!   index file.
//! - [`Uploads::finish`] returns only once every pack submitted and every index file is durable,
//!   or with the first error. A snapshot writes its manifest only after that.
//! - The first error wins: it is kept, the packs still queued are dropped (nothing will refer to
//!   them), and every later [`Uploads::submit`] and [`Uploads::finish`] returns it, so a worker
//!   stops at its next pack and the snapshot fails with the cause, not a consequence of it.
//! - Memory stays bounded: at most `queued` packs wait beside the one each uploader holds; a
//!   worker that submits more waits for room.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::FileKind;
use crate::backend::Backend;
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::format::envelope;
use crate::format::index::{IndexFile, IndexedPack};
use crate::id::Id;

/// Write an index file once this many durable packs are waiting for one, so an interrupted long
/// snapshot keeps most of what it uploaded usable by the next run.
pub const PACKS_PER_INDEX_FILE: usize = 32;

/// A full pack: its index entry and its bytes.
pub struct PackBytes {
    pub pack: IndexedPack,
    pub bytes: Vec<u8>,
}

/// What one submitted pack carries besides its bytes.
struct Job {
    pack: PackBytes,
    /// The disk guard in force when it was submitted (a local repository only).
    min_free: Option<crate::disk::MinFree>,
    /// Keep its entry for [`Done::written`] (prune needs the packs it wrote).
    record: bool,
}

/// Threads and queue bound for a backend: an object store gets several puts in flight, as each
/// mostly waits on the link; a local directory a couple, as each waits on the disk's sync.
pub fn uploaders_for(backend: &dyn Backend) -> (usize, usize) {
    match backend.disk_path() {
        Some(_) => (2, 1),
        None => (4, 2),
    }
}

/// What the uploads did, handed over by [`Uploads::finish`].
#[derive(Default)]
pub struct Done {
    pub packs: u64,
    pub index_files: Vec<Id>,
    pub written: Vec<IndexedPack>,
}

pub struct Uploads {
    shared: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    workers: usize,
}

struct Shared {
    backend: Arc<dyn Backend>,
    keys: Option<Keys>,
    queued: usize,
    state: Mutex<State>,
    /// Uploaders wait on it for work; submitters for room; `finish` for the end.
    changed: Condvar,
    /// Set with the first error, so that workers can stop between packs without the lock.
    failed: AtomicBool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Packs (with their index files) being put now.
    uploading: usize,
    error: Option<Error>,
    stop: bool,
    /// Durable packs that no index file names yet.
    unindexed: Vec<IndexedPack>,
    done: Done,
    /// Emptied buffers of a local repository's packs, for the next ones.
    spares: Vec<Vec<u8>>,
}

impl Uploads {
    /// Uploads through `workers` threads (started with the first pack), with at most `queued`
    /// packs waiting; files are sealed with `keys`.
    pub fn new(backend: Arc<dyn Backend>, keys: Option<Keys>, workers: usize, queued: usize) -> Uploads {
        let shared = Shared {
            backend,
            keys,
            queued: queued.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
        };
        Uploads { shared: Arc::new(shared), threads: Mutex::new(Vec::new()), workers: workers.max(1) }
    }

    /// Whether an upload has failed: the work should stop.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Relaxed)
    }

    /// The first error, if an upload has failed.
    pub fn check(&self) -> Result<()> {
        self.shared.lock().error.as_ref().map_or(Ok(()), |e| Err(copy_of(e)))
    }

    /// Queues a full pack, waiting while the queue is full. Fails with the first error once an
    /// upload has failed.
    pub fn submit(&self, pack: PackBytes, min_free: Option<crate::disk::MinFree>, record: bool) -> Result<()> {
        self.start_threads()?;
        let mut state = self.shared.lock();
        while state.error.is_none() && state.queue.len() >= self.shared.queued {
            state = self.shared.changed.wait(state).expect("poisoned");
        }
        if let Some(e) = &state.error {
            return Err(copy_of(e));
        }
        state.queue.push_back(Job { pack, min_free, record });
        self.shared.changed.notify_all();
        Ok(())
    }

    /// An emptied buffer of an earlier pack, if one is kept.
    pub fn spare(&self) -> Option<Vec<u8>> {
        self.shared.lock().spares.pop()
    }

    /// Waits until every submitted pack is durable, writes an index file for those no index file
    /// names yet, and hands over what was written; the first error instead, if any.
    pub fn finish(&self) -> Result<Done> {
        let rest = {
            let mut state = self.shared.lock();
            while state.error.is_none() && (state.uploading > 0 || !state.queue.is_empty()) {
                state = self.shared.changed.wait(state).expect("poisoned");
            }
            if let Some(e) = &state.error {
                return Err(copy_of(e));
            }
            std::mem::take(&mut state.unindexed)
        };
        let id = self.shared.write_index(rest)?;
        let mut state = self.shared.lock();
        state.done.index_files.extend(id);
        Ok(std::mem::take(&mut state.done))
    }

    fn start_threads(&self) -> Result<()> {
        let mut threads = self.threads.lock().expect("poisoned");
        while threads.len() < self.workers {
            let shared = self.shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("upload-{}", threads.len()))
                .spawn(move || shared.serve())
                .map_err(|e| Error::Resources { what: "upload threads", reason: e.to_string() })?;
            threads.push(thread);
        }
        Ok(())
    }
}

impl Drop for Uploads {
    /// Stops the uploaders: packs still queued are dropped (a run that never finished refers to
    /// none of them); puts in progress end first.
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            state.queue.clear();
        }
        self.shared.changed.notify_all();
        for thread in self.threads.get_mut().expect("poisoned").drain(..) {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("poisoned")
    }

    /// An uploader: takes packs from the queue until told to stop.
    fn serve(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    if state.stop {
                        return;
                    }
                    if let Some(job) = state.queue.pop_front() {
                        state.uploading += 1;
                        break job;
                    }
                    state = self.changed.wait(state).expect("poisoned");
                }
            };
            // Room in the queue: a submitter may go on.
            self.changed.notify_all();
            // A panic in an upload (a bug) must not leave `finish` waiting for it forever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.upload(job)))
                .unwrap_or_else(|_| Err(Error::Invalid("an upload thread panicked: no snapshot was written".into())));
            let mut state = self.lock();
            state.uploading -= 1;
            if let Err(e) = result {
                if state.error.is_none() {
                    state.error = Some(e);
                    self.failed.store(true, Relaxed);
                }
                state.queue.clear();
            }
            self.changed.notify_all();
        }
    }

    /// Puts one pack; then, if it completes a batch, the index file of the batch.
    fn upload(&self, job: Job) -> Result<()> {
        let Job { pack: PackBytes { pack, bytes }, min_free, record } = job;
        if self.failed.load(Relaxed) {
            return Ok(()); // dropped: the run fails anyway
        }
        if let (Some(min), Some(path)) = (min_free, self.backend.disk_path()) {
            min.check(&path, bytes.len() as u64)?;
        }
        let key = FileKind::Pack.name(&pack.id);
        let spare = match self.backend.disk_path() {
            Some(_) => {
                self.backend.put(&key, &bytes)?;
                Some(bytes)
            }
            // An object store takes the buffer: no copy of 16 MiB per pack.
            None => self.backend.put_vec(&key, bytes).map(|_| None)?,
        };
        let batch = {
            let mut state = self.lock();
            state.done.packs += 1;
            if record {
                state.done.written.push(pack.clone());
            }
            state.unindexed.push(pack);
            if let Some(mut spare) = spare.filter(|_| state.spares.len() < 2) {
                spare.clear();
                state.spares.push(spare);
            }
            if state.unindexed.len() >= PACKS_PER_INDEX_FILE {
                std::mem::take(&mut state.unindexed)
            } else {
                Vec::new()
            }
        };
        if let Some(id) = self.write_index(batch)? {
            self.lock().done.index_files.push(id);
        }
        Ok(())
    }

    /// Writes an index file naming `packs` (durable already); its id, or `None` for no packs.
    fn write_index(&self, packs: Vec<IndexedPack>) -> Result<Option<Id>> {
        if packs.is_empty() {
            return Ok(None);
        }
        let bytes = envelope::seal_file(IndexFile { packs }.encode(), self.keys.as_ref());
        let id = Id::of(&bytes);
        self.backend.put_vec(&FileKind::Index.name(&id), bytes)?;
        Ok(Some(id))
    }
}

/// The first error again, for each caller after the first: I/O errors keep their kind and path
/// (callers tell a refusal for want of rights by them), the rest their message.
fn copy_of(error: &Error) -> Error {
    match error {
        // The OS error number, where there is one, says what happened (a full disk: main's hint).
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        Error::NoSpace(message) => Error::NoSpace(message.clone()),
        other => Error::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::object::ObjectBackend;
    use crate::format::pack::{BlobEntry, BlobKind, Codec};
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// A store in memory whose pack puts take `pause` (or wait for `gate`), the `fail_at`-th of
    /// which fails for want of rights; it notes which packs were durable when each index file
    /// was put, and the most pack puts in flight at once.
    struct Watched {
        inner: ObjectBackend,
        pause: Duration,
        fail_at: Option<usize>,
        gate: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
        packs_begun: AtomicUsize,
        in_flight: AtomicUsize,
        most: AtomicUsize,
        durable: Mutex<Vec<Id>>,
        /// Packs that an index file named before their put had returned.
        early: Mutex<Vec<Id>>,
    }

    impl Watched {
        fn new(pause: Duration, fail_at: Option<usize>) -> Watched {
            Watched {
                inner: ObjectBackend::open("memory://uploads").unwrap(),
                pause,
                fail_at,
                gate: None,
                packs_begun: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                durable: Mutex::new(Vec::new()),
                early: Mutex::new(Vec::new()),
            }
        }

        fn put_pack(&self, key: &str, data: Vec<u8>) -> Result<bool> {
            let n = self.packs_begun.fetch_add(1, Relaxed) + 1;
            let now = self.in_flight.fetch_add(1, Relaxed) + 1;
            self.most.fetch_max(now, Relaxed);
            std::thread::sleep(self.pause);
            if let Some(gate) = &self.gate {
                gate.lock().unwrap().recv().unwrap();
            }
            self.in_flight.fetch_sub(1, Relaxed);
            if self.fail_at == Some(n) {
                return Err(Error::io(key, std::io::Error::new(std::io::ErrorKind::PermissionDenied, "Access Denied")));
            }
            let put = self.inner.put_vec(key, data)?;
            self.durable.lock().unwrap().push(FileKind::Pack.id_of(key).unwrap());
            Ok(put)
        }
    }

    impl Backend for Watched {
        fn location(&self) -> String {
            "watched".into()
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
            self.put_vec(key, data.to_vec())
        }
        fn put_vec(&self, key: &str, data: Vec<u8>) -> Result<bool> {
            if key.starts_with("packs/") {
                return self.put_pack(key, data);
            }
            if key.starts_with("index/") {
                let durable = self.durable.lock().unwrap();
                let named = IndexFile::decode(&data, key).unwrap().packs;
                self.early.lock().unwrap().extend(named.iter().map(|p| p.id).filter(|id| !durable.contains(id)));
            }
            self.inner.put_vec(key, data)
        }
        fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
        fn exists(&self, key: &str) -> Result<bool> {
            self.inner.exists(key)
        }
    }

    /// A pack of one blob after a 16-byte header (its bytes are not a real pack: nothing reads
    /// them here).
    fn pack(n: u32) -> PackBytes {
        let bytes = format!("header of pack {n:>2}, and its blob").into_bytes();
        let blob = BlobEntry {
            id: Id::of(&n.to_le_bytes()),
            kind: BlobKind::Data,
            codec: Codec::Zstd,
            offset: 16,
            stored_len: bytes.len() as u32 - 16,
            raw_len: 100,
        };
        PackBytes { pack: IndexedPack { id: Id::of(&bytes), len: bytes.len() as u64, blobs: vec![blob] }, bytes }
    }

    fn index_files(backend: &Watched) -> usize {
        backend.inner.list("index").unwrap().len()
    }

    #[test]
    fn index_files_name_only_durable_packs_and_finish_waits_for_every_one() {
        let backend = Arc::new(Watched::new(Duration::from_millis(20), None));
        let uploads = Uploads::new(backend.clone(), None, 4, 2);
        for n in 0..70 {
            uploads.submit(pack(n), None, true).unwrap();
        }
        let done = uploads.finish().unwrap();
        assert_eq!(done.packs, 70);
        assert_eq!(done.written.len(), 70);
        assert_eq!(backend.durable.lock().unwrap().len(), 70, "finish returned before every pack was durable");
        assert_eq!(done.index_files.len(), 3, "32 + 32 + the rest");
        assert_eq!(index_files(&backend), 3);
        assert!(backend.early.lock().unwrap().is_empty(), "an index file named a pack not yet durable");
        assert!(backend.most.load(Relaxed) >= 3, "puts in flight at most: {}", backend.most.load(Relaxed));
    }

    #[test]
    fn the_first_error_stops_the_work_and_is_what_finish_returns() {
        let backend = Arc::new(Watched::new(Duration::from_millis(5), Some(3)));
        let uploads = Uploads::new(backend.clone(), None, 2, 1);
        let mut refused = None;
        for n in 0..200 {
            if let Err(e) = uploads.submit(pack(n), None, false) {
                refused = Some(n);
                assert!(crate::backend::permission_denied(&e), "{e}");
                break;
            }
        }
        let refused = refused.expect("a submit after the failure fails");
        assert!(refused < 20, "the work went on to pack {refused} after the third failed");
        assert!(uploads.failed());
        let error = uploads.finish().err().expect("finish fails").to_string();
        assert!(error.contains("Access Denied") && error.contains("packs/"), "{error}");
        // Nothing names the failed pack; whatever became durable is not referred to either.
        drop(uploads);
        assert!(backend.early.lock().unwrap().is_empty());
        assert_eq!(index_files(&backend), 0);
    }

    #[test]
    fn a_full_queue_holds_the_producer_until_an_upload_ends() {
        let (open, gate) = std::sync::mpsc::channel();
        let mut watched = Watched::new(Duration::ZERO, None);
        watched.gate = Some(Mutex::new(gate));
        let backend = Arc::new(watched);
        let uploads = Uploads::new(backend.clone(), None, 2, 1);
        let submitted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for n in 0..6 {
                    uploads.submit(pack(n), None, false).unwrap();
                    submitted.fetch_add(1, Relaxed);
                }
            });
            // Two uploading (one of them waits at the gate, the other for the gate's lock), one
            // queued: the fourth submit waits.
            let started = Instant::now();
            while submitted.load(Relaxed) < 3 && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(submitted.load(Relaxed), 3, "the queue took more than its bound");
            for _ in 0..6 {
                open.send(()).unwrap();
            }
        });
        assert_eq!(uploads.finish().unwrap().packs, 6);
    }
}
