//! Tree blobs: one directory's entries, sorted by name, each with its metadata, its extended
//! attributes, and either its content chunk ids, its subtree id, its symlink target or its
//! device number. A tree is stored
//! as a blob of kind `Tree`, so an unchanged directory hashes to the id it had before and costs
//! nothing. See store-format/tree.md.

use super::{Put, Reader};
use crate::error::Result;
use crate::id::Id;

/// First byte of an encoded tree in which some node has extended attributes. A tree in which
/// none has any is written as [`VERSION_PLAIN`], byte for byte what version 1 wrote, so an
/// unchanged directory keeps its tree id across the upgrade (store-format/tree.md, "Versions").
pub const VERSION: u8 = 2;

/// First byte of an encoded tree without extended attributes: the version 1 layout.
pub const VERSION_PLAIN: u8 = 1;

/// First byte of an encoded tree in which some node's chunk list is stored in list blobs (node
/// type 8): the version 2 layout plus that node type (store-format/tree.md, "Versions").
pub const VERSION_LISTS: u8 = 3;

/// The longest extended attribute name Linux allows (`XATTR_NAME_MAX`, namespace prefix
/// included).
pub const XATTR_NAME_MAX: usize = 255;

/// The largest extended attribute value Linux allows (`XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: usize = 65_536;

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
    /// Extended attributes (POSIX ACLs, file capabilities and SELinux labels among them), sorted
    /// by name, names unique; empty for a node of a version 1 tree.
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute as `lgetxattr` gave it: both raw bytes, the name with its namespace
/// (`user.`, `security.`, `system.`, `trusted.`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    /// 1 to [`XATTR_NAME_MAX`] bytes, no NUL.
    pub name: Vec<u8>,
    /// At most [`XATTR_VALUE_MAX`] bytes.
    pub value: Vec<u8>,
}

/// Checks that a name can stand as an extended attribute's name.
pub fn valid_xattr_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= XATTR_NAME_MAX && !name.contains(&0)
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
    File { chunks: ChunkList },
    Dir { subtree: Id },
    Symlink { target: Vec<u8> },
    Fifo,
    Socket,
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
}

/// A regular file's chunk ids: in its tree (node type 1), or in a chain of list blobs (node type
/// 8, [`super::chunk_list`]). Readers expand either with `Repository::chunk_list`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChunkList {
    Inline(Vec<Id>),
    /// `count` chunks, given by a FULL list blob and up to 15 patches, in chain order.
    Stored {
        count: u64,
        lists: Vec<Id>,
    },
}

impl ChunkList {
    /// How many chunks the file has.
    pub fn count(&self) -> u64 {
        match self {
            ChunkList::Inline(chunks) => chunks.len() as u64,
            ChunkList::Stored { count, .. } => *count,
        }
    }

    /// The ids themselves, when the tree holds them.
    pub fn inline(&self) -> Option<&[Id]> {
        match self {
            ChunkList::Inline(chunks) => Some(chunks),
            ChunkList::Stored { .. } => None,
        }
    }

    /// The list blobs the node names (none for an inline list).
    pub fn lists(&self) -> &[Id] {
        match self {
            ChunkList::Inline(_) => &[],
            ChunkList::Stored { lists, .. } => lists,
        }
    }
}

impl From<Vec<Id>> for ChunkList {
    fn from(chunks: Vec<Id>) -> ChunkList {
        ChunkList::Inline(chunks)
    }
}

