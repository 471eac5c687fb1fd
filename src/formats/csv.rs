//! CSV and TSV, in UTF-8 or CP949.
//!
//! A quote that is never closed would make the rest of the file one field:
//! every row after it would vanish into one bad row. A record that spans
//! several lines is therefore checked: when its quote is still open at the
//! end of the file, when it leaves the row with the wrong number of fields,
//! or when it runs over `max_lines_per_row` lines, only its first line is
//! rejected ("a quote opened on line N is never closed") and reading
//! resumes on the next line, so every physical line is accounted for.

use std::io::{BufRead, Read};

use schemars::JsonSchema;
use serde::Deserialize;

use super::columns::{Infer, Schema};
use super::typing::{CHUNK_ROWS, Fields, Pipeline, Typist, hand_over_if_full, infer_in_parallel};
use super::{Encoding, FieldTypes, FormatError, Reader, Reason, Sink, SourceFile, bom_len, open_at};

/// CSV options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// The field separator: one character, `\t` for tabs. Default `,`.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Whether the first line names the columns. Default true.
    #[serde(default = "yes")]
    pub header: bool,
    /// The quote character. Default `"`.
    #[serde(default = "default_quote")]
    pub quote: char,
    /// `utf-8` (default), `cp949` (also `euc-kr`), or `auto` (UTF-8 unless
    /// the file's bytes are not, then CP949).
    #[serde(default)]
    pub encoding: Encoding,
    /// Lines to skip before the header.
    #[serde(default)]
    pub skip_lines: u64,
    /// The most lines one row may span (quoted fields may hold line
    /// breaks). A quoted field running longer is taken for a quote that is
    /// never closed: its first line is rejected and reading resumes on the
    /// next line. Default 100.
    #[serde(default = "default_max_lines")]
    pub max_lines_per_row: u64,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { delimiter: ',', header: true, quote: '"', encoding: Encoding::Utf8, skip_lines: 0, max_lines_per_row: 100 }
    }
}

fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn default_max_lines() -> u64 {
    100
}
fn yes() -> bool {
    true
}

/// Reads CSV files.
pub struct CsvReader {
    pub opts: CsvOptions,
    pub nulls: Vec<String>,
}

/// Where a file's data starts, after its BOM, skipped lines and header.
struct Start {
    enc: Encoding,
    header: Option<Vec<String>>,
    /// Byte offset of the first data record.
    byte: u64,
    /// Physical lines before it.
    lines: u64,
}

/// Records end at `\n` only, so that the parser's positions are exact line
/// numbers (with its default, CRLF, a record's position lags behind on
/// CRLF files and blank lines are not counted); a `\r` before the `\n`
/// stays on the last field and is cut by [`field`].
fn csv_reader<R: Read>(r: R, o: &CsvOptions) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .delimiter(o.delimiter as u8)
        .quote(o.quote as u8)
        .terminator(csv::Terminator::Any(b'\n'))
        .has_headers(false)
        .flexible(true)
        // As large as `open_at`'s buffer, which reads then go around: one
        // copy of the file's bytes fewer.
        .buffer_capacity(1 << 20)
        .from_reader(r)
}

/// Field `i` of a record, without the `\r` of a CRLF line end.
fn field(rec: &csv::ByteRecord, i: usize) -> &[u8] {
    let f = &rec[i];
    if i + 1 == rec.len() { f.strip_suffix(b"\r").unwrap_or(f) } else { f }
}

/// Whether a record is a blank line.
fn blank(rec: &csv::ByteRecord) -> bool {
    rec.len() == 1 && field(rec, 0).is_empty()
}

impl CsvReader {
    fn start(&self, file: &SourceFile) -> Result<Start, FormatError> {
        let name = &file.name;
        let enc = self.opts.encoding.resolve(&file.path, name)?;
        let mut byte = bom_len(&file.path, name)?;
        let mut f = open_at(&file.path, name, byte)?;
        let mut buf = Vec::new();
        for _ in 0..self.opts.skip_lines {
            buf.clear();
            byte += f.read_until(b'\n', &mut buf).map_err(|e| FormatError::Io(name.clone(), e))? as u64;
        }
        let mut lines = self.opts.skip_lines;
        if !self.opts.header {
            return Ok(Start { enc, header: None, byte, lines });
        }
        let mut r = csv_reader(f, &self.opts);
        let mut rec = csv::ByteRecord::new();
        let header = match r.read_byte_record(&mut rec) {
            Ok(true) => (0..rec.len()).map(|i| enc.lossy(field(&rec, i)).trim_start_matches('\u{feff}').trim().to_string()).collect(),
            Ok(false) => Vec::new(),
            Err(e) => return Err(FormatError::Invalid(format!("{name}: cannot read the header: {e}"))),
        };
        let pos = r.position();
        byte += pos.byte();
        lines += pos.line().saturating_sub(1);
        Ok(Start { enc, header: Some(header), byte, lines })
    }
}

