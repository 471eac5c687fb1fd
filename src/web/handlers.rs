//! Routes: each reads the store through `Store` methods, checks the session
//! where it must, and hands the data to a page or an action.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};

use super::auth::{self, Session};
use super::{Refusal, Web, graph, pages};
use crate::dag::{Dag, ManualWhen};
use crate::state::{Role, RunRow, TiState};

type Shared = State<Arc<Web>>;
type Fields = Form<Vec<(String, String)>>;
type Page = Result<Response, Refusal>;

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(dags))
        .route("/dags/{dag}/grid", get(grid))
        .route("/dags/{dag}/graph", get(dag_graph))
        .route("/dags/{dag}/pause", post(pause))
        .route("/dags/{dag}/trigger", post(trigger))
        .route("/runs/{run}", get(run_page))
        .route("/runs/{run}/tasks/{task}", get(task_instance))
        .route("/runs/{run}/tasks/{task}/log", get(task_log))
        .route("/runs/{run}/tasks/{task}/clear", post(clear))
        .route("/runs/{run}/tasks/{task}/mark", post(mark))
        .route("/reports", get(reports))
        .route("/reports/{dag}/{task}", get(dashboard))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .fallback(|| async { Refusal::not_found("no such page") })
        .with_state(web)
}

fn html(m: maud::Markup) -> Response {
    Html(m.into_string()).into_response()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The session, when reading needs none or has one; otherwise a redirect
/// to the login page.
async fn reader(web: &Web, headers: &HeaderMap, path: &str) -> Result<Result<Option<Session>, Response>, Refusal> {
    let s = auth::session(web, headers).await?;
    if s.is_none() && web.login_to_read {
        return Ok(Err(Redirect::to(&format!("/login?next={}", urlencode(path))).into_response()));
    }
    Ok(Ok(s))
}

/// The session of a page request, or (when reading needs a login and there
/// is none) an early return of the redirect to the login page.
macro_rules! read_or_login {
    ($web:expr, $headers:expr, $path:expr) => {
        match reader(&$web, &$headers, $path).await? {
            Ok(s) => s,
            Err(redirect) => return Ok(redirect),
        }
    };
}

/// An admin session whose form carries its CSRF token.
async fn actor(web: &Web, headers: &HeaderMap, form: &[(String, String)]) -> Result<Session, Refusal> {
    let Some(s) = auth::session(web, headers).await? else {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "log in first: actions need a logged-in user"));
    };
    if field(form, "csrf") != Some(s.csrf.as_str()) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "the form's CSRF token is missing or stale; reload the page and try again"));
    }
    if s.role != Role::Admin {
        return Err(Refusal::new(StatusCode::FORBIDDEN, format!("{} is a viewer; only admins can do this", s.user)));
    }
    Ok(s)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A local path to go back to after login (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".into(),
    }
}

async fn load_dags(web: &Web) -> crate::loader::DagBag {
    let load = web.site.dags.clone();
    tokio::task::spawn_blocking(move || load()).await.unwrap_or_default()
}

async fn load_dag(web: &Web, dag_id: &str) -> Result<Arc<Dag>, Refusal> {
    load_dags(web).await.get(dag_id).map_err(Refusal::not_found)
}

async fn the_run(web: &Web, run_id: i64) -> Result<RunRow, Refusal> {
    web.site.store.run(run_id).await?.ok_or_else(|| Refusal::not_found(format!("run {run_id} does not exist")))
}

// ---- pages ----

async fn dags(State(web): Shared, headers: HeaderMap) -> Page {
    let session = read_or_login!(web, headers, "/");
    let bag = load_dags(&web).await;
    let paused = web.site.store.paused_dags().await?;
    let mut recent: HashMap<String, Vec<RunRow>> = HashMap::new();
    for r in web.site.store.recent_runs(10).await? {
        recent.entry(r.dag_id.clone()).or_default().push(r);
    }
    let now = chrono::Utc::now();
    let lines: Vec<pages::DagLine> = bag
        .dags
        .values()
        .map(|d| pages::DagLine {
            dag: d.clone(),
            paused: paused.get(&d.dag_id).copied().unwrap_or(false),
            next_run: d.schedule.as_ref().and_then(|s| s.next_after(now, d.timezone)),
            runs: recent.remove(&d.dag_id).unwrap_or_default(),
        })
        .collect();
    let errors: Vec<String> = bag.errors().map(|d| d.to_string()).collect();
    Ok(html(pages::dags(&lines, &errors, session.as_ref())))
}

