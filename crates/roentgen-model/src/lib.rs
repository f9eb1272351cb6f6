//! The X-Ray data model as roentgen receives it: trace and segment ids, segment documents with
//! their validation rules and error codes, and the wire shapes of the X-Ray API.
//!
//! This crate does no I/O. Documents are parsed leniently (a field of the wrong type never aborts
//! the parse) and then validated field by field, so every rejection carries the `ErrorCode` that
//! X-Ray's `UnprocessedTraceSegments` would carry.

pub mod api;
mod byte_classes;
mod document;
mod ids;
mod json_string;
pub mod prefetch;
mod reader;
mod tree;
mod wire;

pub use document::{
    AnnotationValue, DocumentError, DocumentErrorCode, DocumentKind, Http, Link, MAX_DOCUMENT_BYTES, MAX_LINKS,
    MAX_NAME_CHARS, ParsedDocument, Text, parse_document, parse_document_and_text, parse_document_text,
};
pub use ids::{InvalidTraceId, SegmentId, TraceId};
pub use tree::{AnnotationRef, AwsRef, Entity, ExceptionRef, HttpRef};
