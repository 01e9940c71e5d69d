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

/// A put of blob `hash` at `path`, with a fixed mtime (so that trees do not depend on when
/// they were built).
pub(crate) fn put(path: &str, hash: &str) -> crate::api::Change {
    crate::api::Change::Put {
        path: path.into(),
        hash: hash.into(),
        mode: None,
        mtime: Some(1),
        expect: None,
    }
}

/// A delete of `path`.
pub(crate) fn delete(path: &str) -> crate::api::Change {
    crate::api::Change::Delete {
        path: path.into(),
        expect: None,
    }
}

/// Commits `changes` to `main` of the `default` repository and returns the new root tree id.
pub(crate) async fn commit(store: &Store, changes: Vec<crate::api::Change>) -> String {
    let request = crate::api::CommitRequest {
        branch: None,
        message: "test".into(),
        changes,
    };
    store.commit("default", &request).await.unwrap();
    store.resolve("default", None).await.unwrap().tree
}

/// A blob of `data` in the `default` repository; its id.
pub(crate) async fn blob(store: &Store, data: &'static [u8]) -> String {
    store
        .put_blob_bytes("default", bytes::Bytes::from_static(data))
        .await
        .unwrap()
        .hash
}
