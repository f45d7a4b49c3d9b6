//! `cairn serve`: the HTTP API a platform calls (backups, their list and details, delete, a
//! restore that demands confirmation and answers with its safety snapshot, status, metrics,
//! jobs) and a status page people look at, over the repository and sources of a `cairn run`
//! config. The routes are [`api`]'s, the page [`page`]'s, the long work [`jobs`]'.
//!
//! One process, started once: the repository is opened (its key derived) when the server
//! starts, and manifests, which never change, are decoded once and kept. A backup runs as
//! `cairn run` runs one, its hooks and snapshot as child processes of this binary, so it writes
//! the same records and takes the same locks; a restore and a delete run in the server through
//! the library. HTTP/1.1 by hyper on one tokio thread; the repository's work runs on blocking
//! threads, never on it.
//!
//! Safety: it binds 127.0.0.1 unless told otherwise; every request needs a token of the token
//! file ([`tokens`]); request heads must arrive within [`HEAD_TIMEOUT`] and bodies are at most
//! [`MAX_BODY`]; at most [`MAX_CONNECTIONS`] connections are served at once; a restore's target
//! must lie under the roots the config allows. TLS is a reverse proxy's (README, "The API and status page").
//! Every call that changes something leaves an `api` audit record naming its caller; calls that
//! only read are counted per caller and route, and the counts are written as one record an hour
//! (and when the server stops), so a page polled every minute does not grow the log by 1,440
//! records a day. Every call is also one line on standard error (the journal).

mod api;
mod jobs;
mod page;
mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

use super::Context;
use cairn::format::audit::Outcome;
use cairn::format::snapshot::Snapshot;
use cairn::id::Id;
use cairn::repository::Repository;
use cairn::run_config::Config;

