//! Resumable chunked uploads.
//!
//! Whatever arrives is kept as soon as it arrives, so an upload survives a client disconnect
//! or a server restart; `GET` on the upload tells a client which upload chunks to resend.
//! When the upload's chunk size is a multiple of the store's [`CHUNK_SIZE`] (the default is
//! equal to it), a received upload chunk is stored straight away as content-addressed
//! chunks, and the upload keeps only a small record of their hashes; an upload chunk may
//! also name chunks the repository already holds, or the same range of an existing blob,
//! and then no bytes move at all. `complete` then writes the manifest from the records:
//! O(number of chunks), not O(bytes). Other chunk sizes keep the raw bytes until `complete`,
//! which cuts them into chunks (`upload/records.rs` has the records, `upload/assemble.rs`
//! the assembly).

mod assemble;
mod records;

use bytes::Bytes;
use object_store::path::Path;

use super::{Result, Store, StoreError};
use crate::api::{UploadStarted, UploadStatus};
use crate::base::checksum::{crc32c_hex, md5_hex};
use crate::base::manifest::{ChunkHash, CHUNK_SIZE};
use crate::base::paths::validate_repo_name;
use crate::base::time::now_unix;
use records::{ChunkCopy, Record};

/// Chunk size used when the client does not ask for one.
pub const DEFAULT_UPLOAD_CHUNK: u64 = CHUNK_SIZE;
/// Bounds of the chunk size a client may ask for.
pub const MIN_UPLOAD_CHUNK: u64 = 64 << 10;
pub const MAX_UPLOAD_CHUNK: u64 = 64 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct UploadMeta {
    chunk_size: u64,
    created: i64,
}

impl UploadMeta {
    /// Whether upload chunks line up with store chunks, so each is stored on arrival.
    fn aligned(&self) -> bool {
        self.chunk_size.is_multiple_of(CHUNK_SIZE)
    }
}

/// The checksums a client sent with an upload chunk.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChunkChecks<'a> {
    /// `X-Checksum-MD5`, hex.
    pub md5: Option<&'a str>,
    /// `X-Checksum-CRC32C`, hex (what the mount sends: it costs a tenth of MD5).
    pub crc32c: Option<&'a str>,
}

fn upload_prefix(repo: &str, id: &str) -> String {
    format!("repos/{repo}/uploads/{id}")
}

fn meta_path(repo: &str, id: &str) -> Path {
    Path::from(format!("{}/meta.json", upload_prefix(repo, id)))
}

fn validate_upload_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| StoreError::NotFound(format!("upload {id:?}")))
}

/// A checksum algorithm: hex digest of some bytes.
type Digest = fn(&[u8]) -> String;

