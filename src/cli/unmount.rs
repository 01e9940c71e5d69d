//! `govcfs unmount MOUNTPOINT`

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

/// Arguments of `govcfs unmount`.
#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mounted directory.
    pub mountpoint: PathBuf,
}

/// Unmounts with `fusermount3 -u` (works for users and root), or umount(2) as a fallback.
pub fn run(args: UnmountArgs) -> anyhow::Result<()> {
    let path = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("{} does not exist", args.mountpoint.display()))?;
    if !super::mount::is_mounted(&path) {
        bail!("{} is not mounted", path.display());
    }
    let output = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&path)
        .output();
    match output {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stderr);
            if text.contains("busy") {
                bail!("{} is busy: files are still open on it", path.display());
            }
            log::debug!("fusermount3 failed: {text}");
        }
        Err(e) => log::debug!("fusermount3 not usable: {e}"),
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: umount2 with a valid NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBUSY) {
            bail!("{} is busy: files are still open on it", path.display());
        }
        bail!("cannot unmount {}: {err}", path.display());
    }
    Ok(())
}
