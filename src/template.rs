//! Templating with minijinja, using Airflow's names.
//!
//! Every string in a task's configuration is a template, rendered just
//! before the task runs, with:
//!
//! | name | value |
//! |---|---|
//! | `ds`, `ds_nodash` | the logical date's day in the DAG's time zone, `2024-01-05` / `20240105` |
//! | `ts`, `ts_nodash` | the logical date, `2024-01-05T00:00:00+09:00` / `20240105T000000` |
//! | `logical_date`, `data_interval_start`, `data_interval_end` | RFC 3339 timestamps in the DAG's time zone |
//! | `next_ds` | the day the data interval ends on |
//! | `run_id`, `dag_id`, `task_id`, `try_number` | identifiers of the running try |
//! | `params` | the DAG's params, overridden by `--conf` |
//! | `upstream.TASK` | an upstream task's output: `metrics`, `note`, `artifacts` |
//! | `conn.ID.host` (`port`, `login`, `password`, `schema`, `uri`, `extra.KEY`) | a connection's parts |
//! | `var.NAME`, `var.value.NAME` | a variable (`SLUICE_VAR_NAME` or `config/variables.yaml`) |
//! | `var.json.NAME` | a variable parsed as JSON (`var.json.limits.daily`) |
//! | `dag_run.conf`, `dag_run.run_id`, `dag_run.logical_date` | the run, as Airflow names it (`conf` is the params) |
//! | `ti.try_number`, `ti.task_id`, `ti.dag_id`, `ti.run_id` | the try, as Airflow names it |
//! | `item`, `map_index` | a mapped task's element and its index (`expand`) |
//! | `prev_data_interval_start_success`, `prev_data_interval_end_success`, `prev_start_date_success` | the interval and start of the DAG's latest successful run before this one (by logical date), or none |
//! | `macros.ds_add(ds, n)`, `macros.ds_format(ds, from, to)` | date helpers |
//!
//! Filters: `sqlquote` (a SQL string literal), `strftime(fmt)` (formats an
//! RFC 3339 timestamp or a date).
//!
//! Undefined names are errors, never empty strings.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use minijinja::value::{Object, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

use crate::connections::Connections;

/// The names a template may use at the top level.
pub const KNOWN_NAMES: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "next_ds",
    "run_id",
    "dag_id",
    "task_id",
    "try_number",
    "params",
    "upstream",
    "conn",
    "var",
    "dag_run",
    "ti",
    "prev_data_interval_start_success",
    "prev_data_interval_end_success",
    "prev_start_date_success",
    "item",
    "map_index",
    "macros",
    // minijinja's global functions
    "range",
    "dict",
    "namespace",
    "debug",
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template syntax error: {0}")]
    Syntax(String),
    #[error("{0}")]
    Render(String),
}

