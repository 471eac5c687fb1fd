//! NDJSON (one object per line) and JSON arrays of objects.
//!
//! NDJSON resynchronises at every line, so a broken line costs that line.
//! A JSON array cannot resynchronise after a syntax error: the task fails
//! with the file, line and column and how many elements were read.

use std::io::Read;

use super::columns::{InferJson, Schema, Val};
use super::typing::{CHUNK_ROWS, JsonTypist, Pipeline};
use super::{FormatError, Reader, Reason, Sink, SourceFile, lines, open_text};

/// Reads NDJSON (`array: false`) or a JSON array of objects.
pub struct JsonReader {
    pub array: bool,
}

pub(super) fn json_row(obj: &serde_json::Map<String, serde_json::Value>, schema: &Schema) -> Result<Vec<Val>, (Reason, String)> {
    schema
        .0
        .iter()
        .map(|(name, t)| match obj.get(name) {
            None => Ok(Val::Null),
            Some(serde_json::Value::String(s)) if s.contains('\0') => {
                Err((Reason::NulByte, format!("field `{name}` holds a NUL byte (\\u0000), which PostgreSQL cannot store")))
            }
            Some(v) => t.from_json(v).map_err(|e| (Reason::Unparsable, format!("field `{name}`: {e}"))),
        })
        .collect()
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
        read: u64,
    }
    impl<'de> Visitor<'de> for &mut V<'_> {
        type Value = ();
        fn expecting(&self, fm: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            fm.write_str("a JSON array of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(v) = seq.next_element::<serde_json::Value>()? {
                self.read += 1;
                if let Err(e) = (self.f)(self.read, v) {
                    self.err = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut v = V { f, err: None, read: 0 };
    let mut de = serde_json::Deserializer::from_reader(r);
    let res = de.deserialize_seq(&mut v).and_then(|_| de.end());
    if let Some(e) = v.err {
        return Err(e);
    }
    res.map_err(|e| {
        FormatError::Invalid(format!(
            "{name}, line {} column {}: the JSON is malformed ({}) after {} element{} were read; a JSON array cannot be read past a syntax error, so nothing of the file is loaded",
            e.line(),
            e.column(),
            crate::connections::strip_location(&e.to_string()),
            v.read,
            if v.read == 1 { "" } else { "s" }
        ))
    })
}

impl Reader for JsonReader {
    fn infer(&self, files: &[SourceFile]) -> Result<Schema, FormatError> {
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
        for file in files {
            let f = open_text(&file.path, &file.name)?;
            if self.array {
                for_each_array_item(f, &file.name, &mut |_, v| {
                    if let serde_json::Value::Object(o) = v {
                        visit(&o);
                    }
                    Ok(())
                })?;
            } else {
                for l in lines(f, &file.name) {
                    let (_, line) = l?;
                    if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(&line) {
                        visit(&o);
                    }
                }
            }
        }
        Ok(Schema(names.into_iter().zip(infer.iter().map(InferJson::result)).collect()))
    }

    fn read(&self, file: &SourceFile, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError> {
        let name = file.name.as_str();
        let f = open_text(&file.path, name)?;
        if self.array {
            // Elements are located by their position in the array.
            return for_each_array_item(f, name, &mut |i, v| match v {
                serde_json::Value::Object(o) => match json_row(&o, schema) {
                    Ok(vals) => sink.row(vals, name, i),
                    Err((reason, d)) => {
                        sink.reject(name, i, reason, format!("element {i}: {d}"), &serde_json::Value::Object(o).to_string())
                    }
                },
                other => sink.reject(name, i, Reason::InvalidJson, format!("element {i} is not an object"), &other.to_string()),
            });
        }
        self.read_lines(f, name, schema, sink, CHUNK_ROWS)
    }
}

impl JsonReader {
    /// Reads NDJSON lines, parsed and typed on every core in chunks of
    /// `chunk_rows` lines ([`super::typing`]).
    fn read_lines(
        &self,
        f: std::io::BufReader<std::fs::File>,
        name: &str,
        schema: &Schema,
        sink: &mut Sink<'_>,
        chunk_rows: usize,
    ) -> Result<(), FormatError> {
        let typist =
            JsonTypist { schema: schema.clone(), rows: sink.rows.like(0), source: sink.has_source_column().then(|| name.to_string()) };
        std::thread::scope(|scope| {
            let mut typing = Pipeline::new(scope, &typist, name, chunk_rows);
            for l in lines(f, name) {
                let (n, line) = match l {
                    Ok(l) => l,
                    Err(e) => {
                        // The lines before it first (as the CSV reader does).
                        typing.finish(sink)?;
                        return Err(e);
                    }
                };
                typing.chunk.push(n, &line);
                typing.hand_over_if_full(sink)?;
            }
            typing.finish(sink)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::OnBadRows;
    use super::super::columns::ColumnType;
    use super::super::testkit::{collect, file, src};
    use super::*;

    #[test]
    fn ndjson_and_json_arrays() {
        let f = file(b"\xEF\xBB\xBF{\"id\": 1, \"name\": \"a\"}\n{\"id\": \"x\"}\nnot json\n{\"id\": 3}\n");
        let nd = JsonReader { array: false };
        let schema = nd.infer(&[src(&f, "u.ndjson")]).unwrap();
        assert_eq!(schema.0[0], ("id".into(), ColumnType::Text));
        let typed: Schema = serde_yaml::from_str("{id: int, name: text}").unwrap();
        let (df, r, _) = collect(&typed, OnBadRows::Quarantine, |s| nd.read(&src(&f, "u.ndjson"), &typed, s));
        // The BOM does not cost the first record.
        assert_eq!(df.height(), 2);
        let lines: Vec<i64> = r.unwrap().column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(lines, vec![2, 3]);
        let a = file(b"\xEF\xBB\xBF[{\"id\": 1}, {\"id\": 2}, 5]");
        let arr = JsonReader { array: true };
        let (df, r, _) = collect(&typed, OnBadRows::Quarantine, |s| arr.read(&src(&a, "a.json"), &typed, s));
        assert_eq!(df.height(), 2);
        assert_eq!(r.unwrap().height(), 1);
    }

    #[test]
    fn ndjson_typed_in_chunks_on_threads_changes_nothing() {
        // 2,000 lines with a bad line of every kind and blank lines.
        let mut b: Vec<u8> = Vec::new();
        for i in 1..=2000u32 {
            match i {
                _ if i % 97 == 0 => b.extend_from_slice(b"\xff\xfe not utf-8\n"),
                _ if i % 89 == 0 => b.extend_from_slice(format!("{{\"id\": \"x{i}\"}}\n").as_bytes()),
                _ if i % 83 == 0 => b.extend_from_slice(b"[1, 2]\n"),
                _ if i % 79 == 0 => b.extend_from_slice(b"{\"id\": \n"),
                _ if i % 73 == 0 => b.extend_from_slice(format!("{{\"id\": {i}, \"name\": \"a\\u0000b\"}}\n").as_bytes()),
                _ if i % 71 == 0 => b.extend_from_slice(b"   \n"),
                _ => b.extend_from_slice(format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n").as_bytes()),
            }
        }
        let f = file(&b);
        let typed: Schema = serde_yaml::from_str("{id: int, name: text}").unwrap();
        let read = |chunk_rows: usize| {
            let mut frames = Vec::new();
            let mut w = |df: polars::prelude::DataFrame| {
                frames.push(df);
                Ok(())
            };
            let mut sink = Sink::new(&typed, OnBadRows::Quarantine, Some("source"), None, &mut w);
            let reader = JsonReader { array: false };
            let fh = open_text(f.path(), "e.ndjson").unwrap();
            reader.read_lines(fh, "e.ndjson", &typed, &mut sink, chunk_rows).unwrap();
            let bad: Vec<(String, u64)> = sink.bad.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let (rejects, lineage) = sink.finish().unwrap();
            let df = frames.into_iter().reduce(|mut a, b| {
                a.vstack_mut(&b).unwrap();
                a
            });
            (df.unwrap(), rejects.unwrap(), bad, lineage)
        };
        let (df, rejects, bad, lineage) = read(usize::MAX);
        let ids: Vec<i64> = df.column("id").unwrap().i64().unwrap().into_no_null_iter().collect();
        let expected: Vec<i64> = (1..=2000).filter(|i| [97, 89, 83, 79, 73, 71].iter().all(|m| i % m != 0)).collect();
        assert!(ids == expected, "{} ids, {} expected", ids.len(), expected.len());
        let names = df.column("name").unwrap().str().unwrap();
        assert!(ids.iter().enumerate().all(|(row, id)| names.get(row) == Some(format!("n{id}").as_str())));
        assert_eq!(df.column("source").unwrap().str().unwrap().get(0), Some("e.ndjson"));
        let reasons: Vec<&str> = bad.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(reasons, ["NUL byte", "invalid JSON", "invalid encoding", "unparsable value"]);
        assert_eq!(rejects.height() as u64 + ids.len() as u64, 2000 - 2000 / 71);
        assert_eq!(lineage.locate(0), Some(("e.ndjson", 1)));
        for chunk_rows in [1, 2, 3, 64, 1000] {
            let (d, r, b, l) = read(chunk_rows);
            assert!(d.equals_missing(&df), "rows, chunks of {chunk_rows}");
            assert!(r.equals_missing(&rejects), "rejects, chunks of {chunk_rows}");
            assert_eq!((b, l), (bad.clone(), lineage.clone()), "chunks of {chunk_rows}");
        }
    }

    #[test]
    fn a_broken_array_fails_with_its_position() {
        let a = file(b"[{\"id\": 1},\n {\"id\": 2},\n {\"id\": 3 oops},\n {\"id\": 4}]");
        let typed: Schema = serde_yaml::from_str("{id: int}").unwrap();
        let mut w = |_df: polars::prelude::DataFrame| Ok(());
        let mut sink = Sink::new(&typed, OnBadRows::Quarantine, None, None, &mut w);
        let e = JsonReader { array: true }.read(&src(&a, "a.json"), &typed, &mut sink).unwrap_err().to_string();
        assert!(e.contains("a.json, line 3 column") && e.contains("after 2 elements were read"), "{e}");
    }
}
