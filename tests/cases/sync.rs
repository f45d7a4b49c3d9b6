//! `cairn sync`: incremental, resumable after kill -9, safe through a server outage, able to prune
//! the destination, and enough to recover from losing the local repository entirely. The
//! destination is the loopback S3 server (moto_server), sometimes behind a proxy the test cuts.

use std::fs;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::backend::Backend;

use crate::backends::{backend_at, create_bucket, s3, Moto, BUCKET};
use crate::sqlite::{counts, integrity, start_pair_writer, wal_database};
use crate::support::*;

/// A cairn command against `repo` with the S3 server's settings in its environment, pointed at
/// `endpoint` (the server itself or a proxy in front of it).
fn cairn_s3(repo: &Path, endpoint: &str) -> Command {
    let mut command = cairn(repo);
    for (key, value) in s3().env() {
        command.env(key, value);
    }
    command.env("AWS_ENDPOINT_URL", endpoint);
    command
}

fn unique_url(name: &str) -> String {
    format!("s3://{BUCKET}/{name}-{}-{}", std::process::id(), cairn::id::Id(cairn::id::random_bytes()).short())
}

/// The destination's objects, read directly from the server.
fn dest_backend(url: &str) -> cairn::backend::object::ObjectBackend {
    s3().backend(url.trim_start_matches(&format!("s3://{BUCKET}/")))
}

fn object_count(url: &str, dir: &str) -> usize {
    dest_backend(url).list(dir).unwrap().len()
}

