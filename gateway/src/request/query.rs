//! PostgREST's read grammar — `select`, filters, `or`/`and` trees, `order`, `limit`/`offset` —
//! parsed from the query string into a [`ReadRequest`] (PostgREST: ApiRequest/QueryParams.hs).
//! Names are checked by the plan (`plan::read`), values never interpreted: the SQL binds them as
//! text. Every recursion is bounded ([`MAX_LOGIC_DEPTH`]).

use crate::error::ApiError;

/// Query keys that are never column filters.
pub const RESERVED: &[&str] = &[
    "select",
    "order",
    "limit",
    "offset",
    "or",
    "and",
    "not.or",
    "not.and",
    "columns",
    "on_conflict",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Ilike,
    Is,
    In,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "is" => Op::Is,
            "in" => Op::In,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cond {
    pub column: String,
    pub negate: bool,
    pub op: Op,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Cond(Cond),
    Logic {
        and: bool,
        negate: bool,
        items: Vec<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct OrderTerm {
    pub column: String,
    pub desc: bool,
    /// `Some(true)` nulls first, `Some(false)` nulls last.
    pub nulls_first: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SelectItem {
    /// `*` for all columns.
    pub column: String,
    pub alias: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadRequest {
    pub select: Vec<SelectItem>,
    pub filters: Vec<Expr>,
    pub order: Vec<OrderTerm>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// How deep `and(…)` / `or(…)` may nest in one logic tree. The parser and the SQL builder recurse
/// once per level, so an unbounded depth would let one request overflow a worker's stack and
/// abort the whole process; a deeper tree is refused with 400 before the recursion.
pub const MAX_LOGIC_DEPTH: usize = 32;
/// How much of an unparsable text an error message repeats.
const ECHO_CHARS: usize = 120;

/// `text`, cut to [`ECHO_CHARS`] characters for an error message.
fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn parse_err(what: &str, text: &str) -> ApiError {
    ApiError::bad_query(format!("\"failed to parse {what}\" ({})", echo(text)))
}

/// Decode a form-encoded query string into an ordered list (keys repeat).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(k, _)| !k.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// `[not.]op.value` for `column`.
pub fn parse_condition(column: &str, text: &str) -> Result<Cond, ApiError> {
    let (negate, rest) = match text.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (op, value) = rest
        .split_once('.')
        .ok_or_else(|| parse_err("filter", text))?;
    let op = Op::parse(op).ok_or_else(|| {
        ApiError::bad_query(format!(
            "\"failed to parse filter ({text})\": operator {op:?} is not supported (eq, neq, gt, gte, lt, lte, like, ilike, is, in)"
        ))
    })?;
    Ok(Cond {
        column: column.to_string(),
        negate,
        op,
        value: value.to_string(),
    })
}

/// Split on commas outside parentheses and double quotes.
fn split_top(s: &str) -> Result<Vec<&str>, ApiError> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0usize);
    for (i, c) in s.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(parse_err("logic tree", s));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return Err(parse_err("logic tree", s));
    }
    out.push(&s[start..]);
    Ok(out)
}

/// Remove surrounding double quotes and `\` escapes.
fn unquote(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let mut out = String::with_capacity(s.len());
        let mut chars = s[1..s.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        s.to_string()
    }
}

/// `or=(…)`, `and=(…)`, `not.or=(…)`: the value is a parenthesised list.
pub fn parse_logic(key: &str, value: &str) -> Result<Expr, ApiError> {
    let (negate, name) = match key.strip_prefix("not.") {
        Some(k) => (true, k),
        None => (false, key),
    };
    let inner = value
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| parse_err("logic tree", value))?;
    logic_items(name == "and", negate, inner, 1)
}

/// The items of one `and(…)` / `or(…)` at nesting level `depth` (the outermost is 1).
fn logic_items(and: bool, negate: bool, inner: &str, depth: usize) -> Result<Expr, ApiError> {
    let mut items = Vec::new();
    for item in split_top(inner)? {
        let item = item.trim();
        let nested = [
            ("and(", true, false),
            ("or(", false, false),
            ("not.and(", true, true),
            ("not.or(", false, true),
        ]
        .into_iter()
        .find(|(p, _, _)| item.starts_with(p));
        if let Some((prefix, a, n)) = nested {
            if depth >= MAX_LOGIC_DEPTH {
                return Err(ApiError::bad_query(format!(
                    "\"failed to parse logic tree\" ({}): and/or nest deeper than {MAX_LOGIC_DEPTH} levels",
                    echo(item)
                )));
            }
            let body = item[prefix.len()..]
                .strip_suffix(')')
                .ok_or_else(|| parse_err("logic tree", item))?;
            items.push(logic_items(a, n, body, depth + 1)?);
            continue;
        }
        let (column, rest) = item
            .split_once('.')
            .ok_or_else(|| parse_err("logic tree", item))?;
        let mut cond = parse_condition(column, rest)?;
        if cond.op != Op::In {
            cond.value = unquote(&cond.value);
        }
        items.push(Expr::Cond(cond));
    }
    if items.is_empty() {
        return Err(parse_err("logic tree", inner));
    }
    Ok(Expr::Logic { and, negate, items })
}

/// `in.(a,"b,c")` list items.
pub fn parse_in_list(value: &str) -> Result<Vec<String>, ApiError> {
    let inner = value
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| parse_err("filter", &format!("in.{value}")))?;
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    Ok(split_top(inner)?.into_iter().map(unquote).collect())
}

fn parse_order(text: &str) -> Result<Vec<OrderTerm>, ApiError> {
    let mut out = Vec::new();
    for term in text.split(',') {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let mut parts = term.split('.');
        let column = parts.next().unwrap_or_default().to_string();
        let mut t = OrderTerm {
            column,
            desc: false,
            nulls_first: None,
        };
        for m in parts {
            match m {
                "asc" => t.desc = false,
                "desc" => t.desc = true,
                "nullsfirst" => t.nulls_first = Some(true),
                "nullslast" => t.nulls_first = Some(false),
                _ => return Err(parse_err("order", text)),
            }
        }
        out.push(t);
    }
    Ok(out)
}

fn parse_select(text: &str) -> Result<Vec<SelectItem>, ApiError> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if item.contains('(') || item.contains("::") || item.contains("->") {
            return Err(ApiError::bad_query(format!(
                "\"failed to parse select parameter ({text})\": embedding, casts and JSON paths are not supported"
            )));
        }
        let (alias, column) = match item.split_once(':') {
            Some((a, c)) => (Some(a.trim().to_string()), c.trim().to_string()),
            None => (None, item.to_string()),
        };
        out.push(SelectItem { column, alias });
    }
    Ok(out)
}

