//! Building a sorted index file ([`super::sorted`]) in bounded memory, whatever the blob count:
//! an external merge sort. Entries are collected in file order into runs of [`RUN_ENTRIES`]
//! (52 MiB), each sorted and written to an unnamed temporary file, and the runs are then merged
//! into the sorted file, the first location of each blob winning (store-format/index.md,
//! "Loading"). A repository whose index fits one run never touches a temporary file.
//!
//! Also the cheaper rebuild when only a delta has grown: [`write_merged`] streams the old file
//! and the in-memory delta into a new one, in one pass.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::PathBuf;

use super::sorted::{decode_entry, encode_entry, Head, PackRecord, Writer, ENTRY_LEN};
use super::{Index, Location};
use crate::crypto::Keys;
use crate::format::index::IndexedPack;
use crate::id::Id;

/// Entries sorted in memory at once: 52 bytes each, 52 MiB a run.
pub(super) const RUN_ENTRIES: usize = 1 << 20;
/// Entries a block of a run file.
const RUN_BLOCK: usize = 1024;

/// What a sealed block of a run authenticates beside its entries: its run and place.
fn run_aad(run: usize, block: usize) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(&(run as u64).to_le_bytes());
    aad[8..].copy_from_slice(&(block as u64).to_le_bytes());
    aad
}

/// Collects the index files of a repository, in sorted name order, into a sorted file.
pub(super) struct Builder {
    /// Where unnamed run files are made.
    dir: PathBuf,
    run_limit: usize,
    run: Vec<(Id, Location)>,
    runs: Vec<File>,
    /// Entries in each run file.
    run_lens: Vec<usize>,
    head: Head,
    numbers: HashMap<Id, u32>,
    entries: u64,
    keys: Option<Keys>,
    /// The record number of the next pack in the file begun last.
    record: u32,
}

/// A file in `dir` with no name: it is removed right after it is made, so a killed process
/// leaves nothing behind.
pub(super) fn unnamed_file(dir: &std::path::Path) -> io::Result<File> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(".cairn-run-{}-{}.tmp", std::process::id(), MADE.fetch_add(1, Relaxed)));
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

impl Builder {
    /// Runs are made in `dir`; the copy's blocks are sealed with `keys` (an encrypted
    /// repository's), and so are the runs.
    pub(super) fn new(dir: PathBuf, run_limit: usize, keys: Option<Keys>) -> Builder {
        Builder {
            dir,
            run_limit,
            run: Vec::new(),
            runs: Vec::new(),
            run_lens: Vec::new(),
            head: Head::default(),
            numbers: HashMap::new(),
            entries: 0,
            keys,
            record: 0,
        }
    }

    /// Adds index file `name` whole; names must come in ascending order.
    #[cfg(test)]
    pub(super) fn add(&mut self, name: Id, file: &crate::format::index::IndexFile) -> io::Result<()> {
        self.begin_file(name);
        file.packs.iter().try_for_each(|pack| self.add_pack(pack))
    }

    /// Starts index file `name`, whose packs [`Builder::add_pack`] adds in file order; names
    /// must come in ascending order.
    pub(super) fn begin_file(&mut self, name: Id) {
        assert!(self.head.files.last().map_or(true, |last| *last < name), "index files must come in name order");
        self.head.files.push(name);
        self.record = 0;
    }

    /// Adds the next pack of the file begun last.
    pub(super) fn add_pack(&mut self, pack: &IndexedPack) -> io::Result<()> {
        let rank = (self.head.files.len() - 1) as u32;
        let record = self.record;
        self.record += 1;
        let number = *self.numbers.entry(pack.id).or_insert_with(|| {
            self.head.packs.push(PackRecord { id: pack.id, len: pack.len, first_file: rank, record });
            (self.head.packs.len() - 1) as u32
        });
        for blob in &pack.blobs {
            self.run.push((blob.id, Location::of(number, blob)));
            self.entries += 1;
            if self.run.len() >= self.run_limit {
                self.spill()?;
            }
        }
        Ok(())
    }

    /// Pack numbers are given in first-seen order, so (id, pack, offset) puts a blob's first
    /// location first.
    fn sort_run(run: &mut Vec<(Id, Location)>) {
        run.sort_unstable_by_key(|(id, l)| (*id, l.pack, l.offset));
        run.dedup_by_key(|(id, _)| *id);
    }

    /// Writes the run, sorted, to an unnamed file: blocks of [`RUN_BLOCK`] entries, each sealed
    /// in an encrypted repository (the file is unnamed, but its bytes were on disk).
    fn spill(&mut self) -> io::Result<()> {
        Self::sort_run(&mut self.run);
        self.run_lens.push(self.run.len());
        let mut out = BufWriter::with_capacity(1 << 20, unnamed_file(&self.dir)?);
        let mut block = Vec::with_capacity(RUN_BLOCK * ENTRY_LEN);
        for (number, entries) in self.run.chunks(RUN_BLOCK).enumerate() {
            block.clear();
            for (id, location) in entries {
                let start = block.len();
                block.resize(start + ENTRY_LEN, 0);
                encode_entry(id, location, &mut block[start..]);
            }
            match &self.keys {
                Some(keys) => out.write_all(&keys.seal(&run_aad(self.runs.len(), number), &block))?,
                None => out.write_all(&block)?,
            }
        }
        self.run.clear();
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        Ok(())
    }

