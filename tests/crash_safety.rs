//! Crash safety of the server (issue 7, "Crash safety of the server", and one check of
//! "Crash safety of the mount").
//!
//! The server is killed with SIGKILL at chosen points while a client uploads (resumable API:
//! start, chunk PUTs, `complete`) and commits. After every kill, `govcfs fsck` checks the store
//! exactly as the crash left it, a new server starts on the same data directory, and the test
//! checks what the client was promised: every acknowledged commit is in the log, the head is
//! the last acknowledged commit (or the one commit that was in flight, on top of it), every
//! path holds the blob its last commit put there, every blob the server reported is readable
//! and hashes to its id, and an interrupted upload resumes and completes to the right blob.
//!
//! Other tests: the garbage that repeated kills leave in `tmp/`, `govcfs fsck` finding real
//! damage (a flipped byte, truncated tree and commit objects, a ref to a missing commit), a
//! repository whose creation was cut between its ref and its config, and a mount killed
//! during a `cp` (the server's store stays intact; the recovery side is in `mount_write.rs`).
//!
//! Every process is started by this file and signalled only by its own PID. Every loop is
//! bounded in count and time; every HTTP request has a time limit (`common::http_request`).
//! The figures (kills, acknowledged commits, resumed uploads, anything lost) are printed; run
//! with `--nocapture` to see them.

mod common;
mod mount_support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{
    blob_id, blob_id_of_file, files_under, http_request, md5_hex, random_bytes, run_cli_with,
    sha256_hex, write_fast_random_file, RawResponse, ServerProcess, XorShift, KIB, MIB,
};
use serde_json::{json, Value};

/// Kills of the main loop (the issue asks for at least 50).
const KILLS: usize = 60;
/// The main loop stops early past this much time; it then fails if fewer than 50 kills were done.
const LOOP_BUDGET: Duration = Duration::from_secs(300);
/// Time limit of one `govcfs fsck`.
const FSCK_TIMEOUT: Duration = Duration::from_secs(180);
/// Upload/commit cycles one client thread does at most before it stops by itself.
const MAX_CYCLES: usize = 40;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn api(path: &str) -> String {
    format!("/api/v1/repos/default{path}")
}

fn get(addr: SocketAddr, target: &str) -> std::io::Result<RawResponse> {
    http_request(addr, "GET", target, &[], b"")
}

fn post_json(addr: SocketAddr, target: &str, body: &Value) -> std::io::Result<RawResponse> {
    let body = serde_json::to_vec(body).expect("JSON");
    http_request(
        addr,
        "POST",
        target,
        &[("Content-Type", "application/json")],
        &body,
    )
}

