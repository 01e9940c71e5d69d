//! Integration tests of the read side of the FUSE mount (CONTRACT §1 `mount`/`unmount`, §5).
//!
//! Every test runs the real `govcfs serve` binary on a loopback port and a real
//! `govcfs mount` on a fresh temporary mountpoint, and drives the mount with ordinary
//! programs (`cat`, `tail`, `grep`, `ls`) or plain syscalls. Every mount is undone by a guard
//! (even when a test panics); every wait is bounded. Timings are printed, never asserted.

mod common;
mod mount_support;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    assert_files_equal, first_diff, first_difference, free_port, govcfs_command, kill_child,
    metric_value, mib_per_s, random_bytes, run_cli, run_command, run_status, wait_child,
    wait_until, CliOutput, ServerProcess, XorShift, GIB, GOVCFS, KIB, MIB,
};
use mount_support::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// Time limit of one command that reads a large file through the mount.
const BIG_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `govcfs put FILE URL/PATH` (upload and commit); panics on failure.
fn put(file: &Path, repo_url: &str, path: &str) {
    let target = format!("{repo_url}/{path}");
    let started = Instant::now();
    let out = run_cli(&["put", file.to_str().expect("UTF-8 path"), &target]);
    out.assert_success(&format!("govcfs put {} {target}", file.display()));
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    println!("put {path}: {} bytes in {:.1?}", len, started.elapsed());
}

/// Writes `data` to a file in `dir` and commits it at `path`.
fn put_bytes(dir: &Path, repo_url: &str, path: &str, data: &[u8]) {
    let local = dir.join(format!("upload-{}", path.replace('/', "_")));
    std::fs::write(&local, data).expect("write the local file");
    put(&local, repo_url, path);
}

/// Uploads a large local file through the resumable upload API (chunks PUT 3 at a time,
/// without the optional MD5 header, so the debug-built CLI's MD5 does not dominate the test's
/// setup time) and commits it at `path`. Returns the blob id.
fn api_put_file(api: &str, local: &Path, path: &str) -> String {
    use futures::StreamExt;
    let len = std::fs::metadata(local).expect("stat the local file").len();
    let started = Instant::now();
    let hash = common::block_on(async {
        // Assembling a multi-GiB blob takes a while: a longer limit than common::http_client.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(600))
            .build()
            .expect("reqwest client");
        let start: Value = http
            .post(format!("{api}/uploads"))
            .json(&json!({"chunk_size": 8 * MIB}))
            .send()
            .await
            .expect("start upload")
            .error_for_status()
            .expect("start upload")
            .json()
            .await
            .expect("upload JSON");
        let id = start["upload_id"].as_str().expect("upload_id").to_string();
        let chunk = start["chunk_size"].as_u64().expect("chunk_size");
        let file = File::open(local).expect("open the local file");
        let count = len.div_ceil(chunk);
        let results: Vec<()> = futures::stream::iter(0..count)
            .map(|index| {
                let offset = index * chunk;
                let mut buf = vec![0u8; chunk.min(len - offset) as usize];
                file.read_exact_at(&mut buf, offset)
                    .expect("read a chunk of the local file");
                let request = http.put(format!("{api}/uploads/{id}/{index}")).body(buf);
                async move {
                    let response = request.send().await.expect("PUT chunk");
                    assert!(
                        response.status().is_success(),
                        "PUT chunk {index}: {}",
                        response.status()
                    );
                }
            })
            .buffer_unordered(3)
            .collect()
            .await;
        assert_eq!(results.len() as u64, count);
        let done: Value = http
            .post(format!("{api}/uploads/{id}/complete"))
            .send()
            .await
            .expect("complete")
            .error_for_status()
            .expect("complete")
            .json()
            .await
            .expect("complete JSON");
        assert_eq!(done["size"].as_u64(), Some(len), "{done}");
        let hash = done["hash"].as_str().expect("hash").to_string();
        let response = http
            .post(format!("{api}/commits"))
            .json(&json!({"message": format!("upload {path}"), "changes": [{"op": "put", "path": path, "hash": hash}]}))
            .send()
            .await
            .expect("commit");
        assert_eq!(response.status(), 201, "commit {path}");
        hash
    });
    println!(
        "uploaded {path}: {len} bytes in {:.1?} ({:.0} MiB/s)",
        started.elapsed(),
        mib_per_s(len, started.elapsed())
    );
    hash
}

/// `govcfs_blob_bytes_sent_total` of a server.
fn blob_bytes_sent(server: &ServerProcess) -> u64 {
    metric_value(&server.metrics(), "govcfs_blob_bytes_sent_total")
        .expect("govcfs_blob_bytes_sent_total in /metrics") as u64
}

