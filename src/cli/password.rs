//! Where the repository password comes from. A flag given on the command line beats every
//! environment variable: `--password-file` or `--password-command` leaves only its own variable
//! set, so the library's lookup ([`cairn::crypto::passphrase_if_given`], which reads
//! `CAIRN_PASSWORD`, then `CAIRN_PASSWORD_FILE`, then `CAIRN_PASSWORD_COMMAND`) and the child
//! processes of `cairn run` both see the flag's choice and nothing else. Giving both flags is a
//! usage error (clap's `conflicts_with`), never a silent pick.
//!
//! This still hands the choice over through the process environment, set before any thread
//! starts; moving the lookup itself into the CLI is issue 23.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The variables that name a password source, in the order the library consults them.
pub const VARIABLES: [&str; 3] = ["CAIRN_PASSWORD", "CAIRN_PASSWORD_FILE", "CAIRN_PASSWORD_COMMAND"];

/// Makes the password flags win over the environment. Call before any thread starts.
pub fn settle(file: Option<&Path>, command: Option<&str>) -> Result<()> {
    let chosen = match (file, command) {
        (Some(file), _) => {
            // Absolute, so that `cairn run`'s children (and its hooks, which run in the config's
            // directory) find the same file.
            let file: PathBuf = std::path::absolute(file)
                .with_context(|| format!("cannot resolve the password file {}", file.display()))?;
            Some(("CAIRN_PASSWORD_FILE", file.into_os_string()))
        }
        (None, Some(command)) => Some(("CAIRN_PASSWORD_COMMAND", command.into())),
        (None, None) => None,
    };
    if let Some((variable, value)) = chosen {
        for other in VARIABLES {
            std::env::remove_var(other);
        }
        std::env::set_var(variable, value);
    }
    Ok(())
}

/// Whether a password source was given, by a flag or a variable (the terminal does not count:
/// `cairn run` gives its children none).
pub fn given() -> bool {
    VARIABLES.iter().any(|v| std::env::var_os(v).is_some_and(|value| !value.is_empty()))
}
