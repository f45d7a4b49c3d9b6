//! One conformance suite for every backend: the local directory, memory://, and a real
//! S3-compatible server (moto_server) that the tests start on 127.0.0.1. Then the CLI against
//! an s3:// repository.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn::backend::local::LocalBackend;
use cairn::backend::object::ObjectBackend;
use cairn::backend::Backend;

use crate::support::*;

/// A moto_server on a free loopback port, with a bucket. It stops when the test process ends.
pub struct S3 {
    pub endpoint: String,
}

pub const BUCKET: &str = "cairn-tests";

#[allow(clippy::zombie_processes)] // the watchdog shell outlives the test process by design
pub fn s3() -> &'static S3 {
    static SERVER: OnceLock<S3> = OnceLock::new();
    SERVER.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // A watchdog shell stops the server once this test process is gone.
        let script = format!(
            "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & server=$!; while kill -0 {} 2>/dev/null; do sleep 1; done; kill $server",
            std::process::id()
        );
        Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn().expect("sh runs");
        wait_listening(port);
        create_bucket(port);
        S3 { endpoint: format!("http://127.0.0.1:{port}") }
    })
}

/// Waits for a moto_server starting on `port`.
fn wait_listening(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "moto_server did not start on 127.0.0.1:{port}: install it with `pip install 'moto[server]'`"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates the test bucket with a plain HTTP PUT.
pub fn create_bucket(port: u16) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "creating the bucket: {reply}");
}

/// A moto_server of a test's own, which the test may stop (moto keeps objects in memory: a
/// stopped server has lost them all, and a started one has no bucket until `create_bucket`).
pub struct Moto {
    pub port: u16,
    child: std::process::Child,
}

impl Moto {
    pub fn start(port: u16, with_bucket: bool) -> Moto {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs: install it with `pip install 'moto[server]'`");
        wait_listening(port);
        if with_bucket {
            create_bucket(port);
        }
        Moto { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3 {
    /// The settings cairn needs, as environment variables for the CLI.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    pub fn backend(&self, prefix: &str) -> ObjectBackend {
        backend_at(&self.endpoint, prefix)
    }
}

/// The test bucket at `endpoint`, below `prefix`.
pub fn backend_at(endpoint: &str, prefix: &str) -> ObjectBackend {
    let settings = [
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
    ];
    ObjectBackend::open_with(&format!("s3://{BUCKET}/{prefix}"), &settings).unwrap()
}

/// What every backend must do: create-only puts, exact ranged reads, listing by prefix,
/// idempotent deletes, and NotFound for what is not there.
fn conformance(backend: &dyn Backend) {
    assert!(backend.put("snapshots/aa", b"first version").unwrap());
    assert!(!backend.put("snapshots/aa", b"second version").unwrap(), "puts are create-only");
    assert_eq!(backend.get("snapshots/aa").unwrap(), b"first version");
    assert_eq!(backend.get_range("snapshots/aa", 6, 7).unwrap(), b"version");
    assert!(backend.get_range("snapshots/aa", 10, 10).is_err(), "reading past the end fails");
    assert_eq!(backend.size("snapshots/aa").unwrap(), 13);
    assert!(backend.exists("snapshots/aa").unwrap());
    assert!(!backend.exists("snapshots/zz").unwrap());
    match backend.get("snapshots/zz") {
        Err(cairn::error::Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("missing object: {other:?}"),
    }
    assert!(backend.put("packs/ab/abcdef", &vec![7u8; 100_000]).unwrap());
    assert!(backend.put("packs/cd/cdef01", b"x").unwrap());
    assert!(backend.put("packsfoo", b"not under packs/").unwrap());
    let packs = backend.list("packs").unwrap();
    assert_eq!(packs, vec![("packs/ab/abcdef".to_string(), 100_000), ("packs/cd/cdef01".to_string(), 1)]);
    assert!(backend.list("index").unwrap().is_empty());
    // Lock ages are measured by the store's clock: every object listed has its time, about now.
    let now = cairn::clock::now_ms();
    for (key, _, modified) in backend.list_with_times("packs").unwrap() {
        let modified = modified.unwrap_or_else(|| panic!("{key} is listed without its time"));
        assert!((modified - now).abs() < 600_000, "{key}: modified {modified}, now {now}");
    }
    backend.delete("packs/cd/cdef01").unwrap();
    backend.delete("packs/cd/cdef01").unwrap();
    assert_eq!(backend.list("packs").unwrap().len(), 1);
    assert_eq!(backend.get("packs/ab/abcdef").unwrap(), vec![7u8; 100_000]);
}

#[test]
fn local_backend_conforms() {
    let scratch = Scratch::new("conformance-local");
    conformance(&LocalBackend::new(scratch.path()));
}

#[test]
fn memory_backend_conforms() {
    conformance(&ObjectBackend::open("memory://").unwrap());
}

#[test]
fn s3_backend_conforms() {
    conformance(&s3().backend(&format!("conformance-{}", std::process::id())));
}

#[test]
fn commands_work_against_an_s3_repository() {
    let server = s3();
    let scratch = Scratch::new("s3-cli");
    let source = scratch.join("src");
    crate::roundtrip::build_special_tree(&source);
    let url = format!("s3://{BUCKET}/cli-{}", std::process::id());
    let repo = std::path::PathBuf::from(&url);
    let with_s3 = |command: &mut Command| {
        for (key, value) in server.env() {
            command.env(key, value);
        }
    };
    let c = |args: &[&str]| {
        let mut command = cairn(&repo);
        command.args(args);
        with_s3(&mut command);
        command
    };
    ok(&mut c(&["init"]));
    ok(c(&["snapshot"]).arg(&source));
    fs::write(source.join("dir/small.txt"), b"second version").unwrap();
    ok(c(&["snapshot"]).arg(&source));
    let list = json(&mut c(&["snapshots"]));
    assert_eq!(list.as_array().unwrap().len(), 2);
    let target = scratch.join("restored");
    ok(c(&["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    ok(&mut c(&["check", "--read-data"]));
    ok(&mut c(&["forget", "--keep-last", "1", "--prune"]));
    ok(&mut c(&["check", "--read-data"]));
    let target = scratch.join("after-prune");
    ok(c(&["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
    let drill = json(c(&["drill", "--scratch"]).arg(scratch.join("drills")));
    assert_eq!(drill["checks_failed"], 0);
    assert!(ok(&mut c(&["ls", "latest"])).contains("small.txt"));
    assert!(json(&mut c(&["stats"])).to_string().contains("unique"));
    ok(&mut c(&["status"]));
}
