//! Repositories, refs and reading trees.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;

use super::hamt::DirView;
use super::objects::{Commit, Tree, TreeEntry};
use super::{object_path, Result, Store, StoreError};
use crate::api::{Entry, EntryType, LogEntry, RepoInfo, DEFAULT_BRANCH};
use crate::base::modes::MODE_DIR;
use crate::base::paths::{split_path, validate_branch, validate_object_id, validate_repo_name};
use crate::base::time::now_unix;

/// A ref moved: sent to event subscribers after every commit.
#[derive(Debug, Clone)]
pub struct RefUpdate {
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub changed: Vec<String>,
}

/// What a `?ref=` resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRef {
    /// The commit id.
    pub commit: String,
    /// The commit's root tree id.
    pub tree: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RepoConfig {
    created_at: String,
}

fn repo_prefix(repo: &str) -> String {
    format!("repos/{repo}")
}

pub(super) fn ref_path(repo: &str, branch: &str) -> Path {
    Path::from(format!("repos/{repo}/refs/heads/{branch}"))
}

impl Store {
    /// Creates a repository with an empty first commit on `main`.
    pub async fn create_repo(&self, repo: &str) -> Result<RepoInfo> {
        validate_repo_name(repo)?;
        let config_path = Path::from(format!("{}/config.json", repo_prefix(repo)));
        if self.backend.get_opt(&config_path).await?.is_some() {
            return Err(StoreError::AlreadyExists(format!("repository {repo}")));
        }
        let created_at =
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let tree = self.write_tree(repo, &Tree::default()).await?;
        let commit = self
            .write_commit(
                repo,
                &Commit {
                    tree,
                    parent: None,
                    message: "create repository".into(),
                    timestamp: now_unix(),
                },
            )
            .await?;
        // The ref first: a config without a head would be a broken repository.
        if !self
            .backend
            .cas_ref(&ref_path(repo, DEFAULT_BRANCH), None, &commit)
            .await?
        {
            return self.finish_creation(repo, &config_path, created_at).await;
        }
        self.write_repo_config(&config_path, &created_at).await?;
        Ok(RepoInfo {
            id: repo.to_string(),
            head: Some(commit),
            created_at,
        })
    }

    /// A head without a config: a creation cut by a crash (or racing with this one). If the
    /// head is sound, finish it: the repository exists from now on.
    async fn finish_creation(
        &self,
        repo: &str,
        config_path: &Path,
        created_at: String,
    ) -> Result<RepoInfo> {
        let head = self
            .backend
            .read_ref(&ref_path(repo, DEFAULT_BRANCH))
            .await?;
        let sound = match &head {
            Some(id) => self.load_commit(repo, id).await.is_ok(),
            None => false,
        };
        if !sound || self.backend.get_opt(config_path).await?.is_some() {
            return Err(StoreError::AlreadyExists(format!("repository {repo}")));
        }
        log::warn!(
            "repository {repo} had a head but no config (an interrupted creation): finishing it"
        );
        self.write_repo_config(config_path, &created_at).await?;
        Ok(RepoInfo {
            id: repo.to_string(),
            head,
            created_at,
        })
    }

    async fn write_repo_config(&self, config_path: &Path, created_at: &str) -> Result<()> {
        let config = serde_json::to_vec(&RepoConfig {
            created_at: created_at.to_string(),
        })
        .expect("serializes");
        self.backend.put(config_path, Bytes::from(config)).await
    }

    /// Lists all repositories.
    pub async fn list_repos(&self) -> Result<Vec<RepoInfo>> {
        let mut names = self.backend.list_dirs(&Path::from("repos")).await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(info) = self.repo_info(&name).await {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Describes one repository; `NotFound` if it does not exist.
    pub async fn repo_info(&self, repo: &str) -> Result<RepoInfo> {
        validate_repo_name(repo)?;
        let config_path = Path::from(format!("{}/config.json", repo_prefix(repo)));
        let config = self
            .backend
            .get_opt(&config_path)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("repository {repo}")))?;
        let config: RepoConfig =
            serde_json::from_slice(&config).map_err(|e| StoreError::Corrupt {
                id: config_path.to_string(),
                reason: e.to_string(),
            })?;
        let head = self
            .backend
            .read_ref(&ref_path(repo, DEFAULT_BRANCH))
            .await?;
        Ok(RepoInfo {
            id: repo.to_string(),
            head,
            created_at: config.created_at,
        })
    }

    /// Checks that a repository exists.
    pub async fn ensure_repo(&self, repo: &str) -> Result<()> {
        validate_repo_name(repo)?;
        if self
            .known_repos
            .lock()
            .expect("repo set lock")
            .contains(repo)
        {
            return Ok(());
        }
        let config_path = Path::from(format!("{}/config.json", repo_prefix(repo)));
        match self.backend.size(&config_path).await? {
            Some(_) => {
                self.known_repos
                    .lock()
                    .expect("repo set lock")
                    .insert(repo.to_string());
                Ok(())
            }
            None => Err(StoreError::NotFound(format!("repository {repo}"))),
        }
    }

    /// The commit a branch points to.
    pub async fn branch_head(&self, repo: &str, branch: &str) -> Result<Option<String>> {
        validate_branch(branch)?;
        self.backend.read_ref(&ref_path(repo, branch)).await
    }

