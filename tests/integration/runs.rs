//! Running DAGs against the real state store.

use std::time::{Duration, Instant};

use crate::harness::{Project, repo, wait_until};

/// Runs the data-driven cases under `tests/dags/run/<case>/`: the project
/// files plus `expected.yaml` with the command, exit code, run state, each
/// task's `state/tries`, and optionally error substrings, file contents and
/// SQL results.
fn run_case(name: &str) -> (Project, i64) {
    let p = Project::new(name);
    p.copy_from(&format!("tests/dags/run/{name}"));
    let exp: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join(format!("tests/dags/run/{name}/expected.yaml"))).unwrap()).unwrap();
    let args: Vec<String> = exp["args"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.sluice(&args).code(exp["exit"].as_i64().unwrap() as i32);
    let dag = args[1];
    let run = p.last_run(dag);
    let json = p.run_json(run);
    assert_eq!(json["run"]["state"].as_str().unwrap(), exp["run_state"].as_str().unwrap(), "{}", out.all());
    let states = p.states(run);
    let mut problems = Vec::new();
    for (task, want) in exp["tasks"].as_mapping().unwrap() {
        let task = task.as_str().unwrap();
        let got = states.get(task).map(|(s, t)| format!("{s}/{t}")).unwrap_or_else(|| "missing".into());
        if got != want.as_str().unwrap() {
            problems.push(format!("{task}: got {got}, want {}", want.as_str().unwrap()));
        }
    }
    assert_eq!(states.len(), exp["tasks"].as_mapping().unwrap().len(), "every task is listed in expected.yaml");
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), out.all());
    if let Some(errors) = exp.get("errors").and_then(|e| e.as_mapping()) {
        for (task, want) in errors {
            let t = json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == task.as_str().unwrap()).unwrap();
            let err = t["error"].as_str().unwrap_or_default();
            assert!(err.contains(want.as_str().unwrap()), "{}: error {err:?} lacks {want:?}", task.as_str().unwrap());
        }
    }
    if let Some(files) = exp.get("files").and_then(|e| e.as_mapping()) {
        for (f, want) in files {
            let got = std::fs::read_to_string(p.path().join(f.as_str().unwrap())).unwrap();
            assert!(got.contains(want.as_str().unwrap()), "{f:?}: {got:?}");
        }
    }
    if let Some(queries) = exp.get("sql").and_then(|e| e.as_mapping()) {
        for (q, want) in queries {
            let want: Vec<String> = want.as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            assert_eq!(p.sql(q.as_str().unwrap()), want, "{q:?}");
        }
    }
    (p, run)
}

#[test]
fn a_dag_that_succeeds() {
    let (p, run) = run_case("success");
    // The summary table lists every task, and the log holds the command's output.
    let logs = p.sluice(&["logs", &run.to_string(), "greet"]).ok();
    assert!(logs.stdout.contains("out | annyeong 2024-01-05 run"), "{}", logs.stdout);
    assert!(logs.stdout.contains("starting try 1/1 of greet"), "{}", logs.stdout);
    let store_log = p.sluice(&["logs", &run.to_string(), "store"]).ok();
    assert!(store_log.stdout.contains("statement 2/2"), "{}", store_log.stdout);
}

#[test]
fn a_sensor_timeout_is_not_retried_and_soft_fail_skips() {
    run_case("sensor_timeout");
}

#[test]
fn task_groups_prefix_ids_share_default_args_and_are_depended_on_whole() {
    let (p, _) = run_case("task_groups");
    let dot = p.sluice(&["dags", "show", "grouped", "--format", "dot"]).ok().stdout;
    assert!(dot.contains("subgraph \"cluster_extract\"") && dot.contains("\"extract.flaky\" -> \"publish\""), "{dot}");
}

#[test]
fn every_trigger_rule_propagates_like_airflow() {
    run_case("trigger_rules");
}

