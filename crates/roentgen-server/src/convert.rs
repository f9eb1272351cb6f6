//! The X-Ray API adapter: domain values to and from the API's wire shapes, and page tokens.

use std::collections::BTreeMap;

use roentgen_model::api;
use roentgen_model::{AnnotationValue, Text, TraceId};
use roentgen_query::{ServiceGraph, ServiceKey, ServiceSet, TraceSummary};
use roentgen_store::SummaryCursor;

fn owned(text: Option<&Text>) -> Option<String> {
    text.map(|t| t.as_str().to_owned())
}

fn service_id(key: &ServiceKey) -> api::ServiceId {
    api::ServiceId {
        name: key.name.as_str().to_owned(),
        names: vec![key.name.as_str().to_owned()],
        account_id: owned(key.account_id.as_ref()),
        kind: owned(key.kind.as_ref()),
    }
}

fn service_ids(summary: &TraceSummary, indexes: &ServiceSet) -> Vec<api::ServiceId> {
    indexes.iter().filter_map(|i| summary.services.get(i as usize)).map(|k| service_id(k)).collect()
}

pub fn trace_summary(summary: &TraceSummary, matched_event_time: f64) -> api::TraceSummary {
    let http = summary.http.as_ref();
    let mut annotations = BTreeMap::new();
    for a in &summary.annotations {
        let values = a
            .values
            .iter()
            .map(|(value, services)| api::ValueWithServiceIds {
                annotation_value: match value {
                    AnnotationValue::String(s) => api::AnnotationValue::StringValue(s.as_str().to_owned()),
                    AnnotationValue::Number(n) => api::AnnotationValue::NumberValue(*n),
                    AnnotationValue::Bool(b) => api::AnnotationValue::BooleanValue(*b),
                },
                service_ids: service_ids(summary, services),
            })
            .collect();
        annotations.insert(a.key.as_str().to_owned(), values);
    }
    api::TraceSummary {
        id: summary.trace_id.to_string(),
        start_time: summary.start_time,
        duration: summary.duration(),
        response_time: summary.response_time.get(),
        has_fault: summary.has_fault,
        has_error: summary.has_error,
        has_throttle: summary.has_throttle,
        is_partial: summary.is_partial,
        http: api::Http {
            http_url: http.and_then(|h| owned(h.url.as_ref())),
            http_status: http.and_then(|h| h.status),
            http_method: http.and_then(|h| owned(h.method.as_ref())),
            user_agent: http.and_then(|h| owned(h.user_agent.as_ref())),
            client_ip: http.and_then(|h| owned(h.client_ip.as_ref())),
        },
        annotations,
        users: summary
            .users
            .iter()
            .map(|u| api::TraceUser {
                user_name: u.name.as_str().to_owned(),
                service_ids: service_ids(summary, &u.services),
            })
            .collect(),
        service_ids: summary.services.iter().map(|k| service_id(k)).collect(),
        resource_arns: summary
            .resource_arns
            .iter()
            .map(|arn| api::ResourceArnDetail { arn: arn.as_str().to_owned() })
            .collect(),
        instance_ids: summary
            .instance_ids
            .iter()
            .map(|id| api::InstanceIdDetail { id: id.as_str().to_owned() })
            .collect(),
        availability_zones: summary
            .availability_zones
            .iter()
            .map(|name| api::AvailabilityZoneDetail { name: name.as_str().to_owned() })
            .collect(),
        entry_point: summary.entry_point.get().and_then(|i| summary.services.get(i as usize)).map(|k| service_id(k)),
        fault_root_causes: summary.facts.fault_root_causes.iter().map(|c| c.to_api(&summary.services)).collect(),
        error_root_causes: summary.facts.error_root_causes.iter().map(|c| c.to_api(&summary.services)).collect(),
        response_time_root_causes: summary
            .facts
            .response_time_root_causes
            .iter()
            .map(|c| c.to_api(&summary.services))
            .collect(),
        revision: summary.revision,
        matched_event_time,
    }
}

pub fn statistics(s: &roentgen_query::Statistics) -> api::Statistics {
    let errors = s.throttle + s.other_error;
    api::Statistics {
        ok_count: s.ok,
        error_statistics: api::ErrorStatistics {
            throttle_count: s.throttle,
            other_count: s.other_error,
            total_count: errors,
        },
        fault_statistics: api::FaultStatistics { other_count: s.fault, total_count: s.fault },
        total_count: s.total(),
        total_response_time: s.total_response_time(),
    }
}

pub fn histogram(h: &roentgen_query::Histogram) -> Vec<api::HistogramEntry> {
    h.iter().map(|(ms, count)| api::HistogramEntry { value: ms as f64 / 1000.0, count }).collect()
}

