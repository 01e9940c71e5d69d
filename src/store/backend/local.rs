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

use super::journal::{self, Record};
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
        if journal::AVAILABLE {
            replay_journal(&root)?;
        }
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

    /// Compare-and-swap of a ref of the local store at `root` that also stores `objects`
    /// (written only if the ref moves), on a blocking thread.
    pub(super) async fn commit_local(
        root: &FsPath,
        objects: Vec<(Path, Bytes)>,
        path: &Path,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool> {
        let root = root.to_path_buf();
        let path = path.to_string();
        let expected = expected.map(str::to_string);
        let new = new.to_string();
        tokio::task::spawn_blocking(move || {
            let _lock = lock_refs(&root)?;
            let file = root.join(&path);
            if read_ref_file(&file)?.as_deref() != expected.as_deref() {
                return Ok(false);
            }
            if journal::AVAILABLE {
                commit_journaled(&root, objects, (&path, &new))?;
            } else {
                for (object, bytes) in objects {
                    super::direct::write_durably(&root.join(object.as_ref()), &bytes)?;
                }
                replace_durably(&file, &new)?;
            }
            Ok(true)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }
}

/// Holds the store's `refs.lock` exclusively until dropped. An `flock`: the kernel releases
/// it if the process dies, so a crash never leaves a stale lock.
fn lock_refs(root: &FsPath) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;

    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("refs.lock"))?;
    // SAFETY: flock on a descriptor we own; it is released when `lock_file` is dropped.
    if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lock_file)
}

fn read_ref_file(file: &FsPath) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes a commit durable with one journal record, then writes its files without fsync (see
/// [`journal`]). Objects the store holds already are left out. Call under the refs lock.
fn commit_journaled(
    root: &FsPath,
    objects: Vec<(Path, Bytes)>,
    (path, new): (&str, &str),
) -> std::io::Result<()> {
    let mut record = Record::default();
    for (object, bytes) in objects {
        let file = root.join(object.as_ref());
        if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
            record.objects.push((object.to_string(), bytes.to_vec()));
        }
    }
    record.refs.push((path.to_string(), new.to_string()));
    let len = journal::append(root, &record)?;
    apply_record(root, &record)?;
    if len > journal::CHECKPOINT_BYTES {
        journal::checkpoint(root)?;
    }
    Ok(())
}

/// Writes a record's objects and refs as files, without fsync.
fn apply_record(root: &FsPath, record: &Record) -> std::io::Result<()> {
    for (object, bytes) in &record.objects {
        write_loose(&root.join(object), bytes)?;
    }
    for (path, value) in &record.refs {
        replace(&root.join(path), value, false)?;
    }
    Ok(())
}

/// Writes a whole file under a staging name and renames it into place, so a reader never
/// sees it half-written (no fsync: the journal holds its bytes).
fn write_loose(dest: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    let mut staging = dest.as_os_str().to_owned();
    staging.push(format!("#{}", fastrand::u64(..)));
    let staging = PathBuf::from(staging);
    if let Err(e) = std::fs::write(&staging, bytes) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
        std::fs::create_dir_all(dest.parent().expect("an object path has a parent"))?;
        std::fs::write(&staging, bytes)?;
    }
    std::fs::rename(&staging, dest)
}

/// Applies the records a crash left in the journal (all of them: replay is idempotent), makes
/// them durable and empties the journal.
fn replay_journal(root: &FsPath) -> Result<()> {
    let _lock = lock_refs(root)?;
    let records = journal::read(root)?;
    if records.is_empty() {
        return Ok(());
    }
    for record in &records {
        apply_record(root, record)?;
    }
    journal::checkpoint(root)?;
    log::info!(
        "{}: replayed {} journaled commit(s)",
        root.display(),
        records.len()
    );
    Ok(())
}

/// Replaces the content of `file` atomically and durably without freeing an inode. The new
/// content goes to a companion file `.<name>.alt` (kept between updates), which is fsynced and
/// then swapped with `file` by `renameat2(RENAME_EXCHANGE)`. A replacing rename would free the
/// old inode each time, and ext4 makes every later file creation in the block group skip the
/// inodes freed in the last seconds with one buffer lookup each (`recently_deleted`): at 100
/// commits/s that was the largest part of the server's CPU for small files. Where the swap is
/// unavailable, or `file` does not exist yet, a plain rename does (still atomic).
fn replace_durably(file: &FsPath, new: &str) -> std::io::Result<()> {
    replace(file, new, true)
}

/// [`replace_durably`], with the fsyncs only when `durable` (a journaled ref needs none).
fn replace(file: &FsPath, new: &str, durable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;

    let dir = file.parent().expect("ref has a parent directory");
    let name = file.file_name().expect("ref has a name").to_string_lossy();
    let alt = dir.join(format!(".{name}.alt"));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&alt)
    };
    // The directory exists but for a branch's first commit: no mkdir on every update.
    let out = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            open()?
        }
        other => other?,
    };
    out.write_all_at(new.as_bytes(), 0)?;
    out.set_len(new.len() as u64)?;
    if durable {
        out.sync_all()?;
    }
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
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

    #[tokio::test]
    async fn a_commit_whose_files_a_crash_lost_is_replayed_from_the_journal() {
        if !journal::AVAILABLE {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let r = Path::from("repos/x/refs/heads/main");
        let object = Path::from("repos/x/objects/ab/abcd");
        let moved = backend
            .commit(
                vec![(object.clone(), Bytes::from_static(b"tree"))],
                &r,
                None,
                "c1",
            )
            .await
            .unwrap();
        assert!(moved);
        let lost = backend
            .commit(
                vec![(object.clone(), Bytes::from_static(b"other"))],
                &r,
                None,
                "c2",
            )
            .await
            .unwrap();
        assert!(!lost, "a commit from a stale head must not move the ref");
        assert_eq!(&backend.get(&object).await.unwrap()[..], b"tree");
        // What a power cut may do to files written without fsync: gone, or cut short.
        std::fs::remove_file(dir.path().join(object.as_ref())).unwrap();
        std::fs::write(dir.path().join(r.as_ref()), "").unwrap();
        let reopened = Backend::local(dir.path()).unwrap();
        assert_eq!(&reopened.get(&object).await.unwrap()[..], b"tree");
        assert_eq!(reopened.read_ref(&r).await.unwrap().as_deref(), Some("c1"));
        assert!(
            journal::read(dir.path()).unwrap().is_empty(),
            "replay empties the journal"
        );
        assert!(reopened.cas_ref(&r, Some("c1"), "c3").await.unwrap());
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
