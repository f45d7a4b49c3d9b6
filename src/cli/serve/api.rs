//! The routes of `cairn serve` (README, "The API and status page", lists them with curl examples). Errors
//! answer `{"error": "..."}` with the status a caller can act on: 400 for a request that is
//! not valid (and a restore without `confirm`), 401 without a valid token, 404 for an unknown
//! snapshot, source or job, 409 for a protected snapshot or a lock held by another run, 507 for
//! a full disk.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::jobs::{Claim, Handle, Job, NotStarted, Outcome};
use super::{Call, Reply, Server};
use cairn::error::Error;
use cairn::format::snapshot::Snapshot;
use cairn::id::Id;
use cairn::restore::in_place::SAFETY_SOURCE;
use cairn::run_config::{SourceConfig, SourceKind};
use cairn::select::{At, Filter, Pick};

/// The `command` of the audit records the server writes of its calls (store-format/audit.md).
pub const AUDIT_COMMAND: &str = "api";

/// Answers a call with a token (or with `refused`, when its body could not be taken); records
/// every one that is not a read and reached a route ([`AUDIT_COMMAND`]).
pub async fn route(server: &Arc<Server>, call: Call, refused: Option<Reply>) -> Reply {
    let reads = call.method == Method::GET;
    if reads {
        server.count_read(&call.caller, &call.route);
    }
    let server = Arc::clone(server);
    let answered = tokio::task::spawn_blocking(move || {
        let segments: Vec<String> = call.path.trim_end_matches('/').split('/').skip(1).map(str::to_string).collect();
        let reply = refused.unwrap_or_else(|| answer(&server, &call, &segments));
        let routed = !call.route.ends_with(super::NO_ROUTE) && reply.status != StatusCode::METHOD_NOT_ALLOWED;
        if !reads && routed {
            server.record_call(&call, reply.status, summary_of(&reply));
        }
        reply
    })
    .await;
    answered.unwrap_or_else(|e| Reply::error(StatusCode::INTERNAL_SERVER_ERROR, format!("the handler failed: {e}")))
}

/// What an `api` record keeps of an answer: the ids it names and its error.
fn summary_of(reply: &Reply) -> Value {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&reply.body) else { return Value::Null };
    let mut kept = serde_json::Map::new();
    for key in ["error", "deleted"] {
        if let Some(value) = body.get(key) {
            kept.insert(key.into(), value.clone());
        }
    }
    if let Some(job) = body.get("job") {
        kept.insert("job".into(), job["id"].clone());
        // A job waited for has ended: what it made.
        for key in ["safety_snapshot", "snapshot"] {
            if let Some(id) = job["result"].get(key).filter(|v| v.is_string()) {
                kept.insert(key.into(), id.clone());
            }
        }
        if let Some(error) = job.get("error").filter(|v| v.is_string()) {
            kept.insert("error".into(), error.clone());
        }
    }
    Value::Object(kept)
}

fn answer(server: &Arc<Server>, call: &Call, segments: &[String]) -> Reply {
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = &call.method;
    match (method, segments.as_slice()) {
        (&Method::GET, [] | [""]) => super::page::render(server),
        (&Method::GET, ["metrics"]) => metrics(server),
        (&Method::GET, ["api", "v1", "status"]) => status(server),
        (&Method::GET, ["api", "v1", "backups"]) => list(server, call),
        (&Method::POST, ["api", "v1", "backups"]) => backup(server, call),
        (&Method::POST, ["api", "v1", "backups", "restore"]) => restore(server, call),
        (&Method::GET, ["api", "v1", "backups", id]) => details(server, call, id),
        (&Method::DELETE, ["api", "v1", "backups", id]) => delete(server, call, id),
        (&Method::GET, ["api", "v1", "jobs"]) => Reply::json(StatusCode::OK, &json!({ "jobs": server.jobs.list() })),
        (&Method::GET, ["api", "v1", "jobs", id]) => match id.parse().ok().and_then(|id| server.jobs.get(id)) {
            Some(job) => Reply::json(StatusCode::OK, &json!({ "job": job })),
            None => Reply::error(StatusCode::NOT_FOUND, format!("no job {id} (the server keeps the last 256)")),
        },
        (&Method::POST, ["api", "v1", "run"]) => match submit_cycle(server, &call.caller) {
            Ok(job) => accepted(server, call, job),
            Err(e) => not_started(&e),
        },
        // The routes are the ones `route_name` knows: a path it names takes other methods.
        _ if call.route.ends_with(super::NO_ROUTE) => {
            Reply::error(StatusCode::NOT_FOUND, format!("no route {}", call.path))
        }
        _ => Reply::error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not served here")),
    }
}

