//! `cairn stats`: what each source costs. Per source (host and `--source` name or paths): its
//! snapshots, the logical size of its newest one, the stored bytes of everything its snapshots
//! reach, how much of that only it reaches (what forgetting all of its snapshots would free),
//! and how much it shares with other sources.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::id::Id;
use crate::prune::Reachable;
use crate::repository::Repository;

#[derive(Debug, Default, Serialize)]
pub struct SourceStats {
    pub host: String,
    pub source: String,
    pub snapshots: u64,
    /// Logical bytes of file content in the newest snapshot.
    pub logical_bytes: u64,
    /// Stored (compressed) bytes of every blob the source's snapshots reach.
    pub stored_bytes: u64,
    /// Stored bytes reached by this source only.
    pub unique_bytes: u64,
    /// Stored bytes also reached by another source.
    pub shared_bytes: u64,
    /// This source's share of the repository: its unique bytes plus, for each shared blob, the
    /// blob's size divided by the number of sources reaching it. The shares add up to the live
    /// bytes, so pricing them splits the bill without counting a byte twice.
    pub attributed_bytes: u64,
    /// `attributed_bytes` priced at the cost per GiB-month given to [`Stats::price`].
    pub monthly_cost: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub sources: Vec<SourceStats>,
    /// Stored bytes of all packs, live or not.
    pub repository_bytes: u64,
    pub blobs: u64,
}

pub fn stats(repo: &Repository) -> Result<Stats> {
    let indexed = crate::repository::Indexed::load(repo)?;
    let index = indexed.index();
    let mut groups: BTreeMap<(String, String), Vec<_>> = BTreeMap::new();
    for (_, snapshot) in repo.snapshots()? {
        groups.entry((snapshot.hostname.clone(), snapshot.source_key())).or_default().push(snapshot);
    }
    let mut reached: Vec<HashSet<Id>> = Vec::new();
    let mut users: HashMap<Id, u32> = HashMap::new();
    for snapshots in groups.values() {
        let mut reachable = Reachable::default();
        for snapshot in snapshots {
            reachable.add_tree(&indexed, snapshot.tree)?;
        }
        let blobs = reachable.blobs;
        for id in &blobs {
            *users.entry(*id).or_default() += 1;
        }
        reached.push(blobs);
    }
    let stored = |id: &Id| index.get(id).map_or(0, |l| l.stored_len as u64);
    let mut out = Stats {
        repository_bytes: index.packs.iter().map(|(_, len)| len).sum(),
        blobs: index.blob_count() as u64,
        ..Default::default()
    };
    for (((host, source), snapshots), blobs) in groups.into_iter().zip(reached) {
        let newest = snapshots.iter().max_by_key(|s| (s.time_sec, s.time_nsec)).expect("groups are not empty");
        let (mut stored_bytes, mut unique_bytes, mut attributed) = (0, 0, 0.0);
        for id in &blobs {
            stored_bytes += stored(id);
            attributed += stored(id) as f64 / users[id] as f64;
            if users[id] == 1 {
                unique_bytes += stored(id);
            }
        }
        out.sources.push(SourceStats {
            host,
            source,
            snapshots: snapshots.len() as u64,
            logical_bytes: newest.summary.bytes,
            stored_bytes,
            unique_bytes,
            shared_bytes: stored_bytes - unique_bytes,
            attributed_bytes: attributed.round() as u64,
            monthly_cost: None,
        });
    }
    Ok(out)
}

impl Stats {
    /// Prices each source's attributed bytes at `per_gib_month`.
    pub fn price(&mut self, per_gib_month: f64) {
        for source in &mut self.sources {
            source.monthly_cost = Some(source.attributed_bytes as f64 / (1u64 << 30) as f64 * per_gib_month);
        }
    }
}