impl Content {
    fn code(&self) -> u8 {
        match self {
            Content::File { chunks: ChunkList::Inline(_) } => 1,
            Content::File { chunks: ChunkList::Stored { .. } } => 8,
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
        let version =
            if self.nodes.iter().any(|n| matches!(n.content, Content::File { chunks: ChunkList::Stored { .. } })) {
                VERSION_LISTS
            } else if self.nodes.iter().any(|n| !n.xattrs.is_empty()) {
                VERSION
            } else {
                VERSION_PLAIN
            };
        out.put_u8(version);
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
                Content::File { chunks: ChunkList::Inline(chunks) } => {
                    out.put_u32(chunks.len() as u32);
                    chunks.iter().for_each(|id| out.put_id(id));
                }
                Content::File { chunks: ChunkList::Stored { count, lists } } => {
                    out.put_u64(*count);
                    out.put_u8(lists.len() as u8);
                    lists.iter().for_each(|id| out.put_id(id));
                }
                Content::Dir { subtree } => out.put_id(subtree),
                Content::Symlink { target } => out.put_bytes32(target),
                Content::CharDevice { rdev } | Content::BlockDevice { rdev } => out.put_u64(*rdev),
                Content::Fifo | Content::Socket => {}
            }
            if version != VERSION_PLAIN {
                out.put_u32(node.xattrs.len() as u32);
                for xattr in &node.xattrs {
                    out.put_bytes16(&xattr.name);
                    out.put_bytes32(&xattr.value);
                }
            }
        }
        out
    }

    /// `what` names the tree in errors (its id).
    pub fn decode(data: &[u8], what: &str) -> Result<Tree> {
        let mut r = Reader::new(data, what);
        let version = r.u8()?;
        if !(VERSION_PLAIN..=VERSION_LISTS).contains(&version) {
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
                    Content::File { chunks: ChunkList::Inline(chunks) }
                }
                8 if version == VERSION_LISTS => decode_stored(&mut r)?,
                8 => return Err(r.error(format!("node type 8 in a version {version} tree"))),
                2 => Content::Dir { subtree: r.id()? },
                3 => Content::Symlink { target: r.bytes32()?.to_vec() },
                4 => Content::Fifo,
                5 => Content::Socket,
                6 => Content::CharDevice { rdev: r.u64()? },
                7 => Content::BlockDevice { rdev: r.u64()? },
                other => return Err(r.error(format!("unknown node type {other}"))),
            };
            let xattrs = if version == VERSION_PLAIN { Vec::new() } else { decode_xattrs(&mut r)? };
            nodes.push(Node { name, meta, content, xattrs });
        }
        if version == VERSION && nodes.iter().all(|n| n.xattrs.is_empty()) {
            // Written as version 1 instead: every tree has one encoding.
            return Err(r.error("version 2 tree without extended attributes"));
        }
        let stored = |n: &Node| matches!(n.content, Content::File { chunks: ChunkList::Stored { .. } });
        if version == VERSION_LISTS && !nodes.iter().any(stored) {
            // Written as version 1 or 2 instead.
            return Err(r.error("version 3 tree without a node whose chunk list is in list blobs"));
        }
        r.finish()?;
        Ok(Tree { nodes })
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }
}

/// A type 8 node's content: the chunk count, then the chain of list blob ids.
fn decode_stored(r: &mut Reader<'_>) -> Result<Content> {
    let count = r.u64()?;
    if count > super::chunk_list::MAX_IDS {
        return Err(r.error(format!("chunk count {count} exceeds {}", super::chunk_list::MAX_IDS)));
    }
    let chain = r.u8()? as usize;
    if !(1..=super::chunk_list::MAX_CHAIN).contains(&chain) {
        return Err(r.error(format!("a chain of {chain} list blobs, not 1 to {}", super::chunk_list::MAX_CHAIN)));
    }
    let lists = (0..chain).map(|_| r.id()).collect::<Result<Vec<Id>>>()?;
    Ok(Content::File { chunks: ChunkList::Stored { count, lists } })
}

