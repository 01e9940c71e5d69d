//! The repository model: content-addressed blobs, hierarchical trees, commits and refs.
//!
//! Everything but refs is immutable and content-addressed, so any cache of it needs no
//! invalidation: chunks by the SHA-256 of their bytes, blobs by the Merkle id of their
//! manifest ([`crate::base::manifest`]), trees and commits by the SHA-256 of their Git-style
//! encoding. Refs move by compare-and-swap ([`backend`]).
//!
//! Layout inside the backend:
//! ```text
//! repos/<repo>/config.json             creation time
//! repos/<repo>/chunks/<h[0..2]>/<h>    chunks, by the SHA-256 of their bytes (<h>.crc: block CRCs)
//! repos/<repo>/manifests/<id[0..2]>/<id> blob manifests, by blob id
//! repos/<repo>/objects/<id[0..2]>/<id> trees (flat, or trie nodes: [`hamt`]) and commits
//!                                      (and blobs of stores before chunking)
//! repos/<repo>/refs/heads/<branch>     the commit id a branch points to
//! repos/<repo>/uploads/<id>/meta.json  a resumable upload and what it received (<index>.ref…)
//! journal.log                          local stores: commits not yet made durable as files
//! streams/session-key                  shared stores: the key stream session ids are signed with
//! streams/cancelled/<nonce>            shared stores: a stream session cancelled by any instance
//! ```
//!
//! Code: [`backend`] (the object storage; `backend/local.rs` and `backend/s3.rs` for what
//! differs, refs' compare-and-swap above all), `chunks` (chunk objects), `manifests` (blob
//! manifests and their cache), `blob` (reading blobs; `blob/writer.rs` writes them), [`index`]
//! (per-block checksums), [`objects`] (tree and commit encodings), [`hamt`] (the layout
//! of large directories), `repo` (repositories, refs,
//! lookups), `commit` (atomic commits; `commit/editor.rs` edits the trees, `commit/group.rs` commits
//! concurrent requests together), `file_put` (a file and its commit in one request), `upload`
//! (resumable uploads), `watch` (ref updates made by other instances), [`fsck`], [`sweep`].

pub mod backend;
mod blob;
mod chunks;
mod commit;
mod file_put;
pub mod fsck;
pub mod hamt;
pub mod index;
mod manifests;
pub mod objects;
mod repo;
pub mod sweep;
#[cfg(test)]
mod test_support;
mod upload;
mod watch;

pub use backend::Backend;
pub use blob::BlobWriter;
pub use chunks::StoredChunk;
pub use file_put::{FilePut, INLINE_FILE_MAX};
pub use objects::{Commit, Tree, TreeEntry};
pub use repo::RefUpdate;
pub use upload::ChunkChecks;
pub use watch::REF_POLL;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Errors of the store. The server maps each to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("conflict at {path}: {reason}")]
    Conflict { path: String, reason: String },
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("upload exceeds the maximum size of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("corrupt object {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("storage error: {0}")]
    Backend(#[from] object_store::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::base::paths::InvalidName> for StoreError {
    fn from(e: crate::base::paths::InvalidName) -> Self {
        StoreError::InvalidInput(e.0)
    }
}

impl From<crate::base::ids::LengthMismatch> for StoreError {
    fn from(e: crate::base::ids::LengthMismatch) -> Self {
        StoreError::InvalidInput(e.to_string())
    }
}

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Directory entries kept in decoded trees (about 200 bytes each), in each of the two tree
/// caches. Bounded by entries, not trees: every commit to a large directory makes a new
/// version of it, and a few thousand versions of a 2,000-entry directory would otherwise hold
/// hundreds of MiB.
const TREE_CACHE_ENTRIES: usize = 100_000;

/// Blob sizes, and commits' root trees, kept (about 150 bytes each).
const BLOB_SIZE_CACHE_ENTRIES: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(16_384).expect("non-zero");

/// What a cached tree weighs: the directory entries (or buckets) it holds, plus one.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Arc<Tree> {
    fn weight(&self) -> usize {
        self.entries.len() + 1
    }
}

