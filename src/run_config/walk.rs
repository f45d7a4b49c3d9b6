//! A source's keys for what its walk leaves out besides `exclude`: `one_file_system`,
//! `exclude_caches`, `exclude_if_present` and `exclude_file`, which `cairn run` passes to the
//! snapshot as the flags of the same names (src/source/walk_options.rs), and the check that
//! every `exclude` pattern can match something, reported at its line.

use std::path::PathBuf;

use toml_edit::TableLike;

use super::Parser;
use crate::source::exclude::{self, ExcludeError};

/// The source keys this module reads, besides `exclude`.
pub(super) const KEYS: [&str; 4] = ["one_file_system", "exclude_caches", "exclude_if_present", "exclude_file"];

/// What a source's walk leaves out besides its `exclude` patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkConfig {
    pub one_file_system: bool,
    pub exclude_caches: bool,
    pub exclude_if_present: Vec<String>,
    /// Files of exclude patterns, relative to the config file's directory (made absolute).
    pub exclude_files: Vec<PathBuf>,
}

impl WalkConfig {
    /// The `cairn snapshot` flags that say the same.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.one_file_system {
            args.push("--one-file-system".to_string());
        }
        if self.exclude_caches {
            args.push("--exclude-caches".to_string());
        }
        for name in &self.exclude_if_present {
            args.extend(["--exclude-if-present".to_string(), name.clone()]);
        }
        for file in &self.exclude_files {
            args.extend(["--exclude-file".to_string(), file.display().to_string()]);
        }
        args
    }
}

impl Parser<'_> {
    /// The walk keys of the source `table` (`what` names it), and a problem for each `exclude`
    /// pattern, or pattern of an existing `exclude_file`, that can never match.
    pub(super) fn walk(&mut self, table: &dyn TableLike, what: &str) -> WalkConfig {
        self.unmatchable_excludes(table);
        let exclude_if_present = self.strings(table, "exclude_if_present", what).unwrap_or_default();
        for (name, span) in &exclude_if_present {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                let message = format!("`exclude_if_present` holds {name:?}: give the name of a file, not a path");
                self.problem(span.clone(), message);
            }
        }
        let exclude_files: Vec<PathBuf> = self
            .strings(table, "exclude_file", what)
            .unwrap_or_default()
            .into_iter()
            .map(|(text, span)| {
                let path = self.path(&text, span.clone(), true);
                // A file that cannot be read now is the machine's problem, said by the run.
                if let Err(e @ (ExcludeError::NeverMatchesInFile { .. } | ExcludeError::NotText { .. })) =
                    exclude::read_file(&path)
                {
                    self.source_problem(span, e.to_string());
                }
                path
            })
            .collect();
        WalkConfig {
            one_file_system: self.boolean(table, "one_file_system", what),
            exclude_caches: self.boolean(table, "exclude_caches", what),
            exclude_if_present: exclude_if_present.into_iter().map(|(name, _)| name).collect(),
            exclude_files,
        }
    }

    /// Reports each pattern of `exclude` that can never match; a value of the wrong type is
    /// reported where the patterns are read.
    fn unmatchable_excludes(&mut self, table: &dyn TableLike) {
        let Some(array) = table.get("exclude").and_then(|item| item.as_array()) else { return };
        for value in array.iter() {
            if let Some(reason) = value.as_str().and_then(exclude::never_matches) {
                let pattern = value.as_str().unwrap_or_default();
                let message = format!("exclude pattern {pattern:?} can never match: {reason}");
                self.source_problem(value.span(), message);
            }
        }
    }

    /// An optional boolean key, `false` when absent.
    fn boolean(&mut self, table: &dyn TableLike, key: &str, what: &str) -> bool {
        let Some(item) = table.get(key) else { return false };
        match item.as_bool() {
            Some(value) => value,
            None => {
                let message = format!("`{key}` in {what} must be true or false, not {}", super::describe(item));
                self.problem(Self::key_span(table, key), message);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn walk_keys_are_read_and_their_mistakes_named() {
        let text = "[[source]]\nname = \"a\"\npaths = [\"/\"]\none_file_system = true\nexclude_caches = true\n\
                    exclude_if_present = [\".nobackup\"]\nexclude_file = [\"excludes.txt\"]\n";
        let (config, found) = parse(text, std::path::Path::new("/etc/cairn"));
        assert_eq!(found.iter().filter(|p| !p.source_only).count(), 0, "{found:?}");
        let walk = &config.sources[0].walk;
        assert_eq!(
            walk.args(),
            [
                "--one-file-system",
                "--exclude-caches",
                "--exclude-if-present",
                ".nobackup",
                "--exclude-file",
                "/etc/cairn/excludes.txt"
            ]
        );
        let text = "[[source]]\nname = \"a\"\npaths = [\"/\"]\nexclude = [\"*.log\",\n  \"srv/app/logs\"]\n\
                    one_file_system = \"yes\"\nexclude_if_present = [\"a/b\"]\nexclude_cache = true\n";
        let problems: Vec<String> = parse(text, std::path::Path::new("/")).1.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 5: exclude pattern \"srv/app/logs\" can never match"), "{problems:?}");
        assert!(problems[0].contains("\"/srv/app/logs\"") && problems[0].contains("\"**/srv/app/logs\""));
        assert_eq!(
            problems[1],
            "line 6: `one_file_system` in [[source]] number 1 must be true or false, not the string \"yes\""
        );
        assert!(problems[2].starts_with("line 7: `exclude_if_present` holds \"a/b\""), "{problems:?}");
        assert_eq!(
            problems[3],
            "line 8: unknown key `exclude_cache` in [[source]] number 1 (did you mean `exclude_caches`?)"
        );

        // The patterns of an exclude file are checked too, at the line that names it.
        let dir = std::env::temp_dir().join(format!("cairn-config-walk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("excludes.txt"), "# ok\n*.log\nsrv/app/logs\n").unwrap();
        let text = "[[source]]\nname = \"a\"\npaths = [\"/\"]\nexclude_file = [\"excludes.txt\"]\n";
        let problems: Vec<String> = parse(text, &dir).1.iter().map(ToString::to_string).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("line 4: exclude file "), "{problems:?}");
        assert!(problems[0].contains("line 3: pattern \"srv/app/logs\""), "{problems:?}");
    }
}
