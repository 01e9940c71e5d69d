//! Hostile input against the real server (issue 7, "Hostile input"): every test starts its own
//! `govcfs serve` on an ephemeral loopback port, over a data directory `ROOT/data` that has a
//! sentinel directory `ROOT/sentinel` beside it, and throws at it what an attacker would:
//!
//! 1. path traversal and odd paths on every route that takes a repository name, a path or an id
//!    (`..`, `%2e%2e`, `%2F`, `./`, absolute paths, backslashes, NUL, control characters,
//!    over-long names and paths, invalid UTF-8 escapes, reserved repository names);
//! 2. huge, negative, overflowing, suffix, multi-range and garbage `Range` headers;
//! 3. malformed JSON (truncated, 100 000 levels deep, huge strings, wrong types), malformed
//!    multipart (broken boundaries, a 1 MiB part header, 10 000 tiny parts) and broken HTTP
//!    framing;
//! 4. slow-loris clients (headers and bodies one byte per 500 ms, 200 idle connections);
//! 5. WebSocket floods (1 000 garbage messages without reading, a 10 MiB text frame, queued
//!    stream requests, ping floods);
//! 6. an in-process proptest suite (about 15 000 cases) of the public validation, range and
//!    decoding functions, plus a grammar of `Range` headers fuzzed through HTTP.
//!
//! After every hostile test the server still answers `GET /healthz`, its log has no
//! "panicked", and (where a sandbox is used) nothing exists outside the data directory: the
//! sentinel directory is unchanged, the data directory holds only `repos/`, `tmp/` and
//! lock files, `repos/` holds only the repositories the test created, and no file carries
//! the test's marker name. Every request has a 10 s hang guard (`http_request`'s read timeout);
//! no test asserts on speed otherwise.
//!
//! Each test prints `hostile inputs tried in <test>: N` (see `--nocapture`).
//!
//! Regression tests of defects found here (each test's comment names the cause that was fixed):
//! - `a_ref_naming_a_blob_or_tree_answers_4xx_not_500`
//! - `a_commit_refuses_tree_and_commit_ids_as_file_contents`
//! - `a_far_future_mtime_does_not_crash_the_browsable_view` (was a panic)
//! - `undecodable_urls_and_bad_queries_get_json_errors`
//! - `the_websocket_upgrade_checks_the_repository_first`
//! - `oversize_bodies_get_json_413`
//! - `a_satisfiable_multi_range_is_never_416`
//!
//! `slow_body_connection_is_closed_within_60_s` is ignored (a LIMITATION: bodies are cut for
//! silence, not for a low rate); `idle_connection_that_sends_nothing_is_closed_within_60_s`
//! takes about 70 s.
//!
//! `slow_header_connection_is_closed_within_60_s` takes about 30 s (the header read timeout).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------
// Helpers: counting, sandbox, requests, answers
// ---------------------------------------------------------------------------------------

/// Counts the hostile inputs one test sends and prints the total at the end.
struct Tally {
    test: &'static str,
    count: u64,
}

impl Tally {
    fn new(test: &'static str) -> Self {
        Tally { test, count: 0 }
    }

    fn add(&mut self, n: u64) {
        self.count += n;
    }

    fn done(self) -> u64 {
        println!("hostile inputs tried in {}: {}", self.test, self.count);
        self.count
    }
}

/// `ROOT/data` (the server's `--data`) next to `ROOT/sentinel/canary.txt`, and a marker name
/// that traversal payloads try to create.
struct Sandbox {
    root: tempfile::TempDir,
    marker: String,
}

