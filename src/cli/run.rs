//! `cairn run`: the scheduled cycle from one config file. For each source: its `before` hook, a
//! snapshot, its `after` hook; then retention per source (once a `prune --dry-run` found the
//! repository whole) and one prune; then a sync to each
//! offsite repository; then the drills that are due. Each step is this same binary run as a
//! child process, so it writes the audit record it writes when run by hand, and one failing step
//! (a vanished path, a failing hook, an unreachable server) fails only itself.
//!
//! Before the first step the run creates the repository if it is missing: encrypted with the
//! run's password, plain only when the config says `encryption = "none"`, and otherwise not at
//! all (store-format/config.md, "Who creates it"); a location it cannot check fails the run.
//! Its steps never create it (`--no-create`): one that vanished since fails its steps. The
//! children and hooks get the run's password source in their environment, and no other
//! ([`super::password::Source::pass_to`]), and the run's own lock wait and cache
//! ([`super::Context::pass_to`]): a flag given to the run beats the environment in its steps too.
//! The run lock is [`lock`]'s.

mod lock;
mod notify;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{Context, EXIT_INCOMPLETE};
use cairn::audit::Run;
use cairn::format::audit::Outcome;
use cairn::repository::{Location, NewKeys, Repository};
use cairn::retention::Policy;
use cairn::run_config::{Config, Encryption, OffsiteConfig, SourceConfig, SourceKind};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file (default: $XDG_CONFIG_HOME/cairn/config.toml); see `cairn config example`
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Step {
    pub(super) step: String,
    pub(super) outcome: Outcome,
    pub(super) seconds: f64,
    /// The step's output (its summary line, or its error).
    pub(super) output: Vec<String>,
}

/// Why the retention steps did not run.
const NOT_WHOLE: &str = "not run: the retention check found the repository not whole, so nothing was forgotten \
    or deleted (its error says what to do)";

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let path = super::config::path(args.config)?;
    let (config, problems) = cairn::run_config::load(&path).map_err(anyhow::Error::msg)?;
    let (paths, fatal): (Vec<_>, Vec<_>) = problems.iter().partition(|p| p.source_only);
    for problem in &fatal {
        errln!("{}:{}: {}", path.display(), problem.line, problem.message);
    }
    if !fatal.is_empty() {
        bail!("{} has {} problems (listed above): nothing was run", path.display(), fatal.len());
    }
    for problem in paths {
        errln!("warning: {}:{}: {}", path.display(), problem.line, problem.message);
    }
    let _lock = lock::RunLock::acquire(&path)?;
    let repo = context.location_with(config.repository.as_deref());
    let mut audit = Run::start("run", "");
    let mut notifier = notify::Notifier::new(&config.notify);
    notifier.on_signal();
    notifier.started(&format!("cairn run started on {}: {}", cairn::host::hostname(), config.path.display()));
    let mut cycle = Cycle::new(context, &config, repo, false);
    if let Err(e) = cycle.prepare() {
        let summary =
            serde_json::json!({ "config": config.path, "outcome": Outcome::Failed, "error": format!("{e:#}") });
        notifier.ended(false, &format!("cairn run failed before its first step: {e:#}"), &summary);
        return Err(e);
    }
    if let Ok(repo) = cycle.local() {
        super::begin_audit(&audit, repo);
    }
    let (steps, opened) = cycle.run();

    let failed = steps.iter().filter(|s| s.outcome == Outcome::Failed).count();
    let incomplete = steps.iter().filter(|s| s.outcome == Outcome::Incomplete).count();
    audit.record.errors = steps.iter().filter(|s| s.outcome == Outcome::Failed).map(|s| s.step.clone()).collect();
    let outcome = match (failed, incomplete) {
        (0, 0) => Outcome::Ok,
        (0, _) => Outcome::Incomplete,
        _ => Outcome::Failed,
    };
    let mut text = format!("cairn run: {} steps, {failed} failed, {incomplete} incomplete\n", steps.len());
    for step in steps.iter().filter(|s| s.outcome != Outcome::Ok) {
        // A step's output quotes names from backed-up trees: escaped as cairn::names shows them,
        // so that they cannot forge a line of the notification or drive a terminal reading it.
        let last = step.output.last().map_or("", |l| l.as_str());
        text.push_str(&format!(
            "{:?}: {}: {}\n",
            step.outcome,
            cairn::names::shown(step.step.as_bytes()),
            cairn::names::shown(last.as_bytes())
        ));
    }
    let summary = serde_json::json!({
        "config": config.path,
        "host": cairn::host::hostname(),
        "outcome": outcome,
        "steps": steps,
    });
    notifier.ended(outcome == Outcome::Ok, &text, &summary);
    audit.record.details =
        serde_json::json!({ "config": config.path, "steps": steps, "notify_failures": notifier.failures });
    if let Some(repo) = &opened {
        super::finish_audit(audit, repo, outcome);
    }
    if context.json {
        outln!("{}", serde_json::json!({ "config": config.path, "outcome": outcome, "steps": steps }));
    } else if !context.quiet || failed > 0 {
        outln!("cairn run: {} steps, {} failed, {} incomplete", steps.len(), failed, incomplete);
        for step in steps.iter().filter(|s| s.outcome != Outcome::Ok) {
            outln!("  {:?}: {}", step.outcome, step.step);
        }
    }
    Ok(match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Incomplete => ExitCode::from(EXIT_INCOMPLETE),
        Outcome::Failed => ExitCode::FAILURE,
    })
}

