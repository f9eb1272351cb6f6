//! The store: durable appends, trace lookup, summary scans, and the background work that turns
//! live traces into blocks and deletes expired ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use roentgen_model::{AnnotationValue, Link, ParsedDocument, Text, TraceId, parse_document_text};
use roentgen_query::filter::Requirement;
use roentgen_query::{LinkSource, ServiceGraph, TimeRangeType, TraceSummary, link_source, summarize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::block::{
    self, BlockHandle, BlockMeta, BlockRead, BlockTrace, BuildOptions, MergedDocuments, RollupSections, Superseded,
    TraceDocuments,
};
use crate::config::StoreConfig;
use crate::disk::{DiskSpace, Room};
use crate::error::StoreError;
use crate::live::{Documents, LiveState, Lookahead, Reads, StoredDocument, Upsert, prefetch_documents};
use crate::rollup::{FIRST_KEPT_LEVEL, KeptRollups, ROLLUP_MINUTES, RollupBuilder, Rollups, minute, tiles};
use crate::stats::StoreStats;
use crate::wal::{self, Record, Source, WalFile};
use crate::{FastMap, FastSet};

/// Commands to the WAL writer thread, which alone appends to the log and applies to live state.
enum Command {
    Append {
        docs: Vec<Arc<StoredDocument>>,
        ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// Moves the traces due for a block into `flushing` and starts a new WAL generation, in one
    /// step with respect to appends. Answers the generation that covers every document of the
    /// traces now flushing, or `None` when nothing is due.
    Cut {
        due: DueRule,
        ack: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
    Sync {
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
    Shutdown {
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Which live traces a flush takes.
#[derive(Debug, Clone, Copy)]
struct DueRule {
    idle: Duration,
    max_live: Duration,
    max_bytes: u64,
}

/// How many commands may wait for the writer before senders are made to wait.
const WRITER_QUEUE: usize = 4096;
/// How long an append waits for room on disk before it is refused: about what one flush of
/// everything live takes (`wait_for_disk`).
const DISK_WAIT: Duration = Duration::from_secs(5);
/// The writer commits at most this many bytes of records in one group.
const GROUP_COMMIT_BYTES: usize = 8 << 20;
/// Hours of blocks' fine rollups kept in memory, by the size of their encoding (decoded, they
/// take a few times that).
const FINE_ROLLUP_CACHE_BYTES: usize = 64 << 20;

/// A block's decoded summaries with the indexes that let a filter skip most of them.
#[derive(Debug, Default)]
struct BlockSummaries {
    summaries: Vec<Arc<TraceSummary>>,
    /// Roughly the memory all this holds.
    bytes: usize,
    by_annotation: FastMap<Text, FastMap<AnnotationValue, Vec<u32>>>,
    by_service: FastMap<Text, Vec<u32>>,
    node_fault: Vec<u32>,
    node_error: Vec<u32>,
    node_throttle: Vec<u32>,
    /// How far the traces' end times lie from the times their ids carry.
    event_lateness: Lateness,
    /// The same for their segments' end times.
    service_lateness: Lateness,
}

/// The bounds of a time's offset from the time in its trace's id, over a block's traces.
#[derive(Debug, Clone, Copy)]
struct Lateness {
    min: f64,
    max: f64,
}

impl Default for Lateness {
    /// No times: a window over them is empty.
    fn default() -> Self {
        Self { min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Lateness {
    fn add(&mut self, time: f64, epoch: f64) {
        self.min = self.min.min(time - epoch);
        self.max = self.max.max(time - epoch);
    }

    /// The trace id times whose traces may have a time in `[start, end)`; a second more each
    /// side covers the rounding of times some way past the epoch.
    fn epochs(self, start: f64, end: f64) -> (f64, f64) {
        (start - self.max - 1.0, end - self.min + 1.0)
    }
}

impl BlockSummaries {
    /// Where the summaries that may fall in the query's time range are: a run of them, found
    /// by binary search. They are sorted by trace id, and so by the time a trace id carries; an
    /// `Event` or `Service` time lies within the block's lateness bounds of that time.
    fn window(&self, query: &SummaryQuery) -> std::ops::Range<usize> {
        // Past a cursor, only traces whose times are no later than its are left.
        let end = query.after.map_or(query.end, |after| query.end.min(after.time + 1.0));
        let (from, to) = match query.range {
            TimeRangeType::TraceId => (query.start, end),
            TimeRangeType::Event => self.event_lateness.epochs(query.start, end),
            TimeRangeType::Service => self.service_lateness.epochs(query.start, end),
        };
        let at = |bound: f64| self.summaries.partition_point(|s| f64::from(s.trace_id.epoch()) < bound);
        let start = at(from);
        start..at(to).max(start)
    }

    fn new(mut summaries: Vec<Arc<TraceSummary>>) -> Self {
        if !summaries.is_sorted_by_key(|s| s.trace_id) {
            summaries.sort_unstable_by_key(|s| s.trace_id);
        }
        let mut index = Self::default();
        // Each index entry: a key (with a copy of its strings) and positions; and each summary,
        // counted in the same pass: the flush's summaries are tens of megabytes, out of the cache
        // by the time a second pass reads them again.
        let mut index_bytes = 0;
        let mut summary_bytes = 0;
        for (i, s) in summaries.iter().enumerate() {
            summary_bytes += 8 + s.approximate_bytes();
            let epoch = f64::from(s.trace_id.epoch());
            index.event_lateness.add(s.end_time, epoch);
            for &time in &s.segment_end_times {
                index.service_lateness.add(time, epoch);
            }
            let i = i as u32;
            let add = |list: &mut Vec<u32>| {
                if list.last() != Some(&i) {
                    list.push(i);
                }
            };
            // Keys are copied only the first time they are seen.
            for annotation in &s.annotations {
                if !index.by_annotation.contains_key(&annotation.key) {
                    index.by_annotation.insert(annotation.key.clone(), FastMap::default());
                }
                let by_value = index.by_annotation.get_mut(&annotation.key).expect("inserted above");
                for (value, _) in &annotation.values {
                    match by_value.get_mut(value) {
                        Some(list) => add(list),
                        None => drop(by_value.insert(value.clone(), vec![i])),
                    }
                    index_bytes += 4;
                }
            }
            for service in &s.services {
                match index.by_service.get_mut(&service.name) {
                    Some(list) => add(list),
                    None => drop(index.by_service.insert(service.name.clone(), vec![i])),
                }
                index_bytes += 4;
            }
            let nodes = &s.facts.nodes;
            if nodes.iter().any(|n| n.flags.fault()) {
                add(&mut index.node_fault);
            }
            if nodes.iter().any(|n| n.flags.error()) {
                add(&mut index.node_error);
            }
            if nodes.iter().any(|n| n.flags.throttle()) {
                add(&mut index.node_throttle);
            }
        }
        index_bytes += 4 * (index.node_fault.len() + index.node_error.len() + index.node_throttle.len());
        let value_bytes = |v: &AnnotationValue| match v {
            AnnotationValue::String(s) => s.len(),
            _ => 0,
        };
        index_bytes += index
            .by_annotation
            .iter()
            .map(|(k, values)| 48 + k.len() + values.keys().map(|v| 48 + value_bytes(v)).sum::<usize>())
            .sum::<usize>();
        index_bytes += index.by_service.keys().map(|k| 64 + k.len()).sum::<usize>();
        index.bytes = index_bytes + summary_bytes;
        index.summaries = summaries;
        index
    }

    /// The positions that can match, from the most selective requirement; `None` to scan all.
    fn candidates(&self, requirements: &[Requirement]) -> Option<&[u32]> {
        requirements
            .iter()
            .map(|r| {
                let list = match r {
                    Requirement::Annotation(key, value) => {
                        self.by_annotation.get(key.as_str()).and_then(|v| v.get(value))
                    }
                    Requirement::Service(name) => self.by_service.get(name.as_str()),
                    Requirement::NodeFault => Some(&self.node_fault),
                    Requirement::NodeError => Some(&self.node_error),
                    Requirement::NodeThrottle => Some(&self.node_throttle),
                };
                list.map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|list| list.len())
    }
}

/// A trace as stored: its documents, and whether some were dropped at its size limit.
#[derive(Debug)]
pub struct StoredTrace {
    pub docs: Vec<Arc<StoredDocument>>,
    pub limit_exceeded: bool,
}

/// A time ordered as `f64::total_cmp` orders it.
#[derive(Debug, Clone, Copy)]
struct OrderedTime(f64);

impl PartialEq for OrderedTime {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrderedTime {}

impl PartialOrd for OrderedTime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedTime {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What live state holds of a trace.
struct LivePart {
    /// `None` when live state does not hold the trace.
    docs: Option<Vec<Arc<StoredDocument>>>,
    /// Whether a block may hold an earlier revision.
    in_blocks: bool,
    limit_exceeded: bool,
}

impl LivePart {
    fn of(live: &LiveState, id: TraceId) -> Self {
        let mut docs: Vec<Arc<StoredDocument>> = Vec::new();
        let (mut seen, mut maybe, mut limit_exceeded) = (false, false, false);
        for trace in live.holding(id) {
            seen = true;
            maybe |= trace.maybe_in_blocks;
            limit_exceeded |= trace.limit_exceeded;
            docs.extend(trace.docs.iter().cloned());
        }
        LivePart { docs: seen.then_some(docs), in_blocks: !seen || maybe, limit_exceeded }
    }

    /// The trace: its block revision's documents, those of live state replacing the ones of
    /// their ids.
    fn merged_with(self, earlier: Option<BlockRevision>) -> Option<StoredTrace> {
        let (mut docs, mut limit_exceeded) = (Vec::new(), self.limit_exceeded);
        if let Some(earlier) = earlier {
            docs = earlier.docs;
            limit_exceeded |= earlier.limit_exceeded;
        }
        let docs = match self.docs {
            Some(live) => Documents::of(docs.into_iter().chain(live)).into_vec(),
            None if docs.is_empty() => return None,
            None => docs,
        };
        Some(StoredTrace { docs, limit_exceeded })
    }
}

/// The newest block revision of a trace.
struct BlockRevision {
    docs: Vec<Arc<StoredDocument>>,
    revision: u32,
    limit_exceeded: bool,
}

/// A trace going into the block being written.
struct FlushTrace {
    id: TraceId,
    docs: Vec<Arc<StoredDocument>>,
    revision: u32,
    limit_exceeded: bool,
    /// The summary a query made of these documents while they were live, if still theirs.
    summary: Option<Arc<TraceSummary>>,
}

/// Values kept until the sum of their sizes passes a bound; the oldest inserted leave first.
#[derive(Debug)]
struct ByteBoundedCache<K, V> {
    entries: HashMap<K, (Arc<V>, usize)>,
    order: std::collections::VecDeque<K>,
    bytes: usize,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V> ByteBoundedCache<K, V> {
    fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), order: Default::default(), bytes: 0, capacity }
    }

    fn get<Q: std::hash::Hash + Eq + ?Sized>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.entries.get(key).map(|(v, _)| v.clone())
    }

    fn insert(&mut self, key: K, value: Arc<V>, bytes: usize) {
        if let Some((_, old)) = self.entries.insert(key.clone(), (value, bytes)) {
            self.bytes -= old;
        } else {
            self.order.push_back(key);
        }
        self.bytes += bytes;
        while self.bytes > self.capacity && self.order.len() > 1 {
            if let Some((_, size)) = self.order.pop_front().and_then(|k| self.entries.remove(&k)) {
                self.bytes -= size;
            }
        }
    }

    fn remove<Q: std::hash::Hash + Eq + ?Sized>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
    {
        if let Some((_, size)) = self.entries.remove(key) {
            self.bytes -= size;
            self.order.retain(|k| k.borrow() != key);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.order.retain(|k| keep(k));
        let entries = &mut self.entries;
        let mut bytes = 0;
        entries.retain(|k, (_, size)| {
            let kept = keep(k);
            bytes += if kept { *size } else { 0 };
            kept
        });
        self.bytes = bytes;
    }
}

/// Summaries of the live traces, with the ids they stand for.
struct LiveSummaries {
    summaries: Vec<Arc<TraceSummary>>,
    ids: FastSet<TraceId>,
    /// Live traces that may also have an earlier revision in a block.
    in_blocks: Vec<TraceId>,
}

/// A page of `GetTraceSummaries` results.
#[derive(Debug, Default)]
pub struct SummaryPage {
    /// Each matching summary with its matched event time, newest first.
    pub summaries: Vec<(Arc<TraceSummary>, f64)>,
    /// Traces looked at, matching or not.
    pub scanned: u64,
    /// Where the next page starts, when there is one.
    pub next: Option<SummaryCursor>,
}

/// A position in the newest-first order of summaries: strictly older entries come next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryCursor {
    pub time: f64,
    pub trace_id: TraceId,
}

/// What `GetTraceSummaries` asks for.
#[derive(Debug, Clone)]
pub struct SummaryQuery {
    pub start: f64,
    pub end: f64,
    pub range: TimeRangeType,
    pub after: Option<SummaryCursor>,
    pub limit: usize,
    /// Keep only this fraction of the matching traces, chosen by trace id so pages agree.
    pub sample_rate: Option<f64>,
    /// Keep only the traces this filter matches.
    pub filter: Option<Arc<roentgen_query::Filter>>,
    /// Newest first and paged by `limit`; when false, every match in no particular order
    /// (for aggregations, which need no order).
    pub ordered: bool,
}

#[derive(Debug)]
struct Catalog {
    /// Oldest first.
    blocks: Vec<Arc<BlockHandle>>,
    /// The same blocks by the latest trace epoch each holds, latest first, with it. Every new
    /// trace asks whether a block holds it, and its epoch is about now: it is looked for in the
    /// blocks that hold traces as recent, not in all of them. With 2,000 blocks, a store a
    /// month old, asking all of them took 4 µs of the WAL writer's time a new trace.
    by_latest_epoch: Vec<(u32, Arc<BlockHandle>)>,
    /// Per block id, the traces a newer block holds a newer revision of.
    /// Shared, as every summaries page and graph reads a block's set.
    superseded: HashMap<String, Arc<HashSet<TraceId>>>,
    /// The memory the blocks' bloom filters take, and the most they may (`bloom_filter_bytes`).
    bloom_bytes: usize,
    bloom_budget: usize,
}

impl Catalog {
    fn new(bloom_budget: usize) -> Self {
        Self {
            blocks: Vec::new(),
            by_latest_epoch: Vec::new(),
            superseded: HashMap::new(),
            bloom_bytes: 0,
            bloom_budget,
        }
    }

    fn add(&mut self, handle: Arc<BlockHandle>) {
        for s in &handle.meta.supersedes {
            if let Ok(id) = TraceId::parse(&s.trace_id) {
                Arc::make_mut(self.superseded.entry(s.block.clone()).or_default()).insert(id);
            }
        }
        let latest = handle.meta.max_epoch;
        let at = self.by_latest_epoch.partition_point(|(epoch, _)| *epoch > latest);
        self.by_latest_epoch.insert(at, (latest, handle.clone()));
        self.bloom_bytes += handle.bloom_bytes();
        let at = self.blocks.partition_point(|b| b.meta.id < handle.meta.id);
        self.blocks.insert(at, handle);
        self.shed_blooms();
    }

    /// Drops the bloom filters of the blocks whose traces are the oldest until the rest fit
    /// the budget. They take 1.25 bytes a trace, which a store months old counts in billions;
    /// the filters that matter are the recent blocks', which every new trace is looked for in.
    /// A lookup of an older trace reads the index page of each block reaching its epoch.
    fn shed_blooms(&mut self) {
        let mut at = self.by_latest_epoch.len();
        while self.bloom_bytes > self.bloom_budget && at > 0 {
            at -= 1;
            let bytes = self.by_latest_epoch[at].1.bloom_bytes();
            if bytes == 0 {
                continue;
            }
            let shed = Arc::new(self.by_latest_epoch[at].1.without_bloom());
            let in_blocks = self.blocks.partition_point(|b| b.meta.id < shed.meta.id);
            // Both lists hold the same blocks: the one by id has it where its id sorts.
            if let Some(same) = self.blocks.get_mut(in_blocks).filter(|b| b.meta.id == shed.meta.id) {
                *same = shed.clone();
                self.by_latest_epoch[at].1 = shed;
                self.bloom_bytes -= bytes;
            }
        }
    }

    fn retain(&mut self, keep: impl Fn(&BlockHandle) -> bool) {
        let bloom_bytes = &mut self.bloom_bytes;
        self.blocks.retain(|b| {
            let kept = keep(b);
            if !kept {
                *bloom_bytes -= b.bloom_bytes();
            }
            kept
        });
        self.by_latest_epoch.retain(|(_, b)| keep(b));
    }

    /// Hides in each merged block (of `merged_into`, input to merged block) what blocks flushed
    /// while it was built (their ids sort after its) supersede in its inputs: it holds those
    /// traces now. What blocks flushed before name there, the compaction left out.
    fn hide_in_merged_blocks(&mut self, merged_into: &HashMap<String, String>) {
        let Some(first) = merged_into.values().min() else { return };
        let later = self.blocks.partition_point(|b| b.meta.id <= *first);
        let mut moved = Vec::new();
        for block in &self.blocks[later..] {
            for superseded in &block.meta.supersedes {
                if let Some(merged) = merged_into.get(&superseded.block)
                    && block.meta.id > *merged
                    && let Ok(id) = TraceId::parse(&superseded.trace_id)
                {
                    moved.push((merged.clone(), id));
                }
            }
        }
        self.superseded.retain(|block, _| !merged_into.contains_key(block));
        for (merged, id) in moved {
            Arc::make_mut(self.superseded.entry(merged).or_default()).insert(id);
        }
    }

    /// The blocks whose traces reach `id`'s epoch, in no particular order.
    fn reaching(&self, id: TraceId) -> impl Iterator<Item = &Arc<BlockHandle>> {
        let epoch = id.epoch();
        self.by_latest_epoch.iter().take_while(move |(latest, _)| *latest >= epoch).map(|(_, b)| b)
    }

    /// Whether any block may hold the trace: asked for every new live trace, so it stops at the
    /// first block that may and clones nothing.
    fn may_hold(&self, id: TraceId) -> bool {
        self.reaching(id).any(|b| b.may_contain(id))
    }

    /// The blocks whose traces reach the earliest of `ids`' epochs, newest first: every block
    /// that may hold one of them, and none for no ids.
    fn reaching_any(&self, ids: &[TraceId]) -> Vec<Arc<BlockHandle>> {
        // Trace ids order by their epochs first.
        let Some(&earliest) = ids.iter().min() else { return Vec::new() };
        newest_first(self.reaching(earliest).cloned().collect())
    }

    /// The blocks that may hold the trace, newest first.
    fn candidates(&self, id: TraceId) -> Vec<Arc<BlockHandle>> {
        newest_first(self.reaching(id).filter(|b| b.may_contain(id)).cloned().collect())
    }
}

fn newest_first(mut blocks: Vec<Arc<BlockHandle>>) -> Vec<Arc<BlockHandle>> {
    blocks.sort_unstable_by(|a, b| b.meta.id.cmp(&a.meta.id));
    blocks
}

struct Inner {
    config: StoreConfig,
    wal_dir: PathBuf,
    objects: Arc<dyn ObjectStore>,
    /// The blocks' directory when they are on local disk, to fsync what object_store writes.
    local_blocks: Option<PathBuf>,
    live: RwLock<LiveState>,
    catalog: RwLock<Catalog>,
    /// Decoded summaries of recently used blocks, bounded by `summary_cache_bytes`.
    summary_cache: Mutex<ByteBoundedCache<String, BlockSummaries>>,
    /// Blocks out of the catalog (compacted or expired) whose files wait until no reader holds
    /// them.
    retired: Mutex<Vec<Arc<BlockHandle>>>,
    /// Blocks' minute and 10-minute rollups, an hour at a time, for the edges of graph windows.
    fine_rollups: Mutex<ByteBoundedCache<(String, i64), Rollups>>,
    writer: mpsc::Sender<Command>,
    /// Held by a flush, by retention, and by a compaction while it chooses its group and while
    /// it swaps the group for the merged block.
    flush_lock: tokio::sync::Mutex<()>,
    /// Held by a compaction from start to end: one at a time.
    compaction_lock: tokio::sync::Mutex<()>,
    /// Raw bytes of the documents in memory, live or flushing: what appends are held back on.
    held_bytes: AtomicU64,
    /// Wakes the flusher before its next tick: live documents passed `max_live_bytes`, or
    /// [`early_flush_bytes`] came in since it last looked.
    flush_now: Arc<tokio::sync::Notify>,
    /// Wakes appends held back: a flush freed memory.
    room: tokio::sync::Notify,
    /// Free space against `min_free_bytes`.
    disk: DiskSpace,
    stats: Arc<StoreStats>,
    /// Held while the store is open; released by `close`.
    lock: Mutex<Option<File>>,
}

/// Durable embedded trace storage.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    writer_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("data_dir", &self.inner.config.data_dir).finish_non_exhaustive()
    }
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn new_block_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // Time-ordered, with the low bits of a per-process counter against same-nanosecond flushes.
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("{nanos:024x}{:04x}", COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

fn parse_stored(raw: String, source: Source) -> Option<Arc<StoredDocument>> {
    let parsed = parse_document_text(&raw, usize::MAX).ok()?;
    Some(Arc::new(StoredDocument { raw: raw.into_boxed_str(), parsed, source }))
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir`: takes the directory lock, loads the
    /// blocks, replays the WAL, and starts the writer and the background tasks.
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        let summary_cache_bytes = usize::try_from(config.summary_cache_bytes).unwrap_or(usize::MAX);
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(StoreError::io(&data_dir))?;
        let lock_path = data_dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked { path: data_dir });
        }
        let wal_dir = data_dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(StoreError::io(&wal_dir))?;
        let blocks_dir = match config.storage.as_str() {
            "" => data_dir.join("blocks"),
            s => {
                let path = s.strip_prefix("file://").unwrap_or(s);
                if path.contains("://") || path.is_empty() {
                    return Err(StoreError::UnsupportedStorage(s.to_owned()));
                }
                PathBuf::from(path)
            }
        };
        std::fs::create_dir_all(&blocks_dir).map_err(StoreError::io(&blocks_dir))?;
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&blocks_dir)?);
        let stats = Arc::new(StoreStats::default());
        let disk = DiskSpace::new(&wal_dir, &blocks_dir, config.min_free_bytes, stats.clone());
        disk.look();
        let keep_free = disk.pressed_below();

        let bloom_budget = usize::try_from(config.bloom_filter_bytes).unwrap_or(usize::MAX);
        let catalog = load_catalog(objects.as_ref(), Some(&blocks_dir), &stats, bloom_budget).await?;
        let recovered = read_wal(&wal_dir, &stats)?;

        // Replay what no block covers: a block covers its traces' documents up to its generation.
        let mut live = LiveState::default();
        let started = Instant::now();
        let mut covered: HashMap<TraceId, u64> = HashMap::new();
        for (generation, source, bytes) in recovered.documents {
            let Some(doc) = String::from_utf8(bytes).ok().and_then(|raw| parse_stored(raw, source)) else {
                stats.wal_unreadable_records.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let id = doc.parsed.trace_id;
            let cover = match covered.get(&id) {
                Some(cover) => *cover,
                None => {
                    let cover = covering_generation(&catalog, objects.as_ref(), &stats, id).await?;
                    covered.insert(id, cover);
                    cover
                }
            };
            if generation <= cover {
                continue;
            }
            if !live.apply(doc, started, generation, config.max_trace_bytes, |id| catalog.may_hold(id)) {
                stats.documents_over_trace_limit.fetch_add(1, Ordering::Relaxed);
            }
            stats.documents_replayed.fetch_add(1, Ordering::Relaxed);
        }
        // Appends go on in the newest generation, unless it is of an older format (or has no
        // good header): then in a new one.
        let wal_file = match recovered.newest {
            Some((generation, Some(good_len))) => WalFile::reopen(&wal_dir, generation, good_len, keep_free)?,
            Some((generation, None)) => WalFile::create(&wal_dir, generation + 1, keep_free)?,
            None => WalFile::create(&wal_dir, 1, keep_free)?,
        };
        let current = wal_file.generation();
        let keep_from = live.oldest_generation_needed().unwrap_or(current).min(current);
        wal::retire_generations_before(&wal_dir, keep_from, spare_bytes(&config, &disk))?;
        stats.wal_generation.store(current, Ordering::Relaxed);

        let (writer, commands) = mpsc::channel(WRITER_QUEUE);
        let held_bytes = AtomicU64::new(live.bytes);
        let inner = Arc::new(Inner {
            config,
            wal_dir,
            objects,
            local_blocks: Some(blocks_dir),
            live: RwLock::new(live),
            catalog: RwLock::new(catalog),
            summary_cache: Mutex::new(ByteBoundedCache::new(summary_cache_bytes)),
            retired: Mutex::new(Vec::new()),
            fine_rollups: Mutex::new(ByteBoundedCache::new(FINE_ROLLUP_CACHE_BYTES)),
            writer,
            flush_lock: tokio::sync::Mutex::new(()),
            compaction_lock: tokio::sync::Mutex::new(()),
            held_bytes,
            flush_now: Arc::new(tokio::sync::Notify::new()),
            room: tokio::sync::Notify::new(),
            disk,
            stats,
            lock: Mutex::new(Some(lock)),
        });
        inner.publish_gauges();
        let writer_inner = inner.clone();
        let writer_thread = std::thread::Builder::new()
            .name("roentgen-wal".into())
            .spawn(move || run_writer(writer_inner, commands, wal_file))
            .map_err(StoreError::io(&data_dir))?;
        let store = Self {
            inner,
            tasks: Arc::new(Mutex::new(Vec::new())),
            writer_thread: Arc::new(Mutex::new(Some(writer_thread))),
        };
        store.start_background();
        Ok(store)
    }

    fn start_background(&self) {
        let config = &self.inner.config;
        let flush_now = Some(self.inner.flush_now.clone());
        let flusher = self.every(StoreConfig::duration(config.flush_interval_seconds), flush_now, |store| async move {
            store.flush_due(false).await.map_err(|e| ("flushing live traces into a block failed", e))?;
            // A block that takes the store past its byte bound makes room at once.
            let bound = store.inner.config.retention_bytes;
            if bound > 0 && store.inner.stats.block_bytes.load(Ordering::Relaxed) > bound {
                store.apply_retention(now_seconds()).await.map_err(|e| ("applying retention failed", e))?;
            }
            Ok(())
        });
        let retention = self.every(Duration::from_secs(60), None, |store| async move {
            store.apply_retention(now_seconds()).await.map(drop).map_err(|e| ("applying retention failed", e))
        });
        let compactor =
            self.every(StoreConfig::duration(config.compaction_interval_seconds), None, |store| async move {
                // One group at a time, until none is left.
                while store.compact().await.map_err(|e| ("compacting blocks failed", e))? > 0 {}
                Ok(())
            });
        self.tasks.lock().expect("task list lock").extend([flusher, retention, compactor]);
    }

    /// Runs `work` every `period` (the first time at once), and whenever `wake` is notified,
    /// until the store closes. A failure is logged and the work retried at the next tick or
    /// wake-up, a second later at the earliest: a failing disk is not retried on every append.
    fn every<F, Fut>(&self, period: Duration, wake: Option<Arc<tokio::sync::Notify>>, work: F) -> JoinHandle<()>
    where
        F: Fn(Store) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), (&'static str, StoreError)>> + Send,
    {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                match &wake {
                    Some(wake) => tokio::select! {
                        _ = tick.tick() => {}
                        () = wake.notified() => {}
                    },
                    None => {
                        tick.tick().await;
                    }
                }
                if let Err((what, e)) = work(store.clone()).await {
                    tracing::error!(error = %e, "{what}; will retry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })
    }

    pub fn stats(&self) -> Arc<StoreStats> {
        self.inner.stats.clone()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Appends documents and returns once they are fsync'd to the WAL and visible to readers.
    pub async fn append(&self, docs: Vec<Arc<StoredDocument>>) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        self.wait_for_disk(docs.len()).await?;
        self.wait_for_room().await;
        let (ack, done) = oneshot::channel();
        self.inner.writer.send(Command::Append { docs, ack: Some(ack) }).await.map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends documents without waiting for them to be durable (UDP, which has no reply).
    pub async fn submit(&self, docs: Vec<Arc<StoredDocument>>) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        self.wait_for_disk(docs.len()).await?;
        self.wait_for_room().await;
        self.inner.writer.send(Command::Append { docs, ack: None }).await.map_err(|_| StoreError::Closed)
    }

    /// Holds `count` documents back while the file systems are under the reserve, looking
    /// again every 100 ms, so that what flushes, retention or the operator free is seen at once;
    /// refuses them after [`DISK_WAIT`]. The flush this wakes usually frees the room first: a
    /// refusal then is a slower answer instead. The WAL writer looks at every group commit as
    /// well. It writes what came through here before the room ran out into the upper half of
    /// the reserve, and refuses only what it finds under its lower half.
    async fn wait_for_disk(&self, count: usize) -> Result<(), StoreError> {
        let inner = &self.inner;
        if inner.disk.room() != Room::Full {
            return Ok(());
        }
        inner.flush_now.notify_one();
        let deadline = Instant::now() + DISK_WAIT;
        loop {
            let freed = inner.room.notified();
            if inner.disk.look() != Room::Full {
                return Ok(());
            }
            if Instant::now() >= deadline || inner.writer.is_closed() {
                inner.stats.documents_refused_disk_full.fetch_add(count as u64, Ordering::Relaxed);
                return Err(inner.disk.full_error());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }

    /// Holds an append back while the documents in memory (live, and being written into a block)
    /// pass twice `max_live_bytes`, until a flush frees room: ingest faster than blocks can be
    /// written slows its senders down instead of growing memory without bound. An API caller
    /// waits for its answer; the UDP receiver stops reading, and the kernel drops what overflows
    /// its socket buffer, as it would for a daemon that cannot keep up.
    async fn wait_for_room(&self) {
        let inner = &self.inner;
        let limit = inner.config.max_live_bytes.saturating_mul(2);
        let mut held_back = false;
        loop {
            let room = inner.room.notified();
            // A closed store frees nothing more: the append goes on, to be refused.
            if inner.held_bytes.load(Ordering::Relaxed) <= limit || inner.writer.is_closed() {
                return;
            }
            if !held_back {
                inner.stats.appends_held_back.fetch_add(1, Ordering::Relaxed);
                held_back = true;
            }
            inner.flush_now.notify_one();
            // Checked again at least this often, in case a flush failed and will be retried.
            let _ = tokio::time::timeout(Duration::from_millis(100), room).await;
        }
    }

    /// Waits until everything sent so far is durable and visible.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.inner.writer.send(Command::Sync { ack }).await.map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes every live trace into a block now, whatever its age.
    pub async fn flush_all(&self) -> Result<(), StoreError> {
        self.sync().await?;
        self.flush_due(true).await
    }

    /// Stops the background tasks, makes everything received durable, stops the writer and
    /// releases the data directory. Appends after this fail with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        for task in self.tasks.lock().expect("task list lock").drain(..) {
            task.abort();
        }
        let _flushing = self.inner.flush_lock.lock().await;
        let (ack, done) = oneshot::channel();
        let result = match self.inner.writer.send(Command::Shutdown { ack }).await {
            Ok(()) => done.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let thread = self.writer_thread.lock().expect("writer handle lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.inner.lock.lock().expect("lock file lock").take();
        result
    }

    /// All documents of a trace, merged across blocks and live state; `None` if unknown.
    pub async fn get_trace(&self, id: TraceId) -> Result<Option<Vec<Arc<StoredDocument>>>, StoreError> {
        Ok(self.trace(id).await?.map(|t| t.docs))
    }

    /// A trace as `BatchGetTraces` returns it: its documents, merged across blocks and live
    /// state, and whether some were dropped at its size limit; `None` if unknown.
    pub async fn trace(&self, id: TraceId) -> Result<Option<StoredTrace>, StoreError> {
        let (live, blocks) = {
            let catalog = self.inner.catalog.read().expect("catalog lock");
            let live = LivePart::of(&self.inner.live.read().expect("live lock"), id);
            let blocks = if live.in_blocks { catalog.candidates(id) } else { Vec::new() };
            (live, blocks)
        };
        let earlier = self.newest_block_revisions(vec![id], blocks).await?.remove(&id);
        Ok(live.merged_with(earlier))
    }

    /// Where each of these links comes from, read from the linked traces: those in `batch`
    /// (traces being flushed together, sorted by id), else live or stored ones. Links into
    /// traces not (yet) known are left out.
    async fn link_sources(
        &self,
        links: HashSet<Link>,
        batch: &[FlushTrace],
    ) -> Result<HashMap<Link, LinkSource>, StoreError> {
        let mut by_trace: HashMap<TraceId, Vec<Link>> = HashMap::new();
        for link in links {
            by_trace.entry(link.trace_id).or_default().push(link);
        }
        let mut sources = HashMap::new();
        for (trace, links) in by_trace {
            let docs = match batch.binary_search_by_key(&trace, |t| t.id) {
                Ok(at) => batch[at].docs.clone(),
                Err(_) => self.get_trace(trace).await?.unwrap_or_default(),
            };
            let parsed: Vec<&ParsedDocument> = docs.iter().map(|d| &d.parsed).collect();
            for link in links {
                if let Some(source) = link_source(&parsed, link.id) {
                    sources.insert(link, source);
                }
            }
        }
        Ok(sources)
    }

    /// The summary with the sources of its links filled in where they can be found.
    async fn with_link_sources(&self, summary: Arc<TraceSummary>) -> Result<Arc<TraceSummary>, StoreError> {
        let unresolved: HashSet<Link> = summary.links.iter().filter(|l| l.source.is_none()).map(|l| l.target).collect();
        if unresolved.is_empty() {
            return Ok(summary);
        }
        let sources = self.link_sources(unresolved, &[]).await?;
        if sources.is_empty() {
            return Ok(summary);
        }
        let mut resolved = (*summary).clone();
        fill_link_sources(&mut resolved, &sources);
        Ok(Arc::new(resolved))
    }

    /// The newest revision of each of these traces in `blocks` (newest first), read a block at
    /// a time: each index page and chunk once for all the traces in it. A flush of many late
    /// segments read and decompressed half a chunk for each of their traces, on a thread of its
    /// own each time. A query takes `blocks` with live state, under both locks: a block added
    /// in between holds documents that the query's live state still holds, as an earlier
    /// revision they are not.
    async fn newest_block_revisions(
        &self,
        mut ids: Vec<TraceId>,
        blocks: Vec<Arc<BlockHandle>>,
    ) -> Result<FastMap<TraceId, BlockRevision>, StoreError> {
        if ids.is_empty() {
            return Ok(FastMap::default());
        }
        ids.sort_unstable();
        ids.dedup();
        // Newest block first: a trace's first read is its newest revision, and the number of
        // blocks holding it is its revision in blocks that do not record it (before version 3).
        let mut found: FastMap<TraceId, (BlockRead, u32)> = FastMap::default();
        for block in blocks {
            ids.retain(|id| found.get(id).is_none_or(|(read, _)| read.revision.is_none()));
            let wanted: Vec<TraceId> = ids.iter().copied().filter(|&id| block.may_contain(id)).collect();
            if wanted.is_empty() {
                continue;
            }
            for (id, read) in block.get_many(self.inner.objects.as_ref(), &wanted).await? {
                let Some(read) = tolerate(&block, &self.inner.stats, read)?.flatten() else { continue };
                found.entry(id).and_modify(|(_, holders)| *holders += 1).or_insert((read, 1));
            }
        }
        Ok(found
            .into_iter()
            .map(|(id, (stored, holders))| {
                let revision = BlockRevision {
                    docs: stored.docs.into_iter().filter_map(|r| parse_stored(r, Source::Api)).collect(),
                    revision: stored.revision.unwrap_or(holders),
                    limit_exceeded: stored.limit_exceeded,
                };
                (id, revision)
            })
            .collect())
    }

    /// One page of trace summaries in `[start, end)`, newest first.
    pub async fn summaries(&self, query: &SummaryQuery) -> Result<SummaryPage, StoreError> {
        let mut candidates: Vec<(f64, TraceId, Arc<TraceSummary>, f64)> = Vec::new();
        let mut scanned = 0u64;
        // Returns whether the summary was taken.
        let mut consider = |summary: &Arc<TraceSummary>, candidates: &mut Vec<_>| {
            let Some(matched) = summary.matched_time(query.range, query.start, query.end) else { return false };
            let key = summary.sort_time(query.range);
            if let Some(after) = query.after
                && (key, summary.trace_id) >= (after.time, after.trace_id)
            {
                return false;
            }
            scanned += 1;
            if query.filter.as_ref().is_some_and(|f| !f.matches(summary)) {
                return false;
            }
            if let Some(rate) = query.sample_rate
                && sample_fraction(summary.trace_id) >= rate
            {
                return false;
            }
            candidates.push((key, summary.trace_id, summary.clone(), matched));
            true
        };
        // By trace id time, a page newest first is a block's summaries backwards, from the
        // cursor on: each block's scan stops once it has taken a page and one more. Paging
        // through a window scanned all of it for every page. By end time (`Event`), a block's
        // scan backwards stops once the latest its older traces can end, their id's time plus
        // the block's lateness, is before the page and one more it has taken; `Service` times
        // (which a start after every segment's end may set) still scan the window.
        let backwards = query.ordered && query.range == TimeRangeType::TraceId;
        let taken_enough = |taken: usize| backwards && taken > query.limit;
        let bounded_by_lateness = query.ordered && query.range == TimeRangeType::Event;

        let live = self.live_summaries().await?;
        for summary in &live.summaries {
            consider(summary, &mut candidates);
        }
        let live_ids = live.ids;

        let blocks: Vec<Arc<BlockHandle>> = {
            let catalog = self.inner.catalog.read().expect("catalog lock");
            catalog.blocks.iter().filter(|b| block_overlaps(&b.meta, query)).cloned().collect()
        };
        // With a filter that needs, say, one annotation value, only the traces indexed under it
        // are looked at; they are still checked against the whole filter.
        let requirements = query.filter.as_ref().map(|f| f.requirements()).unwrap_or_default();
        for block in blocks {
            let Some(data) = tolerate(&block, &self.inner.stats, self.block_summaries(&block).await)? else {
                continue;
            };
            let superseded = self.inner.catalog.read().expect("catalog lock").superseded.get(&block.meta.id).cloned();
            let skip = |summary: &TraceSummary| {
                live_ids.contains(&summary.trace_id)
                    || superseded.as_ref().is_some_and(|s| s.contains(&summary.trace_id))
            };
            let mut window = data.window(query);
            if backwards && let Some(after) = query.after {
                let before_cursor = data.summaries.partition_point(|s| s.trace_id < after.trace_id);
                window.end = window.end.min(before_cursor.max(window.start));
            }
            let positions: Box<dyn DoubleEndedIterator<Item = usize>> = match data.candidates(&requirements) {
                Some(positions) => {
                    let at = |bound: usize| positions.partition_point(|&i| (i as usize) < bound);
                    Box::new(positions[at(window.start)..at(window.end)].iter().map(|&i| i as usize))
                }
                None => Box::new(window),
            };
            let mut taken = 0;
            // With `bounded_by_lateness`: the keys of the page and one more this block has
            // given, least on top.
            let mut best: BinaryHeap<Reverse<OrderedTime>> = BinaryHeap::new();
            for i in positions.rev() {
                let summary = &data.summaries[i];
                if best.len() > query.limit
                    && let Some(Reverse(least)) = best.peek()
                    && f64::from(summary.trace_id.epoch()) + data.event_lateness.max + 1.0 < least.0
                {
                    break;
                }
                if !skip(summary) && consider(summary, &mut candidates) {
                    taken += 1;
                    if taken_enough(taken) {
                        break;
                    }
                    if bounded_by_lateness {
                        best.push(Reverse(OrderedTime(summary.sort_time(query.range))));
                        if best.len() > query.limit + 1 {
                            best.pop();
                        }
                    }
                }
            }
        }

        if !query.ordered {
            let summaries = candidates.into_iter().map(|(_, _, s, m)| (s, m)).collect();
            return Ok(SummaryPage { summaries, scanned, next: None });
        }
        let newest_first = |a: &(f64, TraceId, _, _), b: &(f64, TraceId, _, _)| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1));
        let more = candidates.len() > query.limit;
        if more {
            // A page is a few of the window's traces: only they are sorted.
            candidates.select_nth_unstable_by(query.limit, newest_first);
            candidates.truncate(query.limit);
        }
        candidates.sort_unstable_by(newest_first);
        let next = if more {
            candidates.last().map(|(time, trace_id, _, _)| SummaryCursor { time: *time, trace_id: *trace_id })
        } else {
            None
        };
        self.inner.stats.summary_queries.fetch_add(1, Ordering::Relaxed);
        Ok(SummaryPage { summaries: candidates.into_iter().map(|(_, _, s, m)| (s, m)).collect(), scanned, next })
    }

    /// Summaries of every live trace, merged with the earlier revision a block may hold.
    async fn live_summaries(&self) -> Result<LiveSummaries, StoreError> {
        let mut ids = FastSet::default();
        let mut summaries = Vec::new();
        // Every live trace a block may also hold, and those held twice (flushing and live again).
        let mut in_blocks = Vec::new();
        let mut twice = Vec::new();
        // Traces whose documents changed since their last summary, with their documents then.
        let mut to_make = Vec::new();
        // Traces held once whose block revision is to be merged in, with their versions: their
        // merged summaries are cached like any other.
        let mut late_versions = FastMap::default();
        // What live state holds of the traces to merge, and the blocks to merge them with, as
        // both were at one moment.
        let (merge_later, blocks) = {
            let catalog = self.inner.catalog.read().expect("catalog lock");
            let live = self.inner.live.read().expect("live lock");
            ids.reserve(live.flushing.len() + live.traces.len());
            summaries.reserve(live.flushing.len() + live.traces.len());
            for (id, trace) in live.flushing.iter().chain(live.traces.iter()) {
                if !ids.insert(*id) {
                    late_versions.remove(id);
                    twice.push(*id);
                    in_blocks.push(*id);
                    continue;
                }
                if trace.maybe_in_blocks {
                    in_blocks.push(*id);
                }
                match trace.cached_summary() {
                    Some(summary) => summaries.push(summary),
                    None if trace.maybe_in_blocks => {
                        late_versions.insert(*id, trace.version());
                    }
                    None => to_make.push((*id, trace.version(), trace.docs.to_vec())),
                }
            }
            twice.sort_unstable();
            let mut merge_later: Vec<TraceId> = late_versions.keys().chain(&twice).copied().collect();
            merge_later.sort_unstable();
            merge_later.dedup();
            let blocks = catalog.reaching_any(&merge_later);
            (merge_later.into_iter().map(|id| (id, LivePart::of(&live, id))).collect::<Vec<_>>(), blocks)
        };
        in_blocks.sort_unstable();
        in_blocks.dedup();
        // A trace held twice may have had its first summary pushed, or queued.
        summaries.retain(|s: &Arc<TraceSummary>| twice.binary_search(&s.trace_id).is_err());
        to_make.retain(|(id, _, _)| twice.binary_search(id).is_err());
        // Made without the lock, which appends wait for, and off the runtime's threads, which
        // serve them: the first query after a burst of ingest summarises every new trace.
        let mut made: Vec<(TraceId, u64, Arc<TraceSummary>)> = if to_make.is_empty() {
            Vec::new()
        } else {
            let make = move || {
                to_make
                    .into_iter()
                    .map(|(id, version, docs)| {
                        let parsed: Vec<&ParsedDocument> = docs.iter().map(|d| &d.parsed).collect();
                        (id, version, Arc::new(summarize(id, &parsed, 1)))
                    })
                    .collect()
            };
            match tokio::task::spawn_blocking(make).await {
                Ok(made) => made,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only a runtime shutting down cancels it.
                Err(_) => return Err(StoreError::Closed),
            }
        };
        let late = merge_later.iter().map(|(id, _)| *id).collect();
        let mut earlier_revisions = self.newest_block_revisions(late, blocks).await?;
        for (id, live) in merge_later {
            let earlier = earlier_revisions.remove(&id);
            let revisions = earlier.as_ref().map_or(0, |r| r.revision);
            let Some(trace) = live.merged_with(earlier) else { continue };
            let parsed: Vec<&ParsedDocument> = trace.docs.iter().map(|d| &d.parsed).collect();
            let summary = Arc::new(summarize(id, &parsed, revisions + 1));
            match late_versions.get(&id) {
                Some(&version) => made.push((id, version, summary)),
                // Held twice: merged again at every query.
                None => summaries.push(summary),
            }
        }
        // Each cached by its trace unless the trace changed meanwhile, in one pass under the lock.
        if !made.is_empty() {
            let live = self.inner.live.read().expect("live lock");
            for (id, version, summary) in made {
                live.holding(id).for_each(|trace| trace.offer_summary(version, &summary));
                summaries.push(summary);
            }
        }
        for summary in &mut summaries {
            if summary.links.iter().any(|l| l.source.is_none()) {
                let refined = self.with_link_sources(summary.clone()).await?;
                let live = self.inner.live.read().expect("live lock");
                live.holding(summary.trace_id).for_each(|trace| trace.refine_summary(summary, refined.clone()));
                *summary = refined;
            }
        }
        Ok(LiveSummaries { summaries, ids, in_blocks })
    }

    /// The service graph of the traces whose last activity falls in the whole minutes that
    /// cover `[start, end)` (X-Ray's `Event` time range, widened to whole minutes; see
    /// [`roentgen_query::whole_minutes`]).
    ///
    /// Blocks answer from their rollups: the hour and day rollups every open block holds, and,
    /// for the window's first and last hours, the minute and 10-minute rollups of those hours,
    /// read and cached. Only live traces, blocks written before rollups were stored, and blocks
    /// that hold a trace since superseded or live again (their rollups count an outdated
    /// revision) are read trace by trace.
    pub async fn service_graph(&self, start: f64, end: f64) -> Result<ServiceGraph, StoreError> {
        let (start, end) = roentgen_query::whole_minutes(start, end);
        let mut graph = ServiceGraph::default();
        let inside = |s: &TraceSummary| s.matched_time(TimeRangeType::Event, start, end).is_some();
        let live = self.live_summaries().await?;
        for summary in live.summaries.iter().filter(|s| inside(s)) {
            graph.add(summary);
        }
        let (first, last) = (minute(start), minute(end));
        let blocks: Vec<Arc<BlockHandle>> = {
            let catalog = self.inner.catalog.read().expect("catalog lock");
            catalog.blocks.iter().filter(|b| b.meta.max_time >= start && b.meta.min_time < end).cloned().collect()
        };
        let hour = ROLLUP_MINUTES[FIRST_KEPT_LEVEL];
        for block in blocks {
            let superseded = self.inner.catalog.read().expect("catalog lock").superseded.get(&block.meta.id).cloned();
            let meta = &block.meta;
            let mut holds_live = false;
            let wanted: Vec<TraceId> = live.in_blocks.iter().copied().filter(|&id| block.may_contain(id)).collect();
            if !wanted.is_empty() {
                for (_, found) in block.find_many(self.inner.objects.as_ref(), &wanted).await? {
                    // Not known to hold it: read as if it did, from the summaries.
                    holds_live |= tolerate(&block, &self.inner.stats, found)?.is_none_or(|entry| entry.is_some());
                }
            }
            let nothing_superseded = superseded.as_ref().is_none_or(|s| s.is_empty());
            if let Some(kept) = block.kept_rollups.as_ref()
                && nothing_superseded
                && !holds_live
            {
                // The block's minutes, widened to whole hours (it holds nothing outside them), so
                // that a block inside the window is tiled by kept spans only.
                let (from, to) = (
                    minute(meta.min_time).div_euclid(hour) * hour,
                    minute(meta.max_time).div_euclid(hour) * hour + hour,
                );
                for (level, key) in tiles(first.max(from), last.min(to)) {
                    if level >= FIRST_KEPT_LEVEL {
                        kept.rollups.merge_into(&mut graph, &[(level, key)]);
                    } else if let Some(fine) = tolerate(
                        &block,
                        &self.inner.stats,
                        self.fine_rollups(&block, (key * ROLLUP_MINUTES[level]).div_euclid(hour)).await,
                    )?
                    .flatten()
                    {
                        fine.merge_into(&mut graph, &[(level, key)]);
                    }
                }
                continue;
            }
            let Some(data) = tolerate(&block, &self.inner.stats, self.block_summaries(&block).await)? else {
                continue;
            };
            let skip = |s: &TraceSummary| {
                live.ids.contains(&s.trace_id) || superseded.as_ref().is_some_and(|set| set.contains(&s.trace_id))
            };
            for summary in data.summaries.iter().filter(|s| inside(s) && !skip(s)) {
                graph.add(summary);
            }
        }
        Ok(graph)
    }

    /// One hour of a block's minute and 10-minute rollups, through a cache.
    async fn fine_rollups(&self, block: &BlockHandle, hour: i64) -> Result<Option<Arc<Rollups>>, StoreError> {
        let key = (block.meta.id.clone(), hour);
        if let Some(hit) = self.inner.fine_rollups.lock().expect("rollups cache lock").get(&key) {
            return Ok(Some(hit));
        }
        let Some((rollups, bytes)) = block.fine_rollups(self.inner.objects.as_ref(), hour).await? else {
            return Ok(None);
        };
        let rollups = Arc::new(rollups);
        self.inner.fine_rollups.lock().expect("rollups cache lock").insert(key, rollups.clone(), bytes);
        Ok(Some(rollups))
    }

    /// All of a block's rollups: its kept levels and its hours of fine ones, or `None` for a
    /// block written before rollups were stored.
    async fn block_rollups(
        &self,
        block: &BlockHandle,
    ) -> Result<Option<(Arc<KeptRollups>, Vec<Arc<Rollups>>)>, StoreError> {
        let Some(kept) = block.kept_rollups.clone() else { return Ok(None) };
        let mut fine = Vec::with_capacity(kept.fine_frames.len());
        for &(hour, _) in &kept.fine_frames {
            let Some(rollups) = self.fine_rollups(block, hour).await? else { return Ok(None) };
            fine.push(rollups);
        }
        Ok(Some((kept, fine)))
    }

    async fn block_summaries(&self, block: &BlockHandle) -> Result<Arc<BlockSummaries>, StoreError> {
        if let Some(hit) = self.inner.summary_cache.lock().expect("cache lock").get(&block.meta.id) {
            return Ok(hit);
        }
        let summaries = block.summaries(self.inner.objects.as_ref()).await?;
        let loaded = Arc::new(BlockSummaries::new(summaries.into_iter().map(Arc::new).collect()));
        self.cache_summaries(&block.meta.id, loaded.clone());
        Ok(loaded)
    }

    fn cache_summaries(&self, block: &str, summaries: Arc<BlockSummaries>) {
        let bytes = summaries.bytes;
        let mut cache = self.inner.summary_cache.lock().expect("cache lock");
        cache.insert(block.to_owned(), summaries, bytes);
        self.inner.stats.summary_cache_bytes.store(cache.bytes as u64, Ordering::Relaxed);
    }

    /// Writes the traces that are due (or all live traces) into one new block.
    async fn flush_due(&self, everything: bool) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _guard = inner.flush_lock.lock().await;
        let config = &inner.config;
        // Short of room, every live trace goes: its block takes a tenth of the log it frees.
        let everything = everything || inner.disk.look() >= Room::Pressed;
        let idle = if everything { Duration::ZERO } else { StoreConfig::duration(config.trace_idle_seconds) };
        let max_live = StoreConfig::duration(config.trace_max_live_seconds);
        let due = DueRule { idle, max_live, max_bytes: config.max_live_bytes };
        let (ack, done) = oneshot::channel();
        inner.writer.send(Command::Cut { due, ack }).await.map_err(|_| StoreError::Closed)?;
        let covered = done.await.map_err(|_| StoreError::Closed)??;
        inner.publish_gauges();
        let Some(covered) = covered else { return Ok(()) };
        // Traces left in `flushing` by a failed attempt go into this block too.
        let due: Vec<_> = {
            let live = inner.live.read().expect("live lock");
            let mut due = Vec::with_capacity(live.flushing.len());
            let mut flushing = Lookahead::new(live.flushing.iter(), 4);
            while let Some(((id, t), next)) = flushing.pop() {
                // Each document's count of references is written.
                prefetch_documents(|k| next.get(k).map(|&(_, t)| &t.docs[..]), Reads::References, 2);
                // A late trace's cached summary counts the block revision a query merged it with,
                // which the flush reads again.
                let summary = t.cached_summary().filter(|_| !t.maybe_in_blocks);
                due.push((*id, t.docs.to_vec(), t.bytes, t.maybe_in_blocks, t.limit_exceeded, summary));
            }
            due
        };

        let mut supersedes = Vec::new();
        let mut merged: Vec<FlushTrace> = Vec::with_capacity(due.len());
        let late: Vec<TraceId> = due.iter().filter(|(_, _, _, late, ..)| *late).map(|(id, ..)| *id).collect();
        let blocks = inner.catalog.read().expect("catalog lock").reaching_any(&late);
        let mut earlier_revisions = self.newest_block_revisions(late, blocks).await?;
        for (id, docs, live_bytes, maybe_in_blocks, mut limit_exceeded, summary) in due {
            let earlier = earlier_revisions.remove(&id);
            if earlier.is_none() && maybe_in_blocks {
                // A damaged block may hold a revision that could not be read: this one replaces it.
                let damaged = inner.catalog.read().expect("catalog lock").candidates(id);
                for block in damaged.iter().filter(|b| b.damaged.load(Ordering::Relaxed)) {
                    supersedes.push(Superseded { block: block.meta.id.clone(), trace_id: id.to_string() });
                }
            }
            // A live trace's documents have one id each, as `upsert` leaves them: with no earlier
            // revision, and within the size limit, they are the trace as it is.
            if earlier.is_none() && live_bytes <= config.max_trace_bytes {
                merged.push(FlushTrace { id, docs, revision: 1, limit_exceeded, summary });
                continue;
            }
            let mut revision = 1;
            let mut all = Documents::default();
            if let Some(earlier) = earlier {
                let newest = inner.catalog.read().expect("catalog lock").candidates(id);
                for block in newest {
                    supersedes.push(Superseded { block: block.meta.id.clone(), trace_id: id.to_string() });
                }
                all = Documents::of(earlier.docs);
                revision = earlier.revision + 1;
                limit_exceeded |= earlier.limit_exceeded;
                inner.stats.trace_revisions.fetch_add(1, Ordering::Relaxed);
            }
            // The size limit holds across revisions: what the blocks hold comes first.
            let mut bytes: u64 = all.iter().map(|d| d.raw.len() as u64).sum();
            for doc in docs {
                let size = doc.raw.len() as u64;
                if bytes + size > config.max_trace_bytes && all.get(doc.id()).is_none() {
                    limit_exceeded = true;
                    inner.stats.documents_over_trace_limit.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match all.upsert(doc) {
                    Upsert::Added => bytes += size,
                    Upsert::Replaced(replaced) => bytes = bytes + size - replaced,
                    Upsert::Ignored => {}
                }
            }
            merged.push(FlushTrace { id, docs: all.into_vec(), revision, limit_exceeded, summary: None });
        }
        merged.sort_unstable_by_key(|t| t.id);
        let builder_failed = |e: tokio::task::JoinError| StoreError::CorruptBlock {
            block: "new".into(),
            reason: format!("block builder failed: {e}"),
        };
        let stats = inner.stats.clone();
        // Each summary goes into an `Arc` as it is made, to stay in the summary cache: moved by
        // value through the flush, their 496 bytes each made two vectors of tens of megabytes,
        // on fresh pages at every flush. It also goes into the rollups as soon as it is made,
        // while it is in the processor's cache: a pass over them all afterwards read every one
        // back from memory. A trace with links goes in once its links' sources are known.
        let (merged, mut summaries, mut rollups) = tokio::task::spawn_blocking(move || {
            let timer = PhaseTimer::start();
            let mut rollups = RollupBuilder::default();
            let summaries: Vec<Arc<TraceSummary>> = merged
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    prefetch_documents(|k| merged.get(i + 1 + k).map(|t| &t.docs[..]), Reads::Records, 1);
                    let summary = match &t.summary {
                        Some(made) => made.clone(),
                        None => {
                            Arc::new(summarize(t.id, &t.docs.iter().map(|d| &d.parsed).collect::<Vec<_>>(), t.revision))
                        }
                    };
                    if summary.links.is_empty() {
                        rollups.add(&summary);
                    }
                    summary
                })
                .collect();
            stats.flush_summaries_nanos.fetch_add(nanos(timer.elapsed()), Ordering::Relaxed);
            (merged, summaries, rollups)
        })
        .await
        .map_err(builder_failed)?;
        // Links need the linked traces, which may be anywhere in the store: resolved here, between
        // the blocking steps.
        let links: HashSet<Link> = summaries.iter().flat_map(|s| &s.links).map(|l| l.target).collect();
        if !links.is_empty() {
            let link_sources = self.link_sources(links, &merged).await?;
            for summary in summaries.iter_mut().filter(|s| !s.links.is_empty()) {
                fill_link_sources(Arc::make_mut(summary), &link_sources);
                rollups.add(summary);
            }
        }

        let options = BuildOptions {
            id: new_block_id(),
            created_at: now_seconds(),
            wal_generation: covered,
            chunk_bytes: config.block_chunk_bytes as usize,
            level: config.compression_level,
            supersedes,
        };
        let stats = inner.stats.clone();
        let (data, meta, summaries) = tokio::task::spawn_blocking(move || {
            let timer = PhaseTimer::start();
            let traces: Vec<BlockTrace<'_>> = merged
                .iter()
                .zip(&summaries)
                .enumerate()
                .map(|(i, (t, summary))| {
                    prefetch_documents(|k| merged.get(i + 1 + k).map(|t| &t.docs[..]), Reads::References, 1);
                    BlockTrace {
                        trace_id: t.id,
                        docs: TraceDocuments::Text(t.docs.iter().map(|d| &*d.raw).collect()),
                        summary,
                        limit_exceeded: t.limit_exceeded,
                    }
                })
                .collect();
            let (kept, fine) = rollups.finish().split();
            let rollups = RollupSections::encode(kept, &fine, traces.len(), &options)?;
            count_absent_rollups(&stats, &rollups);
            let rolled_up = timer.elapsed();
            let (data, meta) = block::build(&traces, &[], &rollups, options)?;
            drop(traces);
            stats.flush_rollups_nanos.fetch_add(nanos(rolled_up), Ordering::Relaxed);
            stats.flush_encode_nanos.fetch_add(nanos(timer.elapsed().saturating_sub(rolled_up)), Ordering::Relaxed);
            release_documents(merged);
            let summaries = BlockSummaries::new(summaries);
            Ok::<_, StoreError>((data, meta, summaries))
        })
        .await
        .map_err(builder_failed)??;

        let handle = Arc::new(BlockHandle::from_data(meta, &data)?);
        self.write_block(data, &handle.meta).await?;
        let stats = &inner.stats;
        stats.blocks_written.fetch_add(1, Ordering::Relaxed);
        stats.block_documents_written.fetch_add(handle.meta.document_count, Ordering::Relaxed);
        // The newest blocks are the most queried: keep their summaries rather than decode them again.
        self.cache_summaries(&handle.meta.id, Arc::new(summaries));

        // The block is durable: its traces leave memory, and WAL generations no live trace
        // needs any more are deleted. Readers see the traces live or in the block, never both:
        // they take the catalog's lock before live state's, as appends do.
        let (keep_from, flushed) = {
            let mut catalog = inner.catalog.write().expect("catalog lock");
            catalog.add(handle);
            let mut live = inner.live.write().expect("live lock");
            let flushed = live.flushed();
            inner.held_bytes.store(live.bytes, Ordering::Relaxed);
            (live.oldest_generation_needed(), flushed)
        };
        inner.room.notify_waiters();
        // Freed on the runtime's threads, which parsed the documents and so own their memory:
        // mimalloc frees a block into its own thread's page at a fraction of the cost of handing
        // it back to another thread's. A thousand traces at a time, about 2 ms, between requests.
        tokio::spawn(async move {
            let mut traces = Lookahead::new(flushed.into_values(), 6);
            let mut n = 0;
            while let Some((trace, next)) = traces.pop() {
                prefetch_documents(|k| next.get(k).map(|t| &t.docs[..]), Reads::Records, 2);
                drop(trace);
                n += 1;
                if n % 1024 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let current = inner.stats.wal_generation.load(Ordering::Relaxed);
        inner.disk.look();
        wal::retire_generations_before(
            &inner.wal_dir,
            keep_from.unwrap_or(current).min(current),
            spare_bytes(config, &inner.disk),
        )?;
        inner.publish_gauges();
        Ok(())
    }

    /// Writes a block and commits it (its meta last). A write that fails takes back what it
    /// wrote, as far as it can: the traces are written again by the next attempt, and a block
    /// left committed beside that one would hold them twice after a restart.
    async fn write_block(&self, data: Vec<u8>, meta: &BlockMeta) -> Result<(), StoreError> {
        let written = self.write_block_files(data, meta).await;
        if written.is_err() {
            let inner = &self.inner;
            if let Err(e) = delete_block_files(inner.objects.as_ref(), inner.local_blocks.as_deref(), &meta.id).await {
                tracing::error!(block = %meta.id, error = %e, "a block whose write failed could not be deleted");
            }
        }
        written
    }

    async fn write_block_files(&self, data: Vec<u8>, meta: &BlockMeta) -> Result<(), StoreError> {
        let objects = self.inner.objects.as_ref();
        objects.put(&block::data_path(&meta.id), PutPayload::from(data)).await?;
        let meta_json = serde_json::to_vec_pretty(meta)
            .map_err(|e| StoreError::CorruptBlock { block: meta.id.clone(), reason: e.to_string() })?;
        if let Some(root) = &self.inner.local_blocks {
            let dir = root.join(&meta.id);
            fsync_file(&dir.join("data"))?;
            objects.put(&block::meta_path(&meta.id), PutPayload::from(meta_json)).await?;
            fsync_file(&dir.join("meta.json"))?;
            wal::sync_dir(&dir)?;
            wal::sync_dir(root)?;
        } else {
            objects.put(&block::meta_path(&meta.id), PutPayload::from(meta_json)).await?;
        }
        Ok(())
    }

    /// Deletes blocks whose newest data ([`BlockMeta::newest_time`]) is older than the
    /// retention period; then, while the blocks hold more than `retention_bytes`, those whose
    /// newest data is the oldest. The newest block is never deleted for its size.
    pub async fn apply_retention(&self, now: f64) -> Result<usize, StoreError> {
        let _guard = self.inner.flush_lock.lock().await;
        let config = &self.inner.config;
        let cutoff = now - config.retention_days * 86_400.0;
        let expired: Vec<Arc<BlockHandle>> = {
            let mut blocks = self.inner.catalog.read().expect("catalog lock").blocks.clone();
            blocks.sort_by(|a, b| a.meta.newest_time().total_cmp(&b.meta.newest_time()));
            let mut bytes: u64 = blocks.iter().map(|b| b.meta.data_bytes).sum();
            let newest = blocks.len().saturating_sub(1);
            let mut expired = Vec::new();
            for (i, block) in blocks.into_iter().enumerate() {
                let too_many_bytes = config.retention_bytes > 0 && bytes > config.retention_bytes && i < newest;
                if block.meta.newest_time() < cutoff || too_many_bytes {
                    bytes -= block.meta.data_bytes;
                    expired.push(block);
                }
            }
            expired
        };
        let count = expired.len();
        for block in expired {
            self.delete_block(block).await?;
            self.inner.stats.blocks_expired.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.publish_gauges();
        Ok(count)
    }

    /// Removes a block from the catalog and the caches, and deletes its files.
    ///
    /// A reader may still hold the block's handle (it looked the block up just before): the
    /// files are then deleted by a later [`Store::delete_retired`], once nothing holds it.
    async fn delete_block(&self, block: Arc<BlockHandle>) -> Result<(), StoreError> {
        let id = block.meta.id.as_str();
        {
            let mut catalog = self.inner.catalog.write().expect("catalog lock");
            catalog.retain(|b| b.meta.id != id);
            catalog.superseded.remove(id);
        }
        {
            let mut cache = self.inner.summary_cache.lock().expect("cache lock");
            cache.remove(id);
            self.inner.stats.summary_cache_bytes.store(cache.bytes as u64, Ordering::Relaxed);
        }
        self.inner.fine_rollups.lock().expect("rollups cache lock").retain(|(cached, _)| cached != id);
        self.inner.retired.lock().expect("retired lock").push(block);
        self.delete_retired().await
    }

    /// Deletes the files of the blocks taken out of the catalog that no reader holds any more.
    async fn delete_retired(&self) -> Result<(), StoreError> {
        let unused: Vec<Arc<BlockHandle>> = {
            let mut retired = self.inner.retired.lock().expect("retired lock");
            let (unused, held) = std::mem::take(&mut *retired).into_iter().partition(|b| Arc::strong_count(b) == 1);
            *retired = held;
            unused
        };
        for block in unused {
            delete_block_files(self.inner.objects.as_ref(), self.inner.local_blocks.as_deref(), &block.meta.id).await?;
        }
        Ok(())
    }

    /// Merges one group of small blocks into one block, if there is a group to merge; returns
    /// how many blocks it merged.
    ///
    /// Traces superseded by a later block are left out, so compaction also reclaims the space
    /// of revisions. Only blocks whose WAL generations are all deleted are merged: no replay can
    /// then meet a document the merged block would wrongly claim to cover.
    pub async fn compact(&self) -> Result<usize, StoreError> {
        let merged = self.merge_next_group().await;
        if let Err(StoreError::CorruptBlock { block, reason }) = &merged {
            let found =
                self.inner.catalog.read().expect("catalog lock").blocks.iter().find(|b| b.meta.id == *block).cloned();
            if let Some(found) = found {
                mark_damaged(&found, &self.inner.stats, reason);
            }
        }
        merged
    }

    /// [`Store::compact`], but for what a damaged input does.
    ///
    /// The flush lock is held only to choose the group and to swap it for the merged block:
    /// held for the whole merge, it held back the flushes, then the appends, and the UDP
    /// receiver's socket overflowed while a compaction took its share of the core.
    async fn merge_next_group(&self) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let _compacting = inner.compaction_lock.lock().await;
        self.delete_retired().await?;
        let current = inner.stats.wal_generation.load(Ordering::Relaxed);
        let wal_floor = wal::list_generations(&inner.wal_dir)?.first().copied().unwrap_or(current).min(current);
        // The merged block's id is taken with the group: it sorts after the blocks flushed
        // before and before those flushed while it is built, which hold newer revisions.
        let (group, hidden, merged_id) = {
            let _flushing = inner.flush_lock.lock().await;
            let catalog = inner.catalog.read().expect("catalog lock");
            let sound: Vec<&Arc<BlockHandle>> =
                catalog.blocks.iter().filter(|b| !b.damaged.load(Ordering::Relaxed)).collect();
            let metas: Vec<&BlockMeta> = sound.iter().map(|b| &b.meta).collect();
            let run = compaction_group(&metas, inner.config.compaction_target_traces, wal_floor);
            let group: Vec<Arc<BlockHandle>> = sound[run].iter().map(|b| Arc::clone(b)).collect();
            let hidden: HashMap<String, Arc<HashSet<TraceId>>> = group
                .iter()
                .filter_map(|b| catalog.superseded.get(&b.meta.id).map(|s| (b.meta.id.clone(), s.clone())))
                .collect();
            (group, hidden, new_block_id())
        };
        if group.len() < 2 {
            return Ok(0);
        }
        // The merged block, no larger than its inputs, is written before they are deleted: it
        // waits until it fits beside the reserve.
        let input_bytes: u64 = group.iter().map(|b| b.meta.data_bytes).sum();
        inner.disk.look();
        if inner.disk.free() < inner.disk.reserve().saturating_add(input_bytes) {
            return Ok(0);
        }
        // Reading, decoding and building take a runtime and a thread of their own, below every
        // other thread's priority; the inputs' files are only read until the swap.
        let (store, inputs) = (self.clone(), group.clone());
        let build = move || async move { store.build_merged(inputs, hidden, merged_id).await };
        let (data, mut meta, merged) = at_idle_priority(build).await.ok_or_else(|| StoreError::CorruptBlock {
            block: "compacted".into(),
            reason: "the compaction's thread could not start, or panicked".into(),
        })??;
        let ids: HashSet<&str> = group.iter().map(|b| b.meta.id.as_str()).collect();
        meta.compacted_from = group.iter().map(|b| b.meta.id.clone()).collect();
        let handle = Arc::new(BlockHandle::from_data(meta, &data)?);
        self.write_block(data, &handle.meta).await?;
        let documents = handle.meta.document_count;
        let merged_id = handle.meta.id.clone();
        let flushing = inner.flush_lock.lock().await;
        let swapped = {
            let mut catalog = inner.catalog.write().expect("catalog lock");
            let present = |id: &str| catalog.blocks.binary_search_by(|b| b.meta.id.as_str().cmp(id)).is_ok();
            let inputs_present = ids.iter().all(|id| present(id));
            if inputs_present {
                // Readers see the inputs or the merged block, never both. The inputs go first, so
                // that their filters' memory is free before the merged block's counts against the
                // budget, and no other block loses its filter for the swap. Revisions flushed
                // meanwhile supersede traces in the inputs: the merged block hides them instead,
                // as a restart does from its `compacted_from`.
                catalog.retain(|b| !ids.contains(b.meta.id.as_str()));
                catalog.add(handle);
                let merged_into = ids.iter().map(|&input| (input.to_owned(), merged_id.clone())).collect();
                catalog.hide_in_merged_blocks(&merged_into);
            }
            inputs_present
        };
        drop(flushing);
        if !swapped {
            // Retention deleted an input meanwhile: what it expired stays deleted.
            delete_block_files(inner.objects.as_ref(), inner.local_blocks.as_deref(), &merged_id).await?;
            return Ok(0);
        }
        // The inputs' summaries, now the merged block's: cached, they need no decoding.
        self.cache_summaries(&merged_id, Arc::new(merged));
        let merged = group.len();
        inner.stats.compactions.fetch_add(1, Ordering::Relaxed);
        inner.stats.blocks_compacted.fetch_add(merged as u64, Ordering::Relaxed);
        inner.stats.documents_compacted.fetch_add(documents, Ordering::Relaxed);
        for block in group {
            self.delete_block(block).await?;
        }
        inner.publish_gauges();
        Ok(merged)
    }

    /// The block merging `group`'s traces but those `hidden` (superseded, per block), with its
    /// summaries, as block `id`.
    async fn build_merged(
        &self,
        group: Vec<Arc<BlockHandle>>,
        hidden: HashMap<String, Arc<HashSet<TraceId>>>,
        id: String,
    ) -> Result<(Vec<u8>, BlockMeta, BlockSummaries), StoreError> {
        let inner = &self.inner;
        let timer = PhaseTimer::start();
        let objects = inner.objects.as_ref();
        let mut indexes = Vec::with_capacity(group.len());
        let mut summaries = Vec::with_capacity(group.len());
        // The traces to keep as (trace id, block, place in its index).
        let mut order: Vec<(TraceId, usize, usize)> = Vec::new();
        for (b, block) in group.iter().enumerate() {
            let index = block.index(objects).await?;
            let block_summaries = self.block_summaries(block).await?;
            let listed = &block_summaries.summaries;
            if listed.len() != index.len() || listed.iter().zip(&index).any(|(s, (id, _))| s.trace_id != *id) {
                let reason = "its summaries and its index disagree".into();
                return Err(StoreError::CorruptBlock { block: block.meta.id.clone(), reason });
            }
            let hidden = hidden.get(&block.meta.id);
            let kept = index.iter().enumerate().filter(|(_, (id, _))| !hidden.is_some_and(|h| h.contains(id)));
            order.extend(kept.map(|(at, (id, _))| (*id, b, at)));
            indexes.push(index);
            summaries.push(block_summaries);
        }
        // Newest block first, an order the stable sort keeps among equal ids, so that for a trace
        // in two of them (which supersedes should prevent) the newest copy is the one kept.
        order.reverse();
        order.sort_by_key(|t| t.0);
        order.dedup_by_key(|t| t.0);
        let mut keep: Vec<Vec<bool>> = indexes.iter().map(|index| vec![false; index.len()]).collect();
        for &(_, b, at) in &order {
            keep[b][at] = true;
        }
        // A block whose traces are all kept brings its rollups, merged instead of built again
        // from its summaries; the others' kept traces are rolled up anew.
        let mut rolled = vec![false; group.len()];
        let mut rollup_parts = Vec::new();
        for (b, block) in group.iter().enumerate() {
            if keep[b].iter().all(|&k| k)
                && let Some(parts) = self.block_rollups(block).await?
            {
                rolled[b] = true;
                rollup_parts.push(parts);
            }
        }
        // Chunks at least half full of kept traces are copied as they are, compressed.
        let copy_bytes = inner.config.block_chunk_bytes as usize / 2;
        let mut frames = Vec::new();
        let mut documents = Vec::with_capacity(group.len());
        for (b, block) in group.iter().enumerate() {
            let input = block.merge_input(objects, &indexes[b], &keep[b], copy_bytes).await?;
            let first = frames.len();
            frames.extend(input.frames);
            let mut traces = input.traces;
            for docs in traces.iter_mut().flatten() {
                if let MergedDocuments::Copied(region) = docs {
                    region.frame += first;
                }
            }
            documents.push(traces);
        }
        let ids: HashSet<&str> = group.iter().map(|b| b.meta.id.as_str()).collect();
        let supersedes: Vec<Superseded> = group
            .iter()
            .flat_map(|b| &b.meta.supersedes)
            .filter(|s| !ids.contains(s.block.as_str()))
            .cloned()
            .collect();
        let options = BuildOptions {
            id,
            created_at: now_seconds(),
            wal_generation: group.iter().map(|b| b.meta.wal_generation).max().unwrap_or(0),
            chunk_bytes: inner.config.block_chunk_bytes as usize,
            level: inner.config.compression_level,
            supersedes,
        };
        let merged: Vec<Arc<TraceSummary>> =
            order.iter().map(|&(_, b, at)| summaries[b].summaries[at].clone()).collect();
        let mut block_traces = Vec::with_capacity(order.len());
        for (&(trace_id, b, at), summary) in order.iter().zip(&merged) {
            let Some(docs) = &documents[b][at] else {
                let reason = format!("trace {trace_id} was kept but not read");
                return Err(StoreError::CorruptBlock { block: "compacted".into(), reason });
            };
            let docs = docs.to_block();
            let limit_exceeded = indexes[b][at].1.limit_exceeded;
            block_traces.push(BlockTrace { trace_id, docs, summary, limit_exceeded });
        }
        let rebuilt = order.iter().zip(&merged).filter(|((_, b, _), _)| !rolled[*b]).map(|(_, s)| &**s);
        let mut rollups = Rollups::of(rebuilt);
        for (kept, fine) in &rollup_parts {
            rollups.merge(&kept.rollups);
            fine.iter().for_each(|hour| rollups.merge(hour));
        }
        let (kept, fine) = rollups.split();
        let rollups = RollupSections::encode(kept, &fine, block_traces.len(), &options)?;
        count_absent_rollups(&inner.stats, &rollups);
        let (data, meta) = block::build(&block_traces, &frames, &rollups, options)?;
        drop(block_traces);
        let merged = BlockSummaries::new(merged);
        inner.stats.compaction_nanos.fetch_add(nanos(timer.elapsed()), Ordering::Relaxed);
        Ok((data, meta, merged))
    }
}

impl Inner {
    fn publish_gauges(&self) {
        let stats = &self.stats;
        {
            let live = self.live.read().expect("live lock");
            stats.live_traces.store((live.traces.len() + live.flushing.len()) as u64, Ordering::Relaxed);
            stats.live_documents.store(live.documents, Ordering::Relaxed);
            stats.live_bytes.store(live.bytes, Ordering::Relaxed);
        }
        let catalog = self.catalog.read().expect("catalog lock");
        stats.blocks.store(catalog.blocks.len() as u64, Ordering::Relaxed);
        stats.block_bytes.store(catalog.blocks.iter().map(|b| b.meta.data_bytes).sum(), Ordering::Relaxed);
        stats.block_documents.store(catalog.blocks.iter().map(|b| b.meta.document_count).sum(), Ordering::Relaxed);
        stats.block_traces.store(catalog.blocks.iter().map(|b| b.meta.trace_count).sum(), Ordering::Relaxed);
        stats.bloom_filter_bytes.store(catalog.bloom_bytes as u64, Ordering::Relaxed);
    }
}

/// Counts a block written without rollups, and says why the first time.
fn count_absent_rollups(stats: &StoreStats, rollups: &RollupSections) {
    if rollups.absent && stats.blocks_without_rollups.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!(
            "a block's service graph has about as many nodes as traces, so it keeps no rollups and \
             graphs over it read its traces' summaries: do service names or called hosts carry ids?"
        );
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Time spent by the current thread: its CPU time where Linux reports it (so that work sharing
/// a core with other threads is not overcounted), else wall time.
struct PhaseTimer {
    wall: Instant,
    cpu: Option<Duration>,
}

impl PhaseTimer {
    fn start() -> Self {
        Self { wall: Instant::now(), cpu: thread_cpu_time() }
    }

    fn elapsed(&self) -> Duration {
        match (self.cpu, thread_cpu_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => self.wall.elapsed(),
        }
    }
}

/// The CPU time of the calling thread, in one system call. Reading it from
/// `/proc/thread-self/schedstat` (an open, a statx, a read and a close) took 1.2% of the
/// server's CPU under ingest, at two a WAL commit.
fn thread_cpu_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok().map(Duration::from)
}

fn fill_link_sources(summary: &mut TraceSummary, sources: &HashMap<Link, LinkSource>) {
    for link in summary.links.iter_mut().filter(|l| l.source.is_none()) {
        link.source = sources.get(&link.target).cloned();
    }
}

fn block_overlaps(meta: &BlockMeta, query: &SummaryQuery) -> bool {
    match query.range {
        TimeRangeType::TraceId => f64::from(meta.max_epoch) >= query.start && f64::from(meta.min_epoch) < query.end,
        TimeRangeType::Event | TimeRangeType::Service => meta.max_time >= query.start && meta.min_time < query.end,
    }
}

/// A stable fraction in [0, 1) from the trace id's random bits.
fn sample_fraction(id: TraceId) -> f64 {
    ((id.random() >> 43) as u64 as f64) / ((1u64 << 53) as f64)
}

fn fsync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(StoreError::io(path))
}

async fn delete_quietly(objects: &dyn ObjectStore, path: &ObjectPath) -> Result<(), StoreError> {
    match objects.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What the WAL holds: its newest generation, and every document with its generation, oldest
/// first.
struct Recovered {
    /// The newest generation, and where its records end when new ones may follow them.
    newest: Option<(u64, Option<u64>)>,
    documents: Vec<(u64, Source, Vec<u8>)>,
}

fn read_wal(dir: &Path, stats: &StoreStats) -> Result<Recovered, StoreError> {
    let mut documents = Vec::new();
    let mut newest = None;
    for generation in wal::list_generations(dir)? {
        let path = dir.join(wal::file_name(generation));
        let contents = wal::read_file(&path, generation)?;
        if contents.torn_bytes > 0 {
            stats.wal_torn_bytes.fetch_add(contents.torn_bytes, Ordering::Relaxed);
            tracing::warn!(path = %path.display(), cut_bytes = contents.torn_bytes, "cutting a torn tail off the write-ahead log");
        }
        newest = Some((generation, contents.appendable.then_some(contents.good_len)));
        documents.extend(contents.records.into_iter().filter_map(|r| match r {
            Record::Document { source, bytes } => Some((generation, source, bytes)),
            Record::Checkpoint => None,
        }));
    }
    Ok(Recovered { newest, documents })
}

/// The newest WAL generation that a block holding this trace covers; 0 when none holds it.
async fn covering_generation(
    catalog: &Catalog,
    objects: &dyn ObjectStore,
    stats: &StoreStats,
    id: TraceId,
) -> Result<u64, StoreError> {
    let mut cover = 0;
    for block in catalog.candidates(id) {
        // A damaged block is not known to cover it: the document is replayed, and written again.
        if block.meta.wal_generation > cover
            && tolerate(&block, stats, block.contains(objects, id).await)? == Some(true)
        {
            cover = block.meta.wal_generation;
        }
    }
    Ok(cover)
}

/// A read of a block that failed its checks (as a flipped bit makes them fail) goes on as if
/// the block did not hold what could not be read: `None`. The block is counted and logged once,
/// and left out of compaction. Before, one bad chunk failed every flush that met a trace in it,
/// and so every later flush, for good (session 24).
fn tolerate<T>(block: &BlockHandle, stats: &StoreStats, read: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(StoreError::CorruptBlock { reason, .. }) => {
            mark_damaged(block, stats, &reason);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn mark_damaged(block: &BlockHandle, stats: &StoreStats, reason: &str) {
    if !block.damaged.swap(true, Ordering::Relaxed) {
        stats.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
        tracing::error!(block = %block.meta.id, %reason, "a block is damaged: what cannot be read in it is skipped, and it is not compacted");
    }
}

/// Raw document bytes one compaction reads into memory, at most.
const COMPACTION_MAX_RAW_BYTES: u64 = 512 << 20;
/// Small blocks are merged once this many have gathered, however few traces they hold.
const COMPACTION_MIN_BLOCKS: usize = 8;

/// The next blocks to compact: the first run of consecutive small blocks (under a quarter of
/// `target` traces and of [`COMPACTION_MAX_RAW_BYTES`], WAL generations all below `wal_floor`)
/// that holds a quarter of `target` traces, half of [`COMPACTION_MAX_RAW_BYTES`] or
/// [`COMPACTION_MIN_BLOCKS`] blocks, up to `target` traces and that many bytes. Given the
/// blocks' metas in catalog order, returns the run's positions.
fn compaction_group(blocks: &[&BlockMeta], target: u64, wal_floor: u64) -> std::ops::Range<usize> {
    // A run is worth merging once it holds a quarter of the target's traces, or half of the
    // bytes one compaction may read: traces of a few kilobytes reach that bound long before the
    // target, and runs under it only waited for more blocks.
    let ready = |len: usize, traces: u64, raw: u64| {
        len >= 2 && (traces >= target / 4 || raw >= COMPACTION_MAX_RAW_BYTES / 2 || len >= COMPACTION_MIN_BLOCKS)
    };
    // The run is blocks[start..at], with its totals kept as it grows: a low-traffic server may
    // have thousands of tiny blocks in one run.
    let (mut start, mut traces, mut raw) = (0, 0u64, 0u64);
    for (at, meta) in blocks.iter().enumerate() {
        let small = meta.trace_count < target / 4
            && meta.raw_document_bytes < COMPACTION_MAX_RAW_BYTES / 4
            && meta.wal_generation < wal_floor;
        let fits = traces + meta.trace_count <= target && raw + meta.raw_document_bytes <= COMPACTION_MAX_RAW_BYTES;
        if small && fits {
            (traces, raw) = (traces + meta.trace_count, raw + meta.raw_document_bytes);
            continue;
        }
        if ready(at - start, traces, raw) {
            return start..at;
        }
        (start, traces, raw) = if small { (at, meta.trace_count, meta.raw_document_bytes) } else { (at + 1, 0, 0) };
    }
    if ready(blocks.len() - start, traces, raw) { start..blocks.len() } else { 0..0 }
}

/// Deletes a block's files: the meta first, since without it the block no longer exists.
async fn delete_block_files(objects: &dyn ObjectStore, local: Option<&Path>, id: &str) -> Result<(), StoreError> {
    delete_quietly(objects, &block::meta_path(id)).await?;
    delete_quietly(objects, &block::data_path(id)).await?;
    if let Some(root) = local {
        // object_store leaves the emptied directory behind.
        let _ = std::fs::remove_dir(root.join(id));
    }
    Ok(())
}

/// Loads every committed block. Data without a meta is left over from an interrupted flush
/// whose documents are still in the WAL: it is deleted. So is a block that a committed block
/// was compacted from (a crash came between the two).
async fn load_catalog(
    objects: &dyn ObjectStore,
    local: Option<&Path>,
    stats: &StoreStats,
    bloom_budget: usize,
) -> Result<Catalog, StoreError> {
    let listed: Vec<object_store::ObjectMeta> = objects.list(None).try_collect().await?;
    let mut metas = HashSet::new();
    let mut datas = HashSet::new();
    for object in &listed {
        let parts: Vec<_> = object.location.parts().collect();
        if let [id, file] = parts.as_slice() {
            match file.as_ref() {
                "meta.json" => metas.insert(id.as_ref().to_owned()),
                "data" => datas.insert(id.as_ref().to_owned()),
                _ => false,
            };
        }
    }
    let mut catalog = Catalog::new(bloom_budget);
    for id in &datas {
        if !metas.contains(id) {
            delete_quietly(objects, &block::data_path(id)).await?;
        }
    }
    let mut parsed = Vec::with_capacity(metas.len());
    for id in metas {
        let raw = objects.get(&block::meta_path(&id)).await?.bytes().await?;
        match serde_json::from_slice::<BlockMeta>(&raw) {
            Ok(meta) => parsed.push(meta),
            Err(e) => {
                tracing::error!(block = %id, error = %e, "skipping a block whose meta.json cannot be read");
                stats.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let compacted: HashMap<String, String> =
        parsed.iter().flat_map(|m| m.compacted_from.iter().map(|input| (input.clone(), m.id.clone()))).collect();
    // The filters kept are the newest blocks', up to the first that does not fit, as
    // `Catalog::shed_blooms` keeps them: the others are not read.
    parsed.sort_unstable_by_key(|meta| std::cmp::Reverse(meta.max_epoch));
    let mut bloom_bytes: usize = 0;
    let mut room = true;
    for meta in parsed {
        if compacted.contains_key(&meta.id) {
            delete_block_files(objects, local, &meta.id).await?;
            continue;
        }
        let id = meta.id.clone();
        let bloom =
            usize::try_from(meta.sections.bloom.end.saturating_sub(meta.sections.bloom.start)).unwrap_or(usize::MAX);
        room &= bloom_bytes.saturating_add(bloom) <= bloom_budget;
        if room {
            bloom_bytes += bloom;
        }
        match BlockHandle::open(objects, meta, room).await {
            Ok(handle) => catalog.add(Arc::new(handle)),
            Err(e) => {
                tracing::error!(block = %id, error = %e, "skipping an unreadable block");
                stats.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    catalog.hide_in_merged_blocks(&compacted);
    Ok(catalog)
}

fn run_writer(inner: Arc<Inner>, mut commands: mpsc::Receiver<Command>, mut wal: WalFile) {
    if let Err(e) = run_as(Scheduling::Batch) {
        tracing::debug!(error = %e, "the write-ahead log's writer keeps the default scheduling policy");
    }
    // Documents staged in the log for its next group commit.
    let mut group: Vec<Arc<StoredDocument>> = Vec::new();
    let mut acks: Vec<oneshot::Sender<Result<(), StoreError>>> = Vec::new();
    while let Some(first) = commands.blocking_recv() {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { docs, ack } => {
                    for doc in docs {
                        wal.stage(doc.source, doc.raw.as_bytes());
                        group.push(doc);
                    }
                    acks.extend(ack);
                }
                Command::Sync { ack } => acks.push(ack),
                Command::Cut { due, ack } => {
                    commit(&inner, &mut wal, &mut group, &mut acks);
                    let _ = ack.send(cut(&inner, &mut wal, due));
                }
                Command::Shutdown { ack } => {
                    commit(&inner, &mut wal, &mut group, &mut acks);
                    let _ = ack.send(Ok(()));
                    return;
                }
            }
            if wal.staged() < GROUP_COMMIT_BYTES {
                next = commands.try_recv().ok();
            }
        }
        commit(&inner, &mut wal, &mut group, &mut acks);
    }
}

/// The scheduling policies the store's own threads take.
#[derive(Clone, Copy)]
enum Scheduling {
    /// At the thread's priority (the same nice value), but a wakeup of it no longer preempts
    /// the thread that runs. Each append wakes the WAL writer; where the runtime's threads
    /// share its core, the writer then took the core from the request being parsed at every
    /// append, to commit a request or two. As a batch thread it runs once the runtime's thread
    /// yields or its time slice ends, and commits what came in meanwhile: at 400,000 segments
    /// through `PutTraceSegments` on one core, a third of the group commits and of the context
    /// switches, and 0.95 times the server's CPU (BENCHMARKS.md). Where a core is free it runs
    /// at once, as before.
    Batch,
    /// Below every other policy: any other thread preempts it as it wakes.
    Idle,
}

/// Puts the calling thread under `policy`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn run_as(policy: Scheduling) -> std::io::Result<()> {
    let policy = match policy {
        Scheduling::Batch => libc::SCHED_BATCH,
        Scheduling::Idle => libc::SCHED_IDLE,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` only reads `param`, which outlives the call; pid 0 is the
    // calling thread.
    match unsafe { libc::sched_setscheduler(0, policy, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn run_as(_: Scheduling) -> std::io::Result<()> {
    Ok(())
}

/// Runs the future `work` makes on a thread and a runtime of their own under `SCHED_IDLE`,
/// which any other thread of the process preempts as it wakes; the runtime's blocking threads
/// (file reads) inherit the policy. A compaction then takes the time the receivers, the WAL
/// writer and the flushes leave, instead of an equal share of the core. At an equal share, a
/// compaction during UDP at 70% of the core overflowed the socket's buffer in 6 runs of 10.
/// `None` if the thread or its runtime could not start, or it panicked.
async fn at_idle_priority<F>(work: impl FnOnce() -> F + Send + 'static) -> Option<F::Output>
where
    F: std::future::Future,
    F::Output: Send + 'static,
{
    let (sent, result) = oneshot::channel();
    let started = std::thread::Builder::new().name("roentgen-compact".into()).spawn(move || {
        if let Err(e) = run_as(Scheduling::Idle) {
            tracing::debug!(error = %e, "compaction keeps the default scheduling policy");
        }
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            let _ = sent.send(runtime.block_on(work()));
        }
    });
    started.ok()?;
    result.await.ok()
}

/// Writes and fsyncs the group, applies it to live state, then answers every waiting sender.
fn commit(
    inner: &Inner,
    wal: &mut WalFile,
    pending: &mut Vec<Arc<StoredDocument>>,
    acks: &mut Vec<oneshot::Sender<Result<(), StoreError>>>,
) {
    let disk = &inner.disk;
    let before = disk.room();
    let room = if pending.is_empty() { before } else { disk.look() };
    if room > before {
        inner.flush_now.notify_one();
    }
    let bytes = wal.staged();
    let result = if pending.is_empty() {
        Ok(())
    } else if disk.free() < disk.reserve() / 2 {
        inner.stats.documents_refused_disk_full.fetch_add(pending.len() as u64, Ordering::Relaxed);
        wal.discard_staged();
        Err(disk.full_error())
    } else {
        let timer = PhaseTimer::start();
        let written = wal.commit();
        let stats = &inner.stats;
        stats.wal_commit_cpu_nanos.fetch_add(nanos(timer.elapsed()), Ordering::Relaxed);
        stats.wal_commit_wall_nanos.fetch_add(nanos(timer.wall.elapsed()), Ordering::Relaxed);
        written
    };
    match &result {
        Ok(()) => {
            let stats = &inner.stats;
            stats.wal_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            if !pending.is_empty() {
                stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
            }
            stats.documents_appended.fetch_add(pending.len() as u64, Ordering::Relaxed);
            let now = Instant::now();
            let catalog = inner.catalog.read().expect("catalog lock");
            let mut live = inner.live.write().expect("live lock");
            let limit = inner.config.max_trace_bytes;
            let generation = wal.generation();
            for doc in pending.drain(..) {
                if !live.apply(doc, now, generation, limit, |id| catalog.may_hold(id)) {
                    stats.documents_over_trace_limit.fetch_add(1, Ordering::Relaxed);
                }
            }
            stats.live_traces.store((live.traces.len() + live.flushing.len()) as u64, Ordering::Relaxed);
            stats.live_documents.store(live.documents, Ordering::Relaxed);
            stats.live_bytes.store(live.bytes, Ordering::Relaxed);
            inner.held_bytes.store(live.bytes + live.flushing_bytes, Ordering::Relaxed);
            if live.bytes > inner.config.max_live_bytes || live.appended_since_cut >= early_flush_bytes(&inner.config) {
                inner.flush_now.notify_one();
            }
        }
        // Logged once, when the room ran out (`disk`).
        Err(StoreError::DiskFull { .. }) => pending.clear(),
        Err(e) => {
            tracing::error!(error = %e, "write-ahead log append failed; the batch is refused");
            pending.clear();
        }
    }
    for ack in acks.drain(..) {
        let _ = ack.send(match &result {
            Ok(()) => Ok(()),
            Err(StoreError::DiskFull { path, free, reserve }) => {
                Err(StoreError::DiskFull { path: path.clone(), free: *free, reserve: *reserve })
            }
            Err(e) => Err(StoreError::Io { path: PathBuf::from("wal"), source: std::io::Error::other(e.to_string()) }),
        });
    }
}

/// Drops the flush's references to its documents, whose counts of references are written.
fn release_documents(traces: Vec<FlushTrace>) {
    let mut traces = traces.into_iter();
    while let Some(trace) = traces.next() {
        let next = traces.as_slice();
        prefetch_documents(|k| next.get(k).map(|t| &t.docs[..]), Reads::References, 2);
        drop(trace);
    }
}

/// Bytes of retired log files kept to be overwritten by the next generations: none while the
/// file systems are short of room, whose space the spares would keep.
fn spare_bytes(config: &StoreConfig, disk: &DiskSpace) -> u64 {
    if disk.room() >= Room::Pressed { 0 } else { config.max_live_bytes }
}

/// Under a steady load, the flusher looks for due traces whenever this many bytes have come in
/// since it last did, without waiting for its next tick: a trace is then written (and its
/// memory freed) soon after it is due, not up to `flush_interval_seconds` later. Memory,
/// rather than the clock, sets the pace: a quiet store still flushes once a tick, into blocks
/// no smaller than before.
fn early_flush_bytes(config: &StoreConfig) -> u64 {
    (config.max_live_bytes / 8).max(1)
}

fn cut(inner: &Inner, wal: &mut WalFile, due: DueRule) -> Result<Option<u64>, StoreError> {
    {
        let mut live = inner.live.write().expect("live lock");
        live.take_due(Instant::now(), due.idle, due.max_live, due.max_bytes);
        if live.flushing.is_empty() {
            return Ok(None);
        }
    }
    // Only this thread appends, so every document of the traces just taken is in `covered` or
    // earlier, and every later document goes to the new generation.
    let covered = wal.generation();
    *wal = WalFile::create(&inner.wal_dir, covered + 1, inner.disk.pressed_below())?;
    inner.stats.wal_generation.store(covered + 1, Ordering::Relaxed);
    Ok(Some(covered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summaries(n: usize) -> Arc<BlockSummaries> {
        let docs: Vec<&ParsedDocument> = Vec::new();
        Arc::new(BlockSummaries::new(
            (0..n).map(|i| Arc::new(summarize(TraceId::from_parts(1, i as u128), &docs, 1))).collect(),
        ))
    }

    /// The policy `/proc` shows for the calling thread: 3 is `SCHED_BATCH`.
    #[cfg(target_os = "linux")]
    fn scheduling_policy() -> String {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap();
        let line = sched.lines().find(|l| l.starts_with("policy")).unwrap();
        line.rsplit(':').next().unwrap().trim().to_owned()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_runs_as_a_batch_thread_and_only_it() {
        let before = scheduling_policy();
        let writer = std::thread::spawn(|| {
            run_as(Scheduling::Batch).unwrap();
            scheduling_policy()
        });
        assert_eq!(writer.join().unwrap(), "3");
        assert_eq!(scheduling_policy(), before);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn compactions_run_as_idle_threads_their_file_reads_too() {
        let before = scheduling_policy();
        let policies = at_idle_priority(|| async {
            let reads = tokio::task::spawn_blocking(scheduling_policy).await.unwrap();
            (scheduling_policy(), reads)
        });
        assert_eq!(policies.await.unwrap(), ("5".to_owned(), "5".to_owned()));
        assert_eq!(scheduling_policy(), before);
    }

    #[test]
    fn summaries_count_their_memory() {
        let (four, eight) = (summaries(4).bytes, summaries(8).bytes);
        assert!(four > 4 * std::mem::size_of::<TraceSummary>(), "{four}");
        assert_eq!(eight, 2 * four);
    }

    #[test]
    fn byte_bounded_cache_evicts_the_oldest_beyond_capacity() {
        let mut cache = ByteBoundedCache::new(10);
        let insert = |cache: &mut ByteBoundedCache<String, BlockSummaries>, key: &str, bytes| {
            cache.insert(key.to_owned(), summaries(1), bytes);
        };
        insert(&mut cache, "a", 4);
        insert(&mut cache, "b", 4);
        insert(&mut cache, "c", 4);
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some() && cache.get("c").is_some());
        assert_eq!(cache.bytes, 8);
        cache.remove("b");
        assert_eq!((cache.bytes, cache.order.len()), (4, 1));
        insert(&mut cache, "huge", 50);
        assert!(cache.get("huge").is_some(), "the newest block stays even when alone over capacity");
        assert_eq!(cache.order.len(), 1);
    }

    fn meta(traces: u64, raw_bytes: u64, wal_generation: u64) -> BlockMeta {
        BlockMeta {
            format_version: block::FORMAT_VERSION,
            id: String::new(),
            created_at: 0.0,
            wal_generation,
            trace_count: traces,
            document_count: traces,
            data_bytes: raw_bytes / 8,
            raw_document_bytes: raw_bytes,
            min_epoch: 0,
            max_epoch: 0,
            min_time: 0.0,
            max_time: 0.0,
            bloom_hashes: 7,
            sections: block::Sections {
                index: 0..0,
                fences: 0..0,
                chunks: 0..0,
                summaries: 0..0,
                bloom: 0..0,
                facts: None,
                rollups: None,
                kept_rollups: None,
                links: None,
            },
            supersedes: Vec::new(),
            compacted_from: Vec::new(),
        }
    }

    #[test]
    fn compaction_picks_runs_of_small_blocks() {
        let group = |blocks: &[BlockMeta], floor: u64| compaction_group(&blocks.iter().collect::<Vec<_>>(), 100, floor);
        let small = |traces| meta(traces, 1000, 1);
        // Small blocks gather until a quarter of the target (25 traces) is reached.
        assert_eq!(group(&[small(10), small(10)], 9), 0..0, "20 traces in 2 blocks: wait for more");
        assert_eq!(group(&[small(10), small(10), small(10)], 9), 0..3);
        // A big block breaks runs; the run after it is taken.
        assert_eq!(group(&[small(10), meta(60, 1000, 1), small(20), small(20)], 9), 2..4);
        // A run stops before the target: 24 + 24 + 24 + 24 = 96 fits, a fifth would not.
        assert_eq!(group(&[small(24), small(24), small(24), small(24), small(24)], 9), 0..4);
        // Eight small blocks are merged whatever they hold.
        assert_eq!(group(&vec![small(1); 8], 9), 0..8);
        // Blocks whose WAL generation is still on disk wait.
        assert_eq!(group(&[small(10), small(10), small(10)], 1), 0..0);
        // A block with a quarter of the raw-bytes bound is big.
        let bulky = meta(10, COMPACTION_MAX_RAW_BYTES / 4, 1);
        assert_eq!(group(&[bulky.clone(), bulky.clone(), bulky], 9), 0..0);
        // Runs of a few blocks of large traces are merged once they hold half the bytes a
        // compaction may read, and no more than all of them.
        let fifth = meta(10, COMPACTION_MAX_RAW_BYTES / 5, 1);
        assert_eq!(group(&vec![fifth.clone(); 2], 9), 0..0, "two fifths of the bytes: wait for more");
        assert_eq!(group(&vec![fifth.clone(); 3], 9), 0..3);
        assert_eq!(group(&vec![fifth; 6], 9), 0..5);
    }

    #[test]
    fn the_catalog_keeps_the_bloom_filters_of_the_newest_traces() {
        // Filters of 64 bytes (50 traces): room for two.
        let mut catalog = Catalog::new(150);
        let block = |id: &str, latest: u32| {
            let traces: Vec<TraceId> = (0..50).map(|i| TraceId::from_parts(latest, i * 0x1_0000_0001 + 7)).collect();
            let meta = BlockMeta { id: id.into(), min_epoch: 1, max_epoch: latest, ..meta(50, 1000, 1) };
            (Arc::new(BlockHandle::for_tests(meta, &traces)), traces)
        };
        let blocks = [block("a", 10), block("b", 30), block("c", 20), block("d", 5)];
        for (handle, _) in &blocks {
            catalog.add(handle.clone());
        }
        let with_filters = |catalog: &Catalog| {
            let ids: Vec<String> =
                catalog.blocks.iter().filter(|b| b.bloom_bytes() > 0).map(|b| b.meta.id.clone()).collect();
            // Both lists hold the same handles.
            for (_, b) in &catalog.by_latest_epoch {
                let at = catalog.blocks.partition_point(|other| other.meta.id < b.meta.id);
                assert!(Arc::ptr_eq(b, &catalog.blocks[at]), "{}", b.meta.id);
            }
            let sum: usize = catalog.blocks.iter().map(|b| b.bloom_bytes()).sum();
            assert_eq!(sum, catalog.bloom_bytes);
            ids
        };
        assert_eq!(with_filters(&catalog), ["b", "c"]);
        // A block without its filter may hold any trace of its epochs, and still none other.
        let (_, in_a) = &blocks[0];
        assert!(in_a.iter().all(|&id| catalog.may_hold(id)));
        assert!(catalog.may_hold(TraceId::from_parts(10, 3)));
        assert!(!catalog.may_hold(TraceId::from_parts(11, 3)), "epoch 11 is in no block");
        catalog.retain(|b| b.meta.id != "b");
        assert_eq!(with_filters(&catalog), ["c"]);
        catalog.add(block("e", 40).0);
        assert_eq!(with_filters(&catalog), ["c", "e"]);
    }

    #[test]
    fn sample_fraction_is_uniform_enough() {
        let kept = (0..10_000u128)
            .filter(|i| sample_fraction(TraceId::from_parts(1, i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060))) < 0.25)
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }
}
