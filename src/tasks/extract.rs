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

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::dag::duration::Dur;
use crate::datasets::{DatasetWriter, RejectsSummary};
use crate::formats::columns::Schema;
use crate::formats::{self, CsvOptions, Encoding, FormatError, OnBadRows, Sink, XmlOptions};
use crate::s3::S3Uri;

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
    /// (a postgres connection).
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
    /// Fail when bad rows are more than this share of all rows (0 to 1).
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
    /// `utf-8` (default) or `cp949`.
    #[serde(default)]
    pub encoding: Encoding,
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

pub struct Extract {
    cfg: ExtractConfig,
    format: Format,
    conn: Option<crate::connections::Connection>,
    s3: Option<aws_sdk_s3::Client>,
    regex: Option<regex::Regex>,
}

impl TaskType for ExtractConfig {
    const NAME: &'static str = "extract";
    type Built = Extract;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        let source = match (&self.source, &self.query) {
            (Some(s), None) => s.as_str(),
            (None, Some(_)) => {
                match &self.conn {
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
        let fmt = if self.query.is_some() { Some(Format::Csv) } else { self.format.or_else(|| format_of(source)) };
        if fmt.is_none() && !crate::template::is_template(source) {
            cx.error("source", format!("cannot tell the format of `{source}` from its name; set `format` (csv, tsv, json, ndjson, parquet, xml, log)"));
        }
        if source.starts_with("s3://") {
            match &self.conn {
                Some(c) => cx.check_conn("conn", c, "s3"),
                None => cx.error("source", "an s3:// source needs `conn`, an S3 connection"),
            }
            if let Err(e) = S3Uri::parse(source) {
                cx.error("source", e);
            }
        } else if source.starts_with("http://") || source.starts_with("https://") {
            if let Some(c) = &self.conn {
                cx.check_conn("conn", c, "http");
            }
        } else if self.conn.is_some() && self.query.is_none() && !crate::template::is_template(source) {
            cx.warning("conn", "`conn` is only used for s3://, http(s):// sources and queries");
        }
        match fmt {
            Some(Format::Xml) if self.xml.is_none() => cx.error("format", "XML needs `xml: {record: path/of/record}`"),
            Some(Format::Log) if self.log.is_none() => cx.error("format", "logs need `log: {pattern: '...'}` with named groups"),
            _ => {}
        }
        if self.csv.is_some() && !matches!(fmt, Some(Format::Csv | Format::Tsv) | None) {
            cx.warning("csv", "`csv` options are ignored for this format");
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
                                cx.error("schema", format!("column `{col}` is not a named group of the log pattern{}", crate::diag::hint(col, groups.iter().copied())));
                            }
                        }
                    }
                }
                Err(e) => cx.error("log", format!("the pattern is not a valid regular expression: {e}")),
            }
        }
        if let Some(r) = self.max_bad_ratio
            && !(0.0..=1.0).contains(&r) {
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
    }

    fn connections(&self) -> Vec<String> {
        self.conn.iter().cloned().collect()
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Extract, TaskError> {
        let source = self.source.clone().unwrap_or_default();
        let format = if self.query.is_some() {
            Format::Csv
        } else {
            self.format
                .or_else(|| format_of(&source))
                .ok_or_else(|| TaskError::Config(format!("cannot tell the format of `{source}`; set `format`")))?
        };
        let (conn, s3) = match self.conn.as_ref().filter(|c| !c.is_empty()) {
            Some(id) if self.query.is_some() => (Some(ctx.conn(id, "postgres")?.clone()), None),
            Some(id) if source.starts_with("s3://") => {
                let c = ctx.conn(id, "s3")?.clone();
                let client = ctx.res.s3_client(&c)?;
                (Some(c), Some(client))
            }
            Some(id) if source.starts_with("http://") || source.starts_with("https://") => (Some(ctx.conn(id, "http")?.clone()), None),
            _ => (None, None),
        };
        let regex = match &self.log {
            Some(l) => Some(regex::Regex::new(&l.pattern).map_err(|e| TaskError::Config(format!("log.pattern: {e}")))?),
            None => None,
        };
        Ok(Extract { cfg: self, format, conn, s3, regex })
    }
}

/// A fetched source file: its local path and the name it is reported by.
type Fetched = Vec<(PathBuf, String)>;

