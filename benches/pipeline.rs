//! Throughput of the backup hot path, one stage at a time (chunking, hashing, compression), so a
//! regression points at the stage that caused it. Inputs are deterministic: the same bytes on
//! every run and every machine.
//!
//! Sample counts and measurement times are kept small so that `cargo bench --bench pipeline`
//! finishes in well under two minutes; pass `-- --quick` for a faster, rougher run.

use std::hint::black_box;
use std::time::Duration;

use cairn::chunking::Chunker;
use cairn::compression::{compress, decompress};
use cairn::format::config::ChunkerParams;
use cairn::format::pack::Codec;
use cairn::id::Id;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};

const MIB: usize = 1024 * 1024;
/// Large enough for dozens of default-sized chunks (1 MiB average, 4 MiB maximum).
const STREAM_LEN: usize = 64 * MIB;
/// About one default-sized chunk: the unit that gets hashed and compressed.
const BLOB_LEN: usize = MIB;
/// The repository default (`Config::new_random`).
const LEVEL: i32 = 3;

/// Pseudo-random bytes from xorshift64: incompressible, and cut into chunks whose lengths spread
/// around the average, as real data is.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Log-like text: lines of words drawn from a small vocabulary with pseudo-random numbers, which
/// zstd shrinks severalfold, as it does real logs and source trees.
fn text(len: usize) -> Vec<u8> {
    let words: Vec<&str> = "INFO WARN backup chunk stored pack index snapshot tree blob bytes from \
        into the a of reading directory file done"
        .split_whitespace()
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out = Vec::with_capacity(len + 128);
    while out.len() < len {
        out.extend_from_slice(format!("2024-05-{:02} ", next() % 28 + 1).as_bytes());
        for _ in 0..next() % 10 + 3 {
            out.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(format!("{}\n", next() % 100_000).as_bytes());
    }
    out.truncate(len);
    out
}

/// A group measured in bytes of input per second, with a small budget.
fn measured_group<'a>(c: &'a mut Criterion, name: &str, bytes: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Bytes(bytes as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group
}

fn chunking(c: &mut Criterion) {
    let data = noise(STREAM_LEN, 1);
    let chunker = Chunker::new(ChunkerParams::default());
    let mut group = measured_group(c, "chunking", data.len());
    // One pass over 64 MiB takes tens of milliseconds: one iteration per sample is plenty.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("fastcdc_default_64MiB", |b| b.iter(|| chunker.cut_window(black_box(&data), true)));
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let stream = noise(STREAM_LEN, 2);
    let blob = &stream[..BLOB_LEN];

    let mut group = measured_group(c, "hashing", blob.len());
    group.bench_function("id_of_1MiB", |b| b.iter(|| Id::of(black_box(blob))));
    group.finish();

    let mut group = measured_group(c, "hashing", stream.len());
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("blake3_64MiB", |b| b.iter(|| blake3::hash(black_box(&stream))));
    group.finish();
}

fn compression(c: &mut Criterion) {
    // Random data is stored raw, so its compression cost is a wasted zstd pass plus a copy.
    let inputs = [("text", text(BLOB_LEN), Codec::Zstd), ("random", noise(BLOB_LEN, 3), Codec::Raw)];
    let mut group = measured_group(c, "compression", BLOB_LEN);
    for (name, plain, expected) in &inputs {
        let (codec, stored) = compress(plain, LEVEL);
        assert_eq!(codec, *expected, "{name} data stored with an unexpected codec");
        let raw_len = plain.len() as u32;
        group.bench_function(format!("compress_{name}_1MiB"), |b| b.iter(|| compress(black_box(plain), LEVEL)));
        group.bench_function(format!("decompress_{name}_1MiB"), |b| {
            b.iter(|| decompress(codec, black_box(&stored), raw_len, "bench").unwrap())
        });
    }
    group.finish();
}

fn sealing(c: &mut Criterion) {
    let keys = cairn::crypto::Keys::new(cairn::crypto::MasterKey::random());
    let blob = noise(1 << 20, 9);
    let sealed = keys.seal(b"id", &blob);
    let mut group = measured_group(c, "sealing", blob.len());
    group.bench_function("seal_1MiB", |b| b.iter(|| keys.seal(b"id", black_box(&blob))));
    group.bench_function("open_1MiB", |b| b.iter(|| keys.open(b"id", black_box(&sealed), "b")));
    let page = noise(4096, 10);
    group.throughput(Throughput::Bytes(page.len() as u64));
    group.bench_function("seal_4KiB_page", |b| b.iter(|| keys.seal(b"id", black_box(&page))));
    group.finish();
}

criterion_group!(benches, chunking, hashing, compression, sealing);
criterion_main!(benches);
