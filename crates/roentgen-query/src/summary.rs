//! Trace summaries: what `GetTraceSummaries` returns and filters on, derived from a trace's
//! documents. The rules follow the field definitions of X-Ray's API model; where the model is
//! silent the choice is written beside the code and in `docs/api.md`.

use std::collections::HashMap;
use std::sync::Arc;

use roentgen_model::{
    AnnotationRef, AnnotationValue, DocumentKind, Entity, Http, Link, ParsedDocument, SegmentId, Text, TraceId,
};
use serde::{Deserialize, Serialize};

use crate::id_map::{IdMap, IdSet};
use crate::inferred::inferred_service;
use crate::rootcause::{RootCause, TraceTree};
use crate::shared::shared;

/// Hash maps keyed by ids from documents: foldhash is several times faster than the default
/// SipHash on these small keys and, seeded per process, still unpredictable to a sender.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// X-Ray indexes at most 50 annotation keys per trace; later keys are kept in the documents only.
pub const MAX_INDEXED_ANNOTATIONS: usize = 50;
/// X-Ray keeps at most 100 links per trace.
pub const MAX_TRACE_LINKS: usize = 100;

/// A service-graph node identity: (name, type, account).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub name: Text,
    pub kind: Option<Text>,
    pub account_id: Option<Text>,
}

impl ServiceKey {
    pub(crate) fn of_segment(entity: Entity<'_>) -> Self {
        ServiceKey {
            name: Text::from(entity.name()),
            kind: entity.origin().map(Text::from),
            account_id: entity.aws().and_then(|a| a.account_id()).map(Text::from),
        }
    }
}

/// One annotation key with each distinct value and the services (indexes into
/// [`TraceSummary::services`]) that recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationSummary {
    pub key: Text,
    pub values: Box<[(AnnotationValue, ServiceSet)]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSummary {
    pub name: Text,
    pub services: ServiceSet,
}

/// Services (indexes into [`TraceSummary::services`]) that recorded an annotation value or a
/// user, in ascending order. While every index is below 64, as in nearly every trace, they are
/// bits of one word: a cached summary's three or four such sets then need no allocation each.
/// Serialized as a sequence of indexes, as the vector it replaces was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSet {
    Bits(u64),
    /// Sorted, and holding an index of 64 or more.
    List(Box<[u32]>),
}

impl Default for ServiceSet {
    fn default() -> Self {
        Self::Bits(0)
    }
}

impl ServiceSet {
    pub fn insert(&mut self, service: u32) {
        match self {
            Self::Bits(bits) if service < 64 => *bits |= 1 << service,
            // Past every index below 64: the list stays sorted with it last.
            Self::Bits(_) => *self = Self::List(self.iter().chain([service]).collect()),
            Self::List(list) => {
                if let Err(at) = list.binary_search(&service) {
                    let mut grown = std::mem::take(list).into_vec();
                    grown.insert(at, service);
                    *list = grown.into();
                }
            }
        }
    }

    pub fn contains(&self, service: u32) -> bool {
        match self {
            Self::Bits(bits) => service < 64 && bits >> service & 1 == 1,
            Self::List(list) => list.binary_search(&service).is_ok(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Bits(bits) => bits.count_ones() as usize,
            Self::List(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (mut bits, list) = match self {
            Self::Bits(bits) => (*bits, &[][..]),
            Self::List(list) => (0, &list[..]),
        };
        let from_bits = std::iter::from_fn(move || {
            let next = (bits != 0).then(|| bits.trailing_zeros())?;
            bits &= bits - 1;
            Some(next)
        });
        from_bits.chain(list.iter().copied())
    }

    /// The heap bytes it holds apart from itself.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Bits(_) => 0,
            Self::List(list) => 4 * list.len(),
        }
    }
}

impl FromIterator<u32> for ServiceSet {
    /// Sorted once, not inserted one by one: a list read from a block may be long.
    fn from_iter<I: IntoIterator<Item = u32>>(services: I) -> Self {
        let mut list: Vec<u32> = services.into_iter().collect();
        if list.iter().all(|&s| s < 64) {
            return Self::Bits(list.iter().fold(0, |bits, &s| bits | 1 << s));
        }
        list.sort_unstable();
        list.dedup();
        Self::List(list.into())
    }
}

impl Serialize for ServiceSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // With its length up front: postcard writes it before the elements.
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for service in self.iter() {
            seq.serialize_element(&service)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ServiceSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<u32>::deserialize(deserializer)?.into_iter().collect())
    }
}

/// The indexed view of one trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: TraceId,
    /// Earliest start of any entity.
    pub start_time: f64,
    /// Latest end of any entity (its start while in progress).
    pub end_time: f64,
    /// The root segment's end minus start; `None` while the root is in progress or unknown.
    pub response_time: MaybeSeconds,
    pub has_fault: bool,
    pub has_error: bool,
    pub has_throttle: bool,
    pub is_partial: bool,
    pub http: Option<Http>,
    /// Each key shared with the other summaries that name it ([`crate::shared`]).
    #[serde(deserialize_with = "crate::shared::deserialize")]
    pub services: Box<[Arc<ServiceKey>]>,
    /// The root segment's service, an index into `services`.
    pub entry_point: MaybeIndex,
    pub annotations: Box<[AnnotationSummary]>,
    pub users: Box<[UserSummary]>,
    pub resource_arns: Box<[Text]>,
    pub instance_ids: Box<[Text]>,
    pub availability_zones: Box<[Text]>,
    pub revision: u32,
    /// End times of the top-level segments, for `TimeRangeType: Service`.
    pub segment_end_times: Box<[f64]>,
    pub document_count: u32,
    /// Per-segment and per-call facts for `service()` and `edge()` filters. Blocks store them in
    /// a section of their own (format version 2), so the summary encoding stays as version 1.
    #[serde(skip)]
    pub facts: TraceFacts,
    /// Asynchronous links from this trace's entities to entities of other traces. Blocks store
    /// them in a section of their own (format version 3).
    #[serde(skip)]
    pub links: Box<[LinkFact]>,
}

