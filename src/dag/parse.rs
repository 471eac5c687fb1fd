//! From a DAG file's text to a [`Dag`], reporting every problem at once.
//!
//! serde stops at the first error, so the file is not deserialized in one
//! go. Instead:
//!
//! 1. the YAML is parsed to a `serde_yaml::Value` (syntax errors stop here);
//! 2. unknown keys are found by comparing each mapping's keys with the
//!    property names of its struct's JSON Schema, all of them reported, with
//!    "did you mean" hints, and removed;
//! 3. the top level and each task's three key groups are deserialized
//!    separately; when serde fails at a key, the error is reported at that
//!    key's position and the key removed, and deserialization is retried;
//! 4. cross-task checks (duplicate ids, unknown dependencies, cycles) and
//!    each task type's own checks run on whatever parsed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::spec::{DagSpec, TaskArgs, TaskHead};
use super::{Dag, Task, graph, schedule};
use crate::connections::strip_location;
use crate::diag::{At, Diagnostic, Diagnostics, Pos, SpanLookup, hint, index, join};
use crate::tasks::{Produces, TaskConfig, ValidateCx, ValidationEnv, schema_keys};
use crate::template::Templates;

/// The result of parsing one DAG file.
pub struct Parsed {
    /// The DAG, when the file has no errors.
    pub dag: Option<Dag>,
    /// The DAG's id, when it could be determined (for error listings).
    pub dag_id: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Task ids: letters, digits, `_`, `-`, `.`; the same for DAG ids.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 250 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

struct ParsedTask {
    path: String,
    head: Option<TaskHead>,
    /// The run policy with `default_args` applied, and as the task wrote it.
    args: TaskArgs,
    own_args: TaskArgs,
    config: Option<TaskConfig>,
    kind: Option<&'static str>,
    raw: Mapping,
}

pub fn parse(file: &Path, source: &str, env: &dyn ValidationEnv, templates: &Templates) -> Parsed {
    let spans = std::sync::Arc::new(super::spans::Spans::index(source));
    let mut d = Diagnostics::new(file, spans.as_ref());
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("dag").to_string();
    let Some(top) = read_mapping(source, &spans, &mut d) else {
        return Parsed { dag: None, dag_id: Some(stem), diagnostics: d.into_vec() };
    };
    let (TopLevel { spec, dag_id, timezone, sched, assets, start_date, end_date }, tasks_value) = top_level(top, &stem, &mut d);
    let tasks = parse_tasks(tasks_value, &spec.default_args, &spec.groups, &mut d);
    let first_at = check_ids(&tasks, &spans, &mut d);
    check_groups(&spec.groups, &first_at, &mut d);
    let edges = dependency_edges(&tasks, &first_at, &mut d);
    check_contents(&spec, &tasks, env, templates, &mut d);

    if d.has_errors() {
        return Parsed { dag: None, dag_id: Some(dag_id), diagnostics: d.into_vec() };
    }

    // Everything parsed: build the model.
    let n = tasks.len();
    let mut built = Vec::with_capacity(n);
    for t in tasks {
        let head = t.head.expect("no errors, so every task parsed");
        let args = t.args;
        built.push(Task {
            id: head.id,
            kind: t.kind.expect("no errors"),
            description: head.description,
            config: t.config.expect("no errors"),
            raw: Value::Mapping(t.raw),
            upstream: Vec::new(),
            downstream: Vec::new(),
            trigger_rule: args.trigger_rule.unwrap_or_default(),
            retries: args.retries.unwrap_or(0),
            retry_delay: args.retry_delay.map_or(super::DEFAULT_RETRY_DELAY, |d| d.0),
            retry_exponential_backoff: args.retry_exponential_backoff.unwrap_or(false),
            max_retry_delay: args.max_retry_delay.map_or(super::DEFAULT_MAX_RETRY_DELAY, |d| d.0),
            execution_timeout: args.execution_timeout.map(|d| d.0),
            // wait_for_downstream implies depends_on_past, as in Airflow.
            depends_on_past: args.depends_on_past.unwrap_or(false) || args.wait_for_downstream.unwrap_or(false),
            wait_for_downstream: args.wait_for_downstream.unwrap_or(false),
            on_failure: notifiers(args.on_failure.as_deref(), args.email_on_failure),
            on_retry: notifiers(args.on_retry.as_deref(), args.email_on_retry),
            on_success: notifiers(args.on_success.as_deref(), None),
            group: head.group.clone(),
            outlets: head.outlets.clone(),
            expand: head.expand.clone(),
            max_active_tis: head.max_active_tis_per_dagrun,
            pool: args.pool.clone().map(|pool| crate::pools::PoolUse { pool, slots: args.pool_slots.unwrap_or(1) as i32 }),
            priority_weight: args.priority_weight.unwrap_or(1),
            path: t.path,
            when: head.when,
        });
    }
    for &(a, b) in &edges {
        built[a].downstream.push(b);
        built[b].upstream.push(a);
    }
    let topo = graph::topo_order(n, &edges);
    let mut dag = Dag {
        dag_id: dag_id.clone(),
        file: file.to_path_buf(),
        file_hash: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(source.as_bytes()))
        },
        source: std::sync::Arc::from(source),
        description: spec.description,
        schedule: sched,
        assets,
        timezone,
        start_date,
        end_date,
        catchup: spec.catchup,
        max_active_runs: spec.max_active_runs.unwrap_or(super::DEFAULT_MAX_ACTIVE_RUNS),
        max_active_tasks: spec.max_active_tasks.unwrap_or(super::DEFAULT_MAX_ACTIVE_TASKS),
        params: spec.params.into_iter().collect(),
        tags: spec.tags,
        on_failure: super::Notifier::from_specs(&spec.on_failure),
        on_success: super::Notifier::from_specs(&spec.on_success),
        dagrun_timeout: spec.dagrun_timeout.map(|d| d.0),
        tasks: built,
        topo,
        index: Default::default(),
        spans: spans.clone(),
    };
    dag.index_tasks();
    Parsed { dag: Some(dag), dag_id: Some(dag_id), diagnostics: d.into_vec() }
}

