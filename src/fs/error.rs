//! The filesystem's one error type. Each variant carries its errno, so every failure reaches
//! the application as the error a POSIX program expects, and the reason goes to the log.

use crate::client::ClientError;

/// An error of a filesystem operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The server could not be reached or answered with a failure.
    #[error("remote error: {0}")]
    Remote(String),
    /// Someone else changed the path first (a failed `expect`).
    #[error("conflict: {0} changed on the server")]
    Conflict(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("directory not empty")]
    NotEmpty,
    #[error("busy: {0}")]
    Busy(String),
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    /// `SEEK_DATA`/`SEEK_HOLE` at or past the end of a file.
    #[error("offset {0} is at or past the end of the file")]
    PastEnd(u64),
    /// A local spool or cache file could not be used.
    #[error("local I/O error: {0}")]
    Local(String),
}

impl FsError {
    /// The errno reported to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NotSupported(_) => libc::ENOTSUP,
            FsError::Remote(_) | FsError::Conflict(_) | FsError::Local(_) => libc::EIO,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Busy(_) => libc::EBUSY,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::PastEnd(_) => libc::ENXIO,
        }
    }

    /// Routine errors (a missing name) are logged at debug, real failures at warn.
    pub fn log(&self, operation: &str) {
        match self {
            FsError::NotFound(_) | FsError::Exists(_) | FsError::NotEmpty | FsError::PastEnd(_) => {
                log::debug!("{operation}: {self}")
            }
            _ => log::warn!("{operation}: {self}"),
        }
    }
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> Self {
        match e.status() {
            Some(404) => FsError::NotFound(e.to_string()),
            Some(409) => FsError::Conflict(match &e {
                ClientError::Http { path: Some(p), .. } => p.clone(),
                other => other.to_string(),
            }),
            _ => FsError::Remote(e.to_string()),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError::Local(e.to_string())
    }
}

/// Result type of the filesystem.
pub type Result<T, E = FsError> = std::result::Result<T, E>;
