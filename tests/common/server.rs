//! The real `govcfs serve` as a child process on an ephemeral loopback port, the wait for
//! its listening line, and the server-plus-client setup most API tests start with.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::http::{http_client, http_request};
use super::process::{command_without_proxy, proc_status_kib, GOVCFS};
use super::s3;

/// How long a server may take to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

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
        let mut command = command_without_proxy(GOVCFS);
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
        command.envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        let mut child = command
            .spawn()
            .map_err(|e| format!("spawn {GOVCFS}: {e}"))?;
        let token = extra_args
            .iter()
            .position(|a| *a == "--auth-token")
            .and_then(|i| extra_args.get(i + 1))
            .map(|t| t.to_string());
        let listening = await_listening(&mut child);
        let mut server = ServerProcess {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            data,
            log_dir,
            token,
            scheme: "http",
            exited: None,
        };
        let (scheme, addr) = listening.map_err(|e| format!("{e}; log: {}", server.log()))?;
        server.scheme = scheme;
        server.addr = addr;
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

    /// Requests the server answered so far on routes starting with `route` (as the router
    /// names them, e.g. `/api/v1/repos/{repo}/tree`), whatever their status.
    pub fn requests_on(&self, route: &str) -> f64 {
        let prefix = format!("govcfs_http_requests_total{{route=\"{route}");
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
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

/// Waits (at most [`STARTUP_TIMEOUT`]) for the `govcfs: listening on URL` line of a server
/// spawned with piped stdout; returns its scheme and loopback address. A thread reads the
/// line, so a silent server cannot hang the test, and then keeps draining stdout, so the
/// server never blocks on a full pipe.
pub fn await_listening(child: &mut Child) -> Result<(&'static str, SocketAddr), String> {
    let stdout = child.stdout.take().ok_or("stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let first = reader.read_line(&mut line).map(|_| line.clone());
        let _ = tx.send(first);
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => return Err(format!("reading the server's stdout: {e}")),
        Err(_) => return Err(format!("no listening line within {STARTUP_TIMEOUT:?}")),
    };
    let listening = line.trim_end().strip_prefix("govcfs: listening on ");
    let (scheme, addr) = match listening {
        Some(rest) if rest.starts_with("https://") => ("https", &rest[8..]),
        Some(rest) if rest.starts_with("http://") => ("http", &rest[7..]),
        _ => return Err(format!("unexpected first stdout line {line:?}")),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("server listens on a non-loopback address {addr}"));
    }
    Ok((scheme, addr))
}

/// The value of the sample `name` (metric name plus labels, as printed) in a Prometheus
/// text page.
pub fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

/// A server on a fresh data directory and an HTTP client for it: the start of most API tests.
pub fn server_and_client() -> (ServerProcess, reqwest::Client) {
    server_and_client_with(&[])
}

/// [`server_and_client`] with extra `serve` arguments (see [`ServerProcess::start_with`]).
pub fn server_and_client_with(extra_args: &[&str]) -> (ServerProcess, reqwest::Client) {
    (ServerProcess::start_with(extra_args), http_client())
}