/// A task's notifiers: its `on_*` list, and its `email_on_*` addresses as
/// one more email notifier.
fn notifiers(list: Option<&[super::spec::NotifierSpec]>, emails: Option<Vec<String>>) -> Vec<super::Notifier> {
    let mut out = super::Notifier::from_specs(list.unwrap_or_default());
    if let Some(to) = emails.filter(|t| !t.is_empty()) {
        out.push(super::Notifier::Email(to));
    }
    out
}

/// Phase 1: the text as YAML, which must be a mapping. None (with the
/// error in `d`) when it is not.
fn read_mapping(source: &str, spans: &super::spans::Spans, d: &mut Diagnostics<'_>) -> Option<Mapping> {
    let mut value: Value = match serde_yaml::from_str(source) {
        Ok(v) => v,
        Err(e) => {
            let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() }).unwrap_or(Pos::START);
            let raw = e.to_string();
            if raw.contains("duplicate entry") && !spans.duplicates.is_empty() {
                for (path, at) in &spans.duplicates {
                    let first = spans.key_pos(path).map_or(0, |p| p.line);
                    let key = path.rsplit(['.', ']']).next().unwrap_or(path);
                    d.error(
                        At::Pos(*at),
                        format!("duplicate key `{key}` ({path}); it is first on line {first}, and a key may appear only once in a mapping"),
                    );
                }
            } else if let Some(tab) = indenting_tab(source, pos.line) {
                d.error(
                    At::Pos(tab),
                    "this line is indented with a tab; YAML indentation must be spaces (tabs are only allowed inside values)",
                );
            } else {
                let (pos, msg) = yaml_syntax_message(&raw, pos);
                d.error(At::Pos(pos), msg);
            }
            return None;
        }
    };
    if let Err(e) = value.apply_merge() {
        d.error(At::Pos(Pos::START), format!("YAML merge key error: {e}"));
    }
    match value {
        Value::Mapping(m) => Some(m),
        Value::Null => {
            d.error(At::Pos(Pos::START), "the file is empty; a DAG file is a mapping with at least `tasks:`");
            None
        }
        other => {
            d.error(At::Pos(Pos::START), format!("a DAG file must be a mapping (dag_id, schedule, tasks, ...), not {}", kind_of(&other)));
            None
        }
    }
}

/// What the DAG's own keys (all but `tasks`) say.
struct TopLevel {
    spec: DagSpec,
    dag_id: String,
    timezone: chrono_tz::Tz,
    sched: Option<schedule::Schedule>,
    assets: Option<super::AssetTrigger>,
    start_date: Option<DateTime<Utc>>,
    end_date: Option<DateTime<Utc>>,
}

/// Phase 2: the DAG's own keys. Returns them with the `tasks` value.
fn top_level(mut top: Mapping, stem: &str, d: &mut Diagnostics<'_>) -> (TopLevel, Option<Value>) {
    let dag_keys = schema_keys::<DagSpec>();
    remove_unknown_keys(&mut top, "", &dag_keys, "a DAG file", d);
    let tasks_value = top.remove("tasks");
    let spec: DagSpec = deserialize_collect(top, "", d).unwrap_or_default();
    let dag_id = spec.dag_id.clone().unwrap_or_else(|| stem.to_string());
    if !valid_id(&dag_id) {
        let at = if spec.dag_id.is_some() { At::Value("dag_id") } else { At::Pos(Pos::START) };
        d.error(at, format!("invalid DAG id `{dag_id}`: use letters, digits, `_`, `-` and `.`"));
    }

    let timezone = match spec.timezone.as_deref() {
        None => chrono_tz::UTC,
        Some(name) => schedule::parse_tz(name).unwrap_or_else(|e| {
            d.error(At::Value("timezone"), e);
            chrono_tz::UTC
        }),
    };
    let (cron, assets) = match &spec.schedule {
        None => (None, None),
        Some(super::spec::ScheduleSpec::Cron(s)) => (Some(s.as_str()), None),
        Some(super::spec::ScheduleSpec::Assets(a)) => (None, asset_trigger(a, d)),
    };
    let sched = cron.and_then(|s| match schedule::Schedule::parse(s) {
        Ok(s) => Some(s),
        Err(e) => {
            d.error(At::Value("schedule"), e);
            None
        }
    });
    let start_date = spec.start_date.as_deref().and_then(|s| parse_date(s, timezone, "start_date", d));
    let end_date = spec.end_date.as_deref().and_then(|s| parse_date(s, timezone, "end_date", d));
    if let (Some(a), Some(b)) = (start_date, end_date)
        && b < a
    {
        d.error(At::Value("end_date"), "end_date is before start_date");
    }
    if cron.is_some() && start_date.is_none() && spec.start_date.is_none() {
        d.error(At::Key("schedule"), "a scheduled DAG needs `start_date` (its first interval starts there), e.g. `start_date: 2024-01-01`");
    }
    for (key, v) in [("max_active_runs", spec.max_active_runs), ("max_active_tasks", spec.max_active_tasks)] {
        if v == Some(0) {
            d.error(At::Value(key), format!("{key} must be at least 1"));
        }
    }

    (TopLevel { spec, dag_id, timezone, sched, assets, start_date, end_date }, tasks_value)
}

