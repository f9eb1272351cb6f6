//! Segment documents: parsing, validation with X-Ray's error codes, and the parsed entity tree.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::ids::{SegmentId, TraceId};
use crate::wire::{
    Items, MapOr, Scalar, WireAws, WireCause, WireEntity, WireHttp, WireLink, WireTraceId, ignore_leaves,
};

/// X-Ray's limit on one segment document.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// X-Ray's limit on a segment name.
pub const MAX_NAME_CHARS: usize = 200;
const MAX_ANNOTATION_KEY_CHARS: usize = 500;
const MAX_ANNOTATION_VALUE_CHARS: usize = 1000;

/// The `ErrorCode` of an entry in `UnprocessedTraceSegments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentErrorCode {
    /// Not JSON, or not a JSON object at all.
    InvalidSegment,
    SegmentTooLarge,
    MissingId,
    InvalidId,
    MissingTraceId,
    InvalidTraceId,
    MissingName,
    InvalidName,
    MissingStartTime,
    InvalidStartTime,
    MissingEndTime,
    InvalidEndTime,
    MissingParentId,
    InvalidParentId,
    InvalidType,
}

impl DocumentErrorCode {
    pub const ALL: [DocumentErrorCode; 15] = [
        Self::InvalidSegment,
        Self::SegmentTooLarge,
        Self::MissingId,
        Self::InvalidId,
        Self::MissingTraceId,
        Self::InvalidTraceId,
        Self::MissingName,
        Self::InvalidName,
        Self::MissingStartTime,
        Self::InvalidStartTime,
        Self::MissingEndTime,
        Self::InvalidEndTime,
        Self::MissingParentId,
        Self::InvalidParentId,
        Self::InvalidType,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSegment => "InvalidSegment",
            Self::SegmentTooLarge => "SegmentTooLarge",
            Self::MissingId => "MissingId",
            Self::InvalidId => "InvalidId",
            Self::MissingTraceId => "MissingTraceId",
            Self::InvalidTraceId => "InvalidTraceId",
            Self::MissingName => "MissingName",
            Self::InvalidName => "InvalidName",
            Self::MissingStartTime => "MissingStartTime",
            Self::InvalidStartTime => "InvalidStartTime",
            Self::MissingEndTime => "MissingEndTime",
            Self::InvalidEndTime => "InvalidEndTime",
            Self::MissingParentId => "MissingParentId",
            Self::InvalidParentId => "InvalidParentId",
            Self::InvalidType => "InvalidType",
        }
    }
}

impl fmt::Display for DocumentErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected document: what `UnprocessedTraceSegments` reports about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct DocumentError {
    pub code: DocumentErrorCode,
    /// The top-level document's `id` when it could be read, as X-Ray reports it.
    pub id: Option<String>,
    /// True when the offending entity is a subsegment embedded in the document.
    pub in_subsegment: bool,
    pub detail: String,
}

impl DocumentError {
    /// X-Ray's message shape, with the cause filled in so a user can act on it.
    pub fn message(&self) -> String {
        let kind = if self.in_subsegment { "subsegment" } else { "segment" };
        format!("Invalid {kind}. ErrorCode: {}, Cause: {}", self.code, self.detail)
    }
}

/// Text of a parsed document. Most of a segment's strings (names, methods, annotation keys and
/// values) are under 24 bytes and are held inline, with no allocation of their own: live traces
/// hold millions of them, each allocated at parse and freed at flush.
pub type Text = compact_str::CompactString;

/// A typed annotation value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnnotationValue {
    String(Text),
    Number(f64),
    Bool(bool),
}

impl Eq for AnnotationValue {}

impl std::hash::Hash for AnnotationValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Self::String(s) => (0u8, s).hash(state),
            Self::Number(n) => (1u8, n.to_bits()).hash(state),
            Self::Bool(b) => (2u8, b).hash(state),
        }
    }
}

/// The `http` block: only what is indexed or summarised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Http {
    pub method: Option<Text>,
    pub url: Option<Text>,
    pub user_agent: Option<Text>,
    pub client_ip: Option<Text>,
    pub status: Option<u16>,
    pub traced: bool,
}

/// The `aws` block: only what is indexed or summarised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aws {
    pub account_id: Option<Text>,
    pub instance_id: Option<Text>,
    pub availability_zone: Option<Text>,
    pub operation: Option<Text>,
    pub table_name: Option<Text>,
    pub queue_url: Option<Text>,
}

/// An exception recorded in a `cause`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exception {
    pub kind: Option<Text>,
    pub message: Option<Text>,
    /// The exception came from a downstream service.
    pub remote: bool,
}

