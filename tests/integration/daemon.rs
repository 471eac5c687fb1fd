//! The scheduler daemon, as real processes against the real database.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Project, psql, term, wait_until};

fn daemon(p: &Project, name: &str, extra: &[&str]) -> Child {
    p.daemon(name, extra)
}

fn count(p: &Project, sql: &str) -> i64 {
    p.count(sql)
}

/// A plain HTTP/1.1 GET; returns the status line and the body.
fn http_get(addr: &str, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).ok()?;
    sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut resp = String::new();
    sock.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// Starts a daemon serving /health and /metrics on a port it picks itself
/// (no bind-then-release race); returns it with the address from its log.
fn daemon_http(p: &Project, name: &str, extra: &[&str]) -> (Child, String) {
    let mut args = vec!["--health-addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let d = daemon(p, name, &args);
    let mut addr = String::new();
    wait_until("the daemon's HTTP address in its log", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(p.path().join(format!("daemon-{name}.log"))).unwrap_or_default();
        match log.split_once("health and metrics on http://") {
            Some((_, rest)) => {
                addr = rest.split('/').next().unwrap_or_default().to_string();
                true
            }
            None => false,
        }
    });
    (d, addr)
}

/// Waits until the daemon has completed `n` more passes of its scheduler
/// loop (load, plan, start), so that "nothing happened" means the daemon
/// looked, not that a sleep was too short.
fn wait_for_loops(addr: &str, n: u64) {
    let loops = || scheduler_loops(addr);
    wait_until("the daemon's metrics", Duration::from_secs(30), || loops().is_some());
    let start = loops().unwrap_or(0);
    wait_until(&format!("{n} scheduler loops"), Duration::from_secs(60), || loops().is_some_and(|l| l >= start + n));
}

/// The passes of the daemon's scheduler loop so far, from its /metrics.
fn scheduler_loops(addr: &str) -> Option<u64> {
    let (_, m) = http_get(addr, "/metrics")?;
    m.lines().find_map(|l| l.strip_prefix("sluice_scheduler_loops_total ")).and_then(|v| v.trim().parse::<u64>().ok())
}

fn minutes_ago(n: i64) -> String {
    let t = chrono::Utc::now() - chrono::Duration::minutes(n);
    t.format("%Y-%m-%dT%H:%M:00Z").to_string()
}

sluice_test!(catchup_creates_one_run_per_missed_interval_and_no_more, |p| {
    let start = minutes_ago(10);
    p.write(
        "dags/with.yaml",
        &format!("schedule: '* * * * *'\nstart_date: '{start}'\ncatchup: true\ntasks:\n  - {{ id: a, type: shell, command: 'true' }}\n"),
    );
    p.write(
        "dags/without.yaml",
        &format!("schedule: '* * * * *'\nstart_date: '{start}'\ntasks:\n  - {{ id: a, type: shell, command: 'true' }}\n"),
    );
    let mut d = daemon(&p, "a", &[]);
    wait_until("10 successful catch-up runs", Duration::from_secs(40), || {
        count(&p, "SELECT count(*) FROM dag_runs WHERE dag_id = 'with' AND state = 'success'") >= 10
    });
    // A second daemon on the same database creates nothing more.
    let (mut d2, addr2) = daemon_http(&p, "b", &[]);
    wait_for_loops(&addr2, 2);
    // Minutes may turn while the test runs: runs never exceed the complete
    // intervals (counted after the runs, so that a minute turning in
    // between cannot add a run the bound does not allow), and the first ten
    // are exactly the ten missed minutes.
    let start_t = chrono::DateTime::parse_from_rfc3339(&start).unwrap().with_timezone(&chrono::Utc);
    let with = count(&p, "SELECT count(*) FROM dag_runs WHERE dag_id = 'with'");
    let without = count(&p, "SELECT count(*) FROM dag_runs WHERE dag_id = 'without'");
    let complete = (chrono::Utc::now() - start_t).num_seconds() / 60;
    assert!(with >= 10 && with <= complete, "{with} runs for {complete} complete intervals");
    let first: Vec<String> = p.state_sql("SELECT to_char(logical_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:00\"Z\"') FROM dag_runs WHERE dag_id = 'with' ORDER BY logical_date LIMIT 10");
    let want: Vec<String> = (0..10).map(|i| (start_t + chrono::Duration::minutes(i)).format("%Y-%m-%dT%H:%M:00Z").to_string()).collect();
    assert_eq!(first, want);
    assert_eq!(count(&p, "SELECT count(*) - count(DISTINCT (dag_id, logical_date)) FROM dag_runs"), 0, "a run was created twice");
    // Without catchup only the latest interval at start gets a run (and any
    // minute that ended since): none of the nine before it.
    let latest_at_start = start_t + chrono::Duration::minutes(9);
    assert!(without >= 1 && without <= complete - 9, "catchup off made {without} runs for {complete} complete intervals");
    let missed =
        count(&p, &format!("SELECT count(*) FROM dag_runs WHERE dag_id = 'without' AND logical_date < '{}'", latest_at_start.to_rfc3339()));
    assert_eq!(missed, 0, "catchup off created runs for missed intervals");
    assert!(term(&mut d).success());
    assert!(term(&mut d2).success());
    let log = std::fs::read_to_string(p.path().join("daemon-a.log")).unwrap();
    assert!(log.contains("scheduled run created") && log.contains("daemon stopped"), "{log}");
});

