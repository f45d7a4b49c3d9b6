//! Walking snapshot trees for `cairn check`: a fast pass that reads every tree once, and, when
//! something is damaged or missing, a walk that names every path the damage costs. Both are the
//! walks of [`crate::walk`], whose depth costs memory in proportion to it and never the process's
//! stack (store-format/tree.md, "Depth").

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::Affected;
use crate::error::Result;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Tree};
use crate::id::Id;
use crate::repository::Indexed;
use crate::walk::{depth_first, each_tree, Open, Step, Visitor};

/// Walks every snapshot's trees, naming each path that needs a blob in `bad`, a tree that does not
/// decode, or a chunk the index lacks.
pub(super) fn walk(repo: &Indexed, snapshots: &[(Id, Snapshot)], bad: HashMap<Id, String>) -> Walked {
    let mut walker =
        Walker { repo, bad, clean: HashSet::new(), unindexed: HashSet::new(), affected: Vec::new(), trees: 0 };
    for (id, snapshot) in snapshots {
        walker.snapshot(&id.short(), &snapshot.tree);
    }
    Walked { bad: walker.bad, unindexed: walker.unindexed, affected: walker.affected, trees: walker.trees }
}

/// Reads every tree the snapshots reach, each once and in parallel ([`each_tree`]); returns how
/// many there are if every one decodes and names only chunks and trees the index has, `None` at
/// the first that does not (then [`walk`] names the paths it costs).
pub(super) fn all_trees_intact(repo: &Indexed, snapshots: &[(Id, Snapshot)]) -> Option<u64> {
    let index = repo.index();
    let mut seen = HashSet::new();
    let roots = snapshots.iter().map(|(_, snapshot)| snapshot.tree);
    let mut ids = Vec::new();
    each_tree(repo, roots, &mut seen, |id, tree| {
        // Every list blob and chunk the tree's files name, looked up in parallel (a lookup is a
        // read of the sorted copy; a tree names thousands).
        ids.clear();
        for node in &tree.nodes {
            if let Content::File { chunks } = &node.content {
                ids.extend(chunks.lists().iter().copied());
                ids.extend(repo.chunk_list(chunks).map_err(|_| crate::error::Error::MissingBlob(*id))?.iter().copied());
            }
        }
        match ids.par_iter().with_min_len(256).all(|blob| index.contains(blob)) {
            true => Ok(()),
            false => Err(crate::error::Error::MissingBlob(*id)),
        }
    })
    .ok()?;
    Some(seen.len() as u64)
}

/// What [`walk`] found: every bad blob (those it was given and trees that would not decode), the
/// blobs snapshots need that the index lacks, the paths they cost, and how many trees it read.
pub(super) struct Walked {
    pub bad: HashMap<Id, String>,
    pub unindexed: HashSet<Id>,
    pub affected: Vec<Affected>,
    pub trees: u64,
}

/// Walks snapshot trees, naming every path that needs a bad or missing blob. Subtrees found clean
/// once are not walked again (snapshots share most of their trees). The walk keeps its own stack
/// of directories, so a crafted tree a hundred thousand levels deep costs memory, not the
/// process's stack.
struct Walker<'a> {
    repo: &'a Indexed<'a>,
    bad: HashMap<Id, String>,
    clean: HashSet<Id>,
    unindexed: HashSet<Id>,
    affected: Vec<Affected>,
    trees: u64,
}