/// `schedule: {assets: ...}` as a trigger; errors at `schedule.assets`.
fn asset_trigger(a: &super::spec::AssetSchedule, d: &mut Diagnostics<'_>) -> Option<super::AssetTrigger> {
    use super::spec::AssetsSpec;
    let (list, any, at) = match &a.assets {
        AssetsSpec::List(l) => (l.clone(), false, "schedule.assets".to_string()),
        AssetsSpec::Cond(c) => match (&c.any, &c.all) {
            (Some(l), None) => (l.clone(), true, "schedule.assets.any".to_string()),
            (None, Some(l)) => (l.clone(), false, "schedule.assets.all".to_string()),
            _ => {
                d.error(At::Value("schedule.assets"), "give the assets as a list, or as `{any: [...]}` or `{all: [...]}` (one of the two)");
                return None;
            }
        },
    };
    if list.is_empty() {
        d.error(At::Value(&at), "the list of assets is empty; name at least one, e.g. `schedule: {assets: [shop.orders]}`");
        return None;
    }
    for (i, name) in list.iter().enumerate() {
        if name.trim().is_empty() || crate::template::is_template(name) {
            d.error(
                At::Value(&index(&at, i)),
                "an asset is a fixed name (no templates), e.g. `shop.orders` or `postgres://warehouse/shop.orders`",
            );
        }
    }
    Some(super::AssetTrigger { assets: list, any })
}

/// Phase 3: each task's keys, with `default_args` applied.
fn parse_tasks(
    tasks_value: Option<Value>,
    default_args: &TaskArgs,
    groups: &BTreeMap<String, super::spec::GroupSpec>,
    d: &mut Diagnostics<'_>,
) -> Vec<ParsedTask> {
    let items = match tasks_value {
        None => {
            d.error(At::Pos(Pos::START), "a DAG needs `tasks:`, a list of tasks each with an `id` and a `type`");
            Vec::new()
        }
        Some(Value::Sequence(s)) => {
            if s.is_empty() {
                d.error(At::Value("tasks"), "`tasks` is empty; a DAG needs at least one task");
            }
            s
        }
        Some(other) => {
            d.error(At::Value("tasks"), format!("`tasks` must be a list of tasks, not {}", kind_of(&other)));
            Vec::new()
        }
    };
    let head_keys = schema_keys::<TaskHead>();
    let args_keys = schema_keys::<TaskArgs>();
    let mut tasks: Vec<ParsedTask> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = index("tasks", i);
        let Value::Mapping(map) = item else {
            d.error(At::Value(&path), format!("a task must be a mapping with `id` and `type`, not {}", kind_of(&item)));
            continue;
        };
        tasks.push(parse_task(path, map, &head_keys, &args_keys, default_args, groups, d));
    }

    tasks
}

/// Phase 4: task ids, valid and unique. Returns where each is first defined.
fn check_ids(tasks: &[ParsedTask], spans: &super::spans::Spans, d: &mut Diagnostics<'_>) -> BTreeMap<String, usize> {
    let mut first_at: BTreeMap<String, usize> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let Some(head) = &t.head else { continue };
        let id_path = join(&t.path, "id");
        if !valid_id(&head.id) {
            d.error(At::Value(&id_path), format!("invalid task id `{}`: use letters, digits, `_`, `-` and `.`", head.id));
        }
        if let Some(&j) = first_at.get(&head.id) {
            let line = spans_line(spans, &join(&tasks[j].path, "id"));
            d.error(At::Value(&id_path), format!("duplicate task id `{}` (first defined on line {line})", head.id));
        } else {
            first_at.insert(head.id.clone(), i);
        }
    }

    first_at
}

/// Group names: valid ids without `.`, and none the id of a task.
fn check_groups(groups: &BTreeMap<String, super::spec::GroupSpec>, first_at: &BTreeMap<String, usize>, d: &mut Diagnostics<'_>) {
    for name in groups.keys() {
        let at = join("groups", name);
        if !valid_id(name) || name.contains('.') {
            d.error(At::Key(&at), format!("invalid group name `{name}`: use letters, digits, `_` and `-`"));
        } else if first_at.contains_key(name) {
            d.error(
                At::Key(&at),
                format!("`{name}` is both a group and a task id; rename one, so that `depends_on: [{name}]` means one thing"),
            );
        }
    }
}

