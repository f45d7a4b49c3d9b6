//! Reading a repository back from an object store costs requests by pack, not by chunk
//! (src/repository/reader.rs, src/repository/cache.rs). The requests are counted by a proxy
//! between cairn and the loopback moto_server, which can also cut a response in the middle of
//! its body, as a dropped connection does, stall one, or send every response slowly.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use crate::backends::{s3, BUCKET};
use crate::support::*;

/// A TCP proxy in front of the test's moto_server that counts the HTTP requests going through
/// it, by method and path.
struct Proxy {
    port: u16,
    log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Set: the response to the next ranged GET of a pack, of a range over twice [`CUT_AFTER`]
    /// bytes, is cut after [`CUT_AFTER`] bytes.
    cut_next_pack: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    /// Set: the next such response stops after [`CUT_AFTER`] bytes and its connection stays
    /// open, silent, as a stalled one does.
    stall_next_pack: Arc<AtomicBool>,
    stalls: Arc<AtomicU64>,
    /// Bytes a second of every response body and head from here on; 0 for no limit.
    rate: Arc<AtomicU64>,
    /// Set: the first byte of the body of the next GET of a snapshot file is flipped on the way.
    flip_next_snapshot: Arc<AtomicBool>,
    /// Set: so is that of the next ranged GET of a pack that [`Proxy::cut_next_pack`] could cut.
    flip_next_pack: Arc<AtomicBool>,
}

const CUT_AFTER: usize = 64 * 1024;

impl Proxy {
    fn start() -> Proxy {
        let upstream = s3().endpoint.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            log: Default::default(),
            cut_next_pack: Default::default(),
            cuts: Default::default(),
            stall_next_pack: Default::default(),
            stalls: Default::default(),
            rate: Default::default(),
            flip_next_snapshot: Default::default(),
            flip_next_pack: Default::default(),
        };
        let (log, cut, cuts) = (proxy.log.clone(), proxy.cut_next_pack.clone(), proxy.cuts.clone());
        let (stall, stalls, rate) = (proxy.stall_next_pack.clone(), proxy.stalls.clone(), proxy.rate.clone());
        let (flip, flip_pack) = (proxy.flip_next_snapshot.clone(), proxy.flip_next_pack.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let server = TcpStream::connect(&upstream).unwrap();
                let (log, cut, cuts) = (log.clone(), cut.clone(), cuts.clone());
                let (stall, stalls, rate, flip) = (stall.clone(), stalls.clone(), rate.clone(), flip.clone());
                let flip_pack = flip_pack.clone();
                let (cut_this, stall_this) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
                let flip_this = Arc::new(AtomicBool::new(false));
                let (client_in, server_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let marked = (cut_this.clone(), stall_this.clone(), flip_this.clone());
                std::thread::spawn(move || {
                    let marks: Marks<'_> = ((&cut, &marked.0), (&stall, &marked.1), (&flip, &marked.2), &flip_pack);
                    requests(client_in, server_out, &log, marks)
                });
                std::thread::spawn(move || {
                    responses(server, client, (&cut_this, &cuts), (&stall_this, &stalls), &flip_this, &rate)
                });
            }
        });
        proxy
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The requests since `from`, as "METHOD path".
    fn since(&self, from: usize) -> Vec<String> {
        self.log.lock().unwrap()[from..].to_vec()
    }
}

/// Each fault the proxy can put into a response: whether to put it in the next one that fits,
/// and whether to put it in this connection's (the flip of a snapshot file's, then that of a
/// pack's, which marks the connection as the first does).
type Marks<'a> = (
    (&'a AtomicBool, &'a AtomicBool),
    (&'a AtomicBool, &'a AtomicBool),
    (&'a AtomicBool, &'a AtomicBool),
    &'a AtomicBool,
);