/// A segment or subsegment, reduced to the fields roentgen indexes; the original document is kept
/// byte for byte beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub id: SegmentId,
    pub name: Text,
    pub start_time: f64,
    pub end_time: Option<f64>,
    pub in_progress: bool,
    pub error: bool,
    pub fault: bool,
    pub throttle: bool,
    pub namespace: Option<Text>,
    pub origin: Option<Text>,
    pub user: Option<Text>,
    pub resource_arn: Option<Text>,
    /// Boxed, as `aws` is: most entities have one or neither, and live traces hold many entities.
    pub http: Option<Box<Http>>,
    pub aws: Option<Box<Aws>>,
    pub annotations: Vec<(Text, AnnotationValue)>,
    pub exceptions: Vec<Exception>,
    pub subsegments: Vec<Entity>,
    /// The entities this one follows from in other traces (asynchronous links), at most
    /// [`MAX_LINKS`]; links whose ids are not valid are left out.
    pub links: Vec<Link>,
}

/// X-Ray links a segment to at most 20 traces.
pub const MAX_LINKS: usize = 20;

/// An asynchronous link to an entity of another trace, such as the call that sent the message
/// this segment consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link {
    pub trace_id: TraceId,
    pub id: SegmentId,
}

impl Entity {
    /// The latest time this entity is known to cover: its end, or its start while in progress.
    pub fn last_time(&self) -> f64 {
        self.end_time.unwrap_or(self.start_time)
    }

    /// Calls `f` on this entity and every nested subsegment, depth first.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Entity)) {
        f(self);
        for sub in &self.subsegments {
            sub.walk(f);
        }
    }
}

/// Whether a document is a segment or an independent subsegment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DocumentKind {
    Segment,
    Subsegment,
}

/// A validated segment document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedDocument {
    pub trace_id: TraceId,
    pub parent_id: Option<SegmentId>,
    pub kind: DocumentKind,
    pub entity: Entity,
    /// Annotations dropped because of their key or value, as X-Ray drops them silently.
    pub dropped_annotations: u32,
}

impl ParsedDocument {
    pub fn id(&self) -> SegmentId {
        self.entity.id
    }

    /// True when this document or any subsegment in it is still in progress.
    pub fn any_in_progress(&self) -> bool {
        let mut any = false;
        self.entity.walk(&mut |e| any |= e.in_progress);
        any
    }
}

/// Parses and validates one segment document.
pub fn parse_document(bytes: &[u8], max_bytes: usize) -> Result<ParsedDocument, DocumentError> {
    parse_document_and_text(bytes, max_bytes).map(|(_, parsed)| parsed)
}

/// [`parse_document`] that also gives the document back as text, so a caller that keeps it
/// does not check its UTF-8 a second time.
pub fn parse_document_and_text(bytes: &[u8], max_bytes: usize) -> Result<(&str, ParsedDocument), DocumentError> {
    check_size(bytes, max_bytes)?;
    // Documents are returned inside JSON strings, so they must be UTF-8 throughout, not only in
    // the parts serde reads.
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not valid UTF-8: {e}")))?;
    Ok((text, parse_valid_text(text)?))
}

/// [`parse_document`] for a document already known to be UTF-8, such as one decoded from a
/// JSON string: the check is not made twice.
pub fn parse_document_text(text: &str, max_bytes: usize) -> Result<ParsedDocument, DocumentError> {
    check_size(text.as_bytes(), max_bytes)?;
    parse_valid_text(text)
}

fn check_size(bytes: &[u8], max_bytes: usize) -> Result<(), DocumentError> {
    if bytes.len() > max_bytes {
        return Err(DocumentError {
            code: DocumentErrorCode::SegmentTooLarge,
            id: sniff_id(bytes),
            in_subsegment: false,
            detail: format!("document is {} bytes, over the limit of {max_bytes}", bytes.len()),
        });
    }
    Ok(())
}

fn invalid(detail: String) -> DocumentError {
    DocumentError { code: DocumentErrorCode::InvalidSegment, id: None, in_subsegment: false, detail }
}

fn parse_valid_text(text: &str) -> Result<ParsedDocument, DocumentError> {
    let value: MapOr<WireEntity> = serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let Some(wire) = value.0 else {
        return Err(DocumentError {
            code: DocumentErrorCode::MissingId,
            id: None,
            in_subsegment: false,
            detail: "document is not a JSON object".to_owned(),
        });
    };
    document(wire)
}

