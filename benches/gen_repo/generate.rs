//! Writes a valid repository of many tiny data blobs, cheaply, so that what scales with the
//! number of blobs (the index above all: issue 26) can be measured at 10^8 blobs on one machine.
//!
//! Valid by construction: the repository is created as `cairn init --encryption none` creates
//! one ([`Repository::create`]), and every file goes through the library's own encoders (pack
//! header and trailer, index file, tree, snapshot manifest) and its own durable puts. Nothing
//! here spells a byte layout.
//!
//! What is written, for `blobs` = N:
//! - N distinct data blobs of `blob_size` bytes, stored raw (16 bytes do not compress), in data
//!   packs of about the config's pack target size. A pack is closed once its whole file would
//!   reach the target (header, blobs *and* trailer), where `cairn snapshot` counts only header
//!   and blobs: for blobs this small the trailer is three times the blobs, and an index file
//!   of 32 packs would otherwise hold 32 million entries (1.5 GiB).
//! - Index files naming 32 packs each, as a snapshot writes them (store-format/index.md).
//! - Files of `chunks_per_file` consecutive blobs (size = the sum of their plain lengths), in
//!   leaf directories of `files_per_dir` files, under directories of `fanout` subdirectories, up
//!   to one root. Tree blobs are compressed as the packer compresses them and go to tree packs
//!   of at most 4 MiB blob area, as `cairn snapshot` closes them.
//! - Two snapshots of source `generated`, path `/generated`: tag `part` whose root holds only the
//!   first entry of the full root, and one second later tag `all` over everything. Forgetting
//!   `part` frees nothing (every blob stays reachable from `all`); forgetting `all` frees
//!   everything outside the first entry.
//!
//! Memory: one group of 32 data packs is in flight at a time (their entries and the index file
//! that names them, about 1 GiB with 16-byte blobs and 16 MiB packs), never the whole id set;
//! blob ids are recomputed from their number when the trees are written.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cairn::compression;
use cairn::error::Result;
use cairn::format::config::Config;
use cairn::format::index::{IndexFile, IndexedPack};
use cairn::format::pack::{self, BlobEntry, BlobKind, Codec};
use cairn::format::snapshot::{Snapshot, Summary};
use cairn::format::tree::{ChunkList, Content, Metadata, Node, Tree};
use cairn::id::Id;
use cairn::repository::{FileKind, Location, NewKeys, Repository};
use rayon::prelude::*;

/// Packs named by one index file, as `cairn snapshot` writes them (store-format/index.md).
const PACKS_PER_INDEX_FILE: usize = 32;
/// Tree packs close at this blob area, as the packer's (store-format/pack.md).
const TREE_PACK_TARGET: usize = 4 << 20;
/// Leaf directory trees encoded in parallel before they are packed in order.
const TREES_PER_BATCH: usize = 64;

/// What to generate; [`Options::new`] gives the defaults for `blobs` blobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub blobs: u64,
    /// The repository directory: missing or empty.
    pub out: PathBuf,
    /// Bytes of each data blob: 16 to 64 (the first 8 are the blob's number).
    pub blob_size: usize,
    /// Bytes a data pack file reaches; `None`: the config's pack target size.
    pub pack_size: Option<usize>,
    pub chunks_per_file: u64,
    pub files_per_dir: u64,
    /// Subdirectories per directory above the leaf directories.
    pub fanout: u64,
}

impl Options {
    pub fn new(blobs: u64, out: PathBuf) -> Options {
        Options { blobs, out, blob_size: 16, pack_size: None, chunks_per_file: 256, files_per_dir: 256, fanout: 256 }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.blobs == 0 {
            return Err("--blobs must be at least 1".into());
        }
        if !(16..=64).contains(&self.blob_size) {
            return Err("--blob-size must be 16 to 64".into());
        }
        if self.chunks_per_file == 0 || self.files_per_dir == 0 || self.fanout < 2 {
            return Err("--chunks-per-file and --files-per-dir must be at least 1, --fanout at least 2".into());
        }
        // A leaf tree: per file about 100 bytes of node plus 32 per chunk; far below 1 GiB.
        if self.files_per_dir * (100 + 32 * self.chunks_per_file) > 256 << 20 {
            return Err("--files-per-dir × --chunks-per-file makes tree blobs over 256 MiB".into());
        }
        Ok(())
    }
}

