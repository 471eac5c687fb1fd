//! The states and kinds the state store records, as types: a typo is a
//! compile error, and a value in the database that is none of them is a
//! decoding error, never a silent default. Each is stored as text (the
//! tables' CHECK constraints list the same values).

use std::str::FromStr;

/// The state of a task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum TiState {
    Pending,
    Queued,
    Running,
    UpForRetry,
    /// A sensor in reschedule mode between pokes: its slot is free, the
    /// same try resumes at `next_try_at`.
    UpForReschedule,
    Success,
    Failed,
    Skipped,
    UpstreamFailed,
    Removed,
}

impl TiState {
    pub fn as_str(self) -> &'static str {
        match self {
            TiState::Pending => "pending",
            TiState::Queued => "queued",
            TiState::Running => "running",
            TiState::UpForRetry => "up_for_retry",
            TiState::UpForReschedule => "up_for_reschedule",
            TiState::Success => "success",
            TiState::Failed => "failed",
            TiState::Skipped => "skipped",
            TiState::UpstreamFailed => "upstream_failed",
            TiState::Removed => "removed",
        }
    }

    /// Finished: no further try will start without a clear.
    pub fn is_terminal(self) -> bool {
        matches!(self, TiState::Success | TiState::Failed | TiState::Skipped | TiState::UpstreamFailed | TiState::Removed)
    }
}

impl FromStr for TiState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => TiState::Pending,
            "queued" => TiState::Queued,
            "running" => TiState::Running,
            "up_for_retry" => TiState::UpForRetry,
            "up_for_reschedule" => TiState::UpForReschedule,
            "success" => TiState::Success,
            "failed" => TiState::Failed,
            "skipped" => TiState::Skipped,
            "upstream_failed" => TiState::UpstreamFailed,
            "removed" => TiState::Removed,
            other => return Err(format!("unknown task state `{other}`")),
        })
    }
}

impl std::fmt::Display for TiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a DAG run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Success,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Success | RunState::Failed)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "success" => RunState::Success,
            "failed" => RunState::Failed,
            other => return Err(format!("unknown run state `{other}`: one of queued, running, success, failed")),
        })
    }
}

/// How a DAG run came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunType {
    /// Created by the daemon at a tick.
    Scheduled,
    /// `sluice run`, `sluice dags trigger`.
    Manual,
    /// `sluice backfill`.
    Backfill,
    /// Created by the daemon when the assets a DAG is scheduled on were updated.
    AssetTriggered,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
            RunType::AssetTriggered => "asset_triggered",
        }
    }
}

impl std::fmt::Display for RunType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a web UI user may do: a viewer reads, an admin also acts
/// (trigger, clear, mark, pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::Type, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    Admin,
    Viewer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        })
    }
}
