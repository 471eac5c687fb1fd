//! Notices: what `on_failure`, `on_retry` and `on_success` (and the older
//! `email_on_failure` / `email_on_retry`) send when a try ends, and the
//! DAG's `on_failure` / `on_success` when a run ends. A notifier mails
//! (`email`) or POSTs JSON (`webhook`).
//!
//! Addresses and URLs are templates, rendered with the try's context like
//! any task field. What became of each notice (sent, written to the outbox,
//! posted, or not sent and why) is logged at the default level, shown in
//! the run's output, appended to the try's log and kept with the task
//! instance (or the run), where `sluice runs show` prints it: a lost notice
//! is never silent. A notice that fails for a passing reason is tried
//! again, up to [`ATTEMPTS`] times. Sending never changes the outcome.

use std::time::Duration;

use super::Runner;
use super::exec::TryReport;
use crate::dag::spec::HookFormat;
use crate::dag::{Dag, Notifier, Task};
use crate::mail::{Delivery, Outgoing};
use crate::state::{Claimed, RunRow, RunState, TiState};
use crate::tasks::TryLog;
use crate::template::RenderVars;

/// The connection notices are mailed through, when it is defined.
pub const NOTICE_CONN: &str = "smtp_default";

/// How many times a notice is tried when it fails for a passing reason
/// (an unreachable server, a 5xx).
pub const ATTEMPTS: u32 = 3;

/// What a notice is about.
pub enum Event<'a> {
    /// A try ended: failed, up for retry, or succeeded.
    Try { task: &'a Task, claimed: &'a Claimed, report: &'a TryReport, log: &'a TryLog },
    /// A run ended; `reason` says why a run failed when no task did
    /// (`dagrun_timeout`).
    Run { state: RunState, reason: Option<String> },
}

impl Event<'_> {
    /// `failure notice`, `retry notice`, ...
    fn what(&self) -> &'static str {
        match self {
            Event::Try { report, .. } => match report.state {
                TiState::UpForRetry => "retry notice",
                TiState::Success => "success notice",
                _ => "failure notice",
            },
            Event::Run { state: RunState::Success, .. } => "run success notice",
            Event::Run { .. } => "run failure notice",
        }
    }

    /// The webhook body's `event` field.
    fn name(&self) -> &'static str {
        match self {
            Event::Try { report, .. } => match report.state {
                TiState::UpForRetry => "task_retry",
                TiState::Success => "task_success",
                _ => "task_failed",
            },
            Event::Run { state: RunState::Success, .. } => "run_success",
            Event::Run { .. } => "run_failed",
        }
    }
}

/// Where a notice went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Sent { what: &'static str, to: Vec<String>, server: String },
    Outbox { what: &'static str, to: Vec<String>, path: String },
    Posted { what: &'static str, to: String, status: u16 },
    NotSent { what: &'static str, to: String, error: String },
}

impl Notice {
    pub fn delivered(&self) -> bool {
        !matches!(self, Notice::NotSent { .. })
    }
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Sent { what, to, server } => write!(f, "{what} sent to {} through {server}", to.join(", ")),
            Notice::Outbox { what, to, path } => {
                write!(f, "{what} to {} written to {path} (no `{NOTICE_CONN}` SMTP connection)", to.join(", "))
            }
            Notice::Posted { what, to, status } => write!(f, "{what} posted to {to} (HTTP {status})"),
            Notice::NotSent { what, to, error } => write!(f, "{what} to {to} NOT sent: {error}"),
        }
    }
}

/// Sends a try's notices and keeps what became of them with the task
/// instance and in the try's log.
pub async fn notify_try(
    runner: &Runner,
    dag: &Dag,
    run: &RunRow,
    task: &Task,
    claimed: &Claimed,
    report: &TryReport,
    notifiers: &[Notifier],
    log: &TryLog,
) -> Vec<Notice> {
    let event = Event::Try { task, claimed, report, log };
    let notices = send_all(runner, dag, run, &event, notifiers, Some((task, claimed.try_number))).await;
    if !notices.is_empty() {
        let text = recorded_text(&notices);
        if let Err(e) = runner.store.record_notice(run.run_id, &task.id, claimed.try_number, &text).await {
            tracing::warn!(run = run.run_id, task = %task.id, "could not record the notice's outcome: {e}");
        }
    }
    notices
}

/// Sends a run's notices (the DAG's `on_failure` / `on_success`) and keeps
/// what became of them with the run.
pub async fn notify_run(runner: &Runner, dag: &Dag, run: &RunRow, state: RunState, reason: Option<String>) -> Vec<Notice> {
    let notifiers = if state == RunState::Success { &dag.on_success } else { &dag.on_failure };
    let notices = send_all(runner, dag, run, &Event::Run { state, reason }, notifiers, None).await;
    if !notices.is_empty() {
        let text = recorded_text(&notices);
        if let Err(e) = runner.store.record_run_notice(run.run_id, &text).await {
            tracing::warn!(run = run.run_id, "could not record the run notice's outcome: {e}");
        }
    }
    notices
}

