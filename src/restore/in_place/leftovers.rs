//! What in-place restores leave beside their target, and how a running restore is told from a
//! killed one.
//!
//! A restore of `<dir>/<name>` works beside it: the staging directory
//! `.<name>.cairn-staging-<inode>-<random>`, which after the swap holds the old tree until it is
//! renamed to `<name>.bak` (or `.bak.2`, ...). A killed restore leaves either; the next restore of
//! the target removes the first and renames the second (the table in the parent module's doc).
//!
//! Why a lock: a name and an inode cannot tell a staging directory that a restore is still
//! filling from one a killed restore left. A second restore of the same target once took a live
//! one for a leftover and removed it; its removal, still running when the first swapped that
//! directory in, emptied the restored target while the first reported success. So every restore
//! that will change something holds an exclusive `flock` on the target directory for its whole
//! run, and one on its staging directory from the moment it is made; the kernel drops both when
//! the process ends, however it ends (`kill -9` included), so what a killed run left is never
//! locked. After the swap, the target's name leads to the (locked) staging directory and the
//! staging name to the (locked) old target: a second restore finds a lock taken either way.
//! - A restore that cannot take the target's lock refuses before it changes anything, naming
//!   the holder's pid where `/proc/locks` tells it.
//! - A leftover whose lock cannot be taken belongs to a running restore and is left alone; one
//!   whose lock is taken is removed or renamed while it is held.
//! - Dry runs and refusals take no lock on the target; they try each leftover's, to report it
//!   truthfully.
//!
//! `flock` is advisory: only cairn takes these locks. Where the file system cannot lock a
//! directory (NFS emulates `flock` with byte-range locks, which a directory opened for reading
//! cannot take), concurrent restores cannot be told apart: the restore goes on, and leaves every
//! leftover alone, saying so.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fs_at::{remove_tree, stat_fd, Dir};

/// The most `.bak` names tried: `<name>.bak`, then `.bak.2` up to `.bak.9999`.
const BAKS: u32 = 10_000;

/// What an attempt at a directory's lock found.
pub(super) enum Flock {
    /// Taken: held until the directory's descriptors (this one and its duplicates) are closed.
    Held,
    /// Held by another process: a running restore (its pid, if `/proc/locks` tells it).
    Busy(Option<u32>),
    /// The file system cannot lock it (why).
    Unsupported(std::io::Error),
}

/// Tries to take the exclusive lock of `dir` without waiting.
pub(super) fn try_lock(dir: &Dir) -> Flock {
    flock(dir, libc::LOCK_NB)
}

/// [`try_lock`] that waits while another process holds the lock: for a directory this run has
/// just made, which a restore looking for leftovers may hold for the instant it looks.
pub(super) fn lock_waiting(dir: &Dir) -> Flock {
    flock(dir, 0)
}

/// `flock(LOCK_EX | more)` on `dir`.
fn flock(dir: &Dir, more: libc::c_int) -> Flock {
    // SAFETY: plain syscall on a valid descriptor.
    if unsafe { libc::flock(dir.raw_fd(), libc::LOCK_EX | more) } == 0 {
        return Flock::Held;
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Flock::Unsupported(error);
    }
    Flock::Busy(stat_fd(dir.as_fd()).ok().and_then(|st| holder(&st)))
}

/// The pid that holds a `flock` on the inode `st`, as `/proc/locks` lists it
/// (`1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF`, the device numbers in hex).
fn holder(st: &libc::stat) -> Option<u32> {
    let dev = st.st_dev;
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let wanted = format!("{major:02x}:{minor:02x}:{}", st.st_ino);
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Waiters are listed as `1: -> FLOCK ...`: not holders.
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

/// The error of a restore that found the target's lock taken.
pub(super) fn busy(target: &Path, pid: Option<u32>) -> Error {
    Error::Refused(format!(
        "another restore into {} is running ({}): nothing was changed; wait for it to finish, then restore again \
         if you still need to",
        target.display(),
        pid.map_or("its pid is not known".into(), |pid| format!("pid {pid}")),
    ))
}

/// `<name>.bak` for `n` = 1, else `<name>.bak.<n>`.
fn bak_name(name: &[u8], n: u32) -> Vec<u8> {
    if n == 1 {
        [name, b".bak"].concat()
    } else {
        [name, format!(".bak.{n}").as_bytes()].concat()
    }
}

/// Refuses unless some `.bak` name for `name` is free in `parent`: checked before anything
/// changes, so that a restore never swaps in a new tree and then finds nowhere to keep the old.
pub(super) fn check_bak_free(parent: &Dir, parent_path: &Path, name: &[u8]) -> Result<()> {
    let path = |n| parent_path.join(OsStr::from_bytes(&bak_name(name, n)));
    for n in 1..BAKS {
        match parent.stat(&bak_name(name, n)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(path(n), e)),
            Ok(_) => continue,
        }
    }
    let shown = |n| path(n).display().to_string();
    Err(Error::Refused(format!(
        "no name is free to keep the old tree at: {} and {} up to {} all exist; nothing was changed. Remove the old \
         .bak directories you no longer need, then restore again",
        shown(1),
        shown(2),
        shown(BAKS - 1)
    )))
}

