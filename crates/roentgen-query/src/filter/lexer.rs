//! Tokens of the filter expression language, each with the column it starts at.

use super::FilterError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Bang,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Word(String),
    Str(String),
    Num(f64),
    /// The text of a `#[ ... ]` JSON literal, brackets included.
    Json(String),
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub tok: Tok,
    /// 1-based character column.
    pub col: usize,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::LBracket => "'['".into(),
            Tok::RBracket => "']'".into(),
            Tok::Comma => "','".into(),
            Tok::Colon => "':'".into(),
            Tok::Bang => "'!'".into(),
            Tok::Eq => "'='".into(),
            Tok::Ne => "'!='".into(),
            Tok::Lt => "'<'".into(),
            Tok::Le => "'<='".into(),
            Tok::Gt => "'>'".into(),
            Tok::Ge => "'>='".into(),
            Tok::Word(w) => format!("{w:?}"),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Num(n) => format!("the number {n}"),
            Tok::Json(_) => "a JSON literal".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

pub(super) fn lex(text: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let simple = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            ',' => Some(Tok::Comma),
            ':' => Some(Tok::Colon),
            _ => None,
        };
        if let Some(tok) = simple {
            tokens.push(Token { tok, col });
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        match c {
            _ if c.is_whitespace() => i += 1,
            '!' | '<' | '>' | '=' => {
                let (tok, len) = match (c, next) {
                    ('!', Some('=')) => (Tok::Ne, 2),
                    ('!', _) => (Tok::Bang, 1),
                    ('<', Some('=')) => (Tok::Le, 2),
                    ('<', _) => (Tok::Lt, 1),
                    ('>', Some('=')) => (Tok::Ge, 2),
                    ('>', _) => (Tok::Gt, 1),
                    _ => (Tok::Eq, 1),
                };
                tokens.push(Token { tok, col });
                i += len;
            }
            '"' => {
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(FilterError::at(col, "this string is never closed with '\"'")),
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(j + 1) {
                                Some(escaped) => value.push(*escaped),
                                None => return Err(FilterError::at(col, "this string is never closed with '\"'")),
                            }
                            j += 2;
                        }
                        Some(other) => {
                            value.push(*other);
                            j += 1;
                        }
                    }
                }
                tokens.push(Token { tok: Tok::Str(value), col });
                i = j + 1;
            }
            '#' if next == Some('[') => {
                let mut depth = 0usize;
                let mut in_string = false;
                let mut j = i + 1;
                while j < chars.len() {
                    match chars[j] {
                        '\\' if in_string => j += 1,
                        '"' => in_string = !in_string,
                        '[' if !in_string => depth += 1,
                        ']' if !in_string => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(FilterError::at(col, "this JSON literal is never closed with ']'"));
                }
                tokens.push(Token { tok: Tok::Json(chars[i + 1..=j].iter().collect()), col });
                i = j + 1;
            }
            _ if c.is_ascii_digit()
                || (c == '-' && next.is_some_and(|n| n.is_ascii_digit() || n == '.'))
                || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) =>
            {
                let mut j = i + 1;
                while j < chars.len() {
                    let d = chars[j];
                    let exponent_sign = (d == '-' || d == '+') && matches!(chars[j - 1], 'e' | 'E');
                    if d.is_ascii_digit() || d == '.' || d == 'e' || d == 'E' || exponent_sign {
                        j += 1;
                    } else {
                        break;
                    }
                }
                let text: String = chars[i..j].iter().collect();
                let value: f64 = text
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| FilterError::at(col, format!("{text:?} is not a number")))?;
                tokens.push(Token { tok: Tok::Num(value), col });
                i = j;
            }
            _ if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && is_word_char(chars[j]) {
                    j += 1;
                }
                tokens.push(Token { tok: Tok::Word(chars[i..j].iter().collect()), col });
                i = j;
            }
            other => return Err(FilterError::at(col, format!("unexpected character {other:?}"))),
        }
    }
    tokens.push(Token { tok: Tok::End, col: chars.len() + 1 });
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        lex(text).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            toks(r#"http.url CONTAINS "/a\"b" AND responsetime>=2.5e1"#),
            [
                Tok::Word("http.url".into()),
                Tok::Word("CONTAINS".into()),
                Tok::Str("/a\"b".into()),
                Tok::Word("AND".into()),
                Tok::Word("responsetime".into()),
                Tok::Ge,
                Tok::Num(25.0),
                Tok::End
            ]
        );
        assert_eq!(toks("!ok != -1"), [Tok::Bang, Tok::Word("ok".into()), Tok::Ne, Tok::Num(-1.0), Tok::End]);
        assert_eq!(toks(r#"#[{"a":"]"}]"#), [Tok::Json(r#"[{"a":"]"}]"#.into()), Tok::End]);
    }

    #[test]
    fn errors_name_the_column() {
        assert_eq!(lex(r#"user = "abc"#).unwrap_err().to_string(), "this string is never closed with '\"' at column 8");
        assert_eq!(lex("ok & fault").unwrap_err().to_string(), "unexpected character '&' at column 4");
    }
}