const CANARY: &str = "canary: nothing may write here";

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().expect("create the sandbox");
        std::fs::create_dir(root.path().join("sentinel")).expect("create the sentinel directory");
        std::fs::write(root.path().join("sentinel/canary.txt"), CANARY).expect("write the canary");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(77, |d| d.as_nanos() as u64);
        let marker = format!(
            "pwned-{}-{}",
            std::process::id(),
            XorShift::new(nanos).next_u64() % 1_000_000
        );
        Sandbox { root, marker }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn sentinel(&self) -> PathBuf {
        self.root.path().join("sentinel")
    }

    /// The absolute path of `sentinel/MARKER`.
    fn sentinel_target(&self) -> String {
        self.sentinel()
            .join(&self.marker)
            .to_str()
            .expect("UTF-8 temp path")
            .to_string()
    }

    fn start(&self, args: &[&str]) -> ServerProcess {
        ServerProcess::start_in(&self.data(), args)
    }

    /// Asserts that nothing was written outside the data directory and that the data
    /// directory holds only what the server itself keeps: `repos/<one of repos>/…`, `tmp/`
    /// (empty once uploads are over) and its `*.lock` files.
    fn assert_contained(&self, repos: &[&str]) {
        let names = |dir: &Path| -> BTreeSet<String> {
            std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
                .map(|e| {
                    e.expect("directory entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        let root = names(self.root.path());
        assert_eq!(
            root,
            BTreeSet::from(["data".to_string(), "sentinel".to_string()]),
            "something was created beside the data directory"
        );
        assert_eq!(
            names(&self.sentinel()),
            BTreeSet::from(["canary.txt".to_string()]),
            "something was created in the sentinel directory"
        );
        assert_eq!(
            std::fs::read_to_string(self.sentinel().join("canary.txt")).unwrap(),
            CANARY,
            "the canary was changed"
        );
        for outside in [
            std::env::temp_dir().join(&self.marker),
            PathBuf::from("/").join(&self.marker),
            PathBuf::from("/tmp").join(&self.marker),
        ] {
            assert!(!outside.exists(), "{} was created", outside.display());
        }

        let data = self.data();
        let top = names(&data);
        // `repos/`, `tmp/`, the commit journal and the server's lock files (`refs.lock`,
        // `live.lock`, …).
        let unexpected: Vec<&String> = top
            .iter()
            .filter(|n| {
                !(n.as_str() == "repos"
                    || n.as_str() == "tmp"
                    || (n.as_str() == "journal.log" && data.join(n.as_str()).is_file())
                    || (n.ends_with(".lock") && data.join(n.as_str()).is_file()))
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected entries at the top of the data directory: {unexpected:?}"
        );
        let want: BTreeSet<String> = repos.iter().map(|s| s.to_string()).collect();
        assert_eq!(names(&data.join("repos")), want, "the repositories on disk");
        let repo_entries: BTreeSet<String> = [
            "chunks",
            "config.json",
            "manifests",
            "objects",
            "refs",
            "uploads",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for repo in repos {
            let entries = names(&data.join("repos").join(repo));
            assert!(
                entries.is_subset(&repo_entries),
                "unexpected entries in repos/{repo}: {entries:?}"
            );
        }
        let canonical = std::fs::canonicalize(&data).expect("canonical data dir");
        let files = paths_under(&data);
        for file in &files {
            let meta = std::fs::symlink_metadata(file).expect("stat");
            assert!(
                !meta.file_type().is_symlink(),
                "a symlink in the data directory: {}",
                file.display()
            );
            let rel = file.strip_prefix(&data).expect("inside the data directory");
            assert!(
                rel.components().all(|c| matches!(c, Component::Normal(_))),
                "odd path in the data directory: {}",
                file.display()
            );
            assert!(
                !rel.to_string_lossy().contains(&self.marker),
                "a file named after the traversal marker: {}",
                file.display()
            );
            assert!(
                std::fs::canonicalize(file)
                    .expect("canonical path")
                    .starts_with(&canonical),
                "{} resolves outside the data directory",
                file.display()
            );
        }
        let tmp_empty = wait_until(Duration::from_secs(15), || {
            std::fs::read_dir(data.join("tmp"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        });
        assert!(
            tmp_empty,
            "temporary blobs were left behind: {:?}",
            std::fs::read_dir(data.join("tmp"))
                .map(|d| d.map(|e| e.unwrap().path()).collect::<Vec<_>>())
        );
    }
}

/// The server still answers `GET /healthz` (10 s guard) and has not panicked.
fn assert_healthy(srv: &ServerProcess) {
    let r = http_request(srv.addr, "GET", "/healthz", &[], b"").unwrap_or_else(|e| {
        panic!(
            "GET /healthz got no answer within 10 s: {e}; log: {}",
            log_tail(srv)
        )
    });
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "GET /healthz");
    let log = srv.log();
    assert!(
        !log.contains("panicked"),
        "the server panicked: {}",
        log_tail(srv)
    );
}

/// Panics listing every failed case (with the server log's tail) unless there are none,
/// then checks that the server is still healthy.
fn assert_no_failures(failures: &[String], srv: &ServerProcess) {
    assert!(
        failures.is_empty(),
        "{}\nlog: {}",
        failures.join("\n"),
        log_tail(srv)
    );
    assert_healthy(srv);
}

/// The last 4 000 characters of the server log.
fn log_tail(srv: &ServerProcess) -> String {
    let log = srv.log();
    let start = log.len().saturating_sub(4000);
    let start = (start..log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(log.len());
    log[start..].to_string()
}

/// At most 160 characters of `s`, for messages.
fn short(s: &str) -> String {
    if s.chars().count() <= 160 {
        s.to_string()
    } else {
        format!(
            "{}…({} bytes)",
            s.chars().take(160).collect::<String>(),
            s.len()
        )
    }
}

/// Percent-encodes every byte but ASCII letters and digits (a path's `/` included).
fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// Percent-encodes each segment of a path, keeping the `/` between them.
fn enc_path(path: &str) -> String {
    path.split('/').map(enc).collect::<Vec<_>>().join("/")
}

/// Whether the path part of a request target percent-decodes to UTF-8. axum's `Path`
/// extractor refuses the others with a 400 (checked by
/// `undecodable_urls_and_bad_queries_get_json_errors`).
fn path_is_utf8(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    percent_decode_str(path).decode_utf8().is_ok()
}

/// One hostile request and whether its error must be the contract's JSON.
#[derive(Clone)]
struct Probe {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    json: bool,
}

impl Probe {
    fn new(method: &'static str, target: impl Into<String>) -> Probe {
        Probe {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            json: true,
        }
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Probe {
        self.body = body.into();
        self
    }

    fn json_body(self, value: &Value) -> Probe {
        self.header("Content-Type", "application/json")
            .body(value.to_string())
    }

    fn header(mut self, k: &str, v: &str) -> Probe {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    fn send(&self, srv: &ServerProcess) -> Result<RawResponse, String> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        http_request(srv.addr, self.method, &self.target, &headers, &self.body).map_err(|e| {
            format!(
                "{} {}: no complete answer within 10 s: {e}",
                self.method,
                short(&self.target)
            )
        })
    }
}

/// Why an answer is not a 4xx (JSON where required), or `None` when it is.
fn client_error_problem(what: &str, r: &RawResponse, want_json: bool) -> Option<String> {
    if !(400..500).contains(&r.status) {
        return Some(format!(
            "{what}: status {} (want 4xx): {}",
            r.status,
            short(&r.text())
        ));
    }
    if want_json {
        let ct = r.header("content-type").unwrap_or("");
        let body: Option<Value> = serde_json::from_slice(&r.body).ok();
        let ok = ct.starts_with("application/json")
            && body
                .as_ref()
                .is_some_and(|b| b["code"].is_string() && b["error"].is_string());
        if !ok {
            return Some(format!(
                "{what}: {} with content-type {ct:?} and a body that is not the JSON error: {}",
                r.status,
                short(&r.text())
            ));
        }
    }
    None
}

/// Sends every probe; each must get a 4xx (JSON where required, never on HEAD). Panics with
/// every failure listed.
fn run_probes(srv: &ServerProcess, probes: &[Probe], tally: &mut Tally) {
    let mut failures = Vec::new();
    for p in probes {
        tally.add(1);
        let what = format!("{} {}", p.method, short(&p.target));
        match p.send(srv) {
            Err(e) => failures.push(e),
            Ok(r) => {
                let want_json = p.json && p.method != "HEAD" && path_is_utf8(&p.target);
                if let Some(problem) = client_error_problem(&what, &r, want_json) {
                    failures.push(problem);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests were not answered with a 4xx JSON error:\n{}\nlog: {}",
        failures.len(),
        probes.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        log_tail(srv)
    );
}

/// Stores `data` with a raw streamed upload; returns its blob id.
fn seed_blob(srv: &ServerProcess, repo: &str, data: &[u8]) -> String {
    let r = http_request(
        srv.addr,
        "POST",
        &format!("/api/v1/repos/{repo}/stream/blob/upload"),
        &[],
        data,
    )
    .expect("upload");
    assert_eq!(r.status, 201, "seed upload: {}", r.text());
    let hash = r.json()["hash"].as_str().expect("hash").to_string();
    assert_eq!(hash, blob_id(data));
    hash
}

/// Posts a commit of `changes` to `repo`'s default branch (10 s guard).
fn commit(srv: &ServerProcess, repo: &str, changes: Value) -> RawResponse {
    let body = json!({ "message": "hostile", "changes": changes }).to_string();
    http_request(
        srv.addr,
        "POST",
        &format!("/api/v1/repos/{repo}/commits"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("commit: no answer within 10 s: {e}"))
}

/// Starts a resumable upload on `repo`; returns its id.
fn start_upload(srv: &ServerProcess, repo: &str) -> String {
    let r = http_request(
        srv.addr,
        "POST",
        &format!("/api/v1/repos/{repo}/uploads"),
        &[("Content-Type", "application/json")],
        b"{\"chunk_size\": 65536}",
    )
    .unwrap();
    assert_eq!(r.status, 201, "start upload: {}", r.text());
    r.json()["upload_id"].as_str().unwrap().to_string()
}

const ZERO_UUID: &str = "00000000-0000-0000-0000-000000000000";

// ---------------------------------------------------------------------------------------
// 1. Path traversal and odd paths, names and ids on every route
// ---------------------------------------------------------------------------------------

/// Hostile paths as they appear in a URL (percent-escapes included).
fn hostile_url_paths(sb: &Sandbox) -> Vec<String> {
    let m = &sb.marker;
    let abs = sb.sentinel_target().replace('/', "%2F");
    let mut paths: Vec<String> = [
        "..",
        "../..",
        "a/..",
        "a/../..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "%2e%2e%2f%2e%2e",
        "%2e%2e/%2e%2e/etc/passwd",
        "a%2F..%2F..",
        ".",
        "%2e",
        "./x",
        "a/./b",
        "a/%2e/b",
        "a//b",
        "a%2F%2Fb",
        "/abs",
        "//etc/passwd",
        "%2Fetc%2Fpasswd",
        "%5C..%5C..",
        "%5C%5Cserver%5Cshare",
        "a%00b",
        "%00",
        "a%00/..",
        "..%00",
        "%00%2e%2e",
        "%01",
        "%1b%5B31m",
        "%0d%0aSet-Cookie:%20x=1",
        "%7f",
        "%09",
        "%ff",
        "a%fe%ff",
        "%c0%ae%c0%ae",
        "%c0%af",
        "%ed%a0%80",
        "%e0%80%ae",
        "%f8%88%80%80%80",
        "%e2%80%ae",
        "%ef%bc%8e%ef%bc%8e",
        "~",
        "~root",
        "....",
        "...%2F...",
        "con",
        "NUL",
        "a%3Fref=..%2F..",
        "a%23frag",
        "%25",
        "%252e%252e",
        "%%32%65",
        "a/%2e%2e%2f..%2fb",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    paths.extend([
        format!("../../sentinel/{m}"),
        format!("a/../../sentinel/{m}"),
        format!("%2e%2e/%2e%2e/sentinel/{m}"),
        format!("..%2F..%2Fsentinel%2F{m}"),
        format!("%2e%2e%2f%2e%2e%2fsentinel%2f{m}"),
        format!("..%5C..%5Csentinel%5C{m}"),
        abs.clone(),
        format!("/{abs}"),
        "a".repeat(256),
        format!("x/{}", "b".repeat(300)),
        "a/".repeat(2049),
        "%2e%2e/".repeat(700),
        format!("{}%00", "c".repeat(4000)),
    ]);
    paths
}

#[test]
fn hostile_paths_on_the_browse_tree_and_stat_routes_get_4xx_json() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("hostile_paths_on_the_browse_tree_and_stat_routes_get_4xx_json");
    let hash = seed_blob(&srv, "default", b"a file");
    assert_eq!(
        commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": "a/b.txt", "hash": hash }])
        )
        .status,
        201
    );

    let mut probes = Vec::new();
    for p in hostile_url_paths(&sb) {
        probes.push(Probe::new("GET", format!("/default/{p}")));
        probes.push(Probe::new("HEAD", format!("/default/{p}")));
        probes.push(Probe::new("GET", format!("/default/{p}/")));
        probes.push(Probe::new("GET", format!("/default/a/{p}")));
        probes.push(Probe::new("GET", format!("/default/{p}?ref=main")));
        probes.push(Probe::new("GET", format!("/api/v1/repos/default/tree/{p}")));
        probes.push(Probe::new(
            "GET",
            format!("/api/v1/repos/default/tree/a/{p}"),
        ));
        probes.push(Probe::new("GET", format!("/api/v1/repos/default/stat/{p}")));
        probes.push(Probe::new(
            "GET",
            format!("/api/v1/repos/default/stat/{p}?ref=main"),
        ));
    }
    run_probes(&srv, &probes, &mut tally);

    // The real file is still served, and nothing escaped.
    let r = http_request(srv.addr, "GET", "/default/a/b.txt", &[], b"").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"a file"[..]));
    assert_healthy(&srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

/// Repository names as they appear in a URL.
fn hostile_url_repo_names(sb: &Sandbox) -> Vec<String> {
    let m = &sb.marker;
    let mut names: Vec<String> = [
        "..",
        ".",
        "%2e%2e",
        "%2E",
        "api",
        "metrics",
        "healthz",
        "a%2Fb",
        "..%2F..",
        "%2Ftmp",
        "%00",
        "default%00",
        "-x",
        ".hidden",
        "_x",
        "%ff",
        "default%ff",
        "default%2F..",
        "default%5C..",
        "..%5C..",
        "a%0a",
        "a%0d%0aX-Injected:%20y",
        "a%20b",
        "%e2%80%ae",
        "API",
        "Default",
        "nope",
        "default.",
        "default..",
        "%2e%2e%2f%2e%2e",
        "a%3Fb",
        "a%23b",
        "%25",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend([
        format!("..%2F..%2Fsentinel%2F{m}"),
        sb.sentinel_target().replace('/', "%2F"),
        "a".repeat(65),
        "x".repeat(300),
        "%c0%ae%c0%ae".to_string(),
    ]);
    names
}

#[test]
fn hostile_repository_names_on_every_route_get_4xx_json() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("hostile_repository_names_on_every_route_get_4xx_json");
    let hash = seed_blob(&srv, "default", b"content");

    let mut probes = Vec::new();
    for r in hostile_url_repo_names(&sb) {
        let api = format!("/api/v1/repos/{r}");
        probes.extend([
            Probe::new("GET", format!("/{r}/")),
            Probe::new("GET", format!("/{r}/x")),
            Probe::new("HEAD", format!("/{r}/x")),
            Probe::new("GET", format!("{api}/tree")),
            Probe::new("GET", format!("{api}/tree/")),
            Probe::new("GET", format!("{api}/tree/x")),
            Probe::new("GET", format!("{api}/stat")),
            Probe::new("GET", format!("{api}/stat/x")),
            Probe::new("GET", format!("{api}/log")),
            Probe::new("GET", format!("{api}/events")),
            Probe::new("POST", format!("{api}/commits"))
                .json_body(&json!({ "changes": [{ "op": "put", "path": "x", "hash": hash }] })),
            Probe::new("POST", format!("{api}/uploads")).json_body(&json!({})),
            Probe::new("GET", format!("{api}/uploads/{ZERO_UUID}")),
            Probe::new("DELETE", format!("{api}/uploads/{ZERO_UUID}")),
            Probe::new("PUT", format!("{api}/uploads/{ZERO_UUID}/0")).body("x"),
            Probe::new("POST", format!("{api}/uploads/{ZERO_UUID}/complete")),
            Probe::new("GET", format!("{api}/blobs/{hash}")),
            Probe::new("HEAD", format!("{api}/blobs/{hash}")),
            Probe::new("POST", format!("{api}/stream/blob/start"))
                .json_body(&json!({ "hash": hash })),
            Probe::new(
                "GET",
                format!("{api}/stream/blob/{ZERO_UUID}/chunk?chunk=0"),
            ),
            Probe::new("GET", format!("{api}/stream/blob/{ZERO_UUID}/progress")),
            Probe::new("DELETE", format!("{api}/stream/blob/{ZERO_UUID}")),
            Probe::new("POST", format!("{api}/stream/blob/upload"))
                .body(format!("payload for {r}")),
        ]);
    }
    run_probes(&srv, &probes, &mut tally);

    // `GET /NAME` redirects to `/NAME/` without validating; the redirect must stay on this
    // server (no `//host` or `/\host`), and following it must give a 4xx.
    // (`/metrics` and `/healthz` are the routes these names are reserved for.)
    for r in hostile_url_repo_names(&sb)
        .into_iter()
        .filter(|r| r != "metrics" && r != "healthz")
    {
        tally.add(1);
        let answer = http_request(srv.addr, "GET", &format!("/{r}"), &[], b"")
            .unwrap_or_else(|e| panic!("GET /{r}: {e}"));
        if (300..400).contains(&answer.status) {
            let location = answer
                .header("location")
                .unwrap_or_else(|| panic!("GET /{r}: redirect without Location"))
                .to_string();
            assert!(
                location.starts_with('/')
                    && !location.starts_with("//")
                    && !location.starts_with("/\\"),
                "GET /{r}: redirect off the server to {location:?}"
            );
            assert!(
                !location.contains('\r') && !location.contains('\n'),
                "GET /{r}: header injection in {location:?}"
            );
            let followed = http_request(srv.addr, "GET", &location, &[], b"").unwrap();
            if let Some(problem) = client_error_problem(
                &format!("GET {location}"),
                &followed,
                path_is_utf8(&location),
            ) {
                panic!("{problem}");
            }
        } else if let Some(problem) =
            client_error_problem(&format!("GET /{r}"), &answer, path_is_utf8(&r))
        {
            panic!("{problem}");
        }
    }

    // Creating them: every invalid or reserved name is refused...
    let m = &sb.marker;
    let mut bad_names: Vec<String> = [
        "..",
        ".",
        "/abs",
        "a/b",
        "a\\b",
        "..\\..\\x",
        "a\0b",
        "\0",
        "",
        " ",
        "a\nb",
        "a b",
        "api",
        "metrics",
        "healthz",
        "-x",
        ".x",
        "_x",
        "é",
        "\u{202e}x",
        "default/..",
        "a\u{7f}",
        "\u{ff0e}\u{ff0e}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    bad_names.extend([
        format!("../../sentinel/{m}"),
        sb.sentinel_target(),
        "a".repeat(65),
        "x".repeat(100_000),
    ]);
    let probes: Vec<Probe> = bad_names
        .iter()
        .map(|n| Probe::new("POST", "/api/v1/repos").json_body(&json!({ "id": n })))
        .collect();
    run_probes(&srv, &probes, &mut tally);
    // ...and the reserved names are reserved exactly (the contract's names are lowercase):
    // uppercase twins are ordinary repositories that shadow no route.
    for name in ["API", "HEALTHZ"] {
        tally.add(1);
        let r = http_request(
            srv.addr,
            "POST",
            "/api/v1/repos",
            &[("Content-Type", "application/json")],
            json!({ "id": name }).to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 201, "create {name}: {}", r.text());
    }
    let r = http_request(srv.addr, "GET", "/api/v1/repos", &[], b"").unwrap();
    assert_eq!(r.json()["count"], 3, "{}", r.text());
    let r = http_request(srv.addr, "GET", "/API/", &[], b"").unwrap();
    assert_eq!(r.status, 200, "browse the repository API: {}", r.text());
    assert!(
        srv.metrics().contains("govcfs_http_requests_total"),
        "GET /metrics still answers the metrics"
    );

    // No hostile upload stored anything.
    let r = http_request(
        srv.addr,
        "GET",
        &format!("/api/v1/repos/default/blobs/{}", blob_id(b"payload for ..")),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 404);
    assert_healthy(&srv);
    sb.assert_contained(&["API", "HEALTHZ", "default"]);
    tally.done();
}

#[test]
fn hostile_upload_stream_and_blob_ids_and_chunk_indices_get_4xx_json() {
    let sb = Sandbox::new();
    let srv = sb.start(&["--max-upload-size", "16M"]);
    let mut tally = Tally::new("hostile_upload_stream_and_blob_ids_and_chunk_indices_get_4xx_json");
    let hash = seed_blob(&srv, "default", b"some blob content");
    let upload = start_upload(&srv, "default");
    let m = &sb.marker;
    let api = "/api/v1/repos/default";

    // Upload ids.
    let mut upload_ids: Vec<String> = [
        "..",
        "%2e%2e",
        "..%2F..",
        "%00",
        "%ff",
        "meta.json",
        "a%2Fmeta.json",
        "..%2Fdefault%2Fconfig.json",
        "%7B00000000-0000-0000-0000-000000000000%7D",
        "urn:uuid:00000000-0000-0000-0000-000000000000",
        "00000000000000000000000000000000",
        "%2e",
        "%5C..%5C..",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    upload_ids.extend([
        format!("..%2F..%2F..%2F..%2Fsentinel%2F{m}"),
        sb.sentinel_target().replace('/', "%2F"),
        "x".repeat(300),
        upload.to_uppercase(),
        format!("{upload}%00"),
        format!("{upload}%2F..%2F{upload}"),
        format!("%7B{upload}%7D"),
        upload.replace('-', ""),
    ]);
    let mut probes = Vec::new();
    for u in &upload_ids {
        probes.extend([
            Probe::new("GET", format!("{api}/uploads/{u}")),
            Probe::new("DELETE", format!("{api}/uploads/{u}")),
            Probe::new("PUT", format!("{api}/uploads/{u}/0")).body("x"),
            Probe::new("POST", format!("{api}/uploads/{u}/complete")),
        ]);
    }

    // Bogus chunk indices of a real upload (64 KiB chunks, 16 MiB limit).
    for index in [
        "-1",
        "18446744073709551616",
        "99999999999999999999999",
        "1e3",
        "0x10",
        "1.0",
        "%201",
        "1%20",
        "%00",
        "..",
        "%2e%2e",
        "%ff",
        "0%00",
        "18446744073709551615",
        "281474976710656",
        "4398046511104",
        "256",
        "１",
    ] {
        probes.push(Probe::new("PUT", format!("{api}/uploads/{upload}/{index}")).body("x"));
    }
    // Copy sources that are not blob ids.
    for source in [
        "..",
        "../../sentinel/x",
        "a",
        "é",
        "",
        "0",
        "%00",
        &"g".repeat(64),
        &hash.to_uppercase(),
        &hash[..63],
    ] {
        probes.push(
            Probe::new("PUT", format!("{api}/uploads/{upload}/0"))
                .header("X-Copy-From-Blob", source),
        );
    }
    // Checksums that are not MD5s.
    for md5 in ["zz", "", "..", &"f".repeat(4000)] {
        probes.push(
            Probe::new("PUT", format!("{api}/uploads/{upload}/0"))
                .header("X-Checksum-MD5", md5)
                .body("abc"),
        );
    }

    // Stream ids.
    for s in [
        "..",
        "%2e%2e",
        "..%2F..",
        "%00",
        "%ff",
        "%2F",
        ZERO_UUID,
        &"x".repeat(5000),
        &format!("..%2F..%2Fsentinel%2F{m}"),
    ] {
        probes.extend([
            Probe::new("GET", format!("{api}/stream/blob/{s}/chunk?chunk=0")),
            Probe::new("GET", format!("{api}/stream/blob/{s}/progress")),
            Probe::new("DELETE", format!("{api}/stream/blob/{s}")),
        ]);
    }

    // Blob ids, in the URL and in JSON.
    let mut blob_ids: Vec<String> = ["..", "%2e%2e", "a", "%c3%a9", "%ff", "%00", "%2F"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    blob_ids.extend([
        format!("..%2F..%2Fsentinel%2F{m}"),
        format!("%c3%a9{}", &hash[2..]),
        format!("..{}", &hash[2..]),
        format!("..%2F{}", &hash[3..]),
        hash.to_uppercase(),
        hash[..63].to_string(),
        format!("{hash}0"),
        format!("{hash}%00"),
        format!("{hash}%2F.."),
        "g".repeat(64),
        "0".repeat(64),
    ]);
    for h in &blob_ids {
        probes.push(Probe::new("GET", format!("{api}/blobs/{h}")));
        probes.push(Probe::new("HEAD", format!("{api}/blobs/{h}")));
        let decoded = percent_decode_str(h).decode_utf8_lossy().into_owned();
        probes.push(
            Probe::new("POST", format!("{api}/stream/blob/start"))
                .json_body(&json!({ "hash": decoded })),
        );
        probes.push(
            Probe::new("POST", format!("{api}/commits"))
                .json_body(&json!({ "changes": [{ "op": "put", "path": "f", "hash": decoded }] })),
        );
        probes.push(Probe::new("POST", format!("{api}/commits")).json_body(
            &json!({ "changes": [{ "op": "delete", "path": "f", "expect": decoded }] }),
        ));
    }
    run_probes(&srv, &probes, &mut tally);

    // The real upload kept no chunk.
    let r = http_request(
        srv.addr,
        "GET",
        &format!("{api}/uploads/{upload}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(
        (r.status, &r.json()["received"]),
        (200, &json!([])),
        "{}",
        r.text()
    );
    let r = http_request(
        srv.addr,
        "DELETE",
        &format!("{api}/uploads/{upload}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        srv.metric("govcfs_stream_sessions_active"),
        Some(0.0),
        "a hostile request opened a session"
    );
    assert_healthy(&srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

#[test]
fn hostile_paths_in_commits_are_refused_and_odd_but_legal_names_stay_inside_the_tree() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new(
        "hostile_paths_in_commits_are_refused_and_odd_but_legal_names_stay_inside_the_tree",
    );
    let data = b"committed bytes".to_vec();
    let hash = seed_blob(&srv, "default", &data);
    assert_eq!(
        commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": "exists.txt", "hash": hash }])
        )
        .status,
        201
    );
    let m = &sb.marker;

    let mut bad: Vec<String> = [
        "..",
        "../x",
        "a/..",
        "a/../b",
        "/abs",
        "/etc/passwd",
        ".",
        "./x",
        "a/./b",
        "a//b",
        "",
        "/",
        "//",
        "a\0b",
        "\0",
        "x/\0/y",
        "../",
        "./",
        "x/../",
        "x/..//",
        "/..",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    bad.extend([
        format!("../../sentinel/{m}"),
        format!("a/../../sentinel/{m}"),
        sb.sentinel_target(),
        "a".repeat(256),
        format!("{}/x", "a".repeat(300)),
        format!("{}a", "a/".repeat(2049)),
        format!("..{}", "/..".repeat(1000)),
        format!("{}/{}", "d".repeat(255), "e".repeat(3900)),
    ]);
    let api = "/api/v1/repos/default";
    let mut probes = Vec::new();
    for p in &bad {
        for change in [
            json!({ "op": "put", "path": p, "hash": hash }),
            json!({ "op": "put", "path": p, "hash": hash, "expect": null }),
            json!({ "op": "delete", "path": p }),
            json!({ "op": "mkdir", "path": p }),
            json!({ "op": "move", "from": p, "to": "moved.txt" }),
            json!({ "op": "move", "from": "exists.txt", "to": p }),
        ] {
            probes.push(
                Probe::new("POST", format!("{api}/commits"))
                    .json_body(&json!({ "changes": [change] })),
            );
            // A good change first: the whole commit must still be refused.
            probes.push(Probe::new("POST", format!("{api}/commits")).json_body(
                &json!({ "changes": [{ "op": "put", "path": "good.txt", "hash": hash }, change] }),
            ));
        }
    }
    // Invalid branch names in the body.
    for branch in [
        "../x",
        "",
        ".x",
        "x.lock",
        "a/b",
        "a\0",
        " ",
        "refs/heads/main",
        &"a".repeat(129),
        &format!("../../sentinel/{m}"),
    ] {
        probes.push(Probe::new("POST", format!("{api}/commits")).json_body(
            &json!({ "ref": branch, "changes": [{ "op": "put", "path": "x", "hash": hash }] }),
        ));
    }
    run_probes(&srv, &probes, &mut tally);
    let r = http_request(srv.addr, "GET", &format!("{api}/stat/good.txt"), &[], b"").unwrap();
    assert_eq!(r.status, 404, "a refused commit applied its good change");
    let r = http_request(srv.addr, "GET", &format!("{api}/log"), &[], b"").unwrap();
    assert_eq!(
        r.json()["commits"].as_array().unwrap().len(),
        2,
        "only the first commit landed: {}",
        r.text()
    );

    // Names POSIX allows (backslashes, control characters, markup, 255 bytes, a 4096-byte path)
    // are stored as names inside the tree, read back exactly, and never touch the disk as paths.
    let long_path = vec!["p".repeat(240); 17].join("/");
    assert_eq!(long_path.len(), 4096);
    let odd: Vec<String> = vec![
        format!("..\\..\\sentinel\\{m}"),
        "a\\b".into(),
        "\u{1}".into(),
        "a\r\nb".into(),
        "<script>alert(1)</script>.html".replace('/', "\\"),
        "\"quoted\" & <tagged>".into(),
        "\u{202e}gnp.exe".into(),
        "~".into(),
        "....".into(),
        " ".into(),
        "%2e%2e".into(),
        "x".repeat(255),
        long_path,
    ];
    for name in &odd {
        tally.add(1);
        let path = format!("odd/{name}");
        let path = if name.len() >= 4000 {
            name.clone()
        } else {
            path
        };
        let r = commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": path, "hash": hash }]),
        );
        assert_eq!(
            r.status,
            201,
            "commit of the legal path {:?}: {}",
            short(&path),
            r.text()
        );
        let url = format!("{api}/stat/{}", enc_path(&path));
        let r = http_request(srv.addr, "GET", &url, &[], b"").unwrap();
        assert_eq!(r.status, 200, "stat {:?}: {}", short(&path), r.text());
        assert_eq!(r.json()["path"], path.as_str(), "the stored path");
        let r = http_request(
            srv.addr,
            "GET",
            &format!("/default/{}", enc_path(&path)),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, data.as_slice()),
            "browse {:?}",
            short(&path)
        );
    }
    // The directory index escapes every name.
    let r = http_request(srv.addr, "GET", "/default/odd/", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(
        !page.contains("<script>") && !page.contains("<tagged>"),
        "markup in a name reached the index unescaped: {page}"
    );
    for line in page.lines().filter(|l| l.starts_with("<a href=\"")) {
        let href = line["<a href=\"".len()..].split('"').next().unwrap();
        assert!(
            href.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>' && b != b'\\'),
            "unescaped href {href:?}"
        );
        assert!(
            !href.starts_with('/') && !href.contains("://"),
            "an absolute link in the index: {href:?}"
        );
    }
    assert_healthy(&srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

#[test]
fn hostile_refs_get_4xx_json() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("hostile_refs_get_4xx_json");
    let hash = seed_blob(&srv, "default", b"x");
    assert_eq!(
        commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": "f", "hash": hash }])
        )
        .status,
        201
    );
    let m = &sb.marker;
    let mut refs: Vec<String> = [
        "..",
        "..%2F..%2Fsentinel",
        "%00",
        "main%00",
        "main.lock",
        ".main",
        "%2Fetc%2Fpasswd",
        "refs%2Fheads%2Fmain",
        "main%0a",
        "%ff",
        "main%20",
        "%2e%2e",
        "main%2F..%2F..",
        "-",
        "main%5C..",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    refs.extend([
        "a".repeat(200),
        "0".repeat(64),
        "0".repeat(63),
        "A".repeat(64),
        format!("..%2F..%2Fsentinel%2F{m}"),
    ]);
    let mut probes = Vec::new();
    for r in &refs {
        for target in [
            format!("/default/f?ref={r}"),
            format!("/default/?ref={r}"),
            format!("/api/v1/repos/default/tree?ref={r}"),
            format!("/api/v1/repos/default/stat/f?ref={r}"),
            format!("/api/v1/repos/default/log?ref={r}"),
        ] {
            probes.push(Probe::new("GET", target));
        }
    }
    run_probes(&srv, &probes, &mut tally);
    assert_healthy(&srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

/// The ids of the head commit and its root tree.
fn head_commit_and_tree(srv: &ServerProcess, repo: &str) -> (String, String) {
    let r = http_request(
        srv.addr,
        "GET",
        &format!("/api/v1/repos/{repo}/log?limit=1"),
        &[],
        b"",
    )
    .unwrap();
    let c = &r.json()["commits"][0];
    (
        c["commit"].as_str().unwrap().to_string(),
        c["tree"].as_str().unwrap().to_string(),
    )
}

/// `?ref=` naming an object that exists but is not a commit (a blob or a tree) is the client's
/// mistake, like a ref that does not exist. The server loads it as a commit, the id check of
/// `Commit::decode` fails, and the `Corrupt` error becomes a 500 with "internal error: corrupt
/// object" in the log (src/store/repo.rs `Store::resolve` → `load_commit`).
#[test]
fn a_ref_naming_a_blob_or_tree_answers_4xx_not_500() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("a_ref_naming_a_blob_or_tree_answers_4xx_not_500");
    let hash = seed_blob(&srv, "default", b"0123456789");
    assert_eq!(
        commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": "f", "hash": hash }])
        )
        .status,
        201
    );
    let (_, tree) = head_commit_and_tree(&srv, "default");
    let mut probes = Vec::new();
    for id in [&hash, &tree] {
        for target in [
            format!("/default/f?ref={id}"),
            format!("/default/?ref={id}"),
            format!("/api/v1/repos/default/tree?ref={id}"),
            format!("/api/v1/repos/default/stat/f?ref={id}"),
            format!("/api/v1/repos/default/log?ref={id}"),
        ] {
            probes.push(Probe::new("GET", target));
        }
    }
    run_probes(&srv, &probes, &mut tally);
    assert!(
        !srv.log().contains("internal error"),
        "a client's bad ref was logged as an internal error: {}",
        log_tail(&srv)
    );
    assert_healthy(&srv);
    tally.done();
}

/// A commit may only point a file at a blob. `Store::commit` checks a `put`'s hash with
/// `blob_size`, which accepts any object in `objects/`, trees and commits included (they share
/// the directory), so any API client can make a file whose bytes are a tree or a commit: every
/// client that verifies a download against its id then fails, and `govcfs fsck` reports the
/// repository damaged (exit 1) although nothing is corrupt (src/store/commit.rs `Store::commit`,
/// src/store/blob.rs `blob_size`). The blob route also serves trees and commits as blobs.
#[test]
fn a_commit_refuses_tree_and_commit_ids_as_file_contents() {
    let sb = Sandbox::new();
    let mut srv = sb.start(&[]);
    let mut tally = Tally::new("a_commit_refuses_tree_and_commit_ids_as_file_contents");
    let hash = seed_blob(&srv, "default", b"0123456789");
    assert_eq!(
        commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": "f", "hash": hash }])
        )
        .status,
        201
    );
    let (commit_id, tree_id) = head_commit_and_tree(&srv, "default");
    let upload = start_upload(&srv, "default");
    let mut failures = Vec::new();
    for id in [&commit_id, &tree_id] {
        tally.add(3);
        let r = commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": format!("as-file-{id}"), "hash": id }]),
        );
        if let Some(p) = client_error_problem(
            &format!("put a file with the non-blob object {id}"),
            &r,
            true,
        ) {
            failures.push(p);
        }
        let r = http_request(
            srv.addr,
            "GET",
            &format!("/api/v1/repos/default/blobs/{id}"),
            &[],
            b"",
        )
        .unwrap();
        if let Some(p) =
            client_error_problem(&format!("GET the non-blob object {id} as a blob"), &r, true)
        {
            failures.push(p);
        }
        let r = http_request(
            srv.addr,
            "PUT",
            &format!("/api/v1/repos/default/uploads/{upload}/0"),
            &[("X-Copy-From-Blob", id.as_str())],
            b"",
        )
        .unwrap();
        if let Some(p) = client_error_problem(
            &format!("copy an upload chunk from the non-blob object {id}"),
            &r,
            true,
        ) {
            failures.push(p);
        }
    }
    assert_healthy(&srv);
    srv.signal(libc::SIGTERM);
    assert!(
        srv.wait_exit(Duration::from_secs(20)).is_some(),
        "the server did not stop on SIGTERM"
    );
    let fsck = run_cli(&["fsck", "--data", sb.data().to_str().unwrap()]);
    assert!(
        fsck.status.success(),
        "fsck after a client's commits reports damage: {} {}",
        fsck.stdout_text(),
        fsck.stderr
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    tally.done();
}

/// `mtime` of a `put` is any i64. The browsable view formats it with `httpdate::fmt_http_date`
/// (the directory index, and `Last-Modified` of a file), which panics for dates past the year
/// 9999 ("date must be before year 9999"; `UNIX_EPOCH + Duration` can overflow too): the
/// connection is dropped without an answer and the log shows the panic (src/server/browse.rs
/// `browse`, src/server/blobs.rs `serve_blob`; the commit could also refuse such times in
/// src/store/commit.rs).
#[test]
fn a_far_future_mtime_does_not_crash_the_browsable_view() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("a_far_future_mtime_does_not_crash_the_browsable_view");
    let hash = seed_blob(&srv, "default", b"timeless");
    let mut failures = Vec::new();
    for (i, mtime) in [253_402_300_800i64, 1 << 40, i64::MAX, i64::MIN, -1]
        .into_iter()
        .enumerate()
    {
        tally.add(3);
        let r = commit(
            &srv,
            "default",
            json!([{ "op": "put", "path": format!("d{i}/f"), "hash": hash, "mtime": mtime }]),
        );
        if r.status != 201 {
            // Refusing the time is fine too.
            if let Some(p) = client_error_problem(&format!("put with mtime {mtime}"), &r, true) {
                failures.push(p);
            }
            continue;
        }
        for target in [format!("/default/d{i}/f"), format!("/default/d{i}/")] {
            match http_request(srv.addr, "GET", &target, &[], b"") {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failures.push(format!(
                    "GET {target} (mtime {mtime}): {} {}",
                    r.status,
                    short(&r.text())
                )),
                Err(e) => failures.push(format!("GET {target} (mtime {mtime}): no answer ({e})")),
            }
        }
    }
    assert_no_failures(&failures, &srv);
    tally.done();
}

/// CONTRACT §3: API errors are `{"error","code"}`. axum's own extractor rejections answer
/// `text/plain` instead: a percent-escape that is not UTF-8 in a repository name, path or id
/// (`Path` rejection: "Invalid URL: Invalid UTF-8 in `path`"), a query that does not
/// deserialize (`?limit=abc`: "Failed to deserialize query string"), and a GET of the
/// WebSocket route without an upgrade. The handlers take `Path<…>`/`Query<…>`/
/// `WebSocketUpgrade` directly (src/server/repos.rs, browse.rs, blobs.rs, uploads.rs,
/// stream/mod.rs, stream/ws.rs); a rejection-mapping extractor (or `WithRejection`) fixes all.
#[test]
fn undecodable_urls_and_bad_queries_get_json_errors() {
    let srv = ServerProcess::start();
    let mut tally = Tally::new("undecodable_urls_and_bad_queries_get_json_errors");
    let mut probes = Vec::new();
    for bad in ["%ff", "%c0%ae%c0%ae", "a%fe", "%ed%a0%80"] {
        for target in [
            format!("/api/v1/repos/{bad}/tree"),
            format!("/api/v1/repos/default/tree/{bad}"),
            format!("/api/v1/repos/default/stat/{bad}"),
            format!("/api/v1/repos/default/blobs/{bad}"),
            format!("/api/v1/repos/default/uploads/{bad}"),
            format!("/api/v1/repos/default/stream/blob/{bad}/progress"),
            format!("/{bad}/"),
            format!("/default/{bad}"),
        ] {
            probes.push(Probe::new("GET", target));
        }
    }
    for query in [
        "limit=abc",
        "limit=-1",
        "limit=18446744073709551616",
        "limit=1.5",
    ] {
        probes.push(Probe::new(
            "GET",
            format!("/api/v1/repos/default/log?{query}"),
        ));
    }
    probes.push(Probe::new("GET", "/api/v1/repos/default/stream/websocket"));
    probes.push(Probe::new("POST", "/api/v1/repos/default/stream/websocket"));
    // run_probes only asks JSON of UTF-8 paths: ask it of these explicitly.
    let mut failures = Vec::new();
    for p in &probes {
        tally.add(1);
        let r = p.send(&srv).unwrap_or_else(|e| panic!("{e}"));
        if let Some(problem) = client_error_problem(&format!("{} {}", p.method, p.target), &r, true)
        {
            failures.push(problem);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} answers are not JSON errors:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );
    assert_healthy(&srv);
    tally.done();
}

/// A WebSocket upgrade on a repository that cannot exist (reserved, invalid) or does not
/// exist is accepted with 101; the client only learns of it from error frames of every
/// request. The upgrade handler should check the repository first and answer 400/404 JSON
/// (src/server/stream/ws.rs `websocket`).
#[test]
fn the_websocket_upgrade_checks_the_repository_first() {
    let srv = ServerProcess::start();
    let mut tally = Tally::new("the_websocket_upgrade_checks_the_repository_first");
    let mut failures = Vec::new();
    for repo in [
        "api",
        "..",
        "%2e%2e",
        "a%2Fb",
        "-x",
        "nope",
        &"a".repeat(65),
    ] {
        tally.add(1);
        let request = format!(
            "GET /api/v1/repos/{repo}/stream/websocket HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            srv.addr
        );
        let mut s = TcpStream::connect_timeout(&srv.addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if !(400..500).contains(&status) {
            failures.push(format!(
                "upgrade on {repo:?}: {}",
                head.lines().next().unwrap_or("")
            ));
        }
    }
    assert_no_failures(&failures, &srv);
    tally.done();
}

// ---------------------------------------------------------------------------------------
// 2. Ranges
// ---------------------------------------------------------------------------------------

/// What a well-formed single `Range` must give for a body of `len` bytes: `Some(Some((a, b)))`
/// is 206 with bytes a..=b, `Some(None)` is 416, `None` means the header is not a plain single
/// range (anything sane goes). Reversed ranges are invalid, hence ignored: 200.
#[derive(Debug, PartialEq)]
enum Expect {
    Partial(u64, u64),
    Unsatisfiable,
    Full,
}

fn single_range_expectation(header: &str, len: u64) -> Option<Expect> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    // Plain numbers that fit u64; longer ones (overflowing, or padded with zeros) may be
    // treated as unparseable, and an ignored Range (200) is always allowed (RFC 7233 §3.1).
    // Leading zeros (`00`) are valid digits too, but the parser the server uses refuses them;
    // ignoring such a header is allowed, so they are left out of the exact expectations.
    let number = |s: &str| -> Option<u64> {
        let plain = !s.is_empty()
            && s.len() <= 19
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        plain.then(|| s.parse().ok()).flatten()
    };
    if first.is_empty() {
        return match (number(last)?, len) {
            (0, _) => None, // an empty suffix: 200 (ignored) or 416 are both defensible
            (_, 0) => Some(Expect::Unsatisfiable),
            (n, len) => Some(Expect::Partial(len.saturating_sub(n), len - 1)),
        };
    }
    let a = number(first)?;
    let b = if last.is_empty() {
        u64::MAX
    } else {
        number(last)?
    };
    if b < a {
        return Some(Expect::Full);
    }
    if a >= len {
        return Some(Expect::Unsatisfiable);
    }
    Some(Expect::Partial(a, b.min(len - 1)))
}

/// Checks one answer to a `Range` request for `data`: 200 with all of it, 206 with exactly the
/// slice its `Content-Range` names (inside the body), or 416 with `Content-Range: bytes */LEN`;
/// for a well-formed single range, the one the RFC asks for. Returns the problem, if any.
fn range_problem(
    what: &str,
    data: &[u8],
    header: &str,
    r: &RawResponse,
    head: bool,
) -> Option<String> {
    let len = data.len() as u64;
    let content_length = r
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    let got = match r.status {
        200 => {
            if r.header("content-range").is_some() {
                return Some(format!("{what}: 200 with a Content-Range"));
            }
            if content_length != Some(len) || (!head && r.body != data) {
                return Some(format!(
                    "{what}: 200 without the whole body (Content-Length {content_length:?})"
                ));
            }
            Expect::Full
        }
        206 => {
            let Some(cr) = r.header("content-range") else {
                return Some(format!("{what}: 206 without Content-Range"));
            };
            let parsed = cr.strip_prefix("bytes ").and_then(|rest| {
                let (range, total) = rest.split_once('/')?;
                let (a, b) = range.split_once('-')?;
                Some((
                    a.parse::<u64>().ok()?,
                    b.parse::<u64>().ok()?,
                    total.parse::<u64>().ok()?,
                ))
            });
            let Some((a, b, total)) = parsed else {
                return Some(format!("{what}: malformed Content-Range {cr:?}"));
            };
            if total != len || a > b || b >= len {
                return Some(format!(
                    "{what}: Content-Range {cr:?} outside a body of {len} bytes"
                ));
            }
            if content_length != Some(b - a + 1)
                || (!head && r.body != data[a as usize..=b as usize])
            {
                return Some(format!(
                    "{what}: 206 {cr:?} with the wrong bytes (Content-Length {content_length:?})"
                ));
            }
            Expect::Partial(a, b)
        }
        416 => {
            if r.header("content-range") != Some(format!("bytes */{len}").as_str()) {
                return Some(format!(
                    "{what}: 416 with Content-Range {:?}",
                    r.header("content-range")
                ));
            }
            if !head {
                if let Some(p) = client_error_problem(what, r, true) {
                    return Some(p);
                }
            }
            Expect::Unsatisfiable
        }
        other => return Some(format!("{what}: status {other}: {}", short(&r.text()))),
    };
    match single_range_expectation(header, len) {
        Some(want) if want != got => {
            Some(format!("{what}: got {got:?}, RFC 7233 asks for {want:?}"))
        }
        _ => None,
    }
}

/// Hostile `Range` headers (all valid header values).
fn hostile_range_headers() -> Vec<String> {
    let mut headers: Vec<String> = [
        "bytes=0-18446744073709551615",
        "bytes=18446744073709551615-",
        "bytes=18446744073709551615-18446744073709551615",
        "bytes=-18446744073709551615",
        "bytes=0-18446744073709551616",
        "bytes=18446744073709551616-",
        "bytes=-18446744073709551616",
        "bytes=99999999999999999999999999999999-",
        "bytes=9223372036854775807-9223372036854775808",
        "bytes=-9223372036854775808",
        "bytes=-0",
        "bytes=0--1",
        "bytes=-1-2",
        "bytes=--1",
        "bytes=-",
        "bytes=",
        "bytes",
        "bytes=0-1,5-9",
        "bytes=0-1,0-1",
        "bytes=100-200,0-1",
        "bytes=0-1,100-200",
        "bytes=-100,0-1",
        "bytes=-5,-5",
        "bytes=0-0,1-1,2-2,3-3",
        "bytes=5-,0-0",
        "pages=0-1",
        "bytes 0-1",
        "BYTES=0-1",
        "Bytes=0-1",
        "bytes=0-1 ",
        "bytes=1-2,",
        "bytes=,1-2",
        "bytes=,",
        "bytes=0",
        "bytes=1",
        "bytes=9-",
        "bytes=10-",
        "bytes=10-10",
        "bytes=9-9",
        "bytes=5-3",
        "bytes=+1-2",
        "bytes=0x1-2",
        "bytes=1 - 2",
        "bytes=1e2-",
        "bytes=1.5-2",
        "bytes=0-1;q=1",
        "bytes=0-1/10",
        "bytes*=0-1",
        "bytes==0-1",
        "bytes=0-0-0",
        "bytes=a-b",
        "bytes=-a",
        "none",
        "*",
        "bytes=*",
        "bytes=0-1\t",
        "bytes=\t0-1",
        "bytes=0-1, 2-3",
        "bytes=0-65535",
        "bytes=65536-",
        "bytes=1048576-",
        "bytes=-1048577",
        "bytes=0-0,-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Many ranges in one header, and one very long number.
    headers.push(format!(
        "bytes={}",
        (0..2000)
            .map(|i| format!("{}-{}", 2 * i, 2 * i))
            .collect::<Vec<_>>()
            .join(",")
    ));
    headers.push(format!("bytes={}-", "9".repeat(5000)));
    headers.push(format!("bytes=0-{}", "0".repeat(5000)));
    headers
}

#[test]
fn hostile_range_headers_on_blobs_and_the_browsable_view() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("hostile_range_headers_on_blobs_and_the_browsable_view");
    let blobs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"x".to_vec(),
        b"0123456789".to_vec(),
        random_bytes(70_000, 5),
    ];
    let mut targets = Vec::new();
    for (i, data) in blobs.iter().enumerate() {
        let hash = seed_blob(&srv, "default", data);
        assert_eq!(
            commit(
                &srv,
                "default",
                json!([{ "op": "put", "path": format!("r{i}"), "hash": hash }])
            )
            .status,
            201
        );
        targets.push((
            data,
            format!("/api/v1/repos/default/blobs/{hash}"),
            hash.clone(),
        ));
        targets.push((data, format!("/default/r{i}"), hash));
    }
    let mut failures = Vec::new();
    for (data, target, hash) in &targets {
        for header in hostile_range_headers() {
            let etag = format!("\"{hash}\"");
            let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
                ("GET", vec![("Range", header.as_str())]),
                ("HEAD", vec![("Range", header.as_str())]),
                (
                    "GET",
                    vec![("Range", header.as_str()), ("If-Range", etag.as_str())],
                ),
                (
                    "GET",
                    vec![
                        ("Range", header.as_str()),
                        ("Accept-Encoding", "zstd, gzip"),
                    ],
                ),
            ];
            for (method, headers) in cases {
                tally.add(1);
                let what = format!(
                    "{method} {target} Range {:?} {:?}",
                    short(&header),
                    &headers[1..]
                );
                match http_request(srv.addr, method, target, &headers, b"") {
                    Err(e) => failures.push(format!("{what}: no answer within 10 s ({e})")),
                    Ok(r)
                        if headers.iter().any(|(k, _)| *k == "Accept-Encoding")
                            && r.header("content-encoding").is_some() =>
                    {
                        // A compressed answer: only its status and Content-Range are checked.
                        if ![200, 206, 416].contains(&r.status) {
                            failures.push(format!("{what}: status {}", r.status));
                        }
                    }
                    Ok(r) => {
                        if let Some(p) = range_problem(&what, data, &header, &r, method == "HEAD") {
                            failures.push(p);
                        }
                    }
                }
            }
        }
        // A stale If-Range sends the whole body whatever the range.
        tally.add(1);
        let r = http_request(
            srv.addr,
            "GET",
            target,
            &[("Range", "bytes=0-0"), ("If-Range", "\"stale\"")],
            b"",
        )
        .unwrap();
        if let Some(p) = range_problem(
            &format!("GET {target} with a stale If-Range"),
            data,
            "",
            &r,
            false,
        ) {
            failures.push(p);
        } else if r.status != 200 {
            failures.push(format!("GET {target} with a stale If-Range: {}", r.status));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} range answers are wrong:\n{}",
        failures.len(),
        tally.count,
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!srv.log().contains("internal error"), "{}", log_tail(&srv));
    assert_healthy(&srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

/// RFC 7233 §4.4 (RFC 9110 §15.5.17): 416 means none of the ranges is satisfiable (or the set
/// was rejected as excessive). The server's documented choice for multi-range requests is to
/// ignore the header (200), and it does so for `bytes=0-1,5-9`; but when one range of the set
/// lies past the end (`bytes=0-1,100-200` of 10 bytes) or two overlap (`bytes=0-1,0-1`), it
/// answers 416 although the set is satisfiable, because `plan` maps every `validate` error of
/// the set to `Unsatisfiable` (src/server/ranges.rs `plan`).
#[test]
fn a_satisfiable_multi_range_is_never_416() {
    let srv = ServerProcess::start();
    let mut tally = Tally::new("a_satisfiable_multi_range_is_never_416");
    let data = b"0123456789";
    let hash = seed_blob(&srv, "default", data);
    let mut failures = Vec::new();
    for header in [
        "bytes=0-1,100-200",
        "bytes=100-200,0-1",
        "bytes=-100,0-1",
        "bytes=0-1,0-1",
        "bytes=-5,-5",
        "bytes=5-,0-0,100-",
    ] {
        tally.add(1);
        let r = http_request(
            srv.addr,
            "GET",
            &format!("/api/v1/repos/default/blobs/{hash}"),
            &[("Range", header)],
            b"",
        )
        .unwrap();
        if let Some(p) = range_problem(header, data, header, &r, false) {
            failures.push(p);
        } else if r.status == 416 {
            failures.push(format!(
                "{header}: 416 for a satisfiable set of ranges of a 10-byte body"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    tally.done();
}

/// A grammar of `Range` headers (numbers small, at the body's edges, at u64's edges and past
/// it; every separator; garbage) against bodies of 0, 1, 10 and 70 000 bytes on both routes.
#[test]
fn fuzz_range_headers_through_http() {
    const CASES: u32 = 600;
    let srv = ServerProcess::start();
    let mut targets = Vec::new();
    for (i, data) in [
        Vec::new(),
        b"x".to_vec(),
        b"0123456789".to_vec(),
        random_bytes(70_000, 6),
    ]
    .into_iter()
    .enumerate()
    {
        let hash = seed_blob(&srv, "default", &data);
        assert_eq!(
            commit(
                &srv,
                "default",
                json!([{ "op": "put", "path": format!("r{i}"), "hash": hash }])
            )
            .status,
            201
        );
        targets.push((data.clone(), format!("/api/v1/repos/default/blobs/{hash}")));
        targets.push((data, format!("/default/r{i}")));
    }
    let number = prop_oneof![
        (0u64..12).prop_map(|n| n.to_string()),
        (69_990u64..70_010).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        prop_oneof![
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(i64::MAX as u64),
            Just(1u64 << 63)
        ]
        .prop_map(|n| n.to_string()),
        "[0-9]{19,30}",
        "-[0-9]{1,5}",
        "[ +0x.e]{0,2}[0-9]{1,3}",
    ];
    let spec = prop_oneof![
        4 => (number.clone(), number.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        2 => number.clone().prop_map(|a| format!("{a}-")),
        2 => number.clone().prop_map(|n| format!("-{n}")),
        1 => "[ -~]{0,12}",
    ];
    let header = prop_oneof![
        8 => (prop_oneof![6 => Just("bytes="), 1 => Just("BYTES="), 1 => Just("bytes "), 1 => Just(""), 1 => Just("items=")],
              prop::collection::vec(spec, 1..4),
              prop_oneof![Just(","), Just(", "), Just(",,")])
            .prop_map(|(unit, specs, sep)| format!("{unit}{}", specs.join(sep))),
        1 => "[ -~]{0,40}",
    ];
    let config = ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(
        &(header, 0..targets.len(), any::<bool>()),
        |(header, which, head)| {
            let (data, target) = &targets[which];
            let method = if head { "HEAD" } else { "GET" };
            let r = http_request(srv.addr, method, target, &[("Range", header.trim())], b"")
                .map_err(|e| {
                    TestCaseError::fail(format!(
                        "{method} {target} Range {header:?}: no answer within 10 s ({e})"
                    ))
                })?;
            match range_problem(
                &format!("{method} {target} Range {header:?}"),
                data,
                header.trim(),
                &r,
                head,
            ) {
                Some(p) => Err(TestCaseError::fail(p)),
                None => Ok(()),
            }
        },
    );
    if let Err(e) = result {
        panic!("{e}\nlog: {}", log_tail(&srv));
    }
    println!("hostile inputs tried in fuzz_range_headers_through_http: {CASES}");
    assert_healthy(&srv);
}

// ---------------------------------------------------------------------------------------
// 3. Malformed bodies: JSON, multipart, HTTP framing
// ---------------------------------------------------------------------------------------

/// Bodies that are not a valid request on any JSON route.
fn malformed_json_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "{",
        "{\"",
        "{\"id\":",
        "{\"id\":\"x",
        "{\"id\":\"x\"",
        "{\"changes\":[{\"op\":\"put\",\"path\":\"a\",",
        "[",
        "]",
        "}",
        "null",
        "true",
        "0",
        "-1",
        "\"str\"",
        "[]",
        "[{}]",
        "{} x",
        "{}{}",
        "{\"a\":1,}",
        "{'id':'x'}",
        "{id:\"x\"}",
        "\u{feff}{\"hash\":\"x\"}",
        "{\"hash\":\"\\ud800\"}",
        "{\"hash\":\"\\u0000\"",
        "NaN",
        "Infinity",
        "1e999999",
        "{\"chunk_size\": 1e400}",
        "{\"chunk_size\": 18446744073709551616}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(b"\xff\xfe{\x00}\x00".to_vec());
    bodies.push(b"{\"id\":\"a\x00b\"}".to_vec());
    bodies.push(b"{\"hash\":\"\xc0\xae\"}".to_vec());
    bodies.push("[".repeat(100_000).into_bytes());
    bodies.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    bodies.push("{\"a\":".repeat(50_000).into_bytes());
    bodies.push(format!("{}1{}", "{\"a\":".repeat(20_000), "}".repeat(20_000)).into_bytes());
    bodies.push(format!("{{\"changes\":{}", "[".repeat(60_000)).into_bytes());
    bodies.push(format!("{{\"x\":\"{}\"}}", "y".repeat(1_500_000)).into_bytes());
    bodies.push(format!("{{\"id\":\"{}", "z".repeat(1_000_000)).into_bytes());
    bodies.push(
        vec![b' '; 1000]
            .into_iter()
            .chain(b"x".iter().copied())
            .collect(),
    );
    bodies.push(random_bytes(100_000, 42));
    bodies
}

#[test]
fn malformed_json_bodies_get_4xx_json() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("malformed_json_bodies_get_4xx_json");
    let hash = seed_blob(&srv, "default", b"json target");
    let api = "/api/v1/repos/default";
    let routes = [
        "/api/v1/repos".to_string(),
        format!("{api}/commits"),
        format!("{api}/uploads"),
        format!("{api}/stream/blob/start"),
    ];
    // The wire types are the oracle: a body one of them accepts is a valid request, not a
    // malformed one (`[]` and unknown fields make a valid StartUpload, for instance).
    let valid_for = |route: usize, body: &[u8]| -> bool {
        match route {
            0 => serde_json::from_slice::<govcfs::api::CreateRepo>(body).is_ok(),
            1 => serde_json::from_slice::<govcfs::api::CommitRequest>(body).is_ok(),
            2 => {
                body.iter().all(u8::is_ascii_whitespace)
                    || serde_json::from_slice::<govcfs::api::StartUpload>(body).is_ok()
            }
            _ => serde_json::from_slice::<govcfs::api::stream::StreamRequest>(body).is_ok(),
        }
    };
    let mut probes = Vec::new();
    let mut skipped = 0;
    for body in malformed_json_bodies() {
        for (i, route) in routes.iter().enumerate() {
            if valid_for(i, &body) {
                skipped += 1;
                continue;
            }
            probes.push(
                Probe::new("POST", route.clone())
                    .header("Content-Type", "application/json")
                    .body(body.clone()),
            );
        }
    }
    assert!(
        skipped < 10,
        "most malformed bodies must be malformed for every route ({skipped} were valid)"
    );
    // Well-formed JSON of the wrong shape, per route.
    let wrong: Vec<(String, Vec<Value>)> = vec![
        (
            routes[0].clone(),
            vec![
                json!({ "id": 5 }),
                json!({ "id": null }),
                json!({ "id": ["a"] }),
                json!({ "id": { "x": 1 } }),
                json!({ "id": true }),
                json!({ "ID": "x" }),
                json!({}),
                json!({ "id": "ok", "id2": 1.5e308 })
                    .get("id2")
                    .cloned()
                    .unwrap(),
            ],
        ),
        (
            routes[1].clone(),
            vec![
                json!({ "changes": "x" }),
                json!({ "changes": [1] }),
                json!({ "changes": [{ "op": "put" }] }),
                json!({ "changes": null }),
                json!({ "changes": {} }),
                json!({}),
                json!({ "changes": [{ "op": "put", "path": 5, "hash": hash }] }),
                json!({ "changes": [{ "op": "put", "path": "a", "hash": hash, "mode": -1 }] }),
                json!({ "changes": [{ "op": "put", "path": "a", "hash": hash, "mode": 4_294_967_296u64 }] }),
                json!({ "changes": [{ "op": "put", "path": "a", "hash": hash, "mtime": 1e20 }] }),
                json!({ "changes": [{ "op": "put", "path": "a", "hash": hash, "mtime": "now" }] }),
                json!({ "changes": [{ "op": "delete", "path": "a", "expect": 5 }] }),
                json!({ "changes": [{ "op": "PUT", "path": "a", "hash": hash }] }),
                json!({ "changes": [{ "op": "move", "from": "a" }] }),
                json!({ "changes": [{ "op": ["put"], "path": "a", "hash": hash }] }),
                json!({ "ref": 5, "changes": [{ "op": "put", "path": "a", "hash": hash }] }),
                json!({ "message": 5, "changes": [{ "op": "put", "path": "a", "hash": hash }] }),
                json!({ "message": "x".repeat(1_900_000), "changes": "x" }),
            ],
        ),
        (
            routes[2].clone(),
            vec![
                json!({ "chunk_size": "big" }),
                json!({ "chunk_size": -1 }),
                json!({ "chunk_size": 1.5 }),
                json!({ "chunk_size": [1] }),
                json!({ "chunk_size": true }),
                json!(["big"]),
                json!("x"),
                json!(5),
            ],
        ),
        (
            routes[3].clone(),
            vec![
                json!({ "hash": 5 }),
                json!({ "hash": null }),
                json!({ "hash": ["a"] }),
                json!({}),
                json!({ "hash": hash, "chunk_size": -1 }),
                json!({ "hash": hash, "chunk_size": 1e30 }),
                json!({ "hash": hash, "start_offset": 9_223_372_036_854_775_808u64 }),
                json!({ "hash": hash, "end_offset": -9.3e18 }),
                json!({ "hash": hash, "enable_gzip": "yes" }),
                json!({ "hash": hash, "binary": 1 }),
                json!({ "hash": hash, "start_offset": "0" }),
            ],
        ),
    ];
    for (i, (route, values)) in wrong.iter().enumerate() {
        for v in values {
            assert!(
                !valid_for(i, v.to_string().as_bytes()),
                "{route}: {} is a valid body",
                short(&v.to_string())
            );
            probes.push(Probe::new("POST", route.clone()).json_body(v));
        }
    }
    // Content types the JSON routes do not take.
    for ct in [
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json; charset=utf-16",
    ] {
        let body = if ct.contains("utf-16") {
            b"\xff\xfe{\x00}\x00".to_vec()
        } else {
            json!({ "id": "x" }).to_string().into_bytes()
        };
        let mut p = Probe::new("POST", routes[0].clone()).body(body);
        if !ct.is_empty() {
            p = p.header("Content-Type", ct);
        }
        probes.push(p);
    }
    run_probes(&srv, &probes, &mut tally);

    // Bodies over the 2 MiB JSON limit: a 4xx on every route (JSON on the Json-extractor
    // routes; see `oversize_bodies_get_json_413` for the other two).
    let huge = format!("{{\"id\":\"{}\"}}", "h".repeat(3 << 20)).into_bytes();
    for (i, route) in routes.iter().enumerate() {
        tally.add(1);
        let r = http_request(
            srv.addr,
            "POST",
            route,
            &[("Content-Type", "application/json")],
            &huge,
        )
        .unwrap_or_else(|e| panic!("POST {route} 3 MiB: {e}"));
        if let Some(p) =
            client_error_problem(&format!("POST {route} with 3 MiB of JSON"), &r, i < 2)
        {
            panic!("{p}");
        }
    }
    assert_eq!(srv.metric("govcfs_stream_sessions_active"), Some(0.0));
    let r = http_request(srv.addr, "GET", "/api/v1/repos", &[], b"").unwrap();
    assert_eq!(
        r.json()["count"],
        1,
        "a malformed body created a repository: {}",
        r.text()
    );
    let r = http_request(srv.addr, "GET", &format!("{api}/log"), &[], b"").unwrap();
    assert_eq!(
        r.json()["commits"].as_array().unwrap().len(),
        1,
        "a malformed body made a commit: {}",
        r.text()
    );
    assert_healthy(&srv);
    // Uploads that were started by a stray valid body would show up under uploads/.
    assert!(
        !sb.data().join("repos/default/uploads").exists()
            || std::fs::read_dir(sb.data().join("repos/default/uploads"))
                .unwrap()
                .count()
                == 0,
        "a malformed body started an upload"
    );
    sb.assert_contained(&["default"]);
    tally.done();
}

/// The two routes that read their JSON body as raw `Bytes` (`POST …/uploads` and
/// `POST …/stream/blob/start`) answer an over-limit body with axum's plain-text 413 ("Failed to
/// buffer the request body: length limit exceeded"), not the contract's JSON error
/// (src/server/uploads.rs `start`, src/server/stream/mod.rs `start`: the `Bytes` extractor's
/// rejection). `POST /api/v1/repos` and `…/commits` answer 400 JSON for the same (the
/// `JsonRejection` is mapped to bad_request; 413 would be more precise).
#[test]
fn oversize_bodies_get_json_413() {
    let srv = ServerProcess::start();
    let mut tally = Tally::new("oversize_bodies_get_json_413");
    let body = |mib: usize| format!("{{\"hash\":\"{}\"}}", "h".repeat(mib << 20)).into_bytes();
    let mut failures = Vec::new();
    // Commit requests may be up to 64 MiB (about 300,000 changes); the rest 2 MB.
    for (route, mib) in [
        ("/api/v1/repos/default/uploads", 3),
        ("/api/v1/repos/default/stream/blob/start", 3),
        ("/api/v1/repos", 3),
        ("/api/v1/repos/default/commits", 65),
    ] {
        let huge = body(mib);
        tally.add(1);
        let r = http_request(
            srv.addr,
            "POST",
            route,
            &[("Content-Type", "application/json")],
            &huge,
        )
        .unwrap();
        if let Some(p) = client_error_problem(&format!("POST {route} with {mib} MiB"), &r, true) {
            failures.push(p);
        } else if r.status != 413 {
            failures.push(format!(
                "POST {route} with {mib} MiB: {} (want 413 too_large)",
                r.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    tally.done();
}

const BOUNDARY: &str = "hostile-boundary-7MA4YWxkTrZu0gW";

/// One well-formed multipart part.
fn part(content: &[u8]) -> Vec<u8> {
    let mut p = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    p.extend_from_slice(content);
    p.extend_from_slice(b"\r\n");
    p
}

fn closing() -> Vec<u8> {
    format!("--{BOUNDARY}--\r\n").into_bytes()
}

#[test]
fn malformed_multipart_bodies_are_refused_cleanly_or_stored_exactly() {
    let sb = Sandbox::new();
    let srv = sb.start(&["--max-upload-size", "32M"]);
    let mut tally = Tally::new("malformed_multipart_bodies_are_refused_cleanly_or_stored_exactly");
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let route = "/api/v1/repos/default/stream/blob/upload";

    // (name, content type, body, what a success must have stored: None = anything
    // self-consistent, Some(bytes) = exactly these bytes).
    type Case = (String, String, Vec<u8>, Option<Vec<u8>>);
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &str, ct: &str, body: Vec<u8>, expect: Option<Vec<u8>>| {
        cases.push((name.to_string(), ct.to_string(), body, expect))
    };
    let hello = [part(b"hello"), closing()].concat();
    add(
        "no boundary parameter",
        "multipart/form-data",
        hello.clone(),
        None,
    );
    add(
        "empty boundary",
        "multipart/form-data; boundary=",
        hello.clone(),
        None,
    );
    add(
        "boundary of 200 characters",
        &format!("multipart/form-data; boundary={}", "b".repeat(200)),
        hello.clone(),
        None,
    );
    add(
        "quoted boundary with spaces",
        "multipart/form-data; boundary=\"a b c\"",
        b"--a b c\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nspaced\r\n--a b c--\r\n"
            .to_vec(),
        Some(b"spaced".to_vec()),
    );
    add(
        "another boundary in the body",
        &ct,
        b"--other\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--other--\r\n".to_vec(),
        None,
    );
    add(
        "truncated inside a part",
        &ct,
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nhello")
            .into_bytes(),
        None,
    );
    add(
        "truncated inside the part headers",
        &ct,
        format!("--{BOUNDARY}\r\nContent-Disposition: form-da").into_bytes(),
        None,
    );
    add("no closing boundary", &ct, part(b"hello"), None);
    add("empty body", &ct, Vec::new(), None);
    add(
        "only the closing boundary",
        &ct,
        closing(),
        Some(Vec::new()),
    );
    add(
        "a part header of 1 MiB",
        &ct,
        {
            let mut b = format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(1 << 20)
            )
            .into_bytes();
            b.extend_from_slice(b"padded\r\n");
            b.extend(closing());
            b
        },
        Some(b"padded".to_vec()),
    );
    add(
        "a part with 200 headers",
        &ct,
        {
            let mut b = format!("--{BOUNDARY}\r\n").into_bytes();
            for i in 0..200 {
                b.extend(format!("X-H{i}: v\r\n").into_bytes());
            }
            b.extend(b"\r\nmany headers\r\n");
            b.extend(closing());
            b
        },
        None,
    );
    add(
        "a header line without a colon",
        &ct,
        format!("--{BOUNDARY}\r\nthis is not a header\r\n\r\nbody\r\n--{BOUNDARY}--\r\n")
            .into_bytes(),
        None,
    );
    add(
        "a header with bytes that are not UTF-8",
        &ct,
        [
            format!("--{BOUNDARY}\r\nX-Bin: ").into_bytes(),
            vec![0xff, 0xfe, 0x00],
            b"\r\n\r\nbin\r\n".to_vec(),
            closing(),
        ]
        .concat(),
        None,
    );
    add(
        "LF line endings",
        &ct,
        format!("--{BOUNDARY}\nContent-Disposition: form-data; name=\"f\"\n\nlf\n--{BOUNDARY}--\n")
            .into_bytes(),
        None,
    );
    add(
        "a preamble and an epilogue",
        &ct,
        [
            b"preamble garbage\r\n".to_vec(),
            part(b"middle"),
            closing(),
            b"epilogue garbage".to_vec(),
        ]
        .concat(),
        Some(b"middle".to_vec()),
    );
    add(
        "a nested multipart part",
        &ct,
        part("--inner\r\nContent-Type: text/plain\r\n\r\ninner\r\n--inner--".as_bytes()),
        None,
    );
    add(
        "a nested multipart part, closed",
        &ct,
        [part(b"--inner\r\n\r\ninner\r\n--inner--"), closing()].concat(),
        Some(b"--inner\r\n\r\ninner\r\n--inner--".to_vec()),
    );
    add(
        "the boundary inside the content, without CRLF before it",
        &ct,
        [part(format!("a--{BOUNDARY}b").as_bytes()), closing()].concat(),
        Some(format!("a--{BOUNDARY}b").into_bytes()),
    );
    add("random bytes", &ct, random_bytes(200_000, 9), None);
    add(
        "a multipart subtype that is not form-data",
        &format!("multipart/mixed; boundary={BOUNDARY}"),
        hello.clone(),
        None,
    );
    add(
        "a boundary parameter twice",
        &format!("multipart/form-data; boundary={BOUNDARY}; boundary=other"),
        hello.clone(),
        None,
    );
    {
        // 10 000 tiny parts: stored as their concatenation, or refused cleanly.
        let mut body = Vec::new();
        let mut content = Vec::new();
        for i in 0..10_000u32 {
            let piece = format!("{}", i % 1000);
            body.extend(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"p{i}\"\r\n\r\n{piece}\r\n").into_bytes());
            content.extend(piece.into_bytes());
        }
        body.extend(closing());
        add("10 000 tiny parts", &ct, body, Some(content));
    }
    let mut failures = Vec::new();
    let mut stored = Vec::new();
    for (name, ct, body, expect) in &cases {
        tally.add(1);
        let r = match http_request(
            srv.addr,
            "POST",
            route,
            &[("Content-Type", ct.as_str())],
            body,
        ) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: no answer within 10 s ({e})"));
                continue;
            }
        };
        if r.status == 201 {
            let answer = r.json();
            let hash = answer["hash"].as_str().unwrap_or("").to_string();
            let blob = http_request(
                srv.addr,
                "GET",
                &format!("/api/v1/repos/default/blobs/{hash}"),
                &[],
                b"",
            )
            .unwrap();
            if blob.status != 200
                || blob_id(&blob.body) != hash
                || answer["size"] != blob.body.len()
            {
                failures.push(format!(
                    "{name}: 201 {answer} but the stored blob does not match it"
                ));
            } else if let Some(want) = expect {
                if &blob.body != want {
                    failures.push(format!(
                        "{name}: stored {} bytes {:?}…, want {} bytes",
                        blob.body.len(),
                        short(&blob.text()),
                        want.len()
                    ));
                }
            }
            stored.push(name.clone());
        } else if let Some(p) = client_error_problem(name, &r, true) {
            failures.push(p);
        }
    }
    println!("multipart cases stored: {stored:?}");
    assert_no_failures(&failures, &srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

/// Sends raw bytes on a fresh connection (optionally half-closing it) and reads whatever comes
/// back within 10 s: `Ok(Some(status))`, `Ok(None)` when the server closed without an answer.
fn raw_exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Result<Option<u16>, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // A server that refuses early may close before everything is written.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > 1 << 20 {
                    break;
                }
                // One answer is enough: stop once its head is complete.
                if raw.windows(4).any(|w| w == b"\r\n\r\n") && !half_close {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("no answer and no close within 10 s: {e}")),
        }
    }
    if raw.is_empty() {
        return Ok(None);
    }
    // Skip interim answers (`100 Continue`).
    let mut rest = &raw[..];
    loop {
        let head = String::from_utf8_lossy(&rest[..rest.len().min(200)]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
        if !(100..200).contains(&status) {
            return Ok(Some(status));
        }
        match rest.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) if end + 4 < rest.len() => rest = &rest[end + 4..],
            _ => return Ok(None),
        }
    }
}

#[test]
fn broken_http_framing_gets_4xx_or_a_close_and_the_server_keeps_serving() {
    let sb = Sandbox::new();
    let srv = sb.start(&["--max-upload-size", "1M"]);
    let mut tally =
        Tally::new("broken_http_framing_gets_4xx_or_a_close_and_the_server_keeps_serving");
    let up = "POST /api/v1/repos/default/stream/blob/upload HTTP/1.1\r\nHost: x\r\n";
    let many_headers: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), false),
        ("binary garbage", random_bytes(10_000, 3), false),
        (
            "a NUL in the request line",
            b"GET /heal\0thz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n".to_vec(),
            false,
        ),
        (
            "a NUL in a header value",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
            false,
        ),
        (
            "an obs-fold header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            false,
        ),
        (
            "a space before the colon",
            b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "10 000 headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            false,
        ),
        (
            "a 1 MiB header",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(1 << 20)
            )
            .into_bytes(),
            false,
        ),
        (
            "a request target of 100 KB",
            format!(
                "GET /default/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(100_000)
            )
            .into_bytes(),
            false,
        ),
        (
            "two Content-Lengths",
            format!("{up}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").into_bytes(),
            false,
        ),
        (
            "a negative Content-Length",
            format!("{up}Content-Length: -1\r\n\r\nhello").into_bytes(),
            false,
        ),
        (
            "an overflowing Content-Length",
            format!("{up}Content-Length: 99999999999999999999999\r\n\r\nhello").into_bytes(),
            false,
        ),
        (
            "a Content-Length past --max-upload-size",
            format!("{up}Content-Length: 18446744073709551615\r\n\r\nhello").into_bytes(),
            true,
        ),
        (
            "a body shorter than its Content-Length",
            format!("{up}Content-Length: 100\r\n\r\nhello").into_bytes(),
            true,
        ),
        (
            "a chunk size that is not hex",
            format!("{up}Transfer-Encoding: chunked\r\n\r\nzzz\r\nabc\r\n0\r\n\r\n").into_bytes(),
            true,
        ),
        (
            "an overflowing chunk size",
            format!(
                "{up}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"
            )
            .into_bytes(),
            true,
        ),
        (
            "a chunk longer than announced",
            format!("{up}Transfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n").into_bytes(),
            true,
        ),
        (
            "a chunked body without its end",
            format!("{up}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").into_bytes(),
            true,
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            format!("{up}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .into_bytes(),
            true,
        ),
        (
            "an unknown Content-Encoding",
            format!("{up}Content-Encoding: br\r\nContent-Length: 5\r\n\r\nhello").into_bytes(),
            false,
        ),
        (
            "a zstd body that is not zstd",
            format!("{up}Content-Encoding: zstd\r\nContent-Length: 5\r\n\r\nhello").into_bytes(),
            false,
        ),
        (
            "Expect: 100-continue past the limit",
            format!("{up}Expect: 100-continue\r\nContent-Length: 2000000\r\n\r\n").into_bytes(),
            true,
        ),
        (
            "a pipelined request after a bad one",
            format!("{up}Content-Length: -5\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .into_bytes(),
            false,
        ),
    ];
    let mut failures = Vec::new();
    let mut answers = Vec::new();
    for (name, bytes, half_close) in &cases {
        tally.add(1);
        match raw_exchange(srv.addr, bytes, *half_close) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(None) => answers.push(format!("{name}: closed")),
            Ok(Some(status)) if (400..500).contains(&status) => {
                answers.push(format!("{name}: {status}"))
            }
            Ok(Some(status)) => {
                failures.push(format!("{name}: status {status} (want a 4xx or a close)"))
            }
        }
        if let Err(e) = http_request(srv.addr, "GET", "/healthz", &[], b"") {
            failures.push(format!("after {name}: GET /healthz got no answer ({e})"));
        }
    }
    // Content-Length with Transfer-Encoding: chunked is a smuggling attempt; RFC 9112 §6.3
    // lets the server refuse it or let Transfer-Encoding win. hyper does the latter: then the
    // body must be the chunked one, and the connection must not be reused.
    tally.add(1);
    let smuggle = format!("{up}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = TcpStream::connect_timeout(&srv.addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(smuggle.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 201 {
        assert!(
            text.contains(&blob_id(b"hello")),
            "Content-Length won over Transfer-Encoding: {text}"
        );
        answers.push("Content-Length and Transfer-Encoding: 201 (chunked body)".into());
    } else {
        assert!(
            (400..500).contains(&status),
            "Content-Length and Transfer-Encoding: {text}"
        );
        answers.push(format!("Content-Length and Transfer-Encoding: {status}"));
    }
    println!("broken framing answers: {answers:?}");
    assert_no_failures(&failures, &srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

// ---------------------------------------------------------------------------------------
// 4. Slow-loris clients
// ---------------------------------------------------------------------------------------

/// What became of a connection that sent its bytes slowly.
#[derive(Debug, Clone)]
struct Drip {
    /// When the server closed the connection (since it was opened), if it did.
    closed_after: Option<Duration>,
    /// Bytes sent after `head`.
    sent: usize,
    /// The start of what the server answered before closing, if anything.
    answer: Option<String>,
}

/// Opens a connection, sends `head` at once, then one byte of `drip` every `every` until
/// `max` passes, `stop` is set or the server closes the connection.
fn drip(
    addr: SocketAddr,
    head: &[u8],
    drip: &[u8],
    every: Duration,
    max: Duration,
    stop: &AtomicBool,
) -> Drip {
    let started = Instant::now();
    let mut outcome = Drip {
        closed_after: None,
        sent: 0,
        answer: None,
    };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(_) => {
            outcome.closed_after = Some(started.elapsed());
            return outcome;
        }
    };
    s.set_nonblocking(true).unwrap();
    let mut pending: Vec<u8> = head.to_vec();
    let mut i = 0usize;
    let mut buf = [0u8; 4096];
    // Bounded: one byte per `every` (≥ 1 ms) until `max`.
    while started.elapsed() < max && !stop.load(Ordering::Relaxed) {
        if pending.is_empty() {
            pending.push(drip[i % drip.len()]);
            i += 1;
            outcome.sent += 1;
        }
        match s.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                outcome.closed_after = Some(started.elapsed());
                return outcome;
            }
        }
        // Whatever the server says or does meanwhile.
        let step = Instant::now();
        while step.elapsed() < every {
            match s.read(&mut buf) {
                Ok(0) => {
                    outcome.closed_after = Some(started.elapsed());
                    return outcome;
                }
                Ok(n) => {
                    if outcome.answer.is_none() {
                        outcome.answer =
                            Some(String::from_utf8_lossy(&buf[..n.min(120)]).into_owned());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10).min(every))
                }
                Err(_) => {
                    outcome.closed_after = Some(started.elapsed());
                    return outcome;
                }
            }
        }
    }
    outcome
}

/// Whether the server has closed `s` (a read would return end-of-file or an error).
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

const SLOW_HEADERS: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n";
const SLOW_HEADER_DRIP: &[u8] = b"X-Slow-Loris: abcdefghijklmnopqrstuvwxyz0123456789\r\n";

fn slow_body_head(len: usize) -> Vec<u8> {
    format!("POST /api/v1/repos/default/stream/blob/upload HTTP/1.1\r\nHost: slow\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

#[test]
fn slow_loris_clients_do_not_starve_other_clients() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("slow_loris_clients_do_not_starve_other_clients");
    let addr = srv.addr;
    // 200 idle connections that never send a byte.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("idle connection")
        })
        .collect();
    tally.add(200);
    // 20 clients sending headers one byte per 500 ms, 5 sending a 100 000-byte body so.
    let stop = Arc::new(AtomicBool::new(false));
    let window = Duration::from_secs(12);
    let mut slow = Vec::new();
    for i in 0..25 {
        let stop = stop.clone();
        slow.push(std::thread::spawn(move || {
            if i < 20 {
                (
                    "headers",
                    drip(
                        addr,
                        SLOW_HEADERS,
                        SLOW_HEADER_DRIP,
                        Duration::from_millis(500),
                        window,
                        &stop,
                    ),
                )
            } else {
                (
                    "body",
                    drip(
                        addr,
                        &slow_body_head(100_000),
                        b"slow body ",
                        Duration::from_millis(500),
                        window,
                        &stop,
                    ),
                )
            }
        }));
    }
    tally.add(25);
    // Meanwhile other clients are served: every request answers within the 10 s guard.
    let http = http_client();
    let rt = runtime();
    let mut longest = Duration::ZERO;
    for round in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        let r = http_request(addr, "GET", "/healthz", &[], b"").unwrap_or_else(|e| panic!("round {round}: GET /healthz got no answer within 10 s while slow clients are connected: {e}"));
        assert_eq!(r.status, 200);
        let r = http_request(addr, "GET", "/api/v1/repos", &[], b"")
            .unwrap_or_else(|e| panic!("round {round}: GET /api/v1/repos: {e}"));
        assert_eq!(r.status, 200);
        let status = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    http.get(format!("http://{addr}/api/v1/repos/default/tree"))
                        .send(),
                )
                .await
            })
            .unwrap_or_else(|_| {
                panic!("round {round}: a keep-alive client got no answer within 10 s")
            })
            .expect("keep-alive request")
            .status();
        assert_eq!(status, 200);
        longest = longest.max(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<(&str, Drip)> = slow
        .into_iter()
        .map(|h| h.join().expect("slow client thread"))
        .collect();
    let idle_closed = idle.iter().filter(|s| closed_by_server(s)).count();
    for kind in ["headers", "body"] {
        let of_kind: Vec<&Drip> = outcomes
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| d)
            .collect();
        let closed: Vec<String> = of_kind
            .iter()
            .filter_map(|d| d.closed_after.map(|t| format!("{:.1}s", t.as_secs_f64())))
            .collect();
        println!(
            "slow {kind} connections closed by the server within {window:?}: {} of {} (after {closed:?}); answers: {:?}",
            closed.len(),
            of_kind.len(),
            of_kind.iter().filter_map(|d| d.answer.clone()).take(3).collect::<Vec<_>>()
        );
    }
    println!("idle connections closed by the server within about {window:?}: {idle_closed} of 200; longest round of other clients: {longest:?}");
    drop(idle);
    assert_healthy(&srv);
    // The slow uploads left no temporary blob once their connections were gone.
    sb.assert_contained(&["default"]);
    tally.done();
}

/// A client that never finishes its request headers must not hold a connection (and its
/// memory) forever: RFC 9112 §9.5 and every production server close it after a header read
/// timeout. Here the headers arrive one byte per 500 ms for up to 70 s; the connection must be
/// closed (with or without a 408) within 60 s. An idle connection that sends nothing is
/// measured too.
#[test]
fn slow_header_connection_is_closed_within_60_s() {
    let srv = ServerProcess::start();
    let mut tally = Tally::new("slow_header_connection_is_closed_within_60_s");
    let addr = srv.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let idle = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let dripper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            drip(
                addr,
                SLOW_HEADERS,
                SLOW_HEADER_DRIP,
                Duration::from_millis(500),
                Duration::from_secs(70),
                &stop,
            )
        })
    };
    tally.add(2);
    let outcome = dripper.join().unwrap();
    let opened = Instant::now();
    let idle_closed = wait_until(Duration::from_secs(10), || closed_by_server(&idle));
    println!(
        "slow header connection: {outcome:?}; an idle connection (no byte sent) closed by the server within {:?}: {idle_closed}",
        outcome.closed_after.unwrap_or(Duration::from_secs(70)) + opened.elapsed()
    );
    let closed = outcome.closed_after.unwrap_or_else(|| panic!("the server kept a connection that sent headers one byte per 500 ms for 70 s ({} bytes) open", outcome.sent));
    assert!(
        closed <= Duration::from_secs(60),
        "the slow header connection was closed only after {closed:?}"
    );
    assert_healthy(&srv);
    tally.done();
}

/// The classic slow-loris opens connections and never sends a byte. The header read timeout
/// (hyper's `header_read_timeout`, 30 s, set in src/server/listen.rs `serve_connection`) only
/// runs once a request has begun, and nothing else closes a connection that never starts one,
/// so each such connection holds a socket and a task for ever (enough of them exhaust the
/// server's file descriptors). It must be closed within 60 s.
#[test]
fn idle_connection_that_sends_nothing_is_closed_within_60_s() {
    let srv = ServerProcess::start();
    let mut tally = Tally::new("idle_connection_that_sends_nothing_is_closed_within_60_s");
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect_timeout(&srv.addr, Duration::from_secs(5)).unwrap())
        .collect();
    tally.add(5);
    let closed = wait_until(Duration::from_secs(70), || {
        idle.iter().all(closed_by_server)
    });
    let after = opened.elapsed();
    println!("idle connections closed by the server: {closed} (after {after:?})");
    assert!(
        closed && after <= Duration::from_secs(62),
        "connections that never sent a byte were still open after {after:?}"
    );
    assert_healthy(&srv);
    tally.done();
}

