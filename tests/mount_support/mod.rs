//! Helpers of the FUSE mount tests: a foreground mount as a child process that is always
//! unmounted (even when the test panics), a background (daemon) mount guard, a server that
//! can be killed and restarted on the same port.
//!
//! Built on `tests/common` (its process runner and server start), so a test file declares
//! both: `mod common; mod mount_support;`. Every wait is bounded in time, and processes are
//! only ever signalled by the PID of a child this module spawned.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    await_listening, command_without_proxy, govcfs_command, kill_child, on_thread_within,
    proc_status_kib, run_command, wait_child, wait_until, GOVCFS,
};

/// How long a mount may take to show up and answer.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long an unmounted foreground mount process may take to exit by itself.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Decodes the octal escapes (`\040` for a space…) of a /proc/self/mountinfo field.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mountinfo lines (fields: mount point, file system type, source) whose mount point
/// is `path`.
pub fn mount_entries(path: &Path) -> Vec<(String, String, String)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let wanted = path.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = unescape_mountinfo(fields.get(4)?);
            // After the optional fields comes "-", then fs type and source.
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(dash + 1)?.to_string();
            let source = unescape_mountinfo(fields.get(dash + 2)?);
            (mount_point == wanted).then_some((mount_point, fstype, source))
        })
        .collect()
}

/// Whether something is mounted at `path` (an absolute, canonical path).
pub fn is_mounted(path: &Path) -> bool {
    !mount_entries(path).is_empty()
}

