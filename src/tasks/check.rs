//! `check`: data quality checks that stop a run before bad data spreads.
//!
//! ```yaml
//! - id: check_orders
//!   type: check
//!   input: orders_clean            # a dataset; or conn + table (+ where) for a Postgres table
//!   checks:
//!     - row_count: { min: 1 }
//!     - not_null: [order_id, user_id]
//!     - unique: [order_id]
//!     - accepted_values: { column: status, values: [paid, cancelled, refunded] }
//!     - freshness: { column: ordered_at, max_age: 1d }
//!     - sql: SELECT * FROM orders_clean WHERE total_amount < 0
//!       name: no_negative_totals
//!       severity: warn
//! ```
//!
//! Every check is evaluated; failures with severity `error` (the default)
//! fail the task with all their messages and up to 20 offending rows each,
//! failures with severity `warn` are recorded and the run goes on.
//!
//! Queries run in Postgres for tables and in polars' SQL engine for
//! datasets (the dataset is a table named after its task).

use polars::prelude::*;
use polars::sql::SQLContext;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::dag::duration::Dur;

/// Data quality checks against a dataset or a Postgres table.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// The upstream task whose dataset is checked.
    pub input: Option<String>,
    /// A Postgres connection (to check a table).
    pub conn: Option<String>,
    /// The table to check: `shop.orders`.
    pub table: Option<String>,
    /// A SQL condition limiting the checked rows of the table, e.g.
    /// `ordered_at >= '{{ ds }}'`.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// The default severity of the checks: error (fail the task) or warn.
    #[serde(default)]
    pub severity: Severity,
    /// The checks; each names one kind.
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

