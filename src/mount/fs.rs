//! The FUSE file system ([`fuser::Filesystem`]): inodes, attributes, listings and reads over a
//! [`Store`]; every call that would change anything fails with `EROFS`.
//!
//! Inode numbers are worked out, not handed out: an entry's number is a hash of its parent's
//! number and its name, so a listing gives every entry the number a lookup of it gives, without
//! keeping anything for entries only listed. A file the snapshot recorded with several links
//! (same device, inode and content) gets one number per snapshot view instead, so hard links
//! show as one inode. Directories are never shared: the same snapshot under `snapshots/`,
//! `sources/` and `ids/` is three directory trees, as the kernel wants one path per directory.
//! An inode is kept while the kernel holds a lookup of it (`forget` drops it), so memory follows
//! what is in use, not what was ever listed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request};
use libc::c_int;

use super::catalog::Item;
use super::content::OpenFile;
use super::store::{Store, Warn};
use crate::format::tree::{Content, Metadata, Node};
use crate::id::Id;

const ROOT: u64 = fuser::FUSE_ROOT_ID;
const SNAPSHOTS: u64 = 2;
const SOURCES: u64 = 3;
const IDS: u64 = 4;
const TOP: [(u64, &[u8]); 3] = [(SNAPSHOTS, b"snapshots"), (SOURCES, b"sources"), (IDS, b"ids")];

/// How long the kernel may keep what it was told of the top directories, which change as
/// snapshots come and go.
const TOP_TTL: Duration = Duration::from_secs(1);
/// The same for what lies inside a snapshot, which never changes.
const TREE_TTL: Duration = Duration::from_secs(3600);

/// What an inode is.
#[derive(Debug, Clone)]
enum What {
    Root,
    Snapshots,
    Sources,
    Ids,
    /// `sources/<name>`.
    Source(Vec<u8>),
    /// A `latest` link: of `snapshots/` (`None`) or of a source's directory.
    Latest(Option<Vec<u8>>),
    /// A snapshot's root directory.
    Snapshot {
        tree: Id,
        time: (i64, u32),
    },
    /// An entry of a snapshot's tree, below the snapshot root inode `root`.
    Entry {
        root: u64,
        node: Node,
    },
}

struct Inode {
    parent: u64,
    name: Vec<u8>,
    what: What,
    /// Lookups the kernel holds.
    lookups: u64,
}

/// A directory's entries as `readdir` gives them: number, type and name.
type Listing = Vec<(u64, FileType, Vec<u8>)>;

pub(crate) struct Fs<'r> {
    store: Store<'r>,
    inodes: HashMap<u64, Inode>,
    files: HashMap<u64, OpenFile>,
    /// Open directory handles and their listings: handles of one directory of a snapshot share
    /// one listing (many readers of a huge directory hold it once), found in `listed`.
    dirs: HashMap<u64, (u64, Arc<Listing>)>,
    /// The listing of each snapshot directory that some handle holds, by inode.
    listed: HashMap<u64, Arc<Listing>>,
    next_handle: u64,
    /// The mounting user's ids and the mount's start: the top directories' owner and times.
    owner: (u32, u32),
    started: SystemTime,
    warn: Warn<'r>,
}

