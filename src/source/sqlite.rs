//! Live SQLite databases: a consistent image without stopping the application.
//!
//! A database is read page by page through the `sqlite_dbpage` virtual table inside one read
//! transaction. In WAL mode a reader never blocks writers and sees exactly the database as of one
//! committed transaction, WAL frames included, so the image restores as a plain database file
//! with no `-wal` or `-shm` companion. The read never restarts when writers commit (unlike a
//! stepwise online backup), so it finishes however busy the writers are, and nothing is copied
//! to a temporary file: pages stream straight into the chunker.
//!
//! The image is stored one chunk per database page, so an in-place page update changes exactly
//! one chunk and a day of scattered updates stores little more than the pages it touched. Larger
//! page-aligned chunks were measured and rejected: with 64 KiB chunks, one day of realistic
//! churn on a 300 MiB database touched half of all chunks and stored 6.5 times the compressed
//! changed pages (benches/sqlite_churn.py; store-format/tree.md, "Databases").
//!
//! Rollback-journal databases are read the same way; there the read transaction's shared lock
//! makes writers wait (up to their busy timeout) while the image is read. Use WAL mode.
//!
//! SQLite opens files by path, the database and its `-wal`, `-shm` and `-journal` beside it. So
//! that a directory swapped for a symlink cannot make it read a database from outside the
//! source, it is given a path through the descriptor of the directory the walk opened
//! (`/proc/self/fd/N/name`, [`Dir::path_of`]), under a VFS that uses that path as it is (the
//! default one would resolve `/proc/self/fd/N` back into the directory's path); SQLite opens
//! every file with `O_NOFOLLOW`, so the last component is never a symlink either.
//!
//! Reading never writes. A rollback journal left hot by a crash (or planted by whoever can write
//! into the tree) would be rolled back by a read-write connection: the database written, the
//! journal deleted, and the file it names as its super-journal deleted, wherever it is. So a
//! read-write connection is only ever opened for a WAL database that a read-only one cannot
//! read, and the VFS refuses what a rollback needs whatever the connection: opening a journal for
//! writing, opening a super-journal at all, deleting any file. A database with a hot journal is
//! reported, not read. A journal, WAL or shared-memory file that is not a regular file (a FIFO
//! would block SQLite's open forever) is refused too, and every file SQLite opens is opened
//! without blocking, so one swapped in after that look is refused as well.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{ffi, Connection, OpenFlags};

use super::nofollow::Dir;

/// The first 16 bytes of every SQLite database file.
pub const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Whether `file` starts with the SQLite header.
pub fn has_header(file: &File) -> bool {
    let mut header = [0u8; 16];
    file.read_exact_at(&mut header, 0).is_ok() && &header == HEADER
}

pub fn is_database(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| has_header(&f))
}

/// The page size recorded in a database file's header, or `None` if it is not a database.
pub fn page_size_of(file: &File) -> std::io::Result<Option<usize>> {
    let mut header = [0u8; 18];
    if file.read_exact_at(&mut header, 0).is_err() || &header[..16] != HEADER {
        return Ok(None);
    }
    Ok(match u16::from_be_bytes([header[16], header[17]]) {
        1 => Some(65_536),
        n if n >= 512 && n.is_power_of_two() => Some(n as usize),
        _ => None,
    })
}

/// Companion files that a captured database makes unnecessary: `X-wal`, `X-shm`, `X-journal`.
/// Returns the database name `X` for such a name.
pub fn companion_of(name: &[u8]) -> Option<&[u8]> {
    [&b"-wal"[..], b"-shm", b"-journal"]
        .iter()
        .find_map(|suffix| name.strip_suffix(*suffix))
        .filter(|base| !base.is_empty())
}

/// The companions a database copied as it lies needs beside it to be whole: its WAL, or the
/// rollback journal of a transaction it was left in the middle of.
const NEEDED_BESIDE: [&[u8]; 2] = [b"-wal", b"-journal"];

