//! Blob reads by range, for both kinds of blob a store holds:
//! - **chunked** (everything written by this version): a manifest naming content-addressed
//!   chunks ([`crate::base::manifest`]); an offset maps to its chunk by arithmetic, and a
//!   range that spans chunks is stitched from them;
//! - **legacy** (stores written before chunking): one object under the Git-style id, with
//!   its block index beside it. They stay readable under their old ids.
//!
//! Writing is in `blob/writer.rs`.

mod writer;

pub use writer::BlobWriter;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;

use super::chunks::{block_crc, chunk_path, read_chunk_range};
use super::index::{BlockSums, ENTRY_LEN, INDEX_BLOCK, LEGACY_ENTRY_LEN};
use super::manifests::read_manifest;
use super::{object_path, Result, Store, StoreError};
use crate::api::BlobInfo;
use crate::base::manifest::Manifest;
use crate::base::paths::validate_object_id;

/// Where a legacy blob's block index is kept.
fn index_path(repo: &str, id: &str) -> Path {
    Path::from(format!("repos/{repo}/objects/{}/{id}.idx2", &id[..2]))
}

/// Where legacy blobs written before the index had CRC32C keep theirs.
fn legacy_index_path(repo: &str, id: &str) -> Path {
    Path::from(format!("repos/{repo}/objects/{}/{id}.idx", &id[..2]))
}

/// Where a blob's whole-content MD5 is kept once computed (hex), for stream sessions.
fn md5_path(repo: &str, id: &str) -> Path {
    Path::from(format!("repos/{repo}/objects/{}/{id}.md5", &id[..2]))
}

/// What a blob is made of.
#[derive(Clone)]
pub(crate) enum Layout {
    /// Chunks listed by a manifest.
    Chunked(Arc<Manifest>),
    /// One object of this size (a store written before chunking).
    Legacy(u64),
}

impl Layout {
    fn size(&self) -> u64 {
        match self {
            Layout::Chunked(m) => m.size,
            Layout::Legacy(size) => *size,
        }
    }
}

impl Store {
    /// Size of a blob; `NotFound` if the repository does not hold it, or if `id` names a tree
    /// or a commit.
    pub async fn blob_size(&self, repo: &str, id: &str) -> Result<u64> {
        Ok(self.layout(repo, id).await?.size())
    }

    /// The manifest of a chunked blob; `None` for a legacy one.
    pub async fn blob_manifest(&self, repo: &str, id: &str) -> Result<Option<Arc<Manifest>>> {
        Ok(match self.layout(repo, id).await? {
            Layout::Chunked(m) => Some(m),
            Layout::Legacy(_) => None,
        })
    }

    /// What blob `id` is made of, from memory when known (blobs are immutable).
    pub(crate) async fn layout(&self, repo: &str, id: &str) -> Result<Layout> {
        validate_object_id(id)?;
        if let Some(m) = self.manifests.lock().expect("manifest lock").get(repo, id) {
            return Ok(Layout::Chunked(m));
        }
        let key = (repo.to_string(), id.to_string());
        if let Some(size) = self.blob_sizes.lock().expect("blob size lock").get(&key) {
            return Ok(Layout::Legacy(*size));
        }
        if let Some(manifest) = read_manifest(&self.backend, repo, id).await? {
            let manifest = Arc::new(manifest);
            let mut cache = self.manifests.lock().expect("manifest lock");
            cache.put(repo, id, manifest.clone());
            return Ok(Layout::Chunked(manifest));
        }
        let size = self.look_up_legacy_size(repo, id).await?;
        self.blob_sizes
            .lock()
            .expect("blob size lock")
            .put(key, size);
        Ok(Layout::Legacy(size))
    }

    /// The size of a legacy blob. One whose index was lost in a crash is told apart from a
    /// tree or a commit (stored beside it) by not decoding as one (those are small).
    async fn look_up_legacy_size(&self, repo: &str, id: &str) -> Result<u64> {
        let not_found = || StoreError::NotFound(format!("blob {id}"));
        let size = self
            .backend
            .size(&object_path(repo, id))
            .await?
            .ok_or_else(not_found)?;
        if size > 16 << 20 || self.has_legacy_index(repo, id).await {
            return Ok(size);
        }
        let bytes = self.backend.get(&object_path(repo, id)).await?;
        if crate::store::Commit::decode(id, &bytes).is_ok()
            || crate::store::hamt::Node::decode(id, &bytes).is_ok()
        {
            return Err(not_found());
        }
        Ok(size)
    }

    /// Reads a range of a blob into memory (for bounded ranges only).
    pub async fn read_blob_range(&self, repo: &str, id: &str, range: Range<u64>) -> Result<Bytes> {
        let manifest = match self.layout(repo, id).await? {
            Layout::Legacy(_) => {
                return self.backend.get_range(&object_path(repo, id), range).await
            }
            Layout::Chunked(m) => m,
        };
        let pieces = manifest.pieces(range);
        if let [(index, piece)] = &pieces[..] {
            let hash = &manifest.chunks[*index];
            return read_chunk_range(&self.backend, repo, id, hash, piece.clone()).await;
        }
        let mut out = bytes::BytesMut::new();
        for (index, piece) in pieces {
            let hash = &manifest.chunks[index];
            out.extend_from_slice(&read_chunk_range(&self.backend, repo, id, hash, piece).await?);
        }
        Ok(out.freeze())
    }

