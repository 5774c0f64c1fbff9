//! Consul's `?filter=` expressions (a go-bexpr subset), evaluated against the
//! JSON the stand-in is about to send.
//!
//! Semantics follow the go-bexpr version Consul vendors: a selector that
//! passes through a list (`Checks.Status`) matches when *any* element
//! matches, and the negated operators (`!=`, `not in`, `is not empty`,
//! `not contains`) are the negation of their positive form over the whole
//! list. A missing map key (`Service.Meta.absent`) matches nothing, so its
//! negation matches. Selectors are checked against the Go struct shape
//! ([`schema`]) before anything is evaluated; `matches` (regular
//! expressions) is refused, since the stand-in carries no regex engine.

mod parse;
pub mod schema;

pub use parse::{parse, Expr, MatchExpr, Op, ParseError};
use schema::Ty;
use serde_json::Value;

/// Why a filter could not be built. Displays as Consul's error text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Failed to create boolean expression evaluator: {reason}")]
pub struct FilterError {
    /// go-bexpr's reason.
    pub reason: String,
}

/// A compiled filter for one element type.
#[derive(Debug)]
pub struct Filter {
    root: Node,
    schema: &'static Ty,
}

#[derive(Debug)]
enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Match(Compiled),
}

#[derive(Debug)]
struct Compiled {
    path: Vec<String>,
    positive: Positive,
    negated: bool,
}

#[derive(Debug)]
enum Positive {
    Equal(Coerced),
    In(String),
    IsEmpty,
}

#[derive(Debug)]
enum Coerced {
    Str(String),
    Bool(bool),
    Int(i64),
}

impl Filter {
    /// Parses `expression` and checks it against `schema`.
    ///
    /// # Errors
    /// Syntax errors, unknown selectors, operators that do not apply to the
    /// selected type, values that do not coerce, and `matches`.
    pub fn compile(expression: &str, schema: &'static Ty) -> Result<Self, FilterError> {
        let expr = parse(expression).map_err(|e| FilterError {
            reason: e.to_string(),
        })?;
        let root = compile_node(&expr, schema)?;
        Ok(Self { root, schema })
    }

    /// Whether `datum` (one element, as JSON) passes the filter.
    pub fn matches(&self, datum: &Value) -> bool {
        eval(&self.root, self.schema, datum)
    }
}

fn compile_node(expr: &Expr, schema: &'static Ty) -> Result<Node, FilterError> {
    Ok(match expr {
        Expr::And(a, b) => Node::And(
            Box::new(compile_node(a, schema)?),
            Box::new(compile_node(b, schema)?),
        ),
        Expr::Or(a, b) => Node::Or(
            Box::new(compile_node(a, schema)?),
            Box::new(compile_node(b, schema)?),
        ),
        Expr::Not(a) => Node::Not(Box::new(compile_node(a, schema)?)),
        Expr::Match(m) => Node::Match(compile_match(m, schema)?),
    })
}

fn err(reason: String) -> FilterError {
    FilterError { reason }
}

fn resolve<'t>(ty: &'t Ty, path: &[String], full: &str) -> Result<&'t Ty, FilterError> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(ty);
    };
    match ty {
        Ty::Struct(fields) => {
            let field = fields
                .iter()
                .find(|(name, _)| name == first)
                .ok_or_else(|| err(format!("Selector {full:?} is not valid")))?;
            resolve(&field.1, rest, full)
        }
        Ty::StrMap if rest.is_empty() => Ok(&Ty::Str),
        Ty::MapOf(inner) => resolve(inner, rest, full),
        Ty::ListOf(inner) => resolve(inner, path, full),
        _ => Err(err(format!("Selector {full:?} is not valid"))),
    }
}