/// Phase 5: the dependency edges (upstream, downstream), from explicit
/// `depends_on` and implicit inputs; cycles are errors. A dependency names
/// a task, a group (every task in it) or, inside a group, a sibling by its
/// short id.
fn dependency_edges(tasks: &[ParsedTask], first_at: &BTreeMap<String, usize>, d: &mut Diagnostics<'_>) -> Vec<(usize, usize)> {
    let task_ids: BTreeSet<String> = first_at.keys().cloned().collect();
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        if let Some(g) = t.head.as_ref().and_then(|h| h.group.as_deref()) {
            members.entry(g).or_default().push(i);
        }
    }
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let mut edge_at: BTreeMap<(usize, usize), String> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let Some(head) = &t.head else { continue };
        for (k, dep) in head.depends_on.iter().enumerate() {
            let p = index(&join(&t.path, "depends_on"), k);
            let sibling = head.group.as_ref().and_then(|g| first_at.get(&format!("{g}.{dep}")));
            match first_at.get(dep).or(sibling) {
                Some(&j) if j == i => d.error(At::Value(&p), format!("task `{dep}` depends on itself")),
                Some(&j) => {
                    edges.push((j, i));
                    edge_at.entry((j, i)).or_insert(p);
                }
                None => match members.get(dep.as_str()) {
                    Some(m) if m.contains(&i) => {
                        d.error(At::Value(&p), format!("`{}` is in group `{dep}` and cannot depend on its own group", head.id))
                    }
                    Some(m) => {
                        for &j in m {
                            edges.push((j, i));
                            edge_at.entry((j, i)).or_insert_with(|| p.clone());
                        }
                    }
                    None => d.error(
                        At::Value(&p),
                        format!(
                            "`{}` depends on `{dep}`, which is not a task or group of this DAG{}",
                            head.id,
                            hint(dep, task_ids.iter().map(String::as_str).chain(members.keys().copied()))
                        ),
                    ),
                },
            }
        }
        if let Some(u) = head.expand.as_ref().and_then(|e| match e {
            super::spec::ExpandSpec::Source(s) => s.upstream.as_ref(),
            _ => None,
        }) && let Some(&j) = first_at.get(u)
            && j != i
        {
            edges.push((j, i));
            edge_at.entry((j, i)).or_insert_with(|| join(&t.path, "expand.upstream"));
        }
        if let Some(cfg) = &t.config {
            for input in cfg.inputs() {
                let target = super::input_task(&input, |t| first_at.contains_key(t)).map(str::to_string);
                if let Some(&j) = target.as_ref().and_then(|t| first_at.get(t))
                    && j != i
                {
                    edges.push((j, i));
                    edge_at.entry((j, i)).or_insert_with(|| join(&t.path, "inputs"));
                }
            }
        }
    }
    edges.sort_unstable();
    edges.dedup();
    for cycle in graph::cycles(tasks.len(), &edges) {
        let names: Vec<&str> = cycle.iter().map(|&i| tasks[i].head.as_ref().map_or("?", |h| h.id.as_str())).collect();
        // Report at the edge that closes the cycle.
        let n = cycle.len();
        let closing = (cycle[n - 2], cycle[n - 1]);
        let at = edge_at.get(&closing).cloned().unwrap_or_else(|| tasks[cycle[0]].path.clone());
        d.error(At::Value(&at), format!("dependency cycle: {}", names.join(" -> ")));
    }

    edges
}

