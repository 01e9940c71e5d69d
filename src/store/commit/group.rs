//! Group commit: requests to one branch that arrive while a commit of it is being written are
//! applied together, as one commit, when it is done.
//!
//! Each request still gets its own answer: its own conflict check (its changes are applied
//! after those of the requests before it in the group, and one whose changes do not apply is
//! refused alone), and, when the group lands, the id of the one commit that holds the
//! changes of all of them. So n concurrent closes cost one tree rewrite, one commit object,
//! one ref update and, on a local store, one journal flush, where they cost n of each, one
//! after the other.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::Inline;
use crate::api::{CommitCreated, CommitRequest};
use crate::store::{RefUpdate, Result, Store, StoreError};

/// How often a group is re-applied after losing a compare-and-swap race (to another process).
const MAX_CAS_ATTEMPTS: usize = 32;

/// Messages of a group's commit longer than this are cut.
const MAX_GROUP_MESSAGE: usize = 4096;

/// One commit request waiting for its group.
pub(in crate::store) struct Pending {
    pub request: CommitRequest,
    pub inline: Inline,
    /// Sizes of the blobs its puts name.
    pub sizes: HashMap<String, u64>,
    /// The paths it changes (announced with the ref update).
    pub changed: Vec<String>,
    pub reply: oneshot::Sender<Result<CommitCreated>>,
}

/// The outcome of one attempt at a group.
pub(super) enum Attempt {
    /// The branch moved to this commit, of this root tree.
    Moved(KnownHead),
    /// Another writer moved the branch first.
    Lost,
    /// Every request of the group was refused.
    Empty,
}

/// The commits of one branch of this process: the requests waiting, and the turn to write.
#[derive(Default)]
pub(crate) struct BranchQueue {
    waiting: Mutex<Vec<Pending>>,
    turn: tokio::sync::Mutex<()>,
    /// The head this process last moved the branch to, so the next commit need not read
    /// the ref and the commit back. Another writer may have moved it since: then the
    /// compare-and-swap fails, this is forgotten, and the attempt is made again from the ref.
    known: Mutex<Option<KnownHead>>,
}

/// A branch head and its root tree.
#[derive(Debug, Clone)]
pub(super) struct KnownHead {
    pub commit: Option<String>,
    pub tree: String,
}

impl BranchQueue {
    /// The head this process last moved the branch to, if it still knows it.
    pub(super) fn known(&self) -> Option<KnownHead> {
        self.known.lock().expect("known head").clone()
    }

    fn set_known(&self, head: Option<KnownHead>) {
        *self.known.lock().expect("known head") = head;
    }

    pub(super) fn push(&self, pending: Pending) {
        self.waiting.lock().expect("commit queue").push(pending);
    }

    /// Waits for the turn to write this branch, then commits every request waiting (the
    /// caller's among them, unless the one before took it along).
    pub(super) async fn take_turn(&self, store: &Store, repo: &str, branch: &str) {
        let _turn = self.turn.lock().await;
        let group = std::mem::take(&mut *self.waiting.lock().expect("commit queue"));
        if !group.is_empty() {
            store.commit_group((repo, branch), self, group).await;
        }
    }
}

impl Store {
    /// Commits `group` together and answers each request.
    async fn commit_group(
        &self,
        (repo, branch): (&str, &str),
        queue: &BranchQueue,
        mut group: Vec<Pending>,
    ) {
        if group.len() > 1 {
            log::debug!("{repo}/{branch}: {} commits as one", group.len());
        }
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let outcome = self
                .try_group(repo, branch, queue.known(), &mut group)
                .await;
            match outcome {
                Ok(Attempt::Moved(head)) => {
                    let id = head.commit.clone().expect("a moved branch has a head");
                    queue.set_known(Some(head));
                    return self.announce(repo, branch, &id, group);
                }
                Ok(Attempt::Empty) => return,
                Ok(Attempt::Lost) => log::debug!(
                    "commit on {repo}/{branch} lost a race (attempt {attempt}), re-applying"
                ),
                Err(e) => {
                    queue.set_known(None);
                    return answer_all(group, &e);
                }
            }
            queue.set_known(None);
        }
        let busy = StoreError::Conflict {
            path: String::new(),
            reason: "the branch is too busy; try again".into(),
        };
        answer_all(group, &busy);
    }

    /// Tells subscribers the branch moved, and every request of the group its commit.
    fn announce(&self, repo: &str, branch: &str, id: &str, group: Vec<Pending>) {
        self.note_ref(repo, branch, id);
        let changed: BTreeSet<String> = group
            .iter()
            .flat_map(|p| p.changed.iter().cloned())
            .collect();
        let _ = self.events.send(RefUpdate {
            repo: repo.to_string(),
            branch: branch.to_string(),
            commit: id.to_string(),
            changed: changed.into_iter().collect(),
        });
        for pending in group {
            let _ = pending.reply.send(Ok(CommitCreated {
                commit: id.to_string(),
                branch: branch.to_string(),
            }));
        }
    }
}

