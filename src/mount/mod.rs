//! `cairn mount`: the repository as a read-only file system (FUSE), by snapshot, by source and by
//! id, to browse and copy from with any program, as restic's and borg's mounts do.
//!
//! The layout ([`catalog`] names the snapshots):
//!
//! ```text
//! DIR/snapshots/2026-12-04T10:00:00Z-1a2b3c4d-app/…   every snapshot; latest -> the newest
//! DIR/sources/app/2026-12-04T10:00:00Z/…              by source; latest -> its newest
//! DIR/ids/1a2b3c4d/…                                  by id
//! ```
//!
//! Nothing is read before it is asked for: a directory's tree is decoded when it is looked up or
//! listed, a file's chunks when its bytes are read, each verified against its id; memory holds
//! small caches of trees and chunks, never a whole file ([`content`]). Entries show the mode,
//! owner, times and size the snapshot recorded, symlinks their targets, names their raw bytes.
//! Every call that would change anything fails with `EROFS`, and the mount is read-only,
//! `nosuid` and `nodev` besides, with the kernel checking the recorded permissions.
//!
//! [`serve`] runs until the caller asks it to stop (it then unmounts) or someone unmounts it
//! (`fusermount -u`); as root it mounts with the mount call itself, else through the
//! `fusermount` program, never through libfuse.

mod catalog;
mod content;
mod fs;
mod store;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::select::Filter;

/// How a mount is made.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Which snapshots it shows.
    pub filter: Filter,
    /// Whether users other than the one mounting may enter it (`allow_other`; the kernel still
    /// checks each entry's recorded permissions).
    pub allow_other: bool,
}

/// What a mount tells its caller, and asks it, while it runs.
pub trait Events: Sync {
    /// The file system is mounted at `at` (canonical).
    fn mounted(&self, at: &Path);
    /// Something could not be read (a reader got `EIO`), or the snapshot list could not be
    /// read again.
    fn warn(&self, message: &str);
    /// Whether to stop now: asked a few times a second.
    fn stop(&self) -> bool;
    /// Asked to stop while programs still use the mount: it is detached (gone from the
    /// directory tree) and goes once they have closed it.
    fn busy(&self, at: &Path);
}

/// How a mount ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// [`Events::stop`] asked, and it unmounted.
    Stopped,
    /// Someone else unmounted it (`fusermount -u`, `umount`).
    Unmounted,
}

/// How often [`Events::stop`] is asked.
const POLL: Duration = Duration::from_millis(50);

/// Mounts the snapshots of `repo` that `options` select at the empty directory `at` and serves
/// them until [`Events::stop`] says so or the mount is unmounted.
pub fn serve(repo: &Repository, at: &Path, options: &Options, events: &dyn Events) -> Result<Ended> {
    let at = mount_point(at)?;
    let warn = |message: &str| events.warn(message);
    let store = store::Store::open(repo, options.filter.clone(), &warn)?;
    if events.stop() {
        return Ok(Ended::Stopped); // asked while the index was read: never mounted
    }
    let filesystem = fs::Fs::new(store, &warn);
    use fuser::MountOption;
    let mut mount_options = vec![
        MountOption::FSName("cairn".into()),
        MountOption::Subtype("cairn".into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
    ];
    if options.allow_other {
        mount_options.push(MountOption::AllowOther);
    }
    let mut session = fuser::Session::new(filesystem, &at, &mount_options).map_err(|e| Error::Mount {
        path: at.clone(),
        reason: format!(
            "{e}: FUSE needs /dev/fuse (the fuse kernel module), and for a user other than root the fusermount \
             program (Debian's fuse3 or fuse package){}",
            if options.allow_other { "; --allow-other needs user_allow_other in /etc/fuse.conf" } else { "" }
        ),
    })?;
    let mut unmounter = session.unmount_callable();
    events.mounted(&at);
    std::thread::scope(|scope| {
        let served = scope.spawn(move || session.run());
        let mut stopping = false;
        while !served.is_finished() {
            if !stopping && events.stop() {
                stopping = true;
                unmount(&at, &mut unmounter, events);
            }
            std::thread::sleep(POLL);
        }
        let served = served.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        served.map_err(|e| Error::io(&at, e))?;
        Ok(if stopping { Ended::Stopped } else { Ended::Unmounted })
    })
}

/// `at`, canonical, if it is an empty directory; else an error that says what to give instead.
fn mount_point(at: &Path) -> Result<PathBuf> {
    let refuse = |reason: String| Error::Mount { path: at.to_path_buf(), reason };
    let meta = std::fs::metadata(at).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => refuse("it does not exist: create an empty directory to mount on".into()),
        _ => refuse(e.to_string()),
    })?;
    if !meta.is_dir() {
        return Err(refuse("it is not a directory: give an empty directory to mount on".into()));
    }
    let mut entries = std::fs::read_dir(at).map_err(|e| refuse(e.to_string()))?;
    if entries.next().is_some() {
        return Err(refuse(
            "it is not empty (the mount would hide what is in it): give an empty directory to mount on".into(),
        ));
    }
    at.canonicalize().map_err(|e| refuse(e.to_string()))
}

/// Unmounts `at`: with the unmount call as root (lazily, and said so, if programs still use
/// it), else through fusermount, which fuser runs.
fn unmount(at: &Path, unmounter: &mut fuser::SessionUnmounter, events: &dyn Events) {
    let Ok(path) = CString::new(at.as_os_str().as_bytes()) else { return };
    // SAFETY: unmounts the path of a valid C string.
    if unsafe { libc::umount(path.as_ptr()) } == 0 {
        return;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EBUSY) => {
            events.busy(at);
            // SAFETY: as above.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                events.warn(&format!("could not detach {}: {}", at.display(), std::io::Error::last_os_error()));
            }
        }
        Some(libc::EINVAL) => {} // unmounted meanwhile: the session ends by itself
        _ => {
            let _ = unmounter.unmount();
        }
    }
}