/// A request body that trickles in (one byte per 500 ms) holds a connection, a handler and a
/// temporary blob for as long as the client likes: there is no body read timeout (hyper has
/// none; the upload handlers read the body without one: src/server/stream/upload.rs
/// `store_body`/`feed_raw`, src/server/uploads.rs `put_chunk`). A server should give up on a
/// body that makes no reasonable progress; here it must close the connection (408 or not)
/// within 60 s.
#[test]
#[ignore = "LIMITATION: bodies are cut after 60 s without a byte, not for a low rate; a trickler holds one of its client's --max-client-requests slots"]
fn slow_body_connection_is_closed_within_60_s() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("slow_body_connection_is_closed_within_60_s");
    let stop = AtomicBool::new(false);
    tally.add(1);
    let outcome = drip(
        srv.addr,
        &slow_body_head(1_000_000),
        b"slow body ",
        Duration::from_millis(500),
        Duration::from_secs(70),
        &stop,
    );
    println!("slow body connection: {outcome:?}");
    let closed = outcome.closed_after.unwrap_or_else(|| {
        panic!(
            "the server kept an upload whose body trickled for 70 s ({} bytes) open",
            outcome.sent
        )
    });
    assert!(
        closed <= Duration::from_secs(60),
        "the slow body connection was closed only after {closed:?}"
    );
    assert_healthy(&srv);
    sb.assert_contained(&["default"]);
    tally.done();
}

