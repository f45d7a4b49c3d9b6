//! List blobs: a large file's chunk list stored outside its tree, as one FULL list followed by
//! up to 15 PATCHes, each against the list before it. A file node of type 8 names the chain; a
//! database that changed in a few pages then costs a patch of those pages in the next snapshot,
//! not its whole list again. See store-format/tree.md, "Chunk lists".
//!
//! List blobs are stored as blobs of kind `Tree`; their first byte ([`FULL`], [`PATCH`]) is never
//! a tree version, so neither is ever taken for the other.

use std::collections::HashMap;

use super::{Put, Reader};
use crate::error::{Error, Result};
use crate::id::Id;

/// First byte of a list blob holding a whole chunk list.
pub const FULL: u8 = 0x80;

/// First byte of a list blob holding a patch against the list before it in the chain.
pub const PATCH: u8 = 0x81;

/// The most list blobs a node names: one FULL list and 15 patches.
pub const MAX_CHAIN: usize = 16;

/// The most chunk ids a list may hold, at any step of a chain: what a FULL list blob of at most
/// 1 GiB (the largest blob a reader accepts) can hold. It bounds what a hostile chain can make a
/// reader allocate.
pub const MAX_IDS: u64 = 1 << 25;

/// Patch operation codes.
const COPY: u8 = 1;
const LITERAL: u8 = 2;

/// Encodes a FULL list: its tag, then the ids back to back.
pub fn encode_full(ids: &[Id]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + ids.len() * 32);
    out.put_u8(FULL);
    ids.iter().for_each(|id| out.put_id(id));
    out
}

/// One step of a patch: ids taken from the previous list, or given.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Copy { start: u32, len: u32 },
    Literal(Vec<Id>),
}

/// Encodes the patch that turns `old` into `new`, greedily in one pass: a run of ids that
/// continue the current copy extends it; otherwise an id is first looked for where the last copy's
/// offset says it would be (after a changed page of a database, or after an insertion), then
/// anywhere in `old`; an id found nowhere is a literal. O(n) with a map of `old`'s positions.
/// Both lists hold at most [`MAX_IDS`] ids.
pub fn diff(old: &[Id], new: &[Id]) -> Vec<u8> {
    let mut positions: HashMap<&Id, u32> = HashMap::with_capacity(old.len());
    for (at, id) in old.iter().enumerate().rev() {
        positions.insert(id, at as u32);
    }
    let mut ops: Vec<Op> = Vec::new();
    // Where new[i] would lie in `old` on the current diagonal: i + shift.
    let mut shift: i64 = 0;
    for (i, id) in new.iter().enumerate() {
        let diagonal = i as i64 + shift;
        let found = if diagonal >= 0 && (diagonal as usize) < old.len() && old[diagonal as usize] == *id {
            Some(diagonal as u32)
        } else {
            positions.get(id).copied()
        };
        match (found, ops.last_mut()) {
            (Some(at), Some(Op::Copy { start, len })) if *start + *len == at => *len += 1,
            (Some(at), _) => {
                shift = at as i64 - i as i64;
                ops.push(Op::Copy { start: at, len: 1 });
            }
            (None, Some(Op::Literal(ids))) => ids.push(*id),
            (None, _) => ops.push(Op::Literal(vec![*id])),
        }
    }
    let mut out = Vec::new();
    out.put_u8(PATCH);
    out.put_u64(new.len() as u64);
    for op in &ops {
        match op {
            Op::Copy { start, len } => {
                out.put_u8(COPY);
                out.put_u32(*start);
                out.put_u32(*len);
            }
            Op::Literal(ids) => {
                out.put_u8(LITERAL);
                out.put_u32(ids.len() as u32);
                ids.iter().for_each(|id| out.put_id(id));
            }
        }
    }
    out
}

/// The chunk list a chain of list blobs gives, checked against the node's `count`. `blobs` are
/// the chain's decoded blobs in order, each with the name its errors give (`list <short id>`);
/// each is taken when the one before is applied, so a reader that reads them lazily holds one
/// blob at a time.
pub fn expand<B: AsRef<[u8]>>(blobs: impl IntoIterator<Item = Result<(B, String)>>, count: u64) -> Result<Vec<Id>> {
    let mut list: Option<Vec<Id>> = None;
    let mut last = String::from("chunk list");
    for (at, blob) in blobs.into_iter().enumerate() {
        if at == MAX_CHAIN {
            return Err(Error::corrupt(last, format!("a chain of more than {MAX_CHAIN} list blobs")));
        }
        let (bytes, what) = blob?;
        list = Some(apply(list.as_deref(), bytes.as_ref(), &what)?);
        last = what;
    }
    let list = list.ok_or_else(|| Error::corrupt(last.clone(), "a chain of no list blobs"))?;
    if list.len() as u64 != count {
        return Err(Error::corrupt(last, format!("the chain gives {} chunks, the node records {count}", list.len())));
    }
    Ok(list)
}

