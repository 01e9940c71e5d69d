//! Long downloads streamed into a writer: after a dropped connection they resume from the
//! last byte written, and a whole-blob download is checked against the blob id at the end.

use futures::StreamExt;
use md5::{Digest, Md5};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::blobs::total_from_content_range;
use super::{check, CancellationToken, Client, ClientError, DownloadOptions, Result};
use crate::base::checksum::MD5_HEADER;
use crate::base::ids::LegacyBlobHasher;
use crate::base::manifest::BlobHasher;

/// The end-to-end check of a whole download: the Merkle id of a chunked blob, or the
/// Git-style id of a blob from a store written before chunking.
enum WholeHasher {
    Chunked(BlobHasher),
    Legacy(LegacyBlobHasher),
}

impl WholeHasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            WholeHasher::Chunked(h) => h.update(data),
            WholeHasher::Legacy(h) => h.update(data),
        }
    }

    fn finish(self) -> Result<String> {
        match self {
            WholeHasher::Chunked(h) => Ok(h.finish().id()),
            WholeHasher::Legacy(h) => h
                .finish()
                .map(|(id, _)| id)
                .map_err(|e| ClientError::Protocol(e.to_string())),
        }
    }
}

/// Where a download stands between its attempts.
struct Progress<'o> {
    options: &'o DownloadOptions,
    start: u64,
    /// The end of the range; learnt from the first answer of a whole download.
    end: Option<u64>,
    /// The next byte to write.
    pos: u64,
    /// Whether the blob is a legacy one (it has no manifest).
    legacy: bool,
    /// The blob id being computed, for whole downloads only.
    hasher: Option<WholeHasher>,
    /// Attempts that failed in a row, without a byte between them.
    failures: u32,
}

impl<'o> Progress<'o> {
    fn new(options: &'o DownloadOptions, legacy: bool) -> Self {
        let start = options.range.as_ref().map_or(0, |r| r.start);
        Progress {
            options,
            legacy,
            start,
            end: options.range.as_ref().map(|r| r.end),
            pos: start,
            hasher: None,
            failures: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.end.is_some_and(|e| self.pos >= e)
    }

    /// The `Range` header of the next attempt.
    fn range_header(&self) -> Option<String> {
        match self.end {
            Some(e) => Some(format!("bytes={}-{}", self.pos, e - 1)),
            // The first request of a whole download needs no range (an empty blob has none).
            None if self.pos == 0 => None,
            None => Some(format!("bytes={}-", self.pos)),
        }
    }

    /// Learns the end from the first answer, and starts the id check of a whole download.
    fn learn_total(&mut self, total: u64) {
        if self.end.is_none() {
            self.end = Some(total);
            if self.start == 0 && self.options.range.is_none() {
                self.hasher = Some(match self.legacy {
                    true => WholeHasher::Legacy(LegacyBlobHasher::new(total)),
                    false => WholeHasher::Chunked(BlobHasher::new()),
                });
            }
        }
    }

    /// Accounts for `piece`, just written.
    fn advance(&mut self, piece: &[u8]) {
        if let Some(h) = self.hasher.as_mut() {
            h.update(piece);
        }
        self.pos += piece.len() as u64;
        self.failures = 0;
        if let (Some(progress), Some(end)) = (&self.options.progress, self.end) {
            progress(self.pos - self.start, end - self.start);
        }
    }

    /// Checks a whole download against the blob id.
    fn finish(self, hash: &str) -> Result<u64> {
        if let Some(h) = self.hasher {
            let id = h.finish()?;
            if id != hash {
                return Err(ClientError::Checksum {
                    expected: hash.to_string(),
                    actual: id,
                });
            }
        }
        Ok(self.pos - self.start)
    }
}

impl Client {
    /// Streams blob `hash` (or a range of it) into `writer`. After a dropped connection it
    /// resumes from the last byte written; a full download is checked against the blob id.
    /// Returns the number of bytes written.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        hash: &str,
        writer: &mut W,
        options: &DownloadOptions,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        let url = self.url(&format!("/blobs/{hash}"));
        let legacy = options.range.is_none() && self.blob_manifest(hash, cancel).await?.is_none();
        let mut progress = Progress::new(options, legacy);
        while !progress.is_done() {
            match self
                .download_attempt(&url, writer, &mut progress, cancel)
                .await
            {
                Ok(()) => {}
                Err(e)
                    if e.is_retryable() && progress.failures < self.options.retry.max_retries =>
                {
                    let delay = self.options.retry.delay(progress.failures);
                    progress.failures += 1;
                    log::warn!(
                        "download of {hash} interrupted at byte {} ({e}); resuming in {delay:?}",
                        progress.pos
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(ClientError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
        writer.flush().await?;
        progress.finish(hash)
    }

    /// One request of a download: from `progress.pos` to the end, or until the connection
    /// drops. A body whose MD5 header does not match fails for good, since its bytes are
    /// already written.
    async fn download_attempt<W: AsyncWrite + Unpin>(
        &self,
        url: &str,
        writer: &mut W,
        progress: &mut Progress<'_>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut request = self.request(Method::GET, url);
        if let Some(range) = progress.range_header() {
            request = request.header(RANGE, range);
        }
        let response = tokio::select! {
            _ = cancel.cancelled() => return Err(ClientError::Cancelled),
            r = request.send() => r.map_err(ClientError::Transport)?,
        };
        let response = check(response).await?;
        let headers = response.headers();
        let total = headers
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(total_from_content_range)
            .or(response.content_length())
            .ok_or_else(|| ClientError::Protocol("no length in the answer".into()))?;
        progress.learn_total(total);
        let md5_expected = headers
            .get(MD5_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut md5 = md5_expected.as_ref().map(|_| Md5::new());
        let mut body = response.bytes_stream();
        loop {
            let piece = tokio::select! {
                _ = cancel.cancelled() => return Err(ClientError::Cancelled),
                p = body.next() => p,
            };
            let Some(piece) = piece else { break };
            let piece = piece.map_err(ClientError::Transport)?;
            writer.write_all(&piece).await?;
            if let Some(m) = md5.as_mut() {
                m.update(&piece);
            }
            progress.advance(&piece);
        }
        if let (Some(m), Some(expected)) = (md5, md5_expected) {
            let actual = hex::encode(m.finalize());
            if actual != expected {
                return Err(ClientError::Protocol(format!(
                    "checksum mismatch: expected {expected}, got {actual}"
                )));
            }
        }
        Ok(())
    }
}
