//! Durable embedded trace storage.
//!
//! Documents are appended to a checksummed write-ahead log (group commit, fsync before the
//! append returns), assembled into live traces in memory, and written out as immutable blocks
//! on an object store once a trace goes idle. See `docs/architecture.md` for the layout and the
//! crash-safety argument.

mod block;
mod compact;
mod config;
mod disk;
mod error;
mod index;
mod live;
mod rollup;
mod stats;
mod store;
mod wal;

/// foldhash, seeded per process, so ids chosen by a sender cannot be made to collide: the
/// summaries' indexes built at every flush (SipHash was a third of the time it took) and the
/// live traces, looked up for every document.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub use config::StoreConfig;
pub use error::StoreError;
pub use live::StoredDocument;
pub use stats::StoreStats;
pub use store::{Store, StoredTrace, SummaryCursor, SummaryPage, SummaryQuery};
pub use wal::Source;
