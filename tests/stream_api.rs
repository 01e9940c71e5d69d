//! Integration tests of the seed streaming API (CONTRACT §3 "Seed streaming API", §4 metrics,
//! issue 3) against the real `govcfs serve` binary. Every test starts its own server on an
//! ephemeral loopback port with a private data directory.
//!
//! What the suite covers:
//! - `POST …/stream/blob/start`: chunk-size clamping, inclusive ranges (`-1` = end), range MD5.
//! - `GET …/stream/blob/:id/chunk?chunk=N`: JSON (base64) and raw chunks of the session's range,
//!   per-chunk MD5, headers of raw chunks, gzip (`enable_gzip`) and zstd (`Accept-Encoding`).
//! - `GET …/progress` and `DELETE …`: distinct-chunk progress, completion, cancel (410 after),
//!   expiry after `--stream-timeout`, the `govcfs_stream_sessions_active` gauge and
//!   `govcfs_blob_bytes_sent_total`.
//! - Bad input: unknown/malformed hashes, unsatisfiable ranges, malformed bodies, bad chunk
//!   numbers, unknown sessions, sessions of another repository, `--max-stream-sessions`.
//! - `POST …/stream/blob/upload`: raw, multipart, zstd and gzip bodies, refused encodings and
//!   corrupt bodies, `--max-upload-size` (including a decompression bomb), nothing kept after a
//!   refusal, a 64 MiB multipart upload in bounded server memory.
//! - `GET …/stream/websocket`: range streaming with progress frames, several requests on one
//!   connection, binary frames, error frames that leave the connection usable, cancel, sessions
//!   that end with their stream or connection, backpressure against a client that does not read,
//!   and the auth token on the upgrade.
//!
//! No test asserts on wall-clock durations; every wait is a bounded poll or a bounded read.
//! Tests named after a defect (ended sessions across repositories, early upload refusals,
//! HTTP cancel of a WebSocket stream) are regression tests of bugs that have been fixed.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use govcfs::api::stream::{
    StreamChunk, StreamProgress, StreamRequest, StreamResponse, StreamUploaded, WsClientMessage,
    WsServerMessage,
};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ---------------------------------------------------------------------------------------
// Helpers: hashing, JSON answers, errors
// ---------------------------------------------------------------------------------------

/// Compressible text of exactly `len` bytes.
fn text_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i = 0u64;
    while out.len() < len {
        writeln!(
            out,
            "line {i}: the streaming API sends this text in chunks that compress well"
        )
        .unwrap();
        i += 1;
    }
    out.truncate(len);
    out
}

/// `len` incompressible bytes, quickly (the test crate is not optimised): each MiB is one of
/// four random 1 MiB blocks whose first 16 bytes are replaced by the MiB's index and the seed,
/// so no two MiB are equal and a misplaced chunk is detected.
fn fast_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let blocks: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes(MIB as usize, seed.wrapping_mul(100).wrapping_add(i + 1)))
        .collect();
    let mut out = Vec::with_capacity(len);
    let mut index = 0u64;
    while out.len() < len {
        let n = (len - out.len()).min(MIB as usize);
        let start = out.len();
        out.extend_from_slice(&blocks[(index.wrapping_mul(7) % 4) as usize][..n]);
        let header = [index.to_le_bytes(), seed.to_le_bytes()].concat();
        let h = n.min(16);
        out[start..start + h].copy_from_slice(&header[..h]);
        index += 1;
    }
    out
}

/// Asserts that a JSON object carries every one of the contract's field names.
fn assert_fields(what: &str, value: &Value, fields: &[&str]) {
    for f in fields {
        assert!(
            value.get(f).is_some(),
            "{what}: field {f:?} missing in {value}"
        );
    }
}

/// 200 or 201 (the contract names the body, not the success status).
fn assert_success(what: &str, status: u16, body: &Value) {
    assert!(
        status == 200 || status == 201,
        "{what}: status {status} (body {body})"
    );
}

// ---------------------------------------------------------------------------------------
// Helpers: blobs and stream sessions over HTTP
// ---------------------------------------------------------------------------------------

/// Stores `data` as a blob of `repo` through the resumable upload API (not the streaming
/// upload under test) and returns its id.
async fn seed_blob(http: &reqwest::Client, srv: &ServerProcess, repo: &str, data: &[u8]) -> String {
    let info = upload_blob(http, &srv.api(repo), data, Some(16 * MIB)).await;
    let hash = info["hash"].as_str().expect("hash").to_string();
    assert_eq!(hash, blob_id(data), "seeded blob id");
    hash
}

/// `POST …/stream/blob/start` with this JSON body.
async fn start_stream(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    body: &Value,
) -> (u16, Value) {
    json_of(
        http.post(format!("{}/stream/blob/start", srv.api(repo)))
            .json(body)
            .send()
            .await
            .expect("POST start"),
    )
    .await
}

/// Opens a session (asserting success and the contract's field names).
async fn open_stream(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    body: &Value,
) -> StreamResponse {
    let (status, value) = start_stream(http, srv, repo, body).await;
    assert_success(&format!("start {body}"), status, &value);
    assert_fields(
        "StreamResponse",
        &value,
        &[
            "stream_id",
            "hash",
            "total_size",
            "chunk_count",
            "chunk_size",
            "start_offset",
            "end_offset",
            "checksum",
        ],
    );
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not a StreamResponse ({e}): {value}"))
}

fn chunk_url(srv: &ServerProcess, repo: &str, id: &str, query: &str) -> String {
    format!("{}/stream/blob/{id}/chunk{query}", srv.api(repo))
}

/// A chunk as JSON: status and body.
async fn chunk_value(
    http: &reqwest::Client,
    url: &str,
    accept_encoding: Option<&str>,
) -> (u16, Value) {
    let mut request = http.get(url);
    if let Some(e) = accept_encoding {
        request = request.header("Accept-Encoding", e);
    }
    json_of(request.send().await.expect("GET chunk")).await
}

/// Chunk `n` of a session as a JSON StreamChunk (asserting 200 and the field names).
async fn json_chunk(
    http: &reqwest::Client,
    srv: &ServerProcess,
    id: &str,
    n: u64,
    accept_encoding: Option<&str>,
) -> StreamChunk {
    let (status, value) = chunk_value(
        http,
        &chunk_url(srv, "default", id, &format!("?chunk={n}")),
        accept_encoding,
    )
    .await;
    assert_eq!(status, 200, "chunk {n}: {value}");
    assert_fields(
        "StreamChunk",
        &value,
        &[
            "stream_id",
            "sequence_num",
            "offset",
            "data",
            "size",
            "checksum",
            "is_last",
            "is_compressed",
        ],
    );
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not a StreamChunk ({e}): {value}"))
}

/// A raw chunk: status, headers and body (not decompressed).
struct RawChunk {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl RawChunk {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
}

async fn raw_chunk(
    http: &reqwest::Client,
    srv: &ServerProcess,
    id: &str,
    n: u64,
    accept_encoding: Option<&str>,
) -> RawChunk {
    let mut request = http
        .get(chunk_url(srv, "default", id, &format!("?chunk={n}")))
        .header("Accept", "application/octet-stream");
    if let Some(e) = accept_encoding {
        request = request.header("Accept-Encoding", e);
    }
    let response = request.send().await.expect("GET raw chunk");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("raw chunk body");
    RawChunk {
        status,
        headers,
        body,
    }
}

/// The progress of a session (asserting 200 and the field names).
async fn progress(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    id: &str,
) -> StreamProgress {
    let (status, value) = progress_value(http, srv, repo, id).await;
    assert_eq!(status, 200, "progress of {id}: {value}");
    assert_fields(
        "StreamProgress",
        &value,
        &[
            "stream_id",
            "bytes_streamed",
            "total_bytes",
            "chunks_streamed",
            "total_chunks",
            "estimated_eta_seconds",
            "transfer_rate_mbps",
            "status",
        ],
    );
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not a StreamProgress ({e}): {value}"))
}

async fn cancel_stream(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    id: &str,
) -> (u16, Value) {
    json_of(
        http.delete(format!("{}/stream/blob/{id}", srv.api(repo)))
            .send()
            .await
            .expect("DELETE stream"),
    )
    .await
}

/// The progress route's answer for session `id` of `repo`, whatever its status.
async fn progress_value(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    id: &str,
) -> (u16, Value) {
    json_of(
        http.get(format!("{}/stream/blob/{id}/progress", srv.api(repo)))
            .send()
            .await
            .expect("GET progress"),
    )
    .await
}

/// The chunk, progress and cancel routes of `repo` for session `id`, each expected to
/// answer `status` with `code` (`what` names the session in messages).
fn session_route_cases<'a>(
    http: &'a reqwest::Client,
    srv: &'a ServerProcess,
    repo: &'a str,
    id: &'a str,
    what: &str,
    status: u16,
    code: &'a str,
) -> Vec<ErrorCase<'a>> {
    vec![
        error_case(
            format!("chunk of {what}"),
            async move { chunk_value(http, &chunk_url(srv, repo, id, "?chunk=0"), None).await },
            status,
            code,
        ),
        error_case(
            format!("progress of {what}"),
            progress_value(http, srv, repo, id),
            status,
            code,
        ),
        error_case(
            format!("cancel of {what}"),
            cancel_stream(http, srv, repo, id),
            status,
            code,
        ),
    ]
}

/// Undoes a chunk's compression as its header describes it.
fn decompress(wire: &[u8], encoding: Option<&str>) -> Vec<u8> {
    match encoding {
        None => wire.to_vec(),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(wire)
                .read_to_end(&mut out)
                .expect("valid gzip");
            out
        }
        Some("zstd") => zstd::decode_all(wire).expect("valid zstd"),
        Some(other) => panic!("unexpected encoding {other:?}"),
    }
}

/// The bytes of a chunk whose wire payload is `wire`, checked against its `size` and MD5.
fn chunk_bytes(chunk: &StreamChunk, wire: &[u8]) -> Vec<u8> {
    assert_eq!(
        chunk.is_compressed,
        chunk.encoding.is_some(),
        "chunk {}: is_compressed vs encoding {:?}",
        chunk.sequence_num,
        chunk.encoding
    );
    let plain = decompress(wire, chunk.encoding.as_deref());
    assert_eq!(
        plain.len() as u64,
        chunk.size,
        "chunk {}: size",
        chunk.sequence_num
    );
    assert_eq!(
        md5_hex(&plain),
        chunk.checksum,
        "chunk {}: checksum is the MD5 of the uncompressed bytes",
        chunk.sequence_num
    );
    plain
}

/// Decodes the base64 `data` of a JSON chunk and checks it.
fn json_chunk_bytes(chunk: &StreamChunk) -> Vec<u8> {
    let wire = base64::engine::general_purpose::STANDARD
        .decode(&chunk.data)
        .expect("base64 data");
    chunk_bytes(chunk, &wire)
}

/// Every regular file below `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn objects_of(srv: &ServerProcess, repo: &str) -> Vec<PathBuf> {
    files_under(&srv.data_dir().join("repos").join(repo).join("objects"))
}

fn tmp_files(srv: &ServerProcess) -> Vec<PathBuf> {
    files_under(&srv.data_dir().join("tmp"))
}

