//! The repository server: axum routes over the [`Store`](crate::store::Store).
//!
//! [`router`] builds the app from an [`AppState`] ([`AppState::new`] on any store), so the
//! tests in `server/tests.rs` drive it in-process with `tower::ServiceExt::oneshot`, without
//! a socket; [`Server::bind`] puts it on a listener (TCP, optionally TLS) with graceful
//! shutdown, and `tests/` keeps one test against a real listener.
//!
//! Layout: `repos` (repositories, trees, log, commits, events), `uploads` (resumable
//! uploads), `chunks` (missing chunks, blob manifests), `blobs` (blob bytes, ranges, checksums; also used by `browse`, the browsable
//! view), `stream` (the seed streaming API and its WebSocket), `auth`, `limits`, `error`
//! (the one error type, `{"error","code"}` answers), `metrics`, `ranges`, `listen`.

pub mod auth;
mod blobs;
mod browse;
mod chunks;
pub mod error;
mod files;
mod limits;
pub mod listen;
pub mod metrics;
mod ranges;
mod repos;
pub mod stream;
#[cfg(test)]
mod tests;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::compression::CompressionLayer;

use crate::api::ErrorCode;
use crate::store::{Backend, Store};
pub use metrics::Metrics;
pub use stream::StreamLimits;

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest blob an upload may create, in bytes.
    pub max_upload_size: u64,
    /// Bearer tokens accepted and what each may do; empty means no authentication.
    pub tokens: Vec<auth::TokenGrant>,
    /// Stream session timeout and table size.
    pub streams: StreamLimits,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Requests one client (IP address) may have in progress at once.
    pub max_client_requests: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_upload_size: 1 << 40,
            tokens: Vec::new(),
            streams: Default::default(),
            tls: None,
            max_client_requests: 256,
        }
    }
}

/// Shared state of every handler.
pub struct AppState {
    /// The repositories.
    pub store: Store,
    /// Counters and gauges rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The settings it was started with.
    pub config: ServerConfig,
    /// Fires when the server begins to shut down: endless responses (event streams) end.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Upload assemblies in progress or recently finished, by `repo/upload id`.
    pub completions: uploads::Completions,
    /// Open stream sessions of the seed API.
    pub streams: stream::Sessions,
    /// Requests in progress per client.
    pub clients: limits::ClientCounts,
    /// The shared liveness lock on a local data directory (see [`crate::store::sweep`]).
    _live: Option<std::fs::File>,
}

impl AppState {
    /// The state of a server on `store`: fresh metrics, no upload or stream session in
    /// progress. On a shared store, session ids are signed with the bucket's key so other
    /// instances can adopt them. (The local liveness lock is taken by [`Server::bind`].)
    pub async fn new(store: Store, config: ServerConfig) -> crate::store::Result<AppState> {
        let metrics = Arc::new(Metrics::default());
        let mut streams =
            stream::Sessions::new(config.streams, metrics.stream_sessions_active.clone());
        if store.backend().is_shared() {
            streams = streams.shared(stream::shared_session_key(store.backend()).await?);
        }
        Ok(AppState {
            store,
            metrics,
            config,
            shutdown: tokio_util::sync::CancellationToken::new(),
            completions: Default::default(),
            streams,
            clients: Default::default(),
            _live: None,
        })
    }
}

