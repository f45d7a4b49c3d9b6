//! `--exclude` patterns. A pattern without `/` matches an entry's name at any depth
//! (`*.log`, `node_modules`); a pattern with `/` matches the whole absolute path
//! (`/srv/app/cache/*`). `*` matches within one path component, `**` across components, `?` one
//! character. An excluded directory is not descended into.
//!
//! A pattern that can never match is refused, not left to exclude nothing in silence: a
//! relative pattern with `/` (`srv/app/logs`: the absolute path it is matched against always
//! starts with `/`), an empty one, or one with a `.`, `..` or empty component (the walk's paths
//! have none). Patterns also come from files (`--exclude-file`), one a line.

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

/// A pattern refused, or an exclude file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExcludeError {
    #[error("exclude pattern {pattern:?} can never match: {reason}")]
    NeverMatches { pattern: String, reason: String },
    #[error("exclude file {path}, line {line}: pattern {pattern:?} can never match: {reason}")]
    NeverMatchesInFile { path: PathBuf, line: usize, pattern: String, reason: String },
    #[error("exclude file {path}, line {line}: not UTF-8 text")]
    NotText { path: PathBuf, line: usize },
    #[error("cannot read exclude file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
}

/// Why `pattern` can never match an entry of a walk, with the fix; `None` when it can.
pub fn never_matches(pattern: &str) -> Option<String> {
    let trimmed = pattern.trim_end_matches('/');
    if trimmed.is_empty() {
        return Some("it is empty (to leave out a whole source, do not give it)".into());
    }
    if trimmed.contains('/') && !anchored(trimmed.as_bytes()) {
        let relative = trimmed.trim_start_matches("./");
        return Some(format!(
            "a pattern with \"/\" is matched against the whole absolute path; write \"/{relative}\" for that \
             path, or \"**/{relative}\" for it at any depth"
        ));
    }
    let components: Vec<&str> = trimmed.split('/').collect();
    if components.iter().skip(1).any(|c| c.is_empty()) {
        return Some("it has an empty component (\"//\"), which no path has".into());
    }
    if components.iter().any(|c| *c == "." || *c == "..") {
        return Some("it has a \".\" or \"..\" component, which the walk's paths never have".into());
    }
    None
}

/// Whether a pattern can match a text starting with `/`: a single `*` there can only match
/// nothing (it stops at `/`), `?` never matches `/`.
fn anchored(mut pattern: &[u8]) -> bool {
    loop {
        match pattern {
            [b'*', b'*', ..] | [b'/', ..] => return true,
            [b'*', rest @ ..] => pattern = rest,
            _ => return false,
        }
    }
}

/// Checks every pattern, failing on the first that can never match.
pub fn check_patterns(patterns: &[String]) -> Result<(), ExcludeError> {
    for pattern in patterns {
        if let Some(reason) = never_matches(pattern) {
            return Err(ExcludeError::NeverMatches { pattern: pattern.clone(), reason });
        }
    }
    Ok(())
}

/// The patterns of an exclude file: one a line, surrounding whitespace trimmed, blank lines and
/// lines starting with `#` skipped (restic's format). A pattern that can never match is an
/// error naming its line.
pub fn read_file(path: &Path) -> Result<Vec<String>, ExcludeError> {
    let bytes = std::fs::read(path).map_err(|source| ExcludeError::Unreadable { path: path.into(), source })?;
    let mut patterns = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_number = index + 1;
        let text = std::str::from_utf8(line)
            .map_err(|_| ExcludeError::NotText { path: path.into(), line: line_number })?
            .trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some(reason) = never_matches(text) {
            let pattern = text.to_string();
            return Err(ExcludeError::NeverMatchesInFile { path: path.into(), line: line_number, pattern, reason });
        }
        patterns.push(text.to_string());
    }
    Ok(patterns)
}