/// What is kept of a list of notices: one masked line each.
fn recorded_text(notices: &[Notice]) -> String {
    notices.iter().map(|n| crate::secrets::mask(&n.to_string())).collect::<Vec<_>>().join("\n")
}

async fn send_all(
    runner: &Runner,
    dag: &Dag,
    run: &RunRow,
    event: &Event<'_>,
    notifiers: &[Notifier],
    task: Option<(&Task, i32)>,
) -> Vec<Notice> {
    let mut out = Vec::with_capacity(notifiers.len());
    for n in notifiers {
        let mut attempt = 1;
        let notice = loop {
            let (notice, passing) = send(runner, dag, run, event, n, task).await;
            if notice.delivered() || !passing || attempt >= ATTEMPTS {
                break notice;
            }
            tracing::warn!(dag = %dag.dag_id, run = run.run_id, "{} (attempt {attempt} of {ATTEMPTS}; trying again)", crate::secrets::mask(&notice.to_string()));
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            attempt += 1;
        };
        let text = crate::secrets::mask(&notice.to_string());
        let task_id = task.map(|t| t.0.id.as_str()).unwrap_or("");
        match &notice {
            Notice::Sent { .. } | Notice::Posted { .. } => tracing::info!(dag = %dag.dag_id, task = task_id, run = run.run_id, "{text}"),
            Notice::Outbox { .. } => tracing::warn!(dag = %dag.dag_id, task = task_id, run = run.run_id, "{text}"),
            Notice::NotSent { .. } => tracing::error!(dag = %dag.dag_id, task = task_id, run = run.run_id, "{text}"),
        }
        out.push(notice);
    }
    out
}

/// Sends one notice once. The flag says whether a failure may pass.
async fn send(runner: &Runner, dag: &Dag, run: &RunRow, event: &Event<'_>, n: &Notifier, task: Option<(&Task, i32)>) -> (Notice, bool) {
    let what = event.what();
    let vars = vars(runner, dag, run, task);
    match n {
        Notifier::Email(to) => {
            let rendered = match render_addresses(runner, &vars, to) {
                Ok(r) => r,
                Err(error) => return (Notice::NotSent { what, to: to.join(", "), error }, false),
            };
            let msg = message(dag, run, event, rendered.clone());
            let conn = runner.res.connections.get(NOTICE_CONN).ok().filter(|c| c.kind() == "smtp");
            let outbox = runner.res.project_root.join("outbox");
            match crate::mail::deliver(&msg, conn, &outbox).await {
                Ok(Delivery::Sent { server, .. }) => (Notice::Sent { what, to: rendered, server }, false),
                Ok(Delivery::Outbox(p)) => {
                    (Notice::Outbox { what, to: rendered, path: crate::loader::display_path(&p).display().to_string() }, false)
                }
                Err(e) => {
                    let passing = matches!(e, crate::mail::MailError::Smtp { permanent: false, .. });
                    (Notice::NotSent { what, to: rendered.join(", "), error: e.to_string() }, passing)
                }
            }
        }
        Notifier::Webhook { url, format } => {
            let url = match runner.res.templates.render(url, &vars) {
                Ok(u) => u.trim().to_string(),
                Err(e) => {
                    return (
                        Notice::NotSent { what, to: format!("webhook `{url}`"), error: format!("the URL cannot be rendered: {e}") },
                        false,
                    );
                }
            };
            let to = format!("webhook {}", shown_url(&url));
            let body = hook_body(dag, run, event, *format);
            let resp = runner.res.http().post(&url).timeout(Duration::from_secs(10)).json(&body).send().await;
            match resp {
                Ok(r) if r.status().is_success() => (Notice::Posted { what, to, status: r.status().as_u16() }, false),
                Ok(r) => {
                    let status = r.status();
                    let text: String = r.text().await.unwrap_or_default().chars().take(200).collect();
                    let passing = crate::tasks::error::http_status_kind(status.as_u16()) == crate::tasks::ErrorKind::Transient;
                    (Notice::NotSent { what, to, error: format!("HTTP {status}: {}", crate::secrets::mask(text.trim())) }, passing)
                }
                Err(e) => {
                    let why = crate::tasks::error::error_chain(&e).replace(&url, &shown_url(&url));
                    (Notice::NotSent { what, to, error: format!("{why}; check the URL and that the receiver is up") }, true)
                }
            }
        }
    }
}

/// A webhook URL as logs show it: scheme, host and port only (a Slack
/// webhook's path is its password).
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}{}/…", u.scheme(), u.host_str().unwrap_or(""), u.port().map(|p| format!(":{p}")).unwrap_or_default()),
        Err(_) => "(an invalid URL)".into(),
    }
}

