//! The library's error type: every variant names the path, id or offset that went wrong, so the
//! binary can print a message that tells the operator what happened and where.

use std::path::PathBuf;

use crate::id::Id;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("no repository at {0}: run `cairn init` first (or pass --repo)")]
    NotARepository(PathBuf),

    #[error("a repository already exists at {0}")]
    AlreadyExists(PathBuf),

    #[error("corrupt repository file {file}: {reason}")]
    Corrupt { file: String, reason: String },

    #[error("unsupported {what} version {found} in {file} (this cairn reads up to {supported})")]
    UnsupportedVersion { file: String, what: &'static str, found: u32, supported: u32 },

    #[error("blob {0} is not in the repository index")]
    MissingBlob(Id),

    #[error("blob {id} in pack {pack} fails verification: {reason}")]
    BadBlob { id: Id, pack: Id, reason: String },

    #[error("no snapshot matches {0:?}")]
    NoSuchSnapshot(String),

    #[error("snapshot prefix {0:?} is ambiguous: give more characters")]
    AmbiguousSnapshot(String),

    #[error(transparent)]
    Select(crate::select::SelectError),

    #[error("snapshot {snapshot} has no path \"{path}\"")]
    NoSuchPath { snapshot: String, path: String },

    #[error("source path {0}: does not exist")]
    MissingSource(PathBuf),

    /// An exclude pattern that can never match, or an exclude file that cannot be read.
    #[error(transparent)]
    Exclude(crate::source::exclude::ExcludeError),

    #[error(transparent)]
    MarkerName(crate::source::walk_options::MarkerNameError),

    #[error("wrong password: no key file of {0} opens with it")]
    WrongPassword(String),

    /// An encrypted repository was opened with no password to open it.
    #[error("{0} is encrypted, and no password was given to open it")]
    PasswordNeeded(String),

    /// A key command on a repository that has no keys.
    #[error("the repository is not encrypted")]
    NotEncrypted,

    /// Another run holds a lock this one needs (`holder` says who, since when).
    #[error("the repository is locked by {holder}: try again when it has finished{note}")]
    Locked { holder: String, note: String },

    /// The lock this run held went unrenewed long enough that another may have taken it for
    /// abandoned: the run stopped before writing anything more.
    #[error(
        "the lock on {location} went unrenewed for {seconds} s or more, so a prune may have taken it for abandoned: \
         stopping before anything else is written (run the command again)"
    )]
    LockLost { location: String, seconds: u64 },

    /// Something that deletes or overwrites refused to, and changed nothing: the repository is
    /// not whole, or the target is not what it may safely replace. The reason says what to do.
    #[error("{0}")]
    Refused(String),

    /// The file system has not the room the work needs (or the disk guard keeps); nothing was
    /// written. The message says how much there is and what to do.
    #[error("{0}")]
    NoSpace(String),

    /// No key file matches.
    #[error("no key file {0}")]
    NoSuchKey(String),

    /// A thread or runtime the work needs could not be started.
    #[error("cannot start {what}: {reason}")]
    Resources { what: &'static str, reason: String },

    /// Input that is not valid, with what is wrong with it.
    #[error("{0}")]
    Invalid(String),

    /// `cairn mount` cannot mount at `path`; the reason says why and what to do.
    #[error("cannot mount at {path}: {reason}")]
    Mount { path: PathBuf, reason: String },

    #[error("interrupted before it finished")]
    Interrupted,

    /// A command whose output was being backed up did not end well (`how`: its exit status or
    /// signal, or why it could not start); `stderr` quotes its last lines of error output. No
    /// snapshot was written. The command line is not quoted: it may hold a password
    /// (`mysqldump -pSECRET`), and this message goes into the audit record, its offsite copies,
    /// `cairn status` and notifications.
    #[error("the snapshot's command (--stdin-from-command, or the source's `command`) {how}: no snapshot was written{stderr}")]
    Command { how: String, stderr: String },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn corrupt(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt { file: file.into(), reason: reason.into() }
    }
}

impl Error {
    /// Back to an `io::Error`, for code that chains I/O steps.
    pub fn into_io(self) -> std::io::Error {
        match self {
            Error::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// Attaches a path to `std::io::Result`s.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