/// A template environment shared by every render.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a string contains template syntax at all. Strings without it are
/// returned as they are, which keeps shell `$VAR`s and SQL untouched.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("sqlquote", |v: Value| -> Result<String, minijinja::Error> {
            let s = v.to_string();
            Ok(format!("'{}'", s.replace('\'', "''")))
        });
        env.add_filter("strftime", |v: String, fmt: String| -> Result<String, minijinja::Error> {
            format_time(&v, &fmt).ok_or_else(|| {
                minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime: `{v}` is not a date or an RFC 3339 timestamp"))
            })
        });
        let mut macros = BTreeMap::new();
        macros.insert("ds_add", Value::from_function(ds_add));
        macros.insert("ds_format", Value::from_function(ds_format));
        env.add_global("macros", Value::from_iter(macros));
        Templates { env }
    }

    /// Checks a template at validate time: it must compile, and every
    /// top-level name it reads must exist. `params` are the DAG's declared
    /// params; `params.X` for an undeclared X is an error.
    pub fn check(&self, src: &str, params: &BTreeSet<String>, connections: Option<&BTreeSet<String>>) -> Vec<String> {
        if !is_template(src) {
            return Vec::new();
        }
        let tmpl = match self.env.template_from_str(src) {
            Ok(t) => t,
            Err(e) => return vec![format!("template does not compile: {}", describe(&e))],
        };
        let mut problems = Vec::new();
        for name in tmpl.undeclared_variables(true) {
            let mut parts = name.split('.');
            let top = parts.next().unwrap_or_default();
            if !KNOWN_NAMES.contains(&top) {
                problems.push(format!("template uses unknown variable `{top}`{}", crate::diag::hint(top, KNOWN_NAMES.iter().copied())));
                continue;
            }
            let second = parts.next();
            match (top, second) {
                ("params", Some(p)) if !params.contains(p) => problems.push(format!(
                    "template uses `params.{p}` but the DAG declares no param `{p}`{}",
                    crate::diag::hint(p, params.iter().map(String::as_str))
                )),
                ("conn", Some(c)) => {
                    if let Some(known) = connections
                        && !known.contains(c)
                    {
                        problems.push(format!(
                            "template uses connection `{c}`, which is not defined{}",
                            crate::diag::hint(c, known.iter().map(String::as_str))
                        ));
                    }
                }
                _ => {}
            }
        }
        problems.sort();
        problems.dedup();
        problems
    }

    /// Renders, at validate time, a template that reads nothing but
    /// variables (`var.X`), looking each up with `lookup`. `None` when it
    /// reads anything else (it can only be rendered in a run); an error for
    /// a variable `lookup` does not know or a template that fails.
    pub fn render_vars_only(&self, src: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<Result<String, String>> {
        let tmpl = self.env.template_from_str(src).ok()?;
        let names = tmpl.undeclared_variables(true);
        let mut vars = serde_json::Map::new();
        for name in &names {
            let var = name.strip_prefix("var.")?;
            // `var.value.X` is `var.X`; `var.json.X` renders only in a run.
            let var = match var.split_once('.') {
                Some(("value", rest)) => rest,
                Some(("json", _)) => return None,
                _ => var,
            };
            match lookup(var) {
                Some(v) => {
                    vars.insert(var.to_string(), serde_json::Value::from(v));
                }
                None => return Some(Err(format!("variable `{var}` is not defined"))),
            }
        }
        // `var.value.X` reads the same values.
        let same = serde_json::Value::Object(vars.clone());
        vars.entry("value").or_insert(same);
        let ctx = Value::from_serialize(serde_json::json!({ "var": vars }));
        Some(tmpl.render(ctx).map_err(|e| describe(&e)))
    }

    /// Renders `src` with `ctx`. Strings without template syntax are
    /// returned unchanged.
    pub fn render(&self, src: &str, ctx: &Value) -> Result<String, TemplateError> {
        if !is_template(src) {
            return Ok(src.to_string());
        }
        let tmpl = self.env.template_from_str(src).map_err(|e| TemplateError::Syntax(describe(&e)))?;
        tmpl.render(ctx).map_err(|e| {
            let mut msg = describe(&e);
            if e.kind() == ErrorKind::UndefinedError {
                let missing: Vec<String> = tmpl.undeclared_variables(true).into_iter().filter(|n| !resolves(ctx, n)).collect();
                if !missing.is_empty() {
                    msg = format!("{msg}: `{}` is not defined", missing.join("`, `"));
                }
            }
            TemplateError::Render(msg)
        })
    }

    /// Renders a value for use as a native value (a SQL bind parameter): a
    /// string that is exactly one `{{ expression }}` evaluates to the
    /// expression's own type (`{{ params.limit }}` stays an integer); other
    /// strings render to strings; other YAML values pass through.
    pub fn render_native(&self, v: &serde_yaml::Value, ctx: &Value) -> Result<serde_json::Value, TemplateError> {
        if let serde_yaml::Value::String(s) = v {
            let t = s.trim();
            if let Some(expr) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"))
                && !expr.contains("{{")
                && !expr.contains("}}")
            {
                let e = self.env.compile_expression(expr).map_err(|e| TemplateError::Syntax(describe(&e)))?;
                let out = e.eval(ctx).map_err(|e| TemplateError::Render(describe(&e)))?;
                if out.is_undefined() {
                    return Err(TemplateError::Render(format!("`{}` is not defined", expr.trim())));
                }
                return serde_json::to_value(&out).map_err(|e| TemplateError::Render(e.to_string()));
            }
            return Ok(serde_json::Value::String(self.render(s, ctx)?));
        }
        serde_json::to_value(v).map_err(|e| TemplateError::Render(e.to_string()))
    }

    /// Renders every string inside a YAML value, recursively.
    pub fn render_yaml(&self, v: &serde_yaml::Value, ctx: &Value, path: &str) -> Result<serde_yaml::Value, TemplateError> {
        use serde_yaml::Value as Y;
        Ok(match v {
            Y::String(s) => Y::String(self.render(s, ctx).map_err(|e| at_path(e, path))?),
            Y::Sequence(items) => Y::Sequence(
                items.iter().enumerate().map(|(i, x)| self.render_yaml(x, ctx, &crate::diag::index(path, i))).collect::<Result<_, _>>()?,
            ),
            Y::Mapping(m) => {
                let mut out = serde_yaml::Mapping::new();
                for (k, x) in m {
                    let key = k.as_str().unwrap_or("?");
                    out.insert(k.clone(), self.render_yaml(x, ctx, &crate::diag::join(path, key))?);
                }
                Y::Mapping(out)
            }
            Y::Tagged(t) => {
                Y::Tagged(Box::new(serde_yaml::value::TaggedValue { tag: t.tag.clone(), value: self.render_yaml(&t.value, ctx, path)? }))
            }
            other => other.clone(),
        })
    }
}

