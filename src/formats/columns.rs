//! Column types of declared schemas, value parsing, type inference, and
//! typed column builders that turn parsed rows into polars columns.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// A declared column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// Exact decimal with precision and scale, e.g. `decimal(12,2)`.
    Decimal {
        precision: u8,
        scale: u8,
    },
    Text,
    /// `true/false`, `t/f`, `yes/no`, `y/n`, `1/0`.
    Bool,
    /// A date, `%Y-%m-%d` unless a format is given: `date(%d.%m.%Y)`.
    Date {
        format: Option<String>,
    },
    /// A timestamp without time zone (`2024-01-05 13:45:00`, `T` also
    /// accepted), or with a format: `timestamp(%d/%m/%Y %H:%M)`.
    Timestamp {
        format: Option<String>,
    },
    /// A timestamp with a UTC offset (RFC 3339, or a format with `%z`),
    /// stored in UTC.
    TimestampTz {
        format: Option<String>,
    },
}

impl ColumnType {
    pub fn dtype(&self) -> DataType {
        match self {
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal(*precision as usize, *scale as usize),
            ColumnType::Text => DataType::String,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Date { .. } => DataType::Date,
            ColumnType::Timestamp { .. } => DataType::Datetime(TimeUnit::Microseconds, None),
            ColumnType::TimestampTz { .. } => DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Int => f.write_str("int"),
            ColumnType::Float => f.write_str("float"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Text => f.write_str("text"),
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Date { format: None } => f.write_str("date"),
            ColumnType::Date { format: Some(x) } => write!(f, "date({x})"),
            ColumnType::Timestamp { format: None } => f.write_str("timestamp"),
            ColumnType::Timestamp { format: Some(x) } => write!(f, "timestamp({x})"),
            ColumnType::TimestampTz { format: None } => f.write_str("timestamptz"),
            ColumnType::TimestampTz { format: Some(x) } => write!(f, "timestamptz({x})"),
        }
    }
}

impl FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, arg) = match s.find('(') {
            Some(i) if s.ends_with(')') => (s[..i].trim(), Some(s[i + 1..s.len() - 1].trim())),
            Some(_) => {
                return Err(format!(
                    "invalid column type `{s}`: missing `)` (inside a YAML flow mapping `{{...}}` a comma splits values: quote the type, 'decimal(12,2)', or use a block mapping)"
                ));
            }
            None => (s, None),
        };
        let fmt = arg.filter(|a| !a.is_empty()).map(str::to_string);
        if let Some(f) = &fmt
            && matches!(name.to_ascii_lowercase().as_str(), "date" | "timestamp" | "datetime" | "timestamptz")
        {
            check_strftime(s, f)?;
        }
        Ok(match (name.to_ascii_lowercase().as_str(), arg) {
            ("int" | "integer" | "bigint" | "int64", None) => ColumnType::Int,
            ("float" | "double" | "float64", None) => ColumnType::Float,
            ("text" | "string" | "str" | "varchar", None) => ColumnType::Text,
            ("bool" | "boolean", None) => ColumnType::Bool,
            ("decimal" | "numeric", Some(a)) => {
                let (p, sc) = a
                    .split_once(',')
                    .ok_or_else(|| format!("invalid column type `{s}`: write decimal(precision,scale), e.g. decimal(12,2)"))?;
                let precision: u8 = p.trim().parse().map_err(|_| format!("invalid precision in `{s}`"))?;
                let scale: u8 = sc.trim().parse().map_err(|_| format!("invalid scale in `{s}`"))?;
                if precision == 0 || precision > 38 || scale > precision {
                    return Err(format!("invalid column type `{s}`: precision must be 1-38 and scale at most the precision"));
                }
                ColumnType::Decimal { precision, scale }
            }
            ("decimal" | "numeric", None) => {
                return Err(format!("invalid column type `{s}`: write decimal(precision,scale), e.g. decimal(12,2)"));
            }
            ("date", _) => ColumnType::Date { format: fmt },
            ("timestamp" | "datetime", _) => ColumnType::Timestamp { format: fmt },
            ("timestamptz", _) => ColumnType::TimestampTz { format: fmt },
            _ => {
                return Err(format!(
                    "unknown column type `{s}`{}; types: int, float, decimal(p,s), text, bool, date, timestamp, timestamptz (the last three take an optional format, e.g. date(%d/%m/%Y))",
                    crate::diag::hint(name, ["int", "float", "decimal", "text", "bool", "date", "timestamp", "timestamptz"])
                ));
            }
        })
    }
}

