//! Zeros written ahead of a log, so that its group commits overwrite blocks the file has.
//!
//! A write past a file's end changes its size, and `fdatasync` then writes the inode as well as
//! the data: one more request to the device a commit on ext4 without a journal, a journal
//! commit with one. Writing over blocks the file already holds changes no metadata, so a commit
//! is its data and a cache flush (`roentgen-loadgen fsync`: 0.54× the CPU a commit). A thread of
//! the log's own writes zeros ahead of it, a step at a time, so the writer never waits for them
//! unless it overtakes them. PostgreSQL fills each new WAL segment with zeros for the same reason.
//! A recycled generation's spare needs none of this until the log passes its old length.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::PAGE;

/// The zeros written in one request, and how often a dropped log's thread looks up to stop.
const CHUNK: usize = 1 << 20;
/// A step is the file's length, within these bounds, and the first is taken once the log passes
/// the lower one: a log that stays small grows its file in a few commits, and keeps no tail of
/// zeros; a long one takes few steps.
pub(super) const MIN_STEP: u64 = 1 << 20;
const MAX_STEP: u64 = 64 << 20;

/// The thread writing zeros ahead of one log file.
#[derive(Debug)]
pub(super) struct Zeros {
    shared: Arc<Shared>,
    requests: Option<Sender<u64>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    advanced: Condvar,
    stop: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// The file's length: every byte before it is allocated, and overwriting it changes no
    /// metadata.
    len: u64,
    /// Zeros are being written from `len` on.
    busy: bool,
    /// Writing zeros failed once: the log grows its file itself from then on.
    failed: bool,
}

impl Zeros {
    /// Starts the thread for `file`, now `len` bytes long; `None` if it cannot start, and the
    /// log then grows its file itself.
    pub(super) fn start(file: &File, len: u64) -> Option<Self> {
        let file = file.try_clone().ok()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { len, busy: false, failed: false }),
            advanced: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let (requests, received) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("roentgen-wal-zeros".into())
            .spawn({
                let shared = shared.clone();
                move || write_zeros(&file, &shared, &received)
            })
            .ok()?;
        Some(Self { shared, requests: Some(requests), thread: Some(thread) })
    }

    /// Before a write that ends at `end`: waits while zeros still being written will reach it.
    pub(super) fn before_write(&self, end: u64) {
        let mut state = self.shared.lock();
        while state.busy && end > state.len {
            state = self.shared.advanced.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// After a write that ended at `end`: asks for the next step once less than half a step is
    /// left ahead of the log.
    pub(super) fn after_write(&self, end: u64) {
        let mut state = self.shared.lock();
        state.len = state.len.max(end);
        if state.busy || state.failed {
            return;
        }
        let step = state.len.clamp(MIN_STEP, MAX_STEP).next_multiple_of(PAGE as u64);
        if end >= MIN_STEP && state.len - end < step / 2 {
            state.busy = true;
            let target = state.len.next_multiple_of(PAGE as u64) + step;
            if let Some(requests) = &self.requests
                && requests.send(target).is_err()
            {
                state.busy = false;
                state.failed = true;
            }
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
        while state.busy {
            state = self.shared.advanced.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The file is renamed into a spare and overwritten by a later generation once its log is
/// retired: no zeros may be written into it after the log lets it go.
impl Drop for Zeros {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_zeros(file: &File, shared: &Shared, requests: &Receiver<u64>) {
    let memory = vec![0u8; CHUNK + PAGE];
    let start = memory.as_ptr().align_offset(PAGE);
    let zeros = &memory[start..start + CHUNK];
    while let Ok(target) = requests.recv() {
        let mut at = shared.lock().len.next_multiple_of(PAGE as u64);
        let mut failed = None;
        while at < target && !shared.stop.load(Ordering::Relaxed) {
            let len = (target - at).min(CHUNK as u64);
            if let Err(e) = file.write_all_at(&zeros[..len as usize], at) {
                failed = Some(e);
                break;
            }
            at += len;
            let mut state = shared.lock();
            state.len = state.len.max(at);
            shared.advanced.notify_all();
        }
        let mut state = shared.lock();
        state.busy = false;
        if let Some(e) = failed {
            tracing::warn!(error = %e, "writing zeros ahead of the write-ahead log failed; its commits grow the file from now on");
            state.failed = true;
        }
        shared.advanced.notify_all();
    }
}