/// The value of a metric sample (panics when the server does not export it).
fn gauge(srv: &ServerProcess, name: &str) -> f64 {
    srv.metric(name)
        .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
}

// ---------------------------------------------------------------------------------------
// Helpers: streamed uploads
// ---------------------------------------------------------------------------------------

const BOUNDARY: &str = "govcfs-test-boundary-7f3a9c1e5b";

/// The pieces of a `multipart/form-data` body with one file field per part, each part's data
/// cut into 1 MiB slices (so a large body can be streamed without a second copy).
fn multipart_pieces(parts: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        out.push(Bytes::from(format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"part{i}\"; filename=\"part{i}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )));
        let mut at = 0;
        while at < part.len() {
            let end = (at + MIB as usize).min(part.len());
            out.push(part.slice(at..end));
            at = end;
        }
        out.push(Bytes::from_static(b"\r\n"));
    }
    out.push(Bytes::from(format!("--{BOUNDARY}--\r\n")));
    out
}

fn multipart_body(parts: &[Bytes]) -> Vec<u8> {
    multipart_pieces(parts).concat()
}

fn multipart_content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn stream_body(pieces: Vec<Bytes>) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(
        pieces.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

/// `POST …/stream/blob/upload` with these headers and body.
async fn stream_upload(
    http: &reqwest::Client,
    srv: &ServerProcess,
    headers: &[(&str, &str)],
    body: reqwest::Body,
) -> (u16, Value) {
    let mut request = http.post(format!("{}/stream/blob/upload", srv.api("default")));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    json_of(request.body(body).send().await.expect("POST stream upload")).await
}

/// Asserts a successful streamed upload of `data`; returns the answer.
fn assert_uploaded(
    what: &str,
    status: u16,
    body: &Value,
    data: &[u8],
    compressed: bool,
) -> StreamUploaded {
    assert_success(what, status, body);
    assert_fields(what, body, &["hash", "size", "chunks", "compressed"]);
    let info: StreamUploaded = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("{what}: not a StreamUploaded ({e}): {body}"));
    assert_eq!(
        info.hash,
        blob_id(data),
        "{what}: hash is the git sha256 blob id"
    );
    assert_eq!(info.size, data.len() as u64, "{what}: size");
    assert_eq!(info.compressed, compressed, "{what}: compressed");
    if !data.is_empty() {
        assert!(info.chunks >= 1, "{what}: chunks {}", info.chunks);
    }
    info
}

/// Sends one upload request over a raw loopback connection, writing the body on a thread
/// while the response is read, so that an answer the server gives before reading the whole
/// body (and the connection reset that follows it) does not lose the answer.
///
/// With `chunked`, the body goes with `Transfer-Encoding: chunked` in 256 KiB chunks instead
/// of with a `Content-Length`.
fn raw_upload(
    srv: &ServerProcess,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    chunked: bool,
) -> RawResponse {
    let mut stream =
        std::net::TcpStream::connect_timeout(&srv.addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = format!(
        "POST /api/v1/repos/default/stream/blob/upload HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        srv.addr
    );
    let body = if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
        let mut framed = Vec::with_capacity(body.len() + 1024);
        for piece in body.chunks(256 * KIB as usize) {
            framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            framed.extend_from_slice(piece);
            framed.extend_from_slice(b"\r\n");
        }
        framed.extend_from_slice(b"0\r\n\r\n");
        framed
    } else {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        body
    };
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone().expect("clone the socket");
    let sender = std::thread::spawn(move || {
        // Errors are expected when the server answers early and closes.
        let _ = writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(&body));
    });
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * KIB as usize];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A reset after the whole answer arrived is fine; parsing tells.
                if raw.is_empty() {
                    panic!("no answer to the upload: {e}");
                }
                break;
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    sender.join().expect("sender thread");
    parse_response(&raw, false).unwrap_or_else(|e| {
        panic!(
            "incomplete answer ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// The stored bytes of blob `hash` (asserting 200).
async fn stored_blob(http: &reqwest::Client, srv: &ServerProcess, hash: &str) -> Bytes {
    let r = http
        .get(format!("{}/blobs/{hash}", srv.api("default")))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(r.status(), 200, "blob {hash} is stored");
    r.bytes().await.expect("blob body")
}

async fn blob_status(http: &reqwest::Client, srv: &ServerProcess, hash: &str) -> u16 {
    http.get(format!("{}/blobs/{hash}", srv.api("default")))
        .send()
        .await
        .expect("GET blob")
        .status()
        .as_u16()
}

// ---------------------------------------------------------------------------------------
// Helpers: WebSocket
// ---------------------------------------------------------------------------------------

/// The longest a test waits for one WebSocket frame.
const WS_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects over a socket whose receive buffer is `recv_buffer` bytes (set before connecting,
/// which also turns off the kernel's receive-buffer autotuning), optionally with a token.
async fn ws_connect_with(
    srv: &ServerProcess,
    recv_buffer: Option<u32>,
    token: Option<&str>,
) -> Result<WebSocketStream<tokio::net::TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("TCP socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(srv.addr))
        .await
        .expect("connect within 10 s")
        .expect("connect");
    let mut request = ws_url(srv, "default")
        .into_client_request()
        .expect("WebSocket request");
    if let Some(t) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    .expect("WebSocket handshake within 10 s")?;
    Ok(ws)
}

/// The largest TCP send buffer the kernel grows a socket to (tcp_wmem's max), 4 MiB if unknown.
fn max_send_buffer() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20)
}

async fn ws_send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    message: &WsClientMessage,
) {
    ws_send_text(ws, &message.to_text()).await;
}

async fn ws_send_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
    tokio::time::timeout(
        Duration::from_secs(10),
        ws.send(Message::text(text.to_string())),
    )
    .await
    .expect("send within 10 s")
    .expect("send a text frame");
}

/// A frame from the server.
#[derive(Debug)]
enum Frame {
    Msg(WsServerMessage),
    Bin(Bytes),
}

/// The next data frame (ping/pong skipped); panics on close, error or timeout.
async fn ws_next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Frame {
    for _ in 0..1000 {
        let next = tokio::time::timeout(WS_FRAME_TIMEOUT, ws.next())
            .await
            .expect("a WebSocket frame within 30 s");
        match next {
            None => panic!("the server closed the WebSocket"),
            Some(Err(e)) => panic!("WebSocket error: {e}"),
            Some(Ok(Message::Text(t))) => {
                let message = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("not a WsServerMessage ({e}): {}", t.as_str()));
                return Frame::Msg(message);
            }
            Some(Ok(Message::Binary(b))) => return Frame::Bin(b),
            Some(Ok(Message::Close(c))) => panic!("the server closed the WebSocket: {c:?}"),
            Some(Ok(_)) => continue,
        }
    }
    panic!("only control frames from the server")
}

/// The next frame, which must be an error frame: (code, stream_id).
async fn ws_expect_error<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    what: &str,
) -> (String, Option<String>) {
    match ws_next(ws).await {
        Frame::Msg(WsServerMessage::Error {
            error,
            code,
            stream_id,
        }) => {
            assert!(!error.is_empty(), "{what}: empty error message");
            (code.as_str().to_string(), stream_id)
        }
        other => panic!("{what}: expected an error frame, got {other:?}"),
    }
}

async fn ws_expect_response<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    what: &str,
) -> StreamResponse {
    match ws_next(ws).await {
        Frame::Msg(WsServerMessage::Response(r)) => r,
        other => panic!("{what}: expected a response frame, got {other:?}"),
    }
}

/// What one WebSocket stream delivered.
struct WsRun {
    response: StreamResponse,
    data: Vec<u8>,
    chunks: Vec<StreamChunk>,
    /// Each progress frame with the number of chunk frames received before it.
    progress: Vec<(u64, StreamProgress)>,
}

/// Reads the chunks and progress frames of the stream `response` opened, until the final
/// progress frame; checks order, MD5s and sizes. With `binary`, every chunk header must be
/// followed by a Binary frame with its bytes.
async fn ws_read_stream<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    response: StreamResponse,
    binary: bool,
) -> WsRun {
    let count = response.chunk_count;
    let mut run = WsRun {
        response,
        data: Vec::new(),
        chunks: Vec::new(),
        progress: Vec::new(),
    };
    for _ in 0..count * 2 + count / 2 + 10 {
        match ws_next(ws).await {
            Frame::Msg(WsServerMessage::Chunk(c)) => {
                assert_eq!(
                    c.stream_id, run.response.stream_id,
                    "chunk of another stream"
                );
                assert_eq!(
                    c.sequence_num,
                    run.chunks.len() as u64,
                    "chunks arrive in sequence order"
                );
                assert_eq!(
                    c.is_last,
                    c.sequence_num + 1 == count,
                    "is_last on chunk {} of {count}",
                    c.sequence_num
                );
                assert_eq!(
                    c.offset,
                    run.response.start_offset + c.sequence_num * run.response.chunk_size,
                    "offset of chunk {}",
                    c.sequence_num
                );
                let plain = if binary {
                    assert!(
                        c.data.is_empty(),
                        "binary mode: chunk {} has inline data",
                        c.sequence_num
                    );
                    match ws_next(ws).await {
                        Frame::Bin(b) => chunk_bytes(&c, &b),
                        other => panic!(
                            "binary mode: chunk {} header not followed by a binary frame: {other:?}",
                            c.sequence_num
                        ),
                    }
                } else {
                    json_chunk_bytes(&c)
                };
                run.data.extend_from_slice(&plain);
                run.chunks.push(c);
            }
            Frame::Msg(WsServerMessage::Progress(p)) => {
                assert_eq!(
                    p.stream_id, run.response.stream_id,
                    "progress of another stream"
                );
                let seen = run.chunks.len() as u64;
                run.progress.push((seen, p));
                if seen == count {
                    return run;
                }
            }
            other => panic!(
                "unexpected frame in stream {}: {other:?}",
                run.response.stream_id
            ),
        }
    }
    panic!(
        "stream {} did not end with a progress frame",
        run.response.stream_id
    )
}