// DAGs due at the same moment wake the daemon together: one pass of the
// scheduler answers them all, not a pass per wake-up. The thirty DAGs are
// every minute in thirty time zones, so each has a wake-up job of its own
// (DAGs on one schedule and zone share one).
sluice_test!(dags_due_together_take_one_scheduler_pass, |p| {
    let start = minutes_ago(2);
    let zones = [
        "UTC",
        "Europe/London",
        "Europe/Paris",
        "Europe/Berlin",
        "Europe/Madrid",
        "Europe/Rome",
        "Europe/Warsaw",
        "Europe/Athens",
        "Europe/Helsinki",
        "Europe/Moscow",
        "Asia/Dubai",
        "Asia/Karachi",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Asia/Dhaka",
        "Asia/Bangkok",
        "Asia/Shanghai",
        "Asia/Seoul",
        "Asia/Tokyo",
        "Australia/Sydney",
        "Pacific/Auckland",
        "America/Sao_Paulo",
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Los_Angeles",
        "America/Anchorage",
        "Pacific/Honolulu",
        "Africa/Cairo",
        "Africa/Lagos",
    ];
    for (i, zone) in zones.iter().enumerate() {
        p.write(
            &format!("dags/m{i:02}.yaml"),
            &format!(
                "schedule: '* * * * *'\ntimezone: {zone}\nstart_date: '{start}'\ntasks:\n  - {{ id: a, type: shell, command: 'true' }}\n"
            ),
        );
    }
    // Polled once a minute: the passes counted are the wake-ups' own.
    let (mut d, addr) = daemon_http(&p, "a", &["--poll", "60s"]);
    wait_until("the daemon's first pass", Duration::from_secs(30), || scheduler_loops(&addr).is_some_and(|l| l >= 1));
    let before = scheduler_loops(&addr).unwrap();
    let now = chrono::Utc::now().timestamp();
    let boundary = chrono::DateTime::from_timestamp(now - now % 60 + 60, 0).unwrap();
    wait_until("the next minute's 30 runs to succeed", Duration::from_secs(120), || {
        count(&p, &format!("SELECT count(*) FROM dag_runs WHERE state = 'success' AND data_interval_end = '{}'", boundary.to_rfc3339()))
            == 30
    });
    // tokio-cron-scheduler delivers its wake-ups within a second of the minute.
    wait_until("three seconds past the minute", Duration::from_secs(30), || chrono::Utc::now() >= boundary + chrono::Duration::seconds(3));
    let passes = scheduler_loops(&addr).unwrap() - before;
    // The interval end's own pass, the wake-ups' pass, and the poll.
    assert!(passes <= 6, "{passes} scheduler passes for 30 DAGs due at one minute");
    assert!(term(&mut d).success());
});

// The daemon's state connections have each run the claim's functions
// before its first boundary (a backend compiles them at its first call),
// and warming writes nothing.
sluice_test!(the_daemon_warms_its_state_connections, |p| {
    let url = p.own_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    psql(&crate::harness::db_url(), &format!("ALTER DATABASE {db} SET track_functions = 'pl'"));
    let mut d = daemon(&p, "a", &[]);
    let calls = |f: &str| count(&p, &format!("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = '{f}'"));
    wait_until("the claim's functions called on each of the ten connections", Duration::from_secs(60), || {
        ["open_run", "claim_tries", "apply_decisions", "finish_and_claim"].iter().all(|f| calls(f) >= 10)
    });
    for table in ["dag_runs", "task_instances", "task_tries", "asset_events"] {
        assert_eq!(count(&p, &format!("SELECT count(*) FROM {table}")), 0, "warming wrote to {table}");
    }
    assert!(term(&mut d).success());
    let log = std::fs::read_to_string(p.path().join("daemon-a.log")).unwrap();
    assert!(!log.contains("could not warm"), "{log}");
});