#[derive(serde::Deserialize)]
struct GridQuery {
    runs: Option<i64>,
}

async fn grid(State(web): Shared, headers: HeaderMap, Path(dag_id): Path<String>, Query(q): Query<GridQuery>) -> Page {
    let session = read_or_login!(web, headers, &format!("/dags/{dag_id}/grid"));
    let dag = load_dag(&web, &dag_id).await?;
    let store = &web.site.store;
    let mut runs = store.list_runs(Some(&dag_id), None, q.runs.unwrap_or(25).clamp(1, 365)).await?;
    runs.reverse();
    let ids: Vec<i64> = runs.iter().map(|r| r.run_id).collect();
    let tis = store.task_instances_of(&ids).await?.into_iter().map(|x| ((x.run_id, x.ti.task_id.clone()), x.ti)).collect();
    let paused = store.paused_dags().await?.get(&dag_id).copied().unwrap_or(false);
    Ok(html(pages::grid(&dag, paused, &runs, &tis, session.as_ref())))
}

#[derive(serde::Deserialize)]
struct GraphQuery {
    run: Option<i64>,
}

async fn dag_graph(State(web): Shared, headers: HeaderMap, Path(dag_id): Path<String>, Query(q): Query<GraphQuery>) -> Page {
    let session = read_or_login!(web, headers, &format!("/dags/{dag_id}/graph"));
    let dag = load_dag(&web, &dag_id).await?;
    let store = &web.site.store;
    let runs = store.list_runs(Some(&dag_id), None, 50).await?;
    let chosen = match q.run {
        Some(id) => Some(
            runs.iter()
                .find(|r| r.run_id == id)
                .cloned()
                .ok_or_else(|| Refusal::not_found(format!("run {id} is not one of {dag_id}'s last 50 runs")))?,
        ),
        None => runs.first().cloned(),
    };
    let states: HashMap<String, TiState> = match &chosen {
        Some(r) => store.task_instances(r.run_id).await?.into_iter().map(|t| (t.task_id, t.state)).collect(),
        None => HashMap::new(),
    };
    let run_id = chosen.as_ref().map(|r| r.run_id);
    let svg = graph::svg(&dag, &states, |t| run_id.map(|r| format!("/runs/{r}/tasks/{t}")));
    let paused = store.paused_dags().await?.get(&dag_id).copied().unwrap_or(false);
    Ok(html(pages::graph(&dag, paused, &runs, chosen.as_ref(), &svg, session.as_ref())))
}

async fn run_page(State(web): Shared, headers: HeaderMap, Path(run_id): Path<i64>) -> Page {
    let session = read_or_login!(web, headers, &format!("/runs/{run_id}"));
    let run = the_run(&web, run_id).await?;
    let dag = load_dags(&web).await.get(&run.dag_id).ok();
    let tis = web.site.store.task_instances(run_id).await?;
    let ran = web.site.store.run_dag_version(run_id).await?.map(|(h, _)| h);
    let changed = matches!((&ran, &dag), (Some(h), Some(d)) if *h != d.file_hash);
    Ok(html(pages::run(&run, dag.as_deref(), &tis, changed, session.as_ref())))
}

#[derive(serde::Deserialize)]
struct TryQuery {
    #[serde(rename = "try")]
    try_number: Option<i32>,
}

