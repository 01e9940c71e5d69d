//! The seed streaming API from the client side: sessions and whole downloads with a progress
//! callback here; the [`StreamReader`] in [`reader`], streamed uploads in [`upload`].

use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CancellationToken, Client, ClientError, Result};
use crate::api::stream::{StreamProgress, StreamRequest, StreamResponse, CHUNK_SIZE_HEADER};
use crate::base::checksum::MD5_HEADER;
use crate::base::codec::decompress;

mod reader;
mod upload;

use reader::unwrap_io;
pub use reader::StreamReader;

/// How to stream a blob (the seed's `DownloadOptions`).
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Chunk size asked for (the server clamps it; 0: its default of 64 KiB).
    pub chunk_size: u64,
    /// First byte of the range.
    pub start_offset: u64,
    /// Last byte of the range, inclusive (`None`: the end of the blob).
    pub end_offset: Option<u64>,
    /// Ask for gzip-compressed chunks.
    pub enable_gzip: bool,
    /// Ask for zstd-compressed chunks (preferred over gzip by the server).
    pub zstd: bool,
    /// Chunks fetched ahead at once.
    pub max_concurrent_chunks: usize,
    /// Also check the whole range against the MD5 the session announced (one more pass over
    /// the bytes; every chunk is checked against its own MD5 anyway).
    pub verify_range: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            chunk_size: 1 << 20,
            start_offset: 0,
            end_offset: None,
            enable_gzip: false,
            zstd: false,
            max_concurrent_chunks: 4,
            verify_range: false,
        }
    }
}

impl StreamOptions {
    /// The StreamRequest for `hash`.
    pub fn request(&self, hash: &str) -> StreamRequest {
        StreamRequest {
            hash: hash.to_string(),
            chunk_size: self.chunk_size,
            start_offset: self.start_offset as i64,
            end_offset: self.end_offset.map_or(-1, |e| e as i64),
            enable_gzip: self.enable_gzip,
            binary: false,
        }
    }
}

/// Called with (bytes done, bytes in total).
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Checks a chunk's bytes against its announced length and MD5.
pub fn verify_chunk(data: &[u8], size: u64, md5: &str) -> Result<()> {
    if data.len() as u64 != size {
        return Err(ClientError::Protocol(format!(
            "chunk of {} bytes, {size} announced",
            data.len()
        )));
    }
    let actual = hex::encode(Md5::digest(data));
    if !actual.eq_ignore_ascii_case(md5) {
        return Err(ClientError::Checksum {
            expected: md5.to_string(),
            actual,
        });
    }
    Ok(())
}

impl Client {
    /// Opens a stream session.
    pub async fn start_stream(
        &self,
        request: &StreamRequest,
        cancel: &CancellationToken,
    ) -> Result<StreamResponse> {
        let url = self.url("/stream/blob/start");
        let response = self
            .send(cancel, || self.request(Method::POST, &url).json(request))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Chunk `index` of a session, raw, decompressed and verified (retried as a whole on
    /// transport errors and checksum mismatches).
    pub async fn stream_chunk(
        &self,
        stream_id: &str,
        index: u64,
        zstd: bool,
        cancel: &CancellationToken,
    ) -> Result<Bytes> {
        let url = self.url(&format!("/stream/blob/{stream_id}/chunk?chunk={index}"));
        self.options
            .retry
            .run(cancel, || async {
                let mut request = self
                    .request(Method::GET, &url)
                    .header(reqwest::header::ACCEPT, "application/octet-stream");
                request = request.header(
                    reqwest::header::ACCEPT_ENCODING,
                    if zstd { "zstd" } else { "identity" },
                );
                let response =
                    super::check(request.send().await.map_err(ClientError::Transport)?).await?;
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let md5 = header(MD5_HEADER)
                    .ok_or_else(|| ClientError::Protocol("chunk without X-Checksum-MD5".into()))?;
                let size: u64 = header(CHUNK_SIZE_HEADER)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ClientError::Protocol("chunk without X-Chunk-Size".into()))?;
                let encoding = header(reqwest::header::CONTENT_ENCODING.as_str());
                let body = response.bytes().await.map_err(ClientError::Transport)?;
                let data = match encoding.as_deref() {
                    None | Some("identity") => body,
                    Some(e) => {
                        let e = e.to_string();
                        let limit = size as usize;
                        tokio::task::spawn_blocking(move || decompress(&body, &e, limit))
                            .await
                            .map_err(|e| ClientError::Protocol(e.to_string()))?
                            .map(Bytes::from)
                            .map_err(|e| {
                                ClientError::Protocol(format!(
                                    "cannot decompress chunk {index}: {e}"
                                ))
                            })?
                    }
                };
                verify_chunk(&data, size, &md5)?;
                Ok(data)
            })
            .await
    }

    /// A session's progress.
    pub async fn stream_progress(
        &self,
        stream_id: &str,
        cancel: &CancellationToken,
    ) -> Result<StreamProgress> {
        let url = self.url(&format!("/stream/blob/{stream_id}/progress"));
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Cancels a session on the server.
    pub async fn cancel_stream(&self, stream_id: &str) -> Result<StreamProgress> {
        let url = self.url(&format!("/stream/blob/{stream_id}"));
        let response = self
            .send(&CancellationToken::new(), || {
                self.request(Method::DELETE, &url)
            })
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Streams a blob range into `writer` through a session, calling `progress` as it goes.
    /// Every chunk is checked against its MD5; with `verify_range`, the whole range is too.
    pub async fn download_stream<W: AsyncWrite + Unpin>(
        &self,
        hash: &str,
        writer: &mut W,
        options: &StreamOptions,
        progress: Option<ProgressFn>,
        cancel: &CancellationToken,
    ) -> Result<StreamResponse> {
        let mut reader = self.stream_reader(hash, options, cancel).await?;
        let session = reader.session().clone();
        let mut md5 = Md5::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut done = 0u64;
        loop {
            let n = reader.read(&mut buf).await.map_err(unwrap_io)?;
            if n == 0 {
                break;
            }
            if options.verify_range {
                md5.update(&buf[..n]);
            }
            writer.write_all(&buf[..n]).await?;
            done += n as u64;
            if let Some(p) = &progress {
                p(done, session.total_size);
            }
        }
        writer.flush().await?;
        if done != session.total_size {
            return Err(ClientError::Protocol(format!(
                "the stream ended after {done} of {} bytes",
                session.total_size
            )));
        }
        if options.verify_range {
            let actual = hex::encode(md5.finalize());
            if actual != session.checksum {
                return Err(ClientError::Checksum {
                    expected: session.checksum,
                    actual,
                });
            }
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_verified() {
        let data = b"hello";
        let md5 = hex::encode(Md5::digest(data));
        assert!(verify_chunk(data, 5, &md5).is_ok());
        assert!(matches!(
            verify_chunk(data, 6, &md5),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            verify_chunk(b"hellp", 5, &md5),
            Err(ClientError::Checksum { .. })
        ));
    }
}
