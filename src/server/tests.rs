//! The HTTP behaviour of the real router, driven in-process with `oneshot` on a temporary
//! local store: no socket, so every test is fast and deterministic. The one test against a
//! real listener (TLS, connection handling) lives in `tests/`.

use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use sha2::Digest;
use tower::ServiceExt;

use super::{router, AppState, ServerConfig};
use crate::base::checksum::{crc32c_hex, md5_hex, CRC32C_HEADER, MD5_HEADER, SHA256_HEADER};
use crate::store::{Backend, Store};

mod files;

/// The router on a fresh store in a temporary directory (removed when dropped).
struct App {
    router: Router,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

/// An answer, its body read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a JSON error answer: its status and `code`; returns the body.
    fn assert_error(&self, status: u16, code: &str, what: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{what}: {}", self.text());
        let body = self.json();
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no message in {body}"
        );
        body
    }
}

impl App {
    async fn new() -> App {
        Self::with_config(ServerConfig::default()).await
    }

    async fn with_config(config: ServerConfig) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Backend::local(dir.path()).expect("backend"))
            .await
            .expect("store");
        let state = Arc::new(AppState::new(store, config).await.expect("state"));
        App {
            router: router(state.clone()),
            state,
            _dir: dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: to_bytes(body, usize::MAX).await.expect("body"),
        }
    }

    async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body.into())
            .expect("request");
        self.send(request).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Body::empty()).await
    }

    async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::empty()).expect("request"))
            .await
    }

    async fn post_json(&self, uri: &str, body: Value) -> Reply {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        self.send(request).await
    }

    /// Stores `data` as a blob of `repo` through a resumable upload; returns its id.
    async fn upload(&self, repo: &str, data: &[u8]) -> String {
        let started = self
            .call(Method::POST, &format!("/api/v1/repos/{repo}/uploads"), "")
            .await;
        assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
        let id = started.json()["upload_id"].as_str().unwrap().to_string();
        let chunk_size = started.json()["chunk_size"].as_u64().unwrap() as usize;
        for (index, chunk) in data.chunks(chunk_size).enumerate() {
            let put = self
                .call(
                    Method::PUT,
                    &format!("/api/v1/repos/{repo}/uploads/{id}/{index}"),
                    chunk.to_vec(),
                )
                .await;
            assert_eq!(put.status, StatusCode::NO_CONTENT, "{}", put.text());
        }
        let done = self
            .call(
                Method::POST,
                &format!("/api/v1/repos/{repo}/uploads/{id}/complete"),
                "",
            )
            .await;
        assert_eq!(done.status, StatusCode::CREATED, "{}", done.text());
        assert_eq!(done.json()["size"], data.len());
        done.json()["hash"].as_str().unwrap().to_string()
    }

    /// Commits `changes` to `main` of `repo`.
    async fn commit(&self, repo: &str, changes: Value) -> Reply {
        self.post_json(
            &format!("/api/v1/repos/{repo}/commits"),
            json!({ "message": "test", "changes": changes }),
        )
        .await
    }

    /// A repository `r` holding `dir/a.txt` (the returned bytes) and `top.bin`; returns the
    /// bytes and the id of `dir/a.txt`.
    async fn with_files(&self) -> (Vec<u8>, String) {
        let created = self.post_json("/api/v1/repos", json!({ "id": "r" })).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let hash = self.upload("r", &data).await;
        let other = self.upload("r", b"top").await;
        let committed = self
            .commit(
                "r",
                json!([
                    { "op": "put", "path": "dir/a.txt", "hash": hash, "mtime": 1_700_000_000 },
                    { "op": "put", "path": "top.bin", "hash": other },
                ]),
            )
            .await;
        assert_eq!(
            committed.status,
            StatusCode::CREATED,
            "{}",
            committed.text()
        );
        (data, hash)
    }
}

#[tokio::test]
async fn repositories_are_created_once_and_listed() {
    let app = App::new().await;
    let created = app
        .post_json("/api/v1/repos", json!({ "id": "photos" }))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json()["id"], "photos");
    assert!(created.json()["head"].is_string());
    app.post_json("/api/v1/repos", json!({ "id": "photos" }))
        .await
        .assert_error(409, "already_exists", "a second creation");
    let list = app.get("/api/v1/repos").await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<String> = list.json()["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["default", "photos"]);
}

