//! forget and prune: retention through the CLI, space really freed, concurrent snapshots stay
//! restorable, and a prune killed at any point leaves a consistent repository.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Bytes of all files below `dir`.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Version `v` of a tree: shared files, files of this version, and files changed in place.
fn write_version(root: &Path, v: u64) {
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::create_dir_all(root.join("own")).unwrap();
    for i in 0..6 {
        write_noise_file(&root.join(format!("shared/s{i}")), 1_500_000, 500 + i);
    }
    for i in 0..6 {
        write_noise_file(&root.join(format!("own/v{v}-{i}")), 1_500_000, v * 100 + i);
    }
    fs::write(root.join("version.txt"), format!("version {v}\n").repeat(1000)).unwrap();
}

#[test]
fn forget_keep_last_prune_frees_the_space_of_forgotten_data() {
    let scratch = Scratch::new("prune-size");
    let (live, repo, fresh) = (scratch.join("live"), scratch.join("repo"), scratch.join("fresh"));
    // Unencrypted, so both repositories cut chunks alike: an encrypted one keys its gear table
    // with a secret of its own, and this data repeats itself, so how much of that repetition
    // dedups would differ between the two and blur the comparison of sizes.
    ok(cairn(&repo).args(["init", "--encryption", "none"]));
    write_version(&live, 1);
    ok(cairn(&repo).arg("snapshot").arg(&live));
    write_version(&live, 2);
    ok(cairn(&repo).arg("snapshot").arg(&live).args(["--tag", "v2"]));
    // A protected snapshot of something else survives any policy.
    fs::create_dir_all(scratch.join("other")).unwrap();
    fs::write(scratch.join("other/f"), b"other").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("other")).args(["--tag", "protected"]));
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("other")));

    let plan = json(cairn(&repo).args(["forget", "--keep-last", "1", "--dry-run"]));
    let kept: Vec<_> = plan["snapshots"].as_array().unwrap().iter().filter(|d| d["keep"] == true).collect();
    assert_eq!(kept.len(), 3, "newest of each source, plus the protected one: {plan}");
    assert!(kept.iter().any(|d| d["reasons"].as_array().unwrap().iter().any(|r| r == "protected")));
    assert_eq!(json(cairn(&repo).arg("snapshots")).as_array().unwrap().len(), 4, "dry run changes nothing");

    let before = size_of(&repo);
    ok(cairn(&repo).args(["forget", "--keep-last", "1", "--prune"]));
    let after = size_of(&repo);
    ok(cairn(&fresh).args(["init", "--encryption", "none"]));
    ok(cairn(&fresh).arg("snapshot").arg(&live));
    ok(cairn(&fresh).arg("snapshot").arg(scratch.join("other")));
    let reference = size_of(&fresh);
    eprintln!("repository {before} -> {after} bytes; a fresh one holding what is kept: {reference}");
    assert!(after as f64 <= reference as f64 * 1.05, "{after} vs {reference}");
    ok(cairn(&repo).args(["check", "--read-data"]));
    let target = scratch.join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    let list = json(cairn(&repo).arg("snapshots"));
    let v2 =
        list.as_array().unwrap().iter().find(|s| s["tags"][0] == "v2").unwrap()["id"].as_str().unwrap().to_string();
    let target = scratch.join("v2");
    ok(cairn(&repo).args(["restore", &v2, "--target"]).arg(&target));
    assert_same_tree(&live, &target);
    // A second prune has nothing left to do.
    let again = json(cairn(&repo).args(["prune"]));
    assert_eq!(again["report"]["packs_deleted"], 0, "{again}");
}