fn parse_u64(name: &str, v: &str) -> Result<u64, ApiError> {
    v.trim().parse().map_err(|_| parse_err(name, v))
}

/// The query string of a read.
pub fn parse_read(pairs: &[(String, String)]) -> Result<ReadRequest, ApiError> {
    let mut r = ReadRequest::default();
    for (k, v) in pairs {
        match k.as_str() {
            "select" => r.select.extend(parse_select(v)?),
            "order" => r.order.extend(parse_order(v)?),
            "limit" => r.limit = Some(parse_u64("limit", v)?),
            "offset" => r.offset = Some(parse_u64("offset", v)?),
            "or" | "and" | "not.or" | "not.and" => r.filters.push(parse_logic(k, v)?),
            "columns" | "on_conflict" => {}
            col => r.filters.push(Expr::Cond(parse_condition(col, v)?)),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(Some(q))
    }

    #[test]
    fn query_string_keeps_repeats_and_plus() {
        let p = pairs("qty=gt.1&qty=lt.5&name=eq.a+b");
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].1, "eq.a b");
    }

    #[test]
    fn conditions() {
        let c = parse_condition("name", "not.ilike.*ab*").unwrap();
        assert!(c.negate);
        assert_eq!(c.op, Op::Ilike);
        assert_eq!(c.value, "*ab*");
        assert!(parse_condition("name", "abc").is_err());
        assert!(parse_condition("name", "fts.x").is_err());
        assert_eq!(
            parse_in_list("(a,\"b,c\",\"d\\\"e\")").unwrap(),
            vec!["a", "b,c", "d\"e"]
        );
        assert!(parse_in_list("a,b").is_err());
    }

    #[test]
    fn logic_trees() {
        let e = parse_logic(
            "or",
            "(qty.eq.1,and(name.like.a*,qty.is.null),name.eq.\"x,y\")",
        )
        .unwrap();
        let Expr::Logic { and, items, .. } = &e else {
            panic!()
        };
        assert!(!and);
        assert_eq!(items.len(), 3);
        let Expr::Cond(c) = &items[2] else { panic!() };
        assert_eq!(c.value, "x,y");
        assert!(parse_logic("or", "qty.eq.1").is_err());
        assert!(parse_logic("or", "(qty.eq.1").is_err());
    }

    #[test]
    fn select_order_and_paging() {
        let r = parse_read(&pairs(
            "select=name,n:qty&order=qty.desc.nullslast,name&limit=10&offset=5",
        ))
        .unwrap();
        assert_eq!(r.select.len(), 2);
        assert_eq!(r.select[1].alias.as_deref(), Some("n"));
        assert!(r.order[0].desc && r.order[0].nulls_first == Some(false));
        assert_eq!((r.limit, r.offset), (Some(10), Some(5)));
        assert!(parse_read(&pairs("select=a(b)")).is_err());
        assert!(parse_read(&pairs("order=qty.sideways")).is_err());
        assert!(parse_read(&pairs("limit=-1")).is_err());
    }
}