/// Phase 6: templates, notice addresses and each task type's own checks.
fn check_contents(spec: &DagSpec, tasks: &[ParsedTask], env: &dyn ValidationEnv, templates: &Templates, d: &mut Diagnostics<'_>) {
    let param_names: BTreeSet<String> = spec.params.keys().cloned().collect();
    let conn_ids = env.connections().ids();
    let outputs: BTreeMap<String, Produces> = tasks
        .iter()
        .filter_map(|t| {
            let head = t.head.as_ref()?;
            let produces = t.config.as_ref().map(TaskConfig::produces).unwrap_or_default();
            Some((head.id.clone(), Produces { mapped: head.expand.is_some(), ..produces }))
        })
        .collect();
    let notifier_list = |list: &[super::spec::NotifierSpec], path: &str, d: &mut Diagnostics<'_>| {
        for (i, n) in list.iter().enumerate() {
            let at = index(path, i);
            match (&n.email, &n.webhook) {
                (Some(to), None) => {
                    check_notice_addresses(to, &join(&at, "email"), templates, &param_names, env.connections(), &conn_ids, d);
                    if n.format.is_some() {
                        d.warning(At::Value(&join(&at, "format")), "`format` is for webhooks; an email notice is plain text");
                    }
                }
                (None, Some(url)) => {
                    check_webhook_url(url, &join(&at, "webhook"), templates, &param_names, env.connections(), &conn_ids, d)
                }
                (Some(_), Some(_)) => d.error(At::Value(&at), "a notifier is either `email` or `webhook`: split it in two entries"),
                (None, None) => d.error(
                    At::Value(&at),
                    "a notifier needs `email: [addresses]` or `webhook: URL` (e.g. `- webhook: \"{{ var.slack_webhook }}\"`)",
                ),
            }
        }
    };
    let notices = |args: &TaskArgs, path: &str, d: &mut Diagnostics<'_>| {
        for (key, list) in [("email_on_failure", &args.email_on_failure), ("email_on_retry", &args.email_on_retry)] {
            if let Some(list) = list {
                check_notice_addresses(list, &join(path, key), templates, &param_names, env.connections(), &conn_ids, d);
            }
        }
        for (key, list) in [("on_failure", &args.on_failure), ("on_retry", &args.on_retry), ("on_success", &args.on_success)] {
            if let Some(list) = list {
                notifier_list(list, &join(path, key), d);
            }
        }
    };
    let declared_pools = env
        .read_file(crate::pools::POOLS_FILE)
        .ok()
        .and_then(|t| serde_yaml::from_str::<BTreeMap<String, crate::pools::PoolSpec>>(&t).ok());
    let pools = |args: &TaskArgs, own: &TaskArgs, path: &str, d: &mut Diagnostics<'_>| {
        // Checked where it is written: default_args once, a task for its own keys.
        if own.pool.is_none() && own.pool_slots.is_none() {
            return;
        }
        let at = |key: &str, own_has: bool| if own_has { join(path, key) } else { join("default_args", key) };
        if args.pool_slots == Some(0) {
            d.error(At::Value(&at("pool_slots", own.pool_slots.is_some())), "pool_slots must be at least 1");
        }
        let Some(pool) = &args.pool else {
            if args.pool_slots.is_some() && own.pool_slots.is_some() {
                d.warning(At::Value(&join(path, "pool_slots")), "pool_slots is used only with `pool`");
            }
            return;
        };
        let key = at("pool", own.pool.is_some());
        match declared_pools.as_ref().and_then(|p| p.get(pool)) {
            Some(p) if args.pool_slots.unwrap_or(1) > p.slots => d.error(
                At::Value(&at("pool_slots", own.pool_slots.is_some())),
                format!(
                    "the task takes {} slots of pool `{pool}`, which has {} ({}): it could never run",
                    args.pool_slots.unwrap_or(1),
                    p.slots,
                    crate::pools::POOLS_FILE
                ),
            ),
            Some(_) => {}
            None => {
                let known = declared_pools.as_ref().map(|p| hint(pool, p.keys().map(String::as_str))).unwrap_or_default();
                d.warning(
                    At::Value(&key),
                    format!(
                        "pool `{pool}` is not declared in {}{known}; unless `sluice pools set {pool} SLOTS` created it, the task fails when it is due",
                        crate::pools::POOLS_FILE
                    ),
                )
            }
        }
    };
    notices(&spec.default_args, "default_args", d);
    pools(&spec.default_args, &spec.default_args, "default_args", d);
    notifier_list(&spec.on_failure, "on_failure", d);
    notifier_list(&spec.on_success, "on_success", d);
    for t in tasks {
        notices(&t.own_args, &t.path, d);
        pools(&t.args, &t.own_args, &t.path, d);
        if let Some(head) = &t.head {
            check_expand(head, &t.path, &outputs, env, templates, &param_names, &conn_ids, d);
        }
        check_templates(&Value::Mapping(t.raw.clone()), &t.path, templates, &param_names, &conn_ids, d);
        if let Some(w) = t.head.as_ref().and_then(|h| h.when.as_ref()) {
            check_templates(&Value::String(w.clone()), &join(&t.path, "when"), templates, &param_names, &conn_ids, d);
        }
        if let Some(cfg) = &t.config {
            let mut cx = ValidateCx { diags: &mut *d, path: t.path.clone(), env, templates, params: &param_names, tasks: &outputs };
            cfg.validate(&mut cx);
        }
    }
}

/// Checks a task's config as rendered for one try with the validators
/// `sluice dags validate` runs, reporting at the positions of the keys in
/// the DAG file.
pub fn validate_rendered(dag: &Dag, task: &Task, config: &TaskConfig, env: &dyn ValidationEnv, templates: &Templates) -> Vec<Diagnostic> {
    let mut d = Diagnostics::new(dag.file.clone(), dag.spans.as_ref());
    let params: BTreeSet<String> = dag.params.keys().cloned().collect();
    let outputs: BTreeMap<String, Produces> = dag.tasks.iter().map(|t| (t.id.clone(), t.config.produces())).collect();
    let mut cx = ValidateCx { diags: &mut d, path: task.path.clone(), env, templates, params: &params, tasks: &outputs };
    config.validate(&mut cx);
    d.into_vec()
}

