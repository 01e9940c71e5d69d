//! One chunk of a session, read from the store, checksummed and compressed when that shrinks
//! it. Shared by the HTTP chunk route and the WebSocket.

use std::io::Write;

use base64::Engine;
use bytes::Bytes;

use super::session::Session;
use crate::api::stream::StreamChunk;
use crate::server::error::ApiResult;
use crate::server::AppState;
use crate::store::index::single_block;
use crate::store::objects::md5_hex;

/// Compression a chunk may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` / `encoding` name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }

    /// zstd when the request accepts it, else gzip when the session asked for it.
    pub fn choose(accept_encoding: Option<&str>, session_gzip: bool) -> Option<Encoding> {
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
    // A chunk that is exactly one block of the blob's index has its MD5 at hand.
    let known_md5 = match single_block(&range, session.blob_size) {
        Some(block) => state
            .store
            .block_sums(&session.repo, &session.hash, block)
            .await
            .map(|sums| sums.md5),
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
    .map_err(|e| {
        crate::server::error::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )
    })?;
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

fn compress(data: &[u8], encoding: Encoding) -> std::io::Result<Vec<u8>> {
    match encoding {
        Encoding::Zstd => zstd::bulk::compress(data, 3),
        Encoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::fast(),
            );
            encoder.write_all(data)?;
            encoder.finish()
        }
    }
}

/// Undoes [`compress`] (for clients), refusing output larger than `max_len`.
pub fn decompress(data: &[u8], encoding: &str, max_len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(max_len.min(16 << 20));
    match encoding {
        "zstd" => zstd::stream::read::Decoder::new(data)?
            .take(max_len as u64 + 1)
            .read_to_end(&mut out)?,
        "gzip" => flate2::read::GzDecoder::new(data)
            .take(max_len as u64 + 1)
            .read_to_end(&mut out)?,
        other => {
            return Err(std::io::Error::other(format!(
                "unknown chunk encoding {other:?}"
            )))
        }
    };
    if out.len() > max_len {
        return Err(std::io::Error::other(
            "a chunk decompressed to more than its announced size",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips_and_encoding_is_negotiated() {
        let text = b"the same line again and again\n".repeat(500);
        for e in [Encoding::Gzip, Encoding::Zstd] {
            let c = compress(&text, e).unwrap();
            assert!(c.len() < text.len() / 5);
            assert_eq!(decompress(&c, e.name(), text.len()).unwrap(), text);
            assert!(
                decompress(&c, e.name(), text.len() - 1).is_err(),
                "a bomb past the size is refused"
            );
        }
        assert_eq!(
            Encoding::choose(Some("gzip, zstd;q=0.5"), false),
            Some(Encoding::Zstd)
        );
        assert_eq!(Encoding::choose(Some("gzip"), true), Some(Encoding::Gzip));
        assert_eq!(Encoding::choose(Some("gzip"), false), None);
        assert_eq!(Encoding::choose(None, false), None);
        assert_eq!(Encoding::choose(Some("zstdx"), false), None);
    }
}
