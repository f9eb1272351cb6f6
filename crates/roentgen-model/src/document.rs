//! Segment documents: parsing and validation with X-Ray's error codes.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::ids::{SegmentId, TraceId};
use crate::tree::{AnnotationRef, AwsFields, Builder, Entity, EntityFields, HttpFields, Span, Tree};
use crate::wire::{
    Items, MapOr, Scalar, WireAws, WireCause, WireEntity, WireHttp, WireLink, WireTraceId, ignore_leaves,
};

/// X-Ray's limit on one segment document.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// X-Ray's limit on a segment name.
pub const MAX_NAME_CHARS: usize = 200;
const MAX_ANNOTATION_KEY_CHARS: usize = 500;
const MAX_ANNOTATION_VALUE_CHARS: usize = 1000;
/// 10000-01-01T00:00:00Z in epoch seconds. Later times are refused: the AWS SDKs read
/// timestamps into types that end with the year 9999 (botocore's `datetime` among them), so one
/// such segment would make every `GetTraceSummaries` page it falls in unreadable. A time sent
/// in milliseconds or microseconds, a common mistake, is past it.
const YEAR_10000: f64 = 253_402_300_800.0;

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

/// X-Ray links a segment to at most 20 traces.
pub const MAX_LINKS: usize = 20;

/// An asynchronous link to an entity of another trace, such as the call that sent the message
/// this segment consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link {
    pub trace_id: TraceId,
    pub id: SegmentId,
}

/// Whether a document is a segment or an independent subsegment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DocumentKind {
    Segment,
    Subsegment,
}

/// A validated segment document: its entities reduced to the fields roentgen indexes (the
/// document itself is kept byte for byte beside it).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDocument {
    pub trace_id: TraceId,
    pub parent_id: Option<SegmentId>,
    pub kind: DocumentKind,
    /// Annotations dropped because of their key or value, as X-Ray drops them silently.
    pub dropped_annotations: u32,
    tree: Tree,
}

impl ParsedDocument {
    pub fn id(&self) -> SegmentId {
        self.entity().id()
    }

    /// The document's segment, or its independent subsegment.
    pub fn entity(&self) -> Entity<'_> {
        self.tree.top()
    }

    /// The document's entity and all its subsegments, nested ones included.
    pub fn entity_count(&self) -> usize {
        self.tree.len()
    }

    /// Starts loading the records a summary reads (the entities, their blocks and strings), for
    /// a pass that reaches this document soon; `self` should be loaded or on its way.
    pub fn prefetch(&self) {
        self.tree.prefetch();
    }

    /// True when this document or any subsegment in it is still in progress.
    pub fn any_in_progress(&self) -> bool {
        let mut any = false;
        self.entity().walk(|e| any |= e.in_progress());
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
    // simdutf8 checks valid text several times faster; std's check is run again only to say
    // where invalid text goes wrong.
    let text = match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => std::str::from_utf8(bytes).map_err(|e| invalid(format!("not valid UTF-8: {e}")))?,
    };
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

#[cold]
#[inline(never)]
fn invalid(detail: String) -> DocumentError {
    DocumentError { code: DocumentErrorCode::InvalidSegment, id: None, in_subsegment: false, detail }
}

fn parse_valid_text(text: &str) -> Result<ParsedDocument, DocumentError> {
    Builder::with(Builder::clear);
    match crate::reader::read(text) {
        Some(parsed) => parsed,
        None => parse_with_serde(text),
    }
}

/// The general path: serde's derived readers, for any document [`crate::reader`] leaves alone.
fn parse_with_serde(text: &str) -> Result<ParsedDocument, DocumentError> {
    Builder::with(Builder::clear);
    let value: MapOr<WireEntity> = serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let Some(mut wire) = value.0 else { return Err(not_an_object()) };
    document(&mut wire)
}

