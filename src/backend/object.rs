//! Repositories on object stores, through the `object_store` crate: `s3://bucket/prefix` (with
//! the standard `AWS_*` environment variables, including `AWS_ENDPOINT_URL` and
//! `AWS_ALLOW_HTTP=true` for S3-compatible servers) and `memory://` (tests).
//!
//! Object stores have no rename: every put is a create-only put (`If-None-Match: *` on S3), so a
//! name, once written, always holds the same bytes, and an interrupted put leaves nothing. The
//! repository's commit order (packs, then index, then manifest) is unchanged.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::Backend;
use crate::error::{Error, Result};

pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    runtime: tokio::runtime::Runtime,
}

/// Whether a `--repo` value names an object store rather than a directory.
pub fn is_url(location: &str) -> bool {
    ["s3://", "memory://"].iter().any(|scheme| location.starts_with(scheme))
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
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut builder = object_store::aws::AmazonS3Builder::from_env();
            for (key, value) in settings {
                let key: object_store::aws::AmazonS3ConfigKey = key.parse().map_err(|e| invalid(&e))?;
                builder = builder.with_config(key, *value);
            }
            let store = builder
                .with_bucket_name(bucket)
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                .build()
                .map_err(|e| invalid(&e))?;
            (Arc::new(store), prefix.trim_matches('/').to_string())
        } else if let Some(rest) = url.strip_prefix("memory://") {
            (Arc::new(object_store::memory::InMemory::new()), rest.trim_matches('/').to_string())
        } else {
            return Err(invalid(&"unknown scheme (use a path, s3://bucket/prefix or memory://)"));
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start the I/O runtime: {e}")))?;
        Ok(ObjectBackend { store, prefix, location: url.to_string(), runtime })
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

    fn error(&self, key: &str, error: object_store::Error) -> Error {
        let kind = match &error {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } => std::io::ErrorKind::AlreadyExists,
            _ => std::io::ErrorKind::Other,
        };
        Error::io(format!("{}/{key}", self.location), std::io::Error::new(kind, error.to_string()))
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        self.runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.error(key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(key);
        let bytes =
            self.runtime.block_on(self.store.get_range(&path, offset..offset + len)).map_err(|e| self.error(key, e))?;
        if bytes.len() as u64 != len {
            return Err(Error::corrupt(
                format!("{}/{key}", self.location),
                format!("truncated: wanted {len} bytes at {offset}"),
            ));
        }
        Ok(bytes.to_vec())
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key);
        Ok(self.runtime.block_on(self.store.head(&path)).map_err(|e| self.error(key, e))?.size)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<bool> {
        let path = self.path(key);
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.runtime.block_on(self.store.put_opts(&path, PutPayload::from(data.to_vec()), options)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(prefix.trim_end_matches('/'));
        let objects: Vec<object_store::ObjectMeta> =
            self.runtime.block_on(self.store.list(Some(&path)).try_collect()).map_err(|e| self.error(prefix, e))?;
        let mut out: Vec<(String, u64)> = objects.iter().map(|o| (self.key(&o.location), o.size)).collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key);
        match self.runtime.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }
}
