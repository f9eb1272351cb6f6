//! Storage settings, part of roentgen's one typed configuration tree.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the store keeps traces: where, for how long, and when live traces become blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Local directory for the write-ahead log, the lock file and (by default) the blocks; set
    /// from the top-level `data_dir` setting.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// Where blocks go: a local directory path or `file:///path`; empty means `<data_dir>/blocks`.
    /// Set from the top-level `storage` setting.
    #[serde(skip)]
    pub storage: String,
    /// Blocks older than this are deleted.
    pub retention_days: f64,
    /// While the blocks take more than this many bytes, those whose newest trace is the oldest
    /// are deleted (the newest block always stays), at the flush that goes over and every
    /// minute; 0 bounds them by age alone. As Prometheus' `retention.size`: with it, the oldest
    /// traces make room for new ones, where without it a full disk refuses them
    /// (`min_free_bytes`).
    pub retention_bytes: u64,
    /// A trace with no new segment for this long is written into the next block.
    pub trace_idle_seconds: f64,
    /// A trace that keeps receiving segments is written out after this long anyway; later
    /// segments then make a new revision of it.
    pub trace_max_live_seconds: f64,
    /// How often the flusher looks for traces to write into a block; it also looks whenever an
    /// eighth of `max_live_bytes` has come in since it last did.
    pub flush_interval_seconds: f64,
    /// Live documents whose text passes this many bytes are flushed at the next check, oldest
    /// traces first, and appends wait while twice this much is held; with their parsed form
    /// they take about 1.9 times their text in memory. By default an eighth of the memory the
    /// process may use (the machine's, or its cgroup's limit), between 64 and 512 MiB. A smaller
    /// budget holds less memory, and where new pages are dear takes less CPU too (BENCHMARKS.md),
    /// but under heavy ingest writes traces out younger: a segment that comes after its trace was
    /// written makes a new revision of it.
    pub max_live_bytes: u64,
    /// Uncompressed size of one compressed chunk of documents in a block. A lookup decompresses
    /// one chunk: 512 KiB takes a fraction of a millisecond, and stores 2% fewer bytes a segment
    /// than 256 KiB (BENCHMARKS.md).
    pub block_chunk_bytes: u32,
    /// zstd level for the chunks of documents. Level 1 is the default because, measured on
    /// segment documents, it compresses them both faster and smaller than levels 2 to 5
    /// (BENCHMARKS.md); the derived sections are always written at level 3.
    pub compression_level: i32,
    /// How often the compactor looks for small blocks to merge.
    pub compaction_interval_seconds: f64,
    /// Blocks of fewer than a quarter of this many traces are merged, into blocks of at most this
    /// many.
    pub compaction_target_traces: u64,
    /// Memory for decoded block summaries, which filters and summary queries read; the blocks
    /// used longest ago leave first. By default an eighth of the memory the process may use,
    /// between 64 MiB and 2 GiB.
    pub summary_cache_bytes: u64,
    /// Memory for the blocks' bloom filters, 1.25 bytes a trace, which spare a new trace's check
    /// for an earlier revision and a lookup the read of an index page for each block that
    /// does not hold the trace. The filters of the blocks with the newest traces are kept; a
    /// block past the budget is looked up in its index. By default a 64th of the memory the
    /// process may use, between 8 and 256 MiB (200 million traces).
    pub bloom_filter_bytes: u64,
    /// A trace keeps documents up to this many bytes; later ones are dropped (and counted), and
    /// `BatchGetTraces` reports the trace with `LimitExceeded`. X-Ray's own limit is 100 to
    /// 500 KB; this one protects the store from a runaway trace id.
    pub max_trace_bytes: u64,
    /// Free space kept on the file systems of the data directory and the blocks: segments are
    /// refused while there is less, and under twice this much every live trace is written into
    /// a block at once. A flush needs room for its block before it can delete the write-ahead
    /// log the block replaces: 128 MiB holds the block of `max_live_bytes` of documents, a
    /// tenth of their size at the default compression, with room to spare.
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./roentgen-data"),
            storage: String::new(),
            retention_days: 30.0,
            retention_bytes: 0,
            trace_idle_seconds: 10.0,
            trace_max_live_seconds: 300.0,
            flush_interval_seconds: 5.0,
            max_live_bytes: share_of_memory(512 << 20),
            block_chunk_bytes: 512 * 1024,
            compression_level: 1,
            compaction_interval_seconds: 60.0,
            compaction_target_traces: 1_000_000,
            summary_cache_bytes: share_of_memory(2 << 30),
            bloom_filter_bytes: share_of_memory(2 << 30) / 8,
            max_trace_bytes: 4 * 1024 * 1024,
            min_free_bytes: 128 * 1024 * 1024,
        }
    }
}

