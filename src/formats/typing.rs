//! Typing a CSV's records, or an NDJSON file's lines, on several threads.
//!
//! Parsing and typing each field (integers, decimals, timestamps, text
//! columns; for NDJSON, parsing each line's JSON) costs several times what
//! splitting a file into records does. The
//! reading thread therefore only splits: it copies each record's fields
//! into a [`Chunk`], with the rows it already found bad (wrong field count,
//! a quote never closed) in their place, and hands full chunks round-robin
//! to typing threads, which also build the chunk's columns. Their [`Typed`]
//! results are taken back in the order the chunks were read and given to
//! the [`Sink`] one by one, so the rows, their lineage, the bad-row policy
//! (`fail` names the first bad line, `max_bad_rows` counts in file order)
//! and the dataset come out exactly as if one thread had typed every row
//! in turn.
//!
//! Each format says how its chunks are typed ([`Typer`]: [`Typist`] for
//! CSV, [`JsonTypist`] for NDJSON). A file that fits in one chunk is typed
//! on the reading thread. A typing
//! thread that dies (a bug) fails the read: its rows are never skipped.
//!
//! Inferring a CSV's column types (a full pass when no schema is declared)
//! is split the same way: the reading thread splits the records into
//! [`Fields`], and threads fold them into one [`Infer`] per column, merged
//! at the end ([`infer_in_parallel`]).

use std::borrow::Cow;
use std::sync::mpsc;
use std::thread::Scope;

use polars::prelude::DataFrame;

use super::columns::{Infer, Rows};
use super::{Encoding, FieldTypes, FormatError, Reason, Sink, parse_into};

/// Records per chunk.
pub const CHUNK_ROWS: usize = 8192;
/// Bytes of fields after which a chunk is handed over with fewer records.
const CHUNK_BYTES: usize = 4 << 20;
/// Chunks handed over and not yet taken back, per typing thread.
const IN_FLIGHT: usize = 2;

/// A row found bad, in its place among the others.
pub struct Bad {
    pub line: u64,
    pub reason: Reason,
    pub detail: String,
    pub raw: String,
}

/// Records split from a file, in file order, not yet typed.
#[derive(Default)]
pub struct Chunk {
    /// The records' fields, one after the other.
    data: Vec<u8>,
    /// Where each field ends in `data`: `width` entries per record.
    ends: Vec<usize>,
    entries: Vec<Entry>,
}

enum Entry {
    /// The next record's fields, read from this line.
    Record(u64),
    /// A row the reading thread rejected.
    Bad(Bad),
}

impl Chunk {
    /// Adds a record: its fields (as many as the typist's `width`) and the line it starts on.
    pub fn record<'a>(&mut self, line: u64, fields: impl Iterator<Item = &'a [u8]>) {
        for f in fields {
            self.data.extend_from_slice(f);
            self.ends.push(self.data.len());
        }
        self.entries.push(Entry::Record(line));
    }

    /// Adds a row found bad while splitting.
    pub fn bad(&mut self, line: u64, reason: Reason, detail: String, raw: String) {
        self.entries.push(Entry::Bad(Bad { line, reason, detail, raw }));
    }
}

/// A chunk typed: its good rows, and the fate of each of its rows in order.
pub struct Typed {
    /// The good rows as a frame of the sink's columns (built on the typing thread).
    pub frame: Result<DataFrame, String>,
    pub outcomes: Vec<Outcome>,
}

pub enum Outcome {
    /// A row kept, read from this line.
    Good(u64),
    Bad(Bad),
}

/// What typing threads do with the chunks of one format.
pub trait Typer: Sync {
    /// Records split by the reading thread, in file order.
    type Chunk: Default + Send;
    /// Whether a chunk should be handed over (`rows` records, or its bytes).
    fn full(chunk: &Self::Chunk, rows: usize) -> bool;
    /// An empty chunk with room for as much as `full` held (so that filling
    /// it does not grow it step by step, copying).
    fn sized_like(full: &Self::Chunk) -> Self::Chunk;
    /// Parses and types a chunk's records, in order.
    fn type_chunk(&self, chunk: Self::Chunk) -> Typed;
}