/// Whether `name` has a companion it needs ([`NEEDED_BESIDE`]) among the names `exists` knows:
/// such a database, copied as it lies, is whole only with it, and SQLite completes it on opening.
pub fn has_needed_companion(name: &[u8], exists: impl Fn(&[u8]) -> bool) -> bool {
    NEEDED_BESIDE.iter().any(|suffix| exists(&[name, suffix].concat()))
}

/// The first 8 bytes of a rollback journal's header, and its last 8 when it names a
/// super-journal (sqlite.org/fileformat2.html, "The Rollback Journal").
pub const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// Whether the rollback journal `journal`, of `len` bytes, names a super-journal: a transaction
/// over several databases, which SQLite rolls back only while that file exists.
pub fn names_a_super_journal(journal: &File, len: u64) -> bool {
    let mut tail = [0u8; 8];
    len >= 8 && journal.read_exact_at(&mut tail, len - 8).is_ok() && tail == JOURNAL_MAGIC
}

/// What went wrong reading a database, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not an SQLite database")]
    NotADatabase,
    #[error("database is locked by another process (waited {0:?}): try again, or raise --sqlite-timeout")]
    Locked(Duration),
    #[error("database is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot read database: {0}")]
    Sqlite(String),
    #[error("replaced while it was being opened: not stored")]
    Replaced,
    #[error(
        "has a hot journal ({0}, left by an interrupted transaction, or planted): not read, as reading would roll \
         it back, writing the database and deleting files the journal names; check the journal, open the \
         database once with its application or sqlite3 to recover it, then snapshot again"
    )]
    HotJournal(String),
    #[error("{0} beside it is not a regular file: not read (SQLite would open it)")]
    Companion(String),
    /// The callback failed (a repository write): not the database's fault.
    #[error("{0}")]
    Sink(crate::error::Error),
}

fn is_locked(error: &rusqlite::Error) -> bool {
    use rusqlite::ffi::ErrorCode;
    matches!(error.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// Whether a read-only connection met a hot journal it would have to roll back.
fn is_rollback(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.extended_code == ffi::SQLITE_READONLY_ROLLBACK)
}

fn classify(error: rusqlite::Error, timeout: Duration) -> CaptureError {
    use rusqlite::ffi::ErrorCode;
    match error.sqlite_error_code() {
        _ if is_locked(&error) => CaptureError::Locked(timeout),
        Some(ErrorCode::NotADatabase) => CaptureError::NotADatabase,
        Some(ErrorCode::DatabaseCorrupt) => CaptureError::Corrupt(error.to_string()),
        _ if error.to_string().contains("no such table: sqlite_dbpage") => CaptureError::Sqlite(
            "this cairn was built without SQLITE_ENABLE_DBPAGE_VTAB (see .cargo/config.toml)".into(),
        ),
        _ => CaptureError::Sqlite(error.to_string()),
    }
}

/// The shape of a captured image.
#[derive(Debug, Clone, Copy)]
pub struct Image {
    pub page_size: u32,
    pub pages: u64,
}

/// The name of the VFS that opens a database at exactly the path it is given: the default unix
/// VFS with a `xFullPathname` that does not resolve symlinks, and an `xOpen` and `xDelete` that
/// refuse what would write the database or anything else (see the module doc). Registered on
/// first use.
fn verbatim_vfs() -> &'static str {
    const NAME: &std::ffi::CStr = c"cairn-verbatim";
    static REGISTERED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find initialises SQLite and returns the registered "unix" VFS,
        // which lives as long as the process; the copy is leaked, so it does too, and SQLite
        // only reads it. The copy shares the unix VFS's methods and data (`pAppData`), which is
        // how the unix VFS itself registers its variants.
        unsafe {
            let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            assert!(!unix.is_null(), "the bundled SQLite has a unix VFS");
            let mut vfs = *unix;
            UNIX_OPEN.set((*unix).xOpen.expect("the unix VFS opens files")).ok();
            // Before any file is opened: the unix VFS reads its system calls from one table.
            let set = (*unix).xSetSystemCall.expect("the unix VFS can change its system calls");
            // SAFETY: the unix VFS calls "open" as `int open(const char*, int, int)`, as
            // `nonblocking_open` is declared; the pointer type is SQLite's generic one.
            let rc = set(
                unix,
                c"open".as_ptr(),
                Some(std::mem::transmute::<OsOpen, unsafe extern "C" fn()>(nonblocking_open)),
            );
            assert_eq!(rc, ffi::SQLITE_OK, "replacing the unix VFS's open");
            vfs.zName = NAME.as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.xFullPathname = Some(verbatim_full_pathname);
            vfs.xOpen = Some(guarded_open);
            vfs.xDelete = Some(no_delete);
            let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0);
            assert_eq!(rc, ffi::SQLITE_OK, "registering a VFS");
        }
    });
    "cairn-verbatim"
}

