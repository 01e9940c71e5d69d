//! The thin FUSE adapter: each callback runs the [`Fs`] core's work and replies. Work that
//! can finish at once (a cached attribute, a write into the spool) finishes on the FUSE
//! thread; work that has to wait goes on as a tokio task, so no FUSE thread ever waits on the
//! network.
//!
//! The conversions and reply closures are in `reply`, the open-directory snapshots in
//! `dirs`, and what is negotiated with the kernel in `kernel`.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::core::Fs;
use super::error::FsError;
use super::remote::Remote;

mod dirs;
mod kernel;
mod reply;

use dirs::DirSnapshots;
use reply::{errno, name_str, unix_seconds, Replies};

/// The FUSE side of a mount.
pub struct FuseAdapter<R: Remote> {
    fs: Arc<Fs<R>>,
    runtime: tokio::runtime::Handle,
    /// Directory listings snapshotted at `opendir`, so a long `readdir` is one listing.
    dirs: Arc<DirSnapshots>,
    replies: Replies,
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
        let replies = Replies {
            ttl: fs.config().attr_ttl,
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        };
        FuseAdapter {
            fs,
            runtime,
            dirs: Arc::new(DirSnapshots::default()),
            replies,
            on_destroy: Mutex::new(Some(on_destroy)),
        }
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
        self.run(async move {
            let result = work.await;
            if let Err(e) = &result {
                e.log(operation);
            }
            reply(result);
        });
    }

    /// Polls `task` once here and, if it must wait, hands it to the runtime. Most requests of
    /// a small file's life (lookups, attributes, writes into the spool) are answered without
    /// the wake-up of another thread, which cost more than the work itself: two context
    /// switches per request, half of the mount's CPU in `tar -x` of small files.
    fn run(&self, task: impl Future<Output = ()> + Send + 'static) {
        let _context = self.runtime.enter();
        let mut task = Box::pin(task);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            // The task's first poll on the runtime registers its real waker.
            self.runtime.spawn(task);
        }
    }
}

impl<R: Remote> Filesystem for FuseAdapter<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        kernel::configure(config);
        Ok(())
    }

    fn destroy(&mut self) {
        log::info!("{}", self.fs.stats_line());
        if let Some(tx) = self.on_destroy.lock().expect("destroy lock").take() {
            let _ = tx.send(());
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, name) = (self.fs.clone(), name_str(name));
        let work = async move { fs.lookup(parent.0, &name?).await };
        self.spawn("lookup", work, self.replies.entry(reply));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        let work = async move { fs.getattr(ino.0).await };
        self.spawn("getattr", work, self.replies.attr(reply));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        let work = async move { fs.readlink(ino.0).await };
        self.spawn("readlink", work, reply::data(reply));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let truncate = flags.0 & libc::O_TRUNC != 0;
        if flags.acc_mode() != OpenAccMode::O_RDONLY || truncate {
            let work = async move { fs.open_write(ino.0, truncate).await };
            self.spawn("open", work, reply::opened_for_write(reply));
        } else {
            let work = async move { fs.open(ino.0).await };
            self.spawn("open", work, reply::opened_for_read(reply));
        }
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
        let work = async move { fs.read(fh.0, offset, size).await };
        self.spawn("read", work, reply::data(reply));
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
        let work = async move { fs.seek_data_or_hole(ino.0, offset, whence).await };
        self.spawn("lseek", work, reply::offset(reply));
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
        self.run(async move {
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
        let (fs, name) = (self.fs.clone(), name_str(name));
        let work = async move { fs.create(parent.0, &name?, mode & !umask).await };
        self.spawn("create", work, self.replies.created(reply));
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
        let (fs, data) = (self.fs.clone(), data.to_vec());
        let owner = lock_owner.map(|o| o.0);
        let work = async move { fs.write(fh.0, offset, &data, owner).await };
        self.spawn("write", work, reply::written(reply));
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
        let work = async move { fs.flush(fh.0, None).await };
        self.spawn("fsync", work, self.replies.empty(reply));
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
        let (fs, name) = (self.fs.clone(), name_str(name));
        let work = async move { fs.mkdir(parent.0, &name?).await };
        self.spawn("mkdir", work, self.replies.entry(reply));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name_str(name));
        let work = async move { fs.rmdir(parent.0, &name?).await };
        self.spawn("rmdir", work, self.replies.empty(reply));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name_str(name));
        let work = async move { fs.unlink(parent.0, &name?).await };
        self.spawn("unlink", work, self.replies.empty(reply));
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
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let fs = self.fs.clone();
        let (name, newname) = (name_str(name), name_str(newname));
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let work = async move {
            fs.rename(parent.0, &name?, newparent.0, &newname?, no_replace)
                .await
        };
        self.spawn("rename", work, self.replies.empty(reply));
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
        let mtime = mtime.map(unix_seconds);
        let work = async move { fs.setattr(ino.0, mode, size, mtime, fh.map(|f| f.0)).await };
        self.spawn("setattr", work, self.replies.attr(reply));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (fs, name) = (self.fs.clone(), name_str(link_name));
        let target = target
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| FsError::Invalid("a target that is not UTF-8".into()));
        let work = async move { fs.symlink(parent.0, &name?, &target?).await };
        self.spawn("symlink", work, self.replies.entry(reply));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // ENOSYS (not ENOTSUP): the kernel then stops asking, where it asked before every
        // write (for `security.capability`), one round trip per small file. Programs see
        // EOPNOTSUPP either way.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOSYS));
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
        let work = async move { fs.flush(fh.0, Some(lock_owner.0)).await };
        self.spawn("flush", work, self.replies.empty(reply));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let (dirs, dh) = (self.dirs.clone(), self.dirs.next_handle());
        let work = async move { fs.readdir(ino.0).await };
        self.spawn("opendir", work, move |r| match r {
            Ok(children) => {
                dirs.insert(dh, children);
                reply.opened(FileHandle(dh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(children) = self.dirs.get(fh.0) else {
            return reply.error(Errno::from_i32(libc::EBADF));
        };
        dirs::fill_readdir(&mut reply, ino.0, &children, offset, self.replies);
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
        let Some(children) = self.dirs.get(fh.0) else {
            return reply.error(Errno::from_i32(libc::EBADF));
        };
        dirs::fill_readdirplus(&mut reply, ino.0, &children, offset, self.replies);
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
        self.dirs.remove(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        kernel::reply_statfs(reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) && self.fs.config().read_only {
            reply.error(Errno::from_i32(libc::EROFS));
        } else {
            reply.ok();
        }
    }
}
