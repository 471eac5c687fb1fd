//! Task types.
//!
//! Each task type lives in one file here and has two halves:
//!
//! * the **declared config**: a `serde` + `schemars` struct with
//!   `deny_unknown_fields`, exactly what the YAML says. Its `///` docs become
//!   the JSON Schema descriptions that editors show. It is validated without
//!   IO beyond [`ValidationEnv`] (file and connection lookups).
//! * the **built task** ([`TaskType::Built`]): the config after templating,
//!   with its connections resolved and its clients (pools, S3 clients) in
//!   hand, ready to [`Run::run`].
//!
//! Adding a task type means adding its file and one line to [`registry!`]
//! below; nothing else in sluice names task types.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connections::{Connection, Connections};
use crate::dag::schedule::DataInterval;
use crate::datasets::{DatasetRef, DatasetSummary};
use crate::diag::{At, Diagnostics};
use crate::resources::Resources;
use crate::template::Templates;

pub mod error;
pub mod log;
pub mod polars_warnings;
pub mod scratch;
pub mod sqlcheck;
pub use error::{ErrorKind, TaskError};
pub use log::TryLog;

/// What a task type implements.
pub trait TaskType: DeserializeOwned + JsonSchema + std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The `type:` of this task in DAG files.
    const NAME: &'static str;

    /// Config keys whose strings are *not* rendered before the config is
    /// parsed, because the task renders them itself (e.g. SQL bind
    /// parameters, rendered to native values).
    const RAW_KEYS: &'static [&'static str] = &[];

    /// The built task.
    type Built: Run;

    /// Static checks beyond types: files exist, connections are defined,
    /// option combinations make sense. Templates in strings are checked by
    /// the loader for every task type.
    fn validate(&self, _cx: &mut ValidateCx<'_, '_>) {}

    /// Upstream task ids whose datasets this task reads. They are implicit
    /// dependencies.
    fn inputs(&self) -> Vec<String> {
        Vec::new()
    }

    /// What this task leaves for downstream tasks to read, so that an input
    /// naming a task without a dataset (or without rejects) is refused at
    /// validation.
    fn produces(&self) -> Produces {
        Produces::default()
    }

    /// Connection ids this task uses (for `dags show` and the environment check).
    fn connections(&self) -> Vec<String> {
        Vec::new()
    }

    /// Assets a successful try updates without the task listing them in
    /// `outlets` (a load's table, an S3 put's destination). Called on the
    /// rendered config for a try, and on the declared one (where names
    /// with templates are left out) for `sluice assets list`.
    fn assets(&self) -> Vec<String> {
        Vec::new()
    }

    /// Resolves connections and opens clients for one try. `self` has been
    /// rendered with the try's template variables.
    fn build(self, ctx: &TaskCtx) -> impl Future<Output = Result<Self::Built, TaskError>> + Send;
}

/// A built task, ready to run one try.
pub trait Run: Send {
    fn run(self, ctx: &TaskCtx) -> impl Future<Output = Result<Outcome, TaskError>> + Send;
}

