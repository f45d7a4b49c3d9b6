//! What a restore would change in an existing target: the one walk that both `--dry-run` and
//! the real run use, so the list printed is the list done.
//!
//! The walk goes through the target and the snapshot side by side, one directory at a time,
//! every entry reached through its parent's descriptor without following a symlink
//! ([`crate::fs_at`]). For each name it decides: *created* (only the snapshot has it),
//! *replaced* (both have it and they differ: type, content, mode, mtime, owner as root, a
//! symlink's target, or which other names a file is hard-linked to), *deleted* (only the target
//! has it, under a directory the snapshot restores, with `--delete`; or it stands below an entry
//! replaced by another type), *kept* (the same without `--delete`), or unchanged. Outside the
//! `--include` paths nothing is touched and nothing listed.
//!
//! Given a staging directory, the same walk also builds what the new tree takes over from the
//! old one: kept and untouched entries are hard-linked (files) or recreated with their
//! metadata (directories, symlinks, special files) there, and directories the snapshot
//! restores into are made, so that the core restore into the staging directory then yields the
//! whole new tree.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;

use serde::Serialize;

use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{ChunkList, Content, Metadata, Node, Xattr};
use crate::fs_at::{is_dir, set_metadata_fd, stat_fd, Dir};
use crate::id::Id;
use crate::repository::Indexed;
use crate::xattr::{proc_path, read, unsupported, write, Target};

/// Directory levels the walk descends at most: it keeps one descriptor open per level. Deeper
/// targets are refused before anything changes.
pub const MAX_LEVELS: usize = 400;

/// What a restore restores, from the target's root.
#[derive(Debug)]
pub(crate) enum Want {
    /// The whole listing `Id` (the snapshot's root tree).
    Tree(Id),
    /// Only these entries (`--include`), each by its path components; none inside another.
    Includes(Vec<(Vec<Vec<u8>>, Node)>),
}

/// What the snapshot says about one entry of a directory being walked.
#[derive(Debug)]
enum Child {
    /// This entry, as the snapshot has it.
    Node(Node),
    /// A directory on the way to an include: only the includes below it are restored, its other
    /// entries are left as they are. Kept flat (computed from [`Want::Includes`] per level) so
    /// that an include of any depth costs no nesting.
    Partial,
}

/// The changes, each a path relative to the target (`a/b`, bytes that are not UTF-8 shown as
/// U+FFFD), in walk order: a directory before what is below it.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Plan {
    pub created: Vec<String>,
    pub replaced: Vec<String>,
    pub deleted: Vec<String>,
    /// Entries the snapshot does not have, left in place because `--delete` was not given (the
    /// topmost of each such subtree).
    pub kept: Vec<String>,
    /// Entries of the snapshot that the target already holds exactly.
    pub unchanged: u64,
}

impl Plan {
    /// Whether anything that exists would change or go: what makes a safety snapshot needed.
    pub fn touches_existing(&self) -> bool {
        !self.replaced.is_empty() || !self.deleted.is_empty()
    }
}

/// How closely an entry found in the target is compared with the snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compare {
    /// Type and metadata, and the content of files that look the same (read and cut).
    Content,
    /// Type and metadata only: for the check of a tree just restored, whose content was
    /// verified chunk by chunk as it was written.
    Metadata,
    /// Not at all: only what exists on one side (building the staging directory).
    Names,
}

/// Which names of a directory are restored.
enum Scope {
    /// Every name: the directory is the snapshot's.
    All(BTreeMap<Vec<u8>, Child>),
    /// Only these names; the others are left alone.
    Only(BTreeMap<Vec<u8>, Child>),
}

/// Work left in the walk of the target: the entries of one directory still to decide, last
/// first, and the directory's path length (in components).
struct Task {
    depth: usize,
    work: Work,
}

