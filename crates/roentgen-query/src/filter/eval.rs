//! Evaluating a parsed filter against a trace summary and its facts.
//!
//! Multi-valued fields (`user`, `annotation.*`, `instance.id`, …) match when any value matches;
//! so `user != "a"` means "some user is not a". Comparing values of different types is false,
//! never an error. A missing value (no response time yet, no HTTP status) fails every comparison.

use roentgen_model::AnnotationValue;

use super::ast::{Expr, Field, Op, RootCauseKind, RootCauseTarget, Test, Value};
use crate::rootcause::RootCause;
use crate::summary::{EdgeFact, NodeFact, TraceSummary};

pub(super) fn matches(expr: &Expr, s: &TraceSummary) -> bool {
    match expr {
        Expr::And(a, b) => matches(a, s) && matches(b, s),
        Expr::Or(a, b) => matches(a, s) || matches(b, s),
        Expr::Not(inner) => !matches(inner, s),
        Expr::Test(test) => trace_test(test, s),
        Expr::Service { node, filter } => match filter {
            None => s.services.iter().any(|key| node.as_ref().is_none_or(|n| n.matches(key))),
            Some(filter) => s.facts.nodes.iter().any(|fact| {
                let key = &s.services[fact.service as usize];
                node.as_ref().is_none_or(|n| n.matches(key)) && scoped(filter, &|t| node_test(t, fact))
            }),
        },
        Expr::Edge { from, to, filter } => s.facts.edges.iter().any(|fact| {
            from.matches(&s.services[fact.from as usize])
                && to.matches(&s.services[fact.to as usize])
                && filter.as_ref().is_none_or(|f| scoped(f, &|t| edge_test(t, fact)))
        }),
        Expr::RootCause { kind, target, filter } => {
            let causes = match kind {
                RootCauseKind::Fault => &s.facts.fault_root_causes,
                RootCauseKind::Error => &s.facts.error_root_causes,
                RootCauseKind::ResponseTime => &s.facts.response_time_root_causes,
            };
            causes.iter().any(|cause| root_cause_matches(cause, *target, filter, s))
        }
        Expr::RootCauseJson(pattern) => json_matches(pattern, s),
        // Groups are substituted before evaluation.
        Expr::Group { .. } => false,
    }
}

/// Position facts of an element of an enumerated list, for `index`, `first` and `last`.
#[derive(Clone, Copy)]
struct Position {
    index: usize,
    len: usize,
}

fn position_test(test: &Test, at: Position) -> Option<bool> {
    let c = &test.compare;
    match test.field {
        Field::Index => Some(number(Some(at.index as f64), c)),
        Field::First => Some(boolean(at.index == 0, c)),
        Field::Last => Some(boolean(at.index + 1 == at.len, c)),
        _ => None,
    }
}

fn optional_string(value: Option<&str>, compare: &Option<(Op, Value)>) -> bool {
    strings(value.into_iter(), compare)
}

fn root_cause_matches(cause: &RootCause, target: RootCauseTarget, filter: &Expr, s: &TraceSummary) -> bool {
    match target {
        RootCauseTarget::Service => {
            let len = cause.services.len();
            cause.services.iter().enumerate().any(|(index, service)| {
                let key = &s.services[service.service as usize];
                scoped(filter, &|t| {
                    position_test(t, Position { index, len }).unwrap_or_else(|| match t.field {
                        Field::Name => optional_string(Some(&key.name), &t.compare),
                        Field::Type => optional_string(key.kind.as_deref(), &t.compare),
                        Field::AccountId => optional_string(key.account_id.as_deref(), &t.compare),
                        Field::Inferred => boolean(service.inferred, &t.compare),
                        _ => false,
                    })
                })
            })
        }
        RootCauseTarget::Entity => {
            let path: Vec<_> = cause.services.iter().flat_map(|svc| &svc.entity_path).collect();
            let len = path.len();
            path.iter().enumerate().any(|(index, entity)| {
                scoped(filter, &|t| {
                    position_test(t, Position { index, len }).unwrap_or_else(|| match t.field {
                        Field::Name => optional_string(Some(&entity.name), &t.compare),
                        Field::Remote => boolean(entity.remote, &t.compare),
                        Field::Coverage => number(entity.coverage, &t.compare),
                        _ => false,
                    })
                })
            })
        }
        RootCauseTarget::Exception => {
            let exceptions: Vec<_> =
                cause.services.iter().flat_map(|svc| &svc.entity_path).flat_map(|e| &e.exceptions).collect();
            let len = exceptions.len();
            exceptions.iter().enumerate().any(|(index, (kind, message))| {
                scoped(filter, &|t| {
                    position_test(t, Position { index, len }).unwrap_or_else(|| match t.field {
                        Field::Name => optional_string(kind.as_deref(), &t.compare),
                        Field::Message => optional_string(message.as_deref(), &t.compare),
                        _ => false,
                    })
                })
            })
        }
    }
}