fn compile_match(m: &MatchExpr, schema: &'static Ty) -> Result<Compiled, FilterError> {
    let full = m.selector.join(".");
    let ty = resolve(schema, &m.selector, &full)?;
    let raw = m.value.clone().unwrap_or_default();
    let invalid_op = || {
        err(format!(
            "Invalid match operator {:?} for selector {full:?}",
            m.op
        ))
    };
    let (positive, negated) = match m.op {
        Op::Equal | Op::NotEqual => {
            let coerced = match ty {
                Ty::Str => Coerced::Str(raw),
                Ty::Bool => Coerced::Bool(
                    parse_go_bool(&raw)
                        .ok_or_else(|| err(format!("Failed to coerce value {raw:?} to bool")))?,
                ),
                Ty::Int => Coerced::Int(
                    raw.parse()
                        .map_err(|_| err(format!("Failed to coerce value {raw:?} to int")))?,
                ),
                _ => return Err(invalid_op()),
            };
            (Positive::Equal(coerced), m.op == Op::NotEqual)
        }
        Op::In | Op::NotIn => match ty {
            Ty::Str | Ty::StrList | Ty::StrMap | Ty::MapOf(_) => {
                (Positive::In(raw), m.op == Op::NotIn)
            }
            _ => return Err(invalid_op()),
        },
        Op::IsEmpty | Op::IsNotEmpty => match ty {
            Ty::Str | Ty::StrList | Ty::StrMap | Ty::MapOf(_) | Ty::ListOf(_) => {
                (Positive::IsEmpty, m.op == Op::IsNotEmpty)
            }
            _ => return Err(invalid_op()),
        },
        Op::Matches | Op::NotMatches => {
            return Err(err(
                "the consul stand-in does not implement the \"matches\" operator".to_owned(),
            ))
        }
    };
    Ok(Compiled {
        path: m.selector.clone(),
        positive,
        negated,
    })
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn eval(node: &Node, schema: &Ty, datum: &Value) -> bool {
    match node {
        Node::And(a, b) => eval(a, schema, datum) && eval(b, schema, datum),
        Node::Or(a, b) => eval(a, schema, datum) || eval(b, schema, datum),
        Node::Not(a) => !eval(a, schema, datum),
        Node::Match(m) => {
            let mut leaves = Vec::new();
            collect(schema, &m.path, Some(datum), &mut leaves);
            let any = leaves.iter().any(|leaf| leaf_matches(&m.positive, leaf));
            any != m.negated
        }
    }
}

/// A value reached by a selector: `Some(None)` is a field omitted from the
/// JSON (read as its zero value), `None` a missing map key.
type Leaf<'v> = Option<(&'v Ty, Option<&'v Value>)>;

fn collect<'v>(ty: &'v Ty, path: &[String], value: Option<&'v Value>, out: &mut Vec<Leaf<'v>>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(Some((ty, value.filter(|v| !v.is_null()))));
        return;
    };
    match ty {
        Ty::Struct(fields) => {
            if let Some((_, field_ty)) = fields.iter().find(|(name, _)| name == first) {
                collect(
                    field_ty,
                    rest,
                    value.and_then(|v| v.get(first.as_str())),
                    out,
                );
            }
        }
        Ty::StrMap | Ty::MapOf(_) => {
            let child = value
                .and_then(|v| v.get(first.as_str()))
                .filter(|v| !v.is_null());
            match (child, ty) {
                (None, _) => out.push(None),
                (Some(c), Ty::MapOf(inner)) => collect(inner, rest, Some(c), out),
                (Some(c), _) => out.push(Some((&Ty::Str, Some(c)))),
            }
        }
        Ty::ListOf(inner) => {
            if let Some(items) = value.and_then(Value::as_array) {
                for item in items {
                    collect(inner, path, Some(item), out);
                }
            }
        }
        _ => {}
    }
}

