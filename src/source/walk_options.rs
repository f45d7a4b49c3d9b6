//! What users of restic and borg expect a walk to leave out, besides `--exclude` patterns:
//! other file systems (`--one-file-system`), cache directories tagged with `CACHEDIR.TAG`
//! (`--exclude-caches`) and directories holding a marker file (`--exclude-if-present NAME`).
//!
//! Choices, and why:
//! - A directory on another file system than its parent's (a mount point below a source root)
//!   is stored as an empty directory with its own metadata, as restic does, so a restore
//!   recreates the mount point; borg leaves it out. A source path given on the command line is
//!   always entered, whatever file system it is on.
//! - A tagged or marked directory keeps its own node and the tag or marker file, and loses
//!   everything else (restic's behaviour; borg's with `--keep-exclude-tags`): a restore shows
//!   that something was there, and why it is empty.
//! - A tag or marker counts only as a regular file reached through its directory's descriptor
//!   without following a symlink: a symlink named `CACHEDIR.TAG` counts for nothing (restic reads
//!   through it). Reading through it could read outside the source, or hang on a FIFO; a tag
//!   that may be a symlink lets whoever can plant one anywhere make a directory look like a
//!   cache without writing in it. A FIFO, socket or directory of that name counts for nothing
//!   either, and is never opened in a way that could block.
//! - `CACHEDIR.TAG` must begin with the exact signature of the Cache Directory Tagging
//!   Specification (<https://bford.info/cachedir/>); one that does not excludes nothing.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use super::archiver::{Archiver, Location};
use super::nofollow::{fstat, Dir, Kind, Stat};
use crate::error::Result;
use crate::format::tree::{Content, Node, Tree};

/// The name of a cache directory's tag file.
pub const CACHEDIR_TAG: &[u8] = b"CACHEDIR.TAG";

/// The first bytes of a valid `CACHEDIR.TAG`.
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// What the walk leaves out beyond exclude patterns. The default leaves out nothing.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Do not enter directories on another file system than the source root's
    /// (`--one-file-system`): they are stored empty.
    pub one_file_system: bool,
    /// Leave out the contents of directories holding a valid `CACHEDIR.TAG`, but the tag.
    pub exclude_caches: bool,
    /// Leave out the contents of directories holding a regular file of one of these names, but
    /// that file (`--exclude-if-present`).
    pub exclude_if_present: Vec<String>,
}

/// A marker name that is not one entry name.
#[derive(Debug, thiserror::Error)]
#[error("--exclude-if-present {0:?}: give the name of a file (no \"/\", not empty, \".\" or \"..\")")]
pub struct MarkerNameError(pub String);

impl WalkOptions {
    /// Refuses marker names that could never be found in a directory.
    pub fn check(&self) -> std::result::Result<(), MarkerNameError> {
        match self.exclude_if_present.iter().find(|n| n.is_empty() || *n == "." || *n == ".." || n.contains('/')) {
            Some(name) => Err(MarkerNameError(name.clone())),
            None => Ok(()),
        }
    }

    /// The device the walk keeps to below the open directory `dir`: its own, with
    /// `--one-file-system`; `None` when any will do. A directory whose device cannot be read
    /// keeps the walk out of every subdirectory (`Some(u64::MAX)` matches none), never lets it
    /// cross.
    pub(super) fn device_below(&self, dir: &Dir) -> Option<u64> {
        self.one_file_system.then(|| fstat(dir).map_or(u64::MAX, |stat| stat.dev()))
    }

    /// Whether the directory at `path` holds a tag or marker, looked up by path: for the
    /// progress bar's estimate only, never for what is stored.
    pub fn marks_by_path(&self, path: &std::path::Path) -> bool {
        let is_file = |name: &[u8]| {
            std::fs::symlink_metadata(path.join(std::ffi::OsStr::from_bytes(name))).is_ok_and(|m| m.is_file())
        };
        (self.exclude_caches
            && is_file(CACHEDIR_TAG)
            && Dir::open(path, false).is_ok_and(|dir| is_cache_tag(&dir, CACHEDIR_TAG)))
            || self.exclude_if_present.iter().any(|name| is_file(name.as_bytes()))
    }

    /// Narrows the sorted `names` of `dir` to its tag and marker files when it holds a valid
    /// one; leaves them as they are otherwise.
    pub(super) fn keep_only_markers(&self, dir: &Dir, names: &mut Vec<Vec<u8>>) {
        if !self.exclude_caches && self.exclude_if_present.is_empty() {
            return;
        }
        let listed = |name: &[u8]| names.binary_search_by(|n| n.as_slice().cmp(name)).is_ok();
        let mut found: HashSet<Vec<u8>> = HashSet::new();
        if self.exclude_caches && listed(CACHEDIR_TAG) && is_cache_tag(dir, CACHEDIR_TAG) {
            found.insert(CACHEDIR_TAG.to_vec());
        }
        for name in &self.exclude_if_present {
            let name = name.as_bytes();
            if listed(name) && dir.stat(name).is_ok_and(|stat| stat.kind() == Kind::File) {
                found.insert(name.to_vec());
            }
        }
        if !found.is_empty() {
            names.retain(|name| found.contains(name));
        }
    }
}

