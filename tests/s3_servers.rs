//! Several `govcfs serve` processes on one S3 prefix (`--store s3://BUCKET/PREFIX`): what one
//! instance commits, the others serve at once, and their mounts learn about it; an upload
//! session lives in the bucket, so any instance can carry it on; and a 2 GiB file goes
//! through an S3-backed server with flat server memory.
//!
//! The S3 server is the one of the environment (`GOVCFS_TEST_S3_ENDPOINT`, a real radosgw
//! under `scripts/test.sh`) or a `moto_server` child (see `common::s3`). Each test uses its
//! own fresh prefix. Every wait is bounded; timings and throughputs are printed, never
//! asserted. Every mount is undone by its guard, even when a test panics.

mod common;
mod mount_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::*;
use mount_support::{read_dir_bounded, MountGuard};
use serde_json::Value;

/// The repository every test writes to (it always exists).
const REPO: &str = "default";

/// Time limit of one CLI command on a small file.
const SMALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit of one CLI command moving the 2 GiB file.
const BIG_TIMEOUT: Duration = Duration::from_secs(15 * 60);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A server on an S3 prefix (`common::ServerProcess` with `--store`), logging at debug level so
/// that lost ref races and request durations can be read from its log.
struct S3Instance {
    server: ServerProcess,
    addr: SocketAddr,
}

impl S3Instance {
    /// Starts a server on `store_url` (a prefix of `s3`).
    fn start(s3: &S3Server, store_url: &str) -> S3Instance {
        let server = ServerProcess::start_on_s3(s3, store_url, &["--log-level", "debug"]);
        S3Instance {
            addr: server.addr,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    fn url(&self) -> String {
        self.server.url()
    }

    /// `http://127.0.0.1:PORT/REPO/PATH` (the URL `put`, `get` and `ls` take).
    fn file_url(&self, path: &str) -> String {
        format!("{}/{REPO}/{path}", self.url())
    }

    /// `/api/v1/repos/REPO`, the prefix of API request targets.
    fn api(&self) -> String {
        format!("/api/v1/repos/{REPO}")
    }

    fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        self.server.peak_rss_kib()
    }

    /// The server's log so far.
    fn log(&self) -> String {
        self.server.log()
    }

    /// The last `lines` lines of the log, for failure messages.
    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// An S3 server (the environment's or moto) and a fresh prefix on it.
fn s3_and_prefix() -> (S3Server, String) {
    let s3 = S3Server::start();
    let store_url = s3.store_url();
    eprintln!(
        "S3 server: {} at {}; store {store_url}",
        s3.kind, s3.endpoint
    );
    (s3, store_url)
}

/// One API request to `server`; panics if it cannot be sent or answered.
fn api_request(
    server: &S3Instance,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    http_request(server.addr, method, target, headers, body).unwrap_or_else(|e| {
        panic!(
            "{method} {target} on {}: {e}; log:\n{}",
            server.url(),
            server.log_tail(40)
        )
    })
}

/// The entries of directory `dir` through `server`'s tree API: name -> blob id.
fn tree_of(server: &S3Instance, dir: &str) -> BTreeMap<String, String> {
    let target = format!("{}/tree/{dir}", server.api());
    let response = api_request(server, "GET", &target, &[], b"");
    assert_eq!(
        response.status,
        200,
        "GET {target} on {}: {}",
        server.url(),
        response.text()
    );
    response.json()["entries"]
        .as_array()
        .expect("entries array")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e["hash"].as_str().expect("hash").to_string(),
            )
        })
        .collect()
}

/// `govcfs get URL -o OUT`; panics on failure.
fn get_to(url: &str, out: &Path, timeout: Duration) -> CliOutput {
    let output = run_cli_with(
        &["get", url, "-o", out.to_str().expect("UTF-8 path")],
        &[],
        timeout,
    );
    output.assert_success(&format!("govcfs get {url}"));
    output
}

/// Reads a file on a helper thread, waiting at most `timeout` (a hung mount cannot hang the
/// test). `None` on timeout.
fn read_bounded(path: &Path, timeout: Duration) -> Option<std::io::Result<Vec<u8>>> {
    let path: PathBuf = path.to_path_buf();
    on_thread_within(timeout, move || std::fs::read(&path))
}