// A pass reads each scheduled DAG's latest scheduled run from the end of
// its runs, by key, not the whole run history (144,000 runs a day with 100
// DAGs every minute): each of the hundred DAGs here is one scan of the
// runs' (dag_id, logical_date) index. Grouping every run, as the pass did,
// used that index once at most, whatever the number of DAGs (the daemon's
// warm-up scans it 20 times: once per connection, twice).
sluice_test!(a_pass_reads_the_latest_scheduled_runs_by_key, |p| {
    p.sluice(&["db", "migrate"]).ok();
    // A long history, of a DAG no longer in the folder.
    p.state_sql(
        "INSERT INTO dag_runs (dag_id, run_type, logical_date, data_interval_start, data_interval_end, state)
         SELECT 'old', 'scheduled', t, t, t + interval '1 minute', 'success'
         FROM generate_series(timestamptz '2026-01-01', timestamptz '2026-01-01' + interval '49999 minutes', interval '1 minute') t;
         ANALYZE dag_runs",
    );
    // A hundred DAGs never due: a pass only looks their latest runs up.
    for i in 0..100 {
        p.write(
            &format!("dags/later{i}.yaml"),
            "schedule: '@daily'\nstart_date: 2099-01-01\ntasks:\n  - { id: a, type: shell, command: 'true' }\n",
        );
    }
    let scans = || {
        count(
            &p,
            "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes
             WHERE schemaname = current_schema() AND indexrelname = 'dag_runs_dag_id_logical_date_key'",
        )
    };
    let before = scans();
    // Polled once a minute: the first pass is the one counted.
    let mut d = daemon(&p, "a", &["--poll", "60s"]);
    wait_until("a hundred lookups of the DAGs' latest scheduled runs", Duration::from_secs(60), || scans() >= before + 100);
    assert!(term(&mut d).success());
});

sluice_test!(two_daemons_share_200_tasks_and_run_each_exactly_once, |p| {
    let mut dag = String::from("max_active_tasks: 12\ntasks:\n");
    for i in 0..200 {
        dag.push_str(&format!(
            "  - {{ id: t{i:03}, type: shell, command: 'echo {{{{ task_id }}}} $(cut -d\" \" -f4 /proc/$PPID/stat) >> ran.txt' }}\n"
        ));
    }
    p.write("dags/many.yaml", &dag);
    let mut a = daemon(&p, "a", &["--parallelism", "6"]);
    let mut b = daemon(&p, "b", &["--parallelism", "6"]);
    wait_until("both daemons to register", Duration::from_secs(30), || {
        count(&p, "SELECT count(*) FROM workers WHERE kind = 'daemon' AND stopped_at IS NULL") == 2
    });
    p.sluice(&["dags", "trigger", "many"]).ok();
    wait_until("the run to succeed", Duration::from_secs(120), || {
        count(&p, "SELECT count(*) FROM dag_runs WHERE dag_id = 'many' AND state = 'success'") == 1
    });
    assert!(term(&mut a).success() && term(&mut b).success());
    let ran = std::fs::read_to_string(p.path().join("ran.txt")).unwrap();
    let lines: Vec<(&str, &str)> = ran.lines().map(|l| l.split_once(' ').unwrap()).collect();
    assert_eq!(lines.len(), 200, "{} executions for 200 tasks", lines.len());
    let tasks: std::collections::BTreeSet<&str> = lines.iter().map(|(t, _)| *t).collect();
    assert_eq!(tasks.len(), 200, "a task ran twice");
    let pids: std::collections::BTreeSet<&str> = lines.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(pids.len(), 2, "both daemons should have run tasks: {pids:?}");
    assert_eq!(count(&p, "SELECT count(*) FROM task_tries WHERE state = 'success'"), 200);
});