/// Whether the entry `name` of `dir` is a regular file that begins with the cache directory
/// signature. Opened without following a symlink and without blocking (a FIFO swapped in after
/// the `lstat` answers at once), and checked again through the descriptor.
fn is_cache_tag(dir: &Dir, name: &[u8]) -> bool {
    if !dir.stat(name).is_ok_and(|stat| stat.kind() == Kind::File) {
        return false;
    }
    let Ok(file) = dir.open_file(name, libc::O_NONBLOCK) else {
        return false;
    };
    if !fstat(&file).is_ok_and(|stat| stat.is_file()) {
        return false;
    }
    let mut start = [0u8; CACHEDIR_SIGNATURE.len()];
    file.read_exact_at(&mut start, 0).is_ok() && start == CACHEDIR_SIGNATURE
}

impl Archiver<'_> {
    /// A directory on another file system (`--one-file-system`): its node, with its metadata
    /// and an empty tree, as restic stores a mount point; no extended attributes (those seen
    /// there are the other file system's root's).
    pub(super) fn mount_point_node(&self, name: &[u8], at: &Location<'_>, stat: &Stat) -> Result<Option<Node>> {
        let subtree = self.store_tree(&Tree::default(), &at.path())?;
        self.counts.dirs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(Node {
            name: name.to_vec(),
            meta: stat.metadata(),
            content: Content::Dir { subtree },
            xattrs: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cairn-walk-options-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn kept(options: &WalkOptions, dir: &std::path::Path) -> Vec<String> {
        let opened = Dir::open(dir, false).unwrap();
        let mut names = opened.names().unwrap();
        names.sort();
        options.keep_only_markers(&opened, &mut names);
        names.into_iter().map(|n| String::from_utf8(n).unwrap()).collect()
    }

    #[test]
    fn only_a_valid_regular_tag_marks_a_cache() {
        let dir = scratch("tags");
        let options = WalkOptions { exclude_caches: true, ..WalkOptions::default() };
        std::fs::write(dir.join("data"), b"x").unwrap();
        assert_eq!(kept(&options, &dir), ["data"]);
        std::fs::write(dir.join("CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc5").unwrap();
        assert_eq!(kept(&options, &dir), ["CACHEDIR.TAG", "data"], "one byte short");
        std::fs::write(dir.join("CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n# made by x\n")
            .unwrap();
        assert_eq!(kept(&options, &dir), ["CACHEDIR.TAG"]);
        assert!(options.marks_by_path(&dir) && !WalkOptions::default().marks_by_path(&dir));
        assert_eq!(kept(&WalkOptions::default(), &dir), ["CACHEDIR.TAG", "data"], "off by default");

        // A symlink to a valid tag, a directory, a FIFO: none counts, and nothing blocks.
        std::fs::rename(dir.join("CACHEDIR.TAG"), dir.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("CACHEDIR.TAG")).unwrap();
        assert_eq!(kept(&options, &dir), ["CACHEDIR.TAG", "data", "elsewhere"]);
        assert!(!options.marks_by_path(&dir));
        std::fs::remove_file(dir.join("CACHEDIR.TAG")).unwrap();
        std::fs::create_dir(dir.join("CACHEDIR.TAG")).unwrap();
        assert_eq!(kept(&options, &dir), ["CACHEDIR.TAG", "data", "elsewhere"]);
        std::fs::remove_dir(dir.join("CACHEDIR.TAG")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("CACHEDIR.TAG").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(!is_cache_tag(&Dir::open(&dir, false).unwrap(), CACHEDIR_TAG));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_marker_file_keeps_only_itself() {
        let dir = scratch("markers");
        std::fs::write(dir.join("a"), b"x").unwrap();
        std::fs::write(dir.join(".nobackup"), b"").unwrap();
        let options =
            WalkOptions { exclude_if_present: vec![".nobackup".into(), ".other".into()], ..Default::default() };
        assert_eq!(kept(&options, &dir), [".nobackup"]);
        assert!(options.marks_by_path(&dir));
        std::fs::remove_file(dir.join(".nobackup")).unwrap();
        std::os::unix::fs::symlink(dir.join("a"), dir.join(".nobackup")).unwrap();
        assert_eq!(kept(&options, &dir), [".nobackup", "a"], "a symlink is no marker");
        assert!(!options.marks_by_path(&dir));
        assert!(options.check().is_ok());
        for bad in ["", ".", "..", "a/b"] {
            let options = WalkOptions { exclude_if_present: vec![bad.into()], ..Default::default() };
            assert!(options.check().is_err(), "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