enum Work {
    /// The names of a directory of the target (`old`, if it exists) and of the snapshot
    /// (`wants`), with its staged copy; `all`: the directory is the snapshot's.
    Listing { old: Option<Dir>, staging: Option<Dir>, wants: BTreeMap<Vec<u8>, Child>, all: bool, names: Vec<Vec<u8>> },
    /// Entries of the snapshot below an entry created or replaced: created too.
    Created { below: Vec<(Vec<u8>, Child)> },
    /// Entries of the target directory `dir` that go.
    Deleted { dir: Dir, names: Vec<Vec<u8>> },
}

pub(crate) struct Walker<'a> {
    pub repo: &'a Indexed<'a>,
    /// The target, for messages.
    pub target: &'a std::path::Path,
    pub want: &'a Want,
    pub compare: Compare,
    pub delete: bool,
    pub chunker: Chunker,
    pub as_root: bool,
    pub plan: Plan,
    /// Directories of the target kept around `--include` paths, as components with the
    /// metadata and extended attributes they had: restored onto their staged copies once the
    /// core restore has written into them.
    pub partial_dirs: Vec<(Vec<Vec<u8>>, libc::stat, Vec<Xattr>)>,
    /// Files found the same as the snapshot's where either side has more than one name. Once
    /// the walk ends, those linked otherwise than in the snapshot are replaced.
    pub linked: Vec<Linked>,
}

/// A file of the target found the same as the snapshot's, with more than one name on a side.
pub(crate) struct Linked {
    path: Vec<Vec<u8>>,
    /// The target's (device, inode).
    file: (u64, u64),
    /// The snapshot's hard-link group: its (device, inode) when it was snapshotted, if it had
    /// more than one name.
    group: Option<(u64, u64)>,
}

/// The [`Want`] of a restore of `includes` (all of the snapshot when empty or when one is the
/// root). An include inside another one is covered by it.
pub(crate) fn want_of(repo: &Indexed, snapshot: &Snapshot, includes: &[Vec<u8>], short: &str) -> Result<Want> {
    let tree = &snapshot.tree;
    let mut found = Vec::new();
    for include in includes {
        match super::super::locate(repo, snapshot, include, short)? {
            super::super::Located { inside, node: Some(node), .. } => found.push((split(&inside), node)),
            super::super::Located { node: None, .. } => return Ok(Want::Tree(*tree)),
        }
    }
    if found.is_empty() {
        return Ok(Want::Tree(*tree));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept: Vec<(Vec<Vec<u8>>, Node)> = Vec::new();
    for (parts, node) in found {
        if !kept.last().is_some_and(|(outer, _)| parts.starts_with(outer)) {
            kept.push((parts, node));
        }
    }
    Ok(Want::Includes(kept))
}

/// An include path's components, without `/`, `.` and empty parts (as restore splits them).
pub(super) fn split(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".").map(<[u8]>::to_vec).collect()
}

fn shown(path: &[Vec<u8>]) -> String {
    crate::names::shown(&path.join(&b'/')).into_owned()
}

fn too_deep(path: &[Vec<u8>]) -> Error {
    Error::Refused(format!(
        "{} lies more than {MAX_LEVELS} directory levels deep in the target: too deep for an in-place restore; \
         restore into an empty directory, or use --overwrite",
        shown(path)
    ))
}

