//! Integration tests of the WRITE side of the FUSE mount (CONTRACT §1 `mount`/`recover`, §5).
//!
//! Every test runs the real `govcfs serve` binary on a loopback port and one or two real
//! `govcfs mount -f` processes on fresh temporary mountpoints, and drives the mount with
//! ordinary programs (`cp`, `dd`, `tar`, `sqlite3`, `mkdir`, `mv`, `rm`, `chmod`) or plain
//! syscalls. What lands on the server is checked through the tree/stat API (blob ids are the
//! SHA-256 of the Git blob encoding, so a matching id is matching content) and `govcfs get`.
//!
//! Every mount is undone by a guard (even when a test panics); every wait and loop is bounded
//! in count and time; syscalls that could block on a broken mount run on a helper thread with
//! a time limit. Timings and throughputs are printed, never asserted.
//!
//! The tests under "Bugs found along the way" are regression tests: each reproduced a defect
//! that has been fixed.

mod common;
mod mount_support;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{
    assert_files_equal, blob_id, blob_id_of_file, finish_child, first_diff, govcfs_command,
    http_request, mib_per_s, must_finish_within, random_bytes, server_hash, stat_entry, wait_until,
    CliOutput, ServerProcess, XorShift, GIB, KIB, MIB,
};
use mount_support::{MountGuard, RestartableServer};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use serde_json::Value;

/// The mount's upload chunk (src/fs/remote.rs `UPLOAD_CHUNK`): tests cross its boundaries.
const UPLOAD_CHUNK: u64 = 4 * MIB;

/// `--attr-ttl` of the mounts here, and a wait that is safely longer.
const ATTR_TTL: &str = "0.5";
const PAST_TTL: Duration = Duration::from_millis(700);

/// Time limit of one command or syscall that moves a large file.
const BIG_TIMEOUT: Duration = Duration::from_secs(600);
/// Time limit of one ordinary command or syscall through the mount.
const SMALL_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Keeps child processes from inheriting files this test process has open for writing.
///
/// A child starts with a copy of our descriptor table; at exec it closes the (close-on-exec)
/// descriptors, and every such close sends FUSE FLUSH, which the mount treats as close(2): it
/// commits the file as it is at that moment (see
/// `a_child_process_started_while_a_file_is_open_for_writing_commits_nothing_early`).
/// Tests run in parallel threads of one process, so: a thread holds [`writing`] (exclusive)
/// from open to close of a write descriptor, and every child is spawned under [`spawning`]
/// (shared; only for the spawn itself).
static GATE: RwLock<()> = RwLock::new(());

fn writing() -> RwLockWriteGuard<'static, ()> {
    GATE.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawning() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Mounts `repo_url` in the foreground with its own cache directory and a short attr TTL.
fn mount(repo_url: &str, cache_dir: &Path) -> MountGuard {
    let cache = cache_dir.to_str().expect("UTF-8 cache dir");
    let _gate = spawning();
    MountGuard::start(repo_url, &["--cache-dir", cache, "--attr-ttl", ATTR_TTL])
}

/// Unmounts (`fusermount3 -u`, a child process) and waits for the mount process to exit.
fn unmount(mnt: MountGuard) {
    let _gate = spawning();
    mnt.unmount();
}

/// A `govcfs serve` on a fresh data directory and an ephemeral loopback port.
fn start_server() -> ServerProcess {
    let _gate = spawning();
    ServerProcess::start()
}

/// Runs `command` (stdin from /dev/null, output captured) within `timeout`, with common's
/// runner; only the spawn itself is under [`spawning`].
fn run_child(command: &mut Command, timeout: Duration) -> CliOutput {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = {
        let _gate = spawning();
        command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"))
    };
    finish_child(child, &format!("{command:?}"), timeout)
}

/// `govcfs ARGS…` (no RUST_LOG, no proxy), within the big time limit.
fn cli(args: &[&str]) -> CliOutput {
    run_child(govcfs_command().args(args), BIG_TIMEOUT)
}

/// close(2) with its result (dropping a `File` ignores it; on the mount, close is the commit).
fn close_checked(file: File) -> std::io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: we own `fd` (taken out of the File), and close it exactly once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Creates (or truncates) `path` through the mount, writes `data` and closes, checking close.
fn write_through(path: &Path, data: &[u8]) {
    let _quiet = writing();
    write_unlocked(path, data);
}

/// [`write_through`] for a caller that already holds [`writing`].
fn write_unlocked(path: &Path, data: &[u8]) {
    let mut file = open_retrying(
        path,
        OpenOptions::new().write(true).create(true).truncate(true),
    )
    .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(data)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    close_checked(file).unwrap_or_else(|e| panic!("close {}: {e}", path.display()));
}

/// Opens `path` with `options`, retrying (≤ 3 s) while the mount answers EOPNOTSUPP because the
/// previous write handle of the same file, closed just before, is not released yet. That race
/// is a bug of its own, shown by `a_file_reopened_for_writing_right_after_close_opens_without_enotsup`.
fn open_retrying(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    let deadline = Instant::now() + Duration::from_secs(3);
    for _ in 0..300 {
        match options.open(path) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
    options.open(path)
}

/// Lets the kernel deliver the RELEASE of handles closed just before, so an outside program
/// (dd, sqlite3) that opens the same file for writing does not hit the EOPNOTSUPP race above.
fn let_releases_land() {
    std::thread::sleep(Duration::from_millis(300));
}

/// What one path holds, as the server's tree API or a directory walk describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    /// Blob id and Git mode (0o100644 or 0o100755).
    File(String, u32),
    /// Blob id of the target.
    Link(String),
}

fn file_node(content: &[u8]) -> Node {
    Node::File(blob_id(content), 0o100644)
}

fn exec_node(content: &[u8]) -> Node {
    Node::File(blob_id(content), 0o100755)
}

fn link_node(target: &str) -> Node {
    Node::Link(blob_id(target.as_bytes()))
}

/// Every path under `root` ("" for the repository root) on the server, via the tree API.
fn server_tree(addr: SocketAddr, root: &str) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_string()];
    for _ in 0..100_000 {
        let Some(dir) = todo.pop() else { return out };
        let response = http_request(
            addr,
            "GET",
            &format!("/api/v1/repos/default/tree/{dir}"),
            &[],
            b"",
        )
        .unwrap_or_else(|e| panic!("GET tree/{dir}: {e}"));
        assert_eq!(response.status, 200, "GET tree/{dir}: {}", response.text());
        let listing = response.json();
        for entry in listing["entries"].as_array().expect("entries") {
            let path = entry["path"].as_str().expect("path").to_string();
            let hash = entry["hash"].as_str().unwrap_or_default().to_string();
            let node = match entry["type"].as_str() {
                Some("directory") => {
                    todo.push(path.clone());
                    Node::Dir
                }
                Some("file") => Node::File(hash, entry["mode"].as_u64().expect("mode") as u32),
                Some("symlink") => Node::Link(hash),
                other => panic!("unexpected entry type {other:?} for {path}"),
            };
            out.insert(path, node);
        }
    }
    panic!("the server tree under {root:?} has more than 100000 directories")
}

/// Every path under `root` as the mount shows it (files are read to hash them).
fn mount_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    for _ in 0..100_000 {
        let Some(rel) = todo.pop() else { return out };
        for entry in std::fs::read_dir(root.join(&rel))
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", rel.display()))
        {
            let entry = entry.expect("dir entry");
            let rel_child = rel.join(entry.file_name());
            let full = root.join(&rel_child);
            let meta = std::fs::symlink_metadata(&full)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
            let name = rel_child.to_str().expect("UTF-8").to_string();
            let node = if meta.is_dir() {
                todo.push(rel_child);
                Node::Dir
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&full).expect("readlink");
                Node::Link(blob_id(target.as_os_str().as_bytes()))
            } else {
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o100755
                } else {
                    0o100644
                };
                Node::File(
                    blob_id(
                        &std::fs::read(&full)
                            .unwrap_or_else(|e| panic!("read {}: {e}", full.display())),
                    ),
                    mode,
                )
            };
            out.insert(name, node);
        }
    }
    panic!(
        "the mount under {} has more than 100000 directories",
        root.display()
    )
}

/// `govcfs get URL/PATH -o FILE`; returns the bytes.
fn get_bytes(repo_url: &str, path: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("get-{}", path.replace('/', "_")));
    cli(&[
        "get",
        &format!("{repo_url}/{path}"),
        "-o",
        out.to_str().expect("UTF-8"),
    ])
    .assert_success(&format!("govcfs get {path}"));
    let data = std::fs::read(&out).expect("read the downloaded file");
    let _ = std::fs::remove_file(&out);
    data
}

/// The recovery copies (not the notes) in `<cache>/recovery/`, sorted.
fn recovery_copies(cache_dir: &Path) -> Vec<PathBuf> {
    let mut copies: Vec<PathBuf> = std::fs::read_dir(cache_dir.join("recovery"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_none_or(|e| e != "json"))
                .collect()
        })
        .unwrap_or_default();
    copies.sort();
    copies
}

/// The note `<copy>.json` next to a recovery copy.
fn recovery_note(copy: &Path) -> Value {
    let mut name = copy.as_os_str().to_owned();
    name.push(".json");
    let text =
        std::fs::read(&name).unwrap_or_else(|e| panic!("read the note of {}: {e}", copy.display()));
    serde_json::from_slice(&text).expect("the note is JSON")
}

