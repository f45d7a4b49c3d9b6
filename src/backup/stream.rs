//! A snapshot of a stream rather than of files: cairn's own standard input (`cairn snapshot
//! --stdin`) or a command's standard output (`--stdin-from-command`, a `kind = "command"`
//! source), such as a database dump. The stream becomes the one file of the snapshot's root tree,
//! named by `--stdin-filename`, read in windows through the chunker like any file, so memory
//! stays at one read window and the packs being filled, however long the stream.
//!
//! There is no source path to record, so the manifest records one path that is not absolute and
//! can never be one a tree snapshot records: `command:NAME` or `stdin:NAME`
//! (store-format/snapshot.md, "Paths"). The file's mode is 0600 (a dump is usually private),
//! its owner the user cairn runs as, its times the snapshot's start.
//!
//! Commit order: the command's exit status is known before the tree is stored and before the
//! manifest is written; a command that fails, however much it printed, leaves no manifest
//! (its packs are unreferenced until a prune), and a failed audit record that says why.

use std::io::Read;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use rayon::prelude::*;

use super::{find_parent, username, SnapshotOutcome};
use crate::audit::{Audited, Run};
use crate::chunking::{Chunker, READ_WINDOW};
use crate::disk::MinFree;
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::pack::BlobKind;
use crate::format::snapshot::{source_key, Snapshot, Summary};
use crate::format::tree::{Content, Metadata, Node, Tree};
use crate::host::hostname;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::packer::BlobStore;
use crate::repository::Repository;
use crate::source::command;
use crate::source::lists::ListWriter;

/// Where the stream comes from; it decides the path the manifest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// cairn's standard input (`--stdin`).
    Stdin,
    /// A command's standard output (`--stdin-from-command`).
    Command,
}

#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The file's name in the snapshot; [`check_filename`] says which names are allowed.
    pub filename: String,
    pub origin: Origin,
    pub tags: Vec<String>,
    /// A name for what is backed up (`--source`); empty for none.
    pub source: String,
    /// The host name to record; `None` for this machine's.
    pub host: Option<String>,
    pub min_free: Option<MinFree>,
}

impl StreamOptions {
    /// The one path a snapshot of this stream records: `command:NAME` or `stdin:NAME`.
    pub fn recorded_path(&self) -> Vec<u8> {
        let origin = match self.origin {
            Origin::Stdin => "stdin",
            Origin::Command => "command",
        };
        format!("{origin}:{}", self.filename).into_bytes()
    }

    /// What the snapshot is of, as audit records and `status` group runs.
    pub fn source_key(&self) -> String {
        source_key(&self.source, &[self.recorded_path()])
    }
}

/// The mode of the stream's file: readable by its owner only, as a dump of a database should be.
pub const MODE: u32 = 0o600;

