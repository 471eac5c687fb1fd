//! Connections and variables.
//!
//! A connection is a URI, the same convention as Airflow's `AIRFLOW_CONN_*`:
//!
//! * `SLUICE_CONN_<ID>` environment variables (`SLUICE_CONN_WAREHOUSE=postgres://u:p@host:5432/db`),
//! * `config/connections.yaml`, which declares the ids a project uses and may
//!   give a URI with `${VAR}` / `${VAR:-default}` references to the environment.
//!
//! The environment wins over the file. Supported schemes: `postgres`
//! (`postgresql`), `s3`, `smtp`/`smtps`, `http`/`https`. Every password and
//! header value is registered with [`crate::secrets`] as soon as it is read.
//!
//! Variables (`{{ var.NAME }}`) come from `SLUICE_VAR_<NAME>` or
//! `config/variables.yaml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{At, Diagnostic, Diagnostics};

pub const CONN_ENV_PREFIX: &str = "SLUICE_CONN_";
pub const VAR_ENV_PREFIX: &str = "SLUICE_VAR_";

/// `config/connections.yaml`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsFile {
    /// Connection ids used by this project's DAGs.
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionSpec>,
}

/// One declared connection.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// The connection URI; may reference environment variables as `${VAR}` or
    /// `${VAR:-default}`. Leave it out to only declare the id and take the
    /// value from `SLUICE_CONN_<ID>` at run time.
    pub uri: Option<String>,
    /// The kind of connection: postgres, s3, smtp, http.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// What the connection is for.
    pub description: Option<String>,
    /// HTTP headers sent with every request (http connections); values may
    /// use `${VAR}` and are masked in logs.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `config/variables.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariablesFile {
    #[serde(default)]
    variables: BTreeMap<String, serde_yaml::Value>,
}

/// A resolved connection.
#[derive(Clone)]
pub struct Connection {
    pub id: String,
    /// `postgres`, `s3`, `smtp`, `smtps`, `http`, `https`.
    pub scheme: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub login: Option<String>,
    password: Option<String>,
    /// The URI's path without the leading `/` (a database name for Postgres,
    /// a bucket for S3).
    pub schema: Option<String>,
    /// The URI's query parameters.
    pub extra: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    uri: String,
    /// Where the value came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("login", &self.login)
            .field("password", &self.password.as_ref().map(|_| crate::secrets::MASK))
            .field("schema", &self.schema)
            .field("source", &self.source)
            .finish()
    }
}

/// What templates see as `conn.ID`.
#[derive(Serialize)]
pub struct ConnView<'a> {
    pub conn_type: &'a str,
    pub host: Option<&'a str>,
    pub port: Option<u16>,
    pub login: Option<&'a str>,
    pub password: Option<&'a str>,
    pub schema: Option<&'a str>,
    pub extra: &'a BTreeMap<String, String>,
    pub uri: &'a str,
}

