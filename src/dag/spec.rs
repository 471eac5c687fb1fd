//! The DAG file format, as written: what YAML says, nothing resolved.
//!
//! A task's keys are split in three groups, each with its own struct so that
//! every struct can deny unknown fields: [`TaskHead`] (identity and edges),
//! [`TaskArgs`] (the run policy, also allowed in `default_args`), and the
//! type-specific config (see [`crate::tasks`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::duration::Dur;
use super::trigger_rule::TriggerRule;

/// A DAG file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DagSpec {
    /// The DAG's id. Defaults to the file name without `.yaml`.
    pub dag_id: Option<String>,
    /// What the DAG does.
    pub description: Option<String>,
    /// When runs are created: a 5-field cron expression (`0 9 * * 1`) or a
    /// preset (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`); or
    /// `{assets: [a, b]}` for a run each time every listed asset has been
    /// updated since the DAG's last such run (`{assets: {any: [a, b]}}`:
    /// when any has). Leave it out or set it to null for a DAG that only
    /// runs by hand.
    pub schedule: Option<ScheduleSpec>,
    /// The IANA time zone the schedule and `ds` are evaluated in. Default `UTC`.
    pub timezone: Option<String>,
    /// The first interval starts here: a date (`2024-01-01`, midnight in the
    /// DAG's time zone) or an RFC 3339 timestamp. Required with a schedule.
    pub start_date: Option<String>,
    /// No interval starts after this date or timestamp.
    pub end_date: Option<String>,
    /// Whether the scheduler creates a run for every missed interval since
    /// `start_date` (true) or only for the latest one (false, the default).
    #[serde(default)]
    pub catchup: bool,
    /// How many runs of this DAG may be active at once. Default 16.
    pub max_active_runs: Option<u32>,
    /// How many tasks of one run may run at once. Default 16.
    pub max_active_tasks: Option<u32>,
    /// Typed parameters with defaults, available as `{{ params.NAME }}` and
    /// overridable with `--conf NAME=VALUE` (the value must parse as the
    /// default's type).
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Defaults for every task's run policy.
    #[serde(default)]
    pub default_args: TaskArgs,
    /// Task groups (Airflow's TaskGroup): a task with `group: NAME` gets
    /// the id `NAME.ID`, the group's `default_args` (between its own keys
    /// and the DAG's), and a task may depend on the whole group by naming it.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSpec>,
    /// Notified when a run fails (a task failed for good, or the run
    /// exceeded `dagrun_timeout`).
    #[serde(default)]
    pub on_failure: Vec<NotifierSpec>,
    /// Notified when a run succeeds.
    #[serde(default)]
    pub on_success: Vec<NotifierSpec>,
    /// A run still going this long after it started fails: its unfinished
    /// tasks are skipped (running tries are stopped) and `on_failure` is
    /// notified.
    pub dagrun_timeout: Option<Dur>,
    /// Free-form labels, shown by `sluice dags list`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The tasks. Each has an `id`, a `type`, and the keys of its type.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub tasks: Vec<serde_yaml::Value>,
}

/// A DAG's schedule: time or data.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ScheduleSpec {
    /// A cron expression or preset.
    Cron(String),
    /// Data-aware: runs when assets are updated.
    Assets(AssetSchedule),
}

/// `schedule: {assets: ...}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetSchedule {
    /// The assets: a list (a run when all were updated), or `{any: [...]}`
    /// (a run when any was) or `{all: [...]}`.
    pub assets: AssetsSpec,
}

/// The assets a DAG is scheduled on.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AssetsSpec {
    /// Every one of these (Airflow's `[a, b]`).
    List(Vec<String>),
    /// `{any: [a, b]}` or `{all: [a, b]}`.
    Cond(AssetCond),
}

/// `{any: [...]}` or `{all: [...]}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetCond {
    pub any: Option<Vec<String>>,
    pub all: Option<Vec<String>>,
}

