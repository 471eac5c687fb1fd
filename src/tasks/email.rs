//! `email`: sends a message with lettre, attaching upstream artifacts.
//!
//! ```yaml
//! - id: send_report
//!   type: email
//!   conn: smtp_default            # leave out to write an .eml to the outbox instead
//!   to: ["{{ var.report_to }}"]
//!   subject: "주간 KPI {{ upstream.weekly_report.metrics.period.start }}"
//!   text: "매출 {{ upstream.weekly_report.metrics.headline.revenue.display }}"
//!   html: "<p>매출 <b>{{ upstream.weekly_report.metrics.headline.revenue.display }}</b></p>"
//!   attach: [weekly_report]
//! ```
//!
//! A failed send fails the try, which is retried like any other, except
//! when the server refused the message for good (a 5xx reply). The message
//! is then also written to the outbox (`outbox/DAG.TASK.run-N.eml`, replaced
//! by each try and removed once a try sends it), and the error names the
//! file: when the last try fails, the report is still there to send by hand.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::mail::{Delivery, Outgoing};

/// Sends an email through an SMTP connection, or writes it to the outbox.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// An smtp connection. Without one, the message is written as an .eml
    /// file to `outbox`.
    pub conn: Option<String>,
    /// Recipients; an entry may hold several addresses separated by commas.
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Blind copy recipients.
    #[serde(default)]
    pub bcc: Vec<String>,
    /// The sender. Default: the connection's `from` parameter.
    pub from: Option<String>,
    /// The subject line (a template, like every text field).
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// An HTML body (sent with the text as its alternative).
    pub html: Option<String>,
    /// Upstream tasks whose artifacts (files) are attached.
    #[serde(default)]
    pub attach: Vec<String>,
    /// Where messages go without a connection, relative to the project root.
    /// Default `outbox`.
    pub outbox: Option<String>,
}

pub struct Email {
    msg: Outgoing,
    conn: Option<crate::connections::Connection>,
    outbox: std::path::PathBuf,
}

impl TaskType for EmailConfig {
    const NAME: &'static str = "email";
    type Built = Email;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        // An empty connection (a variable left unset) means the outbox.
        if let Some(c) = self.conn.as_deref().filter(|c| !c.trim().is_empty()) {
            cx.check_conn("conn", c, "smtp");
        }
        if self.to.is_empty() {
            cx.error("to", "an email needs at least one recipient in `to`");
        }
        for (key, list) in [("to", &self.to), ("cc", &self.cc), ("bcc", &self.bcc)] {
            for a in crate::mail::split_addresses(list) {
                if !crate::template::is_template(&a)
                    && let Err(e) = crate::mail::parse_mailbox(&a) {
                        cx.error(key, e.to_string());
                    }
            }
        }
        for a in &self.attach {
            cx.check_artifacts("attach", a);
        }
    }

    fn inputs(&self) -> Vec<String> {
        self.attach.clone()
    }

    fn connections(&self) -> Vec<String> {
        self.conn.iter().filter(|c| !c.trim().is_empty()).cloned().collect()
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Email, TaskError> {
        let conn = match self.conn.as_deref().filter(|c| !c.is_empty()) {
            Some(id) => Some(ctx.conn(id, "smtp")?.clone()),
            None => None,
        };
        let mut attachments = Vec::new();
        for task in &self.attach {
            let upstream = ctx.upstream.get(task).ok_or_else(|| {
                TaskError::Failed(format!("`{task}` has no output in this run to attach (did it succeed?)"))
            })?;
            let artifacts = upstream.get("artifacts").and_then(|a| a.as_object()).cloned().unwrap_or_default();
            // The PDF first, then the other files by name; `local` is where
            // the PDF was written, whose file name it is sent under.
            let mut staged: Vec<(String, String)> = artifacts
                .iter()
                .filter(|(k, _)| k.as_str() != "local")
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            staged.sort_by_key(|(k, _)| (k != "pdf", k.clone()));
            if staged.is_empty() {
                return Err(TaskError::Failed(format!("`{task}` produced no file to attach")));
            }
            for (key, uri) in staged {
                let path = ctx.local_artifact(&uri).await?;
                let bytes = std::fs::read(&path).map_err(|e| TaskError::Failed(format!("cannot read {}: {e}", path.display())))?;
                let local_name = artifacts.get("local").and_then(|v| v.as_str()).filter(|_| key == "pdf").map(std::path::PathBuf::from);
                let name = local_name
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| uri.rsplit('/').next().unwrap_or("attachment").to_string());
                let mime = match name.rsplit('.').next() {
                    Some("pdf") => "application/pdf",
                    Some("json") => "application/json",
                    _ => "application/octet-stream",
                };
                attachments.push((name, bytes, mime.to_string()));
            }
        }
        let msg = Outgoing {
            from: self.from,
            to: self.to,
            cc: self.cc,
            bcc: self.bcc,
            subject: self.subject,
            text: self.text,
            html: self.html,
            attachments,
        };
        let outbox = ctx.project_path(self.outbox.as_deref().unwrap_or("outbox"));
        Ok(Email { msg, conn, outbox })
    }
}

impl Run for Email {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let n_attach = self.msg.attachments.len();
        // Where an unsent message is kept: one file per run and task.
        let pending = format!("{}.{}.run-{}.eml", ctx.dag_id, ctx.task_id, ctx.run_id);
        let delivered = match crate::mail::deliver(&self.msg, self.conn.as_ref(), &self.outbox).await {
            Ok(d) => d,
            Err(crate::mail::MailError::Smtp { message, permanent }) => {
                let kept = match crate::mail::save(&self.msg, self.conn.as_ref(), &self.outbox, Some(&pending)) {
                    Ok(p) => format!("the message is saved in {}", crate::loader::display_path(&p).display()),
                    Err(e) => format!("and it could not be saved to the outbox either: {e}"),
                };
                let text = format!("{message}; {kept}");
                return Err(if permanent {
                    TaskError::permanent(format!("{text} (a permanent refusal: not retried)"))
                } else {
                    TaskError::transient(text)
                });
            }
            // A bad address or message would fail the same way again.
            Err(e @ (crate::mail::MailError::Address(..) | crate::mail::MailError::Build(_))) => {
                return Err(TaskError::permanent(e.to_string()));
            }
            Err(e) => return Err(TaskError::Failed(e.to_string())),
        };
        match delivered {
            Delivery::Sent { server, recipients } => {
                // A copy kept by an earlier, failed try is delivered now.
                let _ = std::fs::remove_file(self.outbox.join(&pending));
                tracing::info!("sent `{}` to {recipients} recipient(s) through {server}", self.msg.subject);
                Ok(Outcome::note(format!("sent to {recipients} recipient(s), {n_attach} attachment(s)")).metric("recipients", recipients as u64))
            }
            Delivery::Outbox(path) => {
                tracing::warn!("no SMTP connection: wrote the message to {}", path.display());
                let mut out = Outcome::note(format!("no SMTP connection: written to {}", path.display()));
                out.artifacts.insert("eml".into(), path.display().to_string());
                Ok(out)
            }
        }
    }
}
