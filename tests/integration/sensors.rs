//! Sensors against real things: files, PostgreSQL, S3 (moto) and a
//! loopback HTTP endpoint; reschedule mode freeing worker slots.

use crate::harness::{HttpStub, with_s3};

// 100 sensors in reschedule mode and the task that makes what they wait
// for, on a worker with 4 slots. The maker comes last in priority: in poke
// mode the first four sensors would hold every slot until their timeout
// and the maker would never start.
sluice_test!(a_hundred_rescheduled_sensors_share_four_slots, |p| {
    let mut dag = String::from("max_active_tasks: 4\ntasks:\n");
    for i in 0..100 {
        dag.push_str(&format!("  - {{ id: s{i:03}, type: sensor, file: flag, mode: reschedule, poke_interval: 3s, timeout: 3m }}\n"));
    }
    dag.push_str("  - { id: zz_make_flag, type: shell, command: \"sleep 1 && touch flag\" }\n");
    p.write("dags/many_sensors.yaml", &dag);
    let out = p.sluice(&["run", "many_sensors", "--parallelism", "4"]).ok();
    let run = p.last_run("many_sensors");
    let states = p.states(run);
    assert_eq!(states.len(), 101);
    for (task, (state, tries)) in &states {
        // A rescheduled sensor's pokes are one try.
        assert_eq!((state.as_str(), *tries), ("success", 1), "{task}\n{}", out.all());
    }
    // The first sensor poked before the flag existed, gave its slot back,
    // and found the flag later: one try row, one log, with both pokes.
    assert_eq!(p.count(&format!("SELECT count(*) FROM task_tries WHERE run_id = {run} AND task_id = 's000'")), 1);
    let log = p.sluice(&["logs", &run.to_string(), "s000"]).ok().stdout;
    assert!(log.contains("is not there yet; next poke at"), "{log}");
    assert!(log.contains("file flag is there"), "{log}");
});

sluice_test!(sensors_wait_for_a_query_an_http_endpoint_and_an_s3_key, |p| {
    let bucket = format!("sensors-{}", std::process::id());
    with_s3(&mut p, &bucket);
    // Not ready twice (a 503, then a JSON field with the wrong value), then ready.
    let stub = HttpStub::start(|n, _, _| match n {
        0 => (503, "{}".into()),
        1 => (200, r#"{"export": {"state": "running"}}"#.into()),
        _ => (200, r#"{"export": {"state": "done"}}"#.into()),
    });
    p.write("files/ready.txt", "ready");
    p.write(
        "dags/waits.yaml",
        &format!(
            r#"
tasks:
  - {{ id: table_has_rows, type: sensor, conn: warehouse, sql: "SELECT count(*) FROM sensor_rows", mode: reschedule, poke_interval: 1s, timeout: 1m }}
  - {{ id: fill, type: sql, conn: warehouse, sql: "SELECT pg_sleep(1); INSERT INTO sensor_rows VALUES (1)" }}
  - {{ id: endpoint, type: sensor, http: "{url}/status", json_field: /export/state, equals: done, poke_interval: 1s, timeout: 1m }}
  - {{ id: object, type: sensor, conn: lake, s3: "s3://{{{{ var.bucket }}}}/in/ready.txt", mode: reschedule, poke_interval: 1s, timeout: 1m }}
  - {{ id: upload, type: s3, conn: lake, op: put, src: files/ready.txt, dst: "s3://{{{{ var.bucket }}}}/in/", depends_on: [fill] }}
  # expand over the keys under an S3 prefix (here, the one object uploaded).
  - {{ id: per_object, type: shell, expand: {{ s3: "s3://{{{{ var.bucket }}}}/in/", conn: lake }}, command: "echo got {{{{ item }}}}", depends_on: [object] }}
"#,
            url = stub.url
        ),
    );
    p.sql("DROP TABLE IF EXISTS sensor_rows; CREATE TABLE sensor_rows (n int)");
    let out = p.sluice(&["run", "waits"]);
    let run = p.last_run("waits");
    let states = p.states(run);
    for t in ["table_has_rows", "fill", "endpoint", "object", "upload", "per_object", "per_object[0]"] {
        assert_eq!(states[t], ("success".to_string(), 1), "{t}: {states:?}\n{}", out.all());
    }
    assert!(stub.count() >= 3, "the endpoint was asked {} times", stub.count());
    let log = p.sluice(&["logs", &run.to_string(), "endpoint"]).ok().stdout;
    assert!(log.contains("HTTP 503") && log.contains("/export/state = \"running\""), "{log}");
    assert!(!states.contains_key("per_object[1]"), "{states:?}");
    let log = p.sluice(&["logs", &run.to_string(), "per_object", "--map-index", "0"]).ok().stdout;
    assert!(log.contains(&format!("out | got s3://{bucket}/in/ready.txt")), "{log}");
});