/// A record the iterator yields.
enum Item {
    /// A record in `Records::rec`, starting on this line.
    Row(u64),
    /// A quoted field that never closed: its first line is rejected.
    Runaway { line: u64, detail: String, raw: String },
}

/// The records of one file, resynchronising after runaway quotes.
struct Records<'a> {
    file: &'a SourceFile,
    opts: &'a CsvOptions,
    enc: Encoding,
    /// The field count rows must have, when known.
    width: Option<usize>,
    base_byte: u64,
    base_line: u64,
    r: csv::Reader<std::io::BufReader<std::fs::File>>,
    rec: csv::ByteRecord,
}

impl<'a> Records<'a> {
    fn new(file: &'a SourceFile, opts: &'a CsvOptions, st: &Start, width: Option<usize>) -> Result<Records<'a>, FormatError> {
        let r = csv_reader(open_at(&file.path, &file.name, st.byte)?, opts);
        Ok(Records { file, opts, enc: st.enc, width, base_byte: st.byte, base_line: st.lines, r, rec: csv::ByteRecord::new() })
    }

    fn next(&mut self) -> Result<Option<Item>, FormatError> {
        let name = &self.file.name;
        match self.r.read_byte_record(&mut self.rec) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => return Err(FormatError::Invalid(format!("{name}: {e}"))),
        }
        let (line, start) = match self.rec.position() {
            Some(p) => (self.base_line + p.line(), self.base_byte + p.byte()),
            None => (self.base_line, self.base_byte),
        };
        if !self.rec.as_slice().contains(&b'\n') {
            return Ok(Some(Item::Row(line)));
        }
        let newlines = self.rec.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
        // A record over several lines: a quoted field holds line breaks.
        let end = self.base_byte + self.r.position().byte();
        let q = scan_quotes(&self.file.path, name, start, end, self.opts.quote as u8, self.opts.delimiter as u8)?;
        let wrong = self.width.filter(|&w| w != self.rec.len());
        let too_long = newlines + 1 > self.opts.max_lines_per_row;
        if !q.open && !q.malformed && wrong.is_none() && !too_long {
            return Ok(Some(Item::Row(line)));
        }
        let detail = if q.open {
            format!("a quote opened on line {line} is never closed")
        } else if q.malformed {
            format!(
                "a quote opened on line {line} is closed further down (the row ends on line {}) by a quote that more text follows: a quote that is never closed?",
                line + newlines
            )
        } else if let Some(w) = wrong {
            format!(
                "a quoted field opened on line {line} runs to line {}, leaving {} fields where {w} are expected: a quote that is never closed?",
                line + newlines,
                self.rec.len()
            )
        } else {
            format!(
                "a quoted field opened on line {line} runs over {} lines, more than csv.max_lines_per_row ({}): a quote that is never closed?",
                newlines + 1,
                self.opts.max_lines_per_row
            )
        };
        let (raw, next) = physical_line(&self.file.path, name, start)?;
        self.base_byte = next;
        self.base_line = line;
        self.r = csv_reader(open_at(&self.file.path, name, next)?, self.opts);
        Ok(Some(Item::Runaway {
            line,
            detail: format!("{detail}; only line {line} is rejected and reading resumes on line {}", line + 1),
            raw: self.enc.lossy(&raw),
        }))
    }
}

/// What the quotes of a multi-line record look like.
#[derive(Debug, PartialEq)]
struct Quotes {
    /// A quote is still open at the end of the record (so the record ran to
    /// the end of the file).
    open: bool,
    /// A quote closed and other text followed it (`"cash\n3,"card`): a
    /// stray quote closed a quote that was never meant to span lines.
    malformed: bool,
}

