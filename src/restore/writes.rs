//! Writing files' content on threads of their own, for a restore from an object store.
//!
//! There one thread walks the snapshot and takes the blobs in the order of the plan
//! ([`crate::repository::reader::PlannedReads`]), which decoders decode ahead of it. Copying every
//! byte into the page cache on that thread too made it the restore's slowest part (43% of its
//! CPU time on the toolchain from a loopback S3, with the decoders waiting on it). So the walker
//! creates each file and queues its blobs with their offsets; writer threads write them where
//! they go (`pwrite`), and whoever ends a file's last piece of work (a writer, or the walker
//! when every write was done before it queued the last) finishes it ([`Restorer::finish_queued`]):
//! its metadata once all of its content is written, or, if a write or a read of its blobs
//! failed, its name kept for removal at the end ([`Restorer::remove_unfinished`]), as a file cut
//! short must not pass for the snapshot's content.
//!
//! The queue holds at most [`QUEUED_BYTES`] of blobs and [`QUEUED_JOBS`] of them (each holds its
//! file open), beyond which the walker waits.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{sparse, Restorer};
use crate::format::tree::{Metadata, Node, Xattr};
use crate::fs_at::{Dir, Place};
use crate::id::Id;

/// Writer threads.
pub(super) const WRITERS: usize = 2;

/// Bytes of blobs queued at most.
const QUEUED_BYTES: u64 = 16 * 1024 * 1024;

/// Blobs queued at most: each holds its file open.
const QUEUED_JOBS: usize = 256;

/// The queue of blobs to write, shared by the walker and the writers.
pub(super) struct Writes {
    state: Mutex<Queue>,
    /// Writers wait on it for a job.
    work: Condvar,
    /// The walker waits on it for room.
    room: Condvar,
}

struct Queue {
    jobs: VecDeque<Job>,
    bytes: u64,
    /// Writers waiting for a job, and whether the walker waits for room: a condition variable
    /// is only signalled for someone waiting (each signal is a system call, two a blob).
    idle: usize,
    walker_waits: bool,
    /// No more jobs come (the walk is done, or a writer panicked).
    closed: bool,
}

/// A blob to write into a file at an offset.
struct Job {
    file: Arc<Pending>,
    offset: u64,
    data: Data,
}

enum Data {
    Blob(Vec<u8>),
    /// The chunk of a run of zeros, written from [`super::ZeroRun`].
    Zeros,
}

/// A file being written: created, its blobs queued or being written.
pub(super) struct Pending {
    file: fs::File,
    place: Arc<Place>,
    name: Vec<u8>,
    meta: Metadata,
    xattrs: Vec<Xattr>,
    /// Jobs queued and not yet done, and one more while the walker queues them.
    left: AtomicUsize,
    written: AtomicU64,
    /// Why its content is not whole: the first failure.
    failure: Mutex<Option<String>>,
}

impl Pending {
    fn fail(&self, why: String) {
        self.failure.lock().expect("poisoned").get_or_insert(why);
    }

    fn failed(&self) -> bool {
        self.failure.lock().expect("poisoned").is_some()
    }
}

/// Closes the queue when dropped: at the end of the walk, and when a writer unwinds, so that
/// the walker never waits for room that no writer will make.
pub(super) struct Closer<'w>(pub(super) &'w Writes);

impl Drop for Closer<'_> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.work.notify_all();
        self.0.room.notify_all();
    }
}

impl Writes {
    pub(super) fn new() -> Writes {
        Writes {
            state: Mutex::new(Queue { jobs: VecDeque::new(), bytes: 0, idle: 0, walker_waits: false, closed: false }),
            work: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().expect("poisoned")
    }

    /// Queues `job`, once there is room for it; a closed queue drops it.
    fn push(&self, job: Job) {
        let len = job.data.len();
        let mut queue = self.lock();
        while !queue.closed
            && !queue.jobs.is_empty()
            && (queue.bytes + len > QUEUED_BYTES || queue.jobs.len() >= QUEUED_JOBS)
        {
            queue.walker_waits = true;
            queue = self.room.wait(queue).expect("poisoned");
            queue.walker_waits = false;
        }
        if queue.closed {
            return;
        }
        queue.bytes += len;
        queue.jobs.push_back(job);
        let idle = queue.idle > 0;
        drop(queue);
        if idle {
            self.work.notify_one();
        }
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                queue.bytes -= job.data.len();
                let walker_waits = queue.walker_waits;
                drop(queue);
                if walker_waits {
                    self.room.notify_one();
                }
                return Some(job);
            }
            if queue.closed {
                return None;
            }
            queue.idle += 1;
            queue = self.work.wait(queue).expect("poisoned");
            queue.idle -= 1;
        }
    }
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Blob(blob) => blob.len() as u64,
            // Counted as nothing held: it is written from memory kept anyway.
            Data::Zeros => 0,
        }
    }
}

