//! `kill -9` of a real `cairn snapshot` at many points leaves a repository that lists every
//! completed snapshot, restores each of them, and accepts the next snapshot.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// When to kill: after a delay, or as soon as a new file shows up in a repository directory
/// (a new pack: between pack writes; a new index file: between the index and the manifest).
#[derive(Debug, Clone, Copy)]
enum Trigger {
    After(u64),
    NewFileIn(&'static str),
}

fn file_count(repo: &Path, dir: &str) -> usize {
    if dir == "packs" {
        return pack_count(repo);
    }
    fs::read_dir(repo.join(dir)).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn sigkill_during_snapshot_loses_nothing_that_completed() {
    let scratch = Scratch::new("crash");
    let (source, repo) = (scratch.join("src"), scratch.join("repo"));
    fs::create_dir_all(source.join("base/sub")).unwrap();
    for i in 0..40u64 {
        let dir = if i % 2 == 0 { "base" } else { "base/sub" };
        fs::write(source.join(format!("{dir}/file-{i}")), noise(((i * 7919) % 700_000) as usize, i)).unwrap();
    }
    init(&repo);
    let first = json(cairn(&repo).arg("snapshot").arg(&source));
    let first_id = first["id"].as_str().unwrap().to_string();

    fs::create_dir(source.join("new")).unwrap();
    let mut completed = vec![first_id.clone()];
    let mut outcomes = Vec::new();
    let triggers = [
        Trigger::After(5),
        Trigger::After(40),
        Trigger::After(120),
        Trigger::NewFileIn("packs"),
        Trigger::After(400),
        Trigger::NewFileIn("index"),
        Trigger::After(1000),
        Trigger::NewFileIn("index"),
        Trigger::NewFileIn("packs"),
        Trigger::After(5000),
    ];
    for (round, trigger) in triggers.into_iter().enumerate() {
        // Fresh content each round, so every run has real work to interrupt.
        write_noise_file(&source.join(format!("new/round-{round}")), 48 << 20, 1000 + round as u64);
        let packs_before = pack_count(&repo);
        let snapshots_before = file_count(&repo, "snapshots");
        let started = Instant::now();
        let mut child = cairn(&repo).args(["--quiet", "snapshot"]).arg(&source).spawn().unwrap();
        match trigger {
            Trigger::After(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Trigger::NewFileIn(dir) => {
                let before = file_count(&repo, dir);
                while file_count(&repo, dir) == before && child.try_wait().unwrap().is_none() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        let finished_first = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        outcomes.push(format!(
            "round {round}: {trigger:?}: killed after {:?}{}, packs {} -> {}, snapshots {} -> {}",
            started.elapsed(),
            if finished_first { " (had already finished)" } else { "" },
            packs_before,
            pack_count(&repo),
            snapshots_before,
            file_count(&repo, "snapshots"),
        ));

        // The repository opens and lists every snapshot that completed before.
        let listed: Vec<String> = json(cairn(&repo).arg("snapshots"))
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for id in &completed {
            assert!(listed.contains(id), "round {round}: snapshot {id} vanished; listed {listed:?}");
        }
        completed = listed;
        // The first snapshot still restores exactly; the newest one restores without error.
        let target = scratch.join(format!("restore-{round}"));
        ok(cairn(&repo).args(["--quiet", "restore", &first_id, "--include", "base", "--target"]).arg(&target));
        assert_same_tree(&source.join("base"), &target.join("base"));
        fs::remove_dir_all(&target).unwrap();
        ok(cairn(&repo).args(["--quiet", "restore", "latest", "--target"]).arg(&target));
        fs::remove_dir_all(&target).unwrap();
    }
    eprintln!("{}", outcomes.join("\n"));

    // The next snapshot succeeds and restores the whole current tree.
    ok(cairn(&repo).arg("snapshot").arg(&source));
    let target = scratch.join("final");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&target));
    assert_same_tree(&source, &target);
}

/// The temporary files a killed command left (here: a process of this host that has ended) are
/// removed by the next prune, and by the next sync in its destination, where no snapshot, which
/// removes them too, may ever run. A live writer's is left alone.
#[test]
fn prune_and_sync_remove_what_killed_writers_left_in_tmp() {
    let scratch = Scratch::new("stale-tmp");
    let (source, repo, copy) = (scratch.join("src"), scratch.join("repo"), scratch.join("copy"));
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a"), b"a").unwrap();
    init(&repo);
    ok(cairn(&repo).arg("snapshot").arg(&source));
    ok(cairn(&repo).arg("sync").arg("--to").arg(&copy));
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    ended.wait().unwrap();
    let host = cairn::host::hostname();
    for at in [&repo, &copy] {
        fs::write(at.join(format!("tmp/{host}-{}-0badf00d.tmp", ended.id())), vec![7u8; 4096]).unwrap();
        fs::write(at.join(format!("tmp/{host}-{}-feedbeef.tmp", std::process::id())), b"live").unwrap();
    }
    fs::write(source.join("b"), b"b").unwrap();
    ok(cairn(&repo).arg("snapshot").arg(&source));
    fs::write(repo.join(format!("tmp/{host}-{}-0badf00d.tmp", ended.id())), vec![7u8; 4096]).unwrap();
    ok(cairn(&repo).arg("prune"));
    ok(cairn(&repo).arg("sync").arg("--to").arg(&copy));
    for at in [&repo, &copy] {
        let left: Vec<String> = fs::read_dir(at.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [format!("{host}-{}-feedbeef.tmp", std::process::id())], "{}", at.display());
    }
}
