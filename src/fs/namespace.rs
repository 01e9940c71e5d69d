//! Namespace changes made through the mount: each is one commit that checks, with `expect`,
//! that the server still has what this mount saw, so two mounts never silently overwrite
//! each other.

use super::core::Fs;
use super::error::{FsError, Result};
use super::inodes::{Attr, LocalEntry};
use super::remote::Remote;
use crate::api::{Change, EntryType};
use crate::base::modes::{normalize_file_mode, MODE_DIR, MODE_SYMLINK};
use crate::base::paths::join;
use crate::base::time::now_unix;

/// Git mode of a file with the executable bit taken from a chmod mode.
fn with_exec_bit(mode: u32) -> u32 {
    normalize_file_mode(Some(mode))
}

impl<R: Remote> Fs<R> {
    async fn commit_changes(&self, changes: Vec<Change>, message: String) -> Result<()> {
        self.remote.commit(changes, message).await.map(|_| ())
    }

    /// After a delete of `name` met a conflict: ENOENT if the server no longer has it
    /// (deleted elsewhere: what `rm` of a missing file reports), else the conflict.
    async fn gone_or_conflict(&self, parent: u64, name: &str, conflict: FsError) -> FsError {
        self.inodes.lock().expect("inodes lock").expire_dir(parent);
        match self.lookup(parent, name).await {
            Err(FsError::NotFound(why)) => FsError::NotFound(format!("deleted elsewhere: {why}")),
            _ => conflict,
        }
    }

    fn child_path(&self, parent: u64, name: &str) -> Result<String> {
        let path = join(&self.dir_path(parent)?, name);
        crate::base::paths::split_path(&path).map_err(|e| FsError::Invalid(e.to_string()))?;
        Ok(path)
    }

    /// `mkdir`: an empty directory, committed at once.
    pub async fn mkdir(&self, parent: u64, name: &str) -> Result<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        match self.lookup(parent, name).await {
            Ok(_) => return Err(FsError::Exists(path)),
            Err(FsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.commit_changes(
            vec![Change::Mkdir { path: path.clone() }],
            format!("mkdir {path}"),
        )
        .await?;
        let local = LocalEntry {
            kind: EntryType::Directory,
            size: 0,
            mode: MODE_DIR,
            mtime: now_unix(),
            hash: "",
        };
        let mut inodes = self.inodes.lock().expect("inodes lock");
        inodes
            .record_local(parent, name, &local)
            .ok_or(FsError::NotFound(path))
    }

    /// `rmdir`: only an empty directory; refused if it gained entries on the server.
    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let attr = self.lookup(parent, name).await?;
        if attr.kind != EntryType::Directory {
            return Err(FsError::NotDir);
        }
        self.inodes
            .lock()
            .expect("inodes lock")
            .expire_dir(attr.ino);
        if !self.readdir(attr.ino).await?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        // The directory's tree id as the server has it now (after whatever was just removed
        // from it), so the commit checks emptiness on the server without a false conflict.
        self.inodes.lock().expect("inodes lock").expire_dir(parent);
        let attr = self.lookup(parent, name).await?;
        let change = Change::Delete {
            path: path.clone(),
            expect: Some(Some(attr.hash.clone())),
        };
        match self
            .commit_changes(vec![change], format!("rmdir {path}"))
            .await
        {
            Err(conflict @ FsError::Conflict(_)) => {
                match self.gone_or_conflict(parent, name, conflict).await {
                    FsError::Conflict(_) => Err(FsError::NotEmpty),
                    gone => Err(gone),
                }
            }
            other => other,
        }?;
        self.inodes
            .lock()
            .expect("inodes lock")
            .remove_local(parent, name);
        Ok(())
    }

