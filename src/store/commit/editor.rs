//! The tree editor of a commit: a working set of the directories on changed paths, edited
//! in memory and written bottom-up, so a commit costs O(depth × changes). A large
//! directory is a view of its trie ([`DirView`]): only the nodes on the way to the entries
//! read or changed are loaded and rewritten.

use std::collections::{BTreeSet, HashMap};

use crate::api::{Change, EntryType};
use crate::base::modes::{normalize_file_mode, MODE_DIR};
use crate::base::paths::{join, normalize_path, parent_and_name, split_path};
use crate::store::hamt::DirView;
use crate::store::objects::TreeEntry;
use crate::store::{Result, Store, StoreError};

/// A change's `expect`: `None` checks nothing, `Some(None)` means "must not exist".
type Expect = Option<Option<String>>;

/// Edits a snapshot of the tree in memory; [`TreeEditor::write`] stores the dirty directories
/// bottom-up and returns the new root id.
pub(super) struct TreeEditor<'a> {
    store: &'a Store,
    repo: &'a str,
    now: i64,
    /// Loaded directories by path ("" is the root).
    dirs: HashMap<String, DirView>,
    dirty: BTreeSet<String>,
    root: String,
}

impl<'a> TreeEditor<'a> {
    pub(super) fn new(store: &'a Store, repo: &'a str, root: String, now: i64) -> Self {
        TreeEditor {
            store,
            repo,
            now,
            dirs: HashMap::new(),
            dirty: BTreeSet::new(),
            root,
        }
    }

    /// Loads the directory at `path`. With `create`, missing directories are made on the way;
    /// otherwise a missing one is `None`. A file in the way is a conflict.
    async fn dir(&mut self, path: &str, create: bool) -> Result<Option<&mut DirView>> {
        let (store, repo) = (self.store, self.repo);
        let segments = split_path(path)?;
        if !self.dirs.contains_key("") {
            let root = DirView::load(store, repo, &self.root).await?;
            self.dirs.insert(String::new(), root);
        }
        let mut current = String::new();
        for segment in segments {
            let child = join(&current, segment);
            if !self.dirs.contains_key(&child) {
                let parent = self.dirs.get_mut(&current).expect("parent loaded");
                let mut created = false;
                let view = match parent.get(store, repo, segment).await? {
                    Some(e) if e.kind == EntryType::Directory => {
                        DirView::load(store, repo, &e.hash).await?
                    }
                    Some(_) => {
                        return Err(StoreError::Conflict {
                            path: child,
                            reason: "not a directory".into(),
                        })
                    }
                    None if create => {
                        self.insert_entry(&current, segment, dir_entry(self.now))
                            .await?;
                        created = true;
                        DirView::new()
                    }
                    None => return Ok(None),
                };
                self.dirs.insert(child.clone(), view);
                if created {
                    self.mark_dirty(&child);
                }
            }
            current = child;
        }
        Ok(self.dirs.get_mut(&current))
    }

    async fn insert_entry(&mut self, dir: &str, name: &str, entry: TreeEntry) -> Result<()> {
        let (store, repo) = (self.store, self.repo);
        self.dirs
            .get_mut(dir)
            .expect("loaded")
            .insert(store, repo, name, entry)
            .await?;
        self.mark_dirty(dir);
        Ok(())
    }

    fn mark_dirty(&mut self, dir: &str) {
        let mut d = dir.to_string();
        loop {
            self.dirty.insert(d.clone());
            if d.is_empty() {
                break;
            }
            d = parent_and_name(&d).0.to_string();
        }
    }

    async fn current(&mut self, path: &str) -> Result<Option<TreeEntry>> {
        let (store, repo) = (self.store, self.repo);
        let (dir, name) = parent_and_name(path);
        match self.dir(dir, false).await? {
            Some(view) => view.get(store, repo, name).await,
            None => Ok(None),
        }
    }

