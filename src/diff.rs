//! What changed between two snapshots: entries added, removed, changed in content or type, or in
//! metadata only, with their sizes. Subtrees with the same id in both are the same tree, so they
//! are never read ([`crate::walk::side_by_side`]): a diff costs the directories that changed,
//! not the size of the snapshots.

use std::ops::ControlFlow;

use serde::Serialize;

use crate::error::Result;
use crate::format::tree::{ChunkList, Content, Metadata, Node};
use crate::id::Id;
use crate::repository::Indexed;

/// How an entry differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    /// The same kind of entry with other content: a file's bytes, a link's target, a device.
    Modified,
    /// A file became a directory, say.
    Type,
    /// Only mode, owner, extended attributes (ACLs, capabilities, labels) or modification time
    /// (of a file, a link or a device; a directory's own mode, owner or attributes). A
    /// directory's mtime follows its entries and is not reported.
    Metadata,
}

/// One entry that differs. In JSON its path is `path`, with `path_raw` beside it where the path is
/// not UTF-8 ([`crate::names::json`]).
#[derive(Debug, Clone)]
pub struct Entry {
    /// From the snapshot's root, `/`-separated, as stored: bytes ([`crate::names::shown`]).
    pub path: Vec<u8>,
    pub change: Change,
    /// `file`, `dir`, ...: of the entry after, or of the one removed.
    pub kind: &'static str,
    /// Content bytes before and after (files; 0 otherwise); `None` where the side has no entry.
    pub size_before: Option<u64>,
    pub size_after: Option<u64>,
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        crate::names::serialize_field(&mut map, "path", "path_raw", &self.path)?;
        map.serialize_entry("change", &self.change)?;
        map.serialize_entry("type", self.kind)?;
        map.serialize_entry("size_before", &self.size_before)?;
        map.serialize_entry("size_after", &self.size_after)?;
        map.end()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub type_changed: u64,
    pub metadata_changed: u64,
    /// Content bytes of files added, and of files removed.
    pub bytes_added: u64,
    pub bytes_removed: u64,
    /// Trees read: only those of directories that differ.
    pub trees_read: u64,
}

/// Calls `each` with every entry that differs between the trees `old` and `new`, depth first in
/// name order, paths from `/`; `each` may stop the walk. Returns the counts.
pub fn diff(repo: &Indexed, old: &Id, new: &Id, mut each: impl FnMut(&Entry) -> ControlFlow<()>) -> Result<Summary> {
    let mut summary = Summary::default();
    let trees = crate::walk::side_by_side(repo, Some(old), Some(new), Vec::new(), |path, a, b| {
        let Some(change) = change(a, b, |x, y| same_chunks(repo, x, y)) else { return ControlFlow::Continue(()) };
        let size = |node: Option<&Node>| node.map(|n| n.meta.size);
        let entry = Entry {
            path: path.to_vec(),
            change,
            kind: b.or(a).map_or("?", |n| n.content.type_name()),
            size_before: size(a),
            size_after: size(b),
        };
        let counter = match change {
            Change::Added => &mut summary.added,
            Change::Removed => &mut summary.removed,
            Change::Modified => &mut summary.modified,
            Change::Type => &mut summary.type_changed,
            Change::Metadata => &mut summary.metadata_changed,
        };
        *counter += 1;
        let file_bytes = |node: Option<&Node>| match node {
            Some(n) if matches!(n.content, Content::File { .. }) => n.meta.size,
            _ => 0,
        };
        match change {
            Change::Added => summary.bytes_added += file_bytes(b),
            Change::Removed => summary.bytes_removed += file_bytes(a),
            Change::Modified | Change::Type => {
                summary.bytes_added += file_bytes(b);
                summary.bytes_removed += file_bytes(a);
            }
            Change::Metadata => {}
        }
        each(&entry)
    })?;
    summary.trees_read = trees;
    Ok(summary)
}

/// Whether two chunk lists that are not equal as stored list the same chunks: a chain of list
/// blobs and another chain, or a full list, of the same content (store-format/tree.md "Chunk
/// lists"). Only lists of the same length kept in list blobs are read; one that cannot be read
/// differs.
fn same_chunks(repo: &Indexed, a: &ChunkList, b: &ChunkList) -> bool {
    if a.count() != b.count() || (a.inline().is_some() && b.inline().is_some()) {
        return false;
    }
    matches!((repo.chunk_list(a), repo.chunk_list(b)), (Ok(x), Ok(y)) if x == y)
}

