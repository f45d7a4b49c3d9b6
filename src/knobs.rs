//! Test knobs: environment variables that bend what a test would otherwise wait for or pay.
//! Only a build with the `test-knobs` feature reads them, and only `cargo test` and `cargo bench`
//! make one (the package's dev-dependency on itself turns the feature on); a binary from `cargo
//! build` reads none (benches/big_index.sh measures one of those for that reason).
//!
//! - `CAIRN_KDF_MEMORY_KIB`: the Argon2id memory of new key files (tests lower it).
//! - `CAIRN_CLOCK_OFFSET`: seconds added to this process's clock ([`crate::clock::now`]), so
//!   that a test runs a month of daily cycles in a minute.
//! - `CAIRN_NOW`: the time, in Unix seconds, that `cairn status` judges ages at.
//! - `CAIRN_PRUNE_PAUSE`: a directory where prune says `marked` after marking and waits for `go`,
//!   so that a test can change the repository in the middle of a plan.
//! - `CAIRN_STALL_SECS`: how long an object-store request may go without a byte before it is
//!   given up as stalled (60 s), so that a test of a stalled connection takes seconds.
//! - `CAIRN_RESTORE_PAUSE`: a directory where a restore over an existing target says `opened`
//!   just before its safety snapshot and waits for `go`, so that a test can swap the target's
//!   name for a decoy after the restore opened it.

/// The value of the knob `name`, if set; always `None` without the `test-knobs` feature.
pub fn get(name: &str) -> Option<String> {
    #[cfg(feature = "test-knobs")]
    return std::env::var(name).ok();
    #[cfg(not(feature = "test-knobs"))]
    {
        let _ = name;
        None
    }
}

/// With the knob `name` naming a directory: writes the file `said` there and waits for a file
/// `go` (at most a minute), so that a test can act at this point of a run.
pub fn pause(name: &str, said: &str) {
    let Some(dir) = get(name).map(std::path::PathBuf::from) else { return };
    let _ = std::fs::write(dir.join(said), b"");
    for _ in 0..1200 {
        if dir.join("go").exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