/// The kind bits of a mode.
fn kind(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// The kind bits the snapshot's entry would have (`None` for a socket, which restore skips).
fn node_kind(content: &Content) -> Option<u32> {
    Some(match content {
        Content::File { .. } => libc::S_IFREG,
        Content::Dir { .. } => libc::S_IFDIR,
        Content::Symlink { .. } => libc::S_IFLNK,
        Content::Fifo => libc::S_IFIFO,
        Content::CharDevice { .. } => libc::S_IFCHR,
        Content::BlockDevice { .. } => libc::S_IFBLK,
        Content::Socket => return None,
    })
}

impl Walker<'_> {
    /// Walks the target directory `old` (`None`: it does not exist) against the want, filling
    /// [`Walker::plan`]; with `staging`, also builds the staging directory (see the module doc).
    /// A loop over a stack of [`Task`]s, a directory's whole content before its next sibling:
    /// depth costs one task (and its descriptors) per level, never the process's stack.
    pub(crate) fn walk(&mut self, old: Option<&Dir>, staging: Option<&Dir>) -> Result<()> {
        let scope = match self.want {
            Want::Tree(id) => Scope::All(self.tree(id)?),
            Want::Includes(_) => Scope::Only(self.partial(&[])),
        };
        let mut path = Vec::new();
        let own = |dir: Option<&Dir>| dir.map(Dir::try_clone).transpose().map_err(|e| self.io(&[], e));
        let (old_root, staging_root) = (own(old)?, own(staging)?);
        let mut stack: Vec<Task> = self.listing(old_root, staging_root, &path, scope)?.into_iter().collect();
        while let Some(task) = stack.last_mut() {
            match self.advance(task, &mut path)? {
                Some(more) => stack.extend(more),
                None => _ = stack.pop(),
            }
        }
        self.replace_links_that_differ();
        Ok(())
    }

    /// Lists as replaced the files found the same whose hard links differ from the snapshot's:
    /// names of one file in the target that are not all of one group in the snapshot, and names
    /// of one group in the snapshot that are not all one file in the target. (One name of a file
    /// that has others outside the restore is no difference: an in-place restore's `.bak` holds
    /// the other name of every file it carried over.)
    fn replace_links_that_differ(&mut self) {
        let mut by_file: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        let mut by_group: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        for (n, found) in self.linked.iter().enumerate() {
            by_file.entry(found.file).or_default().push(n);
            if let Some(group) = found.group {
                by_group.entry(group).or_default().push(n);
            }
        }
        let linked = &self.linked;
        let one_group = |names: &[usize]| {
            names.iter().all(|&n| linked[n].group.is_some() && linked[n].group == linked[names[0]].group)
        };
        let one_file = |names: &[usize]| names.iter().all(|&n| linked[n].file == linked[names[0]].file);
        let mut differ: Vec<usize> = (by_file.values())
            .filter(|names| names.len() > 1 && !one_group(names))
            .chain(by_group.values().filter(|names| !one_file(names)))
            .flatten()
            .copied()
            .collect();
        differ.sort_unstable();
        differ.dedup();
        for n in differ {
            self.plan.unchanged -= 1;
            self.plan.replaced.push(shown(&self.linked[n].path));
        }
    }

    /// Decides the next entry of `task`, at `path`: the tasks its content needs (to run before
    /// the task's next entry), or `None` once the task has no entry left.
    fn advance(&mut self, task: &mut Task, path: &mut Vec<Vec<u8>>) -> Result<Option<Vec<Task>>> {
        path.truncate(task.depth);
        Ok(Some(match &mut task.work {
            Work::Listing { old, staging, wants, all, names } => {
                let Some(name) = names.pop() else { return Ok(None) };
                path.push(name);
                let name = path.last().expect("just pushed").clone();
                let found = match old {
                    Some(dir) => match dir.stat(&name) {
                        Ok(st) => Some(st),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => return Err(self.io(path, e)),
                    },
                    None => None,
                };
                let (old, staging) = (old.as_ref(), staging.as_ref());
                match (found, wants.get(&name)) {
                    (None, None) => Vec::new(),
                    (None, Some(want)) => self.created(path, want)?,
                    (Some(st), None) if *all && self.delete => self.deleted(old.expect("found in it"), path, &st)?,
                    (Some(st), None) => {
                        if *all {
                            self.plan.kept.push(shown(path));
                        }
                        self.keep(old.expect("found in it"), staging, path, &st)?;
                        Vec::new()
                    }
                    (Some(st), Some(want)) => self.both(old.expect("found in it"), staging, path, &st, want)?,
                }
            }
            Work::Created { below } => {
                let Some((name, want)) = below.pop() else { return Ok(None) };
                path.push(name);
                self.created(path, &want)?
            }
            Work::Deleted { dir, names } => {
                let Some(name) = names.pop() else { return Ok(None) };
                path.push(name);
                let name = path.last().expect("just pushed");
                match dir.stat(name) {
                    Ok(st) => self.deleted(dir, path, &st)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(self.io(path, e)),
                }
            }
        }))
    }

    /// The entries restored in the directory at `path` on the way to includes.
    fn partial(&self, path: &[Vec<u8>]) -> BTreeMap<Vec<u8>, Child> {
        let mut map = BTreeMap::new();
        let Want::Includes(includes) = self.want else { return map };
        for (parts, node) in includes.iter().filter(|(parts, _)| parts.len() > path.len() && parts.starts_with(path)) {
            let name = parts[path.len()].clone();
            if parts.len() == path.len() + 1 {
                map.insert(name, Child::Node(node.clone()));
            } else {
                map.entry(name).or_insert(Child::Partial);
            }
        }
        map
    }

    /// Beyond [`MAX_LEVELS`]: an error when building the staging directory; otherwise the entry
    /// at the limit counts as replaced (erring toward a safety snapshot) and is not descended.
    fn beyond(&mut self, path: &[Vec<u8>]) -> Result<bool> {
        if path.len() <= MAX_LEVELS {
            return Ok(false);
        }
        if self.compare == Compare::Names {
            return Err(too_deep(path));
        }
        let at = shown(&path[..MAX_LEVELS]);
        if self.plan.replaced.last() != Some(&at) {
            self.plan.replaced.push(at);
        }
        Ok(true)
    }

    /// The entries of the stored directory `id`, as wants; sockets left out (never restored).
    fn tree(&self, id: &Id) -> Result<BTreeMap<Vec<u8>, Child>> {
        let tree = self.repo.read_tree(id)?;
        Ok(tree
            .nodes
            .into_iter()
            .filter(|n| node_kind(&n.content).is_some())
            .map(|n| (n.name.clone(), Child::Node(n)))
            .collect())
    }

    fn children(&self, node: &Node) -> Result<BTreeMap<Vec<u8>, Child>> {
        match &node.content {
            Content::Dir { subtree } => self.tree(subtree),
            _ => Ok(BTreeMap::new()),
        }
    }

    /// The task of one directory: `old` in the target (if any), its staged copy, at `path`, with
    /// its scope; none beyond [`MAX_LEVELS`].
    fn listing(
        &mut self,
        old: Option<Dir>,
        staging: Option<Dir>,
        path: &[Vec<u8>],
        scope: Scope,
    ) -> Result<Option<Task>> {
        if self.beyond(path)? {
            return Ok(None);
        }
        let (wants, all) = match scope {
            Scope::All(map) => (map, true),
            Scope::Only(map) => (map, false),
        };
        let mut names: Vec<Vec<u8>> = match &old {
            Some(dir) => dir.names().map_err(|e| self.io(path, e))?,
            None => Vec::new(),
        };
        names.extend(wants.keys().cloned());
        names.sort();
        names.dedup();
        names.reverse();
        Ok(Some(Task { depth: path.len(), work: Work::Listing { old, staging, wants, all, names } }))
    }

    fn io(&self, path: &[Vec<u8>], e: std::io::Error) -> Error {
        Error::io(self.target.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path.join(&b'/'))), e)
    }

    /// `path` and everything below it in the snapshot are created.
    fn created(&mut self, path: &[Vec<u8>], want: &Child) -> Result<Vec<Task>> {
        if self.beyond(path)? {
            return Ok(Vec::new());
        }
        self.plan.created.push(shown(path));
        self.created_below(path, want)
    }

    /// `path` (in `dir`, found as `st`) and everything below it go.
    fn deleted(&mut self, dir: &Dir, path: &[Vec<u8>], st: &libc::stat) -> Result<Vec<Task>> {
        if self.beyond(path)? {
            return Ok(Vec::new());
        }
        self.plan.deleted.push(shown(path));
        if !is_dir(st) {
            return Ok(Vec::new());
        }
        let name = path.last().expect("a name").clone();
        Ok(vec![self.all_deleted(dir, &name, path)?])
    }

    /// The task in which every entry below the directory `name` in `dir` (at `path`) goes, in
    /// name order.
    fn all_deleted(&mut self, dir: &Dir, name: &[u8], path: &[Vec<u8>]) -> Result<Task> {
        let inner = dir.open_dir(name).map_err(|e| self.io(path, e))?;
        let mut names = inner.names().map_err(|e| self.io(path, e))?;
        names.sort();
        names.reverse();
        Ok(Task { depth: path.len(), work: Work::Deleted { dir: inner, names } })
    }

    /// An entry of the target that stays: carried into the staging directory, if building one.
    fn keep(&mut self, dir: &Dir, staging: Option<&Dir>, path: &[Vec<u8>], st: &libc::stat) -> Result<()> {
        let Some(staging) = staging else { return Ok(()) };
        let name = path.last().expect("a name").clone();
        let carried = carry(dir, staging, &name, st, self.as_root, path.len());
        carried.map_err(|e| match e {
            Carry::Deep => too_deep(path),
            Carry::Io(e) => self.io(path, e),
        })
    }

    /// An entry both sides have.
    fn both(
        &mut self,
        dir: &Dir,
        staging: Option<&Dir>,
        path: &[Vec<u8>],
        st: &libc::stat,
        want: &Child,
    ) -> Result<Vec<Task>> {
        let name = path.last().expect("a name").clone();
        let node = match want {
            Child::Node(node) => node,
            Child::Partial if !is_dir(st) => {
                // A parent of an include that is not a directory in the target: restore
                // replaces it by one.
                self.plan.replaced.push(shown(path));
                return self.created_below(path, want);
            }
            Child::Partial => {
                let inner = dir.open_dir(&name).map_err(|e| self.io(path, e))?;
                let staged = self.staged_dir(staging, &name, path)?;
                if staged.is_some() {
                    let xattrs = read(Target::Fd(inner.raw_fd())).map_err(|e| self.io(path, e))?;
                    self.partial_dirs.push((path.to_vec(), *st, xattrs));
                }
                let only = self.partial(path);
                return Ok(self.listing(Some(inner), staged, path, Scope::Only(only))?.into_iter().collect());
            }
        };
        let want_kind = node_kind(&node.content).expect("sockets are left out");
        if kind(st.st_mode) != want_kind {
            self.plan.replaced.push(shown(path));
            // What was there goes before what replaces it is listed: last on the stack.
            let deleted = match is_dir(st) {
                true => Some(self.all_deleted(dir, &name, path)?),
                false => None,
            };
            let mut tasks = self.created_below(path, want)?;
            tasks.extend(deleted);
            return Ok(tasks);
        }
        if let Content::Dir { subtree } = &node.content {
            if self.compare != Compare::Names
                && (self.meta_differs(st, &node.meta, false) || xattrs_differ(dir, &name, &node.xattrs))
            {
                self.plan.replaced.push(shown(path));
            }
            let inner = dir.open_dir(&name).map_err(|e| self.io(path, e))?;
            let staged = self.staged_dir(staging, &name, path)?;
            let all = self.tree(subtree)?;
            return Ok(self.listing(Some(inner), staged, path, Scope::All(all))?.into_iter().collect());
        }
        if self.compare == Compare::Names {
            return Ok(Vec::new());
        }
        let same = match &node.content {
            Content::File { chunks } => !self.meta_differs(st, &node.meta, true) && self.same_file(dir, &name, chunks),
            Content::Symlink { target } => dir.read_link(&name).is_ok_and(|found| &found == target),
            Content::CharDevice { rdev } | Content::BlockDevice { rdev } => {
                st.st_rdev == *rdev && !self.meta_differs(st, &node.meta, false)
            }
            _ => !self.meta_differs(st, &node.meta, false),
        };
        if same && !xattrs_differ(dir, &name, &node.xattrs) {
            self.plan.unchanged += 1;
            if matches!(node.content, Content::File { .. }) && (st.st_nlink > 1 || node.meta.nlink > 1) {
                let group = (node.meta.nlink > 1).then_some((node.meta.dev, node.meta.ino));
                self.linked.push(Linked { path: path.to_vec(), file: (st.st_dev, st.st_ino), group });
            }
        } else {
            self.plan.replaced.push(shown(path));
        }
        Ok(Vec::new())
    }

    /// What the snapshot has below `path`, all created (the entry itself is already listed).
    fn created_below(&mut self, path: &[Vec<u8>], want: &Child) -> Result<Vec<Task>> {
        let below = match want {
            Child::Node(node) => self.children(node)?,
            Child::Partial => self.partial(path),
        };
        let below: Vec<(Vec<u8>, Child)> = below.into_iter().rev().collect();
        Ok(vec![Task { depth: path.len(), work: Work::Created { below } }])
    }

    /// The staged directory `name`, made (mode 0700) if building one.
    fn staged_dir(&self, staging: Option<&Dir>, name: &[u8], path: &[Vec<u8>]) -> Result<Option<Dir>> {
        staging.map(|staging| staging.make_dir(name, 0o700).map_err(|e| self.io(path, e))).transpose()
    }

    /// Whether the entry `st` differs from the snapshot's `meta` in what restore sets: mode,
    /// mtime (not for directories, whose mtime every change below touches), owner as root, and
    /// the size of files.
    fn meta_differs(&self, st: &libc::stat, meta: &Metadata, file: bool) -> bool {
        let mode = st.st_mode & 0o7777 != meta.mode & 0o7777;
        let owner = self.as_root && (st.st_uid, st.st_gid) != (meta.uid, meta.gid);
        let mtime = !is_dir(st) && (st.st_mtime, st.st_mtime_nsec as u32) != (meta.mtime_sec, meta.mtime_nsec);
        let size = file && st.st_size as u64 != meta.size;
        mode || owner || mtime || size
    }

    /// Whether the regular file `name` holds exactly these chunks (always, when comparing only
    /// metadata: restore verified the content as it wrote it).
    /// A chain of list blobs that cannot be read makes the file differ: restoring it then reports
    /// why.
    fn same_file(&self, dir: &Dir, name: &[u8], chunks: &ChunkList) -> bool {
        if self.compare == Compare::Metadata {
            return true;
        }
        let Ok(chunks) = self.repo.chunk_list(chunks) else { return false };
        let Ok(Some((file, st))) = dir.open_regular(name) else { return false };
        crate::source::same_content(&self.chunker, &file, st.st_size as u64, &chunks).unwrap_or(false)
    }
}

