//! `GET /api/v1/repos/:repo/stream/websocket`: StreamRequests in, a StreamResponse, chunks
//! and progress out, several requests per connection, cancel at any time.
//!
//! Outgoing frames go through a small bounded queue drained by a writer task, so the server
//! reads at most `OUTBOX` chunks ahead of a slow client, and cancel messages are handled
//! between chunks while a stream is running. Answers to control messages (cancel, errors)
//! have their own small queue, which the writer serves first.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::chunk::{choose_encoding, read_chunk};
use super::open_session;
use super::session::Session;
use crate::api::stream::{StreamRequest, WsClientMessage, WsServerMessage};
use crate::api::ErrorCode;
use crate::base::codec::Encoding;
use crate::server::error::ApiError;
use crate::server::AppState;

/// Frames queued for the writer: how far the server may run ahead of a slow client.
const OUTBOX: usize = 4;
/// Control answers queued for the writer; a client that lets more pile up is not reading,
/// and is disconnected.
const CONTROL_OUTBOX: usize = 32;
/// Requests a client may queue behind the one streaming.
const MAX_QUEUED_REQUESTS: usize = 16;
/// A progress message goes out after this many chunks (and at the end).
const PROGRESS_EVERY: u64 = 10;
/// Largest message a client may send (requests are small JSON).
const MAX_CLIENT_MESSAGE: usize = 64 << 10;

/// The upgrade handler.
pub async fn websocket(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    client: Option<axum::extract::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(e) = state.store.ensure_repo(&repo).await {
        return ApiError::from(e).into_response();
    }
    let client = client.map(|c| c.0 .0.ip());
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(state, repo, client, socket))
}

/// The stream a connection is sending.
struct Active {
    session: Arc<Session>,
    next: u64,
    binary: bool,
    encoding: Option<Encoding>,
}

fn text(message: &WsServerMessage) -> Message {
    Message::Text(serde_json::to_string(message).expect("serializes").into())
}

fn error_frame(e: &ApiError, stream_id: Option<&str>) -> Message {
    text(&WsServerMessage::Error {
        error: e.message.clone(),
        code: e.code,
        stream_id: stream_id.map(str::to_string),
    })
}

async fn serve(
    state: Arc<AppState>,
    repo: String,
    client: Option<std::net::IpAddr>,
    socket: WebSocket,
) {
    let (mut sink, mut incoming) = socket.split();
    // Data frames travel in groups (a chunk's JSON header and its binary frame) that the
    // writer never splits with a control answer.
    let (tx, mut rx) = mpsc::channel::<Vec<Message>>(OUTBOX);
    let (control, mut control_rx) = mpsc::channel::<Message>(CONTROL_OUTBOX);
    let writer = tokio::spawn(async move {
        loop {
            let group = tokio::select! {
                biased;
                Some(m) = control_rx.recv() => vec![m],
                Some(group) = rx.recv() => group,
                else => break,
            };
            for message in group {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        }
        let _ = sink.close().await;
    });
    let mut queued: VecDeque<StreamRequest> = VecDeque::new();
    let mut active: Option<Active> = None;
    loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => break,
            message = incoming.next() => {
                let body = match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        if !reply(&control, error_frame(&ApiError::bad_request("send requests as JSON text frames"), None)) { break }
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong are answered by the protocol layer
                };
                let outcome = match WsClientMessage::parse(&body) {
                    Err(reason) => reply(&control, error_frame(&ApiError::bad_request(reason), None)),
                    Ok(WsClientMessage::Stream(request)) if queued.len() >= MAX_QUEUED_REQUESTS => {
                        let e = ApiError::new(ErrorCode::TooManyRequests, format!("at most {MAX_QUEUED_REQUESTS} requests may wait on one connection"));
                        log::debug!("websocket: refused a request for {} (queue full)", request.hash);
                        reply(&control, error_frame(&e, None))
                    }
                    Ok(WsClientMessage::Stream(request)) => {
                        queued.push_back(request);
                        true
                    }
                    Ok(WsClientMessage::Cancel { stream_id }) => {
                        if active.as_ref().is_some_and(|a| a.session.id == stream_id) {
                            active = None;
                        }
                        match state.streams.cancel(&repo, &stream_id) {
                            Ok(progress) => reply(&control, text(&WsServerMessage::Progress(progress))),
                            Err(l) => reply(&control, error_frame(&super::lookup_error(&stream_id, l), Some(&stream_id))),
                        }
                    }
                };
                if !outcome {
                    log::debug!("websocket: the client does not read its answers; closing");
                    break;
                }
            }
            permit = tx.reserve(), if active.is_some() || !queued.is_empty() => {
                let Ok(permit) = permit else { break };
                let Some(a) = active.as_mut() else {
                    let request = queued.pop_front().expect("guarded by the select condition");
                    match open_session(&state, client, &repo, &request).await {
                        Ok((session, response)) => {
                            permit.send(vec![text(&WsServerMessage::Response(response))]);
                            active = Some(Active { session, next: 0, binary: request.binary, encoding: choose_encoding(None, request.enable_gzip) });
                        }
                        Err(e) => permit.send(vec![error_frame(&e, None)]),
                    }
                    continue;
                };
                let count = a.session.chunk_count();
                // Done, or cancelled elsewhere (DELETE on the HTTP route).
                if a.next >= count || a.session.is_cancelled() {
                    permit.send(vec![text(&WsServerMessage::Progress(a.session.progress()))]);
                    state.streams.close(&a.session.id);
                    active = None;
                    continue;
                }
                match read_chunk(&state, &a.session, a.next, a.encoding).await {
                    Ok(chunk) => {
                        let mut group = vec![text(&WsServerMessage::Chunk(chunk.to_json(&a.session.id, !a.binary)))];
                        if a.binary {
                            group.push(Message::Binary(chunk.body));
                        }
                        a.next += 1;
                        if a.next % PROGRESS_EVERY == 0 && a.next < count {
                            group.push(text(&WsServerMessage::Progress(a.session.progress())));
                        }
                        permit.send(group);
                    }
                    Err(e) => {
                        permit.send(vec![error_frame(&e, Some(&a.session.id))]);
                        state.streams.close(&a.session.id);
                        active = None;
                    }
                }
            }
        }
    }
    if let Some(a) = active {
        state.streams.close(&a.session.id);
    }
    drop((tx, control));
    let _ = writer.await;
}

/// Queues a control answer without waiting; false when the client has stopped reading.
fn reply(tx: &mpsc::Sender<Message>, message: Message) -> bool {
    tx.try_send(message).is_ok()
}
