//! The sorted index file: a local, derived copy of the repository's index with every blob's
//! winning location sorted by id, read where it lies instead of held in memory. It is not a
//! repository file (store-format/index.md, "A local sorted copy"): it is rebuilt from the index
//! files whenever it is missing, stale or damaged, and nothing in it is trusted unchecked.
//!
//! Layout, all integers little-endian:
//!
//! - blocks of up to [`BLOCK_ENTRIES`] entries of [`ENTRY_LEN`] bytes (id 32, pack number u32,
//!   offset u32, stored length u32, plain length u32, kind u8, codec u8), sorted by id, each
//!   block followed by a 16-byte checksum: BLAKE3 of the file's salt, the block number and the
//!   entries. A lookup checks the blocks it reads, so a flipped bit is found where it is read.
//!   In an encrypted repository each block is instead sealed with the repository's keys
//!   (store-format/encryption.md; the salt and block number authenticated alongside), as its
//!   index files are: blob ids and lengths are never on disk in plaintext. The head holds only
//!   pack and index file ids (names the store shows anyway) and counts of keyed blob ids.
//! - the head: the pack table (id, length, the rank of the index file that named it first, its
//!   record number there: 48 bytes a pack), the sorted ids of the index files it was built from
//!   (32 bytes each), and the fan-out table (`2^bits + 1` u32: where each leading-bits bucket
//!   of ids starts).
//! - the footer ([`FOOTER_LEN`] bytes): magic `CAIRNSIX`, version, bits, blob, pack and file
//!   counts, the head's offset, whether blocks are sealed (u32 0 or 1), the salt, and BLAKE3 of
//!   the head and the footer before it.
//!
//! Opening reads the footer and the head (16 MiB of fan-out at most, 4 bytes a bucket) and checks
//! them whole; the blocks are read with `pread` when a lookup needs them. Why `pread` and not a
//! mapping (memmap2): mapped pages count in the process's resident set once touched, and a
//! snapshot of new data touches a page or two of the file per chunk, so a long run would hold
//! gigabytes of a 10^8-blob file resident; a read into a stack buffer costs a system call (about
//! a microsecond, beside a chunk's hashing and compression) and leaves nothing behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::Location;
use crate::crypto::Keys;
use crate::format::pack::{BlobKind, Codec};
use crate::id::Id;

pub(super) const ENTRY_LEN: usize = 50;
/// Entries a block: a block (3,216 bytes) is about the page or two a lookup reads anyway.
pub(super) const BLOCK_ENTRIES: usize = 64;
const SUM_LEN: usize = 16;
/// The longest block on disk: a sealed one.
const BLOCK_LEN: usize = ENTRY_LEN * BLOCK_ENTRIES + crate::crypto::OVERHEAD;
const MAGIC: &[u8; 8] = b"CAIRNSIX";
const VERSION: u32 = 1;
const PACK_LEN: usize = 48;
pub(super) const FOOTER_LEN: usize = 8 + 4 + 4 + 8 + 4 + 4 + 8 + 4 + 16 + 32;
/// Blocks [`SortedFile`] keeps opened (at most 13 MiB).
const RECENT_BLOCKS: usize = 4096;
/// At most 2^22 buckets (16 MiB of table): at 10^8 blobs about 24 a bucket, one or two blocks.
const MAX_BITS: u32 = 22;

/// A pack as the sorted file names it: `first_file` ranks among the file's index files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackRecord {
    pub(super) id: Id,
    pub(super) len: u64,
    pub(super) first_file: u32,
    pub(super) record: u32,
}

/// What the head says besides the fan-out.
#[derive(Debug, Default)]
pub(super) struct Head {
    pub(super) packs: Vec<PackRecord>,
    pub(super) files: Vec<Id>,
}

/// An open sorted index file.
pub(super) struct SortedFile {
    file: File,
    blobs: u64,
    bits: u32,
    starts: Vec<u32>,
    salt: [u8; 16],
    /// Set once a block failed its checksum: lookups in it answer "absent".
    damaged: AtomicBool,
    /// Packs in the head: an entry naming another is damage.
    packs: u32,
    /// Where the file is named, if it is: removed when found damaged, so the next open rebuilds.
    path: Option<PathBuf>,
    /// The keys its blocks are sealed with (an encrypted repository's).
    keys: Option<Keys>,
    /// Plain entries of blocks read lately: a restore looks a blob up several times, and a
    /// sealed block costs a decryption each time it is read.
    recent: Mutex<HashMap<u64, Arc<[u8]>>>,
}

