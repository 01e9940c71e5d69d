//! The ground floor: object ids, chunked-blob manifests, checksums, repository paths, codecs, direct writes, times and sizes.
//!
//! Every other layer stands on it and it imports nothing of the crate, so the client, the
//! mount, the server and the store share one definition of each of these without reaching
//! into each other.

pub mod checksum;
pub mod codec;
pub mod direct_io;
pub mod ids;
pub mod manifest;
pub mod modes;
pub mod paths;
pub mod size;
pub mod time;
