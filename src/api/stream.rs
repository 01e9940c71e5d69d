//! Wire types of the seed streaming API (CONTRACT §3 "Seed streaming API"): the JSON field
//! names are the GoVC design's own snake_case tags.

use serde::{Deserialize, Serialize};

/// Smallest, default and largest chunk of a stream session.
pub const MIN_STREAM_CHUNK: u64 = 1 << 10;
pub const DEFAULT_STREAM_CHUNK: u64 = 64 << 10;
pub const MAX_STREAM_CHUNK: u64 = 10 << 20;

/// Raw chunk responses carry their sequence number and whether they are the last.
pub const CHUNK_SEQUENCE_HEADER: &str = "x-chunk-sequence";
pub const CHUNK_LAST_HEADER: &str = "x-chunk-last";
/// Length of a raw chunk before compression.
pub const CHUNK_SIZE_HEADER: &str = "x-chunk-size";

/// Opens a stream session (`POST …/stream/blob/start`, or a WebSocket request).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamRequest {
    pub hash: String,
    /// Clamped to [1 KiB, 10 MiB]; absent or 0 means 64 KiB.
    #[serde(default)]
    pub chunk_size: u64,
    /// First byte of the range.
    #[serde(default)]
    pub start_offset: i64,
    /// Last byte of the range (inclusive); -1 means the end of the blob.
    #[serde(default = "end_of_blob")]
    pub end_offset: i64,
    /// Compress chunks with gzip where it shrinks them.
    #[serde(default)]
    pub enable_gzip: bool,
    /// WebSocket only: send each chunk's bytes as a binary frame right after its JSON header
    /// (whose `data` is then empty) instead of base64 inside it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
}

fn end_of_blob() -> i64 {
    -1
}

impl StreamRequest {
    /// A request for the whole blob in chunks of `chunk_size` (0: the default).
    pub fn whole(hash: &str, chunk_size: u64) -> Self {
        StreamRequest {
            hash: hash.to_string(),
            chunk_size,
            start_offset: 0,
            end_offset: -1,
            enable_gzip: false,
            binary: false,
        }
    }
}

/// An open session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamResponse {
    pub stream_id: String,
    pub hash: String,
    /// Bytes in the session's range.
    pub total_size: u64,
    pub chunk_count: u64,
    /// The chunk size after clamping.
    pub chunk_size: u64,
    /// The range, resolved: `end_offset` is inclusive (`start_offset - 1` for an empty range).
    pub start_offset: u64,
    pub end_offset: i64,
    /// Hex MD5 of the range.
    pub checksum: String,
    pub enable_gzip: bool,
}

/// One chunk of a session's range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamChunk {
    pub stream_id: String,
    pub sequence_num: u64,
    /// Offset of the chunk's first byte in the blob.
    pub offset: u64,
    /// Base64 of the chunk's bytes (compressed when `is_compressed`).
    pub data: String,
    /// Length of the chunk's bytes before compression.
    pub size: u64,
    /// Hex MD5 of the chunk's bytes before compression.
    pub checksum: String,
    pub is_last: bool,
    pub is_compressed: bool,
    /// `gzip` or `zstd` when compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

/// Progress of a session, as served so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamProgress {
    pub stream_id: String,
    /// Distinct bytes of the range served (a chunk fetched twice counts once).
    pub bytes_streamed: u64,
    pub total_bytes: u64,
    pub chunks_streamed: u64,
    pub total_chunks: u64,
    /// Seconds left at the current rate (0 when done or not started).
    pub estimated_eta_seconds: f64,
    /// Megabytes (10^6 bytes) per second since the session opened.
    pub transfer_rate_mbps: f64,
    /// `streaming`, `completed`, `cancelled` or `expired`.
    pub status: String,
}

/// `POST …/stream/blob/upload` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamUploaded {
    pub hash: String,
    pub size: u64,
    /// Pieces the body was stored in.
    pub chunks: u64,
    /// Whether the body arrived compressed.
    pub compressed: bool,
}

/// A message from the server on the WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsServerMessage {
    Response(StreamResponse),
    Chunk(StreamChunk),
    Progress(StreamProgress),
    Error {
        error: String,
        code: super::ErrorCode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream_id: Option<String>,
    },
}

/// A message from the client on the WebSocket: a StreamRequest (with `"type": "stream"` or
/// no type at all), or a cancel.
#[derive(Debug, Clone, PartialEq)]
pub enum WsClientMessage {
    Stream(StreamRequest),
    Cancel { stream_id: String },
}

