//! Uploads on a temporary local store: aligned uploads store chunks on arrival and complete
//! from their records, chunks named by hash or copied from a blob move no bytes, and other
//! chunk sizes are cut into chunks at `complete`.

use bytes::Bytes;

use super::ChunkChecks;
use crate::base::manifest::{blob_id, chunk_hash, CHUNK_SIZE};
use crate::store::test_support::{pattern, temp_store};
use crate::store::{Store, StoreError};

async fn put(store: &Store, id: &str, index: u64, data: &[u8]) -> Result<(), StoreError> {
    let bytes = Bytes::copy_from_slice(data);
    store
        .put_upload_chunk(
            "default",
            id,
            index,
            bytes,
            ChunkChecks::default(),
            u64::MAX,
        )
        .await
}

fn chunk_file(dir: &tempfile::TempDir, data: &[u8]) -> std::path::PathBuf {
    let hex = hex::encode(chunk_hash(data));
    dir.path()
        .join(format!("repos/default/chunks/{}/{hex}", &hex[..2]))
}

#[tokio::test]
async fn an_aligned_upload_stores_chunks_on_arrival_and_completes_from_records() {
    let (dir, store) = temp_store().await;
    let data = pattern(2 * CHUNK_SIZE as usize + 77, 1);
    let cs = CHUNK_SIZE as usize;
    let up = store.start_upload("default", None).await.unwrap();
    assert_eq!(up.chunk_size, CHUNK_SIZE);
    put(&store, &up.upload_id, 1, &data[cs..2 * cs])
        .await
        .unwrap();
    assert!(
        chunk_file(&dir, &data[cs..2 * cs]).exists(),
        "stored on arrival"
    );
    put(&store, &up.upload_id, 0, &data[..cs]).await.unwrap();
    put(&store, &up.upload_id, 2, &data[2 * cs..])
        .await
        .unwrap();
    let status = store.upload_status("default", &up.upload_id).await.unwrap();
    assert_eq!(
        (status.received, status.bytes),
        (vec![0, 1, 2], data.len() as u64)
    );
    let info = store
        .complete_upload("default", &up.upload_id, u64::MAX)
        .await
        .unwrap();
    assert_eq!((info.hash.clone(), info.chunks), (blob_id(&data), 3));
    let back = store
        .read_blob_range("default", &info.hash, 0..data.len() as u64)
        .await
        .unwrap();
    assert_eq!(back, data);
}

#[tokio::test]
async fn chunks_named_by_hash_or_copied_from_a_blob_move_no_bytes() {
    let (_dir, store) = temp_store().await;
    let cs = CHUNK_SIZE as usize;
    let old = pattern(2 * cs + 10, 2);
    let old_blob = store
        .put_blob_bytes("default", Bytes::from(old.clone()))
        .await
        .unwrap();
    let first = chunk_hash(&old[..cs]);
    let absent = chunk_hash(b"never stored");
    assert_eq!(
        store
            .missing_chunks("default", &[first, absent])
            .await
            .unwrap(),
        vec![absent]
    );
    // New version: chunk 0 by hash, chunk 1 copied from the old blob, chunk 2 new bytes.
    let up = store.start_upload("default", None).await.unwrap();
    let id = up.upload_id.as_str();
    let len = store
        .reference_upload_chunk("default", id, 0, &[first], u64::MAX)
        .await
        .unwrap();
    assert_eq!(len, CHUNK_SIZE);
    let missing = store
        .reference_upload_chunk("default", id, 2, &[absent], u64::MAX)
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    let copied = store
        .copy_upload_chunks("default", id, (1, 1), &old_blob.hash, u64::MAX)
        .await
        .unwrap();
    assert_eq!(copied, CHUNK_SIZE);
    put(&store, id, 2, b"a new tail").await.unwrap();
    let info = store
        .complete_upload("default", id, u64::MAX)
        .await
        .unwrap();
    let mut want = old[..2 * cs].to_vec();
    want.extend_from_slice(b"a new tail");
    assert_eq!(info.hash, blob_id(&want));
}

