//! The range and chunk size a stream request gets: `[start_offset, end_offset]` resolved
//! against the blob, and the chunk size clamped to the bounds of CONTRACT §3.

use std::ops::Range;

use crate::api::stream::{DEFAULT_STREAM_CHUNK, MAX_STREAM_CHUNK, MIN_STREAM_CHUNK};

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

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..ProptestConfig::default()
        })]

        /// Fuzzing (2,000 cases, moved from tests/hostile_input.rs): an accepted range is
        /// exactly the one asked for and inside the blob; any chunk size is clamped in bounds.
        #[test]
        fn fuzz_resolve_range(
            start in offset(),
            end in offset(),
            size in prop_oneof![3 => 0u64..200, 1 => any::<u64>(), 1 => Just(u64::MAX)],
            chunk in any::<u64>(),
        ) {
            match resolve_range(start, end, size) {
                Ok(r) => {
                    prop_assert!(start >= 0 && end >= -1, "accepted {}..={}", start, end);
                    prop_assert_eq!(r.start, start as u64);
                    prop_assert!(
                        r.start <= r.end && r.end <= size,
                        "{:?} outside a blob of {}",
                        r,
                        size
                    );
                    if end >= 0 {
                        prop_assert_eq!(r.end, end as u64 + 1);
                    } else {
                        prop_assert_eq!(r.end, size);
                    }
                }
                Err(message) => prop_assert!(!message.is_empty()),
            }
            let c = clamp_chunk_size(chunk);
            prop_assert!(
                (1 << 10..=10 << 20).contains(&c),
                "chunk size {} clamped to {}",
                chunk,
                c
            );
        }
    }

    /// Offsets near the edges, and anything.
    fn offset() -> impl Strategy<Value = i64> {
        prop_oneof![
            3 => -3i64..200,
            1 => any::<i64>(),
            1 => prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(-1i64), Just(i64::MAX - 1)],
        ]
    }
}
