//! Readers for the formats `extract` understands: CSV (UTF-8 or CP949),
//! JSON arrays, NDJSON, XML and line logs parsed with a regex. One file per
//! format, each a [`Reader`].
//!
//! Every reader streams its input and hands rows to a [`Sink`], which
//! parses values with the column types, batches rows into DataFrames for the
//! dataset writer, and applies the bad-row policy. A bad row (wrong field
//! count, unparsable value, invalid encoding, a NUL byte, an unterminated
//! quote, ...) is never dropped silently: it fails the task, or is counted
//! by reason and skipped, or is counted and kept in a `_rejects` dataset
//! with its source, line and reason.
//!
//! **Every row is accounted for**: the sink counts each record a reader
//! delimits as read, and each read row is loaded, quarantined or skipped.
//! A reader that cannot resynchronise after a fault (malformed XML, a
//! broken JSON array) fails the task, naming the file, line and column and
//! how many records it read; it never stops early and reports success.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use polars::prelude::DataFrame;
use schemars::JsonSchema;
use serde::Deserialize;

pub mod columns;
pub mod csv;
pub mod json;
pub mod log;
pub mod typing;
pub mod xml;

pub use csv::CsvOptions;
pub use xml::XmlOptions;

use columns::{ColumnType, Rows, Schema, Val};

/// Rows per DataFrame batch handed to the dataset writer.
pub const BATCH_ROWS: usize = 65_536;

/// A source file to read: its local path and the name it is reported by
/// (the path relative to the project, or the S3 or HTTP address).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub name: String,
}

/// A format's reader.
pub trait Reader: Send + Sync {
    /// Column names and types inferred from the files (a full pass: types
    /// are only as wide as the data needs).
    fn infer(&self, files: &[SourceFile]) -> Result<Schema, FormatError>;
    /// Reads one file's records into the sink. `schema` names the columns
    /// to read and their types.
    fn read(&self, file: &SourceFile, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError>;
}

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
    NulByte,
    UnterminatedQuote,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::WrongFieldCount => "wrong field count",
            Reason::Unparsable => "unparsable value",
            Reason::InvalidEncoding => "invalid encoding",
            Reason::NoMatch => "line does not match the pattern",
            Reason::InvalidJson => "invalid JSON",
            Reason::NulByte => "NUL byte",
            Reason::UnterminatedQuote => "unterminated quote",
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

/// The longest raw text kept for a rejected row.
pub const RAW_LIMIT: usize = 10_000;

/// Where the rows of a dataset came from: runs of consecutive rows that
/// come from consecutive lines of one source. A clean file is one run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Lineage {
    /// Source names, indexed by the runs.
    pub sources: Vec<String>,
    /// `(first row, source index, first line)`, by first row.
    pub runs: Vec<(u64, u32, u64)>,
}

impl Lineage {
    /// The source and line of dataset row `row` (0-based).
    pub fn locate(&self, row: u64) -> Option<(&str, u64)> {
        let i = self.runs.partition_point(|r| r.0 <= row).checked_sub(1)?;
        let (first, src, line) = self.runs[i];
        Some((self.sources.get(src as usize)?.as_str(), line + (row - first)))
    }

    fn push(&mut self, row: u64, source: &str, line: u64) {
        if let Some(&(first, src, l)) = self.runs.last()
            && self.sources.get(src as usize).is_some_and(|s| s == source)
            && l + (row - first) == line
        {
            return;
        }
        let src = match self.sources.iter().position(|s| s == source) {
            Some(i) => i,
            None => {
                self.sources.push(source.to_string());
                self.sources.len() - 1
            }
        };
        self.runs.push((row, src as u32, line));
    }
}

/// Rows read from one file, by fate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileCounts {
    pub read: u64,
    pub good: u64,
    pub bad: u64,
}

