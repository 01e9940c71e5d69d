//! `PUT /<repo>/<path>`: a file written and committed in one request.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;

use super::{bytes_received, App, Reply};
use crate::base::manifest::blob_id;

impl App {
    async fn put_file(&self, uri: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header(header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(body)).expect("request"))
            .await
    }
}

#[tokio::test]
async fn a_put_file_is_stored_and_committed_in_one_request_with_its_conditions() {
    let app = App::new().await;
    app.post_json("/api/v1/repos", json!({ "id": "r" })).await;
    let first = app
        .put_file(
            "/r/d/a.txt",
            b"hello".to_vec(),
            &[
                ("if-none-match", "*"),
                ("x-file-mode", "100755"),
                ("x-mtime", "1700000000"),
                ("x-commit-message", "first é"),
            ],
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let hash = blob_id(b"hello");
    assert_eq!(first.json()["hash"], hash);
    assert_eq!(first.json()["size"], 5);
    assert_eq!(first.json()["ref"], "main");
    assert_eq!(bytes_received(&app).await, 5);
    assert_eq!(&app.get("/r/d/a.txt").await.body[..], b"hello");
    let stat = app.get("/api/v1/repos/r/stat/d/a.txt").await.json();
    assert_eq!(
        (stat["mode"].clone(), stat["mtime"].clone()),
        (json!(0o100755), json!(1_700_000_000))
    );
    let log = app.get("/api/v1/repos/r/log?limit=1").await.json();
    assert_eq!(log["commits"][0]["message"], "first é", "{log}");
    assert_eq!(log["commits"][0]["commit"], first.json()["commit"]);

    app.put_file("/r/d/a.txt", b"again".to_vec(), &[("if-none-match", "*")])
        .await
        .assert_error(409, "conflict", "must not exist, but does");
    let stale = format!("\"{}\"", blob_id(b"other"));
    app.put_file("/r/d/a.txt", b"again".to_vec(), &[("if-match", &stale)])
        .await
        .assert_error(409, "conflict", "a stale If-Match");
    let current = format!("\"{hash}\"");
    let second = app
        .put_file("/r/d/a.txt", b"again".to_vec(), &[("if-match", &current)])
        .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text());
    assert_eq!(&app.get("/r/d/a.txt").await.body[..], b"again");

    app.put_file(
        "/r/b.txt",
        b"body".to_vec(),
        &[("x-blob-id", &blob_id(b"else"))],
    )
    .await
    .assert_error(
        422,
        "checksum_mismatch",
        "a body that is not the named blob",
    );
    app.get("/r/b.txt")
        .await
        .assert_error(404, "not_found", "nothing committed");
    let empty = app.put_file("/r/empty", Vec::new(), &[]).await;
    assert_eq!(empty.status, StatusCode::CREATED, "{}", empty.text());
    assert_eq!(empty.json()["hash"], blob_id(b""));
    app.put_file("/r/x", b"1".to_vec(), &[("x-file-mode", "9z")])
        .await
        .assert_error(400, "bad_request", "a bad mode");
}

#[tokio::test]
async fn a_large_put_file_is_streamed_and_reads_back_whole() {
    let app = App::new().await;
    app.post_json("/api/v1/repos", json!({ "id": "r" })).await;
    let data: Vec<u8> = (0..(5u32 << 20) + 7).map(|i| (i % 249) as u8).collect();
    let put = app
        .put_file(
            "/r/big.bin",
            data.clone(),
            &[("x-blob-id", &blob_id(&data))],
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    assert_eq!(put.json()["chunks"], 2);
    assert_eq!(
        bytes_received(&app).await,
        data.len() as u64,
        "counted once"
    );
    let got = app.get("/r/big.bin").await;
    assert_eq!(got.body.len(), data.len());
    assert!(got.body[..] == data[..]);
}

/// A commit of 20,000 changes (a 3 MB body, over axum's default 2 MB limit) is accepted.
#[tokio::test]
async fn a_commit_of_twenty_thousand_changes_is_accepted() {
    let app = App::new().await;
    app.post_json("/api/v1/repos", json!({ "id": "r" })).await;
    let put = app.put_file("/r/seed", b"seed".to_vec(), &[]).await;
    let hash = put.json()["hash"].as_str().unwrap().to_string();
    let changes: Vec<_> = (0..20_000)
        .map(|i| json!({ "op": "put", "path": format!("import/d{}/f{i:05}", i % 7), "hash": hash }))
        .collect();
    let body = json!({ "message": "import", "changes": changes });
    assert!(body.to_string().len() > 2 << 20, "the body is over 2 MB");
    let reply = app.post_json("/api/v1/repos/r/commits", body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let listing = app.get("/api/v1/repos/r/tree/import/d3").await.json();
    assert_eq!(listing["entries"].as_array().unwrap().len(), 2857);
}
