//! `cairn serve`: the real binary on a loopback port, called with a real HTTP client (curl), and
//! its status page loaded in a real headless browser (Chromium).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "platform-token-0123456789abcdef";
const OTHER_TOKEN: &str = "ops-token-fedcba9876543210fedcba";

/// A running `cairn serve`, killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    /// SIGTERM, as systemd stops it: the server passes it to the jobs' processes and waits for
    /// them, so none outlives the test; SIGKILL if it has not ended in 20 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Site {
    scratch: Scratch,
    repo: PathBuf,
    config: PathBuf,
}

/// Two directory sources, `app` and `web`, whose `before` hooks note when they ran and wait
/// `hook_seconds`, a config with a [serve] table, and a token file of two callers.
fn site(name: &str, hook_seconds: f64) -> Site {
    let scratch = Scratch::new(name);
    for dir in ["srv/app/sub", "srv/web"] {
        fs::create_dir_all(scratch.join(dir)).unwrap();
    }
    fs::write(scratch.join("srv/app/settings.json"), b"{\"v\": 1}").unwrap();
    fs::write(scratch.join("srv/app/sub/data.bin"), noise(300_000, 7)).unwrap();
    fs::write(scratch.join("srv/web/index.html"), b"<h1>v1</h1>").unwrap();
    let tokens = scratch.join("tokens");
    fs::write(&tokens, format!("# who may call\nplatform {TOKEN}\nops {OTHER_TOKEN}\n")).unwrap();
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o600)).unwrap();
    let repo = scratch.join("repo");
    let config = scratch.join("cairn.toml");
    let hook = |source: &str| {
        format!("date +%s.%N > hook-{source}.start; sleep {hook_seconds}; date +%s.%N > hook-{source}.end")
    };
    fs::write(
        &config,
        format!(
            "repository = \"repo\"\n\n[[source]]\nname = \"app\"\npaths = [\"srv/app\"]\nbefore = \"{}\"\n\n\
             [[source]]\nname = \"web\"\npaths = [\"srv/web\"]\nbefore = \"{}\"\n\n[serve]\ntoken_file = \"tokens\"\n",
            hook("app"),
            hook("web")
        ),
    )
    .unwrap();
    Site { scratch, repo, config }
}

fn serve(site: &Site) -> Served {
    serve_with(site, |_| ())
}

/// [`serve`], with something more done to its command.
fn serve_with(site: &Site, more: impl FnOnce(&mut Command)) -> Served {
    let mut command = cairn_bare();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&site.config)
        .env_remove("CAIRN_REPO")
        .env_remove("CAIRN_CONFIG")
        .env("CAIRN_CACHE_DIR", site.scratch.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    with_password(&mut command);
    more(&mut command);
    let mut child = command.spawn().expect("cairn serve starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (address, found) = std::sync::mpsc::channel();
    let lines = Arc::clone(&log);
    // Read all it prints, so that its log never fills the pipe and blocks it.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("cairn serve: listening on ") {
                let _ = address.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let url = found.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        panic!("cairn serve did not start: {:?}", log.lock().unwrap());
    });
    // Its log, printed with the test's output if the test fails.
    let printed = Arc::clone(&log);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        for line in std::mem::take(&mut *printed.lock().unwrap()) {
            eprintln!("serve: {line}");
        }
    });
    Served { child, url }
}

