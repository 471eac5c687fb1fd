//! `report`: runs a report definition's queries and renders a PDF.
//!
//! ```yaml
//! - id: weekly_report
//!   type: report
//!   conn: warehouse
//!   definition: reports/weekly_kpi.yaml
//!   lang: ko
//!   output: "reports/out/weekly_kpi_{{ ds | strftime('%G-W%V') }}.pdf"
//! ```
//!
//! The period is the run's data interval widened to whole days in the DAG's
//! time zone (a Monday 09:00 weekly schedule reports Monday to Sunday). The
//! PDF goes to the run's staging area (`artifacts.pdf`, for `email` to
//! attach) and to a local copy (`artifacts.local`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::report::def::{Kind, Lang, ReportDef, Source};
use crate::report::{Period, Row, clv};

/// Renders a PDF report from SQL queries against a Postgres connection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// The Postgres connection the queries run on.
    pub conn: String,
    /// The report definition, relative to the project root (`reports/weekly_kpi.yaml`).
    pub definition: String,
    /// ko or en (default: the definition's); may be a template such as
    /// `"{{ params.lang }}"`.
    pub lang: Option<String>,
    /// Where the local copy of the PDF goes, relative to the project root.
    /// Default `reports/out/<dag_id>_<ds>.pdf`.
    pub output: Option<String>,
    /// Where to write the numbers behind the PDF, relative to the project
    /// root: a JSON file with the rows each section draws (by section title),
    /// for checking a number or reusing it. Default: none.
    pub data_output: Option<String>,
}

pub struct Report {
    def: ReportDef,
    lang: Lang,
    /// Each section's SQL (None for `source: pipeline`).
    queries: Vec<Option<String>>,
    coverage: Option<String>,
    pool: sqlx::PgPool,
    output: PathBuf,
    data_output: Option<PathBuf>,
    definition: String,
}

fn load_def(text: &str, path: &str) -> Result<ReportDef, String> {
    serde_yaml::from_str(text).map_err(|e| format!("{path}: {}", crate::dag::parse::friendly_serde_message(&e.to_string())))
}

impl TaskType for ReportConfig {
    const NAME: &'static str = "report";
    type Built = Report;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        cx.check_conn("conn", &self.conn, "postgres");
        if let Some(l) = &self.lang
            && !crate::template::is_template(l)
            && let Err(e) = parse_lang(l)
        {
            cx.error("lang", e);
        }
        if crate::template::is_template(&self.definition) {
            return;
        }
        let Ok(text) = cx.env.read_file(&self.definition) else {
            cx.check_file("definition", &self.definition);
            return;
        };
        let def = match load_def(&text, &self.definition) {
            Ok(def) => def,
            Err(e) => return cx.error("definition", e),
        };
        if let Some(c) = &def.coverage {
            cx.check_file("definition", c);
        }
        for (i, s) in def.sections.iter().enumerate() {
            let need = |what: &str| format!("{}: sections[{i}] ({:?}) needs `{what}`", self.definition, s.kind).to_lowercase();
            match (&s.query, s.source) {
                (Some(q), Source::Warehouse) => {
                    cx.check_file("definition", q);
                }
                (None, Source::Warehouse) => cx.error("definition", need("query")),
                (Some(_), Source::Pipeline) => {
                    cx.error("definition", format!("{}: sections[{i}] reads the pipeline's runs; it has no `query`", self.definition))
                }
                (None, Source::Pipeline) => {}
            }
            if s.model.is_some() && s.kind != Kind::Table {
                cx.error("definition", format!("{}: sections[{i}]: a model's rows are drawn as a table", self.definition));
            }
            if s.model.is_some() && s.source == Source::Pipeline {
                cx.error("definition", format!("{}: sections[{i}]: a model reads a query's rows; the pipeline's runs are not one", self.definition));
            }
            match s.kind {
                Kind::Cards if s.metrics.is_empty() => cx.error("definition", need("metrics")),
                Kind::Bars | Kind::Lines | Kind::Hbars | Kind::Funnel if s.series.is_empty() || s.x.is_none() => {
                    cx.error("definition", need("x and series"))
                }
                Kind::Table if s.columns.is_empty() => cx.error("definition", need("columns")),
                Kind::Heatmap if s.row_labels.is_empty() || s.col_labels.is_empty() => {
                    cx.error("definition", need("row_labels and col_labels"))
                }
                _ => {}
            }
        }
    }

    fn connections(&self) -> Vec<String> {
        vec![self.conn.clone()]
    }

    fn produces(&self) -> super::Produces {
        super::Produces { artifacts: true, ..Default::default() }
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Report, TaskError> {
        let text = std::fs::read_to_string(ctx.project_path(&self.definition))
            .map_err(|e| TaskError::permanent(format!("cannot read {}: {e}", self.definition)))?;
        let def = load_def(&text, &self.definition).map_err(TaskError::Config)?;
        let queries =
            def.sections.iter().map(|s| s.query.as_deref().map(|q| ctx.read_template_file(q)).transpose()).collect::<Result<Vec<_>, _>>()?;
        let coverage = def.coverage.as_deref().map(|q| ctx.read_template_file(q)).transpose()?;
        let pool = ctx.pg(&self.conn).await?;
        let ds = ctx.logical_date.with_timezone(&ctx.tz).format("%Y-%m-%d").to_string();
        let output = ctx.project_path(self.output.as_deref().unwrap_or(&format!("reports/out/{}_{ds}.pdf", ctx.dag_id)));
        let lang = match &self.lang {
            Some(l) => parse_lang(l).map_err(TaskError::Config)?,
            None => def.lang,
        };
        let data_output = self.data_output.as_deref().map(|p| ctx.project_path(p));
        Ok(Report { lang, def, queries, coverage, pool, output, data_output, definition: self.definition })
    }
}

