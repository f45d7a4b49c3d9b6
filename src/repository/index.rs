//! The index: every blob id in the repository mapped to its pack and place in it, from the index
//! files. Blob ids are the dedup key, so this map decides what is stored.
//!
//! At 10^8 blobs the map is 5 GB, more than a small server has, so it is not held in memory: a
//! derived, sorted copy of it lives in a local file ([`sorted`], built by [`build`] with an
//! external merge sort in bounded memory) and is read where it lies; only its fan-out table of
//! bucket starts (at most 16 MiB) is held. Index files written since that copy was built (a
//! snapshot since) are read into a small in-memory delta ([`SortedIds`], 56 bytes a blob) that
//! lookups consult too; once it passes [`open::DELTA_LIMIT`] blobs the copy is rebuilt by one
//! streaming merge of the two. Where the copy lives and when it is rebuilt: [`open`].
//!
//! "First location wins" (store-format/index.md, "Loading") holds across the copy and the
//! delta: each pack keeps the index file that named it first and its record there, and of two
//! locations of a blob the one in the earlier pack (then at the lower offset) wins, as if every
//! file had been read in sorted order.
//!
//! An encrypted repository's copy has its blocks sealed with the repository's keys, as its index
//! files are: nothing in it is plaintext that the repository keeps encrypted.

mod build;
#[cfg(test)]
mod copy_tests;
pub(crate) mod open;
mod sorted;

use std::collections::HashMap;

use crate::format::index::{IndexFile, IndexedPack};
use crate::format::pack::{BlobEntry, BlobKind, Codec};
use crate::id::Id;
use sorted::SortedFile;

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

impl Location {
    /// Where `blob`, an entry of the pack numbered `pack`, lives.
    pub fn of(pack: u32, blob: &BlobEntry) -> Location {
        Location {
            pack,
            offset: blob.offset,
            stored_len: blob.stored_len,
            raw_len: blob.raw_len,
            kind: blob.kind,
            codec: blob.codec,
        }
    }

    /// The pack entry of blob `id` stored here.
    pub fn entry(&self, id: &Id) -> BlobEntry {
        BlobEntry {
            id: *id,
            kind: self.kind,
            codec: self.codec,
            offset: self.offset,
            stored_len: self.stored_len,
            raw_len: self.raw_len,
        }
    }
}

/// Which of two packs' copies of a blob wins: the id of the index file that named the pack first,
/// and the pack's record number in it.
type PackOrder = (Id, u32);

#[derive(Debug, Default)]
pub struct Index {
    /// Pack ids and lengths, in the order first seen.
    pub packs: Vec<(Id, u64)>,
    pack_numbers: HashMap<Id, u32>,
    /// Per pack, where it was first named.
    order: Vec<PackOrder>,
    /// The sorted copy on disk, if there is one.
    main: Option<SortedFile>,
    /// Blobs of index files newer than `main` (all of them without it).
    delta: SortedIds<Location>,
}

impl Index {
    /// The index of every blob in `files`, in memory. Where a blob is in several places, the
    /// first pack seen wins (then the lowest offset): any copy is as good as another.
    pub fn build(files: impl IntoIterator<Item = IndexFile>) -> Index {
        Index::default().with_delta(files.into_iter().map(|file| (Id([0; 32]), file)))
    }

    /// `self` with the blobs of `files` (in sorted name order, none already in `main`) in its
    /// delta.
    fn with_delta(mut self, files: impl IntoIterator<Item = (Id, IndexFile)>) -> Index {
        let mut blobs = Vec::new();
        let mut counter = 0u32;
        for (name, file) in files {
            for (position, pack) in file.packs.iter().enumerate() {
                // Unnamed files (in-memory builds) count their packs across files.
                let record = if name == Id([0; 32]) { counter } else { position as u32 };
                counter += 1;
                self.add_pack(pack, (name, record), &mut blobs);
            }
        }
        blobs.sort_unstable_by_key(|(id, l)| (*id, self.order[l.pack as usize], l.offset));
        blobs.dedup_by_key(|(id, _)| *id);
        self.delta = SortedIds::from_sorted(blobs);
        self
    }

    /// The number of pack `id`, numbered now if new; a pack named before by a later file moves
    /// up to `order`.
    fn pack_number(&mut self, id: Id, len: u64, order: PackOrder) -> u32 {
        match self.pack_numbers.get(&id) {
            Some(&number) => {
                let known = &mut self.order[number as usize];
                *known = (*known).min(order);
                number
            }
            None => {
                self.packs.push((id, len));
                self.order.push(order);
                let number = (self.packs.len() - 1) as u32;
                self.pack_numbers.insert(id, number);
                number
            }
        }
    }

    fn add_pack(&mut self, pack: &IndexedPack, order: PackOrder, blobs: &mut Vec<(Id, Location)>) {
        let number = self.pack_number(pack.id, pack.len, order);
        blobs.extend(pack.blobs.iter().map(|blob| (blob.id, Location::of(number, blob))));
    }

