//! Issue 20, item 9: a host whose credentials can only create objects in its offsite bucket
//! syncs there, and a trusted side with credentials of its own applies the offsite copy's
//! retention. The bucket is on a loopback moto_server that enforces IAM policies: the host's
//! policy (the one the README recommends) allows reading, listing and putting and denies every
//! delete, and the tests first prove that the deny holds. store-format/locks.md and sync.md give
//! the design.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn::backend::object::ObjectBackend;
use cairn::backend::Backend;

use crate::support::*;

const BUCKET: &str = "cairn-offsite";

/// The enforcing server: moto with IAM users and their policies (the script says how, and the
/// one fix it makes to moto).
const SERVER: &str = include_str!("../moto_iam.py");

/// The protected host's policy, as the README recommends it: read, list and create; no delete.
/// Less the README's `s3:prefix` condition on listings, which moto does not evaluate.
fn host_policy() -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            { "Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{BUCKET}") },
            { "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": format!("arn:aws:s3:::{BUCKET}/*") },
            { "Effect": "Deny", "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutLifecycleConfiguration",
                "s3:PutBucketVersioning", "s3:PutBucketPolicy", "s3:BypassGovernanceRetention"], "Resource": "*" },
        ]
    })
}

fn trusted_policy() -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Action": "s3:*",
                        "Resource": [format!("arn:aws:s3:::{BUCKET}"), format!("arn:aws:s3:::{BUCKET}/*")] }]
    })
}

pub struct IamS3 {
    endpoint: String,
    host: (String, String),
    trusted: (String, String),
}

/// The enforcing server, started once per test process.
#[allow(clippy::zombie_processes)] // it ends itself once the test process is gone
fn server() -> &'static IamS3 {
    static SERVER_ONCE: OnceLock<IamS3> = OnceLock::new();
    SERVER_ONCE.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let policies = serde_json::json!({ "host": host_policy(), "trusted": trusted_policy() });
        let mut child = Command::new("python3")
            .args(["-c", SERVER, &port.to_string(), BUCKET, &policies.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        // The keys are the first line that is JSON (moto prints a banner before).
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let keys: serde_json::Value = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with('{') => break serde_json::from_str(&line).unwrap(),
                Some(Ok(_)) => continue,
                _ => panic!("moto with IAM did not start: install it with `pip install 'moto[server]'`"),
            }
        };
        let key =
            |user: &str| (keys[user][0].as_str().unwrap().to_string(), keys[user][1].as_str().unwrap().to_string());
        IamS3 { endpoint: format!("http://127.0.0.1:{port}"), host: key("host"), trusted: key("trusted") }
    })
}

impl IamS3 {
    /// A cairn command on `repo` with these credentials.
    fn cairn(&self, repo: &Path, (id, secret): &(String, String)) -> Command {
        let mut command = cairn(repo);
        self.environment(&mut command, id, secret);
        command
    }

    fn environment(&self, command: &mut Command, id: &str, secret: &str) {
        command
            .env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true");
    }

    fn host(&self, repo: &Path) -> Command {
        self.cairn(repo, &self.host)
    }

    /// The trusted side, on a machine of its own: another host name (a UTS namespace), so that it
    /// cannot tell whether the host's processes are alive and must go by the lock files alone.
    /// Without root it runs here, which only makes a lock of a dead process easier to see.
    fn trusted(&self, repo: &Path) -> Command {
        if !is_root() {
            return self.cairn(repo, &self.trusted);
        }
        let mut command = Command::new("unshare");
        command
            .args(["--uts", "sh", "-c", "hostname trusted-side && exec \"$0\" \"$@\"", CAIRN, "--repo"])
            .arg(repo)
            .env_remove("CAIRN_REPO")
            .stdin(Stdio::null());
        with_password(&mut command);
        self.environment(&mut command, &self.trusted.0, &self.trusted.1);
        command
    }

    /// The objects below `prefix`, read with the given credentials.
    fn backend(&self, prefix: &str, (id, secret): &(String, String)) -> ObjectBackend {
        let settings = [
            ("aws_access_key_id", id.as_str()),
            ("aws_secret_access_key", secret.as_str()),
            ("aws_region", "us-east-1"),
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
        ];
        ObjectBackend::open_with(&format!("s3://{BUCKET}/{prefix}"), &settings).unwrap()
    }

    fn count(&self, prefix: &str, dir: &str) -> usize {
        self.backend(prefix, &self.trusted).list(dir).unwrap().len()
    }
}

