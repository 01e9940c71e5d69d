//! The filesystem core: every operation as an async method returning plain values or an
//! [`FsError`]. It knows nothing of FUSE, so it is tested against the in-memory remote;
//! [`super::fuse`] is the thin adapter the kernel talks to.
//!
//! Lock order: `inodes` before `handles`; neither is held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::error::{FsError, Result};
use super::inodes::{Attr, Cached, InodeTable, ROOT_INO};
use super::prefetch::PrefetchConfig;
use super::read::{ReadHandle, Reader};
use super::remote::Remote;
use crate::api::EntryType;
use crate::cache::ChunkCache;

/// Settings of the filesystem core.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long listings and attributes are trusted.
    pub attr_ttl: Duration,
    /// Bytes of chunk data kept in memory.
    pub cache_size: u64,
    /// Chunk and read-ahead settings.
    pub prefetch: PrefetchConfig,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig { attr_ttl: Duration::from_secs(1), cache_size: 256 << 20, prefetch: PrefetchConfig::default() }
    }
}

/// The filesystem core over a [`Remote`].
pub struct Fs<R: Remote> {
    remote: Arc<R>,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Arc<ReadHandle>>>,
    next_fh: AtomicU64,
    reader: Reader<R>,
    config: FsConfig,
}

impl<R: Remote> Fs<R> {
    /// A filesystem showing what `remote` serves.
    pub fn new(remote: Arc<R>, config: FsConfig) -> Self {
        let cache = Arc::new(ChunkCache::new(config.cache_size));
        Fs {
            reader: Reader { remote: remote.clone(), cache, config: config.prefetch },
            remote,
            inodes: Mutex::new(InodeTable::new(config.attr_ttl)),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The chunk cache (for statistics).
    pub fn cache(&self) -> &ChunkCache<FsError> {
        &self.reader.cache
    }

    /// Forgets every cached listing (after the server announced a change).
    pub fn expire_all(&self) {
        self.inodes.lock().expect("inodes lock").expire_all();
    }

    /// Lists directory `ino` from the server and records the result.
    async fn refresh_dir(&self, ino: u64) -> Result<Vec<(String, Attr)>> {
        let path = {
            let inodes = self.inodes.lock().expect("inodes lock");
            let (attr, _) = inodes.attr(ino).ok_or(FsError::NotFound(format!("inode {ino}")))?;
            if attr.kind != EntryType::Directory {
                return Err(FsError::NotDir);
            }
            inodes.path(ino).unwrap_or_default().to_string()
        };
        let listing = self.remote.list_dir(&path).await?;
        Ok(self.inodes.lock().expect("inodes lock").apply_listing(ino, &listing))
    }

    /// Finds `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        let cached = self.inodes.lock().expect("inodes lock").cached_child(parent, name);
        match cached {
            Cached::Found(attr) => return Ok(attr),
            Cached::Absent => return Err(FsError::NotFound(name.to_string())),
            Cached::Stale => {}
        }
        let children = self.refresh_dir(parent).await?;
        children
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .ok_or_else(|| FsError::NotFound(name.to_string()))
    }

    /// Attributes of `ino`, refreshed through its parent's listing when older than the TTL.
    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        let (attr, fresh, parent) = {
            let inodes = self.inodes.lock().expect("inodes lock");
            let (attr, fresh) = inodes.attr(ino).ok_or(FsError::NotFound(format!("inode {ino}")))?;
            (attr, fresh, inodes.parent_path(ino))
        };
        if fresh {
            return Ok(attr);
        }
        let Some(parent_path) = parent else { return Ok(attr) };
        let parent_ino = self.ino_of_path(&parent_path).await?;
        self.refresh_dir(parent_ino).await?;
        let inodes = self.inodes.lock().expect("inodes lock");
        match inodes.attr(ino) {
            // Still named by the same path after the refresh?
            Some((attr, _)) if inodes.is_current(ino) => Ok(attr),
            _ => Err(FsError::NotFound(format!("inode {ino}"))),
        }
    }

    async fn ino_of_path(&self, path: &str) -> Result<u64> {
        let mut ino = ROOT_INO;
        if path.is_empty() {
            return Ok(ino);
        }
        for segment in path.split('/') {
            ino = self.lookup(ino, segment).await?.ino;
        }
        Ok(ino)
    }

