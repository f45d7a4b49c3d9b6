//! `kind = "command"` sources: a command whose standard output is backed up as one file (a
//! database dump), run by `cairn run` as `cairn snapshot --stdin-from-command`. Its keys are
//! `command` (run with `sh -c` in the config's directory, as hooks are) and `filename` (the
//! file's name in the snapshot, by default the source's name); it has no `paths` or `exclude`.

use toml_edit::TableLike;

use super::{first_key_span, Parser, SourceKind};

/// What a command source runs and what its output is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSource {
    /// The shell command line (`sh -c`).
    pub line: String,
    /// The file's name in the snapshot: one path component.
    pub filename: String,
}

impl Parser<'_> {
    /// The command of a `kind = "command"` source (reporting a missing `command`, a bad
    /// `filename`, and `paths` or `exclude`, which it has no use for); for the other kinds,
    /// `None`, reporting `command` or `filename` given to them.
    pub(super) fn command_source(
        &mut self,
        table: &dyn TableLike,
        what: &str,
        kind: SourceKind,
        name: Option<&str>,
    ) -> Option<CommandSource> {
        if kind != SourceKind::Command {
            for key in ["command", "filename"] {
                if table.get(key).is_some() {
                    let message = format!("`{key}` in {what} belongs to a `kind = \"command\"` source");
                    self.problem(Self::key_span(table, key), message);
                }
            }
            return None;
        }
        for key in ["paths", "exclude"].into_iter().chain(super::walk::KEYS) {
            if table.get(key).is_some() {
                let message =
                    format!("`{key}` in {what}: a `kind = \"command\"` source backs up its command's output, no files");
                self.problem(Self::key_span(table, key), message);
            }
        }
        if table.get("command").is_none() {
            self.problem(first_key_span(table), format!("{what} needs `command` (kind = \"command\")"));
        }
        let line = self.string(table, "command", what);
        if line.as_deref().is_some_and(|l| l.trim().is_empty()) {
            self.problem(Self::key_span(table, "command"), format!("`command` in {what} is empty"));
        }
        let filename = match self.string(table, "filename", what) {
            Some(filename) => filename,
            None => name?.to_string(),
        };
        if let Err(e) = crate::backup::stream::check_filename(&filename) {
            let message = format!("`filename` in {what}: {}", e.to_string().replace("--stdin-filename ", ""));
            let span = Self::key_span(table, "filename").or_else(|| Self::key_span(table, "name"));
            self.problem(span, message);
        }
        Some(CommandSource { line: line?, filename })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::run_config::parse;

    fn problems(text: &str) -> Vec<String> {
        parse(text, Path::new("/")).1.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_command_source_is_read_and_its_mistakes_named() {
        let text = "[[source]]\nname = \"pg\"\nkind = \"command\"\ncommand = \"pg_dump app\"\nfilename = \"app.sql\"\n\n[[source]]\nname = \"dump\"\nkind = \"command\"\ncommand = \"sqlite3 a.db .dump\"\n";
        let (config, found) = parse(text, Path::new("/etc/cairn"));
        assert!(found.is_empty(), "{found:?}");
        let command = config.sources[0].command.as_ref().unwrap();
        assert_eq!((command.line.as_str(), command.filename.as_str()), ("pg_dump app", "app.sql"));
        assert_eq!(config.sources[1].command.as_ref().unwrap().filename, "dump", "the name by default");
        assert!(config.sources[0].paths.is_empty());
        assert_eq!(
            problems("[[source]]\nname = \"pg\"\nkind = \"command\"\npaths = [\"/\"]\nexclude = [\"x\"]\nfilename = \"a/b\"\nexclude_caches = true\n"),
            vec![
                "line 2: [[source]] number 1 needs `command` (kind = \"command\")",
                "line 4: `paths` in [[source]] number 1: a `kind = \"command\"` source backs up its command's output, no files",
                "line 5: `exclude` in [[source]] number 1: a `kind = \"command\"` source backs up its command's output, no files",
                "line 6: `filename` in [[source]] number 1: \"a/b\" holds a `/`: give a file name, not a path",
                "line 7: `exclude_caches` in [[source]] number 1: a `kind = \"command\"` source backs up its command's output, no files",
            ]
        );
        assert_eq!(
            problems("[[source]]\nname = \"t\"\npaths = [\"/\"]\ncommand = \"true\"\n"),
            vec!["line 4: `command` in [[source]] number 1 belongs to a `kind = \"command\"` source"]
        );
        assert_eq!(
            problems("[[source]]\nname = \"t\"\nkind = \"command\"\ncommand = \" \"\n"),
            vec!["line 4: `command` in [[source]] number 1 is empty"]
        );
        // The name as the file name must be one too.
        assert_eq!(
            problems("[[source]]\nname = \"..\"\nkind = \"command\"\ncommand = \"true\"\n"),
            vec!["line 2: `filename` in [[source]] number 1: \"..\" is not a file name"]
        );
    }
}
