//! `load`: loads a dataset into a Postgres table with COPY, in one
//! transaction.
//!
//! ```yaml
//! - id: load_orders
//!   type: load
//!   input: orders_clean
//!   conn: warehouse
//!   table: shop.orders
//!   mode: replace_partition
//!   partition_column: ordered_at
//! ```
//!
//! Modes:
//! * `append`: COPY the rows in.
//! * `replace`: delete every row and COPY the new ones, in one transaction:
//!   readers see the old rows until the commit, then the new ones, never an
//!   empty table (a DELETE, unlike TRUNCATE, is MVCC-safe).
//! * `upsert`: COPY into a temporary table, then
//!   `INSERT ... ON CONFLICT (key) DO UPDATE`.
//! * `replace_partition`: delete the rows of the run's data interval by
//!   `partition_column`, then COPY; rerunning a day never duplicates it.
//!
//! A failure anywhere rolls the transaction back: the table is left exactly
//! as it was.

use std::time::Instant;

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use sqlx::{Acquire, Row};

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};

/// Loads a dataset into a Postgres table through COPY, in one transaction.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// The upstream task whose dataset is loaded (or `X_rejects`).
    pub input: String,
    /// A Postgres connection.
    pub conn: String,
    /// The table, optionally with its schema: `shop.orders`.
    pub table: String,
    /// append, replace, upsert or replace_partition.
    pub mode: Mode,
    /// Key columns for upsert; the table needs a primary key or unique index on them.
    #[serde(default)]
    pub key: Vec<String>,
    /// The column holding the date or timestamp that places a row in a run's
    /// data interval (replace_partition).
    pub partition_column: Option<String>,
    /// Create the table from the dataset's columns when it does not exist.
    #[serde(default)]
    pub create: bool,
    /// Load only these dataset columns (default: all of them).
    pub columns: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Append,
    Replace,
    Upsert,
    ReplacePartition,
}

/// A table name split into quoted parts.
#[derive(Debug, Clone)]
pub struct TableName {
    pub display: String,
    /// `"schema"."table"` or `"table"`.
    pub quoted: String,
    /// `"schema"`, when the name has one.
    pub schema: Option<String>,
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn parse_table(s: &str) -> Result<TableName, String> {
    let parts: Vec<&str> = s.split('.').collect();
    let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_');
    if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| ok(p)) {
        return Err(format!("`{s}` is not a table name: write `table` or `schema.table` (letters, digits, `_`)"));
    }
    Ok(TableName {
        display: s.to_string(),
        quoted: parts.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join("."),
        schema: (parts.len() == 2).then(|| quote_ident(parts[0])),
    })
}

pub struct Load {
    cfg: LoadConfig,
    table: TableName,
    pool: sqlx::PgPool,
    path: std::path::PathBuf,
    /// Where the dataset's rows came from, when an extract wrote it.
    lineage_uri: Option<String>,
}

