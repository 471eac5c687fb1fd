//! Readers for the formats `extract` understands: CSV (UTF-8 or CP949),
//! JSON arrays, NDJSON, XML and line logs parsed with a regex.
//!
//! Every reader streams its input and hands rows to a [`Sink`], which
//! parses values with the column types, batches rows into DataFrames for the
//! dataset writer, and applies the bad-row policy. A bad row (wrong field
//! count, unparsable value, invalid encoding, ...) is never dropped
//! silently: it fails the task, or is counted by reason and skipped, or is
//! counted and kept in a `_rejects` dataset with its source, line and reason.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use polars::prelude::DataFrame;
use schemars::JsonSchema;
use serde::Deserialize;

pub mod columns;

use columns::{ColumnType, Infer, InferJson, Rows, Schema, Val};

/// Rows per DataFrame batch handed to the dataset writer.
pub const BATCH_ROWS: usize = 65_536;

/// What to do with a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRows {
    /// Fail the task at the first bad row, naming its line (the default).
    #[default]
    Fail,
    /// Count bad rows by reason and leave them out.
    Skip,
    /// Count bad rows by reason and keep them in the `<task>_rejects`
    /// dataset with their source, line number, reason and raw text.
    Quarantine,
}

/// Why a row is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    WrongFieldCount,
    Unparsable,
    InvalidEncoding,
    NoMatch,
    InvalidJson,
    InvalidXml,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::WrongFieldCount => "wrong field count",
            Reason::Unparsable => "unparsable value",
            Reason::InvalidEncoding => "invalid encoding",
            Reason::NoMatch => "line does not match the pattern",
            Reason::InvalidJson => "invalid JSON",
            Reason::InvalidXml => "invalid XML",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{source_name}, line {line}: {reason}: {detail} (on_bad_rows: fail; use skip or quarantine to go on)")]
    BadRow { source_name: String, line: u64, reason: &'static str, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("writing the dataset failed: {0}")]
    Write(String),
}

/// The schema of `_rejects` datasets.
pub fn rejects_schema() -> Schema {
    Schema(vec![
        ("source".into(), ColumnType::Text),
        ("line".into(), ColumnType::Int),
        ("reason".into(), ColumnType::Text),
        ("detail".into(), ColumnType::Text),
        ("raw".into(), ColumnType::Text),
    ])
}

/// Receives rows from a reader.
pub struct Sink<'w> {
    pub rows: Rows,
    pub good: u64,
    pub bad: BTreeMap<&'static str, u64>,
    policy: OnBadRows,
    rejects: Option<Rows>,
    write: &'w mut dyn FnMut(DataFrame) -> Result<(), String>,
    /// Extra column holding each row's source name, when asked for.
    source_column: bool,
    max_bad_rows: Option<u64>,
}

impl<'w> Sink<'w> {
    pub fn new(
        schema: &Schema,
        policy: OnBadRows,
        source_column: Option<&str>,
        max_bad_rows: Option<u64>,
        write: &'w mut dyn FnMut(DataFrame) -> Result<(), String>,
    ) -> Sink<'w> {
        let mut full = schema.clone();
        if let Some(c) = source_column {
            full.0.push((c.to_string(), ColumnType::Text));
        }
        Sink {
            rows: Rows::new(&full, BATCH_ROWS),
            good: 0,
            bad: BTreeMap::new(),
            policy,
            rejects: (policy == OnBadRows::Quarantine).then(|| Rows::new(&rejects_schema(), 1024)),
            write,
            source_column: source_column.is_some(),
            max_bad_rows,
        }
    }

    pub fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }

    /// Adds a good row.
    pub fn row(&mut self, mut vals: Vec<Val>, source: &str) -> Result<(), FormatError> {
        if self.source_column {
            vals.push(Val::Text(source.to_string()));
        }
        self.rows.push(vals);
        self.good += 1;
        if self.rows.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Handles a bad row by the policy.
    pub fn reject(&mut self, source: &str, line: u64, reason: Reason, detail: String, raw: &str) -> Result<(), FormatError> {
        if self.policy == OnBadRows::Fail {
            return Err(FormatError::BadRow { source_name: source.to_string(), line, reason: reason.as_str(), detail });
        }
        *self.bad.entry(reason.as_str()).or_default() += 1;
        if let Some(r) = &mut self.rejects {
            let raw: String = raw.chars().take(10_000).collect();
            r.push(vec![
                Val::Text(source.to_string()),
                Val::Int(line as i64),
                Val::Text(reason.as_str().to_string()),
                Val::Text(detail),
                Val::Text(raw),
            ]);
        }
        if let Some(max) = self.max_bad_rows
            && self.bad_total() > max
        {
            return Err(FormatError::Invalid(format!(
                "more than max_bad_rows ({max}) bad rows; the last: {source}, line {line}: {}",
                reason.as_str()
            )));
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), FormatError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let df = self.rows.take().map_err(|e| FormatError::Write(e.to_string()))?;
        (self.write)(df).map_err(FormatError::Write)
    }

    /// Flushes and returns the rejects, if quarantined.
    pub fn finish(mut self) -> Result<Option<DataFrame>, FormatError> {
        self.flush()?;
        match self.rejects.take() {
            Some(mut r) => Ok(Some(r.take().map_err(|e| FormatError::Write(e.to_string()))?)),
            None => Ok(None),
        }
    }
}

