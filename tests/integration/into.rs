//! An extract that loads its rows into a table while it reads them
//! (`into`): one transaction that commits only when the whole source is
//! read and accounted for, with the load's modes and errors.

use std::fmt::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Project, wait_until};

/// `n` rows `id,amount`, then `last` as the final line.
fn orders_csv(p: &Project, n: u64, last: &str) {
    let mut s = String::from("id,amount\n");
    for i in 1..=n {
        writeln!(s, "{i},{}", i % 1000).unwrap();
    }
    s.push_str(last);
    p.write("data/orders.csv", &s);
}

// A bad row after three batches of good rows have gone to COPY: nothing is
// committed, the table keeps its old rows, and the error names the line.
// Fixed, the same run loads every row.
sluice_test!(a_streamed_load_commits_only_a_whole_source, |p| {
    p.sql("CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL); INSERT INTO orders VALUES (-1, 1), (-2, 2), (-3, 3)");
    orders_csv(&p, 200_000, "200001,oops\n");
    p.write(
        "dags/stream.yaml",
        r#"
tasks:
  - id: orders
    type: extract
    source: data/orders.csv
    schema: { id: int, amount: int }
    into: { conn: warehouse, table: orders, mode: replace }
"#,
    );
    p.sluice(&["run", "stream", "--date", "2024-01-05"]).code(1);
    let run = p.last_run("stream");
    let e = p.task_json(run, "orders")["error"].as_str().unwrap().to_string();
    assert!(e.contains("data/orders.csv, line 200002"), "{e}");
    assert_eq!(p.sql("SELECT id FROM orders ORDER BY id"), ["-3", "-2", "-1"]);
    // COPY had been taking rows when the bad one came.
    let log = p.sluice(&["logs", &run.to_string(), "orders"]).ok().stdout;
    assert!(log.contains("COPY into \"orders\" in binary format"), "{log}");

    orders_csv(&p, 200_000, "200001,1\n");
    p.sluice(&["run", "stream", "--date", "2024-01-05", "--rerun"]).ok();
    let t = p.task_json(p.last_run("stream"), "orders");
    let m = &t["output"]["metrics"];
    assert_eq!(
        (m["rows_read"].as_u64(), m["rows"].as_u64(), m["rows_inserted"].as_u64(), m["rows_deleted"].as_u64()),
        (Some(200_001), Some(200_001), Some(200_001), Some(3)),
        "{t}"
    );
    let note = t["output"]["note"].as_str().unwrap();
    assert!(
        note.contains("200,001 rows read from 1 file: 200,001 loaded, 0 quarantined, 0 skipped; 200,001 rows into orders (3 replaced)"),
        "{note}"
    );
    assert_eq!(
        p.scalar("SELECT count(*) || ' ' || min(id) || ' ' || max(id) || ' ' || sum(amount) FROM orders"),
        "200001 1 200001 99900001"
    );
    // It wrote no dataset: the rows went to the table only.
    assert!(t["output"]["dataset"].is_null(), "{t}");
});

// A COPY error (a CHECK constraint) names the row by its source line, with
// quarantined rows and blank lines before it; nothing is loaded.
sluice_test!(a_streamed_copy_error_names_the_source_file_and_line, |p| {
    p.write("data/pay.csv", "id,amount\n1,10\n2,oops\n\n3,30\n4,-40\n5,50\n");
    p.sql("CREATE TABLE pay (id int PRIMARY KEY, amount int NOT NULL CHECK (amount >= 0))");
    p.write(
        "dags/pay.yaml",
        r#"
tasks:
  - id: pay
    type: extract
    source: data/pay.csv
    schema: { id: int, amount: int }
    on_bad_rows: quarantine
    max_bad_ratio: 0.5
    into: { conn: warehouse, table: pay, mode: append }
"#,
    );
    p.sluice(&["run", "pay", "--date", "2024-01-05"]).code(1);
    let e = p.task_json(p.last_run("pay"), "pay")["error"].as_str().unwrap().to_string();
    assert!(e.contains("pay_amount_check") && e.contains("the row COPY calls line 3 is data/pay.csv, line 6"), "{e}");
    assert_eq!(p.scalar("SELECT count(*) FROM pay"), "0");
});

