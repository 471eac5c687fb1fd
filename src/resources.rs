//! Shared clients for built tasks: connection pools are opened once per
//! process and connection, not once per try.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::connections::{Connection, Connections};
use crate::tasks::TaskError;
use crate::template::Templates;

pub struct Resources {
    pub project_root: PathBuf,
    pub connections: Arc<Connections>,
    pub templates: Arc<Templates>,
    pools: tokio::sync::Mutex<HashMap<String, PgPool>>,
}

impl Resources {
    pub fn new(project_root: PathBuf, connections: Arc<Connections>, templates: Arc<Templates>) -> Resources {
        Resources { project_root, connections, templates, pools: Default::default() }
    }

    /// A pool for a Postgres connection, opened on first use.
    pub async fn pg_pool(&self, c: &Connection) -> Result<PgPool, TaskError> {
        let mut pools = self.pools.lock().await;
        if let Some(p) = pools.get(&c.id) {
            return Ok(p.clone());
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(15))
            .connect(c.uri())
            .await
            .map_err(|e| {
                TaskError::Failed(format!(
                    "cannot connect to Postgres connection `{}` ({}:{}): {}",
                    c.id,
                    c.host.as_deref().unwrap_or("localhost"),
                    c.port.unwrap_or(5432),
                    crate::state::describe_sqlx(&e)
                ))
            })?;
        pools.insert(c.id.clone(), pool.clone());
        Ok(pool)
    }
}
