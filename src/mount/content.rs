//! File contents through the mount, read on demand: an open file knows where each of its chunks
//! ends (from the index, no read), a read takes the chunks its range covers, and decoded chunks
//! and trees are kept in small caches of bounded bytes ([`Lru`]). Memory never holds a whole
//! file, however large; every chunk is verified against its id as it is read
//! ([`crate::repository::Indexed::read_blob`]'s check).

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::index::Index;

/// Bytes of decoded chunks kept: a few chunks of the default 1 MiB average, so that the
/// kernel's reads of 128 KiB walk through a chunk decoded once, with room for a few files
/// read side by side.
pub(crate) const CHUNK_CACHE: u64 = 32 << 20;

/// Bytes (roughly, as decoded) of trees kept, so that a lookup after a listing of the same
/// directory decodes nothing.
pub(crate) const TREE_CACHE: u64 = 32 << 20;

/// An open file: its chunks and where each ends in the file.
#[derive(Debug)]
pub(crate) struct OpenFile {
    chunks: Vec<Id>,
    /// `ends[i]`: the offset just past chunk `i`; the last is the file's size.
    ends: Vec<u64>,
}

impl OpenFile {
    /// A file of `chunks` whose entry says `size` bytes; an error (the reason) if the index
    /// lacks a chunk or the chunks do not add up to the size.
    pub(crate) fn new(index: &Index, chunks: &[Id], size: u64) -> std::result::Result<OpenFile, String> {
        let mut ends = Vec::with_capacity(chunks.len());
        let mut end = 0u64;
        for id in chunks {
            let location =
                index.get(id).ok_or_else(|| format!("its chunk {} is not in the repository index", id.short()))?;
            end += u64::from(location.raw_len);
            ends.push(end);
        }
        if end != size {
            return Err(format!("its chunks hold {end} bytes, not the {size} its entry says: the snapshot is damaged"));
        }
        Ok(OpenFile { chunks: chunks.to_vec(), ends })
    }

    pub(crate) fn size(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Up to `len` bytes from `offset` (fewer at the end of the file), each chunk taken from
    /// `fetch`, which decodes and verifies it.
    pub(crate) fn read(
        &self,
        offset: u64,
        len: u32,
        fetch: &mut dyn FnMut(&Id) -> Result<Arc<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        let end = self.size().min(offset.saturating_add(u64::from(len)));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        let mut chunk = self.ends.partition_point(|&chunk_end| chunk_end <= offset);
        while at < end {
            let start = if chunk == 0 { 0 } else { self.ends[chunk - 1] };
            let plain = fetch(&self.chunks[chunk])?;
            let expected = self.ends[chunk] - start;
            if plain.len() as u64 != expected {
                return Err(Error::corrupt(
                    format!("chunk {}", self.chunks[chunk].short()),
                    format!("holds {} bytes, not the {expected} the index says", plain.len()),
                ));
            }
            let from = (at - start) as usize;
            let to = (end.min(self.ends[chunk]) - start) as usize;
            out.extend_from_slice(&plain[from..to]);
            at = start + to as u64;
            chunk += 1;
        }
        Ok(out)
    }
}

/// A cache of values by id, the least recently used dropped first once they weigh more than
/// the budget (one value heavier than the whole budget is still kept, alone). Each use is a tick
/// of a clock, and `by_use` orders the ids by their last tick, so the least recently used is
/// found in O(log n): a scan of every entry per insert made walking 200,000 directories take
/// 55 s, 84% of it in the scan.
pub(crate) struct Lru<V> {
    entries: HashMap<Id, (Arc<V>, u64, u64)>,
    by_use: std::collections::BTreeMap<u64, Id>,
    clock: u64,
    held: u64,
    budget: u64,
}

impl<V> Lru<V> {
    pub(crate) fn new(budget: u64) -> Lru<V> {
        Lru { entries: HashMap::new(), by_use: Default::default(), clock: 0, held: 0, budget }
    }

    pub(crate) fn get(&mut self, id: &Id) -> Option<Arc<V>> {
        self.clock += 1;
        let entry = self.entries.get_mut(id)?;
        self.by_use.remove(&entry.1);
        entry.1 = self.clock;
        self.by_use.insert(self.clock, *id);
        Some(Arc::clone(&entry.0))
    }

    pub(crate) fn insert(&mut self, id: Id, value: Arc<V>, weight: u64) {
        self.clock += 1;
        if let Some((_, used, old)) = self.entries.insert(id, (value, self.clock, weight)) {
            self.by_use.remove(&used);
            self.held -= old;
        }
        self.by_use.insert(self.clock, id);
        self.held += weight;
        while self.held > self.budget && self.entries.len() > 1 {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            let Some((_, _, weight)) = self.entries.remove(&oldest) else { break };
            self.held -= weight;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.by_use.clear();
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cross_chunk_borders_and_stop_at_the_end() {
        let parts: Vec<Vec<u8>> = vec![b"hello ".to_vec(), b"chunked ".to_vec(), b"world".to_vec()];
        let ids: Vec<Id> = parts.iter().map(|p| Id::of(p)).collect();
        let mut ends = Vec::new();
        let mut end = 0;
        for part in &parts {
            end += part.len() as u64;
            ends.push(end);
        }
        let file = OpenFile { chunks: ids.clone(), ends };
        let mut fetched = 0;
        let mut fetch = |id: &Id| {
            fetched += 1;
            Ok(Arc::new(parts[ids.iter().position(|i| i == id).unwrap()].clone()))
        };
        assert_eq!(file.read(0, 100, &mut fetch).unwrap(), b"hello chunked world");
        assert_eq!(file.read(4, 6, &mut fetch).unwrap(), b"o chun");
        assert_eq!(file.read(14, 100, &mut fetch).unwrap(), b"world");
        assert_eq!(file.read(19, 10, &mut fetch).unwrap(), b"");
        assert_eq!(file.read(500, 10, &mut fetch).unwrap(), b"");
        assert_eq!(file.size(), 19);
        let mut short = |_: &Id| Ok(Arc::new(b"hel".to_vec()));
        assert!(file.read(0, 4, &mut short).is_err(), "a chunk shorter than the index says is damage");
    }

    #[test]
    fn the_cache_drops_the_least_recently_used() {
        let mut cache: Lru<u8> = Lru::new(10);
        let (a, b, c) = (Id::of(b"a"), Id::of(b"b"), Id::of(b"c"));
        cache.insert(a, Arc::new(1), 4);
        cache.insert(b, Arc::new(2), 4);
        assert!(cache.get(&a).is_some());
        cache.insert(c, Arc::new(3), 4);
        assert!(cache.get(&b).is_none(), "b was used least recently");
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());
        cache.insert(b, Arc::new(2), 40);
        assert!(cache.get(&b).is_some() && cache.get(&a).is_none(), "a heavy value stays alone");
        assert_eq!((cache.entries.len(), cache.by_use.len()), (1, 1), "one tick per entry");
    }
}
