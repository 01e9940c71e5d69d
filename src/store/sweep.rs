//! What a killed server leaves behind on a local store, removed when a server starts:
//! anything in `tmp/`, staging files of object writes (`NAME#N`) and of ref updates
//! (`.NAME.UUID.tmp`), empty upload directories, uploads abandoned for a week, and then the
//! chunks that no manifest and no remaining upload names (`sweep/chunks.rs`).
//!
//! Only the first server on a data directory sweeps: every server holds a shared `flock` on
//! `live.lock` while it runs, and a starting server sweeps only if it can take that lock
//! exclusively (no other server is writing there). An embedded server of `govcfs mount` next to
//! a `govcfs serve` on the same directory therefore never deletes the other's files in flight.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

mod chunks;

/// Uploads untouched for this long are dropped.
const ABANDONED_UPLOAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub files: usize,
    pub bytes: u64,
    pub uploads: usize,
}

/// Takes the liveness lock of `root` and, if this is the only server there, sweeps. The
/// returned file holds the shared lock: keep it open for as long as the server runs.
pub fn claim_and_sweep(root: &Path) -> std::io::Result<(File, Option<Swept>)> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("live.lock"))?;
    // SAFETY: flock on a descriptor we own.
    let alone = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    let swept = if alone { Some(sweep(root)) } else { None };
    // SAFETY: as above; converts the exclusive lock (if held) to a shared one.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lock, swept))
}

fn sweep(root: &Path) -> Swept {
    let mut swept = Swept::default();
    remove_files(&root.join("tmp"), &mut swept, &|_| true);
    let Ok(repos) = std::fs::read_dir(root.join("repos")) else {
        return swept;
    };
    for repo in repos.flatten() {
        let repo = repo.path();
        for dir in ["objects", "chunks", "manifests"] {
            remove_files(&repo.join(dir), &mut swept, &|name| name.contains('#'));
        }
        remove_files(&repo.join("refs"), &mut swept, &|name| {
            name.starts_with('.') && name.ends_with(".tmp")
        });
        sweep_uploads(&repo, &mut swept);
        chunks::sweep_unreferenced_chunks(&repo, &mut swept);
    }
    swept
}

/// Removes the upload directories of `repo` that are empty or abandoned.
fn sweep_uploads(repo: &Path, swept: &mut Swept) {
    let Ok(uploads) = std::fs::read_dir(repo.join("uploads")) else {
        return;
    };
    for upload in uploads.flatten() {
        let dir = upload.path();
        let meta = std::fs::metadata(dir.join("meta.json"));
        let abandoned = match meta.and_then(|m| m.modified()) {
            Ok(modified) => newest_mtime(&dir)
                .unwrap_or(modified)
                .elapsed()
                .is_ok_and(|age| age > ABANDONED_UPLOAD),
            // No meta: a completed or aborted upload's empty directory, or a start cut
            // before its meta was written.
            Err(_) => true,
        };
        if abandoned && std::fs::remove_dir_all(&dir).is_ok() {
            swept.uploads += 1;
        }
    }
}

/// Removes the files under `dir` (recursively) whose names match.
fn remove_files(dir: &Path, swept: &mut Swept, matches: &dyn Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            remove_files(&path, swept, matches);
        } else if entry.file_name().to_str().is_some_and(matches) {
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(&path).is_ok() {
                swept.files += 1;
                swept.bytes += len;
            }
        }
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_server_sweeps_debris_and_a_second_one_does_not() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in [
            "tmp",
            "repos/a/objects/ab",
            "repos/a/refs/heads",
            "repos/a/uploads/u1",
            "repos/a/uploads/u2",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(r.join("tmp/half-blob"), b"12345").unwrap();
        std::fs::write(r.join("repos/a/objects/ab/abcd#3"), b"x").unwrap();
        std::fs::write(r.join("repos/a/objects/ab/abcd"), b"kept").unwrap();
        std::fs::write(r.join("repos/a/refs/heads/.main.1234.tmp"), b"x").unwrap();
        std::fs::write(r.join("repos/a/refs/heads/main"), b"kept").unwrap();
        std::fs::write(r.join("repos/a/uploads/u2/meta.json"), b"{}").unwrap();
        let (held, swept) = claim_and_sweep(r).unwrap();
        assert_eq!(
            swept,
            Some(Swept {
                files: 3,
                bytes: 7,
                uploads: 1
            })
        );
        assert!(
            r.join("repos/a/objects/ab/abcd").exists()
                && r.join("repos/a/refs/heads/main").exists()
        );
        assert!(
            r.join("repos/a/uploads/u2").exists(),
            "a recent upload is kept"
        );
        std::fs::write(r.join("tmp/in-flight"), b"x").unwrap();
        let (_second, swept) = claim_and_sweep(r).unwrap();
        assert_eq!(
            swept, None,
            "a second server must not sweep while the first runs"
        );
        assert!(r.join("tmp/in-flight").exists());
        drop(held);
    }
}
