//! govcfs: mount a remote, versioned, streaming repository as an ordinary directory.
//!
//! The crate has one module per part of the system:
//! - [`store`]: the content-addressed repository model (blobs, trees, commits, refs) on
//!   `object_store`.
//! - [`server`]: the axum HTTP server (browsable view, JSON API, metrics).
//! - [`client`]: the reqwest client library used by the CLI and the mount.
//! - [`api`]: the wire types shared by server and client, so they cannot drift apart.
//! - [`cli`]: one file per subcommand.

pub mod api;
pub mod base;
pub mod cache;
pub mod cli;
pub mod client;
pub mod fs;
pub mod server;

pub mod store;