impl TaskType for LoadConfig {
    const NAME: &'static str = "load";
    type Built = Load;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        cx.check_conn("conn", &self.conn, "postgres");
        cx.check_input("input", &self.input);
        if let Err(e) = parse_table(&self.table)
            && !crate::template::is_template(&self.table) {
                cx.error("table", e);
            }
        match self.mode {
            Mode::Upsert if self.key.is_empty() => cx.error("key", "mode upsert needs `key: [columns]`"),
            Mode::ReplacePartition if self.partition_column.is_none() => {
                cx.error("mode", "mode replace_partition needs `partition_column`")
            }
            _ => {}
        }
        if self.mode != Mode::Upsert && !self.key.is_empty() {
            cx.warning("key", "`key` is only used by mode upsert");
        }
        if self.mode != Mode::ReplacePartition && self.partition_column.is_some() {
            cx.warning("partition_column", "`partition_column` is only used by mode replace_partition");
        }
    }

    fn inputs(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn assets(&self) -> Vec<String> {
        match crate::template::is_template(&self.conn) || crate::template::is_template(&self.table) {
            true => Vec::new(),
            false => vec![format!("postgres://{}/{}", self.conn, self.table)],
        }
    }

    fn connections(&self) -> Vec<String> {
        vec![self.conn.clone()]
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Load, TaskError> {
        let table = parse_table(&self.table).map_err(TaskError::Config)?;
        let ds = ctx.input(&self.input)?.clone();
        let path = ctx.local_dataset(&ds).await?;
        let pool = ctx.pg(&self.conn).await?;
        Ok(Load { cfg: self, table, pool, path, lineage_uri: ds.lineage.clone() })
    }
}

struct TableColumn {
    name: String,
    pg_type: String,
    not_null: bool,
    has_default: bool,
}

async fn table_columns(conn: &mut sqlx::PgConnection, table: &TableName) -> Result<Option<Vec<TableColumn>>, TaskError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&table.quoted).fetch_one(&mut *conn).await?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty, a.attnotnull AS not_null,
                (d.adbin IS NOT NULL OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(&table.quoted)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(
        rows.into_iter()
            .map(|r| TableColumn { name: r.get("name"), pg_type: r.get("ty"), not_null: r.get("not_null"), has_default: r.get("has_default") })
            .collect(),
    ))
}