/// An entity of this trace that follows from an entity of another trace (a consumer and the
/// call that sent it its message): what becomes a `link` edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkFact {
    /// Index into [`TraceSummary::services`]: the consumer's service.
    pub to: u32,
    /// When the consumer started: when it received the event.
    pub start_time: f64,
    pub error: bool,
    pub fault: bool,
    pub throttle: bool,
    /// The entity linked to, in another trace.
    pub target: Link,
    /// The node the link comes from and when the event was sent, once the linked trace has been
    /// read (see [`link_source`]); `None` until then.
    pub source: Option<LinkSource>,
}

/// Where a link comes from, found in the linked trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkSource {
    pub node: ServiceKey,
    /// When the linked entity started: when the event was sent.
    pub sent_time: f64,
}

/// The node a link to `target` comes from, found in the linked trace's documents: for a call to
/// an AWS service or a remote endpoint (an SQS `SendMessage`), the node it called, or the
/// segment that answered it; for any other entity, its own service.
pub fn link_source(docs: &[&ParsedDocument], target: SegmentId) -> Option<LinkSource> {
    let mut found = None;
    for doc in docs {
        doc.entity().walk(|e| {
            if e.id() == target && found.is_none() {
                found = Some((*doc, e));
            }
        });
    }
    let (doc, entity) = found?;
    let answered = docs.iter().find(|d| d.kind == DocumentKind::Segment && d.parent_id == Some(target));
    let is_segment = doc.kind == DocumentKind::Segment && entity == doc.entity();
    let called = answered
        .map(|segment| ServiceKey::of_segment(segment.entity()))
        .or_else(|| if is_segment { None } else { inferred_service(entity) });
    let node = match called {
        Some(node) => node,
        None => ServiceKey::of_segment(owning_segment(docs, doc)?.entity()),
    };
    Some(LinkSource { node, sent_time: entity.start_time() })
}

/// The segment document a document belongs to, following independent subsegments' parents.
fn owning_segment<'a>(docs: &[&'a ParsedDocument], doc: &'a ParsedDocument) -> Option<&'a ParsedDocument> {
    let mut at = doc;
    for _ in 0..docs.len() {
        if at.kind == DocumentKind::Segment {
            return Some(at);
        }
        let parent = at.parent_id?;
        at = docs.iter().find(|d| {
            let mut holds = false;
            d.entity().walk(|e| holds |= e.id() == parent);
            holds
        })?;
    }
    None
}

/// A segment of one service, or the inferred segment of an uninstrumented call: what
/// `service(...) { ... }` filters test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "NodeRow", into = "NodeRow")]
pub struct NodeFact {
    /// Index into [`TraceSummary::services`].
    pub service: u32,
    pub start_time: f64,
    pub response_time: MaybeSeconds,
    pub flags: FactFlags,
}

/// A call from one service to another, as the caller's subsegment recorded it: what
/// `edge(...) { ... }` filters test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "EdgeRow", into = "EdgeRow")]
pub struct EdgeFact {
    pub from: u32,
    pub to: u32,
    pub start_time: f64,
    pub response_time: MaybeSeconds,
    pub flags: FactFlags,
}

/// A fact's error, fault and throttle flags, whether it is a root or an inferred node, and its
/// HTTP status, in four bytes where five `bool`s and an `Option<u16>` took nine: a node fact is
/// 24 bytes with them, not 32, and a cached summary holds about eight. (An edge, with two
/// service indexes, stays at 32.)
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct FactFlags {
    status: u16,
    bits: u8,
}

impl FactFlags {
    const ERROR: u8 = 1;
    const FAULT: u8 = 2;
    const THROTTLE: u8 = 4;
    const ROOT: u8 = 8;
    const INFERRED: u8 = 16;
    const HAS_STATUS: u8 = 32;

    pub fn new(error: bool, fault: bool, throttle: bool, http_status: Option<u16>) -> Self {
        let bit = |on: bool, bit: u8| if on { bit } else { 0 };
        Self {
            status: http_status.unwrap_or(0),
            bits: bit(error, Self::ERROR)
                | bit(fault, Self::FAULT)
                | bit(throttle, Self::THROTTLE)
                | bit(http_status.is_some(), Self::HAS_STATUS),
        }
    }

    /// An entity's flags and status.
    pub fn of(e: Entity<'_>) -> Self {
        Self::new(e.error(), e.fault(), e.throttle(), e.http_status())
    }

    pub fn with_root(self, root: bool) -> Self {
        self.set(Self::ROOT, root)
    }

    pub fn with_inferred(self, inferred: bool) -> Self {
        self.set(Self::INFERRED, inferred)
    }

    fn set(mut self, bit: u8, on: bool) -> Self {
        if on {
            self.bits |= bit;
        } else {
            self.bits &= !bit;
        }
        self
    }

    pub fn error(self) -> bool {
        self.bits & Self::ERROR != 0
    }

    pub fn fault(self) -> bool {
        self.bits & Self::FAULT != 0
    }

    pub fn throttle(self) -> bool {
        self.bits & Self::THROTTLE != 0
    }

    pub fn root(self) -> bool {
        self.bits & Self::ROOT != 0
    }

    pub fn inferred(self) -> bool {
        self.bits & Self::INFERRED != 0
    }

