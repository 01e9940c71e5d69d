//! The client library: everything the CLI and the mount need from a govcfs server.
//!
//! One file per concern: [`retry`] (backoff policy), [`blobs`] (ranged, checksummed
//! downloads), [`upload`] (resumable chunked uploads), [`repo`] (repositories, trees,
//! commits). Every call retries connect errors, timeouts and 5xx with exponential backoff
//! and jitter, never 4xx, and stops early when its cancellation token fires.

mod blobs;
mod download;
mod file_put;
mod repo;
pub mod retry;
pub mod stream;
mod upload;
pub mod ws;

use std::time::Duration;

pub use blobs::DownloadOptions;
pub use file_put::FilePutOptions;
pub use retry::RetryPolicy;
pub use stream::{StreamOptions, StreamReader};
pub use tokio_util::sync::CancellationToken;
pub use upload::UploadOptions;

use crate::api::{ErrorBody, ErrorCode};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("server answered {status}: {message}")]
    Http {
        status: u16,
        code: ErrorCode,
        message: String,
        path: Option<String>,
    },
    /// The request did not get an answer (connect, timeout, body cut short…).
    #[error("cannot reach the server: {0}")]
    Transport(#[source] reqwest::Error),
    /// The bytes received do not match their checksum.
    #[error("checksum mismatch: expected {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    /// The server answered something the client cannot understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The operation was cancelled through its token.
    #[error("cancelled")]
    Cancelled,
    /// A local read or write failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket could not be opened or broke.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// A URL that is not `http(s)://HOST:PORT/REPO[/PATH]`.
    #[error("invalid URL {0:?}: expected http://HOST:PORT/REPO[/PATH]")]
    InvalidUrl(String),
}

impl ClientError {
    /// Whether trying again may help: transport failures, 5xx, 429 and corrupted bytes.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) | ClientError::Checksum { .. } => true,
            ClientError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result type of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A parsed `http(s)://HOST:PORT/REPO/PATH` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    /// `http(s)://HOST:PORT`, without a trailing slash.
    pub server: String,
    /// The repository name (may be empty for server-level URLs).
    pub repo: String,
    /// The path inside the repository, without leading or trailing slashes.
    pub path: String,
}

impl RepoUrl {
    /// Parses a URL; the repository and path parts may be empty.
    pub fn parse(url: &str) -> Result<RepoUrl> {
        let invalid = || ClientError::InvalidUrl(url.to_string());
        let rest = url
            .strip_prefix("http://")
            .map(|r| ("http://", r))
            .or_else(|| url.strip_prefix("https://").map(|r| ("https://", r)))
            .ok_or_else(invalid)?;
        let (scheme, rest) = rest;
        let (host, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(invalid());
        }
        let (repo, path) = tail.split_once('/').unwrap_or((tail, ""));
        Ok(RepoUrl {
            server: format!("{scheme}{host}"),
            repo: repo.to_string(),
            path: path.trim_matches('/').to_string(),
        })
    }
}

/// Settings shared by every call of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bearer token sent with every request.
    pub auth_token: Option<String>,
    /// Retry policy of every request.
    pub retry: RetryPolicy,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed between two reads of a response (catches a stalled server).
    pub read_timeout: Duration,
    /// A PEM certificate to trust besides the system's (a server's self-signed one).
    pub ca_cert: Option<std::path::PathBuf>,
}

impl ClientOptions {
    /// The defaults, with the bearer token from `GOVCFS_TOKEN` and an extra trusted
    /// certificate from `GOVCFS_CA_CERT`, as the command line uses them.
    pub fn from_env() -> Self {
        ClientOptions {
            auth_token: std::env::var("GOVCFS_TOKEN").ok().filter(|t| !t.is_empty()),
            ca_cert: std::env::var_os("GOVCFS_CA_CERT")
                .filter(|p| !p.is_empty())
                .map(Into::into),
            ..ClientOptions::default()
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            auth_token: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            ca_cert: None,
        }
    }
}

/// Upper bound for calls that may legitimately take long (assembling a huge upload).
const PATIENT_TIMEOUT: Duration = Duration::from_secs(3600);

/// A connection-pooled client of one repository. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For calls whose answer may take long (assembling an upload): no read timeout.
    http_patient: reqwest::Client,
    server: String,
    repo: String,
    options: ClientOptions,
}

impl Client {
    /// A client of repository `repo` on `server` (`http://HOST:PORT`).
    pub fn new(server: &str, repo: &str, options: ClientOptions) -> Result<Client> {
        let trusted = match &options.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)?;
                Some(reqwest::Certificate::from_pem(&pem).map_err(ClientError::Transport)?)
            }
            None => None,
        };
        let trust = |builder: reqwest::ClientBuilder| match &trusted {
            Some(cert) => builder.add_root_certificate(cert.clone()),
            None => builder,
        };
        let http = trust(reqwest::Client::builder())
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .map_err(ClientError::Transport)?;
        let http_patient = trust(reqwest::Client::builder())
            .connect_timeout(options.connect_timeout)
            .timeout(PATIENT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Client {
            http,
            http_patient,
            server: server.trim_end_matches('/').to_string(),
            repo: repo.to_string(),
            options,
        })
    }

    /// A client for the repository named in `url`.
    pub fn from_url(url: &RepoUrl, options: ClientOptions) -> Result<Client> {
        Self::new(&url.server, &url.repo, options)
    }

    /// The repository this client talks to.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The server base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/api/v1/repos/{}{tail}", self.server, self.repo)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.authorize(self.http.request(method, url))
    }

    /// A request that may wait long for its answer.
    fn patient_request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.authorize(self.http_patient.request(method, url))
    }

    fn authorize(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.options.auth_token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a request built by `make` (again on each retry) and returns a successful answer.
    async fn send(
        &self,
        cancel: &CancellationToken,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        self.options
            .retry
            .run(cancel, || async {
                check(make().send().await.map_err(ClientError::Transport)?).await
            })
            .await
    }
}

/// Turns an error status into a [`ClientError::Http`] carrying the server's JSON message.
async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let (code, message, path) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.code, body.error, body.path),
        Err(_) => (
            ErrorCode::Unknown,
            if text.is_empty() {
                status.to_string()
            } else {
                text
            },
            None,
        ),
    };
    Err(ClientError::Http {
        status: status.as_u16(),
        code,
        message,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = RepoUrl::parse("http://127.0.0.1:7070/default/a/b.txt").unwrap();
        assert_eq!(u.server, "http://127.0.0.1:7070");
        assert_eq!(u.repo, "default");
        assert_eq!(u.path, "a/b.txt");
        let u = RepoUrl::parse("https://h:1/r/").unwrap();
        assert_eq!((u.repo.as_str(), u.path.as_str()), ("r", ""));
        let u = RepoUrl::parse("http://h:1").unwrap();
        assert_eq!(u.repo, "");
        assert!(RepoUrl::parse("ftp://h/r").is_err());
        assert!(RepoUrl::parse("http:///r").is_err());
    }
}
