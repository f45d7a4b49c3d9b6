//! Content-defined chunking with FastCDC (the fastcdc crate's v2020 cut function), driven by the
//! parameters pinned in the repository config so every client cuts identical chunks.
//!
//! Files are read in bounded windows: a chunk is cut only when at least `max_size` bytes are
//! buffered or the stream has ended, which gives exactly the chunks that cutting the whole file at
//! once would give (the cut point depends on at most `max_size` bytes ahead).

use std::io::Read;
use std::ops::Range;

use crate::format::config::ChunkerParams;

/// Bytes read from a file at a time: twice the default largest chunk, the least that
/// [`Chunker::for_each_window`] accepts. Smaller windows keep memory and cache misses down.
pub const READ_WINDOW: usize = 8 << 20;

thread_local! {
    /// The last read window of this thread, kept for its next file: a fresh window costs a page
    /// fault per 4 KiB touched (a quarter of a million faults per toolchain snapshot).
    static SPARE_WINDOW: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Whether `bytes` are all zeros: the first bytes decide for most data, an OR over them all
/// (which the compiler vectorizes) for the rest. A file's holes read as zeros: the snapshot
/// names its largest chunk of zeros once, and restore --sparse leaves zero blocks unwritten.
pub fn all_zeros(bytes: &[u8]) -> bool {
    let (head, _) = bytes.split_at(bytes.len().min(16));
    head.iter().all(|&b| b == 0) && bytes.iter().fold(0, |any, &b| any | b) == 0
}

/// Names chunks, hashing a chunk of zeros of the largest size once: a thin image's unwritten
/// space is a row of them (25,600 in 100 GiB), whose id is the same every time.
pub struct ZeroMemo {
    max_size: usize,
    id: std::sync::OnceLock<crate::id::Id>,
}

impl ZeroMemo {
    pub fn new(max_size: u32) -> ZeroMemo {
        ZeroMemo { max_size: max_size as usize, id: std::sync::OnceLock::new() }
    }

    /// The id of `data` under `hasher` (always the same hasher for one memo).
    pub fn id(&self, hasher: crate::id::BlobHasher, data: &[u8]) -> crate::id::Id {
        match data.len() == self.max_size && all_zeros(data) {
            true => *self.id.get_or_init(|| hasher.id(data)),
            false => hasher.id(data),
        }
    }
}

pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    hasher: crate::id::BlobHasher,
    /// The length of the chunk cut from a run of zeros ([`Chunker::zero_run`]), once asked.
    zero_len: std::sync::OnceLock<usize>,
}

