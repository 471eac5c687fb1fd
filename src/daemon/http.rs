//! `GET /health` and `GET /metrics` on a loopback port: a few lines of
//! HTTP/1.1, enough for health checks and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::state::Store;

pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: Store,
    worker: String,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let metrics = metrics.clone();
            let store = store.clone();
            let worker = worker.clone();
            tokio::spawn(async move {
                // Read the whole head (it may come in several segments):
                // closing with unread bytes would reset the connection and
                // lose the response.
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                let read_head = async {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    true
                };
                if !matches!(tokio::time::timeout(std::time::Duration::from_secs(5), read_head).await, Ok(true)) {
                    return;
                }
                let req = String::from_utf8_lossy(&buf);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let (status, ctype, body) = match path {
                    "/health" => {
                        let age = (chrono::Utc::now() - *metrics.last_loop.lock().unwrap_or_else(|e| e.into_inner())).num_seconds();
                        let db_ok = sqlx::query("SELECT 1").execute(store.pool()).await.is_ok();
                        let ok = age < 30 && db_ok;
                        let body = serde_json::json!({
                            "status": if ok { "ok" } else { "unhealthy" },
                            "worker": worker,
                            "database": if db_ok { "ok" } else { "unreachable" },
                            "seconds_since_scheduler_loop": age,
                            "dags": metrics.dags_loaded.load(std::sync::atomic::Ordering::Relaxed),
                            "dag_load_errors": metrics.dag_load_errors.load(std::sync::atomic::Ordering::Relaxed),
                            "tasks_running_here": metrics.running_local.load(std::sync::atomic::Ordering::Relaxed),
                        });
                        (if ok { "200 OK" } else { "503 Service Unavailable" }, "application/json", body.to_string())
                    }
                    "/metrics" => {
                        let db = store.metrics_snapshot().await.unwrap_or_default();
                        ("200 OK", "text/plain; version=0.0.4", metrics.render(&db))
                    }
                    _ => ("404 Not Found", "text/plain", "try /health or /metrics\n".to_string()),
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    Ok(bound)
}
