//! Restoring extended attributes (ACLs, file capabilities, SELinux labels, `user.*`), in the
//! order that keeps them: owner first (a `chown` clears `security.capability`), then the
//! attributes, then mode and mtime (the mode last, because `user.*` attributes need write
//! permission, which a read-only mode would take from a restore not running as root; setting an
//! attribute changes `ctime` only, never `mtime`).
//!
//! An attribute that cannot be set because of who restores or where (`EPERM`, `EACCES`: a
//! `trusted.*` or `security.*` attribute as non-root, a `user.*` one on a symlink, a label the
//! security policy refuses; `ENOTSUP`: a file system without them, or without ACLs) is a
//! warning, printed and counted in the summary (`xattrs_not_restored`), as restic does: the
//! entry is restored without it. Any other failure (`ENOSPC`, `EIO`, …) fails the entry.
//! Attributes the restored entry got by itself (an ACL inherited from its directory, a label
//! given by the policy) and the snapshot lacks are left alone.

use std::io::Error;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use super::Restorer;
use crate::format::tree::{Metadata, Xattr};
use crate::fs_at::{check, set_made_metadata_fd, set_metadata_fd, Dir};
use crate::xattr::{write, Target};

impl Restorer<'_> {
    /// Owner (as root), extended attributes, mode, then mtime of a file or directory still
    /// open, which this restore made; `shown` names it in messages.
    pub(super) fn file_metadata(
        &self,
        file: &impl AsFd,
        meta: &Metadata,
        xattrs: &[Xattr],
        shown: impl Fn() -> PathBuf,
    ) -> Result<(), String> {
        let owner = self.owner(meta);
        let mtime = (meta.mtime_sec, meta.mtime_nsec);
        if xattrs.is_empty() {
            return set_made_metadata_fd(file.as_fd(), owner, meta.mode, mtime).map_err(|e| e.to_string());
        }
        let fd = file.as_fd().as_raw_fd();
        if let Some((uid, gid)) = owner {
            // SAFETY: plain syscall on a valid descriptor.
            check(unsafe { libc::fchown(fd, uid, gid) }).map_err(|e| format!("chown: {e}"))?;
        }
        self.attributes_set(write(Target::Fd(fd), xattrs), shown)?;
        set_metadata_fd(file.as_fd(), None, meta.mode, mtime).map_err(|e| e.to_string())
    }

    /// Owner (as root), extended attributes, mode (not for symlinks), then mtime of the entry
    /// `name` in `dir` itself, never of what a symlink there points to.
    pub(super) fn metadata(
        &self,
        dir: &Dir,
        name: &[u8],
        meta: &Metadata,
        xattrs: &[Xattr],
        symlink: bool,
        shown: impl Fn() -> PathBuf,
    ) -> Result<(), String> {
        let (owner, mode) = (self.owner(meta), (!symlink).then_some(meta.mode));
        let mtime = (meta.mtime_sec, meta.mtime_nsec);
        if xattrs.is_empty() {
            return dir.set_metadata(name, owner, mode, mtime).map_err(|e| e.to_string());
        }
        if owner.is_some() {
            dir.set_metadata(name, owner, None, mtime).map_err(|e| e.to_string())?;
        }
        let path = crate::xattr::proc_path(dir.raw_fd(), name).map_err(|e| e.to_string())?;
        self.attributes_set(write(Target::Path(&path), xattrs), shown)?;
        dir.set_metadata(name, None, mode, mtime).map_err(|e| e.to_string())
    }

    /// Warns of the attributes refused for who restores or where, and counts them; fails on
    /// any other failure.
    fn attributes_set(&self, failed: Vec<(Vec<u8>, Error)>, shown: impl Fn() -> PathBuf) -> Result<(), String> {
        for (name, error) in failed {
            let name = crate::names::shown(&name);
            if !refused(&error) {
                return Err(format!("setting extended attribute {name}: {error}"));
            }
            let path = shown();
            self.progress.warn(&format!(
                "warning: {}: extended attribute {name} not restored: {error}",
                crate::names::shown_path(&path)
            ));
            self.xattrs_not_restored.fetch_add(1, Relaxed);
        }
        Ok(())
    }
}

/// Whether setting an attribute failed for who restores or where, not for a fault.
fn refused(error: &Error) -> bool {
    crate::xattr::unsupported(error) || matches!(error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}
