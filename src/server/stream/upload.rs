//! `POST /api/v1/repos/:repo/stream/blob/upload`: one request stores one blob, streamed to
//! the store with hashing on the way (never held whole in memory). The body is the raw bytes,
//! or `multipart/form-data` whose parts are appended in order; either may arrive with
//! `Content-Encoding: zstd` or `gzip`, decompressed while it streams. Small files take this
//! path from the mount, as it costs one round trip instead of three.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::api::stream::StreamUploaded;
use crate::api::ErrorCode;
use crate::server::error::{ApiError, ApiResult};
use crate::server::AppState;
use crate::store::BlobWriter;

/// Bytes gathered before they are handed to the blob writer: one store chunk, so the writer
/// takes each piece as it is, without copying it again.
const PIECE: usize = crate::base::manifest::CHUNK_SIZE as usize;

/// Read buffer of a decompressing body (`ReaderStream`'s default is 4 KiB, one poll each).
const DECODE_BUFFER: usize = 256 << 10;

type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How much of a refused upload's body is read and dropped before the answer, so an ordinary
/// HTTP client, still sending, gets the error instead of a reset connection.
const DRAIN_LIMIT: usize = 8 << 20;

/// The request body, shared between the decoding pipeline and the handler, which drains
/// what the pipeline left when it refuses the upload.
#[derive(Clone)]
struct SharedBody(Arc<std::sync::Mutex<axum::body::BodyDataStream>>);

impl Stream for SharedBody {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.lock().expect("body lock").poll_next_unpin(cx)
    }
}

impl SharedBody {
    /// Reads and drops up to [`DRAIN_LIMIT`] more bytes (bounded in time too).
    async fn drain(self) {
        let mut drained = 0;
        let mut body = self;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while drained < DRAIN_LIMIT {
                match body.next().await {
                    Some(Ok(frame)) => drained += frame.len(),
                    _ => return,
                }
            }
        })
        .await;
    }
}

/// Gathers pieces and writes them to the blob.
struct Feeder<'a> {
    state: &'a AppState,
    writer: BlobWriter,
    piece: BytesMut,
    chunks: u64,
}

impl Feeder<'_> {
    async fn push(&mut self, data: &[u8]) -> ApiResult<()> {
        self.piece.extend_from_slice(data);
        if self.piece.len() >= PIECE {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> ApiResult<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let data = self.piece.split().freeze();
        self.piece.reserve(PIECE);
        self.state
            .metrics
            .blob_bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.writer.write(data).await?;
        self.chunks += 1;
        Ok(())
    }
}

/// The body, decompressed as it streams when it is encoded.
fn decoded_body(body: SharedBody, encoding: Option<&str>) -> ApiResult<ByteStream> {
    let raw = body.map_err(std::io::Error::other);
    let Some(encoding) = encoding else {
        // The frames as they arrive: no buffer in between.
        return Ok(Box::pin(raw));
    };
    let reader = StreamReader::new(raw);
    Ok(match encoding {
        "zstd" => Box::pin(ReaderStream::with_capacity(
            async_compression::tokio::bufread::ZstdDecoder::new(reader),
            DECODE_BUFFER,
        )),
        "gzip" => Box::pin(ReaderStream::with_capacity(
            async_compression::tokio::bufread::GzipDecoder::new(reader),
            DECODE_BUFFER,
        )),
        other => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedEncoding,
                format!("Content-Encoding {other:?} is not supported (use zstd or gzip)"),
            ))
        }
    })
}

/// Stores the request body as a blob.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<StreamUploaded>)> {
    let uploaded = store_upload_body(&state, &repo, &headers, body).await?;
    Ok((StatusCode::CREATED, Json(uploaded)))
}

/// Stores a streamed upload's body as a blob (raw or multipart, decoded by its
/// `Content-Encoding`); a refused body is read to its end, so the client sees the answer.
pub(crate) async fn store_upload_body(
    state: &AppState,
    repo: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<StreamUploaded> {
    let body = SharedBody(Arc::new(std::sync::Mutex::new(body.into_data_stream())));
    let outcome = store_body(state, repo, headers, body.clone()).await;
    if outcome.is_err() {
        body.drain().await;
    }
    outcome
}

/// How an upload's body is framed and encoded, from its headers.
struct Framing {
    /// The `Content-Encoding` to undo (`None`: identity).
    encoding: Option<String>,
    /// The multipart boundary, for a `multipart/*` body.
    boundary: Option<String>,
    /// The blob's length when known up front: only for a plain raw body.
    len: Option<u64>,
}

impl Framing {
    fn of(headers: &HeaderMap) -> ApiResult<Framing> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let encoding = match headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        {
            None => None,
            Some(e) if e == "identity" || e.is_empty() => None,
            Some(e) => Some(e),
        };
        let boundary = if content_type.starts_with("multipart/") {
            Some(multer::parse_boundary(content_type).map_err(|e| {
                ApiError::bad_request(format!("invalid multipart Content-Type: {e}"))
            })?)
        } else {
            None
        };
        let len = match (&boundary, &encoding) {
            (None, None) => headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
            _ => None,
        };
        Ok(Framing {
            encoding,
            boundary,
            len,
        })
    }
}

async fn store_body(
    state: &AppState,
    repo: &str,
    headers: &HeaderMap,
    body: SharedBody,
) -> ApiResult<StreamUploaded> {
    state.store.ensure_repo(repo).await?;
    let Framing {
        encoding,
        boundary,
        len,
    } = Framing::of(headers)?;
    let stream = decoded_body(body, encoding.as_deref())?;
    let writer = state
        .store
        .begin_blob(repo, len, state.config.max_upload_size)
        .await?;
    let mut feeder = Feeder {
        state,
        writer,
        piece: BytesMut::with_capacity(len.map_or(PIECE, |l| (l as usize).min(PIECE))),
        chunks: 0,
    };
    let outcome = match boundary {
        Some(boundary) => feed_multipart(&mut feeder, stream, boundary).await,
        None => feed_raw(&mut feeder, stream).await,
    };
    let outcome = match outcome {
        Ok(()) => feeder.flush().await,
        Err(e) => Err(e),
    };
    let Feeder { writer, chunks, .. } = feeder;
    if let Err(e) = outcome {
        // Nothing of a refused or broken upload is kept.
        writer.abort().await?;
        return Err(e);
    }
    let info = writer.finish().await?;
    Ok(StreamUploaded {
        hash: info.hash,
        size: info.size,
        chunks,
        compressed: encoding.is_some(),
    })
}

fn body_error(e: std::io::Error) -> ApiError {
    ApiError::bad_request(format!("upload body: {e}"))
}

async fn feed_raw(feeder: &mut Feeder<'_>, mut stream: ByteStream) -> ApiResult<()> {
    while let Some(frame) = stream.next().await {
        feeder.push(&frame.map_err(body_error)?).await?;
    }
    Ok(())
}

async fn feed_multipart(
    feeder: &mut Feeder<'_>,
    stream: ByteStream,
    boundary: String,
) -> ApiResult<()> {
    let mut multipart = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| ApiError::bad_request(format!("invalid multipart body: {e}"));
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        while let Some(data) = field.chunk().await.map_err(bad)? {
            feeder.push(&data).await?;
        }
    }
    Ok(())
}
