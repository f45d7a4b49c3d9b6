//! A compression dictionary file (store-format/dictionary.md): the raw bytes of a zstd
//! dictionary in an envelope.

use super::envelope;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"CAIRNDCT";
pub const VERSION: u16 = 1;

/// The most bytes a dictionary may have: cairn trains 112 KiB ones; a larger one is damage or
/// hostile.
pub const MAX_LEN: usize = 1 << 20;

/// The plain envelope of a dictionary (sealed afterwards, like every envelope file).
pub fn encode(dictionary: &[u8]) -> Vec<u8> {
    envelope::seal(MAGIC, VERSION, dictionary)
}

/// The dictionary's bytes, from a plain envelope.
pub fn decode<'a>(data: &'a [u8], file: &'a str) -> Result<&'a [u8]> {
    let (_version, body) = envelope::open(data, MAGIC, VERSION, file)?;
    if body.is_empty() || body.len() > MAX_LEN {
        return Err(Error::corrupt(file, format!("a dictionary of {} bytes", body.len())));
    }
    Ok(body)
}
