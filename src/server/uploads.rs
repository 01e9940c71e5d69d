//! Resumable chunked upload routes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::AppState;
use axum::response::IntoResponse;

use crate::api::ErrorCode;
use crate::api::{
    BlobInfo, StartUpload, UploadStarted, UploadStatus, CHUNK_REFS_HEADER, COPY_COUNT_HEADER,
    COPY_FROM_BLOB_HEADER,
};
use crate::base::checksum::{CRC32C_HEADER, MD5_HEADER};
use crate::base::manifest::{parse_chunk_hash, ChunkHash};
use crate::store::ChunkChecks;

/// `POST /api/v1/repos/:repo/uploads` (the body is optional)
pub async fn start(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<UploadStarted>)> {
    let request: StartUpload = if body.iter().all(u8::is_ascii_whitespace) {
        StartUpload::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?
    };
    Ok((
        StatusCode::CREATED,
        Json(state.store.start_upload(&repo, request.chunk_size).await?),
    ))
}

/// `PUT /api/v1/repos/:repo/uploads/:id/:index`: the chunk's bytes; or, with an empty body,
/// the same range of an existing blob (`X-Copy-From-Blob`) or chunks the repository holds
/// (`X-Chunk-SHA256`).
pub async fn put_chunk(
    State(state): State<Arc<AppState>>,
    Path((repo, id, index)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::response::Response> {
    let index: u64 = index
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid chunk index {index:?}")))?;
    if let Some(refs) = headers.get(CHUNK_REFS_HEADER) {
        let hashes = parse_chunk_refs(refs)?;
        expect_empty_body(body).await?;
        let len = state
            .store
            .reference_upload_chunk(&repo, &id, index, &hashes, state.config.max_upload_size)
            .await?;
        return Ok((StatusCode::OK, Json(serde_json::json!({ "len": len }))).into_response());
    }
    if let Some(source) = headers.get(COPY_FROM_BLOB_HEADER) {
        let source = source
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid X-Copy-From-Blob header"))?;
        let count = match headers.get(COPY_COUNT_HEADER) {
            None => 1,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| ApiError::bad_request("invalid X-Copy-Count header"))?,
        };
        expect_empty_body(body).await?;
        let limit = state.config.max_upload_size;
        let len = state
            .store
            .copy_upload_chunks(&repo, &id, (index, count), source, limit)
            .await?;
        return Ok((StatusCode::OK, Json(serde_json::json!({ "len": len }))).into_response());
    }
    let chunk_size = state.store.upload_chunk_size(&repo, &id).await?;
    let data = to_bytes(body, chunk_size as usize).await.map_err(|e| {
        // The only way to_bytes fails on a well-formed body is the length limit.
        ApiError::new(
            ErrorCode::TooLarge,
            format!("chunk larger than {chunk_size} bytes or body error: {e}"),
        )
    })?;
    let checks = ChunkChecks {
        md5: headers.get(MD5_HEADER).and_then(|v| v.to_str().ok()),
        crc32c: headers.get(CRC32C_HEADER).and_then(|v| v.to_str().ok()),
    };
    let len = data.len() as u64;
    state
        .store
        .put_upload_chunk(
            &repo,
            &id,
            index,
            data,
            checks,
            state.config.max_upload_size,
        )
        .await?;
    state
        .metrics
        .blob_bytes_received
        .fetch_add(len, Ordering::Relaxed);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Refuses a body on a PUT that names its bytes instead of sending them.
async fn expect_empty_body(body: Body) -> ApiResult<()> {
    if !to_bytes(body, 0).await.is_ok_and(|b| b.is_empty()) {
        return Err(ApiError::bad_request(
            "a chunk copied or referenced takes an empty body",
        ));
    }
    Ok(())
}

/// The hashes of an `X-Chunk-SHA256` header (comma-separated hex SHA-256).
fn parse_chunk_refs(value: &axum::http::HeaderValue) -> ApiResult<Vec<ChunkHash>> {
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid X-Chunk-SHA256 header"))?;
    text.split(',')
        .map(|h| parse_chunk_hash(h.trim()).map_err(|e| ApiError::bad_request(e.to_string())))
        .collect()
}

/// `GET /api/v1/repos/:repo/uploads/:id`
pub async fn status(
    State(state): State<Arc<AppState>>,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<Json<UploadStatus>> {
    Ok(Json(state.store.upload_status(&repo, &id).await?))
}

/// How long the outcome of an assembly is kept for a client that retries `complete` after
/// losing the answer.
const COMPLETION_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

type Completion = Arc<tokio::sync::OnceCell<Result<BlobInfo, ApiError>>>;

/// Assemblies by `repo/upload id`.
pub type Completions = std::sync::Mutex<std::collections::HashMap<String, Completion>>;

/// `POST /api/v1/repos/:repo/uploads/:id/complete`
///
/// Assembling a large upload takes a while. It runs in its own task, so a client that gives
/// up waiting does not cancel it, and a retried `complete` joins the same assembly (or gets
/// its outcome) instead of starting another.
pub async fn complete(
    State(state): State<Arc<AppState>>,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<BlobInfo>)> {
    let key = format!("{repo}/{id}");
    let (cell, first) = {
        let mut map = state.completions.lock().expect("completions lock");
        match map.get(&key) {
            Some(cell) => (cell.clone(), false),
            None => {
                let cell = Completion::default();
                map.insert(key.clone(), cell.clone());
                (cell, true)
            }
        }
    };
    let task_state = state.clone();
    let task_key = key.clone();
    let task = tokio::spawn(async move {
        let outcome = cell
            .get_or_init(|| async {
                task_state
                    .store
                    .complete_upload(&repo, &id, task_state.config.max_upload_size)
                    .await
                    .map_err(ApiError::from)
            })
            .await
            .clone();
        if outcome.is_err() {
            // A failed assembly (a missing chunk, say) is not remembered: the client may fix
            // the upload and complete again.
            let mut map = task_state.completions.lock().expect("completions lock");
            if map.get(&task_key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&task_key);
            }
        }
        outcome
    });
    if first {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(COMPLETION_MEMORY).await;
            state
                .completions
                .lock()
                .expect("completions lock")
                .remove(&key);
        });
    }
    let info = task
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `DELETE /api/v1/repos/:repo/uploads/:id`
pub async fn abort(
    State(state): State<Arc<AppState>>,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.store.abort_upload(&repo, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
