//! `extract`: reads a source into a dataset.
//!
//! ```yaml
//! - id: extract_orders
//!   type: extract
//!   source: data/raw/{{ ds }}/orders_*.csv     # a path or glob, s3://bucket/key-or-glob, or http(s)://...
//!   csv: { encoding: cp949 }
//!   schema: { order_id: int, amount: decimal(12,2), ordered_at: timestamp }
//!   on_bad_rows: quarantine
//!   max_bad_ratio: 0.01
//! ```
//!
//! Files are streamed: rows go to the Parquet dataset in batches, so a
//! source of several GB never sits in memory whole.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

mod fetch;
mod read;

pub use read::RowCounts;
use read::{Output, ReadError, ReadResult};

use super::load::{Frames, LoadError, LoadTarget, Loaded, TableLoad};
use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::dag::duration::Dur;
use crate::datasets::RejectsSummary;
use crate::formats::columns::Schema;
use crate::formats::{CsvOptions, Encoding, FormatError, Lineage, OnBadRows, Reader, SourceFile, XmlOptions};
use crate::s3::S3Uri;

/// The share of bad rows an extract accepts unless `max_bad_ratio` says
/// otherwise.
pub const DEFAULT_MAX_BAD_RATIO: f64 = 0.1;

/// Reads a source (local files, S3 objects, an HTTP URL or a Postgres
/// query) into a dataset.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// What to read: a path or glob relative to the project root
    /// (`data/{{ ds }}/*.csv`), `s3://bucket/key`, `s3://bucket/prefix/`
    /// or `s3://bucket/dir/*.csv`, or an `http(s)://` URL.
    pub source: Option<String>,
    /// Instead of `source`: a query run on `conn` (a Postgres connection),
    /// streamed out with COPY.
    pub query: Option<String>,
    /// The connection for S3 sources (an s3 connection), HTTP sources (an
    /// http connection whose headers and credentials are sent) or queries
    /// (a postgres connection). Empty means none, so that one DAG can read
    /// local files or S3 depending on a variable.
    pub conn: Option<String>,
    /// csv, tsv, json (an array of objects), ndjson, parquet, xml or log.
    /// Default: from the file extension.
    pub format: Option<Format>,
    /// CSV options.
    pub csv: Option<CsvOptions>,
    /// XML options (required for XML).
    pub xml: Option<XmlOptions>,
    /// Log options (required for logs).
    pub log: Option<LogOptions>,
    /// Column names (as in the source) and types, in order. Without it types
    /// are inferred from the data (a full first pass).
    pub schema: Option<Schema>,
    /// Renames columns after reading: `{source_name: new_name}`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// What to do with bad rows: fail (default), skip, or quarantine.
    #[serde(default)]
    pub on_bad_rows: OnBadRows,
    /// Fail when there are more bad rows than this.
    pub max_bad_rows: Option<u64>,
    /// Fail when bad rows are more than this share of the rows read (0 to
    /// 1). Default 0.1 with `skip` or `quarantine`; a file whose rows are all
    /// bad fails too, unless this is 1.
    pub max_bad_ratio: Option<f64>,
    /// Text values read as null. Default: the empty string.
    pub null_values: Option<Vec<String>>,
    /// Adds a column with each row's source file or object.
    pub source_column: Option<String>,
    /// HTTP headers to send (values may come from templates: `{{ var.token }}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HTTP and S3 download timeout. Default 5m.
    pub timeout: Option<Dur>,
    /// Succeed with an empty dataset when the source matches nothing (needs
    /// `schema`). Default false: a missing source fails the task.
    #[serde(default)]
    pub allow_empty: bool,
    /// Loads the rows into a Postgres table while they are read, instead of
    /// writing a dataset: the keys of a `load` task but `input` (`conn`,
    /// `table`, `mode`, ...). One transaction, committed only once every
    /// row is read and accounted for and the bad rows are within the
    /// limits. The extract then writes no dataset; quarantined rows still
    /// go to `<task>_rejects`.
    pub into: Option<Box<LoadTarget>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Csv,
    Tsv,
    Json,
    Ndjson,
    Parquet,
    Xml,
    Log,
}

