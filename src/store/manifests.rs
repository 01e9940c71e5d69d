//! Blob manifests in the store: written once, after every chunk they name is durable, under
//! the blob id (`repos/<repo>/manifests/<id[0..2]>/<id>`), and kept decoded in a cache
//! bounded by the chunk hashes it holds (manifests are immutable, so it never goes stale).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;

use super::{Backend, Result, StoreError};
use crate::base::manifest::Manifest;

/// Chunk hashes the cache may hold (32 bytes each: 8 MiB; a 1 GiB blob has 256).
const CACHED_CHUNK_HASHES: usize = 256 * 1024;

/// Where the manifest of blob `id` is kept.
pub(crate) fn manifest_path(repo: &str, id: &str) -> Path {
    Path::from(format!("repos/{repo}/manifests/{}/{id}", &id[..2]))
}

/// Decoded manifests by (repository, blob id).
pub(crate) struct ManifestCache {
    lru: lru::LruCache<(String, String), Arc<Manifest>>,
    hashes: usize,
}

impl ManifestCache {
    pub(crate) fn new() -> Self {
        ManifestCache {
            lru: lru::LruCache::unbounded(),
            hashes: 0,
        }
    }

    pub(crate) fn get(&mut self, repo: &str, id: &str) -> Option<Arc<Manifest>> {
        self.lru.get(&(repo.to_string(), id.to_string())).cloned()
    }

    pub(crate) fn put(&mut self, repo: &str, id: &str, manifest: Arc<Manifest>) {
        self.hashes += manifest.chunks.len() + 1;
        let key = (repo.to_string(), id.to_string());
        if let Some(old) = self.lru.put(key, manifest) {
            self.hashes -= old.chunks.len() + 1;
        }
        while self.hashes > CACHED_CHUNK_HASHES && self.lru.len() > 1 {
            let Some((_, evicted)) = self.lru.pop_lru() else {
                break;
            };
            self.hashes -= evicted.chunks.len() + 1;
        }
    }
}

/// Writes the manifest of a blob durably; returns the blob id.
pub(crate) async fn write_manifest(
    backend: &Backend,
    repo: &str,
    manifest: &Manifest,
) -> Result<String> {
    let id = manifest.id();
    let path = manifest_path(repo, &id);
    if backend.size(&path).await?.is_none() {
        backend.put(&path, Bytes::from(manifest.encode())).await?;
    }
    Ok(id)
}

/// Reads and checks the manifest of blob `id`; `None` if the repository has none (a legacy
/// blob, or no blob at all).
pub(crate) async fn read_manifest(
    backend: &Backend,
    repo: &str,
    id: &str,
) -> Result<Option<Manifest>> {
    let Some(bytes) = backend.get_opt(&manifest_path(repo, id)).await? else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        id: id.to_string(),
        reason,
    };
    let manifest = Manifest::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if manifest.id() != id {
        return Err(corrupt("the manifest does not hash to the blob id".into()));
    }
    Ok(Some(manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_by_chunk_hashes() {
        let mut cache = ManifestCache::new();
        let big = Arc::new(Manifest::new(0, vec![[1; 32]; CACHED_CHUNK_HASHES / 2]));
        cache.put("r", "a", big.clone());
        cache.put("r", "b", big.clone());
        cache.put("r", "c", big);
        assert!(cache.get("r", "a").is_none(), "the oldest is evicted");
        assert!(cache.get("r", "c").is_some());
        assert!(cache.hashes <= CACHED_CHUNK_HASHES);
    }

    #[tokio::test]
    async fn a_manifest_that_does_not_hash_to_its_id_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let m = Manifest::new(3, vec![crate::base::manifest::chunk_hash(b"abc")]);
        let id = write_manifest(&backend, "r", &m).await.unwrap();
        assert_eq!(read_manifest(&backend, "r", &id).await.unwrap(), Some(m));
        let other = "0".repeat(64);
        assert_eq!(read_manifest(&backend, "r", &other).await.unwrap(), None);
        let wrong = Manifest::new(0, Vec::new());
        backend
            .put(&manifest_path("r", &other), Bytes::from(wrong.encode()))
            .await
            .unwrap();
        assert!(matches!(
            read_manifest(&backend, "r", &other).await,
            Err(StoreError::Corrupt { .. })
        ));
    }
}