// ---------------------------------------------------------------------------------------
// 1. Concurrent commits through two servers
// ---------------------------------------------------------------------------------------

/// Two servers on one bucket prefix take 15 `govcfs put`s each at the same time (to `a/…`
/// through A, `b/…` through B). Their commits race on the same branch ref in the bucket; the
/// conditional ref update must make the loser re-apply its change on the winner's tree, so
/// no commit is lost: both servers list all 30 files afterwards, with the right blob ids,
/// and every file read through the *other* server has the bytes that were put.
#[test]
fn two_servers_on_one_bucket_keep_every_concurrent_commit() {
    const FILES: usize = 15;
    let (s3, store_url) = s3_and_prefix();
    let a = S3Instance::start(&s3, &store_url);
    let b = S3Instance::start(&s3, &store_url);
    let work = tempfile::tempdir().expect("work dir");

    // Distinct small files: name -> (local path, content).
    let mut files: BTreeMap<(&str, usize), (PathBuf, Vec<u8>)> = BTreeMap::new();
    for (side, salt) in [("a", 1u64), ("b", 2u64)] {
        for i in 0..FILES {
            let data = random_bytes(1000 + 37 * i + 11 * salt as usize, salt * 1000 + i as u64);
            let local = work.path().join(format!("{side}-{i}"));
            std::fs::write(&local, &data).expect("write a local file");
            files.insert((side, i), (local, data));
        }
    }

    let barrier = Barrier::new(2);
    let started = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [("a", &a), ("b", &b)]
            .into_iter()
            .map(|(side, server)| {
                let files = &files;
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    for i in 0..FILES {
                        let local = files[&(side, i)]
                            .0
                            .to_str()
                            .expect("UTF-8 path")
                            .to_string();
                        let url = server.file_url(&format!("{side}/{i}"));
                        let out = run_cli_with(&["put", &local, &url], &[], SMALL_TIMEOUT);
                        if !out.status.success() {
                            return Err(format!(
                                "govcfs put {local} {url}: {:?}; stderr: {}",
                                out.status, out.stderr
                            ));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("put thread panicked".into()))
            })
            .collect()
    });
    eprintln!(
        "{} concurrent puts through two servers took {:.1?}",
        2 * FILES,
        started.elapsed()
    );
    for r in &results {
        if let Err(e) = r {
            panic!(
                "{e}\nlog of A:\n{}\nlog of B:\n{}",
                a.log_tail(40),
                b.log_tail(40)
            );
        }
    }
    let lost_races = |s: &S3Instance| s.log().matches("lost a race").count();
    eprintln!(
        "commits that lost a ref race and were re-applied: A {}, B {}",
        lost_races(&a),
        lost_races(&b)
    );

    // Both servers list all 30 files, with the blob ids of what was put.
    for (name, server) in [("A", &a), ("B", &b)] {
        for side in ["a", "b"] {
            let listed = tree_of(server, side);
            let expected: BTreeMap<String, String> = (0..FILES)
                .map(|i| (i.to_string(), blob_id(&files[&(side, i)].1)))
                .collect();
            assert_eq!(
                listed, expected,
                "tree {side}/ through server {name} (left: listed, right: put)"
            );
            let out = run_cli_with(&["ls", &server.file_url(side)], &[], SMALL_TIMEOUT);
            out.assert_success(&format!("govcfs ls {side}/ through {name}"));
            let text = out.stdout_text();
            let names: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split_whitespace().last())
                .collect();
            for i in 0..FILES {
                assert!(
                    names.contains(&i.to_string().as_str()),
                    "govcfs ls {side}/ through {name} lacks {i}:\n{text}"
                );
            }
        }
    }

    // Every file, read through the other server, has the bytes that were put.
    for ((side, i), (_, data)) in &files {
        let other = if *side == "a" { &b } else { &a };
        let got = work.path().join(format!("got-{side}-{i}"));
        get_to(&other.file_url(&format!("{side}/{i}")), &got, SMALL_TIMEOUT);
        let bytes = std::fs::read(&got).expect("read the downloaded file");
        assert!(
            bytes == *data,
            "{side}/{i} read through the other server differs ({} bytes, {} expected)",
            bytes.len(),
            data.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. A mount through one server, writes through the other
// ---------------------------------------------------------------------------------------

/// Servers A and B share a bucket prefix and a mount serves A's URL. A 20 MiB file `cp`'d
/// into the mount is readable through B as soon as `cp` returns (closing commits). A file
/// put through B then shows up in the mount within 15 s and reads back right: A polls the
/// bucket's refs (about every second) and tells its mounts. The mount's `--attr-ttl` is
/// 60 s, so only that announcement, not an expiring listing, can make the file appear.
#[test]
fn a_mount_through_one_server_sees_writes_made_through_the_other() {
    let (s3, store_url) = s3_and_prefix();
    let a = S3Instance::start(&s3, &store_url);
    let b = S3Instance::start(&s3, &store_url);
    let work = tempfile::tempdir().expect("work dir");
    let cache = tempfile::tempdir().expect("cache dir");
    let mnt = MountGuard::start(
        &format!("{}/{REPO}", a.url()),
        &[
            "--cache-dir",
            cache.path().to_str().expect("UTF-8 path"),
            "--attr-ttl",
            "60",
        ],
    );
    let logs = |mnt: &MountGuard| {
        format!(
            "mount log:\n{}\nlog of A:\n{}\nlog of B:\n{}",
            mnt.log(),
            a.log_tail(40),
            b.log_tail(40)
        )
    };

    // 20 MiB through the mount of A, read back through B.
    let source = work.path().join("big.bin");
    write_random_file(&source, 20 * MIB, 20).expect("write the source file");
    let started = Instant::now();
    let CliOutput { status, stderr, .. } = run_command(
        Command::new("cp")
            .arg(&source)
            .arg(mnt.path().join("big.bin")),
        Duration::from_secs(300),
    );
    assert!(
        status.success(),
        "cp into the mount failed: {status}; stderr: {stderr}\n{}",
        logs(&mnt)
    );
    eprintln!(
        "cp of 20 MiB into the mount of A: {:.1?}",
        started.elapsed()
    );
    let got = work.path().join("big-via-b.bin");
    get_to(&b.file_url("big.bin"), &got, SMALL_TIMEOUT);
    assert_files_equal(&source, &got);

    // A file put through B appears in the mount of A.
    let data = random_bytes((300 * KIB) as usize + 5, 21);
    let local = work.path().join("from-b.bin");
    std::fs::write(&local, &data).expect("write the local file");
    let out = run_cli_with(
        &[
            "put",
            local.to_str().expect("UTF-8 path"),
            &b.file_url("from-b.bin"),
        ],
        &[],
        SMALL_TIMEOUT,
    );
    out.assert_success("govcfs put from-b.bin through B");
    let put_done = Instant::now();
    let mut last_listing = None;
    let seen = wait_until(Duration::from_secs(15), || {
        let listing = read_dir_bounded(mnt.path(), Duration::from_secs(5));
        let found = matches!(&listing, Some(Ok(names)) if names.iter().any(|n| n == "from-b.bin"));
        last_listing = Some(listing);
        if !found {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    });
    assert!(seen, "from-b.bin (put through B) not listed by the mount of A within 15 s; last listing: {last_listing:?}\n{}", logs(&mnt));
    eprintln!(
        "the mount of A listed the file put through B {:.1?} after the put returned",
        put_done.elapsed()
    );

    // And reads back right through the mount.
    match read_bounded(&mnt.path().join("from-b.bin"), Duration::from_secs(60)) {
        Some(Ok(bytes)) => assert!(
            bytes == data,
            "from-b.bin through the mount: {} bytes differ from the {} put",
            bytes.len(),
            data.len()
        ),
        Some(Err(e)) => panic!("reading from-b.bin through the mount: {e}\n{}", logs(&mnt)),
        None => panic!(
            "reading from-b.bin through the mount hung for 60 s\n{}",
            logs(&mnt)
        ),
    }
    mnt.unmount();
}

// ---------------------------------------------------------------------------------------
// 3. A 2 GiB file through an S3-backed server
// ---------------------------------------------------------------------------------------

/// A 2 GiB random file goes up with `govcfs put` and comes back with `govcfs get -o`
/// through one server on S3, byte-identical, while the server's memory stays flat: its peak
/// RSS (VmHWM, and the largest VmRSS sampled every 100 ms during each transfer) stays under
/// 128 MiB. Throughputs are printed for information only.
///
/// On moto the file is 256 MiB instead: moto reads (and copies) a whole object for every
/// ranged GET, so downloading 2 GiB in ranges from it takes far longer than 15 minutes.
#[test]
fn a_2_gib_file_through_s3_keeps_server_memory_flat() {
    const LIMIT_KIB: u64 = 128 * 1024;
    let (s3, store_url) = s3_and_prefix();
    let (len, size_name) = if s3.kind == "moto" {
        (256 * MIB, "256 MiB")
    } else {
        (2 * GIB, "2 GiB")
    };
    if s3.kind == "moto" {
        eprintln!(
            "moto copies a whole object per ranged GET: this run moves {size_name}, not 2 GiB"
        );
    }
    let server = S3Instance::start(&s3, &store_url);
    let work = tempfile::tempdir().expect("work dir");
    let source = work.path().join("source.bin");
    let got = work.path().join("got.bin");
    let started = Instant::now();
    write_random_file(&source, len, 2048).expect("write the source file");
    eprintln!("generated {len} bytes in {:.1?}", started.elapsed());
    let rss_idle = server.peak_rss_kib().unwrap_or(0);

    let sampler = ProcSampler::start(server.pid());
    let put = run_cli_with(
        &[
            "put",
            source.to_str().expect("UTF-8 path"),
            &server.file_url("big.bin"),
        ],
        &[],
        BIG_TIMEOUT,
    );
    let put_samples = sampler.stop();
    if !put.status.success() {
        panic!(
            "govcfs put of {size_name} failed ({:?}); stderr: {}\nserver log:\n{}",
            put.status,
            put.stderr,
            server.log_tail(60)
        );
    }

    let sampler = ProcSampler::start(server.pid());
    let get = run_cli_with(
        &[
            "get",
            &server.file_url("big.bin"),
            "-o",
            got.to_str().expect("UTF-8 path"),
        ],
        &[],
        BIG_TIMEOUT,
    );
    let get_samples = sampler.stop();
    if !get.status.success() {
        panic!(
            "govcfs get of {size_name} failed ({:?}); stderr: {}\nserver log:\n{}",
            get.status,
            get.stderr,
            server.log_tail(60)
        );
    }
    let peak = server.peak_rss_kib().expect("VmHWM of the server");

    eprintln!(
        "put {size_name}: {:.1?}, {:.1} MiB/s; get {size_name}: {:.1?}, {:.1} MiB/s ({} S3)",
        put.elapsed,
        mib_per_s(len, put.elapsed),
        get.elapsed,
        mib_per_s(len, get.elapsed),
        s3.kind
    );
    eprintln!(
        "server RSS: {rss_idle} KiB peak before; max sampled during put {} KiB (at {:.1} s, {} threads), during get {} KiB (at {:.1} s, {} threads); VmHWM {peak} KiB",
        put_samples.max_rss_kib,
        put_samples.max_rss_at_secs,
        put_samples.max_threads,
        get_samples.max_rss_kib,
        get_samples.max_rss_at_secs,
        get_samples.max_threads
    );
    eprintln!(
        "client peak RSS: put {} KiB, get {} KiB",
        put.peak_rss_kib, get.peak_rss_kib
    );
    // Where the put's time went: the server logs each request's duration at debug level.
    for line in server
        .log()
        .lines()
        .filter(|l| l.contains("/complete ->") || l.contains("/commits ->"))
    {
        eprintln!("server: {line}");
    }

    assert_files_equal(&source, &got);
    assert!(
        put_samples.max_rss_kib < LIMIT_KIB && get_samples.max_rss_kib < LIMIT_KIB && peak < LIMIT_KIB,
        "server memory not flat: max RSS during put {} KiB, during get {} KiB, VmHWM {peak} KiB (limit {LIMIT_KIB} KiB)",
        put_samples.max_rss_kib,
        get_samples.max_rss_kib
    );

    for f in [&source, &got] {
        std::fs::remove_file(f).expect("remove a large temporary file");
    }
}

// ---------------------------------------------------------------------------------------
// 4. One upload session, two servers
// ---------------------------------------------------------------------------------------

/// An upload session lives in the bucket, not in one server: started on A with chunk 0 put
/// on A, it shows chunk 0 on B, takes chunk 1 on B and is completed on B (into the blob id
/// of the whole); a commit through A then names that blob, and `govcfs get` through B
/// returns exactly the bytes of both chunks.
#[test]
fn an_upload_session_started_on_one_server_is_completed_on_the_other() {
    let (s3, store_url) = s3_and_prefix();
    let a = S3Instance::start(&s3, &store_url);
    let b = S3Instance::start(&s3, &store_url);
    const CHUNK: u64 = MIB;
    let data = random_bytes((CHUNK + 512 * KIB + 7) as usize, 4);
    let (first, second) = data.split_at(CHUNK as usize);
    let json = [("Content-Type", "application/json")];
    let fail = |what: &str, r: &RawResponse| -> String {
        format!(
            "{what}: {} {}\nlog of A:\n{}\nlog of B:\n{}",
            r.status,
            r.text(),
            a.log_tail(40),
            b.log_tail(40)
        )
    };

    // Start on A.
    let body = format!(r#"{{"chunk_size": {CHUNK}}}"#);
    let r = api_request(
        &a,
        "POST",
        &format!("{}/uploads", a.api()),
        &json,
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", fail("start the upload on A", &r));
    let started: Value = r.json();
    let id = started["upload_id"]
        .as_str()
        .expect("upload_id")
        .to_string();
    assert_eq!(
        started["chunk_size"].as_u64(),
        Some(CHUNK),
        "chunk size granted: {started}"
    );

    // Chunk 0 on A, chunk 1 on B (each with its MD5).
    let uploads = |server: &S3Instance| format!("{}/uploads/{id}", server.api());
    let md5 = md5_hex(first);
    let r = api_request(
        &a,
        "PUT",
        &format!("{}/0", uploads(&a)),
        &[("x-checksum-md5", &md5)],
        first,
    );
    assert_eq!(r.status, 204, "{}", fail("chunk 0 on A", &r));
    let r = api_request(&b, "GET", &uploads(&b), &[], b"");
    assert_eq!(r.status, 200, "{}", fail("status of the upload on B", &r));
    let status = r.json();
    assert_eq!(
        status["received"],
        serde_json::json!([0]),
        "upload status on B after chunk 0 on A: {status}"
    );
    let md5 = md5_hex(second);
    let r = api_request(
        &b,
        "PUT",
        &format!("{}/1", uploads(&b)),
        &[("x-checksum-md5", &md5)],
        second,
    );
    assert_eq!(r.status, 204, "{}", fail("chunk 1 on B", &r));

    // Complete on B.
    let r = api_request(&b, "POST", &format!("{}/complete", uploads(&b)), &[], b"");
    assert_eq!(r.status, 201, "{}", fail("complete on B", &r));
    let info = r.json();
    assert_eq!(
        info["hash"].as_str(),
        Some(blob_id(&data).as_str()),
        "blob id of the assembled upload: {info}"
    );
    assert_eq!(
        info["size"].as_u64(),
        Some(data.len() as u64),
        "size of the assembled upload: {info}"
    );
    assert_eq!(
        info["chunks"].as_u64(),
        Some(1),
        "store chunks of the assembled upload: {info}"
    );
    let hash = info["hash"].as_str().expect("hash").to_string();

    // Commit on A.
    let commit = serde_json::json!({
        "message": "upload assembled on another server",
        "changes": [{ "op": "put", "path": "session/two-servers.bin", "hash": hash }],
    });
    let r = api_request(
        &a,
        "POST",
        &format!("{}/commits", a.api()),
        &json,
        commit.to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", fail("commit on A", &r));

    // Read through B.
    let work = tempfile::tempdir().expect("work dir");
    let got = work.path().join("got.bin");
    get_to(&b.file_url("session/two-servers.bin"), &got, SMALL_TIMEOUT);
    let bytes = std::fs::read(&got).expect("read the downloaded file");
    assert!(
        bytes == data,
        "session/two-servers.bin through B: {} bytes, differing from the {} uploaded",
        bytes.len(),
        data.len()
    );
}