fn parse_task(
    path: String,
    map: Mapping,
    head_keys: &[String],
    args_keys: &[String],
    defaults: &TaskArgs,
    groups: &BTreeMap<String, super::spec::GroupSpec>,
    d: &mut Diagnostics<'_>,
) -> ParsedTask {
    // The type decides which keys are valid.
    let type_path = join(&path, "type");
    let kind: Option<&'static str> = match map.get("type") {
        None => {
            d.error(At::Value(&path), format!("task has no `type`; one of: {}", crate::tasks::TYPES.join(", ")));
            None
        }
        Some(Value::String(s)) => match crate::tasks::TYPES.iter().find(|t| **t == s) {
            Some(t) => Some(*t),
            None => {
                d.error(
                    At::Value(&type_path),
                    format!(
                        "unknown task type `{s}`{}; types are: {}",
                        hint(s, crate::tasks::TYPES.iter().copied()),
                        crate::tasks::TYPES.join(", ")
                    ),
                );
                None
            }
        },
        Some(other) => {
            d.error(At::Value(&type_path), format!("`type` must be a string, not {}", kind_of(other)));
            None
        }
    };
    let type_keys = kind.and_then(TaskConfig::keys);

    let mut head_map = Mapping::new();
    let mut args_map = Mapping::new();
    let mut type_map = Mapping::new();
    let mut all_known: Vec<&str> = head_keys.iter().chain(args_keys).map(String::as_str).collect();
    if let Some(k) = &type_keys {
        all_known.extend(k.iter().map(String::as_str));
    }
    for (k, v) in map {
        let key = match &k {
            Value::String(s) => s.clone(),
            other => {
                d.error(At::Value(&path), format!("task keys must be strings, not {}", kind_of(other)));
                continue;
            }
        };
        if head_keys.contains(&key) {
            head_map.insert(k, v);
        } else if args_keys.contains(&key) {
            args_map.insert(k, v);
        } else if type_keys.as_ref().is_some_and(|tk| tk.contains(&key)) {
            type_map.insert(k, v);
        } else if type_keys.is_some() {
            let what = kind.map_or("a task".to_string(), |k| format!("a `{k}` task"));
            d.error(At::Key(&join(&path, &key)), format!("unknown key `{key}` for {what}{}", hint(&key, all_known.iter().copied())));
        }
        // With an unknown type, the type's keys cannot be told from typos;
        // the type error is enough.
    }

    // A missing or non-string `type` is reported above; keep serde quiet about it.
    if kind.is_none() {
        head_map.insert(Value::from("type"), Value::from("?"));
    }
    let mut head: Option<TaskHead> = deserialize_collect(head_map, &path, d);
    let own_args: TaskArgs = deserialize_collect::<TaskArgs>(args_map, &path, d).unwrap_or_default();
    // A group's default_args come between the task's own keys and the DAG's.
    let group_args = match head.as_ref().and_then(|h| h.group.as_ref()) {
        None => None,
        Some(g) => match groups.get(g) {
            Some(spec) => Some(spec.default_args.or(defaults)),
            None => {
                let known = if groups.is_empty() {
                    " (the DAG declares no `groups:`)".to_string()
                } else {
                    hint(g, groups.keys().map(String::as_str))
                };
                d.error(At::Value(&join(&path, "group")), format!("group `{g}` is not declared under `groups:`{known}"));
                None
            }
        },
    };
    let args = own_args.or(group_args.as_ref().unwrap_or(defaults));
    if let Some(h) = head.as_mut()
        && let Some(g) = &h.group
    {
        h.id = format!("{g}.{}", h.id);
    }
    let config = kind.and_then(|k| {
        let mut m = type_map.clone();
        collect_errors(&mut m, &path, d, |v| TaskConfig::parse(k, v).expect("known type"))
    });
    ParsedTask { path, head, args, own_args, config, kind, raw: type_map }
}

/// Reports keys of `map` not in `known` and removes them.
fn remove_unknown_keys(map: &mut Mapping, path: &str, known: &[String], what: &str, d: &mut Diagnostics<'_>) {
    let unknown: Vec<Value> = map.keys().filter(|k| !k.as_str().is_some_and(|s| known.iter().any(|x| x == s))).cloned().collect();
    for k in unknown {
        let name = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
        d.error(At::Key(&join(path, &name)), format!("unknown key `{name}` in {what}{}", hint(&name, known.iter().map(String::as_str))));
        map.remove(&k);
    }
}

fn deserialize_collect<T: DeserializeOwned>(mut map: Mapping, path: &str, d: &mut Diagnostics<'_>) -> Option<T> {
    collect_errors(&mut map, path, d, serde_path_to_error::deserialize)
}