fn at_path(e: TemplateError, path: &str) -> TemplateError {
    match e {
        TemplateError::Syntax(m) => TemplateError::Syntax(format!("in `{path}`: {m}")),
        TemplateError::Render(m) => TemplateError::Render(format!("template error in `{path}`: {m}")),
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

/// Whether a dotted name resolves in the context (for error messages).
fn resolves(ctx: &Value, name: &str) -> bool {
    let mut v = ctx.clone();
    for part in name.split('.') {
        match v.get_attr(part) {
            Ok(x) if !x.is_undefined() => v = x,
            _ => return false,
        }
    }
    true
}

fn ds_add(ds: String, days: i64) -> Result<String, minijinja::Error> {
    let d = NaiveDate::parse_from_str(&ds, "%Y-%m-%d")
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, format!("ds_add: `{ds}` is not a YYYY-MM-DD date")))?;
    Ok((d + chrono::Duration::days(days)).format("%Y-%m-%d").to_string())
}

fn ds_format(ds: String, input: String, output: String) -> Result<String, minijinja::Error> {
    let d = NaiveDate::parse_from_str(&ds, &input)
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, format!("ds_format: `{ds}` does not match `{input}`")))?;
    Ok(d.format(&output).to_string())
}

fn format_time(v: &str, fmt: &str) -> Option<String> {
    use std::fmt::Write;
    let mut out = String::new();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        write!(out, "{}", t.format(fmt)).ok()?;
    } else if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        write!(out, "{}", d.format(fmt)).ok()?;
    } else {
        return None;
    }
    Some(out)
}

/// What a try's templates can see.
#[derive(Clone)]
pub struct RenderVars {
    pub dag_id: String,
    pub task_id: String,
    pub run_id: String,
    pub try_number: i32,
    pub tz: Tz,
    pub logical_date: DateTime<Utc>,
    pub interval_start: DateTime<Utc>,
    pub interval_end: DateTime<Utc>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub connections: Arc<Connections>,
    /// Outputs of upstream tasks (metrics, notes, artifacts), by task id.
    pub upstream: serde_json::Map<String, serde_json::Value>,
    /// The DAG's latest successful run before this one.
    pub prev_success: Option<PrevSuccess>,
    /// A mapped instance's index and element.
    pub map: Option<(i32, serde_json::Value)>,
}

/// The latest successful run of a DAG before a run, for Airflow's
/// `prev_*_success` names.
#[derive(Debug, Clone, Copy)]
pub struct PrevSuccess {
    pub interval_start: DateTime<Utc>,
    pub interval_end: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
}

