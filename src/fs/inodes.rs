//! The inode table: inode numbers for repository paths, their attributes, and each
//! directory's last listing. Filled only by whole-directory listings (one request per
//! directory, never one per file) and trusted for the attribute TTL.
//!
//! Inode numbers are never reused, so the generation of every inode can stay constant; an
//! entry whose kind changes gets a new inode.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::{Entry, EntryType, TreeListing};
use crate::base::paths::{join, parent_and_name};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;

/// Attributes of one inode.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryType,
    pub size: u64,
    /// Git mode (0o100644, 0o100755, 0o040000, 0o120000).
    pub mode: u32,
    pub mtime: i64,
    /// Blob id (files, symlinks) or tree id (directories).
    pub hash: String,
}

/// One inode.
#[derive(Debug)]
struct Node {
    path: String,
    attr: Attr,
    /// When a listing last confirmed these attributes.
    confirmed: Instant,
    /// Names of the children at the last listing (directories only).
    listing: Option<(Vec<String>, Instant)>,
    /// Blob id seen by the last `open`, to keep the kernel's page cache only while it is current.
    last_opened: Option<String>,
}

/// An entry this mount created or changed, recorded ahead of the next listing.
#[derive(Debug, Clone, Copy)]
pub struct LocalEntry<'a> {
    pub kind: EntryType,
    pub size: u64,
    /// Git mode.
    pub mode: u32,
    pub mtime: i64,
    /// Blob or tree id; empty for a file not committed yet.
    pub hash: &'a str,
}

/// What a lookup in the cached listing found.
#[derive(Debug, PartialEq)]
pub enum Cached {
    /// The name exists.
    Found(Attr),
    /// The fresh listing does not have it (negative cache).
    Absent,
    /// The listing is missing or too old: list the directory again.
    Stale,
}

/// The inode table.
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next_ino: u64,
    ttl: Duration,
}

