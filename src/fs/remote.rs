//! What the filesystem needs from the server, as a trait: the real [`Client`] implements it,
//! and tests use an in-memory double ([`mock::MemRemote`](super::mock::MemRemote)).

use std::future::Future;
use std::ops::Range;

use bytes::Bytes;

use super::error::Result;
use crate::api::TreeListing;
use crate::client::{CancellationToken, Client};

/// The server as the filesystem sees it.
pub trait Remote: Send + Sync + 'static {
    /// Lists the directory at `path` ("" is the root) of the mounted ref.
    fn list_dir(&self, path: &str) -> impl Future<Output = Result<TreeListing>> + Send;
    /// Reads `range` of a blob (checksummed by the implementation).
    fn read_range(&self, hash: &str, range: Range<u64>) -> impl Future<Output = Result<Bytes>> + Send;
}

/// How long to wait before reconnecting a broken event stream.
const EVENTS_RECONNECT: std::time::Duration = std::time::Duration::from_secs(2);

/// The real server, through the client library, pinned to one ref.
pub struct ClientRemote {
    client: Client,
    reference: Option<String>,
    cancel: CancellationToken,
}

impl ClientRemote {
    /// Reads `reference` (a branch or commit; the default branch when `None`) through `client`.
    pub fn new(client: Client, reference: Option<String>) -> Self {
        ClientRemote { client, reference, cancel: CancellationToken::new() }
    }

    /// Cancels every request in flight (at unmount).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Calls `on_change` whenever the server announces a commit on the mounted branch, until
    /// [`cancel`](Self::cancel). Reconnects after failures. A commit-id mount never changes.
    pub async fn watch(&self, on_change: impl Fn() + Send) {
        let branch = match self.reference.as_deref() {
            Some(r) if r.len() == 64 && r.bytes().all(|b| b.is_ascii_hexdigit()) => return,
            Some(r) => r.to_string(),
            None => crate::api::DEFAULT_BRANCH.to_string(),
        };
        use futures::StreamExt;
        while !self.cancel.is_cancelled() {
            match self.client.ref_events(&self.cancel).await {
                Ok(events) => {
                    let mut events = std::pin::pin!(events);
                    loop {
                        let next = tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            e = events.next() => e,
                        };
                        match next {
                            Some(Ok(event)) if event.branch == branch || event.branch.is_empty() => on_change(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                log::debug!("event stream: {e}");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => log::debug!("cannot subscribe to events: {e}"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(EVENTS_RECONNECT) => {}
            }
        }
    }
}

impl Remote for ClientRemote {
    async fn list_dir(&self, path: &str) -> Result<TreeListing> {
        Ok(self.client.list_dir(path, self.reference.as_deref(), &self.cancel).await?)
    }

    async fn read_range(&self, hash: &str, range: Range<u64>) -> Result<Bytes> {
        Ok(self.client.read_range(hash, range, &self.cancel).await?)
    }
}
