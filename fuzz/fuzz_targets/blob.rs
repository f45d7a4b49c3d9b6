//! `decompress` on untrusted stored bytes must return an error or exactly `raw_len` plain bytes,
//! never panic, and plain bytes must survive compress then decompress unchanged.
//!
//! Input layout: byte 0 picks the codec (even: raw, odd: zstd), bytes 1..5 are `raw_len`
//! (little-endian, clamped to 1 MiB so one input cannot ask for a huge buffer), the rest is the
//! stored blob.
#![no_main]

use cairn::compression::{compress, decompress};
use cairn::format::pack::Codec;
use libfuzzer_sys::fuzz_target;

const MAX_RAW_LEN: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let codec = if data[0] % 2 == 0 {
        Codec::Raw
    } else {
        Codec::Zstd
    };
    let raw_len = u32::from_le_bytes([data[1], data[2], data[3], data[4]]).min(MAX_RAW_LEN);
    let stored = &data[5..];
    if let Ok(plain) = decompress(codec, stored, raw_len, "blob") {
        assert_eq!(
            plain.len(),
            raw_len as usize,
            "decompress returned the wrong length"
        );
        let (codec, stored) = compress(&plain, 3);
        let again =
            decompress(codec, &stored, raw_len, "blob").expect("a compressed blob must decompress");
        assert_eq!(again, plain, "blob changed across compress and decompress");
    }
});