/// Writes a file through a `.part` file beside it, so that a reader never
/// sees half of it.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), TaskError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TaskError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    std::fs::write(&part, bytes)
        .and_then(|_| std::fs::rename(&part, path))
        .map_err(|e| TaskError::Failed(format!("cannot write {}: {e}", path.display())))
}

fn parse_lang(s: &str) -> Result<Lang, String> {
    match s.trim() {
        "ko" => Ok(Lang::Ko),
        "en" => Ok(Lang::En),
        other => Err(format!("lang `{other}`: expected ko or en")),
    }
}

/// The run's interval widened to whole local days.
pub fn period_of(ctx: &TaskCtx) -> Period {
    let local = |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&ctx.tz).date_naive();
    let start_day = local(ctx.interval.start);
    let mut end_day = local(ctx.interval.end);
    if end_day <= start_day {
        end_day = start_day.succ_opt().unwrap_or(start_day);
    }
    let midnight = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).expect("valid");
    Period { start: midnight(start_day), end: midnight(end_day), tz: ctx.tz }
}

/// The pipeline's runs in the period, one row per DAG, without the report's
/// own run.
async fn pipeline_rows(ctx: &TaskCtx, p: &Period) -> Result<Vec<Row>, TaskError> {
    let Some(view) = ctx.res.pipeline.get() else {
        tracing::warn!("no state database here: the pipeline section is empty");
        return Ok(Vec::new());
    };
    let utc = |t: chrono::NaiveDateTime| crate::dag::schedule::make_aware(t, p.tz);
    let own = (!ctx.test_mode).then_some(ctx.run_id);
    let stats = view.dag_run_stats(utc(p.start), utc(p.end), own).await.map_err(TaskError::transient)?;
    Ok(stats
        .into_iter()
        .map(|s| match serde_json::to_value(s) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => Row::new(),
        })
        .collect())
}

