//! Conversions between the core's values and the kernel's: attributes, errnos, names, times,
//! and the closures that answer each kind of request.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyCreate,
    ReplyData, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyWrite, TimeOrNow,
};

use super::kernel::BLOCK_SIZE;
use crate::api::EntryType;
use crate::fs::error::FsError;
use crate::fs::inodes::Attr;

/// The kernel's view of an inode's attributes.
pub(super) fn to_file_attr(attr: &Attr, uid: u32, gid: u32) -> FileAttr {
    let (kind, perm, nlink) = match attr.kind {
        EntryType::Directory => (FileType::Directory, 0o755, 2),
        EntryType::File => (FileType::RegularFile, (attr.mode & 0o777) as u16, 1),
        EntryType::Symlink => (FileType::Symlink, 0o777, 1),
    };
    let time = UNIX_EPOCH + Duration::from_secs(attr.mtime.max(0) as u64);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind,
        perm,
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// The errno the kernel gets for `e`.
pub(super) fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// A name from the kernel as a repository path segment (which must be UTF-8).
pub(super) fn name_str(name: &OsStr) -> Result<String, FsError> {
    name.to_str()
        .map(str::to_string)
        .ok_or_else(|| FsError::NotFound("a name that is not UTF-8".into()))
}

/// Seconds since the epoch of a time given to `setattr`.
pub(super) fn unix_seconds(t: TimeOrNow) -> i64 {
    let time = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How the adapter answers: the attribute TTL and the owner shown for every file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replies {
    pub ttl: Duration,
    pub uid: u32,
    pub gid: u32,
}

impl Replies {
    /// The kernel's attributes of `attr`, owned by the mounting user.
    pub fn file_attr(&self, attr: &Attr) -> FileAttr {
        to_file_attr(attr, self.uid, self.gid)
    }

    /// Answers an operation that returns nothing.
    pub fn empty(self, reply: ReplyEmpty) -> impl FnOnce(Result<(), FsError>) + Send + 'static {
        move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Answers an operation that returns a new or found entry.
    pub fn entry(self, reply: ReplyEntry) -> impl FnOnce(Result<Attr, FsError>) + Send + 'static {
        move |r| match r {
            Ok(attr) => reply.entry(&self.ttl, &self.file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Answers `getattr` and `setattr`.
    pub fn attr(self, reply: ReplyAttr) -> impl FnOnce(Result<Attr, FsError>) + Send + 'static {
        move |r| match r {
            Ok(attr) => reply.attr(&self.ttl, &self.file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Answers `create` with the new entry and its write handle.
    pub fn created(
        self,
        reply: ReplyCreate,
    ) -> impl FnOnce(Result<(Attr, u64), FsError>) + Send + 'static {
        move |r| match r {
            Ok((attr, fh)) => reply.created(
                &self.ttl,
                &self.file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// Answers `read` and `readlink`.
pub(super) fn data(
    reply: ReplyData,
) -> impl FnOnce(Result<bytes::Bytes, FsError>) + Send + 'static {
    move |r| match r {
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers `write`.
pub(super) fn written(reply: ReplyWrite) -> impl FnOnce(Result<u32, FsError>) + Send + 'static {
    move |r| match r {
        Ok(n) => reply.written(n),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers `lseek`.
pub(super) fn offset(reply: ReplyLseek) -> impl FnOnce(Result<u64, FsError>) + Send + 'static {
    move |r| match r {
        Ok(found) => reply.offset(found as i64),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers an `open` for writing: writes must reach the core in order and uncached, so the
/// kernel keeps no page cache of the file.
pub(super) fn opened_for_write(
    reply: ReplyOpen,
) -> impl FnOnce(Result<u64, FsError>) + Send + 'static {
    move |r| match r {
        Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers an `open` for reading; the kernel keeps its cached pages if the core says so.
pub(super) fn opened_for_read(
    reply: ReplyOpen,
) -> impl FnOnce(Result<(u64, bool), FsError>) + Send + 'static {
    move |r| match r {
        Ok((fh, keep)) => {
            let flags = if keep {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            reply.opened(FileHandle(fh), flags)
        }
        Err(e) => reply.error(errno(&e)),
    }
}