/// Parses text fields by the column types; `Err` carries the detail.
fn parse_fields<'a>(
    types: &[ColumnType],
    names: &[String],
    fields: impl Iterator<Item = Option<&'a str>>,
    nulls: &[String],
) -> Result<Vec<Val>, String> {
    let mut out = Vec::with_capacity(types.len());
    for ((t, name), f) in types.iter().zip(names).zip(fields) {
        match f {
            None => out.push(Val::Null),
            Some(s) if nulls.iter().any(|n| n == s) => out.push(Val::Null),
            Some(s) => out.push(t.parse(s).map_err(|e| format!("column `{name}`: {e}"))?),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- CSV

/// Text encodings of CSV and log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[default]
    #[serde(alias = "utf8")]
    Utf8,
    /// CP949 (Windows Korean), a superset of EUC-KR; used by Korean exports.
    #[serde(alias = "euc-kr", alias = "euckr")]
    Cp949,
    /// Per file: UTF-8 when the whole file is valid UTF-8, CP949 otherwise.
    Auto,
}

/// Whether a file's bytes are valid UTF-8 (streamed, constant memory).
fn is_utf8_file(path: &Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut carry = 0usize;
    loop {
        let n = f.read(&mut buf[carry..])?;
        if n == 0 {
            return Ok(carry == 0);
        }
        let end = carry + n;
        match std::str::from_utf8(&buf[..end]) {
            Ok(_) => carry = 0,
            Err(e) if e.error_len().is_none() => {
                // An incomplete sequence at the end: keep it for the next read.
                let valid = e.valid_up_to();
                buf.copy_within(valid..end, 0);
                carry = end - valid;
            }
            Err(_) => return Ok(false),
        }
    }
}

impl Encoding {
    /// The encoding to read `path` with: `Auto` looks at the file.
    pub fn resolve(self, path: &Path, name: &str) -> Result<Encoding, FormatError> {
        if self != Encoding::Auto {
            return Ok(self);
        }
        if is_utf8_file(path).map_err(|e| FormatError::Io(name.to_string(), e))? {
            Ok(Encoding::Utf8)
        } else {
            tracing::info!("{name} is not UTF-8; reading it as CP949");
            Ok(Encoding::Cp949)
        }
    }

    /// Decodes one field; None when its bytes are invalid in this encoding.
    pub fn decode<'a>(self, b: &'a [u8]) -> Option<std::borrow::Cow<'a, str>> {
        match self {
            Encoding::Utf8 | Encoding::Auto => std::str::from_utf8(b).ok().map(std::borrow::Cow::Borrowed),
            Encoding::Cp949 => encoding_rs::EUC_KR.decode_without_bom_handling_and_without_replacement(b),
        }
    }
    pub fn lossy(self, b: &[u8]) -> String {
        match self {
            Encoding::Utf8 | Encoding::Auto => String::from_utf8_lossy(b).into_owned(),
            Encoding::Cp949 => encoding_rs::EUC_KR.decode_without_bom_handling(b).0.into_owned(),
        }
    }
}

/// CSV options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// The field separator. Default `,`.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Whether the first line names the columns. Default true.
    #[serde(default = "yes")]
    pub header: bool,
    /// The quote character. Default `"`.
    #[serde(default = "default_quote")]
    pub quote: char,
    /// `utf-8` (default) or `cp949` (also accepted: `euc-kr`).
    #[serde(default)]
    pub encoding: Encoding,
    /// Lines to skip before the header.
    #[serde(default)]
    pub skip_lines: u64,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { delimiter: ',', header: true, quote: '"', encoding: Encoding::Utf8, skip_lines: 0 }
    }
}

fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn yes() -> bool {
    true
}

fn csv_reader<R: Read>(r: R, o: &CsvOptions) -> csv::Reader<R> {
    csv::ReaderBuilder::new().delimiter(o.delimiter as u8).quote(o.quote as u8).has_headers(false).flexible(true).from_reader(r)
}

fn open(path: &Path, name: &str) -> Result<BufReader<std::fs::File>, FormatError> {
    std::fs::File::open(path).map(|f| BufReader::with_capacity(1 << 20, f)).map_err(|e| FormatError::Io(name.to_string(), e))
}

fn skip_lines<R: BufRead>(r: &mut R, n: u64) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        r.read_until(b'\n', &mut buf)?;
    }
    Ok(())
}