/// Scans the quotes of the bytes `[start, end)` as the CSV parser reads
/// them: a quote opens a field only at its start, a doubled quote inside a
/// quoted field is a literal quote.
fn scan_quotes(path: &std::path::Path, name: &str, start: u64, end: u64, quote: u8, delim: u8) -> Result<Quotes, FormatError> {
    #[derive(PartialEq)]
    enum S {
        FieldStart,
        Unquoted,
        InQuote,
        QuoteInQuote,
    }
    let mut f = open_at(path, name, start)?.take(end.saturating_sub(start));
    let mut buf = vec![0u8; 1 << 16];
    let mut s = S::FieldStart;
    let mut malformed = false;
    loop {
        let n = f.read(&mut buf).map_err(|e| FormatError::Io(name.to_string(), e))?;
        if n == 0 {
            return Ok(Quotes { open: s == S::InQuote, malformed });
        }
        for &b in &buf[..n] {
            s = match s {
                S::FieldStart if b == quote => S::InQuote,
                S::FieldStart | S::Unquoted if b == delim || b == b'\n' => S::FieldStart,
                S::FieldStart | S::Unquoted => S::Unquoted,
                S::InQuote if b == quote => S::QuoteInQuote,
                S::InQuote => S::InQuote,
                S::QuoteInQuote if b == quote => S::InQuote,
                S::QuoteInQuote if b == delim || b == b'\n' => S::FieldStart,
                S::QuoteInQuote if b == b'\r' => S::Unquoted,
                S::QuoteInQuote => {
                    malformed = true;
                    S::Unquoted
                }
            };
        }
    }
}

/// The line starting at byte `start` (without its line break) and the
/// offset of the next line.
fn physical_line(path: &std::path::Path, name: &str, start: u64) -> Result<(Vec<u8>, u64), FormatError> {
    let mut f = open_at(path, name, start)?;
    let mut buf = Vec::new();
    let n = f.read_until(b'\n', &mut buf).map_err(|e| FormatError::Io(name.to_string(), e))? as u64;
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok((buf, start + n))
}

impl CsvReader {
    fn infer_schema(&self, files: &[SourceFile]) -> Result<Schema, FormatError> {
        let mut names: Vec<String> = Vec::new();
        let mut infer: Vec<Infer> = Vec::new();
        for file in files {
            let st = self.start(file)?;
            if let Some(h) = &st.header {
                for c in h {
                    if !names.contains(c) {
                        names.push(c.clone());
                    }
                }
            }
            // Field k of a record is column columns[k] (a header's order
            // among every file's names), or column k without a header.
            let columns: Option<Vec<usize>> =
                st.header.as_ref().map(|h| h.iter().filter_map(|c| names.iter().position(|n| n == c)).collect());
            let width = st.header.as_ref().map(Vec::len);
            let mut recs = Records::new(file, &self.opts, &st, width)?;
            let (widest, part) = infer_in_parallel(columns.as_deref(), st.enc, &self.nulls, |hand_over| {
                let mut chunk = Fields::default();
                let mut widest = 0;
                while let Some(item) = recs.next()? {
                    let Item::Row(_) = item else { continue };
                    let rec = &recs.rec;
                    // A blank line is no row; a row of the wrong width is a
                    // bad row, reported when read.
                    if blank(rec) || width.is_some_and(|w| w != rec.len()) {
                        continue;
                    }
                    widest = widest.max(rec.len());
                    chunk.record((0..rec.len()).map(|k| field(rec, k)));
                    hand_over_if_full(&mut chunk, hand_over)?;
                }
                hand_over(chunk)?;
                Ok(widest)
            })?;
            if st.header.is_none() {
                for i in names.len()..widest {
                    names.push(format!("column_{}", i + 1));
                }
            }
            if infer.len() < names.len() {
                infer.resize(names.len(), Infer::default());
            }
            for (a, b) in infer.iter_mut().zip(&part) {
                a.merge(b);
            }
        }
        Ok(Schema(names.into_iter().zip(infer.iter().map(Infer::result)).collect()))
    }