async fn task_instance(
    State(web): Shared,
    headers: HeaderMap,
    Path((run_id, task_id)): Path<(i64, String)>,
    Query(q): Query<TryQuery>,
) -> Page {
    let session = read_or_login!(web, headers, &format!("/runs/{run_id}/tasks/{task_id}"));
    let store = &web.site.store;
    let run = the_run(&web, run_id).await?;
    let tis = store.task_instances(run_id).await?;
    let ti = tis.iter().find(|t| t.task_id == task_id);
    let dag = load_dags(&web).await.get(&run.dag_id).ok();
    let task = dag.as_ref().and_then(|d| d.task(&task_id));
    if ti.is_none() && task.is_none() {
        return Err(Refusal::not_found(format!("run {run_id} of {} has no task `{task_id}`", run.dag_id)));
    }
    let all_tries = store.tries(run_id).await?;
    let tries: Vec<_> = all_tries.iter().filter(|t| t.task_id == task_id).collect();
    let shown_try = q.try_number.or(tries.iter().map(|t| t.try_number).max());
    let log = match shown_try {
        Some(n) => store.try_log(run_id, &task_id, Some(n)).await?.map(|(_, _, log)| crate::secrets::mask(&log)),
        None => None,
    };
    let config = match (&dag, task) {
        (Some(dag), Some(task)) => {
            let outputs = store.outputs(run_id).await?;
            crate::runner::exec::rendered_config_text(&web.site.res, dag, task, &run, ti.map_or(1, |t| t.try_number), &outputs)
                .map_err(|e| format!("the config does not render: {e}"))
        }
        _ => Err(format!("`{task_id}` is no longer in the DAG's file; its config cannot be shown")),
    };
    let view = pages::TiView { run: &run, dag: dag.as_deref(), task_id: &task_id, ti, tries, shown_try, log, config };
    Ok(html(pages::task_instance(&view, session.as_ref())))
}

/// Every report task of every DAG, linked to its dashboard.
async fn reports(State(web): Shared, headers: HeaderMap) -> Page {
    let session = read_or_login!(web, headers, "/reports");
    let bag = load_dags(&web).await;
    let list: Vec<(String, String, Option<String>)> = bag
        .dags
        .values()
        .flat_map(|d| d.tasks.iter().filter(|t| t.config.renders_report()).map(|t| (d.dag_id.clone(), t.id.clone(), d.description.clone())))
        .collect();
    Ok(html(pages::reports(&list, session.as_ref())))
}

#[derive(serde::Deserialize)]
struct WeekQuery {
    /// A day (YYYY-MM-DD) in the DAG's zone: the interval that starts on it,
    /// or else the one running on it.
    week: Option<String>,
}

/// A report task's pages for one interval, drawn as SVG by the same code
/// and from the same queries as its PDF.
async fn dashboard(
    State(web): Shared,
    headers: HeaderMap,
    Path((dag_id, task_id)): Path<(String, String)>,
    Query(q): Query<WeekQuery>,
) -> Page {
    let session = read_or_login!(web, headers, &format!("/reports/{dag_id}/{task_id}"));
    let dag = load_dag(&web, &dag_id).await?;
    let task = dag
        .task(&task_id)
        .filter(|t| t.config.renders_report())
        .ok_or_else(|| Refusal::not_found(format!("`{task_id}` of {dag_id} is not a report task; /reports lists them")))?;
    let now = chrono::Utc::now();
    let when = match q.week.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
        Some(w) => {
            let day = chrono::NaiveDate::parse_from_str(w, "%Y-%m-%d")
                .map_err(|_| Refusal::bad_request(format!("week `{w}` is not a date (YYYY-MM-DD)")))?;
            match (dag.manual_interval(ManualWhen::Date(day), now), &dag.schedule) {
                (Ok(_), _) | (Err(_), None) => ManualWhen::Date(day),
                // Not a tick day: the interval running on that day.
                (Err(_), Some(s)) => {
                    let end_of_day = crate::dag::schedule::local_midnight(day.succ_opt().unwrap_or(day), dag.timezone);
                    match s.prev_before(end_of_day, dag.timezone) {
                        Some(t) => ManualWhen::Logical(t),
                        None => ManualWhen::Date(day),
                    }
                }
            }
        }
        // The last reported interval, else the last complete one.
        None => match web.site.store.list_runs(Some(&dag_id), Some(crate::state::RunState::Success), 1).await?.first() {
            Some(r) => ManualWhen::Logical(r.logical_date),
            None => ManualWhen::Now,
        },
    };
    let (logical, interval) = dag.manual_interval(when, now).map_err(Refusal::bad_request)?;
    let run = RunRow::unrecorded(&dag.dag_id, logical, interval, dag.params.clone());
    let started = std::time::Instant::now();
    let svgs = crate::runner::exec::preview(web.site.res.clone(), &dag, task, &run)
        .await
        .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, format!("the report cannot be rendered: {e}")))?
        .unwrap_or_default();
    tracing::debug!(dag = %dag_id, task = %task_id, ms = started.elapsed().as_millis() as u64, "dashboard rendered");
    let start_day = interval.start.with_timezone(&dag.timezone).date_naive();
    let step = (interval.end - interval.start).num_days().max(1);
    let view = pages::DashboardView {
        dag: &dag,
        task_id: &task_id,
        start_day,
        prev: start_day - chrono::Duration::days(step),
        next: start_day + chrono::Duration::days(step),
        pages: &svgs,
    };
    Ok(html(pages::dashboard(&view, session.as_ref())))
}

