//! `sensor`: waits until something is there (Airflow's sensors).
//!
//! ```yaml
//! - id: wait_for_export
//!   type: sensor
//!   file: "{{ var.export_dir }}/{{ ds }}/_SUCCESS"   # or s3:, sql:, http:
//!   mode: reschedule        # free the worker slot between pokes
//!   poke_interval: 1m
//!   timeout: 6h
//! ```
//!
//! Each poke asks once. In `poke` mode the try sleeps between pokes and
//! holds its worker slot; in `reschedule` mode a poke that finds nothing
//! ends the try's turn: the instance becomes `up_for_reschedule` with its
//! next poke time, the slot is free, and the same try (same try number,
//! same log) resumes when the time comes. `timeout` counts from the try's
//! first poke either way. A sensor that times out fails without using its
//! retries (as in Airflow), or is skipped with `soft_fail`. Under
//! `sluice tasks test` a sensor always pokes in place.

use std::time::Duration;

use chrono::Utc;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ErrorKind, Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::dag::duration::{Dur, format};
use crate::s3::S3Uri;

/// Waits for a file, an S3 object, a query's answer or an HTTP endpoint.
/// Give exactly one of `file`, `s3`, `sql` and `http`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// A local path or glob, relative to the project root: done when at
    /// least one file matches.
    pub file: Option<String>,
    /// `s3://bucket/key` (done when the object exists) or a prefix ending
    /// in `/` (done when any object is under it). Needs `conn`.
    pub s3: Option<String>,
    /// A query: done when its first row's first cell is true (true, a
    /// non-zero number, a non-empty string other than `false`/`no`/`0`).
    /// No row or NULL is not done. Needs `conn`.
    pub sql: Option<String>,
    /// An HTTP(S) URL fetched with GET: done on a 2xx status (and, with
    /// `json_field`, when that field of the JSON body is true or equals
    /// `equals`). Other statuses and refused connections are "not yet".
    pub http: Option<String>,
    /// The connection: an S3 connection for `s3`, a Postgres one for `sql`.
    pub conn: Option<String>,
    /// `http`: a JSON pointer into the response body, e.g. `/status`.
    pub json_field: Option<String>,
    /// `http` with `json_field`: the value that means done. Without it, the
    /// field must be true (as `sql`'s cell).
    pub equals: Option<serde_json::Value>,
    /// How long between pokes. Default `1m`.
    pub poke_interval: Option<Dur>,
    /// How long the try may wait, from its first poke, before it fails
    /// (not retried) or, with `soft_fail`, is skipped. Default `7d`.
    pub timeout: Option<Dur>,
    /// Skip the task instead of failing it when the sensor times out.
    #[serde(default)]
    pub soft_fail: bool,
    /// `poke` (the try waits, holding its slot; the default) or
    /// `reschedule` (the slot is free between pokes; state
    /// `up_for_reschedule`).
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Poke,
    Reschedule,
}

const DEFAULT_POKE: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// What one poke asks.
enum Target {
    File(String),
    S3 { at: S3Uri, client: aws_sdk_s3::Client, conn: String },
    Sql { query: String, pool: sqlx::PgPool, conn: String },
    Http { url: String, field: Option<String>, equals: Option<serde_json::Value> },
}

pub struct Sensor {
    target: Target,
    what: String,
    poke: Duration,
    timeout: Duration,
    soft_fail: bool,
    mode: Mode,
}

impl SensorConfig {
    fn targets(&self) -> Vec<&'static str> {
        [("file", &self.file), ("s3", &self.s3), ("sql", &self.sql), ("http", &self.http)]
            .into_iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
            .collect()
    }
}