impl Extract {
    async fn fetch(&self, ctx: &TaskCtx) -> Result<Fetched, TaskError> {
        if let Some(q) = &self.cfg.query {
            return self.fetch_query(ctx, q).await;
        }
        let src = self.cfg.source.as_deref().unwrap_or_default();
        if src.starts_with("s3://") {
            self.fetch_s3(ctx).await
        } else if src.starts_with("http://") || src.starts_with("https://") {
            self.fetch_http(ctx).await
        } else {
            let pattern = ctx.project_path(src);
            let text = pattern.to_string_lossy().into_owned();
            let mut files: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
                glob::glob(&text)
                    .map_err(|e| TaskError::Config(format!("source `{src}` is not a valid glob: {e}")))?
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect()
            } else if pattern.is_file() {
                vec![pattern.clone()]
            } else {
                Vec::new()
            };
            files.sort();
            Ok(files
                .into_iter()
                .map(|p| {
                    let name = p.strip_prefix(&ctx.res.project_root).unwrap_or(&p).display().to_string();
                    (p, name)
                })
                .collect())
        }
    }

    /// Streams a query's rows out of Postgres as CSV into a scratch file.
    async fn fetch_query(&self, ctx: &TaskCtx, query: &str) -> Result<Fetched, TaskError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let conn = self.conn.as_ref().expect("built with a connection");
        let pool = ctx.res.pg_pool(conn).await?;
        let mut db = pool.acquire().await?;
        let q = query.trim().trim_end_matches(';');
        let mut stream = db
            .copy_out_raw(&format!("COPY ({q}) TO STDOUT WITH (FORMAT csv, HEADER true)"))
            .await
            .map_err(|e| TaskError::Failed(format!("the query failed: {}", crate::state::describe_sqlx(&e))))?;
        let local = ctx.scratch.path().join("query.csv");
        let mut file = tokio::fs::File::create(&local).await.map_err(|e| TaskError::Failed(format!("{}: {e}", local.display())))?;
        let mut n = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| TaskError::Failed(format!("the query failed: {}", crate::state::describe_sqlx(&e))))?;
            n += chunk.len();
            file.write_all(&chunk).await.map_err(|e| TaskError::Failed(e.to_string()))?;
        }
        file.flush().await.map_err(|e| TaskError::Failed(e.to_string()))?;
        tracing::info!(bytes = n, "query read from `{}`", conn.id);
        Ok(vec![(local, format!("query on {}", conn.id))])
    }

    async fn fetch_s3(&self, ctx: &TaskCtx) -> Result<Fetched, TaskError> {
        let client = self.s3.as_ref().expect("built with an S3 client");
        let uri = S3Uri::parse(self.cfg.source.as_deref().unwrap_or_default()).map_err(TaskError::Config)?;
        let conn = self.conn.as_ref().expect("built with a connection");
        let fail = |e: crate::s3::S3Error| {
            TaskError::Failed(format!("S3 connection `{}` ({}): {e}", conn.id, crate::s3::endpoint_of(conn)))
        };
        let keys: Vec<String> = if let Some((prefix, pat)) = crate::s3::glob_parts(&uri.key) {
            let listed = crate::s3::list(client, &S3Uri { bucket: uri.bucket.clone(), key: prefix }).await.map_err(fail)?;
            listed.into_iter().map(|o| o.key).filter(|k| pat.matches(k)).collect()
        } else if uri.key.is_empty() || uri.key.ends_with('/') {
            crate::s3::list(client, &uri).await.map_err(fail)?.into_iter().map(|o| o.key).filter(|k| !k.ends_with('/')).collect()
        } else if crate::s3::exists(client, &uri).await.map_err(fail)? {
            vec![uri.key.clone()]
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let obj = S3Uri { bucket: uri.bucket.clone(), key: key.clone() };
            let local = ctx.scratch.path().join(format!("src-{i}-{}", key.rsplit('/').next().unwrap_or("object")));
            let n = tokio::time::timeout(self.timeout(), crate::s3::download(client, &obj, &local))
                .await
                .map_err(|_| TaskError::Failed(format!("downloading {obj} timed out")))?
                .map_err(fail)?;
            tracing::info!(bytes = n, "downloaded {obj}");
            out.push((local, obj.to_string()));
        }
        Ok(out)
    }

    fn timeout(&self) -> std::time::Duration {
        self.cfg.timeout.map_or(std::time::Duration::from_secs(300), |d| d.0)
    }

    async fn fetch_http(&self, ctx: &TaskCtx) -> Result<Fetched, TaskError> {
        use tokio::io::AsyncWriteExt;
        let url = self.cfg.source.as_deref().unwrap_or_default();
        let shown = crate::secrets::mask(url);
        let mut req = ctx.res.http().get(url).timeout(self.timeout());
        if let Some(c) = &self.conn {
            for (k, v) in &c.headers {
                req = req.header(k, v);
            }
            if let (Some(user), Some(pw)) = (&c.login, c.password()) {
                req = req.basic_auth(user, Some(pw));
            }
        }
        for (k, v) in &self.cfg.headers {
            crate::secrets::register(v);
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| TaskError::Failed(format!("GET {shown}: {}", crate::secrets::mask(&error_chain(&e)))))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
            return Err(TaskError::Failed(format!("GET {shown}: HTTP {status}: {}", crate::secrets::mask(&body))));
        }
        let local = ctx.scratch.path().join("download");
        let mut file = tokio::fs::File::create(&local).await.map_err(|e| TaskError::Failed(format!("{}: {e}", local.display())))?;
        let mut resp = resp;
        let mut n = 0usize;
        while let Some(chunk) = resp.chunk().await.map_err(|e| TaskError::Failed(format!("GET {shown}: {}", error_chain(&e))))? {
            n += chunk.len();
            file.write_all(&chunk).await.map_err(|e| TaskError::Failed(e.to_string()))?;
        }
        file.flush().await.map_err(|e| TaskError::Failed(e.to_string()))?;
        tracing::info!(bytes = n, "downloaded {shown}");
        Ok(vec![(local, shown)])
    }
}