/// Checks a completed WebSocket stream against `expected` (the bytes of the range).
fn assert_ws_run_complete(what: &str, run: &WsRun, expected: &[u8]) {
    assert_eq!(
        run.response.total_size,
        expected.len() as u64,
        "{what}: total_size"
    );
    assert_eq!(
        run.response.checksum,
        md5_hex(expected),
        "{what}: response checksum"
    );
    assert!(
        run.data == expected,
        "{what}: reassembled bytes differ from the source range"
    );
    assert_eq!(
        run.chunks.len() as u64,
        run.response.chunk_count,
        "{what}: chunk frames"
    );
    // Progress at least every 10 chunks, and one after the last with status completed.
    let mut last = 0;
    for (seen, p) in &run.progress {
        assert!(
            seen - last <= 10,
            "{what}: {} chunks without a progress frame (progress at {:?})",
            seen - last,
            run.progress.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        last = *seen;
        assert_eq!(
            p.total_chunks, run.response.chunk_count,
            "{what}: total_chunks"
        );
        assert_eq!(p.total_bytes, expected.len() as u64, "{what}: total_bytes");
    }
    let (seen, end) = run.progress.last().expect("a final progress frame");
    assert_eq!(
        *seen, run.response.chunk_count,
        "{what}: the final progress comes after the last chunk"
    );
    assert_eq!(end.status, "completed", "{what}: final progress {end:?}");
    assert_eq!(
        end.bytes_streamed,
        expected.len() as u64,
        "{what}: final bytes_streamed"
    );
    assert_eq!(
        end.chunks_streamed, run.response.chunk_count,
        "{what}: final chunks_streamed"
    );
}

fn stream_request(hash: &str, chunk_size: u64, start: i64, end: i64) -> StreamRequest {
    StreamRequest {
        hash: hash.to_string(),
        chunk_size,
        start_offset: start,
        end_offset: end,
        enable_gzip: false,
        binary: false,
    }
}

// ---------------------------------------------------------------------------------------
// 1. Sessions, ranges and chunks
// ---------------------------------------------------------------------------------------

#[test]
fn start_clamps_chunk_sizes_and_reports_ranges_and_checksums() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(300_007, 1);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let len = data.len() as u64;
        let mut ids = BTreeSet::new();

        // Chunk sizes: absent or 0 give 64 KiB; others are clamped to [1 KiB, 10 MiB].
        let cases: Vec<(Value, u64)> = vec![
            (json!({ "hash": hash }), 65536),
            (json!({ "hash": hash, "chunk_size": 0 }), 65536),
            (json!({ "hash": hash, "chunk_size": 1 }), 1024),
            (json!({ "hash": hash, "chunk_size": 1023 }), 1024),
            (json!({ "hash": hash, "chunk_size": 1024 }), 1024),
            (json!({ "hash": hash, "chunk_size": 5000 }), 5000),
            (json!({ "hash": hash, "chunk_size": 10 * MIB }), 10 * MIB),
            (
                json!({ "hash": hash, "chunk_size": 10 * MIB + 1 }),
                10 * MIB,
            ),
            (json!({ "hash": hash, "chunk_size": u64::MAX }), 10 * MIB),
        ];
        for (body, want) in &cases {
            let r = open_stream(&http, &srv, "default", body).await;
            assert_eq!(r.chunk_size, *want, "chunk_size for {body}");
            assert_eq!(r.hash, hash, "{body}: hash");
            assert_eq!(r.total_size, len, "{body}: total_size");
            assert_eq!(r.chunk_count, len.div_ceil(*want), "{body}: chunk_count");
            assert_eq!(
                (r.start_offset, r.end_offset),
                (0, len as i64 - 1),
                "{body}: resolved range"
            );
            assert_eq!(
                r.checksum,
                md5_hex(&data),
                "{body}: checksum of the whole blob"
            );
            assert!(!r.enable_gzip, "{body}: enable_gzip");
            assert!(!r.stream_id.is_empty(), "{body}: stream_id");
            assert!(
                ids.insert(r.stream_id.clone()),
                "stream ids are unique: {} twice",
                r.stream_id
            );
        }

        // Inclusive ranges; -1 is the end of the blob.
        for (start, end, chunk) in [
            (1000i64, 250_000i64, 4096u64),
            (1000, -1, 4096),
            (299_999, 300_006, 1024),
            (0, 0, 0),
            (300_006, -1, 1024),
        ] {
            let r = open_stream(
                &http,
                &srv,
                "default",
                &json!({ "hash": hash, "chunk_size": chunk, "start_offset": start, "end_offset": end }),
            )
            .await;
            let last = if end == -1 { len - 1 } else { end as u64 };
            let slice = &data[start as usize..=last as usize];
            let what = format!("range {start}..={end}");
            assert_eq!(r.start_offset, start as u64, "{what}: start_offset");
            assert_eq!(
                r.end_offset, last as i64,
                "{what}: end_offset is inclusive and resolved"
            );
            assert_eq!(r.total_size, slice.len() as u64, "{what}: total_size");
            assert_eq!(
                r.chunk_count,
                (slice.len() as u64).div_ceil(r.chunk_size),
                "{what}: chunk_count"
            );
            assert_eq!(
                r.checksum,
                md5_hex(slice),
                "{what}: checksum is the MD5 of the range"
            );
            assert!(ids.insert(r.stream_id.clone()), "stream ids are unique");
        }

        // An empty blob: an empty session with no chunks.
        let empty = seed_blob(&http, &srv, "default", b"").await;
        let r = open_stream(&http, &srv, "default", &json!({ "hash": empty })).await;
        assert_eq!((r.total_size, r.chunk_count), (0, 0), "empty blob: {r:?}");
        assert_eq!(r.checksum, md5_hex(b""), "empty blob checksum");
        let (status, body) = chunk_value(
            &http,
            &chunk_url(&srv, "default", &r.stream_id, "?chunk=0"),
            None,
        )
        .await;
        assert_error(
            "chunk 0 of an empty session",
            status,
            &body,
            404,
            "chunk_out_of_range",
        );
    });
    assert!(
        !srv.log().contains("internal error"),
        "server log: {}",
        srv.log()
    );
}

#[test]
fn json_and_raw_chunks_of_a_sub_range_reassemble_exactly_that_range() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(300_007, 2);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let (start, end, chunk) = (12_345usize, 234_567usize, 10_000u64);
        let range = &data[start..=end];
        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": chunk, "start_offset": start, "end_offset": end }),
        )
        .await;
        assert_eq!(r.chunk_count, 23, "{r:?}");
        let id = r.stream_id.clone();

        let mut from_json = Vec::new();
        let mut from_raw = Vec::new();
        for n in 0..r.chunk_count {
            let piece_start = start + (n * chunk) as usize;
            let piece = &range[(n * chunk) as usize..(((n + 1) * chunk) as usize).min(range.len())];
            let last = n + 1 == r.chunk_count;

            let c = json_chunk(&http, &srv, &id, n, None).await;
            assert_eq!(c.stream_id, id, "chunk {n}: stream_id");
            assert_eq!(c.sequence_num, n, "chunk {n}: sequence_num");
            assert_eq!(
                c.offset, piece_start as u64,
                "chunk {n}: offset in the blob"
            );
            assert_eq!(c.size, piece.len() as u64, "chunk {n}: size");
            assert_eq!(c.checksum, md5_hex(piece), "chunk {n}: checksum");
            assert_eq!(c.is_last, last, "chunk {n}: is_last");
            assert!(
                !c.is_compressed && c.encoding.is_none(),
                "chunk {n}: compressed without being asked to: {:?}",
                c.encoding
            );
            let bytes = json_chunk_bytes(&c);
            assert!(
                bytes == piece,
                "chunk {n}: JSON data differs from the source"
            );
            from_json.extend_from_slice(&bytes);

            let raw = raw_chunk(&http, &srv, &id, n, None).await;
            assert_eq!(raw.status, 200, "raw chunk {n}");
            assert!(
                raw.header("content-type")
                    .is_some_and(|t| t.starts_with("application/octet-stream")),
                "raw chunk {n}: content-type {:?}",
                raw.header("content-type")
            );
            assert_eq!(
                raw.header("x-checksum-md5"),
                Some(md5_hex(piece).as_str()),
                "raw chunk {n}: X-Checksum-MD5"
            );
            assert_eq!(
                raw.header("x-chunk-sequence"),
                Some(n.to_string().as_str()),
                "raw chunk {n}: X-Chunk-Sequence"
            );
            assert_eq!(
                raw.header("x-chunk-size"),
                Some(piece.len().to_string().as_str()),
                "raw chunk {n}: X-Chunk-Size"
            );
            assert_eq!(
                raw.header("x-chunk-last"),
                Some(if last { "true" } else { "false" }),
                "raw chunk {n}: X-Chunk-Last"
            );
            assert!(
                raw.header("content-encoding").is_none(),
                "raw chunk {n}: unexpected Content-Encoding"
            );
            assert!(
                raw.body.as_ref() == piece,
                "raw chunk {n}: body differs from the source"
            );
            from_raw.extend_from_slice(&raw.body);
        }
        assert!(from_json == range, "JSON chunks reassemble the range");
        assert!(from_raw == range, "raw chunks reassemble the range");
        assert_eq!(
            md5_hex(&from_json),
            r.checksum,
            "the session checksum matches the reassembled range"
        );

        // Only the session's range is served.
        let (status, body) = chunk_value(
            &http,
            &chunk_url(&srv, "default", &id, &format!("?chunk={}", r.chunk_count)),
            None,
        )
        .await;
        assert_error(
            "the chunk after the last",
            status,
            &body,
            404,
            "chunk_out_of_range",
        );
    });
}

/// Chunks that coincide with a 1 MiB block of the blob's index (including the short last
/// block) may take their MD5 from the index; every chunk's checksum must still be the MD5 of
/// its bytes, for aligned, unaligned and cut-short chunks alike.
#[test]
fn mib_chunks_on_and_off_the_blob_index_blocks_carry_the_right_md5() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = fast_random_bytes(3 * MIB as usize + MIB as usize / 2, 34);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let ranges: [(usize, i64); 4] = [
            (0, -1),
            (MIB as usize, 3 * MIB as i64 - 2),
            (MIB as usize + 1, -1),
            (2 * MIB as usize, 3 * MIB as i64 + 1000),
        ];
        for (start, end) in ranges {
            let r = open_stream(
                &http,
                &srv,
                "default",
                &json!({ "hash": hash, "chunk_size": MIB, "start_offset": start, "end_offset": end }),
            )
            .await;
            let last = if end == -1 {
                data.len() - 1
            } else {
                end as usize
            };
            let range = &data[start..=last];
            let mut from_json = Vec::new();
            for n in 0..r.chunk_count {
                let piece = &range
                    [n as usize * MIB as usize..((n as usize + 1) * MIB as usize).min(range.len())];
                let c = json_chunk(&http, &srv, &r.stream_id, n, None).await;
                assert_eq!(
                    c.checksum,
                    md5_hex(piece),
                    "range {start}..={end}, chunk {n}: JSON checksum"
                );
                from_json.extend(json_chunk_bytes(&c));
                let raw = raw_chunk(&http, &srv, &r.stream_id, n, Some("zstd")).await;
                assert_eq!(
                    raw.header("x-checksum-md5"),
                    Some(md5_hex(piece).as_str()),
                    "range {start}..={end}, chunk {n}: X-Checksum-MD5"
                );
                assert!(
                    decompress(&raw.body, raw.header("content-encoding")) == piece,
                    "range {start}..={end}, chunk {n}: raw bytes"
                );
            }
            assert!(from_json == range, "range {start}..={end}: reassembled");
            assert_eq!(
                r.checksum,
                md5_hex(range),
                "range {start}..={end}: session checksum"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// 2. Compression
// ---------------------------------------------------------------------------------------

#[test]
fn gzip_sessions_compress_text_chunks_and_leave_random_ones_alone() {
    let (srv, http) = server_and_client();
    block_on(async {
        let text = text_bytes(200_000);
        let random = random_bytes(200_000, 3);
        let text_hash = seed_blob(&http, &srv, "default", &text).await;
        let random_hash = seed_blob(&http, &srv, "default", &random).await;

        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": text_hash, "chunk_size": 65536, "enable_gzip": true }),
        )
        .await;
        assert!(r.enable_gzip, "the response echoes enable_gzip");
        let mut whole = Vec::new();
        for n in 0..r.chunk_count {
            let c = json_chunk(&http, &srv, &r.stream_id, n, None).await;
            assert!(c.is_compressed, "text chunk {n} is not compressed");
            assert_eq!(
                c.encoding.as_deref(),
                Some("gzip"),
                "text chunk {n}: encoding"
            );
            let wire = base64::engine::general_purpose::STANDARD
                .decode(&c.data)
                .unwrap();
            assert!(
                (wire.len() as u64) < c.size,
                "text chunk {n}: {} compressed bytes for {}",
                wire.len(),
                c.size
            );
            whole.extend(chunk_bytes(&c, &wire));
        }
        assert!(whole == text, "gzip chunks decompress to the blob");
        // Raw chunks of a gzip session are gzip too, with the MD5 of the uncompressed bytes.
        let raw = raw_chunk(&http, &srv, &r.stream_id, 0, None).await;
        assert_eq!(raw.status, 200);
        assert_eq!(
            raw.header("content-encoding"),
            Some("gzip"),
            "raw chunk of a gzip session"
        );
        let plain = decompress(&raw.body, Some("gzip"));
        assert!(
            plain == text[..65536],
            "raw gzip chunk decompresses to the source"
        );
        assert_eq!(
            raw.header("x-checksum-md5"),
            Some(md5_hex(&plain).as_str()),
            "raw gzip chunk: X-Checksum-MD5 of the uncompressed bytes"
        );
        assert_eq!(
            raw.header("x-chunk-size"),
            Some("65536"),
            "raw gzip chunk: X-Chunk-Size before compression"
        );

        // Random bytes do not shrink: sent as they are, and is_compressed says so.
        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": random_hash, "chunk_size": 65536, "enable_gzip": true }),
        )
        .await;
        let mut whole = Vec::new();
        for n in 0..r.chunk_count {
            let c = json_chunk(&http, &srv, &r.stream_id, n, None).await;
            assert!(!c.is_compressed, "random chunk {n} claims to be compressed");
            assert!(
                c.encoding.is_none(),
                "random chunk {n}: encoding {:?}",
                c.encoding
            );
            whole.extend(json_chunk_bytes(&c));
        }
        assert!(whole == random, "uncompressed chunks reassemble the blob");
        let raw = raw_chunk(&http, &srv, &r.stream_id, 1, None).await;
        assert!(
            raw.header("content-encoding").is_none(),
            "raw random chunk has Content-Encoding {:?}",
            raw.header("content-encoding")
        );
        assert!(raw.body.as_ref() == &random[65536..131072]);
    });
}

