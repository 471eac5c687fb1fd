//! XML: records are the elements at a path (`orders/order`), fields are
//! paths inside a record.
//!
//! XML cannot resynchronise after a syntax error: everything after it is
//! unreadable. A malformed document therefore fails the task with the
//! file, line and column and how many records were read, unless the user
//! opted in with `keep_rows_before_error`; then the records before the
//! error are kept and the note says how many were lost after it (counted
//! by their start tags in the rest of the file).

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;

use super::columns::{ColumnType, Infer, Schema};
use super::{FieldTypes, FormatError, Reader, Sink, SourceFile, bom_len, open_at};

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
    /// When the document is malformed, keep the records before the error
    /// and go on (the note says how many records after it were lost).
    /// Default false: a malformed document fails the task, since nothing
    /// after the error can be read.
    #[serde(default)]
    pub keep_rows_before_error: bool,
}

impl XmlOptions {
    pub fn field_list(&self) -> Vec<(String, String)> {
        self.fields.iter().flatten().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect()
    }

    /// The record element's own name (`order` for `orders/order`).
    fn record_tag(&self) -> &str {
        self.record.trim_matches('/').rsplit('/').next().unwrap_or_default()
    }
}

pub struct XmlReader {
    pub opts: XmlOptions,
    pub nulls: Vec<String>,
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

/// Where a document broke.
struct Broken {
    line: u64,
    col: u64,
    detail: String,
    /// Byte offset (in the file) where reading stopped.
    offset: u64,
    /// Whether a record was open when it broke.
    in_record: bool,
}

/// The walk's state inside the document.
struct Walk {
    record_path: Vec<String>,
    want: Vec<(String, String)>,
    stack: Vec<String>,
    rel: Vec<String>,
    current: Option<XmlRecord>,
    text: String,
}

/// Streams records out of an XML file. Returns where the document broke,
/// if it did.
fn scan_xml(
    path: &Path,
    name: &str,
    o: &XmlOptions,
    mut on_record: impl FnMut(XmlRecord) -> Result<(), FormatError>,
) -> Result<Option<Broken>, FormatError> {
    use quick_xml::events::Event;
    let bom = bom_len(path, name)?;
    let newlines = std::rc::Rc::new(std::cell::RefCell::new(std::collections::VecDeque::new()));
    let file = open_at(path, name, bom)?;
    let counter = LineCounter { inner: file, offset: bom, newlines: newlines.clone() };
    let mut reader = quick_xml::Reader::from_reader(BufReader::with_capacity(1 << 20, counter));
    // Values are trimmed whole: trimming each text event would eat the
    // spaces around entity references (`Kim &amp; Lee`).
    reader.config_mut().trim_text(false);
    let mut line: u64 = 1;
    let mut line_start: u64 = 0;
    // Line and column (1-based, in bytes) of a byte offset in the file;
    // offsets only grow.
    let mut locate = |pos: u64| {
        let mut q = newlines.borrow_mut();
        while q.front().is_some_and(|&nl| nl < pos) {
            line_start = q.pop_front().unwrap_or_default() + 1;
            line += 1;
        }
        (line, pos.saturating_sub(line_start) + 1)
    };
    let mut w = Walk {
        record_path: o.record.trim_matches('/').split('/').map(str::to_string).collect(),
        want: o.field_list(),
        stack: Vec::new(),
        rel: Vec::new(),
        current: None,
        text: String::new(),
    };
    let mut buf = Vec::new();
    loop {
        let pos_before = bom + reader.buffer_position();
        let ev = match reader.read_event_into(&mut buf) {
            Ok(ev) => ev,
            Err(e) => {
                let (l, c) = locate(bom + reader.error_position());
                return Ok(Some(Broken {
                    line: l,
                    col: c,
                    detail: format!("malformed XML: {e}"),
                    offset: bom + reader.buffer_position(),
                    in_record: w.current.is_some(),
                }));
            }
        };
        let decode_err = |e: &dyn std::fmt::Display| FormatError::Invalid(format!("{name}: {e}"));
        match ev {
            Event::Start(e) => {
                let (l, _) = locate(pos_before + 1);
                w.start_element(&e, l);
            }
            Event::Empty(e) => {
                let (l, _) = locate(pos_before + 1);
                w.start_element(&e, l);
                if let Some(rec) = w.end_element() {
                    on_record(rec)?;
                }
            }
            Event::Text(t) if w.current.is_some() => {
                w.text.push_str(&t.decode().map_err(|e| decode_err(&e))?);
            }
            Event::CData(t) if w.current.is_some() => {
                w.text.push_str(&String::from_utf8_lossy(&t.into_inner()));
            }
            Event::GeneralRef(r) if w.current.is_some() => {
                if r.is_char_ref() {
                    if let Ok(Some(c)) = r.resolve_char_ref() {
                        w.text.push(c);
                    }
                } else {
                    let n = r.decode().map(|c| c.into_owned()).unwrap_or_default();
                    match quick_xml::escape::resolve_predefined_entity(&n) {
                        Some(s) => w.text.push_str(s),
                        None => w.text.push_str(&format!("&{n};")),
                    }
                }
            }
            Event::End(_) => {
                if let Some(rec) = w.end_element() {
                    on_record(rec)?;
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !w.stack.is_empty() {
        let end = bom + reader.buffer_position();
        let (l, c) = locate(end);
        return Ok(Some(Broken {
            line: l,
            col: c,
            detail: format!("the file ends inside `<{}>`", w.stack.last().map(String::as_str).unwrap_or_default()),
            offset: end,
            in_record: w.current.is_some(),
        }));
    }
    Ok(None)
}

impl Walk {
    fn start_element(&mut self, e: &quick_xml::events::BytesStart<'_>, line: u64) {
        let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let attrs: Vec<(String, String)> = e
            .attributes()
            .filter_map(|a| a.ok())
            .map(|a| (String::from_utf8_lossy(a.key.as_ref()).into_owned(), a.unescape_value().map(|v| v.into_owned()).unwrap_or_default()))
            .collect();
        self.stack.push(tag.clone());
        if self.current.is_none() && self.stack == self.record_path {
            let mut rec = XmlRecord { line, values: BTreeMap::new(), raw_fields: Vec::new() };
            self.rel.clear();
            for (k, v) in attrs {
                record_value(&mut rec, &self.want, &format!("@{k}"), v);
            }
            self.current = Some(rec);
        } else if let Some(rec) = &mut self.current {
            self.rel.push(tag);
            let prefix = self.rel.join("/");
            for (k, v) in attrs {
                record_value(rec, &self.want, &format!("{prefix}/@{k}"), v);
            }
        }
        self.text.clear();
    }

    /// Closes an element; returns the record it completes, if any.
    fn end_element(&mut self) -> Option<XmlRecord> {
        if self.current.is_some() {
            if self.stack == self.record_path {
                let mut rec = self.current.take()?;
                if !self.text.trim().is_empty() {
                    record_value(&mut rec, &self.want, ".", self.text.trim().to_string());
                }
                self.text.clear();
                self.stack.pop();
                return Some(rec);
            }
            let p = self.rel.join("/");
            if let Some(rec) = self.current.as_mut()
                && !self.text.is_empty()
            {
                record_value(rec, &self.want, &p, self.text.trim().to_string());
            }
            self.rel.pop();
            self.text.clear();
        }
        self.stack.pop();
        None
    }
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

/// Counts the record start tags (`<order` followed by a space, `>` or
/// `/`) from byte `offset` to the end of the file.
fn count_tags(path: &Path, name: &str, offset: u64, tag: &str) -> Result<u64, FormatError> {
    let mut f = open_at(path, name, offset)?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).map_err(|e| FormatError::Io(name.to_string(), e))?;
    let needle = format!("<{tag}");
    let n = needle.len();
    Ok(rest.windows(n + 1).filter(|w| &w[..n] == needle.as_bytes() && matches!(w[n], b' ' | b'>' | b'/' | b'\t' | b'\n' | b'\r')).count()
        as u64)
}

impl Reader for XmlReader {
    fn infer(&self, files: &[SourceFile]) -> Result<Schema, FormatError> {
        let mut names: Vec<String> = self.opts.field_list().into_iter().map(|(c, _)| c).collect();
        let mut infer: BTreeMap<String, Infer> = BTreeMap::new();
        for file in files {
            // A broken document is reported when it is read.
            scan_xml(&file.path, &file.name, &self.opts, |rec| {
                for (k, v) in rec.values {
                    if !names.contains(&k) {
                        names.push(k.clone());
                    }
                    infer.entry(k).or_default().add(&v);
                }
                Ok(())
            })?;
        }
        Ok(Schema(names.iter().map(|n| (n.clone(), infer.get(n).map_or(ColumnType::Text, Infer::result))).collect()))
    }

    fn read(&self, file: &SourceFile, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError> {
        let name = file.name.as_str();
        let types = FieldTypes::of(schema);
        let mut records = 0u64;
        let broken = scan_xml(&file.path, name, &self.opts, |rec| {
            records += 1;
            let raw = || rec.raw_fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            sink.fields(name, rec.line, &types, types.names.iter().map(|n| rec.values.get(n).map(String::as_str)), &self.nulls, &raw)
        })?;
        let Some(b) = broken else { return Ok(()) };
        let lost = count_tags(&file.path, name, b.offset, self.opts.record_tag())? + u64::from(b.in_record);
        let where_ = format!("{name}, line {} column {}: {}", b.line, b.col, b.detail);
        if !self.opts.keep_rows_before_error {
            return Err(FormatError::Invalid(format!(
                "{where_}; {records} record{} read before the error, at least {lost} more after it cannot be read. XML cannot be read past a syntax error: fix the file, or set xml.keep_rows_before_error to keep the records before it",
                if records == 1 { " was" } else { "s were" }
            )));
        }
        tracing::warn!("{where_}; keeping the {records} records before the error, {lost} after it are lost (keep_rows_before_error)");
        sink.lost += lost;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::OnBadRows;
    use super::super::testkit::{collect, file, src};
    use super::*;

    fn opts(y: &str) -> XmlOptions {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn records_fields_and_lines() {
        let f = file(
            b"<?xml version=\"1.0\"?>\n<orders>\n  <order id=\"1\">\n    <customer id=\"7\"><name>Kim &amp; Lee</name></customer>\n    <amount>10.5</amount>\n  </order>\n  <order id=\"2\">\n    <amount>oops</amount>\n    <flag/>\n  </order>\n</orders>\n",
        );
        let r = XmlReader {
            opts: opts("{record: orders/order, fields: {id: '@id', user: customer/@id, name: customer/name, amount: amount}}"),
            nulls: vec![],
        };
        let schema: Schema = serde_yaml::from_str("{id: int, user: int, name: text, amount: float}").unwrap();
        let (df, rj, _) = collect(&schema, OnBadRows::Quarantine, |s| r.read(&src(&f, "o.xml"), &schema, s));
        assert_eq!(df.height(), 1);
        assert_eq!(df.column("name").unwrap().str().unwrap().get(0), Some("Kim & Lee"));
        assert_eq!(df.column("user").unwrap().i64().unwrap().get(0), Some(7));
        let lines: Vec<i64> = rj.unwrap().column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(lines, vec![7]);
    }

    fn broken_doc() -> Vec<u8> {
        let mut s = String::from("<orders>\n");
        for i in 1..=20 {
            if i == 10 {
                s.push_str(&format!("  <order id=\"{i}\"><total>5</totl></order>\n"));
            } else {
                s.push_str(&format!("  <order id=\"{i}\"><total>5</total></order>\n"));
            }
        }
        s.push_str("</orders>\n");
        s.into_bytes()
    }

    #[test]
    fn malformed_xml_fails_with_its_position() {
        let f = file(&broken_doc());
        let r = XmlReader { opts: opts("{record: orders/order}"), nulls: vec![] };
        let schema: Schema = serde_yaml::from_str("{id: int, total: int}").unwrap();
        let mut w = |_df: polars::prelude::DataFrame| Ok(());
        let mut sink = Sink::new(&schema, OnBadRows::Quarantine, None, None, &mut w);
        let e = r.read(&src(&f, "o.xml"), &schema, &mut sink).unwrap_err().to_string();
        assert!(e.contains("o.xml, line 11 column"), "{e}");
        assert!(e.contains("9 records were read before the error, at least 11 more after it"), "{e}");
    }

    #[test]
    fn keeping_rows_before_the_error_counts_the_lost() {
        let f = file(&broken_doc());
        let r = XmlReader { opts: opts("{record: orders/order, keep_rows_before_error: true}"), nulls: vec![] };
        let schema: Schema = serde_yaml::from_str("{id: int, total: int}").unwrap();
        let mut frames = 0usize;
        let mut w = |df: polars::prelude::DataFrame| {
            frames += df.height();
            Ok(())
        };
        let mut sink = Sink::new(&schema, OnBadRows::Quarantine, None, None, &mut w);
        r.read(&src(&f, "o.xml"), &schema, &mut sink).unwrap();
        assert_eq!((sink.good, sink.lost), (9, 11));
        sink.finish().unwrap();
        assert_eq!(frames, 9);
    }
}