/// What `expand` maps over.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ExpandSpec {
    /// The elements themselves.
    List(Vec<serde_json::Value>),
    /// A template rendering to a list, e.g. `{{ params.files }}`.
    Template(String),
    /// Files, S3 keys or an upstream task's output.
    Source(ExpandSource),
}

/// `expand: {glob: ...}`, `{s3: ..., conn: ...}` or `{upstream: ..., field: ...}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpandSource {
    /// Local files matching this glob (relative to the project root; a
    /// template), sorted: each element is a path.
    pub glob: Option<String>,
    /// Every object under this `s3://bucket/prefix/` (a template), sorted:
    /// each element is an `s3://` URI. Needs `conn`.
    pub s3: Option<String>,
    /// The S3 connection for `s3`.
    pub conn: Option<String>,
    /// An upstream task whose output holds the list (a dependency).
    pub upstream: Option<String>,
    /// With `upstream`: a JSON pointer into its output, e.g.
    /// `/metrics/files`. Default: the whole output, which must be a list.
    pub field: Option<String>,
}

/// A task group.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// What the group's tasks do together.
    pub description: Option<String>,
    /// Defaults for the group's tasks, over the DAG's `default_args`.
    #[serde(default)]
    pub default_args: TaskArgs,
}

/// A task's identity and edges.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskHead {
    /// The task's id, unique in the DAG: letters, digits, `_`, `-`, `.`.
    pub id: String,
    /// The task type.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the task does.
    pub description: Option<String>,
    /// The task group this task is in (declared under `groups:`): its id
    /// becomes `GROUP.ID`.
    pub group: Option<String>,
    /// Tasks that must finish before this one (see `trigger_rule`): task
    /// ids, a group's name (every task of the group), or, inside a group,
    /// a sibling's short id. Tasks named in `inputs` are dependencies
    /// already and need not be repeated.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Dynamic task mapping: one task instance per element of a list known
    /// at run time, each rendering `{{ item }}` and `{{ map_index }}`. A
    /// literal list, a template that renders to a list (`{{ params.files
    /// }}`), or `{glob: PATTERN}`, `{s3: s3://bucket/prefix/, conn: ID}`,
    /// `{upstream: TASK, field: /metrics/files}`. An empty list skips the
    /// task, as in Airflow.
    pub expand: Option<ExpandSpec>,
    /// With `expand`: how many of the task's instances may run at once in
    /// one run. Default: no limit beyond the DAG's.
    pub max_active_tis_per_dagrun: Option<u32>,
    /// Assets this task updates when it succeeds, by name (free text,
    /// e.g. `shop.orders` or `s3://lake/exports/`): DAGs scheduled on them
    /// get a run. A `load` task also updates `postgres://CONN/TABLE`, an
    /// S3 `put` or `copy` its destination, without listing them.
    #[serde(default)]
    pub outlets: Vec<String>,
    /// Run only when this template renders to something true (not empty,
    /// `false`, `no`, `0` or `none`); otherwise the task is skipped, e.g.
    /// `when: "{{ var.archive_bucket }}"`.
    pub when: Option<String>,
}

