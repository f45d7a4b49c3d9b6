//! Tree blobs: one directory's entries, sorted by name, each with its metadata and either its
//! content chunk ids, its subtree id, its symlink target or its device number. A tree is stored
//! as a blob of kind `Tree`, so an unchanged directory hashes to the id it had before and costs
//! nothing. See store-format/tree.md.

use super::{Put, Reader};
use crate::error::Result;
use crate::id::Id;

/// First byte of an encoded tree.
pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// Sorted by name (byte order), names unique.
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Raw name bytes (any bytes but `/` and NUL; not empty, `.` or `..`).
    pub name: Vec<u8>,
    pub meta: Metadata,
    pub content: Content,
}

/// What `lstat` said, as kept for restore and for change detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    /// Bytes of content for files, 0 otherwise.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File { chunks: Vec<Id> },
    Dir { subtree: Id },
    Symlink { target: Vec<u8> },
    Fifo,
    Socket,
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
}

impl Content {
    fn code(&self) -> u8 {
        match self {
            Content::File { .. } => 1,
            Content::Dir { .. } => 2,
            Content::Symlink { .. } => 3,
            Content::Fifo => 4,
            Content::Socket => 5,
            Content::CharDevice { .. } => 6,
            Content::BlockDevice { .. } => 7,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Content::File { .. } => "file",
            Content::Dir { .. } => "dir",
            Content::Symlink { .. } => "symlink",
            Content::Fifo => "fifo",
            Content::Socket => "socket",
            Content::CharDevice { .. } => "chardev",
            Content::BlockDevice { .. } => "blockdev",
        }
    }
}

/// Checks that a name can stand as one path component.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
        && name.len() <= u16::MAX as usize
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.nodes.len() * 128);
        out.put_u8(VERSION);
        out.put_u32(self.nodes.len() as u32);
        for node in &self.nodes {
            out.put_bytes16(&node.name);
            out.put_u8(node.content.code());
            let m = &node.meta;
            out.put_u32(m.mode);
            out.put_u32(m.uid);
            out.put_u32(m.gid);
            out.put_i64(m.mtime_sec);
            out.put_u32(m.mtime_nsec);
            out.put_i64(m.ctime_sec);
            out.put_u32(m.ctime_nsec);
            out.put_u64(m.dev);
            out.put_u64(m.ino);
            out.put_u64(m.nlink);
            out.put_u64(m.size);
            match &node.content {
                Content::File { chunks } => {
                    out.put_u32(chunks.len() as u32);
                    chunks.iter().for_each(|id| out.put_id(id));
                }
                Content::Dir { subtree } => out.put_id(subtree),
                Content::Symlink { target } => out.put_bytes32(target),
                Content::CharDevice { rdev } | Content::BlockDevice { rdev } => out.put_u64(*rdev),
                Content::Fifo | Content::Socket => {}
            }
        }
        out
    }

    /// `what` names the tree in errors (its id).
    pub fn decode(data: &[u8], what: &str) -> Result<Tree> {
        let mut r = Reader::new(data, what);
        let version = r.u8()?;
        if version != VERSION {
            return Err(r.error(format!("unknown tree version {version}")));
        }
        // The smallest node: name length, one name byte, code, fixed metadata.
        let count = r.count(2 + 1 + 1 + 68)?;
        let mut nodes: Vec<Node> = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.bytes16()?.to_vec();
            if !valid_name(&name) {
                return Err(r.error(format!("invalid entry name {:?}", String::from_utf8_lossy(&name))));
            }
            if let Some(previous) = nodes.last() {
                if previous.name >= name {
                    return Err(r.error("entries are not sorted by name or repeat a name"));
                }
            }
            let code = r.u8()?;
            let meta = Metadata {
                mode: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
                mtime_sec: r.i64()?,
                mtime_nsec: r.u32()?,
                ctime_sec: r.i64()?,
                ctime_nsec: r.u32()?,
                dev: r.u64()?,
                ino: r.u64()?,
                nlink: r.u64()?,
                size: r.u64()?,
            };
            if meta.mtime_nsec >= 1_000_000_000 || meta.ctime_nsec >= 1_000_000_000 {
                return Err(r.error("nanoseconds out of range"));
            }
            if meta.mode > 0o7777 {
                return Err(r.error(format!("mode {:o} has bits beyond 0o7777", meta.mode)));
            }
            let content = match code {
                1 => {
                    let n = r.count(32)?;
                    let mut chunks = Vec::with_capacity(n);
                    for _ in 0..n {
                        chunks.push(r.id()?);
                    }
                    Content::File { chunks }
                }
                2 => Content::Dir { subtree: r.id()? },
                3 => Content::Symlink { target: r.bytes32()?.to_vec() },
                4 => Content::Fifo,
                5 => Content::Socket,
                6 => Content::CharDevice { rdev: r.u64()? },
                7 => Content::BlockDevice { rdev: r.u64()? },
                other => return Err(r.error(format!("unknown node type {other}"))),
            };
            nodes.push(Node { name, meta, content });
        }
        r.finish()?;
        Ok(Tree { nodes })
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            proptest::collection::vec(any::<[u8; 32]>(), 0..4)
                .prop_map(|c| Content::File { chunks: c.into_iter().map(Id).collect() }),
            any::<[u8; 32]>().prop_map(|id| Content::Dir { subtree: Id(id) }),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|target| Content::Symlink { target }),
            Just(Content::Fifo),
            Just(Content::Socket),
            any::<u64>().prop_map(|rdev| Content::CharDevice { rdev }),
            any::<u64>().prop_map(|rdev| Content::BlockDevice { rdev }),
        ]
    }

    pub(crate) fn tree() -> impl Strategy<Value = Tree> {
        let name = proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..12);
        let meta = (any::<[u32; 5]>(), any::<[i64; 2]>(), any::<[u64; 4]>()).prop_map(|(a, t, b)| Metadata {
            mode: a[0] & 0o7777,
            uid: a[1],
            gid: a[2],
            mtime_sec: t[0],
            mtime_nsec: a[3] % 1_000_000_000,
            ctime_sec: t[1],
            ctime_nsec: a[4] % 1_000_000_000,
            dev: b[0],
            ino: b[1],
            nlink: b[2],
            size: b[3],
        });
        proptest::collection::btree_map(name, (meta, content()), 0..8).prop_map(|nodes| Tree {
            nodes: nodes
                .into_iter()
                .filter(|(name, _)| valid_name(name))
                .map(|(name, (meta, content))| Node { name, meta, content })
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn round_trip(tree in tree()) {
            prop_assert_eq!(Tree::decode(&tree.encode(), "tree").unwrap(), tree);
        }

        #[test]
        fn truncation_and_noise_are_errors(tree in tree(), cut in 1usize..5000, data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let encoded = tree.encode();
            let cut = cut.min(encoded.len());
            prop_assert!(Tree::decode(&encoded[..encoded.len() - cut], "tree").is_err());
            let _ = Tree::decode(&data, "tree");
        }
    }
}
