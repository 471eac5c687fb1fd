//! Sending mail: the `email` task and failure notices share this path.
//!
//! An SMTP connection is a URI:
//!
//! ```text
//! smtp://user:pass@mail.example.com:587?from=reports@shop.example          (STARTTLS, the default)
//! smtps://user:pass@mail.example.com?from=reports@shop.example             (TLS from the start, port 465)
//! smtp://127.0.0.1:2525?tls=none&from=reports@shop.example                 (no TLS: loopback only)
//! ```
//!
//! Without an SMTP connection the message is written as an `.eml` file to an
//! outbox folder, and the caller says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::connections::Connection;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid address `{0}`: {1}")]
    Address(String, String),
    #[error("cannot build the message: {0}")]
    Build(String),
    /// The SMTP server could not be reached or did not take the message;
    /// `permanent` when it refused it with a 5xx reply (sending again
    /// would be refused again).
    #[error("{message}")]
    Smtp { message: String, permanent: bool },
    #[error("cannot write {0}: {1}")]
    Outbox(PathBuf, std::io::Error),
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// (file name, bytes, MIME type)
    pub attachments: Vec<(String, Vec<u8>, String)>,
}

/// Where a message went.
#[derive(Debug, Clone)]
pub enum Delivery {
    Sent { server: String, recipients: usize },
    Outbox(PathBuf),
}