/// A call with curl: the status and the body as JSON (or as text, in a string).
fn call(served: &Served, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(token) = token {
        curl.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    if let Some(body) = body {
        curl.args(["-H", "Content-Type: application/json", "--data-binary"]).arg(body.to_string());
    }
    let output = curl.arg(format!("{}{path}", served.url)).output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl said {text:?}"));
    let status: u16 = status.trim().parse().unwrap_or_else(|_| panic!("no status in {text:?}"));
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    eprintln!("{method} {path} -> {status} {}", body.chars().take(400).collect::<String>());
    (status, value)
}

fn api_records(repo: &Path) -> Vec<cairn::format::audit::AuditRecord> {
    let location = cairn::repository::Location::parse(&repo.to_string_lossy());
    let repo = cairn::repository::Repository::open(&location, cairn::repository::Passphrase::Given(PASSWORD)).unwrap();
    cairn::audit::read_all(&repo).unwrap().into_iter().filter(|r| r.command == "api").collect()
}

#[test]
fn every_endpoint_answers_as_a_platform_expects() {
    let site = site("serve-api", 0.0);
    let served = serve(&site);
    let token = Some(TOKEN);

    // No token, a wrong one, a malformed one: 401, and nothing is done.
    for wrong in [None, Some("platform-token-0123456789abcdeX"), Some("")] {
        let (status, body) = call(&served, wrong, "POST", "/api/v1/backups", Some(json!({ "wait": true })));
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(call(&served, None, "GET", "/", None).0, 401);
    let (status, body) = call(&served, token, "GET", "/api/v1/backups", None);
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)), "nothing was backed up by a refused call");

    // A backup of one source, waited for: its manifest.
    let (status, body) = call(
        &served,
        token,
        "POST",
        "/api/v1/backups",
        Some(json!({ "source": "app", "tags": ["manual"], "wait": true })),
    );
    assert_eq!(status, 200, "{body}");
    let job = &body["job"];
    assert_eq!((job["state"].as_str(), job["caller"].as_str()), (Some("done"), Some("platform")), "{body}");
    let manifest = &job["result"]["backups"][0];
    let first = manifest["id"].as_str().unwrap().to_string();
    assert_eq!(manifest["source"], "app");
    assert_eq!(manifest["tags"], json!(["manual"]));
    assert_eq!(manifest["summary"]["files"], 2);
    assert_eq!(manifest["tree"].as_str().map(str::len), Some(64), "the content id");

    // A backup of every source, not waited for: 202 and a job that ends.
    let (status, body) = call(&served, token, "POST", "/api/v1/backups", None);
    assert_eq!(status, 202, "{body}");
    let job_url = body["url"].as_str().unwrap().to_string();
    let job = wait_for_job(&served, &job_url);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["backups"].as_array().map(Vec::len), Some(2));
    assert_eq!((job["progress"]["done"].as_u64(), job["progress"]["total"].as_u64()), (Some(2), Some(2)));

    // The list, its filters, details, and what is not there.
    let (_, all) = call(&served, token, "GET", "/api/v1/backups", None);
    assert_eq!(all["count"], 3);
    assert_eq!(call(&served, token, "GET", "/api/v1/backups?source=web", None).1["count"], 1);
    assert_eq!(call(&served, token, "GET", "/api/v1/backups?tag=manual", None).1["count"], 1);
    assert_eq!(call(&served, token, "GET", "/api/v1/backups?since=2000-01-01&until=2001-01-01", None).1["count"], 0);
    assert_eq!(call(&served, token, "GET", "/api/v1/backups?since=2000-01-01", None).1["count"], 3);
    assert_eq!(call(&served, token, "GET", "/api/v1/backups?since=2999-01-01", None).1["count"], 0);
    // A minute names its whole self: the snapshot taken in it is since then and until then.
    let minute = all["backups"][2]["time_utc"].as_str().unwrap()[..16].to_string();
    for filter in ["since", "until"] {
        let (_, body) =
            call(&served, token, "GET", &format!("/api/v1/backups?{filter}={}", minute.replace(' ', "%20")), None);
        assert!(body["backups"].as_array().unwrap().iter().any(|b| b["id"] == first.as_str()), "{filter}: {body}");
    }
    assert_eq!(all["unreadable"], json!([]));
    assert_eq!(call(&served, token, "GET", "/api/v1/backups?until=yesterday", None).0, 400);
    let (status, details) = call(&served, token, "GET", &format!("/api/v1/backups/{}", &first[..10]), None);
    assert_eq!((status, details["id"].as_str()), (200, Some(first.as_str())));
    assert_eq!(call(&served, token, "GET", "/api/v1/backups/latest?source=web", None).1["source"], "web");
    assert_eq!(call(&served, token, "GET", &format!("/api/v1/backups/{}", "ab".repeat(32)), None).0, 404);
    assert_eq!(call(&served, token, "GET", "/api/v1/jobs/999", None).0, 404);
    assert_eq!(call(&served, token, "GET", "/api/v1/nothing", None).0, 404);
    assert_eq!(call(&served, token, "PUT", "/api/v1/backups", None).0, 405);
    assert_eq!(call(&served, token, "POST", "/api/v1/backups", Some(json!({ "source": "nope" }))).0, 404);
    assert_eq!(call(&served, token, "POST", "/api/v1/backups", Some(json!({ "tags": ["a b"] }))).0, 400);
    let huge = json!({ "source": "x".repeat(100_000) });
    assert_eq!(call(&served, token, "POST", "/api/v1/backups", Some(huge)).0, 413);

    // A restore without confirm: 400 and what it would change; nothing changes.
    fs::write(site.scratch.join("srv/app/settings.json"), b"{\"v\": 2, \"broken\": true}").unwrap();
    fs::write(site.scratch.join("srv/app/stray.tmp"), b"left by the migration").unwrap();
    let request = json!({ "id": first, "source": "app" });
    let (status, body) = call(&served, token, "POST", "/api/v1/backups/restore", Some(request.clone()));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["would"]["replaced"], json!(["settings.json"]));
    assert_eq!(body["would"]["deleted"], json!(["stray.tmp"]));
    assert!(site.scratch.join("srv/app/stray.tmp").exists(), "a refused restore changed the target");
    // Not under an allowed root, directly or through a link planted under one: refused,
    // whatever confirm says.
    fs::create_dir(site.scratch.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(site.scratch.join("elsewhere"), site.scratch.join("srv/app/sub/link")).unwrap();
    for target in [site.scratch.join("elsewhere"), site.scratch.join("srv/app/sub/link/deeper")] {
        let outside = json!({ "id": first, "source": "app", "target": target, "confirm": true, "wait": true });
        let (status, body) = call(&served, token, "POST", "/api/v1/backups/restore", Some(outside));
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("not under a directory restores may write to"), "{body}");
    }
    assert_eq!(fs::read_dir(site.scratch.join("elsewhere")).unwrap().count(), 0);
    fs::remove_file(site.scratch.join("srv/app/sub/link")).unwrap();
    // A browser's login (Basic) may read, never change: a page elsewhere could make it post.
    let basic = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-u"])
        .arg(format!("anyone:{TOKEN}"))
        .args(["--data-binary", "{\"id\": \"latest\", \"source\": \"app\", \"confirm\": true}"])
        .arg(format!("{}/api/v1/backups/restore", served.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&basic.stdout), "401");
    let read = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u"])
        .arg(format!("anyone:{TOKEN}"))
        .arg(format!("{}/api/v1/status", served.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&read.stdout), "200");
    // A flag that is not true or false is not taken for either.
    let vague = json!({ "id": first, "source": "app", "delete": "false", "confirm": true });
    assert_eq!(call(&served, token, "POST", "/api/v1/backups/restore", Some(vague)).0, 400);
    assert!(site.scratch.join("srv/app/stray.tmp").exists(), "a refused restore changed the target");

    // With confirm: the safe in-place flow, and the safety snapshot's id.
    let mut confirmed = request.clone();
    confirmed["confirm"] = json!(true);
    confirmed["wait"] = json!(true);
    let (status, body) = call(&served, token, "POST", "/api/v1/backups/restore", Some(confirmed));
    assert_eq!(status, 200, "{body}");
    let result = &body["job"]["result"];
    assert_eq!(body["job"]["state"], "done", "{body}");
    let safety = result["safety_snapshot"].as_str().expect("a safety snapshot id").to_string();
    assert_eq!(fs::read(site.scratch.join("srv/app/settings.json")).unwrap(), b"{\"v\": 1}");
    assert!(!site.scratch.join("srv/app/stray.tmp").exists());
    let (_, safety_manifest) = call(&served, token, "GET", &format!("/api/v1/backups/{safety}"), None);
    let tags = safety_manifest["tags"].as_array().unwrap();
    assert!(tags.contains(&json!("protected")) && tags.contains(&json!("pre-restore")), "{safety_manifest}");
    // The safety snapshot's id puts the target back as it was before the restore.
    let undo = json!({ "id": safety, "source": "app", "confirm": true, "wait": true });
    let (status, body) = call(&served, token, "POST", "/api/v1/backups/restore", Some(undo));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("done")), "{body}");
    assert_eq!(fs::read(site.scratch.join("srv/app/settings.json")).unwrap(), b"{\"v\": 2, \"broken\": true}");
    assert!(site.scratch.join("srv/app/stray.tmp").exists());
    // A file where the target directory would be is neither replaced nor followed.
    let file = site.scratch.join("srv/app/settings.json");
    let onto_a_file = json!({ "id": first, "source": "app", "target": file, "confirm": true, "wait": true });
    let (status, body) = call(&served, token, "POST", "/api/v1/backups/restore", Some(onto_a_file));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("failed")), "{body}");
    assert!(body["job"]["error"].as_str().unwrap().contains("is not a directory"), "{body}");
    assert_eq!(fs::read(&file).unwrap(), b"{\"v\": 2, \"broken\": true}");
    assert_eq!(call(&served, token, "POST", "/api/v1/backups", Some(json!({ "wait": "yes" }))).0, 400);
    let random = json!({ "id": "random", "source": "app" });
    assert_eq!(call(&served, token, "POST", "/api/v1/backups/restore", Some(random)).0, 400);

    // Delete: a protected snapshot only when forced.
    let (status, body) = call(&served, token, "DELETE", &format!("/api/v1/backups/{safety}"), None);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("force=true"));
    let (status, body) =
        call(&served, Some(OTHER_TOKEN), "DELETE", &format!("/api/v1/backups/{safety}?force=true"), None);
    assert_eq!((status, body["deleted"][0].as_str()), (200, Some(safety.as_str())));
    assert_eq!(call(&served, token, "GET", &format!("/api/v1/backups/{safety}"), None).0, 404);
    assert_eq!(call(&served, token, "DELETE", &format!("/api/v1/backups/{safety}"), None).0, 404);

    // Status and metrics tell the same truth as `cairn status`.
    let (status, body) = call(&served, token, "GET", "/api/v1/status", None);
    assert_eq!((status, body["healthy"].as_bool()), (200, Some(true)), "{body}");
    // The config's two sources are judged; the safety snapshots' own key is listed, retired.
    let judged: Vec<&str> = body["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["retired"] == false)
        .filter_map(|s| s["source"].as_str())
        .collect();
    assert_eq!(judged, ["app", "web"], "{body}");
    let (status, metrics) = call(&served, token, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap().contains("cairn_snapshot_age_seconds{source=\"web\"}"), "{metrics}");

    // Every call that changed something (or was refused it) left a record naming its caller.
    drop(served);
    let records = api_records(&site.repo);
    let calls: Vec<(String, String, u64)> = records
        .iter()
        .filter(|r| r.details["caller"].is_string())
        .map(|r| {
            let d = &r.details;
            (
                d["caller"].as_str().unwrap().into(),
                format!("{} {}", d["method"], d["path"]),
                d["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let deleted = format!("\"DELETE\" \"/api/v1/backups/{safety}\"");
    assert!(calls.contains(&("ops".into(), deleted.clone(), 200)), "{calls:?}");
    assert!(calls.contains(&("platform".into(), deleted, 409)), "{calls:?}");
    assert!(calls.contains(&("platform".into(), "\"POST\" \"/api/v1/backups/restore\"".into(), 400)), "{calls:?}");
    assert_eq!(calls.iter().filter(|c| c.1 == "\"POST\" \"/api/v1/backups\"").count(), 6, "{calls:?}");
}

fn wait_for_job(served: &Served, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = call(served, Some(TOKEN), "GET", url, None);
        assert_eq!(status, 200, "{body}");
        if matches!(body["job"]["state"].as_str(), Some("done" | "failed")) {
            return body["job"].clone();
        }
        assert!(Instant::now() < deadline, "the job never ended: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// When a hook file says its hook ran.
fn hook_time(site: &Site, name: &str) -> f64 {
    let dir = site.config.parent().unwrap();
    fs::read_to_string(dir.join(name)).unwrap().trim().parse().unwrap()
}

#[test]
fn backups_of_two_sources_run_at_once_and_of_one_source_one_after_the_other() {
    let site = site("serve-concurrent", 1.0);
    let served = serve(&site);
    let app = call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app" })));
    let web = call(&served, Some(OTHER_TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "web" })));
    assert_eq!((app.0, web.0), (202, 202));
    for (_, body) in [&app, &web] {
        assert_eq!(wait_for_job(&served, body["url"].as_str().unwrap())["state"], "done");
    }
    let (app_start, app_end) = (hook_time(&site, "hook-app.start"), hook_time(&site, "hook-app.end"));
    let (web_start, web_end) = (hook_time(&site, "hook-web.start"), hook_time(&site, "hook-web.end"));
    assert!(app_start < web_end && web_start < app_end, "the two sources' backups did not overlap");

    // Two backups of one source never run at once: the second waits for the first.
    let first = call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app" })));
    let second = call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app" })));
    let first = wait_for_job(&served, first.1["url"].as_str().unwrap());
    let second = wait_for_job(&served, second.1["url"].as_str().unwrap());
    assert_eq!((first["state"].as_str(), second["state"].as_str()), (Some("done"), Some("done")));
    assert!(second["started_ms"].as_i64() >= first["ended_ms"].as_i64(), "{first} {second}");
    let (_, list) = call(&served, Some(TOKEN), "GET", "/api/v1/backups?source=app", None);
    assert_eq!(list["count"], 3);
}

#[test]
fn the_server_refuses_to_start_without_safe_tokens() {
    let site = site("serve-tokens", 0.0);
    let tokens = site.scratch.join("tokens");
    let start = |extra: &[&str]| {
        let mut command = cairn_bare();
        command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&site.config).args(extra);
        command.env_remove("CAIRN_CONFIG").env_remove("CREDENTIALS_DIRECTORY").stdin(Stdio::null());
        with_password(&mut command);
        // A server that starts when it should not is a failure, not a hang.
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cairn serve started where it must refuse to");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o644)).unwrap();
    let out = start(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    fs::write(site.scratch.join("weak"), "platform short").unwrap();
    fs::set_permissions(site.scratch.join("weak"), fs::Permissions::from_mode(0o600)).unwrap();
    let weak = site.scratch.join("weak");
    let out = start(&["--token-file", weak.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than"));
    // No token file at all: the config's key removed.
    let text = fs::read_to_string(&site.config).unwrap().replace("token_file = \"tokens\"\n", "");
    fs::write(&site.config, text).unwrap();
    let out = start(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token file"));
}

#[test]
fn kill_9_of_the_server_mid_backup_leaves_a_consistent_repository() {
    let site = site("serve-kill", 0.0);
    let served = serve(&site);
    let (status, body) =
        call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app", "wait": true })));
    assert_eq!(status, 200, "{body}");
    let kept = body["job"]["result"]["backups"][0]["id"].as_str().unwrap().to_string();
    let files = |dir: &str| {
        let listed = Command::new("find").arg(site.repo.join(dir)).args(["-type", "f"]).output().unwrap();
        String::from_utf8_lossy(&listed.stdout).lines().count()
    };
    let pid = served.child.id();
    // Snapshots that ended before they could be killed: on a loaded machine one slice below can
    // last long enough for the whole file; the next attempt brings new content.
    let mut finished_first = 0;
    let child = loop {
        // Enough to be in the middle of it when killed.
        write_noise_file(&site.scratch.join("srv/app/big.bin"), 400 << 20, 3 + finished_first);
        let packs_before = files("packs");
        let (status, queued) = call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app" })));
        assert_eq!(status, 202);
        // The call's own record is written before its answer: what comes after is the snapshot's.
        let records_before = files("audit");
        // Once the snapshot's own process runs, has written its start record and a pack of the
        // new file (in the middle of its work), the server and it are killed outright, as systemd
        // kills a unit's processes.
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = loop {
            let out = Command::new("pgrep").args(["-f", " snapshot ", "-P"]).arg(pid.to_string()).output().unwrap();
            if let Some(child) = String::from_utf8_lossy(&out.stdout).split_whitespace().next() {
                break child.to_string();
            }
            assert!(Instant::now() < deadline, "no snapshot process started");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The snapshot runs in slices of 5 ms between stops, and the repository is looked at while
        // it is stopped: on a loaded machine this test's own thread may sleep for longer than the
        // whole 400 MiB takes, and the kill must come in the middle whatever the scheduler does.
        let signal = |name: &str| Command::new("kill").args([name, &child]).status().unwrap().success();
        let mut stopped = signal("-STOP");
        while stopped && (files("packs") == packs_before || files("audit") == records_before) {
            assert!(Instant::now() < deadline, "the snapshot wrote no pack or no start record");
            assert!(signal("-CONT"));
            std::thread::sleep(Duration::from_millis(5));
            stopped = signal("-STOP");
        }
        if stopped {
            break child;
        }
        finished_first += 1;
        assert!(finished_first < 4, "the snapshot ended before it was killed, {finished_first} times");
        let job = queued["url"].as_str().unwrap().to_string();
        while call(&served, Some(TOKEN), "GET", &job, None).1["job"]["state"] != "done" {
            assert!(Instant::now() < deadline, "the snapshot that ended first never finished its job");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The snapshot first: killed after the server, it could be signalled as its server died
    // before the SIGKILL reached it, and record that ("interrupted by SIGHUP", seen under load).
    let _ = Command::new("kill").args(["-9", &child, &pid.to_string()]).status();
    drop(served);
    std::thread::sleep(Duration::from_millis(200));
    ok(cairn(&site.repo).arg("check"));
    let target = site.scratch.join("restored");
    ok(cairn(&site.repo).args(["restore", &kept, "--target"]).arg(&target));
    assert_eq!(fs::read(target.join("settings.json")).unwrap(), b"{\"v\": 1}");
    // A new server backs up again, past what the killed one left.
    let served = serve(&site);
    let (status, body) =
        call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app", "wait": true })));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("done")), "{body}");
    drop(served);
    ok(cairn(&site.repo).args(["check", "--read-data"]));
    // The killed snapshot committed nothing, and is reported as killed, not lost in silence.
    let snapshots = json(cairn(&site.repo).arg("snapshots"));
    assert_eq!(snapshots.as_array().map(Vec::len), Some(2 + finished_first as usize), "{snapshots}");
    let status = json(cairn(&site.repo).args(["status", "--no-config"]));
    let failure = &status["sources"][0]["last_failure"];
    assert!(failure["error"].as_str().is_some_and(|e| e.contains("killed")), "{status}");
}

/// Chromium, which `.ci/run` installs from Debian's packages.
fn chromium() -> &'static str {
    let path = "/usr/bin/chromium";
    assert!(Path::new(path).exists(), "the browser test needs Chromium: apt-get install chromium");
    path
}

#[test]
fn the_status_page_renders_in_a_real_browser_and_names_every_source_with_its_ages() {
    let site = site("serve-page", 0.0);
    let served = serve(&site);
    let (status, body) =
        call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app", "wait": true })));
    assert_eq!(status, 200, "{body}");
    // A failed backup of `web` (its directory gone) shows as its last failure.
    let text = fs::read_to_string(&site.config).unwrap().replace("srv/web", "srv/gone");
    fs::write(&site.config, text).unwrap();
    drop(served);
    let served = serve(&site);
    let (_, body) =
        call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "web", "wait": true })));
    assert_eq!(body["job"]["state"], "failed", "{body}");

    // The browser logs in with the token as the password, as a person would in its login box.
    let address = served.url.trim_start_matches("http://");
    let url = format!("http://anyone:{TOKEN}@{address}/");
    let profile = site.scratch.join("chromium-profile");
    let browse = |extra: &[&str]| {
        let mut command = Command::new(chromium());
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ]);
        command.arg(format!("--user-data-dir={}", profile.display())).args(extra).arg(&url);
        command.stdin(Stdio::null()).output().expect("chromium runs")
    };
    let dom = browse(&["--dump-dom"]);
    let page = String::from_utf8_lossy(&dom.stdout).into_owned();
    let log = String::from_utf8_lossy(&dom.stderr).into_owned();
    eprintln!("{page}\n{log}");
    assert!(dom.status.success());
    for line in log.lines() {
        assert!(!line.contains("CONSOLE") && !line.contains("Uncaught"), "a script error: {line}");
    }
    assert!(page.contains("<table id=\"sources\""), "not the status page: {page}");
    let rows: Vec<&str> = page.split("<tr class=\"source\">").skip(1).collect();
    assert_eq!(rows.len(), 2, "{page}");
    assert!(rows[0].contains("<b>app</b>") && rows[0].contains(" ago"), "{}", rows[0]);
    assert!(rows[1].contains("<b>web</b>") && rows[1].contains("none") && rows[1].contains("snapshot"), "{}", rows[1]);
    assert!(page.contains("id=\"timeline\"") && page.contains("id=\"storage\""));
    // The page as a phone shows it, for the README.
    let shot = site.scratch.join("status.png");
    let out = browse(&["--window-size=420,900", &format!("--screenshot={}", shot.display())]);
    assert!(out.status.success());
    assert!(fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot");
    if let Some(keep) = std::env::var_os("CAIRN_SCREENSHOT") {
        fs::copy(&shot, keep).unwrap();
    }
}

/// The last check of a restore through the API, on the directories it opened: a target that
/// resolves outside the roots it was given is refused with nothing changed, and one inside them
/// restores.
#[test]
fn an_in_place_restore_given_roots_refuses_a_target_outside_them() {
    use cairn::restore::in_place;
    let scratch = Scratch::new("serve-within");
    let (repo_path, source) = (scratch.join("repo"), scratch.join("app"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a"), b"snapshot").unwrap();
    init(&repo_path);
    ok(cairn(&repo_path).args(["snapshot", "--source", "app"]).arg(&source));
    let location = cairn::repository::Location::parse(&repo_path.to_string_lossy());
    let repo = cairn::repository::Repository::open(&location, cairn::repository::Passphrase::Given(PASSWORD)).unwrap();
    let (id, snapshot) = repo.find_snapshot("latest").unwrap();
    let indexed = cairn::repository::Indexed::load(&repo).unwrap();
    let quiet = cairn::progress::Progress::new("restore", true);
    let (root, outside) = (scratch.join("root"), scratch.join("outside"));
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("a"), b"theirs").unwrap();
    let root = fs::canonicalize(&root).unwrap();
    // The target as a caller named it lies under the root, but is a link out of it by now.
    std::os::unix::fs::symlink(&outside, root.join("target")).unwrap();
    let options = |target: PathBuf| in_place::Options {
        target,
        mode: in_place::Mode::InPlace,
        delete: true,
        within: vec![root.clone()],
        ..in_place::Options::default()
    };
    let refused = in_place::run(&indexed, &id, &snapshot, options(root.join("target")), &quiet);
    assert!(matches!(refused, Err(cairn::error::Error::Refused(_))), "{:?}", refused.map(|r| r.target));
    assert_eq!(fs::read(outside.join("a")).unwrap(), b"theirs");
    let report = in_place::run(&indexed, &id, &snapshot, options(root.join("inside")), &quiet).unwrap();
    assert_eq!(report.summary.files, 1);
    assert_eq!(fs::read(root.join("inside/a")).unwrap(), b"snapshot");
}

#[test]
fn the_server_runs_the_cycle_on_its_interval_and_when_asked() {
    let site = site("serve-cycle", 0.0);
    // The token file as a systemd credential, the interval from the config.
    let credentials = site.scratch.join("credentials");
    fs::create_dir(&credentials).unwrap();
    fs::rename(site.scratch.join("tokens"), credentials.join("cairn-tokens")).unwrap();
    let text = fs::read_to_string(&site.config).unwrap().replace("token_file = \"tokens\"", "run_every = \"2s\"");
    fs::write(&site.config, text).unwrap();
    let served = serve_with(&site, |command| {
        command.env("CREDENTIALS_DIRECTORY", &credentials);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let scheduled = loop {
        let (_, jobs) = call(&served, Some(TOKEN), "GET", "/api/v1/jobs", None);
        let done =
            jobs["jobs"].as_array().unwrap().iter().find(|j| j["kind"] == "run" && j["state"] == "done").cloned();
        if let Some(job) = done {
            break job;
        }
        assert!(Instant::now() < deadline, "no scheduled cycle ran: {jobs}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(scheduled["caller"], "(schedule)");
    let (status, body) = call(&served, Some(TOKEN), "POST", "/api/v1/run", Some(json!({ "wait": true })));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("done")), "{body}");
    assert_eq!(body["job"]["result"]["outcome"], "ok", "{body}");
    let (_, list) = call(&served, Some(TOKEN), "GET", "/api/v1/backups", None);
    assert!(list["count"].as_u64().unwrap() >= 4, "two cycles of two sources: {list}");
}

/// The day of the disaster: the source's directory is gone with the one that held it, and a
/// restore through the API puts it back where it was (no safety snapshot: nothing was there).
#[test]
fn a_lost_source_is_restored_through_the_api_where_it_was() {
    let site = site("serve-lost", 0.0);
    let served = serve(&site);
    let (status, body) =
        call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "app", "wait": true })));
    assert_eq!(status, 200, "{body}");
    let source = site.scratch.join("srv/app");
    let before = fs::read(source.join("sub/data.bin")).unwrap();
    let mode = fs::metadata(&source).unwrap().permissions().mode();
    fs::remove_dir_all(site.scratch.join("srv")).unwrap();
    let request = json!({ "id": "latest", "source": "app", "confirm": true, "wait": true });
    let (status, body) = call(&served, Some(TOKEN), "POST", "/api/v1/backups/restore", Some(request));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("done")), "{body}");
    assert!(body["job"]["result"]["safety_snapshot"].is_null(), "{body}");
    assert_eq!(fs::read(source.join("sub/data.bin")).unwrap(), before);
    assert_eq!(fs::read(source.join("settings.json")).unwrap(), b"{\"v\": 1}");
    // The directory made for it has the mode a restore by path gives it.
    assert_eq!(fs::metadata(&source).unwrap().permissions().mode(), mode);
}

#[test]
fn a_command_source_backs_up_and_restores_through_the_api() {
    let site = site("serve-command", 0.0);
    let mut config = fs::read_to_string(&site.config).unwrap();
    config.push_str(
        "\n[[source]]\nname = \"dump\"\nkind = \"command\"\ncommand = \"printf 'rows of %s\\\\n' \\\"$CAIRN_SOURCE\\\"\"\n\
         filename = \"dump.txt\"\n\n[[source]]\nname = \"bad\"\nkind = \"command\"\ncommand = \"echo half; exit 5\"\n",
    );
    fs::write(&site.config, config).unwrap();
    let served = serve(&site);
    let (status, body) =
        call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "dump", "wait": true })));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("done")), "{body}");
    assert_eq!(body["job"]["result"]["backups"][0]["paths"], json!(["command:dump.txt"]), "{body}");
    // A failing command fails its job, and says how.
    let (status, body) =
        call(&served, Some(TOKEN), "POST", "/api/v1/backups", Some(json!({ "source": "bad", "wait": true })));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("failed")), "{body}");
    assert!(body["job"]["error"].to_string().contains("exited with status 5"), "{body}");
    // The output has no place of its own: a restore needs a target, inside the allowed roots.
    let request = json!({ "id": "latest", "source": "dump", "confirm": true, "wait": true });
    let (status, body) = call(&served, Some(TOKEN), "POST", "/api/v1/backups/restore", Some(request.clone()));
    assert_eq!(status, 400);
    assert!(body.to_string().contains("give `target`"), "{body}");
    let target = site.scratch.join("srv/web/restored");
    let mut request = request;
    request["target"] = json!(target);
    let (status, body) = call(&served, Some(TOKEN), "POST", "/api/v1/backups/restore", Some(request));
    assert_eq!((status, body["job"]["state"].as_str()), (200, Some("done")), "{body}");
    assert_eq!(fs::read(target.join("dump.txt")).unwrap(), b"rows of dump\n");
}