    pub fn http_status(self) -> Option<u16> {
        (self.bits & Self::HAS_STATUS != 0).then_some(self.status)
    }
}

impl std::fmt::Debug for FactFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactFlags")
            .field("error", &self.error())
            .field("fault", &self.fault())
            .field("throttle", &self.throttle())
            .field("root", &self.root())
            .field("inferred", &self.inferred())
            .field("http_status", &self.http_status())
            .finish()
    }
}

/// How a node fact was serialized before its flags were packed (block formats before 4 hold
/// facts this way), and still is.
#[derive(Clone, Serialize, Deserialize)]
struct NodeRow {
    service: u32,
    start_time: f64,
    root: bool,
    inferred: bool,
    error: bool,
    fault: bool,
    throttle: bool,
    response_time: MaybeSeconds,
    http_status: Option<u16>,
}

impl From<NodeRow> for NodeFact {
    fn from(r: NodeRow) -> Self {
        let flags =
            FactFlags::new(r.error, r.fault, r.throttle, r.http_status).with_root(r.root).with_inferred(r.inferred);
        Self { service: r.service, start_time: r.start_time, response_time: r.response_time, flags }
    }
}

impl From<NodeFact> for NodeRow {
    fn from(n: NodeFact) -> Self {
        let f = n.flags;
        Self {
            service: n.service,
            start_time: n.start_time,
            root: f.root(),
            inferred: f.inferred(),
            error: f.error(),
            fault: f.fault(),
            throttle: f.throttle(),
            response_time: n.response_time,
            http_status: f.http_status(),
        }
    }
}

/// [`NodeRow`]'s counterpart for edges.
#[derive(Clone, Serialize, Deserialize)]
struct EdgeRow {
    from: u32,
    to: u32,
    start_time: f64,
    error: bool,
    fault: bool,
    throttle: bool,
    response_time: MaybeSeconds,
    http_status: Option<u16>,
}

impl From<EdgeRow> for EdgeFact {
    fn from(r: EdgeRow) -> Self {
        let flags = FactFlags::new(r.error, r.fault, r.throttle, r.http_status);
        Self { from: r.from, to: r.to, start_time: r.start_time, response_time: r.response_time, flags }
    }
}

impl From<EdgeFact> for EdgeRow {
    fn from(e: EdgeFact) -> Self {
        let f = e.flags;
        Self {
            from: e.from,
            to: e.to,
            start_time: e.start_time,
            error: f.error(),
            fault: f.fault(),
            throttle: f.throttle(),
            response_time: e.response_time,
            http_status: f.http_status(),
        }
    }
}

/// A duration in seconds that may be missing (an entity in progress has none) in the eight
/// bytes of an `f64`, NaN standing for none: documents' times are finite, so no duration is
/// NaN. An `Option<f64>` takes sixteen, and facts are a third of a cached summary's memory:
/// this took `NodeFact` and `EdgeFact` from 40 bytes to 32, and a summary's response time is
/// one too ([`MaybeIndex`] says why).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "Option<f64>", into = "Option<f64>")]
pub struct MaybeSeconds(f64);

impl MaybeSeconds {
    pub const NONE: Self = Self(f64::NAN);

    pub fn get(self) -> Option<f64> {
        (!self.0.is_nan()).then_some(self.0)
    }

    pub fn map(self, f: impl FnOnce(f64) -> f64) -> Self {
        self.get().map(f).into()
    }
}

impl From<Option<f64>> for MaybeSeconds {
    fn from(seconds: Option<f64>) -> Self {
        seconds.map_or(Self::NONE, Self)
    }
}

impl From<MaybeSeconds> for Option<f64> {
    fn from(seconds: MaybeSeconds) -> Self {
        seconds.get()
    }
}

impl PartialEq for MaybeSeconds {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// An optional index in the four bytes of a `u32` (`u32::MAX` standing for none; no trace has
/// that many services), where an `Option<u32>` takes eight: with it and [`MaybeSeconds`],
/// `TraceSummary` is 368 bytes, which with its `Arc`'s counts fills one of mimalloc's size
/// classes (384 bytes; the next is 448). Serialized as an `Option<u32>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Option<u32>", into = "Option<u32>")]
pub struct MaybeIndex(u32);

impl MaybeIndex {
    pub const NONE: Self = Self(u32::MAX);

