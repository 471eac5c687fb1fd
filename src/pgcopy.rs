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
    DataFrame::new(df.height(), cols)
        .map(|mut d| {
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

// Numbers, dates and times are written by hand (itoa and fixed-width
// digits): going through `fmt` and chrono's format strings took a fifth of
// a million-row load.

fn write_decimal(out: &mut Vec<u8>, v: i128, scale: usize) {
    if v < 0 {
        out.push(b'-');
    }
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v.unsigned_abs()).as_bytes();
    if scale == 0 {
        out.extend_from_slice(digits);
        return;
    }
    if digits.len() <= scale {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', scale - digits.len()));
        out.extend_from_slice(digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    }
}

fn write_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `n` as exactly `width` digits (n is known to fit).
fn write_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for i in (0..width).rev() {
        out[start + i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Writes the date; returns whether it is BC, which Postgres spells as a
/// suffix after the whole value (`0001-12-31 BC`: there is no year 0).
fn write_date(out: &mut Vec<u8>, d: chrono::NaiveDate) -> bool {
    use chrono::Datelike;
    let (year, bc) = if d.year() >= 1 { (d.year() as u32, false) } else { ((1 - d.year()) as u32, true) };
    let width = if year > 9999 { year.ilog10() as usize + 1 } else { 4 };
    write_digits(out, year, width);
    out.push(b'-');
    write_digits(out, d.month(), 2);
    out.push(b'-');
    write_digits(out, d.day(), 2);
    bc
}

fn write_timestamp(out: &mut Vec<u8>, t: chrono::NaiveDateTime) -> bool {
    use chrono::Timelike;
    let bc = write_date(out, t.date());
    out.push(b' ');
    write_digits(out, t.hour(), 2);
    out.push(b':');
    write_digits(out, t.minute(), 2);
    out.push(b':');
    write_digits(out, t.second(), 2);
    let micros = t.nanosecond() / 1000;
    if micros != 0 {
        out.push(b'.');
        write_digits(out, micros.min(999_999), 6);
    }
    bc
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

/// One iterator of cells per column of a (sliced) frame.
fn cell_iters(part: &DataFrame) -> Result<Vec<Box<dyn Iterator<Item = Cell<'_>> + '_>>, String> {
    let n = part.height();
    let mut iters: Vec<Box<dyn Iterator<Item = Cell<'_>> + '_>> = Vec::with_capacity(part.width());
    for c in part.columns() {
        let s = c.as_materialized_series();
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
                Box::new(
                    s.decimal().map_err(|e| e.to_string())?.physical().iter().map(move |v| v.map_or(Cell::Null, |x| Cell::Dec(x, scale))),
                )
            }
            DataType::Datetime(unit, tz) => {
                let to_us: fn(i64) -> i64 = match unit {
                    TimeUnit::Nanoseconds => |x| x / 1000,
                    TimeUnit::Microseconds => |x| x,
                    TimeUnit::Milliseconds => |x| x * 1000,
                };
                let aware = tz.is_some();
                Box::new(
                    s.datetime()
                        .map_err(|e| e.to_string())?
                        .physical()
                        .iter()
                        .map(move |v| v.map_or(Cell::Null, |x| Cell::T(to_us(x), aware))),
                )
            }
            DataType::Null => Box::new(std::iter::repeat_n(Cell::Null, n)),
            other => return Err(format!("column `{}` has type {other}, which cannot be loaded", s.name())),
        };
        iters.push(it);
    }
    Ok(iters)
}

/// Appends rows `[start, start + len)` of a prepared frame to `out`.
pub fn encode(df: &DataFrame, start: usize, len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let part = df.slice(start as i64, len);
    let n = part.height();
    let mut iters = cell_iters(&part)?;
    let last = iters.len().saturating_sub(1);
    for _ in 0..n {
        for (j, it) in iters.iter_mut().enumerate() {
            match it.next().unwrap_or(Cell::Null) {
                Cell::Null => out.extend_from_slice(b"\\N"),
                Cell::I(x) => write_int(out, x),
                Cell::U(x) => write_int(out, x),
                Cell::F(x) => write_float(out, x),
                Cell::B(x) => out.push(if x { b't' } else { b'f' }),
                Cell::S(x) => escape(out, x),
                Cell::D(d) => match days_to_date(d) {
                    Some(date) => {
                        if write_date(out, date) {
                            out.extend_from_slice(b" BC");
                        }
                    }
                    None => return Err(format!("date out of range ({d} days)")),
                },
                Cell::Dec(v, scale) => write_decimal(out, v, scale),
                Cell::T(us, aware) => match chrono::DateTime::from_timestamp_micros(us) {
                    Some(t) => {
                        let bc = write_timestamp(out, t.naive_utc());
                        if aware {
                            out.extend_from_slice(b"+00");
                        }
                        if bc {
                            out.extend_from_slice(b" BC");
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

// ---- binary format ----
//
// When every dataset column maps onto its table column's type exactly, the
// load uses COPY's binary format: the server then stores values without
// parsing text, which is most of its work in a text COPY (a million-row
// load takes about two thirds of the time). Anything else (json, uuid,
// text into a date column...) uses the text format, which Postgres parses
// into whatever the column is.

/// How one column is written in binary, chosen from the dataset type and
/// the table column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Text,
    /// numeric, from a decimal or an integer column.
    Numeric,
    Date,
    Timestamp,
    /// Nulls only (a column of the Null type).
    Null,
}

/// The binary encoders for a prepared frame's columns given the table's
/// column types (`format_type` spelling, in the frame's column order), or
/// None when some column needs the text format.
pub fn binary_plan(df: &DataFrame, pg_types: &[&str]) -> Option<Vec<Bin>> {
    df.columns()
        .iter()
        .zip(pg_types)
        .map(|(c, pg)| {
            let pg = *pg;
            let int = matches!(c.dtype(), DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt64);
            Some(match c.dtype() {
                DataType::Null => Bin::Null,
                _ if int && pg == "smallint" => Bin::Int2,
                _ if int && pg == "integer" => Bin::Int4,
                _ if int && pg == "bigint" => Bin::Int8,
                _ if (int || matches!(c.dtype(), DataType::Decimal(..))) && (pg == "numeric" || pg.starts_with("numeric(")) => Bin::Numeric,
                DataType::Float32 | DataType::Float64 if pg == "double precision" => Bin::Float8,
                DataType::Float32 | DataType::Float64 if pg == "real" => Bin::Float4,
                DataType::Boolean if pg == "boolean" => Bin::Bool,
                DataType::String if pg == "text" || pg.starts_with("character varying") => Bin::Text,
                DataType::Date if pg == "date" => Bin::Date,
                DataType::Datetime(_, None) if pg.starts_with("timestamp") && pg.ends_with("without time zone") => Bin::Timestamp,
                DataType::Datetime(_, Some(_))
                    if pg.starts_with("timestamp") && pg.ends_with("with time zone") && !pg.ends_with("without time zone") =>
                {
                    Bin::Timestamp
                }
                _ => return None,
            })
        })
        .collect()
}

/// The header every binary COPY stream starts with.
pub const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The trailer that ends it.
pub const BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds and days between the Unix epoch and Postgres' (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Postgres' binary numeric: base-10000 digits with a weight, a sign and
/// the display scale.
fn write_numeric(out: &mut Vec<u8>, v: i128, scale: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v.unsigned_abs()).as_bytes();
    let (int, frac): (&[u8], &[u8]) = if digits.len() > scale { digits.split_at(digits.len() - scale) } else { (b"", digits) };
    let frac_zeros = scale - frac.len();
    let group = |ds: &[u8]| ds.iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0'));
    let mut groups: Vec<i16> = Vec::with_capacity(digits.len() / 4 + 3);
    // Integer digits in groups of four from the right.
    let lead = int.len() % 4;
    if lead > 0 {
        groups.push(group(&int[..lead]));
    }
    for chunk in int[lead..].chunks(4) {
        groups.push(group(chunk));
    }
    let mut weight = groups.len() as i16 - 1;
    // Fraction digits (after `frac_zeros` zeros) in groups of four from the left.
    let mut f: Vec<u8> = std::iter::repeat_n(b'0', frac_zeros).chain(frac.iter().copied()).collect();
    while !f.len().is_multiple_of(4) {
        f.push(b'0');
    }
    for chunk in f.chunks(4) {
        groups.push(group(chunk));
    }
    let first = groups.iter().position(|&g| g != 0);
    let (ndigits, body) = match first {
        None => (0, &groups[..0]),
        Some(i) => {
            weight -= i as i16;
            let last = groups.iter().rposition(|&g| g != 0).expect("a nonzero group exists");
            (last + 1 - i, &groups[i..=last])
        }
    };
    let sign: u16 = if v < 0 && ndigits > 0 { 0x4000 } else { 0 };
    out.extend_from_slice(&((8 + 2 * ndigits) as i32).to_be_bytes());
    out.extend_from_slice(&(ndigits as i16).to_be_bytes());
    out.extend_from_slice(&(if ndigits == 0 { 0 } else { weight }).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as u16).to_be_bytes());
    for g in body {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// Appends rows `[start, start + len)` of a prepared frame to `out` in the
/// binary format (without header or trailer), following `plan`. Errors
/// name rows from `first_row` (the frame's first row in the whole load).
pub fn encode_binary(df: &DataFrame, plan: &[Bin], start: usize, len: usize, first_row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let part = df.slice(start as i64, len);
    let n = part.height();
    let mut iters = cell_iters(&part)?;
    let names: Vec<String> = part.get_column_names().iter().map(|c| c.to_string()).collect();
    let too_big = |j: usize, v: &dyn std::fmt::Display, row: usize| {
        format!("column `{}`: {v} (row {}) does not fit the table's column type", names[j], first_row + start + row + 1)
    };
    for row in 0..n {
        out.extend_from_slice(&(plan.len() as i16).to_be_bytes());
        for (j, (it, bin)) in iters.iter_mut().zip(plan).enumerate() {
            let cell = it.next().unwrap_or(Cell::Null);
            match (cell, bin) {
                (Cell::Null, _) | (_, Bin::Null) => out.extend_from_slice(&(-1i32).to_be_bytes()),
                (Cell::I(x), Bin::Int2) => field(out, &i16::try_from(x).map_err(|_| too_big(j, &x, row))?.to_be_bytes()),
                (Cell::I(x), Bin::Int4) => field(out, &i32::try_from(x).map_err(|_| too_big(j, &x, row))?.to_be_bytes()),
                (Cell::I(x), Bin::Int8) => field(out, &x.to_be_bytes()),
                (Cell::U(x), Bin::Int2) => field(out, &i16::try_from(x).map_err(|_| too_big(j, &x, row))?.to_be_bytes()),
                (Cell::U(x), Bin::Int4) => field(out, &i32::try_from(x).map_err(|_| too_big(j, &x, row))?.to_be_bytes()),
                (Cell::U(x), Bin::Int8) => field(out, &i64::try_from(x).map_err(|_| too_big(j, &x, row))?.to_be_bytes()),
                (Cell::I(x), Bin::Numeric) => write_numeric(out, i128::from(x), 0),
                (Cell::U(x), Bin::Numeric) => write_numeric(out, i128::from(x), 0),
                (Cell::Dec(v, s), Bin::Numeric) => write_numeric(out, v, s),
                (Cell::F(x), Bin::Float8) => field(out, &x.to_be_bytes()),
                (Cell::F(x), Bin::Float4) => field(out, &(x as f32).to_be_bytes()),
                (Cell::B(x), Bin::Bool) => field(out, &[u8::from(x)]),
                (Cell::S(x), Bin::Text) => field(out, x.as_bytes()),
                (Cell::D(d), Bin::Date) => field(out, &(d - PG_EPOCH_DAYS).to_be_bytes()),
                (Cell::T(us, _), Bin::Timestamp) => field(out, &(us - PG_EPOCH_US).to_be_bytes()),
                (_, bin) => return Err(format!("column `{}`: no binary encoding as {bin:?}; this is a bug in sluice", names[j])),
            }
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
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => is(&numeric),
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
        let ts =
            Int64Chunked::from_slice("t".into(), &[1_704_448_800_123_456, 1_704_448_800_000_000, -62_135_596_800_000_000 - 86_400_000_000])
                .into_series()
                .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC));
        let dates = Int32Chunked::from_slice("d".into(), &[19727, 0, -719_162 - 1]).into_series().into_date();
        let df = DataFrame::new(3, vec![dates.into_column(), ts.into_column()]).unwrap();
        let mut out = Vec::new();
        encode(&prepare(df).unwrap(), 0, 3, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-01-05\t2024-01-05 10:00:00.123456+00\n1970-01-01\t2024-01-05 10:00:00+00\n0001-12-31 BC\t0001-12-31 00:00:00+00 BC\n"
        );
        let mut out = Vec::new();
        write_decimal(&mut out, 7, 3);
        out.push(b' ');
        write_decimal(&mut out, -120, 0);
        assert_eq!(String::from_utf8(out).unwrap(), "0.007 -120");
    }
}
