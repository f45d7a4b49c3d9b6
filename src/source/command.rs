//! A command whose standard output is backed up (`cairn snapshot --stdin-from-command`, a
//! `kind = "command"` source): a database dump, an export. Its output is read as a stream and
//! never held whole ([`crate::backup::stream`]); what it prints on standard error is passed on
//! line by line and its last lines kept, so that a failure can say why.
//!
//! The invariant this module exists for: a command that does not end well (a non-zero exit, a
//! signal, a failure to start) fails the snapshot. Its exit status is known before anything is
//! committed, since [`Running::finish`] waits for it, and the caller writes the manifest only
//! after `finish` returned `Ok`. A dump cut short by an error looks like a short dump on its
//! standard output: only the status tells them apart.

use std::collections::VecDeque;
use std::io::Read;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::progress::Progress;

/// How many of the command's last lines of error output an error quotes.
const TAIL_LINES: usize = 5;
/// The longest line of error output kept (a longer one is cut, the rest of it dropped), so a
/// command printing binary data on standard error cannot grow the tail without bound.
const LINE_BYTES: usize = 400;

/// The process groups of the commands running now: each command leads one of its own, so that
/// what it starts (a dump piped through a compressor, a helper in the background) is stopped with
/// it ([`signal_running`], [`Running::abandon`]).
static GROUPS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Sends `signal` to every running command and all it started: a signal is ending cairn. (The
/// shell itself also gets SIGTERM from the kernel when cairn ends; what it started would not.)
pub fn signal_running(signal: libc::c_int) {
    for &group in GROUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // SAFETY: sends a signal to a process group led by a child not yet waited for.
        unsafe { libc::kill(-group, signal) };
    }
}

/// A started command: its standard output to read, and a thread passing on its standard error.
pub struct Running<'scope> {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: std::thread::ScopedJoinHandle<'scope, VecDeque<String>>,
    /// Whether it leads a process group of its own ([`GROUPS`]).
    own_group: bool,
}

/// Starts `command` (the caller builds it, usually `sh -c LINE`, with the environment and working
/// directory it should have) with its standard output piped, standard input empty, and standard
/// error read by a thread of `scope`, which shows each line through `progress` and keeps the
/// last ones. Its errors never quote the command line, which may hold a password.
pub fn start<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    mut command: Command,
    progress: &'scope Progress,
) -> Result<Running<'scope>> {
    let failed =
        |e: std::io::Error| Error::Command { how: format!("could not be started: {e}"), stderr: String::new() };
    // The binary blocks SIGINT, SIGTERM and SIGHUP in every thread to take them with sigwait, and
    // a child spawned as is keeps that mask (observed with Rust 1.95: `kill -TERM $$` in the
    // command did not end it), so a signal to the command would not stop it. It starts with none.
    // And it gets SIGTERM if this process ends first (a signal ends cairn, which exits at once):
    // a command that is not writing would otherwise run on until it next writes (and gets SIGPIPE).
    // The thread that starts it waits for it, so it never outlives its parent thread.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only sigemptyset, pthread_sigmask, prctl and getppid run,
    // which are async-signal-safe and allocate nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                return Err(std::io::Error::other("cairn ended while the command was starting"));
            }
            Ok(())
        });
    }
    // A group of its own, unless cairn runs on a terminal: a command there may ask on it (ssh
    // for a passphrase), which only the terminal's foreground group may (another is stopped by
    // SIGTTIN and would wait for ever); there, Ctrl-C reaches it and all it started anyway.
    let own_group = !has_a_terminal();
    let mut child = {
        use std::os::unix::process::CommandExt;
        // Under the lock: a signal that ends cairn now finds the group once it exists.
        let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if own_group {
            command.process_group(0);
        }
        let child = command.spawn().map_err(failed)?;
        if own_group {
            groups.push(child.id() as libc::pid_t);
        }
        child
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take().expect("piped above");
    let stderr = scope.spawn(move || pass_on(stderr, progress));
    Ok(Running { child, stdout, stderr, own_group })
}

/// Whether this process has a controlling terminal.
fn has_a_terminal() -> bool {
    // SAFETY: opens a constant path; the descriptor is closed at once.
    let fd = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if fd >= 0 {
        // SAFETY: closes the descriptor just opened.
        unsafe { libc::close(fd) };
    }
    fd >= 0
}