#[test]
fn accept_encoding_zstd_compresses_json_and_raw_chunks() {
    let (srv, http) = server_and_client();
    block_on(async {
        let text = text_bytes(150_000);
        let random = random_bytes(150_000, 4);
        let text_hash = seed_blob(&http, &srv, "default", &text).await;
        let random_hash = seed_blob(&http, &srv, "default", &random).await;

        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": text_hash, "chunk_size": 50_000 }),
        )
        .await;
        let mut from_json = Vec::new();
        let mut from_raw = Vec::new();
        for n in 0..r.chunk_count {
            let c = json_chunk(&http, &srv, &r.stream_id, n, Some("zstd")).await;
            assert!(
                c.is_compressed,
                "text chunk {n} with Accept-Encoding: zstd is not compressed"
            );
            assert_eq!(c.encoding.as_deref(), Some("zstd"), "chunk {n}: encoding");
            from_json.extend(json_chunk_bytes(&c));

            let raw = raw_chunk(&http, &srv, &r.stream_id, n, Some("zstd")).await;
            assert_eq!(raw.status, 200, "raw chunk {n}");
            assert_eq!(
                raw.header("content-encoding"),
                Some("zstd"),
                "raw chunk {n}: Content-Encoding"
            );
            assert!(
                raw.body.len() < 50_000,
                "raw chunk {n}: {} bytes on the wire",
                raw.body.len()
            );
            let plain = decompress(&raw.body, Some("zstd"));
            assert_eq!(
                raw.header("x-checksum-md5"),
                Some(md5_hex(&plain).as_str()),
                "raw chunk {n}: X-Checksum-MD5 of the uncompressed bytes"
            );
            from_raw.extend(plain);
        }
        assert!(from_json == text, "zstd JSON chunks decompress to the blob");
        assert!(from_raw == text, "zstd raw chunks decompress to the blob");
        // The same session without Accept-Encoding: plain.
        let c = json_chunk(&http, &srv, &r.stream_id, 0, None).await;
        assert!(!c.is_compressed, "no Accept-Encoding, no compression");
        // A gzip session still answers zstd to a client that accepts it.
        let g = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": text_hash, "enable_gzip": true }),
        )
        .await;
        let c = json_chunk(&http, &srv, &g.stream_id, 0, Some("zstd")).await;
        assert!(
            c.is_compressed && c.encoding.is_some(),
            "gzip session with Accept-Encoding: zstd"
        );
        json_chunk_bytes(&c);

        // Random bytes are not compressed even when zstd is accepted.
        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": random_hash, "chunk_size": 50_000 }),
        )
        .await;
        let c = json_chunk(&http, &srv, &r.stream_id, 0, Some("zstd")).await;
        assert!(
            !c.is_compressed && c.encoding.is_none(),
            "random chunk compressed: {:?}",
            c.encoding
        );
        assert!(json_chunk_bytes(&c) == random[..50_000]);
        let raw = raw_chunk(&http, &srv, &r.stream_id, 1, Some("zstd")).await;
        assert!(
            raw.header("content-encoding").is_none(),
            "random raw chunk: Content-Encoding {:?}",
            raw.header("content-encoding")
        );
        assert!(raw.body.as_ref() == &random[50_000..100_000]);
    });
}

// ---------------------------------------------------------------------------------------
// 3. Progress, cancel, expiry, metrics
// ---------------------------------------------------------------------------------------

#[test]
fn progress_counts_distinct_chunks_until_completed() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(50_000, 5);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": 10_240 }),
        )
        .await;
        assert_eq!(r.chunk_count, 5);
        let id = r.stream_id.clone();
        assert_eq!(
            gauge(&srv, "govcfs_stream_sessions_active"),
            1.0,
            "one session open"
        );
        let sent_before = gauge(&srv, "govcfs_blob_bytes_sent_total");

        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!(p.stream_id, id);
        assert_eq!(
            (p.bytes_streamed, p.chunks_streamed, p.status.as_str()),
            (0, 0, "streaming"),
            "before any chunk: {p:?}"
        );
        assert_eq!(
            (p.total_bytes, p.total_chunks),
            (50_000, 5),
            "totals: {p:?}"
        );
        assert!(
            p.transfer_rate_mbps >= 0.0 && p.estimated_eta_seconds >= 0.0,
            "{p:?}"
        );

        // Chunk 1 twice counts once.
        json_chunk(&http, &srv, &id, 1, None).await;
        raw_chunk(&http, &srv, &id, 1, None).await;
        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!(
            (p.bytes_streamed, p.chunks_streamed, p.status.as_str()),
            (10_240, 1, "streaming"),
            "after chunk 1 twice: {p:?}"
        );
        // The short last chunk counts its real size.
        json_chunk(&http, &srv, &id, 4, None).await;
        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!(
            (p.bytes_streamed, p.chunks_streamed, p.status.as_str()),
            (10_240 + 9_040, 2, "streaming"),
            "after chunk 4: {p:?}"
        );
        assert!(
            p.transfer_rate_mbps >= 0.0 && p.estimated_eta_seconds >= 0.0,
            "{p:?}"
        );
        for n in [0, 2, 3] {
            json_chunk(&http, &srv, &id, n, None).await;
        }
        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!(
            (p.bytes_streamed, p.chunks_streamed, p.status.as_str()),
            (50_000, 5, "completed"),
            "after every chunk: {p:?}"
        );
        assert_eq!((p.total_bytes, p.total_chunks), (50_000, 5));
        assert!(p.transfer_rate_mbps >= 0.0, "{p:?}");
        // Fetching again does not count twice.
        json_chunk(&http, &srv, &id, 0, None).await;
        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!(
            (p.bytes_streamed, p.chunks_streamed, p.status.as_str()),
            (50_000, 5, "completed"),
            "after a repeat: {p:?}"
        );

        // Every chunk sent counts in govcfs_blob_bytes_sent_total (repeats included).
        let sent = gauge(&srv, "govcfs_blob_bytes_sent_total") - sent_before;
        let expected = (10_240 * 2 + 9_040 + 10_240 * 3 + 10_240) as f64;
        assert_eq!(
            sent, expected,
            "govcfs_blob_bytes_sent_total grew by the chunk bytes sent"
        );
    });
}

#[test]
fn cancel_ends_a_session_and_later_chunks_get_410() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(40_000, 6);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": 8192 }),
        )
        .await;
        let id = r.stream_id.clone();
        json_chunk(&http, &srv, &id, 0, None).await;
        assert_eq!(
            gauge(&srv, "govcfs_stream_sessions_active"),
            1.0,
            "one session open"
        );

        let (status, body) = cancel_stream(&http, &srv, "default", &id).await;
        assert_eq!(status, 200, "cancel: {body}");
        assert_eq!(
            body["status"], "cancelled",
            "cancel answers the progress: {body}"
        );
        assert_eq!(body["stream_id"], id.as_str(), "{body}");
        assert_eq!(body["chunks_streamed"], 1, "{body}");
        assert_eq!(
            gauge(&srv, "govcfs_stream_sessions_active"),
            0.0,
            "a cancelled session is closed"
        );

        for n in [0, 1] {
            let (status, body) = chunk_value(
                &http,
                &chunk_url(&srv, "default", &id, &format!("?chunk={n}")),
                None,
            )
            .await;
            assert_error(
                &format!("JSON chunk {n} after cancel"),
                status,
                &body,
                410,
                "stream_cancelled",
            );
        }
        let raw = raw_chunk(&http, &srv, &id, 1, None).await;
        assert_eq!(raw.status, 410, "raw chunk after cancel");
        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!(
            (p.status.as_str(), p.chunks_streamed, p.bytes_streamed),
            ("cancelled", 1, 8192),
            "progress after cancel: {p:?}"
        );
        let (status, body) = cancel_stream(&http, &srv, "default", &id).await;
        assert_error("cancel twice", status, &body, 410, "stream_cancelled");
    });
}

