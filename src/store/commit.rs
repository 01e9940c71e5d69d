//! Atomic commits: a set of changes applied to the branch head as one new commit.
//!
//! Only the directories on changed paths are rewritten, so a commit costs O(depth × changes),
//! not O(repository). The ref moves by compare-and-swap; when another commit landed first,
//! the changes are re-applied to the new head (their `expect` checks run again), so
//! concurrent writers to different paths both succeed and a real conflict is a 409.

use std::collections::{BTreeSet, HashMap};

use super::objects::{Commit, Tree, TreeEntry};
use super::repo::ref_path;
use super::{RefUpdate, Result, Store, StoreError};
use crate::api::{Change, CommitCreated, CommitRequest, EntryType, DEFAULT_BRANCH};
use crate::base::modes::{normalize_file_mode, MODE_DIR};
use crate::base::paths::join;
use crate::base::paths::{normalize_path, split_path, validate_branch};
use crate::base::time::now_unix;
use crate::base::time::MAX_MTIME;

/// How often a commit is re-applied after losing a compare-and-swap race.
const MAX_CAS_ATTEMPTS: usize = 32;

impl Store {
    /// Applies all the changes of `request` in one commit, or none of them.
    pub async fn commit(&self, repo: &str, request: &CommitRequest) -> Result<CommitCreated> {
        self.ensure_repo(repo).await?;
        let branch = request.branch.as_deref().unwrap_or(DEFAULT_BRANCH);
        validate_branch(branch)?;
        let changed = changed_paths(&request.changes)?;
        // Blob sizes do not change between attempts: look them up once.
        let mut sizes = HashMap::new();
        for change in &request.changes {
            if let Change::Put {
                mtime: Some(t),
                path,
                ..
            } = change
            {
                if !(0..=MAX_MTIME).contains(t) {
                    return Err(StoreError::InvalidInput(format!(
                        "mtime {t} of {path:?} is outside 1970..=9999"
                    )));
                }
            }
            if let Change::Put { hash, .. } = change {
                if !sizes.contains_key(hash) {
                    sizes.insert(
                        hash.clone(),
                        self.blob_size(repo, hash).await.map_err(|e| match e {
                            StoreError::NotFound(what) => {
                                StoreError::InvalidInput(format!("unknown {what}"))
                            }
                            other => other,
                        })?,
                    );
                }
            }
        }
        // Commits to one branch from this server queue here instead of racing: a lost race
        // costs a whole tree rewrite with fsyncs, and under load most attempts would lose.
        // The compare-and-swap below still guards against other processes.
        let queue = self.branch_queue(repo, branch);
        let _turn = queue.lock().await;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let head = self.branch_head(repo, branch).await?;
            let root = match &head {
                Some(commit) => self.load_commit(repo, commit).await?.tree,
                None => self.write_tree(repo, &Tree::default()).await?,
            };
            let now = now_unix();
            let mut editor = TreeEditor::new(self, repo, root, now);
            for change in &request.changes {
                editor.apply(change, &sizes).await?;
            }
            let tree = editor.write().await?;
            let commit = Commit {
                tree,
                parent: head.clone(),
                message: request.message.clone(),
                timestamp: now,
            };
            let id = self.write_commit(repo, &commit).await?;
            if self
                .backend
                .cas_ref(&ref_path(repo, branch), head.as_deref(), &id)
                .await?
            {
                self.note_ref(repo, branch, &id);
                let _ = self.events.send(RefUpdate {
                    repo: repo.to_string(),
                    branch: branch.to_string(),
                    commit: id.clone(),
                    changed: changed.clone(),
                });
                return Ok(CommitCreated {
                    commit: id,
                    branch: branch.to_string(),
                });
            }
            log::debug!("commit on {repo}/{branch} lost a race (attempt {attempt}), re-applying");
        }
        Err(StoreError::Conflict {
            path: String::new(),
            reason: "the branch is too busy; try again".into(),
        })
    }
}

