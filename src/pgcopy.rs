//! Encoding DataFrames for `COPY ... FROM STDIN` in PostgreSQL's text
//! format: tab-separated, `\N` for null, backslash escapes. Unlike CSV it
//! cannot confuse an empty string with a null, whatever the data holds.

use std::io::Write;

use polars::prelude::*;

use crate::formats::columns::days_to_date;

/// Casts columns whose types COPY cannot take directly (categoricals...) to
/// text, and rejects the rest with a message naming them.
pub fn prepare(df: DataFrame) -> Result<DataFrame, String> {
    let mut cols = Vec::with_capacity(df.width());
    let mut bad = Vec::new();
    for c in df.columns() {
        let c2 = match c.dtype() {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => c.clone(),
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => c.cast(&DataType::Int64).map_err(|e| e.to_string())?,
            DataType::UInt64 => c.clone(),
            DataType::Float32 | DataType::Float64 | DataType::Boolean | DataType::String | DataType::Date | DataType::Null => c.clone(),
            DataType::Decimal(..) | DataType::Datetime(..) => c.clone(),
            DataType::Categorical(..) | DataType::Enum(..) => c.cast(&DataType::String).map_err(|e| e.to_string())?,
            other => {
                bad.push(format!("`{}` ({other})", c.name()));
                continue;
            }
        };
        cols.push(c2);
    }
    if !bad.is_empty() {
        return Err(format!("columns of these types cannot be loaded into Postgres: {}; cast or drop them in a transform", bad.join(", ")));
    }
    DataFrame::new(df.height(), cols).map(|mut d| {
        d.rechunk_mut();
        d
    })
    .map_err(|e| e.to_string())
}

fn escape(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

fn write_decimal(out: &mut Vec<u8>, v: i128, scale: usize) {
    if v < 0 {
        out.push(b'-');
    }
    let digits = v.unsigned_abs().to_string();
    if scale == 0 {
        out.extend_from_slice(digits.as_bytes());
        return;
    }
    let padded = if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale + 1 - digits.len())) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - scale);
    out.extend_from_slice(int.as_bytes());
    out.push(b'.');
    out.extend_from_slice(frac.as_bytes());
}

fn write_float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        let _ = write!(out, "{f}");
    }
}