/// 429 when too many jobs wait already, 503 when no thread could be started.
fn not_started(error: &NotStarted) -> Reply {
    match error {
        NotStarted::Busy(_) => Reply::error(StatusCode::TOO_MANY_REQUESTS, error),
        NotStarted::Thread(_) => Reply::error(StatusCode::SERVICE_UNAVAILABLE, error),
    }
}

/// `true`, `1` or `yes` (a query's flag).
fn truthy(value: Option<&str>) -> bool {
    matches!(value, Some("true" | "1" | "yes"))
}

/// The status a library error answers with, and its message.
fn failure(error: &Error) -> Reply {
    let status = match error {
        Error::Select(cairn::select::SelectError::AtWithId(_)) => StatusCode::BAD_REQUEST,
        Error::NoSuchSnapshot(_) | Error::Select(_) | Error::NoSuchPath { .. } => StatusCode::NOT_FOUND,
        Error::AmbiguousSnapshot(_) | Error::Invalid(_) => StatusCode::BAD_REQUEST,
        Error::Locked { .. } | Error::Refused(_) => StatusCode::CONFLICT,
        Error::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Reply::error(status, error)
}

fn status(server: &Server) -> Reply {
    match server_status(server) {
        Ok(status) => {
            let mut value = serde_json::to_value(&status).expect("serialises");
            value["healthy"] = status.healthy().into();
            Reply::json(StatusCode::OK, &value)
        }
        // Not healthy, and why: a monitor polling `healthy` must not take an error for health.
        Err(e) => Reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "healthy": false, "error": e.to_string(), "problems": [e.to_string()] }),
        ),
    }
}

/// `cairn status --config` of the server's config: the same truth.
pub(super) fn server_status(server: &Server) -> cairn::error::Result<cairn::status::Status> {
    server.present()?;
    let now = crate::cli::status::now_ms().map_err(|e| Error::Invalid(e.to_string()))?;
    let expected = crate::cli::status::expected(&server.config);
    let thresholds = cairn::status::Thresholds::of_config(&server.config);
    cairn::status::status(&server.repo, now, &thresholds, Some(&expected))
}

fn metrics(server: &Server) -> Reply {
    match server_status(server) {
        Ok(status) => Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: cairn::status::prometheus(&status).into_bytes(),
        },
        Err(e) => failure(&e),
    }
}

/// The filters of a listing: `source`, `host`, `tag` (as `--tag`: `a,b` both, repeated either),
/// `since` and `until` (times as `--at` takes them).
fn filter_of(call: &Call) -> Result<(Filter, Option<At>), Reply> {
    let values =
        |name: &str| -> Vec<String> { call.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect() };
    let bad = |e: String| Reply::error(StatusCode::BAD_REQUEST, e);
    let at = call.param("until").map(At::parse).transpose().map_err(bad)?;
    let since = call.param("since").map(At::parse_start).transpose().map_err(bad)?;
    let filter = Filter {
        source: call.param("source").map(str::to_string),
        hosts: values("host"),
        tags: Filter::tag_sets(&values("tag")),
        at,
    };
    Ok((filter, since))
}

fn list(server: &Server, call: &Call) -> Reply {
    let (filter, since) = match filter_of(call) {
        Ok(filters) => filters,
        Err(reply) => return reply,
    };
    let all = match server.snapshots() {
        Ok(all) => all,
        Err(e) => return failure(&e),
    };
    let after =
        |s: &Snapshot| since.as_ref().map_or(true, |since| (s.time_sec, s.time_nsec) >= (since.sec, since.nsec));
    let backups: Vec<Value> = all
        .iter()
        .rev()
        .filter(|(_, s)| filter.selects(s) && after(s))
        .map(|(id, s)| crate::cli::snapshots::manifest(id, s))
        .collect();
    // Damaged snapshot files are said, as `cairn snapshots` warns of them.
    let unreadable = server.unreadable();
    Reply::json(StatusCode::OK, &json!({ "count": backups.len(), "backups": backups, "unreadable": unreadable }))
}

/// The snapshot `spec` names (an id, a unique prefix, or `latest` of the filters).
fn find(server: &Server, call: &Call, spec: &str) -> Result<(Id, Snapshot), Reply> {
    choose(server, spec, &filter_of(call)?.0)
}