/// Receives rows from a reader.
pub struct Sink<'w> {
    pub rows: Rows,
    /// Rows typed on other threads ([`Sink::typed`]), not yet written.
    typed: Option<DataFrame>,
    /// Rows kept (written to the dataset).
    pub good: u64,
    /// Bad rows, by reason.
    pub bad: BTreeMap<&'static str, u64>,
    /// Records known to exist but never read (after malformed XML, with
    /// `keep_rows_before_error`).
    pub lost: u64,
    /// Counts of the file being read.
    pub file: FileCounts,
    pub lineage: Lineage,
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
            typed: None,
            good: 0,
            bad: BTreeMap::new(),
            lost: 0,
            file: FileCounts::default(),
            lineage: Lineage::default(),
            policy,
            rejects: (policy == OnBadRows::Quarantine).then(|| Rows::new(&rejects_schema(), 1024)),
            write,
            source_column: source_column.is_some(),
            max_bad_rows,
        }
    }

    /// Whether each row gets a column holding its source's name.
    pub fn has_source_column(&self) -> bool {
        self.source_column
    }

    pub fn policy(&self) -> OnBadRows {
        self.policy
    }

    pub fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }

    /// Rows read so far, of every fate.
    pub fn read(&self) -> u64 {
        self.good + self.bad_total()
    }

    /// Starts counting a new file.
    pub fn start_file(&mut self) {
        self.file = FileCounts::default();
    }

    /// Adds a good row, read from `line` of `source`.
    pub fn row(&mut self, mut vals: Vec<Val>, source: &str, line: u64) -> Result<(), FormatError> {
        if self.source_column {
            vals.push(Val::Text(source.to_string()));
        }
        self.rows.push(vals);
        self.kept(source, line);
        self.flush_full()
    }

    /// Parses fields by the column types and adds the row, or rejects it.
    /// A NUL byte in a value is refused here: PostgreSQL text cannot hold
    /// one, so the row could be stored nowhere downstream.
    pub fn fields<'a>(
        &mut self,
        source: &str,
        line: u64,
        schema: &FieldTypes,
        fields: impl Iterator<Item = Option<&'a str>>,
        nulls: &[String],
        raw: &dyn Fn() -> String,
    ) -> Result<(), FormatError> {
        match parse_into(&mut self.rows, schema, fields, nulls) {
            Ok(()) => {
                if self.source_column {
                    self.rows.push_text(schema.names.len(), source);
                }
                self.kept(source, line);
                self.flush_full()
            }
            Err(e) => {
                let (reason, detail) = e.reason();
                self.reject(source, line, reason, detail, &raw())
            }
        }
    }

    /// Counts a row kept, read from `line` of `source`.
    fn kept(&mut self, source: &str, line: u64) {
        self.lineage.push(self.good, source, line);
        self.good += 1;
        self.file.read += 1;
        self.file.good += 1;
    }

    /// Writes the rows when they make a batch.
    fn flush_full(&mut self) -> Result<(), FormatError> {
        match self.rows.len() >= BATCH_ROWS {
            true => self.flush(),
            false => Ok(()),
        }
    }

    /// Takes in a chunk of rows typed on another thread
    /// ([`typing`]), as if each of its rows had come through
    /// [`Sink::row`] or [`Sink::reject`] in turn.
    pub fn typed(&mut self, source: &str, chunk: typing::Typed) -> Result<(), FormatError> {
        let typing::Typed { frame, outcomes } = chunk;
        let frame = frame.map_err(FormatError::Write)?;
        // Rows given one by one before go first.
        if !self.rows.is_empty() {
            self.flush()?;
        }
        for o in outcomes {
            match o {
                typing::Outcome::Good(line) => self.kept(source, line),
                typing::Outcome::Bad(b) => self.reject(source, b.line, b.reason, b.detail, &b.raw)?,
            }
        }
        let height = match &mut self.typed {
            Some(acc) => {
                acc.vstack_mut_owned(frame).map_err(|e| FormatError::Write(e.to_string()))?;
                acc.height()
            }
            None => {
                let h = frame.height();
                self.typed = Some(frame);
                h
            }
        };
        if height >= BATCH_ROWS {
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
        self.file.read += 1;
        self.file.bad += 1;
        if let Some(r) = &mut self.rejects {
            // NUL bytes cannot be stored in the rejects table either.
            let raw: String = raw.chars().filter(|&c| c != '\0').take(RAW_LIMIT).collect();
            r.push(vec![
                Val::Text(source.to_string()),
                Val::Int(line as i64),
                Val::Text(reason.as_str().to_string()),
                Val::Text(detail.replace('\0', "\\0")),
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
        // Typed chunks, then rows given one by one since (the order they came in).
        if let Some(df) = self.typed.take()
            && df.height() > 0
        {
            (self.write)(df).map_err(FormatError::Write)?;
        }
        if self.rows.is_empty() {
            return Ok(());
        }
        let df = self.rows.take().map_err(|e| FormatError::Write(e.to_string()))?;
        (self.write)(df).map_err(FormatError::Write)
    }

    /// Flushes and returns the rejects, if quarantined.
    pub fn finish(mut self) -> Result<(Option<DataFrame>, Lineage), FormatError> {
        self.flush()?;
        let rejects = match self.rejects.take() {
            Some(mut r) => Some(r.take().map_err(|e| FormatError::Write(e.to_string()))?),
            None => None,
        };
        Ok((rejects, std::mem::take(&mut self.lineage)))
    }
}

/// Column names and types, as parse_into needs them.
pub struct FieldTypes {
    pub names: Vec<String>,
    pub types: Vec<ColumnType>,
}

impl FieldTypes {
    pub fn of(schema: &Schema) -> FieldTypes {
        FieldTypes { names: schema.0.iter().map(|(n, _)| n.clone()).collect(), types: schema.0.iter().map(|(_, t)| t.clone()).collect() }
    }
}

enum FieldError {
    Nul(String),
    Value(String),
}

impl FieldError {
    /// Why the row is bad, and the detail its reject records.
    fn reason(self) -> (Reason, String) {
        match self {
            FieldError::Nul(col) => (Reason::NulByte, format!("column `{col}` holds a NUL byte (\\0), which PostgreSQL cannot store")),
            FieldError::Value(detail) => (Reason::Unparsable, detail),
        }
    }
}

/// Parses text fields by the column types straight into the first
/// columns of `rows`; a bad field leaves `rows` as it was.
fn parse_into<'a>(
    rows: &mut Rows,
    schema: &FieldTypes,
    fields: impl Iterator<Item = Option<&'a str>>,
    nulls: &[String],
) -> Result<(), FieldError> {
    let before = rows.len();
    let mut pushed = Ok(());
    for (c, (name, f)) in schema.names.iter().zip(fields).enumerate() {
        pushed = match f {
            Some(s) if !nulls.iter().any(|n| n == s) => match s.as_bytes().contains(&0) {
                true => Err(FieldError::Nul(name.clone())),
                false => rows.push_parsed(c, s).map_err(|e| FieldError::Value(format!("column `{name}`: {e}"))),
            },
            _ => {
                rows.push_null_at(c);
                Ok(())
            }
        };
        if pushed.is_err() {
            rows.truncate(before);
            break;
        }
    }
    pushed
}

// ---------------------------------------------------------------- encodings

/// Text encodings of CSV and log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[schemars(with = "String")]
pub enum Encoding {
    #[default]
    Utf8,
    /// CP949 (Windows Korean), a superset of EUC-KR; used by Korean exports.
    Cp949,
    /// Per file: UTF-8 when the whole file is valid UTF-8, CP949 otherwise.
    Auto,
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Encoding, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "cp949" | "euc-kr" | "euckr" | "windows-949" | "ms949" | "uhc" => Ok(Encoding::Cp949),
            "auto" => Ok(Encoding::Auto),
            other => Err(format!("unknown encoding `{other}`: use utf-8, cp949 (also euc-kr) or auto")),
        }
    }
}

