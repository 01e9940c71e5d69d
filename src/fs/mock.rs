//! An in-memory [`Remote`] for tests of the filesystem core without a server or a kernel.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use super::error::{FsError, Result};
use super::remote::Remote;
use crate::api::{BlobInfo, Change, CommitCreated, Entry, EntryType, TreeListing, UploadStarted};
use crate::base::checksum::md5_hex;
use crate::base::ids::blob_id;
use crate::base::modes::{MODE_DIR, MODE_FILE};

/// Chunk size of the mock's uploads: small, so tests cross chunk boundaries cheaply.
pub const MOCK_UPLOAD_CHUNK: u64 = 64 << 10;

/// Files by path, every blob ever put (old versions stay readable, as on the server), and
/// counters of the requests made.
#[derive(Default)]
pub struct MemRemote {
    files: Mutex<BTreeMap<String, Bytes>>,
    blobs: Mutex<std::collections::HashMap<String, Bytes>>,
    uploads: Mutex<std::collections::HashMap<String, BTreeMap<u64, Bytes>>>,
    next_upload: AtomicU64,
    /// When set, every write operation fails (to test failure handling).
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// `list_dir` calls so far.
    pub listings: AtomicU64,
    /// `read_range` calls so far.
    pub range_reads: AtomicU64,
    /// Bytes returned by `read_range` so far.
    pub bytes_read: AtomicU64,
    /// `copy_chunk` calls so far.
    pub copies: AtomicU64,
}

impl MemRemote {
    /// Adds or replaces a file (parents are implied).
    pub fn put(&self, path: &str, data: impl Into<Bytes>) {
        let data = data.into();
        self.blobs
            .lock()
            .expect("lock")
            .insert(blob_id(&data), data.clone());
        self.files
            .lock()
            .expect("lock")
            .insert(path.to_string(), data);
    }

    /// The content of a file, if it exists.
    pub fn get(&self, path: &str) -> Option<Bytes> {
        self.files.lock().expect("lock").get(path).cloned()
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
        let files = self.files.lock().expect("lock");
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for (p, data) in files.iter() {
            let Some(rest) = p.strip_prefix(&prefix) else {
                continue;
            };
            let (name, is_dir) = match rest.split_once('/') {
                Some((dir, _)) => (dir, true),
                None => (rest, false),
            };
            let child = format!("{prefix}{name}");
            let entry = if is_dir {
                Entry {
                    name: name.into(),
                    path: child,
                    kind: EntryType::Directory,
                    size: 0,
                    mode: MODE_DIR,
                    mtime: 0,
                    hash: "d".repeat(64),
                }
            } else {
                Entry {
                    name: name.into(),
                    path: child,
                    kind: EntryType::File,
                    size: data.len() as u64,
                    mode: MODE_FILE,
                    mtime: 0,
                    hash: blob_id(data),
                }
            };
            entries.insert(name.to_string(), entry);
        }
        if entries.is_empty() && !path.is_empty() {
            return Err(FsError::NotFound(path.to_string()));
        }
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
        MOCK_UPLOAD_CHUNK
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
            chunk_size: MOCK_UPLOAD_CHUNK,
        })
    }

    async fn upload_small(&self, data: Bytes) -> Result<BlobInfo> {
        self.check_writable()?;
        let hash = blob_id(&data);
        let info = BlobInfo {
            hash: hash.clone(),
            size: data.len() as u64,
            md5: md5_hex(&data),
        };
        self.blobs.lock().expect("lock").insert(hash, data);
        Ok(info)
    }

    async fn put_chunk(&self, upload_id: &str, index: u64, data: Bytes) -> Result<()> {
        self.check_writable()?;
        let mut uploads = self.uploads.lock().expect("lock");
        let chunks = uploads
            .get_mut(upload_id)
            .ok_or_else(|| FsError::NotFound(upload_id.into()))?;
        chunks.insert(index, data);
        Ok(())
    }

    async fn copy_chunk(&self, upload_id: &str, index: u64, source: &str) -> Result<u64> {
        self.check_writable()?;
        self.copies.fetch_add(1, Ordering::Relaxed);
        let start = index * MOCK_UPLOAD_CHUNK;
        let data = {
            let blobs = self.blobs.lock().expect("lock");
            let blob = blobs
                .get(source)
                .ok_or_else(|| FsError::NotFound(format!("blob {source}")))?;
            if start >= blob.len() as u64 {
                return Err(FsError::Invalid(format!(
                    "chunk {index} is past the end of {source}"
                )));
            }
            blob.slice(start as usize..(start + MOCK_UPLOAD_CHUNK).min(blob.len() as u64) as usize)
        };
        let len = data.len() as u64;
        let mut uploads = self.uploads.lock().expect("lock");
        uploads
            .get_mut(upload_id)
            .ok_or_else(|| FsError::NotFound(upload_id.into()))?
            .insert(index, data);
        Ok(len)
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
                || (position + 1 < chunks.len() && chunk.len() as u64 != MOCK_UPLOAD_CHUNK)
            {
                return Err(FsError::Remote(format!("bad chunk layout at {index}")));
            }
            data.extend_from_slice(chunk);
        }
        let hash = blob_id(&data);
        let info = BlobInfo {
            hash: hash.clone(),
            size: data.len() as u64,
            md5: md5_hex(&data),
        };
        self.blobs
            .lock()
            .expect("lock")
            .insert(hash, Bytes::from(data));
        Ok(info)
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<()> {
        self.uploads.lock().expect("lock").remove(upload_id);
        Ok(())
    }

    async fn commit(&self, changes: Vec<Change>, _message: String) -> Result<CommitCreated> {
        self.check_writable()?;
        let blobs = self.blobs.lock().expect("lock");
        let mut files = self.files.lock().expect("lock");
        let mut next = files.clone();
        for change in changes {
            match change {
                Change::Put {
                    path, hash, expect, ..
                } => {
                    if let Some(expected) = expect {
                        if next.get(&path).map(|d| blob_id(d)) != expected {
                            return Err(FsError::Conflict(path));
                        }
                    }
                    let data = blobs
                        .get(&hash)
                        .ok_or_else(|| FsError::Remote(format!("unknown blob {hash}")))?;
                    next.insert(path, data.clone());
                }
                Change::Delete { path, expect } => {
                    if let Some(expected) = expect {
                        if next.get(&path).map(|d| blob_id(d)) != expected {
                            return Err(FsError::Conflict(path));
                        }
                    }
                    let prefix = format!("{path}/");
                    let before = next.len();
                    next.retain(|p, _| p != &path && !p.starts_with(&prefix));
                    if next.len() == before {
                        return Err(FsError::NotFound(path));
                    }
                }
                Change::Move { from, to } => {
                    let prefix = format!("{from}/");
                    let moved: Vec<(String, Bytes)> = next
                        .iter()
                        .filter(|(p, _)| **p == from || p.starts_with(&prefix))
                        .map(|(p, d)| (p.clone(), d.clone()))
                        .collect();
                    if moved.is_empty() {
                        return Err(FsError::NotFound(from));
                    }
                    for (p, d) in moved {
                        next.remove(&p);
                        next.insert(format!("{to}{}", &p[from.len()..]), d);
                    }
                }
                // The mock has no empty directories: a directory exists while it holds files.
                Change::Mkdir { .. } => {}
            }
        }
        *files = next;
        Ok(CommitCreated {
            commit: "c".repeat(64),
            branch: "main".into(),
        })
    }
}
