//! Positions of keys and values in a YAML document, by key path.
//!
//! serde tells us *which* key path is wrong (through `serde_path_to_error`)
//! but not *where* it is in the file, because `serde_yaml::Value` carries no
//! positions. This module replays the document through yaml-rust2's marked
//! event parser and records, for every key path (`tasks[2].retries`), the
//! position of the key and of its value. Both parsers read the same text, so
//! for any document that serde_yaml accepts the paths agree.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diag::{Pos, SpanLookup};

#[derive(Debug, Default)]
pub struct Spans {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
    /// Keys that appear twice in one mapping: (path, position of the
    /// second), in file order.
    pub duplicates: Vec<(String, Pos)>,
}

impl Spans {
    /// Indexes `source`. A document that does not parse yields the positions
    /// seen up to the error (the syntax error itself is reported by serde_yaml).
    pub fn index(source: &str) -> Spans {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(source);
        // Errors are ignored on purpose: see the doc comment above.
        let _ = parser.load(&mut rx, false);
        rx.spans
    }
}

impl SpanLookup for Spans {
    fn key_pos(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied()
    }
    fn value_pos(&self, path: &str) -> Option<Pos> {
        self.values.get(path).copied()
    }
}

enum Frame {
    /// `start` is the mapping's own mark, used only when it has no keys:
    /// yaml-rust2 marks block mappings at their first `:`, so a mapping's
    /// position is taken from its first key.
    Map {
        path: String,
        key: Option<String>,
        start: Option<Pos>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    spans: Spans,
    depth_in_doc: usize,
}

fn pos(m: Marker) -> Pos {
    // yaml-rust2 lines are 1-based and columns 0-based.
    Pos { line: m.line(), col: m.col() + 1 }
}

impl Receiver {
    /// The path a new value starts at, or None when the value is a key.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key, .. }) => key.take().map(|k| crate::diag::join(path, &k)),
        }
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => self.depth_in_doc += 1,
            Event::Scalar(text, ..) => {
                // A scalar in a mapping with no pending key is a key.
                if let Some(Frame::Map { path, key, start }) = self.stack.last_mut()
                    && key.is_none()
                {
                    if start.take().is_some() {
                        self.spans.values.entry(path.clone()).or_insert(pos(mark));
                    }
                    let full = crate::diag::join(path, &text);
                    match self.spans.keys.entry(full) {
                        std::collections::hash_map::Entry::Occupied(e) => self.spans.duplicates.push((e.key().clone(), pos(mark))),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(pos(mark));
                        }
                    }
                    *key = Some(text);
                    return;
                }
                if let Some(p) = self.next_value_path() {
                    self.spans.values.entry(p).or_insert(pos(mark));
                }
            }
            Event::Alias(_) => {
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut()
                    && key.is_none()
                {
                    *key = Some("*alias".into());
                    return;
                }
                if let Some(p) = self.next_value_path() {
                    self.spans.values.entry(p).or_insert(pos(mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                // A complex key (a mapping used as a key) gets a synthetic path.
                let path = match self.stack.last_mut() {
                    Some(Frame::Map { key: key @ None, path, .. }) => {
                        *key = Some("?complex".into());
                        format!("{path}.?complex")
                    }
                    _ => self.next_value_path().unwrap_or_default(),
                };
                if is_map {
                    self.stack.push(Frame::Map { path, key: None, start: Some(pos(mark)) });
                } else {
                    self.spans.values.entry(path.clone()).or_insert(pos(mark));
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Frame::Map { path, start: Some(p), .. }) = self.stack.pop() {
                    self.spans.values.entry(path).or_insert(p);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_values() {
        let src = "dag_id: x\ntasks:\n  - id: a\n    type: shell\n    retries: three\n  - id: b\n    depends_on: [a, c]\n";
        let s = Spans::index(src);
        assert_eq!(s.key_pos("dag_id"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(s.value_pos("dag_id"), Some(Pos { line: 1, col: 9 }));
        assert_eq!(s.value_pos("tasks[0]"), Some(Pos { line: 3, col: 5 }));
        assert_eq!(s.key_pos("tasks[0].retries"), Some(Pos { line: 5, col: 5 }));
        assert_eq!(s.value_pos("tasks[0].retries"), Some(Pos { line: 5, col: 14 }));
        assert_eq!(s.value_pos("tasks[1].depends_on[1]"), Some(Pos { line: 7, col: 21 }));
    }
}
