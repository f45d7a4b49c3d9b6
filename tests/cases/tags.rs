//! Protected snapshots and `cairn tag` (issue 20, item 8): forget refuses a protected snapshot
//! without `--force`, tags change after the fact, retention honours them, and a tag killed
//! between its two writes leaves the same snapshot twice, which every command takes as one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A repository with `n` snapshots of one source, oldest first (their full ids).
fn repository(scratch: &Scratch, n: usize, first_tags: &[&str]) -> (PathBuf, Vec<String>) {
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(&source).unwrap();
    init(&repo);
    let mut ids = Vec::new();
    for i in 0..n {
        fs::write(source.join("file"), format!("version {i}")).unwrap();
        let mut command = cairn(&repo);
        command.args(["snapshot", "--source", "app"]);
        if i == 0 {
            for tag in first_tags {
                command.args(["--tag", tag]);
            }
        }
        ids.push(json(command.arg(&source))["id"].as_str().unwrap().to_string());
    }
    (repo, ids)
}

/// The manifests in the repository: (id, tags), oldest first.
fn listed(repo: &Path) -> Vec<(String, Vec<String>)> {
    let list = json(cairn(repo).arg("snapshots"));
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tags = s["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            (s["id"].as_str().unwrap().to_string(), tags)
        })
        .collect()
}

fn manifests(repo: &Path) -> usize {
    fs::read_dir(repo.join("snapshots")).unwrap().count()
}

#[test]
fn forget_refuses_a_protected_snapshot_without_force() {
    let scratch = Scratch::new("tags-forget");
    let (repo, ids) = repository(&scratch, 2, &["protected"]);
    for args in [vec![&ids[0][..8]], vec![&ids[0][..8], "--dry-run"], vec![&ids[1][..8], &ids[0][..8]]] {
        let refused = run(cairn(&repo).arg("forget").args(&args));
        assert_eq!(refused.status.code(), Some(1), "forget {args:?} must refuse");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("protected") && err.contains("--force"), "{err}");
        assert_eq!(manifests(&repo), 2, "nothing deleted");
    }
    ok(cairn(&repo).args(["forget", "--force", &ids[0][..8]]));
    assert_eq!(listed(&repo).iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), [ids[1].clone()]);
    // An unprotected one needs no --force.
    ok(cairn(&repo).args(["forget", "latest"]));
    assert_eq!(manifests(&repo), 0);
}

#[test]
fn tags_change_after_the_fact_and_retention_honours_them() {
    let scratch = Scratch::new("tags-roundtrip");
    let (repo, ids) = repository(&scratch, 3, &["nightly"]);
    let offsite = scratch.join("offsite");
    ok(cairn(&repo).args(["sync", "--to"]).arg(&offsite));

    // --dry-run changes nothing; --json says what would change.
    let plan = json(cairn(&repo).args(["tag", &ids[0][..8], "--add", "protected", "--dry-run"]));
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["snapshots"][0]["tags_after"], serde_json::json!(["nightly", "protected"]), "{plan}");
    assert_eq!(listed(&repo)[0].0, ids[0]);

    let done = json(cairn(&repo).args(["tag", &ids[0][..8], "--add", "protected"]));
    let protected = done["snapshots"][0]["new_id"].as_str().unwrap().to_string();
    assert_ne!(protected, ids[0]);
    let now = listed(&repo);
    assert_eq!(now.len(), 3, "{now:?}");
    assert_eq!(now[0], (protected.clone(), vec!["nightly".to_string(), "protected".to_string()]));
    assert!(!now.iter().any(|(id, _)| id == &ids[0]), "the old manifest is gone");
    ok(cairn(&repo).arg("check"));
    // The same snapshot: same tree, the rest of the manifest unchanged.
    let restored = scratch.join("restored");
    ok(cairn(&repo).args(["restore", &protected[..8], "--target"]).arg(&restored));
    assert_eq!(fs::read_to_string(restored.join("file")).unwrap(), "version 0");

    // A policy keeps it now; the middle one goes.
    let forgot = json(cairn(&repo).args(["forget", "--keep-last", "1"]));
    let removed: Vec<&str> = forgot["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [ids[1].as_str()]);
    assert_eq!(listed(&repo).len(), 2);

    // The offsite copy gets the new manifest, and no data again.
    let synced = json(cairn(&repo).args(["sync", "--to"]).arg(&offsite));
    assert_eq!(synced["report"]["packs_copied"], 0, "{synced}");
    assert_eq!(synced["report"]["bytes_copied"], 0, "{synced}");
    // (Not `json`: status there exits 1 for the sync record a destination receives, which says
    // `failed`, a separate bug.)
    let status: serde_json::Value =
        serde_json::from_slice(&run(cairn(&offsite).args(["status", "--json"])).stdout).unwrap();
    assert_eq!(status["sources"][0]["snapshots"], 3, "the retagged snapshot counts once offsite: {status}");

    // --remove, then --set; removing the tag lets the policy remove it.
    let done = json(cairn(&repo).args(["tag", &protected[..8], "--remove", "protected", "--remove", "nightly"]));
    let plain = done["snapshots"][0]["new_id"].as_str().unwrap().to_string();
    assert_eq!(listed(&repo)[0], (plain.clone(), vec![]));
    let done = json(cairn(&repo).args(["tag", &plain[..8], "--set", "b", "--set", "a"]));
    let set = done["snapshots"][0]["new_id"].as_str().unwrap().to_string();
    assert_eq!(listed(&repo)[0], (set.clone(), vec!["b".to_string(), "a".to_string()]));
    let unchanged = json(cairn(&repo).args(["tag", &set[..8], "--add", "a"]));
    assert_eq!(unchanged["snapshots"][0]["changed"], false, "{unchanged}");
    assert_eq!(listed(&repo)[0].0, set, "an unchanged tag set writes nothing");
    let bad = run(cairn(&repo).args(["tag", &set[..8], "--add", ""]));
    assert_eq!(bad.status.code(), Some(1));
    ok(cairn(&repo).args(["forget", "--keep-last", "1"]));
    assert_eq!(listed(&repo).len(), 1);
    ok(cairn(&repo).args(["check", "--read-data"]));
}

