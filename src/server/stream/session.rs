//! One stream session: a blob range cut into chunks, what it has served, and how it stands.
//! The table that holds sessions is [`super::table`].

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rangemap::RangeInclusiveSet;

use crate::api::stream::StreamProgress;

/// How often an instance sharing a bucket looks for a cancellation made through another.
pub const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// How a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Chunks remain to be served.
    Streaming,
    /// Every chunk was served at least once.
    Completed,
    /// Cancelled by its client.
    Cancelled,
    /// Unused for longer than the stream timeout.
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
    /// The session id (signed on a shared store, see [`super::token`]).
    pub id: String,
    /// The repository of the blob.
    pub repo: String,
    /// The blob id.
    pub hash: String,
    /// Size of the whole blob.
    pub blob_size: u64,
    /// The range in the blob (end exclusive here).
    pub range: Range<u64>,
    /// Bytes per chunk (the last one may be shorter).
    pub chunk_size: u64,
    /// Whether chunks may be sent compressed.
    pub gzip: bool,
    /// The client that opened it.
    pub(super) owner: Option<std::net::IpAddr>,
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
    pub(super) fn new(
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

    /// Marks it cancelled: later chunk requests are refused.
    pub(super) fn mark_cancelled(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// How long it has been unused.
    pub(super) fn idle_for(&self) -> Duration {
        self.last_used.lock().expect("session lock").elapsed()
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

    /// Marks the session as used now (its idle time starts again).
    pub(super) fn touch(&self) {
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

    pub(super) fn status(&self) -> Status {
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

    /// Its progress, reported with `status` (the end it is retired with).
    pub(super) fn progress_as(&self, status: Status) -> StreamProgress {
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