/// How `new` differs from `old`, or `None` if it does not (as far as a diff tells); files whose
/// chunk lists differ as stored are compared by `same_chunks`.
pub fn change(
    old: Option<&Node>,
    new: Option<&Node>,
    same_chunks: impl Fn(&ChunkList, &ChunkList) -> bool,
) -> Option<Change> {
    let (old, new) = match (old, new) {
        (None, None) => return None,
        (Some(_), None) => return Some(Change::Removed),
        (None, Some(_)) => return Some(Change::Added),
        (Some(old), Some(new)) => (old, new),
    };
    let content = match (&old.content, &new.content) {
        // A directory's entries are reported one by one.
        (Content::Dir { .. }, Content::Dir { .. }) => false,
        (Content::File { chunks: a }, Content::File { chunks: b }) => a != b && !same_chunks(a, b),
        (Content::Symlink { target: a }, Content::Symlink { target: b }) => a != b,
        (Content::CharDevice { rdev: a }, Content::CharDevice { rdev: b })
        | (Content::BlockDevice { rdev: a }, Content::BlockDevice { rdev: b }) => a != b,
        (a, b) if std::mem::discriminant(a) != std::mem::discriminant(b) => return Some(Change::Type),
        _ => false,
    };
    if content {
        return Some(Change::Modified);
    }
    let is_dir = matches!(new.content, Content::Dir { .. });
    (!same_metadata(&old.meta, &new.meta, is_dir) || old.xattrs != new.xattrs).then_some(Change::Metadata)
}

/// Mode, owner, and (but for directories) modification time; not what a copy or a restore
/// changes by itself (inode, device, link count, ctime).
fn same_metadata(a: &Metadata, b: &Metadata, dir: bool) -> bool {
    (a.mode, a.uid, a.gid) == (b.mode, b.uid, b.gid)
        && (dir || (a.mtime_sec, a.mtime_nsec) == (b.mtime_sec, b.mtime_nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::change`] where lists that differ as stored differ.
    fn change(old: Option<&Node>, new: Option<&Node>) -> Option<Change> {
        super::change(old, new, |_, _| false)
    }

    fn node(content: Content, mode: u32, mtime: i64) -> Node {
        Node {
            name: b"x".to_vec(),
            meta: Metadata { mode, mtime_sec: mtime, ..Metadata::default() },
            content,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn each_kind_of_change_is_told_apart() {
        let file = |chunk: u8, mode, mtime| node(Content::File { chunks: vec![Id([chunk; 32])].into() }, mode, mtime);
        let dir = |tree: u8, mode, mtime| node(Content::Dir { subtree: Id([tree; 32]) }, mode, mtime);
        let f = file(1, 0o644, 10);
        assert_eq!(change(Some(&f), Some(&f)), None);
        assert_eq!(change(None, Some(&f)), Some(Change::Added));
        assert_eq!(change(Some(&f), None), Some(Change::Removed));
        assert_eq!(change(Some(&f), Some(&file(2, 0o644, 10))), Some(Change::Modified));
        assert_eq!(change(Some(&f), Some(&file(1, 0o600, 10))), Some(Change::Metadata));
        assert_eq!(change(Some(&f), Some(&file(1, 0o644, 11))), Some(Change::Metadata));
        assert_eq!(change(Some(&f), Some(&dir(1, 0o644, 10))), Some(Change::Type));
        // A directory whose entries changed: its mtime and subtree say nothing of its own.
        assert_eq!(change(Some(&dir(1, 0o755, 10)), Some(&dir(2, 0o755, 20))), None);
        assert_eq!(change(Some(&dir(1, 0o755, 10)), Some(&dir(1, 0o700, 10))), Some(Change::Metadata));
        let link = |target: &[u8]| node(Content::Symlink { target: target.to_vec() }, 0o777, 10);
        assert_eq!(change(Some(&link(b"a")), Some(&link(b"b"))), Some(Change::Modified));
        let copy = Node { meta: Metadata { ino: 99, ctime_sec: 5, nlink: 2, ..f.meta }, ..f.clone() };
        assert_eq!(change(Some(&f), Some(&copy)), None, "a copy's inode and ctime are no change");
        let acl = crate::format::tree::Xattr { name: b"system.posix_acl_access".to_vec(), value: vec![2, 0, 0, 0] };
        let with_acl = Node { xattrs: vec![acl], ..f.clone() };
        assert_eq!(change(Some(&f), Some(&with_acl)), Some(Change::Metadata));
        let labelled = Node { xattrs: vec![], ..dir(1, 0o755, 10) };
        let relabelled = Node { xattrs: with_acl.xattrs.clone(), ..dir(2, 0o755, 20) };
        assert_eq!(change(Some(&labelled), Some(&relabelled)), Some(Change::Metadata));
    }

    #[test]
    fn chunk_lists_stored_differently_are_compared_by_their_chunks() {
        let stored = |list: u8, mtime| {
            node(Content::File { chunks: ChunkList::Stored { count: 2048, lists: vec![Id([list; 32])] } }, 0o644, mtime)
        };
        let (a, b) = (stored(1, 10), stored(2, 10));
        assert_eq!(change(Some(&a), Some(&b)), Some(Change::Modified));
        assert_eq!(super::change(Some(&a), Some(&b), |_, _| true), None);
        assert_eq!(super::change(Some(&a), Some(&stored(2, 11)), |_, _| true), Some(Change::Metadata));
    }
}
