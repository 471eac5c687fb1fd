//! DAGs: the file format, its validation, and the validated model.
//!
//! Invariant: this module does no IO. It turns a file's text into a [`Dag`]
//! or diagnostics; reading files and looking at the environment go through
//! [`crate::tasks::ValidationEnv`], implemented by [`crate::loader`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

pub mod duration;
pub mod graph;
pub mod parse;
pub mod schedule;
pub mod spans;
pub mod spec;
pub mod trigger_rule;

use schedule::{DataInterval, Schedule};
use trigger_rule::TriggerRule;

use crate::tasks::TaskConfig;

pub const DEFAULT_MAX_ACTIVE_RUNS: u32 = 16;
pub const DEFAULT_MAX_ACTIVE_TASKS: u32 = 16;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(86_400);

/// A validated DAG.
#[derive(Debug)]
pub struct Dag {
    pub dag_id: String,
    pub file: PathBuf,
    /// SHA-256 of the file's bytes.
    pub file_hash: String,
    /// The file's text: each run keeps the version it was created with.
    pub source: std::sync::Arc<str>,
    pub description: Option<String>,
    pub schedule: Option<Schedule>,
    /// Data-aware scheduling: a run when these assets were updated.
    pub assets: Option<AssetTrigger>,
    pub timezone: Tz,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    pub params: Map<String, Value>,
    pub tags: Vec<String>,
    /// Notified when a run fails or succeeds.
    pub on_failure: Vec<Notifier>,
    pub on_success: Vec<Notifier>,
    /// A run still going this long after it started fails.
    pub dagrun_timeout: Option<Duration>,
    /// Tasks in file order. `upstream`/`downstream` hold indexes into this.
    pub tasks: Vec<Task>,
    /// Task indexes in a topological order (file order among equals).
    pub topo: Vec<usize>,
    index: HashMap<String, usize>,
    /// Positions of keys in the file, for errors found at run time in the
    /// rendered config.
    pub spans: std::sync::Arc<spans::Spans>,
}

/// A DAG scheduled on assets: a run when all (or any) of them were
/// updated since its last asset-triggered run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetTrigger {
    pub assets: Vec<String>,
    pub any: bool,
}

impl std::fmt::Display for AssetTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "assets {}({})", if self.any { "any" } else { "all" }, self.assets.join(", "))
    }
}

/// Where a notice goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notifier {
    /// Mail to these addresses (templates).
    Email(Vec<String>),
    /// POST to this URL (a template).
    Webhook { url: String, format: spec::HookFormat },
}

impl Notifier {
    /// The notifiers of a list as declared (each entry validated to have
    /// exactly one of `email` and `webhook`).
    pub fn from_specs(specs: &[spec::NotifierSpec]) -> Vec<Notifier> {
        specs
            .iter()
            .filter_map(|s| match (&s.email, &s.webhook) {
                (Some(to), None) => Some(Notifier::Email(to.clone())),
                (None, Some(url)) => Some(Notifier::Webhook { url: url.clone(), format: s.format.unwrap_or_default() }),
                _ => None,
            })
            .collect()
    }
}

/// A validated task.
#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub kind: &'static str,
    pub description: Option<String>,
    /// The type-specific config, unrendered.
    pub config: TaskConfig,
    /// The type-specific keys as written, rendered anew for every try.
    pub raw: serde_yaml::Value,
    pub upstream: Vec<usize>,
    pub downstream: Vec<usize>,
    pub trigger_rule: TriggerRule,
    pub retries: u32,
    pub retry_delay: Duration,
    pub retry_exponential_backoff: bool,
    pub max_retry_delay: Duration,
    pub execution_timeout: Option<Duration>,
    /// Runs only when its instance in the previous run succeeded or was
    /// skipped (Airflow's `depends_on_past`).
    pub depends_on_past: bool,
    /// With `depends_on_past`, also its downstream tasks in the previous run.
    pub wait_for_downstream: bool,
    /// Notified when a try fails for good (`on_failure`, and
    /// `email_on_failure` as an email notifier).
    pub on_failure: Vec<Notifier>,
    /// Notified when a try fails and will be retried.
    pub on_retry: Vec<Notifier>,
    /// Notified when the task succeeds.
    pub on_success: Vec<Notifier>,
    /// Dynamic mapping: what the task maps over.
    pub expand: Option<spec::ExpandSpec>,
    /// With `expand`: instances of it running at once in one run.
    pub max_active_tis: Option<u32>,
    /// Assets the task updates when it succeeds (its `outlets`; the
    /// assets a load or S3 put names by itself are added at run time).
    pub outlets: Vec<String>,
    /// The task group the task is in.
    pub group: Option<String>,
    /// The pool and slots a try takes.
    pub pool: Option<crate::pools::PoolUse>,
    /// Higher is claimed first.
    pub priority_weight: i32,
    /// The task's key path in the file, `tasks[3]`.
    pub path: String,
    /// A template; the task is skipped when it renders falsy.
    pub when: Option<String>,
}

