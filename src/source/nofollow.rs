//! Reaching a source tree's entries only through their directory's descriptor, never through a
//! symlink: a directory is opened with `openat(parent, name, O_DIRECTORY | O_NOFOLLOW)`, listed
//! through that descriptor, its entries stat'ed with `fstatat(AT_SYMLINK_NOFOLLOW)` and opened
//! with `openat(O_NOFOLLOW)`, and what was opened must be what was listed (device and inode).
//!
//! Why: a path is looked up again at every use, so a directory renamed away and replaced by a
//! symlink between two uses would lead the walk outside the source. A descriptor stays on the
//! directory it was opened on, wherever that directory is moved. Only the source roots given on
//! the command line are opened by path (the user's choice, symlinks included).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::format::tree::Metadata;
use crate::fs_at::{c_name, c_path, check, names_in, read_link_at, stat_at};

/// How a directory is opened in its parent: never through a symlink.
const SUBDIRECTORY: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// An open directory of the source tree.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// What stands in a directory under a name, from `fstatat` or `fstat`.
#[derive(Clone, Copy)]
pub struct Stat(libc::stat);

/// The types of entry `lstat` tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl Kind {
    /// The kind with its article, for messages: "a symlink".
    pub fn described(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Unknown => "a file of unknown type",
        }
    }
}

/// Why an entry could not be opened as what it was listed as.
#[derive(Debug)]
pub enum OpenError {
    /// Something else stands under the name now: a symlink, another type, or another file or
    /// directory (a different device or inode).
    Replaced,
    /// The name is gone.
    Gone,
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => OpenError::Replaced,
            Some(libc::ENOENT) => OpenError::Gone,
            _ => OpenError::Io(e),
        }
    }
}