/// Best effort at the `id` of a document too large to parse, so the client can tell which it was.
fn sniff_id(bytes: &[u8]) -> Option<String> {
    let key = b"\"id\"";
    let at = bytes.windows(key.len()).position(|w| w == key)?;
    let rest = &bytes[at + key.len()..];
    let rest = rest.trim_ascii_start().strip_prefix(b":")?.trim_ascii_start().strip_prefix(b"\"")?;
    let id = rest.get(..16)?;
    let id = std::str::from_utf8(id).ok()?;
    SegmentId::parse(id).map(|_| id.to_owned())
}

/// A document's subsegments, each validated as soon as it is read rather than kept as it
/// arrived: the entities, or the first error in document order, and the annotations dropped.
#[derive(Debug)]
pub(crate) struct Subsegments {
    entities: Result<Vec<Entity>, DocumentError>,
    dropped_annotations: u32,
}

impl Default for Subsegments {
    fn default() -> Self {
        Self { entities: Ok(Vec::new()), dropped_annotations: 0 }
    }
}

impl<'de> Deserialize<'de> for Subsegments {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Subsegments;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Subsegments, A::Error> {
                let mut dropped_annotations = 0;
                let pending = PendingSubsegments::begin();
                loop {
                    let child = match seq.next_element::<MapOr<WireEntity>>()? {
                        None => break,
                        Some(MapOr(Some(child))) => entity(child, true, &mut dropped_annotations),
                        Some(MapOr(None)) => {
                            Err(fail(DocumentErrorCode::MissingId, true, "a subsegment is not a JSON object".into()))
                        }
                    };
                    match child {
                        Ok(child) => pending.push(child),
                        Err(e) => {
                            // The rest are still read in full: a malformed one (a duplicate
                            // field, a number out of range) makes the document invalid JSON,
                            // which is reported before any field's error.
                            while seq.next_element::<MapOr<WireEntity>>()?.is_some() {}
                            return Ok(Subsegments { entities: Err(e), dropped_annotations });
                        }
                    }
                }
                Ok(Subsegments { entities: Ok(pending.finish()), dropped_annotations })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Subsegments, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Subsegments::default())
            }
            ignore_leaves!(Subsegments::default());
        }
        d.deserialize_any(V)
    }
}

thread_local! {
    /// Subsegments read but whose array is not finished yet, innermost array last. JSON gives no
    /// length up front: growing each array's own vector would allocate four times for twenty
    /// subsegments and keep up to twice the room needed, for as long as the trace is live.
    static PENDING_SUBSEGMENTS: std::cell::RefCell<Vec<Entity>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One subsegment array being read: its entities sit on [`PENDING_SUBSEGMENTS`] above `start`
/// until the array ends, and are taken off whatever the outcome, a nested array's first.
struct PendingSubsegments {
    start: usize,
}

impl PendingSubsegments {
    fn begin() -> Self {
        Self { start: PENDING_SUBSEGMENTS.with_borrow(Vec::len) }
    }

    fn push(&self, entity: Entity) {
        PENDING_SUBSEGMENTS.with_borrow_mut(|pending| pending.push(entity));
    }

    /// The array's entities, in a vector of exactly their number.
    fn finish(self) -> Vec<Entity> {
        PENDING_SUBSEGMENTS.with_borrow_mut(|pending| pending.drain(self.start..).collect())
    }
}

impl Drop for PendingSubsegments {
    fn drop(&mut self) {
        PENDING_SUBSEGMENTS.with_borrow_mut(|pending| pending.truncate(self.start));
    }
}

/// An entity's annotations, read straight into typed values. X-Ray drops an annotation whose
/// value is not a string, number or boolean, or whose key or value is not valid, without failing
/// the document; a repeated key keeps its first place and takes the later value.
#[derive(Debug, Default)]
pub(crate) struct Annotations {
    values: Vec<(Text, AnnotationValue)>,
    dropped: u32,
}

impl Annotations {
    fn add(&mut self, key: Text, value: Scalar) {
        let value = match value {
            Scalar::Str(s) if s.chars().count() <= MAX_ANNOTATION_VALUE_CHARS => AnnotationValue::String(s),
            Scalar::Num(n) => AnnotationValue::Number(n),
            Scalar::Bool(b) => AnnotationValue::Bool(b),
            _ => {
                self.dropped += 1;
                return;
            }
        };
        if !valid_annotation_key(&key) {
            self.dropped += 1;
            return;
        }
        match self.values.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.values.push((key, value)),
        }
    }
}

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Annotations;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
                let mut annotations = Annotations::default();
                while let Some((key, value)) = map.next_entry::<Text, Scalar>()? {
                    annotations.add(key, value);
                }
                Ok(annotations)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Annotations, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Annotations::default())
            }
            ignore_leaves!(Annotations::default());
        }
        d.deserialize_any(V)
    }
}