impl Walker<'_> {
    /// Walks the snapshot whose root tree is `root` ([`depth_first`]).
    fn snapshot(&mut self, snapshot: &str, root: &Id) {
        if self.clean.contains(root) {
            return;
        }
        let mut walk = SnapshotWalk { walker: self, snapshot, damaged: HashMap::new(), opened: None };
        // The visitor never fails: what it finds is recorded, and the walk goes on.
        let _ = depth_first(root, Vec::new(), &mut walk);
    }

    /// Reads the tree `id` to walk it, or says why it cannot be.
    fn open(&mut self, id: &Id) -> std::result::Result<Tree, String> {
        if let Some(reason) = self.bad.get(id) {
            return Err(reason.clone());
        }
        if !self.repo.index().contains(id) {
            self.unindexed.insert(*id);
            return Err(format!("tree {} is not in the index", id.short()));
        }
        match self.repo.read_tree(id) {
            Ok(tree) => {
                self.trees += 1;
                Ok(tree)
            }
            Err(e) => {
                self.bad.insert(*id, e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Why a file's list blobs cannot be read, if one is bad or missing from the index (each
    /// missing one is counted).
    fn list_problem(&mut self, lists: &[Id]) -> Option<String> {
        let mut problem = None;
        for list in lists {
            let found = match self.bad.get(list) {
                Some(reason) => Some(format!("chunk list {}: {reason}", list.short())),
                None if !self.repo.index().contains(list) => {
                    self.unindexed.insert(*list);
                    Some(format!("chunk list {} is not in the index", list.short()))
                }
                None => None,
            };
            problem = problem.or(found);
        }
        problem
    }

    /// Records that nothing below the directory at `path` can be restored.
    fn lost(&mut self, snapshot: &str, path: String, reason: String) {
        let reason = format!("directory listing unreadable, nothing below can be restored: {reason}");
        self.affected.push(Affected { snapshot: snapshot.to_string(), path, reason });
    }
}

/// The walk of one snapshot. A directory's state says whether all in it so far was intact; a
/// subtree found clean once is not walked again (snapshots share most of their trees). A damaged
/// subtree met again in the same snapshot (snapshots of real trees rarely repeat one; a crafted
/// one can name it twice per level, two to the power of its depth paths) is reported once more as
/// a whole, not walked.
struct SnapshotWalk<'w, 'a> {
    walker: &'w mut Walker<'a>,
    snapshot: &'w str,
    /// Damaged subtrees walked in this snapshot, with the path they were walked at.
    damaged: HashMap<Id, String>,
    /// The tree of the directory [`Visitor::entry`] has just decided to walk.
    opened: Option<Tree>,
}

impl Visitor for SnapshotWalk<'_, '_> {
    type State = bool;

    fn open(&mut self, id: &Id, _: &[u8]) -> Result<Option<(Tree, bool)>> {
        if let Some(tree) = self.opened.take() {
            return Ok(Some((tree, true)));
        }
        match self.walker.open(id) {
            Ok(tree) => Ok(Some((tree, true))),
            Err(reason) => {
                self.walker.lost(self.snapshot, "/".into(), reason);
                Ok(None)
            }
        }
    }

    fn entry(&mut self, dir: &mut Open<bool>, at: usize, path: &[u8]) -> Result<Step> {
        let path = crate::names::shown(path);
        let walker = &mut *self.walker;
        match &dir.tree.nodes[at].content {
            Content::Dir { subtree } if walker.clean.contains(subtree) => {}
            Content::Dir { subtree } if self.damaged.contains_key(subtree) => {
                dir.state = false;
                let reason = format!("the same damaged directory as {}", self.damaged[subtree]);
                walker.affected.push(Affected { snapshot: self.snapshot.to_string(), path: path.to_string(), reason });
            }
            Content::Dir { subtree } => match walker.open(subtree) {
                Ok(tree) => {
                    self.opened = Some(tree);
                    return Ok(Step::Descend);
                }
                Err(reason) => {
                    dir.state = false;
                    self.damaged.insert(*subtree, path.to_string());
                    walker.lost(self.snapshot, path.to_string(), reason);
                }
            },
            Content::File { chunks } => {
                // The first problem names the file's; every chunk the index lacks is counted. A
                // list blob is checked first: without it, its chunks cannot be named.
                let mut problem = walker.list_problem(chunks.lists());
                let expanded = match problem {
                    Some(_) => Default::default(),
                    None => walker.repo.chunk_list(chunks).unwrap_or_else(|e| {
                        problem = Some(format!("chunk list: {e}"));
                        Default::default()
                    }),
                };
                for chunk in expanded.iter() {
                    let found = match walker.bad.get(chunk) {
                        Some(reason) => Some(format!("chunk {}: {reason}", chunk.short())),
                        None if !walker.repo.index().contains(chunk) => {
                            walker.unindexed.insert(*chunk);
                            Some(format!("chunk {} is not in the index", chunk.short()))
                        }
                        None => None,
                    };
                    problem = problem.or(found);
                }
                if let Some(reason) = problem {
                    dir.state = false;
                    walker.affected.push(Affected {
                        snapshot: self.snapshot.to_string(),
                        path: path.to_string(),
                        reason,
                    });
                }
            }
            _ => {}
        }
        Ok(Step::Skip)
    }

    fn close(&mut self, done: Open<bool>, parent: Option<&mut Open<bool>>, path: &[u8]) -> Result<()> {
        if done.state {
            self.walker.clean.insert(done.id);
        }
        if let Some(parent) = parent {
            if !done.state {
                self.damaged.insert(done.id, crate::names::shown(path).into_owned());
            }
            parent.state &= done.state;
        }
        Ok(())
    }
}