// ---------------------------------------------------------------------------------------
// 5. WebSocket floods
// ---------------------------------------------------------------------------------------

/// Sends every message without reading answers, for at most `limit`; returns how many went
/// out before the server closed the connection (or all of them).
async fn ws_flood(
    ws: &mut Ws,
    messages: impl IntoIterator<Item = Message>,
    limit: Duration,
) -> usize {
    let deadline = Instant::now() + limit;
    let mut sent = 0;
    for m in messages {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.feed(m)).await {
            Ok(Ok(())) => sent += 1,
            _ => return sent,
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(left, ws.flush()).await;
    sent
}

/// Reads what the server sends until it closes the connection, stays silent for `quiet`, or
/// 100 000 frames have come; returns (error frames, other frames, closed by the server).
async fn ws_drain(ws: &mut Ws, quiet: Duration) -> (usize, usize, bool) {
    let (mut errors, mut others) = (0, 0);
    for _ in 0..100_000 {
        match tokio::time::timeout(quiet, ws.next()).await {
            Err(_) => return (errors, others, false),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return (errors, others, true)
            }
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"type\":\"error\"") => {
                errors += 1
            }
            Ok(Some(Ok(_))) => others += 1,
        }
    }
    (errors, others, false)
}

/// After the flood: the session gauge returns to 0, memory is bounded, and a fresh WebSocket
/// still streams a blob completely.
async fn assert_ws_recovered(
    srv: &ServerProcess,
    hash: &str,
    size: usize,
    rss_before_kib: u64,
    what: &str,
) {
    let freed = wait_until(Duration::from_secs(20), || {
        srv.metric("govcfs_stream_sessions_active") == Some(0.0)
    });
    assert!(
        freed,
        "{what}: govcfs_stream_sessions_active is {:?} after the connections closed",
        srv.metric("govcfs_stream_sessions_active")
    );
    let rss = srv.rss_kib().expect("VmRSS of the server");
    let growth_mib = rss.saturating_sub(rss_before_kib) / 1024;
    println!(
        "{what}: server VmRSS {} MiB → {} MiB (peak {} MiB)",
        rss_before_kib / 1024,
        rss / 1024,
        srv.peak_rss_kib().unwrap_or(0) / 1024
    );
    assert!(
        growth_mib < 100,
        "{what}: the server's VmRSS grew by {growth_mib} MiB"
    );
    let mut ws = ws_connect(srv).await;
    let request = json!({ "type": "stream", "hash": hash, "chunk_size": 65536, "start_offset": 0, "end_offset": -1 });
    ws.send(Message::text(request.to_string()))
        .await
        .expect("send a request");
    let mut received = 0u64;
    let mut done = false;
    for _ in 0..10_000 {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no frame within 10 s"));
        let Some(Ok(Message::Text(t))) = frame else {
            panic!("{what}: the stream after the flood ended with {frame:?}")
        };
        let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
        match v["type"].as_str() {
            Some("chunk") => received += v["size"].as_u64().unwrap(),
            Some("progress") if v["status"] == "completed" => {
                done = true;
                break;
            }
            Some("error") => panic!("{what}: error frame after the flood: {v}"),
            _ => {}
        }
    }
    assert!(
        done && received == size as u64,
        "{what}: a stream after the flood got {received} of {size} bytes"
    );
    drop(ws);
    assert_healthy(srv);
}

