//! Names and attributes: `lookup`, `getattr` and `readdir`, served from the inode table while
//! it is fresh and refreshed by whole-directory listings.

use std::sync::Arc;

use super::Fs;
use crate::api::EntryType;
use crate::base::paths::parent_and_name;
use crate::fs::error::{FsError, Result};
use crate::fs::inodes::{Attr, Cached, InodeTable, ROOT_INO};
use crate::fs::remote::Remote;
use crate::fs::write::WriteHandle;

impl<R: Remote> Fs<R> {
    /// Lists directory `ino` from the server and records the result.
    async fn refresh_dir(&self, ino: u64) -> Result<Vec<(String, Attr)>> {
        let path = self.dir_path(ino)?;
        let listing = self.remote.list_dir(&path).await?;
        let pending: Vec<Arc<WriteHandle>> = self
            .pending
            .lock()
            .expect("pending lock")
            .values()
            .cloned()
            .collect();
        let mut inodes = self.inodes.lock().expect("inodes lock");
        let mut children = inodes.apply_listing(ino, &listing);
        add_pending_children(&mut inodes, ino, &path, &pending, &mut children);
        Ok(children)
    }

    /// Finds `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        let cached = self
            .inodes
            .lock()
            .expect("inodes lock")
            .cached_child(parent, name);
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

    /// The attributes of a file this mount is writing: its size is the writer's.
    fn pending_attr(&self, ino: u64) -> Option<Attr> {
        let handle = self.pending_writer(ino)?;
        let (mut attr, _) = self.inodes.lock().expect("inodes lock").attr(ino)?;
        attr.size = handle.size();
        Some(attr)
    }

    /// Attributes of `ino`, refreshed through its parent's listing when older than the TTL.
    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        if let Some(attr) = self.pending_attr(ino) {
            return Ok(attr);
        }
        let (attr, fresh, parent) = {
            let inodes = self.inodes.lock().expect("inodes lock");
            let (attr, fresh) = inodes
                .attr(ino)
                .ok_or(FsError::NotFound(format!("inode {ino}")))?;
            (attr, fresh, inodes.parent_path(ino))
        };
        if fresh {
            return Ok(attr);
        }
        let Some(parent_path) = parent else {
            return Ok(attr);
        };
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

    /// The path of a directory inode, or an error.
    pub(in crate::fs) fn dir_path(&self, ino: u64) -> Result<String> {
        let inodes = self.inodes.lock().expect("inodes lock");
        match inodes.attr(ino) {
            Some((attr, _)) if attr.kind == EntryType::Directory => {
                Ok(inodes.path(ino).unwrap_or_default().to_string())
            }
            Some(_) => Err(FsError::NotDir),
            None => Err(FsError::NotFound(format!("inode {ino}"))),
        }
    }
}

/// Files this mount is writing stay visible in directory `ino` until the server has them.
fn add_pending_children(
    inodes: &mut InodeTable,
    ino: u64,
    path: &str,
    pending: &[Arc<WriteHandle>],
    children: &mut Vec<(String, Attr)>,
) {
    for handle in pending {
        let hpath = handle.path();
        let (parent, name) = parent_and_name(&hpath);
        if parent == path && !children.iter().any(|(n, _)| n == name) {
            if let Some(mut attr) = inodes.reattach(ino, name, handle.ino) {
                attr.size = handle.size();
                children.push((name.to_string(), attr));
            }
        }
    }
}