/// A GET that must get an answer (the server is up): panics with the error otherwise.
fn must_get(addr: SocketAddr, target: &str) -> RawResponse {
    get(addr, target).unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

fn must_json(addr: SocketAddr, target: &str) -> Value {
    let r = must_get(addr, target);
    assert_eq!(r.status, 200, "GET {target}: {}", r.text());
    r.json()
}

/// `govcfs fsck --data DIR` (bounded); returns (success, stdout + stderr).
fn fsck(data: &Path) -> (bool, String) {
    let out = run_cli_with(
        &["fsck", "--data", data.to_str().expect("UTF-8 path")],
        &[],
        FSCK_TIMEOUT,
    );
    (
        out.status.success(),
        format!("{}{}", out.stdout_text(), out.stderr),
    )
}

/// The head of `default`'s main branch, from `GET /api/v1/repos`.
fn repo_head(addr: SocketAddr) -> String {
    let list = must_json(addr, "/api/v1/repos");
    list["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .find(|r| r["id"] == "default")
        .and_then(|r| r["head"].as_str())
        .unwrap_or_else(|| panic!("no head for default in {list}"))
        .to_string()
}

/// The log of the default branch, newest first: (commit, parent).
fn log(addr: SocketAddr) -> Vec<(String, Option<String>)> {
    let log = must_json(addr, &api("/log?limit=10000"));
    log["commits"]
        .as_array()
        .unwrap_or_else(|| panic!("no commits in {log}"))
        .iter()
        .map(|c| {
            (
                c["commit"].as_str().expect("commit").to_string(),
                c["parent"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Every file of the default branch: path → blob id (walks the tree API).
fn files(addr: SocketAddr) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![String::new()];
    // Bounded: the test's trees have a handful of directories.
    for _ in 0..1000 {
        let Some(dir) = dirs.pop() else { break };
        let listing = must_json(addr, &api(&format!("/tree/{dir}")));
        for e in listing["entries"].as_array().expect("entries") {
            let path = e["path"].as_str().expect("path").to_string();
            match e["type"].as_str() {
                Some("directory") => dirs.push(path),
                _ => {
                    out.insert(path, e["hash"].as_str().expect("hash").to_string());
                }
            }
        }
    }
    out
}

/// Reads a blob through the API and checks that it hashes to its id and has `len` bytes.
fn check_blob(addr: SocketAddr, hash: &str, len: usize, what: &str) {
    let r = must_get(addr, &api(&format!("/blobs/{hash}")));
    assert_eq!(r.status, 200, "{what}: GET blob {hash}: {}", r.text());
    assert_eq!(
        r.body.len(),
        len,
        "{what}: blob {hash} has {} bytes, want {len}",
        r.body.len()
    );
    let actual = blob_id(&r.body);
    assert_eq!(
        actual, hash,
        "{what}: blob {hash} hashes to {actual}: its content does not match its id"
    );
}

/// What a data directory holds besides live objects: files a crash may leave behind.
#[derive(Debug, Default, Clone)]
struct Census {
    /// Chunk files (`chunks/`, not their `.crc` side files), and those that no manifest and
    /// no upload record names, with their bytes: what a cut upload or assembly leaves.
    chunk_files: usize,
    unreferenced_chunks: usize,
    unreferenced_bytes: u64,
    /// `object_store` staging files (`NAME#N`: a write cut before its rename), and how many
    /// of them are under `objects/`.
    staging_files: usize,
    staging_in_objects: usize,
    /// Temporary ref files (`.UUID.tmp`) under `refs/`.
    ref_tmp_files: usize,
    /// Upload directories holding files, and those without `meta.json` (unreachable through
    /// the API, so never resumed nor removed).
    uploads: usize,
    orphaned_uploads: usize,
    /// Upload directories left empty (a completed or aborted upload's directory).
    empty_upload_dirs: usize,
    /// Files inside upload directories.
    upload_files: usize,
    /// Files under `objects/` (blobs, trees, commits and their side files).
    object_files: usize,
}

fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The chunk hashes that manifests (CONTRACT §3: the lines after the third) and upload
/// records (`<index>.ref`: a JSON list of `[hash, len]`) among `files` name.
fn referenced_chunks(files: &[PathBuf]) -> HashSet<String> {
    let mut live = HashSet::new();
    for file in files {
        let rel = file.to_string_lossy();
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if is_staging_name(name) {
            continue;
        }
        if rel.contains("/manifests/") {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            live.extend(text.lines().skip(3).map(str::to_string));
        } else if rel.contains("/uploads/") && name.ends_with(".ref") {
            let list: Vec<(String, u64)> =
                serde_json::from_slice(&std::fs::read(file).unwrap_or_default())
                    .unwrap_or_default();
            live.extend(list.into_iter().map(|(hash, _)| hash));
        }
    }
    live
}

fn census(data: &Path) -> Census {
    let mut c = Census::default();
    let all = files_under(data);
    let live = referenced_chunks(&all);
    for file in &all {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let rel = file
            .strip_prefix(data)
            .unwrap_or(file)
            .to_string_lossy()
            .into_owned();
        if is_staging_name(name) {
            c.staging_files += 1;
            c.staging_in_objects += usize::from(rel.contains("/objects/"));
        } else if rel.contains("/refs/") && name.starts_with('.') && name.ends_with(".tmp") {
            c.ref_tmp_files += 1;
        }
        if rel.contains("/uploads/") {
            c.upload_files += 1;
        }
        if rel.contains("/objects/") && !is_staging_name(name) {
            c.object_files += 1;
        }
        if rel.contains("/chunks/") && !is_staging_name(name) && !name.ends_with(".crc") {
            c.chunk_files += 1;
            if !live.contains(name) {
                c.unreferenced_chunks += 1;
                c.unreferenced_bytes += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    if let Ok(repos) = std::fs::read_dir(data.join("repos")) {
        for repo in repos.flatten() {
            if let Ok(uploads) = std::fs::read_dir(repo.path().join("uploads")) {
                for upload in uploads.flatten().filter(|u| u.path().is_dir()) {
                    let files = names_in(&upload.path());
                    if files.is_empty() {
                        c.empty_upload_dirs += 1;
                    } else {
                        c.uploads += 1;
                        if !files.contains("meta.json") {
                            c.orphaned_uploads += 1;
                        }
                    }
                }
            }
        }
    }
    c
}

impl std::fmt::Display for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chunks: {} ({} unreferenced, {} bytes); staging files: {} ({} in objects/); temporary ref files: {}; \
             uploads: {} ({} without meta.json; {} files in all); empty upload dirs: {}; object files: {}",
            self.chunk_files,
            self.unreferenced_chunks,
            self.unreferenced_bytes,
            self.staging_files,
            self.staging_in_objects,
            self.ref_tmp_files,
            self.uploads,
            self.orphaned_uploads,
            self.upload_files,
            self.empty_upload_dirs,
            self.object_files
        )
    }
}

/// Copies a directory tree (regular files and directories only).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        let t = entry.file_type().expect("file type");
        if t.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if t.is_file() {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

fn object_file(data: &Path, id: &str) -> PathBuf {
    data.join(format!("repos/default/objects/{}/{id}", &id[..2]))
}

/// The file of the chunk whose bytes are `chunk`.
fn chunk_file(data: &Path, chunk: &[u8]) -> PathBuf {
    let hash = sha256_hex(chunk);
    data.join(format!("repos/default/chunks/{}/{hash}", &hash[..2]))
}

// ---------------------------------------------------------------------------------------
// The client that runs while the server is killed
// ---------------------------------------------------------------------------------------

/// What the client is doing: the request in flight (or none).
const IDLE: u8 = 0;
const START: u8 = 1;
const CHUNK: u8 = 2;
const COMPLETE: u8 = 3;
const COMMIT: u8 = 4;
const PHASES: [&str; 5] = [
    "between requests",
    "upload start",
    "chunk PUT",
    "complete (assembly)",
    "commit",
];

/// State shared between the client thread and the thread that kills the server.
#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    /// Requests started, by phase.
    started: [AtomicU32; 5],
    /// Set just before the kill: an I/O error after it is the kill, before it a server fault.
    killed: AtomicBool,
    /// The client stopped by itself (all its cycles done).
    done: AtomicBool,
}

/// A blob the client made: its content is `random_bytes(len, seed)`.
#[derive(Debug, Clone)]
struct BlobRec {
    hash: String,
    len: usize,
    seed: u64,
}

impl BlobRec {
    fn data(&self) -> Vec<u8> {
        random_bytes(self.len, self.seed)
    }
}

/// An upload the server acknowledged starting, with the chunks it acknowledged.
#[derive(Debug, Clone)]
struct UploadRec {
    id: String,
    chunk_size: usize,
    blob: BlobRec,
    acked: BTreeSet<usize>,
}

/// Where the client was when the kill cut it off.
#[derive(Debug, Clone)]
struct Interrupted {
    /// The request that failed (in flight at the kill, or refused after it).
    phase: u8,
    /// The upload in progress (started, not yet completed as far as the client knows).
    upload: Option<UploadRec>,
    /// The commit in flight: (path, blob id).
    commit: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct ClientOutcome {
    /// Uploads the server completed (201 with the right id), in order.
    blobs: Vec<BlobRec>,
    /// Commits the server acknowledged (201): (commit id, path, blob id), in order.
    commits: Vec<(String, String, String)>,
    interrupted: Option<Interrupted>,
    /// Answers that break the contract (each one fails the test).
    unexpected: Vec<String>,
}

/// Paths the client writes: overwritten often, some nested.
const PATHS: [&str; 6] = [
    "f0.bin",
    "f1.bin",
    "f2.bin",
    "d/h.bin",
    "d/e/g0.bin",
    "d/e/g1.bin",
];

/// A blob length: mostly log-uniform in 64 KiB–8 MiB, sometimes tiny.
fn blob_len(rng: &mut XorShift) -> usize {
    if rng.next_u64().is_multiple_of(10) {
        return 1 + (rng.next_u64() % 4000) as usize;
    }
    let lo = (64 * KIB) << (rng.next_u64() % 7);
    let hi = (lo * 2).min(8 * MIB);
    (lo + rng.next_u64() % (hi - lo + 1)) as usize
}

/// Sends one request as phase `phase` (visible to the killer thread while it is in flight).
fn request(
    addr: SocketAddr,
    shared: &Shared,
    phase: u8,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    shared.phase.store(phase, Ordering::SeqCst);
    shared.started[phase as usize].fetch_add(1, Ordering::SeqCst);
    let r = http_request(addr, method, target, headers, body);
    shared.phase.store(IDLE, Ordering::SeqCst);
    r
}

/// Uploads and commits blobs until the server dies (or `MAX_CYCLES` are done).
/// `reuse` are blobs made earlier: sometimes one is uploaded again (the assembly then finds
/// the blob already stored).
fn run_client(
    addr: SocketAddr,
    seed: u64,
    blob_seed_base: u64,
    reuse: Vec<BlobRec>,
    shared: Arc<Shared>,
) -> ClientOutcome {
    let mut rng = XorShift::new(seed);
    let mut out = ClientOutcome::default();
    let mut upload: Option<UploadRec> = None;
    let mut pending_commit: Option<(String, String)> = None;
    // On an I/O error: the kill (record where it hit) or a server fault.
    macro_rules! send {
        ($phase:expr, $method:expr, $target:expr, $headers:expr, $body:expr) => {
            match request(addr, &shared, $phase, $method, $target, $headers, $body) {
                Ok(r) => r,
                Err(e) => {
                    if shared.killed.load(Ordering::SeqCst) {
                        out.interrupted = Some(Interrupted {
                            phase: $phase,
                            upload: upload.clone(),
                            commit: pending_commit.clone(),
                        });
                    } else {
                        out.unexpected.push(format!(
                            "{} {} failed before the kill: {e}",
                            $method, $target
                        ));
                    }
                    return out;
                }
            }
        };
    }
    macro_rules! expect_status {
        ($r:expr, $ok:expr, $what:expr) => {
            if !$ok.contains(&$r.status) {
                out.unexpected
                    .push(format!("{}: status {} {}", $what, $r.status, $r.text()));
                return out;
            }
        };
    }
    for cycle in 0..MAX_CYCLES {
        let (blob, data) = if !reuse.is_empty() && rng.next_u64().is_multiple_of(10) {
            let old = reuse[(rng.next_u64() % reuse.len() as u64) as usize].clone();
            let data = old.data();
            (old, data)
        } else {
            let (len, seed) = (blob_len(&mut rng), blob_seed_base + cycle as u64);
            let data = random_bytes(len, seed);
            (
                BlobRec {
                    hash: blob_id(&data),
                    len,
                    seed,
                },
                data,
            )
        };
        let chunk_size =
            [64 * KIB, 128 * KIB, 256 * KIB, MIB][(rng.next_u64() % 4) as usize] as usize;

        let r = send!(
            START,
            "POST",
            &api("/uploads"),
            &[("Content-Type", "application/json")],
            json!({ "chunk_size": chunk_size }).to_string().as_bytes()
        );
        expect_status!(r, [200, 201], "start upload");
        let started = r.json();
        let Some(id) = started["upload_id"].as_str().map(str::to_string) else {
            out.unexpected
                .push(format!("start upload: no upload_id in {started}"));
            return out;
        };
        if started["chunk_size"].as_u64() != Some(chunk_size as u64) {
            out.unexpected.push(format!(
                "start upload: chunk size {} for {chunk_size}",
                started["chunk_size"]
            ));
            return out;
        }
        upload = Some(UploadRec {
            id: id.clone(),
            chunk_size,
            blob: blob.clone(),
            acked: BTreeSet::new(),
        });
        for (index, piece) in data.chunks(chunk_size).enumerate() {
            let md5 = md5_hex(piece);
            let r = send!(
                CHUNK,
                "PUT",
                &api(&format!("/uploads/{id}/{index}")),
                &[("X-Checksum-MD5", md5.as_str())],
                piece
            );
            expect_status!(r, [200, 201, 204], format!("PUT chunk {index}"));
            upload.as_mut().expect("upload").acked.insert(index);
        }
        let r = send!(
            COMPLETE,
            "POST",
            &api(&format!("/uploads/{id}/complete")),
            &[],
            b""
        );
        expect_status!(r, [200, 201], "complete");
        let info = r.json();
        if info["hash"].as_str() != Some(blob.hash.as_str())
            || info["size"].as_u64() != Some(blob.len as u64)
        {
            out.unexpected.push(format!(
                "complete answered {info} for a blob of {} bytes with id {}",
                blob.len, blob.hash
            ));
            return out;
        }
        upload = None;
        out.blobs.push(blob.clone());

        let path = PATHS[(rng.next_u64() % PATHS.len() as u64) as usize].to_string();
        pending_commit = Some((path.clone(), blob.hash.clone()));
        let body = json!({ "message": format!("crash-safety {blob_seed_base}/{cycle}"), "changes": [{ "op": "put", "path": path, "hash": blob.hash }] });
        let r = send!(
            COMMIT,
            "POST",
            &api("/commits"),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes()
        );
        expect_status!(r, [201], "commit");
        let Some(commit) = r.json()["commit"].as_str().map(str::to_string) else {
            out.unexpected
                .push(format!("commit: no commit id in {}", r.text()));
            return out;
        };
        pending_commit = None;
        out.commits.push((commit, path, blob.hash.clone()));
    }
    shared.done.store(true, Ordering::SeqCst);
    out
}

/// Where one kill is aimed: the `n`-th request of `phase` in the iteration, then `delay`.
/// `phase` IDLE means: `delay` after the client starts, wherever it is then.
#[derive(Debug, Clone, Copy)]
struct Aim {
    phase: u8,
    n: u32,
    delay: Duration,
}

fn aim(rng: &mut XorShift) -> Aim {
    let r = rng.next_u64();
    let (phase, n, delay_us) = match r % 8 {
        0 | 1 => (CHUNK, 1 + (r >> 8) % 6, (r >> 16) % 1500),
        2 | 3 => (COMPLETE, 1 + (r >> 8) % 2, (r >> 16) % 30_000),
        4 | 5 => (COMMIT, 1 + (r >> 8) % 2, (r >> 16) % 15_000),
        6 => (START, 1 + (r >> 8) % 2, (r >> 16) % 400),
        _ => (IDLE, 0, (r >> 16) % 500_000),
    };
    Aim {
        phase,
        n: n as u32,
        delay: Duration::from_micros(delay_us),
    }
}

/// What the whole run promised and found.
#[derive(Default)]
struct Tally {
    kills: usize,
    /// Kills by the phase the client was in at the kill, and by the request it lost.
    at_kill: [usize; 5],
    lost_request: [usize; 5],
    commits_acked: usize,
    unacked_commit_landed: usize,
    unacked_commit_absent: usize,
    blobs_acked: usize,
    uploads_cut_in_chunks: usize,
    uploads_resumed: usize,
    completes_cut: usize,
    completes_already_published: usize,
    completes_redone: usize,
    chunks_resent: usize,
    fsck_runs: usize,
}

/// What must hold after a kill, from everything the client was told.
struct Model {
    head: String,
    acked: Vec<String>,
    files: BTreeMap<String, String>,
    blobs: Vec<BlobRec>,
}

/// Resumes (or finds completed) the upload the kill interrupted; returns the blob it made.
fn resume_upload(
    addr: SocketAddr,
    cut: &Interrupted,
    up: &UploadRec,
    t: &mut Tally,
    what: &str,
) -> Option<BlobRec> {
    let blob_target = api(&format!("/blobs/{}", up.blob.hash));
    let status_target = api(&format!("/uploads/{}", up.id));
    let in_complete = cut.phase == COMPLETE;
    if in_complete {
        t.completes_cut += 1;
        // The assembly may or may not have published the blob: either none, or the exact bytes.
        let r = must_get(addr, &blob_target);
        match r.status {
            404 => {}
            200 => {
                assert_eq!(
                    blob_id(&r.body),
                    up.blob.hash,
                    "{what}: a blob published by a cut assembly does not match its id"
                );
                t.completes_already_published += 1;
            }
            s => panic!("{what}: GET blob after a cut complete: {s} {}", r.text()),
        }
    } else {
        t.uploads_cut_in_chunks += 1;
    }
    let r = must_get(addr, &status_target);
    match r.status {
        200 => {}
        404 if in_complete => {
            // The assembly finished and removed the upload: the blob must be there.
            let r = must_get(addr, &blob_target);
            if r.status != 200 {
                panic!("{what}: upload {} is gone after a cut complete, but blob {} is not stored ({})", up.id, up.blob.hash, r.status);
            }
            check_blob(addr, &up.blob.hash, up.blob.len, what);
            return Some(up.blob.clone());
        }
        s => {
            panic!("{what}: upload {} with chunks {:?} acknowledged is not resumable after the restart: {s} {}", up.id, up.acked, r.text());
        }
    }
    let status = r.json();
    let received: BTreeSet<usize> = status["received"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: upload status {status}"))
        .iter()
        .map(|v| v.as_u64().expect("index") as usize)
        .collect();
    if !in_complete {
        // A process crash loses no acknowledged chunk (only an OS crash may).
        let missing: Vec<_> = up.acked.difference(&received).collect();
        if !missing.is_empty() {
            panic!("{what}: acknowledged chunks {missing:?} of upload {} are gone after the restart (received {received:?})", up.id);
        }
    }
    let data = up.blob.data();
    for (index, piece) in data.chunks(up.chunk_size).enumerate() {
        if received.contains(&index) {
            continue;
        }
        let md5 = md5_hex(piece);
        let r = http_request(
            addr,
            "PUT",
            &api(&format!("/uploads/{}/{index}", up.id)),
            &[("X-Checksum-MD5", md5.as_str())],
            piece,
        )
        .unwrap_or_else(|e| panic!("{what}: re-PUT chunk {index}: {e}"));
        assert!(
            r.status / 100 == 2,
            "{what}: re-PUT chunk {index}: {} {}",
            r.status,
            r.text()
        );
        t.chunks_resent += 1;
    }
    let r = http_request(
        addr,
        "POST",
        &api(&format!("/uploads/{}/complete", up.id)),
        &[],
        b"",
    )
    .unwrap_or_else(|e| panic!("{what}: complete after resuming: {e}"));
    assert!(
        r.status == 200 || r.status == 201,
        "{what}: complete after resuming upload {}: {} {}",
        up.id,
        r.status,
        r.text()
    );
    let info = r.json();
    assert_eq!(
        info["hash"].as_str(),
        Some(up.blob.hash.as_str()),
        "{what}: a resumed upload completed to a different blob: {info}"
    );
    check_blob(addr, &up.blob.hash, up.blob.len, what);
    assert_eq!(
        must_get(addr, &status_target).status,
        404,
        "{what}: a completed upload is still listed"
    );
    if in_complete {
        t.completes_redone += 1;
    } else {
        t.uploads_resumed += 1;
    }
    Some(up.blob.clone())
}

/// Checks the restarted server against the model and updates it with what the client was told.
fn check_after_restart(
    addr: SocketAddr,
    model: &mut Model,
    outcome: &ClientOutcome,
    t: &mut Tally,
    what: &str,
) {
    let health = must_get(addr, "/healthz");
    assert_eq!(health.status, 200, "{what}: /healthz after the restart");

    for (commit, path, hash) in &outcome.commits {
        model.acked.push(commit.clone());
        model.head = commit.clone();
        model.files.insert(path.clone(), hash.clone());
    }
    t.commits_acked += outcome.commits.len();
    t.blobs_acked += outcome.blobs.len();

    // The head: the last acknowledged commit, or the commit in flight on top of it.
    let head = repo_head(addr);
    let history = log(addr);
    assert_eq!(
        history.first().map(|c| c.0.as_str()),
        Some(head.as_str()),
        "{what}: the log does not start at the head"
    );
    if head != model.head {
        let in_flight = outcome.interrupted.as_ref().and_then(|i| i.commit.clone());
        match in_flight {
            Some((path, hash)) if history[0].1.as_deref() == Some(model.head.as_str()) => {
                t.unacked_commit_landed += 1;
                model.head = head.clone();
                model.files.insert(path, hash);
            }
            _ => {
                panic!(
                    "{what}: the head is {head} (parent {:?}), but the last acknowledged commit is {} and no commit was in flight on top of it",
                    history[0].1, model.head
                );
            }
        }
    } else if outcome
        .interrupted
        .as_ref()
        .is_some_and(|i| i.commit.is_some())
    {
        t.unacked_commit_absent += 1;
    }
    // Every acknowledged commit is in the log, in order.
    let position: HashMap<&str, usize> = history
        .iter()
        .enumerate()
        .map(|(i, c)| (c.0.as_str(), i))
        .collect();
    let mut previous = usize::MAX;
    for commit in &model.acked {
        let Some(&p) = position.get(commit.as_str()) else {
            panic!("{what}: acknowledged commit {commit} is not in the log after the restart");
        };
        assert!(
            p < previous,
            "{what}: acknowledged commit {commit} is out of order in the log"
        );
        previous = p;
    }
    // Every path holds what its last commit put there, and nothing else exists.
    let found = files(addr);
    if found != model.files {
        panic!("{what}: the files after the restart differ from the acknowledged ones:\n found {found:?}\n want {:?}", model.files);
    }
    // Every blob acknowledged in this iteration reads back and matches its id.
    for blob in &outcome.blobs {
        check_blob(addr, &blob.hash, blob.len, what);
    }
    model.blobs.extend(outcome.blobs.iter().cloned());
    // The interrupted upload resumes (or its assembly already finished).
    if let Some(cut) = &outcome.interrupted {
        if let Some(up) = &cut.upload {
            if let Some(blob) = resume_upload(addr, cut, up, t, what) {
                model.blobs.push(blob);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. kill -9 during uploads and commits, looped
// ---------------------------------------------------------------------------------------

#[test]
fn kill_nine_during_uploads_and_commits_loses_nothing_acknowledged() {
    let started = Instant::now();
    let data = tempfile::tempdir().expect("data dir");
    let mut server = ServerProcess::start_in(data.path(), &[]);
    let mut rng = XorShift::new(0xC2A5_4001);
    let mut model = Model {
        head: repo_head(server.addr),
        acked: Vec::new(),
        files: BTreeMap::new(),
        blobs: Vec::new(),
    };
    let mut t = Tally::default();
    let mut fsck_last = String::new();

    for iteration in 0..KILLS {
        if started.elapsed() > LOOP_BUDGET {
            println!("crash loop: time budget of {LOOP_BUDGET:?} spent after {iteration} kills");
            break;
        }
        let what = format!("kill {iteration}");
        let shared = Arc::new(Shared::default());
        let aimed = aim(&mut rng);
        // A few earlier blobs, so that some uploads repeat a stored blob.
        let reuse: Vec<BlobRec> = model
            .blobs
            .iter()
            .rev()
            .take(4)
            .filter(|b| b.len <= 2 * MIB as usize)
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel();
        let client_shared = shared.clone();
        let (addr, client_seed) = (server.addr, rng.next_u64());
        let base = (iteration as u64 + 1) << 20;
        std::thread::spawn(move || {
            let _ = tx.send(run_client(addr, client_seed, base, reuse, client_shared));
        });

        // Wait for the aimed request (bounded), then the delay, then SIGKILL.
        let begin = Instant::now();
        if aimed.phase != IDLE {
            while shared.started[aimed.phase as usize].load(Ordering::SeqCst) < aimed.n
                && !shared.done.load(Ordering::SeqCst)
                && begin.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        std::thread::sleep(aimed.delay);
        let phase_at_kill = shared.phase.load(Ordering::SeqCst);
        shared.killed.store(true, Ordering::SeqCst);
        server.kill();
        t.kills += 1;
        t.at_kill[phase_at_kill as usize] += 1;
        let outcome = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{what}: the client thread did not finish: {e}"));
        let server_log = server.log();
        assert!(
            outcome.unexpected.is_empty(),
            "{what}: answers that break the contract: {:?}\nserver log:\n{server_log}",
            outcome.unexpected
        );
        if let Some(cut) = &outcome.interrupted {
            t.lost_request[cut.phase as usize] += 1;
        }

        // The store exactly as the crash left it.
        let (ok, report) = fsck(data.path());
        t.fsck_runs += 1;
        assert!(
            ok,
            "{what}: govcfs fsck found damage after the kill ({aimed:?}, at {}):\n{report}",
            PHASES[phase_at_kill as usize]
        );
        fsck_last = report;

        drop(server);
        server = ServerProcess::start_in(data.path(), &[]);
        check_after_restart(server.addr, &mut model, &outcome, &mut t, &what);
        let log = server.log();
        assert!(
            !log.contains("panicked"),
            "{what}: the restarted server panicked:\n{log}"
        );
    }

    // Every blob the server ever reported, read back once more.
    let mut checked = HashSet::new();
    for blob in &model.blobs {
        if checked.insert(blob.hash.clone()) {
            check_blob(server.addr, &blob.hash, blob.len, "final check");
        }
    }
    server.kill();
    let (ok, report) = fsck(data.path());
    assert!(ok, "final govcfs fsck:\n{report}");
    let garbage = census(data.path());

    println!(
        "crash loop: {} kills in {:.1} s",
        t.kills,
        started.elapsed().as_secs_f64()
    );
    println!("  kills by what the client was doing at the kill:");
    for (i, name) in PHASES.iter().enumerate() {
        println!(
            "    {name:<22} {:>3} (requests cut or refused: {})",
            t.at_kill[i], t.lost_request[i]
        );
    }
    println!("  commits acknowledged: {} (all in the log, in order); in-flight commits that landed: {}, that did not: {}", t.commits_acked, t.unacked_commit_landed, t.unacked_commit_absent);
    println!(
        "  uploads completed and acknowledged: {}; distinct blobs verified at the end: {}",
        t.blobs_acked,
        checked.len()
    );
    println!(
        "  uploads cut during chunk PUTs: {} (resumed and completed: {}); completes cut: {} (blob already published: {}, completed again: {}); chunks re-sent: {}",
        t.uploads_cut_in_chunks, t.uploads_resumed, t.completes_cut, t.completes_already_published, t.completes_redone, t.chunks_resent
    );
    println!(
        "  govcfs fsck runs on the crashed store: {} (all clean); last: {}",
        t.fsck_runs + 1,
        fsck_last.lines().last().unwrap_or("")
    );
    println!("  garbage after {} kills: {garbage}", t.kills);
    println!("  anything lost: 0 (every check above fails the test at the first loss)");

    assert!(
        t.kills >= 50,
        "only {} kills within the time budget",
        t.kills
    );
    // The kills really landed where they were aimed (each phase several times).
    for phase in [CHUNK, COMPLETE, COMMIT] {
        assert!(
            t.at_kill[phase as usize] >= 3,
            "only {} kills during {}",
            t.at_kill[phase as usize],
            PHASES[phase as usize]
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Garbage left by repeated kills
// ---------------------------------------------------------------------------------------

/// Names in `dir` (empty if it does not exist).
fn names_in(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts an upload of `data` in chunks of `chunk` bytes and sends every chunk; returns its id.
fn upload_all_chunks(addr: SocketAddr, data: &[u8], chunk: usize) -> String {
    let r =
        post_json(addr, &api("/uploads"), &json!({ "chunk_size": chunk })).expect("start upload");
    assert!(
        r.status == 200 || r.status == 201,
        "start upload: {} {}",
        r.status,
        r.text()
    );
    let id = r.json()["upload_id"]
        .as_str()
        .expect("upload_id")
        .to_string();
    for (index, piece) in data.chunks(chunk).enumerate() {
        let md5 = md5_hex(piece);
        let r = http_request(
            addr,
            "PUT",
            &api(&format!("/uploads/{id}/{index}")),
            &[("X-Checksum-MD5", md5.as_str())],
            piece,
        )
        .expect("PUT chunk");
        assert!(
            r.status / 100 == 2,
            "PUT chunk {index}: {} {}",
            r.status,
            r.text()
        );
    }
    id
}

/// `complete`s an upload; returns the blob id.
fn complete(addr: SocketAddr, id: &str) -> String {
    let r = http_request(
        addr,
        "POST",
        &api(&format!("/uploads/{id}/complete")),
        &[],
        b"",
    )
    .expect("complete");
    assert!(
        r.status == 200 || r.status == 201,
        "complete {id}: {} {}",
        r.status,
        r.text()
    );
    r.json()["hash"].as_str().expect("hash").to_string()
}

/// With a chunk size that is not a multiple of the store's 4 MiB, `complete` reads the raw
/// upload chunks back and cuts them into store chunks, each written under its hash; a kill
/// in between leaves chunks that no manifest names yet. The local store belongs to one
/// server, so once a restarted server is idle none of them is live: the test expects them
/// swept at startup (never a chunk a manifest names), not more garbage per kill.
#[test]
fn kills_during_assembly_leave_no_unreferenced_chunks_after_a_restart() {
    const ROUNDS: usize = 8;
    let data = tempfile::tempdir().expect("data dir");
    let chunks = data.path().join("repos/default/chunks");
    let mut server = ServerProcess::start_in(data.path(), &[]);
    let mut hits = 0;
    let mut after_each = Vec::new();
    for round in 0..ROUNDS {
        let blob = random_bytes(16 * MIB as usize + round * 777, 900 + round as u64);
        let want = blob_id(&blob);
        let id = upload_all_chunks(server.addr, &blob, MIB as usize);
        let before = files_under(&chunks).len();
        // `complete` on a helper thread; the kill comes once the assembly has written a
        // chunk, a few milliseconds later in each round (early and late in the assembly).
        let (tx, rx) = mpsc::channel();
        let (addr, target) = (server.addr, api(&format!("/uploads/{id}/complete")));
        std::thread::spawn(move || {
            let _ = tx.send(http_request(addr, "POST", &target, &[], b"").map(|r| r.status));
        });
        let seen = common::wait_until(Duration::from_secs(20), || {
            files_under(&chunks).len() > before
        });
        std::thread::sleep(Duration::from_millis(
            [0, 2, 5, 10, 20, 40, 80, 160][round % 8],
        ));
        server.kill();
        let answered = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the complete thread finished");
        // The kill cut the assembly when `complete` got no answer.
        let cut = seen && answered.is_err();
        hits += usize::from(cut);
        drop(server);
        server = ServerProcess::start_in(data.path(), &[]);
        let swept = census(data.path());
        // The cut assembly is redone (or had finished): the blob is right either way.
        let status = must_get(server.addr, &api(&format!("/uploads/{id}"))).status;
        if status == 200 {
            assert_eq!(
                complete(server.addr, &id),
                want,
                "round {round}: the assembly redone after the kill"
            );
        }
        check_blob(server.addr, &want, blob.len(), &format!("round {round}"));
        println!("round {round}: assembly cut by the kill: {cut} (complete answered: {answered:?}); after the restart: {swept}; upload: {status}");
        after_each.push(swept.unreferenced_chunks + swept.staging_files);
    }
    println!("after {hits} kills during assembly: unreferenced chunks and staging files after each restart: {after_each:?}");
    assert!(
        hits >= ROUNDS / 2,
        "only {hits} of {ROUNDS} kills landed during an assembly"
    );
    assert!(
        after_each.iter().all(|n| *n == 0),
        "a restarted server left what killed assemblies wrote (after each round: {after_each:?})"
    );
}

// ---------------------------------------------------------------------------------------
// 3. govcfs fsck finds real damage
// ---------------------------------------------------------------------------------------

/// Uploads `data` and commits it at `path`; returns (blob id, commit id).
fn put_file(addr: SocketAddr, path: &str, data: &[u8]) -> (String, String) {
    let id = upload_all_chunks(addr, data, 4 * MIB as usize);
    let hash = complete(addr, &id);
    assert_eq!(hash, blob_id(data));
    let r = post_json(
        addr,
        &api("/commits"),
        &json!({ "message": path, "changes": [{ "op": "put", "path": path, "hash": hash }] }),
    )
    .expect("commit");
    assert_eq!(r.status, 201, "commit {path}: {}", r.text());
    (
        hash,
        r.json()["commit"].as_str().expect("commit").to_string(),
    )
}

fn flip_byte(file: &Path, offset: u64) {
    let mut bytes = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    bytes[offset as usize] ^= 0x20;
    std::fs::write(file, bytes).expect("write the damaged file");
}

fn truncate(file: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(len))
        .expect("truncate");
}

fn file_len(file: &Path) -> u64 {
    std::fs::metadata(file)
        .unwrap_or_else(|e| panic!("stat {}: {e}", file.display()))
        .len()
}

#[test]
fn fsck_names_a_flipped_byte_a_truncated_tree_or_commit_and_a_ref_to_a_missing_commit() {
    let data = tempfile::tempdir().expect("data dir");
    let mut server = ServerProcess::start_in(data.path(), &[]);
    let addr = server.addr;
    // v1 of a/b/one.bin is only in the history once v2 replaces it.
    let (v1, v2) = (
        random_bytes(300 * KIB as usize + 1, 31),
        random_bytes(200 * KIB as usize + 3, 32),
    );
    let (v1_id, c1) = put_file(addr, "a/b/one.bin", &v1);
    let (_, _c2) = put_file(addr, "top.txt", b"top\n");
    let (v2_id, _c3) = put_file(addr, "a/b/one.bin", &v2);
    let subtree = must_json(addr, &api("/stat/a/b"))["hash"]
        .as_str()
        .expect("hash")
        .to_string();
    server.kill();
    let (ok, clean) = fsck(data.path());
    assert!(
        ok && clean.contains("no damage"),
        "fsck of the undamaged store: {clean}"
    );
    println!("undamaged: {}", clean.trim());

    let missing = blob_id(b"a commit that was never written");
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, Vec<String>)> = vec![
        (
            "one flipped byte in a chunk of a blob only the history holds",
            Box::new({
                let v1 = v1.clone();
                move |d: &Path| flip_byte(&chunk_file(d, &v1), 150 * KIB)
            }),
            vec![v1_id.clone(), sha256_hex(&v1), "a/b/one.bin".to_string()],
        ),
        (
            "one flipped byte in a chunk of a blob at the head",
            Box::new({
                let v2 = v2.clone();
                move |d: &Path| flip_byte(&chunk_file(d, &v2), 0)
            }),
            vec![v2_id.clone(), sha256_hex(&v2)],
        ),
        (
            "a chunk cut short by one byte",
            Box::new({
                let v2 = v2.clone();
                move |d: &Path| truncate(&chunk_file(d, &v2), file_len(&chunk_file(d, &v2)) - 1)
            }),
            vec![v2_id.clone(), sha256_hex(&v2)],
        ),
        (
            "a missing chunk",
            Box::new({
                let v2 = v2.clone();
                move |d: &Path| std::fs::remove_file(chunk_file(d, &v2)).expect("remove")
            }),
            vec![v2_id.clone(), sha256_hex(&v2), "missing".to_string()],
        ),
        (
            "a truncated tree",
            Box::new({
                let id = subtree.clone();
                move |d: &Path| truncate(&object_file(d, &id), file_len(&object_file(d, &id)) / 2)
            }),
            vec![subtree.clone()],
        ),
        (
            "a truncated commit in the history",
            Box::new({
                let id = c1.clone();
                move |d: &Path| truncate(&object_file(d, &id), file_len(&object_file(d, &id)) / 2)
            }),
            vec![c1.clone()],
        ),
        (
            "a ref pointing at a missing commit",
            Box::new({
                let id = missing.clone();
                move |d: &Path| {
                    std::fs::write(d.join("repos/default/refs/heads/broken"), &id)
                        .expect("write the ref")
                }
            }),
            vec!["broken".to_string(), missing.clone()],
        ),
    ];
    for (what, damage, needles) in &cases {
        let copy = tempfile::tempdir().expect("copy dir");
        copy_dir(data.path(), copy.path());
        damage(copy.path());
        let (ok, report) = fsck(copy.path());
        assert!(!ok, "{what}: govcfs fsck exited 0:\n{report}");
        let damaged: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with("damaged:"))
            .collect();
        assert!(!damaged.is_empty(), "{what}: no `damaged:` line:\n{report}");
        for needle in needles {
            assert!(
                damaged.iter().any(|l| l.contains(needle.as_str())),
                "{what}: the report does not name {needle}:\n{report}"
            );
        }
        println!("{what}: {}", damaged.join(" | "));
    }
}

// ---------------------------------------------------------------------------------------
// 4. A repository whose creation was cut by the kill
// ---------------------------------------------------------------------------------------

/// Attempts of each cut below: each is a fresh try at landing the kill in the window.
const CUT_ATTEMPTS: usize = 12;

/// Waits (busy, bounded by `timeout`) until `ready` holds or `gone` says to stop; returns
/// whether `ready` held.
fn spin_until(
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
    mut gone: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        if gone() {
            return false;
        }
        std::thread::yield_now();
    }
    false
}

/// `Store::create_repo` writes the empty tree, the first commit, the ref (fsynced rename), and
/// only then `config.json` (fsynced rename). The kills here come as soon as the ref file
/// appears, so they land between the two, and the test checks that the restarted server can
/// use (or create) the repository. Both ways in: the `default` repository made by the very
/// first start of a server, and `POST /api/v1/repos`.
#[test]
fn a_kill_during_repository_creation_leaves_the_repository_usable_or_creatable() {
    // The first start of a server on an empty directory, killed once the default ref exists.
    let mut cut_default = None;
    for attempt in 0..CUT_ATTEMPTS {
        let data = tempfile::tempdir().expect("data dir");
        let mut child = Command::new(common::GOVCFS)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn govcfs serve");
        let main_ref = data.path().join("repos/default/refs/heads/main");
        spin_until(
            Duration::from_secs(20),
            || main_ref.exists(),
            || child.try_wait().is_ok_and(|s| s.is_some()),
        );
        common::kill_child(&mut child);
        let config = data.path().join("repos/default/config.json");
        if main_ref.exists() && !config.exists() {
            println!("first start of a server killed between the default ref and its config (attempt {attempt})");
            cut_default = Some(data);
            break;
        }
    }
    // A `POST /api/v1/repos`, killed once the new repository's ref exists.
    let data = tempfile::tempdir().expect("data dir");
    let mut cut_repo = None;
    for attempt in 0..CUT_ATTEMPTS {
        let mut server = ServerProcess::start_in(data.path(), &[]);
        let name = format!("proj{attempt}");
        let (addr, body) = (server.addr, json!({ "id": name }));
        let poster =
            std::thread::spawn(move || post_json(addr, "/api/v1/repos", &body).map(|r| r.status));
        let repo_ref = data.path().join(format!("repos/{name}/refs/heads/main"));
        spin_until(
            Duration::from_secs(20),
            || repo_ref.exists(),
            || poster.is_finished(),
        );
        server.kill();
        let answer = poster.join().expect("the POST thread");
        if repo_ref.exists()
            && !data
                .path()
                .join(format!("repos/{name}/config.json"))
                .exists()
        {
            println!("POST /api/v1/repos {name} killed between its ref and its config (attempt {attempt}; client saw {answer:?})");
            cut_repo = Some(name);
            break;
        }
    }
    let (Some(cut_default), Some(cut_repo)) = (cut_default, cut_repo) else {
        panic!("no kill landed between a ref and a config in {CUT_ATTEMPTS} attempts each");
    };

    let server = ServerProcess::start_in(cut_default.path(), &[]);
    let default = must_get(server.addr, "/api/v1/repos/default/tree/");
    println!(
        "after the cut first start: GET default tree {} {}",
        default.status,
        default.text()
    );
    let (ok, report) = fsck(cut_default.path());
    println!(
        "govcfs fsck of that store: exit ok = {ok}: {}",
        report.trim().replace('\n', " | ")
    );
    drop(server);

    let server = ServerProcess::start_in(data.path(), &[]);
    let created =
        post_json(server.addr, "/api/v1/repos", &json!({ "id": cut_repo })).expect("create again");
    let repo = must_get(server.addr, &format!("/api/v1/repos/{cut_repo}/tree/"));
    println!(
        "after the cut POST: POST {cut_repo} again {} {}; GET {cut_repo} tree {} {}",
        created.status,
        created.text(),
        repo.status,
        repo.text()
    );
    assert_eq!(default.status, 200, "the default repository must always exist (CONTRACT §1), even after a kill during its creation");
    assert_eq!(
        repo.status,
        200,
        "{cut_repo} can neither be used ({}) nor created again ({} {})",
        repo.status,
        created.status,
        created.text()
    );
}

// ---------------------------------------------------------------------------------------
// 5. A mount killed during a cp (the server side; the recovery side is in mount_write.rs)
// ---------------------------------------------------------------------------------------

/// Upload chunks the server has recorded in upload directories (`.ref`: stored as chunks on
/// arrival; `.chunk`: raw bytes).
fn stored_chunks(data: &Path) -> usize {
    files_under(&data.join("repos/default/uploads"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ref" || e == "chunk"))
        .count()
}

#[test]
fn a_mount_killed_during_cp_leaves_the_old_version_and_a_clean_store() {
    let data = tempfile::tempdir().expect("data dir");
    let work = tempfile::tempdir().expect("work dir");
    let cache = tempfile::tempdir().expect("cache dir");
    let mut server = ServerProcess::start_in(data.path(), &[]);
    let repo_url = server.repo_url("default");
    let old = random_bytes(6 * MIB as usize + 5, 51);
    let old_path = work.path().join("old.bin");
    std::fs::write(&old_path, &old).expect("write old.bin");
    run_cli_with(
        &[
            "put",
            old_path.to_str().expect("UTF-8"),
            &format!("{repo_url}/big.bin"),
        ],
        &[],
        Duration::from_secs(120),
    )
    .assert_success("govcfs put");
    let new_path = work.path().join("new.bin");
    write_fast_random_file(&new_path, 256 * MIB, 52);

    let mnt = mount_support::MountGuard::start(
        &repo_url,
        &["--cache-dir", cache.path().to_str().expect("UTF-8")],
    );
    let mut cp = Command::new("cp")
        .arg(&new_path)
        .arg(mnt.path().join("big.bin"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cp");
    // The kill comes once the server holds streamed chunks of the new version.
    let streamed = common::wait_until(Duration::from_secs(120), || {
        stored_chunks(data.path()) >= 2 || cp.try_wait().is_ok_and(|s| s.is_some())
    });
    let cp_running = cp.try_wait().is_ok_and(|s| s.is_none());
    let chunks_at_kill = stored_chunks(data.path());
    mnt.kill_hard();
    let cp_status = common::wait_child(&mut cp, Duration::from_secs(60));
    if cp_status.is_none() {
        common::kill_child(&mut cp);
    }
    assert!(
        streamed && cp_running,
        "the mount was not killed during the cp (streamed: {streamed}, cp running: {cp_running})"
    );
    let cp_status = cp_status.expect("cp exits once its mount is gone");
    println!("mount killed with {chunks_at_kill} chunks of the new version on the server; cp: {cp_status}");
    assert!(
        !cp_status.success(),
        "cp reported success although the mount died before the file was closed"
    );

    // The server still has the old version, and the half-sent new one never became a blob.
    let stat = must_json(server.addr, &api("/stat/big.bin"));
    assert_eq!(
        stat["hash"].as_str(),
        Some(blob_id(&old).as_str()),
        "big.bin changed although cp never closed it"
    );
    check_blob(server.addr, &blob_id(&old), old.len(), "old big.bin");
    let new_id = blob_id_of_file(&new_path);
    assert_eq!(
        must_get(server.addr, &api(&format!("/blobs/{new_id}"))).status,
        404,
        "the unfinished new version is stored as a blob"
    );
    server.kill();
    let (ok, report) = fsck(data.path());
    assert!(ok, "govcfs fsck after the mount was killed:\n{report}");
    println!(
        "store after the mount was killed: {}; fsck: {}",
        census(data.path()),
        report.lines().last().unwrap_or("")
    );
}
