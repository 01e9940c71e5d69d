//! Resumable chunked uploads.
//!
//! Each chunk is stored as its own object as soon as it arrives (MD5-checked), so an upload
//! survives a client disconnect or a server restart; `GET` on the upload tells a client which
//! chunks to resend. `complete` streams the chunks in order into a new blob, hashing on the way.

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;

use super::objects::md5_hex;
use super::paths::validate_repo_name;
use super::{now_unix, Result, Store, StoreError};
use crate::api::{BlobInfo, UploadStarted, UploadStatus};

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

fn validate_upload_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| StoreError::NotFound(format!("upload {id:?}")))
}

impl Store {
    /// Starts an upload with a chunk size clamped to the accepted bounds.
    pub async fn start_upload(&self, repo: &str, chunk_size: Option<u64>) -> Result<UploadStarted> {
        self.ensure_repo(repo).await?;
        let chunk_size = chunk_size.unwrap_or(DEFAULT_UPLOAD_CHUNK).clamp(MIN_UPLOAD_CHUNK, MAX_UPLOAD_CHUNK);
        let id = uuid::Uuid::new_v4().to_string();
        let meta = serde_json::to_vec(&UploadMeta { chunk_size, created: now_unix() }).expect("serializes");
        // Scratch like the chunks: an upload lost in a crash is started again by its client.
        self.backend
            .put_scratch(&Path::from(format!("{}/meta.json", upload_prefix(repo, &id))), Bytes::from(meta))
            .await?;
        Ok(UploadStarted { upload_id: id, chunk_size })
    }

    async fn upload_meta(&self, repo: &str, id: &str) -> Result<UploadMeta> {
        validate_repo_name(repo)?;
        validate_upload_id(id)?;
        let bytes = self
            .backend
            .get_opt(&Path::from(format!("{}/meta.json", upload_prefix(repo, id))))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("upload {id}")))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { id: id.into(), reason: e.to_string() })
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
                return Err(StoreError::ChecksumMismatch { expected: expected.to_string(), actual });
            }
        }
        // Not fsynced: only the assembled blob must be durable. After an OS crash a chunk may
        // be missing or cut short; `complete` then refuses the layout (every chunk but the last
        // must be full) and the client resends it. A process crash loses nothing.
        self.backend.put_scratch(&chunk_path(repo, id, index), data).await
    }

    /// Received chunk indices and their total size.
    pub async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        self.upload_meta(repo, id).await?;
        let chunks = self.upload_chunks(repo, id).await?;
        Ok(UploadStatus { bytes: chunks.iter().map(|c| c.1).sum(), received: chunks.into_iter().map(|c| c.0).collect() })
    }

    async fn upload_chunks(&self, repo: &str, id: &str) -> Result<Vec<(u64, u64)>> {
        let listing = self.backend.list(&Path::from(upload_prefix(repo, id))).await?;
        let mut chunks: Vec<(u64, u64)> = listing
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let index = name.strip_suffix(".chunk")?.parse().ok()?;
                Some((index, m.size))
            })
            .collect();
        chunks.sort_unstable();
        Ok(chunks)
    }

    /// Assembles the chunks into a blob and removes the upload.
    pub async fn complete_upload(&self, repo: &str, id: &str, limit: u64) -> Result<BlobInfo> {
        let meta = self.upload_meta(repo, id).await?;
        let chunks = self.upload_chunks(repo, id).await?;
        for (position, (index, size)) in chunks.iter().enumerate() {
            if *index != position as u64 {
                return Err(StoreError::InvalidInput(format!("chunk {position} is missing")));
            }
            if position + 1 < chunks.len() && *size != meta.chunk_size {
                return Err(StoreError::InvalidInput(format!(
                    "chunk {index} has {size} bytes; every chunk but the last must have {}",
                    meta.chunk_size
                )));
            }
        }
        let total: u64 = chunks.iter().map(|c| c.1).sum();
        let mut writer = self.begin_blob(repo, Some(total), limit).await?;
        // Read the next chunk while the current one is hashed and written.
        let paths: Vec<Path> = chunks.iter().map(|(index, _)| chunk_path(repo, id, *index)).collect();
        let backend = self.backend.clone();
        let mut reads = futures::stream::iter(paths).map(move |p| backend.get_owned(p)).buffered(2);
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

    /// Removes an upload and its chunks.
    pub async fn abort_upload(&self, repo: &str, id: &str) -> Result<()> {
        self.upload_meta(repo, id).await?;
        for meta in self.backend.list(&Path::from(upload_prefix(repo, id))).await? {
            self.backend.delete(&meta.location).await?;
        }
        Ok(())
    }
}