impl Connection {
    /// Parses a connection URI.
    pub fn parse(id: &str, uri: &str, source: &str) -> Result<Connection, String> {
        crate::secrets::register_uri(uri);
        let u = url::Url::parse(uri).map_err(|e| format!("connection `{id}` ({source}) is not a valid URI: {e}"))?;
        let scheme = match u.scheme() {
            "postgresql" => "postgres".to_string(),
            s => s.to_string(),
        };
        if !["postgres", "s3", "smtp", "smtps", "http", "https"].contains(&scheme.as_str()) {
            return Err(format!("connection `{id}` ({source}) has scheme `{scheme}`; supported: postgres, s3, smtp, smtps, http, https"));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let password = u.password().map(decode);
        if let Some(p) = &password {
            crate::secrets::register(p);
        }
        let login = (!u.username().is_empty()).then(|| decode(u.username()));
        let path = u.path().trim_start_matches('/');
        Ok(Connection {
            id: id.to_string(),
            scheme,
            host: u.host_str().filter(|h| !h.is_empty()).map(str::to_string),
            port: u.port(),
            login,
            password,
            schema: (!path.is_empty()).then(|| decode(path)),
            extra: u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
            headers: BTreeMap::new(),
            uri: uri.to_string(),
            source: source.to_string(),
        })
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The full URI, password included. Never log it; pass it to clients.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The kind of service: `postgres`, `s3`, `smtp` (for smtp and smtps) or
    /// `http` (for http and https).
    pub fn kind(&self) -> &str {
        match self.scheme.as_str() {
            "smtps" => "smtp",
            "https" => "http",
            s => s,
        }
    }

    pub fn template_view(&self) -> ConnView<'_> {
        ConnView {
            conn_type: &self.scheme,
            host: self.host.as_deref(),
            port: self.port,
            login: self.login.as_deref(),
            password: self.password.as_deref(),
            schema: self.schema.as_deref(),
            extra: &self.extra,
            uri: &self.uri,
        }
    }

    /// Checks that the connection is of the kind a task needs.
    pub fn expect_kind(&self, kind: &str) -> Result<(), ConnError> {
        if self.kind() == kind {
            Ok(())
        } else {
            Err(ConnError::WrongKind { id: self.id.clone(), want: kind.to_string(), got: self.scheme.clone() })
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    #[error("connection `{id}` is not defined{hint}; set {env} or declare it in config/connections.yaml")]
    Undefined { id: String, env: String, hint: String },
    #[error("connection `{id}` has no value in this environment: {reason}")]
    Unavailable { id: String, reason: String },
    #[error("connection `{id}` is a {got} connection, this task needs a {want} connection")]
    WrongKind { id: String, want: String, got: String },
    #[error("{0}")]
    Invalid(String),
}

/// The state of a connection id in this environment.
#[derive(Debug, Clone)]
enum Entry {
    Ready(Box<Connection>),
    /// Declared in the file, but its value is not available here.
    Unavailable {
        reason: String,
        kind: Option<String>,
    },
    /// Declared, and environment checks are off (`--no-environment`).
    Declared {
        kind: Option<String>,
    },
    Invalid(String),
}

/// Every connection and variable known to this process.
#[derive(Debug, Default)]
pub struct Connections {
    entries: BTreeMap<String, Entry>,
    variables: BTreeMap<String, String>,
    use_env: bool,
}

/// The env var that holds connection `id`.
pub fn env_name(id: &str) -> String {
    format!("{CONN_ENV_PREFIX}{}", id.to_ascii_uppercase().replace(['-', '.'], "_"))
}

/// Expands `${VAR}` and `${VAR:-default}`. Returns the names of unset
/// variables without a default as an error.
pub fn expand_env(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::new();
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match lookup(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => match default {
                Some(d) => out.push_str(d),
                None => missing.push(name.to_string()),
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() { Ok(out) } else { Err(missing) }
}

impl Connections {
    /// Loads `config/connections.yaml` and `config/variables.yaml` under
    /// `root`, and, when `use_env` is set, the `SLUICE_CONN_*` and
    /// `SLUICE_VAR_*` environment variables. Problems with the files are
    /// returned as diagnostics; a missing file is not a problem.
    pub fn load(root: &Path, use_env: bool) -> (Connections, Vec<Diagnostic>) {
        let env: BTreeMap<String, String> = if use_env { std::env::vars().collect() } else { BTreeMap::new() };
        Self::load_with(root, use_env, &env)
    }

    pub fn load_with(root: &Path, use_env: bool, env: &BTreeMap<String, String>) -> (Connections, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut me = Connections { use_env, ..Default::default() };
        let lookup = |name: &str| env.get(name).cloned();

        let file = root.join("config/connections.yaml");
        if let Some(spec) = read_yaml::<ConnectionsFile>(&file, &mut diags) {
            for (id, c) in spec.connections {
                let entry = if !use_env {
                    Entry::Declared { kind: c.kind.clone() }
                } else if let Some(uri) = env.get(&env_name(&id)) {
                    resolve(&id, uri, &env_name(&id), &c.headers, &lookup)
                } else if let Some(uri) = &c.uri {
                    match expand_env(uri, &lookup) {
                        Ok(uri) if uri.trim().is_empty() => Entry::Unavailable {
                            reason: format!("its URI is empty here; set {} or what the URI references", env_name(&id)),
                            kind: c.kind.clone(),
                        },
                        Ok(uri) => resolve(&id, &uri, &file.display().to_string(), &c.headers, &lookup),
                        Err(missing) => Entry::Unavailable {
                            reason: format!("its URI needs {} (or set {})", missing.join(", "), env_name(&id)),
                            kind: c.kind.clone(),
                        },
                    }
                } else {
                    Entry::Unavailable { reason: format!("set {}", env_name(&id)), kind: c.kind.clone() }
                };
                if let (Some(k), Entry::Ready(conn)) = (&c.kind, &entry)
                    && conn.kind() != k
                {
                    diags
                        .push(file_diag(&file, format!("connections.{id}: declared as type `{k}` but its URI is a `{}` URI", conn.scheme)));
                }
                me.entries.insert(id, entry);
            }
        }
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix(CONN_ENV_PREFIX) {
                let id = rest.to_ascii_lowercase();
                if !me.entries.contains_key(&id) {
                    me.entries.insert(id.clone(), resolve(&id, v, k, &BTreeMap::new(), &lookup));
                }
            }
        }

        let vfile = root.join("config/variables.yaml");
        if let Some(vars) = read_yaml::<VariablesFile>(&vfile, &mut diags) {
            for (k, v) in vars.variables {
                let s = match v {
                    serde_yaml::Value::String(s) => s,
                    other => serde_yaml::to_string(&other).unwrap_or_default().trim_end().to_string(),
                };
                me.variables.insert(k, s);
            }
        }
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix(VAR_ENV_PREFIX) {
                me.variables.insert(rest.to_ascii_lowercase(), v.clone());
            }
        }
        (me, diags)
    }

    /// A connection ready to use, or why not.
    pub fn get(&self, id: &str) -> Result<&Connection, ConnError> {
        match self.entries.get(id) {
            Some(Entry::Ready(c)) => Ok(c),
            Some(Entry::Unavailable { reason, .. }) => Err(ConnError::Unavailable { id: id.into(), reason: reason.clone() }),
            Some(Entry::Declared { .. }) => Err(ConnError::Unavailable { id: id.into(), reason: "environment lookups are off".into() }),
            Some(Entry::Invalid(m)) => Err(ConnError::Invalid(m.clone())),
            None => Err(ConnError::Undefined {
                id: id.into(),
                env: env_name(id),
                hint: crate::diag::hint(id, self.entries.keys().map(String::as_str)),
            }),
        }
    }

    /// Every connection id this process knows, usable or not.
    pub fn ids(&self) -> BTreeSet<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn variable(&self, name: &str) -> Option<String> {
        self.variables.get(name).or_else(|| self.variables.get(&name.to_ascii_lowercase())).cloned()
    }

    /// Sets a variable (for tests).
    #[cfg(test)]
    pub(crate) fn set_variable(&mut self, name: &str, value: &str) {
        self.variables.insert(name.to_string(), value.to_string());
    }

    /// Adds a connection (used by the CLI for the state store, and by tests).
    pub fn insert(&mut self, c: Connection) {
        self.entries.insert(c.id.clone(), Entry::Ready(Box::new(c)));
    }

    /// Validate-time check of a connection reference in a task: undefined ids
    /// are errors; ids known but without a value here are warnings; a wrong
    /// kind is an error.
    pub fn check_reference(&self, id: &str, kind: &str, at: At<'_>, d: &mut Diagnostics<'_>) {
        let declared_kind = match self.entries.get(id) {
            None => {
                let how = if self.use_env {
                    format!("set {} or declare it in config/connections.yaml", env_name(id))
                } else {
                    "declare it in config/connections.yaml (environment checks are off)".to_string()
                };
                d.error(
                    at,
                    format!("connection `{id}` is not defined{}; {how}", crate::diag::hint(id, self.entries.keys().map(String::as_str))),
                );
                return;
            }
            Some(Entry::Ready(c)) => Some(c.kind().to_string()),
            Some(Entry::Unavailable { reason, kind }) => {
                d.warning(at, format!("connection `{id}` has no value in this environment: {reason}"));
                kind.clone()
            }
            Some(Entry::Declared { kind }) => kind.clone(),
            Some(Entry::Invalid(m)) => {
                d.error(at, m.clone());
                return;
            }
        };
        if let Some(k) = declared_kind {
            let k = match k.as_str() {
                "postgresql" => "postgres",
                "smtps" => "smtp",
                "https" => "http",
                other => other,
            };
            if k != kind {
                d.error(at, format!("connection `{id}` is a {k} connection, this task needs a {kind} connection"));
            }
        }
    }
}

fn resolve(id: &str, uri: &str, source: &str, headers: &BTreeMap<String, String>, lookup: &dyn Fn(&str) -> Option<String>) -> Entry {
    match Connection::parse(id, uri, source) {
        Ok(mut c) => {
            for (k, v) in headers {
                match expand_env(v, lookup) {
                    Ok(v) => {
                        crate::secrets::register(&v);
                        c.headers.insert(k.clone(), v);
                    }
                    Err(missing) => {
                        return Entry::Unavailable { reason: format!("header {k} needs {}", missing.join(", ")), kind: Some(c.scheme) };
                    }
                }
            }
            Entry::Ready(Box::new(c))
        }
        Err(e) => Entry::Invalid(e),
    }
}

fn file_diag(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        severity: crate::diag::Severity::Error,
        file: file.to_path_buf(),
        pos: crate::diag::Pos::START,
        path: String::new(),
        message,
    }
}

fn read_yaml<T: serde::de::DeserializeOwned>(file: &PathBuf, diags: &mut Vec<Diagnostic>) -> Option<T> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            diags.push(file_diag(file, format!("cannot read: {e}")));
            return None;
        }
    };
    let spans = crate::dag::spans::Spans::index(&text);
    let de = serde_yaml::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let mut d = Diagnostics::new(file.clone(), &spans);
            let inner = e.into_inner();
            match inner.location() {
                Some(loc) if path == "." || path.is_empty() => {
                    d.error(At::Pos(crate::diag::Pos { line: loc.line(), col: loc.column() }), strip_location(&inner.to_string()))
                }
                _ => d.error(At::Value(&path), strip_location(&inner.to_string())),
            }
            diags.extend(d.into_vec());
            None
        }
    }
}

