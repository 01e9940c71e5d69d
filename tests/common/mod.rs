//! Shared helpers of the integration tests, one module per concern; everything is
//! re-exported here, so a test file uses them with `mod common;` and `use common::*;`.
//!
//! Every helper is bounded in time: nothing here can hang a test run forever. Processes are
//! only ever signalled by their own PID.

// Each test binary uses a part of them.
#![allow(dead_code, unused_imports)]

pub mod data;
pub mod http;
pub mod process;
pub mod s3;
pub mod server;
pub mod units;
pub mod upload;
pub mod ws;

pub use data::*;
pub use http::*;
pub use process::*;
pub use server::*;
pub use units::*;
pub use upload::*;
pub use ws::*;
