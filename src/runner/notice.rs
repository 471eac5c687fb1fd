//! Failure notices: the mail sent when a try fails (`email_on_failure`) or
//! will be retried (`email_on_retry`).
//!
//! The addresses are templates, rendered with the try's context like any
//! task field. What became of a notice (sent, written to the outbox, or not
//! sent and why) is logged at the default level, shown in the run's output,
//! appended to the try's log and kept with the task instance, where `sluice
//! runs show` prints it: a lost notice is never silent. Sending it never
//! changes the try's outcome.

use super::Runner;
use super::exec::TryReport;
use crate::dag::{Dag, Task};
use crate::mail::{Delivery, Outgoing};
use crate::state::{Claimed, RunRow, TiState};
use crate::tasks::TryLog;
use crate::template::RenderVars;

/// The connection failure notices go through, when it is defined.
pub const NOTICE_CONN: &str = "smtp_default";

/// What became of a failure notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Sent { to: Vec<String>, server: String },
    Outbox { to: Vec<String>, path: String },
    NotSent { to: Vec<String>, error: String },
}

impl Notice {
    pub fn delivered(&self) -> bool {
        !matches!(self, Notice::NotSent { .. })
    }
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Sent { to, server } => write!(f, "failure notice sent to {} through {server}", to.join(", ")),
            Notice::Outbox { to, path } => {
                write!(f, "failure notice to {} written to {path} (no `{NOTICE_CONN}` SMTP connection)", to.join(", "))
            }
            Notice::NotSent { to, error } => write!(f, "failure notice to {} NOT sent: {error}", to.join(", ")),
        }
    }
}

/// Mails a short notice of a failed try to `to` and says what became of it.
pub async fn notify(
    runner: &Runner,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    claimed: &Claimed,
    report: &TryReport,
    to: &[String],
    log: &TryLog,
) -> Notice {
    let notice = match render_addresses(runner, dag, task, run, claimed, to) {
        Err(error) => Notice::NotSent { to: to.to_vec(), error },
        Ok(rendered) => {
            let msg = message(dag, task, run, claimed, report, rendered.clone(), log);
            let conn = runner.res.connections.get(NOTICE_CONN).ok().filter(|c| c.kind() == "smtp");
            let outbox = runner.res.project_root.join("outbox");
            match crate::mail::deliver(&msg, conn, &outbox).await {
                Ok(Delivery::Sent { server, .. }) => Notice::Sent { to: rendered, server },
                Ok(Delivery::Outbox(p)) => Notice::Outbox { to: rendered, path: crate::loader::display_path(&p).display().to_string() },
                Err(e) => Notice::NotSent { to: rendered, error: e.to_string() },
            }
        }
    };
    let text = crate::secrets::mask(&notice.to_string());
    match &notice {
        Notice::Sent { .. } => tracing::info!(dag = %dag.dag_id, task = %task.id, run = run.run_id, "{text}"),
        Notice::Outbox { .. } => tracing::warn!(dag = %dag.dag_id, task = %task.id, run = run.run_id, "{text}"),
        Notice::NotSent { .. } => tracing::error!(dag = %dag.dag_id, task = %task.id, run = run.run_id, "{text}"),
    }
    if let Err(e) = runner.store.record_notice(run.run_id, &task.id, claimed.try_number, &text).await {
        tracing::warn!(run = run.run_id, task = %task.id, "could not record the failure notice's outcome: {e}");
    }
    notice
}

/// The recipients, each entry rendered as a template with the try's context
/// (`{{ var.alerts_to }}`, `{{ params.owner }}`) and split at commas.
fn render_addresses(
    runner: &Runner,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    claimed: &Claimed,
    to: &[String],
) -> Result<Vec<String>, String> {
    let vars = RenderVars {
        dag_id: dag.dag_id.clone(),
        task_id: task.id.clone(),
        run_id: run.run_id.to_string(),
        try_number: claimed.try_number,
        tz: dag.timezone,
        logical_date: run.logical_date,
        interval_start: run.data_interval_start,
        interval_end: run.data_interval_end,
        params: run.conf.as_object().cloned().unwrap_or_default(),
        connections: runner.res.connections.clone(),
        upstream: serde_json::Map::new(),
    }
    .to_value();
    let mut out = Vec::new();
    for entry in to {
        let rendered = runner.res.templates.render(entry, &vars).map_err(|e| format!("the address `{entry}` cannot be rendered: {e}"))?;
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

fn message(dag: &Dag, task: &Task, run: &RunRow, claimed: &Claimed, report: &TryReport, to: Vec<String>, log: &TryLog) -> Outgoing {
    let retrying = report.state == TiState::UpForRetry;
    let what = if retrying { "failed and will be retried" } else { "failed" };
    let subject =
        format!("[sluice] {}.{} {what} (run {}, try {}/{})", dag.dag_id, task.id, run.run_id, claimed.try_number, claimed.max_tries);
    let mut text = format!(
        "DAG:          {}\nRun:          {} ({}, logical date {})\nTask:         {}\nTry:          {} of {}\nError:        {}\n",
        dag.dag_id,
        run.run_id,
        run.run_type,
        run.logical_date.with_timezone(&dag.timezone).to_rfc3339(),
        task.id,
        claimed.try_number,
        claimed.max_tries,
        report.error.as_deref().unwrap_or("")
    );
    if let Some(w) = report.retry_in {
        text.push_str(&format!("Next try in:  {}\n", crate::dag::duration::format(w)));
    }
    text.push_str(&format!("\nLast lines of the log (`sluice logs {} {} --try {}`):\n", run.run_id, task.id, claimed.try_number));
    for l in log.last_lines(30) {
        text.push_str(&l);
        text.push('\n');
    }
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
