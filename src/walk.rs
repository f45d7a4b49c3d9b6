//! Walking stored trees: the one depth-first walk that listings, `check`'s damage report and
//! sync's re-encoding share ([`depth_first`]), two trees side by side for `diff`
//! ([`side_by_side`]), the read of every distinct tree once that
//! reachability and `check`'s fast pass share ([`each_tree`]), and the parallel walk along a
//! directory on disk that restore writes and a drill checks ([`Parallel`]).
//!
//! None recurses in proportion to depth: the first two are loops over stacks of their own, with
//! one path buffer, and the parallel walk leaves a directory [`ROUND_DEPTH`] levels down for a
//! later round that starts from it. A tree of any depth costs neither the process's stack nor a
//! path string per level (store-format/tree.md, "Depth"), so a crafted snapshot a hundred
//! thousand levels deep is walked like any other.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::tree::{Content, Node, Tree};
use crate::fs_at::{Dir, Place};
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

    /// Whether the visitor reads the paths it is given; without them (`false`) the walk builds
    /// none and passes each directory's and entry's as empty.
    const PATHS: bool = true;

    /// Opens the directory `id`, at `path`, to walk it: its tree and state, or `None` to leave it
    /// out (already walked, or unreadable: the visitor says so as it wishes).
    fn open(&mut self, id: &Id, path: &[u8]) -> Result<Option<(Tree, Self::State)>>;

    /// The entry `dir.tree.nodes[at]`, at `path` (which the visitor may change in place).
    fn entry(&mut self, dir: &mut Open<Self::State>, at: usize, path: &[u8]) -> Result<Step>;

    /// `done`, at `path`, has had all its entries visited; `parent` holds it (`None` at the root).
    fn close(&mut self, done: Open<Self::State>, parent: Option<&mut Open<Self::State>>, path: &[u8]) -> Result<()> {
        let _ = (done, parent, path);
        Ok(())
    }
}

/// Walks the tree `root` depth first, entries in their stored (name) order, a directory's whole
/// content before its next sibling; paths are `prefix`, then `/` and each name. Fails at the
/// first error the visitor returns. Paths are bytes, as names are ([`crate::names`] shows them).
pub fn depth_first<V: Visitor>(root: &Id, mut path: Vec<u8>, visitor: &mut V) -> Result<()> {
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
        if V::PATHS {
            path.truncate(dir.path_len);
            path.push(b'/');
            path.extend_from_slice(&node.name);
        }
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
    prefix: Vec<u8>,
    visit: impl FnMut(&Node, &[u8]) -> ControlFlow<()>,
) -> Result<()> {
    struct Entries<'a, F> {
        repo: &'a Indexed<'a>,
        visit: F,
    }
    impl<F: FnMut(&Node, &[u8]) -> ControlFlow<()>> Visitor for Entries<'_, F> {
        type State = ();
        fn open(&mut self, id: &Id, _: &[u8]) -> Result<Option<(Tree, ())>> {
            Ok(Some((self.repo.read_tree(id)?, ())))
        }
        fn entry(&mut self, dir: &mut Open<()>, at: usize, path: &[u8]) -> Result<Step> {
            Ok(match (self.visit)(&dir.tree.nodes[at], path) {
                ControlFlow::Break(()) => Step::Stop,
                ControlFlow::Continue(()) => Step::Descend,
            })
        }
    }
    depth_first(root, prefix, &mut Entries { repo, visit })
}

/// A directory open in a [`side_by_side`] walk: its entries in both trees, merged by name.
struct Pair {
    merged: Vec<(Option<Node>, Option<Node>)>,
    next: usize,
    path_len: usize,
}

