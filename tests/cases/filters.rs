//! Finding the right snapshot (issue 21): `--source`, `--tag` and `--host` select snapshots in
//! `snapshots`, `ls`, `restore` and `drill`; `latest` is the newest of what they select; `--at
//! TIME` picks the newest at or before a time (Litestream's point-in-time restore). Errors name
//! the filters, the earliest snapshot, and the snapshot id the user means.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

/// A source directory and a repository in `scratch`, without snapshots.
fn setup(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    init(&repo);
    (source, repo)
}

/// Takes a snapshot of `source` holding one file, `file`, with `content`; returns its full id.
fn take(repo: &Path, source: &Path, content: &str, args: &[&str]) -> String {
    fs::write(source.join("file"), content).unwrap();
    json(cairn(repo).arg("snapshot").args(args).arg(source))["id"].as_str().unwrap().to_string()
}

/// The full ids `cairn snapshots` lists with these filters, oldest first.
fn listed(repo: &Path, filters: &[&str]) -> Vec<String> {
    let list = json(cairn(repo).arg("snapshots").args(filters));
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

/// The content of `file` that `restore` with these arguments writes (into a fresh target).
fn restored(repo: &Path, scratch: &Scratch, args: &[&str]) -> String {
    let target = scratch.join(format!("out-{}", args.join("_").replace(['/', ' ', ':'], "-")));
    ok(cairn(repo).arg("restore").args(args).arg("--target").arg(&target));
    fs::read_to_string(target.join("file")).unwrap()
}

/// Runs a command that must fail with exit code 1; returns its stderr.
fn refused(command: &mut std::process::Command) -> String {
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "must fail");
    String::from_utf8(output.stderr).unwrap()
}

/// A snapshot's start time in nanoseconds since the epoch, from `cairn snapshots --json`.
fn nanos(repo: &Path, id: &str) -> i128 {
    let list = json(cairn(repo).arg("snapshots"));
    let entry = list.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap();
    i128::from(entry["time"].as_i64().unwrap()) * 1_000_000_000 + i128::from(entry["time_nsec"].as_u64().unwrap())
}

/// Nanoseconds since the epoch as RFC 3339 with nine fraction digits, in UTC.
fn rfc3339(nanos: i128) -> String {
    let (secs, nsec) = (nanos.div_euclid(1_000_000_000) as i64, nanos.rem_euclid(1_000_000_000));
    let (year, month, day) = cairn::clock::civil_from_days(secs.div_euclid(86_400));
    let rest = secs.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nsec:09}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

#[test]
fn latest_is_the_newest_of_what_the_tags_select() {
    let scratch = Scratch::new("filters-tags");
    let (source, repo) = setup(&scratch);
    let both = take(&repo, &source, "both", &["--tag", "nightly", "--tag", "db"]);
    let nightly = take(&repo, &source, "nightly", &["--tag", "nightly"]);
    let untagged = take(&repo, &source, "untagged", &[]);
    // The newest snapshot carries no tag: `latest --tag` must not fall back to it.
    assert_eq!(restored(&repo, &scratch, &["latest", "--tag", "nightly"]), "nightly");
    assert_eq!(restored(&repo, &scratch, &["latest"]), "untagged");
    // restic's semantics: a comma list needs every tag, repeated flags any of them.
    assert_eq!(restored(&repo, &scratch, &["latest", "--tag", "db,nightly"]), "both");
    assert_eq!(listed(&repo, &["--tag", "nightly,db"]), [both.as_str()]);
    assert_eq!(listed(&repo, &["--tag", "db", "--tag", "nightly"]), [both.as_str(), nightly.as_str()]);
    assert_eq!(listed(&repo, &["--tag", ""]), [untagged.as_str()]);
    let text = ok(cairn(&repo).args(["snapshots", "--tag", "nightly"]));
    assert!(text.contains(&nightly[..8]) && !text.contains(&untagged[..8]), "{text}");
    assert!(text.contains("2 of 3 snapshots match --tag \"nightly\""), "{text}");
    // `ls` and `drill` pick the same snapshot.
    let entries = ok(cairn(&repo).args(["ls", "latest", "--tag", "db", "-l"]));
    assert!(entries.contains(" 4 B "), "{entries}");
    let report = json(cairn(&repo).args(["drill", "--tag", "nightly", "--scratch"]).arg(scratch.join("drills")));
    assert_eq!(report["snapshot"], nightly.as_str());

    // Nothing selected: the error names the filters; nothing is restored.
    let target = scratch.join("none");
    let err = refused(cairn(&repo).args(["restore", "latest", "--tag", "nightly,weekly", "--target"]).arg(&target));
    assert!(err.contains("no snapshot matches --tag \"nightly,weekly\""), "{err}");
    assert!(!target.exists(), "nothing restored");
    // An id the filters exclude is refused, not restored behind the user's back.
    let err = refused(cairn(&repo).args(["restore", &untagged[..8], "--tag", "nightly", "--target"]).arg(&target));
    assert!(err.contains(&format!("snapshot {} does not match --tag \"nightly\"", &untagged[..8])), "{err}");
    assert!(!target.exists(), "nothing restored");
}

