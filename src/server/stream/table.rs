//! The table of stream sessions: open ones by id, and the last progress of ended ones
//! (completed, cancelled, or expired after the stream timeout, when their memory is freed).
//! Signed ids and adoption on a shared store are in [`super::adopt`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::range::clamp_chunk_size;
use super::session::{Session, Status};
use crate::api::stream::StreamProgress;

/// Limits of the session table.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// A session unused for this long expires.
    pub timeout: Duration,
    /// Sessions open at once; one more is refused with 429.
    pub max_sessions: usize,
    /// Sessions one client (IP address) may have open at once.
    pub max_per_client: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            timeout: Duration::from_secs(300),
            max_sessions: 1024,
            max_per_client: 64,
        }
    }
}

/// Why a session cannot serve.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// No such session, ever (or forgotten long ago).
    Unknown,
    /// Cancelled or expired: its last progress.
    Ended(StreamProgress),
}

/// Ended sessions remembered so that late requests get 410 and the last progress.
const ENDED_MEMORY: usize = 4096;

/// All sessions of a server.
pub struct Sessions {
    limits: StreamLimits,
    pub(super) live: Mutex<HashMap<String, Arc<Session>>>,
    /// Ended sessions: their repository and last progress.
    ended: Mutex<lru::LruCache<String, (String, StreamProgress)>>,
    /// Sessions in `live`, mirrored for the metrics gauge.
    pub(super) gauge: Arc<std::sync::atomic::AtomicI64>,
    /// On a shared store: the key session ids are signed with (see [`super::token`]).
    pub(super) key: Option<Vec<u8>>,
}

