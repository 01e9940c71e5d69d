//! `govcfs serve`

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::server::auth::{parse_token_file, TokenGrant};
use crate::server::{shutdown_signal, Server, ServerConfig, StreamLimits};
use crate::store::Backend;

/// Arguments of `govcfs serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Local store directory [default: $XDG_DATA_HOME/govcfs or ~/.local/share/govcfs].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Store URL: file:///abs/dir (same as --data).
    #[arg(long, value_name = "URL", conflicts_with = "data")]
    pub store: Option<String>,
    /// Bearer token clients must send (repeatable).
    #[arg(long = "auth-token", value_name = "TOKEN")]
    pub auth_tokens: Vec<String>,
    /// Token file: one `TOKEN REPO MODE` per line (REPO a name or `*`, MODE `ro` or `rw`).
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Largest file an upload may create (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "1T", value_parser = super::parse_size_arg)]
    pub max_upload_size: u64,
    /// Seconds a stream session may stay unused before it expires.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub stream_timeout: f64,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Stream sessions open at once; more are refused with 429.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_stream_sessions: usize,
    /// Stream sessions one client (IP address) may have open at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_client_streams: usize,
    /// Requests one client (IP address) may have in progress at once; more get 429.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_client_requests: usize,
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let backend = Backend::from_spec(args.store.as_deref(), args.data.as_deref())?;
        let streams = StreamLimits {
            timeout: std::time::Duration::from_secs_f64(args.stream_timeout.max(0.1)),
            max_sessions: args.max_stream_sessions,
            max_per_client: args.max_client_streams,
        };
        let tls = args.tls_cert.zip(args.tls_key);
        let mut tokens: Vec<TokenGrant> = args
            .auth_tokens
            .iter()
            .map(|t| TokenGrant::full(t))
            .collect();
        if let Some(file) = &args.auth_token_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("cannot read the token file {}: {e}", file.display())
            })?;
            tokens.extend(
                parse_token_file(&text)
                    .map_err(|e| anyhow::anyhow!("token file {}: {e}", file.display()))?,
            );
        }
        let config = ServerConfig {
            max_upload_size: args.max_upload_size,
            tokens,
            streams,
            tls,
            max_client_requests: args.max_client_requests,
        };
        let server = Server::bind(backend, config, &args.listen).await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "govcfs: listening on {}", server.url())?;
        stdout.flush()?;
        server.run(shutdown_signal()).await?;
        log::info!("server stopped");
        Ok(())
    })
}
