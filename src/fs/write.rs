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
//! The handle's state is here; `buffer` holds the spool side (write, read, truncate, fill)
//! and `upload` the upload and the commit.
//!
//! A commit (on flush/fsync) finishes the upload and commits `put path = blob` with `expect` =
//! the blob seen at open, so a concurrent change elsewhere is a conflict, never a silent loss.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::error::{FsError, Result};
use super::read::Pinned;
use super::spool::{SpoolJournal, SpoolNote};
use crate::api::BlobInfo;
use crate::base::direct_io;
use std::os::unix::fs::FileExt;

mod buffer;
mod held;
mod upload;

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
    /// The same ranges of this blob, copied on the server: this many chunks from the index on.
    CopyOf(Arc<str>, u64),
}

struct Upload {
    id: String,
    /// Chunk index → length of what the server holds for it.
    uploaded: BTreeMap<u64, u64>,
    /// PUTs in flight.
    puts: JoinSet<Result<Sent>>,
}

/// What one chunk PUT stored.
struct Sent {
    /// The (index, length) of every upload chunk it stored.
    chunks: Vec<(u64, u64)>,
    /// Whether the server held the chunk already, when it was asked.
    held: Option<bool>,
}

/// A handle's spool file, read and written through the page cache, and open a second time
/// with `O_DIRECT` (where the file system allows it) for writes of whole blocks: the bytes of
/// a big `cp` are read back at most once, so caching them costs more than it saves (see
/// [`direct_io`]). The second descriptor is opened at the first such write: a small file
/// never needs it.
struct SpoolFile {
    file: std::fs::File,
    path: PathBuf,
    direct: std::sync::OnceLock<Option<std::fs::File>>,
}

/// Writes shorter than this go through the page cache even when aligned: a direct write
/// waits for the disk, which a small file's close would then wait for too.
const DIRECT_WRITE_MIN: usize = 64 << 10;

impl SpoolFile {
    /// Writes `data` at `offset`, past the page cache when both are block-aligned and the
    /// write is large.
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if data.len() >= DIRECT_WRITE_MIN && direct_io::is_aligned(offset, data.len()) {
            if let Some(direct) = self.direct()? {
                if direct_io::write_padded_at(direct, data, offset)? {
                    return Ok(());
                }
            }
        }
        self.file.write_all_at(data, offset)
    }

    /// The `O_DIRECT` descriptor, opened on first use (`None` where the file system
    /// refuses it).
    fn direct(&self) -> std::io::Result<Option<&std::fs::File>> {
        if let Some(direct) = self.direct.get() {
            return Ok(direct.as_ref());
        }
        let opened = direct_io::open(&self.path, std::fs::OpenOptions::new().write(true))?;
        Ok(self.direct.get_or_init(|| opened).as_ref())
    }
}

impl std::ops::Deref for SpoolFile {
    type Target = std::fs::File;
    fn deref(&self) -> &std::fs::File {
        &self.file
    }
}

struct WriteState {
    spool: SpoolFile,
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
    /// When to ask the server whether it holds a chunk before sending it.
    probe: held::HeldProbe,
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

/// A fresh spool file in the spool directory.
fn create_spool(config: &WriteConfig) -> Result<(PathBuf, SpoolFile)> {
    std::fs::create_dir_all(&config.spool_dir)?;
    let spool_path = config
        .spool_dir
        .join(format!("spool-{}", uuid::Uuid::new_v4()));
    let spool = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&spool_path)?;
    let spool = SpoolFile {
        file: spool,
        path: spool_path.clone(),
        direct: std::sync::OnceLock::new(),
    };
    Ok((spool_path, spool))
}

impl WriteState {
    /// The state of a handle whose spool holds `size` bytes (not yet filled from `base`).
    fn new(
        spool: SpoolFile,
        journal: SpoolJournal,
        size: u64,
        base: Option<Pinned>,
        expect: Option<String>,
        changed: bool,
        mode: u32,
    ) -> Self {
        WriteState {
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
            probe: held::HeldProbe::default(),
            dirty: changed,
            meta_dirty: false,
            mode,
            mtime: None,
            failed: None,
        }
    }
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
        let (spool_path, spool) = create_spool(&config)?;
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
        // A new or truncated file is a change even if nothing is written.
        let changed = truncate || expect.is_none();
        let state = WriteState::new(spool, journal, size, base, expect, changed, mode);
        Ok(WriteHandle {
            ino,
            path: Mutex::new(path.to_string()),
            writers: Mutex::new(std::collections::HashSet::new()),
            uncommitted: std::sync::atomic::AtomicBool::new(changed),
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

    /// Removes the spool and its journal (after the last commit).
    pub async fn discard(&self) {
        self.state.lock().await.journal.remove();
        let _ = std::fs::remove_file(&self.spool_path);
    }
}
