//! `govcfs mount [URL] MOUNTPOINT` and the `mount.govcfs` helper.
//!
//! Without `-f`, the command re-runs itself in the foreground as a detached child, waits
//! until the kernel shows the mount, and returns 0 (or the child's one-line error).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

mod background;
mod foreground;

use background::spawn_background;
use foreground::run_foreground;

/// Arguments of `govcfs mount`.
#[derive(Debug, Args, Clone)]
pub struct MountArgs {
    /// [URL] MOUNTPOINT: URL is http(s)://HOST:PORT/REPO; without it an embedded server
    /// on loopback serves the default data directory's `default` repository.
    #[arg(num_args = 1..=2, value_name = "[URL] MOUNTPOINT", required = true)]
    pub targets: Vec<String>,
    /// Stay in the foreground until unmounted.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Refuse every write (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Branch, or commit id (mounted read-only).
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Bytes of chunk data cached in memory.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = super::parse_size_arg)]
    pub cache_size: u64,
    /// Unit of caching and of read requests.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = super::parse_size_arg)]
    pub chunk_size: u64,
    /// Largest read-ahead window of one open file.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = super::parse_size_arg)]
    pub max_read_ahead: u64,
    /// Seconds attributes and listings are trusted.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub attr_ttl: f64,
    /// Directory for the write spools of open files and the recovery/ copies of writes that
    /// could not be committed.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bearer token for the server.
    #[arg(long, value_name = "TOKEN")]
    pub auth_token: Option<String>,
    /// Let other users see the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// mount(8)-style options: ro, rw, allow_other, cache_size=…, chunk_size=…,
    /// max_read_ahead=…, attr_ttl=…, cache_dir=…, ref=…, auth_token=….
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
}

impl MountArgs {
    /// Folds `-o` options into the typed fields.
    fn apply_options(&mut self) -> anyhow::Result<()> {
        let size = |v: &str| crate::base::size::parse_size(v).map_err(anyhow::Error::msg);
        for opt in self.options.clone().iter().flat_map(|o| o.split(',')) {
            let (key, value) = opt
                .split_once('=')
                .map_or((opt, None), |(k, v)| (k, Some(v)));
            match (key, value) {
                ("ro", None) => self.read_only = true,
                ("rw", None) => self.read_only = false,
                ("allow_other", None) => self.allow_other = true,
                ("cache_size", Some(v)) => self.cache_size = size(v)?,
                ("chunk_size", Some(v)) => self.chunk_size = size(v)?,
                ("max_read_ahead", Some(v)) => self.max_read_ahead = size(v)?,
                ("attr_ttl", Some(v)) => self.attr_ttl = v.parse().context("attr_ttl")?,
                ("cache_dir", Some(v)) => self.cache_dir = Some(PathBuf::from(v)),
                ("ref", Some(v)) => self.reference = Some(v.to_string()),
                ("auth_token", Some(v)) => self.auth_token = Some(v.to_string()),
                // fstab and mount(8) conventions that need nothing from us
                (
                    "defaults" | "_netdev" | "noauto" | "auto" | "nofail" | "user" | "users"
                    | "nouser" | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "atime"
                    | "noatime" | "relatime",
                    _,
                ) => {}
                (k, _) if k.starts_with("x-") || k.is_empty() => {}
                _ => bail!("unknown mount option {opt:?}"),
            }
        }
        if self.chunk_size == 0 || self.chunk_size > 64 << 20 {
            bail!("--chunk-size must be between 1 byte and 64 MiB");
        }
        Ok(())
    }

    fn url_and_mountpoint(&self) -> (Option<&str>, &str) {
        match self.targets.as_slice() {
            [mountpoint] => (None, mountpoint),
            [url, mountpoint, ..] => (Some(url), mountpoint),
            [] => unreachable!("clap requires one target"),
        }
    }
}

/// Rewrites the arguments of `mount.govcfs URL DIR [-o OPTS] [-n] [-s] [-v]` (as mount(8)
/// calls a helper) into `govcfs mount URL DIR -o OPTS`.
pub fn helper_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = vec![std::ffi::OsString::from("govcfs"), "mount".into()];
    out.extend(
        args.into_iter()
            .skip(1)
            .filter(|a| !matches!(a.to_str(), Some("-n" | "-s" | "-v" | "-f"))),
    );
    out
}

fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mountpoint {} does not exist", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    let canonical = std::fs::canonicalize(mountpoint)?;
    if is_mounted(&canonical) {
        bail!(
            "mountpoint {} is busy: something is already mounted there",
            mountpoint.display()
        );
    }
    if std::fs::read_dir(&canonical)?.next().is_some() {
        bail!(
            "mountpoint {} is not an empty directory",
            mountpoint.display()
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "FUSE is not available: /dev/fuse is missing (load the fuse module or install fuse3)"
        );
    }
    Ok(canonical)
}

/// Whether `path` (canonical) is a mount point, from /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Runs `govcfs mount`.
pub fn run(mut args: MountArgs) -> anyhow::Result<()> {
    args.apply_options()?;
    let (url, mountpoint) = args.url_and_mountpoint();
    let url = url.map(str::to_string);
    let mountpoint = check_mountpoint(Path::new(mountpoint))?;
    let child = std::env::var_os("GOVCFS_FOREGROUND_CHILD").is_some();
    if !child && !args.read_only {
        rescue_spools(&args.cache_dir.clone().unwrap_or_else(default_cache_dir));
    }
    if args.foreground || child {
        return run_foreground(args, url, mountpoint);
    }
    spawn_background(&mountpoint)
}

/// Moves what a mount that died was writing into `recovery/`, and tells the user.
fn rescue_spools(cache_dir: &Path) {
    let recovery = crate::fs::recovery_dir(cache_dir);
    match crate::fs::recovery::rescue_orphans(cache_dir, &recovery) {
        Ok(rescued) if rescued.is_empty() => {}
        Ok(rescued) => eprintln!(
            "govcfs: {} file(s) being written when an earlier mount ended were not committed; their bytes are in {}. \
             Run `govcfs recover` to list them and `govcfs recover --upload` to upload them.",
            rescued.len(),
            recovery.display()
        ),
        Err(e) => eprintln!("govcfs: cannot check {} for files an earlier mount left: {e}", cache_dir.join("spool").display()),
    }
}

/// The default cache directory: `$XDG_CACHE_HOME/govcfs` or `~/.cache/govcfs`.
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("govcfs"),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/govcfs"),
    }
}