impl Weigh for Arc<hamt::Node> {
    fn weight(&self) -> usize {
        hamt::Node::weight(self)
    }
}

/// Decoded trees by (repository, id), bounded by their weight in entries; they are
/// immutable, so this cache never goes stale.
pub(crate) struct TreeCache<V> {
    lru: lru::LruCache<(String, String), V>,
    entries: usize,
}

impl<V: Weigh + Clone> TreeCache<V> {
    fn new() -> Self {
        TreeCache {
            lru: lru::LruCache::unbounded(),
            entries: 0,
        }
    }

    pub(crate) fn get(&mut self, key: &(String, String)) -> Option<V> {
        self.lru.get(key).cloned()
    }

    pub(crate) fn put(&mut self, key: (String, String), value: V) {
        self.entries += value.weight();
        if let Some(old) = self.lru.put(key, value) {
            self.entries -= old.weight();
        }
        while self.entries > TREE_CACHE_ENTRIES {
            let Some((_, evicted)) = self.lru.pop_lru() else {
                break;
            };
            self.entries -= evicted.weight();
        }
    }
}

/// The repository store shared by all server handlers.
pub struct Store {
    backend: Backend,
    /// One queue per `repo/branch` for the commits of this process.
    branch_queues: Mutex<HashMap<String, Arc<commit::BranchQueue>>>,
    /// Whole directories assembled from the leaves of their bucket nodes.
    trees: Mutex<TreeCache<Arc<Tree>>>,
    /// Decoded tree objects of either kind (a small directory is one of them).
    nodes: Mutex<TreeCache<Arc<hamt::Node>>>,
    events: tokio::sync::broadcast::Sender<RefUpdate>,
    /// The last commit of each `repo/branch` this process made or announced.
    seen_refs: Mutex<HashMap<String, String>>,
    /// Repositories known to exist; none is ever deleted, so a hit needs no lookup.
    known_repos: Mutex<std::collections::HashSet<String>>,
    /// Decoded manifests of chunked blobs: a ranged read maps its offset to a chunk without
    /// reading the manifest again.
    manifests: Mutex<manifests::ManifestCache>,
    /// Sizes of legacy blobs by (repository, id). Blobs are immutable and never deleted, so a
    /// cached size is always right, and a ranged read skips a metadata lookup (an S3 HEAD).
    blob_sizes: Mutex<lru::LruCache<(String, String), u64>>,
    /// The root tree of each commit by (repository, commit id); commits are immutable too.
    commit_trees: Mutex<lru::LruCache<(String, String), String>>,
}

impl Store {
    /// Opens a store on `backend` and makes sure the `default` repository exists.
    pub async fn open(backend: Backend) -> Result<Self> {
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let store = Store {
            backend,
            branch_queues: Mutex::new(HashMap::new()),
            trees: Mutex::new(TreeCache::new()),
            nodes: Mutex::new(TreeCache::new()),
            events,
            seen_refs: Mutex::new(HashMap::new()),
            known_repos: Mutex::new(std::collections::HashSet::new()),
            manifests: Mutex::new(manifests::ManifestCache::new()),
            blob_sizes: Mutex::new(lru::LruCache::new(BLOB_SIZE_CACHE_ENTRIES)),
            commit_trees: Mutex::new(lru::LruCache::new(BLOB_SIZE_CACHE_ENTRIES)),
        };
        match store.create_repo(crate::api::DEFAULT_REPO).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// The commit queue of a branch.
    fn branch_queue(&self, repo: &str, branch: &str) -> Arc<commit::BranchQueue> {
        let mut queues = self.branch_queues.lock().expect("branch queues lock");
        queues
            .entry(format!("{repo}/{branch}"))
            .or_default()
            .clone()
    }

    /// The backend the store lives on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Subscribes to ref updates of every repository.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RefUpdate> {
        self.events.subscribe()
    }
}

fn object_path(repo: &str, id: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("repos/{repo}/objects/{}/{id}", &id[..2]))
}