// The load's modes through `into`: an append is done once per interval, an
// upsert refuses repeated keys, replace_partition refuses rows outside the
// run's interval; quarantined rows still reach `<task>_rejects`.
sluice_test!(a_streamed_load_keeps_the_modes_of_a_load, |p| {
    p.sql(
        "CREATE TABLE ev (id int PRIMARY KEY, day date NOT NULL);
         CREATE TABLE ev_log (id int, day date)",
    );
    p.write("data/ev.csv", "id,day\n1,2024-01-05\n2,2024-01-05\nx,2024-01-05\n2,2024-01-05\n");
    p.write(
        "dags/ev.yaml",
        r#"
tasks:
  - id: append
    type: extract
    source: data/ev.csv
    schema: { id: int, day: date }
    on_bad_rows: quarantine
    max_bad_ratio: 0.5
    into: { conn: warehouse, table: ev_log, mode: append }
  - id: count_rejects
    type: transform
    inputs: [append_rejects]
    sql: SELECT count(*) AS n FROM append_rejects
  - id: upsert
    type: extract
    source: data/ev.csv
    schema: { id: int, day: date }
    on_bad_rows: skip
    max_bad_ratio: 0.5
    into: { conn: warehouse, table: ev, mode: upsert, key: [id] }
  - id: partition
    type: extract
    source: data/ev.csv
    schema: { id: int, day: date }
    on_bad_rows: skip
    max_bad_ratio: 0.5
    into: { conn: warehouse, table: ev_log, mode: replace_partition, partition_column: day }
    depends_on: [append]
"#,
    );
    p.sluice(&["run", "ev", "--date", "2024-01-05"]).code(1);
    let run = p.last_run("ev");
    let t = p.task_json(run, "append");
    assert_eq!(t["state"], "success", "{t}");
    assert_eq!(t["output"]["metrics"]["rows_quarantined"].as_u64(), Some(1), "{t}");
    assert_eq!(p.task_json(run, "count_rejects")["state"], "success");
    assert_eq!(p.scalar("SELECT count(*) FROM ev_log"), "3");
    let e = p.task_json(run, "upsert")["error"].as_str().unwrap().to_string();
    assert!(e.contains("several rows with the same key (id): (2) (2 rows)"), "{e}");
    assert_eq!(p.scalar("SELECT count(*) FROM ev"), "0");
    // The daily interval of 2024-01-05 ends at 2024-01-06: every row is inside.
    assert_eq!(p.task_json(run, "partition")["state"], "success");
    assert_eq!(p.scalar("SELECT count(*) FROM ev_log"), "3");

    // A new run of the same interval: the append finds its marker.
    p.sluice(&["run", "ev", "--date", "2024-01-05", "--rerun"]).code(1);
    let t = p.task_json(p.last_run("ev"), "append");
    assert!(t["output"]["note"].as_str().unwrap_or_default().contains("already loaded"), "{t}");
    assert_eq!(p.scalar("SELECT count(*) FROM ev_log"), "3");

    // A day outside the interval: nothing replaced, nothing loaded.
    p.write("data/ev.csv", "id,day\n7,2024-01-05\n8,2024-01-09\n");
    p.sluice(&["run", "ev", "--date", "2024-01-05", "--rerun"]).code(1);
    let e = p.task_json(p.last_run("ev"), "partition")["error"].as_str().unwrap().to_string();
    assert!(e.contains("1 row(s) have `day` outside the run's interval"), "{e}");
    assert_eq!(p.scalar("SELECT string_agg(id::text, ',' ORDER BY id) FROM ev_log"), "1,2,2");
});

// The process killed while COPY is taking the streamed rows: the server
// rolls the transaction back, the table keeps its old rows, and a rerun
// loads the file whole.
sluice_test!(a_streamed_load_killed_midway_leaves_the_table_as_it_was, |p| {
    p.sql("CREATE TABLE big (id bigint, amount int); INSERT INTO big VALUES (-1, 1), (-2, 2), (-3, 3)");
    orders_csv(&p, 2_000_000, "");
    p.write(
        "dags/big.yaml",
        r#"
tasks:
  - id: big
    type: extract
    source: data/orders.csv
    schema: { id: int, amount: int }
    into: { conn: warehouse, table: big, mode: replace }
"#,
    );
    let mut run = p.command(&["run", "big", "--date", "2024-01-05"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // COPY has taken rows (pg_stat_progress_copy counts them as they come).
    wait_until("COPY to take 100,000 rows", Duration::from_secs(120), || {
        p.scalar("SELECT coalesce(max(tuples_processed), 0) FROM pg_stat_progress_copy WHERE relid = 'big'::regclass")
            .parse::<i64>()
            .unwrap()
            > 100_000
    });
    unsafe { libc::kill(run.id() as i32, libc::SIGKILL) };
    run.wait().unwrap();
    wait_until("the server to end the COPY", Duration::from_secs(60), || {
        p.scalar("SELECT count(*) FROM pg_stat_progress_copy WHERE relid = 'big'::regclass") == "0"
    });
    assert_eq!(p.sql("SELECT id FROM big ORDER BY id"), ["-3", "-2", "-1"]);

    // The rerun clears the dead worker's instance; its try is recorded as lost.
    p.sluice(&["run", "big", "--date", "2024-01-05", "--rerun"]).ok();
    assert_eq!(p.state_sql("SELECT error_kind FROM task_tries WHERE task_id = 'big' AND try_number = 1"), ["worker_lost"]);
    assert_eq!(p.scalar("SELECT count(*) || ' ' || min(id) || ' ' || max(id) FROM big"), "2000000 1 2000000");
});

// The same rows through a dataset: the load reads it a few row groups at a
// time while COPY sends them. Every row arrives, and a COPY error in a
// later frame still names the source line of its row.
sluice_test!(a_load_streams_its_dataset_frame_by_frame, |p| {
    p.sql("CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL CHECK (id <> 150000)); INSERT INTO orders VALUES (-1, 1)");
    orders_csv(&p, 200_000, "");
    p.write(
        "dags/two.yaml",
        r#"
tasks:
  - id: orders
    type: extract
    source: data/orders.csv
    schema: { id: int, amount: int }
  - { id: load, type: load, input: orders, conn: warehouse, table: orders, mode: replace }
"#,
    );
    p.sluice(&["run", "two", "--date", "2024-01-05"]).code(1);
    let run = p.last_run("two");
    let e = p.task_json(run, "load")["error"].as_str().unwrap().to_string();
    assert!(e.contains("data/orders.csv, line 150001"), "{e}");
    assert_eq!(p.sql("SELECT id FROM orders"), ["-1"]);

    p.sql("ALTER TABLE orders DROP CONSTRAINT orders_id_check");
    p.sluice(&["run", "two", "--date", "2024-01-05", "--rerun"]).ok();
    // 200 times 0 + 1 + ... + 999.
    assert_eq!(
        p.scalar("SELECT count(*) || ' ' || sum(amount) || ' ' || min(id) || ' ' || max(id) FROM orders"),
        "200000 99900000 1 200000"
    );
    let t = p.task_json(p.last_run("two"), "load");
    assert_eq!(t["output"]["metrics"]["rows_deleted"].as_u64(), Some(1), "{t}");
});