/// Log options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogOptions {
    /// A regular expression each line must match; its named groups
    /// (`(?P<user_id>\d+)`) are the columns.
    pub pattern: String,
    /// `utf-8` (default), `cp949` (also `euc-kr`) or `auto`.
    #[serde(default)]
    pub encoding: Encoding,
    /// Lines to skip at the start of each file (a header line). Default 0.
    #[serde(default)]
    pub skip_lines: u64,
}

fn format_of(source: &str) -> Option<Format> {
    let path = source.split(['?', '#']).next().unwrap_or(source).to_ascii_lowercase();
    let ext = path.rsplit('.').next()?;
    Some(match ext {
        "csv" => Format::Csv,
        "tsv" | "tab" => Format::Tsv,
        "json" => Format::Json,
        "ndjson" | "jsonl" => Format::Ndjson,
        "parquet" => Format::Parquet,
        "xml" => Format::Xml,
        "log" | "txt" => Format::Log,
        _ => return None,
    })
}

/// Where an extract reads from, resolved for one try.
enum Source {
    /// A path or glob under the project root.
    Files(String),
    S3 { uri: S3Uri, conn: crate::connections::Connection, client: aws_sdk_s3::Client },
    Http { url: String, conn: Option<crate::connections::Connection> },
    Query { sql: String, conn: crate::connections::Connection },
}

pub struct Extract {
    cfg: ExtractConfig,
    source: Source,
    /// The format's reader; None for Parquet, which polars reads itself.
    reader: Option<Box<dyn Reader>>,
    /// The table of `into`.
    into: Option<TableLoad>,
}

/// Whether a `conn` value names a connection: empty means none.
fn conn_id(c: &Option<String>) -> Option<&str> {
    c.as_deref().filter(|c| !c.trim().is_empty())
}

