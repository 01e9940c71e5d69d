//! The object storage the store lives on, behind `object_store`.
//!
//! Immutable objects go through `object_store` alone. Refs, the only mutable state, need
//! compare-and-swap:
//! - on a local directory, an `flock`ed lock file and an atomic rename
//!   (`LocalFileSystem` does not implement `PutMode::Update`), made durable with the
//!   commit's objects by one record of the store's [`journal`];
//! - on S3, conditional puts: `If-None-Match: *` to create, `If-Match: <etag>` to move.
//!
//! This file has the [`Backend`] type, its constructors from a URL, and the operations both
//! kinds share; [`local`] and [`s3`] have what differs.

mod direct;
mod journal;
mod local;
mod s3;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{Result, StoreError};

/// Size of the pieces a long range is read in: large enough for throughput, small enough
/// that a streamed response holds little memory.
const READ_PIECE: u64 = 1 << 20;

/// Object writes in flight at once (each a blocking fsync on a local disk, a request on S3).
const OBJECTS_AT_ONCE: usize = 16;

/// Where the objects live.
#[derive(Clone)]
pub struct Backend {
    objects: Arc<dyn ObjectStore>,
    /// The same storage without fsync, for scratch data whose loss is detected and repaired
    /// (upload chunks: a lost chunk is missing at `complete` and the client resends it).
    scratch: Arc<dyn ObjectStore>,
    /// The directory of a local store; `None` on shared object storage.
    local_root: Option<PathBuf>,
    description: String,
}

impl Backend {
    /// The backend a command was pointed at: the `--store` URL when given, otherwise the
    /// local directory `data_dir`, by default [`Backend::default_data_dir`].
    pub fn from_spec(store_url: Option<&str>, data_dir: Option<&FsPath>) -> Result<Self> {
        match (store_url, data_dir) {
            (Some(url), _) => Self::from_url(url),
            (None, Some(dir)) => Self::local(dir),
            (None, None) => Self::local(&Self::default_data_dir()),
        }
    }

    /// Parses a `--store` URL: `file:///abs/dir` or `s3://BUCKET[/PREFIX]`.
    pub fn from_url(url: &str) -> Result<Self> {
        if let Some(dir) = url.strip_prefix("file://").filter(|d| d.starts_with('/')) {
            return Self::local(FsPath::new(dir));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !bucket.is_empty() {
                return Self::s3(bucket, prefix);
            }
        }
        Err(StoreError::InvalidInput(format!(
            "unsupported store URL {url:?}: expected file:///absolute/dir or s3://BUCKET/PREFIX"
        )))
    }

    /// Whether other server instances may share this store (object storage, not a local
    /// directory): refs must then be watched, sessions shared, and nothing swept at start.
    pub fn is_shared(&self) -> bool {
        self.local_root.is_none()
    }

    /// Where the store lives, as a URL for logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The directory of a local store; `None` on shared object storage.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// The underlying object store.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Writes a small object durably.
    pub async fn put(&self, path: &Path, data: Bytes) -> Result<()> {
        self.objects.put(path, PutPayload::from(data)).await?;
        Ok(())
    }

