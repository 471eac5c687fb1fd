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
//! as it was. The table work (`table.rs`) also serves an extract's `into`,
//! which streams its rows into COPY as it reads them.

mod table;

use schemars::JsonSchema;
use serde::Deserialize;

pub use table::{Frames, LoadError, Loaded, TableLoad};

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};

/// Loads a dataset into a Postgres table through COPY, in one transaction.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct LoadConfig {
    /// The upstream task whose dataset is loaded (or `X_rejects`).
    pub input: String,
    /// The table and how to write it.
    #[serde(flatten)]
    pub target: LoadTarget,
}

/// Where and how rows are loaded: the keys of a `load` task besides
/// `input`, and an extract's `into`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadTarget {
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
    /// Create the table from the rows' columns when it does not exist.
    #[serde(default)]
    pub create: bool,
    /// Load only these columns (default: all of them).
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

impl LoadTarget {
    /// Checks the target's keys; `prefix` is where they sit in the task
    /// (`""` for a load, `"into."` for an extract).
    pub fn validate(&self, cx: &mut ValidateCx<'_, '_>, prefix: &str) {
        let key = |k: &str| format!("{prefix}{k}");
        cx.check_conn(&key("conn"), &self.conn, "postgres");
        if let Err(e) = parse_table(&self.table)
            && !crate::template::is_template(&self.table)
        {
            cx.error(&key("table"), e);
        }
        match self.mode {
            Mode::Upsert if self.key.is_empty() => cx.error(&key("key"), "mode upsert needs `key: [columns]`"),
            Mode::ReplacePartition if self.partition_column.is_none() => {
                cx.error(&key("mode"), "mode replace_partition needs `partition_column`")
            }
            _ => {}
        }
        if self.mode != Mode::Upsert && !self.key.is_empty() {
            cx.warning(&key("key"), "`key` is only used by mode upsert");
        }
        if self.mode != Mode::ReplacePartition && self.partition_column.is_some() {
            cx.warning(&key("partition_column"), "`partition_column` is only used by mode replace_partition");
        }
    }

    /// The table as an asset, for data-aware schedules.
    pub fn assets(&self) -> Vec<String> {
        match crate::template::is_template(&self.conn) || crate::template::is_template(&self.table) {
            true => Vec::new(),
            false => vec![format!("postgres://{}/{}", self.conn, self.table)],
        }
    }
}

pub struct Load {
    input: String,
    target: TableLoad,
    path: std::path::PathBuf,
    /// Where the dataset's rows came from, when an extract wrote it.
    lineage_uri: Option<String>,
}

impl TaskType for LoadConfig {
    const NAME: &'static str = "load";
    type Built = Load;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        cx.check_input("input", &self.input);
        self.target.validate(cx, "");
    }

    fn inputs(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn assets(&self) -> Vec<String> {
        self.target.assets()
    }

    fn connections(&self) -> Vec<String> {
        vec![self.target.conn.clone()]
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Load, TaskError> {
        let ds = ctx.input(&self.input)?.clone();
        let path = ctx.local_dataset(&ds).await?;
        let target = TableLoad::build(self.target, ctx).await?;
        Ok(Load { input: self.input, target, path, lineage_uri: ds.lineage.clone() })
    }
}

impl Run for Load {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        // The dataset is read a few row groups at a time as COPY takes
        // them: a load's memory does not grow with the dataset.
        let path = self.path.clone();
        let (columns, batches) = tokio::task::spawn_blocking(move || crate::datasets::batches(&path))
            .await
            .map_err(|e| TaskError::from_join("reading the dataset", e))?
            .map_err(TaskError::Failed)?;
        let what = format!("dataset `{}`", self.input);
        match self.target.load(ctx, Frames::read(columns, batches), &what).await {
            Ok(loaded) => Ok(self.target.outcome(&loaded)),
            Err(LoadError::Copy(e)) => {
                let lineage = self.lineage(ctx).await;
                Err(self.target.copy_error(&what, e, lineage.as_ref()))
            }
            Err(LoadError::Task(e)) => Err(e),
        }
    }
}

impl Load {
    async fn lineage(&self, ctx: &TaskCtx) -> Option<crate::formats::Lineage> {
        let uri = self.lineage_uri.as_ref()?;
        let path = ctx.local_artifact(uri).await.ok()?;
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_has_its_targets_keys() {
        let keys = crate::tasks::schema_keys::<LoadConfig>();
        assert_eq!(keys, ["columns", "conn", "create", "input", "key", "mode", "partition_column", "table"]);
        let into = crate::tasks::schema_keys::<LoadTarget>();
        assert_eq!(into, ["columns", "conn", "create", "key", "mode", "partition_column", "table"]);
        // Unknown keys inside an extract's `into` are refused by serde.
        let v: serde_yaml::Value = serde_yaml::from_str("{conn: w, table: t, mode: replace, tabel: x}").unwrap();
        assert!(serde_yaml::from_value::<LoadTarget>(v).unwrap_err().to_string().contains("tabel"));
    }

    #[test]
    fn table_names() {
        assert_eq!(parse_table("shop.orders").unwrap().quoted, "\"shop\".\"orders\"");
        assert_eq!(parse_table("orders").unwrap().quoted, "\"orders\"");
        assert!(parse_table("a.b.c").is_err());
        assert!(parse_table("orders; drop table x").is_err());
    }
}