/// A read-only transaction (a report never changes the warehouse) with the
/// definition's settings. An error names the setting it came from, or
/// else `what` the transaction is for.
async fn begin_read_only(
    pool: &sqlx::PgPool,
    settings: Option<&BTreeMap<String, String>>,
    what: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, TaskError> {
    let mut tx = pool.begin().await.map_err(|e| TaskError::sql(what, &e))?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await.map_err(|e| TaskError::sql(what, &e))?;
    for (name, value) in settings.into_iter().flatten() {
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(|e| TaskError::sql(format!("report setting {name} = {value}"), &e))?;
    }
    Ok(tx)
}

/// Runs one query in a read-only transaction of its own, with the
/// definition's settings; its rows as JSON objects.
async fn fetch(
    pool: &sqlx::PgPool,
    sql: &str,
    p: &Period,
    what: &str,
    settings: Option<&BTreeMap<String, String>>,
) -> Result<Vec<Row>, TaskError> {
    let err = |e: sqlx::Error| TaskError::sql(what, &e);
    let mut tx = begin_read_only(pool, settings, what).await?;
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({}) AS q", sql.trim().trim_end_matches(';'));
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(wrapped)).bind(p.start).bind(p.end).fetch_all(&mut *tx).await.map_err(err)?;
    tx.rollback().await.map_err(err)?;
    // Parsed off the async threads; a per-customer query's rows (a lifetime
    // value model reads hundreds of thousands) on every core.
    let parsed = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = rows.len().div_ceil(threads).max(10_000);
        std::thread::scope(|scope| {
            let parts: Vec<_> = rows.chunks(chunk).map(|part| scope.spawn(move || parse_rows(part))).collect();
            let mut all = Vec::with_capacity(rows.len());
            for p in parts {
                all.extend(p.join().unwrap_or_else(|_| Err("parsing the rows panicked".into()))?);
            }
            Ok::<_, String>(all)
        })
    })
    .await
    .map_err(|e| TaskError::from_join("parsing the rows", e))?;
    parsed.map_err(|e| TaskError::Failed(format!("{what}: {e}")))
}

/// Runs a lifetime value model's query (as [`fetch`]) and reads its
/// customers as typed columns: the model's five numbers as `float8` (NULL
/// as 0) and each `by` column as text.
async fn fetch_customers(
    pool: &sqlx::PgPool,
    sql: &str,
    p: &Period,
    what: &str,
    settings: Option<&BTreeMap<String, String>>,
    by: &[String],
) -> Result<clv::Customers, TaskError> {
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let keys: Vec<String> = by.iter().map(|c| format!("coalesce(q.{}::text, '-')", quote(c))).collect();
    let wrapped = format!(
        "SELECT coalesce(q.frequency::float8, 0), coalesce(q.recency::float8, 0), coalesce(q.age::float8, 0), \
                coalesce(q.monetary::float8, 0), coalesce(q.historical::float8, 0), ARRAY[{}]::text[] FROM ({}) AS q",
        keys.join(", "),
        sql.trim().trim_end_matches(';')
    );
    let what = format!("{what} (a lifetime value model reads frequency, recency, age, monetary, historical and {})", by.join(", "));
    let err = |e: sqlx::Error| TaskError::sql(&what, &e);
    let mut tx = begin_read_only(pool, settings, &what).await?;
    type Customer = (f64, f64, f64, f64, f64, Vec<String>);
    let rows: Vec<Customer> =
        sqlx::query_as(sqlx::AssertSqlSafe(wrapped)).bind(p.start).bind(p.end).fetch_all(&mut *tx).await.map_err(err)?;
    tx.rollback().await.map_err(err)?;
    let mut c = clv::Customers {
        summaries: Vec::with_capacity(rows.len()),
        historical: Vec::with_capacity(rows.len()),
        keys: by.iter().map(|b| (b.clone(), Vec::with_capacity(rows.len()))).collect(),
    };
    for (frequency, recency, age, monetary, historical, values) in rows {
        c.summaries.push(clv::Summary { frequency, recency, age, monetary });
        c.historical.push(historical);
        for (b, v) in by.iter().zip(values) {
            if let Some(k) = c.keys.get_mut(b) {
                k.push(v);
            }
        }
    }
    Ok(c)
}

/// How many of a report's queries run at once when its definition does not
/// say: the cores here (a warehouse is often on this machine, or one like
/// it), at least two (the longest query, and the others in turn) and at
/// most the connection pool's size.
fn default_parallel_queries() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, crate::resources::PG_POOL_SIZE as usize)
}

fn parse_rows(rows: &[String]) -> Result<Vec<Row>, String> {
    rows.iter().map(|r| serde_json::from_str::<Row>(r).map_err(|e| e.to_string())).collect()
}