/// Refuses a format with a directive chrono does not know (`%Q`).
fn check_strftime(ty: &str, f: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "invalid column type `{ty}`: `{f}` is not a valid strftime format (directives such as %Y %m %d %H %M %S %z; see https://docs.rs/chrono/latest/chrono/format/strftime/)"
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ColumnType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ColumnType".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "int, float, decimal(p,s), text, bool, date, timestamp or timestamptz; dates and timestamps take an optional chrono format: date(%d/%m/%Y)",
            "examples": ["int", "decimal(12,2)", "text", "date", "timestamp(%Y-%m-%d %H:%M:%S)"]
        })
    }
}

/// A declared schema: column names and types, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema(pub Vec<(String, ColumnType)>);

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Visited key by key, in file order, so that an error is reported
        // at the column's own key (`schema.day`).
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Schema;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of column names to types, e.g. {id: int, day: date}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Schema, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = m.next_key::<String>()? {
                    let ty: ColumnType = m.next_value()?;
                    out.push((name, ty));
                }
                Ok(Schema(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for Schema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ColumnSchema".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let item = g.subschema_for::<ColumnType>();
        schemars::json_schema!({
            "type": "object",
            "description": "Column names and types, in order.",
            "additionalProperties": item
        })
    }
}

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Float(f64),
    Dec(i128),
    Text(String),
    Bool(bool),
    Date(i32),
    Micros(i64),
}

const EPOCH_DAYS_CE: i32 = 719_163;

pub fn date_to_days(d: NaiveDate) -> i32 {
    use chrono::Datelike;
    d.num_days_from_ce() - EPOCH_DAYS_CE
}

pub fn days_to_date(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(days + EPOCH_DAYS_CE)
}

