//! `cargo bench --bench gen_repo -- --blobs N --out DIR`: writes a valid repository of N tiny
//! data blobs that two snapshots reference ([`generate`] says what it holds), and prints what it
//! wrote and how long that took. The repository is what `benches/big_index.sh` measures; see
//! benches/README.md.

mod generate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: gen_repo --blobs N --out DIR [--blob-size 16..64] [--pack-size BYTES] \
                     [--chunks-per-file N] [--files-per-dir N] [--fanout N]";

fn parse(arguments: Vec<String>) -> Result<generate::Options, String> {
    let mut options = generate::Options::new(0, PathBuf::new());
    let mut arguments = arguments.into_iter();
    while let Some(flag) = arguments.next() {
        // `cargo bench` passes `--bench` to every bench target.
        if flag == "--bench" {
            continue;
        }
        let value = arguments.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || value.replace('_', "").parse::<u64>().map_err(|_| format!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--blobs" => options.blobs = number()?,
            "--out" => options.out = PathBuf::from(&value),
            "--blob-size" => options.blob_size = number()? as usize,
            "--pack-size" => options.pack_size = Some(number()? as usize),
            "--chunks-per-file" => options.chunks_per_file = number()?,
            "--files-per-dir" => options.files_per_dir = number()?,
            "--fanout" => options.fanout = number()?,
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if options.out.as_os_str().is_empty() {
        return Err(format!("--out is required\n{USAGE}"));
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1).collect()) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("gen_repo: {message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let report = match generate::generate(&options) {
        Ok(report) => report,
        Err(message) => {
            eprintln!("gen_repo: {message}");
            return ExitCode::FAILURE;
        }
    };
    let hex = |id: Option<cairn::id::Id>| id.map(|id| id.to_hex()).unwrap_or_default();
    println!(
        "wrote {} blobs of {} bytes in {} files to {}: {} data packs, {} tree packs ({} trees), {} index files, {:.2} GB",
        options.blobs,
        options.blob_size,
        report.files,
        options.out.display(),
        report.data_packs,
        report.tree_packs,
        report.trees,
        report.index_files,
        report.bytes_written as f64 / 1e9
    );
    println!(
        "took {:.1} s (data packs and index {:.1} s, trees and snapshots {:.1} s)",
        started.elapsed().as_secs_f64(),
        report.seconds_data,
        report.seconds_trees
    );
    println!("snapshot all {}", hex(report.all));
    println!("snapshot part {}", hex(report.part));
    ExitCode::SUCCESS
}
