//! The names of the mount's top directories, worked out from the snapshot list: one pure
//! function of the snapshots, so that every refresh names a snapshot as the last one did (a
//! path a user copied stays valid while the snapshot lives).
//!
//! - `snapshots/<time>-<short id>-<source>`: every selected snapshot; `snapshots/latest` links
//!   to the newest (never a safety snapshot of an in-place restore unless the filters name
//!   them, as `cairn restore latest` never picks one).
//! - `sources/<source>/<time>`: a source's snapshots, and `latest` linking to the newest. Two of
//!   one source in the same second are both named `<time>-<short id>`.
//! - `ids/<short id>`: each by its id (the whole id for ids whose first eight digits collide).
//!
//! Times are UTC, `2026-12-04T10:00:00Z`, so names sort by time. A source name (or, for a
//! snapshot without one, its paths) has `%` and `/` escaped as `%25` and `%2F`, so it is one
//! file name and reads back unambiguously.

use std::collections::BTreeMap;

use crate::format::snapshot::Snapshot;
use crate::id::Id;

/// What a name in a top directory stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// The snapshot at this position of [`Catalog::snapshots`].
    Snapshot(usize),
    /// The `latest` link, to this name beside it.
    Latest(Vec<u8>),
}

/// One top directory's entries, by name.
pub(crate) type Listing = BTreeMap<Vec<u8>, Item>;

/// The selected snapshots and the names the top directories give them.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    /// Oldest first.
    pub(crate) snapshots: Vec<(Id, Snapshot)>,
    /// `snapshots/`.
    pub(crate) all: Listing,
    /// `sources/<name>/`, by the escaped name.
    pub(crate) sources: BTreeMap<Vec<u8>, Listing>,
    /// `ids/`.
    pub(crate) ids: Listing,
}

impl Catalog {
    /// Names `snapshots` (sorted oldest first, as [`crate::repository::Repository::snapshots`]
    /// returns them). `latest` may point to a safety snapshot only when `safety_named`.
    pub(crate) fn new(snapshots: Vec<(Id, Snapshot)>, safety_named: bool) -> Catalog {
        let mut catalog = Catalog { snapshots, ..Catalog::default() };
        let mut by_source: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
        let mut newest = None;
        for (at, (id, snapshot)) in catalog.snapshots.iter().enumerate() {
            let source = escape(&snapshot.source_key());
            let mut name = format!("{}-{}-", time_name(snapshot.time_sec), id.short()).into_bytes();
            name.extend_from_slice(&source);
            catalog.all.insert(name.clone(), Item::Snapshot(at));
            if safety_named || !snapshot.is_safety_snapshot() {
                newest = Some(name);
            }
            by_source.entry(source).or_default().push(at);
        }
        if let Some(name) = newest {
            catalog.all.insert(b"latest".to_vec(), Item::Latest(name));
        }
        for (source, members) in by_source {
            let listing = catalog.source_listing(&members);
            catalog.sources.insert(source, listing);
        }
        catalog.ids = catalog.id_listing();
        catalog
    }

    /// A source's snapshots (positions, oldest first) by time, and `latest`.
    fn source_listing(&self, members: &[usize]) -> Listing {
        let mut listing = Listing::new();
        let mut seconds: BTreeMap<i64, usize> = BTreeMap::new();
        for &at in members {
            *seconds.entry(self.snapshots[at].1.time_sec).or_default() += 1;
        }
        let mut last = Vec::new();
        for &at in members {
            let (id, snapshot) = &self.snapshots[at];
            let mut name = time_name(snapshot.time_sec);
            if seconds[&snapshot.time_sec] > 1 {
                name = format!("{name}-{}", id.short());
            }
            last = name.clone().into_bytes();
            listing.insert(name.into_bytes(), Item::Snapshot(at));
        }
        if !members.is_empty() {
            listing.insert(b"latest".to_vec(), Item::Latest(last));
        }
        listing
    }

