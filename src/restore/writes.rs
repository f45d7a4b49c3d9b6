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
//! failed, its content cut away at once (a full disk gets its room back for the next files) and
//! its name kept for removal at the end ([`Restorer::remove_unfinished`]), as a file cut short
//! must not pass for the snapshot's content.
//!
//! Each file is written by one writer, in order (its lane, the one with the fewest bytes handed
//! over or gathered when the file is created): a kill leaves a file cut short as a restore on
//! one thread does, never with a gap of zeros inside, and two writers never contend for one
//! file's lock (the file system takes it for every write).
//!
//! The walker gathers its jobs and hands them over [`GATHERED_JOBS`] or [`GATHERED_BYTES`] at a
//! time, and a writer takes up to as many of its lane's at once: the toolchain (65,000 files,
//! most of a few KiB) cost 107,000 futex calls (counted by perf; 30,000 so) when each blob was
//! queued and taken alone, the walker and the writers waking each other for every file. The lanes
//! hold at most [`QUEUED_BYTES`] of blobs between them, counted until they are written, and the
//! blobs queued and gathered (each holds its file open) number at most [`QUEUED_JOBS`] and half
//! of the file descriptors the process may open beyond [`FOR_THE_REST`], beyond which the walker
//! waits; with fewer than twice that, there are no writers. Before a database, which the walker
//! writes itself, the queue is drained ([`Writes::drain`]).

use std::collections::VecDeque;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{sparse, Restorer};
use crate::format::tree::{Metadata, Node, Xattr};
use crate::fs_at::{open_files_limit, Dir, Place};
use crate::id::Id;

/// Writer threads.
pub(super) const WRITERS: usize = 2;

/// Bytes of blobs queued at most.
const QUEUED_BYTES: u64 = 16 * 1024 * 1024;

/// Blobs queued at most, when file descriptors allow: each holds its file open.
const QUEUED_JOBS: usize = 256;

/// Jobs the walker gathers before it hands them over (fewer when file descriptors are scarce),
/// and that a writer takes at once at most.
const GATHERED_JOBS: usize = 32;

/// Bytes of blobs after which the walker hands its gathered jobs over, and beyond which a
/// writer takes no more at once.
const GATHERED_BYTES: u64 = 1024 * 1024;

/// File descriptors a restore uses besides the writers' files (its directories, connections,
/// the repository's files); below twice this limit, restore writes on its walking thread alone.
pub(super) const FOR_THE_REST: u64 = 64;

/// Whether the writers may run: the process may open files enough for them and the rest.
pub(super) fn may_run() -> bool {
    open_files_limit().map_or(true, |files| files >= 2 * FOR_THE_REST)
}

/// The queue of blobs to write, shared by the walker and the writers.
pub(super) struct Writes {
    state: Mutex<Queue>,
    /// The walker's jobs not yet handed over.
    gathered: Mutex<Gathered>,
    /// Per lane: bytes of its jobs handed over and not yet written.
    lane_bytes: [AtomicU64; WRITERS],
    /// Each writer waits on its own for a job.
    work: [Condvar; WRITERS],
    /// The walker waits on it for room.
    room: Condvar,
    /// Jobs queued and gathered at most: [`QUEUED_JOBS`], or half of the file descriptors this
    /// process may open beyond [`FOR_THE_REST`] if less.
    most_jobs: usize,
    /// Jobs gathered before they are handed over: [`GATHERED_JOBS`], fewer if `most_jobs` is small.
    gather_jobs: usize,
    /// Who fills the disk, when writes find it full ([`Writes::full`]).
    full: Full,
}

/// What writers that find the disk full go by: of the files being written at that moment, the
/// one with the most still to write fails (its room is given back at once) and the others write
/// again once it is. With one writer, the file that filled the disk failed and the small ones after
/// it were restored; two writing at once must not fail those along with it.
#[derive(Default)]
struct Full {
    /// Per lane: 1 + the bytes its file had still to write when its writer began its current
    /// job; 0 idle.
    current: [AtomicU64; WRITERS],
    /// Per lane: jobs its writer ended.
    ended: [AtomicU64; WRITERS],
    /// Files that failed and were cut away: room given back.
    cuts: AtomicU64,
}