/// Runs a program within `timeout`; panics with its output unless it exits 0.
fn run_ok(command: &mut Command, timeout: Duration) -> Vec<u8> {
    let what = format!("{command:?}");
    let out = run_child(command, timeout);
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        out.stderr
    );
    out.stdout
}

// ---------------------------------------------------------------------------------------
// 1. cp of a 2 GiB file
// ---------------------------------------------------------------------------------------

#[test]
fn cp_of_a_2gib_file_round_trips_and_the_mount_stays_under_128mib() {
    const LEN: u64 = 2 * GIB;
    let work = tempfile::tempdir().expect("work dir");
    let source = work.path().join("source.bin");
    let started = Instant::now();
    common::write_fast_random_file(&source, LEN, 2024);
    println!("generated {LEN} bytes in {:.1?}", started.elapsed());

    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let mnt = mount(&server.repo_url("default"), cache.path());
    let rss_before = mnt.peak_rss_kib().unwrap_or(0);

    let started = Instant::now();
    let status = run_child(
        Command::new("cp")
            .arg(&source)
            .arg(mnt.path().join("big.bin")),
        BIG_TIMEOUT,
    )
    .status;
    let cp_time = started.elapsed();
    assert!(
        status.success(),
        "cp into the mount failed: {status}; mount log:\n{}",
        mnt.log()
    );
    let peak_kib = mnt.peak_rss_kib().expect("VmHWM of the mount process");
    println!(
        "cp of {LEN} bytes into the mount: {cp_time:.1?}, {:.1} MiB/s; mount peak RSS {} KiB ({:.1} MiB; {} KiB before the copy)",
        mib_per_s(LEN, cp_time),
        peak_kib,
        peak_kib as f64 / 1024.0,
        rss_before
    );

    // The server has exactly the source.
    let entry = stat_entry(server.addr, "big.bin").expect("big.bin on the server after cp");
    assert_eq!(entry["size"].as_u64(), Some(LEN));
    let got = work.path().join("got.bin");
    let started = Instant::now();
    cli(&[
        "get",
        &format!("{}/big.bin", server.repo_url("default")),
        "-o",
        got.to_str().unwrap(),
    ])
    .assert_success("govcfs get big.bin");
    println!(
        "govcfs get of {LEN} bytes: {:.1?}, {:.1} MiB/s",
        started.elapsed(),
        mib_per_s(LEN, started.elapsed())
    );
    assert_files_equal(&source, &got);
    std::fs::remove_file(&got).expect("remove the downloaded copy");

    // For comparison: the CLI's own chunked upload of the same file.
    let started = Instant::now();
    cli(&[
        "put",
        source.to_str().unwrap(),
        &format!("{}/put.bin", server.repo_url("default")),
    ])
    .assert_success("govcfs put");
    let put_time = started.elapsed();
    println!(
        "govcfs put of {LEN} bytes: {put_time:.1?}, {:.1} MiB/s (cp through the mount: {:.1} MiB/s)",
        mib_per_s(LEN, put_time),
        mib_per_s(LEN, cp_time)
    );
    assert_eq!(
        server_hash(server.addr, "put.bin"),
        entry["hash"].as_str().map(str::to_string),
        "put and cp stored different blobs"
    );

    assert!(
        peak_kib < 128 * 1024,
        "the mount process peaked at {peak_kib} KiB during a 2 GiB cp (limit 128 MiB)"
    );
    unmount(mnt);
}

// ---------------------------------------------------------------------------------------
// 2. Atomic visibility
// ---------------------------------------------------------------------------------------

/// Writes `total` bytes of `data` to `path` through the mount in 1 MiB pieces with sleeps, on a
/// thread, while the caller polls the server. `closing` is set just before close(2) and
/// `closed` once it returned (successfully).
struct SlowWriter {
    closing: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<std::io::Result<()>>,
}

fn slow_writer(path: PathBuf, data: Arc<Vec<u8>>, truncate_existing: bool) -> SlowWriter {
    let closing = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));
    let (c1, c2) = (closing.clone(), closed.clone());
    let handle = std::thread::spawn(move || {
        let _quiet = writing();
        let mut options = OpenOptions::new();
        options.write(true).truncate(true);
        if !truncate_existing {
            options.create_new(true);
        }
        let mut file = open_retrying(&path, &options)?;
        for piece in data.chunks(MIB as usize) {
            file.write_all(piece)?;
            std::thread::sleep(Duration::from_millis(15));
        }
        c1.store(true, Ordering::SeqCst);
        close_checked(file)?;
        c2.store(true, Ordering::SeqCst);
        Ok(())
    });
    SlowWriter {
        closing,
        closed,
        handle,
    }
}

/// Polls `stat(path)` while `writer` runs. Before close(2) started, the server must answer
/// `before` (a blob id, or `None` for 404); once close returned, `after`; in between either.
/// Never anything else (a partial or truncated version). Returns (polls while writing, total).
fn poll_until_closed(
    addr: SocketAddr,
    path: &str,
    writer: &SlowWriter,
    before: Option<&str>,
    after: &str,
) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut while_writing, mut polls) = (0u64, 0u64);
    for _ in 0..1_000_000 {
        let closed_before = writer.closed.load(Ordering::SeqCst);
        let seen = stat_entry(addr, path);
        let closing_after = writer.closing.load(Ordering::SeqCst);
        polls += 1;
        let hash = seen
            .as_ref()
            .map(|e| e["hash"].as_str().expect("hash").to_string());
        if let Some(e) = &seen {
            if hash.as_deref() == Some(after) {
                assert!(
                    closing_after,
                    "{path}: the new version was visible before close(2) was called: {e}"
                );
            } else {
                assert_eq!(hash.as_deref(), before, "{path}: the server showed a version that is neither the old nor the new one: {e}");
            }
        } else {
            assert_eq!(
                before, None,
                "{path}: the file vanished from the server while it was being replaced"
            );
        }
        if !closing_after {
            while_writing += 1;
        }
        if closed_before {
            assert_eq!(
                hash.as_deref(),
                Some(after),
                "{path}: close(2) returned but the server does not have the new version"
            );
            return (while_writing, polls);
        }
        if writer.handle.is_finished() && !writer.closed.load(Ordering::SeqCst) {
            break; // the writer failed: reported by the caller
        }
        assert!(
            Instant::now() < deadline,
            "{path}: the writer did not finish within 300 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (while_writing, polls)
}

#[test]
fn a_file_being_written_is_invisible_to_other_clients_until_close_returns() {
    const LEN: usize = 64 << 20;
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let mnt = mount(&server.repo_url("default"), cache.path());

    // A new file: 404 until close, then the full file.
    let data = Arc::new(random_bytes(LEN, 7));
    let want = blob_id(&data);
    let started = Instant::now();
    let writer = slow_writer(mnt.path().join("fresh.bin"), data.clone(), false);
    let (while_writing, polls) = poll_until_closed(server.addr, "fresh.bin", &writer, None, &want);
    let result = writer.handle.join().expect("writer thread");
    result.unwrap_or_else(|e| {
        panic!(
            "writing fresh.bin through the mount failed: {e}; log:\n{}",
            mnt.log()
        )
    });
    println!(
        "new file: {polls} polls ({while_writing} before close), written and committed in {:.1?}",
        started.elapsed()
    );
    assert!(
        while_writing > 0,
        "the poller never ran while the file was being written"
    );
    assert_eq!(
        server_hash(server.addr, "fresh.bin").as_deref(),
        Some(want.as_str())
    );
    assert!(
        get_bytes(&server.repo_url("default"), "fresh.bin", work.path()) == *data,
        "govcfs get of fresh.bin differs"
    );

    // An existing file replaced with O_TRUNC: the old version until close, then the new one.
    let old = random_bytes(3 * MIB as usize + 17, 8);
    write_through(&mnt.path().join("replaced.bin"), &old);
    let old_id = blob_id(&old);
    assert_eq!(
        server_hash(server.addr, "replaced.bin").as_deref(),
        Some(old_id.as_str())
    );
    let new = Arc::new(random_bytes(LEN, 9));
    let want = blob_id(&new);
    let writer = slow_writer(mnt.path().join("replaced.bin"), new.clone(), true);
    let (while_writing, polls) =
        poll_until_closed(server.addr, "replaced.bin", &writer, Some(&old_id), &want);
    let result = writer.handle.join().expect("writer thread");
    result.unwrap_or_else(|e| {
        panic!(
            "replacing replaced.bin through the mount failed: {e}; log:\n{}",
            mnt.log()
        )
    });
    println!("O_TRUNC replacement: {polls} polls ({while_writing} before close)");
    assert!(
        while_writing > 0,
        "the poller never ran while the file was being replaced"
    );
    assert!(
        get_bytes(&server.repo_url("default"), "replaced.bin", work.path()) == *new,
        "govcfs get of replaced.bin differs"
    );
    unmount(mnt);
}

// ---------------------------------------------------------------------------------------
// 3. Random write sequences against an in-memory model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum RwOp {
    /// pwrite of `len` random bytes (from `seed`) at `offset` (possibly beyond EOF).
    Write { offset: u64, len: usize, seed: u64 },
    /// ftruncate up or down.
    SetLen(u64),
    /// pread through the same O_RDWR handle, compared with the model.
    Read { offset: u64, len: usize },
}

