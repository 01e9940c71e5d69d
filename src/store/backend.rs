//! The object storage the store lives on, behind `object_store`.
//!
//! Immutable objects go through `object_store` alone. Refs, the only mutable state, need
//! compare-and-swap:
//! - on a local directory, an `flock`ed lock file and an atomic, fsynced rename
//!   (`LocalFileSystem` does not implement `PutMode::Update`);
//! - on S3, conditional puts: `If-None-Match: *` to create, `If-Match: <etag>` to move.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

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
    /// The directory of a local store; `None` on shared object storage.
    local_root: Option<PathBuf>,
    description: String,
}

impl Backend {
    /// A backend on a local directory (created if missing), with fsync on every write.
    pub fn local(root: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        let objects = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        let scratch = LocalFileSystem::new_with_prefix(&root)?;
        Ok(Backend {
            objects: Arc::new(objects),
            scratch: Arc::new(scratch),
            description: format!("file://{}", root.display()),
            local_root: Some(root),
        })
    }

    /// A backend on an S3 bucket, under `prefix` (may be empty), configured by the standard
    /// `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, credentials, region).
    pub fn s3(bucket: &str, prefix: &str) -> Result<Self> {
        Self::s3_with(bucket, prefix, &[])
    }

    /// Like [`Backend::s3`], with settings that override the environment's, by their
    /// `object_store` names (`aws_endpoint`, `aws_allow_http`, `aws_access_key_id`…).
    pub fn s3_with(bucket: &str, prefix: &str, settings: &[(&str, &str)]) -> Result<Self> {
        // object_store's HTTP client is built without a TLS provider of its own; give it ring,
        // which the server's TLS already uses. Fails only if one is installed, which is fine.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env();
        for (key, value) in settings {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|_| StoreError::InvalidInput(format!("unknown S3 setting {key:?}")))?;
            builder = builder.with_config(key, *value);
        }
        let s3 = builder
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()?;
        let prefix = prefix.trim_matches('/');
        let objects: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Backend {
            scratch: objects.clone(),
            objects,
            local_root: None,
            description: format!("s3://{bucket}/{prefix}"),
        })
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
        let Some(root) = &self.local_root else {
            return Ok(self.objects.get_range(path, range).await?);
        };
        let file = root.join(path.as_ref());
        let name = path.to_string();
        tokio::task::spawn_blocking(move || read_local_range(&file, &name, range))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
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
        if self.is_shared() {
            // S3 has no rename: a server-side copy. Overwriting an existing object is harmless,
            // it has the same bytes, and S3 replaces objects atomically.
            self.objects.copy(tmp, dest).await?;
            return self.delete(tmp).await;
        }
        match self.objects.rename_if_not_exists(tmp, dest).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => self.delete(tmp).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a ref (the text of a small mutable object).
    pub async fn read_ref(&self, path: &Path) -> Result<Option<String>> {
        Ok(self.read_ref_versioned(path).await?.map(|(text, _)| text))
    }

    /// Reads a ref and the version a conditional put must name to replace it.
    async fn read_ref_versioned(&self, path: &Path) -> Result<Option<(String, UpdateVersion)>> {
        let Some(root) = &self.local_root else {
            return match self.objects.get(path).await {
                Ok(got) => {
                    let version = UpdateVersion {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let bytes = got.bytes().await?;
                    Ok(Some((
                        String::from_utf8_lossy(&bytes).trim().to_string(),
                        version,
                    )))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        match tokio::fs::read_to_string(root.join(path.as_ref())).await {
            Ok(text) => Ok(Some((
                text.trim().to_string(),
                UpdateVersion {
                    e_tag: None,
                    version: None,
                },
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a ref to `new` if it currently holds `expected` (`None`: must not exist).
    /// Returns false when another writer got there first.
    pub async fn cas_ref(&self, path: &Path, expected: Option<&str>, new: &str) -> Result<bool> {
        let Some(root) = &self.local_root else {
            return self.cas_ref_conditional(path, expected, new).await;
        };
        let file = root.join(path.as_ref());
        let lock = root.join("refs.lock");
        let expected = expected.map(str::to_string);
        let new = new.to_string();
        tokio::task::spawn_blocking(move || cas_file(&lock, &file, expected.as_deref(), &new))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Compare-and-swap by conditional put: the put names the ETag read, so a ref moved
    /// by another instance in between fails it (412) instead of being overwritten.
    async fn cas_ref_conditional(
        &self,
        path: &Path,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool> {
        let current = self.read_ref_versioned(path).await?;
        let mode = match (current, expected) {
            (None, None) => PutMode::Create,
            (Some((text, version)), Some(expected)) if text == expected => {
                if version.e_tag.is_none() {
                    return Err(StoreError::Io(std::io::Error::other(
                        "the object store gave no ETag for a ref: it cannot be updated safely",
                    )));
                }
                // Unquoted: radosgw (Ceph 16) refuses a quoted `If-Match` ETag, even the
                // current one, with 412; S3 and moto accept both forms.
                let e_tag = version.e_tag.map(|t| t.trim_matches('"').to_string());
                PutMode::Update(UpdateVersion {
                    e_tag,
                    version: version.version,
                })
            }
            _ => return Ok(false),
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(path, PutPayload::from(new.to_string()), options)
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
}

/// Compare-and-swap of a small file under an exclusive `flock`, which the kernel releases
/// if the process dies, so a crash never leaves a stale lock.
fn cas_file(lock: &FsPath, file: &FsPath, expected: Option<&str>, new: &str) -> Result<bool> {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock)?;
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

/// Reads `range` of a local file into a buffer that is not zero-filled first: object_store's
/// local reader fills it with zeros before reading over them, which cost a streaming server
/// 7% of its CPU.
fn read_local_range(file: &FsPath, name: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut opened = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(object_store::Error::NotFound {
                path: name.to_string(),
                source: Box::new(e),
            }
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    opened.seek(SeekFrom::Start(range.start))?;
    let len = range.end - range.start;
    let mut buf = Vec::with_capacity(len as usize);
    // read_to_end reads into the spare capacity without initialising it.
    opened.take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        let reason = format!(
            "{name}: range {range:?} reaches past the end ({} bytes read)",
            buf.len()
        );
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, reason).into());
    }
    Ok(Bytes::from(buf))
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

    #[tokio::test]
    async fn local_range_reads_tell_a_missing_object_from_a_short_one() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let p = Path::from("repos/x/objects/ab/obj");
        backend
            .put(&p, Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        assert_eq!(&backend.get_range(&p, 2..7).await.unwrap()[..], b"23456");
        let missing = backend
            .get_range(&Path::from("repos/x/objects/ab/none"), 0..4)
            .await
            .unwrap_err();
        assert!(
            matches!(
                missing,
                StoreError::Backend(object_store::Error::NotFound { .. })
            ),
            "{missing:?}"
        );
        let short = backend.get_range(&p, 8..12).await.unwrap_err();
        assert!(
            matches!(&short, StoreError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{short:?}"
        );
    }
}
