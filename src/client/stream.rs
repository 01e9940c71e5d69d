//! The seed streaming API from the client side: sessions, a [`StreamReader`] (`AsyncRead` +
//! `AsyncSeek`) that prefetches chunks concurrently and verifies each one, whole downloads with
//! a progress callback, and streamed uploads.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use md5::{Digest, Md5};
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinHandle;

use super::{CancellationToken, Client, ClientError, Result};
use crate::api::stream::{
    StreamProgress, StreamRequest, StreamResponse, StreamUploaded, CHUNK_SIZE_HEADER,
};
use crate::base::checksum::MD5_HEADER;
use crate::base::codec::decompress;

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

    /// Opens a session and returns a reader over its range.
    pub async fn stream_reader(
        &self,
        hash: &str,
        options: &StreamOptions,
        cancel: &CancellationToken,
    ) -> Result<StreamReader> {
        let session = self.start_stream(&options.request(hash), cancel).await?;
        Ok(StreamReader::new(
            self.clone(),
            session,
            options,
            cancel.clone(),
        ))
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

    /// Uploads everything `reader` yields as one blob through the streamed-upload route,
    /// optionally zstd-compressed on the way; `progress` gets the bytes read so far. With
    /// `len` (the reader's length) the id the server answers is checked against the local one;
    /// without it, only the size is.
    pub async fn upload_stream<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        reader: R,
        len: Option<u64>,
        zstd: bool,
        progress: Option<ProgressFn>,
        cancel: &CancellationToken,
    ) -> Result<StreamUploaded> {
        use futures::StreamExt;
        let hasher = Arc::new(std::sync::Mutex::new(
            len.map(crate::base::ids::BlobHasher::new),
        ));
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = {
            let (hasher, read) = (hasher.clone(), read.clone());
            tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).map(move |piece| {
                if let Ok(piece) = &piece {
                    let done = read
                        .fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed)
                        + piece.len() as u64;
                    if let Some(h) = hasher.lock().expect("hasher lock").as_mut() {
                        h.update(piece);
                    }
                    if let Some(p) = &progress {
                        p(done, len.unwrap_or(0));
                    }
                }
                piece
            })
        };
        let body = if zstd {
            let encoder = async_compression::tokio::bufread::ZstdEncoder::new(
                tokio_util::io::StreamReader::new(counted),
            );
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(encoder))
        } else {
            reqwest::Body::wrap_stream(counted)
        };
        let url = self.url("/stream/blob/upload");
        let mut request = self
            .patient_request(Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        match (zstd, len) {
            (true, _) => request = request.header(reqwest::header::CONTENT_ENCODING, "zstd"),
            // A known length lets the server hash while it receives.
            (false, Some(len)) => request = request.header(reqwest::header::CONTENT_LENGTH, len),
            (false, None) => {}
        }
        // A body stream cannot be replayed: no retries here.
        let response = tokio::select! {
            _ = cancel.cancelled() => return Err(ClientError::Cancelled),
            r = request.body(body).send() => super::check(r.map_err(ClientError::Transport)?).await?,
        };
        let stored: StreamUploaded = response.json().await.map_err(ClientError::Transport)?;
        let sent = read.load(std::sync::atomic::Ordering::Relaxed);
        if stored.size != sent {
            return Err(ClientError::Protocol(format!(
                "the server stored {} bytes, {sent} were sent",
                stored.size
            )));
        }
        if let Some(hasher) = hasher.lock().expect("hasher lock").take() {
            let (local, _) = hasher
                .finish()
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if stored.hash != local {
                return Err(ClientError::Checksum {
                    expected: local,
                    actual: stored.hash,
                });
            }
        }
        Ok(stored)
    }
}

/// Turns an I/O error from a [`StreamReader`] back into the client error it carries.
fn unwrap_io(e: std::io::Error) -> ClientError {
    if e.get_ref().is_some_and(|inner| inner.is::<ClientError>()) {
        let inner = e
            .into_inner()
            .expect("checked")
            .downcast::<ClientError>()
            .expect("checked");
        *inner
    } else {
        ClientError::Io(e)
    }
}

