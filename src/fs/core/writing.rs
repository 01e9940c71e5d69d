//! The write path of the core: opening files for writing, writes through the handle, and the
//! commit at flush/fsync that publishes them (see [`crate::fs::write`] for the handle itself).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Fs, Handle};
use crate::api::EntryType;
use crate::base::modes::normalize_file_mode;
use crate::base::paths::{join, parent_and_name, split_path};
use crate::fs::error::{FsError, Result};
use crate::fs::inodes::{Attr, LocalEntry};
use crate::fs::read::Pinned;
use crate::fs::recovery::recovery_dir;
use crate::fs::remote::Remote;
use crate::fs::spool::SpoolDir;
use crate::fs::write::{WriteConfig, WriteHandle};

impl<R: Remote> Fs<R> {
    fn write_config(&self) -> Result<WriteConfig> {
        let mut spool = self.spool.lock().expect("spool lock");
        if spool.is_none() {
            *spool = Some(SpoolDir::claim(&self.config.cache_dir)?);
        }
        let spool_dir = spool.as_ref().expect("claimed above").path().to_path_buf();
        Ok(WriteConfig {
            spool_dir,
            recovery_dir: recovery_dir(&self.config.cache_dir),
            chunk_size: self.remote.upload_chunk_size(),
            origin: self.config.origin.clone(),
            branch: self.config.branch.clone(),
        })
    }

    fn register_writer(&self, handle: WriteHandle) -> u64 {
        let handle = Arc::new(handle);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.pending
            .lock()
            .expect("pending lock")
            .insert(handle.ino, handle.clone());
        self.handles
            .lock()
            .expect("handles lock")
            .insert(fh, Handle::Write(handle));
        fh
    }

    /// Creates (or truncates) `name` in `parent` and opens it for writing. The file appears on
    /// the server when the handle is flushed.
    pub async fn create(&self, parent: u64, name: &str, mode: u32) -> Result<(Attr, u64)> {
        self.check_writable()?;
        let dir = self.dir_path(parent)?;
        let path = join(&dir, name);
        split_path(&path).map_err(|e| FsError::Invalid(e.to_string()))?;
        let base = match self.lookup(parent, name).await {
            Ok(a) if a.kind == EntryType::Directory => return Err(FsError::IsDir),
            Ok(a) => Some(Pinned {
                blob: Arc::from(a.hash.as_str()),
                size: a.size,
            }),
            Err(FsError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let git_mode = normalize_file_mode(Some(mode));
        let local = LocalEntry {
            kind: EntryType::File,
            size: 0,
            mode: git_mode,
            mtime: crate::base::time::now_unix(),
            hash: "",
        };
        let attr = self
            .inodes
            .lock()
            .expect("inodes lock")
            .record_local(parent, name, &local)
            .ok_or_else(|| FsError::NotFound(format!("inode {parent}")))?;
        let handle = WriteHandle::new(attr.ino, &path, base, true, git_mode, self.write_config()?)?;
        Ok((attr, self.register_writer(handle)))
    }

    /// Opens an existing file for writing (and reading, for `O_RDWR`).
    pub async fn open_write(&self, ino: u64, truncate: bool) -> Result<u64> {
        self.check_writable()?;
        let attr = self.getattr(ino).await?;
        if attr.kind == EntryType::Directory {
            return Err(FsError::IsDir);
        }
        let path = self
            .inodes
            .lock()
            .expect("inodes lock")
            .path(ino)
            .unwrap_or_default()
            .to_string();
        if self.pending_writer(ino).is_some_and(|w| w.is_uncommitted()) {
            // Another handle here holds uncommitted bytes of this file; ours would start from
            // the version before them and one of the two closes would fail.
            return Err(FsError::Busy(format!(
                "{path:?} has uncommitted writes on this mount"
            )));
        }
        let base = Pinned {
            blob: Arc::from(attr.hash.as_str()),
            size: attr.size,
        };
        let handle = WriteHandle::new(
            ino,
            &path,
            Some(base),
            truncate,
            attr.mode,
            self.write_config()?,
        )?;
        Ok(self.register_writer(handle))
    }

    /// Writes to a handle opened for writing; returns the bytes written. `lock_owner`
    /// identifies the writing process's file table (FUSE sends it with writes).
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        lock_owner: Option<u64>,
    ) -> Result<u32> {
        match self.handle(fh)? {
            Handle::Write(w) => {
                if let Some(owner) = lock_owner {
                    w.note_writer(owner);
                }
                w.write(&self.remote, offset, data).await?;
                Ok(data.len() as u32)
            }
            Handle::Read(_) => Err(FsError::BadHandle),
        }
    }

    /// Commits what a write handle holds (close(2) and fsync(2) land here). Read handles have
    /// nothing to do.
    /// `lock_owner` is the closing process's; a FLUSH from a process that did not write (a
    /// child closing an inherited descriptor) commits nothing. `None` (fsync) always commits.
    pub async fn flush(&self, fh: u64, lock_owner: Option<u64>) -> Result<()> {
        let Handle::Write(w) = self.handle(fh)? else {
            return Ok(());
        };
        if lock_owner.is_some_and(|owner| !w.flush_commits(owner)) {
            return Ok(());
        }
        self.commit_writer(&w).await
    }

    /// Commits `w` and records the committed version in the inode table.
    pub(super) async fn commit_writer(&self, w: &Arc<WriteHandle>) -> Result<()> {
        if let Some(done) = w.commit(&self.remote).await? {
            let path = w.path();
            let mut inodes = self.inodes.lock().expect("inodes lock");
            let (parent, name) = parent_and_name(&path);
            if let Some(parent_ino) = inodes.ino_of(parent) {
                let local = LocalEntry {
                    kind: EntryType::File,
                    size: done.blob.size,
                    mode: done.mode,
                    mtime: done.mtime.unwrap_or_else(crate::base::time::now_unix),
                    hash: &done.blob.hash,
                };
                inodes.record_local(parent_ino, name, &local);
            }
        }
        Ok(())
    }

    /// A new file whose first commit failed is not on the server: once its last writer is
    /// gone, the mount forgets the name too, rather than show an empty file that a later
    /// create would take as a version to replace (and fail with a conflict).
    pub(super) fn forget_if_never_committed(&self, w: &WriteHandle) {
        let path = w.path();
        let mut inodes = self.inodes.lock().expect("inodes lock");
        let never_committed = inodes
            .attr(w.ino)
            .is_some_and(|(attr, _)| attr.hash.is_empty());
        if !never_committed || inodes.ino_of(&path) != Some(w.ino) {
            return;
        }
        let (parent, name) = parent_and_name(&path);
        if let Some(parent_ino) = inodes.ino_of(parent) {
            inodes.remove_local(parent_ino, name);
        }
    }
}
