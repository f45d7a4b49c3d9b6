//! `cairn status [--max-age D] [--max-drill-age D] [--prometheus FILE]`

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::Context;
use cairn::clock::parse_duration;
use cairn::status::{age_text, prometheus, status, Expected, Thresholds};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A source whose newest snapshot is older than this is a problem (90s, 15m, 1h30m, 2d, 1w)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_age: Option<Duration>,
    /// A source whose last successful drill is older than this (or that has none) is a problem
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_drill_age: Option<Duration>,
    /// A source whose newest copy in an offsite destination (as the syncs recorded it) is older
    /// than this, or that has no copy there, is a problem
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_offsite_age: Option<Duration>,
    /// Also write the figures as a Prometheus textfile-collector file (written atomically)
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
    /// Judge exactly the sources and offsite repositories of this `cairn run` config: one never
    /// snapshotted fails, one no longer in it is listed as retired (default: CAIRN_CONFIG, else
    /// the default config file if it exists)
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Judge every source found, not a config's (beats --config and CAIRN_CONFIG)
    #[arg(long)]
    no_config: bool,
    /// Retire a source (or an offsite repository) by hand: it is listed, no longer judged, until
    /// it is snapshotted (synced) again. Writes a record; repeatable
    #[arg(long, value_name = "NAME")]
    retire: Vec<String>,
}

/// Now, in Unix milliseconds; the test knob `CAIRN_NOW` ([`cairn::knobs`], Unix seconds) sets
/// it, so that tests need no waiting.
pub fn now_ms() -> Result<i64> {
    match cairn::knobs::get("CAIRN_NOW") {
        Some(text) => Ok(text.trim().parse::<i64>().context("CAIRN_NOW must be Unix seconds")? * 1000),
        None => Ok(cairn::clock::now_ms()),
    }
}

/// The config status judges by: the one given, else the default one if it exists.
fn config(args: &Args) -> Result<Option<cairn::run_config::Config>> {
    let path = match (&args.config, args.no_config) {
        (_, true) => return Ok(None),
        (Some(path), _) => path.clone(),
        (None, _) => match cairn::run_config::default_path().filter(|path| path.exists()) {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    let (config, problems) = cairn::run_config::load(&path).map_err(anyhow::Error::msg)?;
    if let Some(problem) = problems.iter().find(|p| !p.source_only) {
        anyhow::bail!(
            "{}:{}: {} (cairn config check lists every problem)",
            path.display(),
            problem.line,
            problem.message
        );
    }
    Ok(Some(config))
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let config = config(&args)?;
    let location = context.location_with(config.as_ref().and_then(|c| c.repository.as_deref()));
    // Records and manifests never change: on an object store they are read through the cache,
    // so a status costs the listings and what is new since the last one.
    let mut repo = context.open_at(&location)?;
    context.cache_for(&mut repo);
    for name in &args.retire {
        let mut audit = cairn::audit::Run::start(cairn::audit::RETIRE, name);
        audit.close(cairn::format::audit::Outcome::Ok);
        cairn::audit::write(&repo, &audit.record).with_context(|| format!("retiring {name}"))?;
        if !context.quiet && !context.json {
            outln!("retired {name}: listed, no longer judged, until it runs again");
        }
    }
    let expected = config.as_ref().map(expected);
    // The flags, else what the config's schedule implies (as `cairn serve` judges).
    let configured = config.as_ref().map_or_else(Thresholds::default, Thresholds::of_config);
    let thresholds = Thresholds {
        max_age: args.max_age.or(configured.max_age),
        max_drill_age: args.max_drill_age.or(configured.max_drill_age),
        max_offsite_age: args.max_offsite_age.or(configured.max_offsite_age),
    };
    let status = status(&repo, now_ms()?, &thresholds, expected.as_ref())?;
    if let Some(path) = &args.prometheus {
        write_atomically(path, prometheus(&status).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if context.json {
        outln!("{}", serde_json::to_string(&status)?);
    } else if !context.quiet {
        let age = |seconds: i64| format!("{} ago", age_text(seconds));
        // Names and messages come from records and manifests, which another host may have
        // written: one rule (cairn::names) keeps a newline or escape in them from forging a line.
        let shown = |text: &str| cairn::names::shown(text.as_bytes()).into_owned();
        for source in &status.sources {
            let latest = source.latest_snapshot.as_ref().map_or("none".to_string(), |e| {
                format!("{} ({})", &e.snapshot.as_deref().unwrap_or("?")[..8], age(e.age_seconds))
            });
            let drill = source.last_drill_ok.as_ref().map_or("never".to_string(), |e| age(e.age_seconds));
            let label = match (source.retired, source.problems.is_empty()) {
                (true, _) => "retired",
                (false, true) => "ok  ",
                (false, false) => "FAIL",
            };
            outln!(
                "{label}  {}: {}, newest {latest}, last good drill {drill}",
                shown(&source.source),
                super::format::count(source.snapshots, "snapshot")
            );
            for copy in &source.offsite {
                outln!("      offsite {}: {} ({})", shown(&copy.to), &copy.snapshot[..8], age(copy.age_seconds));
            }
            if let Some(failure) = &source.last_failure {
                let (command, error) = (shown(&failure.command), shown(&failure.error));
                outln!("      last failure: {command} {}: {error}", age(failure.age_seconds));
            }
            for problem in &source.problems {
                outln!("      problem: {}", shown(problem));
            }
        }
        match (&status.last_check, status.last_check_ok) {
            (Some(check), Some(ok)) => {
                outln!("last check {}: {}", age(check.age_seconds), if ok { "no errors" } else { "DAMAGE FOUND" })
            }
            _ => outln!("no check has run yet"),
        }
        for o in &status.offsite {
            let ok = o.last_ok.as_ref().map_or("never".to_string(), |e| age(e.age_seconds));
            outln!(
                "offsite {}{}: last sync {} ({:?}), last complete sync {ok}",
                shown(&o.to),
                if o.retired { " (retired)" } else { "" },
                age(o.last_sync.age_seconds),
                o.last_outcome
            );
        }
        for r in &status.received {
            outln!("received from {}: last sync {} ({:?})", shown(&r.to), age(r.last_sync.age_seconds), r.last_outcome);
        }
        for run in &status.running {
            outln!("running: {}", shown(run));
        }
        outln!("repository: {}", super::snapshots::encryption_text(&repo));
        for problem in &status.problems {
            outln!("problem: {}", shown(problem));
        }
    }
    Ok(if status.healthy() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a `cairn run` config says should exist: what status judges.
pub fn expected(config: &cairn::run_config::Config) -> Expected {
    Expected {
        sources: config.sources.iter().map(|s| s.name.clone()).collect(),
        offsite: config.offsite.iter().map(|o| o.repository.clone()).collect(),
        read_data_days: config.check.as_ref().map(|c| c.read_data_days),
    }
}

/// Writes beside the target, syncs, and renames, so a collector never reads half a file.
fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}
