//! Free space, and the disk guard: cairn protects a machine, so it must not be what fills its
//! disk. A snapshot (or `cairn run`) given a minimum refuses to start when the repository's file
//! system is already below it, and stops before any pack write that would take it below.
//! Also the read-ahead hint both the archiver and the local backend give the kernel.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Bytes available to this user, and the file system's size.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// The space of the file system holding `path`, or of its nearest existing ancestor (a
/// repository that does not exist yet will be created there).
pub fn space(path: &Path) -> Option<Space> {
    let existing = path.ancestors().find(|p| p.as_os_str().is_empty() || p.exists())?;
    let existing = if existing.as_os_str().is_empty() { Path::new(".") } else { existing };
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a valid out-pointer.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut stat) } == 0).then(|| Space::of(&stat))
}

/// The space of the file system holding the open `file` (a restore's target, reached by its
/// descriptor, never by its path again).
pub fn space_of(file: std::os::fd::BorrowedFd<'_>) -> Option<Space> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor and out-pointer.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatvfs(file.as_raw_fd(), &mut stat) } == 0).then(|| Space::of(&stat))
}

impl Space {
    // The field types are u32 on some targets.
    #[allow(clippy::unnecessary_cast)]
    fn of(stat: &libc::statvfs) -> Space {
        Space { free: stat.f_bavail as u64 * stat.f_frsize as u64, total: stat.f_blocks as u64 * stat.f_frsize as u64 }
    }
}

/// The most one `posix_fadvise(WILLNEED)` call reads: the kernel caps each call at the device's
/// read-ahead size (`read_ahead_kb`, 128 KiB by default), silently ignoring the rest.
const WILL_NEED_STEP: u64 = 128 << 10;

/// Asks the kernel to start reading the first `len` bytes of `file` into the page cache, without
/// waiting for the reads (only, when the device's queue is full, for room in it); in steps, so
/// a file larger than one read-ahead window is read whole.
pub fn will_need(file: &std::fs::File, len: u64) {
    use std::os::fd::AsRawFd;
    for offset in (0..len.max(1)).step_by(WILL_NEED_STEP as usize) {
        // SAFETY: a valid descriptor; the advice only schedules reads into the page cache.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset as i64, WILL_NEED_STEP as i64, libc::POSIX_FADV_WILLNEED)
        };
    }
}

/// The size of a transparent huge page (on x86-64 and most aarch64 kernels).
pub const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back `memory`, not yet touched, with transparent huge pages (where it
/// offers them only on request): one fault per 2 MiB instead of one per 4 KiB.
pub fn advise_huge_pages<T>(memory: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        let start = (memory.as_mut_ptr() as usize).next_multiple_of(HUGE_PAGE);
        let end = (memory.as_mut_ptr() as usize + std::mem::size_of_val(memory)) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside `memory`, which this borrow owns; the advice changes
            // how its pages are backed, never their content.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

/// A minimum of free space: an absolute size or a percentage of the file system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    Percent(f64),
}

/// The form [`MinFree::parse`] reads back: `10%`, or bytes.
impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Bytes(n) => write!(f, "{n}"),
            MinFree::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl MinFree {
    /// Parses `10%`, `5GiB`, `500MB`, `2G`, `1048576` (bytes). Units are powers of 1024 whether
    /// written `G`, `GB` or `GiB`: free space is what `df -h` shows.
    pub fn parse(text: &str) -> std::result::Result<MinFree, String> {
        let text = text.trim();
        let bad = || format!("bad size {text:?}: use forms like 10%, 500MiB, 5GiB");
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| bad())?;
            return (0.0..100.0).contains(&value).then_some(MinFree::Percent(value)).ok_or_else(bad);
        }
        let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(bad()),
        };
        Ok(MinFree::Bytes((number * (1u64 << shift) as f64) as u64))
    }

    pub fn bytes(&self, space: &Space) -> u64 {
        match *self {
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => (space.total as f64 * p / 100.0) as u64,
        }
    }

    /// Fails when writing `more` bytes to the file system of `path` would leave less free than
    /// the minimum. A file system whose space cannot be read is not guarded.
    pub fn check(&self, path: &Path, more: u64) -> Result<()> {
        let Some(space) = space(path) else { return Ok(()) };
        let min = self.bytes(&space);
        if space.free < min.saturating_add(more) {
            return Err(Error::NoSpace(format!(
                "disk guard: {} has {} MiB free{}; the minimum is {} MiB (--min-free): refusing to fill the disk",
                path.display(),
                space.free >> 20,
                if more > 0 { format!(" and this write needs {} MiB", more.div_ceil(1 << 20)) } else { String::new() },
                min >> 20
            )));
        }
        Ok(())
    }
}

/// fsyncs a directory so that entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(MinFree::parse("10%"), Ok(MinFree::Percent(10.0)));
        assert_eq!(MinFree::parse("5GiB"), Ok(MinFree::Bytes(5 << 30)));
        assert_eq!(MinFree::parse("500 MB"), Ok(MinFree::Bytes(500 << 20)));
        assert_eq!(MinFree::parse("2g"), Ok(MinFree::Bytes(2 << 30)));
        assert_eq!(MinFree::parse("1.5K"), Ok(MinFree::Bytes(1536)));
        assert_eq!(MinFree::parse("4096"), Ok(MinFree::Bytes(4096)));
        for min in [MinFree::Percent(12.5), MinFree::Bytes(5 << 30)] {
            assert_eq!(MinFree::parse(&min.to_string()), Ok(min));
        }
        for bad in ["", "%", "5 parsecs", "120%", "-1G", "G"] {
            assert!(MinFree::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn guard_compares_free_space() {
        let here = std::env::temp_dir();
        let space = space(&here).expect("statvfs works on the temp dir");
        assert!(MinFree::Bytes(0).check(&here, 0).is_ok());
        assert!(MinFree::Bytes(space.total * 2).check(&here, 0).is_err());
        assert!(MinFree::Bytes(0).check(&here, space.total * 2).is_err());
        assert!(MinFree::Percent(0.0).check(&here.join("not/there/yet"), 0).is_ok());
    }
}
