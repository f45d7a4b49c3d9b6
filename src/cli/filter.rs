//! The snapshot filters that `snapshots`, `ls`, `restore` and `drill` share (`--source`, `--tag`,
//! `--host`, `--at`), flattened into each command's arguments so they read and behave alike.

use cairn::select::{At, Filter, Pick};

#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Which snapshots")]
pub struct FilterArgs {
    /// Only snapshots of this source (its --source name, or its paths). `pre-restore` selects the
    /// safety snapshots of in-place restores, which `latest`, `random` and --at otherwise never
    /// choose (as does --tag pre-restore)
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Only snapshots that carry every tag of TAG[,TAG...]; repeated, those that match any one
    /// of them (as restic: `--tag a,b` = both, `--tag a --tag b` = either; `--tag ''` = untagged)
    #[arg(long = "tag", value_name = "TAG[,TAG...]")]
    pub tags: Vec<String>,
    /// Only snapshots taken on this host, as `cairn snapshots` shows it (repeatable: any of them;
    /// default: every host)
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Only snapshots taken at or before TIME, so `latest` is the newest then. TIME is RFC 3339
    /// (2026-12-04T10:00:00Z, 2026-12-04T12:00:00+02:00) or `2026-12-04 10:00[:SS]` or
    /// `2026-12-04` in UTC, as `cairn snapshots` prints times, never local time; it includes its
    /// whole last unit (10:00 means up to 10:00:59)
    #[arg(long, value_name = "TIME", value_parser = At::parse)]
    pub at: Option<At>,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            source: self.source.clone(),
            hosts: self.hosts.clone(),
            tags: Filter::tag_sets(&self.tags),
            at: self.at.clone(),
        }
    }
}

/// Resolves a command's SNAPSHOT argument (an id, a unique prefix, or `latest`) among the
/// snapshots the filters select.
pub fn find(
    repo: &cairn::repository::Repository,
    spec: &str,
    filters: &FilterArgs,
) -> cairn::error::Result<(cairn::id::Id, cairn::format::snapshot::Snapshot)> {
    let pick = if spec == "latest" { Pick::Latest } else { Pick::Id(spec.to_string()) };
    cairn::select::find(repo, &pick, &filters.filter())
}
