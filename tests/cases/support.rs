//! Shared helpers: scratch directories, running the binary, building trees, comparing trees.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// A scratch directory removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::var_os("CAIRN_TEST_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!("cairn-it-{}-{}-{n}", std::process::id(), name));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, part: impl AsRef<Path>) -> PathBuf {
        self.0.join(part)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Restored trees may hold read-only directories: make them writable first.
        let _ = Command::new("chmod").arg("-R").arg("u+rwx").arg(&self.0).status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A `cairn` command against `repo`, with a clean environment for repository selection.
pub fn cairn(repo: &Path) -> Command {
    let mut command = cairn_bare();
    command.arg("--repo").arg(repo).env_remove("CAIRN_REPO").stdin(Stdio::null());
    // No config file of the user's decides what `status` judges.
    command.env_remove("CAIRN_CONFIG").env("XDG_CONFIG_HOME", "/nonexistent/cairn-tests");
    with_password(&mut command);
    command
}

/// The `cairn` binary with nothing chosen but its cache: every repository, local ones too, keeps
/// a sorted copy of its index there, and object stores their files: this test process's own
/// cache under the target directory, never the user's.
pub fn cairn_bare() -> Command {
    let mut command = Command::new(CAIRN);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cairn-test-cache-{}", std::process::id()));
    command.env("CAIRN_CACHE_DIR", cache);
    command
}

/// The password every test repository is created with.
pub const PASSWORD: &str = "correct horse battery staple";

/// Sets the test password (and a small Argon2id memory size, so tests stay fast) on a command.
pub fn with_password(command: &mut Command) -> &mut Command {
    command
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_KDF_MEMORY_KIB", "1024")
        .env_remove("CAIRN_PASSWORD_FILE")
        .env_remove("CAIRN_PASSWORD_COMMAND")
}

/// Runs and returns the output, printing it when the test fails later.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().expect("cairn runs");
    eprintln!(
        "$ {:?}\n-> {}\nstdout: {}\nstderr: {}",
        command,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs, asserts success, and returns stdout.
pub fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(output.status.success(), "command failed: {:?}", command);
    String::from_utf8(output.stdout).unwrap()
}

