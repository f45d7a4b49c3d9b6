//! Changing the tags of existing snapshots (`cairn tag`), so that a known-good snapshot can be
//! protected after the fact. A manifest is named by its content and never modified, so a change
//! writes a new manifest that differs only in its tags (a create-only, durable put) and only then
//! deletes the old one. Killed in between, both stay: two copies of one snapshot (the same
//! [`Snapshot::identity`]), which every reader takes as one and the next `tag` of it merges. The
//! plan is computed first and executed after (`--dry-run` prints it). Byte-level rules and the
//! crash table: store-format/snapshot.md, "Changing tags".

use std::collections::HashSet;

use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::error::{Error, Result};
use crate::format::audit::Outcome;
use crate::format::snapshot::{Snapshot, MAX_TEXT};
use crate::id::Id;
use crate::repository::Repository;
use crate::retention::tags_of;

/// What to do to the tags: replace them all (`set`), or remove some and add others.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub set: Option<Vec<String>>,
}

impl Change {
    /// Refuses tags a manifest cannot hold as given (empty, or longer than [`MAX_TEXT`] bytes,
    /// which encoding would clip) and a tag both added and removed.
    pub fn check(&self) -> Result<()> {
        let all = self.add.iter().chain(&self.remove).chain(self.set.iter().flatten());
        for tag in all {
            if tag.is_empty() || tag.len() > MAX_TEXT {
                return Err(Error::Invalid(format!(
                    "a tag is 1 to {MAX_TEXT} bytes long, not {} ({tag:?})",
                    tag.len()
                )));
            }
        }
        if let Some(both) = self.add.iter().find(|t| self.remove.contains(t)) {
            return Err(Error::Invalid(format!("tag {both:?} is both added and removed")));
        }
        Ok(())
    }

    /// The tags after the change, each once, in order: kept ones first, then added ones.
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let wanted = match &self.set {
            Some(set) => set.iter().collect::<Vec<_>>(),
            None => tags.iter().filter(|t| !self.remove.contains(t)).chain(&self.add).collect(),
        };
        for tag in wanted {
            if !out.contains(tag) {
                out.push(tag.clone());
            }
        }
        out
    }
}

/// The change to one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Retag {
    /// The manifest named on the command line.
    pub id: String,
    /// Every manifest of the snapshot (one, unless an earlier `tag` was interrupted).
    pub copies: Vec<String>,
    pub tags_before: Vec<String>,
    pub tags_after: Vec<String>,
    /// Whether a manifest is written and others deleted: the tags change, or copies are merged.
    pub changed: bool,
    /// The manifest that remains: set by [`execute`] (and when nothing changes).
    pub new_id: Option<String>,
    #[serde(skip)]
    manifest: Snapshot,
}

/// Plans the change for each named snapshot (a snapshot named twice, or by two of its copies,
/// once). The tags before are those of every copy together, as retention counts them.
pub fn plan(snapshots: &[(Id, Snapshot)], named: &[Id], change: &Change) -> Vec<Retag> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for id in named {
        let Some((_, snapshot)) = snapshots.iter().find(|(i, _)| i == id) else { continue };
        let identity = snapshot.identity();
        if !seen.insert(identity) {
            continue;
        }
        let copies: Vec<&(Id, Snapshot)> = snapshots.iter().filter(|(_, s)| s.identity() == identity).collect();
        let tags_before = tags_of(&copies);
        let tags_after = change.apply(&tags_before);
        let changed = copies.len() > 1 || tags_after != snapshot.tags;
        out.push(Retag {
            id: id.to_hex(),
            copies: copies.iter().map(|(id, _)| id.to_hex()).collect(),
            tags_before,
            new_id: (!changed).then(|| id.to_hex()),
            manifest: Snapshot { tags: tags_after.clone(), ..snapshot.clone() },
            tags_after,
            changed,
        });
    }
    out
}

/// Carries out a plan ([`execute`]) as the audited run `tag` (store-format/audit.md); its record
/// lists the snapshots changed, also those changed before an error stopped it. What `cairn tag`
/// runs, and what an embedder calls.
pub fn retag(repo: &Repository, plan: &mut [Retag]) -> Audited<()> {
    Run::start("tag", "").after(repo, |record| {
        let result = execute(repo, plan);
        let changed: Vec<&Retag> = plan.iter().filter(|r| r.changed && r.new_id.is_some()).collect();
        record.details = serde_json::json!({ "snapshots": changed });
        result.map(|()| ((), Outcome::Ok))
    })
}

/// Carries out a plan: for each changed snapshot, writes its new manifest, then deletes every
/// other copy. The caller holds a shared lock (a prune must not run while a snapshot's only
/// manifest may be missing from its listing). Stops at the first error; what it did so far
/// stays, each snapshot with at least one manifest.
fn execute(repo: &Repository, plan: &mut [Retag]) -> Result<()> {
    for retag in plan.iter_mut().filter(|r| r.changed) {
        let new = repo.save_snapshot(&retag.manifest)?.to_hex();
        // A plain repository may already hold these very bytes: that copy is the new one.
        for old in retag.copies.iter().filter(|c| **c != new) {
            repo.delete_snapshot(old)?;
        }
        retag.new_id = Some(new);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn changes_apply_in_order_without_duplicates() {
        let add = Change { add: tags(&["protected", "a"]), ..Default::default() };
        assert_eq!(add.apply(&tags(&["a", "b"])), tags(&["a", "b", "protected"]));
        let remove = Change { remove: tags(&["a"]), add: tags(&["c"]), ..Default::default() };
        assert_eq!(remove.apply(&tags(&["a", "b", "a"])), tags(&["b", "c"]));
        let set = Change { set: Some(tags(&["z", "y", "z"])), ..Default::default() };
        assert_eq!(set.apply(&tags(&["a"])), tags(&["z", "y"]));
        assert!(Change { add: tags(&[""]), ..Default::default() }.check().is_err());
        assert!(Change { add: vec!["x".repeat(MAX_TEXT + 1)], ..Default::default() }.check().is_err());
        assert!(Change { add: tags(&["x"]), remove: tags(&["x"]), ..Default::default() }.check().is_err());
        assert!(add.check().is_ok());
    }

    #[test]
    fn copies_are_planned_together_and_merged() {
        let one = Snapshot { hostname: "h".into(), tags: tags(&["a"]), ..Snapshot::default() };
        let copy = Snapshot { tags: tags(&["protected"]), ..one.clone() };
        let other = Snapshot { time_sec: 5, ..one.clone() };
        let all = [(Id([1; 32]), one), (Id([2; 32]), copy), (Id([3; 32]), other)];
        let change = Change { add: tags(&["b"]), ..Default::default() };
        let planned = plan(&all, &[Id([2; 32]), Id([1; 32]), Id([3; 32])], &change);
        assert_eq!(planned.len(), 2, "the copies are one snapshot");
        assert_eq!(planned[0].copies.len(), 2);
        assert_eq!(planned[0].tags_after, tags(&["a", "protected", "b"]));
        assert!(planned[0].changed && planned[1].changed);
        let unchanged = plan(&all, &[Id([3; 32])], &Change { add: tags(&["a"]), ..Default::default() });
        assert!(!unchanged[0].changed);
        assert_eq!(unchanged[0].new_id.as_deref(), Some(Id([3; 32]).to_hex().as_str()));
        // Merging copies happens even when the tags stay as they are.
        let merge = plan(&all, &[Id([1; 32])], &Change::default());
        assert!(merge[0].changed);
    }
}
