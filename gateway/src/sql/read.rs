//! The SQL of a read plan: one row with the JSON array of the rows (`body`), their number (`n`)
//! and, when asked, the total matching the filters (`total`).

use crate::db::schema::SCHEMA;
use crate::error::ApiError;
use crate::plan::read::{Filter, Ordering, ReadPlan, Selected, Test};
use crate::sql::{quote_ident, Sql, MAX_PARAMS};

fn filter_sql(f: &Filter<'_>, sql: &mut Sql) -> String {
    match f {
        Filter::Test {
            column,
            negate,
            test,
        } => {
            let ident = quote_ident(&column.name);
            let ty = &column.type_name;
            let expr = match test {
                Test::Compare(op, value) => {
                    let p = sql.bind(Some(value.clone()));
                    format!("{ident} {op} {p}::text::{ty}")
                }
                Test::Like { ilike, pattern } => {
                    let op = if *ilike { "ILIKE" } else { "LIKE" };
                    let p = sql.bind(Some(pattern.clone()));
                    format!("{ident}::text {op} {p}::text")
                }
                Test::Is(what) => format!("{ident} IS {what}"),
                Test::In(items) if items.is_empty() => "FALSE".to_string(),
                Test::In(items) => {
                    let ps: Vec<String> = items
                        .iter()
                        .map(|v| format!("{}::text::{ty}", sql.bind(Some(v.clone()))))
                        .collect();
                    format!("{ident} = ANY(ARRAY[{}])", ps.join(", "))
                }
            };
            if *negate {
                format!("NOT ({expr})")
            } else {
                expr
            }
        }
        Filter::Logic { and, negate, items } => {
            let parts: Vec<String> = items.iter().map(|i| filter_sql(i, sql)).collect();
            let joined = parts.join(if *and { " AND " } else { " OR " });
            if *negate {
                format!("NOT ({joined})")
            } else {
                format!("({joined})")
            }
        }
    }
}

fn order_sql(o: &Ordering<'_>) -> String {
    let mut s = format!("_v.{}", quote_ident(&o.column.name));
    if o.desc {
        s.push_str(" DESC");
    }
    match o.nulls_first {
        Some(true) => s.push_str(" NULLS FIRST"),
        Some(false) => s.push_str(" NULLS LAST"),
        None => {}
    }
    s
}

/// The read of `plan`; 400 when it would bind more than [`MAX_PARAMS`] values.
pub fn build(plan: &ReadPlan<'_>) -> Result<Sql, ApiError> {
    let mut sql = Sql::default();
    let select = match &plan.select {
        None => "_v.*".to_string(),
        Some(items) => items
            .iter()
            .map(|s| match s {
                Selected::All => "_v.*".to_string(),
                Selected::Column { column, name } => {
                    format!("_v.{} AS {}", quote_ident(&column.name), quote_ident(name))
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    let conds: Vec<String> = plan
        .filters
        .iter()
        .map(|f| filter_sql(f, &mut sql))
        .collect();
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let order = if plan.order.is_empty() {
        String::new()
    } else {
        let terms: Vec<String> = plan.order.iter().map(order_sql).collect();
        format!(" ORDER BY {}", terms.join(", "))
    };
    let from = format!(
        "{}.{} _v",
        quote_ident(SCHEMA),
        quote_ident(&plan.view.name)
    );
    let limit_sql = match plan.limit {
        Some(l) => format!(" LIMIT {}::text::int8", sql.bind(Some(l.to_string()))),
        None => String::new(),
    };
    let offset_sql = if plan.offset > 0 {
        format!(
            " OFFSET {}::text::int8",
            sql.bind(Some(plan.offset.to_string()))
        )
    } else {
        String::new()
    };
    let total = if plan.count {
        format!("(SELECT count(*) FROM {from}{where_})::int8")
    } else {
        "NULL::int8".to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::schema::{Column, View};
    use crate::request::query::{parse_read, query_pairs};

    fn view() -> View {
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

    fn sql_of(q: &str, offset: Option<u64>, count: bool) -> Sql {
        let v = view();
        let req = parse_read(&query_pairs(Some(q))).unwrap();
        let plan = ReadPlan::new(&v, &req, offset.map(|o| (o, None)), count).unwrap();
        build(&plan).unwrap()
    }

    #[test]
    fn builds_sql_with_binds_only() {
        let sql = sql_of(
            "select=name,n:qty&name=eq.x%27%3B%20drop%20table%20y&qty=in.(1,2)&order=qty.desc.nullslast,name&limit=10&offset=5",
            None,
            true,
        );
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
    fn logic_trees_become_nested_conditions() {
        let sql = sql_of(
            "or=(qty.eq.1,and(name.like.a*,qty.is.null),name.eq.\"x,y\")",
            None,
            false,
        );
        assert!(sql.text.contains(
            "WHERE (\"qty\" = $1::text::numeric OR (\"name\"::text LIKE $2::text AND \"qty\" IS NULL) OR \"name\" = $3::text::text)"
        ), "{}", sql.text);
        assert_eq!(sql.params[1].as_deref(), Some("a%"));
    }

    #[test]
    fn quotes_in_names_cannot_escape() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
