//! govcfs: mount a remote, versioned, streaming repository as an ordinary directory.
//!
//! The crate has one module per part of the system, in layers that only look down:
//! - [`base`]: the ground floor (object ids, checksums, repository paths, codecs, times,
//!   sizes); it imports nothing of the crate.
//! - [`api`]: the wire types and error codes shared by server and client, so they cannot
//!   drift apart.
//! - [`store`]: the content-addressed repository model (blobs, trees, commits, refs) on
//!   `object_store`; knows `api` and `base`.
//! - [`server`]: the axum HTTP server (browsable view, JSON API, streams, metrics); knows the
//!   store, `api` and `base`.
//! - [`client`]: the reqwest client library used by the CLI and the mount; knows only `api`
//!   and `base`.
//! - [`cache`]: the byte-bounded chunk LRU of the mount.
//! - [`fs`]: the FUSE driver; knows the client, the cache, `api` and `base`.
//! - [`cli`]: one file per subcommand; may use everything, and nothing uses it.

pub mod api;
pub mod base;
pub mod cache;
pub mod cli;
pub mod client;
pub mod fs;
pub mod server;
pub mod store;