#[test]
fn idle_sessions_expire_after_the_stream_timeout() {
    let (srv, http) = server_and_client_with(&["--stream-timeout", "1"]);
    let (idle, done) = block_on(async {
        let data = random_bytes(3000, 7);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let opened = Instant::now();
        let idle = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": 1024 }),
        )
        .await;
        let done = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": 4096 }),
        )
        .await;
        json_chunk(&http, &srv, &done.stream_id, 0, None).await;
        let active = gauge(&srv, "govcfs_stream_sessions_active");
        // Only meaningful if the sessions cannot have expired yet (a loaded machine may be slow).
        if opened.elapsed() < Duration::from_millis(900) {
            assert!(active >= 1.0, "the gauge counts open sessions: {active}");
        }
        (idle.stream_id, done.stream_id)
    });
    // Poll the gauge (the metrics route does not touch sessions; the progress route would).
    std::thread::sleep(Duration::from_millis(1500));
    let expired = wait_until(Duration::from_secs(30), || {
        srv.metric("govcfs_stream_sessions_active") == Some(0.0)
    });
    assert!(
        expired,
        "govcfs_stream_sessions_active did not drop to 0: {:?}",
        srv.metric("govcfs_stream_sessions_active")
    );
    block_on(async {
        for id in [&idle, &done] {
            let (status, body) =
                chunk_value(&http, &chunk_url(&srv, "default", id, "?chunk=0"), None).await;
            assert_error(
                "chunk of an expired session",
                status,
                &body,
                410,
                "stream_expired",
            );
        }
        let p = progress(&http, &srv, "default", &idle).await;
        assert_eq!(p.status, "expired", "progress of an expired session: {p:?}");
        let p = progress(&http, &srv, "default", &done).await;
        assert!(
            p.status == "completed" || p.status == "expired",
            "progress of a completed, then expired session: {p:?}"
        );
        assert_eq!(p.chunks_streamed, 1, "{p:?}");
    });
    assert_eq!(
        gauge(&srv, "govcfs_stream_sessions_active"),
        0.0,
        "gauge after expiry"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Bad input
// ---------------------------------------------------------------------------------------

#[test]
fn start_refuses_unknown_hashes_bad_ranges_and_malformed_bodies() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(10_000, 8);
        let hash = seed_blob(&http, &srv, "default", &data).await;

        let upper = hash.to_uppercase();
        for bad in ["xyz", "../../etc/passwd", "", &hash[..63], upper.as_str()] {
            let (status, body) =
                start_stream(&http, &srv, "default", &json!({ "hash": bad })).await;
            assert_error_in(
                &format!("malformed hash {bad:?}"),
                status,
                &body,
                &[400, 404],
            );
        }
        let (status, body) =
            start_stream(&http, &srv, "default", &json!({ "chunk_size": 1024 })).await;
        assert_error_in("missing hash", status, &body, &[400, 404]);
        let unknown_hash = json!({ "hash": "0".repeat(64) });
        let known_hash = json!({ "hash": hash });
        assert_error_cases(vec![
            error_case(
                "unknown hash",
                start_stream(&http, &srv, "default", &unknown_hash),
                404,
                "not_found",
            ),
            error_case(
                "unknown repository",
                start_stream(&http, &srv, "nope", &known_hash),
                404,
                "not_found",
            ),
        ])
        .await;

        // Unsatisfiable ranges of a 10 000-byte blob.
        for (start, end) in [
            (20i64, 10i64),
            (0, 10_000),
            (0, 50_000),
            (10_001, -1),
            (10_000, 10_000),
            (5000, 4998),
        ] {
            let (status, body) = start_stream(
                &http,
                &srv,
                "default",
                &json!({ "hash": hash, "start_offset": start, "end_offset": end }),
            )
            .await;
            assert_error(
                &format!("range {start}..={end}"),
                status,
                &body,
                416,
                "range_not_satisfiable",
            );
        }
        for (start, end) in [(-1i64, -1i64), (-5, 100), (0, -2)] {
            let (status, body) = start_stream(
                &http,
                &srv,
                "default",
                &json!({ "hash": hash, "start_offset": start, "end_offset": end }),
            )
            .await;
            assert_error_in(
                &format!("negative range {start}..={end}"),
                status,
                &body,
                &[400, 416],
            );
        }

        // Malformed bodies.
        for text in [
            "{",
            "[]",
            "",
            "null",
            "{\"hash\": 5}",
            "{\"hash\": \"x\", \"chunk_size\": -1}",
            "{\"hash\": \"x\", \"chunk_size\": \"big\"}",
            "{\"hash\": \"x\", \"start_offset\": 1.5}",
        ] {
            let r = http
                .post(format!("{}/stream/blob/start", srv.api("default")))
                .header("content-type", "application/json")
                .body(text)
                .send()
                .await
                .unwrap();
            let (status, body) = json_of(r).await;
            assert_error(
                &format!("start body {text:?}"),
                status,
                &body,
                400,
                "bad_request",
            );
        }
    });
    assert_eq!(
        gauge(&srv, "govcfs_stream_sessions_active"),
        0.0,
        "no refused request opened a session"
    );
    assert!(
        !srv.log().contains("internal error"),
        "server log: {}",
        srv.log()
    );
}

#[test]
fn chunk_route_refuses_bad_chunk_numbers_and_unknown_sessions() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(5000, 9);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": 1024 }),
        )
        .await;
        assert_eq!(r.chunk_count, 5);
        let id = r.stream_id.clone();

        for query in [
            "?chunk=-1",
            "?chunk=abc",
            "",
            "?chunk=",
            "?chunk=1.5",
            "?chunk=99999999999999999999999",
            "?other=1",
        ] {
            let (status, body) =
                chunk_value(&http, &chunk_url(&srv, "default", &id, query), None).await;
            assert_error(
                &format!("chunk query {query:?}"),
                status,
                &body,
                400,
                "bad_request",
            );
        }
        for n in [5u64, 6, 1 << 40, u64::MAX] {
            let (status, body) = chunk_value(
                &http,
                &chunk_url(&srv, "default", &id, &format!("?chunk={n}")),
                None,
            )
            .await;
            assert_error(
                &format!("chunk {n} of 5"),
                status,
                &body,
                404,
                "chunk_out_of_range",
            );
        }
        // None of that counted as progress.
        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!((p.chunks_streamed, p.bytes_streamed), (0, 0), "{p:?}");

        for unknown in ["00000000-0000-0000-0000-000000000000", "nope"] {
            let what = format!("unknown session {unknown}");
            let cases = session_route_cases(
                &http,
                &srv,
                "default",
                unknown,
                &what,
                404,
                "stream_not_found",
            );
            assert_error_cases(cases).await;
        }
    });
    assert!(
        !srv.log().contains("internal error"),
        "server log: {}",
        srv.log()
    );
}

#[test]
fn a_session_is_served_only_from_its_own_repository() {
    let (srv, http) = server_and_client();
    block_on(async {
        let (status, body) = json_of(
            http.post(format!("{}/api/v1/repos", srv.url()))
                .json(&json!({ "id": "other" }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "create repo other: {body}");
        let data = random_bytes(4096, 10);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let r = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": 1024 }),
        )
        .await;
        let id = r.stream_id.clone();

        let what = "a session through another repository";
        let cases = session_route_cases(&http, &srv, "other", &id, what, 404, "stream_not_found");
        assert_error_cases(cases).await;

        // The session is untouched in its own repository.
        let c = json_chunk(&http, &srv, &id, 0, None).await;
        assert!(json_chunk_bytes(&c) == data[..1024]);
        // The blob is not in the other repository either.
        let (status, body) = start_stream(&http, &srv, "other", &json!({ "hash": hash })).await;
        assert_error(
            "start on a blob of another repository",
            status,
            &body,
            404,
            "not_found",
        );
    });
}

/// Ended (cancelled or expired) sessions are remembered without their repository: another
/// repository's routes answer 410 for them, and its progress route returns their progress.
#[test]
fn an_ended_session_is_not_visible_from_another_repository() {
    let (srv, http) = server_and_client();
    block_on(async {
        let (status, body) = json_of(
            http.post(format!("{}/api/v1/repos", srv.url()))
                .json(&json!({ "id": "other" }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "create repo other: {body}");
        let data = random_bytes(4096, 10);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let id = open_stream(
            &http,
            &srv,
            "default",
            &json!({ "hash": hash, "chunk_size": 1024 }),
        )
        .await
        .stream_id;
        let (status, _) = cancel_stream(&http, &srv, "default", &id).await;
        assert_eq!(status, 200);
        let what = "another repository's cancelled session";
        let cases = session_route_cases(&http, &srv, "other", &id, what, 404, "stream_not_found");
        assert_error_cases(cases).await;
    });
}

#[test]
fn sessions_beyond_max_stream_sessions_get_429() {
    let (srv, http) = server_and_client_with(&["--max-stream-sessions", "3"]);
    block_on(async {
        let data = random_bytes(2048, 11);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(
                open_stream(&http, &srv, "default", &json!({ "hash": hash }))
                    .await
                    .stream_id,
            );
        }
        assert_eq!(gauge(&srv, "govcfs_stream_sessions_active"), 3.0);
        let (status, body) = start_stream(&http, &srv, "default", &json!({ "hash": hash })).await;
        assert_error("a fourth session", status, &body, 429, "too_many_sessions");

        // The WebSocket shares the table.
        let mut ws = ws_connect(&srv).await;
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(StreamRequest::whole(&hash, 0)),
        )
        .await;
        let (code, _) = ws_expect_error(&mut ws, "WebSocket request with a full table").await;
        assert_eq!(code, "too_many_sessions");

        // Closing one frees a slot.
        let (status, _) = cancel_stream(&http, &srv, "default", &ids[0]).await;
        assert_eq!(status, 200);
        open_stream(&http, &srv, "default", &json!({ "hash": hash })).await;
        let (status, body) = start_stream(&http, &srv, "default", &json!({ "hash": hash })).await;
        assert_error("full again", status, &body, 429, "too_many_sessions");
    });
}

// ---------------------------------------------------------------------------------------
// 5. Streamed uploads
// ---------------------------------------------------------------------------------------

#[test]
fn raw_stream_upload_stores_the_body_under_its_git_blob_id() {
    let (srv, http) = server_and_client();
    block_on(async {
        // Larger than one of the server's 4 MiB pieces.
        let data = random_bytes(5 * MIB as usize + 3, 12);
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[("content-type", "application/octet-stream")],
            data.clone().into(),
        )
        .await;
        let info = assert_uploaded("raw upload", status, &body, &data, false);
        assert!(
            stored_blob(&http, &srv, &info.hash).await == data,
            "stored bytes"
        );

        // Without Content-Length (chunked transfer encoding).
        let small = random_bytes(300_000, 13);
        let pieces: Vec<Bytes> = small.chunks(70_000).map(Bytes::copy_from_slice).collect();
        let (status, body) = stream_upload(&http, &srv, &[], stream_body(pieces)).await;
        let info = assert_uploaded("chunked raw upload", status, &body, &small, false);
        assert!(
            stored_blob(&http, &srv, &info.hash).await == small,
            "stored bytes"
        );

        let (status, body) = stream_upload(&http, &srv, &[], Vec::new().into()).await;
        assert_uploaded("empty raw upload", status, &body, b"", false);
    });
    assert_eq!(tmp_files(&srv), Vec::<PathBuf>::new(), "tmp/ after uploads");
}

