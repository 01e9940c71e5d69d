//! What an upload keeps of each upload chunk it received, one object per chunk index in
//! the upload's directory:
//! - `<index>.ref`: the stored chunks it is made of (JSON `[["<sha256>", len], …]`);
//! - `<index>.chunk`: its raw bytes (uploads whose chunk size is not a multiple of the
//!   store's chunk size);
//! - `<index>.copy`: the same range of an existing blob, read at `complete` (JSON
//!   `{"blob","len"}`; for a source that is not chunked alike).
//!
//! A chunk index has one record; writing one removes the others.

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;

use super::{upload_prefix, UploadMeta};
use crate::base::manifest::{parse_chunk_hash, CHUNK_SIZE};
use crate::store::chunks::store_chunk;
use crate::store::{Result, Store, StoreError, StoredChunk};

/// A `.copy` record.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ChunkCopy {
    pub blob: String,
    pub len: u64,
}

/// What to record for one upload chunk.
pub(super) enum Record {
    Raw(Bytes),
    Copy(ChunkCopy),
    Chunks(Vec<StoredChunk>),
}

/// Where the bytes of one received upload chunk are.
pub(super) enum Source {
    Raw(Path),
    Copied {
        blob: String,
        range: std::ops::Range<u64>,
    },
    Chunks(Vec<StoredChunk>),
}

/// One received upload chunk.
pub(super) struct Received {
    pub index: u64,
    pub len: u64,
    pub source: Source,
}

const KINDS: [&str; 3] = ["ref", "chunk", "copy"];

fn record_path(repo: &str, id: &str, index: u64, kind: &str) -> Path {
    Path::from(format!("{}/{index:010}.{kind}", upload_prefix(repo, id)))
}

fn encode_chunks(chunks: &[StoredChunk]) -> Bytes {
    let list: Vec<(String, u64)> = chunks
        .iter()
        .map(|c| (hex::encode(c.hash), c.len))
        .collect();
    Bytes::from(serde_json::to_vec(&list).expect("serializes"))
}

fn decode_chunks(location: &Path, bytes: &[u8]) -> Result<Vec<StoredChunk>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: location.to_string(),
        reason,
    };
    let list: Vec<(String, u64)> =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    list.into_iter()
        .map(|(hash, len)| {
            let hash = parse_chunk_hash(&hash).map_err(|e| corrupt(e.to_string()))?;
            Ok(StoredChunk { hash, len })
        })
        .collect()
}

impl Store {
    /// Replaces whatever upload `id` recorded for chunk `index` with `record`.
    pub(super) async fn put_record(
        &self,
        repo: &str,
        id: &str,
        index: u64,
        record: Record,
    ) -> Result<()> {
        let (kind, bytes) = match record {
            Record::Raw(data) => ("chunk", data),
            Record::Copy(copy) => (
                "copy",
                Bytes::from(serde_json::to_vec(&copy).expect("serializes")),
            ),
            Record::Chunks(chunks) => ("ref", encode_chunks(&chunks)),
        };
        for other in KINDS.into_iter().filter(|k| *k != kind) {
            self.backend
                .delete(&record_path(repo, id, index, other))
                .await?;
        }
        self.backend
            .put_scratch(&record_path(repo, id, index, kind), bytes)
            .await
    }

    /// Stores `data` as chunks of [`CHUNK_SIZE`], two at a time, in order.
    pub(super) async fn store_pieces(&self, repo: &str, data: Bytes) -> Result<Vec<StoredChunk>> {
        let pieces: Vec<Bytes> = (0..data.len())
            .step_by(CHUNK_SIZE as usize)
            .map(|start| data.slice(start..(start + CHUNK_SIZE as usize).min(data.len())))
            .collect();
        stream::iter(pieces)
            .map(|piece| {
                let backend = self.backend.clone();
                let repo = repo.to_string();
                async move {
                    tokio::spawn(async move { store_chunk(&backend, &repo, piece).await })
                        .await
                        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
                }
            })
            .buffered(2)
            .try_collect()
            .await
    }

    /// Every upload chunk received, by index.
    pub(super) async fn upload_records(
        &self,
        repo: &str,
        id: &str,
        meta: &UploadMeta,
    ) -> Result<Vec<Received>> {
        let listing = self
            .backend
            .list(&Path::from(upload_prefix(repo, id)))
            .await?;
        let mut received: Vec<Received> = stream::iter(listing)
            .map(|m| self.read_record(m, meta.chunk_size))
            .buffer_unordered(16)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await?;
        received.sort_unstable_by_key(|r| r.index);
        Ok(received)
    }

    /// Reads one listed object of an upload's directory; `None` if it is not a record.
    async fn read_record(
        &self,
        m: object_store::ObjectMeta,
        chunk_size: u64,
    ) -> Result<Option<Received>> {
        let Some((index, kind)) = m.location.filename().and_then(|n| n.split_once('.')) else {
            return Ok(None);
        };
        let Ok(index) = index.parse::<u64>() else {
            return Ok(None);
        };
        let (len, source) = match kind {
            "chunk" => (m.size, Source::Raw(m.location.clone())),
            "ref" => {
                let chunks = decode_chunks(&m.location, &self.backend.get(&m.location).await?)?;
                (chunks.iter().map(|c| c.len).sum(), Source::Chunks(chunks))
            }
            "copy" => {
                let bytes = self.backend.get(&m.location).await?;
                let copy: ChunkCopy =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        id: m.location.to_string(),
                        reason: e.to_string(),
                    })?;
                let start = index * chunk_size;
                let range = start..start + copy.len;
                (
                    copy.len,
                    Source::Copied {
                        blob: copy.blob,
                        range,
                    },
                )
            }
            _ => return Ok(None),
        };
        Ok(Some(Received { index, len, source }))
    }
}