impl std::fmt::Debug for SortedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedFile").field("blobs", &self.blobs).field("sealed", &self.keys.is_some()).finish()
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sorted index: {what}"))
}

pub(super) fn bucket_of(id: &Id, bits: u32) -> usize {
    (u32::from_be_bytes(id.0[..4].try_into().expect("4 bytes")) >> (32 - bits)) as usize
}

/// Bucket bits for about `blobs` blobs: about 16 a bucket.
fn bits_for(blobs: u64) -> u32 {
    (u64::BITS - (blobs / 16).leading_zeros()).clamp(1, MAX_BITS)
}

/// Bytes a block adds to its entries: a checksum, or the AEAD's nonce and tag.
fn tag_len(sealed: bool) -> usize {
    if sealed {
        crate::crypto::OVERHEAD
    } else {
        SUM_LEN
    }
}

fn blocks_len(blobs: u64, sealed: bool) -> u64 {
    let (full, rest) = (blobs / BLOCK_ENTRIES as u64, blobs % BLOCK_ENTRIES as u64);
    let tag = tag_len(sealed) as u64;
    full * (ENTRY_LEN * BLOCK_ENTRIES) as u64 + full * tag + if rest > 0 { rest * ENTRY_LEN as u64 + tag } else { 0 }
}

/// What a sealed block authenticates beside its entries: which file and which block it is.
fn block_aad(salt: &[u8; 16], block: u64) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..16].copy_from_slice(salt);
    aad[16..].copy_from_slice(&block.to_le_bytes());
    aad
}

/// Checks block `block` of a file read into `bytes` (entries, then checksum or seal) and
/// returns its entries, plain.
fn open_block<'b>(salt: &[u8; 16], keys: Option<&Keys>, block: u64, bytes: &'b mut [u8]) -> io::Result<&'b [u8]> {
    if let Some(keys) = keys {
        return keys
            .open_in_place(&block_aad(salt, block), bytes, "sorted index block")
            .map_err(|_| invalid("a block does not open with the repository's key"));
    }
    let (entries, sum) = bytes.split_at(bytes.len() - SUM_LEN);
    if block_sum(salt, block, entries) != sum {
        return Err(invalid("block checksum mismatch"));
    }
    Ok(entries)
}

fn block_sum(salt: &[u8; 16], block: u64, entries: &[u8]) -> [u8; SUM_LEN] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(salt).update(&block.to_le_bytes()).update(entries);
    hasher.finalize().as_bytes()[..SUM_LEN].try_into().expect("16 bytes")
}

pub(super) fn encode_entry(id: &Id, at: &Location, out: &mut [u8]) {
    out[..32].copy_from_slice(&id.0);
    out[32..36].copy_from_slice(&at.pack.to_le_bytes());
    out[36..40].copy_from_slice(&at.offset.to_le_bytes());
    out[40..44].copy_from_slice(&at.stored_len.to_le_bytes());
    out[44..48].copy_from_slice(&at.raw_len.to_le_bytes());
    out[48] = at.kind as u8;
    out[49] = at.codec as u8;
}

/// An entry back; `None` for a kind or codec no writer puts there.
pub(super) fn decode_entry(bytes: &[u8]) -> Option<(Id, Location)> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let kind = match bytes[48] {
        0 => BlobKind::Data,
        1 => BlobKind::Tree,
        _ => return None,
    };
    let codec = Codec::from_u8(bytes[49])?;
    let id = Id(bytes[..32].try_into().expect("32 bytes"));
    Some((
        id,
        Location { pack: u32_at(32), offset: u32_at(36), stored_len: u32_at(40), raw_len: u32_at(44), kind, codec },
    ))
}

/// Writes a sorted index file from entries given in id order, each id once.
pub(super) struct Writer {
    out: BufWriter<File>,
    block: Vec<u8>,
    blocks: u64,
    blobs: u64,
    bits: u32,
    counts: Vec<u32>,
    salt: [u8; 16],
    last: Option<Id>,
    keys: Option<Keys>,
}

impl Writer {
    /// A writer into `file` (empty) for at most about `expected` blobs (sizes the fan-out).
    /// Blocks are sealed with `keys` if given.
    pub(super) fn new(file: File, expected: u64, keys: Option<&Keys>) -> Writer {
        let bits = bits_for(expected);
        Writer {
            out: BufWriter::with_capacity(1 << 20, file),
            block: Vec::with_capacity(BLOCK_LEN),
            blocks: 0,
            blobs: 0,
            bits,
            counts: vec![0; 1 << bits],
            salt: crate::crypto::secure_random(),
            last: None,
            keys: keys.cloned(),
        }
    }

