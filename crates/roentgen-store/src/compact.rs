//! The encodings of the summaries and facts sections from block format 4 on.
//!
//! Version 3 wrote [`TraceSummary`] and [`TraceFacts`] as they are, every time an f64 of epoch
//! seconds: 8 bytes whose low bits are noise to zstd, and the most of those sections' size on
//! disk. From version 4 on every time but the trace's start is whole microseconds after it (or a
//! duration in microseconds), a varint of 2 to 4 bytes, and a fact's flags are one byte. The
//! trace id, the revision and the document count are left out: the index holds them, in the
//! same order. Microseconds are the precision X-Ray's SDKs send.
//!
//! Version 4 wrote one record per trace. Version 5 writes columns, in batches of
//! [`COLUMN_BATCH`] traces: each field of every trace of the batch, then the next field, and
//! the facts as one column per field of the batch's nodes and of its edges. Values of one kind
//! side by side are what zstd compresses well: on the load generator's traces, the summaries
//! take 16.6 bytes a segment instead of 19.6 and the facts 11.6 instead of 15.4. The trace's
//! start is kept as microseconds after its id's epoch.

use std::sync::Arc;

use roentgen_model::{AnnotationValue, Http, Text, TraceId, prefetch};
use roentgen_query::{
    AnnotationSummary, EdgeFact, FactFlags, NodeFact, RootCause, ServiceKey, ServiceSet, TraceFacts, TraceSummary,
    UserSummary, shared,
};
use serde::Deserialize;

use crate::block::{Postcard, SectionError, SectionWriter};

/// Microseconds from `base` to `time`, both rounded to whole microseconds first.
fn after(base: f64, time: f64) -> i64 {
    whole_micros(time) - whole_micros(base)
}

/// The time `micros` after `base`, computed in whole microseconds so that a time sent with at most
/// six decimals comes back as the very f64 it was parsed into.
fn at(base: f64, micros: i64) -> f64 {
    // Saturating: a damaged section decodes to some time, never to an overflow.
    whole_micros(base).saturating_add(micros) as f64 / 1e6
}

fn whole_micros(time: f64) -> i64 {
    roentgen_query::round(time * 1e6) as i64
}

