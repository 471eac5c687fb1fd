//! Shared clients for built tasks: connection pools and S3 clients are
//! opened once per process and connection, not once per try.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgPool};

use crate::connections::{Connection, Connections};
use crate::datasets::Staging;
use crate::tasks::TaskError;
use crate::template::Templates;

/// Connections each Postgres connection's pool opens at most: what the
/// tasks of one process share, and the most queries a report runs at once.
pub const PG_POOL_SIZE: u32 = 8;

/// How long connecting to a task's database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Resources {
    pub project_root: PathBuf,
    pub connections: Arc<Connections>,
    pub templates: Arc<Templates>,
    pub staging: Staging,
    pools: std::sync::Mutex<HashMap<String, PgPool>>,
    s3: std::sync::Mutex<HashMap<String, aws_sdk_s3::Client>>,
    http: std::sync::OnceLock<reqwest::Client>,
    /// A read-only view of the pipeline's own runs, for reports on it; set
    /// by the runner (tasks never see the state store itself).
    pub pipeline: std::sync::OnceLock<Arc<dyn PipelineView>>,
}

/// Runs of one DAG in a period, for reports on the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DagRunStats {
    pub dag_id: String,
    /// Runs whose logical date is in the period.
    pub runs: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Queued or running.
    pub unfinished: i64,
}

/// What a task may know about the pipeline's own runs: statistics, not
/// the state store's tables.
pub trait PipelineView: Send + Sync {
    /// Every DAG the store knows, with its runs whose logical date is in
    /// `[from, to)`, leaving out run `exclude` (the report's own).
    fn dag_run_stats(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        exclude: Option<i64>,
    ) -> futures::future::BoxFuture<'_, Result<Vec<DagRunStats>, String>>;
}

impl Resources {
    /// The resources of a project. Fails when `SLUICE_STAGING` is invalid:
    /// falling back to a local folder would hide datasets from the workers
    /// on other machines.
    pub fn new(project_root: PathBuf, connections: Arc<Connections>, templates: Arc<Templates>) -> Result<Resources, String> {
        let staging = Staging::from_env(&project_root)?;
        Ok(Resources {
            project_root,
            connections,
            templates,
            staging,
            pools: Default::default(),
            s3: Default::default(),
            http: Default::default(),
            pipeline: Default::default(),
        })
    }

    /// A pool for a Postgres connection, opened on first use.
    ///
    /// No lock is held while connecting, so an unreachable database never
    /// delays tasks on other connections; the first use connects once
    /// directly, so that a refused connection fails at once with its
    /// reason ("connection refused"), not after the pool's timeout.
    pub async fn pg_pool(&self, c: &Connection) -> Result<PgPool, TaskError> {
        if let Some(p) = self.pools.lock().unwrap_or_else(|e| e.into_inner()).get(&c.id) {
            return Ok(p.clone());
        }
        let fail = |e: sqlx::Error| {
            TaskError::with_kind(
                crate::tasks::error::sqlx_kind(&e),
                format!(
                    "cannot connect to Postgres connection `{}` ({}:{}): {}",
                    c.id,
                    c.host.as_deref().unwrap_or("localhost"),
                    c.port.unwrap_or(5432),
                    crate::pgerror::describe(&e)
                ),
            )
        };
        let opts = PgConnectOptions::from_str(c.uri()).map_err(fail)?;
        let first = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&opts))
            .await
            .map_err(|_| fail(sqlx::Error::PoolTimedOut))?
            .map_err(fail)?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new().max_connections(PG_POOL_SIZE).acquire_timeout(CONNECT_TIMEOUT).connect_lazy_with(opts);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        Ok(pools.entry(c.id.clone()).or_insert(pool).clone())
    }

    /// An S3 client for an S3 connection.
    pub fn s3_client(&self, c: &Connection) -> Result<aws_sdk_s3::Client, TaskError> {
        let mut m = self.s3.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cl) = m.get(&c.id) {
            return Ok(cl.clone());
        }
        let cl = crate::s3::client(c).map_err(|e| TaskError::with_kind(e.kind(), e.to_string()))?;
        m.insert(c.id.clone(), cl.clone());
        Ok(cl)
    }

    /// The S3 client and connection of the staging area, which must be on S3.
    pub fn staging_client(&self) -> Result<(aws_sdk_s3::Client, Connection), TaskError> {
        match &self.staging {
            Staging::Local(p) => Err(TaskError::Panic(format!("the staging area is the local folder {}, not S3", p.display()))),
            Staging::S3 { conn, .. } => {
                let c = self.connections.get(conn)?;
                c.expect_kind("s3")?;
                Ok((self.s3_client(c)?, c.clone()))
            }
        }
    }

    /// Checks at start that the staging area can be used: an S3 prefix
    /// must be reachable with its connection, or other machines would
    /// never see the datasets this one writes.
    pub async fn check_staging(&self) -> Result<(), String> {
        let Staging::S3 { root, conn } = &self.staging else { return Ok(()) };
        let what = format!("SLUICE_STAGING {root} (connection `{conn}`, set by SLUICE_STAGING_CONN)");
        let (client, c) = self.staging_client().map_err(|e| format!("{what}: {e}"))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, crate::s3::probe(&client, root)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{what} at {}: {e}", crate::s3::endpoint_of(&c))),
            Err(_) => Err(format!("{what} at {}: no answer within {}s", crate::s3::endpoint_of(&c), CONNECT_TIMEOUT.as_secs())),
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
