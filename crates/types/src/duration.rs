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

/// Fraction digits beyond this many are ignored: they are worth less than a
/// nanosecond of the largest unit, and keep the arithmetic within `u128`.
const MAX_FRACTION_DIGITS: usize = 25;
const NANOS_PER_SEC: u128 = 1_000_000_000;

impl std::str::FromStr for GoDuration {
    type Err = String;

    /// Parses exactly, in integer nanoseconds as Go does (a fraction of a
    /// nanosecond is truncated), so every duration's display parses back to it.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Self(Duration::ZERO));
        }
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let invalid = || format!("invalid duration {text:?}");
        let out_of_range = || format!("invalid duration {text:?}: out of range");
        let mut total_nanos: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let whole_len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let whole = &rest[..whole_len];
            rest = &rest[whole_len..];
            let mut fraction = "";
            if let Some(after_point) = rest.strip_prefix('.') {
                let fraction_len = after_point
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after_point.len());
                fraction = &after_point[..fraction_len];
                rest = &after_point[fraction_len..];
            }
            if whole.is_empty() && fraction.is_empty() {
                return Err(invalid());
            }
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per_unit: u128 = match &rest[..unit_len] {
                "" if unit_len == rest.len() => {
                    return Err(format!("invalid duration {text:?}: missing unit"));
                }
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => NANOS_PER_SEC,
                "m" => 60 * NANOS_PER_SEC,
                "h" => 3600 * NANOS_PER_SEC,
                other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
            };
            rest = &rest[unit_len..];
            let whole_nanos = decimal(whole)
                .and_then(|value| value.checked_mul(nanos_per_unit))
                .ok_or_else(out_of_range)?;
            let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
            let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| invalid())?);
            let fraction_nanos = decimal(fraction).ok_or_else(invalid)? * nanos_per_unit / scale;
            total_nanos = total_nanos
                .checked_add(whole_nanos + fraction_nanos)
                .ok_or_else(out_of_range)?;
        }
        let secs = u64::try_from(total_nanos / NANOS_PER_SEC).map_err(|_| out_of_range())?;
        let subsec_nanos = u32::try_from(total_nanos % NANOS_PER_SEC).map_err(|_| invalid())?;
        Ok(Self(Duration::new(secs, subsec_nanos)))
    }
}

/// The value of a run of ASCII digits (0 when empty); `None` past `u128`.
fn decimal(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |value, digit| {
        value.checked_mul(10)?.checked_add(u128::from(digit - b'0'))
    })
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
        assert!(format!("{}ns", u128::MAX).parse::<GoDuration>().is_err());
        assert!("18446744073709551616s".parse::<GoDuration>().is_err());
    }

    #[test]
    fn every_duration_displays_as_text_that_parses_back_to_it() {
        for duration in [
            Duration::from_secs(9_999_999_990),
            Duration::new(u64::MAX, 999_999_999),
            Duration::new(u64::MAX, 0),
            Duration::new(123_456_789, 1_000_000),
            Duration::from_nanos(18_446_744_073_709_551_615),
            Duration::from_nanos(1),
        ] {
            let shown = GoDuration(duration).to_string();
            assert_eq!(
                shown.parse::<GoDuration>(),
                Ok(GoDuration(duration)),
                "{shown}"
            );
        }
        let lenient = GoDuration::parse_lenient("9999999990").unwrap();
        assert_eq!(lenient.to_string().parse::<GoDuration>(), Ok(lenient));
    }

    #[test]
    fn fractions_are_exact_and_truncate_below_a_nanosecond() {
        let parse = |text: &str| text.parse::<GoDuration>().map(|d| d.0);
        assert_eq!(parse("1.1s"), Ok(Duration::from_millis(1100)));
        assert_eq!(parse("0.3s"), Ok(Duration::from_millis(300)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5.s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1.9ns"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("1h2m3.5s"), Ok(Duration::from_millis(3_723_500)));
        assert_eq!(parse("1.5µs"), Ok(Duration::from_nanos(1500)));
        for bad in [".", "s", "1.2.3s", "1x", "1s2", "-1s", "1e3s"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