type OpenFn = unsafe extern "C" fn(
    *mut ffi::sqlite3_vfs,
    *const std::ffi::c_char,
    *mut ffi::sqlite3_file,
    std::ffi::c_int,
    *mut std::ffi::c_int,
) -> std::ffi::c_int;

/// The unix VFS's `xOpen`, which [`guarded_open`] calls for what it lets through.
static UNIX_OPEN: std::sync::OnceLock<OpenFn> = std::sync::OnceLock::new();

/// `xOpen` that refuses a journal opened for writing (a rollback), any super-journal, and a
/// named file other than the main database that exists and is not a regular file.
unsafe extern "C" fn guarded_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const std::ffi::c_char,
    file: *mut ffi::sqlite3_file,
    flags: std::ffi::c_int,
    out_flags: *mut std::ffi::c_int,
) -> std::ffi::c_int {
    let journal_for_writing = flags & ffi::SQLITE_OPEN_MAIN_JOURNAL != 0 && flags & ffi::SQLITE_OPEN_READWRITE != 0;
    if journal_for_writing || flags & ffi::SQLITE_OPEN_SUPER_JOURNAL != 0 {
        return ffi::SQLITE_CANTOPEN;
    }
    if !name.is_null() && flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
        // SAFETY: SQLite passes a NUL-terminated name; `stat` is written by lstat.
        let special = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            libc::lstat(name, &mut stat) == 0 && stat.st_mode & libc::S_IFMT != libc::S_IFREG
        };
        if special {
            return ffi::SQLITE_CANTOPEN;
        }
    }
    let open = UNIX_OPEN.get().expect("set before the VFS is registered");
    // SAFETY: the arguments SQLite gave, passed on to the VFS this one copies.
    unsafe { open(vfs, name, file, flags, out_flags) }
}

type OsOpen = unsafe extern "C" fn(*const std::ffi::c_char, std::ffi::c_int, std::ffi::c_int) -> std::ffi::c_int;

/// The `open` system call of the unix VFS (so of every SQLite connection in cairn): one that
/// never blocks on what is not a file or a directory. A FIFO put in place of a database, journal,
/// WAL or shared-memory file after it was looked at would block a plain open forever (and a
/// device may do anything); it is opened with `O_NONBLOCK` and refused (`ENXIO`). A regular file
/// is then read and written as usual: `O_NONBLOCK` is cleared, and a file under a lease, which
/// refuses a non-blocking open (`EWOULDBLOCK`), is opened again the usual way.
unsafe extern "C" fn nonblocking_open(
    path: *const std::ffi::c_char,
    flags: std::ffi::c_int,
    mode: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: SQLite passes a NUL-terminated path; `stat` is written by fstat before it is read.
    unsafe {
        let fd = libc::open(path, flags | libc::O_NONBLOCK, mode as libc::c_uint);
        if fd < 0 {
            let leased = std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
            return if leased { libc::open(path, flags, mode as libc::c_uint) } else { fd };
        }
        let mut stat: libc::stat = std::mem::zeroed();
        let kind = if libc::fstat(fd, &mut stat) == 0 { stat.st_mode & libc::S_IFMT } else { 0 };
        // SQLite seeds its random numbers from /dev/urandom, a character device.
        let urandom = kind == libc::S_IFCHR && std::ffi::CStr::from_ptr(path) == c"/dev/urandom";
        if kind != libc::S_IFREG && kind != libc::S_IFDIR && !urandom {
            libc::close(fd);
            *libc::__errno_location() = libc::ENXIO;
            return -1;
        }
        libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK);
        fd
    }
}

