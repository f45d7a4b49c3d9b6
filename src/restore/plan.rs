//! The order in which a restore from an object store reads its blobs: the plan that
//! [`crate::repository::reader::PlannedReads`] fetches by pack, ahead of the one writer.

use std::collections::HashSet;

use super::Selection;
use crate::error::Result;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Node, Tree};
use crate::id::Id;
use crate::repository::Indexed;
use crate::walk::{depth_first, Open, Step, Visitor, ROUND_DEPTH};

/// The data blobs a restore of `selected` reads, in the order it reads them when it writes on
/// one thread: each directory's entries in order, a subdirectory's whole content before the next
/// entry, a file's chunks once per set of hard links (but a run of zeros: `zeros`); a directory [`ROUND_DEPTH`] levels below
/// where a walk began waits for the next round, as [`crate::walk::Parallel`] has it. Trees that
/// cannot be read are left out (the restore reports them). A [`depth_first`] walk per start.
pub(super) fn planned_blobs(repo: &Indexed, snapshot: &Snapshot, selected: &Selection, zeros: &Id) -> Vec<Id> {
    let mut planner =
        Planner { repo, zeros, blobs: Vec::new(), linked: HashSet::new(), entering: 0, next_round: Vec::new() };
    // This round's walks: a tree whose entries are at depth 0, or one include's node.
    let mut round: Vec<Result<Id, &Node>> = selected
        .iter()
        .map(|(_, node)| match node {
            None => Ok(snapshot.tree),
            Some(node) => Err(node),
        })
        .collect();
    while !round.is_empty() {
        for start in round {
            match start {
                Ok(tree) => planner.walk(tree, 0),
                Err(node) => match &node.content {
                    Content::Dir { subtree } => planner.walk(*subtree, 1),
                    _ => planner.file(node),
                },
            }
        }
        round = std::mem::take(&mut planner.next_round).into_iter().map(Ok).collect();
    }
    planner.blobs
}

/// The [`Visitor`] of [`planned_blobs`]; a directory's state is the depth of its entries.
struct Planner<'a> {
    repo: &'a Indexed<'a>,
    /// The chunk of a run of zeros, which restore writes without reading ([`super::ZeroRun`]).
    zeros: &'a Id,
    blobs: Vec<Id>,
    linked: HashSet<(u64, u64)>,
    /// The depth of the entries of the directory being opened.
    entering: usize,
    /// Trees left for the next round.
    next_round: Vec<Id>,
}

impl Planner<'_> {
    fn walk(&mut self, tree: Id, depth: usize) {
        self.entering = depth;
        // The visitor fails nowhere: an unreadable tree is left out.
        let _ = depth_first(&tree, Vec::new(), self);
    }

    fn file(&mut self, node: &Node) {
        if let Content::File { chunks } = &node.content {
            if node.meta.nlink <= 1 || self.linked.insert((node.meta.dev, node.meta.ino)) {
                // A chain that cannot be read is left out: the restore reports its file.
                if let Ok(chunks) = self.repo.chunk_list(chunks) {
                    self.blobs.extend(chunks.iter().filter(|id| *id != self.zeros));
                }
            }
        }
    }
}

impl Visitor for Planner<'_> {
    type State = usize;
    const PATHS: bool = false;

    fn open(&mut self, id: &Id, _: &[u8]) -> Result<Option<(Tree, usize)>> {
        Ok(self.repo.read_tree(id).ok().map(|tree| (tree, self.entering)))
    }

    fn entry(&mut self, dir: &mut Open<usize>, at: usize, _: &[u8]) -> Result<Step> {
        let node = &dir.tree.nodes[at];
        match &node.content {
            Content::Dir { .. } if dir.state + 1 < ROUND_DEPTH => {
                self.entering = dir.state + 1;
                return Ok(Step::Descend);
            }
            Content::Dir { subtree } => self.next_round.push(*subtree),
            _ => self.file(node),
        }
        Ok(Step::Skip)
    }
}
