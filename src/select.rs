//! Finding the right snapshot: by id, the newest (`latest`), a random one, or the newest at or
//! before a time, among the snapshots that a [`Filter`] selects (a source, hosts, tags).
//!
//! One resolution for every command that reads a snapshot (`ls`, `restore`, `drill`, the
//! `snapshots` listing), so `latest --tag nightly` means the same everywhere: the newest of what
//! the filters select, never the newest overall. When nothing is selected the error names the
//! filters (and, for `--at`, the earliest snapshot there is), so a typo in a filter is never
//! mistaken for a repository without backups.
//!
//! A safety snapshot (the target's state that an in-place restore took before replacing it,
//! [`Snapshot::is_safety_snapshot`]) is never chosen by time, by chance or by `--at` unless the
//! filters name it (`--source pre-restore` or `--tag pre-restore`): otherwise the next
//! `restore latest` would bring back the very tree that was just replaced, and a drill of
//! `latest` would test that tree instead of the newest backup. An id still names one.
//!
//! Tags follow restic: one `--tag a,b` selects snapshots that carry both, repeated `--tag`
//! selects snapshots that match any of them. Times are UTC unless they carry an offset, as
//! `cairn snapshots` prints them, and a time names its whole last unit (`10:00` is 10:00:00 to
//! 10:00:59.999999999), so a time copied from a listing selects the snapshot listed there.

use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::id::Id;
use crate::repository::Repository;

/// Which snapshots a command considers. The default selects every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only snapshots of this source: its `--source` name, or else its paths
    /// ([`Snapshot::source_key`]).
    pub source: Option<String>,
    /// Only snapshots taken on one of these hosts; empty for any host.
    pub hosts: Vec<String>,
    /// Only snapshots that carry every tag of at least one of these sets; empty for any tags. An
    /// empty set selects snapshots without tags (restic's `--tag ''`).
    pub tags: Vec<Vec<String>>,
    /// Only snapshots taken at or before this time.
    pub at: Option<At>,
}

impl Filter {
    /// The filter of a single `--source` (or none).
    pub fn of_source(source: Option<&str>) -> Filter {
        Filter { source: source.map(str::to_string), ..Filter::default() }
    }

    /// Parses `--tag` values as given: each a comma-separated set of tags that must all be there.
    pub fn tag_sets(values: &[String]) -> Vec<Vec<String>> {
        values
            .iter()
            .map(|v| v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect())
            .collect()
    }

    /// Whether the snapshot passes the source, host and tag filters (not [`Filter::at`]).
    pub fn matches(&self, snapshot: &Snapshot) -> bool {
        self.source.as_ref().map_or(true, |source| snapshot.source_key() == *source)
            && (self.hosts.is_empty() || self.hosts.contains(&snapshot.hostname))
            && (self.tags.is_empty()
                || self.tags.iter().any(|set| {
                    if set.is_empty() {
                        snapshot.tags.is_empty()
                    } else {
                        set.iter().all(|tag| snapshot.tags.contains(tag))
                    }
                }))
    }

    /// Whether the snapshot passes every filter, [`Filter::at`] included.
    pub fn selects(&self, snapshot: &Snapshot) -> bool {
        self.matches(snapshot) && self.at.as_ref().map_or(true, |at| at.includes(snapshot))
    }

    /// Whether the filters ask for safety snapshots by name: `--source pre-restore`, or a `--tag`
    /// set that holds `pre-restore`. Only then may `latest`, `random` or `--at` choose one.
    pub fn names_safety_snapshots(&self) -> bool {
        self.source.as_deref() == Some(Snapshot::SAFETY)
            || self.tags.iter().any(|set| set.iter().any(|tag| tag == Snapshot::SAFETY))
    }

    /// Whether any filter is set.
    pub fn is_set(&self) -> bool {
        *self != Filter::default()
    }