impl TaskType for ExtractConfig {
    const NAME: &'static str = "extract";
    type Built = Extract;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        let conn = conn_id(&self.conn);
        let source = match (&self.source, &self.query) {
            (Some(s), None) => s.as_str(),
            (None, Some(_)) => {
                match conn {
                    Some(c) => cx.check_conn("conn", c, "postgres"),
                    None => cx.error("query", "a query needs `conn`, a Postgres connection"),
                }
                if self.format.is_some_and(|f| f != Format::Csv) {
                    cx.error("format", "a query's rows are read as CSV; leave `format` out");
                }
                ""
            }
            (Some(_), Some(_)) => {
                cx.error("query", "give either `source` or `query`, not both");
                return;
            }
            (None, None) => {
                cx.error("format", "an extract needs `source` (files, S3 or HTTP) or `query` (Postgres)");
                return;
            }
        };
        let templated = crate::template::is_template(source);
        let fmt = if self.query.is_some() { Some(Format::Csv) } else { self.format.or_else(|| format_of(source)) };
        if fmt.is_none() && !templated {
            cx.error("source", format!("cannot tell the format of `{source}` from its name; set `format` (csv, tsv, json, ndjson, parquet, xml, log)"));
        }
        if source.trim().is_empty() && self.query.is_none() {
            cx.error("source", "the source is empty");
        }
        if source.starts_with("s3://") {
            match conn {
                Some(c) => cx.check_conn("conn", c, "s3"),
                None if self.conn.is_some() => {
                    cx.error("conn", format!("an s3:// source needs `conn`, an S3 connection, but `conn` is empty (source `{source}`)"))
                }
                None => cx.error("source", "an s3:// source needs `conn`, an S3 connection"),
            }
            if let Err(e) = S3Uri::parse(source) {
                cx.error("source", e);
            }
        } else if source.starts_with("http://") || source.starts_with("https://") {
            if let Some(c) = conn {
                cx.check_conn("conn", c, "http");
            }
        } else if conn.is_some() && self.query.is_none() && !templated {
            cx.warning("conn", "`conn` is only used for s3://, http(s):// sources and queries");
        }
        let txt = source.to_ascii_lowercase().ends_with(".txt") && self.format.is_none();
        match fmt {
            Some(Format::Xml) if self.xml.is_none() => cx.error("format", "XML needs `xml: {record: path/of/record}`"),
            Some(Format::Log) if self.log.is_none() && txt => cx.error(
                "source",
                "a `.txt` file is read as a log (format: log), which needs `log: {pattern: '...'}`; for delimited text set `format: csv` (with `csv: {delimiter: ...}`) or `format: tsv`",
            ),
            Some(Format::Log) if self.log.is_none() => cx.error("format", "logs need `log: {pattern: '...'}` with named groups"),
            _ => {}
        }
        if self.csv.is_some() && !matches!(fmt, Some(Format::Csv | Format::Tsv) | None) {
            cx.warning("csv", "`csv` options are ignored for this format");
        }
        if let Some(c) = &self.csv {
            if !c.delimiter.is_ascii() || !c.quote.is_ascii() {
                cx.error("csv", "the delimiter and the quote must be single ASCII characters");
            }
            if c.max_lines_per_row == 0 {
                cx.error("csv", "max_lines_per_row must be at least 1");
            }
        }
        if let Some(l) = &self.log {
            match regex::Regex::new(&l.pattern) {
                Ok(re) => {
                    let groups: Vec<&str> = re.capture_names().flatten().collect();
                    if groups.is_empty() {
                        cx.error("log", "the pattern has no named groups (`(?P<name>...)`), so it yields no columns");
                    }
                    if let Some(s) = &self.schema {
                        for (col, _) in &s.0 {
                            if !groups.contains(&col.as_str()) {
                                cx.error(
                                    "schema",
                                    format!(
                                        "column `{col}` is not a named group of the log pattern{}",
                                        crate::diag::hint(col, groups.iter().copied())
                                    ),
                                );
                            }
                        }
                    }
                }
                Err(e) => cx.error("log", format!("the pattern is not a valid regular expression: {e}")),
            }
        }
        if let Some(r) = self.max_bad_ratio
            && !(0.0..=1.0).contains(&r)
        {
            cx.error("max_bad_ratio", "max_bad_ratio is a share between 0 and 1");
        }
        if let Some(s) = &self.schema {
            for old in self.rename.keys() {
                if !s.0.iter().any(|(c, _)| c == old) {
                    cx.error("rename", format!("rename: `{old}` is not a column of the schema"));
                }
            }
        }
        if self.allow_empty && self.schema.is_none() {
            cx.error("allow_empty", "allow_empty needs `schema` (an empty source has no columns to infer)");
        }
        if let Some(into) = &self.into {
            into.validate(cx, "into.");
        }
    }

    fn connections(&self) -> Vec<String> {
        conn_id(&self.conn).map(str::to_string).into_iter().chain(self.into.as_ref().map(|t| t.conn.clone())).collect()
    }

    fn assets(&self) -> Vec<String> {
        self.into.as_ref().map(|t| t.assets()).unwrap_or_default()
    }

    fn produces(&self) -> super::Produces {
        let parquet = self.format == Some(Format::Parquet)
            || (self.format.is_none() && self.source.as_deref().and_then(format_of) == Some(Format::Parquet));
        super::Produces {
            dataset: self.into.is_none(),
            rejects: self.on_bad_rows == OnBadRows::Quarantine && !parquet,
            ..Default::default()
        }
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Extract, TaskError> {
        let conn = conn_id(&self.conn);
        let source = match (&self.source, &self.query) {
            (_, Some(q)) => {
                let id = conn.ok_or_else(|| TaskError::Config("conn: a query needs `conn`, a Postgres connection".into()))?;
                Source::Query { sql: q.clone(), conn: ctx.conn(id, "postgres")?.clone() }
            }
            (Some(s), None) if s.starts_with("s3://") => {
                let id = conn.ok_or_else(|| {
                    TaskError::Config(format!("conn: the source `{s}` is on S3, so `conn` must name an S3 connection, and it is empty"))
                })?;
                let c = ctx.conn(id, "s3")?.clone();
                let uri = S3Uri::parse(s).map_err(|e| TaskError::Config(format!("source: {e}")))?;
                let client = ctx.res.s3_client(&c)?;
                Source::S3 { uri, conn: c, client }
            }
            (Some(s), None) if s.starts_with("http://") || s.starts_with("https://") => {
                Source::Http { url: s.clone(), conn: conn.map(|id| ctx.conn(id, "http").cloned()).transpose()? }
            }
            (Some(s), None) => Source::Files(s.clone()),
            (None, None) => return Err(TaskError::Config("an extract needs `source` or `query`".into())),
        };
        let name = self.source.as_deref().unwrap_or_default();
        let format = if self.query.is_some() {
            Format::Csv
        } else {
            self.format
                .or_else(|| format_of(name))
                .ok_or_else(|| TaskError::Config(format!("source: cannot tell the format of `{name}` from its name; set `format`")))?
        };
        let nulls = self.null_values.clone().unwrap_or_else(|| vec![String::new()]);
        let reader: Option<Box<dyn Reader>> = match format {
            Format::Csv | Format::Tsv => {
                let mut opts = self.csv.clone().unwrap_or_default();
                if format == Format::Tsv && self.csv.is_none() {
                    opts.delimiter = '\t';
                }
                Some(Box::new(crate::formats::csv::CsvReader { opts, nulls }))
            }
            Format::Json | Format::Ndjson => Some(Box::new(crate::formats::json::JsonReader { array: format == Format::Json })),
            Format::Xml => {
                let opts = self.xml.clone().ok_or_else(|| TaskError::Config("xml: XML needs `xml: {record: path/of/record}`".into()))?;
                Some(Box::new(crate::formats::xml::XmlReader { opts, nulls }))
            }
            Format::Log => {
                let l = self.log.as_ref().ok_or_else(|| TaskError::Config("log: logs need `log: {pattern: '...'}`".into()))?;
                let regex = regex::Regex::new(&l.pattern).map_err(|e| TaskError::Config(format!("log.pattern: {e}")))?;
                Some(Box::new(crate::formats::log::LogReader { regex, encoding: l.encoding, skip_lines: l.skip_lines, nulls }))
            }
            Format::Parquet => None,
        };
        if format == Format::Log && name.to_ascii_lowercase().ends_with(".txt") && self.format.is_none() {
            tracing::info!("reading `{name}` as a log (format: log, from its .txt extension)");
        }
        let into = match self.into.clone() {
            Some(t) => Some(TableLoad::build(*t, ctx).await?),
            None => None,
        };
        Ok(Extract { cfg: self, source, reader, into })
    }
}

