//! The web UI (`sluice web`, `sluice daemon --web`): the DAGs page, a
//! DAG's grid and graph, a run's Gantt chart, a task instance's tries, log
//! and rendered config, and the actions (trigger, clear, mark, pause),
//! which go through [`crate::actions`] exactly as the CLI commands do.
//!
//! Pages read the state store through `Store` methods only and keep no
//! state of their own beyond the login rate limiter. HTML is built with
//! maud (compiled into the binary); the CSS and the little JavaScript (live
//! log tail, refresh while runs are active) are embedded.

mod auth;
mod graph;
mod handlers;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::actions::ActionError;
use crate::loader::DagBag;
use crate::state::{StateError, Store};

pub use auth::hash_password;

/// What the web server needs from its process.
pub struct Site {
    pub store: Store,
    /// Loads the DAG folder as it is now (called per request: files are
    /// few and small, and the pages then never show a stale DAG).
    pub dags: Arc<dyn Fn() -> DagBag + Send + Sync>,
    /// For rendering a task's config as a run sees it.
    pub res: Arc<crate::resources::Resources>,
}

/// The server's shared state.
pub(crate) struct Web {
    pub site: Site,
    /// Every page needs a login (the server listens beyond loopback).
    pub login_to_read: bool,
    pub key: Vec<u8>,
    pub limiter: auth::Limiter,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Starts serving on `addr`; returns the bound address (port 0 picks a free
/// one). The server stops when `stop` is cancelled.
pub async fn serve(site: Site, addr: SocketAddr, stop: CancellationToken) -> Result<SocketAddr, WebError> {
    let fresh: [u8; 32] = rand::random();
    let key = site.store.web_key(&fresh).await?;
    let web = Arc::new(Web { site, login_to_read: !addr.ip().is_loopback(), key, limiter: auth::Limiter::default() });
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| WebError::Bind { addr, source })?;
    let app = handlers::router(web).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let r = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = r {
            tracing::error!("the web server stopped: {e}");
        }
    });
    Ok(bound)
}

/// A request that cannot be answered: a page with the reason and a status
/// that says whose fault it is. Never a stack trace, never a secret.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, message)
    }
    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Refusal {
        tracing::warn!("web request failed on the state store: {e}");
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("the state database cannot answer right now: {e}"))
    }
}

impl From<ActionError> for Refusal {
    fn from(e: ActionError) -> Refusal {
        match e {
            ActionError::Invalid(m) => Refusal::bad_request(m),
            ActionError::NotFound(m) => Refusal::not_found(m),
            ActionError::Conflict(m) => Refusal::new(StatusCode::CONFLICT, m),
            ActionError::State(e) => e.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let msg = crate::secrets::mask(&self.message);
        let title = self.status.canonical_reason().unwrap_or("error");
        let body = pages::shell(
            title,
            None,
            maud::html! {
                h1 { (self.status.as_u16()) " " (title) }
                p.refusal { (msg) }
                p { a href="/" { "Back to the DAGs" } }
            },
        );
        (self.status, Html(body.into_string())).into_response()
    }
}