impl Dir {
    /// Opens a source root by path. Symlinks among the path's parents are followed (the user
    /// chose the path); the last component is followed only when `follow` is set.
    pub fn open(path: &Path, follow: bool) -> io::Result<Dir> {
        let c_path = c_path(path)?;
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | nofollow;
        // SAFETY: a valid NUL-terminated path; the descriptor returned is owned from here on.
        let fd = check(unsafe { libc::open(c_path.as_ptr(), flags) })?;
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(Dir { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Opens the directory at the absolute, normalised `path` one component at a time from `/`,
    /// following no symlink on the way: one anywhere in it is an error (`ELOOP` or `ENOTDIR`).
    pub fn open_beneath_root(path: &Path) -> io::Result<Dir> {
        let mut dir = Dir::open(Path::new("/"), false)?;
        for component in path.components() {
            match component {
                std::path::Component::RootDir => {}
                std::path::Component::Normal(name) => dir = Dir { fd: dir.openat(name.as_bytes(), SUBDIRECTORY)? },
                _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute, normalised path")),
            }
        }
        Ok(dir)
    }

    /// A source root opened by the caller: an in-place restore's target, which is archived as
    /// the directory the restore will write into, whatever its name leads to by then.
    pub fn opened(fd: OwnedFd) -> Dir {
        Dir { fd }
    }

    /// Opens the subdirectory `name`, which was listed as `listed`.
    pub fn open_dir(&self, name: &[u8], listed: &Stat) -> Result<Dir, OpenError> {
        let fd = self.openat(name, SUBDIRECTORY)?;
        let dir = Dir { fd };
        let opened = fstat(&dir.fd)?;
        if !opened.same_file(listed) {
            return Err(OpenError::Replaced);
        }
        Ok(dir)
    }

    /// Opens the entry `name` for reading, never through a symlink, with extra `flags`
    /// (`O_NONBLOCK`, `O_NOATIME`). The caller checks what it opened.
    pub fn open_file(&self, name: &[u8], flags: libc::c_int) -> io::Result<File> {
        let fd = self.openat(name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags)?;
        Ok(File::from(fd))
    }

    fn openat(&self, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
        let c_name = c_name(name)?;
        // SAFETY: a valid descriptor and NUL-terminated name; the result is owned from here on.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c_name.as_ptr(), flags) })?;
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The entry `name` as `lstat` sees it: a symlink is not followed.
    pub fn stat(&self, name: &[u8]) -> io::Result<Stat> {
        stat_at(self.fd.as_fd(), name).map(Stat)
    }

    /// The names in the directory, without `.` and `..`, in the order the file system gives.
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        names_in(self.fd.as_fd())
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        read_link_at(self.fd.as_fd(), name)
    }

    /// A path to the entry `name` that the kernel resolves through this descriptor, not through
    /// the directory's own path: for libraries that open files by path (SQLite). Its last
    /// component must still be opened without following symlinks.
    pub fn path_of(&self, name: &[u8]) -> PathBuf {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        path.push(std::ffi::OsStr::from_bytes(name));
        path
    }
}

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// The status of an open file or directory.
pub fn fstat(fd: &impl AsRawFd) -> io::Result<Stat> {
    // SAFETY: zeroed memory is a valid `stat`; fstat fills it or fails.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out-pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) })?;
    Ok(Stat(stat))
}

impl Stat {
    pub fn kind(&self) -> Kind {
        match self.0.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => Kind::Unknown,
        }
    }

    pub fn is_file(&self) -> bool {
        self.kind() == Kind::File
    }

    pub fn dev(&self) -> u64 {
        self.0.st_dev
    }

    pub fn ino(&self) -> u64 {
        self.0.st_ino
    }

    /// 512-byte blocks allocated: fewer than the size needs for a file with holes.
    pub fn blocks(&self) -> u64 {
        self.0.st_blocks as u64
    }

    /// Bytes of content, for a regular file.
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }

    pub fn rdev(&self) -> u64 {
        self.0.st_rdev
    }

    /// Whether both name the same file: equal device and inode.
    pub fn same_file(&self, other: &Stat) -> bool {
        (self.dev(), self.ino()) == (other.dev(), other.ino())
    }

    /// Whether a file's status shows no change between two looks at it: the same file, with
    /// the same size, mtime and ctime (any write or truncation moves mtime; a metadata change
    /// moves ctime). A change within one tick of the file system's clock is not seen.
    pub fn unchanged(&self, later: &Stat) -> bool {
        let (a, b) = (&self.0, &later.0);
        self.same_file(later)
            && a.st_size == b.st_size
            && (a.st_mtime, a.st_mtime_nsec) == (b.st_mtime, b.st_mtime_nsec)
            && (a.st_ctime, a.st_ctime_nsec) == (b.st_ctime, b.st_ctime_nsec)
    }

    /// When the file's content was last modified; `None` for a time a `SystemTime` cannot hold.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        let (sec, nsec) = (self.0.st_mtime, self.0.st_mtime_nsec);
        let whole = std::time::Duration::from_secs(sec.unsigned_abs());
        let at = match sec >= 0 {
            true => std::time::UNIX_EPOCH.checked_add(whole)?,
            false => std::time::UNIX_EPOCH.checked_sub(whole)?,
        };
        at.checked_add(std::time::Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64))
    }

    /// The metadata a tree node records ([`crate::format::tree`]).
    pub fn metadata(&self) -> Metadata {
        let s = &self.0;
        Metadata {
            mode: s.st_mode & 0o7777,
            uid: s.st_uid,
            gid: s.st_gid,
            mtime_sec: s.st_mtime,
            mtime_nsec: s.st_mtime_nsec as u32,
            ctime_sec: s.st_ctime,
            ctime_nsec: s.st_ctime_nsec as u32,
            dev: s.st_dev,
            ino: s.st_ino,
            nlink: s.st_nlink,
            size: if self.is_file() { self.size() } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cairn-nofollow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_symlink_anywhere_on_the_way_is_not_followed_beneath_root() {
        let root = scratch("beneath");
        std::fs::create_dir_all(root.join("real/inner")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        assert!(Dir::open_beneath_root(&root.join("real/inner")).is_ok());
        // Followed by a plain open, refused here: as a parent and as the last component.
        assert!(Dir::open(&root.join("link/inner"), false).is_ok());
        for path in [root.join("link/inner"), root.join("link")] {
            let e = Dir::open_beneath_root(&path).unwrap_err();
            assert!(matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)), "{path:?}: {e}");
        }
        assert!(Dir::open_beneath_root(Path::new("relative")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_directory_swapped_after_its_listing_is_not_opened() {
        let dir = scratch("swap");
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        let root = Dir::open(&dir, false).unwrap();
        let listed = root.stat(b"d").unwrap();
        assert_eq!(listed.kind(), Kind::Dir);
        assert!(root.open_dir(b"d", &listed).is_ok());

        // Swapped for a symlink to another directory: not followed.
        std::fs::rename(dir.join("d"), dir.join("d.away")).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("d")).unwrap();
        assert!(matches!(root.open_dir(b"d", &listed), Err(OpenError::Replaced)));
        assert_eq!(root.stat(b"d").unwrap().kind(), Kind::Symlink);
        assert!(root.open_file(b"d", 0).is_err(), "O_NOFOLLOW");

        // Swapped for another directory: a different inode.
        std::fs::remove_file(dir.join("d")).unwrap();
        std::fs::rename(dir.join("outside"), dir.join("d")).unwrap();
        assert!(matches!(root.open_dir(b"d", &listed), Err(OpenError::Replaced)));

        // Gone.
        std::fs::remove_dir(dir.join("d")).unwrap();
        assert!(matches!(root.open_dir(b"d", &listed), Err(OpenError::Gone)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_opened_is_read_wherever_it_moves() {
        let dir = scratch("moved");
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/f"), b"inside").unwrap();
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::write(dir.join("outside/f"), b"outside").unwrap();
        std::fs::write(dir.join("outside/g"), b"outside").unwrap();
        let root = Dir::open(&dir, false).unwrap();
        let d = root.open_dir(b"d", &root.stat(b"d").unwrap()).unwrap();
        std::fs::rename(dir.join("d"), dir.join("d.away")).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("d")).unwrap();
        assert_eq!(d.names().unwrap(), [b"f".to_vec()]);
        assert_eq!(d.names().unwrap(), [b"f".to_vec()], "a second listing starts at the top");
        assert_eq!(std::io::read_to_string(d.open_file(b"f", 0).unwrap()).unwrap(), "inside");
        assert_eq!(std::fs::read(d.path_of(b"f")).unwrap(), b"inside");
        assert!(d.stat(b"g").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_and_status() {
        let dir = scratch("links");
        std::os::unix::fs::symlink("a/target/of/some/length", dir.join("link")).unwrap();
        let long = "x/".repeat(300);
        std::os::unix::fs::symlink(&long, dir.join("long")).unwrap();
        std::fs::write(dir.join("file"), b"12345").unwrap();
        let root = Dir::open(&dir, true).unwrap();
        assert_eq!(root.read_link(b"link").unwrap(), b"a/target/of/some/length");
        assert_eq!(root.read_link(b"long").unwrap(), long.as_bytes());
        let stat = root.stat(b"file").unwrap();
        assert_eq!((stat.kind(), stat.size(), stat.metadata().size), (Kind::File, 5, 5));
        let file = root.open_file(b"file", 0).unwrap();
        let opened = fstat(&file).unwrap();
        assert!(opened.same_file(&stat) && opened.unchanged(&stat));
        std::fs::write(dir.join("file"), b"123456").unwrap();
        assert!(!opened.unchanged(&fstat(&file).unwrap()));
        assert!(root.stat(b"missing").is_err_and(|e| e.kind() == io::ErrorKind::NotFound));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