/// The `http` block, as the entity keeps it.
#[derive(Debug, Default)]
pub(crate) struct HttpBlock(pub Option<Box<Http>>);

impl<'de> Deserialize<'de> for HttpBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOr(wire) = MapOr::<WireHttp>::deserialize(d)?;
        Ok(HttpBlock(wire.map(|h| {
            let req = h.request.0.unwrap_or_default();
            let status = h.response.0.and_then(|r| r.status.as_number());
            Box::new(Http {
                method: req.method.into_string(),
                url: req.url.into_string(),
                user_agent: req.user_agent.into_string(),
                client_ip: req.client_ip.into_string(),
                status: status.filter(|s| (0.0..=999.0).contains(s)).map(|s| s as u16),
                traced: req.traced.truthy(),
            })
        })))
    }
}

/// The `aws` block, as the entity keeps it.
#[derive(Debug, Default)]
pub(crate) struct AwsBlock(pub Option<Box<Aws>>);

impl<'de> Deserialize<'de> for AwsBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOr(wire) = MapOr::<WireAws>::deserialize(d)?;
        Ok(AwsBlock(wire.map(|a| {
            let ec2 = a.ec2.0.unwrap_or_default();
            Box::new(Aws {
                account_id: a.account_id.into_string(),
                instance_id: ec2.instance_id.into_string(),
                availability_zone: ec2.availability_zone.into_string(),
                operation: a.operation.into_string(),
                table_name: a.table_name.into_string(),
                queue_url: a.queue_url.into_string(),
            })
        })))
    }
}

/// The exceptions of a `cause` object.
#[derive(Debug, Default)]
pub(crate) struct Exceptions(pub Vec<Exception>);

impl<'de> Deserialize<'de> for Exceptions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOr(cause) = MapOr::<WireCause>::deserialize(d)?;
        let exceptions = cause.map(|c| {
            c.exceptions.0.into_iter().flatten().map(|e| Exception {
                kind: e.kind.into_string(),
                message: e.message.into_string(),
                remote: e.remote.truthy(),
            })
        });
        Ok(Exceptions(exceptions.map(Iterator::collect).unwrap_or_default()))
    }
}

/// Span links, at most [`MAX_LINKS`]; links whose ids are not valid are left out.
#[derive(Debug, Default)]
pub(crate) struct Links(pub Vec<Link>);

impl<'de> Deserialize<'de> for Links {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Items(links) = Items::<WireLink>::deserialize(d)?;
        let valid = links.into_iter().flatten().filter_map(|link| {
            let trace_id = TraceId::parse(link.trace_id.as_str()?).ok()?;
            Some(Link { trace_id, id: SegmentId::parse(link.id.as_str()?)? })
        });
        Ok(Links(valid.take(MAX_LINKS).collect()))
    }
}

/// An error without the document's id, which [`document`] adds to every error it returns.
fn fail(code: DocumentErrorCode, in_subsegment: bool, detail: String) -> DocumentError {
    DocumentError { code, id: None, in_subsegment, detail }
}

fn document(mut wire: WireEntity) -> Result<ParsedDocument, DocumentError> {
    // A 16-digit id is held inline: copied out as a `String` only for an error.
    let top_id = wire.id.clone();
    let mut dropped_annotations = 0;
    let mut checked = || {
        let trace_id = match std::mem::take(&mut wire.trace_id) {
            WireTraceId::Text(parsed) => {
                parsed.map_err(|e| fail(DocumentErrorCode::InvalidTraceId, false, e.to_string()))?
            }
            WireTraceId::NotText(s) if s.is_missing() => {
                return Err(fail(DocumentErrorCode::MissingTraceId, false, "trace_id is missing".into()));
            }
            WireTraceId::NotText(other) => {
                return Err(fail(
                    DocumentErrorCode::InvalidTraceId,
                    false,
                    format!("trace_id must be a string, not {}", describe(&other)),
                ));
            }
        };
        let kind = match &wire.kind {
            s if s.is_missing() => DocumentKind::Segment,
            Scalar::Str(s) if s == "subsegment" => DocumentKind::Subsegment,
            other => {
                return Err(fail(
                    DocumentErrorCode::InvalidType,
                    false,
                    format!("type must be \"subsegment\" or absent, not {}", describe(other)),
                ));
            }
        };
        let parent_id = match std::mem::take(&mut wire.parent_id) {
            s if s.is_missing() => None,
            Scalar::Str(s) => Some(SegmentId::parse(&s).ok_or_else(|| {
                fail(DocumentErrorCode::InvalidParentId, false, format!("parent_id {s:?} is not 16 hex digits"))
            })?),
            other => {
                return Err(fail(
                    DocumentErrorCode::InvalidParentId,
                    false,
                    format!("parent_id must be a string, not {}", describe(&other)),
                ));
            }
        };
        if kind == DocumentKind::Subsegment && parent_id.is_none() {
            return Err(fail(
                DocumentErrorCode::MissingParentId,
                false,
                "an independent subsegment needs a parent_id".into(),
            ));
        }
        let entity = entity(std::mem::take(&mut wire), false, &mut dropped_annotations)?;
        Ok(ParsedDocument { trace_id, parent_id, kind, entity, dropped_annotations })
    };
    checked().map_err(|e| DocumentError { id: top_id.as_str().map(str::to_owned), ..e })
}

