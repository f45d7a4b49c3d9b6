//! The `cairn run` config file (TOML): the repository, offsite copies, sources with their hooks
//! and retention, the drill policy, the disk guard. Parsed by hand over `toml_edit`'s document so
//! that every problem is reported at once, each with its line: an unknown key (with the key it
//! probably meant), a value of the wrong type, a missing required key, a path that does not
//! exist. `cairn config example` prints [`EXAMPLE`], which a test keeps valid.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Item, Key, TableLike, Value};

use crate::clock::parse_duration;
use crate::disk::MinFree;
use crate::retention::Policy;

mod command;
mod walk;
pub use command::CommandSource;
pub use walk::WalkConfig;

/// The commented example printed by `cairn config example`.
pub const EXAMPLE: &str = include_str!("../contrib/cairn.example.toml");

#[derive(Debug, Default)]
pub struct Config {
    pub path: PathBuf,
    /// The repository (a path or URL); `None` for the default local one.
    pub repository: Option<String>,
    /// Whether the repository may be plain.
    pub encryption: Encryption,
    /// Scratch space for drills.
    pub temp_dir: Option<PathBuf>,
    pub min_free: Option<MinFree>,
    pub cost_per_gib_month: Option<f64>,
    /// Retention for sources without their own.
    pub retention: Option<Policy>,
    pub sources: Vec<SourceConfig>,
    pub offsite: Vec<OffsiteConfig>,
    pub drill: Option<DrillConfig>,
    /// `[check]`: the data read back on a rotation.
    pub check: Option<CheckConfig>,
    /// `[notify]`: who hears of each run.
    pub notify: NotifyConfig,
    /// `[serve]`: how `cairn serve` listens, whom it lets in, where restores may write.
    pub serve: ServeConfig,
}

/// The `[serve]` table; `cairn serve`'s flags beat its keys.
#[derive(Debug, Default, Clone)]
pub struct ServeConfig {
    pub listen: Option<std::net::SocketAddr>,
    /// File of `NAME TOKEN` lines (relative to the config file).
    pub token_file: Option<PathBuf>,
    /// Directories restores through the API may write under; `None` for the sources' own.
    pub restore_roots: Option<Vec<PathBuf>>,
    /// Run the whole cycle (as `cairn run`) this often.
    pub run_every: Option<Duration>,
}

/// URLs `cairn run` calls: healthchecks-style pings when it starts, succeeds or fails, and a
/// webhook that gets its JSON summary.
#[derive(Debug, Default, Clone)]
pub struct NotifyConfig {
    pub start: Option<String>,
    pub success: Option<String>,
    pub failure: Option<String>,
    pub webhook: Option<String>,
}

/// The `encryption` key: what a run may create, and what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// `"aes-256-gcm"`, the default: a run creates the repository only encrypted, so only when it
    /// has a password, and reports a plain one it finds as a failed step.
    #[default]
    Required,
    /// `"none"`: a plain repository is what the config asks for; a run creates it plain.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Tree,
    Sqlite,
    /// A command's output, stored as one file ([`CommandSource`]).
    Command,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<String>,
    /// Other file systems, cache and marked directories, exclude files.
    pub walk: WalkConfig,
    pub tags: Vec<String>,
    /// Shell commands run before and after the snapshot (`sh -c`).
    pub before: Option<String>,
    pub after: Option<String>,
    pub retention: Option<Policy>,
    /// What a `kind = "command"` source runs; `None` for the other kinds.
    pub command: Option<CommandSource>,
}

#[derive(Debug)]
pub struct OffsiteConfig {
    pub name: String,
    pub repository: String,
    /// Whether a run may let `sync` create this destination plain (without a password).
    pub encryption: Encryption,
    /// The destination's own retention (applied by `sync --prune`).
    pub retention: Option<Policy>,
}

#[derive(Debug)]
pub struct DrillConfig {
    /// A drill is due when the source's last good drill is older than this.
    pub every: Duration,
    /// Sources to drill; empty for all.
    pub sources: Vec<String>,
    /// `local`, or the name of an offsite repository.
    pub repository: String,
}

#[derive(Debug)]
pub struct CheckConfig {
    /// Every pack is read back within this many days: each run reads part `k` of this many
    /// (`check --read-data-subset k/N`, `k` the day's number modulo `N`, plus one).
    pub read_data_days: u32,
}