impl Chunker {
    /// `params` must have passed [`ChunkerParams::validate`].
    pub fn new(params: ChunkerParams) -> Chunker {
        use fastcdc::v2020::{get_gear_with_seed, logarithm2, MASKS};
        let bits = logarithm2(params.avg_size);
        let normalization = params.normalization as u32;
        let (gear, gear_ls) = get_gear_with_seed(params.gear_seed);
        Chunker {
            params,
            mask_s: MASKS[(bits + normalization) as usize],
            mask_l: MASKS[(bits - normalization) as usize],
            gear,
            gear_ls,
            hasher: crate::id::BlobHasher::default(),
            zero_len: std::sync::OnceLock::new(),
        }
    }

    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// Length of the chunk that starts at `data[0]`. `data` holds at least `max_size` bytes or
    /// everything up to the end of the stream.
    pub fn next_len(&self, data: &[u8]) -> usize {
        let (_, len) = fastcdc::v2020::cut_gear(
            data,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            self.params.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }

    /// Cuts every chunk that can be decided inside `data`. With `eof` the whole of `data` is
    /// consumed; otherwise the undecided tail (shorter than `max_size`) is left for the next window.
    ///
    /// A chunk that starts a run of zeros at least as long as the chunk a run of zeros is cut
    /// into is that chunk: the cut depends only on the bytes before it. Telling zeros apart is
    /// several times faster than rolling the gear hash over them (a thin image's unwritten space,
    /// read as zeros: 8 GiB in 5.1 s before, measured).
    pub fn cut_window(&self, data: &[u8], eof: bool) -> Vec<Range<usize>> {
        let max = self.params.max_size as usize;
        let zero = self.zero_len();
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < data.len() && (eof || data.len() - start >= max) {
            let rest = &data[start..];
            // By pages, so that zeros followed by data soon give up soon.
            let len = match rest.len() >= zero && rest[..zero].chunks(4096).all(all_zeros) {
                true => zero,
                false => self.next_len(rest),
            };
            chunks.push(start..start + len);
            start += len;
        }
        chunks
    }

    /// Reads `reader` to the end in windows of up to `window` bytes (at least twice `max_size`),
    /// calling `each` with the window and the chunks cut in it. `size_hint` (the expected length)
    /// keeps small files from allocating a whole window. Memory stays at one window. Returns the
    /// number of bytes read.
    pub fn for_each_window<R: Read, E: From<std::io::Error>>(
        &self,
        mut reader: R,
        window: usize,
        size_hint: usize,
        mut each: impl FnMut(&[u8], &[Range<usize>]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let window = window.max(2 * self.params.max_size as usize);
        let mut buffer = SPARE_WINDOW.take();
        buffer.clear();
        buffer.reserve(size_hint.saturating_add(1).min(window));
        let result = (|| {
            let mut total = 0u64;
            loop {
                let want = window - buffer.len();
                let got = (&mut reader).take(want as u64).read_to_end(&mut buffer)?;
                total += got as u64;
                let eof = got < want;
                let chunks = self.cut_window(&buffer, eof);
                each(&buffer, &chunks)?;
                if eof {
                    return Ok(total);
                }
                let consumed = chunks.last().map_or(0, |c| c.end);
                buffer.drain(..consumed);
            }
        })();
        SPARE_WINDOW.set(buffer);
        result
    }
}

impl Chunker {
    /// Names chunks with `hasher` (the repository's; plain BLAKE3 by default).
    pub fn with_hasher(mut self, hasher: crate::id::BlobHasher) -> Chunker {
        self.hasher = hasher;
        self
    }

    pub fn hasher(&self) -> crate::id::BlobHasher {
        self.hasher
    }

    /// The length and id of the chunk this chunker cuts from a long run of zeros (a thin image's
    /// unwritten space is a row of them): a restore writes it without reading it, a drill's
    /// room check counts it as a hole.
    pub fn zero_run(&self) -> (usize, crate::id::Id) {
        let len = self.zero_len();
        (len, self.hasher.id(&vec![0; len]))
    }

    /// The length of the chunk this chunker cuts from a long run of zeros.
    fn zero_len(&self) -> usize {
        *self.zero_len.get_or_init(|| self.next_len(&vec![0; self.params.max_size as usize]))
    }

    /// The chunk ids a snapshot would record for all `reader` holds (`size_hint` bytes, about),
    /// without storing anything: to compare files on disk with a snapshot (restore drills,
    /// `--skip-identical`). A chunk of zeros of the largest size (a hole's) is hashed once.
    pub fn ids_of(&self, reader: impl Read, size_hint: u64) -> std::io::Result<Vec<crate::id::Id>> {
        use rayon::prelude::*;
        let mut ids = Vec::new();
        let names = ZeroMemo::new(self.params.max_size);
        self.for_each_window::<_, std::io::Error>(reader, READ_WINDOW, size_hint as usize, |window, chunks| {
            ids.extend(chunks.par_iter().map(|c| names.id(self.hasher, &window[c.clone()])).collect::<Vec<_>>());
            Ok(())
        })?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so the pinned vectors below never change.
    pub(super) fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn whole(chunker: &Chunker, data: &[u8]) -> Vec<Range<usize>> {
        chunker.cut_window(data, true)
    }

    #[test]
    fn windows_cut_like_the_whole_stream() {
        let chunker = Chunker::new(ChunkerParams::default());
        let data = noise(23 * 1024 * 1024 + 77, 1);
        let expected = whole(&chunker, &data);
        let mut got = Vec::new();
        let mut base = 0;
        let read = chunker
            .for_each_window::<_, std::io::Error>(&data[..], 9 * 1024 * 1024, 0, |_window, chunks| {
                got.extend(chunks.iter().map(|c| base + c.start..base + c.end));
                base += chunks.last().map_or(0, |c| c.end);
                Ok(())
            })
            .unwrap();
        assert_eq!(read, data.len() as u64);
        assert_eq!(got, expected);
    }

    /// Pins chunk boundaries for the default parameters: a change here changes every chunk id in
    /// every repository, and needs a new format version.
    #[test]
    fn pinned_boundaries() {
        let chunker = Chunker::new(ChunkerParams::default());
        let data = noise(16 * 1024 * 1024, 0x5eed);
        let lengths: Vec<usize> = whole(&chunker, &data).iter().map(|c| c.len()).collect();
        assert_eq!(lengths.iter().sum::<usize>(), data.len());
        assert_eq!(lengths, PINNED_LENGTHS);
    }

    const PINNED_LENGTHS: &[usize] = &[
        770163, 854502, 359561, 1664372, 1296930, 924781, 1254367, 1060015, 854944, 1175608, 1727843, 711624, 350765,
        1797262, 1170888, 803591,
    ];

    /// Runs of zeros of every length around the chunk they are cut into, among data, cut as the
    /// gear hash alone cuts them, under gear seeds whose zeros are cut at the largest size and
    /// seeds whose zeros are cut sooner.
    #[test]
    fn runs_of_zeros_cut_as_the_gear_hash_cuts_them() {
        // Small chunks, so that seeds whose zeros are cut sooner than the largest size (about
        // one in 2^9 here, one in 2^16 with the default sizes) are found quickly.
        let params = |gear_seed| ChunkerParams {
            gear_seed,
            min_size: 256,
            avg_size: 1024,
            max_size: 4096,
            ..Default::default()
        };
        let sooner = (0..1u64 << 20).find(|&seed| Chunker::new(params(seed)).zero_len() < 4096).unwrap();
        let mut sizes = std::collections::BTreeSet::new();
        for seed in (0..12u64).chain([sooner]) {
            let chunker = Chunker::new(params(seed));
            let zero = chunker.zero_len();
            sizes.insert(zero);
            let mut data = Vec::new();
            for (i, run) in [zero - 1, zero, zero + 1, 3 * zero + 17, 1, 9000, 2 * zero].into_iter().enumerate() {
                data.extend(noise(300 + 997 * i, seed * 31 + i as u64));
                data.extend(std::iter::repeat(0).take(run));
            }
            let mut plain = Vec::new();
            let mut start = 0;
            while start < data.len() {
                let len = chunker.next_len(&data[start..]);
                plain.push(start..start + len);
                start += len;
            }
            assert_eq!(whole(&chunker, &data), plain, "gear seed {seed}");
        }
        assert!(sizes.len() > 1 && sizes.contains(&4096), "zeros are cut at {sizes:?} only: the seeds miss a case");
    }

    #[test]
    fn empty_and_tiny_inputs() {
        let chunker = Chunker::new(ChunkerParams::default());
        assert!(whole(&chunker, &[]).is_empty());
        assert_eq!(whole(&chunker, b"abc"), vec![0..3]);
    }
}
