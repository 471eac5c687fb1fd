//! Secret masking.
//!
//! Every password, secret key and auth header that sluice learns about (from
//! connections, `SLUICE_DATABASE_URL`, ...) is registered here, and every
//! line that leaves the process — tracing output, task logs stored in the
//! state store, error messages, CLI output — passes through [`mask`].
//! Passwords embedded in URIs (`scheme://user:pass@host`) are masked even
//! when they were never registered.

use std::io::{self, Write};
use std::sync::{LazyLock, RwLock};

use regex::Regex;

static SECRETS: LazyLock<RwLock<Vec<String>>> = LazyLock::new(|| RwLock::new(Vec::new()));
static URI_PASSWORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)([^@\s/]+)(@)").expect("valid regex"));

pub const MASK: &str = "***";

/// Registers a secret. Very short values are ignored: masking every `a`
/// would make logs unreadable and protects nothing.
pub fn register(secret: &str) {
    if secret.chars().count() < 3 {
        return;
    }
    // The secret as written, and as it reads after each quoting or escaping
    // a message may have gone through before it is masked: URL encoding,
    // JSON strings (`--log-format json`), shell and SQL single quotes.
    let mut forms = vec![secret.to_string()];
    forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
    let json = serde_json::to_string(secret).unwrap_or_default();
    forms.push(json.get(1..json.len().saturating_sub(1)).unwrap_or_default().to_string());
    forms.push(secret.replace('\'', "'\\''"));
    forms.push(secret.replace('\'', "''"));
    forms.push(secret.replace('\\', "\\\\").replace('"', "\\\""));
    forms.retain(|f| f.chars().count() >= 3);
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for f in forms {
        if !all.contains(&f) {
            all.push(f);
        }
    }
    // Longest first, so that a secret containing another is masked whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Registers the password of a URI, if it has one.
pub fn register_uri(uri: &str) {
    if let Ok(u) = url::Url::parse(uri)
        && let Some(p) = u.password()
    {
        register(p);
        if let Ok(decoded) = percent_decode(p) {
            register(&decoded);
        }
    }
}

fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| Ok(v.into_owned())).unwrap_or_else(|| Ok(s.to_string()))
}

/// Replaces every registered secret, and any password in a URI, with `***`.
pub fn mask(text: &str) -> String {
    let mut out = URI_PASSWORD.replace_all(text, |c: &regex::Captures<'_>| format!("{}{MASK}{}", &c[1], &c[3])).into_owned();
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for s in all.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// A writer that masks secrets in everything written through it. Writes are
/// buffered until a newline so that a secret split across two `write` calls
/// is still masked.
pub struct MaskingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> MaskingWriter<W> {
    pub fn new(inner: W) -> Self {
        MaskingWriter { inner, buf: Vec::new() }
    }

    fn flush_lines(&mut self, all: bool) -> io::Result<()> {
        let cut = if all { self.buf.len() } else { self.buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) };
        if cut == 0 {
            return Ok(());
        }
        let chunk: Vec<u8> = self.buf.drain(..cut).collect();
        let text = String::from_utf8_lossy(&chunk);
        self.inner.write_all(mask(&text).as_bytes())
    }
}

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.flush_lines(false)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_lines(true)?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for MaskingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_registered_and_uri_passwords() {
        register("hunter2-secret");
        assert_eq!(mask("password is hunter2-secret!"), "password is ***!");
        assert_eq!(mask("postgres://bob:s3cr%40t@db:5432/x"), "postgres://bob:***@db:5432/x");
        assert_eq!(mask("no secrets here"), "no secrets here");
    }

    #[test]
    fn writer_masks_split_writes() {
        register("split-secret-value");
        let mut out = Vec::new();
        {
            let mut w = MaskingWriter::new(&mut out);
            w.write_all(b"a split-sec").unwrap();
            w.write_all(b"ret-value b\n").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a *** b\n");
    }
}