#[derive(Debug, Clone)]
struct WriteCase {
    base_len: u64,
    base_seed: u64,
    ops: Vec<RwOp>,
    /// O_APPEND writes after the O_RDWR handle is closed: (len, seed).
    appends: Vec<(usize, u64)>,
}

/// Offsets anywhere in the first 12 MiB, often within 70 KB of an upload chunk boundary.
fn offset_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0u64..12 * MIB,
        2 => (0u64..=3, 0u64..140_000).prop_map(|(k, d)| (k * UPLOAD_CHUNK).saturating_sub(70_000) + d),
    ]
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1usize..64 * 1024,
        2 => 64 * 1024usize..1_500_000,
        1 => (UPLOAD_CHUNK as usize - 5000)..(UPLOAD_CHUNK as usize + 5000),
    ]
}

fn case_strategy() -> impl Strategy<Value = WriteCase> {
    let base_len = prop_oneof![
        1 => Just(0u64),
        1 => 1u64..200_000,
        3 => 3 * MIB..9 * MIB,
        1 => Just(UPLOAD_CHUNK),
        1 => Just(2 * UPLOAD_CHUNK),
    ];
    let op = prop_oneof![
        4 => (offset_strategy(), len_strategy(), any::<u64>()).prop_map(|(offset, len, seed)| RwOp::Write { offset, len, seed }),
        2 => offset_strategy().prop_map(RwOp::SetLen),
        1 => (offset_strategy(), 1usize..300_000).prop_map(|(offset, len)| RwOp::Read { offset, len }),
    ];
    let appends = proptest::collection::vec((1usize..300_000, any::<u64>()), 0..3);
    (
        base_len,
        any::<u64>(),
        proptest::collection::vec(op, 1..6),
        appends,
    )
        .prop_map(|(base_len, base_seed, ops, appends)| WriteCase {
            base_len,
            base_seed,
            ops,
            appends,
        })
}

/// Runs one case on `name` through the mount; returns the model (the expected content).
fn run_write_case(mnt: &Path, name: &str, case: &WriteCase) -> Result<Vec<u8>, TestCaseError> {
    let path = mnt.join(name);
    let mut model = random_bytes(case.base_len as usize, case.base_seed);
    write_through(&path, &model);

    let _quiet = writing();
    let file = open_retrying(&path, OpenOptions::new().read(true).write(true))
        .map_err(|e| TestCaseError::fail(format!("open O_RDWR {name}: {e}")))?;
    for op in &case.ops {
        match *op {
            RwOp::Write { offset, len, seed } => {
                let data = random_bytes(len, seed);
                file.write_all_at(&data, offset)
                    .map_err(|e| TestCaseError::fail(format!("pwrite {len} at {offset}: {e}")))?;
                let end = offset as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
            }
            RwOp::SetLen(len) => {
                file.set_len(len)
                    .map_err(|e| TestCaseError::fail(format!("ftruncate to {len}: {e}")))?;
                model.resize(len as usize, 0);
            }
            RwOp::Read { offset, len } => {
                let mut buf = vec![0u8; len];
                let mut done = 0;
                for _ in 0..10_000 {
                    match file.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) => {
                            return Err(TestCaseError::fail(format!(
                                "pread {len} at {offset}: {e}"
                            )))
                        }
                    }
                    if done == len {
                        break;
                    }
                }
                let start = (offset as usize).min(model.len());
                let end = (offset as usize + len).min(model.len());
                prop_assert!(
                    buf[..done] == model[start..end],
                    "pread {len} at {offset} through the O_RDWR handle: {done} bytes, first difference at {:?} (model has {} bytes there)",
                    first_diff(&buf[..done], &model[start..end]),
                    end - start
                );
            }
        }
    }
    close_checked(file).map_err(|e| TestCaseError::fail(format!("close after O_RDWR ops: {e}")))?;

    if !case.appends.is_empty() {
        let mut file = open_retrying(&path, OpenOptions::new().append(true))
            .map_err(|e| TestCaseError::fail(format!("open O_APPEND {name}: {e}")))?;
        for &(len, seed) in &case.appends {
            let data = random_bytes(len, seed);
            file.write_all(&data)
                .map_err(|e| TestCaseError::fail(format!("append {len}: {e}")))?;
            model.extend_from_slice(&data);
        }
        close_checked(file)
            .map_err(|e| TestCaseError::fail(format!("close after appends: {e}")))?;
    }
    Ok(model)
}

#[test]
fn random_pwrite_truncate_append_sequences_match_a_model_on_the_server_and_after_remount() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let repo_url = server.repo_url("default");
    let mnt = mount(&repo_url, cache.path());
    std::fs::create_dir(mnt.path().join("prop")).expect("mkdir prop");

    let config = ProptestConfig {
        cases: 16,
        max_shrink_iters: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let counter = AtomicUsize::new(0);
    let written: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let addr = server.addr;
    let mount_path = mnt.path().to_path_buf();
    let started = Instant::now();
    let result = runner.run(&case_strategy(), |case| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("prop/case-{n:03}.bin");
        let model = run_write_case(&mount_path, &name, &case)?;
        let want = blob_id(&model);
        // The server has exactly the model...
        let entry = stat_entry(addr, &name);
        prop_assert!(entry.is_some(), "{name} missing on the server");
        let entry = entry.unwrap();
        prop_assert_eq!(
            entry["size"].as_u64(),
            Some(model.len() as u64),
            "size of {} on the server",
            name
        );
        let got = get_bytes(&repo_url, &name, work.path());
        prop_assert!(
            got == model,
            "govcfs get {}: {} bytes, model {}, first difference at {:?}",
            name,
            got.len(),
            model.len(),
            first_diff(&got, &model)
        );
        prop_assert_eq!(entry["hash"].as_str(), Some(want.as_str()));
        // ...and so does the mount that wrote it (read-your-writes, no TTL wait needed).
        let through = std::fs::read(mount_path.join(&name))
            .map_err(|e| TestCaseError::fail(format!("read {name}: {e}")))?;
        prop_assert!(
            through == model,
            "read {} through the mount: {} bytes, model {}, first difference at {:?}",
            name,
            through.len(),
            model.len(),
            first_diff(&through, &model)
        );
        written.lock().unwrap().push((name, want));
        Ok(())
    });
    println!(
        "{} cases in {:.1?}",
        counter.load(Ordering::SeqCst),
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}\nmount log:\n{}", mnt.log());
    }

    // A fresh mount (new process, empty caches) reads every file back as the model.
    unmount(mnt);
    let mnt = mount(&repo_url, cache.path());
    for (name, want) in written.lock().unwrap().iter() {
        let data = std::fs::read(mnt.path().join(name))
            .unwrap_or_else(|e| panic!("read {name} after remount: {e}"));
        assert_eq!(&blob_id(&data), want, "{name} after remount");
    }
    unmount(mnt);
}

#[test]
fn dd_conv_notrunc_overwrites_a_range_across_a_chunk_boundary_in_place() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let repo_url = server.repo_url("default");
    let mnt = mount(&repo_url, cache.path());
    let target = mnt.path().join("disk.img");

    let mut model = random_bytes((9 * MIB + 123) as usize, 31);
    write_through(&target, &model);
    let_releases_land();

    // 300 KiB from 100 KiB before the first 4 MiB chunk boundary.
    let patch = random_bytes(300 * KIB as usize, 32);
    let patch_path = work.path().join("patch.bin");
    std::fs::write(&patch_path, &patch).expect("write the patch");
    let seek_kib = (UPLOAD_CHUNK - 100 * KIB) / KIB;
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", patch_path.display()))
            .arg(format!("of={}", target.display()))
            .args([
                "bs=1024",
                &format!("seek={seek_kib}"),
                "conv=notrunc",
                "status=none",
            ]),
        SMALL_TIMEOUT,
    );
    let at = (seek_kib * KIB) as usize;
    model[at..at + patch.len()].copy_from_slice(&patch);
    assert_eq!(
        server_hash(server.addr, "disk.img"),
        Some(blob_id(&model)),
        "after dd across the chunk boundary"
    );
    let_releases_land();

    // A second dd past the end: the gap reads as zeros.
    let seek_blocks = (10 * MIB) / 4096;
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", patch_path.display()))
            .arg(format!("of={}", target.display()))
            .args([
                "bs=4096",
                &format!("seek={seek_blocks}"),
                "conv=notrunc",
                "status=none",
            ]),
        SMALL_TIMEOUT,
    );
    let at = (seek_blocks * 4096) as usize;
    model.resize(at, 0);
    model.extend_from_slice(&patch);

    let got = get_bytes(&repo_url, "disk.img", work.path());
    assert!(
        got == model,
        "govcfs get after dd: {} bytes, model {}, first difference at {:?}",
        got.len(),
        model.len(),
        first_diff(&got, &model)
    );
    std::thread::sleep(PAST_TTL);
    let through = std::fs::read(&target).expect("read through the mount");
    assert!(
        through == model,
        "read through the mount after dd: first difference at {:?}",
        first_diff(&through, &model)
    );
    unmount(mnt);
}

