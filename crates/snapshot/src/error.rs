//! Errors of the snapshot store.

use std::io;
use std::path::PathBuf;

use crate::manifest::ManifestError;
use crate::tree::TreeError;

/// Everything a [`crate::SnapshotStore`] operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A blob's content does not match its hash (or its expected length).
    #[error("blob {hash} is corrupt: its content does not match its hash")]
    Corrupt { hash: String },

    /// A referenced blob is not in the store.
    #[error("blob {hash} is missing from the store")]
    MissingBlob { hash: String },

    /// No committed snapshot has this id.
    #[error("snapshot {snapshot_id} not found")]
    NotFound { snapshot_id: String },

    /// A snapshot with this id is already committed.
    #[error("snapshot {snapshot_id} already exists")]
    AlreadyExists { snapshot_id: String },

    /// A snapshot id is not usable as one.
    #[error("invalid snapshot id")]
    InvalidId(#[source] ManifestError),

    /// A committed manifest could not be read or failed verification.
    #[error("manifest of snapshot {snapshot_id} is invalid")]
    Manifest {
        snapshot_id: String,
        #[source]
        source: ManifestError,
    },

    /// A tree description is invalid (for example a path escaping its root).
    #[error("invalid tree")]
    InvalidTree(#[from] TreeError),

    /// `put_tree` met a file type that a snapshot cannot hold.
    #[error("{path}: unsupported file type ({what})")]
    UnsupportedFileType { path: PathBuf, what: &'static str },

    /// `put_tree` met a path or symlink target that is not UTF-8.
    #[error("{path}: name or symlink target is not UTF-8")]
    NonUtf8Path { path: PathBuf },

    /// The source of `put_tree` is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },

    /// The destination of `materialize` exists and is not an empty directory.
    #[error("destination {path} exists and is not an empty directory")]
    DestNotEmpty { path: PathBuf },

    /// An operation needs a privilege the process lacks (the opaque xattr needs
    /// `CAP_SYS_ADMIN`, a foreign owner `CAP_CHOWN`, a whiteout `CAP_MKNOD` before
    /// Linux 5.8).
    #[error("{path}: {op} needs a privilege this process lacks (run as root)")]
    NeedsPrivilege {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    /// Like [`StoreError::io`], but EPERM becomes [`StoreError::NeedsPrivilege`].
    pub(crate) fn privileged(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| {
            if source.raw_os_error() == Some(libc::EPERM) {
                StoreError::NeedsPrivilege { op, path, source }
            } else {
                StoreError::Io { op, path, source }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_means_missing_privilege() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let e = StoreError::privileged("mknod whiteout", "/x/y")(eperm);
        assert!(matches!(e, StoreError::NeedsPrivilege { .. }));
        assert_eq!(
            e.to_string(),
            "/x/y: mknod whiteout needs a privilege this process lacks (run as root)"
        );
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        let e = StoreError::privileged("mknod whiteout", "/x/y")(enoent);
        assert!(matches!(e, StoreError::Io { .. }));
    }
}
