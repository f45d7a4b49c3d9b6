//! Key files (`keys/<id>`): the repository's master key wrapped under one passphrase, with the
//! Argon2id parameters and salt that turn the passphrase into the wrapping key. A repository has
//! one key file per passphrase. The body is not sealed (it cannot be: it is how the master key is
//! found), but the wrapped key is, bound to the rest of the file. See
//! store-format/encryption.md.

use super::{envelope, Put, Reader};
use crate::crypto::{KdfParams, MASTER_LEN, OVERHEAD};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"CAIRNKEY";
pub const VERSION: u16 = 1;
/// The only key derivation function: Argon2id, version 0x13.
pub const KDF_ARGON2ID: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub kdf: KdfParams,
    pub salt: [u8; 32],
    pub created_ms: i64,
    pub hostname: String,
    /// The master key sealed under the wrapping key: nonce, ciphertext, tag.
    pub wrapped: Vec<u8>,
}

impl KeyFile {
    /// The bytes the wrapped key is bound to: everything but itself.
    pub fn binding(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.hostname.len());
        out.extend_from_slice(MAGIC);
        self.encode_fields(&mut out);
        out
    }

    fn encode_fields(&self, body: &mut Vec<u8>) {
        body.put_u8(KDF_ARGON2ID);
        body.put_u8(0);
        body.put_u16(0);
        body.put_u32(self.kdf.m_cost);
        body.put_u32(self.kdf.t_cost);
        body.put_u32(self.kdf.p_cost);
        body.extend_from_slice(&self.salt);
        body.put_i64(self.created_ms);
        body.put_bytes16(self.hostname.as_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(200);
        self.encode_fields(&mut body);
        body.put_bytes16(&self.wrapped);
        envelope::seal(MAGIC, VERSION, &body)
    }

    pub fn decode(data: &[u8], file: &str) -> Result<KeyFile> {
        let (_version, body) = envelope::open(data, MAGIC, VERSION, file)?;
        let mut r = Reader::new(body, file);
        let kdf = r.u8()?;
        if kdf != KDF_ARGON2ID {
            return Err(r.error(format!("unknown key derivation function {kdf}")));
        }
        if r.u8()? != 0 {
            return Err(r.error("reserved field is not zero"));
        }
        r.reserved16()?;
        let params = KdfParams { m_cost: r.u32()?, t_cost: r.u32()?, p_cost: r.u32()? };
        params.validate().map_err(|reason| Error::corrupt(file, reason))?;
        let salt = r.array::<32>()?;
        let created_ms = r.i64()?;
        let hostname = r.string16()?;
        let wrapped = r.bytes16()?.to_vec();
        if wrapped.len() != MASTER_LEN + OVERHEAD {
            return Err(r.error(format!("wrapped key is {} bytes, not {}", wrapped.len(), MASTER_LEN + OVERHEAD)));
        }
        r.finish()?;
        Ok(KeyFile { kdf: params, salt, created_ms, hostname, wrapped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(host: String, wrapped_byte: u8) -> KeyFile {
        KeyFile {
            kdf: KdfParams { m_cost: 65536, t_cost: 3, p_cost: 1 },
            salt: [7; 32],
            created_ms: 1_795_000_000_000,
            hostname: host,
            wrapped: vec![wrapped_byte; MASTER_LEN + OVERHEAD],
        }
    }

    proptest! {
        #[test]
        fn round_trip(host in "[a-z0-9.-]{0,40}", byte in any::<u8>()) {
            let key = sample(host, byte);
            prop_assert_eq!(KeyFile::decode(&key.encode(), "k").unwrap(), key);
        }

        #[test]
        fn truncation_and_noise_are_errors(cut in 0usize..300, data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let encoded = sample("host".into(), 1).encode();
            prop_assert!(KeyFile::decode(&encoded[..cut.min(encoded.len() - 1)], "k").is_err());
            prop_assert!(KeyFile::decode(&data, "k").is_err());
        }
    }
}
