//! Parser for the subset of go-bexpr's grammar that Consul's `?filter=` takes.
//!
//! Follows `grammar/grammar.peg` of hashicorp/go-bexpr: `or`/`and` are right
//! associative with `and` binding tighter, `not` is a prefix, keywords need
//! whitespace around them, and a match is one of
//! `Selector (==|!=|contains|not contains|matches|not matches) Value`,
//! `Selector is [not] empty` or `Value [not] in Selector`.
//! Values are selectors-as-text (`v1`), numbers or quoted strings
//! (`"..."` with Go escapes, or raw `` `...` ``).

/// A parsed boolean expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Both sides must hold.
    And(Box<Expr>, Box<Expr>),
    /// Either side holds.
    Or(Box<Expr>, Box<Expr>),
    /// The operand does not hold.
    Not(Box<Expr>),
    /// A single match against a selector.
    Match(MatchExpr),
}

/// The operators of a match expression (`contains` is `In`, as in bexpr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `in` / `contains`
    In,
    /// `not in` / `not contains`
    NotIn,
    /// `is empty`
    IsEmpty,
    /// `is not empty`
    IsNotEmpty,
    /// `matches`
    Matches,
    /// `not matches`
    NotMatches,
}

/// `Selector Op Value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchExpr {
    /// Path segments, e.g. `["Service", "Meta", "version"]`.
    pub selector: Vec<String>,
    /// The operator.
    pub op: Op,
    /// The raw value, absent for `is [not] empty`.
    pub value: Option<String>,
}

/// Where and why parsing failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("1:{} ({}): {message}", .offset + 1, .offset)]
pub struct ParseError {
    /// Byte offset of the failure.
    pub offset: usize,
    /// What went wrong.
    pub message: String,
}