/// The plain-text log of a try (masked), for the live tail; the header
/// `x-sluice-running: 1` says that more is coming.
async fn task_log(State(web): Shared, headers: HeaderMap, Path((run_id, task_id)): Path<(i64, String)>, Query(q): Query<TryQuery>) -> Page {
    if let Err(r) = reader(&web, &headers, &format!("/runs/{run_id}/tasks/{task_id}")).await? {
        return Ok(r);
    }
    let store = &web.site.store;
    let Some((n, state, log)) = store.try_log(run_id, &task_id, q.try_number).await? else {
        return Err(Refusal::not_found(format!("run {run_id} has no try of `{task_id}`")));
    };
    let running = state == "running";
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            (header::HeaderName::from_static("x-sluice-try"), n.to_string()),
            (header::HeaderName::from_static("x-sluice-running"), if running { "1" } else { "0" }.to_string()),
        ],
        crate::secrets::mask(&log),
    )
        .into_response())
}

// ---- actions ----

async fn pause(State(web): Shared, headers: HeaderMap, Path(dag_id): Path<String>, Form(form): Fields) -> Page {
    actor(&web, &headers, &form).await?;
    let paused = match field(&form, "paused") {
        Some("true") => true,
        Some("false") => false,
        _ => return Err(Refusal::bad_request("`paused` must be true or false")),
    };
    let bag = load_dags(&web).await;
    let dag = bag.get(&dag_id).ok();
    crate::actions::set_paused(&web.site.store, &dag_id, dag.as_deref(), paused).await?;
    let back = headers.get(header::REFERER).and_then(|v| v.to_str().ok()).and_then(|r| r.find("/dags/").map(|i| r[i..].to_string()));
    Ok(Redirect::to(&back.unwrap_or_else(|| "/".into())).into_response())
}

async fn trigger(State(web): Shared, headers: HeaderMap, Path(dag_id): Path<String>, Form(form): Fields) -> Page {
    actor(&web, &headers, &form).await?;
    let dag = load_dag(&web, &dag_id).await?;
    let when = match field(&form, "date").map(str::trim).filter(|d| !d.is_empty()) {
        None => ManualWhen::Now,
        Some(d) => ManualWhen::Date(
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| Refusal::bad_request(format!("date `{d}` is not YYYY-MM-DD")))?,
        ),
    };
    let conf: Vec<(String, String)> =
        form.iter().filter_map(|(k, v)| k.strip_prefix("conf.").map(|name| (name.to_string(), v.clone()))).collect();
    let run = crate::actions::trigger(&web.site.store, &dag, &conf, when, chrono::Utc::now()).await?;
    tracing::info!(dag = %dag_id, run = run.run_id, "run triggered from the web UI");
    Ok(Redirect::to(&format!("/dags/{dag_id}/grid")).into_response())
}