/// Decodes one list blob: a FULL list when `previous` is `None` (the chain's first), otherwise a
/// patch applied to `previous`.
pub fn apply(previous: Option<&[Id]>, data: &[u8], what: &str) -> Result<Vec<Id>> {
    let mut r = Reader::new(data, what);
    let tag = r.u8()?;
    match (tag, previous) {
        (FULL, None) => {
            if r.remaining() % 32 != 0 {
                return Err(r.error(format!("{} bytes of ids are not whole ids", r.remaining())));
            }
            let count = r.remaining() / 32;
            if count as u64 > MAX_IDS {
                return Err(r.error(format!("a list of {count} chunks exceeds {MAX_IDS}")));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(r.id()?);
            }
            Ok(ids)
        }
        (PATCH, Some(previous)) => patch(previous, r),
        (FULL, Some(_)) => Err(r.error("a FULL list after the first in its chain")),
        (PATCH, None) => Err(r.error("a chain that starts with a patch")),
        (other, _) => Err(r.error(format!("not a list blob (first byte {other:#04x})"))),
    }
}

/// Applies the patch after its tag to `previous`.
fn patch(previous: &[Id], mut r: Reader<'_>) -> Result<Vec<Id>> {
    let count = r.u64()?;
    if count > MAX_IDS {
        return Err(r.error(format!("a list of {count} chunks exceeds {MAX_IDS}")));
    }
    // Never more than the declared count, and not even that before ids arrive to fill it.
    let mut out: Vec<Id> = Vec::with_capacity((count as usize).min(previous.len() + r.remaining() / 32));
    let room = |out: &Vec<Id>, more: u64, r: &Reader<'_>| {
        if out.len() as u64 + more > count {
            return Err(r.error(format!("the patch gives more than the {count} chunks it declares")));
        }
        Ok(())
    };
    while r.remaining() > 0 {
        match r.u8()? {
            COPY => {
                let (start, len) = (r.u32()? as usize, r.u32()? as usize);
                let Some(ids) = start.checked_add(len).and_then(|end| previous.get(start..end)) else {
                    let found = previous.len();
                    return Err(r.error(format!("copy of {len} ids at {start} past the previous list of {found}")));
                };
                room(&out, len as u64, &r)?;
                out.extend_from_slice(ids);
            }
            LITERAL => {
                let n = r.count(32)?;
                room(&out, n as u64, &r)?;
                for _ in 0..n {
                    out.push(r.id()?);
                }
            }
            other => return Err(r.error(format!("unknown patch operation {other}"))),
        }
    }
    if out.len() as u64 != count {
        return Err(r.error(format!("the patch gives {} chunks, it declares {count}", out.len())));
    }
    r.finish()?;
    Ok(out)
}

