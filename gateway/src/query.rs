//! PostgREST's read grammar (`select`, filters, `or`/`and`, `order`, `limit`/`offset`,
//! `Range`) and the SQL it becomes.
//!
//! Identifiers are checked against the schema cache and quoted; values only ever travel as
//! text bind parameters, cast to the column type in SQL (`$1::text::uuid`).

use axum::http::{header, HeaderMap, StatusCode};

use crate::error::ApiError;
use crate::schema_cache::{View, SCHEMA};

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

/// `"ident"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

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
/// Bind parameters of one read (filter values, `in` items). PostgreSQL's protocol allows 65535;
/// a query string long enough to come near that is refused with 400, not sent.
pub const MAX_PARAMS: usize = 10_000;
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

/// `Range: 0-24` (or `items=0-24`); `None` for an absent or unusable header.
pub fn parse_range_header(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let v = v.strip_prefix("items=").unwrap_or(v);
    let (lo, hi) = v.split_once('-')?;
    let lo: u64 = lo.trim().parse().ok()?;
    let hi = match hi.trim() {
        "" => None,
        h => Some(h.parse::<u64>().ok()?),
    };
    match hi {
        Some(h) if h < lo => None,
        _ => Some((lo, hi)),
    }
}

/// Intersect `limit`/`offset` with the `Range` header: (offset, limit).
pub fn effective_range(
    limit: Option<u64>,
    offset: Option<u64>,
    header: Option<(u64, Option<u64>)>,
) -> (u64, Option<u64>) {
    let q_lo = offset.unwrap_or(0);
    if limit == Some(0) {
        return (q_lo, Some(0));
    }
    // Saturating: `limit` and `offset` come from the query string and may be near u64::MAX.
    let q_hi = limit.map(|l| q_lo.saturating_add(l - 1));
    let (h_lo, h_hi) = header.unwrap_or((0, None));
    let lo = q_lo.max(h_lo);
    let hi = match (q_hi, h_hi) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (
        lo,
        hi.map(|h| {
            if h >= lo {
                (h - lo).saturating_add(1)
            } else {
                0
            }
        }),
    )
}

/// Does `Prefer` ask for a count? (exact, planned and estimated all count exactly.)
pub fn prefers_count(headers: &HeaderMap) -> bool {
    let mut count = None;
    for v in headers.get_all("prefer") {
        let Ok(v) = v.to_str() else { continue };
        for p in v.split(',') {
            let p = p.trim();
            if let Some(c) = p.strip_prefix("count=") {
                if count.is_none() {
                    count = Some(matches!(c.trim(), "exact" | "planned" | "estimated"));
                }
            }
        }
    }
    count.unwrap_or(false)
}

/// SQL text and its text parameters.
#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Option<String>>,
}

impl Sql {
    /// Add a parameter and return its `$n` placeholder.
    pub fn bind(&mut self, v: Option<String>) -> String {
        self.params.push(v);
        format!("${}", self.params.len())
    }
}

fn unknown_column(view: &View, col: &str) -> ApiError {
    ApiError::sqlstate(
        "42703",
        format!("column {}.{} does not exist", view.name, col),
        None,
    )
}

fn cond_sql(view: &View, c: &Cond, sql: &mut Sql) -> Result<String, ApiError> {
    let col = view
        .column(&c.column)
        .ok_or_else(|| unknown_column(view, &c.column))?;
    let ident = quote_ident(&col.name);
    let ty = &col.type_name;
    let expr = match c.op {
        Op::Eq | Op::Neq | Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let op = match c.op {
                Op::Eq => "=",
                Op::Neq => "<>",
                Op::Gt => ">",
                Op::Gte => ">=",
                Op::Lt => "<",
                _ => "<=",
            };
            let p = sql.bind(Some(c.value.clone()));
            format!("{ident} {op} {p}::text::{ty}")
        }
        Op::Like | Op::Ilike => {
            let op = if c.op == Op::Like { "LIKE" } else { "ILIKE" };
            let p = sql.bind(Some(c.value.replace('*', "%")));
            format!("{ident}::text {op} {p}::text")
        }
        Op::Is => {
            let what = match c.value.to_ascii_lowercase().as_str() {
                "null" => "NULL",
                "true" => "TRUE",
                "false" => "FALSE",
                "unknown" => "UNKNOWN",
                _ => {
                    return Err(ApiError::bad_query(format!(
                        "\"failed to parse filter (is.{})\": is takes null, true, false or unknown",
                        c.value
                    )))
                }
            };
            format!("{ident} IS {what}")
        }
        Op::In => {
            let items = parse_in_list(&c.value)?;
            if items.is_empty() {
                "FALSE".to_string()
            } else {
                let ps: Vec<String> = items
                    .into_iter()
                    .map(|v| format!("{}::text::{ty}", sql.bind(Some(v))))
                    .collect();
                format!("{ident} = ANY(ARRAY[{}])", ps.join(", "))
            }
        }
    };
    Ok(if c.negate {
        format!("NOT ({expr})")
    } else {
        expr
    })
}

