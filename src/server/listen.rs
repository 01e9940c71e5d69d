//! Accepting connections: plain TCP or TLS (rustls), HTTP/1.1 with upgrades (the WebSocket),
//! a header read timeout against clients that never finish a request, the peer address for
//! per-client limits, and a graceful shutdown that lets requests in flight finish.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body that sends nothing for this long is cut (a slow-loris upload).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A TLS handshake must complete within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read the certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("cannot read the private key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("the certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` fires, then waits (a bounded time) for the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, app, watcher).await,
                        Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                    }
                }
                None => {
                    // hyper's header timeout starts with a request's first byte: a client that
                    // connects and never sends anything is dropped here.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => serve_connection(tcp, peer, app, watcher).await,
                        _ => log::debug!("{peer} sent nothing for {HEADER_READ_TIMEOUT:?}: closed"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("requests still running {SHUTDOWN_GRACE:?} after shutdown began were cut");
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        log::debug!("connection from {peer}: {e}");
    }
}