/// One check: exactly one of the kinds, plus an optional name and severity.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// A name for messages. Default: the kind and its columns.
    pub name: Option<String>,
    /// Overrides the task's severity for this check.
    pub severity: Option<Severity>,
    /// The number of rows is within bounds.
    pub row_count: Option<RowCount>,
    /// These columns have no nulls.
    pub not_null: Option<Vec<String>>,
    /// These columns together have no duplicates.
    pub unique: Option<Vec<String>>,
    /// A column only holds these values (nulls are allowed).
    pub accepted_values: Option<AcceptedValues>,
    /// The latest value of a date or timestamp column is no older than
    /// `max_age` before the end of the run's data interval.
    pub freshness: Option<Freshness>,
    /// A query that must return no rows; the rows it returns are shown.
    pub sql: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RowCount {
    /// At least this many rows.
    pub min: Option<u64>,
    /// At most this many rows.
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptedValues {
    /// The column.
    pub column: String,
    /// The values it may hold.
    pub values: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// A date or timestamp column.
    pub column: String,
    pub max_age: Dur,
}

impl Check {
    fn kinds(&self) -> usize {
        [
            self.row_count.is_some(),
            self.not_null.is_some(),
            self.unique.is_some(),
            self.accepted_values.is_some(),
            self.freshness.is_some(),
            self.sql.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count()
    }

    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if self.row_count.is_some() {
            "row_count".into()
        } else if let Some(c) = &self.not_null {
            format!("not_null({})", c.join(", "))
        } else if let Some(c) = &self.unique {
            format!("unique({})", c.join(", "))
        } else if let Some(a) = &self.accepted_values {
            format!("accepted_values({})", a.column)
        } else if let Some(f) = &self.freshness {
            format!("freshness({})", f.column)
        } else {
            "sql".into()
        }
    }
}

pub struct CheckTask {
    cfg: CheckConfig,
    target: Target,
}

enum Target {
    Table { pool: sqlx::PgPool, name: String },
    Dataset { name: String, path: std::path::PathBuf },
}

impl TaskType for CheckConfig {
    const NAME: &'static str = "check";
    type Built = CheckTask;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        match (&self.input, &self.conn, &self.table) {
            (Some(i), None, None) => cx.check_input("input", i),
            (None, Some(c), Some(t)) => {
                cx.check_conn("conn", c, "postgres");
                if let Err(e) = super::load::parse_table(t)
                    && !crate::template::is_template(t) {
                        cx.error("table", e);
                    }
            }
            _ => cx.error("checks", "a check needs either `input` (a dataset) or `conn` and `table` (a Postgres table)"),
        }
        if self.filter.is_some() && self.input.is_some() {
            cx.warning("where", "`where` only applies to tables; filter a dataset in a transform");
        }
        if self.checks.is_empty() {
            cx.error("checks", "`checks` is empty");
        }
        let engine = if self.input.is_some() { super::sqlcheck::Engine::Polars } else { super::sqlcheck::Engine::Postgres };
        for (i, c) in self.checks.iter().enumerate() {
            if c.kinds() != 1 {
                cx.error(
                    &format!("checks[{i}]"),
                    "each check names exactly one kind: row_count, not_null, unique, accepted_values, freshness or sql",
                );
            }
            if let Some(q) = &c.sql
                && !crate::template::is_template(q)
                && let Err(e) = super::sqlcheck::parse(q, engine)
            {
                cx.error(&format!("checks[{i}].sql"), format!("the check's SQL does not parse: {e}"));
            }
        }
        if let Some(f) = &self.filter
            && !crate::template::is_template(f)
            && let Err(e) = super::sqlcheck::parse(&format!("SELECT 1 FROM t WHERE {f}"), super::sqlcheck::Engine::Postgres)
        {
            cx.error("where", format!("`where` is not a valid SQL condition: {e}"));
        }
    }

    fn inputs(&self) -> Vec<String> {
        self.input.iter().cloned().collect()
    }

    fn connections(&self) -> Vec<String> {
        self.conn.iter().cloned().collect()
    }

    async fn build(self, ctx: &TaskCtx) -> Result<CheckTask, TaskError> {
        let target = match (&self.input, &self.conn, &self.table) {
            (Some(i), _, _) => {
                let ds = ctx.input(i)?.clone();
                Target::Dataset { name: i.clone(), path: ctx.local_dataset(&ds).await? }
            }
            (None, Some(c), Some(t)) => {
                let name = super::load::parse_table(t).map_err(TaskError::Config)?.quoted;
                Target::Table { pool: ctx.pg(c).await?, name }
            }
            _ => return Err(TaskError::Config("no input and no table".into())),
        };
        Ok(CheckTask { cfg: self, target })
    }
}

/// A query result: how many rows, and the first ones, printed.
struct Rows {
    count: u64,
    shown: String,
}

