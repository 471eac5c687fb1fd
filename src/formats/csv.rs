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
        let newlines = self.rec.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
        if newlines == 0 {
            return Ok(Some(Item::Row(line)));
        }
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

impl Reader for CsvReader {
    fn infer(&self, files: &[SourceFile]) -> Result<Schema, FormatError> {
        let mut names: Vec<String> = Vec::new();
        let mut infer: Vec<Infer> = Vec::new();
        for file in files {
            let st = self.start(file)?;
            if let Some(h) = &st.header {
                for c in h {
                    if !names.contains(c) {
                        names.push(c.clone());
                        infer.push(Infer::default());
                    }
                }
            }
            let width = st.header.as_ref().map(Vec::len);
            let mut recs = Records::new(file, &self.opts, &st, width)?;
            while let Some(item) = recs.next()? {
                let Item::Row(_) = item else { continue };
                let rec = &recs.rec;
                if blank(rec) {
                    continue;
                }
                if st.header.is_none() && rec.len() > names.len() {
                    for i in names.len()..rec.len() {
                        names.push(format!("column_{}", i + 1));
                        infer.push(Infer::default());
                    }
                }
                let cols: Vec<usize> = match &st.header {
                    Some(h) if rec.len() == h.len() => h.iter().filter_map(|c| names.iter().position(|n| n == c)).collect(),
                    Some(_) => continue, // a bad row; it is reported when read
                    None => (0..rec.len()).collect(),
                };
                for (k, i) in cols.iter().enumerate() {
                    if let Some(s) = st.enc.decode(field(rec, k))
                        && !self.nulls.iter().any(|n| n == &*s)
                    {
                        infer[*i].add(&s);
                    }
                }
            }
        }
        Ok(Schema(names.into_iter().zip(infer.iter().map(Infer::result)).collect()))
    }

    fn read(&self, file: &SourceFile, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError> {
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
        let types = FieldTypes::of(schema);
        let enc = st.enc;
        let delim = self.opts.delimiter.to_string();
        let mut recs = Records::new(file, &self.opts, &st, Some(width))?;
        while let Some(item) = recs.next()? {
            let line = match item {
                Item::Row(line) => line,
                Item::Runaway { line, detail, raw } => {
                    sink.reject(name, line, Reason::UnterminatedQuote, detail, &raw)?;
                    continue;
                }
            };
            let rec = &recs.rec;
            let raw = || (0..rec.len()).map(|i| enc.lossy(field(rec, i))).collect::<Vec<_>>().join(&delim);
            if rec.len() != width {
                // A blank line is not a row.
                if blank(rec) {
                    continue;
                }
                sink.reject(name, line, Reason::WrongFieldCount, format!("{} fields, expected {width}", rec.len()), &raw())?;
                continue;
            }
            let mut decoded: Vec<std::borrow::Cow<'_, str>> = Vec::with_capacity(index.len());
            let mut bad_enc = None;
            for (k, &i) in index.iter().enumerate() {
                match enc.decode(field(rec, i)) {
                    Some(s) => decoded.push(s),
                    None => {
                        bad_enc = Some(k);
                        break;
                    }
                }
            }
            if let Some(k) = bad_enc {
                let detail = format!("column `{}` is not valid {}", types.names[k], enc.name());
                sink.reject(name, line, Reason::InvalidEncoding, detail, &raw())?;
                continue;
            }
            sink.fields(name, line, &types, decoded.iter().map(|s| Some(s.as_ref())), &self.nulls, &raw)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::OnBadRows;
    use super::super::testkit::{collect, file, src};
    use super::*;

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
