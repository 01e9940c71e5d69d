//! The GoVC WebSocket of a test server, connected with default socket buffers.

use std::time::Duration;

use crate::common::ServerProcess;

/// A client WebSocket to a test server.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The WebSocket URL of `repo` on `srv`.
pub fn ws_url(srv: &ServerProcess, repo: &str) -> String {
    format!("ws://{}/api/v1/repos/{repo}/stream/websocket", srv.addr)
}

/// Connects to the `default` repository's WebSocket; the handshake must finish within 10 s.
pub async fn ws_connect(srv: &ServerProcess) -> Ws {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(ws_url(srv, "default")),
    )
    .await
    .expect("WebSocket handshake within 10 s")
    .expect("WebSocket handshake");
    ws
}
