//! `transform`: SQL over input datasets with polars' SQL engine, plus
//! declarative steps where SQL is awkward.
//!
//! ```yaml
//! - id: orders_clean
//!   type: transform
//!   inputs: { orders: extract_orders, users: extract_users }   # or a list of task ids
//!   file: sql/transform/orders_clean.sql
//!   steps:
//!     - dedupe: { keys: [order_id], keep_latest_by: updated_at }
//!     - fill_null: { note: "" }
//!   rejects:
//!     sql: SELECT *, 'unknown user' AS reason FROM orders WHERE user_id NOT IN (SELECT id FROM users)
//! ```

use std::collections::BTreeMap;

use polars::prelude::*;
use polars::sql::SQLContext;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::datasets::RejectsSummary;
use crate::formats::columns::ColumnType;

/// Runs SQL (polars' dialect) over upstream datasets and writes the result
/// as a dataset. Each input is a table named after its task id, or after
/// the alias given in a mapping.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Upstream datasets: a list of task ids (`[extract_orders]`, tables
    /// named after them) or a mapping of table names to task ids
    /// (`{orders: extract_orders}`). `X_rejects` names task X's rejects.
    pub inputs: Inputs,
    /// The query, inline.
    pub sql: Option<String>,
    /// A file holding the query, relative to the project root.
    pub file: Option<String>,
    /// Steps applied after the query (or to the single input when there is
    /// no query), in order.
    #[serde(default, deserialize_with = "serde_yaml::with::singleton_map_recursive::deserialize")]
    pub steps: Vec<Step>,
    /// A query over the same tables returning rows to quarantine, with a
    /// `reason` column. They go to the `<task>_rejects` dataset; the query
    /// result itself is not filtered by it, so exclude them there too.
    pub rejects: Option<RejectsQuery>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Inputs {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

impl Inputs {
    /// (table name, task id) pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            Inputs::List(l) => l.iter().map(|t| (t.clone(), t.clone())).collect(),
            Inputs::Map(m) => m.iter().map(|(a, t)| (a.clone(), t.clone())).collect(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectsQuery {
    pub sql: Option<String>,
    pub file: Option<String>,
}

/// A declarative step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Keeps one row per key: the one with the greatest `keep_latest_by`
    /// (nulls last), or the first one.
    Dedupe {
        /// The columns that identify a row.
        keys: Vec<String>,
        /// Among duplicates, keep the row with the greatest value here.
        keep_latest_by: Option<String>,
    },
    /// Casts columns: `{amount: decimal(12,2), day: date}`. A value that
    /// does not convert fails the task.
    Cast(BTreeMap<String, ColumnType>),
    /// Replaces nulls: `{note: "", quantity: 0}`.
    FillNull(BTreeMap<String, serde_json::Value>),
    /// Renames columns: `{old: new}`.
    Rename(BTreeMap<String, String>),
    /// Keeps only these columns, in this order.
    Select(Vec<String>),
    /// Drops columns.
    Drop(Vec<String>),
    /// Keeps rows matching a SQL predicate: `amount > 0 AND status <> 'test'`.
    Filter(String),
}

pub struct Transform {
    tables: Vec<(String, std::path::PathBuf)>,
    query: Option<String>,
    rejects: Option<String>,
    steps: Vec<Step>,
}

impl TaskType for TransformConfig {
    const NAME: &'static str = "transform";
    type Built = Transform;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        let pairs = self.inputs.pairs();
        if pairs.is_empty() {
            cx.error("inputs", "a transform needs at least one input");
        }
        for (_, t) in &pairs {
            cx.check_input("inputs", t);
        }
        let tables: Vec<String> = pairs.iter().map(|(a, _)| a.clone()).collect();
        match (&self.sql, &self.file) {
            (Some(_), Some(_)) => cx.error("file", "give either `sql` or `file`, not both"),
            (Some(q), None) => check_query(cx, "sql", q, &tables),
            (None, Some(f)) => {
                if let Some(q) = cx.check_file("file", f) {
                    check_query(cx, "file", &q, &tables);
                }
            }
            (None, None) if pairs.len() != 1 => {
                cx.error("inputs", "without `sql` or `file`, a transform takes exactly one input (its steps apply to it)")
            }
            _ => {}
        }
        if let Some(r) = &self.rejects {
            match (&r.sql, &r.file) {
                (Some(q), None) => check_query(cx, "rejects.sql", q, &tables),
                (None, Some(f)) => {
                    if let Some(q) = cx.check_file("rejects.file", f) {
                        check_query(cx, "rejects.file", &q, &tables);
                    }
                }
                _ => cx.error("rejects", "`rejects` needs exactly one of `sql` or `file`"),
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            if let Step::Filter(p) = s
                && !crate::template::is_template(p)
                    && let Err(e) = polars::sql::sql_expr(p) {
                        cx.error(&format!("steps[{i}]"), format!("filter `{p}` is not a valid SQL predicate: {e}"));
                    }
            if let Step::Dedupe { keys, .. } = s
                && keys.is_empty() {
                    cx.error(&format!("steps[{i}]"), "dedupe needs at least one key");
                }
        }
    }

    fn inputs(&self) -> Vec<String> {
        self.inputs.pairs().into_iter().map(|(_, t)| t).collect()
    }

    fn produces(&self) -> super::Produces {
        super::Produces { dataset: true, rejects: self.rejects.is_some(), ..Default::default() }
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Transform, TaskError> {
        let mut tables = Vec::new();
        for (alias, task) in self.inputs.pairs() {
            let ds = ctx.input(&task)?.clone();
            tables.push((alias, ctx.local_dataset(&ds).await?));
        }
        let query = match (&self.sql, &self.file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(f)) => Some(ctx.read_template_file(f)?),
            (None, None) => None,
        };
        let rejects = match &self.rejects {
            Some(RejectsQuery { sql: Some(s), .. }) => Some(s.clone()),
            Some(RejectsQuery { file: Some(f), .. }) => Some(ctx.read_template_file(f)?),
            _ => None,
        };
        Ok(Transform { tables, query, rejects, steps: self.steps })
    }
}

/// Checks that a query parses and reads only the transform's input tables.
fn check_query(cx: &mut ValidateCx<'_, '_>, key: &str, sql: &str, tables: &[String]) {
    if crate::template::is_template(sql) {
        return;
    }
    let stmts = match super::sqlcheck::parse(sql, super::sqlcheck::Engine::Polars) {
        Ok(s) => s,
        Err(e) => return cx.error(key, format!("the query does not parse: {e}")),
    };
    for t in super::sqlcheck::tables_read(&stmts) {
        if !tables.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
            let hint = crate::diag::hint(&t, tables.iter().map(String::as_str));
            cx.error(
                key,
                format!(
                    "the query reads table `{t}`, which is not an input of this transform{hint}; its tables are its inputs: {} (add `{t}` to `inputs`)",
                    tables.join(", ")
                ),
            );
        }
    }
}

fn polars_err(what: &str) -> impl Fn(PolarsError) -> TaskError + '_ {
    move |e| TaskError::with_kind(polars_kind(&e), format!("{what}: {e}"))
}