/// The header of a CSV file (decoded), or None when it has none.
pub fn csv_header(path: &Path, name: &str, o: &CsvOptions) -> Result<Option<Vec<String>>, FormatError> {
    if !o.header {
        return Ok(None);
    }
    let o = &CsvOptions { encoding: o.encoding.resolve(path, name)?, ..o.clone() };
    let mut f = open(path, name)?;
    skip_lines(&mut f, o.skip_lines).map_err(|e| FormatError::Io(name.into(), e))?;
    let mut r = csv_reader(f, o);
    let mut rec = csv::ByteRecord::new();
    match r.read_byte_record(&mut rec) {
        Ok(true) => Ok(Some(
            rec.iter()
                .map(|f| {
                    let s = o.encoding.lossy(f);
                    s.trim_start_matches('\u{feff}').trim().to_string()
                })
                .collect(),
        )),
        Ok(false) => Ok(Some(Vec::new())),
        Err(e) => Err(FormatError::Invalid(format!("{name}: cannot read the header: {e}"))),
    }
}

/// Infers column types of CSV files (a full pass: types are only as wide as needed).
pub fn infer_csv(files: &[(std::path::PathBuf, String)], o: &CsvOptions, nulls: &[String]) -> Result<Schema, FormatError> {
    let mut names: Vec<String> = Vec::new();
    let mut infer: Vec<Infer> = Vec::new();
    for (path, name) in files {
        let o = &CsvOptions { encoding: o.encoding.resolve(path, name)?, ..o.clone() };
        let header = csv_header(path, name, o)?;
        let mut f = open(path, name)?;
        skip_lines(&mut f, o.skip_lines + u64::from(o.header)).map_err(|e| FormatError::Io(name.clone(), e))?;
        let mut r = csv_reader(f, o);
        let mut rec = csv::ByteRecord::new();
        if let Some(h) = &header {
            for c in h {
                if !names.contains(c) {
                    names.push(c.clone());
                    infer.push(Infer::default());
                }
            }
        }
        while r.read_byte_record(&mut rec).map_err(|e| FormatError::Invalid(format!("{name}: {e}")))? {
            if header.is_none() && rec.len() > names.len() {
                for i in names.len()..rec.len() {
                    names.push(format!("column_{}", i + 1));
                    infer.push(Infer::default());
                }
            }
            let cols: Vec<usize> = match &header {
                Some(h) if rec.len() == h.len() => h.iter().map(|c| names.iter().position(|n| n == c).expect("added")).collect(),
                Some(_) => continue, // a bad row; it will be reported when read
                None => (0..rec.len()).collect(),
            };
            for (i, field) in cols.iter().zip(rec.iter()) {
                if let Some(s) = o.encoding.decode(field)
                    && !nulls.iter().any(|n| n == &*s)
                {
                    infer[*i].add(&s);
                }
            }
        }
    }
    Ok(Schema(names.into_iter().zip(infer.iter().map(Infer::result)).collect()))
}