/// Validates one entity whose subsegments were validated as they were read: its own fields
/// first, then the first error among its subsegments, as X-Ray reports them.
fn entity(wire: WireEntity, sub: bool, dropped_annotations: &mut u32) -> Result<Entity, DocumentError> {
    let id = match &wire.id {
        s if s.is_missing() => return Err(fail(DocumentErrorCode::MissingId, sub, "id is missing".into())),
        Scalar::Str(s) => SegmentId::parse(s)
            .ok_or_else(|| fail(DocumentErrorCode::InvalidId, sub, format!("id {s:?} is not 16 hex digits")))?,
        other => {
            return Err(fail(
                DocumentErrorCode::InvalidId,
                sub,
                format!("id must be a string, not {}", describe(other)),
            ));
        }
    };
    let name = match wire.name {
        s if s.is_missing() => {
            return Err(fail(DocumentErrorCode::MissingName, sub, "name is missing".into()));
        }
        Scalar::Str(s) => {
            if let Some(problem) = name_problem(&s) {
                return Err(fail(DocumentErrorCode::InvalidName, sub, problem));
            }
            s
        }
        other => {
            return Err(fail(
                DocumentErrorCode::InvalidName,
                sub,
                format!("name must be a string, not {}", describe(&other)),
            ));
        }
    };
    let start_time = epoch_seconds(&wire.start_time, "start_time", DocumentErrorCode::InvalidStartTime, sub)?
        .ok_or_else(|| fail(DocumentErrorCode::MissingStartTime, sub, "start_time is missing".into()))?;
    let in_progress = wire.in_progress.0;
    let end_time = epoch_seconds(&wire.end_time, "end_time", DocumentErrorCode::InvalidEndTime, sub)?;
    if end_time.is_none() && !in_progress {
        return Err(fail(
            DocumentErrorCode::MissingEndTime,
            sub,
            "end_time is missing and in_progress is not true".into(),
        ));
    }
    let subsegments = wire.subsegments.entities?;
    *dropped_annotations += wire.subsegments.dropped_annotations + wire.annotations.dropped;
    Ok(Entity {
        id,
        name,
        start_time,
        end_time,
        in_progress: in_progress && end_time.is_none(),
        error: wire.error.0,
        fault: wire.fault.0,
        throttle: wire.throttle.0,
        namespace: wire.namespace.into_string(),
        origin: wire.origin.into_string(),
        user: wire.user.into_string(),
        resource_arn: wire.resource_arn.into_string(),
        http: wire.http.0,
        aws: wire.aws.0,
        annotations: wire.annotations.values,
        exceptions: wire.cause.0,
        subsegments,
        links: wire.links.0,
    })
}

/// A time field: `None` when absent or null, else epoch seconds as a non-negative number.
fn epoch_seconds(
    value: &Scalar,
    field: &str,
    invalid: DocumentErrorCode,
    sub: bool,
) -> Result<Option<f64>, DocumentError> {
    match value {
        s if s.is_missing() => Ok(None),
        Scalar::Num(n) if n.is_finite() && *n >= 0.0 => Ok(Some(*n)),
        other => Err(fail(
            invalid,
            sub,
            format!("{field} must be epoch seconds as a non-negative number, not {}", describe(other)),
        )),
    }
}

/// Keys must be alphanumeric or underscore to work in filters; dots are accepted since 2024.
fn valid_annotation_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_ANNOTATION_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// X-Ray's name rule: 1 to 200 of Unicode letters, numbers, separators and `_ . : / % & # = + \ - @`.
fn name_problem(name: &str) -> Option<String> {
    let count = name.chars().count();
    if count == 0 {
        return Some("name is empty".into());
    }
    if count > MAX_NAME_CHARS {
        return Some(format!("name is {count} characters, over the limit of {MAX_NAME_CHARS}"));
    }
    let bad = name.chars().find(|&c| !valid_name_char(c))?;
    Some(format!("name {name:?} contains {bad:?}; allowed are letters, numbers, spaces and _ . : / % & # = + \\ - @"))
}