impl Running<'_> {
    /// The command's standard output; it ends when the command (and every process it left
    /// holding the pipe) has closed it.
    pub fn stdout(&mut self) -> &mut dyn Read {
        self.stdout.as_mut().expect("taken only by finish and abandon")
    }

    /// Waits for the command to end, after its output was read to the end: `Ok` only if it
    /// exited with status 0. Any other end is [`Error::Command`], with its status and the last
    /// lines of its error output.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdout.take());
        let status = self.waited();
        let tail = self.stderr.join().unwrap_or_default();
        let how = match status {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => describe(status),
            Err(e) => format!("could not be waited for: {e}"),
        };
        let stderr = match tail.is_empty() {
            true => String::new(),
            false => format!(
                ". Its error output ended with: {}",
                tail.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(" ")
            ),
        };
        Err(Error::Command { how, stderr })
    }

    /// Stops the command when storing its output failed: its output is closed (a writer gets
    /// SIGPIPE), it and every process of its group are killed, and it is waited for, so no
    /// process is left behind holding its error output open.
    pub fn abandon(mut self) {
        drop(self.stdout.take());
        if self.own_group {
            // SAFETY: kills the process group the child leads; it is not waited for yet, so the
            // id is still its own.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        } else {
            let _ = self.child.kill();
        }
        let _ = self.waited();
        let _ = self.stderr.join();
    }

    /// Waits for the command to end, forgets its process group while the id is still its own
    /// (it stays so until the child is reaped), then reaps it.
    fn waited(&mut self) -> std::io::Result<ExitStatus> {
        let pid = self.child.id();
        loop {
            // SAFETY: waits for our own child without reaping it (WNOWAIT), into a zeroed siginfo.
            let mut info = unsafe { std::mem::zeroed::<libc::siginfo_t>() };
            let done = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if done == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|&g| g != pid as libc::pid_t);
        self.child.wait()
    }
}

/// How a command that did not succeed ended, in words.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal} ({})", signal_name(signal)),
        (None, None) => format!("ended abnormally ({status})"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "another signal",
    }
}

/// Reads `stderr` to its end, showing each line through `progress` and returning the last
/// [`TAIL_LINES`] non-empty ones. Memory is one read buffer and a bounded line.
fn pass_on(mut stderr: impl Read, progress: &Progress) -> VecDeque<String> {
    let mut tail = VecDeque::with_capacity(TAIL_LINES + 1);
    let mut line = Vec::with_capacity(LINE_BYTES);
    let mut cut = false;
    let mut emit = |line: &mut Vec<u8>, cut: &mut bool| {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        let text = if *cut { format!("{text}…") } else { text };
        line.clear();
        *cut = false;
        if text.is_empty() {
            return;
        }
        progress.warn(&text);
        tail.push_back(text);
        if tail.len() > TAIL_LINES {
            tail.pop_front();
        }
    };
    let mut buffer = [0u8; 8192];
    loop {
        let read = match stderr.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &byte in &buffer[..read] {
            if byte == b'\n' {
                emit(&mut line, &mut cut);
            } else if line.len() < LINE_BYTES {
                line.push(byte);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() || cut {
        emit(&mut line, &mut cut);
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(line: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", line]);
        command
    }

    /// Runs `line`, reads its output to the end, and returns the output and how it finished.
    fn run(line: &str) -> (Vec<u8>, Result<()>) {
        let progress = Progress::hidden();
        std::thread::scope(|scope| {
            let mut running = start(scope, sh(line), &progress).unwrap();
            let mut out = Vec::new();
            running.stdout().read_to_end(&mut out).unwrap();
            (out, running.finish())
        })
    }

    #[test]
    fn success_is_exit_status_zero_and_nothing_else() {
        // A signal the command sends itself ends it, whatever mask this process has.
        let message = run("echo x; kill -TERM $$").1.unwrap_err().to_string();
        assert!(message.contains("killed by signal 15 (SIGTERM)"), "{message}");
        let (out, finished) = run("printf 'a\\nb'; echo note >&2");
        assert_eq!(out, b"a\nb");
        assert!(finished.is_ok());
        let (out, finished) = run("echo partial; echo 'dump failed: disk full' >&2; exit 3");
        assert_eq!(out, b"partial\n");
        let message = finished.unwrap_err().to_string();
        assert!(message.contains("exited with status 3"), "{message}");
        assert!(message.contains("\"dump failed: disk full\""), "{message}");
        let message = run("kill -KILL $$").1.unwrap_err().to_string();
        assert!(message.contains("killed by signal 9 (SIGKILL)"), "{message}");
    }

    #[test]
    fn the_tail_is_the_last_lines_each_bounded() {
        let line =
            "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1";
        let message = run(line).1.unwrap_err().to_string();
        // The last five lines: line4 to line7, and the long one, cut.
        assert!(!message.contains("line3") && message.contains("\"line4\"") && message.contains("\"line7\""));
        assert!(message.contains("xxx…\""), "{message}");
        assert!(message.len() < 2500, "{} bytes", message.len());
    }

    #[test]
    fn a_command_that_cannot_start_is_an_error() {
        let progress = Progress::hidden();
        let failed = std::thread::scope(|scope| {
            start(scope, Command::new("/nonexistent/cairn-no-such-program"), &progress).err()
        });
        let message = failed.unwrap().to_string();
        assert!(
            message.contains("command (--stdin-from-command, or the source's `command`) could not be started"),
            "{message}"
        );
    }
}