/// Runs `read_dir(path)` on a helper thread and waits at most `timeout` for it, so a hung
/// FUSE daemon cannot hang the test. `None` on timeout, else the names (sorted) or the error.
pub fn read_dir_bounded(path: &Path, timeout: Duration) -> Option<std::io::Result<Vec<String>>> {
    let path = path.to_path_buf();
    on_thread_within(timeout, move || {
        std::fs::read_dir(&path).and_then(|dir| {
            let mut names = Vec::new();
            for entry in dir {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
    })
}

/// Unmounts `path` with `fusermount3 -u`, falling back to `umount -l`; then waits (bounded)
/// until /proc/self/mountinfo no longer shows it. Returns whether it is gone.
pub fn unmount_path(path: &Path) -> bool {
    if !is_mounted(path) {
        return true;
    }
    let quiet = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet("fusermount3", &["-u"]) {
        let _ = quiet("umount", &["-l"]);
    }
    if wait_until(Duration::from_secs(10), || !is_mounted(path)) {
        return true;
    }
    // Last resort: a lazy unmount detaches it even when busy.
    let _ = quiet("umount", &["-l"]);
    wait_until(Duration::from_secs(5), || !is_mounted(path))
}

/// Options of a mount started by the tests.
#[derive(Default, Clone)]
pub struct MountOptions<'a> {
    /// The URL (`http://ADDR/REPO`); `None` mounts the embedded server.
    pub url: Option<&'a str>,
    /// Extra arguments after `MOUNTPOINT -f`.
    pub args: &'a [&'a str],
    /// Extra environment variables.
    pub envs: &'a [(&'a str, &'a str)],
}

/// A `govcfs mount URL MP -f …` child process on a fresh temporary mountpoint.
///
/// Drop unmounts (`fusermount3 -u`, falling back to `umount -l`), then waits for the child to
/// exit and kills it by its PID if it does not.
pub struct MountGuard {
    child: Child,
    mountpoint: PathBuf,
    log_path: PathBuf,
    /// Holds the mountpoint and the log; removed last.
    dir: Option<tempfile::TempDir>,
    /// Set once unmounted and reaped.
    done: bool,
}

impl MountGuard {
    /// Mounts `url` with `extra_args` (e.g. `["--attr-ttl", "0.5"]`) in the foreground.
    pub fn start(url: &str, extra_args: &[&str]) -> MountGuard {
        Self::start_with(MountOptions {
            url: Some(url),
            args: extra_args,
            envs: &[],
        })
    }

    /// Mounts with full options (embedded server when `url` is `None`, extra environment).
    pub fn start_with(options: MountOptions<'_>) -> MountGuard {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("create the mountpoint");
        let mountpoint = std::fs::canonicalize(&mountpoint).expect("canonical mountpoint");
        let log_path = dir.path().join("mount.log");
        let log = File::create(&log_path).expect("create the mount log");
        let mut command = govcfs_command();
        command.arg("mount");
        if let Some(url) = options.url {
            command.arg(url);
        }
        command
            .arg(&mountpoint)
            .arg("-f")
            .args(options.args)
            .env("RUST_LOG", "govcfs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in options.envs {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {GOVCFS} mount: {e}"));
        let mut guard = MountGuard {
            child,
            mountpoint,
            log_path,
            dir: Some(dir),
            done: false,
        };
        guard.wait_ready();
        guard
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the mount process exited early with {status}; log:\n{}",
                    self.log()
                );
            }
            if is_mounted(&self.mountpoint) {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not show up in /proc/self/mountinfo within {MOUNT_TIMEOUT:?}; log:\n{}",
                    self.mountpoint.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match read_dir_bounded(&self.mountpoint, left) {
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!(
                "read_dir on the fresh mount {} failed: {e}; log:\n{}",
                self.mountpoint.display(),
                self.log()
            ),
            None => panic!(
                "read_dir on the fresh mount {} hung; log:\n{}",
                self.mountpoint.display(),
                self.log()
            ),
        }
    }

    /// The mountpoint (absolute, canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The process id of the mount process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size of the mount process so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// The mount process's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Unmounts and waits for the process; returns its exit status (if it exited by itself).
    pub fn unmount(mut self) -> Option<ExitStatus> {
        self.shutdown()
    }

    /// Kills the mount process with SIGKILL (a crash), then cleans up the dead mount.
    pub fn kill_hard(mut self) {
        kill_child(&mut self.child);
        self.shutdown();
    }

    fn shutdown(&mut self) -> Option<ExitStatus> {
        self.done = true;
        let gone = unmount_path(&self.mountpoint);
        let status = wait_child(&mut self.child, EXIT_TIMEOUT);
        if status.is_none() {
            kill_child(&mut self.child);
            // A killed daemon leaves a dead mount ("transport endpoint is not connected").
            unmount_path(&self.mountpoint);
        }
        if !gone && is_mounted(&self.mountpoint) {
            // Never delete through a live mount: leak the directory instead.
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
            eprintln!("WARNING: {} is still mounted", self.mountpoint.display());
        }
        status
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.done {
            self.shutdown();
        }
    }
}

/// A mount made by `govcfs mount` without `-f` (or by the `mount.govcfs` helper): the
/// command returned, and a detached process serves the mount. Drop unmounts it (the daemon
/// then exits by itself; it is not our child, so it is never signalled).
pub struct DaemonMount {
    mountpoint: PathBuf,
    /// Holds the mountpoint and the daemon's log directory (`XDG_RUNTIME_DIR`).
    dir: Option<tempfile::TempDir>,
}

/// What the mount command did.
pub struct DaemonStart {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Whether a `read_dir` right after the command returned worked (`Ok(names)`).
    pub first_read_dir: Option<std::io::Result<Vec<String>>>,
}

impl DaemonMount {
    /// A guard over a fresh mountpoint, before anything is mounted.
    pub fn new() -> DaemonMount {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("create the mountpoint");
        std::fs::create_dir(dir.path().join("run")).expect("create the runtime directory");
        let mountpoint = std::fs::canonicalize(&mountpoint).expect("canonical mountpoint");
        DaemonMount {
            mountpoint,
            dir: Some(dir),
        }
    }

