//! Blob reads by range and streamed blob writes.
//!
//! A blob is written to `tmp/<uuid>` through a multipart upload while it is hashed, then
//! renamed to its content address. Nothing holds a whole blob in memory, and a reader never
//! sees a half-written blob: the content-addressed name only appears once it is complete.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, WriteMultipart};

use super::index::{BlockIndexer, BlockSums, ENTRY_LEN, LEGACY_ENTRY_LEN};
use super::{object_path, Backend, Result, Store, StoreError};
use crate::api::BlobInfo;
use crate::base::ids::BlobHasher;
use crate::base::paths::validate_object_id;

/// Where a blob's block index is kept.
fn index_path(repo: &str, id: &str) -> Path {
    Path::from(format!("repos/{repo}/objects/{}/{id}.idx2", &id[..2]))
}

/// Where blobs written before the index had CRC32C keep theirs.
fn legacy_index_path(repo: &str, id: &str) -> Path {
    Path::from(format!("repos/{repo}/objects/{}/{id}.idx", &id[..2]))
}

/// Where a blob's whole-content MD5 is kept (hex), for stream sessions that announce it.
fn md5_path(repo: &str, id: &str) -> Path {
    Path::from(format!("repos/{repo}/objects/{}/{id}.md5", &id[..2]))
}

/// Part size of the multipart upload a blob is written with.
const PART_SIZE: usize = 8 << 20;
/// Parts written concurrently; bounds the memory of one writer to about 2 × PART_SIZE.
const PARTS_IN_FLIGHT: usize = 2;

impl Store {
    /// Size of a blob; `NotFound` if the repository does not hold it, or if `id` names a tree
    /// or a commit. Blobs have a block index; one whose index was lost in a crash is told
    /// apart by not being a valid tree or commit (those are small).
    pub async fn blob_size(&self, repo: &str, id: &str) -> Result<u64> {
        validate_object_id(id)?;
        let key = (repo.to_string(), id.to_string());
        if let Some(size) = self.blob_sizes.lock().expect("blob size lock").get(&key) {
            return Ok(*size);
        }
        let size = self.look_up_blob_size(repo, id).await?;
        self.blob_sizes
            .lock()
            .expect("blob size lock")
            .put(key, size);
        Ok(size)
    }

    async fn look_up_blob_size(&self, repo: &str, id: &str) -> Result<u64> {
        let not_found = || StoreError::NotFound(format!("blob {id}"));
        let size = self
            .backend
            .size(&object_path(repo, id))
            .await?
            .ok_or_else(not_found)?;
        if size > 16 << 20 || self.has_block_index(repo, id).await {
            return Ok(size);
        }
        let bytes = self.backend.get(&object_path(repo, id)).await?;
        if crate::store::Commit::decode(id, &bytes).is_ok()
            || crate::store::Tree::decode(id, &bytes).is_ok()
        {
            return Err(not_found());
        }
        Ok(size)
    }

    /// Reads a range of a blob into memory (for bounded ranges only).
    pub async fn read_blob_range(&self, repo: &str, id: &str, range: Range<u64>) -> Result<Bytes> {
        validate_object_id(id)?;
        self.backend.get_range(&object_path(repo, id), range).await
    }

    /// Streams a range of a blob in bounded pieces.
    pub fn stream_blob(
        &self,
        repo: &str,
        id: &str,
        range: Range<u64>,
    ) -> BoxStream<'static, Result<Bytes>> {
        self.backend.stream_range(object_path(repo, id), range)
    }

    /// Hex MD5 of `range` of a blob. The whole blob's is kept beside it once known; any other
    /// range is read and hashed (a cost proportional to its length).
    pub async fn range_md5(&self, repo: &str, id: &str, range: Range<u64>) -> Result<String> {
        let size = self.blob_size(repo, id).await?;
        let whole = range.start == 0 && range.end == size;
        if whole {
            if let Some(kept) = self.backend.get_opt(&md5_path(repo, id)).await? {
                if let Ok(text) = std::str::from_utf8(&kept) {
                    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Ok(text.to_string());
                    }
                }
            }
        }
        let mut md5 = Some(<md5::Md5 as md5::Digest>::new());
        let mut pieces = self.stream_blob(repo, id, range);
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
        let hex = hex::encode(md5::Digest::finalize(md5.expect("kept")));
        if whole {
            self.backend
                .put_scratch(&md5_path(repo, id), Bytes::from(hex.clone()))
                .await?;
        }
        Ok(hex)
    }

    /// Whether a blob's block index exists.
    async fn has_block_index(&self, repo: &str, id: &str) -> bool {
        for path in [index_path(repo, id), legacy_index_path(repo, id)] {
            if matches!(self.backend.size(&path).await, Ok(Some(_))) {
                return true;
            }
        }
        false
    }

    /// Checksums of block `block` of a blob, from its index (`None` if it has none).
    pub async fn block_sums(&self, repo: &str, id: &str, block: u64) -> Option<BlockSums> {
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

    /// Starts writing a new blob. With `len`, the id is computed while the bytes stream in;
    /// without it, in a second pass over the temporary object. `limit` caps the size.
    pub async fn begin_blob(&self, repo: &str, len: Option<u64>, limit: u64) -> Result<BlobWriter> {
        if let Some(len) = len {
            if len > limit {
                return Err(StoreError::TooLarge { limit });
            }
        }
        let tmp = Path::from(format!("tmp/{}", uuid::Uuid::new_v4()));
        let upload = self.backend.objects().put_multipart(&tmp).await?;
        Ok(BlobWriter {
            backend: self.backend.clone(),
            repo: repo.to_string(),
            tmp,
            parts: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            hasher: len.map(BlobHasher::new),
            indexer: Some(BlockIndexer::default()),
            written: 0,
            limit,
        })
    }

    /// Stores a small in-memory blob.
    pub async fn put_blob_bytes(&self, repo: &str, data: Bytes) -> Result<BlobInfo> {
        let mut writer = self
            .begin_blob(repo, Some(data.len() as u64), u64::MAX)
            .await?;
        writer.write(data).await?;
        writer.finish().await
    }
}

