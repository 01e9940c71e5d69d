//! Streamed uploads: one request whose body is whatever a reader yields, hashed on the way
//! so that the id the server answers can be checked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use reqwest::Method;
use tokio::io::AsyncRead;

use super::{CancellationToken, Client, ClientError, ProgressFn, Result};
use crate::api::stream::StreamUploaded;
use crate::base::manifest::BlobHasher;

/// What the body stream saw go by: the bytes read, and the blob id they make.
#[derive(Clone)]
struct Tally {
    hasher: Arc<Mutex<Option<BlobHasher>>>,
    read: Arc<AtomicU64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hasher: Arc::new(Mutex::new(Some(BlobHasher::new()))),
            read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts and hashes `piece`; returns the bytes read so far.
    fn add(&self, piece: &[u8]) -> u64 {
        if let Some(h) = self.hasher.lock().expect("hasher lock").as_mut() {
            h.update(piece);
        }
        self.read.fetch_add(piece.len() as u64, Ordering::Relaxed) + piece.len() as u64
    }

    /// Checks the server's answer against what was sent: the size and the id.
    fn check(&self, stored: &StreamUploaded) -> Result<()> {
        let sent = self.read.load(Ordering::Relaxed);
        if stored.size != sent {
            return Err(ClientError::Protocol(format!(
                "the server stored {} bytes, {sent} were sent",
                stored.size
            )));
        }
        let Some(hasher) = self.hasher.lock().expect("hasher lock").take() else {
            return Ok(());
        };
        let local = hasher.finish().id();
        if stored.hash != local {
            return Err(ClientError::Checksum {
                expected: local,
                actual: stored.hash.clone(),
            });
        }
        Ok(())
    }
}

/// The reader as a stream of 1 MiB pieces that are tallied and reported as they go.
fn tallied_stream<R: AsyncRead + Send + Unpin + 'static>(
    reader: R,
    tally: Tally,
    len: Option<u64>,
    progress: Option<ProgressFn>,
) -> impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).map(move |piece| {
        if let Ok(piece) = &piece {
            let done = tally.add(piece);
            if let Some(p) = &progress {
                p(done, len.unwrap_or(0));
            }
        }
        piece
    })
}

impl Client {
    /// Uploads everything `reader` yields as one blob through the streamed-upload route,
    /// optionally zstd-compressed on the way; `progress` gets the bytes read so far (of
    /// `len`, when known). The id and size the server answers are checked against the local
    /// ones.
    pub async fn upload_stream<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        reader: R,
        len: Option<u64>,
        zstd: bool,
        progress: Option<ProgressFn>,
        cancel: &CancellationToken,
    ) -> Result<StreamUploaded> {
        let tally = Tally::new();
        let counted = tallied_stream(reader, tally.clone(), len, progress);
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
            r = request.body(body).send() => {
                crate::client::check(r.map_err(ClientError::Transport)?).await?
            }
        };
        let stored: StreamUploaded = response.json().await.map_err(ClientError::Transport)?;
        tally.check(&stored)?;
        Ok(stored)
    }
}
