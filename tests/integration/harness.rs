//! Test harness: a throwaway project folder and state schema per test, and
//! helpers to run the real `sluice` binary and query the real database.
//!
//! Tests that need services read their addresses from the environment that
//! `scripts/test.sh` sets (`SLUICE_TEST_DATABASE_URL`, ...). Without it they
//! fail and say so: a skipped test would pass without testing anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Defines a test that gets a fresh [`Project`] named after the test.
#[macro_export]
macro_rules! sluice_test {
    ($name:ident, |$p:ident| $body:block) => {
        #[test]
        fn $name() {
            #[allow(unused_mut)]
            let mut $p = $crate::harness::Project::new(stringify!($name));
            $body
        }
    };
}

/// The checkout under test. Cargo sets `CARGO_MANIFEST_DIR` when it runs the
/// tests; the value compiled in is only a fallback, because a test binary
/// reused from a shared target directory may have been built in another
/// checkout (cargo does not rebuild when only the checkout's path changed).
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

pub fn service(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run the tests with scripts/test.sh, which starts PostgreSQL, S3 and SMTP servers"))
}

pub fn db_url() -> String {
    service("SLUICE_TEST_DATABASE_URL")
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success and returns self, printing everything otherwise.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }
    #[track_caller]
    pub fn code(self, code: i32) -> Out {
        assert_eq!(self.code, code, "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A project folder (dags/, sql/, config/) and a private state schema. The
/// `warehouse` connection points at the test database with its search_path
/// set to the test's own warehouse schema.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub schema: String,
    pub wh_schema: String,
    pub env: Vec<(String, String)>,
    url: Option<String>,
    /// A database of this test's own (see [`Project::own_database`]).
    own_db: Option<(String, String)>,
    /// The state store and warehouse are a database of the test's own,
    /// dropped with it (see [`Project::use_database`]).
    plain_db: bool,
}

impl Project {
    pub fn new(name: &str) -> Project {
        let dir = tempfile::Builder::new().prefix(&format!("sluice-{name}-")).tempdir().expect("temp dir");
        for d in ["dags", "sql", "config"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let short: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(30).collect();
        let schema = format!("t_{short}_{}_{n}", std::process::id());
        let wh_schema = format!("w_{short}_{}_{n}", std::process::id());
        let url = std::env::var("SLUICE_TEST_DATABASE_URL").ok();
        if let Some(u) = &url {
            psql(u, &format!("CREATE SCHEMA IF NOT EXISTS {wh_schema}"));
        }
        Project { dir, schema, wh_schema, env: Vec::new(), url, own_db: None, plain_db: false }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    /// Gives the test a database of its own, for the state store and the
    /// warehouse, for SQL that names schemas (`shop.orders`).
    pub fn own_database(&mut self) -> String {
        let base = self.db();
        let name = format!("d_{}", self.schema);
        psql(&base, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&base, &format!("CREATE DATABASE {name}"));
        let url = match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => unreachable!("a database URL has a path"),
        };
        self.own_db = Some((base, name));
        self.url = Some(url.clone());
        url
    }

    /// Uses another server (a [`PrivatePg`]) for the state store and the
    /// warehouse.
    pub fn use_database(&mut self, url: &str) {
        self.url = Some(url.to_string());
        self.plain_db = true;
    }

    /// Copies the shipped project (dags/, sql/, config/, reports/) into this one.
    pub fn copy_shipped(&self) -> &Self {
        for d in ["dags", "sql", "config"] {
            copy_dir(&repo().join(d), &self.path().join(d));
        }
        std::fs::create_dir_all(self.path().join("reports")).unwrap();
        for e in std::fs::read_dir(repo().join("reports")).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), self.path().join("reports").join(e.file_name())).unwrap();
            }
        }
        self
    }

    /// Copies a folder of test data (e.g. `tests/dags/run/retry`) into the project.
    pub fn copy_from(&self, rel: &str) -> &Self {
        copy_dir(&repo().join(rel), self.path());
        self
    }

    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.push((k.into(), v.into()));
    }

    fn db(&self) -> String {
        self.url.clone().unwrap_or_else(db_url)
    }

    /// The test database URL with the warehouse schema on the search path.
    pub fn warehouse_url(&self) -> String {
        let sep = if self.db().contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.db(), self.wh_schema)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.path()).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") && !k.starts_with("SLUICE_TEST_") {
                c.env_remove(k);
            }
        }
        if self.url.is_some() {
            c.env("SLUICE_DATABASE_URL", self.db());
            let wh = if self.own_db.is_some() || self.plain_db { self.db() } else { self.warehouse_url() };
            c.env("SLUICE_CONN_WAREHOUSE", wh);
        }
        c.env("SLUICE_SCHEMA", &self.schema);
        c.env("NO_COLOR", "1");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn sluice(&self, args: &[&str]) -> Out {
        let out = self.command(args).output().expect("run sluice");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs SQL with psql in the warehouse schema (or the test's own
    /// database); returns rows of `|`-joined fields.
    pub fn sql(&self, sql: &str) -> Vec<String> {
        if self.own_db.is_some() || self.plain_db {
            return psql(&self.db(), sql);
        }
        psql(&self.db(), &format!("CREATE SCHEMA IF NOT EXISTS {0}; SET search_path TO {0}; {sql}", self.wh_schema))
    }

    /// Runs SQL in the state schema.
    pub fn state_sql(&self, sql: &str) -> Vec<String> {
        psql(&self.db(), &format!("SET search_path TO {}; {sql}", self.schema))
    }

    pub fn scalar(&self, sql: &str) -> String {
        self.sql(sql).into_iter().next().unwrap_or_default()
    }

    /// The JSON of `sluice runs show RUN --json`.
    pub fn run_json(&self, run_id: i64) -> serde_json::Value {
        let out = self.sluice(&["runs", "show", &run_id.to_string(), "--json"]).ok();
        serde_json::from_str(&out.stdout).expect("runs show --json prints JSON")
    }

    /// Task states of a run, by task id.
    pub fn states(&self, run_id: i64) -> std::collections::BTreeMap<String, (String, i64)> {
        let v = self.run_json(run_id);
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (t["task_id"].as_str().unwrap().to_string(), (t["state"].as_str().unwrap().to_string(), t["try_number"].as_i64().unwrap()))
            })
            .collect()
    }

    /// The id of the latest run of a DAG.
    pub fn last_run(&self, dag: &str) -> i64 {
        let out = self.sluice(&["runs", "list", dag, "--json", "--limit", "1"]).ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v[0]["run_id"].as_i64().expect("a run exists")
    }
}

