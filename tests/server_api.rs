//! Integration tests of the HTTP server (CONTRACT §2–§4) and of the CLI against it. Every test
//! starts the real `govcfs serve` binary on an ephemeral loopback port with its own data
//! directory and talks to it over HTTP.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    json_of(http.get(url).send().await.expect("GET")).await
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    json_of(http.post(url).json(body).send().await.expect("POST")).await
}

/// Uploads `data` through the resumable upload API and returns the `complete` answer.
async fn upload(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    data: &[u8],
    chunk_size: Option<u64>,
) -> Value {
    upload_blob(http, &srv.api(repo), data, chunk_size).await
}

/// Uploads `data` and commits it at `path` of `repo`; returns (blob id, commit id).
async fn put_file(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    path: &str,
    data: &[u8],
) -> (String, String) {
    let info = upload(http, srv, repo, data, None).await;
    let hash = info["hash"].as_str().unwrap().to_string();
    let (status, created) = commit(
        http,
        srv,
        repo,
        json!([{ "op": "put", "path": path, "hash": hash }]),
    )
    .await;
    assert_eq!(status, 201, "commit {path}: {created}");
    (hash, created["commit"].as_str().unwrap().to_string())
}

/// Posts a commit with these changes to the default branch.
async fn commit(
    http: &reqwest::Client,
    srv: &ServerProcess,
    repo: &str,
    changes: Value,
) -> (u16, Value) {
    post_json(
        http,
        &format!("{}/commits", srv.api(repo)),
        &json!({ "message": "test", "changes": changes }),
    )
    .await
}