    /// The winner of two locations of one blob.
    fn first(&self, a: Location, b: Location) -> Location {
        let key = |l: &Location| (self.order[l.pack as usize], l.offset);
        if key(&b) < key(&a) {
            b
        } else {
            a
        }
    }

    /// Where blob `id` is. A block of the sorted copy found damaged answers "absent" (never a
    /// wrong place) and marks the index damaged ([`Index::damaged`]).
    pub fn get(&self, id: &Id) -> Option<Location> {
        let delta = self.delta.get(id).copied();
        let main = self.main.as_ref().and_then(|main| main.get(id));
        match (main, delta) {
            (Some(a), Some(b)) => Some(self.first(a, b)),
            (a, b) => a.or(b),
        }
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.get(id).is_some()
    }

    /// Whether a lookup or scan found the sorted copy damaged since it was opened: some blobs
    /// may then have looked absent. Commands that delete (prune) must not go on.
    pub fn damaged(&self) -> bool {
        self.main.as_ref().is_some_and(SortedFile::damaged)
    }

    pub fn pack_id(&self, location: &Location) -> Id {
        self.packs[location.pack as usize].0
    }

    pub fn blob_count(&self) -> usize {
        self.iter_locations().count()
    }

    /// Every blob with its winning location, in id order: the sorted copy read sequentially
    /// (nothing of it stays in memory) merged with the delta. Ends with an error if the copy is
    /// found damaged.
    pub fn iter_locations(&self) -> impl Iterator<Item = std::io::Result<(Id, Location)>> + '_ {
        self.iter_positioned().map(|item| item.map(|(_, id, location)| (id, location)))
    }

    /// How many positions [`Index::locate`] gives out: every blob has one below this, and no two
    /// blobs share one (a bitset this long marks blobs).
    pub fn positions(&self) -> u64 {
        self.main.as_ref().map_or(0, SortedFile::len) + self.delta.len() as u64
    }

    /// Where blob `id` is, with its position: its rank in the sorted copy, or for a blob only in
    /// the delta, the copy's length plus its rank there. A damaged block answers "absent", as
    /// [`Index::get`] does.
    pub fn locate(&self, id: &Id) -> Option<(u64, Location)> {
        let main = self.main.as_ref().and_then(|main| main.locate(id));
        let base = self.main.as_ref().map_or(0, SortedFile::len);
        let delta = self.delta.position(id).map(|at| (base + at as u64, self.delta.items[at].1));
        match (main, delta) {
            (Some((position, a)), Some((_, b))) => Some((position, self.first(a, b))),
            (a, b) => a.or(b),
        }
    }

    /// [`Index::iter_locations`] with each blob's position ([`Index::locate`]).
    pub fn iter_positioned(&self) -> impl Iterator<Item = std::io::Result<(u64, Id, Location)>> + '_ {
        let base = self.main.as_ref().map_or(0, SortedFile::len);
        let mut main = self.main.as_ref().map(SortedFile::scan).into_iter().flatten().zip(0u64..).peekable();
        let mut delta = self.delta.iter().copied().zip(base..).peekable();
        let from_main = |(item, at): (std::io::Result<(Id, Location)>, u64)| item.map(|(id, l)| (at, id, l));
        std::iter::from_fn(move || {
            let next_main = match main.peek() {
                Some((Err(_), _)) => return main.next().map(from_main),
                Some((Ok((id, _)), _)) => Some(*id),
                None => None,
            };
            let next_delta = delta.peek().map(|((id, _), _)| *id);
            match (next_main, next_delta) {
                (Some(a), Some(b)) if a == b => {
                    let (Some((Ok((id, x)), at)), Some(((_, y), _))) = (main.next(), delta.next()) else {
                        unreachable!()
                    };
                    Some(Ok((at, id, self.first(x, y))))
                }
                (Some(a), Some(b)) if b < a => delta.next().map(|((id, l), at)| Ok((at, id, l))),
                (Some(_), _) => main.next().map(from_main),
                (None, _) => delta.next().map(|((id, l), at)| Ok((at, id, l))),
            }
        })
    }

    /// The number [`Location::pack`] gives pack `id`, if the index names it.
    pub fn number_of(&self, id: &Id) -> Option<u32> {
        self.pack_numbers.get(id).copied()
    }

    /// Every blob as a pack entry, for verification; an error if the sorted copy is damaged.
    pub fn entries(&self) -> impl Iterator<Item = std::io::Result<(Id, BlobEntry)>> + '_ {
        self.iter_locations().map(|item| item.map(|(id, l)| (self.packs[l.pack as usize].0, l.entry(&id))))
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
        self.position(id).map(|at| &self.items[at].1)
    }

    /// The rank of `id` among the ids.
    pub fn position(&self, id: &Id) -> Option<usize> {
        let bucket = Self::bucket_of(id, self.bits) as usize;
        let start = self.starts[bucket] as usize;
        let slice = &self.items[start..self.starts[bucket + 1] as usize];
        slice.binary_search_by(|(other, _)| other.cmp(id)).ok().map(|i| start + i)
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
        assert_eq!((index.pack_id(&location), location.offset), (id(100), 40));
        assert_eq!(index.packs.len(), 2);
    }
}
