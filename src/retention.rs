//! Retention: which snapshots a `--keep-*` policy keeps, and why.
//!
//! Snapshots are grouped by host and source (its `--source` name, or its paths). In each group,
//! newest first: `--keep-last N` keeps the N newest; `--keep-hourly/daily/weekly/monthly/yearly N`
//! keep the newest snapshot of each of the N most recent hours, days, ISO weeks (Monday to
//! Sunday), months and years that have one (UTC); `--keep-within D` keeps everything younger than
//! D before the group's newest snapshot; `--keep-tag T` keeps snapshots tagged T. Whatever the
//! policy, the newest snapshot of every group and every snapshot tagged [`PROTECT_TAG`] are kept.
//! The plan is computed first and only then executed (`forget --dry-run` prints it).
//!
//! Copies of one snapshot (manifests with the same [`Snapshot::identity`], left by a `cairn tag`
//! killed between its two writes) are one snapshot here: they take one place in the order, their
//! tags count together, and they are kept or removed together. Forgetting a snapshot by name
//! ([`plan_named`]) removes every copy, and refuses a protected one unless forced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::audit::{Audited, Run};
use crate::clock::civil_from_days;
use crate::format::audit::Outcome;
use crate::format::snapshot::Snapshot;
use crate::id::Id;
use crate::repository::Repository;

/// Snapshots with this tag are never removed by a policy, nor by naming them without `--force`.
pub const PROTECT_TAG: &str = "protected";

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    pub within: Option<Duration>,
    pub tags: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly == 0
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub time: i64,
    pub group: String,
    pub keep: bool,
    /// Every rule that keeps it (`last`, `daily`, `newest`, `tag:x`, ...); empty if removed.
    pub reasons: Vec<String>,
    /// Why its file holds no snapshot that can be read, for a damaged file removed by id (`forget
    /// --force`); its `time` is then 0 and its `group` empty: the file cannot say them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// Removes the snapshots `decisions` do not keep, as the audited run `forget` (its record names
/// them); returns their ids. The caller holds a lock: shared, or the exclusive one of a prune
/// that follows. Their data stays until a prune. What `cairn forget` runs, and what an embedder
/// calls.
pub fn forget(repo: &Repository, decisions: &[Decision]) -> Audited<Vec<String>> {
    Run::start("forget", "").after(repo, |record| {
        // Kept up to date: a delete that fails leaves a record of those that went before it.
        let mut removed: Vec<String> = Vec::new();
        record.details = serde_json::json!({ "removed": removed });
        for decision in decisions.iter().filter(|d| !d.keep) {
            repo.delete_snapshot(&decision.id)?;
            removed.push(decision.id.clone());
            record.details = serde_json::json!({ "removed": removed });
        }
        Ok((removed, Outcome::Ok))
    })
}

/// The calendar buckets of a time, for the hourly .. yearly rules.
fn buckets(secs: i64) -> [i64; 5] {
    let days = secs.div_euclid(86_400);
    let (year, month, _) = civil_from_days(days);
    let monday = days - (days + 3).rem_euclid(7); // 1970-01-01 was a Thursday
    [secs.div_euclid(3600), days, monday, year * 12 + month as i64, year]
}

/// The manifests of one snapshot: one, or several copies with the same identity.
type Copies<'a> = Vec<&'a (Id, Snapshot)>;

/// Groups copies of one snapshot together, in the order of their first appearance.
fn copies(members: Vec<&(Id, Snapshot)>) -> Vec<Copies<'_>> {
    let mut units: Vec<Copies<'_>> = Vec::new();
    let mut by_identity: HashMap<Id, usize> = HashMap::new();
    for member in members {
        let unit = *by_identity.entry(member.1.identity()).or_insert_with(|| {
            units.push(Vec::new());
            units.len() - 1
        });
        units[unit].push(member);
    }
    units
}