/// Whether `name` can name the stream's file: one path component (not empty, `.` or `..`, no
/// `/` or NUL) of at most 255 bytes, as a file system allows.
pub fn check_filename(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name == "." || name == ".." {
        "is not a file name"
    } else if name.contains('/') {
        "holds a `/`: give a file name, not a path"
    } else if name.contains('\0') {
        "holds a NUL byte"
    } else if name.len() > 255 {
        "is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::Invalid(format!("--stdin-filename {name:?} {problem}")))
}

/// A snapshot of `reader` (cairn's standard input) as the audited run `snapshot`.
pub fn snapshot_reader(
    repo: &Repository,
    options: &StreamOptions,
    reader: &mut dyn Read,
    progress: &Progress,
) -> Audited<SnapshotOutcome> {
    audited(repo, options, || take(repo, options, progress, Stream::Reader(reader)))
}

/// A snapshot of what `command` prints on its standard output, as the audited run `snapshot`:
/// committed only if the command exits with status 0 ([`crate::source::command`]). The caller builds `command` (`sh -c LINE`, its
/// environment and directory); it is started once the repository's index is loaded.
pub fn snapshot_command(
    repo: &Repository,
    options: &StreamOptions,
    command: Command,
    progress: &Progress,
) -> Audited<SnapshotOutcome> {
    audited(repo, options, || take(repo, options, progress, Stream::Command(command)))
}

enum Stream<'a> {
    Reader(&'a mut dyn Read),
    Command(Command),
}

fn audited(
    repo: &Repository,
    options: &StreamOptions,
    work: impl FnOnce() -> Result<SnapshotOutcome>,
) -> Audited<SnapshotOutcome> {
    Run::start("snapshot", &options.source_key()).around(repo, |record| {
        let outcome = work()?;
        let snapshot = &outcome.snapshot;
        record.snapshot = Some(outcome.id.to_hex());
        record.files = snapshot.summary.files;
        record.bytes = snapshot.summary.bytes;
        record.details = serde_json::json!({ "summary": snapshot.summary, "packs_written": outcome.packs_written });
        Ok((outcome, Outcome::Ok))
    })
}

/// The snapshot itself: the stream stored, the command's status checked, then the tree and the
/// manifest.
fn take(
    repo: &Repository,
    options: &StreamOptions,
    progress: &Progress,
    stream: Stream<'_>,
) -> Result<SnapshotOutcome> {
    check_filename(&options.filename)?;
    let started = Instant::now();
    let start_time = crate::clock::now();
    let paths = vec![options.recorded_path()];
    let host = options.host.clone().unwrap_or_else(hostname);
    repo.backend().remove_stale_temp_files();
    let index = repo.load_index()?;
    let parent = find_parent(repo, &host, &options.source, &paths)?;
    let mut store = BlobStore::new(repo, &index);
    store.min_free = options.min_free;
    let label = String::from_utf8_lossy(&paths[0]).into_owned();
    let chunker = repo.chunker();
    let (chunks, size) = match stream {
        Stream::Reader(reader) => store_stream(&store, &chunker, reader, &label, progress)?,
        Stream::Command(command) => std::thread::scope(|scope| {
            let mut running = command::start(scope, command, progress)?;
            match store_stream(&store, &chunker, running.stdout(), &label, progress) {
                // The status decides, whatever was stored: the manifest comes after this.
                Ok(stored) => running.finish().map(|()| stored),
                Err(e) => {
                    running.abandon();
                    Err(e)
                }
            }
        })?,
    };
    let (sec, nsec) = (start_time.as_secs() as i64, start_time.subsec_nanos());
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let meta = Metadata {
        mode: MODE,
        uid,
        gid,
        mtime_sec: sec,
        mtime_nsec: nsec,
        ctime_sec: sec,
        ctime_nsec: nsec,
        dev: 0,
        ino: 0,
        nlink: 1,
        size,
    };
    // The parent's node of the same name, whose list a large stream is patched against.
    let parent_tree = parent.as_ref().and_then(|(_, s)| repo.read_tree(&index, &s.tree).ok());
    let parent_list = match parent_tree.as_ref().and_then(|tree| tree.find(options.filename.as_bytes())) {
        Some(Node { content: Content::File { chunks }, .. }) => Some(chunks),
        _ => None,
    };
    let chunks = ListWriter { repo, index: &index, store: &store }.content(chunks, parent_list)?;
    let node = Node {
        name: options.filename.as_bytes().to_vec(),
        meta,
        content: Content::File { chunks },
        xattrs: Vec::new(),
    };
    let encoded = Tree { nodes: vec![node] }.encode();
    if encoded.len() > crate::compression::MAX_BLOB_LEN as usize {
        return Err(Error::Invalid(format!("{label}: {size} bytes are too many chunks for one tree blob")));
    }
    let tree = store.store(BlobKind::Tree, &encoded)?;
    store.finish()?;
    progress.finish();
    let stats = &store.stats;
    let snapshot = Snapshot {
        time_sec: sec,
        time_nsec: nsec,
        duration_ms: started.elapsed().as_millis() as u64,
        tree,
        parent: parent.map(|(id, _)| id),
        hostname: host,
        username: username(),
        source: options.source.clone(),
        paths,
        tags: options.tags.clone(),
        summary: Summary {
            files: 1,
            dirs: 0,
            bytes: size,
            files_read: 1,
            blobs_added: stats.blobs.load(Relaxed),
            bytes_added: stats.bytes.load(Relaxed),
            stored_bytes_added: stats.stored_bytes.load(Relaxed),
        },
        errors: Vec::new(),
    };
    let id = repo.save_snapshot(&snapshot)?;
    Ok(SnapshotOutcome { id, snapshot, packs_written: stats.packs.load(Relaxed), databases: 0 })
}

/// Why storing a stream stopped: reading it, or the repository.
enum StreamError {
    Read(std::io::Error),
    Repository(Error),
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        StreamError::Read(e)
    }
}

/// Reads `reader` to its end in windows, storing its chunks (hashed and compressed in parallel);
/// returns their ids and the bytes read.
fn store_stream(
    store: &BlobStore<'_>,
    chunker: &Chunker,
    reader: &mut dyn Read,
    label: &str,
    progress: &Progress,
) -> Result<(Vec<Id>, u64)> {
    let mut ids = Vec::new();
    let lane = store.lane();
    let read = chunker.for_each_window::<_, StreamError>(reader, READ_WINDOW, READ_WINDOW, |window, chunks| {
        let stored: Vec<Id> = chunks
            .par_iter()
            .map(|range| store.store_in(lane, BlobKind::Data, &window[range.clone()], None))
            .collect::<Result<_>>()
            .map_err(StreamError::Repository)?;
        ids.extend(stored);
        progress.add_bytes(chunks.last().map_or(0, |c| c.end) as u64);
        Ok(())
    });
    match read {
        Ok(read) => Ok((ids, read)),
        Err(StreamError::Read(e)) => Err(Error::io(format!("reading {label}"), e)),
        Err(StreamError::Repository(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_is_one_component() {
        for good in ["db.sql", "stdin", "a b", "…dump", ".hidden"] {
            assert!(check_filename(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "/db.sql", "a\0b", &"x".repeat(256)] {
            assert!(check_filename(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_recorded_path_is_never_absolute() {
        let options = |origin| StreamOptions {
            filename: "db.sql".into(),
            origin,
            tags: Vec::new(),
            source: String::new(),
            host: None,
            min_free: None,
        };
        assert_eq!(options(Origin::Command).recorded_path(), b"command:db.sql");
        assert_eq!(options(Origin::Stdin).recorded_path(), b"stdin:db.sql");
        assert_eq!(options(Origin::Command).source_key(), "command:db.sql");
    }
}