#[test]
fn multipart_stream_upload_concatenates_the_parts_in_order() {
    let (srv, http) = server_and_client();
    block_on(async {
        let parts = [
            Bytes::from(random_bytes(1_000_000, 14)),
            Bytes::from_static(b"a small middle part\n"),
            Bytes::from(random_bytes(3 * MIB as usize + 11, 15)),
        ];
        let whole: Vec<u8> = parts.concat();
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[("content-type", &multipart_content_type())],
            multipart_body(&parts).into(),
        )
        .await;
        let info = assert_uploaded("multipart upload", status, &body, &whole, false);
        assert!(
            stored_blob(&http, &srv, &info.hash).await == whole,
            "the blob is the parts in order"
        );

        // The same parts streamed in 1 MiB pieces without Content-Length.
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[("content-type", &multipart_content_type())],
            stream_body(multipart_pieces(&parts)),
        )
        .await;
        assert_uploaded("streamed multipart upload", status, &body, &whole, false);

        // Reversed order gives the other concatenation.
        let reversed = [parts[2].clone(), parts[1].clone(), parts[0].clone()];
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[("content-type", &multipart_content_type())],
            multipart_body(&reversed).into(),
        )
        .await;
        assert_uploaded(
            "reversed multipart upload",
            status,
            &body,
            &reversed.concat(),
            false,
        );
    });
    assert_eq!(tmp_files(&srv), Vec::<PathBuf>::new(), "tmp/ after uploads");
}

#[test]
fn zstd_and_gzip_upload_bodies_are_stored_decompressed() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = text_bytes(3 * MIB as usize + 5);
        let zstd_body = zstd::encode_all(&data[..], 3).unwrap();
        assert!(zstd_body.len() < data.len() / 4, "the text compresses");
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[("content-encoding", "zstd")],
            zstd_body.into(),
        )
        .await;
        let info = assert_uploaded("zstd upload", status, &body, &data, true);
        assert!(
            stored_blob(&http, &srv, &info.hash).await == data,
            "zstd upload stored decompressed"
        );

        let other = text_bytes(1_234_567);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&other).unwrap();
        let gzip_body = gz.finish().unwrap();
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[("content-encoding", "gzip")],
            gzip_body.into(),
        )
        .await;
        let info = assert_uploaded("gzip upload", status, &body, &other, true);
        assert!(
            stored_blob(&http, &srv, &info.hash).await == other,
            "gzip upload stored decompressed"
        );

        // A zstd-compressed multipart body.
        let parts = [
            Bytes::from(text_bytes(100_000)),
            Bytes::from(random_bytes(50_000, 16)),
        ];
        let compressed = zstd::encode_all(&multipart_body(&parts)[..], 3).unwrap();
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[
                ("content-type", &multipart_content_type()),
                ("content-encoding", "zstd"),
            ],
            compressed.into(),
        )
        .await;
        assert_uploaded(
            "zstd multipart upload",
            status,
            &body,
            &parts.concat(),
            true,
        );
    });
    assert_eq!(tmp_files(&srv), Vec::<PathBuf>::new(), "tmp/ after uploads");
}

#[test]
fn corrupt_or_unsupported_upload_bodies_are_refused_and_nothing_is_kept() {
    let (srv, http) = server_and_client();
    let before = objects_of(&srv, "default");
    let garbage = random_bytes(100_000, 17);
    let multipart = multipart_content_type();
    // A multipart body cut before its closing boundary.
    let mut cut = multipart_body(&[Bytes::from(random_bytes(50_000, 18))]);
    cut.truncate(cut.len() - 40);
    // (name, headers, body, status, error code).
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "invalid zstd body",
            vec![("content-encoding", "zstd")],
            garbage.clone(),
            400,
            "bad_request",
        ),
        (
            "invalid gzip body",
            vec![("content-encoding", "gzip")],
            garbage.clone(),
            400,
            "bad_request",
        ),
        (
            "brotli body",
            vec![("content-encoding", "br")],
            garbage.clone(),
            415,
            "unsupported_encoding",
        ),
        (
            "multipart without a boundary",
            vec![("content-type", "multipart/form-data")],
            garbage.clone(),
            400,
            "bad_request",
        ),
        (
            "multipart body without parts",
            vec![("content-type", multipart.as_str())],
            garbage.clone(),
            400,
            "bad_request",
        ),
        (
            "truncated multipart body",
            vec![("content-type", multipart.as_str())],
            cut,
            400,
            "bad_request",
        ),
    ];
    for (what, headers, body, want_status, want_code) in cases {
        let r = raw_upload(&srv, &headers, body, false);
        let (status, body) = (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        );
        assert_error(what, status, &body, want_status, want_code);
    }
    assert_eq!(
        objects_of(&srv, "default"),
        before,
        "refused uploads stored objects"
    );
    assert_eq!(
        tmp_files(&srv),
        Vec::<PathBuf>::new(),
        "tmp/ after refused uploads"
    );
    block_on(async {
        assert_eq!(
            blob_status(&http, &srv, &blob_id(&garbage)).await,
            404,
            "the garbage was not stored raw"
        );
        let (status, body) = stream_upload(&http, &srv, &[], Vec::new().into()).await;
        assert_uploaded(
            "an empty upload after refused ones",
            status,
            &body,
            b"",
            false,
        );
    });
    assert!(
        !srv.log().contains("internal error"),
        "server log: {}",
        srv.log()
    );
}

/// A zstd or gzip body cut short is not a valid encoding: storing what was decoded so far
/// would keep a truncated file under a valid-looking id.
#[test]
fn truncated_compressed_upload_bodies_are_refused() {
    let srv = ServerProcess::start();
    let before = objects_of(&srv, "default");
    let data = text_bytes(2 * MIB as usize);
    let zstd_body = zstd::encode_all(&data[..], 3).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&data).unwrap();
    let gzip_body = gz.finish().unwrap();
    for (encoding, body) in [("zstd", zstd_body), ("gzip", gzip_body)] {
        let cut = body[..body.len() / 2].to_vec();
        let r = raw_upload(&srv, &[("content-encoding", encoding)], cut, false);
        let value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert_error(
            &format!("truncated {encoding} body"),
            r.status,
            &value,
            400,
            "bad_request",
        );
    }
    assert_eq!(
        objects_of(&srv, "default"),
        before,
        "a truncated upload was stored"
    );
    assert_eq!(
        tmp_files(&srv),
        Vec::<PathBuf>::new(),
        "tmp/ after refused uploads"
    );
}

#[test]
fn stream_uploads_over_max_upload_size_get_413_and_keep_nothing() {
    let (srv, http) = server_and_client_with(&["--max-upload-size", "1M"]);
    let before = objects_of(&srv, "default");
    let big = random_bytes(2 * MIB as usize, 19);
    let parts = [
        Bytes::from(big[..MIB as usize].to_vec()),
        Bytes::from(big[MIB as usize..].to_vec()),
    ];
    let multipart = multipart_content_type();
    // Decompression bombs: tiny bodies that expand past the limit.
    let zeros = vec![0u8; 2 * MIB as usize];
    let zstd_bomb = zstd::encode_all(&zeros[..], 19).unwrap();
    assert!(
        zstd_bomb.len() < 4096,
        "the zstd bomb is small: {}",
        zstd_bomb.len()
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&zeros).unwrap();
    let gzip_bomb = gz.finish().unwrap();

    // (name, headers, body, chunked).
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, bool);
    let cases: Vec<Case> = vec![
        ("2 MiB raw body", vec![], big.clone(), false),
        ("2 MiB raw body, chunked", vec![], big.clone(), true),
        (
            "2 MiB multipart body",
            vec![("content-type", multipart.as_str())],
            multipart_body(&parts),
            false,
        ),
        (
            "2 MiB multipart body, chunked",
            vec![("content-type", multipart.as_str())],
            multipart_body(&parts),
            true,
        ),
        (
            "zstd bomb",
            vec![("content-encoding", "zstd")],
            zstd_bomb,
            false,
        ),
        (
            "gzip bomb",
            vec![("content-encoding", "gzip")],
            gzip_bomb,
            false,
        ),
    ];
    for (what, headers, body, chunked) in cases {
        let r = raw_upload(&srv, &headers, body, chunked);
        let value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert_error(what, r.status, &value, 413, "too_large");
    }
    assert_eq!(
        objects_of(&srv, "default"),
        before,
        "refused uploads stored objects"
    );
    assert_eq!(
        tmp_files(&srv),
        Vec::<PathBuf>::new(),
        "tmp/ after refused uploads"
    );
    block_on(async {
        for (what, bytes) in [("random", &big[..]), ("zeros", &zeros[..])] {
            assert_eq!(
                blob_status(&http, &srv, &blob_id(bytes)).await,
                404,
                "{what}: a refused upload was stored"
            );
        }
        // Exactly the limit is accepted.
        let exact = random_bytes(MIB as usize, 20);
        let (status, body) = stream_upload(&http, &srv, &[], exact.clone().into()).await;
        assert_uploaded("exactly 1 MiB", status, &body, &exact, false);
    });
}

/// The server refuses some uploads before reading their body (a `Content-Length` over the
/// limit, an unsupported or corrupt `Content-Encoding`) and then closes the connection with
/// the rest of the body unread. The kernel answers the unread data with a reset, and an
/// ordinary HTTP client (reqwest, which the project's own client uses) often gets
/// "connection closed before message completed" instead of the 413/415/400. Seen about one
/// time in three on loopback. The other tests use [`raw_upload`], which reads while it writes.
#[test]
fn early_upload_refusals_reach_an_ordinary_http_client() {
    let (srv, http) = server_and_client_with(&["--max-upload-size", "1M"]);
    let garbage = random_bytes(100_000, 30);
    let big = random_bytes(2 * MIB as usize, 31);
    block_on(async {
        let url = format!("{}/stream/blob/upload", srv.api("default"));
        let mut lost = Vec::new();
        for attempt in 0..10 {
            for (what, encoding, body, want) in [
                ("brotli", Some("br"), &garbage, 415),
                ("corrupt zstd", Some("zstd"), &garbage, 400),
                ("over the limit", None, &big, 413),
            ] {
                let mut request = http.post(&url).body(body.clone());
                if let Some(e) = encoding {
                    request = request.header("content-encoding", e);
                }
                match request.send().await {
                    Ok(r) => assert_eq!(r.status().as_u16(), want, "{what}"),
                    Err(e) => lost.push(format!("{what} #{attempt}: {e}")),
                }
            }
        }
        assert!(
            lost.is_empty(),
            "{} of 30 refusals were lost: {lost:#?}",
            lost.len()
        );
    });
}

#[test]
fn a_64_mib_multipart_upload_streams_in_bounded_server_memory() {
    let (srv, http) = server_and_client();
    let data = Bytes::from(fast_random_bytes(64 * MIB as usize, 21));
    let id = blob_id(&data);
    let parts = [
        data.slice(..40 * MIB as usize),
        data.slice(40 * MIB as usize..),
    ];
    let peak_before = srv.peak_rss_kib().expect("VmHWM of the server");
    block_on(async {
        let (status, body) = stream_upload(
            &http,
            &srv,
            &[("content-type", &multipart_content_type())],
            stream_body(multipart_pieces(&parts)),
        )
        .await;
        assert_success("64 MiB multipart upload", status, &body);
        assert_eq!(body["hash"], id.as_str(), "{body}");
        assert_eq!(body["size"], 64 * MIB, "{body}");
        assert_eq!(body["compressed"], false, "{body}");
    });
    let peak_after = srv.peak_rss_kib().expect("VmHWM of the server");
    let growth_mib = peak_after.saturating_sub(peak_before) / 1024;
    assert!(
        growth_mib < 100,
        "the server's peak RSS grew by {growth_mib} MiB for a 64 MiB upload ({peak_before} -> {peak_after} KiB)"
    );
    block_on(async {
        assert!(
            stored_blob(&http, &srv, &id).await == data,
            "stored bytes of the 64 MiB upload"
        );
    });
}