    /// Resolves `?ref=` (a branch name, or a full commit id; the default branch when absent).
    pub async fn resolve(&self, repo: &str, reference: Option<&str>) -> Result<ResolvedRef> {
        self.ensure_repo(repo).await?;
        let reference = reference
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_BRANCH);
        let commit = if validate_object_id(reference).is_ok() {
            reference.to_string()
        } else {
            self.branch_head(repo, reference)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("ref {reference}")))?
        };
        let key = (repo.to_string(), commit.clone());
        if let Some(tree) = self
            .commit_trees
            .lock()
            .expect("commit cache lock")
            .get(&key)
        {
            return Ok(ResolvedRef {
                commit,
                tree: tree.clone(),
            });
        }
        let tree = match self.load_commit(repo, &commit).await {
            Ok(c) => {
                self.commit_trees
                    .lock()
                    .expect("commit cache lock")
                    .put(key, c.tree.clone());
                c.tree
            }
            // An id that names a blob or a tree: the caller's mistake, not damage.
            Err(StoreError::Corrupt { .. }) if commit == reference => {
                return Err(StoreError::InvalidInput(format!(
                    "{reference} is not a commit"
                )));
            }
            Err(e) => return Err(e),
        };
        Ok(ResolvedRef { commit, tree })
    }

    /// Loads and verifies a commit.
    pub async fn load_commit(&self, repo: &str, id: &str) -> Result<Commit> {
        validate_object_id(id)?;
        let bytes = self
            .backend
            .get_opt(&object_path(repo, id))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("commit {id}")))?;
        Commit::decode(id, &bytes)
    }

    /// Loads and verifies a whole directory (of a bucket node: the entries of all its
    /// leaves), through the in-memory caches.
    pub async fn load_tree(&self, repo: &str, id: &str) -> Result<Arc<Tree>> {
        self.assemble_dir(repo, id).await
    }

    /// Writes the tree objects of a directory of the entries of `tree` and returns its id.
    pub(super) async fn write_tree(&self, repo: &str, tree: &Tree) -> Result<String> {
        let mut objects = Vec::new();
        let id = DirView::from_tree(tree.clone()).write(&mut objects);
        self.write_objects(repo, objects).await?;
        Ok(id)
    }

    /// Writes encoded objects (`(id, bytes)`) that are not stored yet, durably and at once.
    /// Nothing names them until a ref moves.
    pub(super) async fn write_objects(
        &self,
        repo: &str,
        objects: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        self.backend.put_objects(object_paths(repo, objects)).await
    }

    /// Writes a commit object and returns its id.
    pub(super) async fn write_commit(&self, repo: &str, commit: &Commit) -> Result<String> {
        let (id, bytes) = commit.encode();
        self.write_objects(repo, vec![(id.clone(), bytes)]).await?;
        Ok(id)
    }

    /// Finds the entry at `path` under the root tree `root` (`None` if missing). The root
    /// itself is returned as a directory entry.
    pub async fn lookup(&self, repo: &str, root: &str, path: &str) -> Result<Option<TreeEntry>> {
        let segments = split_path(path)?;
        let mut current = TreeEntry {
            kind: EntryType::Directory,
            mode: MODE_DIR,
            size: 0,
            mtime: 0,
            hash: root.to_string(),
        };
        for segment in segments {
            if current.kind != EntryType::Directory {
                return Ok(None);
            }
            match self.dir_entry(repo, &current.hash, segment).await? {
                Some(entry) => current = entry,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Describes the entry at `path` of a ref.
    pub async fn stat(
        &self,
        repo: &str,
        reference: Option<&str>,
        path: &str,
    ) -> Result<(ResolvedRef, Entry)> {
        let resolved = self.resolve(repo, reference).await?;
        let normalized = crate::base::paths::normalize_path(path)?;
        let entry = self
            .lookup(repo, &resolved.tree, &normalized)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("path {normalized:?}")))?;
        let name = normalized.rsplit('/').next().unwrap_or("").to_string();
        Ok((resolved, to_entry(name, normalized, &entry)))
    }

    /// Lists the directory at `path` of a ref.
    pub async fn list_dir(
        &self,
        repo: &str,
        reference: Option<&str>,
        path: &str,
    ) -> Result<(ResolvedRef, Vec<Entry>)> {
        let (resolved, entry) = self.stat(repo, reference, path).await?;
        if entry.kind != EntryType::Directory {
            return Err(StoreError::InvalidInput(format!(
                "{:?} is not a directory",
                entry.path
            )));
        }
        let tree = self.load_tree(repo, &entry.hash).await?;
        let entries = tree
            .entries
            .iter()
            .map(|(name, e)| {
                let child = if entry.path.is_empty() {
                    name.clone()
                } else {
                    format!("{}/{name}", entry.path)
                };
                to_entry(name.clone(), child, e)
            })
            .collect();
        Ok((resolved, entries))
    }

    /// Commits reachable from a ref, newest first.
    pub async fn log(
        &self,
        repo: &str,
        reference: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        let resolved = self.resolve(repo, reference).await?;
        let mut out = Vec::new();
        let mut next = Some(resolved.commit);
        while let Some(id) = next {
            if out.len() >= limit {
                break;
            }
            let commit = self.load_commit(repo, &id).await?;
            next = commit.parent.clone();
            out.push(LogEntry {
                commit: id,
                parent: commit.parent,
                tree: commit.tree,
                message: commit.message,
                timestamp: commit.timestamp,
            });
        }
        Ok(out)
    }
}

/// Encoded objects `(id, bytes)` of `repo` by their store paths.
pub(super) fn object_paths(repo: &str, objects: Vec<(String, Vec<u8>)>) -> Vec<(Path, Bytes)> {
    objects
        .into_iter()
        .map(|(id, bytes)| (object_path(repo, &id), Bytes::from(bytes)))
        .collect()
}

fn to_entry(name: String, path: String, e: &TreeEntry) -> Entry {
    Entry {
        name,
        path,
        kind: e.kind,
        size: e.size,
        mode: e.mode,
        mtime: e.mtime,
        hash: e.hash.clone(),
    }
}
