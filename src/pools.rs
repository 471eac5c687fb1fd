//! Pools: named sets of slots that tasks of every DAG share (Airflow's
//! pools). A task with `pool: NAME` takes `pool_slots` of them while it
//! runs; when the pool is full, it waits, and `priority_weight` orders who
//! gets the next free slot. The state store holds the pools and enforces
//! them in the claim, so several daemons together never exceed a pool.
//!
//! `config/pools.yaml` declares pools; every command that opens the state
//! store writes the file's pools into it (the file wins for the pools it
//! lists). `sluice pools set` changes or adds a pool by hand.
//!
//! ```yaml
//! warehouse_heavy:
//!   slots: 2
//!   description: Big loads into the warehouse
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;

/// The file, relative to the project root.
pub const POOLS_FILE: &str = "config/pools.yaml";

/// One pool as declared.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// How many slots the pool has (0 holds every task in it).
    pub slots: u32,
    /// What the pool protects.
    #[serde(default)]
    pub description: String,
}

/// What a task takes from a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUse {
    pub pool: String,
    pub slots: i32,
}

/// Reads `config/pools.yaml`: the pools by name (none when the file does
/// not exist), or an error with the file, line and column.
pub fn load(root: &Path) -> Result<BTreeMap<String, PoolSpec>, String> {
    let path = root.join(POOLS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{POOLS_FILE}: {e}")),
    };
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let pools: BTreeMap<String, PoolSpec> = serde_yaml::from_str(&text).map_err(|e| {
        let at = e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default();
        format!(
            "{POOLS_FILE}{at}: {} (each pool is `NAME: {{ slots: N, description: ... }}`)",
            crate::connections::strip_location(&e.to_string())
        )
    })?;
    for name in pools.keys() {
        if !crate::dag::parse::valid_id(name) {
            return Err(format!("{POOLS_FILE}: pool name `{name}`: use letters, digits, `_`, `-`, `.`"));
        }
    }
    Ok(pools)
}