#[cold]
#[inline(never)]
pub(crate) fn not_an_object() -> DocumentError {
    DocumentError {
        code: DocumentErrorCode::MissingId,
        id: None,
        in_subsegment: false,
        detail: "document is not a JSON object".to_owned(),
    }
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
/// arrived: where they begin in the [`Builder`] (they end where their entity goes), or the first
/// error in document order, and the annotations dropped.
#[derive(Debug)]
pub(crate) struct Subsegments {
    first: Result<Option<u32>, DocumentError>,
    dropped_annotations: u32,
}

impl Default for Subsegments {
    fn default() -> Self {
        Self { first: Ok(None), dropped_annotations: 0 }
    }
}

impl Subsegments {
    /// A subsegment array about to be read.
    pub(crate) fn begin() -> Self {
        Self { first: Ok(Some(Builder::with(|b| b.next_entity()))), dropped_annotations: 0 }
    }

    /// The next element: validated, unless one before it failed. The rest are still read in
    /// full: a malformed one (a duplicate field, a number out of range) makes the document
    /// invalid JSON, which is reported before any field's error. The document fails either way,
    /// so what they leave in the builder is never read.
    pub(crate) fn push(&mut self, child: Option<&mut WireEntity>) {
        if self.first.is_err() {
            return;
        }
        let checked = match child {
            Some(child) => entity(child, true, &mut self.dropped_annotations),
            None => Err(fail(DocumentErrorCode::MissingId, true, "a subsegment is not a JSON object".into())),
        };
        if let Err(e) = checked {
            self.first = Err(e);
        }
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
                let mut array = Subsegments::begin();
                while let Some(MapOr(mut child)) = seq.next_element::<MapOr<WireEntity>>()? {
                    array.push(child.as_mut());
                }
                Ok(array)
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

/// An entity's annotations, read straight into the [`Builder`] as typed values. X-Ray drops an
/// annotation whose value is not a string, number or boolean, or whose key or value is not
/// valid, without failing the document; a repeated key keeps its first place and takes the later
/// value.
#[derive(Debug, Default)]
pub(crate) struct Annotations {
    span: Span,
    dropped: u32,
}

impl Annotations {
    /// An annotations object about to be read.
    pub(crate) fn begin() -> Self {
        let first = Builder::with(|b| b.next_annotation());
        Self { span: Span::new(first, first), dropped: 0 }
    }

    pub(crate) fn add(&mut self, key: &str, value: &Scalar) {
        let value = match value {
            Scalar::Str(s) if s.chars().count() <= MAX_ANNOTATION_VALUE_CHARS => AnnotationRef::String(s),
            Scalar::Num(n) => AnnotationRef::Number(*n),
            Scalar::Bool(b) => AnnotationRef::Bool(*b),
            _ => {
                self.dropped += 1;
                return;
            }
        };
        if !valid_annotation_key(key) {
            self.dropped += 1;
            return;
        }
        Builder::with(|b| b.annotation(self.span.start(), key, value));
    }

    pub(crate) fn finish(self) -> Self {
        let end = Builder::with(|b| b.next_annotation());
        Self { span: Span::new(self.span.start(), end), ..self }
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
                let mut annotations = Annotations::begin();
                while let Some((key, value)) = map.next_entry::<Text, Scalar>()? {
                    annotations.add(&key, &value);
                }
                Ok(annotations.finish())
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

/// The `http` block: where it went in the [`Builder`].
#[derive(Debug, Default)]
pub(crate) struct HttpBlock(Option<u32>);

impl<'de> Deserialize<'de> for HttpBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOr(wire) = MapOr::<WireHttp>::deserialize(d)?;
        Ok(HttpBlock::of(wire))
    }
}

impl HttpBlock {
    pub(crate) fn of(wire: Option<WireHttp>) -> Self {
        HttpBlock(wire.map(|h| {
            let req = h.request.0.unwrap_or_default();
            let status = h.response.0.and_then(|r| r.status.as_number());
            Builder::with(|b| {
                b.http(HttpFields {
                    method: req.method.as_str(),
                    url: req.url.as_str(),
                    user_agent: req.user_agent.as_str(),
                    client_ip: req.client_ip.as_str(),
                    status: status.filter(|s| (0.0..=999.0).contains(s)).map(|s| s as u16),
                    traced: req.traced.truthy(),
                })
            })
        }))
    }
}

/// The `aws` block: where it went in the [`Builder`].
#[derive(Debug, Default)]
pub(crate) struct AwsBlock(Option<u32>);

impl<'de> Deserialize<'de> for AwsBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOr(wire) = MapOr::<WireAws>::deserialize(d)?;
        Ok(AwsBlock::of(wire))
    }
}

impl AwsBlock {
    pub(crate) fn of(wire: Option<WireAws>) -> Self {
        AwsBlock(wire.map(|a| {
            let ec2 = a.ec2.0.unwrap_or_default();
            Builder::with(|b| {
                b.aws(AwsFields {
                    account_id: a.account_id.as_str(),
                    instance_id: ec2.instance_id.as_str(),
                    availability_zone: ec2.availability_zone.as_str(),
                    operation: a.operation.as_str(),
                    table_name: a.table_name.as_str(),
                    queue_url: a.queue_url.as_str(),
                })
            })
        }))
    }
}

/// The exceptions of a `cause` object: where they went in the [`Builder`].
#[derive(Debug, Default)]
pub(crate) struct Exceptions(Span);

impl<'de> Deserialize<'de> for Exceptions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let MapOr(cause) = MapOr::<WireCause>::deserialize(d)?;
        Ok(Exceptions::of(cause))
    }
}

