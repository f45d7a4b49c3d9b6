//! File system calls relative to an open directory, never following a symlink below it.
//!
//! Restore and drills write below a directory the user chose (`--target`, the scratch
//! directory). Whoever can write below it can plant a symlink there, before the restore or while
//! it runs, so a path resolved by the kernel may lead anywhere. Here every entry is reached from
//! its parent's descriptor by one name: directories are opened with `O_NOFOLLOW|O_DIRECTORY`,
//! files are created with `O_EXCL` (which never follows), and links, special files, renames and
//! metadata changes use the `*at` calls with `AT_SYMLINK_NOFOLLOW` semantics. A symlink where a
//! directory is expected is an error (`ELOOP`/`ENOTDIR`) for the caller to handle, never a way
//! out. Only the root directory itself is opened by path, following symlinks: it is the user's
//! choice. Names are single components; anything else is refused.
//!
//! Descriptors also make depth harmless: a path deeper than `PATH_MAX` cannot be opened, a chain
//! of descriptors can. [`Place`] names a directory by the chain of names from the root, so the
//! walks keep no path strings and can reopen a directory they had to close.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Error, ErrorKind, Result};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open directory: the base of every `*at` call below.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// `O_CLOEXEC` always; `O_NOCTTY` so a planted terminal never becomes ours.
const BASE: libc::c_int = libc::O_CLOEXEC | libc::O_NOCTTY;
const DIR_FLAGS: libc::c_int = BASE | libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// `-1` into the errno error, anything else into `Ok`.
pub(crate) fn check(result: libc::c_int) -> Result<libc::c_int> {
    if result < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// One entry name as a C string: never empty, `.`, `..`, or holding `/` or NUL.
pub(crate) fn c_name(name: &[u8]) -> Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Error::new(ErrorKind::InvalidInput, "not a single entry name"));
    }
    CString::new(name).map_err(|_| Error::new(ErrorKind::InvalidInput, "entry name holds a NUL byte"))
}

pub(crate) fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::new(ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Whether an error says "this is a symlink or not a directory" (what `O_NOFOLLOW|O_DIRECTORY`
/// answers for anything but a real directory).
pub fn not_a_directory(error: &Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
}

/// `fstat` of an open descriptor.
/// The files this process may have open at once (the soft `RLIMIT_NOFILE`), if it can tell:
/// what keeps files or directories open by the hundred sizes its caches within it.
pub(crate) fn open_files_limit() -> Option<u64> {
    let mut files = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) } == 0).then_some(files.rlim_cur)
}

pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor and room for one stat.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_file(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// Owner (when `owner` is given), then mode, then mtime (atime left alone) of an open file or
/// directory, in that order: `chown` clears setuid and setgid.
pub fn set_metadata_fd(fd: BorrowedFd<'_>, owner: Option<(u32, u32)>, mode: u32, mtime: (i64, u32)) -> Result<()> {
    let raw = fd.as_raw_fd();
    if let Some((uid, gid)) = owner {
        // SAFETY: plain syscall on a valid descriptor.
        check(unsafe { libc::fchown(raw, uid, gid) }).map_err(|e| context(e, "chown"))?;
    }
    // SAFETY: as above.
    check(unsafe { libc::fchmod(raw, mode as libc::mode_t) }).map_err(|e| context(e, "chmod"))?;
    let times = mtime_only(mtime.0, mtime.1);
    // SAFETY: a valid descriptor and two timespecs, as futimens requires.
    check(unsafe { libc::futimens(raw, times.as_ptr()) }).map_err(|e| context(e, "setting mtime"))?;
    Ok(())
}

/// [`set_metadata_fd`] for an entry just made: an owner or mode it already has (from how it was
/// created) is not set again, as one `fstat` tells, which saves two of the six calls a small
/// file's restore makes. A `chown` it needs is followed by the `chmod` in any case.
pub fn set_made_metadata_fd(fd: BorrowedFd<'_>, owner: Option<(u32, u32)>, mode: u32, mtime: (i64, u32)) -> Result<()> {
    let st = stat_fd(fd)?;
    let owner = owner.filter(|&wanted| (st.st_uid, st.st_gid) != wanted);
    if owner.is_none() && st.st_mode & 0o7777 == mode {
        let times = mtime_only(mtime.0, mtime.1);
        // SAFETY: a valid descriptor and two timespecs, as futimens requires.
        check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map_err(|e| context(e, "setting mtime"))?;
        return Ok(());
    }
    set_metadata_fd(fd, owner, mode, mtime)
}

/// The (atime, mtime) pair for `utimensat`/`futimens` that sets the mtime and leaves the atime.
fn mtime_only(sec: i64, nsec: u32) -> [libc::timespec; 2] {
    [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as libc::c_long },
    ]
}