#[test]
fn appending_to_a_big_file_sends_only_the_new_bytes() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let repo_url = server.repo_url("default");
    // Not a multiple of the chunk: the base's last, partial chunk must be read back once.
    let mut model = random_bytes((64 * MIB + 1000) as usize, 41);
    let local = work.path().join("big.log");
    std::fs::write(&local, &model).expect("write the local file");
    cli(&[
        "put",
        local.to_str().expect("UTF-8"),
        &format!("{repo_url}/big.log"),
    ])
    .assert_success("govcfs put");
    let mnt = mount(&repo_url, cache.path());

    let sent_before = server.metric("govcfs_blob_bytes_sent_total").unwrap_or(0.0);
    let received_before = server
        .metric("govcfs_blob_bytes_received_total")
        .unwrap_or(0.0);
    let started = Instant::now();
    let target = mnt.path().join("big.log");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo 'one more line' >> '{}'", target.display())),
        SMALL_TIMEOUT,
    );
    let elapsed = started.elapsed();
    model.extend_from_slice(b"one more line\n");
    let sent = server.metric("govcfs_blob_bytes_sent_total").unwrap_or(0.0) - sent_before;
    let received = server
        .metric("govcfs_blob_bytes_received_total")
        .unwrap_or(0.0)
        - received_before;
    println!(
        "append to a 64 MiB file: {elapsed:?}, server sent {sent} blob bytes, received {received}"
    );
    assert_eq!(
        server_hash(server.addr, "big.log"),
        Some(blob_id(&model)),
        "the appended file on the server"
    );
    assert!(
        sent <= UPLOAD_CHUNK as f64,
        "the append read {sent} bytes back from the server (at most the last chunk expected)"
    );
    assert!(received < MIB as f64, "the append uploaded {received} bytes (the unchanged chunks should be copied on the server)");
    let got = get_bytes(&repo_url, "big.log", work.path());
    assert!(
        got == model,
        "govcfs get after the append: first difference at {:?}",
        first_diff(&got, &model)
    );
    unmount(mnt);
}

/// The mount records its own commits, and recognises their change events: files written one
/// after another into a directory do not make it list that directory again for each (with
/// a TTL long enough that expiry plays no part).
#[test]
fn small_files_written_or_deleted_one_after_another_cost_one_request_each_and_no_relisting() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let repo_url = server.repo_url("default");
    let mnt = {
        let cache = cache.path().to_str().expect("UTF-8 cache dir");
        let _gate = spawning();
        MountGuard::start(&repo_url, &["--cache-dir", cache, "--attr-ttl", "600"])
    };
    std::fs::create_dir(mnt.path().join("d")).expect("mkdir d");
    let before = server.requests_on("/api/v1/repos/{repo}/tree");
    let all_before = server.requests_on("");
    for i in 0..40 {
        write_through(
            &mnt.path().join(format!("d/f{i}")),
            format!("file {i}").as_bytes(),
        );
    }
    let listings = server.requests_on("/api/v1/repos/{repo}/tree") - before;
    // Every route, the metrics pages read here included.
    let requests = server.requests_on("") - all_before;
    let puts = server.requests_on("/{repo}/{*path}");
    let names = std::fs::read_dir(mnt.path().join("d"))
        .expect("list d")
        .count();
    assert_eq!(names, 40, "files listed through the mount");
    for i in [0, 39] {
        assert!(
            stat_entry(server.addr, &format!("d/f{i}")).is_some(),
            "d/f{i} on the server"
        );
    }
    assert!(
        listings <= 5.0,
        "{listings} listings of d for 40 files written"
    );
    assert_eq!(puts, 40.0, "one file PUT per small file");
    assert!(
        requests <= 40.0 + listings + 3.0,
        "{requests} requests for 40 small files"
    );
    // Deleting them one by one (`rm -r`) does not list the directory again either.
    let before = server.requests_on("/api/v1/repos/{repo}/tree");
    for i in 0..40 {
        std::fs::remove_file(mnt.path().join(format!("d/f{i}"))).expect("rm");
    }
    let listings = server.requests_on("/api/v1/repos/{repo}/tree") - before;
    assert!(
        listings <= 5.0,
        "{listings} listings of d for 40 files deleted"
    );
    assert!(
        stat_entry(server.addr, "d/f7").is_none(),
        "d/f7 deleted on the server"
    );
    unmount(mnt);
}

/// `cp` of a file the repository already holds, to a new path and over the existing one
/// (`O_TRUNC`): the mount names the chunks instead of sending them.
#[test]
fn cp_of_a_file_the_repository_holds_sends_no_chunk_bytes() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let repo_url = server.repo_url("default");
    let content = random_bytes((6 * MIB + 1000) as usize, 43);
    let local = work.path().join("data.bin");
    std::fs::write(&local, &content).expect("write the local file");
    cli(&[
        "put",
        local.to_str().expect("UTF-8"),
        &format!("{repo_url}/data.bin"),
    ])
    .assert_success("govcfs put");
    let mnt = mount(&repo_url, cache.path());
    for name in ["copy.bin", "data.bin"] {
        let received_before = server
            .metric("govcfs_blob_bytes_received_total")
            .unwrap_or(0.0);
        run_ok(
            Command::new("cp").arg(&local).arg(mnt.path().join(name)),
            SMALL_TIMEOUT,
        );
        let received = server
            .metric("govcfs_blob_bytes_received_total")
            .unwrap_or(0.0)
            - received_before;
        assert_eq!(
            server_hash(server.addr, name),
            Some(blob_id(&content)),
            "{name} on the server"
        );
        assert_eq!(received, 0.0, "cp to {name} sent {received} chunk bytes");
    }
    unmount(mnt);
}

// ---------------------------------------------------------------------------------------
// 4. SQLite on the mount
// ---------------------------------------------------------------------------------------

