//! Content ids: BLAKE3-256 digests that name chunks, trees, packs, index files and snapshots.
//!
//! One type serves every object kind; what an id names is always clear from where it is stored
//! (store-format/README.md, "Ids").

use std::fmt;

/// A 32-byte BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id(pub [u8; 32]);

/// Byte order, compared a word at a time: ids are sorted and searched by the million, and their
/// first word almost always decides.
impl Ord for Id {
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        let word = |id: &Id, i: usize| u64::from_be_bytes(id.0[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        (0..4).map(|i| word(self, i).cmp(&word(other, i))).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// How blob ids are computed: plain BLAKE3-256 in an unencrypted repository, BLAKE3 keyed with
/// the repository's secret id key in an encrypted one (store-format/encryption.md).
#[derive(Clone, Copy, Default)]
pub struct BlobHasher(Option<[u8; 32]>);

impl BlobHasher {
    pub fn keyed(key: [u8; 32]) -> BlobHasher {
        BlobHasher(Some(key))
    }

    pub fn id(&self, data: &[u8]) -> Id {
        match &self.0 {
            None => Id::of(data),
            Some(key) => Id(*blake3::keyed_hash(key, data).as_bytes()),
        }
    }
}

/// Hash maps keyed by ids, hashed by [`IdHash`]: the maps a restore from an object store plans its
/// reads with hold every blob it reads, and SipHash cost a tenth of its planning.
pub type IdMap<V> = std::collections::HashMap<Id, V, IdHash>;

/// Builds [`IdHasher`]s under a key drawn once per process. Ids are BLAKE3 outputs, so a multiply
/// fold of their words spreads them; the key keeps a repository whose index names made-up ids
/// from choosing their buckets.
#[derive(Clone, Copy)]
pub struct IdHash([u64; 2]);

impl Default for IdHash {
    fn default() -> IdHash {
        static KEY: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
        IdHash(*KEY.get_or_init(|| {
            let bytes = random_bytes();
            let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            [word(0), word(1) | 1]
        }))
    }
}

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher { hash: self.0[0], key: self.0[1] }
    }
}

/// The hasher of [`IdHash`]: each 8 bytes written are folded in by a 128-bit multiply.
pub struct IdHasher {
    hash: u64,
    key: u64,
}

impl IdHasher {
    fn fold(&mut self, word: u64) {
        let product = ((self.hash ^ word) as u128).wrapping_mul(self.key as u128);
        self.hash = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.fold(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.fold(u64::from_le_bytes(last) ^ (rest.len() as u64) << 56);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.fold(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

impl Id {
    pub const LEN: usize = 32;

    /// The id of `data`: BLAKE3-256 of the plain bytes.
    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    pub fn from_hash(hash: blake3::Hash) -> Id {
        Id(*hash.as_bytes())
    }

    /// Lower-case hex, 64 characters: the form used in file names and on the command line.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses exactly 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Id> {
        if text.len() != 64 {
            return None;
        }
        from_hex(text)?.try_into().ok().map(Id)
    }

    /// The first eight hex digits, for human-facing output.
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_string()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// 32 random bytes from the operating system, for repository ids and temporary names.
pub fn random_bytes() -> [u8; 32] {
    use std::io::Read;
    let mut out = [0u8; 32];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut out));
    if filled.is_err() {
        // No /dev/urandom (a stripped container): derive from time, pid and an address. Only
        // uniqueness matters for these uses, not secrecy.
        let mut hasher = blake3::Hasher::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        hasher.update(&now.as_nanos().to_le_bytes());
        hasher.update(&std::process::id().to_le_bytes());
        hasher.update(&(&out as *const _ as usize).to_le_bytes());
        out = *hasher.finalize().as_bytes();
    }
    out
}

/// Lower-case hex of `bytes`, two digits a byte.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

/// The bytes of `text`, an even number of hex digits (either case); `None` for anything else.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    let digit = |d: u8| (d as char).to_digit(16);
    digits.chunks_exact(2).map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_pinned_vector() {
        // BLAKE3("") from the BLAKE3 reference test vectors.
        let id = Id::of(b"");
        assert_eq!(id.to_hex(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(Id::from_hex(&id.to_hex().to_uppercase()), Some(id));
        assert_eq!(Id::from_hex("xyz"), None);
        assert_eq!(Id::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn order_is_byte_order() {
        // Ids that differ only in a later word, or only in one byte, order as their bytes do.
        let mut ids: Vec<Id> = (0..64u8)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[(i as usize * 7) % 32] = i.wrapping_mul(37);
                bytes[31 - (i as usize % 32)] ^= i;
                Id(bytes)
            })
            .chain((0..64u32).map(|i| Id::of(&i.to_le_bytes())))
            .collect();
        let mut by_bytes = ids.clone();
        by_bytes.sort_by_key(|a| a.0);
        ids.sort();
        assert_eq!(ids, by_bytes);
        assert_eq!(Id([7; 32]).cmp(&Id([7; 32])), std::cmp::Ordering::Equal);
    }
}
