//! The web UI over HTTP against the real state store: every route, every
//! action (the same state change as the CLI's), and the refusals (no
//! session, a bad CSRF token, a viewer acting, unknown ids, bad input).

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{Project, wait_until};

/// A running `sluice web`, killed when dropped.
pub struct WebServer {
    child: Child,
    pub addr: String,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sluice web` on a port it picks; returns it with its address.
pub fn start_web(p: &Project, listen: &str) -> WebServer {
    let log = std::fs::File::create(p.path().join("web.log")).unwrap();
    let child = p.command(&["web", "--addr", listen]).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let mut addr = String::new();
    wait_until("the web UI's address in its log", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(p.path().join("web.log")).unwrap_or_default();
        match log.split_once("web UI on http://") {
            Some((_, rest)) => {
                let a = rest.split('/').next().unwrap_or_default();
                // 0.0.0.0:PORT is reached on loopback.
                addr = a.replace("0.0.0.0", "127.0.0.1");
                true
            }
            None => false,
        }
    });
    WebServer { child, addr }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request; `form` is sent urlencoded.
pub fn request(addr: &str, method: &str, path: &str, cookie: Option<&str>, form: Option<&[(&str, &str)]>) -> Resp {
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body: String = form.map(|f| url::form_urlencoded::Serializer::new(String::new()).extend_pairs(f).finish()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if form.is_some() {
        req.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    sock.write_all(req.as_bytes()).unwrap();
    let (head, body) = read_response(&mut sock);
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().split_whitespace().nth(1).unwrap_or("0").parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Resp { status, headers, body }
}

/// Reads one HTTP/1.1 response: the head, and the body by its
/// Content-Length, chunks, or to the end (servers may keep the connection
/// open despite `Connection: close`).
pub fn read_response(sock: &mut std::net::TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).unwrap();
        if n == 0 {
            return (String::from_utf8_lossy(&buf).into_owned(), String::new());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end + 4..].to_vec();
    let header = |name: &str| {
        head.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = sock.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = sock.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    } else {
        sock.read_to_end(&mut body).unwrap();
    }
    (head, String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = s.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&s[..i]).trim(), 16).unwrap_or(0);
        let rest = &s[i + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

pub fn get(addr: &str, path: &str, cookie: Option<&str>) -> Resp {
    request(addr, "GET", path, cookie, None)
}

/// Posts the login form as a browser does: first GET it (its cookie and
/// CSRF token), then POST it.
pub fn login_post(addr: &str, user: &str, password: &str, next: &str) -> Resp {
    let form = get(addr, "/login", None);
    let cookie = form.header("set-cookie").expect("the login form's cookie").split(';').next().unwrap().to_string();
    let token = csrf_of(&form.body);
    request(addr, "POST", "/login", Some(&cookie), Some(&[("user", user), ("password", password), ("next", next), ("csrf", &token)]))
}

/// Logs in; returns the `Cookie` header value of the session.
pub fn login(addr: &str, user: &str, password: &str) -> String {
    let r = login_post(addr, user, password, "/");
    assert_eq!(r.status, 303, "login of {user}: {r:?}");
    let set = r.header("set-cookie").expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "cookie without {attr}: {set}");
    }
    set.split(';').next().unwrap().to_string()
}

/// The CSRF token in a page's forms.
pub fn csrf_of(body: &str) -> String {
    let at = body.find(r#"name="csrf" value=""#).expect("a form with a CSRF token");
    let rest = &body[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

pub fn add_user(p: &Project, name: &str, role: &str, password: &str) {
    let mut c = p
        .command(&["users", "add", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "users add: {}", String::from_utf8_lossy(&out.stderr));
}

const ETL: &str = r#"description: Two steps, the second needs a flag file.
tags: [shop, nightly]
schedule: '@daily'
start_date: 2024-01-01
timezone: Asia/Seoul
params: { n: 1 }
tasks:
  - { id: extract_step, type: shell, command: 'echo rows for {{ ds }} n={{ params.n }} pw={{ conn.secretdb.password }}' }
  - { id: publish, type: shell, command: 'echo publishing; test -f ok.flag', depends_on: [extract_step] }
"#;

sluice_test!(web_pages_actions_and_refusals, |p| {
    p.set_env("SLUICE_CONN_SECRETDB", "postgres://u:Sup3rS3cret@127.0.0.1/db");
    p.write("dags/etl.yaml", ETL);
    p.write("dags/broken.yaml", "tasks:\n  - { id: a, type: shel, command: 'true' }\n");
    let first = p.sluice(&["run", "etl", "--date", "2024-01-05"]);
    assert_eq!(first.code, 1, "publish fails without its flag: {}", first.all());
    p.sluice(&["dags", "pause", "etl"]).ok();
    let run = p.last_run("etl");
    add_user(&p, "ann", "admin", "ann-password-1");
    add_user(&p, "vic", "viewer", "vic-password-1");
    let web = start_web(&p, "127.0.0.1:0");
    let a = web.addr.as_str();

    // Pages (no login needed on loopback).
    let home = get(a, "/", None);
    assert_eq!(home.status, 200);
    for want in ["/dags/etl/grid", "@daily", "Asia/Seoul", "nightly", "broken.yaml:2:", "unknown task type `shel`", "data-paused=\"true\""]
    {
        assert!(home.body.contains(want), "no `{want}` on the DAGs page:\n{}", home.body);
    }
    let grid = get(a, "/dags/etl/grid", None);
    assert_eq!(grid.status, 200);
    assert!(grid.body.contains(&format!(r#"href="/runs/{run}/tasks/extract_step" data-state="success""#)), "{}", grid.body);
    assert!(grid.body.contains(&format!(r#"href="/runs/{run}/tasks/publish" data-state="failed""#)), "{}", grid.body);
    let graph = get(a, &format!("/dags/etl/graph?run={run}"), None);
    assert_eq!(graph.status, 200);
    assert!(graph.body.contains("<svg") && graph.body.matches("class=\"edge\"").count() == 1, "{}", graph.body);
    let run_page = get(a, &format!("/runs/{run}"), None);
    assert_eq!(run_page.status, 200);
    for want in ["2024-01-05 00:00:00 KST", "gbar s-failed", "gbar s-success", "&quot;n&quot;: 1"] {
        assert!(run_page.body.contains(want), "no `{want}` on the run page:\n{}", run_page.body);
    }
    assert!(!run_page.body.contains("dag-changed"), "the DAG file has not changed");
    let ti = get(a, &format!("/runs/{run}/tasks/extract_step"), None);
    assert_eq!(ti.status, 200);
    for want in ["rows for 2024-01-05 n=1", "exit 0", "Config, rendered for this run", "echo rows for 2024-01-05 n=1 pw=***"] {
        assert!(ti.body.contains(want), "no `{want}` on the task page:\n{}", ti.body);
    }
    let log = get(a, &format!("/runs/{run}/tasks/publish/log"), None);
    assert_eq!((log.status, log.header("x-sluice-running")), (200, Some("0")));
    assert!(log.body.contains("publishing"), "{}", log.body);
    for page in [
        "/",
        "/dags/etl/grid",
        &format!("/runs/{run}/tasks/extract_step"),
        &format!("/runs/{run}/tasks/extract_step/log"),
        &format!("/runs/{run}"),
    ] {
        let body = get(a, page, None).body;
        assert!(!body.contains("Sup3r") && !body.contains("S3cret"), "{page} shows the password:\n{body}");
    }

    // Unknown ids and bad input: a clear 4xx page.
    for (path, status, want) in [
        ("/dags/nope/grid", 404, "no DAG `nope`"),
        ("/runs/999999", 404, "run 999999 does not exist"),
        (&format!("/runs/{run}/tasks/nope") as &str, 404, "has no task `nope`"),
        ("/runs/abc", 400, ""),
        ("/no/such/page", 404, "no such page"),
        ("/dags/etl/graph?run=999999", 404, "is not one of"),
    ] {
        let r = get(a, path, None);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.body.contains(want), "{path}: {}", r.body);
    }

    // Actions need a session, a CSRF token and the admin role.
    let trigger = "/dags/etl/trigger";
    let r = request(a, "POST", trigger, None, Some(&[("conf.n", "5")]));
    assert_eq!(r.status, 401, "{}", r.body);
    let vic = login(a, "vic", "vic-password-1");
    let vic_csrf = csrf_of(&get(a, "/", Some(&vic)).body);
    let r = request(a, "POST", trigger, Some(&vic), Some(&[("csrf", &vic_csrf), ("conf.n", "5")]));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("vic is a viewer"), "{}", r.body);
    let ann = login(a, "ann", "ann-password-1");
    let grid = get(a, "/dags/etl/grid", Some(&ann));
    assert!(grid.body.contains("Trigger a run") && grid.body.contains(r#"name="conf.n" value="1""#), "{}", grid.body);
    let csrf = csrf_of(&grid.body);
    let r = request(a, "POST", trigger, Some(&ann), Some(&[("csrf", "forged"), ("conf.n", "5")]));
    assert_eq!(r.status, 403, "{}", r.body);
    // A conf value of the wrong type: the CLI's words.
    let r = request(a, "POST", trigger, Some(&ann), Some(&[("csrf", &csrf), ("conf.n", "five")]));
    assert_eq!(r.status, 400, "{}", r.body);
    let cli = p.sluice(&["dags", "trigger", "etl", "--conf", "n=five"]);
    let cli_msg = cli.stderr.trim().trim_start_matches("error: ").to_string();
    assert!(!cli_msg.is_empty() && r.body.contains(&cli_msg), "web: {}\ncli: {cli_msg}", r.body);
    let r = request(a, "POST", trigger, Some(&ann), Some(&[("csrf", &csrf), ("date", "2024-01-06"), ("conf.n", "5")]));
    assert_eq!((r.status, r.header("location")), (303, Some("/dags/etl/grid")), "{}", r.body);
    assert_eq!(
        p.state_sql("SELECT run_type || ' ' || state || ' ' || (conf->>'n') FROM dag_runs WHERE dag_id = 'etl' AND logical_date = '2024-01-05T15:00:00Z'"),
        vec!["manual queued 5"]
    );
    let r = request(a, "POST", trigger, Some(&ann), Some(&[("csrf", &csrf), ("date", "2024-01-06")]));
    assert_eq!(r.status, 409, "a second run for the same date: {}", r.body);

    // Mark, clear, pause: the same changes as the CLI's.
    let ti_path = format!("/runs/{run}/tasks/publish");
    let r = request(a, "POST", &format!("{ti_path}/mark"), Some(&ann), Some(&[("csrf", &csrf), ("state", "success")]));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(p.state_sql(&format!("SELECT t.state || ' ' || r.state FROM task_instances t JOIN dag_runs r USING (run_id) WHERE run_id = {run} AND task_id = 'publish'")), vec!["success queued"]);
    let r = request(a, "POST", &format!("{ti_path}/mark"), Some(&ann), Some(&[("csrf", &csrf), ("state", "running")]));
    assert_eq!(r.status, 400, "{}", r.body);
    let cli = p.sluice(&["tasks", "mark", "etl", "publish", "--run", &run.to_string(), "--state", "failed"]).ok();
    assert!(cli.stdout.contains(&format!("publish of run {run} marked failed (was success)")), "{}", cli.stdout);
    // With --downstream: the task and everything after it.
    let cli = p.sluice(&["tasks", "mark", "etl", "extract_step", "--run", &run.to_string(), "--state", "success", "--downstream"]).ok();
    assert!(
        cli.stdout.contains(&format!("extract_step of run {run} marked success"))
            && cli.stdout.contains(&format!("publish of run {run} marked success (was failed)")),
        "{}",
        cli.stdout
    );
    let bad = p.sluice(&["tasks", "mark", "etl", "nope", "--run", &run.to_string(), "--state", "success"]);
    assert_eq!(bad.code, 78, "{}", bad.all());
    assert!(bad.stderr.contains("has no task `nope`"), "{}", bad.stderr);
    let r =
        request(a, "POST", &format!("/runs/{run}/tasks/extract_step/clear"), Some(&ann), Some(&[("csrf", &csrf), ("downstream", "true")]));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        p.state_sql(&format!("SELECT task_id || ' ' || state FROM task_instances WHERE run_id = {run} ORDER BY task_id")),
        vec!["extract_step pending", "publish pending"]
    );
    let r = request(a, "POST", "/dags/etl/pause", Some(&ann), Some(&[("csrf", &csrf), ("paused", "false")]));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(p.state_sql("SELECT is_paused FROM dags WHERE dag_id = 'etl'"), vec!["f"]);
    let r = request(a, "POST", "/dags/etl/pause", Some(&ann), Some(&[("csrf", &csrf), ("paused", "maybe")]));
    assert_eq!(r.status, 400, "{}", r.body);

    // Logins are rate-limited; a logout ends the session's use.
    for _ in 0..5 {
        let r = login_post(a, "ann", "wrong", "/");
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = login_post(a, "ann", "ann-password-1", "/");
    assert_eq!(r.status, 429, "{}", r.body);
    let r = request(a, "POST", "/logout", Some(&ann), Some(&[("csrf", &csrf)]));
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")), "{r:?}");
});

sluice_test!(web_beyond_loopback_needs_a_login_for_every_page, |p| {
    p.write("dags/etl.yaml", ETL);
    p.set_env("SLUICE_CONN_SECRETDB", "postgres://u:pw@127.0.0.1/db");
    add_user(&p, "vic", "viewer", "vic-password-1");
    let web = start_web(&p, "0.0.0.0:0");
    let a = web.addr.as_str();
    let r = get(a, "/dags/etl/grid", None);
    assert_eq!((r.status, r.header("location")), (303, Some("/login?next=%2Fdags%2Fetl%2Fgrid")), "{r:?}");
    // The login form's POST needs the form's own token and cookie.
    let r = request(a, "POST", "/login", None, Some(&[("user", "vic"), ("password", "vic-password-1"), ("next", "/")]));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("set-cookie").is_none_or(|c| !c.starts_with("sluice_session=")), "no session without the form's token");
    let r = login_post(a, "vic", "nope", "/");
    assert_eq!(r.status, 401);
    assert!(r.body.contains("wrong user name or password"), "{}", r.body);
    let vic = login(a, "vic", "vic-password-1");
    let r = get(a, "/dags/etl/grid", Some(&vic));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("Trigger a run"), "a viewer sees no actions");
    // A tampered cookie is no session.
    let forged = vic.replace(&hex_of("vic"), &hex_of("ann"));
    assert_ne!(forged, vic);
    assert_eq!(get(a, "/", Some(&forged)).status, 303);
    // The login page never sends anyone to another site.
    let r = login_post(a, "vic", "vic-password-1", "//evil.example/");
    assert_eq!(r.header("location"), Some("/"));
});

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

sluice_test!(the_report_dashboard_draws_what_the_pdf_draws, |p| {
    crate::report::shop_with_two_weeks(&mut p);
    let out = p.sluice(&["run", "weekly_report", "--date", "2024-11-18"]).ok();
    assert!(out.stderr.contains("of weekly_report succeeded"), "{}", out.all());
    let run = p.last_run("weekly_report");
    let metrics = p.task_json(run, "weekly_report")["output"]["metrics"].clone();
    let pdf_pages = metrics["pages"].as_u64().unwrap();
    let kpis: Vec<String> = metrics["kpis"].as_array().unwrap().iter().map(|k| k["display"].as_str().unwrap().to_string()).collect();
    assert!(kpis.len() >= 5, "{metrics}");
    let web = start_web(&p, "127.0.0.1:0");
    let a = web.addr.as_str();

    let list = get(a, "/reports", None);
    assert!(list.body.contains(r#"href="/reports/weekly_report/weekly_report""#), "{}", list.body);
    // The week's pages: as many as the PDF's, with the PDF's KPI figures.
    let page = get(a, "/reports/weekly_report/weekly_report?week=2024-11-18", None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body.matches(r#"class="page""#).count() as u64, pdf_pages, "one SVG page per PDF page");
    for k in &kpis {
        assert!(page.body.contains(&format!(">{k}</text>")), "the dashboard lacks the PDF's KPI `{k}`");
    }
    // By default: the last reported week. A day inside a week shows that week.
    let default = get(a, "/reports/weekly_report/weekly_report", None);
    assert!(default.body.contains(r#"name="week" value="2024-11-18""#), "the default week");
    let wednesday = get(a, "/reports/weekly_report/weekly_report?week=2024-11-20", None);
    assert!(
        wednesday.body.contains(r#"name="week" value="2024-11-18""#) && wednesday.body.contains("?week=2024-11-11"),
        "snapped to its week"
    );
    // The week before: other numbers, and the previous link goes on back.
    let before = get(a, "/reports/weekly_report/weekly_report?week=2024-11-11", None);
    assert_eq!(before.status, 200);
    assert!(before.body.contains("2024-11-11") && before.body.contains("?week=2024-11-04"), "{}", before.status);
    for (path, status) in [
        ("/reports/weekly_report/weekly_report?week=18-11-2024", 400),
        ("/reports/weekly_report/email_report", 404),
        ("/reports/nope/weekly_report", 404),
    ] {
        assert_eq!(get(a, path, None).status, status, "{path}");
    }

    // In a real browser: the pages draw, without a script error or a failed request.
    let b = crate::browser::Browser::start();
    b.go(&format!("http://{a}/reports/weekly_report/weekly_report?week=2024-11-18"));
    wait_until("the report's pages", Duration::from_secs(60), || b.count("svg.page") as u64 == pdf_pages);
    b.screenshot(p.path(), "dashboard");
    let errors = b.errors();
    assert!(errors.is_empty(), "the browser logged errors:\n{}", errors.join("\n"));
});