fn have_sqlite3() -> bool {
    Command::new("sqlite3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Ten transactions of 100 rows each (ids 1..=1000).
fn insert_1000_rows_sql() -> String {
    let mut sql = String::new();
    for t in 0..10 {
        sql.push_str("BEGIN;");
        sql.push_str(&format!(
            "INSERT INTO t(id, v) WITH RECURSIVE c(x) AS (SELECT {} UNION ALL SELECT x + 1 FROM c WHERE x < {}) \
             SELECT x, printf('row-%d-%s', x, hex(randomblob(40))) FROM c;",
            t * 100 + 1,
            t * 100 + 100
        ));
        sql.push_str("COMMIT;");
    }
    sql
}

/// `sqlite3 DB SQL`; panics with its stderr (and the mount's log, if given) unless it exits 0.
fn sqlite(db: &Path, sql: &str, mnt: Option<&MountGuard>) -> String {
    let out = run_child(Command::new("sqlite3").arg(db).arg(sql), SMALL_TIMEOUT);
    assert!(
        out.status.success(),
        "sqlite3 {} failed ({}): {}\nSQL: {}\nmount log:\n{}",
        db.display(),
        out.status,
        out.stderr,
        &sql[..sql.len().min(200)],
        mnt.map(MountGuard::log).unwrap_or_default()
    );
    out.stdout_text().trim().to_string()
}

#[test]
fn sqlite_database_written_in_transactions_reads_back_after_remount() {
    if !have_sqlite3() {
        println!("sqlite3 is not installed: skipping the SQLite test");
        return;
    }
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let repo_url = server.repo_url("default");
    let mnt = mount(&repo_url, cache.path());
    std::fs::create_dir(mnt.path().join("db")).expect("mkdir db");
    let db = mnt.path().join("db/test.sqlite");

    // The database file is committed (empty) before sqlite3 opens it: sqlite3 creating it
    // fails intermittently (ENOENT on reopen, or "attempt to write a readonly database"), see
    // `a_new_file_keeps_its_inode_when_its_directory_is_relisted_before_its_first_commit`.
    write_through(&db, b"");
    let_releases_land();
    std::thread::sleep(PAST_TTL);
    sqlite(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        Some(&mnt),
    );
    let_releases_land();
    let started = Instant::now();
    sqlite(&db, &insert_1000_rows_sql(), Some(&mnt));
    println!(
        "1000 rows in 10 transactions through the mount: {:.1?}",
        started.elapsed()
    );
    assert_eq!(
        sqlite(&db, "SELECT count(*), sum(id) FROM t;", Some(&mnt)),
        "1000|500500"
    );
    let_releases_land();
    unmount(mnt);

    // The server has the database (and no leftover journal).
    let tree = server_tree(server.addr, "db");
    assert_eq!(
        tree.keys().collect::<Vec<_>>(),
        vec!["db/test.sqlite"],
        "db/ on the server: {tree:?}"
    );
    let local = work.path().join("copy.sqlite");
    std::fs::write(&local, get_bytes(&repo_url, "db/test.sqlite", work.path()))
        .expect("write the local copy");
    assert_eq!(sqlite(&local, "PRAGMA integrity_check;", None), "ok");
    assert_eq!(
        sqlite(&local, "SELECT count(*), sum(id) FROM t;", None),
        "1000|500500"
    );

    // A fresh mount reads it back.
    let mnt = mount(&repo_url, cache.path());
    let db = mnt.path().join("db/test.sqlite");
    assert_eq!(
        sqlite(
            &db,
            "SELECT count(*), sum(id), count(DISTINCT v) FROM t;",
            Some(&mnt)
        ),
        "1000|500500|1000"
    );
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;", Some(&mnt)), "ok");
    unmount(mnt);
}

#[test]
fn a_new_file_keeps_its_inode_when_its_directory_is_relisted_before_its_first_commit() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    // A long TTL: the kernel keeps using the dentry (and inode) it got at create.
    let mnt = {
        let _gate = spawning();
        MountGuard::start(
            &server.repo_url("default"),
            &[
                "--cache-dir",
                cache.path().to_str().unwrap(),
                "--attr-ttl",
                "5",
            ],
        )
    };
    std::fs::create_dir(mnt.path().join("dir")).expect("mkdir dir");
    let mut problems = Vec::new();

    // 1. Re-listed by a lookup: after close, open(path) goes to the old inode: ENOENT.
    let path = mnt.path().join("dir/first.bin");
    {
        let _quiet = writing();
        let mut file = File::create(&path).expect("create dir/first.bin");
        file.write_all(b"first").expect("write");
        // Another commit in the directory: its event makes the mount list dir/ again.
        write_unlocked(&mnt.path().join("dir/other-1.txt"), b"other");
        std::thread::sleep(Duration::from_millis(500));
        assert!(std::fs::metadata(mnt.path().join("dir/absent")).is_err());
        close_checked(file).expect("close dir/first.bin");
    }
    let_releases_land();
    if let Err(e) = File::open(&path) {
        problems.push(format!(
            "open(dir/first.bin) right after it was written and closed: {e}"
        ));
    }

    // 2. Re-listed by readdir while open: the path names another inode than the descriptor.
    let path = mnt.path().join("dir/second.bin");
    let _quiet = writing();
    let mut file = File::create(&path).expect("create dir/second.bin");
    file.write_all(b"second").expect("write");
    let ino_at_open = file.metadata().expect("fstat").ino();
    write_unlocked(&mnt.path().join("dir/other-2.txt"), b"other");
    std::thread::sleep(Duration::from_millis(500));
    let names: Vec<_> = std::fs::read_dir(mnt.path().join("dir"))
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let ino_by_path = std::fs::metadata(&path).map(|m| m.ino());
    let ino_of_fd = file.metadata().expect("fstat").ino();
    close_checked(file).expect("close dir/second.bin");
    drop(_quiet);
    println!("dir/ lists {names:?}; second.bin: inode at create {ino_at_open}, of the descriptor {ino_of_fd}, by path {ino_by_path:?}");
    if ino_by_path.as_ref().ok() != Some(&ino_of_fd) {
        problems.push(format!("while open, dir/second.bin names inode {ino_by_path:?} but its descriptor is inode {ino_of_fd} (SQLite: SQLITE_READONLY_DBMOVED)"));
    }
    unmount(mnt);
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------
// 5. Namespace operations
// ---------------------------------------------------------------------------------------

/// Asserts the server's tree equals `expected` right away (the operation returned, so its
/// commit landed), and that the mount shows the same tree (within a few TTLs).
fn assert_trees(step: &str, addr: SocketAddr, mnt: &MountGuard, expected: &BTreeMap<String, Node>) {
    let on_server = server_tree(addr, "");
    assert_eq!(
        &on_server, expected,
        "after {step}: the server's tree differs from the expected one"
    );
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..50 {
        seen = mount_tree(mnt.path());
        if &seen == expected || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        &seen, expected,
        "after {step}: the mount's tree differs from the expected one"
    );
}

fn errno_of<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path")
}

#[test]
fn namespace_operations_are_committed_at_once_and_match_on_the_server() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let repo_url = server.repo_url("default");
    let mnt = mount(&repo_url, cache.path());
    let m = mnt.path().to_path_buf();
    let addr = server.addr;
    let mut want: BTreeMap<String, Node> = BTreeMap::new();
    let run = |args: &[&str]| {
        run_ok(
            Command::new(args[0]).args(&args[1..]).current_dir(&m),
            SMALL_TIMEOUT,
        );
    };

    // mkdir -p a/b/c, and a file inside.
    run(&["mkdir", "-p", "a/b/c"]);
    for d in ["a", "a/b", "a/b/c"] {
        want.insert(d.into(), Node::Dir);
    }
    assert_trees("mkdir -p a/b/c", addr, &mnt, &want);
    write_through(&m.join("a/b/c/f.txt"), b"deep file\n");
    want.insert("a/b/c/f.txt".into(), file_node(b"deep file\n"));
    assert_trees("writing a/b/c/f.txt", addr, &mnt, &want);

    // mv a z: one atomic move of the whole subtree.
    run(&["mv", "a", "z"]);
    want = want
        .into_iter()
        .map(|(k, v)| (format!("z{}", &k[1..]), v))
        .collect();
    assert_trees("mv a z", addr, &mnt, &want);

    // rmdir of a non-empty directory: ENOTEMPTY, nothing changes.
    // SAFETY: rmdir(2) with a valid NUL-terminated path.
    let r = unsafe { libc::rmdir(c_path(&m.join("z/b")).as_ptr()) };
    assert_eq!(r, -1, "rmdir of the non-empty z/b succeeded");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTEMPTY),
        "rmdir of the non-empty z/b"
    );
    assert_eq!(
        errno_of(std::fs::remove_dir(m.join("z/b/c"))),
        libc::ENOTEMPTY
    );
    assert_trees("rmdir of non-empty directories", addr, &mnt, &want);

    // rm -r z
    run(&["rm", "-r", "z"]);
    want.clear();
    assert_trees("rm -r z", addr, &mnt, &want);

    // An empty directory can be removed.
    run(&["mkdir", "empty"]);
    want.insert("empty".into(), Node::Dir);
    assert_trees("mkdir empty", addr, &mnt, &want);
    run(&["rmdir", "empty"]);
    want.remove("empty");
    assert_trees("rmdir empty", addr, &mnt, &want);

    // rename over an existing file replaces it.
    write_through(&m.join("x.txt"), b"old x\n");
    write_through(&m.join("y.txt"), b"new y\n");
    std::fs::rename(m.join("y.txt"), m.join("x.txt")).expect("rename y.txt over x.txt");
    want.insert("x.txt".into(), file_node(b"new y\n"));
    assert_trees("rename over an existing file", addr, &mnt, &want);
    assert_eq!(
        std::fs::read(m.join("x.txt")).expect("read x.txt"),
        b"new y\n"
    );

    // renameat2(RENAME_NOREPLACE) onto an existing file: EEXIST; onto a free name: moves.
    write_through(&m.join("p.txt"), b"p\n");
    write_through(&m.join("q.txt"), b"q\n");
    want.insert("p.txt".into(), file_node(b"p\n"));
    want.insert("q.txt".into(), file_node(b"q\n"));
    let renameat2 = |from: &str, to: &str| -> i32 {
        let (from, to) = (c_path(&m.join(from)), c_path(&m.join(to)));
        // SAFETY: renameat2 with valid NUL-terminated paths relative to AT_FDCWD.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    };
    assert_eq!(
        renameat2("p.txt", "q.txt"),
        libc::EEXIST,
        "renameat2(RENAME_NOREPLACE) onto an existing file"
    );
    assert_trees("a refused RENAME_NOREPLACE", addr, &mnt, &want);
    assert_eq!(
        renameat2("p.txt", "r.txt"),
        0,
        "renameat2(RENAME_NOREPLACE) onto a free name"
    );
    want.remove("p.txt");
    want.insert("r.txt".into(), file_node(b"p\n"));
    assert_trees("RENAME_NOREPLACE onto a free name", addr, &mnt, &want);

    // chmod +x is visible to `govcfs ls` as mode 100755.
    write_through(&m.join("tool.sh"), b"#!/bin/sh\necho hi\n");
    let_releases_land();
    run(&["chmod", "+x", "tool.sh"]);
    want.insert("tool.sh".into(), exec_node(b"#!/bin/sh\necho hi\n"));
    assert_trees("chmod +x tool.sh", addr, &mnt, &want);
    let ls = cli(&["ls", &format!("{repo_url}/tool.sh")]);
    ls.assert_success("govcfs ls tool.sh");
    assert!(
        ls.stdout_text().split_whitespace().nth(1) == Some("100755"),
        "govcfs ls tool.sh: {}",
        ls.stdout_text()
    );
    let listing = cli(&["ls", &repo_url]);
    listing.assert_success("govcfs ls");
    println!("govcfs ls:\n{}", listing.stdout_text());
    assert!(
        listing
            .stdout_text()
            .lines()
            .any(|l| l.contains("100755") && l.ends_with(" tool.sh")),
        "govcfs ls: {}",
        listing.stdout_text()
    );
    run(&["chmod", "-x", "tool.sh"]);
    want.insert("tool.sh".into(), file_node(b"#!/bin/sh\necho hi\n"));
    assert_trees("chmod -x tool.sh", addr, &mnt, &want);

    // symlink + readlink, and reading through the link.
    std::os::unix::fs::symlink("x.txt", m.join("link")).expect("symlink");
    want.insert("link".into(), link_node("x.txt"));
    assert_trees("symlink", addr, &mnt, &want);
    assert_eq!(
        std::fs::read_link(m.join("link")).expect("readlink"),
        PathBuf::from("x.txt")
    );
    assert_eq!(
        std::fs::read(m.join("link")).expect("read through the link"),
        b"new y\n"
    );

    // Hard links and FIFOs cannot be stored.
    let e = errno_of(std::fs::hard_link(m.join("x.txt"), m.join("hard.txt")));
    assert!(
        e == libc::ENOTSUP || e == libc::EPERM,
        "link(2) answered errno {e}, expected ENOTSUP or EPERM"
    );
    // Extended attributes are not stored: EOPNOTSUPP, every time (the mount answers the
    // first ENOSYS so that the kernel stops asking before every write).
    let file = c_path(&m.join("x.txt"));
    let name = c"user.note";
    for attempt in 0..2 {
        let mut buf = [0u8; 64];
        // SAFETY: getxattr with valid NUL-terminated strings and a buffer of its length.
        let r = unsafe {
            libc::getxattr(
                file.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let e = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (r, e),
            (-1, Some(libc::EOPNOTSUPP)),
            "getxattr, attempt {attempt}"
        );
    }
    let fifo = c_path(&m.join("fifo"));
    // SAFETY: mkfifo with a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    let e = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(r, -1, "mkfifo on the mount succeeded");
    println!("mkfifo answered {e:?}");
    assert_eq!(e, Some(libc::EPERM), "mkfifo errno");
    assert_trees("refused link and mkfifo", addr, &mnt, &want);

    // unlink, truncate by path, and utimens.
    std::fs::remove_file(m.join("r.txt")).expect("rm r.txt");
    want.remove("r.txt");
    assert_trees("unlink r.txt", addr, &mnt, &want);
    run(&["truncate", "-s", "3", "x.txt"]);
    want.insert("x.txt".into(), file_node(b"new"));
    assert_trees("truncate -s 3 x.txt", addr, &mnt, &want);
    // utimensat(2) by path (plain `touch` opens the file first: see
    // `touch_d_on_the_mount_sets_the_modification_time`).
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
    ];
    // SAFETY: utimensat with a valid NUL-terminated path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path(&m.join("q.txt")).as_ptr(),
            times.as_ptr(),
            0,
        )
    };
    assert_eq!(r, 0, "utimensat q.txt: {}", std::io::Error::last_os_error());
    let entry = stat_entry(addr, "q.txt").expect("q.txt");
    assert_eq!(
        entry["mtime"].as_i64(),
        Some(1_000_000_000),
        "mtime of q.txt after utimensat: {entry}"
    );
    assert_eq!(
        std::fs::metadata(m.join("q.txt"))
            .expect("stat q.txt")
            .mtime(),
        1_000_000_000,
        "mtime through the mount"
    );
    assert_trees("utimensat q.txt", addr, &mnt, &want);
    unmount(mnt);
}