fn expr_sql(view: &View, e: &Expr, sql: &mut Sql) -> Result<String, ApiError> {
    match e {
        Expr::Cond(c) => cond_sql(view, c, sql),
        Expr::Logic { and, negate, items } => {
            let parts = items
                .iter()
                .map(|i| expr_sql(view, i, sql))
                .collect::<Result<Vec<_>, _>>()?;
            let joined = parts.join(if *and { " AND " } else { " OR " });
            Ok(if *negate {
                format!("NOT ({joined})")
            } else {
                format!("({joined})")
            })
        }
    }
}

/// Build the read of `view`: one row with the JSON array (`body`), the number of rows in
/// it (`n`) and, when asked, the total matching the filters (`total`).
pub fn build_read(
    view: &View,
    req: &ReadRequest,
    offset: u64,
    limit: Option<u64>,
    count: bool,
) -> Result<Sql, ApiError> {
    let mut sql = Sql::default();
    let select = if req.select.is_empty() || req.select.iter().all(|s| s.column == "*") {
        "*".to_string()
    } else {
        req.select
            .iter()
            .map(|s| {
                if s.column == "*" {
                    return Ok("_v.*".to_string());
                }
                let col = view
                    .column(&s.column)
                    .ok_or_else(|| unknown_column(view, &s.column))?;
                let name = s.alias.as_deref().unwrap_or(&col.name);
                Ok(format!(
                    "_v.{} AS {}",
                    quote_ident(&col.name),
                    quote_ident(name)
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?
            .join(", ")
    };
    let conds = req
        .filters
        .iter()
        .map(|f| expr_sql(view, f, &mut sql))
        .collect::<Result<Vec<_>, _>>()?;
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let order = req
        .order
        .iter()
        .map(|o| {
            let col = view
                .column(&o.column)
                .ok_or_else(|| unknown_column(view, &o.column))?;
            let mut s = format!("_v.{}", quote_ident(&col.name));
            if o.desc {
                s.push_str(" DESC");
            }
            match o.nulls_first {
                Some(true) => s.push_str(" NULLS FIRST"),
                Some(false) => s.push_str(" NULLS LAST"),
                None => {}
            }
            Ok(s)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let order = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", order.join(", "))
    };
    let from = format!("{}.{} _v", quote_ident(SCHEMA), quote_ident(&view.name));
    let limit_sql = match limit {
        Some(l) => format!(" LIMIT {}::text::int8", sql.bind(Some(l.to_string()))),
        None => String::new(),
    };
    let offset_sql = if offset > 0 {
        format!(" OFFSET {}::text::int8", sql.bind(Some(offset.to_string())))
    } else {
        String::new()
    };
    let total = if count {
        format!("(SELECT count(*) FROM {from}{where_})::int8")
    } else {
        "NULL::int8".to_string()
    };
    let select = if select == "*" {
        "_v.*".to_string()
    } else {
        select
    };
    if sql.params.len() > MAX_PARAMS {
        return Err(ApiError::bad_query(format!(
            "\"failed to parse filter\": more than {MAX_PARAMS} filter values in one request"
        )));
    }
    sql.text = format!(
        "SELECT coalesce(json_agg(_r), '[]')::text AS body, count(*)::int8 AS n, {total} AS total \
         FROM (SELECT {select} FROM {from}{where_}{order}{limit_sql}{offset_sql}) _r"
    );
    Ok(sql)
}

/// `Content-Range` and status for a read (PostgREST's RangeQuery).
pub fn content_range(offset: u64, rows: u64, total: Option<u64>) -> (StatusCode, String) {
    let total_s = total.map_or("*".to_string(), |t| t.to_string());
    let range = if rows == 0 {
        format!("*/{total_s}")
    } else {
        format!("{}-{}/{}", offset, offset.saturating_add(rows - 1), total_s)
    };
    let status = match total {
        None => StatusCode::OK,
        Some(t) if offset > t => StatusCode::RANGE_NOT_SATISFIABLE,
        Some(t) if rows < t => StatusCode::PARTIAL_CONTENT,
        Some(_) => StatusCode::OK,
    };
    (status, range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_cache::Column;

    fn view() -> View {
        View {
            name: "accounts".into(),
            columns: vec![
                Column {
                    name: "account_id".into(),
                    type_name: "uuid".into(),
                },
                Column {
                    name: "name".into(),
                    type_name: "text".into(),
                },
                Column {
                    name: "qty".into(),
                    type_name: "numeric".into(),
                },
            ],
            roles: vec![],
            description: None,
        }
    }

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
        let mut sql = Sql::default();
        let s = expr_sql(&view(), &e, &mut sql).unwrap();
        assert_eq!(
            s,
            "(\"qty\" = $1::text::numeric OR (\"name\"::text LIKE $2::text AND \"qty\" IS NULL) OR \"name\" = $3::text::text)"
        );
        assert_eq!(sql.params[1].as_deref(), Some("a%"));
        assert!(parse_logic("or", "qty.eq.1").is_err());
        assert!(parse_logic("or", "(qty.eq.1").is_err());
    }

    #[test]
    fn builds_sql_with_binds_only() {
        let r = parse_read(&pairs(
            "select=name,n:qty&name=eq.x%27%3B%20drop%20table%20y&qty=in.(1,2)&order=qty.desc.nullslast,name&limit=10&offset=5",
        ))
        .unwrap();
        let sql = build_read(&view(), &r, 5, Some(10), true).unwrap();
        assert!(!sql.text.contains("drop"));
        assert!(sql.text.contains("_v.\"qty\" AS \"n\""));
        assert!(sql
            .text
            .contains("ORDER BY _v.\"qty\" DESC NULLS LAST, _v.\"name\""));
        assert!(sql
            .text
            .contains("\"qty\" = ANY(ARRAY[$2::text::numeric, $3::text::numeric])"));
        assert!(sql
            .text
            .contains("(SELECT count(*) FROM \"mec\".\"accounts\" _v WHERE"));
        assert_eq!(sql.params.len(), 5);
        assert_eq!(sql.params[0].as_deref(), Some("x'; drop table y"));
    }

    #[test]
    fn unknown_columns_are_42703() {
        for q in ["select=nope", "nope=eq.1", "order=nope", "or=(nope.eq.1)"] {
            let r = parse_read(&pairs(q)).unwrap();
            match build_read(&view(), &r, 0, None, false) {
                Err(ApiError::Db { err, .. }) => assert_eq!(err.code, "42703", "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
        // A quote in a name cannot escape the identifier.
        let r = parse_read(&pairs("select=a%22b")).unwrap();
        assert!(build_read(&view(), &r, 0, None, false).is_err());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, "0-24".parse().unwrap());
        assert_eq!(parse_range_header(&h), Some((0, Some(24))));
        h.insert(header::RANGE, "items=5-".parse().unwrap());
        assert_eq!(parse_range_header(&h), Some((5, None)));
        assert_eq!(
            effective_range(None, None, Some((0, Some(24)))),
            (0, Some(25))
        );
        assert_eq!(effective_range(Some(10), Some(5), None), (5, Some(10)));
        assert_eq!(
            effective_range(Some(10), None, Some((5, Some(24)))),
            (5, Some(5))
        );
        assert_eq!(effective_range(Some(0), None, None), (0, Some(0)));
        assert_eq!(
            content_range(0, 25, Some(137)),
            (StatusCode::PARTIAL_CONTENT, "0-24/137".into())
        );
        assert_eq!(
            content_range(0, 3, Some(3)),
            (StatusCode::OK, "0-2/3".into())
        );
        assert_eq!(content_range(0, 0, Some(0)), (StatusCode::OK, "*/0".into()));
        assert_eq!(content_range(0, 0, None), (StatusCode::OK, "*/*".into()));
        assert_eq!(
            content_range(10, 0, Some(3)).0,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
    }

    #[test]
    fn prefer_count() {
        let mut h = HeaderMap::new();
        h.append(
            "prefer",
            "return=representation, count=exact".parse().unwrap(),
        );
        assert!(prefers_count(&h));
        let mut h = HeaderMap::new();
        h.append("prefer", "count=planned".parse().unwrap());
        assert!(prefers_count(&h));
        assert!(!prefers_count(&HeaderMap::new()));
    }
}