fn choose(server: &Server, spec: &str, filter: &Filter) -> Result<(Id, Snapshot), Reply> {
    if spec == "random" {
        return Err(Reply::error(StatusCode::BAD_REQUEST, "give a snapshot id, a prefix or \"latest\", not random"));
    }
    let all = server.snapshots().map_err(|e| failure(&e))?;
    let all: Vec<(Id, Snapshot)> = all.into_iter().map(|(id, s)| (id, (*s).clone())).collect();
    cairn::select::choose(all, &Pick::parse(spec), filter).map_err(|e| failure(&e))
}

fn details(server: &Server, call: &Call, spec: &str) -> Reply {
    match find(server, call, spec) {
        Ok((id, snapshot)) => Reply::json(StatusCode::OK, &crate::cli::snapshots::manifest(&id, &snapshot)),
        Err(reply) => reply,
    }
}

fn delete(server: &Server, call: &Call, spec: &str) -> Reply {
    let force = truthy(call.param("force"));
    let (id, _) = match find(server, call, spec) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let deleted = (|| -> cairn::error::Result<Result<Vec<String>, String>> {
        let lock = server.repo.lock(cairn::repository::lock::LockKind::Shared, "forget", server.context.lock_wait)?;
        let decisions = match cairn::retention::plan_named(&server.repo.snapshots()?, &[id], force) {
            Ok(decisions) => decisions,
            Err(protected) => return Ok(Err(protected.to_string().replace("--force", "?force=true"))),
        };
        let removed = crate::cli::audited(cairn::retention::forget(&server.repo, &decisions))?;
        drop(lock);
        Ok(Ok(removed))
    })();
    match deleted {
        // Another call forgot it meanwhile.
        Ok(Ok(removed)) if removed.is_empty() => {
            Reply::error(StatusCode::NOT_FOUND, format!("no snapshot {spec} any more"))
        }
        Ok(Ok(removed)) => Reply::json(
            StatusCode::OK,
            &json!({ "deleted": removed, "note": "the data only they used is freed by the next prune" }),
        ),
        Ok(Err(protected)) => Reply::error(StatusCode::CONFLICT, protected),
        Err(e) => failure(&e),
    }
}

fn body(call: &Call) -> Result<Value, Reply> {
    if call.body.is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&call.body) {
        // `wait` is read where the job is answered; a value that is not a boolean is refused here.
        Ok(value @ Value::Object(_)) if !value["wait"].is_null() && !value["wait"].is_boolean() => {
            Err(Reply::error(StatusCode::BAD_REQUEST, "`wait` must be true or false"))
        }
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(Reply::error(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
        Err(e) => Err(Reply::error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}"))),
    }
}

fn source_named<'c>(server: &'c Server, name: &str) -> Result<&'c SourceConfig, Reply> {
    server.config.sources.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = server.config.sources.iter().map(|s| s.name.as_str()).collect();
        Reply::error(
            StatusCode::NOT_FOUND,
            format!(
                "no source named {name:?} in {}: its sources are {}",
                server.config.path.display(),
                names.join(", ")
            ),
        )
    })
}

/// A field of a body that must be a string if it is there.
fn text_field(body: &Value, key: &str) -> Result<Option<String>, Reply> {
    match &body[key] {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        _ => Err(Reply::error(StatusCode::BAD_REQUEST, format!("`{key}` must be a string"))),
    }
}

fn flag_field(body: &Value, key: &str) -> Result<bool, Reply> {
    match &body[key] {
        Value::Null => Ok(false),
        Value::Bool(flag) => Ok(*flag),
        _ => Err(Reply::error(StatusCode::BAD_REQUEST, format!("`{key}` must be true or false"))),
    }
}

/// 202 with the job, or with `"wait": true` the job as it ended (200).
fn accepted(server: &Server, call: &Call, job: Job) -> Reply {
    let wait = body(call).ok().is_some_and(|body| body["wait"] == Value::Bool(true)) || truthy(call.param("wait"));
    let url = format!("/api/v1/jobs/{}", job.id);
    if wait {
        let job = server.jobs.wait(job.id).unwrap_or(job);
        return Reply::json(StatusCode::OK, &json!({ "job": job, "url": url }));
    }
    Reply::json(StatusCode::ACCEPTED, &json!({ "job": job, "url": url }))
}