impl Restorer<'_> {
    /// A writer thread: writes queued blobs until the queue is closed and empty.
    pub(super) fn write_queued(&self, writes: &Writes) {
        let _closer = Closer(writes);
        while let Some(Job { file, offset, data }) = writes.pop() {
            let bytes = match &data {
                Data::Blob(blob) => blob.as_slice(),
                Data::Zeros => self.zeros.bytes.as_slice(),
            };
            if self.cancelled() {
                file.fail("interrupted".into());
            } else if !file.failed() {
                match file.file.write_all_at(bytes, offset) {
                    Ok(()) => {
                        let len = bytes.len() as u64;
                        file.written.fetch_add(len, Relaxed);
                        self.used(len);
                        self.progress.add_bytes(len);
                    }
                    Err(e) => file.fail(e.to_string()),
                }
            }
            if let Data::Blob(blob) = data {
                self.written(blob);
            }
            self.done_with(&file);
        }
    }

    /// Creates the file `node` in `dir` (which is `place`) and queues its chunks, the first
    /// (`first`) already read; the file is finished when they are written. Fails only if the
    /// file cannot be created; what fails later is reported when it is finished.
    pub(super) fn queue_file(
        &self,
        writes: &Writes,
        node: &Node,
        first: Option<Vec<u8>>,
        chunks: &[Id],
        dir: &Dir,
        place: &Arc<Place>,
    ) -> Result<(), String> {
        let file = dir.create_file(&node.name).map_err(|e| e.to_string())?;
        self.used(sparse::BLOCK as u64);
        let pending = Arc::new(Pending {
            file,
            place: place.clone(),
            name: node.name.clone(),
            meta: node.meta,
            xattrs: node.xattrs.clone(),
            left: AtomicUsize::new(1),
            written: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        let mut offset = 0u64;
        let mut first = first;
        for (n, id) in chunks.iter().enumerate() {
            if self.cancelled() {
                pending.fail("interrupted".into());
                break;
            }
            let data = match first.take() {
                _ if *id == self.zeros.id => Data::Zeros,
                Some(blob) if n == 0 => Data::Blob(blob),
                _ => match self.blob(id) {
                    Ok(blob) => Data::Blob(blob),
                    Err(e) => {
                        pending.fail(e.to_string());
                        break;
                    }
                },
            };
            let len = match &data {
                Data::Blob(blob) => blob.len() as u64,
                Data::Zeros => self.zeros.bytes.len() as u64,
            };
            pending.left.fetch_add(1, Relaxed);
            writes.push(Job { file: pending.clone(), offset, data });
            offset += len;
        }
        self.done_with(&pending);
        Ok(())
    }

    /// One piece of work on `file` done: the last finishes it.
    fn done_with(&self, file: &Arc<Pending>) {
        if file.left.fetch_sub(1, AcqRel) == 1 {
            self.finish_queued(file);
        }
    }

    /// A file whose queued work is all done: its metadata, once its content is whole; else its
    /// name is kept to be removed at the end.
    fn finish_queued(&self, file: &Pending) {
        let written = file.written.load(Relaxed);
        let content = match file.failure.lock().expect("poisoned").take() {
            Some(why) => Err(why),
            None if written != file.meta.size => {
                Err(format!("restored {written} bytes, the snapshot recorded {}", file.meta.size))
            }
            None => Ok(()),
        };
        let shown = || self.shown(&file.place, &file.name);
        let result = match content {
            Ok(()) => self.file_metadata(&file.file, &file.meta, &file.xattrs, shown),
            Err(why) => {
                self.unfinished.lock().expect("poisoned").push((file.place.clone(), file.name.clone()));
                Err(why)
            }
        };
        match result {
            Ok(()) => {
                self.files.fetch_add(1, Relaxed);
                self.bytes.fetch_add(written, Relaxed);
                self.progress.file_done(0);
            }
            Err(why) => {
                if file.meta.nlink > 1 {
                    self.failed.lock().expect("poisoned").insert((file.meta.dev, file.meta.ino));
                }
                self.record(&shown(), why);
            }
        }
    }
}
