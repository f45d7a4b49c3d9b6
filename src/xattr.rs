//! Extended attributes (POSIX ACLs, file capabilities, SELinux labels and `user.*` attributes)
//! read from and written to one file system entry, never through a symlink at it.
//!
//! Why by `/proc/self/fd/<dir>/<name>` with the `l*xattr` calls: the `f*xattr` calls need a
//! descriptor open for reading or writing, which a symlink, a socket or a device cannot safely
//! be given (opening a tape rewinds it), and an `O_PATH` descriptor does not take them. Through
//! the directory's `/proc` link the kernel reaches the directory by its descriptor, wherever it
//! has been moved, and looks up only `name` there; the `l` calls never follow `name` itself.
//! So this is as safe as the `*at` calls of [`crate::fs_at`]; it needs /proc mounted. Files and
//! directories still open are read and written through their descriptors. Where the kernel has
//! `listxattrat` and `getxattrat` (Linux 6.13), an entry of an open directory is read with them
//! instead ([`Target::At`]): the same lookup of one name without following it, but without the
//! walk through /proc, which made every unchanged re-snapshot 1.5x slower.
//!
//! ACLs are the `system.posix_acl_access` and `system.posix_acl_default` attributes, kept raw in
//! the kernel's binary form, as restic and borg keep them. The store-format page is tree.md,
//! "Extended attributes".

use std::ffi::{CStr, CString};
use std::io::{Error, ErrorKind, Result};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::format::tree::{valid_xattr_name, Xattr, XATTR_VALUE_MAX};

