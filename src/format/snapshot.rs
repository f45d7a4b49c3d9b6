//! Snapshot manifests (`snapshots/<id>`): when, from where, which root tree, and what went wrong
//! while reading the source. The file's id is BLAKE3 of its bytes. Written last, after every
//! pack and index file it needs is durable: a manifest is the commit point of a snapshot.
//! See store-format/snapshot.md.

use super::{envelope, Put, Reader};
use crate::error::Result;
use crate::id::Id;

pub const MAGIC: &[u8; 8] = b"CAIRNSNP";
pub const VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Start of the snapshot, Unix seconds and nanoseconds (UTC).
    pub time_sec: i64,
    pub time_nsec: u32,
    /// Wall time the snapshot took, in milliseconds.
    pub duration_ms: u64,
    pub tree: Id,
    pub parent: Option<Id>,
    pub hostname: String,
    pub username: String,
    /// The `--source` name, empty when none was given.
    pub source: String,
    /// Absolute source paths as raw bytes: sorted, without duplicates or nested paths.
    pub paths: Vec<Vec<u8>>,
    pub tags: Vec<String>,
    pub summary: Summary,
    /// Source entries that could not be read. Non-empty means the snapshot is incomplete.
    pub errors: Vec<SourceError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    /// Logical bytes of file content in the snapshot.
    pub bytes: u64,
    /// Files whose content was read (the rest were unchanged since the parent).
    pub files_read: u64,
    /// New blobs stored, and their plain and stored bytes.
    pub blobs_added: u64,
    pub bytes_added: u64,
    pub stored_bytes_added: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceError {
    pub path: String,
    pub message: String,
}

/// The longest host name, user name, source name or tag a manifest holds, in bytes. Encoding
/// clips to it and decoding rejects more, so every decodable manifest round-trips.
pub const MAX_TEXT: usize = 1024;

fn text(r: &mut Reader<'_>) -> Result<String> {
    let value = r.string16()?;
    if value.len() > MAX_TEXT {
        return Err(r.error(format!("text field of {} bytes exceeds {MAX_TEXT}", value.len())));
    }
    Ok(value)
}

/// Bounds the strings kept in a manifest so that encoding can never overflow a length prefix.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// What a snapshot is "of", for grouping runs: its `--source` name, or else its paths (each as
/// JSON carries it, [`crate::names::json`]: two paths that differ only in bytes that are not
/// UTF-8 are two sources, never one).
pub fn source_key(source: &str, paths: &[Vec<u8>]) -> String {
    if !source.is_empty() {
        return source.to_string();
    }
    paths.iter().map(|p| crate::names::json(p).0).collect::<Vec<_>>().join(" ")
}

impl Snapshot {
    pub fn source_key(&self) -> String {
        source_key(&self.source, &self.paths)
    }

    /// Where the absolute source path `path` lies in the tree of a snapshot of one path, which
    /// holds that path's contents at its root: `""` for the path itself, the rest for a path
    /// below it; `None` for any other path or snapshot.
    pub fn below_its_path(&self, path: &[u8]) -> Option<Vec<u8>> {
        let [only] = &self.paths[..] else { return None };
        fn trimmed(mut p: &[u8]) -> &[u8] {
            while let Some(shorter) = p.strip_suffix(b"/") {
                p = shorter;
            }
            p
        }
        let rest = trimmed(path).strip_prefix(trimmed(only))?;
        (rest.is_empty() || rest.starts_with(b"/")).then(|| rest.to_vec())
    }

    /// The source name and tag of the safety snapshots that in-place restores take.
    pub const SAFETY: &'static str = "pre-restore";

    /// Whether this is a safety snapshot that an in-place restore took of its target
    /// ([`crate::restore::in_place`]): source `pre-restore`, tagged `pre-restore`.
    pub fn is_safety_snapshot(&self) -> bool {
        self.source == Self::SAFETY && self.tags.iter().any(|t| t == Self::SAFETY)
    }

    pub fn is_complete(&self) -> bool {
        self.errors.is_empty()
    }

    /// Which snapshot this manifest records, whatever its tags: BLAKE3 of its plain encoding
    /// with the tags left out. `cairn tag` replaces a manifest by one that differs only in its
    /// tags, so two manifests with the same identity are copies of one snapshot (both remain
    /// when a tag is killed between its two writes), and readers take them as one
    /// (store-format/snapshot.md, "Changing tags"). Two runs never share one: they differ in
    /// start time, to the nanosecond, or in what they stored.
    pub fn identity(&self) -> Id {
        Id::of(&Snapshot { tags: Vec::new(), ..self.clone() }.encode())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        body.put_i64(self.time_sec);
        body.put_u32(self.time_nsec);
        body.put_u64(self.duration_ms);
        body.put_id(&self.tree);
        match &self.parent {
            Some(parent) => {
                body.put_u8(1);
                body.put_id(parent);
            }
            None => body.put_u8(0),
        }
        body.put_bytes16(clip(&self.hostname, MAX_TEXT).as_bytes());
        body.put_bytes16(clip(&self.username, MAX_TEXT).as_bytes());
        body.put_bytes16(clip(&self.source, MAX_TEXT).as_bytes());
        body.put_u32(self.paths.len() as u32);
        self.paths.iter().for_each(|p| body.put_bytes32(p));
        body.put_u32(self.tags.len() as u32);
        self.tags.iter().for_each(|t| body.put_bytes16(clip(t, MAX_TEXT).as_bytes()));
        let s = &self.summary;
        for value in [s.files, s.dirs, s.bytes, s.files_read, s.blobs_added, s.bytes_added, s.stored_bytes_added] {
            body.put_u64(value);
        }
        body.put_u32(self.errors.len() as u32);
        for error in &self.errors {
            body.put_bytes32(error.path.as_bytes());
            body.put_bytes32(error.message.as_bytes());
        }
        envelope::seal(MAGIC, VERSION, &body)
    }