impl Project {
    /// Runs sluice and waits at most `deadline` for it to exit; a run that
    /// hangs is killed and the test fails, saying so.
    #[track_caller]
    pub fn sluice_within(&self, args: &[&str], deadline: Duration) -> Out {
        let mut child = self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run sluice");
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "`sluice {}` did not finish within {deadline:?}\n--- stdout\n{}\n--- stderr\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `sluice daemon` in the project, logging to `daemon-<name>.log`.
    pub fn daemon(&self, name: &str, extra: &[&str]) -> Child {
        // The daemon migrates too, but the test's own queries may come first.
        self.sluice(&["db", "migrate"]).ok();
        let log = std::fs::File::create(self.path().join(format!("daemon-{name}.log"))).unwrap();
        let mut args = vec!["daemon", "-v"];
        if !extra.contains(&"--poll") {
            args.extend_from_slice(&["--poll", "200ms"]);
        }
        if !extra.contains(&"--health-addr") {
            args.extend_from_slice(&["--health-addr", "off"]);
        }
        args.extend_from_slice(extra);
        self.command(&args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    /// A number from the state schema.
    pub fn count(&self, sql: &str) -> i64 {
        self.state_sql(sql).first().map(|s| s.parse().unwrap()).unwrap_or(0)
    }

    /// A task instance of a run, from `sluice runs show --json`.
    pub fn task_json(&self, run_id: i64, task: &str) -> serde_json::Value {
        let v = self.run_json(run_id);
        v["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == task).cloned().unwrap_or_else(|| panic!("no task {task} in {v}"))
    }
}

/// Waits for a condition, polling; fails the test after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Sends SIGTERM and waits for the process to exit.
pub fn term(child: &mut Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}

/// Whether a process exists and is not a zombie (a dead process that its
/// parent, here maybe a container's init, has not reaped yet).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids of a process's children whose command line contains `needle`.
pub fn children_named(parent: u32, needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)).and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

impl Drop for Project {
    fn drop(&mut self) {
        if let Some((base, name)) = &self.own_db {
            let _ = std::process::Command::new("psql")
                .args([base.as_str(), "-q", "-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .output();
            return;
        }
        if let Some(url) = self.url.as_ref().filter(|_| !self.plain_db) {
            let _ = std::process::Command::new("psql")
                .args([
                    url.as_str(),
                    "-q",
                    "-c",
                    &format!("DROP SCHEMA IF EXISTS {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE", self.schema, self.wh_schema),
                ])
                .env("PGOPTIONS", "-c client_min_messages=warning")
                .output();
        }
    }
}

pub fn psql(url: &str, sql: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args([url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .output()
        .expect("psql is installed (scripts/test.sh installs it)");
    assert!(out.status.success(), "psql failed: {}\n{sql}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A PostgreSQL cluster of a test's own, for faults that would disturb
/// the shared server: restarts and outages. Runs as the `postgres` user
/// when the tests run as root (initdb refuses root).
pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl PrivatePg {
    pub fn start(name: &str) -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/test.sh installs it)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("a PostgreSQL bin folder");
        let dir = PathBuf::from(format!("/var/tmp/sluice-test-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pg = PrivatePg { dir, port, bin };
        if unsafe { libc::geteuid() } == 0 {
            assert!(Command::new("chown").args(["postgres:postgres", pg.dir.to_str().unwrap()]).status().unwrap().success());
        }
        let data = pg.dir.join("data");
        pg.pg(&["initdb", "-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]);
        pg.start_again();
        pg
    }

    fn pg(&self, args: &[&str]) {
        let tool = self.bin.join(args[0]);
        let mut c = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        let out = c.args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_again(&self) {
        let data = self.dir.join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off", self.port, self.dir.display());
        self.pg(&[
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-l",
            self.dir.join("log").to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "-o",
            &opts,
            "start",
        ]);
    }

    pub fn stop(&self) {
        self.pg(&["pg_ctl", "-D", self.dir.join("data").to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    }

    /// `pg_ctl restart -m fast`: every connection is cut.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let tool = self.bin.join("pg_ctl");
        let mut c = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        let _ = c.args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates a bucket on the test S3 server (moto accepts unsigned requests).
pub fn create_bucket(name: &str) {
    use std::io::{Read, Write};
    let endpoint = service("SLUICE_TEST_S3_ENDPOINT");
    let host = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
}

/// The test S3 server as a connection URI.
pub fn s3_uri() -> String {
    let endpoint = service("SLUICE_TEST_S3_ENDPOINT");
    let hostport = endpoint.trim_start_matches("http://");
    format!("s3://testkey:testsecret@{hostport}?region=us-east-1&tls=false")
}

/// Points the `lake` connection at the test S3 server and makes a bucket.
pub fn with_s3(p: &mut Project, bucket: &str) {
    p.set_env("SLUICE_CONN_LAKE", &s3_uri());
    p.set_env("SLUICE_VAR_BUCKET", bucket);
    create_bucket(bucket);
}

/// Messages in the test SMTP server's Maildir whose recipients include
/// `rcpt`, parsed by Python's email module.
pub fn messages_to(rcpt: &str) -> Vec<serde_json::Value> {
    let maildir = service("SLUICE_TEST_MAILDIR");
    let script = r#"
import email, email.policy, hashlib, json, os, sys
out = []
new = os.path.join(sys.argv[1], "new")
for name in sorted(os.listdir(new) if os.path.isdir(new) else []):
    with open(os.path.join(new, name), "rb") as f:
        m = email.message_from_binary_file(f, policy=email.policy.default)
    rcpts = m.get_all("X-RcptTo") or []
    if not any(sys.argv[2] in r for r in rcpts):
        continue
    text = m.get_body(preferencelist=("plain",))
    html = m.get_body(preferencelist=("html",))
    atts = []
    for part in m.iter_attachments():
        data = part.get_payload(decode=True)
        atts.append({"filename": part.get_filename(), "type": part.get_content_type(),
                     "sha256": hashlib.sha256(data).hexdigest(), "head": data[:5].decode("latin-1")})
    out.append({"to": str(m["To"]), "cc": str(m["Cc"] or ""), "rcpt": rcpts, "from": str(m["From"]),
                "subject": str(m["Subject"]), "message_id": str(m["Message-ID"] or ""), "text": text.get_content() if text else None,
                "html": html.get_content() if html else None, "attachments": atts})
print(json.dumps(out))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&maildir).arg(rcpt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A loopback HTTP server for the tests (an endpoint a sensor waits for, a
/// webhook receiver): it answers each request with `respond(n, head,
/// body)` (n counts from 0) and keeps every request's head and body.
pub struct HttpStub {
    pub url: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl HttpStub {
    pub fn start(respond: impl Fn(usize, &str, &str) -> (u16, String) + Send + 'static) -> HttpStub {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let seen = requests.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body).into_owned();
                let (status, answer) = respond(n, &head, &body);
                seen.lock().unwrap().push((head, body));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        HttpStub { url, requests }
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}
