//! Dictionary files and the blobs compressed with them (store-format/dictionary.md): no panic on
//! any bytes, whether as a dictionary file, as a dictionary zstd is asked to load, or as a blob's
//! stored bytes decoded with one; what decodes is exactly `raw_len` bytes, and plain bytes survive
//! compression with a dictionary unchanged.
//!
//! Input layout: bytes 0..2 are the dictionary's length `n` (little-endian), bytes 2..6 `raw_len`
//! (clamped to 1 MiB), then `n` bytes of dictionary, then the stored blob.
#![no_main]

use cairn::compression::{compress_with, decompress_with, dictionary_of, Dictionary};
use cairn::format::dictionary::{decode, encode};
use cairn::format::pack::Codec;
use cairn::id::Id;
use libfuzzer_sys::fuzz_target;

const MAX_RAW_LEN: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, "dicts/x");
    if data.len() < 6 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 6);
    let raw_len = u32::from_le_bytes([data[2], data[3], data[4], data[5]]).min(MAX_RAW_LEN);
    let (bytes, stored) = data[6..].split_at(n);
    let file = encode(bytes);
    let Ok(bytes) = decode(&file, "dicts/x") else { return };
    let Some(dictionary) = Dictionary::new(Id::of(&file), bytes, 3) else { return };
    let _ = dictionary_of(stored);
    let mut plain = Vec::new();
    if decompress_with(stored, &dictionary, raw_len, &mut plain).is_ok() {
        assert_eq!(plain.len(), raw_len as usize, "decoded to the wrong length");
        let (codec, again) = compress_with(&plain, &dictionary);
        if codec == Codec::ZstdDict {
            let (named, frame) = dictionary_of(&again).expect("names its dictionary");
            assert_eq!(named, dictionary.id);
            let mut back = Vec::new();
            decompress_with(frame, &dictionary, raw_len, &mut back).expect("a compressed blob decodes");
            assert_eq!(back, plain, "blob changed across compression with a dictionary");
        }
    }
});
