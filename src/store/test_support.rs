//! Shared by the store's unit tests: a store on a temporary directory and patterned bytes.

use super::{Backend, Store};

/// A store on a fresh temporary directory (removed when the `TempDir` is dropped).
pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Backend::local(dir.path()).unwrap())
        .await
        .unwrap();
    (dir, store)
}

/// `len` deterministic bytes that differ with `seed` and repeat only every 256 bytes.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}