    /// `unlink`: the file must still be the version this mount knows.
    pub async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let attr = self.lookup(parent, name).await?;
        if attr.kind == EntryType::Directory {
            return Err(FsError::IsDir);
        }
        if attr.hash.is_empty() {
            // Only pending here (never committed): there is nothing on the server to delete.
            return Err(FsError::NotSupported(format!(
                "{path:?} is still being written"
            )));
        }
        let change = Change::Delete {
            path: path.clone(),
            expect: Some(Some(attr.hash.clone())),
        };
        match self
            .commit_changes(vec![change], format!("delete {path}"))
            .await
        {
            Err(conflict @ FsError::Conflict(_)) => {
                return Err(self.gone_or_conflict(parent, name, conflict).await)
            }
            other => other?,
        }
        self.inodes
            .lock()
            .expect("inodes lock")
            .remove_local(parent, name);
        Ok(())
    }

    /// `rename`, atomic in one commit. `no_replace` is RENAME_NOREPLACE.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<()> {
        self.check_writable()?;
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        let source = self.lookup(parent, name).await?;
        let target = match self.lookup(new_parent, new_name).await {
            Ok(t) => Some(t),
            Err(FsError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            // rename(2) gives EINVAL for a directory moved into itself; the server would
            // refuse it with a 400, which is EIO here.
            return Err(FsError::Invalid(format!(
                "cannot move {from:?} into itself"
            )));
        }
        if no_replace && target.is_some() {
            return Err(FsError::Exists(to));
        }
        // A file not committed yet has nothing on the server to move. (A directory made by
        // this mount has no tree id here until it is listed, but a move needs none.)
        if source.kind != EntryType::Directory && source.hash.is_empty() {
            return Err(FsError::NotSupported(format!(
                "{from:?} is still being written; close it first"
            )));
        }
        let changes = self
            .rename_changes(&from, &to, &source, target.as_ref())
            .await?;
        self.commit_changes(changes, format!("rename {from} -> {to}"))
            .await?;
        self.inodes.lock().expect("inodes lock").rename(&from, &to);
        self.follow_rename(&from, &to).await;
        Ok(())
    }

    /// The changes of a rename of `source` at `from` to `to` (where `target` is, if anything),
    /// or the error POSIX gives for that pair of kinds.
    async fn rename_changes(
        &self,
        from: &str,
        to: &str,
        source: &Attr,
        target: Option<&Attr>,
    ) -> Result<Vec<Change>> {
        let kind = source.kind;
        match (kind, target.map(|t| t.kind)) {
            (EntryType::Directory, Some(EntryType::Directory)) => {
                let t = target.expect("matched");
                if !self.readdir(t.ino).await?.is_empty() {
                    return Err(FsError::NotEmpty);
                }
            }
            (EntryType::Directory, Some(_)) => return Err(FsError::NotDir),
            (EntryType::Directory, None) => {}
            (_, Some(EntryType::Directory)) => return Err(FsError::IsDir),
            // A file: put the same blob at the target (which must still be what we saw) and
            // delete the source (likewise), together.
            _ => return Ok(file_rename_changes(from, to, source, target)),
        }
        Ok(vec![Change::Move {
            from: from.to_string(),
            to: to.to_string(),
        }])
    }

    /// Files open for writing under the old name commit under the new one.
    async fn follow_rename(&self, from: &str, to: &str) {
        let writers: Vec<_> = self
            .pending
            .lock()
            .expect("pending lock")
            .values()
            .cloned()
            .collect();
        for w in writers {
            let path = w.path();
            if let Some(rest) = path
                .strip_prefix(from)
                .filter(|r| r.is_empty() || r.starts_with('/'))
            {
                w.set_path(&format!("{to}{rest}")).await;
            }
        }
    }

    /// `setattr`: size (truncate), the executable bit and the modification time.
    pub async fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<i64>,
        fh: Option<u64>,
    ) -> Result<Attr> {
        if mode.is_none() && size.is_none() && mtime.is_none() {
            return self.getattr(ino).await;
        }
        self.check_writable()?;
        if let Some(size) = size {
            self.truncate(ino, size, fh).await?;
        }
        if mode.is_some() || mtime.is_some() {
            self.set_mode_and_mtime(ino, mode, mtime).await?;
        }
        self.getattr(ino).await
    }

    /// Truncates through the open handle `fh` or a writer of `ino` on this mount, else with a
    /// short-lived write handle committed at once (truncate(2) by path).
    async fn truncate(&self, ino: u64, size: u64, fh: Option<u64>) -> Result<()> {
        if let Some(w) = fh
            .and_then(|fh| self.write_handle(fh))
            .or_else(|| self.pending_writer(ino))
        {
            return w.truncate(size).await;
        }
        let fh = self.open_write(ino, size == 0).await?;
        let outcome = async {
            if let Some(w) = self.write_handle(fh) {
                w.truncate(size).await?;
            }
            self.flush(fh, None).await
        }
        .await;
        self.release(fh).await;
        outcome
    }

    /// chmod and utimes: kept with the writer of an open file (and committed when it is closed,
    /// as tar and touch expect), else committed at once if anything changes.
    async fn set_mode_and_mtime(
        &self,
        ino: u64,
        mode: Option<u32>,
        mtime: Option<i64>,
    ) -> Result<()> {
        let attr = self.getattr(ino).await?;
        let new_mode = mode.map_or(attr.mode, with_exec_bit);
        if let Some(w) = self.pending_writer(ino) {
            w.set_meta(mode.map(with_exec_bit), mtime).await;
        } else if attr.kind == EntryType::File
            && (new_mode != attr.mode || mtime.is_some_and(|m| m != attr.mtime))
        {
            self.commit_meta(ino, &attr, new_mode, mtime.unwrap_or(attr.mtime))
                .await?;
        }
        Ok(())
    }

    /// Commits a new mode and modification time for the unchanged blob of `ino`.
    async fn commit_meta(&self, ino: u64, attr: &Attr, mode: u32, mtime: i64) -> Result<()> {
        let path = self
            .inodes
            .lock()
            .expect("inodes lock")
            .path(ino)
            .unwrap_or_default()
            .to_string();
        let change = Change::Put {
            path: path.clone(),
            hash: attr.hash.clone(),
            mode: Some(mode),
            mtime: Some(mtime),
            expect: Some(Some(attr.hash.clone())),
        };
        self.commit_changes(vec![change], format!("setattr {path}"))
            .await?;
        let mut inodes = self.inodes.lock().expect("inodes lock");
        if let (Some(parent), Some(name)) = (inodes.parent_path(ino), path.rsplit('/').next()) {
            if let Some(parent_ino) = inodes.ino_of(&parent) {
                let local = LocalEntry {
                    kind: attr.kind,
                    size: attr.size,
                    mode,
                    mtime,
                    hash: &attr.hash,
                };
                inodes.record_local(parent_ino, name, &local);
            }
        }
        Ok(())
    }

    /// `symlink`: the target is stored as a blob with the symlink mode.
    pub async fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let started = self.remote.start_upload().await?;
        if !target.is_empty() {
            self.remote
                .put_chunk(
                    &started.upload_id,
                    0,
                    bytes::Bytes::from(target.as_bytes().to_vec()),
                )
                .await?;
        }
        let blob = self.remote.complete_upload(&started.upload_id).await?;
        let change = Change::Put {
            path: path.clone(),
            hash: blob.hash.clone(),
            mode: Some(MODE_SYMLINK),
            mtime: None,
            expect: Some(None),
        };
        match self
            .commit_changes(vec![change], format!("symlink {path}"))
            .await
        {
            Err(FsError::Conflict(_)) => return Err(FsError::Exists(path)),
            other => other?,
        }
        let local = LocalEntry {
            kind: EntryType::Symlink,
            size: blob.size,
            mode: MODE_SYMLINK,
            mtime: now_unix(),
            hash: &blob.hash,
        };
        let mut inodes = self.inodes.lock().expect("inodes lock");
        inodes
            .record_local(parent, name, &local)
            .ok_or(FsError::NotFound(path))
    }
}

/// A file's rename: the same blob put at `to` and deleted at `from`, each checked with
/// `expect` against what this mount saw.
fn file_rename_changes(from: &str, to: &str, source: &Attr, target: Option<&Attr>) -> Vec<Change> {
    let mode = if source.kind == EntryType::Symlink {
        MODE_SYMLINK
    } else {
        source.mode
    };
    vec![
        Change::Put {
            path: to.to_string(),
            hash: source.hash.clone(),
            mode: Some(mode),
            mtime: Some(source.mtime),
            expect: Some(target.map(|t| t.hash.clone())),
        },
        Change::Delete {
            path: from.to_string(),
            expect: Some(Some(source.hash.clone())),
        },
    ]
}