/// Every element of the pattern array matches one of the trace's root causes, of any kind.
fn json_matches(pattern: &serde_json::Value, s: &TraceSummary) -> bool {
    let serde_json::Value::Array(patterns) = pattern else { return false };
    let causes: Vec<serde_json::Value> =
        [&s.facts.fault_root_causes, &s.facts.error_root_causes, &s.facts.response_time_root_causes]
            .into_iter()
            .flatten()
            .filter_map(|c| serde_json::to_value(c.to_api(&s.services)).ok())
            .collect();
    !causes.is_empty() && patterns.iter().all(|p| causes.iter().any(|c| json_subset(p, c)))
}

/// Fields the pattern leaves out match anything; arrays match element by element.
fn json_subset(pattern: &serde_json::Value, actual: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (pattern, actual) {
        (J::Object(p), J::Object(a)) => p.iter().all(|(k, v)| a.get(k).is_some_and(|av| json_subset(v, av))),
        (J::Array(p), J::Array(a)) => p.len() == a.len() && p.iter().zip(a).all(|(pv, av)| json_subset(pv, av)),
        (J::Number(p), J::Number(a)) => p.as_f64() == a.as_f64(),
        (p, a) => p == a,
    }
}

/// Boolean structure inside `{ ... }`, with leaf tests answered by `test`.
fn scoped(expr: &Expr, test: &dyn Fn(&Test) -> bool) -> bool {
    match expr {
        Expr::And(a, b) => scoped(a, test) && scoped(b, test),
        Expr::Or(a, b) => scoped(a, test) || scoped(b, test),
        Expr::Not(inner) => !scoped(inner, test),
        Expr::Test(t) => test(t),
        _ => false,
    }
}

fn boolean(value: bool, compare: &Option<(Op, Value)>) -> bool {
    match compare {
        None => value,
        Some((Op::Eq, Value::Bool(b))) => value == *b,
        Some((Op::Ne, Value::Bool(b))) => value != *b,
        Some(_) => false,
    }
}

fn number(value: Option<f64>, compare: &Option<(Op, Value)>) -> bool {
    let Some(v) = value else { return false };
    match compare {
        None => true,
        Some((op, Value::Num(x))) => match op {
            Op::Eq => v == *x,
            Op::Ne => v != *x,
            Op::Lt => v < *x,
            Op::Le => v <= *x,
            Op::Gt => v > *x,
            Op::Ge => v >= *x,
            Op::Contains | Op::BeginsWith | Op::EndsWith => false,
        },
        Some(_) => false,
    }
}

fn string(value: &str, op: Op, expected: &Value) -> bool {
    let Value::Str(x) = expected else { return false };
    match op {
        Op::Eq => value == x,
        Op::Ne => value != x,
        Op::Contains => value.contains(x.as_str()),
        Op::BeginsWith => value.starts_with(x.as_str()),
        Op::EndsWith => value.ends_with(x.as_str()),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => false,
    }
}

