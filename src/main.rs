//! The `cairn` binary: parse arguments, run the command, turn the outcome into an exit code
//! (0 success, 1 failure, 3 snapshot stored but incomplete).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
