//! Blob streaming over the server's WebSocket (`…/stream/websocket`): one connection carries
//! any number of requests, one after the other, each answered by a response, chunks and
//! progress messages.

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::stream::verify_chunk;
use super::{CancellationToken, Client, ClientError, Result};
use crate::api::stream::{
    StreamChunk, StreamProgress, StreamRequest, StreamResponse, WsClientMessage, WsServerMessage,
};
use crate::api::ErrorCode;
use crate::base::codec::decompress;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::WebSocket(e.to_string())
}

/// The client error an error frame stands for.
fn frame_error(message: String, code: ErrorCode) -> ClientError {
    ClientError::Http {
        status: code.status(),
        code,
        message,
        path: None,
    }
}

/// An open WebSocket to a repository's stream endpoint.
pub struct WsStream {
    socket: Socket,
}

impl Client {
    /// Connects to the repository's WebSocket (plain `ws://`; `https` servers are not
    /// supported on this path).
    pub async fn websocket(&self) -> Result<WsStream> {
        let url = self.url("/stream/websocket");
        let ws_url = match url.strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}"),
            None => {
                return Err(ClientError::WebSocket(format!(
                    "{url}: only http:// servers can be streamed over WebSocket"
                )))
            }
        };
        let mut request = ws_url.into_client_request().map_err(ws_error)?;
        if let Some(token) = &self.options.auth_token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                ClientError::WebSocket("the auth token is not a valid header value".into())
            })?;
            request.headers_mut().insert("authorization", value);
        }
        let connect = tokio_tungstenite::connect_async(request);
        let (socket, _) = tokio::time::timeout(self.options.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::WebSocket("timed out connecting".into()))?
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => ClientError::Http {
                    status: response.status().as_u16(),
                    code: ErrorCode::Unknown,
                    message: format!("the server refused the WebSocket: {}", response.status()),
                    path: None,
                },
                other => ws_error(other),
            })?;
        Ok(WsStream { socket })
    }
}

impl WsStream {
    async fn next_message(&mut self) -> Result<Option<Message>> {
        match self.socket.next().await {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(ws_error(e)),
        }
    }

    /// The next JSON message from the server (pings and pongs skipped).
    async fn next_json(&mut self) -> Result<WsServerMessage> {
        loop {
            match self.next_message().await? {
                None | Some(Message::Close(_)) => {
                    return Err(ClientError::WebSocket(
                        "the server closed the connection".into(),
                    ))
                }
                Some(Message::Text(text)) => {
                    return serde_json::from_str(&text)
                        .map_err(|e| ClientError::Protocol(format!("bad WebSocket message: {e}")));
                }
                Some(Message::Binary(_)) => {
                    return Err(ClientError::Protocol(
                        "a binary frame without a chunk header".into(),
                    ))
                }
                Some(_) => continue,
            }
        }
    }

    /// Streams `request` into `writer`, calling `on_progress` for every progress message.
    /// Each chunk is checked (sequence, size, MD5). On `cancel` the server is told to stop.
    pub async fn stream_blob<W: AsyncWrite + Unpin>(
        &mut self,
        request: &StreamRequest,
        writer: &mut W,
        mut on_progress: impl FnMut(&StreamProgress),
        cancel: &CancellationToken,
    ) -> Result<StreamResponse> {
        let response = self.open_stream(request).await?;
        let mut next = 0u64;
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => {
                    let cancel_message = WsClientMessage::Cancel { stream_id: response.stream_id.clone() };
                    let _ = self.socket.send(Message::text(cancel_message.to_text())).await;
                    return Err(ClientError::Cancelled);
                }
                m = self.next_json() => m?,
            };
            match message {
                WsServerMessage::Chunk(chunk) if chunk.stream_id == response.stream_id => {
                    if chunk.sequence_num != next {
                        return Err(ClientError::Protocol(format!(
                            "chunk {} arrived when {next} was due",
                            chunk.sequence_num
                        )));
                    }
                    self.write_chunk(&chunk, request.binary, writer).await?;
                    next += 1;
                }
                WsServerMessage::Chunk(_) => {} // a late chunk of an earlier, cancelled stream
                WsServerMessage::Progress(p) if p.stream_id == response.stream_id => {
                    on_progress(&p);
                    if next == response.chunk_count && p.status != "streaming" {
                        break;
                    }
                    if p.status == "cancelled" || p.status == "expired" {
                        return Err(ClientError::Protocol(format!(
                            "the stream was {} on the server",
                            p.status
                        )));
                    }
                }
                WsServerMessage::Progress(_) => {}
                WsServerMessage::Error { error, code, .. } => return Err(frame_error(error, code)),
                WsServerMessage::Response(_) => {
                    return Err(ClientError::Protocol(
                        "a second response in one stream".into(),
                    ))
                }
            }
        }
        writer.flush().await?;
        Ok(response)
    }

    /// Sends `request` and waits for its session.
    async fn open_stream(&mut self, request: &StreamRequest) -> Result<StreamResponse> {
        self.socket
            .send(Message::text(
                WsClientMessage::Stream(request.clone()).to_text(),
            ))
            .await
            .map_err(ws_error)?;
        loop {
            match self.next_json().await? {
                WsServerMessage::Response(r) => return Ok(r),
                WsServerMessage::Error { error, code, .. } => return Err(frame_error(error, code)),
                // The tail of an earlier stream on this connection that was cancelled.
                WsServerMessage::Chunk(_) | WsServerMessage::Progress(_) => continue,
            }
        }
    }

    /// Takes the bytes of `chunk` (inline, or the binary frame after it), checks them and
    /// writes them out.
    async fn write_chunk<W: AsyncWrite + Unpin>(
        &mut self,
        chunk: &StreamChunk,
        binary: bool,
        writer: &mut W,
    ) -> Result<()> {
        let body = if binary {
            self.binary_frame().await?
        } else {
            decode_base64(chunk)?
        };
        let data = decode_chunk(chunk, body).await?;
        writer.write_all(&data).await?;
        Ok(())
    }

    async fn binary_frame(&mut self) -> Result<Bytes> {
        loop {
            match self.next_message().await? {
                Some(Message::Binary(data)) => return Ok(data),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected a binary chunk frame, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) -> Result<()> {
        self.socket.close(None).await.map_err(ws_error)
    }
}

fn decode_base64(chunk: &StreamChunk) -> Result<Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(&chunk.data)
        .map(Bytes::from)
        .map_err(|e| {
            ClientError::Protocol(format!("chunk {}: bad base64: {e}", chunk.sequence_num))
        })
}

/// Decompresses (when compressed) and verifies a chunk's bytes.
async fn decode_chunk(chunk: &StreamChunk, body: Bytes) -> Result<Bytes> {
    let data = match (&chunk.encoding, chunk.is_compressed) {
        (Some(encoding), true) => {
            let (encoding, limit) = (encoding.clone(), chunk.size as usize);
            tokio::task::spawn_blocking(move || decompress(&body, &encoding, limit))
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .map(Bytes::from)
                .map_err(|e| ClientError::Protocol(format!("chunk {}: {e}", chunk.sequence_num)))?
        }
        (None, true) => {
            return Err(ClientError::Protocol(format!(
                "chunk {} is compressed but names no encoding",
                chunk.sequence_num
            )))
        }
        _ => body,
    };
    verify_chunk(&data, chunk.size, &chunk.checksum)?;
    Ok(data)
}