/// Appends rows `[start, start + len)` of a prepared frame to `out`.
pub fn encode(df: &DataFrame, start: usize, len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let part = df.slice(start as i64, len);
    let n = part.height();
    let cols: Vec<Series> = part.columns().iter().map(|c| c.as_materialized_series().clone()).collect();
    let mut iters: Vec<Box<dyn Iterator<Item = Cell<'_>> + '_>> = Vec::with_capacity(part.width());
    for s in &cols {
        let it: Box<dyn Iterator<Item = Cell<'_>>> = match s.dtype() {
            DataType::Int8 => Box::new(s.i8().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, |x| Cell::I(x as i64)))),
            DataType::Int16 => Box::new(s.i16().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, |x| Cell::I(x as i64)))),
            DataType::Int32 => Box::new(s.i32().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, |x| Cell::I(x as i64)))),
            DataType::Int64 => Box::new(s.i64().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, Cell::I))),
            DataType::UInt64 => Box::new(s.u64().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, Cell::U))),
            DataType::Float32 => Box::new(s.f32().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, |x| Cell::F(x as f64)))),
            DataType::Float64 => Box::new(s.f64().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, Cell::F))),
            DataType::Boolean => Box::new(s.bool().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, Cell::B))),
            DataType::String => Box::new(s.str().map_err(|e| e.to_string())?.iter().map(|v| v.map_or(Cell::Null, Cell::S))),
            DataType::Date => Box::new(s.date().map_err(|e| e.to_string())?.physical().iter().map(|v| v.map_or(Cell::Null, Cell::D))),
            DataType::Decimal(_, scale) => {
                let scale = *scale;
                Box::new(s.decimal().map_err(|e| e.to_string())?.physical().iter().map(move |v| v.map_or(Cell::Null, |x| Cell::Dec(x, scale))))
            }
            DataType::Datetime(unit, tz) => {
                let to_us: fn(i64) -> i64 = match unit {
                    TimeUnit::Nanoseconds => |x| x / 1000,
                    TimeUnit::Microseconds => |x| x,
                    TimeUnit::Milliseconds => |x| x * 1000,
                };
                let aware = tz.is_some();
                Box::new(s.datetime().map_err(|e| e.to_string())?.physical().iter().map(move |v| v.map_or(Cell::Null, |x| Cell::T(to_us(x), aware))))
            }
            DataType::Null => Box::new(std::iter::repeat_n(Cell::Null, n)),
            other => return Err(format!("column `{}` has type {other}, which cannot be loaded", s.name())),
        };
        iters.push(it);
    }
    let last = iters.len().saturating_sub(1);
    for _ in 0..n {
        for (j, it) in iters.iter_mut().enumerate() {
            match it.next().unwrap_or(Cell::Null) {
                Cell::Null => out.extend_from_slice(b"\\N"),
                Cell::I(x) => {
                    let _ = write!(out, "{x}");
                }
                Cell::U(x) => {
                    let _ = write!(out, "{x}");
                }
                Cell::F(x) => write_float(out, x),
                Cell::B(x) => out.push(if x { b't' } else { b'f' }),
                Cell::S(x) => escape(out, x),
                Cell::D(d) => match days_to_date(d) {
                    Some(date) => {
                        let _ = write!(out, "{date}");
                    }
                    None => return Err(format!("date out of range ({d} days)")),
                },
                Cell::Dec(v, scale) => write_decimal(out, v, scale),
                Cell::T(us, aware) => match chrono::DateTime::from_timestamp_micros(us) {
                    Some(t) => {
                        let _ = write!(out, "{}", t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f"));
                        if aware {
                            out.extend_from_slice(b"+00");
                        }
                    }
                    None => return Err(format!("timestamp out of range ({us} µs)")),
                },
            }
            out.push(if j == last { b'\n' } else { b'\t' });
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Cell<'a> {
    Null,
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(&'a str),
    D(i32),
    Dec(i128, usize),
    T(i64, bool),
}

/// The Postgres type for a polars type, for `create: true`.
pub fn pg_type(d: &DataType) -> Option<String> {
    Some(match d {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Boolean => "boolean".into(),
        DataType::String | DataType::Categorical(..) | DataType::Enum(..) => "text".into(),
        DataType::Decimal(p, s) => format!("numeric({p},{s})"),
        DataType::Date => "date".into(),
        DataType::Datetime(_, None) => "timestamp".into(),
        DataType::Datetime(_, Some(_)) => "timestamptz".into(),
        DataType::Null => "text".into(),
        _ => return None,
    })
}

/// Whether a dataset column of type `d` can be loaded into a table column
/// whose type is `pg` (as `format_type` prints it).
pub fn compatible(d: &DataType, pg: &str) -> bool {
    let numeric = ["smallint", "integer", "bigint", "numeric", "real", "double precision", "money"];
    let is = |names: &[&str]| names.iter().any(|n| pg.starts_with(n));
    match d {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => is(&numeric),
        DataType::Float32 | DataType::Float64 | DataType::Decimal(..) => is(&["numeric", "real", "double precision", "money"]),
        DataType::Boolean => is(&["boolean"]),
        DataType::Date => is(&["date", "timestamp"]),
        DataType::Datetime(_, None) => is(&["timestamp without time zone"]) || pg == "timestamp",
        DataType::Datetime(_, Some(_)) => is(&["timestamp with time zone"]),
        // Text is parsed by Postgres into the column's type (dates, uuids, json...).
        DataType::String | DataType::Categorical(..) | DataType::Enum(..) | DataType::Null => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_is_unambiguous() {
        let df = df!(
            "s" => [Some("a\tb\\c\nd"), Some(""), None],
            "i" => [Some(1i64), None, Some(-3)],
            "f" => [Some(1.5f64), Some(f64::NAN), None],
        )
        .unwrap();
        let mut out = Vec::new();
        encode(&prepare(df).unwrap(), 0, 3, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\\tb\\\\c\\nd\t1\t1.5\n\t\\N\tNaN\n\\N\t-3\t\\N\n");
    }

    #[test]
    fn decimals_dates_and_times() {
        let mut out = Vec::new();
        write_decimal(&mut out, -5, 2);
        out.push(b' ');
        write_decimal(&mut out, 123456, 2);
        assert_eq!(String::from_utf8(out).unwrap(), "-0.05 1234.56");
        let dates = Int32Chunked::from_slice("d".into(), &[19727]).into_series().into_date();
        let ts = Int64Chunked::from_slice("t".into(), &[1_704_448_800_123_456])
            .into_series()
            .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC));
        let df = DataFrame::new(1, vec![dates.into_column(), ts.into_column()]).unwrap();
        let mut out = Vec::new();
        encode(&prepare(df).unwrap(), 0, 1, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "2024-01-05\t2024-01-05 10:00:00.123456+00\n");
    }
}