/// An error and its sources, one after the other.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// What the blocking read produced.
struct ReadResult {
    tmp: PathBuf,
    rows: u64,
    schema: polars::prelude::Schema,
    bad: BTreeMap<String, u64>,
    rejects: Option<DataFrame>,
}

impl Run for Extract {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let files = self.fetch(ctx).await?;
        if files.is_empty() {
            let source = self.cfg.source.as_deref().unwrap_or_default();
            if self.cfg.allow_empty {
                tracing::warn!("source `{source}` matches nothing; writing an empty dataset (allow_empty)");
            } else {
                return Err(TaskError::Failed(format!(
                    "source `{}` matches no file or object; check the path (relative to the project root) or set allow_empty: true",
                    crate::secrets::mask(source)
                )));
            }
        }
        let n_files = files.len();
        let tmp = ctx.dataset_tmp(&ctx.task_id);
        // Removes the temporary file if anything below fails or the try is cancelled.
        let guard = TmpGuard(Some(tmp.clone()));
        let this = std::sync::Arc::new(self);
        let job = this.clone();
        let read = tokio::task::spawn_blocking(move || job.read_all(&files, tmp))
            .await
            .map_err(|e| TaskError::Failed(format!("reading panicked: {e}")))?;
        let r = read.map_err(|e| TaskError::Failed(e.to_string()))?;
        let cfg = &this.cfg;

        let bad_total: u64 = r.bad.values().sum();
        let total = r.rows + bad_total;
        for (reason, n) in &r.bad {
            tracing::warn!(reason = %reason, count = n, "bad rows");
        }
        if let Some(max) = cfg.max_bad_ratio
            && total > 0 && bad_total as f64 / total as f64 > max {
                return Err(TaskError::Failed(format!(
                    "{bad_total} of {total} rows are bad ({:.2}%), more than max_bad_ratio {:.2}%: {}",
                    100.0 * bad_total as f64 / total as f64,
                    100.0 * max,
                    describe_bad(&r.bad)
                )));
            }
        let dataset = ctx.commit_dataset(&r.tmp, &ctx.task_id, r.rows, &r.schema).await?;
        guard.disarm();
        // Quarantine always writes its dataset, empty or not, so that
        // downstream tasks can read it every day.
        let mut rejects = None;
        if bad_total > 0 || r.rejects.is_some() {
            let mut summary = RejectsSummary { total: bad_total, by_reason: r.bad.clone(), dataset: None };
            if let Some(mut df) = r.rejects {
                summary.dataset = Some(ctx.write_dataset(&format!("{}_rejects", ctx.task_id), &mut df).await?);
            }
            rejects = Some(summary);
        }
        let mut note = if cfg.query.is_some() {
            format!("{} rows from the query", super::thousands(r.rows))
        } else {
            format!("{} rows from {n_files} file{}", super::thousands(r.rows), if n_files == 1 { "" } else { "s" })
        };
        if bad_total > 0 {
            let verb = if cfg.on_bad_rows == OnBadRows::Quarantine { "quarantined" } else { "skipped" };
            note.push_str(&format!("; {} {verb} ({})", super::thousands(bad_total), describe_bad(&r.bad)));
        }
        let mut out = Outcome::note(note).metric("rows", r.rows).metric("files", n_files as u64).metric("bad_rows", bad_total);
        out.dataset = Some(dataset);
        out.rejects = rejects;
        Ok(out)
    }
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

