//! Line logs parsed with a regex: each line must match the pattern, and its
//! named groups are the columns.

use super::columns::{Infer, Schema};
use super::{Encoding, FieldTypes, FormatError, Reader, Reason, Sink, SourceFile, lines, open_text};

pub struct LogReader {
    pub regex: regex::Regex,
    pub encoding: Encoding,
    /// Lines skipped at the start of each file (not rows).
    pub skip_lines: u64,
    pub nulls: Vec<String>,
}

impl Reader for LogReader {
    fn infer(&self, files: &[SourceFile]) -> Result<Schema, FormatError> {
        let names: Vec<String> = self.regex.capture_names().flatten().map(str::to_string).collect();
        let mut infer = vec![Infer::default(); names.len()];
        for file in files {
            let enc = self.encoding.resolve(&file.path, &file.name)?;
            for l in lines(open_text(&file.path, &file.name)?, &file.name).skip(self.skip_lines as usize) {
                let (_, line) = l?;
                let Some(text) = enc.decode(&line) else { continue };
                if let Some(c) = self.regex.captures(text.trim_end_matches('\r')) {
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

    fn read(&self, file: &SourceFile, schema: &Schema, sink: &mut Sink<'_>) -> Result<(), FormatError> {
        let name = file.name.as_str();
        let types = FieldTypes::of(schema);
        let enc = self.encoding.resolve(&file.path, name)?;
        for l in lines(open_text(&file.path, name)?, name).skip(self.skip_lines as usize) {
            let (n, line) = l?;
            let Some(text) = enc.decode(&line) else {
                sink.reject(name, n, Reason::InvalidEncoding, format!("the line is not valid {}", enc.name()), &enc.lossy(&line))?;
                continue;
            };
            let text = text.trim_end_matches('\r');
            if text.is_empty() {
                continue;
            }
            let Some(c) = self.regex.captures(text) else {
                sink.reject(name, n, Reason::NoMatch, "the line does not match the pattern".into(), text)?;
                continue;
            };
            sink.fields(name, n, &types, types.names.iter().map(|g| c.name(g).map(|m| m.as_str())), &self.nulls, &|| text.to_string())?;
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
    fn logs_by_regex() {
        let f = file(b"2024-01-05 10:00:00 visit user=1\ngarbage\n2024-01-05 10:01:00 cart user=2\n");
        let r = LogReader {
            regex: regex::Regex::new(r"^(?P<ts>\S+ \S+) (?P<event>\w+) user=(?P<user_id>\d+)$").unwrap(),
            encoding: Encoding::Utf8,
            skip_lines: 0,
            nulls: vec![],
        };
        let schema = r.infer(&[src(&f, "a.log")]).unwrap();
        assert_eq!(schema.0[2].1, ColumnType::Int);
        assert_eq!(schema.0[0].1, ColumnType::Timestamp { format: None });
        let (df, _, bad) = collect(&schema, OnBadRows::Skip, |s| r.read(&src(&f, "a.log"), &schema, s));
        assert_eq!(df.height(), 2);
        assert_eq!(bad.get("line does not match the pattern"), Some(&1));
    }
}