/// The same list blob with every chunk id it holds replaced by `new(id)` (copies stay as they
/// are: positions do not change), for `sync` into a repository whose ids are keyed otherwise.
pub fn map_ids(data: &[u8], what: &str, mut new: impl FnMut(&Id) -> Result<Id>) -> Result<Vec<u8>> {
    let mut r = Reader::new(data, what);
    let mut out = Vec::with_capacity(data.len());
    let mut ids = |r: &mut Reader<'_>, out: &mut Vec<u8>, n: usize| -> Result<()> {
        for _ in 0..n {
            out.put_id(&new(&r.id()?)?);
        }
        Ok(())
    };
    match r.u8()? {
        FULL => {
            out.put_u8(FULL);
            if r.remaining() % 32 != 0 {
                return Err(r.error(format!("{} bytes of ids are not whole ids", r.remaining())));
            }
            let n = r.remaining() / 32;
            ids(&mut r, &mut out, n)?;
        }
        PATCH => {
            out.put_u8(PATCH);
            out.put_u64(r.u64()?);
            while r.remaining() > 0 {
                match r.u8()? {
                    COPY => {
                        out.put_u8(COPY);
                        out.put_u32(r.u32()?);
                        out.put_u32(r.u32()?);
                    }
                    LITERAL => {
                        let n = r.count(32)?;
                        out.put_u8(LITERAL);
                        out.put_u32(n as u32);
                        ids(&mut r, &mut out, n)?;
                    }
                    other => return Err(r.error(format!("unknown patch operation {other}"))),
                }
            }
        }
        other => return Err(r.error(format!("not a list blob (first byte {other:#04x})"))),
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(seeds: &[u8]) -> Vec<Id> {
        seeds.iter().map(|s| Id([*s; 32])).collect()
    }

    fn chain(blobs: &[Vec<u8>], count: u64) -> Result<Vec<Id>> {
        expand(blobs.iter().enumerate().map(|(i, b)| Ok((b.as_slice(), format!("list {i}")))), count)
    }

    fn error(blobs: &[Vec<u8>], count: u64) -> String {
        chain(blobs, count).unwrap_err().to_string()
    }

    #[test]
    fn a_changed_page_costs_one_literal_and_two_copies() {
        let old: Vec<Id> = (0..1000u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        let mut new = old.clone();
        new[500] = Id([7; 32]);
        let patch = diff(&old, &new);
        // Tag, count; copy, literal of one id, copy.
        assert_eq!(patch.len(), 1 + 8 + 9 + (5 + 32) + 9);
        assert_eq!(chain(&[encode_full(&old), patch], 1000).unwrap(), new);
    }

    #[test]
    fn an_insertion_in_the_middle_shifts_the_copy() {
        let old: Vec<Id> = (0..1000u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        let mut new = old.clone();
        new.splice(300..301, ids(&[1, 2, 3]));
        let patch = diff(&old, &new);
        assert_eq!(patch.len(), 1 + 8 + 9 + (5 + 3 * 32) + 9);
        assert_eq!(chain(&[encode_full(&old), patch], new.len() as u64).unwrap(), new);
    }

    #[test]
    fn hostile_chains_are_refused() {
        let old = ids(&[1, 2, 3]);
        let full = encode_full(&old);
        let patch = |count: u64, ops: &[u8]| [&[PATCH][..], &count.to_le_bytes(), ops].concat();
        let copy = |start: u32, len: u32| [&[COPY][..], &start.to_le_bytes(), &len.to_le_bytes()].concat();
        assert!(
            error(&[full.clone(), patch(4, &copy(2, 2))], 4).contains("copy of 2 ids at 2 past the previous list of 3")
        );
        assert!(error(&[full.clone(), patch(4, &copy(u32::MAX, 2))], 4).contains("past the previous list"));
        assert!(error(&[full.clone(), patch(2, &copy(0, 3))], 2).contains("more than the 2 chunks it declares"));
        assert!(error(&[full.clone(), patch(3, &copy(0, 2))], 3).contains("gives 2 chunks, it declares 3"));
        assert!(error(&[full.clone(), patch(1 << 40, &copy(0, 2))], 2).contains("exceeds 33554432"));
        let literal = [&[LITERAL][..], &u32::MAX.to_le_bytes()].concat();
        assert!(error(&[full.clone(), patch(3, &literal)], 3).contains("count 4294967295 exceeds the remaining data"));
        assert!(error(&[full.clone(), patch(3, &[9])], 3).contains("unknown patch operation 9"));
        assert!(error(&[full.clone(), patch(3, &[COPY, 0])], 3).contains("truncated"));
        assert!(error(std::slice::from_ref(&full), 4).contains("the chain gives 3 chunks, the node records 4"));
        assert!(error(&[full.clone(), full.clone()], 3).contains("a FULL list after the first"));
        assert!(error(&[patch(3, &copy(0, 3))], 3).contains("a chain that starts with a patch"));
        assert!(error(&[[&full[..], &[0]].concat()], 3).contains("97 bytes of ids are not whole ids"));
        assert!(error(&[vec![1, 0, 0, 0, 0]], 0).contains("not a list blob (first byte 0x01)"));
        assert!(error(&[vec![]], 0).contains("truncated"));
        assert!(error(&[], 0).contains("a chain of no list blobs"));
        let seventeen: Vec<Vec<u8>> =
            std::iter::once(full.clone()).chain((0..16).map(|_| patch(3, &copy(0, 3)))).collect();
        assert!(error(&seventeen, 3).contains("more than 16 list blobs"));
        assert_eq!(chain(&seventeen[..16], 3).unwrap(), old);
    }

    #[test]
    fn mapped_ids_expand_to_the_mapped_list() {
        let old = ids(&[1, 2, 3, 4]);
        let new = ids(&[1, 9, 3, 4, 4]);
        let (full, patch) = (encode_full(&old), diff(&old, &new));
        let plus = |id: &Id| Ok(Id([id.0[0] + 100; 32]));
        let mapped = [map_ids(&full, "list", plus).unwrap(), map_ids(&patch, "list", plus).unwrap()];
        let expected: Vec<Id> = new.iter().map(|id| plus(id).unwrap()).collect();
        assert_eq!(chain(&mapped, 5).unwrap(), expected);
        assert!(map_ids(&[7], "list", plus).unwrap_err().to_string().contains("not a list blob"));
    }

    proptest! {
        #[test]
        fn diff_then_apply_gives_the_new_list(
            old in proptest::collection::vec(0u8..40, 0..200),
            new in proptest::collection::vec(0u8..60, 0..200),
        ) {
            let (old, new) = (ids(&old), ids(&new));
            let patched = apply(Some(&old), &diff(&old, &new), "list").unwrap();
            prop_assert_eq!(patched, new.clone());
            prop_assert_eq!(apply(None, &encode_full(&new), "list").unwrap(), new);
        }

        #[test]
        fn noise_never_panics(previous in proptest::collection::vec(0u8..8, 0..20), data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let previous = ids(&previous);
            let _ = apply(Some(&previous), &data, "list");
            let _ = apply(None, &data, "list");
        }
    }
}
