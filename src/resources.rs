//! Shared clients for built tasks: connection pools and S3 clients are
//! opened once per process and connection, not once per try.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::connections::{Connection, Connections};
use crate::datasets::Staging;
use crate::tasks::TaskError;
use crate::template::Templates;

pub struct Resources {
    pub project_root: PathBuf,
    pub connections: Arc<Connections>,
    pub templates: Arc<Templates>,
    pub staging: Staging,
    pools: tokio::sync::Mutex<HashMap<String, PgPool>>,
    s3: std::sync::Mutex<HashMap<String, aws_sdk_s3::Client>>,
    http: std::sync::OnceLock<reqwest::Client>,
    /// sluice's own state store, for tasks that report on the pipeline.
    pub state: std::sync::OnceLock<crate::state::Store>,
}

impl Resources {
    pub fn new(project_root: PathBuf, connections: Arc<Connections>, templates: Arc<Templates>) -> Resources {
        let staging = Staging::from_env(&project_root).unwrap_or_else(|e| {
            tracing::warn!("SLUICE_STAGING is invalid ({e}); using the local staging folder");
            Staging::Local(project_root.join(".sluice/staging"))
        });
        Resources {
            project_root,
            connections,
            templates,
            staging,
            pools: Default::default(),
            s3: Default::default(),
            http: Default::default(),
            state: Default::default(),
        }
    }

    /// A pool for a Postgres connection, opened on first use.
    pub async fn pg_pool(&self, c: &Connection) -> Result<PgPool, TaskError> {
        let mut pools = self.pools.lock().await;
        if let Some(p) = pools.get(&c.id) {
            return Ok(p.clone());
        }
        let pool =
            PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(15)).connect(c.uri()).await.map_err(|e| {
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

    /// An S3 client for an S3 connection.
    pub fn s3_client(&self, c: &Connection) -> Result<aws_sdk_s3::Client, TaskError> {
        let mut m = self.s3.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cl) = m.get(&c.id) {
            return Ok(cl.clone());
        }
        let cl = crate::s3::client(c).map_err(|e| TaskError::Failed(e.to_string()))?;
        m.insert(c.id.clone(), cl.clone());
        Ok(cl)
    }

    /// The S3 client of the staging area, when it is on S3.
    pub fn staging_client(&self) -> Result<Option<aws_sdk_s3::Client>, TaskError> {
        match &self.staging {
            Staging::Local(_) => Ok(None),
            Staging::S3 { conn, .. } => {
                let c = self.connections.get(conn)?;
                c.expect_kind("s3")?;
                Ok(Some(self.s3_client(c)?))
            }
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(15))
                .build()
                .unwrap_or_default()
        })
    }
}
