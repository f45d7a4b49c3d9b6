//! Which snapshots hold the paths a pattern matches (`cairn find`). A pattern without `/`
//! matches an entry's name at any depth, one with `/` its whole path in the snapshot, as
//! `--exclude` patterns do (`*` within a component, `**` across, `?` one character). Snapshots
//! next to each other with the same root tree (nothing changed between them) are walked once.

use std::ops::ControlFlow;

use serde::Serialize;

use crate::error::Result;
use crate::format::snapshot::Snapshot;
use crate::format::tree::Node;
use crate::id::Id;
use crate::repository::Indexed;

/// An entry a pattern matched. In JSON its path is `path`, with `path_raw` beside it where the
/// path is not UTF-8 ([`crate::names::json`]).
#[derive(Debug, Clone)]
pub struct Found {
    /// From the snapshot's root, `/`-separated, as stored: bytes ([`crate::names::shown`]).
    pub path: Vec<u8>,
    pub kind: &'static str,
    pub size: u64,
    pub mtime: i64,
}

impl Serialize for Found {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        crate::names::serialize_field(&mut map, "path", "path_raw", &self.path)?;
        map.serialize_entry("type", self.kind)?;
        map.serialize_entry("size", &self.size)?;
        map.serialize_entry("mtime", &self.mtime)?;
        map.end()
    }
}

/// Calls `each` with every snapshot of `snapshots` (in their order) and what `pattern` matches
/// in it, for those where it matches anything.
pub fn find(
    repo: &Indexed,
    snapshots: &[(Id, Snapshot)],
    pattern: &[u8],
    mut each: impl FnMut(&Id, &Snapshot, &[Found]) -> ControlFlow<()>,
) -> Result<()> {
    let mut pattern = pattern;
    while let Some(shorter) = pattern.strip_suffix(b"/") {
        pattern = shorter;
    }
    // A pattern as `cairn ls` shows names (`caf\xe9*`) matches what its escapes stand for too.
    let patterns: Vec<Vec<u8>> = std::iter::once(pattern.to_vec()).chain(crate::names::unescape(pattern)).collect();
    let whole_path = pattern.contains(&b'/');
    // The last root walked and what matched in it: snapshots between which nothing changed are
    // next to each other in time, and one root's matches are all that is held.
    let mut last: Option<(Id, Vec<Found>)> = None;
    for (id, snapshot) in snapshots {
        if !last.as_ref().is_some_and(|(root, _)| *root == snapshot.tree) {
            let mut found = Vec::new();
            crate::walk::each_entry(repo, &snapshot.tree, Vec::new(), |node: &Node, path: &[u8]| {
                let text = if whole_path { path } else { &node.name[..] };
                if patterns.iter().any(|pattern| crate::source::exclude::glob(pattern, text)) {
                    found.push(Found {
                        path: path.to_vec(),
                        kind: node.content.type_name(),
                        size: node.meta.size,
                        mtime: node.meta.mtime_sec,
                    });
                }
                ControlFlow::Continue(())
            })?;
            last = Some((snapshot.tree, found));
        }
        let found = &last.as_ref().expect("set above").1;
        if !found.is_empty() && each(id, snapshot, found).is_break() {
            break;
        }
    }
    Ok(())
}