impl<'r> Fs<'r> {
    pub(crate) fn new(store: Store<'r>, warn: Warn<'r>) -> Fs<'r> {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode { parent: ROOT, name: Vec::new(), what: What::Root, lookups: 1 });
        for (ino, name) in TOP {
            let what = match ino {
                SNAPSHOTS => What::Snapshots,
                SOURCES => What::Sources,
                _ => What::Ids,
            };
            inodes.insert(ino, Inode { parent: ROOT, name: name.to_vec(), what, lookups: 1 });
        }
        // SAFETY: geteuid and getegid cannot fail.
        let owner = unsafe { (libc::geteuid(), libc::getegid()) };
        Fs {
            store,
            inodes,
            files: HashMap::new(),
            dirs: HashMap::new(),
            listed: HashMap::new(),
            next_handle: 1,
            owner,
            started: SystemTime::now(),
            warn,
        }
    }

    /// The mount-relative path of an inode, for messages.
    fn path(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(inode) = self.inodes.get(&ino) else { break };
            parts.push(String::from_utf8_lossy(&inode.name).into_owned());
            ino = inode.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Says what failed and gives the reader `EIO`.
    fn failed(&self, ino: u64, what: impl std::fmt::Display) -> c_int {
        (self.warn)(&format!("{}: {what}", self.path(ino)));
        libc::EIO
    }

    /// The entry `name` of the directory `parent`, if there is one.
    fn child(&mut self, parent: u64, name: &[u8]) -> Result<Option<What>, c_int> {
        let what = self.inodes.get(&parent).map(|inode| inode.what.clone()).ok_or(libc::ENOENT)?;
        let tree = match what {
            What::Root => {
                return Ok(TOP.iter().find(|(_, top)| *top == name).map(|(ino, _)| self.inodes[ino].what.clone()))
            }
            What::Snapshots | What::Sources | What::Ids | What::Source(_) => {
                let found = self.top_child(&what, name);
                if found.is_some() {
                    return Ok(found);
                }
                // Perhaps a snapshot taken since the list was read.
                self.store.refresh();
                return Ok(self.top_child(&what, name));
            }
            What::Snapshot { tree, .. } => tree,
            What::Entry { node: Node { content: Content::Dir { subtree }, .. }, .. } => subtree,
            What::Latest(_) | What::Entry { .. } => return Err(libc::ENOTDIR),
        };
        let tree = self.store.tree(&tree).map_err(|e| self.failed(parent, e))?;
        let root = self.root_of(parent);
        Ok(tree
            .nodes
            .binary_search_by(|node| node.name.as_slice().cmp(name))
            .ok()
            .map(|at| What::Entry { root, node: tree.nodes[at].clone() }))
    }

    /// The snapshot root inode above `ino` (itself, for one).
    fn root_of(&self, ino: u64) -> u64 {
        match self.inodes.get(&ino).map(|inode| &inode.what) {
            Some(What::Entry { root, .. }) => *root,
            _ => ino,
        }
    }

    /// The entry `name` of a top directory, by the snapshot list as last read.
    fn top_child(&self, what: &What, name: &[u8]) -> Option<What> {
        let catalog = &self.store.catalog;
        let item = match what {
            What::Snapshots => catalog.all.get(name)?,
            What::Ids => catalog.ids.get(name)?,
            What::Source(source) => catalog.sources.get(source)?.get(name)?,
            What::Sources => return catalog.sources.contains_key(name).then(|| What::Source(name.to_vec())),
            _ => return None,
        };
        Some(self.top_item(what, item))
    }

    fn top_item(&self, what: &What, item: &Item) -> What {
        match item {
            Item::Snapshot(at) => {
                let snapshot = &self.store.catalog.snapshots[*at].1;
                What::Snapshot { tree: snapshot.tree, time: (snapshot.time_sec, snapshot.time_nsec) }
            }
            Item::Latest(_) => What::Latest(match what {
                What::Source(source) => Some(source.clone()),
                _ => None,
            }),
        }
    }

    /// Every entry of the directory `ino`, `.` and `..` first; the top directories as the
    /// snapshot list says now (read again if it is old).
    fn listing(&mut self, ino: u64) -> Result<Listing, c_int> {
        let inode = self.inodes.get(&ino).ok_or(libc::ENOENT)?;
        let (what, parent) = (inode.what.clone(), inode.parent);
        let mut children: Vec<(Vec<u8>, What)> = Vec::new();
        match &what {
            What::Root => children.extend(TOP.iter().map(|(ino, name)| (name.to_vec(), self.inodes[ino].what.clone()))),
            What::Snapshots | What::Sources | What::Ids | What::Source(_) => {
                self.store.refresh();
                let catalog = &self.store.catalog;
                match &what {
                    What::Sources => {
                        children.extend(catalog.sources.keys().map(|name| (name.clone(), What::Source(name.clone()))))
                    }
                    _ => {
                        let listing = match &what {
                            What::Snapshots => Some(&catalog.all),
                            What::Ids => Some(&catalog.ids),
                            What::Source(source) => catalog.sources.get(source),
                            _ => None,
                        };
                        for (name, item) in listing.into_iter().flatten() {
                            children.push((name.clone(), self.top_item(&what, item)));
                        }
                    }
                }
            }
            What::Snapshot { tree, .. }
            | What::Entry { node: Node { content: Content::Dir { subtree: tree }, .. }, .. } => {
                let nodes = self.store.tree(tree).map_err(|e| self.failed(ino, e))?;
                let root = self.root_of(ino);
                children.extend(
                    nodes.nodes.iter().map(|node| (node.name.clone(), What::Entry { root, node: node.clone() })),
                );
            }
            What::Latest(_) | What::Entry { .. } => return Err(libc::ENOTDIR),
        }
        let mut out = vec![(ino, FileType::Directory, b".".to_vec()), (parent, FileType::Directory, b"..".to_vec())];
        out.extend(children.into_iter().map(|(name, what)| (number(ino, &name, &what), kind(&what), name)));
        Ok(out)
    }

    /// Records a lookup of `name` in `parent` and returns its inode number.
    fn remember(&mut self, parent: u64, name: &[u8], what: What) -> u64 {
        let mut ino = number(parent, name, &what);
        loop {
            match self.inodes.get_mut(&ino) {
                None => {
                    self.inodes.insert(ino, Inode { parent, name: name.to_vec(), what, lookups: 1 });
                    return ino;
                }
                // The same entry, or another link of the same file. A snapshot's name that now
                // means another snapshot (two in one second, one of them forgotten) is another
                // entry: its old number must never serve the new one's files.
                Some(inode)
                    if (inode.parent == parent && inode.name == name && same_snapshot(&inode.what, &what))
                        || is_linked(&what) =>
                {
                    inode.lookups += 1;
                    if !matches!(what, What::Entry { .. }) {
                        inode.what = what; // a top entry as the list says now
                    }
                    return ino;
                }
                // Two entries whose hashes collide (never seen): the next free number.
                Some(_) => ino = ino.wrapping_add(1).max(IDS + 1),
            }
        }
    }

    fn attr(&self, ino: u64, what: &What) -> FileAttr {
        let top_time = self.store.catalog.newest_time().map_or(self.started, |(sec, nsec)| time(sec, nsec));
        let (owner, group) = self.owner;
        let mut attr = FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: top_time,
            mtime: top_time,
            ctime: top_time,
            crtime: top_time,
            kind: kind(what),
            perm: 0o555,
            nlink: 2,
            uid: owner,
            gid: group,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        match what {
            What::Latest(_) => {
                attr.perm = 0o777;
                attr.nlink = 1;
                attr.size = self.latest_target(what).map_or(0, |target| target.len() as u64);
            }
            What::Snapshot { time: (sec, nsec), .. } => {
                let when = time(*sec, *nsec);
                (attr.atime, attr.mtime, attr.ctime, attr.crtime) = (when, when, when, when);
            }
            What::Entry { node, .. } => entry_attr(&mut attr, node),
            _ => {}
        }
        attr
    }

    /// Where a `latest` link points now.
    fn latest_target(&self, what: &What) -> Option<Vec<u8>> {
        let catalog = &self.store.catalog;
        let listing = match what {
            What::Latest(None) => &catalog.all,
            What::Latest(Some(source)) => catalog.sources.get(source)?,
            _ => return None,
        };
        match listing.get(&b"latest"[..])? {
            Item::Latest(target) => Some(target.clone()),
            _ => None,
        }
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }
}

