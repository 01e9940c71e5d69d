//! Error paths of the core: each test makes one kind of call fail and checks the errno a
//! POSIX program gets, that no bytes are lost, and that the mount works again afterwards.

use std::sync::Arc;

use super::{config, data, read_all, recovered};
use crate::fs::failing::{Call, FailingRemote, Injected};
use crate::fs::inodes::ROOT_INO;
use crate::fs::mock::{MemRemote, MOCK_UPLOAD_CHUNK};
use crate::fs::{Fs, FsError};

type Remote = FailingRemote<MemRemote>;

fn setup(dir: &std::path::Path) -> (Arc<Remote>, Fs<Remote>) {
    let remote = Arc::new(FailingRemote::new(MemRemote::default()));
    let fs = Fs::new(remote.clone(), config(dir));
    (remote, fs)
}

/// Creates `name` with `content` and flushes it; returns the flush's outcome.
async fn write_file(fs: &Fs<Remote>, name: &str, content: &[u8]) -> Result<(), FsError> {
    let (_, fh) = fs.create(ROOT_INO, name, 0o644).await.unwrap();
    fs.write(fh, 0, content, None).await.unwrap();
    let outcome = fs.flush(fh, None).await;
    fs.release(fh).await;
    outcome
}

/// A commit (or the small upload before it) that fails at close: close gets EIO, the server
/// keeps nothing, the bytes are in recovery/, and once the server answers again the same
/// file can be created again (this used to fail with a conflict: the mount kept the failed
/// new file as an empty, never-committed entry and took it as the version to replace).
#[tokio::test]
async fn a_failed_close_is_eio_keeps_the_bytes_and_the_mount_recovers() {
    for call in [Call::Commit, Call::PutFile] {
        let dir = tempfile::tempdir().unwrap();
        let (remote, fs) = setup(dir.path());
        remote.fail_nth(call, 1, Injected::Transport);
        let err = write_file(&fs, "f", b"precious").await.unwrap_err();
        assert_eq!(err.errno(), libc::EIO, "{call:?}: {err}");
        assert!(remote.inner().get("f").is_none());
        assert_eq!(
            recovered(dir.path()),
            vec![b"precious".to_vec()],
            "{call:?}"
        );
        // No ghost: the mount does not show a file the server does not have.
        let ghost = fs.lookup(ROOT_INO, "f").await.unwrap_err();
        assert_eq!(ghost.errno(), libc::ENOENT, "{call:?}");
        write_file(&fs, "f", b"second try").await.unwrap();
        assert_eq!(remote.inner().get("f").unwrap(), b"second try".to_vec());
    }
}

/// A 409 at commit is the conflict mapping (EIO, reported as a conflict), every later close
/// of the handle reports it too, and the bytes are kept.
#[tokio::test]
async fn a_conflict_at_commit_is_reported_on_every_close_and_keeps_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    remote.fail_nth(Call::Commit, 1, Injected::Conflict);
    let (_, fh) = fs.create(ROOT_INO, "f", 0o644).await.unwrap();
    fs.write(fh, 0, b"mine", None).await.unwrap();
    let first = fs.flush(fh, None).await.unwrap_err();
    assert!(matches!(first, FsError::Conflict(_)), "{first}");
    assert_eq!(first.errno(), libc::EIO);
    // A second close (a dup'd descriptor) must not pretend the file was saved.
    assert!(matches!(
        fs.flush(fh, None).await,
        Err(FsError::Conflict(_))
    ));
    fs.release(fh).await;
    assert_eq!(recovered(dir.path()), vec![b"mine".to_vec()]);
    assert_eq!(remote.calls(Call::Commit), 1, "release retried the commit");
}

/// A chunk PUT that fails (after the client's own retries) while a large file streams out:
/// close reports EIO, the upload is aborted, and the whole file is in recovery/.
#[tokio::test]
async fn a_failed_chunk_upload_is_reported_at_close_with_the_whole_file_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    let content = data(3 * MOCK_UPLOAD_CHUNK as usize + 100, 3);
    remote.fail_nth(Call::PutChunk, 2, Injected::Transport);
    let (_, fh) = fs.create(ROOT_INO, "big", 0o644).await.unwrap();
    for (i, piece) in content.chunks(10_000).enumerate() {
        // A write may already see the failed PUT (backpressure) or not: both are fine, the
        // bytes are in the spool either way.
        let _ = fs.write(fh, (i * 10_000) as u64, piece, None).await;
    }
    let err = fs.flush(fh, None).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    fs.release(fh).await;
    assert!(remote.inner().get("big").is_none());
    assert_eq!(remote.calls(Call::Commit), 0);
    assert!(
        remote.calls(Call::AbortUpload) >= 1,
        "the upload was not aborted"
    );
    assert_eq!(recovered(dir.path()), vec![content]);
}

