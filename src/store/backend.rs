//! The object storage the store lives on, behind `object_store`.
//!
//! Immutable objects go through `object_store` alone. Refs, the only mutable state, need
//! compare-and-swap: on a local directory that is an `flock`ed lock file and an atomic,
//! fsynced rename (`LocalFileSystem` does not implement `PutMode::Update`).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{Result, StoreError};

/// Size of the pieces a long range is read in: large enough for throughput, small enough
/// that a streamed response holds little memory.
const READ_PIECE: u64 = 1 << 20;

/// Where the objects live.
#[derive(Clone)]
pub struct Backend {
    objects: Arc<dyn ObjectStore>,
    /// The same storage without fsync, for scratch data whose loss is detected and repaired
    /// (upload chunks: a lost chunk is missing at `complete` and the client resends it).
    scratch: Arc<dyn ObjectStore>,
    local_root: PathBuf,
}

impl Backend {
    /// A backend on a local directory (created if missing), with fsync on every write.
    pub fn local(root: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        let objects = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        let scratch = LocalFileSystem::new_with_prefix(&root)?;
        Ok(Backend { objects: Arc::new(objects), scratch: Arc::new(scratch), local_root: root })
    }

    /// Parses a `--store` URL (`file:///abs/dir`).
    pub fn from_url(url: &str) -> Result<Self> {
        match url.strip_prefix("file://") {
            Some(dir) if dir.starts_with('/') => Self::local(FsPath::new(dir)),
            _ => Err(StoreError::InvalidInput(format!(
                "unsupported store URL {url:?}: expected file:///absolute/dir"
            ))),
        }
    }

    /// The directory of a local store.
    pub fn local_root(&self) -> &FsPath {
        &self.local_root
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
    pub fn get_owned(&self, path: Path) -> impl std::future::Future<Output = Result<Bytes>> + Send + 'static {
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
        Ok(self.objects.get_range(path, range).await?)
    }

    /// Streams `range` of an object in pieces, reading one piece ahead.
    pub fn stream_range(
        &self,
        path: Path,
        range: std::ops::Range<u64>,
    ) -> BoxStream<'static, Result<Bytes>> {
        let backend = self.clone();
        let starts = (range.start..range.end).step_by(READ_PIECE as usize);
        stream::iter(starts)
            .map(move |start| {
                let backend = backend.clone();
                let path = path.clone();
                let end = (start + READ_PIECE).min(range.end);
                async move { backend.get_range(&path, start..end).await }
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

    /// Moves a finished temporary object to its content-addressed name. If an object with
    /// that name exists, it has the same content, so the temporary one is dropped.
    pub async fn publish(&self, tmp: &Path, dest: &Path) -> Result<()> {
        match self.objects.rename_if_not_exists(tmp, dest).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => self.delete(tmp).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a ref (the text of a small mutable object).
    pub async fn read_ref(&self, path: &Path) -> Result<Option<String>> {
        let file = self.fs_path(path);
        match tokio::fs::read_to_string(&file).await {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a ref to `new` if it currently holds `expected` (`None`: must not exist).
    /// Returns false when another writer got there first.
    pub async fn cas_ref(&self, path: &Path, expected: Option<&str>, new: &str) -> Result<bool> {
        let file = self.fs_path(path);
        let lock = self.local_root.join("refs.lock");
        let expected = expected.map(str::to_string);
        let new = new.to_string();
        tokio::task::spawn_blocking(move || cas_file(&lock, &file, expected.as_deref(), &new))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    fn fs_path(&self, path: &Path) -> PathBuf {
        self.local_root.join(path.as_ref())
    }
}

/// Compare-and-swap of a small file under an exclusive `flock`, which the kernel releases
/// if the process dies, so a crash never leaves a stale lock.
fn cas_file(lock: &FsPath, file: &FsPath, expected: Option<&str>, new: &str) -> Result<bool> {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    let lock_file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock)?;
    // SAFETY: flock on a descriptor we own; it is released when `lock_file` is dropped.
    if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let current = match std::fs::read_to_string(file) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    if current.as_deref() != expected {
        return Ok(false);
    }
    let dir = file.parent().expect("ref has a parent directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(new.as_bytes())?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cas_ref_only_moves_from_the_expected_value() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let r = Path::from("repos/x/refs/heads/main");
        assert!(backend.cas_ref(&r, None, "a").await.unwrap());
        assert!(!backend.cas_ref(&r, None, "b").await.unwrap());
        assert!(!backend.cas_ref(&r, Some("b"), "c").await.unwrap());
        assert!(backend.cas_ref(&r, Some("a"), "c").await.unwrap());
        assert_eq!(backend.read_ref(&r).await.unwrap().as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn stream_range_reads_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let data: Vec<u8> = (0..(3 * READ_PIECE as usize + 17)).map(|i| (i % 251) as u8).collect();
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