/// Deserializes `map`, reporting each failing key and retrying without it,
/// so that every bad key of one mapping is reported.
fn collect_errors<T>(
    map: &mut Mapping,
    path: &str,
    d: &mut Diagnostics<'_>,
    de: impl Fn(Value) -> Result<T, serde_path_to_error::Error<serde_yaml::Error>>,
) -> Option<T> {
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut failed = false;
    for _ in 0..=map.len() {
        match de(Value::Mapping(map.clone())) {
            Ok(v) => return (!failed).then_some(v),
            Err(e) => {
                let rel = e.path().to_string();
                let raw = strip_location(&e.inner().to_string());
                let msg = friendly_serde_message(&raw);
                if let Some(field) = missing_field(&raw)
                    && removed.contains(field)
                {
                    return None; // already reported as invalid
                }
                failed = true;
                // The one untagged key of the DAG's own: say its shapes.
                let msg = if path.is_empty() && rel == "schedule" && msg.contains("none of the accepted shapes") {
                    "`schedule` is a cron expression or preset (`0 9 * * 1`, `@daily`), or `{assets: [a, b]}` / `{assets: {any: [a, b]}}`"
                        .into()
                } else {
                    msg
                };
                let full = if rel == "." { path.to_string() } else { join(path, &rel) };
                d.error(At::Value(&full), msg);
                let first = rel.split(['.', '[']).next().unwrap_or_default().to_string();
                if rel == "." || first.is_empty() || map.remove(first.as_str()).is_none() {
                    return None;
                }
                removed.insert(first);
            }
        }
    }
    None
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Makes serde's messages read better: names types the way a YAML writer
/// thinks of them, and adds "did you mean" to unknown variants and fields.
pub fn friendly_serde_message(msg: &str) -> String {
    let mut m = msg.to_string();
    if let Some(rest) = m.strip_prefix("missing field `") {
        m = format!("missing required key `{rest}");
    }
    for (from, to) in [
        ("expected a nonzero usize", "expected a whole number (1 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 or more)"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping"),
        ("expected a string", "expected a string"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(i) = m.find(from) {
            m.replace_range(i..i + from.len(), to);
        }
    }
    // serde's words for an untagged enum say nothing to a YAML writer.
    if m.starts_with("data did not match any variant of untagged enum") {
        let what = m.rsplit(' ').next().unwrap_or_default();
        m = match what {
            "Inputs" => "expected a list of task ids, or a mapping of table names to task ids".into(),
            "Command" => "expected a string (run with `/bin/sh -c`) or a list of arguments".into(),
            _ => "the value has none of the accepted shapes; see the task reference in the README".into(),
        };
    }
    for kind in ["unknown variant `", "unknown field `"] {
        if let Some(rest) = m.strip_prefix(kind) {
            let word = rest.split('`').next().unwrap_or_default().to_string();
            let candidates: Vec<String> =
                rest.split("expected ").nth(1).map(|l| l.split('`').skip(1).step_by(2).map(str::to_string).collect()).unwrap_or_default();
            let h = hint(&word, candidates.iter().map(String::as_str));
            if !h.is_empty() {
                m = format!("{kind}{word}`{h}; expected {}", rest.split("expected ").nth(1).unwrap_or_default());
            }
        }
    }
    m
}

/// Failure-notice addresses: each entry an address (or several, separated
/// by commas), or a template that renders to them. Templates that read only
/// variables are rendered now; others when the notice is sent.
/// Checks a task's `expand` and `max_active_tis_per_dagrun`.
fn check_expand(
    head: &TaskHead,
    path: &str,
    tasks: &BTreeMap<String, Produces>,
    env: &dyn ValidationEnv,
    templates: &Templates,
    params: &BTreeSet<String>,
    conn_ids: &BTreeSet<String>,
    d: &mut Diagnostics<'_>,
) {
    use super::spec::ExpandSpec;
    match (&head.expand, head.max_active_tis_per_dagrun) {
        (None, Some(_)) => {
            d.warning(At::Value(&join(path, "max_active_tis_per_dagrun")), "max_active_tis_per_dagrun is used only with `expand`")
        }
        (_, Some(0)) => d.error(At::Value(&join(path, "max_active_tis_per_dagrun")), "max_active_tis_per_dagrun must be at least 1"),
        _ => {}
    }
    let at = join(path, "expand");
    let template = |s: &str, key: &str, d: &mut Diagnostics<'_>| {
        for p in templates.check(s, params, Some(conn_ids)) {
            d.error(At::Value(key), p);
        }
    };
    match &head.expand {
        None => {}
        Some(ExpandSpec::List(_)) => {}
        Some(ExpandSpec::Template(s)) if crate::template::is_template(s) => template(s, &at, d),
        Some(ExpandSpec::Template(s)) => d.error(
            At::Value(&at),
            format!("`expand: {s}` is not a list: give a list (`[a, b]`), a template that renders to one (`\"{{{{ params.files }}}}\"`), or `{{glob: ...}}`, `{{s3: ..., conn: ...}}`, `{{upstream: TASK, field: /path}}`"),
        ),
        Some(ExpandSpec::Source(src)) => {
            let given: Vec<&str> = [("glob", src.glob.is_some()), ("s3", src.s3.is_some()), ("upstream", src.upstream.is_some())]
                .into_iter()
                .filter(|(_, g)| *g)
                .map(|(k, _)| k)
                .collect();
            if given.len() != 1 {
                d.error(At::Value(&at), format!("`expand` takes one of `glob`, `s3` and `upstream`; it has {}", if given.is_empty() { "none".into() } else { given.join(", ") }));
                return;
            }
            if let Some(g) = &src.glob {
                template(g, &join(&at, "glob"), d);
            }
            if let Some(s) = &src.s3 {
                template(s, &join(&at, "s3"), d);
                match &src.conn {
                    Some(c) if !crate::template::is_template(c) => env.connections().check_reference(c, "s3", At::Value(&join(&at, "conn")), d),
                    Some(_) => {}
                    None => d.error(At::Value(&at), "`expand: {s3: ...}` needs `conn`: an S3 connection"),
                }
            }
            if let Some(u) = &src.upstream
                && !tasks.contains_key(u)
            {
                d.error(At::Value(&join(&at, "upstream")), format!("`{u}` is not a task of this DAG{}", hint(u, tasks.keys().map(String::as_str))));
            }
            if let Some(f) = &src.field {
                if src.upstream.is_none() {
                    d.error(At::Value(&join(&at, "field")), "`field` goes with `upstream`");
                } else if !f.starts_with('/') {
                    d.error(At::Value(&join(&at, "field")), format!("`{f}` is not a JSON pointer; write it as `/{}`", f.replace('.', "/")));
                }
            }
        }
    }
}

/// A notifier's value as it will be at run time, when it can be known now:
/// itself, or a template that reads only variables, rendered. None when it
/// is a template of run-time values (a param, the date), or has an error
/// (reported at `at`, naming it as `what`).
fn value_known_now(
    value: &str,
    at: &str,
    what: &str,
    templates: &Templates,
    params: &BTreeSet<String>,
    connections: &crate::connections::Connections,
    conn_ids: &BTreeSet<String>,
    d: &mut Diagnostics<'_>,
) -> Option<String> {
    if !crate::template::is_template(value) {
        return Some(value.to_string());
    }
    let problems = templates.check(value, params, Some(conn_ids));
    if !problems.is_empty() {
        for p in problems {
            d.error(At::Value(at), p);
        }
        return None;
    }
    match templates.render_vars_only(value, &|v| connections.variable(v))? {
        Ok(r) => Some(r),
        Err(e) => {
            d.error(
                At::Value(at),
                format!("{what} `{value}` cannot be rendered: {e} (define it in config/variables.yaml or as SLUICE_VAR_<NAME>)"),
            );
            None
        }
    }
}

/// Checks a webhook URL: an http(s) URL, or a template that renders to one
/// where its variables are known now.
fn check_webhook_url(
    url: &str,
    path: &str,
    templates: &Templates,
    params: &BTreeSet<String>,
    connections: &crate::connections::Connections,
    conn_ids: &BTreeSet<String>,
    d: &mut Diagnostics<'_>,
) {
    let Some(rendered) = value_known_now(url, path, "the webhook", templates, params, connections, conn_ids, d) else { return };
    match url::Url::parse(rendered.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => {
            let what = if rendered == url { "is not" } else { "renders to something that is not" };
            d.error(At::Value(path), format!("the webhook `{url}` {what} an http:// or https:// URL"))
        }
    }
}

fn check_notice_addresses(
    list: &[String],
    path: &str,
    templates: &Templates,
    params: &BTreeSet<String>,
    connections: &crate::connections::Connections,
    conn_ids: &BTreeSet<String>,
    d: &mut Diagnostics<'_>,
) {
    for (i, entry) in list.iter().enumerate() {
        let at = index(path, i);
        let Some(rendered) = value_known_now(entry, &at, "the notice address", templates, params, connections, conn_ids, d) else {
            continue;
        };
        let addresses = crate::mail::split_addresses(std::slice::from_ref(&rendered));
        if addresses.is_empty() {
            d.error(At::Value(&at), format!("the notice address `{entry}` is empty"));
        }
        for a in addresses {
            if let Err(e) = crate::mail::parse_mailbox(&a) {
                let from = if &rendered != entry { format!(" (from `{entry}`)") } else { String::new() };
                d.error(
                    At::Value(&at),
                    format!("{e}{from}; a notice address looks like `oncall@shop.example` or `On call <oncall@shop.example>`"),
                );
            }
        }
    }
}

fn check_templates(
    v: &Value,
    path: &str,
    templates: &Templates,
    params: &BTreeSet<String>,
    conns: &BTreeSet<String>,
    d: &mut Diagnostics<'_>,
) {
    match v {
        Value::String(s) => {
            for problem in templates.check(s, params, Some(conns)) {
                d.error(At::Value(path), problem);
            }
        }
        Value::Sequence(items) => {
            for (i, x) in items.iter().enumerate() {
                check_templates(x, &index(path, i), templates, params, conns, d);
            }
        }
        Value::Mapping(m) => {
            for (k, x) in m {
                check_templates(x, &join(path, k.as_str().unwrap_or("?")), templates, params, conns, d);
            }
        }
        Value::Tagged(t) => check_templates(&t.value, path, templates, params, conns, d),
        _ => {}
    }
}

/// libyaml reports where it gave up ("found unexpected end of stream at
/// line 9 column 1") and, often, where the construct it was reading began
/// (", while scanning a quoted scalar at line 5 column 14"). The second is
/// usually where the mistake is, so the error points there.
pub fn yaml_syntax_message(raw: &str, pos: Pos) -> (Pos, String) {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^(?s)(.*) at line (\d+) column (\d+), while (.*) at line (\d+) column (\d+)$").expect("valid regex")
    });
    if let Some(c) = RE.captures(raw) {
        let n = |i: usize| c[i].parse::<usize>().unwrap_or(1);
        return (
            Pos { line: n(5), col: n(6) },
            format!("YAML syntax error: while {} that starts here, {} (at line {} column {})", &c[4], &c[1], n(2), n(3)),
        );
    }
    let mut msg = format!("YAML syntax error: {}", strip_location(raw));
    if raw.contains("mapping values are not allowed") {
        msg.push_str("; a `: ` inside an unquoted value starts a mapping: quote the value (`command: \"echo a: b\"`)");
    }
    (pos, msg)
}