/// Whether an error applying a request's changes is that request's alone (its `expect`, a
/// path that is not there, a bad path), so the rest of its group can still commit.
pub(super) fn is_the_requests_fault(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Conflict { .. }
            | StoreError::NotFound(_)
            | StoreError::InvalidInput(_)
            | StoreError::AlreadyExists(_)
    )
}

/// The message of a group's commit: the requests' messages, one per line.
pub(super) fn group_message(group: &[Pending]) -> String {
    if let [one] = group {
        return one.request.message.clone();
    }
    let mut message = group
        .iter()
        .map(|p| p.request.message.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    if message.len() > MAX_GROUP_MESSAGE {
        let mut cut = MAX_GROUP_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// Answers every request of a failed group with (a copy of) `e`.
fn answer_all(group: Vec<Pending>, e: &StoreError) {
    for pending in group {
        let _ = pending.reply.send(Err(duplicate(e)));
    }
}

/// A copy of an error for each request of a group (I/O and storage errors by their text).
fn duplicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound(s) => StoreError::NotFound(s.clone()),
        StoreError::InvalidInput(s) => StoreError::InvalidInput(s.clone()),
        StoreError::AlreadyExists(s) => StoreError::AlreadyExists(s.clone()),
        StoreError::Conflict { path, reason } => StoreError::Conflict {
            path: path.clone(),
            reason: reason.clone(),
        },
        StoreError::RangeNotSatisfiable { size } => StoreError::RangeNotSatisfiable { size: *size },
        StoreError::ChecksumMismatch { expected, actual } => StoreError::ChecksumMismatch {
            expected: expected.clone(),
            actual: actual.clone(),
        },
        StoreError::TooLarge { limit } => StoreError::TooLarge { limit: *limit },
        StoreError::Corrupt { id, reason } => StoreError::Corrupt {
            id: id.clone(),
            reason: reason.clone(),
        },
        StoreError::Backend(_) | StoreError::Io(_) => {
            StoreError::Io(std::io::Error::other(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::api::{Change, CommitRequest};
    use crate::store::test_support::temp_store;
    use crate::store::{FilePut, StoreError};

    fn put(path: &str, expect: Option<Option<String>>) -> FilePut {
        FilePut {
            path: path.to_string(),
            expect,
            message: format!("write {path}"),
            ..FilePut::default()
        }
    }

    /// Requests queued behind a commit in progress land as one commit; each is answered on
    /// its own, and one whose `expect` fails is refused alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_for_their_branch_are_committed_together() {
        let (_dir, store) = temp_store().await;
        store.create_repo("r").await.unwrap();
        let store = Arc::new(store);
        let before = store.log("r", None, 100).await.unwrap().len();
        let queue = store.branch_queue("r", "main");
        // Hold the turn, as a commit being written does.
        let turn = queue.turn.lock().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (store, file) = (store.clone(), put(&format!("d/f{i}"), Some(None)));
            tasks.push(tokio::spawn(async move {
                store
                    .put_small_file("r", &file, format!("{i}").into())
                    .await
            }));
        }
        let (store2, clash) = (store.clone(), put("d/f3", Some(None)));
        let waiting = |q: &super::BranchQueue| q.waiting.lock().unwrap().len();
        for _ in 0..500 {
            if waiting(&queue) == 8 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(waiting(&queue), 8, "the requests queued");
        let clash =
            tokio::spawn(async move { store2.put_small_file("r", &clash, "other".into()).await });
        for _ in 0..500 {
            if waiting(&queue) == 9 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(turn);
        let mut commits = Vec::new();
        for task in tasks {
            commits.push(task.await.unwrap().unwrap().1.commit);
        }
        let refused = clash.await.unwrap().unwrap_err();
        assert!(matches!(refused, StoreError::Conflict { .. }), "{refused}");
        commits.dedup();
        assert_eq!(commits.len(), 1, "one commit for the group");
        let log = store.log("r", None, 100).await.unwrap();
        assert_eq!(log.len(), before + 1);
        assert_eq!(log[0].commit, commits[0]);
        assert_eq!(log[0].message.lines().count(), 8, "{}", log[0].message);
        let (_, entries) = store.list_dir("r", None, "d").await.unwrap();
        assert_eq!(entries.len(), 8);
        let f3 = entries.iter().find(|e| e.name == "f3").unwrap();
        assert_eq!(f3.size, 1, "the first writer of d/f3 won");
    }

    /// A request refused inside a group leaves nothing of its changes behind, even those
    /// applied before its failing one.
    #[tokio::test]
    async fn a_refused_request_of_a_group_leaves_no_partial_change() {
        let (_dir, store) = temp_store().await;
        store.create_repo("r").await.unwrap();
        let (blob, _) = store
            .put_small_file("r", &put("a", None), "x".into())
            .await
            .unwrap();
        let request = CommitRequest {
            branch: None,
            message: "half".into(),
            changes: vec![
                Change::Put {
                    path: "b".into(),
                    hash: blob.hash.clone(),
                    mode: None,
                    mtime: None,
                    expect: None,
                },
                Change::Delete {
                    path: "missing".into(),
                    expect: None,
                },
            ],
        };
        let err = store.commit("r", &request).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        let (_, entries) = store.list_dir("r", None, "").await.unwrap();
        assert_eq!(entries.len(), 1, "b was not committed");
    }
}
