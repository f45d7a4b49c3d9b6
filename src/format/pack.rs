//! Pack files (`packs/XY/<pack id>`): many stored blobs back to back, then a trailer that lists
//! each blob's id, kind, codec, offset and lengths. The pack id is BLAKE3 of the whole file.
//! See store-format/pack.md.

use super::{Put, Reader};
use crate::error::{Error, Result};
use crate::id::Id;

pub const HEADER_MAGIC: &[u8; 8] = b"CAIRNPAK";
pub const TRAILER_MAGIC: &[u8; 8] = b"CAIRNPKT";
/// The highest pack version this cairn reads. A pack is written as version 1 unless a blob in it
/// is compressed with a dictionary ([`Codec::ZstdDict`]): then 2 ([`version_for`]).
pub const VERSION: u16 = 2;

/// The version of a pack holding `entries`: the lowest that has their codecs.
pub fn version_for(entries: &[BlobEntry]) -> u16 {
    match entries.iter().any(|e| e.codec == Codec::ZstdDict) {
        true => 2,
        false => 1,
    }
}
/// Magic, version, encryption, reserved, reserved u32.
pub const HEADER_LEN: usize = 16;
/// Entry count, trailer length, trailer checksum, trailer magic.
pub const TAIL_LEN: usize = 4 + 4 + 32 + 8;
pub const ENTRY_LEN: usize = 48;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A chunk of file content.
    Data = 0,
    /// An encoded tree (store-format/tree.md).
    Tree = 1,
}

/// How a blob's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// A zstd frame compressed with a dictionary, after the 32-byte id of the dictionary file
    /// (store-format/dictionary.md).
    ZstdDict = 2,
}

impl Codec {
    /// The codec stored as `value`; `None` for one no writer puts there.
    pub fn from_u8(value: u8) -> Option<Codec> {
        match value {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::ZstdDict),
            _ => None,
        }
    }
}

/// One blob's place in a pack. Shared by pack trailers and index files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobEntry {
    pub id: Id,
    pub kind: BlobKind,
    pub codec: Codec,
    /// Byte offset of the stored bytes from the start of the pack file.
    pub offset: u32,
    pub stored_len: u32,
    /// Length of the plain blob once decoded.
    pub raw_len: u32,
}

impl BlobEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_id(&self.id);
        out.put_u8(self.kind as u8);
        out.put_u8(self.codec as u8);
        out.put_u16(0);
        out.put_u32(self.offset);
        out.put_u32(self.stored_len);
        out.put_u32(self.raw_len);
    }

    pub fn decode_from(r: &mut Reader<'_>) -> Result<BlobEntry> {
        let id = r.id()?;
        let kind = match r.u8()? {
            0 => BlobKind::Data,
            1 => BlobKind::Tree,
            other => return Err(r.error(format!("unknown blob kind {other}"))),
        };
        let codec = r.u8()?;
        let codec = Codec::from_u8(codec).ok_or_else(|| r.error(format!("unknown codec {codec}")))?;
        r.reserved16()?;
        let entry = BlobEntry { id, kind, codec, offset: r.u32()?, stored_len: r.u32()?, raw_len: r.u32()? };
        if (entry.offset as usize) < HEADER_LEN {
            return Err(r.error(format!("blob {} starts inside the pack header", id.short())));
        }
        // A raw blob is stored as is, or sealed: plus the AEAD's nonce and tag.
        let sealed_raw = entry.raw_len.checked_add(crate::crypto::OVERHEAD as u32);
        if entry.codec == Codec::Raw && entry.stored_len != entry.raw_len && Some(entry.stored_len) != sealed_raw {
            return Err(r.error(format!("raw blob {} has stored length != plain length", id.short())));
        }
        Ok(entry)
    }

    pub fn end(&self) -> u64 {
        self.offset as u64 + self.stored_len as u64
    }
}

pub fn header() -> [u8; HEADER_LEN] {
    header_for(super::envelope::ENCRYPTION_NONE)
}