/// A task's run policy. Every key may also be set for all tasks in the DAG's
/// `default_args`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskArgs {
    /// When the task runs given its upstream tasks' states. Default `all_success`.
    pub trigger_rule: Option<TriggerRule>,
    /// How many times a failed try is retried. Default 0.
    pub retries: Option<u32>,
    /// The wait before a retry. Default `5m`.
    pub retry_delay: Option<Dur>,
    /// Double the wait after each failed try (with Airflow's deterministic
    /// jitter). Default false.
    pub retry_exponential_backoff: Option<bool>,
    /// The longest wait between tries with exponential backoff. Default `24h`.
    pub max_retry_delay: Option<Dur>,
    /// A try running longer than this is cancelled (its processes killed) and
    /// counts as failed.
    pub execution_timeout: Option<Dur>,
    /// Addresses mailed when a try fails for good.
    pub email_on_failure: Option<Vec<String>>,
    /// Addresses mailed when a try fails and will be retried.
    pub email_on_retry: Option<Vec<String>>,
    /// Run only when this task succeeded or was skipped in the DAG's
    /// previous run (by logical date); the first run, and a task the
    /// previous run did not have, pass. Default false.
    pub depends_on_past: Option<bool>,
    /// With `depends_on_past`: also wait until the tasks right after this
    /// one succeeded or were skipped in the previous run. Default false.
    pub wait_for_downstream: Option<bool>,
    /// Notified when a try fails for good.
    pub on_failure: Option<Vec<NotifierSpec>>,
    /// Notified when a try fails and will be retried.
    pub on_retry: Option<Vec<NotifierSpec>>,
    /// Notified when the task succeeds.
    pub on_success: Option<Vec<NotifierSpec>>,
    /// A pool (from `config/pools.yaml` or `sluice pools set`) whose slots
    /// this task takes while it runs; when the pool is full it waits.
    pub pool: Option<String>,
    /// How many of the pool's slots a try takes. Default 1.
    pub pool_slots: Option<u32>,
    /// Among tasks ready at once (in this run, and in a pool across runs),
    /// higher runs first. Default 1.
    pub priority_weight: Option<i32>,
}

/// Where a notice goes: give `email` or `webhook`. A notice that cannot
/// be delivered is logged, retried a few times, and kept with the task
/// instance or run; it never changes the task's outcome.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifierSpec {
    /// Mail the notice to these addresses (templates allowed, e.g.
    /// `{{ var.alerts_to }}`), through the `smtp_default` connection, or
    /// into `outbox/` when there is none.
    pub email: Option<Vec<String>>,
    /// POST the notice as JSON to this URL. A template is rendered first
    /// (`{{ var.slack_webhook }}`, so that the URL's token stays out of
    /// the DAG file); logs show only its host.
    pub webhook: Option<String>,
    /// The webhook's body: `json` (sluice's fields: event, dag_id, run_id,
    /// task_id, state, error, text; the default) or `slack` (`{"text": ...}`,
    /// which Slack, Mattermost and Rocket.Chat incoming webhooks take).
    pub format: Option<HookFormat>,
}

/// A webhook body format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HookFormat {
    #[default]
    Json,
    Slack,
}

impl TaskArgs {
    /// This task's args, falling back to the DAG's `default_args`.
    pub fn or(&self, defaults: &TaskArgs) -> TaskArgs {
        TaskArgs {
            trigger_rule: self.trigger_rule.or(defaults.trigger_rule),
            retries: self.retries.or(defaults.retries),
            retry_delay: self.retry_delay.or(defaults.retry_delay),
            retry_exponential_backoff: self.retry_exponential_backoff.or(defaults.retry_exponential_backoff),
            max_retry_delay: self.max_retry_delay.or(defaults.max_retry_delay),
            execution_timeout: self.execution_timeout.or(defaults.execution_timeout),
            email_on_failure: self.email_on_failure.clone().or_else(|| defaults.email_on_failure.clone()),
            email_on_retry: self.email_on_retry.clone().or_else(|| defaults.email_on_retry.clone()),
            depends_on_past: self.depends_on_past.or(defaults.depends_on_past),
            wait_for_downstream: self.wait_for_downstream.or(defaults.wait_for_downstream),
            on_failure: self.on_failure.clone().or_else(|| defaults.on_failure.clone()),
            on_retry: self.on_retry.clone().or_else(|| defaults.on_retry.clone()),
            on_success: self.on_success.clone().or_else(|| defaults.on_success.clone()),
            pool: self.pool.clone().or_else(|| defaults.pool.clone()),
            pool_slots: self.pool_slots.or(defaults.pool_slots),
            priority_weight: self.priority_weight.or(defaults.priority_weight),
        }
    }
}