/// Renames `from` (the old tree) to the first free `<name>.bak`, `<name>.bak.2`, ...
pub(super) fn keep_as_bak(parent: &Dir, from: &[u8], name: &[u8]) -> std::io::Result<Vec<u8>> {
    for n in 1..BAKS {
        let bak = bak_name(name, n);
        match parent.rename_new(from, &bak) {
            Ok(()) => return Ok(bak),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!("no free name from .bak to .bak.{}", BAKS - 1)))
}

/// Finds what restores of `name` left in `parent` and deals with what killed ones left (unless
/// `dry_run`): the old tree swapped out is renamed to `.bak`, an unfinished staging directory
/// removed. Only directories of this user whose lock is free are touched; others are reported.
/// `current`: the inode of the target now. The caller holds the target's lock (unless
/// `dry_run`), so no restore can start making a staging directory meanwhile.
pub(super) fn leftovers(
    parent: &Dir,
    parent_path: &Path,
    name: &[u8],
    current: Option<u64>,
    dry_run: bool,
) -> Result<Vec<String>> {
    let prefix = [b".", name, b".cairn-staging-"].concat();
    let mut notes = Vec::new();
    for entry in parent.names().map_err(|e| Error::io(parent_path, e))? {
        let Some(rest) = entry.strip_prefix(prefix.as_slice()) else { continue };
        let path = parent_path.join(OsStr::from_bytes(&entry));
        let Ok(st) = parent.stat(&entry) else { continue };
        let recorded: Option<u64> =
            std::str::from_utf8(rest).ok().and_then(|r| r.split('-').next()).and_then(|i| i.parse().ok());
        // SAFETY: geteuid cannot fail.
        let mine = st.st_uid == unsafe { libc::geteuid() };
        let opened = parent
            .open_dir(&entry)
            .ok()
            .filter(|dir| stat_fd(dir.as_fd()).is_ok_and(|now| (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)));
        let (Some(dir), true, Some(_)) = (opened, mine, recorded) else {
            notes.push(format!(
                "{} looks like a staging directory of cairn, but not this user's: left alone",
                path.display()
            ));
            continue;
        };
        // Held from here until `dir` is dropped, at the end of this round.
        match try_lock(&dir) {
            Flock::Held => {}
            Flock::Busy(pid) => {
                notes.push(format!(
                    "{} belongs to a restore that is running ({}): left alone",
                    path.display(),
                    pid.map_or("pid not known".into(), |pid| format!("pid {pid}"))
                ));
                continue;
            }
            Flock::Unsupported(e) => {
                notes.push(format!(
                    "{} looks left by a killed restore, but its file system cannot lock it ({e}), so a running \
                     restore cannot be ruled out: left alone; remove it (or rename it to .bak, if it holds the old \
                     tree) once no restore of the target runs",
                    path.display()
                ));
                continue;
            }
        }
        let swapped_out = recorded == Some(st.st_ino) && current != Some(st.st_ino);
        if swapped_out {
            if dry_run {
                notes.push(format!("{} holds the old tree of a killed restore: would be kept as .bak", path.display()));
                continue;
            }
            let bak = keep_as_bak(parent, &entry, name).map_err(|e| Error::io(&path, e))?;
            parent.sync().map_err(|e| Error::io(parent_path, e))?;
            notes.push(format!(
                "a killed restore had swapped in its new tree: the old one, left at {}, is now kept at {}",
                path.display(),
                parent_path.join(OsStr::from_bytes(&bak)).display()
            ));
        } else if dry_run {
            notes.push(format!(
                "{} is an unfinished staging directory of a killed restore: would be removed",
                path.display()
            ));
        } else {
            remove_tree(&path).map_err(|e| Error::io(&path, e))?;
            notes.push(format!("removed {}, the unfinished staging directory of a killed restore", path.display()));
        }
    }
    Ok(notes)
}
