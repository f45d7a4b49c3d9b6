//! The in-memory index: every blob id in the repository mapped to its pack and place in it, built
//! from the index files at open. Blob ids are the dedup key, so this map decides what is stored.
//!
//! Memory matters at a million files: the blobs are one sorted array (52 bytes a blob) with a
//! table of where each leading-bits bucket starts, instead of a hash map (about 114 bytes a blob
//! at a million, twice that while it grows). Ids are uniform hashes, so a bucket holds a few
//! blobs and a lookup is one table read and a short binary search.

use std::collections::HashMap;

use crate::format::index::{IndexFile, IndexedPack};
use crate::format::pack::{BlobEntry, BlobKind, Codec};
use crate::id::Id;

/// Where one blob lives. `pack` indexes [`Index::packs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub kind: BlobKind,
    pub codec: Codec,
}

#[derive(Debug, Default)]
pub struct Index {
    /// Pack ids and lengths, in the order first seen.
    pub packs: Vec<(Id, u64)>,
    pack_numbers: HashMap<Id, u32>,
    blobs: SortedIds<Location>,
}

impl Index {
    /// The index of every blob in `files`, read one at a time so only one decoded file is held
    /// beside the index. Where a blob is in several places, the first pack seen wins (then the
    /// lowest offset): any copy is as good as another.
    pub fn build(files: impl IntoIterator<Item = IndexFile>) -> Index {
        let mut index = Index::default();
        let mut blobs = Vec::new();
        for file in files {
            for pack in &file.packs {
                index.add_pack(pack, &mut blobs);
            }
        }
        blobs.sort_unstable_by_key(|(id, l)| (*id, l.pack, l.offset));
        blobs.dedup_by_key(|(id, _)| *id);
        index.blobs = SortedIds::from_sorted(blobs);
        index
    }

    fn add_pack(&mut self, pack: &IndexedPack, blobs: &mut Vec<(Id, Location)>) {
        let number = *self.pack_numbers.entry(pack.id).or_insert_with(|| {
            self.packs.push((pack.id, pack.len));
            (self.packs.len() - 1) as u32
        });
        blobs.extend(pack.blobs.iter().map(|blob| {
            let location = Location {
                pack: number,
                offset: blob.offset,
                stored_len: blob.stored_len,
                raw_len: blob.raw_len,
                kind: blob.kind,
                codec: blob.codec,
            };
            (blob.id, location)
        }));
    }

    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.get(id).is_some()
    }

    pub fn pack_id(&self, location: &Location) -> Id {
        self.packs[location.pack as usize].0
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Every blob as a pack entry, for verification.
    pub fn entries(&self) -> impl Iterator<Item = (Id, BlobEntry)> + '_ {
        self.blobs.iter().map(|(id, l)| {
            let entry = BlobEntry {
                id: *id,
                kind: l.kind,
                codec: l.codec,
                offset: l.offset,
                stored_len: l.stored_len,
                raw_len: l.raw_len,
            };
            (self.packs[l.pack as usize].0, entry)
        })
    }
}

/// Ids with a value each, sorted, with the start of every bucket of leading id bits: a compact
/// map for ids that are uniformly distributed hashes.
#[derive(Debug)]
pub struct SortedIds<T> {
    items: Vec<(Id, T)>,
    /// `starts[b]..starts[b + 1]` are the items whose id begins with bucket `b`.
    starts: Vec<u32>,
    bits: u32,
}

impl<T> Default for SortedIds<T> {
    fn default() -> Self {
        SortedIds::from_sorted(Vec::new())
    }
}