/// Declares the task types: `Variant => module::Config`. Generates the
/// modules, the [`TaskConfig`] enum, and its dispatch.
macro_rules! registry {
    ($($variant:ident => $module:ident :: $config:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// A task's declared config, of any type.
        #[derive(Debug)]
        pub enum TaskConfig {
            $($variant($module::$config)),*
        }

        /// Every task type name, in registry order.
        pub const TYPES: &[&str] = &[$(<$module::$config as TaskType>::NAME),*];

        impl TaskConfig {
            /// Parses the type-specific keys of a task of type `kind`.
            /// Returns None for an unknown type.
            pub fn parse(
                kind: &str,
                value: serde_yaml::Value,
            ) -> Option<Result<TaskConfig, serde_path_to_error::Error<serde_yaml::Error>>> {
                match kind {
                    $(<$module::$config as TaskType>::NAME => Some(
                        serde_path_to_error::deserialize(value).map(TaskConfig::$variant),
                    ),)*
                    _ => None,
                }
            }

            pub fn type_name(&self) -> &'static str {
                match self { $(TaskConfig::$variant(_) => <$module::$config as TaskType>::NAME),* }
            }

            pub fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
                match self { $(TaskConfig::$variant(c) => c.validate(cx)),* }
            }

            pub fn inputs(&self) -> Vec<String> {
                match self { $(TaskConfig::$variant(c) => c.inputs()),* }
            }

            pub fn produces(&self) -> Produces {
                match self { $(TaskConfig::$variant(c) => c.produces()),* }
            }

            pub fn connections(&self) -> Vec<String> {
                match self { $(TaskConfig::$variant(c) => c.connections()),* }
            }

            pub fn assets(&self) -> Vec<String> {
                match self { $(TaskConfig::$variant(c) => c.assets()),* }
            }

            /// Builds and runs one try.
            pub async fn execute(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
                match self {
                    $(TaskConfig::$variant(c) => c.build(ctx).await?.run(ctx).await,)*
                }
            }

            /// The keys of a type's config, for unknown-key checks.
            pub fn keys(kind: &str) -> Option<Vec<String>> {
                match kind {
                    $(<$module::$config as TaskType>::NAME => Some(schema_keys::<$module::$config>()),)*
                    _ => None,
                }
            }

            /// Keys that the loader must not render.
            pub fn raw_keys(kind: &str) -> &'static [&'static str] {
                match kind {
                    $(<$module::$config as TaskType>::NAME => <$module::$config as TaskType>::RAW_KEYS,)*
                    _ => &[],
                }
            }

            /// JSON Schemas of every type's config, by type name.
            pub fn schemas(generator: &mut schemars::SchemaGenerator) -> Vec<(&'static str, schemars::Schema)> {
                vec![$((<$module::$config as TaskType>::NAME, generator.subschema_for::<$module::$config>())),*]
            }
        }
    };
}

// The task types. One line each.
registry! {
    Shell => shell::ShellConfig,
    Sql => sql::SqlConfig,
    Extract => extract::ExtractConfig,
    Transform => transform::TransformConfig,
    Load => load::LoadConfig,
    S3 => s3::S3Config,
    Check => check::CheckConfig,
    Report => report::ReportConfig,
    Email => email::EmailConfig,
    Sensor => sensor::SensorConfig,
}

impl TaskConfig {
    /// Whether the task renders a report (the web dashboard shows those,
    /// through [`report::preview`]).
    pub fn renders_report(&self) -> bool {
        matches!(self, TaskConfig::Report(_))
    }
}

/// The property names of a config struct's JSON Schema.
pub fn schema_keys<T: JsonSchema>() -> Vec<String> {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
    let mut keys: Vec<String> =
        schema.get("properties").and_then(|p| p.as_object()).map(|p| p.keys().cloned().collect()).unwrap_or_default();
    keys.sort();
    keys
}

/// The datasets a task writes for downstream tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Produces {
    /// A dataset named after the task.
    pub dataset: bool,
    /// A `<task>_rejects` dataset (quarantined rows).
    pub rejects: bool,
    /// Files to attach to mail (a report's PDF).
    pub artifacts: bool,
    /// The task is mapped (`expand`): one dataset per instance, none as a whole.
    pub mapped: bool,
}

/// What validation may look at outside the DAG file.
pub trait ValidationEnv {
    /// Reads a project file by a path relative to the project root.
    fn read_file(&self, rel: &str) -> Result<String, String>;
    /// The connections of this environment.
    fn connections(&self) -> &Connections;
}

/// Validation context for one task.
pub struct ValidateCx<'a, 'd> {
    pub diags: &'a mut Diagnostics<'d>,
    /// Key path of the task, e.g. `tasks[3]`.
    pub path: String,
    pub env: &'a dyn ValidationEnv,
    pub templates: &'a Templates,
    pub params: &'a BTreeSet<String>,
    /// Every task of the DAG, with what it produces.
    pub tasks: &'a BTreeMap<String, Produces>,
}

impl ValidateCx<'_, '_> {
    pub fn key_path(&self, key: &str) -> String {
        crate::diag::join(&self.path, key)
    }

    pub fn error(&mut self, key: &str, msg: impl Into<String>) {
        let p = self.key_path(key);
        self.diags.error(At::Value(&p), msg);
    }

    pub fn warning(&mut self, key: &str, msg: impl Into<String>) {
        let p = self.key_path(key);
        self.diags.warning(At::Value(&p), msg);
    }