#[tokio::test]
async fn an_uploaded_blob_is_committed_and_listed() {
    let app = App::new().await;
    let (data, hash) = app.with_files().await;
    let root = app.get("/api/v1/repos/r/tree").await;
    assert_eq!(root.status, StatusCode::OK, "{}", root.text());
    let names: Vec<String> = root.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["dir", "top.bin"]);
    let dir = app.get("/api/v1/repos/r/tree/dir").await.json();
    assert_eq!(dir["path"], "dir");
    assert_eq!(dir["entries"][0]["name"], "a.txt");
    assert_eq!(dir["entries"][0]["size"], data.len());
    assert_eq!(dir["entries"][0]["hash"], hash.as_str());
    let stat = app.get("/api/v1/repos/r/stat/dir/a.txt").await.json();
    assert_eq!(stat["mtime"], 1_700_000_000);
    let log = app.get("/api/v1/repos/r/log").await.json();
    assert_eq!(log["commits"].as_array().unwrap().len(), 2, "{log}");
}

#[tokio::test]
async fn blobs_answer_ranges_with_checksums() {
    let app = App::new().await;
    let (data, hash) = app.with_files().await;
    let uri = format!("/api/v1/repos/r/blobs/{hash}");
    let len = data.len();
    // (Range header, status, expected bytes as a range of `data`, Content-Range)
    let cases: [(&str, u16, std::ops::Range<usize>, Option<String>); 5] = [
        ("", 200, 0..len, None),
        ("bytes=0-99", 206, 0..100, Some(format!("bytes 0-99/{len}"))),
        (
            "bytes=4990-",
            206,
            4990..len,
            Some(format!("bytes 4990-4999/{len}")),
        ),
        (
            "bytes=-10",
            206,
            len - 10..len,
            Some(format!("bytes 4990-4999/{len}")),
        ),
        (
            "bytes=100-",
            206,
            100..len,
            Some(format!("bytes 100-4999/{len}")),
        ),
    ];
    for (range, status, expected, content_range) in cases {
        let headers: Vec<(&str, &str)> = if range.is_empty() {
            vec![]
        } else {
            vec![("range", range)]
        };
        let reply = app.get_with(&uri, &headers).await;
        assert_eq!(reply.status.as_u16(), status, "{range}: {}", reply.text());
        assert_eq!(&reply.body[..], &data[expected.clone()], "{range}");
        assert_eq!(
            reply.header(header::CONTENT_RANGE).map(str::to_string),
            content_range,
            "{range}"
        );
        // One whole 1 MiB block (here the whole blob) carries the CRC32C from the chunk's
        // index instead of an MD5 computed on the spot.
        let md5 = (expected != (0..len)).then(|| md5_hex(&data[expected]));
        assert_eq!(
            reply.header(MD5_HEADER),
            md5.as_deref(),
            "{range}: the MD5 of the bytes sent"
        );
        assert_eq!(reply.header(header::ACCEPT_RANGES), Some("bytes"));
    }
    // A whole blob of one chunk carries its SHA-256 (the chunk's name) and CRC32C.
    let whole = app.get(&uri).await;
    assert_eq!(
        whole.header(SHA256_HEADER),
        Some(hex::encode(sha2::Sha256::digest(&data)).as_str())
    );
    assert_eq!(
        whole.header(CRC32C_HEADER),
        Some(crc32c_hex(&data).as_str())
    );
    for range in ["bytes=5000-", "bytes=9000-9999"] {
        let reply = app.get_with(&uri, &[("range", range)]).await;
        reply.assert_error(416, "range_not_satisfiable", range);
        assert_eq!(
            reply.header(header::CONTENT_RANGE),
            Some(format!("bytes */{len}").as_str()),
            "{range}"
        );
    }
}

