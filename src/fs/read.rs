//! Open files for reading: each handle pins one blob and owns a [`Prefetcher`]. Reads are
//! served from whole chunks through the shared [`ChunkCache`] once the pattern is
//! sequential; a first or random read fetches just its own bytes in one round trip.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::task::AbortHandle;

use super::error::Result;
use super::prefetch::{chunks_covering, PrefetchConfig, Prefetcher};
use super::remote::Remote;
use super::FsError;
use crate::cache::{ChunkCache, ChunkKey};

/// Read-ahead chunk requests one handle may have in flight: enough to fill a fast link,
/// few enough that a 2-core machine and the server are not flooded.
const MAX_PREFETCH_IN_FLIGHT: usize = 8;

/// The version a handle reads.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub blob: Arc<str>,
    pub size: u64,
}

/// One open file.
pub struct ReadHandle {
    pub ino: u64,
    pinned: Mutex<Pinned>,
    prefetcher: Mutex<Prefetcher>,
    /// Read-ahead tasks by chunk index; aborted on a seek or on release.
    prefetches: Mutex<BTreeMap<u64, AbortHandle>>,
}

impl ReadHandle {
    /// A handle reading blob `blob` of `size` bytes.
    pub fn new(ino: u64, blob: &str, size: u64, config: PrefetchConfig) -> Self {
        ReadHandle {
            ino,
            pinned: Mutex::new(Pinned {
                blob: Arc::from(blob),
                size,
            }),
            prefetcher: Mutex::new(Prefetcher::new(config)),
            prefetches: Mutex::new(BTreeMap::new()),
        }
    }

    /// The pinned version.
    pub fn pinned(&self) -> Pinned {
        self.pinned.lock().expect("pinned lock").clone()
    }

    /// Moves the handle to a newer, longer version (for `tail -f`).
    pub fn repin(&self, blob: &str, size: u64) {
        self.cancel_prefetches(|_| true);
        *self.pinned.lock().expect("pinned lock") = Pinned {
            blob: Arc::from(blob),
            size,
        };
    }

    fn cancel_prefetches(&self, unwanted: impl Fn(u64) -> bool) {
        let mut tasks = self.prefetches.lock().expect("prefetch lock");
        tasks.retain(|index, task| {
            if task.is_finished() {
                return false;
            }
            if unwanted(*index) {
                task.abort();
                return false;
            }
            true
        });
    }

    /// Stops all read-ahead (on release).
    pub fn close(&self) {
        self.cancel_prefetches(|_| true);
    }
}

/// What a read needs: the remote, the cache and the settings.
pub struct Reader<R: Remote> {
    pub remote: Arc<R>,
    pub cache: Arc<ChunkCache<FsError>>,
    pub config: PrefetchConfig,
}

impl<R: Remote> Clone for Reader<R> {
    fn clone(&self) -> Self {
        Reader {
            remote: self.remote.clone(),
            cache: self.cache.clone(),
            config: self.config,
        }
    }
}

impl<R: Remote> Reader<R> {
    fn chunk_range(&self, index: u64, size: u64) -> Range<u64> {
        let start = index * self.config.chunk_size;
        start..(start + self.config.chunk_size).min(size)
    }

    async fn chunk(&self, pinned: &Pinned, index: u64, for_reader: bool) -> Result<Bytes> {
        let key = ChunkKey {
            blob: pinned.blob.clone(),
            index,
        };
        let range = self.chunk_range(index, pinned.size);
        self.cache
            .get_or_fetch(&key, for_reader, || {
                self.remote.read_range(&pinned.blob, range)
            })
            .await
    }

