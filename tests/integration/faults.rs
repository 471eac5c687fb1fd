//! Faults of the real services: a PostgreSQL restart and outage while tries
//! finish, a failed query on a pooled connection, a database that never
//! answers, a killed daemon, a crash-safe append.

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{PrivatePg, Project, term, wait_until};

/// 4 chains of 10 short tasks: tries end all the time.
fn busy_dag(p: &Project) {
    let mut dag = String::from("max_active_tasks: 8\ntasks:\n");
    for c in 0..4 {
        for i in 0..10 {
            let dep = if i == 0 { String::new() } else { format!(", depends_on: [c{c}t{}]", i - 1) };
            dag.push_str(&format!("  - {{ id: c{c}t{i}, type: shell, command: 'sleep 0.4; echo c{c}t{i} >> ran.txt'{dep} }}\n"));
        }
    }
    p.write("dags/busy.yaml", &dag);
}

fn successes(p: &Project) -> i64 {
    p.count("SELECT count(*) FROM task_instances WHERE state = 'success'")
}

fn assert_each_task_ran_once(p: &Project) {
    let ran = std::fs::read_to_string(p.path().join("ran.txt")).unwrap();
    let mut lines: Vec<&str> = ran.lines().collect();
    lines.sort();
    let n = lines.len();
    lines.dedup();
    let tries = p.state_sql("SELECT task_id || ' ' || try_number || ' ' || state || ' ' || worker_id || ' ' || coalesce(error, '') FROM task_tries ORDER BY task_id, try_number");
    let log = std::fs::read_to_string(p.path().join("daemon-a.log")).unwrap_or_default();
    assert_eq!((n, lines.len()), (40, 40), "40 tasks, each run once; tries:\n{}\n--- log\n{log}", tries.join("\n"));
    assert_eq!(p.count("SELECT count(*) FROM task_instances WHERE state = 'running'"), 0);
    assert_eq!(p.count("SELECT count(*) FROM task_tries WHERE state = 'success'"), 40);
}

sluice_test!(a_database_restart_and_a_20s_outage_strand_no_try, |p| {
    let pg = PrivatePg::start("restart");
    p.use_database(&pg.url());
    busy_dag(&p);
    // A heartbeat timeout shorter than the outage: stale heartbeats after
    // it must not make the daemon requeue tries that are still running.
    let mut d = p.daemon("a", &["--heartbeat-timeout", "10s"]);
    p.sluice(&["dags", "trigger", "busy"]).ok();
    wait_until("some tasks to succeed", Duration::from_secs(60), || successes(&p) >= 5);
    pg.restart();
    wait_until("more tasks to succeed after the restart", Duration::from_secs(60), || successes(&p) >= 15);
    pg.stop();
    std::thread::sleep(Duration::from_secs(20)); // the outage itself
    pg.start_again();
    wait_until("the run to succeed", Duration::from_secs(180), || {
        p.count("SELECT count(*) FROM dag_runs WHERE dag_id = 'busy' AND state = 'success'") == 1
    });
    assert!(term(&mut d).success());
    assert_each_task_ran_once(&p);
    let log = std::fs::read_to_string(p.path().join("daemon-a.log")).unwrap();
    assert!(log.contains("cannot reach the state database"), "{log}");
});

sluice_test!(a_backfill_rides_out_a_database_outage, |p| {
    let pg = PrivatePg::start("backfill");
    p.use_database(&pg.url());
    p.write(
        "dags/daily.yaml",
        "schedule: '@daily'\nstart_date: 2024-01-01\ntasks:\n  - { id: a, type: shell, command: 'sleep 1; echo $SLUICE_DS >> ran.txt' }\n  - { id: b, type: shell, command: 'sleep 1', depends_on: [a] }\n",
    );
    p.sluice(&["db", "migrate"]).ok();
    let mut bf = p
        .command(&["backfill", "daily", "--from", "2024-01-01", "--to", "2024-01-06", "--max-active-runs", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first run to succeed", Duration::from_secs(60), || {
        p.count("SELECT count(*) FROM dag_runs WHERE state = 'success'") >= 1
    });
    pg.stop();
    std::thread::sleep(Duration::from_secs(20));
    pg.start_again();
    let start = Instant::now();
    while bf.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(180), "the backfill did not finish after the outage");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut err = String::new();
    bf.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(bf.wait().unwrap().code(), Some(0), "{err}");
    assert!(err.contains("6 ran (0 failed)"), "{err}");
    assert_eq!(p.count("SELECT count(*) FROM dag_runs WHERE state = 'success'"), 6);
    assert_eq!(p.count("SELECT count(*) FROM task_instances WHERE state <> 'success'"), 0);
});