impl Exceptions {
    pub(crate) fn of(cause: Option<WireCause>) -> Self {
        let Some(cause) = cause else { return Exceptions::default() };
        Exceptions(Builder::with(|b| {
            let first = b.next_exception();
            for e in cause.exceptions.0.iter().flatten() {
                b.exception(e.kind.as_str(), e.message.as_str(), e.remote.truthy());
            }
            Span::new(first, b.next_exception())
        }))
    }
}

/// Span links, at most [`MAX_LINKS`], where they went in the [`Builder`]; links whose ids are
/// not valid are left out.
#[derive(Debug, Default)]
pub(crate) struct Links(Span);

impl<'de> Deserialize<'de> for Links {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Items(links) = Items::<WireLink>::deserialize(d)?;
        Ok(Links::of(links))
    }
}

impl Links {
    pub(crate) fn of(links: Vec<Option<WireLink>>) -> Self {
        let valid = links.into_iter().flatten().filter_map(|link| {
            let trace_id = TraceId::parse(link.trace_id.as_str()?).ok()?;
            Some(Link { trace_id, id: SegmentId::parse(link.id.as_str()?)? })
        });
        Links(Builder::with(|b| {
            let first = b.next_link();
            valid.take(MAX_LINKS).for_each(|link| b.link(link));
            Span::new(first, b.next_link())
        }))
    }
}

/// An error without the document's id, which [`document`] adds to every error it returns.
///
/// This and the other error constructors are `#[cold]`: the compiler then lays the valid path
/// out straight and moves the messages' formatting aside (parsing 0.97 times the time).
#[cold]
#[inline(never)]
fn fail(code: DocumentErrorCode, in_subsegment: bool, detail: String) -> DocumentError {
    DocumentError { code, id: None, in_subsegment, detail }
}

pub(crate) fn document(wire: &mut WireEntity) -> Result<ParsedDocument, DocumentError> {
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
        entity(wire, false, &mut dropped_annotations)?;
        Ok(ParsedDocument { trace_id, parent_id, kind, dropped_annotations, tree: Builder::with(|b| b.finish()) })
    };
    checked().map_err(|e| DocumentError { id: top_id.as_str().map(str::to_owned), ..e })
}

