//! The read-ahead state machine of one open file (learned from mountpoint-s3's prefetcher
//! and rclone's chunked reader).
//!
//! ```text
//!   read(off, len) ──► Prefetcher::on_read ──► ReadPlan { sequential, seek, read_ahead }
//!                                                   │
//!       first read / seek: fetch only what was asked (one round trip), window = 0
//!       sequential read:   once the stretch has read 4 chunks, the window doubles
//!                          (chunk → … → max_read_ahead); the chunks of
//!                          [end, end + window) are fetched ahead, several at once
//!       seek:              window resets; chunks outside the new position are cancelled
//! ```
//!
//! The kernel issues read-ahead requests concurrently and they may arrive out of order, so a
//! small jump backwards, or a jump forwards that stays inside the window, still counts as
//! sequential.

use std::ops::Range;

/// Chunks a stretch must have read before read-ahead starts.
const STRETCH_BEFORE_READ_AHEAD: u64 = 4;

/// Settings of the prefetcher.
#[derive(Debug, Clone, Copy)]
pub struct PrefetchConfig {
    /// Unit of caching and of read-ahead requests.
    pub chunk_size: u64,
    /// Largest read-ahead window.
    pub max_read_ahead: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            chunk_size: 1 << 20,
            max_read_ahead: 64 << 20,
        }
    }
}

/// What to do for one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// The access pattern is sequential: serve from whole chunks through the cache.
    pub sequential: bool,
    /// This read jumped away from the previous position: cancel read-ahead.
    pub seek: bool,
    /// Bytes to fetch ahead of this read (clipped to the file).
    pub read_ahead: Range<u64>,
}

/// Per-handle prefetch state.
#[derive(Debug, Clone)]
pub struct Prefetcher {
    config: PrefetchConfig,
    /// Where the next sequential read is expected to start.
    next_expected: Option<u64>,
    /// Current read-ahead window in bytes (0 until the pattern looks sequential).
    window: u64,
    /// Where the current sequential stretch began.
    stretch_start: u64,
}

impl Prefetcher {
    /// A prefetcher that has seen no read yet.
    pub fn new(config: PrefetchConfig) -> Self {
        Prefetcher {
            config,
            next_expected: None,
            window: 0,
            stretch_start: 0,
        }
    }

    /// The current window.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// How far around the expected position a read still counts as sequential: the kernel's
    /// reordering stays within its own read-ahead, which is at most our window or a few chunks.
    fn tolerance(&self) -> u64 {
        self.window.max(4 * self.config.chunk_size)
    }

    /// Records a read of `len` bytes at `offset` of a file of `file_size` bytes.
    pub fn on_read(&mut self, offset: u64, len: u64, file_size: u64) -> ReadPlan {
        let end = offset.saturating_add(len).min(file_size);
        let sequential = match self.next_expected {
            Some(expected) => {
                offset.saturating_add(self.tolerance()) >= expected
                    && offset <= expected.saturating_add(self.tolerance())
            }
            None => false,
        };
        let seek = self.next_expected.is_some() && !sequential;
        if sequential {
            // Read-ahead waits until the stretch has read a few chunks: a player reading a
            // couple of MiB after each seek would waste the window.
            if end.saturating_sub(self.stretch_start)
                >= STRETCH_BEFORE_READ_AHEAD * self.config.chunk_size
            {
                self.window = if self.window == 0 {
                    self.config.chunk_size
                } else {
                    (self.window * 2).min(self.config.max_read_ahead)
                }
                .min(self.config.max_read_ahead.max(self.config.chunk_size));
            }
            self.next_expected = Some(self.next_expected.unwrap_or(0).max(end));
        } else {
            self.window = 0;
            self.stretch_start = offset;
            self.next_expected = Some(end);
        }
        let ahead_end = end.saturating_add(self.window).min(file_size);
        ReadPlan {
            sequential,
            seek,
            read_ahead: end..ahead_end.max(end),
        }
    }
}

