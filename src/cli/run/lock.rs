//! The run lock: one `cairn run` per config at a time, kept where no other user can reach it.
//!
//! Why so careful: `cairn run` runs as root from cron or systemd, and a lock under a predictable
//! name in a shared directory (`/tmp`) belongs to whoever creates that name first. A symlink
//! planted there made a root run overwrite the link's target, and a file created and locked there
//! first kept every backup from running. So the lock lives in a directory only the caller can
//! write:
//!
//! | started as | directory |
//! |---|---|
//! | a systemd service with `RuntimeDirectory=` | `$RUNTIME_DIRECTORY` (its first entry) |
//! | root | `/run/cairn` |
//! | any other user | `$XDG_RUNTIME_DIR/cairn`, else `cairn-UID` in the temp directory |
//!
//! Root ignores `XDG_RUNTIME_DIR`, so a run started by hand from a login shell and one started by
//! cron share a lock. The directory is created (mode 0700) if missing, and refused, with an error
//! that names it, if it is a symlink or not a directory, is not owned by the caller, or is writable
//! by group or others. It stays when the run ends, as `/tmp/tmux-UID` does: removing it would
//! hand its name in the temp directory back to whoever takes it first.
//!
//! The lock file in it, `run-ID.lock` (ID: BLAKE3 of the config's canonical path), is opened
//! relative to the directory's descriptor with `O_NOFOLLOW`, must be a regular file of the caller
//! with one link, and gets the pid written through its descriptor: no path is resolved twice. The
//! lock itself is an exclusive `flock`, which the kernel drops when the process ends, however it
//! ends. A run that ends removes the file while it still holds the lock. A killed run leaves the
//! file, which holds nothing: the next run locks it and takes it over. A run that locked a file
//! checks that its name still leads to it (a run ending in between would have removed it), so
//! removing never lets two runs in.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use cairn::fs_at::{is_file, stat_fd};

/// Held for the whole run; dropping it removes the lock file, then releases the lock.
pub struct RunLock {
    directory: OwnedFd,
    name: CString,
    _file: File,
}

impl RunLock {
    /// Takes the lock of `config` (its path as given), or fails at once if another run holds it.
    pub fn acquire(config: &Path) -> Result<RunLock> {
        let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        let id = cairn::id::Id::of(canonical.as_os_str().as_encoded_bytes()).short();
        let path = directory();
        let directory = open_directory(&path)?;
        let name = CString::new(format!("run-{id}.lock")).expect("no NUL in a hex name");
        let lock_path = path.join(OsStr::from_bytes(name.as_bytes()));
        // A run that ends removes its file between our open and our lock at most a few times.
        for _ in 0..16 {
            let file = open_file(&directory, &name, &lock_path)?;
            // SAFETY: a valid open file descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(error).with_context(|| format!("locking the run lock {}", lock_path.display()));
                }
                let mut holder = String::new();
                (&file).take(64).read_to_string(&mut holder).ok();
                bail!(
                    "another `cairn run` with {} is running ({}): not starting a second one",
                    config.display(),
                    holder.trim()
                );
            }
            let held = stat_fd(file.as_fd())?;
            if !stat_at(&directory, &name).is_ok_and(|named| (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino))
            {
                continue; // removed by a run that ended after we opened it: take the new one
            }
            file.set_len(0).ok();
            file.write_all_at(format!("pid {}", std::process::id()).as_bytes(), 0).ok();
            return Ok(RunLock { directory, name, _file: file });
        }
        bail!("the run lock {} keeps being removed under this run: not starting", lock_path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Before the file closes (a field, dropped after this), so the lock is still held.
        // SAFETY: a valid directory descriptor and C string.
        unsafe { libc::unlinkat(self.directory.as_raw_fd(), self.name.as_ptr(), 0) };
    }
}

/// The directory of this user's run locks (the table in the module doc).
fn directory() -> PathBuf {
    if let Some(given) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        let first = given.as_bytes().split(|b| *b == b':').next().unwrap_or_default();
        // Without a trailing slash, which would make the kernel follow a symlink there.
        return Path::new(OsStr::from_bytes(first)).components().collect();
    }
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 && Path::new("/run").is_dir() {
        return PathBuf::from("/run/cairn");
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| d.is_absolute() && d.is_dir());
    match runtime {
        Some(runtime) if uid != 0 => runtime.join("cairn"),
        _ => std::env::temp_dir().join(format!("cairn-{uid}")),
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).with_context(|| format!("{} holds a NUL byte", path.display()))
}

/// Creates `path` (mode 0700) if missing and opens it without following a symlink there; refuses
/// it unless it is a directory of this user that nobody else may write.
fn open_directory(path: &Path) -> Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a valid C string. mkdir never follows a symlink at the last component.
    if unsafe { libc::mkdir(c.as_ptr(), 0o700) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(error).with_context(|| format!("creating the run lock directory {}", path.display()));
        }
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        if matches!(error.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
            bail!(
                "the run lock directory {} is a symlink or not a directory: cairn follows no link there. Remove it \
                 and run again (cairn makes the directory itself, mode 0700)",
                path.display()
            );
        }
        return Err(error).with_context(|| format!("opening the run lock directory {}", path.display()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = stat_fd(fd.as_fd()).with_context(|| format!("reading the run lock directory {}", path.display()))?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if st.st_uid != uid {
        bail!(
            "the run lock directory {} is owned by uid {}, not by this user (uid {uid}): whoever made it could \
             plant or hold the lock there. Remove it (as its owner or root) and run again",
            path.display(),
            st.st_uid
        );
    }
    if st.st_mode & 0o022 != 0 {
        bail!(
            "the run lock directory {} is writable by others (mode {:o}): anyone could plant or hold the lock there. \
             `chmod 700` it, or remove it, and run again",
            path.display(),
            st.st_mode & 0o7777
        );
    }
    Ok(fd)
}

/// Opens (creating, mode 0600) the lock file `name` in `directory` without following a symlink,
/// and checks that it is a regular file of this user with one link.
fn open_file(directory: &OwnedFd, name: &CString, path: &Path) -> Result<File> {
    // O_NONBLOCK: something other than a file there must not block the open (checked below).
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    // SAFETY: a valid descriptor and C string.
    let fd = unsafe { libc::openat(directory.as_raw_fd(), name.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ELOOP) {
            bail!(
                "the run lock {} is a symlink: cairn writes no lock through a link. Remove it and run again",
                path.display()
            );
        }
        return Err(error).with_context(|| format!("opening the run lock {}", path.display()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let st = stat_fd(file.as_fd()).with_context(|| format!("reading the run lock {}", path.display()))?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !is_file(&st) || st.st_uid != uid || st.st_nlink != 1 {
        bail!(
            "the run lock {} is not a regular file of this user with one link: remove it and run again",
            path.display()
        );
    }
    Ok(file)
}

/// `fstatat` of `name` in `directory`, not following a symlink.
fn stat_at(directory: &OwnedFd, name: &CString) -> std::io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor, C string and room for one stat.
    let rc = unsafe { libc::fstatat(directory.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}
