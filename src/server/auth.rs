//! Bearer-token authentication: with `--auth-token`, every request but `GET /healthz` needs
//! `Authorization: Bearer TOKEN`. Tokens are compared in constant time and never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Refuses requests without a valid token (401).
pub async fn require_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let tokens = &state.config.auth_tokens;
    if tokens.is_empty() || request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let valid = offered.is_some_and(|offered| {
        // Check every token so the time taken does not tell which one nearly matched.
        tokens.iter().fold(false, |found, t| constant_time_eq(t.as_bytes(), offered.as_bytes()) | found)
    });
    if valid {
        next.run(request).await
    } else {
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid bearer token").into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid header"));
        response
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_works() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
