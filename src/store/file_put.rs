//! One file written and committed in one request (`PUT /<repo>/<path>`): a small file's
//! chunk, manifest, trees and commit are stored together, so on a local store the whole
//! close of a small file costs one flush of the journal.

use bytes::Bytes;

use super::chunks::prepare_chunk;
use super::commit::Inline;
use super::manifests::manifest_path;
use super::{Result, Store, StoreError};
use crate::api::{BlobInfo, Change, CommitCreated, CommitRequest};
use crate::base::manifest::{Manifest, CHUNK_SIZE};

/// Files up to this size are stored with their commit; larger ones are streamed as chunks
/// first (each durable on its own), then committed.
pub const INLINE_FILE_MAX: u64 = 1 << 20;

/// A file to put: where, with what attributes, on which condition.
#[derive(Debug, Clone, Default)]
pub struct FilePut {
    /// The branch (the default branch when `None`).
    pub branch: Option<String>,
    pub path: String,
    pub mode: Option<u32>,
    pub mtime: Option<i64>,
    /// As a commit change's `expect`: `Some(None)` means "must not exist".
    pub expect: Option<Option<String>>,
    pub message: String,
    /// The blob id the client computed: a body whose id differs is refused
    /// ([`StoreError::ChecksumMismatch`]) and nothing is committed.
    pub blob_id: Option<String>,
}

impl FilePut {
    /// Refuses a blob other than the one the client named.
    fn check_blob_id(&self, actual: &str) -> Result<()> {
        match self.blob_id.as_deref() {
            Some(expected) if !expected.eq_ignore_ascii_case(actual) => {
                Err(StoreError::ChecksumMismatch {
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The commit request that puts blob `hash` at the path.
    fn request(&self, hash: &str) -> CommitRequest {
        CommitRequest {
            branch: self.branch.clone(),
            message: if self.message.is_empty() {
                format!("put {}", self.path)
            } else {
                self.message.clone()
            },
            changes: vec![Change::Put {
                path: self.path.clone(),
                hash: hash.to_string(),
                mode: self.mode,
                mtime: self.mtime,
                expect: self.expect.clone(),
            }],
        }
    }
}

impl Store {
    /// Stores the small file `data` (at most [`INLINE_FILE_MAX`] bytes) and commits it at
    /// `put.path`, in one step.
    pub async fn put_small_file(
        &self,
        repo: &str,
        put: &FilePut,
        data: Bytes,
    ) -> Result<(BlobInfo, CommitCreated)> {
        self.ensure_repo(repo).await?;
        debug_assert!(data.len() as u64 <= INLINE_FILE_MAX.min(CHUNK_SIZE));
        let size = data.len() as u64;
        let mut objects = Vec::new();
        let mut chunks = Vec::new();
        if !data.is_empty() {
            let (chunk, chunk_objects) = prepare_chunk(repo, data).await?;
            chunks.push(chunk.hash);
            objects.extend(chunk_objects);
        }
        let manifest = Manifest::new(size, chunks);
        let hash = manifest.id();
        put.check_blob_id(&hash)?;
        objects.push((manifest_path(repo, &hash), Bytes::from(manifest.encode())));
        let blob = BlobInfo {
            hash,
            size,
            chunks: manifest.chunks.len() as u64,
        };
        let inline = Inline {
            objects,
            blob: Some((blob.hash.clone(), size)),
        };
        let created = self
            .commit_with(repo, &put.request(&blob.hash), inline)
            .await?;
        Ok((blob, created))
    }

    /// Commits blob `blob` (stored already) at `put.path`, if it is the one the client named.
    pub async fn put_stored_file(
        &self,
        repo: &str,
        put: &FilePut,
        blob: &BlobInfo,
    ) -> Result<CommitCreated> {
        put.check_blob_id(&blob.hash)?;
        self.commit(repo, &put.request(&blob.hash)).await
    }
}