/// What was written.
#[derive(Debug, Default)]
pub struct Report {
    pub data_packs: u64,
    pub tree_packs: u64,
    pub index_files: u64,
    pub trees: u64,
    pub files: u64,
    pub bytes_written: u64,
    /// The snapshot ids of tags `all` and `part`.
    pub all: Option<Id>,
    pub part: Option<Id>,
    pub seconds_data: f64,
    pub seconds_trees: f64,
}

/// Creates the repository and writes everything; prints progress to stderr.
pub fn generate(options: &Options) -> std::result::Result<Report, String> {
    options.validate()?;
    let repo = Repository::create(&Location::directory(&options.out), Config::new_random(), NewKeys::None)
        .map_err(|e| e.to_string())?;
    let mut report = Report::default();
    let started = Instant::now();
    write_data(&repo, options, &mut report).map_err(|e| e.to_string())?;
    report.seconds_data = started.elapsed().as_secs_f64();
    let started = Instant::now();
    write_trees_and_snapshots(&repo, options, &mut report).map_err(|e| e.to_string())?;
    report.seconds_trees = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The plain bytes of data blob `number`: its number, then a fixed filler.
pub fn blob_bytes(number: u64, size: usize) -> Vec<u8> {
    let mut bytes = number.to_le_bytes().to_vec();
    bytes.extend(b"cairn generated blob, filler to 64 bytes .......".iter().take(size - 8));
    bytes
}

fn blobs_per_pack(repo: &Repository, options: &Options) -> u64 {
    let target = options.pack_size.unwrap_or(repo.config().pack_target_size as usize);
    let room = target.saturating_sub(pack::HEADER_LEN + pack::TAIL_LEN);
    (room / (options.blob_size + pack::ENTRY_LEN)).max(1) as u64
}

/// Data packs in groups of [`PACKS_PER_INDEX_FILE`], the packs of a group built on all cores,
/// then the group's index file.
fn write_data(repo: &Repository, options: &Options, report: &mut Report) -> Result<()> {
    let per_pack = blobs_per_pack(repo, options);
    let packs = options.blobs.div_ceil(per_pack);
    let mut first = 0;
    while first < packs {
        let group: Vec<u64> = (first..packs.min(first + PACKS_PER_INDEX_FILE as u64)).collect();
        let written: Vec<IndexedPack> = group
            .par_iter()
            .map(|&number| {
                let start = number * per_pack;
                let end = options.blobs.min(start + per_pack);
                write_data_pack(repo, start..end, options.blob_size)
            })
            .collect::<Result<_>>()?;
        report.data_packs += written.len() as u64;
        report.bytes_written += written.iter().map(|p| p.len).sum::<u64>();
        write_index_file(repo, written, report)?;
        first += PACKS_PER_INDEX_FILE as u64;
        eprintln!(
            "gen_repo: {} of {} data packs ({} blobs) written",
            report.data_packs,
            packs,
            options.blobs.min(first * per_pack)
        );
    }
    Ok(())
}

fn write_data_pack(repo: &Repository, blobs: std::ops::Range<u64>, blob_size: usize) -> Result<IndexedPack> {
    let count = (blobs.end - blobs.start) as usize;
    let mut bytes = Vec::with_capacity(pack::HEADER_LEN + count * (blob_size + pack::ENTRY_LEN) + pack::TAIL_LEN);
    bytes.extend_from_slice(&pack::header());
    let mut entries = Vec::with_capacity(count);
    let hasher = repo.hasher();
    for number in blobs {
        let plain = blob_bytes(number, blob_size);
        let entry = BlobEntry {
            id: hasher.id(&plain),
            kind: BlobKind::Data,
            codec: Codec::Raw,
            offset: bytes.len() as u32,
            stored_len: plain.len() as u32,
            raw_len: plain.len() as u32,
        };
        entries.push(entry);
        bytes.extend_from_slice(&plain);
    }
    put_pack(repo, bytes, entries)
}

/// Appends the trailer, names the pack by its hash and puts it durably.
fn put_pack(repo: &Repository, mut bytes: Vec<u8>, entries: Vec<BlobEntry>) -> Result<IndexedPack> {
    bytes.extend_from_slice(&pack::trailer(&entries, &[]));
    let id = Id::of(&bytes);
    repo.put_file_raw(FileKind::Pack, &id, &bytes)?;
    Ok(IndexedPack { id, len: bytes.len() as u64, blobs: entries })
}

fn write_index_file(repo: &Repository, packs: Vec<IndexedPack>, report: &mut Report) -> Result<()> {
    let bytes = repo.seal_file(IndexFile { packs }.encode());
    let id = Id::of(&bytes);
    repo.put_file_raw(FileKind::Index, &id, &bytes)?;
    report.index_files += 1;
    report.bytes_written += bytes.len() as u64;
    Ok(())
}

/// Counts of what a tree holds, for the snapshot summaries.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    files: u64,
    dirs: u64,
    bytes: u64,
}

