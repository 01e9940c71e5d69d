//! The mount's own file commits, so that their change events do not make it forget what it
//! already knows.
//!
//! After a write's commit the mount records the new version in its inode table itself; the
//! server then announces the same commit to every watcher, this mount included. Expiring every
//! listing for it would make the next `open` or `create` in that directory list it again:
//! `tar -x` of n files would list a growing directory n times (and `rm -r` a shrinking one).
//! So the commits of file writes and of deletes of a known version are remembered (a bounded
//! number), and an event is ignored when it names one of them and changed only their paths. An event that arrives before its commit's answer
//! waits (briefly) for the answers in flight.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use tokio::sync::Notify;

use crate::api::{Change, RefEvent};

/// Own commits remembered, newest first.
const REMEMBERED: usize = 1024;

/// How long an event waits for the answers of commits in flight before it is applied anyway.
const WAIT_FOR_ANSWERS: Duration = Duration::from_secs(2);

/// The commits this mount made of file writes alone, and how many commits are in flight.
pub struct OwnCommits {
    state: Mutex<State>,
    answered: Notify,
    /// How long an event waits for answers in flight.
    wait: Duration,
}

struct State {
    /// Commit id → the paths it put.
    recent: LruCache<String, HashSet<String>>,
    in_flight: usize,
}

impl Default for OwnCommits {
    fn default() -> Self {
        OwnCommits {
            state: Mutex::new(State {
                recent: LruCache::new(NonZeroUsize::new(REMEMBERED).expect("non-zero")),
                in_flight: 0,
            }),
            answered: Notify::new(),
            wait: WAIT_FOR_ANSWERS,
        }
    }
}

impl OwnCommits {
    /// Notes a commit request about to be sent; the guard takes its answer (dropped
    /// unanswered, as when the request is cancelled, it only ends the wait for it).
    pub fn sending(&self) -> InFlight<'_> {
        self.state.lock().expect("own commits").in_flight += 1;
        InFlight {
            own: self,
            answered: false,
        }
    }

    fn finish(&self, remember: Option<(String, HashSet<String>)>) {
        let mut state = self.state.lock().expect("own commits");
        state.in_flight -= 1;
        if let Some((commit, paths)) = remember {
            // Two closes of this mount may land in one group commit: its event names both.
            match state.recent.get_mut(&commit) {
                Some(known) => known.extend(paths),
                None => {
                    state.recent.put(commit, paths);
                }
            }
        }
        drop(state);
        self.answered.notify_waiters();
    }

    /// Whether `event` announces one of this mount's own file commits and nothing else.
    pub async fn is_own(&self, event: &RefEvent) -> bool {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let answered = self.answered.notified();
            {
                let mut state = self.state.lock().expect("own commits");
                if let Some(paths) = state.recent.get(&event.commit) {
                    // No paths means "not known" (a watcher of a shared store that saw the
                    // ref move, perhaps past others' commits too).
                    return !event.changed.is_empty()
                        && event.changed.iter().all(|p| paths.contains(p));
                }
                if state.in_flight == 0 {
                    return false;
                }
            }
            // Its answer may still be on the way: wait for the commits in flight.
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return false;
            }
        }
    }
}

/// A commit request in flight.
pub struct InFlight<'a> {
    own: &'a OwnCommits,
    answered: bool,
}

impl InFlight<'_> {
    /// Notes the answer: `commit` is its id if it succeeded. A commit of file puts and exact deletes alone is
    /// remembered (the mount records those itself); any other kind is not.
    pub fn answered(mut self, changes: &[Change], commit: Option<&str>) {
        let remember = commit.zip(own_paths(changes));
        self.own
            .finish(remember.map(|(c, paths)| (c.to_string(), paths)));
        self.answered = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.own.finish(None);
        }
    }
}

/// The paths of `changes` if the mount records each of them itself: puts, and deletes of the
/// exact version it knew (`unlink`, `rmdir`). Moves and deletes of whatever is there are
/// not: their events refresh the mount.
fn own_paths(changes: &[Change]) -> Option<HashSet<String>> {
    changes
        .iter()
        .map(|c| match c {
            Change::Put { path, .. }
            | Change::Delete {
                path,
                expect: Some(Some(_)),
            } => Some(path.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &str) -> Change {
        Change::Put {
            path: path.into(),
            hash: "h".into(),
            mode: None,
            mtime: None,
            expect: None,
        }
    }

    fn event(commit: &str, changed: &[&str]) -> RefEvent {
        RefEvent {
            branch: "main".into(),
            commit: commit.into(),
            changed: changed.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn an_own_file_commit_is_recognised_and_nothing_else_is() {
        let own = OwnCommits::default();
        own.sending().answered(&[put("d/a")], Some("c1"));
        assert!(own.is_own(&event("c1", &["d/a"])).await);
        // The same commit id announcing more paths (a watcher that merged two moves of the
        // ref): others' changes are in it.
        assert!(!own.is_own(&event("c1", &["d/a", "d/b"])).await);
        assert!(!own.is_own(&event("c1", &[])).await);
        assert!(!own.is_own(&event("c2", &["d/a"])).await);
        // A delete of the version the mount knew is remembered (`rm -r` of a large directory
        // would otherwise list it again after every file); one of whatever is there, or a
        // move, is not: its event refreshes the mount.
        let delete = |expect| Change::Delete {
            path: "d/a".into(),
            expect,
        };
        own.sending()
            .answered(&[delete(Some(Some("h".into())))], Some("c5"));
        assert!(own.is_own(&event("c5", &["d/a"])).await);
        own.sending().answered(&[delete(None)], Some("c3"));
        assert!(!own.is_own(&event("c3", &["d/a"])).await);
        let moved = Change::Move {
            from: "d/a".into(),
            to: "d/b".into(),
        };
        own.sending().answered(&[moved], Some("c6"));
        assert!(!own.is_own(&event("c6", &["d/a", "d/b"])).await);
        // A failed commit is not remembered either.
        own.sending().answered(&[put("d/x")], None);
        assert!(!own.is_own(&event("c4", &["d/x"])).await);
    }

    #[tokio::test]
    async fn an_event_that_beats_its_answer_waits_for_it() {
        let own = std::sync::Arc::new(OwnCommits::default());
        let in_flight = own.sending();
        let waiter = {
            let own = own.clone();
            tokio::spawn(async move { own.is_own(&event("c1", &["f"])).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        in_flight.answered(&[put("f")], Some("c1"));
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn an_event_waits_for_answers_only_so_long() {
        let own = OwnCommits {
            wait: Duration::from_millis(50),
            ..OwnCommits::default()
        };
        let _in_flight = own.sending();
        assert!(!own.is_own(&event("other", &["f"])).await);
    }

    #[tokio::test]
    async fn a_dropped_request_ends_the_wait_for_it() {
        let own = OwnCommits::default();
        drop(own.sending());
        let started = std::time::Instant::now();
        assert!(!own.is_own(&event("c", &["f"])).await);
        assert!(started.elapsed() < WAIT_FOR_ANSWERS);
    }
}
