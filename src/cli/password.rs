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
            (Some(value), _, _) => Source::Value(from_variable(&value, VARIABLES[0])?),
            // Absolute too, for the hooks that `cairn run` starts in its config's directory.
            (None, Some(file), _) => Source::File(std::path::absolute(&file).unwrap_or_else(|_| file.into())),
            (None, None, Some(command)) => Source::Command(command.to_string_lossy().into_owned()),
            (None, None, None) => Source::Terminal,
        })
    }

    /// `CAIRN_PASSWORD` whole, as cairn read it before it took the first line of every source,
    /// when that differs from its first line (a value that ends in a newline, as a secret made
    /// from a file has): what opens a repository whose key was made from it.
    pub fn whole_variable(&self) -> Option<String> {
        let Source::Value(first_line) = self else { return None };
        let whole = std::env::var_os(VARIABLES[0])?.to_string_lossy().into_owned();
        (whole != *first_line).then_some(whole)
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
            Source::Command(command) => from_command(command).map(Some),
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

/// The longest password line cairn reads, in bytes: a source that gives more (`/dev/zero`, a
/// command that never stops printing) is refused before it fills memory.
const LONGEST: usize = 4096;

/// What a password command may print after its first line (read and dropped, so that it can
/// finish writing) before it is taken for one that never ends.
const MOST_AFTER: u64 = 64 * 1024;

/// The first line of a password file.
pub fn from_file(path: &Path) -> Result<String> {
    let from = format!("the password file {}", path.display());
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {from}"))?;
    let line = first_line(&mut std::io::BufReader::new(file), &from)?;
    password_of(&line, &from)
}

/// The first line of a variable's value (`CAIRN_PASSWORD`, `CAIRN_NEW_PASSWORD`).
pub fn from_variable(value: &std::ffi::OsStr, name: &str) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let from = format!("the variable {name}");
    let line = first_line(&mut value.as_bytes(), &from)?;
    password_of(&line, &from)
}

/// The first line the shell command `command` prints. The rest of its output is read and
/// dropped up to [`MOST_AFTER`] (a command killed by a closed pipe would look like one that
/// failed); a command that prints more, or a first line without end, is killed and waited for.
fn from_command(command: &str) -> Result<String> {
    use std::io::Read;
    let from = "the password command";
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("cannot run the password command")?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout is piped"));
    let read = first_line(&mut stdout, from).and_then(|line| {
        let after = std::io::copy(&mut (&mut stdout).take(MOST_AFTER + 1), &mut std::io::sink())
            .context("reading the output of the password command")?;
        if after > MOST_AFTER {
            bail!("the password command printed more than {} KiB after its first line: it seems never to end (it should print the password and exit)", MOST_AFTER / 1024);
        }
        Ok(line)
    });
    if read.is_err() {
        let _ = child.kill();
    }
    drop(stdout);
    let status = child.wait().context("waiting for the password command")?;
    let line = read?;
    if !status.success() {
        bail!("the password command failed: {status}");
    }
    password_of(&line, from)
}

/// The bytes of the first line `reader` gives (without its end), reading no more than
/// [`LONGEST`] bytes and a newline.
fn first_line(reader: &mut impl std::io::BufRead, from: &str) -> Result<Vec<u8>> {
    use std::io::{BufRead, Read};
    let mut line = Vec::new();
    reader.take(LONGEST as u64 + 1).read_until(b'\n', &mut line).with_context(|| format!("cannot read {from}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > LONGEST {
        bail!("{from} gave a password longer than {LONGEST} bytes (or no line at all): give one line of at most {LONGEST} bytes");
    }
    Ok(line)
}

/// The password of a line, from any source: a `\r` before its end is dropped (a file written on
/// Windows), and it must be UTF-8 and not empty. Every source goes through here, so the same
/// bytes give the same password wherever they come from; bytes that are not UTF-8 are refused,
/// not replaced, since replacing would let other bytes of the same count open the repository.
fn password_of(line: &[u8], from: &str) -> Result<String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(password) = std::str::from_utf8(line) else {
        bail!("{from} gave a password that is not valid UTF-8: cairn takes passwords as UTF-8 text");
    };
    if password.is_empty() {
        bail!("{from} gave an empty password");
    }
    Ok(password.to_string())
}

/// Reads a line from the terminal with echo off, after showing `text`; `None` without a terminal.
pub fn prompt(text: &str) -> Result<Option<String>> {
    use std::io::Write;
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
    let read = first_line(&mut std::io::BufReader::new(&tty), "the terminal");
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    let _ = (&tty).write_all(b"\n");
    password_of(&read?, "the terminal").map(Some)
}