/// An entry's attributes from what the snapshot recorded.
fn entry_attr(attr: &mut FileAttr, node: &Node) {
    let Metadata { mode, uid, gid, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, nlink, size, .. } = node.meta;
    attr.perm = (mode & 0o7777) as u16;
    (attr.uid, attr.gid) = (uid, gid);
    attr.mtime = time(mtime_sec, mtime_nsec);
    (attr.atime, attr.crtime) = (attr.mtime, attr.mtime);
    attr.ctime = time(ctime_sec, ctime_nsec);
    attr.nlink = match node.content {
        Content::Dir { .. } => 2,
        _ => nlink.clamp(1, u64::from(u32::MAX)) as u32,
    };
    attr.size = match &node.content {
        Content::File { .. } => size,
        Content::Symlink { target } => target.len() as u64,
        _ => 0,
    };
    attr.blocks = attr.size.div_ceil(512);
    if let Content::CharDevice { rdev } | Content::BlockDevice { rdev } = node.content {
        // The kernel's 32-bit encoding of a device number.
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        attr.rdev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
    }
}

/// A stored time as the [`SystemTime`] that fuser turns back into it. (fuser 0.15 sends a time
/// `d` before 1970 as `-d.secs` seconds and `d.nanos` nanoseconds; for that to be the stored
/// pair, `d` must be `-sec` seconds and `nsec` nanoseconds.) The earliest second is taken as the
/// one after it: fuser negates the seconds, which `i64::MIN` has no positive of, and a crafted
/// tree may hold any time.
fn time(sec: i64, nsec: u32) -> SystemTime {
    let nsec = nsec.min(999_999_999);
    match sec >= 0 {
        true => UNIX_EPOCH + Duration::new(sec as u64, nsec),
        false => UNIX_EPOCH - Duration::new(sec.max(i64::MIN + 1).unsigned_abs(), nsec),
    }
}