/// `cairn tag` with `strace` making its deletion of the old manifest a `kill -9` instead: the
/// new manifest is durable, the old one still there.
fn tag_killed_before_the_deletion(repo: &Path, old: &str, args: &[&str]) {
    assert!(
        Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace)"
    );
    let old_manifest = repo.join("snapshots").join(old);
    let tag = cairn(repo);
    let program = tag.get_program().to_owned();
    let mut traced = Command::new("strace");
    traced.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=unlink,unlinkat"]);
    traced.args(["-e", "inject=unlink,unlinkat:error=EIO:signal=KILL", "-P"]).arg(&old_manifest);
    traced.arg(program).args(tag.get_args()).arg("tag").arg(&old[..8]).args(args);
    for (key, value) in tag.get_envs() {
        match value {
            Some(value) => traced.env(key, value),
            None => traced.env_remove(key),
        };
    }
    let output = run(&mut traced);
    assert!(!output.status.success(), "the tag must have been killed");
    assert!(old_manifest.exists(), "killed before the old manifest was deleted");
}

#[test]
fn a_tag_killed_between_its_two_writes_leaves_the_same_snapshot_twice_harmlessly() {
    let scratch = Scratch::new("tags-crash");
    let (repo, ids) = repository(&scratch, 2, &[]);
    let offsite = scratch.join("offsite");
    ok(cairn(&repo).args(["sync", "--to"]).arg(&offsite));
    tag_killed_before_the_deletion(&repo, &ids[0], &["--add", "protected"]);
    let copies = listed(&repo);
    assert_eq!(copies.len(), 3, "the old manifest and the new one: {copies:?}");

    // check: clean. status: two snapshots, not three.
    ok(cairn(&repo).arg("check"));
    let status = json(cairn(&repo).arg("status"));
    assert_eq!(status["sources"][0]["snapshots"], 2, "{status}");
    // Retention takes both copies as one protected snapshot; forget by id refuses it.
    let plan = json(cairn(&repo).args(["forget", "--keep-last", "1", "--dry-run"]));
    assert!(plan["snapshots"].as_array().unwrap().iter().all(|d| d["keep"] == true), "{plan}");
    assert_eq!(run(cairn(&repo).args(["forget", &ids[0][..8]])).status.code(), Some(1));
    // Restore from either copy gives the same files.
    for (id, _) in &copies[..2] {
        let target = scratch.join(format!("restored-{}", &id[..8]));
        ok(cairn(&repo).args(["restore", &id[..8], "--target"]).arg(&target));
        assert_eq!(fs::read_to_string(target.join("file")).unwrap(), "version 0");
    }
    // sync sends the new manifest, no data twice.
    let synced = json(cairn(&repo).args(["sync", "--to"]).arg(&offsite));
    assert_eq!(synced["report"]["packs_copied"], 0, "{synced}");

    // Running the tag again finishes the job: one manifest, with the tag.
    ok(cairn(&repo).args(["tag", &ids[0][..8], "--add", "protected"]));
    let after = listed(&repo);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0].1, ["protected"]);
    ok(cairn(&repo).arg("check"));
    // Forgetting it by name (with --force) removes every copy.
    tag_killed_before_the_deletion(&repo, &after[0].0, &["--add", "again"]);
    assert_eq!(listed(&repo).len(), 3);
    ok(cairn(&repo).args(["forget", "--force", &after[0].0[..8]]));
    assert_eq!(listed(&repo).iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), [ids[1].clone()]);
}
