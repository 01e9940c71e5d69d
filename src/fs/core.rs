//! The filesystem core: every operation as an async method returning plain values or an
//! [`FsError`]. It knows nothing of FUSE, so it is tested against the in-memory remote;
//! [`super::fuse`] is the thin adapter the kernel talks to.
//!
//! This file holds the state and the table of open handles; the operations live in
//! `lookup` (names and attributes), `reading` (the read path) and `writing` (write
//! handles and their commit), and namespace changes in `fs/namespace.rs`.
//!
//! Lock order: `inodes` before `handles`; neither is held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{FsError, Result};
use super::inodes::InodeTable;
use super::prefetch::PrefetchConfig;
use super::read::{ReadHandle, Reader};
use super::remote::Remote;
use super::spool::SpoolDir;
use super::write::WriteHandle;
use crate::cache::ChunkCache;

mod lookup;
mod reading;
mod writing;

/// An open file.
#[derive(Clone)]
enum Handle {
    Read(Arc<ReadHandle>),
    Write(Arc<WriteHandle>),
}

/// Settings of the filesystem core.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long listings and attributes are trusted.
    pub attr_ttl: Duration,
    /// Bytes of chunk data kept in memory.
    pub cache_size: u64,
    /// Chunk and read-ahead settings.
    pub prefetch: PrefetchConfig,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Spool files of writes and `recovery/` live here.
    pub cache_dir: std::path::PathBuf,
    /// `http://HOST:PORT/REPO` and branch of the mount, recorded with recovery copies.
    pub origin: String,
    pub branch: Option<String>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            attr_ttl: Duration::from_secs(1),
            cache_size: 256 << 20,
            prefetch: PrefetchConfig::default(),
            read_only: false,
            cache_dir: std::env::temp_dir().join("govcfs-cache"),
            origin: String::new(),
            branch: None,
        }
    }
}

/// The filesystem core over a [`Remote`].
pub struct Fs<R: Remote> {
    pub(super) remote: Arc<R>,
    pub(super) inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Files being written by this mount, by inode: their size is the writer's, and they stay
    /// visible here before their first commit.
    pub(super) pending: Mutex<HashMap<u64, Arc<WriteHandle>>>,
    next_fh: AtomicU64,
    reader: Reader<R>,
    config: FsConfig,
    /// This mount's spool directory, claimed at the first write.
    spool: Mutex<Option<SpoolDir>>,
}