/// Parses a decimal string into an integer scaled by `scale`, rounding
/// half away from zero like Postgres, and checking the precision.
pub fn parse_decimal(s: &str, precision: u8, scale: u8) -> Result<i128, String> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` is not a number"));
    }
    let scale = scale as usize;
    let mut v = scaled_digits(int, frac, scale, int.len() + scale > 18).ok_or_else(|| format!("`{s}` is too large"))?;
    if frac.len() > scale && frac.as_bytes()[scale] >= b'5' {
        v += 1;
    }
    let int_digits = int.trim_start_matches('0').len();
    if int_digits + scale > precision as usize || v >= 10i128.pow(precision as u32) {
        return Err(format!("`{s}` does not fit decimal({precision},{scale})"));
    }
    Ok(if neg { -v } else { v })
}

/// The digits of `int` and the first `scale` of `frac` (padded with
/// zeros) as one integer: on u64 when `wide` is false (the caller knows
/// that under 19 digits fit, and u64's arithmetic is several times cheaper
/// than i128's checked one), else on i128, None when too large.
fn scaled_digits(int: &str, frac: &str, scale: usize, wide: bool) -> Option<i128> {
    if !wide {
        let kept = frac.len().min(scale);
        let mut x: u64 = 0;
        for b in int.bytes().chain(frac[..kept].bytes()) {
            x = x * 10 + (b - b'0') as u64;
        }
        return Some((x * 10u64.pow((scale - kept) as u32)) as i128);
    }
    let mut v: i128 = 0;
    for b in int.bytes().chain(frac.bytes().chain(std::iter::repeat(b'0')).take(scale)) {
        v = v.checked_mul(10)?.checked_add((b - b'0') as i128)?;
    }
    Some(v)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// `YYYY-MM-DD`, without chrono's format interpreter (which took a sixth
/// of a CSV extract's time).
fn fast_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(&b[0..4])? as i32, digits(&b[5..7])?, digits(&b[8..10])?)
}

/// `YYYY-MM-DD HH:MM[:SS[.fraction]]`, with a space or a `T`.
fn fast_naive_ts(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 16 || !(b[10] == b' ' || b[10] == b'T') || b[13] != b':' {
        return None;
    }
    let date = fast_date(&b[..10])?;
    let (h, m) = (digits(&b[11..13])?, digits(&b[14..16])?);
    let (sec, nanos) = match &b[16..] {
        [] => (0, 0),
        [b':', s1, s2, rest @ ..] => {
            let sec = digits(&[*s1, *s2])?;
            let nanos = match rest {
                [] => 0,
                [b'.', frac @ ..] if !frac.is_empty() && frac.len() <= 9 => digits(frac)? * 10u32.pow(9 - frac.len() as u32),
                _ => return None,
            };
            (sec, nanos)
        }
        _ => return None,
    };
    date.and_hms_nano_opt(h, m, sec, nanos)
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
}

fn parse_naive_ts(s: &str) -> Option<NaiveDateTime> {
    let t = s.trim();
    if let Some(x) = fast_naive_ts(t) {
        return Some(x);
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(x) = NaiveDateTime::parse_from_str(t, f) {
            return Some(x);
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0))
}

impl ColumnType {
    /// Parses one non-null text value.
    pub fn parse(&self, s: &str) -> Result<Val, String> {
        let bad = |what: &str| format!("`{}` is not {what}", shorten(s));
        match self {
            ColumnType::Text => Ok(Val::Text(s.to_string())),
            ColumnType::Int => parse_int(s).map(Val::Int),
            ColumnType::Float => s.trim().parse::<f64>().map(Val::Float).map_err(|_| bad("a number")),
            ColumnType::Decimal { precision, scale } => parse_decimal(s, *precision, *scale).map(Val::Dec),
            ColumnType::Bool => parse_bool(s).map(Val::Bool).ok_or_else(|| bad("a boolean")),
            ColumnType::Date { format } => {
                if format.is_none()
                    && let Some(d) = fast_date(s.trim().as_bytes())
                {
                    return Ok(Val::Date(date_to_days(d)));
                }
                let f = format.as_deref().unwrap_or("%Y-%m-%d");
                NaiveDate::parse_from_str(s.trim(), f).map(|d| Val::Date(date_to_days(d))).map_err(|_| bad(&format!("a date ({f})")))
            }
            ColumnType::Timestamp { format } => parse_timestamp(s, format.as_deref()).map(Val::Micros),
            ColumnType::TimestampTz { format } => {
                let parsed = match format {
                    Some(f) => DateTime::parse_from_str(s.trim(), f).ok(),
                    None => DateTime::parse_from_rfc3339(s.trim())
                        .ok()
                        .or_else(|| DateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f%#z").ok()),
                };
                parsed.map(|t| Val::Micros(t.timestamp_micros())).ok_or_else(|| bad("a timestamp with a UTC offset (RFC 3339)"))
            }
        }
    }

    /// Converts a JSON value.
    pub fn from_json(&self, v: &serde_json::Value) -> Result<Val, String> {
        use serde_json::Value as J;
        match (self, v) {
            (_, J::Null) => Ok(Val::Null),
            (ColumnType::Int, J::Number(n)) => n.as_i64().map(Val::Int).ok_or_else(|| format!("{n} is not an integer")),
            (ColumnType::Float, J::Number(n)) => n.as_f64().map(Val::Float).ok_or_else(|| format!("{n} is not a number")),
            (ColumnType::Decimal { precision, scale }, J::Number(n)) => parse_decimal(&n.to_string(), *precision, *scale).map(Val::Dec),
            (ColumnType::Bool, J::Bool(b)) => Ok(Val::Bool(*b)),
            (ColumnType::Text, J::String(s)) => Ok(Val::Text(s.clone())),
            (ColumnType::Text, other) => Ok(Val::Text(other.to_string())),
            (_, J::String(s)) => self.parse(s),
            (t, other) => Err(format!("{} is not {t}", shorten(&other.to_string()))),
        }
    }
}

/// An integer column's value.
fn parse_int(s: &str) -> Result<i64, String> {
    s.trim().parse::<i64>().map_err(|_| format!("`{}` is not an integer", shorten(s)))
}

/// A timestamp column's value, in microseconds since the epoch.
fn parse_timestamp(s: &str, format: Option<&str>) -> Result<i64, String> {
    let parsed = match format {
        Some(f) => NaiveDateTime::parse_from_str(s.trim(), f).ok(),
        None => parse_naive_ts(s),
    };
    match parsed {
        Some(t) => Ok(t.and_utc().timestamp_micros()),
        None if DateTime::parse_from_rfc3339(s.trim()).is_ok() => {
            Err(format!("`{}` has a UTC offset; declare the column as timestamptz", shorten(s)))
        }
        None => Err(format!("`{}` is not a timestamp ({})", shorten(s), format.unwrap_or("%Y-%m-%d %H:%M:%S"))),
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 60 { format!("{}…", s.chars().take(60).collect::<String>()) } else { s.to_string() }
}

/// Type inference over text values: the narrowest type every non-empty
/// value parses as (bool, int, float, date, timestamp, else text).
#[derive(Debug, Clone)]
pub struct Infer {
    bool_: bool,
    int: bool,
    float: bool,
    date: bool,
    ts: bool,
    seen: bool,
}

impl Default for Infer {
    fn default() -> Self {
        Infer { bool_: true, int: true, float: true, date: true, ts: true, seen: false }
    }
}

impl Infer {
    pub fn add(&mut self, s: &str) {
        self.seen = true;
        let t = s.trim();
        if self.bool_ && !(t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false")) {
            self.bool_ = false;
        }
        if self.int && t.parse::<i64>().is_err() {
            self.int = false;
        }
        if self.float && t.parse::<f64>().is_err() {
            self.float = false;
        }
        if self.date && NaiveDate::parse_from_str(t, "%Y-%m-%d").is_err() {
            self.date = false;
        }
        if self.ts && parse_naive_ts(t).is_none() {
            self.ts = false;
        }
    }

    /// Takes in what another inference over other values of the column saw.
    pub fn merge(&mut self, other: &Infer) {
        self.bool_ &= other.bool_;
        self.int &= other.int;
        self.float &= other.float;
        self.date &= other.date;
        self.ts &= other.ts;
        self.seen |= other.seen;
    }

    pub fn result(&self) -> ColumnType {
        if !self.seen {
            return ColumnType::Text;
        }
        if self.bool_ {
            ColumnType::Bool
        } else if self.int {
            ColumnType::Int
        } else if self.float {
            ColumnType::Float
        } else if self.date {
            ColumnType::Date { format: None }
        } else if self.ts {
            ColumnType::Timestamp { format: None }
        } else {
            ColumnType::Text
        }
    }
}

/// JSON type inference: numbers, booleans, strings; nested values are text.
#[derive(Debug, Clone, Default)]
pub struct InferJson {
    int: bool,
    float: bool,
    bool_: bool,
    other: bool,
}

impl InferJson {
    pub fn add(&mut self, v: &serde_json::Value) {
        use serde_json::Value as J;
        match v {
            J::Null => {}
            J::Number(n) if n.is_i64() => self.int = true,
            J::Number(_) => self.float = true,
            J::Bool(_) => self.bool_ = true,
            _ => self.other = true,
        }
    }
    pub fn result(&self) -> ColumnType {
        match (self.int, self.float, self.bool_, self.other) {
            (_, _, _, true) => ColumnType::Text,
            (_, _, true, false) if self.int || self.float => ColumnType::Text,
            (false, false, true, false) => ColumnType::Bool,
            (true, false, false, false) => ColumnType::Int,
            (_, true, false, false) => ColumnType::Float,
            _ => ColumnType::Text,
        }
    }
}

/// Accumulates values of one column.
pub enum Builder {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Dec(Vec<Option<i128>>, u8, u8),
    Text(TextColumn),
    Bool(Vec<Option<bool>>),
    Date(Vec<Option<i32>>),
    Ts(Vec<Option<i64>>, bool),
}

/// Text values end to end in one buffer: no allocation per value.
#[derive(Default)]
pub struct TextColumn {
    buf: String,
    /// Where each value ends in `buf`.
    ends: Vec<usize>,
    valid: Vec<bool>,
}

impl TextColumn {
    fn with_capacity(cap: usize) -> TextColumn {
        TextColumn { buf: String::with_capacity(cap.saturating_mul(8)), ends: Vec::with_capacity(cap), valid: Vec::with_capacity(cap) }
    }

    fn push(&mut self, v: Option<&str>) {
        if let Some(s) = v {
            self.buf.push_str(s);
        }
        self.ends.push(self.buf.len());
        self.valid.push(v.is_some());
    }

    fn truncate(&mut self, n: usize) {
        self.ends.truncate(n);
        self.valid.truncate(n);
        self.buf.truncate(self.ends.last().copied().unwrap_or(0));
    }

    fn take(&mut self, name: PlSmallStr) -> Series {
        let t = std::mem::take(self);
        let mut start = 0;
        let values = t.ends.iter().zip(&t.valid).map(|(&end, &valid)| {
            let v = &t.buf[start..end];
            start = end;
            valid.then_some(v)
        });
        StringChunked::from_iter_options(name, values).into_series()
    }
}

impl Builder {
    pub fn new(t: &ColumnType, cap: usize) -> Builder {
        match t {
            ColumnType::Int => Builder::Int(Vec::with_capacity(cap)),
            ColumnType::Float => Builder::Float(Vec::with_capacity(cap)),
            ColumnType::Decimal { precision, scale } => Builder::Dec(Vec::with_capacity(cap), *precision, *scale),
            ColumnType::Text => Builder::Text(TextColumn::with_capacity(cap)),
            ColumnType::Bool => Builder::Bool(Vec::with_capacity(cap)),
            ColumnType::Date { .. } => Builder::Date(Vec::with_capacity(cap)),
            ColumnType::Timestamp { .. } => Builder::Ts(Vec::with_capacity(cap), false),
            ColumnType::TimestampTz { .. } => Builder::Ts(Vec::with_capacity(cap), true),
        }
    }

    /// Pushes a value of this builder's type (parsed by the same column type).
    pub fn push(&mut self, v: Val) {
        match (self, v) {
            (Builder::Int(b), Val::Int(x)) => b.push(Some(x)),
            (Builder::Float(b), Val::Float(x)) => b.push(Some(x)),
            (Builder::Dec(b, ..), Val::Dec(x)) => b.push(Some(x)),
            (Builder::Text(b), Val::Text(x)) => b.push(Some(&x)),
            (Builder::Bool(b), Val::Bool(x)) => b.push(Some(x)),
            (Builder::Date(b), Val::Date(x)) => b.push(Some(x)),
            (Builder::Ts(b, _), Val::Micros(x)) => b.push(Some(x)),
            (b, _) => b.push_null(),
        }
    }

    pub fn push_null(&mut self) {
        match self {
            Builder::Int(b) => b.push(None),
            Builder::Float(b) => b.push(None),
            Builder::Dec(b, ..) => b.push(None),
            Builder::Text(b) => b.push(None),
            Builder::Bool(b) => b.push(None),
            Builder::Date(b) => b.push(None),
            Builder::Ts(b, _) => b.push(None),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Builder::Int(b) => b.len(),
            Builder::Float(b) => b.len(),
            Builder::Dec(b, ..) => b.len(),
            Builder::Text(b) => b.ends.len(),
            Builder::Bool(b) => b.len(),
            Builder::Date(b) => b.len(),
            Builder::Ts(b, _) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the values after the first `n`.
    fn truncate(&mut self, n: usize) {
        match self {
            Builder::Int(b) => b.truncate(n),
            Builder::Float(b) => b.truncate(n),
            Builder::Dec(b, ..) => b.truncate(n),
            Builder::Text(b) => b.truncate(n),
            Builder::Bool(b) => b.truncate(n),
            Builder::Date(b) => b.truncate(n),
            Builder::Ts(b, _) => b.truncate(n),
        }
    }

    /// Turns the accumulated values into a column and empties the builder.
    pub fn take(&mut self, name: &str) -> PolarsResult<Column> {
        let name = PlSmallStr::from(name);
        let s: Series = match self {
            Builder::Int(b) => Series::new(name, std::mem::take(b)),
            Builder::Float(b) => Series::new(name, std::mem::take(b)),
            Builder::Dec(b, p, s) => Int128Chunked::from_iter_options(name, std::mem::take(b).into_iter())
                .into_series()
                .into_decimal(*p as usize, *s as usize)?,
            Builder::Text(b) => b.take(name),
            Builder::Bool(b) => Series::new(name, std::mem::take(b)),
            Builder::Date(b) => Int32Chunked::from_iter_options(name, std::mem::take(b).into_iter()).into_series().into_date(),
            Builder::Ts(b, tz) => Int64Chunked::from_iter_options(name, std::mem::take(b).into_iter())
                .into_series()
                .into_datetime(TimeUnit::Microseconds, if *tz { Some(TimeZone::UTC) } else { None }),
        };
        Ok(s.into_column())
    }
}

/// Builders for a whole schema.
pub struct Rows {
    pub names: Vec<String>,
    pub types: Vec<ColumnType>,
    builders: Vec<Builder>,
}

impl Rows {
    pub fn new(schema: &Schema, cap: usize) -> Rows {
        Rows {
            names: schema.0.iter().map(|(n, _)| n.clone()).collect(),
            types: schema.0.iter().map(|(_, t)| t.clone()).collect(),
            builders: schema.0.iter().map(|(_, t)| Builder::new(t, cap)).collect(),
        }
    }

    /// Empty rows of the same columns.
    pub fn like(&self, cap: usize) -> Rows {
        Rows { names: self.names.clone(), types: self.types.clone(), builders: self.types.iter().map(|t| Builder::new(t, cap)).collect() }
    }

    pub fn len(&self) -> usize {
        self.builders.first().map_or(0, Builder::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses `s` by column `c`'s type and pushes it (text without a copy of its own).
    pub fn push_parsed(&mut self, c: usize, s: &str) -> Result<(), String> {
        // The common types straight into their builders, without a `Val`.
        match (&mut self.builders[c], &self.types[c]) {
            (Builder::Text(b), _) => b.push(Some(s)),
            (Builder::Int(b), ColumnType::Int) => b.push(Some(parse_int(s)?)),
            (Builder::Dec(b, precision, scale), _) => b.push(Some(parse_decimal(s, *precision, *scale)?)),
            (Builder::Ts(b, _), ColumnType::Timestamp { format }) => b.push(Some(parse_timestamp(s, format.as_deref())?)),
            (b, t) => b.push(t.parse(s)?),
        }
        Ok(())
    }

    /// Pushes a text value to column `c`, a text column.
    pub fn push_text(&mut self, c: usize, s: &str) {
        match &mut self.builders[c] {
            Builder::Text(b) => b.push(Some(s)),
            b => b.push(Val::Text(s.to_string())),
        }
    }

    pub fn push_null_at(&mut self, c: usize) {
        self.builders[c].push_null();
    }

    /// Drops the rows after the first `n` (and any values of a row begun after them).
    pub fn truncate(&mut self, n: usize) {
        for b in &mut self.builders {
            b.truncate(n);
        }
    }

    /// Pushes one complete row of parsed values (one per column).
    pub fn push(&mut self, row: Vec<Val>) {
        debug_assert_eq!(row.len(), self.builders.len());
        for (b, v) in self.builders.iter_mut().zip(row) {
            b.push(v);
        }
    }

    /// The rows so far as a DataFrame; the builders are emptied.
    pub fn take(&mut self) -> PolarsResult<DataFrame> {
        let height = self.len();
        let cols = self.builders.iter_mut().zip(&self.names).map(|(b, n)| b.take(n)).collect::<PolarsResult<Vec<_>>>()?;
        DataFrame::new(height, cols)
    }

    /// The polars schema of the frames this produces.
    pub fn polars_schema(&self) -> polars::prelude::Schema {
        self.names.iter().zip(&self.types).map(|(n, t)| Field::new(n.as_str().into(), t.dtype())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_date_and_time_parsing_agrees_with_chrono() {
        for s in ["2024-01-05", "2024-02-29", "1999-12-31"] {
            assert_eq!(fast_date(s.as_bytes()), NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(), "{s}");
        }
        for s in ["2024-02-30", "2023-02-29", "2024-13-01", "2024-1-05", "20240105", "2024-01-0x"] {
            assert_eq!(fast_date(s.as_bytes()), None, "{s}");
        }
        let chrono_ts = |s: &str| {
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        };
        for s in ["2024-01-05 13:45:07", "2024-01-05T13:45:07.5", "2024-01-05 13:45:07.123456789", "2024-01-05 00:00", "2024-01-05T23:59"] {
            assert_eq!(fast_naive_ts(s), chrono_ts(s), "{s}");
            assert!(fast_naive_ts(s).is_some(), "{s}");
        }
        for s in [
            "2024-01-05 24:00:00",
            "2024-01-05 13:60:00",
            "2024-01-05 13:45:07.",
            "2024-01-05 13:45:07Z",
            "2024-01-05 13:45:7",
            "2024-01-05 13:45:07.1234567890",
        ] {
            assert_eq!(fast_naive_ts(s), None, "{s}");
        }
        // What the fast path refuses, the general one still reads.
        assert_eq!(
            ColumnType::Timestamp { format: None }.parse(" 2024-01-05 "),
            Ok(Val::Micros(NaiveDate::from_ymd_opt(2024, 1, 5).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()))
        );
    }

    #[test]
    fn decimals_read_the_same_on_both_paths() {
        // Every value the u64 path takes (under 19 digits) gives the same
        // number on the i128 one.
        let ints = ["", "0", "7", "00012", "999999999", "123456789012345", "9999999999999999", "99999999999999999", "999999999999999999"];
        let fracs = ["", "5", "49", "995", "123456", "000000000000000000009"];
        let mut n = 0;
        for int in ints {
            for frac in fracs {
                for scale in 0..=18 - int.len() {
                    assert_eq!(
                        scaled_digits(int, frac, scale, false),
                        scaled_digits(int, frac, scale, true),
                        "{int}.{frac}, scale {scale}"
                    );
                    n += 1;
                }
            }
        }
        assert_eq!(n, 6 * (19 + 18 + 18 + 14 + 10 + 4 + 3 + 2 + 1));
        assert_eq!(scaled_digits("123", "4567", 2, false), Some(12345));
        assert_eq!(parse_decimal("99999999999999999.5", 38, 2), Ok(9999999999999999950), "the i128 path");
    }

    #[test]
    fn decimals_round_and_check_precision() {
        assert_eq!(parse_decimal("123.45", 12, 2), Ok(12345));
        assert_eq!(parse_decimal("-0.5", 12, 2), Ok(-50));
        assert_eq!(parse_decimal("1.005", 12, 2), Ok(101));
        assert_eq!(parse_decimal("7", 12, 2), Ok(700));
        assert!(parse_decimal("12345678901.00", 12, 2).is_err());
        assert!(parse_decimal("1,234.00", 12, 2).is_err());
        assert!(parse_decimal("abc", 12, 2).is_err());
    }

    #[test]
    fn types_parse_from_declarations() {
        assert_eq!("decimal(12, 2)".parse::<ColumnType>().unwrap(), ColumnType::Decimal { precision: 12, scale: 2 });
        assert_eq!("date(%d/%m/%Y)".parse::<ColumnType>().unwrap(), ColumnType::Date { format: Some("%d/%m/%Y".into()) });
        assert!("decimel(1,2)".parse::<ColumnType>().unwrap_err().contains("did you mean `decimal`"));
        let ts = ColumnType::Timestamp { format: None };
        assert_eq!(ts.parse("2024-01-05 10:00:00"), Ok(Val::Micros(1_704_448_800_000_000)));
        assert!(ts.parse("2024-01-05T10:00:00+09:00").unwrap_err().contains("timestamptz"));
        let tz = ColumnType::TimestampTz { format: None };
        assert_eq!(tz.parse("2024-01-05T19:00:00+09:00"), Ok(Val::Micros(1_704_448_800_000_000)));
    }

    #[test]
    fn inference_widens() {
        let mut i = Infer::default();
        i.add("1");
        i.add("2.5");
        assert_eq!(i.result(), ColumnType::Float);
        let mut d = Infer::default();
        d.add("2024-01-01");
        d.add("2024-01-01 10:00:00");
        assert_eq!(d.result(), ColumnType::Timestamp { format: None });
        let mut t = Infer::default();
        t.add("1");
        t.add("x");
        assert_eq!(t.result(), ColumnType::Text);
    }

    #[test]
    fn builders_make_typed_frames() {
        let schema = Schema(vec![
            ("id".into(), ColumnType::Int),
            ("amount".into(), ColumnType::Decimal { precision: 12, scale: 2 }),
            ("day".into(), ColumnType::Date { format: None }),
        ]);
        let mut rows = Rows::new(&schema, 4);
        rows.push(vec![Val::Int(1), Val::Dec(1050), Val::Date(0)]);
        rows.push(vec![Val::Int(2), Val::Null, Val::Null]);
        let df = rows.take().unwrap();
        assert_eq!(df.height(), 2);
        assert_eq!(df.column("amount").unwrap().dtype(), &DataType::Decimal(12, 2));
        assert_eq!(df.column("day").unwrap().dtype(), &DataType::Date);
        assert!(rows.is_empty());
    }
}
