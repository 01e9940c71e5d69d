//! The table of stream sessions: what each one streams, what it has served, and its end
//! (completed, cancelled, or expired after the stream timeout, when its memory is freed).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rangemap::RangeInclusiveSet;

use super::token::SessionToken;
use crate::api::stream::{
    StreamProgress, DEFAULT_STREAM_CHUNK, MAX_STREAM_CHUNK, MIN_STREAM_CHUNK,
};

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

/// How a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Streaming,
    Completed,
    Cancelled,
    Expired,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Streaming => "streaming",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }
}

/// One session: a blob range cut into chunks.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub repo: String,
    pub hash: String,
    /// Size of the whole blob.
    pub blob_size: u64,
    /// The range in the blob (end exclusive here).
    pub range: Range<u64>,
    pub chunk_size: u64,
    pub gzip: bool,
    /// The client that opened it.
    owner: Option<std::net::IpAddr>,
    created: Instant,
    last_used: Mutex<Instant>,
    /// Chunk indices served at least once.
    served: Mutex<RangeInclusiveSet<u64>>,
    bytes_served: AtomicU64,
    cancelled: std::sync::atomic::AtomicBool,
    /// When a cancellation by another instance was last looked for (shared stores).
    cancel_checked: Mutex<Option<Instant>>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: String,
        repo: &str,
        hash: &str,
        blob_size: u64,
        range: Range<u64>,
        chunk_size: u64,
        gzip: bool,
        owner: Option<std::net::IpAddr>,
    ) -> Self {
        let now = Instant::now();
        Session {
            id,
            repo: repo.to_string(),
            hash: hash.to_string(),
            blob_size,
            range,
            chunk_size,
            gzip,
            owner,
            created: now,
            last_used: Mutex::new(now),
            served: Mutex::new(RangeInclusiveSet::new()),
            bytes_served: AtomicU64::new(0),
            cancelled: Default::default(),
            cancel_checked: Mutex::new(None),
        }
    }

    /// Chunks in the range (at least one for a non-empty range, none for an empty one).
    pub fn chunk_count(&self) -> u64 {
        (self.range.end - self.range.start).div_ceil(self.chunk_size)
    }

    /// The blob range of chunk `index`, if the session has it.
    pub fn chunk_range(&self, index: u64) -> Option<Range<u64>> {
        if index >= self.chunk_count() {
            return None;
        }
        let start = self.range.start + index * self.chunk_size;
        Some(start..(start + self.chunk_size).min(self.range.end))
    }

    /// Records that chunk `index` was sent.
    pub fn record_served(&self, index: u64) {
        *self.last_used.lock().expect("session lock") = Instant::now();
        let mut served = self.served.lock().expect("session lock");
        if !served.contains(&index) {
            served.insert(index..=index);
            let len = self.chunk_range(index).map_or(0, |r| r.end - r.start);
            self.bytes_served.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Whether the session was cancelled (by DELETE, or by its WebSocket client).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Whether it is time to look for a cancellation made through another instance (at most
    /// once every [`CANCEL_CHECK`]); the check counts as done from now.
    pub fn cancel_check_due(&self) -> bool {
        let mut checked = self.cancel_checked.lock().expect("session lock");
        let due = checked.is_none_or(|at| at.elapsed() >= CANCEL_CHECK);
        if due {
            *checked = Some(Instant::now());
        }
        due
    }

    fn touch(&self) {
        *self.last_used.lock().expect("session lock") = Instant::now();
    }

    fn chunks_served(&self) -> u64 {
        self.served
            .lock()
            .expect("session lock")
            .iter()
            .map(|r| r.end() - r.start() + 1)
            .sum()
    }

    fn status(&self) -> Status {
        if self.cancelled.load(Ordering::Relaxed) {
            Status::Cancelled
        } else if self.chunks_served() == self.chunk_count() {
            Status::Completed
        } else {
            Status::Streaming
        }
    }

    /// The session's progress now.
    pub fn progress(&self) -> StreamProgress {
        self.progress_as(self.status())
    }

    fn progress_as(&self, status: Status) -> StreamProgress {
        let bytes = self.bytes_served.load(Ordering::Relaxed);
        let total = self.range.end - self.range.start;
        let elapsed = self.created.elapsed().as_secs_f64().max(1e-6);
        let rate = bytes as f64 / elapsed;
        let eta = if status == Status::Streaming && rate > 0.0 {
            (total - bytes) as f64 / rate
        } else {
            0.0
        };
        StreamProgress {
            stream_id: self.id.clone(),
            bytes_streamed: bytes,
            total_bytes: total,
            chunks_streamed: self.chunks_served(),
            total_chunks: self.chunk_count(),
            estimated_eta_seconds: eta,
            transfer_rate_mbps: rate / 1e6,
            status: status.as_str().to_string(),
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

/// How often an instance sharing a bucket looks for a cancellation made through another.
pub const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// Oldest signed session id another instance still adopts.
const MAX_ADOPTED_AGE: Duration = Duration::from_secs(24 * 3600);

/// All sessions of a server.
pub struct Sessions {
    limits: StreamLimits,
    live: Mutex<HashMap<String, Arc<Session>>>,
    /// Ended sessions: their repository and last progress.
    ended: Mutex<lru::LruCache<String, (String, StreamProgress)>>,
    /// Sessions in `live`, mirrored for the metrics gauge.
    gauge: Arc<std::sync::atomic::AtomicI64>,
    /// On a shared store: the key session ids are signed with (see [`super::token`]).
    key: Option<Vec<u8>>,
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

    /// Signs session ids with `key`, and adopts sessions opened by other instances.
    pub fn shared(mut self, key: Vec<u8>) -> Self {
        self.key = Some(key);
        self
    }

    /// Whether sessions are shared with other instances.
    pub fn is_shared(&self) -> bool {
        self.key.is_some()
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
        let nonce = uuid::Uuid::new_v4().to_string();
        let chunk_size = clamp_chunk_size(chunk_size);
        let id = match &self.key {
            Some(key) => SessionToken {
                nonce,
                repo: repo.to_string(),
                hash: hash.to_string(),
                blob_size,
                start: range.start,
                end: range.end,
                chunk_size,
                gzip,
                issued: crate::base::time::now_unix(),
            }
            .sign(key),
            None => nonce,
        };
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

    /// A session another instance opened, from its signed id.
    fn adopt(&self, repo: &str, id: &str) -> Option<Arc<Session>> {
        let token = SessionToken::verify(id, self.key.as_deref()?)?;
        let age = crate::base::time::now_unix().saturating_sub(token.issued);
        if token.repo != repo || age as u64 > MAX_ADOPTED_AGE.as_secs() || token.start > token.end {
            return None;
        }
        let session = Arc::new(Session::new(
            id.to_string(),
            repo,
            &token.hash,
            token.blob_size,
            token.start..token.end,
            clamp_chunk_size(token.chunk_size),
            token.gzip,
            None,
        ));
        let mut live = self.live.lock().expect("sessions lock");
        let session = live.entry(id.to_string()).or_insert(session).clone();
        self.gauge.store(live.len() as i64, Ordering::Relaxed);
        Some(session)
    }

    /// Cancels session `id`: later chunk requests get 410. Returns its progress.
    pub fn cancel(&self, repo: &str, id: &str) -> Result<StreamProgress, Lookup> {
        let session = self.peek(repo, id)?;
        session.cancelled.store(true, Ordering::Relaxed);
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
            .filter(|s| s.last_used.lock().expect("session lock").elapsed() >= self.limits.timeout)
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

/// The chunk size a request gets: 0 means the default; others are clamped to the bounds.
pub fn clamp_chunk_size(requested: u64) -> u64 {
    if requested == 0 {
        DEFAULT_STREAM_CHUNK
    } else {
        requested.clamp(MIN_STREAM_CHUNK, MAX_STREAM_CHUNK)
    }
}

/// Resolves a request's `[start_offset, end_offset]` (inclusive, -1 = end) against a blob of
/// `size` bytes into an exclusive range, or explains why it is not satisfiable.
pub fn resolve_range(start: i64, end: i64, size: u64) -> Result<Range<u64>, String> {
    if start < 0 {
        return Err(format!("start_offset {start} is negative"));
    }
    if end < -1 {
        return Err(format!(
            "end_offset {end} is invalid (-1 means the end of the blob)"
        ));
    }
    let start = start as u64;
    let end_exclusive = if end == -1 {
        size
    } else {
        (end as u64).saturating_add(1)
    };
    if start > size || (start == size && size > 0 && end != -1) {
        return Err(format!(
            "start_offset {start} is past the end of the blob ({size} bytes)"
        ));
    }
    if end_exclusive > size {
        return Err(format!(
            "end_offset {end} is past the end of the blob ({size} bytes)"
        ));
    }
    if end_exclusive < start {
        return Err(format!("start_offset {start} is after end_offset {end}"));
    }
    Ok(start..end_exclusive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(max: usize, timeout: Duration) -> Sessions {
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
    fn instances_sharing_a_key_adopt_each_others_sessions() {
        let a = table(10, Duration::from_secs(60)).shared(b"k".to_vec());
        let b = table(10, Duration::from_secs(60)).shared(b"k".to_vec());
        let other = table(10, Duration::from_secs(60)).shared(b"not k".to_vec());
        let opened = a
            .open(None, "r", "h", 1 << 20, 100..5000, 1024, true)
            .unwrap();
        let adopted = b.get("r", &opened.id).expect("adopted from the signed id");
        assert_eq!(
            (
                adopted.range.clone(),
                adopted.chunk_size,
                adopted.gzip,
                adopted.hash.as_str()
            ),
            (100..5000, 1024, true, "h")
        );
        assert_eq!(b.len(), 1);
        assert!(matches!(
            b.get("other-repo", &opened.id),
            Err(Lookup::Unknown)
        ));
        assert!(
            matches!(other.get("r", &opened.id), Err(Lookup::Unknown)),
            "another key"
        );
        assert!(
            matches!(
                table(10, Duration::from_secs(60)).get("r", &opened.id),
                Err(Lookup::Unknown)
            ),
            "not shared"
        );
        // Cancelled here, it stays cancelled here (the marker tells the other instances).
        b.cancel("r", &opened.id).unwrap();
        assert!(matches!(b.get("r", &opened.id), Err(Lookup::Ended(p)) if p.status == "cancelled"));
        assert!(adopted.cancel_check_due());
        assert!(!adopted.cancel_check_due(), "at most once a second");
    }

    #[test]
    fn chunk_sizes_are_clamped() {
        assert_eq!(clamp_chunk_size(0), 64 << 10);
        assert_eq!(clamp_chunk_size(1), 1 << 10);
        assert_eq!(clamp_chunk_size(u64::MAX), 10 << 20);
        assert_eq!(clamp_chunk_size(5000), 5000);
    }

    #[test]
    fn ranges_resolve_or_are_refused() {
        assert_eq!(resolve_range(0, -1, 100), Ok(0..100));
        assert_eq!(resolve_range(10, 19, 100), Ok(10..20));
        assert_eq!(resolve_range(99, 99, 100), Ok(99..100));
        assert_eq!(resolve_range(0, -1, 0), Ok(0..0));
        assert_eq!(resolve_range(100, -1, 100), Ok(100..100));
        for (s, e) in [(-1, -1), (0, -2), (20, 10), (0, 100), (101, -1), (100, 100)] {
            assert!(
                resolve_range(s, e, 100).is_err(),
                "{s}..={e} of 100 was accepted"
            );
        }
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
