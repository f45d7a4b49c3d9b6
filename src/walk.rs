//! Walking the entries of a stored tree in path order, for listings (`cairn ls`).
//!
//! Iterative, with one path buffer: a tree of any depth costs neither the process's stack nor a
//! path string per level (store-format/tree.md, "Depth"), so a crafted snapshot a hundred
//! thousand levels deep lists like any other.

use std::ops::ControlFlow;

use crate::error::Result;
use crate::format::tree::{Content, Node};
use crate::id::Id;
use crate::repository::index::Index;
use crate::repository::Repository;

/// Calls `visit` with every entry below the tree `root`, depth first in name order, and its path:
/// `prefix`, then `/` and each name. `visit` may stop the walk with [`ControlFlow::Break`].
/// Fails at the first tree that cannot be read.
pub fn each_entry(
    repo: &Repository,
    index: &Index,
    root: &Id,
    mut path: String,
    mut visit: impl FnMut(&Node, &str) -> ControlFlow<()>,
) -> Result<()> {
    // Per directory being listed: its remaining entries (last first) and its path's length.
    let mut stack = vec![(entries(repo, index, root)?, path.len())];
    while let Some((entries_left, length)) = stack.last_mut() {
        let Some(node) = entries_left.pop() else {
            stack.pop();
            continue;
        };
        path.truncate(*length);
        path.push('/');
        path.push_str(&String::from_utf8_lossy(&node.name));
        if visit(&node, &path).is_break() {
            return Ok(());
        }
        if let Content::Dir { subtree } = &node.content {
            stack.push((entries(repo, index, subtree)?, path.len()));
        }
    }
    Ok(())
}

/// The nodes of the tree `id`, last first.
fn entries(repo: &Repository, index: &Index, id: &Id) -> Result<Vec<Node>> {
    let mut nodes = repo.read_tree(index, id)?.nodes;
    nodes.reverse();
    Ok(nodes)
}