#[test]
fn a_failing_task_is_retried_with_exponential_backoff() {
    let started = Instant::now();
    let (p, run) = run_case("retry_backoff");
    let tries = p.state_sql(&format!(
        "SELECT extract(epoch FROM started_at)::float8 || '|' || coalesce(extract(epoch FROM ended_at)::float8, 0)
         FROM task_tries WHERE run_id = {run} AND task_id = 'flaky' ORDER BY try_number"
    ));
    assert_eq!(tries.len(), 3);
    let t: Vec<(f64, f64)> = tries
        .iter()
        .map(|l| {
            let (a, b) = l.split_once('|').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    // Airflow's formula: after try n the wait is at least d*2^(n-1) (the
    // exact values, jitter included, are unit-tested in `dag::retry_waits`;
    // a busy machine only makes the gaps longer). The wait starts when the
    // try ends in the worker, a little before the store records its end:
    // 0.1 s of slack for that.
    let gap1 = t[1].0 - t[0].1;
    let gap2 = t[2].0 - t[1].1;
    assert!(gap1 >= 0.9, "first wait {gap1}");
    assert!(gap2 >= 1.9, "second wait {gap2}");
    assert!(started.elapsed() < Duration::from_secs(90));
    let log = p.sluice(&["logs", &run.to_string(), "flaky", "--try", "1"]).ok();
    assert!(log.stdout.contains("out | try 1"), "{}", log.stdout);
    assert!(log.stdout.contains("retrying in"), "{}", log.stdout);
}

#[test]
fn a_try_past_its_execution_timeout_is_killed_and_fails() {
    let started = Instant::now();
    let (p, _run) = run_case("timeout");
    assert!(started.elapsed() < Duration::from_secs(25), "the run waited for the 30 s sleep");
    // The shell and its child were killed with their process group (the
    // SIGKILL follows the SIGTERM after a grace period: wait for it).
    for f in ["slow.pid", "child.pid"] {
        let pid: i32 = std::fs::read_to_string(p.path().join(f)).unwrap().trim().parse().unwrap();
        wait_until(&format!("{f} ({pid}) to be killed"), Duration::from_secs(30), || !crate::harness::process_alive(pid));
    }
}

sluice_test!(clear_and_resume_reruns_only_what_was_cleared, |p| {
    p.write(
        "dags/fix.yaml",
        r#"
tasks:
  - { id: a, type: shell, command: "echo a >> ran.txt" }
  - { id: b, type: shell, command: "echo b >> ran.txt; test -f fixed", depends_on: [a] }
  - { id: c, type: shell, command: "echo c >> ran.txt", depends_on: [b] }
"#,
    );
    p.sluice(&["run", "fix", "--date", "2024-01-05"]).code(1);
    let run = p.last_run("fix");
    let s = p.states(run);
    assert_eq!(s["b"].0, "failed");
    assert_eq!(s["c"].0, "upstream_failed");
    std::fs::write(p.path().join("fixed"), "").unwrap();
    let out = p.sluice(&["tasks", "clear", "fix", "--run", &run.to_string(), "--task", "^b$", "--downstream"]).ok();
    assert!(out.stdout.contains("cleared 2 task instances"), "{}", out.stdout);
    let json = p.run_json(run);
    assert_eq!(json["run"]["state"], "queued");
    p.sluice(&["run", "fix", "--resume", &run.to_string()]).ok();
    let s = p.states(run);
    assert_eq!(s["a"], ("success".into(), 1));
    assert_eq!(s["b"], ("success".into(), 2));
    assert_eq!(s["c"], ("success".into(), 1));
    assert_eq!(std::fs::read_to_string(p.path().join("ran.txt")).unwrap(), "a\nb\nb\nc\n");
    // Running the same date again is refused with the way out...
    let again = p.sluice(&["run", "fix", "--date", "2024-01-05"]).code(1);
    assert!(again.stderr.contains(&format!("--resume {run}")) && again.stderr.contains("--rerun"), "{}", again.stderr);
    // ...and --rerun runs everything again in the same run.
    p.sluice(&["run", "fix", "--date", "2024-01-05", "--rerun"]).ok();
    assert_eq!(p.states(run)["a"], ("success".into(), 2));
});

sluice_test!(only_failed_clears_failed_and_upstream_failed, |p| {
    p.write(
        "dags/of.yaml",
        r#"
tasks:
  - { id: ok, type: shell, command: "true" }
  - { id: bad, type: shell, command: "test -f fixed" }
  - { id: down, type: shell, command: "true", depends_on: [bad] }
"#,
    );
    p.sluice(&["run", "of"]).code(1);
    let run = p.last_run("of");
    std::fs::write(p.path().join("fixed"), "").unwrap();
    let out = p.sluice(&["tasks", "clear", "of", "--run", &run.to_string(), "--only-failed"]).ok();
    assert!(out.stdout.contains("bad, down") || out.stdout.contains("down, bad"), "{}", out.stdout);
    p.sluice(&["run", "of", "--resume", &run.to_string()]).ok();
    let s = p.states(run);
    assert_eq!(s["ok"], ("success".into(), 1));
    assert_eq!(s["bad"], ("success".into(), 2));
});

sluice_test!(two_resumes_of_one_run_never_run_a_task_twice, |p| {
    let mut dag = String::from("max_active_tasks: 4\ntasks:\n");
    for i in 0..40 {
        dag.push_str(&format!("  - {{ id: t{i}, type: shell, command: \"echo t{i} $$ >> ran.txt; sleep 0.05\" }}\n"));
    }
    p.write("dags/many.yaml", &dag);
    // Create the run without executing it: a clear of a finished run leaves
    // it queued with every task pending.
    p.sluice(&["run", "many", "--date", "2024-01-05"]).ok();
    let run = p.last_run("many");
    std::fs::remove_file(p.path().join("ran.txt")).unwrap();
    p.sluice(&["tasks", "clear", "many", "--run", &run.to_string()]).ok();
    let a = p.command(&["run", "many", "--resume", &run.to_string()]).spawn().unwrap();
    let b = p.command(&["run", "many", "--resume", &run.to_string()]).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let ran = std::fs::read_to_string(p.path().join("ran.txt")).unwrap();
    let mut ids: Vec<&str> = ran.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(ids.len(), 40, "{ran}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "a task ran twice:\n{ran}");
    let pids: std::collections::BTreeSet<&str> = ran.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert!(!pids.is_empty());
});

sluice_test!(tasks_test_runs_one_task_without_recording_state, |p| {
    p.write(
        "dags/t.yaml",
        r#"
params: { who: world }
tasks:
  - { id: first, type: shell, command: "exit 1" }
  - { id: second, type: shell, command: "echo hi {{ params.who }} {{ ds }} > out.txt", depends_on: [first] }
"#,
    );
    let out = p.sluice(&["tasks", "test", "t", "second", "--date", "2024-02-03", "--conf", "who=sluice"]).ok();
    assert!(out.stderr.contains("second success"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(p.path().join("out.txt")).unwrap(), "hi sluice 2024-02-03\n");
    let runs = p.sluice(&["runs", "list", "--json"]).ok();
    assert_eq!(runs.stdout.trim(), "[]", "tasks test recorded a run");
    let bad = p.sluice(&["tasks", "test", "t", "first"]).code(1);
    assert!(bad.stderr.contains("exited with status 1"), "{}", bad.stderr);
});

sluice_test!(conf_must_match_declared_params, |p| {
    p.write("dags/c.yaml", "params: { n: 3 }\ntasks:\n  - { id: a, type: shell, command: \"true\" }\n");
    let out = p.sluice(&["run", "c", "--conf", "n=three"]).code(78);
    assert!(out.stderr.contains("param `n` is an integer"), "{}", out.stderr);
    let out = p.sluice(&["run", "c", "--conf", "m=1"]).code(78);
    assert!(out.stderr.contains("did you mean `n`"), "{}", out.stderr);
});

sluice_test!(secrets_are_masked_in_logs_and_output, |p| {
    p.set_env("SLUICE_CONN_API", "https://svc:Sup3r-Secret-Pw@api.example.com/v1");
    p.write(
        "dags/m.yaml",
        "tasks:\n  - { id: leak, type: shell, command: \"echo password={{ conn.api.password }}; echo $SLUICE_DATABASE_URL; exit 3\" }\n",
    );
    let out = p.sluice(&["run", "m"]).code(1);
    let run = p.last_run("m");
    let logs = p.sluice(&["logs", &run.to_string(), "leak"]).ok();
    for text in [&out.stdout, &out.stderr, &logs.stdout] {
        assert!(!text.contains("Sup3r-Secret-Pw"), "secret leaked: {text}");
    }
    assert!(logs.stdout.contains("password=***"), "{}", logs.stdout);
});

sluice_test!(runs_list_and_show, |p| {
    p.write("dags/l.yaml", "tasks:\n  - { id: a, type: shell, command: \"exit 2\" }\n");
    p.sluice(&["run", "l", "--date", "2024-01-01"]).code(1);
    p.write("dags/l.yaml", "tasks:\n  - { id: a, type: shell, command: \"true\" }\n");
    p.sluice(&["run", "l", "--date", "2024-01-02"]).ok();
    let failed = p.sluice(&["runs", "list", "l", "--state", "failed"]).ok();
    assert!(failed.stdout.contains("2024-01-01") && !failed.stdout.contains("2024-01-02"), "{}", failed.stdout);
    let run = p.last_run("l");
    let show = p.sluice(&["runs", "show", &run.to_string()]).ok();
    assert!(show.stdout.contains("| a ") && show.stdout.contains("success"), "{}", show.stdout);
    let first: i64 = p.state_sql("SELECT min(run_id) FROM dag_runs")[0].parse().unwrap();
    let show = p.sluice(&["runs", "show", &first.to_string()]).ok();
    assert!(show.stdout.contains("exited with status 2"), "{}", show.stdout);
});

#[test]
fn depends_on_past_waits_for_the_previous_run_and_the_first_run_passes() {
    let p = Project::new("depends_on_past");
    p.write(
        "dags/past.yaml",
        "schedule: '@daily'\nstart_date: 2024-01-01\ntasks:\n  - { id: load, type: shell, depends_on_past: true, command: 'test -f ok-{{ ds }}' }\n  - { id: after, type: shell, command: 'echo after', depends_on: [load] }\n",
    );
    // The first run passes its past, and fails on its own.
    let day1 = p.sluice(&["run", "past", "--date", "2024-01-01"]);
    assert_eq!(day1.code, 1, "{}", day1.all());
    let run1 = p.last_run("past");
    // The next day's load waits for it: a foreground run stops, resumable.
    std::fs::write(p.path().join("ok-2024-01-02"), "").unwrap();
    let day2 = p.sluice(&["run", "past", "--date", "2024-01-02"]);
    assert_eq!(day2.code, 130, "{}", day2.all());
    assert!(day2.stderr.contains(&format!("load waits for run {run1} (depends_on_past)")), "{}", day2.stderr);
    let run2 = p.last_run("past");
    assert_eq!(p.states(run2)["load"].0, "pending");
    // Fix the past, and both runs finish.
    std::fs::write(p.path().join("ok-2024-01-01"), "").unwrap();
    p.sluice(&["tasks", "clear", "past", "--run", &run1.to_string(), "--only-failed", "--downstream"]).ok();
    p.sluice(&["run", "past", "--resume", &run1.to_string()]).ok();
    p.sluice(&["run", "past", "--resume", &run2.to_string()]).ok();
    assert_eq!(p.states(run2)["after"].0, "success");
}

#[test]
fn a_backfills_first_run_passes_depends_on_past_and_the_next_waits_for_it() {
    let p = Project::new("backfill_past");
    p.write(
        "dags/past.yaml",
        "schedule: '@daily'\nstart_date: 2024-01-01\nmax_active_runs: 2\ntasks:\n  - { id: load, type: shell, depends_on_past: true, command: 'sleep 0.3; test -f ok-{{ ds }}' }\n",
    );
    let day1 = p.sluice(&["run", "past", "--date", "2024-01-01"]);
    assert_eq!(day1.code, 1, "{}", day1.all());
    for d in ["2024-01-02", "2024-01-03", "2024-01-04"] {
        std::fs::write(p.path().join(format!("ok-{d}")), "").unwrap();
    }
    // Two runs at once: the 3rd waits for the 2nd (still going), the 2nd
    // (the backfill's first) does not wait for the failed 1st.
    let bf = p.sluice(&["backfill", "past", "--from", "2024-01-02", "--to", "2024-01-04", "--max-active-runs", "2"]);
    assert_eq!(bf.code, 0, "{}", bf.all());
    assert_eq!(bf.stdout.matches("✓ success").count(), 3, "{}", bf.stdout);
    let order: Vec<String> = p.state_sql(
        "SELECT to_char(r.logical_date AT TIME ZONE 'UTC', 'MM-DD') FROM task_instances t JOIN dag_runs r USING (run_id) WHERE t.state = 'success' ORDER BY t.started_at",
    );
    assert_eq!(order, vec!["01-02", "01-03", "01-04"], "each day started after the one before");
}

// Airflow's prev_*_success names: none before the first successful run,
// then the interval and start of the latest successful earlier run (a
// failed run in between does not count).
sluice_test!(prev_success_names_point_at_the_latest_successful_run, |p| {
    p.write(
        "dags/incremental.yaml",
        r#"
schedule: "@daily"
start_date: 2024-01-01
params: { fail: false }
tasks:
  - id: note
    type: shell
    command: |
      echo "{{ ds }} prev={{ prev_data_interval_start_success }}..{{ prev_data_interval_end_success }} started={{ 'yes' if prev_start_date_success else 'no' }}" >> prev.txt
      exit {{ 1 if params.fail else 0 }}
"#,
    );
    p.sluice(&["run", "incremental", "--date", "2024-01-05"]).ok();
    p.sluice(&["run", "incremental", "--date", "2024-01-06", "--conf", "fail=true"]).code(1);
    p.sluice(&["run", "incremental", "--date", "2024-01-07"]).ok();
    let text = std::fs::read_to_string(p.path().join("prev.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "2024-01-05 prev=None..None started=no",
            "2024-01-06 prev=2024-01-05T00:00:00+00:00..2024-01-06T00:00:00+00:00 started=yes",
            "2024-01-07 prev=2024-01-05T00:00:00+00:00..2024-01-06T00:00:00+00:00 started=yes",
        ]
    );
});

// A chain's next task is claimed with the end of the one before, in one
// round trip (`finish_and_claim`, worked out when the try started), and
// the outputs it reads come with that claim.
sluice_test!(a_chain_claims_each_next_task_with_the_end_of_the_one_before, |p| {
    let url = p.own_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    crate::harness::psql(&crate::harness::db_url(), &format!("ALTER DATABASE {db} SET track_functions = 'pl'"));
    p.write(
        "dags/chain.yaml",
        r#"
tasks:
  - { id: t1, type: shell, command: "exit 0" }
  - { id: t2, type: shell, command: "echo '{{ upstream.t1.note }}' > t2.txt", depends_on: [t1] }
  - { id: t3, type: shell, command: "echo '{{ upstream.t2.metrics.exit_code }}' > t3.txt", depends_on: [t2] }
  - { id: t4, type: shell, command: "true", depends_on: [t3] }
"#,
    );
    p.sluice(&["run", "chain"]).ok();
    assert_eq!(std::fs::read_to_string(p.path().join("t2.txt")).unwrap(), "exit 0\n");
    assert_eq!(std::fs::read_to_string(p.path().join("t3.txt")).unwrap(), "0\n");
    // The backends' statistics are written when they end (with the run).
    let calls = |f: &str| p.count(&format!("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = '{f}'"));
    wait_until("the run's function statistics", Duration::from_secs(30), || calls("finish_and_claim") >= 4);
    // t1, t2 and t3 each claimed their successor; t4's end finished the run.
    assert_eq!(calls("finish_and_claim"), 4);
    assert_eq!(p.state_sql("SELECT state FROM dag_runs"), vec!["success".to_string()]);
    // claim_tries: t1's claim, made with the run's opening (open_run), and
    // the three made through finish_and_claim.
    assert_eq!(calls("claim_tries"), 4);
    assert_eq!(calls("open_run"), 1);
    // open_run claimed t1 itself: its time includes a nested call.
    let nested =
        |f: &str| p.count(&format!("SELECT count(*) FROM pg_stat_user_functions WHERE funcname = '{f}' AND total_time > self_time"));
    assert_eq!(nested("open_run"), 1, "the run's opening did not claim its first task");
    // The ends found the run as foreseen and claimed (claim_tries) or
    // finished it (apply_decisions) themselves: a run not as foreseen calls
    // neither, and the driver's own claims would make up the count above.
    assert_eq!(nested("finish_and_claim"), 1, "no end found the run as its driver foresaw");
});

// The functions of a claim read one run's rows by key whatever the
// statistics say (migration 0013): their plans are generic, and costed from
// the statistics of a store that held a few runs they scanned the whole of
// task_instances at every claim, slower as runs accumulated.
sluice_test!(the_claim_functions_read_runs_by_key, |p| {
    p.write("dags/one.yaml", "tasks:\n  - { id: a, type: shell, command: \"true\" }\n");
    p.sluice(&["run", "one"]).ok();
    let by_key = p.state_sql(
        "SELECT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace
           AND 'enable_seqscan=off' = ANY(proconfig) ORDER BY proname",
    );
    assert_eq!(by_key, ["apply_decisions", "claim_tries", "finish_and_claim", "open_run", "run_as_foreseen"]);
});

// A run that is not as a new run (some tasks done) is opened without the
// foreseen first claim: the opening reads its states, and the driver's
// first step claims from them.
sluice_test!(a_resumed_run_is_opened_from_its_states, |p| {
    let url = p.own_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    crate::harness::psql(&crate::harness::db_url(), &format!("ALTER DATABASE {db} SET track_functions = 'pl'"));
    p.write(
        "dags/resume.yaml",
        r#"
tasks:
  - { id: ok, type: shell, command: "echo ok >> ran.txt" }
  - { id: bad, type: shell, command: "test -f fixed && echo bad >> ran.txt" }
  - { id: down, type: shell, command: "echo down >> ran.txt", depends_on: [bad] }
"#,
    );
    p.sluice(&["run", "resume"]).code(1);
    let run = p.last_run("resume");
    std::fs::write(p.path().join("fixed"), "").unwrap();
    p.sluice(&["tasks", "clear", "resume", "--run", &run.to_string(), "--only-failed"]).ok();
    let calls = |f: &str| p.count(&format!("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = '{f}'"));
    wait_until("the first run's function statistics", Duration::from_secs(30), || calls("open_run") >= 1);
    crate::harness::psql(&url, "SELECT pg_stat_reset()");
    p.sluice(&["run", "resume", "--resume", &run.to_string()]).ok();
    wait_until("the resume's function statistics", Duration::from_secs(30), || calls("open_run") >= 1);
    assert_eq!(calls("open_run"), 1);
    // The opening calls run_as_foreseen, which says no; had it claimed, its
    // time in functions it called would include claim_tries' as well,
    // beyond all the time spent in run_as_foreseen (also called by the
    // chain's ends).
    let ms = |sql: &str| p.state_sql(sql).first().map(|v| v.parse::<f64>().unwrap()).unwrap_or(0.0);
    let in_callees = ms("SELECT total_time - self_time FROM pg_stat_user_functions WHERE funcname = 'open_run'");
    let checks = ms("SELECT coalesce(sum(total_time), 0) FROM pg_stat_user_functions WHERE funcname = 'run_as_foreseen'");
    assert!(checks > 0.0, "the opening did not check the run's states");
    assert!(
        in_callees <= checks + 0.001,
        "the opening of a resumed run claimed as for a new run ({in_callees} ms in callees, {checks} ms checking)"
    );
    let s = p.states(run);
    assert_eq!(s["ok"], ("success".into(), 1));
    assert_eq!(s["bad"], ("success".into(), 2));
    assert_eq!(s["down"], ("success".into(), 1));
    assert_eq!(std::fs::read_to_string(p.path().join("ran.txt")).unwrap(), "ok\nbad\ndown\n");
});

// A claim worked out ahead is made only if the run is as foreseen: here a
// task the next one depends on is cleared while the try before it runs, so
// the next task must wait for that task's new try.
sluice_test!(a_foreseen_claim_yields_to_a_change_made_while_the_try_ran, |p| {
    p.write(
        "dags/yield.yaml",
        r#"
tasks:
  - { id: b, type: shell, command: "echo b >> ran.txt" }
  - id: a
    type: shell
    depends_on: [b]
    command: |
      touch a_started
      for i in $(seq 600); do test -f go && break; sleep 0.1; done
      test -f go && echo a >> ran.txt
  - { id: c, type: shell, command: "echo c >> ran.txt", depends_on: [a, b] }
"#,
    );
    let mut run = p.command(&["run", "yield"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_until("a to run", Duration::from_secs(60), || p.path().join("a_started").exists());
    let id = p.last_run("yield").to_string();
    let out = p.sluice(&["tasks", "clear", "yield", "--run", &id, "--task", "^b$"]).ok();
    assert!(out.stdout.contains("cleared 1 task instance"), "{}", out.stdout);
    std::fs::write(p.path().join("go"), "").unwrap();
    wait_until("the run to end", Duration::from_secs(60), || run.try_wait().unwrap().is_some());
    assert!(run.wait().unwrap().success());
    let s = p.states(id.parse().unwrap());
    assert_eq!(s["b"], ("success".into(), 2));
    assert_eq!(s["c"], ("success".into(), 1));
    // c started only after b ran again.
    assert_eq!(std::fs::read_to_string(p.path().join("ran.txt")).unwrap(), "b\na\nb\nc\n");
});