/// `POST /api/v1/backups`: `{"source": NAME}` (default: every source), `"tags": [..]` added to
/// the config's, `"wait": true` to answer when it is done.
fn backup(server: &Arc<Server>, call: &Call) -> Reply {
    let request = match body(call) {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let sources: Vec<SourceConfig> = match text_field(&request, "source") {
        Err(reply) => return reply,
        Ok(Some(name)) => match source_named(server, &name) {
            Ok(source) => vec![source.clone()],
            Err(reply) => return reply,
        },
        Ok(None) => server.config.sources.clone(),
    };
    if sources.is_empty() {
        return Reply::error(StatusCode::BAD_REQUEST, format!("{} has no source", server.config.path.display()));
    }
    let tags: Vec<String> = match &request["tags"] {
        Value::Null => Vec::new(),
        Value::Array(tags) if tags.iter().all(|t| t.as_str().is_some_and(valid_tag)) => {
            tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect()
        }
        _ => {
            return Reply::error(StatusCode::BAD_REQUEST, "`tags` must be an array of tags (letters, digits, `-_.:@`)")
        }
    };
    let sources: Vec<SourceConfig> = sources
        .into_iter()
        .map(|mut source| {
            source.tags.extend(tags.iter().cloned());
            source
        })
        .collect();
    let claim = Claim::Sources(sources.iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>());
    let worker = Arc::clone(server);
    let total = sources.len() as u64;
    match server.jobs.submit("backup", &call.caller, claim, total, move |handle| back_up(&worker, &sources, handle)) {
        Ok(job) => accepted(server, call, job),
        Err(e) => not_started(&e),
    }
}

fn valid_tag(tag: &str) -> bool {
    // Not starting with `-`: it goes on the snapshot's command line.
    !tag.is_empty()
        && !tag.starts_with('-')
        && tag.len() <= 128
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
}

/// A backup job: each source as `cairn run` takes it (hooks, then the snapshot as a child
/// process speaking JSON), and the manifest of each snapshot made.
fn back_up(server: &Server, sources: &[SourceConfig], handle: &Handle) -> Outcome {
    let mut manifests = Vec::new();
    let mut steps = Vec::new();
    let mut failures = Vec::new();
    for (done, source) in sources.iter().enumerate() {
        handle.progress(done as u64, Some(format!("snapshot {}", source.name)));
        let cycle = crate::cli::run::Cycle::new(&server.context, &server.config, server.location.clone(), true);
        for step in cycle.backup(&[source]) {
            if step.step.starts_with("snapshot ") {
                // The child's JSON summary is its first line of output.
                let id = step.output.first().and_then(|line| serde_json::from_str::<Value>(line).ok());
                let id = id.as_ref().and_then(|v| v["id"].as_str()).and_then(Id::from_hex);
                let found = id.and_then(|id| server.snapshots().ok()?.into_iter().find(|(listed, _)| *listed == id));
                if let Some((id, snapshot)) = found {
                    manifests.push(crate::cli::snapshots::manifest(&id, &snapshot));
                }
            }
            if step.outcome != cairn::format::audit::Outcome::Ok {
                let last = step.output.last().map_or("", String::as_str);
                failures.push(format!("{} {:?}: {last}", step.step, step.outcome).to_lowercase());
            }
            steps.push(step);
        }
    }
    handle.progress(sources.len() as u64, None);
    let result = json!({ "backups": manifests, "steps": steps });
    match failures.is_empty() {
        true => Ok(result),
        false => Err((failures.join("; "), result)),
    }
}

/// `POST /api/v1/backups/restore`: `{"id", "source", "target"?, "confirm", "delete"?}`.
fn restore(server: &Arc<Server>, call: &Call) -> Reply {
    let request = match restore_request(server, call) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if !request.confirm {
        // What it would change, computed as the real run computes it, changing nothing.
        return match run_restore(server, &request, true) {
            Ok(report) => Reply::json(
                StatusCode::BAD_REQUEST,
                &json!({
                    "error": "the restore needs \"confirm\": true; this is what it would change (a safety snapshot of the target is taken first)",
                    "snapshot": report.snapshot,
                    "target": report.target,
                    "would": report.plan.as_ref().map(plan_json),
                }),
            ),
            Err(e) => failure(&e),
        };
    }
    // The source restored, and every source whose paths the target holds or lies in: none of
    // them is backed up while its files are being replaced.
    let mut claimed = BTreeSet::from([request.source.clone()]);
    for source in &server.config.sources {
        let resolved = source.paths.iter().filter_map(|p| std::fs::canonicalize(p).ok());
        if resolved.into_iter().any(|p| p.starts_with(&request.target) || request.target.starts_with(&p)) {
            claimed.insert(source.name.clone());
        }
    }
    let worker = Arc::clone(server);
    let job = server.jobs.submit("restore", &call.caller, Claim::Sources(claimed), 1, move |handle| {
        handle.progress(0, Some(format!("restore to {}", request.target.display())));
        // Checked again as it starts: the target may have been replaced by a link meanwhile
        // (and the restore checks the directories it opens once more).
        let request = match allowed_target(&worker.roots, &request.target) {
            Ok(target) => RestoreRequest { target, ..request },
            Err(e) => return Err((e, Value::Null)),
        };
        match run_restore(&worker, &request, false) {
            Ok(report) => {
                let value = json!({
                    "snapshot": report.snapshot,
                    "target": report.target,
                    "safety_snapshot": report.safety_snapshot,
                    "backup": report.backup,
                    "how": report.how,
                    "plan": report.plan.as_ref().map(plan_json),
                    "summary": report.summary,
                });
                match report.summary.errors.len() {
                    0 => Ok(value),
                    n => Err((format!("{n} entries could not be restored"), value)),
                }
            }
            Err(e) => Err((e.to_string(), Value::Null)),
        }
    });
    match job {
        Ok(job) => accepted(server, call, job),
        Err(e) => not_started(&e),
    }
}

/// The most paths of each kind a restore's plan lists in an answer (the counts are whole).
const PLAN_PATHS: usize = 1000;

/// A restore's plan for an answer: its counts, and its paths up to [`PLAN_PATHS`] of each kind.
fn plan_json(plan: &cairn::restore::in_place::Plan) -> Value {
    let first = |paths: &[String]| paths.iter().take(PLAN_PATHS).cloned().collect::<Vec<_>>();
    json!({
        "created": first(&plan.created),
        "replaced": first(&plan.replaced),
        "deleted": first(&plan.deleted),
        "kept": first(&plan.kept),
        "unchanged": plan.unchanged,
        "counts": {
            "created": plan.created.len(),
            "replaced": plan.replaced.len(),
            "deleted": plan.deleted.len(),
            "kept": plan.kept.len(),
        },
        "listed_at_most": PLAN_PATHS,
    })
}

struct RestoreRequest {
    id: Id,
    source: String,
    target: PathBuf,
    confirm: bool,
    delete: bool,
}

fn restore_request(server: &Server, call: &Call) -> Result<RestoreRequest, Reply> {
    let body = body(call)?;
    let bad = |message: String| Reply::error(StatusCode::BAD_REQUEST, message);
    let source =
        text_field(&body, "source")?.ok_or_else(|| bad("give `source`: the configured source to restore".into()))?;
    let spec =
        text_field(&body, "id")?.ok_or_else(|| bad("give `id`: a snapshot id, a prefix, or \"latest\"".into()))?;
    let configured = source_named(server, &source)?;
    let target = match text_field(&body, "target")? {
        Some(target) => PathBuf::from(target),
        None => match configured.paths.as_slice() {
            [path] if configured.kind == SourceKind::Tree && (path.is_dir() || !path.exists()) => path.clone(),
            _ if configured.kind == SourceKind::Command => {
                return Err(bad(format!(
                    "source {source} is a command's output, one file with no place of its own: give `target`, the directory to restore it into"
                )))
            }
            _ => return Err(bad(format!("source {source} is not one directory: give `target`"))),
        },
    };
    let target = allowed_target(&server.roots, &target).map_err(bad)?;
    let id = match choose(server, &spec, &Filter::of_source(Some(&source))) {
        Ok((id, _)) => id,
        // The safety snapshot an earlier restore of this target took puts it back as it was.
        Err(refused) => match choose(server, &spec, &Filter::of_source(Some(SAFETY_SOURCE))) {
            Ok((id, safety)) if spec != "latest" && safety.paths == [target.as_os_str().as_bytes()] => id,
            _ => return Err(refused),
        },
    };
    // The API restores a source as it was: what the snapshot lacks goes, unless told to keep it.
    let delete = match &body["delete"] {
        Value::Null => true,
        _ => flag_field(&body, "delete")?,
    };
    Ok(RestoreRequest { id, source, target, confirm: flag_field(&body, "confirm")?, delete })
}

/// `target` if it lies under one of `roots` (compared where it exists with symlinks resolved,
/// so a link under a root cannot lead out of it), resolved.
fn allowed_target(roots: &[PathBuf], target: &Path) -> Result<PathBuf, String> {
    let full = resolve(target)?;
    if roots.iter().any(|root| full.starts_with(root)) {
        Ok(full)
    } else {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(format!(
            "the target {} is not under a directory restores may write to ({}): set [serve] restore_roots",
            target.display(),
            if roots.is_empty() { "none".to_string() } else { roots.join(", ") }
        ))
    }
}

/// An absolute path without `..`, with symlinks resolved in the part of it that exists (the rest
/// as given).
pub fn resolve(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("{} must be an absolute path without `..`", path.display()));
    }
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        match std::fs::canonicalize(&existing) {
            Ok(resolved) => break resolved,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => return Err(format!("{} cannot be resolved", path.display())),
            },
        }
    };
    Ok(rest.iter().rev().fold(resolved, |path, name| path.join(name)))
}

