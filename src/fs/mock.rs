//! An in-memory [`Remote`] for tests of the filesystem core without a server or a kernel
//! (compiled for tests only). Like the server it keeps empty directories, gives each
//! directory a tree id that changes with its content, and checks every `expect`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use super::error::{FsError, Result};
use super::remote::Remote;
use crate::api::{BlobInfo, Change, CommitCreated, Entry, EntryType, TreeListing, UploadStarted};
use crate::base::manifest::{blob_id, chunk_hash, ChunkHash, CHUNK_SIZE};
use crate::base::modes::{MODE_DIR, MODE_FILE};
use crate::base::paths::parent_and_name;

/// Chunk size of the mock's uploads: small, so tests cross chunk boundaries cheaply.
pub const MOCK_UPLOAD_CHUNK: u64 = 64 << 10;

/// The mock's tree: files by path, and every directory (the root excepted), empty or not.
#[derive(Default, Clone)]
struct Tree {
    files: BTreeMap<String, Bytes>,
    dirs: BTreeSet<String>,
}

impl Tree {
    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || self.dirs.contains(path)
    }

    /// Adds `dir` and its ancestors (the server creates missing parents, and keeps them).
    fn add_dirs(&mut self, mut dir: &str) {
        while !dir.is_empty() {
            self.dirs.insert(dir.to_string());
            dir = parent_and_name(dir).0;
        }
    }

    fn put_file(&mut self, path: &str, data: Bytes) {
        self.add_dirs(parent_and_name(path).0);
        self.files.insert(path.to_string(), data);
    }

    /// Paths strictly below directory `dir`.
    fn below<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, Option<&'a Bytes>)> {
        let prefix = format!("{dir}/");
        let files = self.files.iter().map(|(p, d)| (p, Some(d)));
        let dirs = self.dirs.iter().map(|p| (p, None));
        files
            .chain(dirs)
            .filter(move |(p, _)| dir.is_empty() || p.starts_with(&prefix))
    }

    /// A tree id for directory `dir`: changes whenever anything below it does.
    fn tree_id(&self, dir: &str) -> String {
        let mut listing: Vec<String> = self
            .below(dir)
            .map(|(p, d)| format!("{p} {}", d.map_or("dir".to_string(), |d| blob_id(d))))
            .collect();
        listing.sort();
        blob_id(listing.join("\n").as_bytes())
    }

    /// The blob or tree id at `path`, if anything is there.
    fn id_at(&self, path: &str) -> Option<String> {
        match self.files.get(path) {
            Some(d) => Some(blob_id(d)),
            None if self.dirs.contains(path) => Some(self.tree_id(path)),
            None => None,
        }
    }

    fn check_expect(&self, path: &str, expect: &Option<Option<String>>) -> Result<()> {
        match expect {
            Some(expected) if self.id_at(path) != *expected => {
                Err(FsError::Conflict(path.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Removes `path` and everything below it; false if nothing was there.
    fn remove(&mut self, path: &str) -> bool {
        let prefix = format!("{path}/");
        let (files, dirs) = (self.files.len(), self.dirs.len());
        self.files
            .retain(|p, _| p != path && !p.starts_with(&prefix));
        self.dirs.retain(|p| p != path && !p.starts_with(&prefix));
        files + dirs != self.files.len() + self.dirs.len()
    }
}

/// Files by path, every blob ever put (old versions stay readable, as on the server), and
/// counters of the requests made.
#[derive(Default)]
pub struct MemRemote {
    tree: Mutex<Tree>,
    blobs: Mutex<HashMap<String, Bytes>>,
    uploads: Mutex<HashMap<String, BTreeMap<u64, Bytes>>>,
    next_upload: AtomicU64,
    /// When set, every write operation fails (to test failure handling).
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// `list_dir` calls so far.
    pub listings: AtomicU64,
    /// `read_range` calls so far.
    pub range_reads: AtomicU64,
    /// Bytes returned by `read_range` so far.
    pub bytes_read: AtomicU64,
    /// `copy_chunks` calls so far (one per run of copied chunks).
    pub copies: AtomicU64,
    /// Upload chunk size; `None`: [`MOCK_UPLOAD_CHUNK`].
    upload_chunk: Option<u64>,
    /// Store chunks held, by hash: the pieces of every blob and upload chunk received.
    held: Mutex<HashMap<ChunkHash, Bytes>>,
    /// Bytes received by chunk PUTs and small uploads so far.
    pub bytes_received: AtomicU64,
    /// `reference_chunks` calls so far.
    pub references: AtomicU64,
}

impl MemRemote {
    /// A mock whose uploads have chunks of `size` bytes (a multiple of [`CHUNK_SIZE`] lets
    /// chunks be sent by name, as on the server).
    pub fn with_upload_chunk(size: u64) -> Self {
        MemRemote {
            upload_chunk: Some(size),
            ..MemRemote::default()
        }
    }

    fn chunk_size(&self) -> u64 {
        self.upload_chunk.unwrap_or(MOCK_UPLOAD_CHUNK)
    }

    /// Keeps the store chunks of `data` (received bytes, as the server does).
    fn hold(&self, data: &Bytes) {
        let mut held = self.held.lock().expect("lock");
        for start in (0..data.len()).step_by(CHUNK_SIZE as usize) {
            let piece = data.slice(start..(start + CHUNK_SIZE as usize).min(data.len()));
            held.insert(chunk_hash(&piece), piece);
        }
    }

    /// Adds or replaces a file (parents are implied).
    pub fn put(&self, path: &str, data: impl Into<Bytes>) {
        let data = data.into();
        self.hold(&data);
        self.blobs
            .lock()
            .expect("lock")
            .insert(blob_id(&data), data.clone());
        self.tree.lock().expect("lock").put_file(path, data);
    }

    /// The content of a file, if it exists.
    pub fn get(&self, path: &str) -> Option<Bytes> {
        self.tree.lock().expect("lock").files.get(path).cloned()
    }

    fn check_writable(&self) -> Result<()> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(FsError::Remote("injected failure".into()));
        }
        Ok(())
    }
}

impl Remote for MemRemote {
    async fn list_dir(&self, path: &str) -> Result<TreeListing> {
        self.listings.fetch_add(1, Ordering::Relaxed);
        let tree = self.tree.lock().expect("lock");
        if !tree.is_dir(path) {
            return Err(FsError::NotFound(path.to_string()));
        }
        let entries = tree
            .below(path)
            .filter(|(p, _)| parent_and_name(p).0 == path)
            .map(|(p, data)| entry_of(&tree, p, data))
            .collect::<BTreeMap<String, Entry>>();
        Ok(TreeListing {
            path: path.to_string(),
            commit: "c".repeat(64),
            entries: entries.into_values().collect(),
        })
    }

    async fn read_range(&self, hash: &str, range: Range<u64>) -> Result<Bytes> {
        self.range_reads.fetch_add(1, Ordering::Relaxed);
        let blobs = self.blobs.lock().expect("lock");
        let data = blobs
            .get(hash)
            .ok_or_else(|| FsError::NotFound(format!("blob {hash}")))?;
        let end = (range.end as usize).min(data.len());
        let start = (range.start as usize).min(end);
        self.bytes_read
            .fetch_add((end - start) as u64, Ordering::Relaxed);
        Ok(data.slice(start..end))
    }

    fn upload_chunk_size(&self) -> u64 {
        self.chunk_size()
    }

    async fn start_upload(&self) -> Result<UploadStarted> {
        self.check_writable()?;
        let id = format!("u{}", self.next_upload.fetch_add(1, Ordering::Relaxed));
        self.uploads
            .lock()
            .expect("lock")
            .insert(id.clone(), BTreeMap::new());
        Ok(UploadStarted {
            upload_id: id,
            chunk_size: self.chunk_size(),
        })
    }

    async fn put_file(
        &self,
        data: Bytes,
        change: Change,
        message: String,
    ) -> Result<CommitCreated> {
        self.check_writable()?;
        let hash = blob_id(&data);
        if !matches!(&change, Change::Put { hash: h, .. } if *h == hash) {
            return Err(FsError::Remote(format!(
                "the put names another blob than {hash}"
            )));
        }
        self.bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.hold(&data);
        self.blobs
            .lock()
            .expect("lock")
            .insert(hash.clone(), data.clone());
        let committed = self.commit(vec![change], message).await;
        if committed.is_err() {
            self.blobs.lock().expect("lock").remove(&hash);
        }
        committed
    }

    async fn put_chunk(&self, upload_id: &str, index: u64, data: Bytes) -> Result<()> {
        self.check_writable()?;
        self.bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.hold(&data);
        let mut uploads = self.uploads.lock().expect("lock");
        let chunks = uploads
            .get_mut(upload_id)
            .ok_or_else(|| FsError::NotFound(upload_id.into()))?;
        chunks.insert(index, data);
        Ok(())
    }

    async fn missing_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<ChunkHash>> {
        let held = self.held.lock().expect("lock");
        Ok(hashes
            .iter()
            .filter(|h| !held.contains_key(*h))
            .copied()
            .collect())
    }

    async fn reference_chunks(
        &self,
        upload_id: &str,
        index: u64,
        hashes: &[ChunkHash],
    ) -> Result<u64> {
        self.check_writable()?;
        self.references.fetch_add(1, Ordering::Relaxed);
        if !self.chunk_size().is_multiple_of(CHUNK_SIZE) {
            return Err(FsError::Invalid("the upload is not aligned".into()));
        }
        let mut data = Vec::new();
        let held = self.held.lock().expect("lock");
        for hash in hashes {
            let piece = held
                .get(hash)
                .ok_or_else(|| FsError::NotFound(format!("chunk {}", hex::encode(hash))))?;
            data.extend_from_slice(piece);
        }
        drop(held);
        let len = data.len() as u64;
        self.uploads
            .lock()
            .expect("lock")
            .get_mut(upload_id)
            .ok_or_else(|| FsError::NotFound(upload_id.into()))?
            .insert(index, Bytes::from(data));
        Ok(len)
    }

    async fn copy_chunks(
        &self,
        upload_id: &str,
        (index, count): (u64, u64),
        source: &str,
    ) -> Result<u64> {
        self.check_writable()?;
        self.copies.fetch_add(1, Ordering::Relaxed);
        let blob = self
            .blobs
            .lock()
            .expect("lock")
            .get(source)
            .cloned()
            .ok_or_else(|| FsError::NotFound(format!("blob {source}")))?;
        let mut total = 0;
        for i in index..index + count.max(1) {
            let start = i * self.chunk_size();
            if start >= blob.len() as u64 {
                return Err(FsError::Invalid(format!(
                    "chunk {i} is past the end of {source}"
                )));
            }
            let end = (start + self.chunk_size()).min(blob.len() as u64);
            let data = blob.slice(start as usize..end as usize);
            total += data.len() as u64;
            let mut uploads = self.uploads.lock().expect("lock");
            uploads
                .get_mut(upload_id)
                .ok_or_else(|| FsError::NotFound(upload_id.into()))?
                .insert(i, data);
        }
        Ok(total)
    }

    async fn complete_upload(&self, upload_id: &str) -> Result<BlobInfo> {
        self.check_writable()?;
        let chunks = self
            .uploads
            .lock()
            .expect("lock")
            .remove(upload_id)
            .ok_or_else(|| FsError::NotFound(upload_id.into()))?;
        let mut data = Vec::new();
        for (position, (index, chunk)) in chunks.iter().enumerate() {
            if *index != position as u64
                || (position + 1 < chunks.len() && chunk.len() as u64 != self.chunk_size())
            {
                return Err(FsError::Remote(format!("bad chunk layout at {index}")));
            }
            data.extend_from_slice(chunk);
        }
        let hash = blob_id(&data);
        let info = BlobInfo {
            hash: hash.clone(),
            size: data.len() as u64,
            chunks: (data.len() as u64).div_ceil(crate::base::manifest::CHUNK_SIZE),
        };
        let data = Bytes::from(data);
        self.hold(&data);
        self.blobs.lock().expect("lock").insert(hash, data);
        Ok(info)
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<()> {
        self.uploads.lock().expect("lock").remove(upload_id);
        Ok(())
    }

    async fn commit(&self, changes: Vec<Change>, _message: String) -> Result<CommitCreated> {
        self.check_writable()?;
        let blobs = self.blobs.lock().expect("lock");
        let mut tree = self.tree.lock().expect("lock");
        let mut next = tree.clone();
        for change in changes {
            apply(&mut next, &blobs, change)?;
        }
        *tree = next;
        Ok(CommitCreated {
            commit: "c".repeat(64),
            branch: "main".into(),
        })
    }
}

/// The listing entry of `path` (a file when it has `data`, else a directory), by name.
fn entry_of(tree: &Tree, path: &str, data: Option<&Bytes>) -> (String, Entry) {
    let name = parent_and_name(path).1.to_string();
    let (kind, size, mode, hash) = match data {
        Some(d) => (EntryType::File, d.len() as u64, MODE_FILE, blob_id(d)),
        None => (EntryType::Directory, 0, MODE_DIR, tree.tree_id(path)),
    };
    let entry = Entry {
        name: name.clone(),
        path: path.to_string(),
        kind,
        size,
        mode,
        mtime: 0,
        hash,
    };
    (name, entry)
}

/// Applies one change of a commit to `tree`, with the server's checks.
fn apply(tree: &mut Tree, blobs: &HashMap<String, Bytes>, change: Change) -> Result<()> {
    match change {
        Change::Put {
            path, hash, expect, ..
        } => {
            tree.check_expect(&path, &expect)?;
            if tree.dirs.contains(&path) {
                return Err(FsError::Conflict(path));
            }
            let data = blobs
                .get(&hash)
                .ok_or_else(|| FsError::Remote(format!("unknown blob {hash}")))?;
            tree.put_file(&path, data.clone());
        }
        Change::Delete { path, expect } => {
            tree.check_expect(&path, &expect)?;
            if !tree.remove(&path) {
                return Err(FsError::NotFound(path));
            }
        }
        Change::Move { from, to } => move_path(tree, &from, &to)?,
        Change::Mkdir { path } => {
            if tree.files.contains_key(&path) {
                return Err(FsError::Conflict(path));
            }
            tree.add_dirs(&path);
        }
    }
    Ok(())
}

/// A `Move` as the server does it: not into itself, and only over an empty directory (a
/// directory) or a file (a file).
fn move_path(tree: &mut Tree, from: &str, to: &str) -> Result<()> {
    if from == to {
        return Ok(());
    }
    if to.starts_with(&format!("{from}/")) {
        // The server's 400.
        return Err(FsError::Remote(format!("cannot move {from:?} into itself")));
    }
    let source_is_dir = tree.dirs.contains(from);
    if !source_is_dir && !tree.files.contains_key(from) {
        return Err(FsError::NotFound(from.to_string()));
    }
    if tree.id_at(to).is_some() {
        let replaceable = match (source_is_dir, tree.dirs.contains(to)) {
            (true, true) => tree.below(to).next().is_none(),
            (false, false) => true,
            _ => false,
        };
        if !replaceable {
            return Err(FsError::Conflict(to.to_string()));
        }
        tree.remove(to);
    }
    let mut moved = Tree::default();
    let prefix = format!("{from}/");
    let rename = |p: &str| format!("{to}{}", &p[from.len()..]);
    for (p, d) in tree
        .files
        .iter()
        .filter(|(p, _)| *p == from || p.starts_with(&prefix))
    {
        moved.files.insert(rename(p), d.clone());
    }
    for p in tree
        .dirs
        .iter()
        .filter(|p| *p == from || p.starts_with(&prefix))
    {
        moved.dirs.insert(rename(p));
    }
    tree.remove(from);
    tree.add_dirs(parent_and_name(to).0);
    tree.files.extend(moved.files);
    tree.dirs.extend(moved.dirs);
    Ok(())
}
