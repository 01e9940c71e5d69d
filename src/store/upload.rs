//! Resumable chunked uploads.
//!
//! Each chunk is stored as its own object as soon as it arrives (MD5-checked), so an upload
//! survives a client disconnect or a server restart; `GET` on the upload tells a client which
//! chunks to resend. `complete` streams the chunks in order into a new blob, hashing on the way.

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;

use super::{object_path, Result, Store, StoreError};
use crate::api::{BlobInfo, UploadStarted, UploadStatus};
use crate::base::checksum::md5_hex;
use crate::base::paths::validate_repo_name;
use crate::base::time::now_unix;

/// Chunk size used when the client does not ask for one.
pub const DEFAULT_UPLOAD_CHUNK: u64 = 4 << 20;
/// Bounds of the chunk size a client may ask for.
pub const MIN_UPLOAD_CHUNK: u64 = 64 << 10;
pub const MAX_UPLOAD_CHUNK: u64 = 64 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct UploadMeta {
    chunk_size: u64,
    created: i64,
}

fn upload_prefix(repo: &str, id: &str) -> String {
    format!("repos/{repo}/uploads/{id}")
}

fn chunk_path(repo: &str, id: &str, index: u64) -> Path {
    Path::from(format!("{}/{index:010}.chunk", upload_prefix(repo, id)))
}

/// A chunk copied from the same position of an existing blob: its bytes stay where they are
/// until `complete` streams them (an append to a huge file sends only the new bytes).
fn copy_path(repo: &str, id: &str, index: u64) -> Path {
    Path::from(format!("{}/{index:010}.copy", upload_prefix(repo, id)))
}

/// What a `.copy` object says.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChunkCopy {
    blob: String,
    len: u64,
}

/// Where the bytes of one received chunk are.
enum ChunkSource {
    Stored(Path),
    Copied {
        blob: String,
        range: std::ops::Range<u64>,
    },
}

/// One received chunk.
struct ReceivedChunk {
    index: u64,
    len: u64,
    source: ChunkSource,
}

fn validate_upload_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| StoreError::NotFound(format!("upload {id:?}")))
}

impl Store {
    /// Starts an upload with a chunk size clamped to the accepted bounds.
    pub async fn start_upload(&self, repo: &str, chunk_size: Option<u64>) -> Result<UploadStarted> {
        self.ensure_repo(repo).await?;
        let chunk_size = chunk_size
            .unwrap_or(DEFAULT_UPLOAD_CHUNK)
            .clamp(MIN_UPLOAD_CHUNK, MAX_UPLOAD_CHUNK);
        let id = uuid::Uuid::new_v4().to_string();
        let meta = serde_json::to_vec(&UploadMeta {
            chunk_size,
            created: now_unix(),
        })
        .expect("serializes");
        // Scratch like the chunks: an upload lost in a crash is started again by its client.
        self.backend
            .put_scratch(
                &Path::from(format!("{}/meta.json", upload_prefix(repo, &id))),
                Bytes::from(meta),
            )
            .await?;
        Ok(UploadStarted {
            upload_id: id,
            chunk_size,
        })
    }