/// The in-place restore (`restore --in-place`), or its plan with `dry_run`.
fn run_restore(
    server: &Server,
    request: &RestoreRequest,
    dry_run: bool,
) -> cairn::error::Result<cairn::restore::in_place::Report> {
    use cairn::restore::in_place::{self, Mode};
    let repo = &server.repo;
    let lock = crate::cli::read_lock(repo, "restore", server.context.lock_wait)
        .map_err(|e| e.downcast::<Error>().unwrap_or_else(|e| Error::Invalid(format!("{e:#}"))))?;
    let (_, snapshot) = repo.find_snapshot(&request.id.to_hex())?;
    let indexed = cairn::repository::Indexed::new(repo, repo.load_index()?);
    let skip = crate::cli::local_repository(&server.location);
    if !dry_run {
        // A source lost with the directory that held it: the way to it is made first (under a
        // root, which the restore checks again on what it opens).
        if let Some(parent) = request.target.parent().filter(|p| !p.exists()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    let options = in_place::Options {
        target: request.target.clone(),
        mode: Mode::InPlace,
        delete: request.delete,
        dry_run,
        skip,
        lock,
        within: server.roots.clone(),
        ..in_place::Options::default()
    };
    let progress = cairn::progress::Progress::new("restore", true);
    in_place::run(&indexed, &request.id, &snapshot, options, &progress)
}

/// Queues a run of the whole cycle (`cairn run` of the server's config) as a job of its own.
pub fn submit_cycle(server: &Arc<Server>, caller: &str) -> Result<Job, NotStarted> {
    let worker = Arc::clone(server);
    let job = server.jobs.submit("run", caller, Claim::Everything, 1, move |handle| {
        handle.progress(0, Some("cairn run".into()));
        let mut command = std::process::Command::new(std::env::current_exe().unwrap_or_else(|_| "cairn".into()));
        command.arg("--repo").arg(&worker.location).arg("--json");
        worker.context.pass_to(&mut command);
        command.arg("run").arg("--config").arg(&worker.config.path);
        command.stdin(std::process::Stdio::null()).env_remove("CAIRN_REPO").env_remove("CAIRN_CONFIG");
        worker.context.password.pass_to(&mut command);
        // The run's JSON, whole (its steps' own output is bounded by the run).
        match crate::cli::signals::output_keeping(&mut command, 64 << 20) {
            Ok(out) => {
                let result = serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null);
                match out.status.success() {
                    true => Ok(result),
                    false => {
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        let why = stderr.lines().last().unwrap_or("").to_string();
                        Err((format!("cairn run ended with {}: {why}", out.status), result))
                    }
                }
            }
            Err(e) => Err((format!("could not start cairn run: {e}"), Value::Null)),
        }
    })?;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_must_lie_under_a_root_even_through_symlinks() {
        let dir = std::env::temp_dir().join(format!("cairn-roots-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), root.join("link")).unwrap();
        let roots = vec![std::fs::canonicalize(&root).unwrap()];
        assert!(allowed_target(&roots, &root.join("app")).is_ok());
        assert!(allowed_target(&roots, &root.join("new/deeper")).is_ok());
        assert!(allowed_target(&roots, &root).is_ok());
        for refused in [root.join("link"), root.join("link/new"), root.join("../elsewhere"), dir.clone(), "/".into()] {
            assert!(allowed_target(&roots, &refused).is_err(), "{}", refused.display());
        }
        assert!(allowed_target(&roots, Path::new("relative/app")).is_err());
        assert!(allowed_target(&[], &root.join("app")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