/// A query that does not parse or names a missing table or column fails
/// the same way on every try.
pub fn polars_kind(e: &PolarsError) -> super::ErrorKind {
    match e {
        PolarsError::SQLSyntax(_) | PolarsError::SQLInterface(_) | PolarsError::ColumnNotFound(_) | PolarsError::SchemaFieldNotFound(_) => {
            super::ErrorKind::Permanent
        }
        _ => super::ErrorKind::Failed,
    }
}

/// Applies declarative steps to a lazy frame.
pub fn apply_steps(mut lf: LazyFrame, steps: &[Step]) -> Result<LazyFrame, TaskError> {
    for step in steps {
        lf = match step {
            Step::Dedupe { keys, keep_latest_by } => {
                let keys_expr: Vec<Expr> = keys.iter().map(|k| col(k.as_str())).collect();
                let sorted = match keep_latest_by {
                    Some(by) => lf.sort(
                        [by.as_str()],
                        SortMultipleOptions::default().with_order_descending(true).with_nulls_last(true).with_maintain_order(true),
                    ),
                    None => lf,
                };
                sorted.unique_stable_generic(Some(keys_expr), UniqueKeepStrategy::First)
            }
            Step::Cast(m) => lf.with_columns(m.iter().map(|(c, t)| col(c.as_str()).strict_cast(t.dtype())).collect::<Vec<_>>()),
            Step::FillNull(m) => {
                let exprs: Vec<Expr> = m
                    .iter()
                    .map(|(c, v)| {
                        let value = match v {
                            serde_json::Value::Bool(b) => lit(*b),
                            serde_json::Value::Number(n) if n.is_i64() => lit(n.as_i64().unwrap_or_default()),
                            serde_json::Value::Number(n) => lit(n.as_f64().unwrap_or_default()),
                            serde_json::Value::String(s) => lit(s.clone()),
                            other => lit(other.to_string()),
                        };
                        col(c.as_str()).fill_null(value)
                    })
                    .collect();
                lf.with_columns(exprs)
            }
            Step::Rename(m) => lf.rename(m.keys(), m.values(), true),
            Step::Select(cols) => lf.select(cols.iter().map(|c| col(c.as_str())).collect::<Vec<_>>()),
            Step::Drop(cols) => lf.drop(by_name(cols.iter().map(String::as_str), true, false)),
            Step::Filter(p) => lf.filter(polars::sql::sql_expr(p).map_err(|e| TaskError::Failed(format!("filter `{p}`: {e}")))?),
        };
    }
    Ok(lf)
}

