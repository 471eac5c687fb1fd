//! A try always ends in a recorded state, and leaves no process behind:
//! panics, configuration errors, error kinds and retries, timeouts,
//! Ctrl-C, a killed worker and a closed stdout, each against the real
//! binary and database.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Project, children_named, process_alive, wait_until};

/// A generous bound for runs that must end: a hang fails the test.
const DEADLINE: Duration = Duration::from_secs(60);

fn two_task_dag(p: &Project) {
    p.write(
        "dags/p.yaml",
        r#"
default_args: { retries: 2, retry_delay: 1s }
tasks:
  - { id: boom, type: shell, command: 'true' }
  - { id: after, type: shell, command: 'true', depends_on: [boom] }
  - { id: aside, type: shell, command: 'echo aside' }
"#,
    );
}

sluice_test!(a_panic_in_a_try_is_recorded_as_a_failure_and_the_run_ends, |p| {
    two_task_dag(&p);
    for (n, spec) in ["boom", "blocking:boom"].iter().enumerate() {
        p.set_env("SLUICE_DEBUG_PANIC", spec);
        let date = format!("2024-01-0{}", n + 1);
        let out = p.sluice_within(&["run", "p", "--date", &date], DEADLINE).code(1);
        let run = p.last_run("p");
        let boom = p.task_json(run, "boom");
        assert_eq!(boom["state"], "failed", "{spec}: {}", out.all());
        // A bug is not retried: one try, and its error says what happened.
        assert_eq!(boom["try_number"], 1, "{spec}");
        assert_eq!(boom["error_kind"], "internal", "{spec}");
        assert!(boom["error"].as_str().unwrap().contains("SLUICE_DEBUG_PANIC"), "{spec}: {}", boom["error"]);
        assert_eq!(p.task_json(run, "after")["state"], "upstream_failed");
        assert_eq!(p.task_json(run, "aside")["state"], "success");
        assert_eq!(p.count(&format!("SELECT count(*) FROM task_instances WHERE run_id = {run} AND state = 'running'")), 0);
        assert_eq!(p.count(&format!("SELECT count(*) FROM dag_runs WHERE run_id = {run} AND state = 'failed'")), 1);
    }
});

// The shipped shop DAG with an S3 root and a forgotten connection used to
// panic on an `expect` and leave the try running forever.
sluice_test!(an_s3_source_with_an_empty_connection_is_a_config_error_not_a_hang, |p| {
    p.write("config/variables.yaml", "variables:\n  raw_root: s3://bucket/raw\n  raw_conn: \"\"\n");
    p.write(
        "dags/shop.yaml",
        r#"
default_args: { retries: 2, retry_delay: 1s }
tasks:
  - id: extract_orders
    type: extract
    source: "{{ var.raw_root }}/orders.csv"
    conn: "{{ var.raw_conn }}"
"#,
    );
    // Valid as a template: the problem only shows once rendered.
    p.sluice(&["dags", "validate"]).ok();
    p.sluice_within(&["run", "shop", "--date", "2024-01-05"], DEADLINE).code(1);
    let t = p.task_json(p.last_run("shop"), "extract_orders");
    assert_eq!(t["state"], "failed");
    assert_eq!(t["try_number"], 1, "a config error is not retried");
    assert_eq!(t["error_kind"], "config");
    let e = t["error"].as_str().unwrap();
    assert!(e.contains("dags/shop.yaml:7:11") && e.contains("tasks[0].conn") && e.contains("S3 connection"), "{e}");
});

sluice_test!(error_kinds_decide_whether_a_try_is_retried, |p| {
    p.set_env("SLUICE_CONN_NOWHERE", "postgres://nobody@127.0.0.1:1/none");
    p.write(
        "dags/k.yaml",
        r#"
default_args: { retries: 2, retry_delay: 0s }
tasks:
  - { id: syntax, type: sql, conn: warehouse, sql: "SELEC 1" }
  - { id: refused, type: sql, conn: nowhere, sql: "SELECT 1" }
  - { id: exits, type: shell, command: "exit 3" }
  - { id: missing_file, type: sql, conn: warehouse, file: "sql/{{ ds }}.sql" }
"#,
    );
    p.sluice_within(&["run", "k", "--date", "2024-01-05"], DEADLINE).code(1);
    let run = p.last_run("k");
    let t = |id: &str| p.task_json(run, id);
    // A SQL syntax error and a templated file path that renders to a file
    // that does not exist (a configuration error) fail at once.
    assert_eq!((t("syntax")["try_number"].as_i64(), t("syntax")["error_kind"].as_str()), (Some(1), Some("permanent")));
    assert_eq!((t("missing_file")["try_number"].as_i64(), t("missing_file")["error_kind"].as_str()), (Some(1), Some("config")));
    assert!(t("missing_file")["error"].as_str().unwrap().contains("sql/2024-01-05.sql"), "{}", t("missing_file")["error"]);
    // A refused connection is retried, fails fast and says why.
    assert_eq!((t("refused")["try_number"].as_i64(), t("refused")["error_kind"].as_str()), (Some(3), Some("transient")));
    assert!(t("refused")["error"].as_str().unwrap().to_lowercase().contains("connection refused"), "{}", t("refused")["error"]);
    // Anything else uses the task's retries, as in Airflow.
    assert_eq!((t("exits")["try_number"].as_i64(), t("exits")["error_kind"].as_str()), (Some(3), Some("failed")));
    let log = p.sluice(&["logs", &run.to_string(), "syntax"]).ok().stdout;
    assert!(log.contains("not retried: a permanent error would happen again"), "{log}");
});

