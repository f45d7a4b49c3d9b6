//! Encryption at rest: the master key, the AEAD that seals every repository object, keyed blob
//! ids, and wrapping the master key under a passphrase. Layouts and the reasons behind each
//! choice: store-format/encryption.md.
//!
//! - Objects are sealed with AES-256-GCM under a key of their own: a random 24-byte nonce is
//!   stored with each object, and the object's key is BLAKE3 keyed with the repository's
//!   encryption key over that nonce. A key is thus never used twice (so GCM's nonce limits never
//!   come near), no nonce state is kept or shared between concurrent writers, and sealing runs at
//!   hardware AES speed (ring's AES-NI/VAES code: 5.5 GiB/s per core here, against 1.2 GiB/s for
//!   XChaCha20-Poly1305 and 1.5 GiB/s for AES-256-GCM in the RustCrypto crates).
//! - Blob ids are BLAKE3 keyed with a secret id key, so equal content still dedups within the
//!   repository but an id says nothing to anyone without the key.
//! - The master key is wrapped in key files by a key derived from a passphrase with Argon2id.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::error::{Error, Result};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of the master key material: the encryption key, the id key.
pub const MASTER_LEN: usize = 64;

/// The secret of a repository. Never stored in the clear.
#[derive(Clone)]
pub struct MasterKey {
    /// Derives the key of every sealed object.
    pub encryption: [u8; 32],
    /// Keys BLAKE3 for blob ids.
    pub id: [u8; 32],
}

impl MasterKey {
    pub fn random() -> MasterKey {
        MasterKey { encryption: secure_random(), id: secure_random() }
    }

    pub fn to_bytes(&self) -> [u8; MASTER_LEN] {
        let mut out = [0u8; MASTER_LEN];
        out[..32].copy_from_slice(&self.encryption);
        out[32..].copy_from_slice(&self.id);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<MasterKey> {
        (bytes.len() == MASTER_LEN).then(|| MasterKey {
            encryption: bytes[..32].try_into().expect("32"),
            id: bytes[32..].try_into().expect("32"),
        })
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// An open repository's keys.
#[derive(Clone)]
pub struct Keys {
    pub master: MasterKey,
}

impl Keys {
    pub fn new(master: MasterKey) -> Keys {
        Keys { master }
    }

    /// `nonce || ciphertext || tag`, with `aad` authenticated alongside.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_with(&self.master.encryption, aad, plain)
    }

    /// Opens what [`Keys::seal`] produced; `what` names the object in the error.
    pub fn open(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        let mut plain = Vec::new();
        open_with(&self.master.encryption, aad, sealed, &mut plain, what)?;
        Ok(plain)
    }

    /// Like [`Keys::open`], decrypting where the sealed bytes lie; returns the plain part of them.
    pub fn open_in_place<'a>(&self, aad: &[u8], sealed: &'a mut [u8], what: &str) -> Result<&'a [u8]> {
        if sealed.len() < OVERHEAD {
            return Err(open_failed(what));
        }
        let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
        Ok(open_body(&self.master.encryption, aad, (&*nonce).try_into().expect("24"), body, what)?)
    }

    /// Like [`Keys::open`], into `plain` (replacing what it held, reusing its memory).
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], plain: &mut Vec<u8>, what: &str) -> Result<()> {
        open_with(&self.master.encryption, aad, sealed, plain, what)
    }
}

/// The AES-256-GCM key of one object: BLAKE3 keyed with `key`, over the object's nonce.
fn object_key(key: &[u8; 32], nonce: &[u8; NONCE_LEN]) -> LessSafeKey {
    let derived = blake3::keyed_hash(key, nonce);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, derived.as_bytes()).expect("AES-256 takes 32-byte keys"))
}

/// The GCM nonce under an object key: its first 12 bytes of the stored nonce (the key is never
/// reused, so any fixed choice is safe).
fn gcm_nonce(nonce: &[u8; NONCE_LEN]) -> Nonce {
    Nonce::assume_unique_for_key(nonce[..12].try_into().expect("12"))
}

fn seal_with(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = secure_random();
    let mut out = Vec::with_capacity(OVERHEAD + plain.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = object_key(key, &nonce)
        .seal_in_place_separate_tag(gcm_nonce(&nonce), Aad::from(aad), &mut out[NONCE_LEN..])
        .expect("AES-256-GCM seals any length cairn writes");
    out.extend_from_slice(tag.as_ref());
    out
}

fn open_failed(what: &str) -> Error {
    Error::corrupt(
        what,
        "authentication failed: the object was changed or damaged (or sealed with another repository's key)",
    )
}

/// Opens `sealed` into `buffer` (replacing what it held).
fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8], buffer: &mut Vec<u8>, what: &str) -> Result<()> {
    if sealed.len() < OVERHEAD {
        return Err(open_failed(what));
    }
    buffer.clear();
    buffer.extend_from_slice(&sealed[NONCE_LEN..]);
    let plain_len = open_body(key, aad, sealed[..NONCE_LEN].try_into().expect("24"), buffer, what)?.len();
    buffer.truncate(plain_len);
    Ok(())
}

/// Decrypts and authenticates `body` (ciphertext and tag) where it lies; returns the plain part.
fn open_body<'a>(
    key: &[u8; 32],
    aad: &[u8],
    nonce: &[u8; NONCE_LEN],
    body: &'a mut [u8],
    what: &str,
) -> Result<&'a mut [u8]> {
    object_key(key, nonce).open_in_place(gcm_nonce(nonce), Aad::from(aad), body).map_err(|_| open_failed(what))
}