/// The head commit of `repo`'s default branch, from `GET /api/v1/repos`.
async fn repo_head(http: &reqwest::Client, srv: &ServerProcess, repo: &str) -> String {
    let (status, list) = get_json(http, &format!("{}/api/v1/repos", srv.url())).await;
    assert_eq!(status, 200);
    list["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == repo)
        .and_then(|r| r["head"].as_str())
        .unwrap_or_else(|| panic!("no head for {repo} in {list}"))
        .to_string()
}

/// All `href` values of an HTML page.
fn hrefs(html: &str) -> Vec<String> {
    html.split("<a href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Blob ids
// ---------------------------------------------------------------------------------------

/// Blob ids are the manifest ids the contract defines (computed here from its text, not by
/// the crate), whatever the upload's chunk size, and `govcfs hash` prints the same id.
#[test]
fn blob_ids_are_the_manifest_ids_of_the_contract() {
    let work = tempfile::tempdir().unwrap();
    let (srv, http) = server_and_client();
    let contents: Vec<(&str, Vec<u8>, u64)> = vec![
        ("empty", Vec::new(), 0),
        ("hello", b"hello\n".to_vec(), 1),
        ("random", random_bytes(1 << 20, 1), 1),
        ("two-chunks", random_bytes(CHUNK + 1, 2), 2),
    ];
    block_on(async {
        for (name, data, chunks) in &contents {
            let id = blob_id(data);
            let file = work.path().join(name);
            std::fs::write(&file, data).unwrap();
            let out = run_cli(&["hash", file.to_str().unwrap()]);
            out.assert_success("govcfs hash");
            assert_eq!(out.stdout_text(), format!("{id}  {}\n", file.display()));
            // One upload with the default chunk size, one with many small chunks.
            for chunk_size in [None, Some(64 << 10)] {
                let info = upload(&http, &srv, "default", data, chunk_size).await;
                assert_eq!(info["hash"], id.as_str(), "{name} ({chunk_size:?})");
                assert_eq!(info["size"], data.len() as u64, "{name}");
                assert_eq!(info["chunks"], *chunks, "{name}");
            }
            let body = http
                .get(format!("{}/blobs/{id}", srv.api("default")))
                .send()
                .await
                .unwrap();
            assert_eq!(body.status(), 200);
            assert_eq!(
                body.bytes().await.unwrap().as_ref(),
                &data[..],
                "{name}: stored bytes"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// 2. Ranges
// ---------------------------------------------------------------------------------------

const RANGE_BLOB_LEN: u64 = 300_007;

/// Checks one `Range: bytes=start-end` request on `url` against `data`.
async fn check_range(
    http: &reqwest::Client,
    url: &str,
    data: &[u8],
    start: u64,
    end: u64,
) -> Result<(), TestCaseError> {
    let len = data.len() as u64;
    let response = http
        .get(url)
        .header("Range", format!("bytes={start}-{end}"))
        .send()
        .await
        .expect("GET range");
    let status = response.status().as_u16();
    let content_range = response
        .headers()
        .get("content-range")
        .map(|v| v.to_str().unwrap().to_string());
    let md5 = response
        .headers()
        .get("x-checksum-md5")
        .map(|v| v.to_str().unwrap().to_string());
    let crc = response
        .headers()
        .get("x-checksum-crc32c")
        .map(|v| v.to_str().unwrap().to_string());
    let content_length = response.content_length();
    let body = response.bytes().await.expect("body");
    if start >= len {
        prop_assert_eq!(status, 416, "{} bytes={}-{}", url, start, end);
        prop_assert_eq!(content_range, Some(format!("bytes */{len}")));
        return Ok(());
    }
    let last = end.min(len - 1);
    prop_assert_eq!(status, 206, "{} bytes={}-{}", url, start, end);
    prop_assert_eq!(content_range, Some(format!("bytes {start}-{last}/{len}")));
    prop_assert_eq!(content_length, Some(last - start + 1));
    prop_assert!(
        body.as_ref() == &data[start as usize..=last as usize],
        "{} bytes={}-{}: wrong bytes",
        url,
        start,
        end
    );
    // One aligned 1 MiB block (or the blob's tail from a block start) carries the CRC32C of
    // the store's index; any other range the MD5 of its bytes.
    let one_block = start.is_multiple_of(MIB) && last + 1 == (start + MIB).min(len);
    let (want_md5, want_crc) = match one_block {
        true => (None, Some(govcfs::base::checksum::crc32c_hex(&body))),
        false => (Some(md5_hex(&body)), None),
    };
    prop_assert_eq!(md5, want_md5, "X-Checksum-MD5 of bytes={}-{}", start, end);
    prop_assert_eq!(
        crc,
        want_crc,
        "X-Checksum-CRC32C of bytes={}-{}",
        start,
        end
    );
    Ok(())
}

#[test]
fn range_requests_return_exactly_the_requested_slice() {
    let (srv, http) = server_and_client();
    let rt = runtime();
    let data = random_bytes(RANGE_BLOB_LEN as usize, 2);
    let (hash, _) = rt.block_on(put_file(&http, &srv, "default", "ranges/blob.bin", &data));
    let urls = [
        format!("{}/default/ranges/blob.bin", srv.url()),
        format!("{}/blobs/{hash}", srv.api("default")),
    ];

    // Fixed edge cases first, then random ones biased towards both ends of the blob.
    let len = RANGE_BLOB_LEN;
    let fixed = [
        (0, 0),
        (0, 1),
        (len - 1, len - 1),
        (len - 2, len + 5),
        (0, len - 1),
        (0, len),
        (0, u64::MAX / 2),
        (len, len),
        (len, len + 9),
        (len + 1000, len + 2000),
    ];
    rt.block_on(async {
        for url in &urls {
            for (start, end) in fixed {
                check_range(&http, url, &data, start, end)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    });
    let starts = prop_oneof![0u64..16, (len - 16)..(len + 16), 0u64..(len + 4096)];
    let lengths = prop_oneof![0u64..16, 0u64..(len + 4096)];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(starts, lengths), |(start, length)| {
            rt.block_on(async {
                for url in &urls {
                    check_range(&http, url, &data, start, start + length).await?;
                }
                Ok(())
            })
        })
        .unwrap();

    // Suffix ranges within the length, and the checksum of each.
    rt.block_on(async {
        for url in &urls {
            for n in [1u64, 2, 100, 65_536, len - 1, len] {
                let response = http
                    .get(url)
                    .header("Range", format!("bytes=-{n}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 206, "bytes=-{n}");
                let cr = response.headers()["content-range"]
                    .to_str()
                    .unwrap()
                    .to_string();
                assert_eq!(cr, format!("bytes {}-{}/{len}", len - n, len - 1));
                // The whole blob is its one block: the CRC32C of the index, not an MD5.
                let (name, sum): (&str, fn(&[u8]) -> String) = match n == len {
                    true => ("x-checksum-crc32c", govcfs::base::checksum::crc32c_hex),
                    false => ("x-checksum-md5", md5_hex),
                };
                let got = response.headers()[name].to_str().unwrap().to_string();
                let body = response.bytes().await.unwrap();
                assert_eq!(body.as_ref(), &data[(len - n) as usize..], "bytes=-{n}");
                assert_eq!(got, sum(&body), "{name} of bytes=-{n}");
            }
            // Open-ended range.
            let response = http
                .get(url)
                .header("Range", "bytes=299000-")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 206);
            assert_eq!(response.bytes().await.unwrap().as_ref(), &data[299_000..]);
            // A whole-body GET of this one-chunk blob carries the CRC32C of its one block and
            // the SHA-256 that names its chunk.
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.headers()["x-checksum-crc32c"].to_str().unwrap(),
                govcfs::base::checksum::crc32c_hex(&data)
            );
            assert_eq!(
                response.headers()["x-checksum-sha256"].to_str().unwrap(),
                sha256_hex(&data)
            );
            assert_eq!(response.bytes().await.unwrap().as_ref(), &data[..]);
        }
    });
}

/// `(X-Checksum-MD5, X-Checksum-SHA256, X-Checksum-CRC32C)` of an answer.
type Sums = (Option<String>, Option<String>, Option<String>);

/// The checksum headers and the bytes of a ranged GET.
fn ranged_sums(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    url: &str,
    range: std::ops::Range<usize>,
) -> (Sums, Vec<u8>) {
    rt.block_on(async {
        let response = http
            .get(url)
            .header("Range", format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let sums = (
            header("x-checksum-md5"),
            header("x-checksum-sha256"),
            header("x-checksum-crc32c"),
        );
        (sums, response.bytes().await.unwrap().to_vec())
    })
}

/// Aligned 1 MiB blocks are answered with the CRC32C the store indexed when the chunk was
/// written, a whole chunk with the SHA-256 that names it, any other range with the MD5 of
/// its bytes.
#[test]
fn aligned_blocks_carry_the_checksums_of_the_block_index() {
    let (srv, http) = server_and_client();
    let rt = runtime();
    let data = random_bytes(CHUNK + 2 * MIB as usize + 12_345, 7);
    let (hash, _) = rt.block_on(put_file(&http, &srv, "default", "blocks.bin", &data));
    let url = format!("{}/blobs/{hash}", srv.api("default"));
    let m = MIB as usize;
    for (start, end) in [(0, m), (m, 2 * m), (CHUNK + 2 * m, data.len())] {
        let (sums, body) = ranged_sums(&rt, &http, &url, start..end);
        assert!(body == data[start..end], "bytes of block at {start}");
        let crc = govcfs::base::checksum::crc32c_hex(&data[start..end]);
        assert_eq!(sums, (None, None, Some(crc)), "block at {start}");
    }
    let (sums, _) = ranged_sums(&rt, &http, &url, 0..CHUNK);
    assert_eq!(sums.1, Some(sha256_hex(&data[..CHUNK])), "a whole chunk");
    let (sums, _) = ranged_sums(&rt, &http, &url, 10..m + 10);
    assert_eq!(
        sums,
        (Some(md5_hex(&data[10..m + 10])), None, None),
        "unaligned"
    );
}

/// A blob of a store written before chunking (one object under its Git-style id, with its
/// block index beside it) is still served: its blocks with the MD5, SHA-256 and CRC32C of
/// its `.idx2` index, or MD5 and SHA-256 of the oldest `.idx` one.
#[test]
fn a_blob_of_a_store_before_chunking_keeps_its_id_and_block_index() {
    let (srv, http) = server_and_client();
    let rt = runtime();
    let data = random_bytes(2 * MIB as usize + 12_345, 8);
    let hash = legacy_blob_id(&data);
    let objects = srv
        .data_dir()
        .join(format!("repos/default/objects/{}", &hash[..2]));
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join(&hash), &data).unwrap();
    let mut indexer = govcfs::store::index::BlockIndexer::default();
    indexer.update(&data);
    let index = indexer.finish();
    std::fs::write(objects.join(format!("{hash}.idx2")), &index).unwrap();
    let url = format!("{}/blobs/{hash}", srv.api("default"));
    let m = MIB as usize;
    let blocks = [(0, m), (m, 2 * m), (2 * m, data.len())];
    for &(start, end) in &blocks {
        let block = &data[start..end];
        let (sums, body) = ranged_sums(&rt, &http, &url, start..end);
        assert!(body == block, "bytes of block at {start}");
        let crc = govcfs::base::checksum::crc32c_hex(block);
        assert_eq!(
            sums,
            (Some(md5_hex(block)), Some(sha256_hex(block)), Some(crc))
        );
    }
    // Rewrite the index as a store written before CRC32C had it.
    let legacy: Vec<u8> = index.chunks(52).flat_map(|e| e[..48].to_vec()).collect();
    std::fs::write(objects.join(format!("{hash}.idx")), legacy).unwrap();
    std::fs::remove_file(objects.join(format!("{hash}.idx2"))).unwrap();
    for &(start, end) in &blocks {
        let block = &data[start..end];
        let (sums, _) = ranged_sums(&rt, &http, &url, start..end);
        assert_eq!(sums, (Some(md5_hex(block)), Some(sha256_hex(block)), None));
    }
}

/// RFC 7233 §2.1: "If the selected representation is shorter than the specified
/// suffix-length, the entire representation is used." (It used to answer 416.)
#[test]
fn suffix_range_longer_than_the_blob_returns_the_whole_blob() {
    let (srv, http) = server_and_client();
    block_on(async {
        let (hash, _) = put_file(&http, &srv, "default", "h.txt", b"hello\n").await;
        for url in [
            format!("{}/default/h.txt", srv.url()),
            format!("{}/blobs/{hash}", srv.api("default")),
        ] {
            let response = http
                .get(&url)
                .header("Range", "bytes=-100")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 206, "{url}");
            assert_eq!(response.headers()["content-range"], "bytes 0-5/6");
            assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello\n");
        }
    });
}

/// A range on an empty blob can never be satisfied: RFC 7233 wants 416 (or the Range header
/// ignored, 200). (It used to answer 500, asking the store for bytes 0..1.)
#[test]
fn range_on_an_empty_blob_is_never_a_server_error() {
    let (srv, http) = server_and_client();
    block_on(async {
        let (hash, _) = put_file(&http, &srv, "default", "empty", b"").await;
        for url in [
            format!("{}/default/empty", srv.url()),
            format!("{}/blobs/{hash}", srv.api("default")),
        ] {
            for range in ["bytes=0-0", "bytes=0-", "bytes=0-100", "bytes=-1"] {
                let response = http.get(&url).header("Range", range).send().await.unwrap();
                let status = response.status().as_u16();
                assert!(status == 416 || status == 200, "{url} {range}: {status}");
                if status == 416 {
                    assert_eq!(response.headers()["content-range"], "bytes */0");
                }
            }
        }
    });
}

/// The CLI downloads with `Range: bytes=0-`, so the empty-blob range bug above makes
/// `govcfs get` of an empty file fail (after five retries of the 500).
#[test]
fn cli_get_of_an_empty_file_succeeds() {
    let (srv, http) = server_and_client();
    block_on(put_file(&http, &srv, "default", "empty", b""));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let url = format!("{}/empty", srv.repo_url("default"));
    run_cli(&["get", &url, "-o", out.to_str().unwrap()])
        .assert_success("govcfs get of an empty file");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
}

/// RFC 7233 §2.1: a byte-range-spec whose last-byte-pos is less than its first-byte-pos is
/// syntactically invalid, and §3.1 says an invalid Range header is ignored (200, whole body).
#[test]
fn reversed_range_is_ignored() {
    let (srv, http) = server_and_client();
    block_on(async {
        put_file(&http, &srv, "default", "h.txt", b"hello\n").await;
        let response = http
            .get(format!("{}/default/h.txt", srv.url()))
            .header("Range", "bytes=5-3")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello\n");
    });
}

// ---------------------------------------------------------------------------------------
// 3. Browsable view
// ---------------------------------------------------------------------------------------

#[test]
fn browsable_view_serves_files_and_indexes() {
    let (srv, http) = server_and_client();
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    block_on(async {
        let readme = b"hello world\n";
        let (hash, _) = put_file(&http, &srv, "default", "docs/readme.txt", readme).await;
        put_file(&http, &srv, "default", "docs/my file.txt", b"spaces").await;
        put_file(
            &http,
            &srv,
            "default",
            "docs/sub/inner.bin",
            &random_bytes(1000, 3),
        )
        .await;
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "mkdir", "path": "docs/empty" }]),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let file_url = format!("{}/default/docs/readme.txt", srv.url());
        let etag = format!("\"{hash}\"");

        // HEAD: the headers of the contract, no body.
        let head = http.head(&file_url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        let h = head.headers();
        assert_eq!(h["content-length"], readme.len().to_string().as_str());
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["etag"], etag.as_str());
        let last_modified =
            httpdate::parse_http_date(h["last-modified"].to_str().unwrap()).expect("HTTP date");
        let (_, stat) = get_json(
            &http,
            &format!("{}/stat/docs/readme.txt", srv.api("default")),
        )
        .await;
        let mtime = std::time::UNIX_EPOCH + Duration::from_secs(stat["mtime"].as_u64().unwrap());
        assert_eq!(last_modified, mtime, "Last-Modified is the entry's mtime");
        assert!(head.bytes().await.unwrap().is_empty());

        // GET: the bytes.
        let get = http.get(&file_url).send().await.unwrap();
        assert_eq!(get.status(), 200);
        assert_eq!(get.headers()["etag"], etag.as_str());
        assert_eq!(get.bytes().await.unwrap().as_ref(), readme);

        // If-None-Match.
        for tag in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"zzz\", {etag}"),
            "*".to_string(),
        ] {
            let r = http
                .get(&file_url)
                .header("If-None-Match", &tag)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 304, "If-None-Match: {tag}");
            assert!(r.bytes().await.unwrap().is_empty());
        }
        let r = http
            .get(&file_url)
            .header("If-None-Match", "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), readme);

        // If-Range: a stale validator gets the whole body, the current one the range.
        let r = http
            .get(&file_url)
            .header("Range", "bytes=0-4")
            .header("If-Range", "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("content-range").is_none());
        assert_eq!(r.bytes().await.unwrap().as_ref(), readme);
        let r = http
            .get(&file_url)
            .header("Range", "bytes=0-4")
            .header("If-Range", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello");

        // Directory index: one link per entry, directories end in '/'.
        let (_, listing) = get_json(&http, &format!("{}/tree/docs", srv.api("default"))).await;
        let entries = listing["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 4, "{listing}");
        let index = http
            .get(format!("{}/default/docs/", srv.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(index.status(), 200);
        assert!(index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = index.text().await.unwrap();
        let links: Vec<String> = hrefs(&html).into_iter().filter(|h| h != "../").collect();
        assert_eq!(links.len(), entries.len(), "one link per entry: {html}");
        let links: BTreeSet<String> = links.into_iter().collect();
        let want: BTreeSet<String> = ["readme.txt", "my%20file.txt", "sub/", "empty/"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(links, want, "{html}");
        // Every link resolves, relative to the index URL.
        let base = reqwest::Url::parse(&format!("{}/default/docs/", srv.url())).unwrap();
        for link in &links {
            let target = base.join(link).unwrap();
            let r = http.get(target.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200, "{target}");
        }
        let r = http
            .get(base.join("my%20file.txt").unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"spaces");
        // The empty directory has an index with no entries.
        let html = http
            .get(format!("{}/default/docs/empty/", srv.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(hrefs(&html).iter().all(|h| h == "../"), "{html}");
        // The root index.
        let html = http
            .get(format!("{}/default/", srv.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(hrefs(&html), vec!["docs/".to_string()], "{html}");

        // A directory URL without the trailing slash redirects to the one with it.
        for (url, want) in [
            (
                format!("{}/default/docs", srv.url()),
                format!("{}/default/docs/", srv.url()),
            ),
            (
                format!("{}/default/docs/sub", srv.url()),
                format!("{}/default/docs/sub/", srv.url()),
            ),
            (
                format!("{}/default", srv.url()),
                format!("{}/default/", srv.url()),
            ),
        ] {
            let r = no_redirect.get(&url).send().await.unwrap();
            assert!(r.status().is_redirection(), "{url}: {}", r.status());
            let location = r.headers()["location"].to_str().unwrap();
            let resolved = reqwest::Url::parse(&url).unwrap().join(location).unwrap();
            assert_eq!(resolved.as_str(), want, "{url} -> {location}");
        }
        let followed = http
            .get(format!("{}/default/docs", srv.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(followed.status(), 200);
        assert_eq!(
            followed.url().as_str(),
            format!("{}/default/docs/", srv.url())
        );

        // A file URL with a trailing slash is not a directory; a missing path is 404.
        let r = http.get(format!("{file_url}/")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let r = http
            .get(format!("{}/default/docs/nope.txt", srv.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    });
}

/// `?ref=` picks another ref in the browsable view, but the directory redirect and the
/// index links drop it, so navigating an old version silently switches to the branch head.
#[test]
fn browsing_a_ref_stays_on_that_ref() {
    let (srv, http) = server_and_client();
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    block_on(async {
        let (_, old) = put_file(&http, &srv, "default", "docs/f.txt", b"v1").await;
        put_file(&http, &srv, "default", "docs/f.txt", b"v2").await;
        let dir_url = format!("{}/default/docs?ref={old}", srv.url());
        let r = no_redirect.get(&dir_url).send().await.unwrap();
        assert!(r.status().is_redirection());
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let target = reqwest::Url::parse(&dir_url)
            .unwrap()
            .join(&location)
            .unwrap();
        assert!(
            target.query().is_some_and(|q| q.contains(&old)),
            "redirect drops ?ref=: {location}"
        );
        let index_url =
            reqwest::Url::parse(&format!("{}/default/docs/?ref={old}", srv.url())).unwrap();
        let html = http
            .get(index_url.clone())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let link = hrefs(&html)
            .into_iter()
            .find(|h| h.starts_with("f.txt"))
            .expect("a link to f.txt");
        let body = http
            .get(index_url.join(&link).unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            body.as_ref(),
            b"v1",
            "the index link of an old ref leads to the head's version"
        );
    });
}

/// HEAD must answer the headers GET would (RFC 9110 §9.3.2); for a directory index the
/// server sends `Content-Length: 0` although GET sends a non-empty page.
#[test]
fn head_of_a_directory_index_matches_get() {
    let (srv, http) = server_and_client();
    block_on(async {
        put_file(&http, &srv, "default", "docs/f.txt", b"x").await;
        let url = format!("{}/default/docs/", srv.url());
        let get_len = http
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len() as u64;
        let head = http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        if let Some(len) = head.headers().get("content-length") {
            assert_eq!(
                len.to_str().unwrap().parse::<u64>().unwrap(),
                get_len,
                "HEAD Content-Length"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// 4. Commits
// ---------------------------------------------------------------------------------------

#[test]
fn commits_are_atomic_and_conflicts_are_409() {
    let (srv, http) = server_and_client();
    block_on(async {
        let api = srv.api("default");
        let a = upload(&http, &srv, "default", b"version A", None).await["hash"]
            .as_str()
            .unwrap()
            .to_string();
        let b = upload(&http, &srv, "default", b"version B", None).await["hash"]
            .as_str()
            .unwrap()
            .to_string();
        let mut commits = Vec::new();

        let (status, created) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "put", "path": "a.txt", "hash": a }]),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["ref"], "main");
        commits.push(created["commit"].as_str().unwrap().to_string());
        let head = repo_head(&http, &srv, "default").await;
        assert_eq!(head, commits[0]);

        // Two changes, the second with a failing expect: nothing happens.
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([
                { "op": "put", "path": "new.txt", "hash": b },
                { "op": "put", "path": "a.txt", "hash": b, "expect": b },
            ]),
        )
        .await;
        assert_error("failing expect", status, &body, 409, "conflict");
        assert_eq!(body["path"], "a.txt");
        assert_eq!(
            repo_head(&http, &srv, "default").await,
            head,
            "the head moved"
        );
        let (status, _) = get_json(&http, &format!("{api}/stat/new.txt")).await;
        assert_eq!(
            status, 404,
            "the first change of a failed commit is visible"
        );
        let (_, stat) = get_json(&http, &format!("{api}/stat/a.txt")).await;
        assert_eq!(stat["hash"], a.as_str());

        // expect: null means "must not exist".
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "put", "path": "a.txt", "hash": b, "expect": null }]),
        )
        .await;
        assert_error(
            "expect null on an existing path",
            status,
            &body,
            409,
            "conflict",
        );
        assert_eq!(body["path"], "a.txt");
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "put", "path": "fresh.txt", "hash": b, "expect": null }]),
        )
        .await;
        assert_eq!(status, 201, "expect null on a missing path: {body}");
        commits.push(body["commit"].as_str().unwrap().to_string());

        // The right expect succeeds.
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "put", "path": "a.txt", "hash": b, "expect": a }]),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        commits.push(body["commit"].as_str().unwrap().to_string());
        let (_, stat) = get_json(&http, &format!("{api}/stat/a.txt")).await;
        assert_eq!(stat["hash"], b.as_str());
        assert_eq!(stat["type"], "file");
        assert_eq!(stat["size"], 9);

        // delete with a wrong expect is a conflict; delete, move and mkdir work.
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "delete", "path": "fresh.txt", "expect": a }]),
        )
        .await;
        assert_error("delete with a wrong expect", status, &body, 409, "conflict");
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([
                { "op": "delete", "path": "fresh.txt", "expect": b },
                { "op": "move", "from": "a.txt", "to": "moved/a.txt" },
                { "op": "mkdir", "path": "emptydir" },
                { "op": "mkdir", "path": "deep/er/dir" },
            ]),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        commits.push(body["commit"].as_str().unwrap().to_string());
        for gone in ["fresh.txt", "a.txt"] {
            let (status, body) = get_json(&http, &format!("{api}/stat/{gone}")).await;
            assert_error(gone, status, &body, 404, "not_found");
        }
        let (_, stat) = get_json(&http, &format!("{api}/stat/moved/a.txt")).await;
        assert_eq!(stat["hash"], b.as_str());
        let (status, root) = get_json(&http, &format!("{api}/tree")).await;
        assert_eq!(status, 200);
        assert_eq!(root["commit"], commits[3].as_str());
        let names: BTreeSet<(String, String)> = root["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String)> = [
            ("deep", "directory"),
            ("emptydir", "directory"),
            ("moved", "directory"),
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
        assert_eq!(names, want, "{root}");
        for dir in ["emptydir", "deep/er/dir"] {
            let (status, listing) = get_json(&http, &format!("{api}/tree/{dir}")).await;
            assert_eq!(status, 200, "{listing}");
            assert_eq!(listing["entries"], json!([]), "{dir}");
            let (_, stat) = get_json(&http, &format!("{api}/stat/{dir}")).await;
            assert_eq!(stat["type"], "directory");
        }
        // Deleting a missing path fails without a commit.
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "delete", "path": "never.txt" }]),
        )
        .await;
        assert!(
            status == 404 || status == 409,
            "delete of a missing path: {status} {body}"
        );

        // The log lists commits newest first, each the parent of the one before it.
        let (status, log) = get_json(&http, &format!("{api}/log")).await;
        assert_eq!(status, 200);
        let log = log["commits"].as_array().unwrap().clone();
        let ids: Vec<&str> = log.iter().map(|c| c["commit"].as_str().unwrap()).collect();
        let newest_first: Vec<&str> = commits.iter().rev().map(String::as_str).collect();
        assert_eq!(&ids[..commits.len()], &newest_first[..], "log order");
        assert_eq!(
            ids.len(),
            commits.len() + 1,
            "the repository's first commit ends the log"
        );
        for pair in log.windows(2) {
            assert_eq!(pair[0]["parent"], pair[1]["commit"]);
            assert!(pair[0]["timestamp"].as_i64() >= pair[1]["timestamp"].as_i64());
        }
        assert!(log.last().unwrap()["parent"].is_null());
        let (_, limited) = get_json(&http, &format!("{api}/log?limit=2")).await;
        assert_eq!(limited["commits"].as_array().unwrap().len(), 2);
        assert_eq!(
            srv.metric("govcfs_commits_total"),
            Some(commits.len() as f64)
        );
    });
}

/// The sorted `(path, type, hash)` of every entry under `dir`, recursively.
async fn walk(
    http: &reqwest::Client,
    srv: &ServerProcess,
    dir: &str,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_string()];
    while let Some(d) = pending.pop() {
        let url = if d.is_empty() {
            format!("{}/tree", srv.api("default"))
        } else {
            format!("{}/tree/{d}", srv.api("default"))
        };
        let (status, listing) = get_json(http, &url).await;
        assert_eq!(status, 200, "{url}: {listing}");
        for e in listing["entries"].as_array().unwrap() {
            let path = e["path"].as_str().unwrap().to_string();
            let kind = e["type"].as_str().unwrap().to_string();
            if kind == "directory" {
                pending.push(path.clone());
            }
            let hash = if kind == "directory" {
                String::new()
            } else {
                e["hash"].as_str().unwrap().to_string()
            };
            out.push((path, kind, hash));
        }
    }
    out.sort();
    out
}

