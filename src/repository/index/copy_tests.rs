//! Tests of the sorted copy against a model: the index of store-format/index.md, "Loading",
//! computed the plain way (every file read in name order, the first location of each blob kept).

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use super::build::{write_merged, Builder};
use super::sorted::SortedFile;
use super::*;
use crate::crypto::Keys;

/// A small deterministic generator (xorshift).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn id(n: u64) -> Id {
    Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-sorted-index-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `count` named index files over a pool of `blobs` ids, so ids repeat within packs' neighbours,
/// across packs and across files; some packs are named by several files (with the same entries,
/// as a concurrent run or a prune leaves them).
fn files(random: &mut Random, count: usize, blobs: u64) -> Vec<(Id, IndexFile)> {
    let mut packs: Vec<IndexedPack> = Vec::new();
    let mut out = Vec::new();
    for file in 0..count {
        let mut named = Vec::new();
        for _ in 0..1 + random.below(4) {
            if !packs.is_empty() && random.below(4) == 0 {
                named.push(packs[random.below(packs.len() as u64) as usize].clone());
                continue;
            }
            let mut offset = 16;
            let mut entries = Vec::new();
            for _ in 0..random.below(40) {
                let stored_len = 1 + random.below(100) as u32;
                let kind = if random.below(5) == 0 { BlobKind::Tree } else { BlobKind::Data };
                let codec = if random.below(2) == 0 { Codec::Raw } else { Codec::Zstd };
                let raw_len = if codec == Codec::Raw { stored_len } else { stored_len * 3 };
                entries.push(BlobEntry { id: id(random.below(blobs)), kind, codec, offset, stored_len, raw_len });
                offset += stored_len;
            }
            let pack = IndexedPack { id: id(1 << 40 | packs.len() as u64), len: offset as u64 + 100, blobs: entries };
            packs.push(pack.clone());
            named.push(pack);
        }
        out.push((id(1 << 50 | file as u64), IndexFile { packs: named }));
    }
    out.sort_by_key(|(name, _)| *name);
    out
}

/// The model: blob id to (pack id, entry), the first location in file, pack and entry order
/// winning by (pack first seen, offset).
fn model(files: &[(Id, IndexFile)]) -> HashMap<Id, (Id, BlobEntry)> {
    let mut first_seen: HashMap<Id, usize> = HashMap::new();
    let mut best: HashMap<Id, ((usize, u32), Id, BlobEntry)> = HashMap::new();
    for (_, file) in files {
        for pack in &file.packs {
            let seen = first_seen.len();
            let number = *first_seen.entry(pack.id).or_insert(seen);
            for blob in &pack.blobs {
                let key = (number, blob.offset);
                let better = best.get(&blob.id).map_or(true, |(known, _, _)| key < *known);
                if better {
                    best.insert(blob.id, (key, pack.id, *blob));
                }
            }
        }
    }
    best.into_iter().map(|(id, (_, pack, entry))| (id, (pack, entry))).collect()
}

fn assert_matches(index: &Index, model: &HashMap<Id, (Id, BlobEntry)>, what: &str) {
    for (id, (pack, entry)) in model {
        let at = index.get(id).unwrap_or_else(|| panic!("{what}: {} missing", id.short()));
        assert_eq!(
            (index.pack_id(&at), at.offset, at.stored_len, at.raw_len),
            (*pack, entry.offset, entry.stored_len, entry.raw_len),
            "{what}"
        );
        assert_eq!((at.kind, at.codec), (entry.kind, entry.codec), "{what}");
    }
    for n in 0..50 {
        assert_eq!(index.get(&id(1 << 60 | n)), None, "{what}: an id never stored");
    }
    let listed: Vec<(Id, BlobEntry)> = index.entries().map(|item| item.unwrap()).collect();
    assert_eq!(listed.len(), model.len(), "{what}: entries");
    assert!(listed.windows(2).all(|w| w[0].1.id < w[1].1.id), "{what}: entries in id order");
    for (pack, entry) in listed {
        assert_eq!(model[&entry.id], (pack, entry), "{what}: entry");
    }
    assert_positions(index, what);
}

/// Positions mark blobs (prune's bitset): the scan and the lookup give each blob the same one,
/// below [`Index::positions`], and no two blobs share one.
fn assert_positions(index: &Index, what: &str) {
    let mut seen = std::collections::HashSet::new();
    for item in index.iter_positioned() {
        let (position, id, location) = item.unwrap();
        assert!(position < index.positions(), "{what}: position in range");
        assert!(seen.insert(position), "{what}: one blob a position");
        assert_eq!(index.locate(&id), Some((position, location)), "{what}: lookup and scan agree");
    }
    assert_eq!(index.locate(&id(1 << 60)), None, "{what}: an id never stored");
}

/// Plain, and sealed with a key (an encrypted repository's copy).
fn both_kinds() -> [Option<Keys>; 2] {
    [None, Some(Keys::new(crate::crypto::MasterKey::random()))]
}

/// The sorted copy of `files` built in `dir` with runs of `run` entries, opened.
fn built(dir: &std::path::Path, files: &[(Id, IndexFile)], run: usize, keys: Option<&Keys>) -> Index {
    let mut builder = Builder::new(dir.to_path_buf(), run, keys.cloned());
    for (name, file) in files {
        builder.add(*name, file).unwrap();
    }
    let out = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join("copy")).unwrap();
    let (file, _) = builder.finish(out).unwrap();
    let (main, head) = SortedFile::open(file, Some(dir.join("copy")), keys).unwrap();
    open::from_main(main, head)
}

