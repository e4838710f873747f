//! SQL built from a plan: identifiers quoted, every value a text bind parameter cast to its
//! type in SQL (`$1::text::uuid`), so nothing a client sends becomes SQL text (PostgREST:
//! Query/QueryBuilder.hs, Query/SqlFragment.hs).

pub mod call;
pub mod read;

/// Bind parameters of one read (filter values, `in` items). PostgreSQL's protocol allows 65535;
/// a query string long enough to come near that is refused with 400, not sent.
pub const MAX_PARAMS: usize = 10_000;
/// `"ident"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
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