impl Load {
    /// Checks the dataset against the table; every problem is reported.
    fn check_columns(&self, df: &DataFrame, cols: &[TableColumn]) -> Result<(), TaskError> {
        let mut problems = Vec::new();
        let mut unknown = Vec::new();
        for c in df.columns() {
            match cols.iter().find(|t| t.name == c.name().as_str()) {
                None => unknown.push(format!("`{}`", c.name())),
                Some(t) if !crate::pgcopy::compatible(c.dtype(), &t.pg_type) => problems.push(format!(
                    "column `{}`: the dataset has {}, the table has {}",
                    c.name(),
                    crate::datasets::dtype_name(c.dtype()),
                    t.pg_type
                )),
                Some(_) => {}
            }
        }
        if !unknown.is_empty() {
            problems.insert(
                0,
                format!(
                    "the table has no column {} (it has: {})",
                    unknown.join(", "),
                    cols.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let missing: Vec<String> = cols
            .iter()
            .filter(|t| t.not_null && !t.has_default && df.column(&t.name).is_err())
            .map(|t| format!("`{}`", t.name))
            .collect();
        if !missing.is_empty() {
            problems.push(format!("the dataset lacks {}, which the table requires (NOT NULL without a default)", missing.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TaskError::Failed(format!("cannot load {} into {}: {}", self.cfg.input, self.table.display, problems.join("; "))))
        }
    }

    async fn create_table(&self, conn: &mut sqlx::PgConnection, df: &DataFrame) -> Result<(), TaskError> {
        let mut defs = Vec::new();
        for c in df.columns() {
            let ty = crate::pgcopy::pg_type(c.dtype())
                .ok_or_else(|| TaskError::Failed(format!("column `{}` has type {}, which has no Postgres type", c.name(), c.dtype())))?;
            defs.push(format!("{} {ty}", quote_ident(c.name())));
        }
        if self.cfg.mode == Mode::Upsert {
            defs.push(format!("PRIMARY KEY ({})", self.cfg.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")));
        }
        if let Some(schema) = &self.table.schema {
            // `create: true` creates what the table needs, its schema included.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}"))).execute(&mut *conn).await?;
        }
        let sql = format!("CREATE TABLE IF NOT EXISTS {} ({})", self.table.quoted, defs.join(", "));
        tracing::info!("creating table {}", self.table.display);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
        Ok(())
    }

    /// COPYs the frame into `target` (whose columns are `table`) through
    /// the open transaction, encoding in a blocking thread while the
    /// previous chunk is sent. Binary when every column allows it.
    async fn copy(
        &self,
        conn: &mut sqlx::PgConnection,
        df: std::sync::Arc<DataFrame>,
        target: &str,
        table: &[TableColumn],
    ) -> Result<u64, LoadError> {
        let cols = df.get_column_names().iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let pg_types: Vec<&str> = df
            .get_column_names()
            .iter()
            .map(|c| table.iter().find(|t| t.name == c.as_str()).map_or("", |t| t.pg_type.as_str()))
            .collect();
        let plan = crate::pgcopy::binary_plan(&df, &pg_types);
        let stmt = match plan {
            Some(_) => format!("COPY {target} ({cols}) FROM STDIN WITH (FORMAT binary)"),
            None => format!("COPY {target} ({cols}) FROM STDIN"),
        };
        tracing::info!(rows = df.height(), "COPY into {target} in {} format", if plan.is_some() { "binary" } else { "text" });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(4);
        let frame = df.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            let rows_per_chunk = 16_384;
            let mut start = 0;
            let mut first = true;
            while start < frame.height() {
                let mut buf = Vec::with_capacity(1 << 20);
                let r = match &plan {
                    Some(p) => {
                        if first {
                            buf.extend_from_slice(crate::pgcopy::BINARY_HEADER);
                        }
                        crate::pgcopy::encode_binary(&frame, p, start, rows_per_chunk, &mut buf).map(|_| buf)
                    }
                    None => crate::pgcopy::encode(&frame, start, rows_per_chunk, &mut buf).map(|_| buf),
                };
                first = false;
                let failed = r.is_err();
                if tx.blocking_send(r).is_err() || failed {
                    return;
                }
                start += rows_per_chunk;
            }
            if plan.is_some() {
                let mut end = Vec::new();
                if first {
                    end.extend_from_slice(crate::pgcopy::BINARY_HEADER);
                }
                end.extend_from_slice(crate::pgcopy::BINARY_TRAILER);
                let _ = tx.blocking_send(Ok(end));
            }
        });
        let mut copy = conn.copy_in_raw(&stmt).await.map_err(LoadError::Copy)?;
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Ok(bytes) => {
                    if let Err(e) = copy.send(bytes).await {
                        let _ = encoder.await;
                        return Err(LoadError::Copy(e));
                    }
                }
                Err(e) => {
                    let _ = copy.abort(e.clone()).await;
                    return Err(LoadError::Task(TaskError::Failed(e)));
                }
            }
        }
        let _ = encoder.await;
        copy.finish().await.map_err(LoadError::Copy)
    }

    /// The bounds of the run's interval in the partition column's type.
    fn partition_bounds(&self, ctx: &TaskCtx, pg_type: &str) -> Result<(String, String, String), TaskError> {
        let local = |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&ctx.tz);
        let (s, e) = (ctx.interval.start, ctx.interval.end);
        if pg_type == "date" {
            Ok((local(s).format("%Y-%m-%d").to_string(), local(e).format("%Y-%m-%d").to_string(), "date".into()))
        } else if pg_type.starts_with("timestamp with time zone") {
            Ok((s.to_rfc3339(), e.to_rfc3339(), "timestamptz".into()))
        } else if pg_type.starts_with("timestamp") {
            let f = "%Y-%m-%d %H:%M:%S%.6f";
            Ok((local(s).format(f).to_string(), local(e).format(f).to_string(), "timestamp".into()))
        } else {
            Err(TaskError::Failed(format!(
                "partition_column `{}` is {pg_type}; replace_partition needs a date, timestamp or timestamptz column",
                self.cfg.partition_column.as_deref().unwrap_or_default()
            )))
        }
    }
}

/// Rows whose partition column falls outside [start, end), as a count.
fn rows_outside(df: &DataFrame, column: &str, start: &str, end: &str, kind: &str) -> Result<usize, TaskError> {
    let c = df.column(column).map_err(|_| TaskError::Failed(format!("the dataset has no partition column `{column}`")))?;
    let s = c.as_materialized_series();
    let (lo, hi, vals): (i64, i64, Vec<Option<i64>>) = match (kind, s.dtype()) {
        ("date", DataType::Date) => {
            let p = |x: &str| chrono::NaiveDate::parse_from_str(x, "%Y-%m-%d").map(|d| crate::formats::columns::date_to_days(d) as i64);
            let lo = p(start).map_err(|e| TaskError::Failed(e.to_string()))?;
            let hi = p(end).map_err(|e| TaskError::Failed(e.to_string()))?;
            (lo, hi, s.date().map_err(|e| TaskError::Failed(e.to_string()))?.physical().iter().map(|v| v.map(i64::from)).collect())
        }
        (_, DataType::Datetime(unit, _)) => {
            let to_us = |x: i64| match unit {
                TimeUnit::Nanoseconds => x / 1000,
                TimeUnit::Microseconds => x,
                TimeUnit::Milliseconds => x * 1000,
            };
            let parse = |x: &str| -> Result<i64, TaskError> {
                if kind == "timestamptz" {
                    chrono::DateTime::parse_from_rfc3339(x).map(|t| t.timestamp_micros()).map_err(|e| TaskError::Failed(e.to_string()))
                } else {
                    chrono::NaiveDateTime::parse_from_str(x, "%Y-%m-%d %H:%M:%S%.6f")
                        .map(|t| t.and_utc().timestamp_micros())
                        .map_err(|e| TaskError::Failed(e.to_string()))
                }
            };
            let v = s.datetime().map_err(|e| TaskError::Failed(e.to_string()))?.physical().iter().map(|v| v.map(to_us)).collect();
            (parse(start)?, parse(end)?, v)
        }
        // Other combinations (a text column...) are left to Postgres.
        _ => return Ok(0),
    };
    Ok(vals.into_iter().filter(|v| v.is_none_or(|x| x < lo || x >= hi)).count())
}

impl Run for Load {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let started = Instant::now();
        let path = self.path.clone();
        let columns = self.cfg.columns.clone();
        let df = tokio::task::spawn_blocking(move || {
            let df = crate::datasets::read(&path)?;
            let df = match &columns {
                Some(cols) => df.select(cols.iter().map(String::as_str)).map_err(|e| format!("columns: {e}"))?,
                None => df,
            };
            crate::pgcopy::prepare(df)
        })
            .await
            .map_err(|e| TaskError::from_join("reading the dataset", e))?
            .map_err(TaskError::Failed)?;
        let df = std::sync::Arc::new(df);
        let rows = df.height() as u64;

