//! One error type for every handler: a precise 4xx for bad input, an opaque 500 (logged)
//! for internal faults. The body is always `{"error": "...", "code": "..."}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{ErrorBody, ErrorCode};
use crate::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub path: Option<String>,
    /// Blob length for `Content-Range: bytes */LEN` on 416.
    pub range_len: Option<u64>,
    /// Seconds for `Retry-After` on 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code (which gives its status) and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.status()).expect("error codes have valid statuses");
        Self::with_status(status, code, message)
    }

    /// An error whose status is not the one its code implies (a framework's rejection kept
    /// with its own status).
    pub fn with_status(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            path: None,
            range_len: None,
            retry_after: None,
        }
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 429 with `Retry-After: 1`.
    pub fn too_many(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(code, message)
        }
    }

    /// 416 with the `Content-Range: bytes */LEN` header.
    pub fn range_not_satisfiable(len: u64) -> Self {
        ApiError {
            range_len: Some(len),
            ..Self::new(
                ErrorCode::RangeNotSatisfiable,
                format!("range not satisfiable for {len} bytes"),
            )
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) => ApiError::new(ErrorCode::NotFound, message),
            StoreError::InvalidInput(_) => ApiError::bad_request(message),
            StoreError::AlreadyExists(_) => ApiError::new(ErrorCode::AlreadyExists, message),
            StoreError::Conflict { path, .. } => ApiError {
                path: Some(path),
                ..ApiError::new(ErrorCode::Conflict, message)
            },
            StoreError::RangeNotSatisfiable { size } => ApiError::range_not_satisfiable(size),
            StoreError::ChecksumMismatch { .. } => {
                ApiError::new(ErrorCode::ChecksumMismatch, message)
            }
            StoreError::TooLarge { .. } => ApiError::new(ErrorCode::TooLarge, message),
            StoreError::Corrupt { .. } | StoreError::Backend(_) | StoreError::Io(_) => {
                log::error!("internal error: {message}");
                ApiError::new(ErrorCode::Internal, "internal server error")
            }
        }
    }
}

impl From<crate::base::paths::InvalidName> for ApiError {
    fn from(e: crate::base::paths::InvalidName) -> Self {
        ApiError::bad_request(e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code,
            path: self.path,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(len) = self.range_len {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        response
    }
}

/// Turns the plain-text errors of axum's extractors (a bad path escape, a bad query, a body
/// over its limit, a GET of the WebSocket without an upgrade) into the JSON error every
/// route answers with.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let code = ErrorCode::of_status(status.as_u16());
    let mut answer = ApiError::with_status(
        status,
        code,
        if message.is_empty() {
            status.to_string()
        } else {
            message
        },
    )
    .into_response();
    for (name, value) in parts
        .headers
        .iter()
        .filter(|(n, _)| *n != header::CONTENT_TYPE && *n != header::CONTENT_LENGTH)
    {
        answer.headers_mut().insert(name, value.clone());
    }
    answer
}

/// The error for a JSON body axum could not take (413 when it is over the size limit).
pub fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ErrorCode::TooLarge, e.body_text())
    } else {
        ApiError::bad_request(e.body_text())
    }
}

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
