//! `cairn stats`: storage cost per source.

use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::stats::stats;

pub fn run(context: &Context) -> Result<ExitCode> {
    let repo = context.open()?;
    let report = stats(&repo)?;
    super::warn_damage(&repo);
    if context.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>9} {:>11} {:>11} {:>11} {:>11}",
        "source (host)", "snapshots", "logical", "stored", "unique", "shared"
    );
    for s in &report.sources {
        println!(
            "{:<40} {:>9} {:>11} {:>11} {:>11} {:>11}",
            format!("{} ({})", s.source, s.host),
            s.snapshots,
            format::bytes(s.logical_bytes),
            format::bytes(s.stored_bytes),
            format::bytes(s.unique_bytes),
            format::bytes(s.shared_bytes)
        );
    }
    println!("repository: {} in packs, {} blobs", format::bytes(report.repository_bytes), report.blobs);
    Ok(ExitCode::SUCCESS)
}