/// The graph's nodes as `Service` records, in a stable order (by name, type, account; a client
/// after the service it calls) that reference ids follow.
pub fn services(graph: &ServiceGraph) -> Vec<api::Service> {
    let mut order: Vec<usize> = (0..graph.nodes.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&graph.nodes[a], &graph.nodes[b]);
        (&a.key.name, a.client, &a.key.kind, &a.key.account_id).cmp(&(
            &b.key.name,
            b.client,
            &b.key.kind,
            &b.key.account_id,
        ))
    });
    let mut reference = vec![0; order.len()];
    for (position, &node) in order.iter().enumerate() {
        reference[node] = position;
    }
    order
        .iter()
        .map(|&i| {
            let node = &graph.nodes[i];
            let series = &node.series;
            let edges_bounds = node.edges.iter().map(|e| (e.series.start_time, e.series.end_time));
            let (start, end) = if node.client {
                edges_bounds.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (s, e)| (a.min(s), b.max(e)))
            } else {
                (series.start_time, series.end_time)
            };
            let measured = !node.client && series.statistics.total() > 0;
            api::Service {
                reference_id: reference[i],
                name: node.key.name.as_str().to_owned(),
                names: vec![node.key.name.as_str().to_owned()],
                root: node.root,
                account_id: owned(node.key.account_id.as_ref()),
                kind: owned(node.key.kind.as_ref()),
                state: if node.active { "active" } else { "unknown" }.to_owned(),
                start_time: if start.is_finite() { start.floor() } else { 0.0 },
                end_time: if end.is_finite() { end.ceil() } else { 0.0 },
                edges: node
                    .edges
                    .iter()
                    .map(|edge| {
                        let times = histogram(&edge.series.response_times);
                        let (response_times, ages) = if edge.link { (None, Some(times)) } else { (Some(times), None) };
                        api::Edge {
                            reference_id: reference[edge.target],
                            start_time: edge.series.start_time.floor(),
                            end_time: edge.series.end_time.ceil(),
                            summary_statistics: statistics(&edge.series.statistics),
                            response_time_histogram: response_times,
                            aliases: Vec::new(),
                            edge_type: edge.link.then(|| "link".to_owned()),
                            received_event_age_histogram: ages,
                        }
                    })
                    .collect(),
                summary_statistics: measured.then(|| statistics(&series.statistics)),
                duration_histogram: measured.then(|| histogram(&node.durations)),
                response_time_histogram: measured.then(|| histogram(&series.response_times)),
            }
        })
        .collect()
}

/// `GetTraceSummaries` tokens carry the cursor and the query they belong to, so a token cannot be
/// replayed against another time range by mistake.
pub fn encode_summary_token(cursor: SummaryCursor, query_key: u64) -> String {
    format!("s1.{:016x}.{}.{query_key:016x}", cursor.time.to_bits(), cursor.trace_id)
}

pub fn decode_summary_token(token: &str, query_key: u64) -> Option<SummaryCursor> {
    let mut parts = token.split('.');
    if parts.next()? != "s1" {
        return None;
    }
    let time = f64::from_bits(u64::from_str_radix(parts.next()?, 16).ok()?);
    let trace_id = TraceId::parse(parts.next()?).ok()?;
    let key = u64::from_str_radix(parts.next()?, 16).ok()?;
    (key == query_key && parts.next().is_none() && time.is_finite()).then_some(SummaryCursor { time, trace_id })
}

/// `BatchGetTraces` tokens: the index of the next requested id, bound to the id list.
pub fn encode_traces_token(next: usize, ids_key: u64) -> String {
    format!("t1.{next}.{ids_key:016x}")
}

pub fn encode_graph_token(next: usize, query_key: u64) -> String {
    format!("g1.{next}.{query_key:016x}")
}

pub fn decode_graph_token(token: &str, query_key: u64) -> Option<usize> {
    let rest = token.strip_prefix("g1.")?;
    let (next, key) = rest.split_once('.')?;
    (u64::from_str_radix(key, 16).ok()? == query_key).then(|| next.parse().ok()).flatten()
}

pub fn decode_traces_token(token: &str, ids_key: u64) -> Option<usize> {
    let rest = token.strip_prefix("t1.")?;
    let (next, key) = rest.split_once('.')?;
    (u64::from_str_radix(key, 16).ok()? == ids_key).then(|| next.parse().ok()).flatten()
}

/// A stable 64-bit FNV-1a hash, for binding tokens to their request.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let cursor = SummaryCursor { time: 1_700_000_123.5, trace_id: TraceId::from_parts(1, 2) };
        let token = encode_summary_token(cursor, 42);
        assert_eq!(decode_summary_token(&token, 42), Some(cursor));
        assert_eq!(decode_summary_token(&token, 43), None);
        assert_eq!(decode_summary_token("garbage", 42), None);
        assert_eq!(decode_traces_token(&encode_traces_token(7, 9), 9), Some(7));
        assert_eq!(decode_traces_token(&encode_traces_token(7, 9), 8), None);
        assert_eq!(decode_traces_token("t1.x.0", 0), None);
    }
}