    pub fn get(self) -> Option<u32> {
        (self != Self::NONE).then_some(self.0)
    }
}

impl From<Option<u32>> for MaybeIndex {
    fn from(index: Option<u32>) -> Self {
        index.map_or(Self::NONE, Self)
    }
}

impl From<MaybeIndex> for Option<u32> {
    fn from(index: MaybeIndex) -> Self {
        index.get()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceFacts {
    pub nodes: Box<[NodeFact]>,
    pub edges: Box<[EdgeFact]>,
    pub fault_root_causes: Box<[RootCause]>,
    pub error_root_causes: Box<[RootCause]>,
    pub response_time_root_causes: Box<[RootCause]>,
}

fn duration_of(e: Entity<'_>) -> Option<f64> {
    e.end_time().map(|end| span(e.start_time(), end))
}

/// The time from `start` to `end`, both taken to the microsecond first, as summaries keep them:
/// so a response time never exceeds the duration of the same interval by a rounding, and
/// `BatchGetTraces` and `GetTraceSummaries` report the same duration.
pub fn span(start: f64, end: f64) -> f64 {
    whole_microseconds((whole_microseconds(end) - whole_microseconds(start)).max(0.0))
}

impl TraceSummary {
    /// Blocks keep a summary's times to the microsecond (the precision X-Ray's SDKs send), so
    /// summaries are rounded so from the start: one read back from a block equals, to the bit,
    /// the one made from live documents, and so do the graphs and statistics computed from them.
    pub fn round_to_microseconds(&mut self) {
        self.start_time = whole_microseconds(self.start_time);
        self.end_time = whole_microseconds(self.end_time);
        self.response_time = self.response_time.map(whole_microseconds);
        for time in &mut self.segment_end_times {
            *time = whole_microseconds(*time);
        }
        for node in &mut self.facts.nodes {
            node.start_time = whole_microseconds(node.start_time);
            node.response_time = node.response_time.map(whole_microseconds);
        }
        for edge in &mut self.facts.edges {
            edge.start_time = whole_microseconds(edge.start_time);
            edge.response_time = edge.response_time.map(whole_microseconds);
        }
    }

    /// Roughly the memory this summary holds, its own size included, for caches bounded by
    /// bytes.
    pub fn approximate_bytes(&self) -> usize {
        use std::mem::size_of;
        let text = |s: &Option<Text>| s.as_ref().map_or(0, heap);
        let http = self.http.as_ref().map_or(0, |h| {
            size_of::<Http>() + text(&h.method) + text(&h.url) + text(&h.user_agent) + text(&h.client_ip)
        });
        let value = |v: &AnnotationValue| match v {
            AnnotationValue::String(s) => heap(s),
            _ => 0,
        };
        let annotations: usize = self
            .annotations
            .iter()
            .map(|a| {
                let values: usize = a
                    .values
                    .iter()
                    .map(|(v, s)| size_of::<(AnnotationValue, ServiceSet)>() + value(v) + s.heap_bytes())
                    .sum();
                size_of::<AnnotationSummary>() + heap(&a.key) + values
            })
            .sum();
        let users: usize =
            self.users.iter().map(|u| size_of::<UserSummary>() + heap(&u.name) + u.services.heap_bytes()).sum();
        let strings = |list: &[Text]| list.iter().map(|s| size_of::<Text>() + heap(s)).sum::<usize>();
        let causes = |causes: &[RootCause]| -> usize {
            causes
                .iter()
                .flat_map(|c| &c.services)
                .flat_map(|s| &s.entity_path)
                .map(|e| 64 + heap(&e.name) + e.exceptions.iter().map(|(t, m)| 48 + text(t) + text(m)).sum::<usize>())
                .sum()
        };
        let facts = &self.facts;
        size_of::<Self>()
            // The keys themselves are shared (`crate::shared`).
            + self.services.len() * size_of::<Arc<ServiceKey>>()
            + http
            + annotations
            + users
            + strings(&self.resource_arns)
            + strings(&self.instance_ids)
            + strings(&self.availability_zones)
            + 8 * self.segment_end_times.len()
            + facts.nodes.len() * size_of::<NodeFact>()
            + facts.edges.len() * size_of::<EdgeFact>()
            + causes(&facts.fault_root_causes)
            + causes(&facts.error_root_causes)
            + causes(&facts.response_time_root_causes)
            + self.links.len() * size_of::<LinkFact>()
    }

    pub fn duration(&self) -> f64 {
        span(self.start_time, self.end_time)
    }

    /// The time that places this trace in `[start, end)` for the given range type, if it is in it.
    pub fn matched_time(&self, range: TimeRangeType, start: f64, end: f64) -> Option<f64> {
        let inside = |t: f64| t >= start && t < end;
        match range {
            TimeRangeType::TraceId => {
                let t = f64::from(self.trace_id.epoch());
                inside(t).then_some(self.start_time.max(t))
            }
            TimeRangeType::Event => inside(self.end_time).then_some(self.end_time),
            TimeRangeType::Service => self.segment_end_times.iter().copied().filter(|&t| inside(t)).reduce(f64::max),
        }
    }

    /// The key a page of results is ordered by, newest first.
    pub fn sort_time(&self, range: TimeRangeType) -> f64 {
        match range {
            TimeRangeType::TraceId => f64::from(self.trace_id.epoch()),
            TimeRangeType::Event => self.end_time,
            TimeRangeType::Service => self.segment_end_times.iter().copied().fold(self.start_time, f64::max),
        }
    }
}

/// Which timestamp of a trace `GetTraceSummaries` compares with its time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeRangeType {
    /// The epoch carried in the trace id: when the trace started.
    #[default]
    TraceId,
    /// When the trace was last updated: its latest end time.
    Event,
    /// When one of its segments ended.
    Service,
}

impl TimeRangeType {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "TraceId" => Some(Self::TraceId),
            "Event" => Some(Self::Event),
            "Service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// Derives the summary of one trace from all its stored documents.
///
/// `docs` may come in any order; the result does not depend on it.
pub fn summarize(trace_id: TraceId, docs: &[&ParsedDocument], revision: u32) -> TraceSummary {
    let mut docs: Vec<&ParsedDocument> = docs.to_vec();
    docs.sort_by(|a, b| a.entity().start_time().total_cmp(&b.entity().start_time()).then(a.id().cmp(&b.id())));

    let mut services = Services::default();
    // Sized once for all the trace's entities.
    let sized = docs.iter().map(|d| d.entity_count()).sum::<usize>();
    // Each entity with the document it is in: a segment's subsegments belong to its service,
    // an independent subsegment's to its parent's.
    let mut entities: IdMap<(Entity<'_>, usize)> = IdMap::with_capacity(sized);
    let mut doc_owner: Vec<Option<u32>> = vec![None; docs.len()];
    for (i, doc) in docs.iter().enumerate() {
        doc.entity().walk(|e| {
            entities.insert(e.id(), (e, i));
        });
        if doc.kind == DocumentKind::Segment {
            doc_owner[i] = Some(services.index(ServiceKey::of_segment(doc.entity())));
        }
    }
    // Independent subsegments may hang off other independent subsegments: resolve until stable.
    loop {
        let mut progressed = false;
        for (i, doc) in docs.iter().enumerate() {
            if doc_owner[i].is_some() {
                continue;
            }
            if let Some(service) = doc.parent_id.and_then(|p| owner_of(&entities, &doc_owner, p)) {
                doc_owner[i] = Some(service);
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    let owner = Owners { entities: &entities, doc_owner: &doc_owner };

    let root = docs
        .iter()
        .filter(|d| d.kind == DocumentKind::Segment)
        .find(|d| d.parent_id.is_none_or(|p| owner.get(p).is_none()));

    let called_by_segment: IdSet =
        docs.iter().filter(|d| d.kind == DocumentKind::Segment).filter_map(|d| d.parent_id).collect();

    let mut start_time = f64::INFINITY;
    let mut end_time = f64::NEG_INFINITY;
    let mut has_throttle = false;
    let mut is_partial = false;
    let mut annotations: Vec<AnnotationSummary> = Vec::new();
    let mut users: Vec<UserSummary> = Vec::new();
    let mut resource_arns = Vec::new();
    let mut instance_ids = Vec::new();
    let mut availability_zones = Vec::new();
    let mut segment_end_times = Vec::with_capacity(docs.len().min(64));
    // Every entity is at most one node and one edge; `exact` gives back what is left over.
    let mut nodes = Vec::with_capacity(sized);
    let mut edges = Vec::with_capacity(sized);
    let mut all_entities: Vec<Entity<'_>> = Vec::with_capacity(sized);
    let mut attached: IdMap<Vec<Entity<'_>>> = IdMap::default();
    let mut inferred_nodes: IdMap<u32> = IdMap::default();
    let mut calls_seen = IdSet::default();
    let mut links = Vec::new();

    for (i, doc) in docs.iter().enumerate() {
        let service = doc_owner[i];
        if doc.kind == DocumentKind::Segment && segment_end_times.len() < 64 {
            segment_end_times.push(doc.entity().last_time());
        }
        if let (DocumentKind::Segment, Some(to)) = (doc.kind, service) {
            let e = doc.entity();
            nodes.push(NodeFact {
                service: to,
                start_time: e.start_time(),
                response_time: duration_of(e).into(),
                flags: FactFlags::of(e).with_root(root.is_some_and(|r| std::ptr::eq(*r, *doc))),
            });
            // One observation per call: several segments may answer the same subsegment.
            let caller = doc.parent_id.filter(|p| calls_seen.insert(*p, ()));
            if let Some((from, call)) = caller.and_then(|p| Some((owner.get(p)?, entities.get(&p)?.0))) {
                edges.push(edge_fact(from, to, call));
            }
        }
        if let Some(parent) = doc.parent_id {
            attached.get_or_default(parent).push(doc.entity());
        }
        let top = doc.entity();
        top.walk(|e| {
            all_entities.push(e);
            start_time = start_time.min(e.start_time());
            end_time = end_time.max(e.last_time());
            has_throttle |= e.throttle();
            is_partial |= e.in_progress();
            // An independent subsegment's top entity is a call like any other.
            let is_segment = doc.kind == DocumentKind::Segment && e == top;
            if !is_segment
                && !called_by_segment.contains_key(&e.id())
                && let Some(key) = inferred_service(e)
            {
                let to = services.index(key);
                inferred_nodes.insert(e.id(), to);
                nodes.push(NodeFact {
                    service: to,
                    start_time: e.start_time(),
                    response_time: duration_of(e).into(),
                    flags: FactFlags::of(e).with_inferred(true),
                });
                if let Some(from) = service {
                    edges.push(edge_fact(from, to, e));
                }
            }
            if let Some(to) = service {
                for &target in e.links().iter().take(MAX_TRACE_LINKS.saturating_sub(links.len())) {
                    links.push(LinkFact {
                        to,
                        start_time: e.start_time(),
                        error: e.error(),
                        fault: e.fault(),
                        throttle: e.throttle(),
                        target,
                        source: None,
                    });
                }
            }
            for (key, value) in e.annotations() {
                add_annotation(&mut annotations, key, value, service);
            }
            if let Some(user) = e.user() {
                add_user(&mut users, user, service);
            }
            if let Some(arn) = e.resource_arn() {
                push_unique(&mut resource_arns, arn);
            }
            if let Some(aws) = e.aws() {
                if let Some(id) = aws.instance_id() {
                    push_unique(&mut instance_ids, id);
                }
                if let Some(az) = aws.availability_zone() {
                    push_unique(&mut availability_zones, az);
                }
            }
        });
    }
    if !start_time.is_finite() {
        start_time = f64::from(trace_id.epoch());
        end_time = start_time;
    }

    let root_entity = root.map(|d| d.entity());
    let tree = TraceTree { root: root_entity, all: all_entities, attached, owner, inferred: inferred_nodes };
    let facts = TraceFacts {
        nodes: exact(nodes),
        edges: exact(edges),
        fault_root_causes: tree.flagged(|e| e.fault()).into_iter().collect(),
        error_root_causes: tree.flagged(|e| e.error()).into_iter().collect(),
        response_time_root_causes: tree.slowest().into_iter().collect(),
    };
    let mut summary = TraceSummary {
        trace_id,
        start_time,
        end_time,
        response_time: root_entity.and_then(duration_of).into(),
        has_fault: root_entity.is_some_and(|r| r.fault()),
        has_error: root_entity.is_some_and(|r| r.error()),
        has_throttle,
        is_partial,
        http: root_entity.and_then(|r| r.http()).map(|h| h.to_http()),
        entry_point: root_entity.map(|r| services.index(ServiceKey::of_segment(r))).into(),
        services: shared(services.keys),
        annotations: exact(annotations),
        users: exact(users),
        resource_arns: exact(resource_arns),
        instance_ids: exact(instance_ids),
        availability_zones: exact(availability_zones),
        revision,
        segment_end_times: exact(segment_end_times),
        document_count: docs.len() as u32,
        facts,
        links: exact(links),
    };
    summary.round_to_microseconds();
    summary
}

fn owner_of(entities: &IdMap<(Entity<'_>, usize)>, doc_owner: &[Option<u32>], id: SegmentId) -> Option<u32> {
    entities.get(&id).and_then(|&(_, doc)| doc_owner[doc])
}

/// The service each entity of a trace belongs to: its document's, where that is known.
#[derive(Clone, Copy)]
pub(crate) struct Owners<'a, 'e> {
    entities: &'a IdMap<(Entity<'e>, usize)>,
    doc_owner: &'a [Option<u32>],
}

impl Owners<'_, '_> {
    pub(crate) fn get(&self, id: SegmentId) -> Option<u32> {
        owner_of(self.entities, self.doc_owner, id)
    }
}

/// Moves a vector's elements into an allocation of exactly their number when it has a cache
/// line or more to spare (less is not worth an allocation, and is often lost to the allocator's
/// size classes anyway). Shrinking in place would leave the allocator's block as it was.
fn fit<T>(v: &mut Vec<T>) {
    if (v.capacity() - v.len()) * std::mem::size_of::<T>() >= 64 {
        let mut exact = Vec::with_capacity(v.len());
        exact.append(v);
        *v = exact;
    }
}

/// A vector's elements in a boxed slice, whose pointer and length are 8 bytes fewer than a
/// vector's: a summary has 13 lists, mostly short or empty, and its root causes three more each.
/// Summaries are built by pushes, which left 44% of their heap unused (1,152 of 2,615 bytes a
/// trace on the load generator's traces) before their lists were made exact.
pub(crate) fn exact<T>(mut v: Vec<T>) -> Box<[T]> {
    fit(&mut v);
    v.into_boxed_slice()
}

/// A time or a duration in seconds, rounded to whole microseconds.
pub fn whole_microseconds(seconds: f64) -> f64 {
    crate::round(seconds * 1e6) / 1e6
}

fn edge_fact(from: u32, to: u32, call: Entity<'_>) -> EdgeFact {
    EdgeFact {
        from,
        to,
        start_time: call.start_time(),
        response_time: duration_of(call).into(),
        flags: FactFlags::of(call),
    }
}

/// The bytes a text holds apart from itself: none when it is short enough to be inline.
fn heap(text: &Text) -> usize {
    if text.is_heap_allocated() { text.len() } else { 0 }
}

#[derive(Default)]
struct Services {
    keys: Vec<ServiceKey>,
}

impl Services {
    fn index(&mut self, key: ServiceKey) -> u32 {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => i as u32,
            None => {
                self.keys.push(key);
                (self.keys.len() - 1) as u32
            }
        }
    }
}

fn add_annotation(out: &mut Vec<AnnotationSummary>, key: &str, value: AnnotationRef<'_>, service: Option<u32>) {
    let entry = match out.iter_mut().position(|a| a.key == key) {
        Some(i) => &mut out[i],
        None if out.len() < MAX_INDEXED_ANNOTATIONS => {
            out.push(AnnotationSummary { key: key.into(), values: Box::default() });
            out.last_mut().expect("just pushed")
        }
        None => return,
    };
    let slot = match entry.values.iter().position(|(v, _)| *v == value) {
        Some(i) => i,
        None => {
            // Values are boxed slices grown one at a time: most keys have one value, and a
            // slice kept exact from the start needs no fitting afterwards.
            let mut values = std::mem::take(&mut entry.values).into_vec();
            values.reserve_exact(1);
            values.push((value.to_value(), ServiceSet::default()));
            entry.values = values.into_boxed_slice();
            entry.values.len() - 1
        }
    };
    if let Some(s) = service {
        entry.values[slot].1.insert(s);
    }
}

fn add_user(out: &mut Vec<UserSummary>, name: &str, service: Option<u32>) {
    let entry = match out.iter_mut().position(|u| u.name == name) {
        Some(i) => &mut out[i],
        None => {
            out.push(UserSummary { name: name.into(), services: ServiceSet::default() });
            out.last_mut().expect("just pushed")
        }
    };
    if let Some(s) = service {
        entry.services.insert(s);
    }
}

fn push_unique(out: &mut Vec<Text>, value: &str) {
    if !out.iter().any(|v| v == value) {
        out.push(value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roentgen_model::{MAX_DOCUMENT_BYTES, parse_document};

    const TRACE: &str = "1-5759e988-bd862e3fe1be46a994272793";

    #[test]
    fn service_sets_hold_any_index_in_order_and_serialize_as_lists() {
        let mut set = ServiceSet::default();
        for service in [5, 0, 63, 5] {
            set.insert(service);
        }
        assert_eq!((set.iter().collect::<Vec<_>>(), set.len()), (vec![0, 5, 63], 3));
        assert!(matches!(set, ServiceSet::Bits(_)), "indexes under 64 take no allocation");
        set.insert(1000);
        set.insert(64);
        set.insert(5);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 5, 63, 64, 1000]);
        assert!(set.contains(1000) && set.contains(63) && !set.contains(62) && !set.contains(999));
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, "[0,5,63,64,1000]");
        let listed: Vec<u32> = set.iter().collect();
        assert_eq!(postcard::to_allocvec(&set).unwrap(), postcard::to_allocvec(&listed).unwrap());
        assert_eq!(serde_json::from_str::<ServiceSet>("[1000,0,64,5,63,5]").unwrap(), set);
        let small: ServiceSet = serde_json::from_str("[3,1]").unwrap();
        assert_eq!(small, ServiceSet::Bits(0b1010));
        assert_eq!(std::mem::size_of::<ServiceSet>(), 16);
    }

    #[test]
    fn a_shared_summary_fits_a_384_byte_allocation() {
        // An `Arc` adds its two counts, 16 bytes. mimalloc's size classes here are 320, 384 and
        // 448 bytes: past 384, 64 are lost.
        assert!(16 + std::mem::size_of::<TraceSummary>() <= 384);
    }

    proptest::proptest! {
        #[test]
        fn service_sets_match_an_ordered_set(services in proptest::collection::vec(0u32..200, 0..40)) {
            let mut inserted = ServiceSet::default();
            for &s in &services {
                inserted.insert(s);
            }
            let expected: Vec<u32> = services.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            proptest::prop_assert_eq!(inserted.iter().collect::<Vec<_>>(), expected.clone());
            proptest::prop_assert_eq!(inserted.len(), expected.len());
            proptest::prop_assert_eq!(&services.iter().copied().collect::<ServiceSet>(), &inserted);
        }
    }

    #[test]
    fn fact_flags_keep_every_combination_and_status() {
        for bits in 0..32u8 {
            for status in [None, Some(0), Some(200), Some(u16::MAX)] {
                let on = |b: u8| bits & b != 0;
                let flags = FactFlags::new(on(1), on(2), on(4), status).with_root(on(8)).with_inferred(on(16));
                let read = (flags.error(), flags.fault(), flags.throttle(), flags.root(), flags.inferred());
                assert_eq!(read, (on(1), on(2), on(4), on(8), on(16)));
                assert_eq!(flags.http_status(), status);
                let node = NodeFact { service: 3, start_time: 1.5, response_time: Some(0.25).into(), flags };
                let row = serde_json::to_value(&node).unwrap();
                assert_eq!(row["root"], on(8));
                assert_eq!(serde_json::from_value::<NodeFact>(row).unwrap(), node);
            }
        }
        assert_eq!((std::mem::size_of::<NodeFact>(), std::mem::size_of::<EdgeFact>()), (24, 32));
    }

    fn doc(json: &str) -> ParsedDocument {
        parse_document(json.as_bytes(), MAX_DOCUMENT_BYTES).unwrap()
    }

    #[test]
    fn maybe_seconds_holds_an_optional_duration_and_serializes_as_one() {
        for seconds in [None, Some(0.0), Some(1.5e-6), Some(86_400.25)] {
            let held = MaybeSeconds::from(seconds);
            assert_eq!(held.get(), seconds);
            let text = serde_json::to_string(&held).unwrap();
            assert_eq!(text, serde_json::to_string(&seconds).unwrap());
            assert_eq!(serde_json::from_str::<MaybeSeconds>(&text).unwrap(), held);
        }
        assert_eq!(std::mem::size_of::<MaybeSeconds>(), 8);
    }

    fn trace() -> Vec<ParsedDocument> {
        vec![
            doc(&format!(
                r#"{{"trace_id":"{TRACE}","id":"0000000000000001","name":"api","origin":"AWS::EC2::Instance",
                "start_time":100,"end_time":103,"error":true,"user":"alice","resource_arn":"arn:aws:ec2:i-1",
                "aws":{{"account_id":"123456789012","ec2":{{"instance_id":"i-1","availability_zone":"us-east-1a"}}}},
                "http":{{"request":{{"method":"GET","url":"http://api/x"}},"response":{{"status":429}}}},
                "annotations":{{"tenant":"acme","n":1}},
                "subsegments":[
                  {{"id":"0000000000000002","name":"auth","start_time":100.1,"end_time":101,"namespace":"remote",
                    "http":{{"request":{{"traced":true}}}}}},
                  {{"id":"0000000000000003","name":"DynamoDB","start_time":101,"end_time":102,"namespace":"aws",
                    "throttle":true,"aws":{{"table_name":"users","operation":"GetItem"}}}}]}}"#
            )),
            doc(&format!(
                r#"{{"trace_id":"{TRACE}","id":"0000000000000004","name":"auth","parent_id":"0000000000000002",
                "start_time":100.2,"end_time":100.9,"annotations":{{"tenant":"acme"}},"user":"alice"}}"#
            )),
            doc(&format!(
                r#"{{"trace_id":"{TRACE}","id":"0000000000000005","name":"late","type":"subsegment",
                "parent_id":"0000000000000004","start_time":100.3,"in_progress":true,"annotations":{{"tenant":"beta"}}}}"#
            )),
        ]
    }

    #[test]
    fn times_are_kept_to_the_microsecond_and_the_response_time_never_exceeds_the_duration() {
        // Sub-microsecond digits (the Python SDK sends seven decimals) that round in opposite
        // directions at each end.
        let root = doc(&format!(
            r#"{{"trace_id":"{TRACE}","id":"0000000000000001","name":"api","start_time":1700000000.7637746,"end_time":1700000000.8147883}}"#
        ));
        let s = summarize(TraceId::parse(TRACE).unwrap(), &[&root], 1);
        assert_eq!((s.start_time, s.end_time), (1_700_000_000.763775, 1_700_000_000.814788));
        assert_eq!(s.response_time.get(), Some(s.duration()));
        assert_eq!(s.duration(), 0.051013);
        let mut again = s.clone();
        again.round_to_microseconds();
        assert_eq!(again, s, "rounding is idempotent");
    }

    #[test]
    fn summarizes_a_multi_service_trace() {
        let docs = trace();
        let refs: Vec<&ParsedDocument> = docs.iter().rev().collect();
        let s = summarize(TraceId::parse(TRACE).unwrap(), &refs, 2);
        assert_eq!(s.start_time, 100.0);
        assert_eq!(s.end_time, 103.0);
        assert_eq!(s.response_time.get(), Some(3.0));
        assert!(s.has_error && !s.has_fault && s.has_throttle && s.is_partial);
        assert_eq!(s.http.as_ref().unwrap().status, Some(429));
        let names: Vec<&str> = s.services.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["api", "auth", "users"], "auth is instrumented, so no inferred remote node");
        assert_eq!(s.services[2].kind.as_deref(), Some("AWS::DynamoDB::Table"));
        assert_eq!(s.entry_point.get(), Some(0));
        let tenant = &s.annotations[0];
        assert_eq!(tenant.key, "tenant");
        assert_eq!(tenant.values[0], (AnnotationValue::String("acme".into()), [0, 1].into_iter().collect()));
        assert_eq!(tenant.values[1], (AnnotationValue::String("beta".into()), [1].into_iter().collect()));
        assert_eq!(s.users.len(), 1);
        assert_eq!(s.users[0].services.iter().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(s.instance_ids[..], ["i-1"]);
        assert_eq!(s.availability_zones[..], ["us-east-1a"]);
        assert_eq!(s.resource_arns[..], ["arn:aws:ec2:i-1"]);
        assert_eq!(s.revision, 2);
        assert_eq!(s.document_count, 3);
        let roots: Vec<&NodeFact> = s.facts.nodes.iter().filter(|n| n.flags.root()).collect();
        assert_eq!((roots.len(), roots[0].service, roots[0].flags.http_status()), (1, 0, Some(429)));
        let dynamo = s.facts.nodes.iter().find(|n| n.service == 2).unwrap();
        assert!(dynamo.flags.inferred() && dynamo.flags.throttle());
        let edges: Vec<(u32, u32)> = s.facts.edges.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(edges, [(0, 2), (0, 1)], "api called users (inferred) and auth (instrumented)");
        assert!((s.facts.edges[1].response_time.get().unwrap() - 0.9).abs() < 1e-9);

        // The root's error comes from nowhere below it: the throttled DynamoDB call has no error flag.
        let error = &s.facts.error_root_causes[0];
        assert!(error.client_impacting);
        assert_eq!(error.services.len(), 1);
        assert_eq!((error.services[0].service, error.services[0].entity_path[0].name.as_str()), (0, "api"));
        assert!(s.facts.fault_root_causes.is_empty());
        // Response time: api (3 s) -> DynamoDB (1 s) is a third, so the path stops at api.
        let slow = &s.facts.response_time_root_causes[0];
        assert_eq!(slow.services[0].entity_path[0].coverage, Some(1.0));
    }

    /// SDKs stream finished subsegments on their own (Python past its streaming threshold, the
    /// OpenTelemetry exporter always): a call sent that way is a call all the same.
    #[test]
    fn an_independent_call_subsegment_infers_its_node() {
        let docs = [
            doc(&format!(
                r#"{{"trace_id":"{TRACE}","id":"0000000000000001","name":"api","start_time":1,"end_time":3}}"#
            )),
            doc(&format!(
                r#"{{"trace_id":"{TRACE}","id":"0000000000000002","type":"subsegment","parent_id":"0000000000000001",
                "name":"DynamoDB","namespace":"aws","start_time":1.5,"end_time":2,"aws":{{"table_name":"users"}}}}"#
            )),
        ];
        let s = summarize(TraceId::parse(TRACE).unwrap(), &docs.iter().collect::<Vec<_>>(), 1);
        let names: Vec<&str> = s.services.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["api", "users"]);
        let edges: Vec<(u32, u32)> = s.facts.edges.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(edges, [(0, 1)]);
    }

    #[test]
    fn order_of_documents_does_not_matter() {
        let docs = trace();
        let forward: Vec<&ParsedDocument> = docs.iter().collect();
        let backward: Vec<&ParsedDocument> = docs.iter().rev().collect();
        let id = TraceId::parse(TRACE).unwrap();
        assert_eq!(summarize(id, &forward, 1), summarize(id, &backward, 1));
    }

    #[test]
    fn time_range_types() {
        let docs = trace();
        let refs: Vec<&ParsedDocument> = docs.iter().collect();
        let s = summarize(TraceId::parse(TRACE).unwrap(), &refs, 1);
        let epoch = f64::from(0x5759e988u32);
        assert!(s.matched_time(TimeRangeType::TraceId, epoch, epoch + 1.0).is_some());
        assert!(s.matched_time(TimeRangeType::TraceId, epoch + 1.0, epoch + 2.0).is_none());
        assert_eq!(s.matched_time(TimeRangeType::Event, 102.0, 104.0), Some(103.0));
        assert_eq!(s.matched_time(TimeRangeType::Service, 100.0, 101.0), Some(100.9));
        assert!(s.matched_time(TimeRangeType::Service, 101.0, 102.0).is_none());
    }

    #[test]
    fn caps_indexed_annotations() {
        let annotations: Vec<String> = (0..60).map(|i| format!("\"k{i}\":{i}")).collect();
        let d = doc(&format!(
            r#"{{"trace_id":"{TRACE}","id":"0000000000000001","name":"a","start_time":1,"end_time":2,"annotations":{{{}}}}}"#,
            annotations.join(",")
        ));
        let s = summarize(d.trace_id, &[&d], 1);
        assert_eq!(s.annotations.len(), MAX_INDEXED_ANNOTATIONS);
    }
}
