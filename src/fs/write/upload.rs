//! The upload side of a write handle: chunk PUTs in the background (with backpressure), and
//! the commit at flush/fsync that finishes the upload and puts the blob at the path, checked
//! with `expect`. A failed commit leaves the bytes in recovery/.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::held::send_unless_held;
use super::{chunks_of, ChunkBody, Committed, Sent, Upload, WriteHandle, WriteState};
use crate::api::{BlobInfo, Change};
use crate::base::manifest::CHUNK_SIZE;
use crate::fs::error::{FsError, Result};
use crate::fs::read::Pinned;
use crate::fs::recovery::{keep_for_recovery, now_rfc3339, RecoveryNote};
use crate::fs::remote::Remote;
use crate::fs::spool::missing_ranges;

/// Chunk PUTs one write handle keeps in flight.
const MAX_PUTS_IN_FLIGHT: usize = 4;

impl WriteHandle {
    pub(super) async fn send_chunk<R: Remote>(
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
            let sent = up.puts.join_next().await.expect("non-empty");
            Self::record_sent(&mut up.uploaded, &mut s.probe, sent)?;
        }
        let (remote, id) = (remote.clone(), up.id.clone());
        match body {
            ChunkBody::Data(data) => {
                let len = data.len() as u64;
                let ask = self.config.chunk_size.is_multiple_of(CHUNK_SIZE) && s.probe.should_ask();
                up.puts.spawn(async move {
                    let held = if ask {
                        Some(send_unless_held(&*remote, &id, index, data).await?)
                    } else {
                        remote.put_chunk(&id, index, data).await?;
                        None
                    };
                    Ok(Sent {
                        chunks: vec![(index, len)],
                        held,
                    })
                });
            }
            ChunkBody::CopyOf(source, count) => {
                let lens: Vec<(u64, u64)> = (index..index + count)
                    .map(|i| (i, self.chunk_len(i, s.size)))
                    .collect();
                let want: u64 = lens.iter().map(|(_, len)| len).sum();
                up.puts.spawn(async move {
                    let got = remote.copy_chunks(&id, (index, count), &source).await?;
                    if got != want {
                        return Err(FsError::Remote(format!(
                            "the server copied {got} bytes of chunks {index}.. of {source}, not {want}"
                        )));
                    }
                    Ok(Sent {
                        chunks: lens,
                        held: None,
                    })
                });
            }
        }
        Ok(())
    }

    /// How many of the chunks `pending` starts with are consecutive and unchanged from the base.
    fn unchanged_run(s: &WriteState, pending: &[u64], cs: u64) -> u64 {
        let Some(&first) = pending.first() else {
            return 0;
        };
        pending
            .iter()
            .zip(first..)
            .take_while(|(index, want)| **index == *want && Self::unchanged_from_base(s, *want, cs))
            .count() as u64
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
                Self::record_sent(&mut up.uploaded, &mut s.probe, done)?;
            }
        }
        Ok(())
    }

    /// Takes in a finished PUT: what it stored, and the server's answer about held chunks.
    fn record_sent(
        uploaded: &mut BTreeMap<u64, u64>,
        probe: &mut super::held::HeldProbe,
        done: std::result::Result<Result<Sent>, tokio::task::JoinError>,
    ) -> Result<()> {
        let sent = done.map_err(|e| FsError::Remote(e.to_string()))??;
        uploaded.extend(sent.chunks);
        if let Some(held) = sent.held {
            probe.answered(held);
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
                self.keep_failed(&mut s, remote, &path, &e).await;
                Err(e)
            }
        }
    }

    /// After a failed commit: copies the bytes to recovery/ (and says where in the log), and
    /// drops the upload.
    async fn keep_failed<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        path: &str,
        e: &FsError,
    ) {
        match self.save_recovery(s, remote, path, &e.to_string()).await {
            Ok(p) => log::error!(
                "could not commit {path:?} ({e}); its bytes are kept in {}",
                p.display()
            ),
            Err(io) => {
                log::error!("could not commit {path:?} ({e}), and could not keep a copy: {io}")
            }
        }
        // The bytes are safe in recovery/: do not upload them again at release, but report
        // the failure to every later close of this handle.
        s.dirty = false;
        s.meta_dirty = false;
        s.failed = Some(e.clone());
        self.uncommitted.store(false, Ordering::Relaxed);
        if let Some(up) = s.upload.take() {
            let _ = remote.abort_upload(&up.id).await;
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
        self.drop_unfit_upload(s, remote).await;
        if s.upload.is_none() && s.size <= cs {
            // A small file: one request, no upload session.
            self.fill(s, remote, 0).await?;
            let mut buf = vec![0; s.size as usize];
            s.spool.read_exact_at(&mut buf, 0)?;
            return self
                .put_small(s, remote, (path, count), Bytes::from(buf))
                .await;
        }
        if s.streaming && !s.tail.is_empty() {
            let index = (s.size - s.tail.len() as u64) / cs;
            let chunk = std::mem::take(&mut s.tail).freeze();
            self.send_chunk(s, remote, index, ChunkBody::Data(chunk))
                .await?;
            Self::drain_puts(s).await?;
        }
        self.send_missing_chunks(s, remote, count).await?;
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

    /// Length of chunk `index` of a file of `size` bytes.
    fn chunk_len(&self, index: u64, size: u64) -> u64 {
        let cs = self.config.chunk_size;
        ((index + 1) * cs).min(size) - index * cs
    }

    /// An upload holding chunks that no longer fit the file cannot be completed: start over.
    async fn drop_unfit_upload<R: Remote>(&self, s: &mut WriteState, remote: &Arc<R>) {
        let (size, count) = (s.size, chunks_of(s.size, self.config.chunk_size));
        if s.upload.as_ref().is_some_and(|up| {
            up.uploaded
                .iter()
                .any(|(i, len)| *i >= count || *len != self.chunk_len(*i, size))
        }) {
            let up = s.upload.take().expect("checked");
            let _ = remote.abort_upload(&up.id).await;
        }
    }

    /// Sends every chunk of the file the upload lacks: a server-side copy where the chunk is
    /// still the base's (one request for each run of such chunks), else its bytes from the
    /// spool.
    async fn send_missing_chunks<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        count: u64,
    ) -> Result<()> {
        let (cs, size) = (self.config.chunk_size, s.size);
        let pending: Vec<u64> = (0..count)
            .filter(|i| {
                s.upload
                    .as_ref()
                    .is_none_or(|up| up.uploaded.get(i) != Some(&self.chunk_len(*i, size)))
            })
            .collect();
        let mut i = 0;
        while i < pending.len() {
            let index = pending[i];
            let run = Self::unchanged_run(s, &pending[i..], cs);
            if run > 0 {
                let source = s
                    .base
                    .as_ref()
                    .expect("unchanged_from_base checks it")
                    .blob
                    .clone();
                self.send_chunk(s, remote, index, ChunkBody::CopyOf(source, run))
                    .await?;
                i += run as usize;
                continue;
            }
            i += 1;
            self.fill(s, remote, index).await?;
            let mut buf = vec![0; self.chunk_len(index, size) as usize];
            s.spool.read_exact_at(&mut buf, index * cs)?;
            self.send_chunk(s, remote, index, ChunkBody::Data(Bytes::from(buf)))
                .await?;
        }
        Ok(())
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
        let change = self.put_change(s, path, &blob.hash);
        remote.commit(vec![change], format!("write {path}")).await?;
        self.committed(s, path, blob, count)
    }

    /// Stores and commits a small file in one request.
    async fn put_small<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        (path, count): (&str, u64),
        data: Bytes,
    ) -> Result<Committed> {
        let blob = BlobInfo {
            hash: crate::base::manifest::blob_id(&data),
            size: data.len() as u64,
            chunks: (data.len() as u64).div_ceil(CHUNK_SIZE),
        };
        let change = self.put_change(s, path, &blob.hash);
        remote
            .put_file(data, change, format!("write {path}"))
            .await?;
        self.committed(s, path, blob, count)
    }

    /// The change that puts blob `hash` at `path` with the handle's attributes, on the
    /// condition that the path still holds the version this handle started from.
    fn put_change(&self, s: &WriteState, path: &str, hash: &str) -> Change {
        Change::Put {
            path: path.to_string(),
            hash: hash.to_string(),
            mode: Some(s.mode),
            mtime: s.mtime,
            expect: Some(s.expect.clone()),
        }
    }

    /// Records a landed commit of `blob` (of `count` chunks) in the handle's state.
    fn committed(
        &self,
        s: &mut WriteState,
        path: &str,
        blob: BlobInfo,
        count: u64,
    ) -> Result<Committed> {
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
            chunks: base.size.div_ceil(crate::base::manifest::CHUNK_SIZE),
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
}
