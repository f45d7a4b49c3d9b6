//! Progress display: an indicatif bar on stderr when it is a terminal and `--quiet` is off,
//! nothing otherwise. The counters always run, so summaries do not depend on the display.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars drawn now, so that a signal that ends the process can take them off the screen.
static DRAWN: std::sync::Mutex<Vec<(u64, ProgressBar)>> = std::sync::Mutex::new(Vec::new());
static NEXT_BAR: AtomicU64 = AtomicU64::new(0);

/// Takes every bar off the screen (a signal is ending the process).
pub fn clear_line() {
    for (_, bar) in DRAWN.lock().map(|mut drawn| std::mem::take(&mut *drawn)).unwrap_or_default() {
        bar.finish_and_clear();
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Its entry in [`DRAWN`].
    number: u64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

impl Progress {
    /// `verb` is what the bar says it is doing ("snapshot", "restore").
    pub fn new(verb: &str, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            let template = format!(
                "{verb} {{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}} {{msg}}"
            );
            bar.set_style(ProgressStyle::with_template(&template).expect("static template").progress_chars("=> "));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        let number = NEXT_BAR.fetch_add(1, Relaxed);
        if let Some(bar) = &bar {
            DRAWN.lock().expect("poisoned").push((number, bar.clone()));
        }
        Progress { bar, number, files: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    /// A progress that never draws (library use and tests).
    pub fn hidden() -> Progress {
        Progress { bar: None, number: u64::MAX, files: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    pub fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }

    /// Grows the known total (from a scan that runs alongside the work).
    pub fn add_total(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(bytes);
        }
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// One file finished; `bytes` not already counted through [`Progress::add_bytes`].
    pub fn file_done(&self, bytes: u64) {
        let files = self.files.fetch_add(1, Relaxed) + 1;
        self.add_bytes(bytes);
        if let Some(bar) = &self.bar {
            if files % 64 == 1 {
                bar.set_message(format!("{files} files"));
            }
        }
    }

    /// Prints a warning above the bar, or on stderr. Warnings show even with `--quiet`: they
    /// say that something was not backed up or restored.
    pub fn warn(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            // A closed stderr is no reason to stop a backup.
            None => _ = writeln!(std::io::stderr().lock(), "{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.bar.is_some() {
            if let Ok(mut drawn) = DRAWN.lock() {
                drawn.retain(|(number, _)| *number != self.number);
            }
        }
    }
}
