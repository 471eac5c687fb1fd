//! `sluice assets list`: each asset with the tasks that update it, the DAGs
//! scheduled on it, and its last update.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use comfy_table::{Table, presets};

use super::App;

#[derive(Subcommand, Debug)]
pub enum AssetsCmd {
    /// Every asset the DAG files name or the state store has seen: the
    /// tasks that update it (DAG.TASK), the DAGs scheduled on it, how many
    /// updates it had and the last one.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Default, serde::Serialize)]
struct Asset {
    producers: Vec<String>,
    consumers: Vec<String>,
    events: i64,
    last_update: Option<String>,
    last_run: Option<String>,
}

pub async fn run(app: &App, cmd: AssetsCmd) -> Result<ExitCode> {
    let AssetsCmd::List { json } = cmd;
    let (bag, _) = app.load(true)?;
    let mut assets: BTreeMap<String, Asset> = BTreeMap::new();
    for dag in bag.dags.values() {
        for t in &dag.tasks {
            for a in t.outlets.iter().cloned().chain(t.config.assets()) {
                assets.entry(a).or_default().producers.push(format!("{}.{}", dag.dag_id, t.id));
            }
        }
        if let Some(trigger) = &dag.assets {
            for a in &trigger.assets {
                let how = if trigger.any && trigger.assets.len() > 1 { " (any)" } else { "" };
                assets.entry(a.clone()).or_default().consumers.push(format!("{}{how}", dag.dag_id));
            }
        }
    }
    let store = app.store().await?;
    for row in store.assets().await? {
        let a = assets.entry(row.asset).or_default();
        a.events = row.events;
        a.last_update = Some(row.last_update.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        a.last_run = Some(format!("{} run {}", row.last_dag, row.last_run.map_or("-".into(), |r| r.to_string())));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&assets)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN);
    t.set_header(["asset", "updated by", "schedules", "updates", "last update"]);
    for (name, a) in assets {
        let last = match (a.last_update, a.last_run) {
            (Some(at), Some(run)) => format!("{at} ({run})"),
            _ => "never".into(),
        };
        t.add_row([name, a.producers.join(", "), a.consumers.join(", "), a.events.to_string(), last]);
    }
    outln!("{t}");
    Ok(ExitCode::SUCCESS)
}
