//! Open files for writing.
//!
//! Every byte written lands in a local spool file first (so a failed close never loses data:
//! the spool becomes the recovery copy). While an application writes a new or truncated file
//! front to back, full chunks also stream to a resumable upload in the background, at most
//! `MAX_PUTS_IN_FLIGHT` at once (a slow server slows the writer; memory stays flat). The first
//! write that is not an append turns streaming off: from then on chunks upload at commit time,
//! except those already uploaded and not changed since. An existing file opened without
//! `O_TRUNC` is filled into the spool lazily, chunk by chunk, only where it is read or
//! partially overwritten.
//!
//! A commit (on flush/fsync) finishes the upload and commits `put path = blob` with `expect` =
//! the blob seen at open, so a concurrent change elsewhere is a conflict, never a silent loss.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::error::{FsError, Result};
use super::read::Pinned;
use super::remote::Remote;
use super::spool::{
    keep_for_recovery, missing_ranges, now_rfc3339, RecoveryNote, SpoolJournal, SpoolNote,
};
use crate::api::{BlobInfo, Change};

/// Chunk PUTs one write handle keeps in flight.
const MAX_PUTS_IN_FLIGHT: usize = 4;

/// Where write handles keep their bytes.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// Spool files of open write handles.
    pub spool_dir: PathBuf,
    /// Copies of writes whose close failed (`govcfs recover` lists them).
    pub recovery_dir: PathBuf,
    /// Upload chunk size (the server must accept it as is).
    pub chunk_size: u64,
    /// Where the mount writes to (`http://HOST:PORT/REPO`), recorded with recovery copies.
    pub origin: String,
    /// The branch the mount commits to, recorded with recovery copies.
    pub branch: Option<String>,
}

/// What one chunk PUT carries.
enum ChunkBody {
    Data(Bytes),
    /// The same range of this blob, copied on the server.
    CopyOf(Arc<str>),
}

struct Upload {
    id: String,
    /// Chunk index → length of what the server holds for it.
    uploaded: BTreeMap<u64, u64>,
    puts: JoinSet<Result<(u64, u64)>>,
}

struct WriteState {
    spool: std::fs::File,
    /// Says where the spool's bytes belong, for a rescue after a crash.
    journal: SpoolJournal,
    size: u64,
    /// The version the file had at open; its bytes are valid below `base_valid`.
    base: Option<Pinned>,
    base_valid: u64,
    /// Chunks whose bytes in the spool are complete (filled from the base, or beyond it).
    present: BTreeSet<u64>,
    /// Chunks written since the base: the others can be copied on the server from the base
    /// instead of uploaded.
    modified: BTreeSet<u64>,
    /// Blob the server must still have at commit (`None`: the path must not exist).
    expect: Option<String>,
    /// Still a pure front-to-back write: full chunks stream out as they fill.
    streaming: bool,
    /// Bytes of the current partial chunk while streaming.
    tail: BytesMut,
    upload: Option<Upload>,
    /// The bytes differ from the last committed version (or there is none yet).
    dirty: bool,
    /// Only the mode or the modification time changed: a commit needs no upload.
    meta_dirty: bool,
    mode: u32,
    /// Modification time to commit (`None`: the commit time).
    mtime: Option<i64>,
    /// The last commit failed and its bytes went to recovery/: later closes report it too.
    failed: Option<FsError>,
}

/// One file open for writing.
pub struct WriteHandle {
    pub ino: u64,
    path: Mutex<String>,
    /// Lock owners (one per process's file table) that wrote through this handle: a FLUSH
    /// from anyone else (a child closing an inherited descriptor) must not publish the file.
    writers: Mutex<std::collections::HashSet<u64>>,
    /// Mirrors "something is not committed yet", readable without the state lock.
    uncommitted: std::sync::atomic::AtomicBool,
    spool_path: PathBuf,
    /// Current size, readable without waiting for a write in progress.
    size: AtomicU64,
    state: tokio::sync::Mutex<WriteState>,
    config: WriteConfig,
}

/// What a successful commit produced.
#[derive(Debug, Clone)]
pub struct Committed {
    pub blob: BlobInfo,
    pub mode: u32,
    /// The modification time committed, if one was set.
    pub mtime: Option<i64>,
}

fn chunks_of(size: u64, cs: u64) -> u64 {
    size.div_ceil(cs)
}

