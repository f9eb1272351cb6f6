//! The encodings of the summaries and facts sections from block format 4 on.
//!
//! Version 3 wrote [`TraceSummary`] and [`TraceFacts`] as they are, every time an f64 of epoch
//! seconds: 8 bytes whose low bits are noise to zstd, and the most of those sections' size on
//! disk. Here every time but the trace's start is whole microseconds after it (or a duration in
//! microseconds), a varint of 2 to 4 bytes, and a fact's flags are one byte. The trace id, the
//! revision and the document count are left out: the index holds them, in the same order.
//! Microseconds are the precision X-Ray's SDKs send.

use roentgen_model::{Http, Text, TraceId};
use roentgen_query::{
    AnnotationSummary, EdgeFact, NodeFact, RootCause, ServiceKey, TraceFacts, TraceSummary, UserSummary,
};
use serde::{Deserialize, Serialize};

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
    (time * 1e6).round() as i64
}

fn micros(duration: f64) -> u64 {
    (duration.max(0.0) * 1e6).round() as u64
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// A summary as written; `Vec`s are borrowed slices when written, owned when read.
#[derive(Serialize)]
pub(crate) struct SummaryOut<'a> {
    start_time: f64,
    end_time: i64,
    response_time: Option<u64>,
    flags: u8,
    http: &'a Option<Http>,
    services: &'a [ServiceKey],
    entry_point: Option<u32>,
    annotations: &'a [AnnotationSummary],
    users: &'a [UserSummary],
    resource_arns: &'a [Text],
    instance_ids: &'a [Text],
    availability_zones: &'a [Text],
    segment_end_times: Vec<i64>,
}

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

impl<'a> SummaryOut<'a> {
    pub(crate) fn new(s: &'a TraceSummary) -> Self {
        let base = s.start_time;
        Self {
            start_time: base,
            end_time: after(base, s.end_time),
            response_time: s.response_time.map(micros),
            flags: flags(&[
                (s.has_fault, FAULT),
                (s.has_error, ERROR),
                (s.has_throttle, THROTTLE),
                (s.is_partial, PARTIAL),
            ]),
            http: &s.http,
            services: &s.services,
            entry_point: s.entry_point,
            annotations: &s.annotations,
            users: &s.users,
            resource_arns: &s.resource_arns,
            instance_ids: &s.instance_ids,
            availability_zones: &s.availability_zones,
            segment_end_times: s.segment_end_times.iter().map(|&t| after(base, t)).collect(),
        }
    }
}

impl SummaryIn {
    /// The summary, with what the index holds for it.
    pub(crate) fn into_summary(self, trace_id: TraceId, revision: u32, document_count: u32) -> TraceSummary {
        let base = self.start_time;
        TraceSummary {
            trace_id,
            start_time: base,
            end_time: at(base, self.end_time),
            response_time: self.response_time.map(seconds),
            has_fault: self.flags & FAULT != 0,
            has_error: self.flags & ERROR != 0,
            has_throttle: self.flags & THROTTLE != 0,
            is_partial: self.flags & PARTIAL != 0,
            http: self.http,
            services: self.services,
            entry_point: self.entry_point,
            annotations: self.annotations,
            users: self.users,
            resource_arns: self.resource_arns,
            instance_ids: self.instance_ids,
            availability_zones: self.availability_zones,
            revision,
            segment_end_times: self.segment_end_times.into_iter().map(|t| at(base, t)).collect(),
            document_count,
            facts: TraceFacts::default(),
            links: Vec::new(),
        }
    }
}

/// A node or an edge fact: `from` is the node's service, `to` unused for nodes.
#[derive(Serialize, Deserialize)]
struct Fact {
    from: u32,
    to: u32,
    start_time: i64,
    flags: u8,
    response_time: Option<u64>,
    http_status: Option<u16>,
}

#[derive(Serialize)]
pub(crate) struct FactsOut<'a> {
    nodes: Vec<Fact>,
    edges: Vec<Fact>,
    fault_root_causes: &'a [RootCause],
    error_root_causes: &'a [RootCause],
    response_time_root_causes: &'a [RootCause],
}

#[derive(Deserialize)]
pub(crate) struct FactsIn {
    nodes: Vec<Fact>,
    edges: Vec<Fact>,
    fault_root_causes: Vec<RootCause>,
    error_root_causes: Vec<RootCause>,
    response_time_root_causes: Vec<RootCause>,
}

