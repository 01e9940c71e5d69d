//! `POST /api/v1/repos/:repo/stream/blob/upload` with a raw body: one request stores one
//! blob, streamed to the store with hashing on the way (never held whole in memory). Small
//! files take this path, as it costs one round trip instead of three.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use bytes::BytesMut;
use futures::StreamExt;
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use super::AppState;

/// Bytes gathered before they are handed to the blob writer (each hand-off hashes on two
/// threads, so it should not happen per network frame).
const PIECE: usize = 4 << 20;

/// The answer of a streamed upload.
#[derive(Debug, Serialize)]
pub struct StreamUploaded {
    pub hash: String,
    pub size: u64,
    /// Pieces the body was stored in.
    pub chunks: u64,
    /// Whether the body arrived compressed.
    pub compressed: bool,
}

/// Stores the request body as a blob.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<StreamUploaded>)> {
    state.store.ensure_repo(&repo).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("multipart/") {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported", "multipart uploads are not supported yet; send the raw bytes"));
    }
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported", "compressed upload bodies are not supported yet"));
    }
    let len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let limit = state.config.max_upload_size;
    let mut writer = state.store.begin_blob(&repo, len, limit).await?;
    let mut stream = body.into_data_stream();
    let mut piece = BytesMut::with_capacity(len.map_or(PIECE, |l| (l as usize).min(PIECE)));
    let mut chunks = 0u64;
    let outcome: ApiResult<()> = async {
        loop {
            let frame = stream.next().await;
            let done = frame.is_none();
            if let Some(frame) = frame {
                let frame = frame.map_err(|e| ApiError::bad_request(format!("upload body: {e}")))?;
                piece.extend_from_slice(&frame);
            }
            if piece.len() >= PIECE || (done && !piece.is_empty()) {
                let data = piece.split().freeze();
                state.metrics.blob_bytes_received.fetch_add(data.len() as u64, Ordering::Relaxed);
                writer.write(data).await?;
                chunks += 1;
            }
            if done {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        // Nothing of a refused or broken upload is kept.
        writer.abort().await?;
        return Err(e);
    }
    let info = writer.finish().await?;
    Ok((StatusCode::CREATED, Json(StreamUploaded { hash: info.hash, size: info.size, chunks, compressed: false })))
}
