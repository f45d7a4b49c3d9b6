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
    /// Config file to read `cost_per_gib_month` from
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let mut report = stats(&repo)?;
    let configured = match &args.config {
        Some(path) => cairn::run_config::load(path).map_err(anyhow::Error::msg)?.0.cost_per_gib_month,
        None => None,
    };
    let price = args.cost_per_gib_month.or(configured);
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
            format!("{} ({})", s.source, s.host),
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
