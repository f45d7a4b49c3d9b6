//! `cairn init [--encryption none]`: create a repository.

use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use cairn::format::config::Config;
use cairn::repository::{NewKeys, Repository};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `aes-256-gcm` (the default: every object sealed, a passphrase needed), or `none`
    #[arg(long, value_name = "MODE", default_value = "aes-256-gcm", value_parser = ["aes-256-gcm", "none"])]
    encryption: String,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let keys = if args.encryption == "none" {
        NewKeys::None
    } else {
        NewKeys::New { passphrase: context.password.require(&context.location())? }
    };
    let repo = Repository::create(&context.location().as_str().into(), Config::new_random(), keys)?;
    let encryption = if repo.keys().is_some() { "aes-256-gcm" } else { "none" };
    if context.json {
        outln!(
            "{}",
            serde_json::json!({ "repository": context.repo_path, "id": repo.config().repo_id.to_hex(), "encryption": encryption, "key": repo.key_used().map(|id| id.to_hex()) })
        );
    } else if !context.quiet {
        outln!(
            "created repository {} at {} (encryption: {encryption})",
            repo.config().repo_id.short(),
            context.repo_path.display()
        );
        if repo.keys().is_some() {
            outln!("keep the password safe: without it nothing in the repository can be read");
        }
    }
    Ok(ExitCode::SUCCESS)
}