/// Marks writer `n` idle when its job ends, however it ends.
struct Busy<'f>(&'f Full, usize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.current[self.1].store(0, Relaxed);
        self.0.ended[self.1].fetch_add(1, Relaxed);
    }
}

struct Queue {
    /// Each writer's jobs.
    lanes: [Lane; WRITERS],
    /// Bytes and number of the jobs handed over and not yet ended: queued, or taken by a writer.
    bytes: u64,
    jobs: usize,
    /// Whether the walker waits for room: a condition variable is only signalled for someone
    /// waiting (each signal is a system call).
    walker_waits: bool,
    /// No more jobs come (the walk is done, or a writer panicked).
    closed: bool,
}

#[derive(Default)]
struct Lane {
    jobs: VecDeque<Job>,
    /// Its writer waits for a job.
    idle: bool,
}

#[derive(Default)]
struct Gathered {
    jobs: Vec<Job>,
    /// Per lane: bytes of the jobs gathered for it.
    lane_bytes: [u64; WRITERS],
    /// The lane the next file goes to when the lanes hold the same.
    next: usize,
}

impl Gathered {
    fn bytes(&self) -> u64 {
        self.lane_bytes.iter().sum()
    }

    /// The jobs gathered, to be handed over, and their bytes.
    fn take(&mut self) -> (Vec<Job>, u64) {
        let bytes = self.bytes();
        self.lane_bytes = [0; WRITERS];
        (std::mem::take(&mut self.jobs), bytes)
    }
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
    /// The writer whose lane its jobs go to.
    lane: usize,
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

    /// Gives back the room of what was written of a file that failed (best effort: its name
    /// is removed at the end all the same).
    fn cut_away(&self) {
        // SAFETY: plain syscall on a valid descriptor.
        unsafe { libc::ftruncate(self.file.as_raw_fd(), 0) };
    }
}

/// Closes the queue when dropped: at the end of the walk, and when a writer unwinds, so that
/// the walker never waits for room that no writer will make. The jobs the walker gathered are
/// queued first, whatever the room: at the end of the walk they are written like the others.
/// (A writer that unwinds leaves its lane unwritten, and the restore ends in its panic.)
pub(super) struct Closer<'w>(pub(super) &'w Writes);

impl Drop for Closer<'_> {
    fn drop(&mut self) {
        let (gathered, _) = self.0.gathered().take();
        let mut queue = self.0.lock();
        if !queue.closed {
            self.0.enqueue(&mut queue, gathered);
        }
        queue.closed = true;
        drop(queue);
        self.0.work.iter().for_each(Condvar::notify_all);
        self.0.room.notify_all();
    }
}

impl Writes {
    pub(super) fn new() -> Writes {
        let most_jobs = open_files_limit()
            .map_or(QUEUED_JOBS, |files| ((files.saturating_sub(FOR_THE_REST) / 2) as usize).clamp(1, QUEUED_JOBS));
        let queue = Queue { lanes: Default::default(), bytes: 0, jobs: 0, walker_waits: false, closed: false };
        Writes {
            state: Mutex::new(queue),
            gathered: Mutex::default(),
            lane_bytes: Default::default(),
            work: Default::default(),
            room: Condvar::new(),
            most_jobs,
            gather_jobs: (most_jobs / 4).clamp(1, GATHERED_JOBS),
            full: Full::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().expect("poisoned")
    }

    fn gathered(&self) -> MutexGuard<'_, Gathered> {
        self.gathered.lock().expect("poisoned")
    }

    /// The lane for a new file: the one with the fewest bytes handed over or gathered.
    fn lane(&self) -> usize {
        let mut gathered = self.gathered();
        let next = gathered.next;
        gathered.next = (next + 1) % WRITERS;
        let bytes = |n: usize| self.lane_bytes[n].load(Relaxed) + gathered.lane_bytes[n];
        (0..WRITERS).map(|n| (next + n) % WRITERS).min_by_key(|&n| bytes(n)).unwrap_or(0)
    }

