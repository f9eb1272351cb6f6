//! roentgen's own telemetry, rendered as Prometheus text at `/metrics`.
//!
//! Metric names are constants here and nowhere else. Label sets are small and closed (sources,
//! error codes, operations), so counters live in fixed arrays or a short map.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use roentgen_model::DocumentErrorCode;
use roentgen_store::{Source, StoreStats};

const SOURCES: [Source; 3] = [Source::Api, Source::Udp, Source::Otlp];

/// Why a UDP datagram was dropped before its document could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    MissingHeader,
    InvalidHeader,
    /// A header line with nothing after it: a sender that writes the header and the document
    /// in two writes (a shell's `printf` into `/dev/udp`) sends them as two datagrams.
    MissingDocument,
}

impl DatagramError {
    const ALL: [DatagramError; 3] = [Self::MissingHeader, Self::InvalidHeader, Self::MissingDocument];

    fn as_str(self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::InvalidHeader => "invalid_header",
            Self::MissingDocument => "missing_document",
        }
    }

    /// What the sender should change, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            Self::MissingHeader => {
                r#"no header line: a datagram is {"format":"json","version":1}, a newline, then one segment document"#
            }
            Self::InvalidHeader => r#"the header line is not {"format":"json","version":1}"#,
            Self::MissingDocument => {
                "a header with no document after it: the header and its document go in one datagram"
            }
        }
    }
}

const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters of the receivers and the API.
#[derive(Debug, Default)]
pub struct Metrics {
    received: [AtomicU64; 3],
    accepted: [AtomicU64; 3],
    rejected: [[AtomicU64; DocumentErrorCode::ALL.len()]; 3],
    dropped_annotations: AtomicU64,
    datagrams_dropped: [AtomicU64; DatagramError::ALL.len()],
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    daemon: [AtomicU64; 10],
    telemetry_records: AtomicU64,
    /// The UDP receiver's socket, whose drops for a full receive buffer the kernel counts.
    udp_socket: Option<u64>,
}

fn source_index(source: Source) -> usize {
    SOURCES.iter().position(|s| *s == source).unwrap_or(0)
}

fn code_index(code: DocumentErrorCode) -> usize {
    DocumentErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0)
}

/// Daemon telemetry totals reported through `PutTelemetryRecords`, in `daemon` order.
pub const DAEMON_COUNTERS: [(&str, &str); 10] = [
    ("segments_received", "segments the daemons received"),
    ("segments_sent", "segments the daemons sent"),
    ("segments_spillover", "segments the daemons dropped for lack of buffer"),
    ("segments_rejected", "segments the daemons had rejected"),
    ("backend_timeouts", "daemon requests that timed out"),
    ("backend_connection_refused", "daemon requests refused"),
    ("backend_http_4xx", "daemon requests answered 4xx"),
    ("backend_http_5xx", "daemon requests answered 5xx"),
    ("backend_unknown_host", "daemon requests to an unknown host"),
    ("backend_other_errors", "other daemon request errors"),
];

impl Metrics {
    /// Counters that report, as well, the kernel's drops for the socket of this inode
    /// ([`crate::udp::socket_inode`]).
    pub fn with_udp_socket(inode: Option<u64>) -> Self {
        Self { udp_socket: inode, ..Self::default() }
    }

    pub fn received(&self, source: Source, count: u64) {
        self.received[source_index(source)].fetch_add(count, Ordering::Relaxed);
    }

    pub fn accepted(&self, source: Source, count: u64, dropped_annotations: u64) {
        self.accepted[source_index(source)].fetch_add(count, Ordering::Relaxed);
        self.dropped_annotations.fetch_add(dropped_annotations, Ordering::Relaxed);
    }

