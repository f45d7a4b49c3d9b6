//! Where the repository password comes from, decided once when cairn starts: `--password-file`
//! or `--password-command` if given (a flag beats the environment), else `CAIRN_PASSWORD`, else
//! the first line of the file `CAIRN_PASSWORD_FILE`, else the first line printed by
//! `CAIRN_PASSWORD_COMMAND` (run with `sh -c`), else typed at the terminal. Giving both flags is
//! a usage error (clap's `conflicts_with`), never a silent pick.
//!
//! The library never looks for a password: it is handed one as a value, and asks for it only
//! when the repository is encrypted ([`cairn::repository::Passphrase::Ask`]), so a plain
//! repository never prompts or runs a password command. The child processes of `cairn run` (and
//! its hooks) get the chosen source in their environment ([`Source::pass_to`]), nothing else.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The variables that name a password source, in the order they are consulted.
const VARIABLES: [&str; 3] = ["CAIRN_PASSWORD", "CAIRN_PASSWORD_FILE", "CAIRN_PASSWORD_COMMAND"];

#[derive(Debug, Clone)]
pub enum Source {
    Value(String),
    File(PathBuf),
    Command(String),
    /// None given: the terminal, if there is one.
    Terminal,
}

impl Source {
    /// The source the flags name, else the first variable set (an empty one counts as unset).
    pub fn chosen(file: Option<&Path>, command: Option<&str>) -> Result<Source> {
        if let Some(file) = file {
            // Absolute, so that `cairn run`'s children (and its hooks, which run in the config's
            // directory) find the same file.
            let file = std::path::absolute(file)
                .with_context(|| format!("cannot resolve the password file {}", file.display()))?;
            return Ok(Source::File(file));
        }
        if let Some(command) = command {
            return Ok(Source::Command(command.to_string()));
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Ok(match (var(VARIABLES[0]), var(VARIABLES[1]), var(VARIABLES[2])) {
            (Some(value), _, _) => Source::Value(value.to_string_lossy().into_owned()),
            // Absolute too, for the hooks that `cairn run` starts in its config's directory.
            (None, Some(file), _) => Source::File(std::path::absolute(&file).unwrap_or_else(|_| file.into())),
            (None, None, Some(command)) => Source::Command(command.to_string_lossy().into_owned()),
            (None, None, None) => Source::Terminal,
        })
    }

    /// Whether a source was given, by a flag or a variable (the terminal does not count: `cairn
    /// run` gives its children none).
    pub fn given(&self) -> bool {
        !matches!(self, Source::Terminal)
    }

    /// Where the password came from, for a message.
    pub fn describe(&self) -> &'static str {
        match self {
            Source::Value(_) => "CAIRN_PASSWORD",
            Source::File(_) => "a password file",
            Source::Command(_) => "a password command",
            Source::Terminal => "the terminal",
        }
    }

    /// The password, or `None` when only the terminal could give it and there is none.
    pub fn read(&self, location: &str) -> Result<Option<String>> {
        match self {
            Source::Value(value) => Ok(Some(value.clone())),
            Source::File(path) => from_file(path).map(Some),
            Source::Command(command) => {
                let output = Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .context("cannot run the password command")?;
                if !output.status.success() {
                    bail!("the password command failed: {}", output.status);
                }
                first_line(&String::from_utf8_lossy(&output.stdout), "the password command").map(Some)
            }
            Source::Terminal => prompt(&format!("password for {location}: ")),
        }
    }

    /// [`Source::read`], failing clearly when there is none.
    pub fn require(&self, location: &str) -> Result<String> {
        self.read(location)?.with_context(|| {
            format!(
                "{location} is encrypted: give its password with CAIRN_PASSWORD, --password-file or --password-command"
            )
        })
    }

    /// The library's way to ask for this source's password when a repository turns out to be
    /// encrypted.
    pub fn asker<'a>(&'a self, location: &'a str) -> impl Fn() -> cairn::error::Result<String> + Sync + 'a {
        move || self.require(location).map_err(|e| cairn::error::Error::Invalid(format!("{e:#}")))
    }

    /// Gives a child process this source and no other: the three variables are cleared and the
    /// one that says this source set.
    pub fn pass_to(&self, command: &mut Command) {
        withhold_from(command);
        let (variable, value): (&str, OsString) = match self {
            Source::Value(value) => (VARIABLES[0], value.into()),
            Source::File(path) => (VARIABLES[1], path.into()),
            Source::Command(line) => (VARIABLES[2], line.into()),
            Source::Terminal => return,
        };
        command.env(variable, value);
    }
}

/// Keeps every password variable out of `command`'s environment (a command whose output is
/// backed up needs none).
pub fn withhold_from(command: &mut Command) {
    for variable in VARIABLES {
        command.env_remove(variable);
    }
}

/// The first line of a password file; an empty one is an error.
pub fn from_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the password file {}", path.display()))?;
    first_line(&text, &format!("the password file {}", path.display()))
}

fn first_line(text: &str, from: &str) -> Result<String> {
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        bail!("{from} gave an empty password");
    }
    Ok(line)
}

/// Reads a line from the terminal with echo off, after showing `text`; `None` without a terminal.
pub fn prompt(text: &str) -> Result<Option<String>> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Ok(None);
    }
    let Ok(tty) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty") else { return Ok(None) };
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on an open terminal descriptor with a valid out-pointer.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Ok(None);
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    (&tty).write_all(text.as_bytes()).context("writing to /dev/tty")?;
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    let _ = (&tty).write_all(b"\n");
    read.context("reading from /dev/tty")?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    if line.is_empty() {
        bail!("empty password");
    }
    Ok(Some(line))
}
