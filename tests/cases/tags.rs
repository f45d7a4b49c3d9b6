//! Protected snapshots and `cairn tag` (issue 20, item 8): forget refuses a protected snapshot
//! without `--force`, tags change after the fact, retention honours them, and a tag killed
//! between its two writes leaves the same snapshot twice, which every command takes as one.

use std::fs;
use std::path::{Path, PathBuf};

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