fn literal(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        serde_json::Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

fn ident(s: &str) -> String {
    super::load::quote_ident(s)
}

impl CheckTask {
    fn relation(&self) -> String {
        let (base, filter) = match &self.target {
            Target::Table { name, .. } => (name.clone(), self.cfg.filter.clone()),
            Target::Dataset { name, .. } => (ident(name), None),
        };
        match filter {
            Some(f) => format!("(SELECT * FROM {base} WHERE {f}) AS checked"),
            None => base,
        }
    }

    async fn query(&self, sql: &str, sql_ctx: &mut Option<SQLContext>) -> Result<Rows, TaskError> {
        match &self.target {
            Target::Table { pool, .. } => {
                let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM ({sql}) AS q")))
                    .fetch_one(pool)
                    .await
                    .map_err(|e| TaskError::sql(format!("the check query `{sql}`"), &e))?;
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT row_to_json(q)::text FROM ({sql}) AS q LIMIT 20")))
                        .fetch_all(pool)
                        .await?;
                Ok(Rows { count: count as u64, shown: rows.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n") })
            }
            Target::Dataset { .. } => {
                let ctx = sql_ctx.as_mut().ok_or_else(|| TaskError::Panic("a dataset check has no SQL context".into()))?;
                let df = ctx
                    .execute(sql)
                    .and_then(|lf| lf.collect())
                    .map_err(|e| TaskError::with_kind(super::transform::polars_kind(&e), format!("{e}: {sql}")))?;
                let shown = if df.height() == 0 { String::new() } else { format!("{}", df.head(Some(20))) };
                Ok(Rows { count: df.height() as u64, shown })
            }
        }
    }

    /// Evaluates one check: Ok(None) when it passes, Ok(Some(message)) when not.
    async fn evaluate(&self, c: &Check, ctx: &TaskCtx, sql_ctx: &mut Option<SQLContext>) -> Result<Option<String>, TaskError> {
        let rel = self.relation();
        if let Some(rc) = &c.row_count {
            let r = self.query(&format!("SELECT 1 AS one FROM {rel}"), sql_ctx).await?;
            let n = r.count;
            let low = rc.min.is_some_and(|m| n < m);
            let high = rc.max.is_some_and(|m| n > m);
            return Ok((low || high).then(|| {
                format!(
                    "{n} rows, expected {}",
                    match (rc.min, rc.max) {
                        (Some(a), Some(b)) => format!("between {a} and {b}"),
                        (Some(a), None) => format!("at least {a}"),
                        (None, Some(b)) => format!("at most {b}"),
                        (None, None) => "any".into(),
                    }
                )
            }));
        }
        if let Some(cols) = &c.not_null {
            let cond = cols.iter().map(|x| format!("{} IS NULL", ident(x))).collect::<Vec<_>>().join(" OR ");
            let r = self.query(&format!("SELECT * FROM {rel} WHERE {cond}"), sql_ctx).await?;
            return Ok((r.count > 0).then(|| format!("{} row(s) have nulls in {}:\n{}", r.count, cols.join(", "), r.shown)));
        }
        if let Some(cols) = &c.unique {
            let list = cols.iter().map(|x| ident(x)).collect::<Vec<_>>().join(", ");
            let r = self
                .query(&format!("SELECT {list}, count(*) AS n FROM {rel} GROUP BY {list} HAVING count(*) > 1"), sql_ctx)
                .await?;
            return Ok((r.count > 0).then(|| format!("{} value(s) of ({}) appear more than once:\n{}", r.count, cols.join(", "), r.shown)));
        }
        if let Some(a) = &c.accepted_values {
            let list = a.values.iter().map(literal).collect::<Vec<_>>().join(", ");
            let column = ident(&a.column);
            let r = self
                .query(
                    &format!("SELECT {column}, count(*) AS n FROM {rel} WHERE {column} IS NOT NULL AND {column} NOT IN ({list}) GROUP BY {column}"),
                    sql_ctx,
                )
                .await?;
            return Ok((r.count > 0).then(|| format!("{} unexpected value(s) in {} (accepted: {list}):\n{}", r.count, a.column, r.shown)));
        }
        if let Some(f) = &c.freshness {
            let latest = self.latest(&f.column, sql_ctx, ctx).await?;
            let reference = ctx.interval.end;
            return Ok(match latest {
                None => Some(format!("{} has no values", f.column)),
                Some(t) if reference - t > chrono::Duration::from_std(f.max_age.0).unwrap_or_default() => Some(format!(
                    "the latest {} is {}, older than {} before the interval end {}",
                    f.column,
                    t.with_timezone(&ctx.tz).to_rfc3339(),
                    f.max_age,
                    reference.with_timezone(&ctx.tz).to_rfc3339()
                )),
                Some(_) => None,
            });
        }
        if let Some(q) = &c.sql {
            let r = self.query(q.trim().trim_end_matches(';'), sql_ctx).await?;
            return Ok((r.count > 0).then(|| format!("the query returned {} row(s):\n{}", r.count, r.shown)));
        }
        Ok(None)
    }

    async fn latest(&self, column: &str, sql_ctx: &mut Option<SQLContext>, ctx: &TaskCtx) -> Result<Option<chrono::DateTime<chrono::Utc>>, TaskError> {
        let rel = self.relation();
        match &self.target {
            Target::Table { pool, .. } => {
                // As text: a timestamptz carries its offset; a naive timestamp
                // or date is read in the DAG's time zone.
                let v: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT to_json(max({}))#>>'{{}}' FROM {rel}",
                    ident(column)
                )))
                .fetch_one(pool)
                .await?;
                Ok(v.and_then(|s| parse_instant(&s, ctx.tz)))
            }
            Target::Dataset { .. } => {
                let df = sql_ctx
                    .as_mut()
                    .ok_or_else(|| TaskError::Panic("a dataset check has no SQL context".into()))?
                    .execute(&format!("SELECT max({}) AS latest FROM {rel}", ident(column)))
                    .and_then(|lf| lf.collect())
                    .map_err(|e| TaskError::Failed(e.to_string()))?;
                let v = df.column("latest").map_err(|e| TaskError::Failed(e.to_string()))?.get(0).map_err(|e| TaskError::Failed(e.to_string()))?;
                Ok(match v {
                    AnyValue::Date(d) => crate::formats::columns::days_to_date(d)
                        .map(|d| crate::dag::schedule::local_midnight(d, ctx.tz)),
                    AnyValue::Datetime(x, unit, tz) => {
                        let us = match unit {
                            TimeUnit::Nanoseconds => x / 1000,
                            TimeUnit::Microseconds => x,
                            TimeUnit::Milliseconds => x * 1000,
                        };
                        let naive = chrono::DateTime::from_timestamp_micros(us).map(|t| t.naive_utc());
                        match (naive, tz) {
                            (Some(n), Some(_)) => Some(n.and_utc()),
                            (Some(n), None) => local_to_utc(n, ctx.tz),
                            _ => None,
                        }
                    }
                    AnyValue::Null => None,
                    other => return Err(TaskError::Failed(format!("freshness: `{column}` is {}, not a date or timestamp", other.dtype()))),
                })
            }
        }
    }
}

