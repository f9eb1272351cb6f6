//! Recursive descent over the tokens, with the field rules of each context checked as it goes,
//! so every mistake is reported at its column with what was expected there.

use super::FilterError;
use super::ast::{Expr, FIELDS, Field, FieldType, GroupKey, Node, Op, RootCauseKind, RootCauseTarget, Test, Value};
use super::lexer::{Tok, Token, lex};

/// Deeper nesting than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// Where a sub-expression is evaluated, which decides the fields it may use.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Context {
    Trace,
    Service,
    Edge,
    RootCause(RootCauseKind, RootCauseTarget),
}

impl Context {
    fn allows(self, field: &Field) -> bool {
        use Field as F;
        match self {
            Context::Trace => matches!(
                field,
                F::Ok
                    | F::Error
                    | F::Fault
                    | F::Throttle
                    | F::Partial
                    | F::Inferred
                    | F::ResponseTime
                    | F::Duration
                    | F::HttpStatus
                    | F::HttpUrl
                    | F::HttpMethod
                    | F::HttpUserAgent
                    | F::HttpClientIp
                    | F::User
                    | F::AvailabilityZone
                    | F::InstanceId
                    | F::ResourceArn
                    | F::Annotation(_)
            ),
            Context::Service => matches!(
                field,
                F::Ok | F::Error | F::Fault | F::Throttle | F::Root | F::Inferred | F::ResponseTime | F::HttpStatus
            ),
            Context::Edge => {
                matches!(field, F::Ok | F::Error | F::Fault | F::Throttle | F::ResponseTime | F::HttpStatus)
            }
            Context::RootCause(kind, target) => match target {
                RootCauseTarget::Service => {
                    matches!(field, F::Name | F::Type | F::AccountId | F::Inferred | F::Index | F::First | F::Last)
                }
                RootCauseTarget::Entity => {
                    matches!(field, F::Name | F::Remote | F::Index | F::First | F::Last)
                        || (*field == F::Coverage && kind == RootCauseKind::ResponseTime)
                }
                RootCauseTarget::Exception => {
                    matches!(field, F::Name | F::Message | F::Index | F::First | F::Last)
                }
            },
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Context::Trace => "at the trace level",
            Context::Service => "inside service(...) { }",
            Context::Edge => "inside edge(...) { }",
            Context::RootCause(..) => "inside this rootcause { }",
        }
    }

