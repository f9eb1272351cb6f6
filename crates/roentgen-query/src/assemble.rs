//! Trace assembly, as `BatchGetTraces` returns a trace: one document per segment, with the
//! independent subsegments sent for it merged into its tree, plus an inferred segment for every
//! downstream call that no segment answered.
//!
//! A document that nothing was merged into is returned byte for byte as received. A merged one is
//! re-encoded: field order may change, values do not. A subsegment whose parent has not arrived
//! (or cannot be merged) is returned as its own document, so nothing stored is ever hidden.

use std::collections::{HashMap, HashSet};

use roentgen_model::{DocumentKind, Entity, ParsedDocument, SegmentId};
use serde_json::{Map, Value};

use crate::inferred::inferred_service;

/// Entities nested deeper than this are not merged into (their children stay separate
/// documents), so a merged document stays within what JSON parsers accept (serde_json's default
/// limit is 128 levels; each entity level is an object and an array).
const MAX_MERGE_DEPTH: usize = 32;

/// One document of an assembled trace.
#[derive(Debug, Clone, PartialEq)]
pub struct AssembledSegment {
    pub id: SegmentId,
    pub document: String,
}

/// Assembles a trace from its stored documents, each given as (bytes as received, parsed).
pub fn assemble(docs: &[(&str, &ParsedDocument)]) -> Vec<AssembledSegment> {
    let homes = homes(docs);
    let mut by_parent: HashMap<SegmentId, Vec<usize>> = HashMap::new();
    for (i, (_, doc)) in docs.iter().enumerate() {
        if let (DocumentKind::Subsegment, Some(parent)) = (doc.kind, doc.parent_id) {
            by_parent.entry(parent).or_default().push(i);
        }
    }
    let mut used = vec![false; docs.len()];
    let mut out = Vec::with_capacity(docs.len());
    for (i, (raw, doc)) in docs.iter().enumerate() {
        if homes[i] != Some(i) {
            continue;
        }
        let has_children = (0..docs.len()).any(|j| j != i && homes[j] == Some(i));
        let merged = has_children.then(|| merge(raw, doc, docs, &by_parent, &mut used)).flatten();
        out.push(AssembledSegment { id: doc.id(), document: merged.unwrap_or_else(|| (*raw).to_owned()) });
    }
    for (i, (raw, doc)) in docs.iter().enumerate() {
        if homes[i] != Some(i) && !used[i] {
            out.push(AssembledSegment { id: doc.id(), document: (*raw).to_owned() });
        }
    }
    out.extend(inferred_segments(docs));
    out
}

/// For each document, the segment document it belongs in: itself for a segment, the segment its
/// parent chain leads to for an independent subsegment, `None` for an orphan.
fn homes(docs: &[(&str, &ParsedDocument)]) -> Vec<Option<usize>> {
    let mut homes: Vec<Option<usize>> =
        docs.iter().enumerate().map(|(i, (_, d))| (d.kind == DocumentKind::Segment).then_some(i)).collect();
    let mut owner: HashMap<SegmentId, usize> = HashMap::new();
    let claim = |owner: &mut HashMap<SegmentId, usize>, entity: Entity<'_>, home: usize| {
        entity.walk(|e| {
            owner.entry(e.id()).or_insert(home);
        });
    };
    for (i, (_, doc)) in docs.iter().enumerate() {
        if let Some(home) = homes[i] {
            claim(&mut owner, doc.entity(), home);
        }
    }
    // Independent subsegments may hang off other independent subsegments: resolve until stable.
    loop {
        let mut progressed = false;
        for (i, (_, doc)) in docs.iter().enumerate() {
            if homes[i].is_none()
                && let Some(&home) = doc.parent_id.and_then(|p| owner.get(&p))
            {
                homes[i] = Some(home);
                claim(&mut owner, doc.entity(), home);
                progressed = true;
            }
        }
        if !progressed {
            return homes;
        }
    }
}