impl WriteHandle {
    /// A handle on `path`. `base` is the version at open (`None` for a new file);
    /// `truncate` starts it empty.
    pub fn new(
        ino: u64,
        path: &str,
        base: Option<Pinned>,
        truncate: bool,
        mode: u32,
        config: WriteConfig,
    ) -> Result<Self> {
        std::fs::create_dir_all(&config.spool_dir)?;
        let spool_path = config
            .spool_dir
            .join(format!("spool-{}", uuid::Uuid::new_v4()));
        let spool = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&spool_path)?;
        let expect = base.as_ref().map(|b| b.blob.to_string());
        let size = if truncate {
            0
        } else {
            base.as_ref().map_or(0, |b| b.size)
        };
        spool.set_len(size)?;
        let journal = SpoolJournal::create(
            &spool_path,
            SpoolNote {
                origin: config.origin.clone(),
                branch: config.branch.clone(),
                path: path.to_string(),
                expect: expect.clone(),
                chunk_size: config.chunk_size,
                fill_from: if size > 0 { expect.clone() } else { None },
                base_valid: size,
            },
        )?;
        let is_new = expect.is_none();
        let state = WriteState {
            spool,
            journal,
            size,
            base_valid: size,
            base,
            present: BTreeSet::new(),
            modified: BTreeSet::new(),
            expect,
            streaming: size == 0,
            tail: BytesMut::new(),
            upload: None,
            // A new or truncated file is a change even if nothing is written.
            dirty: truncate || is_new,
            meta_dirty: false,
            mode,
            mtime: None,
            failed: None,
        };
        Ok(WriteHandle {
            ino,
            path: Mutex::new(path.to_string()),
            writers: Mutex::new(std::collections::HashSet::new()),
            uncommitted: std::sync::atomic::AtomicBool::new(truncate || is_new),
            spool_path,
            size: AtomicU64::new(size),
            state: tokio::sync::Mutex::new(state),
            config,
        })
    }

    /// The repository path the handle commits to.
    pub fn path(&self) -> String {
        self.path.lock().expect("path lock").clone()
    }

    /// Follows a rename of the file while it is open.
    pub async fn set_path(&self, path: &str) {
        *self.path.lock().expect("path lock") = path.to_string();
        if let Err(e) = self.state.lock().await.journal.set_path(path) {
            log::warn!("cannot update the spool journal of {path:?}: {e}");
        }
    }

    /// The current size.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Sets the mode and/or modification time committed with the file.
    pub async fn set_meta(&self, mode: Option<u32>, mtime: Option<i64>) {
        let mut s = self.state.lock().await;
        if let Some(mode) = mode {
            s.mode = mode;
        }
        if mtime.is_some() {
            s.mtime = mtime;
        }
        s.meta_dirty = true;
        self.uncommitted.store(true, Ordering::Relaxed);
    }

    /// Records that the process with `lock_owner` wrote through this handle.
    pub fn note_writer(&self, lock_owner: u64) {
        self.writers
            .lock()
            .expect("writers lock")
            .insert(lock_owner);
    }

    /// Whether a FLUSH from `lock_owner` should commit: one of the writers closes, or nobody
    /// wrote yet (a created or truncated file is complete as it is).
    pub fn flush_commits(&self, lock_owner: u64) -> bool {
        let writers = self.writers.lock().expect("writers lock");
        writers.is_empty() || writers.contains(&lock_owner)
    }

    /// Whether anything is not committed yet.
    pub fn is_uncommitted(&self) -> bool {
        self.uncommitted.load(Ordering::Relaxed)
    }

    /// Writes `data` at `offset`.
    pub async fn write<R: Remote>(&self, remote: &Arc<R>, offset: u64, data: &[u8]) -> Result<()> {
        let cs = self.config.chunk_size;
        let mut s = self.state.lock().await;
        if s.streaming && offset == s.size {
            s.spool.write_all_at(data, offset)?;
            s.size += data.len() as u64;
            s.tail.extend_from_slice(data);
            while s.tail.len() as u64 >= cs {
                let index = (s.size - s.tail.len() as u64) / cs;
                let chunk = s.tail.split_to(cs as usize).freeze();
                self.send_chunk(&mut s, remote, index, ChunkBody::Data(chunk))
                    .await?;
            }
        } else {
            if s.streaming {
                log::debug!(
                    "{}: write at {offset} is not an append; spooling",
                    self.path()
                );
                s.streaming = false;
                s.tail.clear();
            }
            let end = offset + data.len() as u64;
            for index in offset / cs..end.div_ceil(cs).max(offset / cs + 1) {
                let partial = offset > index * cs || end < ((index + 1) * cs).min(end.max(s.size));
                if partial {
                    self.fill(&mut s, remote, index).await?;
                }
                if s.present.insert(index) {
                    s.journal.present(index)?;
                }
                s.modified.insert(index);
                if let Some(up) = s.upload.as_mut() {
                    up.uploaded.remove(&index);
                }
            }
            s.spool.write_all_at(data, offset)?;
            s.size = s.size.max(end);
        }
        s.dirty = true;
        self.uncommitted.store(true, Ordering::Relaxed);
        self.size.store(s.size, Ordering::Relaxed);
        Ok(())
    }

    /// Reads through the handle (for `O_RDWR`): the spool, filled from the base as needed.
    pub async fn read<R: Remote>(&self, remote: &Arc<R>, offset: u64, len: u64) -> Result<Bytes> {
        let cs = self.config.chunk_size;
        let mut s = self.state.lock().await;
        if offset >= s.size {
            return Ok(Bytes::new());
        }
        let end = (offset + len).min(s.size);
        for index in offset / cs..end.div_ceil(cs) {
            self.fill(&mut s, remote, index).await?;
        }
        let mut buf = vec![0; (end - offset) as usize];
        s.spool.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    /// Changes the size (truncate up or down).
    pub async fn truncate(&self, new_size: u64) -> Result<()> {
        let cs = self.config.chunk_size;
        let mut s = self.state.lock().await;
        let old = s.size;
        if new_size == old && !s.streaming {
            return Ok(());
        }
        s.streaming = false;
        s.tail.clear();
        if new_size < s.base_valid {
            s.base_valid = new_size;
            s.journal.base_valid(new_size)?;
        }
        s.spool.set_len(new_size)?;
        // Chunks from the one holding the old or new end onwards change length or content.
        let first_changed = old.min(new_size) / cs;
        if let Some(up) = s.upload.as_mut() {
            up.uploaded.retain(|i, _| *i < first_changed);
        }
        s.size = new_size;
        s.dirty = true;
        self.uncommitted.store(true, Ordering::Relaxed);
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }

    /// Copies chunk `index` of the base into the spool, if it is needed and not there yet.
    async fn fill<R: Remote>(&self, s: &mut WriteState, remote: &Arc<R>, index: u64) -> Result<()> {
        let cs = self.config.chunk_size;
        let start = index * cs;
        let end = ((index + 1) * cs).min(s.base_valid).min(s.size);
        if s.present.contains(&index) || s.streaming || start >= end {
            return Ok(());
        }
        let Some(base) = s.base.clone() else {
            return Ok(());
        };
        let data = remote.read_range(&base.blob, start..end).await?;
        if data.len() as u64 != end - start {
            return Err(FsError::Remote(format!(
                "short read of {}: {} of {} bytes",
                base.blob,
                data.len(),
                end - start
            )));
        }
        s.spool.write_all_at(&data, start)?;
        s.present.insert(index);
        s.journal.present(index)?;
        Ok(())
    }

    async fn send_chunk<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        index: u64,
        body: ChunkBody,
    ) -> Result<()> {
        if s.upload.is_none() {
            let started = remote.start_upload().await?;
            if started.chunk_size != self.config.chunk_size {
                return Err(FsError::Remote(format!(
                    "the server chose chunk size {} instead of {}",
                    started.chunk_size, self.config.chunk_size
                )));
            }
            s.upload = Some(Upload {
                id: started.upload_id,
                uploaded: BTreeMap::new(),
                puts: JoinSet::new(),
            });
        }
        let up = s.upload.as_mut().expect("started above");
        // Backpressure: wait for a PUT to finish before starting another.
        while up.puts.len() >= MAX_PUTS_IN_FLIGHT {
            let (i, len) = up
                .puts
                .join_next()
                .await
                .expect("non-empty")
                .map_err(|e| FsError::Remote(e.to_string()))??;
            up.uploaded.insert(i, len);
        }
        let (remote, id) = (remote.clone(), up.id.clone());
        match body {
            ChunkBody::Data(data) => {
                let len = data.len() as u64;
                up.puts.spawn(async move {
                    remote
                        .put_chunk(&id, index, data)
                        .await
                        .map(|_| (index, len))
                });
            }
            ChunkBody::CopyOf(source) => {
                up.puts.spawn(async move {
                    remote
                        .copy_chunk(&id, index, &source)
                        .await
                        .map(|len| (index, len))
                });
            }
        }
        Ok(())
    }

    /// Whether chunk `index` of the file is, byte for byte, the same range of the base.
    fn unchanged_from_base(s: &WriteState, index: u64, cs: u64) -> bool {
        let Some(base) = &s.base else { return false };
        let end = ((index + 1) * cs).min(s.size);
        !s.modified.contains(&index)
            && end <= s.base_valid
            && ((index + 1) * cs).min(base.size) == end
    }

    async fn drain_puts(s: &mut WriteState) -> Result<()> {
        if let Some(up) = s.upload.as_mut() {
            while let Some(done) = up.puts.join_next().await {
                let (i, len) = done.map_err(|e| FsError::Remote(e.to_string()))??;
                up.uploaded.insert(i, len);
            }
        }
        Ok(())
    }

    /// Uploads whatever the server lacks and commits the file, if anything changed since the
    /// last commit. On failure the spool is copied to the recovery directory (and named in the
    /// log) before the error is returned.
    pub async fn commit<R: Remote>(&self, remote: &Arc<R>) -> Result<Option<Committed>> {
        let mut s = self.state.lock().await;
        if !s.dirty && !s.meta_dirty {
            return match &s.failed {
                Some(e) => Err(e.clone()),
                None => Ok(None),
            };
        }
        let path = self.path();
        let outcome = if s.dirty {
            self.upload_and_commit(&mut s, remote, &path).await
        } else {
            self.commit_meta(&mut s, remote, &path).await
        };
        match outcome {
            Ok(done) => {
                s.failed = None;
                s.meta_dirty = false;
                self.uncommitted.store(false, Ordering::Relaxed);
                Ok(Some(done))
            }
            Err(e) => {
                let saved = self
                    .save_recovery(&mut s, remote, &path, &e.to_string())
                    .await;
                match &saved {
                    Ok(p) => log::error!(
                        "could not commit {path:?} ({e}); its bytes are kept in {}",
                        p.display()
                    ),
                    Err(io) => log::error!(
                        "could not commit {path:?} ({e}), and could not keep a copy: {io}"
                    ),
                }
                // The bytes are safe in recovery/: do not upload them again at release, but
                // report the failure to every later close of this handle.
                s.dirty = false;
                s.meta_dirty = false;
                s.failed = Some(e.clone());
                self.uncommitted.store(false, Ordering::Relaxed);
                if let Some(up) = s.upload.take() {
                    let _ = remote.abort_upload(&up.id).await;
                }
                Err(e)
            }
        }
    }

    async fn upload_and_commit<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        path: &str,
    ) -> Result<Committed> {
        let cs = self.config.chunk_size;
        Self::drain_puts(s).await?;
        let count = chunks_of(s.size, cs);
        let expected_len = |i: u64, size: u64| ((i + 1) * cs).min(size) - i * cs;
        // An upload holding chunks that no longer fit the file cannot be completed: start over.
        let size = s.size;
        if s.upload.as_ref().is_some_and(|up| {
            up.uploaded
                .iter()
                .any(|(i, len)| *i >= count || *len != expected_len(*i, size))
        }) {
            let up = s.upload.take().expect("checked");
            let _ = remote.abort_upload(&up.id).await;
        }
        if s.upload.is_none() && s.size <= cs {
            // A small file: one request, no upload session.
            self.fill(s, remote, 0).await?;
            let mut buf = vec![0; s.size as usize];
            s.spool.read_exact_at(&mut buf, 0)?;
            let blob = remote.upload_small(Bytes::from(buf)).await?;
            return self.commit_blob(s, remote, path, blob, count).await;
        }
        if s.streaming && !s.tail.is_empty() {
            let index = (s.size - s.tail.len() as u64) / cs;
            let chunk = std::mem::take(&mut s.tail).freeze();
            self.send_chunk(s, remote, index, ChunkBody::Data(chunk))
                .await?;
            Self::drain_puts(s).await?;
        }
        let pending: Vec<u64> = (0..count)
            .filter(|i| {
                s.upload
                    .as_ref()
                    .is_none_or(|up| up.uploaded.get(i) != Some(&expected_len(*i, size)))
            })
            .collect();
        for index in pending {
            if Self::unchanged_from_base(s, index, cs) {
                let source = s
                    .base
                    .as_ref()
                    .expect("unchanged_from_base checks it")
                    .blob
                    .clone();
                self.send_chunk(s, remote, index, ChunkBody::CopyOf(source))
                    .await?;
                continue;
            }
            self.fill(s, remote, index).await?;
            let len = expected_len(index, size) as usize;
            let mut buf = vec![0; len];
            s.spool.read_exact_at(&mut buf, index * cs)?;
            self.send_chunk(s, remote, index, ChunkBody::Data(Bytes::from(buf)))
                .await?;
        }
        Self::drain_puts(s).await?;
        let blob = match s.upload.take() {
            Some(up) => remote.complete_upload(&up.id).await?,
            None => {
                // Nothing was ever uploaded: an empty file.
                let started = remote.start_upload().await?;
                remote.complete_upload(&started.upload_id).await?
            }
        };
        self.commit_blob(s, remote, path, blob, count).await
    }

    async fn commit_blob<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        path: &str,
        blob: BlobInfo,
        count: u64,
    ) -> Result<Committed> {
        if blob.size != s.size {
            return Err(FsError::Remote(format!(
                "the server assembled {} bytes, {} were written",
                blob.size, s.size
            )));
        }
        let change = Change::Put {
            path: path.to_string(),
            hash: blob.hash.clone(),
            mode: Some(s.mode),
            mtime: s.mtime,
            expect: Some(s.expect.clone()),
        };
        remote.commit(vec![change], format!("write {path}")).await?;
        log::debug!(
            "committed {path:?}: {} bytes, blob {}",
            blob.size,
            blob.hash
        );
        s.expect = Some(blob.hash.clone());
        s.base = Some(Pinned {
            blob: Arc::from(blob.hash.as_str()),
            size: blob.size,
        });
        s.base_valid = blob.size;
        s.present = (0..count).collect();
        s.modified.clear();
        s.journal.committed(&blob.hash)?;
        s.streaming = false;
        s.dirty = false;
        Ok(Committed {
            blob,
            mode: s.mode,
            mtime: s.mtime,
        })
    }

    /// Commits a new mode or modification time for unchanged bytes: no upload.
    async fn commit_meta<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        path: &str,
    ) -> Result<Committed> {
        let Some(base) = s.base.clone() else {
            return self.upload_and_commit(s, remote, path).await;
        };
        let blob = BlobInfo {
            hash: base.blob.to_string(),
            size: base.size,
            md5: String::new(),
        };
        let change = Change::Put {
            path: path.to_string(),
            hash: blob.hash.clone(),
            mode: Some(s.mode),
            mtime: s.mtime,
            expect: Some(s.expect.clone()),
        };
        remote
            .commit(vec![change], format!("setattr {path}"))
            .await?;
        Ok(Committed {
            blob,
            mode: s.mode,
            mtime: s.mtime,
        })
    }

    /// Copies the spool to the recovery directory. Chunks still only in the base are fetched
    /// first if the server answers; the note names those it could not fetch.
    async fn save_recovery<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        path: &str,
        reason: &str,
    ) -> std::io::Result<PathBuf> {
        let cs = self.config.chunk_size;
        for range in missing_ranges(&s.present, s.base_valid, s.size, cs) {
            if self.fill(s, remote, range.start / cs).await.is_err() {
                break;
            }
        }
        let missing = missing_ranges(&s.present, s.base_valid, s.size, cs);
        let note = RecoveryNote {
            origin: self.config.origin.clone(),
            branch: self.config.branch.clone(),
            path: path.to_string(),
            expect: s.expect.clone(),
            reason: reason.to_string(),
            time: now_rfc3339(),
            fill_from: if missing.is_empty() {
                None
            } else {
                s.base.as_ref().map(|b| b.blob.to_string())
            },
            missing: missing.iter().map(|r| [r.start, r.end]).collect(),
        };
        keep_for_recovery(&self.config.recovery_dir, &self.spool_path, false, &note)
    }

    /// Removes the spool and its journal (after the last commit).
    pub async fn discard(&self) {
        self.state.lock().await.journal.remove();
        let _ = std::fs::remove_file(&self.spool_path);
    }
}