    /// The source, host and tag filters as the flags that set them, for messages:
    /// `--source "app" --tag "nightly,db"`.
    pub fn describe(&self) -> String {
        let mut words = Vec::new();
        if let Some(source) = &self.source {
            words.push(format!("--source {source:?}"));
        }
        words.extend(self.hosts.iter().map(|host| format!("--host {host:?}")));
        words.extend(self.tags.iter().map(|set| format!("--tag {:?}", set.join(","))));
        words.join(" ")
    }

    /// The snapshots this filter selects, oldest first, from a list sorted oldest first.
    pub fn apply(&self, snapshots: Vec<(Id, Snapshot)>) -> Vec<(Id, Snapshot)> {
        snapshots.into_iter().filter(|(_, s)| self.selects(s)).collect()
    }
}

/// Which of the selected snapshots a command wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The newest.
    Latest,
    /// Any one, chosen at random (restore drills).
    Random,
    /// An id or unique id prefix.
    Id(String),
}

impl Pick {
    /// `latest`, `random`, or else an id or prefix.
    pub fn parse(text: &str) -> Pick {
        match text {
            "latest" => Pick::Latest,
            "random" => Pick::Random,
            other => Pick::Id(other.to_string()),
        }
    }
}

/// An inclusive upper bound on snapshot times, from a `--at TIME` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    /// The last instant included: Unix seconds and nanoseconds (UTC).
    pub sec: i64,
    pub nsec: u32,
    /// The argument as given, for messages.
    pub text: String,
}

impl At {
    /// Parses RFC 3339 (`2026-12-04T10:00:00Z`, `2026-12-04T12:00:00.5+02:00`) or a date-time
    /// without offset, taken as UTC: `2026-12-04 10:00`, `2026-12-04 10:00:30`, `2026-12-04`.
    /// The bound is the end of the last unit written: `10:00` includes 10:00:59.999999999.
    pub fn parse(text: &str) -> std::result::Result<At, String> {
        At::bound(text, true)
    }

    /// Parses a time as [`At::parse`] does, but the bound is the start of the last unit written:
    /// `10:00` begins at 10:00:00 (a `since` filter's lower bound).
    pub fn parse_start(text: &str) -> std::result::Result<At, String> {
        At::bound(text, false)
    }

    fn bound(text: &str, end: bool) -> std::result::Result<At, String> {
        let invalid = || {
            format!(
                "invalid time {text:?}: give RFC 3339 (2026-12-04T10:00:00Z, 2026-12-04T12:00:00+02:00) or \
                 2026-12-04 10:00[:SS] in UTC"
            )
        };
        let (local, offset) = split_offset(text.trim()).ok_or_else(invalid)?;
        let (start, unit) = parse_local(local).ok_or_else(invalid)?;
        // The whole last unit written (or its start), as nanoseconds, then back to UTC.
        let last = if end { start + unit - 1 } else { start } - i128::from(offset) * 1_000_000_000;
        let sec = i64::try_from(last.div_euclid(1_000_000_000)).map_err(|_| invalid())?;
        Ok(At { sec, nsec: last.rem_euclid(1_000_000_000) as u32, text: text.to_string() })
    }

    /// Whether a snapshot was taken at or before this time.
    pub fn includes(&self, snapshot: &Snapshot) -> bool {
        (snapshot.time_sec, snapshot.time_nsec) <= (self.sec, self.nsec)
    }
}

impl std::str::FromStr for At {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<At, String> {
        At::parse(text)
    }
}

/// Splits a trailing `Z` or `+HH:MM`/`-HH:MM` off; returns the rest and the offset in seconds
/// east of UTC (0 without one).
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(rest) = text.strip_suffix(['Z', 'z']) {
        return Some((rest, 0));
    }
    // An offset needs a time before it: `2026-12-04` ends in `-04`, which is a day.
    let tail = text.len().checked_sub(6).filter(|&at| at > 10 && text.is_char_boundary(at));
    if let Some(at) = tail {
        let (rest, offset) = text.split_at(at);
        let bytes = offset.as_bytes();
        if matches!(bytes[0], b'+' | b'-') && bytes[3] == b':' {
            let hours = number(&offset[1..3], 0, 23)?;
            let minutes = number(&offset[4..6], 0, 59)?;
            let sign = if bytes[0] == b'-' { -1 } else { 1 };
            return Some((rest, sign * (hours * 3600 + minutes * 60)));
        }
    }
    Some((text, 0))
}

