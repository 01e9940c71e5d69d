//! Tests of the core against the test doubles, with no server and no kernel: error paths
//! through [`FailingRemote`](super::failing::FailingRemote) ([`faults`]) and a reference-model
//! test of the namespace ([`reftests`]).

use std::path::Path;
use std::time::Duration;

use super::remote::Remote;
use super::{Fs, FsConfig};

mod faults;
mod held;
mod reftests;

/// Settings with a long TTL (the tests see the core's own cache) and `dir` for spools.
fn config(dir: &Path) -> FsConfig {
    FsConfig {
        attr_ttl: Duration::from_secs(60),
        cache_size: 4 << 20,
        cache_dir: dir.to_path_buf(),
        ..FsConfig::default()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// The whole content of file `ino`, through a read handle.
async fn read_all<R: Remote>(fs: &Fs<R>, ino: u64) -> Vec<u8> {
    let (fh, _) = fs.open(ino).await.unwrap();
    let mut out = Vec::new();
    loop {
        let part = fs.read(fh, out.len() as u64, 128 << 10).await.unwrap();
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    fs.release(fh).await;
    out
}

/// The bytes of every copy in `<cache_dir>/recovery/`.
fn recovered(cache_dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(super::recovery_dir(cache_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_none_or(|e| e != "json"))
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}
