//! Durable writes of large immutable objects (chunks) to a local directory, past the page
//! cache (see [`crate::base::direct_io`]: a chunk is written once and rarely read soon).
//!
//! The bytes go into a staging file beside the destination (`<name>#<digits>`, the
//! convention of `object_store`'s `LocalFileSystem`: listings skip it, the start-up sweep
//! removes it), which is fsynced and renamed into place; the directory is fsynced too. A file
//! system that refuses `O_DIRECT` gets an ordinary buffered write.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Result};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::base::direct_io;

/// Writes `data` to `dest` durably: visible under `dest` only complete and fsynced.
pub(super) fn write_durably(dest: &Path, data: &[u8]) -> Result<()> {
    let dir = dest.parent().expect("an object path has a parent");
    let (file, staging) = create_staging(dest, dir)?;
    if let Err(e) = write_and_sync(file, &staging, data) {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    std::fs::rename(&staging, dest)?;
    File::open(dir)?.sync_all()
}

/// An open new staging file for `dest` (direct where the file system allows it); creates
/// (and makes durable) the directory if it is missing.
fn create_staging(dest: &Path, dir: &Path) -> Result<(StagingFile, PathBuf)> {
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{}", fastrand::u64(..)));
        let staging = PathBuf::from(name);
        match open_new(&staging) {
            Ok(file) => return Ok((file, staging)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => create_dir_durably(dir)?,
            Err(e) => return Err(e),
        }
    }
}

/// A new file, and whether it was opened with `O_DIRECT`.
type StagingFile = (File, bool);

fn open_new(path: &Path) -> Result<StagingFile> {
    let options = || {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        options
    };
    match direct_io::open(path, &mut options())? {
        Some(file) => Ok((file, true)),
        None => Ok((options().open(path)?, false)),
    }
}

fn create_dir_durably(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes `data` at the start of the new file and fsyncs it.
fn write_and_sync((file, direct): StagingFile, staging: &Path, data: &[u8]) -> Result<()> {
    if direct && direct_io::write_padded_at(&file, data, 0)? {
        if !data.len().is_multiple_of(direct_io::ALIGN) {
            file.set_len(data.len() as u64)?;
        }
    } else {
        log::debug!("{}: written through the page cache", staging.display());
        file.write_all_at(data, 0)?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::direct_io::ALIGN;

    #[test]
    fn an_object_is_written_whole_and_no_staging_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 17, 1 << 20] {
            let dest = dir.path().join(format!("sub/obj-{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            write_durably(&dest, &data).unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), data, "length {len}");
        }
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains('#')), "{names:?}");
    }

    #[test]
    fn a_smaller_object_after_a_larger_one_is_not_padded_with_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write_durably(&dir.path().join("big"), &[7u8; 3 * ALIGN]).unwrap();
        write_durably(&dir.path().join("small"), &[1u8; 10]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), [1u8; 10]);
    }

    #[test]
    fn a_file_opened_without_direct_io_gets_a_buffered_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        write_and_sync((file, false), &path, &[3u8; ALIGN + 5]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [3u8; ALIGN + 5]);
    }
}