/// A bare string field means "is set"; a comparison holds when any value satisfies it.
fn strings<'a>(mut values: impl Iterator<Item = &'a str>, compare: &Option<(Op, Value)>) -> bool {
    match compare {
        None => values.next().is_some(),
        Some((op, expected)) => values.any(|v| string(v, *op, expected)),
    }
}

fn ok(error: bool, fault: bool, throttle: bool) -> bool {
    !(error || fault || throttle)
}

fn trace_test(test: &Test, s: &TraceSummary) -> bool {
    let c = &test.compare;
    let http = s.http.as_ref();
    let root_http = |get: fn(&roentgen_model::Http) -> Option<&roentgen_model::Text>| {
        http.and_then(get).map(|t| t.as_str()).into_iter()
    };
    match &test.field {
        Field::Ok => boolean(ok(s.has_error, s.has_fault, s.has_throttle), c),
        Field::Error => boolean(s.has_error, c),
        Field::Fault => boolean(s.has_fault, c),
        Field::Throttle => boolean(s.has_throttle, c),
        Field::Partial => boolean(s.is_partial, c),
        Field::Inferred => boolean(s.facts.nodes.iter().any(|n| n.flags.inferred()), c),
        Field::ResponseTime => number(s.response_time.get(), c),
        Field::Duration => number(Some(s.duration()), c),
        Field::HttpStatus => number(http.and_then(|h| h.status).map(f64::from), c),
        Field::HttpUrl => strings(root_http(|h| h.url.as_ref()), c),
        Field::HttpMethod => strings(root_http(|h| h.method.as_ref()), c),
        Field::HttpUserAgent => strings(root_http(|h| h.user_agent.as_ref()), c),
        Field::HttpClientIp => strings(root_http(|h| h.client_ip.as_ref()), c),
        Field::User => strings(s.users.iter().map(|u| u.name.as_str()), c),
        Field::AvailabilityZone => strings(s.availability_zones.iter().map(|t| t.as_str()), c),
        Field::InstanceId => strings(s.instance_ids.iter().map(|t| t.as_str()), c),
        Field::ResourceArn => strings(s.resource_arns.iter().map(|t| t.as_str()), c),
        Field::Annotation(key) => {
            let Some(annotation) = s.annotations.iter().find(|a| a.key == *key) else { return false };
            match c {
                None => true,
                Some((op, expected)) => annotation.values.iter().any(|(value, _)| match (value, expected) {
                    (AnnotationValue::String(v), Value::Str(_)) => string(v, *op, expected),
                    (AnnotationValue::Number(v), Value::Num(_)) => number(Some(*v), c),
                    (AnnotationValue::Bool(v), Value::Bool(_)) => boolean(*v, c),
                    _ => false,
                }),
            }
        }
        // The parser keeps context-only keywords out of trace-level filters.
        _ => false,
    }
}

fn node_test(test: &Test, n: &NodeFact) -> bool {
    let c = &test.compare;
    match test.field {
        Field::Ok => boolean(ok(n.flags.error(), n.flags.fault(), n.flags.throttle()), c),
        Field::Error => boolean(n.flags.error(), c),
        Field::Fault => boolean(n.flags.fault(), c),
        Field::Throttle => boolean(n.flags.throttle(), c),
        Field::Root => boolean(n.flags.root(), c),
        Field::Inferred => boolean(n.flags.inferred(), c),
        Field::ResponseTime => number(n.response_time.get(), c),
        Field::HttpStatus => number(n.flags.http_status().map(f64::from), c),
        _ => false,
    }
}

fn edge_test(test: &Test, e: &EdgeFact) -> bool {
    let c = &test.compare;
    match test.field {
        Field::Ok => boolean(ok(e.flags.error(), e.flags.fault(), e.flags.throttle()), c),
        Field::Error => boolean(e.flags.error(), c),
        Field::Fault => boolean(e.flags.fault(), c),
        Field::Throttle => boolean(e.flags.throttle(), c),
        Field::ResponseTime => number(e.response_time.get(), c),
        Field::HttpStatus => number(e.flags.http_status().map(f64::from), c),
        _ => false,
    }
}
