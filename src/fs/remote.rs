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
}

impl Remote for ClientRemote {
    async fn list_dir(&self, path: &str) -> Result<TreeListing> {
        Ok(self.client.list_dir(path, self.reference.as_deref(), &self.cancel).await?)
    }

    async fn read_range(&self, hash: &str, range: Range<u64>) -> Result<Bytes> {
        Ok(self.client.read_range(hash, range, &self.cancel).await?)
    }
}