impl RenderVars {
    pub fn to_value(&self) -> Value {
        let local = |t: DateTime<Utc>| t.with_timezone(&self.tz);
        let ld = local(self.logical_date);
        let ts = ld.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let mut m: BTreeMap<&str, Value> = BTreeMap::new();
        m.insert("ds", Value::from(ld.format("%Y-%m-%d").to_string()));
        m.insert("ds_nodash", Value::from(ld.format("%Y%m%d").to_string()));
        m.insert("ts", Value::from(ts.clone()));
        m.insert("ts_nodash", Value::from(ld.format("%Y%m%dT%H%M%S").to_string()));
        m.insert("logical_date", Value::from(ts));
        m.insert("data_interval_start", Value::from(local(self.interval_start).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)));
        m.insert("data_interval_end", Value::from(local(self.interval_end).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)));
        m.insert("next_ds", Value::from(local(self.interval_end).format("%Y-%m-%d").to_string()));
        m.insert("dag_id", Value::from(self.dag_id.clone()));
        m.insert("task_id", Value::from(self.task_id.clone()));
        m.insert("run_id", Value::from(self.run_id.clone()));
        m.insert("try_number", Value::from(self.try_number));
        m.insert("params", Value::from_serialize(&self.params));
        m.insert("upstream", Value::from_serialize(&self.upstream));
        m.insert("conn", Value::from_object(ConnObject(self.connections.clone())));
        m.insert("var", Value::from_object(VarObject(self.connections.clone())));
        let stamp = |t: Option<DateTime<Utc>>| match t {
            Some(t) => Value::from(local(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)),
            None => Value::from(()),
        };
        let prev = self.prev_success;
        m.insert("prev_data_interval_start_success", stamp(prev.map(|p| p.interval_start)));
        m.insert("prev_data_interval_end_success", stamp(prev.map(|p| p.interval_end)));
        m.insert("prev_start_date_success", stamp(prev.and_then(|p| p.started_at)));
        if let Some((i, item)) = &self.map {
            m.insert("map_index", Value::from(*i));
            m.insert("item", Value::from_serialize(item));
        }
        // Airflow's spellings of the same things.
        m.insert(
            "dag_run",
            Value::from_serialize(serde_json::json!({
                "conf": self.params,
                "run_id": self.run_id,
                "logical_date": ld.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                "dag_id": self.dag_id,
            })),
        );
        m.insert(
            "ti",
            Value::from_serialize(serde_json::json!({
                "try_number": self.try_number,
                "task_id": self.task_id,
                "dag_id": self.dag_id,
                "run_id": self.run_id,
            })),
        );
        Value::from_iter(m)
    }
}

#[derive(Debug)]
struct ConnObject(Arc<Connections>);

impl Object for ConnObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let c = self.0.get(key.as_str()?).ok()?;
        Some(Value::from_serialize(c.template_view()))
    }
}

#[derive(Debug)]
struct VarObject(Arc<Connections>);

impl Object for VarObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            // Airflow's `var.value.NAME` and `var.json.NAME` (a variable
            // named `value` or `json` is reached as `var.value.value`).
            "value" => Some(Value::from_object(VarObject(self.0.clone()))),
            "json" => Some(Value::from_object(VarJson(self.0.clone()))),
            name => self.0.variable(name).map(Value::from),
        }
    }
}

/// `var.json.NAME`: a variable's value parsed as JSON (undefined when it
/// is not JSON, so that the template fails with the variable's name).
#[derive(Debug)]
struct VarJson(Arc<Connections>);

