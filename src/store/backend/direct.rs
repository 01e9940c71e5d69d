//! Durable writes of large immutable objects (chunks) to a local directory, past the page
//! cache.
//!
//! A chunk is written once and read rarely soon after, so caching it only costs: on this
//! project's measuring machine, copying a GiB of chunks into fresh page-cache pages took 3 s
//! of kernel time, where `O_DIRECT` writes it in 0.25 s (MinIO writes its shards the same way).
//! The bytes go from an aligned buffer into a staging file beside the destination
//! (`<name>#<digits>`, the convention of `object_store`'s `LocalFileSystem`: listings skip it,
//! the start-up sweep removes it), which is fsynced and renamed into place; the directory is
//! fsynced too. A file system that refuses `O_DIRECT` (tmpfs) gets an ordinary buffered write.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Result};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The alignment `O_DIRECT` asks of offsets, lengths and memory (a page covers every
/// logical block size in use).
const ALIGN: usize = 4096;

/// The size of buffer kept: a whole chunk.
const CHUNK: usize = crate::base::manifest::CHUNK_SIZE as usize;

/// Buffers kept between writes: a fresh 4 MiB allocation per chunk would fault its pages in
/// every time. At most this many are kept, so what the pool holds is bounded.
const POOLED_BUFFERS: usize = 4;
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of at least `len` bytes from the pool, or a new one.
fn take_buffer(len: usize) -> Vec<u8> {
    let pooled = POOL.lock().expect("buffer pool").pop();
    match pooled {
        Some(buffer) if buffer.len() >= len => buffer,
        _ => vec![0; len],
    }
}

/// Gives a buffer back to the pool, unless the pool is full.
fn return_buffer(buffer: Vec<u8>) {
    let mut pool = POOL.lock().expect("buffer pool");
    if pool.len() < POOLED_BUFFERS {
        pool.push(buffer);
    }
}

/// Writes `data` to `dest` durably: visible under `dest` only complete and fsynced.
pub(super) fn write_durably(dest: &Path, data: &[u8]) -> Result<()> {
    let dir = dest.parent().expect("an object path has a parent");
    let (file, staging) = create_staging(dest, dir)?;
    let written = write_and_sync(file, &staging, data);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    std::fs::rename(&staging, dest)?;
    File::open(dir)?.sync_all()
}

/// A new staging file for `dest`, opened for direct I/O where the file system allows it;
/// creates (and makes durable) the directory if it is missing.
fn create_staging(dest: &Path, dir: &Path) -> Result<((File, bool), PathBuf)> {
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

/// Opens a new file with `O_DIRECT`, or without it where the file system refuses it; says
/// which.
fn open_new(path: &Path) -> Result<(File, bool)> {
    let open = |flags| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(0)?, false)),
        Err(e) => Err(e),
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
fn write_and_sync((file, direct): (File, bool), staging: &Path, data: &[u8]) -> Result<()> {
    if !direct || !write_aligned(&file, data)? {
        log::debug!("{}: written through the page cache", staging.display());
        file.set_len(0)?;
        file.write_all_at(data, 0)?;
    }
    file.sync_all()
}

/// Writes `data` through an aligned copy, padded to whole blocks and cut back to its length;
/// `false` if the file system refused the direct write (the caller writes it buffered).
fn write_aligned(file: &File, data: &[u8]) -> Result<bool> {
    let padded = data.len().div_ceil(ALIGN) * ALIGN;
    let mut buffer = take_buffer(padded.max(CHUNK) + ALIGN);
    let start = buffer.as_ptr().align_offset(ALIGN);
    let aligned = &mut buffer[start..start + padded];
    aligned[..data.len()].copy_from_slice(data);
    aligned[data.len()..].fill(0);
    let result = file.write_all_at(aligned, 0);
    return_buffer(buffer);
    match result {
        Ok(()) => {
            if padded != data.len() {
                file.set_len(data.len() as u64)?;
            }
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_smaller_object_after_a_larger_one_on_the_same_thread_is_not_padded_with_it() {
        let dir = tempfile::tempdir().unwrap();
        write_durably(&dir.path().join("big"), &[7u8; 3 * ALIGN]).unwrap();
        write_durably(&dir.path().join("small"), &[1u8; 10]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), [1u8; 10]);
    }

    #[test]
    fn a_file_system_without_direct_io_gets_a_buffered_write() {
        // tmpfs refuses O_DIRECT.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let dest = dir.path().join("obj");
        write_durably(&dest, &[3u8; ALIGN + 5]).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), [3u8; ALIGN + 5]);
    }
}