    /// Reads a file, typing its records in chunks of `chunk_rows`.
    fn read_in_chunks(&self, file: &SourceFile, schema: &Schema, sink: &mut Sink<'_>, chunk_rows: usize) -> Result<(), FormatError> {
        let name = file.name.as_str();
        let st = self.start(file)?;
        let (width, index): (usize, Vec<usize>) = match &st.header {
            Some(h) => {
                let mut idx = Vec::new();
                let mut missing = Vec::new();
                for (col, _) in &schema.0 {
                    match h.iter().position(|x| x == col) {
                        Some(i) => idx.push(i),
                        None => missing.push(format!("`{col}`")),
                    }
                }
                if !missing.is_empty() {
                    let hint = if h.len() == 1 && h[0].contains([';', '\t', '|', ' ']) {
                        format!(
                            "; the whole header is one field, so the delimiter is probably not `{}` (set csv.delimiter)",
                            self.opts.delimiter.escape_default()
                        )
                    } else {
                        String::new()
                    };
                    return Err(FormatError::Invalid(format!(
                        "{name}: the header has no column {} (it has: {}){hint}",
                        missing.join(", "),
                        h.join(", ")
                    )));
                }
                (h.len(), idx)
            }
            None => (schema.0.len(), (0..schema.0.len()).collect()),
        };
        let typist = Typist {
            types: FieldTypes::of(schema),
            index,
            width,
            enc: st.enc,
            nulls: self.nulls.clone(),
            delim: self.opts.delimiter.to_string(),
            rows: sink.rows.like(0),
            source: sink.has_source_column().then(|| name.to_string()),
        };
        let mut recs = Records::new(file, &self.opts, &st, Some(width))?;
        // This thread splits the records; typing them is the pipeline's.
        std::thread::scope(|scope| {
            let mut typing = Pipeline::new(scope, &typist, name, chunk_rows);
            loop {
                let item = match recs.next() {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(e) => {
                        // The rows before it first: one of them may be the
                        // first bad row, which `fail` reports.
                        typing.finish(sink)?;
                        return Err(e);
                    }
                };
                let line = match item {
                    Item::Row(line) => line,
                    Item::Runaway { line, detail, raw } => {
                        typing.chunk.bad(line, Reason::UnterminatedQuote, detail, raw);
                        typing.hand_over_if_full(sink)?;
                        continue;
                    }
                };
                let rec = &recs.rec;
                if rec.len() == width {
                    typing.chunk.record(line, (0..width).map(|i| field(rec, i)));
                } else if !blank(rec) {
                    // (A blank line is not a row.)
                    let raw = (0..rec.len()).map(|i| typist.enc.lossy(field(rec, i))).collect::<Vec<_>>().join(&typist.delim);
                    typing.chunk.bad(line, Reason::WrongFieldCount, format!("{} fields, expected {width}", rec.len()), raw);
                }
                typing.hand_over_if_full(sink)?;
            }
            typing.finish(sink)
        })
    }
}

impl Reader for CsvReader {
    fn infer(&self, files: &[SourceFile]) -> Result<Schema, FormatError> {
        self.infer_schema(files)
    }

