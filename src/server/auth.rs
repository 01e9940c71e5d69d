//! Bearer-token authentication and authorization. With tokens configured, every request but
//! `GET /healthz` needs `Authorization: Bearer TOKEN` (401 otherwise). A token may be limited
//! to one repository and to reading (403 for anything else). Tokens are compared in constant
//! time and never logged.
//!
//! A token file (`govcfs serve --auth-token-file FILE`) has one grant per line,
//! `TOKEN REPO MODE`, where REPO is a repository name or `*` and MODE is `ro` or `rw`; blank
//! lines and `#` comments are ignored. `--auth-token TOKEN` grants `* rw`.

use crate::api::ErrorCode;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// What one token may do.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub token: String,
    /// The only repository it may touch (`None`: every one).
    pub repo: Option<String>,
    /// Whether it may change anything.
    pub writable: bool,
}

impl std::fmt::Debug for TokenGrant {
    // The token itself never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("token", &"***")
            .field("repo", &self.repo)
            .field("writable", &self.writable)
            .finish()
    }
}

impl TokenGrant {
    /// A token that may do everything.
    pub fn full(token: &str) -> Self {
        TokenGrant {
            token: token.to_string(),
            repo: None,
            writable: true,
        }
    }
}

/// Parses a token file.
pub fn parse_token_file(text: &str) -> Result<Vec<TokenGrant>, String> {
    let mut grants = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [token, repo, mode] = fields[..] else {
            return Err(format!("line {}: expected `TOKEN REPO MODE`", n + 1));
        };
        let writable = match mode {
            "rw" => true,
            "ro" => false,
            other => {
                return Err(format!(
                    "line {}: mode {other:?} is neither ro nor rw",
                    n + 1
                ))
            }
        };
        let repo = (repo != "*").then(|| repo.to_string());
        grants.push(TokenGrant {
            token: token.to_string(),
            repo,
            writable,
        });
    }
    Ok(grants)
}

/// What a request touches: a repository (or none: global routes) and whether it writes.
fn scope_of<'a>(method: &Method, path: &'a str) -> (Option<&'a str>, bool) {
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if let Some(rest) = path.strip_prefix("/api/v1/repos") {
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() {
            return (None, !reads); // list (read) or create (a write that is not in any repo yet)
        }
        let (repo, tail) = rest.split_once('/').unwrap_or((rest, ""));
        // Opening, reading and cancelling stream sessions change nothing stored.
        let session_op = tail == "stream/blob/start"
            || (tail.starts_with("stream/blob/")
                && *method == Method::DELETE
                && tail != "stream/blob/upload");
        return (Some(repo), !reads && !session_op);
    }
    if path == "/metrics" || path == "/healthz" {
        return (None, false);
    }
    let repo = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|r| !r.is_empty());
    (repo, !reads)
}

/// Refuses requests without a valid token (401) or beyond its grant (403).
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let grants = &state.config.tokens;
    if grants.is_empty() || request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Check every grant so the time taken does not tell which one nearly matched.
    let grant = offered.and_then(|offered| {
        grants.iter().fold(None, |found, g| {
            if constant_time_eq(g.token.as_bytes(), offered.as_bytes()) {
                Some(g)
            } else {
                found
            }
        })
    });
    let Some(grant) = grant else {
        let mut response =
            ApiError::new(ErrorCode::Unauthorized, "missing or invalid bearer token")
                .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
        return response;
    };
    let (repo, writes) = scope_of(request.method(), request.uri().path());
    // Compare the name the router will see (percent-decoded).
    let repo = repo.map(|r| {
        percent_encoding::percent_decode_str(r)
            .decode_utf8_lossy()
            .into_owned()
    });
    let repo_allowed = match (&grant.repo, repo) {
        (None, _) => true,
        (Some(allowed), Some(repo)) => *allowed == repo,
        // A repository-bound token may list repositories and read metrics, nothing global else.
        (Some(_), None) => !writes,
    };
    if !repo_allowed {
        return ApiError::new(
            ErrorCode::Forbidden,
            "this token may not access that repository",
        )
        .into_response();
    }
    if writes && !grant.writable {
        return ApiError::new(ErrorCode::Forbidden, "this token is read-only").into_response();
    }
    next.run(request).await
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
    use super::*;

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn token_files_parse_and_bad_lines_are_refused() {
        let grants =
            parse_token_file("# comment\n\nalpha * rw\nbeta photos ro  # reader\n").unwrap();
        assert_eq!(
            grants,
            vec![
                TokenGrant::full("alpha"),
                TokenGrant {
                    token: "beta".into(),
                    repo: Some("photos".into()),
                    writable: false
                }
            ]
        );
        assert!(parse_token_file("alpha *").is_err());
        assert!(parse_token_file("alpha * admin").is_err());
        assert!(
            !format!("{:?}", grants[0]).contains("alpha"),
            "a token in a debug print"
        );
    }

    #[test]
    fn requests_are_scoped_by_repository_and_kind() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(scope_of(&get, "/api/v1/repos"), (None, false));
        assert_eq!(scope_of(&post, "/api/v1/repos"), (None, true));
        assert_eq!(
            scope_of(&get, "/api/v1/repos/photos/tree/a"),
            (Some("photos"), false)
        );
        assert_eq!(
            scope_of(&post, "/api/v1/repos/photos/commits"),
            (Some("photos"), true)
        );
        assert_eq!(
            scope_of(&Method::PUT, "/api/v1/repos/photos/uploads/u/0"),
            (Some("photos"), true)
        );
        assert_eq!(
            scope_of(&post, "/api/v1/repos/photos/stream/blob/start"),
            (Some("photos"), false)
        );
        assert_eq!(
            scope_of(&Method::DELETE, "/api/v1/repos/photos/stream/blob/s1"),
            (Some("photos"), false)
        );
        assert_eq!(
            scope_of(&post, "/api/v1/repos/photos/stream/blob/upload"),
            (Some("photos"), true)
        );
        assert_eq!(
            scope_of(&Method::DELETE, "/api/v1/repos/photos/uploads/u"),
            (Some("photos"), true)
        );
        assert_eq!(scope_of(&get, "/photos/a/b.txt"), (Some("photos"), false));
        assert_eq!(scope_of(&get, "/metrics"), (None, false));
    }
}
