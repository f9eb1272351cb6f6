//! Immutable blocks: a trace-sorted data file plus a `meta.json` that commits it.
//!
//! `blocks/<id>/data` (format version 1, all integers little endian):
//!
//! ```text
//! "RGNBLK01"
//! chunks      zstd frames; each holds whole traces, a trace being its documents as u32 length + bytes;
//!             a compaction's block starts with the chunks it copied from its inputs as they were,
//!             so chunks need not follow trace id order: the index says where each trace is
//! index       one entry per trace, sorted: trace id, chunk, offset, length, document count,
//!             whether documents were dropped at the trace's size limit, revision; from
//!             version 5 on, each entry relative to the one before it in pages of 128 (see the
//!             `index` module); before, fixed entries of trace id u128, chunk u32, offset u32,
//!             length u32, count u32 (its top bit the limit), revision u32: 36 bytes (versions 1
//!             and 2: 32 bytes, no revision and no limit bit)
//! fences      the first trace id of every index page of 128 entries, and from version 5 on where
//!             the page starts in the index, so a lookup reads one index page
//! chunk table per chunk: offset u64, length u32
//! summaries   zstd(postcard(Vec<TraceSummary>)), sorted by trace id; from version 4 on,
//!             compact records: times in microseconds after the trace's start, no trace id,
//!             revision or document count (the index's entry in the same place has them); from
//!             version 5 on, the same in columns, in batches (compact::summary_section)
//! bloom       the trace ids' bloom filter, u64 words
//! facts       zstd(postcard(Vec<TraceFacts>)), in summary order (version 2 on); from version 4
//!             on, compact records, times in microseconds after the trace's start; from version 5
//!             on, the nodes' and edges' fields in columns, in batches (compact::facts_section)
//! rollups     the service-graph rollups of the minute and 10-minute levels, one
//!             zstd(postcard(Rollups)) frame per hour (version 3 on)
//! kept        zstd(postcard(KeptRollups)): the hour and day levels, and where each hour's frame
//!             is in the rollups section; read when the block is opened (version 3 on)
//! links       zstd(postcard(Vec<Vec<LinkFact>>)): each trace's asynchronous links, in summary
//!             order (version 3 on)
//! ```
//!
//! Version 1 blocks have no facts section; they are read with empty facts, so `service() {…}`
//! and `edge() {…}` filters find nothing in them. Version 1 and 2 blocks have no rollups: service
//! graphs read their summaries.
//!
//! `meta.json` names the section ranges, the time range, the counts, and the WAL generation the
//! block covers. It is written last: a block without it does not exist.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use roentgen_model::{TraceId, prefetch};
use roentgen_query::{LinkFact, TraceFacts, TraceSummary};
use serde::{Deserialize, Serialize};

use crate::compact::{
    FactsIn, SummaryIn, read_facts_section, read_summary_section, write_facts_section, write_summary_section,
};
use crate::error::StoreError;
use crate::index::{Fences, IndexEntry, IndexReader, IndexWriter};
use crate::rollup::{KeptRollups, Rollups};

pub(crate) const BLOCK_MAGIC: &[u8; 8] = b"RGNBLK01";
pub(crate) const FORMAT_VERSION: u32 = 5;
const READABLE_VERSIONS: [u32; 5] = [1, 2, 3, 4, 5];
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_HASHES: u32 = 7;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Superseded {
    pub block: String,
    pub trace_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sections {
    pub index: Range<u64>,
    pub fences: Range<u64>,
    pub chunks: Range<u64>,
    pub summaries: Range<u64>,
    pub bloom: Range<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<Range<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollups: Option<Range<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_rollups: Option<Range<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Range<u64>>,
}

/// The content of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlockMeta {
    pub format_version: u32,
    pub id: String,
    pub created_at: f64,
    /// Every WAL document of this block's traces is in this generation or an earlier one.
    pub wal_generation: u64,
    pub trace_count: u64,
    pub document_count: u64,
    pub data_bytes: u64,
    pub raw_document_bytes: u64,
    /// Range of the epochs carried in the trace ids.
    pub min_epoch: u32,
    pub max_epoch: u32,
    /// Range of the times the documents cover.
    pub min_time: f64,
    pub max_time: f64,
    pub bloom_hashes: u32,
    pub sections: Sections,
    /// Earlier revisions of traces that this block holds a newer revision of.
    pub supersedes: Vec<Superseded>,
    /// The blocks this one was compacted from: they are deleted once it is committed, and if
    /// one is still there at start (a crash in between), it is deleted then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compacted_from: Vec<String>,
}

impl BlockMeta {
    /// How new the block's data is, for retention: its traces' latest end, but never later than
    /// the block was written. A sender whose clock is far ahead would otherwise keep the block,
    /// and every trace in it, for as long.
    pub(crate) fn newest_time(&self) -> f64 {
        self.max_time.min(self.created_at)
    }
}

/// One trace going into a block.
#[derive(Debug)]
pub(crate) struct BlockTrace<'a> {
    pub trace_id: TraceId,
    pub docs: TraceDocuments<'a>,
    pub summary: &'a TraceSummary,
    pub limit_exceeded: bool,
}

/// A trace's documents, as they go into a block.
#[derive(Debug)]
pub(crate) enum TraceDocuments<'a> {
    /// To be compressed into the block's chunks.
    Text(Vec<&'a str>),
    /// Already in one of the compressed chunks the block is built with.
    Copied(Region),
}

/// Where a trace's documents are in a compressed chunk taken from another block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Region {
    /// The chunk, among those the block is built with.
    pub frame: usize,
    pub offset: usize,
    pub length: usize,
    pub count: usize,
}

/// What a compaction takes of one block: the traces it keeps, each as a region of a chunk
/// copied as it is, or as text when its chunk is mostly traces left out or too small to keep.
#[derive(Debug)]
pub(crate) struct MergeInput {
    /// The compressed chunks taken as they are.
    pub frames: Vec<bytes::Bytes>,
    /// One for each entry of the index, in trace id order: `None` for a trace left out.
    pub traces: Vec<Option<MergedDocuments>>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum MergedDocuments {
    Text(Vec<String>),
    /// The region's `frame` counts among [`MergeInput::frames`].
    Copied(Region),
}

impl MergedDocuments {
    /// The documents as they go into the merged block.
    pub fn to_block(&self) -> TraceDocuments<'_> {
        match self {
            Self::Text(docs) => TraceDocuments::Text(docs.iter().map(String::as_str).collect()),
            Self::Copied(region) => TraceDocuments::Copied(*region),
        }
    }
}

/// One trace read from a block.
#[derive(Debug, PartialEq)]
pub(crate) struct BlockRead {
    pub docs: Vec<String>,
    pub limit_exceeded: bool,
    /// The trace's revision (version 3 on).
    pub revision: Option<u32>,
}

/// zstd level of the sections derived from the documents (facts, rollups, links): binary
/// encodings for which level 3 compresses better than level 1, and that are a fraction of the
/// documents' bytes.
const SECTION_LEVEL: i32 = 3;
/// zstd level of the summaries section, the largest of them: level 2 compresses it as small as
/// level 3 does (0.15% smaller blocks) in fewer instructions (0.97 times the block build's),
/// where the facts section is 25% larger at level 2.
const SUMMARY_LEVEL: i32 = 2;
/// How much of a section's encoding each of its zstd frames holds: at 1 MiB, zstd's parameters
/// for smaller inputs made the facts section 40% larger; from 8 MiB it is as small as one frame.
const SECTION_FRAME_BYTES: usize = 8 << 20;

pub(crate) struct BuildOptions {
    pub id: String,
    pub created_at: f64,
    /// Every WAL document of this block's traces is in this generation or an earlier one.
    pub wal_generation: u64,
    pub chunk_bytes: usize,
    /// zstd level of the document chunks.
    pub level: i32,
    pub supersedes: Vec<Superseded>,
}

/// The two rollup sections of a block, encoded from the rollups as [`Rollups::split`] divides
/// them: the kept levels, and the fine levels of each hour.
pub(crate) struct RollupSections {
    fine: Vec<u8>,
    kept: Vec<u8>,
    /// The rollups were not worth keeping: stored as absent.
    pub absent: bool,
}

impl RollupSections {
    /// `traces` is how many traces the rollups are of; rollups not worth keeping for them
    /// (see [`Rollups::worth_keeping`]) are stored as absent.
    pub fn encode(
        kept: Rollups,
        fine: &BTreeMap<i64, Rollups>,
        traces: usize,
        options: &BuildOptions,
    ) -> Result<Self, StoreError> {
        let absent = !kept.worth_keeping(traces);
        let (kept, fine) = if absent { (Rollups::absent(), &BTreeMap::new()) } else { (kept, fine) };
        let mut frames = Vec::new();
        let mut fine_frames = Vec::with_capacity(fine.len());
        // An hour's rollups are small: the buffers start small, and every hour reuses them.
        let mut buffers = SectionBuffers::new(SECTION_FRAME_BYTES, 64 << 10);
        for (&hour, rollups) in fine {
            fine_frames.push((hour, compressed_section(options, &mut frames, &mut buffers, "rollups", rollups)?));
        }
        let kept = KeptRollups { rollups: kept, fine_frames };
        let mut kept_frame = Vec::new();
        compressed_section(options, &mut kept_frame, &mut buffers, "rollups", &kept)?;
        Ok(Self { fine: frames, kept: kept_frame, absent })
    }
}