    /// Checks a change's `expect`: the id now at `path` (`Some(None)`: nothing there).
    async fn check_expect(&mut self, path: &str, expect: &Expect) -> Result<()> {
        if let Some(expected) = expect {
            let current = self.current(path).await?.map(|e| e.hash);
            if current.as_ref() != expected.as_ref() {
                return Err(StoreError::Conflict {
                    path: path.to_string(),
                    reason: match current {
                        Some(h) => format!("it is now {h}"),
                        None => "it does not exist".into(),
                    },
                });
            }
        }
        Ok(())
    }

    /// Applies one change to the working set (its `expect` checked against it).
    pub(super) async fn apply(
        &mut self,
        change: &Change,
        sizes: &HashMap<String, u64>,
    ) -> Result<()> {
        match change {
            Change::Put {
                path,
                hash,
                mode,
                mtime,
                expect,
            } => {
                let entry = TreeEntry {
                    kind: EntryType::of_git_mode(normalize_file_mode(*mode)),
                    mode: normalize_file_mode(*mode),
                    size: sizes[hash],
                    mtime: mtime.unwrap_or(self.now),
                    hash: hash.clone(),
                };
                self.put(&normalize_path(path)?, entry, expect).await
            }
            Change::Delete { path, expect } => self.delete(&normalize_path(path)?, expect).await,
            Change::Move { from, to } => {
                self.move_entry(&normalize_path(from)?, &normalize_path(to)?)
                    .await
            }
            Change::Mkdir { path } => self.mkdir(&normalize_path(path)?).await,
        }
    }

    /// Puts a file (or symlink) entry at `path`, making its directories on the way.
    async fn put(&mut self, path: &str, entry: TreeEntry, expect: &Expect) -> Result<()> {
        self.check_expect(path, expect).await?;
        if let Some(existing) = self.current(path).await? {
            if existing.kind == EntryType::Directory {
                return Err(StoreError::Conflict {
                    path: path.to_string(),
                    reason: "is a directory".into(),
                });
            }
        }
        let (dir, name) = parent_and_name(path);
        self.dir(dir, true).await?;
        self.insert_entry(dir, name, entry).await
    }

    /// Removes the entry at `path` (a directory with all it holds).
    async fn delete(&mut self, path: &str, expect: &Expect) -> Result<()> {
        self.check_expect(path, expect).await?;
        let (store, repo) = (self.store, self.repo);
        let (dir, name) = parent_and_name(path);
        let removed = match self.dir(dir, false).await? {
            Some(view) => view.remove(store, repo, name).await?,
            None => None,
        };
        if removed.is_none() {
            return Err(StoreError::NotFound(format!("path {path:?}")));
        }
        self.forget_subtree(path);
        self.mark_dirty(dir);
        Ok(())
    }

    /// Moves the entry at `from` to `to`, which may replace a file, or an empty directory
    /// with a directory.
    async fn move_entry(&mut self, from: &str, to: &str) -> Result<()> {
        if to == from {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(StoreError::InvalidInput(format!(
                "cannot move {from:?} into itself"
            )));
        }
        let (store, repo) = (self.store, self.repo);
        let (from_dir, from_name) = parent_and_name(from);
        let entry = match self.dir(from_dir, false).await? {
            Some(view) => view.remove(store, repo, from_name).await?,
            None => None,
        }
        .ok_or_else(|| StoreError::NotFound(format!("path {from:?}")))?;
        self.mark_dirty(from_dir);
        self.check_move_target(to, &entry).await?;
        // A moved directory may have been edited in this commit: write it first.
        let entry = if entry.kind == EntryType::Directory {
            let hash = self
                .flush_subtree(from)
                .await?
                .unwrap_or_else(|| entry.hash.clone());
            TreeEntry { hash, ..entry }
        } else {
            entry
        };
        let (to_dir, to_name) = parent_and_name(to);
        self.dir(to_dir, true).await?;
        self.insert_entry(to_dir, to_name, entry).await
    }

