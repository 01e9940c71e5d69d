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
use futures::stream::SplitSink;
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

/// What the read loop does after an event.
enum Flow {
    Continue,
    Close,
}

/// One connection's state: the requests waiting and the stream being sent.
struct Connection {
    state: Arc<AppState>,
    repo: String,
    client: Option<std::net::IpAddr>,
    queued: VecDeque<StreamRequest>,
    active: Option<Active>,
    control: mpsc::Sender<Message>,
}

async fn serve(
    state: Arc<AppState>,
    repo: String,
    client: Option<std::net::IpAddr>,
    socket: WebSocket,
) {
    let (sink, mut incoming) = socket.split();
    // Data frames travel in groups (a chunk's JSON header and its binary frame) that the
    // writer never splits with a control answer.
    let (tx, rx) = mpsc::channel::<Vec<Message>>(OUTBOX);
    let (control, control_rx) = mpsc::channel::<Message>(CONTROL_OUTBOX);
    let writer = tokio::spawn(write_frames(sink, rx, control_rx));
    let mut conn = Connection {
        state: state.clone(),
        repo,
        client,
        queued: VecDeque::new(),
        active: None,
        control,
    };
    loop {
        let flow = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => Flow::Close,
            message = incoming.next() => conn.on_message(message),
            permit = tx.reserve(), if conn.active.is_some() || !conn.queued.is_empty() => {
                match permit {
                    Ok(permit) => conn.send_next(permit).await,
                    Err(_) => Flow::Close,
                }
            }
        };
        if let Flow::Close = flow {
            break;
        }
    }
    if let Some(a) = conn.active.take() {
        state.streams.close(&a.session.id);
    }
    drop((tx, conn));
    let _ = writer.await;
}

/// The writer task: control answers first, then data groups, until both queues close.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Vec<Message>>,
    mut control_rx: mpsc::Receiver<Message>,
) {
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
}

impl Connection {
    /// Handles one incoming message: a request is queued, a cancel answered at once.
    fn on_message(&mut self, message: Option<Result<Message, axum::Error>>) -> Flow {
        let body = match message {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Flow::Close,
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let e = ApiError::bad_request("send requests as JSON text frames");
                return self.reply(error_frame(&e, None));
            }
            Some(Ok(_)) => return Flow::Continue, // ping/pong: the protocol layer answers
        };
        match WsClientMessage::parse(&body) {
            Err(reason) => self.reply(error_frame(&ApiError::bad_request(reason), None)),
            Ok(WsClientMessage::Stream(request)) if self.queued.len() >= MAX_QUEUED_REQUESTS => {
                let e = ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!("at most {MAX_QUEUED_REQUESTS} requests may wait on one connection"),
                );
                log::debug!(
                    "websocket: refused a request for {} (queue full)",
                    request.hash
                );
                self.reply(error_frame(&e, None))
            }
            Ok(WsClientMessage::Stream(request)) => {
                self.queued.push_back(request);
                Flow::Continue
            }
            Ok(WsClientMessage::Cancel { stream_id }) => self.cancel(&stream_id),
        }
    }

    /// Cancels a stream of this connection (or any session of the repository) and answers its
    /// last progress.
    fn cancel(&mut self, stream_id: &str) -> Flow {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.session.id == stream_id)
        {
            self.active = None;
        }
        let answer = match self.state.streams.cancel(&self.repo, stream_id) {
            Ok(progress) => text(&WsServerMessage::Progress(progress)),
            Err(l) => error_frame(&super::lookup_error(stream_id, l), Some(stream_id)),
        };
        self.reply(answer)
    }

    /// Queues a control answer without waiting; a client that has stopped reading them is
    /// disconnected.
    fn reply(&self, message: Message) -> Flow {
        if reply(&self.control, message) {
            Flow::Continue
        } else {
            log::debug!("websocket: the client does not read its answers; closing");
            Flow::Close
        }
    }

    /// With room in the outbox: opens the next queued stream, or sends the active one's next
    /// chunk (or its final progress).
    async fn send_next(&mut self, permit: mpsc::Permit<'_, Vec<Message>>) -> Flow {
        let Some(a) = self.active.as_mut() else {
            let request = self
                .queued
                .pop_front()
                .expect("guarded by the select condition");
            self.open(permit, request).await;
            return Flow::Continue;
        };
        let count = a.session.chunk_count();
        // Done, or cancelled elsewhere (DELETE on the HTTP route).
        if a.next >= count || a.session.is_cancelled() {
            permit.send(vec![text(&WsServerMessage::Progress(a.session.progress()))]);
            self.finish();
            return Flow::Continue;
        }
        match read_chunk(&self.state, &a.session, a.next, a.encoding).await {
            Ok(chunk) => {
                let mut group = vec![text(&WsServerMessage::Chunk(
                    chunk.to_json(&a.session.id, !a.binary),
                ))];
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
                self.finish();
            }
        }
        Flow::Continue
    }

    /// Opens a session for `request` and answers its StreamResponse (or the error).
    async fn open(&mut self, permit: mpsc::Permit<'_, Vec<Message>>, request: StreamRequest) {
        match open_session(&self.state, self.client, &self.repo, &request).await {
            Ok((session, response)) => {
                permit.send(vec![text(&WsServerMessage::Response(response))]);
                self.active = Some(Active {
                    session,
                    next: 0,
                    binary: request.binary,
                    encoding: choose_encoding(None, request.enable_gzip),
                });
            }
            Err(e) => permit.send(vec![error_frame(&e, None)]),
        }
    }

    /// Ends the active stream and frees its session.
    fn finish(&mut self) {
        if let Some(a) = self.active.take() {
            self.state.streams.close(&a.session.id);
        }
    }
}

/// Queues a control answer without waiting; false when the client has stopped reading.
fn reply(tx: &mpsc::Sender<Message>, message: Message) -> bool {
    tx.try_send(message).is_ok()
}