/// The segment's document with its independent subsegments merged in, or `None` when it cannot
/// be re-read as a JSON object.
fn merge(
    raw: &str,
    doc: &ParsedDocument,
    docs: &[(&str, &ParsedDocument)],
    by_parent: &HashMap<SegmentId, Vec<usize>>,
    used: &mut [bool],
) -> Option<String> {
    let Ok(Value::Object(mut root)) = serde_json::from_str::<Value>(raw) else { return None };
    let mut present = HashSet::new();
    doc.entity().walk(|e| {
        present.insert(e.id());
    });
    attach(&mut root, 0, docs, by_parent, used, &mut present);
    serde_json::to_string(&root).ok()
}

/// Appends to `node` (and, first, to its nested subsegments) the independent subsegments whose
/// parent it is. A subsegment already in the tree under the same id is not merged twice.
fn attach(
    node: &mut Map<String, Value>,
    depth: usize,
    docs: &[(&str, &ParsedDocument)],
    by_parent: &HashMap<SegmentId, Vec<usize>>,
    used: &mut [bool],
    present: &mut HashSet<SegmentId>,
) {
    if depth >= MAX_MERGE_DEPTH {
        return;
    }
    if let Some(Value::Array(subsegments)) = node.get_mut("subsegments") {
        for sub in subsegments {
            if let Value::Object(sub) = sub {
                attach(sub, depth + 1, docs, by_parent, used, present);
            }
        }
    }
    let Some(id) = node.get("id").and_then(Value::as_str).and_then(SegmentId::parse) else { return };
    let Some(children) = by_parent.get(&id) else { return };
    for &j in children {
        let (raw, child) = docs[j];
        if used[j] || present.contains(&child.id()) {
            continue;
        }
        let Ok(Value::Object(mut sub)) = serde_json::from_str::<Value>(raw) else { continue };
        used[j] = true;
        child.entity().walk(|e| {
            present.insert(e.id());
        });
        // Position in the tree says what these said.
        for key in ["type", "trace_id", "parent_id"] {
            sub.remove(key);
        }
        attach(&mut sub, depth + 1, docs, by_parent, used, present);
        match node.entry("subsegments").or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(list) => list.push(Value::Object(sub)),
            other => *other = Value::Array(vec![Value::Object(sub)]),
        }
    }
}

/// A segment X-Ray would infer for each `aws` or `remote` call that no segment answered: the
/// call's times, flags, `http`, `aws` and `cause`, with `inferred: true` and the node's type as
/// its `origin`.
fn inferred_segments(docs: &[(&str, &ParsedDocument)]) -> Vec<AssembledSegment> {
    let answered: HashSet<SegmentId> =
        docs.iter().filter(|(_, d)| d.kind == DocumentKind::Segment).filter_map(|(_, d)| d.parent_id).collect();
    let mut out = Vec::new();
    for (raw, doc) in docs {
        let top = doc.entity();
        let mut calls = Vec::new();
        top.walk(|e| {
            let is_segment = doc.kind == DocumentKind::Segment && e == top;
            if !is_segment && !answered.contains(&e.id()) && inferred_service(e).is_some() {
                calls.push(e);
            }
        });
        if calls.is_empty() {
            continue;
        }
        let value = serde_json::from_str::<Value>(raw).ok();
        for call in calls {
            let Some(key) = inferred_service(call) else { continue };
            let mut segment = Map::new();
            let id = SegmentId::from_u64(inferred_id(call.id().as_u64()));
            segment.insert("id".into(), id.to_string().into());
            segment.insert("name".into(), call.name().into());
            segment.insert("trace_id".into(), doc.trace_id.to_string().into());
            segment.insert("start_time".into(), call.start_time().into());
            match call.end_time() {
                Some(end) => segment.insert("end_time".into(), end.into()),
                None => segment.insert("in_progress".into(), true.into()),
            };
            segment.insert("parent_id".into(), call.id().to_string().into());
            segment.insert("inferred".into(), true.into());
            if let Some(origin) = key.kind {
                segment.insert("origin".into(), origin.as_str().into());
            }
            let source = value.as_ref().and_then(|v| find_entity(v, &call.id().to_string(), 0));
            for field in ["http", "aws", "error", "fault", "throttle", "cause"] {
                if let Some(v) = source.and_then(|s| s.get(field)) {
                    segment.insert(field.into(), v.clone());
                }
            }
            if let Ok(document) = serde_json::to_string(&segment) {
                out.push(AssembledSegment { id, document });
            }
        }
    }
    out
}