    pub fn decode(data: &[u8], file: &str) -> Result<Snapshot> {
        let (_version, body) = envelope::open(data, MAGIC, VERSION, file)?;
        let mut r = Reader::new(body, file);
        let time_sec = r.i64()?;
        let time_nsec = r.u32()?;
        if time_nsec >= 1_000_000_000 {
            return Err(r.error("nanoseconds out of range"));
        }
        let duration_ms = r.u64()?;
        let tree = r.id()?;
        let parent = match r.u8()? {
            0 => None,
            1 => Some(r.id()?),
            other => return Err(r.error(format!("bad parent flag {other}"))),
        };
        let hostname = text(&mut r)?;
        let username = text(&mut r)?;
        let source = text(&mut r)?;
        let path_count = r.count(4)?;
        let mut paths = Vec::with_capacity(path_count);
        for _ in 0..path_count {
            paths.push(r.bytes32()?.to_vec());
        }
        let tag_count = r.count(2)?;
        let mut tags = Vec::with_capacity(tag_count);
        for _ in 0..tag_count {
            tags.push(text(&mut r)?);
        }
        let mut values = [0u64; 7];
        for value in &mut values {
            *value = r.u64()?;
        }
        let [files, dirs, bytes, files_read, blobs_added, bytes_added, stored_bytes_added] = values;
        let summary = Summary { files, dirs, bytes, files_read, blobs_added, bytes_added, stored_bytes_added };
        let error_count = r.count(8)?;
        let mut errors = Vec::with_capacity(error_count);
        for _ in 0..error_count {
            let path = String::from_utf8_lossy(r.bytes32()?).into_owned();
            let message = String::from_utf8_lossy(r.bytes32()?).into_owned();
            errors.push(SourceError { path, message });
        }
        r.finish()?;
        Ok(Snapshot {
            time_sec,
            time_nsec,
            duration_ms,
            tree,
            parent,
            hostname,
            username,
            source,
            paths,
            tags,
            summary,
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        (
            (
                any::<i64>(),
                0u32..1_000_000_000,
                any::<u64>(),
                any::<[u8; 32]>(),
                proptest::option::of(any::<[u8; 32]>()),
            ),
            ("[a-z0-9.-]{0,20}", "\\PC{0,10}", "\\PC{0,10}"),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..4),
            proptest::collection::vec("\\PC{0,10}", 0..4),
            any::<[u64; 7]>(),
            proptest::collection::vec(("\\PC{0,20}", "\\PC{0,20}"), 0..3),
        )
            .prop_map(
                |(
                    (time_sec, time_nsec, duration_ms, tree, parent),
                    (hostname, username, source),
                    paths,
                    tags,
                    s,
                    errors,
                )| Snapshot {
                    time_sec,
                    time_nsec,
                    duration_ms,
                    tree: Id(tree),
                    parent: parent.map(Id),
                    hostname,
                    username,
                    source,
                    paths,
                    tags,
                    summary: Summary {
                        files: s[0],
                        dirs: s[1],
                        bytes: s[2],
                        files_read: s[3],
                        blobs_added: s[4],
                        bytes_added: s[5],
                        stored_bytes_added: s[6],
                    },
                    errors: errors.into_iter().map(|(path, message)| SourceError { path, message }).collect(),
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(snapshot in snapshot()) {
            prop_assert_eq!(Snapshot::decode(&snapshot.encode(), "s").unwrap(), snapshot);
        }

        #[test]
        fn truncation_and_noise_are_errors(snapshot in snapshot(), cut in 1usize..1000, data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let encoded = snapshot.encode();
            let cut = cut.min(encoded.len());
            prop_assert!(Snapshot::decode(&encoded[..encoded.len() - cut], "s").is_err());
            prop_assert!(Snapshot::decode(&data, "s").is_err());
        }
    }

    #[test]
    fn the_identity_ignores_tags_and_nothing_else() {
        let snapshot = Snapshot { hostname: "h".into(), tags: vec!["a".into()], ..Snapshot::default() };
        let retagged = Snapshot { tags: vec!["protected".into(), "b".into()], ..snapshot.clone() };
        assert_eq!(snapshot.identity(), retagged.identity());
        assert_ne!(snapshot.encode(), retagged.encode());
        for other in [
            Snapshot { time_nsec: 1, ..snapshot.clone() },
            Snapshot { source: "s".into(), ..snapshot.clone() },
            Snapshot { tree: Id([1; 32]), ..snapshot.clone() },
            Snapshot { parent: Some(Id([2; 32])), ..snapshot.clone() },
        ] {
            assert_ne!(other.identity(), snapshot.identity(), "{other:?}");
        }
    }

    #[test]
    fn over_long_text_is_clipped_on_encode_and_rejected_on_decode() {
        let snapshot = Snapshot { hostname: "h".repeat(MAX_TEXT + 100), ..Snapshot::default() };
        let decoded = Snapshot::decode(&snapshot.encode(), "s").unwrap();
        assert_eq!(decoded.hostname.len(), MAX_TEXT);
    }
}
