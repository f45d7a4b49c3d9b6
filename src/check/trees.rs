//! Walking snapshot trees for `cairn check`: a fast pass that reads every tree once, level by
//! level, and, when something is damaged or missing, a walk that names every path the damage
//! costs. The walk keeps its own stack of directory names, so depth costs memory in proportion to
//! it and never the process's stack (store-format/tree.md, "Depth").

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::Affected;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Tree};
use crate::id::Id;
use crate::repository::index::Index;
use crate::repository::Repository;

/// Walks every snapshot's trees, naming each path that needs a blob in `bad`, a tree that does not
/// decode, or a chunk the index lacks.
pub(super) fn walk(repo: &Repository, index: &Index, snapshots: &[(Id, Snapshot)], bad: HashMap<Id, String>) -> Walked {
    let mut walker =
        Walker { repo, index, bad, clean: HashSet::new(), unindexed: HashSet::new(), affected: Vec::new(), trees: 0 };
    for (id, snapshot) in snapshots {
        walker.snapshot(&id.short(), &snapshot.tree);
    }
    Walked { bad: walker.bad, unindexed: walker.unindexed, affected: walker.affected, trees: walker.trees }
}

/// Reads every tree the snapshots reach, each once and in parallel, level by level; returns how
/// many there are if every one decodes and names only chunks and trees the index has, `None` at
/// the first that does not (then [`walk`] names the paths it costs).
pub(super) fn all_trees_intact(repo: &Repository, index: &Index, snapshots: &[(Id, Snapshot)]) -> Option<u64> {
    let mut seen = HashSet::new();
    let mut level: Vec<Id> = snapshots.iter().map(|(_, snapshot)| snapshot.tree).collect();
    while !level.is_empty() {
        level.retain(|id| seen.insert(*id));
        let below: Vec<Vec<Id>> = level
            .par_iter()
            .map(|id| {
                let tree = repo.read_tree(index, id).ok()?;
                let mut subtrees = Vec::new();
                for node in &tree.nodes {
                    match &node.content {
                        Content::Dir { subtree } => subtrees.push(*subtree),
                        Content::File { chunks } if !chunks.iter().all(|chunk| index.contains(chunk)) => return None,
                        _ => {}
                    }
                }
                Some(subtrees)
            })
            .collect::<Option<_>>()?;
        level = below.into_iter().flatten().collect();
    }
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
    repo: &'a Repository,
    index: &'a Index,
    bad: HashMap<Id, String>,
    clean: HashSet<Id>,
    unindexed: HashSet<Id>,
    affected: Vec<Affected>,
    trees: u64,
}

/// A directory being walked: its name, its tree, the next node to look at, and whether all before
/// it was intact. Only names are kept: a path is joined from the stack when a problem needs one
/// (paths held per level would cost memory quadratic in the depth).
struct Open {
    id: Id,
    name: String,
    tree: Tree,
    next: usize,
    intact: bool,
}

/// The path of `name` in the directory on top of `stack` (the root's own name is empty).
fn path_of(stack: &[Open], name: &str) -> String {
    let mut path = String::new();
    for dir in stack.iter().skip(1) {
        path.push('/');
        path.push_str(&dir.name);
    }
    path.push('/');
    path.push_str(name);
    path
}

impl Walker<'_> {
    /// Walks the snapshot whose root tree is `root`. A damaged subtree met again in the same
    /// snapshot (snapshots of real trees rarely repeat one; a crafted one can name it twice per
    /// level, two to the power of its depth paths) is reported once more as a whole, not walked.
    fn snapshot(&mut self, snapshot: &str, root: &Id) {
        let mut stack: Vec<Open> = Vec::new();
        // Damaged subtrees walked in this snapshot, with the path they were walked at.
        let mut damaged: HashMap<Id, String> = HashMap::new();
        if self.clean.contains(root) {
            return;
        }
        match self.open(root) {
            Ok(tree) => stack.push(Open { id: *root, name: String::new(), tree, next: 0, intact: true }),
            Err(reason) => self.lost(snapshot, "/".into(), reason),
        }
        while let Some(dir) = stack.last_mut() {
            let Some(node) = dir.tree.nodes.get(dir.next) else {
                let done = stack.pop().expect("there is a top");
                if done.intact {
                    self.clean.insert(done.id);
                } else if !stack.is_empty() {
                    damaged.insert(done.id, path_of(&stack, &done.name));
                }
                if let Some(parent) = stack.last_mut() {
                    parent.intact &= done.intact;
                }
                continue;
            };
            dir.next += 1;
            let name = String::from_utf8_lossy(&node.name).into_owned();
            match &node.content {
                Content::Dir { subtree } if self.clean.contains(subtree) => {}
                Content::Dir { subtree } if damaged.contains_key(subtree) => {
                    dir.intact = false;
                    let reason = format!("the same damaged directory as {}", damaged[subtree]);
                    let path = path_of(&stack, &name);
                    self.affected.push(Affected { snapshot: snapshot.to_string(), path, reason });
                }
                Content::Dir { subtree } => {
                    let subtree = *subtree;
                    match self.open(&subtree) {
                        Ok(tree) => stack.push(Open { id: subtree, name, tree, next: 0, intact: true }),
                        Err(reason) => {
                            stack.last_mut().expect("the parent").intact = false;
                            let path = path_of(&stack, &name);
                            damaged.insert(subtree, path.clone());
                            self.lost(snapshot, path, reason);
                        }
                    }
                }
                Content::File { chunks } => {
                    // The first problem names the file's; every chunk the index lacks is counted.
                    let mut problem = None;
                    for chunk in chunks {
                        let found = match self.bad.get(chunk) {
                            Some(reason) => Some(format!("chunk {}: {reason}", chunk.short())),
                            None if !self.index.contains(chunk) => {
                                self.unindexed.insert(*chunk);
                                Some(format!("chunk {} is not in the index", chunk.short()))
                            }
                            None => None,
                        };
                        problem = problem.or(found);
                    }
                    if let Some(reason) = problem {
                        dir.intact = false;
                        let path = path_of(&stack, &name);
                        self.affected.push(Affected { snapshot: snapshot.to_string(), path, reason });
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads the tree `id` to walk it, or says why it cannot be.
    fn open(&mut self, id: &Id) -> std::result::Result<Tree, String> {
        if let Some(reason) = self.bad.get(id) {
            return Err(reason.clone());
        }
        if !self.index.contains(id) {
            self.unindexed.insert(*id);
            return Err(format!("tree {} is not in the index", id.short()));
        }
        match self.repo.read_tree(self.index, id) {
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

    /// Records that nothing below the directory at `path` can be restored.
    fn lost(&mut self, snapshot: &str, path: String, reason: String) {
        let reason = format!("directory listing unreadable, nothing below can be restored: {reason}");
        self.affected.push(Affected { snapshot: snapshot.to_string(), path, reason });
    }
}