/// The header of a pack whose blobs and trailer are sealed (store-format/encryption.md), as
/// version 1: the packer sets the version its blobs need when it closes the pack ([`version_for`]).
pub fn header_for(encryption: u8) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(HEADER_MAGIC);
    out[8..10].copy_from_slice(&1u16.to_le_bytes());
    out[10] = encryption;
    out
}

/// Encodes the trailer (entries then tail) for blobs already laid out after the header.
pub fn trailer(entries: &[BlobEntry]) -> Vec<u8> {
    trailer_with(entries, None)
}

/// The trailer of an encrypted pack: the entries sealed (with the trailer magic as associated
/// data), then the same tail, whose length and checksum cover the sealed bytes.
pub fn trailer_with(entries: &[BlobEntry], keys: Option<&crate::crypto::Keys>) -> Vec<u8> {
    let mut plain = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for entry in entries {
        entry.encode_into(&mut plain);
    }
    let mut out = match keys {
        Some(keys) => keys.seal(TRAILER_MAGIC, &plain),
        None => plain,
    };
    out.reserve(TAIL_LEN);
    let checksum = blake3::hash(&out);
    let sealed_len = out.len() as u32;
    out.put_u32(entries.len() as u32);
    out.put_u32(sealed_len);
    out.extend_from_slice(checksum.as_bytes());
    out.extend_from_slice(TRAILER_MAGIC);
    out
}

/// Reads the header and trailer of a whole pack file of `data.len()` bytes (the blobs are not
/// verified here; `check --read-data` does that). `tail` must be the last bytes of the pack: at
/// least [`TAIL_LEN`], and enough to hold the trailer (callers re-read with the length it names).
pub fn decode_trailer(tail: &[u8], pack_len: u64, file: &str) -> Result<TrailerRead> {
    decode_trailer_with(tail, pack_len, file, None)
}

/// [`decode_trailer`] for an encrypted pack when `keys` is given: the entries are opened first.
pub fn decode_trailer_with(
    tail: &[u8],
    pack_len: u64,
    file: &str,
    keys: Option<&crate::crypto::Keys>,
) -> Result<TrailerRead> {
    let overhead = if keys.is_some() { crate::crypto::OVERHEAD } else { 0 };
    if tail.len() < TAIL_LEN || pack_len < (HEADER_LEN + TAIL_LEN) as u64 {
        return Err(Error::corrupt(file, "truncated: shorter than a pack header and trailer"));
    }
    let mut r = Reader::new(&tail[tail.len() - TAIL_LEN..], file);
    let count = r.u32()? as usize;
    let trailer_len = r.u32()? as usize;
    let checksum = r.array::<32>()?;
    if r.bytes(8)? != TRAILER_MAGIC {
        return Err(Error::corrupt(file, "no pack trailer magic at the end: the pack is truncated or not a pack"));
    }
    if count.checked_mul(ENTRY_LEN).and_then(|n| n.checked_add(overhead)) != Some(trailer_len) {
        return Err(Error::corrupt(file, format!("trailer length {trailer_len} does not match {count} entries")));
    }
    let needed = trailer_len + TAIL_LEN;
    if needed as u64 + HEADER_LEN as u64 > pack_len {
        return Err(Error::corrupt(file, "trailer is longer than the pack"));
    }
    if tail.len() < needed {
        return Ok(TrailerRead::NeedMore(needed));
    }
    let entries_bytes = &tail[tail.len() - needed..tail.len() - TAIL_LEN];
    if blake3::hash(entries_bytes).as_bytes() != &checksum {
        return Err(Error::corrupt(file, "pack trailer checksum mismatch"));
    }
    let blobs_end = pack_len - needed as u64;
    let opened;
    let entries_bytes = match keys {
        Some(keys) => {
            opened = keys.open(TRAILER_MAGIC, entries_bytes, file)?;
            &opened[..]
        }
        None => entries_bytes,
    };
    let mut r = Reader::new(entries_bytes, file);
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = BlobEntry::decode_from(&mut r)?;
        if entry.end() > blobs_end {
            return Err(Error::corrupt(file, format!("blob {} extends past the blob area", entry.id.short())));
        }
        entries.push(entry);
    }
    Ok(TrailerRead::Entries(entries))
}

