//! A load's work on its table: checking the rows' columns against it,
//! creating it, and writing the rows in one transaction by the load's mode.
//! Shared by the `load` task (a dataset's rows) and an extract's `into`
//! (rows streamed as they are read).

use polars::prelude::*;
use sqlx::{Acquire, Row};

use super::{quote_ident, LoadTarget, Mode, TableName};
use crate::formats::Lineage;
use crate::tasks::{thousands, Outcome, TaskCtx, TaskError};

/// A load's target, built for one try.
pub struct TableLoad {
    pub to: LoadTarget,
    pub table: TableName,
    pool: sqlx::PgPool,
}

/// The rows of one load: their columns, known before the first row, and
/// the frames, whole or as an extract reads them.
pub struct Frames {
    /// An empty frame with the columns and types of every frame.
    schema: DataFrame,
    frames: Box<dyn Iterator<Item = DataFrame> + Send>,
    /// For streamed rows: resolved when their producer knows whether the
    /// load may commit (an extract checks its bad rows once it has read
    /// them all). The transaction waits for it before committing.
    verdict: Option<tokio::sync::oneshot::Receiver<Result<(), TaskError>>>,
}

impl Frames {
    /// Frames read one after another as the COPY takes them (a dataset
    /// streamed from its file). A read error ends them, and the load rolls
    /// back with that error.
    pub fn read(schema: DataFrame, frames: impl Iterator<Item = Result<DataFrame, String>> + Send + 'static) -> Frames {
        let (tx, rx) = tokio::sync::oneshot::channel();
        Frames { schema, frames: Box::new(UntilError { frames, verdict: Some(tx) }), verdict: Some(rx) }
    }

    /// Frames received until the sender is dropped; the load commits only
    /// when `verdict` says Ok (and rolls back when it says Err or is
    /// dropped).
    pub fn stream(
        schema: DataFrame,
        frames: std::sync::mpsc::Receiver<DataFrame>,
        verdict: tokio::sync::oneshot::Receiver<Result<(), TaskError>>,
    ) -> Frames {
        Frames { schema, frames: Box::new(frames.into_iter()), verdict: Some(verdict) }
    }
}

/// Frames until the first error, which goes to the verdict (as does the
/// end, as Ok).
struct UntilError<I> {
    frames: I,
    verdict: Option<tokio::sync::oneshot::Sender<Result<(), TaskError>>>,
}

impl<I: Iterator<Item = Result<DataFrame, String>>> Iterator for UntilError<I> {
    type Item = DataFrame;

    fn next(&mut self) -> Option<DataFrame> {
        self.verdict.as_ref()?;
        let end = match self.frames.next() {
            Some(Ok(df)) => return Some(df),
            Some(Err(e)) => Err(TaskError::Failed(e)),
            None => Ok(()),
        };
        if let Some(tx) = self.verdict.take() {
            let _ = tx.send(end);
        }
        None
    }
}

/// What a load's transaction did.
pub enum Loaded {
    Rows { copied: u64, inserted: u64, updated: u64, deleted: u64 },
    /// An append this interval already made (found by its marker).
    AlreadyLoaded(Done),
}

/// Why a load's transaction failed: a COPY error, which the caller explains
/// with the source line of the row it names, or any other.
pub enum LoadError {
    Copy(sqlx::Error),
    Task(TaskError),
}

