//! Stream sessions of the seed API behind a load balancer: two `govcfs serve` instances share
//! one S3 prefix, a session opened on one is served, watched and cancelled through the other
//! (its signed id carries the session; cancellation travels through a marker in the bucket).

mod common;

use std::time::Duration;

use common::s3::S3Server;
use common::*;
use govcfs::api::stream::{StreamProgress, StreamResponse};
use serde_json::json;

#[test]
fn a_session_opened_on_one_instance_is_served_and_cancelled_through_another() {
    let s3 = S3Server::start();
    let store = s3.store_url();
    let a = ServerProcess::start_on_s3(&s3, &store, &[]);
    let b = ServerProcess::start_on_s3(&s3, &store, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    let data = random_bytes(5 << 20, 11);
    std::fs::write(&file, &data).unwrap();
    let put = run_cli_with(
        &[
            "put",
            file.to_str().unwrap(),
            &format!("{}/blob", a.repo_url("default")),
        ],
        &[],
        Duration::from_secs(120),
    );
    put.assert_success("put through A");
    let hash = put
        .stdout_text()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    block_on(async {
        let http = http_client();
        let start = http
            .post(format!("{}/stream/blob/start", a.api("default")))
            .json(&json!({"hash": hash, "chunk_size": 1 << 20, "start_offset": 1000, "end_offset": -1}))
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 201);
        let session: StreamResponse = start.json().await.unwrap();
        assert_eq!(session.chunk_count, 5);

        // Every chunk through B, which never saw the session: the right bytes and MD5.
        for index in 0..session.chunk_count {
            let answer = http
                .get(format!(
                    "{}/stream/blob/{}/chunk?chunk={index}",
                    b.api("default"),
                    session.stream_id
                ))
                .header("accept", "application/octet-stream")
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "chunk {index} through B");
            let md5 = answer.headers()["x-checksum-md5"]
                .to_str()
                .unwrap()
                .to_string();
            let body = answer.bytes().await.unwrap();
            let from = 1000 + (index as usize) * (1 << 20);
            let to = (from + (1 << 20)).min(data.len());
            assert_eq!(&body[..], &data[from..to], "chunk {index}");
            assert_eq!(md5, md5_hex(&body));
        }
        let progress: StreamProgress = http
            .get(format!(
                "{}/stream/blob/{}/progress",
                b.api("default"),
                session.stream_id
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (progress.status.as_str(), progress.chunks_streamed),
            ("completed", 5),
            "B counts what it served"
        );

        // A forged id (another range under the same nonce) is unknown to both.
        let forged = session.stream_id.replacen('.', ".x", 1);
        let answer = http
            .get(format!(
                "{}/stream/blob/{forged}/chunk?chunk=0",
                b.api("default")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404);

        // Cancelled through B: A, which opened it, refuses its chunks within a bounded time.
        let cancel = http
            .delete(format!(
                "{}/stream/blob/{}",
                b.api("default"),
                session.stream_id
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(cancel.status(), 200);
        let mut last = 0;
        for _ in 0..50 {
            last = http
                .get(format!(
                    "{}/stream/blob/{}/chunk?chunk=0",
                    a.api("default"),
                    session.stream_id
                ))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if last == 410 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, 410, "A sees B's cancel");
    });
}
