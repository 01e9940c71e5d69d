//! `govcfs mount -f`: connects (starting an embedded server when no URL is given), builds the
//! filesystem, runs the FUSE session and waits for an unmount or a signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::{default_cache_dir, MountArgs};
use crate::client::{CancellationToken, Client, ClientError, ClientOptions, RepoUrl};
use crate::fs::fuse::FuseAdapter;
use crate::fs::prefetch::PrefetchConfig;
use crate::fs::remote::ClientRemote;
use crate::fs::{Fs, FsConfig};
use crate::server::{Server, ServerConfig};

/// The server the mount talks to: the one at the URL, or an embedded one on loopback.
struct Upstream {
    url: RepoUrl,
    /// The embedded server's task, stopped by `stop` at unmount.
    embedded: Option<JoinHandle<anyhow::Result<()>>>,
    stop: CancellationToken,
}

/// Mounts and serves until unmounted or signalled.
pub(super) fn run_foreground(
    args: MountArgs,
    url: Option<String>,
    mountpoint: PathBuf,
) -> anyhow::Result<()> {
    let runtime = crate::cli::runtime()?;
    let upstream = runtime.block_on(connect_upstream(url.as_deref()))?;
    let display_url = format!("{}/{}", upstream.url.server, upstream.url.repo);
    let client = checked_client(&runtime, &args, &upstream.url, &display_url)?;
    let remote = Arc::new(ClientRemote::new(client, args.reference.clone()));
    let fs = Arc::new(Fs::new(remote.clone(), fs_config(&args, &display_url)));
    {
        // Listings refresh as soon as the server announces a commit, not only after the TTL.
        let (remote, fs) = (remote.clone(), fs.clone());
        runtime.spawn(async move { remote.watch(move || fs.expire_all()).await });
    }
    let (destroyed_tx, destroyed_rx) = tokio::sync::oneshot::channel();
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone(), destroyed_tx);
    let fuse_config = fuse_config(&args, &display_url, fs.config().read_only);
    let session = fuser::Session::new(adapter, &mountpoint, &fuse_config)
        .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", mountpoint.display()))?;
    let background = session.spawn().context("cannot start the FUSE session")?;
    raise_kernel_read_ahead(&mountpoint);
    log::info!("mounted {display_url} at {}", mountpoint.display());

    let signalled = runtime.block_on(wait_for_end(&fs, destroyed_rx))?;
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
    upstream.stop.cancel();
    if let Some(task) = upstream.embedded {
        let _ = runtime.block_on(task);
    }
    Ok(())
}

/// The server at `url`, or (without one) an embedded server on loopback serving the
/// default data directory's `default` repository.
async fn connect_upstream(url: Option<&str>) -> anyhow::Result<Upstream> {
    let stop = CancellationToken::new();
    let Some(url) = url else {
        let backend = crate::store::Backend::from_spec(None, None)?;
        let server = Server::bind(backend, ServerConfig::default(), "127.0.0.1:0").await?;
        let addr = server.local_addr();
        let token = stop.clone();
        let task = tokio::spawn(server.run(async move { token.cancelled().await }));
        log::info!("embedded server on http://{addr}");
        let url = RepoUrl {
            server: format!("http://{addr}"),
            repo: crate::api::DEFAULT_REPO.into(),
            path: String::new(),
        };
        return Ok(Upstream {
            url,
            embedded: Some(task),
            stop,
        });
    };
    let url = RepoUrl::parse(url)?;
    if url.repo.is_empty() {
        bail!("the URL names no repository: expected http://HOST:PORT/REPO");
    }
    Ok(Upstream {
        url,
        embedded: None,
        stop,
    })
}

/// A client of the repository, checked by a `stat` of its root at the mounted ref, so that a
/// wrong URL, repository, ref or token fails the mount with one clear line.
fn checked_client(
    runtime: &Runtime,
    args: &MountArgs,
    url: &RepoUrl,
    display_url: &str,
) -> anyhow::Result<Client> {
    let mut options = ClientOptions::from_env();
    if args.auth_token.is_some() {
        options.auth_token = args.auth_token.clone();
    }
    let client = Client::from_url(url, options)?;
    runtime
        .block_on(client.stat("", args.reference.as_deref(), &CancellationToken::new()))
        .map_err(|e| describe_connect_error(e, display_url))?;
    Ok(client)
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

/// The filesystem's settings from the arguments; a commit id is mounted read-only.
fn fs_config(args: &MountArgs, display_url: &str) -> FsConfig {
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
    FsConfig {
        attr_ttl: Duration::from_secs_f64(args.attr_ttl.max(0.0)),
        cache_size: args.cache_size,
        prefetch: PrefetchConfig {
            chunk_size: args.chunk_size,
            max_read_ahead: args.max_read_ahead.max(args.chunk_size),
        },
        read_only: args.read_only || is_commit,
        cache_dir: args.cache_dir.clone().unwrap_or_else(default_cache_dir),
        origin: display_url.to_string(),
        branch: args.reference.clone(),
    }
}

/// The FUSE session's options.
fn fuse_config(args: &MountArgs, display_url: &str, read_only: bool) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(display_url.to_string()),
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
    config.acl = if args.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(2);
    config.clone_fd = true;
    config
}

/// Waits for the kernel to end the session (an unmount: `false`) or for SIGTERM/SIGINT
/// (`true`); SIGUSR1 logs the statistics line meanwhile.
async fn wait_for_end(
    fs: &Fs<ClientRemote>,
    mut destroyed: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(true),
            _ = int.recv() => return Ok(true),
            _ = usr1.recv() => log::warn!("{}", fs.stats_line()),
            _ = &mut destroyed => return Ok(false),
        }
    }
}

/// Best effort: let the kernel read ahead up to 16 MiB on this mount (its default is 128 KiB),
/// so sequential reads arrive as large concurrent requests.
fn raise_kernel_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&knob, "16384") {
        Ok(()) => log::debug!("kernel read-ahead set to 16 MiB via {knob}"),
        Err(e) => log::debug!("could not raise the kernel read-ahead ({knob}): {e}"),
    }
}