impl Dag {
    pub(crate) fn index_tasks(&mut self) {
        self.index = self.tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
    }

    /// Whether a task of this DAG waits for its previous run
    /// (`depends_on_past`, or `wait_for_downstream`, which implies it).
    pub fn depends_on_past(&self) -> bool {
        self.tasks.iter().any(|t| t.depends_on_past)
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.index.get(id).map(|&i| &self.tasks[i])
    }

    /// The task of a task instance id: a task's own id, or a mapped
    /// instance's `TASK[N]` (with N).
    pub fn resolve(&self, id: &str) -> Option<(&Task, Option<i32>)> {
        if let Some(t) = self.task(id) {
            return Some((t, None));
        }
        let (name, n) = split_map_id(id)?;
        self.task(name).filter(|t| t.expand.is_some()).map(|t| (t, Some(n)))
    }

    pub fn task_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn schedule_str(&self) -> String {
        match (&self.schedule, &self.assets) {
            (Some(s), _) => s.expr.clone(),
            (None, Some(a)) => a.to_string(),
            (None, None) => "None".into(),
        }
    }

    /// The task ids downstream of `i`, transitively, including `i`.
    pub fn downstream_closure(&self, roots: &[usize]) -> Vec<usize> {
        let mut seen = vec![false; self.tasks.len()];
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            stack.extend(self.tasks[i].downstream.iter().copied());
        }
        (0..self.tasks.len()).filter(|&i| seen[i]).collect()
    }

    /// The DAG's params with `--conf` overrides applied. Each override must
    /// name a declared param and parse as its default's type.
    pub fn resolve_params(&self, conf: &[(String, String)]) -> Result<Map<String, Value>, String> {
        let mut out = self.params.clone();
        for (k, raw) in conf {
            let Some(default) = self.params.get(k) else {
                let hint = crate::diag::hint(k, self.params.keys().map(String::as_str));
                let known = if self.params.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!("it declares: {}", self.params.keys().cloned().collect::<Vec<_>>().join(", "))
                };
                return Err(format!("--conf {k}: DAG `{}` has no param `{k}`{hint}; {known}", self.dag_id));
            };
            out.insert(k.clone(), coerce_param(k, default, raw)?);
        }
        Ok(out)
    }

    /// The logical date and data interval of a manual run.
    ///
    /// * `--date D`: the interval whose start falls on day D (in the DAG's
    ///   time zone); for an unscheduled DAG, the whole day.
    /// * `--logical-date T`: T must be a tick of the schedule; the interval
    ///   runs to the next tick. For an unscheduled DAG the interval is `[T, T]`.
    /// * neither: logical date now; the interval is the latest one that has
    ///   ended (`[now, now]` for an unscheduled DAG).
    pub fn manual_interval(&self, when: ManualWhen, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DataInterval), String> {
        let tz = self.timezone;
        match (when, &self.schedule) {
            (ManualWhen::Date(d), Some(s)) => {
                let i = s.interval_on_date(d, tz)?;
                Ok((i.start, i))
            }
            (ManualWhen::Date(d), None) => {
                let start = schedule::local_midnight(d, tz);
                let end = schedule::local_midnight(d.succ_opt().unwrap_or(d), tz);
                Ok((start, DataInterval { start, end }))
            }
            (ManualWhen::Logical(t), Some(s)) => {
                if !s.is_tick(t, tz) {
                    let prev = s.prev_at_or_before(t, tz).map(|x| x.to_rfc3339());
                    let next = s.next_after(t, tz).map(|x| x.to_rfc3339());
                    return Err(format!(
                        "{} is not a tick of schedule `{}` ({}); the nearest are {} and {}",
                        t.to_rfc3339(),
                        s.expr,
                        tz,
                        prev.unwrap_or_else(|| "none".into()),
                        next.unwrap_or_else(|| "none".into())
                    ));
                }
                let i = s.interval_starting(t, tz).ok_or("the schedule has no tick after it")?;
                Ok((t, i))
            }
            (ManualWhen::Logical(t), None) => Ok((t, DataInterval { start: t, end: t })),
            (ManualWhen::Now, Some(s)) => {
                let i = s.latest_complete_interval(now, tz).unwrap_or(DataInterval { start: now, end: now });
                Ok((now, i))
            }
            (ManualWhen::Now, None) => Ok((now, DataInterval { start: now, end: now })),
        }
    }
}

