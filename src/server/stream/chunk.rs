//! One chunk of a session, read from the store, checksummed and compressed when that shrinks
//! it. Shared by the HTTP chunk route and the WebSocket.

use base64::Engine;
use bytes::Bytes;

use super::session::Session;
use crate::api::stream::StreamChunk;
use crate::api::ErrorCode;
use crate::base::checksum::md5_hex;
use crate::base::codec::compress;
use crate::base::codec::Encoding;
use crate::server::error::ApiResult;
use crate::server::AppState;
use crate::store::index::single_block;

/// zstd when the request's `Accept-Encoding` accepts it, else gzip when the session asked
/// for it.
pub fn choose_encoding(accept_encoding: Option<&str>, session_gzip: bool) -> Option<Encoding> {
    let accepts = |name: &str| {
        accept_encoding.is_some_and(|v| {
            v.split(',').any(|e| {
                e.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case(name))
            })
        })
    };
    if accepts("zstd") {
        Some(Encoding::Zstd)
    } else if session_gzip {
        Some(Encoding::Gzip)
    } else {
        None
    }
}

/// A chunk ready to send.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    pub index: u64,
    pub offset: u64,
    /// Length before compression.
    pub size: u64,
    /// Hex MD5 before compression.
    pub md5: String,
    /// What goes on the wire.
    pub body: Bytes,
    /// Set when `body` is compressed.
    pub encoding: Option<Encoding>,
    pub is_last: bool,
}

impl EncodedChunk {
    /// The JSON form (base64 `data`, or empty `data` when the bytes travel separately).
    pub fn to_json(&self, stream_id: &str, inline_data: bool) -> StreamChunk {
        StreamChunk {
            stream_id: stream_id.to_string(),
            sequence_num: self.index,
            offset: self.offset,
            data: if inline_data {
                base64::engine::general_purpose::STANDARD.encode(&self.body)
            } else {
                String::new()
            },
            size: self.size,
            checksum: self.md5.clone(),
            is_last: self.is_last,
            is_compressed: self.encoding.is_some(),
            encoding: self.encoding.map(|e| e.name().to_string()),
        }
    }
}

/// Reads chunk `index` of `session` (the caller checked it exists), hashes and compresses it,
/// and records it as served.
pub async fn read_chunk(
    state: &AppState,
    session: &Session,
    index: u64,
    encoding: Option<Encoding>,
) -> ApiResult<EncodedChunk> {
    let range = session
        .chunk_range(index)
        .expect("the caller checked the index");
    let data = state
        .store
        .read_blob_range(&session.repo, &session.hash, range.clone())
        .await?;
    if data.len() as u64 != range.end - range.start {
        return Err(crate::store::StoreError::Corrupt {
            id: session.hash.clone(),
            reason: "blob shorter than its size".into(),
        }
        .into());
    }
    // A chunk that is exactly one block of a legacy blob's index has its MD5 at hand.
    let known_md5 = match single_block(&range, session.blob_size) {
        Some(block) => state
            .store
            .block_sums(&session.repo, &session.hash, block)
            .await
            .and_then(|sums| sums.md5),
        None => None,
    };
    let (md5, compressed) = tokio::task::spawn_blocking(move || {
        let md5 = known_md5.unwrap_or_else(|| md5_hex(&data));
        let compressed = encoding
            .and_then(|e| compress(&data, e).ok())
            .filter(|c| c.len() < data.len());
        (md5, compressed.map(Bytes::from).ok_or(data))
    })
    .await
    .map_err(|e| crate::server::error::ApiError::new(ErrorCode::Internal, e.to_string()))?;
    state.metrics.add_sent(range.end - range.start);
    session.record_served(index);
    let (body, encoding) = match compressed {
        Ok(c) => (c, encoding),
        Err(raw) => (raw, None),
    };
    Ok(EncodedChunk {
        index,
        offset: range.start,
        size: range.end - range.start,
        md5,
        body,
        encoding,
        is_last: index + 1 == session.chunk_count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_negotiated() {
        assert_eq!(
            choose_encoding(Some("gzip, zstd;q=0.5"), false),
            Some(Encoding::Zstd)
        );
        assert_eq!(choose_encoding(Some("gzip"), true), Some(Encoding::Gzip));
        assert_eq!(choose_encoding(Some("gzip"), false), None);
        assert_eq!(choose_encoding(None, false), None);
        assert_eq!(choose_encoding(Some("zstdx"), false), None);
    }
}