    pub fn rejected(&self, source: Source, code: DocumentErrorCode) {
        self.rejected[source_index(source)][code_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn datagram_dropped(&self, reason: DatagramError) {
        let i = DatagramError::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.datagrams_dropped[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn request(&self, operation: &'static str, status: u16, elapsed: Duration) {
        *self.requests.lock().expect("metrics lock").entry((operation, status)).or_default() += 1;
        let mut latency = self.latency.lock().expect("metrics lock");
        let h = latency.entry(operation).or_default();
        let seconds = elapsed.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn daemon_telemetry(&self, values: [u64; 10]) {
        self.telemetry_records.fetch_add(1, Ordering::Relaxed);
        for (slot, value) in self.daemon.iter().zip(values) {
            slot.fetch_add(value, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of these counters and the store's.
    pub fn render(&self, store: &StoreStats) -> String {
        let mut out = String::with_capacity(8192);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_source: [(&str, &str, &[AtomicU64; 3]); 2] = [
            ("roentgen_segments_received_total", "Segment documents received, by source.", &self.received),
            ("roentgen_segments_accepted_total", "Segment documents accepted and stored, by source.", &self.accepted),
        ];
        for (name, help, counters) in by_source {
            header(&mut out, name, "counter", help);
            for s in SOURCES {
                let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", s.as_str(), get(&counters[source_index(s)]));
            }
        }
        header(
            &mut out,
            "roentgen_segments_rejected_total",
            "counter",
            "Segment documents rejected, by source and X-Ray error code.",
        );
        for s in SOURCES {
            for code in DocumentErrorCode::ALL {
                let n = get(&self.rejected[source_index(s)][code_index(code)]);
                let _ = writeln!(
                    out,
                    "roentgen_segments_rejected_total{{source=\"{}\",reason=\"{code}\"}} {n}",
                    s.as_str()
                );
            }
        }
        header(
            &mut out,
            "roentgen_udp_datagrams_dropped_total",
            "counter",
            "UDP datagrams dropped before their document was read, by reason: a missing or invalid header, or a \
             receive buffer the receiver did not empty in time (as the kernel counts them).",
        );
        for (i, reason) in DatagramError::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "roentgen_udp_datagrams_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                get(&self.datagrams_dropped[i])
            );
        }
        if let Some(drops) = self.udp_socket.and_then(crate::udp::receive_buffer_drops) {
            let _ = writeln!(out, "roentgen_udp_datagrams_dropped_total{{reason=\"receive_buffer_full\"}} {drops}");
        }
        simple(
            &mut out,
            "roentgen_annotations_dropped_total",
            "counter",
            "Annotations dropped for an invalid key or value, as X-Ray drops them.",
            get(&self.dropped_annotations),
        );

        header(&mut out, "roentgen_api_requests_total", "counter", "X-Ray API requests, by operation and HTTP status.");
        for ((op, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "roentgen_api_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}");
        }
        header(
            &mut out,
            "roentgen_api_request_duration_seconds",
            "histogram",
            "X-Ray API request latency, by operation.",
        );
        for (op, h) in self.latency.lock().expect("metrics lock").iter() {
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "roentgen_api_request_duration_seconds_bucket{{operation=\"{op}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "roentgen_api_request_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "roentgen_api_request_duration_seconds_sum{{operation=\"{op}\"}} {}", h.sum);
            let _ = writeln!(out, "roentgen_api_request_duration_seconds_count{{operation=\"{op}\"}} {}", h.count);
        }

        simple(
            &mut out,
            "roentgen_daemon_telemetry_records_total",
            "counter",
            "Telemetry records received through PutTelemetryRecords.",
            get(&self.telemetry_records),
        );
        for ((name, help), value) in DAEMON_COUNTERS.iter().zip(&self.daemon) {
            simple(
                &mut out,
                &format!("roentgen_daemon_{name}_total"),
                "counter",
                &format!("Reported by daemons: {help}."),
                get(value),
            );
        }

        let store_metrics: [(&str, &str, &str, &AtomicU64); 30] = [
            (
                "roentgen_store_documents_appended_total",
                "counter",
                "Documents made durable in the write-ahead log.",
                &store.documents_appended,
            ),
            (
                "roentgen_store_documents_replayed_total",
                "counter",
                "Documents replayed from the write-ahead log at start.",
                &store.documents_replayed,
            ),
            ("roentgen_wal_bytes_total", "counter", "Bytes written to the write-ahead log.", &store.wal_bytes),
            ("roentgen_wal_syncs_total", "counter", "Group commits (fsyncs) of the write-ahead log.", &store.wal_syncs),
            (
                "roentgen_wal_torn_bytes_total",
                "counter",
                "Bytes cut off a torn write-ahead log tail at start.",
                &store.wal_torn_bytes,
            ),
            (
                "roentgen_wal_unreadable_records_total",
                "counter",
                "Write-ahead log records that could not be replayed.",
                &store.wal_unreadable_records,
            ),
            ("roentgen_blocks_written_total", "counter", "Blocks written.", &store.blocks_written),
            (
                "roentgen_block_documents_written_total",
                "counter",
                "Documents written into blocks.",
                &store.block_documents_written,
            ),
            ("roentgen_blocks_expired_total", "counter", "Blocks deleted by retention.", &store.blocks_expired),
            ("roentgen_compactions_total", "counter", "Compactions: small blocks merged into one.", &store.compactions),
            (
                "roentgen_blocks_compacted_total",
                "counter",
                "Blocks merged into larger ones by compaction.",
                &store.blocks_compacted,
            ),
            (
                "roentgen_documents_compacted_total",
                "counter",
                "Documents in the blocks compactions wrote.",
                &store.documents_compacted,
            ),
            (
                "roentgen_blocks_corrupt_total",
                "counter",
                "Blocks skipped because they could not be read.",
                &store.corrupt_blocks,
            ),
            (
                "roentgen_blocks_without_rollups_total",
                "counter",
                "Blocks written without service graph rollups, their nodes being nearly as many as their traces.",
                &store.blocks_without_rollups,
            ),
            (
                "roentgen_trace_revisions_total",
                "counter",
                "Traces written again because late segments arrived.",
                &store.trace_revisions,
            ),
            ("roentgen_summary_queries_total", "counter", "Trace summary scans.", &store.summary_queries),
            (
                "roentgen_documents_over_trace_limit_total",
                "counter",
                "Documents dropped because their trace had reached store.max_trace_bytes.",
                &store.documents_over_trace_limit,
            ),
            (
                "roentgen_appends_held_back_total",
                "counter",
                "Appends (API calls, UDP batches) made to wait because the documents in memory had reached twice store.max_live_bytes.",
                &store.appends_held_back,
            ),
            (
                "roentgen_segments_refused_disk_full_total",
                "counter",
                "Segment documents refused, from any source, because the data's file systems had less than store.min_free_bytes free.",
                &store.documents_refused_disk_full,
            ),
            ("roentgen_wal_generation", "gauge", "Current write-ahead log generation.", &store.wal_generation),
            ("roentgen_blocks", "gauge", "Blocks stored.", &store.blocks),
            ("roentgen_block_bytes", "gauge", "Bytes of stored blocks.", &store.block_bytes),
            ("roentgen_block_documents", "gauge", "Documents in stored blocks.", &store.block_documents),
            ("roentgen_block_traces", "gauge", "Trace revisions in stored blocks.", &store.block_traces),
            ("roentgen_live_traces", "gauge", "Traces held in memory, not yet in a block.", &store.live_traces),
            (
                "roentgen_live_documents",
                "gauge",
                "Documents held in memory, not yet in a block.",
                &store.live_documents,
            ),
            ("roentgen_live_bytes", "gauge", "Bytes of documents held in memory.", &store.live_bytes),
            (
                "roentgen_disk_free_bytes",
                "gauge",
                "Free bytes on the fullest file system the store writes to (data directory, blocks), as last looked at.",
                &store.disk_free_bytes,
            ),
            (
                "roentgen_summary_cache_bytes",
                "gauge",
                "Memory held by decoded block summaries (an estimate), at most store.summary_cache_bytes.",
                &store.summary_cache_bytes,
            ),
            (
                "roentgen_bloom_filter_bytes",
                "gauge",
                "Memory held by the blocks' bloom filters, at most store.bloom_filter_bytes: the newest blocks keep theirs.",
                &store.bloom_filter_bytes,
            ),
        ];
        for (name, kind, help, value) in store_metrics {
            simple(&mut out, name, kind, help, get(value));
        }
        let name = "roentgen_flush_seconds_total";
        header(
            &mut out,
            name,
            "counter",
            "CPU time the flusher spent building blocks, by phase (wall time where the OS does not say).",
        );
        let phases = [
            ("summaries", &store.flush_summaries_nanos),
            ("rollups", &store.flush_rollups_nanos),
            ("encode", &store.flush_encode_nanos),
        ];
        for (phase, nanos) in phases {
            let _ = writeln!(out, "{name}{{phase=\"{phase}\"}} {}", get(nanos) as f64 / 1e9);
        }
        let name = "roentgen_compaction_cpu_seconds_total";
        header(
            &mut out,
            name,
            "counter",
            "CPU time compactions spent decoding their inputs and building merged blocks, file reads and writes not counted (wall time where the OS does not say).",
        );
        let _ = writeln!(out, "{name} {}", get(&store.compaction_nanos) as f64 / 1e9);
        let wal_commit = [
            (
                "roentgen_wal_commit_cpu_seconds_total",
                "CPU time the write-ahead log writer spent writing and fsyncing group commits (wall time where the OS does not say).",
                &store.wal_commit_cpu_nanos,
            ),
            (
                "roentgen_wal_commit_seconds_total",
                "Wall time spent writing and fsyncing group commits: what appends wait for.",
                &store.wal_commit_wall_nanos,
            ),
        ];
        for (name, help, nanos) in wal_commit {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", get(nanos) as f64 / 1e9);
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn simple(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.received(Source::Udp, 3);
        m.rejected(Source::Udp, DocumentErrorCode::InvalidName);
        m.datagram_dropped(DatagramError::InvalidHeader);
        m.request("PutTraceSegments", 200, Duration::from_millis(2));
        let stats = StoreStats::default();
        stats.flush_rollups_nanos.store(1_500_000_000, std::sync::atomic::Ordering::Relaxed);
        let text = m.render(&stats);
        assert!(text.contains("roentgen_flush_seconds_total{phase=\"rollups\"} 1.5"));
        stats.wal_commit_wall_nanos.store(250_000_000, std::sync::atomic::Ordering::Relaxed);
        assert!(m.render(&stats).contains("\nroentgen_wal_commit_seconds_total 0.25\n"));
        stats.compaction_nanos.store(2_000_000_000, std::sync::atomic::Ordering::Relaxed);
        assert!(m.render(&stats).contains("\nroentgen_compaction_cpu_seconds_total 2\n"));
        assert!(text.contains("roentgen_segments_received_total{source=\"udp\"} 3"));
        assert!(text.contains("roentgen_segments_rejected_total{source=\"udp\",reason=\"InvalidName\"} 1"));
        assert!(text.contains("roentgen_udp_datagrams_dropped_total{reason=\"invalid_header\"} 1"));
        assert!(
            text.contains(
                "roentgen_api_request_duration_seconds_bucket{operation=\"PutTraceSegments\",le=\"0.0025\"} 1"
            )
        );
        assert!(
            text.contains(
                "roentgen_api_request_duration_seconds_bucket{operation=\"PutTraceSegments\",le=\"0.001\"} 0"
            )
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
