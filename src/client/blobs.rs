//! Blob downloads: bounded ranges into memory (MD5-checked), and long downloads streamed
//! into a writer that resume from the last byte written after a failure and check the whole
//! blob id when the whole blob was fetched.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{check, CancellationToken, Client, ClientError, Result};
use crate::base::checksum::{self, MD5_HEADER};
use crate::base::ids::BlobHasher;

/// Options of [`Client::download`].
#[derive(Clone, Default)]
pub struct DownloadOptions {
    /// Only this byte range (end exclusive); the whole blob when `None`.
    pub range: Option<Range<u64>>,
    /// Called with (bytes done, bytes total) as data arrives.
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

/// Checks a response body against the cheapest checksum header the server sent.
fn verify_body(headers: &reqwest::header::HeaderMap, data: &[u8]) -> Result<()> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    checksum::verify_cheapest(header, data).map_err(|e| ClientError::Checksum {
        expected: e.expected,
        actual: e.actual,
    })
}

/// Total length from `Content-Range: bytes a-b/LEN`.
fn total_from_content_range(value: &str) -> Option<u64> {
    value.rsplit('/').next()?.trim().parse().ok()
}

impl Client {
    /// Reads `range` of blob `hash` into memory, checking the server's MD5. A range past the
    /// end is clamped to it; a range starting at or past the end is an error (416).
    pub async fn read_range(
        &self,
        hash: &str,
        range: Range<u64>,
        cancel: &CancellationToken,
    ) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let url = self.url(&format!("/blobs/{hash}"));
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        self.options
            .retry
            .run(cancel, || async {
                let response = self
                    .request(Method::GET, &url)
                    .header(RANGE, &header)
                    .send()
                    .await
                    .map_err(ClientError::Transport)?;
                let response = check(response).await?;
                let partial = response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
                let headers = response.headers().clone();
                // One buffer of the announced size: the body is never held twice.
                let mut response = response;
                let mut body = bytes::BytesMut::with_capacity(
                    response.content_length().unwrap_or(0).min(64 << 20) as usize,
                );
                while let Some(piece) = response.chunk().await.map_err(ClientError::Transport)? {
                    body.extend_from_slice(&piece);
                }
                let data = body.freeze();
                verify_body(&headers, &data)?;
                if partial {
                    Ok(data)
                } else {
                    // A server that ignored Range sent everything: cut out the range.
                    let end = (range.end as usize).min(data.len());
                    Ok(data.slice((range.start as usize).min(end)..end))
                }
            })
            .await
    }

    /// Size of blob `hash`.
    pub async fn blob_size(&self, hash: &str, cancel: &CancellationToken) -> Result<u64> {
        let url = self.url(&format!("/blobs/{hash}"));
        let response = self
            .send(cancel, || self.request(Method::HEAD, &url))
            .await?;
        response
            .content_length()
            .or_else(|| {
                response
                    .headers()
                    .get("content-length")?
                    .to_str()
                    .ok()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| ClientError::Protocol("no Content-Length on HEAD".into()))
    }

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
        let start = options.range.as_ref().map_or(0, |r| r.start);
        let mut end = options.range.as_ref().map(|r| r.end);
        let mut pos = start;
        let mut hasher: Option<BlobHasher> = None;
        let mut failures = 0u32;
        loop {
            if end.is_some_and(|e| pos >= e) {
                break;
            }
            let range = match end {
                Some(e) => Some(format!("bytes={pos}-{}", e - 1)),
                // The first request of a whole download needs no range (an empty blob has none).
                None if pos == 0 => None,
                None => Some(format!("bytes={pos}-")),
            };
            let outcome: Result<()> = async {
                let mut request = self.request(Method::GET, &url);
                if let Some(range) = &range {
                    request = request.header(RANGE, range);
                }
                let response = tokio::select! {
                    _ = cancel.cancelled() => return Err(ClientError::Cancelled),
                    r = request.send() => r.map_err(ClientError::Transport)?,
                };
                let response = check(response).await?;
                let total = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(total_from_content_range)
                    .or(response.content_length())
                    .ok_or_else(|| ClientError::Protocol("no length in the answer".into()))?;
                if end.is_none() {
                    end = Some(total);
                    if start == 0 && options.range.is_none() {
                        hasher = Some(BlobHasher::new(total));
                    }
                }
                let goal = end.expect("set above");
                let md5_expected = response
                    .headers()
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
                    if let Some(h) = hasher.as_mut() {
                        h.update(&piece);
                    }
                    if let Some(m) = md5.as_mut() {
                        m.update(&piece);
                    }
                    pos += piece.len() as u64;
                    failures = 0;
                    if let Some(progress) = &options.progress {
                        progress(pos - start, goal - start);
                    }
                }
                if let (Some(m), Some(expected)) = (md5, md5_expected) {
                    let actual = hex::encode(m.finalize());
                    if actual != expected {
                        // Bytes already written are wrong: this cannot be resumed.
                        return Err(ClientError::Protocol(format!(
                            "checksum mismatch: expected {expected}, got {actual}"
                        )));
                    }
                }
                Ok(())
            }
            .await;
            match outcome {
                Ok(()) => {}
                Err(e) if e.is_retryable() && failures < self.options.retry.max_retries => {
                    let delay = self.options.retry.delay(failures);
                    failures += 1;
                    log::warn!(
                        "download of {hash} interrupted at byte {pos} ({e}); resuming in {delay:?}"
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(ClientError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
            if end.is_some_and(|e| pos >= e) {
                break;
            }
        }
        writer.flush().await?;
        if let Some(h) = hasher {
            let (id, _) = h
                .finish()
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if id != hash {
                return Err(ClientError::Checksum {
                    expected: hash.to_string(),
                    actual: id,
                });
            }
        }
        Ok(pos - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::checksum::{CRC32C_HEADER, SHA256_HEADER};
    use reqwest::header::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_cheapest_checksum_sent_is_verified() {
        let data = b"some block bytes";
        let crc = crate::base::checksum::crc32c_hex(data);
        let sha = hex::encode(sha2::Sha256::digest(data));
        let md5 = hex::encode(Md5::digest(data));
        let wrong = |s: &str| s.chars().rev().collect::<String>();
        // All three right; each alone right.
        verify_body(
            &headers(&[
                (CRC32C_HEADER, crc.clone()),
                (SHA256_HEADER, sha.clone()),
                (MD5_HEADER, md5.clone()),
            ]),
            data,
        )
        .unwrap();
        verify_body(&headers(&[(SHA256_HEADER, sha.clone())]), data).unwrap();
        verify_body(&headers(&[(MD5_HEADER, md5.clone())]), data).unwrap();
        // A wrong CRC32C fails even beside a right SHA-256; a wrong one of those fails alone.
        let err = verify_body(
            &headers(&[(CRC32C_HEADER, wrong(&crc)), (SHA256_HEADER, sha.clone())]),
            data,
        );
        assert!(matches!(err, Err(ClientError::Checksum { .. })));
        assert!(verify_body(&headers(&[(SHA256_HEADER, wrong(&sha))]), data).is_err());
        assert!(verify_body(&headers(&[(MD5_HEADER, wrong(&md5))]), data).is_err());
        // One flipped bit of the body is caught by the CRC.
        let mut flipped = data.to_vec();
        flipped[3] ^= 0x10;
        assert!(verify_body(&headers(&[(CRC32C_HEADER, crc)]), &flipped).is_err());
    }
}
