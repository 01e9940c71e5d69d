//! The FUSE driver: a testable core ([`core::Fs`]) over the client library and the chunk
//! cache, and a thin [`fuse`] adapter the kernel talks to.
//!
//! - [`core`]: the filesystem's state and operations (lookup, read and write paths);
//!   namespace changes (mkdir, rename, unlink, setattr…) are in `namespace`;
//! - [`inodes`]: inode numbers, attributes and directory listings with a TTL;
//! - [`read`] and [`prefetch`]: pinned-version read handles and adaptive read-ahead;
//! - [`write`](mod@write): write handles (spooled bytes, chunked upload and commit at close);
//! - [`spool`] and [`recovery`]: spool files, their journal, and the copies kept in
//!   `recovery/` when a commit fails or a mount dies;
//! - [`remote`]: what the core needs from the server, as a trait (`mock` and `failing`
//!   are its test doubles);
//! - [`error`]: one error type that carries its errno.

pub mod core;
pub mod error;
#[cfg(test)]
pub mod failing;
pub mod fuse;
pub mod inodes;
#[cfg(test)]
pub mod mock;
mod namespace;
pub mod own_commits;
pub mod prefetch;
pub mod read;
pub mod recovery;
pub mod remote;
pub mod spool;
#[cfg(test)]
mod tests;
pub mod write;

pub use self::core::{Fs, FsConfig};
pub use error::FsError;
pub use recovery::recovery_dir;
