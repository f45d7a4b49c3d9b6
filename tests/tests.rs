//! Integration tests: the real `cairn` binary on real trees. One binary, one module per theme.

#[path = "cases/support.rs"]
mod support;

#[path = "cases/append_only.rs"]
mod append_only;
#[path = "cases/backends.rs"]
mod backends;
#[path = "cases/chunk_lists.rs"]
mod chunk_lists;
#[path = "cases/command.rs"]
mod command;
#[path = "cases/crash.rs"]
mod crash;
#[path = "cases/deep.rs"]
mod deep;
#[path = "cases/dictionaries.rs"]
mod dictionaries;
#[path = "cases/diff.rs"]
mod diff;
#[path = "cases/encryption.rs"]
mod encryption;
#[path = "cases/errors.rs"]
mod errors;
#[path = "cases/filters.rs"]
mod filters;
#[path = "cases/fixtures.rs"]
mod fixtures;
#[path = "cases/gc_bounded.rs"]
mod gc_bounded;
#[path = "cases/gen_repo.rs"]
mod gen_repo;
#[path = "cases/in_place.rs"]
mod in_place;
#[path = "cases/index_copy.rs"]
mod index_copy;
#[path = "cases/keys.rs"]
mod keys;
#[path = "cases/monitor.rs"]
mod monitor;
#[path = "cases/mount.rs"]
mod mount;
#[path = "cases/names.rs"]
mod names;
#[path = "cases/prune.rs"]
mod prune;
#[path = "cases/repair.rs"]
mod repair;
#[path = "cases/restore_reach.rs"]
mod restore_reach;
#[path = "cases/restore_safety.rs"]
mod restore_safety;
#[path = "cases/roundtrip.rs"]
mod roundtrip;
#[path = "cases/run.rs"]
mod run;
#[path = "cases/s3_reads.rs"]
mod s3_reads;
#[path = "cases/s3_writes.rs"]
mod s3_writes;
#[path = "cases/serve.rs"]
mod serve;
#[path = "cases/snapshots.rs"]
mod snapshots;
#[path = "cases/sparse.rs"]
mod sparse;
#[path = "cases/sqlite.rs"]
mod sqlite;
#[path = "cases/sqlite_hostile.rs"]
mod sqlite_hostile;
#[path = "cases/sync.rs"]
mod sync;
#[path = "cases/tags.rs"]
mod tags;
#[path = "cases/trust.rs"]
mod trust;
#[path = "cases/verify.rs"]
mod verify;
#[path = "cases/walk_options.rs"]
mod walk_options;
#[path = "cases/walk_safety.rs"]
mod walk_safety;
#[path = "cases/xattrs.rs"]
mod xattrs;