impl CheckConfig {
    /// The part of the rotation that the day of `now_ms` reads: `k/N`.
    pub fn part(&self, now_ms: i64) -> String {
        let day = now_ms.div_euclid(86_400_000);
        format!("{}/{}", day.rem_euclid(i64::from(self.read_data_days)) + 1, self.read_data_days)
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
    /// A problem of one source that its own step meets again and fails on (a path that does not
    /// exist now, an exclude pattern that can never match): `cairn run` warns and still runs the
    /// other sources, so one source's mistake never stops the backups of the rest.
    pub source_only: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The default config file: `$XDG_CONFIG_HOME/cairn/config.toml`, or `~/.config/cairn/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    Some(crate::repository::xdg_base("XDG_CONFIG_HOME", ".config")?.join("cairn").join("config.toml"))
}

/// Reads and checks a config file. Relative paths in it are relative to the file's directory,
/// and come out absolute, so they name the same places whatever the working directory of the
/// processes they are handed to (a run's steps, its hooks) and wherever the file was named from.
pub fn load(path: &Path) -> Result<(Config, Vec<Problem>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let path = std::path::absolute(path).map_err(|e| format!("cannot resolve config {}: {e}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let (mut config, problems) = parse(&text, &base);
    config.path = path;
    Ok((config, problems))
}

const RETENTION_KEYS: [&str; 8] = [
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
    "keep_tags",
];
const TOP_KEYS: [&str; 12] = [
    "repository",
    "encryption",
    "temp_dir",
    "min_free",
    "cost_per_gib_month",
    "retention",
    "source",
    "offsite",
    "drill",
    "check",
    "notify",
    "serve",
];
const SOURCE_KEYS: [&str; 10] =
    ["name", "kind", "paths", "exclude", "tags", "before", "after", "retention", "command", "filename"];
const OFFSITE_KEYS: [&str; 4] = ["name", "repository", "encryption", "retention"];
const DRILL_KEYS: [&str; 3] = ["every", "sources", "repository"];
const CHECK_KEYS: [&str; 1] = ["read_data_days"];
const NOTIFY_KEYS: [&str; 4] = ["start", "success", "failure", "webhook"];
const SERVE_KEYS: [&str; 4] = ["listen", "token_file", "restore_roots", "run_every"];

/// Parses config text; `base` resolves relative paths. Returns what could be read and every
/// problem found.
pub fn parse(text: &str, base: &Path) -> (Config, Vec<Problem>) {
    let mut p = Parser { text, base, problems: Vec::new() };
    let config = match toml_edit::Document::parse(text) {
        Ok(doc) => p.config(doc.as_table()),
        Err(e) => {
            let line = e.span().map_or(1, |s| p.line(s.start));
            p.problems.push(Problem { line, message: e.message().to_string(), source_only: false });
            Config::default()
        }
    };
    let mut problems = p.problems;
    problems.sort_by_key(|p| p.line);
    (config, problems)
}

struct Parser<'a> {
    text: &'a str,
    base: &'a Path,
    problems: Vec<Problem>,
}

impl Parser<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn problem(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        let line = span.map_or(1, |s| self.line(s.start));
        self.problems.push(Problem { line, message, source_only: false });
    }

    /// A problem that fails only its source's step ([`Problem::source_only`]).
    fn source_problem(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        let line = span.map_or(1, |s| self.line(s.start));
        self.problems.push(Problem { line, message, source_only: true });
    }

    /// Reports keys of `table` not in `known`, suggesting the closest known key.
    fn unknown_keys(&mut self, table: &dyn TableLike, known: &[&str], what: &str) {
        for (key, _) in table.iter() {
            if known.contains(&key) {
                continue;
            }
            let span = table.get_key_value(key).and_then(|(k, _)| k.span());
            let hint = known
                .iter()
                .map(|k| (edit_distance(k, key), *k))
                .min()
                .filter(|(d, _)| *d <= 2)
                .map_or(String::new(), |(_, k)| format!(" (did you mean `{k}`?)"));
            self.problem(span, format!("unknown key `{key}` in {what}{hint}"));
        }
    }

    fn key_span(table: &dyn TableLike, key: &str) -> Option<std::ops::Range<usize>> {
        table.get_key_value(key).and_then(|(k, item): (&Key, &Item)| item.span().or_else(|| k.span()))
    }

    fn string(&mut self, table: &dyn TableLike, key: &str, what: &str) -> Option<String> {
        let item = table.get(key)?;
        match item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let found = item.type_name();
                self.problem(Self::key_span(table, key), format!("`{key}` in {what} must be a string, not {found}"));
                None
            }
        }
    }

    fn strings(
        &mut self,
        table: &dyn TableLike,
        key: &str,
        what: &str,
    ) -> Option<Vec<(String, Option<std::ops::Range<usize>>)>> {
        let item = table.get(key)?;
        let strings: Option<Vec<_>> = item
            .as_array()
            .map(|a| {
                a.iter().map(|v: &Value| v.as_str().map(|s| (s.to_string(), v.span()))).collect::<Option<Vec<_>>>()
            })
            .unwrap_or(None);
        if strings.is_none() {
            self.problem(
                Self::key_span(table, key),
                format!("`{key}` in {what} must be an array of strings, not {}", describe(item)),
            );
        }
        strings
    }

    /// An optional array of strings, without their places.
    fn string_list(&mut self, table: &dyn TableLike, key: &str, what: &str) -> Vec<String> {
        self.strings(table, key, what).unwrap_or_default().into_iter().map(|(s, _)| s).collect()
    }

    fn integer(&mut self, table: &dyn TableLike, key: &str, what: &str) -> Option<usize> {
        let item = table.get(key)?;
        match item.as_integer() {
            Some(n) if n >= 0 => Some(n as usize),
            _ => {
                let message = format!("`{key}` in {what} must be a whole number ≥ 0, not {}", describe(item));
                self.problem(Self::key_span(table, key), message);
                None
            }
        }
    }

    fn path(&mut self, text: &str, span: Option<std::ops::Range<usize>>, must_exist: bool) -> PathBuf {
        let path = self.base.join(text);
        if must_exist && std::fs::symlink_metadata(&path).is_err() {
            let line = span.map_or(1, |s| self.line(s.start));
            let message = format!("path {} does not exist", path.display());
            self.problems.push(Problem { line, message, source_only: true });
        }
        path
    }

    /// A repository location: an object-store URL as it is, a directory (or `file://` URL)
    /// relative to the config file.
    fn location(&self, text: String) -> String {
        match crate::repository::Location::parse(&text).path() {
            Some(path) => self.base.join(path).display().to_string(),
            None => text,
        }
    }

    fn table<'t>(&mut self, parent: &'t dyn TableLike, key: &str, what: &str) -> Option<&'t dyn TableLike> {
        let item = parent.get(key)?;
        let table = item.as_table_like();
        if table.is_none() {
            self.problem(
                Self::key_span(parent, key),
                format!("`{key}` in {what} must be a table, not {}", describe(item)),
            );
        }
        table
    }

    fn config(&mut self, root: &dyn TableLike) -> Config {
        self.unknown_keys(root, &TOP_KEYS, "the top level");
        let repository = self.string(root, "repository", "the top level").map(|r| self.location(r));
        let mut config = Config {
            repository,
            encryption: self.encryption(root, "the top level"),
            temp_dir: self.string(root, "temp_dir", "the top level").map(|t| {
                let span = Self::key_span(root, "temp_dir");
                self.path(&t, span, true)
            }),
            ..Config::default()
        };
        if let Some(text) = self.string(root, "min_free", "the top level") {
            match MinFree::parse(&text) {
                Ok(min) => config.min_free = Some(min),
                Err(e) => self.problem(Self::key_span(root, "min_free"), e),
            }
        }
        if let Some(item) = root.get("cost_per_gib_month") {
            match item.as_float().or_else(|| item.as_integer().map(|i| i as f64)) {
                Some(cost) if cost >= 0.0 => config.cost_per_gib_month = Some(cost),
                _ => self.problem(
                    Self::key_span(root, "cost_per_gib_month"),
                    format!("`cost_per_gib_month` must be a number ≥ 0, not {}", describe(item)),
                ),
            }
        }
        config.retention = self.table(root, "retention", "the top level").map(|t| self.retention(t, "[retention]"));
        for (i, table) in self.array_of_tables(root, "source").into_iter().enumerate() {
            if let Some(source) = self.source(table, i) {
                config.sources.push(source);
            }
        }
        let mut names = HashSet::new();
        for (i, source) in config.sources.iter().enumerate() {
            if !names.insert(source.name.clone()) {
                let span = self.array_of_tables(root, "source").get(i).and_then(|t| Self::key_span(*t, "name"));
                self.problem(span, format!("two sources are named `{}`", source.name));
            }
        }
        for table in self.array_of_tables(root, "offsite") {
            let what = "[[offsite]]";
            self.unknown_keys(table, &OFFSITE_KEYS, what);
            let name = self.required_string(table, "name", what);
            let repository = self.required_string(table, "repository", what).map(|r| self.location(r));
            let encryption = self.encryption(table, what);
            let retention = self.table(table, "retention", what).map(|t| self.retention(t, "[offsite.retention]"));
            if let (Some(name), Some(repository)) = (name, repository) {
                config.offsite.push(OffsiteConfig { name, repository, encryption, retention });
            }
        }
        if let Some(table) = self.table(root, "drill", "the top level") {
            config.drill = Some(self.drill(table, &config));
        }
        if let Some(table) = self.table(root, "notify", "the top level") {
            self.unknown_keys(table, &NOTIFY_KEYS, "[notify]");
            let mut url = |key: &str| {
                let url = self.string(table, key, "[notify]")?;
                if url.starts_with("http://") || url.starts_with("https://") {
                    return Some(url);
                }
                self.problem(
                    Self::key_span(table, key),
                    format!("`{key}` in [notify] must be an http:// or https:// URL"),
                );
                None
            };
            config.notify = NotifyConfig {
                start: url("start"),
                success: url("success"),
                failure: url("failure"),
                webhook: url("webhook"),
            };
        }
        if let Some(table) = self.table(root, "serve", "the top level") {
            config.serve = self.serve(table);
        }
        if let Some(table) = self.table(root, "check", "the top level") {
            self.unknown_keys(table, &CHECK_KEYS, "[check]");
            match self.integer(table, "read_data_days", "[check]") {
                Some(days) if (1..=366).contains(&days) => {
                    config.check = Some(CheckConfig { read_data_days: days as u32 })
                }
                Some(_) => self.problem(
                    Self::key_span(table, "read_data_days"),
                    "`read_data_days` in [check] must be 1 to 366".into(),
                ),
                None if table.get("read_data_days").is_none() => {
                    self.problem(first_key_span(table), "[check] needs `read_data_days`".into())
                }
                None => {}
            }
        }
        config
    }

    fn serve(&mut self, table: &dyn TableLike) -> ServeConfig {
        let what = "[serve]";
        self.unknown_keys(table, &SERVE_KEYS, what);
        let listen = self.string(table, "listen", what).and_then(|text| match text.parse() {
            Ok(address) => Some(address),
            Err(_) => {
                let message = format!("`listen` in [serve] must be an address and port (127.0.0.1:8750), not {text:?}");
                self.problem(Self::key_span(table, "listen"), message);
                None
            }
        });
        let token_file = self.string(table, "token_file", what).map(|file| self.base.join(file));
        let restore_roots = self
            .strings(table, "restore_roots", what)
            .map(|roots| roots.into_iter().map(|(root, span)| self.path(&root, span, false)).collect::<Vec<_>>());
        let run_every = self.string(table, "run_every", what).and_then(|text| match parse_duration(&text) {
            Ok(every) if every >= Duration::from_secs(1) => Some(every),
            Ok(_) => {
                self.problem(Self::key_span(table, "run_every"), "`run_every` in [serve] must be 1s or more".into());
                None
            }
            Err(e) => {
                self.problem(Self::key_span(table, "run_every"), format!("`run_every` in [serve]: {e}"));
                None
            }
        });
        ServeConfig { listen, token_file, restore_roots, run_every }
    }

    fn encryption(&mut self, table: &dyn TableLike, what: &str) -> Encryption {
        match self.string(table, "encryption", what).as_deref() {
            None | Some("aes-256-gcm") => Encryption::Required,
            Some("none") => Encryption::None,
            Some(other) => {
                self.problem(
                    Self::key_span(table, "encryption"),
                    format!("`encryption` in {what} must be \"aes-256-gcm\" or \"none\", not {other:?}"),
                );
                Encryption::Required
            }
        }
    }

    fn array_of_tables<'t>(&mut self, root: &'t dyn TableLike, key: &str) -> Vec<&'t dyn TableLike> {
        let Some(item) = root.get(key) else { return Vec::new() };
        if let Some(array) = item.as_array_of_tables() {
            return array.iter().map(|t| t as &dyn TableLike).collect();
        }
        let message = format!("`{key}` must be written as [[{key}]] tables, not {}", describe(item));
        self.problem(Self::key_span(root, key), message);
        Vec::new()
    }

    fn required_string(&mut self, table: &dyn TableLike, key: &str, what: &str) -> Option<String> {
        if table.get(key).is_none() {
            self.problem(first_key_span(table), format!("{what} needs `{key}`"));
        }
        self.string(table, key, what).filter(|s| !s.is_empty())
    }

    fn source(&mut self, table: &dyn TableLike, index: usize) -> Option<SourceConfig> {
        let what = format!("[[source]] number {}", index + 1);
        self.unknown_keys(table, &[&SOURCE_KEYS[..], &walk::KEYS[..]].concat(), &what);
        let name = self.required_string(table, "name", &what);
        if let Some(name) = &name {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                self.problem(
                    Self::key_span(table, "name"),
                    format!("source name `{name}`: use letters, digits, `.`, `_` and `-`"),
                );
            }
        }
        let kind = match self.string(table, "kind", &what).as_deref() {
            None | Some("tree") => SourceKind::Tree,
            Some("sqlite") => SourceKind::Sqlite,
            Some("command") => SourceKind::Command,
            Some(other) => {
                self.problem(
                    Self::key_span(table, "kind"),
                    format!("`kind` must be \"tree\", \"sqlite\" or \"command\", not {other:?}"),
                );
                SourceKind::Tree
            }
        };
        if table.get("paths").is_none() && kind != SourceKind::Command {
            self.problem(first_key_span(table), format!("{what} needs `paths`"));
        }
        let paths: Vec<PathBuf> = self
            .strings(table, "paths", &what)
            .unwrap_or_default()
            .into_iter()
            .map(|(text, span)| self.path(&text, span, true))
            .collect();
        let excludes = self.string_list(table, "exclude", &what);
        let walk = self.walk(table, &what);
        let tags = self.string_list(table, "tags", &what);
        let before = self.string(table, "before", &what);
        let after = self.string(table, "after", &what);
        let retention = self.table(table, "retention", &what).map(|t| self.retention(t, "[source.retention]"));
        let command = self.command_source(table, &what, kind, name.as_deref());
        Some(SourceConfig { name: name?, kind, paths, excludes, walk, tags, before, after, retention, command })
    }

    fn retention(&mut self, table: &dyn TableLike, what: &str) -> Policy {
        self.unknown_keys(table, &RETENTION_KEYS, what);
        let mut policy = Policy {
            last: self.integer(table, "keep_last", what).unwrap_or(0),
            hourly: self.integer(table, "keep_hourly", what).unwrap_or(0),
            daily: self.integer(table, "keep_daily", what).unwrap_or(0),
            weekly: self.integer(table, "keep_weekly", what).unwrap_or(0),
            monthly: self.integer(table, "keep_monthly", what).unwrap_or(0),
            yearly: self.integer(table, "keep_yearly", what).unwrap_or(0),
            within: None,
            tags: self.string_list(table, "keep_tags", what),
        };
        if let Some(text) = self.string(table, "keep_within", what) {
            match parse_duration(&text) {
                Ok(d) => policy.within = Some(d),
                Err(e) => self.problem(Self::key_span(table, "keep_within"), e),
            }
        }
        if policy.is_empty() {
            self.problem(first_key_span(table), format!("{what} keeps nothing: give at least one keep_* option"));
        }
        policy
    }

    fn drill(&mut self, table: &dyn TableLike, config: &Config) -> DrillConfig {
        let what = "[drill]";
        self.unknown_keys(table, &DRILL_KEYS, what);
        let every = match self.string(table, "every", what) {
            Some(text) => parse_duration(&text).unwrap_or_else(|e| {
                self.problem(Self::key_span(table, "every"), e);
                Duration::from_secs(7 * 86_400)
            }),
            None => Duration::from_secs(7 * 86_400),
        };
        let sources: Vec<String> = self.string_list(table, "sources", what);
        for name in &sources {
            if !config.sources.iter().any(|s| &s.name == name) {
                self.problem(
                    Self::key_span(table, "sources"),
                    format!("[drill] names source `{name}`, which is not defined"),
                );
            }
        }
        let repository = self.string(table, "repository", what).unwrap_or_else(|| "local".into());
        if repository != "local" && !config.offsite.iter().any(|o| o.name == repository) {
            self.problem(
                Self::key_span(table, "repository"),
                format!("[drill] repository must be \"local\" or the name of an [[offsite]], not {repository:?}"),
            );
        }
        DrillConfig { every, sources, repository }
    }
}