    /// Gathers `job` for its file's lane; the jobs gathered are handed over once they are
    /// [`GATHERED_JOBS`] or [`GATHERED_BYTES`].
    fn push(&self, job: Job) {
        let mut gathered = self.gathered();
        gathered.lane_bytes[job.file.lane] += job.data.len();
        gathered.jobs.push(job);
        if gathered.jobs.len() >= self.gather_jobs || gathered.bytes() >= GATHERED_BYTES {
            let (jobs, bytes) = gathered.take();
            drop(gathered);
            self.hand_over(jobs, bytes);
        }
    }

    /// Hands the gathered jobs over now.
    fn flush(&self) {
        let (jobs, bytes) = self.gathered().take();
        if !jobs.is_empty() {
            self.hand_over(jobs, bytes);
        }
    }

    /// Queues `jobs` (of `len` bytes) in their files' lanes, once there is room for them; a
    /// closed queue drops them.
    fn hand_over(&self, jobs: Vec<Job>, len: u64) {
        let mut queue = self.lock();
        // The room left for the jobs the walker gathers meanwhile.
        let most = self.most_jobs - self.gather_jobs;
        while !queue.closed && queue.jobs > 0 && (queue.bytes + len > QUEUED_BYTES || queue.jobs + jobs.len() > most) {
            queue.walker_waits = true;
            queue = self.room.wait(queue).expect("poisoned");
            queue.walker_waits = false;
        }
        if !queue.closed {
            self.enqueue(&mut queue, jobs);
        }
    }

    /// Appends `jobs` to their lanes and wakes the writers of those that were idle.
    fn enqueue(&self, queue: &mut Queue, jobs: Vec<Job>) {
        let mut woken = [false; WRITERS];
        for job in jobs {
            let n = job.file.lane;
            let len = job.data.len();
            queue.bytes += len;
            queue.jobs += 1;
            self.lane_bytes[n].fetch_add(len, Relaxed);
            let lane = &mut queue.lanes[n];
            lane.jobs.push_back(job);
            woken[n] |= std::mem::take(&mut lane.idle);
        }
        for n in (0..WRITERS).filter(|&n| woken[n]) {
            self.work[n].notify_one();
        }
    }

    /// Writes `bytes` at `offset` of `file`, for writer `n`. A full disk: while another writer
    /// writes a file with more still to write than this one, or as much in a lane before this
    /// one, this waits for it to end its job or give its room back, and writes again; with none
    /// such, the disk is full for this file.
    fn write(&self, file: &Pending, bytes: &[u8], offset: u64, n: usize) -> std::io::Result<()> {
        let full = &self.full;
        let mine = full.current[n].load(Relaxed);
        let mut cuts = full.cuts.load(Relaxed);
        loop {
            let error = match file.file.write_all_at(bytes, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => e,
                Err(e) => return Err(e),
            };
            // The others that should fail before this one, with the jobs each has ended.
            let started: Vec<(usize, u64)> = (0..WRITERS)
                .filter(|&m| {
                    let theirs = full.current[m].load(Relaxed);
                    m != n && theirs > 0 && (theirs > mine || (theirs == mine && m < n))
                })
                .map(|m| (m, full.ended[m].load(Relaxed)))
                .collect();
            if started.is_empty() {
                return Err(error);
            }
            // Until one of them gives room back, or each ends the job it was on.
            loop {
                std::thread::sleep(std::time::Duration::from_millis(1));
                if full.cuts.load(Relaxed) != cuts {
                    break;
                }
                if started.iter().all(|&(m, ended)| full.ended[m].load(Relaxed) != ended) {
                    break;
                }
            }
            cuts = full.cuts.load(Relaxed);
        }
    }

    /// Writer `n` ended `jobs` jobs of `bytes` bytes that it took.
    fn ended(&self, n: usize, jobs: usize, bytes: u64) {
        self.lane_bytes[n].fetch_sub(bytes, Relaxed);
        let mut queue = self.lock();
        queue.jobs -= jobs;
        queue.bytes -= bytes;
        let walker_waits = queue.walker_waits;
        drop(queue);
        if walker_waits {
            self.room.notify_one();
        }
    }

