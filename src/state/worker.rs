//! Worker identity and liveness.
//!
//! Every process that runs tasks (`sluice run`, `sluice daemon`) registers a
//! worker row with its host and pid and heartbeats it, together with the
//! heartbeat of every try it is running. A try is a zombie when its worker's
//! heartbeat is older than the timeout — or, sooner, when the worker ran on
//! this host and its process no longer exists.

use std::time::Duration;

use sqlx::Row;

use super::{StateError, Store};

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// Whether a process with this pid exists on this host.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Worker {
    pub fn new() -> Worker {
        let hostname = hostname();
        let pid = std::process::id();
        let short = uuid::Uuid::new_v4().simple().to_string();
        Worker { id: format!("{hostname}:{pid}:{}", &short[..8]), hostname, pid }
    }
}

impl Default for Worker {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub async fn register_worker(&self, w: &Worker, kind: &str) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO workers (worker_id, hostname, pid, kind, version) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
        )
        .bind(&w.id)
        .bind(&w.hostname)
        .bind(w.pid as i32)
        .bind(kind)
        .bind(env!("CARGO_PKG_VERSION"))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Heartbeats the worker and the given tries, by (run, task, try
    /// number): per try, so that a try whose executor is gone (it panicked,
    /// or its end could not be recorded and was given up on) stops being
    /// heartbeated and is found by the zombie check.
    pub async fn heartbeat(&self, w: &Worker, tries: &[(i64, String, i32)]) -> Result<(), StateError> {
        let runs: Vec<i64> = tries.iter().map(|t| t.0).collect();
        let tasks: Vec<&str> = tries.iter().map(|t| t.1.as_str()).collect();
        let numbers: Vec<i32> = tries.iter().map(|t| t.2).collect();
        // One statement: the worker row and its tries.
        sqlx::query(
            "WITH w AS (UPDATE workers SET heartbeat_at = now() WHERE worker_id = $1)
             UPDATE task_instances t SET heartbeat_at = now()
             FROM UNNEST($2::bigint[], $3::text[], $4::int[]) AS u(run_id, task_id, try_number)
             WHERE t.run_id = u.run_id AND t.task_id = u.task_id AND t.try_number = u.try_number
               AND t.worker_id = $1 AND t.state = 'running'",
        )
        .bind(&w.id)
        .bind(&runs)
        .bind(&tasks)
        .bind(&numbers)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn stop_worker(&self, w: &Worker) -> Result<(), StateError> {
        sqlx::query("UPDATE workers SET stopped_at = now() WHERE worker_id = $1").bind(&w.id).execute(self.pool()).await?;
        Ok(())
    }

    /// Workers that hold running tries but are certainly gone: stopped, or
    /// registered on this host with a pid that no longer exists.
    pub async fn dead_workers(&self) -> Result<Vec<String>, StateError> {
        let host = hostname();
        let rows = sqlx::query(
            "SELECT DISTINCT w.worker_id, w.hostname, w.pid, w.stopped_at IS NOT NULL AS stopped
             FROM workers w JOIN task_instances t ON t.worker_id = w.worker_id AND t.state = 'running'",
        )
        .fetch_all(self.pool())
        .await?;
        let mut dead = Vec::new();
        for r in rows {
            let id: String = r.get("worker_id");
            let h: String = r.get("hostname");
            let pid: i32 = r.get("pid");
            let stopped: bool = r.get("stopped");
            if stopped || (h == host && pid as u32 != std::process::id() && !pid_alive(pid)) {
                dead.push(id);
            }
        }
        Ok(dead)
    }

    /// Reaps zombies: see [`Store::reap_zombies`]. `me` and `live` are the
    /// reaping worker and the tries it is running (or still recording),
    /// which are never zombies, however late their heartbeat.
    pub async fn reap(
        &self,
        timeout: Duration,
        worker_failures: i32,
        me: &str,
        live: &[(i64, String, i32)],
    ) -> Result<Vec<(i64, String, i32, String)>, StateError> {
        let dead = self.dead_workers().await?;
        self.reap_zombies(timeout, &dead, worker_failures, me, live).await
    }
}