#[test]
fn forget_needs_a_policy_or_ids() {
    let scratch = Scratch::new("forget-args");
    let repo = scratch.join("repo");
    init(&repo);
    let out = run(cairn(&repo).arg("forget"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to guess"));
    fs::create_dir_all(scratch.join("d")).unwrap();
    let id = json(cairn(&repo).arg("snapshot").arg(scratch.join("d")))["id"].as_str().unwrap().to_string();
    ok(cairn(&repo).args(["forget", &id[..10]]));
    assert!(json(cairn(&repo).arg("snapshots")).as_array().unwrap().is_empty());
}

#[test]
fn snapshots_racing_prunes_stay_restorable() {
    let scratch = Scratch::new("prune-race");
    let (live, repo) = (scratch.join("live"), scratch.join("repo"));
    init(&repo);
    fs::create_dir_all(&live).unwrap();
    let pruner = {
        let repo = repo.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                let out = run(cairn(&repo).args(["--quiet", "forget", "--keep-last", "2", "--prune"]));
                assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("give"), "prune failed");
            }
        })
    };
    // Round i holds files i-2..=i: each snapshot's content is known.
    let mut taken = Vec::new();
    for round in 0..20u64 {
        write_noise_file(&live.join(format!("f{round}")), 700_000, round);
        if round >= 3 {
            fs::remove_file(live.join(format!("f{}", round - 3))).unwrap();
        }
        let id = json(cairn(&repo).arg("snapshot").arg(&live))["id"].as_str().unwrap().to_string();
        taken.push((id, round));
    }
    pruner.join().unwrap();
    ok(cairn(&repo).args(["check", "--read-data"]));
    let remaining = json(cairn(&repo).arg("snapshots"));
    let remaining: Vec<&str> = remaining.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(!remaining.is_empty());
    for (id, round) in taken.iter().filter(|(id, _)| remaining.contains(&id.as_str())) {
        let target = scratch.join(format!("r{round}"));
        ok(cairn(&repo).args(["--quiet", "restore", id, "--target"]).arg(&target));
        let mut names: Vec<String> =
            fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let mut expected: Vec<String> = (round.saturating_sub(2)..=*round).map(|i| format!("f{i}")).collect();
        expected.sort();
        assert_eq!(names, expected, "snapshot of round {round}");
        for name in names {
            let i: u64 = name[1..].parse().unwrap();
            assert!(fs::read(target.join(&name)).unwrap() == noise(700_000, i), "{name} of round {round}");
        }
    }
}

