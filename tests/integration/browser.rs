//! The web UI in a real browser: headless Chromium driven through
//! ChromeDriver (W3C WebDriver over plain HTTP), against a daemon serving
//! the pages (`sluice daemon --web`). Screenshots go to the test's folder
//! (and to `SLUICE_SCREENSHOTS` when set, for the README). The test fails
//! on any JavaScript error or failed request the browser logs.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{term, wait_until};
use crate::web::add_user;

/// A WebDriver session, deleted (browser closed) when dropped.
pub struct Browser {
    driver: String,
    session: String,
}

fn wd(driver: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let hostport = driver.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(hostport).expect("ChromeDriver (SLUICE_TEST_WEBDRIVER) is reachable");
    sock.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).unwrap();
    let (_, body) = crate::web::read_response(&mut sock);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {body}"))
}

impl Browser {
    pub fn start() -> Browser {
        let driver = std::env::var("SLUICE_TEST_WEBDRIVER").expect("SLUICE_TEST_WEBDRIVER: run the tests with scripts/test.sh");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000", "--lang=en-US"]
            },
            "goog:loggingPrefs": { "browser": "ALL" }
        }}});
        let v = wd(&driver, "POST", "/session", Some(caps));
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        Browser { driver, session }
    }

    fn call(&self, method: &str, rest: &str, body: Option<Value>) -> Value {
        let v = wd(&self.driver, method, &format!("/session/{}{rest}", self.session), body);
        if let Some(err) = v["value"]["error"].as_str() {
            panic!("WebDriver {method} {rest}: {err}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|e| e.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    pub fn count(&self, css: &str) -> usize {
        self.call("POST", "/elements", Some(json!({ "using": "css selector", "value": css }))).as_array().map_or(0, |a| a.len())
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None).as_str().unwrap_or_default().to_string()
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": js, "args": [] })))
    }

    pub fn screenshot(&self, dir: &std::path::Path, name: &str) {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        if let Ok(out) = std::env::var("SLUICE_SCREENSHOTS") {
            std::fs::write(std::path::Path::new(&out).join(format!("{name}.png")), &png).unwrap();
        }
    }

    /// What the browser logged as errors (JavaScript errors, failed
    /// requests), since the last call.
    pub fn errors(&self) -> Vec<String> {
        let v = wd(&self.driver, "POST", &format!("/session/{}/se/log", self.session), Some(json!({ "type": "browser" })));
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == "SEVERE" || e["level"] == "ERROR")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_else(|| vec![format!("cannot read the browser log: {v}")])
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| wd(&self.driver, "DELETE", &format!("/session/{}", self.session), None));
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

sluice_test!(browser_grid_log_graph_and_a_triggered_run, |p| {
    p.write(
        "dags/nightly.yaml",
        "description: A nightly chain.\ntags: [shop]\nparams: { n: 2 }\ntasks:\n  - { id: fetch, type: shell, command: 'echo fetching {{ params.n }}; sleep 1' }\n  - { id: tidy, type: shell, command: 'echo tidy', depends_on: [fetch] }\n  - { id: publish, type: shell, command: 'echo published', depends_on: [tidy] }\n",
    );
    p.sluice(&["run", "nightly"]).ok();
    add_user(&p, "ann", "admin", "ann-password-1");
    let mut d = p.daemon("w", &["--web", "127.0.0.1:0"]);
    let mut base = String::new();
    wait_until("the daemon's web address", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(p.path().join("daemon-w.log")).unwrap_or_default();
        match log.split_once("web UI on http://") {
            Some((_, rest)) => {
                base = format!("http://{}", rest.split('/').next().unwrap_or_default());
                true
            }
            None => false,
        }
    });
    let shots = p.path();
    let b = Browser::start();

    b.go(&format!("{base}/"));
    assert!(b.text("#dags").contains("nightly"), "the DAGs page lists the DAG");
    b.screenshot(shots, "dags");

    // Log in through the form, then trigger a run by clicking.
    b.go(&format!("{base}/login?next=/dags/nightly/grid"));
    b.type_into("input[name=user]", "ann");
    b.type_into("input[name=password]", "ann-password-1");
    b.click("form.login button");
    wait_until("the grid after login", Duration::from_secs(30), || b.count("#grid") == 1);
    let runs_before = b.count("th.runhead");
    assert_eq!(runs_before, 1);
    b.click("#trigger button");
    // The grid refreshes by itself until the new run is done.
    wait_until("the triggered run's column, all green", Duration::from_secs(90), || {
        b.count("th.runhead") == 2 && b.count("a.cell[data-state=success]") == 6
    });
    b.screenshot(shots, "grid");

    // A task instance: tries, log, rendered config.
    b.click("a.cell[data-state=success][href$='/tasks/fetch']");
    wait_until("the task instance page", Duration::from_secs(30), || b.count("#log") == 1);
    assert!(b.text("#log").contains("fetching 2"), "the try's log");
    assert!(b.text("#config").contains("echo fetching 2"), "the rendered config");
    b.screenshot(shots, "task-instance");

    b.go(&format!("{base}/dags/nightly/graph"));
    assert_eq!(b.count("svg.graph g.node"), 3);
    assert_eq!(b.count("svg.graph path.edge"), 2);
    b.screenshot(shots, "graph");

    let run = p.last_run("nightly");
    b.go(&format!("{base}/runs/{run}"));
    assert_eq!(b.count("#gantt .gbar"), 3);
    b.screenshot(shots, "run");

    let errors = b.errors();
    assert!(errors.is_empty(), "the browser logged errors:\n{}", errors.join("\n"));
    let js = b.script("return typeof window.fetch");
    assert_eq!(js, "function");
    assert!(term(&mut d).success());
});