fn vars(runner: &Runner, dag: &Dag, run: &RunRow, task: Option<(&Task, i32)>) -> minijinja::Value {
    RenderVars {
        dag_id: dag.dag_id.clone(),
        task_id: task.map(|t| t.0.id.clone()).unwrap_or_default(),
        run_id: run.run_id.to_string(),
        try_number: task.map_or(0, |t| t.1),
        tz: dag.timezone,
        logical_date: run.logical_date,
        interval_start: run.data_interval_start,
        interval_end: run.data_interval_end,
        params: run.conf.as_object().cloned().unwrap_or_default(),
        connections: runner.res.connections.clone(),
        upstream: serde_json::Map::new(),
        prev_success: None,
        map: None,
    }
    .to_value()
}

/// The webhook's JSON body.
fn hook_body(dag: &Dag, run: &RunRow, event: &Event<'_>, format: HookFormat) -> serde_json::Value {
    let (subject, text) = subject_and_text(dag, run, event);
    let text = crate::secrets::mask(&text);
    if format == HookFormat::Slack {
        return serde_json::json!({ "text": format!("*{}*\n{}", crate::secrets::mask(&subject), text) });
    }
    let mut body = serde_json::json!({
        "event": event.name(),
        "dag_id": dag.dag_id,
        "run_id": run.run_id,
        "logical_date": run.logical_date.to_rfc3339(),
        "subject": crate::secrets::mask(&subject),
        "text": text,
    });
    match event {
        Event::Try { task, claimed, report, .. } => {
            body["task_id"] = task.id.clone().into();
            body["try_number"] = claimed.try_number.into();
            body["max_tries"] = claimed.max_tries.into();
            body["state"] = report.state.as_str().into();
            body["error"] = report.error.as_deref().map(crate::secrets::mask).into();
        }
        Event::Run { state, reason } => {
            body["state"] = state.as_str().into();
            body["error"] = reason.as_deref().map(crate::secrets::mask).into();
        }
    }
    body
}

fn subject_and_text(dag: &Dag, run: &RunRow, event: &Event<'_>) -> (String, String) {
    let when = run.logical_date.with_timezone(&dag.timezone).to_rfc3339();
    match event {
        Event::Try { task, claimed, report, log } => {
            let what = match report.state {
                TiState::UpForRetry => "failed and will be retried",
                TiState::Success => "succeeded",
                _ => "failed",
            };
            let subject = format!(
                "[sluice] {}.{} {what} (run {}, try {}/{})",
                dag.dag_id, task.id, run.run_id, claimed.try_number, claimed.max_tries
            );
            let mut text = format!(
                "DAG:          {}\nRun:          {} ({}, logical date {when})\nTask:         {}\nTry:          {} of {}\n",
                dag.dag_id, run.run_id, run.run_type, task.id, claimed.try_number, claimed.max_tries,
            );
            if let Some(e) = &report.error {
                text.push_str(&format!("Error:        {e}\n"));
            }
            if let Some(n) = &report.note {
                text.push_str(&format!("Result:       {n}\n"));
            }
            if let Some(w) = report.retry_in.filter(|_| report.state == TiState::UpForRetry) {
                text.push_str(&format!("Next try in:  {}\n", crate::dag::duration::format(w)));
            }
            if report.state != TiState::Success {
                text.push_str(&format!(
                    "\nLast lines of the log (`sluice logs {} {} --try {}`):\n",
                    run.run_id, task.id, claimed.try_number
                ));
                for l in log.last_lines(30) {
                    text.push_str(&l);
                    text.push('\n');
                }
            }
            (subject, text)
        }
        Event::Run { state, reason } => {
            let subject = format!(
                "[sluice] run {} of {} {}",
                run.run_id,
                dag.dag_id,
                if *state == RunState::Success { "succeeded" } else { "failed" }
            );
            let mut text = format!(
                "DAG:          {}\nRun:          {} ({}, logical date {when})\nState:        {state}\n",
                dag.dag_id, run.run_id, run.run_type
            );
            if let Some(r) = reason {
                text.push_str(&format!("Why:          {r}\n"));
            }
            text.push_str(&format!("\nDetails: `sluice runs show {}`\n", run.run_id));
            (subject, text)
        }
    }
}

/// The recipients, each entry rendered as a template with the try's context
/// (`{{ var.alerts_to }}`, `{{ params.owner }}`) and split at commas.
fn render_addresses(runner: &Runner, vars: &minijinja::Value, to: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in to {
        let rendered = runner.res.templates.render(entry, vars).map_err(|e| format!("the address `{entry}` cannot be rendered: {e}"))?;
        for a in crate::mail::split_addresses(std::slice::from_ref(&rendered)) {
            crate::mail::parse_mailbox(&a)
                .map_err(|e| if &rendered == entry { e.to_string() } else { format!("{e} (rendered from `{entry}`)") })?;
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(format!("the addresses {to:?} render to none"));
    }
    Ok(out)
}

fn message(dag: &Dag, run: &RunRow, event: &Event<'_>, to: Vec<String>) -> Outgoing {
    let (subject, text) = subject_and_text(dag, run, event);
    Outgoing {
        from: None,
        to,
        cc: Vec::new(),
        bcc: Vec::new(),
        subject,
        text: crate::secrets::mask(&text),
        html: None,
        attachments: Vec::new(),
    }
}