/// Where `cairn serve` listens unless `--listen` or the config's `listen` say otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";
/// The largest request body taken (a restore's or a backup's JSON is far smaller).
const MAX_BODY: usize = 64 * 1024;
/// A request's head must have arrived within this, or the connection is closed.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A body (of a caller with a token) must have arrived within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: usize = 128;
/// The caller the jobs of `run_every` are run for (no token's name has parentheses).
const SCHEDULE: &str = "(schedule)";
/// How often the counts of read-only calls are written as an audit record.
const READS_EVERY: Duration = Duration::from_secs(3600);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file (default: $XDG_CONFIG_HOME/cairn/config.toml): its repository, sources and
    /// [serve] table
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address and port to listen on (beats the config's `listen`; default 127.0.0.1:8750)
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// File of `NAME TOKEN` lines: the bearer tokens that may call (beats the config's
    /// `token_file`; default: the systemd credential cairn-tokens)
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// What every request handler shares.
pub(crate) struct Server {
    context: Context,
    config: Config,
    location: String,
    repo: Repository,
    /// Decoded manifests by id: a listing reads only those new since the last one.
    manifests: Mutex<HashMap<Id, Arc<Snapshot>>>,
    /// Snapshot files that could not be read (damaged, or gone between listing and read), with
    /// why: not read again while listed, and named in every listing.
    unreadable: Mutex<HashMap<Id, String>>,
    jobs: Arc<jobs::Jobs>,
    tokens: tokens::Tokens,
    /// A restore's target must lie under one of these (canonical paths).
    roots: Vec<PathBuf>,
    /// `cairn stats` of the snapshots there were when it was computed (their ids).
    stats: Mutex<Option<(Vec<Id>, Arc<cairn::stats::Stats>)>>,
    /// Calls that only read, per caller and route, since `reads_since_ms`.
    reads: Mutex<Reads>,
}

/// Since when (Unix ms), and how many calls that read each caller made of each route.
type Reads = (i64, BTreeMap<(String, String), u64>);

pub fn run(context: &Context, args: Args) -> Result<std::process::ExitCode> {
    let path = super::config::path(args.config)?;
    let (config, problems) = cairn::run_config::load(&path).map_err(anyhow::Error::msg)?;
    if let Some(problem) = problems.iter().find(|p| !p.source_only) {
        bail!("{}:{}: {} (cairn config check lists every problem)", path.display(), problem.line, problem.message);
    }
    let (tokens, token_path) = tokens::Tokens::load(args.token_file.as_deref(), config.serve.token_file.as_deref())?;
    let listen = match (args.listen, &config.serve.listen) {
        (Some(flag), _) => flag,
        (None, Some(configured)) => *configured,
        (None, None) => DEFAULT_LISTEN.parse().expect("a valid address"),
    };
    let location = context.location_with(config.repository.as_deref());
    // The repository as `cairn run` finds or creates it; refused as a run refuses it.
    let refusals = {
        let mut cycle = super::run::Cycle::new(context, &config, location.clone(), false);
        cycle.prepare()?;
        cycle.backup(&[])
    };
    if let Some(refusal) = refusals.first() {
        bail!("{}", refusal.output.join("; "));
    }
    let mut repo = context.open_at(&location)?;
    context.cache_for(&mut repo);
    let roots = restore_roots(&config)?;
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let bound = listener.local_addr()?;
    // Children (backups) and this process speak JSON to each other; nothing is printed as text.
    let context = Context { json: true, quiet: true, ..context.clone() };
    let server = Arc::new(Server {
        context,
        config,
        location,
        repo,
        manifests: Mutex::new(HashMap::new()),
        unreadable: Mutex::new(HashMap::new()),
        stats: Mutex::new(None),
        jobs: Arc::new(jobs::Jobs::default()),
        tokens,
        roots,
        reads: Mutex::new((cairn::clock::now_ms(), BTreeMap::new())),
    });
    // A signal ends the process (and passes on to running backups, which record themselves as
    // interrupted): the counts of reads are written first.
    let on_end = Arc::clone(&server);
    super::signals::on_end(move |_| on_end.write_reads());
    let reads = Arc::clone(&server);
    std::thread::Builder::new().name("reads".into()).spawn(move || loop {
        std::thread::sleep(READS_EVERY);
        reads.write_reads();
    })?;
    if let Some(every) = server.config.serve.run_every {
        let cycle = Arc::clone(&server);
        std::thread::Builder::new().name("cycle".into()).spawn(move || loop {
            std::thread::sleep(every);
            // The cycle before this one is still going (or waiting): this one is not needed.
            if cycle.jobs.active("run") {
                continue;
            }
            if let Err(e) = api::submit_cycle(&cycle, SCHEDULE) {
                // Not silent: a failed `run` record, which `cairn status` reports.
                let why = format!("the scheduled cycle could not start: {e}");
                errln!("warning: {why}");
                let _ = cairn::audit::Run::failed_before(&cycle.repo, "run", "", &why);
            }
        })?;
    }
    errln!(
        "cairn serve: listening on http://{bound} (repository {}, tokens from {}, restores under {})",
        server.location,
        token_path.display(),
        server.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(accept(server, listener))
}

/// Where restores may write: the config's `restore_roots`, else the directories of the `tree`
/// sources (a database file's directory holds more than the source: give `restore_roots`).
/// Canonical, symlinks resolved as far as the path exists (a source lost on the day of the
/// disaster is still a root).
fn restore_roots(config: &Config) -> Result<Vec<PathBuf>> {
    let configured: Vec<PathBuf> = match &config.serve.restore_roots {
        Some(roots) => roots.clone(),
        None => config
            .sources
            .iter()
            .filter(|s| s.kind == cairn::run_config::SourceKind::Tree)
            .flat_map(|s| s.paths.iter())
            .filter(|p| !p.exists() || p.is_dir())
            .cloned()
            .collect(),
    };
    let mut roots = Vec::new();
    for root in configured {
        let resolved = api::resolve(&root).map_err(anyhow::Error::msg)?;
        if resolved == Path::new("/") {
            bail!("restore_roots may not allow / (list the directories restores may replace)");
        }
        roots.push(resolved);
    }
    roots.sort();
    roots.dedup();
    Ok(roots)
}

async fn accept(server: Arc<Server>, listener: std::net::TcpListener) -> Result<std::process::ExitCode> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = Arc::clone(&slots).acquire_owned().await.expect("never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                errln!("warning: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let server = Arc::clone(&server);
                async move { Ok::<_, std::convert::Infallible>(handle(server, request, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// A request as the routes see it.
pub(crate) struct Call {
    pub method: hyper::Method,
    pub path: String,
    /// [`route_name`]: the route, ids left out.
    pub route: String,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
    pub caller: String,
}

impl Call {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An answer: status, content type and body.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec(value).expect("JSON values serialise");
        body.push(b'\n');
        Reply { status, content_type: "application/json", body }
    }

    pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": message.to_string() }))
    }
}

async fn handle(server: Arc<Server>, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = parse_query(request.uri().query().unwrap_or(""));
    let route = route_name(&method, &path);
    let caller = server.tokens.caller(request.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes()));
    let reply = match caller {
        None => {
            server.count_read("(refused)", &route);
            Reply::error(StatusCode::UNAUTHORIZED, "a token is needed: Authorization: Bearer TOKEN")
        }
        Some((_, tokens::Scheme::Basic)) if method != hyper::Method::GET => {
            server.count_read("(refused)", &route);
            Reply::error(
                StatusCode::UNAUTHORIZED,
                "a call that changes something needs Authorization: Bearer TOKEN (a browser's login only reads)",
            )
        }
        Some((caller, _)) => {
            let body = tokio::time::timeout(BODY_TIMEOUT, Limited::new(request.into_body(), MAX_BODY).collect()).await;
            let mut call = Call {
                method: method.clone(),
                path: path.clone(),
                route,
                query,
                body: Bytes::new(),
                caller: caller.to_string(),
            };
            let refused = match body {
                Ok(Ok(body)) => {
                    call.body = body.to_bytes();
                    None
                }
                Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    Some(Reply::error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_BODY} bytes")))
                }
                Ok(Err(e)) => Some(Reply::error(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}"))),
                Err(_) => Some(Reply::error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
                )),
            };
            api::route(&server, call, refused).await
        }
    };
    errln!(
        "{peer} {} {method} {path} {} {:.1}ms",
        caller.map_or("-", |(name, _)| name),
        reply.status.as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    let mut response = Response::builder()
        .status(reply.status)
        .header(hyper::header::CONTENT_TYPE, reply.content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff");
    if reply.status == StatusCode::UNAUTHORIZED {
        // A browser asks for the token as the password of a login box (any user name).
        response = response.header(hyper::header::WWW_AUTHENTICATE, "Basic realm=\"cairn\", charset=\"UTF-8\"");
    }
    if reply.content_type.starts_with("text/html") {
        // The page has no script and loads nothing from elsewhere.
        response =
            response.header("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:");
    }
    response.body(Full::new(Bytes::from(reply.body))).expect("a valid response")
}

/// The route a request names, as the records and counts name it: one of a fixed set, ids left
/// out (`GET /api/v1/backups/{id}`), anything else `(no route)`; so a caller cannot make the
/// server keep or write what it likes.
pub(crate) fn route_name(method: &hyper::Method, path: &str) -> String {
    use hyper::Method;
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let route = match segments.as_slice() {
        [] => "/",
        ["metrics"] => "/metrics",
        ["api", "v1", "status"] => "/api/v1/status",
        ["api", "v1", "backups"] => "/api/v1/backups",
        ["api", "v1", "backups", "restore"] => "/api/v1/backups/restore",
        ["api", "v1", "backups", _] => "/api/v1/backups/{id}",
        ["api", "v1", "jobs"] => "/api/v1/jobs",
        ["api", "v1", "jobs", _] => "/api/v1/jobs/{id}",
        ["api", "v1", "run"] => "/api/v1/run",
        _ => NO_ROUTE,
    };
    let known = [Method::GET, Method::POST, Method::DELETE, Method::PUT, Method::PATCH, Method::HEAD, Method::OPTIONS];
    let method = if known.contains(method) { method.as_str() } else { "OTHER" };
    format!("{method} {route}")
}

/// What [`route_name`] calls a path that is no route.
pub(crate) const NO_ROUTE: &str = "(no route)";

/// `a=1&b=two%20words` as pairs, percent-decoded (`+` is a space).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b))) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Server {
    /// The manifests of every snapshot, oldest first; only those not seen before are read.
    /// Fails when the repository is gone since the server opened it (moved, deleted, its disk
    /// unmounted): its listings would come back empty, and an empty list must not pass for a
    /// repository that holds no snapshot, nor a status for a healthy one.
    pub fn present(&self) -> cairn::error::Result<()> {
        match self.repo.backend().exists(cairn::repository::layout::CONFIG)? {
            true => Ok(()),
            false => Err(cairn::error::Error::Io {
                path: PathBuf::from(format!("{}/{}", self.location, cairn::repository::layout::CONFIG)),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the repository cannot be read: its config file is gone (moved, deleted or unmounted since the \
                     server started); bring it back, or restart the server on the right repository",
                ),
            }),
        }
    }

    pub fn snapshots(&self) -> cairn::error::Result<Vec<(Id, Arc<Snapshot>)>> {
        self.present()?;
        let known: HashMap<Id, Arc<Snapshot>> = self.manifests.lock().expect("poisoned").clone();
        let unreadable: Vec<Id> = self.unreadable.lock().expect("poisoned").keys().copied().collect();
        let (listed, new) = self.repo.snapshots_besides(&|id| known.contains_key(id) || unreadable.contains(id))?;
        // What could not be read this time, by the id its message names.
        let damage: Vec<String> = self.repo.take_damage().into_iter().map(|e| e.to_string()).collect();
        let mut manifests = self.manifests.lock().expect("poisoned");
        let mut unreadable = self.unreadable.lock().expect("poisoned");
        for id in &listed {
            if !known.contains_key(id) && !new.iter().any(|(read, _)| read == id) && !unreadable.contains_key(id) {
                let hex = id.to_hex();
                let why = damage.iter().find(|d| d.contains(&hex)).cloned();
                unreadable.insert(*id, why.unwrap_or_else(|| format!("snapshot {hex} could not be read")));
            }
        }
        for (id, snapshot) in new {
            manifests.insert(id, Arc::new(snapshot));
        }
        // Forgotten ones go.
        let listed: std::collections::HashSet<Id> = listed.into_iter().collect();
        manifests.retain(|id, _| listed.contains(id));
        unreadable.retain(|id, _| listed.contains(id));
        let mut out: Vec<(Id, Arc<Snapshot>)> = manifests.iter().map(|(id, s)| (*id, Arc::clone(s))).collect();
        out.sort_by_key(|(id, s)| (s.time_sec, s.time_nsec, *id));
        Ok(out)
    }

    /// Why each snapshot file that could not be read was not (see [`Server::snapshots`]).
    pub fn unreadable(&self) -> Vec<String> {
        self.unreadable.lock().expect("poisoned").values().cloned().collect()
    }

    /// Each source's share of the stored bytes and its monthly cost (at the config's
    /// `cost_per_gib_month`), computed again only when the snapshots have changed.
    pub fn stats(&self) -> cairn::error::Result<Arc<cairn::stats::Stats>> {
        let ids: Vec<Id> = self.snapshots()?.into_iter().map(|(id, _)| id).collect();
        if let Some((of, stats)) = &*self.stats.lock().expect("poisoned") {
            if *of == ids {
                return Ok(Arc::clone(stats));
            }
        }
        let mut stats = cairn::stats::stats(&self.repo)?;
        if let Some(price) = self.config.cost_per_gib_month {
            stats.price(price);
        }
        let stats = Arc::new(stats);
        *self.stats.lock().expect("poisoned") = Some((ids, Arc::clone(&stats)));
        Ok(stats)
    }

    /// Writes an `api` record: who called what, and how it was answered.
    pub fn record_call(&self, call: &Call, status: StatusCode, details: serde_json::Value) {
        let mut audit = cairn::audit::Run::start(api::AUDIT_COMMAND, "");
        let mut map = match details {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        map.insert("caller".into(), call.caller.clone().into());
        map.insert("method".into(), call.method.as_str().into());
        map.insert("path".into(), call.path.clone().into());
        map.insert("status".into(), status.as_u16().into());
        audit.record.details = serde_json::Value::Object(map);
        audit.close(Outcome::Ok);
        if let Err(e) = cairn::audit::write(&self.repo, &audit.record) {
            errln!("warning: could not write the audit record of {} {}: {e}", call.method, call.path);
        }
    }

    pub fn count_read(&self, caller: &str, route: &str) {
        let mut reads = self.reads.lock().expect("poisoned");
        *reads.1.entry((caller.to_string(), route.to_string())).or_insert(0) += 1;
    }

    /// Writes the counts of read-only calls since the last time as one `api` record.
    fn write_reads(&self) {
        let (since, counts) = {
            let mut reads = self.reads.lock().expect("poisoned");
            let since = std::mem::replace(&mut reads.0, cairn::clock::now_ms());
            (since, std::mem::take(&mut reads.1))
        };
        if counts.is_empty() {
            return;
        }
        let mut audit = cairn::audit::Run::start(api::AUDIT_COMMAND, "");
        audit.record.started_ms = since;
        let calls: Vec<serde_json::Value> = counts
            .iter()
            .map(|((caller, route), n)| serde_json::json!({ "caller": caller, "route": route, "count": n }))
            .collect();
        audit.record.details = serde_json::json!({ "reads": calls });
        audit.close(Outcome::Ok);
        if let Err(e) = cairn::audit::write(&self.repo, &audit.record) {
            errln!("warning: could not write the record of the calls that read: {e}");
        }
    }
}