fn local_to_utc(n: chrono::NaiveDateTime, tz: chrono_tz::Tz) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone;
    tz.from_local_datetime(&n).earliest().map(|t| t.with_timezone(&chrono::Utc))
}

fn parse_instant(s: &str, tz: chrono_tz::Tz) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    if let Ok(n) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return local_to_utc(n, tz);
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| crate::dag::schedule::local_midnight(d, tz))
}

impl Run for CheckTask {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let mut sql_ctx = match &self.target {
            Target::Dataset { name, path } => {
                let c = SQLContext::new();
                c.register(name, crate::datasets::scan(path).map_err(|e| TaskError::Failed(e.to_string()))?);
                Some(c)
            }
            Target::Table { .. } => None,
        };
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut results = Vec::new();
        for c in &self.cfg.checks {
            let severity = c.severity.unwrap_or(self.cfg.severity);
            let label = c.label();
            let outcome = self.evaluate(c, ctx, &mut sql_ctx).await?;
            match &outcome {
                None => tracing::info!("check {label}: passed"),
                Some(m) => tracing::warn!("check {label} failed ({severity:?}): {m}"),
            }
            results.push(serde_json::json!({
                "check": label,
                "passed": outcome.is_none(),
                "severity": format!("{severity:?}").to_lowercase(),
                "message": outcome.clone(),
            }));
            if let Some(m) = outcome {
                let text = format!("check {label} failed: {m}");
                match severity {
                    Severity::Error => errors.push(text),
                    Severity::Warn => warnings.push(text),
                }
            }
        }
        let n = self.cfg.checks.len();
        if !errors.is_empty() {
            let mut msg = format!("{} of {n} check(s) failed", errors.len() + warnings.len());
            for e in errors.iter().chain(&warnings) {
                msg.push('\n');
                msg.push_str(e);
            }
            return Err(TaskError::Failed(msg));
        }
        let passed = n - warnings.len();
        let mut out = Outcome::note(if warnings.is_empty() {
            format!("{n} check(s) passed")
        } else {
            format!("{passed} of {n} check(s) passed, {} warning(s)", warnings.len())
        });
        out.metrics.insert("checks".into(), serde_json::Value::Array(results));
        out.warnings = warnings;
        Ok(out)
    }
}
