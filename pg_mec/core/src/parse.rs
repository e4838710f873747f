//! The error returned when a word such as `"month"` or `"hard"` is not one of the accepted values.

use thiserror::Error;

/// A string that does not name any variant of an enumeration (a period, an enforcement, a kind, …).
///
/// Its message reads like `invalid period 'weekly': expected one of month, day, hour, lifetime`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {what} '{value}': expected one of {expected}")]
pub struct ParseEnumError {
    /// What was being parsed, e.g. `"period"`.
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted spellings, comma-separated.
    pub expected: &'static str,
}

impl ParseEnumError {
    /// Builds the error for `value` not being a valid `what`.
    pub fn new(what: &'static str, value: &str, expected: &'static str) -> Self {
        Self {
            what,
            value: value.to_owned(),
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_value_and_choices() {
        let e = ParseEnumError::new("period", "weekly", "month, day");
        assert_eq!(
            e.to_string(),
            "invalid period 'weekly': expected one of month, day"
        );
        assert_eq!(e.value, "weekly");
    }
}