/// Where a table's first key is: the line to name for what the table lacks.
fn first_key_span(table: &dyn TableLike) -> Option<std::ops::Range<usize>> {
    table.iter().next().and_then(|(k, _)| table.get_key_value(k)).and_then(|(k, _)| k.span())
}

fn describe(item: &Item) -> String {
    match item {
        Item::Value(Value::String(s)) => format!("the string {:?}", s.value()),
        Item::Value(Value::Integer(i)) => format!("the integer {}", i.value()),
        Item::Value(Value::Float(f)) => format!("the number {}", f.value()),
        Item::Value(Value::Boolean(b)) => format!("the boolean {}", b.value()),
        other => format!("a {}", other.type_name()),
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text, Path::new("/")).1.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_example_is_valid() {
        let dir = std::env::temp_dir();
        let text = EXAMPLE
            .replace("/srv/", &format!("{}/", dir.display()))
            .replace("/var/lib/", &format!("{}/", dir.display()));
        let (config, found) = parse(&text, &dir);
        let real: Vec<_> = found.iter().filter(|p| !p.source_only).collect();
        assert!(real.is_empty(), "{real:?}");
        assert!(config.sources.len() >= 2 && !config.offsite.is_empty() && config.drill.is_some());
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "repository = \"/tmp\"\n\n[[source]]\nname = \"a\"\npaths = [\"/\"]\nexclude = 5\n\n[[source]]\nname = \"b\"\npaths = [\"/no/such/path\"]\n[source.retention]\nkeep_dayly = 3\nkeep_last = \"two\"\n";
        let found = problems(text);
        assert_eq!(
            found,
            vec![
                "line 6: `exclude` in [[source]] number 1 must be an array of strings, not the integer 5",
                "line 10: path /no/such/path does not exist",
                "line 12: unknown key `keep_dayly` in [source.retention] (did you mean `keep_daily`?)",
                "line 12: [source.retention] keeps nothing: give at least one keep_* option",
                "line 13: `keep_last` in [source.retention] must be a whole number ≥ 0, not the string \"two\"",
            ]
        );
    }

    #[test]
    fn the_serve_table_is_read_and_its_mistakes_named() {
        let text = "[serve]\nlisten = \"127.0.0.1:9000\"\ntoken_file = \"tokens\"\nrestore_roots = [\"/srv\"]\nrun_every = \"1d\"\n";
        let (config, found) = parse(text, Path::new("/etc/cairn"));
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(config.serve.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(config.serve.token_file, Some(PathBuf::from("/etc/cairn/tokens")));
        assert_eq!(config.serve.restore_roots, Some(vec![PathBuf::from("/srv")]));
        assert_eq!(config.serve.run_every, Some(Duration::from_secs(86_400)));
        assert_eq!(
            problems("[serve]\nlisten = \"localhost\"\nrun_every = \"0\"\nport = 1\n"),
            vec![
                "line 2: `listen` in [serve] must be an address and port (127.0.0.1:8750), not \"localhost\"",
                "line 3: `run_every` in [serve] must be 1s or more",
                "line 4: unknown key `port` in [serve]",
            ]
        );
    }

    #[test]
    fn encryption_is_required_unless_the_config_says_none() {
        let text = "[[offsite]]\nname = \"o\"\nrepository = \"/o\"\nencryption = \"none\"\n";
        let (config, found) = parse(text, Path::new("/"));
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(config.encryption, Encryption::Required);
        assert_eq!(config.offsite[0].encryption, Encryption::None);
        assert_eq!(parse("encryption = \"none\"\n", Path::new("/")).0.encryption, Encryption::None);
        assert_eq!(
            problems("encryption = \"off\"\n"),
            vec!["line 1: `encryption` in the top level must be \"aes-256-gcm\" or \"none\", not \"off\""]
        );
    }

    #[test]
    fn syntax_errors_and_structure() {
        assert!(problems("repository = \n")[0].starts_with("line 1:"));
        assert_eq!(
            problems("[[source]]\nkind = \"tree\"\n"),
            vec!["line 2: [[source]] number 1 needs `name`", "line 2: [[source]] number 1 needs `paths`"]
        );
        assert_eq!(
            problems("source = 3\n"),
            vec!["line 1: `source` must be written as [[source]] tables, not the integer 3"]
        );
        assert_eq!(
            problems("[drill]\nrepository = \"nowhere\"\n"),
            vec!["line 2: [drill] repository must be \"local\" or the name of an [[offsite]], not \"nowhere\""]
        );
    }
}
