//! What every trace matching a filter must have, so that a store can look candidates up in an
//! index instead of evaluating every trace. Only conditions on the top-level AND chain count:
//! anything under `OR` or `!` is left to the full evaluation.

use roentgen_model::AnnotationValue;

use super::ast::{Expr, Field, Node, Op, Test, Value};

/// A condition every matching trace satisfies.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// An annotation with exactly this value.
    Annotation(String, AnnotationValue),
    /// A node with this name.
    Service(String),
    /// A node segment with a fault, an error or a throttle.
    NodeFault,
    NodeError,
    NodeThrottle,
}

fn conjuncts<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::And(a, b) => {
            conjuncts(a, out);
            conjuncts(b, out);
        }
        other => out.push(other),
    }
}

fn is_true(test: &Test) -> bool {
    matches!(test.compare, None | Some((Op::Eq, Value::Bool(true))) | Some((Op::Ne, Value::Bool(false))))
}

pub(super) fn requirements(expr: &Expr) -> Vec<Requirement> {
    let mut terms = Vec::new();
    conjuncts(expr, &mut terms);
    let mut out = Vec::new();
    for term in terms {
        match term {
            Expr::Test(Test { field: Field::Annotation(key), compare: Some((Op::Eq, value)) }) => {
                let value = match value {
                    Value::Str(s) => AnnotationValue::String(s.into()),
                    Value::Num(n) => AnnotationValue::Number(*n),
                    Value::Bool(b) => AnnotationValue::Bool(*b),
                };
                out.push(Requirement::Annotation(key.clone(), value));
            }
            Expr::Service { node, filter } => {
                if let Some(Node::Name(name)) = node {
                    out.push(Requirement::Service(name.clone()));
                }
                if let Some(filter) = filter {
                    let mut inner = Vec::new();
                    conjuncts(filter, &mut inner);
                    for term in inner {
                        if let Expr::Test(test) = term
                            && is_true(test)
                        {
                            match test.field {
                                Field::Fault => out.push(Requirement::NodeFault),
                                Field::Error => out.push(Requirement::NodeError),
                                Field::Throttle => out.push(Requirement::NodeThrottle),
                                _ => {}
                            }
                        }
                    }
                }
            }
            Expr::Edge { from, to, .. } => {
                for node in [from, to] {
                    if let Node::Name(name) = node {
                        out.push(Requirement::Service(name.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;

    #[test]
    fn requirements_come_from_the_and_chain_only() {
        let r = |text: &str| Filter::parse(text).unwrap().requirements();
        assert_eq!(
            r("annotation.tenant = \"acme\" AND service(\"api\") { fault and responsetime > 1 } ok"),
            [
                Requirement::Annotation("tenant".into(), AnnotationValue::String("acme".into())),
                Requirement::Service("api".into()),
                Requirement::NodeFault
            ]
        );
        assert_eq!(r("edge(\"a\", id(type: \"t\"))"), [Requirement::Service("a".into())]);
        assert_eq!(r("service() { error = true }"), [Requirement::NodeError]);
        assert!(r("annotation.a = 1 OR fault").is_empty());
        assert!(r("!service(\"api\")").is_empty());
        assert!(r("service(\"a\") { !fault }").len() == 1);
        assert!(r("annotation.a != 1").is_empty());
    }
}