/// `xDelete` that deletes nothing: reading a database never needs to.
unsafe extern "C" fn no_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    _name: *const std::ffi::c_char,
    _sync_dir: std::ffi::c_int,
) -> std::ffi::c_int {
    ffi::SQLITE_IOERR_DELETE
}

/// `xFullPathname` that copies the (absolute) name unchanged.
unsafe extern "C" fn verbatim_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const std::ffi::c_char,
    room: std::ffi::c_int,
    out: *mut std::ffi::c_char,
) -> std::ffi::c_int {
    // SAFETY: SQLite passes a NUL-terminated name and an output buffer of `room` bytes.
    unsafe {
        let len = std::ffi::CStr::from_ptr(name).to_bytes_with_nul().len();
        if len > room.max(0) as usize || *name != b'/' as std::ffi::c_char {
            return ffi::SQLITE_CANTOPEN;
        }
        std::ptr::copy_nonoverlapping(name, out, len);
    }
    ffi::SQLITE_OK
}

/// Opens without ever writing: read-only where possible. A WAL database (`wal`) whose `-shm`
/// cannot be created needs a read-write handle, which is then held to `query_only`; nothing
/// else gets one, a database locked or with a hot journal least of all. Waits up to `timeout`
/// for a lock, once.
fn open(path: &Path, timeout: Duration, wal: bool) -> rusqlite::Result<Connection> {
    let connect = |flags| {
        let connection =
            Connection::open_with_flags_and_vfs(path, OpenFlags::SQLITE_OPEN_NO_MUTEX | flags, verbatim_vfs())?;
        connection.busy_timeout(timeout)?;
        Ok::<_, rusqlite::Error>(connection)
    };
    let read = || {
        connect(OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).map(|_| c))
    };
    // A writer rolling back its own transaction deletes its journal and drops its lock; a reader
    // between the two sees a journal no one holds, and takes it for hot (SQLite's ticket #3883).
    // Only one still there after a few looks is reported.
    let mut read_only = read();
    for pause in [10, 40, 150] {
        match &read_only {
            Err(e) if is_rollback(e) => std::thread::sleep(Duration::from_millis(pause)),
            _ => break,
        }
        read_only = read();
    }
    let connection = match read_only {
        Ok(connection) => connection,
        Err(e) if !wal || is_locked(&e) || is_rollback(&e) => return Err(e),
        Err(_) => connect(OpenFlags::SQLITE_OPEN_READ_WRITE)?,
    };
    connection.pragma_update(None, "query_only", true)?;
    // Closing the last connection to a WAL database would otherwise checkpoint it: a backup
    // must not write to what it backs up.
    connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(connection)
}

/// Whether the file SQLite holds open as `connection`'s main database is the one listed as
/// `name` in `dir` with `identity` (device, inode). SQLite opens by name, so another file renamed
/// or linked into its place between the listing and the open (in a tree someone else can write)
/// would be read instead; after the open, the name must still lead to the listed inode, and the
/// inode SQLite opened must be the one the name leads to (`SQLITE_FCNTL_HAS_MOVED`), before and
/// after that look, so that a swap back in between is seen too.
fn opened_is_listed(connection: &Connection, dir: &Dir, name: &[u8], identity: (u64, u64)) -> bool {
    let moved = || {
        let mut moved: std::ffi::c_int = 1;
        // SAFETY: a valid open connection; HAS_MOVED writes one int through the pointer.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                connection.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_HAS_MOVED,
                (&mut moved as *mut std::ffi::c_int).cast(),
            )
        };
        rc != ffi::SQLITE_OK || moved != 0
    };
    !moved() && dir.stat(name).is_ok_and(|stat| (stat.dev(), stat.ino()) == identity) && !moved()
}