/// Forwards requests from the client, logging each (headers parsed, bodies skipped by their
/// Content-Length).
fn requests(
    mut from: TcpStream,
    mut to: TcpStream,
    log: &std::sync::Mutex<Vec<String>>,
    ((cut, cut_this), (stall, stall_this), (flip, flip_this), flip_pack): Marks<'_>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut body_left = 0usize;
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buffer.extend_from_slice(&chunk[..n]);
        loop {
            if body_left > 0 {
                let take = body_left.min(buffer.len());
                if to.write_all(&buffer[..take]).is_err() {
                    return;
                }
                buffer.drain(..take);
                body_left -= take;
                if body_left > 0 {
                    break;
                }
            }
            let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { break };
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let line = head.lines().next().unwrap_or_default();
            let mut parts = line.split(' ');
            let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            log.lock().unwrap().push(format!("{method} {path}"));
            // Only a range long enough to be cut is marked: the flag waits for one.
            let long_range = head
                .lines()
                .filter_map(|l| l.to_ascii_lowercase().strip_prefix("range:").map(str::to_string))
                .any(|range| match range.trim().strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
                    Some((first, last)) => match (first.parse::<usize>(), last.parse::<usize>()) {
                        (Ok(first), Ok(last)) => last >= first + 2 * CUT_AFTER,
                        _ => false,
                    },
                    None => false,
                });
            if method == "GET" && path.contains("/snapshots/") && flip.swap(false, SeqCst) {
                flip_this.store(true, SeqCst);
            }
            if method == "GET" && path.contains("/packs/") && long_range {
                if cut.swap(false, SeqCst) {
                    cut_this.store(true, SeqCst);
                } else if stall.swap(false, SeqCst) {
                    stall_this.store(true, SeqCst);
                } else if flip_pack.swap(false, SeqCst) {
                    flip_this.store(true, SeqCst);
                }
            }
            body_left = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if to.write_all(&buffer[..end + 4]).is_err() {
                return;
            }
            buffer.drain(..end + 4);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Forwards responses to the client, at `rate` bytes a second if set; cuts the connection in
/// the middle of a marked one, or stops sending on it.
fn responses(
    mut from: TcpStream,
    mut to: TcpStream,
    (cut_this, cuts): (&AtomicBool, &AtomicU64),
    (stall_this, stalls): (&AtomicBool, &AtomicU64),
    flip_this: &AtomicBool,
    rate: &AtomicU64,
) {
    let mut chunk = [0u8; 16 * 1024];
    let mut sent_of_cut = 0usize;
    let mut head_sent = false;
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if flip_this.load(SeqCst) {
            // The body's first byte: in this read after the head, or first in the next one.
            let body = match head_sent {
                true => Some(0),
                false => chunk[..n].windows(4).position(|w| w == b"\r\n\r\n").map(|end| end + 4),
            };
            match body {
                Some(at) if at < n => {
                    chunk[at] ^= 1;
                    flip_this.store(false, SeqCst);
                    head_sent = false;
                }
                Some(_) => head_sent = true,
                None => {}
            }
        }
        if stall_this.load(SeqCst) {
            sent_of_cut += n;
            if sent_of_cut > CUT_AFTER {
                stalls.fetch_add(1, SeqCst);
                // Open and silent until the client gives up on it (or the test ends).
                let mut sink = [0u8; 1];
                let _ = to.set_read_timeout(Some(std::time::Duration::from_secs(300)));
                let _ = to.read(&mut sink);
                return;
            }
        }
        let limit = rate.load(SeqCst);
        if limit > 0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / limit as f64));
        }
        if cut_this.load(SeqCst) {
            sent_of_cut += n;
            if sent_of_cut > CUT_AFTER {
                cuts.fetch_add(1, SeqCst);
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        if to.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A repository on the test server through `proxy`, and the commands against it.
struct Remote {
    url: PathBuf,
    endpoint: String,
    cache: PathBuf,
}

impl Remote {
    /// A new repository `<name>-<pid>` in the test bucket, reached through `proxy`, its cache in
    /// `scratch`.
    fn init(proxy: &Proxy, scratch: &Scratch, name: &str) -> Remote {
        let remote = Remote {
            url: PathBuf::from(format!("s3://{BUCKET}/{name}-{}", std::process::id())),
            endpoint: proxy.endpoint(),
            cache: scratch.join("cache"),
        };
        ok(&mut remote.cairn(&["init"]));
        remote
    }

    fn cairn(&self, args: &[&str]) -> Command {
        let mut command = cairn(&self.url);
        command.args(args).env("CAIRN_CACHE_DIR", &self.cache);
        for (key, value) in s3().env() {
            command.env(key, value);
        }
        command.env("AWS_ENDPOINT_URL", &self.endpoint);
        command
    }
}

/// A tree of `small` files of 60 KiB (one chunk each) and four of 4 MiB, all different: about
/// 40 MiB in three data packs.
fn build_tree(root: &Path, small: u64) {
    for i in 0..small {
        let dir = root.join(format!("d{}", i % 8));
        std::fs::create_dir_all(&dir).unwrap();
        write_noise_file(&dir.join(format!("f{i}")), 60 * 1024, i + 1);
    }
    for i in 0..4 {
        write_noise_file(&root.join(format!("big{i}")), 4 << 20, 1000 + i);
    }
}

/// Data and tree packs in the repository, listed straight from the server.
fn packs(remote: &str) -> usize {
    let backend = crate::backends::backend_at(&s3().endpoint, remote);
    cairn::backend::Backend::list(&backend, "packs").unwrap().len()
}

/// A repository below `name` in the test bucket, reached through `proxy`, holding one snapshot
/// of a tree of `small` small files and four big ones ([`build_tree`]); and that tree.
fn snapshot_of_a_tree(proxy: &Proxy, scratch: &Scratch, name: &str, small: u64) -> (Remote, PathBuf, String) {
    let source = scratch.join("src");
    build_tree(&source, small);
    let prefix = format!("{name}-{}", std::process::id());
    let remote = Remote::init(proxy, scratch, name);
    ok(remote.cairn(&["snapshot"]).arg(&source));
    (remote, source, prefix)
}

#[test]
fn restore_ls_and_drill_from_s3_read_by_pack_and_cache_metadata() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-reads");
    let (remote, source, prefix) = snapshot_of_a_tree(&proxy, &scratch, "reads", 400);
    let packs = packs(&prefix);
    assert!(packs >= 3, "{packs} packs");
    // What any command costs before its own reads: the config (a HEAD and a GET), the key file
    // (a listing and a GET), its lock (a put, a listing, a delete), the snapshot and index
    // listings and their files.
    let metadata = 12;

    // Cold cache: every pack once (tree packs whole), the metadata, nothing per chunk: the 404
    // files are 404+ chunks.
    std::fs::remove_dir_all(&remote.cache).unwrap();
    let before = proxy.count();
    let target = scratch.join("restored");
    ok(remote.cairn(&["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    let cold = proxy.since(before);
    let pack_gets = cold.iter().filter(|r| r.starts_with("GET") && r.contains("/packs/")).count();
    assert!(pack_gets <= 2 * packs, "{pack_gets} pack reads for {packs} packs: {cold:#?}");
    assert!(cold.len() <= 2 * packs + metadata, "{} requests for {packs} packs: {cold:#?}", cold.len());

    // Over the restored tree with --skip-identical: nothing differs, every planned read is
    // skipped, and the result is still exact. (The fetchers may have read ahead before the
    // writer found its files identical: at most once per pack.)
    let before = proxy.count();
    let again = json(remote.cairn(&["restore", "latest", "--skip-identical", "--target"]).arg(&target));
    assert_eq!(again["summary"]["files_unchanged"], 404, "{again}");
    assert_same_tree(&source, &target);
    let skipped = proxy.since(before);
    let pack_reads = skipped.iter().filter(|r| r.contains("/packs/")).count();
    assert!(pack_reads <= packs, "{skipped:#?}");

    // Warm: the index, the snapshot and the trees come from the cache.
    let before = proxy.count();
    let target = scratch.join("again");
    ok(remote.cairn(&["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    let warm = proxy.since(before);
    eprintln!("packs {packs}: cold {} requests, warm {}", cold.len(), warm.len());
    assert!(warm.len() < cold.len(), "warm {warm:#?}\ncold {cold:#?}");
    assert!(!warm.iter().any(|r| r.contains("/index/") && r.starts_with("GET /")), "{warm:#?}");

    // ls: trees only. Cold, a request per tree pack; warm, the metadata alone.
    std::fs::remove_dir_all(&remote.cache).unwrap();
    let before = proxy.count();
    assert!(ok(&mut remote.cairn(&["ls", "latest"])).contains("big3"));
    let ls_cold = proxy.since(before);
    assert!(ls_cold.len() <= metadata + 2, "{ls_cold:#?}");
    let before = proxy.count();
    ok(&mut remote.cairn(&["ls", "latest"]));
    let ls_warm = proxy.since(before);
    eprintln!("ls: cold {} requests, warm {}", ls_cold.len(), ls_warm.len());
    assert!(!ls_warm.iter().any(|r| r.contains("/packs/")), "{ls_warm:#?}");

    // A drill: a restore and its checks, within the same bound.
    let before = proxy.count();
    let drill = json(remote.cairn(&["drill", "--scratch"]).arg(scratch.join("drills")));
    assert_eq!(drill["checks_failed"], 0, "{drill}");
    let drilled = proxy.since(before);
    eprintln!("drill: {} requests: {drilled:#?}", drilled.len());
    // A drill also writes its audit record (a put).
    assert!(drilled.len() <= 2 * packs + metadata + 2, "{} requests: {drilled:#?}", drilled.len());
}

/// A tree deeper than a restore walks in one round (src/walk.rs, `ROUND_DEPTH`): the plan
/// follows the rounds, so the deep files' chunks come with their packs, not one GET each.
#[test]
fn a_tree_deeper_than_a_round_is_read_by_pack() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-deep");
    let source = scratch.join("src");
    let mut dir = source.clone();
    for level in 0..48u64 {
        dir = dir.join(format!("d{level}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_noise_file(&dir.join("a"), 40 * 1024, 2 * level + 1);
        write_noise_file(&dir.join("b"), 40 * 1024, 2 * level + 2);
    }
    // Restored in the first round, after the chain's first 32 levels and before the rest.
    std::fs::create_dir_all(source.join("z")).unwrap();
    for n in 0..16 {
        write_noise_file(&source.join("z").join(format!("{n}")), 40 * 1024, 1000 + n);
    }
    let remote = Remote::init(&proxy, &scratch, "deep");
    ok(remote.cairn(&["snapshot"]).arg(&source));
    let packs = packs(&format!("deep-{}", std::process::id()));
    let from = proxy.count();
    let target = scratch.join("restored");
    ok(remote.cairn(&["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    let requests = proxy.since(from);
    let pack_gets = requests.iter().filter(|r| r.starts_with("GET ") && r.contains("/packs/")).count();
    eprintln!("{pack_gets} pack reads for {packs} packs");
    assert!(pack_gets <= 2 * packs, "{pack_gets} pack reads for {packs} packs: {requests:#?}");
}

#[test]
fn a_connection_dropped_mid_restore_is_retried_and_the_result_is_exact() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-dropped");
    let (remote, source, _) = snapshot_of_a_tree(&proxy, &scratch, "dropped", 40);
    // The first range of a data pack that each restore reads loses its connection after 64 KiB:
    // with a cold cache, then with a warm one.
    for round in 0..2 {
        proxy.cut_next_pack.store(true, SeqCst);
        let target = scratch.join(format!("restored-{round}"));
        let mut command = remote.cairn(&["restore", "latest", "--target"]);
        command.arg(&target);
        let child = command.spawn().unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_same_tree(&source, &target);
    }
    assert_eq!(proxy.cuts.load(SeqCst), 2, "both responses were cut");
}

/// A snapshot file changed on the way (one byte of one response) is read again, not taken for
/// damage: before, `latest` then chose nothing (or the snapshot before it).
#[test]
fn a_snapshot_file_changed_on_the_way_is_read_again() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-flipped");
    let (remote, source, _) = snapshot_of_a_tree(&proxy, &scratch, "flipped", 10);
    proxy.flip_next_snapshot.store(true, SeqCst);
    let target = scratch.join("restored");
    let before = proxy.count();
    let mut command = remote.cairn(&["restore", "latest", "--target"]);
    command.arg(&target).env("CAIRN_CACHE_DIR", scratch.join("cold-cache"));
    let out = ok(&mut command);
    assert!(!proxy.flip_next_snapshot.load(SeqCst), "a snapshot file was read");
    let snapshot_gets =
        proxy.since(before).iter().filter(|r| r.starts_with("GET") && r.contains("/snapshots/")).count();
    assert_eq!(snapshot_gets, 2, "read again once: {out}");
    assert_same_tree(&source, &target);
}

/// A pack's response changed on the way (one byte of a blob flipped, which fails its
/// authentication) costs that blob a second read, not the file that needs it: before, the
/// restore reported the file damaged and left it out.
#[test]
fn a_blob_changed_on_the_way_is_read_again_alone() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-flipped-pack");
    let (remote, source, _) = snapshot_of_a_tree(&proxy, &scratch, "flipped-pack", 40);
    // Without the second read this restore fails the file (exit 1), which `ok` refuses. (How
    // many GETs a restore makes depends on timing: a count would not tell.)
    proxy.flip_next_pack.store(true, SeqCst);
    let target = scratch.join("restored");
    ok(remote.cairn(&["restore", "latest", "--target"]).arg(&target));
    assert!(!proxy.flip_next_pack.load(SeqCst), "a pack was read by range");
    assert_same_tree(&source, &target);
    // The same in a drill, which reads what a restore does and must not call the snapshot bad.
    proxy.flip_next_pack.store(true, SeqCst);
    ok(remote.cairn(&["drill", "--snapshot", "latest"]).env("CAIRN_CACHE_DIR", scratch.join("cold")));
    assert!(!proxy.flip_next_pack.load(SeqCst), "a pack was read by range");
}

/// A response that stops in the middle of its body, its connection left open, is given up after
/// the stall limit (2 s here, `CAIRN_STALL_SECS`) and read again: the restore is exact.
#[test]
fn a_stalled_connection_mid_restore_is_given_up_and_read_again() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-stalled");
    let (remote, source, _) = snapshot_of_a_tree(&proxy, &scratch, "stalled", 40);
    proxy.stall_next_pack.store(true, SeqCst);
    let target = scratch.join("restored");
    let started = std::time::Instant::now();
    ok(remote.cairn(&["restore", "latest", "--target"]).arg(&target).env("CAIRN_STALL_SECS", "2"));
    assert_same_tree(&source, &target);
    assert_eq!(proxy.stalls.load(SeqCst), 1);
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
}

/// A link so slow that one pack takes longer than the HTTP client's default limit on a whole
/// request (30 s: here about 36 s for a 9 MiB pack at 256 KiB/s) still restores: only a stall
/// ends a transfer. With that limit, every try of the pack failed and so did the restore.
#[test]
fn a_restore_over_a_slow_link_is_not_cut_off_by_a_limit_on_the_whole_request() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-slow-link");
    let source = scratch.join("src");
    std::fs::create_dir_all(&source).unwrap();
    write_noise_file(&source.join("big"), 9 << 20, 77);
    let remote = Remote::init(&proxy, &scratch, "slow-link");
    ok(remote.cairn(&["snapshot"]).arg(&source));
    proxy.rate.store(256 * 1024, SeqCst);
    let target = scratch.join("restored");
    let started = std::time::Instant::now();
    ok(remote.cairn(&["restore", "latest", "--target"]).arg(&target));
    assert!(started.elapsed().as_secs() >= 30, "not slow enough to show it: {:?}", started.elapsed());
    assert_same_tree(&source, &target);
}

#[test]
fn a_plain_http_endpoint_without_allow_http_says_what_to_set() {
    let scratch = Scratch::new("s3-plain-http");
    let url = PathBuf::from(format!("s3://{BUCKET}/plain-{}", std::process::id()));
    for args in [&["snapshots"][..], &["init"], &["restore", "latest", "--target", "t"]] {
        let mut command = cairn(&url);
        command.args(args).current_dir(scratch.path());
        for (key, value) in s3().env() {
            command.env(key, value);
        }
        let output = run(command.env_remove("AWS_ALLOW_HTTP"));
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is plain HTTP") && stderr.contains("AWS_ALLOW_HTTP=true"), "{args:?}: {stderr}");
        assert!(!scratch.join("t").exists(), "nothing is made");
    }
}

/// An endpoint where nothing listens: the error says so and what to check, where it only said
/// "error sending request" before.
#[test]
fn an_endpoint_where_nothing_listens_says_so() {
    let scratch = Scratch::new("s3-refused");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = PathBuf::from(format!("s3://{BUCKET}/refused-{}", std::process::id()));
    let mut command = cairn(&url);
    command.args(["snapshots"]).current_dir(scratch.path());
    for (key, value) in s3().env() {
        command.env(key, value);
    }
    let output = run(command.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Connection refused") && stderr.contains("is the server up"), "{stderr}");
}

/// A bucket that is not there: `init` says to create it (it answered with the store's XML error
/// before), and so do the commands that read one.
#[test]
fn a_missing_bucket_is_said_in_words() {
    let scratch = Scratch::new("s3-no-bucket");
    let url = PathBuf::from(format!("s3://cairn-missing-{}/repo", std::process::id()));
    let said = |args: &[&str]| {
        let mut command = cairn(&url);
        command.args(args).current_dir(scratch.path());
        for (key, value) in s3().env() {
            command.env(key, value);
        }
        let output = run(&mut command);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let err = said(&["init"]);
    assert!(err.contains("the bucket or container does not exist: create it first") && !err.contains("<?xml"), "{err}");
    for args in [&["snapshots"][..], &["restore", "latest", "--target", "t"]] {
        let err = said(args);
        assert!(err.contains("does not exist") || err.contains("no repository at"), "{args:?}: {err}");
    }
    assert!(!scratch.join("t").exists(), "nothing is made");
}

/// A database stored with a compression dictionary, restored from S3: its decoders all want the
/// dictionary at the same moment, and it is read once, not once by each.
#[test]
fn a_restore_from_s3_reads_a_dictionary_once() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-dictionary");
    let (data, image) = crate::dictionaries::database_in(&scratch);
    let remote = Remote::init(&proxy, &scratch, "dictionary");
    ok(remote.cairn(&["snapshot"]).arg(&data));
    for round in 0..3 {
        let _ = std::fs::remove_dir_all(&remote.cache);
        let before = proxy.count();
        let target = scratch.join(format!("restored-{round}"));
        ok(remote.cairn(&["restore", "latest", "--target"]).arg(&target));
        assert!(std::fs::read(target.join("app.db")).unwrap() == image);
        let requests = proxy.since(before);
        let reads = requests.iter().filter(|r| r.starts_with("GET") && r.contains("/dicts/")).count();
        assert_eq!(reads, 1, "{requests:#?}");
    }
}

/// Damaged blobs in the packs on the server: a restore from S3 fails exactly the files that hold
/// them (their names reported, nothing of them left, not even the pieces written before the
/// damaged blob), and every other file is restored whole. Its writers write a file's blobs on
/// threads apart from the walk that reads them (src/restore/writes.rs), so a file's failure is
/// known only after some of its blobs are written.
#[test]
fn damaged_blobs_on_s3_fail_only_their_files_and_leave_nothing_cut_short() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-damaged");
    let (remote, source, prefix) = snapshot_of_a_tree(&proxy, &scratch, "damaged", 120);
    let backend = crate::backends::backend_at(&s3().endpoint, &prefix);
    let mut data_packs = 0;
    for (key, len) in cairn::backend::Backend::list(&backend, "packs").unwrap() {
        if len < 1 << 20 {
            continue; // a tree pack
        }
        let mut bytes = cairn::backend::Backend::get(&backend, &key).unwrap();
        data_packs += 1;
        // A byte in each eighth: the big files' chunks of several MiB are hit mid-file.
        for eighth in 1..8 {
            let at = bytes.len() * eighth / 8;
            bytes[at] ^= 0x55;
        }
        cairn::backend::Backend::delete(&backend, &key).unwrap();
        assert!(cairn::backend::Backend::put(&backend, &key, &bytes).unwrap());
    }
    assert!(data_packs >= 1, "{data_packs} data packs");

    std::fs::remove_dir_all(&remote.cache).unwrap();
    let target = scratch.join("restored");
    let output = run(remote.cairn(&["restore", "latest", "--json", "--target"]).arg(&target));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let failed: Vec<PathBuf> = (report["summary"]["errors"].as_array().unwrap().iter())
        .map(|error| PathBuf::from(error["path"].as_str().unwrap()))
        .collect();
    assert!(!failed.is_empty(), "{report}");
    let mut restored = 0;
    let mut big_failed = 0;
    for dir in std::iter::once(source.clone()).chain((0..8).map(|d| source.join(format!("d{d}")))) {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let there = target.join(path.strip_prefix(&source).unwrap());
            if failed.iter().any(|f| f.ends_with(path.strip_prefix(&source).unwrap())) {
                assert!(std::fs::symlink_metadata(&there).is_err(), "{} failed but is there", there.display());
                big_failed += path.file_name().unwrap().to_string_lossy().starts_with("big") as usize;
            } else {
                assert_eq!(std::fs::read(&there).unwrap(), std::fs::read(&path).unwrap(), "{}", there.display());
                restored += 1;
            }
        }
    }
    eprintln!("{} files failed ({big_failed} big), {restored} restored", failed.len());
    assert!(big_failed > 0, "no big file was hit mid-file: {failed:?}");
    assert!(restored >= 100, "{restored} restored");
}

/// Snapshots `source` into the test server (below `name`), then restores it from there into a
/// fresh tmpfs of `mib` MiB, where it must fail: the mount (kept mounted while it lives), the
/// target, and the errors of the restore's `--json` summary. `None` without root.
fn restore_onto_a_small_disk(
    proxy: &Proxy,
    scratch: &Scratch,
    source: &Path,
    name: &str,
    mib: u32,
) -> Option<(Mount, PathBuf, Vec<serde_json::Value>)> {
    let remote = Remote::init(proxy, scratch, name);
    ok(remote.cairn(&["snapshot"]).arg(source));
    let Some(mount) = Mount::try_tmpfs_of(&scratch.join("small"), mib) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    };
    let target = mount.0.join("t");
    let output = run(remote.cairn(&["restore", "latest", "--json", "--target"]).arg(&target));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let errors = report["summary"]["errors"].as_array().unwrap().clone();
    Some((mount, target, errors))
}

/// A restore from S3 that fills its target's disk fails the file that filled it and restores the
/// small files after it: the room of what was written of a failed file is given back at once
/// (the writers once kept it until the end of the restore, and every later file failed too).
#[test]
fn a_full_target_disk_fails_the_file_that_filled_it_not_every_file_after() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-full-target");
    let source = scratch.join("src");
    std::fs::create_dir_all(&source).unwrap();
    for (n, name) in ["a1", "a2", "a3"].iter().enumerate() {
        write_noise_file(&source.join(name), 8 << 20, 70 + n as u64);
    }
    for i in 0..50 {
        write_noise_file(&source.join(format!("b{i:02}")), 10_000, 100 + i);
    }
    let Some((_mount, target, errors)) = restore_onto_a_small_disk(&proxy, &scratch, &source, "full-target", 20) else {
        return;
    };
    assert_eq!(errors.len(), 1, "only the file that filled the disk fails: {errors:#?}");
    assert!(errors[0]["message"].as_str().unwrap().contains("No space left"), "{errors:#?}");
    for i in 0..50 {
        let name = format!("b{i:02}");
        assert_eq!(std::fs::read(target.join(&name)).unwrap(), std::fs::read(source.join(&name)).unwrap(), "{name}");
    }
    let failed = std::path::Path::new(errors[0]["path"].as_str().unwrap());
    assert!(std::fs::symlink_metadata(failed).is_err(), "{} is left", failed.display());
}

/// Under a low limit of open files (a container's, a service unit's LimitNOFILE), a restore from
/// S3 of many small files restores them all: the writers' queue holds a file open per blob, and
/// once took more descriptors than the limit allowed ("Too many open files" for thousands).
#[test]
fn a_low_open_file_limit_still_restores_every_small_file() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-nofile");
    let source = scratch.join("src");
    for i in 0..3000u64 {
        let dir = source.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    let remote = Remote::init(&proxy, &scratch, "nofile");
    ok(remote.cairn(&["snapshot"]).arg(&source));
    // With writers (their queue within the limit), and without (too few for them).
    for files in [160, 40] {
        let target = scratch.join(format!("restored-{files}"));
        let mut command = remote.cairn(&["restore", "latest", "--target"]);
        command.arg(&target);
        // SAFETY: only setrlimit between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                let limit = libc::rlimit { rlim_cur: files, rlim_max: files };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        ok(&mut command);
        assert_same_tree(&source, &target);
    }
}

/// A database after a file that fills the disk: restore writes a database itself, on its walking
/// thread, and once did so while the writers were still writing the big file before it, so the
/// database failed too where it fits once the big file gave its room back. The writers' queue is
/// now drained before a database.
#[test]
fn a_database_after_the_file_that_filled_the_disk_is_restored() {
    let proxy = Proxy::start();
    let scratch = Scratch::new("s3-full-db");
    let source = scratch.join("src");
    std::fs::create_dir_all(&source).unwrap();
    write_noise_file(&source.join("a_big"), 30 << 20, 7);
    let db = rusqlite::Connection::open(source.join("b.db")).unwrap();
    db.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT); BEGIN").unwrap();
    for i in 0..8000u64 {
        let body: String = noise(1000, 50 + i).iter().map(|b| (b'a' + b % 26) as char).collect();
        db.execute("INSERT INTO t(body) VALUES (?1)", [body]).unwrap();
    }
    db.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(db);
    for i in 0..10 {
        write_noise_file(&source.join(format!("c{i}")), 10_000, 200 + i);
    }
    let Some((_mount, target, errors)) = restore_onto_a_small_disk(&proxy, &scratch, &source, "full-db", 25) else {
        return;
    };
    assert_eq!(errors.len(), 1, "only the big file fails: {errors:#?}");
    assert!(errors[0]["path"].as_str().unwrap().ends_with("a_big"), "{errors:#?}");
    assert!(std::fs::symlink_metadata(target.join("a_big")).is_err());
    let restored = rusqlite::Connection::open(target.join("b.db")).unwrap();
    let rows: i64 = restored.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap();
    assert_eq!(rows, 8000);
    for i in 0..10 {
        let name = format!("c{i}");
        assert_eq!(std::fs::read(target.join(&name)).unwrap(), std::fs::read(source.join(&name)).unwrap(), "{name}");
    }
}