/// The steps of a run, also what `cairn serve` runs for a backup through its API.
pub(super) struct Cycle<'a> {
    context: &'a Context,
    config: &'a Config,
    repo: String,
    /// The repository, opened once it exists (an encrypted one costs a key derivation per open).
    opened: Option<Repository>,
    steps: Vec<Step>,
    /// Steps speak JSON (`cairn serve` reads the snapshot's id from it).
    child_json: bool,
}

impl<'a> Cycle<'a> {
    pub(super) fn new(context: &'a Context, config: &'a Config, repo: String, child_json: bool) -> Cycle<'a> {
        Cycle { context, config, repo, opened: None, steps: Vec::new(), child_json }
    }

    /// The hooks and snapshot of each of `sources`, as a run takes them, without the rest of
    /// the cycle.
    pub(super) fn backup(mut self, sources: &[&SourceConfig]) -> Vec<Step> {
        for source in sources {
            self.source(source);
        }
        self.steps
    }

    fn run(mut self) -> (Vec<Step>, Option<Repository>) {
        for source in &self.config.sources {
            self.source(source);
        }
        let forgets: Vec<(String, Vec<String>)> = (self.config.sources.iter())
            .filter_map(|source| {
                let policy = source.retention.as_ref().or(self.config.retention.as_ref())?;
                let mut args = vec!["forget".to_string(), "--source".into(), source.name.clone()];
                args.extend(policy_args(policy));
                Some((format!("forget {}", source.name), args))
            })
            .collect();
        if !forgets.is_empty() {
            // Anything that deletes fails closed: the prune's plan refuses a repository that is not
            // whole (a damaged or lost index file, a lost pack), and it must do so before a forget
            // step removes a snapshot, as `forget --prune` plans before it forgets.
            self.child("retention check", &self.repo.clone(), &["prune".to_string(), "--dry-run".into()]);
            let whole = self.steps.last().is_some_and(|step| step.outcome == Outcome::Ok);
            for (step, args) in forgets.into_iter().chain([("prune".to_string(), vec!["prune".to_string()])]) {
                match whole {
                    true => self.child(&step, &self.repo.clone(), &args),
                    false => self.push(step, Outcome::Failed, Instant::now(), vec![NOT_WHOLE.into()]),
                }
            }
        }
        for offsite in &self.config.offsite {
            if let Some(refusal) = self.plain_offsite_refusal(offsite) {
                let step = format!("sync to {}", offsite.name);
                self.push(step, Outcome::Failed, Instant::now(), vec![refusal]);
                continue;
            }
            let mut args = vec!["sync".to_string(), "--to".into(), offsite.repository.clone()];
            if let Some(policy) = &offsite.retention {
                args.push("--prune".into());
                args.extend(policy_args(policy));
            }
            self.child(&format!("sync to {}", offsite.name), &self.repo.clone(), &args);
        }
        self.drills();
        if let Some(check) = &self.config.check {
            // The day's part of the rotation, by this process's clock.
            let part = check.part(cairn::clock::now_ms());
            let args = ["check".to_string(), "--read-data-subset".into(), part.clone()];
            self.child(&format!("check --read-data-subset {part}"), &self.repo.clone(), &args);
        }
        self.record_stats();
        let _ = self.local();
        (self.steps, self.opened)
    }

    /// Before any step: creates the repository if it does not exist, encrypted when the run has a
    /// password and plain only when the config says `encryption = "none"`; without either it
    /// fails, with nothing created. An encrypted one without a password fails the same way,
    /// before any step. A plain repository that the config does not declare plain is backed up
    /// as usual, and reported as a failed step. A location that cannot be checked (a transient
    /// object-store error, a permission error) fails the run: whether to create is never guessed.
    pub(super) fn prepare(&mut self) -> Result<()> {
        let unknown = |e: cairn::error::Error| {
            anyhow::anyhow!(
                "cannot tell whether {} holds a repository ({e}): nothing was run, and nothing was created. Fix the location or access to it and run again",
                self.repo
            )
        };
        let backend = Location::parse(&self.repo).backend().map_err(unknown)?;
        if !backend.exists(cairn::repository::layout::CONFIG).map_err(unknown)? {
            return self.create();
        }
        let bytes = backend.get(cairn::repository::layout::CONFIG).map_err(unknown)?;
        let plain = !cairn::format::envelope::is_encrypted(&bytes);
        if !plain && !self.context.password.given() {
            // Every step would fail alike: its child has no terminal to ask on.
            bail!(
                "{} is encrypted, and this run has no password for it: nothing was run. Give it with --password-file FILE, CAIRN_PASSWORD_FILE, CAIRN_PASSWORD or --password-command",
                self.repo
            );
        }
        if plain && self.config.encryption == Encryption::Required {
            let message = format!(
                "{} is NOT encrypted, and {} does not say `encryption = \"none\"`: add that line to accept a plain repository, or sync this one to a new encrypted repository and use that",
                self.repo,
                self.config.path.display()
            );
            self.push("encryption".into(), Outcome::Failed, Instant::now(), vec![message]);
        }
        Ok(())
    }

    fn create(&mut self) -> Result<()> {
        let keys = if self.config.encryption == Encryption::None {
            NewKeys::None
        } else if self.context.password.given() {
            let passphrase = self.context.password.require(&self.repo)?;
            NewKeys::New { passphrase }
        } else {
            bail!(
                "there is no repository at {} yet, and this run has no password to encrypt one with: nothing was created. Give the password (--password-file FILE, CAIRN_PASSWORD_FILE, CAIRN_PASSWORD or --password-command), or add `encryption = \"none\"` to {} for a plain repository",
                self.repo,
                self.config.path.display()
            );
        };
        let plain = matches!(keys, NewKeys::None);
        let repo = Repository::create(&self.repo.as_str().into(), cairn::format::config::Config::new_random(), keys)
            .with_context(|| format!("creating the repository {}", self.repo))?;
        if !self.context.quiet && !self.context.json {
            let what = if plain { "a plain repository (encryption = \"none\")" } else { "an encrypted repository" };
            errln!("created {what} at {}", self.repo);
        }
        self.opened = Some(repo);
        Ok(())
    }

    /// Why the sync to `offsite` must not run: it would create the destination plain (no
    /// password reaches it) although its table does not say `encryption = "none"`.
    fn plain_offsite_refusal(&self, offsite: &OffsiteConfig) -> Option<String> {
        let to_password = std::env::var_os("CAIRN_TO_PASSWORD_FILE").is_some_and(|v| !v.is_empty());
        if offsite.encryption == Encryption::None || self.context.password.given() || to_password {
            return None;
        }
        let exists = Location::parse(&offsite.repository)
            .backend()
            .and_then(|backend| backend.exists(cairn::repository::layout::CONFIG));
        let why = match exists {
            Ok(true) => return None,
            Ok(false) => "does not exist yet".to_string(),
            Err(e) => format!("may not exist yet ({e})"),
        };
        Some(format!(
            "not synced: {} {why}, and without a password sync would create it plain. Give a password (--password-file, CAIRN_PASSWORD_FILE, CAIRN_TO_PASSWORD_FILE), or add `encryption = \"none\"` to its [[offsite]] table",
            offsite.repository
        ))
    }

    /// The repository of the config, opened on first use (it may not exist before the first
    /// snapshot; a failure to open is not kept).
    fn local(&mut self) -> Result<&Repository> {
        if self.opened.is_none() {
            self.opened = Some(self.context.open_at(&self.repo)?);
        }
        Ok(self.opened.as_ref().expect("opened above"))
    }

    /// Hooks and the snapshot of one source. `after` runs whenever `before` ran, so a service
    /// paused by `before` is resumed even when the snapshot fails.
    fn source(&mut self, source: &SourceConfig) {
        let hooks_ok = match &source.before {
            Some(before) => self.hook(source, "before", before),
            None => true,
        };
        if hooks_ok {
            let mut args = vec!["snapshot".to_string(), "--source".into(), source.name.clone()];
            for tag in &source.tags {
                args.extend(["--tag".into(), tag.clone()]);
            }
            for exclude in &source.excludes {
                args.extend(["--exclude".into(), exclude.clone()]);
            }
            args.extend(source.walk.args());
            if let Some(min) = self.config.min_free {
                args.extend(["--min-free".into(), min.to_string()]);
            }
            for path in &source.paths {
                if source.kind == SourceKind::Sqlite {
                    args.push("--sqlite".into());
                }
                args.push(path.display().to_string());
            }
            if let Some(command) = &source.command {
                // Run where hooks run: in the config's directory.
                let dir = self.config.path.parent().unwrap_or(std::path::Path::new("/"));
                args.extend(["--stdin-from-command".into(), command.line.clone()]);
                args.extend(["--stdin-filename".into(), command.filename.clone()]);
                args.extend(["--stdin-command-dir".into(), dir.display().to_string()]);
            }
            self.child(&format!("snapshot {}", source.name), &self.repo.clone(), &args);
        } else {
            self.steps.push(Step {
                step: format!("snapshot {}", source.name),
                outcome: Outcome::Failed,
                seconds: 0.0,
                output: vec!["not run: the before hook failed".into()],
            });
        }
        let after_ok = match &source.after {
            Some(after) => self.hook(source, "after", after),
            None => true,
        };
        if source.before.is_some() || source.after.is_some() {
            self.record_hooks(source, hooks_ok && after_ok);
        }
    }

    /// Runs a hook with `sh -c`; its failure is a failed step.
    fn hook(&mut self, source: &SourceConfig, which: &str, command: &str) -> bool {
        let started = Instant::now();
        let mut sh = Command::new("sh");
        self.context.password.pass_to(&mut sh);
        if let Some(dir) = self.config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sh.current_dir(dir);
        }
        let output =
            super::signals::output(sh.args(["-c", command]).env("CAIRN_SOURCE", &source.name).stdin(Stdio::null()));
        let (outcome, lines) = match output {
            Ok(out) if out.status.success() => (Outcome::Ok, lines(&out.stdout, &out.stderr)),
            Ok(out) => {
                let mut lines = lines(&out.stdout, &out.stderr);
                lines.push(format!("{which} hook `{command}` failed: {}", out.status));
                (Outcome::Failed, lines)
            }
            Err(e) => (Outcome::Failed, vec![format!("{which} hook `{command}` could not start: {e}")]),
        };
        let ok = outcome == Outcome::Ok;
        self.push(format!("{which} hook {}", source.name), outcome, started, lines);
        ok
    }

    /// A `hook` audit record for the source, so `cairn status` shows a failing hook (and a later
    /// good run clears it).
    fn record_hooks(&mut self, source: &SourceConfig, ok: bool) {
        let mut audit = Run::start("hook", &source.name);
        let hook_steps = [format!("before hook {}", source.name), format!("after hook {}", source.name)];
        audit.record.errors = self
            .steps
            .iter()
            .filter(|s| hook_steps.contains(&s.step) && s.outcome == Outcome::Failed)
            .filter_map(|s| s.output.last().cloned())
            .collect();
        if let Ok(repo) = self.local() {
            super::finish_audit(audit, repo, if ok { Outcome::Ok } else { Outcome::Failed });
        }
    }

    fn drills(&mut self) {
        let Some(drill) = &self.config.drill else { return };
        let repo = if drill.repository == "local" {
            self.repo.clone()
        } else {
            match self.config.offsite.iter().find(|o| o.name == drill.repository) {
                Some(offsite) => offsite.repository.clone(),
                None => return,
            }
        };
        let config = self.config;
        let offsite = if drill.repository == "local" { None } else { Some(self.context.open_at(&repo)) };
        let planned_in = match &offsite {
            Some(opened) => opened.as_ref().map_err(|e| anyhow::anyhow!("{e}")),
            None => self.local(),
        };
        let due = planned_in
            .with_context(|| format!("opening {repo} to plan drills"))
            .and_then(|opened| due_drills(opened, config, drill));
        let due = match due {
            Ok(due) => due,
            Err(e) => {
                self.push("drills".into(), Outcome::Failed, Instant::now(), vec![format!("{e:#}")]);
                return;
            }
        };
        for name in due {
            let mut args = vec!["drill".to_string(), "--source".into(), name.clone()];
            if let Some(dir) = &self.config.temp_dir {
                args.extend(["--scratch".into(), dir.display().to_string()]);
            }
            if offsite.is_some() {
                // Where `cairn status` looks: a drill of the offsite copy counts for the source.
                args.extend(["--record-to".into(), self.repo.clone()]);
            }
            self.child(&format!("drill {name}"), &repo, &args);
        }
    }

    /// A `stats` record: each source's share of the stored bytes and what it costs a month (at
    /// `cost_per_gib_month`), for `cairn status` and its Prometheus file. A step of its own.
    fn record_stats(&mut self) {
        let started = Instant::now();
        let price = self.config.cost_per_gib_month;
        let written = self.local().and_then(|repo| {
            let mut stats = cairn::stats::stats(repo)?;
            if let Some(price) = price {
                stats.price(price);
            }
            let mut audit = Run::start(cairn::audit::STATS, "");
            audit.record.bytes = stats.repository_bytes;
            audit.record.details = serde_json::to_value(&stats)?;
            audit.finish(repo, Outcome::Ok)?;
            Ok(())
        });
        match written {
            Ok(()) => self.push("stats".into(), Outcome::Ok, started, Vec::new()),
            Err(e) => self.push("stats".into(), Outcome::Failed, started, vec![format!("{e:#}")]),
        }
    }

    /// Runs `cairn --repo REPO ARGS...` and records it as a step: exit 0 is ok, 3 incomplete,
    /// anything else failed.
    fn child(&mut self, step: &str, repo: &str, args: &[String]) {
        let started = Instant::now();
        let mut command = Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cairn")));
        command.arg("--repo").arg(repo);
        // The run's --lock-wait, --no-cache or --cache-dir, which beat the environment.
        self.context.pass_to(&mut command);
        // The run created or found the repository before its first step; one that is gone since
        // (moved, its disk unmounted) fails the step rather than coming back empty, or plain.
        command.arg("--no-create");
        if self.child_json {
            command.arg("--json");
        }
        command.args(args).stdin(Stdio::null()).env_remove("CAIRN_REPO");
        self.context.password.pass_to(&mut command);
        let (outcome, lines) = match super::signals::output(&mut command) {
            Ok(out) => {
                let outcome = match out.status.code() {
                    Some(0) => Outcome::Ok,
                    Some(code) if code == EXIT_INCOMPLETE as i32 => Outcome::Incomplete,
                    _ => Outcome::Failed,
                };
                (outcome, lines(&out.stdout, &out.stderr))
            }
            Err(e) => (Outcome::Failed, vec![format!("could not start cairn: {e}")]),
        };
        self.push(step.to_string(), outcome, started, lines);
    }

    fn push(&mut self, step: String, outcome: Outcome, started: Instant, output: Vec<String>) {
        let seconds = started.elapsed().as_secs_f64();
        if !self.context.json && (!self.context.quiet || outcome != Outcome::Ok) {
            let label = match outcome {
                Outcome::Ok => "ok        ",
                Outcome::Incomplete => "INCOMPLETE",
                Outcome::Failed => "FAILED    ",
            };
            outln!("{label} {step} ({seconds:.1}s)");
            for line in &output {
                outln!("           {line}");
            }
        }
        self.steps.push(Step { step, outcome, seconds, output });
    }
}

