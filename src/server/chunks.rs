//! Chunk-level routes of the chunked store: which chunks a repository lacks (so a client
//! sends only those), and the manifest a blob id is the hash of (so a client can check a
//! download, or name the chunks of a file it is about to send again).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::api::{ChunkList, ErrorCode, MissingChunks, MAX_CHUNKS_ASKED};
use crate::base::manifest::parse_chunk_hash;

/// `POST /api/v1/repos/:repo/chunks/missing` `{"chunks":[sha256…]}` → `{"missing":[…]}`
pub async fn missing(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    Json(asked): Json<ChunkList>,
) -> ApiResult<Json<MissingChunks>> {
    if asked.chunks.len() > MAX_CHUNKS_ASKED {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_CHUNKS_ASKED} chunks may be asked about at once"
        )));
    }
    let hashes = asked
        .chunks
        .iter()
        .map(|h| parse_chunk_hash(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let missing = state.store.missing_chunks(&repo, &hashes).await?;
    Ok(Json(MissingChunks {
        missing: missing.iter().map(hex::encode).collect(),
    }))
}

/// `GET /api/v1/repos/:repo/blobs/:hash/manifest`: the canonical manifest text (its SHA-256
/// is the blob id); 404 `not_chunked` for a blob of a store written before chunking.
pub async fn manifest(
    State(state): State<Arc<AppState>>,
    Path((repo, hash)): Path<(String, String)>,
) -> ApiResult<Response> {
    state.store.ensure_repo(&repo).await?;
    let Some(manifest) = state.store.blob_manifest(&repo, &hash).await? else {
        return Err(ApiError::new(
            ErrorCode::NotChunked,
            format!("blob {hash} is from a store written before chunking: it has no manifest"),
        ));
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        manifest.encode(),
    )
        .into_response())
}