/// Bytes from the kernel's CSPRNG (`getrandom(2)`), for keys, salts and nonces.
pub fn secure_random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled part of `out`.
        let got = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if got > 0 {
            filled += got as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("the kernel gave no random bytes (getrandom failed): {}", std::io::Error::last_os_error());
        }
    }
    out
}

/// Argon2id parameters of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// 19 MiB, 2 passes, 1 lane: OWASP's recommended Argon2id setting, about 25 ms here. Every
    /// command that opens the repository pays it (and its memory) once; a stronger setting
    /// (RFC 9106's 64 MiB, 3 passes: 120 ms and 64 MiB per command) would cost most of what the
    /// encryption of a whole snapshot costs. The test knob `CAIRN_KDF_MEMORY_KIB` ([`crate::knobs`])
    /// lowers the memory for new key files; the parameters are recorded in each key file.
    pub fn default_for_new_keys() -> KdfParams {
        let m_cost = crate::knobs::get("CAIRN_KDF_MEMORY_KIB").and_then(|v| v.parse().ok()).unwrap_or(19 * 1024);
        KdfParams { m_cost, t_cost: 2, p_cost: 1 }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(8..=4 * 1024 * 1024).contains(&self.m_cost)
            || !(1..=64).contains(&self.t_cost)
            || !(1..=16).contains(&self.p_cost)
        {
            return Err(format!("Argon2id parameters out of range: {self:?}"));
        }
        Ok(())
    }
}

/// The key that wraps a master key: Argon2id of the passphrase.
pub fn wrapping_key(passphrase: &[u8], salt: &[u8; 32], params: KdfParams) -> Result<[u8; 32]> {
    let argon_params = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| Error::Invalid(format!("Argon2id parameters: {e}")))?;
    let block_count = argon_params.block_count();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    // The memory is asked for in huge pages where the kernel has them: faulting 19 MiB in 4 KiB
    // pages took longer than the hashing itself.
    let mut blocks = Vec::<argon2::Block>::with_capacity(block_count);
    crate::disk::advise_huge_pages(blocks.spare_capacity_mut());
    blocks.resize(block_count, argon2::Block::default());
    let mut out = [0u8; 32];
    argon
        .hash_password_into_with_memory(passphrase, salt, &mut out, &mut blocks)
        .map_err(|e| Error::Invalid(format!("Argon2id: {e}")))?;
    Ok(out)
}

/// Seals the master key under a wrapping key; `aad` binds it to its key file.
pub fn wrap(wrapping: &[u8; 32], aad: &[u8], master: &MasterKey) -> Vec<u8> {
    seal_with(wrapping, aad, &master.to_bytes())
}

/// Opens a wrapped master key; `None` when the passphrase was not this key file's.
pub fn unwrap(wrapping: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<MasterKey> {
    let mut plain = Vec::new();
    open_with(wrapping, aad, sealed, &mut plain, "key").ok()?;
    MasterKey::from_bytes(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_detects_any_change() {
        let keys = Keys::new(MasterKey::random());
        let sealed = keys.seal(b"aad", b"some plaintext");
        assert_eq!(sealed.len(), 14 + OVERHEAD);
        assert_eq!(keys.open(b"aad", &sealed, "x").unwrap(), b"some plaintext");
        assert_ne!(keys.seal(b"aad", b"some plaintext"), sealed, "fresh nonce every time");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(keys.open(b"aad", &bad, "x").is_err(), "byte {i}");
        }
        assert!(keys.open(b"other", &sealed, "x").is_err());
        assert!(Keys::new(MasterKey::random()).open(b"aad", &sealed, "x").is_err());
        assert!(keys.open(b"aad", &sealed[..10], "x").is_err());
        // In place: the same plain bytes, and the same refusals.
        assert_eq!(keys.open_in_place(b"aad", &mut sealed.clone(), "x").unwrap(), b"some plaintext");
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(keys.open_in_place(b"aad", &mut bad, "x").is_err());
        assert!(keys.open_in_place(b"other", &mut sealed.clone(), "x").is_err());
        assert!(keys.open_in_place(b"aad", &mut sealed.clone()[..10], "x").is_err());
    }

    #[test]
    fn passphrases_wrap_the_master_key() {
        let params = KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 };
        let master = MasterKey::random();
        let salt = secure_random();
        let key = wrapping_key(b"correct horse", &salt, params).unwrap();
        let sealed = wrap(&key, b"k", &master);
        assert_eq!(unwrap(&key, b"k", &sealed).unwrap().to_bytes(), master.to_bytes());
        let wrong = wrapping_key(b"wrong horse", &salt, params).unwrap();
        assert!(unwrap(&wrong, b"k", &sealed).is_none());
    }

    #[test]
    fn the_wrapping_key_is_reference_argon2id() {
        // Pins the KDF of key files to the reference implementation: the expected bytes are
        // libargon2's (argon2-cffi `hash_secret_raw`, Argon2id v19, t=2, m=1000 KiB, p=1, 32 bytes),
        // so another tool can open a key file from its recorded parameters alone.
        let params = KdfParams { m_cost: 1000, t_cost: 2, p_cost: 1 };
        let key = wrapping_key(b"correct horse", &[7u8; 32], params).unwrap();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "119a368480095e90e61a666f2675db0a468be07a420f0b2a6146836bf573db4c");
    }
}
