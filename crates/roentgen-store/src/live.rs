//! Traces still being assembled in memory, before they are written into a block.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use roentgen_model::{ParsedDocument, SegmentId, TraceId, prefetch};
use roentgen_query::TraceSummary;

use crate::FastMap;
use crate::wal::Source;

/// A stored document: the bytes exactly as received, and their parsed form.
#[derive(Debug)]
pub struct StoredDocument {
    pub raw: Box<str>,
    pub parsed: ParsedDocument,
    pub source: Source,
}

impl StoredDocument {
    pub fn id(&self) -> SegmentId {
        self.parsed.id()
    }
}

/// What a pass over many traces' documents reads of each, for [`prefetch_documents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reads {
    /// The document itself: its count of references, or where its text is.
    References,
    /// What it points to: its parsed records and its text, read by a summary or freed.
    Records,
}

/// Starts loading what a pass over traces, a trace at a time, will read of the documents of
/// the traces after the current one (`next(k)`: those of the trace `k + 1` places on):
/// `distance` traces ahead for the records, and as much again for each level of pointers before
/// them (each document, the list of them).
///
/// A flush reads documents parsed seconds before, long gone from the processor's caches:
/// without the hints each trace waits for memory a level at a time, for every document.
pub(crate) fn prefetch_documents<'a>(
    next: impl Fn(usize) -> Option<&'a [Arc<StoredDocument>]>,
    reads: Reads,
    distance: usize,
) {
    let ahead = |steps: usize| (steps * distance).checked_sub(1).and_then(&next);
    let mut steps = 1;
    if reads == Reads::Records {
        for doc in ahead(1).unwrap_or_default() {
            prefetch::lines(doc.raw.as_bytes(), 1);
            doc.parsed.prefetch();
        }
        steps = 2;
    }
    ahead(steps).unwrap_or_default().iter().for_each(|doc| prefetch::line(&**doc));
    if let Some(list) = ahead(steps + 1) {
        prefetch::lines(list, 2);
    }
}

/// An iterator's items one at a time with the next few in view, for a pass that asks ahead
/// for the memory it will read without first collecting the items (a flush's traces are
/// hundreds of thousands).
pub(crate) struct Lookahead<I: Iterator> {
    rest: I,
    next: VecDeque<I::Item>,
    depth: usize,
}

impl<I: Iterator> Lookahead<I> {
    pub fn new(mut rest: I, depth: usize) -> Self {
        let next = rest.by_ref().take(depth).collect();
        Self { rest, next, depth }
    }

    /// The next item, and the `depth` after it while there are as many.
    pub fn pop(&mut self) -> Option<(I::Item, &VecDeque<I::Item>)> {
        if self.next.len() <= self.depth {
            self.next.extend(self.rest.next());
        }
        let item = self.next.pop_front()?;
        Some((item, &self.next))
    }
}

/// What [`Documents::upsert`] did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upsert {
    Added,
    /// It replaced a document of its id, of this many bytes.
    Replaced(u64),
    /// An in-progress document came after its complete version.
    Ignored,
}

/// A trace's documents, one per id, in the order their ids first came in.
///
/// Looked up by a scan while few, and through an index from [`INDEXED_FROM`] documents on: a
/// trace streamed in thousands of documents (a long job's subsegments, a sender that reuses one
/// trace id) was scanned whole for each new one, on the WAL writer's thread, which every append
/// waits for.
#[derive(Debug, Default, Clone)]
pub(crate) struct Documents {
    list: Vec<Arc<StoredDocument>>,
    index: Option<Box<FastMap<SegmentId, u32>>>,
}

const INDEXED_FROM: usize = 32;

impl Documents {
    /// The documents of `docs`, each id once: a later one takes an earlier one's place as
    /// [`Documents::upsert`] decides.
    pub fn of(docs: impl IntoIterator<Item = Arc<StoredDocument>>) -> Self {
        let mut all = Self::default();
        for doc in docs {
            all.upsert(doc);
        }
        all
    }