/// serde_yaml appends " at line X column Y" to messages; we print positions
/// ourselves.
pub fn strip_location(msg: &str) -> String {
    static LOC: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r" at line \d+ column \d+").expect("valid regex"));
    LOC.replace_all(msg, "").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_and_masks() {
        let c = Connection::parse("wh", "postgres://bob:p%40ss-word@db.local:5432/shop?sslmode=disable", "test").unwrap();
        assert_eq!(c.kind(), "postgres");
        assert_eq!(c.host.as_deref(), Some("db.local"));
        assert_eq!(c.port, Some(5432));
        assert_eq!(c.login.as_deref(), Some("bob"));
        assert_eq!(c.password(), Some("p@ss-word"));
        assert_eq!(c.schema.as_deref(), Some("shop"));
        assert_eq!(c.extra.get("sslmode").map(String::as_str), Some("disable"));
        assert!(!format!("{c:?}").contains("p@ss-word"));
        assert_eq!(crate::secrets::mask("pw p@ss-word"), "pw ***");
    }

    #[test]
    fn expands_env_references() {
        let lookup = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(expand_env("x${A}y${B:-2}", &lookup).unwrap(), "x1y2");
        assert_eq!(expand_env("${C}", &lookup).unwrap_err(), vec!["C".to_string()]);
    }

    #[test]
    fn environment_overrides_and_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(
            dir.path().join("config/connections.yaml"),
            "connections:\n  warehouse:\n    uri: ${DB_URL}\n  mail:\n    type: smtp\n",
        )
        .unwrap();
        let env: BTreeMap<String, String> =
            [("DB_URL".to_string(), "postgres://u@h/db".to_string()), ("SLUICE_CONN_RAW".into(), "s3://k:s@h:9000/b".into())].into();
        let (c, d) = Connections::load_with(dir.path(), true, &env);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.get("warehouse").unwrap().kind(), "postgres");
        assert_eq!(c.get("raw").unwrap().kind(), "s3");
        assert!(matches!(c.get("mail"), Err(ConnError::Unavailable { .. })));
        let e = c.get("warehose").unwrap_err().to_string();
        assert!(e.contains("did you mean `warehouse`"), "{e}");
    }
}
