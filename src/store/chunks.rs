//! Chunk objects: the immutable, content-addressed pieces blobs are made of.
//!
//! A chunk is stored once per repository under the SHA-256 of its bytes
//! (`repos/<repo>/chunks/<h[0..2]>/<h>`), whatever number of blobs and versions hold it.
//! Beside it, `<h>.crc` has the CRC32C of each aligned 1 MiB block of the chunk (4 bytes,
//! big-endian, each), so the server answers the mount's block reads with a checksum without
//! hashing the bytes again. The chunk itself is written durably (fsynced, renamed into
//! place), so it is visible under its hash only once complete; its CRC file is scratch: one
//! lost or cut short in a crash is detected and the reader falls back to hashing.

use bytes::Bytes;
use object_store::path::Path;

use super::index::INDEX_BLOCK;
use super::{Backend, Result, StoreError};
use crate::base::manifest::{chunk_hash, ChunkHash, CHUNK_SIZE};

/// Where chunk `hash` of `repo` is kept.
pub(crate) fn chunk_path(repo: &str, hash: &ChunkHash) -> Path {
    let hex = hex::encode(hash);
    Path::from(format!("repos/{repo}/chunks/{}/{hex}", &hex[..2]))
}

/// Where the block CRCs of chunk `hash` are kept.
fn crc_path(repo: &str, hash: &ChunkHash) -> Path {
    let hex = hex::encode(hash);
    Path::from(format!("repos/{repo}/chunks/{}/{hex}.crc", &hex[..2]))
}

/// A chunk the repository holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredChunk {
    /// SHA-256 of its bytes.
    pub hash: ChunkHash,
    /// Its length.
    pub len: u64,
}

/// The SHA-256 of a chunk and the CRC32C of each of its 1 MiB blocks, computed in one pass
/// over the bytes (on a blocking thread: 4 MiB takes milliseconds).
async fn hash_chunk(data: Bytes) -> Result<(ChunkHash, Vec<u8>)> {
    tokio::task::spawn_blocking(move || hash_and_crc(&data))
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))
}

fn hash_and_crc(data: &[u8]) -> (ChunkHash, Vec<u8>) {
    let hash = chunk_hash(data);
    let crcs = data
        .chunks(INDEX_BLOCK as usize)
        .flat_map(|block| crate::base::checksum::crc32c(block).to_be_bytes())
        .collect();
    (hash, crcs)
}

/// Hashes `data` and stores it as a chunk of `repo` unless the repository has it already.
pub(crate) async fn store_chunk(backend: &Backend, repo: &str, data: Bytes) -> Result<StoredChunk> {
    if data.len() as u64 > CHUNK_SIZE {
        return Err(StoreError::InvalidInput(format!(
            "a chunk of {} bytes is larger than {CHUNK_SIZE}",
            data.len()
        )));
    }
    let len = data.len() as u64;
    let (hash, crcs) = hash_chunk(data.clone()).await?;
    let path = chunk_path(repo, &hash);
    // On object storage a HEAD costs a round trip and a put of the same bytes is harmless:
    // write it; on a local directory a stat spares rewriting and fsyncing a held chunk.
    if backend.is_shared() || backend.size(&path).await? != Some(len) {
        // The CRCs first, so a visible chunk has them.
        backend
            .put_scratch(&crc_path(repo, &hash), Bytes::from(crcs))
            .await?;
        backend.put_immutable(&path, data).await?;
    }
    Ok(StoredChunk { hash, len })
}

/// Chunks up to this size are hashed on the calling thread: a hop to a blocking thread
/// costs more than hashing them.
const HASH_IN_PLACE: usize = 256 << 10;

