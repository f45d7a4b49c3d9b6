//! What the mount reads from the repository: the snapshot list (named by a [`Catalog`]), the
//! index, decoded trees and chunks through small caches.
//!
//! A mount lives long and holds no lock (a forgotten mount must not block every prune), so the
//! repository changes under it: the snapshot list is read again when a top directory is
//! listed or a name in one is missed, at most every [`REFRESH`] (only manifests not seen
//! before are read); the index is read again when new snapshots appear, and when a blob is
//! missing from it or from its pack (a prune repacked it), at most every [`REFRESH`] too. A
//! blob a prune removed gives an I/O error to the reader, never other bytes: every blob is
//! verified against its id.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::catalog::Catalog;
use super::content::{Lru, CHUNK_CACHE, TREE_CACHE};
use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{ChunkList, Content, Tree};
use crate::id::Id;
use crate::repository::index::Index;
use crate::repository::Repository;
use crate::select::Filter;

/// The least time between two readings of the snapshot list (or of the index).
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// Where warnings go (`cairn mount` prints them on standard error).
pub(crate) type Warn<'a> = &'a (dyn Fn(&str) + Sync);

pub(crate) struct Store<'r> {
    repo: &'r Repository,
    index: Index,
    filter: Filter,
    /// Every readable manifest listed, whether the filter selects it or not.
    known: HashMap<Id, Snapshot>,
    /// Manifests that could not be read (said once).
    unreadable: HashSet<Id>,
    pub(crate) catalog: Catalog,
    listed_at: Instant,
    indexed_at: Instant,
    trees: Lru<Tree>,
    chunks: Lru<Vec<u8>>,
    warn: Warn<'r>,
}

impl<'r> Store<'r> {
    /// Reads the snapshot list and the index; an error if either cannot be read at all.
    pub(crate) fn open(repo: &'r Repository, filter: Filter, warn: Warn<'r>) -> Result<Store<'r>> {
        let index = repo.load_index()?;
        let mut store = Store {
            repo,
            index,
            filter,
            known: HashMap::new(),
            unreadable: HashSet::new(),
            catalog: Catalog::default(),
            listed_at: Instant::now(),
            indexed_at: Instant::now(),
            trees: Lru::new(TREE_CACHE),
            chunks: Lru::new(CHUNK_CACHE),
            warn,
        };
        store.list(false)?;
        Ok(store)
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    /// Reads the snapshot list again if it was read more than [`REFRESH`] ago; a failure is
    /// said and leaves the list as it was.
    pub(crate) fn refresh(&mut self) {
        if self.listed_at.elapsed() < REFRESH {
            return;
        }
        if let Err(e) = self.list(true) {
            (self.warn)(&format!("could not read the snapshot list again: {e}"));
        }
    }

    /// Reads the manifests not seen before, and the index too if there are any and `reindex`.
    fn list(&mut self, reindex: bool) -> Result<()> {
        self.listed_at = Instant::now();
        let (known, unreadable) = (&self.known, &self.unreadable);
        let (listed, new) = self.repo.snapshots_besides(&|id| known.contains_key(id) || unreadable.contains(id))?;
        for damage in self.repo.take_damage() {
            (self.warn)(&format!("skipped damaged repository file: {damage}"));
        }
        let listed: HashSet<Id> = listed.into_iter().collect();
        let before = self.known.len();
        self.known.retain(|id, _| listed.contains(id));
        let removed = self.known.len() != before;
        let added = !new.is_empty();
        for (id, snapshot) in new {
            self.known.insert(id, snapshot);
        }
        for id in &listed {
            if !self.known.contains_key(id) {
                self.unreadable.insert(*id);
            }
        }
        self.unreadable.retain(|id| listed.contains(id));
        if added && reindex {
            // New snapshots bring blobs the index read before does not name.
            self.reload_index()?;
        }
        if added || removed || !reindex {
            let mut all: Vec<(Id, Snapshot)> = self.known.iter().map(|(id, s)| (*id, s.clone())).collect();
            all.sort_by_key(|(id, s)| (s.time_sec, s.time_nsec, *id));
            self.catalog = Catalog::new(self.filter.apply(all), self.filter.names_safety_snapshots());
        }
        Ok(())
    }

    fn reload_index(&mut self) -> Result<()> {
        self.indexed_at = Instant::now();
        self.index = self.repo.load_index()?;
        Ok(())
    }

    /// A file's chunk ids, its list blobs expanded ([`Repository::chunk_list`]); read again
    /// from a fresh index when a list blob has moved, as [`Store::read_blob`].
    pub(crate) fn chunk_list<'a>(&mut self, chunks: &'a ChunkList) -> Result<Cow<'a, [Id]>> {
        self.retrying(|repo, index| repo.chunk_list(index, chunks))
    }

    /// The decoded tree `id`.
    pub(crate) fn tree(&mut self, id: &Id) -> Result<Arc<Tree>> {
        if let Some(tree) = self.trees.get(id) {
            return Ok(tree);
        }
        let bytes = self.read_blob(id)?;
        let tree = Arc::new(Tree::decode(&bytes, &format!("tree {}", id.short()))?);
        self.trees.insert(*id, Arc::clone(&tree), weight(&tree));
        Ok(tree)
    }

    /// The plain content of chunk `id`, verified.
    pub(crate) fn chunk(&mut self, id: &Id) -> Result<Arc<Vec<u8>>> {
        if let Some(plain) = self.chunks.get(id) {
            return Ok(plain);
        }
        let plain = Arc::new(self.read_blob(id)?);
        self.chunks.insert(*id, Arc::clone(&plain), plain.len() as u64);
        Ok(plain)
    }

    /// A blob, verified; when the index lacks it or its pack is gone, the index is read again
    /// (at most every [`REFRESH`]) and the read tried once more.
    fn read_blob(&mut self, id: &Id) -> Result<Vec<u8>> {
        self.retrying(|repo, index| repo.read_blob(index, id))
    }

    /// `read` through the index; when what it reads has moved, once more through the index
    /// read again (at most every [`REFRESH`]).
    fn retrying<T>(&mut self, read: impl Fn(&Repository, &Index) -> Result<T>) -> Result<T> {
        match read(self.repo, &self.index) {
            Err(e) if moved(&e) && self.indexed_at.elapsed() >= REFRESH => {
                self.reload_index()?;
                self.chunks.clear();
                read(self.repo, &self.index)
            }
            read => read,
        }
    }
}

/// Whether a read failed because the blob is not where the index said (a prune moved it).
fn moved(error: &Error) -> bool {
    match error {
        Error::MissingBlob(_) => true,
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// About the bytes a decoded tree holds.
fn weight(tree: &Tree) -> u64 {
    tree.nodes
        .iter()
        .map(|node| {
            let content = match &node.content {
                Content::File { chunks } => chunks.inline().map_or(chunks.lists().len(), <[Id]>::len) * 32,
                Content::Symlink { target } => target.len(),
                _ => 32,
            };
            (node.name.len() + content + 128) as u64
        })
        .sum()
}