impl Run for Transform {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let steps = self.steps.clone();
        let tables = self.tables.clone();
        let query = self.query.clone();
        let rejects_q = self.rejects.clone();
        let warnings = super::polars_warnings::Capture::start();
        let result = tokio::task::spawn_blocking(move || -> Result<(DataFrame, Option<DataFrame>), TaskError> {
            let mut sql = SQLContext::new();
            for (name, path) in &tables {
                sql.register(name, crate::datasets::scan(path).map_err(polars_err("reading input"))?);
            }
            let base = match &query {
                Some(q) => sql.execute(q).map_err(|e| TaskError::with_kind(polars_kind(&e), format!("the query failed: {e}")))?,
                None => crate::datasets::scan(&tables[0].1).map_err(polars_err("reading input"))?,
            };
            let lf = apply_steps(base, &steps)?;
            // The streaming engine bounds memory on large inputs; a plan
            // always yields one frame.
            let df = lf
                .collect_with_engine(Engine::Streaming)
                .map(|r| r.unwrap_single())
                .map_err(|e| TaskError::Failed(format!("the transform failed: {e}")))?;
            let rejects = match &rejects_q {
                Some(q) => {
                    let r = sql
                        .execute(q)
                        .and_then(|lf| lf.collect())
                        .map_err(|e| TaskError::Failed(format!("the rejects query failed: {e}")))?;
                    if r.column("reason").is_err() {
                        return Err(TaskError::Failed("the rejects query must return a `reason` column".into()));
                    }
                    Some(r)
                }
                None => None,
            };
            Ok((df, rejects))
        })
        .await;
        warnings.log();
        let (mut df, rejects) = result.map_err(|e| TaskError::from_join("the transform", e))??;
        let dataset = ctx.write_dataset(&ctx.task_id, &mut df).await?;
        let mut out = Outcome::note(format!("{} rows", super::thousands(df.height() as u64))).metric("rows", df.height() as u64);
        if let Some(mut r) = rejects {
            let mut by_reason = BTreeMap::new();
            let reasons = r.column("reason").and_then(|c| c.cast(&DataType::String)).map_err(polars_err("rejects"))?;
            for v in reasons.str().map_err(polars_err("rejects"))?.iter() {
                *by_reason.entry(v.unwrap_or("(no reason)").to_string()).or_insert(0u64) += 1;
            }
            let total = r.height() as u64;
            for (reason, n) in &by_reason {
                tracing::warn!(reason = %reason, count = n, "rows quarantined");
            }
            let ds = ctx.write_dataset(&format!("{}_rejects", ctx.task_id), &mut r).await?;
            if total > 0 {
                out.note = Some(format!(
                    "{} rows; {} quarantined ({})",
                    super::thousands(df.height() as u64),
                    super::thousands(total),
                    super::extract::describe_bad(&by_reason)
                ));
            }
            out.rejects = Some(RejectsSummary { total, by_reason, dataset: Some(ds) });
            out = out.metric("rejected", total);
        }
        out.dataset = Some(dataset);
        Ok(out)
    }
}

