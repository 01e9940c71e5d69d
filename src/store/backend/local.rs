//! The local-directory backend: objects through `LocalFileSystem` with fsync, refs by
//! compare-and-swap under an `flock`ed lock file with an atomic, fsynced rename
//! (`LocalFileSystem` does not implement `PutMode::Update`), and ranged reads straight from
//! the file.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::UpdateVersion;

use super::Backend;
use crate::store::{Result, StoreError};

impl Backend {
    /// The default local store: `$XDG_DATA_HOME/govcfs` or `~/.local/share/govcfs`.
    pub fn default_data_dir() -> PathBuf {
        match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(xdg) => PathBuf::from(xdg).join("govcfs"),
            None => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."));
                home.join(".local/share/govcfs")
            }
        }
    }

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

    /// Reads `range` of an object of the local store at `root`.
    pub(super) async fn get_range_local(
        root: &FsPath,
        path: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        let file = root.join(path.as_ref());
        let name = path.to_string();
        tokio::task::spawn_blocking(move || read_local_range(&file, &name, range))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Reads a ref of the local store at `root` (a local ref has no version to name).
    pub(super) async fn read_ref_local(
        root: &FsPath,
        path: &Path,
    ) -> Result<Option<(String, UpdateVersion)>> {
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

    /// Compare-and-swap of a ref of the local store at `root`, on a blocking thread.
    pub(super) async fn cas_ref_local(
        root: &FsPath,
        path: &Path,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool> {
        let file = root.join(path.as_ref());
        let lock = root.join("refs.lock");
        let expected = expected.map(str::to_string);
        let new = new.to_string();
        tokio::task::spawn_blocking(move || cas_file(&lock, &file, expected.as_deref(), &new))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }
}

/// Compare-and-swap of a small file under an exclusive `flock`, which the kernel releases
/// if the process dies, so a crash never leaves a stale lock.
fn cas_file(lock: &FsPath, file: &FsPath, expected: Option<&str>, new: &str) -> Result<bool> {
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
    replace_durably(file, new)?;
    Ok(true)
}

/// Replaces the content of `file` atomically and durably without freeing an inode. The new
/// content goes to a companion file `.<name>.alt` (kept between updates), which is fsynced and
/// then swapped with `file` by `renameat2(RENAME_EXCHANGE)`. A replacing rename would free the
/// old inode each time, and ext4 makes every later file creation in the block group skip the
/// inodes freed in the last seconds with one buffer lookup each (`recently_deleted`): at 100
/// commits/s that was the largest part of the server's CPU for small files. Where the swap is
/// unavailable, or `file` does not exist yet, a plain rename does (still atomic).
fn replace_durably(file: &FsPath, new: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;

    let dir = file.parent().expect("ref has a parent directory");
    std::fs::create_dir_all(dir)?;
    let name = file.file_name().expect("ref has a name").to_string_lossy();
    let alt = dir.join(format!(".{name}.alt"));
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&alt)?;
    out.write_all_at(new.as_bytes(), 0)?;
    out.set_len(new.len() as u64)?;
    out.sync_all()?;
    if let Err(e) = exchange(&alt, file) {
        let unsupported = matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        ) || e.kind() == std::io::ErrorKind::Unsupported;
        if !(unsupported || e.kind() == std::io::ErrorKind::NotFound) {
            return Err(e);
        }
        std::fs::rename(&alt, file)?;
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Swaps two names atomically.
#[cfg(target_os = "linux")]
fn exchange(a: &FsPath, b: &FsPath) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths, resolved from the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &FsPath, _: &FsPath) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
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

    #[test]
    fn a_replaced_file_keeps_its_inode_pair_and_reads_whole() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("heads/main");
        replace_durably(&file, "first-value-longer").unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "first-value-longer"
        );
        replace_durably(&file, "second").unwrap();
        let inodes = |p: &FsPath| std::fs::metadata(p).unwrap().ino();
        let alt = dir.path().join("heads/.main.alt");
        let pair = [inodes(&file), inodes(&alt)];
        for value in ["third", "fourth-value"] {
            replace_durably(&file, value).unwrap();
            assert_eq!(std::fs::read_to_string(&file).unwrap(), value);
            let mut now = [inodes(&file), inodes(&alt)];
            now.sort();
            let mut before = pair;
            before.sort();
            assert_eq!(now, before, "an inode was replaced");
        }
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