/// One execution of a report's query.
enum Fetched {
    Rows(Arc<Vec<Row>>),
    /// A lifetime value model's customers, and the models fitted on them.
    Customers(Arc<clv::Customers>, Arc<clv::Fitted>),
}

/// One distinct query of a report, however many sections draw it.
struct Query<'a> {
    sql: &'a str,
    what: &'a str,
    /// For models: the columns their sections group by.
    by: Option<Vec<String>>,
}

/// What a report's queries returned for a period.
struct Computed {
    period: Period,
    /// Rows of each section, in section order.
    data: Vec<Vec<Row>>,
    /// Days of the period without data.
    missing: Vec<String>,
}

impl Report {
    /// Runs one query; a lifetime value query's models are fitted as soon
    /// as its customers are in, while the other queries run (the fit takes
    /// CPU for a while: off the async threads).
    async fn run_query(&self, q: &Query<'_>, period: &Period) -> Result<Fetched, TaskError> {
        let settings = Some(&self.def.settings);
        let Some(by) = &q.by else {
            return fetch(&self.pool, q.sql, period, q.what, settings).await.map(|r| Fetched::Rows(Arc::new(r)));
        };
        let customers = Arc::new(fetch_customers(&self.pool, q.sql, period, q.what, settings, by).await?);
        let started = Instant::now();
        let c = customers.clone();
        let fitted = tokio::task::spawn_blocking(move || clv::fit(&c))
            .await
            .map_err(|e| TaskError::from_join("fitting the lifetime value model", e))?
            .map_err(|e| TaskError::Failed(format!("{}: the lifetime value model: {e}", q.what)))?;
        tracing::debug!(query = q.what, elapsed = ?started.elapsed(), "lifetime value model fitted");
        Ok(Fetched::Customers(customers, Arc::new(fitted)))
    }