/// The task an input refers to: the task itself, or for `X_rejects` the
/// task `X` whose rejects dataset it is.
pub fn input_task(input: &str, is_task: impl Fn(&str) -> bool) -> Option<&str> {
    if is_task(input) {
        return Some(input);
    }
    input.strip_suffix("_rejects").filter(|t| is_task(t))
}

/// The task instance id of a mapped task's instance N: `TASK[N]`.
pub fn map_id(task: &str, n: usize) -> String {
    format!("{task}[{n}]")
}

/// `TASK[N]` as (TASK, N).
pub fn split_map_id(id: &str) -> Option<(&str, i32)> {
    let (name, rest) = id.strip_suffix(']')?.rsplit_once('[')?;
    Some((name, rest.parse().ok()?))
}

/// How a manual run's date was given.
#[derive(Debug, Clone, Copy)]
pub enum ManualWhen {
    Now,
    Date(NaiveDate),
    Logical(DateTime<Utc>),
}

impl Task {
    /// The wait after try `try_number` (1-based) failed. Without backoff it
    /// is `retry_delay`. With backoff it is Airflow's formula: a base of
    /// `ceil(retry_delay * 2^(try_number - 1))` seconds plus a deterministic
    /// jitter of up to one base, derived from the task and logical date,
    /// capped at `max_retry_delay`.
    pub fn retry_wait(&self, dag_id: &str, logical_date: DateTime<Utc>, try_number: i32) -> Duration {
        // As in Airflow, max_retry_delay caps only the backoff.
        if !self.retry_exponential_backoff {
            return self.retry_delay;
        }
        let exp = (try_number.max(1) - 1).min(40) as u32;
        let base = (self.retry_delay.as_secs_f64() * 2f64.powi(exp as i32)).ceil();
        if base <= 0.0 {
            return Duration::ZERO;
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{dag_id}#{}#{}#{try_number}", self.id, logical_date.to_rfc3339()));
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest[..8]);
        let hash = u64::from_be_bytes(b);
        let base_u = base.min(u64::MAX as f64 / 4.0) as u64;
        let secs = base_u + hash % base_u.max(1);
        Duration::from_secs(secs).min(self.max_retry_delay)
    }
}

/// Parses a `--conf` value as the type of the param's default.
pub fn coerce_param(name: &str, default: &Value, raw: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("--conf {name}={raw}: param `{name}` is {what}");
    Ok(match default {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => return Err(bad("a boolean (true or false)")),
        },
        Value::Number(n) if n.is_i64() || n.is_u64() => Value::from(raw.replace('_', "").parse::<i64>().map_err(|_| bad("an integer"))?),
        Value::Number(_) => Value::from(raw.replace('_', "").parse::<f64>().map_err(|_| bad("a number"))?),
        Value::String(_) => Value::String(raw.to_string()),
        Value::Array(_) => {
            let v: Value = serde_yaml::from_str(raw).map_err(|_| bad("a list, e.g. [1, 2]"))?;
            if !v.is_array() {
                return Err(bad("a list, e.g. [1, 2]"));
            }
            v
        }
        Value::Object(_) => {
            let v: Value = serde_yaml::from_str(raw).map_err(|_| bad("a mapping, e.g. {a: 1}"))?;
            if !v.is_object() {
                return Err(bad("a mapping, e.g. {a: 1}"));
            }
            v
        }
        Value::Null => serde_yaml::from_str(raw).unwrap_or(Value::String(raw.to_string())),
    })
}