    /// Reads up to `len` bytes at `offset` of the handle's pinned blob.
    pub async fn read(&self, handle: &ReadHandle, offset: u64, len: u64) -> Result<Bytes> {
        let pinned = handle.pinned();
        if offset >= pinned.size || len == 0 {
            return Ok(Bytes::new());
        }
        let wanted = offset..(offset + len).min(pinned.size);
        let plan =
            handle
                .prefetcher
                .lock()
                .expect("prefetcher lock")
                .on_read(offset, len, pinned.size);
        let needed = chunks_covering(&wanted, self.config.chunk_size);
        let ahead = chunks_covering(&plan.read_ahead, self.config.chunk_size);
        if plan.seek {
            handle.cancel_prefetches(|i| !needed.contains(&i) && !ahead.contains(&i));
        }
        self.schedule_read_ahead(handle, &pinned, ahead);

        let all_cached = needed.clone().all(|i| {
            self.cache.is_present_or_pending(&ChunkKey {
                blob: pinned.blob.clone(),
                index: i,
            })
        });
        // A large read after a jump is the start of a stretch (a player seeking, the kernel's
        // first read-ahead), so it fetches the whole chunks around it, in parallel, and the
        // reads that continue it are served from the cache instead of one round trip each.
        let large = len >= self.config.chunk_size / 4;
        if !plan.sequential && !all_cached && !large {
            return self.read_exact_range(&pinned, wanted, needed).await;
        }
        self.read_chunks(&pinned, wanted, needed).await
    }

    /// One round trip for exactly `wanted`: a small random read does not pull whole chunks.
    /// Whole chunks among its bytes are kept, though (a big first read, say).
    async fn read_exact_range(
        &self,
        pinned: &Pinned,
        wanted: Range<u64>,
        needed: Range<u64>,
    ) -> Result<Bytes> {
        let data = self.remote.read_range(&pinned.blob, wanted.clone()).await?;
        if data.len() as u64 != wanted.end - wanted.start {
            return Ok(data);
        }
        for i in needed {
            let chunk = self.chunk_range(i, pinned.size);
            if chunk.start >= wanted.start && chunk.end <= wanted.end {
                let slice = data.slice(
                    (chunk.start - wanted.start) as usize..(chunk.end - wanted.start) as usize,
                );
                let key = ChunkKey {
                    blob: pinned.blob.clone(),
                    index: i,
                };
                self.cache.insert(key, slice, true);
            }
        }
        Ok(data)
    }

    /// `wanted` from the whole chunks `needed`, fetched in parallel (or found in the cache).
    async fn read_chunks(
        &self,
        pinned: &Pinned,
        wanted: Range<u64>,
        needed: Range<u64>,
    ) -> Result<Bytes> {
        let parts =
            futures::future::try_join_all(needed.clone().map(|i| self.chunk(pinned, i, true)))
                .await?;
        if parts.len() == 1 {
            let chunk_start = needed.start * self.config.chunk_size;
            let from = (wanted.start - chunk_start) as usize;
            let to = (wanted.end - chunk_start) as usize;
            return slice_checked(&parts[0], from..to);
        }
        let mut out = BytesMut::with_capacity((wanted.end - wanted.start) as usize);
        for (i, part) in needed.clone().zip(parts) {
            let chunk = self.chunk_range(i, pinned.size);
            let from = wanted.start.max(chunk.start) - chunk.start;
            let to = wanted.end.min(chunk.end) - chunk.start;
            out.extend_from_slice(&slice_checked(&part, from as usize..to as usize)?);
        }
        Ok(out.freeze())
    }

    fn schedule_read_ahead(&self, handle: &ReadHandle, pinned: &Pinned, ahead: Range<u64>) {
        if ahead.is_empty() {
            return;
        }
        let mut tasks = handle.prefetches.lock().expect("prefetch lock");
        tasks.retain(|_, t| !t.is_finished());
        for index in ahead {
            if tasks.len() >= MAX_PREFETCH_IN_FLIGHT {
                break;
            }
            let key = ChunkKey {
                blob: pinned.blob.clone(),
                index,
            };
            if tasks.contains_key(&index) || self.cache.is_present_or_pending(&key) {
                continue;
            }
            let reader = self.clone();
            let pinned = pinned.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = reader.chunk(&pinned, index, false).await {
                    log::debug!("read-ahead of chunk {index} of {} failed: {e}", pinned.blob);
                }
            });
            tasks.insert(index, task.abort_handle());
        }
    }
}

fn slice_checked(data: &Bytes, range: Range<usize>) -> Result<Bytes> {
    if range.end > data.len() {
        return Err(FsError::Remote(format!(
            "short chunk: {} bytes, needed {}",
            data.len(),
            range.end
        )));
    }
    Ok(data.slice(range))
}