/// Glob match of the whole of `text` against `pattern`: `*` matches any bytes but `/`, `**` any
/// bytes, `?` one byte but `/`, any other byte itself.
///
/// Matched as an automaton over the positions of `text` that the pattern read so far can end
/// at, one pattern byte at a time: time proportional to the pattern's length times the text's,
/// whatever the pattern. (Backtracking is exponential in the stars: `*a*a*a*a*a*b` against a
/// file name of 250 `a`s, which anyone who can write into a source can create, took minutes.)
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    if !pattern.contains(&b'*') {
        // Most patterns are plain names or suffixes: no positions to track.
        return pattern.len() == text.len()
            && pattern.iter().zip(text).all(|(&p, &t)| if p == b'?' { t != b'/' } else { p == t });
    }
    // `at[i]`: the pattern read so far can have matched `text[..i]`.
    let (mut names, mut paths);
    let at: &mut [bool] = if text.len() < 256 {
        names = [false; 256];
        &mut names[..=text.len()]
    } else {
        paths = vec![false; text.len() + 1];
        &mut paths
    };
    at[0] = true;
    let mut rest = pattern;
    while let Some((&first, tail)) = rest.split_first() {
        match first {
            b'*' if tail.first() == Some(&b'*') => {
                // Any run of bytes: every position from the first reachable one on.
                if let Some(from) = at.iter().position(|&reached| reached) {
                    at[from..].fill(true);
                }
                rest = &tail[1..];
                continue;
            }
            b'*' => {
                // Any run of bytes but `/`: from each reachable position up to the next `/`.
                let mut running = false;
                for i in 0..at.len() {
                    running |= at[i];
                    at[i] = running;
                    if i < text.len() && text[i] == b'/' {
                        running = false;
                    }
                }
            }
            c => {
                // One byte: each reachable position moves one on, if the byte matches.
                for i in (0..at.len()).rev() {
                    at[i] = i > 0 && at[i - 1] && if c == b'?' { text[i - 1] != b'/' } else { text[i - 1] == c };
                }
            }
        }
        if !at.contains(&true) {
            return false;
        }
        rest = tail;
    }
    at[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The automaton against the plain recursive definition, on every short pattern and text
    /// over `a`, `/`, `*`, `?`; and a pattern that backtracking needs minutes for.
    #[test]
    fn glob_matches_as_the_definition_says_in_polynomial_time() {
        fn defined(pattern: &[u8], text: &[u8]) -> bool {
            match pattern {
                [] => text.is_empty(),
                [b'*', b'*', rest @ ..] => (0..=text.len()).any(|i| defined(rest, &text[i..])),
                [b'*', rest @ ..] => {
                    let limit = text.iter().position(|&b| b == b'/').unwrap_or(text.len());
                    (0..=limit).any(|i| defined(rest, &text[i..]))
                }
                [b'?', rest @ ..] => matches!(text.first(), Some(&c) if c != b'/') && defined(rest, &text[1..]),
                [c, rest @ ..] => text.first() == Some(c) && defined(rest, &text[1..]),
            }
        }
        fn all(alphabet: &[u8], up_to: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..up_to {
                last = last
                    .iter()
                    .flat_map(|s: &Vec<u8>| alphabet.iter().map(move |&c| [s.as_slice(), &[c]].concat()))
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let texts = all(b"ab/", 5);
        for pattern in all(b"a/*?", 5) {
            for text in &texts {
                assert_eq!(glob(&pattern, text), defined(&pattern, text), "{:?} on {:?}", pattern, text);
            }
        }
        let name = vec![b'a'; 250];
        let started = std::time::Instant::now();
        assert!(!glob(b"*a*a*a*a*a*a*a*b", &name));
        assert!(glob(b"*a*a*a*a*a*a*a*", &name));
        assert!(started.elapsed() < std::time::Duration::from_millis(100), "{:?}", started.elapsed());
    }

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

    /// Every pattern `never_matches` refuses matches no path indeed, and the ones it accepts do
    /// match one.
    #[test]
    fn patterns_that_can_never_match_are_told_apart() {
        let paths = ["/srv/app/logs", "/srv/app/logs/x.log", "/a", "/x/srv/app/logs"];
        let matches_some = |p: &str| paths.iter().any(|path| Excludes::new(&[p.into()]).excludes(Path::new(path)));
        for never in [
            "srv/app/logs",
            "./logs",
            "?srv/app",
            "*srv/app/logs",
            "",
            "/",
            "//",
            "/srv//app",
            "/srv/./app",
            "..",
            "/srv/../a",
        ] {
            assert!(never_matches(never).is_some(), "{never:?} is refused");
            assert!(!matches_some(never), "{never:?} indeed matches nothing");
        }
        for can in
            ["/srv/app/logs", "/srv/app/logs/", "**/srv/app/logs", "*/a", "logs", "*.log", "/srv/**", "**/logs/*"]
        {
            assert!(never_matches(can).is_none(), "{can:?} is accepted");
            assert!(matches_some(can), "{can:?} matches");
        }
        let reason = never_matches("srv/app/logs").unwrap();
        assert!(reason.contains("\"/srv/app/logs\"") && reason.contains("\"**/srv/app/logs\""), "{reason}");
        assert!(never_matches("./logs/x").unwrap().contains("\"/logs/x\""));
    }

    #[test]
    fn exclude_files_skip_comments_and_blank_lines() {
        let path = std::env::temp_dir().join(format!("cairn-exclude-file-{}", std::process::id()));
        std::fs::write(&path, "# caches\n\n  *.log  \n/srv/tmp\r\n\t# indented comment\nnode_modules\n").unwrap();
        assert_eq!(read_file(&path).unwrap(), ["*.log", "/srv/tmp", "node_modules"]);
        std::fs::write(&path, "*.log\nsrv/app/logs\n").unwrap();
        let error = read_file(&path).unwrap_err().to_string();
        assert!(error.contains("line 2") && error.contains("\"srv/app/logs\" can never match"), "{error}");
        std::fs::write(&path, b"*.log\n\xff\n").unwrap();
        assert!(read_file(&path).unwrap_err().to_string().contains("line 2: not UTF-8 text"));
        std::fs::remove_file(&path).unwrap();
        assert!(read_file(&path).unwrap_err().to_string().starts_with("cannot read exclude file"));
    }
}
