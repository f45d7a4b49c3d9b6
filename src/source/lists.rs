//! How a file node holds its chunk ids: inline in its tree when they are few, otherwise in list
//! blobs, as a patch against the parent snapshot's list where that is small, so a large file (a
//! database above all) that changed in a few places costs those places, not its whole list, in
//! every snapshot (store-format/tree.md, "Chunk lists").
//!
//! Invariant: every list blob a returned [`ChunkList`] names is stored (in the index or added by
//! this run), and so is every chunk its chain expands to, since those are the caller's chunks.

use crate::error::{Error, Result};
use crate::format::chunk_list::{self, MAX_CHAIN};
use crate::format::pack::BlobKind;
use crate::format::tree::ChunkList;
use crate::id::Id;
use crate::repository::index::Index;
use crate::repository::packer::BlobStore;
use crate::repository::Repository;

/// A file with fewer chunks than this keeps its list in its tree (node type 1): at most 32 KiB of
/// ids, written again only in snapshots in which the file changed. Below it a list blob would
/// save little and cost a blob (an index entry, a read per chain link) per file; above it
/// (a database of 4 MiB or more at 4 KiB pages) the inline list grows with the file while a patch
/// grows with the change. Trees of smaller files are written exactly as before.
pub const INLINE_MAX: usize = 1023;

/// A patch is written when its bytes are at most this fraction of the FULL list's: a chain of
/// 16 then reads at most 1 + 15/4 FULL lists' worth of bytes to expand, and a change that touches
/// more than about a quarter of the list (where a patch stops paying) starts a fresh chain.
pub const PATCH_FRACTION: usize = 4;

/// Where a new chunk list is written: the repository (to read the parent's chain), the index the
/// parent's blobs are in, and the store this run writes to.
pub struct ListWriter<'a> {
    pub repo: &'a Repository,
    pub index: &'a Index,
    pub store: &'a BlobStore<'a>,
}

impl ListWriter<'_> {
    /// The content for a file whose chunks are `chunks`, given the parent snapshot's list for the
    /// same file, if any. A list equal to the parent's keeps the parent's content as it is.
    pub fn content(&self, chunks: Vec<Id>, parent: Option<&ChunkList>) -> Result<ChunkList> {
        if chunks.len() <= INLINE_MAX {
            return Ok(ChunkList::Inline(chunks));
        }
        let count = chunks.len() as u64;
        if count > chunk_list::MAX_IDS {
            return Err(Error::Invalid(format!(
                "a file of {count} chunks is more than one chunk list holds ({})",
                chunk_list::MAX_IDS
            )));
        }
        if let Some(stored @ ChunkList::Stored { lists, .. }) = parent {
            // A parent chain that cannot be read only means a fresh FULL list.
            if let Ok(old) = self.repo.chunk_list(self.index, stored) {
                if *old == chunks[..] {
                    return Ok(stored.clone());
                }
                if lists.len() < MAX_CHAIN {
                    let patch = chunk_list::diff(&old, &chunks);
                    if patch.len() <= (1 + 32 * chunks.len()) / PATCH_FRACTION {
                        let mut lists = lists.clone();
                        lists.push(self.store.store(BlobKind::Tree, &patch)?);
                        return Ok(ChunkList::Stored { count, lists });
                    }
                }
            }
        }
        let full = self.store.store(BlobKind::Tree, &chunk_list::encode_full(&chunks))?;
        Ok(ChunkList::Stored { count, lists: vec![full] })
    }

    /// Whether an unchanged file's list can be reused: every list blob and every chunk it expands
    /// to is stored. A chain that cannot be read cannot be reused.
    pub fn all_stored(&self, chunks: &ChunkList) -> bool {
        match chunks {
            ChunkList::Inline(ids) => ids.iter().all(|id| self.store.contains(id)),
            ChunkList::Stored { lists, .. } => {
                lists.iter().all(|id| self.store.contains(id))
                    && self
                        .repo
                        .chunk_list(self.index, chunks)
                        .is_ok_and(|ids| ids.iter().all(|id| self.store.contains(id)))
            }
        }
    }
}