impl Object for VarJson {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let text = self.0.variable(key.as_str()?)?;
        let parsed: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Value::from_serialize(parsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> RenderVars {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        RenderVars {
            dag_id: "d".into(),
            task_id: "t".into(),
            run_id: "7".into(),
            try_number: 1,
            tz: "Asia/Seoul".parse().unwrap(),
            logical_date: t("2024-01-04T15:00:00Z"),
            interval_start: t("2024-01-04T15:00:00Z"),
            interval_end: t("2024-01-05T15:00:00Z"),
            params: serde_json::json!({"n": 3}).as_object().unwrap().clone(),
            connections: Arc::new(Connections::default()),
            upstream: Default::default(),
            prev_success: None,
            map: None,
        }
    }

    #[test]
    fn airflow_names_in_dag_timezone() {
        let t = Templates::new();
        let ctx = vars().to_value();
        assert_eq!(t.render("{{ ds }} {{ ds_nodash }}", &ctx).unwrap(), "2024-01-05 20240105");
        assert_eq!(t.render("{{ ts }}", &ctx).unwrap(), "2024-01-05T00:00:00+09:00");
        assert_eq!(t.render("{{ macros.ds_add(ds, -1) }}", &ctx).unwrap(), "2024-01-04");
        assert_eq!(t.render("{{ params.n * 2 }}", &ctx).unwrap(), "6");
        assert_eq!(t.render("{{ next_ds }}", &ctx).unwrap(), "2024-01-06");
        assert_eq!(t.render("{{ \"it's\" | sqlquote }}", &ctx).unwrap(), "'it''s'");
        assert_eq!(t.render("{{ data_interval_end | strftime('%Y%m') }}", &ctx).unwrap(), "202401");
        assert_eq!(t.render("echo $HOME", &ctx).unwrap(), "echo $HOME");
    }

    #[test]
    fn airflow_spellings_of_runs_tries_and_variables() {
        let t = Templates::new();
        let mut conns = Connections::default();
        conns.set_variable("region", "kr");
        conns.set_variable("limits", r#"{"daily": 500, "tags": ["a", "b"]}"#);
        let mut v = vars();
        v.connections = Arc::new(conns);
        let ctx = v.to_value();
        let r = |s: &str| t.render(s, &ctx).unwrap();
        assert_eq!(r("{{ var.region }} {{ var.value.region }}"), "kr kr");
        assert_eq!(r("{{ var.json.limits.daily }} {{ var.json.limits.tags[1] }}"), "500 b");
        assert_eq!(r("{{ dag_run.conf.n }} {{ dag_run.run_id }} {{ dag_run.logical_date }}"), "3 7 2024-01-05T00:00:00+09:00");
        assert_eq!(r("{{ ti.try_number }} {{ ti.task_id }}"), "1 t");
        // Not JSON: an error naming the variable, not an empty string.
        let e = t.render("{{ var.json.region.x }}", &ctx).unwrap_err().to_string();
        assert!(e.contains("region"), "{e}");
        let params: BTreeSet<String> = ["n".to_string()].into();
        assert!(t.check("{{ dag_run.conf.n }} {{ ti.try_number }} {{ var.json.limits.daily }}", &params, None).is_empty());
        // Validation renders `var.value.X` like `var.X`.
        let look = |name: &str| (name == "region").then(|| "kr".to_string());
        assert_eq!(t.render_vars_only("{{ var.value.region }}@x.com", &look), Some(Ok("kr@x.com".into())));
        assert_eq!(t.render_vars_only("{{ var.json.limits.daily }}", &look), None);
    }

    #[test]
    fn undefined_is_an_error_naming_the_variable() {
        let t = Templates::new();
        let e = t.render("{{ params.missing }}", &vars().to_value()).unwrap_err().to_string();
        assert!(e.contains("params.missing"), "{e}");
    }

    #[test]
    fn check_reports_unknown_names_and_syntax() {
        let t = Templates::new();
        let params: BTreeSet<String> = ["n".to_string()].into();
        assert!(t.check("{{ ds }}", &params, None).is_empty());
        assert!(t.check("{{ dss }}", &params, None)[0].contains("did you mean `ds`"));
        assert!(t.check("{{ params.m }}", &params, None)[0].contains("params.m"));
        assert!(t.check("{{ ds ", &params, None)[0].contains("does not compile"));
        assert!(t.check("{% for i in range(3) %}{{ i }}{% endfor %}", &params, None).is_empty());
    }
}