/// Splits address lists: each entry may hold several, separated by commas.
pub fn split_addresses(list: &[String]) -> Vec<String> {
    list.iter().flat_map(|s| s.split([',', ';'])).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

pub fn parse_mailbox(s: &str) -> Result<Mailbox, MailError> {
    s.parse::<Mailbox>().map_err(|e| MailError::Address(s.to_string(), e.to_string()))
}

fn build(msg: &Outgoing, default_from: &str) -> Result<Message, MailError> {
    let from = parse_mailbox(msg.from.as_deref().unwrap_or(default_from))?;
    // The Message-ID names the sender's domain, not this machine.
    let id = format!("<{}@{}>", uuid::Uuid::new_v4().simple(), from.email.domain());
    let mut b = Message::builder().from(from).message_id(Some(id)).subject(msg.subject.clone());
    for a in split_addresses(&msg.to) {
        b = b.to(parse_mailbox(&a)?);
    }
    for a in split_addresses(&msg.cc) {
        b = b.cc(parse_mailbox(&a)?);
    }
    for a in split_addresses(&msg.bcc) {
        b = b.bcc(parse_mailbox(&a)?);
    }
    let body = match &msg.html {
        Some(html) => MultiPart::alternative_plain_html(msg.text.clone(), html.clone()),
        None => MultiPart::mixed().singlepart(SinglePart::plain(msg.text.clone())),
    };
    let m = if msg.attachments.is_empty() {
        b.multipart(body)
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for (name, bytes, mime) in &msg.attachments {
            let ct = ContentType::parse(mime).map_err(|e| MailError::Build(format!("content type {mime}: {e}")))?;
            mixed = mixed.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
        }
        b.multipart(mixed)
    };
    m.map_err(|e| MailError::Build(e.to_string()))
}

/// The sender when a message names none: the connection's `from`
/// parameter, else its login when that is an address, else
/// `sluice@localhost` (never the machine's name, which mail servers reject
/// or mark as spam, and which says nothing to the reader).
pub const FALLBACK_FROM: &str = "sluice@localhost";

fn default_from(conn: Option<&Connection>) -> String {
    conn.and_then(|c| c.extra.get("from").cloned().or_else(|| c.login.clone().filter(|l| l.contains('@'))))
        .unwrap_or_else(|| FALLBACK_FROM.to_string())
}

/// Writes the message as an `.eml` file to `outbox`: as `name` when given
/// (replacing an earlier copy), else named by time and subject.
pub fn save(msg: &Outgoing, conn: Option<&Connection>, outbox: &Path, name: Option<&str>) -> Result<PathBuf, MailError> {
    let message = build(msg, &default_from(conn))?;
    std::fs::create_dir_all(outbox).map_err(|e| MailError::Outbox(outbox.to_path_buf(), e))?;
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let slug: String = msg.subject.chars().map(|ch| if ch.is_alphanumeric() { ch } else { '-' }).take(60).collect();
            format!("{}-{}.eml", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"), slug.trim_matches('-'))
        }
    };
    let path = outbox.join(name);
    let tmp = path.with_extension("eml.tmp");
    std::fs::write(&tmp, message.formatted()).map_err(|e| MailError::Outbox(tmp.clone(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| MailError::Outbox(path.clone(), e))?;
    Ok(path)
}

/// Sends through `conn`, or writes to `outbox` when there is none.
pub async fn deliver(msg: &Outgoing, conn: Option<&Connection>, outbox: &Path) -> Result<Delivery, MailError> {
    let Some(c) = conn else {
        return Ok(Delivery::Outbox(save(msg, None, outbox, None)?));
    };
    let message = build(msg, &default_from(conn))?;
    let host = c.host.clone().unwrap_or_else(|| "localhost".into());
    let implicit_tls = c.scheme == "smtps" || c.extra.get("tls").is_some_and(|t| t == "tls");
    let no_tls = c.extra.get("tls").is_some_and(|t| matches!(t.as_str(), "none" | "false" | "off"));
    let port = c.port.unwrap_or(if implicit_tls { 465 } else { 587 });
    let server = format!("{host}:{port}");
    let smtp_err =
        |e: lettre::transport::smtp::Error| MailError::Smtp { message: describe_smtp(&e, &c.id, &server), permanent: e.is_permanent() };
    let mut builder = if no_tls {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
    } else if implicit_tls {
        AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(smtp_err)?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host).map_err(smtp_err)?
    };
    builder = builder.port(port).timeout(Some(Duration::from_secs(30)));
    if let (Some(user), Some(pass)) = (&c.login, c.password()) {
        builder = builder.credentials(Credentials::new(user.clone(), pass.to_string()));
    }
    let transport = builder.build();
    let recipients = message.envelope().to().len();
    transport.send(message).await.map_err(smtp_err)?;
    Ok(Delivery::Sent { server, recipients })
}

/// Says what went wrong in words a person can act on.
fn describe_smtp(e: &lettre::transport::smtp::Error, id: &str, server: &str) -> String {
    let detail = crate::secrets::mask(&crate::tasks::error::error_chain(e));
    let code = e.status().map(|c| c.to_string()).unwrap_or_default();
    let lower = detail.to_ascii_lowercase();
    if code.starts_with("535") || code.starts_with("534") || lower.contains("authentication") || lower.contains("credentials") {
        format!("SMTP server {server} (connection `{id}`) refused the login: {detail}; check the user and password in the connection")
    } else if e.is_timeout() {
        format!("SMTP server {server} (connection `{id}`) did not answer in time: {detail}")
    } else if lower.contains("refused") || lower.contains("connect") || lower.contains("dns") || lower.contains("resolve") {
        format!("cannot reach SMTP server {server} (connection `{id}`): {detail}")
    } else if e.is_tls() {
        format!("TLS with SMTP server {server} (connection `{id}`) failed: {detail}; set ?tls=none only for a server on loopback")
    } else {
        format!("SMTP server {server} (connection `{id}`) refused the message: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_multipart_with_attachment() {
        let msg = Outgoing {
            from: Some("Reports <reports@shop.example>".into()),
            to: vec!["a@shop.example, b@shop.example".into()],
            cc: vec![],
            bcc: vec!["audit@shop.example".into()],
            subject: "주간 KPI".into(),
            text: "plain".into(),
            html: Some("<p>html</p>".into()),
            attachments: vec![("r.pdf".into(), b"%PDF-1.7".to_vec(), "application/pdf".into())],
        };
        let m = build(&msg, "x@y").unwrap();
        assert_eq!(m.envelope().to().len(), 3);
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("multipart/alternative") && text.contains("application/pdf") && text.contains("r.pdf"));
        assert!(!text.contains("audit@shop.example"), "bcc must not appear in headers");
        assert!(build(&Outgoing { to: vec!["not an address".into()], ..msg }, "x@y").is_err());
    }
}
