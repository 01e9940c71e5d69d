//! Without `-f`: the mount re-runs itself in the foreground as a detached child, with its log
//! in a file, and the parent waits until the kernel shows the mount.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::is_mounted;

/// How long the parent waits for the background mount to answer.
const MOUNT_WAIT: Duration = Duration::from_secs(60);

fn log_path(mountpoint: &Path) -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("govcfs-{uid}")));
    let _ = std::fs::create_dir_all(&dir);
    let name: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("mount{name}.log"))
}

/// Starts the mount as a detached child and waits until the kernel shows it.
pub(super) fn spawn_background(mountpoint: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log = log_path(mountpoint);
    let log_file = std::fs::File::create(&log)
        .with_context(|| format!("cannot create log {}", log.display()))?;
    let exe = std::env::current_exe()?;
    let mut command = std::process::Command::new(exe);
    command
        // The arguments as `govcfs mount …`, also when we run as the `mount.govcfs` helper.
        .args(crate::cli::args().into_iter().skip(1))
        .env("GOVCFS_FOREGROUND_CHILD", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal session.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the mount process")?;
    let deadline = Instant::now() + MOUNT_WAIT;
    while Instant::now() < deadline {
        if is_mounted(mountpoint) && std::fs::metadata(mountpoint).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let reason = text
                .lines()
                .rev()
                .find(|l| l.starts_with("govcfs:"))
                .map(|l| l.trim_start_matches("govcfs: ").to_string());
            bail!(
                "{}",
                reason.unwrap_or_else(|| format!(
                    "the mount process exited with {status}; see {}",
                    log.display()
                ))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the mount did not answer within {MOUNT_WAIT:?}; see {}",
        log.display()
    )
}
