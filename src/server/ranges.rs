//! RFC 7233 / 7232 handling of `Range`, `If-Range` and `If-None-Match` for one
//! immutable representation (a blob, whose ETag is its id). Parsing is `http-range-header`'s.

use std::ops::Range;

use axum::http::{header, HeaderMap};

/// What to send for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole body.
    Full,
    /// 206 with this byte range.
    Partial(Range<u64>),
    /// 304: the client's copy is current.
    NotModified,
    /// 416: the range lies outside the body.
    Unsatisfiable,
}

/// Decides how to answer a GET of a body of `len` bytes with the quoted `etag`.
pub fn plan(headers: &HeaderMap, len: u64, etag: &str) -> Plan {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm
            .split(',')
            .any(|t| t.trim() == "*" || strip_weak(t.trim()) == etag)
        {
            return Plan::NotModified;
        }
    }
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Plan::Full;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        // A date validator or another tag: the client's partial copy is stale, send it all.
        if if_range.trim() != etag {
            return Plan::Full;
        }
    }
    if is_reversed(range) {
        // `bytes=5-3` is not a valid range-spec: the header is ignored (RFC 7233 §2.1).
        return Plan::Full;
    }
    use http_range_header::RangeUnsatisfiableError as Unsatisfiable;
    match http_range_header::parse_range_header(range) {
        // An unparseable Range header is ignored (RFC 7233 §3.1).
        Err(_) => Plan::Full,
        // Nothing of an empty body can be selected.
        Ok(_) if len == 0 => Plan::Unsatisfiable,
        Ok(parsed) => match parsed.validate(len) {
            Ok(ranges) if ranges.len() == 1 => {
                let r = &ranges[0];
                Plan::Partial(*r.start()..r.end() + 1)
            }
            // Multiple ranges would need multipart/byteranges; ignoring Range is allowed.
            Ok(_) => Plan::Full,
            // A suffix longer than the body selects all of it (RFC 7233 §2.1).
            Err(Unsatisfiable::FileSuffixOutOfBounds) if !range.contains(',') => {
                Plan::Partial(0..len)
            }
            // A set of several ranges is ignored (as above) unless none of them can be served.
            Err(_) if range.contains(',') && any_part_satisfiable(range, len) => Plan::Full,
            Err(_) => Plan::Unsatisfiable,
        },
    }
}

/// Whether any one range of a multi-range `bytes=…` header selects something of `len` bytes.
fn any_part_satisfiable(header: &str, len: u64) -> bool {
    let Some(set) = header.trim().strip_prefix("bytes=") else {
        return false;
    };
    set.split(',').any(|part| {
        http_range_header::parse_range_header(&format!("bytes={}", part.trim()))
            .is_ok_and(|p| p.validate(len).is_ok())
    })
}

/// Whether a single `bytes=FIRST-LAST` spec has LAST < FIRST.
fn is_reversed(header: &str) -> bool {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return false;
    };
    if spec.contains(',') {
        return false;
    }
    match spec.split_once('-') {
        Some((a, b)) => match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
            (Ok(first), Ok(last)) => last < first,
            _ => false,
        },
        None => false,
    }
}

fn strip_weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn edge_cases() {
        let tag = "\"abc\"";
        assert_eq!(plan(&headers(&[]), 10, tag), Plan::Full);
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=0-0")]), 10, tag),
            Plan::Partial(0..1)
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=5-")]), 10, tag),
            Plan::Partial(5..10)
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=-3")]), 10, tag),
            Plan::Partial(7..10)
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=8-100")]), 10, tag),
            Plan::Partial(8..10)
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=10-")]), 10, tag),
            Plan::Unsatisfiable
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=0-1,4-5")]), 10, tag),
            Plan::Full
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "pages=1")]), 10, tag),
            Plan::Full
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=5-3")]), 10, tag),
            Plan::Full
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=-100")]), 10, tag),
            Plan::Partial(0..10)
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=0-")]), 0, tag),
            Plan::Unsatisfiable
        );
        assert_eq!(
            plan(&headers(&[(header::RANGE, "bytes=-5")]), 0, tag),
            Plan::Unsatisfiable
        );
        assert_eq!(
            plan(&headers(&[(header::IF_NONE_MATCH, tag)]), 10, tag),
            Plan::NotModified
        );
        assert_eq!(
            plan(&headers(&[(header::IF_NONE_MATCH, "\"zzz\"")]), 10, tag),
            Plan::Full
        );
        assert_eq!(
            plan(
                &headers(&[(header::RANGE, "bytes=1-2"), (header::IF_RANGE, tag)]),
                10,
                tag
            ),
            Plan::Partial(1..3)
        );
        assert_eq!(
            plan(
                &headers(&[(header::RANGE, "bytes=1-2"), (header::IF_RANGE, "\"old\"")]),
                10,
                tag
            ),
            Plan::Full
        );
    }

    proptest! {
        #[test]
        fn every_satisfiable_range_is_inside_the_body(len in 0u64..10_000, a in 0u64..12_000, b in 0u64..12_000) {
            let (start, end) = (a.min(b), a.max(b));
            let h = headers(&[(header::RANGE, &format!("bytes={start}-{end}"))]);
            match plan(&h, len, "\"t\"") {
                Plan::Partial(r) => {
                    prop_assert_eq!(r.start, start);
                    prop_assert_eq!(r.end, (end + 1).min(len));
                }
                Plan::Unsatisfiable => prop_assert!(start >= len),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