/// How the records of one CSV file are typed.
pub struct Typist {
    /// The columns read, with their types.
    pub types: FieldTypes,
    /// The record field each column is read from.
    pub index: Vec<usize>,
    /// Fields per record.
    pub width: usize,
    pub enc: Encoding,
    pub nulls: Vec<String>,
    /// The delimiter, to show a bad row's raw text.
    pub delim: String,
    /// Empty rows of the sink's columns, to build each chunk's in.
    pub rows: Rows,
    /// The value of the sink's source column, when it has one.
    pub source: Option<String>,
}

impl Typist {
    /// Decodes the fields the columns read (`bounds` gives a field's bytes
    /// in `data`) into `out`; `Err` names the first column whose field is
    /// not valid in the encoding. `text` is `data` when it is valid UTF-8 as
    /// a whole: a field is then sliced from it, if it starts and ends on
    /// character boundaries.
    fn decode<'d>(
        &self,
        text: Option<&'d str>,
        data: &'d [u8],
        bounds: impl Fn(usize) -> (usize, usize),
        out: &mut Vec<Cow<'d, str>>,
    ) -> Result<(), usize> {
        out.clear();
        for (c, &i) in self.index.iter().enumerate() {
            let (from, to) = bounds(i);
            let field = text.and_then(|t| t.get(from..to)).map(Cow::Borrowed).or_else(|| self.enc.decode(&data[from..to]));
            out.push(field.ok_or(c)?);
        }
        Ok(())
    }
}

impl Typer for Typist {
    type Chunk = Chunk;

    fn full(chunk: &Chunk, rows: usize) -> bool {
        chunk.entries.len() >= rows || chunk.data.len() >= CHUNK_BYTES
    }

    fn sized_like(full: &Chunk) -> Chunk {
        // A chunk past CHUNK_BYTES holds one long record: the next is not sized on it.
        Chunk {
            data: with_room(full.data.len().min(CHUNK_BYTES)),
            ends: with_room(full.ends.len()),
            entries: with_room(full.entries.len()),
        }
    }

    /// Decodes and types a chunk's records, as [`Sink::fields`] does one row.
    fn type_chunk(&self, chunk: Chunk) -> Typed {
        let Chunk { data, ends, entries } = chunk;
        let (w, enc) = (self.width, self.enc);
        let mut rows = self.rows.like(entries.len());
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut decoded: Vec<Cow<'_, str>> = Vec::with_capacity(self.index.len());
        // UTF-8 checked once for the whole chunk: a field cut from valid text
        // at character boundaries is valid (and one that is not is decoded,
        // and rejected, on its own below).
        let text = match enc {
            Encoding::Utf8 | Encoding::Auto => std::str::from_utf8(&data).ok(),
            Encoding::Cp949 => None,
        };
        let mut k = 0;
        for e in entries {
            let line = match e {
                Entry::Bad(b) => {
                    outcomes.push(Outcome::Bad(b));
                    continue;
                }
                Entry::Record(line) => line,
            };
            let first = k * w;
            k += 1;
            let bounds = |i: usize| (if first + i == 0 { 0 } else { ends[first + i - 1] }, ends[first + i]);
            let field = |i: usize| {
                let (from, to) = bounds(i);
                &data[from..to]
            };
            let raw = || (0..w).map(|i| enc.lossy(field(i))).collect::<Vec<_>>().join(&self.delim);
            if let Err(c) = self.decode(text, &data, bounds, &mut decoded) {
                let detail = format!("column `{}` is not valid {}", self.types.names[c], enc.name());
                outcomes.push(Outcome::Bad(Bad { line, reason: Reason::InvalidEncoding, detail, raw: raw() }));
                continue;
            }
            match parse_into(&mut rows, &self.types, decoded.iter().map(|s| Some(s.as_ref())), &self.nulls) {
                Ok(()) => {
                    if let Some(s) = &self.source {
                        rows.push_text(self.types.names.len(), s);
                    }
                    outcomes.push(Outcome::Good(line));
                }
                Err(e) => {
                    let (reason, detail) = e.reason();
                    outcomes.push(Outcome::Bad(Bad { line, reason, detail, raw: raw() }));
                }
            }
        }
        Typed { frame: rows.take().map_err(|e| e.to_string()), outcomes }
    }
}

