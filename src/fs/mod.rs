//! The FUSE driver: a testable core ([`core::Fs`]) over the client library and the chunk
//! cache, and a thin [`fuse`] adapter the kernel talks to.
//!
//! - [`inodes`]: inode numbers, attributes and directory listings with a TTL;
//! - [`read`] and [`prefetch`]: pinned-version read handles and adaptive read-ahead;
//! - [`remote`]: what the core needs from the server, as a trait ([`mock`] for tests);
//! - [`error`]: one error type that carries its errno.

pub mod core;
pub mod error;
pub mod fuse;
pub mod inodes;
pub mod mock;
mod namespace;
pub mod prefetch;
pub mod read;
pub mod remote;
pub mod spool;
pub mod write;

pub use self::core::{Fs, FsConfig};
pub use error::FsError;