// ---------------------------------------------------------------------------------------
// 6. Server gone before close
// ---------------------------------------------------------------------------------------

#[test]
fn close_after_the_server_died_returns_eio_keeps_the_bytes_and_recover_uploads_them() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let mut server = {
        let _gate = spawning();
        RestartableServer::start(
            data_dir.path(),
            "127.0.0.1:0",
            &work.path().join("server.log"),
        )
    };
    let repo_url = server.repo_url("default");
    let mnt = mount(&repo_url, cache.path());
    std::fs::create_dir(mnt.path().join("keep")).expect("mkdir keep");
    let old = b"the old version\n".to_vec();
    write_through(&mnt.path().join("keep/existing"), &old);
    let_releases_land();

    // Two writers: an existing file replaced with O_TRUNC, and a new file. 6 MiB each, so a
    // full upload chunk streams out while they write.
    let new_existing = random_bytes(6 * MIB as usize + 5, 61);
    let new_fresh = random_bytes(6 * MIB as usize + 7, 62);
    let quiet = writing();
    let mut a = open_retrying(
        &mnt.path().join("keep/existing"),
        OpenOptions::new().write(true).truncate(true),
    )
    .expect("open keep/existing");
    let mut b = File::create(mnt.path().join("keep/fresh")).expect("create keep/fresh");
    a.write_all(&new_existing).expect("write keep/existing");
    b.write_all(&new_fresh).expect("write keep/fresh");

    server.kill();
    let started = Instant::now();
    let close_a = std::thread::spawn(move || close_checked(a));
    let close_b = std::thread::spawn(move || close_checked(b));
    let results = must_finish_within(
        "close(2) with the server gone",
        Duration::from_secs(120),
        move || (close_a.join(), close_b.join()),
    );
    println!(
        "close(2) with the server gone returned after {:.1?}: {results:?}",
        started.elapsed()
    );
    for (what, result) in [
        ("keep/existing", results.0.expect("thread")),
        ("keep/fresh", results.1.expect("thread")),
    ] {
        let e = result.expect_err(&format!(
            "close of {what} succeeded although the server was dead"
        ));
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "close of {what}: {e}");
    }
    drop(quiet);

    // The restarted server has the old version and no new file.
    {
        let _gate = spawning();
        server.restart();
    }
    assert_eq!(
        server_hash(server.addr, "keep/existing"),
        Some(blob_id(&old)),
        "keep/existing after the failed close"
    );
    assert_eq!(
        stat_entry(server.addr, "keep/fresh"),
        None,
        "keep/fresh exists although its close failed"
    );

    // The bytes are in recovery/, each with its note.
    let copies = recovery_copies(cache.path());
    assert_eq!(copies.len(), 2, "recovery/ holds {copies:?}");
    let mut by_path = BTreeMap::new();
    for copy in &copies {
        let note = recovery_note(copy);
        println!("recovery copy {}: {note}", copy.display());
        by_path.insert(
            note["path"].as_str().expect("path").to_string(),
            (copy.clone(), note),
        );
    }
    let (copy, note) = &by_path["keep/existing"];
    assert!(
        std::fs::read(copy).expect("read the copy") == new_existing,
        "the recovery copy of keep/existing differs"
    );
    assert_eq!(note["expect"].as_str(), Some(blob_id(&old).as_str()));
    assert_eq!(note["origin"].as_str(), Some(repo_url.as_str()));
    let (copy, note) = &by_path["keep/fresh"];
    assert!(
        std::fs::read(copy).expect("read the copy") == new_fresh,
        "the recovery copy of keep/fresh differs"
    );
    assert!(note["expect"].is_null(), "expect of a new file: {note}");

    // `govcfs recover` lists them; `--upload` puts them back.
    let cache_arg = cache.path().to_str().unwrap();
    let list = cli(&["recover", "--cache-dir", cache_arg]);
    list.assert_success("govcfs recover");
    println!("govcfs recover:\n{}", list.stdout_text());
    assert!(
        list.stdout_text().contains("keep/existing") && list.stdout_text().contains("keep/fresh"),
        "govcfs recover: {}",
        list.stdout_text()
    );
    let upload = cli(&["recover", "--cache-dir", cache_arg, "--upload"]);
    println!(
        "govcfs recover --upload:\n{}{}",
        upload.stdout_text(),
        upload.stderr
    );
    upload.assert_success("govcfs recover --upload");
    assert_eq!(
        server_hash(server.addr, "keep/existing"),
        Some(blob_id(&new_existing)),
        "keep/existing after recover --upload"
    );
    assert_eq!(
        server_hash(server.addr, "keep/fresh"),
        Some(blob_id(&new_fresh)),
        "keep/fresh after recover --upload"
    );
    let left: Vec<_> = std::fs::read_dir(cache.path().join("recovery"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "recovery/ still holds {left:?} after a successful upload"
    );
    let listed = cli(&["recover", "--cache-dir", cache_arg]);
    listed.assert_success("govcfs recover (empty)");
    assert!(
        listed.stdout_text().contains("nothing to recover"),
        "{}",
        listed.stdout_text()
    );

    // The mount works again against the restarted server.
    std::thread::sleep(PAST_TTL);
    let through =
        std::fs::read(mnt.path().join("keep/fresh")).expect("read keep/fresh through the mount");
    assert!(
        through == new_fresh,
        "keep/fresh through the mount after recovery differs"
    );
    unmount(mnt);
    drop(server);
}