    /// Writes a large immutable object (a chunk) durably; on a local directory past the page
    /// cache (see [`direct`]).
    pub async fn put_immutable(&self, path: &Path, data: Bytes) -> Result<()> {
        let Some(root) = &self.local_root else {
            return self.put(path, data).await;
        };
        let file = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || direct::write_durably(&file, &data))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Writes a small object unless one exists at `path`; returns whether it wrote.
    pub async fn put_if_absent(&self, path: &Path, data: Bytes) -> Result<bool> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(path, PutPayload::from(data), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes scratch data without waiting for the disk (see [`Backend`]'s `scratch`).
    pub async fn put_scratch(&self, path: &Path, data: Bytes) -> Result<()> {
        self.scratch.put(path, PutPayload::from(data)).await?;
        Ok(())
    }

    /// Reads a small object whole.
    pub async fn get(&self, path: &Path) -> Result<Bytes> {
        Ok(self.objects.get(path).await?.bytes().await?)
    }

    /// Reads a small object whole (an owned-path form, for streams of reads).
    pub fn get_owned(
        &self,
        path: Path,
    ) -> impl std::future::Future<Output = Result<Bytes>> + Send + 'static {
        let backend = self.clone();
        async move { backend.get(&path).await }
    }

    /// Reads a small object whole, `None` if it does not exist.
    pub async fn get_opt(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.get(path).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::Backend(object_store::Error::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Size of an object, `None` if it does not exist.
    pub async fn size(&self, path: &Path) -> Result<Option<u64>> {
        match self.objects.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `range` of an object.
    pub async fn get_range(&self, path: &Path, range: std::ops::Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        match &self.local_root {
            Some(root) => Self::get_range_local(root, path, range).await,
            None => Ok(self.objects.get_range(path, range).await?),
        }
    }

    /// Streams `range` of an object in pieces, reading one piece ahead.
    pub fn stream_range(
        &self,
        path: Path,
        range: std::ops::Range<u64>,
    ) -> BoxStream<'static, Result<Bytes>> {
        self.stream_pieces(vec![(path, range)])
    }

    /// Streams ranges of several objects one after the other (the chunks of a blob), each
    /// read in pieces of at most 1 MiB, one piece ahead.
    pub fn stream_pieces(
        &self,
        reads: Vec<(Path, std::ops::Range<u64>)>,
    ) -> BoxStream<'static, Result<Bytes>> {
        let backend = self.clone();
        let pieces = reads.into_iter().flat_map(|(path, range)| {
            (range.start..range.end)
                .step_by(READ_PIECE as usize)
                .map(move |start| (path.clone(), start..(start + READ_PIECE).min(range.end)))
        });
        stream::iter(pieces)
            .map(move |(path, range)| {
                let backend = backend.clone();
                async move { backend.get_range(&path, range).await }
            })
            .buffered(2)
            .boxed()
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists the objects under a prefix (recursively).
    pub async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        let mut out = Vec::new();
        let mut listing = self.objects.list(Some(prefix));
        while let Some(meta) = listing.next().await {
            out.push(meta?);
        }
        Ok(out)
    }

    /// Lists the immediate "directories" under a prefix.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>> {
        let listing = self.objects.list_with_delimiter(Some(prefix)).await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Reads a ref (the text of a small mutable object).
    pub async fn read_ref(&self, path: &Path) -> Result<Option<String>> {
        Ok(self.read_ref_versioned(path).await?.map(|(text, _)| text))
    }

    /// Reads a ref and the version a conditional put must name to replace it.
    async fn read_ref_versioned(&self, path: &Path) -> Result<Option<(String, UpdateVersion)>> {
        match &self.local_root {
            Some(root) => Self::read_ref_local(root, path).await,
            None => self.read_ref_remote(path).await,
        }
    }

    /// Sets a ref to `new` if it currently holds `expected` (`None`: must not exist).
    /// Returns false when another writer got there first.
    pub async fn cas_ref(&self, path: &Path, expected: Option<&str>, new: &str) -> Result<bool> {
        match &self.local_root {
            Some(root) => Self::commit_local(root, Vec::new(), path, expected, new).await,
            None => self.cas_ref_conditional(path, expected, new).await,
        }
    }

    /// Stores `objects` (small, immutable, content-addressed) and moves a ref as
    /// [`cas_ref`](Self::cas_ref) does; returns false, having stored nothing on a local
    /// directory, when another writer moved the ref first. On a local directory the whole
    /// commit is made durable by one journal record (see [`journal`]).
    pub async fn commit(
        &self,
        objects: Vec<(Path, Bytes)>,
        path: &Path,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool> {
        match &self.local_root {
            Some(root) => Self::commit_local(root, objects, path, expected, new).await,
            None => {
                self.put_objects(objects).await?;
                self.cas_ref_conditional(path, expected, new).await
            }
        }
    }

    /// Writes small immutable objects durably, [`OBJECTS_AT_ONCE`] at a time (their fsyncs
    /// or requests overlap). One already stored with the same length is left alone; a
    /// shorter one (cut by a crash) is written again.
    pub async fn put_objects(&self, objects: Vec<(Path, Bytes)>) -> Result<()> {
        let writes = objects.into_iter().map(|(path, bytes)| async move {
            if self.size(&path).await? != Some(bytes.len() as u64) {
                self.put(&path, bytes).await?;
            }
            Ok::<_, StoreError>(())
        });
        stream::iter(writes)
            .buffer_unordered(OBJECTS_AT_ONCE)
            .try_collect::<()>()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stream_range_reads_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let data: Vec<u8> = (0..(3 * READ_PIECE as usize + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let p = Path::from("obj");
        backend.put(&p, Bytes::from(data.clone())).await.unwrap();
        let start = READ_PIECE - 5;
        let end = 3 * READ_PIECE + 3;
        let parts: Vec<Bytes> = backend
            .stream_range(p, start..end)
            .map(|b| b.unwrap())
            .collect()
            .await;
        let joined: Vec<u8> = parts.concat();
        assert_eq!(joined, data[start as usize..end as usize]);
    }
}