fn kind(what: &What) -> FileType {
    match what {
        What::Latest(_) => FileType::Symlink,
        What::Entry { node, .. } => match node.content {
            Content::File { .. } => FileType::RegularFile,
            Content::Dir { .. } => FileType::Directory,
            Content::Symlink { .. } => FileType::Symlink,
            Content::Fifo => FileType::NamedPipe,
            Content::Socket => FileType::Socket,
            Content::CharDevice { .. } => FileType::CharDevice,
            Content::BlockDevice { .. } => FileType::BlockDevice,
        },
        _ => FileType::Directory,
    }
}

/// Whether an entry is a file recorded with more than one link.
fn is_linked(what: &What) -> bool {
    matches!(what, What::Entry { node: Node { content: Content::File { .. }, meta, .. }, .. } if meta.nlink > 1)
}

/// The inode number of `name` in `parent`: a hash of the two, or for a file of several links, of
/// its snapshot view, device, inode and content. Never one of the fixed numbers.
/// Whether two top entries at one name are the same snapshot (true for what is no snapshot).
fn same_snapshot(a: &What, b: &What) -> bool {
    match (a, b) {
        (What::Snapshot { tree: t1, time: s1 }, What::Snapshot { tree: t2, time: s2 }) => t1 == t2 && s1 == s2,
        (What::Snapshot { .. }, _) | (_, What::Snapshot { .. }) => false,
        _ => true,
    }
}

fn number(parent: u64, name: &[u8], what: &What) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match what {
        What::Snapshot { tree, time } => (parent, name, tree, time).hash(&mut hasher),
        What::Entry { root, node: Node { meta, content: Content::File { chunks }, .. } } if is_linked(what) => {
            (b"link", root, meta.dev, meta.ino, meta.size, chunks).hash(&mut hasher);
        }
        _ => (parent, name).hash(&mut hasher),
    }
    hasher.finish() | (1 << 63)
}