/// Validates one entity whose subsegments were validated as they were read: its own fields
/// first, then the first error among its subsegments, as X-Ray reports them. A valid entity
/// goes into the [`Builder`], after its subsegments.
fn entity(wire: &mut WireEntity, sub: bool, dropped_annotations: &mut u32) -> Result<(), DocumentError> {
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
    let name = match std::mem::take(&mut wire.name) {
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
    let first_subsegment = std::mem::replace(&mut wire.subsegments.first, Ok(None))?;
    *dropped_annotations += wire.subsegments.dropped_annotations + wire.annotations.dropped;
    Builder::with(|b| {
        b.entity(EntityFields {
            id,
            name: &name,
            start_time,
            end_time,
            error: wire.error.0,
            fault: wire.fault.0,
            throttle: wire.throttle.0,
            namespace: wire.namespace.as_str(),
            origin: wire.origin.as_str(),
            user: wire.user.as_str(),
            resource_arn: wire.resource_arn.as_str(),
            http: wire.http.0,
            aws: wire.aws.0,
            annotations: wire.annotations.span,
            exceptions: wire.cause.0,
            links: wire.links.0,
            first_subsegment,
        })
    });
    Ok(())
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
        Scalar::Num(n) if (0.0..YEAR_10000).contains(n) => Ok(Some(*n)),
        other => Err(fail(
            invalid,
            sub,
            format!(
                "{field} must be epoch seconds as a non-negative number before the year 10000, not {}",
                describe(other)
            ),
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
    // Nearly every name is ASCII: its bytes are its characters, judged by a table.
    if (1..=MAX_NAME_CHARS).contains(&name.len()) && name.bytes().all(|b| ASCII_NAME_BYTES[usize::from(b)]) {
        return None;
    }
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

/// [`valid_name_char`] of each ASCII byte; false for the bytes of other characters.
const ASCII_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8 as char;
        table[b] = c.is_ascii_alphanumeric()
            || c == ' '
            || matches!(c, '_' | '.' | ':' | '/' | '%' | '&' | '#' | '=' | '+' | '\\' | '-' | '@');
        b += 1;
    }
    table
};

/// Unicode general category Z (space, line and paragraph separators).
fn is_unicode_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

#[cold]
#[inline(never)]
fn describe(value: &Scalar) -> String {
    match value {
        Scalar::Absent => "nothing".into(),
        Scalar::Null => "null".into(),
        Scalar::Str(s) if s.len() > 40 => format!("the string {:?}…", s.chars().take(40).collect::<String>()),
        Scalar::Str(s) => format!("the string {s:?}"),
        // Past 21 digits as JSON writes them, not a screenful of zeros.
        Scalar::Num(n) if n.abs() >= 1e21 => format!("the number {n:e}"),
        Scalar::Num(n) => format!("the number {n}"),
        Scalar::Bool(b) => format!("{b}"),
        Scalar::Other => "an object or array".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AnnotationRef, ExceptionRef};
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
        assert_eq!(doc.entity().name(), "example.com");
        assert_eq!(doc.kind, DocumentKind::Segment);
        assert!((doc.entity().end_time().unwrap() - 1_478_293_361.449).abs() < 1e-6);
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
        let e = doc.entity();
        assert!(e.fault() && !e.error() && !e.throttle() && !e.in_progress());
        assert_eq!((e.user(), e.origin(), e.namespace()), (Some("alice"), Some("AWS::EC2::Instance"), None));
        let http = e.http().unwrap();
        assert_eq!(
            (http.method(), http.url(), http.client_ip(), http.user_agent(), http.status()),
            (Some("GET"), Some("http://x/y"), Some("1.2.3.4"), None, Some(503))
        );
        assert_eq!(e.http_status(), Some(503));
        assert_eq!(e.aws().unwrap().instance_id(), Some("i-1"));
        assert_eq!(e.aws().unwrap().availability_zone(), Some("us-east-1a"));
        let annotations: Vec<_> = e.annotations().collect();
        assert_eq!(
            annotations,
            [
                ("tenant", AnnotationRef::String("acme")),
                ("n", AnnotationRef::Number(3.0)),
                ("ok", AnnotationRef::Bool(false))
            ]
        );
        assert_eq!(doc.dropped_annotations, 2);
        let sub = e.subsegments().next().unwrap();
        assert_eq!((sub.aws().unwrap().table_name(), sub.aws().unwrap().operation()), (Some("users"), Some("GetItem")));
        assert_eq!(sub.aws().unwrap().account_id(), None);
        assert!(sub.throttle() && sub.error() && !sub.fault());
        assert_eq!((sub.name(), sub.namespace(), sub.http().is_none()), ("DynamoDB", Some("aws"), true));
    }

    #[test]
    fn exceptions_from_cause() {
        let doc = parse(&format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,
            "cause":{{"working_directory":"/app","exceptions":[{{"id":"0000000000000001","type":"IOError","message":"disk full","remote":true,"stack":[{{"path":"a.py","line":3}}]}},"junk"]}},
            "subsegments":[{{"id":"70de5b6f19ff9a0b","name":"b","start_time":1,"end_time":2,"cause":"0000000000000001"}}]}}"#
        ))
        .unwrap();
        let e: Vec<_> = doc.entity().exceptions().collect();
        assert_eq!(e, [ExceptionRef { kind: Some("IOError"), message: Some("disk full"), remote: true }]);
        let sub = doc.entity().subsegments().next().unwrap();
        assert_eq!(sub.exceptions().count(), 0, "a cause that is an id refers elsewhere");
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
        for start in ["1763950000000.5", "2.6e11", "-1", "1e300"] {
            assert_eq!(
                code(&format!(
                    r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":{start},"end_time":2}}"#
                )),
                DocumentErrorCode::InvalidStartTime,
                "{start}"
            );
        }
        assert_eq!(
            code(&format!(r#"{{"trace_id":"{t}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":1e12}}"#)),
            DocumentErrorCode::InvalidEndTime
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
        assert!(doc.entity().in_progress() && doc.entity().end_time().is_none() && doc.any_in_progress());
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
    fn subsegments_keep_their_nesting_and_order_and_failures_leave_nothing_behind() {
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

        let twenty: Vec<String> = (1..=20).map(|n| sub(n, "")).collect();
        let deep = nested(102, &[nested(103, &[sub(104, "")]), sub(105, "")]);
        let parsed = parse(&doc(&[nested(100, &twenty), sub(101, ""), deep])).unwrap();
        let top: Vec<Entity<'_>> = parsed.entity().subsegments().collect();
        assert_eq!(top.len(), 3);
        let names: Vec<&str> = top[0].subsegments().map(|e| e.name()).collect();
        assert_eq!(names, (1..=20).map(|n| format!("s{n}")).collect::<Vec<_>>());
        assert_eq!(top[1].subsegments().count(), 0);
        let mut walked = Vec::new();
        parsed.entity().walk(|e| walked.push(e.name()));
        let expected: Vec<String> = ["a".to_owned(), "s100".to_owned()]
            .into_iter()
            .chain((1..=20).map(|n| format!("s{n}")))
            .chain([101, 102, 103, 104, 105].map(|n| format!("s{n}")))
            .collect();
        assert_eq!(walked, expected, "depth first, in document order");
        let mut under = Vec::new();
        top[2].walk(|e| under.push(e.name()));
        assert_eq!(under, ["s102", "s103", "s104", "s105"]);
        let inner: Vec<&str> = top[2].subsegments().map(|e| e.name()).collect();
        assert_eq!(inner, ["s103", "s105"]);
        // A document parsed after a failure holds only its own entities.
        assert_eq!(
            code(&doc(&[sub(9, ""), nested(1, &[sub(2, r#","name":"again""#)])])),
            DocumentErrorCode::InvalidSegment
        );
        let one = parse(&doc(&[sub(7, "")])).unwrap();
        let mut all = Vec::new();
        one.entity().walk(|e| all.push(e.name()));
        assert_eq!(all, ["a", "s7"]);
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
        let doc = parse(&json).unwrap();
        let links = doc.entity().links();
        assert_eq!(links.len(), MAX_LINKS);
        assert_eq!((links[0].trace_id.to_string(), links[0].id.as_u64()), (TRACE.to_owned(), 0));
        let json = format!(
            r#"{{"trace_id":"{TRACE}","id":"70de5b6f19ff9a0a","name":"a","start_time":1,"end_time":2,"links":{{}}}}"#
        );
        assert!(parse(&json).unwrap().entity().links().is_empty(), "a links field of the wrong shape is ignored");
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
        // The table agrees with the rule on every ASCII character.
        for b in 0..128u8 {
            assert_eq!(ASCII_NAME_BYTES[usize::from(b)], valid_name_char(char::from(b)), "{b:#x}");
        }
        assert!(name_problem("a,b").is_some());
        assert!(name_problem(&"a".repeat(201)).is_some());
        assert!(name_problem("").is_some());
    }

    /// Values of every kind the reader must judge as serde_json does: numbers at the edges of
    /// its arithmetic, escapes, malformed literals.
    fn values() -> impl Strategy<Value = String> {
        let pieces = vec![
            "null",
            "true",
            "false",
            "tru",
            "nul",
            "0",
            "-0",
            "-0.0",
            "01",
            "1.",
            "-",
            "1e",
            "1e400",
            "-1e400",
            "1e-400",
            "4.9e-324",
            "1.7976931348623157e308",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "123456789012345678901",
            "1795325748.8577531234",
            "0.30000000000000004",
            "2E+2",
            "1.5e-3",
            r#""""#,
            r#""x""#,
            r#""a\u0041""#,
            r#""\ud800""#,
            r#""\x""#,
            r#""tab\there""#,
            "\"\u{1}\"",
            r#""subsegment""#,
            r#""aws""#,
            r#""remote""#,
            r#""70de5b6f19ff9a0a""#,
            r#""1-581cf771-a006649127e371903a2de979""#,
            "{}",
            "[]",
            "[1,2,]",
            r#"{"a":1,}"#,
            r#"{"n\u0061me":1}"#,
            r#"{"a":[1,{"b":"\n"}],"c":null}"#,
            r#"[{"k":1e400}]"#,
            r#"[[[]]]"#,
        ];
        prop_oneof![
            proptest::sample::select(pieces).prop_map(str::to_owned),
            any::<f64>().prop_map(|n| format!("{n}")),
            any::<f64>().prop_map(|n| format!("{n:e}")),
            any::<i64>().prop_map(|n| n.to_string()),
            (0u64..3_000_000_000, 0u32..1_000_000).prop_map(|(s, f)| format!("{s}.{f:06}")),
            "[a-z ./@-]{0,30}".prop_map(|s| format!("{s:?}")),
        ]
    }

    fn object(fields: Vec<(&str, String)>) -> String {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    /// Fields with known and unknown names, and sometimes the same name twice.
    fn fields(value: BoxedStrategy<String>) -> impl Strategy<Value = Vec<(&'static str, String)>> {
        let keys = proptest::sample::select(vec![
            "id",
            "name",
            "trace_id",
            "parent_id",
            "type",
            "start_time",
            "end_time",
            "in_progress",
            "error",
            "fault",
            "throttle",
            "namespace",
            "origin",
            "user",
            "resource_arn",
            "metadata",
            "sql",
            "status",
            "method",
            "url",
            "request",
            "response",
            "account_id",
            "ec2",
            "instance_id",
            "table_name",
            "exceptions",
            "message",
            "remote",
            "tenant",
        ]);
        proptest::collection::vec((keys, value), 0..6)
    }

    /// What may stand where a block (`http`, `aws`, `annotations`, `cause`, `links`) goes.
    fn blocks() -> BoxedStrategy<String> {
        let flat = || fields(values().boxed()).prop_map(object).boxed();
        prop_oneof![
            values(),
            flat(),
            fields(flat()).prop_map(object),
            proptest::collection::vec(flat(), 0..3).prop_map(|items| format!("[{}]", items.join(","))),
        ]
        .boxed()
    }

    fn entity(subsegments: BoxedStrategy<String>) -> BoxedStrategy<String> {
        let names =
            proptest::sample::select(vec!["http", "aws", "annotations", "cause", "links", "subsegments", "error"]);
        (
            proptest::option::of(0u64..4),
            "[a-z]{1,8}",
            0u32..3_000_000,
            proptest::option::of(0u32..3_000),
            fields(values().boxed()),
            proptest::collection::vec((names, prop_oneof![blocks(), subsegments]), 0..4),
        )
            .prop_map(|(id, name, start, duration, extra, blocks)| {
                let mut fields: Vec<(&str, String)> = Vec::new();
                if let Some(id) = id {
                    fields.push(("id", format!("\"{id:016x}\"")));
                }
                fields.push(("name", format!("{name:?}")));
                fields.push(("start_time", format!("{start}.5")));
                if let Some(duration) = duration {
                    fields.push(("end_time", format!("{}.25", start + duration)));
                }
                fields.extend(extra);
                fields.extend(blocks);
                object(fields)
            })
            .boxed()
    }

    /// Segment documents of known and unknown fields holding any of [`values`], blocks of every
    /// shape, and nested subsegments.
    fn documents() -> impl Strategy<Value = String> {
        let subsegments = Just("[]".to_owned()).prop_recursive(3, 12, 3, |inner| {
            proptest::collection::vec(entity(inner), 0..3).prop_map(|subs| format!("[{}]", subs.join(",")))
        });
        (entity(subsegments.boxed()), any::<bool>()).prop_map(|(doc, traced)| {
            let head = if traced { format!(r#"{{"trace_id":"{TRACE}","#) } else { "{".to_owned() };
            doc.replacen('{', &head, 1)
        })
    }

    /// The nesting of a document's subsegments.
    #[derive(Debug, Clone)]
    struct Shape(Vec<Shape>);

    fn shapes() -> impl Strategy<Value = Shape> {
        Just(Shape(Vec::new())).prop_recursive(5, 60, 6, |inner| proptest::collection::vec(inner, 0..6).prop_map(Shape))
    }

    /// The document of a shape, its entities' ids numbered depth first, with the children of each.
    fn render(shape: &Shape, ids: &mut u64, children: &mut Vec<Vec<u64>>, out: &mut String) {
        let id = *ids;
        *ids += 1;
        children.push(Vec::new());
        out.push_str(&format!(r#"{{"id":"{id:016x}","name":"e{id}","start_time":1,"end_time":2"#));
        if !shape.0.is_empty() {
            out.push_str(r#","subsegments":["#);
            for (i, child) in shape.0.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                children[id as usize].push(*ids);
                render(child, ids, children, out);
            }
            out.push(']');
        }
        out.push('}');
    }

    proptest! {
        /// Entities come out depth first, in document order, each with its own subsegments and a
        /// walk over exactly its subtree, however they nest.
        #[test]
        fn entities_keep_their_nesting(shape in shapes()) {
            let (mut count, mut children, mut json) = (0, Vec::new(), String::new());
            render(&shape, &mut count, &mut children, &mut json);
            let json = json.replacen('{', &format!(r#"{{"trace_id":"{TRACE}","#), 1);
            let doc = parse(&json).unwrap();
            let mut all = Vec::new();
            doc.entity().walk(|e| all.push(e));
            prop_assert_eq!(all.iter().map(|e| e.id().as_u64()).collect::<Vec<_>>(), (0..count).collect::<Vec<_>>());
            prop_assert_eq!(doc.entity_count() as u64, count);
            for e in &all {
                let id = e.id().as_u64() as usize;
                prop_assert_eq!(e.name(), format!("e{id}"));
                let subs: Vec<u64> = e.subsegments().map(|s| s.id().as_u64()).collect();
                prop_assert_eq!(&subs, &children[id]);
                let mut under = Vec::new();
                e.walk(|s| under.push(s.id().as_u64()));
                let size = under.len() as u64;
                prop_assert_eq!(under, (id as u64..id as u64 + size).collect::<Vec<_>>());
            }
        }

        /// The direct reader gives exactly what serde's readers give, errors included, for
        /// whatever it reads.
        #[test]
        fn reader_agrees_with_serde(doc in documents()) {
            Builder::with(Builder::clear);
            if let Some(direct) = crate::reader::read(&doc) {
                prop_assert_eq!(direct, parse_with_serde(&doc), "{}", doc);
            }
        }

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