/// Walks two trees side by side, depth first in name order: `visit` gets each path below `old`
/// and `new` with its entry in each (`None` where one has none). A directory is entered only
/// where its two subtrees differ (an unchanged subtree, the same id, costs nothing) or where one
/// side has it; what a side lacks it lacks below too. Returns how many trees it read. `visit`
/// may stop the walk with [`ControlFlow::Break`].
pub fn side_by_side(
    repo: &Indexed,
    old: Option<&Id>,
    new: Option<&Id>,
    mut path: Vec<u8>,
    mut visit: impl FnMut(&[u8], Option<&Node>, Option<&Node>) -> ControlFlow<()>,
) -> Result<u64> {
    let mut read = 0u64;
    let mut open = |old: Option<&Id>, new: Option<&Id>, path_len: usize| -> Result<Pair> {
        let mut tree = |id: Option<&Id>| -> Result<Vec<Node>> {
            match id {
                Some(id) => {
                    read += 1;
                    Ok(repo.read_tree(id)?.nodes)
                }
                None => Ok(Vec::new()),
            }
        };
        let (old, new) = (tree(old)?, tree(new)?);
        let mut merged = Vec::with_capacity(old.len().max(new.len()));
        let (mut old, mut new) = (old.into_iter().peekable(), new.into_iter().peekable());
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => a.name.cmp(&b.name),
            };
            merged.push(match order {
                std::cmp::Ordering::Less => (old.next(), None),
                std::cmp::Ordering::Greater => (None, new.next()),
                std::cmp::Ordering::Equal => (old.next(), new.next()),
            });
        }
        Ok(Pair { merged, next: 0, path_len })
    };
    if old == new {
        return Ok(0);
    }
    let mut stack = vec![open(old, new, path.len())?];
    while let Some(dir) = stack.last_mut() {
        let Some((a, b)) = dir.merged.get(dir.next) else {
            stack.pop();
            continue;
        };
        dir.next += 1;
        path.truncate(dir.path_len);
        path.push(b'/');
        path.extend_from_slice(a.as_ref().or(b.as_ref()).map_or(&[][..], |node| &node.name));
        if visit(&path, a.as_ref(), b.as_ref()).is_break() {
            break;
        }
        let subtree = |node: &Option<Node>| match node.as_ref().map(|n| &n.content) {
            Some(Content::Dir { subtree }) => Some(*subtree),
            _ => None,
        };
        let (a, b) = (subtree(a), subtree(b));
        if a != b {
            let pair = open(a.as_ref(), b.as_ref(), path.len())?;
            stack.push(pair);
        }
    }
    Ok(read)
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

/// How many directory levels one walk descends by recursion before it leaves the rest for the
/// next round. Real trees rarely go deeper, so they restore in one round with rayon's work
/// stealing across the whole tree, as before rounds existed. A level costs 0.8 to 2.8 KiB of
/// stack (measured without the bound: a chain of 3,000 directories restored, one of 10,000
/// overflowed the 8 MiB main thread, where rayon runs one-entry directories inline), so 32
/// levels stay far inside a rayon worker's 2 MiB.
pub const ROUND_DEPTH: usize = 32;

/// Deferred directories that keep their descriptor open for the next round; the rest are
/// opened again from the root by their names. A deep chain defers one directory per round.
const OPEN_DEFERRED: usize = 256;

/// A directory left for the next round: where it is, its descriptor if kept open, its listing.
type Deferred = (Arc<Place>, Option<Dir>, Id);

/// Directories a walk reached at [`ROUND_DEPTH`]: each is walked in a later round, starting
/// again at depth 0, until no round defers anything.
#[derive(Default)]
struct Rounds {
    pending: Mutex<Vec<Deferred>>,
    open: AtomicUsize,
}

impl Rounds {
    /// Leaves the directory `dir` at `place`, whose listing is `subtree`, for the next round.
    fn defer(&self, place: Arc<Place>, dir: Dir, subtree: Id) {
        let keep = self.open.fetch_add(1, Relaxed) < OPEN_DEFERRED;
        if !keep {
            self.open.fetch_sub(1, Relaxed);
        }
        self.pending.lock().expect("poisoned").push((place, keep.then_some(dir), subtree));
    }

