//! The in-memory index: every blob id in the repository mapped to its pack and place in it, built
//! from the index files at open. Blob ids are the dedup key, so this map decides what is stored.

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
    blobs: HashMap<Id, Location>,
}

impl Index {
    pub fn add_file(&mut self, file: &IndexFile) {
        for pack in &file.packs {
            self.add_pack(pack);
        }
    }

    pub fn add_pack(&mut self, pack: &IndexedPack) {
        let number = *self.pack_numbers.entry(pack.id).or_insert_with(|| {
            self.packs.push((pack.id, pack.len));
            (self.packs.len() - 1) as u32
        });
        for blob in &pack.blobs {
            // The first location wins: any copy of a blob is as good as another.
            self.blobs.entry(blob.id).or_insert(Location {
                pack: number,
                offset: blob.offset,
                stored_len: blob.stored_len,
                raw_len: blob.raw_len,
                kind: blob.kind,
                codec: blob.codec,
            });
        }
    }

    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
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
