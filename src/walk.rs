//! Walking stored trees: the one depth-first walk that listings, `check`'s damage report and
//! sync's re-encoding share ([`depth_first`]), and the read of every distinct tree once that
//! reachability and `check`'s fast pass share ([`each_tree`]).
//!
//! Both are loops over stacks of their own, with one path buffer: a tree of any depth costs
//! neither the process's stack nor a path string per level (store-format/tree.md, "Depth"), so a
//! crafted snapshot a hundred thousand levels deep is walked like any other. (Restore and drill
//! walk in parallel, writing as they go, and bound their recursion by rounds: see
//! [`crate::restore::ROUND_DEPTH`].)

use std::collections::HashSet;
use std::ops::ControlFlow;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::tree::{Content, Node, Tree};
use crate::id::Id;
use crate::repository::Indexed;

/// A directory open in a [`depth_first`] walk: its tree, the node to visit next, and what the
/// visitor keeps for it.
pub struct Open<S> {
    pub id: Id,
    pub tree: Tree,
    /// The index in `tree.nodes` of the next node to visit.
    pub next: usize,
    pub state: S,
    /// The length of this directory's path in the walk's path buffer.
    path_len: usize,
}

/// What a walk does after an entry.
pub enum Step {
    /// Walks the directory the entry is (nothing for other entries).
    Descend,
    /// Goes on with the next entry, not into this one.
    Skip,
    /// Ends the walk.
    Stop,
}

/// What a [`depth_first`] walk asks at each directory and entry.
pub trait Visitor {
    /// Kept per open directory.
    type State;

    /// Opens the directory `id`, at `path`, to walk it: its tree and state, or `None` to leave it
    /// out (already walked, or unreadable: the visitor says so as it wishes).
    fn open(&mut self, id: &Id, path: &str) -> Result<Option<(Tree, Self::State)>>;

    /// The entry `dir.tree.nodes[at]`, at `path` (which the visitor may change in place).
    fn entry(&mut self, dir: &mut Open<Self::State>, at: usize, path: &str) -> Result<Step>;

    /// `done`, at `path`, has had all its entries visited; `parent` holds it (`None` at the root).
    fn close(&mut self, done: Open<Self::State>, parent: Option<&mut Open<Self::State>>, path: &str) -> Result<()> {
        let _ = (done, parent, path);
        Ok(())
    }
}

/// Walks the tree `root` depth first, entries in their stored (name) order, a directory's whole
/// content before its next sibling; paths are `prefix`, then `/` and each name. Fails at the
/// first error the visitor returns.
pub fn depth_first<V: Visitor>(root: &Id, mut path: String, visitor: &mut V) -> Result<()> {
    let mut stack: Vec<Open<V::State>> = Vec::new();
    if let Some((tree, state)) = visitor.open(root, &path)? {
        stack.push(Open { id: *root, tree, next: 0, state, path_len: path.len() });
    }
    while let Some(dir) = stack.last_mut() {
        let Some(node) = dir.tree.nodes.get(dir.next) else {
            let done = stack.pop().expect("there is a top");
            path.truncate(done.path_len);
            visitor.close(done, stack.last_mut(), &path)?;
            continue;
        };
        let at = dir.next;
        dir.next += 1;
        path.truncate(dir.path_len);
        path.push('/');
        path.push_str(&String::from_utf8_lossy(&node.name));
        match visitor.entry(dir, at, &path)? {
            Step::Descend => {
                let Content::Dir { subtree } = dir.tree.nodes[at].content else { continue };
                if let Some((tree, state)) = visitor.open(&subtree, &path)? {
                    stack.push(Open { id: subtree, tree, next: 0, state, path_len: path.len() });
                }
            }
            Step::Skip => {}
            Step::Stop => return Ok(()),
        }
    }
    Ok(())
}

/// Calls `visit` with every entry below the tree `root`, depth first in name order, and its path:
/// `prefix`, then `/` and each name. `visit` may stop the walk with [`ControlFlow::Break`].
/// Fails at the first tree that cannot be read.
pub fn each_entry(
    repo: &Indexed,
    root: &Id,
    prefix: String,
    visit: impl FnMut(&Node, &str) -> ControlFlow<()>,
) -> Result<()> {
    struct Entries<'a, F> {
        repo: &'a Indexed<'a>,
        visit: F,
    }
    impl<F: FnMut(&Node, &str) -> ControlFlow<()>> Visitor for Entries<'_, F> {
        type State = ();
        fn open(&mut self, id: &Id, _: &str) -> Result<Option<(Tree, ())>> {
            Ok(Some((self.repo.read_tree(id)?, ())))
        }
        fn entry(&mut self, dir: &mut Open<()>, at: usize, path: &str) -> Result<Step> {
            Ok(match (self.visit)(&dir.tree.nodes[at], path) {
                ControlFlow::Break(()) => Step::Stop,
                ControlFlow::Continue(()) => Step::Descend,
            })
        }
    }
    depth_first(root, prefix, &mut Entries { repo, visit })
}

/// Trees [`each_tree`] reads in one parallel batch: reading one is mostly waiting for the disk
/// or the network, and the batch bounds how many decoded trees are held at once.
const TREES_AT_ONCE: usize = 64;

/// Reads every tree below `roots` once, [`TREES_AT_ONCE`] at a time in parallel, and calls `visit`
/// with each; the trees it names come later. Trees in `seen` are not read again (nor what is
/// below them); `seen` gains every tree read. Stops at the first tree that cannot be read (a
/// [`Error::MissingBlob`] as it is, other errors naming the tree) or error of `visit`.
pub fn each_tree(
    repo: &Indexed,
    roots: impl IntoIterator<Item = Id>,
    seen: &mut HashSet<Id>,
    mut visit: impl FnMut(&Id, &Tree) -> Result<()>,
) -> Result<()> {
    let mut pending: Vec<Id> = roots.into_iter().collect();
    while !pending.is_empty() {
        let mut batch = pending.split_off(pending.len().saturating_sub(TREES_AT_ONCE));
        batch.retain(|id| seen.insert(*id));
        let trees: Vec<Tree> = batch
            .par_iter()
            .map(|id| {
                repo.read_tree(id).map_err(|e| match e {
                    missing @ Error::MissingBlob(_) => missing,
                    e => Error::Invalid(format!("cannot read tree {}: {e}", id.short())),
                })
            })
            .collect::<Result<_>>()?;
        for (id, tree) in batch.iter().zip(&trees) {
            visit(id, tree)?;
            pending.extend(tree.nodes.iter().filter_map(|node| match node.content {
                Content::Dir { subtree } => Some(subtree),
                _ => None,
            }));
        }
    }
    Ok(())
}