fn changed_paths(changes: &[Change]) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for change in changes {
        match change {
            Change::Put { path, .. } | Change::Delete { path, .. } | Change::Mkdir { path } => {
                out.insert(normalize_path(path)?);
            }
            Change::Move { from, to } => {
                out.insert(normalize_path(from)?);
                out.insert(normalize_path(to)?);
            }
        }
    }
    if out.contains("") {
        return Err(StoreError::InvalidInput(
            "a change cannot target the root directory".into(),
        ));
    }
    Ok(out.into_iter().collect())
}

/// Edits a snapshot of the tree in memory; [`TreeEditor::write`] stores the dirty directories
/// bottom-up and returns the new root id.
struct TreeEditor<'a> {
    store: &'a Store,
    repo: &'a str,
    now: i64,
    /// Loaded directories by path ("" is the root).
    dirs: HashMap<String, Tree>,
    dirty: BTreeSet<String>,
    root: String,
}

fn parent_and_name(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

impl<'a> TreeEditor<'a> {
    fn new(store: &'a Store, repo: &'a str, root: String, now: i64) -> Self {
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
    async fn dir(&mut self, path: &str, create: bool) -> Result<Option<&mut Tree>> {
        let segments = split_path(path)?;
        if !self.dirs.contains_key("") {
            let root = self.store.load_tree(self.repo, &self.root).await?;
            self.dirs.insert(String::new(), (*root).clone());
        }
        let mut current = String::new();
        for segment in segments {
            let child = join(&current, segment);
            if !self.dirs.contains_key(&child) {
                let parent = self.dirs.get(&current).expect("parent loaded");
                let mut created = false;
                let tree = match parent.entries.get(segment) {
                    Some(e) if e.kind == EntryType::Directory => {
                        (*self.store.load_tree(self.repo, &e.hash).await?).clone()
                    }
                    Some(_) => {
                        return Err(StoreError::Conflict {
                            path: child,
                            reason: "not a directory".into(),
                        })
                    }
                    None if create => {
                        self.insert_entry(&current, segment, dir_entry(self.now));
                        created = true;
                        Tree::default()
                    }
                    None => return Ok(None),
                };
                self.dirs.insert(child.clone(), tree);
                if created {
                    self.mark_dirty(&child);
                }
            }
            current = child;
        }
        Ok(self.dirs.get_mut(&current))
    }

    fn insert_entry(&mut self, dir: &str, name: &str, entry: TreeEntry) {
        self.dirs
            .get_mut(dir)
            .expect("loaded")
            .entries
            .insert(name.to_string(), entry);
        self.mark_dirty(dir);
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
        let (dir, name) = parent_and_name(path);
        Ok(self
            .dir(dir, false)
            .await?
            .and_then(|t| t.entries.get(name).cloned()))
    }

    async fn check_expect(&mut self, path: &str, expect: &Option<Option<String>>) -> Result<()> {
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

    async fn apply(&mut self, change: &Change, sizes: &HashMap<String, u64>) -> Result<()> {
        match change {
            Change::Put {
                path,
                hash,
                mode,
                mtime,
                expect,
            } => {
                let path = normalize_path(path)?;
                self.check_expect(&path, expect).await?;
                if let Some(existing) = self.current(&path).await? {
                    if existing.kind == EntryType::Directory {
                        return Err(StoreError::Conflict {
                            path,
                            reason: "is a directory".into(),
                        });
                    }
                }
                let mode = normalize_file_mode(*mode);
                let kind = EntryType::of_git_mode(mode);
                let entry = TreeEntry {
                    kind,
                    mode,
                    size: sizes[hash],
                    mtime: mtime.unwrap_or(self.now),
                    hash: hash.clone(),
                };
                let (dir, name) = parent_and_name(&path);
                self.dir(dir, true).await?;
                self.insert_entry(dir, name, entry);
            }
            Change::Delete { path, expect } => {
                let path = normalize_path(path)?;
                self.check_expect(&path, expect).await?;
                let (dir, name) = parent_and_name(&path);
                let removed = match self.dir(dir, false).await? {
                    Some(tree) => tree.entries.remove(name),
                    None => None,
                };
                if removed.is_none() {
                    return Err(StoreError::NotFound(format!("path {path:?}")));
                }
                self.forget_subtree(&path);
                self.mark_dirty(dir);
            }
            Change::Move { from, to } => {
                let (from, to) = (normalize_path(from)?, normalize_path(to)?);
                if to == from {
                    return Ok(());
                }
                if to.starts_with(&format!("{from}/")) {
                    return Err(StoreError::InvalidInput(format!(
                        "cannot move {from:?} into itself"
                    )));
                }
                let (from_dir, from_name) = parent_and_name(&from);
                let entry = match self.dir(from_dir, false).await? {
                    Some(tree) => tree.entries.remove(from_name),
                    None => None,
                }
                .ok_or_else(|| StoreError::NotFound(format!("path {from:?}")))?;
                self.mark_dirty(from_dir);
                if let Some(target) = self.current(&to).await? {
                    let replaceable = match (target.kind, entry.kind) {
                        (EntryType::Directory, EntryType::Directory) => self
                            .store
                            .load_tree(self.repo, &target.hash)
                            .await?
                            .entries
                            .is_empty(),
                        (EntryType::Directory, _) | (_, EntryType::Directory) => false,
                        _ => true,
                    };
                    if !replaceable {
                        return Err(StoreError::Conflict {
                            path: to,
                            reason: "the target exists".into(),
                        });
                    }
                }
                // A moved directory may have been edited in this commit: write it first.
                let entry = if entry.kind == EntryType::Directory {
                    let hash = self
                        .flush_subtree(&from)
                        .await?
                        .unwrap_or_else(|| entry.hash.clone());
                    TreeEntry { hash, ..entry }
                } else {
                    entry
                };
                let (to_dir, to_name) = parent_and_name(&to);
                self.dir(to_dir, true).await?;
                self.insert_entry(to_dir, to_name, entry);
            }
            Change::Mkdir { path } => {
                let path = normalize_path(path)?;
                match self.current(&path).await? {
                    Some(e) if e.kind == EntryType::Directory => {}
                    Some(_) => {
                        return Err(StoreError::Conflict {
                            path,
                            reason: "a file exists there".into(),
                        })
                    }
                    None => {
                        self.dir(&path, true).await?;
                    }
                }
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
        for d in pending {
            let tree = self.dirs.remove(&d).expect("present");
            let id = self.store.write_tree(self.repo, &tree).await?;
            self.dirty.remove(&d);
            if d == prefix {
                own = Some(id);
            } else {
                let (parent, name) = parent_and_name(&d);
                if let Some(p) = self.dirs.get_mut(parent) {
                    if let Some(e) = p.entries.get_mut(name) {
                        e.hash = id;
                    }
                }
            }
        }
        Ok(own)
    }

    /// Stores every dirty directory, deepest first, and returns the new root tree id.
    async fn write(mut self) -> Result<String> {
        if self.dirty.is_empty() {
            return Ok(self.root.clone());
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
            let Some(tree) = self.dirs.get(&d) else {
                continue;
            };
            let id = self.store.write_tree(self.repo, tree).await?;
            if d.is_empty() {
                root = Some(id);
            } else {
                let (parent, name) = parent_and_name(&d);
                let now = self.now;
                if let Some(e) = self
                    .dirs
                    .get_mut(parent)
                    .and_then(|p| p.entries.get_mut(name))
                {
                    e.hash = id;
                    e.mtime = now;
                }
            }
        }
        Ok(root.expect("the root is always dirty when anything is"))
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
