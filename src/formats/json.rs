//! NDJSON (one object per line) and JSON arrays of objects.
//!
//! NDJSON resynchronises at every line, so a broken line costs that line.
//! A JSON array cannot resynchronise after a syntax error: the task fails
//! with the file, line and column and how many elements were read.

use std::io::Read;

use super::columns::{InferJson, Schema, Val};
use super::{FormatError, Reader, Reason, Sink, SourceFile, lines, open_text};

/// Reads NDJSON (`array: false`) or a JSON array of objects.
pub struct JsonReader {
    pub array: bool,
}

fn json_row(obj: &serde_json::Map<String, serde_json::Value>, schema: &Schema) -> Result<Vec<Val>, (Reason, String)> {
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
        for l in lines(f, name) {
            let (n, line) = l?;
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
                    Ok(vals) => sink.row(vals, name, n)?,
                    Err((reason, d)) => sink.reject(name, n, reason, d, text)?,
                },
                Ok(_) => sink.reject(name, n, Reason::InvalidJson, "the line is not a JSON object".into(), text)?,
                Err(e) => sink.reject(name, n, Reason::InvalidJson, e.to_string(), text)?,
            }
        }
        Ok(())
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
    fn a_broken_array_fails_with_its_position() {
        let a = file(b"[{\"id\": 1},\n {\"id\": 2},\n {\"id\": 3 oops},\n {\"id\": 4}]");
        let typed: Schema = serde_yaml::from_str("{id: int}").unwrap();
        let mut w = |_df: polars::prelude::DataFrame| Ok(());
        let mut sink = Sink::new(&typed, OnBadRows::Quarantine, None, None, &mut w);
        let e = JsonReader { array: true }.read(&src(&a, "a.json"), &typed, &mut sink).unwrap_err().to_string();
        assert!(e.contains("a.json, line 3 column") && e.contains("after 2 elements were read"), "{e}");
    }
}
