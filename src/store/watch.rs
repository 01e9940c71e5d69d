//! Ref changes made by other server instances on shared object storage.
//!
//! One instance announces its own commits as it makes them; commits of the other instances
//! sharing the bucket reach it only through the bucket. So each instance lists the refs of
//! every repository every [`REF_POLL`] and announces those that moved, which keeps the mounts
//! of every instance current. A list answer carries each ref's ETag, so an unchanged ref
//! costs no read.

use std::collections::HashMap;
use std::time::Duration;

use object_store::path::Path;

use super::{RefUpdate, Result, Store};

/// How often the refs of a shared store are listed.
pub const REF_POLL: Duration = Duration::from_secs(1);

impl Store {
    /// Records that `repo/branch` is at `commit` (so the watcher does not announce it again).
    pub(super) fn note_ref(&self, repo: &str, branch: &str, commit: &str) {
        let mut seen = self.seen_refs.lock().expect("seen refs lock");
        seen.insert(format!("{repo}/{branch}"), commit.to_string());
    }

    /// Lists every ref and announces those that moved since the last call. `etags` carries
    /// the ETags seen by the previous call; the first call only records the current state.
    pub async fn poll_refs(&self, etags: &mut HashMap<Path, String>, first: bool) -> Result<usize> {
        let mut announced = 0;
        for repo in self.backend.list_dirs(&Path::from("repos")).await? {
            let heads = Path::from(format!("repos/{repo}/refs/heads"));
            for meta in self.backend.list(&heads).await? {
                // Dot files are not branches (a local ref's `.<name>.alt` companion).
                if meta.location.filename().is_none_or(|n| n.starts_with('.')) {
                    continue;
                }
                let etag = meta
                    .e_tag
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", meta.last_modified));
                if etags.get(&meta.location) == Some(&etag) {
                    continue;
                }
                etags.insert(meta.location.clone(), etag);
                let Some(branch) = meta.location.filename().map(str::to_string) else {
                    continue;
                };
                let Some(commit) = self.backend.read_ref(&meta.location).await? else {
                    continue;
                };
                let known = {
                    let mut seen = self.seen_refs.lock().expect("seen refs lock");
                    seen.insert(format!("{repo}/{branch}"), commit.clone())
                        .as_deref()
                        == Some(commit.as_str())
                };
                if !first && !known {
                    let _ = self.events.send(RefUpdate {
                        repo: repo.clone(),
                        branch,
                        commit,
                        changed: Vec::new(),
                    });
                    announced += 1;
                }
            }
        }
        Ok(announced)
    }

    /// Polls the refs every [`REF_POLL`] until `cancel`.
    pub async fn watch_shared_refs(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut etags = HashMap::new();
        let mut first = true;
        loop {
            match self.poll_refs(&mut etags, first).await {
                Ok(n) if n > 0 => log::debug!("{n} refs moved by other instances"),
                Ok(_) => {}
                Err(e) => log::warn!("cannot list the refs of the shared store: {e}"),
            }
            first = false;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(REF_POLL) => {}
            }
        }
    }
}
