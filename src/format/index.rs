//! Index files (`index/<id>`): for each pack, the entries of its trailer, so that opening a
//! repository reads a few index files instead of every pack. See store-format/index.md.

use super::pack::{BlobEntry, Codec, ENTRY_LEN};
use super::{envelope, Put, Reader};
use crate::error::{Error, Result};
use crate::id::Id;

pub const MAGIC: &[u8; 8] = b"CAIRNIDX";
/// The highest index file version this cairn reads: 2 when an entry's codec is
/// [`Codec::ZstdDict`], else 1 ([`version_for`]).
pub const VERSION: u16 = 2;

/// The version of an index file listing `packs`: the lowest that has their codecs.
pub fn version_for(packs: &[IndexedPack]) -> u16 {
    match packs.iter().flat_map(|p| &p.blobs).any(|e| e.codec == Codec::ZstdDict) {
        true => 2,
        false => 1,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexFile {
    pub packs: Vec<IndexedPack>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    pub id: Id,
    /// Total length of the pack file in bytes.
    pub len: u64,
    pub blobs: Vec<BlobEntry>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut body = Vec::with_capacity(4 + self.packs.len() * 44 + blobs * ENTRY_LEN);
        body.put_u32(self.packs.len() as u32);
        for pack in &self.packs {
            body.put_id(&pack.id);
            body.put_u64(pack.len);
            body.put_u32(pack.blobs.len() as u32);
            for blob in &pack.blobs {
                blob.encode_into(&mut body);
            }
        }
        envelope::seal(MAGIC, version_for(&self.packs), &body)
    }

    pub fn decode(data: &[u8], file: &str) -> Result<IndexFile> {
        let mut packs = Vec::new();
        IndexFile::each_pack(data, file, |pack| {
            packs.push(pack);
            Ok(())
        })?;
        Ok(IndexFile { packs })
    }

    /// [`IndexFile::decode`] a pack at a time: each pack goes to `visit` as it is decoded, so
    /// the file's packs are never all held at once (at 10^8 blobs an index file decodes to
    /// hundreds of megabytes). A caller that must not act on part of a damaged file visits it
    /// once with nothing to do first: the whole file is checked by the time this returns.
    pub fn each_pack(data: &[u8], file: &str, mut visit: impl FnMut(IndexedPack) -> Result<()>) -> Result<()> {
        let (_version, body) = envelope::open(data, MAGIC, VERSION, file)?;
        let mut r = Reader::new(body, file);
        let pack_count = r.count(32 + 8 + 4)?;
        for _ in 0..pack_count {
            let id = r.id()?;
            let len = r.u64()?;
            let blob_count = r.count(ENTRY_LEN)?;
            let mut blobs = Vec::with_capacity(blob_count);
            for _ in 0..blob_count {
                let blob = BlobEntry::decode_from(&mut r)?;
                if blob.end() > len {
                    return Err(Error::corrupt(
                        file,
                        format!("blob {} lies past the end of pack {}", blob.id.short(), id.short()),
                    ));
                }
                blobs.push(blob);
            }
            visit(IndexedPack { id, len, blobs })?;
        }
        r.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::BlobKind;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = BlobEntry> {
        (any::<[u8; 32]>(), any::<bool>(), 16u32..1 << 20, 0u32..1 << 20).prop_map(|(id, tree, offset, len)| {
            BlobEntry {
                id: Id(id),
                kind: if tree { BlobKind::Tree } else { BlobKind::Data },
                codec: Codec::Zstd,
                offset,
                stored_len: len,
                raw_len: len.wrapping_mul(3),
            }
        })
    }

    fn index() -> impl Strategy<Value = IndexFile> {
        proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(entry(), 0..6)), 0..5).prop_map(
            |packs| IndexFile {
                packs: packs.into_iter().map(|(id, blobs)| IndexedPack { id: Id(id), len: 1 << 22, blobs }).collect(),
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip(index in index()) {
            prop_assert_eq!(IndexFile::decode(&index.encode(), "i").unwrap(), index);
        }

        #[test]
        fn truncation_and_noise_are_errors(index in index(), cut in 1usize..10_000, data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let encoded = index.encode();
            let cut = cut.min(encoded.len());
            prop_assert!(IndexFile::decode(&encoded[..encoded.len() - cut], "i").is_err());
            prop_assert!(IndexFile::decode(&data, "i").is_err());
        }
    }
}
