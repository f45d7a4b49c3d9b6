//! Per-blob zstd compression. A blob is stored raw when compression would not make it smaller,
//! so incompressible data costs nothing extra to restore.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::format::pack::Codec;

/// The largest plain blob cairn will decode: a guard against a damaged length asking for an
/// absurd allocation. Data chunks are at most 16 MiB; trees of huge directories stay far below.
pub const MAX_BLOB_LEN: u32 = 1 << 30;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    /// Creating a zstd context costs more than decoding a small tree blob: one per thread.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` at `level`, or returns it raw if that is not smaller.
pub fn compress(data: &[u8], level: i32) -> (Codec, Vec<u8>) {
    let compressed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().map(|(l, _)| *l) != Some(level) {
            *cell = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        cell.as_mut().and_then(|(_, c)| c.compress(data).ok())
    });
    match compressed {
        Some(out) if out.len() < data.len() => (Codec::Zstd, out),
        _ => (Codec::Raw, data.to_vec()),
    }
}

/// Decodes stored bytes back to the plain blob of `raw_len` bytes. `what` names the blob in errors.
pub fn decompress(codec: Codec, stored: &[u8], raw_len: u32, what: &str) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    decompress_into(codec, stored, raw_len, &mut plain).map_err(|reason| Error::corrupt(what, reason))?;
    Ok(plain)
}

/// Like [`decompress`], into `plain` (replacing what it held, reusing its memory); the error is
/// the reason alone.
pub fn decompress_into(
    codec: Codec,
    stored: &[u8],
    raw_len: u32,
    plain: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    if raw_len > MAX_BLOB_LEN {
        return Err(format!("blob claims {raw_len} plain bytes"));
    }
    plain.clear();
    match codec {
        Codec::Raw => plain.extend_from_slice(stored),
        Codec::Zstd => {
            plain.reserve(raw_len as usize);
            DECOMPRESSOR
                .with(|cell| {
                    let mut cell = cell.borrow_mut();
                    if cell.is_none() {
                        *cell = Some(zstd::bulk::Decompressor::new()?);
                    }
                    cell.as_mut().expect("just set").decompress_to_buffer(stored, plain)
                })
                .map_err(|e| format!("zstd: {e}"))?;
        }
    }
    if plain.len() != raw_len as usize {
        return Err(format!("decoded to {} bytes, expected {raw_len}", plain.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_data_shrinks_and_noise_stays_raw() {
        let text = b"cairn ".repeat(1000);
        let (codec, stored) = compress(&text, 3);
        assert_eq!(codec, Codec::Zstd);
        assert!(stored.len() < text.len() / 10);
        assert_eq!(decompress(codec, &stored, text.len() as u32, "t").unwrap(), text);

        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (codec, stored) = compress(&noise, 3);
        assert_eq!(decompress(codec, &stored, noise.len() as u32, "t").unwrap(), noise);
    }

    #[test]
    fn damaged_streams_are_errors() {
        let text = b"cairn ".repeat(1000);
        let (_, mut stored) = compress(&text, 3);
        stored.truncate(stored.len() / 2);
        assert!(decompress(Codec::Zstd, &stored, text.len() as u32, "t").is_err());
        assert!(decompress(Codec::Zstd, b"garbage", 10, "t").is_err());
        assert!(decompress(Codec::Raw, b"abc", 4, "t").is_err());
    }
}
