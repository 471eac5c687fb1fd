//! Why a try failed, and whether another try can help.
//!
//! Every [`TaskError`] has an [`ErrorKind`]. The runner reads the kind, not
//! the message: a configuration error, a missing project file, a SQL
//! syntax error or a permanent SMTP refusal fails the task at once, without
//! using its retries; a refused connection, a timeout or a 5xx from S3 or an
//! HTTP server is retried by the task's rules, as is any failure sluice
//! cannot classify (as Airflow retries every failure).

use crate::connections::ConnError;
use crate::template::TemplateError;

/// What kind of failure a try had: the retry decision reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The task's config, as rendered for this try, cannot work: an empty or
    /// undefined connection, a template error, a bad option. Not retried.
    Config,
    /// A failure another try would meet again: a project file that does not
    /// exist, a SQL syntax error or unknown table, a permanent (5xx) SMTP
    /// refusal, an HTTP 4xx. Not retried.
    Permanent,
    /// A passing failure: a refused or dropped connection, a network
    /// timeout, a 5xx from S3 or an HTTP server, a database restarting.
    /// Retried.
    Transient,
    /// Any other failure (a command's non-zero exit, a constraint
    /// violation, bad rows over the limit). Retried by the task's rules.
    Failed,
    /// The try ran longer than `execution_timeout`. Retried.
    Timeout,
    /// A sensor waited longer than its `timeout`. Not retried (as in Airflow).
    SensorTimeout,
    /// The try was interrupted (Ctrl-C, shutdown): it is requeued without
    /// using a retry.
    Cancelled,
    /// A bug in sluice (a panic). Not retried.
    Internal,
}

impl ErrorKind {
    /// Whether a retry may succeed where this try failed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Failed | ErrorKind::Timeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Transient => "transient",
            ErrorKind::Failed => "failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::SensorTimeout => "sensor_timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a try failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A failure of no particular kind ([`ErrorKind::Failed`]).
    #[error("{0}")]
    Failed(String),
    /// A failure with a known kind.
    #[error("{message}")]
    Kind { kind: ErrorKind, message: String },
    /// A process exited with a non-zero status.
    #[error("{message}")]
    Exit { code: i32, message: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Connection(#[from] ConnError),
    #[error("{}", crate::pgerror::describe(.0))]
    Sql(#[from] sqlx::Error),
    #[error("the rendered config is invalid: {0}")]
    Config(String),
    #[error("timed out after {0} (execution_timeout)")]
    Timeout(String),
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// sluice itself panicked while running the try.
    #[error("sluice panicked while running this try (a bug in sluice; please report it): {0}")]
    Panic(String),
}

impl TaskError {
    pub fn failed(msg: impl Into<String>) -> TaskError {
        TaskError::Failed(msg.into())
    }

    /// A failure that another try would meet again.
    pub fn permanent(msg: impl Into<String>) -> TaskError {
        TaskError::Kind { kind: ErrorKind::Permanent, message: msg.into() }
    }

    /// A passing failure, worth retrying.
    pub fn transient(msg: impl Into<String>) -> TaskError {
        TaskError::Kind { kind: ErrorKind::Transient, message: msg.into() }
    }

    pub fn with_kind(kind: ErrorKind, msg: impl Into<String>) -> TaskError {
        TaskError::Kind { kind, message: msg.into() }
    }

    /// A database error with context (`sql/x.sql, statement 2/3 (line 7)`),
    /// keeping the kind of the database error.
    pub fn sql(context: impl std::fmt::Display, e: &sqlx::Error) -> TaskError {
        TaskError::Kind { kind: sqlx_kind(e), message: format!("{context}: {}", crate::pgerror::describe(e)) }
    }

    /// A blocking job that ended badly: a panic is a bug, a cancellation
    /// an interruption.
    pub fn from_join(what: &str, e: tokio::task::JoinError) -> TaskError {
        if e.is_cancelled() {
            return TaskError::Cancelled(format!("{what} was cancelled"));
        }
        TaskError::Panic(format!("{what}: {}", panic_message(e.into_panic().as_ref())))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            TaskError::Failed(_) | TaskError::Exit { .. } => ErrorKind::Failed,
            TaskError::Kind { kind, .. } => *kind,
            TaskError::Template(_) | TaskError::Connection(_) | TaskError::Config(_) => ErrorKind::Config,
            TaskError::Sql(e) => sqlx_kind(e),
            TaskError::Timeout(_) => ErrorKind::Timeout,
            TaskError::Cancelled(_) => ErrorKind::Cancelled,
            TaskError::Panic(_) => ErrorKind::Internal,
        }
    }
}

/// An error and its sources, one after the other.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Classifies an HTTP status: 5xx, 408 and 429 pass; other 4xx do not.
pub fn http_status_kind(status: u16) -> ErrorKind {
    match status {
        408 | 429 | 500..=599 => ErrorKind::Transient,
        400..=499 => ErrorKind::Permanent,
        _ => ErrorKind::Failed,
    }
}

/// Classifies a database error by its SQLSTATE class or transport failure.
pub fn sqlx_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::Database(db) => db.code().map_or(ErrorKind::Failed, |c| sqlstate_kind(&c)),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed | sqlx::Error::Tls(_) => {
            ErrorKind::Transient
        }
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        _ => ErrorKind::Failed,
    }
}

/// Classifies a PostgreSQL SQLSTATE.
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    match code {
        // connection exceptions; admin/crash shutdown, cannot connect now;
        // insufficient resources; serialization failure and deadlock.
        c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => ErrorKind::Transient,
        "40001" | "40P01" => ErrorKind::Transient,
        // syntax errors and access rule violations (unknown table or
        // column, permission denied); invalid authorization; invalid catalog.
        c if c.starts_with("42") || c.starts_with("28") || c.starts_with("3D") || c.starts_with("3F") => ErrorKind::Permanent,
        _ => ErrorKind::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_decide_retries() {
        assert_eq!(sqlstate_kind("42601"), ErrorKind::Permanent); // syntax error
        assert_eq!(sqlstate_kind("42P01"), ErrorKind::Permanent); // undefined table
        assert_eq!(sqlstate_kind("08006"), ErrorKind::Transient);
        assert_eq!(sqlstate_kind("57P01"), ErrorKind::Transient);
        assert_eq!(sqlstate_kind("23505"), ErrorKind::Failed);
        assert!(!TaskError::Config("x".into()).kind().retryable());
        assert!(!TaskError::permanent("x").kind().retryable());
        assert!(TaskError::transient("x").kind().retryable());
        assert!(TaskError::Failed("x".into()).kind().retryable());
        assert!(TaskError::Timeout("1s".into()).kind().retryable());
        assert!(!TaskError::Panic("x".into()).kind().retryable());
        assert!(TaskError::Sql(sqlx::Error::PoolTimedOut).kind().retryable());
    }
}