/// A date-time without offset: its start in nanoseconds since the epoch (as if UTC) and the
/// length of its last unit in nanoseconds.
fn parse_local(text: &str) -> Option<(i128, i128)> {
    const SECOND: i128 = 1_000_000_000;
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (year, month) = (number(year, 0, 9999)?, number(month, 1, 12)?);
    let day = number(day, 1, days_in_month(year, month))?;
    let days = i128::from(days_from_civil(year, month, day));
    let Some(time) = time else {
        return Some((days * 86_400 * SECOND, 86_400 * SECOND));
    };
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let fields: Vec<&str> = clock.split(':').collect();
    if fields.len() < 2 || fields.len() > 3 || fields.iter().any(|f| f.len() != 2) {
        return None;
    }
    let hours = number(fields[0], 0, 23)?;
    let minutes = number(fields[1], 0, 59)?;
    let seconds = fields.get(2).map_or(Some(0), |s| number(s, 0, 59))?;
    let start = (days * 86_400 + i128::from(hours * 3600 + minutes * 60 + seconds)) * SECOND;
    match fraction {
        None if fields.len() == 2 => Some((start, 60 * SECOND)),
        None => Some((start, SECOND)),
        Some(digits) if fields.len() == 3 && (1..=9).contains(&digits.len()) => {
            let unit = 10i128.pow(9 - digits.len() as u32);
            Some((start + i128::from(number(digits, 0, 999_999_999)?) * unit, unit))
        }
        Some(_) => None,
    }
}

/// A decimal field of ASCII digits within `min..=max`.
fn number(text: &str, min: i64, max: i64) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| (min..=max).contains(n))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date; the inverse of
/// [`crate::clock::civil_from_days`] (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`, for messages.
fn utc(secs: i64) -> String {
    let rest = secs.rem_euclid(86_400);
    let (year, month, day) = crate::clock::civil_from_days(secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest / 60 % 60, rest % 60)
}

/// ` matching --tag "x"` for the filters in a message, or nothing without any.
fn matching(filter: &Filter) -> String {
    match filter.describe() {
        none if none.is_empty() => none,
        filters => format!(" matching {filters}"),
    }
}

/// Why no snapshot was chosen, when filters were given (without any, [`Error::NoSuchSnapshot`]).
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("no snapshot matches {filters} (none of the {total} in the repository; `cairn snapshots` lists them)")]
    NoneSelected { filters: String, total: usize },

    #[error("snapshot {id} does not match {filters}")]
    Excluded { id: String, filters: String },

    #[error(
        "no snapshot{of} at or before {at} (up to {bound}): the earliest is snapshot {earliest_id} from {earliest}"
    )]
    NothingBefore { at: String, bound: String, of: String, earliest_id: String, earliest: String },

    #[error("--at chooses the snapshot by time: give `latest` with it, not the snapshot id {0:?}")]
    AtWithId(String),

    #[error(
        "the only snapshots{of} are safety snapshots that in-place restores took, which `latest`, \
         `random` and --at never choose: give one's id, or --source pre-restore (`cairn snapshots` lists them)"
    )]
    OnlySafety { of: String },

    #[error(
        "{count} snapshot file(s) cannot be read (first: {first}): `{pick}` cannot tell whether one of them is \
         the snapshot it means, so none was chosen. Give a snapshot's id (`cairn snapshots` lists those that can \
         be read); a file that `cairn check` also finds damaged holds no snapshot that can be read: once a copy \
         elsewhere (a sync destination) has been looked at, `cairn forget --force ID` removes it"
    )]
    Damaged { pick: String, count: usize, first: String },
}