    /// Writes the sorted file into `out` (empty), synced; returns it with its head.
    pub(super) fn finish(mut self, out: File) -> io::Result<(File, Head)> {
        let mut writer = Writer::new(out, self.entries, self.keys.as_ref());
        if self.runs.is_empty() {
            Self::sort_run(&mut self.run);
            for (id, location) in &self.run {
                writer.push(id, location)?;
            }
        } else {
            if !self.run.is_empty() {
                self.spill()?;
            }
            self.run = Vec::new();
            let runs = std::mem::take(&mut self.runs);
            merge_runs(runs, std::mem::take(&mut self.run_lens), self.keys.as_ref(), &mut writer)?;
        }
        Ok((writer.finish(&self.head)?, self.head))
    }
}

/// One run being merged: its file, read a block at a time.
struct Run<'k> {
    reader: BufReader<File>,
    keys: Option<&'k Keys>,
    /// Its number, its entries left, the block being read and the next entry in it.
    number: usize,
    left: usize,
    block: Vec<u8>,
    blocks: usize,
    next: usize,
}

impl Run<'_> {
    fn next(&mut self) -> io::Result<Option<(Id, Location)>> {
        if self.next * ENTRY_LEN >= self.block.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let count = self.left.min(RUN_BLOCK);
            let sealed = if self.keys.is_some() { crate::crypto::OVERHEAD } else { 0 };
            self.block.resize(count * ENTRY_LEN + sealed, 0);
            self.reader.read_exact(&mut self.block)?;
            if let Some(keys) = self.keys {
                let aad = run_aad(self.number, self.blocks);
                let plain = keys.open(&aad, &self.block, "index run").map_err(io::Error::other)?;
                self.block = plain;
            }
            self.left -= count;
            self.blocks += 1;
            self.next = 0;
        }
        let bytes = &self.block[self.next * ENTRY_LEN..(self.next + 1) * ENTRY_LEN];
        self.next += 1;
        decode_entry(bytes).map(Some).ok_or_else(|| io::Error::other("a run file changed under us"))
    }
}

/// A k-way merge of sorted runs; of equal ids the smallest (pack, offset) wins, then the earlier
/// run (runs are in file order).
fn merge_runs(runs: Vec<File>, lens: Vec<usize>, keys: Option<&Keys>, writer: &mut Writer) -> io::Result<()> {
    let mut runs: Vec<Run> = runs
        .into_iter()
        .zip(lens)
        .enumerate()
        .map(|(number, (file, left))| Run {
            reader: BufReader::with_capacity(1 << 16, file),
            keys,
            number,
            left,
            block: Vec::new(),
            blocks: 0,
            next: 0,
        })
        .collect();
    let mut heads: Vec<Option<Location>> = vec![None; runs.len()];
    let mut heap = BinaryHeap::with_capacity(runs.len());
    for (number, run) in runs.iter_mut().enumerate() {
        if let Some((id, location)) = run.next()? {
            heads[number] = Some(location);
            heap.push(Reverse((id, location.pack, location.offset, number)));
        }
    }
    let mut last: Option<Id> = None;
    while let Some(Reverse((id, _, _, number))) = heap.pop() {
        let location = heads[number].take().expect("a run in the heap has an entry");
        if last != Some(id) {
            writer.push(&id, &location)?;
            last = Some(id);
        }
        if let Some((id, location)) = runs[number].next()? {
            heads[number] = Some(location);
            heap.push(Reverse((id, location.pack, location.offset, number)));
        }
    }
    Ok(())
}

/// Writes `index` (its sorted file and its delta, read from `delta_files`) as one new sorted
/// file into `out`; `files` are the old file's index files.
pub(super) fn write_merged(
    index: &Index,
    files: &[Id],
    delta_files: &[Id],
    out: File,
    keys: Option<&Keys>,
) -> io::Result<(File, Head)> {
    let mut names: Vec<Id> = files.iter().chain(delta_files).copied().collect();
    names.sort_unstable();
    names.dedup();
    let rank = |name: &Id| names.binary_search(name).map(|at| at as u32);
    let mut head = Head { packs: Vec::with_capacity(index.packs.len()), files: Vec::new() };
    for (&(id, len), &(first, record)) in index.packs.iter().zip(&index.order) {
        let first_file = rank(&first).map_err(|_| io::Error::other("a pack's index file is not among the files"))?;
        head.packs.push(PackRecord { id, len, first_file, record });
    }
    head.files = names;
    let expected = index.main.as_ref().map_or(0, |main| main.len()) + index.delta.len() as u64;
    let mut writer = Writer::new(out, expected, keys);
    for item in index.iter_locations() {
        let (id, location) = item?;
        writer.push(&id, &location)?;
    }
    Ok((writer.finish(&head)?, head))
}