/// The chunks of one file on their way through the typing threads. Lives
/// in a [`std::thread::scope`]; dropping it (on an error) stops the threads.
pub struct Pipeline<'scope, 'env, T: Typer> {
    scope: &'scope Scope<'scope, 'env>,
    typist: &'env T,
    source: &'env str,
    chunk_rows: usize,
    /// The chunk being filled.
    pub chunk: T::Chunk,
    /// Each typing thread's queue and results (none until the first chunk is full).
    inputs: Vec<mpsc::SyncSender<T::Chunk>>,
    outputs: Vec<mpsc::Receiver<Typed>>,
    handed: usize,
    taken: usize,
}

impl<'scope, 'env, T: Typer> Pipeline<'scope, 'env, T> {
    /// `source` names the file in the sink's lineage and rejects.
    pub fn new(scope: &'scope Scope<'scope, 'env>, typist: &'env T, source: &'env str, chunk_rows: usize) -> Self {
        Pipeline {
            scope,
            typist,
            source,
            chunk_rows: chunk_rows.max(1),
            chunk: T::Chunk::default(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            handed: 0,
            taken: 0,
        }
    }

    /// Hands the chunk over when it is full, taking back typed chunks
    /// into the sink as the queues require.
    pub fn hand_over_if_full(&mut self, sink: &mut Sink<'_>) -> Result<(), FormatError> {
        if !T::full(&self.chunk, self.chunk_rows) {
            return Ok(());
        }
        if self.inputs.is_empty() {
            self.start()?;
        }
        let threads = self.inputs.len();
        while self.handed - self.taken >= threads * IN_FLIGHT {
            self.take_back(sink)?;
        }
        let next = T::sized_like(&self.chunk);
        let chunk = std::mem::replace(&mut self.chunk, next);
        // A queue holds at most IN_FLIGHT - 1 chunks here, so this never
        // blocks; it fails only if the thread is gone.
        self.inputs[self.handed % threads].send(chunk).map_err(|_| stopped())?;
        self.handed += 1;
        Ok(())
    }

    /// Types what is left and gives every row to the sink, in order.
    pub fn finish(mut self, sink: &mut Sink<'_>) -> Result<(), FormatError> {
        let last = std::mem::take(&mut self.chunk);
        if self.inputs.is_empty() {
            // The whole file in one chunk: typed here.
            return sink.typed(self.source, self.typist.type_chunk(last));
        }
        while self.taken < self.handed {
            self.take_back(sink)?;
        }
        sink.typed(self.source, self.typist.type_chunk(last))
    }

    fn start(&mut self) -> Result<(), FormatError> {
        for _ in 0..threads() {
            let (in_tx, in_rx) = mpsc::sync_channel::<T::Chunk>(IN_FLIGHT);
            let (out_tx, out_rx) = mpsc::channel::<Typed>();
            let typist = self.typist;
            std::thread::Builder::new()
                .name("csv-typing".into())
                .spawn_scoped(self.scope, move || {
                    for chunk in in_rx {
                        // A panic (a bug) ends the thread, and with it its
                        // queues: the reading thread then fails the read.
                        let Ok(typed) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| typist.type_chunk(chunk))) else {
                            break;
                        };
                        if out_tx.send(typed).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| FormatError::Invalid(format!("cannot start a thread to type the records: {e}")))?;
            self.inputs.push(in_tx);
            self.outputs.push(out_rx);
        }
        Ok(())
    }

    /// Takes back the oldest chunk handed over, into the sink.
    fn take_back(&mut self, sink: &mut Sink<'_>) -> Result<(), FormatError> {
        let typed = self.outputs[self.taken % self.outputs.len()].recv().map_err(|_| stopped())?;
        self.taken += 1;
        sink.typed(self.source, typed)
    }
}

/// Lines of an NDJSON file, split by the reading thread, in file order.
#[derive(Default)]
pub struct Lines {
    data: Vec<u8>,
    /// Where each line ends in `data`, and its number.
    ends: Vec<(usize, u64)>,
}

impl Lines {
    pub fn push(&mut self, number: u64, line: &[u8]) {
        self.data.extend_from_slice(line);
        self.ends.push((self.data.len(), number));
    }
}

/// How the lines of one NDJSON file are typed.
pub struct JsonTypist {
    /// The columns read, with their types.
    pub schema: super::columns::Schema,
    /// Empty rows of the sink's columns, to build each chunk's in.
    pub rows: Rows,
    /// The value of the sink's source column, when it has one.
    pub source: Option<String>,
}

impl Typer for JsonTypist {
    type Chunk = Lines;

