//! Atomic commits: a set of changes applied to the branch head as one new commit.
//!
//! Only the directories on changed paths are rewritten ([`editor`]), so a commit costs
//! O(depth × changes), not O(repository). The ref moves by compare-and-swap; when another
//! commit landed first, the changes are re-applied to the new head (their `expect` checks run
//! again), so concurrent writers to different paths both succeed and a real conflict is a 409.
//! Requests that arrive while a commit of their branch is being written wait and are then
//! committed together ([`group`]).

mod editor;
mod group;

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use object_store::path::Path;

use super::objects::{Commit, Tree};
use super::repo::{object_paths, ref_path};
use super::{Result, Store, StoreError};
use crate::api::{Change, CommitCreated, CommitRequest, DEFAULT_BRANCH};
use crate::base::paths::{normalize_path, validate_branch};
use crate::base::time::{now_unix, MAX_MTIME};
use editor::TreeEditor;
pub(crate) use group::BranchQueue;
use group::{group_message, is_the_requests_fault, Attempt, KnownHead, Pending};

/// What a commit stores besides its trees and commit object: the objects of a blob that
/// arrived with it (see [`Store::put_small_file`]), and that blob's id and size.
#[derive(Debug, Default)]
pub(super) struct Inline {
    pub objects: Vec<(Path, Bytes)>,
    pub blob: Option<(String, u64)>,
}

impl Store {
    /// Applies all the changes of `request` in one commit, or none of them.
    pub async fn commit(&self, repo: &str, request: &CommitRequest) -> Result<CommitCreated> {
        self.commit_with(repo, request, Inline::default()).await
    }

    /// [`commit`](Self::commit), storing `inline`'s objects with it.
    pub(super) async fn commit_with(
        &self,
        repo: &str,
        request: &CommitRequest,
        inline: Inline,
    ) -> Result<CommitCreated> {
        self.ensure_repo(repo).await?;
        let branch = request.branch.as_deref().unwrap_or(DEFAULT_BRANCH);
        validate_branch(branch)?;
        let changed = changed_paths(&request.changes)?;
        let sizes = self
            .put_sizes(repo, &request.changes, inline.blob.as_ref())
            .await?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = self.branch_queue(repo, branch);
        queue.push(Pending {
            request: request.clone(),
            inline,
            sizes,
            changed,
            reply,
        });
        queue.take_turn(self, repo, branch).await;
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Io(std::io::Error::other(
                "the commit was interrupted",
            )))
        })
    }

    /// Checks the puts' mtimes and looks up the size of each blob they name, once: sizes do
    /// not change between attempts. An unknown blob is a bad request, not a missing route.
    async fn put_sizes(
        &self,
        repo: &str,
        changes: &[Change],
        inline: Option<&(String, u64)>,
    ) -> Result<HashMap<String, u64>> {
        let mut sizes: HashMap<String, u64> = inline.into_iter().cloned().collect();
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

    /// One attempt at committing `group` together: every request's changes applied in turn
    /// to the current head (a request whose changes fail there is answered with its error
    /// and left out), one commit written, and the branch moved to it.
    async fn try_group(
        &self,
        repo: &str,
        branch: &str,
        known: Option<KnownHead>,
        group: &mut Vec<Pending>,
    ) -> Result<Attempt> {
        let KnownHead {
            commit: head,
            tree: root,
        } = match known {
            Some(known) => known,
            None => self.read_head(repo, branch).await?,
        };
        let now = now_unix();
        let Some(editor) = self.apply_group(repo, (&root, now), group).await? else {
            return Ok(Attempt::Empty);
        };
        let (tree, mut objects) = editor.write();
        self.remember_trees(repo, &objects);
        let commit = Commit {
            tree: tree.clone(),
            parent: head.clone(),
            message: group_message(group),
            timestamp: now,
        };
        let (id, bytes) = commit.encode();
        objects.push((id.clone(), bytes));
        let mut objects = object_paths(repo, objects);
        for pending in group.iter() {
            objects.extend(pending.inline.objects.iter().cloned());
        }
        let moved = self
            .backend
            .commit(objects, &ref_path(repo, branch), head.as_deref(), &id)
            .await?;
        Ok(if moved {
            Attempt::Moved(KnownHead {
                commit: Some(id),
                tree,
            })
        } else {
            Attempt::Lost
        })
    }

    /// The branch's head as the store holds it, and its root tree (an empty one for a
    /// branch without commits).
    async fn read_head(&self, repo: &str, branch: &str) -> Result<KnownHead> {
        let commit = self.branch_head(repo, branch).await?;
        let tree = match &commit {
            Some(commit) => self.load_commit(repo, commit).await?.tree,
            None => self.write_tree(repo, &Tree::default()).await?,
        };
        Ok(KnownHead { commit, tree })
    }

    /// Applies the changes of every request of `group` to the tree `root`, in order. A
    /// request whose changes do not apply is answered with its error, removed, and the rest
    /// applied again from `root` (its changes may have been applied in part). `None` when
    /// no request is left.
    async fn apply_group<'a>(
        &'a self,
        repo: &'a str,
        (root, now): (&str, i64),
        group: &mut Vec<Pending>,
    ) -> Result<Option<TreeEditor<'a>>> {
        'rebuild: loop {
            if group.is_empty() {
                return Ok(None);
            }
            let mut editor = TreeEditor::new(self, repo, root.to_string(), now);
            for i in 0..group.len() {
                for change in &group[i].request.changes {
                    match editor.apply(change, &group[i].sizes).await {
                        Ok(()) => {}
                        Err(e) if is_the_requests_fault(&e) => {
                            let refused = group.remove(i);
                            let _ = refused.reply.send(Err(e));
                            continue 'rebuild;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            return Ok(Some(editor));
        }
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
