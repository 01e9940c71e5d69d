//! Binary size units and the throughput figure the tests print.
//!
//! The units are `u64` (file sizes, offsets and wire lengths); a buffer length takes
//! `MIB as usize`.

use std::time::Duration;

/// 1024 bytes.
pub const KIB: u64 = 1 << 10;
/// 1024 KiB.
pub const MIB: u64 = 1 << 20;
/// 1024 MiB.
pub const GIB: u64 = 1 << 30;

/// Throughput in MiB/s (informational figures only: no test asserts on time).
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}
