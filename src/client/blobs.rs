//! Blob reads into memory: bounded ranges, each checked against the cheapest checksum header
//! the server sent (CRC32C, then SHA-256, then MD5), blob sizes and manifests. Long downloads into a
//! writer are in [`super::download`].

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::RANGE;
use reqwest::Method;

use super::{check, CancellationToken, Client, ClientError, Result};
use crate::base::checksum;
use crate::base::manifest::Manifest;

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
pub(super) fn total_from_content_range(value: &str) -> Option<u64> {
    value.rsplit('/').next()?.trim().parse().ok()
}

impl Client {
    /// Reads `range` of blob `hash` into memory, checking the server's checksum. A range past the
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
}

impl Client {
    /// The manifest of chunked blob `hash`, checked against the id; `None` for a blob of a
    /// store written before chunking (the server has no manifest for it).
    pub async fn blob_manifest(
        &self,
        hash: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Manifest>> {
        let url = self.url(&format!("/blobs/{hash}/manifest"));
        let response = match self.send(cancel, || self.request(Method::GET, &url)).await {
            Ok(r) => r,
            Err(ClientError::Http { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let text = response.bytes().await.map_err(ClientError::Transport)?;
        let manifest = Manifest::decode(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if manifest.id() != hash {
            return Err(ClientError::Checksum {
                expected: hash.to_string(),
                actual: manifest.id(),
            });
        }
        Ok(Some(manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::checksum::{CRC32C_HEADER, MD5_HEADER, SHA256_HEADER};
    use md5::{Digest, Md5};
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
