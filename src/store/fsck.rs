//! Verification of a whole store: every ref points at a commit that decodes and matches its
//! id, every tree object (flat trees and bucket nodes, each at its place) and commit
//! reachable from it does too, and every chunk of every blob hashes
//! to its name (a blob of an older store: its content to its id). Used by `govcfs fsck`.

use std::collections::HashSet;

use futures::StreamExt;

use super::blob::Layout;
use super::chunks::chunk_path;
use super::hamt::{Node, Place};
use super::objects::TreeEntry;
use super::{object_path, Result, Store};
use crate::api::EntryType;
use crate::base::ids::LegacyBlobHasher;
use crate::base::manifest::{chunk_hash, Manifest};

/// What a check found.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub repos: usize,
    pub commits: usize,
    pub trees: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    /// One line per problem.
    pub damage: Vec<String>,
}

/// Most uses of one damaged blob a report names.
const USES_NAMED: usize = 5;

/// What the walk of one repository has seen.
#[derive(Default)]
struct Walk {
    /// Commits and tree objects already walked.
    seen: HashSet<String>,
    /// Blobs already checked.
    blobs: HashSet<String>,
    /// Damaged blobs: the problem and where they are used (path, branch, commit), in the
    /// order found.
    bad: Vec<(String, String, Vec<String>)>,
}

impl Walk {
    /// Notes a use of blob `id` at `place`; returns whether it still needs checking.
    fn first_use(&mut self, id: &str, place: String) -> bool {
        if self.blobs.insert(id.to_string()) {
            return true;
        }
        if let Some((_, _, uses)) = self.bad.iter_mut().find(|(b, _, _)| b == id) {
            uses.push(place);
        }
        false
    }

    /// One damage line per damaged blob, naming the files and versions that use it.
    fn report_damage(self, repo: &str, report: &mut FsckReport) {
        for (id, problem, uses) in self.bad {
            let mut named = uses
                .iter()
                .take(USES_NAMED)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            if uses.len() > USES_NAMED {
                named.push_str(&format!("; and {} more", uses.len() - USES_NAMED));
            }
            report
                .damage
                .push(format!("{repo}: blob {id}: {problem}; used by {named}"));
        }
    }
}