    /// Checks that a referenced project file exists and that its content
    /// compiles as a template. Templated paths are checked at run time.
    pub fn check_file(&mut self, key: &str, rel: &str) -> Option<String> {
        if crate::template::is_template(rel) {
            return None;
        }
        match self.env.read_file(rel) {
            Ok(text) => {
                for problem in self.templates.check(&text, self.params, Some(&self.env.connections().ids())) {
                    self.error(key, format!("in {rel}: {problem}"));
                }
                Some(text)
            }
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    /// Checks a connection reference of the given kind (`postgres`, `s3`...).
    pub fn check_conn(&mut self, key: &str, id: &str, kind: &str) {
        if crate::template::is_template(id) {
            return;
        }
        let p = self.key_path(key);
        self.env.connections().check_reference(id, kind, At::Value(&p), self.diags);
    }

    /// Checks that an input names a task of this DAG that writes a
    /// dataset (or, for `X_rejects`, a task that quarantines rows).
    pub fn check_input(&mut self, key: &str, id: &str) {
        if crate::template::is_template(id) {
            return;
        }
        match self.tasks.get(id) {
            Some(p) if p.mapped => self.error(
                key,
                format!(
                    "input `{id}` is a mapped task (`expand`): each instance has its own dataset; read them one by one in a mapped task, or their outputs as `upstream.{id}` (a list)"
                ),
            ),
            Some(p) if p.dataset => {}
            Some(_) => self.error(
                key,
                format!("input `{id}` is a task that writes no dataset; only extract and transform tasks produce datasets to read, and an extract with `into` loads its rows into a table instead"),
            ),
            None => match id.strip_suffix("_rejects").and_then(|t| self.tasks.get(t).map(|p| (t, p))) {
                Some((_, p)) if p.rejects => {}
                Some((t, _)) => self.error(
                    key,
                    format!(
                        "input `{id}` names the rejects of `{t}`, which keeps none: an extract quarantines rows only with `on_bad_rows: quarantine` (and never from Parquet), a transform only with `rejects:`"
                    ),
                ),
                None => {
                    let hint = crate::diag::hint(id, self.tasks.keys().map(String::as_str));
                    self.error(key, format!("input `{id}` is not a task of this DAG{hint}"));
                }
            },
        }
    }
}

impl ValidateCx<'_, '_> {
    /// Checks that `id` names a task of this DAG whose files can be attached.
    pub fn check_artifacts(&mut self, key: &str, id: &str) {
        if crate::template::is_template(id) {
            return;
        }
        match self.tasks.get(id) {
            Some(p) if p.artifacts => {}
            Some(_) => self.error(key, format!("`{id}` writes no file to attach; attach names tasks that write files, such as a report")),
            None => {
                let hint = crate::diag::hint(id, self.tasks.keys().map(String::as_str));
                self.error(key, format!("`{id}` is not a task of this DAG{hint}"));
            }
        }
    }
}

/// Everything a running try can use.
pub struct TaskCtx {
    pub dag_id: String,
    pub task_id: String,
    pub run_id: i64,
    pub try_number: i32,
    pub logical_date: DateTime<Utc>,
    pub interval: DataInterval,
    pub tz: Tz,
    /// Template variables of this try.
    pub vars: minijinja::Value,
    pub res: Arc<Resources>,
    /// Datasets of upstream tasks, by task id.
    pub inputs: BTreeMap<String, DatasetRef>,
    /// Outputs of upstream tasks (metrics, notes, artifacts), by task id.
    pub upstream: serde_json::Map<String, serde_json::Value>,
    /// When the try's execution_timeout expires.
    pub deadline: Option<tokio::time::Instant>,
    pub log: TryLog,
    /// True under `sluice tasks test`: nothing is recorded in the state store.
    pub test_mode: bool,
    /// A private folder for this try's temporary files, made on first use
    /// and removed afterwards.
    pub scratch: Arc<scratch::Scratch>,
    /// When a rescheduled sensor's try first poked (None on a try's first
    /// turn): its timeout counts from there.
    pub poking_since: Option<DateTime<Utc>>,
}

impl TaskCtx {
    /// Renders a template with this try's variables.
    pub fn render(&self, src: &str) -> Result<String, TaskError> {
        Ok(self.res.templates.render(src, &self.vars)?)
    }

    /// Renders a single-expression template (`{{ params.n }}`) to a native
    /// value; other strings render to strings.
    pub fn render_native(&self, v: &serde_yaml::Value) -> Result<serde_json::Value, TaskError> {
        Ok(self.res.templates.render_native(v, &self.vars)?)
    }

    /// A project file's path.
    pub fn project_path(&self, rel: &str) -> PathBuf {
        self.res.project_root.join(rel)
    }

    /// Reads a project file (SQL, report definitions) and renders it.
    pub fn read_template_file(&self, rel: &str) -> Result<String, TaskError> {
        let path = self.project_path(rel);
        // A project file that is missing now will be missing on the next try.
        let text = std::fs::read_to_string(&path).map_err(|e| TaskError::permanent(format!("cannot read {}: {e}", path.display())))?;
        self.render(&text).map_err(|e| TaskError::Config(format!("in {rel}: {e}")))
    }

    pub fn conn(&self, id: &str, kind: &str) -> Result<&Connection, TaskError> {
        let c = self.res.connections.get(id)?;
        c.expect_kind(kind)?;
        Ok(c)
    }

    /// A connection pool for a Postgres connection, shared by the process.
    pub async fn pg(&self, id: &str) -> Result<sqlx::PgPool, TaskError> {
        let c = self.conn(id, "postgres")?;
        self.res.pg_pool(c).await
    }

    /// Time left before the try's deadline.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// The run's folder name in the staging area: the run id, or `test`
    /// under `sluice tasks test` (so that a test never overwrites a run's data).
    pub fn run_key(&self) -> String {
        if self.test_mode { "test".into() } else { self.run_id.to_string() }
    }

    /// A temporary path for a dataset being written: next to its final
    /// place for local staging (so that the rename is atomic), in the
    /// scratch folder for S3 staging.
    pub fn dataset_tmp(&self, name: &str) -> Result<PathBuf, TaskError> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        match &self.res.staging {
            crate::datasets::Staging::Local(root) => Ok(root.join(&self.dag_id).join(self.run_key()).join(format!(
                ".{name}.parquet.tmp-{}-{}",
                std::process::id(),
                &unique[..12]
            ))),
            crate::datasets::Staging::S3 { .. } => Ok(self.scratch.path()?.join(format!("{name}-{}.parquet", &unique[..12]))),
        }
    }

    /// Moves a finished temporary Parquet file to its place in the staging
    /// area as dataset `name`.
    pub async fn commit_dataset(
        &self,
        tmp: &std::path::Path,
        name: &str,
        rows: u64,
        schema: &polars::prelude::Schema,
    ) -> Result<DatasetSummary, TaskError> {
        let bytes = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
        let uri = self.commit_file(tmp, &format!("{name}.parquet")).await?;
        tracing::info!(dataset = name, rows, bytes, uri = %uri, "dataset written");
        Ok(DatasetSummary { uri, rows, bytes, schema: crate::datasets::schema_of(schema), lineage: None })
    }

    /// Moves a finished file into the run's staging folder as `file_name`
    /// (atomically: a rename locally, one object on S3); returns its URI.
    pub async fn commit_file(&self, tmp: &std::path::Path, file_name: &str) -> Result<String, TaskError> {
        match &self.res.staging {
            crate::datasets::Staging::Local(root) => {
                let dir = root.join(&self.dag_id).join(self.run_key());
                std::fs::create_dir_all(&dir).map_err(|e| TaskError::Failed(format!("cannot create {}: {e}", dir.display())))?;
                let dest = dir.join(file_name);
                if std::fs::rename(tmp, &dest).is_err() {
                    // A temporary file on another file system: copy next to the
                    // destination first, then rename.
                    let near = dir.join(format!(".{file_name}.tmp-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
                    std::fs::copy(tmp, &near).map_err(|e| TaskError::Failed(format!("cannot copy to {}: {e}", near.display())))?;
                    std::fs::rename(&near, &dest).map_err(|e| TaskError::Failed(format!("cannot move to {}: {e}", dest.display())))?;
                    let _ = std::fs::remove_file(tmp);
                }
                Ok(dest.display().to_string())
            }
            crate::datasets::Staging::S3 { root, .. } => {
                let (client, conn) = self.res.staging_client()?;
                let to = root.join(&format!("{}/{}/{file_name}", self.dag_id, self.run_key()));
                crate::s3::upload(&client, tmp, &to).await.map_err(|e| {
                    TaskError::with_kind(
                        e.kind(),
                        format!(
                            "uploading {file_name} to the staging area (S3 connection `{}` at {}): {e}",
                            conn.id,
                            crate::s3::endpoint_of(&conn)
                        ),
                    )
                })?;
                let _ = std::fs::remove_file(tmp);
                Ok(to.to_string())
            }
        }
    }

    /// A local path to a file in the staging area (downloaded when on S3).
    pub async fn local_artifact(&self, uri: &str) -> Result<PathBuf, TaskError> {
        let summary = DatasetSummary { uri: uri.to_string(), rows: 0, bytes: 0, schema: Vec::new(), lineage: None };
        self.local_dataset(&summary).await
    }

    /// Writes a whole DataFrame as dataset `name`.
    pub async fn write_dataset(&self, name: &str, df: &mut polars::prelude::DataFrame) -> Result<DatasetSummary, TaskError> {
        let tmp = self.dataset_tmp(name)?;
        let mut frame = std::mem::take(df);
        let tmp2 = tmp.clone();
        let (frame, res) = tokio::task::spawn_blocking(move || {
            let r = crate::datasets::write_frame(&tmp2, &mut frame);
            (frame, r)
        })
        .await
        .map_err(|e| TaskError::from_join("writing the dataset", e))?;
        *df = frame;
        res.map_err(TaskError::Failed)?;
        let schema = df.schema().as_ref().clone();
        self.commit_dataset(&tmp, name, df.height() as u64, &schema).await
    }

    /// A local path to a dataset's Parquet file (downloaded when on S3).
    pub async fn local_dataset(&self, ds: &DatasetSummary) -> Result<PathBuf, TaskError> {
        if ds.uri.starts_with("s3://") {
            if !matches!(self.res.staging, crate::datasets::Staging::S3 { .. }) {
                return Err(TaskError::permanent(format!(
                    "dataset {} is on S3 but SLUICE_STAGING here is not an s3:// prefix; every worker needs the same SLUICE_STAGING",
                    ds.uri
                )));
            }
            let (client, conn) = self.res.staging_client()?;
            let from = crate::s3::S3Uri::parse(&ds.uri).map_err(TaskError::Failed)?;
            let to = self.scratch.path()?.join(format!("in-{}.parquet", uuid::Uuid::new_v4().simple()));
            crate::s3::download(&client, &from, &to).await.map_err(|e| {
                TaskError::with_kind(
                    e.kind(),
                    format!(
                        "reading the dataset from the staging area (S3 connection `{}` at {}): {e}",
                        conn.id,
                        crate::s3::endpoint_of(&conn)
                    ),
                )
            })?;
            Ok(to)
        } else {
            let p = PathBuf::from(&ds.uri);
            if !p.exists() {
                return Err(TaskError::Failed(format!(
                    "dataset {} is gone from the staging area; clear and rerun the task that produced it",
                    ds.uri
                )));
            }
            Ok(p)
        }
    }

    /// The dataset of upstream task `id`.
    pub fn input(&self, id: &str) -> Result<&DatasetRef, TaskError> {
        self.inputs.get(id).ok_or_else(|| match self.test_mode {
            // `sluice tasks test` reads upstream datasets from a recorded run.
            true => TaskError::permanent(format!(
                "input `{id}` has no dataset here: `tasks test` reads it from a run of the DAG with the same logical date, \
                 and there is none with `{id}` done. Run the DAG first (`sluice run {dag}`), then test this task with \
                 `--run RUN_ID` (the run id `sluice run` printed, or `sluice runs list {dag}`)",
                dag = self.dag_id
            )),
            false => TaskError::Failed(format!("input `{id}` has no dataset in this run (did `{id}` produce one, and did it succeed?)")),
        })
    }
}

/// What a successful try produced.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    /// A short human summary for the run table, e.g. `1,204 rows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Numbers and facts recorded on the task instance.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The dataset this task produced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSummary>,
    /// Bad rows, by reason, and the `_rejects` dataset when quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<crate::datasets::RejectsSummary>,
    /// Files this task produced (a report PDF...), by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Assets this try updated (beyond the task's `outlets`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assets: Vec<String>,
    /// Problems that did not fail the task (a `severity: warn` check).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The task decided it had nothing to do: the instance becomes `skipped`.
    #[serde(skip)]
    pub skipped: bool,
    /// A sensor in reschedule mode found nothing yet: the instance becomes
    /// `up_for_reschedule` and the same try resumes at this time.
    #[serde(skip)]
    pub reschedule_at: Option<DateTime<Utc>>,
}

impl Outcome {
    pub fn note(note: impl Into<String>) -> Outcome {
        Outcome { note: Some(note.into()), ..Default::default() }
    }
    pub fn metric(mut self, key: &str, v: impl Into<serde_json::Value>) -> Outcome {
        self.metrics.insert(key.to_string(), v.into());
        self
    }
}

/// Formats a count with thousands separators: 1234567 -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    crate::report::def::fmt::thousands(n.into())
}
