//! Callbacks: `on_failure`, `on_retry`, `on_success` (task and run) to a
//! webhook receiver on loopback and the real SMTP server; a notifier that
//! fails never fails the task; `dagrun_timeout`.

use std::time::{Duration, Instant};

use crate::harness::{HttpStub, messages_to, process_alive, service};

fn bodies(stub: &HttpStub, path: &str) -> Vec<serde_json::Value> {
    stub.requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(head, _)| head.starts_with(&format!("POST {path} ")))
        .map(|(_, body)| serde_json::from_str(body).unwrap())
        .collect()
}

sluice_test!(notifiers_post_and_mail_on_retry_failure_success_and_run_end, |p| {
    let stub = HttpStub::start(|_, _, _| (200, "{}".into()));
    let smtp = service("SLUICE_TEST_SMTP_PORT");
    let to = format!("ops-{}@shop.test", p.schema.replace('_', "-"));
    p.set_env("SLUICE_CONN_SMTP_DEFAULT", &format!("smtp://127.0.0.1:{smtp}?tls=none&from=sluice@shop.test"));
    p.set_env("SLUICE_VAR_HOOK", &stub.url);
    p.set_env("SLUICE_VAR_OPS", &to);
    p.write(
        "dags/noisy.yaml",
        r#"
on_failure:
  - webhook: "{{ var.hook }}/run"
tasks:
  - id: fine
    type: shell
    command: echo fine
    on_success:
      - { webhook: "{{ var.hook }}/fine", format: slack }
  - id: flaky
    type: shell
    command: "echo try {{ ti.try_number }}; exit 3"
    retries: 1
    retry_delay: 1s
    on_retry:
      - webhook: "{{ var.hook }}/retry"
    on_failure:
      - webhook: "{{ var.hook }}/failed"
      - email: ["{{ var.ops }}"]
"#,
    );
    let out = p.sluice(&["run", "noisy"]).code(1);
    let run = p.last_run("noisy");
    let fine = bodies(&stub, "/fine");
    assert_eq!(fine.len(), 1, "{}", out.all());
    assert!(fine[0]["text"].as_str().unwrap().contains("noisy.fine succeeded"), "{}", fine[0]);
    let retry = bodies(&stub, "/retry");
    assert_eq!(retry.len(), 1);
    assert_eq!((retry[0]["event"].as_str(), retry[0]["try_number"].as_i64()), (Some("task_retry"), Some(1)));
    let failed = bodies(&stub, "/failed");
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0]["event"].as_str(), failed[0]["try_number"].as_i64()), (Some("task_failed"), Some(2)));
    assert_eq!(failed[0]["run_id"].as_i64(), Some(run));
    assert!(failed[0]["error"].as_str().unwrap().contains("exit"), "{}", failed[0]);
    assert!(failed[0]["text"].as_str().unwrap().contains("out | try 2"), "the log's last lines: {}", failed[0]);
    let ran = bodies(&stub, "/run");
    assert_eq!(ran.len(), 1);
    assert_eq!((ran[0]["event"].as_str(), ran[0]["state"].as_str()), (Some("run_failed"), Some("failed")));
    let mails = messages_to(&to);
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0]["subject"].as_str().unwrap().contains("noisy.flaky failed (run"), "{}", mails[0]);
    // Where each went, in the output and in `runs show`; URLs only by host.
    let host = stub.url.trim_start_matches("http://");
    assert!(out.stdout.contains(&format!("failure notice posted to webhook http://{host}/… (HTTP 200)")), "{}", out.all());
    assert!(out.stdout.contains(&format!("failure notice sent to {to}")), "{}", out.all());
    let show = p.sluice(&["runs", "show", &run.to_string()]).ok().stdout;
    assert!(show.contains("run: run failure notice posted to webhook"), "{show}");
});

sluice_test!(a_failing_notifier_is_retried_said_and_never_fails_the_task, |p| {
    let failing = HttpStub::start(|_, _, _| (503, r#"{"error": "busy"}"#.into()));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    p.write(
        "dags/quiet.yaml",
        &format!(
            r#"
tasks:
  - id: works
    type: shell
    command: "true"
    on_success:
      - webhook: "{url}/hook"
      - webhook: "http://127.0.0.1:{closed}/token-in-path-XYZ"
"#,
            url = failing.url
        ),
    );
    let out = p.sluice(&["run", "quiet"]).ok();
    let run = p.last_run("quiet");
    assert_eq!(p.states(run)["works"], ("success".to_string(), 1));
    assert_eq!(failing.count(), 3, "tried three times");
    let show = p.sluice(&["runs", "show", &run.to_string()]).ok().stdout;
    assert!(show.contains("success notice to webhook http://127.0.0.1") && show.contains("NOT sent: HTTP 503"), "{show}");
    assert!(show.contains(&format!("127.0.0.1:{closed}/… NOT sent")) && show.contains("check the URL"), "{show}");
    // The URL's path (a Slack webhook's token) is never shown.
    assert!(!out.all().contains("token-in-path-XYZ") && !show.contains("token-in-path-XYZ"), "{}", out.all());
});

sluice_test!(a_run_past_its_dagrun_timeout_fails_and_notifies, |p| {
    let stub = HttpStub::start(|_, _, _| (200, "{}".into()));
    p.write(
        "dags/slow.yaml",
        &format!(
            r#"
dagrun_timeout: 2s
on_failure:
  - webhook: "{url}/run"
tasks:
  - {{ id: long, type: shell, command: "echo $$ > long.pid; exec sleep 60" }}
  - {{ id: after, type: shell, command: "true", depends_on: [long] }}
"#,
            url = stub.url
        ),
    );
    let started = Instant::now();
    let out = p.sluice(&["run", "slow"]).code(1);
    assert!(started.elapsed() < Duration::from_secs(40), "{:?}\n{}", started.elapsed(), out.all());
    let run = p.last_run("slow");
    let json = p.run_json(run);
    assert_eq!(json["run"]["state"], "failed");
    let s = p.states(run);
    assert_eq!((s["long"].0.as_str(), s["after"].0.as_str()), ("skipped", "skipped"), "{s:?}");
    let ran = bodies(&stub, "/run");
    assert_eq!(ran.len(), 1);
    assert!(ran[0]["error"].as_str().unwrap().contains("dagrun_timeout (2s)"), "{}", ran[0]);
    let pid: i32 = std::fs::read_to_string(p.path().join("long.pid")).unwrap().trim().parse().unwrap();
    crate::harness::wait_until("the timed-out task's process to end", Duration::from_secs(20), || !process_alive(pid));
});

// A run finished by its last try's end (in the statement that records the
// end) still sends its run-level notice, once.
sluice_test!(a_run_finished_with_its_last_end_still_notifies, |p| {
    let stub = HttpStub::start(|_, _, _| (200, "{}".into()));
    p.set_env("SLUICE_VAR_HOOK", &stub.url);
    p.write(
        "dags/quiet.yaml",
        r#"
on_success:
  - webhook: "{{ var.hook }}/run"
tasks:
  - { id: a, type: shell, command: "true" }
  - { id: b, type: shell, command: "true", depends_on: [a] }
"#,
    );
    p.sluice(&["run", "quiet"]).ok();
    let ran = bodies(&stub, "/run");
    assert_eq!(ran.len(), 1);
    assert_eq!((ran[0]["event"].as_str(), ran[0]["state"].as_str()), (Some("run_success"), Some("success")));
});