impl WsClientMessage {
    /// Decodes a text frame.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        match value.get("type").and_then(|t| t.as_str()) {
            None | Some("stream") | Some("request") => serde_json::from_value(value)
                .map(WsClientMessage::Stream)
                .map_err(|e| format!("invalid stream request: {e}")),
            Some("cancel") => match value.get("stream_id").and_then(|s| s.as_str()) {
                Some(id) => Ok(WsClientMessage::Cancel {
                    stream_id: id.to_string(),
                }),
                None => Err("a cancel needs a stream_id".into()),
            },
            Some(other) => Err(format!("unknown message type {other:?}")),
        }
    }

    /// Encodes as a text frame.
    pub fn to_text(&self) -> String {
        match self {
            WsClientMessage::Stream(request) => {
                let mut value = serde_json::to_value(request).expect("serializes");
                value["type"] = "stream".into();
                value.to_string()
            }
            WsClientMessage::Cancel { stream_id } => {
                serde_json::json!({ "type": "cancel", "stream_id": stream_id }).to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip_and_bad_ones_are_refused() {
        let request = StreamRequest::whole(&"a".repeat(64), 4096);
        let text = WsClientMessage::Stream(request.clone()).to_text();
        assert_eq!(
            WsClientMessage::parse(&text),
            Ok(WsClientMessage::Stream(request))
        );
        let untyped = WsClientMessage::parse(r#"{"hash":"abc"}"#).unwrap();
        assert!(matches!(
            untyped,
            WsClientMessage::Stream(StreamRequest {
                end_offset: -1,
                chunk_size: 0,
                ..
            })
        ));
        let cancel = WsClientMessage::Cancel {
            stream_id: "s1".into(),
        };
        assert_eq!(WsClientMessage::parse(&cancel.to_text()), Ok(cancel));
        for bad in [
            "",
            "{",
            "[]",
            r#"{"type":"cancel"}"#,
            r#"{"type":"nope"}"#,
            r#"{"chunk_size":5}"#,
            r#"{"hash":"x","start_offset":"a"}"#,
        ] {
            assert!(WsClientMessage::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn server_messages_carry_their_type() {
        let m = WsServerMessage::Error {
            error: "e".into(),
            code: crate::api::ErrorCode::NotFound,
            stream_id: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(serde_json::from_value::<WsServerMessage>(v).unwrap(), m);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 1000,
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..Default::default()
        })]

        /// Fuzzing (1,000 cases, moved from tests/hostile_input.rs): whatever text arrives,
        /// a message that parses survives its own encoding.
        #[test]
        fn fuzz_websocket_client_messages(text in hostile_message()) {
            if let Ok(message) = WsClientMessage::parse(&text) {
                proptest::prop_assert_eq!(
                    WsClientMessage::parse(&message.to_text()).ok(),
                    Some(message),
                    "a parsed message does not survive its own encoding"
                );
            }
        }
    }

    /// Text frames a hostile client sends: anything, near-valid requests and cancels, damaged
    /// requests, and deep nesting.
    fn hostile_message() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let kind = prop::option::of(prop_oneof![
            Just("stream"),
            Just("request"),
            Just("cancel"),
            Just("x")
        ]);
        let near_valid = (any::<i64>(), any::<i64>(), any::<u64>(), "\\PC{0,70}", kind).prop_map(
            |(s, e, c, h, t)| {
                let mut v = serde_json::json!({
                    "hash": h, "start_offset": s, "end_offset": e, "chunk_size": c, "stream_id": h
                });
                if let Some(t) = t {
                    v["type"] = t.into();
                }
                v.to_string()
            },
        );
        // A valid request with bytes flipped, inserted or cut (the external test damaged an
        // encoded commit; the api layer does not know commits, so it damages its own JSON).
        let damaged = (
            "[0-9a-f]{64}",
            prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..5),
        )
            .prop_map(|(hash, edits)| {
                let mut bytes = WsClientMessage::Stream(StreamRequest::whole(&hash, 4096))
                    .to_text()
                    .into_bytes();
                for (i, b, op) in edits {
                    let at = i % (bytes.len() + 1);
                    match op {
                        0 if at < bytes.len() => bytes[at] ^= b.max(1),
                        1 => bytes.insert(at, b),
                        _ => bytes.truncate(at),
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            });
        prop_oneof![
            2 => "\\PC{0,80}",
            2 => near_valid,
            1 => damaged,
            1 => (1usize..300).prop_map(|n| "[".repeat(n)),
        ]
    }
}