    /// Runs the queries (read-only) and the models.
    async fn compute(&self, ctx: &TaskCtx) -> Result<Computed, TaskError> {
        let period = period_of(ctx);
        // Sections drawing the same query (a bars and a lines chart of one
        // day-by-day query) share one execution; so do the lifetime value
        // models of one query, which read its customers as typed columns.
        let mut distinct: Vec<Query> = Vec::new();
        let mut which: Vec<Option<usize>> = Vec::with_capacity(self.queries.len());
        for (s, sql) in self.def.sections.iter().zip(&self.queries) {
            let Some(sql) = sql else {
                which.push(None);
                continue;
            };
            let model = s.model.as_ref().map(|m| m.by.clone());
            let i = match distinct.iter().position(|d| d.sql == sql.as_str() && d.by.is_some() == model.is_some()) {
                Some(i) => i,
                None => {
                    let what = s.query.as_deref().unwrap_or("query");
                    distinct.push(Query { sql, what, by: model.as_ref().map(|_| Vec::new()) });
                    distinct.len() - 1
                }
            };
            if let (Some(by), Some(column)) = (&mut distinct[i].by, model)
                && !by.contains(&column)
            {
                by.push(column);
            }
            which.push(Some(i));
        }
        let settings = Some(&self.def.settings);
        // The models' queries first (their customers are fitted after
        // them), then the others in section order, a few at a time: on a
        // server with few cores, the longest query then keeps a core while
        // the others take turns on the rest.
        let mut order: Vec<usize> = (0..distinct.len()).collect();
        order.sort_by_key(|&i| distinct[i].by.is_none());
        let at_once = self.def.parallel_queries.map_or_else(default_parallel_queries, std::num::NonZeroUsize::get);
        let distinct = &distinct;
        let queries = order.into_iter().map(|i| async move { self.run_query(&distinct[i], &period).await.map(|f| (i, f)) });
        let fetches = futures::stream::iter(queries).buffer_unordered(at_once).try_collect::<Vec<_>>();
        let coverage = async {
            match &self.coverage {
                Some(sql) => fetch(&self.pool, sql, &period, "coverage", settings).await.map(Some),
                None => Ok(None),
            }
        };
        // The pipeline's runs come from the state store, alongside.
        let pipeline = async {
            match self.def.sections.iter().any(|s| s.source == Source::Pipeline) {
                true => pipeline_rows(ctx, &period).await,
                false => Ok(Vec::new()),
            }
        };
        let ((mut results, coverage), pipeline) = futures::future::try_join(futures::future::try_join(fetches, coverage), pipeline).await?;
        results.sort_unstable_by_key(|(i, _)| *i);
        let results: Vec<Fetched> = results.into_iter().map(|(_, f)| f).collect();
        // Each query's models were fitted once (above), however many
        // sections group them.
        let mut data: Vec<Vec<Row>> = Vec::with_capacity(which.len());
        for (s, w) in self.def.sections.iter().zip(&which) {
            let failed = |e: String| TaskError::Failed(format!("{}: the lifetime value model: {e}", s.query.as_deref().unwrap_or("a section")));
            let rows = match (w.map(|i| &results[i]), &s.model) {
                (Some(Fetched::Customers(customers, fitted)), Some(m)) => {
                    let (customers, fitted, m) = (customers.clone(), fitted.clone(), m.clone());
                    let started = Instant::now();
                    // The predictions: off the async threads too.
                    let grouped = tokio::task::spawn_blocking(move || clv::summarize(&customers, &fitted, &m))
                        .await
                        .map_err(|e| TaskError::from_join("predicting customer lifetime values", e))?
                        .map_err(failed)?;
                    tracing::debug!(query = s.query.as_deref().unwrap_or(""), elapsed = ?started.elapsed(), "lifetime value model");
                    grouped
                }
                (Some(Fetched::Rows(rows)), None) => rows.as_ref().clone(),
                // (Sections are matched with their kind of query above.)
                (Some(_), _) => return Err(TaskError::Failed(format!("{}: read as the wrong kind of query", s.query.as_deref().unwrap_or("a section")))),
                // (A model on the pipeline's runs is refused at validation.)
                (None, _) => pipeline.clone(),
            };
            data.push(rows);
        }
        // Days of the period without data: the report says the period is
        // incomplete rather than show the missing days as a fall.
        let missing: Vec<String> = coverage
            .unwrap_or_default()
            .iter()
            .filter(|r| !r.get("loaded").and_then(|v| v.as_bool()).unwrap_or(true))
            .map(|r| r.get("day").and_then(|v| v.as_str()).unwrap_or_default().to_string())
            .collect();
        if !missing.is_empty() {
            tracing::warn!("the period is incomplete: no data for {}", missing.join(", "));
        }
        Ok(Computed { period, data, missing })
    }

    /// The report as SVG pages, nothing written: what the web dashboard
    /// shows, drawn by the same code as the PDF.
    async fn svg_pages(&self, ctx: &TaskCtx) -> Result<Vec<String>, TaskError> {
        let Computed { period, data, missing } = self.compute(ctx).await?;
        let fonts = crate::report::find_fonts(&ctx.res.project_root).map_err(TaskError::Failed)?;
        let (def, lang) = (self.def.clone(), self.lang);
        tokio::task::spawn_blocking(move || {
            crate::report::render_svg(&crate::report::Input {
                def: &def,
                lang,
                period,
                generated: chrono::Utc::now(),
                data: &data,
                fonts: &fonts,
                missing_days: &missing,
            })
        })
        .await
        .map_err(|e| TaskError::from_join("rendering the report", e))?
        .map_err(|e| TaskError::Failed(format!("rendering {}: {e}", self.definition)))
    }
}

/// A report task's pages for the run `ctx` describes, as SVG, without
/// writing anything (None for a task of another type): the web dashboard.
pub async fn preview(config: super::TaskConfig, ctx: &TaskCtx) -> Result<Option<Vec<String>>, TaskError> {
    match config {
        super::TaskConfig::Report(c) => Ok(Some(c.build(ctx).await?.svg_pages(ctx).await?)),
        _ => Ok(None),
    }
}

