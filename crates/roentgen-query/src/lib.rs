//! Questions asked of traces: assembling a trace's documents into the summary that
//! `GetTraceSummaries` returns, the filter expression language evaluated on it, and the nodes
//! inferred for uninstrumented calls.
//!
//! Pure and synchronous: it sees parsed documents, never storage.

pub mod filter;
mod graph;
mod inferred;
mod rootcause;
mod summary;

pub use filter::{Filter, FilterError};
pub use graph::{GraphEdge, GraphNode, Histogram, Series, ServiceGraph, Statistics};
pub use inferred::inferred_service;
pub use rootcause::{RootCause, RootCauseEntity, RootCauseService};
pub use summary::{
    AnnotationSummary, EdgeFact, MAX_INDEXED_ANNOTATIONS, NodeFact, ServiceKey, TimeRangeType, TraceFacts,
    TraceSummary, UserSummary, summarize,
};