impl<'de> Deserialize<'de> for Encoding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
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

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 | Encoding::Auto => "UTF-8",
            Encoding::Cp949 => "CP949",
        }
    }
}

// ---------------------------------------------------------------- files

/// The UTF-8 byte order mark, which some exporters write first.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The length of a UTF-8 BOM at the start of the file (0 or 3).
pub fn bom_len(path: &Path, name: &str) -> Result<u64, FormatError> {
    let mut head = [0u8; 3];
    let mut f = std::fs::File::open(path).map_err(|e| FormatError::Io(name.to_string(), e))?;
    let mut n = 0;
    while n < 3 {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(FormatError::Io(name.to_string(), e)),
        }
    }
    Ok(if n == 3 && head == BOM { 3 } else { 0 })
}

/// Opens a file positioned after its BOM, if it has one.
pub fn open_text(path: &Path, name: &str) -> Result<BufReader<std::fs::File>, FormatError> {
    let skip = bom_len(path, name)?;
    open_at(path, name, skip)
}

/// Opens a file positioned at byte `offset`.
pub fn open_at(path: &Path, name: &str, offset: u64) -> Result<BufReader<std::fs::File>, FormatError> {
    let mut f = std::fs::File::open(path).map_err(|e| FormatError::Io(name.to_string(), e))?;
    if offset > 0 {
        f.seek(std::io::SeekFrom::Start(offset)).map_err(|e| FormatError::Io(name.to_string(), e))?;
    }
    Ok(BufReader::with_capacity(1 << 20, f))
}