/// What the attributes are read from or written to.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// The entry at a path, the last component never followed.
    Path(&'a CStr),
    /// An open file or directory.
    Fd(RawFd),
    /// The entry `name` of the open directory, never followed (by its `/proc` link where the
    /// kernel lacks the `*xattrat` calls).
    At(RawFd, &'a CStr),
}

/// The system call numbers of `getxattrat` and `listxattrat`: one number on every architecture
/// (system calls added since Linux 5.1 share one table).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Set once the kernel answered `ENOSYS` to an `*xattrat` call: [`Target::At`] then goes by /proc.
static NO_XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `getxattrat`'s argument block (`struct xattr_args`).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Runs `at`, an `*xattrat` call, or where the kernel has none (or a filter refuses it)
/// `by_proc` with the entry's /proc path.
fn at_or_by_proc(dir: RawFd, name: &CStr, at: impl Fn() -> isize, by_proc: impl Fn(&CStr) -> isize) -> isize {
    use std::sync::atomic::Ordering::Relaxed;
    if !NO_XATTRAT.load(Relaxed) {
        let result = at();
        match (result >= 0, Error::last_os_error().raw_os_error()) {
            (true, _) => return result,
            (false, Some(libc::ENOSYS)) => NO_XATTRAT.store(true, Relaxed),
            // A seccomp filter that refuses system calls it does not know (older container
            // runtimes): /proc for this one; what /proc says stands.
            (false, Some(libc::EPERM)) => {}
            (false, _) => return result,
        }
    }
    match proc_path(dir, name.to_bytes()) {
        Ok(path) => by_proc(&path),
        Err(_) => {
            // SAFETY: sets this thread's errno, which the caller reads.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            -1
        }
    }
}

/// How often a list or a value that grew between asking its size and reading it is asked again.
const ATTEMPTS: u32 = 8;

/// The path `/proc/self/fd/<dir>/<name>` for the entry `name` of the open directory `dir`.
pub fn proc_path(dir: RawFd, name: &[u8]) -> Result<CString> {
    let path = [format!("/proc/self/fd/{dir}/").as_bytes(), name].concat();
    CString::new(path).map_err(|_| Error::new(ErrorKind::InvalidInput, "entry name holds a NUL byte"))
}

/// A path as a C string, for [`Target::Path`].
pub fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::new(ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Whether an error means "this file system keeps no extended attributes (of this kind)".
pub fn unsupported(error: &Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

/// Whether the entry's file system keeps extended attributes (`false` where listing them says
/// `ENOTSUP`).
pub fn supported(target: Target<'_>) -> bool {
    let listed = list(target, std::ptr::null_mut(), 0);
    !(listed < 0 && unsupported(&Error::last_os_error()))
}

/// The entry's extended attributes, sorted by name. A file system without them gives none, and
/// so does an attribute removed while they are read.
pub fn read(target: Target<'_>) -> Result<Vec<Xattr>> {
    let names = match sized(|buffer, len| list(target, buffer, len)) {
        Ok(names) => names,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !valid_xattr_name(name) {
            return Err(Error::new(ErrorKind::InvalidData, "an extended attribute name longer than 255 bytes"));
        }
        let c_name = CString::new(name).expect("split at NUL bytes");
        let value = match sized(|buffer, len| get(target, &c_name, buffer, len)) {
            Ok(value) => value,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue, // removed meanwhile
            Err(e) => return Err(Error::new(e.kind(), format!("{}: {e}", String::from_utf8_lossy(name)))),
        };
        if value.len() > XATTR_VALUE_MAX {
            return Err(Error::new(ErrorKind::InvalidData, "an extended attribute value larger than 64 KiB"));
        }
        xattrs.push(Xattr { name: name.to_vec(), value });
    }
    xattrs.sort_unstable();
    xattrs.dedup_by(|a, b| a.name == b.name);
    Ok(xattrs)
}

/// Whether the entry `name` of the open directory `dir` lacks one of the extended attributes
/// `wanted`, or holds another value. Attributes it has beyond them do not count: restore never removes any. Nor do
/// those a restore could never set here: none where the file system keeps none, `trusted.*` and
/// `security.*` unless restoring as root; else every in-place restore would replace the entry
/// again, to the same end.
pub fn differ(dir: RawFd, name: &[u8], wanted: &[Xattr]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let settable = |x: &&Xattr| root || !(x.name.starts_with(b"trusted.") || x.name.starts_with(b"security."));
    let mut wanted = wanted.iter().filter(settable).peekable();
    if wanted.peek().is_none() {
        return false;
    }
    let Ok(name) = CString::new(name) else { return true };
    let entry = Target::At(dir, &name);
    match read(entry) {
        Ok(found) if found.is_empty() && !supported(entry) => false,
        Ok(found) => wanted.any(|want| found.binary_search(want).is_err()),
        Err(_) => true,
    }
}

/// Sets each attribute; returns those that could not be set, with why. Attributes the entry
/// has and `xattrs` lacks are left as they are (a label the file system's policy gave it, an
/// ACL inherited from its directory).
pub fn write(target: Target<'_>, xattrs: &[Xattr]) -> Vec<(Vec<u8>, Error)> {
    let mut failed = Vec::new();
    for xattr in xattrs {
        let Ok(name) = CString::new(xattr.name.as_slice()) else {
            failed.push((xattr.name.clone(), Error::new(ErrorKind::InvalidInput, "name holds a NUL byte")));
            continue;
        };
        if let Err(e) = set(target, &name, &xattr.value) {
            failed.push((xattr.name.clone(), e));
        }
    }
    failed
}

/// Calls `call` with no buffer to learn the size, then with a buffer of that size, again while
/// the size grows meanwhile (`ERANGE`).
fn sized(call: impl Fn(*mut libc::c_char, usize) -> isize) -> Result<Vec<u8>> {
    for _ in 0..ATTEMPTS {
        let len = checked(call(std::ptr::null_mut(), 0))?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buffer = vec![0u8; len];
        match checked(call(buffer.as_mut_ptr().cast(), len)) {
            Ok(got) => {
                buffer.truncate(got);
                return Ok(buffer);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::other("extended attributes kept changing while being read"))
}

fn checked(result: isize) -> Result<usize> {
    usize::try_from(result).map_err(|_| Error::last_os_error())
}

fn list(target: Target<'_>, buffer: *mut libc::c_char, len: usize) -> isize {
    // SAFETY: a valid C string or descriptor, and a buffer of `len` bytes (or none, with 0).
    unsafe {
        match target {
            Target::Path(path) => libc::llistxattr(path.as_ptr(), buffer, len),
            Target::Fd(fd) => libc::flistxattr(fd, buffer, len),
            Target::At(dir, entry) => at_or_by_proc(
                dir,
                entry,
                || libc::syscall(SYS_LISTXATTRAT, dir, entry.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, buffer, len) as isize,
                |path| libc::llistxattr(path.as_ptr(), buffer, len),
            ),
        }
    }
}

fn get(target: Target<'_>, name: &CStr, buffer: *mut libc::c_char, len: usize) -> isize {
    // SAFETY: as in `list`, and a valid C string for the name.
    unsafe {
        match target {
            Target::Path(path) => libc::lgetxattr(path.as_ptr(), name.as_ptr(), buffer.cast(), len),
            Target::Fd(fd) => libc::fgetxattr(fd, name.as_ptr(), buffer.cast(), len),
            Target::At(dir, entry) => at_or_by_proc(
                dir,
                entry,
                || {
                    let args = XattrArgs { value: buffer as u64, size: len.min(u32::MAX as usize) as u32, flags: 0 };
                    let size = std::mem::size_of::<XattrArgs>();
                    let flags = libc::AT_SYMLINK_NOFOLLOW;
                    libc::syscall(SYS_GETXATTRAT, dir, entry.as_ptr(), flags, name.as_ptr(), &args, size) as isize
                },
                |path| libc::lgetxattr(path.as_ptr(), name.as_ptr(), buffer.cast(), len),
            ),
        }
    }
}

fn set(target: Target<'_>, name: &CStr, value: &[u8]) -> Result<()> {
    let (data, len) = (value.as_ptr().cast(), value.len());
    // SAFETY: valid C strings or descriptor, and `len` bytes at `data`.
    let result = unsafe {
        match target {
            Target::Path(path) => libc::lsetxattr(path.as_ptr(), name.as_ptr(), data, len, 0),
            Target::Fd(fd) => libc::fsetxattr(fd, name.as_ptr(), data, len, 0),
            // Restores are not where the /proc walk costs: one way for all kernels.
            Target::At(dir, entry) => {
                let path = proc_path(dir, entry.to_bytes())?;
                libc::lsetxattr(path.as_ptr(), name.as_ptr(), data, len, 0)
            }
        }
    };
    if result < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cairn-xattr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn xattr(name: &[u8], value: &[u8]) -> Xattr {
        Xattr { name: name.to_vec(), value: value.to_vec() }
    }

    #[test]
    fn written_attributes_read_back_sorted_through_the_directory_and_never_through_a_symlink() {
        let dir = scratch("round");
        std::fs::write(dir.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.join("link")).unwrap();
        let opened = std::fs::File::open(&dir).unwrap();
        let file = proc_path(opened.as_raw_fd(), b"f").unwrap();
        // ext4 keeps all of a file's attributes in one block (4 KiB) unless it has `ea_inode`.
        let big = vec![0u8; 3000];
        let wanted = [xattr(b"user.z", b""), xattr(b"user.\xff\x01", &big), xattr(b"user.a", b"\x00\x01")];
        let failed = write(Target::Path(&file), &wanted);
        if failed.iter().any(|(_, e)| unsupported(e)) {
            eprintln!("skipped: {} keeps no user attributes", dir.display());
            return;
        }
        assert!(failed.is_empty(), "{failed:?}");
        let mut sorted = wanted.to_vec();
        sorted.sort();
        assert_eq!(read(Target::Path(&file)).unwrap(), sorted);
        let through_fd = std::fs::File::open(dir.join("f")).unwrap();
        assert_eq!(read(Target::Fd(through_fd.as_raw_fd())).unwrap(), sorted);
        // The link's own attributes, not its target's: Linux allows no user.* on a link.
        let link = proc_path(opened.as_raw_fd(), b"link").unwrap();
        assert_eq!(read(Target::Path(&link)).unwrap(), []);
        let refused = write(Target::Path(&link), &[xattr(b"user.a", b"1")]);
        assert_eq!(refused.len(), 1);
        assert_eq!(read(Target::Path(&file)).unwrap(), sorted, "the target is untouched");
        assert!(read(Target::Path(&proc_path(opened.as_raw_fd(), b"missing").unwrap())).is_err());
        // By the directory and a name, with the *xattrat calls or without them.
        let entry = |name| Target::At(opened.as_raw_fd(), name);
        // What a restore must have set: the values it has, none it lacks.
        assert!(!differ(opened.as_raw_fd(), b"f", &sorted));
        assert!(!differ(opened.as_raw_fd(), b"f", &[xattr(b"user.a", b"\x00\x01")]));
        assert!(differ(opened.as_raw_fd(), b"f", &[xattr(b"user.a", b"other")]));
        assert!(differ(opened.as_raw_fd(), b"f", &[xattr(b"user.missing", b"")]));
        assert!(differ(opened.as_raw_fd(), b"missing", &[xattr(b"user.a", b"")]));
        for by_proc in [false, true, false] {
            // Either way gives the same (other tests only take the other way meanwhile).
            NO_XATTRAT.store(by_proc, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(read(entry(c"f")).unwrap(), sorted, "by /proc: {by_proc}");
            assert_eq!(read(entry(c"link")).unwrap(), [], "never through the link");
            assert!(read(entry(c"missing")).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