impl Run for Extract {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let files = self.fetch(ctx).await?;
        if files.is_empty() {
            let source = self.cfg.source.as_deref().unwrap_or_default();
            if self.cfg.allow_empty {
                tracing::warn!("source `{source}` matches nothing; reading no rows (allow_empty)");
            } else {
                // A file that has not arrived yet may be there on the next try.
                return Err(TaskError::Failed(format!(
                    "source `{}` matches no file or object; check the path (relative to the project root) or set allow_empty: true",
                    crate::secrets::mask(source)
                )));
            }
        }
        let this = std::sync::Arc::new(self);
        match this.into.is_some() {
            false => this.read_to_dataset(ctx, files).await,
            true => this.read_into_table(ctx, files).await,
        }
    }
}

impl Extract {
    /// Reads every file in a blocking thread.
    async fn read(self: &std::sync::Arc<Self>, files: Vec<SourceFile>, out: Output) -> Result<ReadResult, ReadError> {
        let job = self.clone();
        let warnings = super::polars_warnings::Capture::start();
        let read = tokio::task::spawn_blocking(move || job.read_all(&files, out)).await;
        warnings.log();
        read.map_err(|e| ReadError::Thread(TaskError::from_join("reading the source", e)))?
    }

    /// Reads the files into the task's dataset.
    async fn read_to_dataset(self: &std::sync::Arc<Self>, ctx: &TaskCtx, files: Vec<SourceFile>) -> Result<Outcome, TaskError> {
        let n_files = files.len();
        let tmp = ctx.dataset_tmp(&ctx.task_id)?;
        // Removes the temporary file if anything below fails or the try is cancelled.
        let guard = TmpGuard(Some(tmp.clone()));
        let r = match self.read(files, Output::Dataset(tmp)).await {
            Ok(r) => r,
            Err(ReadError::Format(e)) => return Err(format_error(e)),
            Err(ReadError::Thread(e)) => return Err(e),
            Err(ReadError::LoadStopped(_)) => return Err(TaskError::Failed("the read stopped with no load to stop it (a bug in sluice)".into())),
        };
        let (counts, rejects) = self.account(ctx, &r).await?;
        let lineage = match r.lineage.as_ref().filter(|l| !l.runs.is_empty()) {
            Some(l) => Some(write_lineage(ctx, l).await?),
            None => None,
        };
        let tmp = r.tmp.as_ref().ok_or_else(|| TaskError::Failed("the read wrote no dataset (a bug in sluice)".into()))?;
        let mut dataset = ctx.commit_dataset(tmp, &ctx.task_id, r.rows, &r.schema).await?;
        dataset.lineage = lineage;
        guard.disarm();
        let mut out = self.outcome(Outcome::default(), counts, &r, n_files);
        out.dataset = Some(dataset);
        out.rejects = rejects;
        Ok(out)
    }