/// Reads a session's range as a byte stream, fetching up to `max_concurrent_chunks` chunks
/// ahead, each decompressed and checked against its MD5. Seeking within the range is cheap:
/// chunks ahead of the new position are kept, the others dropped.
pub struct StreamReader {
    client: Client,
    session: StreamResponse,
    zstd: bool,
    ahead: usize,
    cancel: CancellationToken,
    /// Position within the range.
    pos: u64,
    /// The chunk the position is in, once fetched.
    current: Option<(u64, Bytes)>,
    /// Chunks being fetched, in index order.
    fetching: VecDeque<(u64, JoinHandle<Result<Bytes>>)>,
    /// A seek waiting for `poll_complete`.
    seek_to: Option<u64>,
}

impl StreamReader {
    /// A reader over `session`.
    pub fn new(
        client: Client,
        session: StreamResponse,
        options: &StreamOptions,
        cancel: CancellationToken,
    ) -> Self {
        StreamReader {
            client,
            session,
            zstd: options.zstd,
            ahead: options.max_concurrent_chunks.max(1),
            cancel,
            pos: 0,
            current: None,
            fetching: VecDeque::new(),
            seek_to: None,
        }
    }

    /// The session read.
    pub fn session(&self) -> &StreamResponse {
        &self.session
    }

    /// Ends the session on the server (it would otherwise expire by itself).
    pub async fn close(mut self) -> Result<()> {
        self.stop_fetching();
        self.client
            .cancel_stream(&self.session.stream_id)
            .await
            .map(|_| ())
    }

    fn stop_fetching(&mut self) {
        for (_, handle) in self.fetching.drain(..) {
            handle.abort();
        }
    }

    /// Keeps chunks `index..index + ahead` (within the range) being fetched.
    fn fill_pipeline(&mut self, index: u64) {
        while self.fetching.front().is_some_and(|(i, _)| *i < index) {
            let (_, handle) = self.fetching.pop_front().expect("checked");
            handle.abort();
        }
        if self.fetching.front().is_some_and(|(i, _)| *i != index) {
            self.stop_fetching();
        }
        let mut next = self.fetching.back().map_or(index, |(i, _)| i + 1);
        while self.fetching.len() < self.ahead && next < self.session.chunk_count {
            let (client, id, zstd, cancel) = (
                self.client.clone(),
                self.session.stream_id.clone(),
                self.zstd,
                self.cancel.clone(),
            );
            let handle =
                tokio::spawn(async move { client.stream_chunk(&id, next, zstd, &cancel).await });
            self.fetching.push_back((next, handle));
            next += 1;
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.stop_fetching();
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let cs = this.session.chunk_size;
        loop {
            if this.pos >= this.session.total_size || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let index = this.pos / cs;
            if let Some((i, data)) = &this.current {
                if *i == index {
                    let at = (this.pos - index * cs) as usize;
                    let n = buf.remaining().min(data.len() - at);
                    buf.put_slice(&data[at..at + n]);
                    this.pos += n as u64;
                    if at + n == data.len() {
                        // Keep the pipeline full while the caller works on these bytes.
                        this.fill_pipeline(index + 1);
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            this.fill_pipeline(index);
            let (_, handle) = this
                .fetching
                .front_mut()
                .expect("the pipeline holds the chunk at the position");
            let fetched = match Pin::new(handle).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(joined) => joined,
            };
            this.fetching.pop_front();
            match fetched {
                Ok(Ok(data)) => this.current = Some((index, data)),
                Ok(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                Err(e) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

impl tokio::io::AsyncSeek for StreamReader {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let this = self.get_mut();
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => this.session.total_size.checked_add_signed(d),
            SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the range",
            )
        })?;
        this.seek_to = Some(target);
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let this = self.get_mut();
        if let Some(target) = this.seek_to.take() {
            this.pos = target;
        }
        Poll::Ready(Ok(this.pos))
    }
}

use std::future::Future;

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