/// Encodes a block of `traces`, sorted by trace id with no duplicates; `rollups` are theirs.
/// Traces whose documents are [`TraceDocuments::Copied`] point into `frames`, compressed chunks
/// that become the block's first ones as they are.
pub(crate) fn build(
    traces: &[BlockTrace<'_>],
    frames: &[bytes::Bytes],
    rollups: &RollupSections,
    options: BuildOptions,
) -> Result<(Vec<u8>, BlockMeta), StoreError> {
    debug_assert!(traces.windows(2).all(|w| w[0].trace_id < w[1].trace_id));
    let text = |trace: &BlockTrace<'_>| match &trace.docs {
        TraceDocuments::Text(docs) => docs.iter().map(|d| 4 + d.len()).sum(),
        TraceDocuments::Copied(_) => 0,
    };
    let raw: usize = traces.iter().map(text).sum();
    let copied: usize = frames.iter().map(|f| f.len()).sum();
    // Documents compress about 8:1; reserving a quarter avoids regrowing (and re-copying) the block.
    let mut data = Vec::with_capacity(copied + raw / 4 + 4096);
    data.extend_from_slice(BLOCK_MAGIC);
    let mut index = IndexWriter::with_capacity(traces.len());
    let mut chunk_table: Vec<(u64, u32)> = Vec::with_capacity(frames.len());
    for frame in frames {
        let len = u32::try_from(frame.len()).map_err(|_| StoreError::CorruptBlock {
            block: options.id.clone(),
            reason: "a copied chunk is over 4 GiB".into(),
        })?;
        chunk_table.push((data.len() as u64, len));
        data.extend_from_slice(frame);
    }
    let mut pending: Vec<u8> = Vec::with_capacity(options.chunk_bytes + 4096);
    let mut document_count = 0u64;
    let mut raw_document_bytes = 0u64;
    let compress_err = |e: std::io::Error| StoreError::CorruptBlock {
        block: options.id.clone(),
        reason: format!("compression failed: {e}"),
    };
    let mut compressor = zstd::bulk::Compressor::new(options.level).map_err(compress_err)?;
    // zstd's fast strategy (level 1 and below) with a hash table of 4Ki entries, not the 16Ki it
    // picks for 512 KiB: on segment documents 10-20% faster and 1% smaller, because the most
    // recent occurrence of a string, the one a small table keeps, is the one JSON repeats.
    if options.level <= 1 {
        compressor.set_parameter(zstd::zstd_safe::CParameter::HashLog(12)).map_err(compress_err)?;
    }

    // zstd writes a Vec from its start, so frames go through one reused buffer.
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(options.chunk_bytes));
    let mut flush_chunk = |pending: &mut Vec<u8>, data: &mut Vec<u8>, table: &mut Vec<(u64, u32)>| {
        frame.clear();
        frame.reserve(zstd::zstd_safe::compress_bound(pending.len()));
        compressor.compress_to_buffer(pending, &mut frame).map_err(compress_err)?;
        table.push((data.len() as u64, frame.len() as u32));
        data.extend_from_slice(&frame);
        pending.clear();
        Ok::<(), StoreError>(())
    };

    for (i, trace) in traces.iter().enumerate() {
        // The documents were parsed seconds ago and left the processor's caches since.
        if let Some(TraceDocuments::Text(next)) = traces.get(i + 1).map(|t| &t.docs) {
            next.iter().for_each(|d| prefetch::lines(d.as_bytes(), 32));
        }
        let revision = Some(trace.summary.revision);
        let limit_exceeded = trace.limit_exceeded;
        let docs = match &trace.docs {
            TraceDocuments::Copied(region) => {
                let Region { frame, offset, length, count } = *region;
                index
                    .push(trace.trace_id, IndexEntry { chunk: frame, offset, length, count, limit_exceeded, revision });
                // Each document is its length in four bytes, then its text.
                raw_document_bytes += length.saturating_sub(4 * count) as u64;
                document_count += count as u64;
                continue;
            }
            TraceDocuments::Text(docs) => docs,
        };
        let region = text(trace);
        if !pending.is_empty() && pending.len() + region > options.chunk_bytes {
            flush_chunk(&mut pending, &mut data, &mut chunk_table)?;
        }
        let entry = IndexEntry {
            chunk: chunk_table.len(),
            offset: pending.len(),
            length: region,
            count: docs.len(),
            limit_exceeded,
            revision,
        };
        index.push(trace.trace_id, entry);
        for doc in docs {
            pending.extend_from_slice(&(doc.len() as u32).to_le_bytes());
            pending.extend_from_slice(doc.as_bytes());
            raw_document_bytes += doc.len() as u64;
        }
        document_count += docs.len() as u64;
    }
    if !pending.is_empty() {
        flush_chunk(&mut pending, &mut data, &mut chunk_table)?;
    }

    let section = |data: &mut Vec<u8>, bytes: &[u8]| {
        let start = data.len() as u64;
        data.extend_from_slice(bytes);
        start..data.len() as u64
    };
    let (index, fences) = index.finish();
    let index_range = section(&mut data, &index);
    let fences_range = section(&mut data, &fences);
    let table: Vec<u8> =
        chunk_table.iter().flat_map(|(o, l)| o.to_le_bytes().into_iter().chain(l.to_le_bytes())).collect();
    let chunks_range = section(&mut data, &table);
    let summaries: Vec<&TraceSummary> = traces.iter().map(|t| t.summary).collect();
    let mut buffers = SectionBuffers::new(SECTION_FRAME_BYTES, SECTION_FRAME_BYTES);
    let summaries_range =
        compressed_in_frames(&options, &mut data, &mut buffers, ("summary", SUMMARY_LEVEL), |section| {
            write_summary_section(section, &summaries)
        })?;
    let bloom = Bloom::build(traces.iter().map(|t| t.trace_id), traces.len());
    let bloom_range = section(&mut data, &bloom.to_bytes());
    let facts_range = compressed_in_frames(&options, &mut data, &mut buffers, ("facts", SECTION_LEVEL), |section| {
        write_facts_section(section, &summaries)
    })?;
    let rollups_range = section(&mut data, &rollups.fine);
    let kept_range = section(&mut data, &rollups.kept);
    let links_range = compressed_in_frames(&options, &mut data, &mut buffers, ("links", SECTION_LEVEL), |section| {
        section.serialized_seq(traces.iter().map(|t| &t.summary.links))
    })?;

    let min_time = traces.iter().map(|t| t.summary.start_time).fold(f64::INFINITY, f64::min);
    let max_time = traces.iter().map(|t| t.summary.end_time).fold(f64::NEG_INFINITY, f64::max);
    let meta = BlockMeta {
        format_version: FORMAT_VERSION,
        id: options.id,
        created_at: options.created_at,
        wal_generation: options.wal_generation,
        trace_count: traces.len() as u64,
        document_count,
        data_bytes: data.len() as u64,
        raw_document_bytes,
        min_epoch: traces.iter().map(|t| t.trace_id.epoch()).min().unwrap_or(0),
        max_epoch: traces.iter().map(|t| t.trace_id.epoch()).max().unwrap_or(0),
        min_time: if min_time.is_finite() { min_time } else { 0.0 },
        max_time: if max_time.is_finite() { max_time } else { 0.0 },
        bloom_hashes: BLOOM_HASHES,
        sections: Sections {
            index: index_range,
            fences: fences_range,
            chunks: chunks_range,
            summaries: summaries_range,
            bloom: bloom_range,
            facts: Some(facts_range),
            rollups: Some(rollups_range),
            kept_rollups: Some(kept_range),
            links: Some(links_range),
        },
        supersedes: options.supersedes,
        compacted_from: Vec::new(),
    };
    Ok((data, meta))
}

/// Appends `value`'s postcard encoding to `out` as zstd frames, through `buffers`, and returns
/// where they are.
fn compressed_section<T: Serialize + ?Sized>(
    options: &BuildOptions,
    out: &mut Vec<u8>,
    buffers: &mut SectionBuffers,
    what: &str,
    value: &T,
) -> Result<Range<u64>, StoreError> {
    compressed_in_frames(options, out, buffers, (what, SECTION_LEVEL), |section| section.serialize(value))
}

/// The buffers sections are encoded and compressed through, one section after another, sized
/// for a whole frame at once. Each section grew its own by doubling up to a frame's 8 MiB,
/// copying about a frame's bytes again on the way, into memory new to the process.
pub(crate) struct SectionBuffers {
    frame_bytes: usize,
    encoding: Vec<u8>,
    frame: Vec<u8>,
}

impl SectionBuffers {
    /// Buffers for frames of `frame_bytes` of encoding, sized at first for `expected` bytes of
    /// it. A frame may run past `frame_bytes` by the last value written, hence the margin.
    pub(crate) fn new(frame_bytes: usize, expected: usize) -> Self {
        let capacity = expected.min(frame_bytes) + (64 << 10);
        Self {
            frame_bytes,
            encoding: Vec::with_capacity(capacity),
            frame: Vec::with_capacity(zstd::zstd_safe::compress_bound(capacity)),
        }
    }
}

/// Appends what `write` encodes to `out` as zstd frames of the buffers' frame size of encoding
/// each, compressed at `level`, and returns where they are. The encoding is compressed as it is
/// made rather than made whole first: for a block's summaries that whole would be tens of
/// megabytes to allocate, fault in and copy. Whole frames from one contiguous buffer compress
/// faster than a zstd stream fed the same bytes (whose wrapping window takes zstd's slower path).
fn compressed_in_frames(
    options: &BuildOptions,
    out: &mut Vec<u8>,
    buffers: &mut SectionBuffers,
    (what, level): (&str, i32),
    write: impl FnOnce(&mut SectionWriter<'_>) -> Result<(), SectionError>,
) -> Result<Range<u64>, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptBlock { block: options.id.clone(), reason };
    let start = out.len() as u64;
    let compressor = zstd::bulk::Compressor::new(level).map_err(|e| corrupt(format!("{what} compression: {e}")))?;
    buffers.encoding.clear();
    let mut section = SectionWriter {
        buffer: &mut buffers.encoding,
        frame_bytes: buffers.frame_bytes,
        frame: &mut buffers.frame,
        frames: 0,
        compressor,
        out,
    };
    write(&mut section).and_then(|()| section.finish()).map_err(|e| match e {
        SectionError::Compression(io) => corrupt(format!("{what} compression: {io}")),
        SectionError::Encoding(e) => corrupt(format!("{what} encoding: {e}")),
    })?;
    Ok(start..out.len() as u64)
}

