//! One store test-suite, two backends: every test here runs against a local directory and
//! against a real S3 server (radosgw from `scripts/test.sh`, or moto; see `common::s3`).
//! Several `Store`s opened on one backend stand for several server instances sharing it.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use govcfs::api::{Change, CommitRequest};
use govcfs::store::{Backend, ChunkChecks, Store, StoreError};

/// A backend of one kind, kept alive (its directory or S3 server) for the test.
struct Fixture {
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
    _s3: Option<common::s3::S3Server>,
}

fn local() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        backend: Backend::local(dir.path()).unwrap(),
        _dir: Some(dir),
        _s3: None,
    }
}

fn s3() -> Fixture {
    let server = common::s3::S3Server::start();
    let url = server.store_url();
    let (bucket, prefix) = url.strip_prefix("s3://").unwrap().split_once('/').unwrap();
    let settings = server.settings();
    let settings: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let backend = Backend::s3_with(bucket, prefix, &settings).unwrap();
    Fixture {
        backend,
        _dir: None,
        _s3: Some(server),
    }
}

fn put(path: &str, hash: &str) -> Change {
    Change::Put {
        path: path.into(),
        hash: hash.into(),
        mode: None,
        mtime: None,
        expect: None,
    }
}

fn commit_of(changes: Vec<Change>) -> CommitRequest {
    CommitRequest {
        branch: None,
        message: "test".into(),
        changes,
    }
}

/// Generates `mod local { … }` and `mod s3 { … }` running each named test on that backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::local()).await } )*
        }
        mod s3_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::s3()).await } )*
        }
    };
}

on_both_backends!(
    blobs_round_trip_in_ranges_and_are_deduplicated,
    a_large_blob_streams_through_multipart_writes,
    commits_build_a_history_and_expect_is_enforced,
    concurrent_commits_from_two_instances_all_land,
    an_upload_started_on_one_instance_completes_on_another,
    repository_creation_races_have_one_winner,
    fsck_is_clean_after_all_of_it,
    an_instance_announces_commits_made_by_another,
);

