//! Spool files of open write handles, and the journal that lets their bytes survive a crash.
//!
//! Each mount spools into its own directory `<cache-dir>/spool/<id>/`, flock-ed for as long as
//! the mount lives. Beside every spool file a journal says where the bytes belong
//! (`spool-<id>.json`) and which chunks of the spool already hold the file's bytes
//! (`spool-<id>.log`; the others are still only in the version the file was opened at). When a
//! mount starts and finds a spool directory nobody holds, the mount that wrote it died: its
//! spools move to `recovery/` (see [`super::recovery`]), and `govcfs recover` takes it from there.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a spool's bytes belong: `spool-<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpoolNote {
    pub origin: String,
    pub branch: Option<String>,
    pub path: String,
    pub expect: Option<String>,
    pub chunk_size: u64,
    /// The version whose bytes the chunks not yet in the spool still are (`None`: the spool
    /// holds the whole file).
    pub fill_from: Option<String>,
    /// Bytes of `fill_from` that are part of the file (it may have been truncated since).
    pub base_valid: u64,
}

/// Byte ranges of a file of `size` bytes that are in neither the spool's `present` chunks nor
/// beyond the first `base_valid` bytes of the base.
pub fn missing_ranges(
    present: &BTreeSet<u64>,
    base_valid: u64,
    size: u64,
    chunk_size: u64,
) -> Vec<Range<u64>> {
    let end = base_valid.min(size);
    (0..end.div_ceil(chunk_size))
        .filter(|i| !present.contains(i))
        .map(|i| i * chunk_size..((i + 1) * chunk_size).min(end))
        .collect()
}

/// The spool directory of one mount, locked while the mount lives.
pub struct SpoolDir {
    dir: PathBuf,
    /// Holds the flock; other mounts see the directory as alive while it is open.
    _lock: File,
}

impl SpoolDir {
    /// Creates and locks a fresh spool directory under `<cache_dir>/spool/`.
    pub fn claim(cache_dir: &Path) -> std::io::Result<SpoolDir> {
        let dir = cache_dir
            .join("spool")
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&dir)?;
        let lock = File::create(dir.join(".lock"))?;
        if !try_lock(&lock)? {
            return Err(std::io::Error::other(format!(
                "{} is locked by another mount",
                dir.display()
            )));
        }
        Ok(SpoolDir { dir, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

pub(super) fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own; LOCK_NB makes it return at once.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The journal of one spool file. Its log is created at its first line: most small files
/// never need one (a missing log reads as empty).
pub struct SpoolJournal {
    note_path: PathBuf,
    log_path: PathBuf,
    log: Option<File>,
    note: SpoolNote,
}

impl SpoolJournal {
    /// Starts the journal of `spool`.
    pub fn create(spool: &Path, note: SpoolNote) -> std::io::Result<SpoolJournal> {
        let note_path = spool.with_extension("json");
        let log_path = spool.with_extension("log");
        let journal = SpoolJournal {
            note_path,
            log_path,
            log: None,
            note,
        };
        journal.write_note()?;
        Ok(journal)
    }

    fn write_note(&self) -> std::io::Result<()> {
        std::fs::write(
            &self.note_path,
            serde_json::to_vec(&self.note).map_err(std::io::Error::other)?,
        )
    }

    fn log(&mut self) -> std::io::Result<&mut File> {
        if self.log.is_none() {
            self.log = Some(File::create(&self.log_path)?);
        }
        Ok(self.log.as_mut().expect("created above"))
    }

    /// Chunk `index` of the spool now holds the file's bytes.
    pub fn present(&mut self, index: u64) -> std::io::Result<()> {
        writeln!(self.log()?, "p {index}")
    }

    /// Only the first `base_valid` bytes of the base still belong to the file.
    pub fn base_valid(&mut self, base_valid: u64) -> std::io::Result<()> {
        writeln!(self.log()?, "v {base_valid}")
    }

    /// The file was renamed while open.
    pub fn set_path(&mut self, path: &str) -> std::io::Result<()> {
        self.note.path = path.to_string();
        self.write_note()
    }

    /// The spool now holds the whole file, committed as blob `expect`.
    pub fn committed(&mut self, expect: &str) -> std::io::Result<()> {
        self.note.expect = Some(expect.to_string());
        self.note.fill_from = None;
        self.write_note()?;
        match &self.log {
            Some(log) => log.set_len(0),
            None => Ok(()),
        }
    }

    /// Removes the journal (with the spool).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.note_path);
        if self.log.is_some() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_cover_what_only_the_base_holds() {
        let present: BTreeSet<u64> = [1].into_iter().collect();
        assert_eq!(missing_ranges(&present, 25, 40, 10), vec![0..10, 20..25]);
        assert_eq!(missing_ranges(&present, 25, 15, 10), vec![0..10]);
        assert!(missing_ranges(&BTreeSet::new(), 0, 40, 10).is_empty());
    }
}
