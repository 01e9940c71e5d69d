//! The machine-readable `code` of every error answer (`{"error": "...", "code": "..."}`), and
//! the HTTP status each stands for. The server builds its errors from these and the clients
//! decode them back, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

/// The `code` field of an error answer (CONTRACT §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed or names something invalid.
    BadRequest,
    /// 401: no valid token.
    Unauthorized,
    /// 403: the token does not grant this.
    Forbidden,
    /// 404: no such repository, ref, path, blob or upload.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 409: a repository or ref that already exists.
    AlreadyExists,
    /// 409: an `expect` of a commit did not hold.
    Conflict,
    /// 413: a body or upload over its limit.
    TooLarge,
    /// 415: a body type the route does not take.
    Unsupported,
    /// 415: a `Content-Encoding` other than zstd or gzip.
    UnsupportedEncoding,
    /// 416: a range that starts at or past the end.
    RangeNotSatisfiable,
    /// 422: bytes that do not match their announced checksum.
    ChecksumMismatch,
    /// 426: a WebSocket route reached without an upgrade.
    UpgradeRequired,
    /// 429: too many requests in progress for one client.
    TooManyRequests,
    /// 429: too many stream sessions for one client.
    TooManySessions,
    /// 404: no such stream session.
    StreamNotFound,
    /// 404: a chunk index past the session's last chunk.
    ChunkOutOfRange,
    /// 404: a blob from a store written before chunking has no manifest.
    NotChunked,
    /// 410: the session was cancelled.
    StreamCancelled,
    /// 410: the session expired.
    StreamExpired,
    /// 500: an internal fault (logged on the server; the message says no more).
    Internal,
    /// What a client makes of an answer that had no JSON error body, or a code it does not
    /// know (from a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::UnsupportedEncoding => "unsupported_encoding",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::StreamNotFound => "stream_not_found",
            ErrorCode::ChunkOutOfRange => "chunk_out_of_range",
            ErrorCode::NotChunked => "not_chunked",
            ErrorCode::StreamCancelled => "stream_cancelled",
            ErrorCode::StreamExpired => "stream_expired",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "error",
        }
    }

    /// The HTTP status this code is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::Unknown => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound
            | ErrorCode::StreamNotFound
            | ErrorCode::ChunkOutOfRange
            | ErrorCode::NotChunked => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
            ErrorCode::StreamCancelled | ErrorCode::StreamExpired => 410,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unsupported | ErrorCode::UnsupportedEncoding => 415,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::ChecksumMismatch => 422,
            ErrorCode::UpgradeRequired => 426,
            ErrorCode::TooManyRequests | ErrorCode::TooManySessions => 429,
            ErrorCode::Internal => 500,
        }
    }

    /// The code a plain status stands for, for answers that carry no code of their own (a
    /// framework's rejection, or a proxy's error page).
    pub fn of_status(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            413 => ErrorCode::TooLarge,
            415 => ErrorCode::Unsupported,
            416 => ErrorCode::RangeNotSatisfiable,
            426 => ErrorCode::UpgradeRequired,
            429 => ErrorCode::TooManyRequests,
            500..=599 => ErrorCode::Internal,
            _ => ErrorCode::Unknown,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 21] = [
        ErrorCode::NotChunked,
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::Unsupported,
        ErrorCode::UnsupportedEncoding,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::ChecksumMismatch,
        ErrorCode::UpgradeRequired,
        ErrorCode::TooManyRequests,
        ErrorCode::TooManySessions,
        ErrorCode::StreamNotFound,
        ErrorCode::ChunkOutOfRange,
        ErrorCode::StreamCancelled,
        ErrorCode::StreamExpired,
        ErrorCode::Internal,
    ];

    #[test]
    fn every_code_round_trips_through_json_under_its_wire_name() {
        for code in ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let unknown: ErrorCode = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(unknown, ErrorCode::Unknown);
    }

    #[test]
    fn statuses_map_back_to_a_code_of_that_status() {
        for code in ALL {
            let back = ErrorCode::of_status(code.status());
            assert!(
                back == ErrorCode::Unknown || back.status() == code.status(),
                "{code}"
            );
        }
        assert_eq!(ErrorCode::of_status(422), ErrorCode::Unknown);
    }
}