/// Builds the whole application: the JSON API, the browsable view, health and metrics,
/// behind authentication, the per-client limit, the body timeout, JSON errors and the
/// request counter (outermost).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(api_routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
        .route("/{repo}", get(browse::repo_redirect))
        .route("/{repo}/", get(browse::browse_root))
        .route(
            "/{repo}/{*path}",
            get(browse::browse)
                .put(files::put_file)
                .layer(DefaultBodyLimit::disable()),
        )
        .fallback(|| async { error::ApiError::new(ErrorCode::NotFound, "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_clients,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            listen::BODY_READ_TIMEOUT,
        ))
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

type Routes = Router<Arc<AppState>>;

/// The largest commit request body: room for about 300,000 changes (an import or a bulk
/// move), where axum's default of 2 MB refused 20,000.
pub const MAX_COMMIT_BODY: usize = 64 << 20;

/// `/api/v1/…`: repositories, trees, commits, blobs, uploads and the stream API; an unknown
/// route or method there is a JSON error.
fn api_routes() -> Routes {
    let blob_routes = Router::new()
        .route("/api/v1/repos/{repo}/blobs/{hash}", get(blobs::get_blob))
        .route(
            "/api/v1/repos/{repo}/blobs/{hash}/manifest",
            get(chunks::manifest),
        )
        .layer(CompressionLayer::new().zstd(true).gzip(true));
    Router::new()
        .route(
            "/api/v1/repos",
            post(repos::create_repo).get(repos::list_repos),
        )
        .route("/api/v1/repos/{repo}/tree", get(repos::tree_root))
        .route("/api/v1/repos/{repo}/tree/", get(repos::tree_root))
        .route("/api/v1/repos/{repo}/tree/{*path}", get(repos::tree))
        .route("/api/v1/repos/{repo}/stat", get(repos::stat_root))
        .route("/api/v1/repos/{repo}/stat/{*path}", get(repos::stat))
        .route("/api/v1/repos/{repo}/log", get(repos::log))
        .route(
            "/api/v1/repos/{repo}/commits",
            post(repos::commit).layer(DefaultBodyLimit::max(MAX_COMMIT_BODY)),
        )
        .route("/api/v1/repos/{repo}/events", get(repos::events))
        .merge(upload_routes())
        .merge(stream_routes())
        .merge(blob_routes)
        .route(
            "/api/v1/{*rest}",
            axum::routing::any(|| async {
                error::ApiError::new(ErrorCode::NotFound, "no such API route")
            }),
        )
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
}

/// Resumable uploads; a chunk's body limit is its upload's chunk size, checked by the handler.
fn upload_routes() -> Routes {
    Router::new()
        .route("/api/v1/repos/{repo}/uploads", post(uploads::start))
        .route("/api/v1/repos/{repo}/chunks/missing", post(chunks::missing))
        .route(
            "/api/v1/repos/{repo}/uploads/{id}",
            get(uploads::status).delete(uploads::abort),
        )
        .route(
            "/api/v1/repos/{repo}/uploads/{id}/complete",
            post(uploads::complete),
        )
        .route(
            "/api/v1/repos/{repo}/uploads/{id}/{index}",
            put(uploads::put_chunk).layer(DefaultBodyLimit::disable()),
        )
}

/// The seed streaming API (CONTRACT §3).
fn stream_routes() -> Routes {
    Router::new()
        .route(
            "/api/v1/repos/{repo}/stream/blob/upload",
            post(stream::upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/repos/{repo}/stream/blob/start",
            post(stream::start),
        )
        .route(
            "/api/v1/repos/{repo}/stream/blob/{id}/chunk",
            get(stream::chunk),
        )
        .route(
            "/api/v1/repos/{repo}/stream/blob/{id}/progress",
            get(stream::progress),
        )
        .route(
            "/api/v1/repos/{repo}/stream/blob/{id}",
            axum::routing::delete(stream::cancel),
        )
        .route(
            "/api/v1/repos/{repo}/stream/websocket",
            get(stream::ws::websocket),
        )
}

/// Runs store work in a task of its own, so that a client hanging up does not cut it short: a
/// commit may be writing the commit of a whole group of requests.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = crate::store::Result<T>> + Send + 'static,
) -> error::ApiResult<T> {
    let outcome = tokio::spawn(work)
        .await
        .map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e)))?;
    Ok(outcome?)
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// Counts every answered request by route template and status, and logs it.
async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .record_request(&route, response.status().as_u16());
    log::debug!(
        "{method} {route} -> {} in {:?}",
        response.status(),
        started.elapsed()
    );
    response
}

/// A server bound to a socket, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The state, for embedding callers that want the metrics.
    pub state: Arc<AppState>,
}

impl Server {
    /// Opens the store and binds `addr` (port 0 picks an ephemeral port).
    pub async fn bind(
        backend: Backend,
        config: ServerConfig,
        addr: &str,
    ) -> anyhow::Result<Server> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(listen::tls_acceptor(cert, key)?),
            None => None,
        };
        // On shared object storage other instances may be writing at any time, so nothing
        // there can be swept at start (a bucket lifecycle rule expires `tmp/`, see README).
        let live = match backend.local_root() {
            Some(root) => {
                let (live, swept) = crate::store::sweep::claim_and_sweep(root)?;
                if let Some(swept) = swept.filter(|s| s.files + s.uploads > 0) {
                    log::info!("removed what an earlier server left: {} files ({} bytes), {} stale uploads", swept.files, swept.bytes, swept.uploads);
                }
                Some(live)
            }
            None => None,
        };
        let store = Store::open(backend).await?;
        let mut state = AppState::new(store, config).await?;
        state._live = live;
        let state = Arc::new(state);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        Ok(Server {
            listener,
            app: router(state.clone()),
            tls,
            state,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    /// `http://ADDR`, or `https://ADDR` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let token = self.state.shutdown.clone();
        tokio::spawn(stream::sweep_sessions(self.state.clone(), token.clone()));
        if self.state.store.backend().is_shared() {
            let state = self.state.clone();
            tokio::spawn(
                async move { state.store.watch_shared_refs(state.shutdown.clone()).await },
            );
        }
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        listen::serve(self.listener, self.app, self.tls, token).await;
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
