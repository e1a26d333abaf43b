//! Errors of file system operations, each of which becomes one errno in the
//! FUSE adapter.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument")]
    InvalidArgument,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("operation not supported")]
    NotSupported,
    #[error("unknown file handle")]
    BadHandle,
    #[error("file too large")]
    TooLarge,
    #[error("no data or hole past the offset")]
    NoSuchOffset,
    #[error("no such attribute")]
    NoAttribute,
    #[error("attribute value too large")]
    ValueTooLarge,
    #[error("name or value out of range")]
    OutOfRange,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// The errno a program sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDirectory => libc::ENOTDIR,
            FsError::IsDirectory => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::InvalidArgument => libc::EINVAL,
            FsError::NotPermitted => libc::EPERM,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::BadHandle => libc::EBADF,
            FsError::TooLarge => libc::EFBIG,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::NoAttribute => libc::ENODATA,
            FsError::ValueTooLarge => libc::E2BIG,
            FsError::OutOfRange => libc::ERANGE,
            FsError::Store(StoreError::DiskFull) => libc::ENOSPC,
            FsError::Store(StoreError::Locked) => libc::EBUSY,
            FsError::Store(_) => libc::EIO,
        }
    }

    /// True for errors that point at a fault in syn or the store rather than
    /// at a program's request, and so deserve a log line.
    pub fn is_fault(&self) -> bool {
        matches!(self, FsError::Store(_))
    }
}

pub type FsResult<T> = Result<T, FsError>;