/// Tree blobs packed in order into tree packs, with their index files.
struct TreeWriter<'r> {
    repo: &'r Repository,
    bytes: Vec<u8>,
    entries: Vec<BlobEntry>,
    unindexed: Vec<IndexedPack>,
    stored: std::collections::HashSet<Id>,
}

impl<'r> TreeWriter<'r> {
    fn new(repo: &'r Repository) -> TreeWriter<'r> {
        TreeWriter { repo, bytes: Vec::new(), entries: Vec::new(), unindexed: Vec::new(), stored: Default::default() }
    }

    /// Encodes and compresses a tree; the part of storing it that runs in parallel.
    fn encode(repo: &Repository, tree: &Tree) -> (Id, Codec, Vec<u8>, u32) {
        let plain = tree.encode();
        let (codec, stored) = compression::compress(&plain, repo.config().compression_level);
        (repo.hasher().id(&plain), codec, stored, plain.len() as u32)
    }

    fn add(&mut self, encoded: (Id, Codec, Vec<u8>, u32), report: &mut Report) -> Result<Id> {
        let (id, codec, stored, raw_len) = encoded;
        if !self.stored.insert(id) {
            return Ok(id);
        }
        if self.bytes.is_empty() {
            self.bytes.extend_from_slice(&pack::header());
        }
        let offset = self.bytes.len() as u32;
        let stored_len = stored.len() as u32;
        self.entries.push(BlobEntry { id, kind: BlobKind::Tree, codec, offset, stored_len, raw_len });
        self.bytes.extend_from_slice(&stored);
        report.trees += 1;
        if self.bytes.len() >= TREE_PACK_TARGET {
            self.close_pack(report)?;
        }
        Ok(id)
    }

    fn close_pack(&mut self, report: &mut Report) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let written = put_pack(self.repo, std::mem::take(&mut self.bytes), std::mem::take(&mut self.entries))?;
        report.tree_packs += 1;
        report.bytes_written += written.len;
        self.unindexed.push(written);
        if self.unindexed.len() >= PACKS_PER_INDEX_FILE {
            write_index_file(self.repo, std::mem::take(&mut self.unindexed), report)?;
        }
        Ok(())
    }

    /// Writes the last pack and the last index file.
    fn finish(mut self, report: &mut Report) -> Result<()> {
        self.close_pack(report)?;
        if !self.unindexed.is_empty() {
            write_index_file(self.repo, std::mem::take(&mut self.unindexed), report)?;
        }
        Ok(())
    }
}

/// The metadata every generated node carries: owned by the user generating, a fixed time.
fn metadata(mode: u32, size: u64, ino: u64, time: i64) -> Metadata {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Metadata { mode, uid, gid, mtime_sec: time, ctime_sec: time, ino, nlink: 1, size, ..Metadata::default() }
}

