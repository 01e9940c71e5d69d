//! The client side of the seed streaming API against the real server process: `StreamReader`
//! (random seeks checked against the source, as a property test), whole downloads through a
//! session and over the WebSocket, compressed and not, raw and multipart uploads, JSON chunks,
//! cancellation, the CLI's `get --stream`/`--ws`, and the server's memory while it streams
//! 1 GiB through a session. Timings are printed, never asserted.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{
    block_on, md5_hex, mib_per_s, random_bytes, run_cli, run_cli_with, write_fast_random_file,
    ProcSampler, ServerProcess, XorShift, GIB, MIB,
};
use govcfs::api::stream::{StreamChunk, StreamProgress};
use govcfs::client::{CancellationToken, Client, ClientError, ClientOptions, StreamOptions};
use md5::{Digest, Md5};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

fn client(server: &ServerProcess) -> Client {
    Client::new(&server.url(), "default", ClientOptions::default()).expect("client")
}

/// Half random, half zeros in every 4 KiB: compresses to about half, like real data.
fn half_compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut data = random_bytes(len, seed);
    for block in data.chunks_mut(4096) {
        let half = block.len() / 2;
        block[half..].fill(0);
    }
    data
}

/// Uploads `data` through the raw streamed-upload route; returns its blob id.
async fn upload(client: &Client, data: &[u8]) -> String {
    let reader = std::io::Cursor::new(data.to_vec());
    let stored = client
        .upload_stream(
            reader,
            Some(data.len() as u64),
            false,
            None,
            &CancellationToken::new(),
        )
        .await
        .expect("upload_stream");
    assert_eq!(stored.size, data.len() as u64);
    assert!(!stored.compressed);
    stored.hash
}