impl<R: Remote> Fs<R> {
    /// A filesystem showing what `remote` serves.
    pub fn new(remote: Arc<R>, config: FsConfig) -> Self {
        // --cache-size bounds all chunk memory, not just the LRU: keep room for the chunks
        // being fetched and the HTTP buffers they pass through (measured: about 60 MiB beyond
        // the LRU while `cat` streams at full speed on a loaded 2-core machine).
        let in_flight = (config.prefetch.chunk_size * 64).min(config.cache_size / 4);
        let cache = Arc::new(ChunkCache::new(config.cache_size - in_flight));
        Fs {
            reader: Reader {
                remote: remote.clone(),
                cache,
                config: config.prefetch,
            },
            remote,
            inodes: Mutex::new(InodeTable::new(config.attr_ttl)),
            handles: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            config,
            spool: Mutex::new(None),
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

    /// Fails with EROFS on a read-only mount.
    pub(super) fn check_writable(&self) -> Result<()> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn handle(&self, fh: u64) -> Result<Handle> {
        self.handles
            .lock()
            .expect("handles lock")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// The write handle behind a file handle number, if it is one.
    pub(super) fn write_handle(&self, fh: u64) -> Option<Arc<WriteHandle>> {
        match self.handle(fh).ok()? {
            Handle::Write(w) => Some(w),
            Handle::Read(_) => None,
        }
    }

    /// The write handle of an inode being written on this mount, if any.
    pub(super) fn pending_writer(&self, ino: u64) -> Option<Arc<WriteHandle>> {
        self.pending
            .lock()
            .expect("pending lock")
            .get(&ino)
            .cloned()
    }

    /// Closes a handle: cancels read-ahead, or commits what is left and drops the spool.
    pub async fn release(&self, fh: u64) {
        let handle = self.handles.lock().expect("handles lock").remove(&fh);
        match handle {
            Some(Handle::Read(h)) => h.close(),
            Some(Handle::Write(w)) => {
                if let Err(e) = self.commit_writer(&w).await {
                    e.log("release");
                }
                let was_pending = {
                    let mut pending = self.pending.lock().expect("pending lock");
                    let mine = pending.get(&w.ino).is_some_and(|p| Arc::ptr_eq(p, &w));
                    if mine {
                        pending.remove(&w.ino);
                    }
                    mine
                };
                if was_pending {
                    self.forget_if_never_committed(&w);
                }
                w.discard().await;
            }
            None => {}
        }
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
    use crate::fs::inodes::ROOT_INO;
    use crate::fs::mock::MemRemote;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn small_config() -> FsConfig {
        FsConfig {
            attr_ttl: Duration::from_secs(60),
            cache_size: 1 << 20,
            prefetch: PrefetchConfig {
                chunk_size: 64 << 10,
                max_read_ahead: 256 << 10,
            },
            ..FsConfig::default()
        }
    }

    #[tokio::test]
    async fn lookup_readdir_and_read() {
        let remote = Arc::new(MemRemote::default());
        let content = data(300_000, 1);
        remote.put("dir/file.bin", content.clone());
        remote.put("top.txt", b"hello".to_vec());
        let fs = Fs::new(remote.clone(), small_config());
        let names: Vec<String> = fs
            .readdir(ROOT_INO)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, vec!["dir", "top.txt"]);
        let dir = fs.lookup(ROOT_INO, "dir").await.unwrap();
        assert!(matches!(
            fs.lookup(ROOT_INO, "nope").await,
            Err(FsError::NotFound(_))
        ));
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
        fs.release(fh).await;
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
    async fn a_read_across_the_end_continues_into_the_longer_version() {
        // The kernel re-reads a partial last page from its start: offset 0, 4096 bytes.
        let remote = Arc::new(MemRemote::default());
        remote.put("log", b"line1\n".to_vec());
        let mut config = small_config();
        config.attr_ttl = Duration::from_millis(0);
        let fs = Fs::new(remote.clone(), config);
        let file = fs.lookup(ROOT_INO, "log").await.unwrap();
        let (fh, _) = fs.open(file.ino).await.unwrap();
        assert_eq!(&fs.read(fh, 0, 4096).await.unwrap()[..], b"line1\n");
        remote.put("log", b"line1\nline2\n".to_vec());
        assert_eq!(&fs.read(fh, 0, 4096).await.unwrap()[..], b"line1\nline2\n");
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

    #[tokio::test]
    async fn files_are_data_to_their_end_for_seek_data_and_seek_hole() {
        let remote = Arc::new(MemRemote::default());
        remote.put("f", data(1000, 1));
        let fs = Fs::new(remote, small_config());
        let ino = fs.lookup(ROOT_INO, "f").await.unwrap().ino;
        assert_eq!(
            fs.seek_data_or_hole(ino, 10, libc::SEEK_DATA)
                .await
                .unwrap(),
            10
        );
        assert_eq!(
            fs.seek_data_or_hole(ino, 10, libc::SEEK_HOLE)
                .await
                .unwrap(),
            1000
        );
        let past = fs
            .seek_data_or_hole(ino, 1000, libc::SEEK_DATA)
            .await
            .unwrap_err();
        assert_eq!(past.errno(), libc::ENXIO);
        assert_eq!(
            fs.seek_data_or_hole(ino, 1, libc::SEEK_END)
                .await
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
    }

    #[tokio::test]
    async fn a_large_read_after_a_jump_fetches_whole_chunks_that_its_continuation_reuses() {
        let remote = Arc::new(MemRemote::default());
        let content = data(1 << 20, 5);
        remote.put("media", content.clone());
        let fs = Fs::new(remote.clone(), small_config());
        let file = fs.lookup(ROOT_INO, "media").await.unwrap();
        let (fh, _) = fs.open(file.ino).await.unwrap();
        // 64 KiB chunks: a 64 KiB read at 100,000 spans chunks 1 and 2, fetched whole.
        let first = fs.read(fh, 100_000, 64 << 10).await.unwrap();
        assert_eq!(&first[..], &content[100_000..100_000 + (64 << 10)]);
        assert_eq!(remote.range_reads.load(Ordering::Relaxed), 2);
        assert_eq!(remote.bytes_read.load(Ordering::Relaxed), 128 << 10);
        // The kernel's next, page-sized read inside chunk 2 is a cache hit.
        let next = fs.read(fh, 100_000 + (64 << 10), 4096).await.unwrap();
        assert_eq!(
            &next[..],
            &content[100_000 + (64 << 10)..100_000 + (64 << 10) + 4096]
        );
        assert_eq!(remote.range_reads.load(Ordering::Relaxed), 2);
        // A small read after another jump still fetches only its bytes.
        let small = fs.read(fh, 900_000, 4096).await.unwrap();
        assert_eq!(&small[..], &content[900_000..904_096]);
        assert_eq!(
            remote.bytes_read.load(Ordering::Relaxed),
            (128 << 10) + 4096
        );
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

#[cfg(test)]
mod write_tests {
    use super::*;
    use crate::fs::inodes::ROOT_INO;
    use crate::fs::mock::{MemRemote, MOCK_UPLOAD_CHUNK};
    use proptest::prelude::*;

    fn config(dir: &std::path::Path) -> FsConfig {
        FsConfig {
            attr_ttl: Duration::from_secs(60),
            cache_dir: dir.to_path_buf(),
            ..FsConfig::default()
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn create_write_close_commits_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemRemote::default());
        let fs = Fs::new(remote.clone(), config(dir.path()));
        let content = data(3 * MOCK_UPLOAD_CHUNK as usize + 123, 5);
        let (attr, fh) = fs.create(ROOT_INO, "new.bin", 0o644).await.unwrap();
        for (i, piece) in content.chunks(10_000).enumerate() {
            fs.write(fh, (i * 10_000) as u64, piece, None)
                .await
                .unwrap();
        }
        assert!(
            remote.get("new.bin").is_none(),
            "nothing is visible before close"
        );
        assert_eq!(
            fs.getattr(attr.ino).await.unwrap().size,
            content.len() as u64
        );
        fs.flush(fh, None).await.unwrap();
        fs.release(fh).await;
        assert_eq!(remote.get("new.bin").unwrap(), content);
        // an empty new file is committed too
        let (_, fh) = fs.create(ROOT_INO, "empty", 0o644).await.unwrap();
        fs.flush(fh, None).await.unwrap();
        fs.release(fh).await;
        assert_eq!(remote.get("empty").unwrap().len(), 0);
    }

    #[tokio::test]
    async fn failed_close_keeps_the_old_version_and_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemRemote::default());
        remote.put("f", b"old".to_vec());
        let fs = Fs::new(remote.clone(), config(dir.path()));
        let f = fs.lookup(ROOT_INO, "f").await.unwrap();
        let fh = fs.open_write(f.ino, true).await.unwrap();
        fs.write(fh, 0, b"new bytes", None).await.unwrap();
        remote.fail_writes.store(true, Ordering::Relaxed);
        assert!(matches!(fs.flush(fh, None).await, Err(FsError::Remote(_))));
        fs.release(fh).await;
        assert_eq!(remote.get("f").unwrap(), b"old".to_vec());
        let kept: Vec<_> = std::fs::read_dir(crate::fs::recovery_dir(dir.path()))
            .unwrap()
            .flatten()
            .collect();
        let copy = kept
            .iter()
            .find(|e| !e.path().to_string_lossy().ends_with(".json"))
            .unwrap();
        assert_eq!(std::fs::read(copy.path()).unwrap(), b"new bytes");
    }

    #[tokio::test]
    async fn a_failed_close_of_an_edit_keeps_the_whole_file_not_just_the_edited_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemRemote::default());
        let cs = MOCK_UPLOAD_CHUNK as usize;
        let mut model = data(3 * cs + 10, 4);
        remote.put("f", model.clone());
        let fs = Fs::new(remote.clone(), config(dir.path()));
        let f = fs.lookup(ROOT_INO, "f").await.unwrap();
        let fh = fs.open_write(f.ino, false).await.unwrap();
        fs.write(fh, cs as u64 + 5, b"edit", None).await.unwrap();
        model[cs + 5..cs + 9].copy_from_slice(b"edit");
        remote.fail_writes.store(true, Ordering::Relaxed);
        assert!(fs.flush(fh, None).await.is_err());
        fs.release(fh).await;
        let kept: Vec<_> = std::fs::read_dir(crate::fs::recovery_dir(dir.path()))
            .unwrap()
            .flatten()
            .collect();
        let copy = kept
            .iter()
            .find(|e| !e.path().to_string_lossy().ends_with(".json"))
            .unwrap();
        assert_eq!(std::fs::read(copy.path()).unwrap(), model);
    }

    #[tokio::test]
    async fn a_conflicting_close_fails_instead_of_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemRemote::default());
        remote.put("f", b"v1".to_vec());
        let fs = Fs::new(remote.clone(), config(dir.path()));
        let f = fs.lookup(ROOT_INO, "f").await.unwrap();
        let fh = fs.open_write(f.ino, true).await.unwrap();
        fs.write(fh, 0, b"mine", None).await.unwrap();
        remote.put("f", b"theirs".to_vec());
        assert!(matches!(
            fs.flush(fh, None).await,
            Err(FsError::Conflict(_))
        ));
        fs.release(fh).await;
        assert_eq!(remote.get("f").unwrap(), b"theirs".to_vec());
    }

    #[tokio::test]
    async fn an_append_sends_only_the_new_bytes_and_copies_the_rest_on_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(MemRemote::default());
        let cs = MOCK_UPLOAD_CHUNK as usize;
        let mut content = data(10 * cs + cs / 2, 3);
        remote.put("log", content.clone());
        let fs = Fs::new(remote.clone(), config(dir.path()));
        let f = fs.lookup(ROOT_INO, "log").await.unwrap();
        let fh = fs.open_write(f.ino, false).await.unwrap();
        let tail = data(cs, 7);
        fs.write(fh, content.len() as u64, &tail, None)
            .await
            .unwrap();
        fs.flush(fh, None).await.unwrap();
        fs.release(fh).await;
        content.extend_from_slice(&tail);
        assert_eq!(remote.get("log").unwrap(), content);
        // Only the base's last, partial chunk was read back; the ten full ones were copied, in
        // one request.
        assert_eq!(remote.bytes_read.load(Ordering::Relaxed), (cs / 2) as u64);
        assert_eq!(remote.copies.load(Ordering::Relaxed), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, usize, u8),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let max = 3 * MOCK_UPLOAD_CHUNK;
        prop_oneof![
            (0..max, 1usize..100_000, any::<u8>()).prop_map(|(o, l, b)| Op::Write(o, l, b)),
            (0..max).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Random writes and truncations on an existing file, read back through the handle and
        /// after the commit, equal the same operations on a Vec.
        #[test]
        fn random_writes_match_a_model(initial in 0usize..(2 * MOCK_UPLOAD_CHUNK as usize), ops in proptest::collection::vec(op(), 1..12)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let remote = Arc::new(MemRemote::default());
                let mut model = data(initial, 9);
                remote.put("f", model.clone());
                let fs = Fs::new(remote.clone(), config(dir.path()));
                let f = fs.lookup(ROOT_INO, "f").await.unwrap();
                let fh = fs.open_write(f.ino, false).await.unwrap();
                for op in &ops {
                    match op {
                        Op::Write(offset, len, byte) => {
                            let bytes = vec![*byte; *len];
                            fs.write(fh, *offset, &bytes, None).await.unwrap();
                            let end = *offset as usize + len;
                            if model.len() < end { model.resize(end, 0); }
                            model[*offset as usize..end].copy_from_slice(&bytes);
                        }
                        Op::Truncate(size) => {
                            fs.setattr(f.ino, None, Some(*size), None, Some(fh)).await.unwrap();
                            model.resize(*size as usize, 0);
                        }
                    }
                }
                let through_handle = fs.read(fh, 0, model.len() as u32 + 10).await.unwrap();
                assert_eq!(&through_handle[..], &model[..]);
                fs.flush(fh, None).await.unwrap();
                fs.release(fh).await;
                assert_eq!(remote.get("f").unwrap(), model);
            });
        }
    }
}
