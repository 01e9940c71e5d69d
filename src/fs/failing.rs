//! A [`Remote`] that makes chosen calls fail (compiled for tests only), like mountpoint-s3's
//! `failure_client`: it wraps another remote and fails the k-th call of a kind, or every call
//! of a kind from the k-th on, with a transport error, a 409 conflict or a 404. The errors are
//! built as the client library builds them and converted by [`FsError`]'s own `From`, so the
//! tests see the errno mapping a real failure gets.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use super::error::{FsError, Result};
use super::remote::Remote;
use crate::api::{BlobInfo, Change, CommitCreated, ErrorCode, TreeListing, UploadStarted};
use crate::base::manifest::ChunkHash;
use crate::client::ClientError;

/// A kind of call to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    List,
    Read,
    StartUpload,
    PutFile,
    PutChunk,
    MissingChunks,
    ReferenceChunks,
    CopyChunk,
    CompleteUpload,
    AbortUpload,
    Commit,
}

/// The failure injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// The connection broke (what a transport error becomes).
    Transport,
    /// The server answered 409 `conflict` (an `expect` did not hold).
    Conflict,
    /// The server answered 404 `not_found`.
    NotFound,
}

impl Injected {
    fn error(self, call: Call) -> FsError {
        let http = |code: ErrorCode| ClientError::Http {
            status: code.status(),
            code,
            message: format!("injected into {call:?}"),
            path: None,
        };
        FsError::from(match self {
            Injected::Transport => ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("injected into {call:?}"),
            )),
            Injected::Conflict => http(ErrorCode::Conflict),
            Injected::NotFound => http(ErrorCode::NotFound),
        })
    }
}

/// Calls numbered `first..last` (counted per kind since the remote was made) fail.
struct Rule {
    call: Call,
    calls: Range<u64>,
    error: Injected,
}

/// `inner`, with failures injected by rules.
pub struct FailingRemote<R> {
    inner: R,
    rules: Mutex<Vec<Rule>>,
    counts: Mutex<HashMap<Call, u64>>,
}

impl<R: Remote> FailingRemote<R> {
    /// `inner` with no failures yet.
    pub fn new(inner: R) -> Self {
        FailingRemote {
            inner,
            rules: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// The wrapped remote.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Calls of `call` made so far.
    pub fn calls(&self, call: Call) -> u64 {
        *self.counts.lock().expect("lock").get(&call).unwrap_or(&0)
    }

    /// The `k`-th call of `call` from now on (1: the next one) fails with `error`.
    pub fn fail_nth(&self, call: Call, k: u64, error: Injected) {
        let at = self.calls(call) + k;
        self.add(call, at..at + 1, error);
    }

    /// Every call of `call` from the `k`-th from now on fails with `error`.
    pub fn fail_from(&self, call: Call, k: u64, error: Injected) {
        let at = self.calls(call) + k;
        self.add(call, at..u64::MAX, error);
    }

    /// Removes every rule: calls succeed again.
    pub fn heal(&self) {
        self.rules.lock().expect("lock").clear();
    }

    fn add(&self, call: Call, calls: Range<u64>, error: Injected) {
        let rule = Rule { call, calls, error };
        self.rules.lock().expect("lock").push(rule);
    }

    /// Counts a call and fails it if a rule says so.
    fn enter(&self, call: Call) -> Result<()> {
        let n = {
            let mut counts = self.counts.lock().expect("lock");
            let n = counts.entry(call).or_insert(0);
            *n += 1;
            *n
        };
        let rules = self.rules.lock().expect("lock");
        match rules
            .iter()
            .find(|r| r.call == call && r.calls.contains(&n))
        {
            Some(rule) => Err(rule.error.error(call)),
            None => Ok(()),
        }
    }
}

impl<R: Remote> Remote for FailingRemote<R> {
    async fn list_dir(&self, path: &str) -> Result<TreeListing> {
        self.enter(Call::List)?;
        self.inner.list_dir(path).await
    }

    async fn read_range(&self, hash: &str, range: Range<u64>) -> Result<Bytes> {
        self.enter(Call::Read)?;
        self.inner.read_range(hash, range).await
    }

    fn upload_chunk_size(&self) -> u64 {
        self.inner.upload_chunk_size()
    }

    async fn start_upload(&self) -> Result<UploadStarted> {
        self.enter(Call::StartUpload)?;
        self.inner.start_upload().await
    }

    /// A file put is an upload and a commit in one: failures injected at either apply.
    async fn put_file(
        &self,
        data: Bytes,
        change: Change,
        message: String,
    ) -> Result<CommitCreated> {
        self.enter(Call::PutFile)?;
        self.enter(Call::Commit)?;
        self.inner.put_file(data, change, message).await
    }

    async fn put_chunk(&self, upload_id: &str, index: u64, data: Bytes) -> Result<()> {
        self.enter(Call::PutChunk)?;
        self.inner.put_chunk(upload_id, index, data).await
    }

    async fn missing_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<ChunkHash>> {
        self.enter(Call::MissingChunks)?;
        self.inner.missing_chunks(hashes).await
    }

    async fn reference_chunks(
        &self,
        upload_id: &str,
        index: u64,
        hashes: &[ChunkHash],
    ) -> Result<u64> {
        self.enter(Call::ReferenceChunks)?;
        self.inner.reference_chunks(upload_id, index, hashes).await
    }

    async fn copy_chunks(&self, upload_id: &str, run: (u64, u64), source: &str) -> Result<u64> {
        self.enter(Call::CopyChunk)?;
        self.inner.copy_chunks(upload_id, run, source).await
    }

    async fn complete_upload(&self, upload_id: &str) -> Result<BlobInfo> {
        self.enter(Call::CompleteUpload)?;
        self.inner.complete_upload(upload_id).await
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<()> {
        self.enter(Call::AbortUpload)?;
        self.inner.abort_upload(upload_id).await
    }

    async fn commit(&self, changes: Vec<Change>, message: String) -> Result<CommitCreated> {
        self.enter(Call::Commit)?;
        self.inner.commit(changes, message).await
    }
}