/// A read whose range request fails gets EIO; the failure is not cached, so the next read of
/// the same bytes succeeds once the server answers.
#[tokio::test]
async fn a_read_that_fails_mid_file_is_eio_and_a_later_read_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    let content = data(300_000, 5);
    remote.inner().put("f", content.clone());
    let ino = fs.lookup(ROOT_INO, "f").await.unwrap().ino;
    let (fh, _) = fs.open(ino).await.unwrap();
    assert_eq!(&fs.read(fh, 0, 4096).await.unwrap()[..], &content[..4096]);
    remote.fail_from(Call::Read, 1, Injected::Transport);
    let err = fs.read(fh, 200_000, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    remote.heal();
    let again = fs.read(fh, 200_000, 4096).await.unwrap();
    assert_eq!(&again[..], &content[200_000..204_096]);
    fs.release(fh).await;
}

/// A listing that fails is EIO for readdir and lookup, never an empty directory or ENOENT
/// (which `rm -r`, `make` or a shell would take for "not there"); a 404 is ENOENT.
#[tokio::test]
async fn a_listing_failure_is_eio_not_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    remote.inner().put("d/x", b"1".to_vec());
    remote.fail_nth(Call::List, 1, Injected::Transport);
    assert_eq!(fs.readdir(ROOT_INO).await.unwrap_err().errno(), libc::EIO);
    remote.fail_nth(Call::List, 1, Injected::Transport);
    assert_eq!(
        fs.lookup(ROOT_INO, "d").await.unwrap_err().errno(),
        libc::EIO
    );
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    remote.fail_nth(Call::List, 1, Injected::NotFound);
    assert_eq!(fs.readdir(d.ino).await.unwrap_err().errno(), libc::ENOENT);
    let names: Vec<String> = fs
        .readdir(d.ino)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, vec!["x"]);
}

/// Namespace changes whose commit fails change nothing, on the server or in the mount's view.
#[tokio::test]
async fn a_failed_unlink_or_rename_leaves_the_names_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    remote.inner().put("a", b"A".to_vec());
    fs.lookup(ROOT_INO, "a").await.unwrap();
    remote.fail_from(Call::Commit, 1, Injected::Transport);
    assert_eq!(
        fs.unlink(ROOT_INO, "a").await.unwrap_err().errno(),
        libc::EIO
    );
    let rename = fs.rename(ROOT_INO, "a", ROOT_INO, "b", false).await;
    assert_eq!(rename.unwrap_err().errno(), libc::EIO);
    assert_eq!(
        fs.mkdir(ROOT_INO, "d").await.unwrap_err().errno(),
        libc::EIO
    );
    let names: Vec<String> = fs
        .readdir(ROOT_INO)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, vec!["a"]);
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(read_all(&fs, a.ino).await, b"A".to_vec());
    assert_eq!(remote.inner().get("a").unwrap(), b"A".to_vec());
}

/// A truncate(2) by path whose commit fails is EIO and keeps the old content.
#[tokio::test]
async fn a_failed_truncate_by_path_is_eio_and_keeps_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, fs) = setup(dir.path());
    remote.inner().put("f", b"0123456789".to_vec());
    let ino = fs.lookup(ROOT_INO, "f").await.unwrap().ino;
    remote.fail_nth(Call::Commit, 1, Injected::Transport);
    let err = fs
        .setattr(ino, None, Some(4), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(remote.inner().get("f").unwrap(), b"0123456789".to_vec());
    assert_eq!(fs.getattr(ino).await.unwrap().size, 10);
}

/// `rm` and `rmdir` of a path another client deleted meanwhile get ENOENT (what `rm` of a
/// missing file reports), not EIO; a file changed elsewhere is still a conflict (EIO).
#[tokio::test]
async fn deleting_a_path_deleted_elsewhere_is_enoent_and_one_changed_elsewhere_a_conflict() {
    use crate::api::Change;
    use crate::fs::remote::Remote as _;
    let delete = |path: &str| Change::Delete {
        path: path.into(),
        expect: None,
    };
    // Each case on a fresh mount: it still knows the first version (within the TTL).
    for case in ["gone", "d", "changed"] {
        let dir = tempfile::tempdir().unwrap();
        let (remote, fs) = setup(dir.path());
        remote.inner().put("gone", b"1".to_vec());
        remote.inner().put("changed", b"1".to_vec());
        remote.inner().put("d/x", b"1".to_vec());
        fs.lookup(ROOT_INO, case).await.unwrap();
        let elsewhere = vec![delete("gone"), delete("d/x"), delete("d")];
        remote
            .inner()
            .commit(elsewhere, "elsewhere".into())
            .await
            .unwrap();
        remote.inner().put("changed", b"2".to_vec());
        let err = match case {
            "d" => fs.rmdir(ROOT_INO, case).await.unwrap_err(),
            _ => fs.unlink(ROOT_INO, case).await.unwrap_err(),
        };
        if case == "changed" {
            assert!(matches!(err, FsError::Conflict(_)), "{case}: {err}");
            assert_eq!(remote.inner().get("changed").unwrap(), b"2".to_vec());
        } else {
            assert_eq!(err.errno(), libc::ENOENT, "{case}: {err}");
        }
    }
}