impl Run for Report {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let started = std::time::Instant::now();
        let Computed { period, data, missing } = self.compute(ctx).await?;
        let queried = started.elapsed();
        let fonts = crate::report::find_fonts(&ctx.res.project_root).map_err(TaskError::Failed)?;
        let def = self.def.clone();
        let lang = self.lang;
        let d2 = data.clone();
        let missing2 = missing.clone();
        let (pdf, pages) = tokio::task::spawn_blocking(move || {
            crate::report::render(&crate::report::Input {
                def: &def,
                lang,
                period,
                generated: chrono::Utc::now(),
                data: &d2,
                fonts: &fonts,
                missing_days: &missing2,
            })
        })
        .await
        .map_err(|e| TaskError::from_join("rendering the report", e))?
        .map_err(|e| TaskError::Failed(format!("rendering {}: {e}", self.definition)))?;

        // The staging copy, for downstream tasks; then the local copy.
        let tmp = ctx.scratch.path()?.join(format!("{}.pdf", ctx.task_id));
        std::fs::write(&tmp, &pdf).map_err(|e| TaskError::Failed(format!("{}: {e}", tmp.display())))?;
        let uri = ctx.commit_file(&tmp, &format!("{}.pdf", ctx.task_id)).await?;
        write_atomic(&self.output, &pdf)?;
        tracing::info!(bytes = pdf.len(), "report written to {} (queries {:?}, total {:?})", self.output.display(), queried, started.elapsed());

        // Headline numbers for email templates: by key in
        // upstream.TASK.metrics.headline.KEY, and in the report's order in
        // upstream.TASK.metrics.kpis (a list).
        let mut headline = serde_json::Map::new();
        let mut kpis = Vec::new();
        for (s, rows) in self.def.sections.iter().zip(&data) {
            if s.kind != Kind::Cards {
                continue;
            }
            for m in &s.metrics {
                let row = rows.iter().find(|r| r.get("metric").and_then(|v| v.as_str()) == Some(m.key.as_str()));
                let value = row.and_then(|r| r.get("value")).cloned().unwrap_or(serde_json::Value::Null);
                let previous = row.and_then(|r| r.get("previous")).cloned().unwrap_or(serde_json::Value::Null);
                let num = |v: &serde_json::Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
                let (change, _) = match missing.is_empty() {
                    true => crate::report::def::fmt::change(num(&value), num(&previous), m.format),
                    false => ("–".to_string(), 0),
                };
                let kpi = serde_json::json!({
                    "key": m.key,
                    "label": m.label.get(lang),
                    "value": value,
                    "display": crate::report::def::fmt::value(&value, m.format, lang),
                    "change": change,
                });
                kpis.push(kpi.clone());
                headline.insert(m.key.clone(), kpi);
            }
        }
        let mut artifacts = BTreeMap::new();
        if let Some(path) = &self.data_output {
            let sections: Vec<serde_json::Value> = self
                .def
                .sections
                .iter()
                .zip(&data)
                .map(|(s, rows)| {
                    serde_json::json!({
                        "title": s.title.as_ref().map(|t| t.get(lang)),
                        "kind": s.kind,
                        "rows": rows,
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "period": { "start": period.start, "end": period.end },
                "incomplete_days": missing,
                "sections": sections,
            });
            write_atomic(path, serde_json::to_string_pretty(&doc).unwrap_or_default().as_bytes())?;
            artifacts.insert("data".to_string(), path.display().to_string());
        }
        artifacts.insert("pdf".to_string(), uri);
        artifacts.insert("local".to_string(), self.output.display().to_string());
        let mut out = Outcome::note(format!("{} pages, {} KB, {}", pages.max(1), pdf.len() / 1024, self.output.display()));
        out.artifacts = artifacts;
        out.metrics.insert("headline".into(), serde_json::Value::Object(headline));
        out.metrics.insert("kpis".into(), serde_json::Value::Array(kpis));
        out.metrics.insert("pages".into(), serde_json::Value::from(pages.max(1)));
        out.metrics.insert("bytes".into(), serde_json::Value::from(pdf.len()));
        out.metrics.insert("incomplete_days".into(), serde_json::json!(missing));
        out.metrics.insert(
            "period".into(),
            serde_json::json!({
                "start": period.start.format("%Y-%m-%d").to_string(),
                "end": (period.end - chrono::Duration::days(1)).format("%Y-%m-%d").to_string(),
            }),
        );
        Ok(out)
    }
}
