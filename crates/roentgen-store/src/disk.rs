//! Free space on the file systems the store writes to, and the reserve it keeps there.
//!
//! The write-ahead log holds documents as they came until a flush writes them into a block, a
//! tenth of their size or less, and deletes the log. A log that filled its file system would
//! leave no room for that block, and so no way to free its own space: the store would refuse
//! every segment until someone deleted its data (measured on a 48 MiB file system, session 24).
//! So the store keeps `min_free_bytes` free. Under twice that it is *pressed*: live traces are
//! flushed at once whatever their age, retired log files are deleted rather than kept for reuse,
//! and no zeros are written ahead of the log. A compaction waits until its merged block fits
//! beside the reserve. Under the reserve, appends wait for room, and are refused with
//! [`StoreError::DiskFull`] if none comes within seconds; the WAL writer refuses what reaches
//! it under half the reserve. Reads go on. VictoriaMetrics' `-storage.minFreeDiskSpaceBytes`
//! and Elasticsearch's flood-stage watermark work the same way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::error::StoreError;
use crate::stats::StoreStats;

/// How much room the file systems have, against the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Room {
    Plenty = 0,
    /// Under twice the reserve.
    Pressed = 1,
    /// Under the reserve: appends are refused.
    Full = 2,
}

impl Room {
    fn of(free: u64, reserve: u64) -> Self {
        if free < reserve {
            Self::Full
        } else if free < reserve.saturating_mul(2) {
            Self::Pressed
        } else {
            Self::Plenty
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Plenty,
            1 => Self::Pressed,
            _ => Self::Full,
        }
    }
}

#[derive(Debug)]
pub(crate) struct DiskSpace {
    /// One directory on each file system the store writes to.
    paths: Vec<PathBuf>,
    reserve: u64,
    /// The room found by the last look.
    room: AtomicU8,
    /// Which path had the least free space at the last look; the space itself is the
    /// `disk_free_bytes` gauge.
    least: AtomicUsize,
    stats: Arc<StoreStats>,
}

impl DiskSpace {
    /// Watches the file systems of the log's and the blocks' directories, each counted once.
    pub(crate) fn new(wal_dir: &Path, blocks_dir: &Path, reserve: u64, stats: Arc<StoreStats>) -> Self {
        let mut devices = Vec::new();
        let mut kept = Vec::new();
        for path in [wal_dir, blocks_dir] {
            let device = std::fs::metadata(path).map(|m| m.dev()).ok();
            if device.is_none() || !devices.contains(&device) {
                devices.push(device);
                kept.push(path.to_path_buf());
            }
        }
        Self { paths: kept, reserve, room: AtomicU8::new(Room::Plenty as u8), least: AtomicUsize::new(0), stats }
    }

    /// Looks at the file systems now. A file system that cannot be asked counts as roomy: the
    /// store then fails at its writes, as it would without a reserve.
    pub(crate) fn look(&self) -> Room {
        let (free, least) = (self.paths.iter().enumerate())
            .filter_map(|(i, path)| available(path).map(|free| (free, i)))
            .min()
            .unwrap_or((u64::MAX, 0));
        let room = Room::of(free, self.reserve);
        self.stats.disk_free_bytes.store(free, Ordering::Relaxed);
        self.least.store(least, Ordering::Relaxed);
        let path = &self.paths[least];
        let before = Room::from_u8(self.room.swap(room as u8, Ordering::Relaxed));
        if room != before {
            let (path, reserve) = (path.display(), self.reserve);
            match room {
                Room::Full => tracing::error!(
                    "the file system of {path} has {free} bytes free, under store.min_free_bytes ({reserve}): segments are refused until flushes, retention or you free space (store.retention_bytes bounds the blocks' size)"
                ),
                Room::Pressed => tracing::warn!(
                    "the file system of {path} has {free} bytes free, under twice store.min_free_bytes ({reserve}): live traces are written into blocks at once, and the write-ahead log's old files deleted"
                ),
                Room::Plenty => tracing::info!("the file system of {path} has {free} bytes free again"),
            }
        }
        room
    }

    /// The room found by the last look.
    pub(crate) fn room(&self) -> Room {
        Room::from_u8(self.room.load(Ordering::Relaxed))
    }

    /// The least free space found by the last look.
    pub(crate) fn free(&self) -> u64 {
        self.stats.disk_free_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Free bytes under which the store is pressed: twice the reserve.
    pub(crate) fn pressed_below(&self) -> u64 {
        self.reserve.saturating_mul(2)
    }

    /// The error appends get while the room is [`Room::Full`].
    pub(crate) fn full_error(&self) -> StoreError {
        let path = self.paths[self.least.load(Ordering::Relaxed)].clone();
        StoreError::DiskFull { path, free: self.free(), reserve: self.reserve }
    }
}

/// Bytes an unprivileged writer may still use on the file system of `path`.
fn available(path: &Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(path).ok().map(|stats| bytes_available(&stats))
}

/// Like [`available`], for the file system of an open file.
pub(crate) fn available_for(file: &std::fs::File) -> Option<u64> {
    nix::sys::statvfs::fstatvfs(file).ok().map(|stats| bytes_available(&stats))
}

// The counts are 32 bits wide on some targets.
#[allow(clippy::useless_conversion)]
fn bytes_available(stats: &nix::sys::statvfs::Statvfs) -> u64 {
    u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_against_the_reserve() {
        assert_eq!(Room::of(0, 100), Room::Full);
        assert_eq!(Room::of(99, 100), Room::Full);
        assert_eq!(Room::of(100, 100), Room::Pressed);
        assert_eq!(Room::of(199, 100), Room::Pressed);
        assert_eq!(Room::of(200, 100), Room::Plenty);
        assert_eq!(Room::of(5, 0), Room::Plenty);
    }

    #[test]
    fn a_real_file_system_is_measured_once() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskSpace::new(dir.path(), dir.path(), 0, Arc::default());
        assert_eq!(disk.paths.len(), 1);
        assert_eq!(disk.look(), Room::Plenty);
        assert!(disk.free() > 0 && disk.free() < u64::MAX);
        let full = DiskSpace::new(dir.path(), dir.path(), u64::MAX, Arc::default());
        assert_eq!(full.look(), Room::Full);
        assert!(matches!(full.full_error(), StoreError::DiskFull { reserve: u64::MAX, .. }));
    }
}
