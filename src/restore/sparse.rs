//! Writing a restored file with its runs of zeros left as holes (`restore --sparse`, and drills).
//!
//! A VM image or a preallocated database is mostly zeros that its file system never stored; a
//! snapshot keeps only its bytes, so a restore that writes every zero back needs the image's
//! whole size on the disk (a 100 GiB thin image of 2 GiB of data takes 100 GiB again), and on
//! the day of the disaster fails with a full disk. [`Holes`] writes into a file that restore has
//! just created, so every byte it never writes reads as zero: a block-aligned block of zeros is
//! skipped instead of written, and [`Holes::finish`] sets the length, so that trailing zeros are
//! a hole too. As restic's and borg's `--sparse`, it is asked for: a file restored with holes
//! needs its space when it is written later, and a swap file with holes cannot be used.

use std::fs::File;
use std::io::{Result, Write};
use std::os::unix::fs::FileExt;

use crate::chunking::all_zeros;

/// The unit of a hole: file systems allocate 4 KiB blocks (or multiples), so a zero block
/// aligned to it is one the file need not have.
pub(super) const BLOCK: usize = 4096;

/// Data gathered before a write, as [`std::io::BufWriter`] gathers small chunks (a database's
/// pages); a longer run of data is written as it comes.
const GATHER: usize = 64 * 1024;

/// A writer of a file's content from its start that skips aligned blocks of zeros.
pub(super) struct Holes<'f> {
    file: &'f File,
    /// Where in the file `pending` goes.
    at: u64,
    pending: Vec<u8>,
    /// The end of what is written: the file's length, short of a hole at its end.
    written: u64,
}

impl<'f> Holes<'f> {
    /// A writer of `file`, which must be empty: what it skips must read as zeros.
    pub(super) fn new(file: &'f File) -> Holes<'f> {
        Holes { file, at: 0, pending: Vec::new(), written: 0 }
    }

    /// Writes what is gathered and, if the file ends in a hole, sets its length to all that was
    /// written (the hole's end).
    pub(super) fn finish(mut self) -> Result<()> {
        self.flush()?;
        if self.written < self.at {
            self.file.set_len(self.at)?;
        }
        Ok(())
    }

    /// Gathers `data` after what is gathered, but for [`GATHER`] bytes or more: those complete
    /// the block begun, write what is gathered, and go straight to the file but for the last
    /// block they begin, which may yet turn out to be zeros.
    fn data(&mut self, mut data: &[u8]) -> Result<()> {
        if self.pending.len() + data.len() < GATHER {
            self.pending.extend_from_slice(data);
            return Ok(());
        }
        if !self.pending.is_empty() {
            let begun = ((self.at + self.pending.len() as u64) % BLOCK as u64) as usize;
            let (rest, after) = data.split_at(((BLOCK - begun) % BLOCK).min(data.len()));
            self.pending.extend_from_slice(rest);
            self.flush()?;
            data = after;
        }
        let begun = ((self.at + data.len() as u64) % BLOCK as u64) as usize;
        let (blocks, rest) = data.split_at(data.len() - begun.min(data.len()));
        if !blocks.is_empty() {
            self.file.write_all_at(blocks, self.at)?;
            self.at += blocks.len() as u64;
            self.written = self.at;
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }
}

impl Write for Holes<'_> {
    fn write(&mut self, mut buf: &[u8]) -> Result<usize> {
        let len = buf.len();
        // A block begun by earlier writes, still gathered: a hole if it and its rest are zeros.
        let begun = ((self.at + self.pending.len() as u64) % BLOCK as u64) as usize;
        if begun > 0 && self.pending.len() >= begun && buf.len() >= BLOCK - begun {
            let (rest, after) = buf.split_at(BLOCK - begun);
            if all_zeros(&self.pending[self.pending.len() - begun..]) && all_zeros(rest) {
                self.pending.truncate(self.pending.len() - begun);
                self.flush()?;
                self.at += BLOCK as u64;
                buf = after;
            }
        }
        while !buf.is_empty() {
            // The data before the next aligned block of zeros, and that block if there is one.
            let mut offset = self.at + self.pending.len() as u64;
            let (mut data, mut zeros) = (0, 0);
            while data < buf.len() {
                let block = (BLOCK - (offset % BLOCK as u64) as usize).min(buf.len() - data);
                if block == BLOCK && all_zeros(&buf[data..data + BLOCK]) {
                    zeros = BLOCK;
                    break;
                }
                data += block;
                offset += block as u64;
            }
            self.data(&buf[..data])?;
            if zeros > 0 {
                self.flush()?;
                self.at += zeros as u64;
            }
            buf = &buf[data + zeros..];
        }
        Ok(len)
    }

    /// Writes what is gathered.
    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all_at(&self.pending, self.at)?;
            self.at += self.pending.len() as u64;
            self.written = self.at;
            self.pending.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Writes `content` in `pieces` through [`Holes`]; the file and the bytes it occupies.
    fn written(content: &[u8], pieces: &[usize]) -> (Vec<u8>, u64) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cairn-sparse-{}-{n}", std::process::id()));
        let file = File::create(&path).unwrap();
        let mut holes = Holes::new(&file);
        let mut rest = content;
        for &n in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at(n.min(rest.len()));
            holes.write_all(piece).unwrap();
            rest = after;
        }
        holes.finish().unwrap();
        drop(file);
        let found = (std::fs::read(&path).unwrap(), std::fs::metadata(&path).unwrap().blocks() * 512);
        std::fs::remove_file(&path).unwrap();
        found
    }

    #[test]
    fn zeros_become_holes_and_the_content_is_exact() {
        // 64 MiB of zeros with a little data at the start, in the middle (not block aligned),
        // and near the end, then zeros to the end.
        let mut content = vec![0u8; 64 << 20];
        content[..10].copy_from_slice(b"0123456789");
        content[(32 << 20) + 100..(32 << 20) + 5000].fill(7);
        content[(64 << 20) - 9000] = 1;
        for pieces in [&[1 << 20][..], &[4 << 20], &[4096], &[1000, 70_000, 3]] {
            let (read, occupied) = written(&content, pieces);
            assert!(read == content, "content differs with pieces {pieces:?}");
            // The file system may allocate a little more than the blocks written (ext4 extents).
            assert!(occupied <= 256 * 1024, "{occupied} bytes on disk with pieces {pieces:?}");
        }
    }

    #[test]
    fn any_mix_of_zeros_and_data_in_any_pieces_reads_back_exactly() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        for _ in 0..40 {
            let mut content = Vec::new();
            while content.len() < 600_000 {
                let run = next(3 * BLOCK * 10);
                let byte = if next(2) == 0 { 0 } else { 1 + next(255) as u8 };
                content.resize(content.len() + run, byte);
            }
            let pieces: Vec<usize> = (0..5).map(|_| 1 + next(200_000)).collect();
            assert!(written(&content, &pieces).0 == content, "pieces {pieces:?}");
        }
    }

    #[test]
    fn data_without_zero_blocks_is_written_whole() {
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 | 1).collect();
        for pieces in [&[1 << 20][..], &[4096], &[1000, 70_000, 3]] {
            assert!(written(&content, pieces).0 == content);
        }
        // Zeros shorter than a block, or not aligned to one, are data.
        let mut content = vec![5u8; 3 * BLOCK];
        content[100..100 + BLOCK].fill(0);
        assert!(written(&content, &[BLOCK]).0 == content);
        assert!(written(&[], &[1]).0.is_empty());
    }
}