/// Parses a whole filter expression.
///
/// # Errors
/// Any input outside the grammar, including trailing text.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        s: input.as_bytes(),
        pos: 0,
        text: input,
    };
    p.ws();
    let expr = p.or_expr()?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(p.error("no match found, expected: \"and\", \"or\" or EOF"));
    }
    Ok(expr)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> ParseError {
        ParseError {
            offset: self.pos,
            message: message.to_owned(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Optional whitespace; returns whether any was consumed.
    fn ws(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// `_ word _`-style keyword: whitespace, the word, and (if `trailing`)
    /// whitespace after it. Restores the position on failure.
    fn keyword(&mut self, word: &str, leading: bool, trailing: bool) -> bool {
        let save = self.pos;
        if leading && !self.ws() {
            self.pos = save;
            return false;
        }
        if !self.s[self.pos..].starts_with(word.as_bytes()) {
            self.pos = save;
            return false;
        }
        self.pos += word.len();
        if trailing && !self.ws() {
            self.pos = save;
            return false;
        }
        true
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let left = self.and_expr()?;
        if self.keyword("or", true, true) {
            let right = self.or_expr()?;
            return Ok(Expr::Or(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let left = self.not_expr()?;
        if self.keyword("and", true, true) {
            let right = self.and_expr()?;
            return Ok(Expr::And(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("not", false, true) {
            let inner = self.not_expr()?;
            return Ok(match inner {
                Expr::Not(x) => *x,
                other => Expr::Not(Box::new(other)),
            });
        }
        self.paren_expr()
    }

    fn paren_expr(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == Some(b'(') {
            self.pos += 1;
            self.ws();
            let inner = self.or_expr()?;
            self.ws();
            if self.peek() != Some(b')') {
                return Err(self.error("Unmatched parentheses"));
            }
            self.pos += 1;
            return Ok(inner);
        }
        self.match_expr().map(Expr::Match)
    }

    fn match_expr(&mut self) -> Result<MatchExpr, ParseError> {
        let start = self.pos;
        if let Some(selector) = self.selector()? {
            let after_selector = self.pos;
            if let Some(op) = self.selector_op() {
                let value = self
                    .value()?
                    .ok_or_else(|| self.error("expected a value"))?;
                return Ok(MatchExpr {
                    selector,
                    op,
                    value: Some(value),
                });
            }
            if self.keyword("is", true, true) {
                if self.keyword("empty", false, false) {
                    return Ok(MatchExpr {
                        selector,
                        op: Op::IsEmpty,
                        value: None,
                    });
                }
                if self.keyword("not", false, true) && self.keyword("empty", false, false) {
                    return Ok(MatchExpr {
                        selector,
                        op: Op::IsNotEmpty,
                        value: None,
                    });
                }
                self.pos = after_selector;
            }
            self.pos = start;
        }
        // Value (not) in Selector
        let value = self
            .value()?
            .ok_or_else(|| self.error("no match found, expected a match expression"))?;
        let op = if self.keyword("in", true, true) {
            Op::In
        } else if self.keyword("not", true, true) && self.keyword("in", false, true) {
            Op::NotIn
        } else {
            return Err(self.error("no match found, expected a match operator"));
        };
        let selector = self
            .selector()?
            .ok_or_else(|| self.error("Invalid selector"))?;
        Ok(MatchExpr {
            selector,
            op,
            value: Some(value),
        })
    }

    fn selector_op(&mut self) -> Option<Op> {
        let save = self.pos;
        self.ws();
        if self.s[self.pos..].starts_with(b"==") {
            self.pos += 2;
            self.ws();
            return Some(Op::Equal);
        }
        if self.s[self.pos..].starts_with(b"!=") {
            self.pos += 2;
            self.ws();
            return Some(Op::NotEqual);
        }
        self.pos = save;
        if self.keyword("contains", true, true) {
            return Some(Op::In);
        }
        if self.keyword("matches", true, true) {
            return Some(Op::Matches);
        }
        let save = self.pos;
        if self.keyword("not", true, true) {
            if self.keyword("contains", false, true) {
                return Some(Op::NotIn);
            }
            if self.keyword("matches", false, true) {
                return Some(Op::NotMatches);
            }
        }
        self.pos = save;
        None
    }

    fn identifier(&mut self) -> Option<String> {
        let start = self.pos;
        if !matches!(self.peek(), Some(b'a'..=b'z' | b'A'..=b'Z')) {
            return None;
        }
        self.pos += 1;
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'/')
        ) {
            self.pos += 1;
        }
        Some(self.text[start..self.pos].to_owned())
    }

    fn selector(&mut self) -> Result<Option<Vec<String>>, ParseError> {
        let Some(first) = self.identifier() else {
            return Ok(None);
        };
        let mut path = vec![first];
        loop {
            match self.peek() {
                Some(b'.') => {
                    let save = self.pos;
                    self.pos += 1;
                    if let Some(id) = self.identifier() {
                        path.push(id);
                    } else if matches!(self.peek(), Some(b'0'..=b'9')) {
                        let start = self.pos;
                        while matches!(self.peek(), Some(b'0'..=b'9')) {
                            self.pos += 1;
                        }
                        path.push(self.text[start..self.pos].to_owned());
                    } else {
                        self.pos = save;
                        break;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.ws();
                    let lit = self
                        .string_literal()?
                        .ok_or_else(|| self.error("Invalid index"))?;
                    self.ws();
                    if self.peek() != Some(b']') {
                        return Err(self.error("Unclosed index expression"));
                    }
                    self.pos += 1;
                    path.push(lit);
                }
                _ => break,
            }
        }
        Ok(Some(path))
    }

    fn value(&mut self) -> Result<Option<String>, ParseError> {
        if let Some(sel) = self.selector()? {
            return Ok(Some(sel.join(".")));
        }
        if let Some(n) = self.number()? {
            return Ok(Some(n));
        }
        self.string_literal()
    }

    fn number(&mut self) -> Result<Option<String>, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        if self.pos == digits {
            self.pos = start;
            return Ok(None);
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        }
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\r' | b'\n' | b')') => {
                Ok(Some(self.text[start..self.pos].to_owned()))
            }
            _ => Err(self.error("Invalid number literal")),
        }
    }

    fn string_literal(&mut self) -> Result<Option<String>, ParseError> {
        match self.peek() {
            Some(b'`') => {
                let start = self.pos + 1;
                let Some(len) = self.s[start..].iter().position(|&b| b == b'`') else {
                    return Err(self.error("Unterminated string literal"));
                };
                self.pos = start + len + 1;
                Ok(Some(self.text[start..start + len].to_owned()))
            }
            Some(b'"') => {
                let start = self.pos + 1;
                // bexpr's grammar ends a double-quoted string at the next quote.
                let Some(len) = self.s[start..].iter().position(|&b| b == b'"') else {
                    return Err(self.error("Unterminated string literal"));
                };
                self.pos = start + len + 1;
                unquote_go(&self.text[start..start + len])
                    .map(Some)
                    .ok_or_else(|| self.error("invalid syntax in string literal"))
            }
            _ => Ok(None),
        }
    }
}

/// The body of a Go double-quoted string literal, escapes resolved.
fn unquote_go(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(sel: &str, op: Op, v: Option<&str>) -> Expr {
        Expr::Match(MatchExpr {
            selector: sel.split('.').map(str::to_owned).collect(),
            op,
            value: v.map(str::to_owned),
        })
    }

    #[test]
    fn parses_the_forms_consul_documents() {
        assert_eq!(
            parse("Service.Meta.version == v1").unwrap(),
            m("Service.Meta.version", Op::Equal, Some("v1"))
        );
        assert_eq!(
            parse(r#"ServiceKind == "mesh-gateway""#).unwrap(),
            m("ServiceKind", Op::Equal, Some("mesh-gateway"))
        );
        assert_eq!(
            parse("v1 in Service.Tags").unwrap(),
            m("Service.Tags", Op::In, Some("v1"))
        );
        assert_eq!(
            parse("\"v1\" not in Service.Tags").unwrap(),
            m("Service.Tags", Op::NotIn, Some("v1"))
        );
        assert_eq!(
            parse("Service.Tags contains `a b`").unwrap(),
            m("Service.Tags", Op::In, Some("a b"))
        );
        assert_eq!(
            parse("Service.Tags not contains x").unwrap(),
            m("Service.Tags", Op::NotIn, Some("x"))
        );
        assert_eq!(
            parse("Service.Meta is empty").unwrap(),
            m("Service.Meta", Op::IsEmpty, None)
        );
        assert_eq!(
            parse("Service.Meta is not empty").unwrap(),
            m("Service.Meta", Op::IsNotEmpty, None)
        );
        assert_eq!(
            parse("Service.Port == 8080").unwrap(),
            m("Service.Port", Op::Equal, Some("8080"))
        );
        assert_eq!(
            parse(r#"Service.Meta["consul-wan-federation"] == "1""#).unwrap(),
            m("Service.Meta.consul-wan-federation", Op::Equal, Some("1"))
        );
    }

    #[test]
    fn precedence_and_grouping() {
        let e = parse("a == 1 or b == 2 and not c == 3").unwrap();
        let expected = Expr::Or(
            Box::new(m("a", Op::Equal, Some("1"))),
            Box::new(Expr::And(
                Box::new(m("b", Op::Equal, Some("2"))),
                Box::new(Expr::Not(Box::new(m("c", Op::Equal, Some("3"))))),
            )),
        );
        assert_eq!(e, expected);
        let g = parse("(a == 1 or b == 2) and c != 3").unwrap();
        assert!(matches!(g, Expr::And(..)));
        assert_eq!(
            parse("not not a == 1").unwrap(),
            m("a", Op::Equal, Some("1"))
        );
        // "notes" is a selector, not "not es".
        assert_eq!(
            parse("notes == x").unwrap(),
            m("notes", Op::Equal, Some("x"))
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "a ==",
            "a == \"unterminated",
            "(a == 1",
            "a == 1 b == 2",
            "ServiceKind == mesh-gateway",
            "== x",
            "a === b",
            "a == 1x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
