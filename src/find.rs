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

/// An entry a pattern matched.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// As `cairn ls` shows it: from the snapshot's root, `/`-separated.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    pub mtime: i64,
}

/// Calls `each` with every snapshot of `snapshots` (in their order) and what `pattern` matches
/// in it, for those where it matches anything.
pub fn find(
    repo: &Indexed,
    snapshots: &[(Id, Snapshot)],
    pattern: &str,
    mut each: impl FnMut(&Id, &Snapshot, &[Found]) -> ControlFlow<()>,
) -> Result<()> {
    let pattern = pattern.trim_end_matches('/').as_bytes().to_vec();
    let whole_path = pattern.contains(&b'/');
    // The last root walked and what matched in it: snapshots between which nothing changed are
    // next to each other in time, and one root's matches are all that is held.
    let mut last: Option<(Id, Vec<Found>)> = None;
    for (id, snapshot) in snapshots {
        if !last.as_ref().is_some_and(|(root, _)| *root == snapshot.tree) {
            let mut found = Vec::new();
            crate::walk::each_entry(repo, &snapshot.tree, String::new(), |node: &Node, path: &str| {
                let text = if whole_path { path.as_bytes() } else { &node.name[..] };
                if crate::source::exclude::glob(&pattern, text) {
                    found.push(Found {
                        path: path.to_string(),
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
