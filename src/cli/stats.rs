//! `cairn stats`: storage cost per source.

use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::stats::stats;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Price each source's share at this cost per GiB-month (default: `cost_per_gib_month` from
    /// the config file, when one is given)
    #[arg(long, value_name = "PRICE")]
    cost_per_gib_month: Option<f64>,
    /// Config file to read `cost_per_gib_month` and the repository from (`--repo` beats its
    /// `repository`, which beats CAIRN_REPO, as for `cairn run`)
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Some(cairn::run_config::load(path).map_err(anyhow::Error::msg)?.0),
        None => None,
    };
    // The config's repository, as `cairn run` writes to it.
    let mut repo = context.open_at(&context.location_with(config.as_ref().and_then(|c| c.repository.as_deref())))?;
    context.cache_for(&mut repo);
    let mut report = stats(&repo)?;
    let price = args.cost_per_gib_month.or(config.and_then(|c| c.cost_per_gib_month));
    if let Some(price) = price {
        report.price(price);
    }
    super::warn_damage(&repo);
    if context.json {
        outln!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<40} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11}{}",
        "source (host)",
        "snapshots",
        "logical",
        "stored",
        "unique",
        "shared",
        "share",
        if price.is_some() { "  cost/month" } else { "" }
    );
    for s in &report.sources {
        outln!(
            "{:<40} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11}{}",
            format!("{} ({})", cairn::names::shown(s.source.as_bytes()), cairn::names::shown(s.host.as_bytes())),
            s.snapshots,
            format::bytes(s.logical_bytes),
            format::bytes(s.stored_bytes),
            format::bytes(s.unique_bytes),
            format::bytes(s.shared_bytes),
            format::bytes(s.attributed_bytes),
            s.monthly_cost.map_or(String::new(), |c| format!(" {c:>11.4}"))
        );
    }
    if let Some(price) = price {
        let total: f64 = report.sources.iter().filter_map(|s| s.monthly_cost).sum();
        outln!("at {price} per GiB-month the live data costs {total:.4} a month");
    }
    outln!("repository: {} in packs, {}", format::bytes(report.repository_bytes), format::count(report.blobs, "blob"));
    Ok(ExitCode::SUCCESS)
}