/// A small chunk ready to be stored with a commit (see [`Backend::commit`]): its hash, and
/// the objects to write. A chunk of more than one block has its block CRCs written first, so
/// a visible chunk has them; a chunk of one block needs none: a read of it is answered with
/// its SHA-256 (its name), or the MD5 of the bytes, hashed in microseconds.
pub(crate) async fn prepare_chunk(
    repo: &str,
    data: Bytes,
) -> Result<(StoredChunk, Vec<(Path, Bytes)>)> {
    let len = data.len() as u64;
    let (hash, crcs) = if data.len() <= HASH_IN_PLACE {
        hash_and_crc(&data)
    } else {
        hash_chunk(data.clone()).await?
    };
    let mut objects = Vec::with_capacity(2);
    if len > INDEX_BLOCK {
        objects.push((crc_path(repo, &hash), Bytes::from(crcs)));
    }
    objects.push((chunk_path(repo, &hash), data));
    Ok((StoredChunk { hash, len }, objects))
}

/// The length of chunk `hash` of `repo`, `None` if the repository does not hold it.
pub(crate) async fn chunk_len(
    backend: &Backend,
    repo: &str,
    hash: &ChunkHash,
) -> Result<Option<u64>> {
    backend.size(&chunk_path(repo, hash)).await
}

/// The CRC32C of block `block` of a chunk, if its CRC file has it.
pub(crate) async fn block_crc(
    backend: &Backend,
    repo: &str,
    hash: &ChunkHash,
    block: u64,
) -> Option<u32> {
    let start = block * 4;
    let entry = backend
        .get_range(&crc_path(repo, hash), start..start + 4)
        .await
        .ok()?;
    // What a crash leaves of an unsynced file may be zeros: no entry.
    let bytes: [u8; 4] = entry.as_ref().try_into().ok()?;
    (bytes != [0; 4]).then(|| u32::from_be_bytes(bytes))
}

/// Reads `range` (chunk-relative) of a chunk; a missing chunk is a corrupt blob.
pub(crate) async fn read_chunk_range(
    backend: &Backend,
    repo: &str,
    blob: &str,
    hash: &ChunkHash,
    range: std::ops::Range<u64>,
) -> Result<Bytes> {
    match backend.get_range(&chunk_path(repo, hash), range).await {
        Err(StoreError::Backend(object_store::Error::NotFound { .. })) => {
            Err(missing_chunk(blob, hash))
        }
        other => other,
    }
}

/// The error of a blob whose chunk is gone.
pub(crate) fn missing_chunk(blob: &str, hash: &ChunkHash) -> StoreError {
    StoreError::Corrupt {
        id: blob.to_string(),
        reason: format!("chunk {} is missing", hex::encode(hash)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_chunk_is_stored_once_under_its_hash_with_its_block_crcs() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let data: Vec<u8> = (0..(INDEX_BLOCK as usize + 10))
            .map(|i| (i % 253) as u8)
            .collect();
        let stored = store_chunk(&backend, "r", Bytes::from(data.clone()))
            .await
            .unwrap();
        assert_eq!(stored.hash, chunk_hash(&data));
        assert_eq!(
            chunk_len(&backend, "r", &stored.hash).await.unwrap(),
            Some(data.len() as u64)
        );
        let second = crate::base::checksum::crc32c(&data[INDEX_BLOCK as usize..]);
        assert_eq!(
            block_crc(&backend, "r", &stored.hash, 1).await,
            Some(second)
        );
        assert_eq!(block_crc(&backend, "r", &stored.hash, 2).await, None);
        let again = store_chunk(&backend, "r", Bytes::from(data)).await.unwrap();
        assert_eq!(again, stored);
        assert_eq!(
            chunk_len(&backend, "other", &stored.hash).await.unwrap(),
            None
        );
        let range = read_chunk_range(&backend, "r", "blob", &stored.hash, 5..9)
            .await
            .unwrap();
        assert_eq!(&range[..], &[5, 6, 7, 8]);
        let gone = read_chunk_range(&backend, "r", "blob", &[9; 32], 0..1).await;
        assert!(matches!(gone, Err(StoreError::Corrupt { .. })), "{gone:?}");
    }

    #[tokio::test]
    async fn a_chunk_over_the_chunk_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path()).unwrap();
        let big = Bytes::from(vec![0u8; CHUNK_SIZE as usize + 1]);
        assert!(matches!(
            store_chunk(&backend, "r", big).await,
            Err(StoreError::InvalidInput(_))
        ));
    }
}
