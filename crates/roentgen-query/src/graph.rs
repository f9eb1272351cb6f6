//! The service graph: nodes and edges aggregated from traces, with X-Ray's statistics.
//!
//! A node's statistics come from its own segments (or, for an inferred node, the caller's
//! subsegment that stands for it); an edge's from the caller's subsegments. Each entry point
//! gets a `client` node whose edge to the root service carries the root segments. Requests
//! still in progress are not counted. Fault wins over error; a throttle is an error.

use std::cmp::Ordering;

use roentgen_model::Text;
use serde::{Deserialize, Serialize};

use crate::summary::{Map, ServiceKey, TraceSummary};

/// The window a service graph covers for a requested `[start, end)`: widened to whole minutes,
/// the resolution of its rollups, so that no trace in the request is left out and the graph is a
/// sum of rollups alone.
pub fn whole_minutes(start: f64, end: f64) -> (f64, f64) {
    ((start / 60.0).floor() * 60.0, (end / 60.0).ceil() * 60.0)
}

/// Counts of completed requests, as `ServiceStatistics` and `EdgeStatistics` report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    pub ok: u64,
    pub throttle: u64,
    pub other_error: u64,
    pub fault: u64,
    /// Kept in whole microseconds so that sums do not depend on the order they are added in.
    pub total_response_micros: u64,
}

impl Statistics {
    fn observe(&mut self, error: bool, fault: bool, throttle: bool, response_time: f64) {
        if fault {
            self.fault += 1;
        } else if throttle {
            self.throttle += 1;
        } else if error {
            self.other_error += 1;
        } else {
            self.ok += 1;
        }
        self.total_response_micros += crate::round(response_time * 1e6).max(0.0) as u64;
    }

    /// The sum of the response times, in seconds.
    pub fn total_response_time(&self) -> f64 {
        self.total_response_micros as f64 / 1e6
    }

    pub fn total(&self) -> u64 {
        self.ok + self.throttle + self.other_error + self.fault
    }

    pub fn add(&mut self, other: &Statistics) {
        self.ok += other.ok;
        self.throttle += other.throttle;
        self.other_error += other.other_error;
        self.fault += other.fault;
        self.total_response_micros += other.total_response_micros;
    }
}

