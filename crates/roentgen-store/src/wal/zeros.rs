//! Zeros written ahead of a log, so that its group commits overwrite blocks the file has.
//!
//! A write past a file's end changes its size, and `fdatasync` then writes the inode as well as
//! the data: one more request to the device a commit on ext4 without a journal, a journal
//! commit with one. Writing over blocks the file already holds changes no metadata, so a commit
//! is its data and a cache flush (`roentgen-loadgen fsync`: 0.54× the CPU a commit). A thread of
//! the log's own writes zeros ahead of it, a step at a time, so the writer never waits for them
//! unless it overtakes them. PostgreSQL fills each new WAL segment with zeros for the same reason.
//! A recycled generation's spare needs none of this until the log passes its old length.
//! Zeros are not written where they would leave the file system less free space than the
//! store's reserve asks (`disk`): a step of up to 64 MiB ahead of the log must not take the
//! room the flush needs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::PAGE;

/// The zeros written in one request, and how often a dropped log's thread looks up to stop.
/// 254 pages: a direct write takes a segment a page, and a virtio disk takes at most 254 of
/// them a request (its queue of 256 less two), so a mebibyte was two requests to the device,
/// each a costly exit from a virtual machine. On other disks this many pages take no more
/// requests than a mebibyte does.
const CHUNK: usize = 254 * PAGE;
/// A step is the file's length, within these bounds, and the first is taken once the log passes
/// the lower one: a log that stays small grows its file in a few commits, and keeps no tail of
/// zeros; a long one takes few steps.
pub(super) const MIN_STEP: u64 = 1 << 20;
const MAX_STEP: u64 = 64 << 20;

/// The thread writing zeros ahead of one log file. The log and the thread share one state
/// under one lock, and each wakes the other through one condition variable: the log to ask for
/// zeros or to stop, the thread as the zeros advance.
#[derive(Debug)]
pub(super) struct Zeros {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Free bytes a step must leave on the file system.
    keep_free: u64,
}

#[derive(Debug)]
struct State {
    /// The file's length: every byte before it is allocated, and overwriting it changes no
    /// metadata.
    len: u64,
    /// Where the zeros asked for end; while it is past `len`, they are being written.
    target: u64,
    /// Writing zeros failed once: the log grows its file itself from then on.
    failed: bool,
    /// The log let the file go.
    stop: bool,
}

impl State {
    fn busy(&self) -> bool {
        self.target > self.len
    }
}

impl Zeros {
    /// Starts the thread for `file`, now `len` bytes long, to write zeros while `keep_free`
    /// bytes stay free; `None` if it cannot start, and the log then grows its file itself.
    pub(super) fn start(file: &File, len: u64, keep_free: u64) -> Option<Self> {
        let file = file.try_clone().ok()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { len, target: len, failed: false, stop: false }),
            changed: Condvar::new(),
            keep_free,
        });
        let thread = std::thread::Builder::new()
            .name("roentgen-wal-zeros".into())
            .spawn({
                let shared = shared.clone();
                move || write_zeros(&file, &shared)
            })
            .ok()?;
        Some(Self { shared, thread: Some(thread) })
    }

    /// Before a write that ends at `end`: waits while zeros still being written will reach it.
    pub(super) fn before_write(&self, end: u64) {
        let mut state = self.shared.lock();
        while state.busy() && end > state.len {
            state = self.shared.wait(state);
        }
    }

    /// After a write that ended at `end`: asks for the next step once less than half a step is
    /// left ahead of the log.
    pub(super) fn after_write(&self, end: u64) {
        let mut state = self.shared.lock();
        state.len = state.len.max(end);
        if state.busy() || state.failed {
            return;
        }
        let step = state.len.clamp(MIN_STEP, MAX_STEP).next_multiple_of(PAGE as u64);
        if end >= MIN_STEP && state.len - end < step / 2 {
            state.target = state.len.next_multiple_of(PAGE as u64) + step;
            self.shared.changed.notify_all();
        }
    }

    /// The file's length as the thread has left it.
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.shared.lock().len
    }

    /// Waits until no zeros are being written.
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let mut state = self.shared.lock();
        while state.busy() {
            state = self.shared.wait(state);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(state).unwrap_or_else(PoisonError::into_inner)
    }
}

/// The file is renamed into a spare and overwritten by a later generation once its log is
/// retired: no zeros may be written into it after the log lets it go.
impl Drop for Zeros {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_zeros(file: &File, shared: &Shared) {
    let memory = vec![0u8; CHUNK + PAGE];
    let start = memory.as_ptr().align_offset(PAGE);
    let zeros = &memory[start..start + CHUNK];
    let mut state = shared.lock();
    loop {
        while !state.stop && !state.busy() {
            state = shared.wait(state);
        }
        if state.stop {
            return;
        }
        let (mut at, target) = (state.len.next_multiple_of(PAGE as u64), state.target);
        drop(state);
        let mut failed = None;
        // Skipped, not failed: the log grows its file itself this time, and asks again later.
        let room = crate::disk::available_for(file).unwrap_or(u64::MAX);
        if room < shared.keep_free.saturating_add(target.saturating_sub(at)) {
            at = target;
        }
        while at < target {
            let len = (target - at).min(CHUNK as u64);
            if let Err(e) = file.write_all_at(&zeros[..len as usize], at) {
                failed = Some(e);
                break;
            }
            at += len;
            let mut state = shared.lock();
            state.len = state.len.max(at);
            shared.changed.notify_all();
            if state.stop {
                return;
            }
        }
        state = shared.lock();
        if let Some(e) = failed {
            tracing::warn!(error = %e, "writing zeros ahead of the write-ahead log failed; its commits grow the file from now on");
            state.failed = true;
        }
        // Done, or given up: no longer busy either way.
        state.target = state.len;
        shared.changed.notify_all();
    }
}