    /// Runs `walk` on every deferred directory (it may defer more), round after round. A
    /// directory that cannot be opened again is passed to `failed`.
    fn run(
        &self,
        root: &Dir,
        walk: impl Fn(&Dir, &Arc<Place>, &Id) + Sync,
        failed: impl Fn(&Place, std::io::Error) + Sync,
    ) {
        loop {
            let round = std::mem::take(&mut *self.pending.lock().expect("poisoned"));
            if round.is_empty() {
                return;
            }
            round.into_par_iter().for_each(|(place, dir, subtree)| {
                let dir = match dir {
                    Some(dir) => {
                        self.open.fetch_sub(1, Relaxed);
                        dir
                    }
                    None => match place.open(root) {
                        Ok(dir) => dir,
                        Err(e) => return failed(&place, e),
                    },
                };
                walk(&dir, &place, &subtree);
            });
        }
    }
}

/// What a [`Parallel`] walk does at each entry: restore writes it, a drill checks what restore
/// wrote.
pub(crate) trait InParallel: Sync {
    /// What the entries of one directory share, made once from all of them.
    type Listing: Sync;

    fn listing(&self, nodes: &[Node]) -> Self::Listing;

    /// The entry `node` of `dir`, which is `place`; for a directory to walk into, its descriptor
    /// and place.
    fn entry(&self, node: &Node, listing: &Self::Listing, dir: &Dir, place: &Arc<Place>) -> Option<(Dir, Arc<Place>)>;

    /// The listing of the directory at `place` cannot be read: nothing below it is visited.
    fn unreadable(&self, place: &Place, error: Error);

    /// A directory left for a later round cannot be opened again from the root.
    fn unopened(&self, place: &Place, error: std::io::Error);

    /// Whether to stop: no more entries are visited.
    fn cancelled(&self) -> bool;
}

/// A walk of stored trees along directories on disk below `root`: every directory's entries at
/// once (rayon), a subdirectory's as soon as it is reached, a directory [`ROUND_DEPTH`] levels
/// below where a walk began left for the next round ([`Parallel::finish`]).
pub(crate) struct Parallel<'a, V> {
    repo: &'a Indexed<'a>,
    root: &'a Dir,
    visit: &'a V,
    rounds: Rounds,
}

impl<'a, V: InParallel> Parallel<'a, V> {
    pub(crate) fn new(repo: &'a Indexed<'a>, root: &'a Dir, visit: &'a V) -> Parallel<'a, V> {
        Parallel { repo, root, visit, rounds: Rounds::default() }
    }

    /// Visits the entries of the tree `id` in `dir`, which is `place`, and everything below.
    pub(crate) fn tree(&self, dir: &Dir, place: &Arc<Place>, id: &Id) {
        self.tree_at(dir, place, id, 0)
    }

    /// Visits `node`, an entry of `dir` (which is `place`) whose directory's listing is
    /// `listing`, and everything below it.
    pub(crate) fn entry(&self, node: &Node, listing: &V::Listing, dir: &Dir, place: &Arc<Place>) {
        self.entry_at(node, listing, dir, place, 0)
    }

    /// Walks what the walks before left for later rounds, round after round.
    pub(crate) fn finish(&self) {
        self.rounds.run(
            self.root,
            |dir, place, id| self.tree_at(dir, place, id, 0),
            |place, e| self.visit.unopened(place, e),
        );
    }

    fn tree_at(&self, dir: &Dir, place: &Arc<Place>, id: &Id, depth: usize) {
        if self.visit.cancelled() {
            return;
        }
        let tree = match self.repo.read_tree(id) {
            Ok(tree) => tree,
            Err(e) => return self.visit.unreadable(place, e),
        };
        let listing = self.visit.listing(&tree.nodes);
        tree.nodes.par_iter().for_each(|node| self.entry_at(node, &listing, dir, place, depth));
    }

    fn entry_at(&self, node: &Node, listing: &V::Listing, dir: &Dir, place: &Arc<Place>, depth: usize) {
        let Some((child, child_place)) = self.visit.entry(node, listing, dir, place) else { return };
        let Content::Dir { subtree } = &node.content else { return };
        match depth + 1 < ROUND_DEPTH {
            true => self.tree_at(&child, &child_place, subtree, depth + 1),
            false => self.rounds.defer(child_place, child, *subtree),
        }
    }
}