/// Checks a received chunk against the checksums its client sent (on a blocking thread).
async fn verify_checks(data: &Bytes, checks: ChunkChecks<'_>) -> Result<()> {
    let sent: [(Option<&str>, Digest); 2] = [(checks.md5, md5_hex), (checks.crc32c, crc32c_hex)];
    let wanted: Vec<(String, Digest)> = sent
        .into_iter()
        .filter_map(|(value, digest)| Some((value?.trim().to_ascii_lowercase(), digest)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let bytes = data.clone();
    let mismatch = tokio::task::spawn_blocking(move || {
        wanted.into_iter().find_map(|(expected, digest)| {
            let actual = digest(&bytes);
            (actual != expected).then_some((expected, actual))
        })
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    match mismatch {
        Some((expected, actual)) => Err(StoreError::ChecksumMismatch { expected, actual }),
        None => Ok(()),
    }
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
        // Scratch like the records: an upload lost in a crash is started again by its client.
        self.backend
            .put_scratch(&meta_path(repo, &id), Bytes::from(meta))
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
            .get_opt(&meta_path(repo, id))
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

    /// Stores upload chunk `index` after checking its checksums, its size and the upload's
    /// size limit.
    pub async fn put_upload_chunk(
        &self,
        repo: &str,
        id: &str,
        index: u64,
        data: Bytes,
        checks: ChunkChecks<'_>,
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
        check_limit(index, meta.chunk_size, data.len() as u64, limit)?;
        verify_checks(&data, checks).await?;
        if meta.aligned() {
            let stored = self.store_pieces(repo, data).await?;
            return self
                .put_record(repo, id, index, Record::Chunks(stored), true)
                .await;
        }
        // Not fsynced: only finished chunks must be durable. After an OS crash a raw chunk
        // may be missing or cut short; `complete` then refuses the layout (every chunk but
        // the last must be full) and the client resends it. A process crash loses nothing.
        self.put_record(repo, id, index, Record::Raw(data), false)
            .await
    }

    /// Makes upload chunk `index` the chunks `hashes` the repository already holds (no bytes
    /// are sent). Only for uploads whose chunk size is a multiple of [`CHUNK_SIZE`]; every
    /// chunk but the last must be a full one. Returns the upload chunk's length.
    pub async fn reference_upload_chunk(
        &self,
        repo: &str,
        id: &str,
        index: u64,
        hashes: &[ChunkHash],
        limit: u64,
    ) -> Result<u64> {
        let meta = self.upload_meta(repo, id).await?;
        if !meta.aligned()
            || hashes.is_empty()
            || hashes.len() as u64 > meta.chunk_size / CHUNK_SIZE
        {
            return Err(StoreError::InvalidInput(format!(
                "an upload chunk of {} bytes cannot be {} stored chunks of {CHUNK_SIZE}",
                meta.chunk_size,
                hashes.len()
            )));
        }
        let stored = self.held_chunks(repo, hashes).await?;
        let len: u64 = stored.iter().map(|c| c.len).sum();
        check_limit(index, meta.chunk_size, len, limit)?;
        self.put_record(repo, id, index, Record::Chunks(stored), true)
            .await?;
        Ok(len)
    }

    /// The given chunks with their lengths; `NotFound` names the first one the repository
    /// lacks, `InvalidInput` a short one that is not last.
    async fn held_chunks(
        &self,
        repo: &str,
        hashes: &[ChunkHash],
    ) -> Result<Vec<super::StoredChunk>> {
        let mut stored = Vec::with_capacity(hashes.len());
        for (i, hash) in hashes.iter().enumerate() {
            let len = super::chunks::chunk_len(&self.backend, repo, hash)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("chunk {}", hex::encode(hash))))?;
            if len != CHUNK_SIZE && i + 1 < hashes.len() {
                return Err(StoreError::InvalidInput(format!(
                    "chunk {} has {len} bytes but is not the last",
                    hex::encode(hash)
                )));
            }
            stored.push(super::StoredChunk { hash: *hash, len });
        }
        Ok(stored)
    }

    /// Which of `hashes` the repository does not hold, in the order given.
    pub async fn missing_chunks(&self, repo: &str, hashes: &[ChunkHash]) -> Result<Vec<ChunkHash>> {
        self.ensure_repo(repo).await?;
        let mut missing = Vec::new();
        for hash in hashes {
            if super::chunks::chunk_len(&self.backend, repo, hash)
                .await?
                .is_none()
            {
                missing.push(*hash);
            }
        }
        Ok(missing)
    }

    /// Makes upload chunks `index..index + count` the same byte ranges of blob `source` (the
    /// last one may be the blob's tail). When they are whole chunks of `source`, they are
    /// referenced and no bytes move: a run of several is one record (the unchanged part of an
    /// appended file: one request and one file however long it is). Otherwise each is a copy
    /// read at `complete`. Returns their total length. Every chunk but the last must lie
    /// wholly inside `source`.
    pub async fn copy_upload_chunks(
        &self,
        repo: &str,
        id: &str,
        (index, count): (u64, u64),
        source: &str,
        limit: u64,
    ) -> Result<u64> {
        let meta = self.upload_meta(repo, id).await?;
        let size = self.blob_size(repo, source).await?;
        let cs = meta.chunk_size;
        let last = index
            .checked_add(count.max(1) - 1)
            .ok_or(StoreError::TooLarge { limit })?;
        let last_start = last.checked_mul(cs).filter(|s| *s < size).ok_or_else(|| {
            StoreError::InvalidInput(format!(
                "chunks {index}..={last} reach past the end of blob {source} ({size} bytes)"
            ))
        })?;
        let (start, end) = (index * cs, (last_start + cs).min(size));
        check_limit(last, cs, end - last_start, limit)?;
        let manifest = self.blob_manifest(repo, source).await?;
        match manifest.filter(|m| meta.aligned() && m.chunk_size == CHUNK_SIZE) {
            Some(m) if last == index => {
                let record = Record::Chunks(stored_chunks_of(&m, start..end));
                self.put_record(repo, id, index, record, true).await?
            }
            Some(m) => {
                let chunks = stored_chunks_of(&m, start..end);
                self.put_run(repo, id, (index, last), &chunks).await?
            }
            None => {
                for i in index..=last {
                    let len = cs.min(size - i * cs);
                    let copy = ChunkCopy {
                        blob: source.to_string(),
                        len,
                    };
                    self.put_record(repo, id, i, Record::Copy(copy), meta.aligned())
                        .await?;
                }
            }
        }
        Ok(end - start)
    }

    /// Received chunk indices and their total size.
    pub async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        let meta = self.upload_meta(repo, id).await?;
        let received = self.upload_records(repo, id, &meta).await?;
        Ok(UploadStatus {
            bytes: received.iter().map(|r| r.len).sum(),
            received: received.into_iter().map(|r| r.index).collect(),
        })
    }

    /// Removes an upload and its records. Its meta goes first, so an upload cut halfway
    /// through this by a crash is gone for clients (not a broken upload missing chunks); the
    /// startup sweep removes what is left behind. Stored chunks stay: a blob may hold them.
    pub async fn abort_upload(&self, repo: &str, id: &str) -> Result<()> {
        self.upload_meta(repo, id).await?;
        self.backend.delete(&meta_path(repo, id)).await?;
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

/// The chunks of blob `m` that `range` covers, each with the length of its part; `range`
/// starts at a chunk boundary.
fn stored_chunks_of(
    m: &crate::base::manifest::Manifest,
    range: std::ops::Range<u64>,
) -> Vec<super::StoredChunk> {
    m.pieces(range)
        .into_iter()
        .map(|(i, piece)| super::StoredChunk {
            hash: m.chunks[i],
            len: piece.end - piece.start,
        })
        .collect()
}

/// Refuses an upload chunk that would take the upload past `limit` bytes.
fn check_limit(index: u64, chunk_size: u64, len: u64, limit: u64) -> Result<()> {
    let end = index
        .checked_mul(chunk_size)
        .and_then(|start| start.checked_add(len))
        .ok_or(StoreError::TooLarge { limit })?;
    if end > limit {
        return Err(StoreError::TooLarge { limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