/// A fresh offsite repository: its prefix and its location.
fn destination(name: &str) -> (String, PathBuf) {
    let prefix = format!("{name}-{}-{}", std::process::id(), cairn::id::Id(cairn::id::random_bytes()).short());
    let url = format!("s3://{BUCKET}/{prefix}");
    (prefix, PathBuf::from(url))
}

fn to(dest: &Path) -> &str {
    dest.to_str().unwrap()
}

/// Runs a sync that must succeed, and checks that it did not send a single delete.
fn sync_create_only(server: &IamS3, repo: &Path, dest: &Path, extra: &[&str]) -> serde_json::Value {
    let report = json(server.host(repo).args(["sync", "--to", to(dest)]).args(extra));
    assert_eq!(report["requests"]["delete"], 0, "{report}");
    report
}

fn snapshot(repo: &Path, data: &Path, mib: u64, seed: u64) {
    write_noise_file(&data.join("changing"), mib << 20, seed);
    ok(cairn(repo).args(["snapshot", "--source", "data", "-q"]).arg(data));
}

/// The host's key really cannot delete (nor can an unknown key do anything), the trusted key can.
fn assert_deny_is_enforced(server: &IamS3, prefix: &str) {
    let as_host = server.backend(prefix, &server.host);
    assert!(as_host.put("probe/object", b"created").unwrap(), "the host may create");
    let denied = as_host.delete("probe/object").expect_err("the host's delete must be refused");
    assert!(denied.to_string().contains("403") && cairn::backend::permission_denied(&denied), "{denied}");
    assert_eq!(as_host.get("probe/object").unwrap(), b"created", "the object survived the host's delete");
    let unknown = server.backend(prefix, &("AKIAUNKNOWN".into(), "secret".into()));
    assert!(unknown.list("probe").is_err(), "enforcement is on: an unknown key is refused");
    server.backend(prefix, &server.trusted).delete("probe/object").unwrap();
    assert!(as_host.list("probe").unwrap().is_empty(), "the trusted side's delete worked");
}