impl fuser::Filesystem for Fs<'_> {
    fn lookup(&mut self, _request: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name.as_bytes()) {
            Err(code) => reply.error(code),
            Ok(None) => reply.error(libc::ENOENT),
            Ok(Some(what)) => {
                let ttl = ttl(&what);
                let ino = self.remember(parent, name.as_bytes(), what);
                let attr = self.attr(ino, &self.inodes[&ino].what);
                reply.entry(&ttl, &attr, 0);
            }
        }
    }

    fn forget(&mut self, _request: &Request<'_>, ino: u64, lookups: u64) {
        if ino <= IDS {
            return;
        }
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(lookups);
            if inode.lookups == 0 {
                self.inodes.remove(&ino);
            }
        }
    }

    fn getattr(&mut self, _request: &Request<'_>, ino: u64, _handle: Option<u64>, reply: ReplyAttr) {
        match self.inodes.get(&ino) {
            None => reply.error(libc::ENOENT),
            Some(inode) => reply.attr(&ttl(&inode.what), &self.attr(ino, &inode.what)),
        }
    }

    fn readlink(&mut self, _request: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.inodes.get(&ino).map(|inode| &inode.what) {
            Some(What::Entry { node: Node { content: Content::Symlink { target }, .. }, .. }) => reply.data(target),
            Some(latest @ What::Latest(_)) => match self.latest_target(latest) {
                Some(target) => reply.data(&target),
                None => reply.error(libc::ENOENT),
            },
            Some(_) => reply.error(libc::EINVAL),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _request: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return reply.error(libc::EROFS);
        }
        let Some(What::Entry { node: Node { content: Content::File { chunks }, meta, .. }, .. }) =
            self.inodes.get(&ino).map(|inode| &inode.what)
        else {
            return reply.error(libc::EISDIR);
        };
        let opened = match self.store.chunk_list(chunks) {
            Ok(ids) => OpenFile::new(self.store.index(), &ids, meta.size),
            Err(e) => Err(format!("its chunk list cannot be read: {e}")),
        };
        match opened {
            Err(why) => reply.error(self.failed(ino, why)),
            Ok(file) => {
                let handle = self.handle();
                self.files.insert(handle, file);
                // The content never changes: what the kernel cached stays good.
                reply.opened(handle, fuser::consts::FOPEN_KEEP_CACHE);
            }
        }
    }

    fn read(
        &mut self,
        _request: &Request<'_>,
        ino: u64,
        handle: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(file) = self.files.get(&handle) else { return reply.error(libc::EBADF) };
        let store = &mut self.store;
        match file.read(offset.max(0) as u64, size, &mut |id| store.chunk(id)) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(self.failed(ino, e)),
        }
    }

    fn release(
        &mut self,
        _request: &Request<'_>,
        _ino: u64,
        handle: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(&handle);
        reply.ok();
    }

    fn opendir(&mut self, _request: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        // A snapshot's directory never changes: an open one's listing serves another handle.
        // The top directories are listed again each time, as the snapshots change.
        let shared = matches!(self.inodes.get(&ino).map(|i| &i.what), Some(What::Entry { .. } | What::Snapshot { .. }));
        let listing = match self.listed.get(&ino) {
            Some(listing) => Ok(Arc::clone(listing)),
            None => self.listing(ino).map(Arc::new),
        };
        match listing {
            Err(code) => reply.error(code),
            Ok(listing) => {
                if shared {
                    self.listed.insert(ino, Arc::clone(&listing));
                }
                let handle = self.handle();
                self.dirs.insert(handle, (ino, listing));
                reply.opened(handle, 0);
            }
        }
    }

    fn readdir(&mut self, _request: &Request<'_>, _ino: u64, handle: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some((_, listing)) = self.dirs.get(&handle) else { return reply.error(libc::EBADF) };
        for (at, (ino, kind, name)) in listing.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, at as i64 + 1, *kind, OsStr::from_bytes(name)) {
                break; // the kernel's buffer is full: it asks again from here
            }
        }
        reply.ok();
    }

    fn releasedir(&mut self, _request: &Request<'_>, _ino: u64, handle: u64, _flags: i32, reply: ReplyEmpty) {
        if let Some((ino, listing)) = self.dirs.remove(&handle) {
            // The last handle of a directory lets its listing go.
            if Arc::strong_count(&listing) == 2 && self.listed.get(&ino).is_some_and(|l| Arc::ptr_eq(l, &listing)) {
                self.listed.remove(&ino);
            }
        }
        reply.ok();
    }

    // Everything that would change the file system: read-only. (The kernel refuses most of it
    // already, the mount being read-only; these answer whatever reaches them.)

    fn setattr(
        &mut self,
        _request: &Request<'_>,
        _ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _handle: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        reply.error(libc::EROFS);
    }

    fn mknod(&mut self, _: &Request<'_>, _: u64, _: &OsStr, _: u32, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(libc::EROFS);
    }

    fn mkdir(&mut self, _: &Request<'_>, _: u64, _: &OsStr, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(libc::EROFS);
    }

    fn unlink(&mut self, _: &Request<'_>, _: u64, _: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }

    fn rmdir(&mut self, _: &Request<'_>, _: u64, _: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }

    fn symlink(&mut self, _: &Request<'_>, _: u64, _: &OsStr, _: &std::path::Path, reply: ReplyEntry) {
        reply.error(libc::EROFS);
    }

    fn rename(&mut self, _: &Request<'_>, _: u64, _: &OsStr, _: u64, _: &OsStr, _: u32, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }

    fn link(&mut self, _: &Request<'_>, _: u64, _: u64, _: &OsStr, reply: ReplyEntry) {
        reply.error(libc::EROFS);
    }

    fn write(
        &mut self,
        _: &Request<'_>,
        _: u64,
        _: u64,
        _: i64,
        _: &[u8],
        _: u32,
        _: i32,
        _: Option<u64>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(libc::EROFS);
    }

    fn create(&mut self, _: &Request<'_>, _: u64, _: &OsStr, _: u32, _: u32, _: i32, reply: fuser::ReplyCreate) {
        reply.error(libc::EROFS);
    }

    fn setxattr(&mut self, _: &Request<'_>, _: u64, _: &OsStr, _: &[u8], _: i32, _: u32, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }

    fn removexattr(&mut self, _: &Request<'_>, _: u64, _: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }

    fn fallocate(&mut self, _: &Request<'_>, _: u64, _: u64, _: i64, _: i64, _: i32, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }
}

fn ttl(what: &What) -> Duration {
    match what {
        // A snapshot's name may come to mean another snapshot: the kernel asks again soon.
        What::Entry { .. } => TREE_TTL,
        _ => TOP_TTL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_time_is_a_time_without_panic() {
        for (sec, nsec) in [(i64::MIN, 0), (i64::MIN, 999_999_999), (-1, 5), (0, 0), (i64::MAX, 999_999_999)] {
            let _ = time(sec, nsec);
        }
        assert_eq!(time(-4, 877_000_000), UNIX_EPOCH - Duration::new(4, 877_000_000));
    }
}