/// Splits a stream into lines (without the `\n`), numbered from 1, for the
/// line-based formats.
pub fn lines<R: Read>(r: BufReader<R>, name: &str) -> impl Iterator<Item = Result<(u64, Vec<u8>), FormatError>> {
    use std::io::BufRead;
    let name = name.to_string();
    r.split(b'\n').enumerate().map(move |(i, l)| l.map(|l| (i as u64 + 1, l)).map_err(|e| FormatError::Io(name.clone(), e)))
}

#[cfg(test)]
pub(crate) mod testkit {
    use super::*;

    /// Reads with `read` into a fresh sink; returns the rows, the rejects
    /// and the bad counts.
    pub fn collect(
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
        let (rejects, _) = sink.finish().unwrap();
        let mut all = frames.into_iter().reduce(|mut a, b| {
            a.vstack_mut(&b).unwrap();
            a
        });
        (all.take().unwrap_or_default(), rejects, bad)
    }

    pub fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, content).unwrap();
        f
    }

    pub fn src(f: &tempfile::NamedTempFile, name: &str) -> SourceFile {
        SourceFile { path: f.path().to_path_buf(), name: name.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_maps_rows_to_lines() {
        let mut l = Lineage::default();
        for (row, line) in [(0, 2), (1, 3), (2, 5), (3, 6)] {
            l.push(row, "a.csv", line);
        }
        l.push(4, "b.csv", 2);
        assert_eq!(l.runs.len(), 3);
        assert_eq!(l.locate(1), Some(("a.csv", 3)));
        assert_eq!(l.locate(3), Some(("a.csv", 6)));
        assert_eq!(l.locate(4), Some(("b.csv", 2)));
    }

    #[test]
    fn encodings_accept_common_spellings() {
        for s in ["utf-8", "UTF-8", "utf8"] {
            assert_eq!(s.parse::<Encoding>().unwrap(), Encoding::Utf8);
        }
        for s in ["cp949", "CP949", "euc-kr", "EUC-KR"] {
            assert_eq!(s.parse::<Encoding>().unwrap(), Encoding::Cp949);
        }
        assert!("latin1".parse::<Encoding>().unwrap_err().contains("utf-8"));
    }
}