#[test]
fn sync_needs_only_create_rights_and_the_trusted_side_applies_retention() {
    let server = server();
    let (prefix, dest) = destination("create-only");
    assert_deny_is_enforced(server, &prefix);
    let scratch = Scratch::new("append-only");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    for round in 0..3 {
        snapshot(&repo, &data, 3, 10 + round);
    }
    let first = sync_create_only(server, &repo, &dest, &[]);
    assert_eq!(first["report"]["snapshots_copied"].as_array().unwrap().len(), 3, "{first}");
    // The next sync with something to copy: the earlier one's lock file is still there, and
    // neither may delete it.
    snapshot(&repo, &data, 3, 13);
    let index_files = server.count(&prefix, "index") as u64;
    let second = sync_create_only(server, &repo, &dest, &[]);
    assert_eq!(second["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{second}");
    // The earlier sync's lock file and marker are judged by their names: the reads are config,
    // key file and index files, none in locks/.
    assert_eq!(second["requests"]["get"], 2 + index_files, "{second}");

    // `sync --prune` is the trusted side's: with the host's key it fails before it deletes.
    let counts = |dir| server.count(&prefix, dir);
    let before: Vec<usize> = ["snapshots", "index", "packs"].iter().map(|d| counts(d)).collect();
    let refused = run(server.host(&repo).args(["sync", "--to", to(&dest), "--prune", "--keep-last", "1"]));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cannot delete") && stderr.contains("trusted side"), "{stderr}");
    let after: Vec<usize> = ["snapshots", "index", "packs"].iter().map(|d| counts(d)).collect();
    assert_eq!(before, after, "nothing was deleted");

    // Retention: the host keeps less than the offsite copy, which the trusted side prunes with
    // its own key, at once (the host's finished syncs do not hold it off).
    ok(cairn(&repo).args(["forget", "--keep-last", "1", "--prune", "-q"]));
    ok(server.trusted(&dest).args(["--lock-wait", "0", "forget", "--keep-last", "2", "--prune"]));
    assert_eq!(counts("snapshots"), 2);
    assert!(counts("packs") < before[2], "the trusted prune freed packs");

    // The host goes on syncing into the pruned copy.
    snapshot(&repo, &data, 3, 14);
    let third = sync_create_only(server, &repo, &dest, &[]);
    assert_eq!(third["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{third}");
    assert_eq!(counts("snapshots"), 3);
    let check = json(server.trusted(&dest).args(["--lock-wait", "0", "check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    let target = scratch.join("restored");
    ok(server.trusted(&dest).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&data, &target);
    // The trusted side's commands clear away what the host's syncs could not delete.
    assert_eq!(counts("locks"), 0, "{:?}", server.backend(&prefix, &server.trusted).list("locks").unwrap());
}

/// A create-only sync holds its lock while it runs (a trusted prune is refused, nothing of the
/// sync's is deleted), and once killed, leaves nothing that stops the next sync. Its lock can be
/// released by its holder alone, so a trusted side on another host waits for it to go stale.
#[test]
fn a_killed_create_only_sync_resumes_and_its_lock_holds_off_the_trusted_side_until_stale() {
    let server = server();
    let (prefix, dest) = destination("killed");
    let scratch = Scratch::new("append-only-kill");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    // About six packs: after the second has arrived, the sync still runs long enough for the
    // prune to find it running.
    for i in 0..6 {
        write_noise_file(&data.join(format!("blob-{i}")), 16 << 20, 70 + i);
    }
    ok(cairn(&repo).args(["snapshot", "--source", "data", "-q"]).arg(&data));
    let mut child = server
        .host(&repo)
        .args(["sync", "--parallel", "1", "--to", to(&dest)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.count(&prefix, "packs") < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack arrived");
        assert!(child.try_wait().unwrap().is_none(), "sync finished before the prune could run");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = run(server.trusted(&dest).args(["--lock-wait", "0", "prune"]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("lock of `cairn sync`"), "{stderr}");
    child.kill().unwrap();
    child.wait().unwrap();
    let arrived = server.count(&prefix, "packs");
    assert!(arrived >= 2, "the refused prune deleted none of the sync's packs");
    let killed = unmarked(&lock_keys(server, &prefix));
    assert_eq!(killed.len(), 1, "{:?}", lock_keys(server, &prefix));

    let resumed = sync_create_only(server, &repo, &dest, &[]);
    assert_eq!(resumed["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{resumed}");
    assert!(resumed["report"]["packs_present"].as_u64().unwrap() + 1 >= arrived as u64, "{resumed}");
    let after_kill = run(server.trusted(&dest).args(["--lock-wait", "0", "prune"]));
    if is_root() {
        // On another host, the killed sync's lock is live until 30 minutes old by the store's
        // clock (the resumed sync's is released); a person who knows the sync is dead may
        // delete it by hand.
        let stderr = String::from_utf8_lossy(&after_kill.stderr);
        let pid = format!("pid {} on", child.id());
        assert!(!after_kill.status.success() && stderr.contains(&pid), "{stderr}");
        server.backend(&prefix, &server.trusted).delete(&killed[0]).unwrap();
        ok(server.trusted(&dest).args(["--lock-wait", "0", "prune"]));
    } else {
        assert!(after_kill.status.success(), "on this host its process is gone: stale at once");
    }
    assert_eq!(server.count(&prefix, "locks"), 0, "{:?}", lock_keys(server, &prefix));
    let check = json(server.trusted(&dest).args(["--lock-wait", "0", "check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    let target = scratch.join("restored");
    ok(server.trusted(&dest).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&data, &target);
}

/// A lock's age is the store's to tell, not the clock of whoever wrote it: a sync on a host
/// whose clock is two hours slow must not look abandoned to the trusted prune.
#[test]
fn a_lock_written_by_a_host_with_a_slow_clock_still_holds_off_the_prune() {
    use cairn::repository::lock::{LockFile, LockKind};
    let server = server();
    let (prefix, dest) = destination("slow-clock");
    let scratch = Scratch::new("append-only-clock");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    snapshot(&repo, &data, 1, 5);
    sync_create_only(server, &repo, &dest, &[]);
    let running = LockFile {
        kind: LockKind::Shared,
        command: "sync".into(),
        hostname: "host-with-a-slow-clock".into(),
        pid: 4242,
        time_ms: cairn::clock::now_ms() - 2 * 3600 * 1000,
        nonce: "0badc10c".into(),
    };
    let bytes = running.encode();
    let key = format!("locks/{}", cairn::id::Id::of(&bytes).to_hex());
    server.backend(&prefix, &server.host).put(&key, &bytes).unwrap();
    let refused = run(server.trusted(&dest).args(["--lock-wait", "0", "prune"]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("host-with-a-slow-clock"), "{stderr}");
    assert!(server.backend(&prefix, &server.trusted).exists(&key).unwrap(), "the live lock was not removed");
}

/// A pack in the destination that is not what its name says (damage, or a hostile write) cannot
/// be replaced without a delete: the sync holds back exactly the snapshot that needs it and
/// says what to do, the trusted side's prune removes it, and the next sync completes.
#[test]
fn a_damaged_pack_in_the_destination_is_reported_not_deleted() {
    let server = server();
    let (prefix, dest) = destination("damaged");
    let scratch = Scratch::new("append-only-damaged");
    let (small, big, repo) = (scratch.join("small"), scratch.join("big"), scratch.join("repo"));
    fs::create_dir_all(&small).unwrap();
    fs::create_dir_all(&big).unwrap();
    fs::write(small.join("note.txt"), b"small and intact").unwrap();
    write_noise_file(&big.join("data.bin"), 6 << 20, 9);
    ok(cairn(&repo).args(["snapshot", "-q", "--source", "small"]).arg(&small));
    ok(cairn(&repo).args(["snapshot", "-q", "--source", "big"]).arg(&big));
    let (largest, _) = packs_by_size(&repo).pop().unwrap();
    let name = largest.file_name().unwrap().to_str().unwrap().to_string();
    let key = format!("packs/{}/{name}", &name[..2]);
    server.backend(&prefix, &server.trusted).put(&key, b"not the pack").unwrap();

    let output = run(server.host(&repo).args(["sync", "--json", "--to", to(&dest)]));
    assert!(!output.status.success(), "a snapshot was held back: the run fails");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requests"]["delete"], 0, "{report}");
    assert_eq!(report["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["report"]["snapshots_failed"].as_array().unwrap().len(), 1, "{report}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&key) && stderr.contains("damaged") && stderr.contains("prune"), "{stderr}");

    ok(server.trusted(&dest).args(["--lock-wait", "0", "prune"]));
    let next = sync_create_only(server, &repo, &dest, &[]);
    assert_eq!(next["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{next}");
    let check = json(server.trusted(&dest).args(["--lock-wait", "0", "check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
}

/// The keys in `locks/` of the offsite copy at `prefix`.
fn lock_keys(server: &IamS3, prefix: &str) -> Vec<String> {
    server.backend(prefix, &server.trusted).list("locks").unwrap().into_iter().map(|(key, _)| key).collect()
}

/// The lock files there that no marker beside them claims to release: the live ones.
fn unmarked(keys: &[String]) -> Vec<String> {
    let claimed = |key: &String| keys.iter().any(|other| other.starts_with(&format!("{key}.")));
    keys.iter().filter(|key| !key.ends_with(".released") && !claimed(key)).cloned().collect()
}

/// Forges, with the host's create-only key, release markers for the lock file `lock`: in the form
/// that older cairn honoured by name alone, with a made-up secret, and with the secret that
/// `genuine` (an earlier sync's genuine marker) revealed.
fn forge_markers(server: &IamS3, prefix: &str, lock: &str, genuine: &str) {
    let host = server.backend(prefix, &server.host);
    let body = host.get(lock).unwrap();
    let made_up = format!(".{}.released", cairn::id::Id(cairn::id::random_bytes()).to_hex());
    let revealed = &genuine[genuine.find('.').expect("a marker's name has a dot")..];
    for suffix in [".released", made_up.as_str(), revealed] {
        host.put(&format!("{lock}{suffix}"), &body).unwrap();
    }
}

/// Only a lock's holder can release it (store-format/locks.md, "Release markers"). The host
/// forges release markers for the trusted prune's live exclusive lock: its sync must still find
/// the prune's lock and copy nothing, and the lock file stays.
#[test]
fn a_forged_release_marker_does_not_release_the_trusted_prunes_lock() {
    use cairn::repository::lock::{Lock, LockKind};
    let server = server();
    let (prefix, dest) = destination("forged-prune");
    let scratch = Scratch::new("append-only-forged-prune");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    snapshot(&repo, &data, 1, 21);
    sync_create_only(server, &repo, &dest, &[]);
    let genuine = lock_keys(server, &prefix).into_iter().find(|key| key.ends_with(".released")).unwrap();
    // A prune on the trusted side, held here while the host attacks.
    let trusted: std::sync::Arc<dyn Backend> = std::sync::Arc::new(server.backend(&prefix, &server.trusted));
    let prune = Lock::acquire(trusted.clone(), LockKind::Exclusive, "prune", Duration::ZERO).unwrap();
    let live = unmarked(&lock_keys(server, &prefix));
    assert_eq!(live.len(), 1, "the prune's lock alone: {:?}", lock_keys(server, &prefix));
    forge_markers(server, &prefix, &live[0], &genuine);

    snapshot(&repo, &data, 1, 22);
    let refused = run(server.host(&repo).args(["--lock-wait", "0", "sync", "--to", to(&dest)]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("an exclusive lock of `cairn prune`"), "{stderr}");
    assert!(stderr.contains("3 release markers"), "the forgeries are reported: {stderr}");
    assert!(trusted.exists(&live[0]).unwrap(), "the prune's lock file is still there");
    assert_eq!(server.count(&prefix, "snapshots"), 1, "nothing was copied while the prune ran");
    drop(prune);
    let after = sync_create_only(server, &repo, &dest, &[]);
    assert_eq!(after["report"]["snapshots_copied"].as_array().unwrap().len(), 1, "{after}");
}

/// The host forges release markers for a running sync's lock: the trusted prune must still find
/// it and delete nothing of what the sync uploads; once the sync ends, its genuine marker lets
/// the prune run at once, and the prune's look clears the forgeries away.
#[test]
fn a_forged_release_marker_does_not_let_the_trusted_prune_run_during_a_sync() {
    let server = server();
    let (prefix, dest) = destination("forged-sync");
    let scratch = Scratch::new("append-only-forged-sync");
    let (data, repo) = (scratch.join("data"), scratch.join("repo"));
    fs::create_dir_all(&data).unwrap();
    snapshot(&repo, &data, 1, 31);
    sync_create_only(server, &repo, &dest, &[]);
    let genuine = lock_keys(server, &prefix).into_iter().find(|key| key.ends_with(".released")).unwrap();
    let first_packs = server.count(&prefix, "packs");
    // Enough packs that the sync is still uploading after the forgeries, the check and the prune
    // (measured: the attack takes about 0.9 s from the first pack, and the sync then had 1.1 to
    // 1.3 s to go).
    for i in 0..12 {
        write_noise_file(&data.join(format!("blob-{i}")), 16 << 20, 80 + i);
    }
    ok(cairn(&repo).args(["snapshot", "--source", "data", "-q"]).arg(&data));
    let mut child = server
        .host(&repo)
        .args(["sync", "--parallel", "1", "--json", "--to", to(&dest)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.count(&prefix, "packs") <= first_packs {
        assert!(started.elapsed() < Duration::from_secs(60), "no pack arrived");
        assert!(child.try_wait().unwrap().is_none(), "sync finished before the attack");
        std::thread::sleep(Duration::from_millis(20));
    }
    let live = unmarked(&lock_keys(server, &prefix));
    assert_eq!(live.len(), 1, "the running sync's lock alone: {:?}", lock_keys(server, &prefix));
    forge_markers(server, &prefix, &live[0], &genuine);
    // A check on the trusted side runs beside the sync (both shared), reports the forgeries and
    // deletes them; the host forges them again.
    let check = json(server.trusted(&dest).args(["--lock-wait", "0", "check"]));
    let warnings = check["warnings"].as_array().unwrap();
    let forged = warnings.iter().filter(|w| w.as_str().unwrap().contains("does not release the lock file")).count();
    assert_eq!(forged, 3, "{check}");
    assert_eq!(unmarked(&lock_keys(server, &prefix)), live, "the sync's lock stays");
    forge_markers(server, &prefix, &live[0], &genuine);
    let refused = run(server.trusted(&dest).args(["--lock-wait", "0", "prune"]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let still_running = child.try_wait().unwrap().is_none();
    if refused.status.success() {
        let _ = child.kill();
    }
    assert!(still_running, "the sync ended before the prune did, which proves nothing: make it slower");
    assert!(!refused.status.success() && stderr.contains("a shared lock of `cairn sync`"), "{stderr}");
    assert!(stderr.contains("3 release markers"), "the forgeries are reported: {stderr}");
    assert!(server.backend(&prefix, &server.trusted).exists(&live[0]).unwrap(), "the sync's lock file stays");

    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the sync completes");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requests"]["delete"], 0, "{report}");
    ok(server.trusted(&dest).args(["--lock-wait", "0", "prune"]));
    assert_eq!(server.count(&prefix, "locks"), 0, "{:?}", lock_keys(server, &prefix));
    let check = json(server.trusted(&dest).args(["--lock-wait", "0", "check", "--read-data"]));
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    let target = scratch.join("restored");
    ok(server.trusted(&dest).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&data, &target);
}
