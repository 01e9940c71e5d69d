//! Resumable chunked uploads from any `AsyncRead`, with bounded memory: at most
//! `max_concurrent` chunks are in flight, and a slow server slows the reader.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use md5::{Digest, Md5};
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{CancellationToken, Client, ClientError, Result};
use crate::api::{BlobInfo, StartUpload, UploadStarted, UploadStatus, COPY_FROM_BLOB_HEADER};
use crate::base::checksum::{md5_hex, MD5_HEADER};
use crate::base::ids::BlobHasher;

/// Options of [`Client::upload`].
#[derive(Clone)]
pub struct UploadOptions {
    /// Requested chunk size (the server may clamp it).
    pub chunk_size: u64,
    /// Chunk PUTs in flight at once.
    pub max_concurrent: usize,
    /// Called with the bytes acknowledged by the server so far.
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// The length of the input, when known: the result is then checked against the blob id
    /// computed locally (SHA-256, fast), otherwise against the MD5 of what was read.
    pub expected_len: Option<u64>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            chunk_size: 4 << 20,
            max_concurrent: 4,
            progress: None,
            expected_len: None,
        }
    }
}

/// The local end-to-end check of an upload.
enum WholeCheck {
    Id(BlobHasher),
    Md5(Md5),
}

impl WholeCheck {
    fn update(&mut self, data: &[u8]) {
        match self {
            WholeCheck::Id(h) => h.update(data),
            WholeCheck::Md5(m) => m.update(data),
        }
    }

    fn verify(self, info: &BlobInfo, total: u64) -> Result<()> {
        let (expected, actual) = match self {
            WholeCheck::Id(h) => match h.finish() {
                Ok((id, _)) => (id, info.hash.clone()),
                Err(e) => {
                    return Err(ClientError::Protocol(format!(
                        "the input changed while it was read: {e}"
                    )))
                }
            },
            WholeCheck::Md5(m) => (hex::encode(m.finalize()), info.md5.clone()),
        };
        if expected != actual || info.size != total {
            return Err(ClientError::Checksum {
                expected: format!("{expected} ({total} bytes)"),
                actual: format!("{actual} ({} bytes)", info.size),
            });
        }
        Ok(())
    }
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

    /// Sends chunk `index` of an upload with its MD5 (computed when not given; retried on its own).
    pub async fn put_chunk(
        &self,
        upload_id: &str,
        index: u64,
        data: Bytes,
        md5: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let url = self.url(&format!("/uploads/{upload_id}/{index}"));
        let md5 = md5.unwrap_or_else(|| md5_hex(&data));
        self.send(cancel, || {
            self.request(Method::PUT, &url)
                .header(MD5_HEADER, &md5)
                .body(data.clone())
        })
        .await?;
        Ok(())
    }

    /// Makes chunk `index` of an upload a server-side copy of the same range of blob `source`;
    /// returns the chunk's length.
    pub async fn copy_chunk(
        &self,
        upload_id: &str,
        index: u64,
        source: &str,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        #[derive(serde::Deserialize)]
        struct Copied {
            len: u64,
        }
        let url = self.url(&format!("/uploads/{upload_id}/{index}"));
        let response = self
            .send(cancel, || {
                self.request(Method::PUT, &url)
                    .header(COPY_FROM_BLOB_HEADER, source)
            })
            .await?;
        let copied: Copied = response.json().await.map_err(ClientError::Transport)?;
        Ok(copied.len)
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

    /// Stores a small in-memory blob in one request (the streamed-upload route) and checks the
    /// id the server computed against the local one.
    pub async fn upload_small(&self, data: Bytes, cancel: &CancellationToken) -> Result<BlobInfo> {
        #[derive(serde::Deserialize)]
        struct Stored {
            hash: String,
            size: u64,
        }
        let url = self.url("/stream/blob/upload");
        let response = self
            .send(cancel, || {
                self.request(Method::POST, &url)
                    .header("content-type", "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        let stored: Stored = response.json().await.map_err(ClientError::Transport)?;
        let local = crate::base::ids::blob_id(&data);
        if stored.hash != local || stored.size != data.len() as u64 {
            return Err(ClientError::Checksum {
                expected: local,
                actual: stored.hash,
            });
        }
        Ok(BlobInfo {
            hash: stored.hash,
            size: stored.size,
            md5: md5_hex(&data),
        })
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

    /// Uploads everything `reader` yields as one blob. The MD5 of what was read is checked
    /// against the server's. On failure or cancellation the upload is aborted.
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

    async fn upload_chunks<R: AsyncRead + Unpin>(
        &self,
        started: &UploadStarted,
        reader: &mut R,
        options: &UploadOptions,
        cancel: &CancellationToken,
    ) -> Result<BlobInfo> {
        let chunk_size = started.chunk_size as usize;
        let mut whole = Some(match options.expected_len {
            Some(len) => WholeCheck::Id(BlobHasher::new(len)),
            None => WholeCheck::Md5(Md5::new()),
        });
        let mut total = 0u64;
        let mut acknowledged = 0u64;
        let mut in_flight = FuturesUnordered::new();
        let mut index = 0u64;
        loop {
            let chunk = read_chunk(reader, chunk_size).await?;
            if chunk.is_empty() {
                break;
            }
            // The chunk's MD5 and the running whole-input check, on two threads.
            let (check, chunk, md5) = {
                let check = whole.take();
                tokio::task::spawn_blocking(move || {
                    std::thread::scope(|scope| {
                        let running = scope.spawn(|| {
                            let mut check = check;
                            if let Some(c) = check.as_mut() {
                                c.update(&chunk);
                            }
                            check
                        });
                        let md5 = md5_hex(&chunk);
                        (running.join().expect("hashing thread"), chunk.clone(), md5)
                    })
                })
                .await
                .map_err(|e| ClientError::Io(std::io::Error::other(e)))?
            };
            whole = check;
            total += chunk.len() as u64;
            let len = chunk.len() as u64;
            let id = started.upload_id.clone();
            in_flight.push(async move {
                self.put_chunk(&id, index, chunk, Some(md5), cancel)
                    .await
                    .map(|_| len)
            });
            index += 1;
            while in_flight.len() >= options.max_concurrent.max(1) {
                acknowledged += in_flight.next().await.expect("non-empty")?;
                if let Some(p) = &options.progress {
                    p(acknowledged);
                }
            }
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
        }
        while let Some(done) = in_flight.next().await {
            acknowledged += done?;
            if let Some(p) = &options.progress {
                p(acknowledged);
            }
        }
        let info = self.complete_upload(&started.upload_id, cancel).await?;
        whole.expect("kept").verify(&info, total)?;
        Ok(info)
    }
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
