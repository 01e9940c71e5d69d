//! Chunks the repository already holds are sent by name, not by bytes (the mock keeps store
//! chunks by hash as the server does, and counts the bytes it receives).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::config;
use crate::base::manifest::CHUNK_SIZE;
use crate::fs::failing::{Call, FailingRemote, Injected};
use crate::fs::inodes::ROOT_INO;
use crate::fs::mock::MemRemote;
use crate::fs::Fs;

type Remote = FailingRemote<MemRemote>;

const CS: usize = CHUNK_SIZE as usize;

/// A mount on a mock whose uploads have the server's chunk size (so chunks can be named).
fn setup(dir: &std::path::Path) -> (Arc<Remote>, Fs<Remote>) {
    let remote = Arc::new(FailingRemote::new(MemRemote::with_upload_chunk(CHUNK_SIZE)));
    let fs = Fs::new(remote.clone(), config(dir));
    (remote, fs)
}

/// Creates `name` with `content`, written front to back in 128 KiB pieces, and closes it.
async fn write_file(fs: &Fs<Remote>, name: &str, content: &[u8]) {
    let (_, fh) = fs.create(ROOT_INO, name, 0o644).await.unwrap();
    for (i, piece) in content.chunks(128 << 10).enumerate() {
        fs.write(fh, (i * (128 << 10)) as u64, piece, None)
            .await
            .unwrap();
    }
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
}

/// `len` bytes no two chunks of which are alike (unlike the tests' periodic `data`).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn received(remote: &Remote) -> u64 {
    remote.inner().bytes_received.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_file_whose_chunks_the_repository_holds_is_sent_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    let content = data(3 * CS + 100, 1);
    remote.inner().put("original", content.clone());
    write_file(&fs, "copy", &content).await;
    assert!(remote.inner().get("copy").unwrap() == content);
    assert_eq!(received(&remote), 0, "bytes were sent for held chunks");
    assert_eq!(remote.inner().references.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn new_data_is_sent_whole_and_asked_about_for_few_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    let content = data(20 * CS, 2);
    write_file(&fs, "new", &content).await;
    assert!(remote.inner().get("new").unwrap() == content);
    assert_eq!(received(&remote), content.len() as u64);
    let asked = remote.calls(Call::MissingChunks);
    assert!(asked < 10, "asked about {asked} of 20 new chunks");
}

/// rsync writes a whole new copy beside the old version: only the chunks around the change
/// cross the wire.
#[tokio::test]
async fn a_rewrite_with_one_changed_mib_sends_at_most_two_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    let old = data(6 * CS, 3);
    remote.inner().put("f", old.clone());
    let mut new = old.clone();
    new[2 * CS + 10..2 * CS + 10 + (1 << 20)].fill(0xee);
    write_file(&fs, "f.tmp", &new).await;
    assert!(remote.inner().get("f.tmp").unwrap() == new);
    let sent = received(&remote);
    assert!(
        (CHUNK_SIZE..=2 * CHUNK_SIZE).contains(&sent),
        "{sent} bytes sent"
    );
}

/// A chunk swept between the question and the reference is sent after all.
#[tokio::test]
async fn a_chunk_gone_before_its_reference_is_sent_as_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    let content = data(2 * CS, 4);
    remote.inner().put("original", content.clone());
    remote.fail_nth(Call::ReferenceChunks, 1, Injected::NotFound);
    write_file(&fs, "copy", &content).await;
    assert!(remote.inner().get("copy").unwrap() == content);
    assert_eq!(received(&remote), CHUNK_SIZE);
}