    /// The entries of directory `ino` (without `.` and `..`), from one listing.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<(String, Attr)>> {
        if let Some(children) = self.inodes.lock().expect("inodes lock").cached_listing(ino) {
            return Ok(children);
        }
        self.refresh_dir(ino).await
    }

    /// Opens `ino` for reading: pins its current blob. Returns the handle number and whether
    /// the kernel may keep its cached pages of the file.
    pub async fn open(&self, ino: u64) -> Result<(u64, bool)> {
        let attr = self.getattr(ino).await?;
        match attr.kind {
            EntryType::Directory => return Err(FsError::IsDir),
            EntryType::File | EntryType::Symlink => {}
        }
        let keep_cache = self.inodes.lock().expect("inodes lock").note_open(ino, &attr.hash);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ReadHandle::new(ino, &attr.hash, attr.size, self.config.prefetch));
        self.handles.lock().expect("handles lock").insert(fh, handle);
        Ok((fh, keep_cache))
    }

    fn handle(&self, fh: u64) -> Result<Arc<ReadHandle>> {
        self.handles.lock().expect("handles lock").get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// Reads from an open handle. A read at or past the end of the pinned version moves to a
    /// newer, longer version of the same path if there is one (so `tail -f` follows growth).
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes> {
        let handle = self.handle(fh)?;
        let pinned = handle.pinned();
        if offset >= pinned.size {
            if let Ok(current) = self.getattr(handle.ino).await {
                if current.hash != *pinned.blob && current.size > pinned.size {
                    log::debug!("handle {fh} follows {} -> {} ({} bytes)", pinned.blob, current.hash, current.size);
                    handle.repin(&current.hash, current.size);
                }
            }
        }
        self.reader.read(&handle, offset, len as u64).await
    }

    /// Closes a handle and cancels its read-ahead.
    pub fn release(&self, fh: u64) {
        if let Some(handle) = self.handles.lock().expect("handles lock").remove(&fh) {
            handle.close();
        }
    }

    /// Open handles.
    pub fn open_handles(&self) -> usize {
        self.handles.lock().expect("handles lock").len()
    }

    /// The target of symlink `ino`.
    pub async fn readlink(&self, ino: u64) -> Result<Bytes> {
        let attr = self.getattr(ino).await?;
        if attr.kind != EntryType::Symlink {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        self.remote.read_range(&attr.hash, 0..attr.size).await
    }

    /// A one-line summary of the cache's work, for the log.
    pub fn stats_line(&self) -> String {
        let s = &self.reader.cache.stats;
        format!(
            "govcfs stats: chunks fetched {}, cache hits {}, misses {}, bytes fetched {}, prefetch waste {} chunks, cache holds {} bytes, {} inodes",
            s.fetches.load(Ordering::Relaxed),
            s.hits.load(Ordering::Relaxed),
            s.misses.load(Ordering::Relaxed),
            s.bytes_fetched.load(Ordering::Relaxed),
            s.evicted_unread.load(Ordering::Relaxed),
            self.reader.cache.bytes(),
            self.inodes.lock().expect("inodes lock").len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::mock::MemRemote;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn small_config() -> FsConfig {
        FsConfig {
            attr_ttl: Duration::from_secs(60),
            cache_size: 1 << 20,
            prefetch: PrefetchConfig { chunk_size: 64 << 10, max_read_ahead: 256 << 10 },
        }
    }

    #[tokio::test]
    async fn lookup_readdir_and_read() {
        let remote = Arc::new(MemRemote::default());
        let content = data(300_000, 1);
        remote.put("dir/file.bin", content.clone());
        remote.put("top.txt", b"hello".to_vec());
        let fs = Fs::new(remote.clone(), small_config());
        let names: Vec<String> = fs.readdir(ROOT_INO).await.unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec!["dir", "top.txt"]);
        let dir = fs.lookup(ROOT_INO, "dir").await.unwrap();
        assert!(matches!(fs.lookup(ROOT_INO, "nope").await, Err(FsError::NotFound(_))));
        let file = fs.lookup(dir.ino, "file.bin").await.unwrap();
        assert_eq!(file.size, 300_000);
        let (fh, _) = fs.open(file.ino).await.unwrap();
        let mut out = Vec::new();
        let mut off = 0u64;
        while off < 300_000 {
            let part = fs.read(fh, off, 32 << 10).await.unwrap();
            assert!(!part.is_empty());
            off += part.len() as u64;
            out.extend_from_slice(&part);
        }
        assert_eq!(out, content);
        assert!(fs.read(fh, 300_000, 10).await.unwrap().is_empty());
        fs.release(fh);
        // one listing per directory, not one per file
        assert_eq!(remote.listings.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn open_handle_keeps_its_version_and_follows_growth_at_eof() {
        let remote = Arc::new(MemRemote::default());
        remote.put("log", b"one\n".to_vec());
        let mut config = small_config();
        config.attr_ttl = Duration::from_millis(0);
        let fs = Fs::new(remote.clone(), config);
        let file = fs.lookup(ROOT_INO, "log").await.unwrap();
        let (fh, _) = fs.open(file.ino).await.unwrap();
        remote.put("log", b"ONE\ntwo\n".to_vec());
        // inside the pinned version: old bytes only
        assert_eq!(&fs.read(fh, 0, 4).await.unwrap()[..], b"one\n");
        // at its end: the newer, longer version continues
        assert_eq!(&fs.read(fh, 4, 100).await.unwrap()[..], b"two\n");
    }

    #[tokio::test]
    async fn tail_fetches_only_the_end() {
        let remote = Arc::new(MemRemote::default());
        remote.put("big", data(8 << 20, 3));
        let fs = Fs::new(remote.clone(), small_config());
        let file = fs.lookup(ROOT_INO, "big").await.unwrap();
        let (fh, _) = fs.open(file.ino).await.unwrap();
        let tail = fs.read(fh, (8 << 20) - 4096, 4096).await.unwrap();
        assert_eq!(&tail[..], &data(8 << 20, 3)[(8 << 20) - 4096..]);
        assert_eq!(remote.bytes_read.load(Ordering::Relaxed), 4096);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Any sequence of reads returns exactly the source bytes.
        #[test]
        fn random_reads_match_the_source(reads in proptest::collection::vec((0u64..400_000, 1u32..200_000), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let remote = Arc::new(MemRemote::default());
                let content = data(350_000, 7);
                remote.put("f", content.clone());
                let fs = Fs::new(remote, small_config());
                let file = fs.lookup(ROOT_INO, "f").await.unwrap();
                let (fh, _) = fs.open(file.ino).await.unwrap();
                for (off, len) in reads {
                    let got = fs.read(fh, off, len).await.unwrap();
                    let start = (off as usize).min(content.len());
                    let end = (off as usize + len as usize).min(content.len());
                    assert_eq!(&got[..], &content[start..end]);
                }
            });
        }
    }
}
