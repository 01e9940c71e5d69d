//! What the mount asks of the kernel at `init` (capabilities, request sizes, background
//! requests) and what it reports about the volume (`statfs`).

use fuser::{InitFlags, KernelConfig, ReplyStatfs};

/// `st_blksize` reported for every file: large, so `cp` and `cat` use large reads.
pub(super) const BLOCK_SIZE: u32 = 1 << 20;
/// Largest read and write request the kernel is asked to send.
const MAX_IO: u32 = 1 << 20;

/// Capabilities the mount asks for; a kernel without one still mounts, with a log line.
const CAPABILITIES: [InitFlags; 7] = [
    InitFlags::FUSE_DO_READDIRPLUS,
    InitFlags::FUSE_READDIRPLUS_AUTO,
    InitFlags::FUSE_AUTO_INVAL_DATA,
    InitFlags::FUSE_PARALLEL_DIROPS,
    InitFlags::FUSE_ASYNC_READ,
    InitFlags::FUSE_MAX_PAGES,
    InitFlags::FUSE_BIG_WRITES,
];

/// Negotiates the session's settings at `init`.
pub(super) fn configure(config: &mut KernelConfig) {
    for flag in CAPABILITIES {
        if config.add_capabilities(flag).is_err() {
            log::debug!("kernel lacks {flag:?}");
        }
    }
    if let Err(max) = config.set_max_readahead(MAX_IO) {
        let _ = config.set_max_readahead(max);
    }
    if let Err(max) = config.set_max_write(MAX_IO) {
        let _ = config.set_max_write(max);
    }
    // Enough concurrent kernel read-ahead requests to keep several chunk fetches busy;
    // more would only add memory in flight.
    let _ = config.set_max_background(32);
    let _ = config.set_congestion_threshold(24);
}

/// Answers `statfs`. A remote repository has no fixed capacity: report a large, mostly free
/// volume so tools that check free space before copying do not refuse.
pub(super) fn reply_statfs(reply: ReplyStatfs) {
    reply.statfs(
        1 << 32,
        1 << 31,
        1 << 31,
        1 << 24,
        1 << 23,
        BLOCK_SIZE,
        255,
        4096,
    );
}