    /// Streams a range of a blob in bounded pieces, reading one piece ahead.
    pub async fn stream_blob(
        &self,
        repo: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let reads = match self.layout(repo, id).await? {
            Layout::Legacy(_) => vec![(object_path(repo, id), range)],
            Layout::Chunked(m) => m
                .pieces(range)
                .into_iter()
                .map(|(index, piece)| (chunk_path(repo, &m.chunks[index]), piece))
                .collect(),
        };
        let blob = id.to_string();
        Ok(self
            .backend
            .stream_pieces(reads)
            .map(move |piece| match piece {
                Err(StoreError::Backend(object_store::Error::NotFound { path, .. })) => {
                    Err(StoreError::Corrupt {
                        id: blob.clone(),
                        reason: format!("{path} is missing"),
                    })
                }
                other => other,
            })
            .boxed())
    }

    /// Hex MD5 of `range` of a blob. The whole blob's is kept once known; any other range is
    /// read and hashed (a cost proportional to its length).
    pub async fn range_md5(&self, repo: &str, id: &str, range: Range<u64>) -> Result<String> {
        let size = self.blob_size(repo, id).await?;
        let whole = range.start == 0 && range.end == size;
        if whole {
            if let Some(kept) = self.kept_md5(repo, id).await? {
                return Ok(kept);
            }
        }
        let hex = self.hash_md5(repo, id, range).await?;
        if whole {
            self.backend
                .put_scratch(&md5_path(repo, id), Bytes::from(hex.clone()))
                .await?;
        }
        Ok(hex)
    }

    async fn kept_md5(&self, repo: &str, id: &str) -> Result<Option<String>> {
        let Some(kept) = self.backend.get_opt(&md5_path(repo, id)).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&kept).to_string();
        let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
        Ok(valid.then_some(text))
    }

    /// Reads `range` of a blob and hashes it with MD5 on a blocking thread.
    async fn hash_md5(&self, repo: &str, id: &str, range: Range<u64>) -> Result<String> {
        let mut md5 = Some(<md5::Md5 as md5::Digest>::new());
        let mut pieces = self.stream_blob(repo, id, range).await?;
        while let Some(piece) = pieces.next().await {
            let piece = piece?;
            let mut m = md5.take().expect("kept");
            md5 = Some(
                tokio::task::spawn_blocking(move || {
                    md5::Digest::update(&mut m, &piece);
                    m
                })
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?,
            );
        }
        Ok(hex::encode(md5::Digest::finalize(md5.expect("kept"))))
    }

    /// Whether a legacy blob's block index exists.
    async fn has_legacy_index(&self, repo: &str, id: &str) -> bool {
        for path in [index_path(repo, id), legacy_index_path(repo, id)] {
            if matches!(self.backend.size(&path).await, Ok(Some(_))) {
                return true;
            }
        }
        false
    }

    /// Checksums of 1 MiB block `block` of a blob, from its index (`None` if it has none):
    /// the CRC32C for a chunked blob, also MD5 and SHA-256 for a legacy one.
    pub async fn block_sums(&self, repo: &str, id: &str, block: u64) -> Option<BlockSums> {
        match self.layout(repo, id).await.ok()? {
            Layout::Chunked(m) => {
                let per_chunk = m.chunk_size / INDEX_BLOCK;
                let hash = m.chunks.get((block / per_chunk) as usize)?;
                let crc = block_crc(&self.backend, repo, hash, block % per_chunk).await?;
                Some(BlockSums {
                    md5: None,
                    sha256: None,
                    crc32c: Some(crc),
                })
            }
            Layout::Legacy(_) => self.legacy_block_sums(repo, id, block).await,
        }
    }

    /// The SHA-256 (hex) of `range` of a blob when the range is exactly one whole chunk: its
    /// name, known without hashing.
    pub async fn whole_chunk_sha256(
        &self,
        repo: &str,
        id: &str,
        range: Range<u64>,
    ) -> Option<String> {
        let Layout::Chunked(m) = self.layout(repo, id).await.ok()? else {
            return None;
        };
        match m.pieces(range.clone())[..] {
            [(index, ref piece)] if m.chunk_range(index) == range && piece.start == 0 => {
                Some(hex::encode(m.chunks[index]))
            }
            _ => None,
        }
    }

    async fn legacy_block_sums(&self, repo: &str, id: &str, block: u64) -> Option<BlockSums> {
        for (path, len) in [
            (index_path(repo, id), ENTRY_LEN),
            (legacy_index_path(repo, id), LEGACY_ENTRY_LEN),
        ] {
            let start = block * len;
            if let Ok(entry) = self.backend.get_range(&path, start..start + len).await {
                return BlockSums::decode(&entry);
            }
        }
        None
    }

    /// Starts writing a new blob; `limit` caps its size, and `len`, when known, is checked
    /// against it up front.
    pub async fn begin_blob(&self, repo: &str, len: Option<u64>, limit: u64) -> Result<BlobWriter> {
        if len.is_some_and(|len| len > limit) {
            return Err(StoreError::TooLarge { limit });
        }
        Ok(BlobWriter::new(self.backend.clone(), repo, limit))
    }

    /// Stores a small in-memory blob.
    pub async fn put_blob_bytes(&self, repo: &str, data: Bytes) -> Result<BlobInfo> {
        let mut writer = self.begin_blob(repo, None, u64::MAX).await?;
        writer.write(data).await?;
        writer.finish().await
    }
}

#[cfg(test)]
mod tests;
