//! The thin FUSE adapter: each callback hands the work to a tokio task that calls the
//! [`Fs`] core and replies, so no FUSE thread ever waits on the network.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::path::Path;

use super::core::Fs;
use super::error::FsError;
use super::inodes::Attr;
use super::remote::Remote;
use crate::api::EntryType;

/// `st_blksize` reported for every file: large, so `cp` and `cat` use large reads.
const BLOCK_SIZE: u32 = 1 << 20;
/// Largest read and write request the kernel is asked to send.
const MAX_IO: u32 = 1 << 20;

/// The FUSE side of a mount.
pub struct FuseAdapter<R: Remote> {
    fs: Arc<Fs<R>>,
    runtime: tokio::runtime::Handle,
    /// Directory listings snapshotted at `opendir`, so a long `readdir` is one listing.
    dirs: Arc<Mutex<HashMap<u64, Arc<Vec<(String, Attr)>>>>>,
    next_dir_handle: AtomicU64,
    uid: u32,
    gid: u32,
    ttl: Duration,
    on_destroy: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl<R: Remote> FuseAdapter<R> {
    /// An adapter running the core's work on `runtime`. `on_destroy` fires when the kernel
    /// ends the session (unmount).
    pub fn new(
        fs: Arc<Fs<R>>,
        runtime: tokio::runtime::Handle,
        on_destroy: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        let ttl = fs.config().attr_ttl;
        FuseAdapter {
            fs,
            runtime,
            dirs: Arc::new(Mutex::new(HashMap::new())),
            next_dir_handle: AtomicU64::new(1),
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            ttl,
            on_destroy: Mutex::new(Some(on_destroy)),
        }
    }

    fn file_attr(&self, attr: &Attr) -> FileAttr {
        to_file_attr(attr, self.uid, self.gid)
    }

    /// Runs `work` on the runtime and hands its result to `reply`, logging failures.
    fn spawn<T, Fut>(
        &self,
        operation: &'static str,
        work: Fut,
        reply: impl FnOnce(Result<T, FsError>) + Send + 'static,
    ) where
        T: Send + 'static,
        Fut: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        self.runtime.spawn(async move {
            let result = work.await;
            if let Err(e) = &result {
                e.log(operation);
            }
            reply(result);
        });
    }
}

