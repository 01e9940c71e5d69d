//! The resumable upload API driven by hand over HTTP (start, PUT every chunk with its MD5,
//! complete), for tests that need a blob on the server without the client library.

use serde_json::{json, Value};

use crate::common::{json_of, md5_hex};

/// Uploads `data` to the repository API root `api` (`…/api/v1/repos/{repo}`) and returns the
/// `complete` answer (`{"hash","size","md5"}`). With `chunk_size`, asks for that chunk size
/// and checks the server kept it.
pub async fn upload_blob(
    http: &reqwest::Client,
    api: &str,
    data: &[u8],
    chunk_size: Option<u64>,
) -> Value {
    let start_body = match chunk_size {
        Some(c) => json!({ "chunk_size": c }),
        None => json!({}),
    };
    let (status, started) = json_of(
        http.post(format!("{api}/uploads"))
            .json(&start_body)
            .send()
            .await
            .expect("POST uploads"),
    )
    .await;
    assert!(
        status == 200 || status == 201,
        "start upload: {status} {started}"
    );
    let id = started["upload_id"].as_str().expect("upload_id");
    let chunk = started["chunk_size"].as_u64().expect("chunk_size");
    if let Some(c) = chunk_size {
        assert_eq!(
            chunk, c,
            "the server changed a chunk size inside its bounds"
        );
    }
    for (index, piece) in data.chunks(chunk as usize).enumerate() {
        put_upload_chunk(http, api, id, index, piece).await;
    }
    let (status, info) = json_of(
        http.post(format!("{api}/uploads/{id}/complete"))
            .send()
            .await
            .expect("complete"),
    )
    .await;
    assert!(status == 200 || status == 201, "complete: {status} {info}");
    info
}

/// PUTs one chunk of upload `id` with its MD5 and asserts the server took it.
async fn put_upload_chunk(http: &reqwest::Client, api: &str, id: &str, index: usize, piece: &[u8]) {
    let response = http
        .put(format!("{api}/uploads/{id}/{index}"))
        .header("X-Checksum-MD5", md5_hex(piece))
        .body(piece.to_vec())
        .send()
        .await
        .expect("PUT chunk");
    assert!(
        response.status().is_success(),
        "PUT chunk {index}: {}",
        response.status()
    );
}