impl Sessions {
    /// An empty table; `gauge` follows the number of open sessions.
    pub fn new(limits: StreamLimits, gauge: Arc<std::sync::atomic::AtomicI64>) -> Self {
        Sessions {
            limits,
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(ENDED_MEMORY).expect("non-zero"),
            )),
            gauge,
            key: None,
        }
    }

    /// The limits.
    pub fn limits(&self) -> StreamLimits {
        self.limits
    }

    /// Opens a session over `range` of a blob for client `owner`; `None` when the table, or
    /// the client's share of it, is full.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        owner: Option<std::net::IpAddr>,
        repo: &str,
        hash: &str,
        blob_size: u64,
        range: Range<u64>,
        chunk_size: u64,
        gzip: bool,
    ) -> Option<Arc<Session>> {
        let mut live = self.live.lock().expect("sessions lock");
        if live.len() >= self.limits.max_sessions {
            return None;
        }
        if owner.is_some()
            && live.values().filter(|s| s.owner == owner).count() >= self.limits.max_per_client
        {
            return None;
        }
        let chunk_size = clamp_chunk_size(chunk_size);
        let id = self.new_id(repo, hash, blob_size, &range, chunk_size, gzip);
        let session = Arc::new(Session::new(
            id, repo, hash, blob_size, range, chunk_size, gzip, owner,
        ));
        live.insert(session.id.clone(), session.clone());
        self.gauge.store(live.len() as i64, Ordering::Relaxed);
        Some(session)
    }

    /// The live session `id` of `repo`, marked as used (its idle time starts again).
    pub fn get(&self, repo: &str, id: &str) -> Result<Arc<Session>, Lookup> {
        let session = self.peek(repo, id)?;
        session.touch();
        Ok(session)
    }

    /// The live session `id` of `repo`, without marking it as used (watching the progress of
    /// a session does not keep it alive).
    pub fn peek(&self, repo: &str, id: &str) -> Result<Arc<Session>, Lookup> {
        if let Some(session) = self
            .live
            .lock()
            .expect("sessions lock")
            .get(id)
            .filter(|s| s.repo == repo)
        {
            return Ok(session.clone());
        }
        match self.ended.lock().expect("sessions lock").get(id) {
            Some((owner, progress)) if owner == repo => {
                return Err(Lookup::Ended(progress.clone()))
            }
            _ => {}
        }
        self.adopt(repo, id).ok_or(Lookup::Unknown)
    }

    /// Cancels session `id`: later chunk requests get 410. Returns its progress.
    pub fn cancel(&self, repo: &str, id: &str) -> Result<StreamProgress, Lookup> {
        let session = self.peek(repo, id)?;
        session.mark_cancelled();
        let progress = session.progress_as(Status::Cancelled);
        self.retire(&session, progress.clone());
        Ok(progress)
    }

    /// Ends a session that has no further use (a WebSocket stream that finished or whose
    /// connection closed): its memory is freed now rather than at expiry.
    pub fn close(&self, id: &str) {
        let Some(session) = self.live.lock().expect("sessions lock").get(id).cloned() else {
            return;
        };
        let status = match session.status() {
            Status::Completed => Status::Completed,
            _ => Status::Cancelled,
        };
        self.retire(&session, session.progress_as(status));
    }

    fn retire(&self, session: &Session, last: StreamProgress) {
        let mut live = self.live.lock().expect("sessions lock");
        live.remove(&session.id);
        self.gauge.store(live.len() as i64, Ordering::Relaxed);
        drop(live);
        self.ended
            .lock()
            .expect("sessions lock")
            .put(session.id.clone(), (session.repo.clone(), last));
    }

    /// Expires sessions unused for longer than the timeout; returns how many.
    pub fn expire_idle(&self) -> usize {
        let stale: Vec<Arc<Session>> = self
            .live
            .lock()
            .expect("sessions lock")
            .values()
            .filter(|s| s.idle_for() >= self.limits.timeout)
            .cloned()
            .collect();
        for session in &stale {
            let status = match session.status() {
                Status::Completed => Status::Completed,
                _ => Status::Expired,
            };
            self.retire(session, session.progress_as(status));
        }
        stale.len()
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.live.lock().expect("sessions lock").len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A table of `max` sessions (all for one client, too) that expire after `timeout`.
    pub(in crate::server::stream) fn table(max: usize, timeout: Duration) -> Sessions {
        Sessions::new(
            StreamLimits {
                timeout,
                max_sessions: max,
                max_per_client: max,
            },
            Default::default(),
        )
    }

    #[test]
    fn progress_counts_distinct_chunks_and_completes() {
        let sessions = table(4, Duration::from_secs(60));
        let s = sessions
            .open(None, "r", "h", 1 << 20, 10..2058, 1024, false)
            .unwrap();
        assert_eq!(s.chunk_count(), 2);
        assert_eq!(s.chunk_range(1), Some(1034..2058));
        assert_eq!(s.chunk_range(2), None);
        s.record_served(1);
        s.record_served(1);
        let p = s.progress();
        assert_eq!(
            (p.bytes_streamed, p.chunks_streamed, p.status.as_str()),
            (1024, 1, "streaming")
        );
        s.record_served(0);
        let p = s.progress();
        assert_eq!(
            (p.bytes_streamed, p.total_bytes, p.status.as_str()),
            (2048, 2048, "completed")
        );
    }

    #[test]
    fn cancel_expiry_and_the_limit() {
        let gauge: Arc<std::sync::atomic::AtomicI64> = Default::default();
        let sessions = Sessions::new(
            StreamLimits {
                timeout: Duration::from_millis(50),
                max_sessions: 2,
                max_per_client: 2,
            },
            gauge.clone(),
        );
        let a = sessions
            .open(None, "r", "h", 1 << 20, 0..10, 0, false)
            .unwrap();
        let b = sessions
            .open(None, "r", "h", 1 << 20, 0..10, 0, false)
            .unwrap();
        assert!(
            sessions
                .open(None, "r", "h", 1 << 20, 0..10, 0, false)
                .is_none(),
            "a third session past the limit"
        );
        assert_eq!(gauge.load(Ordering::Relaxed), 2);
        assert!(
            matches!(sessions.get("other", &a.id), Err(Lookup::Unknown)),
            "another repo's session"
        );
        let p = sessions.cancel("r", &a.id).unwrap();
        assert_eq!(p.status, "cancelled");
        assert!(
            matches!(sessions.get("r", &a.id), Err(Lookup::Ended(p)) if p.status == "cancelled")
        );
        assert!(
            matches!(sessions.get("other", &a.id), Err(Lookup::Unknown)),
            "another repo sees an ended session"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(sessions.expire_idle(), 1);
        assert!(matches!(sessions.get("r", &b.id), Err(Lookup::Ended(p)) if p.status == "expired"));
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        assert!(sessions.is_empty());
        drop((a, b));
    }

    #[test]
    fn one_client_cannot_take_the_whole_table() {
        let sessions = Sessions::new(
            StreamLimits {
                timeout: Duration::from_secs(60),
                max_sessions: 10,
                max_per_client: 2,
            },
            Default::default(),
        );
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        assert!(sessions.open(a, "r", "h", 10, 0..10, 0, false).is_some());
        assert!(sessions.open(a, "r", "h", 10, 0..10, 0, false).is_some());
        assert!(
            sessions.open(a, "r", "h", 10, 0..10, 0, false).is_none(),
            "a third session of one client"
        );
        assert!(
            sessions.open(b, "r", "h", 10, 0..10, 0, false).is_some(),
            "another client is not held back"
        );
    }

    #[test]
    fn closing_frees_a_session_and_remembers_how_it_ended() {
        let sessions = table(4, Duration::from_secs(60));
        let done = sessions
            .open(None, "r", "h", 1 << 20, 0..10, 1024, false)
            .unwrap();
        done.record_served(0);
        let cut = sessions
            .open(None, "r", "h", 1 << 20, 0..5000, 1024, false)
            .unwrap();
        sessions.close(&done.id);
        sessions.close(&cut.id);
        assert!(sessions.is_empty());
        assert!(
            matches!(sessions.get("r", &done.id), Err(Lookup::Ended(p)) if p.status == "completed")
        );
        assert!(
            matches!(sessions.get("r", &cut.id), Err(Lookup::Ended(p)) if p.status == "cancelled")
        );
    }

    proptest! {
        /// The chunks of any session tile its range exactly, in order, each within the size.
        #[test]
        fn chunks_tile_the_range(size in 0u64..50_000, start_frac in 0.0f64..1.0, len_frac in 0.0f64..1.0, chunk in 0u64..20_000) {
            let start = (size as f64 * start_frac) as u64;
            let end = start + ((size - start) as f64 * len_frac) as u64;
            let sessions = table(1, Duration::from_secs(60));
            let s = sessions.open(None, "r", "h", size, start..end, chunk, false).unwrap();
            let mut at = start;
            for i in 0..s.chunk_count() {
                let r = s.chunk_range(i).unwrap();
                prop_assert_eq!(r.start, at);
                prop_assert!(r.end > r.start && r.end - r.start <= s.chunk_size);
                at = r.end;
            }
            prop_assert_eq!(at, end);
            prop_assert!(s.chunk_range(s.chunk_count()).is_none());
        }
    }
}
