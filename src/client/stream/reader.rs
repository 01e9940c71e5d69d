//! [`StreamReader`]: a session's range as `AsyncRead` + `AsyncSeek`, fetching chunks ahead
//! concurrently and checking each against its MD5.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use super::{CancellationToken, Client, ClientError, Result, StreamOptions};
use crate::api::stream::StreamResponse;

impl Client {
    /// Opens a session and returns a reader over its range.
    pub async fn stream_reader(
        &self,
        hash: &str,
        options: &StreamOptions,
        cancel: &CancellationToken,
    ) -> Result<StreamReader> {
        let session = self.start_stream(&options.request(hash), cancel).await?;
        Ok(StreamReader::new(
            self.clone(),
            session,
            options,
            cancel.clone(),
        ))
    }
}

/// Turns an I/O error from a [`StreamReader`] back into the client error it carries.
pub(super) fn unwrap_io(e: std::io::Error) -> ClientError {
    if e.get_ref().is_some_and(|inner| inner.is::<ClientError>()) {
        let inner = e
            .into_inner()
            .expect("checked")
            .downcast::<ClientError>()
            .expect("checked");
        *inner
    } else {
        ClientError::Io(e)
    }
}

/// Reads a session's range as a byte stream, fetching up to `max_concurrent_chunks` chunks
/// ahead, each decompressed and checked against its MD5. Seeking within the range is cheap:
/// chunks ahead of the new position are kept, the others dropped.
pub struct StreamReader {
    client: Client,
    session: StreamResponse,
    zstd: bool,
    ahead: usize,
    cancel: CancellationToken,
    /// Position within the range.
    pos: u64,
    /// The chunk the position is in, once fetched.
    current: Option<(u64, Bytes)>,
    /// Chunks being fetched, in index order.
    fetching: VecDeque<(u64, JoinHandle<Result<Bytes>>)>,
    /// A seek waiting for `poll_complete`.
    seek_to: Option<u64>,
}

impl StreamReader {
    /// A reader over `session`.
    pub fn new(
        client: Client,
        session: StreamResponse,
        options: &StreamOptions,
        cancel: CancellationToken,
    ) -> Self {
        StreamReader {
            client,
            session,
            zstd: options.zstd,
            ahead: options.max_concurrent_chunks.max(1),
            cancel,
            pos: 0,
            current: None,
            fetching: VecDeque::new(),
            seek_to: None,
        }
    }

    /// The session read.
    pub fn session(&self) -> &StreamResponse {
        &self.session
    }

    /// Ends the session on the server (it would otherwise expire by itself).
    pub async fn close(mut self) -> Result<()> {
        self.stop_fetching();
        self.client
            .cancel_stream(&self.session.stream_id)
            .await
            .map(|_| ())
    }

    fn stop_fetching(&mut self) {
        for (_, handle) in self.fetching.drain(..) {
            handle.abort();
        }
    }

    /// Keeps chunks `index..index + ahead` (within the range) being fetched.
    fn fill_pipeline(&mut self, index: u64) {
        while self.fetching.front().is_some_and(|(i, _)| *i < index) {
            let (_, handle) = self.fetching.pop_front().expect("checked");
            handle.abort();
        }
        if self.fetching.front().is_some_and(|(i, _)| *i != index) {
            self.stop_fetching();
        }
        let mut next = self.fetching.back().map_or(index, |(i, _)| i + 1);
        while self.fetching.len() < self.ahead && next < self.session.chunk_count {
            let (client, id, zstd, cancel) = (
                self.client.clone(),
                self.session.stream_id.clone(),
                self.zstd,
                self.cancel.clone(),
            );
            let handle =
                tokio::spawn(async move { client.stream_chunk(&id, next, zstd, &cancel).await });
            self.fetching.push_back((next, handle));
            next += 1;
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.stop_fetching();
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let cs = this.session.chunk_size;
        loop {
            if this.pos >= this.session.total_size || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let index = this.pos / cs;
            if let Some((i, data)) = &this.current {
                if *i == index {
                    let at = (this.pos - index * cs) as usize;
                    let n = buf.remaining().min(data.len() - at);
                    buf.put_slice(&data[at..at + n]);
                    this.pos += n as u64;
                    if at + n == data.len() {
                        // Keep the pipeline full while the caller works on these bytes.
                        this.fill_pipeline(index + 1);
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            this.fill_pipeline(index);
            let (_, handle) = this
                .fetching
                .front_mut()
                .expect("the pipeline holds the chunk at the position");
            let fetched = match Pin::new(handle).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(joined) => joined,
            };
            this.fetching.pop_front();
            match fetched {
                Ok(Ok(data)) => this.current = Some((index, data)),
                Ok(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                Err(e) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

impl tokio::io::AsyncSeek for StreamReader {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let this = self.get_mut();
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => this.session.total_size.checked_add_signed(d),
            SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the range",
            )
        })?;
        this.seek_to = Some(target);
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let this = self.get_mut();
        if let Some(target) = this.seek_to.take() {
            this.pos = target;
        }
        Poll::Ready(Ok(this.pos))
    }
}

use std::future::Future;