async fn blobs_round_trip_in_ranges_and_are_deduplicated(f: Fixture) {
    let store = Store::open(f.backend.clone()).await.unwrap();
    let data = Bytes::from(common::random_bytes(3 << 20, 7));
    let a = store.put_blob_bytes("default", data.clone()).await.unwrap();
    let b = store.put_blob_bytes("default", data.clone()).await.unwrap();
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.hash, common::blob_id(&data));
    assert_eq!(
        store.blob_size("default", &a.hash).await.unwrap(),
        data.len() as u64
    );
    for (start, end) in [
        (0, 1),
        (5, 70_000),
        ((1 << 20) - 3, (2 << 20) + 9),
        ((3 << 20) - 1, 3 << 20),
    ] {
        let got = store
            .read_blob_range("default", &a.hash, start..end)
            .await
            .unwrap();
        assert_eq!(
            got,
            data.slice(start as usize..end as usize),
            "range {start}..{end}"
        );
    }
    let whole_md5 = store
        .range_md5("default", &a.hash, 0..data.len() as u64)
        .await
        .unwrap();
    assert_eq!(whole_md5, common::md5_hex(&data));
    let missing = "0".repeat(64);
    assert!(matches!(
        store.blob_size("default", &missing).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_large_blob_streams_through_multipart_writes(f: Fixture) {
    let store = Store::open(f.backend.clone()).await.unwrap();
    // Unknown length: the id comes from a second pass over the stored object.
    let mut writer = store.begin_blob("default", None, u64::MAX).await.unwrap();
    let mut all = Vec::new();
    for seed in 0..5u64 {
        let piece = common::random_bytes(5 << 20, seed);
        all.extend_from_slice(&piece);
        writer.write(Bytes::from(piece)).await.unwrap();
    }
    let info = writer.finish().await.unwrap();
    assert_eq!(info.size, all.len() as u64);
    assert_eq!(info.hash, common::blob_id(&all));
    let tail = store
        .read_blob_range(
            "default",
            &info.hash,
            (all.len() - 100) as u64..all.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!(&tail[..], &all[all.len() - 100..]);
    // A size limit refuses and leaves nothing visible.
    let mut writer = store.begin_blob("default", None, 1000).await.unwrap();
    assert!(matches!(
        writer.write(Bytes::from(vec![1u8; 2000])).await,
        Err(StoreError::TooLarge { .. })
    ));
    writer.abort().await.unwrap();
}

async fn commits_build_a_history_and_expect_is_enforced(f: Fixture) {
    let store = Store::open(f.backend.clone()).await.unwrap();
    let one = store
        .put_blob_bytes("default", Bytes::from_static(b"one"))
        .await
        .unwrap();
    let two = store
        .put_blob_bytes("default", Bytes::from_static(b"two"))
        .await
        .unwrap();
    store
        .commit("default", &commit_of(vec![put("dir/f.txt", &one.hash)]))
        .await
        .unwrap();
    store
        .commit("default", &commit_of(vec![put("dir/g.txt", &two.hash)]))
        .await
        .unwrap();
    let (_, entries) = store.list_dir("default", None, "dir").await.unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["f.txt", "g.txt"]);
    // A stale expect is a real conflict: refused, and nothing changes.
    let stale = Change::Put {
        path: "dir/f.txt".into(),
        hash: two.hash.clone(),
        mode: None,
        mtime: None,
        expect: Some(Some(two.hash.clone())),
    };
    assert!(matches!(
        store.commit("default", &commit_of(vec![stale])).await,
        Err(StoreError::Conflict { .. })
    ));
    let (_, f_txt) = store.stat("default", None, "dir/f.txt").await.unwrap();
    assert_eq!(f_txt.hash, one.hash);
    let log = store.log("default", None, 10).await.unwrap();
    assert_eq!(log.len(), 3, "create + two commits");
}

async fn concurrent_commits_from_two_instances_all_land(f: Fixture) {
    // Two stores on one backend: their in-process commit queues do not see each other, so
    // only the compare-and-swap on the ref keeps both sets of commits.
    let a = Arc::new(Store::open(f.backend.clone()).await.unwrap());
    let b = Arc::new(Store::open(f.backend.clone()).await.unwrap());
    let blob = a
        .put_blob_bytes("default", Bytes::from_static(b"x"))
        .await
        .unwrap()
        .hash;
    const EACH: usize = 12;
    let mut tasks = Vec::new();
    for (name, store) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..EACH {
            let store = store.clone();
            let blob = blob.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .commit(
                        "default",
                        &commit_of(vec![put(&format!("{name}/{i}"), &blob)]),
                    )
                    .await
            }));
        }
    }
    let mut answered = std::collections::BTreeSet::new();
    for task in tasks {
        let created = task
            .await
            .unwrap()
            .expect("a commit without a real conflict succeeds");
        answered.insert(created.commit);
    }
    for (name, store) in [("a", &a), ("b", &b)] {
        let (_, entries) = store.list_dir("default", None, name).await.unwrap();
        assert_eq!(
            entries.len(),
            EACH,
            "every commit of instance {name} is in the tree"
        );
    }
    // Requests queued in one instance are committed together (group commit), so there may be
    // fewer commits than requests; every answered commit is in the history, once.
    let log = b.log("default", None, 100).await.unwrap();
    let history: Vec<&str> = log.iter().map(|c| c.commit.as_str()).collect();
    let unique: std::collections::BTreeSet<&str> = history.iter().copied().collect();
    assert_eq!(
        unique.len(),
        history.len(),
        "no commit twice in the history"
    );
    for commit in &answered {
        assert!(
            unique.contains(commit.as_str()),
            "{commit} is not in the history"
        );
    }
    assert!(
        (3..=2 * EACH + 1).contains(&log.len()),
        "{} commits for {} requests",
        log.len(),
        2 * EACH
    );
}