/// The README's polars SQL cookbook, run against the bundled polars: each
/// recipe gives the value the README says, and each thing it says is not
/// supported is refused.
#[cfg(test)]
mod cookbook {
    use polars::prelude::*;
    use polars::sql::SQLContext;

    fn table() -> LazyFrame {
        df!(
            "id" => [1i64, 2, 3],
            "s" => ["2024-11-18", "2024-11-20", "2024-12-01"],
            "name" => ["Kim Ji", "lee", " Park "],
            "amount" => [10.5f64, 20.0, 3.25]
        )
        .unwrap()
        .lazy()
        .with_columns([
            col("s").str().to_date(StrptimeOptions::default()).alias("day"),
            col("s").str().to_datetime(None, None, StrptimeOptions::default(), lit("raise")).alias("ts"),
        ])
    }

    fn run(sql: &str) -> PolarsResult<DataFrame> {
        let _serial = crate::tasks::polars_warnings::TEST_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        run_serialized(sql)
    }

    /// `run` for a test that holds `TEST_SERIAL` already.
    fn run_serialized(sql: &str) -> PolarsResult<DataFrame> {
        let mut ctx = SQLContext::new();
        ctx.register("t", table());
        ctx.execute(sql).and_then(|l| l.collect())
    }

    /// The first column's values, as text.
    #[track_caller]
    fn values(sql: &str) -> Vec<String> {
        let df = run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        first_column(&df)
    }

