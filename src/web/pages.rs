//! The pages as HTML, from data the handlers read: no IO here, so that a
//! page is a function of what the store said.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::auth::Session;
use crate::dag::Dag;
use crate::dag::duration::format_elapsed;
use crate::state::{Role, RunRow, RunState, TiRow, TiState, TryRow};

const CSS: &str = include_str!("static/style.css");
const JS: &str = include_str!("static/app.js");

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string()
}

fn short(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%m-%d %H:%M").to_string()
}

fn took(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format_elapsed((b - a).to_std().unwrap_or_default()),
        (Some(a), None) => format!("{} so far", format_elapsed((Utc::now() - a).to_std().unwrap_or_default())),
        _ => String::new(),
    }
}

fn run_class(s: RunState) -> String {
    format!("sq s-{}", s.as_str())
}

fn ti_class(s: Option<TiState>) -> String {
    format!("cell s-{}", s.map_or("none", |s| s.as_str()))
}

/// The page around every page: navigation, who is logged in, CSS and JS.
pub fn shell(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    shell_with(title, session, false, body)
}

/// As [`shell`]; `refresh` reloads the page every few seconds (runs active).
pub fn shell_with(title: &str, session: Option<&Session>, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sluice" }
                link rel="icon" href="data:,";
                style { (PreEscaped(CSS)) }
            }
            body data-refresh=[refresh.then_some("5000")] {
                header.top {
                    a.brand href="/" { "sluice" }
                    nav { a href="/" { "DAGs" } " " a href="/reports" { "Reports" } }
                    span.who {
                        @match session {
                            Some(s) => {
                                (s.user) " (" (s.role) ") "
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button type="submit" { "Log out" }
                                }
                            }
                            None => { a href="/login" { "Log in" } }
                        }
                    }
                }
                main { (body) }
                script { (PreEscaped(JS)) }
            }
        }
    }
}

fn csrf(session: Option<&Session>) -> Markup {
    html! { @if let Some(s) = session { input type="hidden" name="csrf" value=(s.csrf); } }
}

fn is_admin(session: Option<&Session>) -> bool {
    session.is_some_and(|s| s.role == Role::Admin)
}

/// One DAG on the DAGs page.
pub struct DagLine {
    pub dag: std::sync::Arc<Dag>,
    pub paused: bool,
    pub next_run: Option<DateTime<Utc>>,
    /// Newest first.
    pub runs: Vec<RunRow>,
}

pub fn dags(lines: &[DagLine], errors: &[String], session: Option<&Session>) -> Markup {
    let admin = is_admin(session);
    shell(
        "DAGs",
        session,
        html! {
            h1 { "DAGs" }
            @if !errors.is_empty() {
                section.errors id="load-errors" {
                    h2 { "Files that do not load" }
                    ul { @for e in errors { li { code { (e) } } } }
                }
            }
            table.list id="dags" {
                thead { tr { th { "DAG" } th { "Schedule" } th { "Next run" } th { "Tags" } th { "Last runs" } th { "Paused" } } }
                tbody {
                    @for l in lines {
                        tr data-dag=(l.dag.dag_id) {
                            td {
                                a href=(format!("/dags/{}/grid", l.dag.dag_id)) { (l.dag.dag_id) }
                                @if let Some(d) = &l.dag.description { div.muted { (d) } }
                            }
                            td { @match &l.dag.schedule { Some(s) => { code { (s.expr) } " " span.muted { (l.dag.timezone.name()) } } None => span.muted { "by hand" } } }
                            td { @if let Some(t) = l.next_run { (local(t, l.dag.timezone)) } }
                            td { @for t in &l.dag.tags { span.tag { (t) } " " } }
                            td.squares {
                                @for r in l.runs.iter().rev() {
                                    a class=(run_class(r.state)) href=(format!("/runs/{}", r.run_id))
                                        title=(format!("run {} · {} · {}", r.run_id, short(r.logical_date, l.dag.timezone), r.state)) {}
                                }
                            }
                            td { (pause_toggle(&l.dag.dag_id, l.paused, admin, session)) }
                        }
                    }
                }
            }
        },
    )
}

