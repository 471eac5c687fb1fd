//! `sluice dags ...`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use comfy_table::{Table, presets};

use super::{App, EXIT_CONFIG};
use crate::dag::graph;

#[derive(Subcommand, Debug)]
pub enum DagsCmd {
    /// List the DAGs: id, schedule, task count, file, paused.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check DAG files and report every problem with file:line:column.
    /// Exits with 78 (EX_CONFIG) when any DAG is invalid.
    Validate {
        /// DAG files or folders. Default: the DAGs folder.
        paths: Vec<PathBuf>,
        /// Do not look at the environment: connections are checked against
        /// config/connections.yaml only.
        #[arg(long)]
        no_environment: bool,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Draw a DAG's graph.
    Show {
        /// The DAG.
        dag: String,
        /// text, dot (Graphviz: `| dot -Tsvg > dag.svg`) or mermaid.
        #[arg(long, value_enum, default_value = "text")]
        format: ShowFormat,
        /// Draw the version of the DAG file this run was created with.
        #[arg(long, value_name = "RUN_ID")]
        run: Option<i64>,
    },
    /// Print the JSON Schema of DAG files (for editors using yaml-language-server).
    Schema,
    /// Stop scheduling a DAG (running runs finish; queued runs wait).
    Pause { dag: String },
    /// Resume scheduling a DAG.
    Unpause { dag: String },
    /// Queue a run of a DAG; a running daemon starts it within a second.
    Trigger {
        dag: String,
        #[command(flatten)]
        interval: super::IntervalArgs,
    },
    /// Show the DAG files that currently fail to load (a running daemon keeps
    /// the last good version of their DAGs).
    ListErrors,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShowFormat {
    Text,
    Dot,
    Mermaid,
}

pub async fn run(app: &App, cmd: DagsCmd) -> Result<ExitCode> {
    match cmd {
        DagsCmd::List { json } => list(app, json).await,
        DagsCmd::Validate { paths, no_environment, json } => validate(app, paths, no_environment, json),
        DagsCmd::Show { dag, format, run } => {
            let (bag, conns) = app.load(true)?;
            let dag = match run {
                Some(run_id) => match version_of_run(app, &bag, &conns, &dag, run_id).await? {
                    Ok(d) => d,
                    Err(code) => return Ok(code),
                },
                None => match bag.get(&dag) {
                    Ok(d) => d,
                    Err(e) => return Ok(super::config_exit(&e)),
                },
            };
            let out = match format {
                ShowFormat::Text => graph::to_text(&dag),
                ShowFormat::Dot => graph::to_dot(&dag),
                ShowFormat::Mermaid => graph::to_mermaid(&dag),
            };
            out!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        DagsCmd::Schema => {
            outln!("{}", serde_json::to_string_pretty(&dag_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        DagsCmd::Pause { dag } => set_paused(app, &dag, true).await,
        DagsCmd::Unpause { dag } => set_paused(app, &dag, false).await,
        DagsCmd::Trigger { dag, interval } => trigger(app, &dag, &interval).await,
        DagsCmd::ListErrors => {
            let (bag, _) = app.load(true)?;
            let mut n = 0;
            for (file, id) in &bag.failed {
                n += 1;
                outln!("{} ({}):", file.display(), id.as_deref().unwrap_or("?"));
                for d in bag.errors().filter(|d| &d.file == file) {
                    outln!("  {d}");
                }
            }
            if n == 0 {
                outln!("every DAG file loads");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The DAG as the version of its file that run `run_id` was created with.
async fn version_of_run(
    app: &App,
    bag: &crate::loader::DagBag,
    conns: &crate::connections::Connections,
    dag_id: &str,
    run_id: i64,
) -> Result<Result<std::sync::Arc<crate::dag::Dag>, ExitCode>> {
    let store = app.store().await?;
    let Some(run) = store.run(run_id).await? else {
        return Ok(Err(super::config_exit(&format!("run {run_id} does not exist; `sluice runs list {dag_id}` shows its runs"))));
    };
    if run.dag_id != dag_id {
        return Ok(Err(super::config_exit(&format!("run {run_id} belongs to DAG `{}`, not `{dag_id}`", run.dag_id))));
    }
    let (hash, source) = match store.run_dag_version(run_id).await? {
        Some((h, Some(s))) => (h, s),
        _ => {
            return Ok(Err(super::config_exit(&format!(
                "run {run_id} was made before sluice kept DAG versions; its file's text is not stored"
            ))));
        }
    };
    let file = bag.dags.get(dag_id).map(|d| d.file.clone()).unwrap_or_else(|| app.project.dags_dir.join(format!("{dag_id}.yaml")));
    let parsed = crate::loader::parse_source(&file, &source, &app.project.root, conns, &app.templates);
    match parsed.dag {
        Some(d) => {
            if bag.dags.get(dag_id).is_some_and(|now| now.file_hash != hash) {
                eprintln!("run {run_id} ran version {} of {dag_id}; the file has changed since", &hash[..12.min(hash.len())]);
            }
            Ok(Ok(std::sync::Arc::new(d)))
        }
        None => {
            let problems: Vec<String> = parsed.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
            Ok(Err(super::config_exit(&format!(
                "the version run {run_id} ran no longer loads (a connection or file it named is gone?):\n{}",
                problems.join("\n")
            ))))
        }
    }
}

async fn set_paused(app: &App, dag_id: &str, paused: bool) -> Result<ExitCode> {
    let (bag, _) = app.load(true)?;
    let store = app.store().await?;
    let dag = bag.get(dag_id);
    if let Err(e) = crate::actions::set_paused(&store, dag_id, dag.as_deref().ok(), paused).await {
        return match (e, &dag) {
            (crate::actions::ActionError::NotFound(_), Err(load)) => Ok(super::config_exit(load)),
            (e, _) => super::action_exit(e),
        };
    }
    if dag.is_err() {
        // A DAG whose file is broken right now still has runs in the store;
        // pausing it (to stop those) must not wait for the file to be fixed.
        eprintln!("warning: {dag_id}'s file does not load right now; the flag was set on the stored DAG");
    }
    outln!("{dag_id} is {}", if paused { "paused: no new runs are scheduled or started" } else { "unpaused" });
    Ok(ExitCode::SUCCESS)
}

async fn trigger(app: &App, dag_id: &str, args: &super::IntervalArgs) -> Result<ExitCode> {
    let (dag, _) = match super::load_dag(app, dag_id)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let conf = crate::dag::parse_conf_args(&args.conf).map_err(anyhow::Error::msg)?;
    let when = args.when()?;
    let store = app.store().await?;
    match crate::actions::trigger(&store, &dag, &conf, when, chrono::Utc::now()).await {
        Ok(run) => {
            outln!(
                "run {} of {dag_id} queued (logical date {}); a running daemon starts it within a second",
                run.run_id,
                run.logical_date.to_rfc3339()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => super::action_exit(e),
    }
}

async fn list(app: &App, json: bool) -> Result<ExitCode> {
    let (bag, _) = app.load(true)?;
    // Paused flags live in the state store; listing works without one.
    let paused = match &app.global.database_url {
        None => None,
        Some(_) => match app.store().await {
            Ok(store) => {
                let dags: Vec<&crate::dag::Dag> = bag.dags.values().map(|d| d.as_ref()).collect();
                store.sync_dags(&dags).await.ok();
                store.paused_dags().await.ok()
            }
            Err(e) => {
                eprintln!("warning: {e:#}; the paused column is unknown");
                None
            }
        },
    };
    let paused_of = |id: &str| paused.as_ref().map(|p| p.get(id).copied().unwrap_or(false));
    if json {
        let items: Vec<serde_json::Value> = bag
            .dags
            .values()
            .map(|d| {
                serde_json::json!({
                    "dag_id": d.dag_id,
                    "schedule": d.schedule.as_ref().map(|s| s.expr.clone()),
                    "timezone": d.timezone.name(),
                    "tasks": d.tasks.len(),
                    "file": d.file.display().to_string(),
                    "paused": paused_of(&d.dag_id),
                    "tags": d.tags,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        let mut t = Table::new();
        t.load_preset(presets::ASCII_MARKDOWN);
        t.set_header(["dag_id", "schedule", "tasks", "file", "paused"]);
        for d in bag.dags.values() {
            let sched = match &d.schedule {
                Some(s) if d.timezone != chrono_tz::UTC => format!("{} ({})", s.expr, d.timezone),
                Some(s) => s.expr.clone(),
                None => "None".into(),
            };
            let p = paused_of(&d.dag_id).map_or("?".to_string(), |p| p.to_string());
            t.add_row([d.dag_id.clone(), sched, d.tasks.len().to_string(), d.file.display().to_string(), p]);
        }
        outln!("{t}");
    }
    let failed = bag.failed.len();
    if failed > 0 {
        eprintln!(
            "warning: {failed} DAG file{} did not load: {}; `sluice dags validate` shows why",
            if failed == 1 { "" } else { "s" },
            bag.failed.keys().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(app: &App, paths: Vec<PathBuf>, no_environment: bool, json: bool) -> Result<ExitCode> {
    let paths = if paths.is_empty() { vec![app.project.dags_dir.clone()] } else { paths };
    let (conns, conn_diags) = crate::connections::Connections::load(&app.project.root, !no_environment);
    let files = crate::loader::dag_files(&paths).map_err(anyhow::Error::msg)?;
    let mut bag = crate::loader::load(&files, &app.project.root, &conns, &app.templates);
    bag.diagnostics.extend(conn_diags);
    crate::diag::sort(&mut bag.diagnostics);
    let errors = bag.errors().count();
    let warnings = bag.diagnostics.len() - errors;
    if json {
        outln!("{}", serde_json::to_string_pretty(&bag.diagnostics)?);
    } else {
        for d in &bag.diagnostics {
            outln!("{}", crate::secrets::mask(&d.to_string()));
        }
        let files_n = files.len();
        let bad = bag.failed.len();
        outln!(
            "{files_n} file{} checked: {} valid, {bad} invalid ({errors} error{}, {warnings} warning{})",
            if files_n == 1 { "" } else { "s" },
            files_n - bad,
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" },
        );
    }
    Ok(if errors > 0 { ExitCode::from(EXIT_CONFIG) } else { ExitCode::SUCCESS })
}

/// The JSON Schema of DAG files: the top level from [`crate::dag::spec::DagSpec`],
/// and each task as one of the task types (its head, run policy and type keys).
pub fn dag_schema() -> serde_json::Value {
    use crate::dag::spec::{DagSpec, TaskArgs, TaskHead};
    use serde_json::{Value, json};
    let settings = schemars::generate::SchemaSettings::draft07().with(|s| s.inline_subschemas = true);
    let mut generator = settings.into_generator();
    let head = generator.subschema_for::<TaskHead>().to_value();
    let args = generator.subschema_for::<TaskArgs>().to_value();
    let mut variants = Vec::new();
    for (name, schema) in crate::tasks::TaskConfig::schemas(&mut generator) {
        let schema = schema.to_value();
        let mut props = serde_json::Map::new();
        for part in [&head, &args, &schema] {
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                props.extend(p.clone());
            }
        }
        props.insert("type".into(), json!({ "const": name, "description": "The task type." }));
        let mut required: Vec<Value> = vec![json!("id"), json!("type")];
        if let Some(r) = schema.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
        variants.push(json!({
            "title": format!("{name} task"),
            "description": schema.get("description").cloned().unwrap_or(Value::Null),
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": false,
        }));
    }
    let mut root = generator.into_root_schema_for::<DagSpec>().to_value();
    root["title"] = json!("sluice DAG");
    if let Some(tasks) = root.pointer_mut("/properties/tasks") {
        tasks["items"] = json!({ "oneOf": variants });
        tasks["minItems"] = json!(1);
    }
    root["required"] = json!(["tasks"]);
    root
}