/// Runs with `--json` and parses stdout.
pub fn json(command: &mut Command) -> serde_json::Value {
    let out = ok(command.arg("--json"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {out:?}: {e}"))
}

pub fn init(repo: &Path) {
    ok(cairn(repo).arg("init"));
}

/// An unencrypted repository that cuts small chunks, so a file of a few hundred KiB has
/// thousands of them and keeps its chunk list in list blobs (store-format/tree.md "Chunk lists").
pub fn small_chunk_repository(repo: &Path) {
    use cairn::format::config::{ChunkerParams, Config};
    use cairn::repository::{Location, NewKeys, Repository};
    let mut config = Config::new_random();
    config.chunker = ChunkerParams { min_size: 64, avg_size: 256, max_size: 1024, ..config.chunker };
    Repository::create(&Location::parse(&repo.to_string_lossy()), config, NewKeys::None).unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` pseudo-random bytes to `path` without holding them all in memory.
pub fn write_noise_file(path: &Path, len: u64, seed: u64) {
    let mut file = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut left = len;
    let mut seed = seed;
    while left > 0 {
        let block = noise(left.min(1 << 20) as usize, seed);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        file.write_all(&block).unwrap();
        left -= block.len() as u64;
    }
    file.flush().unwrap();
}

/// Sets a path's mtime (not following symlinks) to an exact value with nanoseconds.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let times = [libc::timespec { tv_sec: sec, tv_nsec: nsec }, libc::timespec { tv_sec: sec, tv_nsec: nsec }];
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// What a restore must reproduce of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    link_target: Option<Vec<u8>>,
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "device"
    }
}

/// Every entry below `root` by relative path, plus the groups of hard-linked files.
/// Relative paths (raw bytes) to entries, and the groups of paths that share one inode.
type Scan = (BTreeMap<Vec<u8>, Entry>, Vec<Vec<Vec<u8>>>);

fn scan(root: &Path) -> Scan {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for item in fs::read_dir(root.join(&relative)).unwrap() {
            let item = item.unwrap();
            let rel = relative.join(item.file_name());
            let meta = fs::symlink_metadata(item.path()).unwrap();
            let kind = kind_of(&meta);
            if kind == "dir" {
                pending.push(rel.clone());
            }
            if kind == "file" && meta.nlink() > 1 {
                inodes.entry((meta.dev(), meta.ino())).or_default().push(rel.as_os_str().as_bytes().to_vec());
            }
            let link_target =
                (kind == "symlink").then(|| fs::read_link(item.path()).unwrap().as_os_str().as_bytes().to_vec());
            entries.insert(
                rel.as_os_str().as_bytes().to_vec(),
                Entry {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    size: if kind == "file" { meta.len() } else { 0 },
                    link_target,
                },
            );
        }
    }
    let mut groups: Vec<Vec<Vec<u8>>> = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (entries, groups)
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(file: &mut fs::File, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

/// Asserts that `restored` reproduces `source`: types, modes, owners (when root), mtimes to the
/// nanosecond, sizes, contents, symlink targets, hard-link groups, and no extra entries. Sockets
/// are recorded but not restored (store-format/tree.md), so they must be absent.
pub fn assert_same_tree(source: &Path, restored: &Path) {
    let (expected, expected_links) = scan(source);
    let (actual, actual_links) = scan(restored);
    let mut problems = Vec::new();
    for (path, want) in &expected {
        let shown = String::from_utf8_lossy(path);
        match actual.get(path) {
            None if want.kind == "socket" => {}
            None => problems.push(format!("missing {shown}")),
            Some(got) => {
                let comparable = |e: &Entry| (e.kind, e.mode, e.mtime, e.size, e.link_target.clone());
                let (w, g) = if want.kind == "symlink" {
                    // Symlink permission bits are not settable on Linux.
                    (
                        (want.kind, 0, want.mtime, 0, want.link_target.clone()),
                        (got.kind, 0, got.mtime, 0, got.link_target.clone()),
                    )
                } else {
                    (comparable(want), comparable(got))
                };
                if w != g {
                    problems.push(format!("{shown}: want {want:?}, got {got:?}"));
                }
                if is_root() && (want.uid, want.gid) != (got.uid, got.gid) {
                    problems.push(format!("{shown}: owner differs"));
                }
                if want.kind == "file"
                    && !same_content(&source.join(OsStr::from_bytes(path)), &restored.join(OsStr::from_bytes(path)))
                {
                    problems.push(format!("{shown}: content differs"));
                }
            }
        }
    }
    for path in actual.keys() {
        if !expected.contains_key(path) {
            problems.push(format!("unexpected {}", String::from_utf8_lossy(path)));
        }
    }
    if expected_links != actual_links {
        problems.push(format!("hard-link groups differ: want {expected_links:?}, got {actual_links:?}"));
    }
    assert!(
        problems.is_empty(),
        "{} differences, first ones:\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Makes `path` and its parents writable by anyone (for running cairn as an unprivileged user).
pub fn open_up(path: &Path) {
    let mut p = path.to_path_buf();
    loop {
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o777)).unwrap();
        if !p.pop() || p == std::env::temp_dir() || p.as_os_str().is_empty() {
            break;
        }
    }
}

/// Every pack file of a repository with its length, largest last.
pub fn packs_by_size(repo: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for dir in fs::read_dir(repo.join("packs")).unwrap() {
        for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
            let pack = pack.unwrap();
            out.push((pack.path(), pack.metadata().unwrap().len()));
        }
    }
    out.sort_by_key(|(path, len)| (*len, path.clone()));
    out
}

/// Flips the bits of one byte of a file selected by the mask.
pub fn flip_byte(path: &Path, offset: u64, mask: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= mask;
    fs::write(path, bytes).unwrap();
}

/// Number of pack files in a repository.
pub fn pack_count(repo: &Path) -> usize {
    fs::read_dir(repo.join("packs")).unwrap().map(|d| fs::read_dir(d.unwrap().path()).unwrap().count()).sum()
}

/// Runs cairn as an unprivileged user when the tests run as root, so that permissions apply.
pub fn as_unprivileged(repo: &Path) -> Command {
    if !is_root() {
        return cairn(repo);
    }
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", CAIRN, "--repo"])
        .arg(repo)
        .env_remove("CAIRN_REPO")
        .stdin(Stdio::null());
    with_password(&mut command);
    command
}

/// Restores the default dispositions of SIGINT and SIGTERM in the child: a test run started in
/// the background (`cmd &` in a script) inherits SIGINT ignored, and the child would then never
/// see it.
pub fn default_signals(command: &mut Command) -> &mut Command {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    command
}

/// Peak RSS of a child process after its exec: its `VmHWM`, read from /proc while it runs. (The
/// rusage maximum would also count the test process's own pages that the child shared between
/// fork and exec, which depend on whatever other tests hold in memory at that moment.)
pub fn run_measuring_rss(command: &mut Command) -> (i32, u64) {
    let mut child = command.spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    (status.code().unwrap_or(-1), peak_kib * 1024)
}

/// `cairn dump latest / --archive tar` of `repo`, extracted by `tar` with `tar_args` (then
/// `-xf`) into `dir`/extracted, which it returns; both must succeed.
pub fn dump_and_extract(repo: &Path, dir: &Path, tar_args: &[&str]) -> PathBuf {
    let out = run(cairn(repo).args(["dump", "latest", "/", "--archive", "tar"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (archive, extracted) = (dir.join("all.tar"), dir.join("extracted"));
    fs::write(&archive, &out.stdout).unwrap();
    fs::create_dir(&extracted).unwrap();
    let tar = Command::new("tar").args(tar_args).arg("-xf").arg(&archive).arg("-C").arg(&extracted).output().unwrap();
    assert!(tar.status.success(), "{}", String::from_utf8_lossy(&tar.stderr));
    extracted
}

/// A tmpfs mounted at a path, unmounted when dropped (also when the test fails).
pub struct Mount(pub PathBuf);

impl Mount {
    /// A 4 MiB tmpfs at `at` (needs root).
    pub fn tmpfs(at: &Path) -> Mount {
        fs::create_dir_all(at).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "cairn-test"]).arg(at).status().unwrap();
        assert!(status.success(), "mount tmpfs on {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Mount {
    /// A 4 MiB tmpfs at `at`, or `None` where it cannot be mounted (not root, no privilege).
    pub fn try_tmpfs(at: &Path) -> Option<Mount> {
        Self::try_tmpfs_of(at, 4)
    }

    /// A tmpfs of `mib` MiB at `at`, or `None` where it cannot be mounted.
    pub fn try_tmpfs_of(at: &Path, mib: u32) -> Option<Mount> {
        fs::create_dir_all(at).unwrap();
        let size = format!("size={mib}m");
        let mount = Command::new("mount").args(["-t", "tmpfs", "-o", &size, "cairn-test"]).arg(at).output();
        mount.ok()?.status.success().then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes an exclusive lock of a prune that is still running (this test process holds it) into
/// `repo`: commands that need a lock wait for it, up to their `--lock-wait`.
pub fn hold_prune_lock(repo: &Path) {
    use cairn::repository::lock::{LockFile, LockKind};
    let held = LockFile {
        kind: LockKind::Exclusive,
        command: "prune".into(),
        hostname: cairn::host::hostname(),
        pid: std::process::id(),
        time_ms: cairn::clock::now_ms(),
        nonce: "test".into(),
    };
    fs::create_dir_all(repo.join("locks")).unwrap();
    fs::write(repo.join("locks/held"), held.encode()).unwrap();
}