    /// Runs `program ARGS…` (ARGS may mention the mountpoint via [`Self::path`]) with
    /// `XDG_RUNTIME_DIR` pointing into this guard's directory, then (only if it exited 0)
    /// tries a `read_dir` of the mountpoint at once.
    pub fn run(&self, program: &Path, args: &[&std::ffi::OsStr]) -> DaemonStart {
        let mut command = command_without_proxy(program);
        command
            .args(args)
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env_remove("RUST_LOG");
        let out = run_command(&mut command, Duration::from_secs(90));
        let first_read_dir = if out.status.success() {
            read_dir_bounded(&self.mountpoint, MOUNT_TIMEOUT)
        } else {
            None
        };
        DaemonStart {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
            first_read_dir,
        }
    }

    /// The mountpoint (absolute, canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Where the daemon writes its log.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("directory kept")
            .path()
            .join("run")
    }

    /// The daemon's log files, concatenated (for failure messages).
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(dir) = std::fs::read_dir(self.runtime_dir()) {
            for entry in dir.flatten() {
                text.push_str(&format!("== {}\n", entry.path().display()));
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }
}

impl Default for DaemonMount {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DaemonMount {
    fn drop(&mut self) {
        if !unmount_path(&self.mountpoint) {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
            eprintln!("WARNING: {} is still mounted", self.mountpoint.display());
        }
    }
}

/// Runs a foreground mount command that is expected to FAIL. If it mounts anyway, the mount
/// is undone and the process killed before the test fails. Returns the exit status and stderr.
pub fn mount_expecting_failure(
    args: &[&std::ffi::OsStr],
    mountpoint: &Path,
    timeout: Duration,
) -> (ExitStatus, String) {
    let log_dir = tempfile::tempdir().expect("create a temporary directory");
    let log_path = log_dir.path().join("stderr");
    let mut command = govcfs_command();
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            File::create(&log_path).expect("create the stderr file"),
        ));
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let canonical = std::fs::canonicalize(mountpoint).ok();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (
                status,
                std::fs::read_to_string(&log_path).unwrap_or_default(),
            );
        }
        let mounted = canonical.as_deref().is_some_and(is_mounted);
        if mounted || Instant::now() >= deadline {
            if let Some(c) = canonical.as_deref() {
                unmount_path(c);
            }
            kill_child(&mut child);
            if let Some(c) = canonical.as_deref() {
                unmount_path(c);
            }
            panic!(
                "{command:?} {}; stderr: {}",
                if mounted {
                    "mounted although it should have failed"
                } else {
                    "neither failed nor mounted in time"
                },
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `govcfs serve` child that can be killed and restarted on the same address and data
/// directory (the shared `ServerProcess` always binds port 0).
pub struct RestartableServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    data: PathBuf,
    log_path: PathBuf,
}

impl RestartableServer {
    /// Starts `govcfs serve --data DATA --listen LISTEN` and waits for its listening line.
    /// `log_path` receives its stderr (appended).
    pub fn start(data: &Path, listen: &str, log_path: &Path) -> RestartableServer {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open the server log");
        let mut command = govcfs_command();
        command
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {GOVCFS} serve: {e}"));
        let addr = match await_listening(&mut child) {
            Ok((_, addr)) => addr,
            Err(e) => {
                kill_child(&mut child);
                panic!(
                    "server on {listen}: {e}; log: {}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
        };
        RestartableServer {
            child,
            addr,
            data: data.to_path_buf(),
            log_path: log_path.to_path_buf(),
        }
    }

    /// `http://ADDR/REPO`.
    pub fn repo_url(&self, repo: &str) -> String {
        format!("http://{}/{repo}", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (by PID) and reap.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts a new server on the same address and data directory (after [`Self::kill`]).
    /// The port may be briefly unavailable: retried for up to 20 s.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listen = self.addr.to_string();
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                RestartableServer::start(&self.data, &listen, &self.log_path)
            }));
            match attempt {
                Ok(server) => {
                    // The old child is already reaped: dropping it signals nothing.
                    *self = server;
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for RestartableServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}
