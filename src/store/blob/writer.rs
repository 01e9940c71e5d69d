//! Streamed blob writes: bytes are cut into [`CHUNK_SIZE`] chunks as they arrive, each
//! chunk hashed and stored under its hash (two at a time, on both cores), and `finish`
//! writes the manifest once every chunk is durable. Nothing holds more than a few chunks in
//! memory, no byte is read back, and a reader never sees a half-written blob: the blob id
//! names a manifest, which only appears once all its chunks have.

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};

use crate::api::BlobInfo;
use crate::base::manifest::{BlobHasher, CHUNK_SIZE};
use crate::store::chunks::{store_chunk, StoredChunk};
use crate::store::manifests::write_manifest;
use crate::store::{Backend, Result, StoreError};

/// Chunks hashed and written at once; bounds a writer's memory to about this many chunks
/// plus the one being filled.
const CHUNKS_IN_FLIGHT: usize = 2;

type ChunkTask = tokio::task::JoinHandle<Result<StoredChunk>>;

/// A blob being written. Dropping it without [`finish`](Self::finish) leaves at most some
/// chunks no manifest names, which the sweep removes; never a visible blob.
pub struct BlobWriter {
    backend: Backend,
    repo: String,
    filling: BytesMut,
    in_flight: FuturesOrdered<ChunkTask>,
    manifest: BlobHasher,
    written: u64,
    limit: u64,
}

impl BlobWriter {
    pub(crate) fn new(backend: Backend, repo: &str, limit: u64) -> Self {
        BlobWriter {
            backend,
            repo: repo.to_string(),
            filling: BytesMut::new(),
            in_flight: FuturesOrdered::new(),
            manifest: BlobHasher::new(),
            written: 0,
            limit,
        }
    }

    /// Appends bytes. Waits while too many chunks are in flight (backpressure).
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        if self.written > self.limit {
            return Err(StoreError::TooLarge { limit: self.limit });
        }
        let mut data = data;
        while !data.is_empty() {
            if self.filling.is_empty() && data.len() as u64 >= CHUNK_SIZE {
                // A whole chunk in the input: no copy.
                let chunk = data.split_to(CHUNK_SIZE as usize);
                self.send_chunk(chunk).await?;
                continue;
            }
            if self.filling.capacity() == 0 {
                // One allocation per chunk, not a doubling series of them.
                self.filling.reserve(CHUNK_SIZE as usize);
            }
            let room = CHUNK_SIZE as usize - self.filling.len();
            let take = room.min(data.len());
            self.filling.extend_from_slice(&data.split_to(take));
            if self.filling.len() as u64 == CHUNK_SIZE {
                let chunk = self.filling.split().freeze();
                self.send_chunk(chunk).await?;
            }
        }
        Ok(())
    }

    /// Starts storing one chunk, first waiting for the oldest in flight when the window is
    /// full.
    async fn send_chunk(&mut self, chunk: Bytes) -> Result<()> {
        if self.in_flight.len() >= CHUNKS_IN_FLIGHT {
            self.land_oldest().await?;
        }
        let backend = self.backend.clone();
        let repo = self.repo.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            store_chunk(&backend, &repo, chunk).await
        }));
        Ok(())
    }

    /// Waits for the oldest chunk in flight and adds it to the manifest.
    async fn land_oldest(&mut self) -> Result<()> {
        let Some(done) = self.in_flight.next().await else {
            return Ok(());
        };
        let stored = done.map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        self.manifest.push_chunk(stored.hash, stored.len);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Stores the last chunk, waits for all of them, and publishes the manifest.
    pub async fn finish(mut self) -> Result<BlobInfo> {
        if !self.filling.is_empty() {
            let chunk = self.filling.split().freeze();
            self.send_chunk(chunk).await?;
        }
        while !self.in_flight.is_empty() {
            self.land_oldest().await?;
        }
        let manifest = self.manifest.finish();
        let hash = write_manifest(&self.backend, &self.repo, &manifest).await?;
        Ok(BlobInfo {
            hash,
            size: manifest.size,
            chunks: manifest.chunks.len() as u64,
        })
    }

    /// Drops what was written so far. Stored chunks stay until the sweep: another blob
    /// may share them.
    pub async fn abort(mut self) -> Result<()> {
        while let Some(task) = self.in_flight.next().await {
            let _ = task;
        }
        Ok(())
    }
}
