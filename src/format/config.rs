//! The repository config file (`config`): repository id, chunker parameters, compression and
//! pack size. Written once by `init`, never changed. See store-format/config.md.

use super::{envelope, Put, Reader};
use crate::error::{Error, Result};
use crate::id::Id;

pub const MAGIC: &[u8; 8] = b"CAIRNCFG";
pub const VERSION: u16 = 1;

/// Chunker algorithm codes.
pub const CHUNKER_FASTCDC_2020: u8 = 1;
/// Compression codec codes for the repository default.
pub const COMPRESSION_ZSTD: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Random, distinguishes repositories (and will salt keys once encryption exists).
    pub repo_id: Id,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    /// Packs are closed once they reach this many stored bytes.
    pub pack_target_size: u32,
}

/// FastCDC v2020 parameters, pinned by the repository so that every client cuts the same chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Normalisation level (0..=3).
    pub normalization: u8,
    /// XORed into the gear table; 0 keeps the crate's published table.
    pub gear_seed: u64,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 * 1024,
            avg_size: 1024 * 1024,
            max_size: 4 * 1024 * 1024,
            normalization: 1,
            gear_seed: 0,
        }
    }
}

impl ChunkerParams {
    /// The limits of the fastcdc crate's v2020 chunker, and a power-of-two average.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use fastcdc::v2020::*;
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.avg_size.is_power_of_two()
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(format!("invalid chunker parameters {self:?}"))
        }
    }
}

impl Config {
    pub fn new_random() -> Config {
        Config {
            repo_id: Id(crate::id::random_bytes()),
            chunker: ChunkerParams::default(),
            compression_level: 3,
            pack_target_size: 16 * 1024 * 1024,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        body.put_id(&self.repo_id);
        body.put_u8(CHUNKER_FASTCDC_2020);
        body.put_u8(self.chunker.normalization);
        body.put_u16(0);
        body.put_u32(self.chunker.min_size);
        body.put_u32(self.chunker.avg_size);
        body.put_u32(self.chunker.max_size);
        body.put_u64(self.chunker.gear_seed);
        body.put_u8(COMPRESSION_ZSTD);
        body.put_u8(self.compression_level as i8 as u8);
        body.put_u16(0);
        body.put_u32(self.pack_target_size);
        envelope::seal(MAGIC, VERSION, &body)
    }

    pub fn decode(data: &[u8], file: &str) -> Result<Config> {
        let (_version, body) = envelope::open(data, MAGIC, VERSION, file)?;
        let mut r = Reader::new(body, file);
        let repo_id = r.id()?;
        let algorithm = r.u8()?;
        if algorithm != CHUNKER_FASTCDC_2020 {
            return Err(r.error(format!("unknown chunker algorithm {algorithm}")));
        }
        let normalization = r.u8()?;
        r.reserved16()?;
        let chunker = ChunkerParams {
            normalization,
            min_size: r.u32()?,
            avg_size: r.u32()?,
            max_size: r.u32()?,
            gear_seed: r.u64()?,
        };
        chunker.validate().map_err(|reason| Error::corrupt(file, reason))?;
        let codec = r.u8()?;
        if codec != COMPRESSION_ZSTD {
            return Err(r.error(format!("unknown compression codec {codec}")));
        }
        let compression_level = r.u8()? as i8 as i32;
        if !(-7..=22).contains(&compression_level) {
            return Err(r.error(format!("zstd level {compression_level} out of range")));
        }
        r.reserved16()?;
        let pack_target_size = r.u32()?;
        if !(1 << 20..=1 << 30).contains(&pack_target_size) {
            return Err(r.error(format!("pack target size {pack_target_size} is outside 1 MiB..=1 GiB")));
        }
        r.finish()?;
        Ok(Config { repo_id, chunker, compression_level, pack_target_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(seed in any::<u64>(), level in -7i32..=22, size in 1u32 << 20..1 << 30, id in any::<[u8; 32]>()) {
            let mut config = Config::new_random();
            config.repo_id = Id(id);
            config.chunker.gear_seed = seed;
            config.compression_level = level;
            config.pack_target_size = size;
            prop_assert_eq!(Config::decode(&config.encode(), "config").unwrap(), config);
        }

        #[test]
        fn truncation_and_noise_are_errors(cut in 0usize..200, data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let encoded = Config::new_random().encode();
            prop_assert!(Config::decode(&encoded[..cut.min(encoded.len() - 1)], "config").is_err());
            prop_assert!(Config::decode(&data, "config").is_err());
        }
    }
}
