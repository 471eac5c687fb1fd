//! Human durations: `500ms`, `30s`, `10m`, `1h30m`, `2d`, or a bare number of
//! seconds.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// A duration written as `30s`, `10m`, `1h30m`, `2d`, `500ms` or a number of
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn as_duration(self) -> Duration {
        self.0
    }
    pub fn from_secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {reason}; write a number followed by a unit (ms, s, m, h, d), e.g. `30s`, `10m`, `1h30m`")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses `1h30m`-style durations. Units may repeat in decreasing order,
/// optionally separated by spaces.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError { input: input.to_string(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = Duration::ZERO;
    let mut last_unit_rank = u8::MAX;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number"));
        }
        let n: u64 = s[start..i].parse().map_err(|_| err("the number is too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let (rank, unit) = match &s[ustart..i] {
            "d" => (5, Duration::from_secs(86_400)),
            "h" => (4, Duration::from_secs(3_600)),
            "m" | "min" => (3, Duration::from_secs(60)),
            "s" => (2, Duration::from_secs(1)),
            "ms" => (1, Duration::from_millis(1)),
            "" => return Err(err("a unit is missing after a number")),
            _ => return Err(err("unknown unit")),
        };
        if rank >= last_unit_rank {
            return Err(err("units must go from largest to smallest, each once"));
        }
        last_unit_rank = rank;
        let part = unit.checked_mul(u32::try_from(n).map_err(|_| err("the number is too large"))?);
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(|| err("the duration is too large"))?;
    }
    Ok(total)
}

/// Formats a duration the way it is written in DAG files (`1h30m`, `250ms`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Formats elapsed time for progress and summaries: `0.42s`, `12.3s`, `4m05s`.
pub fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2}s")
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let total = d.as_secs();
        format!("{}m{:02}s", total / 60, total % 60)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `30s`, `10m` or `1h30m`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v).map(Dur::from_secs).map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(Dur(Duration::from_secs_f64(v)))
                } else {
                    Err(E::custom("a duration must be a non-negative number of seconds"))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: a number followed by a unit (ms, s, m, h, d), e.g. `30s`, `10m`, `1h30m`; or a number of seconds.",
            "anyOf": [
                { "type": "string", "pattern": "^\\s*(\\d+\\s*(d|h|m|min|s|ms)\\s*)+$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1h 30m 5s").unwrap(), Duration::from_secs(5405));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("45").unwrap(), Duration::from_secs(45));
    }

    #[test]
    fn rejects_bad_forms_with_a_reason() {
        for bad in ["", "1h30", "m", "10x", "30m1h", "1h1h", "-5s"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
        assert!(parse("1h30").unwrap_err().to_string().contains("unit is missing"));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["1h30m", "10m", "30s", "250ms", "2d", "1d2h3m4s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
