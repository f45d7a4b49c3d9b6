//! Lines to stdout and stderr that never panic (`println!` panics when its reader is gone).
//!
//! A reader that goes away (`cairn ls latest | head -1`) ends the output quietly, as ripgrep's
//! does: nothing more is printed and the exit code is the command's own. A command that changes
//! the repository still finishes its work; only its report is lost. Any other failure to write
//! stdout (a full disk behind `> file`) is remembered, and [`failure`] turns the command's success
//! into an error at the end, so a truncated listing never passes for a whole one.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

/// Set once stdout's reader has gone away.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// The first other error writing stdout.
static FAILED: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// `println!` that never panics (see the module docs).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics: a message nobody can read any more is dropped.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::output::error_line(format_args!($($arg)*)) };
}

/// Writes one line to stdout, unless an earlier write failed.
pub fn line(args: std::fmt::Arguments) {
    text(format_args!("{args}\n"));
}

/// Writes `args` to stdout as they are, unless an earlier write failed.
pub fn text(args: std::fmt::Arguments) {
    write(|out| out.write_fmt(args));
}

/// Writes `bytes` to stdout as they are (a file's content), unless an earlier write failed.
pub fn bytes(bytes: &[u8]) {
    write(|out| out.write_all(bytes));
}

/// Runs `put` on stdout and flushes, unless an earlier write failed; a reader gone away closes
/// the output, another failure is kept for [`failure`].
fn write(put: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    if closed() || FAILED.lock().is_ok_and(|failed| failed.is_some()) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = put(&mut out).and_then(|()| out.flush()) {
        match e.kind() {
            ErrorKind::BrokenPipe => CLOSED.store(true, Relaxed),
            _ => {
                if let Ok(mut failed) = FAILED.lock() {
                    failed.get_or_insert(e);
                }
            }
        }
    }
}

/// Writes one line to stderr; a failure is ignored (there is nowhere left to report it).
pub fn error_line(args: std::fmt::Arguments) {
    _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Whether stdout's reader has gone away: a listing can stop.
pub fn closed() -> bool {
    CLOSED.load(Relaxed)
}

/// The error that stopped stdout, other than its reader going away.
pub fn failure() -> Option<std::io::Error> {
    FAILED.lock().ok().and_then(|mut failed| failed.take())
}