    /// Whether `entry` may land on `to`: nothing there, a file over a file, or a directory
    /// over an empty directory.
    async fn check_move_target(&mut self, to: &str, entry: &TreeEntry) -> Result<()> {
        let Some(target) = self.current(to).await? else {
            return Ok(());
        };
        let replaceable = match (target.kind, entry.kind) {
            (EntryType::Directory, EntryType::Directory) => {
                self.store.dir_len(self.repo, &target.hash).await? == 0
            }
            (EntryType::Directory, _) | (_, EntryType::Directory) => false,
            _ => true,
        };
        if !replaceable {
            return Err(StoreError::Conflict {
                path: to.to_string(),
                reason: "the target exists".into(),
            });
        }
        Ok(())
    }

    /// Makes the directory `path` and its parents; an existing directory is fine.
    async fn mkdir(&mut self, path: &str) -> Result<()> {
        match self.current(path).await? {
            Some(e) if e.kind == EntryType::Directory => {}
            Some(_) => {
                return Err(StoreError::Conflict {
                    path: path.to_string(),
                    reason: "a file exists there".into(),
                })
            }
            None => {
                self.dir(path, true).await?;
            }
        }
        Ok(())
    }

    /// Drops the loaded directories at and under `prefix` from the working set.
    fn forget_subtree(&mut self, prefix: &str) {
        let inside = |d: &String| d == prefix || d.starts_with(&format!("{prefix}/"));
        self.dirs.retain(|d, _| !inside(d));
        self.dirty.retain(|d| !inside(d));
    }

    /// Writes the loaded directories at and under `prefix` (deepest first), drops them from
    /// the working set, and returns the id of `prefix`'s own tree if it was loaded.
    async fn flush_subtree(&mut self, prefix: &str) -> Result<Option<String>> {
        let inside = |d: &String| d == prefix || d.starts_with(&format!("{prefix}/"));
        let mut pending: Vec<String> = self.dirs.keys().filter(|d| inside(d)).cloned().collect();
        pending.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        let mut own = None;
        let mut objects = Vec::new();
        for d in pending {
            let mut view = self.dirs.remove(&d).expect("present");
            let id = view.write(&mut objects);
            self.dirty.remove(&d);
            if d == prefix {
                own = Some(id);
            } else {
                let (parent, name) = parent_and_name(&d);
                if let Some(p) = self.dirs.get_mut(parent) {
                    p.update_loaded(name, |e| e.hash = id);
                }
            }
        }
        self.store.write_objects(self.repo, objects).await?;
        Ok(own)
    }

    /// Encodes every dirty directory, deepest first (a parent names its children's ids), and
    /// returns the new root tree id with the tree objects to store; the caller stores them
    /// together, so their fsyncs overlap.
    pub(super) fn write(mut self) -> (String, Vec<(String, Vec<u8>)>) {
        let mut objects = Vec::new();
        if self.dirty.is_empty() {
            return (self.root.clone(), objects);
        }
        let mut order: Vec<String> = self.dirty.iter().cloned().collect();
        order.sort_by_key(|d| {
            std::cmp::Reverse(if d.is_empty() {
                0
            } else {
                d.matches('/').count() + 1
            })
        });
        let mut root = None;
        for d in order {
            let Some(view) = self.dirs.get_mut(&d) else {
                continue;
            };
            let id = view.write(&mut objects);
            if d.is_empty() {
                root = Some(id);
            } else {
                let (parent, name) = parent_and_name(&d);
                let now = self.now;
                if let Some(p) = self.dirs.get_mut(parent) {
                    p.update_loaded(name, |e| {
                        e.hash = id;
                        e.mtime = now;
                    });
                }
            }
        }
        let root = root.expect("the root is always dirty when anything is");
        (root, objects)
    }
}

fn dir_entry(now: i64) -> TreeEntry {
    TreeEntry {
        kind: EntryType::Directory,
        mode: MODE_DIR,
        size: 0,
        mtime: now,
        hash: String::new(),
    }
}
