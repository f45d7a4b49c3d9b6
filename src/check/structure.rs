//! The structural pass of `cairn check` over packs: every pack's header, and a trailer that
//! lists every blob the index places in it where the index places it; read by range, without
//! reading the pack.

use std::collections::{HashMap, HashSet};

use super::{CheckReport, Findings};
use crate::error::{Error, Result};
use crate::format::pack::{self, BlobEntry, Trailer, TrailerRead, HEADER_LEN, TAIL_LEN};
use crate::id::Id;
use crate::repository::{FileKind, Repository};

/// How many of the blobs in `needed` the trailer of a pack that no index names lists; 0 when
/// none are needed or the trailer cannot be read (the pack is then left over, or damaged:
/// `--read-data` reports which).
pub(super) fn needed_in_unindexed_pack(repo: &Repository, pack: &Id, len: u64, needed: &HashSet<Id>) -> usize {
    if needed.is_empty() {
        return 0;
    }
    let key = FileKind::Pack.name(pack);
    let read_range = |offset, n| repo.read_file_range(FileKind::Pack, pack, offset, n);
    read_trailer(repo, &key, len, &read_range)
        .map_or(0, |listed| listed.entries.iter().filter(|e| needed.contains(&e.id)).count())
}

/// Every pack file on disk with its length; stray names are warnings.
pub(super) fn list_packs(repo: &Repository, report: &mut CheckReport) -> Result<HashMap<Id, u64>> {
    let (packs, strays) = repo.list_packs()?;
    report.warnings.extend(strays.iter().map(|key| format!("stray file {key} in packs/ (not a pack name)")));
    Ok(packs)
}

/// The blobs (and dictionaries) a pack's trailer lists, once its header magic and version check out.
/// `read_range(offset, len)` reads part of the pack, which is `len` bytes long; it is only asked
/// for ranges inside those bytes. Damage is an [`Error::Corrupt`]; anything else failed to read.
pub(crate) fn read_trailer(
    repo: &Repository,
    key: &str,
    len: u64,
    read_range: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
) -> Result<Trailer> {
    let file = repo.describe(key);
    if len < (HEADER_LEN + TAIL_LEN) as u64 {
        return Err(Error::corrupt(file, "shorter than a pack header and trailer: truncated"));
    }
    let header = pack::check_header(&read_range(0, HEADER_LEN as u64)?, &file)?;
    let keys = match (header.encryption, repo.keys()) {
        (crate::format::envelope::ENCRYPTION_NONE, None) => None,
        (crate::format::envelope::ENCRYPTION_NONE, Some(_)) => {
            return Err(Error::corrupt(file, "a plain pack in an encrypted repository"))
        }
        (_, Some(keys)) => Some(keys),
        (_, None) => return Err(Error::corrupt(file, "an encrypted pack in an unencrypted repository")),
    };
    let mut want = len.min(256 << 10);
    loop {
        let tail = read_range(len - want, want)?;
        match pack::decode_trailer_with(&tail, len, header.version, &file, keys)? {
            TrailerRead::Read(trailer) => return Ok(trailer),
            TrailerRead::NeedMore(n) if (n as u64) > want && (n as u64) <= len => want = n as u64,
            TrailerRead::NeedMore(_) => return Err(Error::corrupt(file, "trailer length is inconsistent")),
        }
    }
}

/// Header magic and version, and a trailer that lists every indexed blob at its indexed place;
/// reads as [`read_trailer`] does.
pub(super) fn check_pack_structure(
    repo: &Repository,
    key: &str,
    pack: &Id,
    len: u64,
    entries: &[BlobEntry],
    findings: &Findings,
    read_range: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
) -> Result<()> {
    let trailer = read_trailer(repo, key, len, read_range).inspect_err(|e| {
        // Without a trailer nothing in the pack can be confirmed. A pack's header has no checksum
        // of its own: a version this cairn does not know is as likely a damaged byte as a newer
        // cairn, which only the whole pack's hash against its name tells apart.
        let newer = match e {
            Error::UnsupportedVersion { what: "pack", .. } => {
                ": a damaged header, or a pack from a newer cairn; `cairn check --read-data` tells which"
            }
            _ => "",
        };
        let reason = format!("pack {} has no valid header and trailer ({e}{newer})", pack.short());
        entries.iter().for_each(|entry| findings.bad_blob(&entry.id, reason.clone()));
    })?;
    findings.named(pack, &trailer.dictionaries);
    compare_trailer(pack, entries, &trailer.entries, findings);
    Ok(())
}

/// The pack's trailer (`listed`) must list every blob the index places in the pack (`entries`)
/// where the index places it.
pub(super) fn compare_trailer(pack: &Id, entries: &[BlobEntry], listed: &[BlobEntry], findings: &Findings) {
    let listed: HashMap<Id, &BlobEntry> = listed.iter().map(|e| (e.id, e)).collect();
    for entry in entries {
        if listed.get(&entry.id) != Some(&entry) {
            findings.error(format!(
                "pack {}: the index places blob {} where the pack's trailer does not",
                pack.short(),
                entry.id.short()
            ));
            findings.bad_blob(&entry.id, format!("pack {} disagrees with the index", pack.short()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack;

    #[test]
    fn a_trailer_must_list_every_indexed_blob_where_the_index_places_it() {
        let pack = Id::of(b"pack");
        let entry = |n: u32, offset| BlobEntry {
            id: Id::of(&n.to_le_bytes()),
            kind: pack::BlobKind::Data,
            codec: pack::Codec::Zstd,
            offset,
            stored_len: 100,
            raw_len: 300,
        };
        let trailer = [entry(1, 16), entry(2, 116), entry(3, 216)];
        // Blobs the index no longer takes from this pack are fine.
        let findings = Findings::default();
        compare_trailer(&pack, &[entry(3, 216), entry(1, 16)], &trailer, &findings);
        assert!(findings.errors.into_inner().unwrap().is_empty());
        // Another offset, and a blob the trailer does not list, are damage to both blobs.
        let findings = Findings::default();
        compare_trailer(&pack, &[entry(2, 120), entry(1, 16), entry(4, 316)], &trailer, &findings);
        assert_eq!(findings.errors.into_inner().unwrap().len(), 2);
        let bad = findings.bad_blobs.into_inner().unwrap();
        assert_eq!(bad.keys().collect::<HashSet<_>>(), HashSet::from([&entry(2, 0).id, &entry(4, 0).id]));
    }
}
