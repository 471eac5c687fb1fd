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

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::report::def::{Kind, Lang, ReportDef, Source};
use crate::report::{Period, Row};

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
}

pub struct Report {
    def: ReportDef,
    lang: Lang,
    queries: Vec<String>,
    pool: sqlx::PgPool,
    output: PathBuf,
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
                && let Err(e) = parse_lang(l) {
                    cx.error("lang", e);
                }
        if crate::template::is_template(&self.definition) {
            return;
        }
        let Ok(text) = cx.env.read_file(&self.definition) else {
            cx.check_file("definition", &self.definition);
            return;
        };
        match load_def(&text, &self.definition) {
            Ok(def) => {
                for (i, s) in def.sections.iter().enumerate() {
                    cx.check_file("definition", &s.query);
                    let need = |what: &str| format!("{}: sections[{i}] ({:?}) needs `{what}`", self.definition, s.kind).to_lowercase();
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
            Err(e) => cx.error("definition", e),
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
            .map_err(|e| TaskError::Failed(format!("cannot read {}: {e}", self.definition)))?;
        let def = load_def(&text, &self.definition).map_err(TaskError::Config)?;
        let queries = def.sections.iter().map(|s| ctx.read_template_file(&s.query)).collect::<Result<Vec<_>, _>>()?;
        let pool = ctx.pg(&self.conn).await?;
        let ds = ctx.logical_date.with_timezone(&ctx.tz).format("%Y-%m-%d").to_string();
        let output = ctx.project_path(self.output.as_deref().unwrap_or(&format!("reports/out/{}_{ds}.pdf", ctx.dag_id)));
        let lang = match &self.lang {
            Some(l) => parse_lang(l).map_err(TaskError::Config)?,
            None => def.lang,
        };
        Ok(Report { lang, def, queries, pool, output, definition: self.definition })
    }
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

/// Runs one query in a read-only transaction of its own (a report never
/// changes the warehouse), with the definition's settings.
async fn fetch(
    pool: &sqlx::PgPool,
    sql: &str,
    p: &Period,
    what: &str,
    settings: Option<&BTreeMap<String, String>>,
) -> Result<Vec<Row>, TaskError> {
    let err = |e: sqlx::Error| TaskError::Failed(format!("{what}: {}", crate::state::describe_sqlx(&e)));
    let mut tx = pool.begin().await.map_err(err)?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await.map_err(err)?;
    for (name, value) in settings.into_iter().flatten() {
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(|e| TaskError::Failed(format!("report setting {name} = {value}: {}", crate::state::describe_sqlx(&e))))?;
    }
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({}) AS q", sql.trim().trim_end_matches(';'));
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(wrapped)).bind(p.start).bind(p.end).fetch_all(&mut *tx).await.map_err(err)?;
    tx.rollback().await.map_err(err)?;
    rows.iter()
        .map(|r| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(r).map_err(|e| TaskError::Failed(format!("{what}: {e}"))))
        .collect()
}

impl Run for Report {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let period = period_of(ctx);
        let started = std::time::Instant::now();
        let state_pool = ctx.res.state.get().map(|s| s.pool().clone());
        // Sections drawing the same query (a bars and a lines chart of one
        // day-by-day query) share one execution.
        let mut distinct: Vec<(Source, &str, &str)> = Vec::new();
        let mut which = Vec::with_capacity(self.queries.len());
        for (s, sql) in self.def.sections.iter().zip(&self.queries) {
            let key = (s.source, sql.as_str(), s.query.as_str());
            which.push(match distinct.iter().position(|d| (d.0, d.1) == (key.0, key.1)) {
                Some(i) => i,
                None => {
                    distinct.push(key);
                    distinct.len() - 1
                }
            });
        }
        let settings = &self.def.settings;
        let mut futures = Vec::new();
        for &(source, sql, what) in &distinct {
            let pool = match source {
                Source::Warehouse => self.pool.clone(),
                Source::State => state_pool.clone().ok_or_else(|| {
                    TaskError::Failed(format!("section `{what}` reads the state store, which this process has no connection to"))
                })?,
            };
            // The state store's queries are sluice's own: no user settings.
            let settings = if source == Source::State { None } else { Some(settings) };
            futures.push(async move { fetch(&pool, sql, &period, what, settings).await });
        }
        let results: Vec<Vec<Row>> = futures::future::try_join_all(futures).await?;
        let data: Vec<Vec<Row>> = which.iter().map(|&i| results[i].clone()).collect();
        let queried = started.elapsed();
        let fonts = crate::report::find_fonts(&ctx.res.project_root).map_err(TaskError::Failed)?;
        let def = self.def.clone();
        let lang = self.lang;
        let d2 = data.clone();
        let (pdf, pages) = tokio::task::spawn_blocking(move || {
            crate::report::render(&crate::report::Input { def: &def, lang, period, generated: chrono::Utc::now(), data: &d2, fonts: &fonts })
        })
        .await
        .map_err(|e| TaskError::from_join("rendering the report", e))?
        .map_err(|e| TaskError::Failed(format!("rendering {}: {e}", self.definition)))?;

        // The staging copy, for downstream tasks; then the local copy.
        let tmp = ctx.scratch.path().join(format!("{}.pdf", ctx.task_id));
        std::fs::write(&tmp, &pdf).map_err(|e| TaskError::Failed(format!("{}: {e}", tmp.display())))?;
        let uri = ctx.commit_file(&tmp, &format!("{}.pdf", ctx.task_id)).await?;
        if let Some(dir) = self.output.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TaskError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        let part = self.output.with_extension("pdf.part");
        std::fs::write(&part, &pdf).and_then(|_| std::fs::rename(&part, &self.output)).map_err(|e| {
            TaskError::Failed(format!("cannot write {}: {e}", self.output.display()))
        })?;
        tracing::info!(bytes = pdf.len(), "report written to {} (queries {:?}, total {:?})", self.output.display(), queried, started.elapsed());

        // Headline numbers for email templates: upstream.TASK.metrics.headline.KEY.
        let mut headline = serde_json::Map::new();
        for (s, rows) in self.def.sections.iter().zip(&data) {
            if s.kind != Kind::Cards {
                continue;
            }
            for m in &s.metrics {
                let row = rows.iter().find(|r| r.get("metric").and_then(|v| v.as_str()) == Some(m.key.as_str()));
                let value = row.and_then(|r| r.get("value")).cloned().unwrap_or(serde_json::Value::Null);
                let previous = row.and_then(|r| r.get("previous")).cloned().unwrap_or(serde_json::Value::Null);
                let num = |v: &serde_json::Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
                let (change, _) = crate::report::def::fmt::change(num(&value), num(&previous), m.format);
                headline.insert(
                    m.key.clone(),
                    serde_json::json!({
                        "label": m.label.get(lang),
                        "value": value,
                        "display": crate::report::def::fmt::value(&value, m.format, lang),
                        "change": change,
                    }),
                );
            }
        }
        let mut artifacts = BTreeMap::new();
        artifacts.insert("pdf".to_string(), uri);
        artifacts.insert("local".to_string(), self.output.display().to_string());
        let mut out = Outcome::note(format!("{} pages, {} KB, {}", pages.max(1), pdf.len() / 1024, self.output.display()));
        out.artifacts = artifacts;
        out.metrics.insert("headline".into(), serde_json::Value::Object(headline));
        out.metrics.insert("pages".into(), serde_json::Value::from(pages.max(1)));
        out.metrics.insert("bytes".into(), serde_json::Value::from(pdf.len()));
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
