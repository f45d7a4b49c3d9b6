//! Writing a snapshot into an object store keeps several pack uploads in flight
//! (src/repository/upload.rs), and a failed upload fails the snapshot cleanly: no manifest, the
//! repository still checks clean and restores what it held. A proxy in front of the test's
//! moto_server holds every pack PUT for a moment, counts how many are in flight at once, and can
//! answer them with S3's `403 AccessDenied` instead of passing them on, as a bucket policy that
//! denies writes under `packs/` would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crate::backends::{s3, BUCKET};
use crate::support::*;

/// How long the proxy holds each pack PUT before passing it on.
const HOLD: Duration = Duration::from_millis(150);

#[derive(Default)]
struct Counts {
    in_flight: AtomicUsize,
    most: AtomicUsize,
    passed: AtomicUsize,
    denied: AtomicUsize,
    /// Pack PUTs still passed on before the rest are denied; negative: none are denied.
    allowed: AtomicI64,
}

struct Proxy {
    port: u16,
    counts: Arc<Counts>,
}

impl Proxy {
    fn start() -> Proxy {
        let upstream = s3().endpoint.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        counts.allowed.store(-1, SeqCst);
        let shared = counts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (counts, upstream) = (shared.clone(), upstream.clone());
                std::thread::spawn(move || connection(client, &upstream, &counts));
            }
        });
        Proxy { port, counts }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One request (moto answers each connection once, then closes it): its head and body read, a
/// pack PUT held for [`HOLD`] or denied, the rest passed on, the response copied back.
fn connection(client: TcpStream, upstream: &str, counts: &Counts) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut client = client;
    let pack_put = head.starts_with("PUT ") && head.lines().next().unwrap_or_default().contains("/packs/");
    if pack_put {
        if counts.allowed.load(SeqCst) == 0 {
            counts.denied.fetch_add(1, SeqCst);
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            );
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let _ = counts.allowed.fetch_update(SeqCst, SeqCst, |n| (n > 0).then_some(n - 1));
        let now = counts.in_flight.fetch_add(1, SeqCst) + 1;
        counts.most.fetch_max(now, SeqCst);
        std::thread::sleep(HOLD);
    }
    let mut server = TcpStream::connect(upstream).unwrap();
    let forwarded = server.write_all(head.as_bytes()).and_then(|()| server.write_all(&body));
    let mut response = Vec::new();
    if forwarded.is_ok() {
        let _ = server.read_to_end(&mut response);
    }
    if pack_put {
        counts.in_flight.fetch_sub(1, SeqCst);
        counts.passed.fetch_add(1, SeqCst);
    }
    let _ = client.write_all(&response);
    let _ = client.shutdown(Shutdown::Both);
}

/// A repository of 1 MiB packs below a new prefix of the test bucket, and the commands on it
/// through `endpoint`.
struct Remote {
    url: PathBuf,
    cache: PathBuf,
}

impl Remote {
    fn create(scratch: &Scratch, name: &str) -> Remote {
        let url = format!("s3://{BUCKET}/{name}-{}", std::process::id());
        let mut location = cairn::repository::Location::parse(&url);
        for (key, value) in [
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
            ("aws_endpoint", &s3().endpoint),
            ("aws_allow_http", "true"),
        ] {
            location = location.with_setting(key, value);
        }
        // Small packs: a few MiB of data make many of them.
        let config =
            cairn::format::config::Config { pack_target_size: 1 << 20, ..cairn::format::config::Config::new_random() };
        let keys = cairn::repository::NewKeys::New { passphrase: PASSWORD.to_string() };
        cairn::repository::Repository::create(&location, config, keys).unwrap();
        Remote { url: PathBuf::from(url), cache: scratch.join("cache") }
    }

    fn cairn(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut command = cairn(&self.url);
        command.args(args).env("CAIRN_CACHE_DIR", &self.cache);
        for (key, value) in s3().env() {
            command.env(key, value);
        }
        command.env("AWS_ENDPOINT_URL", endpoint);
        command
    }
}

/// `files` files of 2 MiB of noise below `root` (incompressible: 12 of them fill about 17 packs).
fn noise_tree(root: &Path, files: u64, seed: u64) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..files {
        write_noise_file(&root.join(format!("f{i}")), 2 << 20, seed + i);
    }
}

#[test]
fn a_snapshot_into_s3_keeps_several_puts_in_flight_and_restores_exactly() {
    let scratch = Scratch::new("s3-writes-flight");
    let proxy = Proxy::start();
    let remote = Remote::create(&scratch, "writes-flight");
    let source = scratch.join("src");
    noise_tree(&source, 12, 1);
    let snapshot = json(remote.cairn(&proxy.endpoint(), &["snapshot"]).arg(&source));
    let packs = proxy.counts.passed.load(SeqCst);
    assert!(packs >= 12, "{packs} packs put: {snapshot}");
    let most = proxy.counts.most.load(SeqCst);
    assert!(most >= 3, "at most {most} pack PUTs were in flight at once, of {packs}");
    let target = scratch.join("restored");
    ok(remote.cairn(&s3().endpoint, &["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    let check = json(&mut remote.cairn(&s3().endpoint, &["check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
}

#[test]
fn a_refused_upload_fails_the_snapshot_and_leaves_the_repository_whole() {
    let scratch = Scratch::new("s3-writes-denied");
    let proxy = Proxy::start();
    let remote = Remote::create(&scratch, "writes-denied");
    let first = scratch.join("first");
    noise_tree(&first, 2, 100);
    ok(remote.cairn(&proxy.endpoint(), &["snapshot"]).arg(&first));

    // Five more pack PUTs pass, then every one is refused.
    proxy.counts.allowed.store(5, SeqCst);
    let second = scratch.join("second");
    noise_tree(&second, 12, 200);
    let output = run(remote.cairn(&proxy.endpoint(), &["snapshot"]).arg(&second));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the snapshot succeeded with its uploads refused");
    assert!(proxy.counts.denied.load(SeqCst) >= 1);
    assert!(
        stderr.contains("Access Denied") && stderr.contains(&format!("{}/packs/", remote.url.display())),
        "the error says what failed and where: {stderr}"
    );
    // The work stopped at the first refusal: only the puts already in flight or queued were
    // tried after it (at most 4 + 2), not the dozen more packs the second tree needs.
    let denied = proxy.counts.denied.load(SeqCst);
    assert!(denied <= 8, "{denied} pack PUTs were refused: the work went on after the first");

    let snapshots = json(&mut remote.cairn(&s3().endpoint, &["snapshots"]));
    assert_eq!(snapshots.as_array().map(Vec::len), Some(1), "a manifest was written: {snapshots}");
    let check = json(&mut remote.cairn(&s3().endpoint, &["check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    let target = scratch.join("restored");
    ok(remote.cairn(&s3().endpoint, &["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&first, &target);
}
