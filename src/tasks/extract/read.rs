//! The blocking side of an extract: the format's reader fills a sink,
//! whose batches go to a Parquet dataset or, with `into`, to a load; every
//! row is accounted for before the read returns.

use std::collections::BTreeMap;
use std::path::PathBuf;

use polars::prelude::*;

use super::{describe_bad, Extract, DEFAULT_MAX_BAD_RATIO};
use crate::datasets::DatasetWriter;
use crate::formats::{FormatError, Lineage, OnBadRows, Sink, SourceFile};

/// What the blocking read produced.
pub(super) struct ReadResult {
    /// The dataset's temporary file (none when the rows were streamed).
    pub(super) tmp: Option<PathBuf>,
    /// Rows written to the dataset.
    pub(super) rows: u64,
    pub(super) schema: polars::prelude::Schema,
    pub(super) bad: BTreeMap<String, u64>,
    /// Records known to exist but not read (malformed XML, kept before the error).
    pub(super) lost: u64,
    pub(super) rejects: Option<DataFrame>,
    pub(super) lineage: Option<Lineage>,
}

/// The four numbers of an extract: rows read = loaded + quarantined + skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCounts {
    pub read: u64,
    pub loaded: u64,
    pub quarantined: u64,
    pub skipped: u64,
}

/// Where the rows read go.
pub(super) enum Output {
    /// A temporary Parquet file, committed as the task's dataset.
    Dataset(PathBuf),
    /// Frames to a load (`into`), after their columns (an empty frame),
    /// sent as soon as they are known.
    Stream { columns: tokio::sync::oneshot::Sender<DataFrame>, frames: std::sync::mpsc::SyncSender<DataFrame> },
}

/// Where the blocking read writes.
enum Dest {
    Dataset(DatasetWriter),
    Stream { frames: std::sync::mpsc::SyncSender<DataFrame>, sent: u64 },
}

/// A read that failed, or that stopped because the load it streamed to
/// stopped taking rows (the load's error says why).
pub(super) enum ReadError {
    Format(FormatError),
    /// The reading thread itself failed (a panic, caught and recorded).
    Thread(crate::tasks::TaskError),
    /// Where the rows sent so far came from, to place the load's error.
    LoadStopped(Lineage),
}

impl From<FormatError> for ReadError {
    fn from(e: FormatError) -> ReadError {
        ReadError::Format(e)
    }
}

impl RowCounts {
    pub(super) fn of(r: &ReadResult, policy: OnBadRows) -> RowCounts {
        let bad: u64 = r.bad.values().sum();
        let (quarantined, skipped) = if policy == OnBadRows::Quarantine { (bad, 0) } else { (0, bad) };
        RowCounts { read: r.rows + bad, loaded: r.rows, quarantined, skipped }
    }
}

