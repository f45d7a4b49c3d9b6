//! `--exclude` patterns. A pattern without `/` matches an entry's name at any depth
//! (`*.log`, `node_modules`); a pattern with `/` matches the whole absolute path
//! (`/srv/app/cache/*`). `*` matches within one path component, `**` across components, `?` one
//! character. An excluded directory is not descended into.

use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone)]
pub struct Excludes {
    patterns: Vec<Vec<u8>>,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Excludes {
        Excludes {
            patterns: patterns
                .iter()
                .map(|p| p.trim_end_matches('/').as_bytes().to_vec())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the entry called `name` is excluded, `path` giving its whole path: called only
    /// when a pattern needs it, so a walk builds no path for the common patterns.
    pub fn excludes_entry(&self, name: &[u8], path: impl FnOnce() -> PathBuf) -> bool {
        if self.patterns.iter().all(|p| !p.contains(&b'/')) {
            return self.patterns.iter().any(|p| glob(p, name));
        }
        self.excludes(&path())
    }

    pub fn excludes(&self, path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let full = path.as_os_str().as_bytes();
        let name = path.file_name().map_or(full, |n| n.as_bytes());
        self.patterns.iter().any(|p| if p.contains(&b'/') { glob(p, full) } else { glob(p, name) })
    }
}

/// Glob match of the whole of `text` against `pattern`.
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            (0..=text.len()).any(|i| glob(rest, &text[i..]))
        }
        Some((b'*', rest)) => {
            let limit = text.iter().position(|&b| b == b'/').unwrap_or(text.len());
            (0..=limit).any(|i| glob(rest, &text[i..]))
        }
        Some((b'?', rest)) => matches!(text.first(), Some(&c) if c != b'/') && glob(rest, &text[1..]),
        Some((&c, rest)) => text.first() == Some(&c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let ex = Excludes::new(&["*.log".into(), "cache".into(), "/srv/*/tmp".into(), "/data/**/x?".into()]);
        assert!(ex.excludes(Path::new("/a/b/debug.log")));
        assert!(!ex.excludes(Path::new("/a/b/debug.log.gz")));
        assert!(ex.excludes(Path::new("/a/cache")));
        assert!(!ex.excludes(Path::new("/a/cached")));
        assert!(ex.excludes(Path::new("/srv/app/tmp")));
        assert!(!ex.excludes(Path::new("/srv/app/deep/tmp")));
        assert!(ex.excludes(Path::new("/data/a/b/c/xy")));
        assert!(!ex.excludes(Path::new("/data/a/b/c/xyz")));
        assert!(ex.excludes_entry(b"debug.log", || PathBuf::from("/a/debug.log")));
        assert!(ex.excludes_entry(b"tmp", || PathBuf::from("/srv/app/tmp")));
        assert!(!ex.excludes_entry(b"tmp", || PathBuf::from("/srv/app/deep/tmp")));
        let names_only = Excludes::new(&["*.log".into()]);
        assert!(names_only.excludes_entry(b"x.log", || unreachable!("no pattern needs the path")));
        assert!(!names_only.excludes_entry(b"x.txt", || unreachable!("no pattern needs the path")));
    }
}
