//! Serving blob bytes: whole or by range, with ETag, conditional requests and checksums.
//! Used by `GET /api/v1/repos/:repo/blobs/:hash` and by the browsable view.

use std::ops::Range;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::StreamExt;

use super::error::{ApiError, ApiResult};
use super::ranges::{plan, Plan};
use super::AppState;
use crate::base::checksum::md5_hex;
use crate::base::checksum::{CRC32C_HEADER, MD5_HEADER, SHA256_HEADER};
use crate::store::index::single_block;

/// Responses up to this size are read whole so their MD5 can go in a header; longer ones
/// stream (the client then checks the blob id of a full download instead).
const CHECKSUMMED_RESPONSE_LIMIT: u64 = 16 << 20;

/// Responses up to this size are hashed on the request's own task: that takes microseconds,
/// less than handing the bytes to a blocking thread and back.
const INLINE_HASH_LIMIT: usize = 64 << 10;

/// `GET|HEAD /api/v1/repos/:repo/blobs/:hash`
pub async fn get_blob(
    State(state): State<Arc<AppState>>,
    Path((repo, hash)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    state.store.ensure_repo(&repo).await?;
    serve_blob(&state, &repo, &hash, &method, &headers, None).await
}

/// Answers a request for blob `hash`, honouring `Range`, `If-Range` and `If-None-Match`.
pub async fn serve_blob(
    state: &Arc<AppState>,
    repo: &str,
    hash: &str,
    method: &Method,
    headers: &HeaderMap,
    last_modified: Option<i64>,
) -> ApiResult<Response> {
    let len = state.store.blob_size(repo, hash).await?;
    let etag = format!("\"{hash}\"");
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(mtime) = last_modified {
        builder = builder.header(header::LAST_MODIFIED, crate::base::time::http_date(mtime));
    }
    let (status, range) = match plan(headers, len, &etag) {
        Plan::NotModified => {
            return Ok(builder
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .expect("valid response"))
        }
        Plan::Unsatisfiable => return Err(ApiError::range_not_satisfiable(len)),
        Plan::Full => (StatusCode::OK, 0..len),
        Plan::Partial(r) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
    };
    let body_len = range.end - range.start;
    builder = builder
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, body_len);
    if method == Method::HEAD {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    let body = if body_len <= CHECKSUMMED_RESPONSE_LIMIT {
        let (body, checksums) = checksummed_body(state, repo, hash, range, len).await?;
        for (name, value) in checksums {
            builder = builder.header(name, value);
        }
        body
    } else {
        streamed_body(state, repo, hash, range).await?
    };
    Ok(builder.body(body).expect("valid response"))
}

/// `range` of a blob of `len` bytes read whole, with its checksum headers: for a range that
/// is one 1 MiB block, what the index has (CRC32C; MD5 and SHA-256 too for a legacy blob),
/// otherwise the MD5 of the bytes; and the SHA-256 of a range that is one whole chunk.
async fn checksummed_body(
    state: &AppState,
    repo: &str,
    hash: &str,
    range: Range<u64>,
    len: u64,
) -> ApiResult<(Body, Vec<(&'static str, HeaderValue)>)> {
    let block = single_block(&range, len);
    let data = state
        .store
        .read_blob_range(repo, hash, range.clone())
        .await?;
    let sums = match block {
        Some(b) => state.store.block_sums(repo, hash, b).await,
        None => None,
    };
    let (md5, mut sha256, crc32c) = match sums {
        Some(sums) => (sums.md5, sums.sha256, sums.crc32c),
        None => (Some(md5_of(&data).await?), None, None),
    };
    if sha256.is_none() {
        sha256 = state.store.whole_chunk_sha256(repo, hash, range).await;
    }
    let mut checksums = Vec::new();
    if let Some(v) = md5.and_then(|m| HeaderValue::from_str(&m).ok()) {
        checksums.push((MD5_HEADER, v));
    }
    if let Some(v) = sha256.and_then(|s| HeaderValue::from_str(&s).ok()) {
        checksums.push((SHA256_HEADER, v));
    }
    if let Some(v) = crc32c.and_then(|c| HeaderValue::from_str(&format!("{c:08x}")).ok()) {
        checksums.push((CRC32C_HEADER, v));
    }
    state.metrics.add_sent(data.len() as u64);
    Ok((Body::from(data), checksums))
}

/// The MD5 of `data`, on a blocking thread unless it is small.
async fn md5_of(data: &Bytes) -> ApiResult<String> {
    if data.len() <= INLINE_HASH_LIMIT {
        return Ok(md5_hex(data));
    }
    let bytes = data.clone();
    Ok(tokio::task::spawn_blocking(move || md5_hex(&bytes))
        .await
        .map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e)))?)
}

/// `range` of a blob streamed in pieces (counted as sent as they go).
async fn streamed_body(
    state: &AppState,
    repo: &str,
    hash: &str,
    range: Range<u64>,
) -> ApiResult<Body> {
    let metrics = state.metrics.clone();
    let stream = state
        .store
        .stream_blob(repo, hash, range)
        .await?
        .map(move |piece| {
            piece
                .inspect(|b| metrics.add_sent(b.len() as u64))
                .map_err(|e| {
                    log::warn!("blob stream failed: {e}");
                    std::io::Error::other(e.to_string())
                })
        });
    Ok(Body::from_stream(stream))
}