sluice_test!(kill_9_mid_run_then_restart_completes_with_effects_once, |p| {
    let mut csv = String::from("id,v\n");
    for i in 1..=1000 {
        csv.push_str(&format!("{i},{}\n", i * 3));
    }
    p.write("data/rows.csv", &csv);
    p.write(
        "dags/slow.yaml",
        r#"
default_args: { retries: 2, retry_delay: 0s }
tasks:
  - { id: s1, type: shell, command: "sleep 1; echo s1 >> done.txt" }
  - { id: s2, type: shell, command: "sleep 1; echo s2 >> done.txt", depends_on: [s1] }
  - { id: s3, type: shell, command: "sleep 3; echo s3 >> done.txt", depends_on: [s2] }
  - { id: rows, type: extract, source: data/rows.csv, depends_on: [s3] }
  - { id: table, type: sql, conn: warehouse, sql: "CREATE TABLE IF NOT EXISTS crash_rows (id bigint PRIMARY KEY, v bigint)" }
  - { id: load, type: load, input: rows, conn: warehouse, table: crash_rows, mode: upsert, key: [id], depends_on: [table] }
  - { id: s4, type: shell, command: "sleep 1; echo s4 >> done.txt", depends_on: [load] }
"#,
    );
    let mut a = daemon(&p, "a", &["--heartbeat-timeout", "30s"]);
    p.sluice(&["dags", "trigger", "slow"]).ok();
    wait_until("s3 to be running", Duration::from_secs(30), || {
        count(&p, "SELECT count(*) FROM task_instances WHERE task_id = 's3' AND state = 'running'") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    a.wait().unwrap();
    // A new daemon sees the dead worker (same host, pid gone) at once.
    let mut b = daemon(&p, "b", &["--heartbeat-timeout", "30s"]);
    wait_until("the run to finish", Duration::from_secs(60), || {
        count(&p, "SELECT count(*) FROM dag_runs WHERE dag_id = 'slow' AND state IN ('success', 'failed')") == 1
    });
    assert!(term(&mut b).success());
    assert_eq!(p.state_sql("SELECT state FROM dag_runs WHERE dag_id = 'slow'"), vec!["success"]);
    assert_eq!(count(&p, "SELECT count(*) FROM task_tries WHERE state = 'success'"), 7);
    assert_eq!(
        count(&p, "SELECT count(*) FROM (SELECT task_id FROM task_tries WHERE state = 'success' GROUP BY task_id HAVING count(*) > 1) x"),
        0
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM task_tries WHERE task_id = 's3' AND state = 'failed' AND error LIKE '%stopped heartbeating%'"),
        1
    );
    assert_eq!(p.sql("SELECT count(*), count(DISTINCT id), sum(v) FROM crash_rows"), vec!["1000|1000|1501500"]);
    let done = std::fs::read_to_string(p.path().join("done.txt")).unwrap();
    assert_eq!(done.lines().filter(|l| *l == "s1").count(), 1, "{done}");
    assert_eq!(done.lines().filter(|l| *l == "s4").count(), 1, "{done}");
});

sluice_test!(sigterm_drains_running_tries_then_stops, |p| {
    p.write(
        "dags/drain.yaml",
        r#"
tasks:
  - { id: first, type: shell, command: "sleep 2; echo first >> done.txt" }
  - { id: second, type: shell, command: "echo second >> done.txt", depends_on: [first] }
"#,
    );
    let mut d = daemon(&p, "a", &["--grace-period", "20s"]);
    p.sluice(&["dags", "trigger", "drain"]).ok();
    wait_until("first to run", Duration::from_secs(20), || {
        count(&p, "SELECT count(*) FROM task_instances WHERE task_id = 'first' AND state = 'running'") == 1
    });
    let status = term(&mut d);
    assert!(status.success(), "exit status {status:?}");
    // The running try finished; nothing new started.
    assert_eq!(p.state_sql("SELECT state FROM task_instances WHERE task_id = 'first'"), vec!["success"]);
    assert_eq!(std::fs::read_to_string(p.path().join("done.txt")).unwrap(), "first\n");
    assert_ne!(p.state_sql("SELECT state FROM task_instances WHERE task_id = 'second'"), vec!["success"]);
    assert_eq!(p.state_sql("SELECT stopped_at IS NOT NULL FROM workers WHERE kind = 'daemon'"), vec!["t"]);

    // With a short grace period a long try is interrupted and requeued,
    // without using up a retry; the next daemon finishes the run.
    p.write("dags/long.yaml", "tasks:\n  - { id: slow, type: shell, command: 'echo start >> long.txt; sleep 30' }\n");
    let mut d = daemon(&p, "b", &["--grace-period", "1s"]);
    p.sluice(&["dags", "trigger", "long"]).ok();
    wait_until("slow to run", Duration::from_secs(20), || p.path().join("long.txt").exists());
    let t0 = Instant::now();
    assert!(term(&mut d).success());
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(p.state_sql("SELECT state || ' ' || try_number FROM task_instances WHERE task_id = 'slow'"), vec!["queued 0"]);
});

sluice_test!(pause_trigger_with_conf_and_hot_reload, |p| {
    let start = minutes_ago(3);
    p.write(
        "dags/paused.yaml",
        &format!("schedule: '* * * * *'\nstart_date: '{start}'\ncatchup: true\ntasks:\n  - {{ id: a, type: shell, command: 'true' }}\n"),
    );
    p.write("dags/conf.yaml", "params: { n: 1 }\ntasks:\n  - { id: a, type: shell, command: 'echo n={{ params.n }} >> conf.txt' }\n");
    p.sluice(&["dags", "pause", "paused"]).ok();
    let (mut d, addr) = daemon_http(&p, "a", &[]);
    wait_for_loops(&addr, 2);
    assert_eq!(count(&p, "SELECT count(*) FROM dag_runs WHERE dag_id = 'paused'"), 0, "a paused DAG got runs");
    let list = p.sluice(&["dags", "list"]).ok();
    assert!(list.stdout.contains("| paused ") && list.stdout.contains("| true "), "{}", list.stdout);
    p.sluice(&["dags", "unpause", "paused"]).ok();
    wait_until("runs after unpausing", Duration::from_secs(20), || count(&p, "SELECT count(*) FROM dag_runs WHERE dag_id = 'paused'") >= 3);

    p.sluice(&["dags", "trigger", "conf", "--conf", "n=5"]).ok();
    wait_until("the triggered run", Duration::from_secs(30), || p.path().join("conf.txt").exists());
    assert_eq!(std::fs::read_to_string(p.path().join("conf.txt")).unwrap(), "n=5\n");

    // A run queued while the DAG is paused waits; a broken edit meanwhile
    // is reported, and the last good version runs once it is unpaused.
    p.sluice(&["dags", "pause", "conf"]).ok();
    p.sluice(&["dags", "trigger", "conf", "--conf", "n=7"]).ok();
    p.write("dags/conf.yaml", "params: { n: 1 }\ntasks:\n  - { id: a, type: shel, command: 'true' }\n");
    let log = || std::fs::read_to_string(p.path().join("daemon-a.log")).unwrap();
    wait_until("the daemon to see the broken edit", Duration::from_secs(30), || {
        log().contains("still running the last good version of conf")
    });
    wait_for_loops(&addr, 2);
    assert_eq!(std::fs::read_to_string(p.path().join("conf.txt")).unwrap(), "n=5\n", "a paused DAG's run started");
    let errors = p.sluice(&["dags", "list-errors"]).ok();
    assert!(errors.stdout.contains("unknown task type `shel`"), "{}", errors.stdout);
    let unpause = p.sluice(&["dags", "unpause", "conf"]).ok();
    assert!(unpause.stderr.contains("does not load right now"), "{}", unpause.all());
    wait_until("the old version to run", Duration::from_secs(10), || {
        std::fs::read_to_string(p.path().join("conf.txt")).unwrap().contains("n=7")
    });
    // A good edit is picked up without a restart.
    p.write("dags/conf.yaml", "params: { n: 1 }\ntasks:\n  - { id: a, type: shell, command: 'echo v2 n={{ params.n }} >> conf.txt' }\n");
    wait_until("the daemon to load the good edit", Duration::from_secs(30), || log().contains("conf.yaml loads again"));
    p.sluice(&["dags", "trigger", "conf", "--conf", "n=9"]).ok();
    wait_until("the new version to run", Duration::from_secs(10), || {
        std::fs::read_to_string(p.path().join("conf.txt")).unwrap().contains("v2 n=9")
    });
    assert!(term(&mut d).success());
    let log = std::fs::read_to_string(p.path().join("daemon-a.log")).unwrap();
    assert!(log.contains("still running the last good version of conf"), "{log}");
});

sluice_test!(backfill_dry_run_and_resumable_interruption, |p| {
    p.write(
        "dags/bf.yaml",
        "schedule: '@daily'\nstart_date: 2024-01-01\ntimezone: Asia/Seoul\nmax_active_runs: 1\ndefault_args: { retries: 1, retry_delay: 0s }\ntasks:\n  - { id: a, type: shell, command: 'sleep 0.7; echo {{ ds }} >> days.txt' }\n",
    );
    let dry = p.sluice(&["backfill", "bf", "--from", "2024-01-01", "--to", "2024-01-06", "--dry-run"]).ok();
    assert_eq!(dry.stdout.matches("Create").count(), 6, "{}", dry.stdout);
    assert_eq!(count(&p, "SELECT count(*) FROM dag_runs"), 0, "a dry run created runs");
    // Interrupt a backfill part-way (mid-try: the killed try counts as
    // failed and is retried), then run it again.
    let mut b = p
        .command(&["backfill", "bf", "--from", "2024-01-01", "--to", "2024-01-06"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("two days done", Duration::from_secs(30), || count(&p, "SELECT count(*) FROM dag_runs WHERE state = 'success'") >= 2);
    unsafe { libc::kill(b.id() as i32, libc::SIGKILL) };
    b.wait().unwrap();
    let again = p.sluice(&["backfill", "bf", "--from", "2024-01-01", "--to", "2024-01-06"]).ok();
    assert!(again.stderr.contains("0 failed"), "{}", again.all());
    assert_eq!(count(&p, "SELECT count(*) FROM dag_runs WHERE state = 'success'"), 6);
    assert_eq!(count(&p, "SELECT count(DISTINCT logical_date) FROM dag_runs"), 6);
    let days = std::fs::read_to_string(p.path().join("days.txt")).unwrap();
    let mut distinct: Vec<&str> = days.lines().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "{days}");
    // Reprocessing reruns finished intervals on request.
    let re = p.sluice(&["backfill", "bf", "--from", "2024-01-05", "--to", "2024-01-06", "--reprocess", "all"]).ok();
    assert!(re.stdout.matches("✓ success").count() == 2, "{}", re.stdout);
});

sluice_test!(health_metrics_status_and_json_logs, |p| {
    p.write("dags/slow.yaml", "tasks:\n  - { id: nap, type: shell, command: 'sleep 3' }\n");
    let (mut d, addr) = daemon_http(&p, "h", &["--log-format", "json"]);
    wait_until("/health to answer", Duration::from_secs(15), || http_get(&addr, "/health").is_some());
    let (status, body) = http_get(&addr, "/health").unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["database"].as_str(), health["dags"].as_u64()),
        (Some("ok"), Some("ok"), Some(1)),
        "{body}"
    );

    p.sluice(&["dags", "trigger", "slow"]).ok();
    wait_until("nap to run", Duration::from_secs(10), || count(&p, "SELECT count(*) FROM task_instances WHERE state = 'running'") == 1);
    let status = p.sluice(&["status"]).ok();
    assert!(status.stdout.contains("| slow ") && status.stdout.contains("| nap "), "{}", status.stdout);
    assert!(status.stdout.contains("| alive "), "{}", status.stdout);
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    for want in [
        "sluice_task_instances{state=\"running\"} 1",
        "sluice_dag_runs{state=\"running\"} 1",
        "sluice_tasks_running_local 1",
        "sluice_dags_loaded 1",
    ] {
        assert!(metrics.contains(want), "no `{want}` in\n{metrics}");
    }
    wait_until("the run to succeed", Duration::from_secs(15), || count(&p, "SELECT count(*) FROM dag_runs WHERE state = 'success'") == 1);
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    for want in ["sluice_tries_succeeded_total 1", "sluice_task_duration_seconds_count 1", "sluice_dag_runs{state=\"success\"} 1"] {
        assert!(metrics.contains(want), "no `{want}` in\n{metrics}");
    }
    assert!(term(&mut d).success());
    let stopped = p.sluice(&["status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&stopped.stdout).unwrap();
    assert!(v["workers"].as_array().unwrap().iter().all(|w| !w["stopped_at"].is_null()), "{}", stopped.stdout);
    // Every log line is a JSON object; the try's lines carry its run and task.
    let log = std::fs::read_to_string(p.path().join("daemon-h.log")).unwrap();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(
        lines.iter().any(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["task"] == "nap"))),
        "no log line inside nap's span:\n{log}"
    );
});

sluice_test!(the_daemon_says_what_it_does_at_the_default_level_without_colour_codes, |p| {
    let start = minutes_ago(3);
    p.write(
        "dags/tick.yaml",
        &format!("schedule: '* * * * *'\nstart_date: '{start}'\ntasks:\n  - {{ id: a, type: shell, command: 'true' }}\n"),
    );
    p.sluice(&["db", "migrate"]).ok();
    // A worker that stopped an hour ago, and one that fell silent then.
    p.state_sql(
        "INSERT INTO workers (worker_id, hostname, pid, kind, version, heartbeat_at, stopped_at) VALUES
         ('old:1:stopped', 'h', 1, 'daemon', 'x', now() - interval '1 hour', now() - interval '1 hour'),
         ('old:2:silent', 'h', 2, 'daemon', 'x', now() - interval '1 hour', NULL)",
    );
    let log_path = p.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // No -v, stderr to a file (not a terminal), and no NO_COLOR.
    let mut d = p.command(&["daemon", "--poll", "200ms", "--health-addr", "off"]).env_remove("NO_COLOR").stderr(log).spawn().unwrap();
    wait_until("a scheduled run to succeed", Duration::from_secs(60), || {
        count(&p, "SELECT count(*) FROM dag_runs WHERE state = 'success'") >= 1
    });
    let status = p.sluice(&["status", "--json"]).ok();
    assert!(term(&mut d).success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    for said in ["daemon started", "DAG loaded from dags/tick.yaml", "scheduled run created", "run succeeded", "daemon stopped"] {
        assert!(text.contains(said), "the daemon did not say `{said}`:\n{text}");
    }
    assert!(!text.contains('\x1b'), "colour codes in a log file:\n{text}");
    assert!(!text.contains("starting try"), "events inside tries belong to the try logs:\n{text}");
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let ids: Vec<&str> = v["workers"].as_array().unwrap().iter().map(|w| w["worker_id"].as_str().unwrap()).collect();
    assert!(ids.len() == 1 && !ids.iter().any(|i| i.starts_with("old:")), "{ids:?}");
});

// Data-aware scheduling with two daemons: an asset update creates exactly
// one run of each DAG scheduled on it; `all` waits for every asset, `any`
// for one; a load updates its table's asset without listing it.
sluice_test!(asset_updates_create_exactly_one_run_with_two_daemons, |p| {
    p.write("data/one.csv", "n\n1\n2\n");
    p.write(
        "dags/produce_a.yaml",
        "tasks:\n  - { id: make, type: shell, command: 'true', outlets: [shop.a] }\n  - { id: skipped, type: shell, command: 'true', when: '', outlets: [shop.never] }\n",
    );
    p.write("dags/produce_b.yaml", "tasks:\n  - { id: make, type: shell, command: 'true', outlets: [shop.b] }\n");
    p.write(
        "dags/produce_table.yaml",
        "tasks:\n  - { id: read, type: extract, source: data/one.csv, schema: { n: int } }\n  - { id: store, type: load, input: read, conn: warehouse, table: asset_table, mode: replace }\n",
    );
    p.write("dags/on_a.yaml", "schedule: { assets: [shop.a] }\ntasks:\n  - { id: t, type: shell, command: 'true' }\n");
    p.write("dags/on_both.yaml", "schedule: { assets: [shop.a, shop.b] }\ntasks:\n  - { id: t, type: shell, command: 'true' }\n");
    p.write(
        "dags/on_either.yaml",
        "schedule: { assets: { any: [shop.a, shop.b] } }\ntasks:\n  - { id: t, type: shell, command: 'true' }\n",
    );
    p.write(
        "dags/on_table.yaml",
        "schedule: { assets: [postgres://warehouse/asset_table] }\ntasks:\n  - { id: t, type: shell, command: 'true' }\n",
    );
    p.write("dags/on_never.yaml", "schedule: { assets: [shop.never] }\ntasks:\n  - { id: t, type: shell, command: 'true' }\n");
    p.sql("DROP TABLE IF EXISTS asset_table; CREATE TABLE asset_table (n int)");
    let (mut d1, a1) = daemon_http(&p, "one", &[]);
    let (mut d2, a2) = daemon_http(&p, "two", &[]);
    // Both daemons have seen the consumers (their cursors start now).
    wait_for_loops(&a1, 2);
    wait_for_loops(&a2, 2);
    let runs = |dag: &str| count(&p, &format!("SELECT count(*) FROM dag_runs WHERE dag_id = '{dag}' AND run_type = 'asset_triggered'"));
    let settled = || {
        wait_for_loops(&a1, 3);
        wait_for_loops(&a2, 3);
        wait_until("asset-triggered runs to finish", Duration::from_secs(60), || {
            count(&p, "SELECT count(*) FROM dag_runs WHERE run_type = 'asset_triggered' AND state NOT IN ('success', 'failed')") == 0
        });
    };

    p.sluice(&["run", "produce_a"]).ok();
    settled();
    assert_eq!((runs("on_a"), runs("on_either"), runs("on_both"), runs("on_never")), (1, 1, 0, 0), "shop.a once");

    p.sluice(&["run", "produce_b"]).ok();
    settled();
    assert_eq!((runs("on_a"), runs("on_either"), runs("on_both")), (1, 2, 1), "shop.b: any and, with shop.a, all");

    p.sluice(&["run", "produce_a"]).ok();
    p.sluice(&["run", "produce_a"]).ok();
    settled();
    // Two updates before a daemon looked make one run (as in Airflow).
    assert!((2..=3).contains(&runs("on_a")), "{}", runs("on_a"));
    assert_eq!(runs("on_both"), 1, "shop.b was not updated again");

    p.sluice(&["run", "produce_table"]).ok();
    settled();
    assert_eq!(runs("on_table"), 1);
    assert_eq!(count(&p, "SELECT count(*) FROM dag_runs WHERE run_type = 'asset_triggered' AND state <> 'success'"), 0);
    // The run's interval spans the update that made it.
    let list = p.sluice(&["assets", "list"]).ok().stdout;
    assert!(list.contains("| shop.a ") && list.contains("produce_a.make") && list.contains("on_a, on_both, on_either (any)"), "{list}");
    assert!(list.contains("postgres://warehouse/asset_table") && list.contains("produce_table.store"), "{list}");
    assert!(list.contains("| shop.never ") && list.contains("never"), "{list}");
    term(&mut d1);
    term(&mut d2);
});

// depends_on_past under the daemon: a run whose task failed holds the
// next run's instance of it (pending, the run kept running, not failed);
// clearing and fixing the failed run lets every run finish. The slot the
// failed run freed went to a later run, so when it is cleared the DAG has
// max_active_runs running, all waiting for it: it must start anyway.
sluice_test!(the_daemon_holds_a_run_behind_a_failed_past_until_it_is_fixed, |p| {
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    let start = start.format("%Y-%m-%dT%H:%M:00Z").to_string();
    let first = start.replace(['-', ':'], "").trim_end_matches('Z').to_string();
    p.write(&format!("fail_{first}"), "");
    p.write(
        "dags/past.yaml",
        &format!(
            "schedule: '* * * * *'\nstart_date: '{start}'\ncatchup: true\nmax_active_runs: 3\ntasks:\n  - {{ id: t, type: shell, command: 'test ! -f fail_{{{{ ts_nodash }}}}', depends_on_past: true }}\n"
        ),
    );
    let (mut d, addr) = daemon_http(&p, "past", &[]);
    let run_of = |n: i64| p.count(&format!("SELECT run_id FROM dag_runs WHERE dag_id = 'past' ORDER BY logical_date OFFSET {n} LIMIT 1"));
    wait_until("the first run to fail", Duration::from_secs(60), || {
        p.count("SELECT count(*) FROM dag_runs WHERE dag_id = 'past' AND state = 'failed'") == 1
    });
    wait_until("three later runs to be running", Duration::from_secs(60), || {
        p.count("SELECT count(*) FROM dag_runs WHERE dag_id = 'past' AND state = 'running'") == 3
    });
    let (r1, r2) = (run_of(0), run_of(1));
    wait_for_loops(&addr, 5);
    let held = p
        .state_sql(&format!("SELECT r.state || ' ' || t.state FROM dag_runs r JOIN task_instances t USING (run_id) WHERE r.run_id = {r2}"));
    assert_eq!(held, vec!["running pending"], "the second run waits for the first");
    std::fs::remove_file(p.path().join(format!("fail_{first}"))).unwrap();
    p.sluice(&["tasks", "clear", "past", "--run", &r1.to_string()]).ok();
    wait_until("every run to succeed", Duration::from_secs(120), || {
        p.count("SELECT count(*) FROM dag_runs WHERE dag_id = 'past' AND state <> 'success'") == 0
            && p.count("SELECT count(*) FROM dag_runs WHERE dag_id = 'past'") >= 5
    });
    term(&mut d);
});

// The runs a daemon pass creates together (catchup) start together, but
// never more than each DAG's max_active_runs at once: the batched start
// applies each DAG's own limit.
sluice_test!(a_batch_of_due_runs_starts_within_each_dags_max_active_runs, |p| {
    let start = minutes_ago(6);
    for (name, max) in [("two", 2), ("one", 1)] {
        p.write(
            &format!("dags/{name}.yaml"),
            &format!(
                "schedule: '* * * * *'\nstart_date: '{start}'\ncatchup: true\nmax_active_runs: {max}\ntasks:\n  - {{ id: t, type: shell, command: 'touch {name}_$SLUICE_RUN_ID; ls {name}_* | wc -l >> seen_{name}.txt; sleep 1; rm {name}_$SLUICE_RUN_ID' }}\n"
            ),
        );
    }
    let mut d = daemon(&p, "limits", &[]);
    wait_until("six runs of each DAG to succeed", Duration::from_secs(120), || {
        count(&p, "SELECT count(*) FROM dag_runs WHERE state = 'success' AND dag_id = 'two'") >= 6
            && count(&p, "SELECT count(*) FROM dag_runs WHERE state = 'success' AND dag_id = 'one'") >= 6
    });
    term(&mut d);
    let most = |name: &str| -> u32 {
        std::fs::read_to_string(p.path().join(format!("seen_{name}.txt")))
            .unwrap()
            .lines()
            .map(|l| l.trim().parse::<u32>().unwrap())
            .max()
            .unwrap()
    };
    assert_eq!(most("two"), 2, "`two` ran more (or never more) than 2 runs at once");
    assert_eq!(most("one"), 1, "`one` ran more than 1 run at once");
});

sluice_test!(an_idle_daemon_keeps_its_state_connections_open, |p| {
    // Its own database: the daemon is its only client there. With nothing
    // due, it keeps its pool's ten connections open, so that a boundary
    // starting many runs does not first open new backends.
    let url = p.own_database();
    p.write("dags/hourly.yaml", "schedule: '@hourly'\ntasks:\n  - { id: a, type: shell, command: 'true' }\n");
    let (mut d, addr) = daemon_http(&p, "a", &[]);
    // Up, and past its passes at start (a TERM before its handler would
    // end it by the signal).
    wait_for_loops(&addr, 2);
    let backends = || -> i64 {
        psql(&url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")[0]
            .parse()
            .unwrap()
    };
    wait_until("the idle daemon to hold ten state connections", Duration::from_secs(60), || backends() >= 10);
    assert!(term(&mut d).success());
});