enum Carry {
    Deep,
    Io(std::io::Error),
}

impl From<std::io::Error> for Carry {
    fn from(e: std::io::Error) -> Carry {
        Carry::Io(e)
    }
}

/// Carries the entry `name` of `from` (found as `st`) into `to`: a file by a hard link (the
/// same inode, so the old tree in `.bak` and the new one share it), anything else recreated
/// with its owner (as root), mode and mtime, a directory with everything below it (a loop over
/// the directories open, whose metadata is set once their content is carried). `depth`: the
/// entry's level; nothing is carried beyond [`MAX_LEVELS`].
fn carry(from: &Dir, to: &Dir, name: &[u8], st: &libc::stat, as_root: bool, depth: usize) -> Result<(), Carry> {
    if depth > MAX_LEVELS {
        return Err(Carry::Deep);
    }
    // Directories being carried: the old one, its copy, the names left in it (last first), and
    // the old one's stat.
    let mut open: Vec<(Dir, Dir, Vec<Vec<u8>>, libc::stat)> = Vec::new();
    open.extend(carry_one(from, to, name, st, as_root)?);
    loop {
        let level = depth + open.len();
        let Some((inner, made, names, _)) = open.last_mut() else { break };
        let Some(child) = names.pop() else {
            let (inner, made, _, st) = open.pop().expect("there is a top");
            let owner = as_root.then_some((st.st_uid, st.st_gid));
            copy_xattrs(Target::Fd(inner.raw_fd()), Target::Fd(made.raw_fd()))?;
            set_metadata_fd(made.as_fd(), owner, st.st_mode & 0o7777, (st.st_mtime, st.st_mtime_nsec as u32))?;
            continue;
        };
        if level > MAX_LEVELS {
            return Err(Carry::Deep);
        }
        let next = match inner.stat(&child) {
            Ok(st) => carry_one(inner, made, &child, &st, as_root)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        open.extend(next);
    }
    Ok(())
}

/// [`carry`] of one entry; a directory is only made (mode 0700), and returned open with its
/// copy, its names and its stat, for its content.
#[allow(clippy::type_complexity)]
fn carry_one(
    from: &Dir,
    to: &Dir,
    name: &[u8],
    st: &libc::stat,
    as_root: bool,
) -> Result<Option<(Dir, Dir, Vec<Vec<u8>>, libc::stat)>, Carry> {
    let owner = as_root.then_some((st.st_uid, st.st_gid));
    let mtime = (st.st_mtime, st.st_mtime_nsec as u32);
    match kind(st.st_mode) {
        libc::S_IFREG => to.hard_link(name, from, name)?,
        libc::S_IFLNK => {
            to.symlink(&from.read_link(name)?, name)?;
            to.set_metadata(name, owner, None, mtime)?;
            copy_xattrs(Target::Path(&proc_path(from.raw_fd(), name)?), Target::Path(&proc_path(to.raw_fd(), name)?))?;
        }
        libc::S_IFDIR => {
            let (inner, made) = (from.open_dir(name)?, to.make_dir(name, 0o700)?);
            let mut names = inner.names()?;
            names.reverse();
            return Ok(Some((inner, made, names, *st)));
        }
        other => {
            to.mknod(name, other, st.st_rdev)?;
            to.set_metadata(name, owner, None, mtime)?;
            copy_xattrs(Target::Path(&proc_path(from.raw_fd(), name)?), Target::Path(&proc_path(to.raw_fd(), name)?))?;
            to.set_metadata(name, None, Some(st.st_mode & 0o7777), mtime)?;
        }
    }
    Ok(None)
}

/// Whether the entry `name` of `dir` lacks an attribute of `wanted` that a restore here could
/// set ([`crate::xattr::differ`]).
fn xattrs_differ(dir: &Dir, name: &[u8], wanted: &[Xattr]) -> bool {
    crate::xattr::differ(dir.raw_fd(), name, wanted)
}

/// Copies the extended attributes of a carried entry (a file carries its own: it is the same
/// inode). Those that cannot be set here, for who restores or where, are left behind, as
/// restore leaves them ([`super::super::attributes`]).
fn copy_xattrs(from: Target<'_>, to: Target<'_>) -> std::io::Result<()> {
    put_xattrs(to, &read(from)?)
}

/// Sets `xattrs` on `to`, but those that cannot be set here ([`copy_xattrs`]).
fn put_xattrs(to: Target<'_>, xattrs: &[Xattr]) -> std::io::Result<()> {
    let refused = |e: &std::io::Error| unsupported(e) || matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES));
    match write(to, xattrs).into_iter().find(|(_, e)| !refused(e)) {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

/// Gives the directory `dir` the extended attributes (ACLs included) `xattrs`, and the owner
/// (as root), mode and mtime `st` records: what a directory of the target that the snapshot
/// does not restore (the target itself, the parents of an `--include`) had, as a kept directory
/// carries them ([`carry`]).
pub(crate) fn copy_metadata(dir: &Dir, st: &libc::stat, xattrs: &[Xattr], as_root: bool) -> std::io::Result<()> {
    put_xattrs(Target::Fd(dir.raw_fd()), xattrs)?;
    let now = stat_fd(dir.as_fd())?;
    let owner = (as_root && (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid)).then_some((st.st_uid, st.st_gid));
    set_metadata_fd(dir.as_fd(), owner, st.st_mode & 0o7777, (st.st_mtime, st.st_mtime_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_paths_split_as_restore_splits_them() {
        assert_eq!(split(b"/a//./b/"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(split(b"/").is_empty());
        assert_eq!(shown(&split(b"a/b")), "a/b");
    }
}