impl<T> SortedIds<T> {
    /// `items` sorted by id, without duplicate ids.
    pub fn from_sorted(mut items: Vec<(Id, T)>) -> SortedIds<T> {
        debug_assert!(items.windows(2).all(|w| w[0].0 < w[1].0));
        items.shrink_to_fit();
        // About eight items a bucket; at least one bit so the shift below stays in range.
        let bits = (usize::BITS - (items.len() / 8).leading_zeros()).clamp(1, 24);
        let mut starts = Vec::with_capacity((1 << bits) + 1);
        let mut position = 0;
        for bucket in 0..1u32 << bits {
            while position < items.len() && Self::bucket_of(&items[position].0, bits) < bucket {
                position += 1;
            }
            starts.push(position as u32);
        }
        starts.push(items.len() as u32);
        SortedIds { items, starts, bits }
    }

    fn bucket_of(id: &Id, bits: u32) -> u32 {
        u32::from_be_bytes(id.0[..4].try_into().expect("4 bytes")) >> (32 - bits)
    }

    pub fn get(&self, id: &Id) -> Option<&T> {
        let bucket = Self::bucket_of(id, self.bits) as usize;
        let slice = &self.items[self.starts[bucket] as usize..self.starts[bucket + 1] as usize];
        slice.binary_search_by(|(other, _)| other.cmp(id)).ok().map(|i| &slice[i].1)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Id, T)> + '_ {
        self.items.iter()
    }

    /// Merges `more` (any order, ids not yet present) in, in place: the table grows by
    /// `more` only, never to twice its size.
    pub fn merge(&mut self, mut more: Vec<(Id, T)>)
    where
        T: Copy,
    {
        more.sort_unstable_by_key(|(id, _)| *id);
        let (mut old, mut new) = (self.items.len(), more.len());
        self.items.extend_from_slice(&more);
        // From the back: each step fills the last free place with the larger remaining item.
        while new > 0 {
            let place = old + new - 1;
            if old > 0 && self.items[old - 1].0 > more[new - 1].0 {
                self.items[place] = self.items[old - 1];
                old -= 1;
            } else {
                self.items[place] = more[new - 1];
                new -= 1;
            }
        }
        *self = SortedIds::from_sorted(std::mem::take(&mut self.items));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn finds_every_id_and_nothing_else() {
        for count in [0u64, 1, 7, 8, 9, 100, 5000] {
            let mut items: Vec<(Id, u64)> = (0..count).map(|n| (id(n), n)).collect();
            items.sort_unstable_by_key(|(id, _)| *id);
            let table = SortedIds::from_sorted(items);
            assert_eq!(table.len() as u64, count);
            for n in 0..count {
                assert_eq!(table.get(&id(n)), Some(&n), "count {count}, item {n}");
            }
            for n in count..count + 100 {
                assert_eq!(table.get(&id(n)), None);
            }
            assert_eq!(table.get(&Id([0; 32])), None);
            assert_eq!(table.get(&Id([0xff; 32])), None);
        }
    }

    #[test]
    fn merges_keep_order() {
        let mut table: SortedIds<u64> = SortedIds::default();
        for round in 0..5u64 {
            table.merge((round * 300..(round + 1) * 300).map(|n| (id(n), n)).collect());
        }
        assert_eq!(table.len(), 1500);
        assert!(table.iter().zip(table.iter().skip(1)).all(|(a, b)| a.0 < b.0));
        assert!((0..1500).all(|n| table.get(&id(n)) == Some(&n)));
    }

    #[test]
    fn the_lowest_copy_of_a_blob_wins() {
        let entry = |offset| BlobEntry {
            id: id(1),
            kind: BlobKind::Data,
            codec: Codec::Raw,
            offset,
            stored_len: 3,
            raw_len: 3,
        };
        let pack = |n: u64, offset| IndexedPack { id: id(100 + n), len: 100, blobs: vec![entry(offset)] };
        let index = Index::build([IndexFile { packs: vec![pack(0, 40), pack(1, 20)] }]);
        assert_eq!(index.blob_count(), 1);
        let location = index.get(&id(1)).unwrap();
        assert_eq!((index.pack_id(location), location.offset), (id(100), 40));
        assert_eq!(index.packs.len(), 2);
    }
}
