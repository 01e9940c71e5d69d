//! `govcfs mount [URL] MOUNTPOINT` and the `mount.govcfs` helper.
//!
//! Without `-f`, the command re-runs itself in the foreground as a detached child, waits
//! until the kernel shows the mount, and returns 0 (or the child's one-line error).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::client::{CancellationToken, Client, ClientError, ClientOptions, RepoUrl};
use crate::fs::fuse::FuseAdapter;
use crate::fs::prefetch::PrefetchConfig;
use crate::fs::remote::ClientRemote;
use crate::fs::{Fs, FsConfig};
use crate::server::{Server, ServerConfig};

/// How long the parent waits for the background mount to answer.
const MOUNT_WAIT: Duration = Duration::from_secs(60);

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
    /// Directory for the disk cache and kept writes.
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
    let recovery = crate::fs::core::recovery_dir(cache_dir);
    match crate::fs::spool::rescue_orphans(cache_dir, &recovery) {
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
fn spawn_background(mountpoint: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log = log_path(mountpoint);
    let log_file = std::fs::File::create(&log)
        .with_context(|| format!("cannot create log {}", log.display()))?;
    let exe = std::env::current_exe()?;
    let mut command = std::process::Command::new(exe);
    command
        // The arguments as `govcfs mount …`, also when we run as the `mount.govcfs` helper.
        .args(super::args().into_iter().skip(1))
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

fn describe_connect_error(e: ClientError, url: &str) -> anyhow::Error {
    match e {
        ClientError::Transport(_) => anyhow::anyhow!("cannot reach the server at {url}"),
        ClientError::Http {
            status: 404,
            message,
            ..
        } => anyhow::anyhow!("{url}: {message}"),
        ClientError::Http { status: 401, .. } => {
            anyhow::anyhow!("{url}: the server wants a valid --auth-token")
        }
        other => anyhow::anyhow!("{url}: {other}"),
    }
}

/// Mounts and serves until unmounted or signalled.
fn run_foreground(args: MountArgs, url: Option<String>, mountpoint: PathBuf) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    let cancel_server = CancellationToken::new();
    let (repo_url, server_task) = runtime.block_on(async {
        match &url {
            Some(u) => Ok::<_, anyhow::Error>((RepoUrl::parse(u)?, None)),
            None => {
                let backend = super::serve::backend_for(None, None)?;
                let server = Server::bind(backend, ServerConfig::default(), "127.0.0.1:0").await?;
                let addr = server.local_addr();
                let token = cancel_server.clone();
                let task = tokio::spawn(server.run(async move { token.cancelled().await }));
                log::info!("embedded server on http://{addr}");
                Ok((
                    RepoUrl {
                        server: format!("http://{addr}"),
                        repo: crate::api::DEFAULT_REPO.into(),
                        path: String::new(),
                    },
                    Some(task),
                ))
            }
        }
    })?;
    if repo_url.repo.is_empty() {
        bail!("the URL names no repository: expected http://HOST:PORT/REPO");
    }
    let display_url = format!("{}/{}", repo_url.server, repo_url.repo);
    let mut options = ClientOptions::from_env();
    if args.auth_token.is_some() {
        options.auth_token = args.auth_token.clone();
    }
    let client = Client::from_url(&repo_url, options)?;
    let check = CancellationToken::new();
    runtime
        .block_on(client.stat("", args.reference.as_deref(), &check))
        .map_err(|e| describe_connect_error(e, &display_url))?;
    let is_commit = args
        .reference
        .as_deref()
        .is_some_and(crate::base::ids::is_object_id);
    if is_commit {
        log::info!(
            "{} is a commit: mounting read-only",
            args.reference.as_deref().unwrap_or_default()
        );
    }
    let remote = Arc::new(ClientRemote::new(client, args.reference.clone()));
    let config = FsConfig {
        attr_ttl: Duration::from_secs_f64(args.attr_ttl.max(0.0)),
        cache_size: args.cache_size,
        prefetch: PrefetchConfig {
            chunk_size: args.chunk_size,
            max_read_ahead: args.max_read_ahead.max(args.chunk_size),
        },
        read_only: args.read_only || is_commit,
        cache_dir: args.cache_dir.clone().unwrap_or_else(default_cache_dir),
        origin: display_url.clone(),
        branch: args.reference.clone(),
    };
    let read_only = config.read_only;
    let fs = Arc::new(Fs::new(remote.clone(), config));
    {
        // Listings refresh as soon as the server announces a commit, not only after the TTL.
        let (remote, fs) = (remote.clone(), fs.clone());
        runtime.spawn(async move { remote.watch(move || fs.expire_all()).await });
    }
    let (destroyed_tx, destroyed_rx) = tokio::sync::oneshot::channel();
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone(), destroyed_tx);
    let mount_options = vec![
        fuser::MountOption::FSName(display_url.clone()),
        fuser::MountOption::Subtype("govcfs".into()),
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        if read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    // allow_other is carried by the session's ACL, which also passes it to the kernel.
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = mount_options;
    fuse_config.acl = if args.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    fuse_config.n_threads = Some(2);
    fuse_config.clone_fd = true;
    let session = fuser::Session::new(adapter, &mountpoint, &fuse_config)
        .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", mountpoint.display()))?;
    let background = session.spawn().context("cannot start the FUSE session")?;
    raise_kernel_read_ahead(&mountpoint);
    log::info!("mounted {display_url} at {}", mountpoint.display());

    let signalled = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut destroyed = destroyed_rx;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<bool, anyhow::Error>(true),
                _ = int.recv() => return Ok(true),
                _ = usr1.recv() => log::warn!("{}", fs.stats_line()),
                _ = &mut destroyed => return Ok(false),
            }
        }
    })?;
    if signalled {
        log::info!("signal received: unmounting {}", mountpoint.display());
    }
    // After an outside unmount this only joins the session thread; the unmount it still tries
    // then fails with EINVAL (nothing mounted there), which is not worth a warning.
    match background.umount_and_join() {
        Err(e) if !signalled && e.raw_os_error() == Some(libc::EINVAL) => {
            log::debug!("{} was already unmounted: {e}", mountpoint.display())
        }
        Err(e) => log::warn!("unmount of {} failed: {e}", mountpoint.display()),
        Ok(()) => {}
    }
    log::warn!("{}", fs.stats_line());
    remote.cancel();
    cancel_server.cancel();
    if let Some(task) = server_task {
        let _ = runtime.block_on(task);
    }
    Ok(())
}

/// Best effort: let the kernel read ahead up to 16 MiB on this mount (its default is 128 KiB),
/// so sequential reads arrive as large concurrent requests.
fn raise_kernel_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    // SAFETY: major/minor only decode the number.
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&knob, "16384") {
        Ok(()) => log::debug!("kernel read-ahead set to 16 MiB via {knob}"),
        Err(e) => log::debug!("could not raise the kernel read-ahead ({knob}): {e}"),
    }
}