#[test]
fn a_mount_killed_while_writing_loses_nothing_and_the_next_mount_points_to_recover() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let repo_url = server.repo_url("default");
    // An existing 10 MiB file, edited in place in its middle chunk only: the spool then holds
    // just that chunk, and recovery must take the rest from the version it was opened at.
    let old = random_bytes((10 * MIB + 100) as usize, 81);
    let local = work.path().join("big.bin");
    std::fs::write(&local, &old).expect("write the local file");
    cli(&[
        "put",
        local.to_str().expect("UTF-8"),
        &format!("{repo_url}/big.bin"),
    ])
    .assert_success("govcfs put");
    let mnt = mount(&repo_url, cache.path());
    let patch = random_bytes(1000, 82);
    let fresh = random_bytes((6 * MIB + 3) as usize, 83);
    {
        let _quiet = writing();
        let edited = open_retrying(&mnt.path().join("big.bin"), OpenOptions::new().write(true))
            .expect("open big.bin");
        edited
            .write_all_at(&patch, 5 * MIB)
            .expect("write into big.bin");
        let mut created = File::create(mnt.path().join("fresh.bin")).expect("create fresh.bin");
        created.write_all(&fresh).expect("write fresh.bin");
        mnt.kill_hard();
        drop((edited, created));
    }
    assert_eq!(
        server_hash(server.addr, "big.bin"),
        Some(blob_id(&old)),
        "big.bin changed although it was never closed"
    );
    assert_eq!(
        stat_entry(server.addr, "fresh.bin"),
        None,
        "fresh.bin exists although it was never closed"
    );

    // The next mount with the same cache directory finds the spools and says what to do.
    let mnt = mount(&repo_url, cache.path());
    assert!(
        mnt.log().contains("govcfs recover"),
        "the next mount did not point to govcfs recover; log:\n{}",
        mnt.log()
    );
    assert_eq!(
        recovery_copies(cache.path()).len(),
        2,
        "recovery/ after the crash"
    );
    let cache_arg = cache.path().to_str().expect("UTF-8");
    let listed = cli(&["recover", "--cache-dir", cache_arg]);
    listed.assert_success("govcfs recover");
    println!("govcfs recover:\n{}", listed.stdout_text());
    cli(&["recover", "--cache-dir", cache_arg, "--upload"])
        .assert_success("govcfs recover --upload");
    let mut model = old.clone();
    model[(5 * MIB) as usize..(5 * MIB) as usize + patch.len()].copy_from_slice(&patch);
    assert_eq!(
        server_hash(server.addr, "big.bin"),
        Some(blob_id(&model)),
        "big.bin after recover --upload"
    );
    assert_eq!(
        server_hash(server.addr, "fresh.bin"),
        Some(blob_id(&fresh)),
        "fresh.bin after recover --upload"
    );
    assert!(
        recovery_copies(cache.path()).is_empty(),
        "recovery/ after a successful upload"
    );
    unmount(mnt);
}

#[test]
fn recover_upload_of_a_file_with_an_extension_succeeds_and_removes_its_note() {
    let server = start_server();
    let (cache_a, cache_b) = (
        tempfile::tempdir().expect("cache a"),
        tempfile::tempdir().expect("cache b"),
    );
    let repo_url = server.repo_url("default");
    let a = mount(&repo_url, cache_a.path());
    let b = mount(&repo_url, cache_b.path());
    // A conflict on B leaves a recovery copy of notes.txt in B's cache.
    write_through(&a.path().join("notes.txt"), b"v0\n");
    assert!(wait_until(Duration::from_secs(10), || std::fs::read(
        b.path().join("notes.txt")
    )
    .is_ok_and(|d| d == b"v0\n")));
    let quiet = writing();
    let mut fb = open_retrying(
        &b.path().join("notes.txt"),
        OpenOptions::new().write(true).truncate(true),
    )
    .expect("open on B");
    write_unlocked(&a.path().join("notes.txt"), b"from A\n");
    fb.write_all(b"from B\n").expect("write on B");
    assert_eq!(
        close_checked(fb).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO))
    );
    drop(quiet);
    assert_eq!(recovery_copies(cache_b.path()).len(), 1);

    let upload = cli(&[
        "recover",
        "--cache-dir",
        cache_b.path().to_str().unwrap(),
        "--upload",
    ]);
    println!(
        "recover --upload: {:?}\n{}{}",
        upload.status,
        upload.stdout_text(),
        upload.stderr
    );
    let left: Vec<_> = std::fs::read_dir(cache_b.path().join("recovery"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    // The copy went to notes.txt.recovered-TIME (A changed the file meanwhile).
    let recovered: Vec<String> = server_tree(server.addr, "")
        .into_keys()
        .filter(|k| k.starts_with("notes.txt.recovered-"))
        .collect();
    assert_eq!(
        recovered.len(),
        1,
        "recovered copies on the server: {recovered:?}"
    );
    assert!(
        upload.status.success(),
        "recover --upload failed after uploading: {}",
        upload.stderr
    );
    assert!(left.is_empty(), "recovery/ still holds {left:?}");
}

// ---------------------------------------------------------------------------------------
// 7. Two mounts writing the same file
// ---------------------------------------------------------------------------------------

#[test]
fn two_mounts_writing_the_same_file_the_second_close_fails_and_keeps_its_bytes() {
    let server = start_server();
    let (cache_a, cache_b) = (
        tempfile::tempdir().expect("cache a"),
        tempfile::tempdir().expect("cache b"),
    );
    let work = tempfile::tempdir().expect("work dir");
    let repo_url = server.repo_url("default");
    let a = mount(&repo_url, cache_a.path());
    let b = mount(&repo_url, cache_b.path());

    // An existing file, seen by both mounts.
    let v0 = random_bytes(2 * MIB as usize, 70);
    write_through(&a.path().join("shared.bin"), &v0);
    let v0_id = blob_id(&v0);
    let seen = wait_until(Duration::from_secs(10), || {
        std::fs::metadata(b.path().join("shared.bin")).is_ok_and(|m| m.len() == v0.len() as u64)
    });
    assert!(seen, "mount B never saw shared.bin");
    let_releases_land();

    // Both open it with O_TRUNC and write different content.
    let from_a = random_bytes(5 * MIB as usize + 1, 71);
    let from_b = random_bytes(3 * MIB as usize + 2, 72);
    let truncating = OpenOptions::new().write(true).truncate(true).clone();
    let quiet = writing();
    let mut fa = open_retrying(&a.path().join("shared.bin"), &truncating).expect("open on A");
    let mut fb = open_retrying(&b.path().join("shared.bin"), &truncating).expect("open on B");
    fa.write_all(&from_a).expect("write on A");
    fb.write_all(&from_b).expect("write on B");
    // The server still has v0 while both are open.
    assert_eq!(
        server_hash(server.addr, "shared.bin").as_deref(),
        Some(v0_id.as_str())
    );
    must_finish_within("close on A", SMALL_TIMEOUT, move || close_checked(fa))
        .expect("the first close succeeds");
    let e = must_finish_within("close on B", SMALL_TIMEOUT, move || close_checked(fb))
        .expect_err("the second close must fail (conflict)");
    println!("second writer's close: {e}");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "the second close: {e}");
    drop(quiet);

    // The server has exactly A's bytes; B's are in B's recovery/, A's recovery/ is empty.
    assert_eq!(
        server_hash(server.addr, "shared.bin"),
        Some(blob_id(&from_a))
    );
    assert!(
        get_bytes(&repo_url, "shared.bin", work.path()) == from_a,
        "govcfs get shared.bin is not A's content"
    );
    assert!(
        recovery_copies(cache_a.path()).is_empty(),
        "A's recovery/ holds {:?}",
        recovery_copies(cache_a.path())
    );
    let copies = recovery_copies(cache_b.path());
    assert_eq!(copies.len(), 1, "B's recovery/ holds {copies:?}");
    assert!(
        std::fs::read(&copies[0]).expect("read B's copy") == from_b,
        "B's recovery copy differs from what B wrote"
    );
    let note = recovery_note(&copies[0]);
    println!("B's recovery note: {note}");
    assert_eq!(note["path"].as_str(), Some("shared.bin"));
    assert_eq!(note["expect"].as_str(), Some(v0_id.as_str()));

    // The same for a file both create anew (expect: must not exist).
    let quiet = writing();
    let mut fa = File::create(a.path().join("race-new.bin")).expect("create on A");
    let mut fb = File::create(b.path().join("race-new.bin")).expect("create on B");
    fa.write_all(b"A was first\n").expect("write on A");
    fb.write_all(b"B was second\n").expect("write on B");
    must_finish_within("close on A", SMALL_TIMEOUT, move || close_checked(fa))
        .expect("the first close of a new file succeeds");
    let e = must_finish_within("close on B", SMALL_TIMEOUT, move || close_checked(fb))
        .expect_err("the second creator's close must fail");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "the second creator's close: {e}"
    );
    drop(quiet);
    assert_eq!(
        server_hash(server.addr, "race-new.bin"),
        Some(blob_id(b"A was first\n"))
    );
    let copies = recovery_copies(cache_b.path());
    assert_eq!(copies.len(), 2, "B's recovery/ holds {copies:?}");
    let kept: Vec<Vec<u8>> = copies
        .iter()
        .map(|c| std::fs::read(c).expect("read copy"))
        .collect();
    assert!(
        kept.iter().any(|k| k == b"B was second\n"),
        "B's bytes for race-new.bin are not in its recovery/"
    );
    unmount(b);
    unmount(a);
}

// ---------------------------------------------------------------------------------------
// 8. tar -xf of 2,000 small files
// ---------------------------------------------------------------------------------------