    /// Reads the files and loads their rows into `into`'s table at the same
    /// time: the load's COPY takes each batch as the reader makes it, and
    /// its transaction commits only when the read has ended and its bad
    /// rows are within the limits.
    async fn read_into_table(self: &std::sync::Arc<Self>, ctx: &TaskCtx, files: Vec<SourceFile>) -> Result<Outcome, TaskError> {
        let target = self.into.as_ref().ok_or_else(|| TaskError::Config("into: missing".into()))?;
        let n_files = files.len();
        let (columns_tx, columns_rx) = tokio::sync::oneshot::channel();
        // Two batches in flight: the reader runs ahead of COPY by at most that.
        let (frames_tx, frames_rx) = std::sync::mpsc::sync_channel(2);
        let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
        let what = match &self.cfg.query {
            Some(_) => "the query's rows".to_string(),
            None => format!("the rows of `{}`", crate::secrets::mask(self.cfg.source.as_deref().unwrap_or_default())),
        };
        let load = async {
            // No columns: the read failed before it knew them, and says why.
            let columns = columns_rx.await.ok()?;
            Some(target.load(ctx, Frames::stream(columns, frames_rx, verdict_rx), &what).await)
        };
        /// How the read ended.
        enum ReadEnd {
            Done(RowCounts, Option<RejectsSummary>, Box<ReadResult>),
            Failed(TaskError),
            LoadStopped(Lineage),
        }
        let read = async {
            let end = match self.read(files, Output::Stream { columns: columns_tx, frames: frames_tx }).await {
                Ok(r) => match self.account(ctx, &r).await {
                    Ok((counts, rejects)) => ReadEnd::Done(counts, rejects, Box::new(r)),
                    Err(e) => ReadEnd::Failed(e),
                },
                Err(ReadError::Format(e)) => ReadEnd::Failed(format_error(e)),
                Err(ReadError::Thread(e)) => ReadEnd::Failed(e),
                Err(ReadError::LoadStopped(lineage)) => ReadEnd::LoadStopped(lineage),
            };
            let verdict = match &end {
                ReadEnd::Done(..) => Ok(()),
                _ => Err(TaskError::Failed(format!("reading {what} failed"))),
            };
            let _ = verdict_tx.send(verdict);
            end
        };
        let (loaded, read) = tokio::join!(load, read);
        match (loaded, read) {
            (Some(Ok(loaded @ Loaded::Rows { .. })), ReadEnd::Done(counts, rejects, r)) => {
                let mut out = self.outcome(target.outcome(&loaded), counts, &r, n_files);
                out.rejects = rejects;
                Ok(out)
            }
            // An append this interval already made: nothing read is loaded again.
            (Some(Ok(already @ Loaded::AlreadyLoaded(_))), _) => Ok(target.outcome(&already)),
            // The read's own failure comes first: the load only followed it.
            (_, ReadEnd::Failed(e)) => Err(e),
            (Some(Err(LoadError::Copy(e))), ReadEnd::LoadStopped(lineage)) => Err(target.copy_error(&what, e, Some(&lineage))),
            (Some(Err(LoadError::Copy(e))), ReadEnd::Done(_, _, r)) => Err(target.copy_error(&what, e, r.lineage.as_ref())),
            (Some(Err(LoadError::Task(e))), _) => Err(e),
            (None, _) | (Some(Ok(Loaded::Rows { .. })), ReadEnd::LoadStopped(_)) => {
                Err(TaskError::Failed("the read and the load of `into` disagree on how they ended (a bug in sluice)".into()))
            }
        }
    }