fn pause_toggle(dag_id: &str, paused: bool, admin: bool, session: Option<&Session>) -> Markup {
    html! {
        @if admin {
            form.inline method="post" action=(format!("/dags/{dag_id}/pause")) {
                (csrf(session))
                input type="hidden" name="paused" value=(if paused { "false" } else { "true" });
                button.toggle type="submit" data-paused=(paused) title=(if paused { "paused: click to unpause" } else { "active: click to pause" }) {
                    (if paused { "paused" } else { "active" })
                }
            }
        } @else {
            span.toggle data-paused=(paused) { (if paused { "paused" } else { "active" }) }
        }
    }
}

/// The grid: runs as columns (oldest left), tasks as rows.
pub fn grid(dag: &Dag, paused: bool, runs: &[RunRow], tis: &HashMap<(i64, String), TiRow>, session: Option<&Session>) -> Markup {
    let active = runs.iter().any(|r| matches!(r.state, RunState::Queued | RunState::Running));
    let tz = dag.timezone;
    shell_with(
        &dag.dag_id,
        session,
        active,
        html! {
            (dag_header(dag, paused, "grid", session))
            @if runs.is_empty() {
                p.muted { "No runs yet." }
            } @else {
                div.gridwrap {
                    table.grid id="grid" {
                        thead {
                            tr {
                                th { "task \\ run" }
                                @for r in runs {
                                    th.runhead {
                                        a class=(run_class(r.state)) href=(format!("/runs/{}", r.run_id))
                                            title=(format!("run {} · {} · {}", r.run_id, local(r.logical_date, tz), r.state)) {}
                                        div.vlabel { (short(r.logical_date, tz)) }
                                    }
                                }
                            }
                        }
                        tbody {
                            @for &i in &dag.topo {
                                @let t = &dag.tasks[i];
                                tr {
                                    th.task { (t.id) }
                                    @for r in runs {
                                        @let ti = tis.get(&(r.run_id, t.id.clone()));
                                        td {
                                            a class=(ti_class(ti.map(|x| x.state))) href=(format!("/runs/{}/tasks/{}", r.run_id, t.id))
                                                data-state=(ti.map_or("none", |x| x.state.as_str()))
                                                title=(format!("{} · run {} · {}", t.id, r.run_id, ti.map_or("no instance", |x| x.state.as_str()))) {}
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                (legend())
            }
            @if is_admin(session) { (trigger_form(dag, session)) }
        },
    )
}

fn legend() -> Markup {
    let states = [
        TiState::Success,
        TiState::Failed,
        TiState::UpstreamFailed,
        TiState::Skipped,
        TiState::Running,
        TiState::Queued,
        TiState::UpForRetry,
        TiState::UpForReschedule,
        TiState::Removed,
        TiState::Pending,
    ];
    html! { div.legend { @for s in states { span { span class=(ti_class(Some(s))) {} " " (s) } } } }
}

fn dag_header(dag: &Dag, paused: bool, current: &str, session: Option<&Session>) -> Markup {
    html! {
        h1 { "DAG " (dag.dag_id) " " (pause_toggle(&dag.dag_id, paused, is_admin(session), session)) }
        @if let Some(d) = &dag.description { p.muted { (d) } }
        nav.tabs {
            a.current[current == "grid"] href=(format!("/dags/{}/grid", dag.dag_id)) { "Grid" }
            a.current[current == "graph"] href=(format!("/dags/{}/graph", dag.dag_id)) { "Graph" }
        }
    }
}

fn trigger_form(dag: &Dag, session: Option<&Session>) -> Markup {
    html! {
        section.action id="trigger" {
            h2 { "Trigger a run" }
            form method="post" action=(format!("/dags/{}/trigger", dag.dag_id)) {
                (csrf(session))
                label { "Date (YYYY-MM-DD, empty for now) " input type="text" name="date" placeholder="now"; }
                @for (name, default) in &dag.params {
                    label { "params." (name) " " input type="text" name=(format!("conf.{name}")) value=(param_text(default)); }
                }
                button type="submit" { "Trigger" }
            }
        }
    }
}

/// A param's default as the user would type it (`--conf` syntax).
pub fn param_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn graph(dag: &Dag, paused: bool, runs: &[RunRow], chosen: Option<&RunRow>, svg: &str, session: Option<&Session>) -> Markup {
    let active = chosen.is_some_and(|r| matches!(r.state, RunState::Queued | RunState::Running));
    shell_with(
        &dag.dag_id,
        session,
        active,
        html! {
            (dag_header(dag, paused, "graph", session))
            form.inline method="get" {
                label { "Colour by run " select name="run" onchange="this.form.submit()" {
                    @for r in runs {
                        option value=(r.run_id) selected[chosen.is_some_and(|c| c.run_id == r.run_id)] {
                            (r.run_id) " · " (short(r.logical_date, dag.timezone)) " · " (r.state)
                        }
                    }
                } }
                noscript { button type="submit" { "Show" } }
            }
            div.graphwrap { (PreEscaped(svg)) }
            (legend())
        },
    )
}

/// The run page: interval, conf, state and a Gantt bar per task.
pub fn run(run: &RunRow, dag: Option<&Dag>, tis: &[TiRow], dag_changed: bool, session: Option<&Session>) -> Markup {
    let tz = dag.map_or(Tz::UTC, |d| d.timezone);
    let order: Vec<&TiRow> = match dag {
        Some(d) => d.topo.iter().filter_map(|&i| tis.iter().find(|t| t.task_id == d.tasks[i].id)).collect(),
        None => tis.iter().collect(),
    };
    let t0 = tis.iter().filter_map(|t| t.started_at).min().or(run.started_at);
    let t1 = tis.iter().filter_map(|t| t.ended_at.or(t.started_at.map(|_| Utc::now()))).max();
    let span = match (t0, t1) {
        (Some(a), Some(b)) if b > a => (b - a).num_milliseconds() as f64,
        _ => 1.0,
    };
    let active = matches!(run.state, RunState::Queued | RunState::Running);
    shell_with(
        &format!("run {}", run.run_id),
        session,
        active,
        html! {
            h1 { "Run " (run.run_id) " of " a href=(format!("/dags/{}/grid", run.dag_id)) { (run.dag_id) } " " span class=(run_class(run.state)) {} " " (run.state) }
            table.kv id="run-facts" {
                tr { th { "Logical date" } td { (local(run.logical_date, tz)) } }
                tr { th { "Interval" } td { (local(run.data_interval_start, tz)) " to " (local(run.data_interval_end, tz)) } }
                tr { th { "Type" } td { (run.run_type.as_str()) } }
                tr { th { "Started" } td { @if let Some(t) = run.started_at { (local(t, tz)) } } }
                tr { th { "Ended" } td { @if let Some(t) = run.ended_at { (local(t, tz)) } } }
                tr { th { "Duration" } td { (took(run.started_at, run.ended_at)) } }
                tr { th { "Conf" } td { pre.conf { (crate::secrets::mask(&serde_json::to_string_pretty(&run.conf).unwrap_or_default())) } } }
            }
            @if dag_changed {
                p.muted id="dag-changed" {
                    "The DAG file has changed since this run was created; "
                    code { "sluice dags show " (run.dag_id) " --run " (run.run_id) }
                    " draws the version that ran."
                }
            }
            p { a href=(format!("/dags/{}/graph?run={}", run.dag_id, run.run_id)) { "Graph of this run" } }
            h2 { "Tasks" }
            table.gantt id="gantt" {
                @for t in &order {
                    tr {
                        th { a href=(format!("/runs/{}/tasks/{}", run.run_id, t.task_id)) { (t.task_id) } }
                        td.state { span class=(ti_class(Some(t.state))) {} " " (t.state) }
                        td.dur { (took(t.started_at, t.ended_at)) }
                        td.bar {
                            @if let (Some(a), Some(start)) = (t.started_at, t0) {
                                @let b = t.ended_at.unwrap_or_else(Utc::now);
                                @let left = (a - start).num_milliseconds() as f64 / span * 100.0;
                                @let width = ((b - a).num_milliseconds() as f64 / span * 100.0).max(0.4);
                                div class=(format!("gbar s-{}", t.state.as_str())) style=(format!("margin-left:{left:.2}%;width:{width:.2}%"))
                                    title=(format!("{} to {}", local(a, tz), local(b, tz))) {}
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the task instance page shows.
pub struct TiView<'a> {
    pub run: &'a RunRow,
    pub dag: Option<&'a Dag>,
    pub task_id: &'a str,
    pub ti: Option<&'a TiRow>,
    pub tries: Vec<&'a TryRow>,
    pub shown_try: Option<i32>,
    pub log: Option<String>,
    pub config: Result<String, String>,
}

pub fn task_instance(v: &TiView, session: Option<&Session>) -> Markup {
    let tz = v.dag.map_or(Tz::UTC, |d| d.timezone);
    let run = v.run;
    let running = v.ti.is_some_and(|t| t.state == TiState::Running);
    let log_url = format!("/runs/{}/tasks/{}/log{}", run.run_id, v.task_id, v.shown_try.map(|n| format!("?try={n}")).unwrap_or_default());
    shell(
        &format!("{} · run {}", v.task_id, run.run_id),
        session,
        html! {
            h1 {
                (v.task_id) " in run " a href=(format!("/runs/{}", run.run_id)) { (run.run_id) }
                " of " a href=(format!("/dags/{}/grid", run.dag_id)) { (run.dag_id) }
                " " span class=(ti_class(v.ti.map(|t| t.state))) {} " " span id="ti-state" { (v.ti.map_or("no instance", |t| t.state.as_str())) }
            }
            @if let Some(ti) = v.ti {
                @if let Some(e) = &ti.error { p.error { (crate::secrets::mask(e)) @if let Some(k) = &ti.error_kind { " (" (k) ")" } } }
                @if let Some(n) = &ti.notice { p.muted { "Notices: " (n) } }
                (outputs(ti))
            }
            h2 { "Tries" }
            @if v.tries.is_empty() { p.muted { "No try yet." } } @else {
                table.list id="tries" {
                    thead { tr { th { "Try" } th { "State" } th { "Start" } th { "End" } th { "Duration" } th { "Worker" } th { "Exit" } } }
                    tbody {
                        @for t in &v.tries {
                            tr.current[Some(t.try_number) == v.shown_try] {
                                td { a href=(format!("/runs/{}/tasks/{}?try={}", run.run_id, v.task_id, t.try_number)) { (t.try_number) } }
                                td { span class=(ti_class(Some(t.state))) {} " " (t.state) }
                                td { (local(t.started_at, tz)) }
                                td { @if let Some(e) = t.ended_at { (local(e, tz)) } }
                                td { (took(Some(t.started_at), t.ended_at)) }
                                td { code { (t.worker_id) } }
                                td { @if let Some(c) = t.exit_code { "exit " (c) } @if let Some(e) = &t.error { " " span.muted { (crate::secrets::mask(e)) } } }
                            }
                        }
                    }
                }
            }
            @if let Some(n) = v.shown_try {
                h2 { "Log of try " (n) @if running { " " span.live { "live" } } }
                pre.log id="log" data-tail=[running.then_some(log_url.as_str())] { (v.log.as_deref().unwrap_or("")) }
            }
            h2 { "Config, rendered for this run" }
            @match &v.config {
                Ok(c) => pre.config id="config" { (c) },
                Err(e) => p.error { (crate::secrets::mask(e)) },
            }
            @if is_admin(session) && v.ti.is_some() {
                section.action id="ti-actions" {
                    h2 { "Actions" }
                    form.inline method="post" action=(format!("/runs/{}/tasks/{}/clear", run.run_id, v.task_id)) {
                        (csrf(session))
                        label { input type="checkbox" name="downstream" value="true"; " with downstream" }
                        " "
                        label { input type="checkbox" name="only_failed" value="true"; " only failed" }
                        " "
                        button type="submit" { "Clear" }
                    }
                    @for (state, label) in [("success", "Mark success"), ("failed", "Mark failed")] {
                        form.inline method="post" action=(format!("/runs/{}/tasks/{}/mark", run.run_id, v.task_id)) {
                            (csrf(session))
                            input type="hidden" name="state" value=(state);
                            button type="submit" { (label) }
                            " "
                            label { input type="checkbox" name="downstream" value="true"; " and downstream" }
                        }
                    }
                }
            }
        },
    )
}

/// Dataset summaries and row counts from a task's output.
fn outputs(ti: &TiRow) -> Markup {
    let Some(out) = &ti.output else { return html! {} };
    let mut facts: Vec<(String, String)> = Vec::new();
    if let Some(obj) = out.as_object() {
        for (k, v) in obj {
            match v {
                serde_json::Value::Number(_) | serde_json::Value::String(_) | serde_json::Value::Bool(_) => {
                    facts.push((k.clone(), param_text(v)))
                }
                serde_json::Value::Object(inner) => {
                    for (k2, v2) in inner {
                        if !v2.is_object() && !v2.is_array() {
                            facts.push((format!("{k}.{k2}"), param_text(v2)));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    html! {
        h2 { "Output" }
        @if !facts.is_empty() {
            table.kv id="output" { @for (k, v) in &facts { tr { th { (k) } td { (crate::secrets::mask(v)) } } } }
        }
        details { summary { "As JSON" } pre { (crate::secrets::mask(&serde_json::to_string_pretty(out).unwrap_or_default())) } }
    }
}

pub fn reports(list: &[(String, String, Option<String>)], session: Option<&Session>) -> Markup {
    shell(
        "Reports",
        session,
        html! {
            h1 { "Reports" }
            @if list.is_empty() { p.muted { "No DAG has a report task." } }
            ul id="reports" {
                @for (dag, task, desc) in list {
                    li {
                        a href=(format!("/reports/{dag}/{task}")) { (dag) " · " (task) }
                        @if let Some(d) = desc { " " span.muted { (d) } }
                    }
                }
            }
        },
    )
}

/// A report's dashboard for one interval.
pub struct DashboardView<'a> {
    pub dag: &'a Dag,
    pub task_id: &'a str,
    /// The interval's first day, in the DAG's zone.
    pub start_day: chrono::NaiveDate,
    pub prev: chrono::NaiveDate,
    pub next: chrono::NaiveDate,
    /// The report's pages as SVG, drawn by the PDF's code.
    pub pages: &'a [String],
}

pub fn dashboard(v: &DashboardView, session: Option<&Session>) -> Markup {
    let here = format!("/reports/{}/{}", v.dag.dag_id, v.task_id);
    shell(
        &format!("{} · {}", v.dag.dag_id, v.task_id),
        session,
        html! {
            h1 { "Report " (v.dag.dag_id) " · " (v.task_id) }
            form.inline.weekpick method="get" action=(here) {
                a href=(format!("{here}?week={}", v.prev)) { "← previous" }
                " "
                label { "Period from " input type="date" name="week" value=(v.start_day.to_string()); }
                " " button type="submit" { "Show" } " "
                a href=(format!("{here}?week={}", v.next)) { "next →" }
            }
            p.muted { "Drawn live from the warehouse by the same queries and drawing code as the PDF the DAG mails." }
            div id="report-pages" {
                @for p in v.pages { div.pagewrap { (PreEscaped(p)) } }
            }
        },
    )
}

pub fn login(next: &str, csrf: &str, error: Option<&str>) -> Markup {
    shell(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error id="login-error" { (e) } }
            form.login method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                input type="hidden" name="csrf" value=(csrf);
                label { "User " input type="text" name="user" autocomplete="username" autofocus; }
                label { "Password " input type="password" name="password" autocomplete="current-password"; }
                button type="submit" { "Log in" }
            }
            p.muted { "Users are added with " code { "sluice users add NAME --role admin" } "." }
        },
    )
}
