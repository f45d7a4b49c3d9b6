//! Repositories on object stores, through the `object_store` crate: `s3://bucket/prefix` (with
//! the standard `AWS_*` environment variables, including `AWS_ENDPOINT_URL` and
//! `AWS_ALLOW_HTTP=true` for S3-compatible servers), `gs://bucket/prefix` (`GOOGLE_*`),
//! `az://container/prefix` (`AZURE_*`, the account from `AZURE_STORAGE_ACCOUNT_NAME`) and
//! `memory://` (tests). Credentials only ever come from the environment or the provider's own
//! files: a location never holds one, so printing a location cannot leak one.
//!
//! Object stores have no rename: every put is a create-only put (`If-None-Match: *` on S3), so a
//! name, once written, always holds the same bytes, and an interrupted put leaves nothing. The
//! repository's commit order (packs, then index, then manifest) is unchanged.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload};

use super::{Backend, RequestCounts};
use crate::error::{Error, Result};

pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    runtime: tokio::runtime::Runtime,
    requests: Counters,
}

/// Requests sent, by kind (object stores bill per request).
#[derive(Default)]
struct Counters {
    get: AtomicU64,
    get_bytes: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
}

/// Object-store URL schemes cairn accepts as repository locations.
const SCHEMES: [&str; 4] = ["s3://", "gs://", "az://", "memory://"];

/// The cargo feature a URL's store needs, if this build lacks it.
fn missing_feature(url: &str) -> Option<&'static str> {
    let needs = [
        ("s3://", "s3", cfg!(feature = "s3")),
        ("gs://", "gcs", cfg!(feature = "gcs")),
        ("az://", "azure", cfg!(feature = "azure")),
    ];
    needs.into_iter().find(|(scheme, _, built)| url.starts_with(scheme) && !built).map(|(_, feature, _)| feature)
}

/// Whether a `--repo` value names an object store rather than a directory.
pub fn is_url(location: &str) -> bool {
    SCHEMES.iter().any(|scheme| location.starts_with(scheme))
}

/// S3 lists at most this many keys per response.
const LIST_PAGE: u64 = 1000;

/// Transient failures (connection refused, 5xx, throttling) are retried inside object_store with
/// exponential backoff, for at most this long per request. Callers that can repeat a whole
/// operation safely (sync's content-addressed copies) add their own retries on top.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: 5, retry_timeout: Duration::from_secs(30), ..Default::default() }
}

/// How long a request may go without a byte arriving (its answer, or the next piece of a body)
/// before it is given up as stalled (and a read tried again). Only stalls end a transfer: the
/// HTTP client's own limit on a whole request ([`WHOLE_REQUEST`]) is a day, so a pack crosses a
/// slow link however long it takes (with the client's 30 s default, a 16 MiB pack needed 0.55
/// MB/s per request, and a restore or sync over a slower link failed every try).
fn stall() -> Duration {
    let knob = crate::knobs::get("CAIRN_STALL_SECS").and_then(|s| s.parse().ok());
    Duration::from_secs(knob.unwrap_or(60))
}

/// The HTTP client's limit on one request, answer and body, unless the environment sets one.
const WHOLE_REQUEST: &str = "1day";

/// The slowest link a put, whose progress is not seen from here, waits for, in bytes a second,
/// beyond [`stall`].
const SLOWEST_LINK: u64 = 16 * 1024;

/// `future`, or an error (a transient one) if it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    tokio::time::timeout(limit, future).await.unwrap_or_else(|_| {
        Err(object_store::Error::Generic {
            store: "cairn",
            source: format!("no answer within {} s: the connection stalled", limit.as_secs()).into(),
        })
    })
}

/// Reads the body of the answer `get` brings, handing `feed` each piece as it arrives: the
/// answer, and each piece after the one before, within [`stall`].
async fn read_body(
    get: impl std::future::Future<Output = object_store::Result<object_store::GetResult>>,
    mut feed: impl FnMut(&[u8]),
) -> object_store::Result<()> {
    let mut body = within(stall(), get).await?.into_stream();
    while let Some(piece) = within(stall(), body.try_next()).await? {
        feed(&piece);
    }
    Ok(())
}

/// Tries of one read before its error is the answer (see [`ObjectBackend::reading`]).
const READ_ATTEMPTS: u32 = 5;