    async fn upload_meta(&self, repo: &str, id: &str) -> Result<UploadMeta> {
        validate_repo_name(repo)?;
        validate_upload_id(id)?;
        let bytes = self
            .backend
            .get_opt(&Path::from(format!(
                "{}/meta.json",
                upload_prefix(repo, id)
            )))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("upload {id}")))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            id: id.into(),
            reason: e.to_string(),
        })
    }

    /// The chunk size of an upload (for the server's body limit).
    pub async fn upload_chunk_size(&self, repo: &str, id: &str) -> Result<u64> {
        Ok(self.upload_meta(repo, id).await?.chunk_size)
    }

    /// Stores chunk `index` of an upload after checking its MD5 (when given), its size and
    /// the upload's size limit.
    pub async fn put_upload_chunk(
        &self,
        repo: &str,
        id: &str,
        index: u64,
        data: Bytes,
        expected_md5: Option<&str>,
        limit: u64,
    ) -> Result<()> {
        let meta = self.upload_meta(repo, id).await?;
        if data.len() as u64 > meta.chunk_size {
            return Err(StoreError::InvalidInput(format!(
                "chunk of {} bytes is larger than the upload's chunk size {}",
                data.len(),
                meta.chunk_size
            )));
        }
        let end = index
            .checked_mul(meta.chunk_size)
            .and_then(|start| start.checked_add(data.len() as u64))
            .ok_or(StoreError::TooLarge { limit })?;
        if end > limit {
            return Err(StoreError::TooLarge { limit });
        }
        if let Some(expected) = expected_md5 {
            let bytes = data.clone();
            let actual = tokio::task::spawn_blocking(move || md5_hex(&bytes))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(StoreError::ChecksumMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        // Not fsynced: only the assembled blob must be durable. After an OS crash a chunk may
        // be missing or cut short; `complete` then refuses the layout (every chunk but the last
        // must be full) and the client resends it. A process crash loses nothing.
        self.backend.delete(&copy_path(repo, id, index)).await?;
        self.backend
            .put_scratch(&chunk_path(repo, id, index), data)
            .await
    }

    /// Makes chunk `index` of an upload a copy of the same byte range of blob `source` (the
    /// whole chunk, or the blob's tail when it ends inside it). Returns the chunk's length.
    pub async fn copy_upload_chunk(
        &self,
        repo: &str,
        id: &str,
        index: u64,
        source: &str,
        limit: u64,
    ) -> Result<u64> {
        let meta = self.upload_meta(repo, id).await?;
        let size = self.blob_size(repo, source).await?;
        let start = index
            .checked_mul(meta.chunk_size)
            .filter(|s| *s < size)
            .ok_or_else(|| {
                StoreError::InvalidInput(format!(
                    "chunk {index} starts past the end of blob {source} ({size} bytes)"
                ))
            })?;
        let len = meta.chunk_size.min(size - start);
        if start + len > limit {
            return Err(StoreError::TooLarge { limit });
        }
        let copy = serde_json::to_vec(&ChunkCopy {
            blob: source.to_string(),
            len,
        })
        .expect("serializes");
        self.backend.delete(&chunk_path(repo, id, index)).await?;
        self.backend
            .put_scratch(&copy_path(repo, id, index), Bytes::from(copy))
            .await?;
        Ok(len)
    }

    /// Received chunk indices and their total size.
    pub async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        self.upload_meta(repo, id).await?;
        let chunks = self.upload_chunks(repo, id).await?;
        Ok(UploadStatus {
            bytes: chunks.iter().map(|c| c.len).sum(),
            received: chunks.into_iter().map(|c| c.index).collect(),
        })
    }

    async fn upload_chunks(&self, repo: &str, id: &str) -> Result<Vec<ReceivedChunk>> {
        let listing = self
            .backend
            .list(&Path::from(upload_prefix(repo, id)))
            .await?;
        let mut chunks = Vec::with_capacity(listing.len());
        for m in listing {
            let Some(name) = m.location.filename() else {
                continue;
            };
            if let Some(index) = name.strip_suffix(".chunk").and_then(|i| i.parse().ok()) {
                chunks.push(ReceivedChunk {
                    index,
                    len: m.size,
                    source: ChunkSource::Stored(m.location.clone()),
                });
            } else if let Some(index) = name
                .strip_suffix(".copy")
                .and_then(|i| i.parse::<u64>().ok())
            {
                let bytes = self.backend.get(&m.location).await?;
                let copy: ChunkCopy =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        id: m.location.to_string(),
                        reason: e.to_string(),
                    })?;
                let meta = self.upload_meta(repo, id).await?;
                let start = index * meta.chunk_size;
                chunks.push(ReceivedChunk {
                    index,
                    len: copy.len,
                    source: ChunkSource::Copied {
                        blob: copy.blob,
                        range: start..start + copy.len,
                    },
                });
            }
        }
        chunks.sort_unstable_by_key(|c| c.index);
        Ok(chunks)
    }

    /// Assembles the chunks into a blob and removes the upload.
    pub async fn complete_upload(&self, repo: &str, id: &str, limit: u64) -> Result<BlobInfo> {
        let meta = self.upload_meta(repo, id).await?;
        let chunks = self.upload_chunks(repo, id).await?;
        for (
            position,
            ReceivedChunk {
                index, len: size, ..
            },
        ) in chunks.iter().enumerate()
        {
            if *index != position as u64 {
                return Err(StoreError::InvalidInput(format!(
                    "chunk {position} is missing"
                )));
            }
            if position + 1 < chunks.len() && *size != meta.chunk_size {
                return Err(StoreError::InvalidInput(format!(
                    "chunk {index} has {size} bytes; every chunk but the last must have {}",
                    meta.chunk_size
                )));
            }
        }
        let total: u64 = chunks.iter().map(|c| c.len).sum();
        let mut writer = self.begin_blob(repo, Some(total), limit).await?;
        // Read the next chunk while the current one is hashed and written.
        let backend = self.backend.clone();
        let repo_owned = repo.to_string();
        let mut reads = futures::stream::iter(chunks)
            .map(move |chunk| {
                let backend = backend.clone();
                let path = match &chunk.source {
                    ChunkSource::Stored(path) => path.clone(),
                    ChunkSource::Copied { blob, .. } => object_path(&repo_owned, blob),
                };
                async move {
                    match chunk.source {
                        ChunkSource::Stored(_) => backend.get(&path).await,
                        ChunkSource::Copied { range, .. } => backend.get_range(&path, range).await,
                    }
                }
            })
            .buffered(2);
        while let Some(data) = reads.next().await {
            let data = match data {
                Ok(d) => d,
                Err(e) => {
                    writer.abort().await?;
                    return Err(e);
                }
            };
            writer.write(data).await?;
        }
        let info = writer.finish().await?;
        self.abort_upload(repo, id).await?;
        Ok(info)
    }

    /// Removes an upload and its chunks. Its meta goes first, so an upload cut halfway through
    /// this by a crash is gone for clients (not a broken upload missing chunks); the startup
    /// sweep removes the chunks left behind.
    pub async fn abort_upload(&self, repo: &str, id: &str) -> Result<()> {
        self.upload_meta(repo, id).await?;
        self.backend
            .delete(&Path::from(format!(
                "{}/meta.json",
                upload_prefix(repo, id)
            )))
            .await?;
        for meta in self
            .backend
            .list(&Path::from(upload_prefix(repo, id)))
            .await?
        {
            self.backend.delete(&meta.location).await?;
        }
        Ok(())
    }
}
