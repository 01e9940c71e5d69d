//! The chunk cache: immutable chunks `(blob id, chunk index)` in a byte-bounded LRU, with
//! single-flight for misses so concurrent readers of one chunk share one request.
//!
//! Chunks of a blob never change, so the cache needs no invalidation: a new file version is
//! a new blob id, hence new keys; old ones age out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::OnceCell;

/// Key of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// The blob id.
    pub blob: Arc<str>,
    /// The chunk index (offset / chunk size).
    pub index: u64,
}

/// Counters of the cache, for the stats line.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: AtomicU64,
    /// Lookups that needed a fetch (their own or a shared one).
    pub misses: AtomicU64,
    /// Fetches actually run.
    pub fetches: AtomicU64,
    /// Bytes fetched.
    pub bytes_fetched: AtomicU64,
    /// Chunks evicted before anyone read them (prefetch waste).
    pub evicted_unread: AtomicU64,
}

type Flight<E> = Arc<OnceCell<Result<Bytes, E>>>;

struct Entry {
    data: Bytes,
    /// Whether a reader used it (a prefetched chunk evicted unread was wasted).
    read: bool,
}

struct State<E> {
    lru: LruCache<ChunkKey, Entry>,
    bytes: u64,
    in_flight: HashMap<ChunkKey, Flight<E>>,
}

/// A byte-bounded LRU of chunks with single-flight fetches. `E` is the fetch error type.
pub struct ChunkCache<E> {
    capacity: u64,
    state: Mutex<State<E>>,
    /// Counters.
    pub stats: CacheStats,
}

impl<E: Clone + Send + Sync + 'static> ChunkCache<E> {
    /// A cache holding at most `capacity` bytes of chunk data.
    pub fn new(capacity: u64) -> Self {
        ChunkCache {
            capacity,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
                in_flight: HashMap::new(),
            }),
            stats: CacheStats::default(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.state.lock().expect("cache lock").bytes
    }

    /// The chunk if it is cached (counts as a hit, or as nothing when absent).
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        let mut state = self.state.lock().expect("cache lock");
        let entry = state.lru.get_mut(key)?;
        entry.read = true;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.data.clone())
    }

    /// Whether the chunk is cached or being fetched.
    pub fn is_present_or_pending(&self, key: &ChunkKey) -> bool {
        let state = self.state.lock().expect("cache lock");
        state.lru.contains(key) || state.in_flight.contains_key(key)
    }

    /// Inserts a chunk, evicting the least recently used ones beyond the capacity.
    pub fn insert(&self, key: ChunkKey, data: Bytes, read: bool) {
        let mut state = self.state.lock().expect("cache lock");
        let len = data.len() as u64;
        if let Some(old) = state.lru.put(key, Entry { data, read }) {
            state.bytes -= old.data.len() as u64;
        }
        state.bytes += len;
        while state.bytes > self.capacity {
            let Some((_, evicted)) = state.lru.pop_lru() else {
                break;
            };
            state.bytes -= evicted.data.len() as u64;
            if !evicted.read {
                self.stats.evicted_unread.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Returns the chunk, fetching it with `fetch` on a miss. Concurrent callers for the same
    /// key share one fetch. `for_reader` is false for prefetches (for the waste counter).
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: &ChunkKey,
        for_reader: bool,
        fetch: F,
    ) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let flight = {
            let mut state = self.state.lock().expect("cache lock");
            if let Some(entry) = state.lru.get_mut(key) {
                entry.read |= for_reader;
                if for_reader {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(entry.data.clone());
            }
            if for_reader {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
            }
            state.in_flight.entry(key.clone()).or_default().clone()
        };
        let result = flight
            .get_or_init(|| async {
                self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                let result = fetch().await;
                if let Ok(data) = &result {
                    self.stats
                        .bytes_fetched
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.insert(key.clone(), data.clone(), for_reader);
                }
                result
            })
            .await
            .clone();
        {
            let mut state = self.state.lock().expect("cache lock");
            if state
                .in_flight
                .get(key)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                state.in_flight.remove(key);
            }
            if for_reader {
                if let Some(entry) = state.lru.peek_mut(key) {
                    entry.read = true;
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64) -> ChunkKey {
        ChunkKey {
            blob: Arc::from("b"),
            index: i,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let cache: Arc<ChunkCache<String>> = Arc::new(ChunkCache::new(1 << 20));
        let calls = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&key(1), true, || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok(Bytes::from_static(b"data"))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Bytes::from_static(b"data"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache: ChunkCache<String> = ChunkCache::new(1 << 20);
        let r = cache
            .get_or_fetch(&key(1), true, || async { Err("boom".to_string()) })
            .await;
        assert!(r.is_err());
        let r = cache
            .get_or_fetch(&key(1), true, || async { Ok(Bytes::from_static(b"ok")) })
            .await;
        assert_eq!(r.unwrap(), Bytes::from_static(b"ok"));
    }

    #[test]
    fn unread_evictions_count_as_waste() {
        let cache: ChunkCache<String> = ChunkCache::new(10);
        cache.insert(key(0), Bytes::from(vec![0; 6]), false);
        cache.insert(key(1), Bytes::from(vec![0; 6]), true);
        assert_eq!(cache.stats.evicted_unread.load(Ordering::Relaxed), 1);
        assert!(cache.get(&key(0)).is_none());
        assert!(cache.get(&key(1)).is_some());
    }

    proptest! {
        /// Whatever is inserted, the cache never holds more than its capacity, and what it
        /// returns is what was inserted last under that key.
        #[test]
        fn bounded_and_faithful(ops in proptest::collection::vec((0u64..16, 0usize..300), 1..200)) {
            let cache: ChunkCache<String> = ChunkCache::new(1000);
            let mut last = std::collections::HashMap::new();
            for (i, len) in ops {
                let data = Bytes::from(vec![(i as u8).wrapping_add(len as u8); len]);
                cache.insert(key(i), data.clone(), false);
                last.insert(i, data);
                prop_assert!(cache.bytes() <= 1000);
            }
            for (i, data) in last {
                if let Some(got) = cache.get(&key(i)) {
                    prop_assert_eq!(got, data);
                }
            }
        }
    }
}
