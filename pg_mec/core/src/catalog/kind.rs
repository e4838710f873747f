//! The kind of a resource type: how its usage is counted.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::parse::ParseEnumError;
use crate::period::Period;

/// How a resource type is counted and limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A quantity summed per period (e.g. benchmark runs per month).
    Metered,
    /// A current level limited by a maximum (e.g. storage in GB).
    Gauge,
    /// Held leases (e.g. concurrent jobs).
    Concurrency,
    /// Events per sliding window (e.g. requests per minute).
    Rate,
    /// Boolean on/off.
    Feature,
}

impl Kind {
    /// All kinds, in the order of [`Kind::EXPECTED`].
    pub const ALL: [Kind; 5] = [
        Kind::Metered,
        Kind::Gauge,
        Kind::Concurrency,
        Kind::Rate,
        Kind::Feature,
    ];
    /// The accepted spellings, for messages.
    pub const EXPECTED: &'static str = "metered, gauge, concurrency, rate, feature";

    /// The catalog / SQL spelling: `"metered"`, `"gauge"`, `"concurrency"`, `"rate"`, `"feature"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Metered => "metered",
            Kind::Gauge => "gauge",
            Kind::Concurrency => "concurrency",
            Kind::Rate => "rate",
            Kind::Feature => "feature",
        }
    }

    /// The period a plan entitlement of this kind gets when the catalog names none:
    /// metered → `Month`, gauge and concurrency → `Lifetime`, rate and feature → `None`
    /// (a rate counts per `window_seconds`; a feature is not counted).
    pub fn default_period(&self) -> Option<Period> {
        match self {
            Kind::Metered => Some(Period::Month),
            Kind::Gauge | Kind::Concurrency => Some(Period::Lifetime),
            Kind::Rate | Kind::Feature => None,
        }
    }
}

impl FromStr for Kind {
    type Err = ParseEnumError;

    /// Parses the exact lowercase spelling.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseEnumError::new("kind", s, Kind::EXPECTED))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_and_default_period() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert!("meter".parse::<Kind>().is_err());
        assert_eq!(Kind::Metered.default_period(), Some(Period::Month));
        assert_eq!(Kind::Gauge.default_period(), Some(Period::Lifetime));
        assert_eq!(Kind::Concurrency.default_period(), Some(Period::Lifetime));
        assert_eq!(Kind::Rate.default_period(), None);
        assert_eq!(Kind::Feature.default_period(), None);
    }
}