#[test]
fn external_sort_keeps_the_first_location_whatever_the_run_size() {
    let dir = scratch("runs");
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for (count, pool) in [(0, 10), (1, 5), (3, 20), (40, 300), (120, 2_000)] {
        let files = files(&mut random, count, pool);
        let model = model(&files);
        assert_matches(&Index::default().with_delta(files.clone()), &model, "in memory");
        for keys in both_kinds() {
            for run in [1, 2, 7, 64, 1025, 1 << 20] {
                let what = format!("{count} files, runs of {run}, sealed: {}", keys.is_some());
                assert_matches(&built(&dir, &files, run, keys.as_ref()), &model, &what);
                if keys.is_some() {
                    let bytes = fs::read(dir.join("copy")).unwrap();
                    let shown = model.keys().filter(|id| bytes.windows(32).any(|w| w == id.0)).count();
                    assert_eq!(shown, 0, "{what}: a sealed copy shows no blob id");
                }
            }
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_delta_of_newer_files_and_its_merge_agree_with_one_build() {
    let dir = scratch("delta");
    let mut random = Random(12_345);
    for (round, keys) in (0..6).zip(both_kinds().into_iter().cycle()) {
        let files = files(&mut random, 60, 500);
        let model = model(&files);
        // Some files (anywhere in name order) are "new": not in the copy.
        let (old, new): (Vec<_>, Vec<_>) = files.iter().cloned().partition(|_| random.below(3) != 0);
        let index = built(&dir, &old, 5, keys.as_ref()).with_delta(new.clone());
        assert_matches(&index, &model, &format!("round {round}: copy and delta"));
        let old_names: Vec<Id> = old.iter().map(|(name, _)| *name).collect();
        let new_names: Vec<Id> = new.iter().map(|(name, _)| *name).collect();
        let out = dir.join("merged");
        let out_file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&out).unwrap();
        let (file, head) = write_merged(&index, &old_names, &new_names, out_file, keys.as_ref()).unwrap();
        let names: Vec<Id> = files.iter().map(|(name, _)| *name).collect();
        assert_eq!(head.files, names, "the merged copy names every file");
        let (main, head) = SortedFile::open(file, None, keys.as_ref()).unwrap();
        assert_matches(&open::from_main(main, head), &model, &format!("round {round}: merged"));
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// Every byte of a copy flipped in turn, and every truncation: the copy is refused at open, or
/// each lookup gives the right location or none (and then the copy says it is damaged and its
/// file is removed); never a wrong location.
#[test]
fn a_damaged_copy_never_gives_a_wrong_location() {
    for keys in both_kinds() {
        damaged_copy(keys.as_ref());
    }
    // A copy is read only with the key, or only without one, that it was written with.
    let dir = scratch("mode");
    let files = files(&mut Random(5), 3, 40);
    for (written, read) in
        [(None, Some(Keys::new(crate::crypto::MasterKey::random()))), (both_kinds()[1].clone(), None)]
    {
        drop(built(&dir, &files, 1 << 20, written.as_ref()));
        assert!(SortedFile::open(fs::File::open(dir.join("copy")).unwrap(), None, read.as_ref()).is_err());
    }
    fs::remove_dir_all(&dir).unwrap();
}

fn damaged_copy(keys: Option<&Keys>) {
    let dir = scratch(&format!("damage-{}", keys.is_some()));
    let mut random = Random(777);
    let files = files(&mut random, 30, 400);
    let model = model(&files);
    drop(built(&dir, &files, 1 << 20, keys));
    let path = dir.join("copy");
    let good = fs::read(&path).unwrap();
    let (mut refused, mut noticed) = (0, 0);
    for at in (0..good.len()).step_by(7).chain([good.len() - 1]) {
        let mut bad = good.clone();
        bad[at] ^= 1 << (at % 8);
        fs::write(&path, &bad).unwrap();
        let Ok((main, head)) = SortedFile::open(fs::File::open(&path).unwrap(), Some(path.clone()), keys) else {
            refused += 1;
            continue;
        };
        let index = open::from_main(main, head);
        let mut absent = false;
        for (id, (pack, entry)) in &model {
            match index.get(id) {
                Some(l) => assert_eq!(
                    (index.pack_id(&l), l.offset, l.stored_len),
                    (*pack, entry.offset, entry.stored_len),
                    "byte {at}"
                ),
                None => absent = true,
            }
        }
        assert!(index.entries().any(|item| item.is_err()), "byte {at}: a scan notices");
        assert!(index.damaged(), "byte {at}");
        assert!(!path.exists(), "byte {at}: a damaged copy is removed");
        noticed += usize::from(absent);
    }
    for len in [0, 1, good.len() / 3, good.len() - 100, good.len() - 1] {
        fs::write(&path, &good[..len]).unwrap();
        assert!(SortedFile::open(fs::File::open(&path).unwrap(), None, keys).is_err(), "truncated to {len}");
    }
    assert!(refused > 0 && noticed > 0, "both the head's and the blocks' checks were exercised");
    fs::remove_dir_all(&dir).unwrap();
}