impl Extract {
    fn nulls(&self) -> Vec<String> {
        self.cfg.null_values.clone().unwrap_or_else(|| vec![String::new()])
    }

    fn csv_options(&self) -> CsvOptions {
        let mut o = self.cfg.csv.clone().unwrap_or_default();
        if self.format == Format::Tsv && self.cfg.csv.is_none() {
            o.delimiter = '\t';
        }
        o
    }

    /// Reads every file into a temporary Parquet file (blocking).
    fn read_all(&self, files: &Fetched, tmp: PathBuf) -> Result<ReadResult, FormatError> {
        if self.format == Format::Parquet {
            return self.read_parquet(files, tmp);
        }
        let nulls = self.nulls();
        let schema = match &self.cfg.schema {
            Some(s) => s.clone(),
            None => match self.format {
                Format::Csv | Format::Tsv => formats::infer_csv(files, &self.csv_options(), &nulls)?,
                Format::Json => formats::infer_json(files, true)?,
                Format::Ndjson => formats::infer_json(files, false)?,
                Format::Xml => formats::infer_xml(files, self.cfg.xml.as_ref().expect("validated"))?,
                Format::Log => formats::infer_log(
                    files,
                    self.regex.as_ref().expect("built"),
                    self.cfg.log.as_ref().map_or(Encoding::Utf8, |l| l.encoding),
                )?,
                Format::Parquet => unreachable!(),
            },
        };
        if schema.0.is_empty() {
            return Err(FormatError::Invalid(
                "the source has no records, so no columns could be inferred; declare a `schema`".into(),
            ));
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
        let mut writer = DatasetWriter::create(tmp, probe.polars_schema()).map_err(FormatError::Write)?;
        let mut write = |df: DataFrame| -> Result<(), String> {
            let mut df = df;
            df.set_column_names(&probe.names).map_err(|e| e.to_string())?;
            writer.write(&df)
        };
        let mut sink = Sink::new(&schema, self.cfg.on_bad_rows, self.cfg.source_column.as_deref(), self.cfg.max_bad_rows, &mut write);
        for (path, name) in files {
            match self.format {
                Format::Csv | Format::Tsv => formats::read_csv(path, name, &self.csv_options(), &schema, &nulls, &mut sink)?,
                Format::Json => formats::read_json_array(path, name, &schema, &mut sink)?,
                Format::Ndjson => formats::read_ndjson(path, name, &schema, &mut sink)?,
                Format::Xml => formats::read_xml(path, name, self.cfg.xml.as_ref().expect("validated"), &schema, &nulls, &mut sink)?,
                Format::Log => formats::read_log(
                    path,
                    name,
                    self.regex.as_ref().expect("built"),
                    self.cfg.log.as_ref().map_or(Encoding::Utf8, |l| l.encoding),
                    &schema,
                    &nulls,
                    &mut sink,
                )?,
                Format::Parquet => unreachable!(),
            }
        }
        let bad: BTreeMap<String, u64> = sink.bad.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let rejects = sink.finish()?;
        let (tmp, rows, schema) = writer.finish().map_err(FormatError::Write)?;
        Ok(ReadResult { tmp, rows, schema, bad, rejects })
    }

    fn read_parquet(&self, files: &Fetched, tmp: PathBuf) -> Result<ReadResult, FormatError> {
        let mut frames = Vec::new();
        for (path, name) in files {
            let mut lf = crate::datasets::scan(path).map_err(|e| FormatError::Invalid(format!("{name}: {e}")))?;
            if let Some(s) = &self.cfg.schema {
                let exprs: Vec<Expr> = s.0.iter().map(|(c, t)| col(c.as_str()).strict_cast(t.dtype())).collect();
                lf = lf.select(exprs);
            }
            if let Some(c) = &self.cfg.source_column {
                lf = lf.with_column(lit(name.clone()).alias(c.as_str()));
            }
            frames.push(lf);
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
        crate::datasets::write_frame(&tmp, &mut df).map_err(FormatError::Write)?;
        Ok(ReadResult { tmp, rows: df.height() as u64, schema: df.schema().as_ref().clone(), bad: BTreeMap::new(), rejects: None })
    }
}