/// A blob being written. Dropping it without [`finish`](Self::finish) leaves only a
/// temporary object, never a visible blob; call [`abort`](Self::abort) to remove that too.
pub struct BlobWriter {
    backend: Backend,
    repo: String,
    tmp: Path,
    parts: WriteMultipart,
    hasher: Option<BlobHasher>,
    indexer: Option<BlockIndexer>,
    written: u64,
    limit: u64,
}

impl BlobWriter {
    /// Appends bytes. Waits while too many parts are in flight (backpressure).
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        if self.written > self.limit {
            return Err(StoreError::TooLarge { limit: self.limit });
        }
        self.parts.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.parts.put(data.clone());
        // Hash while the part is written, on two threads: the id and the block index.
        let (hasher, indexer) = (self.hasher.take(), self.indexer.take());
        let (hasher, indexer) =
            tokio::task::spawn_blocking(move || hash_in_parallel(hasher, indexer, &data))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.hasher = hasher;
        self.indexer = indexer;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Completes the blob and publishes it under its id.
    pub async fn finish(self) -> Result<BlobInfo> {
        let BlobWriter {
            backend,
            repo,
            tmp,
            parts,
            hasher,
            indexer,
            written,
            ..
        } = self;
        parts.finish().await?;
        let hashed = match (hasher, indexer) {
            (Some(h), Some(i)) => h
                .finish()
                .map(|ids| (ids, i.finish()))
                .map_err(StoreError::from),
            _ => hash_stored(&backend, &tmp, written).await,
        };
        let ((hash, md5), index) = match hashed {
            Ok(ids) => ids,
            Err(e) => {
                backend.delete(&tmp).await?;
                return Err(e);
            }
        };
        // The index first, so a published blob has it. It is not fsynced: a reader that finds
        // it missing or short after a crash computes the checksums itself.
        backend
            .put_scratch(&index_path(&repo, &hash), bytes::Bytes::from(index))
            .await?;
        backend
            .put_scratch(&md5_path(&repo, &hash), bytes::Bytes::from(md5.clone()))
            .await?;
        backend.publish(&tmp, &object_path(&repo, &hash)).await?;
        Ok(BlobInfo {
            hash,
            size: written,
            md5,
        })
    }

    /// Drops everything written so far.
    pub async fn abort(self) -> Result<()> {
        let BlobWriter {
            backend,
            tmp,
            parts,
            ..
        } = self;
        let _ = parts.abort().await;
        backend.delete(&tmp).await
    }
}

/// Feeds `data` to the blob hasher and the block indexer at once, on two threads.
fn hash_in_parallel(
    mut hasher: Option<BlobHasher>,
    mut indexer: Option<BlockIndexer>,
    data: &[u8],
) -> (Option<BlobHasher>, Option<BlockIndexer>) {
    std::thread::scope(|scope| {
        let whole = scope.spawn(|| {
            if let Some(h) = hasher.as_mut() {
                h.update(data);
            }
            hasher
        });
        if let Some(i) = indexer.as_mut() {
            i.update(data);
        }
        (whole.join().expect("hashing thread"), indexer)
    })
}

/// Second pass over a blob written without a known length: its id, MD5 and block index.
async fn hash_stored(
    backend: &Backend,
    tmp: &Path,
    len: u64,
) -> Result<((String, String), Vec<u8>)> {
    let mut hasher = Some(BlobHasher::new(len));
    let mut indexer = Some(BlockIndexer::default());
    let mut pieces = backend.stream_range(tmp.clone(), 0..len);
    while let Some(piece) = pieces.next().await {
        let piece = piece?;
        let (h, i) = tokio::task::spawn_blocking(move || hash_in_parallel(hasher, indexer, &piece))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        hasher = h;
        indexer = i;
    }
    let ids = hasher.expect("kept").finish()?;
    Ok((ids, indexer.expect("kept").finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_size_is_looked_up_once_and_a_missing_blob_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Backend::local(dir.path()).unwrap())
            .await
            .unwrap();
        let blob = store
            .put_blob_bytes("default", Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        assert_eq!(store.blob_size("default", &blob.hash).await.unwrap(), 11);
        // Blobs are immutable and never deleted: the second answer comes from memory, which
        // shows here because the file is gone.
        let objects = dir
            .path()
            .join(format!("repos/default/objects/{}", &blob.hash[..2]));
        std::fs::remove_dir_all(&objects).unwrap();
        assert_eq!(store.blob_size("default", &blob.hash).await.unwrap(), 11);

        // A miss is not remembered: the blob may be written a moment later.
        let late = store
            .put_blob_bytes("default", Bytes::from_static(b"late"))
            .await
            .unwrap();
        std::fs::remove_dir_all(
            dir.path()
                .join(format!("repos/default/objects/{}", &late.hash[..2])),
        )
        .unwrap();
        assert!(matches!(
            store.blob_size("default", &late.hash).await,
            Err(StoreError::NotFound(_))
        ));
        store
            .put_blob_bytes("default", Bytes::from_static(b"late"))
            .await
            .unwrap();
        assert_eq!(store.blob_size("default", &late.hash).await.unwrap(), 4);
    }
}