/// A command that ignores SIGTERM and writes its pid.
const STUBBORN: &str = "trap '' TERM; echo $$ > pid.txt; while true; do sleep 0.2; done";

fn stubborn_dag(p: &Project, timeout: &str) {
    p.write(
        "dags/s.yaml",
        &format!("tasks:\n  - id: stubborn\n    type: shell\n    execution_timeout: {timeout}\n    command: \"{STUBBORN}\"\n"),
    );
}

fn pid_of(p: &Project) -> i32 {
    std::fs::read_to_string(p.path().join("pid.txt")).unwrap().trim().parse().unwrap()
}

sluice_test!(a_timed_out_command_that_ignores_sigterm_does_not_outlive_sluice, |p| {
    stubborn_dag(&p, "1s");
    p.sluice_within(&["run", "s", "--date", "2024-01-05"], DEADLINE).code(1);
    let pid = pid_of(&p);
    // SIGKILL was sent before sluice exited: nothing is left to adopt.
    assert!(!process_alive(pid), "the command (pid {pid}) survived `sluice run`");
    assert_eq!(p.task_json(p.last_run("s"), "stubborn")["error_kind"], "timeout");

    std::fs::remove_file(p.path().join("pid.txt")).unwrap();
    p.sluice_within(&["tasks", "test", "s", "stubborn", "--date", "2024-01-05"], DEADLINE).code(1);
    let pid = pid_of(&p);
    assert!(!process_alive(pid), "the command (pid {pid}) survived `sluice tasks test`");
});

sluice_test!(ctrl_c_leaves_no_command_behind, |p| {
    stubborn_dag(&p, "10m");
    let mut child = p.command(&["run", "s", "--date", "2024-01-05"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("the command to start", DEADLINE, || p.path().join("pid.txt").exists());
    let pid = pid_of(&p);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!process_alive(pid), "the command (pid {pid}) survived Ctrl-C");
    // The interrupted try was requeued, not failed.
    assert_eq!(p.task_json(p.last_run("s"), "stubborn")["state"], "queued");
});

/// Starts `sluice run` of the stubborn command; returns the worker, the
/// command's pid and the worker's spawner's pid once the command runs.
fn start_stubborn(p: &Project) -> (std::process::Child, i32, i32) {
    stubborn_dag(p, "10m");
    let child = p.command(&["run", "s", "--date", "2024-01-05"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("the command to start", DEADLINE, || p.path().join("pid.txt").exists());
    // The command was started by the worker's spawner process, a child of
    // the worker that is not in the command's process group.
    let spawners = children_named(child.id(), "__spawner");
    assert_eq!(spawners.len(), 1, "the worker has one spawner");
    (child, pid_of(p), spawners[0])
}

sluice_test!(a_killed_worker_takes_its_command_with_it, |p| {
    let (mut child, pid, spawner) = start_stubborn(&p);
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // SIGTERM at once (ignored here), SIGKILL two seconds later.
    wait_until("the command to die with its worker", Duration::from_secs(15), || !process_alive(pid));
    wait_until("the spawner to exit after it", Duration::from_secs(15), || !process_alive(spawner));
});

sluice_test!(a_killed_spawner_takes_its_commands_with_it_and_their_tries_fail, |p| {
    let (mut child, pid, spawner) = start_stubborn(&p);
    unsafe { libc::kill(spawner, libc::SIGKILL) };
    // Its exit cannot be known any more: the command is killed at once (a
    // retry must never overlap it) and the try fails, saying why.
    wait_until("the command to die with its spawner", Duration::from_secs(15), || !process_alive(pid));
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let ti = p.task_json(p.last_run("s"), "stubborn");
    assert_eq!(ti["state"], "failed");
    assert!(ti["error"].as_str().unwrap().contains("spawner"), "{ti}");
});

sluice_test!(a_closed_stdout_ends_sluice_quietly, |p| {
    p.write("dags/a.yaml", "tasks:\n  - { id: a, type: shell, command: 'true' }\n");
    for d in 1..=3 {
        p.sluice(&["run", "a", "--date", &format!("2024-01-0{d}")]).ok();
    }
    // As `sluice runs list | head -0`: the reader is gone before sluice writes.
    let mut child = p.command(&["runs", "list"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
});