fn valid_name_char(c: char) -> bool {
    c.is_alphanumeric() || is_unicode_separator(c) || "_.:/%&#=+\\-@".contains(c)
}

/// Unicode general category Z (space, line and paragraph separators).
fn is_unicode_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

fn describe(value: &Scalar) -> String {
    match value {
        Scalar::Absent => "nothing".into(),
        Scalar::Null => "null".into(),
        Scalar::Str(s) if s.len() > 40 => format!("the string {:?}…", s.chars().take(40).collect::<String>()),
        Scalar::Str(s) => format!("the string {s:?}"),
        Scalar::Num(n) => format!("the number {n}"),
        Scalar::Bool(b) => format!("{b}"),
        Scalar::Other => "an object or array".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRACE: &str = "1-581cf771-a006649127e371903a2de979";

    fn parse(json: &str) -> Result<ParsedDocument, DocumentError> {
        parse_document(json.as_bytes(), MAX_DOCUMENT_BYTES)
    }

    fn code(json: &str) -> DocumentErrorCode {
        parse(json).unwrap_err().code
    }

    #[test]
    fn parses_minimal_documented_segment() {
        let doc = parse(r#"{"name":"example.com","id":"70de5b6f19ff9a0a","start_time":1.478293361271E9,"trace_id":"1-581cf771-a006649127e371903a2de979","end_time":1.478293361449E9}"#).unwrap();
        assert_eq!(doc.trace_id.to_string(), TRACE);
        assert_eq!(doc.entity.name, "example.com");
        assert_eq!(doc.kind, DocumentKind::Segment);
        assert!((doc.entity.end_time.unwrap() - 1_478_293_361.449).abs() < 1e-6);
    }

    #[test]
    fn parses_rich_segment() {
        let doc = parse(&format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"api","start_time":10,"end_time":11,
            "fault":true,"user":"alice","origin":"AWS::EC2::Instance",
            "http":{{"request":{{"method":"GET","url":"http://x/y","client_ip":"1.2.3.4"}},"response":{{"status":"503","content_length":"12"}}}},
            "aws":{{"account_id":"123456789012","ec2":{{"instance_id":"i-1","availability_zone":"us-east-1a"}}}},
            "annotations":{{"tenant":"acme","n":3,"ok":false,"bad key":1,"obj":{{}}}},
            "metadata":{{"default":{{"deep":[1,2,{{"x":null}}]}}}},
            "subsegments":[{{"id":"70de5b6f19ff9a0b","name":"DynamoDB","start_time":10.1,"end_time":10.2,"namespace":"aws",
               "aws":{{"operation":"GetItem","table_name":"users"}},"throttle":true,"error":true}}]}}"#
        ))
        .unwrap();
        let e = &doc.entity;
        assert!(e.fault);
        assert_eq!(e.http.as_ref().unwrap().status, Some(503));
        assert_eq!(e.aws.as_ref().unwrap().instance_id.as_deref(), Some("i-1"));
        assert_eq!(e.annotations.len(), 3);
        assert_eq!(doc.dropped_annotations, 2);
        assert_eq!(e.subsegments[0].aws.as_ref().unwrap().table_name.as_deref(), Some("users"));
        assert!(e.subsegments[0].throttle);
    }

    #[test]
    fn exceptions_from_cause() {
        let doc = parse(&format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,
            "cause":{{"working_directory":"/app","exceptions":[{{"id":"0000000000000001","type":"IOError","message":"disk full","remote":true,"stack":[{{"path":"a.py","line":3}}]}},"junk"]}},
            "subsegments":[{{"id":"70de5b6f19ff9a0b","name":"b","start_time":1,"end_time":2,"cause":"0000000000000001"}}]}}"#
        ))
        .unwrap();
        let e = &doc.entity.exceptions;
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].kind.as_deref(), e[0].message.as_deref(), e[0].remote),
            (Some("IOError"), Some("disk full"), true)
        );
        assert!(doc.entity.subsegments[0].exceptions.is_empty(), "a cause that is an id refers elsewhere");
    }

    #[test]
    fn error_codes() {
        let t = TRACE;
        assert_eq!(code("not json"), DocumentErrorCode::InvalidSegment);
        assert_eq!(code("[]"), DocumentErrorCode::MissingId);
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","name":"a","start_time":1,"end_time":2}}"#)),
            DocumentErrorCode::MissingId
        );
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"xyz","name":"a","start_time":1,"end_time":2}}"#)),
            DocumentErrorCode::InvalidId
        );
        assert_eq!(
            code(r#"{"id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2}"#),
            DocumentErrorCode::MissingTraceId
        );
        assert_eq!(
            code(r#"{"trace_id":"1-abc","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2}"#),
            DocumentErrorCode::InvalidTraceId
        );
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","start_time":1,"end_time":2}}"#)),
            DocumentErrorCode::MissingName
        );
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a,b","start_time":1,"end_time":2}}"#)),
            DocumentErrorCode::InvalidName
        );
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","end_time":2}}"#)),
            DocumentErrorCode::MissingStartTime
        );
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":"x","end_time":2}}"#)),
            DocumentErrorCode::InvalidStartTime
        );
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":1}}"#)),
            DocumentErrorCode::MissingEndTime
        );
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":true}}"#)),
            DocumentErrorCode::InvalidEndTime
        );
        assert_eq!(
            code(&format!(
                r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"type":"subsegment"}}"#
            )),
            DocumentErrorCode::MissingParentId
        );
        assert_eq!(
            code(&format!(
                r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"parent_id":"q"}}"#
            )),
            DocumentErrorCode::InvalidParentId
        );
        assert_eq!(
            code(&format!(
                r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"type":"span"}}"#
            )),
            DocumentErrorCode::InvalidType
        );
        assert_eq!(code(r#"{"start_time":1e400}"#), DocumentErrorCode::InvalidSegment);
    }

    #[test]
    fn subsegment_errors_name_the_top_level_id() {
        let err = parse(&format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,
            "subsegments":[{{"id":"70de5b6f19ff9a0b","name":"b","start_time":1}}]}}"#
        ))
        .unwrap_err();
        assert_eq!(err.code, DocumentErrorCode::MissingEndTime);
        assert_eq!(err.id.as_deref(), Some("70de5b6f19ff9a0a"));
        assert!(err.message().starts_with("Invalid subsegment. ErrorCode: MissingEndTime, Cause: "));
    }

    #[test]
    fn in_progress_and_independent_subsegments() {
        let doc = parse(&format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"in_progress":true}}"#
        ))
        .unwrap();
        assert!(doc.entity.in_progress && doc.any_in_progress());
        let doc = parse(&format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0c","name":"b","start_time":1,"end_time":2,"type":"subsegment","parent_id":"70de5b6f19ff9a0a"}}"#
        ))
        .unwrap();
        assert_eq!(doc.kind, DocumentKind::Subsegment);
        assert_eq!(doc.parent_id.unwrap().to_string(), "70de5b6f19ff9a0a");
    }

    #[test]
    fn oversized_document_reports_its_id() {
        let padding = "x".repeat(MAX_DOCUMENT_BYTES);
        let json = format!(r#"{{"id": "70de5b6f19ff9a0a","trace_id":"{TRACE}","pad":"{padding}"}}"#);
        let err = parse(&json).unwrap_err();
        assert_eq!(err.code, DocumentErrorCode::SegmentTooLarge);
        assert_eq!(err.id.as_deref(), Some("70de5b6f19ff9a0a"));
        assert_eq!(parse_document_text(&json, MAX_DOCUMENT_BYTES).unwrap_err(), err);
    }

    #[test]
    fn malformed_json_after_an_invalid_subsegment_is_still_malformed() {
        let sub = |name: &str, extra: &str| {
            format!(r#"{{"id":"70de5b6f19ff9a0b","name":"{name}","start_time":1,"end_time":2{extra}}}"#)
        };
        let doc = |subs: &[String]| {
            format!(
                r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"subsegments":[{}]}}"#,
                subs.join(",")
            )
        };
        let bad_name = sub("x!", "");
        assert_eq!(code(&doc(std::slice::from_ref(&bad_name))), DocumentErrorCode::InvalidName);
        // Subsegments are validated as they are read; those after the first invalid one must
        // still be read in full, so that invalid JSON is reported first, as before.
        for malformed in [sub("s", r#","id":"70de5b6f19ff9a0c""#), sub("s", r#","error":1e400"#)] {
            let both = doc(&[bad_name.clone(), malformed]);
            assert_eq!(code(&both), DocumentErrorCode::InvalidSegment, "{both}");
        }
    }

    #[test]
    fn subsegment_arrays_are_exactly_their_size_and_failures_leave_nothing_behind() {
        let sub =
            |n: u64, extra: &str| format!(r#"{{"id":"{n:016x}","name":"s{n}","start_time":1,"end_time":2{extra}}}"#);
        let doc = |subs: &[String]| {
            format!(
                r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"subsegments":[{}]}}"#,
                subs.join(",")
            )
        };
        let nested = |n: u64, inner: &[String]| sub(n, &format!(r#","subsegments":[{}]"#, inner.join(",")));
        // Failures inside nested arrays (a field, a duplicate key, a truncation), then a good document.
        let bad_id = r#"{"id":"zz","name":"s","start_time":1,"end_time":2}"#.to_owned();
        let inner_bad = nested(1, &[sub(2, ""), nested(3, &[sub(4, ""), bad_id])]);
        assert_eq!(code(&doc(&[sub(9, ""), inner_bad])), DocumentErrorCode::InvalidId);
        let inner_bad = nested(1, &[sub(2, ""), sub(3, r#","name":"again""#)]);
        assert_eq!(code(&doc(&[sub(9, ""), inner_bad])), DocumentErrorCode::InvalidSegment);
        let whole = doc(&[nested(1, &[sub(2, ""), sub(3, "")])]);
        assert_eq!(code(&whole[..whole.len() - 10]), DocumentErrorCode::InvalidSegment);
        assert_eq!(PENDING_SUBSEGMENTS.with_borrow(Vec::len), 0);

        let twenty: Vec<String> = (1..=20).map(|n| sub(n, "")).collect();
        let parsed = parse(&doc(&[nested(100, &twenty), sub(101, "")])).unwrap();
        let top = &parsed.entity.subsegments;
        assert_eq!((top.len(), top.capacity()), (2, 2));
        assert_eq!((top[0].subsegments.len(), top[0].subsegments.capacity()), (20, 20));
        let names: Vec<&str> = top[0].subsegments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, (1..=20).map(|n| format!("s{n}")).collect::<Vec<_>>());
        assert!(top[1].subsegments.is_empty());
        assert_eq!(PENDING_SUBSEGMENTS.with_borrow(Vec::len), 0);
    }

    #[test]
    fn text_already_known_to_be_utf8_parses_the_same() {
        let good =
            format!(r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"é","start_time":1,"end_time":2}}"#);
        assert_eq!(parse_document_text(&good, MAX_DOCUMENT_BYTES).unwrap(), parse(&good).unwrap());
        let bad = format!(r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","start_time":1,"end_time":2}}"#);
        assert_eq!(parse_document_text(&bad, MAX_DOCUMENT_BYTES).unwrap_err(), parse(&bad).unwrap_err());
    }

    #[test]
    fn deep_nesting_is_handled_without_recursion() {
        let json = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert_eq!(code(&json), DocumentErrorCode::MissingId);
        let deep = format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"metadata":{}1{}}}"#,
            r#"{"a":"#.repeat(5_000),
            "}".repeat(5_000)
        );
        assert!(parse(&deep).is_ok());
        let deep_subsegments = format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"subsegments":{}{}}}"#,
            r#"[{"subsegments":"#.repeat(1_000),
            "}]".repeat(1_000)
        );
        assert_eq!(code(&deep_subsegments), DocumentErrorCode::InvalidSegment);
    }

    #[test]
    fn links_are_read_and_bad_ones_left_out() {
        let links: String =
            (0..25).map(|n| format!(r#"{{"trace_id":"{TRACE}","id":"{n:016x}","attributes":{{"k":1}}}},"#)).collect();
        let json = format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,
            "links":[{{"trace_id":"nope","id":"0000000000000001"}},{{"id":5}},7,{links}{{}}]}}"#
        );
        let links = parse(&json).unwrap().entity.links;
        assert_eq!(links.len(), MAX_LINKS);
        assert_eq!((links[0].trace_id.to_string(), links[0].id.as_u64()), (TRACE.to_owned(), 0));
        let json = format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"links":{{}}}}"#
        );
        assert!(parse(&json).unwrap().entity.links.is_empty(), "a links field of the wrong shape is ignored");
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut bytes = format!(r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"metadata":{{"x":"?"}}}}"#).into_bytes();
        let at = bytes.iter().position(|&b| b == b'?').unwrap();
        bytes[at] = 0xff;
        let err = parse_document(&bytes, MAX_DOCUMENT_BYTES).unwrap_err();
        assert_eq!(err.code, DocumentErrorCode::InvalidSegment);
        assert!(err.detail.contains("UTF-8"));
    }

    #[test]
    fn names() {
        assert!(name_problem("my-service.example.com:8080/a@b").is_none());
        assert!(name_problem("Überdienst 日本").is_none());
        assert!(name_problem("## handler").is_none());
        assert!(name_problem("a,b").is_some());
        assert!(name_problem(&"a".repeat(201)).is_some());
        assert!(name_problem("").is_some());
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_document(&bytes, MAX_DOCUMENT_BYTES);
        }

        #[test]
        fn parser_never_panics_on_json_like_text(text in r#"[\{\}\[\]":,0-9a-z_ .e\-]{0,200}"#) {
            let _ = parse_document(text.as_bytes(), MAX_DOCUMENT_BYTES);
        }
    }
}
