//! SIGINT, SIGTERM and SIGHUP: a run they end still leaves its audit record. The signals are
//! blocked in every thread from the start of `main` and taken by one thread with `sigwait`, which
//! may then do what a handler may not: clear the progress bar, write the failed records of the
//! runs still open ([`cairn::audit::interrupted`]), say so, and exit with 128 + the signal, as a
//! shell reports a process a signal ended. A command that stops cleanly by itself (a drill
//! removes its scratch directory) asks for [`CANCEL`] to be set instead ([`cancel_instead`]); a

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::sync::Mutex;

/// Set by a signal once [`cancel_instead`] was called.
pub static CANCEL: AtomicBool = AtomicBool::new(false);
/// The signal that set [`CANCEL`].
pub static SIGNAL: AtomicI32 = AtomicI32::new(0);
static GRACEFUL: AtomicBool = AtomicBool::new(false);
/// Child processes that a signal is passed on to (`cairn run`'s current step).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set once a signal is ending the process: a thread whose child ended goes no further.
static ENDING: AtomicBool = AtomicBool::new(false);
/// Called with why, once the records are written, before the process exits (`cairn run`'s
/// failure ping).
type OnEnd = Box<dyn FnOnce(&str) + Send>;
static ON_END: Mutex<Vec<OnEnd>> = Mutex::new(Vec::new());

/// Calls `then` with why, if a signal ends the process.
pub fn on_end(then: impl FnOnce(&str) + Send + 'static) {
    ON_END.lock().expect("poisoned").push(Box::new(then));
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A repeat of the signal that started a graceful cancel within this long is ignored.
const ECHO: std::time::Duration = std::time::Duration::from_secs(2);

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the signals and starts the thread that takes them. Called first in `main`, before any
/// other thread exists, so that every thread inherits the mask.
pub fn install() {
    let set = set();
    // SAFETY: sets this thread's signal mask from a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut cancelled: Option<(libc::c_int, std::time::Instant)> = None;
            loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: waits for one of the blocked signals of a valid set.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                if GRACEFUL.load(SeqCst) {
                    if !CANCEL.load(SeqCst) {
                        SIGNAL.store(signal, SeqCst);
                        CANCEL.store(true, SeqCst);
                        cancelled = Some((signal, std::time::Instant::now()));
                        continue;
                    }
                    // systemd signals every process of the unit and `cairn run` passes it on too:
                    // the same signal again at once is that echo, not a second Ctrl-C.
                    if cancelled.is_some_and(|(first, at)| first == signal && at.elapsed() < ECHO) {
                        continue;
                    }
                }
                end(signal);
            }
        })
        .expect("a thread for signals");
}

/// From now on a signal sets [`CANCEL`] (the command stops by itself) rather than ending the
/// process; a second one still ends it.
pub fn cancel_instead() {
    GRACEFUL.store(true, SeqCst);
}

/// The child `pid` has ended: signals are no longer passed to it.
fn child_ended(pid: u32) {
    CHILDREN.lock().expect("poisoned").retain(|&p| p != pid);
}

