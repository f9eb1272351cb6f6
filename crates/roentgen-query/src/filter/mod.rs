//! X-Ray's filter expression language: `service("api") { fault } AND annotation.tenant = "acme"`.
//!
//! [`Filter::parse`] reports mistakes with the column and what was expected there. Parsed
//! filters print in a canonical form that parses back to the same tree. Evaluation runs on a
//! [`TraceSummary`](crate::TraceSummary), never on documents. `docs/filter-expressions.md` is the
//! user's reference.

mod ast;
mod eval;
mod lexer;
mod parser;
mod plan;

use std::fmt;

pub use ast::{Expr, Field, FieldType, GroupKey, Node, Op, RootCauseKind, RootCauseTarget, Test, Value};
pub use plan::Requirement;

use crate::summary::TraceSummary;

/// A filter expression that could not be parsed: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// 1-based character column.
    pub column: usize,
    pub message: String,
}

impl FilterError {
    pub(crate) fn at(column: usize, message: impl Into<String>) -> Self {
        Self { column, message: message.into() }
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at column {}", self.message, self.column)
    }
}

impl std::error::Error for FilterError {}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        parser::parse(text).map(|expr| Self { expr })
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// A filter every trace matches, for a group defined without a filter expression.
    pub fn everything() -> Self {
        let ok = Expr::Test(Test { field: Field::Ok, compare: None });
        Self { expr: Expr::Or(Box::new(ok.clone()), Box::new(Expr::Not(Box::new(ok)))) }
    }

    /// Whether the expression refers to a group.
    pub fn refers_to_groups(&self) -> bool {
        fn find(expr: &Expr) -> bool {
            match expr {
                Expr::And(a, b) | Expr::Or(a, b) => find(a) || find(b),
                Expr::Not(inner) => find(inner),
                Expr::Group { .. } => true,
                _ => false,
            }
        }
        find(&self.expr)
    }

    /// Replaces `group.name = "x"` (and `group.arn`) by that group's own filter; `!=` negates it.
    pub fn resolve_groups(
        self,
        mut lookup: impl FnMut(GroupKey, &str) -> Result<Filter, String>,
    ) -> Result<Self, String> {
        fn walk(expr: Expr, lookup: &mut dyn FnMut(GroupKey, &str) -> Result<Filter, String>) -> Result<Expr, String> {
            Ok(match expr {
                Expr::And(a, b) => Expr::And(Box::new(walk(*a, lookup)?), Box::new(walk(*b, lookup)?)),
                Expr::Or(a, b) => Expr::Or(Box::new(walk(*a, lookup)?), Box::new(walk(*b, lookup)?)),
                Expr::Not(inner) => Expr::Not(Box::new(walk(*inner, lookup)?)),
                Expr::Group { by, equal, value } => {
                    let group = lookup(by, &value)?.expr;
                    if equal { group } else { Expr::Not(Box::new(group)) }
                }
                other => other,
            })
        }
        walk(self.expr, &mut lookup).map(|expr| Self { expr })
    }

    /// Conditions every matching trace satisfies, for index lookups. Empty means: scan all.
    pub fn requirements(&self) -> Vec<Requirement> {
        plan::requirements(&self.expr)
    }

    /// Whether a trace matches.
    pub fn matches(&self, summary: &TraceSummary) -> bool {
        eval::matches(&self.expr, summary)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

#[cfg(test)]
mod tests;
