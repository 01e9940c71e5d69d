//! Times: seconds since the Unix epoch, and their HTTP form.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The last second HTTP dates (and most tools) can show: 9999-12-31T23:59:59Z.
pub const MAX_MTIME: i64 = 253_402_300_799;

/// An mtime as an HTTP date (`Last-Modified`), clamped to `0..=MAX_MTIME`: HTTP dates cannot
/// be before 1970, and `httpdate` panics past year 9999.
pub fn http_date(mtime: i64) -> String {
    let seconds = mtime.clamp(0, MAX_MTIME) as u64;
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_clamped() {
        assert_eq!(http_date(-5), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(86_400), "Fri, 02 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert!(now_unix() > 1_700_000_000);
    }
}
