//! `cairn key list|add|remove|passwd`: the passphrases of an encrypted repository. Each key file
//! wraps the same master key under one passphrase (store-format/encryption.md).

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::{format, Context};
use cairn::repository::lock::LockKind;

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// List the key files
    List,
    /// Add a passphrase: the new one comes from --new-password-file, CAIRN_NEW_PASSWORD,
    /// CAIRN_NEW_PASSWORD_FILE, or the terminal
    Add(NewPassword),
    /// Remove a key file by name or id prefix (never the one whose password opened the
    /// repository: open it with another key's password to remove that one)
    Remove {
        /// Key id or prefix, as `key list` shows it
        id: String,
    },
    /// Change the passphrase used to open the repository: add the new one, remove the old one
    Passwd(NewPassword),
}

#[derive(clap::Args, Debug)]
pub struct NewPassword {
    /// Read the new password from the first line of this file (beats CAIRN_NEW_PASSWORD and
    /// CAIRN_NEW_PASSWORD_FILE)
    #[arg(long, value_name = "FILE")]
    new_password_file: Option<std::path::PathBuf>,
}

/// The new password: the flag, else `CAIRN_NEW_PASSWORD`, else the file `CAIRN_NEW_PASSWORD_FILE`
/// names, else the terminal. A flag beats the environment, as for the repository password.
fn new_password(args: &NewPassword) -> Result<String> {
    if let Some(path) = &args.new_password_file {
        return super::password::from_file(path);
    }
    if let Some(value) = std::env::var_os("CAIRN_NEW_PASSWORD").filter(|v| !v.is_empty()) {
        return super::password::from_variable(&value, "CAIRN_NEW_PASSWORD");
    }
    if let Some(path) = std::env::var_os("CAIRN_NEW_PASSWORD_FILE").filter(|v| !v.is_empty()) {
        return super::password::from_file(std::path::Path::new(&path));
    }
    match super::password::prompt("new password: ")? {
        Some(password) => Ok(password),
        None => bail!("give the new password with --new-password-file, CAIRN_NEW_PASSWORD, CAIRN_NEW_PASSWORD_FILE, or at a terminal"),
    }
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open()?;
    if repo.keys().is_none() {
        bail!("{} is not encrypted: it has no keys", context.location());
    }
    let name_of = |spec: &str| -> Result<cairn::id::Id> {
        let files = repo.key_files()?;
        let matching: Vec<_> = files.iter().filter(|(id, _)| id.to_hex().starts_with(spec)).collect();
        match matching.as_slice() {
            [(id, _)] => Ok(*id),
            [] => bail!("no key matches {spec:?}"),
            _ => bail!("key prefix {spec:?} is ambiguous"),
        }
    };
    match args {
        Args::List => {
            let files = repo.key_files()?;
            if context.json {
                let list: Vec<_> = files
                    .iter()
                    .map(|(name, file)| match file {
                        Ok(f) => serde_json::json!({
                            "id": name.to_hex(),
                            "current": Some(*name) == repo.key_used(),
                            "hostname": f.hostname,
                            "created": format::utc(f.created_ms / 1000),
                            "kdf": { "algorithm": "argon2id", "memory_kib": f.kdf.m_cost, "iterations": f.kdf.t_cost, "parallelism": f.kdf.p_cost },
                        }),
                        Err(e) => serde_json::json!({ "id": name.to_hex(), "current": false, "damaged": e.to_string() }),
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(list));
            } else {
                for (name, file) in &files {
                    let current = if Some(*name) == repo.key_used() { "*" } else { " " };
                    match file {
                        Ok(f) => outln!(
                            "{current} {}  {}  {}  argon2id m={} KiB t={} p={}",
                            name.short(),
                            format::utc(f.created_ms / 1000),
                            f.hostname,
                            f.kdf.m_cost,
                            f.kdf.t_cost,
                            f.kdf.p_cost
                        ),
                        Err(e) => {
                            outln!("{current} {}  DAMAGED ({e}): opens nothing; `key remove` removes it", name.short())
                        }
                    }
                }
            }
        }
        Args::Add(new) => {
            let name = repo.add_key(&new_password(&new)?)?;
            if !context.quiet {
                outln!("added key {}", name.short());
            }
        }
        Args::Remove { id } => {
            // Exclusive: two removals at once could each see the other's key still there and
            // together remove the last one.
            let _lock = repo.lock(LockKind::Exclusive, "key remove", context.lock_wait)?;
            let name = name_of(&id)?;
            repo.remove_key(&name)?;
            if !context.quiet {
                outln!("removed key {}", name.short());
            }
        }
        Args::Passwd(new) => {
            let _lock = repo.lock(LockKind::Exclusive, "key passwd", context.lock_wait)?;
            let added = repo.replace_key(&new_password(&new)?)?;
            if !context.quiet {
                outln!("password changed: key {}", added.short());
            }
            // The key file of the old password is gone, but other key files still open the
            // repository with theirs, and one may be the old password's twin (added before
            // `add_key` refused duplicates): knowing that would cost the old password once more
            // (a second prompt). Said, so that a change made because a password leaked is not
            // taken for the end of it.
            let others = repo.key_files()?.len().saturating_sub(1);
            if others > 0 {
                errln!(
                    "note: {others} other key file(s) still open the repository with their passwords, which may \
                     include the old one (`key list` shows them, `key remove ID` removes one)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