/// The API, the page and the metrics judge staleness by the config's schedule, as `cairn status
/// --config` does: a month after the last snapshot and with no drill, the server is not healthy.
#[test]
fn the_server_judges_staleness_by_the_configs_schedule() {
    let site = site("serve-stale", 0.0);
    let mut text = fs::read_to_string(&site.config).unwrap();
    text.push_str("run_every = \"1h\"\n\n[drill]\nevery = \"7d\"\n");
    fs::write(&site.config, text).unwrap();
    init(&site.repo);
    for source in ["app", "web"] {
        ok(cairn(&site.repo).args(["snapshot", "--source", source]).arg(site.scratch.join("srv").join(source)));
    }
    let month_later =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 30 * 86_400 - 60)
            .to_string();
    let served = serve_with(&site, |command| {
        command.env("CAIRN_NOW", &month_later);
    });
    let (status, body) = call(&served, Some(TOKEN), "GET", "/api/v1/status", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["healthy"], false, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("newest snapshot is 29d old (more than 2h)") && text.contains("no successful drill"),
        "{body}"
    );
}

/// A repository gone under a running server (moved, its disk unmounted) is said as such: the
/// list is an error, not an empty list, and the status is unhealthy with that reason, not "the
/// repository holds no snapshot".
#[test]
fn a_repository_gone_under_the_server_is_an_error_not_an_empty_one() {
    let site = site("serve-gone", 0.0);
    init(&site.repo);
    ok(cairn(&site.repo).args(["snapshot", "--source", "app"]).arg(site.scratch.join("srv/app")));
    let served = serve(&site);
    let (status, body) = call(&served, Some(TOKEN), "GET", "/api/v1/backups", None);
    assert_eq!((status, body["count"].as_u64()), (200, Some(1)), "{body}");
    fs::rename(&site.repo, site.scratch.join("moved")).unwrap();
    let (status, body) = call(&served, Some(TOKEN), "GET", "/api/v1/backups", None);
    assert!(status >= 500, "{status} {body}");
    assert!(body.to_string().contains("cannot be read"), "{body}");
    let (status, body) = call(&served, Some(TOKEN), "GET", "/api/v1/status", None);
    assert!(status >= 500, "{status} {body}");
    assert_eq!(body["healthy"], false, "{body}");
    assert!(body.to_string().contains("cannot be read") && !body.to_string().contains("holds no snapshot"), "{body}");
}