/// The sources whose last good drill in `repo` is older than the policy allows (or missing).
fn due_drills(repo: &Repository, config: &Config, drill: &cairn::run_config::DrillConfig) -> Result<Vec<String>> {
    let now = cairn::clock::now_ms();
    let status = cairn::status::status(repo, now, &cairn::status::Thresholds::default(), None)?;
    let wanted: Vec<&str> = if drill.sources.is_empty() {
        config.sources.iter().map(|s| s.name.as_str()).collect()
    } else {
        drill.sources.iter().map(String::as_str).collect()
    };
    Ok(wanted
        .into_iter()
        .filter(|name| {
            let source = status.sources.iter().find(|s| s.source == *name);
            // Nothing to drill without a snapshot; the snapshot step already failed loudly.
            let has_snapshot = source.is_some_and(|s| s.snapshots > 0);
            let last = source.and_then(|s| s.last_drill_ok.as_ref());
            has_snapshot && !matches!(last, Some(e) if (e.age_seconds as u64) < drill.every.as_secs())
        })
        .map(String::from)
        .collect())
}

fn policy_args(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, n) in [
        ("--keep-last", policy.last),
        ("--keep-hourly", policy.hourly),
        ("--keep-daily", policy.daily),
        ("--keep-weekly", policy.weekly),
        ("--keep-monthly", policy.monthly),
        ("--keep-yearly", policy.yearly),
    ] {
        if n > 0 {
            out.extend([flag.to_string(), n.to_string()]);
        }
    }
    if let Some(within) = policy.within {
        out.extend(["--keep-within".to_string(), format!("{}s", within.as_secs())]);
    }
    for tag in &policy.tags {
        out.extend(["--keep-tag".to_string(), tag.clone()]);
    }
    out
}

/// The non-empty lines of a child's stdout, then its stderr.
fn lines(stdout: &[u8], stderr: &[u8]) -> Vec<String> {
    [stdout, stderr]
        .iter()
        .flat_map(|b| String::from_utf8_lossy(b).lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .collect()
}
