//! What the index places in each pack, for `cairn check`, without holding it: at 10^8 blobs the
//! entries grouped by pack were 5 GB. One sequential pass over the index sums, for each pack, a
//! keyed digest of every entry it places there (and counts them, and notes the furthest end); a
//! pack's trailer that gives the same sum lists exactly those entries, so the pack is confirmed
//! without its entries ever being gathered. Only a pack that does not match (a trailer that lists
//! more, as when the index takes a blob from another copy; or less; or a pack missing or short)
//! has its entries gathered, by further passes of at most [`GATHER_BUDGET`] entries each, so that
//! check can say exactly which blobs it costs.
//!
//! The digest is a sum of BLAKE3 keyed hashes under a key drawn for this run: no file in the
//! repository can be made to match it by design, as it could a plain checksum.

use std::collections::HashMap;

use crate::format::pack::BlobEntry;
use crate::id::Id;
use crate::repository::index::Index;

/// Entries gathered at once for packs that did not match (48 bytes each: 96 MiB).
const GATHER_BUDGET: u64 = 1 << 21;

/// The sum of what the index places in one pack.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackSum {
    /// Entries the index places in the pack.
    pub(super) count: u64,
    /// The furthest byte any of them reaches.
    pub(super) max_end: u64,
    sum: u128,
}

/// [`PackSum`]s of every pack the index names.
pub(super) struct ByPack {
    key: [u8; 32],
    sums: HashMap<Id, PackSum>,
}

impl ByPack {
    /// One pass over `index` in id order; an error if the sorted copy is found damaged.
    pub(super) fn of(index: &Index) -> std::io::Result<ByPack> {
        let key = crate::crypto::secure_random();
        let mut sums = vec![PackSum::default(); index.packs.len()];
        for item in index.iter_locations() {
            let (id, at) = item?;
            let entry = at.entry(&id);
            let sum = &mut sums[at.pack as usize];
            sum.count += 1;
            sum.max_end = sum.max_end.max(entry.end());
            sum.sum = sum.sum.wrapping_add(digest(&key, &entry));
        }
        let sums = index.packs.iter().zip(sums).map(|((pack, _), sum)| (*pack, sum)).collect();
        Ok(ByPack { key, sums })
    }

    /// The sum for `pack` (empty for a pack the index does not name).
    pub(super) fn get(&self, pack: &Id) -> PackSum {
        self.sums.get(pack).copied().unwrap_or_default()
    }

    /// Whether `listed` (a pack's trailer) lists exactly the entries the index places in `pack`,
    /// each where the index places it. `false` also for a pack the index does not name.
    pub(super) fn matches(&self, pack: &Id, listed: &[BlobEntry]) -> bool {
        let Some(indexed) = self.sums.get(pack) else { return false };
        let sum = listed.iter().fold(0u128, |sum, entry| sum.wrapping_add(digest(&self.key, entry)));
        indexed.count == listed.len() as u64 && indexed.sum == sum
    }
}

/// One entry's share of a pack's sum: every field of it, hashed under the run's key.
fn digest(key: &[u8; 32], entry: &BlobEntry) -> u128 {
    let mut bytes = Vec::with_capacity(64);
    entry.encode_into(&mut bytes);
    let hash = blake3::keyed_hash(key, &bytes);
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Gathers the entries the index places in each of `packs` (with their counts from [`ByPack`]),
/// a group of packs at a time (about [`GATHER_BUDGET`] entries, at least one pack), one pass
/// over the index a group; hands each group to `check` whole. An error if the sorted copy is
/// found damaged.
pub(super) fn gather(
    index: &Index,
    packs: &[(Id, u64)],
    mut check: impl FnMut(HashMap<Id, Vec<BlobEntry>>),
) -> std::io::Result<()> {
    let mut rest = packs;
    while !rest.is_empty() {
        let (mut end, mut entries) = (0, 0);
        while end < rest.len() && (end == 0 || entries + rest[end].1 <= GATHER_BUDGET) {
            entries += rest[end].1;
            end += 1;
        }
        let (group, after) = rest.split_at(end);
        rest = after;
        let mut wanted: HashMap<Id, Vec<BlobEntry>> =
            group.iter().map(|(pack, count)| (*pack, Vec::with_capacity(*count as usize))).collect();
        if group.iter().any(|(_, count)| *count > 0) {
            for item in index.entries() {
                let (pack, entry) = item?;
                if let Some(entries) = wanted.get_mut(&pack) {
                    entries.push(entry);
                }
            }
        }
        check(wanted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index::{IndexFile, IndexedPack};
    use crate::format::pack::{BlobKind, Codec};

    fn entry(n: u32, offset: u32) -> BlobEntry {
        BlobEntry {
            id: Id::of(&n.to_le_bytes()),
            kind: BlobKind::Data,
            codec: Codec::Zstd,
            offset,
            stored_len: 100,
            raw_len: 300,
        }
    }

    #[test]
    fn a_trailer_matches_only_if_it_lists_exactly_what_the_index_places_there() {
        let (a, b) = (Id::of(b"pack a"), Id::of(b"pack b"));
        let trailer_a = vec![entry(1, 16), entry(2, 116), entry(3, 216)];
        // Blob 3 is also in pack b; the index picks pack a's copy (pack a is named first).
        let trailer_b = vec![entry(3, 16), entry(4, 116)];
        let index = Index::build([IndexFile {
            packs: vec![
                IndexedPack { id: a, len: 400, blobs: trailer_a.clone() },
                IndexedPack { id: b, len: 300, blobs: trailer_b.clone() },
            ],
        }]);
        let sums = ByPack::of(&index).unwrap();
        assert_eq!((sums.get(&a).count, sums.get(&a).max_end), (3, 316));
        assert_eq!(sums.get(&b).count, 1);
        assert!(sums.matches(&a, &trailer_a));
        let mut reordered = trailer_a.clone();
        reordered.reverse();
        assert!(sums.matches(&a, &reordered), "order does not matter");
        // Pack b's trailer lists a copy the index does not take from it: gathered, not confirmed.
        assert!(!sums.matches(&b, &trailer_b));
        // Any field changed, an entry left out, or one added: no match.
        let mut moved = trailer_a.clone();
        moved[1].offset += 1;
        let mut longer = trailer_a.clone();
        longer[2].raw_len += 1;
        let mut kind = trailer_a.clone();
        kind[0].kind = BlobKind::Tree;
        let mut more = trailer_a.clone();
        more.push(entry(9, 316));
        for (what, listed) in [("moved", moved), ("raw length", longer), ("kind", kind), ("more", more)] {
            assert!(!sums.matches(&a, &listed), "{what}");
        }
        assert!(!sums.matches(&a, &trailer_a[..2]), "fewer");
        assert!(!sums.matches(&Id::of(b"unindexed"), &[]), "a pack the index does not name");

        // Gathering in groups of any size finds each pack's entries.
        let mut gathered = HashMap::new();
        gather(&index, &[(a, 3), (b, 1)], |group| gathered.extend(group)).unwrap();
        assert_eq!(gathered[&a].len(), 3);
        assert_eq!(gathered[&b], vec![entry(4, 116)]);
    }
}
