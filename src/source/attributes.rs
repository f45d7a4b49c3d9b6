//! A source entry's extended attributes, read for its node ([`crate::xattr`]).
//!
//! Read through the entry's directory descriptor, never through a symlink, and checked to
//! belong to the entry that was listed: when it has any, the name is stat'ed again after the
//! read, and an entry replaced meanwhile is looked at again like any replaced entry, so a node
//! never pairs one file's metadata with another's attributes (a capability, say). Read afresh
//! on every snapshot, unchanged files included: one `listxattrat` per entry, 17% of an unchanged
//! re-snapshot (store-format/tree.md, "Extended attributes").
//!
//! A file system without extended attributes gives none, silently. Attributes that cannot be
//! read otherwise are reported, and the entry is stored without them: the snapshot is then
//! incomplete, never silently wrong.

use std::path::Path;

use super::archiver::Archiver;
use super::nofollow::{Dir, OpenError, Stat};
use crate::format::tree::Xattr;
use crate::xattr::{c_path, read, Target};

impl Archiver<'_> {
    /// The extended attributes of the entry `name` of `dir` (shown as `path`), listed as
    /// `listed`. `Err(Replaced)` or `Err(Gone)` when the name no longer holds that entry.
    pub(super) fn xattrs(
        &self,
        dir: &Dir,
        name: &[u8],
        listed: &Stat,
        path: impl Fn() -> std::path::PathBuf,
    ) -> Result<Vec<Xattr>, OpenError> {
        let entry = std::ffi::CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput));
        let read = entry.and_then(|entry| read(Target::At(std::os::fd::AsRawFd::as_raw_fd(dir), &entry)));
        if read.as_ref().is_ok_and(|xattrs| xattrs.is_empty()) {
            // Nothing to pair with the wrong entry: no second look (most entries, half the cost).
            return Ok(Vec::new());
        }
        let now = match dir.stat(name).map_err(OpenError::from) {
            Ok(now) => now,
            Err(OpenError::Io(e)) => {
                self.record(&path(), e.to_string());
                return Err(OpenError::Io(e));
            }
            Err(other) => return Err(other),
        };
        if !now.same_file(listed) || now.kind() != listed.kind() {
            return Err(OpenError::Replaced);
        }
        match read {
            Ok(xattrs) => Ok(xattrs),
            Err(e) => {
                let why = if e.raw_os_error() == Some(libc::ENOENT) && !Path::new("/proc/self/fd").exists() {
                    "/proc is not mounted".to_string()
                } else {
                    e.to_string()
                };
                self.record(&path(), format!("cannot read extended attributes, stored without them: {why}"));
                Ok(Vec::new())
            }
        }
    }
}

/// The extended attributes of the entry at `path`, itself not followed: for the directories
/// above the sources in a several-paths snapshot, which are reached by path anyway.
pub fn xattrs_at_path(path: &Path) -> std::io::Result<Vec<Xattr>> {
    read(Target::Path(&c_path(path)?))
}
