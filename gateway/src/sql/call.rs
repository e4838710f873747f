//! The SQL of a call plan: `SELECT <json text>, <row count>` of `mec."fn"(named => args)`.

use crate::db::schema::SCHEMA;
use crate::plan::call::CallPlan;
use crate::request::body::Given;
use crate::sql::{quote_ident, Sql};

fn is_json_type(t: &str) -> bool {
    matches!(t, "json" | "jsonb")
}

/// The SQL expression for one argument, binding its value as text.
fn arg_expr(type_name: &str, given: &Given, sql: &mut Sql) -> String {
    match given {
        Given::Null => format!("{}::text::{type_name}", sql.bind(None)),
        Given::Query(v) => format!("{}::text::{type_name}", sql.bind(Some(v.clone()))),
        Given::Str(s) => {
            let v = if is_json_type(type_name) {
                serde_json::Value::String(s.clone()).to_string()
            } else {
                s.clone()
            };
            format!("{}::text::{type_name}", sql.bind(Some(v)))
        }
        Given::Raw(r) => {
            if type_name.ends_with("[]") && r.starts_with('[') {
                format!(
                    "ARRAY(SELECT jsonb_array_elements_text({}::text::jsonb))::{type_name}",
                    sql.bind(Some(r.clone()))
                )
            } else {
                format!("{}::text::{type_name}", sql.bind(Some(r.clone())))
            }
        }
    }
}

/// `SELECT <json text>, <row count> FROM mec."fn"("p_a" => $1::text::uuid, …)`.
/// Arguments are written in declared order so the statement text is stable for caching.
pub fn build(plan: &CallPlan<'_>) -> Sql {
    let (f, args, whole_body) = (plan.function, &plan.args, plan.whole_body.as_deref());
    let mut sql = Sql::default();
    let call_args = if f.takes_whole_body() {
        let p = sql.bind(whole_body.map(str::to_string));
        format!("{p}::text::{}", f.args[0].type_name)
    } else {
        f.args
            .iter()
            .filter_map(|a| {
                args.get(&a.name).map(|g| {
                    format!(
                        "{} => {}",
                        quote_ident(&a.name),
                        arg_expr(&a.type_name, g, &mut sql)
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let call = format!(
        "{}.{}({call_args})",
        quote_ident(SCHEMA),
        quote_ident(&f.name)
    );
    sql.text = if f.returns_set {
        format!("SELECT coalesce(json_agg(_r), '[]')::text, count(*)::int8 FROM {call} _r")
    } else if f.return_type == "void" {
        format!("SELECT NULL::text, 0::int8 FROM {call} _r")
    } else if is_json_type(&f.return_type) {
        format!("SELECT ({call})::text, 1::int8")
    } else {
        format!("SELECT to_json({call})::text, 1::int8")
    };
    sql
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::db::schema::{Arg, Function, Volatility};

    fn meter() -> Function {
        let arg = |n: &str, t: &str, d: bool| Arg {
            name: n.into(),
            type_name: t.into(),
            has_default: d,
        };
        Function {
            name: "meter_consumption".into(),
            args: vec![
                arg("p_idempotency_key", "text", false),
                arg("p_account_id", "uuid", false),
                arg("p_quantity", "numeric", false),
                arg("p_occurred_at", "timestamp with time zone", true),
                arg("p_metadata", "jsonb", true),
                arg("p_tags", "text[]", true),
            ],
            return_type: "jsonb".into(),
            returns_set: false,
            volatility: Volatility::Volatile,
            roles: vec![],
            description: None,
        }
    }

    #[test]
    fn call_sql() {
        let mut args = HashMap::new();
        args.insert("p_quantity".to_string(), Given::Raw("1.50".into()));
        args.insert("p_account_id".to_string(), Given::Str("a'b".into()));
        args.insert("p_idempotency_key".to_string(), Given::Null);
        args.insert("p_metadata".to_string(), Given::Str("x".into()));
        args.insert("p_tags".to_string(), Given::Raw("[\"a\",\"b\"]".into()));
        let f = meter();
        let sql = build(&CallPlan {
            function: &f,
            args,
            whole_body: None,
        });
        assert_eq!(
            sql.text,
            "SELECT (\"mec\".\"meter_consumption\"(\"p_idempotency_key\" => $1::text::text, \
             \"p_account_id\" => $2::text::uuid, \"p_quantity\" => $3::text::numeric, \
             \"p_metadata\" => $4::text::jsonb, \
             \"p_tags\" => ARRAY(SELECT jsonb_array_elements_text($5::text::jsonb))::text[]))::text, 1::int8"
        );
        assert_eq!(
            sql.params,
            vec![
                None,
                Some("a'b".into()),
                Some("1.50".into()),
                Some("\"x\"".into()),
                Some("[\"a\",\"b\"]".into())
            ]
        );
    }
}