fn micros(duration: f64) -> u64 {
    roentgen_query::round(duration.max(0.0) * 1e6) as u64
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// A summary as version 4 wrote it.
#[derive(Deserialize)]
pub(crate) struct SummaryIn {
    start_time: f64,
    end_time: i64,
    response_time: Option<u64>,
    flags: u8,
    http: Option<Http>,
    services: Vec<ServiceKey>,
    entry_point: Option<u32>,
    annotations: Vec<AnnotationSummary>,
    users: Vec<UserSummary>,
    resource_arns: Vec<Text>,
    instance_ids: Vec<Text>,
    availability_zones: Vec<Text>,
    segment_end_times: Vec<i64>,
}

const FAULT: u8 = 1;
const ERROR: u8 = 2;
const THROTTLE: u8 = 4;
const PARTIAL: u8 = 8;
const ROOT: u8 = 16;
const INFERRED: u8 = 32;

fn flags(pairs: &[(bool, u8)]) -> u8 {
    pairs.iter().filter(|(set, _)| *set).fold(0, |all, (_, bit)| all | bit)
}

impl SummaryIn {
    /// The summary, with what the index holds for it.
    pub(crate) fn into_summary(self, trace_id: TraceId, revision: u32, document_count: u32) -> TraceSummary {
        let base = self.start_time;
        TraceSummary {
            trace_id,
            start_time: base,
            end_time: at(base, self.end_time),
            response_time: self.response_time.map(seconds).into(),
            has_fault: self.flags & FAULT != 0,
            has_error: self.flags & ERROR != 0,
            has_throttle: self.flags & THROTTLE != 0,
            is_partial: self.flags & PARTIAL != 0,
            http: self.http,
            services: shared(self.services),
            entry_point: self.entry_point.into(),
            annotations: self.annotations.into(),
            users: self.users.into(),
            resource_arns: self.resource_arns.into(),
            instance_ids: self.instance_ids.into(),
            availability_zones: self.availability_zones.into(),
            revision,
            segment_end_times: self.segment_end_times.into_iter().map(|t| at(base, t)).collect(),
            document_count,
            facts: TraceFacts::default(),
            links: Box::default(),
        }
    }
}

/// A node or an edge fact as version 4 wrote it (and version 5 in columns): `from` is the node's
/// service, `to` unused for nodes.
#[derive(Deserialize)]
struct Fact {
    from: u32,
    to: u32,
    start_time: i64,
    flags: u8,
    response_time: Option<u64>,
    http_status: Option<u16>,
}

/// A trace's facts as version 4 wrote them.
#[derive(Deserialize)]
pub(crate) struct FactsIn {
    nodes: Vec<Fact>,
    edges: Vec<Fact>,
    fault_root_causes: Vec<RootCause>,
    error_root_causes: Vec<RootCause>,
    response_time_root_causes: Vec<RootCause>,
}

impl FactsIn {
    pub(crate) fn into_facts(self, base: f64) -> TraceFacts {
        let flags = |f: &Fact| {
            FactFlags::new(f.flags & ERROR != 0, f.flags & FAULT != 0, f.flags & THROTTLE != 0, f.http_status)
        };
        let node = |f: Fact| NodeFact {
            service: f.from,
            start_time: at(base, f.start_time),
            response_time: f.response_time.map(seconds).into(),
            flags: flags(&f).with_root(f.flags & ROOT != 0).with_inferred(f.flags & INFERRED != 0),
        };
        let edge = |f: Fact| EdgeFact {
            from: f.from,
            to: f.to,
            start_time: at(base, f.start_time),
            response_time: f.response_time.map(seconds).into(),
            flags: flags(&f),
        };
        TraceFacts {
            nodes: self.nodes.into_iter().map(node).collect(),
            edges: self.edges.into_iter().map(edge).collect(),
            fault_root_causes: self.fault_root_causes.into(),
            error_root_causes: self.error_root_causes.into(),
            response_time_root_causes: self.response_time_root_causes.into(),
        }
    }
}

/// Traces per batch of columns. A batch's columns are encoded in one pass over its summaries
/// (its facts gathered into rows in one), so a batch is what the encoding holds at once: a few
/// megabytes of column buffers and rows at this size. In batches of 16,384 traces the sections
/// store 0.8 bytes a segment more than in one batch per block.
pub(crate) const COLUMN_BATCH: usize = 16_384;

/// A block's summaries in batches of columns: the summaries section from format 5 on. Each
/// batch is every trace's start, then every trace's end, and so on.
///
/// A batch's columns are encoded side by side, each into a buffer of its own, in one pass over
/// its summaries that asks ahead for the next ones; then written one after the other. A pass a
/// column read the batch's summaries from memory again for each of its 13 columns (a batch of
/// them is larger than the processor's caches).
pub(crate) fn write_summary_section(
    out: &mut SectionWriter<'_>,
    summaries: &[&TraceSummary],
) -> Result<(), SectionError> {
    out.varint(summaries.chunks(COLUMN_BATCH).len() as u64);
    let mut columns: [Vec<u8>; 13] = Default::default();
    for t in summaries.chunks(COLUMN_BATCH) {
        columns.iter_mut().for_each(Vec::clear);
        let [
            start,
            duration,
            response_time,
            flags,
            http,
            services,
            entry_point,
            annotations,
            users,
            arns,
            instances,
            zones,
            ends,
        ] = &mut columns;
        for (i, s) in t.iter().enumerate() {
            if let Some(next) = t.get(i + 8) {
                prefetch_summary(next);
            }
            if let Some(next) = t.get(i + 4) {
                prefetch_summary_lists(next);
            }
            match Start::of(s) {
                Start::AfterEpoch(micros) => {
                    start.varint(0);
                    start.signed(micros);
                }
                Start::Exact(time) => {
                    start.varint(1);
                    start.f64(time);
                }
            }
            duration.signed(after(s.start_time, s.end_time));
            response_time.option_varint(s.response_time.get().map(micros));
            flags.byte(summary_flags(s));
            write_http(http, s.http.as_ref());
            write_services(services, &s.services);
            entry_point.option_varint(s.entry_point.get().map(u64::from));
            write_annotations(annotations, &s.annotations);
            write_users(users, &s.users);
            write_strings(arns, &s.resource_arns);
            write_strings(instances, &s.instance_ids);
            write_strings(zones, &s.availability_zones);
            ends.varint(s.segment_end_times.len() as u64);
            s.segment_end_times.iter().for_each(|&end| ends.signed(after(s.start_time, end)));
        }
        for column in &columns {
            out.encoded_seq(t.len(), column)?;
        }
    }
    Ok(())
}

/// Starts loading the lines of a summary that its columns read.
fn prefetch_summary(s: &TraceSummary) {
    prefetch::line(&s.start_time);
    prefetch::line(&s.http);
    prefetch::line(&s.services);
    prefetch::line(&s.annotations);
    prefetch::line(&s.segment_end_times);
}

/// Starts loading the lists a summary points to; its own lines should be loaded or on their way.
fn prefetch_summary_lists(s: &TraceSummary) {
    prefetch::lines(&s.services, 1);
    prefetch::lines(&s.annotations, 2);
    prefetch::lines(&s.users, 1);
    prefetch::lines(&s.segment_end_times, 1);
}

// A summary's nested values, written as serde writes them in postcard's format (which the
// reader's `Deserialize` types expect) but without serde: through it they took over half of
// encoding the summaries section.

fn write_http(out: &mut impl Postcard, http: Option<&Http>) {
    let Some(http) = http else { return out.byte(0) };
    out.byte(1);
    out.option_str(http.method.as_deref());
    out.option_str(http.url.as_deref());
    out.option_str(http.user_agent.as_deref());
    out.option_str(http.client_ip.as_deref());
    out.option_varint(http.status.map(u64::from));
    out.byte(u8::from(http.traced));
}

fn write_services(out: &mut impl Postcard, services: &[Arc<ServiceKey>]) {
    out.varint(services.len() as u64);
    for key in services {
        out.str(&key.name);
        out.option_str(key.kind.as_deref());
        out.option_str(key.account_id.as_deref());
    }
}

fn write_service_set(out: &mut impl Postcard, services: &ServiceSet) {
    out.varint(services.len() as u64);
    services.iter().for_each(|service| out.varint(service.into()));
}

fn write_annotations(out: &mut impl Postcard, annotations: &[AnnotationSummary]) {
    out.varint(annotations.len() as u64);
    for annotation in annotations {
        out.str(&annotation.key);
        out.varint(annotation.values.len() as u64);
        for (value, services) in &annotation.values {
            // The variant's index, then its value.
            match value {
                AnnotationValue::String(text) => {
                    out.varint(0);
                    out.str(text);
                }
                AnnotationValue::Number(number) => {
                    out.varint(1);
                    out.f64(*number);
                }
                AnnotationValue::Bool(bool) => {
                    out.varint(2);
                    out.byte(u8::from(*bool));
                }
            }
            write_service_set(out, services);
        }
    }
}

fn write_users(out: &mut impl Postcard, users: &[UserSummary]) {
    out.varint(users.len() as u64);
    for user in users {
        out.str(&user.name);
        write_service_set(out, &user.services);
    }
}

fn write_strings(out: &mut impl Postcard, strings: &[Text]) {
    out.varint(strings.len() as u64);
    strings.iter().for_each(|text| out.str(text));
}

/// A block's facts in batches of columns: the facts section from format 5 on. Each batch is
/// per trace the number of its nodes, then one column per field of every trace's nodes; the same
/// for edges; then each trace's root causes. Times are microseconds after the trace's start.
///
/// A batch's nodes and edges are first gathered into rows, in one pass over its traces: each
/// column read from the summaries themselves went to every trace's facts again, wherever they
/// lay, and those cache misses took most of the facts' encoding (3.3% of the server's CPU).
/// That pass asks ahead for the next traces' facts.
pub(crate) fn write_facts_section(
    out: &mut SectionWriter<'_>,
    summaries: &[&TraceSummary],
) -> Result<(), SectionError> {
    out.varint(summaries.chunks(COLUMN_BATCH).len() as u64);
    let mut rows = FactRows::for_batches(summaries.chunks(COLUMN_BATCH));
    for t in summaries.chunks(COLUMN_BATCH) {
        rows.gather(t);
        let FactRows { node_counts, nodes, edge_counts, edges } = &rows;
        out.seq(node_counts.iter(), |out, &n| out.varint(n.into()))?;
        out.seq(nodes.iter(), |out, n| out.varint(n.from.into()))?;
        out.seq(nodes.iter(), |out, n| out.signed(n.start))?;
        out.seq(nodes.iter(), |out, n| out.byte(n.flags))?;
        out.seq(nodes.iter(), |out, n| out.option_varint(n.response_time))?;
        out.seq(nodes.iter(), |out, n| out.option_varint(n.http_status))?;
        out.seq(edge_counts.iter(), |out, &n| out.varint(n.into()))?;
        out.seq(edges.iter(), |out, e| out.varint(e.from.into()))?;
        out.seq(edges.iter(), |out, e| out.varint(e.to.into()))?;
        out.seq(edges.iter(), |out, e| out.signed(e.start))?;
        out.seq(edges.iter(), |out, e| out.byte(e.flags))?;
        out.seq(edges.iter(), |out, e| out.option_varint(e.response_time))?;
        out.seq(edges.iter(), |out, e| out.option_varint(e.http_status))?;
        out.serialized_seq(t.iter().map(|s| {
            let f = &s.facts;
            (&f.fault_root_causes, &f.error_root_causes, &f.response_time_root_causes)
        }))?;
    }
    Ok(())
}

/// One batch's facts as their columns write them, side by side; kept from batch to batch.
struct FactRows {
    node_counts: Vec<u32>,
    nodes: Vec<FactRow>,
    edge_counts: Vec<u32>,
    edges: Vec<FactRow>,
}

/// A node (`from` its service, `to` unused) or an edge, encoded but for its varints.
struct FactRow {
    from: u32,
    to: u32,
    start: i64,
    flags: u8,
    response_time: Option<u64>,
    http_status: Option<u64>,
}

impl FactRows {
    /// Rows sized for the largest of `batches`. A batch's rows are megabytes: grown by doubling,
    /// or regrown for a batch larger than the one before, they were copied again (all their
    /// capacity, onto fresh pages) at every flush, 1.3% of the server's CPU.
    fn for_batches<'a>(batches: impl Iterator<Item = &'a [&'a TraceSummary]>) -> Self {
        let (mut traces, mut nodes, mut edges) = (0, 0, 0);
        for batch in batches {
            traces = traces.max(batch.len());
            nodes = nodes.max(batch.iter().map(|s| s.facts.nodes.len()).sum());
            edges = edges.max(batch.iter().map(|s| s.facts.edges.len()).sum());
        }
        Self {
            node_counts: Vec::with_capacity(traces),
            nodes: Vec::with_capacity(nodes),
            edge_counts: Vec::with_capacity(traces),
            edges: Vec::with_capacity(edges),
        }
    }

    fn gather(&mut self, traces: &[&TraceSummary]) {
        self.node_counts.clear();
        self.nodes.clear();
        self.edge_counts.clear();
        self.edges.clear();
        for (i, s) in traces.iter().enumerate() {
            if let Some(next) = traces.get(i + 8) {
                prefetch::line(&next.facts);
            }
            if let Some(next) = traces.get(i + 4) {
                prefetch::lines(&next.facts.nodes, 4);
                prefetch::lines(&next.facts.edges, 4);
            }
            let base = s.start_time;
            self.node_counts.push(s.facts.nodes.len() as u32);
            self.nodes.extend(s.facts.nodes.iter().map(|n| FactRow {
                from: n.service,
                to: 0,
                start: after(base, n.start_time),
                flags: node_flags(n),
                response_time: n.response_time.get().map(micros),
                http_status: n.flags.http_status().map(u64::from),
            }));
            self.edge_counts.push(s.facts.edges.len() as u32);
            self.edges.extend(s.facts.edges.iter().map(|e| FactRow {
                from: e.from,
                to: e.to,
                start: after(base, e.start_time),
                flags: edge_flags(e),
                response_time: e.response_time.get().map(micros),
                http_status: e.flags.http_status().map(u64::from),
            }));
        }
    }
}

/// The summaries of a summaries section of format 5, given what the index holds for each trace
/// (its id, revision and document count), in the same order.
pub(crate) fn read_summary_section(
    batches: Vec<SummaryColumnsIn>,
    index: impl ExactSizeIterator<Item = (TraceId, u32, u32)>,
) -> Result<Vec<TraceSummary>, String> {
    read_batches(batches, index, |batch| batch.start.len(), |batch, index| batch.into_summaries(index))
}

/// The facts of a facts section of format 5, given each trace's start, in index order.
pub(crate) fn read_facts_section(
    batches: Vec<FactColumnsIn>,
    starts: impl ExactSizeIterator<Item = f64>,
) -> Result<Vec<TraceFacts>, String> {
    read_batches(batches, starts, |batch| batch.node_counts.len(), |batch, starts| batch.into_facts(starts))
}

/// Reads a section's batches, handing each the next of `per_trace` (what is known of each trace
/// besides), and checks that together they cover every trace.
fn read_batches<B, I: ExactSizeIterator, T>(
    batches: Vec<B>,
    mut per_trace: I,
    len: impl Fn(&B) -> usize,
    read: impl Fn(B, std::iter::Take<&mut I>) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, String> {
    let traces = per_trace.len();
    let mut out = Vec::with_capacity(traces);
    for batch in batches {
        let len = len(&batch);
        out.extend(read(batch, per_trace.by_ref().take(len))?);
    }
    if out.len() == traces { Ok(out) } else { Err(format!("batches of {} traces for {traces}", out.len())) }
}

/// When a trace started: microseconds after its id's epoch, or the time itself when those would
/// not give it back exactly (a time far from the epoch, or not in whole microseconds).
#[derive(Deserialize)]
enum Start {
    AfterEpoch(i64),
    Exact(f64),
}

impl Start {
    fn of(summary: &TraceSummary) -> Self {
        let epoch = f64::from(summary.trace_id.epoch());
        let micros = after(epoch, summary.start_time);
        if at(epoch, micros).to_bits() == summary.start_time.to_bits() {
            Start::AfterEpoch(micros)
        } else {
            Start::Exact(summary.start_time)
        }
    }

    fn time(&self, trace_id: TraceId) -> f64 {
        match *self {
            Start::AfterEpoch(micros) => at(f64::from(trace_id.epoch()), micros),
            Start::Exact(time) => time,
        }
    }
}

fn summary_flags(s: &TraceSummary) -> u8 {
    flags(&[(s.has_fault, FAULT), (s.has_error, ERROR), (s.has_throttle, THROTTLE), (s.is_partial, PARTIAL)])
}

/// A batch of summary columns, as read.
#[derive(Deserialize)]
pub(crate) struct SummaryColumnsIn {
    start: Vec<Start>,
    end_time: Vec<i64>,
    response_time: Vec<Option<u64>>,
    flags: Vec<u8>,
    http: Vec<Option<Http>>,
    services: Vec<Vec<ServiceKey>>,
    entry_point: Vec<Option<u32>>,
    annotations: Vec<Vec<AnnotationSummary>>,
    users: Vec<Vec<UserSummary>>,
    resource_arns: Vec<Vec<Text>>,
    instance_ids: Vec<Vec<Text>>,
    availability_zones: Vec<Vec<Text>>,
    segment_end_times: Vec<Vec<i64>>,
}

impl SummaryColumnsIn {
    /// The summaries, given what the index holds for each trace (its id, revision and document
    /// count), in the same order.
    pub(crate) fn into_summaries(
        self,
        index: impl ExactSizeIterator<Item = (TraceId, u32, u32)>,
    ) -> Result<Vec<TraceSummary>, String> {
        let lengths = [
            self.start.len(),
            self.end_time.len(),
            self.response_time.len(),
            self.flags.len(),
            self.http.len(),
            self.services.len(),
            self.entry_point.len(),
            self.annotations.len(),
            self.users.len(),
            self.resource_arns.len(),
            self.instance_ids.len(),
            self.availability_zones.len(),
            self.segment_end_times.len(),
        ];
        let traces = index.len();
        if lengths.iter().any(|&len| len != traces) {
            return Err(format!("summary columns of {lengths:?} for {traces} index entries"));
        }
        let mut start = self.start.into_iter();
        let mut end_time = self.end_time.into_iter();
        let mut response_time = self.response_time.into_iter();
        let mut flags = self.flags.into_iter();
        let mut http = self.http.into_iter();
        let mut services = self.services.into_iter();
        let mut entry_point = self.entry_point.into_iter();
        let mut annotations = self.annotations.into_iter();
        let mut users = self.users.into_iter();
        let mut resource_arns = self.resource_arns.into_iter();
        let mut instance_ids = self.instance_ids.into_iter();
        let mut availability_zones = self.availability_zones.into_iter();
        let mut segment_end_times = self.segment_end_times.into_iter();
        let summaries = index.map(|(trace_id, revision, document_count)| {
            let base = start.next()?.time(trace_id);
            let flags = flags.next()?;
            Some(TraceSummary {
                trace_id,
                start_time: base,
                end_time: at(base, end_time.next()?),
                response_time: response_time.next()?.map(seconds).into(),
                has_fault: flags & FAULT != 0,
                has_error: flags & ERROR != 0,
                has_throttle: flags & THROTTLE != 0,
                is_partial: flags & PARTIAL != 0,
                http: http.next()?,
                services: shared(services.next()?),
                entry_point: entry_point.next()?.into(),
                annotations: annotations.next()?.into(),
                users: users.next()?.into(),
                resource_arns: resource_arns.next()?.into(),
                instance_ids: instance_ids.next()?.into(),
                availability_zones: availability_zones.next()?.into(),
                revision,
                segment_end_times: segment_end_times.next()?.into_iter().map(|t| at(base, t)).collect(),
                document_count,
                facts: TraceFacts::default(),
                links: Box::default(),
            })
        });
        summaries.collect::<Option<Vec<_>>>().ok_or_else(|| "a summary column ended early".to_owned())
    }
}

fn node_flags(n: &NodeFact) -> u8 {
    let f = n.flags;
    flags(&[
        (f.fault(), FAULT),
        (f.error(), ERROR),
        (f.throttle(), THROTTLE),
        (f.root(), ROOT),
        (f.inferred(), INFERRED),
    ])
}

fn edge_flags(e: &EdgeFact) -> u8 {
    let f = e.flags;
    flags(&[(f.fault(), FAULT), (f.error(), ERROR), (f.throttle(), THROTTLE)])
}

/// The next facts of a run of fact columns, as version 4 recorded them.
struct FactColumnReader {
    from: std::vec::IntoIter<u32>,
    /// `None` for nodes, which have no `to`.
    to: Option<std::vec::IntoIter<u32>>,
    start_time: std::vec::IntoIter<i64>,
    flags: std::vec::IntoIter<u8>,
    response_time: std::vec::IntoIter<Option<u64>>,
    http_status: std::vec::IntoIter<Option<u16>>,
}

impl FactColumnReader {
    fn take(&mut self, count: u64) -> Option<Vec<Fact>> {
        (0..count)
            .map(|_| {
                Some(Fact {
                    from: self.from.next()?,
                    to: match &mut self.to {
                        Some(to) => to.next()?,
                        None => 0,
                    },
                    start_time: self.start_time.next()?,
                    flags: self.flags.next()?,
                    response_time: self.response_time.next()?,
                    http_status: self.http_status.next()?,
                })
            })
            .collect()
    }
}

/// A batch of fact columns, as read.
#[derive(Deserialize)]
pub(crate) struct FactColumnsIn {
    node_counts: Vec<u64>,
    node_service: Vec<u32>,
    node_start: Vec<i64>,
    node_flags: Vec<u8>,
    node_response_time: Vec<Option<u64>>,
    node_http_status: Vec<Option<u16>>,
    edge_counts: Vec<u64>,
    edge_from: Vec<u32>,
    edge_to: Vec<u32>,
    edge_start: Vec<i64>,
    edge_flags: Vec<u8>,
    edge_response_time: Vec<Option<u64>>,
    edge_http_status: Vec<Option<u16>>,
    root_causes: Vec<(Vec<RootCause>, Vec<RootCause>, Vec<RootCause>)>,
}

impl FactColumnsIn {
    /// Each trace's facts, given each one's start, in index order.
    pub(crate) fn into_facts(self, starts: impl ExactSizeIterator<Item = f64>) -> Result<Vec<TraceFacts>, String> {
        let traces = starts.len();
        let nodes = self.node_counts.iter().try_fold(0u64, |sum, &n| sum.checked_add(n));
        let edges = self.edge_counts.iter().try_fold(0u64, |sum, &n| sum.checked_add(n));
        let node_columns = [
            self.node_service.len(),
            self.node_start.len(),
            self.node_flags.len(),
            self.node_response_time.len(),
            self.node_http_status.len(),
        ];
        let edge_columns = [
            self.edge_from.len(),
            self.edge_to.len(),
            self.edge_start.len(),
            self.edge_flags.len(),
            self.edge_response_time.len(),
            self.edge_http_status.len(),
        ];
        let per_trace = [self.node_counts.len(), self.edge_counts.len(), self.root_causes.len()];
        if per_trace.iter().any(|&len| len != traces)
            || node_columns.iter().any(|&len| Some(len as u64) != nodes)
            || edge_columns.iter().any(|&len| Some(len as u64) != edges)
        {
            return Err(format!(
                "fact columns of {per_trace:?} traces, {node_columns:?} nodes and {edge_columns:?} edges for {traces} traces"
            ));
        }
        let mut nodes = FactColumnReader {
            from: self.node_service.into_iter(),
            to: None,
            start_time: self.node_start.into_iter(),
            flags: self.node_flags.into_iter(),
            response_time: self.node_response_time.into_iter(),
            http_status: self.node_http_status.into_iter(),
        };
        let mut edges = FactColumnReader {
            from: self.edge_from.into_iter(),
            to: Some(self.edge_to.into_iter()),
            start_time: self.edge_start.into_iter(),
            flags: self.edge_flags.into_iter(),
            response_time: self.edge_response_time.into_iter(),
            http_status: self.edge_http_status.into_iter(),
        };
        let counts = self.node_counts.into_iter().zip(self.edge_counts);
        let facts = starts.zip(counts).zip(self.root_causes).map(|((base, (node_count, edge_count)), causes)| {
            let (fault_root_causes, error_root_causes, response_time_root_causes) = causes;
            let read = FactsIn {
                nodes: nodes.take(node_count)?,
                edges: edges.take(edge_count)?,
                fault_root_causes,
                error_root_causes,
                response_time_root_causes,
            };
            Some(read.into_facts(base))
        });
        facts.collect::<Option<Vec<_>>>().ok_or_else(|| "a fact column ended early".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::encoded;
    use proptest::prelude::*;
    use roentgen_query::{MaybeSeconds, whole_microseconds};

    #[test]
    fn extreme_offsets_decode_without_overflow() {
        assert_eq!(at(1e300, i64::MAX), i64::MAX as f64 / 1e6);
        assert_eq!(at(0.0, i64::MIN), i64::MIN as f64 / 1e6);
    }

    fn summary(start: f64, offsets: &[f64], bits: u8, status: Option<u16>, epoch: u32) -> TraceSummary {
        let us = whole_microseconds;
        let last = offsets.len() - 1;
        let facts = TraceFacts {
            nodes: Box::new([NodeFact {
                service: 0,
                start_time: us(start + offsets[0]),
                response_time: Some(us(offsets[last])).into(),
                flags: FactFlags::new(bits & 4 != 0, bits & 8 != 0, bits & 16 != 0, status)
                    .with_root(bits & 1 != 0)
                    .with_inferred(bits & 2 != 0),
            }]),
            edges: (0..last)
                .map(|n| EdgeFact {
                    from: 0,
                    to: n as u32 + 1,
                    start_time: us(start + offsets[n]),
                    response_time: MaybeSeconds::NONE,
                    flags: FactFlags::new(bits & 32 != 0, bits & 64 != 0, bits & 128 != 0, status),
                })
                .collect(),
            ..TraceFacts::default()
        };
        TraceSummary {
            trace_id: TraceId::from_parts(epoch, u128::from(bits) + 7),
            start_time: start,
            end_time: us(start + offsets.iter().cloned().fold(0.0, f64::max)),
            response_time: Some(us(offsets[0])).into(),
            has_fault: bits & 1 != 0,
            has_error: bits & 2 != 0,
            has_throttle: bits & 4 != 0,
            is_partial: bits & 8 != 0,
            http: None,
            services: shared(vec![ServiceKey { name: "a".into(), kind: None, account_id: Some("1".into()) }]),
            entry_point: Some(0).into(),
            annotations: Box::default(),
            users: Box::default(),
            resource_arns: Box::new(["arn".into()]),
            instance_ids: Box::default(),
            availability_zones: Box::default(),
            revision: 3,
            segment_end_times: offsets.iter().map(|o| us(start + o)).collect(),
            document_count: 2,
            facts,
            links: Box::default(),
        }
    }

    fn round_trip(summaries: &[TraceSummary]) -> Result<Vec<TraceSummary>, String> {
        let refs: Vec<&TraceSummary> = summaries.iter().collect();
        let columns = encoded(|w| write_summary_section(w, &refs));
        let index = summaries.iter().map(|s| (s.trace_id, s.revision, s.document_count));
        let mut read = read_summary_section(postcard::from_bytes(&columns).unwrap(), index)?;
        let facts = encoded(|w| write_facts_section(w, &refs));
        let starts = read.iter().map(|s| s.start_time).collect::<Vec<_>>();
        let facts = read_facts_section(postcard::from_bytes(&facts).unwrap(), starts.into_iter())?;
        for (summary, facts) in read.iter_mut().zip(facts) {
            summary.facts = facts;
        }
        Ok(read)
    }

    proptest! {
        /// Summaries as `summarize` makes them (times in whole microseconds) come back exactly,
        /// whether their start is near their id's epoch or not.
        #[test]
        fn summaries_and_facts_round_trip(
            traces in proptest::collection::vec(
                (1.0e9f64..2.0e9, proptest::collection::vec(0.0f64..3600.0, 1..6), any::<u8>(),
                 proptest::option::of(100u16..600), -5i64..5),
                0..8,
            ),
        ) {
            let summaries: Vec<TraceSummary> = traces
                .iter()
                .map(|(start, offsets, bits, status, skew)| {
                    let start = whole_microseconds(*start);
                    let epoch = (start as i64 + skew * 100_000_000).clamp(0, i64::from(u32::MAX)) as u32;
                    summary(start, offsets, *bits, *status, epoch)
                })
                .collect();
            prop_assert_eq!(round_trip(&summaries), Ok(summaries));
        }
    }

    fn text() -> impl Strategy<Value = Text> {
        prop_oneof!["\\PC{0,12}", "[a-z]{100,200}"].prop_map(Text::from)
    }

    fn service_set() -> impl Strategy<Value = ServiceSet> {
        proptest::collection::btree_set(0u32..100, 0..4).prop_map(|set| set.into_iter().collect())
    }

    fn annotation() -> impl Strategy<Value = AnnotationSummary> {
        let value = prop_oneof![
            text().prop_map(AnnotationValue::String),
            any::<f64>().prop_map(AnnotationValue::Number),
            any::<bool>().prop_map(AnnotationValue::Bool),
        ];
        (text(), proptest::collection::vec((value, service_set()), 0..3))
            .prop_map(|(key, values)| AnnotationSummary { key, values: values.into() })
    }

    /// The bytes of `items`, one sequence, as `write` writes each.
    fn written<T>(items: &[T], write: impl Fn(&mut SectionWriter<'_>, &T)) -> Vec<u8> {
        encoded(|w| w.seq(items.iter(), |w, item| write(w, item)))
    }

    proptest! {
        /// The nested values written without serde are written as serde writes them.
        #[test]
        fn nested_values_are_encoded_as_postcard_encodes_them(
            http in proptest::option::of((
                proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text()),
                proptest::option::of(text()), proptest::option::of(any::<u16>()), any::<bool>(),
            )),
            services in proptest::collection::vec(
                (text(), proptest::option::of(text()), proptest::option::of(text())), 0..4),
            annotations in proptest::collection::vec(annotation(), 0..4),
            users in proptest::collection::vec((text(), service_set()), 0..3),
            strings in proptest::collection::vec(text(), 0..4),
        ) {
            let http = http.map(|(method, url, user_agent, client_ip, status, traced)| {
                Http { method, url, user_agent, client_ip, status, traced }
            });
            let services: Box<[Arc<ServiceKey>]> = services
                .into_iter()
                .map(|(name, kind, account_id)| Arc::new(ServiceKey { name, kind, account_id }))
                .collect();
            let annotations: Box<[AnnotationSummary]> = annotations.into();
            let users: Box<[UserSummary]> =
                users.into_iter().map(|(name, services)| UserSummary { name, services }).collect();
            let strings: Box<[Text]> = strings.into();
            let http = vec![http];
            prop_assert_eq!(written(&http, |w, h| write_http(w, h.as_ref())), postcard::to_stdvec(&http).unwrap());
            let services = vec![services];
            prop_assert_eq!(written(&services, |w, s| write_services(w, s)), postcard::to_stdvec(&services).unwrap());
            let annotations = vec![annotations];
            prop_assert_eq!(
                written(&annotations, |w, a| write_annotations(w, a)),
                postcard::to_stdvec(&annotations).unwrap()
            );
            let users = vec![users];
            prop_assert_eq!(written(&users, |w, u| write_users(w, u)), postcard::to_stdvec(&users).unwrap());
            let strings = vec![strings];
            prop_assert_eq!(written(&strings, |w, s| write_strings(w, s)), postcard::to_stdvec(&strings).unwrap());
        }
    }

    #[test]
    fn sections_of_several_batches_round_trip_and_must_cover_every_trace() {
        let summaries: Vec<TraceSummary> = (0..2 * COLUMN_BATCH + 5)
            .map(|n| summary(1.7e9 + n as f64, &[0.5, 1.5, (n % 7) as f64], n as u8, Some(200), 1_700_000_000))
            .collect();
        assert_eq!(round_trip(&summaries), Ok(summaries.clone()));
        let refs: Vec<&TraceSummary> = summaries.iter().collect();
        let columns = encoded(|w| write_summary_section(w, &refs[..COLUMN_BATCH]));
        let index = summaries.iter().map(|s| (s.trace_id, s.revision, s.document_count));
        assert!(read_summary_section(postcard::from_bytes(&columns).unwrap(), index).is_err(), "batches missing");
        let facts = encoded(|w| write_facts_section(w, &refs[..COLUMN_BATCH]));
        let starts = summaries.iter().map(|s| s.start_time);
        assert!(read_facts_section(postcard::from_bytes(&facts).unwrap(), starts).is_err(), "batches missing");
    }

    #[test]
    fn starts_that_microseconds_after_the_epoch_would_change_are_kept_exactly() {
        for start in [1.0e9 + 0.123_456_7, 1e300, -3.5, 0.0] {
            let s = summary(start, &[0.5], 0, None, 1_700_000_000);
            assert_eq!(round_trip(std::slice::from_ref(&s)).unwrap()[0].start_time.to_bits(), start.to_bits());
        }
    }

    #[test]
    fn columns_that_disagree_with_the_index_are_refused() {
        let s = summary(1.7e9, &[0.5, 1.0], 0, Some(200), 1_700_000_000);
        let columns = encoded(|w| write_summary_section(w, &[&s]));
        let read = postcard::from_bytes::<Vec<SummaryColumnsIn>>(&columns).unwrap().remove(0);
        let index = [(s.trace_id, 1, 1), (s.trace_id, 1, 1)];
        assert!(read.into_summaries(index.into_iter()).is_err(), "two index entries for one summary");
        let facts = encoded(|w| write_facts_section(w, &[&s, &s]));
        let read = postcard::from_bytes::<Vec<FactColumnsIn>>(&facts).unwrap().remove(0);
        assert!(read.into_facts([1.7e9].into_iter()).is_err(), "two traces' facts for one trace");
        let mut damaged = postcard::from_bytes::<Vec<FactColumnsIn>>(&facts).unwrap().remove(0);
        damaged.node_counts[0] += 1;
        assert!(damaged.into_facts([1.7e9, 1.7e9].into_iter()).is_err(), "more nodes counted than there are");
    }
}
