//! Blob reads and writes on a temporary local store: chunked blobs across chunk boundaries,
//! and legacy single-object blobs written by hand as the previous version laid them out.

use bytes::Bytes;
use futures::StreamExt;

use crate::base::manifest::{blob_id, CHUNK_SIZE};
use crate::store::index::{BlockIndexer, INDEX_BLOCK};
use crate::store::test_support::{pattern, temp_store};
use crate::store::StoreError;

#[tokio::test]
async fn a_blob_over_several_chunks_reads_back_by_any_range() {
    let (_dir, store) = temp_store().await;
    let data = pattern(2 * CHUNK_SIZE as usize + 1234, 1);
    let mut writer = store.begin_blob("default", None, u64::MAX).await.unwrap();
    for piece in data.chunks(1_000_003) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let info = writer.finish().await.unwrap();
    assert_eq!(
        (info.hash.clone(), info.size, info.chunks),
        (blob_id(&data), data.len() as u64, 3)
    );
    assert_eq!(
        store.blob_size("default", &info.hash).await.unwrap(),
        data.len() as u64
    );
    let c = CHUNK_SIZE;
    for range in [
        0..10,
        c - 5..c + 5,
        0..data.len() as u64,
        2 * c..2 * c + 1234,
        c - 1..2 * c + 1,
    ] {
        let read = store
            .read_blob_range("default", &info.hash, range.clone())
            .await
            .unwrap();
        assert_eq!(
            &read[..],
            &data[range.start as usize..range.end as usize],
            "{range:?}"
        );
        let streamed: Vec<u8> = store
            .stream_blob("default", &info.hash, range.clone())
            .await
            .unwrap()
            .map(|p| p.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(
            streamed,
            &data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    let block = (c / INDEX_BLOCK) + 1;
    let start = (block * INDEX_BLOCK) as usize;
    let sums = store
        .block_sums("default", &info.hash, block)
        .await
        .unwrap();
    let want = crate::base::checksum::crc32c(&data[start..start + INDEX_BLOCK as usize]);
    assert_eq!(sums.crc32c, Some(want));
    let md5 = store
        .range_md5("default", &info.hash, 0..data.len() as u64)
        .await
        .unwrap();
    assert_eq!(md5, crate::base::checksum::md5_hex(&data));
}

#[tokio::test]
async fn identical_chunks_are_stored_once() {
    let (dir, store) = temp_store().await;
    let chunk = pattern(CHUNK_SIZE as usize, 7);
    let twice = [chunk.clone(), chunk.clone()].concat();
    let info = store
        .put_blob_bytes("default", Bytes::from(twice))
        .await
        .unwrap();
    store
        .put_blob_bytes("default", Bytes::from(chunk))
        .await
        .unwrap();
    assert_eq!(info.chunks, 2);
    let chunks = walk_files(&dir.path().join("repos/default/chunks"));
    let data_files = chunks.iter().filter(|p| p.extension().is_none()).count();
    assert_eq!(data_files, 1, "{chunks:?}");
}

#[tokio::test]
async fn the_empty_blob_has_no_chunks() {
    let (_dir, store) = temp_store().await;
    let info = store.put_blob_bytes("default", Bytes::new()).await.unwrap();
    assert_eq!(
        (info.hash.clone(), info.size, info.chunks),
        (blob_id(b""), 0, 0)
    );
    assert_eq!(store.blob_size("default", &info.hash).await.unwrap(), 0);
    let read = store
        .read_blob_range("default", &info.hash, 0..0)
        .await
        .unwrap();
    assert!(read.is_empty());
}

#[tokio::test]
async fn a_blob_whose_chunk_is_gone_reads_as_corrupt_not_short() {
    let (dir, store) = temp_store().await;
    let data = pattern(CHUNK_SIZE as usize + 10, 3);
    let info = store
        .put_blob_bytes("default", Bytes::from(data))
        .await
        .unwrap();
    for file in walk_files(&dir.path().join("repos/default/chunks")) {
        std::fs::remove_file(file).unwrap();
    }
    let err = store
        .read_blob_range("default", &info.hash, 0..20)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let mut stream = store
        .stream_blob("default", &info.hash, 0..20)
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    assert!(
        matches!(first, Err(StoreError::Corrupt { .. })),
        "{first:?}"
    );
}

#[tokio::test]
async fn a_legacy_blob_stays_readable_under_its_old_id() {
    let (dir, store) = temp_store().await;
    let data = pattern(INDEX_BLOCK as usize + 99, 5);
    let id = crate::base::ids::legacy_blob_id(&data);
    let objects = dir
        .path()
        .join(format!("repos/default/objects/{}", &id[..2]));
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join(&id), &data).unwrap();
    let mut indexer = BlockIndexer::default();
    indexer.update(&data);
    std::fs::write(objects.join(format!("{id}.idx2")), indexer.finish()).unwrap();

    assert_eq!(
        store.blob_size("default", &id).await.unwrap(),
        data.len() as u64
    );
    assert!(store.blob_manifest("default", &id).await.unwrap().is_none());
    let read = store
        .read_blob_range("default", &id, 5..INDEX_BLOCK + 5)
        .await
        .unwrap();
    assert_eq!(&read[..], &data[5..INDEX_BLOCK as usize + 5]);
    let sums = store.block_sums("default", &id, 1).await.unwrap();
    let tail = &data[INDEX_BLOCK as usize..];
    assert_eq!(sums.md5, Some(crate::base::checksum::md5_hex(tail)));
    assert_eq!(sums.crc32c, Some(crate::base::checksum::crc32c(tail)));
}

#[tokio::test]
async fn a_blob_size_is_remembered_and_a_miss_is_asked_again() {
    let (dir, store) = temp_store().await;
    let blob = store
        .put_blob_bytes("default", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    assert_eq!(store.blob_size("default", &blob.hash).await.unwrap(), 11);
    // Blobs are immutable: the second answer comes from memory, which shows because the
    // manifest is gone.
    std::fs::remove_dir_all(dir.path().join("repos/default/manifests")).unwrap();
    assert_eq!(store.blob_size("default", &blob.hash).await.unwrap(), 11);
    // A miss is not remembered: the blob may be written a moment later.
    let late = blob_id(b"late");
    assert!(matches!(
        store.blob_size("default", &late).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .put_blob_bytes("default", Bytes::from_static(b"late"))
        .await
        .unwrap();
    assert_eq!(store.blob_size("default", &late).await.unwrap(), 4);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
