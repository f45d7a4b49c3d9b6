//! The envelope shared by the config, index and snapshot files: magic, version, encryption mode,
//! body length, body, BLAKE3 checksum. See store-format/README.md, "Envelope".

use super::{Put, Reader};
use crate::error::{Error, Result};

/// Magic, version, encryption, reserved, body length.
pub const HEADER_LEN: usize = 8 + 2 + 1 + 1 + 8;
/// Header plus checksum.
pub const OVERHEAD: usize = HEADER_LEN + 32;

/// `encryption` values: a plain body, or a body sealed with AES-256-GCM
/// (store-format/encryption.md).
pub const ENCRYPTION_NONE: u8 = 0;
pub const ENCRYPTION_AES256GCM: u8 = 1;

/// Seals the body of a plain envelope (as [`seal`] makes it): same magic and version, mode
/// [`ENCRYPTION_AES256GCM`], the header authenticated with the body, a new checksum.
/// Seals an encoded envelope file before it is written: encrypted under `keys`, unchanged
/// without them.
pub fn seal_file(plain: Vec<u8>, keys: Option<&crate::crypto::Keys>) -> Vec<u8> {
    match keys {
        Some(keys) => encrypt(&plain, keys),
        None => plain,
    }
}

pub fn encrypt(plain: &[u8], keys: &crate::crypto::Keys) -> Vec<u8> {
    let body = &plain[HEADER_LEN..plain.len() - 32];
    let sealed_len = body.len() + crate::crypto::OVERHEAD;
    let mut out = Vec::with_capacity(sealed_len + OVERHEAD);
    out.extend_from_slice(&plain[..10]);
    out.put_u8(ENCRYPTION_AES256GCM);
    out.put_u8(0);
    out.put_u64(sealed_len as u64);
    let sealed = keys.seal(&out, body);
    out.extend_from_slice(&sealed);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Whether `data` is a sealed envelope (by its mode byte; nothing else is checked).
pub fn is_encrypted(data: &[u8]) -> bool {
    data.len() > 10 && data[10] == ENCRYPTION_AES256GCM
}

/// The plain envelope of a sealed one, for the decoders: checks length and checksum first (so
/// damage reads as damage), then authenticates and opens the body. `keys` is `None` in a
/// repository without encryption, where a sealed file is an error.
pub fn decrypt(data: &[u8], keys: Option<&crate::crypto::Keys>, file: &str) -> Result<Vec<u8>> {
    if data.len() < OVERHEAD {
        return Err(Error::corrupt(file, "truncated"));
    }
    let body_len = u64::from_le_bytes(data[12..20].try_into().expect("8"));
    if body_len != (data.len() - OVERHEAD) as u64 {
        return Err(Error::corrupt(file, "length mismatch: the file is truncated or damaged"));
    }
    let body_end = data.len() - 32;
    if blake3::hash(&data[..body_end]).as_bytes() != &data[body_end..] {
        return Err(Error::corrupt(file, "checksum mismatch: the file is damaged"));
    }
    let keys = keys.ok_or_else(|| Error::corrupt(file, "encrypted, but the repository has no key"))?;
    let body = keys.open(&data[..HEADER_LEN], &data[HEADER_LEN..body_end], file)?;
    let mut out = Vec::with_capacity(body.len() + OVERHEAD);
    out.extend_from_slice(&data[..10]);
    out.put_u8(ENCRYPTION_NONE);
    out.put_u8(0);
    out.put_u64(body.len() as u64);
    out.extend_from_slice(&body);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    Ok(out)
}

/// Wraps `body` in an envelope.
pub fn seal(magic: &[u8; 8], version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + OVERHEAD);
    out.extend_from_slice(magic);
    out.put_u16(version);
    out.put_u8(ENCRYPTION_NONE);
    out.put_u8(0);
    out.put_u64(body.len() as u64);
    out.extend_from_slice(body);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Checks magic, version, length and checksum; returns the version and the body.
pub fn open<'a>(data: &'a [u8], magic: &[u8; 8], max_version: u16, file: &'a str) -> Result<(u16, &'a [u8])> {
    let mut reader = Reader::new(data, file);
    if reader.bytes(8)? != magic {
        return Err(Error::corrupt(file, format!("not a {} file (bad magic)", String::from_utf8_lossy(magic))));
    }
    let version = reader.u16()?;
    let encryption = reader.u8()?;
    let reserved = reader.u8()?;
    let body_len = reader.u64()?;
    if reader.remaining() < 32 || body_len != (reader.remaining() - 32) as u64 {
        return Err(Error::corrupt(
            file,
            format!(
                "length mismatch: header says {body_len} body bytes, file has {}: the file is truncated or damaged",
                data.len()
            ),
        ));
    }
    // The checksum comes before interpreting version and mode, so that a damaged file is
    // reported as damaged, not as one from a newer cairn.
    let body_end = data.len() - 32;
    if blake3::hash(&data[..body_end]).as_bytes() != &data[body_end..] {
        return Err(Error::corrupt(file, "checksum mismatch: the file is damaged"));
    }
    if version == 0 || version > max_version {
        return Err(Error::UnsupportedVersion {
            file: file.to_string(),
            what: "file format",
            found: version.into(),
            supported: max_version.into(),
        });
    }
    if encryption != ENCRYPTION_NONE {
        return Err(Error::corrupt(file, format!("unknown encryption mode {encryption}")));
    }
    if reserved != 0 {
        return Err(Error::corrupt(file, "reserved header byte is not zero"));
    }
    Ok((version, &data[HEADER_LEN..body_end]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let sealed = seal(b"CAIRNTST", 1, &body);
            let (version, opened) = open(&sealed, b"CAIRNTST", 1, "t").unwrap();
            prop_assert_eq!(version, 1);
            prop_assert_eq!(opened, &body[..]);
        }

        #[test]
        fn any_damage_is_an_error(body in proptest::collection::vec(any::<u8>(), 0..64), at in any::<usize>(), cut in any::<usize>()) {
            let sealed = seal(b"CAIRNTST", 1, &body);
            let mut flipped = sealed.clone();
            let at = at % flipped.len();
            flipped[at] ^= 0x40;
            prop_assert!(open(&flipped, b"CAIRNTST", 1, "t").is_err());
            let cut = cut % sealed.len();
            prop_assert!(open(&sealed[..cut], b"CAIRNTST", 1, "t").is_err());
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = open(&data, b"CAIRNTST", 1, "t");
        }
    }
}