/// Whether trying a read again may help: not for what is missing, forbidden or malformed.
fn transient(error: &object_store::Error) -> bool {
    !matches!(
        error,
        object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

impl ObjectBackend {
    /// Opens with S3 settings from the `AWS_*` environment variables.
    pub fn open(url: &str) -> Result<ObjectBackend> {
        Self::open_with(url, &[])
    }

    /// Opens with explicit S3 settings on top of the environment's (keys as in
    /// `AmazonS3ConfigKey`, for instance `aws_endpoint`, `aws_allow_http`), for tests.
    pub fn open_with(url: &str, settings: &[(&str, &str)]) -> Result<ObjectBackend> {
        let invalid = |e: &dyn std::fmt::Display| Error::Invalid(format!("repository {url}: {e}"));
        let (bucket, prefix) = SCHEMES
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
            .ok_or_else(|| invalid(&"unknown scheme (use a path, s3://, gs://, az:// or memory://)"))?;
        if bucket.is_empty() && !url.starts_with("memory://") {
            return Err(invalid(&"no bucket or container named"));
        }
        let store: Arc<dyn ObjectStore> = if url.starts_with("memory://") {
            Arc::new(object_store::memory::InMemory::new())
        } else if let Some(feature) = missing_feature(url) {
            return Err(invalid(&format!(
                "this cairn was built without the `{feature}` feature; build it with `cargo build --release --features {feature}`"
            )));
        } else {
            Self::cloud_store(url, bucket, settings).map_err(|e| invalid(&e))?
        };
        // memory:// has no bucket: all of its path is the prefix.
        let prefix = url.strip_prefix("memory://").unwrap_or(prefix).trim_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Resources { what: "the I/O runtime", reason: e.to_string() })?;
        Ok(ObjectBackend { store, prefix, location: url.to_string(), runtime, requests: Counters::default() })
    }

    /// The client of an S3, GCS or Azure store (one this build has the feature of).
    #[allow(unused_variables)]
    fn cloud_store(
        url: &str,
        bucket: &str,
        settings: &[(&str, &str)],
    ) -> std::result::Result<Arc<dyn ObjectStore>, String> {
        #[cfg(feature = "s3")]
        if url.starts_with("s3://") {
            let mut builder = object_store::aws::AmazonS3Builder::from_env();
            if std::env::var_os("AWS_TIMEOUT").is_none() {
                let timeout = object_store::aws::AmazonS3ConfigKey::Client(object_store::ClientConfigKey::Timeout);
                builder = builder.with_config(timeout, WHOLE_REQUEST);
            }
            for (key, value) in settings {
                let key: object_store::aws::AmazonS3ConfigKey = key.parse().map_err(|e| format!("{e}"))?;
                builder = builder.with_config(key, *value);
            }
            let plain_http = builder
                .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
                .filter(|endpoint| endpoint.to_ascii_lowercase().starts_with("http://"));
            let allow_http = builder
                .get_config_value(&object_store::aws::AmazonS3ConfigKey::Client(
                    object_store::ClientConfigKey::AllowHttp,
                ))
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            if let Some(endpoint) = plain_http.filter(|_| !allow_http) {
                return Err(format!(
                    "the endpoint {endpoint} is plain HTTP, which is refused unless AWS_ALLOW_HTTP=true is set \
                     (set it only for a server on a trusted network, such as a local test server; else use https://)"
                ));
            }
            let store = builder
                .with_bucket_name(bucket)
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                .with_retry(retry_config())
                .build()
                .map_err(|e| e.to_string())?;
            return Ok(Arc::new(store));
        }
        #[cfg(feature = "gcs")]
        if url.starts_with("gs://") {
            let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env();
            if std::env::var_os("GOOGLE_TIMEOUT").is_none() {
                let timeout = object_store::gcp::GoogleConfigKey::Client(object_store::ClientConfigKey::Timeout);
                builder = builder.with_config(timeout, WHOLE_REQUEST);
            }
            return Ok(Arc::new(
                builder.with_bucket_name(bucket).with_retry(retry_config()).build().map_err(|e| e.to_string())?,
            ));
        }
        #[cfg(feature = "azure")]
        if url.starts_with("az://") {
            let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env();
            if std::env::var_os("AZURE_TIMEOUT").is_none() {
                let timeout = object_store::azure::AzureConfigKey::Client(object_store::ClientConfigKey::Timeout);
                builder = builder.with_config(timeout, WHOLE_REQUEST);
            }
            return Ok(Arc::new(
                builder.with_container_name(bucket).with_retry(retry_config()).build().map_err(|e| e.to_string())?,
            ));
        }
        Err(format!("no object store for {url}"))
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The repository key of an object path (the part after the prefix).
    fn key(&self, path: &ObjectPath) -> String {
        let full = path.as_ref();
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(full).to_string()
        }
    }

    /// Runs a read (`attempt` makes its request), again after a pause when it fails on the way:
    /// the HTTP client retries a request that fails, but not a body cut off in the middle (a
    /// dropped connection), and a read can always be repeated. Each attempt is a request.
    fn reading<T, F: std::future::Future<Output = object_store::Result<T>>>(
        &self,
        key: &str,
        attempt: impl Fn() -> F,
    ) -> Result<T> {
        let mut pause = Duration::from_millis(100);
        for tries in 1.. {
            self.requests.get.fetch_add(1, Relaxed);
            match self.runtime.block_on(attempt()) {
                Err(e) if tries < READ_ATTEMPTS && transient(&e) => {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                done => return done.map_err(|e| self.error(key, e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn error(&self, key: &str, error: object_store::Error) -> Error {
        let kind = match &error {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } => std::io::ErrorKind::AlreadyExists,
            // A 403 (or 401): these credentials may not do this, however often it is tried.
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                std::io::ErrorKind::PermissionDenied
            }
            _ => std::io::ErrorKind::Other,
        };
        let text = error.to_string();
        // A listing in a bucket that is not there answers with the store's whole XML error.
        if ["<Code>NoSuchBucket</Code>", "ContainerNotFound", "The specified bucket does not exist"]
            .iter()
            .any(|code| text.contains(code))
        {
            return Error::Invalid(format!(
                "{}: the bucket or container does not exist: create it first (cairn creates none)",
                self.location
            ));
        }
        let said = match innermost_cause(&error) {
            Some(cause) => format!("{text}: {cause}"),
            None => text,
        };
        Error::io(format!("{}/{key}", self.location), std::io::Error::new(kind, said))
    }
}

/// What the innermost cause of a failed request says, when the error's own text leaves it out
/// (object_store says "error sending request" for a server that is down and a name that does
/// not resolve alike), with what to check for the common ones.
fn innermost_cause(error: &object_store::Error) -> Option<String> {
    let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
    let mut next = std::error::Error::source(error);
    while let Some(cause) = next {
        innermost = Some(cause);
        next = cause.source();
    }
    let cause = innermost?;
    let said = cause.to_string();
    if error.to_string().contains(&said) {
        return None;
    }
    let kind = cause.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
    let hint = match kind {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            " (nothing answers at that address: is the server up, and is the endpoint right?)"
        }
        _ if said.contains("dns error") || said.contains("failed to lookup address") => {
            " (the host name does not resolve: check the endpoint, or the network's DNS)"
        }
        _ => "",
    };
    Some(format!("{said}{hint}"))
}

/// A body read from the first part's offset, cut into the parts as its chunks arrive.
struct Cut<'p> {
    parts: &'p [(u64, usize)],
    out: Vec<Vec<u8>>,
    /// Where in the object the next byte of the body lies.
    at: u64,
}

impl<'p> Cut<'p> {
    fn new(parts: &'p [(u64, usize)]) -> Cut<'p> {
        Cut { parts, out: Vec::with_capacity(parts.len()), at: parts.first().map_or(0, |p| p.0) }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            // The part being filled: the last one begun, unless it is full.
            let n = match self.out.last() {
                Some(part) if part.len() < self.parts[self.out.len() - 1].1 => self.out.len() - 1,
                _ => self.out.len(),
            };
            let Some(&(offset, len)) = self.parts.get(n) else { return };
            let take = if self.at < offset {
                chunk.len().min((offset - self.at) as usize) // a gap between parts
            } else {
                if n == self.out.len() {
                    self.out.push(crate::buffers::take(len));
                }
                let take = chunk.len().min(len - self.out[n].len());
                self.out[n].extend_from_slice(&chunk[..take]);
                take
            };
            (chunk, self.at) = (&chunk[take..], self.at + take as u64);
        }
    }

    /// The parts, if the body held them all.
    fn parts(self) -> Option<Vec<Vec<u8>>> {
        let whole = self.out.len() == self.parts.len()
            && self.out.iter().zip(self.parts).all(|(part, &(_, len))| part.len() == len);
        whole.then_some(self.out)
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        let bytes = self.reading(key, || async {
            let mut bytes = Vec::new();
            read_body(self.store.get(&path), |piece| bytes.extend_from_slice(piece)).await?;
            Ok(bytes)
        })?;
        self.requests.get_bytes.fetch_add(bytes.len() as u64, Relaxed);
        Ok(bytes)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(key);
        self.requests.get_bytes.fetch_add(len, Relaxed);
        let bytes = self.reading(key, || async {
            let options = GetOptions { range: Some(GetRange::Bounded(offset..offset + len)), ..Default::default() };
            let mut bytes = Vec::new();
            read_body(self.store.get_opts(&path, options), |piece| bytes.extend_from_slice(piece)).await?;
            Ok(bytes)
        })?;
        if bytes.len() as u64 != len {
            return Err(Error::corrupt(
                format!("{}/{key}", self.location),
                format!("truncated: wanted {len} bytes at {offset}"),
            ));
        }
        Ok(bytes)
    }

    fn get_parts(&self, key: &str, parts: &[(u64, usize)]) -> Result<Vec<Vec<u8>>> {
        let Some((start, end)) = super::span(parts) else { return Ok(Vec::new()) };
        let path = self.path(key);
        self.requests.get_bytes.fetch_add(end - start, Relaxed);
        // The body is cut into the parts as it arrives, so the span is never held whole.
        let cut = self.reading(key, || async {
            let options = GetOptions { range: Some(GetRange::Bounded(start..end)), ..Default::default() };
            let mut cut = Cut::new(parts);
            read_body(self.store.get_opts(&path, options), |piece| cut.feed(piece)).await?;
            Ok(cut)
        })?;
        cut.parts().ok_or_else(|| {
            Error::corrupt(
                format!("{}/{key}", self.location),
                format!("truncated: wanted {} bytes at {start}", end - start),
            )
        })
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key);
        self.requests.head.fetch_add(1, Relaxed);
        Ok(self.runtime.block_on(within(stall(), self.store.head(&path))).map_err(|e| self.error(key, e))?.size)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.put_vec(key, data.to_vec())
    }

    fn put_vec(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let path = self.path(key);
        self.requests.put.fetch_add(1, Relaxed);
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        let limit = stall() + Duration::from_secs(data.len() as u64 / SLOWEST_LINK);
        match self.runtime.block_on(within(limit, self.store.put_opts(&path, PutPayload::from(data), options))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            // A put only finds nothing when there is nowhere to put: the bucket is missing.
            Err(object_store::Error::NotFound { .. }) => Err(Error::Invalid(format!(
                "{}: cannot write {key}: the bucket or container does not exist (create it first)",
                self.location
            ))),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self.list_with_times(prefix)?.into_iter().map(|(key, len, _)| (key, len)).collect())
    }

    fn list_with_times(&self, prefix: &str) -> Result<Vec<(String, u64, Option<i64>)>> {
        let path = self.path(prefix.trim_end_matches('/'));
        let objects = self.runtime.block_on(async {
            // An object at a time, each (a page's first brings the page) within the stall limit.
            let mut listing = self.store.list(Some(&path));
            let mut objects: Vec<object_store::ObjectMeta> = Vec::new();
            // A server that hands out the same page again (a continuation token that does not
            // move on) would be listed from forever. A name can come twice legitimately (an
            // object `x` beside a folder marker `x/` is one path here): it is listed once, and
            // only more repeats than a page holds end the listing.
            let mut seen = std::collections::HashSet::new();
            let mut repeats = 0;
            while let Some(object) = within(stall(), listing.try_next()).await? {
                if seen.insert(object.location.clone()) {
                    objects.push(object);
                    continue;
                }
                repeats += 1;
                if repeats > LIST_PAGE {
                    return Err(object_store::Error::Generic {
                        store: "cairn",
                        source: format!(
                            "the listing names {} twice, and as many more: the server repeats itself",
                            object.location
                        )
                        .into(),
                    });
                }
            }
            Ok(objects)
        });
        let objects = objects.map_err(|e| self.error(prefix, e))?;
        self.requests.list.fetch_add((objects.len() as u64).div_ceil(LIST_PAGE).max(1), Relaxed);
        let mut out: Vec<(String, u64, Option<i64>)> =
            objects.iter().map(|o| (self.key(&o.location), o.size, Some(o.last_modified.timestamp_millis()))).collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        self.requests.delete.fetch_add(1, Relaxed);
        match self.runtime.block_on(within(stall(), self.store.delete(&path))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key);
        self.requests.head.fetch_add(1, Relaxed);
        match self.runtime.block_on(within(stall(), self.store.head(&path))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn requests(&self) -> Option<RequestCounts> {
        let c = &self.requests;
        Some(RequestCounts {
            get: c.get.load(Relaxed),
            get_bytes: c.get_bytes.load(Relaxed),
            put: c.put.load(Relaxed),
            head: c.head.load(Relaxed),
            list: c.list.load(Relaxed),
            delete: c.delete.load(Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_cut_into_its_parts_wherever_its_chunks_end() {
        let body: Vec<u8> = (0..200u8).collect();
        let parts = [(10u64, 5usize), (15, 1), (40, 60), (150, 50)];
        let wanted: Vec<Vec<u8>> = parts.iter().map(|&(at, len)| body[at as usize..][..len].to_vec()).collect();
        for size in [1, 2, 3, 7, 64, 190] {
            let mut cut = Cut::new(&parts);
            body[10..].chunks(size).for_each(|chunk| cut.feed(chunk));
            assert_eq!(cut.parts().as_ref(), Some(&wanted), "chunks of {size}");
        }
        let mut short = Cut::new(&parts);
        short.feed(&body[10..199]);
        assert_eq!(short.parts(), None, "a body cut short is not taken for the parts");
    }

    /// A server whose every listing page says there is more, with the same continuation token:
    /// the listing ends in an error once more names came again than a page holds (it looped
    /// forever, 31,000 requests in 2 minutes).
    #[cfg(feature = "s3")]
    #[test]
    fn a_listing_that_repeats_itself_is_an_error_not_a_loop() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicU64::new(0));
        let counted = served.clone();
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match client.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&chunk[..n]),
                            }
                        }
                        request.clear();
                        // Without the check, the listing would never end: the server gives up.
                        if counted.fetch_add(1, Relaxed) >= 3000 {
                            return;
                        }
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name>\
                            <Prefix>r/snapshots</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>\
                            <IsTruncated>true</IsTruncated><NextContinuationToken>same</NextContinuationToken>\
                            <Contents><Key>r/snapshots/a</Key><LastModified>2026-12-07T00:00:00.000Z</LastModified>\
                            <ETag>\"e\"</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>\
                            </ListBucketResult>";
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        // One write: a head and body in two wait out delayed acknowledgements.
                        if client.write_all(format!("{head}{body}").as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let endpoint = format!("http://127.0.0.1:{port}");
        let settings = [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "k"),
            ("aws_secret_access_key", "s"),
            ("aws_region", "us-east-1"),
        ];
        let backend = ObjectBackend::open_with("s3://b/r", &settings).unwrap();
        let listed = backend.list("snapshots");
        assert!(listed.as_ref().is_err_and(|e| e.to_string().contains("twice")), "{listed:?}");
        // One page, then a page's worth of repeats of it.
        assert!(served.load(Relaxed) <= LIST_PAGE + 2, "{} pages", served.load(Relaxed));
    }

    #[test]
    fn locations_parse_into_store_and_prefix() {
        for url in ["s3://b/p", "gs://b/p", "az://c/p", "memory://"] {
            assert!(is_url(url), "{url}");
        }
        for path in ["/srv/repo", "repo", "file:///srv/repo", "s3:/x"] {
            assert!(!is_url(path), "{path}");
        }
        let memory = ObjectBackend::open("memory://some/prefix/").unwrap();
        assert_eq!(memory.path("config").as_ref(), "some/prefix/config");
        let s3 = ObjectBackend::open_with("s3://bucket/a/b", &[("aws_region", "us-east-1")]).unwrap();
        assert_eq!(s3.path("packs/ab/cd").as_ref(), "a/b/packs/ab/cd");
        assert_eq!(s3.key(&s3.path("index/x")), "index/x");
    }

    #[test]
    fn bad_locations_are_clear_errors() {
        for (url, wanted) in [("s3://", "no bucket"), ("gs:///x", "no bucket"), ("ftp://x", "unknown scheme")] {
            match ObjectBackend::open(url) {
                Err(e) => assert!(e.to_string().contains(wanted), "{url}: {e}"),
                Ok(_) => panic!("{url} opened"),
            }
        }
        // Azure needs an account; its absence is reported, not a panic.
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_some() {
            return;
        }
        let error = ObjectBackend::open("az://container/p").err().expect("no account").to_string();
        assert!(error.contains("az://container/p"), "{error}");
    }
}