/// The kernel's view of an inode's attributes.
fn to_file_attr(attr: &Attr, uid: u32, gid: u32) -> FileAttr {
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

/// Answers an operation that returns nothing.
fn empty_reply(reply: ReplyEmpty) -> impl FnOnce(Result<(), FsError>) + Send + 'static {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers an operation that returns a new or found entry.
fn entry_reply(
    reply: ReplyEntry,
    ttl: Duration,
    uid: u32,
    gid: u32,
) -> impl FnOnce(Result<Attr, FsError>) + Send + 'static {
    move |r| match r {
        Ok(attr) => reply.entry(&ttl, &to_file_attr(&attr, uid, gid), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn name_str(name: &OsStr) -> Result<String, FsError> {
    name.to_str()
        .map(str::to_string)
        .ok_or_else(|| FsError::NotFound("a name that is not UTF-8".into()))
}

impl<R: Remote> Filesystem for FuseAdapter<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_BIG_WRITES,
        ] {
            if config.add_capabilities(flag).is_err() {
                log::debug!("kernel lacks {flag:?}");
            }
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        // Enough concurrent kernel read-ahead requests to keep several chunk fetches busy;
        // more would only add memory in flight.
        let _ = config.set_max_background(32);
        let _ = config.set_congestion_threshold(24);
        Ok(())
    }

    fn destroy(&mut self) {
        log::info!("{}", self.fs.stats_line());
        if let Some(tx) = self.on_destroy.lock().expect("destroy lock").take() {
            let _ = tx.send(());
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name_str(name);
        let ttl = self.ttl;
        let (uid, gid) = (self.uid, self.gid);
        self.spawn(
            "lookup",
            async move { fs.lookup(parent.0, &name?).await },
            entry_reply(reply, ttl, uid, gid),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        let ttl = self.ttl;
        let (uid, gid) = (self.uid, self.gid);
        self.spawn(
            "getattr",
            async move { fs.getattr(ino.0).await },
            move |r| match r {
                Ok(attr) => reply.attr(&ttl, &to_file_attr(&attr, uid, gid)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.spawn(
            "readlink",
            async move { fs.readlink(ino.0).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            let truncate = flags.0 & libc::O_TRUNC != 0;
            // Writes must reach us in order and uncached, so the kernel gets no page cache here.
            self.spawn(
                "open",
                async move { fs.open_write(ino.0, truncate).await },
                move |r| match r {
                    Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                    Err(e) => reply.error(errno(&e)),
                },
            );
            return;
        }
        self.spawn(
            "open",
            async move { fs.open(ino.0).await },
            move |r| match r {
                Ok((fh, keep)) => reply.opened(
                    FileHandle(fh),
                    if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    },
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.spawn(
            "read",
            async move { fs.read(fh.0, offset, size).await },
            move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL);
        };
        let fs = self.fs.clone();
        self.spawn(
            "lseek",
            async move { fs.seek_data_or_hole(ino.0, offset, whence).await },
            move |r| match r {
                Ok(found) => reply.offset(found as i64),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = self.fs.clone();
        let name = name_str(name);
        let (ttl, uid, gid) = (self.ttl, self.uid, self.gid);
        self.spawn(
            "create",
            async move { fs.create(parent.0, &name?, mode & !umask).await },
            move |r| match r {
                Ok((attr, fh)) => reply.created(
                    &ttl,
                    &to_file_attr(&attr, uid, gid),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_DIRECT_IO,
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fs = self.fs.clone();
        let data = data.to_vec();
        let owner = lock_owner.map(|o| o.0);
        self.spawn(
            "write",
            async move { fs.write(fh.0, offset, &data, owner).await },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn(
            "fsync",
            async move { fs.flush(fh.0, None).await },
            empty_reply(reply),
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = name_str(name);
        let (ttl, uid, gid) = (self.ttl, self.uid, self.gid);
        self.spawn(
            "mkdir",
            async move { fs.mkdir(parent.0, &name?).await },
            entry_reply(reply, ttl, uid, gid),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name_str(name);
        self.spawn(
            "rmdir",
            async move { fs.rmdir(parent.0, &name?).await },
            empty_reply(reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name_str(name);
        self.spawn(
            "unlink",
            async move { fs.unlink(parent.0, &name?).await },
            empty_reply(reply),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            log::warn!("rename: RENAME_EXCHANGE and RENAME_WHITEOUT are not supported");
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let fs = self.fs.clone();
        let (name, newname) = (name_str(name), name_str(newname));
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.spawn(
            "rename",
            async move {
                fs.rename(parent.0, &name?, newparent.0, &newname?, no_replace)
                    .await
            },
            empty_reply(reply),
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = self.fs.clone();
        let (ttl, uid, gid) = (self.ttl, self.uid, self.gid);
        let mtime = mtime.map(|t| {
            let time = match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => std::time::SystemTime::now(),
            };
            time.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        self.spawn(
            "setattr",
            async move { fs.setattr(ino.0, mode, size, mtime, fh.map(|f| f.0)).await },
            move |r| match r {
                Ok(attr) => reply.attr(&ttl, &to_file_attr(&attr, uid, gid)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = name_str(link_name);
        let target = target
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| FsError::Invalid("a target that is not UTF-8".into()));
        let (ttl, uid, gid) = (self.ttl, self.uid, self.gid);
        self.spawn(
            "symlink",
            async move { fs.symlink(parent.0, &name?, &target?).await },
            entry_reply(reply, ttl, uid, gid),
        );
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        log::info!("link {newname:?}: hard links are not supported");
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files arrive through create(); FIFOs, sockets and devices cannot be stored.
        log::warn!("mknod {name:?} (mode {mode:o}): only regular files, directories and symlinks can be stored");
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): a write handle commits here, so close returns the real outcome.
        let fs = self.fs.clone();
        self.spawn(
            "flush",
            async move { fs.flush(fh.0, Some(lock_owner.0)).await },
            empty_reply(reply),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let dh = self.next_dir_handle.fetch_add(1, Ordering::Relaxed);
        let dirs = self.dirs.clone();
        self.spawn(
            "opendir",
            async move { fs.readdir(ino.0).await },
            move |r| match r {
                Ok(children) => {
                    dirs.lock()
                        .expect("dirs lock")
                        .insert(dh, Arc::new(children));
                    reply.opened(FileHandle(dh), FopenFlags::empty());
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(children) = self.dirs.lock().expect("dirs lock").get(&fh.0).cloned() else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        let dots = [
            (".", ino.0, FileType::Directory),
            ("..", ino.0, FileType::Directory),
        ];
        let entries = dots
            .into_iter()
            .map(|(n, i, k)| (n.to_string(), i, k))
            .chain(
                children
                    .iter()
                    .map(|(name, attr)| (name.clone(), attr.ino, self.file_attr(attr).kind)),
            );
        for (i, (name, child, kind)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(children) = self.dirs.lock().expect("dirs lock").get(&fh.0).cloned() else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        let dir_attr = Attr {
            ino: ino.0,
            kind: EntryType::Directory,
            size: 0,
            mode: 0o040755,
            mtime: 0,
            hash: String::new(),
        };
        let dots = [
            (".".to_string(), dir_attr.clone()),
            ("..".to_string(), dir_attr),
        ];
        for (i, (name, attr)) in dots
            .iter()
            .chain(children.iter())
            .enumerate()
            .skip(offset as usize)
        {
            let generation = Generation(0);
            if reply.add(
                INodeNo(attr.ino),
                (i + 1) as u64,
                name,
                &self.ttl,
                &self.file_attr(attr),
                generation,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().expect("dirs lock").remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A remote repository has no fixed capacity: report a large, mostly free volume so
        // tools that check free space before copying do not refuse.
        reply.statfs(
            1 << 32,
            1 << 31,
            1 << 31,
            1 << 24,
            1 << 23,
            BLOCK_SIZE,
            255,
            4096,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) && self.fs.config().read_only {
            reply.error(Errno::from_i32(libc::EROFS));
        } else {
            reply.ok();
        }
    }
}
