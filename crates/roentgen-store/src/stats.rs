//! Counters and gauges of the store, read by the server's `/metrics`.

use std::sync::atomic::AtomicU64;

/// The store's own telemetry. Counters only grow; gauges are set to the current value.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub documents_appended: AtomicU64,
    pub documents_replayed: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub wal_torn_bytes: AtomicU64,
    pub wal_unreadable_records: AtomicU64,
    /// Gauge: the WAL generation being appended to.
    pub wal_generation: AtomicU64,
    pub blocks_written: AtomicU64,
    pub block_documents_written: AtomicU64,
    pub blocks_expired: AtomicU64,
    /// Compactions done, and the blocks they merged.
    pub compactions: AtomicU64,
    pub blocks_compacted: AtomicU64,
    /// Documents the merged blocks hold, and the CPU time spent decoding their inputs and
    /// building them, in nanoseconds (the file reads and writes not counted).
    pub documents_compacted: AtomicU64,
    pub compaction_nanos: AtomicU64,
    pub corrupt_blocks: AtomicU64,
    /// Blocks written without service-graph rollups, too many of their nodes being one-offs.
    pub blocks_without_rollups: AtomicU64,
    pub trace_revisions: AtomicU64,
    /// Documents dropped because their trace had reached `max_trace_bytes`.
    pub documents_over_trace_limit: AtomicU64,
    pub summary_queries: AtomicU64,
    /// Appends that waited for a flush because the documents in memory had reached twice
    /// `max_live_bytes`.
    pub appends_held_back: AtomicU64,
    /// Documents refused because the file systems had less than `min_free_bytes` free.
    pub documents_refused_disk_full: AtomicU64,
    /// Time the flusher spent, in nanoseconds: summarizing traces (each summary is added to
    /// the service-graph rollups as it is made), building the rollups' coarser levels and
    /// encoding them, and encoding the rest of the block.
    pub flush_summaries_nanos: AtomicU64,
    pub flush_rollups_nanos: AtomicU64,
    pub flush_encode_nanos: AtomicU64,
    /// Time the WAL writer spent writing and fsyncing group commits, in nanoseconds: its CPU
    /// time, and the wall time appends waited on it.
    pub wal_commit_cpu_nanos: AtomicU64,
    pub wal_commit_wall_nanos: AtomicU64,
    /// Gauges.
    pub blocks: AtomicU64,
    pub block_bytes: AtomicU64,
    pub block_documents: AtomicU64,
    pub block_traces: AtomicU64,
    pub live_traces: AtomicU64,
    pub live_documents: AtomicU64,
    pub live_bytes: AtomicU64,
    /// The least free space of the file systems the store writes to, at the last look
    /// (`disk`).
    pub disk_free_bytes: AtomicU64,
    /// Memory held by decoded block summaries (an estimate).
    pub summary_cache_bytes: AtomicU64,
    /// Memory held by the blocks' bloom filters.
    pub bloom_filter_bytes: AtomicU64,
}