impl Extract {
    /// Reads every file into a temporary Parquet file or a load (blocking).
    pub(super) fn read_all(&self, files: &[SourceFile], out: Output) -> Result<ReadResult, ReadError> {
        let Some(reader) = &self.reader else { return self.read_parquet(files, out) };
        let schema = match &self.cfg.schema {
            Some(s) => s.clone(),
            None => reader.infer(files)?,
        };
        if schema.0.is_empty() {
            return Err(FormatError::Invalid("the source has no records, so no columns could be inferred; declare a `schema`".into()).into());
        }
        // Output names after renames.
        let mut out_schema = schema.clone();
        for (name, _) in &mut out_schema.0 {
            if let Some(new) = self.cfg.rename.get(name) {
                *name = new.clone();
            }
        }
        let mut probe = crate::formats::columns::Rows::new(&out_schema, 0);
        if let Some(c) = &self.cfg.source_column {
            probe.names.push(c.clone());
            probe.types.push(crate::formats::columns::ColumnType::Text);
        }
        let mut dest = match out {
            Output::Dataset(tmp) => Dest::Dataset(DatasetWriter::create(tmp, probe.polars_schema()).map_err(FormatError::Write)?),
            Output::Stream { columns, frames } => {
                // The load starts (its table checked, COPY open) while the
                // first batch is read.
                let _ = columns.send(DataFrame::empty_with_schema(&probe.polars_schema()));
                Dest::Stream { frames, sent: 0 }
            }
        };
        let streaming = matches!(dest, Dest::Stream { .. });
        let stopped = std::cell::Cell::new(false);
        let mut write = |df: DataFrame| -> Result<(), String> {
            let mut df = df;
            df.set_column_names(&probe.names).map_err(|e| e.to_string())?;
            match &mut dest {
                Dest::Dataset(writer) => writer.write(&df),
                Dest::Stream { frames, sent } => {
                    let n = df.height() as u64;
                    frames.send(df).map_err(|_| {
                        stopped.set(true);
                        "the load stopped".to_string()
                    })?;
                    *sent += n;
                    Ok(())
                }
            }
        };
        let mut sink = Sink::new(&schema, self.cfg.on_bad_rows, self.cfg.source_column.as_deref(), self.cfg.max_bad_rows, &mut write);
        let max_ratio = self.cfg.max_bad_ratio.unwrap_or(DEFAULT_MAX_BAD_RATIO);
        for file in files {
            sink.start_file();
            if let Err(e) = reader.read(file, &schema, &mut sink) {
                return Err(match stopped.get() {
                    true => ReadError::LoadStopped(std::mem::take(&mut sink.lineage)),
                    false => e.into(),
                });
            }
            let f = sink.file;
            // A file of nothing but bad rows is the wrong format, not data.
            if f.bad > 0 && f.good == 0 && max_ratio < 1.0 {
                let bad: BTreeMap<String, u64> = sink.bad.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                return Err(FormatError::Invalid(format!(
                    "every one of the {} rows of {} is bad (so far: {}): is the format right (delimiter, encoding, schema)? Set max_bad_ratio: 1 to accept it",
                    f.read,
                    file.name,
                    describe_bad(&bad)
                ))
                .into());
            }
        }
        let bad: BTreeMap<String, u64> = sink.bad.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (good, lost) = (sink.good, sink.lost);
        // The last batch goes out in `finish`: if the load stops there, the
        // rows sent so far are still placed by their lineage.
        let so_far = streaming.then(|| sink.lineage.clone());
        let (rejects, lineage) = match sink.finish() {
            Ok(r) => r,
            Err(_) if stopped.get() => return Err(ReadError::LoadStopped(so_far.unwrap_or_default())),
            Err(e) => return Err(e.into()),
        };
        let (tmp, rows, schema) = match dest {
            Dest::Dataset(writer) => {
                let (tmp, rows, schema) = writer.finish().map_err(FormatError::Write)?;
                (Some(tmp), rows, schema)
            }
            Dest::Stream { sent, .. } => (None, sent, probe.polars_schema()),
        };
        // Every row read is written, quarantined or skipped; anything else
        // is a bug that would lose data, so it fails loudly.
        let quarantined = rejects.as_ref().map_or(0, |r| r.height() as u64);
        let bad_total: u64 = bad.values().sum();
        if rows != good || (self.cfg.on_bad_rows == OnBadRows::Quarantine && quarantined != bad_total) {
            return Err(FormatError::Invalid(format!(
                "rows are unaccounted for: {good} good rows read but {rows} written, {bad_total} bad rows but {quarantined} quarantined (a bug in sluice)"
            ))
            .into());
        }
        Ok(ReadResult { tmp, rows, schema, bad, lost, rejects, lineage: Some(lineage) })
    }

    fn read_parquet(&self, files: &[SourceFile], out: Output) -> Result<ReadResult, ReadError> {
        let mut frames = Vec::new();
        for file in files {
            let name = &file.name;
            // Each file is read on its own, so that an error names it.
            let mut lf = crate::datasets::scan(&file.path).map_err(|e| FormatError::Invalid(format!("{name}: cannot read Parquet: {e}")))?;
            if let Some(s) = &self.cfg.schema {
                let exprs: Vec<Expr> = s.0.iter().map(|(c, t)| col(c.as_str()).strict_cast(t.dtype())).collect();
                lf = lf.select(exprs);
            }
            if let Some(c) = &self.cfg.source_column {
                lf = lf.with_column(lit(name.clone()).alias(c.as_str()));
            }
            let df = lf.collect().map_err(|e| FormatError::Invalid(format!("{name}: cannot read Parquet: {e}")))?;
            frames.push(df.lazy());
        }
        let lf = if frames.is_empty() {
            let s = self.cfg.schema.clone().unwrap_or_default();
            let schema: polars::prelude::Schema = s.0.iter().map(|(n, t)| Field::new(n.as_str().into(), t.dtype())).collect();
            DataFrame::empty_with_schema(&schema).lazy()
        } else {
            concat(frames, UnionArgs::default()).map_err(|e| FormatError::Invalid(e.to_string()))?
        };
        let mut df = lf.collect().map_err(|e| FormatError::Invalid(format!("reading Parquet: {e}")))?;
        for (old, new) in &self.cfg.rename {
            df.rename(old, new.as_str().into()).map_err(|e| FormatError::Invalid(e.to_string()))?;
        }
        let (rows, schema) = (df.height() as u64, df.schema().as_ref().clone());
        let tmp = match out {
            Output::Dataset(tmp) => {
                crate::datasets::write_frame(&tmp, &mut df).map_err(FormatError::Write)?;
                Some(tmp)
            }
            Output::Stream { columns, frames } => {
                let _ = columns.send(df.clear());
                if frames.send(df).is_err() {
                    return Err(ReadError::LoadStopped(Lineage::default()));
                }
                None
            }
        };
        Ok(ReadResult {
            tmp,
            rows,
            schema,
            bad: BTreeMap::new(),
            lost: 0,
            rejects: None,
            lineage: None,
        })
    }
}
