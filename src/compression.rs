//! Per-blob zstd compression. A blob is stored raw when compression would not make it smaller,
//! so incompressible data costs nothing extra to restore.

use std::cell::RefCell;

use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

use crate::error::{Error, Result};
use crate::format::pack::Codec;
use crate::id::Id;

/// The largest plain blob cairn will decode: a guard against a damaged length asking for an
/// absurd allocation. Data chunks are at most 16 MiB; trees of huge directories stay far below.
pub const MAX_BLOB_LEN: u32 = 1 << 30;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    /// Creating a zstd context costs more than decoding a small tree blob: one per thread.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// The contexts that compress and decompress with a [`Dictionary`], one each per thread.
    static WITH_DICTIONARY: RefCell<Option<(CCtx<'static>, DCtx<'static>)>> = const { RefCell::new(None) };
}

/// The size of the dictionaries cairn trains: zstd's own default, 112 KiB.
pub const DICTIONARY_SIZE: usize = 112 * 1024;

/// A zstd dictionary, prepared for compressing and decompressing blobs (codec
/// [`Codec::ZstdDict`], store-format/dictionary.md). Its id is the name of its file.
pub struct Dictionary {
    pub id: Id,
    decompress: DDict<'static>,
    /// The bytes and the level, for `compress`, which only a snapshot needs: made once, then.
    bytes: Vec<u8>,
    level: i32,
    compress: std::sync::OnceLock<Option<CDict<'static>>>,
}

impl Dictionary {
    /// Prepares the dictionary `bytes` (a file's content) for decompression, and for compression
    /// at `level` once asked to; `None` if zstd cannot load it.
    pub fn new(id: Id, bytes: &[u8], level: i32) -> Option<Dictionary> {
        let decompress = DDict::try_create(bytes)?;
        Some(Dictionary { id, decompress, bytes: bytes.to_vec(), level, compress: std::sync::OnceLock::new() })
    }

    fn for_compression(&self) -> Option<&CDict<'static>> {
        self.compress.get_or_init(|| CDict::try_create(&self.bytes, self.level)).as_ref()
    }

    /// A dictionary of at most [`DICTIONARY_SIZE`] bytes trained on `samples`, cut into pieces of
    /// `piece` bytes (a database's pages); `None` when zstd finds too little to learn from.
    pub fn train(samples: &[u8], piece: usize) -> Option<Vec<u8>> {
        let sizes: Vec<usize> = samples.chunks(piece.max(1)).map(<[u8]>::len).collect();
        zstd::dict::from_continuous(samples, &sizes, DICTIONARY_SIZE).ok()
    }
}

fn with_dictionary_contexts<R>(work: impl FnOnce(&mut CCtx<'static>, &mut DCtx<'static>) -> R) -> Option<R> {
    WITH_DICTIONARY.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some((CCtx::try_create()?, DCtx::try_create()?));
        }
        let (c, d) = cell.as_mut().expect("just set");
        Some(work(c, d))
    })
}

/// Compresses `data` with `dictionary`: the dictionary's id, then the frame
/// ([`Codec::ZstdDict`]); or returns it raw if that is not smaller.
pub fn compress_with(data: &[u8], dictionary: &Dictionary) -> (Codec, Vec<u8>) {
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    let done = dictionary
        .for_compression()
        .and_then(|cdict| with_dictionary_contexts(|c, _| c.compress_using_cdict(&mut frame, data, cdict).is_ok()));
    match done {
        Some(true) if 32 + frame.len() < data.len() => {
            let mut out = Vec::with_capacity(32 + frame.len());
            out.extend_from_slice(&dictionary.id.0);
            out.extend_from_slice(&frame);
            (Codec::ZstdDict, out)
        }
        _ => (Codec::Raw, data.to_vec()),
    }
}