        if self.cfg.mode == Mode::Upsert {
            for k in &self.cfg.key {
                if df.column(k).is_err() {
                    return Err(TaskError::Failed(format!("upsert key `{k}` is not a column of the dataset")));
                }
            }
            let keys: Vec<Expr> = self.cfg.key.iter().map(|k| col(k.as_str())).collect();
            let dups = df
                .as_ref()
                .clone()
                .lazy()
                .group_by(keys)
                .agg([len().alias("__n")])
                .filter(col("__n").gt(lit(1)))
                .limit(5)
                .collect()
                .map_err(|e| TaskError::Failed(e.to_string()))?;
            if dups.height() > 0 {
                return Err(TaskError::Failed(format!(
                    "the dataset has several rows with the same key ({}); dedupe it first (a transform step `dedupe: {{keys: [...]}}`). Examples:\n{dups}",
                    self.cfg.key.join(", ")
                )));
            }
        }

        let mut conn = self.pool.acquire().await.map_err(|e| TaskError::sql(format!("connection `{}`", self.cfg.conn), &e))?;
        let loaded = self.load_in_tx(ctx, &mut conn, df).await;
        if loaded.is_err() {
            // The connection saw an error: it is not returned to the pool.
            conn.close_on_drop();
        }
        let (inserted, updated, deleted) = match loaded {
            Ok(Loaded::Rows(i, u, d)) => (i, u, d),
            Ok(Loaded::AlreadyLoaded(done)) => {
                let note = format!(
                    "already loaded: run {} (try {}) appended {} rows for this interval at {}; nothing appended again",
                    done.run_id,
                    done.try_number,
                    super::thousands(done.rows as u64),
                    done.loaded_at.to_rfc3339()
                );
                tracing::info!("{note} (delete its row from {} to load it again)", MARKER_TABLE);
                return Ok(Outcome::note(note).metric("rows_inserted", 0).metric("rows_updated", 0).metric("rows_deleted", 0));
            }
            Err(LoadError::Copy(e)) => return Err(self.explain_copy_error(ctx, e).await),
            Err(LoadError::Task(e)) => return Err(e),
        };
        let took = crate::dag::duration::format_elapsed(started.elapsed());
        tracing::info!(inserted, updated, deleted, "loaded {rows} rows into {} in {took}", self.table.display);
        let mut note = format!("{} rows into {}", super::thousands(rows), self.table.display);
        if updated > 0 || self.cfg.mode == Mode::Upsert {
            note = format!("{} inserted, {} updated in {}", super::thousands(inserted), super::thousands(updated), self.table.display);
        }
        if deleted > 0 {
            note.push_str(&format!(" ({} replaced)", super::thousands(deleted)));
        }
        Ok(Outcome::note(note).metric("rows_inserted", inserted).metric("rows_updated", updated).metric("rows_deleted", deleted))
    }
}


