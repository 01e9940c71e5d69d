//! The seed streaming API (CONTRACT §3 "Seed streaming API"): sessions over a blob range cut
//! into chunks, their progress and cancellation, streamed uploads, and the WebSocket.
//!
//! A session only names a range; every chunk request reads just that chunk from the store, so
//! memory stays O(chunk size) whatever the blob's size.

mod adopt;
pub mod chunk;
pub mod range;
pub mod session;
pub mod table;
pub mod token;
pub mod upload;
pub mod ws;

pub use adopt::shared_session_key;
pub use table::{Lookup, Sessions, StreamLimits};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::api::stream::{
    StreamProgress, StreamRequest, StreamResponse, CHUNK_LAST_HEADER, CHUNK_SEQUENCE_HEADER,
    CHUNK_SIZE_HEADER,
};
use crate::api::ErrorCode;
use crate::base::checksum::MD5_HEADER;
use adopt::{cancel_marker, cancelled_elsewhere};
use chunk::{choose_encoding, read_chunk, EncodedChunk};
use range::resolve_range;
use session::Session;

/// Opens a session for `request` on `repo`: checks the blob and the range, computes the
/// range's MD5, and takes a slot in the table (429 when full).
pub async fn open_session(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    repo: &str,
    request: &StreamRequest,
) -> ApiResult<(Arc<Session>, StreamResponse)> {
    state.store.ensure_repo(repo).await?;
    let size = state.store.blob_size(repo, &request.hash).await?;
    let range =
        resolve_range(request.start_offset, request.end_offset, size).map_err(|message| {
            ApiError {
                message,
                ..ApiError::range_not_satisfiable(size)
            }
        })?;
    let checksum = state
        .store
        .range_md5(repo, &request.hash, range.clone())
        .await?;
    let session = state
        .streams
        .open(
            client,
            repo,
            &request.hash,
            size,
            range.clone(),
            request.chunk_size,
            request.enable_gzip,
        )
        .ok_or_else(|| {
            ApiError::too_many(
                ErrorCode::TooManySessions,
                "too many stream sessions are open (for this client or in all); retry later",
            )
        })?;
    let response = StreamResponse {
        stream_id: session.id.clone(),
        hash: request.hash.clone(),
        total_size: range.end - range.start,
        chunk_count: session.chunk_count(),
        chunk_size: session.chunk_size,
        start_offset: range.start,
        end_offset: range.end as i64 - 1,
        checksum,
        enable_gzip: request.enable_gzip,
    };
    Ok((session, response))
}

/// The error for a session that cannot serve.
pub fn lookup_error(id: &str, lookup: Lookup) -> ApiError {
    match lookup {
        Lookup::Unknown => ApiError::new(
            ErrorCode::StreamNotFound,
            format!("no stream session {id:?}"),
        ),
        Lookup::Ended(p) => ApiError::new(
            if p.status == "cancelled" {
                ErrorCode::StreamCancelled
            } else {
                ErrorCode::StreamExpired
            },
            format!("stream session {id} is {}", p.status),
        ),
    }
}

/// `POST /api/v1/repos/:repo/stream/blob/start`
pub async fn start(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    client: Option<axum::extract::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: StreamRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid stream request: {e}")))?;
    let client = client.map(|c| c.0 .0.ip());
    let (_, response) = open_session(&state, client, &repo, &request)
        .await
        .inspect_err(|e| {
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                log::warn!(
                    "stream session refused: the table is full ({} open)",
                    state.streams.len()
                );
            }
        })?;
    let mut answer = (StatusCode::CREATED, Json(response)).into_response();
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// Query of the chunk route.
#[derive(serde::Deserialize)]
pub struct ChunkQuery {
    chunk: Option<String>,
}

/// `GET /api/v1/repos/:repo/stream/blob/:stream_id/chunk?chunk=N`
pub async fn chunk(
    State(state): State<Arc<AppState>>,
    Path((repo, id)): Path<(String, String)>,
    Query(query): Query<ChunkQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let index = chunk_index(query)?;
    let session = state
        .streams
        .get(&repo, &id)
        .map_err(|l| lookup_error(&id, l))?;
    if cancelled_elsewhere(&state, &repo, &session).await {
        return Err(lookup_error(&id, Lookup::Ended(session.progress())));
    }
    if index >= session.chunk_count() {
        return Err(ApiError::new(
            ErrorCode::ChunkOutOfRange,
            format!(
                "chunk {index} does not exist: the session has {} chunks",
                session.chunk_count()
            ),
        ));
    }
    let accept_encoding = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let encoding = choose_encoding(accept_encoding, session.gzip);
    let encoded = read_chunk(&state, &session, index, encoding).await?;
    let wants_raw = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("application/octet-stream"))
        });
    if !wants_raw {
        return Ok(Json(encoded.to_json(&session.id, true)).into_response());
    }
    Ok(raw_chunk(index, encoded))
}

/// The `?chunk=N` of a chunk request.
fn chunk_index(query: ChunkQuery) -> ApiResult<u64> {
    let raw_index = query
        .chunk
        .ok_or_else(|| ApiError::bad_request("missing ?chunk=N"))?;
    raw_index
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid chunk number {raw_index:?}")))
}

/// A chunk as raw bytes, described by headers (`Accept: application/octet-stream`).
fn raw_chunk(index: u64, encoded: EncodedChunk) -> Response {
    let mut response = encoded.body.clone().into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        MD5_HEADER,
        HeaderValue::from_str(&encoded.md5).expect("hex"),
    );
    h.insert(CHUNK_SEQUENCE_HEADER, HeaderValue::from(index));
    h.insert(CHUNK_SIZE_HEADER, HeaderValue::from(encoded.size));
    h.insert(
        CHUNK_LAST_HEADER,
        HeaderValue::from_static(if encoded.is_last { "true" } else { "false" }),
    );
    if let Some(e) = encoded.encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e.name()));
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("accept, accept-encoding"),
    );
    response
}

/// `GET /api/v1/repos/:repo/stream/blob/:stream_id/progress` (an ended session answers its
/// last progress, with status `cancelled` or `expired`).
pub async fn progress(
    State(state): State<Arc<AppState>>,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<Json<StreamProgress>> {
    if let Ok(session) = state.streams.peek(&repo, &id) {
        // A cancel through another instance ends the session here too before it is reported.
        cancelled_elsewhere(&state, &repo, &session).await;
    }
    match state.streams.peek(&repo, &id) {
        Ok(session) => Ok(Json(session.progress())),
        Err(Lookup::Ended(p)) => Ok(Json(p)),
        Err(l) => Err(lookup_error(&id, l)),
    }
}

/// `DELETE /api/v1/repos/:repo/stream/blob/:stream_id`
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<Json<StreamProgress>> {
    let progress = state
        .streams
        .cancel(&repo, &id)
        .map_err(|l| lookup_error(&id, l))?;
    if state.streams.is_shared() {
        // Other instances serving this session see the marker within a second.
        state
            .store
            .backend()
            .put(&cancel_marker(&id), Bytes::new())
            .await?;
    }
    Ok(Json(progress))
}

/// Expires idle sessions every few seconds until `stop`.
pub async fn sweep_sessions(state: Arc<AppState>, stop: tokio_util::sync::CancellationToken) {
    let period = (state.streams.limits().timeout / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let n = state.streams.expire_idle();
                if n > 0 {
                    log::debug!("{n} stream session(s) expired");
                }
            }
        }
    }
}
