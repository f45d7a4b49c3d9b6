//! File systems mounted below the target, which an in-place restore cannot swap.
//!
//! Why: a mount belongs to its mount point's directory, so the swap moves it, with the old tree,
//! to the `.bak`, and the new tree's directory of that name is a plain one on the target's file
//! system: the restored content landed there, the mounted file system went aside, and the dry
//! run showed only `replace T/data`. So `--in-place` refuses, before anything changes (a dry run
//! too), a target with any mount point below it. They are read from `/proc/self/mountinfo`
//! rather than found by comparing devices in the walk: that walk does not enter what an
//! `--include` leaves out, and a bind mount of the target's own file system has its device.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Refuses if a file system is mounted anywhere below `target` (absolute, symlinks resolved).
/// Without `/proc/self/mountinfo` there is nothing to go by: allowed.
pub(super) fn refuse_mounts_below(target: &Path) -> Result<()> {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else { return Ok(()) };
    let mut below = mount_points(&info).filter(|point| point != target && point.starts_with(target));
    let Some(first) = below.next() else { return Ok(()) };
    let more = below.count();
    Err(Error::Refused(format!(
        "{} is a mount point inside the target {}{}: an in-place restore would move the mounted file system aside \
         with the old tree and restore onto the file system below it; nothing was changed. Use --overwrite to restore \
         into the target directly (after a safety snapshot), or restore into an empty directory with another --target",
        first.display(),
        target.display(),
        if more > 0 { format!(" (and {more} more)") } else { String::new() }
    )))
}

/// The mount points of a mountinfo listing (the fifth field of each line, with its octal
/// escapes of space, tab, newline and backslash undone).
fn mount_points(info: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
    info.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|point| PathBuf::from(OsStr::from_bytes(&unescape(point))))
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_the_fifth_field_unescaped() {
        let info = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                     40 22 0:35 / /srv/my\\040app/data rw - tmpfs tmpfs rw\n\
                     41 22 0:36 / /a\\134b rw - tmpfs tmpfs rw\n";
        let points: Vec<PathBuf> = mount_points(info).collect();
        assert_eq!(points, [PathBuf::from("/"), PathBuf::from("/srv/my app/data"), PathBuf::from("/a\\b")]);
    }
}