/// Reads a consistent image of the database `name` in the open directory `dir`, listed as the
/// file with `identity` (device, inode), handing `each` batches of whole pages (about
/// `batch_bytes` each) in order, with the page size. Holds only a read transaction, for the
/// duration of the read.
pub fn capture(
    dir: &Dir,
    name: &[u8],
    identity: (u64, u64),
    timeout: Duration,
    batch_bytes: usize,
    mut each: impl FnMut(&[u8], usize) -> crate::error::Result<()>,
) -> Result<Image, CaptureError> {
    let mut header = [0u8; 20];
    let read = dir.open_file(name, libc::O_NONBLOCK).and_then(|file| file.read_exact_at(&mut header, 0));
    if read.is_err() || &header[..16] != HEADER {
        return Err(CaptureError::NotADatabase);
    }
    // File format versions 2: WAL (sqlite.org/fileformat2.html, "The Database Header").
    let wal = header[18] == 2 && header[19] == 2;
    for suffix in [&b"-journal"[..], b"-wal", b"-shm"] {
        let companion = [name, suffix].concat();
        if dir.stat(&companion).is_ok_and(|stat| stat.kind() != super::nofollow::Kind::File) {
            return Err(CaptureError::Companion(crate::names::shown(&companion).into_owned()));
        }
    }
    if !Path::new("/proc/self/fd").is_dir() {
        return Err(CaptureError::Sqlite("/proc is not mounted: databases are opened through /proc/self/fd".into()));
    }
    let journal = [name, b"-journal"].concat();
    let fail = |e: rusqlite::Error| match is_rollback(&e) {
        true => CaptureError::HotJournal(crate::names::shown(&journal).into_owned()),
        false => classify(e, timeout),
    };
    let connection = open(&dir.path_of(name), timeout, wal).map_err(fail)?;
    // Everything below reads inside this one transaction: one consistent snapshot.
    connection.execute_batch("BEGIN").map_err(fail)?;
    connection.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).map_err(fail)?;
    if !opened_is_listed(&connection, dir, name, identity) {
        return Err(CaptureError::Replaced);
    }
    let page_size: u32 = connection.query_row("PRAGMA page_size", [], |row| row.get(0)).map_err(fail)?;
    let pages: u64 = connection.query_row("PRAGMA page_count", [], |row| row.get(0)).map_err(fail)?;
    let mut statement = connection.prepare("SELECT pgno, data FROM sqlite_dbpage").map_err(fail)?;
    let mut rows = statement.query([]).map_err(fail)?;
    let batch_bytes = batch_bytes.max(page_size as usize);
    let mut batch = Vec::with_capacity(batch_bytes.min(pages as usize * page_size as usize));
    let mut expected = 1u64;
    while let Some(row) = rows.next().map_err(fail)? {
        let pgno: u64 = row.get(0).map_err(fail)?;
        let data = row.get_ref(1).map_err(fail)?.as_blob().map_err(|e| CaptureError::Sqlite(e.to_string()))?;
        if pgno != expected || data.len() != page_size as usize {
            return Err(CaptureError::Corrupt(format!("page {pgno} out of sequence or of the wrong size")));
        }
        expected += 1;
        batch.extend_from_slice(data);
        if batch.len() >= batch_bytes {
            each(&batch, page_size as usize).map_err(CaptureError::Sink)?;
            batch.clear();
        }
    }
    if expected - 1 != pages {
        return Err(CaptureError::Corrupt(format!("read {} pages, the database has {pages}", expected - 1)));
    }
    if !batch.is_empty() {
        each(&batch, page_size as usize).map_err(CaptureError::Sink)?;
    }
    drop(rows);
    drop(statement);
    connection.execute_batch("COMMIT").map_err(fail)?;
    Ok(Image { page_size, pages })
}