impl<'a> FactsOut<'a> {
    /// `base` is the trace's start time.
    pub(crate) fn new(facts: &'a TraceFacts, base: f64) -> Self {
        let node = |n: &NodeFact| Fact {
            from: n.service,
            to: 0,
            start_time: after(base, n.start_time),
            flags: flags(&[
                (n.fault, FAULT),
                (n.error, ERROR),
                (n.throttle, THROTTLE),
                (n.root, ROOT),
                (n.inferred, INFERRED),
            ]),
            response_time: n.response_time.map(micros),
            http_status: n.http_status,
        };
        let edge = |e: &EdgeFact| Fact {
            from: e.from,
            to: e.to,
            start_time: after(base, e.start_time),
            flags: flags(&[(e.fault, FAULT), (e.error, ERROR), (e.throttle, THROTTLE)]),
            response_time: e.response_time.map(micros),
            http_status: e.http_status,
        };
        Self {
            nodes: facts.nodes.iter().map(node).collect(),
            edges: facts.edges.iter().map(edge).collect(),
            fault_root_causes: &facts.fault_root_causes,
            error_root_causes: &facts.error_root_causes,
            response_time_root_causes: &facts.response_time_root_causes,
        }
    }
}

impl FactsIn {
    pub(crate) fn into_facts(self, base: f64) -> TraceFacts {
        let node = |f: Fact| NodeFact {
            service: f.from,
            start_time: at(base, f.start_time),
            root: f.flags & ROOT != 0,
            inferred: f.flags & INFERRED != 0,
            error: f.flags & ERROR != 0,
            fault: f.flags & FAULT != 0,
            throttle: f.flags & THROTTLE != 0,
            response_time: f.response_time.map(seconds),
            http_status: f.http_status,
        };
        let edge = |f: Fact| EdgeFact {
            from: f.from,
            to: f.to,
            start_time: at(base, f.start_time),
            error: f.flags & ERROR != 0,
            fault: f.flags & FAULT != 0,
            throttle: f.flags & THROTTLE != 0,
            response_time: f.response_time.map(seconds),
            http_status: f.http_status,
        };
        TraceFacts {
            nodes: self.nodes.into_iter().map(node).collect(),
            edges: self.edges.into_iter().map(edge).collect(),
            fault_root_causes: self.fault_root_causes,
            error_root_causes: self.error_root_causes,
            response_time_root_causes: self.response_time_root_causes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use roentgen_query::whole_microseconds;

    #[test]
    fn extreme_offsets_decode_without_overflow() {
        assert_eq!(at(1e300, i64::MAX), i64::MAX as f64 / 1e6);
        assert_eq!(at(0.0, i64::MIN), i64::MIN as f64 / 1e6);
    }

    proptest! {
        /// Summaries as `summarize` makes them (times in whole microseconds) come back exactly.
        #[test]
        fn summaries_and_facts_round_trip(
            start in 1.0e9f64..2.0e9,
            offsets in proptest::collection::vec(0.0f64..3600.0, 1..6),
            bits in any::<u8>(),
            status in proptest::option::of(100u16..600),
        ) {
            let us = whole_microseconds;
            let (start, last) = (us(start), offsets.len() - 1);
            let facts = TraceFacts {
                nodes: vec![NodeFact {
                    service: 0,
                    start_time: us(start + offsets[0]),
                    root: bits & 1 != 0,
                    inferred: bits & 2 != 0,
                    error: bits & 4 != 0,
                    fault: bits & 8 != 0,
                    throttle: bits & 16 != 0,
                    response_time: Some(us(offsets[last])),
                    http_status: status,
                }],
                edges: vec![EdgeFact {
                    from: 0,
                    to: 1,
                    start_time: us(start + offsets[last / 2]),
                    error: bits & 32 != 0,
                    fault: bits & 64 != 0,
                    throttle: bits & 128 != 0,
                    response_time: None,
                    http_status: status,
                }],
                ..TraceFacts::default()
            };
            let summary = TraceSummary {
                trace_id: TraceId::from_parts(1_700_000_000, 7),
                start_time: start,
                end_time: us(start + offsets.iter().cloned().fold(0.0, f64::max)),
                response_time: Some(us(offsets[0])),
                has_fault: bits & 1 != 0,
                has_error: bits & 2 != 0,
                has_throttle: bits & 4 != 0,
                is_partial: bits & 8 != 0,
                http: None,
                services: vec![ServiceKey { name: "a".into(), kind: None, account_id: Some("1".into()) }],
                entry_point: Some(0),
                annotations: Vec::new(),
                users: Vec::new(),
                resource_arns: vec!["arn".into()],
                instance_ids: Vec::new(),
                availability_zones: Vec::new(),
                revision: 3,
                segment_end_times: offsets.iter().map(|o| us(start + o)).collect(),
                document_count: 2,
                facts: facts.clone(),
                links: Vec::new(),
            };
            let encoded = postcard::to_stdvec(&SummaryOut::new(&summary)).unwrap();
            let mut read = postcard::from_bytes::<SummaryIn>(&encoded).unwrap().into_summary(summary.trace_id, 3, 2);
            let encoded = postcard::to_stdvec(&FactsOut::new(&facts, start)).unwrap();
            read.facts = postcard::from_bytes::<FactsIn>(&encoded).unwrap().into_facts(start);
            prop_assert_eq!(read, summary);
        }
    }
}