/// A node's extended attributes in a version 2 or 3 tree: a count, then each name and value.
fn decode_xattrs(r: &mut Reader<'_>) -> Result<Vec<Xattr>> {
    // The smallest attribute: name length, one name byte, value length.
    let count = r.count(2 + 1 + 4)?;
    // Room for a few only: the count is bounded by the bytes left, not by what they decode to.
    let mut xattrs: Vec<Xattr> = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let name = r.bytes16()?;
        if !valid_xattr_name(name) {
            let shown = String::from_utf8_lossy(name);
            return Err(r.error(format!("invalid extended attribute name {shown:?}")));
        }
        if xattrs.last().is_some_and(|previous| previous.name.as_slice() >= name) {
            return Err(r.error("extended attributes are not sorted by name or repeat a name"));
        }
        let value = r.bytes32()?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(r.error(format!("extended attribute value of {} bytes exceeds {XATTR_VALUE_MAX}", value.len())));
        }
        xattrs.push(Xattr { name: name.to_vec(), value: value.to_vec() });
    }
    Ok(xattrs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            proptest::collection::vec(any::<[u8; 32]>(), 0..4)
                .prop_map(|c| Content::File { chunks: ChunkList::Inline(c.into_iter().map(Id).collect()) }),
            (0..=crate::format::chunk_list::MAX_IDS, proptest::collection::vec(any::<[u8; 32]>(), 1..17)).prop_map(
                |(count, lists)| Content::File {
                    chunks: ChunkList::Stored { count, lists: lists.into_iter().map(Id).collect() }
                }
            ),
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
        let xattrs = prop_oneof![Just(Vec::new()), xattrs()];
        proptest::collection::btree_map(name, (meta, content(), xattrs), 0..8).prop_map(|nodes| Tree {
            nodes: nodes
                .into_iter()
                .filter(|(name, _)| valid_name(name))
                .map(|(name, (meta, content, xattrs))| Node { name, meta, content, xattrs })
                .collect(),
        })
    }

    /// Sorted, unique, valid attributes with any bytes, an empty value included.
    fn xattrs() -> impl Strategy<Value = Vec<Xattr>> {
        let name = proptest::collection::vec(1u8..=255, 1..20);
        let value = proptest::collection::vec(any::<u8>(), 0..50);
        proptest::collection::btree_map(name, value, 0..4)
            .prop_map(|map| map.into_iter().map(|(name, value)| Xattr { name, value }).collect())
    }

    fn node(name: &[u8], xattrs: Vec<Xattr>) -> Node {
        Node { name: name.to_vec(), meta: Metadata::default(), content: Content::Fifo, xattrs }
    }

    fn xattr(name: &[u8], value: &[u8]) -> Xattr {
        Xattr { name: name.to_vec(), value: value.to_vec() }
    }

    fn error(data: &[u8]) -> String {
        Tree::decode(data, "tree").unwrap_err().to_string()
    }

    #[test]
    fn a_tree_without_extended_attributes_is_version_1_byte_for_byte() {
        let tree = Tree { nodes: vec![node(b"a", vec![]), node(b"b", vec![])] };
        let encoded = tree.encode();
        assert_eq!(encoded[0], 1);
        // Version 1's layout: 72 bytes per one-byte-named FIFO, after the 5-byte header.
        assert_eq!(encoded.len(), 5 + 2 * 72);
        assert_eq!(Tree::decode(&encoded, "tree").unwrap(), tree);
    }

    #[test]
    fn a_tree_with_extended_attributes_is_version_2() {
        let value = vec![0xffu8; XATTR_VALUE_MAX];
        let attrs = vec![xattr(b"security.capability", &[1, 0, 0, 2]), xattr(b"user.\xff\x01", &value)];
        let tree = Tree { nodes: vec![node(b"a", vec![]), node(b"b", attrs)] };
        let encoded = tree.encode();
        assert_eq!(encoded[0], 2);
        // Node a: 72 bytes and a zero count; node b: 72, the count, two attributes.
        let attributes = (2 + 19 + 4 + 4) + (2 + 7 + 4 + XATTR_VALUE_MAX);
        assert_eq!(encoded.len(), 5 + 72 + 4 + 72 + 4 + attributes);
        assert_eq!(Tree::decode(&encoded, "tree").unwrap(), tree);
    }

    #[test]
    fn hostile_extended_attributes_are_refused() {
        let good = Tree { nodes: vec![node(b"a", vec![xattr(b"user.a", b"1"), xattr(b"user.b", b"2")])] }.encode();
        // Where node a's attribute count starts: header, node, then the count.
        let at = 5 + 72;
        let with = |offset: usize, bytes: &[u8]| {
            let mut data = good.clone();
            data[offset..offset + bytes.len()].copy_from_slice(bytes);
            data
        };
        assert!(error(&with(at, &u32::MAX.to_le_bytes())).contains("count 4294967295 exceeds the remaining data"));
        // The second name made equal to the first, then smaller.
        let second = at + 4 + 2 + 6 + 4 + 1 + 2;
        assert!(error(&with(second, b"user.a")).contains("not sorted by name or repeat a name"));
        assert!(error(&with(second, b"user.0")).contains("not sorted by name or repeat a name"));
        assert!(error(&with(second + 5, b"\0")).contains("invalid extended attribute name"));
        // A value length past the end, and past the limit.
        assert!(error(&with(second + 6, &u32::MAX.to_le_bytes())).contains("truncated"));
        let mut long = Tree { nodes: vec![node(b"a", vec![xattr(b"user.a", &[7; XATTR_VALUE_MAX])])] }.encode();
        let len = at + 4 + 2 + 6;
        long[len..len + 4].copy_from_slice(&(XATTR_VALUE_MAX as u32 + 1).to_le_bytes());
        long.push(7);
        assert!(error(&long).contains("value of 65537 bytes exceeds 65536"));
        // An empty name, and one past 255 bytes.
        let empty = [&good[..at + 4], &[0, 0, 0, 0, 0, 0][..]].concat();
        let empty = [&empty[..], &good[at + 4 + 2 + 6 + 4 + 1..]].concat();
        assert!(error(&empty).contains("invalid extended attribute name"));
        let name = vec![b'u'; XATTR_NAME_MAX + 1];
        let mut over = Tree { nodes: vec![node(b"a", vec![])] }.encode();
        over[0] = 2;
        over.extend_from_slice(&1u32.to_le_bytes());
        over.extend_from_slice(&(name.len() as u16).to_le_bytes());
        over.extend_from_slice(&name);
        over.extend_from_slice(&0u32.to_le_bytes());
        assert!(error(&over).contains("invalid extended attribute name"));
    }

    #[test]
    fn version_2_needs_an_attribute_and_version_4_is_unknown() {
        let mut plain = Tree { nodes: vec![node(b"a", vec![])] }.encode();
        plain[0] = 2;
        plain.extend_from_slice(&0u32.to_le_bytes());
        assert!(error(&plain).contains("version 2 tree without extended attributes"));
        assert!(error(&[2, 0, 0, 0, 0]).contains("version 2 tree without extended attributes"));
        assert!(error(&[4, 0, 0, 0, 0]).contains("unknown tree version 4"));
        assert!(error(&[0, 0, 0, 0, 0]).contains("unknown tree version 0"));
    }

    fn listed(count: u64, chain: usize) -> Node {
        let lists = (0..chain).map(|i| Id([i as u8; 32])).collect();
        Node { content: Content::File { chunks: ChunkList::Stored { count, lists } }, ..node(b"db", vec![]) }
    }

    #[test]
    fn a_tree_with_a_listed_file_is_version_3_and_the_others_refuse_type_8() {
        let tree = Tree { nodes: vec![node(b"a", vec![]), listed(70_000, 2)] };
        let encoded = tree.encode();
        assert_eq!(encoded[0], 3);
        // Node a: 72 bytes and a zero attribute count; db: 73, count, chain length, two ids, zero.
        assert_eq!(encoded.len(), 5 + 72 + 4 + 73 + 8 + 1 + 64 + 4);
        assert_eq!(Tree::decode(&encoded, "tree").unwrap(), tree);
        // Without a type 8 node, version 3 is refused; with one, versions 1 and 2 are.
        let mut plain = Tree { nodes: vec![node(b"a", vec![])] }.encode();
        plain[0] = 3;
        plain.extend_from_slice(&0u32.to_le_bytes());
        assert!(error(&plain).contains("version 3 tree without a node whose chunk list is in list blobs"));
        let mut as_v2 = encoded.clone();
        as_v2[0] = 2;
        assert!(error(&as_v2).contains("node type 8 in a version 2 tree"));
        // A chain of 0 or 17, and a count past the limit.
        let at = 5 + 72 + 4 + 73;
        let mut empty = encoded.clone();
        empty[at + 8] = 0;
        assert!(error(&empty).contains("a chain of 0 list blobs, not 1 to 16"));
        let over = Tree { nodes: vec![listed(1, 17)] }.encode();
        assert!(error(&over).contains("a chain of 17 list blobs, not 1 to 16"));
        let mut huge = encoded.clone();
        huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(error(&huge).contains("chunk count 18446744073709551615 exceeds 33554432"));
    }

    proptest! {
        #[test]
        fn round_trip(tree in tree()) {
            let encoded = tree.encode();
            let decoded = Tree::decode(&encoded, "tree").unwrap();
            prop_assert_eq!(decoded.encode(), encoded);
            prop_assert_eq!(decoded, tree);
        }

        #[test]
        fn truncation_and_noise_are_errors(tree in tree(), cut in 1usize..5000, data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let encoded = tree.encode();
            let cut = cut.min(encoded.len());
            prop_assert!(Tree::decode(&encoded[..encoded.len() - cut], "tree").is_err());
            if let Ok(decoded) = Tree::decode(&data, "tree") {
                prop_assert_eq!(decoded.encode(), data, "one encoding per tree");
            }
        }
    }
}
