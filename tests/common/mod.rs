//! Shared helpers of the integration tests: the real `govcfs` server as a child process,
//! running CLI commands with their peak memory, raw HTTP over loopback, large pseudo-random
//! files and streaming file comparison.
//!
//! Every helper is bounded in time: nothing here can hang a test run forever. Processes are
//! only ever signalled by their own PID.
//!
//! Use it from a test file with `mod common;` and `use common::*;`.

#![allow(dead_code)]

pub mod s3;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the `govcfs` binary built by cargo for this test run.
pub const GOVCFS: &str = env!("CARGO_BIN_EXE_govcfs");

/// How long a server may take to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variables removed from every child so that loopback traffic never goes
/// through a proxy configured on the machine.
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Where a server keeps its data: a private temporary directory, or one the test owns.
enum DataDir {
    Owned(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(t) => t.path(),
            DataDir::Given(p) => p,
        }
    }
}

/// A running `govcfs serve` child process on an ephemeral loopback port.
///
/// Its stderr (the log) goes to a file, readable with [`ServerProcess::log`]. Dropping the
/// value kills the process (by its own PID) and reaps it.
pub struct ServerProcess {
    child: Child,
    /// The address the server listens on (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    data: DataDir,
    log_dir: tempfile::TempDir,
    /// The first `--auth-token` the server was started with, sent by [`Self::metrics`].
    token: Option<String>,
    /// `http` or `https` (with `--tls-cert`).
    scheme: &'static str,
    exited: Option<ExitStatus>,
}

impl ServerProcess {
    /// Starts a server on a fresh temporary data directory.
    pub fn start() -> ServerProcess {
        Self::start_with(&[])
    }

    /// Starts a server on a fresh temporary data directory with extra arguments
    /// (for example `["--auth-token", "secret"]` or `["--max-upload-size", "1M"]`).
    pub fn start_with(extra_args: &[&str]) -> ServerProcess {
        let data = tempfile::tempdir().expect("create a data directory");
        Self::spawn(DataDir::Owned(data), extra_args, &[])
            .unwrap_or_else(|e| panic!("cannot start the server: {e}"))
    }

    /// Starts a server on the given data directory (kept after the server stops, so a test
    /// can restart a server on the same data).
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
        Self::spawn(DataDir::Given(data_dir.to_path_buf()), extra_args, &[])
            .unwrap_or_else(|e| panic!("cannot start the server: {e}"))
    }

    /// Starts a server on `store_url` (an `s3://` prefix of `s3`) with extra arguments.
    pub fn start_on_s3(s3: &s3::S3Server, store_url: &str, extra_args: &[&str]) -> ServerProcess {
        let data = tempfile::tempdir().expect("create a scratch directory");
        let mut args = vec!["--store", store_url];
        args.extend_from_slice(extra_args);
        Self::spawn(DataDir::Owned(data), &args, &s3.env())
            .unwrap_or_else(|e| panic!("cannot start the server on {store_url}: {e}"))
    }

    fn spawn(
        data: DataDir,
        extra_args: &[&str],
        envs: &[(&str, String)],
    ) -> Result<ServerProcess, String> {
        let log_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log_path = log_dir.path().join("server.log");
        let log_file = File::create(&log_path).map_err(|e| e.to_string())?;
        let mut command = Command::new(GOVCFS);
        command.arg("serve");
        if !extra_args.contains(&"--store") {
            command.arg("--data").arg(data.path());
        }
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        command.envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        let mut child = command
            .spawn()
            .map_err(|e| format!("spawn {GOVCFS}: {e}"))?;
        let token = extra_args
            .iter()
            .position(|a| *a == "--auth-token")
            .and_then(|i| extra_args.get(i + 1))
            .map(|t| t.to_string());

        // Read the listening line on a thread so that a silent server cannot hang the test;
        // the thread then keeps draining stdout so the server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line.clone());
            let _ = tx.send(first);
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let mut server = ServerProcess {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            data,
            log_dir,
            token,
            scheme: "http",
            exited: None,
        };
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                return Err(format!(
                    "reading the server's stdout: {e}; log: {}",
                    server.log()
                ))
            }
            Err(_) => {
                return Err(format!(
                    "no listening line within {STARTUP_TIMEOUT:?}; log: {}",
                    server.log()
                ))
            }
        };
        let listening = line.trim_end().strip_prefix("govcfs: listening on ");
        let (scheme, addr) = match listening {
            Some(rest) if rest.starts_with("https://") => ("https", &rest[8..]),
            Some(rest) if rest.starts_with("http://") => ("http", &rest[7..]),
            _ => {
                return Err(format!(
                    "unexpected first stdout line {line:?}; log: {}",
                    server.log()
                ))
            }
        };
        server.scheme = scheme;
        server.addr = addr
            .parse()
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        if !server.addr.ip().is_loopback() {
            return Err(format!(
                "server listens on a non-loopback address {}",
                server.addr
            ));
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), without a trailing slash.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `http://127.0.0.1:PORT/REPO`, the URL `mount` and the CLI take.
    pub fn repo_url(&self, repo: &str) -> String {
        format!("{}/{repo}", self.url())
    }

    /// `http://127.0.0.1:PORT/api/v1/repos/REPO`.
    pub fn api(&self, repo: &str) -> String {
        format!("{}/api/v1/repos/{repo}", self.url())
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size of the server so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident set size of the server (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The server's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("server.log")).unwrap_or_default()
    }

    /// The `/metrics` page (sent with the server's token if it has one). Blocking; safe to
    /// call from inside or outside a tokio runtime.
    pub fn metrics(&self) -> String {
        let mut headers = Vec::new();
        if let Some(t) = &self.token {
            headers.push(("Authorization".to_string(), format!("Bearer {t}")));
        }
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let response =
            http_request(self.addr, "GET", "/metrics", &headers, b"").expect("GET /metrics");
        assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
        response.text()
    }

    /// The value of one sample of `/metrics`: `name` is the metric name with its labels
    /// exactly as printed (e.g. `govcfs_commits_total`). `None` when absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics(), name)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the server, by its PID.
    pub fn signal(&self, signal: i32) {
        if self.exited.is_none() {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(self.pid() as libc::pid_t, signal);
            }
        }
    }

    /// Waits up to `timeout` for the server to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_none()
    }

    /// Kills the server (SIGKILL, by its PID) and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a `KiB` field such as `VmHWM:` from `/proc/PID/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What a [`ProcSampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSamples {
    /// Largest `VmRSS` seen, in KiB.
    pub max_rss_kib: u64,
    /// Seconds after the start of sampling at which `max_rss_kib` was seen.
    pub max_rss_at_secs: f64,
    /// Largest `Threads` count seen.
    pub max_threads: u64,
    /// Number of samples taken.
    pub samples: u64,
}