pub enum TrailerRead {
    Entries(Vec<BlobEntry>),
    /// The trailer is longer than the bytes given: read this many bytes from the end and retry.
    NeedMore(usize),
}

/// Checks the fixed header at the start of a pack; returns its encryption mode.
pub fn check_header(data: &[u8], file: &str) -> Result<u8> {
    let mut r = Reader::new(data, file);
    if r.bytes(8)? != HEADER_MAGIC {
        return Err(Error::corrupt(file, "not a pack (bad header magic)"));
    }
    let version = r.u16()?;
    if version == 0 || version > VERSION {
        return Err(Error::UnsupportedVersion {
            file: file.into(),
            what: "pack",
            found: version.into(),
            supported: VERSION.into(),
        });
    }
    let encryption = r.u8()?;
    if encryption > super::envelope::ENCRYPTION_AES256GCM {
        return Err(Error::corrupt(file, "unknown encryption mode"));
    }
    Ok(encryption)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(blobs: &[(Vec<u8>, bool)]) -> (Vec<u8>, Vec<BlobEntry>) {
        let mut pack = header().to_vec();
        let mut entries = Vec::new();
        for (data, tree) in blobs {
            entries.push(BlobEntry {
                id: Id::of(data),
                kind: if *tree { BlobKind::Tree } else { BlobKind::Data },
                codec: Codec::Raw,
                offset: pack.len() as u32,
                stored_len: data.len() as u32,
                raw_len: data.len() as u32,
            });
            pack.extend_from_slice(data);
        }
        pack.extend_from_slice(&trailer(&entries));
        (pack, entries)
    }

    fn decode_all(pack: &[u8]) -> Result<Vec<BlobEntry>> {
        check_header(pack, "p")?;
        match decode_trailer(pack, pack.len() as u64, "p")? {
            TrailerRead::Entries(entries) => Ok(entries),
            TrailerRead::NeedMore(_) => unreachable!("whole pack given"),
        }
    }

    proptest! {
        #[test]
        fn round_trip(blobs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..100), any::<bool>()), 0..20)) {
            let (pack, entries) = build(&blobs);
            prop_assert_eq!(decode_all(&pack).unwrap(), entries);
        }

        #[test]
        fn truncated_or_flipped_trailer_is_an_error(blobs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..50), any::<bool>()), 1..8), cut in 1usize..400, flip in 0usize..400) {
            let (pack, _) = build(&blobs);
            let cut = cut.min(pack.len());
            let truncated = &pack[..pack.len() - cut];
            prop_assert!(decode_all(truncated).is_err());
            let trailer_start = pack.len() - blobs.len() * ENTRY_LEN - TAIL_LEN;
            let mut flipped = pack.clone();
            let at = trailer_start + flip % (pack.len() - trailer_start);
            flipped[at] ^= 1;
            prop_assert!(decode_all(&flipped).is_err());
        }

        #[test]
        fn noise_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), len in any::<u64>()) {
            let _ = decode_trailer(&data, len, "p");
            let _ = decode_trailer(&data, data.len() as u64, "p");
            let _ = check_header(&data, "p");
        }
    }

    #[test]
    fn short_tail_asks_for_more() {
        let blobs: Vec<(Vec<u8>, bool)> = (0..10u8).map(|i| (vec![i; 10], false)).collect();
        let (pack, entries) = build(&blobs);
        let tail = &pack[pack.len() - TAIL_LEN..];
        match decode_trailer(tail, pack.len() as u64, "p").unwrap() {
            TrailerRead::NeedMore(n) => {
                let tail = &pack[pack.len() - n..];
                match decode_trailer(tail, pack.len() as u64, "p").unwrap() {
                    TrailerRead::Entries(got) => assert_eq!(got, entries),
                    TrailerRead::NeedMore(_) => panic!("asked twice"),
                }
            }
            TrailerRead::Entries(_) => {
                panic!("could not have decoded 10 entries from the tail alone")
            }
        }
    }
}