/// Latencies in milliseconds with how many requests took each, sorted by latency: exact below
/// 100 ms, two significant digits above.
///
/// A sorted vector, because graphs are mostly merged (rollups), and two of them merge in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram(Vec<(u64, u64)>);

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Each latency in milliseconds with its count, shortest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }

    fn record(&mut self, seconds: f64) {
        let millis = bucket(seconds);
        match self.0.binary_search_by_key(&millis, |&(m, _)| m) {
            Ok(i) => self.0[i].1 += 1,
            Err(i) => self.0.insert(i, (millis, 1)),
        }
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        if other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        let (mine, theirs) = (&self.0, &other.0);
        let mut merged = Vec::with_capacity(mine.len() + theirs.len());
        let (mut i, mut j) = (0, 0);
        while i < mine.len() && j < theirs.len() {
            match mine[i].0.cmp(&theirs[j].0) {
                Ordering::Less => {
                    merged.push(mine[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    merged.push(theirs[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    merged.push((mine[i].0, mine[i].1 + theirs[j].1));
                    (i, j) = (i + 1, j + 1);
                }
            }
        }
        merged.extend_from_slice(&mine[i..]);
        merged.extend_from_slice(&theirs[j..]);
        self.0 = merged;
    }
}

/// Two significant digits keep a histogram to about 90 buckets a decade, so graphs stay small to
/// merge and to send, while percentiles stay within 5%.
fn bucket(seconds: f64) -> u64 {
    let millis = (seconds * 1000.0).max(0.0);
    if millis < 100.0 {
        return crate::round(millis) as u64;
    }
    // A tenth of the power of ten at or below `millis`: found by comparisons where it is exact
    // (every power of ten to 1e22 is a double), which a graph's latencies always are; a
    // logarithm, a call into libm, only beyond.
    let mut scale = 10.0;
    while scale < 1e20 && millis >= scale * 100.0 {
        scale *= 10.0;
    }
    if millis >= scale * 100.0 {
        scale = 10f64.powi(millis.log10().floor() as i32 - 1);
    }
    crate::round(crate::round(millis / scale) * scale) as u64
}

/// Observations of one node or edge over time: statistics, histogram and time bounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub statistics: Statistics,
    pub response_times: Histogram,
    pub start_time: f64,
    pub end_time: f64,
}

impl Series {
    fn merge(&mut self, other: &Series) {
        if other.statistics.total() == 0 {
            return;
        }
        if self.statistics.total() == 0 {
            (self.start_time, self.end_time) = (other.start_time, other.end_time);
        }
        self.start_time = self.start_time.min(other.start_time);
        self.end_time = self.end_time.max(other.end_time);
        self.statistics.add(&other.statistics);
        self.response_times.merge(&other.response_times);
    }

    fn observe(&mut self, start: f64, response_time: f64, flags: (bool, bool, bool)) {
        if self.statistics.total() == 0 {
            self.start_time = start;
            self.end_time = start + response_time;
        }
        self.start_time = self.start_time.min(start);
        self.end_time = self.end_time.max(start + response_time);
        self.statistics.observe(flags.0, flags.1, flags.2, response_time);
        self.response_times.record(response_time);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// Index of the target in [`ServiceGraph::nodes`].
    pub target: usize,
    /// An asynchronous link (X-Ray's `EdgeType: link`): its series counts the events the target
    /// received, with their age (receive time minus send time) where a call's response time
    /// would be.
    pub link: bool,
    pub series: Series,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    pub key: ServiceKey,
    pub client: bool,
    pub root: bool,
    /// True when the node sent segments of its own (X-Ray's `State: active`).
    pub active: bool,
    pub series: Series,
    /// For a root node, the whole trace's duration; otherwise the response times.
    pub durations: Histogram,
    pub edges: Vec<GraphEdge>,
}

/// A service graph under construction, or built.
///
/// Serialized as its nodes only (rollups are stored in blocks); the lookups are rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "Vec<GraphNode>")]
pub struct ServiceGraph {
    pub nodes: Vec<GraphNode>,
    services: Map<ServiceKey, usize>,
    /// Client nodes, by the name of the root service they call.
    clients: Map<Text, usize>,
}

impl From<Vec<GraphNode>> for ServiceGraph {
    fn from(nodes: Vec<GraphNode>) -> Self {
        let mut graph = ServiceGraph { nodes, ..Default::default() };
        let count = graph.nodes.len();
        for node in &mut graph.nodes {
            node.edges.retain(|e| e.target < count);
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            if node.client {
                graph.clients.insert(node.key.name.clone(), i);
            } else {
                graph.services.insert(node.key.clone(), i);
            }
        }
        graph
    }
}

/// Serialized as its nodes, borrowed: serde's `into` would clone every graph it writes.
impl Serialize for ServiceGraph {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.nodes.serialize(serializer)
    }
}

impl ServiceGraph {
    fn push(&mut self, key: ServiceKey, client: bool) -> usize {
        self.nodes.push(GraphNode {
            key,
            client,
            root: false,
            active: false,
            series: Series::default(),
            durations: Histogram::new(),
            edges: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn service(&mut self, key: &ServiceKey) -> usize {
        if let Some(&i) = self.services.get(key) {
            return i;
        }
        let i = self.push(key.clone(), false);
        self.services.insert(key.clone(), i);
        i
    }

    fn client(&mut self, root: &str) -> usize {
        if let Some(&i) = self.clients.get(root) {
            return i;
        }
        let key = ServiceKey { name: root.into(), kind: Some("client".into()), account_id: None };
        let i = self.push(key, true);
        self.clients.insert(root.into(), i);
        i
    }

    fn edge(&mut self, from: usize, to: usize, link: bool) -> &mut Series {
        let edges = &mut self.nodes[from].edges;
        let at = match edges.iter().position(|e| e.target == to && e.link == link) {
            Some(at) => at,
            None => {
                edges.push(GraphEdge { target: to, link, series: Series::default() });
                edges.len() - 1
            }
        };
        &mut edges[at].series
    }

    /// Adds another graph's nodes and calls, as if its traces had been added to this one.
    pub fn merge(&mut self, other: &ServiceGraph) {
        let local: Vec<usize> = other
            .nodes
            .iter()
            .map(|node| if node.client { self.client(&node.key.name) } else { self.service(&node.key) })
            .collect();
        for (node, &i) in other.nodes.iter().zip(&local) {
            let mine = &mut self.nodes[i];
            mine.active |= node.active;
            mine.root |= node.root;
            mine.series.merge(&node.series);
            mine.durations.merge(&node.durations);
            for edge in &node.edges {
                self.edge(i, local[edge.target], edge.link).merge(&edge.series);
            }
        }
    }

    /// Adds one trace's nodes and calls.
    pub fn add(&mut self, trace: &TraceSummary) {
        // Each of the trace's services is looked up once.
        let local: Vec<usize> = trace.services.iter().map(|key| self.service(key)).collect();
        let facts = &trace.facts;
        for node in &facts.nodes {
            let Some(&i) = local.get(node.service as usize) else { continue };
            self.nodes[i].active |= !node.flags.inferred();
            self.nodes[i].root |= node.flags.root();
            let Some(response_time) = node.response_time.get() else { continue };
            let flags = (node.flags.error(), node.flags.fault(), node.flags.throttle());
            self.nodes[i].series.observe(node.start_time, response_time, flags);
            let duration = if node.flags.root() { trace.duration() } else { response_time };
            self.nodes[i].durations.record(duration);
            if node.flags.root() {
                let client = self.client(&trace.services[node.service as usize].name);
                self.edge(client, i, false).observe(node.start_time, response_time, flags);
            }
        }
        for edge in &facts.edges {
            let (Some(&from), Some(&to)) = (local.get(edge.from as usize), local.get(edge.to as usize)) else {
                continue;
            };
            if let Some(response_time) = edge.response_time.get() {
                let flags = (edge.flags.error(), edge.flags.fault(), edge.flags.throttle());
                self.edge(from, to, false).observe(edge.start_time, response_time, flags);
            }
        }
        for link in &trace.links {
            let (Some(source), Some(&to)) = (&link.source, local.get(link.to as usize)) else { continue };
            let from = self.service(&source.node);
            let age = (link.start_time - source.sent_time).max(0.0);
            self.edge(from, to, true).observe(link.start_time, age, (link.error, link.fault, link.throttle));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use roentgen_model::{MAX_DOCUMENT_BYTES, ParsedDocument, TraceId, parse_document};

    fn summary(n: u32, docs: &[&str]) -> TraceSummary {
        let id = TraceId::from_parts(1_700_000_000, u128::from(n));
        let parsed: Vec<ParsedDocument> = docs
            .iter()
            .map(|d| parse_document(d.replace("TRACE", &id.to_string()).as_bytes(), MAX_DOCUMENT_BYTES).unwrap())
            .collect();
        crate::summarize(id, &parsed.iter().collect::<Vec<_>>(), 1)
    }

    #[test]
    fn buckets_keep_two_significant_digits_above_100_ms() {
        let cases = [(0.0004, 0), (0.0426, 43), (0.099, 99), (0.1, 100), (0.104, 100), (0.106, 110), (0.2549, 250)];
        for (seconds, millis) in cases.into_iter().chain([(0.996, 1000), (1.234, 1200), (12.5, 13000), (61.0, 61000)]) {
            assert_eq!(bucket(seconds), millis, "{seconds} s");
        }
    }

    proptest::proptest! {
        #[test]
        fn buckets_are_those_of_the_logarithm(mantissa in 1.0f64..10.0, exponent in -3i32..30, step in -2i64..=2) {
            let logarithm = |seconds: f64| {
                let millis = (seconds * 1000.0).max(0.0);
                if millis < 100.0 {
                    return crate::round(millis) as u64;
                }
                let scale = 10f64.powi(millis.log10().floor() as i32 - 1);
                crate::round(crate::round(millis / scale) * scale) as u64
            };
            // Powers of ten and their neighbours, as well as anything between.
            for seconds in [mantissa * 10f64.powi(exponent), 10f64.powi(exponent)] {
                let near = f64::from_bits(seconds.to_bits().wrapping_add_signed(step));
                proptest::prop_assert_eq!(bucket(near), logarithm(near), "{:e} s", near);
            }
        }

        /// A histogram counts each bucket's latencies, in order.
        #[test]
        fn recording_counts_each_bucket(latencies in proptest::collection::vec(proptest::prop_oneof![0u64..40, 0u64..5000, proptest::num::u64::ANY], 0..200)) {
            let mut h = Histogram::new();
            let mut expected = BTreeMap::new();
            for &ms in &latencies {
                let seconds = ms as f64 / 1000.0;
                h.record(seconds);
                *expected.entry(bucket(seconds)).or_insert(0u64) += 1;
            }
            proptest::prop_assert_eq!(h.iter().collect::<Vec<_>>(), expected.into_iter().collect::<Vec<_>>());
        }

        /// Merging histograms, in place or not, counts what recording every latency would.
        #[test]
        fn merging_equals_recording(a in proptest::collection::vec(0u64..3000, 0..60), b in proptest::collection::vec(0u64..3000, 0..60)) {
            let record = |latencies: &[u64]| {
                let mut h = Histogram::new();
                for &ms in latencies {
                    h.record(ms as f64 / 1000.0);
                }
                h
            };
            let all: Vec<u64> = a.iter().chain(&b).copied().collect();
            let mut merged = record(&a);
            merged.merge(&record(&b));
            proptest::prop_assert_eq!(&merged, &record(&all));
            // A small histogram merged into a large one.
            let mut large = record(&(0..3000).step_by(3).collect::<Vec<_>>());
            large.merge(&record(&b));
            let both: Vec<u64> = (0..3000).step_by(3).chain(b.iter().copied()).collect();
            proptest::prop_assert_eq!(large, record(&both));
        }
    }

    /// Two requests to `web`: one ok that reads a table, one that fails calling `api`.
    #[test]
    fn nodes_edges_and_statistics() {
        let ok = summary(
            1,
            &[
                r#"{"trace_id":"TRACE","id":"0000000000000001","name":"web","origin":"AWS::EC2::Instance","start_time":10,"end_time":10.2,
               "subsegments":[{"id":"0000000000000002","name":"DynamoDB","namespace":"aws","start_time":10.05,"end_time":10.1,"aws":{"table_name":"users"}}]}"#,
            ],
        );
        let failed = summary(
            2,
            &[
                r#"{"trace_id":"TRACE","id":"0000000000000003","name":"web","origin":"AWS::EC2::Instance","start_time":20,"end_time":20.5,"fault":true,
               "subsegments":[{"id":"0000000000000004","name":"api","namespace":"remote","start_time":20.1,"end_time":20.4,"fault":true}]}"#,
                r#"{"trace_id":"TRACE","id":"0000000000000005","name":"api","parent_id":"0000000000000004","start_time":20.12,"end_time":20.38,"fault":true}"#,
                r#"{"trace_id":"TRACE","id":"0000000000000006","name":"api","parent_id":"0000000000000004","start_time":20.3,"in_progress":true}"#,
            ],
        );
        let mut graph = ServiceGraph::default();
        graph.add(&ok);
        graph.add(&failed);
        let names: Vec<(&str, bool)> = graph.nodes.iter().map(|n| (n.key.name.as_str(), n.client)).collect();
        assert_eq!(names, [("web", false), ("users", false), ("web", true), ("api", false)]);

        let web = &graph.nodes[0];
        assert!(web.root && web.active);
        assert_eq!((web.series.statistics.ok, web.series.statistics.fault, web.series.statistics.total()), (1, 1, 2));
        assert_eq!(web.series.statistics.total_response_time(), 0.7);
        assert_eq!(web.series.response_times.iter().collect::<Vec<_>>(), [(200, 1), (500, 1)]);
        assert_eq!((web.series.start_time, web.series.end_time), (10.0, 20.5));
        let targets: Vec<usize> = web.edges.iter().map(|e| e.target).collect();
        assert_eq!(targets, [1, 3]);
        assert_eq!(web.edges[1].series.statistics.fault, 1);

        let client = &graph.nodes[2];
        assert_eq!(client.key.kind.as_deref(), Some("client"));
        assert_eq!(client.edges[0].target, 0);
        assert_eq!(
            client.edges[0].series.statistics, web.series.statistics,
            "the client edge carries the root segments"
        );

        let users = &graph.nodes[1];
        assert!(!users.active, "an inferred node is not active");
        assert_eq!(users.key.kind.as_deref(), Some("AWS::DynamoDB::Table"));
        assert_eq!(users.series.statistics.ok, 1);

        let api = &graph.nodes[3];
        assert!(api.active && !api.root);
        assert_eq!(api.series.statistics.total(), 1, "the in-progress segment is not counted");

        // Graphs of disjoint sets of traces merge into the graph of all of them.
        let (mut first, mut second) = (ServiceGraph::default(), ServiceGraph::default());
        first.add(&failed);
        second.add(&ok);
        first.merge(&second);
        let by_key = |g: &ServiceGraph| {
            g.nodes
                .iter()
                .map(|n| {
                    let edges: BTreeMap<_, _> = n
                        .edges
                        .iter()
                        .map(|e| ((&g.nodes[e.target].key, g.nodes[e.target].client), &e.series))
                        .collect();
                    ((&n.key, n.client), (n.root, n.active, &n.series, &n.durations, edges))
                })
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .map(|(k, v)| format!("{k:?} {v:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(by_key(&first), by_key(&graph));
    }
}
