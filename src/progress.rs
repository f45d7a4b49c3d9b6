//! Progress display: an indicatif bar on stderr when it is a terminal and `--quiet` is off,
//! nothing otherwise. The counters always run, so summaries do not depend on the display.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
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
        Progress { bar, files: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    /// A progress that never draws (library use and tests).
    pub fn hidden() -> Progress {
        Progress { bar: None, files: AtomicU64::new(0), bytes: AtomicU64::new(0) }
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
