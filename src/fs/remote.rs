//! What the filesystem needs from the server, as a trait: the real [`Client`] implements it,
//! and tests use an in-memory double (`mock::MemRemote`, compiled for tests only).

use std::future::Future;
use std::ops::Range;

use bytes::Bytes;

use super::error::{FsError, Result};
use super::own_commits::OwnCommits;
use crate::api::{BlobInfo, Change, CommitCreated, CommitRequest, TreeListing, UploadStarted};
use crate::base::manifest::ChunkHash;
use crate::client::{CancellationToken, Client};

/// The server as the filesystem sees it.
pub trait Remote: Send + Sync + 'static {
    /// Lists the directory at `path` ("" is the root) of the mounted ref.
    fn list_dir(&self, path: &str) -> impl Future<Output = Result<TreeListing>> + Send;
    /// Reads `range` of a blob (checksummed by the implementation).
    fn read_range(
        &self,
        hash: &str,
        range: Range<u64>,
    ) -> impl Future<Output = Result<Bytes>> + Send;
    /// The chunk size [`start_upload`](Self::start_upload) will answer with.
    fn upload_chunk_size(&self) -> u64;
    /// Starts a resumable upload; returns its id and chunk size.
    fn start_upload(&self) -> impl Future<Output = Result<UploadStarted>> + Send;
    /// Stores a small file and commits it in one request: `change` is the `Change::Put` of
    /// the blob `data` (its `hash` the blob id of `data`).
    fn put_file(
        &self,
        data: Bytes,
        change: Change,
        message: String,
    ) -> impl Future<Output = Result<CommitCreated>> + Send;
    /// Stores chunk `index` of an upload (checksummed, retried by the implementation).
    fn put_chunk(
        &self,
        upload_id: &str,
        index: u64,
        data: Bytes,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Which of the store chunks `hashes` the repository does not hold.
    fn missing_chunks(
        &self,
        hashes: &[ChunkHash],
    ) -> impl Future<Output = Result<Vec<ChunkHash>>> + Send;
    /// Makes chunk `index` of an upload the held store chunks `hashes` (no bytes are sent);
    /// returns its length.
    fn reference_chunks(
        &self,
        upload_id: &str,
        index: u64,
        hashes: &[ChunkHash],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Makes chunks `index..index + count` of an upload server-side copies of the same
    /// ranges of blob `source`, in one request; returns their total length.
    fn copy_chunks(
        &self,
        upload_id: &str,
        run: (u64, u64),
        source: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Assembles an upload into a blob.
    fn complete_upload(&self, upload_id: &str) -> impl Future<Output = Result<BlobInfo>> + Send;
    /// Drops an upload.
    fn abort_upload(&self, upload_id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Applies changes to the mounted branch in one commit.
    fn commit(
        &self,
        changes: Vec<Change>,
        message: String,
    ) -> impl Future<Output = Result<CommitCreated>> + Send;
}

/// How long to wait before reconnecting a broken event stream.
const EVENTS_RECONNECT: std::time::Duration = std::time::Duration::from_secs(2);

/// The real server, through the client library, pinned to one ref.
pub struct ClientRemote {
    client: Client,
    reference: Option<String>,
    cancel: CancellationToken,
    own: OwnCommits,
}

impl ClientRemote {
    /// Reads `reference` (a branch or commit; the default branch when `None`) through `client`.
    pub fn new(client: Client, reference: Option<String>) -> Self {
        ClientRemote {
            client,
            reference,
            cancel: CancellationToken::new(),
            own: OwnCommits::default(),
        }
    }

    /// Cancels every request in flight (at unmount).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Calls `on_change` whenever the server announces a commit on the mounted branch (other
    /// than this mount's own file writes, which it has recorded already), until
    /// [`cancel`](Self::cancel). Reconnects after failures. A commit-id mount never changes.
    pub async fn watch(&self, on_change: impl Fn() + Send) {
        let branch = match self.reference.as_deref() {
            Some(r) if crate::base::ids::is_object_id(r) => return,
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
                            Some(Ok(event))
                                if event.branch == branch || event.branch.is_empty() =>
                            {
                                if !self.own.is_own(&event).await {
                                    on_change()
                                }
                            }
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
        Ok(self
            .client
            .list_dir(path, self.reference.as_deref(), &self.cancel)
            .await?)
    }

    async fn read_range(&self, hash: &str, range: Range<u64>) -> Result<Bytes> {
        // Retries of one read stop at a deadline: a program reading from an unreachable server
        // gets EIO, not a hang.
        match tokio::time::timeout(
            READ_DEADLINE,
            self.client.read_range(hash, range.clone(), &self.cancel),
        )
        .await
        {
            Ok(result) => Ok(result?),
            Err(_) => Err(FsError::Remote(format!(
                "reading {hash} bytes {range:?} took longer than {READ_DEADLINE:?}"
            ))),
        }
    }

    fn upload_chunk_size(&self) -> u64 {
        UPLOAD_CHUNK
    }

    async fn start_upload(&self) -> Result<UploadStarted> {
        Ok(self
            .client
            .start_upload(Some(UPLOAD_CHUNK), &self.cancel)
            .await?)
    }

    async fn put_file(
        &self,
        data: Bytes,
        change: Change,
        message: String,
    ) -> Result<CommitCreated> {
        let Change::Put {
            path,
            hash,
            mode,
            mtime,
            expect,
        } = &change
        else {
            return Err(FsError::Invalid("a file put needs a put change".into()));
        };
        let options = crate::client::FilePutOptions {
            branch: self.reference.clone(),
            mode: *mode,
            mtime: *mtime,
            expect: expect.clone(),
            message,
            blob_id: Some(hash.clone()),
        };
        let in_flight = self.own.sending();
        let put = self
            .client
            .put_file(path, data, &options, &self.cancel)
            .await;
        let commit = put.as_ref().ok().map(|c| c.commit.as_str());
        in_flight.answered(std::slice::from_ref(&change), commit);
        let put = put?;
        Ok(CommitCreated {
            commit: put.commit,
            branch: put.branch,
        })
    }

    async fn put_chunk(&self, upload_id: &str, index: u64, data: Bytes) -> Result<()> {
        Ok(self
            .client
            .put_chunk(upload_id, index, data, None, &self.cancel)
            .await?)
    }

    async fn missing_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<ChunkHash>> {
        Ok(self.client.missing_chunks(hashes, &self.cancel).await?)
    }

    async fn reference_chunks(
        &self,
        upload_id: &str,
        index: u64,
        hashes: &[ChunkHash],
    ) -> Result<u64> {
        Ok(self
            .client
            .reference_chunks(upload_id, index, hashes, &self.cancel)
            .await?)
    }

    async fn copy_chunks(&self, upload_id: &str, run: (u64, u64), source: &str) -> Result<u64> {
        Ok(self
            .client
            .copy_chunks(upload_id, run, source, &self.cancel)
            .await?)
    }

    async fn complete_upload(&self, upload_id: &str) -> Result<BlobInfo> {
        Ok(self.client.complete_upload(upload_id, &self.cancel).await?)
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<()> {
        Ok(self.client.abort_upload(upload_id).await?)
    }

    async fn commit(&self, changes: Vec<Change>, message: String) -> Result<CommitCreated> {
        let request = CommitRequest {
            branch: self.reference.clone(),
            message,
            changes,
        };
        let in_flight = self.own.sending();
        let created = self.client.commit(&request, &self.cancel).await;
        let commit = created.as_ref().ok().map(|c| c.commit.as_str());
        in_flight.answered(&request.changes, commit);
        Ok(created?)
    }
}

/// How long one read of the mount may take, retries included, before it fails with EIO.
const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Chunk size the mount asks for when it uploads: the store's chunk size, so every upload
/// chunk is stored on arrival and an unchanged one is referenced, not sent (and large enough
/// for throughput, small enough that the chunks in flight keep the mount's memory low).
const UPLOAD_CHUNK: u64 = crate::base::manifest::CHUNK_SIZE;