impl Store {
    /// Checks every repository.
    pub async fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let repos = self.list_repos().await?;
        for name in self
            .backend
            .list_dirs(&object_store::path::Path::from("repos"))
            .await?
        {
            if !repos.iter().any(|r| r.id == name) {
                report.damage.push(format!(
                    "{name}: no config.json (a creation cut by a crash; `govcfs repo create` of the same name finishes it)"
                ));
            }
        }
        for repo in repos {
            report.repos += 1;
            let mut walk = Walk::default();
            self.check_branches(&repo.id, &mut walk, &mut report)
                .await?;
            walk.report_damage(&repo.id, &mut report);
        }
        Ok(report)
    }

    /// Walks the history of every branch of `repo`.
    async fn check_branches(
        &self,
        repo: &str,
        walk: &mut Walk,
        report: &mut FsckReport,
    ) -> Result<()> {
        let heads = object_store::path::Path::from(format!("repos/{repo}/refs/heads"));
        for branch in self.backend.list(&heads).await? {
            let name = branch.location.filename().unwrap_or_default().to_string();
            if name.starts_with('.') {
                continue;
            }
            match self.branch_head(repo, &name).await {
                Ok(Some(head)) => self.check_history(repo, &name, &head, walk, report).await,
                Ok(None) => report.damage.push(format!("{repo}: ref {name} is empty")),
                Err(e) => report.damage.push(format!("{repo}: ref {name}: {e}")),
            }
        }
        Ok(())
    }

    async fn check_history(
        &self,
        repo: &str,
        branch: &str,
        head: &str,
        walk: &mut Walk,
        report: &mut FsckReport,
    ) {
        let mut next = Some(head.to_string());
        while let Some(id) = next.take() {
            if !walk.seen.insert(id.clone()) {
                return;
            }
            match self.load_commit(repo, &id).await {
                Ok(commit) => {
                    report.commits += 1;
                    let version = format!("{branch} at commit {}", &id[..12]);
                    self.check_tree(repo, &version, &commit.tree, walk, report)
                        .await;
                    next = commit.parent;
                }
                Err(e) => report
                    .damage
                    .push(format!("{repo}: {branch}: commit {id}: {e}")),
            }
        }
    }

    /// Walks the tree objects under `root` (each checked at the place it is found at; those
    /// seen before are not walked again) and checks each blob once.
    async fn check_tree(
        &self,
        repo: &str,
        version: &str,
        root: &str,
        walk: &mut Walk,
        report: &mut FsckReport,
    ) {
        let mut pending = vec![(root.to_string(), String::new(), Place::top())];
        while let Some((id, dir, place)) = pending.pop() {
            let fresh = walk.seen.insert(id.clone());
            // A directory seen before was checked whole. A child node seen before is checked
            // again at its new place (its parent's count may be wrong), but not walked.
            if !fresh && place.count.is_none() {
                continue;
            }
            let checked = match self.read_node(repo, &id).await {
                Ok(node) => node.check_place(&id, &place).map(|()| node),
                Err(e) if fresh => Err(e),
                Err(_) => continue,
            };
            let node = match checked {
                Ok(node) if fresh => node,
                Ok(_) => continue,
                Err(e) => {
                    report
                        .damage
                        .push(format!("{repo}: tree {id} ({dir}/): {e}"));
                    continue;
                }
            };
            report.trees += 1;
            match &*node {
                Node::Buckets(b) => pending.extend(b.children.iter().map(|(n, child)| {
                    (
                        child.tree.clone(),
                        dir.clone(),
                        place.child(*n, child.count),
                    )
                })),
                Node::Leaf(leaf) => {
                    for (name, entry) in &leaf.tree.entries {
                        let path = crate::base::paths::join(&dir, name);
                        if entry.kind == EntryType::Directory {
                            pending.push((entry.hash.clone(), path, Place::top()));
                        } else {
                            self.check_entry_blob(repo, version, &path, entry, walk, report)
                                .await;
                        }
                    }
                }
            }
        }
    }

    /// Checks the blob of a file or symlink entry, once per blob.
    async fn check_entry_blob(
        &self,
        repo: &str,
        version: &str,
        path: &str,
        entry: &TreeEntry,
        walk: &mut Walk,
        report: &mut FsckReport,
    ) {
        if !walk.first_use(&entry.hash, format!("{path} ({version})")) {
            return;
        }
        match self.check_blob(repo, &entry.hash, entry.size).await {
            Ok(()) => {
                report.blobs += 1;
                report.blob_bytes += entry.size;
            }
            Err(problem) => walk.bad.push((
                entry.hash.clone(),
                problem,
                vec![format!("{path} ({version})")],
            )),
        }
    }

    async fn check_blob(&self, repo: &str, id: &str, size: u64) -> std::result::Result<(), String> {
        let layout = self.layout(repo, id).await.map_err(|e| e.to_string())?;
        let actual_size = match &layout {
            Layout::Chunked(m) => m.size,
            Layout::Legacy(size) => *size,
        };
        if actual_size != size {
            return Err(format!("{actual_size} bytes, the tree says {size}"));
        }
        match layout {
            Layout::Chunked(m) => self.check_chunks(repo, &m).await,
            Layout::Legacy(_) => self.check_legacy_blob(repo, id, size).await,
        }
    }

    /// Reads every chunk of a chunked blob and checks it against its hash.
    async fn check_chunks(&self, repo: &str, m: &Manifest) -> std::result::Result<(), String> {
        for (index, hash) in m.chunks.iter().enumerate() {
            let name = hex::encode(hash);
            let path = chunk_path(repo, hash);
            let data = match self.backend.get_opt(&path).await {
                Ok(Some(data)) => data,
                Ok(None) => return Err(format!("chunk {index} ({name}) is missing")),
                Err(e) => return Err(format!("chunk {index} ({name}): {e}")),
            };
            let want = m.chunk_range(index);
            let right_len = data.len() as u64 == want.end - want.start;
            let actual = tokio::task::spawn_blocking(move || hex::encode(chunk_hash(&data)))
                .await
                .map_err(|e| e.to_string())?;
            if actual != name || !right_len {
                return Err(format!("chunk {index} ({name}) is damaged"));
            }
        }
        Ok(())
    }

    /// Re-hashes a blob of a store written before chunking against its Git-style id.
    async fn check_legacy_blob(
        &self,
        repo: &str,
        id: &str,
        size: u64,
    ) -> std::result::Result<(), String> {
        let mut hasher = LegacyBlobHasher::new(size);
        let mut pieces = self.backend.stream_range(object_path(repo, id), 0..size);
        while let Some(piece) = pieces.next().await {
            hasher.update(&piece.map_err(|e| e.to_string())?);
        }
        let (actual, _) = hasher.finish().map_err(|e| e.to_string())?;
        if actual != id {
            return Err(format!("content hashes to {actual}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Change, CommitRequest};
    use crate::store::Backend;

    #[tokio::test]
    async fn finds_a_damaged_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Backend::local(dir.path()).unwrap())
            .await
            .unwrap();
        let blob = store
            .put_blob_bytes("default", bytes::Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        let change = Change::Put {
            path: "a/b.txt".into(),
            hash: blob.hash.clone(),
            mode: None,
            mtime: None,
            expect: None,
        };
        store
            .commit(
                "default",
                &CommitRequest {
                    branch: None,
                    message: "m".into(),
                    changes: vec![change],
                },
            )
            .await
            .unwrap();
        let report = store.fsck().await.unwrap();
        assert!(report.damage.is_empty(), "{:?}", report.damage);
        assert_eq!((report.blobs, report.commits), (1, 2));
        let chunk = hex::encode(chunk_hash(b"hello world"));
        let file = dir
            .path()
            .join(format!("repos/default/chunks/{}/{chunk}", &chunk[..2]));
        std::fs::write(&file, b"hello w0rld").unwrap();
        let report = store.fsck().await.unwrap();
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        let line = &report.damage[0];
        assert!(
            line.contains(&chunk)
                && line.contains("damaged")
                && line.contains("a/b.txt (main at commit"),
            "names the chunk, the file and the version: {line}"
        );
        std::fs::remove_file(&file).unwrap();
        let report = store.fsck().await.unwrap();
        assert!(report.damage[0].contains("missing"), "{:?}", report.damage);
    }
}