/// The tags of every copy together, each once, in order of appearance.
pub fn tags_of(copies: &[&(Id, Snapshot)]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for tag in copies.iter().flat_map(|(_, s)| &s.tags) {
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    tags
}

/// Decides every snapshot's fate. `snapshots` may be in any order.
pub fn plan(snapshots: &[(Id, Snapshot)], policy: &Policy) -> Vec<Decision> {
    let mut groups: BTreeMap<String, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for entry in snapshots {
        groups.entry(format!("{} {}", entry.1.hostname, entry.1.source_key())).or_default().push(entry);
    }
    let mut decisions = Vec::new();
    for (group, members) in groups {
        let mut members = copies(members);
        // Newest first; copies share their time, and the smallest id of each orders them.
        members.sort_by_key(|copies| {
            let (id, s) = copies.iter().min_by_key(|(id, _)| *id).expect("never empty");
            std::cmp::Reverse((s.time_sec, s.time_nsec, *id))
        });
        let newest = members[0][0].1.time_sec;
        let counts = [policy.hourly, policy.daily, policy.weekly, policy.monthly, policy.yearly];
        let names = ["hourly", "daily", "weekly", "monthly", "yearly"];
        let mut last_bucket: [Option<i64>; 5] = [None; 5];
        let mut kept_in_rule = [0usize; 5];
        for (position, copies) in members.iter().enumerate() {
            let snapshot = &copies[0].1;
            let mut reasons = Vec::new();
            if position == 0 {
                reasons.push("newest".to_string());
            }
            if position < policy.last {
                reasons.push("last".to_string());
            }
            let keys = buckets(snapshot.time_sec);
            for rule in 0..5 {
                if kept_in_rule[rule] < counts[rule] && last_bucket[rule] != Some(keys[rule]) {
                    last_bucket[rule] = Some(keys[rule]);
                    kept_in_rule[rule] += 1;
                    reasons.push(names[rule].to_string());
                }
            }
            if let Some(within) = policy.within {
                if newest - snapshot.time_sec < within.as_secs() as i64 {
                    reasons.push("within".to_string());
                }
            }
            for tag in tags_of(copies) {
                if policy.tags.contains(&tag) {
                    reasons.push(format!("tag:{tag}"));
                }
                if tag == PROTECT_TAG {
                    reasons.push("protected".to_string());
                }
            }
            for (id, _) in copies {
                decisions.push(Decision {
                    id: id.to_hex(),
                    time: snapshot.time_sec,
                    group: group.clone(),
                    keep: !reasons.is_empty(),
                    reasons: reasons.clone(),
                    damaged: None,
                });
            }
        }
    }
    decisions
}

/// Named snapshots that are tagged [`PROTECT_TAG`] (on some copy), which `forget` refuses to
/// remove without `--force`.
#[derive(Debug)]
pub struct Protected(pub Vec<Id>);

impl std::fmt::Display for Protected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.0.iter().map(Id::short).collect();
        write!(f, "snapshot {} is tagged `{PROTECT_TAG}`: nothing was forgotten. Give --force to forget it anyway, or first remove the tag (cairn tag {} --remove {PROTECT_TAG})", ids.join(", "), ids[0])
    }
}

impl std::error::Error for Protected {}