#[test]
fn compound_and_concurrent_commits() {
    let (srv, http) = server_and_client();
    block_on(async {
        let f = upload(&http, &srv, "default", b"f", None).await["hash"]
            .as_str()
            .unwrap()
            .to_string();
        let g = upload(&http, &srv, "default", b"g", None).await["hash"]
            .as_str()
            .unwrap()
            .to_string();
        // Edits inside a directory created and moved in the same commit.
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([
                { "op": "mkdir", "path": "x/y" },
                { "op": "put", "path": "x/y/f", "hash": f },
                { "op": "put", "path": "x/g", "hash": g },
                { "op": "move", "from": "x", "to": "z" },
                { "op": "put", "path": "z/y/g2", "hash": g },
            ]),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let d = |p: &str| (p.to_string(), "directory".to_string(), String::new());
        let file = |p: &str, h: &str| (p.to_string(), "file".to_string(), h.to_string());
        let mut want = vec![
            d("z"),
            d("z/y"),
            file("z/y/f", &f),
            file("z/y/g2", &g),
            file("z/g", &g),
        ];
        want.sort();
        assert_eq!(walk(&http, &srv, "").await, want);

        // Structural conflicts: nothing changes.
        let before = walk(&http, &srv, "").await;
        for (what, changes, codes) in [
            (
                "put under a file",
                json!([{ "op": "put", "path": "z/g/inner", "hash": f }]),
                [409, 409],
            ),
            (
                "put over a directory",
                json!([{ "op": "put", "path": "z/y", "hash": f }]),
                [409, 409],
            ),
            (
                "mkdir over a file",
                json!([{ "op": "mkdir", "path": "z/g" }]),
                [409, 409],
            ),
            (
                "move into itself",
                json!([{ "op": "move", "from": "z", "to": "z/y/inside" }]),
                [400, 409],
            ),
            (
                "move a file over a non-empty directory",
                json!([{ "op": "move", "from": "z/g", "to": "z/y" }]),
                [409, 409],
            ),
            (
                "move a missing path",
                json!([{ "op": "move", "from": "nope", "to": "z/nope" }]),
                [404, 409],
            ),
        ] {
            let (status, body) = commit(&http, &srv, "default", changes).await;
            assert!(codes.contains(&status), "{what}: {status} {body}");
            assert!(body["code"].is_string(), "{what}: {body}");
        }
        assert_eq!(
            walk(&http, &srv, "").await,
            before,
            "a refused commit changed the tree"
        );

        // Deleting a directory removes its subtree.
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "delete", "path": "z/y" }]),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let mut want = vec![d("z"), file("z/g", &g)];
        want.sort();
        assert_eq!(walk(&http, &srv, "").await, want);

        // Concurrent writers to different paths all land; one of several writers with the
        // same `expect` wins and the others get 409.
        let writers = (0..6).map(|i| {
            let (http, srv, f) = (&http, &srv, f.clone());
            async move {
                commit(
                    http,
                    srv,
                    "default",
                    json!([{ "op": "put", "path": format!("c/{i}"), "hash": f }]),
                )
                .await
            }
        });
        for (status, body) in futures::future::join_all(writers).await {
            assert_eq!(status, 201, "{body}");
        }
        let listed = walk(&http, &srv, "c").await;
        assert_eq!(listed.len(), 6, "{listed:?}");
        let racers = (0..4).map(|_| {
            let (http, srv, f, g) = (&http, &srv, f.clone(), g.clone());
            async move {
                commit(
                    http,
                    srv,
                    "default",
                    json!([{ "op": "put", "path": "z/g", "hash": f, "expect": g }]),
                )
                .await
            }
        });
        let outcomes: Vec<u16> = futures::future::join_all(racers)
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            outcomes.iter().filter(|s| **s == 201).count(),
            1,
            "{outcomes:?}"
        );
        assert_eq!(
            outcomes.iter().filter(|s| **s == 409).count(),
            3,
            "{outcomes:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// 5. 1 GiB round trip through the CLI
// ---------------------------------------------------------------------------------------

#[test]
fn one_gib_round_trip_through_the_cli_in_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    const RSS_LIMIT_KIB: u64 = 100 * 1024;
    let srv = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let out = dir.path().join("big.out");
    write_random_file(&src, SIZE, 5).unwrap();
    let url = format!("{}/big.bin", srv.repo_url("default"));

    let sampler = ProcSampler::start(srv.pid());
    // The client's retry log (debug level) tells a slow put from one that had to retry.
    let put = run_cli_with(
        &["put", src.to_str().unwrap(), &url, "-m", "1 GiB"],
        &[("RUST_LOG", "govcfs::client=debug")],
        CLI_TIMEOUT,
    );
    put.assert_success("govcfs put");
    let retries: Vec<&str> = put
        .stderr
        .lines()
        .filter(|l| l.contains("retrying"))
        .collect();
    println!(
        "put: {:.1} MiB/s ({:.1} s), CLI peak RSS {} KiB, {} retried requests{}",
        mib_per_s(SIZE, put.elapsed),
        put.elapsed.as_secs_f64(),
        put.peak_rss_kib,
        retries.len(),
        retries
            .first()
            .map(|l| format!(" (first: {l})"))
            .unwrap_or_default()
    );
    let server_after_put = srv.peak_rss_kib().unwrap_or(0);
    let during_put = sampler.stop();
    println!(
        "server during put: VmRSS max {} KiB at {:.1} s, up to {} threads",
        during_put.max_rss_kib, during_put.max_rss_at_secs, during_put.max_threads
    );
    let get = run_cli(&["get", &url, "-o", out.to_str().unwrap()]);
    get.assert_success("govcfs get");
    println!(
        "get: {:.1} MiB/s ({:.1} s), CLI peak RSS {} KiB",
        mib_per_s(SIZE, get.elapsed),
        get.elapsed.as_secs_f64(),
        get.peak_rss_kib
    );
    assert_files_equal(&src, &out);
    std::fs::remove_file(&out).unwrap();

    if have_program("curl") {
        let curl = Command::new("curl")
            .args([
                "-s",
                "--noproxy",
                "*",
                "--max-time",
                "120",
                "-o",
                "/dev/null",
                "-w",
                "%{speed_download} %{size_download}",
            ])
            .arg(format!("{}/default/big.bin", srv.url()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&curl.stdout).to_string();
        let mut parts = text.split_whitespace();
        let speed: f64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        println!(
            "curl: {:.1} MB/s, {} bytes",
            speed / 1e6,
            parts.next().unwrap_or("?")
        );
    } else {
        println!("curl is not installed: no curl throughput");
    }

    let server_peak = srv.peak_rss_kib().expect("VmHWM of the server");
    println!(
        "server peak RSS (VmHWM): {server_after_put} KiB after put, {server_peak} KiB at the end"
    );
    let received = srv
        .metric("govcfs_blob_bytes_received_total")
        .unwrap_or(0.0);
    let sent = srv.metric("govcfs_blob_bytes_sent_total").unwrap_or(0.0);
    assert!(
        received >= SIZE as f64,
        "govcfs_blob_bytes_received_total = {received}"
    );
    assert!(sent >= SIZE as f64, "govcfs_blob_bytes_sent_total = {sent}");
    assert!(
        put.peak_rss_kib < RSS_LIMIT_KIB,
        "govcfs put peak RSS {} KiB",
        put.peak_rss_kib
    );
    assert!(
        get.peak_rss_kib < RSS_LIMIT_KIB,
        "govcfs get peak RSS {} KiB",
        get.peak_rss_kib
    );
    assert!(
        server_peak < RSS_LIMIT_KIB,
        "server peak RSS {server_peak} KiB"
    );
}

/// `POST …/uploads/:id/complete` re-reads and re-writes the whole blob before it answers
/// (about 16 s per GiB on the 2-core test machine) and sends nothing meanwhile, while the
/// client gives up after its 30 s read timeout and retries `complete` from scratch (the
/// server drops the first assembly when the connection closes). Past roughly 2 GiB here,
/// every attempt times out and `govcfs put` fails after five retries, losing the upload.
/// Heavy (3 GiB file, about 10 GiB of disk, several minutes) and machine-dependent: a
/// fast disk moves the threshold up.
#[test]
fn cli_put_of_a_three_gib_file_succeeds() {
    const SIZE: u64 = 3 << 30;
    let srv = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("huge.bin");
    write_random_file(&src, SIZE, 33).unwrap();
    let put = run_cli_with(
        &[
            "put",
            src.to_str().unwrap(),
            &format!("{}/huge.bin", srv.repo_url("default")),
        ],
        &[],
        Duration::from_secs(900),
    );
    put.assert_success("govcfs put of 3 GiB");
}

// ---------------------------------------------------------------------------------------
// 6. Resumable uploads
// ---------------------------------------------------------------------------------------

#[test]
fn interrupted_uploads_resume_and_cut_chunks_are_not_kept() {
    const CHUNK: u64 = 64 << 10;
    let (srv, http) = server_and_client();
    let data = random_bytes(2 * CHUNK as usize + 1000, 6);
    let pieces: Vec<&[u8]> = data.chunks(CHUNK as usize).collect();
    assert_eq!(pieces.len(), 3);
    block_on(async {
        let api = srv.api("default");
        let (status, started) = post_json(
            &http,
            &format!("{api}/uploads"),
            &json!({ "chunk_size": CHUNK }),
        )
        .await;
        assert!(status == 200 || status == 201, "{started}");
        let id = started["upload_id"].as_str().unwrap().to_string();
        assert_eq!(started["chunk_size"], CHUNK);
        let put = |index: usize| {
            http.put(format!("{api}/uploads/{id}/{index}"))
                .header("X-Checksum-MD5", md5_hex(pieces[index]))
                .body(pieces[index].to_vec())
                .send()
        };
        for index in [0, 2] {
            assert!(put(index).await.unwrap().status().is_success());
        }
        let (status, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(upload_status["received"], json!([0, 2]));
        assert_eq!(upload_status["bytes"], CHUNK + 1000);
        let (status, body) = json_of(
            http.post(format!("{api}/uploads/{id}/complete"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error("complete with a hole", status, &body, 400, "bad_request");
        // Still resumable after the failed complete.
        let (_, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(upload_status["received"], json!([0, 2]));
        assert!(put(1).await.unwrap().status().is_success());
        let (status, info) = json_of(
            http.post(format!("{api}/uploads/{id}/complete"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(status == 200 || status == 201, "{info}");
        assert_eq!(info["hash"], blob_id(&data).as_str());
        assert_eq!(info["size"], data.len() as u64);
        assert_eq!(info["chunks"], (data.len() as u64).div_ceil(4 << 20));
        let blob = http
            .get(format!("{api}/blobs/{}", info["hash"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(blob.bytes().await.unwrap().as_ref(), &data[..]);
        let (status, _) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(status, 404, "a completed upload is gone");

        // A client that disconnects in the middle of a chunk body.
        let (_, started) = post_json(
            &http,
            &format!("{api}/uploads"),
            &json!({ "chunk_size": CHUNK }),
        )
        .await;
        let id = started["upload_id"].as_str().unwrap().to_string();
        let cut = random_bytes(CHUNK as usize, 66);
        {
            let mut socket = TcpStream::connect(srv.addr).unwrap();
            let head = format!(
                "PUT /api/v1/repos/default/uploads/{id}/0 HTTP/1.1\r\nHost: {}\r\nContent-Length: {CHUNK}\r\nX-Checksum-MD5: {}\r\n\r\n",
                srv.addr,
                md5_hex(&cut)
            );
            socket.write_all(head.as_bytes()).unwrap();
            socket.write_all(&cut[..1000]).unwrap();
            socket.flush().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            socket.shutdown(std::net::Shutdown::Both).unwrap();
        }
        // The server notices the cut connection at once; give it a moment, then check
        // repeatedly that nothing shows up.
        let deadline = Instant::now() + Duration::from_millis(800);
        while Instant::now() < deadline {
            let (status, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
            assert_eq!(status, 200);
            assert_eq!(
                upload_status["received"],
                json!([]),
                "a cut chunk was stored"
            );
            assert_eq!(upload_status["bytes"], 0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for partial in [&cut[..1000], &cut[..]] {
            let r = http
                .get(format!("{api}/blobs/{}", blob_id(partial)))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "a blob of the cut chunk exists");
        }
        // The upload is still usable.
        let r = http
            .put(format!("{api}/uploads/{id}/0"))
            .header("X-Checksum-MD5", md5_hex(&cut))
            .body(cut.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let (_, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(upload_status["received"], json!([0]));
        let r = http
            .delete(format!("{api}/uploads/{id}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "abort: {}", r.status());
        let (status, _) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(status, 404, "an aborted upload is gone");
    });
    assert!(
        !srv.log().contains("internal error"),
        "server log: {}",
        srv.log()
    );
}

#[test]
fn upload_chunks_can_be_copied_from_the_same_range_of_an_existing_blob() {
    const CHUNK: u64 = 64 << 10;
    let (srv, http) = server_and_client();
    let base = random_bytes(3 * CHUNK as usize + 500, 71);
    block_on(async {
        let api = srv.api("default");
        let base_hash = upload(&http, &srv, "default", &base, Some(CHUNK)).await["hash"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, started) = post_json(
            &http,
            &format!("{api}/uploads"),
            &json!({ "chunk_size": CHUNK }),
        )
        .await;
        let id = started["upload_id"].as_str().unwrap().to_string();
        let copy = |index: u64, source: String| {
            http.put(format!("{api}/uploads/{id}/{index}"))
                .header("X-Copy-From-Blob", source)
                .send()
        };
        for index in 0..2 {
            let r = copy(index, base_hash.clone()).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.json::<Value>().await.unwrap()["len"], CHUNK);
        }
        // Bad copies: unknown blob, an invalid id, a chunk past the blob's end, a non-empty body.
        let (status, body) = json_of(copy(2, "0".repeat(64)).await.unwrap()).await;
        assert_error("copy from an unknown blob", status, &body, 404, "not_found");
        let (status, body) = json_of(copy(2, "../x".into()).await.unwrap()).await;
        assert!(
            status == 400 || status == 404,
            "copy from an invalid id: {status} {body}"
        );
        let (status, body) = json_of(copy(4, base_hash.clone()).await.unwrap()).await;
        assert_error("copy past the end", status, &body, 400, "bad_request");
        let r = http
            .put(format!("{api}/uploads/{id}/2"))
            .header("X-Copy-From-Blob", &base_hash)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "a copy with a body");
        // Chunk 1 is replaced by real bytes; chunk 2 and 3 are new: the result is an edit.
        let mut expected = base[..3 * CHUNK as usize].to_vec();
        let patch = random_bytes(CHUNK as usize, 72);
        expected[CHUNK as usize..2 * CHUNK as usize].copy_from_slice(&patch);
        let tail = b"appended".to_vec();
        expected.extend_from_slice(&tail);
        let r = http
            .put(format!("{api}/uploads/{id}/1"))
            .body(patch.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        assert_eq!(copy(2, base_hash.clone()).await.unwrap().status(), 200);
        let r = http
            .put(format!("{api}/uploads/{id}/3"))
            .body(tail.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let (_, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(upload_status["received"], json!([0, 1, 2, 3]));
        assert_eq!(upload_status["bytes"], expected.len() as u64);
        let received_before = srv.metric("govcfs_blob_bytes_received_total").unwrap();
        let (status, info) = json_of(
            http.post(format!("{api}/uploads/{id}/complete"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(status == 200 || status == 201, "{info}");
        assert_eq!(info["hash"], blob_id(&expected).as_str());
        assert_eq!(
            srv.metric("govcfs_blob_bytes_received_total").unwrap(),
            received_before,
            "complete receives nothing"
        );
    });
    assert!(
        !srv.log().contains("internal error"),
        "server log: {}",
        srv.log()
    );
}

// ---------------------------------------------------------------------------------------
// 7. Bad inputs
// ---------------------------------------------------------------------------------------

#[test]
fn bad_inputs_get_precise_4xx_json_errors() {
    let (srv, http) = server_and_client();
    let base = srv.url();
    block_on(async {
        let api = srv.api("default");
        put_file(&http, &srv, "default", "a/b.txt", b"b").await;

        // Unknown repository and unknown path.
        for url in [
            format!("{base}/api/v1/repos/nope/tree"),
            format!("{base}/api/v1/repos/nope/stat/x"),
            format!("{base}/api/v1/repos/nope/log"),
            format!("{base}/nope/"),
        ] {
            let (status, body) = get_json(&http, &url).await;
            assert_error(&url, status, &body, 404, "not_found");
        }
        let (status, body) = post_json(
            &http,
            &format!("{base}/api/v1/repos/nope/uploads"),
            &json!({}),
        )
        .await;
        assert_error("upload to an unknown repo", status, &body, 404, "not_found");
        for url in [
            format!("{api}/stat/missing.txt"),
            format!("{api}/tree/missing"),
            format!("{api}/stat/a/b.txt/deeper"),
        ] {
            let (status, body) = get_json(&http, &url).await;
            assert_error(&url, status, &body, 404, "not_found");
        }
        let (status, body) = get_json(&http, &format!("{base}/default/missing.txt")).await;
        assert_error("browse a missing path", status, &body, 404, "not_found");
        let (status, body) = get_json(&http, &format!("{api}/tree/a/b.txt")).await;
        assert_error("tree of a file", status, &body, 400, "bad_request");

        // Malformed JSON.
        for (url, text) in [
            (format!("{base}/api/v1/repos"), "{\"id\":"),
            (format!("{base}/api/v1/repos"), "[]"),
            (format!("{api}/commits"), "{not json"),
            (
                format!("{api}/commits"),
                "{\"changes\":[{\"op\":\"explode\",\"path\":\"x\"}]}",
            ),
            (format!("{api}/uploads"), "{\"chunk_size\": \"big\"}"),
        ] {
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .body(text)
                .send()
                .await
                .unwrap();
            let (status, body) = json_of(response).await;
            assert_error(
                &format!("POST {url} {text}"),
                status,
                &body,
                400,
                "bad_request",
            );
        }

        // Repository names.
        let long = "a".repeat(65);
        for name in [
            "-x",
            ".x",
            "api",
            "metrics",
            "healthz",
            "a b",
            "a/b",
            "",
            long.as_str(),
        ] {
            let (status, body) = post_json(
                &http,
                &format!("{base}/api/v1/repos"),
                &json!({ "id": name }),
            )
            .await;
            assert_error(
                &format!("create {name:?}"),
                status,
                &body,
                400,
                "bad_request",
            );
        }
        let longest = "b".repeat(64);
        for name in ["x.y_z-1", longest.as_str()] {
            let (status, body) = post_json(
                &http,
                &format!("{base}/api/v1/repos"),
                &json!({ "id": name }),
            )
            .await;
            assert_eq!(status, 201, "create {name:?}: {body}");
            assert_eq!(body["id"], name);
        }
        for name in ["x.y_z-1", "default"] {
            let (status, body) = post_json(
                &http,
                &format!("{base}/api/v1/repos"),
                &json!({ "id": name }),
            )
            .await;
            assert_error(
                &format!("create existing {name:?}"),
                status,
                &body,
                409,
                "already_exists",
            );
        }
        let (_, list) = get_json(&http, &format!("{base}/api/v1/repos")).await;
        assert_eq!(list["count"], 3, "{list}");

        // Paths with dot segments, empty segments and NUL, sent exactly as written.
        for target in [
            "/api/v1/repos/default/tree/..",
            "/api/v1/repos/default/tree/a/../a",
            "/api/v1/repos/default/tree/%2e%2e",
            "/api/v1/repos/default/tree/a/%2E%2E/a",
            "/api/v1/repos/default/tree/a//b.txt",
            "/api/v1/repos/default/tree/a/./b.txt",
            "/api/v1/repos/default/tree/a%00",
            "/api/v1/repos/default/stat/../a",
            "/api/v1/repos/default/stat/a/%2e%2e/a/b.txt",
            "/api/v1/repos/default/stat/a%2F..%2Fa",
            "/api/v1/repos/default/stat/a//b.txt",
            "/api/v1/repos/default/stat/a/b.txt%00",
            "/api/v1/repos/default/stat//a",
            "/default/a/../a/b.txt",
            "/default/%2e%2e/default/a/b.txt",
            "/default/a//b.txt",
            "/default/a/b.txt%00",
        ] {
            let response = http_request(srv.addr, "GET", target, &[], b"").unwrap();
            assert_eq!(response.status, 400, "{target}: {}", response.text());
            assert_eq!(response.json()["code"], "bad_request", "{target}");
        }
        // The same paths in a commit.
        let (hash, _) = put_file(&http, &srv, "default", "c.txt", b"c").await;
        for path in [
            "..",
            "a/../c.txt",
            "a//c.txt",
            "a/./c.txt",
            "a\u{0}c",
            "/abs",
            "",
        ] {
            let (status, body) = commit(
                &http,
                &srv,
                "default",
                json!([{ "op": "put", "path": path, "hash": hash }]),
            )
            .await;
            assert_error(
                &format!("commit path {path:?}"),
                status,
                &body,
                400,
                "bad_request",
            );
        }
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "move", "from": "c.txt", "to": "x/../y" }]),
        )
        .await;
        assert_error("move to a dot path", status, &body, 400, "bad_request");

        // Unknown or malformed blob ids.
        let unknown = "0".repeat(64);
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "put", "path": "u.txt", "hash": unknown }]),
        )
        .await;
        assert_error(
            "commit of an unknown blob",
            status,
            &body,
            400,
            "bad_request",
        );
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "put", "path": "u.txt", "hash": "xyz" }]),
        )
        .await;
        assert_error(
            "commit of a malformed blob id",
            status,
            &body,
            400,
            "bad_request",
        );
        let (status, body) = get_json(&http, &format!("{api}/blobs/{unknown}")).await;
        assert_error("unknown blob", status, &body, 404, "not_found");
        let (status, body) = get_json(&http, &format!("{api}/blobs/XYZ")).await;
        assert_error("malformed blob id", status, &body, 400, "bad_request");
        let (status, body) = get_json(
            &http,
            &format!("{api}/uploads/00000000-0000-0000-0000-000000000000"),
        )
        .await;
        assert_error("unknown upload", status, &body, 404, "not_found");

        // A chunk with a wrong MD5 is refused and not stored.
        let (_, started) = post_json(
            &http,
            &format!("{api}/uploads"),
            &json!({ "chunk_size": 65536 }),
        )
        .await;
        let id = started["upload_id"].as_str().unwrap().to_string();
        let r = http
            .put(format!("{api}/uploads/{id}/0"))
            .header("X-Checksum-MD5", md5_hex(b"something else"))
            .body(b"chunk".to_vec())
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_error("wrong MD5", status, &body, 422, "checksum_mismatch");
        // A chunk larger than the upload's chunk size, and a bad index.
        let r = http
            .put(format!("{api}/uploads/{id}/1"))
            .body(vec![0u8; 65537])
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert!(
            status == 413 || status == 400,
            "oversized chunk: {status} {body}"
        );
        assert!(body["code"].is_string(), "{body}");
        let r = http
            .put(format!("{api}/uploads/{id}/minus-one"))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_error("bad chunk index", status, &body, 400, "bad_request");
        let (_, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(
            upload_status["received"],
            json!([]),
            "a refused chunk was kept"
        );
    });
    assert!(
        !srv.log().contains("internal error"),
        "server log: {}",
        srv.log()
    );
}

#[test]
fn max_upload_size_refuses_chunks_beyond_it_and_keeps_nothing() {
    let (srv, http) = server_and_client_with(&["--max-upload-size", "1M"]);
    block_on(async {
        let api = srv.api("default");
        // Default chunk size (larger than the limit): one chunk of 1 MiB + 1 byte.
        let (_, started) = post_json(&http, &format!("{api}/uploads"), &json!({})).await;
        let id = started["upload_id"].as_str().unwrap().to_string();
        let too_big = random_bytes((1 << 20) + 1, 7);
        let r = http
            .put(format!("{api}/uploads/{id}/0"))
            .header("X-Checksum-MD5", md5_hex(&too_big))
            .body(too_big.clone())
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_error("chunk over the limit", status, &body, 413, "too_large");
        let (_, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(upload_status["received"], json!([]));
        // Exactly the limit is fine.
        let exact = &too_big[..1 << 20];
        let r = http
            .put(format!("{api}/uploads/{id}/0"))
            .header("X-Checksum-MD5", md5_hex(exact))
            .body(exact.to_vec())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let (status, info) = json_of(
            http.post(format!("{api}/uploads/{id}/complete"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(status == 200 || status == 201, "{info}");
        assert_eq!(info["size"], 1 << 20);

        // 64 KiB chunks: chunk 15 ends at the limit, chunk 16 is past it.
        let (_, started) = post_json(
            &http,
            &format!("{api}/uploads"),
            &json!({ "chunk_size": 65536 }),
        )
        .await;
        let id = started["upload_id"].as_str().unwrap().to_string();
        let piece = random_bytes(65536, 8);
        let r = http
            .put(format!("{api}/uploads/{id}/15"))
            .body(piece.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let r = http
            .put(format!("{api}/uploads/{id}/16"))
            .body(piece.clone())
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_error("chunk 16 of 64 KiB", status, &body, 413, "too_large");
        let r = http
            .put(format!("{api}/uploads/{id}/16"))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "one byte past the limit");
        let (_, upload_status) = get_json(&http, &format!("{api}/uploads/{id}")).await;
        assert_eq!(
            upload_status["received"],
            json!([15]),
            "a refused chunk was kept"
        );
        assert_eq!(upload_status["bytes"], 65536);
        let r = http
            .get(format!("{api}/blobs/{}", blob_id(&piece)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    });
    // The CLI reports the refusal as one line and a non-zero exit.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    write_random_file(&file, 3 << 20, 9).unwrap();
    let out = run_cli(&[
        "put",
        file.to_str().unwrap(),
        &format!("{}/big", srv.repo_url("default")),
    ]);
    assert!(
        !out.status.success(),
        "put over the limit succeeded: {}",
        out.stdout_text()
    );
    assert!(
        out.stderr.contains("413") || out.stderr.to_lowercase().contains("maximum"),
        "{}",
        out.stderr
    );
    block_on(async {
        let (status, _) = get_json(&http, &format!("{}/stat/big", srv.api("default"))).await;
        assert_eq!(status, 404);
    });
}

/// CONTRACT §3: API errors are `{"error": "...", "code": "..."}`. A wrong method on an API
/// route gets axum's bare 405 with an empty body instead.
#[test]
fn wrong_method_on_an_api_route_answers_json() {
    let srv = ServerProcess::start();
    for (method, target) in [
        ("DELETE", "/api/v1/repos"),
        ("POST", "/api/v1/repos/default/tree/x"),
    ] {
        let r = http_request(srv.addr, method, target, &[], b"").unwrap();
        assert_eq!(r.status, 405, "{method} {target}");
        assert!(
            r.json()["code"].is_string(),
            "{method} {target}: {}",
            r.text()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. Authentication
// ---------------------------------------------------------------------------------------

#[test]
fn auth_token_is_required_everywhere_but_healthz() {
    let (srv, http) = server_and_client_with(&["--auth-token", "secret", "--auth-token", "second"]);
    let base = srv.url();
    block_on(async {
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap().trim(), "ok");
        for url in [
            format!("{base}/api/v1/repos"),
            format!("{base}/api/v1/repos/default/tree"),
            format!("{base}/default/"),
            format!("{base}/metrics"),
        ] {
            let r = http.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 401, "{url} without a token");
            assert!(r.headers().contains_key("www-authenticate"));
            let (_, body) = json_of(r).await;
            assert_eq!(body["code"], "unauthorized");
            for header in [
                "Bearer wrong",
                "Bearer secretx",
                "Basic c2VjcmV0",
                "secret",
                "Bearer ",
            ] {
                let r = http
                    .get(&url)
                    .header("Authorization", header)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 401, "{url} with {header:?}");
            }
        }
        for token in ["secret", "second"] {
            let r = http
                .get(format!("{base}/api/v1/repos"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "token {token}");
        }
        let r = http
            .post(format!("{base}/api/v1/repos"))
            .json(&json!({ "id": "sneaky" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{base}/api/v1/repos"))
            .bearer_auth("secret")
            .send()
            .await
            .unwrap();
        let (_, list) = json_of(r).await;
        assert_eq!(
            list["count"], 1,
            "a refused request created something: {list}"
        );
    });
    assert!(srv.metrics().contains("govcfs_http_requests_total"));
    assert!(!srv.log().contains("secret"), "the token reached the log");

    let url = srv.repo_url("default");
    run_cli_with(&["ls", &url], &[("GOVCFS_TOKEN", "secret")], CLI_TIMEOUT)
        .assert_success("ls with GOVCFS_TOKEN");
    let denied = run_cli(&["ls", &url]);
    assert!(!denied.status.success(), "ls without a token succeeded");
    assert!(
        denied.stderr.contains("401") || denied.stderr.to_lowercase().contains("unauthorized"),
        "{}",
        denied.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 9. Events
// ---------------------------------------------------------------------------------------

/// Reads SSE frames from `stream` until an `event: ref` arrives; returns its data.
async fn next_ref_event<S, E>(stream: &mut S, buffer: &mut String) -> Value
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Debug,
{
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut event = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.as_deref() == Some("ref") {
                return serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
            }
        }
        let piece = stream
            .next()
            .await
            .expect("the event stream ended")
            .expect("event stream error");
        buffer.push_str(&String::from_utf8_lossy(&piece).replace("\r\n", "\n"));
    }
}

#[test]
fn events_stream_reports_ref_updates() {
    let (srv, http) = server_and_client();
    block_on(async {
        let (status, _) = post_json(
            &http,
            &format!("{}/api/v1/repos", srv.url()),
            &json!({ "id": "other" }),
        )
        .await;
        assert_eq!(status, 201);
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            http.get(format!("{}/events", srv.api("default"))).send(),
        )
        .await
        .expect("the events stream answers within 10 s")
        .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut stream = response.bytes_stream();

        // A commit in another repository is not reported here; the one in default is.
        put_file(&http, &srv, "other", "elsewhere.txt", b"x").await;
        let (_, created) = put_file(&http, &srv, "default", "dir/watched.txt", b"watched").await;
        let mut buffer = String::new();
        let event = tokio::time::timeout(
            Duration::from_secs(10),
            next_ref_event(&mut stream, &mut buffer),
        )
        .await
        .expect("an `event: ref` within 10 s");
        assert_eq!(event["ref"], "main", "{event}");
        assert_eq!(event["commit"], created.as_str(), "{event}");
        let changed: Vec<&str> = event["changed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(changed.contains(&"dir/watched.txt"), "{event}");

        // And the next one.
        let (status, body) = commit(
            &http,
            &srv,
            "default",
            json!([{ "op": "move", "from": "dir/watched.txt", "to": "moved.txt" }]),
        )
        .await;
        assert_eq!(status, 201);
        let event = tokio::time::timeout(
            Duration::from_secs(10),
            next_ref_event(&mut stream, &mut buffer),
        )
        .await
        .expect("a second `event: ref` within 10 s");
        assert_eq!(event["commit"], body["commit"]);
        let changed: BTreeSet<&str> = event["changed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            changed.contains("moved.txt") && changed.contains("dir/watched.txt"),
            "{event}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// 10. Signals
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_and_sigint_stop_the_server_cleanly() {
    for (name, signal) in [("SIGTERM", libc::SIGTERM), ("SIGINT", libc::SIGINT)] {
        let mut srv = ServerProcess::start();
        let r = http_request(srv.addr, "GET", "/healthz", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text().trim(), "ok");
        // An idle keep-alive connection must not hold the shutdown up.
        let mut idle = TcpStream::connect(srv.addr).unwrap();
        idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        srv.signal(signal);
        let status = srv
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("still running 10 s after {name}"));
        assert!(
            status.success(),
            "{name}: exit status {status:?}; log: {}",
            srv.log()
        );
        drop(idle);
    }
}

/// A subscriber of the events stream (every mount is one) keeps the server from stopping:
/// graceful shutdown waits for the SSE response, which never ends. It only exits once the
/// next keep-alive write fails after the client has gone, or never while the client stays.
#[test]
fn sigterm_stops_the_server_with_an_open_events_stream() {
    let mut srv = ServerProcess::start();
    let mut socket = TcpStream::connect(srv.addr).unwrap();
    socket
        .write_all(
            format!(
                "GET /api/v1/repos/default/events HTTP/1.1\r\nHost: {}\r\n\r\n",
                srv.addr
            )
            .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    srv.signal(libc::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(10));
    drop(socket);
    let status = status.expect("still running 10 s after SIGTERM with an open events stream");
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------
// 11. CLI errors
// ---------------------------------------------------------------------------------------

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let srv = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("never");
    let missing = run_cli(&[
        "get",
        &format!("{}/missing.txt", srv.repo_url("default")),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(!missing.status.success(), "get of a missing path succeeded");
    let lines: Vec<&str> = missing
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", missing.stderr);
    assert!(lines[0].starts_with("govcfs:"), "{}", lines[0]);
    assert!(
        lines[0].contains("404") || lines[0].contains("not found"),
        "{}",
        lines[0]
    );
    assert!(
        !out_file.exists(),
        "get of a missing path created the output file"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "get left a partial file"
    );

    let missing_repo = run_cli(&["ls", &srv.repo_url("nope")]);
    assert!(!missing_repo.status.success());
    assert_eq!(
        missing_repo.stderr.trim().lines().count(),
        1,
        "{:?}",
        missing_repo.stderr
    );

    // Nothing listens on this port: the CLI retries briefly, then fails.
    let port = free_port();
    let unreachable = run_cli_with(
        &["ls", &format!("http://127.0.0.1:{port}/default")],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        !unreachable.status.success(),
        "ls against a closed port succeeded"
    );
    let last = unreachable.stderr.trim().lines().last().unwrap_or("");
    assert!(last.starts_with("govcfs:"), "{:?}", unreachable.stderr);
    assert_eq!(
        unreachable.stderr.trim().lines().count(),
        1,
        "{:?}",
        unreachable.stderr
    );

    // A URL that is not a repository URL.
    let bad_url = run_cli(&["ls", "ftp://example/x"]);
    assert!(!bad_url.status.success());
    assert_eq!(
        bad_url.stderr.trim().lines().count(),
        1,
        "{:?}",
        bad_url.stderr
    );
}

/// `Client::put_file` against the real server: one request; a conditional put refused
/// because the path holds these very bytes already (what a retry sees when the answer to its
/// first attempt was lost) succeeds, and one over other bytes is a conflict.
#[test]
fn a_file_put_whose_path_holds_its_bytes_already_succeeds_and_other_bytes_conflict() {
    use govcfs::client::{Client, ClientError, ClientOptions, FilePutOptions};
    let server = ServerProcess::start();
    let client = Client::new(&server.url(), "default", ClientOptions::default()).expect("client");
    let must_be_new = FilePutOptions {
        expect: Some(None),
        message: "new file".into(),
        ..FilePutOptions::default()
    };
    let cancel = govcfs::client::CancellationToken::new();
    block_on(async {
        let first = client
            .put_file("d/a.txt", "hello".into(), &must_be_new, &cancel)
            .await
            .expect("first put");
        let again = client
            .put_file("d/a.txt", "hello".into(), &must_be_new, &cancel)
            .await
            .expect("the same bytes again");
        assert_eq!(again.hash, first.hash);
        assert_eq!(again.commit, first.commit, "nothing new was committed");
        let other = client
            .put_file("d/a.txt", "other".into(), &must_be_new, &cancel)
            .await
            .expect_err("other bytes over an existing file");
        assert!(
            matches!(other, ClientError::Http { status: 409, .. }),
            "{other}"
        );
    });
    assert_eq!(
        server_hash(server.addr, "d/a.txt"),
        Some(govcfs::base::manifest::blob_id(b"hello"))
    );
}