impl InodeTable {
    /// A table holding only the root, trusting listings for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let mut table = InodeTable {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next_ino: ROOT_INO + 1,
            ttl,
        };
        let root = Attr {
            ino: ROOT_INO,
            kind: EntryType::Directory,
            size: 0,
            mode: 0o040755,
            mtime: 0,
            hash: String::new(),
        };
        table.nodes.insert(
            ROOT_INO,
            Node {
                path: String::new(),
                attr: root,
                confirmed: Instant::now(),
                listing: None,
                last_opened: None,
            },
        );
        table.by_path.insert(String::new(), ROOT_INO);
        table
    }

    /// The repository path of an inode.
    pub fn path(&self, ino: u64) -> Option<&str> {
        self.nodes.get(&ino).map(|n| n.path.as_str())
    }

    /// The attributes of an inode, and whether they are within the TTL.
    pub fn attr(&self, ino: u64) -> Option<(Attr, bool)> {
        let node = self.nodes.get(&ino)?;
        Some((
            node.attr.clone(),
            ino == ROOT_INO || node.confirmed.elapsed() < self.ttl,
        ))
    }

    /// Whether the inode's path still names it (it was not removed or replaced).
    pub fn is_current(&self, ino: u64) -> bool {
        self.nodes
            .get(&ino)
            .is_some_and(|n| self.by_path.get(&n.path) == Some(&ino))
    }

    /// The parent directory's path of an inode.
    pub fn parent_path(&self, ino: u64) -> Option<String> {
        let path = self.path(ino)?;
        Some(
            path.rfind('/')
                .map_or(String::new(), |i| path[..i].to_string()),
        )
    }

    /// Looks `name` up in the cached listing of directory `dir`.
    pub fn cached_child(&self, dir: u64, name: &str) -> Cached {
        let Some(node) = self.nodes.get(&dir) else {
            return Cached::Stale;
        };
        match &node.listing {
            Some((_, at)) if at.elapsed() < self.ttl => {
                match self
                    .by_path
                    .get(&join(&node.path, name))
                    .and_then(|ino| self.nodes.get(ino))
                {
                    Some(child) if child.confirmed >= *at => Cached::Found(child.attr.clone()),
                    _ => Cached::Absent,
                }
            }
            _ => Cached::Stale,
        }
    }

    /// The children of a directory from its cached listing, if that is fresh.
    pub fn cached_listing(&self, dir: u64) -> Option<Vec<(String, Attr)>> {
        let node = self.nodes.get(&dir)?;
        let (names, at) = node.listing.as_ref()?;
        if at.elapsed() >= self.ttl {
            return None;
        }
        Some(self.children_of(&node.path, names))
    }

    fn children_of(&self, dir_path: &str, names: &[String]) -> Vec<(String, Attr)> {
        names
            .iter()
            .filter_map(|name| {
                let ino = self.by_path.get(&join(dir_path, name))?;
                Some((name.clone(), self.nodes.get(ino)?.attr.clone()))
            })
            .collect()
    }

    /// Records a fresh listing of directory `dir` and returns its children.
    pub fn apply_listing(&mut self, dir: u64, listing: &TreeListing) -> Vec<(String, Attr)> {
        let now = Instant::now();
        let Some(dir_path) = self.path(dir).map(str::to_string) else {
            return Vec::new();
        };
        let mut names = Vec::with_capacity(listing.entries.len());
        let present: std::collections::HashSet<&str> =
            listing.entries.iter().map(|e| e.name.as_str()).collect();
        // Names that disappeared no longer resolve (open handles keep their pinned blob).
        if let Some((old, _)) = self.nodes.get(&dir).and_then(|n| n.listing.clone()) {
            for name in old.iter().filter(|n| !present.contains(n.as_str())) {
                self.by_path.remove(&join(&dir_path, name));
            }
        }
        for entry in &listing.entries {
            names.push(entry.name.clone());
            self.upsert(&join(&dir_path, &entry.name), entry, now);
        }
        if let Some(node) = self.nodes.get_mut(&dir) {
            node.listing = Some((names.clone(), now));
            node.confirmed = now;
        }
        self.children_of(&dir_path, &names)
    }

    fn upsert(&mut self, path: &str, entry: &Entry, now: Instant) {
        let existing = self.by_path.get(path).copied().filter(|ino| {
            self.nodes
                .get(ino)
                .is_some_and(|n| n.attr.kind == entry.kind)
        });
        let ino = existing.unwrap_or_else(|| {
            let ino = self.next_ino;
            self.next_ino += 1;
            ino
        });
        let attr = Attr {
            ino,
            kind: entry.kind,
            size: entry.size,
            mode: entry.mode,
            mtime: entry.mtime,
            hash: entry.hash.clone(),
        };
        match self.nodes.get_mut(&ino) {
            Some(node) => {
                if node.attr.hash != attr.hash && entry.kind == EntryType::Directory {
                    node.listing = None; // the directory changed: list it again
                }
                node.attr = attr;
                node.confirmed = now;
            }
            None => {
                self.nodes.insert(
                    ino,
                    Node {
                        path: path.to_string(),
                        attr,
                        confirmed: now,
                        listing: None,
                        last_opened: None,
                    },
                );
            }
        }
        self.by_path.insert(path.to_string(), ino);
    }

    /// Records an entry this mount created or changed, ahead of the next listing, and returns
    /// its attributes. The directory's cached listing gains the name.
    pub fn record_local(&mut self, dir: u64, name: &str, local: &LocalEntry) -> Option<Attr> {
        let dir_path = self.path(dir)?.to_string();
        let path = join(&dir_path, name);
        let entry = Entry {
            name: name.to_string(),
            path: path.clone(),
            kind: local.kind,
            size: local.size,
            mode: local.mode,
            mtime: local.mtime,
            hash: local.hash.to_string(),
        };
        self.upsert(&path, &entry, Instant::now());
        if let Some((names, _)) = self.nodes.get_mut(&dir).and_then(|n| n.listing.as_mut()) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        let ino = *self.by_path.get(&path)?;
        Some(self.nodes.get(&ino)?.attr.clone())
    }

    /// Names `name` in directory `dir` by the existing inode `ino` again (a file this mount is
    /// writing, which a listing from the server does not have yet), keeping its number.
    pub fn reattach(&mut self, dir: u64, name: &str, ino: u64) -> Option<Attr> {
        let dir_path = self.path(dir)?.to_string();
        let path = join(&dir_path, name);
        let node = self.nodes.get_mut(&ino)?;
        node.path = path.clone();
        node.confirmed = Instant::now();
        let attr = node.attr.clone();
        self.by_path.insert(path, ino);
        if let Some((names, _)) = self.nodes.get_mut(&dir).and_then(|n| n.listing.as_mut()) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        Some(attr)
    }

    /// Forgets a name this mount removed, ahead of the next listing.
    pub fn remove_local(&mut self, dir: u64, name: &str) {
        let Some(dir_path) = self.path(dir).map(str::to_string) else {
            return;
        };
        self.by_path.remove(&join(&dir_path, name));
        if let Some((names, _)) = self.nodes.get_mut(&dir).and_then(|n| n.listing.as_mut()) {
            names.retain(|n| n != name);
        }
    }

    /// Moves `from` (and everything below it) to `to`, keeping inode numbers: after a rename
    /// the kernel goes on using the inodes it has. Whatever `to` named before is forgotten.
    pub fn rename(&mut self, from: &str, to: &str) {
        let below = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&below))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        let target_below = format!("{to}/");
        self.by_path
            .retain(|p, _| p != to && !p.starts_with(&target_below));
        let now = Instant::now();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(node) = self.nodes.get_mut(&ino) {
                // The moved entry is as fresh as the target directory's listing it joins:
                // without this a lookup there finds it older than the listing, so absent.
                if old == from {
                    node.confirmed = now;
                }
                node.path = new.clone();
            }
            self.by_path.insert(new, ino);
        }
        for (path, name_from) in [(from, true), (to, false)] {
            let (parent, name) = parent_and_name(path);
            if let Some((names, _)) = self
                .by_path
                .get(parent)
                .copied()
                .and_then(|i| self.nodes.get_mut(&i))
                .and_then(|n| n.listing.as_mut())
            {
                names.retain(|n| n != name);
                if !name_from {
                    names.push(name.to_string());
                }
            }
        }
    }

    /// Drops a directory's cached listing (and the listings below it), so it is listed again.
    pub fn expire_dir(&mut self, dir: u64) {
        let Some(prefix) = self.path(dir).map(str::to_string) else {
            return;
        };
        for node in self.nodes.values_mut() {
            if node.path == prefix
                || prefix.is_empty()
                || node.path.starts_with(&format!("{prefix}/"))
            {
                node.listing = None;
            }
        }
    }

    /// The inode of a path, if known.
    pub fn ino_of(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Records an `open` of blob `hash` on `ino`; returns whether the kernel may keep the
    /// pages it cached (true only if the previous open saw the same blob).
    pub fn note_open(&mut self, ino: u64, hash: &str) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        let keep = node.last_opened.as_deref() == Some(hash);
        node.last_opened = Some(hash.to_string());
        keep
    }

    /// Marks every listing and attribute as stale (after a change event).
    pub fn expire_all(&mut self) {
        let long_ago = Instant::now()
            .checked_sub(self.ttl + Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        for node in self.nodes.values_mut() {
            node.confirmed = long_ago;
            if let Some((_, at)) = node.listing.as_mut() {
                *at = long_ago;
            }
        }
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: EntryType, hash: &str, size: u64) -> Entry {
        Entry {
            name: name.into(),
            path: name.into(),
            kind,
            size,
            mode: 0o100644,
            mtime: 0,
            hash: hash.into(),
        }
    }

    fn listing(entries: Vec<Entry>) -> TreeListing {
        TreeListing {
            path: String::new(),
            commit: String::new(),
            entries,
        }
    }

    #[test]
    fn listing_fills_lookups_and_negative_cache() {
        let mut t = InodeTable::new(Duration::from_secs(60));
        assert_eq!(t.cached_child(ROOT_INO, "a"), Cached::Stale);
        t.apply_listing(
            ROOT_INO,
            &listing(vec![entry("a", EntryType::File, "h1", 3)]),
        );
        let Cached::Found(a) = t.cached_child(ROOT_INO, "a") else {
            panic!()
        };
        assert_eq!(a.size, 3);
        assert_eq!(t.cached_child(ROOT_INO, "b"), Cached::Absent);
        // same path, new content: same inode, new attributes
        t.apply_listing(
            ROOT_INO,
            &listing(vec![entry("a", EntryType::File, "h2", 5)]),
        );
        let Cached::Found(a2) = t.cached_child(ROOT_INO, "a") else {
            panic!()
        };
        assert_eq!((a2.ino, a2.size), (a.ino, 5));
        // a file replaced by a directory gets a new inode
        t.apply_listing(
            ROOT_INO,
            &listing(vec![entry("a", EntryType::Directory, "t", 0)]),
        );
        let Cached::Found(a3) = t.cached_child(ROOT_INO, "a") else {
            panic!()
        };
        assert_ne!(a3.ino, a.ino);
        // removed names vanish
        t.apply_listing(ROOT_INO, &listing(vec![]));
        assert_eq!(t.cached_child(ROOT_INO, "a"), Cached::Absent);
    }

    #[test]
    fn ttl_expiry_makes_listings_stale() {
        let mut t = InodeTable::new(Duration::from_secs(60));
        t.apply_listing(
            ROOT_INO,
            &listing(vec![entry("a", EntryType::File, "h1", 3)]),
        );
        t.expire_all();
        assert_eq!(t.cached_child(ROOT_INO, "a"), Cached::Stale);
        assert!(t.cached_listing(ROOT_INO).is_none());
    }

    #[test]
    fn keep_cache_only_for_the_same_blob() {
        let mut t = InodeTable::new(Duration::from_secs(60));
        t.apply_listing(
            ROOT_INO,
            &listing(vec![entry("a", EntryType::File, "h1", 3)]),
        );
        let Cached::Found(a) = t.cached_child(ROOT_INO, "a") else {
            panic!()
        };
        assert!(!t.note_open(a.ino, "h1"));
        assert!(t.note_open(a.ino, "h1"));
        assert!(!t.note_open(a.ino, "h2"));
    }
}

#[cfg(test)]
mod rename_tests {
    use super::*;

    #[test]
    fn rename_keeps_inodes_and_moves_children() {
        let mut t = InodeTable::new(Duration::from_secs(60));
        let dir = t
            .record_local(
                ROOT_INO,
                "x",
                &LocalEntry {
                    kind: EntryType::Directory,
                    size: 0,
                    mode: 0o40000,
                    mtime: 0,
                    hash: "t",
                },
            )
            .unwrap();
        let file = t
            .record_local(
                dir.ino,
                "f",
                &LocalEntry {
                    kind: EntryType::File,
                    size: 1,
                    mode: 0o100644,
                    mtime: 0,
                    hash: "h",
                },
            )
            .unwrap();
        t.rename("x", "z");
        assert_eq!(t.path(dir.ino), Some("z"));
        assert_eq!(t.path(file.ino), Some("z/f"));
        assert_eq!(t.ino_of("z/f"), Some(file.ino));
        assert_eq!(t.ino_of("x"), None);
    }
}