#[test]
fn stream_reader_random_seeks_and_reads_match_the_source() {
    let server = ServerProcess::start();
    let data = Arc::new(random_bytes(3 * MIB as usize + 12_345, 1));
    let runtime = common::runtime();
    let c = client(&server);
    let hash = runtime.block_on(upload(&c, &data));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let ops = proptest::collection::vec((0u64..4 * MIB, 1usize..200_000), 1..16);
    let case = (
        0u64..(MIB),
        prop_oneof![Just(0u64), Just(1024), Just(65_536), Just(1_000_000)],
        1usize..5,
        any::<bool>(),
        ops,
    );
    runner
        .run(&case, |(start, chunk_size, ahead, zstd, ops)| {
            let end = data.len() as u64 - 1 - start / 3;
            let range = &data[start as usize..=end as usize];
            let options = StreamOptions {
                chunk_size,
                start_offset: start,
                end_offset: Some(end),
                zstd,
                max_concurrent_chunks: ahead,
                ..StreamOptions::default()
            };
            runtime.block_on(async {
                let mut reader = c
                    .stream_reader(&hash, &options, &CancellationToken::new())
                    .await
                    .expect("stream_reader");
                assert_eq!(reader.session().total_size, range.len() as u64);
                assert_eq!(
                    reader.session().checksum,
                    md5_hex(range),
                    "the session's checksum is the MD5 of its range"
                );
                for (at, len) in ops {
                    let pos = reader
                        .seek(std::io::SeekFrom::Start(at))
                        .await
                        .expect("seek");
                    assert_eq!(pos, at);
                    let mut buf = vec![0u8; len];
                    let mut got = 0;
                    // read_exact would fail at the end of the range: read until full or EOF.
                    for _ in 0..10_000 {
                        let n = reader.read(&mut buf[got..]).await.expect("read");
                        if n == 0 {
                            break;
                        }
                        got += n;
                        if got == len {
                            break;
                        }
                    }
                    let from = (at as usize).min(range.len());
                    let want = &range[from..(from + len).min(range.len())];
                    prop_assert_eq!(
                        got,
                        want.len(),
                        "bytes read at {} of a {}-byte range",
                        at,
                        range.len()
                    );
                    prop_assert!(&buf[..got] == want, "bytes at {} differ", at);
                }
                // Relative and end-relative seeks.
                let pos = reader
                    .seek(std::io::SeekFrom::End(-10))
                    .await
                    .expect("seek from end");
                prop_assert_eq!(pos, range.len() as u64 - 10);
                let pos = reader
                    .seek(std::io::SeekFrom::Current(-5))
                    .await
                    .expect("seek back");
                prop_assert_eq!(pos, range.len() as u64 - 15);
                let mut tail = Vec::new();
                reader.read_to_end(&mut tail).await.expect("read_to_end");
                prop_assert!(tail == range[range.len() - 15..]);
                prop_assert!(
                    reader
                        .seek(std::io::SeekFrom::Current(-(range.len() as i64) - 1))
                        .await
                        .is_err(),
                    "a seek before the start"
                );
                reader.close().await.expect("close the session");
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_256_mib_blob_round_trips_through_every_streaming_path() {
    let server = ServerProcess::start();
    let data = Arc::new(half_compressible(256 * MIB as usize + 777, 2));
    let want_md5 = md5_hex(&data);
    let c = client(&server);
    block_on(async {
        let started = Instant::now();
        let hash = upload(&c, &data).await;
        println!("raw streamed upload of 256 MiB: {:.1?}", started.elapsed());

        // Multipart: the body cut into three parts, streamed.
        let thirds = [0, data.len() / 3, 2 * data.len() / 3, data.len()];
        let boundary = "govcfs-test-boundary-7f3a";
        let mut pieces: Vec<Bytes> = Vec::new();
        for (i, w) in thirds.windows(2).enumerate() {
            pieces.push(Bytes::from(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"part{i}\"; filename=\"p{i}\"\r\nContent-Type: application/octet-stream\r\n\r\n")));
            for piece in data[w[0]..w[1]].chunks(MIB as usize) {
                pieces.push(Bytes::copy_from_slice(piece));
            }
            pieces.push(Bytes::from_static(b"\r\n"));
        }
        pieces.push(Bytes::from(format!("--{boundary}--\r\n")));
        let body = reqwest::Body::wrap_stream(futures::stream::iter(
            pieces.into_iter().map(Ok::<_, std::io::Error>),
        ));
        let started = Instant::now();
        let answer: serde_json::Value = common::http_client()
            .post(format!("{}/stream/blob/upload", server.api("default")))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .expect("multipart upload")
            .json()
            .await
            .expect("multipart answer");
        println!("multipart upload of 256 MiB: {:.1?}", started.elapsed());
        assert_eq!(
            answer["hash"],
            hash.as_str(),
            "the multipart upload stored other bytes: {answer}"
        );

        // Through a session, raw chunks, plain and zstd.
        for zstd in [false, true] {
            let mut out = Vec::with_capacity(data.len());
            let options = StreamOptions {
                chunk_size: 4 * MIB,
                zstd,
                verify_range: zstd,
                ..StreamOptions::default()
            };
            let calls = Arc::new(AtomicU64::new(0));
            let seen = calls.clone();
            let progress: govcfs::client::stream::ProgressFn = Arc::new(move |done, total| {
                assert!(done <= total);
                seen.fetch_add(1, Ordering::Relaxed);
            });
            let started = Instant::now();
            let session = c
                .download_stream(
                    &hash,
                    &mut out,
                    &options,
                    Some(progress),
                    &CancellationToken::new(),
                )
                .await
                .expect("download_stream");
            println!("session download (zstd: {zstd}): {:.1?}", started.elapsed());
            assert_eq!(session.checksum, want_md5);
            assert!(out == *data, "the session download (zstd: {zstd}) differs");
            assert!(
                calls.load(Ordering::Relaxed) > 10,
                "the progress callback was called {} times",
                calls.load(Ordering::Relaxed)
            );
        }

        // JSON chunks, fetched by hand, gzip and not.
        for gzip in [false, true] {
            let http = common::http_client();
            let start: serde_json::Value = http
                .post(format!("{}/stream/blob/start", server.api("default")))
                .json(&serde_json::json!({ "hash": hash, "chunk_size": 8 * MIB, "enable_gzip": gzip }))
                .send()
                .await
                .expect("start")
                .json()
                .await
                .expect("start answer");
            let id = start["stream_id"].as_str().expect("stream_id").to_string();
            let count = start["chunk_count"].as_u64().expect("chunk_count");
            let mut md5 = Md5::new();
            let mut compressed = 0;
            for n in 0..count {
                let chunk: StreamChunk = http
                    .get(format!(
                        "{}/stream/blob/{id}/chunk?chunk={n}",
                        server.api("default")
                    ))
                    .send()
                    .await
                    .expect("chunk")
                    .json()
                    .await
                    .expect("chunk JSON");
                assert_eq!(chunk.sequence_num, n);
                assert_eq!(chunk.is_last, n + 1 == count);
                let body = base64::engine::general_purpose::STANDARD
                    .decode(&chunk.data)
                    .expect("base64");
                let bytes = if chunk.is_compressed {
                    compressed += 1;
                    assert_eq!(chunk.encoding.as_deref(), Some("gzip"));
                    govcfs::base::codec::decompress(&body, "gzip", chunk.size as usize)
                        .expect("gunzip")
                } else {
                    body
                };
                assert_eq!(md5_hex(&bytes), chunk.checksum, "chunk {n}");
                md5.update(&bytes);
            }
            assert_eq!(
                hex::encode(md5.finalize()),
                want_md5,
                "JSON chunks (gzip: {gzip})"
            );
            assert_eq!(
                compressed > 0,
                gzip,
                "{compressed} of {count} chunks were compressed (gzip: {gzip})"
            );
        }

        // The WebSocket: base64 and binary frames, plain and gzip, on one connection.
        let mut ws = c.websocket().await.expect("websocket");
        for (binary, gzip) in [(false, false), (true, true)] {
            let mut request = StreamOptions {
                chunk_size: 2 * MIB,
                enable_gzip: gzip,
                ..StreamOptions::default()
            }
            .request(&hash);
            request.binary = binary;
            let mut out = Vec::with_capacity(data.len());
            let mut progress: Vec<StreamProgress> = Vec::new();
            let started = Instant::now();
            let response = ws
                .stream_blob(
                    &request,
                    &mut out,
                    |p| progress.push(p.clone()),
                    &CancellationToken::new(),
                )
                .await
                .expect("stream_blob");
            println!(
                "WebSocket download (binary: {binary}, gzip: {gzip}): {:.1?}",
                started.elapsed()
            );
            assert_eq!(response.checksum, want_md5);
            assert!(
                out == *data,
                "the WebSocket download (binary: {binary}, gzip: {gzip}) differs"
            );
            let last = progress.last().expect("progress messages");
            assert_eq!(last.status, "completed");
            assert_eq!(last.bytes_streamed, data.len() as u64);
            assert!(
                progress.len() as u64 >= response.chunk_count / 10,
                "{} progress messages for {} chunks",
                progress.len(),
                response.chunk_count
            );
        }
        ws.close().await.expect("close");
    });
}

#[test]
fn a_zstd_streamed_upload_is_stored_decompressed() {
    let server = ServerProcess::start();
    let data = half_compressible(5 * MIB as usize + 3, 3);
    let c = client(&server);
    block_on(async {
        let reader = std::io::Cursor::new(data.clone());
        let stored = c
            .upload_stream(
                reader,
                Some(data.len() as u64),
                true,
                None,
                &CancellationToken::new(),
            )
            .await
            .expect("zstd upload");
        assert!(stored.compressed);
        assert_eq!(stored.size, data.len() as u64);
        let back = c
            .read_range(
                &stored.hash,
                0..data.len() as u64,
                &CancellationToken::new(),
            )
            .await
            .expect("read back");
        assert!(back == data);
    });
    let received = server
        .metric("govcfs_blob_bytes_received_total")
        .unwrap_or(0.0);
    assert_eq!(
        received,
        data.len() as f64,
        "received bytes count the decompressed blob"
    );
}

#[test]
fn cancelling_a_download_stops_it_and_cancels_the_session() {
    let server = ServerProcess::start();
    let data = random_bytes(16 * MIB as usize, 4);
    let c = client(&server);
    block_on(async {
        let hash = upload(&c, &data).await;
        // A session download, cancelled from its progress callback.
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let progress: govcfs::client::stream::ProgressFn = Arc::new(move |done, _| {
            if done >= 1 << 20 {
                trigger.cancel();
            }
        });
        let options = StreamOptions {
            chunk_size: 64 << 10,
            ..StreamOptions::default()
        };
        let mut out = Vec::new();
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            c.download_stream(&hash, &mut out, &options, Some(progress), &cancel),
        )
        .await
        .expect("the cancelled download returned");
        assert!(
            matches!(result, Err(ClientError::Cancelled))
                || matches!(&result, Err(ClientError::Io(e)) if e.to_string().contains("cancel")),
            "a cancelled download: {result:?}"
        );
        assert!(
            out.len() < data.len(),
            "the whole blob arrived although the download was cancelled"
        );

        // Over the WebSocket: cancel after the first progress message; the server confirms.
        let mut ws = c.websocket().await.expect("websocket");
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let request = StreamOptions {
            chunk_size: 1024,
            ..StreamOptions::default()
        }
        .request(&hash);
        let mut out = Vec::new();
        let result = ws
            .stream_blob(&request, &mut out, |_| trigger.cancel(), &cancel)
            .await;
        assert!(
            matches!(result, Err(ClientError::Cancelled)),
            "a cancelled WebSocket stream: {result:?}"
        );
        assert!(out.len() < data.len());
        // The connection still serves a whole (small) range afterwards.
        let small = StreamOptions {
            chunk_size: 4096,
            start_offset: 100,
            end_offset: Some(100_099),
            ..StreamOptions::default()
        }
        .request(&hash);
        let mut out = Vec::new();
        ws.stream_blob(&small, &mut out, |_| {}, &CancellationToken::new())
            .await
            .expect("a stream after a cancel");
        assert!(out == data[100..100_100]);
    });
    // Neither cancelled session lingers as active for long: one was cancelled by the client
    // reader's close or the server's cancel; the gauge counts only open sessions.
    let active = server
        .metric("govcfs_stream_sessions_active")
        .unwrap_or(-1.0);
    assert!(
        active <= 2.0,
        "{active} sessions active after two cancelled streams"
    );
}

#[test]
fn cli_get_stream_and_ws_write_the_same_bytes_as_a_plain_get() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source.bin");
    std::fs::write(&source, half_compressible(7 * MIB as usize + 5, 5)).expect("write source");
    let url = format!("{}/docs/source.bin", server.repo_url("default"));
    run_cli(&["put", source.to_str().unwrap(), &url]).assert_success("govcfs put");
    let data = std::fs::read(&source).expect("read source");
    for args in [
        &["--stream"][..],
        &["--ws"],
        &["--stream", "--compress", "--chunk-size", "64K"],
        &["--ws", "--compress", "--chunk-size", "300K"],
    ] {
        let out = dir.path().join("out.bin");
        let mut cli_args = vec!["get", url.as_str(), "-o", out.to_str().unwrap()];
        cli_args.extend_from_slice(args);
        run_cli(&cli_args).assert_success(&format!("govcfs get {args:?}"));
        assert!(
            std::fs::read(&out).expect("read out") == data,
            "govcfs get {args:?} wrote other bytes"
        );
        let mut ranged = vec!["get", url.as_str(), "--range", "1000-2999999"];
        ranged.extend_from_slice(args);
        let got = run_cli(&ranged);
        got.assert_success(&format!("govcfs get --range {args:?}"));
        assert!(
            got.stdout == data[1000..3_000_000],
            "govcfs get --range {args:?} wrote other bytes"
        );
    }
    let missing = run_cli(&[
        "get",
        &format!("{}/docs/nope", server.repo_url("default")),
        "--ws",
    ]);
    assert!(
        !missing.status.success(),
        "get --ws of a missing file succeeded"
    );
}

#[test]
fn streaming_1_gib_through_a_session_keeps_the_servers_memory_flat() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("big.bin");
    write_fast_random_file(&source, 1 << 30, 6);
    let url = format!("{}/big.bin", server.repo_url("default"));
    run_cli(&["put", source.to_str().unwrap(), &url]).assert_success("govcfs put 1 GiB");
    std::fs::remove_file(&source).expect("remove the source");
    let before = server.rss_kib().expect("server RSS");
    let sampler = ProcSampler::start(server.pid());
    let out = dir.path().join("out.bin");
    let got = run_cli_with(
        &[
            "get",
            &url,
            "--stream",
            "--chunk-size",
            "4M",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(900),
    );
    let samples = sampler.stop();
    got.assert_success("govcfs get --stream of 1 GiB");
    assert_eq!(std::fs::metadata(&out).expect("output").len(), 1 << 30);
    let growth_mib = samples.max_rss_kib.saturating_sub(before) / 1024;
    println!(
        "get --stream of 1 GiB: {:.1?} ({:.0} MiB/s), server RSS {} MiB before, peak {} MiB (+{growth_mib} MiB)",
        got.elapsed,
        mib_per_s(GIB, got.elapsed),
        before / 1024,
        samples.max_rss_kib / 1024,
    );
    assert!(
        growth_mib < 64,
        "the server grew by {growth_mib} MiB while streaming 1 GiB through a session"
    );
    // Keep the random generator's output honest: the downloaded file is not all zeros.
    let mut rng = XorShift::new(1);
    let at = rng.next_u64() % ((1 << 30) - 4096);
    let mut probe = vec![0u8; 4096];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&out)
        .expect("open")
        .read_exact_at(&mut probe, at)
        .expect("read");
    assert!(probe.iter().any(|b| *b != 0));
}

fn received(server: &ServerProcess) -> u64 {
    server
        .metric("govcfs_blob_bytes_received_total")
        .expect("the counter") as u64
}

#[test]
fn a_reupload_with_one_changed_chunk_sends_only_that_chunk() {
    let server = ServerProcess::start();
    let client = client(&server);
    let cancel = CancellationToken::new();
    let chunk = common::CHUNK;
    let mut data = random_bytes(5 * chunk + 1000, 16);
    let options = govcfs::client::UploadOptions::default();
    block_on(async {
        let first = client
            .upload(&mut std::io::Cursor::new(data.clone()), &options, &cancel)
            .await
            .expect("first upload");
        assert_eq!(first.hash, common::blob_id(&data));
        data[2 * chunk + 100] ^= 0xff;
        let before = received(&server);
        let second = client
            .upload(&mut std::io::Cursor::new(data.clone()), &options, &cancel)
            .await
            .expect("second upload");
        let sent = received(&server) - before;
        assert_eq!(second.hash, common::blob_id(&data));
        assert_eq!(sent, chunk as u64, "only the changed chunk is sent again");
        let mut back = Vec::new();
        let options = govcfs::client::DownloadOptions::default();
        client
            .download(&second.hash, &mut back, &options, &cancel)
            .await
            .expect("download, checked against the manifest");
        assert!(back == data, "the download differs");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("file");
    std::fs::write(&local, &data).expect("write");
    let out = run_cli(&["hash", local.to_str().expect("UTF-8")]);
    out.assert_success("govcfs hash");
    assert!(
        out.stdout_text().starts_with(&common::blob_id(&data)),
        "govcfs hash prints the blob id: {}",
        out.stdout_text()
    );
}
