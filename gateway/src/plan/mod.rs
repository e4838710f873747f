//! What a request asks for, checked against the schema cache: a read of a view (`read`) or a call
//! of a function (`call`). The SQL is built from a plan (`sql`).

pub mod call;
pub mod read;