/// Reads a CSV file into the sink. `schema` names the columns to read (by
/// header name, or by position without a header).
pub fn read_csv(
    path: &Path,
    name: &str,
    o: &CsvOptions,
    schema: &Schema,
    nulls: &[String],
    sink: &mut Sink<'_>,
) -> Result<(), FormatError> {
    let o = &CsvOptions { encoding: o.encoding.resolve(path, name)?, ..o.clone() };
    let header = csv_header(path, name, o)?;
    let width;
    let index: Vec<usize> = match &header {
        Some(h) => {
            width = h.len();
            let mut idx = Vec::new();
            let mut missing = Vec::new();
            for (col, _) in &schema.0 {
                match h.iter().position(|x| x == col) {
                    Some(i) => idx.push(i),
                    None => missing.push(col.as_str()),
                }
            }
            if !missing.is_empty() {
                return Err(FormatError::Invalid(format!(
                    "{name}: the header has no column {} (it has: {})",
                    missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                    h.join(", ")
                )));
            }
            idx
        }
        None => {
            width = schema.0.len();
            (0..schema.0.len()).collect()
        }
    };
    let types: Vec<ColumnType> = schema.0.iter().map(|(_, t)| t.clone()).collect();
    let names: Vec<String> = schema.0.iter().map(|(n, _)| n.clone()).collect();
    let mut f = open(path, name)?;
    skip_lines(&mut f, o.skip_lines).map_err(|e| FormatError::Io(name.into(), e))?;
    let mut r = csv_reader(f, o);
    let mut rec = csv::ByteRecord::new();
    let line_offset = o.skip_lines;
    let mut first = true;
    loop {
        match r.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line()) + line_offset;
                sink.reject(name, line, Reason::Unparsable, format!("{e}"), "")?;
                continue;
            }
        }
        if first && header.is_some() {
            first = false;
            continue;
        }
        first = false;
        let line = rec.position().map_or(0, |p| p.line()) + line_offset;
        let raw = || rec.iter().map(|f| o.encoding.lossy(f)).collect::<Vec<_>>().join(&o.delimiter.to_string());
        if rec.len() != width {
            // A blank line is not a row.
            if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) {
                continue;
            }
            sink.reject(name, line, Reason::WrongFieldCount, format!("{} fields, expected {width}", rec.len()), &raw())?;
            continue;
        }
        let mut decoded = Vec::with_capacity(index.len());
        let mut bad_enc = None;
        for (k, &i) in index.iter().enumerate() {
            match o.encoding.decode(&rec[i]) {
                Some(s) => decoded.push(s),
                None => {
                    bad_enc = Some(k);
                    break;
                }
            }
        }
        if let Some(k) = bad_enc {
            let enc = match o.encoding {
                Encoding::Utf8 | Encoding::Auto => "UTF-8",
                Encoding::Cp949 => "CP949",
            };
            sink.reject(name, line, Reason::InvalidEncoding, format!("column `{}` is not valid {enc}", names[k]), &raw())?;
            continue;
        }
        match parse_fields(&types, &names, decoded.iter().map(|s| Some(s.as_ref())), nulls) {
            Ok(vals) => sink.row(vals, name)?,
            Err(detail) => sink.reject(name, line, Reason::Unparsable, detail, &raw())?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- JSON

/// Infers a schema from NDJSON lines or a JSON array's objects.
pub fn infer_json(files: &[(std::path::PathBuf, String)], array: bool) -> Result<Schema, FormatError> {
    let mut names: Vec<String> = Vec::new();
    let mut infer: Vec<InferJson> = Vec::new();
    let mut visit = |obj: &serde_json::Map<String, serde_json::Value>| {
        for (k, v) in obj {
            let i = match names.iter().position(|n| n == k) {
                Some(i) => i,
                None => {
                    names.push(k.clone());
                    infer.push(InferJson::default());
                    names.len() - 1
                }
            };
            infer[i].add(v);
        }
    };
    for (path, name) in files {
        if array {
            let f = open(path, name)?;
            for_each_array_item(f, name, &mut |_, v| {
                if let serde_json::Value::Object(o) = v {
                    visit(&o);
                }
                Ok(())
            })?;
        } else {
            let f = open(path, name)?;
            for line in f.split(b'\n') {
                let line = line.map_err(|e| FormatError::Io(name.clone(), e))?;
                if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(&line) {
                    visit(&o);
                }
            }
        }
    }
    Ok(Schema(names.into_iter().zip(infer.iter().map(InferJson::result)).collect()))
}

fn json_row(obj: &serde_json::Map<String, serde_json::Value>, schema: &Schema) -> Result<Vec<Val>, String> {
    schema
        .0
        .iter()
        .map(|(name, t)| match obj.get(name) {
            None => Ok(Val::Null),
            Some(v) => t.from_json(v).map_err(|e| format!("field `{name}`: {e}")),
        })
        .collect()
}

/// Reads newline-delimited JSON: one object per line.
pub fn read_ndjson(path: &Path, name: &str, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError> {
    let f = open(path, name)?;
    for (i, line) in f.split(b'\n').enumerate() {
        let line = line.map_err(|e| FormatError::Io(name.into(), e))?;
        let n = i as u64 + 1;
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t,
            Err(_) => {
                sink.reject(name, n, Reason::InvalidEncoding, "the line is not valid UTF-8".into(), &String::from_utf8_lossy(&line))?;
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(o)) => match json_row(&o, schema) {
                Ok(vals) => sink.row(vals, name)?,
                Err(d) => sink.reject(name, n, Reason::Unparsable, d, text)?,
            },
            Ok(_) => sink.reject(name, n, Reason::InvalidJson, "the line is not a JSON object".into(), text)?,
            Err(e) => sink.reject(name, n, Reason::InvalidJson, e.to_string(), text)?,
        }
    }
    Ok(())
}

/// Calls `f` with each element of a top-level JSON array, streaming.
fn for_each_array_item<R: Read>(
    r: R,
    name: &str,
    f: &mut dyn FnMut(u64, serde_json::Value) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    struct V<'f> {
        f: &'f mut dyn FnMut(u64, serde_json::Value) -> Result<(), FormatError>,
        err: Option<FormatError>,
    }
    impl<'de> Visitor<'de> for &mut V<'_> {
        type Value = ();
        fn expecting(&self, fm: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            fm.write_str("a JSON array of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(v) = seq.next_element::<serde_json::Value>()? {
                i += 1;
                if let Err(e) = (self.f)(i, v) {
                    self.err = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut v = V { f, err: None };
    let mut de = serde_json::Deserializer::from_reader(r);
    let res = de.deserialize_seq(&mut v);
    if let Some(e) = v.err {
        return Err(e);
    }
    res.map_err(|e| FormatError::Invalid(format!("{name}: not a JSON array of objects: {e}")))
}

/// Reads a JSON array of objects. Bad elements are located by their index
/// in the array ("line" is the element number).
pub fn read_json_array(path: &Path, name: &str, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError> {
    let f = open(path, name)?;
    for_each_array_item(f, name, &mut |i, v| match v {
        serde_json::Value::Object(o) => match json_row(&o, schema) {
            Ok(vals) => sink.row(vals, name),
            Err(d) => sink.reject(name, i, Reason::Unparsable, format!("element {i}: {d}"), &serde_json::Value::Object(o).to_string()),
        },
        other => sink.reject(name, i, Reason::InvalidJson, format!("element {i} is not an object"), &other.to_string()),
    })
}

// ---------------------------------------------------------------- logs

/// Names and inferred types of a log pattern's groups.
pub fn infer_log(files: &[(std::path::PathBuf, String)], re: &regex::Regex, enc: Encoding) -> Result<Schema, FormatError> {
    let names: Vec<String> = re.capture_names().flatten().map(str::to_string).collect();
    let mut infer = vec![Infer::default(); names.len()];
    for (path, name) in files {
        let enc = enc.resolve(path, name)?;
        let f = open(path, name)?;
        for line in f.split(b'\n') {
            let line = line.map_err(|e| FormatError::Io(name.clone(), e))?;
            let Some(text) = enc.decode(&line) else { continue };
            if let Some(c) = re.captures(text.trim_end_matches('\r')) {
                for (i, n) in names.iter().enumerate() {
                    if let Some(m) = c.name(n) {
                        infer[i].add(m.as_str());
                    }
                }
            }
        }
    }
    Ok(Schema(names.into_iter().zip(infer.iter().map(Infer::result)).collect()))
}

/// Reads a line log: each line must match the pattern; named groups are columns.
pub fn read_log(
    path: &Path,
    name: &str,
    re: &regex::Regex,
    enc: Encoding,
    schema: &Schema,
    nulls: &[String],
    sink: &mut Sink<'_>,
) -> Result<(), FormatError> {
    let types: Vec<ColumnType> = schema.0.iter().map(|(_, t)| t.clone()).collect();
    let names: Vec<String> = schema.0.iter().map(|(n, _)| n.clone()).collect();
    let enc = enc.resolve(path, name)?;
    let f = open(path, name)?;
    for (i, line) in f.split(b'\n').enumerate() {
        let line = line.map_err(|e| FormatError::Io(name.into(), e))?;
        let n = i as u64 + 1;
        let Some(text) = enc.decode(&line) else {
            sink.reject(name, n, Reason::InvalidEncoding, "the line is not valid text in the declared encoding".into(), &enc.lossy(&line))?;
            continue;
        };
        let text = text.trim_end_matches('\r');
        if text.is_empty() {
            continue;
        }
        let Some(c) = re.captures(text) else {
            sink.reject(name, n, Reason::NoMatch, "the line does not match the pattern".into(), text)?;
            continue;
        };
        match parse_fields(&types, &names, names.iter().map(|g| c.name(g).map(|m| m.as_str())), nulls) {
            Ok(vals) => sink.row(vals, name)?,
            Err(d) => sink.reject(name, n, Reason::Unparsable, d, text)?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- XML

/// XML options: which element is a record and where its fields are.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XmlOptions {
    /// The path of record elements from the root, e.g. `orders/order`.
    pub record: String,
    /// Output column -> path inside the record: `amount` (a child's text),
    /// `customer/name`, `@id` (an attribute of the record),
    /// `customer/@id`, or `.` (the record's own text). Default: the record's
    /// attributes and its direct children's text, by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub fields: Option<serde_yaml::Mapping>,
}

impl XmlOptions {
    pub fn field_list(&self) -> Vec<(String, String)> {
        self.fields.iter().flatten().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect()
    }
}

/// Tracks line numbers of byte offsets for a streaming reader.
struct LineCounter<R> {
    inner: R,
    offset: u64,
    newlines: std::rc::Rc<std::cell::RefCell<std::collections::VecDeque<u64>>>,
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut q = self.newlines.borrow_mut();
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                q.push_back(self.offset + i as u64);
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

struct XmlRecord {
    line: u64,
    values: BTreeMap<String, String>,
    raw_fields: Vec<(String, String)>,
}

/// Streams records out of an XML file; `want` maps relative paths to
/// output columns (None: take attributes and direct children).
fn scan_xml(
    path: &Path,
    name: &str,
    o: &XmlOptions,
    mut on_record: impl FnMut(Result<XmlRecord, (u64, String)>) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    use quick_xml::events::Event;
    let record_path: Vec<String> = o.record.trim_matches('/').split('/').map(str::to_string).collect();
    let want: Vec<(String, String)> = o.field_list();
    let newlines = std::rc::Rc::new(std::cell::RefCell::new(std::collections::VecDeque::new()));
    let file = std::fs::File::open(path).map_err(|e| FormatError::Io(name.into(), e))?;
    let counter = LineCounter { inner: file, offset: 0, newlines: newlines.clone() };
    let mut reader = quick_xml::Reader::from_reader(BufReader::with_capacity(1 << 20, counter));
    // Values are trimmed whole: trimming each text event would eat the
    // spaces around entity references (`Kim &amp; Lee`).
    reader.config_mut().trim_text(false);
    let mut line: u64 = 1;
    let mut line_at = |pos: u64| {
        let mut q = newlines.borrow_mut();
        while q.front().is_some_and(|&nl| nl < pos) {
            q.pop_front();
            line += 1;
        }
        line
    };
    let mut stack: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    let mut current: Option<XmlRecord> = None;
    let mut rel: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        let pos_before = reader.buffer_position();
        let ev = match reader.read_event_into(&mut buf) {
            Ok(ev) => ev,
            Err(e) => {
                let l = line_at(reader.buffer_position());
                // The document is broken from here on: report the record in
                // progress as bad, and stop.
                if current.take().is_some() {
                    on_record(Err((l, format!("malformed XML: {e}"))))?;
                    return Ok(());
                }
                return Err(FormatError::Invalid(format!("{name}, line {l}: malformed XML: {e}")));
            }
        };
        match ev {
            Event::Start(e) => {
                let l = line_at(pos_before + 1);
                start_element(&e, l, &mut stack, &mut rel, &mut current, &want, &mut text, &record_path);
            }
            Event::Empty(e) => {
                let l = line_at(pos_before + 1);
                start_element(&e, l, &mut stack, &mut rel, &mut current, &want, &mut text, &record_path);
                end_element(&mut stack, &mut rel, &mut current, &want, &mut text, &record_path, &mut on_record)?;
            }
            Event::Text(t) if current.is_some() => {
                text.push_str(&t.decode().map_err(|e| FormatError::Invalid(format!("{name}: {e}")))?);
            }
            Event::CData(t) if current.is_some() => {
                text.push_str(&String::from_utf8_lossy(&t.into_inner()));
            }
            Event::GeneralRef(r) if current.is_some() => {
                if r.is_char_ref() {
                    if let Ok(Some(c)) = r.resolve_char_ref() {
                        text.push(c);
                    }
                } else {
                    let n = r.decode().map(|c| c.into_owned()).unwrap_or_default();
                    match quick_xml::escape::resolve_predefined_entity(&n) {
                        Some(s) => text.push_str(s),
                        None => text.push_str(&format!("&{n};")),
                    }
                }
            }
            Event::End(_) => {
                end_element(&mut stack, &mut rel, &mut current, &want, &mut text, &record_path, &mut on_record)?;
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if current.is_some() {
        on_record(Err((line, "the file ends inside a record".into())))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_element(
    e: &quick_xml::events::BytesStart<'_>,
    line: u64,
    stack: &mut Vec<String>,
    rel: &mut Vec<String>,
    current: &mut Option<XmlRecord>,
    want: &[(String, String)],
    text: &mut String,
    record_path: &[String],
) {
    let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let attrs: Vec<(String, String)> = e
        .attributes()
        .filter_map(|a| a.ok())
        .map(|a| (String::from_utf8_lossy(a.key.as_ref()).into_owned(), a.unescape_value().map(|v| v.into_owned()).unwrap_or_default()))
        .collect();
    stack.push(tag.clone());
    if current.is_none() && stack.as_slice() == record_path {
        let mut rec = XmlRecord { line, values: BTreeMap::new(), raw_fields: Vec::new() };
        rel.clear();
        for (k, v) in attrs {
            record_value(&mut rec, want, &format!("@{k}"), v);
        }
        *current = Some(rec);
    } else if let Some(rec) = current {
        rel.push(tag);
        let prefix = rel.join("/");
        for (k, v) in attrs {
            record_value(rec, want, &format!("{prefix}/@{k}"), v);
        }
    }
    text.clear();
}

#[allow(clippy::too_many_arguments)]
fn end_element(
    stack: &mut Vec<String>,
    rel: &mut Vec<String>,
    current: &mut Option<XmlRecord>,
    want: &[(String, String)],
    text: &mut String,
    record_path: &[String],
    on_record: &mut impl FnMut(Result<XmlRecord, (u64, String)>) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    if current.is_some() {
        if stack.as_slice() == record_path {
            let mut rec = current.take().expect("some");
            if !text.trim().is_empty() {
                record_value(&mut rec, want, ".", text.trim().to_string());
            }
            text.clear();
            stack.pop();
            return on_record(Ok(rec));
        }
        let p = rel.join("/");
        if let Some(rec) = current.as_mut()
            && !text.is_empty()
        {
            record_value(rec, want, &p, text.trim().to_string());
        }
        rel.pop();
        text.clear();
    }
    stack.pop();
    Ok(())
}

fn record_value(rec: &mut XmlRecord, want: &[(String, String)], path: &str, v: String) {
    if want.is_empty() {
        // Default mapping: attributes of the record and direct children.
        let key = if let Some(a) = path.strip_prefix('@') {
            Some(a.to_string())
        } else if !path.contains('/') && path != "." {
            Some(path.to_string())
        } else {
            None
        };
        if let Some(k) = key {
            rec.raw_fields.push((k.clone(), v.clone()));
            rec.values.entry(k).or_insert(v);
        }
        return;
    }
    for (col, p) in want {
        if p == path {
            rec.raw_fields.push((col.clone(), v.clone()));
            rec.values.entry(col.clone()).or_insert_with(|| v.clone());
        }
    }
}

pub fn infer_xml(files: &[(std::path::PathBuf, String)], o: &XmlOptions) -> Result<Schema, FormatError> {
    let mut names: Vec<String> = o.field_list().into_iter().map(|(c, _)| c).collect();
    let mut infer: BTreeMap<String, Infer> = BTreeMap::new();
    for (path, name) in files {
        scan_xml(path, name, o, |r| {
            if let Ok(rec) = r {
                for (k, v) in rec.values {
                    if !names.contains(&k) {
                        names.push(k.clone());
                    }
                    infer.entry(k).or_default().add(&v);
                }
            }
            Ok(())
        })?;
    }
    Ok(Schema(names.iter().map(|n| (n.clone(), infer.get(n).map_or(ColumnType::Text, Infer::result))).collect()))
}

pub fn read_xml(
    path: &Path,
    name: &str,
    o: &XmlOptions,
    schema: &Schema,
    nulls: &[String],
    sink: &mut Sink<'_>,
) -> Result<(), FormatError> {
    let types: Vec<ColumnType> = schema.0.iter().map(|(_, t)| t.clone()).collect();
    let names: Vec<String> = schema.0.iter().map(|(n, _)| n.clone()).collect();
    scan_xml(path, name, o, |r| match r {
        Ok(rec) => {
            let raw = rec.raw_fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            match parse_fields(&types, &names, names.iter().map(|n| rec.values.get(n).map(String::as_str)), nulls) {
                Ok(vals) => sink.row(vals, name),
                Err(d) => sink.reject(name, rec.line, Reason::Unparsable, d, &raw),
            }
        }
        Err((line, detail)) => sink.reject(name, line, Reason::InvalidXml, detail, ""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        schema: &Schema,
        policy: OnBadRows,
        read: impl FnOnce(&mut Sink<'_>) -> Result<(), FormatError>,
    ) -> (DataFrame, Option<DataFrame>, BTreeMap<&'static str, u64>) {
        let mut frames = Vec::new();
        let mut w = |df: DataFrame| {
            frames.push(df);
            Ok(())
        };
        let mut sink = Sink::new(schema, policy, None, None, &mut w);
        read(&mut sink).unwrap();
        let bad = sink.bad.clone();
        let rejects = sink.finish().unwrap();
        let mut all = frames.into_iter().reduce(|mut a, b| {
            a.vstack_mut(&b).unwrap();
            a
        });
        (all.take().unwrap_or_default(), rejects, bad)
    }

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, content).unwrap();
        f
    }

    #[test]
    fn csv_quarantines_bad_rows_with_lines() {
        let f = file(b"id,amount,day\n1,10.50,2024-01-05\n2,abc,2024-01-05\n3,1.00\n4,2.00,2024-01-06\n");
        let schema: Schema = serde_yaml::from_str("id: int\namount: decimal(12,2)\nday: date\n").unwrap();
        let (df, rejects, bad) =
            collect(&schema, OnBadRows::Quarantine, |s| read_csv(f.path(), "x.csv", &CsvOptions::default(), &schema, &[String::new()], s));
        assert_eq!(df.height(), 2);
        let r = rejects.unwrap();
        assert_eq!(r.height(), 2);
        let lines: Vec<i64> = r.column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(lines, vec![3, 4]);
        assert_eq!(bad.get("unparsable value"), Some(&1));
        assert_eq!(bad.get("wrong field count"), Some(&1));
    }

    #[test]
    fn csv_fail_names_the_line() {
        let f = file(b"id\n1\nx\n");
        let schema: Schema = serde_yaml::from_str("{id: int}").unwrap();
        let mut w = |_df: DataFrame| Ok(());
        let mut sink = Sink::new(&schema, OnBadRows::Fail, None, None, &mut w);
        let e = read_csv(f.path(), "x.csv", &CsvOptions::default(), &schema, &[], &mut sink).unwrap_err().to_string();
        assert!(e.contains("x.csv, line 3: unparsable value"), "{e}");
    }

    #[test]
    fn cp949_decodes_and_flags_invalid_bytes() {
        let (text, _, _) = encoding_rs::EUC_KR.encode("name,city\n김철수,서울\n");
        let mut bytes = text.into_owned();
        bytes.extend_from_slice(b"bad,\xff\xfe\n");
        let f = file(&bytes);
        let o = CsvOptions { encoding: Encoding::Cp949, ..Default::default() };
        let schema = infer_csv(&[(f.path().to_path_buf(), "k.csv".into())], &o, &[]).unwrap();
        let (df, _, bad) = collect(&schema, OnBadRows::Skip, |s| read_csv(f.path(), "k.csv", &o, &schema, &[], s));
        assert_eq!(df.column("city").unwrap().str().unwrap().get(0), Some("서울"));
        assert_eq!(bad.get("invalid encoding"), Some(&1));
        // auto: the same file is not UTF-8, so it is read as CP949.
        let auto = CsvOptions { encoding: Encoding::Auto, ..Default::default() };
        let (df, _, _) = collect(&schema, OnBadRows::Skip, |s| read_csv(f.path(), "k.csv", &auto, &schema, &[], s));
        assert_eq!(df.column("name").unwrap().str().unwrap().get(0), Some("김철수"));
        let utf = file("name\n서울\n".as_bytes());
        assert_eq!(Encoding::Auto.resolve(utf.path(), "u").unwrap(), Encoding::Utf8);
    }

    #[test]
    fn ndjson_and_json_arrays() {
        let f = file(b"{\"id\": 1, \"name\": \"a\"}\n{\"id\": \"x\"}\nnot json\n{\"id\": 3}\n");
        let files = [(f.path().to_path_buf(), "u.ndjson".to_string())];
        let schema = infer_json(&files, false).unwrap();
        assert_eq!(schema.0[0], ("id".into(), ColumnType::Text));
        let typed: Schema = serde_yaml::from_str("{id: int, name: text}").unwrap();
        let (df, r, _) = collect(&typed, OnBadRows::Quarantine, |s| read_ndjson(f.path(), "u.ndjson", &typed, s));
        assert_eq!(df.height(), 2);
        let lines: Vec<i64> = r.unwrap().column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(lines, vec![2, 3]);
        let a = file(b"[{\"id\": 1}, {\"id\": 2}, 5]");
        let (df, r, _) = collect(&typed, OnBadRows::Quarantine, |s| read_json_array(a.path(), "a.json", &typed, s));
        assert_eq!(df.height(), 2);
        assert_eq!(r.unwrap().height(), 1);
    }

    #[test]
    fn xml_records_fields_and_lines() {
        let f = file(
            b"<?xml version=\"1.0\"?>\n<orders>\n  <order id=\"1\">\n    <customer id=\"7\"><name>Kim &amp; Lee</name></customer>\n    <amount>10.5</amount>\n  </order>\n  <order id=\"2\">\n    <amount>oops</amount>\n    <flag/>\n  </order>\n</orders>\n",
        );
        let o: XmlOptions =
            serde_yaml::from_str("{record: orders/order, fields: {id: '@id', user: customer/@id, name: customer/name, amount: amount}}")
                .unwrap();
        let schema: Schema = serde_yaml::from_str("{id: int, user: int, name: text, amount: float}").unwrap();
        let (df, r, _) = collect(&schema, OnBadRows::Quarantine, |s| read_xml(f.path(), "o.xml", &o, &schema, &[], s));
        assert_eq!(df.height(), 1);
        assert_eq!(df.column("name").unwrap().str().unwrap().get(0), Some("Kim & Lee"));
        assert_eq!(df.column("user").unwrap().i64().unwrap().get(0), Some(7));
        let lines: Vec<i64> = r.unwrap().column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(lines, vec![7]);
    }

    #[test]
    fn logs_by_regex() {
        let f = file(b"2024-01-05 10:00:00 visit user=1\ngarbage\n2024-01-05 10:01:00 cart user=2\n");
        let re = regex::Regex::new(r"^(?P<ts>\S+ \S+) (?P<event>\w+) user=(?P<user_id>\d+)$").unwrap();
        let files = [(f.path().to_path_buf(), "a.log".to_string())];
        let schema = infer_log(&files, &re, Encoding::Utf8).unwrap();
        assert_eq!(schema.0[2].1, ColumnType::Int);
        assert_eq!(schema.0[0].1, ColumnType::Timestamp { format: None });
        let (df, _, bad) = collect(&schema, OnBadRows::Skip, |s| read_log(f.path(), "a.log", &re, Encoding::Utf8, &schema, &[], s));
        assert_eq!(df.height(), 2);
        assert_eq!(bad.get("line does not match the pattern"), Some(&1));
    }
}
