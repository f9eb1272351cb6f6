//! Central sampling as X-Ray does it: rules that clients fetch and match in priority order, and
//! reservoir quotas that divide each rule's per-second budget among the clients reporting to it.
//!
//! Pure and synchronous; the server wires it to `GetSamplingRules`, `GetSamplingTargets` and the
//! rule operations.

mod rules;
mod targets;
mod wildcard;

pub use rules::{DEFAULT_RULE, RuleError, RuleSet, RuleUpdate, SamplingRequest, SamplingRule};
pub use targets::{
    Allocator, ClientReport, QuotaSettings, STATISTICS_WINDOW, Target, WindowCounts, normalize_timestamp,
};
pub use wildcard::wildcard_match;