async fn clear(State(web): Shared, headers: HeaderMap, Path((run_id, task_id)): Path<(i64, String)>, Form(form): Fields) -> Page {
    actor(&web, &headers, &form).await?;
    let run = the_run(&web, run_id).await?;
    let dag = load_dag(&web, &run.dag_id).await?;
    let sel = crate::actions::ClearSelection {
        pattern: Some(format!("^{}$", regex::escape(&task_id))),
        downstream: field(&form, "downstream") == Some("true"),
        only_failed: field(&form, "only_failed") == Some("true"),
    };
    crate::actions::clear(&web.site.store, &dag, run_id, &sel).await?;
    Ok(Redirect::to(&format!("/runs/{run_id}/tasks/{task_id}")).into_response())
}

async fn mark(State(web): Shared, headers: HeaderMap, Path((run_id, task_id)): Path<(i64, String)>, Form(form): Fields) -> Page {
    actor(&web, &headers, &form).await?;
    let state = match field(&form, "state") {
        Some("success") => TiState::Success,
        Some("failed") => TiState::Failed,
        other => {
            return Err(Refusal::bad_request(format!(
                "a task instance can be marked success or failed, not {}",
                other.unwrap_or("nothing")
            )));
        }
    };
    let run = the_run(&web, run_id).await?;
    let dag = load_dag(&web, &run.dag_id).await?;
    crate::actions::mark(&web.site.store, &dag, run_id, &task_id, state, field(&form, "downstream") == Some("true")).await?;
    Ok(Redirect::to(&format!("/runs/{run_id}/tasks/{task_id}")).into_response())
}

// ---- login ----

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(State(web): Shared, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    login_page(&web, &headers, StatusCode::OK, &safe_next(q.next.as_deref()), None)
}

/// The login form with a fresh CSRF token (and its cookie).
fn login_page(web: &Web, headers: &HeaderMap, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let (cookie, token) = auth::login_form(&web.key, headers);
    (status, [(header::SET_COOKIE, cookie)], html(pages::login(next, &token, error))).into_response()
}

async fn login(State(web): Shared, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, Form(form): Fields) -> Page {
    let next = safe_next(field(&form, "next"));
    if !auth::login_token_ok(&web.key, &headers, field(&form, "csrf")) {
        let msg = "the login form was stale or not this site's; it is reloaded: log in again";
        return Ok(login_page(&web, &headers, StatusCode::FORBIDDEN, &next, Some(msg)));
    }
    if let Some(wait) = web.limiter.blocked(peer.ip()) {
        let msg = format!("too many failed logins from this address; try again in {wait} s");
        return Ok(login_page(&web, &headers, StatusCode::TOO_MANY_REQUESTS, &next, Some(&msg)));
    }
    let name = field(&form, "user").unwrap_or_default().to_string();
    let password = field(&form, "password").unwrap_or_default().to_string();
    let user = web.site.store.user(&name).await?;
    let hash = user.map(|u| u.password_hash);
    // Verify against a hash even for an unknown user, so that timing does
    // not tell which names exist.
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => auth::verify_password(&password, &h),
        None => {
            let _ = auth::verify_password(&password, DUMMY_HASH);
            false
        }
    })
    .await
    .unwrap_or(false);
    if !ok {
        web.limiter.failed(peer.ip());
        tracing::warn!(user = %name, client = %peer.ip(), "failed web login");
        return Ok(login_page(&web, &headers, StatusCode::UNAUTHORIZED, &next, Some("wrong user name or password")));
    }
    web.limiter.succeeded(peer.ip());
    let cookie = auth::cookie_value(&web.key, &name);
    Ok(([(header::SET_COOKIE, auth::set_cookie(&cookie, &headers))], Redirect::to(&next)).into_response())
}

/// An argon2 hash of nothing anyone types, for constant-time refusals.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2x1aWNlLWR1bW15LXNhbHQ$0r+Jm0u2i4W8mXh3g1f+q8mQ4oJj8mHq9m1wYk3xZ9E";

async fn logout(State(web): Shared, headers: HeaderMap, Form(form): Fields) -> Page {
    if let Some(s) = auth::session(&web, &headers).await?
        && field(&form, "csrf") != Some(s.csrf.as_str())
    {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "the form's CSRF token is missing or stale; reload the page and try again"));
    }
    Ok(([(header::SET_COOKIE, auth::set_cookie("", &headers))], Redirect::to("/")).into_response())
}