    fn full(chunk: &Lines, rows: usize) -> bool {
        chunk.ends.len() >= rows || chunk.data.len() >= CHUNK_BYTES
    }

    fn sized_like(full: &Lines) -> Lines {
        Lines { data: with_room(full.data.len().min(CHUNK_BYTES)), ends: with_room(full.ends.len()) }
    }

    /// Parses each line and types its object, as the NDJSON reader did one line at a time.
    fn type_chunk(&self, chunk: Lines) -> Typed {
        let mut rows = self.rows.like(chunk.ends.len());
        let mut outcomes = Vec::with_capacity(chunk.ends.len());
        let mut from = 0;
        for &(end, line) in &chunk.ends {
            let bytes = &chunk.data[from..end];
            from = end;
            let bad = |reason, detail, raw: &str| Outcome::Bad(Bad { line, reason, detail, raw: raw.to_string() });
            let Ok(text) = std::str::from_utf8(bytes) else {
                outcomes.push(bad(Reason::InvalidEncoding, "the line is not valid UTF-8".into(), &String::from_utf8_lossy(bytes)));
                continue;
            };
            // A blank line is not a row.
            if text.trim().is_empty() {
                continue;
            }
            outcomes.push(match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(o)) => match super::json::json_row(&o, &self.schema) {
                    Ok(mut vals) => {
                        if let Some(s) = &self.source {
                            vals.push(super::columns::Val::Text(s.clone()));
                        }
                        rows.push(vals);
                        Outcome::Good(line)
                    }
                    Err((reason, detail)) => bad(reason, detail, text),
                },
                Ok(_) => bad(Reason::InvalidJson, "the line is not a JSON object".into(), text),
                Err(e) => bad(Reason::InvalidJson, e.to_string(), text),
            });
        }
        Typed { frame: rows.take().map_err(|e| e.to_string()), outcomes }
    }
}

/// A vector with room for `n` items and an eighth more.
fn with_room<X>(n: usize) -> Vec<X> {
    Vec::with_capacity(n + n / 8)
}

/// Threads to type or infer with.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}

/// Records of any width, split from a file, for inference.
#[derive(Default)]
pub struct Fields {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// Fields per record.
    widths: Vec<usize>,
}

impl Fields {
    pub fn record<'a>(&mut self, fields: impl Iterator<Item = &'a [u8]>) {
        let before = self.ends.len();
        for f in fields {
            self.data.extend_from_slice(f);
            self.ends.push(self.data.len());
        }
        self.widths.push(self.ends.len() - before);
    }

    fn full(&self) -> bool {
        self.widths.len() >= CHUNK_ROWS || self.data.len() >= CHUNK_BYTES
    }

    /// Adds each value to the inference of its column: field `k` of a
    /// record is column `columns[k]` (or `k`, without `columns`); nulls are
    /// left out.
    fn infer(&self, infer: &mut Vec<Infer>, columns: Option<&[usize]>, enc: Encoding, nulls: &[String]) {
        let mut f = 0;
        for &w in &self.widths {
            for k in 0..w {
                let from = if f == 0 { 0 } else { self.ends[f - 1] };
                let bytes = &self.data[from..self.ends[f]];
                f += 1;
                let i = columns.map_or(k, |c| c[k]);
                if let Some(s) = enc.decode(bytes)
                    && !nulls.iter().any(|n| n == &*s)
                {
                    if infer.len() <= i {
                        infer.resize(i + 1, Infer::default());
                    }
                    infer[i].add(&s);
                }
            }
        }
    }
}

