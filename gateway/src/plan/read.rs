//! A read of one view, planned: every name the request uses checked against the schema cache
//! (an unknown column is `42703`), every test validated, the range fixed (PostgREST:
//! Plan/ReadPlan.hs, RangeQuery.hs). The SQL is built from the plan (`sql::read`).

use crate::db::schema::{Column, View};
use crate::error::ApiError;
use crate::request::query::{parse_in_list, Cond, Expr, Op, ReadRequest};

/// A read of `view`.
#[derive(Debug)]
pub struct ReadPlan<'v> {
    pub view: &'v View,
    /// `None`: every column.
    pub select: Option<Vec<Selected<'v>>>,
    pub filters: Vec<Filter<'v>>,
    pub order: Vec<Ordering<'v>>,
    pub offset: u64,
    pub limit: Option<u64>,
    /// `Prefer: count=…`: the total matching the filters is counted too.
    pub count: bool,
}

/// One output column, or `*` among others.
#[derive(Debug)]
pub enum Selected<'v> {
    All,
    Column { column: &'v Column, name: String },
}

/// A filter with its column resolved.
#[derive(Debug)]
pub enum Filter<'v> {
    Test {
        column: &'v Column,
        negate: bool,
        test: Test,
    },
    Logic {
        and: bool,
        negate: bool,
        items: Vec<Filter<'v>>,
    },
}

/// What a filter tests, validated.
#[derive(Debug, PartialEq)]
pub enum Test {
    /// `=`, `<>`, `>`, `>=`, `<`, `<=` against a value cast to the column's type.
    Compare(&'static str, String),
    /// `LIKE` / `ILIKE` on the column's text, `*` already turned into `%`.
    Like { ilike: bool, pattern: String },
    /// `IS NULL`, `IS TRUE`, `IS FALSE`, `IS UNKNOWN`.
    Is(&'static str),
    /// `= ANY(…)`; empty: never true.
    In(Vec<String>),
}

#[derive(Debug)]
pub struct Ordering<'v> {
    pub column: &'v Column,
    pub desc: bool,
    /// `Some(true)` nulls first, `Some(false)` nulls last.
    pub nulls_first: Option<bool>,
}

fn unknown_column(view: &View, col: &str) -> ApiError {
    ApiError::sqlstate(
        "42703",
        format!("column {}.{} does not exist", view.name, col),
        None,
    )
}

impl<'v> ReadPlan<'v> {
    /// Plans `req` on `view`, with the `Range` header's bounds (if any) and whether to count.
    pub fn new(
        view: &'v View,
        req: &ReadRequest,
        range: Option<(u64, Option<u64>)>,
        count: bool,
    ) -> Result<ReadPlan<'v>, ApiError> {
        let column = |name: &str| view.column(name).ok_or_else(|| unknown_column(view, name));
        let select = if req.select.is_empty() || req.select.iter().all(|s| s.column == "*") {
            None
        } else {
            Some(
                req.select
                    .iter()
                    .map(|s| {
                        if s.column == "*" {
                            return Ok(Selected::All);
                        }
                        let c = column(&s.column)?;
                        Ok(Selected::Column {
                            column: c,
                            name: s.alias.clone().unwrap_or_else(|| c.name.clone()),
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()?,
            )
        };
        let filters = req
            .filters
            .iter()
            .map(|f| filter(view, f))
            .collect::<Result<Vec<_>, _>>()?;
        let order = req
            .order
            .iter()
            .map(|o| {
                Ok(Ordering {
                    column: column(&o.column)?,
                    desc: o.desc,
                    nulls_first: o.nulls_first,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let (offset, limit) = effective_range(req.limit, req.offset, range);
        Ok(ReadPlan {
            view,
            select,
            filters,
            order,
            offset,
            limit,
            count,
        })
    }
}

fn filter<'v>(view: &'v View, e: &Expr) -> Result<Filter<'v>, ApiError> {
    match e {
        Expr::Cond(c) => condition(view, c),
        Expr::Logic { and, negate, items } => Ok(Filter::Logic {
            and: *and,
            negate: *negate,
            items: items
                .iter()
                .map(|i| filter(view, i))
                .collect::<Result<Vec<_>, _>>()?,
        }),
    }
}

fn condition<'v>(view: &'v View, c: &Cond) -> Result<Filter<'v>, ApiError> {
    let column = view
        .column(&c.column)
        .ok_or_else(|| unknown_column(view, &c.column))?;
    let test = match c.op {
        Op::Eq => Test::Compare("=", c.value.clone()),
        Op::Neq => Test::Compare("<>", c.value.clone()),
        Op::Gt => Test::Compare(">", c.value.clone()),
        Op::Gte => Test::Compare(">=", c.value.clone()),
        Op::Lt => Test::Compare("<", c.value.clone()),
        Op::Lte => Test::Compare("<=", c.value.clone()),
        Op::Like | Op::Ilike => Test::Like {
            ilike: c.op == Op::Ilike,
            pattern: c.value.replace('*', "%"),
        },
        Op::Is => Test::Is(match c.value.to_ascii_lowercase().as_str() {
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
        }),
        Op::In => Test::In(parse_in_list(&c.value)?),
    };
    Ok(Filter::Test {
        column,
        negate: c.negate,
        test,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::query::{parse_read, query_pairs};

    pub(crate) fn view() -> View {
        let col = |name: &str, ty: &str| Column {
            name: name.into(),
            type_name: ty.into(),
        };
        View {
            name: "accounts".into(),
            columns: vec![
                col("account_id", "uuid"),
                col("name", "text"),
                col("qty", "numeric"),
            ],
            roles: vec![],
            description: None,
        }
    }

    fn plan(q: &str) -> Result<(), ApiError> {
        let req = parse_read(&query_pairs(Some(q)))?;
        let v = view();
        ReadPlan::new(&v, &req, None, false).map(drop)
    }

    #[test]
    fn unknown_columns_are_42703() {
        for q in ["select=nope", "nope=eq.1", "order=nope", "or=(nope.eq.1)"] {
            match plan(q) {
                Err(ApiError::Db { err, .. }) => assert_eq!(err.code, "42703", "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
        // A quote in a name is a name like any other: unknown.
        assert!(plan("select=a%22b").is_err());
    }

    #[test]
    fn tests_are_validated() {
        assert!(plan("qty=is.null&name=like.a*&qty=in.(1,2)").is_ok());
        assert!(plan("qty=is.maybe").is_err());
        assert!(plan("qty=in.1,2").is_err());
    }

    #[test]
    fn ranges() {
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
            effective_range(Some(u64::MAX), Some(u64::MAX), None).0,
            u64::MAX
        );
    }
}