impl<E: Into<TaskError>> From<E> for LoadError {
    fn from(e: E) -> LoadError {
        LoadError::Task(e.into())
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

impl TableLoad {
    pub async fn build(to: LoadTarget, ctx: &TaskCtx) -> Result<TableLoad, TaskError> {
        let table = super::parse_table(&to.table).map_err(TaskError::Config)?;
        let pool = ctx.pg(&to.conn).await?;
        Ok(TableLoad { to, table, pool })
    }

    /// Checks the rows' columns against the table; every problem is reported.
    fn check_columns(&self, df: &DataFrame, cols: &[TableColumn], what: &str) -> Result<(), TaskError> {
        let mut problems = Vec::new();
        let mut unknown = Vec::new();
        for c in df.columns() {
            match cols.iter().find(|t| t.name == c.name().as_str()) {
                None => unknown.push(format!("`{}`", c.name())),
                Some(t) if !crate::pgcopy::compatible(c.dtype(), &t.pg_type) => problems.push(format!(
                    "column `{}`: the rows have {}, the table has {}",
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
            problems.push(format!("the rows lack {}, which the table requires (NOT NULL without a default)", missing.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TaskError::Failed(format!("cannot load {what} into {}: {}", self.table.display, problems.join("; "))))
        }
    }

    async fn create_table(&self, conn: &mut sqlx::PgConnection, df: &DataFrame) -> Result<(), TaskError> {
        let mut defs = Vec::new();
        for c in df.columns() {
            let ty = crate::pgcopy::pg_type(c.dtype())
                .ok_or_else(|| TaskError::Failed(format!("column `{}` has type {}, which has no Postgres type", c.name(), c.dtype())))?;
            defs.push(format!("{} {ty}", quote_ident(c.name())));
        }
        if self.to.mode == Mode::Upsert {
            defs.push(format!("PRIMARY KEY ({})", self.to.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")));
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

    /// COPYs the frames into `target` (whose columns are `table`) through
    /// the open transaction, encoding in a blocking thread while the
    /// previous chunk is sent. Binary when every column allows it.
    async fn copy(
        &self,
        conn: &mut sqlx::PgConnection,
        frames: Box<dyn Iterator<Item = DataFrame> + Send>,
        schema: &DataFrame,
        target: &str,
        table: &[TableColumn],
        partition: Option<Partition>,
    ) -> Result<Copied, LoadError> {
        let cols = schema.get_column_names().iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let pg_types: Vec<&str> = schema
            .get_column_names()
            .iter()
            .map(|c| table.iter().find(|t| t.name == c.as_str()).map_or("", |t| t.pg_type.as_str()))
            .collect();
        let plan = crate::pgcopy::binary_plan(schema, &pg_types);
        let stmt = match plan {
            Some(_) => format!("COPY {target} ({cols}) FROM STDIN WITH (FORMAT binary)"),
            None => format!("COPY {target} ({cols}) FROM STDIN"),
        };
        tracing::info!("COPY into {target} in {} format", if plan.is_some() { "binary" } else { "text" });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let columns = self.to.columns.clone();
        let encoder = tokio::task::spawn_blocking(move || encode_frames(frames, columns.as_deref(), plan.as_deref(), partition.as_ref(), &tx));
        let mut copy = conn.copy_in_raw(&stmt).await.map_err(LoadError::Copy)?;
        while let Some(bytes) = rx.recv().await {
            if let Err(e) = copy.send(bytes).await {
                // The encoder stops at its next chunk, when it finds the
                // channel closed.
                return Err(LoadError::Copy(e));
            }
        }
        let encoded = match encoder.await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                let _ = copy.abort(e.clone()).await;
                return Err(TaskError::Failed(e).into());
            }
            Err(e) => {
                let _ = copy.abort("the encoder stopped").await;
                return Err(TaskError::from_join("encoding rows for COPY", e).into());
            }
        };
        let rows = copy.finish().await.map_err(LoadError::Copy)?;
        if rows != encoded.rows {
            return Err(TaskError::Failed(format!(
                "rows are unaccounted for: {} rows sent to COPY but {rows} copied into {target} (a bug in sluice)",
                encoded.rows
            ))
            .into());
        }
        Ok(encoded)
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
                self.to.partition_column.as_deref().unwrap_or_default()
            )))
        }
    }
}

/// Rows whose partition column falls outside [start, end), as a count.
fn rows_outside(df: &DataFrame, column: &str, start: &str, end: &str, kind: &str) -> Result<usize, String> {
    let c = df.column(column).map_err(|_| format!("the rows have no partition column `{column}`"))?;
    let s = c.as_materialized_series();
    let (lo, hi, vals): (i64, i64, Vec<Option<i64>>) = match (kind, s.dtype()) {
        ("date", DataType::Date) => {
            let p = |x: &str| chrono::NaiveDate::parse_from_str(x, "%Y-%m-%d").map(|d| crate::formats::columns::date_to_days(d) as i64);
            let lo = p(start).map_err(|e| e.to_string())?;
            let hi = p(end).map_err(|e| e.to_string())?;
            (lo, hi, s.date().map_err(|e| e.to_string())?.physical().iter().map(|v| v.map(i64::from)).collect())
        }
        (_, DataType::Datetime(unit, _)) => {
            let to_us = |x: i64| match unit {
                TimeUnit::Nanoseconds => x / 1000,
                TimeUnit::Microseconds => x,
                TimeUnit::Milliseconds => x * 1000,
            };
            let parse = |x: &str| -> Result<i64, String> {
                if kind == "timestamptz" {
                    chrono::DateTime::parse_from_rfc3339(x).map(|t| t.timestamp_micros()).map_err(|e| e.to_string())
                } else {
                    chrono::NaiveDateTime::parse_from_str(x, "%Y-%m-%d %H:%M:%S%.6f")
                        .map(|t| t.and_utc().timestamp_micros())
                        .map_err(|e| e.to_string())
                }
            };
            let v = s.datetime().map_err(|e| e.to_string())?.physical().iter().map(|v| v.map(to_us)).collect();
            (parse(start)?, parse(end)?, v)
        }
        // Other combinations (a text column...) are left to Postgres.
        _ => return Ok(0),
    };
    Ok(vals.into_iter().filter(|v| v.is_none_or(|x| x < lo || x >= hi)).count())
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
pub struct Done {
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

/// replace_partition's check: rows outside the run's interval are counted.
struct Partition {
    column: String,
    start: String,
    end: String,
    /// date, timestamp or timestamptz.
    kind: String,
}

/// What the encoder sent.
#[derive(Default)]
struct Copied {
    rows: u64,
    /// Rows outside the interval (replace_partition).
    outside: usize,
}

/// Shapes a frame for COPY: the `columns` asked for, in types COPY takes.
fn shape(df: DataFrame, columns: Option<&[String]>) -> Result<DataFrame, String> {
    let df = match columns {
        Some(cols) => df.select(cols.iter().map(String::as_str)).map_err(|e| format!("columns: {e}"))?,
        None => df,
    };
    crate::pgcopy::prepare(df)
}

/// Encodes every frame into COPY chunks of 16,384 rows and sends them, until
/// the frames end or the receiver is gone (the COPY failed).
fn encode_frames(
    frames: Box<dyn Iterator<Item = DataFrame> + Send>,
    columns: Option<&[String]>,
    plan: Option<&[crate::pgcopy::Bin]>,
    partition: Option<&Partition>,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<Copied, String> {
    const ROWS_PER_CHUNK: usize = 16_384;
    let mut done = Copied::default();
    let mut header = plan.is_some();
    for frame in frames {
        let frame = shape(frame, columns)?;
        if let Some(p) = partition {
            done.outside += rows_outside(&frame, &p.column, &p.start, &p.end, &p.kind)?;
        }
        let mut start = 0;
        while start < frame.height() {
            let mut buf = Vec::with_capacity(1 << 20);
            if std::mem::take(&mut header) {
                buf.extend_from_slice(crate::pgcopy::BINARY_HEADER);
            }
            match plan {
                Some(p) => crate::pgcopy::encode_binary(&frame, p, start, ROWS_PER_CHUNK, done.rows as usize, &mut buf)?,
                None => crate::pgcopy::encode(&frame, start, ROWS_PER_CHUNK, &mut buf)?,
            }
            if tx.blocking_send(buf).is_err() {
                return Ok(done);
            }
            start += ROWS_PER_CHUNK;
        }
        done.rows += frame.height() as u64;
    }
    if plan.is_some() {
        let mut end = Vec::new();
        if header {
            end.extend_from_slice(crate::pgcopy::BINARY_HEADER);
        }
        end.extend_from_slice(crate::pgcopy::BINARY_TRAILER);
        let _ = tx.blocking_send(end);
    }
    Ok(done)
}

impl TableLoad {
    /// Loads the frames in one transaction, on a connection of its own that
    /// is closed, not pooled, after an error. `what` names the rows in
    /// errors ("dataset `orders`").
    pub async fn load(&self, ctx: &TaskCtx, frames: Frames, what: &str) -> Result<Loaded, LoadError> {
        let mut conn = self.pool.acquire().await.map_err(|e| TaskError::sql(format!("connection `{}`", self.to.conn), &e))?;
        let loaded = self.load_in_tx(ctx, &mut conn, frames, what).await;
        if loaded.is_err() {
            // The connection saw an error: it is not returned to the pool.
            conn.close_on_drop();
        }
        let loaded = loaded?;
        if let Loaded::Rows { copied, inserted, updated, deleted } = &loaded {
            tracing::info!(copied, inserted, updated, deleted, "loaded {what} into {}", self.table.display);
        }
        Ok(loaded)
    }

    /// The task's note and metrics for what the load did.
    pub fn outcome(&self, loaded: &Loaded) -> Outcome {
        let table = &self.table.display;
        match loaded {
            Loaded::AlreadyLoaded(done) => {
                let note = format!(
                    "already loaded: run {} (try {}) appended {} rows for this interval at {}; nothing appended again",
                    done.run_id,
                    done.try_number,
                    thousands(done.rows as u64),
                    done.loaded_at.to_rfc3339()
                );
                tracing::info!("{note} (delete its row from {} to load it again)", MARKER_TABLE);
                Outcome::note(note).metric("rows_inserted", 0).metric("rows_updated", 0).metric("rows_deleted", 0)
            }
            &Loaded::Rows { copied, inserted, updated, deleted } => {
                let mut note = format!("{} rows into {table}", thousands(copied));
                if updated > 0 || self.to.mode == Mode::Upsert {
                    note = format!("{} inserted, {} updated in {table}", thousands(inserted), thousands(updated));
                }
                if deleted > 0 {
                    note.push_str(&format!(" ({} replaced)", thousands(deleted)));
                }
                Outcome::note(note).metric("rows_inserted", inserted).metric("rows_updated", updated).metric("rows_deleted", deleted)
            }
        }
    }

    /// Everything that touches the table, in one transaction: on any error
    /// it rolls back and the table is exactly as it was.
    async fn load_in_tx(&self, ctx: &TaskCtx, conn: &mut sqlx::PgConnection, frames: Frames, what: &str) -> Result<Loaded, LoadError> {
        let Frames { schema, frames, verdict } = frames;
        let schema = shape(schema, self.to.columns.as_deref()).map_err(TaskError::Failed)?;
        if self.to.mode == Mode::Upsert {
            for k in &self.to.key {
                if schema.column(k).is_err() {
                    return Err(TaskError::Failed(format!("upsert key `{k}` is not a column of {what}")).into());
                }
            }
        }
        let mut tx = conn.begin().await?;
        if let Some(left) = ctx.remaining() {
            let ms = left.as_millis().max(1);
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL statement_timeout = {ms}"))).execute(&mut *tx).await?;
        }
        let cols = match table_columns(&mut tx, &self.table).await? {
            Some(c) => c,
            None if self.to.create => {
                self.create_table(&mut tx, &schema).await?;
                table_columns(&mut tx, &self.table).await?.ok_or_else(|| TaskError::Failed(format!("table {} vanished after it was created", self.table.display)))?
            }
            None => {
                return Err(TaskError::Failed(format!(
                    "table {} does not exist; create it (e.g. in a sql task) or set `create: true`",
                    self.table.display
                )).into());
            }
        };
        self.check_columns(&schema, &cols, what)?;

        let target = self.table.quoted.as_str();
        let (copied, inserted, updated, deleted) = match self.to.mode {
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
                let n = self.copy(&mut tx, frames, &schema, target, &cols, None).await?.rows;
                if let Some(m) = &marker {
                    m.insert(&mut tx, n).await?;
                }
                (n, n, 0, 0)
            }
            Mode::Replace => {
                let deleted = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM {target}"))).execute(&mut *tx).await?.rows_affected();
                let n = self.copy(&mut tx, frames, &schema, target, &cols, None).await?.rows;
                (n, n, 0, deleted)
            }
            Mode::ReplacePartition => {
                let pcol = self.to.partition_column.as_deref().ok_or_else(|| TaskError::Config("partition_column: mode replace_partition needs it".into()))?;
                let t = cols.iter().find(|c| c.name == pcol).ok_or_else(|| {
                    TaskError::Failed(format!("partition_column `{pcol}` is not a column of {}", self.table.display))
                })?;
                let (start, end, kind) = self.partition_bounds(ctx, &t.pg_type)?;
                let sql = format!("DELETE FROM {target} WHERE {} >= $1::{kind} AND {} < $2::{kind}", quote_ident(pcol), quote_ident(pcol));
                let deleted = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&start).bind(&end).execute(&mut *tx).await?.rows_affected();
                let p = Partition { column: pcol.to_string(), start, end, kind };
                let (start, end) = (p.start.clone(), p.end.clone());
                let c = self.copy(&mut tx, frames, &schema, target, &cols, Some(p)).await?;
                if c.outside > 0 {
                    return Err(TaskError::Failed(format!(
                        "{} row(s) have `{pcol}` outside the run's interval [{start}, {end}) (or null); a rerun could not replace them, so nothing was loaded; filter them in a transform",
                        c.outside
                    )).into());
                }
                (c.rows, c.rows, 0, deleted)
            }
            Mode::Upsert => {
                self.check_unique_key(&mut tx).await?;
                let stage = "sluice_upsert_stage";
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE TEMP TABLE {stage} (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP")))
                    .execute(&mut *tx)
                    .await?;
                let n = self.copy(&mut tx, frames, &schema, stage, &cols, None).await?.rows;
                let key_list = self.to.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
                self.check_no_duplicate_keys(&mut tx, stage, &key_list, what).await?;
                let names: Vec<String> = schema.get_column_names().iter().map(|c| c.to_string()).collect();
                let col_list = names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
                let updates: Vec<String> = names
                    .iter()
                    .filter(|c| !self.to.key.contains(c))
                    .map(|c| format!("{} = EXCLUDED.{}", quote_ident(c), quote_ident(c)))
                    .collect();
                let action = if updates.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", updates.join(", ")) };
                let sql = format!(
                    "WITH u AS (INSERT INTO {target} ({col_list}) SELECT {col_list} FROM {stage} ON CONFLICT ({key_list}) {action} RETURNING (xmax = 0) AS ins)
                     SELECT count(*) FILTER (WHERE ins) AS ins, count(*) FILTER (WHERE NOT ins) AS upd FROM u"
                );
                let r = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *tx).await?;
                (n, r.get::<i64, _>("ins") as u64, r.get::<i64, _>("upd") as u64, 0)
            }
        };
        if let Some(verdict) = verdict {
            match verdict.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(TaskError::Failed(format!("the reading of {what} stopped before it finished; nothing was loaded")).into()),
            }
        }
        tx.commit().await?;
        Ok(Loaded::Rows { copied, inserted, updated, deleted })
    }

    /// Fails when the staged rows repeat a key, naming up to five.
    async fn check_no_duplicate_keys(&self, conn: &mut sqlx::PgConnection, stage: &str, key_list: &str, what: &str) -> Result<(), TaskError> {
        let sql = format!("SELECT ROW({key_list})::text AS k, count(*) AS n FROM {stage} GROUP BY {key_list} HAVING count(*) > 1 ORDER BY 1 LIMIT 5");
        let dups = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await?;
        if dups.is_empty() {
            return Ok(());
        }
        let examples: Vec<String> = dups.iter().map(|r| format!("{} ({} rows)", r.get::<String, _>("k"), r.get::<i64, _>("n"))).collect();
        Err(TaskError::Failed(format!(
            "{what} has several rows with the same key ({}): {}; dedupe it first (a transform step `dedupe: {{keys: [...]}}`)",
            self.to.key.join(", "),
            examples.join(", ")
        )))
    }

    /// A COPY error names a row ("COPY t, line 3"); this says which line of
    /// which source file it came from, when `lineage` knows.
    pub fn copy_error(&self, what: &str, e: sqlx::Error, lineage: Option<&Lineage>) -> TaskError {
        let base = TaskError::sql(format!("loading {what} into {}", self.table.display), &e);
        let row = match &e {
            sqlx::Error::Database(db) => db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.r#where())
                .and_then(copy_line),
            _ => None,
        };
        let Some(row) = row else { return base };
        let kind = base.kind();
        let at = match lineage {
            Some(l) => match l.locate(row - 1) {
                Some((source, line)) => format!("the row COPY calls line {row} is {source}, line {line}"),
                None => format!("the row COPY calls line {row} is row {row} of {what}"),
            },
            None => format!("the row COPY calls line {row} is row {row} of {what} (written by a transform, so it has no source line)"),
        };
        TaskError::with_kind(kind, format!("{base}; {at}"))
    }
}

/// The row number in a COPY error's context: `COPY t, line 3, column x: ...`.
fn copy_line(context: &str) -> Option<u64> {
    let rest = context.strip_prefix("COPY ")?;
    let at = rest.find(", line ")?;
    rest[at + 7..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl TableLoad {
    async fn check_unique_key(&self, conn: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        let mut key: Vec<String> = self.to.key.clone();
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
                self.to.key.join(", "),
                self.table.display,
                self.to.key.join(", ")
            )))
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_end_at_the_first_error_which_the_verdict_carries() {
        let df = polars::df!("id" => [1i64, 2]).unwrap();
        let reads = vec![Ok(df.clone()), Err("cannot read dataset x: broken page".to_string()), Ok(df.clone())];
        let Frames { frames, verdict, .. } = Frames::read(df.clear(), reads.into_iter());
        assert_eq!(frames.count(), 1);
        let e = verdict.unwrap().try_recv().unwrap().unwrap_err();
        assert!(e.to_string().contains("broken page"), "{e}");
        // Every frame read: the verdict is Ok.
        let Frames { frames, verdict, .. } = Frames::read(df.clear(), vec![Ok(df.clone()), Ok(df)].into_iter());
        assert_eq!(frames.count(), 2);
        assert!(verdict.unwrap().try_recv().unwrap().is_ok());
    }
}