/// An eighth of the memory this process may use, between 64 MiB and `most`: a server on a small
/// machine or in a container with a memory limit is not killed for want of memory its
/// defaults took (live documents take about 1.9 times their bytes in memory with their parsed
/// form, as `roentgen-loadgen codecs` measures it, up to twice `max_live_bytes` of them).
fn share_of_memory(most: u64) -> u64 {
    static MEMORY: OnceLock<Option<u64>> = OnceLock::new();
    let memory = *MEMORY.get_or_init(memory_limit);
    memory.map_or(most, |memory| (memory / 8).clamp(64 << 20, most))
}

/// The least of the machine's memory and the limit of the process's memory cgroup, if known.
fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| meminfo_total(&text));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_limit(&text, |path| std::fs::read_to_string(path).ok()));
    total.into_iter().chain(cgroup).min()
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The least memory limit of the cgroups named in `/proc/self/cgroup` (v2's `memory.max`, v1's
/// `memory.limit_in_bytes`) and their ancestors, read through `read`. In a container's cgroup
/// namespace the process sees its own cgroup as the root. "max" (v2) and v1's huge "no limit"
/// leave the machine's memory to decide.
fn cgroup_limit(proc_self_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut limits = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = path.trim_end_matches('/');
        loop {
            let limit = read(&format!("{root}{dir}/{file}")).and_then(|text| text.trim().parse::<u64>().ok());
            limits.extend(limit);
            match dir.rfind('/') {
                Some(parent) => dir = &dir[..parent],
                None => break,
            }
        }
    }
    limits.into_iter().min()
}

impl StoreConfig {
    pub(crate) fn duration(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds.max(0.0))
    }

    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("retention_days", self.retention_days),
            ("trace_idle_seconds", self.trace_idle_seconds),
            ("trace_max_live_seconds", self.trace_max_live_seconds),
            ("flush_interval_seconds", self.flush_interval_seconds),
            ("compaction_interval_seconds", self.compaction_interval_seconds),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("store.{name} must be a positive number, not {value}"));
            }
        }
        if self.block_chunk_bytes < 4096 {
            return Err("store.block_chunk_bytes must be at least 4096".into());
        }
        if self.compaction_target_traces < 4 {
            return Err("store.compaction_target_traces must be at least 4".into());
        }
        if self.max_trace_bytes < roentgen_model::MAX_DOCUMENT_BYTES as u64 {
            return Err(format!(
                "store.max_trace_bytes must be at least one document's limit, {}",
                roentgen_model::MAX_DOCUMENT_BYTES
            ));
        }
        if !(1..=22).contains(&self.compression_level) {
            return Err("store.compression_level must be between 1 and 22".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_of_the_machine() {
        let meminfo = "MemTotal:       24684096 kB\nMemFree:         1000 kB\n";
        assert_eq!(meminfo_total(meminfo), Some(24_684_096 * 1024));
        assert_eq!(meminfo_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn memory_limits_of_cgroups() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |path: &str| entries.iter().find(|(p, _)| *p == path).map(|(_, text)| (*text).to_owned())
        };
        // v2, limited, seen under its path.
        let v2 = files(&[("/sys/fs/cgroup/app/memory.max", "1073741824\n")]);
        assert_eq!(cgroup_limit("0::/app\n", v2), Some(1 << 30));
        // v2 in a cgroup namespace: "/" is the container's own cgroup.
        let root = files(&[("/sys/fs/cgroup/memory.max", "536870912\n")]);
        assert_eq!(cgroup_limit("0::/\n", root), Some(512 << 20));
        // v2 without a limit, under a parent with one.
        assert_eq!(cgroup_limit("0::/app\n", files(&[("/sys/fs/cgroup/app/memory.max", "max\n")])), None);
        let nested =
            files(&[("/sys/fs/cgroup/a/b/memory.max", "max\n"), ("/sys/fs/cgroup/a/memory.max", "268435456\n")]);
        assert_eq!(cgroup_limit("0::/a/b\n", nested), Some(256 << 20));
        // v1, as on this project's machines: the memory controller's own line, no limit set.
        let v1 = files(&[("/sys/fs/cgroup/memory/process_api/9e/memory.limit_in_bytes", "9223372036854771712\n")]);
        let lines = "5:devices:/\n4:memory:/process_api/9e\n0::/\n";
        assert_eq!(cgroup_limit(lines, v1), Some(9_223_372_036_854_771_712));
        assert_eq!(
            cgroup_limit("4:cpu,memory:/x\n", files(&[("/sys/fs/cgroup/memory/x/memory.limit_in_bytes", "2048")])),
            Some(2048)
        );
        assert_eq!(cgroup_limit("garbage", files(&[])), None);
    }

    #[test]
    fn defaults_take_a_share_of_memory() {
        let config = StoreConfig::default();
        assert!((64 << 20..=512 << 20).contains(&config.max_live_bytes));
        assert!((64 << 20..=2 << 30).contains(&config.summary_cache_bytes));
        assert!((8 << 20..=256 << 20).contains(&config.bloom_filter_bytes));
    }
}
