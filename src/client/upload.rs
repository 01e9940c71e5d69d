//! Resumable chunked uploads from any `AsyncRead`, with bounded memory: at most
//! `max_concurrent` chunks are in flight, and a slow server slows the reader.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use super::{CancellationToken, Client, ClientError, Result};
use crate::api::{
    BlobInfo, ChunkList, MissingChunks, StartUpload, UploadStarted, UploadStatus,
    CHUNK_REFS_HEADER, COPY_COUNT_HEADER, COPY_FROM_BLOB_HEADER,
};
use crate::base::checksum::{crc32c_hex, CRC32C_HEADER};
use crate::base::manifest::{chunk_hash, BlobHasher, ChunkHash, Manifest, CHUNK_SIZE};

/// Options of [`Client::upload`].
#[derive(Clone)]
pub struct UploadOptions {
    /// Requested chunk size (the server may clamp it).
    pub chunk_size: u64,
    /// Chunk PUTs in flight at once.
    pub max_concurrent: usize,
    /// Called with the bytes acknowledged by the server so far.
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Ask the server which chunks it already holds and send only the others (a re-upload
    /// of a file with one changed MiB then sends one chunk).
    pub skip_held_chunks: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            chunk_size: CHUNK_SIZE,
            max_concurrent: 4,
            progress: None,
            skip_held_chunks: true,
        }
    }
}

/// Checks the server's answer against the blob id computed locally.
fn verify_stored(local: &Manifest, info: &BlobInfo) -> Result<()> {
    let expected = local.id();
    if expected != info.hash || info.size != local.size {
        return Err(ClientError::Checksum {
            expected: format!("{expected} ({} bytes)", local.size),
            actual: format!("{} ({} bytes)", info.hash, info.size),
        });
    }
    Ok(())
}

/// One upload chunk read and hashed: its store chunks' hashes (when it is made of whole
/// store chunks) and its CRC32C, for the PUT.
struct HashedChunk {
    data: Bytes,
    chunk_hashes: Option<Vec<ChunkHash>>,
    crc32c: String,
}

/// Hashes an upload chunk on a blocking thread; `aligned` when the upload chunk size is a
/// multiple of the store's chunk size, so its store chunks can be named.
async fn hash_upload_chunk(data: Bytes, aligned: bool) -> Result<HashedChunk> {
    tokio::task::spawn_blocking(move || {
        let chunk_hashes = aligned.then(|| {
            data.chunks(CHUNK_SIZE as usize)
                .map(chunk_hash)
                .collect::<Vec<_>>()
        });
        let crc32c = crc32c_hex(&data);
        HashedChunk {
            data,
            chunk_hashes,
            crc32c,
        }
    })
    .await
    .map_err(|e| ClientError::Io(std::io::Error::other(e)))
}