/// Infers column types over the records `split` hands over (it is given a
/// function that takes each full chunk, and ends by handing over the
/// rest), on several threads; returns what `split` returned and one
/// inference per column seen (by column index).
pub fn infer_in_parallel<R>(
    columns: Option<&[usize]>,
    enc: Encoding,
    nulls: &[String],
    split: impl FnOnce(&mut dyn FnMut(Fields) -> Result<(), FormatError>) -> Result<R, FormatError>,
) -> Result<(R, Vec<Infer>), FormatError> {
    let (tx, rx) = mpsc::sync_channel::<Fields>(threads() * IN_FLIGHT);
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for _ in 0..threads() {
            let rx = &rx;
            let worker = std::thread::Builder::new().name("csv-infer".into()).spawn_scoped(scope, move || {
                let mut infer = Vec::new();
                let mut failed = false;
                // The lock is held only to take a chunk. A panic (a bug)
                // fails the inference, but the thread takes chunks to the
                // end, so that the reading thread never waits on a queue
                // no thread empties.
                while let Ok(chunk) = { rx.lock().unwrap_or_else(|e| e.into_inner()).recv() } {
                    if !failed {
                        let fold = std::panic::AssertUnwindSafe(|| chunk.infer(&mut infer, columns, enc, nulls));
                        failed = std::panic::catch_unwind(fold).is_err();
                    }
                }
                (!failed).then_some(infer)
            });
            workers.push(worker.map_err(|e| FormatError::Invalid(format!("cannot start a thread to infer the types: {e}")))?);
        }
        let mut hand_over = |chunk: Fields| tx.send(chunk).map_err(|_| stopped());
        let split = split(&mut hand_over);
        drop(tx);
        let mut infer: Vec<Infer> = Vec::new();
        for w in workers {
            let part = w.join().ok().flatten().ok_or_else(|| {
                FormatError::Invalid("a thread inferring the column types failed (a bug in sluice); nothing was read".into())
            })?;
            if infer.len() < part.len() {
                infer.resize(part.len(), Infer::default());
            }
            for (a, b) in infer.iter_mut().zip(&part) {
                a.merge(b);
            }
        }
        Ok((split?, infer))
    })
}

/// Hands `chunk` over when it is full.
pub fn hand_over_if_full(chunk: &mut Fields, hand_over: &mut dyn FnMut(Fields) -> Result<(), FormatError>) -> Result<(), FormatError> {
    match chunk.full() {
        true => hand_over(std::mem::take(chunk)),
        false => Ok(()),
    }
}

fn stopped() -> FormatError {
    FormatError::Invalid("a thread typing the records stopped before returning them (a bug in sluice); nothing was loaded".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::OnBadRows;
    use crate::formats::columns::{ColumnType, Schema};

    // Each test makes a thread panic on purpose, as a bug in sluice would:
    // the read fails with an error, it does not hang or lose the rows.

    #[test]
    fn a_typing_thread_that_panics_fails_the_read() {
        let schema = Schema(vec![("id".into(), ColumnType::Int)]);
        let mut w = |_df: DataFrame| Ok(());
        let mut sink = Sink::new(&schema, OnBadRows::Fail, None, None, &mut w);
        // A column read from a field the records do not have.
        let typist = Typist {
            types: FieldTypes::of(&schema),
            index: vec![5],
            width: 1,
            enc: Encoding::Utf8,
            nulls: Vec::new(),
            delim: ",".into(),
            rows: sink.rows.like(0),
            source: None,
        };
        let read = std::thread::scope(|scope| {
            let mut typing = Pipeline::new(scope, &typist, "x.csv", 1);
            for line in 1..=20 {
                typing.chunk.record(line, std::iter::once(&b"1"[..]));
                typing.hand_over_if_full(&mut sink)?;
            }
            typing.finish(&mut sink)
        });
        let e = read.unwrap_err().to_string();
        assert!(e.contains("a thread typing the records stopped"), "{e}");
    }

    #[test]
    fn an_inferring_thread_that_panics_fails_the_inference() {
        // Fields of records mapped to columns through an empty list.
        let read = infer_in_parallel(Some(&[]), Encoding::Utf8, &[], |hand_over| {
            for _ in 0..20 {
                let mut chunk = Fields::default();
                chunk.record(std::iter::once(&b"1"[..]));
                hand_over(chunk)?;
            }
            Ok(())
        });
        let e = read.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("a thread inferring the column types failed"), "{e}");
    }
}