#[tokio::test]
async fn an_unaligned_upload_is_cut_into_chunks_at_complete() {
    let (_dir, store) = temp_store().await;
    let data = pattern(CHUNK_SIZE as usize + 3 * (1 << 20) + 5, 3);
    let up = store.start_upload("default", Some(3 << 20)).await.unwrap();
    assert_eq!(up.chunk_size, 3 << 20);
    for (index, piece) in data.chunks(3 << 20).enumerate() {
        put(&store, &up.upload_id, index as u64, piece)
            .await
            .unwrap();
    }
    let refused = store
        .reference_upload_chunk("default", &up.upload_id, 0, &[chunk_hash(b"x")], u64::MAX)
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidInput(_))),
        "{refused:?}"
    );
    let info = store
        .complete_upload("default", &up.upload_id, u64::MAX)
        .await
        .unwrap();
    assert_eq!((info.hash.clone(), info.chunks), (blob_id(&data), 2));
}

#[tokio::test]
async fn a_chunk_whose_checksum_does_not_match_is_refused() {
    let (_dir, store) = temp_store().await;
    let up = store.start_upload("default", None).await.unwrap();
    let bytes = Bytes::from_static(b"some bytes");
    let crc = crate::base::checksum::crc32c_hex(b"other bytes");
    let checks = ChunkChecks {
        md5: None,
        crc32c: Some(&crc),
    };
    let refused = store
        .put_upload_chunk("default", &up.upload_id, 0, bytes.clone(), checks, u64::MAX)
        .await;
    assert!(
        matches!(refused, Err(StoreError::ChecksumMismatch { .. })),
        "{refused:?}"
    );
    let right = crate::base::checksum::crc32c_hex(&bytes);
    let md5 = crate::base::checksum::md5_hex(&bytes);
    let checks = ChunkChecks {
        md5: Some(&md5),
        crc32c: Some(&right),
    };
    store
        .put_upload_chunk("default", &up.upload_id, 0, bytes, checks, u64::MAX)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_of_copied_chunks_is_one_record_and_a_chunk_sent_later_replaces_its_part() {
    let (dir, store) = temp_store().await;
    let cs = CHUNK_SIZE as usize;
    let old = pattern(3 * cs + 500, 4);
    let old_blob = store
        .put_blob_bytes("default", Bytes::from(old.clone()))
        .await
        .unwrap();
    let up = store.start_upload("default", None).await.unwrap();
    let id = up.upload_id.as_str();
    let len = store
        .copy_upload_chunks("default", id, (0, 4), &old_blob.hash, u64::MAX)
        .await
        .unwrap();
    assert_eq!(len, old.len() as u64);
    let records = std::fs::read_dir(dir.path().join(format!("repos/default/uploads/{id}")))
        .unwrap()
        .count();
    assert_eq!(records, 2, "meta.json and one record for the run");
    let status = store.upload_status("default", id).await.unwrap();
    assert_eq!((status.received, status.bytes), (vec![0, 1, 2, 3], len));
    // Chunk 1 changes, and the file grows by a new last chunk.
    let changed = pattern(cs, 9);
    put(&store, id, 1, &changed).await.unwrap();
    let tail = pattern(cs, 10);
    // A run may not reach past the end of its source.
    let past = store
        .copy_upload_chunks("default", id, (3, 2), &old_blob.hash, u64::MAX)
        .await;
    assert!(matches!(past, Err(StoreError::InvalidInput(_))), "{past:?}");
    put(&store, id, 3, &tail).await.unwrap();
    let info = store
        .complete_upload("default", id, u64::MAX)
        .await
        .unwrap();
    let want = [&old[..cs], &changed[..], &old[2 * cs..3 * cs], &tail[..]].concat();
    assert_eq!(info.hash, blob_id(&want));
}
