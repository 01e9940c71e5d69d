//! Child processes: the `govcfs` binary with a clean environment, the one bounded runner
//! (output captured, peak memory from `wait4`, killed by its PID at the time limit), waits on
//! children and on work run on a helper thread, and `/proc` sampling.
//!
//! Every wait is bounded in time, and processes are only ever signalled by the PID of a
//! child the caller spawned.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the `govcfs` binary built by cargo for this test run.
pub const GOVCFS: &str = env!("CARGO_BIN_EXE_govcfs");

/// Time a CLI command may take by default.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the pipes of an exited child are read for: a grandchild (a daemonized mount)
/// may hold them open.
const PIPE_LINGER: Duration = Duration::from_secs(10);

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

/// `program` with the proxy variables removed from its environment.
pub fn command_without_proxy(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    command
}

/// A `govcfs` command with a clean environment (no proxy, no `RUST_LOG`), so its stderr and
/// its network path do not depend on the caller's shell.
pub fn govcfs_command() -> Command {
    let mut command = command_without_proxy(GOVCFS);
    command.env_remove("RUST_LOG");
    command
}

/// The outcome of one child process run by [`finish_child`].
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

/// Runs `govcfs ARGS…` ([`govcfs_command`]) with extra environment variables and a time
/// limit, through [`run_command`].
pub fn run_cli_with(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> CliOutput {
    let mut command = govcfs_command();
    command.args(args).envs(envs.iter().copied());
    run_command(&mut command, timeout)
}

/// Runs `command` with stdin from /dev/null and stdout and stderr captured, through
/// [`finish_child`].
pub fn run_command(command: &mut Command, timeout: Duration) -> CliOutput {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    run_status_and_output(command, timeout)
}

/// Runs `command` with stdin from /dev/null; its stdout and stderr go wherever the caller
/// set them. Returns the exit status (see [`finish_child`]).
pub fn run_status(command: &mut Command, timeout: Duration) -> ExitStatus {
    run_status_and_output(command, timeout).status
}

fn run_status_and_output(command: &mut Command, timeout: Duration) -> CliOutput {
    let child = command
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    finish_child(child, &format!("{command:?}"), timeout)
}

/// The one bounded wait for a spawned child (`what` names it in messages): its piped stdout
/// and stderr are read on threads, and it is reaped with `wait4(2)`. Its peak RSS is the
/// `VmHWM` read from `/proc` while it runs: `ru_maxrss` would count the test process's own
/// RSS at fork time (Linux carries it across exec), so a test holding big buffers in another
/// thread made a small child look big. A child still running after `timeout` is killed by its PID and the test
/// panics with its stderr.
pub fn finish_child(mut child: Child, what: &str, timeout: Duration) -> CliOutput {
    let started = Instant::now();
    let pid = child.id() as libc::pid_t;
    let out_thread = child.stdout.take().map(drain_on_thread);
    let err_thread = child.stderr.take().map(drain_on_thread);
    let deadline = started + timeout;
    let mut raw_status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    let mut sampled_hwm: Option<u64> = None;
    loop {
        if let Some(hwm) = proc_status_kib(pid as u32, "VmHWM:") {
            sampled_hwm = Some(sampled_hwm.unwrap_or(0).max(hwm));
        }
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
            panic!("wait4({pid}) for {what}: {e}");
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
    let read = |t: Option<std::thread::JoinHandle<Vec<u8>>>| {
        t.and_then(|t| join_within(t, PIPE_LINGER))
            .unwrap_or_default()
    };
    let stdout = read(out_thread);
    let stderr = String::from_utf8_lossy(&read(err_thread)).into_owned();
    use std::os::unix::process::ExitStatusExt;
    let output = CliOutput {
        status: ExitStatus::from_raw(raw_status),
        stdout,
        stderr,
        peak_rss_kib: sampled_hwm.unwrap_or(usage.ru_maxrss.max(0) as u64),
        elapsed,
    };
    if timed_out {
        panic!(
            "{what} did not finish within {timeout:?}; stderr: {}",
            output.stderr
        );
    }
    output
}

/// Joins `handle` if it finishes within `timeout`; `None` if not (or if it panicked).
fn join_within<T>(handle: std::thread::JoinHandle<T>, timeout: Duration) -> Option<T> {
    if wait_until(timeout, || handle.is_finished()) {
        handle.join().ok()
    } else {
        None
    }
}

/// Waits at most `timeout` for `child` (spawned by the caller, not reaped with
/// [`finish_child`]) to exit; `None` if it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGKILL to our own child (by its PID, via std) unless it has exited, and reaps it.
pub fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Runs `f` on a helper thread and waits at most `timeout` for it, so a hung mount or
/// server cannot hang the test. `None` if it did not finish in time (the thread is left to
/// finish on its own) or panicked.
pub fn on_thread_within<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    spawn_and_wait(timeout, f).ok()
}

/// [`on_thread_within`] that panics (naming `what`) unless `f` returns in time.
pub fn must_finish_within<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    match spawn_and_wait(timeout, f) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within {timeout:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

fn spawn_and_wait<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, mpsc::RecvTimeoutError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout)
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

/// Whether a program can be run (`PROGRAM --version` succeeds).
pub fn have_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