/// The first line, up to `line`, whose indentation holds a tab: libyaml
/// reports those as "cannot start any token" somewhere after them.
fn indenting_tab(source: &str, line: usize) -> Option<Pos> {
    source.lines().take(line.max(1)).enumerate().find_map(|(i, l)| {
        let indent = l.len() - l.trim_start_matches([' ', '\t']).len();
        l[..indent].find('\t').map(|c| Pos { line: i + 1, col: c + 1 })
    })
}

fn parse_date(s: &str, tz: chrono_tz::Tz, key: &str, d: &mut Diagnostics<'_>) -> Option<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        return Some(schedule::local_midnight(date, tz));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Some(t.with_timezone(&Utc));
    }
    d.error(At::Value(key), format!("invalid {key} `{s}`: write a date (2024-01-01) or an RFC 3339 timestamp (2024-01-01T09:00:00+09:00)"));
    None
}

fn spans_line(spans: &super::spans::Spans, path: &str) -> usize {
    use crate::diag::SpanLookup;
    spans.value_pos(path).map_or(0, |p| p.line)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendlier_messages() {
        assert_eq!(
            friendly_serde_message("invalid type: string \"x\", expected u32"),
            "invalid type: string \"x\", expected a whole number (0 or more)"
        );
        let m = friendly_serde_message("unknown variant `all_sucess`, expected one of `all_success`, `all_failed`");
        assert!(m.contains("did you mean `all_success`"), "{m}");
    }
}