/// The tree of leaf directory `number`: files of consecutive blobs, ids recomputed.
fn leaf_tree(repo: &Repository, options: &Options, number: u64, time: i64) -> (Tree, Counts) {
    let hasher = repo.hasher();
    let files = options.blobs.div_ceil(options.chunks_per_file);
    let first_file = number * options.files_per_dir;
    let mut tree = Tree::default();
    let mut counts = Counts::default();
    for file in first_file..files.min(first_file + options.files_per_dir) {
        let start = file * options.chunks_per_file;
        let end = options.blobs.min(start + options.chunks_per_file);
        let chunks: Vec<Id> = (start..end).map(|n| hasher.id(&blob_bytes(n, options.blob_size))).collect();
        let size = (end - start) * options.blob_size as u64;
        tree.nodes.push(Node {
            name: format!("{:06}", file - first_file).into_bytes(),
            meta: metadata(0o644, size, file + 1, time),
            content: Content::File { chunks: ChunkList::Inline(chunks) },
            xattrs: Vec::new(),
        });
        counts.files += 1;
        counts.bytes += size;
    }
    (tree, counts)
}

/// A directory of the given subdirectories, named by their position.
fn dir_tree(children: &[(Id, Counts)], time: i64) -> (Tree, Counts) {
    let mut tree = Tree::default();
    let mut counts = Counts::default();
    for (position, (subtree, below)) in children.iter().enumerate() {
        tree.nodes.push(Node {
            name: format!("d{position:06}").into_bytes(),
            meta: metadata(0o755, 0, 0, time),
            content: Content::Dir { subtree: *subtree },
            xattrs: Vec::new(),
        });
        counts.files += below.files;
        counts.dirs += below.dirs + 1;
        counts.bytes += below.bytes;
    }
    (tree, counts)
}

fn write_trees_and_snapshots(repo: &Repository, options: &Options, report: &mut Report) -> Result<()> {
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut writer = TreeWriter::new(repo);
    let files = options.blobs.div_ceil(options.chunks_per_file);
    let leaves = files.div_ceil(options.files_per_dir);
    report.files = files;
    let mut level: Vec<(Id, Counts)> = Vec::with_capacity(leaves as usize);
    let numbers: Vec<u64> = (0..leaves).collect();
    for batch in numbers.chunks(TREES_PER_BATCH) {
        let encoded: Vec<_> = batch
            .par_iter()
            .map(|&number| {
                let (tree, counts) = leaf_tree(repo, options, number, time);
                (TreeWriter::encode(repo, &tree), counts)
            })
            .collect();
        for (tree, counts) in encoded {
            level.push((writer.add(tree, report)?, counts));
        }
        eprintln!("gen_repo: {} of {leaves} leaf directories written", level.len());
    }
    // The root is a directory of directories when there are several leaves, else the one leaf.
    // The `part` snapshot's root holds the root's first entry only.
    let mut root = None;
    let mut part_counts = Counts::default();
    while level.len() > 1 {
        let first = level[0].1;
        part_counts = Counts { dirs: first.dirs + 1, ..first };
        let mut above = Vec::new();
        for group in level.chunks(options.fanout as usize) {
            let (tree, counts) = dir_tree(group, time);
            above.push((writer.add(TreeWriter::encode(repo, &tree), report)?, counts));
            root = Some(tree);
        }
        level = above;
    }
    let root = match root {
        Some(tree) => tree,
        None => {
            let (tree, _) = leaf_tree(repo, options, 0, time);
            part_counts = Counts { files: 1, dirs: 0, bytes: tree.nodes[0].meta.size };
            tree
        }
    };
    let (all_id, all_counts) = level[0];
    let part = Tree { nodes: vec![root.nodes[0].clone()] };
    let part_id = writer.add(TreeWriter::encode(repo, &part), report)?;
    writer.finish(report)?;
    report.part = Some(write_snapshot(repo, part_id, part_counts, time, "part")?);
    report.all = Some(write_snapshot(repo, all_id, all_counts, time + 1, "all")?);
    Ok(())
}

fn write_snapshot(repo: &Repository, tree: Id, counts: Counts, time: i64, tag: &str) -> Result<Id> {
    let snapshot = Snapshot {
        time_sec: time,
        tree,
        hostname: "cairn-gen".into(),
        username: "gen".into(),
        source: "generated".into(),
        paths: vec![b"/generated".to_vec()],
        tags: vec!["generated".into(), tag.into()],
        summary: Summary { files: counts.files, dirs: counts.dirs, bytes: counts.bytes, ..Summary::default() },
        ..Snapshot::default()
    };
    repo.save_snapshot(&snapshot)
}
