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
            FsError::Remote(_) => libc::EIO,
        }
    }

    /// Routine errors (a missing name) are logged at debug, real failures at warn.
    pub fn log(&self, operation: &str) {
        match self {
            FsError::NotFound(_) => log::debug!("{operation}: {self}"),
            _ => log::warn!("{operation}: {self}"),
        }
    }
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> Self {
        match e.status() {
            Some(404) => FsError::NotFound(e.to_string()),
            _ => FsError::Remote(e.to_string()),
        }
    }
}

/// Result type of the filesystem.
pub type Result<T, E = FsError> = std::result::Result<T, E>;