impl TaskType for SensorConfig {
    const NAME: &'static str = "sensor";
    type Built = Sensor;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        let targets = self.targets();
        match targets.as_slice() {
            [] => cx.error("type", "a sensor needs what to wait for: one of `file`, `s3`, `sql` or `http`"),
            [_] => {}
            many => cx.error(many[1], format!("a sensor waits for one thing; it has {}: keep one", many.join(", "))),
        }
        let conn_kind = match targets.first() {
            Some(&"s3") => Some(("s3", "an S3")),
            Some(&"sql") => Some(("postgres", "a Postgres")),
            _ => None,
        };
        match (conn_kind, &self.conn) {
            (Some((kind, _)), Some(c)) => cx.check_conn("conn", c, kind),
            (Some((_, which)), None) => cx.error("type", format!("this `{}` sensor needs `conn`: {which} connection", targets[0])),
            (None, Some(_)) if !targets.is_empty() => cx.warning("conn", format!("`conn` is not used by a `{}` sensor", targets[0])),
            _ => {}
        }
        if let Some(s) = self.s3.as_deref().filter(|s| !crate::template::is_template(s))
            && S3Uri::parse(s).is_err()
        {
            cx.error("s3", "`s3` must be an s3://bucket/key URI (or a prefix ending in /)");
        }
        if let Some(u) = self.http.as_deref().filter(|s| !crate::template::is_template(s)) {
            match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") => {}
                _ => cx.error("http", format!("`{u}` is not an http:// or https:// URL")),
            }
        }
        if self.http.is_none() && (self.json_field.is_some() || self.equals.is_some()) {
            cx.error("json_field", "`json_field` and `equals` go with an `http` sensor");
        }
        if self.equals.is_some() && self.json_field.is_none() {
            cx.error("equals", "`equals` needs `json_field`: the field of the response to compare");
        }
        if let Some(f) = self.json_field.as_deref().filter(|f| !f.is_empty() && !f.starts_with('/')) {
            cx.error("json_field", format!("`{f}` is not a JSON pointer; write it as `/{}`", f.replace('.', "/")));
        }
        let poke = self.poke_interval.map_or(DEFAULT_POKE, |d| d.0);
        if poke.is_zero() {
            cx.error("poke_interval", "poke_interval must be longer than 0s");
        }
        if let Some(t) = self.timeout
            && t.0 < poke
        {
            cx.warning("timeout", format!("timeout ({}) is shorter than poke_interval ({}): the sensor pokes once", format(t.0), format(poke)));
        }
    }

    fn connections(&self) -> Vec<String> {
        self.conn.iter().cloned().collect()
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Sensor, TaskError> {
        let (target, what) = if let Some(f) = self.file {
            (Target::File(f.clone()), format!("file {f}"))
        } else if let Some(s) = self.s3 {
            let id = self.conn.as_deref().ok_or_else(|| TaskError::Config("an `s3` sensor needs `conn`".into()))?;
            let c = ctx.conn(id, "s3")?;
            let at = S3Uri::parse(&s).map_err(TaskError::Config)?;
            (Target::S3 { client: ctx.res.s3_client(c)?, conn: c.id.clone(), at: at.clone() }, at.to_string())
        } else if let Some(q) = self.sql {
            let id = self.conn.as_deref().ok_or_else(|| TaskError::Config("an `sql` sensor needs `conn`".into()))?;
            let pool = ctx.pg(id).await?;
            let query = q.trim().trim_end_matches(';').to_string();
            (Target::Sql { query, pool, conn: id.to_string() }, format!("the query on `{id}`"))
        } else if let Some(u) = self.http {
            let shown = crate::secrets::mask(&u);
            (Target::Http { url: u, field: self.json_field, equals: self.equals }, shown)
        } else {
            return Err(TaskError::Config("a sensor needs one of `file`, `s3`, `sql` or `http`".into()));
        };
        Ok(Sensor {
            target,
            what,
            poke: self.poke_interval.map_or(DEFAULT_POKE, |d| d.0),
            timeout: self.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
            soft_fail: self.soft_fail,
            mode: self.mode,
        })
    }
}

