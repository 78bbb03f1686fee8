//! Go-style durations (`"1m30s"`), as Fly configs and query parameters carry them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Go-style duration as Fly configs carry it: `"10s"`, `"1m30s"`, `"250ms"`,
/// or (older clients) an integer count of nanoseconds. Serialized as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Parses a Go duration string; a bare number is taken as seconds, the way
    /// query parameters such as `timeout=60` are meant.
    pub fn parse_lenient(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<f64>() {
            if secs < 0.0 || !secs.is_finite() {
                return Err(format!("invalid duration {text:?}"));
            }
            // Huge values are out of range, not a panic.
            return Duration::try_from_secs_f64(secs)
                .map(Self)
                .map_err(|_| format!("invalid duration {text:?}: out of range"));
        }
        text.parse()
    }
}

impl std::str::FromStr for GoDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let mut total = 0f64;
        let mut rest = text;
        if rest.is_empty() {
            return Err("empty duration".into());
        }
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("invalid duration {text:?}: missing unit"))?;
            if number_len == 0 {
                return Err(format!("invalid duration {text:?}"));
            }
            let value: f64 = rest[..number_len]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}"))?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per_unit = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
            };
            total += value * nanos_per_unit;
            rest = &rest[unit_len..];
        }
        Duration::try_from_secs_f64(total / 1e9)
            .map(Self)
            .map_err(|_| format!("invalid duration {text:?}: out of range"))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"10s\" or integer nanoseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                Ok(GoDuration(Duration::from_nanos(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                u64::try_from(v)
                    .map(|n| GoDuration(Duration::from_nanos(n)))
                    .map_err(|_| E::custom("duration must not be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<GoDuration, E> {
                if v < 0.0 || !v.is_finite() {
                    return Err(E::custom("duration must not be negative"));
                }
                Duration::try_from_secs_f64(v / 1e9)
                    .map(GoDuration)
                    .map_err(|_| E::custom("duration out of range"))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_strings_and_nanoseconds() {
        assert_eq!(
            "10s".parse::<GoDuration>().unwrap().0,
            Duration::from_secs(10)
        );
        assert_eq!(
            "1m30s".parse::<GoDuration>().unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            "250ms".parse::<GoDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        let d: GoDuration = serde_json::from_str("5000000000").unwrap();
        assert_eq!(d.0, Duration::from_secs(5));
        assert!("10".parse::<GoDuration>().is_err());
        assert_eq!(
            GoDuration::parse_lenient("60").unwrap().0,
            Duration::from_secs(60)
        );
        assert_eq!(
            serde_json::to_string(&GoDuration::from_secs(7)).unwrap(),
            "\"7s\""
        );
    }

    #[test]
    fn out_of_range_durations_are_errors_not_panics() {
        assert!(GoDuration::parse_lenient("1e300").is_err());
        assert!(GoDuration::parse_lenient("inf").is_err());
        assert!(GoDuration::parse_lenient("-1").is_err());
        assert!("99999999999999999999h".parse::<GoDuration>().is_err());
        assert!(serde_json::from_str::<GoDuration>("1e300").is_err());
    }
}
