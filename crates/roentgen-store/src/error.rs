use std::path::PathBuf;

/// What can go wrong inside the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path} is in use by another roentgen process (lock file {path}/LOCK)")]
    Locked { path: PathBuf },
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("corrupt block {block}: {reason}")]
    CorruptBlock { block: String, reason: String },
    #[error("invalid storage location {0:?}: use a local directory path or file:///path")]
    UnsupportedStorage(String),
    #[error(
        "no room to store segments: the file system of {path} has {free} bytes free, under store.min_free_bytes ({reserve}); they are taken again once flushes or retention free space, or you do"
    )]
    DiskFull { path: PathBuf, free: u64, reserve: u64 },
    #[error("the store is shutting down")]
    Closed,
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}