    fn read(&self, file: &SourceFile, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError> {
        self.read_in_chunks(file, schema, sink, CHUNK_ROWS)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{collect, file, src};
    use super::super::{Lineage, OnBadRows};
    use super::*;
    use polars::prelude::DataFrame;

    fn reader() -> CsvReader {
        CsvReader { opts: CsvOptions::default(), nulls: vec![String::new()] }
    }

    #[test]
    fn quarantines_bad_rows_with_lines() {
        let f = file(b"id,amount,day\n1,10.50,2024-01-05\n2,abc,2024-01-05\n3,1.00\n4,2.00,2024-01-06\n");
        let schema: Schema = serde_yaml::from_str("id: int\namount: decimal(12,2)\nday: date\n").unwrap();
        let (df, rejects, bad) = collect(&schema, OnBadRows::Quarantine, |s| reader().read(&src(&f, "x.csv"), &schema, s));
        assert_eq!(df.height(), 2);
        let r = rejects.unwrap();
        let lines: Vec<i64> = r.column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(lines, vec![3, 4]);
        assert_eq!(bad.get("unparsable value"), Some(&1));
        assert_eq!(bad.get("wrong field count"), Some(&1));
    }

    /// A file with a bad row of every kind the splitting and the typing
    /// find, blank lines and legitimate multi-line fields, among 3,000 rows.
    fn messy_csv() -> Vec<u8> {
        let mut s = String::from("id,amount,note\n");
        for i in 1..=3000 {
            match i {
                _ if i % 97 == 0 => s.push_str(&format!("{i},1.00\n")),
                _ if i % 89 == 0 => s.push_str(&format!("{i},abc,x\n")),
                _ if i % 83 == 0 => s.push_str(&format!("{i},2.00,a\0b\n")),
                _ if i % 79 == 0 => s.push('\n'),
                _ if i % 73 == 0 => s.push_str(&format!("{i},3.00,\"two\nlines\"\n")),
                _ => s.push_str(&format!("{i},{}.{:02},n{i}\n", i % 1000, i % 100)),
            }
        }
        // A quote never closed: only its line is rejected.
        s.push_str("3001,4.00,\"open\n3002,5.00,last\n");
        s.into_bytes()
    }

    /// Reads with chunks of `chunk_rows`: the rows, the rejects, the bad
    /// counts and the lineage.
    fn read_chunked(
        f: &tempfile::NamedTempFile,
        schema: &Schema,
        source_column: bool,
        chunk_rows: usize,
    ) -> (DataFrame, DataFrame, Vec<(String, u64)>, Lineage) {
        let mut frames = Vec::new();
        let mut w = |df: DataFrame| {
            frames.push(df);
            Ok(())
        };
        let mut sink = Sink::new(schema, OnBadRows::Quarantine, source_column.then_some("source"), None, &mut w);
        reader().read_in_chunks(&src(f, "m.csv"), schema, &mut sink, chunk_rows).unwrap();
        let bad = sink.bad.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (rejects, lineage) = sink.finish().unwrap();
        let df = frames.into_iter().reduce(|mut a, b| {
            a.vstack_mut(&b).unwrap();
            a
        });
        (df.unwrap(), rejects.unwrap(), bad, lineage)
    }

    #[test]
    fn typing_in_chunks_on_threads_changes_nothing() {
        let f = file(&messy_csv());
        let schema: Schema = serde_yaml::from_str("{id: int, amount: 'decimal(12,2)', note: text}").unwrap();
        for source_column in [false, true] {
            // One chunk: typed on the reading thread.
            let (df, rejects, bad, lineage) = read_chunked(&f, &schema, source_column, usize::MAX);
            let good = df.height() as u64;
            let bad_total: u64 = bad.iter().map(|b| b.1).sum();
            assert_eq!(rejects.height() as u64, bad_total);
            assert_eq!(good + bad_total, 3000 - 3000 / 79 + 2, "every row but the blank lines read");
            let reasons: Vec<&str> = bad.iter().map(|b| b.0.as_str()).collect();
            assert_eq!(reasons, ["NUL byte", "unparsable value", "unterminated quote", "wrong field count"]);
            let lines: Vec<i64> = rejects.column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
            assert!(lines.is_sorted(), "rejects in file order");
            assert_eq!(
                lineage.locate(good - 1),
                Some(("m.csv", 1 + 3000 + 3000 / 73 + 2)),
                "the header, 3,000 rows, the multi-line ones, the open quote, the last"
            );
            // Each good row's values, in order (a bad field leaves nothing of its row behind).
            let ids: Vec<i64> = df.column("id").unwrap().i64().unwrap().into_no_null_iter().collect();
            let mut expected: Vec<i64> = (1..=3000).filter(|i| [97, 89, 83, 79].iter().all(|m| i % m != 0)).collect();
            expected.push(3002);
            assert!(ids == expected, "{} ids read, {} expected", ids.len(), expected.len());
            let notes = df.column("note").unwrap().str().unwrap();
            let amounts = df.column("amount").unwrap().cast(&polars::prelude::DataType::String).unwrap();
            for (row, &id) in ids.iter().enumerate() {
                let note = if id % 73 == 0 {
                    "two\nlines".to_string()
                } else if id == 3002 {
                    "last".into()
                } else {
                    format!("n{id}")
                };
                assert_eq!(notes.get(row), Some(note.as_str()));
                let amount = match id {
                    _ if id % 73 == 0 => "3.00".to_string(),
                    3002 => "5.00".into(),
                    _ => format!("{}.{:02}", id % 1000, id % 100),
                };
                assert_eq!(amounts.str().unwrap().get(row), Some(amount.as_str()), "row {row}");
            }
            // Many chunks, typed on other threads, come out the same.
            for chunk_rows in [1, 2, 3, 64, 1000] {
                let (d, r, b, l) = read_chunked(&f, &schema, source_column, chunk_rows);
                assert!(d.equals_missing(&df), "rows, chunks of {chunk_rows}");
                assert!(r.equals_missing(&rejects), "rejects, chunks of {chunk_rows}");
                assert_eq!(b, bad, "chunks of {chunk_rows}");
                assert_eq!(l, lineage, "chunks of {chunk_rows}");
            }
        }
    }

    #[test]
    fn types_are_inferred_over_every_chunk() {
        // 30,000 rows: four chunks for the inferring threads; what widens a
        // column comes late, in a chunk of its own.
        let mut s = String::from("n,x,flag,day,at,empty\n");
        let mut bare = String::new();
        for i in 0..30_000 {
            let x = if i == 25_000 { "1.5".to_string() } else { i.to_string() };
            let flag = if i == 20_000 {
                "maybe"
            } else if i % 2 == 0 {
                "true"
            } else {
                "FALSE"
            };
            s.push_str(&format!("{i},{x},{flag},2024-01-{:02},2024-01-01 10:{:02}:00,\n", i % 28 + 1, i % 60));
            bare.push_str(&format!("{i},{x}\n"));
        }
        s.push_str("1,2,3\n"); // the wrong width: left out
        bare.push_str("1,2,x,4\n"); // without a header: two more columns
        let f = file(s.as_bytes());
        let schema = reader().infer(&[src(&f, "i.csv")]).unwrap();
        let types: Vec<String> = schema.0.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        assert_eq!(types, ["n: int", "x: float", "flag: text", "day: date", "at: timestamp", "empty: text"]);
        let g = file(bare.as_bytes());
        let r = CsvReader { opts: CsvOptions { header: false, ..Default::default() }, nulls: vec![String::new()] };
        let schema = r.infer(&[src(&g, "b.csv")]).unwrap();
        let types: Vec<String> = schema.0.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        assert_eq!(types, ["column_1: int", "column_2: float", "column_3: text", "column_4: int"]);
    }

    #[test]
    fn typing_in_chunks_fails_at_the_first_bad_row() {
        // The first bad row is typed on a thread (unparsable, line 4), the
        // second found while splitting (wrong field count, line 6).
        let f = file(b"id\n1\n2\nx\n3\n4,5\n6\n");
        let schema: Schema = serde_yaml::from_str("{id: int}").unwrap();
        for chunk_rows in [1, 2, 100] {
            let mut w = |_df: DataFrame| Ok(());
            let mut sink = Sink::new(&schema, OnBadRows::Fail, None, None, &mut w);
            let e = reader().read_in_chunks(&src(&f, "x.csv"), &schema, &mut sink, chunk_rows).unwrap_err().to_string();
            assert!(e.contains("x.csv, line 4: unparsable value"), "chunks of {chunk_rows}: {e}");
            let mut sink = Sink::new(&schema, OnBadRows::Skip, None, Some(1), &mut w);
            let e = reader().read_in_chunks(&src(&f, "x.csv"), &schema, &mut sink, chunk_rows).unwrap_err().to_string();
            assert!(
                e.contains("more than max_bad_rows (1) bad rows; the last: x.csv, line 6: wrong field count"),
                "chunks of {chunk_rows}: {e}"
            );
        }
    }

    #[test]
    fn fail_names_the_line() {
        let f = file(b"id\n1\nx\n");
        let schema: Schema = serde_yaml::from_str("{id: int}").unwrap();
        let mut w = |_df: polars::prelude::DataFrame| Ok(());
        let mut sink = Sink::new(&schema, OnBadRows::Fail, None, None, &mut w);
        let e = reader().read(&src(&f, "x.csv"), &schema, &mut sink).unwrap_err().to_string();
        assert!(e.contains("x.csv, line 3: unparsable value"), "{e}");
    }

    #[test]
    fn an_unclosed_quote_costs_one_line() {
        // Line 4 opens a quote that never closes: without resynchronising,
        // lines 4 to 7 would be one bad row.
        let f = file(b"id,method\n1,card\n2,\"cash\n3,\"card\n4,card\n5,cash\n");
        let schema: Schema = serde_yaml::from_str("{id: int, method: text}").unwrap();
        let (df, rejects, bad) = collect(&schema, OnBadRows::Quarantine, |s| reader().read(&src(&f, "q.csv"), &schema, s));
        let ids: Vec<i64> = df.column("id").unwrap().i64().unwrap().into_no_null_iter().collect();
        // Line 3's quote is closed by the quote of `"card` on line 4, which
        // text follows: line 3 is rejected. Line 4's quote never closes:
        // rejected too. Lines 5 and 6 are read.
        assert_eq!(ids, vec![1, 4, 5]);
        assert_eq!(bad.get("unterminated quote"), Some(&2));
        let r = rejects.unwrap();
        let lines: Vec<i64> = r.column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(lines, vec![3, 4]);
        let detail = r.column("detail").unwrap().str().unwrap().get(1).unwrap().to_string();
        assert!(detail.contains("a quote opened on line 4 is never closed"), "{detail}");
    }

    #[test]
    fn legitimate_line_breaks_in_quotes_are_kept() {
        let f = file(b"id,note\n1,\"two\nlines\"\n2,x\n");
        let schema: Schema = serde_yaml::from_str("{id: int, note: text}").unwrap();
        let (df, rejects, _) = collect(&schema, OnBadRows::Quarantine, |s| reader().read(&src(&f, "n.csv"), &schema, s));
        assert_eq!(df.height(), 2);
        assert_eq!(df.column("note").unwrap().str().unwrap().get(0), Some("two\nlines"));
        assert_eq!(rejects.unwrap().height(), 0);
    }

    #[test]
    fn a_character_split_between_fields_is_invalid_utf8() {
        // `가` is EA B0 80. Cut by a comma, both its fields are invalid
        // UTF-8, though the chunk's fields end to end (without the comma)
        // are valid text: it is checked as a whole and at each field's ends.
        let mut bytes = "id,a,b\n1,가나,다\n".as_bytes().to_vec();
        bytes.extend_from_slice(b"2,\xEA\xB0,\x80x\n3,ok,\xEA\xB0\x80\n");
        let f = file(&bytes);
        let schema: Schema = serde_yaml::from_str("{id: int, a: text, b: text}").unwrap();
        for chunk_rows in [1, 2, 100] {
            let mut frames = Vec::new();
            let mut w = |df: DataFrame| {
                frames.push(df);
                Ok(())
            };
            let mut sink = Sink::new(&schema, OnBadRows::Skip, None, None, &mut w);
            reader().read_in_chunks(&src(&f, "u.csv"), &schema, &mut sink, chunk_rows).unwrap();
            assert_eq!(sink.bad.get("invalid encoding"), Some(&1), "chunks of {chunk_rows}");
            sink.finish().unwrap();
            let df = frames.into_iter().reduce(|mut a, b| {
                a.vstack_mut(&b).unwrap();
                a
            });
            let df = df.unwrap();
            let ids: Vec<i64> = df.column("id").unwrap().i64().unwrap().into_no_null_iter().collect();
            assert_eq!(ids, [1, 3], "chunks of {chunk_rows}");
            let b: Vec<&str> = df.column("b").unwrap().str().unwrap().iter().flatten().collect();
            assert_eq!(b, ["다", "가"], "chunks of {chunk_rows}");
        }
    }

    #[test]
    fn bom_nul_and_cp949() {
        let f = file(b"\xEF\xBB\xBFid,name\n1,a\n2,b\x00c\n");
        let schema: Schema = serde_yaml::from_str("{id: int, name: text}").unwrap();
        let (df, _, bad) = collect(&schema, OnBadRows::Skip, |s| reader().read(&src(&f, "b.csv"), &schema, s));
        assert_eq!(df.height(), 1);
        assert_eq!(bad.get("NUL byte"), Some(&1));

        let (text, _, _) = encoding_rs::EUC_KR.encode("name,city\n김철수,서울\n");
        let mut bytes = text.into_owned();
        bytes.extend_from_slice(b"bad,\xff\xfe\n");
        let f = file(&bytes);
        let r = CsvReader { opts: CsvOptions { encoding: Encoding::Cp949, ..Default::default() }, nulls: vec![] };
        let schema = r.infer(&[src(&f, "k.csv")]).unwrap();
        let (df, _, bad) = collect(&schema, OnBadRows::Skip, |s| r.read(&src(&f, "k.csv"), &schema, s));
        assert_eq!(df.column("city").unwrap().str().unwrap().get(0), Some("서울"));
        assert_eq!(bad.get("invalid encoding"), Some(&1));
    }
}