/// The route label of a `govcfs_http_requests_total{route="…",status="…"} N` line.
fn route_label(line: &str) -> Option<&str> {
    let start = line.find("route=\"")? + "route=\"".len();
    let rest = &line[start..];
    Some(&rest[..rest.find('"')?])
}

/// Requests answered on routes whose template contains `/tree` (every status).
fn tree_requests(server: &ServerProcess) -> u64 {
    server
        .metrics()
        .lines()
        .filter(|l| l.starts_with("govcfs_http_requests_total{"))
        .filter(|l| route_label(l).is_some_and(|r| r.contains("/tree")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Writes a text file of `len` bytes (a multiple of 64): lines of 64 bytes, each a unique
/// 10-digit line number, a space, 52 random lowercase letters and a newline. Every line whose
/// number is 7 modulo 1000 also carries the word `NEEDLE` (upper case, so random letters never
/// form it). Returns the number of lines containing `NEEDLE`.
fn write_text_file(path: &Path, len: u64, seed: u64) -> u64 {
    const LINE: usize = 64;
    const BUF: usize = 1 << 20;
    assert_eq!(len % LINE as u64, 0);
    let mut rng = XorShift::new(seed);
    let mut file = File::create(path).expect("create the text file");
    let mut buf = vec![0u8; BUF];
    let mut digits = *b"0000000000";
    let mut number = 0u64;
    let mut needles = 0u64;
    let mut left = len;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        for line in buf[..n].chunks_exact_mut(LINE) {
            for word in line.chunks_exact_mut(8) {
                // 8 letters 'a'..='p' per random word (each byte 0x61 + 0..15, no carry).
                let letters = (rng.next_u64() & 0x0F0F_0F0F_0F0F_0F0F) + 0x6161_6161_6161_6161;
                word.copy_from_slice(&letters.to_le_bytes());
            }
            line[..10].copy_from_slice(&digits);
            line[10] = b' ';
            line[LINE - 1] = b'\n';
            if number % 1000 == 7 {
                line[20..26].copy_from_slice(b"NEEDLE");
                needles += 1;
            }
            number += 1;
            for d in digits.iter_mut().rev() {
                if *d == b'9' {
                    *d = b'0';
                } else {
                    *d += 1;
                    break;
                }
            }
        }
        file.write_all(&buf[..n]).expect("write the text file");
        left -= n as u64;
    }
    file.sync_all().expect("sync the text file");
    needles
}

/// `grep -c PATTERN FILE` → the count it prints.
fn grep_count(pattern: &str, file: &Path) -> u64 {
    let CliOutput {
        status,
        stdout,
        stderr,
        ..
    } = run_command(
        Command::new("grep").args(["-c", pattern]).arg(file),
        BIG_COMMAND_TIMEOUT,
    );
    // grep exits 1 when nothing matches, with "0" printed.
    assert!(
        status.code() == Some(0) || status.code() == Some(1),
        "grep -c {pattern} {}: {status}; {stderr}",
        file.display()
    );
    String::from_utf8_lossy(&stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("grep printed {:?}: {e}", String::from_utf8_lossy(&stdout)))
}

/// `cat SRC > DEST`, returning whether it succeeded and how long it took.
fn cat_to(src: &Path, dest: &Path) -> (std::process::ExitStatus, Duration) {
    let out = File::create(dest).expect("create the output file");
    let started = Instant::now();
    let status = run_status(
        Command::new("cat")
            .arg(src)
            .stdout(Stdio::from(out))
            .stderr(Stdio::inherit()),
        BIG_COMMAND_TIMEOUT,
    );
    (status, started.elapsed())
}

/// Reads until `len` bytes or the end of the file, from `offset`.
fn pread_full(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut out[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.truncate(done);
    Ok(out)
}

/// Reads a whole file.
fn read_whole(path: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    data
}

/// Asserts that stderr is exactly one line starting with `govcfs:`.
fn assert_one_line_error(what: &str, status: std::process::ExitStatus, stderr: &str) {
    assert!(
        !status.success(),
        "{what}: expected a non-zero exit, got {status}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line on stderr, got {}: {stderr:?}",
        lines.len()
    );
    assert!(
        lines[0].starts_with("govcfs: "),
        "{what}: stderr does not start with \"govcfs: \": {stderr:?}"
    );
    println!("{what}: exit {status}, stderr: {}", lines[0]);
}

// ---------------------------------------------------------------------------------------
// 1. cat and grep of a 1 GiB text file
// ---------------------------------------------------------------------------------------

#[test]
fn cat_and_grep_of_a_1gib_text_file_match_the_source() {
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    let source = work.path().join("big.txt");
    let started = Instant::now();
    let needles = write_text_file(&source, GIB, 11);
    println!(
        "generated 1 GiB of text ({needles} NEEDLE lines) in {:.1?}",
        started.elapsed()
    );
    api_put_file(&server.api("default"), &source, "text/big.txt");

    let mount = MountGuard::start(&server.repo_url("default"), &[]);
    let through = mount.path().join("text/big.txt");
    assert_eq!(
        std::fs::metadata(&through)
            .expect("stat through the mount")
            .len(),
        GIB
    );

    let out = work.path().join("cat.out");
    let (status, elapsed) = cat_to(&through, &out);
    assert!(
        status.success(),
        "cat {} failed: {status}; mount log:\n{}",
        through.display(),
        mount.log()
    );
    println!(
        "cat of 1 GiB through the mount: {:.1?}, {:.0} MiB/s",
        elapsed,
        mib_per_s(GIB, elapsed)
    );
    assert_files_equal(&source, &out);
    std::fs::remove_file(&out).expect("remove the cat output");

    let on_source = grep_count("NEEDLE", &source);
    let on_mount = grep_count("NEEDLE", &through);
    println!("grep -c NEEDLE: source {on_source}, mount {on_mount}, generated {needles}");
    assert_eq!(on_source, needles);
    assert_eq!(on_mount, on_source);
}

// ---------------------------------------------------------------------------------------
// 2. 4 GiB file: tail fetches only the end; cat stays within the cache size
// ---------------------------------------------------------------------------------------

const HUGE: u64 = 4 * GIB;

/// A server holding a 4 GiB pseudo-random file at `huge.bin`, and its local source.
struct HugeFile {
    server: ServerProcess,
    source: std::path::PathBuf,
    _work: tempfile::TempDir,
}

fn huge_file() -> HugeFile {
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    let source = work.path().join("huge.bin");
    let started = Instant::now();
    common::write_fast_random_file(&source, HUGE, 22);
    println!("generated 4 GiB in {:.1?}", started.elapsed());
    api_put_file(&server.api("default"), &source, "huge.bin");
    HugeFile {
        server,
        source,
        _work: work,
    }
}

/// `cat MP/huge.bin > /dev/null`; returns the mount's peak RSS in KiB.
fn cat_huge_to_dev_null(huge: &HugeFile, mount: &MountGuard) -> u64 {
    let sent_before = blob_bytes_sent(&huge.server);
    let started = Instant::now();
    let status = run_status(
        Command::new("cat")
            .arg(mount.path().join("huge.bin"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
        BIG_COMMAND_TIMEOUT,
    );
    let elapsed = started.elapsed();
    assert!(
        status.success(),
        "cat failed: {status}; mount log:\n{}",
        mount.log()
    );
    let sent = blob_bytes_sent(&huge.server) - sent_before;
    let peak = mount.peak_rss_kib().expect("VmHWM of the mount process");
    println!(
        "cat of 4 GiB through the mount (--cache-size 256M): {:.1?}, {:.0} MiB/s; server sent {} MiB; mount peak RSS {} KiB ({:.0} MiB; target < 320 MiB)",
        elapsed,
        mib_per_s(HUGE, elapsed),
        sent / MIB,
        peak,
        peak as f64 / 1024.0
    );
    // The file really went through the mount (the cache holds at most 256 MiB of it).
    assert!(
        sent >= HUGE - 256 * MIB,
        "cat read only {sent} bytes from the server: it did not read the file"
    );
    peak
}

/// `tail -c 65536` of a 4 GiB file prints its last 64 KiB and fetches at most two 1 MiB
/// chunks from the server. Then a full `cat` keeps the mount's memory bounded: it does not
/// grow with the file (the exact target, cache + 64 MiB, is the test below).
#[test]
fn four_gib_file_tail_fetches_only_its_end_and_cat_memory_stays_bounded() {
    const TAIL: u64 = 64 * KIB;
    let huge = huge_file();
    let mount = MountGuard::start(&huge.server.repo_url("default"), &["--cache-size", "256M"]);
    let through = mount.path().join("huge.bin");
    assert_eq!(
        std::fs::metadata(&through)
            .expect("stat through the mount")
            .len(),
        HUGE
    );

    let sent_before = blob_bytes_sent(&huge.server);
    let CliOutput {
        status,
        stdout: tail,
        stderr,
        ..
    } = run_command(
        Command::new("tail")
            .args(["-c", &TAIL.to_string()])
            .arg(&through),
        Duration::from_secs(60),
    );
    let sent_after = blob_bytes_sent(&huge.server);
    assert!(status.success(), "tail failed: {status}; {stderr}");
    let mut expected = vec![0u8; TAIL as usize];
    File::open(&huge.source)
        .unwrap()
        .read_exact_at(&mut expected, HUGE - TAIL)
        .unwrap();
    assert_eq!(
        tail.len(),
        expected.len(),
        "tail printed {} bytes",
        tail.len()
    );
    assert!(
        tail == expected,
        "tail output differs from the source's last 64 KiB at byte {:?}",
        first_diff(&tail, &expected)
    );
    let tail_sent = sent_after - sent_before;
    println!(
        "tail -c {TAIL}: server sent {tail_sent} blob bytes ({:.2} chunks of 1 MiB)",
        tail_sent as f64 / MIB as f64
    );
    assert!(
        tail_sent <= 2 * MIB,
        "tail -c 64K made the server send {tail_sent} bytes (more than 2 chunks)"
    );

    let peak = cat_huge_to_dev_null(&huge, &mount);
    // Regression guard: far below the 4 GiB read (the cache is bounded and evicts).
    assert!(
        peak < (256 + 256) * 1024,
        "mount peak RSS {peak} KiB: memory grows with the file"
    );
}

/// The brief's target: with `--cache-size 256M`, the mount's peak RSS during a 4 GiB `cat`
/// stays under 256 MiB + 64 MiB.
#[test]
fn four_gib_file_cat_peak_rss_stays_under_cache_size_plus_64mib() {
    let huge = huge_file();
    let mount = MountGuard::start(&huge.server.repo_url("default"), &["--cache-size", "256M"]);
    let peak = cat_huge_to_dev_null(&huge, &mount);
    assert!(
        peak < (256 + 64) * 1024,
        "mount peak RSS {peak} KiB exceeds 256 MiB + 64 MiB"
    );
}

// ---------------------------------------------------------------------------------------
// 3. random preads
// ---------------------------------------------------------------------------------------

#[test]
fn random_preads_through_the_mount_match_the_source() {
    const SIZE: u64 = 64 * MIB + 12_345;
    const MAX_LEN: usize = 256 * 1024;
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(SIZE as usize, 33);
    put_bytes(
        work.path(),
        &server.repo_url("default"),
        "rand/file.bin",
        &data,
    );
    let mount = MountGuard::start(&server.repo_url("default"), &[]);
    let file = File::open(mount.path().join("rand/file.bin")).expect("open through the mount");
    assert_eq!(file.metadata().unwrap().len(), SIZE);
    // SEEK_DATA/SEEK_HOLE (cp asks them to skip holes): all data, then the end. The kernel's
    // fallback for a filesystem without lseek gives the same offsets, so the log check is what
    // shows the mount answers them itself.
    // SAFETY: lseek on an open descriptor.
    let seek = |offset: u64, whence| unsafe {
        libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence)
    };
    assert_eq!(seek(4096, libc::SEEK_DATA), 4096);
    assert_eq!(seek(4096, libc::SEEK_HOLE), SIZE as libc::off_t);
    assert_eq!(seek(SIZE, libc::SEEK_DATA), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    assert!(
        !mount.log().contains("Not Implemented"),
        "mount log:\n{}",
        mount.log()
    );

    let offsets = prop_oneof![
        6 => 0..SIZE,
        2 => (SIZE - 2 * MAX_LEN as u64)..(SIZE + MAX_LEN as u64),
        1 => Just(0u64),
        1 => Just(SIZE),
    ];
    let lengths = prop_oneof![6 => 0..=MAX_LEN, 2 => 1usize..=16, 1 => Just(MAX_LEN)];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let reads = std::cell::Cell::new(0u64);
    let bytes = std::cell::Cell::new(0u64);
    let started = Instant::now();
    runner
        .run(&(offsets, lengths), |(offset, len)| {
            // Drop the kernel's cached pages so that every pread reaches the mount.
            // SAFETY: posix_fadvise on an open descriptor; it only drops clean cached pages.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
            let got = pread_full(&file, offset, len)
                .map_err(|e| TestCaseError::fail(format!("pread({offset}, {len}): {e}")))?;
            let start = offset.min(SIZE) as usize;
            let end = (offset + len as u64).min(SIZE) as usize;
            let want = &data[start..end];
            reads.set(reads.get() + 1);
            bytes.set(bytes.get() + got.len() as u64);
            if got != want {
                return Err(TestCaseError::fail(format!(
                    "pread({offset}, {len}): got {} bytes, want {}, first difference at {:?}",
                    got.len(),
                    want.len(),
                    first_diff(&got, want)
                )));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}; mount log:\n{}", mount.log()));
    println!(
        "{} preads, {} bytes, in {:.1?}",
        reads.get(),
        bytes.get(),
        started.elapsed()
    );
    assert!(reads.get() >= 1000);
}

// ---------------------------------------------------------------------------------------
// 4. a directory of 10,000 files is one listing
// ---------------------------------------------------------------------------------------

#[test]
fn listing_a_directory_of_10000_files_is_one_tree_request() {
    const N: usize = 10_000;
    let server = ServerProcess::start();
    let api = server.api("default");
    common::block_on(async {
        let http = common::http_client();
        let done = common::upload_blob(&http, &api, b"small file\n", None).await;
        let hash = done["hash"].as_str().expect("hash").to_string();
        let changes: Vec<Value> = (1..=N)
            .map(|i| json!({"op": "put", "path": format!("many/f{i:05}"), "hash": hash}))
            .collect();
        let response = http
            .post(format!("{api}/commits"))
            .json(&json!({"message": "10,000 files", "changes": changes}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 201, "commit of {N} files: {body}");
    });

    // A long TTL so the root listing (needed to look up "many") stays cached during the check.
    let mount = MountGuard::start(&server.repo_url("default"), &["--attr-ttl", "60"]);
    let many = mount.path().join("many");
    assert!(std::fs::metadata(&many).expect("stat many").is_dir());

    let before = tree_requests(&server);
    let CliOutput {
        status,
        stdout,
        stderr,
        ..
    } = run_command(
        Command::new("ls").arg("-l").arg(&many),
        Duration::from_secs(120),
    );
    let after = tree_requests(&server);
    assert!(status.success(), "ls -l: {status}; {stderr}");
    let text = String::from_utf8_lossy(&stdout);
    let names: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    println!(
        "ls -l {}: {} file entries; tree requests {before} -> {after}",
        many.display(),
        names.len()
    );
    assert_eq!(names.len(), N, "ls -l listed {} files", names.len());
    let expected: Vec<String> = (1..=N).map(|i| format!("f{i:05}")).collect();
    let mut sorted: Vec<&str> = names.clone();
    sorted.sort_unstable();
    assert!(
        sorted.iter().zip(&expected).all(|(a, b)| *a == b.as_str()),
        "unexpected names in the listing"
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with('-'))
            .all(|l| l.split_whitespace().nth(4) == Some("11")),
        "every file has 11 bytes"
    );
    assert_eq!(
        after - before,
        1,
        "ls -l of 10,000 files made {} tree requests",
        after - before
    );

    // Within the TTL, listing again costs nothing.
    let CliOutput { status, stderr, .. } = run_command(
        Command::new("ls").arg("-l").arg(&many),
        Duration::from_secs(120),
    );
    assert!(status.success(), "second ls -l: {stderr}");
    assert_eq!(
        tree_requests(&server),
        after,
        "a second ls -l within the TTL listed the directory again"
    );
}

// ---------------------------------------------------------------------------------------
// 5. an open file keeps its version; a fresh open after the TTL sees the new one
// ---------------------------------------------------------------------------------------

#[test]
fn open_file_reads_its_pinned_version_and_a_fresh_open_reads_the_new_one() {
    const SIZE: usize = 64 << 20;
    const HALF: usize = SIZE / 2;
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    let repo = server.repo_url("default");
    let old = random_bytes(SIZE, 51);
    let new = random_bytes(SIZE, 52);
    put_bytes(work.path(), &repo, "pinned.bin", &old);
    let new_local = work.path().join("new.bin");
    std::fs::write(&new_local, &new).unwrap();

    let mount = MountGuard::start(&repo, &["--attr-ttl", "0.5"]);
    let path = mount.path().join("pinned.bin");
    {
        let mut file = File::open(&path).expect("open through the mount");
        let mut first = vec![0u8; HALF];
        file.read_exact(&mut first).expect("read the first half");
        assert!(
            first == old[..HALF],
            "first half differs from the old version at {:?}",
            first_diff(&first, &old[..HALF])
        );

        put(&new_local, &repo, "pinned.bin");
        // Let the mount's attributes expire, and make the kernel see the change.
        std::thread::sleep(Duration::from_millis(1200));
        let _ = std::fs::metadata(&path);

        let mut second = Vec::with_capacity(HALF);
        file.read_to_end(&mut second).expect("read the second half");
        assert_eq!(
            second.len(),
            HALF,
            "the second half has {} bytes",
            second.len()
        );
        assert!(
            second == old[HALF..],
            "the open file saw new bytes: second half differs from the OLD version at {:?}",
            first_diff(&second, &old[HALF..])
        );
        assert!(second != new[HALF..]);
    }

    // Closed; after the TTL a fresh open reads the new version, and nothing of the old one.
    std::thread::sleep(Duration::from_millis(1200));
    let fresh = read_whole(&path);
    assert_eq!(fresh.len(), SIZE);
    assert!(
        fresh == new,
        "a fresh open after the TTL differs from the NEW version at {:?}",
        first_diff(&fresh, &new)
    );
}

// ---------------------------------------------------------------------------------------
// 6. tail -F follows a file that grows on the server
// ---------------------------------------------------------------------------------------

/// A child process killed (by its PID) and reaped on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_child(&mut self.0);
    }
}

/// Commits `first`, runs `tail -F -s 0.2 MP/log.txt`, waits for the last line of `first`,
/// commits `first` + one new line, and waits (≤ 15 s) for tail to print the new line.
fn tail_follow_case(first: &[u8]) {
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    let repo = server.repo_url("default");
    put_bytes(work.path(), &repo, "log.txt", first);
    let mount = MountGuard::start(&repo, &["--attr-ttl", "0.5"]);
    let last_line = String::from_utf8_lossy(first)
        .lines()
        .last()
        .expect("a first line")
        .to_string();

    let mut tail = ChildGuard(
        Command::new("tail")
            .args(["-F", "-s", "0.2"])
            .arg(mount.path().join("log.txt"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tail -F"),
    );
    let stdout = tail.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |wanted: &str, timeout: Duration| -> Result<Duration, Vec<String>> {
        let started = Instant::now();
        let mut seen = Vec::new();
        while let Some(left) = timeout.checked_sub(started.elapsed()) {
            match rx.recv_timeout(left) {
                Ok(line) if line == wanted => return Ok(started.elapsed()),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        Err(seen)
    };
    wait_for(&last_line, Duration::from_secs(15))
        .unwrap_or_else(|seen| panic!("tail -F did not print {last_line:?}; saw {seen:?}"));

    let appended = "a line appended by another client";
    let mut grown = first.to_vec();
    grown.extend_from_slice(appended.as_bytes());
    grown.push(b'\n');
    put_bytes(work.path(), &repo, "log.txt", &grown);
    let outcome = wait_for(appended, Duration::from_secs(15));
    kill_child(&mut tail.0);
    match outcome {
        Ok(after) => println!("tail -F ({} bytes before the append) printed the appended line {after:.1?} after the commit", first.len()),
        Err(seen) => panic!(
            "tail -F did not print the appended line within 15 s ({} bytes before the append); saw {seen:?}; mount log:\n{}",
            first.len(),
            mount.log()
        ),
    }
}

/// The contract's case: a short log grows by one line.
#[test]
fn tail_follow_prints_a_line_appended_by_another_client() {
    tail_follow_case(b"first line of the log\n");
}

/// The same with a first version of exactly one page (4096 bytes): the kernel's read of the
/// new bytes then starts exactly at the pinned end, and following works. (Shows that the
/// failure above is the partial-page case.)
#[test]
fn tail_follow_of_a_page_aligned_log_prints_the_appended_line() {
    let mut first = Vec::with_capacity(4096);
    for i in 0..64 {
        first.extend_from_slice(format!("{:063}\n", i).as_bytes());
    }
    assert_eq!(first.len(), 4096);
    tail_follow_case(&first);
}

// ---------------------------------------------------------------------------------------
// 7. the server dies and comes back during a cat
// ---------------------------------------------------------------------------------------

#[test]
fn server_restart_during_cat_never_gives_wrong_bytes_with_success() {
    const SIZE: u64 = 512 * MIB;
    let work = tempfile::tempdir().expect("tempdir");
    let data_dir = work.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let mut server =
        RestartableServer::start(&data_dir, "127.0.0.1:0", &work.path().join("server.log"));
    let repo = server.repo_url("default");
    let source = work.path().join("big.bin");
    common::write_fast_random_file(&source, SIZE, 77);
    api_put_file(
        &format!("http://{}/api/v1/repos/default", server.addr),
        &source,
        "big",
    );

    let mount = MountGuard::start(&repo, &[]);
    let out = work.path().join("cat.out");
    let mut cat = ChildGuard(
        Command::new("cat")
            .arg(mount.path().join("big"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&out).unwrap()))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cat"),
    );
    let mut cat_err = cat.0.stderr.take().expect("piped stderr");
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = cat_err.read_to_string(&mut text);
        text
    });
    let written = || std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let started = wait_until(Duration::from_secs(30), || {
        written() > 0 || cat.0.try_wait().ok().flatten().is_some()
    });
    assert!(started, "cat wrote nothing within 30 s");
    let at_kill = written();
    server.kill();
    println!("server killed (SIGKILL) when cat had written {at_kill} of {SIZE} bytes");
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    println!("server restarted on {}", server.addr);

    let status = wait_child(&mut cat.0, Duration::from_secs(120)).unwrap_or_else(|| {
        panic!(
            "cat did not finish within 120 s; mount log:\n{}",
            mount.log()
        )
    });
    let stderr = err_thread.join().unwrap_or_default();
    let len = written();
    if status.success() {
        match first_difference(&source, &out).expect("compare") {
            None => println!("outcome: cat exited 0 with byte-identical output ({len} bytes)"),
            Some(at) => panic!("cat exited 0 but its output differs from the source at byte {at} ({len} bytes written); mount log:\n{}", mount.log()),
        }
    } else {
        println!(
            "outcome: cat failed ({status}) after {len} bytes: {}",
            stderr.trim()
        );
        assert!(
            stderr.contains("Input/output error") || stderr.contains("Transport endpoint"),
            "cat failed without EIO: {stderr}"
        );
    }
    if at_kill == SIZE {
        println!("note: cat had already finished when the server was killed");
    }
}

// ---------------------------------------------------------------------------------------
// 8. mount errors are one line on stderr
// ---------------------------------------------------------------------------------------

#[test]
fn mount_errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let work = tempfile::tempdir().expect("tempdir");
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let os = |s: &str| -> std::ffi::OsString { s.into() };

    // Nothing listens on the port.
    let url = format!("http://127.0.0.1:{}/default", free_port());
    let args = [os("mount"), os(&url), empty.clone().into(), os("-f")];
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (status, stderr) = mount_expecting_failure(&refs, &empty, Duration::from_secs(60));
    assert_one_line_error("no server", status, &stderr);

    // A repository that does not exist.
    let server = ServerProcess::start();
    let url = server.repo_url("no-such-repo");
    let args = [os("mount"), os(&url), empty.clone().into(), os("-f")];
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (status, stderr) = mount_expecting_failure(&refs, &empty, Duration::from_secs(60));
    assert_one_line_error("missing repository", status, &stderr);

    // A mountpoint that is not empty.
    let full = work.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("something"), b"x").unwrap();
    let url = server.repo_url("default");
    let args = [os("mount"), os(&url), full.clone().into(), os("-f")];
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (status, stderr) = mount_expecting_failure(&refs, &full, Duration::from_secs(60));
    assert_one_line_error("non-empty mountpoint", status, &stderr);

    // A mountpoint that does not exist.
    let missing = work.path().join("missing");
    let args = [os("mount"), os(&url), missing.clone().into(), os("-f")];
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (status, stderr) = mount_expecting_failure(&refs, &missing, Duration::from_secs(60));
    assert_one_line_error("missing mountpoint", status, &stderr);
}

// ---------------------------------------------------------------------------------------
// 9. the mount is read-only
// ---------------------------------------------------------------------------------------

#[test]
fn writes_on_the_read_only_mount_fail_with_erofs() {
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    put_bytes(
        work.path(),
        &server.repo_url("default"),
        "dir/existing.txt",
        b"existing\n",
    );
    // The brief's mount was read-only by default; since the write side landed, it needs
    // --read-only (CONTRACT §5: "A read-only mount answers EROFS").
    let mount = MountGuard::start(&server.repo_url("default"), &["--read-only"]);
    let mp = mount.path();
    let expect_erofs = |what: &str, result: std::io::Result<()>| match result {
        Ok(()) => panic!("{what} succeeded on a read-only mount"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}"),
    };
    expect_erofs(
        "create a file",
        File::create(mp.join("dir/new.txt")).map(drop),
    );
    expect_erofs(
        "create a file at the root",
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(mp.join("new"))
            .map(drop),
    );
    expect_erofs("mkdir", std::fs::create_dir(mp.join("newdir")));
    expect_erofs(
        "open an existing file for writing",
        std::fs::OpenOptions::new()
            .write(true)
            .open(mp.join("dir/existing.txt"))
            .map(drop),
    );
    expect_erofs(
        "append to an existing file",
        std::fs::OpenOptions::new()
            .append(true)
            .open(mp.join("dir/existing.txt"))
            .map(drop),
    );
    expect_erofs("unlink", std::fs::remove_file(mp.join("dir/existing.txt")));
    expect_erofs(
        "rename",
        std::fs::rename(mp.join("dir/existing.txt"), mp.join("dir/moved.txt")),
    );
    // Nothing changed.
    assert_eq!(read_whole(&mp.join("dir/existing.txt")), b"existing\n");
    assert_eq!(
        read_dir_bounded(&mp.join("dir"), Duration::from_secs(20))
            .unwrap()
            .unwrap(),
        vec!["existing.txt"]
    );
}

// ---------------------------------------------------------------------------------------
// 10. background (daemon) mounts, `govcfs unmount` and the mount.govcfs helper
// ---------------------------------------------------------------------------------------

/// PIDs of running `govcfs` processes whose command line names `mountpoint`.
fn daemon_pids(mountpoint: &Path) -> Vec<u32> {
    let wanted = mountpoint.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let is_ours = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == Path::new(GOVCFS));
            is_ours && cmdline.split(|b| *b == 0).any(|arg| arg == wanted)
        })
        .collect()
}

#[test]
fn daemon_mode_returns_once_mounted_and_govcfs_unmount_unmounts() {
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    put_bytes(
        work.path(),
        &server.repo_url("default"),
        "hello.txt",
        b"hello\n",
    );
    let daemon = DaemonMount::new();
    let url = server.repo_url("default");
    let started = Instant::now();
    let result = daemon.run(
        Path::new(GOVCFS),
        &[
            OsStr::new("mount"),
            OsStr::new(&url),
            daemon.path().as_os_str(),
        ],
    );
    println!(
        "govcfs mount (background) returned {} after {:.1?}",
        result.status,
        started.elapsed()
    );
    assert!(
        result.status.success(),
        "govcfs mount without -f failed: {}; logs:\n{}",
        result.stderr,
        daemon.logs()
    );
    match &result.first_read_dir {
        Some(Ok(names)) => assert_eq!(names, &vec!["hello.txt".to_string()]),
        other => panic!(
            "read_dir right after the mount returned: {other:?}; logs:\n{}",
            daemon.logs()
        ),
    }
    assert!(is_mounted(daemon.path()));
    assert_eq!(read_whole(&daemon.path().join("hello.txt")), b"hello\n");
    let pids = daemon_pids(daemon.path());
    assert_eq!(
        pids.len(),
        1,
        "expected one background mount process, found {pids:?}"
    );

    let CliOutput {
        status,
        stdout,
        stderr,
        ..
    } = run_command(
        govcfs_command().arg("unmount").arg(daemon.path()),
        Duration::from_secs(60),
    );
    assert!(
        status.success(),
        "govcfs unmount: {status}; {stderr} {}",
        String::from_utf8_lossy(&stdout)
    );
    assert!(
        wait_until(Duration::from_secs(20), || !is_mounted(daemon.path())),
        "still mounted after govcfs unmount"
    );
    let exited = wait_until(Duration::from_secs(20), || {
        daemon_pids(daemon.path()).is_empty()
    });
    if !exited {
        // It was started on our behalf: stop it before failing.
        for pid in daemon_pids(daemon.path()) {
            // SAFETY: kill(2) on the background mount process this test started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
    assert!(
        exited,
        "the background mount process did not exit after the unmount"
    );
    // Unmounting again is a one-line error.
    let CliOutput { status, stderr, .. } = run_command(
        govcfs_command().arg("unmount").arg(daemon.path()),
        Duration::from_secs(60),
    );
    assert_one_line_error(
        "unmount of a directory that is not mounted",
        status,
        &stderr,
    );
}

#[test]
fn fstab_helper_mount_govcfs_mounts_in_the_background() {
    let server = ServerProcess::start();
    let work = tempfile::tempdir().expect("tempdir");
    put_bytes(
        work.path(),
        &server.repo_url("default"),
        "hello.txt",
        b"hello\n",
    );
    let helper = work.path().join("mount.govcfs");
    std::os::unix::fs::symlink(GOVCFS, &helper).expect("symlink mount.govcfs");
    let daemon = DaemonMount::new();
    let url = server.repo_url("default");
    let result = daemon.run(
        &helper,
        &[
            OsStr::new(&url),
            daemon.path().as_os_str(),
            OsStr::new("-o"),
            OsStr::new("ro,cache_size=64M,_netdev"),
        ],
    );
    assert!(
        result.status.success(),
        "mount.govcfs URL MP -o ro,cache_size=64M,_netdev failed: {}; stderr: {}; logs:\n{}",
        result.status,
        result.stderr,
        daemon.logs()
    );
    match &result.first_read_dir {
        Some(Ok(names)) => assert_eq!(names, &vec!["hello.txt".to_string()]),
        other => panic!(
            "read_dir right after mount.govcfs returned: {other:?}; logs:\n{}",
            daemon.logs()
        ),
    }
    assert_eq!(read_whole(&daemon.path().join("hello.txt")), b"hello\n");
    let entries = mount_entries(daemon.path());
    println!("mount.govcfs mounted: {entries:?}");
    assert!(
        entries
            .iter()
            .any(|(_, fstype, source)| fstype.starts_with("fuse") && source == &url),
        "{entries:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 11. the embedded server
// ---------------------------------------------------------------------------------------

#[test]
fn mount_without_url_serves_an_empty_default_repository() {
    let xdg = tempfile::tempdir().expect("tempdir");
    let xdg_path = xdg.path().to_str().expect("UTF-8").to_string();
    let mount = MountGuard::start_with(MountOptions {
        url: None,
        args: &[],
        envs: &[("XDG_DATA_HOME", &xdg_path)],
    });
    let names = read_dir_bounded(mount.path(), Duration::from_secs(20))
        .expect("read_dir hung")
        .expect("read_dir");
    assert!(
        names.is_empty(),
        "the embedded default repository is not empty: {names:?}"
    );
    let entries = mount_entries(mount.path());
    println!("embedded mount: {entries:?}");
    assert!(
        entries
            .iter()
            .any(|(_, _, source)| source.starts_with("http://127.0.0.1:")
                && source.ends_with("/default")),
        "{entries:?}"
    );
    assert!(
        xdg.path().join("govcfs").is_dir(),
        "the embedded server did not use $XDG_DATA_HOME/govcfs"
    );
}
