//! `PUT /<repo>/<path>`: writes one file and commits it, in one request (the static view's
//! URL, as WebDAV and S3 clients expect: `curl -T FILE URL`). A small body is stored with the
//! commit (see [`crate::store::FilePut`]); a larger one is streamed as a blob first.
//!
//! Conditions are HTTP's: `If-Match: "<blob id>"` (the version the writer last saw: the path's
//! ETag) or `If-None-Match: *` (the path must not exist); when they fail the answer is 409
//! `conflict`, as for a commit. `X-File-Mode` (octal Git mode), `X-Mtime` (Unix seconds),
//! `X-Commit-Message` and `X-Blob-Id` (the id the client computed; 422 if the body differs)
//! are optional.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::repos::RefQuery;
use super::stream::upload::store_upload_body;
use super::AppState;
use crate::api::{
    BlobInfo, FileCommitted, BLOB_ID_HEADER, COMMIT_MESSAGE_HEADER, FILE_MODE_HEADER, MTIME_HEADER,
};
use crate::store::{FilePut, INLINE_FILE_MAX};

/// `PUT /:repo/*path`
pub async fn put_file(
    State(state): State<Arc<AppState>>,
    Path((repo, path)): Path<(String, String)>,
    Query(query): Query<RefQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<FileCommitted>)> {
    let put = FilePut {
        branch: query.reference.filter(|r| !r.is_empty()),
        path,
        mode: parse_mode(&headers)?,
        mtime: parse_number(&headers, MTIME_HEADER)?,
        expect: parse_condition(&headers)?,
        message: text_header(&headers, COMMIT_MESSAGE_HEADER).unwrap_or_default(),
        blob_id: text_header(&headers, BLOB_ID_HEADER),
    };
    let (blob, created) = match small_body_len(&headers) {
        Some(len) => {
            let data = to_bytes(body, len as usize)
                .await
                .map_err(|e| ApiError::bad_request(format!("file body: {e}")))?;
            // The streamed path counts its bytes as they arrive.
            state
                .metrics
                .blob_bytes_received
                .fetch_add(len, Ordering::Relaxed);
            let task = state.clone();
            super::detached(async move { task.store.put_small_file(&repo, &put, data).await })
                .await?
        }
        None => {
            let uploaded = store_upload_body(&state, &repo, &headers, body).await?;
            let blob = BlobInfo {
                hash: uploaded.hash,
                size: uploaded.size,
                chunks: uploaded.size.div_ceil(crate::base::manifest::CHUNK_SIZE),
            };
            let (task, task_blob) = (state.clone(), blob.clone());
            let created = super::detached(async move {
                task.store.put_stored_file(&repo, &put, &task_blob).await
            })
            .await?;
            (blob, created)
        }
    };
    state.metrics.commits.fetch_add(1, Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        Json(FileCommitted {
            commit: created.commit,
            branch: created.branch,
            hash: blob.hash,
            size: blob.size,
            chunks: blob.chunks,
        }),
    ))
}

/// The length of a plain body small enough to be stored with its commit.
fn small_body_len(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::CONTENT_ENCODING)
        || text_header(headers, header::CONTENT_TYPE.as_str())
            .is_some_and(|t| t.starts_with("multipart/"))
    {
        return None;
    }
    parse_number::<u64>(headers, header::CONTENT_LENGTH.as_str())
        .ok()
        .flatten()
        .filter(|len| *len <= INLINE_FILE_MAX)
}

fn text_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
}

fn parse_number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> ApiResult<Option<T>> {
    match text_header(headers, name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid {name}: {text:?}"))),
    }
}

fn parse_mode(headers: &HeaderMap) -> ApiResult<Option<u32>> {
    match text_header(headers, FILE_MODE_HEADER) {
        None => Ok(None),
        Some(text) => u32::from_str_radix(&text, 8)
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid {FILE_MODE_HEADER}: {text:?}"))),
    }
}

/// `If-Match: "<id>"` or `If-None-Match: *` as a change's `expect`.
fn parse_condition(headers: &HeaderMap) -> ApiResult<Option<Option<String>>> {
    if let Some(none) = text_header(headers, header::IF_NONE_MATCH.as_str()) {
        if none != "*" {
            return Err(ApiError::bad_request(
                "If-None-Match on a file PUT must be *",
            ));
        }
        return Ok(Some(None));
    }
    match text_header(headers, header::IF_MATCH.as_str()) {
        None => Ok(None),
        Some(tag) => {
            let id = tag.trim_start_matches("W/").trim_matches('"').to_string();
            crate::base::paths::validate_object_id(&id).map_err(|_| {
                ApiError::bad_request(format!("If-Match must be a blob id: {tag:?}"))
            })?;
            Ok(Some(Some(id)))
        }
    }
}
