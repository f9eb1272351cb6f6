//! The parsed form of a filter expression, and its canonical text (`Display`), which parses back
//! to the same tree.

use std::fmt;

/// A filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Test(Test),
    /// `service(...)`, optionally with a filter on that service's segments.
    Service {
        node: Option<Node>,
        filter: Option<Box<Expr>>,
    },
    /// `edge(..., ...)`, optionally with a filter on the calls between them.
    Edge {
        from: Node,
        to: Node,
        filter: Option<Box<Expr>>,
    },
    /// `group.name = "..."` or `group.arn = "..."`: the group's own filter expression.
    Group {
        by: GroupKey,
        equal: bool,
        value: String,
    },
    /// `rootcause.<kind>.<target> { ... }`.
    RootCause {
        kind: RootCauseKind,
        target: RootCauseTarget,
        filter: Box<Expr>,
    },
    /// `rootcause.json = #[ ... ]`: root causes in the API's JSON shape; omitted fields match anything.
    RootCauseJson(serde_json::Value),
}

/// A field compared with a value, or alone (true, or "is set").
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    pub field: Field,
    pub compare: Option<(Op, Value)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Name(String),
    Id { name: Option<String>, kind: Option<String>, account: Option<String> },
}

impl Node {
    /// Whether this `service()`/`id()` argument names the graph node `key`.
    pub fn matches(&self, key: &crate::summary::ServiceKey) -> bool {
        match self {
            Node::Name(name) => key.name == *name,
            Node::Id { name, kind, account } => {
                name.as_ref().is_none_or(|n| *n == key.name)
                    && kind.as_ref().is_none_or(|k| key.kind.as_deref() == Some(k.as_str()))
                    && account.as_ref().is_none_or(|a| key.account_id.as_deref() == Some(a.as_str()))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKey {
    Name,
    Arn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCauseKind {
    Fault,
    Error,
    ResponseTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCauseTarget {
    Service,
    Entity,
    Exception,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    BeginsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// What a field holds, which decides the operators it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Bool,
    Number,
    String,
    /// Annotations take whatever their values are.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Ok,
    Error,
    Fault,
    Throttle,
    Partial,
    Inferred,
    Root,
    First,
    Last,
    Remote,
    ResponseTime,
    Duration,
    HttpStatus,
    Index,
    Coverage,
    HttpUrl,
    HttpMethod,
    HttpUserAgent,
    HttpClientIp,
    User,
    Name,
    Type,
    Message,
    AvailabilityZone,
    InstanceId,
    ResourceArn,
    AccountId,
    Annotation(String),
}

/// Every named field with its spelling; annotations are handled apart.
pub(super) const FIELDS: [(&str, Field); 27] = [
    ("ok", Field::Ok),
    ("error", Field::Error),
    ("fault", Field::Fault),
    ("throttle", Field::Throttle),
    ("partial", Field::Partial),
    ("inferred", Field::Inferred),
    ("root", Field::Root),
    ("first", Field::First),
    ("last", Field::Last),
    ("remote", Field::Remote),
    ("responsetime", Field::ResponseTime),
    ("duration", Field::Duration),
    ("http.status", Field::HttpStatus),
    ("index", Field::Index),
    ("coverage", Field::Coverage),
    ("http.url", Field::HttpUrl),
    ("http.method", Field::HttpMethod),
    ("http.useragent", Field::HttpUserAgent),
    ("http.clientip", Field::HttpClientIp),
    ("user", Field::User),
    ("name", Field::Name),
    ("type", Field::Type),
    ("message", Field::Message),
    ("availabilityzone", Field::AvailabilityZone),
    ("instance.id", Field::InstanceId),
    ("resource.arn", Field::ResourceArn),
    ("account.id", Field::AccountId),
];

impl Field {
    pub fn field_type(&self) -> FieldType {
        match self {
            Field::Ok
            | Field::Error
            | Field::Fault
            | Field::Throttle
            | Field::Partial
            | Field::Inferred
            | Field::Root
            | Field::First
            | Field::Last
            | Field::Remote => FieldType::Bool,
            Field::ResponseTime | Field::Duration | Field::HttpStatus | Field::Index | Field::Coverage => {
                FieldType::Number
            }
            Field::Annotation(_) => FieldType::Any,
            _ => FieldType::String,
        }
    }

    fn spelling(&self) -> &'static str {
        FIELDS.iter().find(|(_, f)| f == self).map_or("annotation", |(name, _)| name)
    }
}

impl Op {
    pub(super) fn spelling(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Contains => "CONTAINS",
            Op::BeginsWith => "BEGINSWITH",
            Op::EndsWith => "ENDSWITH",
        }
    }
}

fn quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in text.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Annotation keys print as `annotation.key` when they read back that way, else quoted.
fn plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => quoted(f, s),
            Value::Num(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Name(name) => quoted(f, name),
            Node::Id { name, kind, account } => {
                f.write_str("id(")?;
                let mut first = true;
                for (key, value) in [("name", name), ("type", kind), ("account.id", account)] {
                    if let Some(value) = value {
                        if !first {
                            f.write_str(", ")?;
                        }
                        first = false;
                        write!(f, "{key}: ")?;
                        quoted(f, value)?;
                    }
                }
                f.write_str(")")
            }
        }
    }
}

/// `expr` as an operand of AND, OR or NOT, in parentheses where `grouped`: AND binds tighter than
/// OR, and both group from the left, as the parser reads them.
fn operand(f: &mut fmt::Formatter<'_>, expr: &Expr, grouped: bool) -> fmt::Result {
    if grouped { write!(f, "({expr})") } else { write!(f, "{expr}") }
}

fn braces(f: &mut fmt::Formatter<'_>, filter: &Option<Box<Expr>>) -> fmt::Result {
    match filter {
        Some(filter) => write!(f, " {{ {filter} }}"),
        None => Ok(()),
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Parentheses only where the tree needs them: each pair printed is a level of nesting
            // when parsed again, and a chain of forty ANDs each in its own pair went past the
            // parser's limit on nesting that the text it was parsed from kept within.
            Expr::And(a, b) => {
                operand(f, a, matches!(**a, Expr::Or(..)))?;
                f.write_str(" AND ")?;
                operand(f, b, matches!(**b, Expr::And(..) | Expr::Or(..)))
            }
            Expr::Or(a, b) => {
                operand(f, a, false)?;
                f.write_str(" OR ")?;
                operand(f, b, matches!(**b, Expr::Or(..)))
            }
            Expr::Not(inner) => {
                f.write_str("!")?;
                operand(f, inner, matches!(**inner, Expr::And(..) | Expr::Or(..)))
            }
            Expr::Test(test) => {
                match &test.field {
                    Field::Annotation(key) if plain_key(key) => write!(f, "annotation.{key}")?,
                    Field::Annotation(key) => {
                        f.write_str("annotation[")?;
                        quoted(f, key)?;
                        f.write_str("]")?;
                    }
                    other => f.write_str(other.spelling())?,
                }
                match &test.compare {
                    Some((op, value)) => write!(f, " {} {value}", op.spelling()),
                    None => Ok(()),
                }
            }
            Expr::Service { node, filter } => {
                f.write_str("service(")?;
                if let Some(node) = node {
                    write!(f, "{node}")?;
                }
                f.write_str(")")?;
                braces(f, filter)
            }
            Expr::Edge { from, to, filter } => {
                write!(f, "edge({from}, {to})")?;
                braces(f, filter)
            }
            Expr::Group { by, equal, value } => {
                let key = if *by == GroupKey::Name { "group.name" } else { "group.arn" };
                write!(f, "{key} {} ", if *equal { "=" } else { "!=" })?;
                quoted(f, value)
            }
            Expr::RootCause { kind, target, filter } => {
                let kind = match kind {
                    RootCauseKind::Fault => "fault",
                    RootCauseKind::Error => "error",
                    RootCauseKind::ResponseTime => "responsetime",
                };
                let target = match target {
                    RootCauseTarget::Service => "service",
                    RootCauseTarget::Entity => "entity",
                    RootCauseTarget::Exception => "exception",
                };
                write!(f, "rootcause.{kind}.{target} {{ {filter} }}")
            }
            Expr::RootCauseJson(json) => write!(f, "rootcause.json = #{json}"),
        }
    }
}