    pub(super) fn push(&mut self, id: &Id, at: &Location) -> io::Result<()> {
        assert!(self.last.map_or(true, |last| last < *id), "sorted index entries must come in id order, once each");
        self.last = Some(*id);
        let start = self.block.len();
        self.block.resize(start + ENTRY_LEN, 0);
        encode_entry(id, at, &mut self.block[start..]);
        self.counts[bucket_of(id, self.bits)] += 1;
        self.blobs += 1;
        if self.block.len() == ENTRY_LEN * BLOCK_ENTRIES {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> io::Result<()> {
        match &self.keys {
            Some(keys) => self.out.write_all(&keys.seal(&block_aad(&self.salt, self.blocks), &self.block))?,
            None => {
                let sum = block_sum(&self.salt, self.blocks, &self.block);
                self.out.write_all(&self.block)?;
                self.out.write_all(&sum)?;
            }
        }
        self.block.clear();
        self.blocks += 1;
        Ok(())
    }

    /// Writes the head and footer and syncs the file; returns it.
    pub(super) fn finish(mut self, head: &Head) -> io::Result<File> {
        if !self.block.is_empty() {
            self.end_block()?;
        }
        let mut tail = Vec::with_capacity(head.packs.len() * PACK_LEN + head.files.len() * 32 + self.counts.len() * 4);
        for pack in &head.packs {
            tail.extend_from_slice(&pack.id.0);
            tail.extend_from_slice(&pack.len.to_le_bytes());
            tail.extend_from_slice(&pack.first_file.to_le_bytes());
            tail.extend_from_slice(&pack.record.to_le_bytes());
        }
        for file in &head.files {
            tail.extend_from_slice(&file.0);
        }
        let mut start = 0u32;
        for count in &self.counts {
            tail.extend_from_slice(&start.to_le_bytes());
            start += count;
        }
        tail.extend_from_slice(&start.to_le_bytes());
        tail.extend_from_slice(MAGIC);
        tail.extend_from_slice(&VERSION.to_le_bytes());
        tail.extend_from_slice(&self.bits.to_le_bytes());
        tail.extend_from_slice(&self.blobs.to_le_bytes());
        tail.extend_from_slice(&(head.packs.len() as u32).to_le_bytes());
        tail.extend_from_slice(&(head.files.len() as u32).to_le_bytes());
        tail.extend_from_slice(&blocks_len(self.blobs, self.keys.is_some()).to_le_bytes());
        tail.extend_from_slice(&u32::from(self.keys.is_some()).to_le_bytes());
        tail.extend_from_slice(&self.salt);
        let sum = *blake3::hash(&tail).as_bytes();
        tail.extend_from_slice(&sum);
        self.out.write_all(&tail)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file)
    }
}

impl SortedFile {
    /// Opens `file`, checking its footer and head whole; any mismatch is an `InvalidData` error
    /// (the caller rebuilds).
    /// An encrypted repository's copy must be sealed with its `keys`, a plain one's not.
    pub(super) fn open(file: File, path: Option<PathBuf>, keys: Option<&Keys>) -> io::Result<(SortedFile, Head)> {
        let len = file.metadata()?.len();
        if len < FOOTER_LEN as u64 {
            return Err(invalid("shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut footer, len - FOOTER_LEN as u64)?;
        let u32_at = |at: usize| u32::from_le_bytes(footer[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().expect("8 bytes"));
        if &footer[..8] != MAGIC || u32_at(8) != VERSION {
            return Err(invalid("not a sorted index file of this version"));
        }
        let (bits, blobs, packs, files, head_at) =
            (u32_at(12), u64_at(16), u32_at(24) as u64, u32_at(28) as u64, u64_at(32));
        if u32_at(40) != u32::from(keys.is_some()) {
            return Err(invalid("sealed, or not, unlike the repository"));
        }
        if !(1..=MAX_BITS).contains(&bits) || blobs > u32::MAX as u64 || head_at != blocks_len(blobs, keys.is_some()) {
            return Err(invalid("footer out of range"));
        }
        let buckets = (1u64 << bits) + 1;
        let head_len = packs * PACK_LEN as u64 + files * 32 + buckets * 4;
        if head_at.checked_add(head_len).and_then(|n| n.checked_add(FOOTER_LEN as u64)) != Some(len) {
            return Err(invalid("length does not match its footer"));
        }
        let mut tail = vec![0u8; head_len as usize + FOOTER_LEN];
        file.read_exact_at(&mut tail, head_at)?;
        let (summed, sum) = tail.split_at(tail.len() - 32);
        if blake3::hash(summed).as_bytes() != sum {
            return Err(invalid("head checksum mismatch"));
        }
        let (head, starts) = Self::parse_head(&tail, packs as usize, files as usize, buckets as usize)?;
        if starts.first() != Some(&0)
            || starts.last() != Some(&(blobs as u32))
            || starts.windows(2).any(|w| w[0] > w[1])
        {
            return Err(invalid("fan-out table out of order"));
        }
        let salt = footer[44..60].try_into().expect("16 bytes");
        Ok((
            SortedFile {
                file,
                blobs,
                bits,
                starts,
                salt,
                damaged: AtomicBool::new(false),
                packs: packs as u32,
                path,
                keys: keys.cloned(),
                recent: Mutex::default(),
            },
            head,
        ))
    }

    fn parse_head(tail: &[u8], packs: usize, files: usize, buckets: usize) -> io::Result<(Head, Vec<u32>)> {
        let u32_at = |at: usize| u32::from_le_bytes(tail[at..at + 4].try_into().expect("4 bytes"));
        let mut head = Head { packs: Vec::with_capacity(packs), files: Vec::with_capacity(files) };
        for record in tail[..packs * PACK_LEN].chunks_exact(PACK_LEN) {
            let id = Id(record[..32].try_into().expect("32 bytes"));
            let len = u64::from_le_bytes(record[32..40].try_into().expect("8 bytes"));
            let first_file = u32::from_le_bytes(record[40..44].try_into().expect("4 bytes"));
            let record = u32::from_le_bytes(record[44..48].try_into().expect("4 bytes"));
            if first_file as usize >= files {
                return Err(invalid("a pack names an index file it does not list"));
            }
            head.packs.push(PackRecord { id, len, first_file, record });
        }
        let at = packs * PACK_LEN;
        head.files = tail[at..at + files * 32].chunks_exact(32).map(|b| Id(b.try_into().expect("32 bytes"))).collect();
        if head.files.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("index files out of order"));
        }
        let at = at + files * 32;
        let starts = (0..buckets).map(|b| u32_at(at + 4 * b)).collect();
        Ok((head, starts))
    }

    pub(super) fn len(&self) -> u64 {
        self.blobs
    }

    /// Records that a block failed, and removes the file where it is named, if that name is still
    /// this file (another process may have renamed a new copy over it), so the next open
    /// rebuilds it.
    fn mark_damaged(&self) {
        if self.damaged.swap(true, Relaxed) {
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let Some(path) = &self.path else { return };
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
        if let (Ok(named), Ok(open)) = (std::fs::symlink_metadata(path), self.file.metadata()) {
            if same(&named, &open) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Whether a block failed its checksum since opening.
    pub(super) fn damaged(&self) -> bool {
        self.damaged.load(Relaxed)
    }

    /// Reads block `block` into `buffer`, checked; returns its entries' bytes.
    fn read_block<'b>(&self, block: u64, buffer: &'b mut [u8; BLOCK_LEN]) -> io::Result<&'b [u8]> {
        let entries = (self.blobs - block * BLOCK_ENTRIES as u64).min(BLOCK_ENTRIES as u64) as usize;
        let bytes = &mut buffer[..entries * ENTRY_LEN + tag_len(self.keys.is_some())];
        let at = block * (ENTRY_LEN * BLOCK_ENTRIES + tag_len(self.keys.is_some())) as u64;
        self.file.read_exact_at(bytes, at)?;
        // Checked on every read, not once: a block read again from disk may have changed since.
        open_block(&self.salt, self.keys.as_ref(), block, bytes)
    }

    /// The location of `id`. A block that cannot be read or fails its checksum answers
    /// "absent" and marks the file damaged ([`SortedFile::damaged`]): never a wrong location.
    pub(super) fn get(&self, id: &Id) -> Option<Location> {
        self.search(id).map(|(_, location)| location)
    }

    /// [`SortedFile::get`] with the entry's position in the file (its rank in id order).
    pub(super) fn locate(&self, id: &Id) -> Option<(u64, Location)> {
        self.search(id)
    }

    /// The plain entries of block `block`, from the recent ones or read and checked now; `None`
    /// if it cannot be read or fails its check.
    fn entries_of(&self, block: u64) -> Option<Arc<[u8]>> {
        if let Some(entries) = self.recent.lock().expect("poisoned").get(&block) {
            return Some(entries.clone());
        }
        let mut buffer = [0u8; BLOCK_LEN];
        let entries: Arc<[u8]> = Arc::from(self.read_block(block, &mut buffer).ok()?);
        let mut recent = self.recent.lock().expect("poisoned");
        if recent.len() >= RECENT_BLOCKS {
            recent.clear();
        }
        recent.insert(block, entries.clone());
        Some(entries)
    }

    fn search(&self, id: &Id) -> Option<(u64, Location)> {
        let bucket = bucket_of(id, self.bits);
        let (start, end) = (self.starts[bucket] as u64, self.starts[bucket + 1] as u64);
        if start == end {
            return None;
        }
        for block in start / BLOCK_ENTRIES as u64..=(end - 1) / BLOCK_ENTRIES as u64 {
            let Some(entries) = self.entries_of(block) else {
                self.mark_damaged();
                return None;
            };
            let first = block * BLOCK_ENTRIES as u64;
            let from = start.saturating_sub(first) as usize;
            let to = ((end - first) as usize).min(entries.len() / ENTRY_LEN);
            let slice = &entries[from * ENTRY_LEN..to * ENTRY_LEN];
            let count = slice.len() / ENTRY_LEN;
            let at = |i: usize| &slice[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
            let (mut low, mut high) = (0, count);
            while low < high {
                let middle = (low + high) / 2;
                match at(middle)[..32].cmp(&id.0[..]) {
                    std::cmp::Ordering::Less => low = middle + 1,
                    std::cmp::Ordering::Greater => high = middle,
                    std::cmp::Ordering::Equal => {
                        let decoded = decode_entry(at(middle)).filter(|(_, l)| l.pack < self.packs);
                        if decoded.is_none() {
                            self.mark_damaged();
                        }
                        return decoded.map(|(_, location)| (first + (from + middle) as u64, location));
                    }
                }
            }
            if count > 0 && at(count - 1)[..32] > id.0[..] {
                return None;
            }
        }
        None
    }

    /// Every entry in id order, read sequentially through a small buffer (nothing of the file
    /// stays resident); a block that fails its checksum ends the scan with an error.
    pub(super) fn scan(&self) -> Scan<'_> {
        let blocks = Positioned { file: &self.file, at: 0, end: blocks_len(self.blobs, self.keys.is_some()) };
        Scan {
            file: self,
            reader: BufReader::with_capacity(1 << 20, blocks),
            block: 0,
            entries: Vec::new(),
            next: 0,
            failed: false,
        }
    }
}

/// Reads `file` from `at` to `end` by position: the file's own offset is shared.
struct Positioned<'f> {
    file: &'f File,
    at: u64,
    end: u64,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let len = (buffer.len() as u64).min(self.end - self.at) as usize;
        let read = self.file.read_at(&mut buffer[..len], self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// See [`SortedFile::scan`].
pub(super) struct Scan<'f> {
    file: &'f SortedFile,
    reader: BufReader<Positioned<'f>>,
    block: u64,
    entries: Vec<u8>,
    next: usize,
    failed: bool,
}

impl Scan<'_> {
    fn fill(&mut self) -> io::Result<()> {
        let file = self.file;
        let count = (file.blobs - self.block * BLOCK_ENTRIES as u64).min(BLOCK_ENTRIES as u64) as usize;
        self.entries.resize(count * ENTRY_LEN + tag_len(file.keys.is_some()), 0);
        self.reader.read_exact(&mut self.entries)?;
        if let Err(e) = open_block(&file.salt, file.keys.as_ref(), self.block, &mut self.entries) {
            file.mark_damaged();
            return Err(e);
        }
        if file.keys.is_some() {
            self.entries.drain(..crate::crypto::NONCE_LEN);
        }
        self.entries.truncate(count * ENTRY_LEN);
        self.block += 1;
        self.next = 0;
        Ok(())
    }
}

impl Iterator for Scan<'_> {
    type Item = io::Result<(Id, Location)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.next * ENTRY_LEN >= self.entries.len() {
            if self.block * BLOCK_ENTRIES as u64 >= self.file.blobs {
                return None;
            }
            if let Err(e) = self.fill() {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let bytes = &self.entries[self.next * ENTRY_LEN..(self.next + 1) * ENTRY_LEN];
        self.next += 1;
        match decode_entry(bytes).filter(|(_, l)| l.pack < self.file.packs) {
            Some(entry) => Some(Ok(entry)),
            None => {
                self.failed = true;
                self.file.mark_damaged();
                Some(Err(invalid("unknown kind, codec or pack")))
            }
        }
    }
}
