//! An in-memory [`Remote`] for tests of the filesystem core without a server or a kernel.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use super::error::{FsError, Result};
use super::remote::Remote;
use crate::api::{Entry, EntryType, TreeListing};
use crate::store::objects::{blob_id, MODE_DIR, MODE_FILE};

/// Files by path, every blob ever put (old versions stay readable, as on the server), and
/// counters of the requests made.
#[derive(Default)]
pub struct MemRemote {
    files: Mutex<BTreeMap<String, Bytes>>,
    blobs: Mutex<std::collections::HashMap<String, Bytes>>,
    /// `list_dir` calls so far.
    pub listings: AtomicU64,
    /// `read_range` calls so far.
    pub range_reads: AtomicU64,
    /// Bytes returned by `read_range` so far.
    pub bytes_read: AtomicU64,
}

impl MemRemote {
    /// Adds or replaces a file (parents are implied).
    pub fn put(&self, path: &str, data: impl Into<Bytes>) {
        let data = data.into();
        self.blobs.lock().expect("lock").insert(blob_id(&data), data.clone());
        self.files.lock().expect("lock").insert(path.to_string(), data);
    }

    /// Removes a file.
    pub fn remove(&self, path: &str) {
        self.files.lock().expect("lock").remove(path);
    }
}

impl Remote for MemRemote {
    async fn list_dir(&self, path: &str) -> Result<TreeListing> {
        self.listings.fetch_add(1, Ordering::Relaxed);
        let files = self.files.lock().expect("lock");
        let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for (p, data) in files.iter() {
            let Some(rest) = p.strip_prefix(&prefix) else { continue };
            let (name, is_dir) = match rest.split_once('/') {
                Some((dir, _)) => (dir, true),
                None => (rest, false),
            };
            let child = format!("{prefix}{name}");
            let entry = if is_dir {
                Entry { name: name.into(), path: child, kind: EntryType::Directory, size: 0, mode: MODE_DIR, mtime: 0, hash: "d".repeat(64) }
            } else {
                Entry { name: name.into(), path: child, kind: EntryType::File, size: data.len() as u64, mode: MODE_FILE, mtime: 0, hash: blob_id(data) }
            };
            entries.insert(name.to_string(), entry);
        }
        if entries.is_empty() && !path.is_empty() {
            return Err(FsError::NotFound(path.to_string()));
        }
        Ok(TreeListing { path: path.to_string(), commit: "c".repeat(64), entries: entries.into_values().collect() })
    }

    async fn read_range(&self, hash: &str, range: Range<u64>) -> Result<Bytes> {
        self.range_reads.fetch_add(1, Ordering::Relaxed);
        let blobs = self.blobs.lock().expect("lock");
        let data = blobs.get(hash).ok_or_else(|| FsError::NotFound(format!("blob {hash}")))?;
        let end = (range.end as usize).min(data.len());
        let start = (range.start as usize).min(end);
        self.bytes_read.fetch_add((end - start) as u64, Ordering::Relaxed);
        Ok(data.slice(start..end))
    }
}
