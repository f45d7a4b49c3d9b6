//! Pack files (`packs/XY/<pack id>`): many stored blobs back to back, then a trailer that lists
//! each blob's id, kind, codec, offset and lengths. The pack id is BLAKE3 of the whole file.
//! See store-format/pack.md.

use super::{Put, Reader};
use crate::error::{Error, Result};
use crate::id::Id;

pub const HEADER_MAGIC: &[u8; 8] = b"CAIRNPAK";
pub const TRAILER_MAGIC: &[u8; 8] = b"CAIRNPKT";
/// The highest pack version this cairn reads. A pack is written as version 1 unless a blob in it
/// is compressed with a dictionary ([`Codec::ZstdDict`]): then 3, whose trailer also lists the
/// dictionaries ([`version_for`]). Version 2 (format 4) has such blobs and no list.
pub const VERSION: u16 = 3;
/// The first pack version whose trailer lists the dictionaries its blobs name.
pub const LISTS_DICTIONARIES: u16 = 3;

/// The version of a pack holding `entries`: the lowest that has their codecs.
pub fn version_for(entries: &[BlobEntry]) -> u16 {
    match entries.iter().any(|e| e.codec == Codec::ZstdDict) {
        true => LISTS_DICTIONARIES,
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

/// A pack's trailer: its entries and (version 3) the dictionaries its codec 2 blobs name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trailer {
    pub entries: Vec<BlobEntry>,
    /// Each dictionary once; empty in a pack of version 1 or 2.
    pub dictionaries: Vec<Id>,
}

/// Encodes the trailer (entries, dictionaries, then tail) for blobs already laid out after the
/// header. `dictionaries` is empty unless an entry has codec 2 ([`version_for`]).
pub fn trailer(entries: &[BlobEntry], dictionaries: &[Id]) -> Vec<u8> {
    trailer_with(entries, dictionaries, None)
}

/// The trailer of an encrypted pack: the entries and dictionaries sealed (with the trailer magic
/// as associated data), then the same tail, whose length and checksum cover the sealed bytes.
pub fn trailer_with(entries: &[BlobEntry], dictionaries: &[Id], keys: Option<&crate::crypto::Keys>) -> Vec<u8> {
    let mut plain = Vec::with_capacity(entries.len() * ENTRY_LEN + dictionaries.len() * 32);
    for entry in entries {
        entry.encode_into(&mut plain);
    }
    for dictionary in dictionaries {
        plain.put_id(dictionary);
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

/// Reads the trailer of a pack file of `pack_len` bytes whose header gave `version` (the blobs
/// are not verified here; `check --read-data` does that). `tail` must be the last bytes of the
/// pack: at least [`TAIL_LEN`], and enough to hold the trailer (callers re-read with the length
/// it names).
pub fn decode_trailer(tail: &[u8], pack_len: u64, version: u16, file: &str) -> Result<TrailerRead> {
    decode_trailer_with(tail, pack_len, version, file, None)
}

/// [`decode_trailer`] for an encrypted pack when `keys` is given: the entries are opened first.
pub fn decode_trailer_with(
    tail: &[u8],
    pack_len: u64,
    version: u16,
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
    // After the entries, a version 3 trailer lists dictionaries, 32 bytes each.
    let listed =
        count.checked_mul(ENTRY_LEN).and_then(|n| n.checked_add(overhead)).and_then(|n| trailer_len.checked_sub(n));
    let dictionary_count = match listed {
        Some(0) => 0,
        Some(listed) if version >= LISTS_DICTIONARIES && listed % 32 == 0 => listed / 32,
        _ => return Err(Error::corrupt(file, format!("trailer length {trailer_len} does not match {count} entries"))),
    };
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
    let mut dictionaries = Vec::with_capacity(dictionary_count);
    let mut seen = std::collections::HashSet::with_capacity(dictionary_count);
    for _ in 0..dictionary_count {
        let dictionary = r.id()?;
        if !seen.insert(dictionary) {
            return Err(Error::corrupt(file, format!("dictionary {} is listed twice", dictionary.short())));
        }
        dictionaries.push(dictionary);
    }
    let (named, lists) = (entries.iter().any(|e| e.codec == Codec::ZstdDict), !dictionaries.is_empty());
    let wrong = match version {
        // Codec 2 came with version 2 (format 4), which lists no dictionaries.
        1 if named => Some("a blob compressed with a dictionary in a version 1 pack"),
        _ if version >= LISTS_DICTIONARIES && named && !lists => {
            Some("blobs compressed with a dictionary, and no dictionary listed")
        }
        _ if version >= LISTS_DICTIONARIES && lists && !named => {
            Some("dictionaries listed, and no blob compressed with one")
        }
        _ => None,
    };
    if let Some(wrong) = wrong {
        return Err(Error::corrupt(file, wrong));
    }
    Ok(TrailerRead::Read(Trailer { entries, dictionaries }))
}

pub enum TrailerRead {
    Read(Trailer),
    /// The trailer is longer than the bytes given: read this many bytes from the end and retry.
    NeedMore(usize),
}

/// What a pack's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub encryption: u8,
}

/// Checks the fixed header at the start of a pack.
pub fn check_header(data: &[u8], file: &str) -> Result<Header> {
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
    Ok(Header { version, encryption })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A blob: its bytes, whether it is a tree, and (if compressed with one) its dictionary.
    type Blob = (Vec<u8>, bool, Option<u8>);

    /// A pack of `blobs` at the version they need, and the trailer it should decode to.
    fn build(blobs: &[Blob]) -> (Vec<u8>, Trailer) {
        let mut pack = header().to_vec();
        let mut expected = Trailer::default();
        for (data, tree, dictionary) in blobs {
            expected.entries.push(BlobEntry {
                id: Id::of(data),
                kind: if *tree { BlobKind::Tree } else { BlobKind::Data },
                codec: if dictionary.is_some() { Codec::ZstdDict } else { Codec::Raw },
                offset: pack.len() as u32,
                stored_len: data.len() as u32,
                raw_len: data.len() as u32 * if dictionary.is_some() { 3 } else { 1 },
            });
            if let Some(dictionary) = dictionary.map(|d| Id::of(&[d])) {
                if !expected.dictionaries.contains(&dictionary) {
                    expected.dictionaries.push(dictionary);
                }
            }
            pack.extend_from_slice(data);
        }
        pack[8..10].copy_from_slice(&version_for(&expected.entries).to_le_bytes());
        pack.extend_from_slice(&trailer(&expected.entries, &expected.dictionaries));
        (pack, expected)
    }

    fn decode_all(pack: &[u8]) -> Result<Trailer> {
        let header = check_header(pack, "p")?;
        match decode_trailer(pack, pack.len() as u64, header.version, "p")? {
            TrailerRead::Read(trailer) => Ok(trailer),
            TrailerRead::NeedMore(_) => unreachable!("whole pack given"),
        }
    }

    fn blobs(sizes: std::ops::Range<usize>, count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Blob>> {
        proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), sizes), any::<bool>(), proptest::option::of(0u8..3)),
            count,
        )
    }

    proptest! {
        #[test]
        fn round_trip(blobs in blobs(0..100, 0..20)) {
            let (pack, expected) = build(&blobs);
            prop_assert_eq!(decode_all(&pack).unwrap(), expected);
        }

        #[test]
        fn truncated_or_flipped_trailer_is_an_error(blobs in blobs(1..50, 1..8), cut in 1usize..400, flip in 0usize..400) {
            let (pack, expected) = build(&blobs);
            let cut = cut.min(pack.len());
            let truncated = &pack[..pack.len() - cut];
            prop_assert!(decode_all(truncated).is_err());
            let trailer_start = pack.len() - blobs.len() * ENTRY_LEN - expected.dictionaries.len() * 32 - TAIL_LEN;
            let mut flipped = pack.clone();
            let at = trailer_start + flip % (pack.len() - trailer_start);
            flipped[at] ^= 1;
            prop_assert!(decode_all(&flipped).is_err());
        }

        #[test]
        fn noise_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), len in any::<u64>(), version in 0u16..5) {
            let _ = decode_trailer(&data, len, version, "p");
            let _ = decode_trailer(&data, data.len() as u64, version, "p");
            let _ = check_header(&data, "p");
        }
    }

    /// `pack` with its trailer replaced by `entries` and `dictionaries`, at `version`.
    fn rebuilt(pack: &[u8], expected: &Trailer, version: u16, dictionaries: &[Id]) -> Vec<u8> {
        let listed = expected.entries.len() * ENTRY_LEN + expected.dictionaries.len() * 32 + TAIL_LEN;
        let mut out = pack[..pack.len() - listed].to_vec();
        out[8..10].copy_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&trailer(&expected.entries, dictionaries));
        out
    }

    #[test]
    fn a_version_3_trailer_lists_each_dictionary_its_blobs_name_once() {
        let dictionary = |d: u8| Id::of(&[d]);
        let (pack, expected) = build(&[(vec![1; 10], false, Some(0)), (vec![2; 10], false, None)]);
        assert_eq!(u16::from_le_bytes([pack[8], pack[9]]), 3);
        assert_eq!(decode_all(&pack).unwrap().dictionaries, vec![dictionary(0)]);
        // A version 2 pack (format 4) has codec 2 blobs and no list, and may have no list.
        let old = rebuilt(&pack, &expected, 2, &[]);
        assert_eq!(decode_all(&old).unwrap().dictionaries, vec![]);
        let listed_in_old = rebuilt(&pack, &expected, 2, &[dictionary(0)]);
        assert!(decode_all(&listed_in_old).unwrap_err().to_string().contains("does not match 2 entries"));
        let cases = [(vec![], "no dictionary listed"), (vec![dictionary(0), dictionary(0)], "listed twice")];
        for (listed, error) in cases {
            let bad = rebuilt(&pack, &expected, 3, &listed);
            let got = decode_all(&bad).unwrap_err().to_string();
            assert!(got.contains(error), "{got}");
        }
        let version_1 = rebuilt(&pack, &expected, 1, &[]);
        let got = decode_all(&version_1).unwrap_err().to_string();
        assert!(got.contains("in a version 1 pack"), "{got}");
        let (plain, plain_trailer) = build(&[(vec![1; 10], false, None)]);
        let listed_for_nothing = rebuilt(&plain, &plain_trailer, 3, &[dictionary(0)]);
        let got = decode_all(&listed_for_nothing).unwrap_err().to_string();
        assert!(got.contains("no blob compressed with one"), "{got}");
    }

    #[test]
    fn short_tail_asks_for_more() {
        let blobs: Vec<Blob> = (0..10u8).map(|i| (vec![i; 10], false, Some(i % 2))).collect();
        let (pack, expected) = build(&blobs);
        let tail = &pack[pack.len() - TAIL_LEN..];
        match decode_trailer(tail, pack.len() as u64, 3, "p").unwrap() {
            TrailerRead::NeedMore(n) => {
                let tail = &pack[pack.len() - n..];
                match decode_trailer(tail, pack.len() as u64, 3, "p").unwrap() {
                    TrailerRead::Read(got) => assert_eq!(got, expected),
                    TrailerRead::NeedMore(_) => panic!("asked twice"),
                }
            }
            TrailerRead::Read(_) => {
                panic!("could not have decoded 10 entries from the tail alone")
            }
        }
    }
}
