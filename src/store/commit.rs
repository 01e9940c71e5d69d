//! Atomic commits: a set of changes applied to the branch head as one new commit.
//!
//! Only the directories on changed paths are rewritten ([`editor`]), so a commit costs
//! O(depth × changes), not O(repository). The ref moves by compare-and-swap; when another
//! commit landed first, the changes are re-applied to the new head (their `expect` checks run
//! again), so concurrent writers to different paths both succeed and a real conflict is a 409.

mod editor;

use std::collections::{BTreeSet, HashMap};

use super::objects::{Commit, Tree};
use super::repo::ref_path;
use super::{RefUpdate, Result, Store, StoreError};
use crate::api::{Change, CommitCreated, CommitRequest, DEFAULT_BRANCH};
use crate::base::paths::{normalize_path, validate_branch};
use crate::base::time::{now_unix, MAX_MTIME};
use editor::TreeEditor;

/// How often a commit is re-applied after losing a compare-and-swap race.
const MAX_CAS_ATTEMPTS: usize = 32;

impl Store {
    /// Applies all the changes of `request` in one commit, or none of them.
    pub async fn commit(&self, repo: &str, request: &CommitRequest) -> Result<CommitCreated> {
        self.ensure_repo(repo).await?;
        let branch = request.branch.as_deref().unwrap_or(DEFAULT_BRANCH);
        validate_branch(branch)?;
        let changed = changed_paths(&request.changes)?;
        let sizes = self.put_sizes(repo, &request.changes).await?;
        // Commits to one branch from this server queue here instead of racing: a lost race
        // costs a whole tree rewrite with fsyncs, and under load most attempts would lose.
        // The compare-and-swap below still guards against other processes.
        let queue = self.branch_queue(repo, branch);
        let _turn = queue.lock().await;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            if let Some(id) = self.try_commit(repo, branch, request, &sizes).await? {
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

    /// Checks the puts' mtimes and looks up the size of each blob they name, once: sizes do
    /// not change between attempts. An unknown blob is a bad request, not a missing route.
    async fn put_sizes(&self, repo: &str, changes: &[Change]) -> Result<HashMap<String, u64>> {
        let mut sizes = HashMap::new();
        for change in changes {
            let Change::Put {
                path, hash, mtime, ..
            } = change
            else {
                continue;
            };
            if let Some(t) = mtime.filter(|t| !(0..=MAX_MTIME).contains(t)) {
                return Err(StoreError::InvalidInput(format!(
                    "mtime {t} of {path:?} is outside 1970..=9999"
                )));
            }
            if sizes.contains_key(hash) {
                continue;
            }
            let size = self.blob_size(repo, hash).await.map_err(|e| match e {
                StoreError::NotFound(what) => StoreError::InvalidInput(format!("unknown {what}")),
                other => other,
            })?;
            sizes.insert(hash.clone(), size);
        }
        Ok(sizes)
    }

    /// One attempt: the changes applied to the current head, written as a commit, and the
    /// branch moved to it. `None` when another commit moved the branch first.
    async fn try_commit(
        &self,
        repo: &str,
        branch: &str,
        request: &CommitRequest,
        sizes: &HashMap<String, u64>,
    ) -> Result<Option<String>> {
        let head = self.branch_head(repo, branch).await?;
        let root = match &head {
            Some(commit) => self.load_commit(repo, commit).await?.tree,
            None => self.write_tree(repo, &Tree::default()).await?,
        };
        let now = now_unix();
        let mut editor = TreeEditor::new(self, repo, root, now);
        for change in &request.changes {
            editor.apply(change, sizes).await?;
        }
        let (tree, mut objects) = editor.write();
        let commit = Commit {
            tree,
            parent: head.clone(),
            message: request.message.clone(),
            timestamp: now,
        };
        let (id, bytes) = commit.encode();
        objects.push((id.clone(), bytes));
        self.write_objects(repo, objects).await?;
        let moved = self
            .backend
            .cas_ref(&ref_path(repo, branch), head.as_deref(), &id)
            .await?;
        Ok(moved.then_some(id))
    }
}

/// The normalised paths a commit touches (announced with its ref update).
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

#[cfg(test)]
mod tests;