#[tokio::test]
async fn etags_make_conditional_requests_and_head_sends_no_body() {
    let app = App::new().await;
    let (data, hash) = app.with_files().await;
    let uri = format!("/api/v1/repos/r/blobs/{hash}");
    let etag = format!("\"{hash}\"");
    let first = app.get(&uri).await;
    assert_eq!(first.header(header::ETAG), Some(etag.as_str()));
    let again = app.get_with(&uri, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    let changed = app.get_with(&uri, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    let head = app.call(Method::HEAD, &uri, Body::empty()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.header(header::CONTENT_LENGTH),
        Some(data.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let app = App::new().await;
    let (_, hash) = app.with_files().await;
    let missing = "0".repeat(64);
    // (method, uri, body, status, code)
    let cases = [
        (
            Method::GET,
            "/api/v1/repos/nope/tree".to_string(),
            "",
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/tree/no/such/dir".into(),
            "",
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/tree/a/../../etc".into(),
            "",
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/tree?ref=no-such-branch".into(),
            "",
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/tree?ref=..%2Fx".into(),
            "",
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/blobs/not-a-hash".into(),
            "",
            400,
            "bad_request",
        ),
        (
            Method::GET,
            format!("/api/v1/repos/r/blobs/{missing}"),
            "",
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/stat/top.bin/x".into(),
            "",
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/api/v1/repos".into(),
            "{not json",
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/repos".into(),
            r#"{"id":"a/b"}"#,
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/repos".into(),
            r#"{"id":"api"}"#,
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/repos/r/commits".into(),
            r#"{"changes":7}"#,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/uploads/nope".into(),
            "",
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/no/such/route".into(),
            "",
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/repos".into(),
            "",
            405,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/api/v1/repos/r/stream/blob/start".into(),
            "",
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v1/repos/r/stream/websocket".into(),
            "",
            400,
            "bad_request",
        ),
    ];
    for (method, uri, body, status, code) in cases {
        let what = format!("{method} {uri}");
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        app.send(request).await.assert_error(status, code, &what);
    }
    // A commit whose `expect` does not hold names the path.
    let conflict = app
        .commit(
            "r",
            json!([{ "op": "put", "path": "top.bin", "hash": hash, "expect": missing }]),
        )
        .await;
    let body = conflict.assert_error(409, "conflict", "an expect that fails");
    assert_eq!(body["path"], "top.bin");
    let unknown_blob = app
        .commit("r", json!([{ "op": "put", "path": "x", "hash": missing }]))
        .await;
    unknown_blob.assert_error(400, "bad_request", "a commit of an unknown blob");
}

#[tokio::test]
async fn uploads_over_the_limit_are_refused_with_413() {
    let app = App::with_config(ServerConfig {
        max_upload_size: 1000,
        ..ServerConfig::default()
    })
    .await;
    let reply = app
        .call(
            Method::POST,
            "/api/v1/repos/default/stream/blob/upload",
            vec![7u8; 3000],
        )
        .await;
    reply.assert_error(413, "too_large", "a streamed upload of 3000 bytes");
    let small = app
        .call(
            Method::POST,
            "/api/v1/repos/default/stream/blob/upload",
            vec![7u8; 10],
        )
        .await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.text());
    assert_eq!(small.json()["size"], 10);
}

#[tokio::test]
async fn the_browsable_view_serves_indexes_and_files() {
    let app = App::new().await;
    let (data, _) = app.with_files().await;
    let root = app.get("/r/").await;
    assert_eq!(root.status, StatusCode::OK);
    assert!(root
        .header(header::CONTENT_TYPE)
        .is_some_and(|t| t.starts_with("text/html")));
    let page = root.text();
    assert!(page.contains("<a href=\"dir/\">dir/</a>"), "{page}");
    assert!(page.contains("<a href=\"top.bin\">top.bin</a>"), "{page}");
    assert!(!page.contains("../"), "the root has no parent link");
    let redirect = app.get("/r").await;
    assert_eq!(redirect.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirect.header(header::LOCATION), Some("/r/"));
    let dir = app.get("/r/dir").await;
    assert_eq!(dir.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(dir.header(header::LOCATION), Some("dir/"));
    let index = app.get("/r/dir/").await;
    assert!(index.text().contains("<a href=\"../\">../</a>"));
    assert!(index.text().contains("a.txt</a>"));
    let file = app.get("/r/dir/a.txt").await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(&file.body[..], &data[..]);
    assert_eq!(
        file.header(header::LAST_MODIFIED),
        Some(crate::base::time::http_date(1_700_000_000).as_str())
    );
    let ranged = app
        .get_with("/r/dir/a.txt", &[("range", "bytes=1-2")])
        .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.body[..], &data[1..3]);
    let head = app.call(Method::HEAD, "/r/dir/a.txt", Body::empty()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    app.get("/r/dir/a.txt/")
        .await
        .assert_error(404, "not_found", "a file as a directory");
    app.get("/r/no-such-file")
        .await
        .assert_error(404, "not_found", "a missing file");
}

#[tokio::test]
async fn a_stream_session_serves_chunks_until_cancelled() {
    let app = App::new().await;
    let (data, hash) = app.with_files().await;
    let started = app
        .post_json(
            "/api/v1/repos/r/stream/blob/start",
            json!({ "hash": hash, "chunk_size": 1024, "start_offset": 100, "end_offset": 3099 }),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let session = started.json();
    assert_eq!(session["total_size"], 3000);
    assert_eq!(session["chunk_count"], 3);
    assert_eq!(session["checksum"], md5_hex(&data[100..3100]).as_str());
    let id = session["stream_id"].as_str().unwrap().to_string();
    let base = format!("/api/v1/repos/r/stream/blob/{id}");
    let raw = app
        .get_with(
            &format!("{base}/chunk?chunk=1"),
            &[("accept", "application/octet-stream")],
        )
        .await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    assert_eq!(&raw.body[..], &data[1124..2148]);
    assert_eq!(raw.header("x-chunk-sequence"), Some("1"));
    assert_eq!(raw.header("x-chunk-last"), Some("false"));
    assert_eq!(
        raw.header(MD5_HEADER),
        Some(md5_hex(&data[1124..2148]).as_str())
    );
    let json_chunk = app.get(&format!("{base}/chunk?chunk=2")).await.json();
    assert_eq!(json_chunk["is_last"], true, "{json_chunk}");
    let progress = app.get(&format!("{base}/progress")).await.json();
    assert_eq!(progress["chunks_streamed"], 2, "{progress}");
    assert_eq!(progress["status"], "streaming");
    // (uri, status, code) of refused chunk requests while the session is open
    for (uri, status, code) in [
        (format!("{base}/chunk?chunk=3"), 404, "chunk_out_of_range"),
        (format!("{base}/chunk?chunk=x"), 400, "bad_request"),
        (format!("{base}/chunk"), 400, "bad_request"),
        (
            "/api/v1/repos/r/stream/blob/nope/chunk?chunk=0".into(),
            404,
            "stream_not_found",
        ),
    ] {
        app.get(&uri).await.assert_error(status, code, &uri);
    }
    let cancelled = app.call(Method::DELETE, &base, Body::empty()).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.json()["status"], "cancelled");
    app.get(&format!("{base}/chunk?chunk=0"))
        .await
        .assert_error(410, "stream_cancelled", "a chunk after cancel");
    let last = app.get(&format!("{base}/progress")).await.json();
    assert_eq!(last["status"], "cancelled");
    assert!(app.state.streams.is_empty());
    let bad_range = app
        .post_json(
            "/api/v1/repos/r/stream/blob/start",
            json!({ "hash": hash, "start_offset": 9000 }),
        )
        .await;
    bad_range.assert_error(416, "range_not_satisfiable", "a range past the end");
}

#[tokio::test]
async fn health_and_metrics_pages_answer() {
    let app = App::new().await;
    let health = app.get("/healthz").await;
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "ok")
    );
    app.get("/api/v1/repos").await;
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .header(header::CONTENT_TYPE)
        .is_some_and(|t| t.starts_with("text/plain")));
    let text = metrics.text();
    assert!(
        text.contains(super::metrics::HTTP_REQUESTS) && text.contains("/api/v1/repos"),
        "{text}"
    );
    assert!(
        text.contains(super::metrics::STREAM_SESSIONS_ACTIVE),
        "{text}"
    );
}

/// The `govcfs_blob_bytes_received_total` counter.
async fn bytes_received(app: &App) -> u64 {
    let metrics = app.get("/metrics").await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("govcfs_blob_bytes_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter is exported")
}

#[tokio::test]
async fn a_new_version_names_the_chunks_the_server_holds_and_sends_only_the_rest() {
    use crate::base::manifest::{blob_id, chunk_hash, CHUNK_SIZE};
    let app = App::new().await;
    let cs = CHUNK_SIZE as usize;
    let old: Vec<u8> = (0..cs + 1000).map(|i| (i % 241) as u8).collect();
    let old_id = app.upload("default", &old).await;
    let api = "/api/v1/repos/default";

    let manifest = app.get(&format!("{api}/blobs/{old_id}/manifest")).await;
    assert_eq!(manifest.status, StatusCode::OK, "{}", manifest.text());
    assert_eq!(hex::encode(sha2::Sha256::digest(&manifest.body)), old_id);
    assert!(manifest
        .text()
        .starts_with("govcfs-blob 1\nsize 4195304\nchunk-size 4194304\n"));

    let first = hex::encode(chunk_hash(&old[..cs]));
    let absent = hex::encode(chunk_hash(b"absent"));
    let asked = app
        .post_json(
            &format!("{api}/chunks/missing"),
            json!({ "chunks": [first, absent] }),
        )
        .await;
    assert_eq!(
        asked.json(),
        json!({ "missing": [absent] }),
        "{}",
        asked.text()
    );

    let started = app.call(Method::POST, &format!("{api}/uploads"), "").await;
    let id = started.json()["upload_id"].as_str().unwrap().to_string();
    let before = bytes_received(&app).await;
    let by_ref = |hashes: String, body: &'static [u8]| {
        Request::builder()
            .method(Method::PUT)
            .uri(format!("{api}/uploads/{id}/0"))
            .header("x-chunk-sha256", hashes)
            .body(Body::from(body))
            .expect("request")
    };
    app.send(by_ref(absent.clone(), b""))
        .await
        .assert_error(404, "not_found", "an absent chunk");
    app.send(by_ref("zz".into(), b""))
        .await
        .assert_error(400, "bad_request", "a bad hash");
    app.send(by_ref(first.clone(), b"bytes"))
        .await
        .assert_error(400, "bad_request", "a body");
    let named = app.send(by_ref(first.clone(), b"")).await;
    assert_eq!(
        named.json(),
        json!({ "len": CHUNK_SIZE }),
        "{}",
        named.text()
    );
    let tail = b"a different tail";
    let put = app
        .call(Method::PUT, &format!("{api}/uploads/{id}/1"), tail.to_vec())
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{}", put.text());
    let done = app
        .call(Method::POST, &format!("{api}/uploads/{id}/complete"), "")
        .await;
    let mut new = old[..cs].to_vec();
    new.extend_from_slice(tail);
    assert_eq!(
        done.json()["hash"],
        blob_id(&new).as_str(),
        "{}",
        done.text()
    );
    assert_eq!(done.json()["chunks"], 2);
    assert_eq!(
        bytes_received(&app).await - before,
        tail.len() as u64,
        "only the tail was sent"
    );
}

#[tokio::test]
async fn a_blob_of_a_store_before_chunking_has_no_manifest_but_reads() {
    let app = App::new().await;
    let data = b"written by the previous version".to_vec();
    let id = crate::base::ids::legacy_blob_id(&data);
    let objects = app
        ._dir
        .path()
        .join(format!("repos/default/objects/{}", &id[..2]));
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join(&id), &data).unwrap();
    let mut indexer = crate::store::index::BlockIndexer::default();
    indexer.update(&data);
    std::fs::write(objects.join(format!("{id}.idx2")), indexer.finish()).unwrap();
    let api = "/api/v1/repos/default";
    app.get(&format!("{api}/blobs/{id}/manifest"))
        .await
        .assert_error(404, "not_chunked", "a legacy blob");
    let read = app.get(&format!("{api}/blobs/{id}")).await;
    assert_eq!(read.body, data);
    assert_eq!(read.header(MD5_HEADER), Some(md5_hex(&data).as_str()));
}