fn leaf_matches(positive: &Positive, leaf: &Leaf<'_>) -> bool {
    let Some((ty, value)) = leaf else {
        return false;
    };
    match positive {
        Positive::Equal(Coerced::Str(want)) => value.and_then(Value::as_str).unwrap_or("") == want,
        Positive::Equal(Coerced::Bool(want)) => {
            value.and_then(Value::as_bool).unwrap_or(false) == *want
        }
        Positive::Equal(Coerced::Int(want)) => value.and_then(Value::as_i64).unwrap_or(0) == *want,
        Positive::In(needle) => match ty {
            Ty::Str => value
                .and_then(Value::as_str)
                .unwrap_or("")
                .contains(needle.as_str()),
            Ty::StrList => value
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(needle.as_str()))),
            _ => value
                .and_then(Value::as_object)
                .is_some_and(|o| o.contains_key(needle.as_str())),
        },
        Positive::IsEmpty => match value {
            None => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(_) => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn csn(version: Option<&str>, tags: &[&str], statuses: &[&str], kind: Option<&str>) -> Value {
        let mut service = json!({"ID": "web-1", "Service": "web", "Tags": tags, "Port": 8080,
            "Weights": {"Passing": 1, "Warning": 1}, "Connect": {}, "Proxy": {"DestinationServiceName": "web"}});
        if let Some(v) = version {
            service["Meta"] = json!({"version": v});
        }
        if let Some(k) = kind {
            service["Kind"] = json!(k);
        }
        let checks: Vec<Value> = statuses
            .iter()
            .map(|s| json!({"CheckID": "c", "Status": s}))
            .collect();
        json!({"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": service, "Checks": checks})
    }

    fn f(expr: &str) -> Filter {
        Filter::compile(expr, schema::check_service_node()).expect(expr)
    }

    #[test]
    fn subset_filters_of_service_resolvers() {
        let v1 = csn(
            Some("v1"),
            &["primary"],
            &["passing"],
            Some("connect-proxy"),
        );
        let v2 = csn(Some("v2"), &[], &["passing", "warning"], None);
        let none = csn(None, &[], &[], None);
        assert!(f("Service.Meta.version == v1").matches(&v1));
        assert!(!f("Service.Meta.version == v1").matches(&v2));
        assert!(!f("Service.Meta.version == v1").matches(&none));
        assert!(f("Service.Meta.version != v1").matches(&none));
        assert!(f("primary in Service.Tags").matches(&v1));
        assert!(f("Service.Tags contains primary").matches(&v1));
        assert!(f("primary not in Service.Tags").matches(&v2));
        assert!(f("Checks.Status == warning").matches(&v2));
        assert!(!f("Checks.Status == warning").matches(&v1));
        assert!(
            !f("Checks.Status != passing").matches(&v2),
            "negation is over the whole list"
        );
        assert!(f("Checks is empty").matches(&none));
        assert!(f("Service.Kind == \"connect-proxy\"").matches(&v1));
        assert!(
            f("Service.Kind == \"\"").matches(&v2),
            "omitted Kind reads as empty"
        );
        assert!(f("Service.Port == 8080 and not Service.Connect.Native == true").matches(&v1));
        assert!(f("Service.Meta.version == v9 or Service.Meta.version == v2").matches(&v2));
        assert!(f("Service.Meta is empty").matches(&none));
        assert!(f("version in Service.Meta").matches(&v1));
    }

    #[test]
    fn invalid_selectors_and_operators_are_refused() {
        let s = schema::check_service_node();
        for bad in [
            "Service.Nope == x",
            "Service.Tags == x",
            "Service.Port == abc",
            "Service.Meta.a.b == x",
            "Service.Meta.x matches \"a.*\"",
            "Checks == x",
        ] {
            let e = Filter::compile(bad, s).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("Failed to create boolean expression evaluator: "),
                "{e}"
            );
        }
    }

    #[test]
    fn catalog_service_kind_filter() {
        let s = schema::service_node();
        let gw = json!({"ServiceName": "gw", "ServiceKind": "mesh-gateway"});
        let web = json!({"ServiceName": "web"});
        let flt = Filter::compile("ServiceKind == \"mesh-gateway\"", s).unwrap();
        assert!(flt.matches(&gw));
        assert!(!flt.matches(&web));
    }
}