/// A TCP proxy in front of the S3 server that the test can cut: `stop` refuses new connections
/// and breaks the open ones, as an outage or a server restart would, while the server keeps its
/// objects; `start` serves again on the same port.
struct Proxy {
    port: u16,
    upstream: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
    running: Arc<AtomicBool>,
    acceptor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Proxy {
    fn new(upstream: &str) -> Proxy {
        let upstream = upstream.rsplit(':').next().unwrap().parse().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = Proxy { port, upstream, open: Arc::default(), running: Arc::default(), acceptor: Mutex::new(None) };
        proxy.start();
        proxy
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.running.store(true, Relaxed);
        let (open, running, upstream) = (self.open.clone(), self.running.clone(), self.upstream);
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                if !running.load(Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        *self.acceptor.lock().unwrap() = Some(acceptor);
    }

    fn stop(&self) {
        self.running.store(false, Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the acceptor
        if let Some(acceptor) = self.acceptor.lock().unwrap().take() {
            acceptor.join().unwrap();
        }
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A local repository with one snapshot of `mib` MiB of incompressible data (several packs).
fn local_repo_with_data(scratch: &Scratch, mib: u64) -> (PathBuf, PathBuf) {
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    for i in 0..4 {
        write_noise_file(&data.join(format!("blob-{i}")), mib << 18, 40 + i);
    }
    crate::roundtrip::build_special_tree(&data.join("special"));
    ok(cairn(&repo).args(["snapshot", "--source", "data", "-q"]).arg(&data));
    (data, repo)
}

fn sync_json(repo: &Path, endpoint: &str, url: &str, extra: &[&str]) -> serde_json::Value {
    json(cairn_s3(repo, endpoint).args(["sync", "--to", url]).args(extra))
}

/// Checks the destination with --read-data and restores its newest snapshot over `expected`.
fn assert_destination_good(scratch: &Scratch, url: &str, expected: &Path, name: &str) {
    let dest = PathBuf::from(url);
    let check = json(cairn_s3(&dest, &s3().endpoint).args(["check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    let target = scratch.join(name);
    ok(cairn_s3(&dest, &s3().endpoint).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(expected, &target);
}

#[test]
fn sync_is_incremental_and_cheap_when_up_to_date() {
    let scratch = Scratch::new("sync-incremental");
    let (data, repo) = local_repo_with_data(&scratch, 8);
    let url = unique_url("incremental");
    let endpoint = &s3().endpoint;

    let first = sync_json(&repo, endpoint, &url, &[]);
    assert_eq!(first["report"]["snapshots_copied"].as_array().unwrap().len(), 1);
    let packs = first["report"]["packs_copied"].as_u64().unwrap();
    assert!(packs >= 2, "{first}");
    assert_eq!(object_count(&url, "packs") as u64, packs);

    // Nothing new: the destination sees its config and key file read and three listings (keys,
    // snapshots, and dictionaries: one lost there would be copied back), nothing else.
    let again = sync_json(&repo, endpoint, &url, &[]);
    assert_eq!(again["report"]["snapshots_copied"].as_array().unwrap().len(), 0);
    assert_eq!(again["report"]["packs_copied"], 0);
    let requests = &again["requests"];
    assert_eq!(requests["put"], 0, "{again}");
    assert_eq!(requests["list"], 3, "{again}");
    assert!(requests["get"].as_u64().unwrap() + requests["head"].as_u64().unwrap() <= 3, "{again}");

    // A small change ships only what is new.
    fs::write(data.join("special/new.txt"), b"one more file").unwrap();
    ok(cairn(&repo).args(["snapshot", "--source", "data", "-q"]).arg(&data));
    let third = sync_json(&repo, endpoint, &url, &[]);
    assert_eq!(third["report"]["snapshots_copied"].as_array().unwrap().len(), 1);
    assert!(third["report"]["bytes_copied"].as_u64().unwrap() < 1 << 20, "{third}");
    assert_destination_good(&scratch, &url, &data, "restored");

    // The source's audit has every sync; the destination's the two that brought data.
    let syncs = |repo: &cairn::repository::Repository| {
        cairn::audit::read_all(repo).unwrap().iter().filter(|r| r.command == "sync").count()
    };
    use cairn::repository::Repository;
    assert_eq!(
        syncs(
            &Repository::open(
                &cairn::repository::Location::parse(&repo.to_string_lossy()),
                cairn::repository::Passphrase::Given(PASSWORD)
            )
            .unwrap()
        ),
        3
    );
    let dest = Repository::open_on(
        Arc::new(dest_backend(&url)),
        &cairn::repository::Location::parse(&url),
        cairn::repository::Passphrase::Given(PASSWORD),
    )
    .unwrap();
    assert_eq!(syncs(&dest), 2);
}

#[test]
fn a_killed_sync_resumes_without_uploading_again() {
    let scratch = Scratch::new("sync-kill");
    let (data, repo) = local_repo_with_data(&scratch, 48);
    let url = unique_url("killed");
    let mut child = cairn_s3(&repo, &s3().endpoint)
        .args(["sync", "--parallel", "1", "--to", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while object_count(&url, "packs") < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack arrived");
        assert!(child.try_wait().unwrap().is_none(), "sync finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let arrived = object_count(&url, "packs");
    // Nothing is visible before its data is all there.
    assert_eq!(object_count(&url, "snapshots"), 0);

    let resumed = sync_json(&repo, &s3().endpoint, &url, &[]);
    let report = &resumed["report"];
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 1, "{resumed}");
    assert!(report["packs_present"].as_u64().unwrap() >= arrived as u64 - 1, "{resumed} after {arrived} arrived");
    let total = report["packs_copied"].as_u64().unwrap() + report["packs_present"].as_u64().unwrap();
    assert_eq!(object_count(&url, "packs") as u64, total, "no pack was sent twice under another name");
    assert_destination_good(&scratch, &url, &data, "restored");
}

#[test]
fn a_server_outage_mid_sync_is_retried_or_reported_and_the_next_sync_completes() {
    let scratch = Scratch::new("sync-outage");
    let (data, repo) = local_repo_with_data(&scratch, 48);
    let url = unique_url("outage");
    let proxy = Proxy::new(&s3().endpoint);
    let child = cairn_s3(&repo, &proxy.endpoint())
        .args(["sync", "--parallel", "2", "--json", "--to", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while object_count(&url, "packs") < 1 {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.stop();
    std::thread::sleep(Duration::from_secs(3));
    proxy.start();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "sync through the outage: {}\nstdout: {}\nstderr: {stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    if output.status.success() {
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(
            report["report"]["retries"].as_u64().unwrap() > 0 || report["report"]["errors"] == serde_json::json!([])
        );
    } else {
        assert!(stderr.contains(&url) || stderr.contains("pack"), "the failure names what failed: {stderr}");
    }
    let next = sync_json(&repo, &proxy.endpoint(), &url, &[]);
    assert_eq!(next["report"]["snapshots_failed"].as_array().unwrap().len(), 0, "{next}");
    assert_eq!(object_count(&url, "snapshots"), 1);
    assert_destination_good(&scratch, &url, &data, "restored");
}

/// The server itself stops mid-sync. moto keeps objects in memory, so the restarted server has
/// lost them and has no bucket until the operator creates it again: the sync must fail clearly
/// (it cannot retry through that), and the next one must rebuild a destination that checks clean.
#[test]
fn stopping_the_s3_server_mid_sync_fails_clearly_and_the_next_sync_completes() {
    let scratch = Scratch::new("sync-server-stop");
    let (data, repo) = local_repo_with_data(&scratch, 48);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let moto = Moto::start(port, true);
    let url = format!("s3://{BUCKET}/stopped");
    let child = cairn_s3(&repo, &moto.endpoint())
        .args(["sync", "--parallel", "1", "--to", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while backend_at(&moto.endpoint(), "stopped").list("packs").unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(moto);
    std::thread::sleep(Duration::from_secs(1));
    let moto = Moto::start(port, false);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("sync through the stop: {}\nstderr: {stderr}", output.status);
    assert!(!output.status.success(), "the restarted server lost the packs: the sync cannot have succeeded");
    assert!(stderr.contains("s3://cairn-tests/stopped"), "the error names the destination: {stderr}");
    let status = run(cairn(&repo).arg("status"));
    assert!(String::from_utf8_lossy(&status.stdout).contains("last sync to s3://cairn-tests/stopped failed"));

    create_bucket(port);
    let next = sync_json(&repo, &moto.endpoint(), &url, &[]);
    assert_eq!(next["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{next}");
    let dest = PathBuf::from(&url);
    let check = json(cairn_s3(&dest, &moto.endpoint()).args(["check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    let target = scratch.join("restored");
    ok(cairn_s3(&dest, &moto.endpoint()).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&data, &target);
    assert!(status_ok(&repo), "a complete sync clears the problem");
}

fn status_ok(repo: &Path) -> bool {
    run(cairn(repo).arg("status")).status.success()
}

/// A damaged pack in the source is never shipped: the snapshot that needs it is not copied (and
/// the run says so), the others are.
#[test]
fn a_damaged_source_pack_holds_back_only_the_snapshots_that_need_it() {
    let scratch = Scratch::new("sync-damaged");
    let (small, big, repo, dest) =
        (scratch.join("small"), scratch.join("big"), scratch.join("repo"), scratch.join("dest"));
    fs::create_dir_all(&small).unwrap();
    fs::create_dir_all(&big).unwrap();
    fs::write(small.join("note.txt"), b"small and intact").unwrap();
    write_noise_file(&big.join("data.bin"), 6 << 20, 9);
    ok(cairn(&repo).args(["snapshot", "-q", "--source", "small"]).arg(&small));
    ok(cairn(&repo).args(["snapshot", "-q", "--source", "big"]).arg(&big));
    let (largest, len) = packs_by_size(&repo).pop().unwrap();
    flip_byte(&largest, len / 2, 0x10);

    let output = run(cairn(&repo).args(["sync", "--json", "--to"]).arg(&dest));
    assert!(!output.status.success(), "a snapshot was held back: the run fails");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["report"]["snapshots_failed"].as_array().unwrap().len(), 1, "{report}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("damaged"));
    let listed = json(cairn(&dest).arg("snapshots"));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["source"], "small");
    ok(cairn(&dest).args(["check", "--read-data"]));
}

#[test]
fn sync_prune_applies_the_destinations_own_retention() {
    let scratch = Scratch::new("sync-prune");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    for round in 0..3u64 {
        write_noise_file(&data.join("changing"), 3 << 20, 100 + round);
        ok(cairn(&repo).args(["snapshot", "--source", "data", "-q"]).arg(&data));
    }
    let url = unique_url("prune");
    sync_json(&repo, &s3().endpoint, &url, &[]);
    let before = object_count(&url, "packs");
    ok(cairn_s3(&repo, &s3().endpoint).args(["sync", "--to", &url, "--prune", "--keep-last", "1"]));
    assert_eq!(object_count(&url, "snapshots"), 1);
    assert!(object_count(&url, "packs") < before, "the destination's prune freed packs");
    assert_eq!(json(cairn(&repo).arg("snapshots")).as_array().unwrap().len(), 3, "the source keeps its own");
    assert_destination_good(&scratch, &url, &data, "restored");
    // The destination's retention does not bring forgotten snapshots back on the next sync.
    let next = sync_json(&repo, &s3().endpoint, &url, &["--prune", "--keep-last", "1"]);
    assert_eq!(object_count(&url, "snapshots"), 1, "{next}");
}

/// Acceptance: a tree and a live SQLite database, snapshotted locally, synced offsite; the local
/// repository is then deleted and everything comes back from the offsite copy.
#[test]
fn everything_restores_from_the_offsite_copy_after_losing_the_local_repository() {
    let scratch = Scratch::new("sync-disaster");
    let (tree, repo) = (scratch.join("volume"), scratch.join("repo"));
    crate::roundtrip::build_special_tree(&tree);
    write_noise_file(&tree.join("big.bin"), 20 << 20, 7);
    let db_dir = scratch.join("db");
    fs::create_dir_all(&db_dir).unwrap();
    let db_path = db_dir.join("app.db");
    drop(wal_database(&db_path));
    let (stop, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = start_pair_writer(db_path.clone(), stop.clone(), commits.clone());
    std::thread::sleep(Duration::from_millis(300));
    ok(cairn(&repo).args(["snapshot", "--source", "files", "-q"]).arg(&tree));
    ok(cairn(&repo).args(["snapshot", "--source", "db", "-q", "--sqlite"]).arg(&db_path));
    let url = unique_url("disaster");
    sync_json(&repo, &s3().endpoint, &url, &[]);
    // The database as the local repository restores it, to compare with the offsite copy.
    let local_db = scratch.join("db-from-local");
    ok(cairn(&repo).args(["restore", "latest", "--source", "db", "--target"]).arg(&local_db));
    stop.store(true, Relaxed);
    writer.join().unwrap();
    assert!(commits.load(Relaxed) > 50);

    fs::remove_dir_all(&repo).unwrap();
    let offsite = PathBuf::from(&url);
    let files = scratch.join("files-from-offsite");
    ok(cairn_s3(&offsite, &s3().endpoint).args(["restore", "latest", "--source", "files", "--target"]).arg(&files));
    assert_same_tree(&tree, &files);
    let db = scratch.join("db-from-offsite");
    ok(cairn_s3(&offsite, &s3().endpoint).args(["restore", "latest", "--source", "db", "--target"]).arg(&db));
    let (restored, from_local) = (db.join("app.db"), local_db.join("app.db"));
    assert_eq!(fs::read(&restored).unwrap(), fs::read(&from_local).unwrap(), "byte-identical database");
    assert_eq!(integrity(&restored), "ok");
    let (a, b) = counts(&restored);
    assert!(a > 0 && a == b, "a consistent database: {a} vs {b}");
}

/// Credentials come from the environment and go nowhere else: not into the repository, the
/// audit records, the output, or the errors of a failed run.
#[test]
fn credentials_never_reach_the_repository_output_or_errors() {
    let secret = "SeCrEt-key-4f1d9c";
    let token = "SeSsIoN-token-77ab02";
    let scratch = Scratch::new("sync-secrets");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    crate::roundtrip::build_special_tree(&data);
    let url = unique_url("secrets");
    let with_secrets = |repo: &Path, endpoint: &str| {
        let mut command = cairn_s3(repo, endpoint);
        command.env("AWS_SECRET_ACCESS_KEY", secret).env("AWS_SESSION_TOKEN", token);
        command
    };
    let mut outputs = Vec::new();
    let mut record = |command: &mut Command| {
        let output = run(command);
        outputs.push(String::from_utf8_lossy(&output.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&output.stderr).into_owned());
        output.status.success()
    };
    assert!(record(with_secrets(&repo, &s3().endpoint).arg("snapshot").arg(&data)));
    assert!(record(with_secrets(&repo, &s3().endpoint).args(["sync", "--to", &url])));
    let offsite = PathBuf::from(&url);
    assert!(record(with_secrets(&offsite, &s3().endpoint).arg("snapshot").arg(&data)));
    assert!(record(with_secrets(&offsite, &s3().endpoint).args(["check", "--read-data"])));
    // A server that is not there, and one that refuses the request.
    let dead = format!("http://127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    assert!(!record(with_secrets(&repo, &dead).args(["sync", "--to", &unique_url("dead")])));
    assert!(!record(with_secrets(&repo, &s3().endpoint).args(["sync", "--to", "s3://no-such-bucket-cairn/x"])));
    // The failed syncs make the source's status unhealthy, naming the destination.
    assert!(!record(with_secrets(&repo, &s3().endpoint).arg("status")));
    assert!(
        outputs.last().unwrap().is_empty()
            && outputs[outputs.len() - 2].contains("last sync to s3://no-such-bucket-cairn/x failed")
    );
    for text in &outputs {
        assert!(!text.contains(secret) && !text.contains(token), "a credential leaked: {text}");
    }
    assert!(outputs.iter().any(|o| o.contains("error")), "the failures were reported");

    let mut files = Vec::new();
    collect_files(&repo, &mut files);
    for file in files {
        let bytes = fs::read(&file).unwrap();
        assert!(!contains(&bytes, secret.as_bytes()) && !contains(&bytes, token.as_bytes()), "{}", file.display());
    }
    let backend = dest_backend(&url);
    for dir in ["snapshots", "index", "packs", "audit", "locks"] {
        for (key, _) in backend.list(dir).unwrap().into_iter().chain([("config".to_string(), 0)]) {
            let bytes = backend.get(&key).unwrap();
            assert!(!contains(&bytes, secret.as_bytes()) && !contains(&bytes, token.as_bytes()), "{key}");
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            collect_files(&entry.path(), out);
        } else {
            out.push(entry.path());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Two first syncs to one new destination at once: the one whose create loses the race takes
/// the destination the other created, instead of failing with "a repository already exists".
#[test]
fn two_first_syncs_to_a_new_destination_both_succeed() {
    let scratch = Scratch::new("sync-race");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a"), b"a").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    for attempt in 0..8 {
        let copy = scratch.join(format!("copy-{attempt}"));
        let spawn = || {
            cairn(&repo)
                .args(["--quiet", "sync", "--to"])
                .arg(&copy)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (first, second) = (spawn(), spawn());
        for child in [first, second] {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "attempt {attempt}: {}", String::from_utf8_lossy(&out.stderr));
        }
        ok(cairn(&copy).arg("check"));
    }
}
