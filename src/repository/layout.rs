//! The names of a repository's files (store-format/README.md, "Repository layout"): the one
//! place that spells them. Everything else names a file by its kind and id.

use crate::id::Id;

/// The name of the file that makes a directory or prefix a repository; written last by `init`.
pub const CONFIG: &str = "config";

/// Top-level directories of a local repository: the local backend's temporary directory and
/// each kind's.
pub(crate) fn directories() -> impl Iterator<Item = &'static str> {
    std::iter::once(crate::backend::local::TMP).chain(FileKind::ALL.iter().map(|kind| kind.dir()))
}

/// The kinds of content-named files a repository holds, each in its own directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `keys/<id>`: a key file (store-format/encryption.md).
    Key,
    /// `snapshots/<id>`: a snapshot manifest (store-format/snapshot.md).
    Snapshot,
    /// `index/<id>`: an index file (store-format/index.md).
    Index,
    /// `packs/XY/<id>`: a pack, below the first two hex digits of its id (store-format/pack.md).
    Pack,
    /// `locks/<id>`: a lock file (store-format/locks.md).
    Lock,
    /// `audit/<id>`: an audit record (store-format/audit.md).
    Audit,
    /// `dicts/<id>`: a compression dictionary (store-format/dictionary.md).
    Dictionary,
}

impl FileKind {
    pub const ALL: [FileKind; 7] = [
        FileKind::Key,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Pack,
        FileKind::Lock,
        FileKind::Audit,
        FileKind::Dictionary,
    ];

    /// The directory (prefix) that holds the files of this kind.
    pub const fn dir(self) -> &'static str {
        match self {
            FileKind::Key => "keys",
            FileKind::Snapshot => "snapshots",
            FileKind::Index => "index",
            FileKind::Pack => "packs",
            FileKind::Lock => "locks",
            FileKind::Audit => "audit",
            FileKind::Dictionary => "dicts",
        }
    }

    /// The name of the file of this kind named `id`.
    pub fn name(self, id: &Id) -> String {
        let hex = id.to_hex();
        match self {
            FileKind::Pack => format!("packs/{}/{hex}", &hex[..2]),
            other => format!("{}/{hex}", other.dir()),
        }
    }

    /// The id a listed name of this kind stands for; `None` for a name that is not one this
    /// kind's files have (a stray, or a temporary file: not cairn's to read or delete).
    pub fn id_of(self, name: &str) -> Option<Id> {
        let id = Id::from_hex(name.rsplit('/').next()?)?;
        (self.name(&id) == name).then_some(id)
    }

    /// A name of this kind that no file ever has: `<random id>.<suffix>` (a probe).
    pub(crate) fn probe(self, suffix: &str) -> String {
        format!("{}/{}.{suffix}", self.dir(), Id(crate::id::random_bytes()).to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_round_trip_and_strays_are_not_ids() {
        let id = Id::of(b"x");
        let hex = id.to_hex();
        for kind in FileKind::ALL {
            assert_eq!(kind.id_of(&kind.name(&id)), Some(id));
            assert_eq!(kind.id_of(&format!("{}/{hex}.tmp", kind.dir())), None);
        }
        assert_eq!(FileKind::Pack.name(&id), format!("packs/{}/{hex}", &hex[..2]));
        assert_eq!(FileKind::Pack.id_of(&format!("packs/00/{hex}")), None, "in the wrong fan-out directory");
        assert_eq!(FileKind::Index.id_of(&format!("snapshots/{hex}")), None);
        assert_eq!(FileKind::Snapshot.id_of(&format!("snapshots/{}", &hex[..8])), None);
    }
}