    fn field_list(self) -> String {
        let mut names: Vec<&str> = FIELDS.iter().filter(|(_, f)| self.allows(f)).map(|(name, _)| *name).collect();
        if self == Context::Trace {
            names.push("annotation.KEY");
        }
        names.join(", ")
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

pub(super) fn parse(text: &str) -> Result<Expr, FilterError> {
    let mut parser = Parser { tokens: lex(text)?, at: 0, depth: 0 };
    if parser.peek() == &Tok::End {
        return Err(FilterError::at(1, "the filter expression is empty"));
    }
    let expr = parser.or(Context::Trace)?;
    match parser.peek() {
        Tok::End => Ok(expr),
        Tok::RParen => Err(parser.error("this ')' closes nothing")),
        Tok::RBrace => Err(parser.error("this '}' closes nothing")),
        other => Err(parser.error(format!("expected AND, OR or the end, found {}", other.describe()))),
    }
}

fn keyword(tok: &Tok, word: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(word))
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at].tok
    }

    fn col(&self) -> usize {
        self.tokens[self.at].col
    }

    fn next(&mut self) -> Token {
        let token = self.tokens[self.at].clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError::at(self.col(), message)
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), FilterError> {
        if *self.peek() == tok {
            self.next();
            Ok(())
        } else {
            Err(self.error(format!("expected {what}, found {}", self.peek().describe())))
        }
    }

    fn or(&mut self, ctx: Context) -> Result<Expr, FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("the expression is nested deeper than {MAX_DEPTH} levels")));
        }
        let mut left = self.and(ctx)?;
        while keyword(self.peek(), "or") {
            self.next();
            let right = self.and(ctx)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self, ctx: Context) -> Result<Expr, FilterError> {
        let mut left = self.unary(ctx)?;
        loop {
            if keyword(self.peek(), "and") {
                self.next();
            } else if !self.starts_term() {
                return Ok(left);
            }
            // Two terms side by side mean AND, as in `ok !partial duration < 3`.
            let right = self.unary(ctx)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
    }

    fn starts_term(&self) -> bool {
        match self.peek() {
            Tok::LParen | Tok::Bang => true,
            Tok::Word(w) => !w.eq_ignore_ascii_case("or") && !w.eq_ignore_ascii_case("and"),
            _ => false,
        }
    }

    fn unary(&mut self, ctx: Context) -> Result<Expr, FilterError> {
        if *self.peek() == Tok::Bang || keyword(self.peek(), "not") {
            self.next();
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error(format!("the expression is nested deeper than {MAX_DEPTH} levels")));
            }
            let inner = self.unary(ctx)?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary(ctx)
    }

    fn primary(&mut self, ctx: Context) -> Result<Expr, FilterError> {
        let token = self.next();
        let word = match token.tok {
            Tok::LParen => {
                let inner = self.or(ctx)?;
                self.expect(Tok::RParen, &format!("')' to close the '(' at column {}", token.col))?;
                return Ok(inner);
            }
            Tok::Word(word) => word,
            Tok::End => {
                return Err(FilterError::at(token.col, "expected a condition, found the end of the expression"));
            }
            other => {
                return Err(FilterError::at(token.col, format!("expected a condition, found {}", other.describe())));
            }
        };
        let lower = word.to_ascii_lowercase();
        let is_call = *self.peek() == Tok::LParen;
        match lower.as_str() {
            "service" if is_call => return self.service(ctx, token.col),
            "edge" if is_call => return self.edge(ctx, token.col),
            "group.name" | "group.arn" => return self.group(ctx, &lower, token.col),
            "rootcause.json" => return self.rootcause_json(ctx, token.col),
            _ if lower.starts_with("rootcause.") => return self.rootcause(ctx, &lower, token.col),
            _ => {}
        }
        let field = if lower == "annotation" && *self.peek() == Tok::LBracket {
            self.next();
            let key = match self.next().tok {
                Tok::Str(key) | Tok::Word(key) if !key.is_empty() => key,
                _ => return Err(FilterError::at(token.col, "expected an annotation key inside annotation[...]")),
            };
            self.expect(Tok::RBracket, "']' after the annotation key")?;
            Field::Annotation(key)
        } else if lower.starts_with("annotation.") {
            // Keys keep their case: annotations are case-sensitive.
            let key = &word["annotation.".len()..];
            if key.is_empty() {
                return Err(FilterError::at(token.col, "expected an annotation key after annotation."));
            }
            Field::Annotation(key.to_owned())
        } else {
            FIELDS.iter().find(|(name, _)| *name == lower).map(|(_, f)| f.clone()).ok_or_else(|| {
                FilterError::at(
                    token.col,
                    format!("unknown keyword {word:?}; {} the keywords are: {}", ctx.describe(), ctx.field_list()),
                )
            })?
        };
        if !ctx.allows(&field) {
            let message = if matches!(field, Field::Annotation(_)) {
                "annotations cannot be used inside service(), edge() or rootcause filters".to_owned()
            } else {
                format!("{word:?} cannot be used {}; the keywords there are: {}", ctx.describe(), ctx.field_list())
            };
            return Err(FilterError::at(token.col, message));
        }
        let compare = self.comparison(&field, &word)?;
        Ok(Expr::Test(Test { field, compare }))
    }

    /// The optional `op value` after a field, checked against the field's type.
    fn comparison(&mut self, field: &Field, word: &str) -> Result<Option<(Op, Value)>, FilterError> {
        let op = match self.peek() {
            Tok::Eq => Op::Eq,
            Tok::Ne => Op::Ne,
            Tok::Lt => Op::Lt,
            Tok::Le => Op::Le,
            Tok::Gt => Op::Gt,
            Tok::Ge => Op::Ge,
            t if keyword(t, "contains") => Op::Contains,
            t if keyword(t, "beginswith") => Op::BeginsWith,
            t if keyword(t, "endswith") => Op::EndsWith,
            _ => return Ok(None),
        };
        let op_col = self.col();
        self.next();
        let spelled = op.spelling();
        let string_op = matches!(op, Op::Contains | Op::BeginsWith | Op::EndsWith);
        let order_op = matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
        let ty = field.field_type();
        match ty {
            FieldType::Bool if string_op || order_op => {
                return Err(FilterError::at(
                    op_col,
                    format!("{word} is true or false: use = or != with it, not {spelled}"),
                ));
            }
            FieldType::Number if string_op => {
                return Err(FilterError::at(op_col, format!("{word} is a number: {spelled} compares strings")));
            }
            FieldType::String if order_op => {
                return Err(FilterError::at(
                    op_col,
                    format!("{word} is a string: use =, !=, CONTAINS, BEGINSWITH or ENDSWITH, not {spelled}"),
                ));
            }
            _ => {}
        }
        let value_col = self.col();
        let value = match (self.peek().clone(), ty) {
            (Tok::Word(w), FieldType::Bool | FieldType::Any) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            (Tok::Word(w), FieldType::Bool | FieldType::Any) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            (_, FieldType::Bool) => {
                return Err(FilterError::at(
                    value_col,
                    format!("expected true or false after {spelled}, found {}", self.peek().describe()),
                ));
            }
            (Tok::Num(n), FieldType::Number | FieldType::Any) if !string_op => Value::Num(n),
            (_, FieldType::Number) => {
                return Err(FilterError::at(
                    value_col,
                    format!("expected a number after {spelled}, found {}", self.peek().describe()),
                ));
            }
            (Tok::Str(s), FieldType::String | FieldType::Any) => Value::Str(s),
            // The documentation itself writes `name = traces`: a bare word after = or != is a string.
            (Tok::Word(w), FieldType::String) if !string_op => Value::Str(w),
            _ => {
                let wanted = if string_op { "a string" } else { "a value" };
                return Err(FilterError::at(
                    value_col,
                    format!("expected {wanted} after {spelled}, found {}", self.peek().describe()),
                ));
            }
        };
        self.next();
        Ok(Some((op, value)))
    }

    fn node(&mut self) -> Result<Node, FilterError> {
        match self.peek().clone() {
            Tok::Str(name) => {
                self.next();
                Ok(Node::Name(name))
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("id") => {
                self.next();
                self.expect(Tok::LParen, "'(' after id")?;
                let (mut name, mut kind, mut account) = (None, None, None);
                loop {
                    let key_col = self.col();
                    let key = match self.next().tok {
                        Tok::Word(key) => key.to_ascii_lowercase(),
                        _ => return Err(FilterError::at(key_col, "expected name, type or account.id inside id(...)")),
                    };
                    self.expect(Tok::Colon, &format!("':' after {key}"))?;
                    let value = match self.next().tok {
                        Tok::Str(value) => value,
                        _ => {
                            return Err(FilterError::at(
                                key_col,
                                format!("expected a string for {key} inside id(...)"),
                            ));
                        }
                    };
                    let slot = match key.as_str() {
                        "name" => &mut name,
                        "type" => &mut kind,
                        "account.id" => &mut account,
                        other => {
                            return Err(FilterError::at(
                                key_col,
                                format!("id(...) takes name, type and account.id, not {other:?}"),
                            ));
                        }
                    };
                    if slot.replace(value).is_some() {
                        return Err(FilterError::at(key_col, format!("{key} is given twice in id(...)")));
                    }
                    if *self.peek() == Tok::Comma {
                        self.next();
                        continue;
                    }
                    self.expect(Tok::RParen, "',' or ')' in id(...)")?;
                    return Ok(Node::Id { name, kind, account });
                }
            }
            other => Err(self.error(format!("expected a quoted service name or id(...), found {}", other.describe()))),
        }
    }

    fn filter_braces(&mut self, inner: Context) -> Result<Option<Box<Expr>>, FilterError> {
        if *self.peek() != Tok::LBrace {
            return Ok(None);
        }
        let open = self.col();
        self.next();
        let filter = self.or(inner)?;
        self.expect(Tok::RBrace, &format!("'}}' to close the '{{' at column {open}"))?;
        Ok(Some(Box::new(filter)))
    }

    fn service(&mut self, ctx: Context, col: usize) -> Result<Expr, FilterError> {
        if ctx != Context::Trace {
            return Err(FilterError::at(col, format!("service(...) cannot be used {}", ctx.describe())));
        }
        self.expect(Tok::LParen, "'(' after service")?;
        let node = if *self.peek() == Tok::RParen { None } else { Some(self.node()?) };
        self.expect(Tok::RParen, "')' to close service(")?;
        let filter = self.filter_braces(Context::Service)?;
        Ok(Expr::Service { node, filter })
    }

    fn edge(&mut self, ctx: Context, col: usize) -> Result<Expr, FilterError> {
        if ctx != Context::Trace {
            return Err(FilterError::at(col, format!("edge(...) cannot be used {}", ctx.describe())));
        }
        self.expect(Tok::LParen, "'(' after edge")?;
        let from = self.node()?;
        self.expect(Tok::Comma, "',' between the two services of edge(...)")?;
        let to = self.node()?;
        self.expect(Tok::RParen, "')' to close edge(")?;
        let filter = self.filter_braces(Context::Edge)?;
        Ok(Expr::Edge { from, to, filter })
    }

    fn group(&mut self, ctx: Context, key: &str, col: usize) -> Result<Expr, FilterError> {
        if ctx != Context::Trace {
            return Err(FilterError::at(col, format!("{key} cannot be used {}", ctx.describe())));
        }
        let equal = match self.next().tok {
            Tok::Eq => true,
            Tok::Ne => false,
            _ => return Err(FilterError::at(col, format!("expected = or != after {key}"))),
        };
        let value_col = self.col();
        let Tok::Str(value) = self.next().tok else {
            return Err(FilterError::at(value_col, format!("expected a quoted group {} after {key} =", &key[6..])));
        };
        let by = if key == "group.name" { GroupKey::Name } else { GroupKey::Arn };
        Ok(Expr::Group { by, equal, value })
    }

    fn rootcause(&mut self, ctx: Context, word: &str, col: usize) -> Result<Expr, FilterError> {
        if ctx != Context::Trace {
            return Err(FilterError::at(col, format!("{word} cannot be used {}", ctx.describe())));
        }
        let parts: Vec<&str> = word.split('.').collect();
        let kind = match parts.get(1).copied() {
            Some("fault") => RootCauseKind::Fault,
            Some("error") => RootCauseKind::Error,
            Some("responsetime") => RootCauseKind::ResponseTime,
            _ => {
                return Err(FilterError::at(
                    col,
                    "expected rootcause.fault, rootcause.error, rootcause.responsetime or rootcause.json",
                ));
            }
        };
        let target = match (parts.get(2).copied(), parts.len()) {
            (Some("service"), 3) => RootCauseTarget::Service,
            (Some("entity"), 3) => RootCauseTarget::Entity,
            (Some("exception"), 3) if kind != RootCauseKind::ResponseTime => RootCauseTarget::Exception,
            _ => {
                return Err(FilterError::at(
                    col,
                    format!(
                        "expected {}.service, .entity or .exception",
                        &word[..word.len().min(parts[..2].join(".").len())]
                    ),
                ));
            }
        };
        let inner = Context::RootCause(kind, target);
        let filter = self
            .filter_braces(inner)?
            .ok_or_else(|| self.error(format!("expected '{{' with a condition after {word}")))?;
        Ok(Expr::RootCause { kind, target, filter })
    }

    fn rootcause_json(&mut self, ctx: Context, col: usize) -> Result<Expr, FilterError> {
        if ctx != Context::Trace {
            return Err(FilterError::at(col, format!("rootcause.json cannot be used {}", ctx.describe())));
        }
        self.expect(Tok::Eq, "= after rootcause.json")?;
        let json_col = self.col();
        match self.next().tok {
            Tok::Json(json) => match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(value @ serde_json::Value::Array(_)) => Ok(Expr::RootCauseJson(value)),
                Ok(_) => Err(FilterError::at(json_col, "expected a JSON array of root causes after rootcause.json =")),
                Err(e) => Err(FilterError::at(json_col, format!("the JSON after rootcause.json = is invalid: {e}"))),
            },
            _ => Err(FilterError::at(json_col, "expected a JSON literal #[ ... ] after rootcause.json =")),
        }
    }
}
