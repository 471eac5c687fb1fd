//! Diagnostics: config problems with a file, a position, a key path and a
//! message a person can act on.
//!
//! Everything that checks user-written configuration (DAG files, connection
//! files) reports through [`Diagnostic`] so that `sluice dags validate` can
//! print every problem at once, sorted by position, in one format:
//!
//! ```text
//! dags/etl.yaml:12:5: error: tasks[2].retries: invalid type: string "x", expected an integer
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is. Errors make a DAG unloadable; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub pos: Pos,
    /// The key path inside the file, e.g. `tasks[2].retries`; empty for
    /// problems with the file as a whole.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}: ", self.file.display(), self.pos.line, self.pos.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects diagnostics for one file, resolving key paths to positions.
pub struct Diagnostics<'a> {
    file: PathBuf,
    spans: &'a dyn SpanLookup,
    items: Vec<Diagnostic>,
}

/// Maps a key path to the position of the key or of its value.
pub trait SpanLookup {
    /// Position of the key named by `path` (the last segment), if known.
    fn key_pos(&self, path: &str) -> Option<Pos>;
    /// Position of the value at `path`, if known.
    fn value_pos(&self, path: &str) -> Option<Pos>;
}

/// A [`SpanLookup`] that knows nothing: every problem is reported at 1:1.
pub struct NoSpans;

impl SpanLookup for NoSpans {
    fn key_pos(&self, _: &str) -> Option<Pos> {
        None
    }
    fn value_pos(&self, _: &str) -> Option<Pos> {
        None
    }
}

/// Where in the file a diagnostic points.
#[derive(Debug, Clone, Copy)]
pub enum At<'p> {
    /// At the key of this path (for unknown or misplaced keys).
    Key(&'p str),
    /// At the value of this path (for bad values).
    Value(&'p str),
    /// At an explicit position.
    Pos(Pos),
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: impl Into<PathBuf>, spans: &'a dyn SpanLookup) -> Self {
        Diagnostics { file: file.into(), spans, items: Vec::new() }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    fn resolve(&self, at: At<'_>) -> (Pos, String) {
        match at {
            At::Key(p) => (self.lookup(p, true), p.to_string()),
            At::Value(p) => (self.lookup(p, false), p.to_string()),
            At::Pos(pos) => (pos, String::new()),
        }
    }

    /// Finds the closest known position for `path`, walking up to parents
    /// when the exact path has no recorded position (e.g. a missing key is
    /// reported at its parent mapping).
    fn lookup(&self, path: &str, key: bool) -> Pos {
        let mut p = path;
        let mut first = true;
        loop {
            let found = if key && first {
                self.spans.key_pos(p).or_else(|| self.spans.value_pos(p))
            } else {
                self.spans.value_pos(p).or_else(|| self.spans.key_pos(p))
            };
            if let Some(pos) = found {
                return pos;
            }
            first = false;
            match parent_path(p) {
                Some(parent) => p = parent,
                None => return Pos::START,
            }
        }
    }

    pub fn error(&mut self, at: At<'_>, message: impl Into<String>) {
        self.push(Severity::Error, at, message.into());
    }

    pub fn warning(&mut self, at: At<'_>, message: impl Into<String>) {
        self.push(Severity::Warning, at, message.into());
    }

    pub fn push(&mut self, severity: Severity, at: At<'_>, message: String) {
        let (pos, path) = self.resolve(at);
        let d = Diagnostic { severity, file: self.file.clone(), pos, path, message };
        if !self.items.contains(&d) {
            self.items.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn into_vec(mut self) -> Vec<Diagnostic> {
        sort(&mut self.items);
        self.items
    }
}

/// Sorts diagnostics by file and position, errors before warnings at the
/// same position.
pub fn sort(items: &mut [Diagnostic]) {
    items.sort_by(|a, b| (&a.file, a.pos, a.severity, &a.path, &a.message).cmp(&(&b.file, b.pos, b.severity, &b.path, &b.message)));
}

/// `tasks[2].retries` -> `tasks[2]` -> `tasks` -> None.
pub fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Joins a key path and a child key.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// Joins a key path and a sequence index.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The closest candidate to `word`, if one is close enough to be a likely
/// typo. Used for "did you mean" hints on keys, task ids, task types,
/// connection ids and time zones.
pub fn did_you_mean<'c, I>(word: &str, candidates: I) -> Option<&'c str>
where
    I: IntoIterator<Item = &'c str>,
{
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let c_lower = c.to_ascii_lowercase();
            let score = if c_lower == lower { 1.0 } else { strsim::jaro_winkler(&lower, &c_lower) };
            let dist = strsim::levenshtein(&lower, &c_lower);
            (c, score, dist)
        })
        .filter(|(_, score, dist)| *score >= 0.85 || *dist <= 2.max(word.len() / 4))
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(c, _, _)| c)
}

/// Formats a "did you mean" suffix, or nothing.
pub fn hint<'c, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'c str>,
{
    match did_you_mean(word, candidates) {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        assert_eq!(parent_path("tasks[2].retries"), Some("tasks[2]"));
        assert_eq!(parent_path("tasks[2]"), Some("tasks"));
        assert_eq!(parent_path("tasks"), Some(""));
        assert_eq!(parent_path(""), None);
    }

    #[test]
    fn suggestions() {
        let keys = ["retries", "retry_delay", "depends_on", "trigger_rule"];
        assert_eq!(did_you_mean("retrys", keys), Some("retries"));
        assert_eq!(did_you_mean("dependson", keys), Some("depends_on"));
        assert_eq!(did_you_mean("zzz", keys), None);
        assert_eq!(did_you_mean("Asia/Seul", ["Asia/Seoul", "Europe/Paris"]), Some("Asia/Seoul"));
    }
}