/// The id of the dictionary a [`Codec::ZstdDict`] blob's stored (opened) bytes name, and its frame.
pub fn dictionary_of(stored: &[u8]) -> std::result::Result<(Id, &[u8]), String> {
    match stored.split_first_chunk::<32>() {
        Some((id, frame)) => Ok((Id(*id), frame)),
        None => Err(format!("{} bytes: too short to name a dictionary", stored.len())),
    }
}

/// Decodes the frame of a [`Codec::ZstdDict`] blob with its dictionary into `plain` (replacing
/// what it held), which must come to `raw_len` bytes.
pub fn decompress_with(
    frame: &[u8],
    dictionary: &Dictionary,
    raw_len: u32,
    plain: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    decode_exactly(raw_len, plain, |plain| {
        plain.reserve(raw_len as usize);
        with_dictionary_contexts(|_, d| d.decompress_using_ddict(plain, frame, &dictionary.decompress))
            .ok_or_else(|| "zstd: no memory for a context".to_string())?
            .map(drop)
            .map_err(|code| format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
    })
}

/// Decodes into `plain` (emptied first) with `decode`, within the checks every codec shares: a
/// length no blob has is refused before anything is allocated, and the result must be exactly
/// `raw_len` bytes.
fn decode_exactly(
    raw_len: u32,
    plain: &mut Vec<u8>,
    decode: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    if raw_len > MAX_BLOB_LEN {
        return Err(format!("blob claims {raw_len} plain bytes"));
    }
    plain.clear();
    decode(plain)?;
    if plain.len() != raw_len as usize {
        return Err(format!("decoded to {} bytes, expected {raw_len}", plain.len()));
    }
    Ok(())
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
    decode_exactly(raw_len, plain, |plain| match codec {
        Codec::ZstdDict => Err("compressed with a dictionary, decoded without one".into()),
        Codec::Raw => {
            plain.extend_from_slice(stored);
            Ok(())
        }
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
                .map(drop)
                .map_err(|e| format!("zstd: {e}"))
        }
    })
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
    fn a_dictionary_compresses_pages_like_its_samples_and_names_itself() {
        let page = |seed: u32| -> Vec<u8> {
            let words = ["cairn", "snapshot", "restore", "page", "database", "chunk", "pack", "index"];
            let mut out = Vec::new();
            let mut x = seed.wrapping_mul(2654435761) | 1;
            while out.len() < 4096 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                out.extend_from_slice(words[(x % 8) as usize].as_bytes());
                out.extend_from_slice(format!(" {} ", x % 1000).as_bytes());
            }
            out.truncate(4096);
            out
        };
        let samples: Vec<u8> = (0..512).flat_map(page).collect();
        let bytes = Dictionary::train(&samples, 4096).expect("enough to learn from");
        let dictionary = Dictionary::new(Id::of(b"d"), &bytes, 3).unwrap();
        let fresh = page(100_000);
        let (codec, stored) = compress_with(&fresh, &dictionary);
        assert_eq!(codec, Codec::ZstdDict);
        assert!(stored.len() < compress(&fresh, 3).1.len(), "the dictionary helps");
        let (named, frame) = dictionary_of(&stored).unwrap();
        assert_eq!(named, dictionary.id);
        let mut plain = Vec::new();
        decompress_with(frame, &dictionary, fresh.len() as u32, &mut plain).unwrap();
        assert_eq!(plain, fresh);
        // Without it, with another one, cut short or with the wrong length: errors.
        assert!(decompress(Codec::ZstdDict, &stored, fresh.len() as u32, "t").is_err());
        let other = Dictionary::new(Id::of(b"o"), &Dictionary::train(&samples[4096..], 4096).unwrap(), 3).unwrap();
        let mut wrong = Vec::new();
        assert!(decompress_with(frame, &other, fresh.len() as u32, &mut wrong).map_or(true, |()| wrong != fresh));
        assert!(decompress_with(&frame[..frame.len() / 2], &dictionary, fresh.len() as u32, &mut plain).is_err());
        assert!(decompress_with(frame, &dictionary, fresh.len() as u32 - 1, &mut plain).is_err());
        assert!(dictionary_of(&stored[..31]).is_err());
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
