//! cairn: a content-addressed, deduplicating snapshot store.
//!
//! # Architecture
//!
//! Sources are cut into chunks, chunks are named by their hash, stored once, and a snapshot is a
//! manifest over a tree of those names. Layers, from the bytes up:
//!
//! - [`format`]: pure encoders and decoders of every repository file. The byte layouts are
//!   specified in `store-format/` (the single source of truth); each module links its page.
//! - [`id`], [`chunking`], [`compression`]: BLAKE3 ids, FastCDC cut points, zstd per blob.
//! - [`backend`]: where files live (a local directory or an object store); create-only, durable
//!   puts.
//! - [`repository`]: opening and creating one from a [`repository::Location`], the names of its
//!   files ([`repository::FileKind`]) and the verbs on them, the in-memory
//!   [`repository::index::Index`], verified blob reads through [`repository::Indexed`], snapshot
//!   listing, and [`repository::packer::BlobStore`], which dedups, compresses and packs, and
//!   hands full packs to [`repository::upload`]'s uploader threads.
//! - [`source`]: walking directory trees into tree blobs and chunks, with change detection.
//! - [`backup`]: one snapshot from start to commit; [`restore`]: back to files, and over an
//!   existing directory ([`restore::in_place`]: plan, safety snapshot, staged build, atomic swap).
//! - [`check`]: structural and data verification; [`drill`]: restore drills with evidence;
//!   [`audit`]: the per-run audit records; [`status`]: per-source health from snapshots and audit.
//! - [`retention`]: which snapshots a policy keeps; [`tag`]: changing a snapshot's tags;
//!   [`prune`]: prune (mark, plan, sweep), which refuses to delete in a repository that is not
//!   whole; [`repair`]: the index rebuilt from packs;
//!   [`stats`]: storage cost per source; [`repository::lock`]: repository locks;
//!   [`run_config`]: the `cairn run` config file.
//! - [`select`]: which snapshot a command means: an id, `latest` or `--at TIME`, among those a
//!   source, host and tag filter selects.
//! - [`walk`]: the one depth-first walk of stored trees, two trees side by side, and every
//!   distinct tree read once; [`diff`]: what changed between two snapshots; [`find`]: which
//!   snapshots hold the paths a pattern matches; [`export`]: a tree as a tar stream;
//!   [`mount`]: the snapshots as a read-only FUSE file system.
//! - [`sync`]: copying snapshots and the packs they need to another repository (offsite).
//! - [`fs_at`]: file system calls relative to an open directory that never follow a symlink
//!   below it, for restore and drills.
//! - [`xattr`]: extended attributes (ACLs, capabilities, SELinux labels) of one entry, read and
//!   written without following a symlink.
//! - [`progress`]: the progress bar; [`buffers`]: large buffers kept for reuse while a restore
//!   streams blobs from an object store.
//!
//! # Durability
//!
//! Every file is written under a temporary name, synced, and linked into place; a snapshot
//! manifest is written only after every pack and index file it depends on is durable. A crash
//! leaves at worst unreferenced packs and temporary files, never a snapshot that cannot be
//! restored (store-format/README.md, "Commit order").
// Items are public only where an embedder can reach them (clippy runs with -D warnings).
#![warn(unreachable_pub)]

pub mod audit;
pub mod backend;
pub mod backup;
pub mod base64;
pub mod buffers;
pub mod check;
pub mod chunking;
pub mod clock;
pub mod compression;
pub mod crypto;
pub mod diff;
pub mod disk;
pub mod drill;
pub mod error;
pub mod export;
pub mod find;
pub mod format;
pub mod fs_at;
pub mod host;
pub mod id;
pub mod knobs;
pub mod mount;
pub mod names;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod run_config;
pub mod select;
pub mod source;
pub mod stats;
pub mod status;
pub mod sync;
pub mod tag;
pub mod walk;
pub mod xattr;