impl Sensor {
    /// Asks once. Errors that another poke could get past are "not yet";
    /// a bad query or a missing bucket fail the try.
    async fn poke(&self, ctx: &TaskCtx) -> Result<bool, TaskError> {
        match &self.target {
            Target::File(pattern) => {
                let full = ctx.project_path(pattern).to_string_lossy().into_owned();
                let mut found = glob::glob(&full).map_err(|e| TaskError::Config(format!("file `{pattern}`: {e}")))?;
                Ok(found.any(|p| p.is_ok()))
            }
            Target::S3 { at, client, conn } => {
                let r = if at.key.ends_with('/') || at.key.is_empty() {
                    crate::s3::probe_any(client, at).await
                } else {
                    crate::s3::exists(client, at).await
                };
                r.map_err(|e| TaskError::with_kind(e.kind(), format!("S3 connection `{conn}`: {e}")))
            }
            Target::Sql { query, pool, conn } => {
                let wrapped = format!("SELECT row_to_json(q)::text FROM ({query}) AS q LIMIT 1");
                let row: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(wrapped))
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| TaskError::sql(format!("the sensor's query on `{conn}`"), &e))?;
                Ok(row.as_deref().and_then(first_field).is_some_and(|v| truthy(&v)))
            }
            Target::Http { url, field, equals } => {
                let shown = crate::secrets::mask(url);
                let resp = match ctx.res.http().get(url).timeout(self.poke.clamp(Duration::from_secs(5), Duration::from_secs(60))).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::info!("GET {shown}: {}", crate::secrets::mask(&super::error::error_chain(&e)));
                        return Ok(false);
                    }
                };
                let status = resp.status();
                if !status.is_success() {
                    tracing::info!("GET {shown}: HTTP {status}");
                    return Ok(false);
                }
                let Some(pointer) = field else { return Ok(true) };
                let body: serde_json::Value = match resp.json().await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::info!("GET {shown}: the body is not JSON ({e})");
                        return Ok(false);
                    }
                };
                let got = body.pointer(pointer);
                tracing::info!("GET {shown}: {pointer} = {}", got.map_or("(missing)".to_string(), |v| v.to_string()));
                Ok(match (got, equals) {
                    (Some(v), Some(want)) => v == want,
                    (Some(v), None) => truthy(v),
                    (None, _) => false,
                })
            }
        }
    }
}

impl Run for Sensor {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let since = ctx.poking_since.unwrap_or_else(Utc::now);
        let reschedule = self.mode == Mode::Reschedule && !ctx.test_mode;
        let mut pokes = 0u64;
        loop {
            pokes += 1;
            if self.poke(ctx).await? {
                let waited = (Utc::now() - since).to_std().unwrap_or_default();
                tracing::info!("{} is there", self.what);
                return Ok(Outcome::note(format!("{} found after {}", self.what, crate::dag::duration::format_elapsed(waited)))
                    .metric("waited_s", waited.as_secs()));
            }
            let waited = (Utc::now() - since).to_std().unwrap_or_default();
            if waited + self.poke > self.timeout {
                let msg = format!(
                    "sensor timed out: {} was not there within {} (timeout; a sensor's timeout is not retried)",
                    self.what,
                    format(self.timeout)
                );
                if self.soft_fail {
                    tracing::warn!("{msg}; skipping the task (soft_fail)");
                    return Ok(Outcome { skipped: true, ..Outcome::note(format!("skipped: {} not there in time (soft_fail)", self.what)) });
                }
                return Err(TaskError::with_kind(ErrorKind::SensorTimeout, msg));
            }
            if reschedule {
                let at = Utc::now() + chrono::Duration::from_std(self.poke).unwrap_or_default();
                tracing::info!("{} is not there yet; next poke at {} (reschedule: the worker slot is free meanwhile)", self.what, at.format("%H:%M:%S"));
                return Ok(Outcome { reschedule_at: Some(at), ..Outcome::default() });
            }
            if pokes == 1 || pokes.is_power_of_two() {
                tracing::info!("{} is not there yet (poke {pokes}); next poke in {}", self.what, format(self.poke));
            }
            tokio::time::sleep(self.poke).await;
        }
    }
}

/// The first field of a JSON object written by `row_to_json` (its key
/// order is the query's column order, which `serde_json::Value` would lose).
fn first_field(json: &str) -> Option<serde_json::Value> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct First;
    impl<'de> Visitor<'de> for First {
        type Value = Option<serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let first = map.next_entry::<IgnoredAny, serde_json::Value>()?.map(|(_, v)| v);
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    serde_json::Deserializer::from_str(json).deserialize_map(First).ok().flatten()
}

/// Whether a cell or field means "done".
fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => crate::runner::exec::truthy(s) && !s.eq_ignore_ascii_case("f"),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cell_keeps_the_column_order() {
        assert_eq!(first_field(r#"{"zz": true, "aa": false}"#), Some(serde_json::json!(true)));
        assert_eq!(first_field(r#"{"n": 0}"#).map(|v| truthy(&v)), Some(false));
        assert_eq!(first_field(r#"{"n": 3, "m": null}"#).map(|v| truthy(&v)), Some(true));
        assert_eq!(first_field("{}"), None);
        assert!(!truthy(&serde_json::json!("f")) && !truthy(&serde_json::json!("false")) && truthy(&serde_json::json!("ready")));
    }
}