/// Prefixes an error with the step that failed, keeping its kind.
fn context(error: Error, step: &str) -> Error {
    Error::new(error.kind(), format!("{step}: {error}"))
}

impl Dir {
    /// Opens `path` as a directory. The path is resolved as given, symlinks included: the root
    /// of a restore is the user's choice. Nothing below it is ever resolved by path.
    pub fn open(path: &Path) -> Result<Dir> {
        let c = c_path(path)?;
        // SAFETY: a valid C string.
        let fd = check(unsafe { libc::open(c.as_ptr(), BASE | libc::O_RDONLY | libc::O_DIRECTORY) })?;
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Another descriptor of this directory (a `dup`).
    pub fn try_clone(&self) -> Result<Dir> {
        Ok(Dir { fd: self.fd.try_clone()? })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn open_at(&self, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> Result<OwnedFd> {
        // SAFETY: a valid descriptor and C string.
        let fd = check(unsafe { libc::openat(self.raw(), name.as_ptr(), flags, mode as libc::c_uint) })?;
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens the directory `name` in this one; a symlink or anything but a directory there is an
    /// error ([`not_a_directory`]).
    pub fn open_dir(&self, name: &[u8]) -> Result<Dir> {
        Ok(Dir { fd: self.open_at(&c_name(name)?, DIR_FLAGS, 0)? })
    }

    /// Opens `..` of this directory, if it is the directory that holds this one as `name`
    /// (same device and inode): the way back up without walking down from the root again.
    pub fn open_parent(&self, name: &[u8]) -> Result<Dir> {
        let parent = Dir { fd: self.open_at(c"..", DIR_FLAGS, 0)? };
        let (mine, listed) = (stat_fd(self.as_fd())?, parent.stat(name)?);
        if (mine.st_dev, mine.st_ino) != (listed.st_dev, listed.st_ino) {
            return Err(Error::other("the directory was moved while in use"));
        }
        Ok(parent)
    }

    /// Makes the directory `name` with `mode` (less the umask); an entry of that name, whatever
    /// it is, fails it with `AlreadyExists` and stays.
    pub fn make_new_dir(&self, name: &[u8], mode: u32) -> Result<()> {
        let c = c_name(name)?;
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
    }

    /// The directory `name`, created with `mode` (less the umask) if missing. Anything else in
    /// the way that is not a directory (a symlink, a file) is removed first, never followed.
    pub fn make_dir(&self, name: &[u8], mode: u32) -> Result<Dir> {
        let c = c_name(name)?;
        // A racing writer can swap the entry between the calls: try a few times, then give up.
        let mut last = None;
        for _ in 0..4 {
            // SAFETY: a valid descriptor and C string.
            match check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            match self.open_at(&c, DIR_FLAGS, 0) {
                Ok(fd) => return Ok(Dir { fd }),
                Err(e) if not_a_directory(&e) => {
                    self.remove_non_dir(name)?;
                    last = Some(e);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::other("the entry keeps changing")))
    }

    /// Creates the file `name` for writing with `O_EXCL` and mode 0600, replacing any
    /// non-directory entry there (a symlink in the way is removed, never written through).
    pub fn create_file(&self, name: &[u8]) -> Result<File> {
        self.create_file_mode(name, 0o600)
    }

    /// [`Dir::create_file`] with `mode` (less the umask, or as a default ACL has it).
    pub fn create_file_mode(&self, name: &[u8], mode: u32) -> Result<File> {
        let c = c_name(name)?;
        let flags = BASE | libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        // The first try saves a lookup per file in the usual restore into an empty directory.
        match self.open_at(&c, flags, mode) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.remove_non_dir(name)?;
                self.open_at(&c, flags, mode)
            }
            other => other,
        }
        .map(File::from)
    }

    /// Opens `name` for reading if it is a regular file (`None` for anything else, symlinks
    /// included, or if it is missing). A special file swapped in after the `fstatat` is never
    /// read: `O_NONBLOCK` keeps a FIFO from blocking the open, and the open file is checked again.
    pub fn open_regular(&self, name: &[u8]) -> Result<Option<(File, libc::stat)>> {
        let listed = match self.stat(name) {
            Ok(st) if is_file(&st) => st,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let fd = match self.open_at(&c_name(name)?, BASE | libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOENT)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = stat_fd(fd.as_fd())?;
        if !is_file(&st) || (st.st_dev, st.st_ino) != (listed.st_dev, listed.st_ino) {
            return Ok(None);
        }
        // Regular files ignore O_NONBLOCK; clear it anyway so reads behave as usual.
        // SAFETY: plain fcntl on a valid descriptor.
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) })?;
        Ok(Some((File::from(fd), st)))
    }

    /// `fstatat` without following a symlink.
    pub fn stat(&self, name: &[u8]) -> Result<libc::stat> {
        stat_at(self.as_fd(), name)
    }

    /// Removes the non-directory entry `name`; a missing entry is fine, a directory is an error.
    pub fn remove_non_dir(&self, name: &[u8]) -> Result<()> {
        let c = c_name(name)?;
        // SAFETY: a valid descriptor and C string.
        match check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::EPERM)) && self.holds_dir(name) => {
                Err(Error::new(ErrorKind::AlreadyExists, "a directory is in the way"))
            }
            Err(e) => Err(e),
        }
    }

    fn holds_dir(&self, name: &[u8]) -> bool {
        self.stat(name).is_ok_and(|st| is_dir(&st))
    }

    /// Removes the empty directory `name`.
    pub fn remove_dir(&self, name: &[u8]) -> Result<()> {
        let c = c_name(name)?;
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    /// Runs `make` (which creates `name`); if something is in the way, removes it (unless it is
    /// a directory) and runs `make` once more.
    fn replacing(&self, name: &[u8], make: impl Fn(&CStr) -> libc::c_int) -> Result<()> {
        let c = c_name(name)?;
        match check(make(&c)) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.remove_non_dir(name)?;
                check(make(&c)).map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Creates the symlink `name` pointing at `target`, replacing a non-directory entry there.
    pub fn symlink(&self, target: &[u8], name: &[u8]) -> Result<()> {
        let target =
            CString::new(target).map_err(|_| Error::new(ErrorKind::InvalidInput, "symlink target holds a NUL byte"))?;
        // SAFETY: valid C strings and descriptor.
        self.replacing(name, |c| unsafe { libc::symlinkat(target.as_ptr(), self.raw(), c.as_ptr()) })
    }

    /// Creates a FIFO or device node (`kind`: `S_IFIFO`, `S_IFCHR`, `S_IFBLK`) with mode 0600,
    /// replacing a non-directory entry there.
    pub fn mknod(&self, name: &[u8], kind: libc::mode_t, rdev: u64) -> Result<()> {
        // SAFETY: a valid descriptor and C string.
        self.replacing(name, |c| unsafe { libc::mknodat(self.raw(), c.as_ptr(), kind | 0o600, rdev as libc::dev_t) })
            .map_err(|e| context(e, "mknod"))
    }

    /// Makes `name` in this directory a hard link to `source` in `source_dir`, replacing a
    /// non-directory entry there. A symlink at `source` is linked itself, never followed.
    pub fn hard_link(&self, name: &[u8], source_dir: &Dir, source: &[u8]) -> Result<()> {
        let from = c_name(source)?;
        // SAFETY: valid descriptors and C strings; flags 0 never follow `from`.
        self.replacing(name, |c| unsafe { libc::linkat(source_dir.raw(), from.as_ptr(), self.raw(), c.as_ptr(), 0) })
    }

    /// Renames `from` to `to`, both in this directory; replaces a non-directory at `to`.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Result<()> {
        self.move_to(from, self, to)
    }

    /// Renames `from` in this directory to `to` in `target` (same file system); replaces a
    /// non-directory at `to`. Whatever stands at `from` is moved, a symlink included, never
    /// followed.
    pub fn move_to(&self, from: &[u8], target: &Dir, to: &[u8]) -> Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        // SAFETY: valid descriptors and C strings.
        check(unsafe { libc::renameat(self.raw(), from.as_ptr(), target.raw(), to.as_ptr()) }).map(drop)
    }

    /// Swaps the entries `a` and `b` of this directory in one step (`renameat2` with
    /// `RENAME_EXCHANGE`): at every moment each name holds one of the two, never nothing. Both
    /// must exist; file systems without the flag answer `EINVAL`.
    pub fn exchange(&self, a: &[u8], b: &[u8]) -> Result<()> {
        self.rename2(a, self, b, libc::RENAME_EXCHANGE)
    }

    /// Renames `from` to `to` in this directory unless `to` exists (`RENAME_NOREPLACE`:
    /// `AlreadyExists` then, and nothing moved).
    pub fn rename_new(&self, from: &[u8], to: &[u8]) -> Result<()> {
        self.rename2(from, self, to, libc::RENAME_NOREPLACE)
    }

    /// [`Dir::move_to`] unless `to` exists in `target` (`AlreadyExists` then, nothing moved).
    pub fn move_new_to(&self, from: &[u8], target: &Dir, to: &[u8]) -> Result<()> {
        self.rename2(from, target, to, libc::RENAME_NOREPLACE)
    }

    fn rename2(&self, from: &[u8], target: &Dir, to: &[u8], flags: libc::c_uint) -> Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        // SAFETY: valid descriptors and C strings; the kernel checks the flags.
        let result =
            unsafe { libc::syscall(libc::SYS_renameat2, self.raw(), from.as_ptr(), target.raw(), to.as_ptr(), flags) };
        if result < 0 {
            return Err(Error::last_os_error());
        }
        Ok(())
    }

    /// Flushes the whole file system this directory is on to its disk (`syncfs`): what was
    /// written below it is durable before a rename publishes it.
    pub fn sync_file_system(&self) -> Result<()> {
        // SAFETY: plain syscall on a valid descriptor.
        check(unsafe { libc::syncfs(self.raw()) }).map(drop)
    }

    /// The raw descriptor, for a `/proc/self/fd/N` path to this very directory.
    pub fn raw_fd(&self) -> RawFd {
        self.raw()
    }

    /// Creates the directory `name` (mode 0700; an existing entry is an error) and opens it.
    /// What was opened must be private to this process's user, owned by it and closed to
    /// everyone else: a directory that someone who can write here swapped in between the calls
    /// is refused. Nobody else (but root) can then add, remove or rename anything in it.
    pub fn make_private_dir(&self, name: &[u8]) -> Result<Dir> {
        let c = c_name(name)?;
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), 0o700) })?;
        let dir = Dir { fd: self.open_at(&c, DIR_FLAGS, 0)? };
        let st = stat_fd(dir.as_fd())?;
        // SAFETY: geteuid cannot fail.
        if st.st_uid != unsafe { libc::geteuid() } || st.st_mode & 0o077 != 0 {
            return Err(Error::other(format!(
                "the new directory is owned by uid {} with mode {:o}, not private: replaced while it was made, \
                 or the file system does not keep owners",
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        // The umask may have taken the owner's own bits.
        // SAFETY: plain syscall on a valid descriptor.
        check(unsafe { libc::fchmod(dir.raw(), 0o700) })?;
        Ok(dir)
    }

    /// `/proc/self/fd/N/name`: a path to the entry `name` of this directory for a library that
    /// takes only paths (SQLite). The kernel resolves it through this descriptor, whatever was
    /// renamed or planted above the directory since; only `name` itself is looked up, so the
    /// path is as safe as this directory is private, and the opener must not follow a symlink
    /// at `name` (SQLite opens with `O_NOFOLLOW`). Needs /proc.
    pub fn proc_path(&self, name: &[u8]) -> Result<PathBuf> {
        c_name(name)?;
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", self.raw()));
        path.push(std::ffi::OsStr::from_bytes(name));
        Ok(path)
    }

    /// `fsync` of the directory itself, so that renames in it are durable.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: plain syscall on a valid descriptor.
        check(unsafe { libc::fsync(self.raw()) }).map(drop)
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: &[u8]) -> Result<Vec<u8>> {
        read_link_at(self.as_fd(), name)
    }

    /// Owner (when given), mode (unless `symlink`: a symlink's mode cannot be set), then mtime of
    /// the entry `name` itself, never of what a symlink there points to.
    pub fn set_metadata(
        &self,
        name: &[u8],
        owner: Option<(u32, u32)>,
        mode: Option<u32>,
        mtime: (i64, u32),
    ) -> Result<()> {
        let c = c_name(name)?;
        if let Some((uid, gid)) = owner {
            // SAFETY: a valid descriptor and C string.
            check(unsafe { libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
                .map_err(|e| context(e, "chown"))?;
        }
        if let Some(mode) = mode {
            self.chmod_nofollow(&c, mode).map_err(|e| context(e, "chmod"))?;
        }
        let times = mtime_only(mtime.0, mtime.1);
        // SAFETY: a valid descriptor, C string and two timespecs.
        check(unsafe { libc::utimensat(self.raw(), c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
            .map_err(|e| context(e, "setting mtime"))?;
        Ok(())
    }

    /// `chmod` of the entry itself: `fchmodat2` with `AT_SYMLINK_NOFOLLOW` (Linux 6.6), or on an
    /// older kernel the entry opened with `O_PATH|O_NOFOLLOW`, checked not to be a symlink, and
    /// changed through its `/proc/self/fd` link, which names that very inode.
    fn chmod_nofollow(&self, name: &CStr, mode: u32) -> Result<()> {
        // SAFETY: a valid descriptor and C string; the kernel checks the rest.
        let result = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                self.raw(),
                name.as_ptr(),
                mode as libc::c_uint,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if result == 0 {
            return Ok(());
        }
        let error = Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOSYS) {
            return Err(error);
        }
        let fd = self.open_at(name, BASE | libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        if stat_fd(fd.as_fd())?.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(Error::new(ErrorKind::Unsupported, "a symlink's mode cannot be set"));
        }
        let link = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
        // SAFETY: a valid C string.
        check(unsafe { libc::chmod(link.as_ptr(), mode as libc::mode_t) }).map(drop)
    }

    /// The names in this directory (without `.` and `..`).
    pub fn names(&self) -> Result<Vec<Vec<u8>>> {
        names_in(self.as_fd())
    }
}

/// `fstatat(dir, name)` without following a symlink.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<libc::stat> {
    let c = c_name(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor, C string and room for one stat.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    // SAFETY: fstatat succeeded.
    Ok(unsafe { st.assume_init() })
}

/// The target of the symlink `name` in `dir`.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>> {
    let c = c_name(name)?;
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: a valid descriptor, C string and buffer of the given length.
        let n = unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n < 0 {
            return Err(Error::last_os_error());
        }
        if (n as usize) < buffer.len() {
            buffer.truncate(n as usize);
            return Ok(buffer);
        }
        buffer.resize(buffer.len() * 2, 0);
    }
}

/// The names in the directory `dir` (without `.` and `..`), in the order the file system gives,
/// read through a duplicate descriptor.
pub(crate) fn names_in(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>> {
    // SAFETY: plain syscall on a valid descriptor.
    let dup = check(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is ours; fdopendir takes it over (closedir closes it).
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let error = Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(error);
    }
    // SAFETY: a fresh stream; the shared offset of a duplicate starts wherever the original
    // is, so rewind it.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; reset it to tell the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid stream.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let error = Error::last_os_error();
            break if error.raw_os_error() == Some(0) { Ok(()) } else { Err(error) };
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: a valid stream, closed once.
    unsafe { libc::closedir(stream) };
    result.map(|_| names)
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A directory below a root, named by the chain of entry names that leads to it from the root.
/// Walks keep these instead of paths: a path is resolved anew by the kernel every time, through
/// whatever was planted since, and cannot be resolved at all beyond `PATH_MAX`.
#[derive(Debug)]
pub struct Place {
    parent: Option<Arc<Place>>,
    name: Vec<u8>,
    depth: usize,
}

impl Place {
    /// The root itself.
    pub fn root() -> Arc<Place> {
        Arc::new(Place { parent: None, name: Vec::new(), depth: 0 })
    }

    pub fn child(self: &Arc<Place>, name: &[u8]) -> Arc<Place> {
        Arc::new(Place { parent: Some(self.clone()), name: name.to_vec(), depth: self.depth + 1 })
    }

    /// Number of names from the root (0 for the root).
    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }

    pub fn parent(&self) -> Option<&Arc<Place>> {
        self.parent.as_ref()
    }

    /// The names from the root down to this place.
    pub fn names(&self) -> Vec<&[u8]> {
        let mut names = Vec::with_capacity(self.depth);
        let mut at = self;
        while let Some(parent) = &at.parent {
            names.push(at.name.as_slice());
            at = parent;
        }
        names.reverse();
        names
    }

    /// `root` joined with the names: for messages only, never to be opened.
    pub fn path(&self, root: &Path) -> PathBuf {
        let mut path = root.to_path_buf();
        self.names().into_iter().for_each(|name| path.push(std::ffi::OsStr::from_bytes(name)));
        path
    }

    /// Opens this directory from the open `root`, one name at a time, following no symlink.
    pub fn open(&self, root: &Dir) -> Result<Dir> {
        let mut names = self.names().into_iter();
        let Some(first) = names.next() else { return Ok(Dir { fd: root.fd.try_clone()? }) };
        let mut dir = root.open_dir(first)?;
        for name in names {
            dir = dir.open_dir(name)?;
        }
        Ok(dir)
    }
}

impl Drop for Place {
    /// Drops a long chain of parents one at a time: the default drop recurses once per level
    /// and overflows the stack on a deep tree.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(parent) = next {
            next = match Arc::try_unwrap(parent) {
                Ok(mut only) => only.parent.take(),
                Err(_) => None,
            };
        }
    }
}

/// Removes the directory `path` and everything below it, however deep, without following a
/// symlink: entries are removed through their parent's descriptor. Directories that refuse
/// (read-only ones left by a restore) are made writable first. Only a handful of descriptors
/// stay open: going back up uses `..`, checked to be the directory that was left.
pub fn remove_tree(path: &Path) -> Result<()> {
    remove_tree_of(path, None)
}

/// [`remove_tree`], only if `path` is the directory `identity` (device, inode): one made by the
/// caller, whose name others who can write its parent could have given to another directory.
pub fn remove_tree_if(path: &Path, identity: (u64, u64)) -> Result<()> {
    remove_tree_of(path, Some(identity))
}

fn remove_tree_of(path: &Path, identity: Option<(u64, u64)>) -> Result<()> {
    /// One directory being emptied: its name in its parent, its descriptor (dropped for all but
    /// the innermost few), and the names in it still to remove.
    struct Level {
        name: Vec<u8>,
        dir: Option<Dir>,
        pending: Vec<Vec<u8>>,
    }
    const OPEN_LEVELS: usize = 16;
    let top = Dir::open_nofollow(path)?;
    if let Some(identity) = identity {
        let st = stat_fd(top.as_fd())?;
        if (st.st_dev, st.st_ino) != identity {
            return Err(Error::other(format!("{} is no longer the directory made there", path.display())));
        }
    }
    let mut stack = vec![Level { name: Vec::new(), pending: top.names()?, dir: Some(top) }];
    while let Some(level) = stack.last_mut() {
        let dir = level.dir.as_ref().expect("the innermost level is open");
        if let Some(name) = level.pending.pop() {
            match dir.stat(&name) {
                Ok(st) if is_dir(&st) => {
                    let child = dir.open_writable(&name)?;
                    let pending = child.names()?;
                    stack.push(Level { name, dir: Some(child), pending });
                    if stack.len() > OPEN_LEVELS {
                        let index = stack.len() - 1 - OPEN_LEVELS;
                        stack[index].dir = None;
                    }
                }
                Ok(_) => dir.remove_non_dir(&name)?,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let done = stack.pop().expect("not empty");
        let Some(parent) = stack.last_mut() else { break };
        if parent.dir.is_none() {
            let dir = done.dir.as_ref().expect("the innermost level is open");
            parent.dir = Some(dir.open_parent(&done.name)?);
        }
        parent.dir.as_ref().expect("just opened").remove_dir(&done.name)?;
    }
    std::fs::remove_dir(path)
}

impl Dir {
    /// Opens `path` as a directory without following a symlink at its last component.
    fn open_nofollow(path: &Path) -> Result<Dir> {
        let c = c_path(path)?;
        // SAFETY: a valid C string.
        let fd = check(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let dir = Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) } };
        dir.make_writable()?;
        Ok(dir)
    }

    /// Opens the directory `name` to remove what it holds: made readable, writable and
    /// searchable by its owner first if it was not.
    fn open_writable(&self, name: &[u8]) -> Result<Dir> {
        let dir = match self.open_dir(name) {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                self.chmod_nofollow(&c_name(name)?, 0o700)?;
                self.open_dir(name)?
            }
            other => other?,
        };
        dir.make_writable()?;
        Ok(dir)
    }

    fn make_writable(&self) -> Result<()> {
        let st = stat_fd(self.as_fd())?;
        if st.st_mode & 0o700 != 0o700 {
            // SAFETY: plain syscall on a valid descriptor.
            check(unsafe { libc::fchmod(self.raw(), (st.st_mode & 0o7777) as libc::mode_t | 0o700) })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("cairn-fs-at-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    #[test]
    fn nothing_below_the_root_is_followed() {
        let root = scratch("follow");
        let outside = root.join("outside");
        std::fs::create_dir_all(root.join("inside")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("inside/link")).unwrap();
        let inside = Dir::open(&root.join("inside")).unwrap();
        assert!(not_a_directory(&inside.open_dir(b"link").unwrap_err()));
        // make_dir replaces the symlink with a directory; create_file writes a new file.
        let made = inside.make_dir(b"link", 0o700).unwrap();
        made.create_file(b"file").unwrap();
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        symlink(outside.join("victim"), root.join("inside/victim")).unwrap();
        inside.create_file(b"victim").unwrap();
        assert!(std::fs::symlink_metadata(outside.join("victim")).is_err());
        assert!(inside.open_regular(b"link").unwrap().is_none(), "a directory is not a regular file");
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(inside.stat(bad).unwrap_err().kind(), ErrorKind::InvalidInput);
        }
        remove_tree(&root).unwrap();
        assert!(std::fs::symlink_metadata(&root).is_err());
    }

    #[test]
    fn remove_tree_if_removes_only_the_directory_it_names() {
        let root = scratch("identity");
        std::fs::create_dir_all(root.join("made/sub")).unwrap();
        let st = std::fs::metadata(root.join("made")).unwrap();
        let made = (std::os::unix::fs::MetadataExt::dev(&st), std::os::unix::fs::MetadataExt::ino(&st));
        // Its name given to another directory meanwhile: that one stays, whole.
        std::fs::rename(root.join("made"), root.join("moved")).unwrap();
        std::fs::create_dir_all(root.join("made/precious")).unwrap();
        assert!(remove_tree_if(&root.join("made"), made).is_err());
        assert!(root.join("made/precious").is_dir());
        remove_tree_if(&root.join("moved"), made).unwrap();
        assert!(std::fs::symlink_metadata(root.join("moved")).is_err());
        remove_tree(&root).unwrap();
    }

    #[test]
    fn remove_tree_handles_depth_beyond_path_max_and_read_only_directories() {
        let root = scratch("deep");
        let mut dir = Dir::open(&root).unwrap();
        for _ in 0..5000 {
            dir.create_file(b"file").unwrap();
            let next = dir.make_dir(b"d", 0o700).unwrap();
            dir.chmod_nofollow(c"d", 0o500).unwrap();
            dir = next;
        }
        drop(dir);
        remove_tree(&root).unwrap();
        assert!(std::fs::symlink_metadata(&root).is_err());
    }

    #[test]
    fn a_place_reopens_its_directory_and_names_its_path() {
        let root = scratch("place");
        let top = Dir::open(&root).unwrap();
        top.make_dir(b"a", 0o700).unwrap().make_dir(b"b", 0o700).unwrap();
        let place = Place::root().child(b"a").child(b"b");
        assert_eq!(place.path(Path::new("/r")), Path::new("/r/a/b"));
        let b = place.open(&top).unwrap();
        let a = b.open_parent(b"b").unwrap();
        assert!(a.stat(b"b").is_ok());
        std::fs::remove_dir(root.join("a/b")).unwrap();
        symlink("/", root.join("a/b")).unwrap();
        assert!(not_a_directory(&place.open(&top).unwrap_err()));
        remove_tree(&root).unwrap();
    }
}