/// Parses `--conf` arguments: `key=value` pairs, or one JSON object.
pub fn parse_conf_args(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for a in args {
        if a.trim_start().starts_with('{') {
            let m: Map<String, Value> = serde_json::from_str(a).map_err(|e| format!("--conf {a}: not a JSON object: {e}"))?;
            for (k, v) in m {
                let s = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.push((k, s));
            }
        } else {
            let (k, v) = a.split_once('=').ok_or_else(|| format!("--conf {a}: expected KEY=VALUE"))?;
            out.push((k.trim().to_string(), v.to_string()));
        }
    }
    Ok(out)
}

/// A DAG from YAML text, for unit tests elsewhere (no files, no connections).
#[cfg(test)]
pub(crate) fn from_yaml(src: &str) -> Dag {
    struct Env(crate::connections::Connections);
    impl crate::tasks::ValidationEnv for Env {
        fn read_file(&self, _: &str) -> Result<String, String> {
            Err("no files".into())
        }
        fn connections(&self) -> &crate::connections::Connections {
            &self.0
        }
    }
    let t = crate::template::Templates::new();
    let p = parse::parse(std::path::Path::new("d.yaml"), src, &Env(Default::default()), &t);
    p.dag.unwrap_or_else(|| panic!("{:?}", p.diagnostics))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(delay: u64, backoff: bool, max: u64) -> Task {
        Task {
            id: "t".into(),
            kind: "shell",
            description: None,
            config: crate::tasks::TaskConfig::parse("shell", serde_yaml::from_str("{command: 'true'}").unwrap()).unwrap().unwrap(),
            raw: serde_yaml::Value::Null,
            upstream: vec![],
            downstream: vec![],
            trigger_rule: Default::default(),
            retries: 3,
            retry_delay: Duration::from_secs(delay),
            retry_exponential_backoff: backoff,
            max_retry_delay: Duration::from_secs(max),
            execution_timeout: None,
            depends_on_past: false,
            wait_for_downstream: false,
            on_failure: vec![],
            on_retry: vec![],
            on_success: vec![],
            outlets: vec![],
            expand: None,
            max_active_tis: None,
            group: None,
            pool: None,
            priority_weight: 1,
            path: "tasks[0]".into(),
            when: None,
        }
    }

    #[test]
    fn retry_waits() {
        let at = DateTime::parse_from_rfc3339("2024-01-05T00:00:00Z").unwrap().with_timezone(&Utc);
        // A fixed delay is not capped by max_retry_delay (Airflow caps only the backoff).
        assert_eq!(task(4, false, 1).retry_wait("d", at, 1), Duration::from_secs(4));
        assert_eq!(task(4, false, 1).retry_wait("d", at, 3), Duration::from_secs(4));
        // Backoff: base retry_delay * 2^(try-1) plus a deterministic jitter
        // below one base, capped.
        for try_number in 1..=4 {
            let w = task(10, true, 3600).retry_wait("d", at, try_number).as_secs();
            let base = 10 * 2u64.pow(try_number as u32 - 1);
            assert!((base..2 * base).contains(&w), "try {try_number}: {w}s");
            assert_eq!(w, task(10, true, 3600).retry_wait("d", at, try_number).as_secs(), "deterministic");
        }
        assert_eq!(task(10, true, 15).retry_wait("d", at, 4), Duration::from_secs(15));
        // The exact waits: base 10, 20, 40, 80 plus the jitter of
        // sha256("d#t#2024-01-05T00:00:00+00:00#N") modulo the base.
        let exact: Vec<u64> = (1..=4).map(|n| task(10, true, 3600).retry_wait("d", at, n).as_secs()).collect();
        assert_eq!(exact, vec![10, 20, 68, 142]);
    }

    #[test]
    fn conf_coercion() {
        assert_eq!(coerce_param("n", &Value::from(1), "42").unwrap(), Value::from(42));
        assert!(coerce_param("n", &Value::from(1), "4.2").unwrap_err().contains("an integer"));
        assert_eq!(coerce_param("f", &Value::from(1.5), "2").unwrap(), Value::from(2.0));
        assert_eq!(coerce_param("b", &Value::from(true), "no").unwrap(), Value::from(false));
        assert_eq!(coerce_param("l", &serde_json::json!([1]), "[2, 3]").unwrap(), serde_json::json!([2, 3]));
        assert_eq!(
            parse_conf_args(&["a=1".into(), r#"{"b": 2}"#.into()]).unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }
}