pub fn name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Ends the process on `signal`: the children first (each writes its own record; waited for at
/// most 30 s), then the records of this process's open runs.
fn end(signal: libc::c_int) -> ! {
    // Under the children's lock: no step starts after this ([`output`] looks under it too).
    let guard = CHILDREN.lock();
    ENDING.store(true, SeqCst);
    let children = guard.as_deref().map_or(Vec::new(), |children| children.clone());
    drop(guard);
    for &pid in &children {
        // SAFETY: sends a signal to the process group of a child we started as its leader.
        unsafe { libc::kill(-(pid as libc::pid_t), signal) };
    }
    // Until the thread that waits for each has seen it end (and all its output, which a
    // grandchild could hold open).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while CHILDREN.lock().is_ok_and(|c| !c.is_empty()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cairn::progress::clear_line();
    let why = format!("interrupted by {}", name(signal));
    for failure in cairn::audit::interrupted(&why) {
        errln!("warning: {failure}");
    }
    for then in ON_END.lock().map(|mut hooks| std::mem::take(&mut *hooks)).unwrap_or_default() {
        then(&why);
    }
    errln!("error: {why}; the run is recorded as failed");
    // Last: a command source's end would let the snapshot fail by itself first (exit code 1),
    // racing this exit. Its shell also gets SIGTERM from the kernel once this process is gone.
    cairn::source::command::signal_running(signal);
    std::process::exit(128 + signal)
}

/// How much of a child's standard output and error [`output`] keeps: the first and the last
/// this many bytes of each, the bytes between counted. A dump tool run verbose (`pg_dump -v`)
/// writes megabytes to its error output every run; kept whole, they filled memory, every run's
/// audit record and the notifications (14 MB of stderr made a 19 MB audit record).
pub const KEPT: usize = 64 << 10;

/// [`std::process::Command::output`], passing the signals on to the child while it runs: it
/// leads a process group of its own, which gets them (a hook's own children included). Of each
/// stream the first and last [`KEPT`] bytes are kept.
pub fn output(command: &mut std::process::Command) -> std::io::Result<std::process::Output> {
    output_keeping(command, KEPT)
}

/// [`output`], keeping up to `stdout_head` bytes of the start of standard output (for a child
/// whose whole output is one JSON document).
pub fn output_keeping(
    command: &mut std::process::Command,
    stdout_head: usize,
) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let child = {
        let mut children = CHILDREN.lock().expect("poisoned");
        if ENDING.load(SeqCst) {
            // A signal is ending the process: this step must not start.
            drop(children);
            wait_for_the_end();
        }
        // This process blocks the signals to take them on one thread, and a child keeps the mask
        // it is spawned with (Rust no longer clears it): a hook would ignore the very signal
        // passed on to it. It starts with none blocked. A signal this process cannot pass on
        // (SIGKILL, the OOM killer) must not leave the child running on its own, under the next
        // run's steps: it gets SIGTERM when this process (the thread waiting for it) ends.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only sigemptyset, pthread_sigmask, prctl and getppid
        // run, which are async-signal-safe and allocate nothing.
        unsafe {
            command.pre_exec(move || {
                let mut none = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("cairn ended while the step was starting"));
                }
                Ok(())
            });
        }
        let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn()?;
        children.push(child.id());
        child
    };
    let pid = child.id();
    let output = wait_keeping(child, stdout_head);
    child_ended(pid);
    if ENDING.load(SeqCst) {
        // The next step must not start while the signal's thread ends the process.
        wait_for_the_end();
    }
    output
}

/// Reads the child's two streams at once (neither can fill its pipe and stall the child while
/// the other is read) into bounded buffers, then waits for it.
fn wait_keeping(mut child: std::process::Child, stdout_head: usize) -> std::io::Result<std::process::Output> {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (stdout, stderr) = std::thread::scope(|scope| {
        let err = scope.spawn(move || stderr.map(|s| kept(s, KEPT, KEPT)).unwrap_or(Ok(Vec::new())));
        let out = stdout.map(|s| kept(s, stdout_head, KEPT)).unwrap_or(Ok(Vec::new()));
        (out, err.join().unwrap_or_else(|_| Ok(Vec::new())))
    });
    let status = child.wait()?;
    Ok(std::process::Output { status, stdout: stdout?, stderr: stderr? })
}

/// All of `reader`, or its first `head` and last `tail` bytes with a line between them that
/// says how many were left out.
fn kept(mut reader: impl std::io::Read, head: usize, tail: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut start = Vec::new();
    (&mut reader).take(head as u64).read_to_end(&mut start)?;
    let mut end: std::collections::VecDeque<u8> = std::collections::VecDeque::with_capacity(tail);
    let mut buffer = vec![0u8; 16 << 10];
    let mut left_out = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        end.extend(&buffer[..n]);
        while end.len() > tail {
            let drop = end.len() - tail;
            end.drain(..drop);
            left_out += drop as u64;
        }
    }
    if left_out > 0 {
        start.extend_from_slice(format!("\n[... {left_out} bytes left out ...]\n").as_bytes());
    }
    start.extend(end);
    Ok(start)
}

/// Waits for the signal's thread to end the process.
fn wait_for_the_end() -> ! {
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_its_start_and_its_end() {
        assert_eq!(kept(&b"short"[..], 4, 4).unwrap(), b"short");
        assert_eq!(kept(&b"12345678"[..], 4, 4).unwrap(), b"12345678");
        let long: Vec<u8> = (0..100u8).collect();
        let out = kept(&long[..], 4, 3).unwrap();
        assert_eq!(out, [&[0, 1, 2, 3][..], b"\n[... 93 bytes left out ...]\n", &[97, 98, 99]].concat());
    }
}
