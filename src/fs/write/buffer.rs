//! The spool side of a write handle: writes, reads through the handle and truncation, and
//! filling chunks of the spool from the version the file was opened at.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{ChunkBody, WriteHandle, WriteState};
use crate::fs::error::{FsError, Result};
use crate::fs::remote::Remote;

impl WriteHandle {
    /// Writes `data` at `offset`.
    pub async fn write<R: Remote>(&self, remote: &Arc<R>, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            // pwrite(2) of nothing changes nothing, even past the end.
            return Ok(());
        }
        let mut s = self.state.lock().await;
        if s.streaming && offset == s.size {
            self.append_streaming(&mut s, remote, data).await?;
        } else {
            self.write_spooled(&mut s, remote, offset, data).await?;
        }
        s.dirty = true;
        self.uncommitted.store(true, Ordering::Relaxed);
        self.size.store(s.size, Ordering::Relaxed);
        Ok(())
    }

    /// An append to a file written front to back: full chunks leave for the upload at once.
    async fn append_streaming<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        data: &[u8],
    ) -> Result<()> {
        let cs = self.config.chunk_size;
        s.spool.write_at(data, s.size)?;
        s.size += data.len() as u64;
        s.tail.extend_from_slice(data);
        while s.tail.len() as u64 >= cs {
            let index = (s.size - s.tail.len() as u64) / cs;
            let chunk = s.tail.split_to(cs as usize).freeze();
            self.send_chunk(s, remote, index, ChunkBody::Data(chunk))
                .await?;
        }
        Ok(())
    }

    /// Any other write: into the spool, after filling the chunks it only partly covers from
    /// the base; streaming stops for good.
    async fn write_spooled<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let cs = self.config.chunk_size;
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
                self.fill(s, remote, index).await?;
            }
            if s.present.insert(index) {
                s.journal.present(index)?;
            }
            s.modified.insert(index);
            if let Some(up) = s.upload.as_mut() {
                up.uploaded.remove(&index);
            }
        }
        s.spool.write_at(data, offset)?;
        s.size = s.size.max(end);
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
    pub(super) async fn fill<R: Remote>(
        &self,
        s: &mut WriteState,
        remote: &Arc<R>,
        index: u64,
    ) -> Result<()> {
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
        s.spool.write_at(&data, start)?;
        s.present.insert(index);
        s.journal.present(index)?;
        Ok(())
    }
}