async fn an_upload_started_on_one_instance_completes_on_another(f: Fixture) {
    let a = Store::open(f.backend.clone()).await.unwrap();
    let b = Store::open(f.backend.clone()).await.unwrap();
    let started = a.start_upload("default", Some(1 << 20)).await.unwrap();
    let data = common::random_bytes((2 << 20) + 1234, 3);
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
    a.put_upload_chunk(
        "default",
        &started.upload_id,
        0,
        Bytes::copy_from_slice(chunks[0]),
        ChunkChecks::default(),
        u64::MAX,
    )
    .await
    .unwrap();
    b.put_upload_chunk(
        "default",
        &started.upload_id,
        2,
        Bytes::copy_from_slice(chunks[2]),
        ChunkChecks::default(),
        u64::MAX,
    )
    .await
    .unwrap();
    // Incomplete: refused on either instance.
    assert!(b
        .complete_upload("default", &started.upload_id, u64::MAX)
        .await
        .is_err());
    let md5 = common::md5_hex(chunks[1]);
    a.put_upload_chunk(
        "default",
        &started.upload_id,
        1,
        Bytes::copy_from_slice(chunks[1]),
        ChunkChecks {
            md5: Some(&md5),
            crc32c: None,
        },
        u64::MAX,
    )
    .await
    .unwrap();
    let status = a
        .upload_status("default", &started.upload_id)
        .await
        .unwrap();
    assert_eq!(status.received.len(), 3);
    let info = b
        .complete_upload("default", &started.upload_id, u64::MAX)
        .await
        .unwrap();
    assert_eq!(info.hash, common::blob_id(&data));
    assert_eq!(
        a.read_blob_range("default", &info.hash, 0..data.len() as u64)
            .await
            .unwrap(),
        data
    );
    assert!(matches!(
        a.upload_status("default", &started.upload_id).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn repository_creation_races_have_one_winner(f: Fixture) {
    let a = Arc::new(Store::open(f.backend.clone()).await.unwrap());
    let b = Arc::new(Store::open(f.backend.clone()).await.unwrap());
    let (ra, rb) = tokio::join!(a.create_repo("photos"), b.create_repo("photos"));
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert!(wins >= 1, "{ra:?} {rb:?}");
    for r in [ra, rb] {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}");
        }
    }
    let names: Vec<String> = a
        .list_repos()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(names, ["default", "photos"]);
    assert!(a.repo_info("photos").await.unwrap().head.is_some());
}

async fn fsck_is_clean_after_all_of_it(f: Fixture) {
    let store = Store::open(f.backend.clone()).await.unwrap();
    let blob = store
        .put_blob_bytes("default", Bytes::from(common::random_bytes(100_000, 1)))
        .await
        .unwrap();
    store
        .commit(
            "default",
            &commit_of(vec![put("a/b/c", &blob.hash), put("d", &blob.hash)]),
        )
        .await
        .unwrap();
    let report = store.fsck().await.unwrap();
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    assert_eq!(report.blobs, 1);
    assert!(report.commits >= 2);
}

async fn an_instance_announces_commits_made_by_another(f: Fixture) {
    let a = Store::open(f.backend.clone()).await.unwrap();
    let b = Store::open(f.backend.clone()).await.unwrap();
    let mut events = a.subscribe();
    let mut etags = std::collections::HashMap::new();
    assert_eq!(
        a.poll_refs(&mut etags, true).await.unwrap(),
        0,
        "the first poll only records"
    );
    let blob = b
        .put_blob_bytes("default", Bytes::from_static(b"y"))
        .await
        .unwrap()
        .hash;
    let created = b
        .commit("default", &commit_of(vec![put("from-b", &blob)]))
        .await
        .unwrap();
    assert_eq!(a.poll_refs(&mut etags, false).await.unwrap(), 1);
    let event = events.try_recv().expect("an event for b's commit");
    assert_eq!(
        (
            event.repo.as_str(),
            event.branch.as_str(),
            event.commit.as_str()
        ),
        ("default", "main", created.commit.as_str())
    );
    assert_eq!(
        a.poll_refs(&mut etags, false).await.unwrap(),
        0,
        "an unchanged ref is not announced again"
    );
    // A's own commit is announced once, when it is made, not again by the poll.
    a.commit("default", &commit_of(vec![put("from-a", &blob)]))
        .await
        .unwrap();
    assert!(events.try_recv().is_ok());
    assert_eq!(a.poll_refs(&mut etags, false).await.unwrap(), 0);
}