/// What forgetting the snapshots `named` removes: each of them and every copy of it. If any
/// copy of a named snapshot is tagged [`PROTECT_TAG`], nothing is removed unless `force`.
pub fn plan_named(snapshots: &[(Id, Snapshot)], named: &[Id], force: bool) -> Result<Vec<Decision>, Protected> {
    let identities: Vec<Id> = snapshots.iter().map(|(_, s)| s.identity()).collect();
    let wanted: HashSet<Id> =
        snapshots.iter().zip(&identities).filter(|((id, _), _)| named.contains(id)).map(|(_, i)| *i).collect();
    let removed: Vec<&(Id, Snapshot)> =
        snapshots.iter().zip(&identities).filter(|(_, i)| wanted.contains(i)).map(|(entry, _)| entry).collect();
    let protected: Vec<Id> =
        removed.iter().filter(|(_, s)| s.tags.iter().any(|t| t == PROTECT_TAG)).map(|(id, _)| *id).collect();
    if !protected.is_empty() && !force {
        return Err(Protected(protected));
    }
    Ok(removed
        .into_iter()
        .map(|(id, s)| Decision {
            id: id.to_hex(),
            time: s.time_sec,
            group: s.source_key(),
            keep: false,
            reasons: vec![],
            damaged: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2026-11-25 12:00 UTC, a Wednesday.
    const NOW: i64 = 1_795_608_000;

    fn snapshots(times: &[i64], tags: &[(usize, &str)]) -> Vec<(Id, Snapshot)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let tags = tags.iter().filter(|(n, _)| *n == i).map(|(_, t)| t.to_string()).collect();
                (
                    Id::of(&i.to_le_bytes()),
                    Snapshot { time_sec: *t, hostname: "h".into(), source: "s".into(), tags, ..Default::default() },
                )
            })
            .collect()
    }

    /// Indexes (into `times`) of the kept snapshots.
    fn kept(times: &[i64], tags: &[(usize, &str)], policy: &Policy) -> Vec<usize> {
        let all = snapshots(times, tags);
        let decisions = plan(&all, policy);
        let mut out: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| decisions.iter().any(|d| d.id == id.to_hex() && d.keep))
            .map(|(i, _)| i)
            .collect();
        out.sort();
        out
    }

    /// One snapshot every 6 hours for 60 days, newest first at index 0.
    fn every_six_hours() -> Vec<i64> {
        (0..240).map(|i| NOW - i * 6 * 3600).collect()
    }

    #[test]
    fn keep_last() {
        let times = every_six_hours();
        assert_eq!(kept(&times, &[], &Policy { last: 3, ..Default::default() }), vec![0, 1, 2]);
    }

    #[test]
    fn keep_hourly_takes_the_newest_of_each_hour() {
        let base = NOW + 1800; // 12:30
        let times = [base, base - 600, base - 3600, base - 3 * 3600, base - 3 * 3600 - 60];
        assert_eq!(kept(&times, &[], &Policy { hourly: 3, ..Default::default() }), vec![0, 2, 3]);
    }

    #[test]
    fn keep_daily_weekly_monthly_yearly() {
        let times = every_six_hours();
        // NOW is at 12:00, so index 2 is 00:00 today and index 3 is 18:00 yesterday: the newest
        // snapshot of each earlier day is at index 3, 7, 11, ...
        assert_eq!(kept(&times, &[], &Policy { daily: 4, ..Default::default() }), vec![0, 3, 7, 11]);
        // Weeks start on Monday 2026-11-23: NOW's week begins 2.5 days back (indexes 0..=10).
        assert_eq!(kept(&times, &[], &Policy { weekly: 3, ..Default::default() }), vec![0, 11, 39]);
        // November 2026 began 24.5 days before NOW (index 98); index 99 is 2026-10-31 18:00.
        assert_eq!(kept(&times, &[], &Policy { monthly: 2, ..Default::default() }), vec![0, 99]);
        assert_eq!(kept(&times, &[], &Policy { yearly: 5, ..Default::default() }), vec![0]);
        let across_years = [NOW, NOW - 400 * DAY, NOW - 800 * DAY, NOW - 801 * DAY];
        assert_eq!(kept(&across_years, &[], &Policy { yearly: 2, ..Default::default() }), vec![0, 1]);
    }

    #[test]
    fn keep_within_and_tags_and_protection() {
        let times = every_six_hours();
        assert_eq!(
            kept(&times, &[], &Policy { within: Some(Duration::from_secs(DAY as u64)), ..Default::default() }),
            vec![0, 1, 2, 3]
        );
        let tags = [(50, "release"), (60, PROTECT_TAG), (70, "other")];
        assert_eq!(
            kept(&times, &tags, &Policy { last: 1, tags: vec!["release".into()], ..Default::default() }),
            vec![0, 50, 60]
        );
    }

    #[test]
    fn combination_is_the_union_and_the_newest_always_stays() {
        let times = every_six_hours();
        let policy = Policy { last: 2, daily: 3, weekly: 2, ..Default::default() };
        assert_eq!(kept(&times, &[], &policy), vec![0, 1, 3, 7, 11]);
        // A policy that keeps nothing by itself still keeps each group's newest snapshot.
        let policy = Policy { tags: vec!["absent".into()], ..Default::default() };
        assert_eq!(kept(&times, &[], &policy), vec![0]);
    }

    #[test]
    fn groups_are_separate() {
        let mut all = snapshots(&[NOW, NOW - DAY], &[]);
        let mut other = snapshots(&[NOW - 5, NOW - DAY - 5], &[]);
        for (i, (id, s)) in other.iter_mut().enumerate() {
            s.source = "other".into();
            *id = Id::of(&[9, i as u8]);
        }
        all.extend(other);
        let decisions = plan(&all, &Policy { last: 1, ..Default::default() });
        assert_eq!(decisions.iter().filter(|d| d.keep).count(), 2, "one per group");
    }

    #[test]
    fn copies_of_one_snapshot_are_decided_as_one() {
        let mut all = snapshots(&[NOW, NOW - DAY, NOW - 2 * DAY], &[]);
        // A second manifest of the oldest, as a killed `cairn tag --add protected` leaves it.
        let copy = Snapshot { tags: vec![PROTECT_TAG.into()], ..all[2].1.clone() };
        all.push((Id::of(b"copy"), copy));
        let decisions = plan(&all, &Policy { last: 2, ..Default::default() });
        assert_eq!(decisions.len(), 4);
        assert!(decisions.iter().all(|d| d.keep), "the copies count once and share the tag: {decisions:?}");
        let oldest = [all[2].0.to_hex(), all[3].0.to_hex()];
        let reasons: Vec<_> = decisions.iter().filter(|d| oldest.contains(&d.id)).map(|d| d.reasons.clone()).collect();
        assert_eq!(reasons, [vec!["protected".to_string()], vec!["protected".to_string()]]);
        // Without the tag, both copies go together.
        all[3].1.tags.clear();
        let decisions = plan(&all, &Policy { last: 2, ..Default::default() });
        assert_eq!(decisions.iter().filter(|d| !d.keep).count(), 2, "{decisions:?}");
    }

    #[test]
    fn forgetting_by_name_removes_every_copy_and_refuses_protected_ones() {
        let mut all = snapshots(&[NOW, NOW - DAY], &[(1, PROTECT_TAG)]);
        let copy = Snapshot { tags: vec![], ..all[1].1.clone() };
        all.push((Id::of(b"copy"), copy));
        // Named by its unprotected copy: still refused, since the other copy is protected.
        let refused = plan_named(&all, &[all[2].0], false).unwrap_err();
        assert_eq!(refused.0, [all[1].0]);
        assert!(refused.to_string().contains("--force"), "{refused}");
        let forced = plan_named(&all, &[all[2].0], true).unwrap();
        let ids: HashSet<String> = forced.iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, [all[1].0.to_hex(), all[2].0.to_hex()].into());
        assert_eq!(plan_named(&all, &[all[0].0], false).unwrap().len(), 1);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(NOW / DAY), (2026, 11, 25));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