/// `PRAGMA integrity_check` on a database file at rest; "ok" when it is sound. The file is opened
/// as immutable, so no `-wal` or `-shm` file is created beside it (a restored image is complete
/// without them). The path is resolved as usual, symlinks included: for a file in a directory
/// nobody else can write (a drill's private scratch directory).
pub fn integrity_check(path: &Path) -> String {
    check_integrity(path, None)
}

/// [`integrity_check`] of the database at `path` under a VFS that opens the path as it is
/// (`cairn-verbatim`). Given the `/proc/self/fd/N/name` path of an entry in a directory that
/// only this user can change ([`crate::fs_at::Dir::proc_path`]), SQLite reads exactly the file
/// in that directory: the default VFS would resolve `/proc/self/fd/N` back into a path through
/// directories that others may swap, and SQLite opens the file itself with `O_NOFOLLOW`.
pub fn integrity_check_verbatim(path: &Path) -> String {
    if !Path::new("/proc/self/fd").is_dir() {
        return "cannot open: /proc is not mounted (databases are checked through /proc/self/fd)".into();
    }
    check_integrity(path, Some(verbatim_vfs()))
}

fn check_integrity(path: &Path, vfs: Option<&str>) -> String {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let uri = format!("file:{}?immutable=1", uri_escape(path));
    let opened = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(uri, flags, vfs),
        None => Connection::open_with_flags(uri, flags),
    };
    let connection = match opened {
        Ok(c) => c,
        Err(e) => return format!("cannot open: {e}"),
    };
    let rows = connection.prepare("PRAGMA integrity_check").and_then(|mut statement| {
        statement.query_map([], |row| row.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<String>>>()
    });
    match rows {
        Ok(rows) => rows.join("; "),
        Err(e) => format!("integrity_check failed: {e}"),
    }
}

