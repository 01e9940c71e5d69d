//! The read path: opening a file for reading (pinning its blob), reads through the handle,
//! following a file that grows (`tail -f`), `readlink` and `lseek`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{Fs, Handle};
use crate::api::EntryType;
use crate::fs::error::{FsError, Result};
use crate::fs::read::{Pinned, ReadHandle};
use crate::fs::remote::Remote;

impl<R: Remote> Fs<R> {
    /// Opens `ino` for reading: pins its current blob. Returns the handle number and whether
    /// the kernel may keep its cached pages of the file.
    pub async fn open(&self, ino: u64) -> Result<(u64, bool)> {
        let attr = self.getattr(ino).await?;
        match attr.kind {
            EntryType::Directory => return Err(FsError::IsDir),
            EntryType::File | EntryType::Symlink => {}
        }
        let keep_cache = self
            .inodes
            .lock()
            .expect("inodes lock")
            .note_open(ino, &attr.hash);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ReadHandle::new(
            ino,
            &attr.hash,
            attr.size,
            self.config.prefetch,
        ));
        self.handles
            .lock()
            .expect("handles lock")
            .insert(fh, Handle::Read(handle));
        Ok((fh, keep_cache))
    }

    /// Reads from an open handle. A read at or past the end of the pinned version moves to a
    /// newer, longer version of the same path if there is one (so `tail -f` follows growth).
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes> {
        let handle = match self.handle(fh)? {
            Handle::Read(h) => h,
            Handle::Write(w) => return w.read(&self.remote, offset, len as u64).await,
        };
        let pinned = handle.pinned();
        let end = offset.saturating_add(len as u64);
        if end <= pinned.size {
            return self.reader.read(&handle, offset, len as u64).await;
        }
        self.read_past_end(fh, &handle, pinned, offset, end).await
    }

    /// A read reaching past the end of the pinned version (the kernel re-reads a partial last
    /// page from its start): bytes before the end come from that version, the rest from a
    /// newer, longer one if the path has it.
    async fn read_past_end(
        &self,
        fh: u64,
        handle: &ReadHandle,
        pinned: Pinned,
        offset: u64,
        end: u64,
    ) -> Result<Bytes> {
        let head = if offset < pinned.size {
            self.reader
                .read(handle, offset, pinned.size - offset)
                .await?
        } else {
            Bytes::new()
        };
        let grown = match self.getattr(handle.ino).await {
            Ok(current)
                if current.hash != *pinned.blob
                    && current.size > pinned.size
                    && !current.hash.is_empty() =>
            {
                current
            }
            _ => return Ok(head),
        };
        log::debug!(
            "handle {fh} follows {} -> {} ({} bytes)",
            pinned.blob,
            grown.hash,
            grown.size
        );
        handle.repin(&grown.hash, grown.size);
        let from = offset.max(pinned.size);
        let tail = self.reader.read(handle, from, end - from).await?;
        if head.is_empty() {
            return Ok(tail);
        }
        let mut joined = bytes::BytesMut::with_capacity(head.len() + tail.len());
        joined.extend_from_slice(&head);
        joined.extend_from_slice(&tail);
        Ok(joined.freeze())
    }

    /// The target of symlink `ino`.
    pub async fn readlink(&self, ino: u64) -> Result<Bytes> {
        let attr = self.getattr(ino).await?;
        if attr.kind != EntryType::Symlink {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        self.remote.read_range(&attr.hash, 0..attr.size).await
    }

    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE` (the only kinds the kernel passes on). Files
    /// here have no holes: data runs from 0 to the end, where the one implicit hole is.
    pub async fn seek_data_or_hole(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        let size = self.getattr(ino).await?.size;
        if offset >= size {
            return Err(FsError::PastEnd(offset));
        }
        match whence {
            libc::SEEK_DATA => Ok(offset),
            libc::SEEK_HOLE => Ok(size),
            other => Err(FsError::Invalid(format!("lseek whence {other}"))),
        }
    }
}