/// Chunk indices covering a byte range.
pub fn chunks_covering(range: &Range<u64>, chunk_size: u64) -> Range<u64> {
    if range.is_empty() {
        return 0..0;
    }
    range.start / chunk_size..(range.end - 1) / chunk_size + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn cfg() -> PrefetchConfig {
        PrefetchConfig {
            chunk_size: MIB,
            max_read_ahead: 8 * MIB,
        }
    }

    #[test]
    fn first_read_fetches_only_what_it_needs() {
        let mut p = Prefetcher::new(cfg());
        let plan = p.on_read(100 * MIB, 4096, 1 << 40);
        assert!(!plan.sequential && !plan.seek);
        assert!(plan.read_ahead.is_empty());
    }

    #[test]
    fn read_ahead_starts_after_four_chunks_then_doubles_up_to_the_max() {
        let mut p = Prefetcher::new(cfg());
        let windows: Vec<u64> = (0..8)
            .map(|i| {
                let plan = p.on_read(i * MIB, MIB, 1 << 40);
                plan.read_ahead.end - plan.read_ahead.start
            })
            .collect();
        assert_eq!(
            windows,
            vec![0, 0, 0, MIB, 2 * MIB, 4 * MIB, 8 * MIB, 8 * MIB]
        );
    }

    #[test]
    fn a_player_reading_two_mib_after_each_seek_gets_no_read_ahead() {
        let mut p = Prefetcher::new(cfg());
        for jump in 1..10u64 {
            let at = jump * 97 * MIB + 12_345;
            // What the kernel sends for a 2 MiB read: 1 MiB, a page, 1 MiB, and 1 MiB ahead.
            for (off, len) in [
                (at, MIB),
                (at + MIB, 4096),
                (at + MIB + 4096, MIB),
                (at + 2 * MIB + 4096, MIB),
            ] {
                assert!(p.on_read(off, len, 1 << 40).read_ahead.is_empty());
            }
        }
    }

    #[test]
    fn reordered_kernel_reads_keep_the_window() {
        let mut p = Prefetcher::new(cfg());
        for i in 0..5 {
            p.on_read(i * MIB, MIB, 1 << 40);
        }
        let w = p.window();
        // The kernel sends 6 MiB before 5 MiB.
        assert!(p.on_read(6 * MIB, MIB, 1 << 40).sequential);
        assert!(p.on_read(5 * MIB, MIB, 1 << 40).sequential);
        assert!(p.window() >= w);
    }

    #[test]
    fn a_real_seek_resets() {
        let mut p = Prefetcher::new(cfg());
        for i in 0..5 {
            p.on_read(i * MIB, MIB, 1 << 40);
        }
        let plan = p.on_read(500 * MIB, 4096, 1 << 40);
        assert!(plan.seek && !plan.sequential);
        assert!(plan.read_ahead.is_empty());
        assert_eq!(p.window(), 0);
    }

    #[test]
    fn read_ahead_stops_at_the_end_of_the_file() {
        let mut p = Prefetcher::new(cfg());
        for i in 0..3 {
            p.on_read(i * MIB, MIB, 6 * MIB);
        }
        assert_eq!(
            p.on_read(3 * MIB, MIB, 6 * MIB).read_ahead,
            4 * MIB..5 * MIB
        );
        assert_eq!(
            p.on_read(4 * MIB, MIB, 6 * MIB).read_ahead,
            5 * MIB..6 * MIB
        );
        assert!(p.on_read(5 * MIB, MIB, 6 * MIB).read_ahead.is_empty());
    }

    #[test]
    fn chunk_cover() {
        assert_eq!(chunks_covering(&(0..1), MIB), 0..1);
        assert_eq!(chunks_covering(&(MIB - 1..MIB + 1), MIB), 0..2);
        assert_eq!(chunks_covering(&(MIB..2 * MIB), MIB), 1..2);
        assert_eq!(chunks_covering(&(5..5), MIB), 0..0);
    }

    proptest! {
        /// Whatever the read pattern: the window never exceeds the maximum, read-ahead starts
        /// where the read ends and never passes the end of the file.
        #[test]
        fn window_invariants(reads in proptest::collection::vec((0u64..64 * MIB, 1u64..2 * MIB), 1..100), size in 1u64..64 * MIB) {
            let mut p = Prefetcher::new(cfg());
            for (off, len) in reads {
                let plan = p.on_read(off, len, size);
                prop_assert!(p.window() <= 8 * MIB);
                prop_assert!(plan.read_ahead.end <= size.max(plan.read_ahead.start));
                prop_assert_eq!(plan.read_ahead.start, (off + len).min(size));
                if plan.seek { prop_assert_eq!(p.window(), 0); }
            }
        }

        /// Chunks covering a range cover exactly it: the first contains its start, the last its end.
        #[test]
        fn chunk_cover_is_tight(start in 0u64..1 << 40, len in 1u64..1 << 30, cs in 1u64..1 << 24) {
            let r = chunks_covering(&(start..start + len), cs);
            prop_assert!(r.start * cs <= start && start < (r.start + 1) * cs);
            prop_assert!((r.end - 1) * cs < start + len && start + len <= r.end * cs);
        }
    }
}