/// Percent-encodes a path for an SQLite `file:` URI (`?`, `#`, `%` and non-ASCII bytes).
fn uri_escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new directory of its own under the system's temporary directory.
    fn scratch() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cairn-sqlite-{}", crate::id::Id(crate::id::random_bytes()).short()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn companions() {
        assert_eq!(companion_of(b"app.db-wal"), Some(&b"app.db"[..]));
        assert_eq!(companion_of(b"app.db-journal"), Some(&b"app.db"[..]));
        assert_eq!(companion_of(b"-wal"), None);
        assert_eq!(companion_of(b"app.db"), None);
    }

    /// Through `/proc/self/fd/N/name` the verbatim VFS checks the file `name` in that directory,
    /// and a symlink there is not followed, whatever it points to.
    #[test]
    fn the_verbatim_check_reads_the_entry_and_follows_no_symlink() {
        let dir = scratch();
        Connection::open(dir.join("app.db"))
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .unwrap();
        std::os::unix::fs::symlink(dir.join("app.db"), dir.join("link")).unwrap();
        let open = crate::fs_at::Dir::open(&dir).unwrap();
        assert_eq!(integrity_check_verbatim(&open.proc_path(b"app.db").unwrap()), "ok");
        let through_link = integrity_check_verbatim(&open.proc_path(b"link").unwrap());
        assert!(through_link.starts_with("cannot open"), "{through_link}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Even a read-write connection through the verbatim VFS cannot roll back a hot journal:
    /// the journal cannot be opened for writing, the super-journal it names not at all, and
    /// nothing is deleted.
    #[test]
    fn the_verbatim_vfs_refuses_a_rollback_to_any_connection() {
        let dir = scratch();
        let db = dir.join("app.db");
        let connection = Connection::open(&db).unwrap();
        connection.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES (1)").unwrap();
        drop(connection);
        let victim = dir.join("victim");
        std::fs::write(&victim, b"kept").unwrap();
        // A hot journal naming `victim` as its super-journal (see tests/cases/sqlite_hostile.rs).
        let mut journal = JOURNAL_MAGIC.to_vec();
        let pages = (std::fs::metadata(&db).unwrap().len() / 4096) as u32;
        for field in [0u32, 0, pages, 512, 4096] {
            journal.extend_from_slice(&field.to_be_bytes());
        }
        journal.resize(512, 0);
        let name = victim.as_os_str().as_encoded_bytes();
        journal.extend_from_slice(&(0x4000_0000u32 / 4096 + 1).to_be_bytes());
        journal.extend_from_slice(name);
        journal.extend_from_slice(&(name.len() as u32).to_be_bytes());
        journal.extend_from_slice(&name.iter().map(|&b| b as u32).sum::<u32>().to_be_bytes());
        journal.extend_from_slice(&JOURNAL_MAGIC);
        std::fs::write(dir.join("app.db-journal"), &journal).unwrap();
        let image = std::fs::read(&db).unwrap();
        let open = crate::fs_at::Dir::open(&dir).unwrap();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection =
            Connection::open_with_flags_and_vfs(open.proc_path(b"app.db").unwrap(), flags, verbatim_vfs()).unwrap();
        let read = connection.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0));
        assert!(read.is_err(), "read through a hot journal: {read:?}");
        drop(connection);
        assert_eq!(std::fs::read(&victim).unwrap(), b"kept");
        assert_eq!(std::fs::read(&db).unwrap(), image);
        assert_eq!(std::fs::read(dir.join("app.db-journal")).unwrap(), journal);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A FIFO that takes a file's place after it was looked at is refused at once: a plain open
    /// would block until someone writes into it, and a snapshot would never end.
    #[test]
    fn a_fifo_opened_as_a_database_is_refused_without_blocking() {
        let dir = scratch();
        let fifo = dir.join("app.db");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let (sent, opened) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let connection =
                Connection::open_with_flags_and_vfs(&fifo, OpenFlags::SQLITE_OPEN_READ_ONLY, verbatim_vfs())
                    .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())));
            sent.send(connection.is_err()).unwrap();
        });
        let refused = opened.recv_timeout(Duration::from_secs(10)).expect("the open of a FIFO blocked");
        assert!(refused, "a FIFO was read as a database");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn captures_a_wal_database_with_uncheckpointed_commits() {
        let dir = scratch();
        let path = dir.join("app.db");
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);").unwrap();
        for i in 0..500 {
            writer.execute("INSERT INTO t VALUES (?1)", [format!("row {i} {}", "x".repeat(100))]).unwrap();
        }
        assert!(dir.join("app.db-wal").metadata().unwrap().len() > 0, "commits live in the WAL");
        let mut image = Vec::new();
        let parent = Dir::open(&dir, false).unwrap();
        let listed = std::fs::metadata(&path).unwrap();
        let identity = (std::os::unix::fs::MetadataExt::dev(&listed), std::os::unix::fs::MetadataExt::ino(&listed));
        // Another file than the one listed is refused before a page is read.
        let other =
            capture(&parent, b"app.db", (identity.0, identity.1 + 1), Duration::from_secs(5), 1 << 20, |_, _| {
                panic!("no page of a replaced database is read")
            });
        assert!(matches!(other, Err(CaptureError::Replaced)), "{other:?}");
        let shape = capture(&parent, b"app.db", identity, Duration::from_secs(5), 1 << 20, |batch, page_size| {
            assert_eq!(batch.len() % page_size, 0);
            image.extend_from_slice(batch);
            Ok(())
        })
        .unwrap();
        assert_eq!(image.len() as u64, shape.pages * shape.page_size as u64);
        let copy = dir.join("copy.db");
        std::fs::write(&copy, &image).unwrap();
        assert_eq!(integrity_check(&copy), "ok");
        let rows: i64 = Connection::open(&copy).unwrap().query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 500);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