#[test]
fn host_and_source_filters() {
    let scratch = Scratch::new("filters-host");
    let (source, repo) = setup(&scratch);
    let web1 = take(&repo, &source, "web-1 app", &["--host", "web-1", "--source", "app"]);
    let web2 = take(&repo, &source, "web-2 app", &["--host", "web-2", "--source", "app"]);
    let db = take(&repo, &source, "web-1 db", &["--host", "web-1", "--source", "db"]);
    let list = json(cairn(&repo).arg("snapshots"));
    let hosts: Vec<_> = list.as_array().unwrap().iter().map(|s| s["hostname"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["web-1", "web-2", "web-1"], "--host is recorded");
    // By default every host; --host narrows, repeated it widens.
    assert_eq!(restored(&repo, &scratch, &["latest"]), "web-1 db");
    assert_eq!(restored(&repo, &scratch, &["latest", "--host", "web-2"]), "web-2 app");
    assert_eq!(restored(&repo, &scratch, &["latest", "--host", "web-1", "--source", "app"]), "web-1 app");
    assert_eq!(listed(&repo, &["--host", "web-1"]), [web1.as_str(), db.as_str()]);
    assert_eq!(listed(&repo, &["--host", "web-1", "--host", "web-2"]).len(), 3);
    assert_eq!(listed(&repo, &["--source", "app"]), [web1.as_str(), web2.as_str()]);
    assert_eq!(listed(&repo, &["--source", "db", "--host", "web-2"]), Vec::<String>::new());
    let files = ok(cairn(&repo).args(["ls", "latest", "/file", "--json", "--source", "app", "--host", "web-1"]));
    assert!(files.contains("\"size\":9"), "{files}");
    let report = json(cairn(&repo).args(["drill", "--host", "web-2", "--scratch"]).arg(scratch.join("drills")));
    assert_eq!(report["snapshot"], web2.as_str());
    let err = refused(cairn(&repo).args(["ls", "latest", "--source", "db", "--host", "web-2"]));
    assert!(err.contains("no snapshot matches --source \"db\" --host \"web-2\""), "{err}");
    // The parent of a snapshot is found by the host it records.
    ok(cairn(&repo).args(["snapshot", "--host", "web-2", "--source", "app"]).arg(&source));
    let list = json(cairn(&repo).arg("snapshots"));
    assert_eq!(list[3]["parent"], web2.as_str(), "the parent is web-2's snapshot, not web-1's newer one");
}

#[test]
fn at_picks_the_newest_snapshot_at_or_before_a_time() {
    let scratch = Scratch::new("filters-at");
    let (source, repo) = setup(&scratch);
    let first = take(&repo, &source, "first", &["--tag", "a"]);
    let second = take(&repo, &source, "second", &[]);
    let (t1, t2) = (nanos(&repo, &first), nanos(&repo, &second));
    assert!(t1 < t2);
    let between = rfc3339(t1 + (t2 - t1) / 2);
    assert_eq!(restored(&repo, &scratch, &["latest", "--at", &between]), "first");
    // Exactly a snapshot's time picks it.
    assert_eq!(restored(&repo, &scratch, &["latest", "--at", &rfc3339(t1)]), "first");
    assert_eq!(restored(&repo, &scratch, &["latest", "--at", &rfc3339(t2)]), "second");
    // The same instant with an offset.
    let east = rfc3339(t1 + 2 * 3_600_000_000_000).replace('Z', "+02:00");
    assert_eq!(restored(&repo, &scratch, &["latest", "--at", &east]), "first");
    // --at and the other filters together, in every command that takes them.
    assert_eq!(listed(&repo, &["--at", &between]), [first.as_str()]);
    assert_eq!(listed(&repo, &["--at", &rfc3339(t2), "--tag", "a"]), [first.as_str()]);
    let report = json(cairn(&repo).args(["drill", "--at", &between, "--scratch"]).arg(scratch.join("drills")));
    assert_eq!(report["snapshot"], first.as_str());
    ok(cairn(&repo).args(["ls", "latest", "--at", &between]));

    // Before the first snapshot: an error that names the earliest, and nothing restored.
    let target = scratch.join("none");
    for before in [rfc3339(t1 - 1), "2020-01-01 00:00".to_string()] {
        let err = refused(cairn(&repo).args(["restore", "latest", "--at", &before, "--target"]).arg(&target));
        assert!(err.contains(&format!("no snapshot at or before {before}")), "{err}");
        assert!(err.contains(&format!("the earliest is snapshot {}", &first[..8])), "{err}");
        assert!(!target.exists(), "nothing restored");
    }
    // With a filter, the earliest of what it selects.
    let err = refused(cairn(&repo).args(["ls", "latest", "--tag", "", "--at", &between]));
    assert!(err.contains(&format!("no snapshot matching --tag \"\" at or before {between}")), "{err}");
    assert!(err.contains(&format!("the earliest is snapshot {}", &second[..8])), "{err}");
    // An id is already one snapshot: --at with it is a mistake, said so.
    let err = refused(cairn(&repo).args(["restore", &second[..8], "--at", &between, "--target"]).arg(&target));
    assert!(err.contains("--at") && err.contains("latest"), "{err}");
    assert!(!target.exists(), "nothing restored");
    for bad in ["yesterday", "2026-12-04 10", "2026-02-30"] {
        let err = String::from_utf8(run(cairn(&repo).args(["ls", "latest", "--at", bad])).stderr).unwrap();
        assert!(err.contains("invalid time") && err.contains("RFC 3339"), "{err}");
    }
}

/// A time as `cairn snapshots` prints it (to the second, UTC) names that whole second: it picks
/// the snapshot listed there, even though the snapshot started some nanoseconds later.
#[test]
fn a_time_copied_from_the_listing_picks_that_snapshot() {
    let scratch = Scratch::new("filters-at-listing");
    let (source, repo) = setup(&scratch);
    let first = take(&repo, &source, "first", &[]);
    // The second snapshot must start in a later second than the first.
    let t1 = nanos(&repo, &first);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
    let next_second = (t1 / 1_000_000_000 + 1) * 1_000_000_000;
    if now < next_second {
        std::thread::sleep(std::time::Duration::from_nanos((next_second - now) as u64 + 10_000_000));
    }
    take(&repo, &source, "second", &[]);
    let listing = json(cairn(&repo).arg("snapshots"));
    let shown = listing[0]["time_utc"].as_str().unwrap().to_string();
    assert!(shown.len() == 19 && !shown.contains('.'), "{shown}");
    assert_eq!(restored(&repo, &scratch, &["latest", "--at", &shown]), "first");
    assert_eq!(restored(&repo, &scratch, &["latest", "--at", &shown.replace(' ', "T")]), "first");
}

/// `restore ID --include /typo` names the snapshot the user gave, not its root tree.
#[test]
fn a_missing_include_names_the_snapshot_id() {
    let scratch = Scratch::new("filters-include");
    let (source, repo) = setup(&scratch);
    let id = take(&repo, &source, "content", &[]);
    let tree = json(cairn(&repo).arg("snapshots"))[0]["tree"].as_str().unwrap().to_string();
    let target = scratch.join("out");
    for spec in [&id[..8], &id[..12], "latest"] {
        let err = refused(cairn(&repo).args(["restore", spec, "--include", "/typo", "--target"]).arg(&target));
        assert!(err.contains(&format!("snapshot {} has no path \"/typo\"", &id[..8])), "{err}");
        assert!(!err.contains(&tree[..8]), "names the tree: {err}");
        assert!(!target.exists(), "nothing restored");
    }
    let err = refused(cairn(&repo).args(["ls", &id[..8], "/typo"]));
    assert!(err.contains(&format!("snapshot {} has no path \"/typo\"", &id[..8])), "{err}");
}

/// A snapshot file that cannot be read may be the newest: `latest`, `--at` and a drill refuse,
/// saying which file, rather than quietly taking the one before it (older data than asked for,
/// with a success exit). An id still chooses; one that matches nothing names the damage.
#[test]
fn a_damaged_snapshot_file_refuses_a_choice_by_time_but_not_by_id() {
    let scratch = Scratch::new("select-damaged");
    let (source, repo) = setup(&scratch);
    let older = take(&repo, &source, "older", &[]);
    let newest = take(&repo, &source, "newest", &[]);
    fs::write(repo.join("snapshots").join(&newest), b"not a snapshot any more").unwrap();
    let t = scratch.join("t");
    let target = ["--target", t.to_str().unwrap()];
    for args in [&["restore", "latest"][..], &["restore", "latest", "--at", "2999-01-01"]] {
        let err = refused(cairn(&repo).args(args).args(target));
        assert!(err.contains("cannot be read") && err.contains(&newest[..8]), "{args:?}: {err}");
    }
    let err = refused(cairn(&repo).args(["ls", "latest"]));
    assert!(err.contains("cannot be read"), "{err}");
    assert!(!scratch.join("t").exists(), "nothing restored");
    let err = refused(cairn(&repo).args(["drill", "--snapshot", "random"]));
    assert!(err.contains("cannot be read"), "{err}");
    assert_eq!(restored(&repo, &scratch, &[&older[..12]]), "older");
    let err = refused(cairn(&repo).args(["restore", &newest[..12], "--target"]).arg(scratch.join("t")));
    assert!(err.contains("cannot be read"), "{err}");
}

#[test]
fn a_damaged_snapshot_file_is_removed_by_forget_force_of_its_id_and_by_nothing_else() {
    let scratch = Scratch::new("forget-damaged");
    let (source, repo) = setup(&scratch);
    let older = take(&repo, &source, "older", &[]);
    let newest = take(&repo, &source, "newest", &[]);
    let file = repo.join("snapshots").join(&newest);
    fs::write(&file, b"not a snapshot any more").unwrap();
    let short = &newest[..8];
    // Without --force: what the file is and the command that removes it; nothing removed.
    let err = refused(cairn(&repo).args(["forget", short]));
    assert!(err.contains("damaged") && err.contains(&format!("cairn forget --force {newest}")), "{err}");
    // Not with --prune (the prune refuses while it is there, and a refused forget changes nothing),
    // nor by a policy, nor by a prefix that names no file.
    let err = refused(cairn(&repo).args(["forget", "--force", "--prune", short]));
    assert!(err.contains("first, then prune"), "{err}");
    let err = refused(cairn(&repo).args(["forget", "--keep-last", "1"]));
    assert!(err.contains("forget --force ID"), "{err}");
    let err = refused(cairn(&repo).args(["forget", "--force", "0000000000"]));
    assert!(err.contains("no snapshot file is named so"), "{err}");
    // A dry run says it would go, and leaves it.
    let out = ok(cairn(&repo).args(["forget", "--force", "--dry-run", short]));
    assert!(out.contains(&format!("remove {short}  (a damaged file")), "{out}");
    assert!(file.exists(), "only --force without --dry-run removes the file");
    // Then it goes, alone; the repository is whole again and `latest` chooses again.
    let removed = json(cairn(&repo).args(["forget", "--force", short]));
    let decisions = removed["snapshots"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{removed}");
    assert_eq!(decisions[0]["id"], newest.as_str());
    assert!(decisions[0]["damaged"].as_str().unwrap().contains("damaged"), "{removed}");
    assert!(!file.exists());
    assert_eq!(listed(&repo, &[]), [older.as_str()]);
    ok(cairn(&repo).arg("check"));
    assert_eq!(restored(&repo, &scratch, &["latest"]), "older");
    // A prefix that names a snapshot and a damaged file names neither: choosing among the
    // snapshots that can be read would remove the one the user may not mean.
    let decoy = format!("{}{}", &older[..10], "0".repeat(54));
    fs::write(repo.join("snapshots").join(&decoy), b"damaged").unwrap();
    let err = refused(cairn(&repo).args(["forget", &older[..10]]));
    assert!(err.contains("ambiguous"), "{err}");
    assert!(repo.join("snapshots").join(&older).exists(), "nothing was forgotten");
    // A file as written (its bytes match its name) in an encryption mode this cairn does not
    // know may be a newer cairn's: not damage, never removed.
    let mut newer = fs::read(repo.join("snapshots").join(&older)).unwrap();
    newer[10] = 2;
    let name = cairn::id::Id::of(&newer).to_hex();
    fs::write(repo.join("snapshots").join(&name), &newer).unwrap();
    let err = refused(cairn(&repo).args(["forget", "--force", &name[..16]]));
    assert!(err.contains("encryption mode") && err.contains("nothing was forgotten"), "{err}");
    assert!(repo.join("snapshots").join(&name).exists());
}