#[derive(Debug)]
pub(crate) enum SectionError {
    Compression(std::io::Error),
    Encoding(postcard::Error),
}

/// A section's encoding in postcard's format, compressed into a frame each time it holds
/// `frame_bytes`. Values are written either through serde ([`SectionWriter::serialize`]) or, for
/// the columns that make most of the summaries and facts, straight from their numbers and
/// strings ([`Postcard`]): postcard hands every varint over as a slice, copied with a call to
/// `memcpy`, and checks the frame after every byte, which took the most of encoding those
/// columns.
pub(crate) struct SectionWriter<'a> {
    buffer: &'a mut Vec<u8>,
    frame_bytes: usize,
    frame: &'a mut Vec<u8>,
    frames: usize,
    compressor: zstd::bulk::Compressor<'static>,
    out: &'a mut Vec<u8>,
}

/// Values appended to an encoding as postcard writes them, straight from their numbers and
/// strings: to a section as it goes ([`SectionWriter`]), or to a column encoded apart first.
pub(crate) trait Postcard {
    /// The encoding the values are appended to.
    fn encoding(&mut self) -> &mut Vec<u8>;

    #[inline]
    fn byte(&mut self, byte: u8) {
        self.encoding().push(byte);
    }

    /// An unsigned integer as postcard writes every one wider than a byte: seven bits a byte,
    /// the lowest first, the high bit set on all but the last.
    #[inline]
    fn varint(&mut self, mut value: u64) {
        let encoding = self.encoding();
        while value >= 0x80 {
            encoding.push(value as u8 | 0x80);
            value >>= 7;
        }
        encoding.push(value as u8);
    }

    /// A signed integer, zigzagged first so that small negative numbers stay short.
    #[inline]
    fn signed(&mut self, value: i64) {
        self.varint(((value << 1) ^ (value >> 63)) as u64);
    }

    /// An optional integer: a byte saying whether it is there, then the integer.
    #[inline]
    fn option_varint(&mut self, value: Option<u64>) {
        match value {
            None => self.byte(0),
            Some(value) => {
                self.byte(1);
                self.varint(value);
            }
        }
    }

    /// A string: its length, then its bytes.
    #[inline]
    fn str(&mut self, value: &str) {
        self.varint(value.len() as u64);
        self.encoding().extend_from_slice(value.as_bytes());
    }

    #[inline]
    fn option_str(&mut self, value: Option<&str>) {
        match value {
            None => self.byte(0),
            Some(value) => {
                self.byte(1);
                self.str(value);
            }
        }
    }

    fn f64(&mut self, value: f64) {
        self.encoding().extend_from_slice(&value.to_le_bytes());
    }
}

impl Postcard for Vec<u8> {
    fn encoding(&mut self) -> &mut Vec<u8> {
        self
    }
}

impl Postcard for SectionWriter<'_> {
    fn encoding(&mut self) -> &mut Vec<u8> {
        self.buffer
    }
}

impl SectionWriter<'_> {
    /// A sequence: its length, then each item as `write` writes it.
    pub(crate) fn seq<T>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut write: impl FnMut(&mut Self, T),
    ) -> Result<(), SectionError> {
        self.varint(items.len() as u64);
        for item in items {
            write(self, item);
            if self.buffer.len() >= self.frame_bytes {
                self.drain()?;
            }
        }
        Ok(())
    }

    /// A sequence of `count` items encoded apart beforehand, into `encoded`.
    pub(crate) fn encoded_seq(&mut self, count: usize, mut encoded: &[u8]) -> Result<(), SectionError> {
        self.varint(count as u64);
        loop {
            let room = self.frame_bytes.saturating_sub(self.buffer.len());
            let (now, rest) = encoded.split_at(room.min(encoded.len()));
            self.buffer.extend_from_slice(now);
            encoded = rest;
            if self.buffer.len() >= self.frame_bytes {
                self.drain()?;
            }
            if encoded.is_empty() {
                return Ok(());
            }
        }
    }

    /// A sequence of values written through serde.
    pub(crate) fn serialized_seq<T: Serialize>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
    ) -> Result<(), SectionError> {
        self.varint(items.len() as u64);
        items.into_iter().try_for_each(|item| self.serialize(&item))
    }

    pub(crate) fn serialize<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SectionError> {
        let mut error = None;
        postcard::serialize_with_flavor(value, Flavor { section: self, error: &mut error })
            .map_err(|e| error.take().unwrap_or(SectionError::Encoding(e)))
    }

    #[cold]
    fn drain(&mut self) -> Result<(), SectionError> {
        self.frame.clear();
        self.frame.reserve(zstd::zstd_safe::compress_bound(self.buffer.len()));
        let compressed = self.compressor.compress_to_buffer(self.buffer, self.frame);
        self.buffer.clear();
        compressed.map_err(SectionError::Compression)?;
        self.out.extend_from_slice(self.frame);
        self.frames += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<(), SectionError> {
        // Even an empty encoding is a frame: a section is never empty.
        if self.buffer.is_empty() && self.frames > 0 { Ok(()) } else { self.drain() }
    }
}

/// Options for a block of tests.
#[cfg(test)]
fn test_options() -> BuildOptions {
    BuildOptions {
        id: "b".into(),
        created_at: 0.0,
        wal_generation: 0,
        chunk_bytes: 1 << 16,
        level: 1,
        supersedes: vec![],
    }
}

/// What `write` encodes, uncompressed.
#[cfg(test)]
pub(crate) fn encoded(write: impl FnOnce(&mut SectionWriter<'_>) -> Result<(), SectionError>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buffers = SectionBuffers::new(SECTION_FRAME_BYTES, 0);
    compressed_in_frames(&test_options(), &mut out, &mut buffers, ("test", SECTION_LEVEL), write).expect("encodes");
    decompress(&out).expect("decompresses")
}

/// postcard's output into a [`SectionWriter`]. The compressor's error, which postcard has no
/// variant for, is kept aside.
struct Flavor<'s, 'a, 'e> {
    section: &'s mut SectionWriter<'a>,
    error: &'e mut Option<SectionError>,
}

impl Flavor<'_, '_, '_> {
    #[inline]
    fn check(&mut self) -> postcard::Result<()> {
        if self.section.buffer.len() < self.section.frame_bytes {
            return Ok(());
        }
        self.section.drain().map_err(|e| {
            *self.error = Some(e);
            postcard::Error::SerializeBufferFull
        })
    }
}