    fn position(&self, id: SegmentId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).map(|&at| at as usize),
            None => self.list.iter().position(|d| d.id() == id),
        }
    }

    /// The document of this id, if held.
    pub fn get(&self, id: SegmentId) -> Option<&Arc<StoredDocument>> {
        self.position(id).map(|at| &self.list[at])
    }

    /// Merges `incoming` in, keyed by document id: a complete document replaces an in-progress
    /// one; an in-progress document never replaces a complete one; otherwise the later arrival
    /// wins.
    pub fn upsert(&mut self, incoming: Arc<StoredDocument>) -> Upsert {
        let id = incoming.id();
        if let Some(at) = self.position(id) {
            let existing = &mut self.list[at];
            if incoming.parsed.entity().in_progress() && !existing.parsed.entity().in_progress() {
                return Upsert::Ignored;
            }
            let replaced = std::mem::replace(existing, incoming);
            return Upsert::Replaced(replaced.raw.len() as u64);
        }
        self.list.push(incoming);
        let at = self.list.len() - 1;
        match &mut self.index {
            Some(index) => {
                index.insert(id, at as u32);
            }
            None if self.list.len() >= INDEXED_FROM => {
                let index = self.list.iter().enumerate().map(|(at, d)| (d.id(), at as u32)).collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        Upsert::Added
    }

    pub fn into_vec(self) -> Vec<Arc<StoredDocument>> {
        self.list
    }
}

impl std::ops::Deref for Documents {
    type Target = [Arc<StoredDocument>];

    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

#[derive(Debug)]
pub(crate) struct LiveTrace {
    pub docs: Documents,
    pub first_seen: Instant,
    pub last_update: Instant,
    pub bytes: u64,
    /// True when a block may already hold an earlier revision of this trace.
    pub maybe_in_blocks: bool,
    /// The oldest WAL generation holding a document of this trace: it must not be deleted yet.
    pub first_generation: u64,
    /// Documents were dropped because the trace reached its size limit.
    pub limit_exceeded: bool,
    /// Which change of the live state this trace last saw: summaries made from its documents
    /// as they were then are its summary until the next one.
    version: u64,
    summary: std::sync::Mutex<Option<Arc<TraceSummary>>>,
}

impl LiveTrace {
    fn new(now: Instant, maybe_in_blocks: bool, first_generation: u64, version: u64) -> Self {
        Self {
            version,
            docs: Documents::default(),
            first_seen: now,
            last_update: now,
            bytes: 0,
            maybe_in_blocks,
            first_generation,
            limit_exceeded: false,
            summary: Default::default(),
        }
    }

    fn changed(&mut self, version: u64) {
        self.version = version;
        *self.summary.get_mut().expect("summary cache lock") = None;
    }

    /// Takes in a later live trace of the same id: its documents replace those with their ids,
    /// as they would have on arrival. The size limit is the flush's to apply.
    fn absorb(&mut self, later: LiveTrace, version: u64) {
        for doc in later.docs.into_vec() {
            self.docs.upsert(doc);
        }
        self.bytes = self.docs.iter().map(|d| d.raw.len() as u64).sum();
        self.first_seen = self.first_seen.min(later.first_seen);
        self.last_update = self.last_update.max(later.last_update);
        self.maybe_in_blocks |= later.maybe_in_blocks;
        self.first_generation = self.first_generation.min(later.first_generation);
        self.limit_exceeded |= later.limit_exceeded;
        self.changed(version);
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The summary of the documents held here, if one was made since they last changed: as a
    /// first revision, or, where a block may hold an earlier one, merged with it.
    pub fn cached_summary(&self) -> Option<Arc<TraceSummary>> {
        self.summary.lock().expect("summary cache lock").clone()
    }

    /// Caches `summary`, made from the documents this trace held at `version`, unless they
    /// changed since.
    pub fn offer_summary(&self, version: u64, summary: &Arc<TraceSummary>) {
        if self.version == version {
            *self.summary.lock().expect("summary cache lock") = Some(summary.clone());
        }
    }

    /// Caches `refined` (the same summary with more filled in) in place of `summary`, unless the
    /// documents changed in the meantime.
    pub fn refine_summary(&self, summary: &Arc<TraceSummary>, refined: Arc<TraceSummary>) {
        let mut cached = self.summary.lock().expect("summary cache lock");
        if cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, summary)) {
            *cached = Some(refined);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct LiveState {
    pub traces: FastMap<TraceId, LiveTrace>,
    /// Traces taken out by a flush that is still writing their block; readers still see them.
    pub flushing: FastMap<TraceId, LiveTrace>,
    /// Raw bytes of the documents in `traces`.
    pub bytes: u64,
    /// Raw bytes of the documents in `flushing`.
    pub flushing_bytes: u64,
    pub documents: u64,
    /// Raw bytes of the documents applied since traces were last taken for a block.
    pub appended_since_cut: u64,
    /// Changes to traces so far: each change's number is the changed trace's version.
    changes: u64,
    /// Traces the last cut took, what `flushing` is sized for at the next.
    last_taken: usize,
}

impl LiveState {
    /// What live state holds of a trace: its flushing part, then its live one, either or both.
    pub fn holding(&self, id: TraceId) -> impl Iterator<Item = &LiveTrace> {
        [self.flushing.get(&id), self.traces.get(&id)].into_iter().flatten()
    }

    /// Adds one document, logged in WAL `generation`; `maybe_in_blocks` is asked only for a trace
    /// not yet live. A new document that would take its trace past `max_trace_bytes` is dropped:
    /// returns false then.
    pub fn apply(
        &mut self,
        doc: Arc<StoredDocument>,
        now: Instant,
        generation: u64,
        max_trace_bytes: u64,
        maybe_in_blocks: impl FnOnce(TraceId) -> bool,
    ) -> bool {
        let trace_id = doc.parsed.trace_id;
        let size = doc.raw.len() as u64;
        self.changes += 1;
        let version = self.changes;
        let trace = self.traces.entry(trace_id).or_insert_with(|| {
            let earlier = self.flushing.contains_key(&trace_id) || maybe_in_blocks(trace_id);
            LiveTrace::new(now, earlier, generation, version)
        });
        if trace.bytes + size > max_trace_bytes && trace.docs.get(doc.id()).is_none() {
            trace.limit_exceeded = true;
            return false;
        }
        let replaced_bytes = match trace.docs.upsert(doc) {
            Upsert::Ignored => return true,
            Upsert::Added => {
                self.documents += 1;
                0
            }
            Upsert::Replaced(bytes) => bytes,
        };
        trace.changed(version);
        trace.last_update = now;
        trace.bytes = trace.bytes + size - replaced_bytes;
        self.bytes = self.bytes + size - replaced_bytes;
        self.appended_since_cut += size;
        true
    }

    /// Moves the traces due for a block into `flushing` and returns their ids.
    pub fn take_due(
        &mut self,
        now: Instant,
        idle: std::time::Duration,
        max_live: std::time::Duration,
        max_bytes: u64,
    ) -> Vec<TraceId> {
        self.appended_since_cut = 0;
        let is_due =
            |t: &LiveTrace| now.duration_since(t.last_update) >= idle || now.duration_since(t.first_seen) >= max_live;
        // Due traces are taken out in the pass that finds them (each live trace is a cache miss,
        // and they were looked up again one by one) and moved straight into `flushing`, sized
        // once for as many as the last cut took: grown from empty, its table was rehashed at each
        // doubling.
        self.flushing.reserve(self.last_taken);
        let mut ids = Vec::with_capacity(self.last_taken);
        let (flushing, flushing_bytes, changes) = (&mut self.flushing, &mut self.flushing_bytes, &mut self.changes);
        let mut take = |id: TraceId, trace: LiveTrace| {
            ids.push(id);
            match flushing.get_mut(&id) {
                // Left by a flush that failed: the documents it holds are acknowledged too.
                Some(flushing) => {
                    let before = flushing.bytes;
                    *changes += 1;
                    flushing.absorb(trace, *changes);
                    *flushing_bytes = *flushing_bytes - before + flushing.bytes;
                }
                None => {
                    *flushing_bytes += trace.bytes;
                    flushing.insert(id, trace);
                }
            }
        };
        let (mut bytes, mut documents) = (0, 0);
        for (id, trace) in self.traces.extract_if(|_, t| is_due(t)) {
            bytes += trace.bytes;
            documents += trace.docs.len() as u64;
            take(id, trace);
        }
        if self.bytes.saturating_sub(bytes) > max_bytes {
            // Over the memory budget: flush the oldest of the rest until under it.
            let mut rest: Vec<(Instant, TraceId)> = self.traces.iter().map(|(id, t)| (t.first_seen, *id)).collect();
            rest.sort_unstable();
            for (_, id) in rest {
                if self.bytes.saturating_sub(bytes) <= max_bytes / 2 {
                    break;
                }
                if let Some(trace) = self.traces.remove(&id) {
                    bytes += trace.bytes;
                    documents += trace.docs.len() as u64;
                    take(id, trace);
                }
            }
        }
        self.bytes -= bytes;
        self.documents -= documents;
        self.last_taken = ids.len();
        ids
    }

    /// The flushing traces are in a block now: they leave live state. Returned, so that the
    /// caller frees them after releasing its lock: freeing a flush's documents takes a while,
    /// and appends wait for the lock.
    #[must_use]
    pub fn flushed(&mut self) -> FastMap<TraceId, LiveTrace> {
        self.flushing_bytes = 0;
        std::mem::take(&mut self.flushing)
    }

    /// The oldest WAL generation any live or flushing trace still needs.
    pub fn oldest_generation_needed(&self) -> Option<u64> {
        self.traces.values().chain(self.flushing.values()).map(|t| t.first_generation).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roentgen_model::{MAX_DOCUMENT_BYTES, parse_document};
    use std::time::Duration;

    fn doc(id: &str, extra: &str) -> Arc<StoredDocument> {
        let raw = format!(
            r#"{{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"{id}","name":"a","start_time":1,{extra}}}"#
        );
        let parsed = parse_document(raw.as_bytes(), MAX_DOCUMENT_BYTES).unwrap();
        Arc::new(StoredDocument { raw: raw.into(), parsed, source: Source::Api })
    }

    /// Hints change nothing, and a pass near its end (fewer traces left than the distance, or
    /// traces without documents) asks for what there is.
    #[test]
    fn prefetching_ahead_reads_only_what_is_there() {
        let traces: Vec<Vec<Arc<StoredDocument>>> = (0..6)
            .map(|n| (0..n % 3).map(|k| doc(&format!("{:016x}", n * 3 + k + 1), "\"end_time\":2")).collect())
            .collect();
        for left in 0..=traces.len() {
            for reads in [Reads::References, Reads::Records] {
                for distance in 0..=3 {
                    let next = &traces[traces.len() - left..];
                    prefetch_documents(|k| next.get(k).map(|t| &t[..]), reads, distance);
                }
            }
        }
        assert!(traces.iter().flatten().all(|d| Arc::strong_count(d) == 1));
    }

    #[test]
    fn lookahead_gives_every_item_once_with_those_after_it() {
        for depth in 0..4 {
            let mut items = Lookahead::new(0..6, depth);
            let mut seen = Vec::new();
            while let Some((item, next)) = items.pop() {
                let expected: Vec<i32> = (item + 1..6).take(depth).collect();
                assert_eq!(next.iter().copied().collect::<Vec<_>>(), expected);
                seen.push(item);
            }
            assert_eq!(seen, (0..6).collect::<Vec<_>>());
        }
    }

    #[test]
    fn complete_replaces_in_progress_but_not_the_reverse() {
        let mut docs = Documents::default();
        let first = doc("0000000000000001", r#""in_progress":true"#);
        let size = first.raw.len() as u64;
        assert_eq!(docs.upsert(first), Upsert::Added);
        assert_eq!(docs.upsert(doc("0000000000000001", r#""end_time":2"#)), Upsert::Replaced(size));
        assert_eq!(docs.upsert(doc("0000000000000001", r#""in_progress":true"#)), Upsert::Ignored);
        assert!(matches!(docs.upsert(doc("0000000000000001", r#""end_time":3"#)), Upsert::Replaced(_)));
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].parsed.entity().end_time(), Some(3.0));
    }

    #[test]
    fn many_documents_are_found_through_the_index_as_through_the_scan() {
        let mut docs = Documents::default();
        for n in 1..=3 * INDEXED_FROM as u64 {
            assert_eq!(docs.upsert(doc(&format!("{n:016x}"), r#""in_progress":true"#)), Upsert::Added);
        }
        assert!(docs.index.is_some());
        for n in (1..=3 * INDEXED_FROM as u64).step_by(7) {
            assert!(matches!(docs.upsert(doc(&format!("{n:016x}"), r#""end_time":2"#)), Upsert::Replaced(_)));
        }
        assert_eq!(docs.len(), 3 * INDEXED_FROM);
        for (n, d) in (1u64..).zip(docs.iter()) {
            assert_eq!(d.id().to_string(), format!("{n:016x}"), "first-arrival order is kept");
            assert_eq!(d.parsed.entity().in_progress(), (n - 1) % 7 != 0);
            assert!(Arc::ptr_eq(docs.get(d.id()).unwrap(), d));
        }
        assert!(docs.get(SegmentId::parse("ffffffffffffffff").unwrap()).is_none());
    }

    #[test]
    fn a_summary_made_before_a_change_is_not_cached_after_it() {
        let mut live = LiveState::default();
        let t0 = Instant::now();
        let summary = |live: &LiveState| live.traces.values().next().unwrap().cached_summary();
        live.apply(doc("0000000000000001", r#""in_progress":true"#), t0, 1, u64::MAX, |_| false);
        let trace = live.traces.values().next().unwrap();
        let parsed: Vec<&ParsedDocument> = trace.docs.iter().map(|d| &d.parsed).collect();
        let made = Arc::new(roentgen_query::summarize(parsed[0].trace_id, &parsed, 1));
        let before = trace.version();
        trace.offer_summary(before, &made);
        assert!(Arc::ptr_eq(&summary(&live).unwrap(), &made));
        live.apply(doc("0000000000000002", r#""end_time":2"#), t0, 1, u64::MAX, |_| false);
        assert!(summary(&live).is_none(), "a change drops the summary");
        live.traces.values().next().unwrap().offer_summary(before, &made);
        assert!(summary(&live).is_none(), "a summary of the documents before the change is refused");
        // Cut, then live again under the same id: the new trace's versions are not the old one's.
        let flushing_version = live.traces.values().next().unwrap().version();
        live.take_due(t0, Duration::ZERO, Duration::ZERO, u64::MAX);
        live.apply(doc("0000000000000003", r#""end_time":2"#), t0, 2, u64::MAX, |_| false);
        assert_ne!(live.traces.values().next().unwrap().version(), flushing_version);
    }

    #[test]
    fn accounting_and_flush_selection() {
        let mut live = LiveState::default();
        let t0 = Instant::now();
        let docs = [
            doc("0000000000000001", r#""in_progress":true"#),
            doc("0000000000000001", r#""end_time":2"#),
            doc("0000000000000002", r#""end_time":2"#),
        ];
        let appended: u64 = docs.iter().map(|d| d.raw.len() as u64).sum();
        for (generation, d) in [1, 2, 2].into_iter().zip(docs) {
            live.apply(d, t0, generation, u64::MAX, |_| false);
        }
        assert_eq!(live.oldest_generation_needed(), Some(1));
        assert_eq!(live.documents, 2);
        let expected: u64 = live.traces.values().flat_map(|t| t.docs.iter()).map(|d| d.raw.len() as u64).sum();
        assert_eq!(live.bytes, expected);
        // A replaced document counts as it came in, though it holds no memory now.
        assert_eq!(live.appended_since_cut, appended);
        let idle = Duration::from_secs(10);
        assert!(live.take_due(t0 + Duration::from_secs(1), idle, Duration::from_secs(60), u64::MAX).is_empty());
        assert_eq!(live.appended_since_cut, 0, "counted again from every look for due traces");
        let due = live.take_due(t0 + Duration::from_secs(11), idle, Duration::from_secs(60), u64::MAX);
        assert_eq!(due.len(), 1);
        assert_eq!((live.bytes, live.documents), (0, 0));
        assert_eq!(live.flushing.len(), 1);
        assert_eq!(live.flushing_bytes, expected);
        assert_eq!(live.flushed().len(), 1);
        assert_eq!((live.flushing.len(), live.flushing_bytes), (0, 0));
    }

    #[test]
    fn a_trace_past_its_size_limit_drops_new_documents_but_takes_replacements() {
        let mut live = LiveState::default();
        let t0 = Instant::now();
        let first = doc("0000000000000001", r#""in_progress":true"#);
        let limit = first.raw.len() as u64 + 10;
        assert!(live.apply(first, t0, 1, limit, |_| false));
        assert!(!live.apply(doc("0000000000000002", r#""end_time":2"#), t0, 1, limit, |_| false));
        assert!(live.apply(doc("0000000000000001", r#""end_time":2"#), t0, 1, limit, |_| false));
        let trace = live.traces.values().next().unwrap();
        assert!(trace.limit_exceeded);
        assert_eq!((trace.docs.len(), trace.docs[0].parsed.entity().end_time()), (1, Some(2.0)));
    }

    #[test]
    fn a_trace_still_flushing_after_a_failed_flush_keeps_its_documents_when_cut_again() {
        let mut live = LiveState::default();
        let t0 = Instant::now();
        let idle = Duration::from_secs(1);
        let due = |live: &mut LiveState, at| live.take_due(at, idle, Duration::from_secs(60), u64::MAX);
        live.apply(doc("0000000000000001", r#""in_progress":true"#), t0, 1, u64::MAX, |_| false);
        live.apply(doc("0000000000000002", r#""end_time":2"#), t0, 1, u64::MAX, |_| false);
        assert_eq!(due(&mut live, t0 + idle).len(), 1);
        // The flush failed: the trace stays in `flushing`, and more of it comes in.
        let t1 = t0 + Duration::from_secs(5);
        live.apply(doc("0000000000000001", r#""end_time":3"#), t1, 2, u64::MAX, |_| false);
        live.apply(doc("0000000000000003", r#""end_time":3"#), t1, 2, u64::MAX, |_| false);
        assert_eq!(due(&mut live, t1 + idle).len(), 1);
        let trace = live.flushing.values().next().unwrap();
        let mut ids: Vec<String> = trace.docs.iter().map(|d| d.id().to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["0000000000000001", "0000000000000002", "0000000000000003"]);
        assert_eq!(
            trace.docs.iter().find(|d| d.id().to_string().ends_with('1')).unwrap().parsed.entity().end_time(),
            Some(3.0)
        );
        let held: u64 = trace.docs.iter().map(|d| d.raw.len() as u64).sum();
        assert_eq!((trace.bytes, live.flushing_bytes, live.bytes), (held, held, 0));
        assert_eq!(live.oldest_generation_needed(), Some(1), "the first generation holds document 2");
    }

    #[test]
    fn memory_budget_forces_a_flush() {
        let mut live = LiveState::default();
        let t0 = Instant::now();
        live.apply(doc("0000000000000001", r#""end_time":2"#), t0, 1, u64::MAX, |_| false);
        let due = live.take_due(t0, Duration::from_secs(10), Duration::from_secs(60), 10);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn over_the_budget_the_oldest_of_the_rest_follow_the_idle_ones_each_once() {
        let mut live = LiveState::default();
        let t0 = Instant::now();
        let in_trace = |trace: u32, seen: Duration| {
            let raw = format!(
                r#"{{"trace_id":"1-5759e988-bd862e3fe1be46a9{trace:08x}","id":"0000000000000001","name":"a","start_time":1,"end_time":2}}"#
            );
            let parsed = parse_document(raw.as_bytes(), MAX_DOCUMENT_BYTES).unwrap();
            (Arc::new(StoredDocument { raw: raw.into(), parsed, source: Source::Api }), t0 + seen)
        };
        for (trace, seen) in [(1, 0), (2, 30), (3, 25), (4, 28)] {
            let (doc, at) = in_trace(trace, Duration::from_secs(seen));
            live.apply(doc, at, 1, u64::MAX, |_| false);
        }
        let size = live.bytes / 4;
        // Trace 1 is idle; the rest must come down to half of a budget of two traces.
        let due =
            live.take_due(t0 + Duration::from_secs(31), Duration::from_secs(10), Duration::from_secs(60), 2 * size);
        let ids: Vec<String> = due.iter().map(|id| id.to_string()[27..].to_owned()).collect();
        assert_eq!(ids, ["00000001", "00000003", "00000004"]);
    }
}