/// Garbage requests: broken JSON, deep nesting (within the 64 KiB message limit), wrong types,
/// traversal in hashes, cancels of unknown streams.
fn garbage_messages(n: usize) -> Vec<Message> {
    let pool: Vec<String> = vec![
        "{".into(),
        "[".repeat(60_000),
        "{\"a\":".repeat(12_000),
        "null".into(),
        "".into(),
        r#"{"type":"stream","hash":"../../../etc/passwd"}"#.into(),
        r#"{"type":"cancel","stream_id":"../.."}"#.into(),
        r#"{"type":"cancel"}"#.into(),
        r#"{"type":"nope"}"#.into(),
        r#"{"hash":5,"chunk_size":"x"}"#.into(),
        format!("{{\"hash\":\"{}\"}}", "f".repeat(60_000)),
        String::from_utf8_lossy(&random_bytes(2000, 11)).into_owned(),
    ];
    (0..n)
        .map(|i| Message::text(pool[i % pool.len()].clone()))
        .collect()
}

#[test]
fn websocket_floods_leave_memory_bounded_and_no_session_behind() {
    let sb = Sandbox::new();
    let srv = sb.start(&[]);
    let mut tally = Tally::new("websocket_floods_leave_memory_bounded_and_no_session_behind");
    let data = random_bytes(4 << 20, 21);
    let hash = seed_blob(&srv, "default", &data);
    block_on(async {
        // Warm up: one complete stream, so the baseline includes the stream machinery.
        assert_ws_recovered(&srv, &hash, data.len(), srv.rss_kib().unwrap(), "warm-up").await;
        let before = srv.rss_kib().expect("VmRSS");

        // 1. 1 000 garbage text messages as fast as possible, answers unread.
        let mut ws = ws_connect(&srv).await;
        let sent = ws_flood(&mut ws, garbage_messages(1000), Duration::from_secs(30)).await;
        tally.add(sent as u64);
        let (errors, others, closed) = ws_drain(&mut ws, Duration::from_secs(3)).await;
        println!("1 000 garbage messages, answers unread: {sent} sent before the server closed, {errors} error frames and {others} others back, closed by the server: {closed}");
        drop(ws);
        assert_ws_recovered(&srv, &hash, data.len(), before, "1 000 garbage messages").await;

        // 1b. The same 1 000 from a client that reads its answers, 16 messages in flight at
        //     most (a client pipelining more than the server's control queue of 32 without
        //     reading in between is taken for one that does not read, and dropped): one error
        //     frame each, and the connection stays usable.
        let mut ws = ws_connect(&srv).await;
        let mut errors = 0usize;
        for window in garbage_messages(1000).chunks(16) {
            for m in window {
                tokio::time::timeout(Duration::from_secs(10), ws.send(m.clone()))
                    .await
                    .expect("send within 10 s")
                    .expect("send a garbage message");
            }
            let want = errors + window.len();
            while errors < want {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"type\":\"error\"") => {
                        errors += 1
                    }
                    Ok(Some(Ok(_))) => {}
                    other => panic!("after {errors} error frames: {other:?}"),
                }
            }
        }
        tally.add(1000);
        assert_eq!(
            errors, 1000,
            "a reading client gets one error frame per garbage message"
        );
        ws.send(Message::text(
            json!({ "hash": hash, "chunk_size": 1 << 20 }).to_string(),
        ))
        .await
        .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s");
        assert!(
            matches!(&first, Some(Ok(Message::Text(t))) if t.as_str().contains("\"type\":\"response\"")),
            "a valid request after 1 000 garbage ones: {first:?}"
        );
        drop(ws);
        assert_ws_recovered(
            &srv,
            &hash,
            data.len(),
            before,
            "1 000 garbage messages, read",
        )
        .await;

        // 2. A 10 MiB text frame (the limit is 64 KiB): the server drops the connection.
        let mut ws = ws_connect(&srv).await;
        let big = "x".repeat(10 << 20);
        let _ = tokio::time::timeout(Duration::from_secs(30), ws.send(Message::text(big))).await;
        tally.add(1);
        let (_, _, closed) = ws_drain(&mut ws, Duration::from_secs(10)).await;
        assert!(
            closed,
            "the server kept a connection that sent a 10 MiB frame open"
        );
        drop(ws);
        // And the same as a binary frame, and as a fragmented message of 160 × 64 KiB.
        let mut ws = ws_connect(&srv).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            ws.send(Message::binary(vec![0u8; 10 << 20])),
        )
        .await;
        tally.add(1);
        let (_, _, closed) = ws_drain(&mut ws, Duration::from_secs(10)).await;
        assert!(
            closed,
            "the server kept a connection that sent a 10 MiB binary frame open"
        );
        drop(ws);
        assert_ws_recovered(&srv, &hash, data.len(), before, "10 MiB frames").await;

        // 3. Stream requests queued far past the queue (16), answers unread, then the
        //    connection dropped in the middle of a stream.
        let mut ws = ws_connect(&srv).await;
        let request = json!({ "type": "stream", "hash": hash, "chunk_size": 1024, "start_offset": 0, "end_offset": -1 }).to_string();
        let sent = ws_flood(
            &mut ws,
            (0..500).map(|_| Message::text(request.clone())),
            Duration::from_secs(30),
        )
        .await;
        tally.add(sent as u64);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let open = srv.metric("govcfs_stream_sessions_active").unwrap_or(-1.0);
        println!("500 queued stream requests: {sent} sent; sessions open meanwhile: {open}");
        assert!(open <= 1.0, "one connection holds {open} sessions at once");
        drop(ws);
        // 4. Fifty connections doing the same at once, all dropped.
        let mut many = Vec::new();
        for _ in 0..50 {
            let mut ws = ws_connect(&srv).await;
            let sent = ws_flood(
                &mut ws,
                (0..20).map(|_| Message::text(request.clone())),
                Duration::from_secs(10),
            )
            .await;
            tally.add(sent as u64);
            many.push(ws);
        }
        let open = srv.metric("govcfs_stream_sessions_active").unwrap_or(-1.0);
        println!("50 connections × 20 queued requests: sessions open meanwhile: {open}");
        assert!(open <= 50.0, "50 connections hold {open} sessions");
        drop(many);
        assert_ws_recovered(&srv, &hash, data.len(), before, "queued stream requests").await;

        // 5. 10 000 pings and 10 000 small binary frames, answers unread.
        let mut ws = ws_connect(&srv).await;
        let flood = (0..20_000).map(|i| {
            if i % 2 == 0 {
                Message::Ping(vec![1u8; 125].into())
            } else {
                Message::binary(vec![2u8; 100])
            }
        });
        let sent = ws_flood(&mut ws, flood, Duration::from_secs(30)).await;
        tally.add(sent as u64);
        let (errors, others, closed) = ws_drain(&mut ws, Duration::from_secs(3)).await;
        println!("20 000 pings and binary frames: {sent} sent, {errors} error frames and {others} others back, closed by the server: {closed}");
        drop(ws);
        assert_ws_recovered(&srv, &hash, data.len(), before, "pings and binary frames").await;
    });
    assert_healthy(&srv);
    sb.assert_contained(&["default"]);
    tally.done();
}