    /// Checks the bad rows against the limits and writes the quarantined
    /// ones to `<task>_rejects`.
    async fn account(&self, ctx: &TaskCtx, r: &ReadResult) -> Result<(RowCounts, Option<RejectsSummary>), TaskError> {
        let cfg = &self.cfg;
        let counts = RowCounts::of(r, cfg.on_bad_rows);
        let bad_total = counts.quarantined + counts.skipped;
        for (reason, n) in &r.bad {
            tracing::warn!(reason = %reason, count = n, "bad rows");
        }
        let max = cfg.max_bad_ratio.unwrap_or(DEFAULT_MAX_BAD_RATIO);
        if counts.read > 0 && bad_total as f64 / counts.read as f64 > max {
            let set = if cfg.max_bad_ratio.is_some() { "" } else { " (the default)" };
            return Err(TaskError::Failed(format!(
                "{bad_total} of {} rows are bad ({:.2}%), more than max_bad_ratio {}{set}: {}. Is the format right (delimiter, encoding, schema)? If this many bad rows are expected, raise max_bad_ratio",
                counts.read,
                100.0 * bad_total as f64 / counts.read as f64,
                max,
                describe_bad(&r.bad)
            )));
        }
        // Quarantine always writes its dataset, empty or not, so that
        // downstream tasks can read it every day.
        let mut rejects = None;
        if bad_total > 0 || r.rejects.is_some() {
            let mut summary = RejectsSummary { total: bad_total, by_reason: r.bad.clone(), dataset: None };
            if let Some(df) = &r.rejects {
                let mut df = df.clone();
                summary.dataset = Some(ctx.write_dataset(&format!("{}_rejects", ctx.task_id), &mut df).await?);
            }
            rejects = Some(summary);
        }
        Ok((counts, rejects))
    }

    /// The extract's note and metrics, in front of what `out` (the load of
    /// `into`, or nothing) says.
    fn outcome(&self, out: Outcome, counts: RowCounts, r: &ReadResult, n_files: usize) -> Outcome {
        let bad_total = counts.quarantined + counts.skipped;
        let from = if self.cfg.query.is_some() {
            "the query".to_string()
        } else {
            format!("{n_files} file{}", if n_files == 1 { "" } else { "s" })
        };
        let mut note = format!(
            "{} rows read from {from}: {} loaded, {} quarantined, {} skipped",
            super::thousands(counts.read),
            super::thousands(counts.loaded),
            super::thousands(counts.quarantined),
            super::thousands(counts.skipped)
        );
        if bad_total > 0 {
            note.push_str(&format!(" ({})", describe_bad(&r.bad)));
        }
        if r.lost > 0 {
            note.push_str(&format!("; {} records after malformed XML lost (keep_rows_before_error)", super::thousands(r.lost)));
        }
        if let Some(load) = out.note.as_deref().filter(|n| !n.is_empty()) {
            note.push_str(&format!("; {load}"));
        }
        let mut metrics = Outcome::note(note)
            .metric("rows", counts.loaded)
            .metric("rows_read", counts.read)
            .metric("rows_quarantined", counts.quarantined)
            .metric("rows_skipped", counts.skipped)
            .metric("files", n_files as u64)
            .metric("bad_rows", bad_total);
        if r.lost > 0 {
            metrics = metrics.metric("rows_lost", r.lost);
            metrics.warnings.push(format!("{} XML records after a syntax error were not read", r.lost));
        }
        metrics.metrics.extend(out.metrics);
        Outcome { note: metrics.note, metrics: metrics.metrics, warnings: metrics.warnings, ..out }
    }
}

/// A reader's failure as a task error: a bad row under `on_bad_rows: fail`
/// or a malformed file fails the try; the data will not change by itself,
/// but a corrected file may arrive, so it is retried by the task's rules.
fn format_error(e: FormatError) -> TaskError {
    match e {
        FormatError::Io(what, e) if e.kind() == std::io::ErrorKind::NotFound => TaskError::Failed(format!("{what}: {e}")),
        other => TaskError::Failed(other.to_string()),
    }
}

/// Writes where each dataset row came from next to the dataset, so that a
/// load failing on a row can name its source file and line.
async fn write_lineage(ctx: &TaskCtx, l: &Lineage) -> Result<String, TaskError> {
    let tmp = ctx.scratch.path()?.join(format!("{}.lineage.json", ctx.task_id));
    let text = serde_json::to_vec(l).map_err(|e| TaskError::Failed(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| TaskError::Failed(format!("cannot write {}: {e}", tmp.display())))?;
    ctx.commit_file(&tmp, &format!("{}.lineage.json", ctx.task_id)).await
}

/// Deletes a temporary file when dropped, unless disarmed.
pub struct TmpGuard(pub Option<PathBuf>);

impl TmpGuard {
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub fn describe_bad(bad: &BTreeMap<String, u64>) -> String {
    bad.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>().join(", ")
}