    /// Waits until every job gathered or queued is written: the walker writes a database
    /// itself, and with the writers still at work, a disk they fill would fail it where it fits
    /// once they are done (or give back the room of a file that failed).
    pub(super) fn drain(&self) {
        self.flush();
        let mut queue = self.lock();
        while !queue.closed && queue.jobs > 0 {
            queue.walker_waits = true;
            queue = self.room.wait(queue).expect("poisoned");
            queue.walker_waits = false;
        }
    }

    /// Moves writer `n`'s next jobs into `taken`: up to [`GATHERED_JOBS`], and no more once
    /// they hold [`GATHERED_BYTES`]; `false` once the queue is closed and its lane empty.
    fn take(&self, n: usize, taken: &mut Vec<Job>) -> bool {
        let mut queue = self.lock();
        loop {
            let lane = &mut queue.lanes[n];
            let mut bytes = 0;
            while bytes < GATHERED_BYTES && taken.len() < GATHERED_JOBS {
                let Some(job) = lane.jobs.pop_front() else { break };
                bytes += job.data.len();
                taken.push(job);
            }
            if !taken.is_empty() {
                return true;
            }
            if queue.closed {
                return false;
            }
            queue.lanes[n].idle = true;
            queue = self.work[n].wait(queue).expect("poisoned");
            queue.lanes[n].idle = false;
        }
    }
}

impl Data {
    /// Bytes it holds: a run of zeros counts as none, written from memory kept anyway.
    fn len(&self) -> u64 {
        match self {
            Data::Blob(blob) => blob.len() as u64,
            Data::Zeros => 0,
        }
    }

    /// What it writes; `zeros` is the chunk of a run of zeros.
    fn bytes<'d>(&'d self, zeros: &'d [u8]) -> &'d [u8] {
        match self {
            Data::Blob(blob) => blob,
            Data::Zeros => zeros,
        }
    }
}

impl Restorer<'_> {
    /// Writer `n`: writes the blobs queued in its lane until the queue is closed and the lane
    /// empty.
    pub(super) fn write_queued(&self, writes: &Writes, n: usize) {
        let _closer = Closer(writes);
        let mut taken = Vec::with_capacity(GATHERED_JOBS);
        while writes.take(n, &mut taken) {
            let (jobs, bytes) = (taken.len(), taken.iter().map(|job| job.data.len()).sum());
            for job in taken.drain(..) {
                self.write_job(writes, n, job);
            }
            writes.ended(n, jobs, bytes);
        }
    }

    /// Writer `n` writes one blob, and finishes its file if it was the file's last work.
    fn write_job(&self, writes: &Writes, n: usize, Job { file, offset, data }: Job) {
        let bytes = data.bytes(&self.zeros.bytes);
        if self.cancelled() {
            file.fail("interrupted".into());
        } else if !file.failed() {
            let left = file.meta.size.saturating_sub(file.written.load(Relaxed));
            writes.full.current[n].store(1 + left, Relaxed);
            let _busy = Busy(&writes.full, n);
            match writes.write(&file, bytes, offset, n) {
                Ok(()) => {
                    let len = bytes.len() as u64;
                    file.written.fetch_add(len, Relaxed);
                    self.used(len);
                    self.progress.add_bytes(len);
                }
                Err(e) => {
                    file.fail(e.to_string());
                    // A full disk: its room, for the files after it.
                    file.cut_away();
                    writes.full.cuts.fetch_add(1, Relaxed);
                }
            }
        }
        if let Data::Blob(blob) = data {
            self.written(blob);
        }
        self.done_with(&file);
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
        let mode = self.creation_mode(&node.meta, &node.xattrs);
        let file = dir.create_file_mode(&node.name, mode).map_err(|e| e.to_string())?;
        self.used(sparse::BLOCK as u64);
        let pending = Arc::new(Pending {
            file,
            lane: writes.lane(),
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
            let len = data.bytes(&self.zeros.bytes).len() as u64;
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
                file.cut_away();
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