/// Samples `/proc/PID/status` (VmRSS, Threads) every 100 ms on a thread, for diagnostics
/// (when during a run memory peaked, how many threads the process used). Stops when the
/// process is gone, on [`ProcSampler::stop`], or on drop.
pub struct ProcSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<ProcSamples>>,
}

impl ProcSampler {
    /// Starts sampling process `pid`.
    pub fn start(pid: u32) -> ProcSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen = ProcSamples::default();
            // Bounded: at most 2 hours of samples.
            for _ in 0..72_000 {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Some(rss) = proc_status_kib(pid, "VmRSS:") else {
                    break;
                };
                seen.samples += 1;
                if rss > seen.max_rss_kib {
                    seen.max_rss_kib = rss;
                    seen.max_rss_at_secs = started.elapsed().as_secs_f64();
                }
                if let Some(threads) = proc_status_kib(pid, "Threads:") {
                    seen.max_threads = seen.max_threads.max(threads);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        ProcSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling and returns what was seen.
    pub fn stop(mut self) -> ProcSamples {
        self.finish()
    }

    fn finish(&mut self) -> ProcSamples {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ProcSampler {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The value of the sample `name` (metric name plus labels, as printed) in a Prometheus
/// text page.
pub fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

/// The outcome of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Peak resident set size of the child (`ru_maxrss` from `wait4`), in KiB.
    pub peak_rss_kib: u64,
    /// Wall time the command took (informational only).
    pub elapsed: Duration,
}

impl CliOutput {
    /// Stdout as (lossy) UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with the command's output unless it exited with status 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed ({:?}); stdout: {}; stderr: {}",
            self.status,
            self.stdout_text(),
            self.stderr
        );
        self
    }
}

/// Time a CLI command may take by default.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads a child's pipe to the end on its own thread (so neither pipe can fill and block it).
pub fn drain_on_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `govcfs ARGS…` and returns its status, output and peak memory.
pub fn run_cli(args: &[&str]) -> CliOutput {
    run_cli_with(args, &[], CLI_TIMEOUT)
}

/// Runs `govcfs ARGS…` with extra environment variables and a time limit. A command still
/// running at the limit is killed (by its PID) and the test panics.
///
/// The child is reaped with `wait4(2)`, whose `rusage.ru_maxrss` gives its peak RSS.
/// `RUST_LOG` and proxy variables are removed from the child's environment so its stderr
/// and its network path do not depend on the caller's shell.
pub fn run_cli_with(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> CliOutput {
    let mut command = Command::new(GOVCFS);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    for (k, v) in envs {
        command.env(k, v);
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {GOVCFS}: {e}"));
    let pid = child.id() as libc::pid_t;
    let out_pipe = child.stdout.take().expect("piped stdout");
    let err_pipe = child.stderr.take().expect("piped stderr");
    let out_thread = drain_on_thread(out_pipe);
    let err_thread = drain_on_thread(err_pipe);
    let deadline = started + timeout;
    let mut raw_status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: wait4 on our own child's PID with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut raw_status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("wait4({pid}): {e}");
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: SIGKILL to our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut raw_status, 0, &mut usage);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    // The child is reaped: std's Child must not wait for it again (dropping it does not).
    drop(child);
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_thread.join().unwrap_or_default()).into_owned();
    use std::os::unix::process::ExitStatusExt;
    let output = CliOutput {
        status: ExitStatus::from_raw(raw_status),
        stdout,
        stderr,
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
        elapsed,
    };
    if timed_out {
        panic!(
            "govcfs {args:?} did not finish within {timeout:?}; stderr: {}",
            output.stderr
        );
    }
    output
}

/// A xorshift64* generator: fast, deterministic, good enough to defeat compression and
/// deduplication.
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let last = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    XorShift::new(seed).fill(&mut buf);
    buf
}

/// Writes a file of `len` pseudo-random bytes from `seed`, 1 MiB at a time (memory stays
/// at one buffer whatever the size).
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    const BUF: usize = 1 << 20;
    let mut rng = XorShift::new(seed);
    let mut file = File::create(path)?;
    let mut buf = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Compares two files in 1 MiB pieces. `Ok(None)` when they are byte-identical, otherwise
/// the offset of the first difference (a length mismatch counts as a difference at the end
/// of the shorter file).
pub fn first_difference(a: &Path, b: &Path) -> std::io::Result<Option<u64>> {
    const BUF: usize = 1 << 20;
    let mut fa = BufReader::with_capacity(BUF, File::open(a)?);
    let mut fb = BufReader::with_capacity(BUF, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; BUF], vec![0u8; BUF]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .expect("slices differ");
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

/// Panics unless the two files are byte-identical, naming the first differing offset.
pub fn assert_files_equal(a: &Path, b: &Path) {
    match first_difference(a, b) {
        Ok(None) => {}
        Ok(Some(offset)) => panic!(
            "{} and {} differ at byte {offset}",
            a.display(),
            b.display()
        ),
        Err(e) => panic!("cannot compare {} and {}: {e}", a.display(), b.display()),
    }
}

/// Reads until `buf` is full or the end of input.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A single-threaded tokio runtime with I/O and timers, for `runtime().block_on(…)`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs a future to completion on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// An async HTTP client for loopback tests: no proxy, the default redirect policy (up to 10
/// followed), a 5 s connect timeout and a 120 s limit per request (long enough for a 1 GiB
/// body; an event stream read through it ends after 120 s too).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("reqwest client")
}

/// A loopback port on which nothing listens (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Sends one HTTP/1.1 request over a fresh loopback connection, exactly as given: the
/// target is not normalised (so `..`, `%2e%2e` and `//` reach the server untouched).
/// `Connection: close` is added; the response is read to the end (10 s time limit).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// Parses a complete HTTP/1.1 response (`Content-Length`, chunked or read-to-close body).
pub fn parse_response(raw: &[u8], head_only: bool) -> std::io::Result<RawResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match len {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(_) => return Err(bad("body shorter than Content-Length")),
            None => rest.to_vec(),
        }
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Whether a program can be run (`PROGRAM --version` succeeds).
pub fn have_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `len` pseudo-random, incompressible bytes quickly (the debug build generates a few
/// hundred MB/s at most): each MiB is one of 16 random 1 MiB blocks, picked pseudo-randomly,
/// whose first 16 bytes are replaced by the MiB's index and the seed, so no two MiB are equal
/// and a misplaced piece of data is always detected.
pub fn write_fast_random_file(path: &Path, len: u64, seed: u64) {
    const BLOCK: usize = 1 << 20;
    let blocks: Vec<Vec<u8>> = (0..16)
        .map(|i| random_bytes(BLOCK, seed.wrapping_mul(1000).wrapping_add(i + 1)))
        .collect();
    let mut rng = XorShift::new(seed ^ 0x5EED);
    let mut file = File::create(path).expect("create the file");
    let mut buf = vec![0u8; BLOCK];
    let mut index = 0u64;
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        buf[..n].copy_from_slice(&blocks[(rng.next_u64() % 16) as usize][..n]);
        let header = [index.to_le_bytes(), seed.to_le_bytes()].concat();
        let h = n.min(16);
        buf[..h].copy_from_slice(&header[..h]);
        file.write_all(&buf[..n]).expect("write the file");
        index += 1;
        left -= n as u64;
    }
    file.sync_all().expect("sync the file");
}

/// Hex MD5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

/// The blob id of `data` (CONTRACT §3): SHA-256 of `"blob LEN\0"` + content, as
/// `git hash-object --object-format=sha256` computes it.
pub fn git_blob_id(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// [`git_blob_id`] of a local file, read 1 MiB at a time.
pub fn git_blob_id_of_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let len = std::fs::metadata(path).expect("stat").len();
    let mut file = File::open(path).expect("open");
    let mut hasher = Sha256::new();
    hasher.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}