#[test]
fn tar_extracts_2000_small_files_into_the_mount_and_every_one_matches() {
    const DIRS: usize = 40;
    const PER_DIR: usize = 50;
    let work = tempfile::tempdir().expect("work dir");
    let tree = work.path().join("tree");
    let mut rng = XorShift::new(88);
    let mut files = Vec::new();
    for d in 0..DIRS {
        std::fs::create_dir_all(tree.join(format!("d{d:02}"))).expect("mkdir");
        for f in 0..PER_DIR {
            let rel = format!("d{d:02}/f{f:03}.dat");
            let len = if f % 17 == 0 {
                0
            } else {
                (rng.next_u64() % 6000) as usize
            };
            std::fs::write(tree.join(&rel), random_bytes(len, rng.next_u64())).expect("write");
            files.push(rel);
        }
    }
    let archive = work.path().join("tree.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&tree)
            .arg("."),
        SMALL_TIMEOUT,
    );

    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let repo_url = server.repo_url("default");
    let mnt = mount(&repo_url, cache.path());
    let dest = mnt.path().join("untar");
    std::fs::create_dir(&dest).expect("mkdir untar");
    let started = Instant::now();
    let CliOutput { status, stderr, .. } = run_child(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&dest),
        BIG_TIMEOUT,
    );
    let elapsed = started.elapsed();
    println!(
        "tar -xf of {} files: {elapsed:.1?}, {:.1} files/s",
        files.len(),
        files.len() as f64 / elapsed.as_secs_f64()
    );
    assert!(
        status.success(),
        "tar -xf into the mount failed ({status}): {stderr}\nmount log:\n{}",
        mnt.log()
    );

    // Every file is on the server with its content (blob id), and every directory.
    let on_server = server_tree(server.addr, "untar");
    let mut expected = BTreeMap::new();
    for d in 0..DIRS {
        expected.insert(format!("untar/d{d:02}"), Node::Dir);
    }
    for rel in &files {
        expected.insert(
            format!("untar/{rel}"),
            Node::File(blob_id_of_file(&tree.join(rel)), 0o100644),
        );
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !on_server.contains_key(*k))
        .take(10)
        .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(k, v)| on_server.get(*k).is_some_and(|s| s != *v))
        .map(|(k, _)| k)
        .take(10)
        .collect();
    let extra: Vec<_> = on_server
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && wrong.is_empty() && extra.is_empty(),
        "server vs archive: missing {missing:?}, different {wrong:?}, extra {extra:?}"
    );

    // Modification times are not asserted here (printed only): tar sets them with futimens on
    // the open descriptor, which the mount drops; see `tar_xf_restores_modification_times`.
    let sampled: Vec<&String> = files.iter().step_by(10).collect();
    let kept_mtime = sampled
        .iter()
        .filter(|rel| {
            let local = std::fs::metadata(tree.join(rel))
                .expect("stat local")
                .mtime();
            stat_entry(server.addr, &format!("untar/{rel}")).expect("entry")["mtime"].as_i64()
                == Some(local)
        })
        .count();
    println!(
        "{kept_mtime} of {} sampled files kept their modification time",
        sampled.len()
    );

    // A fresh mount reads a sample back, and `govcfs get` a few.
    unmount(mnt);
    let mnt = mount(&repo_url, cache.path());
    for rel in files.iter().step_by(20) {
        let through = std::fs::read(mnt.path().join("untar").join(rel))
            .unwrap_or_else(|e| panic!("read {rel} after remount: {e}"));
        assert!(
            through == std::fs::read(tree.join(rel)).expect("read local"),
            "{rel} through the remounted mount differs"
        );
    }
    for rel in files.iter().step_by(400) {
        assert!(
            get_bytes(&repo_url, &format!("untar/{rel}"), work.path())
                == std::fs::read(tree.join(rel)).expect("read local"),
            "govcfs get {rel}"
        );
    }
    unmount(mnt);
}

// ---------------------------------------------------------------------------------------
// Bugs found along the way
// ---------------------------------------------------------------------------------------

#[test]
fn a_file_reopened_for_writing_right_after_close_opens_without_enotsup() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let mnt = mount(&server.repo_url("default"), cache.path());
    let path = mnt.path().join("reopen.log");
    let mut failures = 0;
    let mut expected = Vec::new();
    let quiet = writing();
    for i in 0..100u32 {
        let line = format!("line {i}\n");
        // No retry here: the plain sequence every program does.
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(mut f) => {
                f.write_all(line.as_bytes()).expect("append");
                close_checked(f).expect("close");
                expected.extend_from_slice(line.as_bytes());
            }
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP),
                    "unexpected error {e}"
                );
                failures += 1;
            }
        }
    }
    drop(quiet);
    println!("{failures} of 100 open(O_APPEND) calls right after a close failed with EOPNOTSUPP");
    assert_eq!(
        failures, 0,
        "open for writing right after close failed {failures} times out of 100"
    );
    assert_eq!(
        server_hash(server.addr, "reopen.log"),
        Some(blob_id(&expected))
    );
    unmount(mnt);
}

#[test]
fn touch_d_on_the_mount_sets_the_modification_time() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let mnt = mount(&server.repo_url("default"), cache.path());
    write_through(&mnt.path().join("stamp.txt"), b"stamp\n");
    let_releases_land();
    run_ok(
        Command::new("touch")
            .args(["-m", "-d", "@1000000000"])
            .arg(mnt.path().join("stamp.txt")),
        SMALL_TIMEOUT,
    );
    let_releases_land();
    let entry = stat_entry(server.addr, "stamp.txt").expect("stamp.txt");
    assert_eq!(entry["hash"].as_str(), Some(blob_id(b"stamp\n").as_str()));
    assert_eq!(
        entry["mtime"].as_i64(),
        Some(1_000_000_000),
        "mtime on the server after touch -m -d @1000000000: {entry}"
    );
    unmount(mnt);
}

#[test]
fn tar_xf_restores_modification_times() {
    let work = tempfile::tempdir().expect("work dir");
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    for i in 0..10 {
        let path = tree.join(format!("old-{i}.txt"));
        std::fs::write(&path, format!("file {i}\n")).expect("write");
        run_ok(
            Command::new("touch")
                .args(["-m", "-d", &format!("@{}", 1_000_000_000 + i)])
                .arg(&path),
            SMALL_TIMEOUT,
        );
    }
    let archive = work.path().join("old.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&tree)
            .arg("."),
        SMALL_TIMEOUT,
    );
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let mnt = mount(&server.repo_url("default"), cache.path());
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(mnt.path()),
        SMALL_TIMEOUT,
    );
    let_releases_land();
    let mut wrong = Vec::new();
    for i in 0..10 {
        let entry =
            stat_entry(server.addr, &format!("old-{i}.txt")).expect("extracted file on the server");
        if entry["mtime"].as_i64() != Some(1_000_000_000 + i) {
            wrong.push(format!("old-{i}.txt: {}", entry["mtime"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 10 files lost the archive's mtime: {wrong:?}",
        wrong.len()
    );
    unmount(mnt);
}

#[test]
fn a_child_process_started_while_a_file_is_open_for_writing_commits_nothing_early() {
    let server = start_server();
    let cache = tempfile::tempdir().expect("cache dir");
    let mnt = mount(&server.repo_url("default"), cache.path());
    let quiet = writing();
    let mut file = File::create(mnt.path().join("half.bin")).expect("create half.bin");
    file.write_all(&random_bytes(MIB as usize, 5))
        .expect("write the first half");
    // Any child of this process (a shell-out, a compiler, a test helper) will do.
    let status = Command::new("true")
        .stdin(Stdio::null())
        .status()
        .expect("run true");
    assert!(status.success());
    let seen_before_close = stat_entry(server.addr, "half.bin");
    file.write_all(&random_bytes(MIB as usize, 6))
        .expect("write the second half");
    close_checked(file).expect("close half.bin");
    drop(quiet);
    assert_eq!(
        server_hash(server.addr, "half.bin").map(|h| h.len()),
        Some(64)
    );
    assert!(
        seen_before_close.is_none(),
        "before close(2), after a child process started, the server already had {:?}",
        seen_before_close
    );
    unmount(mnt);
}

#[test]
fn a_conflict_reported_to_a_child_process_also_fails_the_writers_close() {
    let server = start_server();
    let (cache_a, cache_b) = (
        tempfile::tempdir().expect("cache a"),
        tempfile::tempdir().expect("cache b"),
    );
    let repo_url = server.repo_url("default");
    let a = mount(&repo_url, cache_a.path());
    let b = mount(&repo_url, cache_b.path());
    write_through(&a.path().join("doc.txt"), b"v0\n");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read(
            b.path().join("doc.txt")
        )
        .is_ok_and(|d| d == b"v0\n")),
        "B never saw doc.txt"
    );
    let_releases_land();
    let quiet = writing();
    let truncating = OpenOptions::new().write(true).truncate(true).clone();
    let mut fa = open_retrying(&a.path().join("doc.txt"), &truncating).expect("open on A");
    let mut fb = open_retrying(&b.path().join("doc.txt"), &truncating).expect("open on B");
    fa.write_all(b"from A\n").expect("write on A");
    fb.write_all(b"from B\n").expect("write on B");
    close_checked(fa).expect("close on A");
    // A child inherits B's descriptor and closes it at exec: B's commit conflicts there.
    let status = Command::new("true")
        .stdin(Stdio::null())
        .status()
        .expect("run true");
    assert!(status.success());
    let closed_b = close_checked(fb);
    drop(quiet);
    println!(
        "B's close: {closed_b:?}; B's recovery/: {:?}",
        recovery_copies(cache_b.path())
    );
    assert_eq!(
        server_hash(server.addr, "doc.txt"),
        Some(blob_id(b"from A\n")),
        "the server must keep A's version"
    );
    assert_eq!(
        closed_b.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "B's close(2) must report that B's bytes were not committed"
    );
    unmount(b);
    unmount(a);
}