/// What a load's transaction did.
enum Loaded {
    /// Rows inserted, updated, deleted.
    Rows(u64, u64, u64),
    /// An append this interval already made (found by its marker).
    AlreadyLoaded(Done),
}

/// The table of append markers, next to the target table.
pub const MARKER_TABLE: &str = "sluice_load_markers";

/// The marker of an append load: this task appended these rows for this
/// interval into this table.
struct Marker {
    table: String,
    dag_id: String,
    task_id: String,
    logical_date: chrono::DateTime<chrono::Utc>,
    target: String,
    run_id: i64,
    try_number: i32,
}

/// A marker found: the load already done.
struct Done {
    run_id: i64,
    try_number: i32,
    rows: i64,
    loaded_at: chrono::DateTime<chrono::Utc>,
}

impl Marker {
    fn of(ctx: &TaskCtx, table: &TableName) -> Marker {
        let table_name = match &table.schema {
            Some(s) => format!("{s}.{MARKER_TABLE}"),
            None => MARKER_TABLE.to_string(),
        };
        Marker {
            table: table_name,
            dag_id: ctx.dag_id.clone(),
            task_id: ctx.task_id.clone(),
            logical_date: ctx.logical_date,
            target: table.display.clone(),
            run_id: ctx.run_id,
            try_number: ctx.try_number,
        }
    }

    async fn find(&self, conn: &mut sqlx::PgConnection) -> Result<Option<Done>, TaskError> {
        // Created in a savepoint of the load's transaction: when two loads
        // create it at once, one gets a duplicate-key error, which only
        // means the table is there.
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 dag_id text NOT NULL, task_id text NOT NULL, logical_date timestamptz NOT NULL, target text NOT NULL,
                 run_id bigint NOT NULL, try_number int NOT NULL, rows bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (dag_id, task_id, logical_date, target))",
            self.table
        );
        sqlx::raw_sql("SAVEPOINT sluice_marker").execute(&mut *conn).await?;
        match sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut *conn).await {
            Ok(_) => sqlx::raw_sql("RELEASE SAVEPOINT sluice_marker").execute(&mut *conn).await?,
            Err(e) if is_duplicate(&e) => sqlx::raw_sql("ROLLBACK TO SAVEPOINT sluice_marker").execute(&mut *conn).await?,
            Err(e) => return Err(e.into()),
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT run_id, try_number, rows, loaded_at FROM {} WHERE dag_id = $1 AND task_id = $2 AND logical_date = $3 AND target = $4",
            self.table
        )))
        .bind(&self.dag_id)
        .bind(&self.task_id)
        .bind(self.logical_date)
        .bind(&self.target)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.map(|r| Done { run_id: r.get("run_id"), try_number: r.get("try_number"), rows: r.get("rows"), loaded_at: r.get("loaded_at") }))
    }

    /// Writes the marker in the load's transaction. A concurrent try of the
    /// same load (a zombie that kept running) fails here on the key and
    /// rolls back its rows.
    async fn insert(&self, conn: &mut sqlx::PgConnection, rows: u64) -> Result<(), TaskError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (dag_id, task_id, logical_date, target, run_id, try_number, rows) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            self.table
        )))
        .bind(&self.dag_id)
        .bind(&self.task_id)
        .bind(self.logical_date)
        .bind(&self.target)
        .bind(self.run_id)
        .bind(self.try_number)
        .bind(rows as i64)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Two sessions creating the same table at once: one gets a duplicate-key