impl postcard::ser_flavors::Flavor for Flavor<'_, '_, '_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.section.buffer.push(byte);
        self.check()
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.section.buffer.extend_from_slice(bytes);
        self.check()
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A bloom filter over trace ids; the ids' random bits are the hash.
#[derive(Debug, Clone)]
pub(crate) struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    fn build(ids: impl Iterator<Item = TraceId>, count: usize) -> Self {
        let bits = (count * BLOOM_BITS_PER_KEY).max(64).next_multiple_of(64);
        let mut bloom = Self { words: vec![0; bits / 64] };
        for id in ids {
            for bit in bloom.bits(id) {
                bloom.words[bit / 64] |= 1 << (bit % 64);
            }
        }
        bloom
    }

    fn bits(&self, id: TraceId) -> impl Iterator<Item = usize> + use<> {
        let m = (self.words.len() * 64) as u64;
        let r = id.random() ^ (u128::from(id.epoch()) << 64);
        let h1 = r as u64;
        let h2 = ((r >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..u64::from(BLOOM_HASHES)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub fn may_contain(&self, id: TraceId) -> bool {
        self.bits(id).all(|bit| self.words[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
            return None;
        }
        Some(Self {
            words: bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        })
    }
}

/// A block as kept in memory: its meta, fences, chunk table and, unless the catalog has shed it,
/// its bloom filter.
#[derive(Debug)]
pub(crate) struct BlockHandle {
    pub meta: BlockMeta,
    data_path: ObjectPath,
    /// `None` once the catalog keeps no filter for this block (`Catalog::shed_blooms`): it may
    /// then hold any trace of its epochs, and its index answers whether it does.
    bloom: Option<Bloom>,
    fences: Fences,
    chunks: Vec<(u64, u32)>,
    /// The hour and day rollups and the index of the hourly ones, read at open (version 3 on).
    pub kept_rollups: Option<Arc<KeptRollups>>,
    /// Part of the block failed its checks when it was read (`store::tolerate`); shared with
    /// the copy that [`BlockHandle::without_bloom`] makes.
    pub damaged: Arc<AtomicBool>,
}

fn corrupt_block(meta: &BlockMeta, reason: &str) -> StoreError {
    StoreError::CorruptBlock { block: meta.id.clone(), reason: reason.to_owned() }
}

pub(crate) fn meta_path(id: &str) -> ObjectPath {
    ObjectPath::from_iter([id, "meta.json"])
}

pub(crate) fn data_path(id: &str) -> ObjectPath {
    ObjectPath::from_iter([id, "data"])
}

impl BlockHandle {
    /// A stored block, reading what a handle holds from its data: its bloom filter too when
    /// `with_bloom`.
    pub async fn open(store: &dyn ObjectStore, meta: BlockMeta, with_bloom: bool) -> Result<Self, StoreError> {
        let ranges = Self::held_ranges(&meta, with_bloom)?;
        let parts = store.get_ranges(&data_path(&meta.id), &ranges).await?;
        Self::from_parts(meta, parts.iter().map(|part| &part[..]), with_bloom)
    }

    /// A block just built, from its data in memory: taken before the block is written, so that a
    /// block once written is never left out of the catalog for want of reading it back.
    pub fn from_data(meta: BlockMeta, data: &[u8]) -> Result<Self, StoreError> {
        let ranges = Self::held_ranges(&meta, true)?;
        let parts: Option<Vec<&[u8]>> =
            ranges.iter().map(|r| data.get(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?)).collect();
        let parts = parts.ok_or_else(|| corrupt_block(&meta, "a section lies past the data"))?;
        Self::from_parts(meta, parts.into_iter(), true)
    }

    /// The ranges of the data a handle holds: fences, chunk table, kept rollups (version 3 on)
    /// and, `with_bloom`, the bloom filter.
    fn held_ranges(meta: &BlockMeta, with_bloom: bool) -> Result<Vec<std::ops::Range<u64>>, StoreError> {
        let s = &meta.sections;
        let v3 = meta.format_version >= 3;
        if !READABLE_VERSIONS.contains(&meta.format_version)
            || (meta.format_version >= 2) != s.facts.is_some()
            || v3 != s.rollups.is_some()
            || v3 != s.kept_rollups.is_some()
            || v3 != s.links.is_some()
        {
            return Err(corrupt_block(meta, &format!("format version {} is not supported", meta.format_version)));
        }
        let mut ranges = vec![s.fences.clone(), s.chunks.clone()];
        ranges.extend(s.kept_rollups.clone());
        ranges.extend(with_bloom.then(|| s.bloom.clone()));
        Ok(ranges)
    }

    /// The handle, from the data of [`BlockHandle::held_ranges`] in order.
    fn from_parts<'d>(
        meta: BlockMeta,
        mut parts: impl Iterator<Item = &'d [u8]>,
        with_bloom: bool,
    ) -> Result<Self, StoreError> {
        let corrupt = |reason: &str| corrupt_block(&meta, reason);
        let (Some(fences), Some(chunks)) = (parts.next(), parts.next()) else {
            return Err(corrupt("short read"));
        };
        let kept = if meta.sections.kept_rollups.is_some() {
            Some(parts.next().ok_or_else(|| corrupt("short read"))?)
        } else {
            None
        };
        let bloom = if with_bloom {
            let bytes = parts.next().ok_or_else(|| corrupt("short read"))?;
            Some(Bloom::from_bytes(bytes).ok_or_else(|| corrupt("empty bloom filter"))?)
        } else {
            None
        };
        let kept_rollups = match kept {
            Some(frame) => Some(decode::<KeptRollups>(frame).map_err(|e| corrupt(&format!("rollups: {e}")))?),
            None => None,
        };
        let kept_rollups = kept_rollups.filter(|k| !k.rollups.is_absent()).map(Arc::new);
        if chunks.len() % 12 != 0 {
            return Err(corrupt("chunk table has a partial entry"));
        }
        let fences = Fences::parse(fences, meta.format_version).ok_or_else(|| corrupt("damaged fences"))?;
        let chunks = chunks
            .chunks_exact(12)
            .map(|c| {
                (u64::from_le_bytes(c[..8].try_into().expect("8")), u32::from_le_bytes(c[8..].try_into().expect("4")))
            })
            .collect();
        Ok(Self { data_path: data_path(&meta.id), meta, bloom, fences, chunks, kept_rollups, damaged: Arc::default() })
    }

    /// False only when the block holds no revision of the trace; without a bloom filter, true
    /// for every trace of its epochs.
    pub fn may_contain(&self, id: TraceId) -> bool {
        let epoch = id.epoch();
        epoch >= self.meta.min_epoch
            && epoch <= self.meta.max_epoch
            && self.bloom.as_ref().is_none_or(|bloom| bloom.may_contain(id))
    }

    /// The memory its bloom filter takes.
    pub fn bloom_bytes(&self) -> usize {
        self.bloom.as_ref().map_or(0, |bloom| bloom.words.len() * 8)
    }

    /// A handle of `meta` whose bloom filter holds `traces`, with no data behind it.
    #[cfg(test)]
    pub fn for_tests(meta: BlockMeta, traces: &[TraceId]) -> Self {
        Self {
            data_path: data_path(&meta.id),
            meta,
            bloom: Some(Bloom::build(traces.iter().copied(), traces.len())),
            fences: Fences::default(),
            chunks: Vec::new(),
            kept_rollups: None,
            damaged: Arc::default(),
        }
    }

    /// The same block without its bloom filter.
    pub fn without_bloom(&self) -> Self {
        Self {
            meta: self.meta.clone(),
            data_path: self.data_path.clone(),
            bloom: None,
            fences: self.fences.clone(),
            chunks: self.chunks.clone(),
            kept_rollups: self.kept_rollups.clone(),
            damaged: self.damaged.clone(),
        }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::CorruptBlock { block: self.meta.id.clone(), reason }
    }

    /// Every entry of the index, in trace id order.
    fn entries(&self, index: &[u8]) -> Result<Vec<(TraceId, IndexEntry)>, StoreError> {
        let mut reader = IndexReader::new(index, self.meta.format_version, &self.fences);
        // An entry takes a byte at least: a damaged count in the meta reserves no more.
        let mut entries = Vec::with_capacity((self.meta.trace_count as usize).min(index.len()));
        while let Some(entry) = reader.next_entry().map_err(|e| self.corrupt(e.into()))? {
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The whole index, in trace id order.
    pub async fn index(&self, store: &dyn ObjectStore) -> Result<Vec<(TraceId, IndexEntry)>, StoreError> {
        let index = store.get_range(&self.data_path, self.meta.sections.index.clone()).await?;
        self.entries(&index)
    }

    /// The documents of the traces of `index` (this block's, from [`Self::index`]) that `keep`
    /// says to keep, for a compaction. A chunk holding at least `copy_bytes` of them is taken
    /// compressed as it is; the kept traces of any other chunk are read out of it, to be
    /// compressed again with others: the chunks of small blocks are small, and a chunk of
    /// traces left out is mostly space to reclaim.
    pub async fn merge_input(
        &self,
        store: &dyn ObjectStore,
        index: &[(TraceId, IndexEntry)],
        keep: &[bool],
        copy_bytes: usize,
    ) -> Result<MergeInput, StoreError> {
        let corrupt = |reason: String| StoreError::CorruptBlock { block: self.meta.id.clone(), reason };
        // Per chunk, the bytes of the traces kept in it, if any are.
        let mut kept_bytes: Vec<Option<usize>> = vec![None; self.chunks.len()];
        for ((_, entry), _) in index.iter().zip(keep).filter(|(_, keep)| **keep) {
            let bytes = kept_bytes.get_mut(entry.chunk).ok_or_else(|| corrupt("chunk number out of range".into()))?;
            *bytes = Some(bytes.unwrap_or(0).saturating_add(entry.length));
        }
        let needed: Vec<(usize, usize)> =
            kept_bytes.iter().enumerate().filter_map(|(n, bytes)| Some((n, (*bytes)?))).collect();
        let ranges: Vec<Range<u64>> = needed
            .iter()
            .map(|&(n, _)| {
                let (at, len) = self.chunks[n];
                at..at + u64::from(len)
            })
            .collect();
        let mut frames = Vec::new();
        /// A chunk holding kept traces.
        enum Read {
            /// Taken as it is: where among `frames`, and the bytes it decompresses to.
            Copied {
                frame: usize,
                size: u64,
            },
            Plain(Vec<u8>),
        }
        let mut chunks: Vec<Option<Read>> = (0..self.chunks.len()).map(|_| None).collect();
        for (&(n, kept), frame) in needed.iter().zip(store.get_ranges(&self.data_path, &ranges).await?) {
            chunks[n] = Some(match decompressed_size(&frame) {
                Some(size) if kept >= copy_bytes => {
                    frames.push(frame);
                    Read::Copied { frame: frames.len() - 1, size }
                }
                _ => Read::Plain(decompress(&frame).map_err(|e| corrupt(format!("chunk {n}: {e}")))?),
            });
        }
        let mut traces = Vec::with_capacity(index.len());
        for ((_, entry), &keep) in index.iter().zip(keep) {
            if !keep {
                traces.push(None);
                continue;
            }
            let end =
                entry.offset.checked_add(entry.length).ok_or_else(|| corrupt("trace region out of range".into()))?;
            let Some(chunk) = &chunks[entry.chunk] else { return Err(corrupt("chunk number out of range".into())) };
            traces.push(Some(match chunk {
                Read::Copied { frame, size } => {
                    if end as u64 > *size {
                        return Err(corrupt("trace region out of range".into()));
                    }
                    let (offset, length, count) = (entry.offset, entry.length, entry.count);
                    MergedDocuments::Copied(Region { frame: *frame, offset, length, count })
                }
                Read::Plain(plain) => {
                    let region =
                        plain.get(entry.offset..end).ok_or_else(|| corrupt("trace region out of range".into()))?;
                    let docs = split_documents(region, entry.count)
                        .ok_or_else(|| corrupt("damaged document framing".into()))?;
                    MergedDocuments::Text(docs)
                }
            }));
        }
        Ok(MergeInput { frames, traces })
    }

    /// The documents of one trace, or `None` when the block does not hold it.
    #[cfg(test)]
    pub async fn get(&self, store: &dyn ObjectStore, id: TraceId) -> Result<Option<BlockRead>, StoreError> {
        let mut read = self.get_many(store, &[id]).await?;
        read.pop().map_or(Ok(None), |(_, read)| read)
    }

    /// Whether the block holds a revision of the trace (no false positives).
    pub async fn contains(&self, store: &dyn ObjectStore, id: TraceId) -> Result<bool, StoreError> {
        let mut found = self.find_many(store, &[id]).await?;
        found.pop().map_or(Ok(false), |(_, entry)| entry.map(|entry| entry.is_some()))
    }

    /// The index entry of each of `ids` (sorted, each once), or `None` for those the block does
    /// not hold; each index page is read once, however many of the traces it holds. A trace
    /// whose page fails the block's checks has that error for its own; a failed read of the
    /// object store fails them all.
    pub async fn find_many(
        &self,
        store: &dyn ObjectStore,
        ids: &[TraceId],
    ) -> Result<Vec<(TraceId, Result<Option<IndexEntry>, StoreError>)>, StoreError> {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let version = self.meta.format_version;
        let index = &self.meta.sections.index;
        let index_len = (index.end - index.start) as usize;
        // The index pages to read, and the ids on each.
        let mut pages: Vec<(usize, Vec<TraceId>)> = Vec::new();
        let mut results = Vec::with_capacity(ids.len());
        for &id in ids {
            match self.fences.page_of(id).filter(|_| self.may_contain(id)) {
                Some(page) if pages.last().is_some_and(|(last, _)| *last == page) => {
                    pages.last_mut().expect("just matched").1.push(id);
                }
                Some(page) => pages.push((page, vec![id])),
                None => results.push((id, Ok(None))),
            }
        }
        let mut ranges = Vec::with_capacity(pages.len());
        let mut firsts = Vec::with_capacity(pages.len());
        for (page, _) in &pages {
            let (range, first) =
                IndexReader::page_range(version, &self.fences, *page, self.meta.trace_count as usize, index_len)
                    .ok_or_else(|| self.corrupt("index page out of range".into()))?;
            ranges.push(index.start + range.start as u64..index.start + range.end as u64);
            firsts.push(first);
        }
        let page_bytes =
            if ranges.is_empty() { Vec::new() } else { store.get_ranges(&self.data_path, &ranges).await? };
        for (((_, wanted), bytes), first) in pages.iter().zip(&page_bytes).zip(firsts) {
            let mut entries = IndexReader::page(bytes, first, version, &self.fences);
            let mut entry = entries.next_entry();
            for &id in wanted {
                loop {
                    match &entry {
                        Ok(Some((entry_id, _))) if *entry_id < id => entry = entries.next_entry(),
                        _ => break,
                    }
                }
                results.push(match &entry {
                    Ok(Some((entry_id, found))) if *entry_id == id => (id, Ok(Some(*found))),
                    Ok(_) => (id, Ok(None)),
                    Err(e) => (id, Err(self.corrupt((*e).into()))),
                });
            }
        }
        results.sort_unstable_by_key(|(id, _)| *id);
        Ok(results)
    }

    /// The documents of each of `ids` (sorted, each once), or `None` for those the block does
    /// not hold, as [`Self::get`] reads one; each index page and each chunk is read and
    /// decompressed once, however many of the traces it holds. A trace whose page or chunk fails
    /// the block's checks has that error for its own; a failed read of the object store fails
    /// them all.
    pub async fn get_many(
        &self,
        store: &dyn ObjectStore,
        ids: &[TraceId],
    ) -> Result<Vec<(TraceId, Result<Option<BlockRead>, StoreError>)>, StoreError> {
        let mut results = Vec::with_capacity(ids.len());
        // The entries found, by chunk.
        let mut in_chunks: BTreeMap<usize, Vec<(TraceId, IndexEntry)>> = BTreeMap::new();
        for (id, found) in self.find_many(store, ids).await? {
            match found {
                Ok(Some(entry)) => in_chunks.entry(entry.chunk).or_default().push((id, entry)),
                Ok(None) => results.push((id, Ok(None))),
                Err(e) => results.push((id, Err(e))),
            }
        }
        let mut chunk_ranges = Vec::with_capacity(in_chunks.len());
        for (&chunk, found) in &mut in_chunks {
            match self.chunks.get(chunk) {
                Some(&(at, len)) => chunk_ranges.push(at..at + u64::from(len)),
                None => results
                    .extend(found.drain(..).map(|(id, _)| (id, Err(self.corrupt("chunk number out of range".into()))))),
            }
        }
        in_chunks.retain(|_, found| !found.is_empty());
        let frames =
            if chunk_ranges.is_empty() { Vec::new() } else { store.get_ranges(&self.data_path, &chunk_ranges).await? };
        for ((chunk, found), frame) in in_chunks.into_iter().zip(frames) {
            let end = found.iter().map(|(_, e)| e.offset.saturating_add(e.length)).max().unwrap_or(0);
            let plain = decompress_prefix(&frame, end).map_err(|e| format!("chunk {chunk}: {e}"));
            for (id, entry) in found {
                let read = match &plain {
                    Ok(plain) => self.trace_in(plain, &entry),
                    Err(reason) => Err(self.corrupt(reason.clone())),
                };
                results.push((id, read.map(Some)));
            }
        }
        results.sort_unstable_by_key(|(id, _)| *id);
        Ok(results)
    }

    /// One trace's documents in its decompressed chunk.
    fn trace_in(&self, plain: &[u8], entry: &IndexEntry) -> Result<BlockRead, StoreError> {
        let end =
            entry.offset.checked_add(entry.length).ok_or_else(|| self.corrupt("trace region out of range".into()))?;
        let region = plain.get(entry.offset..end).ok_or_else(|| self.corrupt("trace region out of range".into()))?;
        let docs =
            split_documents(region, entry.count).ok_or_else(|| self.corrupt("damaged document framing".into()))?;
        Ok(BlockRead { docs, limit_exceeded: entry.limit_exceeded, revision: entry.revision })
    }

    /// The minute and 10-minute rollups of one hour, with the size of their encoding; `None`
    /// when the block has no rollups for that hour.
    pub async fn fine_rollups(
        &self,
        store: &dyn ObjectStore,
        hour: i64,
    ) -> Result<Option<(Rollups, usize)>, StoreError> {
        let (Some(kept), Some(section)) = (&self.kept_rollups, &self.meta.sections.rollups) else { return Ok(None) };
        let Ok(at) = kept.fine_frames.binary_search_by_key(&hour, |(h, _)| *h) else { return Ok(None) };
        let range = &kept.fine_frames[at].1;
        let corrupt = |reason: String| StoreError::CorruptBlock { block: self.meta.id.clone(), reason };
        let (start, end) = (section.start + range.start, section.start + range.end);
        if end > section.end || start > end {
            return Err(corrupt(format!("rollups of hour {hour} lie outside their section")));
        }
        let frame = store.get_range(&self.data_path, start..end).await?;
        let plain = decompress(&frame).map_err(|e| corrupt(format!("rollups: {e}")))?;
        let rollups = postcard::from_bytes(&plain).map_err(|e| corrupt(format!("rollups: {e}")))?;
        Ok(Some((rollups, plain.len())))
    }

    /// The block's summaries.
    pub async fn summaries(&self, store: &dyn ObjectStore) -> Result<Vec<TraceSummary>, StoreError> {
        let corrupt = |reason: String| StoreError::CorruptBlock { block: self.meta.id.clone(), reason };
        let s = &self.meta.sections;
        let compact = self.meta.format_version >= 4;
        let mut ranges = vec![s.summaries.clone()];
        ranges.extend(s.facts.clone());
        ranges.extend(s.links.clone());
        if compact {
            ranges.push(s.index.clone());
        }
        let mut parts = store.get_ranges(&self.data_path, &ranges).await?.into_iter();
        let frame = parts.next().ok_or_else(|| corrupt("short read".into()))?;
        let facts_frame = if s.facts.is_some() { parts.next() } else { None };
        let links_frame = if s.links.is_some() { parts.next() } else { None };
        let columns = self.meta.format_version >= 5;
        let mut summaries: Vec<TraceSummary> = if columns {
            let index = parts.next().ok_or_else(|| corrupt("short read".into()))?;
            let read = decode(&frame).map_err(|e| corrupt(format!("summaries: {e}")))?;
            let entries = self.entries(&index)?;
            let index = entries.iter().map(|(id, e)| (*id, e.revision.unwrap_or(1), e.count as u32));
            read_summary_section(read, index).map_err(|e| corrupt(format!("summaries: {e}")))?
        } else if compact {
            let index = parts.next().ok_or_else(|| corrupt("short read".into()))?;
            let read: Vec<SummaryIn> = decode(&frame).map_err(|e| corrupt(format!("summaries: {e}")))?;
            let entries = self.entries(&index)?;
            if read.len() != entries.len() {
                return Err(corrupt(format!("{} summaries for {} index entries", read.len(), entries.len())));
            }
            read.into_iter()
                .zip(entries)
                .map(|(summary, (id, entry))| summary.into_summary(id, entry.revision.unwrap_or(1), entry.count as u32))
                .collect()
        } else {
            decode(&frame).map_err(|e| corrupt(format!("summaries: {e}")))?
        };
        if let Some(frame) = facts_frame {
            let facts: Vec<TraceFacts> = if columns {
                let read = decode(&frame).map_err(|e| corrupt(format!("facts: {e}")))?;
                let starts = summaries.iter().map(|s| s.start_time);
                read_facts_section(read, starts).map_err(|e| corrupt(format!("facts: {e}")))?
            } else if compact {
                let read: Vec<FactsIn> = decode(&frame).map_err(|e| corrupt(format!("facts: {e}")))?;
                read.into_iter().zip(&summaries).map(|(f, s)| f.into_facts(s.start_time)).collect()
            } else {
                decode(&frame).map_err(|e| corrupt(format!("facts: {e}")))?
            };
            if facts.len() != summaries.len() {
                return Err(corrupt(format!("{} facts for {} summaries", facts.len(), summaries.len())));
            }
            for (summary, facts) in summaries.iter_mut().zip(facts) {
                summary.facts = facts;
            }
        }
        if let Some(frame) = links_frame {
            let links: Vec<Vec<LinkFact>> = decode(&frame).map_err(|e| corrupt(format!("links: {e}")))?;
            if links.len() != summaries.len() {
                return Err(corrupt(format!("{} link lists for {} summaries", links.len(), summaries.len())));
            }
            for (summary, links) in summaries.iter_mut().zip(links) {
                summary.links = links.into();
            }
        }
        Ok(summaries)
    }
}

/// Decodes a zstd-compressed postcard section.
fn decode<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, String> {
    let plain = decompress(frame).map_err(|e| e.to_string())?;
    postcard::from_bytes(&plain).map_err(|e| e.to_string())
}

/// No frame of a block decompresses to more than this; a damaged one that says it does is
/// not believed.
const DECOMPRESSED_LIMIT: u64 = 1 << 30;

/// Decompresses a run of zstd frames (a chunk is one, a section one or more), refusing to
/// expand beyond what a block can legitimately hold.
fn decompress(frames: &[u8]) -> std::io::Result<Vec<u8>> {
    match decompressed_size(frames) {
        Some(size) => {
            let mut plain = Vec::with_capacity(size.min(DECOMPRESSED_LIMIT) as usize);
            DECOMPRESSION.with_borrow_mut(|context| context.decompress(&mut plain, frames)).map_err(zstd_error)?;
            Ok(plain)
        }
        // A frame that does not record its size is read as a stream.
        None => {
            let mut plain = Vec::new();
            zstd::stream::read::Decoder::with_buffer(frames)?.take(DECOMPRESSED_LIMIT).read_to_end(&mut plain)?;
            Ok(plain)
        }
    }
}

thread_local! {
    /// A decompression context a thread, reused: making one for each read allocated and set
    /// up zstd's tables every time.
    static DECOMPRESSION: RefCell<zstd::zstd_safe::DCtx<'static>> = RefCell::new(zstd::zstd_safe::DCtx::create());
}

/// The first `len` bytes of what a zstd frame decompresses to (fewer if it holds fewer), and
/// no more: a trace is read without decoding the part of its chunk after it, half the chunk on
/// average.
fn decompress_prefix(frame: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
    let len = len.min(decompressed_size(frame).unwrap_or(DECOMPRESSED_LIMIT).min(DECOMPRESSED_LIMIT) as usize);
    let mut plain = Vec::with_capacity(len);
    DECOMPRESSION.with_borrow_mut(|context| {
        context.reset(ResetDirective::SessionOnly).map_err(zstd_error)?;
        let mut input = InBuffer::around(frame);
        let mut output = OutBuffer::around(&mut plain);
        while output.pos() < len {
            let before = (input.pos(), output.pos());
            let frame_ended = context.decompress_stream(&mut output, &mut input).map_err(zstd_error)? == 0;
            if frame_ended || (input.pos(), output.pos()) == before {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })?;
    Ok(plain)
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// The sum of the frames' recorded sizes, if every frame records one.
fn decompressed_size(mut frames: &[u8]) -> Option<u64> {
    let mut total = 0u64;
    while !frames.is_empty() {
        total = total.checked_add(zstd::zstd_safe::get_frame_content_size(frames).ok()??)?;
        frames = frames.get(zstd::zstd_safe::find_frame_compressed_size(frames).ok()?..)?;
    }
    Some(total)
}

fn split_documents(mut region: &[u8], count: usize) -> Option<Vec<String>> {
    // A document takes four bytes at least: a damaged count reserves no more than the region holds.
    let mut docs = Vec::with_capacity(count.min(region.len() / 4));
    while !region.is_empty() {
        let len = u32::from_le_bytes(region.get(..4)?.try_into().ok()?) as usize;
        let doc = region.get(4..4 + len)?;
        docs.push(String::from_utf8(doc.to_vec()).ok()?);
        region = &region[4 + len..];
    }
    (docs.len() == count).then_some(docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use roentgen_model::{MAX_DOCUMENT_BYTES, ParsedDocument, parse_document};
    use roentgen_query::summarize;

    fn trace_doc(trace: TraceId, n: u64) -> String {
        format!(
            r#"{{"trace_id":"{trace}","id":"{n:016x}","name":"svc-{}","start_time":{}.5,"end_time":{}.75,"annotations":{{"k":"v{n}"}}}}"#,
            n % 7,
            trace.epoch(),
            trace.epoch()
        )
    }

    fn sample(count: u64) -> Vec<(TraceId, Vec<String>)> {
        let mut traces: Vec<(TraceId, Vec<String>)> = (0..count)
            .map(|i| {
                let id = TraceId::from_parts(
                    1_700_000_000 + (i % 50) as u32,
                    u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c),
                );
                let docs = (0..(i % 3 + 1)).map(|n| trace_doc(id, i * 10 + n)).collect();
                (id, docs)
            })
            .collect();
        traces.sort_by_key(|(id, _)| *id);
        traces
    }

    async fn write(store: &InMemory, traces: &[(TraceId, Vec<String>)], chunk: usize) -> BlockHandle {
        let parsed: Vec<Vec<ParsedDocument>> = traces
            .iter()
            .map(|(_, docs)| docs.iter().map(|d| parse_document(d.as_bytes(), MAX_DOCUMENT_BYTES).unwrap()).collect())
            .collect();
        let summaries: Vec<TraceSummary> = traces
            .iter()
            .zip(&parsed)
            .map(|((id, _), parsed)| summarize(*id, &parsed.iter().collect::<Vec<_>>(), 1))
            .collect();
        let input: Vec<BlockTrace<'_>> = traces
            .iter()
            .zip(&summaries)
            .enumerate()
            .map(|(n, ((id, docs), summary))| BlockTrace {
                trace_id: *id,
                docs: TraceDocuments::Text(docs.iter().map(String::as_str).collect()),
                summary,
                limit_exceeded: n % 10 == 3,
            })
            .collect();
        let options = BuildOptions {
            id: "b1".into(),
            created_at: 1.0,
            wal_generation: 3,
            chunk_bytes: chunk,
            level: 3,
            supersedes: vec![],
        };
        let (kept, fine) = Rollups::of(input.iter().map(|t| t.summary)).split();
        let rollups = RollupSections::encode(kept, &fine, input.len(), &options).unwrap();
        let (data, meta) = build(&input, &[], &rollups, options).unwrap();
        let built = BlockHandle::from_data(meta.clone(), &data).unwrap();
        store.put(&data_path("b1"), PutPayload::from(data)).await.unwrap();
        let opened = BlockHandle::open(store, meta, true).await.unwrap();
        // A handle from the data in memory and one read back hold the same.
        let held = |h: &BlockHandle| format!("{:?}", (&h.meta, &h.data_path, &h.bloom, &h.fences, &h.chunks));
        assert_eq!(held(&built), held(&opened));
        assert_eq!(built.kept_rollups, opened.kept_rollups);
        opened
    }

    impl BlockHandle {
        /// Every trace of the block, in trace id order: what a compaction that copies no chunk
        /// reads.
        async fn read_all(&self, store: &dyn ObjectStore) -> Result<Vec<(TraceId, BlockRead)>, StoreError> {
            let index = self.index(store).await?;
            let input = self.merge_input(store, &index, &vec![true; index.len()], usize::MAX).await?;
            assert!(input.frames.is_empty());
            Ok(index
                .into_iter()
                .zip(input.traces)
                .map(|((id, entry), docs)| {
                    let Some(MergedDocuments::Text(docs)) = docs else { panic!("{docs:?} is not text") };
                    (id, BlockRead { docs, limit_exceeded: entry.limit_exceeded, revision: entry.revision })
                })
                .collect())
        }
    }

    /// A block built from another's chunks, some copied as they are and the rest's traces
    /// compressed again, with some traces left out: each kept trace reads back as it was, from
    /// wherever it went, and those left out are not found.
    #[tokio::test]
    async fn a_merged_block_reads_copied_chunks_and_new_ones() {
        let store = InMemory::new();
        let traces = sample(300);
        let block = write(&store, &traces, 4096).await;
        assert!(block.chunks.len() > 10);
        let index = block.index(&store).await.unwrap();
        // Every seventh trace left out; so are all traces of the third chunk, and all but one of
        // the fifth's, which is then compressed again.
        let keep: Vec<bool> = index
            .iter()
            .enumerate()
            .map(|(n, (_, e))| n % 7 != 0 && e.chunk != 2 && (e.chunk != 4 || index[n - 1].1.chunk != 4))
            .collect();
        let input = block.merge_input(&store, &index, &keep, 2048).await.unwrap();
        assert_eq!(input.frames.len(), block.chunks.len() - 2, "every chunk but the two mostly left out");
        assert!(input.traces.iter().flatten().any(|d| matches!(d, MergedDocuments::Text(_))));
        let summaries: Vec<TraceSummary> = block.summaries(&store).await.unwrap();
        let kept: Vec<BlockTrace<'_>> = index
            .iter()
            .zip(&input.traces)
            .zip(&summaries)
            .filter_map(|(((id, entry), docs), summary)| {
                let docs = docs.as_ref()?.to_block();
                Some(BlockTrace { trace_id: *id, docs, summary, limit_exceeded: entry.limit_exceeded })
            })
            .collect();
        let options = BuildOptions {
            id: "merged".into(),
            created_at: 2.0,
            wal_generation: 3,
            chunk_bytes: 4096,
            level: 3,
            supersedes: vec![],
        };
        let (kept_rollups, fine) = Rollups::of(kept.iter().map(|t| t.summary)).split();
        let rollups = RollupSections::encode(kept_rollups, &fine, kept.len(), &options).unwrap();
        let (data, meta) = build(&kept, &input.frames, &rollups, options).unwrap();
        let kept_docs: usize = traces.iter().zip(&keep).filter(|(_, k)| **k).map(|((_, docs), _)| docs.len()).sum();
        let kept_bytes: usize =
            traces.iter().zip(&keep).filter(|(_, k)| **k).flat_map(|((_, docs), _)| docs).map(String::len).sum();
        assert_eq!((meta.document_count, meta.raw_document_bytes), (kept_docs as u64, kept_bytes as u64));
        store.put(&data_path("merged"), PutPayload::from(data)).await.unwrap();
        let merged = BlockHandle::open(&store, meta, true).await.unwrap();
        for (n, ((id, docs), keep)) in traces.iter().zip(&keep).enumerate() {
            let read = merged.get(&store, *id).await.unwrap();
            if *keep {
                let read = read.unwrap();
                assert_eq!((&read.docs, read.limit_exceeded), (docs, n % 10 == 3));
            } else {
                assert_eq!(read, None);
            }
        }
        assert_eq!(merged.read_all(&store).await.unwrap().len(), keep.iter().filter(|k| **k).count());
    }

    #[tokio::test]
    async fn every_trace_is_found_and_others_are_not() {
        let store = InMemory::new();
        let traces = sample(1000);
        let block = write(&store, &traces, 4096).await;
        assert!(block.chunks.len() > 10, "small chunks force many frames");
        for (n, (id, docs)) in traces.iter().enumerate() {
            let read = block.get(&store, *id).await.unwrap().unwrap();
            assert_eq!((&read.docs, read.limit_exceeded, read.revision), (docs, n % 10 == 3, Some(1)));
        }
        let mut false_positives = 0;
        for i in 0..1000u128 {
            let other = TraceId::from_parts(1_700_000_010, i.wrapping_mul(0x1234_5678_9abc_def1) ^ 0x5555);
            if traces.iter().any(|(id, _)| *id == other) {
                continue;
            }
            false_positives += usize::from(block.may_contain(other));
            assert_eq!(block.get(&store, other).await.unwrap(), None);
        }
        assert!(false_positives < 50, "bloom false positive rate too high: {false_positives}/1000");
        let summaries = block.summaries(&store).await.unwrap();
        assert_eq!(summaries.len(), 1000);
        let (expected_kept, expected_fine) = Rollups::of(&summaries).split();
        let kept = block.kept_rollups.as_ref().unwrap();
        assert_eq!(kept.rollups, expected_kept);
        assert_eq!(kept.fine_frames.len(), expected_fine.len(), "one frame per hour");
        for (hour, expected) in &expected_fine {
            let (fine, _) = block.fine_rollups(&store, *hour).await.unwrap().unwrap();
            assert_eq!(&fine, expected, "hour {hour}");
        }
        assert!(block.fine_rollups(&store, 1).await.unwrap().is_none());
        assert!(summaries.windows(2).all(|w| w[0].trace_id < w[1].trace_id));
        assert_eq!(block.meta.trace_count, 1000);
        assert_eq!(block.meta.min_epoch, 1_700_000_000);
        assert_eq!(block.meta.max_epoch, 1_700_000_049);
    }

    /// Traces read together are read as each alone: held or not, and a chunk that fails its
    /// checks fails only its own traces.
    #[tokio::test]
    async fn traces_read_together_are_read_as_each_alone() {
        let store = InMemory::new();
        let traces = sample(600);
        let block = write(&store, &traces, 4096).await;
        let absent =
            (0..200u128).map(|i| TraceId::from_parts(1_700_000_020, i.wrapping_mul(0x1234_5678_9abc_def1) ^ 0x77));
        let mut ids: Vec<TraceId> = traces.iter().step_by(3).map(|(id, _)| *id).chain(absent).collect();
        ids.sort_unstable();
        ids.dedup();
        let read = block.get_many(&store, &ids).await.unwrap();
        assert_eq!(read.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
        let mut held = 0;
        for (id, read) in &read {
            let alone = block.get(&store, *id).await.unwrap();
            held += usize::from(alone.is_some());
            assert_eq!(read.as_ref().unwrap(), &alone, "{id}");
        }
        assert_eq!(held, 200);

        // A chunk's frame damaged in its middle: its traces fail, alone as together; no other does.
        let (at, len) = block.chunks[3];
        let mut data = store.get(&data_path(&block.meta.id)).await.unwrap().bytes().await.unwrap().to_vec();
        for byte in &mut data[(at + u64::from(len) / 3) as usize..(at + u64::from(len) / 2) as usize] {
            *byte ^= 0x5a;
        }
        store.put(&data_path(&block.meta.id), PutPayload::from(data)).await.unwrap();
        let mut failed = 0;
        for (id, read) in block.get_many(&store, &ids).await.unwrap() {
            let alone = block.get(&store, id).await;
            assert_eq!(read.is_err(), alone.is_err(), "{id}");
            failed += usize::from(read.is_err());
            if let (Ok(read), Ok(alone)) = (read, alone) {
                assert_eq!(read, alone);
            }
        }
        assert!(failed > 0 && failed < held, "{failed} of {held} failed");
    }

    async fn open_fixture(name: &str) -> (InMemory, BlockHandle) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let meta: BlockMeta = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let store = InMemory::new();
        let data = std::fs::read(dir.join("data")).unwrap();
        assert_eq!(&data[..8], BLOCK_MAGIC);
        store.put(&data_path(&meta.id), PutPayload::from(data)).await.unwrap();
        let block = BlockHandle::open(&store, meta, true).await.unwrap();
        (store, block)
    }

    /// Format version 5, frozen: the index in pages of entries relative to one another; the same
    /// documents as the version 3 fixture.
    #[tokio::test]
    async fn frozen_fixture_v5() {
        same_as_v3("block-v5").await;
    }

    /// Format version 5 with three index pages and chunks of 4 KiB: entries that follow the one
    /// before in its chunk, and entries that start a chunk or a page.
    #[tokio::test]
    async fn frozen_fixture_v5_pages() {
        let (store, block) = open_fixture("block-v5-pages").await;
        let traces = sample(300);
        assert!(block.chunks.len() > 20);
        for (n, (id, docs)) in traces.iter().enumerate() {
            let read = block.get(&store, *id).await.unwrap().unwrap();
            let expected = (docs, n % 10 == 3, Some(1 + (n % 4) as u32));
            assert_eq!((&read.docs, read.limit_exceeded, read.revision), expected);
            let next = TraceId::from_u128(id.as_u128() + 1);
            assert_eq!(block.get(&store, next).await.unwrap(), None);
        }
        let summaries = block.summaries(&store).await.unwrap();
        let read: Vec<(TraceId, u32, u32)> =
            summaries.iter().map(|s| (s.trace_id, s.revision, s.document_count)).collect();
        let expected: Vec<(TraceId, u32, u32)> =
            traces.iter().enumerate().map(|(n, (id, docs))| (*id, 1 + (n % 4) as u32, docs.len() as u32)).collect();
        assert_eq!(read, expected);
        assert_eq!(block.read_all(&store).await.unwrap().len(), 300);
    }

    /// A damaged block gives errors, never a panic: bytes of every section overwritten, and a
    /// trace count far beyond what the block holds.
    #[tokio::test]
    async fn damaged_blocks_are_refused_not_a_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/block-v5-pages");
        let mut meta: BlockMeta = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let data = std::fs::read(dir.join("data")).unwrap();
        let ids: Vec<TraceId> = sample(300).into_iter().map(|(id, _)| id).step_by(37).collect();
        let s = meta.sections.clone();
        let sections =
            [s.index, s.summaries, s.facts.unwrap(), s.links.unwrap(), s.chunks, s.fences, s.kept_rollups.unwrap()];
        let store = InMemory::new();
        for section in sections {
            let len = section.end - section.start;
            for at in (0..len).step_by((len / 24).max(1) as usize) {
                for value in [0x00, 0x7f, 0xff] {
                    let mut damaged = data.clone();
                    damaged[(section.start + at) as usize] = value;
                    store.put(&data_path(&meta.id), PutPayload::from(damaged)).await.unwrap();
                    let Ok(block) = BlockHandle::open(&store, meta.clone(), true).await else { continue };
                    for id in &ids {
                        let _ = block.get(&store, *id).await;
                    }
                    let _ = block.get_many(&store, &ids).await;
                    let _ = block.summaries(&store).await;
                    let _ = block.read_all(&store).await;
                    if let Ok(index) = block.index(&store).await {
                        let _ = block.merge_input(&store, &index, &vec![true; index.len()], 1).await;
                    }
                }
            }
        }
        meta.trace_count = u64::MAX;
        store.put(&data_path(&meta.id), PutPayload::from(data)).await.unwrap();
        let block = BlockHandle::open(&store, meta, true).await.unwrap();
        assert!(block.read_all(&store).await.is_ok(), "the index says how many traces there are");
        let _ = block.get(&store, ids[0]).await;
    }

    /// Format version 4, frozen: the compact summaries and facts; the same documents as the
    /// version 3 fixture.
    #[tokio::test]
    async fn frozen_fixture_v4() {
        same_as_v3("block-v4").await;
    }

    /// A fixture of the version 3 fixture's documents reads back as it does: the same traces, and
    /// the same summaries to the microsecond.
    async fn same_as_v3(name: &str) {
        let (store, block) = open_fixture(name).await;
        let summaries = block.summaries(&store).await.unwrap();
        let (v3_store, v3) = open_fixture("block-v3").await;
        let mut expected = v3.summaries(&v3_store).await.unwrap();
        expected.iter_mut().for_each(TraceSummary::round_to_microseconds);
        assert_eq!(summaries, expected, "what version 3 stored, to the microsecond");
        assert_eq!(summaries[0].trace_id.to_string(), "1-5759e988-bd862e3fe1be46a994272793");
        assert_eq!((summaries[0].revision, summaries[0].document_count), (1, 2));
        assert_eq!(block.read_all(&store).await.unwrap(), v3.read_all(&v3_store).await.unwrap());
        frozen_links_and_rollups(store, block).await;
    }

    /// Format version 3, frozen: the rollups' and the links' sections. The block holds a trace
    /// that calls DynamoDB and a consumer linked to that call.
    #[tokio::test]
    async fn frozen_fixture_v3() {
        let (store, block) = open_fixture("block-v3").await;
        frozen_links_and_rollups(store, block).await;
    }

    async fn frozen_links_and_rollups(store: InMemory, block: BlockHandle) {
        let id = TraceId::parse("1-5759e988-bd862e3fe1be46a994272793").unwrap();
        let read = block.get(&store, id).await.unwrap().unwrap();
        assert_eq!((read.docs.len(), read.limit_exceeded, read.revision), (2, false, Some(1)));
        let kept = block.kept_rollups.clone().expect("read at open");
        let summaries = block.summaries(&store).await.unwrap();
        assert_eq!(summaries[0].facts.nodes.len(), 3);
        let consumer = &summaries[1];
        let source = consumer.links[0].source.as_ref().expect("resolved when the block was written");
        assert_eq!((source.node.name.as_str(), source.sent_time), ("orders", 1_465_510_280.16));
        let mut expected = roentgen_query::ServiceGraph::default();
        for summary in &summaries {
            expected.add(summary);
        }
        let minute = crate::rollup::minute(summaries[0].end_time);
        let (fine, _) = block.fine_rollups(&store, minute.div_euclid(60)).await.unwrap().expect("that hour's frame");
        let (mut by_minute, mut by_hour) = Default::default();
        fine.merge_into(&mut by_minute, &[(0, minute)]);
        kept.rollups.merge_into(&mut by_hour, &[(2, minute.div_euclid(60))]);
        assert_eq!((&by_minute, &by_hour), (&expected, &expected));
        let names: Vec<&str> = expected.nodes.iter().map(|n| n.key.name.as_str()).collect();
        assert_eq!(names, ["fixture", "fixture-udp", "orders", "fixture", "consumer", "consumer"]);
        let orders = &expected.nodes[2];
        assert!(orders.edges[0].link && expected.nodes[orders.edges[0].target].key.name == "consumer");
    }

    /// Format version 2, frozen: summaries plus the facts section.
    #[tokio::test]
    async fn frozen_fixture_v2() {
        let (store, block) = open_fixture("block-v2").await;
        let id = TraceId::parse("1-5759e988-bd862e3fe1be46a994272793").unwrap();
        assert_eq!(block.get(&store, id).await.unwrap().unwrap().docs.len(), 2);
        let summaries = block.summaries(&store).await.unwrap();
        assert!(block.kept_rollups.is_none(), "version 2 has no rollups");
        assert_eq!(summaries[0].services[0].name, "fixture");
        let facts = &summaries[0].facts;
        assert_eq!(facts.nodes.len(), 2);
        assert_eq!((facts.edges.len(), facts.edges[0].from, facts.edges[0].to), (1, 0, 1));
        assert_eq!(facts.edges[0].start_time, 1_465_510_280.15);
        let fault = &facts.fault_root_causes[0];
        assert_eq!(fault.services.len(), 2);
        let last = fault.services[1].entity_path.last().unwrap();
        assert_eq!((last.name.as_str(), last.exceptions[0].1.as_deref()), ("fixture-udp", Some("it broke")));
    }

    /// Format version 1, frozen: a block written by the first release must always be readable.
    #[tokio::test]
    async fn frozen_fixture_v1() {
        let (store, block) = open_fixture("block-v1").await;
        let id = TraceId::parse("1-5759e988-bd862e3fe1be46a994272793").unwrap();
        let docs = block.get(&store, id).await.unwrap().unwrap().docs;
        assert_eq!(docs.len(), 2);
        assert!(docs[0].contains("\"fixture\""));
        let summaries = block.summaries(&store).await.unwrap();
        assert_eq!(summaries[0].trace_id, id);
        assert_eq!(summaries[0].services[0].name, "fixture");
        assert!(summaries[0].facts.nodes.is_empty(), "version 1 has no facts");
    }

    #[test]
    fn a_section_in_frames_decodes_to_the_encoding_of_a_vector() {
        let options = test_options();
        let frame_bytes = 64 << 10;
        let items: Vec<(u64, String)> = (0..50_000u64).map(|i| (i * 7919, format!("item-{i}"))).collect();
        let mut out = b"prefix".to_vec();
        let mut buffers = SectionBuffers::new(frame_bytes, 0);
        let range = compressed_in_frames(&options, &mut out, &mut buffers, ("items", SECTION_LEVEL), |section| {
            section.serialize(&items)
        })
        .unwrap();
        assert_eq!(range.start, 6);
        assert_eq!(range.end as usize, out.len());
        let frame = &out[range.start as usize..];
        let encoded = postcard::to_stdvec(&items).unwrap();
        assert!(encoded.len() > 4 * frame_bytes, "several frames");
        assert_eq!(decompressed_size(frame), Some(encoded.len() as u64));
        assert_eq!(decompress(frame).unwrap(), encoded);
        assert_eq!(decode::<Vec<(u64, String)>>(frame).unwrap(), items);
        assert!(decode::<Vec<(u64, String)>>(&frame[..frame.len() / 2]).is_err(), "a cut frame");
        let streamed = zstd::stream::encode_all(&encoded[..], SECTION_LEVEL).unwrap();
        assert_eq!(decompressed_size(&streamed), None, "a stream records no size");
        assert_eq!(decompress(&streamed).unwrap(), encoded);
    }

    /// A column encoded apart is the sequence `seq` writes, across however many frames it
    /// falls into.
    #[test]
    fn a_column_encoded_apart_is_the_sequence_seq_writes() {
        let items: Vec<u64> = (0..40_000u64).map(|i| i * 7919).collect();
        let mut column = Vec::new();
        items.iter().for_each(|&i| column.varint(i));
        let frame_bytes = 4 << 10;
        let mut out = Vec::new();
        let mut buffers = SectionBuffers::new(frame_bytes, 0);
        compressed_in_frames(&test_options(), &mut out, &mut buffers, ("column", SECTION_LEVEL), |section| {
            section.byte(7);
            section.encoded_seq(items.len(), &column)
        })
        .unwrap();
        let (mut frames, mut rest) = (0, &out[..]);
        while !rest.is_empty() {
            rest = &rest[zstd::zstd_safe::find_frame_compressed_size(rest).unwrap()..];
            frames += 1;
        }
        assert!(frames > column.len() / frame_bytes, "{frames} frames");
        let expected = encoded(|w| {
            w.byte(7);
            w.seq(items.iter(), |w, &i| w.varint(i))
        });
        assert_eq!(decompress(&out).unwrap(), expected);
        assert_eq!(decode::<(u8, Vec<u64>)>(&out).unwrap(), (7, items));
    }

    #[test]
    fn a_prefix_of_a_frame_is_decompressed_alone() {
        let plain: Vec<u8> = (0..300_000u32).flat_map(|i| format!("{i:08x},").into_bytes()).collect();
        let frame = zstd::bulk::compress(&plain, 1).unwrap();
        for len in [0, 1, 4096, 128 << 10, (128 << 10) + 1, plain.len() - 1, plain.len()] {
            assert_eq!(decompress_prefix(&frame, len).unwrap(), plain[..len], "{len} bytes");
        }
        assert_eq!(decompress_prefix(&frame, plain.len() + 1).unwrap(), plain, "no more than the frame holds");
        assert_eq!(decompress_prefix(&frame, usize::MAX).unwrap(), plain, "a damaged length reserves no more");
        let cut = decompress_prefix(&frame[..frame.len() / 2], plain.len()).unwrap();
        assert!(
            !cut.is_empty() && cut.len() < plain.len() && plain.starts_with(&cut),
            "a cut frame gives what it holds"
        );
        assert!(decompress_prefix(b"not a zstd frame", 10).is_err());
        assert_eq!(decompress(&frame).unwrap(), plain, "the context is reused after a prefix");
    }

    proptest::proptest! {
        /// The numbers written without serde are written as postcard writes them.
        #[test]
        fn numbers_are_encoded_as_postcard_encodes_them(
            unsigned: u64, signed: i64, option: Option<u64>, float: f64, byte: u8, len in 0usize..300,
        ) {
            let plain = encoded(|w| {
                w.varint(unsigned);
                w.signed(signed);
                w.option_varint(option);
                w.f64(float);
                w.byte(byte);
                w.seq(0..len, |w, n| w.varint(n as u64))
            });
            let items: Vec<u64> = (0..len as u64).collect();
            let expected = postcard::to_stdvec(&(unsigned, signed, option, float, byte, items)).unwrap();
            proptest::prop_assert_eq!(plain, expected);
        }
    }

    #[test]
    fn damaged_framing_is_detected() {
        assert_eq!(split_documents(&[3, 0, 0, 0, b'a'], 1), None);
        assert_eq!(split_documents(&[1, 0, 0, 0, b'a'], 2), None);
        assert_eq!(split_documents(&[1, 0, 0, 0, b'a'], 1), Some(vec!["a".to_owned()]));
    }
}