    #[track_caller]
    fn values_serialized(sql: &str) -> Vec<String> {
        let df = run_serialized(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        first_column(&df)
    }

    fn first_column(df: &DataFrame) -> Vec<String> {
        let c = &df.columns()[0];
        (0..c.len()).map(|i| c.get(i).unwrap().str_value().to_string()).collect()
    }

    #[test]
    fn recipes_give_what_the_readme_says() {
        for (sql, want) in [
            ("SELECT DATE('2024-11-18') AS x FROM t LIMIT 1", vec!["2024-11-18"]),
            ("SELECT id FROM t WHERE day >= '2024-11-19'", vec!["2", "3"]),
            ("SELECT id FROM t WHERE day BETWEEN '2024-11-18' AND '2024-11-30'", vec!["1", "2"]),
            ("SELECT DATE(s, '%Y-%m-%d') AS x FROM t LIMIT 1", vec!["2024-11-18"]),
            ("SELECT STRPTIME(s, '%Y-%m-%d')::date AS x FROM t LIMIT 1", vec!["2024-11-18"]),
            ("SELECT CAST(DATE('2024-12-31') AS INT) - CAST(day AS INT) AS days FROM t", vec!["43", "41", "30"]),
            ("SELECT day + INTERVAL '1 day' AS x FROM t LIMIT 1", vec!["2024-11-19"]),
            ("SELECT ts + INTERVAL '2 hours' AS x FROM t LIMIT 1", vec!["2024-11-18 02:00:00"]),
            ("SELECT EXTRACT(ISODOW FROM day) AS x FROM t", vec!["1", "3", "7"]),
            ("SELECT DATE_PART('dow', day) AS x FROM t", vec!["1", "3", "0"]),
            ("SELECT EXTRACT(HOUR FROM ts + INTERVAL '5 hours') AS x FROM t LIMIT 1", vec!["5"]),
            ("SELECT STRFTIME(day, '%Y-%m') AS x FROM t", vec!["2024-11", "2024-11", "2024-12"]),
            ("SELECT CAST(ts AS DATE) AS x FROM t LIMIT 1", vec!["2024-11-18"]),
            ("SELECT CAST(amount AS INT) AS x FROM t", vec!["10", "20", "3"]),
            ("SELECT TRY_CAST(name AS INT) AS x FROM t LIMIT 1", vec!["null"]),
            ("SELECT 7 / 2 AS x FROM t LIMIT 1", vec!["3.5"]),
            ("SELECT DIV(7, 2) AS x FROM t LIMIT 1", vec!["3"]),
            ("SELECT SUBSTR(name, 1, 3) AS x FROM t LIMIT 1", vec!["Kim"]),
            ("SELECT SPLIT_PART(name, ' ', 1) AS x FROM t LIMIT 1", vec!["Kim"]),
            ("SELECT CONCAT(name, '-', id) AS x FROM t LIMIT 1", vec!["Kim Ji-1"]),
            ("SELECT TRIM(name) AS x FROM t", vec!["Kim Ji", "lee", "Park"]),
            ("SELECT id FROM t WHERE REGEXP_LIKE(name, '^[a-z]')", vec!["2"]),
            ("SELECT id FROM t WHERE name ILIKE 'LEE'", vec!["2"]),
            ("SELECT IF(amount > 5, 'big', 'small') AS x FROM t", vec!["big", "big", "small"]),
            ("SELECT t.id FROM t ANTI JOIN t AS u ON t.id = u.id + 1", vec!["1"]),
            ("SELECT t.id FROM t SEMI JOIN t AS u ON t.id = u.id + 1 ORDER BY t.id", vec!["2", "3"]),
            ("SELECT ROW_NUMBER() OVER (ORDER BY amount DESC) AS r FROM t", vec!["2", "1", "3"]),
            ("SELECT STRING_AGG(TRIM(name), ',') AS x FROM t", vec!["Kim Ji,lee,Park"]),
        ] {
            assert_eq!(values(sql), want, "{sql}");
        }
        // Computed columns are named after their input: alias each one.
        let e = run("SELECT UPPER(name), LOWER(name) FROM t").unwrap_err().to_string();
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn what_the_readme_says_is_not_supported_is_refused() {
        for sql in [
            "SELECT DATEDIFF('day', day, day) FROM t",
            "SELECT DATE_DIFF('day', day, day) FROM t",
            "SELECT DATE_TRUNC('month', day) FROM t",
            "SELECT NOW() FROM t",
            "SELECT CURRENT_DATE FROM t",
            "SELECT REGEXP_REPLACE(name, 'a', 'b') FROM t",
            "SELECT TO_DATE(s, '%Y-%m-%d') FROM t",
            "SELECT * FROM t WHERE NOT EXISTS (SELECT 1 FROM t AS u WHERE u.id = t.id + 10)",
        ] {
            assert!(run(sql).is_err(), "{sql} is supported now: update the README's cookbook");
        }
    }

    /// A transform runs polars' SQL on a blocking thread's 2 MiB stack.
    /// SQL nested as deep as its parser allows runs there in every build
    /// profile. (polars-sql unoptimised, as in a dev build with
    /// `opt-level = 0` for it, overflowed this stack here.)
    #[test]
    fn sql_nested_to_the_parser_limit_runs_on_a_blocking_thread_stack() {
        use crate::tasks::sqlcheck::tests::{deepest_parsed, nested_sql};
        let n = deepest_parsed();
        let blocking = std::thread::Builder::new().stack_size(2 << 20);
        let got = blocking.spawn(move || values(&nested_sql(n, "t"))).unwrap().join().expect("deep SQL panicked");
        let n = n as i64;
        assert_eq!(got, [1 + n, 2 + n, 3 + n].map(|v| v.to_string()));
    }

    /// `DATE '…'` and `CAST('…' AS DATE)` work but make polars warn that
    /// casting text to a date is deprecated; `DATE('…')` does not.
    #[test]
    fn date_literals_and_the_deprecation_warning() {
        let _serial = crate::tasks::polars_warnings::TEST_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let cap = crate::tasks::polars_warnings::Capture::start();
        assert_eq!(values_serialized("SELECT DATE('2024-11-18') AS x FROM t LIMIT 1"), ["2024-11-18"]);
        let quiet = cap.take();
        assert_eq!(values_serialized("SELECT CAST('2024-11-18' AS DATE) AS x FROM t LIMIT 1"), ["2024-11-18"]);
        let warned = cap.take();
        assert!(quiet.iter().all(|(w, _)| !w.contains("Date")), "{quiet:?}");
        assert!(warned.iter().any(|(w, _)| w.contains("Casting from String to Date is deprecated")), "{warned:?}");
    }
}