/// error on the catalog, which only means the table is there.
fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("23505" | "42P07")))
}

/// Why a load's transaction failed: COPY errors are explained with the
/// source file and line of the row they name.
enum LoadError {
    Copy(sqlx::Error),
    Task(TaskError),
}

impl<E: Into<TaskError>> From<E> for LoadError {
    fn from(e: E) -> LoadError {
        LoadError::Task(e.into())
    }
}

impl Load {
    /// Everything that touches the table, in one transaction: on any error
    /// it rolls back and the table is exactly as it was.
    async fn load_in_tx(
        &self,
        ctx: &TaskCtx,
        conn: &mut sqlx::PgConnection,
        df: std::sync::Arc<DataFrame>,
    ) -> Result<Loaded, LoadError> {
        let mut tx = conn.begin().await?;
        if let Some(left) = ctx.remaining() {
            let ms = left.as_millis().max(1);
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL statement_timeout = {ms}"))).execute(&mut *tx).await?;
        }
        let cols = match table_columns(&mut tx, &self.table).await? {
            Some(c) => c,
            None if self.cfg.create => {
                self.create_table(&mut tx, &df).await?;
                table_columns(&mut tx, &self.table).await?.ok_or_else(|| TaskError::Failed(format!("table {} vanished after it was created", self.table.display)))?
            }
            None => {
                return Err(TaskError::Failed(format!(
                    "table {} does not exist; create it (e.g. in a sql task) or set `create: true`",
                    self.table.display
                )).into());
            }
        };
        self.check_columns(&df, &cols)?;

        // (inserted, updated, deleted)
        let (inserted, updated, deleted): (u64, u64, u64) = match self.cfg.mode {
            Mode::Append => {
                // Exactly once per interval, even across a crash between the
                // warehouse's commit and the state store's record of it: a
                // marker is committed with the rows, and a later try that
                // finds it loads nothing.
                let marker = (!ctx.test_mode).then(|| Marker::of(ctx, &self.table));
                if let Some(m) = &marker
                    && let Some(done) = m.find(&mut tx).await?
                {
                    tx.rollback().await?;
                    return Ok(Loaded::AlreadyLoaded(done));
                }
                let n = self.copy(&mut tx, df.clone(), &self.table.quoted, &cols).await?;
                if let Some(m) = &marker {
                    m.insert(&mut tx, n).await?;
                }
                (n, 0, 0)
            }
            Mode::Replace => {
                let deleted = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM {}", self.table.quoted))).execute(&mut *tx).await?.rows_affected();
                (self.copy(&mut tx, df.clone(), &self.table.quoted, &cols).await?, 0, deleted)
            }
            Mode::ReplacePartition => {
                let pcol = self.cfg.partition_column.as_deref().ok_or_else(|| TaskError::Config("partition_column: mode replace_partition needs it".into()))?;
                let t = cols.iter().find(|c| c.name == pcol).ok_or_else(|| {
                    TaskError::Failed(format!("partition_column `{pcol}` is not a column of {}", self.table.display))
                })?;
                let (start, end, kind) = self.partition_bounds(ctx, &t.pg_type)?;
                let outside = rows_outside(&df, pcol, &start, &end, &kind)?;
                if outside > 0 {
                    return Err(TaskError::Failed(format!(
                        "{outside} row(s) have `{pcol}` outside the run's interval [{start}, {end}) (or null); a rerun could not replace them, so nothing was loaded; filter them in a transform"
                    )).into());
                }
                let sql = format!("DELETE FROM {} WHERE {} >= $1::{kind} AND {} < $2::{kind}", self.table.quoted, quote_ident(pcol), quote_ident(pcol));
                let deleted = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&start).bind(&end).execute(&mut *tx).await?.rows_affected();
                (self.copy(&mut tx, df.clone(), &self.table.quoted, &cols).await?, 0, deleted)
            }
            Mode::Upsert => {
                self.check_unique_key(&mut tx).await?;
                let stage = "sluice_upsert_stage";
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE TEMP TABLE {stage} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP",
                    self.table.quoted
                )))
                .execute(&mut *tx)
                .await?;
                self.copy(&mut tx, df.clone(), stage, &cols).await?;
                let names: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
                let col_list = names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
                let key_list = self.cfg.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
                let updates: Vec<String> = names
                    .iter()
                    .filter(|c| !self.cfg.key.contains(c))
                    .map(|c| format!("{} = EXCLUDED.{}", quote_ident(c), quote_ident(c)))
                    .collect();
                let action = if updates.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", updates.join(", ")) };
                let sql = format!(
                    "WITH u AS (INSERT INTO {t} ({col_list}) SELECT {col_list} FROM {stage} ON CONFLICT ({key_list}) {action} RETURNING (xmax = 0) AS ins)
                     SELECT count(*) FILTER (WHERE ins) AS ins, count(*) FILTER (WHERE NOT ins) AS upd FROM u",
                    t = self.table.quoted
                );
                let r = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *tx).await?;
                (r.get::<i64, _>("ins") as u64, r.get::<i64, _>("upd") as u64, 0)
            }
        };
        tx.commit().await?;
        Ok(Loaded::Rows(inserted, updated, deleted))
    }

    /// A COPY error names a row of the dataset ("COPY t, line 3"); this says
    /// which line of which source file it came from, when the dataset was
    /// extracted from files.
    async fn explain_copy_error(&self, ctx: &TaskCtx, e: sqlx::Error) -> TaskError {
        let base = TaskError::sql(format!("loading {} into {}", self.cfg.input, self.table.display), &e);
        let row = match &e {
            sqlx::Error::Database(db) => db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.r#where())
                .and_then(copy_line),
            _ => None,
        };
        let Some(row) = row else { return base };
        let kind = base.kind();
        let at = match self.lineage(ctx).await {
            Some(l) => match l.locate(row - 1) {
                Some((source, line)) => format!("the row COPY calls line {row} is {source}, line {line}"),
                None => format!("the row COPY calls line {row} is row {row} of dataset `{}`", self.cfg.input),
            },
            None => format!("the row COPY calls line {row} is row {row} of dataset `{}` (written by a transform, so it has no source line)", self.cfg.input),
        };
        TaskError::with_kind(kind, format!("{base}; {at}"))
    }

    async fn lineage(&self, ctx: &TaskCtx) -> Option<crate::formats::Lineage> {
        let uri = self.lineage_uri.as_ref()?;
        let path = ctx.local_artifact(uri).await.ok()?;
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// The row number in a COPY error's context: `COPY t, line 3, column x: ...`.
fn copy_line(context: &str) -> Option<u64> {
    let rest = context.strip_prefix("COPY ")?;
    let at = rest.find(", line ")?;
    rest[at + 7..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl Load {
    async fn check_unique_key(&self, conn: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        let mut key: Vec<String> = self.cfg.key.clone();
        key.sort();
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_index i
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a
                        WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2::text[])",
        )
        .bind(&self.table.quoted)
        .bind(&key)
        .fetch_one(&mut *conn)
        .await?;
        if found {
            Ok(())
        } else {
            Err(TaskError::Failed(format!(
                "upsert into {} on ({}) needs a primary key or unique index on exactly those columns, e.g. CREATE UNIQUE INDEX ON {} ({})",
                self.table.display,
                self.cfg.key.join(", "),
                self.table.display,
                self.cfg.key.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(parse_table("shop.orders").unwrap().quoted, "\"shop\".\"orders\"");
        assert_eq!(parse_table("orders").unwrap().quoted, "\"orders\"");
        assert!(parse_table("a.b.c").is_err());
        assert!(parse_table("orders; drop table x").is_err());
    }
}
