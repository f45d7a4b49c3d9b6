//! `cairn init`: create a repository.

use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use cairn::repository::Repository;

pub fn run(context: &Context) -> Result<ExitCode> {
    let repo = Repository::init_location(&context.location())?;
    if context.json {
        println!("{}", serde_json::json!({ "repository": context.repo_path, "id": repo.config().repo_id.to_hex() }));
    } else if !context.quiet {
        println!("created repository {} at {}", repo.config().repo_id.short(), context.repo_path.display());
    }
    Ok(ExitCode::SUCCESS)
}