/// Chooses a snapshot from the repository's snapshots; see [`choose`]. When a snapshot file
/// cannot be read, a choice by time (`latest`, `random`, `--at`) is refused: the file may be
/// the newest snapshot, and quietly taking the one before it would restore (or drill) older data
/// than asked for. An id still chooses; one that matches nothing says what is damaged.
pub fn find(repo: &Repository, pick: &Pick, filter: &Filter) -> Result<(Id, Snapshot)> {
    let (all, damaged) = repo.snapshots_and_damage()?;
    let Some(first) = damaged.first() else { return choose(all, pick, filter) };
    let refused = |pick: &str| {
        Error::Select(SelectError::Damaged { pick: pick.to_string(), count: damaged.len(), first: first.clone() })
    };
    match pick {
        Pick::Id(spec) => choose(all, pick, filter).map_err(|e| match e {
            Error::NoSuchSnapshot(_) => refused(spec),
            e => e,
        }),
        Pick::Latest if filter.at.is_some() => Err(refused("--at")),
        Pick::Latest => Err(refused("latest")),
        Pick::Random => Err(refused("random")),
    }
}

/// Chooses a snapshot from `all` (oldest first) among those `filter` selects. An id must be one
/// that the filters select, and may not be combined with [`Filter::at`]. Chosen by time or at
/// random, a safety snapshot only counts if the filters name it
/// ([`Filter::names_safety_snapshots`]).
pub fn choose(all: Vec<(Id, Snapshot)>, pick: &Pick, filter: &Filter) -> Result<(Id, Snapshot)> {
    if let (Pick::Id(spec), Some(_)) = (pick, &filter.at) {
        return Err(Error::Select(SelectError::AtWithId(spec.clone())));
    }
    let total = all.len();
    let (mut selected, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, s)| filter.matches(s));
    if let Pick::Id(spec) = pick {
        let wanted = spec.to_ascii_lowercase();
        let prefixed = |(id, _): &(Id, Snapshot)| !wanted.is_empty() && id.to_hex().starts_with(&wanted);
        let mut matching = selected.into_iter().filter(prefixed);
        return match (matching.next(), matching.next()) {
            (Some(found), None) => Ok(found),
            (Some(_), Some(_)) => Err(Error::AmbiguousSnapshot(spec.clone())),
            (None, _) => match others.iter().find(|s| prefixed(s)) {
                Some((id, _)) => {
                    Err(Error::Select(SelectError::Excluded { id: id.short(), filters: filter.describe() }))
                }
                None => Err(Error::NoSuchSnapshot(spec.clone())),
            },
        };
    }
    let before = selected.len();
    if !filter.names_safety_snapshots() {
        selected.retain(|(_, s)| !s.is_safety_snapshot());
    }
    if selected.is_empty() && before > 0 {
        return Err(Error::Select(SelectError::OnlySafety { of: matching(filter) }));
    }
    if selected.is_empty() {
        return Err(match filter.describe() {
            none if none.is_empty() => {
                Error::NoSuchSnapshot(if *pick == Pick::Random { "random" } else { "latest" }.into())
            }
            filters => Error::Select(SelectError::NoneSelected { filters, total }),
        });
    }
    if let Some(at) = &filter.at {
        let (earliest_id, earliest) = (selected[0].0.short(), utc(selected[0].1.time_sec));
        selected.retain(|(_, s)| at.includes(s));
        if selected.is_empty() {
            let (bound, of) = (utc(at.sec), matching(filter));
            let nothing = SelectError::NothingBefore { at: at.text.clone(), bound, of, earliest_id, earliest };
            return Err(Error::Select(nothing));
        }
    }
    let chosen = match pick {
        Pick::Random => {
            u64::from_le_bytes(crate::id::random_bytes()[..8].try_into().expect("8")) as usize % selected.len()
        }
        _ => selected.len() - 1,
    };
    Ok(selected.swap_remove(chosen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> (i64, u32) {
        let at = At::parse(text).unwrap_or_else(|e| panic!("{e}"));
        (at.sec, at.nsec)
    }

    /// 2026-12-04 00:00:00 UTC.
    const DAY: i64 = 1_796_342_400;

    #[test]
    fn times_name_their_whole_last_unit() {
        assert_eq!(utc(DAY), "2026-12-04 00:00:00 UTC");
        assert_eq!(at("2026-12-04"), (DAY + 86_399, 999_999_999));
        assert_eq!(at("2026-12-04 10:00"), (DAY + 36_059, 999_999_999));
        assert_eq!(at("2026-12-04 10:00:30"), (DAY + 36_030, 999_999_999));
        assert_eq!(at("2026-12-04T10:00:30Z"), (DAY + 36_030, 999_999_999));
        assert_eq!(at("2026-12-04t10:00:30z"), (DAY + 36_030, 999_999_999));
        assert_eq!(at("2026-12-04T10:00:30.5Z"), (DAY + 36_030, 599_999_999));
        assert_eq!(at("2026-12-04T10:00:30.123456789Z"), (DAY + 36_030, 123_456_789));
        assert_eq!(at("2026-12-04T12:00:30+02:00"), (DAY + 36_030, 999_999_999));
        assert_eq!(at("2026-12-04T05:30:30-04:30"), (DAY + 36_030, 999_999_999));
        assert_eq!(at("2026-12-04T00:30:00+01:00"), (DAY - 1_800, 999_999_999));
        assert_eq!(at("1970-01-01T00:00:00Z"), (0, 999_999_999));
        assert_eq!(at("1969-12-31 23:59:59"), (-1, 999_999_999));
        assert_eq!(at("2024-02-29 00:00"), (1_709_164_859, 999_999_999));
    }

    #[test]
    fn malformed_times_are_refused() {
        for text in [
            "",
            "yesterday",
            "2026-12-4",
            "2026-13-01",
            "2026-02-29",
            "2026-12-04 24:00",
            "2026-12-04 10",
            "2026-12-04 10:60",
            "2026-12-04 10:00:61",
            "2026-12-04 10:00.5",
            "2026-12-04T10:00:00.Z",
            "2026-12-04T10:00:00.1234567890Z",
            "2026-12-04T10:00:00+2:00",
            "2026-12-04T10:00:00+24:00",
            "2026-12-04T10:00:00 +02:00",
            "+2026-12-04",
            "2026-12-04T10:00:0Z",
        ] {
            assert!(At::parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn dates_round_trip_through_civil_from_days() {
        for days in (-800_000..800_000).step_by(997) {
            let (year, month, day) = crate::clock::civil_from_days(days);
            assert_eq!(days_from_civil(year, i64::from(month), i64::from(day)), days);
        }
    }

    fn snapshot(time_sec: i64, host: &str, source: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            time_sec,
            hostname: host.into(),
            source: source.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Snapshot::default()
        }
    }

    fn all() -> Vec<(Id, Snapshot)> {
        [
            snapshot(100, "a", "app", &["nightly", "db"]),
            snapshot(200, "b", "app", &["nightly"]),
            snapshot(300, "a", "web", &[]),
            snapshot(400, "a", "app", &[]),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, s)| (Id([i as u8 + 1; 32]), s))
        .collect()
    }

    fn time(pick: Pick, filter: Filter) -> Result<i64> {
        choose(all(), &pick, &filter).map(|(_, s)| s.time_sec)
    }

    #[test]
    fn latest_is_the_newest_of_what_the_filters_select() {
        let tags = |values: &[&str]| Filter::tag_sets(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>());
        assert_eq!(time(Pick::Latest, Filter::default()).unwrap(), 400);
        assert_eq!(time(Pick::Latest, Filter { tags: tags(&["nightly"]), ..Filter::default() }).unwrap(), 200);
        assert_eq!(time(Pick::Latest, Filter { tags: tags(&["nightly,db"]), ..Filter::default() }).unwrap(), 100);
        assert_eq!(time(Pick::Latest, Filter { tags: tags(&["db", "nightly"]), ..Filter::default() }).unwrap(), 200);
        assert_eq!(time(Pick::Latest, Filter { tags: tags(&[""]), ..Filter::default() }).unwrap(), 400);
        assert_eq!(time(Pick::Latest, Filter { hosts: vec!["b".into()], ..Filter::default() }).unwrap(), 200);
        assert_eq!(time(Pick::Latest, Filter::of_source(Some("web"))).unwrap(), 300);
        let before =
            |text: &str, filter: Filter| time(Pick::Latest, Filter { at: Some(At::parse(text).unwrap()), ..filter });
        assert_eq!(before("1970-01-01T00:05:00Z", Filter::default()).unwrap(), 300);
        assert_eq!(before("1970-01-01T00:05:00Z", Filter::of_source(Some("app"))).unwrap(), 200);
        assert_eq!(before("1970-01-01T00:01:40.000000000Z", Filter::default()).unwrap(), 100);
        let err = before("1970-01-01T00:01:39.999999999Z", Filter::default()).unwrap_err().to_string();
        assert!(err.contains("earliest is snapshot 01010101 from 1970-01-01 00:01:40 UTC"), "{err}");
        let err = before("1970-01-01 00:01", Filter::of_source(Some("web"))).unwrap_err().to_string();
        assert!(err.contains("matching --source \"web\"") && err.contains("00:05:00 UTC"), "{err}");
    }

    #[test]
    fn safety_snapshots_are_chosen_only_by_id_or_by_name() {
        let mut all = all();
        let safety = |time_sec| snapshot(time_sec, "a", "pre-restore", &["protected", "pre-restore"]);
        all.push((Id([5; 32]), safety(500)));
        let pick = |pick: Pick, filter: Filter| choose(all.clone(), &pick, &filter).map(|(_, s)| s.time_sec);
        assert_eq!(pick(Pick::Latest, Filter::default()).unwrap(), 400);
        for _ in 0..20 {
            assert_ne!(pick(Pick::Random, Filter::default()).unwrap(), 500);
        }
        let host = Filter { hosts: vec!["a".into()], ..Filter::default() };
        assert_eq!(pick(Pick::Latest, host.clone()).unwrap(), 400);
        let at = Filter { at: Some(At::parse("1970-01-01T00:10:00Z").unwrap()), ..Filter::default() };
        assert_eq!(pick(Pick::Latest, at).unwrap(), 400);
        // Named, it is there to choose.
        assert_eq!(pick(Pick::Latest, Filter::of_source(Some("pre-restore"))).unwrap(), 500);
        assert_eq!(pick(Pick::Latest, Filter { tags: vec![vec!["pre-restore".into()]], ..host }).unwrap(), 500);
        assert_eq!(pick(Pick::Id("0505".into()), Filter::default()).unwrap(), 500);
        // Only safety snapshots: the error says why `latest` finds none.
        let err = choose(vec![(Id([5; 32]), safety(500))], &Pick::Latest, &Filter::default()).unwrap_err();
        assert!(err.to_string().contains("--source pre-restore"), "{err}");
    }

    #[test]
    fn what_nothing_matches_names_the_filters() {
        let filter = Filter { hosts: vec!["c".into()], tags: vec![vec!["x".into(), "y".into()]], ..Filter::default() };
        let err = time(Pick::Latest, filter.clone()).unwrap_err().to_string();
        assert!(err.contains("--host \"c\" --tag \"x,y\"") && err.contains("none of the 4"), "{err}");
        let err = time(Pick::Id("0202".into()), Filter::of_source(Some("web"))).unwrap_err().to_string();
        assert_eq!(err, "snapshot 02020202 does not match --source \"web\"");
        assert!(matches!(time(Pick::Id("09".into()), Filter::default()), Err(Error::NoSuchSnapshot(_))));
        assert!(matches!(choose(Vec::new(), &Pick::Latest, &Filter::default()), Err(Error::NoSuchSnapshot(_))));
        let at = Filter { at: Some(At::parse("2026-12-04").unwrap()), ..Filter::default() };
        let err = time(Pick::Id("0202".into()), at).unwrap_err().to_string();
        assert!(err.contains("--at") && err.contains("latest"), "{err}");
        assert_eq!(time(Pick::Id("0202".into()), Filter::of_source(Some("app"))).unwrap(), 200);
    }
}
