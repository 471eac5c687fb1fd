//! `sluice pools list|set|delete`: the pools tasks share (see
//! [`crate::pools`]).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use comfy_table::{Table, presets};

use super::App;

#[derive(Subcommand, Debug)]
pub enum PoolsCmd {
    /// List the pools: slots, slots taken by running tries, slots wanted
    /// by tries waiting for one.
    List,
    /// Add a pool or set its slots. A pool listed in config/pools.yaml gets
    /// the file's slots again the next time a command opens the state store.
    Set {
        name: String,
        slots: u32,
        /// What the pool protects.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a pool. Tasks that name it fail when they are due.
    Delete { name: String },
}

pub async fn run(app: &App, cmd: PoolsCmd) -> Result<ExitCode> {
    let store = app.store().await?;
    match cmd {
        PoolsCmd::List => {
            let mut t = Table::new();
            t.load_preset(presets::ASCII_MARKDOWN);
            t.set_header(["pool", "slots", "running", "waiting", "description"]);
            for p in store.pools().await? {
                t.add_row([p.name, p.slots.to_string(), p.running.to_string(), p.waiting.to_string(), p.description]);
            }
            outln!("{t}");
        }
        PoolsCmd::Set { name, slots, description } => {
            if !crate::dag::parse::valid_id(&name) {
                return Ok(super::config_exit(&format!("pool name `{name}`: use letters, digits, `_`, `-`, `.`")));
            }
            let slots = i32::try_from(slots).unwrap_or(i32::MAX);
            store.put_pools(&[(name.clone(), slots, description)]).await?;
            outln!("pool {name}: {slots} slots");
            if crate::pools::load(&app.project.root).is_ok_and(|p| p.contains_key(&name)) {
                eprintln!("note: {} also sets pool {name}; the file's slots apply again at the next start", crate::pools::POOLS_FILE);
            }
        }
        PoolsCmd::Delete { name } => {
            if !store.delete_pool(&name).await? {
                return Ok(super::config_exit(&format!("there is no pool `{name}`; `sluice pools list` shows the pools")));
            }
            outln!("deleted pool {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
