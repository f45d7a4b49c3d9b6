//! Where a repository lives, parsed once: a directory, or an object store's URL and the settings
//! that reach it. Every opening and creation of a repository starts from one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::local::LocalBackend;
use crate::backend::object::{is_url, ObjectBackend};
use crate::backend::Backend;
use crate::error::Result;

#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine (a path, or a `file://` URL).
    Directory(PathBuf),
    /// An object store: `s3://bucket/prefix`, `gs://...`, `az://...` or `memory://...`.
    /// `settings` go on top of the provider's environment variables (for S3, keys as in
    /// object_store's `AmazonS3ConfigKey`: `aws_access_key_id`, `aws_endpoint`,
    /// `aws_allow_http`, ...): how an embedder passes credentials as values.
    ObjectStore { url: String, settings: Vec<(String, String)> },
}

impl Location {
    /// A directory path, a `file://` URL or an object-store URL, as the command line takes it.
    pub fn parse(location: &str) -> Location {
        match is_url(location) {
            true => Location::ObjectStore { url: location.to_string(), settings: Vec::new() },
            false => Location::Directory(PathBuf::from(location.strip_prefix("file://").unwrap_or(location))),
        }
    }

    /// A directory.
    pub fn directory(path: impl AsRef<Path>) -> Location {
        Location::Directory(path.as_ref().to_path_buf())
    }

    /// This location with one more object-store setting (a directory has none: unchanged).
    pub fn with_setting(mut self, key: &str, value: &str) -> Location {
        if let Location::ObjectStore { settings, .. } = &mut self {
            settings.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// The backend that reads and writes there; nothing is read yet.
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Directory(path) => Arc::new(LocalBackend::new(path)),
            Location::ObjectStore { url, settings } => Arc::new(self::object(url, settings)?),
        })
    }

    /// The directory, for a local repository.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Location::Directory(path) => Some(path),
            Location::ObjectStore { .. } => None,
        }
    }
}

/// The object-store backend at `url` with `settings`.
pub(super) fn object(url: &str, settings: &[(String, String)]) -> Result<ObjectBackend> {
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ObjectBackend::open_with(url, &settings)
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Directory(path) => write!(f, "{}", path.display()),
            Location::ObjectStore { url, .. } => f.write_str(url),
        }
    }
}

/// Settings' values are left out: they may be credentials.
impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Directory(path) => f.debug_tuple("Directory").field(path).finish(),
            Location::ObjectStore { url, settings } => {
                let keys: Vec<&str> = settings.iter().map(|(key, _)| key.as_str()).collect();
                f.debug_struct("ObjectStore").field("url", url).field("settings", &keys).finish()
            }
        }
    }
}

impl From<&str> for Location {
    fn from(location: &str) -> Location {
        Location::parse(location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_file_urls_and_object_stores_parse_apart() {
        assert_eq!(Location::parse("/srv/repo"), Location::directory("/srv/repo"));
        assert_eq!(Location::parse("file:///srv/repo"), Location::directory("/srv/repo"));
        assert_eq!(Location::parse("relative/dir").to_string(), "relative/dir");
        let s3 = Location::parse("s3://bucket/prefix").with_setting("aws_allow_http", "true");
        assert_eq!(s3.to_string(), "s3://bucket/prefix");
        assert_eq!(s3.path(), None);
        assert!(!format!("{s3:?}").contains("true"), "values are never shown: {s3:?}");
        assert!(matches!(s3, Location::ObjectStore { settings, .. } if settings.len() == 1));
    }
}