impl Client {
    /// Starts an upload session.
    pub async fn start_upload(
        &self,
        chunk_size: Option<u64>,
        cancel: &CancellationToken,
    ) -> Result<UploadStarted> {
        let url = self.url("/uploads");
        let body = StartUpload { chunk_size };
        let response = self
            .send(cancel, || self.request(Method::POST, &url).json(&body))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Sends chunk `index` of an upload with its CRC32C (computed when not given; retried on
    /// its own).
    pub async fn put_chunk(
        &self,
        upload_id: &str,
        index: u64,
        data: Bytes,
        crc32c: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let url = self.url(&format!("/uploads/{upload_id}/{index}"));
        let crc = crc32c.unwrap_or_else(|| crc32c_hex(&data));
        self.send(cancel, || {
            self.request(Method::PUT, &url)
                .header(CRC32C_HEADER, &crc)
                .body(data.clone())
        })
        .await?;
        Ok(())
    }

    /// Makes chunk `index` of an upload the stored chunks `hashes` (no bytes are sent);
    /// returns its length. Fails with 404 if the repository lacks one of them.
    pub async fn reference_chunks(
        &self,
        upload_id: &str,
        index: u64,
        hashes: &[ChunkHash],
        cancel: &CancellationToken,
    ) -> Result<u64> {
        let list = hashes.iter().map(hex::encode).collect::<Vec<_>>().join(",");
        self.put_named_chunk(upload_id, index, &[(CHUNK_REFS_HEADER, &list)], cancel)
            .await
    }

    /// A chunk PUT with no body whose `headers` name its bytes (chunk hashes, or a blob to
    /// copy from); returns the length the server made.
    async fn put_named_chunk(
        &self,
        upload_id: &str,
        index: u64,
        headers: &[(&str, &str)],
        cancel: &CancellationToken,
    ) -> Result<u64> {
        let url = self.url(&format!("/uploads/{upload_id}/{index}"));
        let response = self
            .send(cancel, || {
                headers
                    .iter()
                    .fold(self.request(Method::PUT, &url), |r, (name, value)| {
                        r.header(*name, *value)
                    })
            })
            .await?;
        let made: ChunkLen = response.json().await.map_err(ClientError::Transport)?;
        Ok(made.len)
    }

    /// Which of `hashes` the repository does not hold.
    pub async fn missing_chunks(
        &self,
        hashes: &[ChunkHash],
        cancel: &CancellationToken,
    ) -> Result<Vec<ChunkHash>> {
        let url = self.url("/chunks/missing");
        let body = ChunkList {
            chunks: hashes.iter().map(hex::encode).collect(),
        };
        let response = self
            .send(cancel, || self.request(Method::POST, &url).json(&body))
            .await?;
        let missing: MissingChunks = response.json().await.map_err(ClientError::Transport)?;
        missing
            .missing
            .iter()
            .map(|h| {
                crate::base::manifest::parse_chunk_hash(h)
                    .map_err(|e| ClientError::Protocol(e.to_string()))
            })
            .collect()
    }

    /// Makes chunks `index..index + count` of an upload server-side copies of the same
    /// ranges of blob `source`, in one request; returns their total length.
    pub async fn copy_chunks(
        &self,
        upload_id: &str,
        (index, count): (u64, u64),
        source: &str,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        let count = count.to_string();
        let headers = [(COPY_FROM_BLOB_HEADER, source), (COPY_COUNT_HEADER, &count)];
        self.put_named_chunk(upload_id, index, &headers, cancel)
            .await
    }

    /// Which chunks of an upload the server holds.
    pub async fn upload_status(
        &self,
        upload_id: &str,
        cancel: &CancellationToken,
    ) -> Result<UploadStatus> {
        let url = self.url(&format!("/uploads/{upload_id}"));
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Assembles an upload into a blob.
    pub async fn complete_upload(
        &self,
        upload_id: &str,
        cancel: &CancellationToken,
    ) -> Result<BlobInfo> {
        let url = self.url(&format!("/uploads/{upload_id}/complete"));
        let response = self
            .send(cancel, || self.patient_request(Method::POST, &url))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Abandons an upload.
    pub async fn abort_upload(&self, upload_id: &str) -> Result<()> {
        let url = self.url(&format!("/uploads/{upload_id}"));
        self.send(&CancellationToken::new(), || {
            self.request(Method::DELETE, &url)
        })
        .await?;
        Ok(())
    }

    /// Uploads everything `reader` yields as one blob, checked against the blob id computed
    /// locally. On failure or cancellation the upload is aborted.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        options: &UploadOptions,
        cancel: &CancellationToken,
    ) -> Result<BlobInfo> {
        let started = self.start_upload(Some(options.chunk_size), cancel).await?;
        let outcome = self.upload_chunks(&started, reader, options, cancel).await;
        match outcome {
            Ok(info) => Ok(info),
            Err(e) => {
                if let Err(abort) = self.abort_upload(&started.upload_id).await {
                    log::debug!("could not abort upload {}: {abort}", started.upload_id);
                }
                Err(e)
            }
        }
    }

    /// Reads, hashes and sends the chunks of `reader`, each chunk's hashing and sending a
    /// task of its own (so reading the next chunk, hashing and sending overlap), at most
    /// `max_concurrent` at once; then completes the upload and checks its id.
    async fn upload_chunks<R: AsyncRead + Unpin>(
        &self,
        started: &UploadStarted,
        reader: &mut R,
        options: &UploadOptions,
        cancel: &CancellationToken,
    ) -> Result<BlobInfo> {
        let chunk_size = started.chunk_size as usize;
        let aligned = started.chunk_size.is_multiple_of(CHUNK_SIZE);
        let mut whole = BlobHasher::new();
        let mut sent = SentChunks::default();
        let mut tasks = JoinSet::new();
        for index in 0.. {
            let data = read_chunk(reader, chunk_size).await?;
            if data.is_empty() {
                break;
            }
            if !aligned {
                // Its store chunks straddle upload chunks: the id needs the bytes in order.
                add_bytes_to_whole(&mut whole, data.clone()).await?;
            }
            let (client, id) = (self.clone(), started.upload_id.clone());
            let (skip_held, token) = (options.skip_held_chunks, cancel.clone());
            tasks.spawn(async move {
                let chunk = hash_upload_chunk(data, aligned).await?;
                let hashes = chunk.chunk_hashes.clone();
                let len = client
                    .send_upload_chunk(&id, index, chunk, skip_held, &token)
                    .await?;
                Ok((index, hashes, len))
            });
            while tasks.len() >= options.max_concurrent.max(1) {
                sent.record(tasks.join_next().await.expect("non-empty"), options)?;
            }
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
        }
        while let Some(done) = tasks.join_next().await {
            sent.record(done, options)?;
        }
        if aligned {
            sent.add_to_whole(&mut whole);
        }
        let info = self.complete_upload(&started.upload_id, cancel).await?;
        verify_stored(&whole.finish(), &info)?;
        Ok(info)
    }

    /// Sends one upload chunk: by reference when the server holds all its store chunks (and
    /// `skip_held` allows asking), else its bytes. Returns its length.
    async fn send_upload_chunk(
        &self,
        upload_id: &str,
        index: u64,
        chunk: HashedChunk,
        skip_held: bool,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        let len = chunk.data.len() as u64;
        if let Some(hashes) = chunk.chunk_hashes.filter(|_| skip_held) {
            if self.missing_chunks(&hashes, cancel).await?.is_empty() {
                match self
                    .reference_chunks(upload_id, index, &hashes, cancel)
                    .await
                {
                    Ok(_) => return Ok(len),
                    // Gone in between (a sweep): send the bytes after all.
                    Err(ClientError::Http { status: 404, .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.put_chunk(upload_id, index, chunk.data, Some(chunk.crc32c), cancel)
            .await?;
        Ok(len)
    }
}

/// What one chunk task answers: its index, its store chunks' hashes (aligned uploads) and
/// its length.
type SentChunk = (u64, Option<Vec<ChunkHash>>, u64);

/// The chunks sent so far, whatever order their tasks finish in.
#[derive(Default)]
struct SentChunks {
    acknowledged: u64,
    hashes: BTreeMap<u64, Vec<(ChunkHash, u64)>>,
}

impl SentChunks {
    /// Records a finished chunk task (and reports progress), or passes on its failure.
    fn record(
        &mut self,
        done: std::result::Result<Result<SentChunk>, tokio::task::JoinError>,
        options: &UploadOptions,
    ) -> Result<()> {
        let (index, hashes, len) =
            done.map_err(|e| ClientError::Io(std::io::Error::other(e)))??;
        if let Some(hashes) = hashes {
            let lens = chunk_lens(len);
            self.hashes
                .insert(index, hashes.into_iter().zip(lens).collect());
        }
        self.acknowledged += len;
        if let Some(p) = &options.progress {
            p(self.acknowledged);
        }
        Ok(())
    }

    /// Adds every store chunk, in order, to the blob id.
    fn add_to_whole(self, whole: &mut BlobHasher) {
        for (hash, len) in self.hashes.into_values().flatten() {
            whole.push_chunk(hash, len);
        }
    }
}

/// The lengths of the store chunks an aligned upload chunk of `len` bytes is made of.
fn chunk_lens(len: u64) -> impl Iterator<Item = u64> {
    (0..len.div_ceil(CHUNK_SIZE)).map(move |i| (len - i * CHUNK_SIZE).min(CHUNK_SIZE))
}

/// The answer of a PUT that sent no bytes: the chunk's length.
#[derive(serde::Deserialize)]
struct ChunkLen {
    len: u64,
}

/// Adds the bytes of an upload chunk to the running blob id, hashed on a blocking thread.
async fn add_bytes_to_whole(whole: &mut BlobHasher, data: Bytes) -> Result<()> {
    let mut hasher = std::mem::take(whole);
    *whole = tokio::task::spawn_blocking(move || {
        hasher.update(&data);
        hasher
    })
    .await
    .map_err(|e| ClientError::Io(std::io::Error::other(e)))?;
    Ok(())
}

/// Reads up to `size` bytes, stopping early only at end of input.
async fn read_chunk<R: AsyncRead + Unpin>(reader: &mut R, size: usize) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}