/// A stable id for the segment inferred for a call, so that every read returns the same one.
fn inferred_id(call: u64) -> u64 {
    let mut z = call.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn find_entity<'a>(value: &'a Value, id: &str, depth: usize) -> Option<&'a Map<String, Value>> {
    let object = value.as_object()?;
    if object.get("id").and_then(Value::as_str) == Some(id) {
        return Some(object);
    }
    if depth >= MAX_MERGE_DEPTH {
        return None;
    }
    object.get("subsegments")?.as_array()?.iter().find_map(|sub| find_entity(sub, id, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roentgen_model::{MAX_DOCUMENT_BYTES, parse_document};

    const TRACE: &str = "1-5759e988-bd862e3fe1be46a994272793";

    fn assembled(raw: &[String]) -> Vec<(SegmentId, Value)> {
        let parsed: Vec<ParsedDocument> =
            raw.iter().map(|d| parse_document(d.as_bytes(), MAX_DOCUMENT_BYTES).unwrap()).collect();
        let docs: Vec<(&str, &ParsedDocument)> = raw.iter().map(String::as_str).zip(&parsed).collect();
        assemble(&docs).into_iter().map(|s| (s.id, serde_json::from_str(&s.document).unwrap())).collect()
    }

    fn doc(body: &str) -> String {
        format!(r#"{{"trace_id":"{TRACE}",{body}}}"#)
    }

    /// An independent subsegment of one second or less.
    fn independent(id: u64, parent: u64, name: &str, start: f64, end: f64) -> String {
        doc(&format!(
            r#""id":"{id:016x}","type":"subsegment","parent_id":"{parent:016x}","name":"{name}","start_time":{start},"end_time":{end}"#
        ))
    }

    #[test]
    fn independent_subsegments_are_merged_into_their_segment() {
        let segment =
            doc(r#""id":"0000000000000001","name":"api","start_time":1,"end_time":5,"annotations":{"k":1.50},
            "subsegments":[{"id":"0000000000000002","name":"local","start_time":1,"end_time":2}]"#);
        let raw = vec![
            segment.clone(),
            independent(0x3, 0x2, "inner", 1.1, 1.2),
            independent(0x4, 0x3, "deeper", 1.1, 1.15),
            independent(0x5, 0x1, "late", 3.0, 4.0),
            independent(0x6, 0xff, "orphan", 3.0, 4.0),
        ];
        let out = assembled(&raw);
        let ids: Vec<String> = out.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(ids, ["0000000000000001", "0000000000000006"], "one document per segment, plus the orphan");
        let root = &out[0].1;
        assert_eq!(root["annotations"]["k"], 1.5);
        let subs = root["subsegments"].as_array().unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[1]["name"], "late");
        assert!(subs[1].get("type").is_none() && subs[1].get("parent_id").is_none());
        let inner = &subs[0]["subsegments"][0];
        assert_eq!((&inner["name"], &inner["subsegments"][0]["name"]), (&"inner".into(), &"deeper".into()));
    }

    #[test]
    fn a_document_nothing_merges_into_is_returned_as_received() {
        let raw = [doc(r#""id":"0000000000000001","name":"api","start_time":1.50,"end_time":5"#)];
        let parsed = parse_document(raw[0].as_bytes(), MAX_DOCUMENT_BYTES).unwrap();
        assert_eq!(assemble(&[(&raw[0], &parsed)])[0].document, raw[0]);
    }

    #[test]
    fn uninstrumented_calls_get_inferred_segments() {
        let raw = vec![
            doc(r#""id":"0000000000000001","name":"api","start_time":1,"end_time":5,"subsegments":[
                {"id":"0000000000000002","name":"DynamoDB","namespace":"aws","start_time":1,"end_time":2,"throttle":true,"error":true,
                 "aws":{"table_name":"orders","operation":"GetItem"},"http":{"response":{"status":400}}},
                {"id":"0000000000000003","name":"billing","namespace":"remote","start_time":2,"end_time":3},
                {"id":"0000000000000004","name":"local","start_time":3,"end_time":4}]"#),
            doc(
                r#""id":"0000000000000009","name":"billing","parent_id":"0000000000000003","start_time":2.1,"end_time":2.9"#,
            ),
        ];
        let out = assembled(&raw);
        assert_eq!(out.len(), 3, "two segments and the DynamoDB table; billing answered for itself");
        let (id, inferred) = &out[2];
        assert_eq!(inferred["id"], id.to_string());
        assert_eq!(inferred["name"], "DynamoDB");
        assert_eq!(inferred["origin"], "AWS::DynamoDB::Table");
        assert_eq!(inferred["parent_id"], "0000000000000002");
        assert_eq!(inferred["inferred"], true);
        assert_eq!(inferred["trace_id"], TRACE);
        assert_eq!((&inferred["start_time"], &inferred["end_time"]), (&1.0.into(), &2.0.into()));
        assert_eq!(inferred["aws"]["table_name"], "orders");
        assert_eq!(inferred["http"]["response"]["status"], 400);
        assert_eq!((&inferred["throttle"], &inferred["error"]), (&true.into(), &true.into()));
        assert_eq!(assembled(&raw)[2].0, *id, "the inferred id is stable");
    }

    #[test]
    fn cycles_and_self_parents_do_not_loop() {
        let raw = vec![
            doc(r#""id":"0000000000000001","name":"api","start_time":1,"end_time":5"#),
            independent(0x2, 0x3, "a", 1.0, 2.0),
            independent(0x3, 0x2, "b", 1.0, 2.0),
            independent(0x4, 0x4, "c", 1.0, 2.0),
        ];
        assert_eq!(assembled(&raw).len(), 4, "orphans stay as they are");
    }

    fn entity_count(value: &Value) -> usize {
        1 + value.get("subsegments").and_then(Value::as_array).map_or(0, |s| s.iter().map(entity_count).sum())
    }

    proptest::proptest! {
        /// Whatever the parent links (dangling, cyclic, duplicated ids), every entity sent comes
        /// back exactly once, merged or on its own.
        #[test]
        fn every_entity_comes_back_once(links in proptest::collection::vec((0u64..12, 0u64..14, proptest::bool::ANY), 1..12)) {
            let raw: Vec<String> = links
                .iter()
                .map(|&(id, parent, segment)| {
                    let kind = if segment { "" } else { r#""type":"subsegment","# };
                    doc(&format!(
                        r#"{kind}"id":"{id:016x}","parent_id":"{parent:016x}","name":"n","start_time":1,"end_time":2,
                        "subsegments":[{{"id":"{:016x}","name":"inner","start_time":1,"end_time":2}}]"#,
                        id + 100
                    ))
                })
                .collect();
            let out = assembled(&raw);
            let sent = 2 * raw.len();
            let returned: usize = out.iter().filter(|(_, v)| v.get("inferred").is_none()).map(|(_, v)| entity_count(v)).sum();
            proptest::prop_assert_eq!(returned, sent);
        }
    }

    #[test]
    fn a_chain_deeper_than_the_merge_limit_loses_nothing() {
        let mut raw = vec![doc(r#""id":"0000000000000001","name":"api","start_time":1,"end_time":5"#)];
        for n in 2..(MAX_MERGE_DEPTH as u64 + 20) {
            raw.push(doc(&format!(
                r#""id":"{n:016x}","type":"subsegment","parent_id":"{:016x}","name":"s","start_time":1,"end_time":2"#,
                n - 1
            )));
        }
        let out = assembled(&raw);
        let mut count = 0;
        for (_, value) in &out {
            let mut at = Some(value);
            while let Some(v) = at {
                count += 1;
                at = v.get("subsegments").and_then(|s| s.get(0));
            }
        }
        assert_eq!(count, raw.len(), "every document appears once, merged or on its own");
    }
}
