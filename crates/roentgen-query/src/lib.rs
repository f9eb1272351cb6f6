//! Questions asked of traces: assembling a trace's documents into the summary that
//! `GetTraceSummaries` returns and into the documents `BatchGetTraces` returns, the filter
//! expression language evaluated on summaries, the service graph, and the nodes inferred for
//! uninstrumented calls.
//!
//! Pure and synchronous: it sees parsed documents, never storage.

mod assemble;
pub mod filter;
mod graph;
mod id_map;
mod inferred;
mod rootcause;
mod round;
mod shared;
mod summary;

pub use assemble::{AssembledSegment, assemble};
pub use filter::{Filter, FilterError};
pub use graph::{GraphEdge, GraphNode, Histogram, Series, ServiceGraph, Statistics, whole_minutes};
pub use inferred::inferred_service;
pub use rootcause::{RootCause, RootCauseEntity, RootCauseService};
pub use round::round;
pub use shared::shared;
pub use summary::{
    AnnotationSummary, EdgeFact, FactFlags, LinkFact, LinkSource, MAX_INDEXED_ANNOTATIONS, MAX_TRACE_LINKS,
    MaybeSeconds, NodeFact, ServiceKey, ServiceSet, TimeRangeType, TraceFacts, TraceSummary, UserSummary, link_source,
    span, summarize, whole_microseconds,
};