/// A client that disconnects halfway through a streamed upload leaves nothing behind.
#[test]
fn an_interrupted_stream_upload_leaves_no_temporary_file() {
    let srv = ServerProcess::start();
    let mut stream = std::net::TcpStream::connect(srv.addr).expect("connect");
    let head = format!(
        "POST /api/v1/repos/default/stream/blob/upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        srv.addr,
        20 * MIB
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(&random_bytes(9 * MIB as usize, 22))
        .unwrap();
    stream.flush().unwrap();
    // Let the server write a piece or two to its temporary object, then hang up.
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    let clean = wait_until(Duration::from_secs(15), || tmp_files(&srv).is_empty());
    assert!(
        clean,
        "temporary files left after a client hung up: {:?}",
        tmp_files(&srv)
    );
}

// ---------------------------------------------------------------------------------------
// 6. WebSocket
// ---------------------------------------------------------------------------------------

#[test]
fn websocket_streams_a_range_with_progress_frames() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(100_000, 23);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let mut ws = ws_connect(&srv).await;
        // 60 000 bytes in 2 KiB chunks: 30 chunks (a multiple of 10), then one of 25.
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash, 2048, 1000, 60_999)),
        )
        .await;
        let response = ws_expect_response(&mut ws, "range request").await;
        assert_eq!(
            (
                response.start_offset,
                response.end_offset,
                response.chunk_count
            ),
            (1000, 60_999, 30),
            "{response:?}"
        );
        let run = ws_read_stream(&mut ws, response, false).await;
        assert_ws_run_complete("30-chunk range", &run, &data[1000..61_000]);
        assert!(
            run.progress.len() >= 3,
            "progress frames at 10, 20 and the end: {:?}",
            run.progress.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );

        let r = StreamRequest {
            enable_gzip: true,
            ..stream_request(&hash, 1024, 0, 25 * 1024 - 1)
        };
        ws_send(&mut ws, &WsClientMessage::Stream(r)).await;
        let response = ws_expect_response(&mut ws, "second request").await;
        let run = ws_read_stream(&mut ws, response, false).await;
        assert_ws_run_complete("25-chunk range", &run, &data[..25 * 1024]);
        assert!(
            run.chunks.iter().all(|c| !c.is_compressed),
            "random chunks compressed over the WebSocket"
        );

        // HTTP sees the WebSocket session's final progress.
        let p = progress(&http, &srv, "default", &run.response.stream_id).await;
        assert_eq!(
            (p.status.as_str(), p.chunks_streamed),
            ("completed", 25),
            "{p:?}"
        );
    });
}

#[test]
fn websocket_serves_several_requests_on_one_connection_in_order() {
    let (srv, http) = server_and_client();
    block_on(async {
        let a = random_bytes(30_000, 24);
        let b = text_bytes(70_000);
        let hash_a = seed_blob(&http, &srv, "default", &a).await;
        let hash_b = seed_blob(&http, &srv, "default", &b).await;
        let mut ws = ws_connect(&srv).await;
        // Both requests at once: the second waits for the first.
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash_a, 1024, 0, -1)),
        )
        .await;
        let gz = StreamRequest {
            enable_gzip: true,
            ..stream_request(&hash_b, 4096, 100, -1)
        };
        ws_send(&mut ws, &WsClientMessage::Stream(gz)).await;
        let first = ws_expect_response(&mut ws, "first request").await;
        assert_eq!(first.hash, hash_a);
        let run = ws_read_stream(&mut ws, first, false).await;
        assert_ws_run_complete("first request", &run, &a);
        let second = ws_expect_response(&mut ws, "second request").await;
        assert_eq!(second.hash, hash_b);
        assert!(second.enable_gzip);
        let run = ws_read_stream(&mut ws, second, false).await;
        assert_ws_run_complete("second request", &run, &b[100..]);
        assert!(
            run.chunks
                .iter()
                .all(|c| c.is_compressed && c.encoding.as_deref() == Some("gzip")),
            "text chunks with enable_gzip are gzip"
        );
        // And a third after both finished.
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash_a, 0, 5, 5)),
        )
        .await;
        let third = ws_expect_response(&mut ws, "third request").await;
        let run = ws_read_stream(&mut ws, third, false).await;
        assert_ws_run_complete("one-byte request", &run, &a[5..6]);
        ws.close(None).await.ok();
    });
}

#[test]
fn websocket_binary_mode_sends_chunk_bytes_in_binary_frames() {
    let (srv, http) = server_and_client();
    block_on(async {
        let random = random_bytes(40_000, 25);
        let text = text_bytes(40_000);
        let hash_r = seed_blob(&http, &srv, "default", &random).await;
        let hash_t = seed_blob(&http, &srv, "default", &text).await;
        let mut ws = ws_connect(&srv).await;
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(StreamRequest {
                binary: true,
                ..stream_request(&hash_r, 3000, 7, 38_006)
            }),
        )
        .await;
        let response = ws_expect_response(&mut ws, "binary request").await;
        let run = ws_read_stream(&mut ws, response, true).await;
        assert_ws_run_complete("binary random range", &run, &random[7..38_007]);

        // Compressed chunks travel compressed in the binary frame.
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(StreamRequest {
                binary: true,
                enable_gzip: true,
                ..stream_request(&hash_t, 8192, 0, -1)
            }),
        )
        .await;
        let response = ws_expect_response(&mut ws, "binary gzip request").await;
        let run = ws_read_stream(&mut ws, response, true).await;
        assert_ws_run_complete("binary gzip text", &run, &text);
        assert!(
            run.chunks.iter().all(|c| c.is_compressed),
            "text chunks with enable_gzip are compressed"
        );
    });
}

#[test]
fn websocket_errors_are_frames_and_the_connection_stays_usable() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = random_bytes(12_000, 26);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let mut ws = ws_connect(&srv).await;
        for bad in [
            "{",
            "[]",
            "",
            "null",
            r#"{"type":"nope","hash":"x"}"#,
            r#"{"chunk_size":1024}"#,
            r#"{"type":"cancel"}"#,
            r#"{"hash":"x","start_offset":"a"}"#,
        ] {
            ws_send_text(&mut ws, bad).await;
            let (code, _) = ws_expect_error(&mut ws, &format!("malformed message {bad:?}")).await;
            assert_eq!(code, "bad_request", "malformed message {bad:?}");
        }
        tokio::time::timeout(
            Duration::from_secs(10),
            ws.send(Message::binary(b"{}".to_vec())),
        )
        .await
        .unwrap()
        .unwrap();
        let (code, _) = ws_expect_error(&mut ws, "a binary frame from the client").await;
        assert_eq!(code, "bad_request");

        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash, 4096, 0, -1)),
        )
        .await;
        let response = ws_expect_response(&mut ws, "a valid request after malformed ones").await;
        let run = ws_read_stream(&mut ws, response, false).await;
        assert_ws_run_complete("after malformed messages", &run, &data);

        // Failures of well-formed requests.
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(StreamRequest::whole(&"0".repeat(64), 0)),
        )
        .await;
        let (code, _) = ws_expect_error(&mut ws, "unknown hash").await;
        assert_eq!(code, "not_found", "unknown hash");
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash, 0, 20, 10)),
        )
        .await;
        let (code, _) = ws_expect_error(&mut ws, "reversed range").await;
        assert_eq!(code, "range_not_satisfiable", "reversed range");
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(StreamRequest::whole("xyz", 0)),
        )
        .await;
        let (code, _) = ws_expect_error(&mut ws, "malformed hash").await;
        assert!(
            code == "bad_request" || code == "not_found",
            "malformed hash: {code}"
        );
        ws_send(
            &mut ws,
            &WsClientMessage::Cancel {
                stream_id: "00000000-0000-0000-0000-000000000000".into(),
            },
        )
        .await;
        let (code, stream_id) = ws_expect_error(&mut ws, "cancel of an unknown stream").await;
        assert_eq!(code, "stream_not_found");
        assert_eq!(
            stream_id.as_deref(),
            Some("00000000-0000-0000-0000-000000000000"),
            "the error names the stream"
        );

        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash, 1024, 100, 5099)),
        )
        .await;
        let response = ws_expect_response(&mut ws, "a valid request after failed ones").await;
        let run = ws_read_stream(&mut ws, response, false).await;
        assert_ws_run_complete("after failed requests", &run, &data[100..5100]);
    });
}

#[test]
fn websocket_cancel_stops_a_running_stream() {
    let (srv, http) = server_and_client();
    block_on(async {
        let big = random_bytes(16 * MIB as usize, 27);
        let small = random_bytes(5000, 28);
        let hash = seed_blob(&http, &srv, "default", &big).await;
        let small_hash = seed_blob(&http, &srv, "default", &small).await;
        // A small receive buffer: the kernel buffers (the server's send buffer, up to tcp_wmem's
        // max, 4 MiB by default) cannot hold a large part of the 16384-chunk stream (about 26 MB
        // of JSON), so the server is still streaming when the cancel arrives.
        let mut ws = ws_connect_with(&srv, Some(16 * KIB as u32), None)
            .await
            .expect("connect");
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash, 1024, 0, -1)),
        )
        .await;
        let response = ws_expect_response(&mut ws, "large request").await;
        assert_eq!(response.chunk_count, 16384);
        let id = response.stream_id.clone();
        let mut received = 0u64;
        while received < 3 {
            match ws_next(&mut ws).await {
                Frame::Msg(WsServerMessage::Chunk(c)) => {
                    assert_eq!(c.sequence_num, received, "chunk order");
                    received += 1;
                }
                Frame::Msg(WsServerMessage::Progress(_)) => {}
                other => panic!("before cancel: {other:?}"),
            }
        }
        ws_send(
            &mut ws,
            &WsClientMessage::Cancel {
                stream_id: id.clone(),
            },
        )
        .await;
        // Frames already in the socket buffers arrive first; then a progress frame "cancelled".
        let mut cancelled = None;
        for _ in 0..40_000 {
            match ws_next(&mut ws).await {
                Frame::Msg(WsServerMessage::Chunk(c)) => {
                    assert_eq!(c.stream_id, id);
                    received += 1;
                }
                Frame::Msg(WsServerMessage::Progress(p)) if p.status == "cancelled" => {
                    cancelled = Some(p);
                    break;
                }
                Frame::Msg(WsServerMessage::Progress(p)) => {
                    assert_eq!(p.status, "streaming", "{p:?}")
                }
                other => panic!("after cancel: {other:?}"),
            }
        }
        let cancelled = cancelled.expect("a progress frame with status cancelled");
        assert_eq!(cancelled.stream_id, id);
        assert!(
            cancelled.chunks_streamed < 16384,
            "the stream ran to its end before the cancel: {cancelled:?}"
        );

        // After the cancelled frame only the few chunks already queued may follow; a new
        // request on the same connection is then served.
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&small_hash, 1024, 0, -1)),
        )
        .await;
        let mut late = 0;
        let next_response = loop {
            match ws_next(&mut ws).await {
                Frame::Msg(WsServerMessage::Chunk(c)) => {
                    assert_eq!(
                        c.stream_id, id,
                        "a chunk of another stream before the new response"
                    );
                    late += 1;
                    assert!(
                        late <= 16,
                        "chunk frames keep coming after the cancel ({late})"
                    );
                }
                Frame::Msg(WsServerMessage::Progress(p)) => assert_eq!(p.stream_id, id, "{p:?}"),
                Frame::Msg(WsServerMessage::Response(r)) => break r,
                other => panic!("after the cancelled frame: {other:?}"),
            }
        };
        received += late;
        assert!(
            received < 16384,
            "all {received} chunks arrived despite the cancel"
        );
        let run = ws_read_stream(&mut ws, next_response, false).await;
        assert_ws_run_complete("request after a cancel", &run, &small);

        let p = progress(&http, &srv, "default", &id).await;
        assert_eq!(p.status, "cancelled", "{p:?}");
        assert!(p.chunks_streamed < p.total_chunks, "{p:?}");
        let (status, body) = chunk_value(
            &http,
            &chunk_url(&srv, "default", &id, "?chunk=16000"),
            None,
        )
        .await;
        assert_error(
            "HTTP chunk of a cancelled WebSocket stream",
            status,
            &body,
            410,
            "stream_cancelled",
        );
        // Cancelling again is an error frame, not a closed connection.
        ws_send(
            &mut ws,
            &WsClientMessage::Cancel {
                stream_id: id.clone(),
            },
        )
        .await;
        let (code, stream_id) = ws_expect_error(&mut ws, "cancel twice").await;
        assert_eq!(code, "stream_cancelled");
        assert_eq!(stream_id.as_deref(), Some(id.as_str()));
    });
}