sluice_test!(sigterm_stops_a_backfill_and_its_commands, |p| {
    p.write(
        "dags/daily.yaml",
        "schedule: '@daily'\nstart_date: 2024-01-01\ntasks:\n  - { id: a, type: shell, command: 'echo $$ > pid.txt; sleep 60' }\n",
    );
    let mut bf = p
        .command(&["backfill", "daily", "--from", "2024-01-01", "--to", "2024-01-01"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command to start", Duration::from_secs(60), || p.path().join("pid.txt").exists());
    let pid: i32 = std::fs::read_to_string(p.path().join("pid.txt")).unwrap().trim().parse().unwrap();
    let status = term(&mut bf);
    let mut err = String::new();
    bf.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("run the same backfill again to continue"), "{err}");
    assert!(!crate::harness::process_alive(pid), "the command survived the backfill");
    // Running the same backfill again resumes the interrupted run.
    std::fs::write(
        p.path().join("dags/daily.yaml"),
        "schedule: '@daily'\nstart_date: 2024-01-01\ntasks:\n  - { id: a, type: shell, command: 'true' }\n",
    )
    .unwrap();
    let out = p.sluice(&["backfill", "daily", "--from", "2024-01-01", "--to", "2024-01-01"]).ok();
    assert!(out.stderr.contains("1 to resume"), "{}", out.all());
});

sluice_test!(a_failed_query_does_not_poison_its_pooled_connection, |p| {
    // The query fails after COPY has streamed rows out; the next tasks, in
    // the same process and pool, must each see their own statement's count.
    p.write(
        "dags/pool.yaml",
        r#"
tasks:
  - { id: table, type: sql, conn: warehouse, sql: "CREATE TABLE hits (n int)" }
  - id: bad_query
    type: extract
    conn: warehouse
    query: SELECT x, 1 / (x - 5000) AS boom FROM generate_series(1, 10000) x
    depends_on: [table]
  - { id: s1, type: sql, conn: warehouse, sql: "INSERT INTO hits VALUES (1)", depends_on: [bad_query], trigger_rule: all_done }
  - { id: s2, type: sql, conn: warehouse, sql: "INSERT INTO hits VALUES (2)", depends_on: [s1] }
  - { id: s3, type: sql, conn: warehouse, sql: "INSERT INTO hits VALUES (3)", depends_on: [s2] }
  - { id: s4, type: sql, conn: warehouse, sql: "INSERT INTO hits VALUES (4)", depends_on: [s3] }
"#,
    );
    p.sluice(&["run", "pool", "--date", "2024-01-05"]).code(1);
    let run = p.last_run("pool");
    assert_eq!(p.task_json(run, "bad_query")["state"], "failed");
    assert!(p.task_json(run, "bad_query")["error"].as_str().unwrap().contains("division by zero"));
    for s in ["s1", "s2", "s3", "s4"] {
        let t = p.task_json(run, s);
        assert_eq!(t["state"], "success", "{s}: {t}");
        assert_eq!(t["output"]["metrics"]["rows"], 1, "{s} must report the one row it inserted: {t}");
    }
    assert_eq!(p.scalar("SELECT string_agg(n::text, ',' ORDER BY n) FROM hits"), "1,2,3,4");
});

sluice_test!(a_database_that_never_answers_does_not_stall_other_tasks, |p| {
    // A server that accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    p.set_env("SLUICE_CONN_SILENT", &format!("postgres://nobody@{addr}/none"));
    p.write(
        "dags/stall.yaml",
        r#"
tasks:
  - { id: silent1, type: sql, conn: silent, sql: "SELECT 1" }
  - { id: silent2, type: sql, conn: silent, sql: "SELECT 1" }
  - { id: healthy, type: sql, conn: warehouse, sql: "SELECT 1" }
"#,
    );
    p.sluice_within(&["run", "stall", "--date", "2024-01-05"], Duration::from_secs(90)).code(1);
    let run = p.last_run("stall");
    let healthy = p.task_json(run, "healthy");
    assert_eq!(healthy["state"], "success");
    let took = p.count(&format!(
        "SELECT ceil(extract(epoch FROM ended_at - started_at) * 1000)::bigint FROM task_instances WHERE run_id = {run} AND task_id = 'healthy'"
    ));
    // The silent server's connect timeout is 15 s; the healthy task must
    // not wait for it.
    assert!(took < 5_000, "SELECT 1 on the healthy database took {took} ms");
    for s in ["silent1", "silent2"] {
        let t = p.task_json(run, s);
        assert_eq!((t["state"].as_str(), t["error_kind"].as_str()), (Some("failed"), Some("transient")), "{t}");
    }
});

sluice_test!(a_killed_daemon_requeues_its_try_without_using_a_retry, |p| {
    p.write(
        "dags/once.yaml",
        "tasks:\n  - { id: slow, type: shell, command: 'echo $$ > pid.txt; echo start >> ran.txt; sleep 2; echo end >> ran.txt' }\n  - { id: after, type: shell, command: 'true', depends_on: [slow] }\n",
    );
    let mut a = p.daemon("a", &[]);
    p.sluice(&["dags", "trigger", "once"]).ok();
    wait_until("slow to start", Duration::from_secs(30), || p.path().join("ran.txt").exists());
    let pid: i32 = std::fs::read_to_string(p.path().join("pid.txt")).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    a.wait().unwrap();
    // Its command dies with it: it never writes `end` for the first try.
    wait_until("the command to die with its daemon", Duration::from_secs(15), || !crate::harness::process_alive(pid));
    let mut b = p.daemon("b", &[]);
    wait_until("the run to finish", Duration::from_secs(60), || {
        p.count("SELECT count(*) FROM dag_runs WHERE state IN ('success', 'failed')") == 1
    });
    assert!(term(&mut b).success());
    // retries: 0, and still a success: the lost try used no retry.
    let run = p.last_run("once");
    let slow = p.task_json(run, "slow");
    assert_eq!((slow["state"].as_str(), slow["try_number"].as_i64()), (Some("success"), Some(2)), "{slow}");
    assert_eq!(p.count("SELECT worker_failures FROM task_instances WHERE task_id = 'slow'"), 1);
    assert_eq!(p.state_sql("SELECT error_kind FROM task_tries WHERE task_id = 'slow' AND try_number = 1"), vec!["worker_lost"]);
    assert_eq!(std::fs::read_to_string(p.path().join("ran.txt")).unwrap(), "start\nstart\nend\n");
});

sluice_test!(an_append_load_happens_once_per_interval, |p| {
    p.write("data/e.csv", "id\n1\n2\n3\n");
    p.write(
        "dags/ap.yaml",
        r#"
tasks:
  - { id: table, type: sql, conn: warehouse, sql: "CREATE TABLE IF NOT EXISTS ev (id int)" }
  - { id: e, type: extract, source: data/e.csv }
  - { id: load, type: load, input: e, conn: warehouse, table: ev, mode: append, depends_on: [table] }
"#,
    );
    p.sluice(&["run", "ap", "--date", "2024-01-05"]).ok();
    let again = p.sluice(&["run", "ap", "--date", "2024-01-05", "--rerun"]).ok();
    assert!(again.stdout.contains("already loaded"), "{}", again.stdout);
    assert_eq!(p.scalar("SELECT count(*) FROM ev"), "3");
    // Another interval appends its own rows.
    p.sluice(&["run", "ap", "--date", "2024-01-06"]).ok();
    assert_eq!(p.scalar("SELECT count(*) FROM ev"), "6");
    assert_eq!(p.scalar("SELECT count(*) FROM sluice_load_markers"), "2");
});