#[test]
fn prune_killed_at_any_point_leaves_a_consistent_repository() {
    let scratch = Scratch::new("prune-kill");
    let (live, template) = (scratch.join("live"), scratch.join("template"));
    init(&template);
    let mut states = Vec::new();
    for v in 1..=4u64 {
        write_version(&live, v);
        let id = json(cairn(&template).arg("snapshot").arg(&live))["id"].as_str().unwrap().to_string();
        states.push(id);
    }
    ok(cairn(&template).args(["forget", "--keep-last", "2"]));
    let kept = &states[2..];

    // Kill points: timed, and on what the prune does to the repository, step by step: the
    // first repacked pack written, the first new index file, the first old index file deleted,
    // the first pack deleted.
    type Seen = fn(usize, usize, usize, usize) -> bool; // (packs0, indexes0, packs, indexes)
    let triggers: [(&str, u64, Option<Seen>); 12] = [
        ("at once", 0, None),
        ("after 10 ms", 10_000, None),
        ("after 30 ms", 30_000, None),
        ("new pack written", 0, Some(|p0, _, p, _| p > p0)),
        ("new index file", 0, Some(|_, i0, _, i| i > i0)),
        ("old index file deleted", 0, Some(|_, i0, _, i| i > 0 && i < i0 + 1 && i != i0)),
        ("first pack deleted", 0, Some(|p0, _, p, _| p < p0 + 1 && p != p0 + 1 && p < p0)),
        ("after 45 ms", 45_000, None),
        ("after 55 ms", 55_000, None),
        ("after 65 ms", 65_000, None),
        ("new pack written (2)", 0, Some(|p0, _, p, _| p > p0)),
        ("first pack deleted (2)", 0, Some(|p0, _, p, _| p < p0)),
    ];
    let mut outcomes = Vec::new();
    for (round, (label, delay, seen)) in triggers.into_iter().enumerate() {
        let repo = scratch.join(format!("repo-{round}"));
        assert!(std::process::Command::new("cp").arg("-a").arg(&template).arg(&repo).status().unwrap().success());
        let count_indexes = |repo: &Path| fs::read_dir(repo.join("index")).unwrap().count();
        let (packs, indexes) = (pack_count(&repo), count_indexes(&repo));
        let started = Instant::now();
        let mut child = cairn(&repo).args(["--quiet", "prune"]).spawn().unwrap();
        match seen {
            None => std::thread::sleep(Duration::from_micros(delay)),
            Some(seen) => {
                while !seen(packs, indexes, pack_count(&repo), count_indexes(&repo))
                    && child.try_wait().unwrap().is_none()
                {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        outcomes.push(format!(
            "round {round} ({label}): killed after {:?}{}: packs {packs} -> {}, index files {indexes} -> {}",
            started.elapsed(),
            if finished { " (had finished)" } else { "" },
            pack_count(&repo),
            count_indexes(&repo)
        ));
        // Consistent, every kept snapshot restores, and a second prune completes.
        ok(cairn(&repo).args(["check", "--read-data"]));
        for id in kept {
            let target = scratch.join(format!("restore-{round}-{}", &id[..8]));
            ok(cairn(&repo).args(["--quiet", "restore", id, "--target"]).arg(&target));
            fs::remove_dir_all(&target).unwrap();
        }
        ok(cairn(&repo).args(["--quiet", "prune"]));
        ok(cairn(&repo).arg("check"));
        let target = scratch.join(format!("final-{round}"));
        ok(cairn(&repo).args(["--quiet", "restore", &kept[1], "--target"]).arg(&target));
        assert_same_tree(&live, &target);
        fs::remove_dir_all(&target).unwrap();
        fs::remove_dir_all(&repo).unwrap();
    }
    eprintln!("{}", outcomes.join("\n"));
}

#[test]
fn stats_attribute_storage_to_sources() {
    let scratch = Scratch::new("stats");
    let repo = scratch.join("repo");
    let (a, b) = (scratch.join("a"), scratch.join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    write_noise_file(&a.join("only-a"), 2_000_000, 1);
    write_noise_file(&a.join("common"), 1_000_000, 3);
    write_noise_file(&b.join("common"), 1_000_000, 3);
    write_noise_file(&b.join("only-b"), 3_000_000, 2);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&a).args(["--source", "a"]));
    ok(cairn(&repo).arg("snapshot").arg(&a).args(["--source", "a"]));
    ok(cairn(&repo).arg("snapshot").arg(&b).args(["--source", "b"]));
    let report = json(cairn(&repo).arg("stats"));
    let source =
        |name: &str| report["sources"].as_array().unwrap().iter().find(|s| s["source"] == name).unwrap().clone();
    let (sa, sb) = (source("a"), source("b"));
    assert_eq!(sa["snapshots"], 2);
    assert_eq!(sa["logical_bytes"], 3_000_000);
    // Noise does not compress: the shared file costs its size (plus each sealed chunk's 40-byte
    // nonce and tag), once, shown on both sides.
    let shared = sa["shared_bytes"].as_u64().unwrap();
    assert!((1_000_000..1_000_200).contains(&shared), "{sa}");
    assert_eq!(sb["shared_bytes"], shared);
    let unique_a = sa["unique_bytes"].as_u64().unwrap();
    assert!((2_000_000..2_010_000).contains(&unique_a), "{sa}");
    // Priced, each source pays for what only it holds and half of what it shares; the shares add
    // up to the live bytes, so the bill is split without counting a byte twice.
    let priced = json(cairn(&repo).args(["stats", "--cost-per-gib-month", "1024"]));
    let share = |name: &str| {
        let s = priced["sources"].as_array().unwrap().iter().find(|s| s["source"] == name).unwrap().clone();
        (s["attributed_bytes"].as_u64().unwrap(), s["monthly_cost"].as_f64().unwrap())
    };
    let ((attributed_a, cost_a), (attributed_b, _)) = (share("a"), share("b"));
    assert_eq!(attributed_a, unique_a + shared / 2);
    assert!((cost_a - attributed_a as f64 / 1048576.0).abs() < 1e-6, "1024 per GiB is 1 per MiB: {cost_a}");
    let live = sa["stored_bytes"].as_u64().unwrap() + sb["stored_bytes"].as_u64().unwrap() - shared;
    assert!((attributed_a + attributed_b).abs_diff(live) <= 1, "{attributed_a} + {attributed_b} vs {live}");
    // Forgetting every snapshot of a frees about what stats said was unique to it.
    let before = json(cairn(&repo).arg("stats"))["repository_bytes"].as_u64().unwrap();
    let ids: Vec<String> = json(cairn(&repo).arg("snapshots"))
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["source"] == "a")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ok(cairn(&repo).arg("forget").args(&ids).arg("--prune").args(["--max-unused", "0"]));
    let after = json(cairn(&repo).arg("stats"))["repository_bytes"].as_u64().unwrap();
    let freed = before - after;
    eprintln!("unique to a: {unique_a}, freed by forgetting a: {freed}");
    assert!(freed >= unique_a && freed < unique_a + 20_000, "freed {freed}, unique {unique_a}");
}

#[test]
fn prune_refuses_a_repository_with_a_damaged_manifest() {
    let scratch = Scratch::new("prune-damaged");
    let repo = scratch.join("repo");
    fs::create_dir_all(scratch.join("a")).unwrap();
    write_noise_file(&scratch.join("a/f"), 500_000, 1);
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("a")));
    let manifest = fs::read_dir(repo.join("snapshots")).unwrap().next().unwrap().unwrap().path();
    flip_byte(&manifest, 30, 1);
    // Skipped as damaged, the manifest would look like no snapshot at all, and its data dead.
    let packs = pack_count(&repo);
    let out = run(cairn(&repo).arg("prune"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to prune"));
    assert_eq!(pack_count(&repo), packs, "nothing deleted");
}

#[test]
fn a_snapshot_blocked_by_a_prune_waits_then_fails_visibly() {
    let scratch = Scratch::new("locked");
    let repo = scratch.join("repo");
    fs::create_dir_all(scratch.join("d")).unwrap();
    init(&repo);
    // A prune that is still running: this test process holds its lock.
    hold_prune_lock(&repo);
    let started = Instant::now();
    let out = run(cairn(&repo).args(["snapshot", "--lock-wait", "1s"]).arg(scratch.join("d")));
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    assert!(String::from_utf8_lossy(&out.stderr).contains("an exclusive lock of `cairn prune`"));
    let status = run(cairn(&repo).arg("status"));
    assert!(String::from_utf8_lossy(&status.stdout).contains("last snapshot failed"), "the missed run is visible");
    // Once the prune is gone, snapshots run again.
    fs::remove_file(repo.join("locks/held")).unwrap();
    ok(cairn(&repo).arg("snapshot").arg(scratch.join("d")));
}

#[test]
fn a_prune_with_nothing_to_free_changes_nothing() {
    let scratch = Scratch::new("prune-noop");
    let (live, repo) = (scratch.join("live"), scratch.join("repo"));
    init(&repo);
    write_version(&live, 1);
    ok(cairn(&repo).arg("snapshot").arg(&live));
    ok(cairn(&repo).arg("snapshot").arg(&live));
    let names = |repo: &Path| {
        let mut names: Vec<_> = fs::read_dir(repo.join("index")).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = names(&repo);
    let report = json(cairn(&repo).arg("prune"));
    assert_eq!(report["report"]["index_files_written"], 0, "{report}");
    assert_eq!(names(&repo), before, "an encrypted index sealed again would get new names");
}

/// The manifests in `repo`.
fn manifests(repo: &Path) -> usize {
    fs::read_dir(repo.join("snapshots")).unwrap().count()
}

/// Three snapshots of different data in a new `repo`.
fn three_snapshots(scratch: &Scratch, repo: &Path) {
    let data = scratch.join("data");
    fs::create_dir_all(&data).unwrap();
    init(repo);
    for i in 0..3 {
        write_noise_file(&data.join(format!("f{i}")), 300_000, 70 + i);
        ok(cairn(repo).arg("snapshot").arg(&data));
    }
}

/// Anything that deletes fails closed: `forget --prune` and `sync --prune` on a repository with
/// a damaged index file (or manifest) refuse before removing a single snapshot,
/// and a retention policy alone refuses to judge snapshots beside a manifest it cannot read.
#[test]
fn forget_and_sync_with_prune_remove_nothing_from_a_damaged_repository() {
    let scratch = Scratch::new("prune-forget-damaged");
    let repo = scratch.join("repo");
    three_snapshots(&scratch, &repo);
    let copy = scratch.join("copy");
    ok(cairn(&repo).arg("sync").arg("--to").arg(&copy));
    for damaged in [&repo, &copy] {
        let index = fs::read_dir(damaged.join("index")).unwrap().next().unwrap().unwrap().path();
        flip_byte(&index, 40, 0x01);
        let out = if damaged == &repo {
            run(cairn(&repo).args(["forget", "--keep-last", "1", "--prune"]))
        } else {
            run(cairn(&repo).arg("sync").arg("--to").arg(&copy).args(["--prune", "--keep-last", "1"]))
        };
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains("refusing to prune"), "{said}");
        assert_eq!(manifests(damaged), 3, "a snapshot was removed before the prune refused: {said}");
        flip_byte(&index, 40, 0x01);
    }
    // A damaged manifest: a policy does not judge the others without it.
    let manifest = fs::read_dir(repo.join("snapshots")).unwrap().next().unwrap().unwrap().path();
    flip_byte(&manifest, 20, 0x01);
    for policy in [&["forget", "--keep-last", "1"][..], &["forget", "--keep-last", "1", "--prune"]] {
        let out = run(cairn(&repo).args(policy));
        assert_eq!(out.status.code(), Some(1), "{policy:?}");
        assert_eq!(manifests(&repo), 3, "{policy:?}");
    }
    flip_byte(&manifest, 20, 0x01);
    ok(cairn(&repo).args(["forget", "--keep-last", "1", "--prune"]));
    assert_eq!(manifests(&repo), 1);
    ok(cairn(&repo).args(["check", "--read-data"]));
}

/// `forget --prune --json` prints one JSON document (it printed the forget's and then the
/// prune's): the decisions beside the prune's plan and report.
#[test]
fn forget_with_prune_prints_one_json_document() {
    let scratch = Scratch::new("forget-prune-json");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    init(&repo);
    for version in ["one", "two"] {
        fs::write(source.join("file"), version).unwrap();
        ok(cairn(&repo).arg("snapshot").arg(&source));
    }
    let done = json(cairn(&repo).args(["forget", "--keep-last", "1", "--prune"]));
    assert_eq!(done["snapshots"].as_array().map(Vec::len), Some(2), "{done}");
    assert!(done["report"]["packs_deleted"].is_u64() && done["plan"]["snapshots"] == 1, "{done}");
}