    /// Every snapshot by its short id, or its whole id where short ones collide.
    fn id_listing(&self) -> Listing {
        let mut shorts: BTreeMap<String, usize> = BTreeMap::new();
        for (id, _) in &self.snapshots {
            *shorts.entry(id.short()).or_default() += 1;
        }
        let mut listing = Listing::new();
        for (at, (id, _)) in self.snapshots.iter().enumerate() {
            let name = match shorts[&id.short()] {
                1 => id.short(),
                _ => id.to_hex(),
            };
            listing.insert(name.into_bytes(), Item::Snapshot(at));
        }
        listing
    }

    /// The newest snapshot time, for the times of the top directories.
    pub(crate) fn newest_time(&self) -> Option<(i64, u32)> {
        self.snapshots.iter().map(|(_, s)| (s.time_sec, s.time_nsec)).max()
    }
}

/// A Unix time as `2026-12-04T10:00:00Z`.
pub(crate) fn time_name(secs: i64) -> String {
    let rest = secs.rem_euclid(86_400);
    let (year, month, day) = crate::clock::civil_from_days(secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

/// A source name as one file name: `%` and `/` (and NUL) escaped, `.` and `..` too (and an
/// empty one is `%`).
pub(crate) fn escape(source: &str) -> Vec<u8> {
    if source.is_empty() {
        return b"%".to_vec();
    }
    if source == "." || source == ".." {
        return source.bytes().map(|_| "%2E").collect::<String>().into_bytes();
    }
    let mut out = Vec::with_capacity(source.len());
    for byte in source.bytes() {
        match byte {
            b'%' => out.extend_from_slice(b"%25"),
            b'/' => out.extend_from_slice(b"%2F"),
            0 => out.extend_from_slice(b"%00"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(source: &str, time_sec: i64, tags: &[&str]) -> Snapshot {
        Snapshot {
            time_sec,
            source: source.to_string(),
            paths: vec![b"/srv/data".to_vec()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Snapshot::default()
        }
    }

    fn id(byte: u8) -> Id {
        Id::of(&[byte])
    }

    #[test]
    fn names_sort_by_time_and_read_back() {
        assert_eq!(time_name(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_name(1_796_378_400 + 2_405), "2026-12-04T10:40:05Z");
        assert_eq!(time_name(-1), "1969-12-31T23:59:59Z");
        assert_eq!(escape("app"), b"app");
        assert_eq!(escape("/srv/data /etc"), b"%2Fsrv%2Fdata %2Fetc");
        assert_eq!(escape("50%/x"), b"50%25%2Fx");
        assert_eq!(escape(".."), b"%2E%2E");
    }

    #[test]
    fn each_view_names_every_snapshot_once() {
        let snapshots = vec![
            (id(1), snapshot("app", 100, &[])),
            (id(2), snapshot("app", 100, &[])),
            (id(3), snapshot("", 200, &[])),
            (id(4), snapshot(Snapshot::SAFETY, 300, &[Snapshot::SAFETY])),
        ];
        let catalog = Catalog::new(snapshots, false);
        assert_eq!(catalog.all.len(), 5, "{:?}", catalog.all);
        let newest_backup = format!("1970-01-01T00:03:20Z-{}-%2Fsrv%2Fdata", id(3).short()).into_bytes();
        assert_eq!(catalog.all[&b"latest"[..]], Item::Latest(newest_backup.clone()));
        assert_eq!(catalog.all[&newest_backup], Item::Snapshot(2));
        let app = &catalog.sources[&b"app"[..]];
        let second = format!("1970-01-01T00:01:40Z-{}", id(2).short()).into_bytes();
        assert_eq!(app[&second], Item::Snapshot(1));
        assert_eq!(app[&b"latest"[..]], Item::Latest(second));
        let paths = &catalog.sources[&b"%2Fsrv%2Fdata"[..]];
        assert_eq!(paths[&b"1970-01-01T00:03:20Z"[..]], Item::Snapshot(2));
        assert!(catalog.sources.contains_key(&b"pre-restore"[..]));
        assert_eq!(catalog.ids[id(4).short().as_bytes()], Item::Snapshot(3));
        assert_eq!(catalog.newest_time(), Some((300, 0)));
        let named = Catalog::new(catalog.snapshots.clone(), true);
        assert!(matches!(&named.all[&b"latest"[..]], Item::Latest(name) if name.ends_with(b"pre-restore")));
    }
}
