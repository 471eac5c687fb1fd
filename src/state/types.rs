//! The states and kinds the state store records, as types: a typo is a
//! compile error, and a value in the database that is none of them is a
//! decoding error, never a silent default. Each is stored as text (the
//! tables' CHECK constraints list the same values).

use std::str::FromStr;

/// The state of a task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Every value, in the order of the type.
    pub const ALL: [TiState; 10] = [
        TiState::Pending,
        TiState::Queued,
        TiState::Running,
        TiState::UpForRetry,
        TiState::UpForReschedule,
        TiState::Success,
        TiState::Failed,
        TiState::Skipped,
        TiState::UpstreamFailed,
        TiState::Removed,
    ];

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

/// The state of a DAG run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Success,
    Failed,
}

impl RunState {
    /// Every value, in the order of the type.
    pub const ALL: [RunState; 4] = [RunState::Queued, RunState::Running, RunState::Success, RunState::Failed];

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

/// How a DAG run came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Every value, in the order of the type.
    pub const ALL: [RunType; 4] = [RunType::Scheduled, RunType::Manual, RunType::Backfill, RunType::AssetTriggered];

    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
            RunType::AssetTriggered => "asset_triggered",
        }
    }
}

/// What a web UI user may do: a viewer reads, an admin also acts
/// (trigger, clear, mark, pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    /// Every value, in the order of the type.
    pub const ALL: [Role; 2] = [Role::Admin, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// The value of `all` whose name is `s`.
fn from_name<T: Copy>(all: &[T], s: &str, name: fn(T) -> &'static str) -> Option<T> {
    all.iter().copied().find(|&v| name(v) == s)
}

/// The names of `all`, for an error message.
fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> String {
    all.iter().map(|&v| name(v)).collect::<Vec<_>>().join(", ")
}

/// Each type is stored as a `text` column, parsed from and shown as its
/// name. Declared to sqlx as PostgreSQL's built-in `text` (by its OID)
/// rather than by name (`#[sqlx(type_name = "text")]`), which made every
/// new connection look the type up in `pg_type` first: a round trip of
/// about 2 ms per connection.
macro_rules! text_column {
    ($($t:ty: $what:literal),*) => {$(
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                from_name(&Self::ALL, s, Self::as_str).ok_or_else(|| format!(concat!("unknown ", $what, " `{}`: one of {}"), s, names(&Self::ALL, Self::as_str)))
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl sqlx::Type<sqlx::Postgres> for $t {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }
        impl sqlx::Encode<'_, sqlx::Postgres> for $t {
            fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
        impl sqlx::Decode<'_, sqlx::Postgres> for $t {
            fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?.parse()?)
            }
        }
    )*};
}

text_column!(TiState: "task state", RunState: "run state", RunType: "run type", Role: "role");

/// `sqlx::FromRow` for a struct read from a row by column name: each field
/// from the column of its name, each `flatten` field (itself `FromRow`)
/// from the same row. Written out instead of sqlx's derive, whose proc
/// macro compiles sqlx, tokio, rustls and ring a second time, for the
/// compiler. A field left out of the list does not compile.
macro_rules! from_row {
    ($t:ident { $($field:ident),* $(,)? } $(flatten { $($inner:ident),* $(,)? })?) => {
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $t {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok($t {
                    $($field: row.try_get(stringify!($field))?,)*
                    $($($inner: sqlx::FromRow::from_row(row)?,)*)?
                })
            }
        }
    };
}
pub(crate) use from_row;

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::TypeInfo;

    /// Every state type is PostgreSQL's `text` by OID, so that no
    /// connection looks it up by name first.
    #[test]
    fn state_types_are_builtin_text() {
        for info in [
            <TiState as sqlx::Type<sqlx::Postgres>>::type_info(),
            <RunState as sqlx::Type<sqlx::Postgres>>::type_info(),
            <RunType as sqlx::Type<sqlx::Postgres>>::type_info(),
            <Role as sqlx::Type<sqlx::Postgres>>::type_info(),
        ] {
            assert_eq!(info.name(), "TEXT");
            assert!(info.oid().is_some(), "declared by name, not by OID");
        }
    }

    #[test]
    fn names_read_back_as_written() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + FromStr<Err = String>>(all: &[T], name: fn(T) -> &'static str) {
            for &v in all {
                assert_eq!(name(v).parse::<T>(), Ok(v));
            }
            assert!("nonsense".parse::<T>().unwrap_err().contains(name(all[0])), "the error lists the names");
        }
        check(&TiState::ALL, TiState::as_str);
        check(&RunState::ALL, RunState::as_str);
        check(&RunType::ALL, RunType::as_str);
        check(&Role::ALL, Role::as_str);
    }
}
