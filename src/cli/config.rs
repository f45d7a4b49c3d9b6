//! `cairn config example` and `cairn config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Print a commented example config
    Example,
    /// Check a config file and report every problem with its line
    Check {
        /// Config file (default: $XDG_CONFIG_HOME/cairn/config.toml)
        #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// The config file given, or the default one.
pub fn path(given: Option<PathBuf>) -> Result<PathBuf> {
    given
        .or_else(cairn::run_config::default_path)
        .context("no --config given, CAIRN_CONFIG unset, and no home directory")
}

pub fn run(context: &super::Context, args: Args) -> Result<ExitCode> {
    match args {
        Args::Example => {
            super::output::text(format_args!("{}", cairn::run_config::EXAMPLE));
            Ok(ExitCode::SUCCESS)
        }
        Args::Check { config } => {
            let path = path(config)?;
            let (config, problems) = cairn::run_config::load(&path).map_err(anyhow::Error::msg)?;
            if context.json {
                let problems: Vec<_> = problems
                    .iter()
                    .map(|p| serde_json::json!({ "line": p.line, "message": p.message, "source_only": p.source_only }))
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({
                        "config": path,
                        "ok": problems.is_empty(),
                        "problems": problems,
                        "sources": config.sources.iter().map(|s| &s.name).collect::<Vec<_>>(),
                        "offsite": config.offsite.iter().map(|o| &o.name).collect::<Vec<_>>(),
                        "drills": config.drill.is_some(),
                    })
                );
                return Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            for problem in &problems {
                outln!("{}:{}: {}", path.display(), problem.line, problem.message);
            }
            if problems.is_empty() {
                outln!(
                    "{}: ok: {} sources, {} offsite repositories, drills {}",
                    path.display(),
                    config.sources.len(),
                    config.offsite.len(),
                    if config.drill.is_some() { "on" } else { "off" }
                );
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{}: {} problems", path.display(), problems.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