/// A session cancelled through `DELETE …/stream/blob/:id` while a WebSocket streams it: the
/// session is marked cancelled (the gauge drops, HTTP chunks get 410), but the WebSocket loop
/// never looks at the flag and keeps reading and sending every chunk to the end.
#[test]
fn cancelling_over_http_stops_a_websocket_stream() {
    let (srv, http) = server_and_client();
    block_on(async {
        let big = random_bytes(16 * MIB as usize, 32);
        let hash = seed_blob(&http, &srv, "default", &big).await;
        let mut ws = ws_connect_with(&srv, Some(16 * KIB as u32), None)
            .await
            .expect("connect");
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&hash, 1024, 0, -1)),
        )
        .await;
        let response = ws_expect_response(&mut ws, "large request").await;
        let id = response.stream_id.clone();
        let mut received = 0u64;
        while received < 3 {
            if let Frame::Msg(WsServerMessage::Chunk(_)) = ws_next(&mut ws).await {
                received += 1;
            }
        }
        let (status, body) = cancel_stream(&http, &srv, "default", &id).await;
        assert_eq!(status, 200, "cancel over HTTP: {body}");
        // A new request on the connection is served once the cancelled stream stops; if the
        // stream ignored the cancel, the request waits behind all of its chunks.
        let small = random_bytes(3000, 33);
        let small_hash = seed_blob(&http, &srv, "default", &small).await;
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&small_hash, 1024, 0, -1)),
        )
        .await;
        let mut next_response = None;
        for _ in 0..3 * response.chunk_count {
            match ws_next(&mut ws).await {
                Frame::Msg(WsServerMessage::Chunk(c)) => {
                    assert_eq!(
                        c.stream_id, id,
                        "a chunk of another stream before the new response"
                    );
                    received += 1;
                }
                Frame::Msg(WsServerMessage::Response(r)) => {
                    next_response = Some(r);
                    break;
                }
                Frame::Msg(WsServerMessage::Progress(p)) => assert_eq!(p.stream_id, id),
                Frame::Msg(WsServerMessage::Error { stream_id, .. }) => {
                    assert_eq!(stream_id.as_deref(), Some(id.as_str()))
                }
                other => panic!("unexpected frame: {other:?}"),
            }
        }
        let next_response = next_response.expect("the new request is answered");
        assert!(
            received < response.chunk_count,
            "the WebSocket sent all {received} chunks of a session cancelled over HTTP"
        );
        let run = ws_read_stream(&mut ws, next_response, false).await;
        assert_ws_run_complete("request after an HTTP cancel", &run, &small);
    });
}

/// A WebSocket stream's session ends with the stream (completed) or with the connection
/// (cancelled), so it does not hold a slot of `--max-stream-sessions` until expiry.
#[test]
fn websocket_sessions_end_with_their_stream_or_their_connection() {
    let (srv, http) = server_and_client_with(&["--max-stream-sessions", "2"]);
    block_on(async {
        let small = random_bytes(5000, 35);
        let big = random_bytes(4 * MIB as usize, 36);
        let small_hash = seed_blob(&http, &srv, "default", &small).await;
        let big_hash = seed_blob(&http, &srv, "default", &big).await;
        let mut ws = ws_connect(&srv).await;
        let mut ids = Vec::new();
        // More streams than the table holds, one after the other, on one connection.
        for i in 0..4 {
            ws_send(
                &mut ws,
                &WsClientMessage::Stream(stream_request(&small_hash, 1024, 0, -1)),
            )
            .await;
            let response =
                ws_expect_response(&mut ws, &format!("request {i} with a table of 2")).await;
            ids.push(response.stream_id.clone());
            let run = ws_read_stream(&mut ws, response, false).await;
            assert_ws_run_complete(&format!("request {i}"), &run, &small);
        }
        assert_eq!(
            gauge(&srv, "govcfs_stream_sessions_active"),
            0.0,
            "finished WebSocket streams still hold sessions"
        );
        for id in &ids {
            let p = progress(&http, &srv, "default", id).await;
            assert_eq!(p.status, "completed", "a finished WebSocket stream: {p:?}");
        }

        // A connection dropped in the middle of a stream frees its session.
        let mut ws2 = ws_connect_with(&srv, Some(16 * KIB as u32), None)
            .await
            .expect("connect");
        ws_send(
            &mut ws2,
            &WsClientMessage::Stream(stream_request(&big_hash, 1024, 0, -1)),
        )
        .await;
        let response = ws_expect_response(&mut ws2, "large request").await;
        match ws_next(&mut ws2).await {
            Frame::Msg(WsServerMessage::Chunk(c)) => assert_eq!(c.sequence_num, 0),
            other => panic!("expected chunk 0, got {other:?}"),
        }
        assert_eq!(
            gauge(&srv, "govcfs_stream_sessions_active"),
            1.0,
            "the running stream holds a session"
        );
        drop(ws2);
        let freed = wait_until(Duration::from_secs(20), || {
            srv.metric("govcfs_stream_sessions_active") == Some(0.0)
        });
        assert!(
            freed,
            "the session of a dropped connection is still open: {:?}",
            srv.metric("govcfs_stream_sessions_active")
        );
        let p = progress(&http, &srv, "default", &response.stream_id).await;
        assert!(
            p.status == "cancelled" || p.status == "expired",
            "a stream whose connection dropped: {p:?}"
        );
        assert!(p.chunks_streamed < p.total_chunks, "{p:?}");
        // The first connection is still usable and the table has room.
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(stream_request(&small_hash, 0, 0, -1)),
        )
        .await;
        let response = ws_expect_response(&mut ws, "request after the drop").await;
        let run = ws_read_stream(&mut ws, response, false).await;
        assert_ws_run_complete("request after the drop", &run, &small);
    });
}

/// The server reads at most a few chunks ahead of a client that does not read. How many can be
/// "ahead" also depends on kernel buffers: the client's receive buffer is set small (which turns
/// off its autotuning, otherwise up to tcp_rmem's max, often 6–32 MiB), but the server's send
/// buffer can grow to tcp_wmem's max (4 MiB by default), about 3 JSON frames of a 1 MiB chunk
/// (1.4 MB of base64 each). With the server's queue of 4 and the frame being written, the
/// server should have read no more than about 9 of the 64 chunks; the bound is 12, or more on
/// a machine whose tcp_wmem allows a larger send buffer.
#[test]
fn websocket_backpressure_keeps_the_server_a_few_chunks_ahead_of_a_slow_client() {
    let (srv, http) = server_and_client();
    block_on(async {
        let data = fast_random_bytes(64 * MIB as usize, 29);
        let hash = seed_blob(&http, &srv, "default", &data).await;
        let mut ws = ws_connect_with(&srv, Some(16 * KIB as u32), None)
            .await
            .expect("connect");
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(StreamRequest::whole(&hash, MIB)),
        )
        .await;
        let response = ws_expect_response(&mut ws, "64 MiB request").await;
        assert_eq!(response.chunk_count, 64);
        let id = response.stream_id.clone();
        let peak_before = srv.peak_rss_kib().expect("VmHWM of the server");

        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = progress(&http, &srv, "default", &id).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = progress(&http, &srv, "default", &id).await;
        let frame = 1_400_000u64;
        let bound = 12u64.max(7 + max_send_buffer().div_ceil(frame));
        for p in [&first, &second] {
            assert!(
                p.chunks_streamed <= bound,
                "the server read {} of 64 chunks ahead of a client that reads nothing (bound {bound})",
                p.chunks_streamed
            );
            assert_eq!(p.status, "streaming", "{p:?}");
        }

        // Reading resumes the stream to its end.
        let run = ws_read_stream(&mut ws, response, false).await;
        assert_ws_run_complete("64 MiB after a stall", &run, &data);
        // Streaming the blob does not load it: the peak RSS (already raised by the seed upload)
        // grows by less than the blob's size.
        let growth_mib = srv
            .peak_rss_kib()
            .expect("VmHWM")
            .saturating_sub(peak_before)
            / 1024;
        assert!(
            growth_mib < 48,
            "the server's peak RSS grew by {growth_mib} MiB while streaming 64 MiB"
        );
    });
}

#[test]
fn websocket_upgrade_requires_the_auth_token() {
    let (srv, http) = server_and_client_with(&["--auth-token", "secret"]);
    block_on(async {
        for token in [None, Some("wrong")] {
            match ws_connect_with(&srv, None, token).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(
                        response.status().as_u16(),
                        401,
                        "upgrade with token {token:?}"
                    );
                }
                Err(e) => panic!("upgrade with token {token:?}: unexpected error {e}"),
                Ok(_) => panic!("upgrade with token {token:?} was accepted"),
            }
        }
        let mut ws = ws_connect_with(&srv, None, Some("secret"))
            .await
            .expect("upgrade with the token");
        ws_send(
            &mut ws,
            &WsClientMessage::Stream(StreamRequest::whole(&"0".repeat(64), 0)),
        )
        .await;
        let (code, _) = ws_expect_error(&mut ws, "unknown hash with a token").await;
        assert_eq!(code, "not_found");

        // The HTTP stream routes too.
        let r = http
            .post(format!("{}/stream/blob/start", srv.api("default")))
            .json(&json!({ "hash": "0".repeat(64) }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "start without a token");
        let r = http
            .post(format!("{}/stream/blob/upload", srv.api("default")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "upload without a token");
        let (status, _) = json_of(
            http.get(format!("{}/blobs/{}", srv.api("default"), blob_id(b"x")))
                .bearer_auth("secret")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 404, "a refused upload stored nothing");
    });
}
