//! Open directories: the listing snapshotted at `opendir`, so a long `readdir` is one
//! listing, and the replies that page through it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::reply::Replies;
use crate::api::EntryType;
use crate::fs::inodes::Attr;

/// The entries of one directory, as the core listed them.
pub(super) type Listing = Arc<Vec<(String, Attr)>>;

/// Listings of open directories by directory handle.
#[derive(Default)]
pub(super) struct DirSnapshots {
    open: Mutex<HashMap<u64, Listing>>,
    next: AtomicU64,
}

impl DirSnapshots {
    /// A new directory handle number.
    pub fn next_handle(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Keeps `children` as what handle `dh` lists.
    pub fn insert(&self, dh: u64, children: Vec<(String, Attr)>) {
        self.open
            .lock()
            .expect("dirs lock")
            .insert(dh, Arc::new(children));
    }

    /// The listing of handle `dh`.
    pub fn get(&self, dh: u64) -> Option<Listing> {
        self.open.lock().expect("dirs lock").get(&dh).cloned()
    }

    /// Forgets handle `dh` (`releasedir`).
    pub fn remove(&self, dh: u64) {
        self.open.lock().expect("dirs lock").remove(&dh);
    }
}

/// Fills a `readdir` reply from entry `offset` on: `.` and `..` first, then the listing.
/// The next offset of entry `i` is `i + 1`; `add` says when the buffer is full.
pub(super) fn fill_readdir(
    reply: &mut ReplyDirectory,
    ino: u64,
    children: &Listing,
    offset: u64,
    replies: Replies,
) {
    let dots = [(".", ino), ("..", ino)]
        .into_iter()
        .map(|(n, i)| (n.to_string(), i, FileType::Directory));
    let entries = dots.chain(
        children
            .iter()
            .map(|(name, attr)| (name.clone(), attr.ino, replies.file_attr(attr).kind)),
    );
    for (i, (name, child, kind)) in entries.enumerate().skip(offset as usize) {
        if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
            break;
        }
    }
}

/// Fills a `readdirplus` reply from entry `offset` on, with each entry's attributes.
pub(super) fn fill_readdirplus(
    reply: &mut ReplyDirectoryPlus,
    ino: u64,
    children: &Listing,
    offset: u64,
    replies: Replies,
) {
    let dir_attr = Attr {
        ino,
        kind: EntryType::Directory,
        size: 0,
        mode: 0o040755,
        mtime: 0,
        hash: String::new(),
    };
    let dots = [
        (".".to_string(), dir_attr.clone()),
        ("..".to_string(), dir_attr),
    ];
    for (i, (name, attr)) in dots
        .iter()
        .chain(children.iter())
        .enumerate()
        .skip(offset as usize)
    {
        let next = (i + 1) as u64;
        let kernel_attr = replies.file_attr(attr);
        if reply.add(
            INodeNo(attr.ino),
            next,
            name,
            &replies.ttl,
            &kernel_attr,
            Generation(0),
        ) {
            break;
        }
    }
}
