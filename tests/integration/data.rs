//! The data tasks against real services: PostgreSQL, an S3 server (moto,
//! started by scripts/test.sh) and an HTTP server started here.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::harness::{Project, with_s3};

/// Serves files from `dir` over HTTP/1.1 on loopback; requests must carry
/// `Authorization: Bearer <token>` or get a 401. Runs until the test ends.
fn http_server(dir: PathBuf, token: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let req = String::from_utf8_lossy(&buf).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let authorized = req.lines().any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {token}")));
            let (status, body) = if !authorized {
                ("401 Unauthorized", b"missing or wrong token".to_vec())
            } else {
                match std::fs::read(dir.join(&path)) {
                    Ok(b) => ("200 OK", b),
                    Err(_) => ("404 Not Found", b"no such file".to_vec()),
                }
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}")
}

fn write_cp949(path: &Path, text: &str) {
    let (bytes, _, bad) = encoding_rs::EUC_KR.encode(text);
    assert!(!bad);
    std::fs::write(path, bytes).unwrap();
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).finish().unwrap()
}

fn unique_bucket(p: &Project) -> String {
    p.schema.replace('_', "-").to_lowercase()
}

/// A digest of a table's content, to compare before and after a rerun.
fn digest(p: &Project, table: &str, order: &str) -> String {
    p.scalar(&format!("SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) FROM {table} t"))
}

sluice_test!(the_data_pipeline_extracts_every_format_loads_every_mode_and_reruns_idempotently, |p| {
    p.copy_from("tests/dags/data/pipeline");
    let bucket = unique_bucket(&p);
    with_s3(&mut p, &bucket);
    let base = http_server(p.path().join("data"), "t0ken-for-tests");
    p.set_env("SLUICE_VAR_HTTP_BASE", &base);
    p.set_env("SLUICE_VAR_API_TOKEN", "t0ken-for-tests");
    write_cp949(
        &p.path().join("data/products_cp949.csv"),
        "id,name,category,price\n100,유기농 김치,식품,12000\n101,한우 불고기,정육,8900\n102,제주 감귤 5kg,과일,30000\n",
    );

    let out = p.sluice(&["run", "pipeline", "--date", "2024-01-05"]).ok();
    let run = p.last_run("pipeline");
    let states = p.states(run);
    assert!(states.values().all(|(s, _)| s == "success"), "{states:?}\n{}", out.all());

    // Extract: bad rows quarantined with their lines and reasons.
    assert!(
        out.stdout.contains("8 rows read from 1 file: 6 loaded, 2 quarantined, 0 skipped (1 unparsable value, 1 wrong field count)"),
        "{}",
        out.stdout
    );
    let rejects = read_parquet(&p.path().join(format!(".sluice/staging/pipeline/{run}/orders_rejects.parquet")));
    let lines: Vec<i64> = rejects.column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
    let reasons: Vec<&str> = rejects.column("reason").unwrap().str().unwrap().iter().map(|v| v.unwrap()).collect();
    assert_eq!(lines, vec![6, 7]);
    assert_eq!(reasons, vec!["unparsable value", "wrong field count"]);
    assert!(rejects.column("raw").unwrap().str().unwrap().get(0).unwrap().contains("not-a-number"));

    // Loads: replace_partition (deduped to the latest line of order 4), upsert, replace, create.
    assert_eq!(p.sql("SELECT count(*), sum(amount) FROM orders"), vec!["5|230900.50"]);
    assert_eq!(p.scalar("SELECT status FROM orders WHERE order_id = 4"), "refunded");
    assert_eq!(p.scalar("SELECT user_name || '/' || product_name FROM orders WHERE order_id = 1"), "김민준/유기농 김치");
    assert_eq!(p.scalar("SELECT count(*) FROM users"), "4");
    assert_eq!(p.scalar("SELECT string_agg(name, ',' ORDER BY id) FROM products"), "유기농 김치,한우 불고기,제주 감귤 5kg");
    assert_eq!(
        p.sql("SELECT channel, user_id, amount FROM channel_orders ORDER BY order_id"),
        vec!["naver|10|15500.00", "coupang|12|7200.50"]
    );
    assert_eq!(p.scalar("SELECT count(*) FROM visits"), "6");
    assert!(
        out.stdout.contains("7 rows read from 1 file: 6 loaded, 0 quarantined, 1 skipped (1 line does not match the pattern)"),
        "{}",
        out.stdout
    );

    // Checks: the warn-level check recorded a warning and let the run go on.
    assert!(out.all().contains("check big_baskets failed"), "{}", out.all());

    // A rerun of the same interval leaves every table identical.
    let tables = [("orders", "order_id"), ("users", "id"), ("products", "id"), ("channel_orders", "order_id"), ("visits", "ts, event")];
    let before: Vec<String> = tables.iter().map(|(t, o)| digest(&p, t, o)).collect();
    p.sluice(&["run", "pipeline", "--date", "2024-01-05", "--rerun"]).ok();
    let after: Vec<String> = tables.iter().map(|(t, o)| digest(&p, t, o)).collect();
    assert_eq!(before, after);
    // The rerun replaced the day's orders rather than adding to them.
    let json = p.run_json(run);
    let load = json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == "load_orders").unwrap();
    assert_eq!(load["output"]["metrics"]["rows_deleted"], 5);
    assert_eq!(load["output"]["metrics"]["rows_inserted"], 5);
    let users = json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == "load_users").unwrap();
    assert_eq!(users["output"]["metrics"]["rows_updated"], 4);
});

sluice_test!(a_load_that_fails_halfway_leaves_the_table_unchanged, |p| {
    // 50,000 rows; the very last one breaks a CHECK constraint, so the
    // failure comes in the last COPY chunk, after most rows were sent.
    let mut csv = String::from("id,amount,day\n");
    for i in 1..=50_000 {
        let amount = if i == 50_000 { -1 } else { i };
        csv.push_str(&format!("{},{amount},2024-01-05\n", 1000 + i));
    }
    p.write("data/big.csv", &csv);
    p.write(
        "dags/atomic.yaml",
        r#"
timezone: UTC
tasks:
  - id: seed
    type: sql
    conn: warehouse
    sql: |
      CREATE TABLE t (id bigint PRIMARY KEY, amount numeric NOT NULL CHECK (amount >= 0), day date NOT NULL);
      INSERT INTO t SELECT g, 1, '2024-01-05' FROM generate_series(1, 10) g;
  - id: big
    type: extract
    source: data/big.csv
    schema: { id: int, amount: int, day: date }
  - { id: append, type: load, input: big, conn: warehouse, table: t, mode: append, depends_on: [seed] }
  - { id: replace, type: load, input: big, conn: warehouse, table: t, mode: replace, depends_on: [append], trigger_rule: all_done }
  - { id: upsert, type: load, input: big, conn: warehouse, table: t, mode: upsert, key: [id], depends_on: [replace], trigger_rule: all_done }
  - { id: partition, type: load, input: big, conn: warehouse, table: t, mode: replace_partition, partition_column: day, depends_on: [upsert], trigger_rule: all_done }
"#,
    );
    p.sluice(&["run", "atomic", "--date", "2024-01-05"]).code(1);
    let run = p.last_run("atomic");
    let json = p.run_json(run);
    for task in ["append", "replace", "upsert", "partition"] {
        let t = json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == task).unwrap();
        assert_eq!(t["state"], "failed", "{task}: {t}");
        assert!(t["error"].as_str().unwrap().contains("t_amount_check"), "{task}: {}", t["error"]);
    }
    assert_eq!(p.sql("SELECT count(*), sum(amount), min(id), max(id) FROM t"), vec!["10|10|1|10"]);
});

// A load uses COPY's binary format when every column type allows it and
// the text format otherwise; both must store exactly the same values,
// including the edges of each encoding.
sluice_test!(binary_and_text_copy_store_the_same_values, |p| {
    p.write(
        "data/edges.csv",
        "i2,i4,i8,dec,num,f4,f8,b,t,v,d,ts,tz\n\
         -32768,-2147483648,-9223372036854775808,-9999999999.99,0,-1.5,-0.0,true,\"tab\tand \\ back\",é한,1999-12-31,1999-12-31 23:59:59.999999,2000-01-01T00:00:00+00:00\n\
         32767,2147483647,9223372036854775807,0.01,-0.00001,3.25,1e300,false,\"line\nbreak\",,2000-01-01,2000-01-01 00:00:00,1969-07-20T20:17:40.5+00:00\n\
         0,0,0,0.00,123456789.123456789,NaN,-inf,,\"\",v,0001-01-01,2038-01-19 03:14:08,2262-04-11T23:47:16+00:00\n\
         ,,,,,,,,,,,,\n\
         1,10000,100000000,10000.00,100000000,,inf,false,x,y,2024-02-29,2024-02-29 12:00:00.000001,2024-02-29T12:00:00.000001+09:00\n",
    );
    let columns = "i2 smallint, i4 integer, i8 bigint, dec numeric(12,2), num numeric, f4 real, f8 double precision, b boolean, t text, v varchar(10), d date, ts timestamp, tz timestamptz";
    p.write(
        "dags/edges.yaml",
        &format!(
            r#"
timezone: UTC
tasks:
  - id: tables
    type: sql
    conn: warehouse
    sql: |
      CREATE TABLE bin ({columns});
      -- A column COPY's binary format cannot fill from an integer (real)
      -- makes this load fall back to the text format.
      CREATE TABLE txt ({columns}, fallback real);
  - id: edges
    type: extract
    source: data/edges.csv
    schema: {{ i2: int, i4: int, i8: int, dec: "decimal(12,2)", num: "decimal(38,9)", f4: float, f8: float, b: bool, t: text, v: text, d: date, ts: timestamp, tz: timestamptz }}
  - id: with_fallback
    type: transform
    inputs: [edges]
    sql: SELECT *, i2 AS fallback FROM edges
  - {{ id: load_bin, type: load, input: edges, conn: warehouse, table: bin, mode: append, depends_on: [tables] }}
  - {{ id: load_txt, type: load, input: with_fallback, conn: warehouse, table: txt, mode: append, depends_on: [tables] }}
"#
        ),
    );
    p.sluice(&["run", "edges", "--date", "2024-01-05"]).ok();
    // Both formats were used, as intended.
    let run = p.last_run("edges").to_string();
    let log = |task: &str| p.sluice(&["logs", &run, task]).ok().stdout;
    assert!(log("load_bin").contains("in binary format"), "{}", log("load_bin"));
    assert!(log("load_txt").contains("in text format"), "{}", log("load_txt"));
    let cols = "i2, i4, i8, dec, num, f4, f8, b, t, v, d, ts, tz";
    // Newlines inside values are shown as ⏎: psql's output is split on lines.
    let rows =
        |t: &str| p.sql(&format!("SET timezone = 'UTC'; SELECT replace(({cols})::text, E'\\n', '⏎') FROM {t} ORDER BY i8 NULLS LAST"));
    let bin = rows("bin");
    assert_eq!(bin, rows("txt"));
    assert_eq!(bin.len(), 5);
    // And the values are the right ones, column by column.
    let col = |c: &str| {
        p.sql(&format!("SET timezone = 'UTC'; SELECT replace(coalesce({c}::text, 'NULL'), E'\\n', '⏎') FROM bin ORDER BY i8 NULLS LAST"))
    };
    assert_eq!(col("i2"), ["-32768", "0", "1", "32767", "NULL"]);
    assert_eq!(col("i8"), ["-9223372036854775808", "0", "100000000", "9223372036854775807", "NULL"]);
    assert_eq!(col("dec"), ["-9999999999.99", "0.00", "10000.00", "0.01", "NULL"]);
    assert_eq!(col("num"), ["0.000000000", "123456789.123456789", "100000000.000000000", "-0.000010000", "NULL"]);
    assert_eq!(col("f4"), ["-1.5", "NaN", "NULL", "3.25", "NULL"]);
    assert_eq!(col("f8"), ["-0", "-Infinity", "Infinity", "1e+300", "NULL"]);
    assert_eq!(col("b"), ["true", "NULL", "false", "false", "NULL"]);
    // (An empty field, quoted or not, is null by default: `null_values`.)
    assert_eq!(col("t"), ["tab\tand \\ back", "NULL", "x", "line⏎break", "NULL"]);
    assert_eq!(col("v"), ["é한", "v", "y", "NULL", "NULL"]);
    assert_eq!(col("d"), ["1999-12-31", "0001-01-01", "2024-02-29", "2000-01-01", "NULL"]);
    assert_eq!(
        col("ts"),
        ["1999-12-31 23:59:59.999999", "2038-01-19 03:14:08", "2024-02-29 12:00:00.000001", "2000-01-01 00:00:00", "NULL"]
    );
    assert_eq!(
        col("tz"),
        ["2000-01-01 00:00:00+00", "2262-04-11 23:47:16+00", "2024-02-29 03:00:00.000001+00", "1969-07-20 20:17:40.5+00", "NULL"]
    );
});

sluice_test!(malformed_inputs_land_in_quarantine_with_reasons_and_lines, |p| {
    let mut csv = b"id,price,day\n1,10,2024-01-05\n2,x,2024-01-05\n3,30\n4,40,2024-13-45\n".to_vec();
    csv.extend_from_slice(b"5,50,2024-01-05\xff\n6,60,2024-01-06\n");
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    std::fs::write(p.path().join("data/items.csv"), csv).unwrap();
    p.write("data/events.ndjson", "{\"id\": 1, \"kind\": \"a\"}\n{\"id\": \"two\"}\n{broken\n[1, 2]\n{\"id\": 5, \"kind\": \"b\"}\n");
    p.write(
        "dags/q.yaml",
        r#"
tasks:
  - id: items
    type: extract
    source: data/items.csv
    schema: { id: int, price: int, day: date }
    on_bad_rows: quarantine
    max_bad_ratio: 1
  - id: events
    type: extract
    source: data/events.ndjson
    schema: { id: int, kind: text }
    on_bad_rows: quarantine
    max_bad_ratio: 1
  - id: strict
    type: extract
    source: data/items.csv
    schema: { id: int, price: int, day: date }
  - id: bounded
    type: extract
    source: data/items.csv
    schema: { id: int, price: int, day: date }
    on_bad_rows: skip
    max_bad_ratio: 0.2
  - id: rejects_table
    type: load
    input: items_rejects
    conn: warehouse
    table: item_rejects
    mode: replace
    create: true
"#,
    );
    let out = p.sluice(&["run", "q"]).code(1);
    let run = p.last_run("q");
    let s = p.states(run);
    assert_eq!(s["items"].0, "success");
    assert_eq!(s["events"].0, "success");
    assert_eq!(s["rejects_table"].0, "success");
    assert_eq!(s["strict"].0, "failed");
    assert_eq!(s["bounded"].0, "failed");
    assert!(
        out.stdout.contains(
            "6 rows read from 1 file: 2 loaded, 4 quarantined, 0 skipped (1 invalid encoding, 2 unparsable value, 1 wrong field count)"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(
        p.sql("SELECT line || ' ' || reason || ' ' || detail FROM item_rejects ORDER BY line"),
        vec![
            "3 unparsable value column `price`: `x` is not an integer",
            "4 wrong field count 2 fields, expected 3",
            "5 unparsable value column `day`: `2024-13-45` is not a date (%Y-%m-%d)",
            "6 invalid encoding column `day` is not valid UTF-8",
        ]
    );
    let ev = read_parquet(&p.path().join(format!(".sluice/staging/q/{run}/events_rejects.parquet")));
    let lines: Vec<i64> = ev.column("line").unwrap().i64().unwrap().into_no_null_iter().collect();
    assert_eq!(lines, vec![2, 3, 4]);
    let json = p.run_json(run);
    let err =
        |id: &str| json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == id).unwrap()["error"].as_str().unwrap().to_string();
    assert!(err("strict").contains("data/items.csv, line 3: unparsable value: column `price`: `x` is not an integer"), "{}", err("strict"));
    assert!(err("bounded").contains("4 of 6 rows are bad"), "{}", err("bounded"));
});

sluice_test!(a_failing_check_fails_the_run_and_shows_the_offending_rows, |p| {
    p.write("data/o.csv", "id,status,amount\n1,paid,10\n2,paid,-5\n2,lost,7\n3,,9\n");
    p.write(
        "dags/c.yaml",
        r#"
tasks:
  - id: o
    type: extract
    source: data/o.csv
  - id: checks
    type: check
    input: o
    checks:
      - unique: [id]
      - not_null: [status]
      - accepted_values: { column: status, values: [paid, refunded] }
      - sql: SELECT * FROM o WHERE amount < 0
        name: no_negative_amounts
      - row_count: { max: 100 }
      - row_count: { min: 10 }
        severity: warn
  - id: after
    type: shell
    command: echo should not run
    depends_on: [checks]
"#,
    );
    p.sluice(&["run", "c"]).code(1);
    let run = p.last_run("c");
    let s = p.states(run);
    assert_eq!(s["checks"].0, "failed");
    assert_eq!(s["after"].0, "upstream_failed");
    let log = p.sluice(&["logs", &run.to_string(), "checks"]).ok().stdout;
    let json = p.run_json(run);
    let err = json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == "checks").unwrap()["error"].as_str().unwrap().to_string();
    assert!(err.starts_with("5 of 6 check(s) failed"), "{err}");
    assert!(err.contains("check unique(id) failed: 1 value(s) of (id) appear more than once"), "{err}");
    assert!(err.contains("check not_null(status) failed: 1 row(s) have nulls"), "{err}");
    assert!(err.contains("check accepted_values(status) failed: 1 unexpected value(s)") && err.contains("lost"), "{err}");
    assert!(err.contains("check no_negative_amounts failed: the query returned 1 row(s)") && err.contains("-5"), "{err}");
    assert!(err.contains("check row_count failed: 4 rows, expected at least 10"), "{err}");
    assert!(log.contains("passed"), "{log}");
});

sluice_test!(s3_operations_and_the_sensor, |p| {
    let bucket = unique_bucket(&p);
    with_s3(&mut p, &bucket);
    let payload: String = (0..200_000).map(|i| format!("{i},")).collect();
    p.write("files/a.txt", &payload);
    p.write("files/b.txt", "bee");
    p.write(
        "dags/s3ops.yaml",
        r#"
tasks:
  - { id: put, type: s3, conn: lake, op: put, src: "files/*.txt", dst: "s3://{{ var.bucket }}/in/" }
  - { id: copy, type: s3, conn: lake, op: copy, src: "s3://{{ var.bucket }}/in/a.txt", dst: "s3://{{ var.bucket }}/copied/", depends_on: [put] }
  - { id: get, type: s3, conn: lake, op: get, src: "s3://{{ var.bucket }}/copied/a.txt", dst: out/a.txt, depends_on: [copy] }
  - { id: list, type: s3, conn: lake, op: list, uri: "s3://{{ var.bucket }}/in/", depends_on: [put] }
  - { id: wait_ok, type: s3, conn: lake, op: wait, uri: "s3://{{ var.bucket }}/in/", poke_interval: 1s, timeout: 5s, depends_on: [put] }
  - { id: delete, type: s3, conn: lake, op: delete, uri: "s3://{{ var.bucket }}/in/", depends_on: [get, list, wait_ok] }
  - { id: wait_gone, type: s3, conn: lake, op: wait, uri: "s3://{{ var.bucket }}/in/a.txt", poke_interval: 1s, timeout: 3s, depends_on: [delete] }
"#,
    );
    p.sluice(&["run", "s3ops"]).code(1);
    let run = p.last_run("s3ops");
    let s = p.states(run);
    for t in ["put", "copy", "get", "list", "wait_ok", "delete"] {
        assert_eq!(s[t].0, "success", "{t}: {s:?}");
    }
    assert_eq!(s["wait_gone"].0, "failed");
    assert_eq!(std::fs::read_to_string(p.path().join("out/a.txt")).unwrap(), payload);
    let listed = read_parquet(&p.path().join(format!(".sluice/staging/s3ops/{run}/list.parquet")));
    let keys: Vec<&str> = listed.column("key").unwrap().str().unwrap().iter().map(|v| v.unwrap()).collect();
    assert_eq!(keys, vec!["in/a.txt", "in/b.txt"]);
    let json = p.run_json(run);
    let err =
        json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == "wait_gone").unwrap()["error"].as_str().unwrap().to_string();
    assert!(err.contains("did not appear within 3s"), "{err}");
});

/// A second moto server, serving HTTPS with a certificate for 127.0.0.1
/// signed by a certificate authority of its own; stopped when dropped.
struct TlsS3 {
    child: std::process::Child,
    port: u16,
    /// The authority's certificate, which a client must be told to trust.
    ca: PathBuf,
}

impl TlsS3 {
    fn start(dir: &Path) -> TlsS3 {
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let days = ["-days", "1"];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=sluice test CA",
                    "-keyout",
                    "ca-key.pem",
                    "-out",
                    "ca.pem",
                ][..],
                &days,
            ]
            .concat(),
        );
        openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "s3-key.pem", "-out", "s3.csr"]);
        std::fs::write(dir.join("s3.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
        openssl(
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    "s3.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca-key.pem",
                    "-CAcreateserial",
                    "-extfile",
                    "s3.ext",
                    "-out",
                    "s3.pem",
                ][..],
                &days,
            ]
            .concat(),
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let python = PathBuf::from(crate::harness::service("SLUICE_TEST_PYTHON"));
        let child = std::process::Command::new(python.with_file_name("moto_server"))
            .current_dir(dir)
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c", "s3.pem", "-k", "s3-key.pem"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let s3 = TlsS3 { child, port, ca: dir.join("ca.pem") };
        crate::harness::wait_until("the HTTPS S3 server", std::time::Duration::from_secs(60), || s3.curl(&["-X", "PUT"], "/secure"));
        s3
    }

    /// A request with curl trusting the authority (moto takes unsigned requests).
    fn curl(&self, args: &[&str], path: &str) -> bool {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        std::process::Command::new("curl").args(["-fs", "--cacert"]).arg(&self.ca).args(args).arg(url).output().unwrap().status.success()
    }
}

impl Drop for TlsS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// S3 over HTTPS (the SDK's client is rustls with ring): a server whose
// certificate the system does not trust is refused with an error that says
// so; trusted through SSL_CERT_FILE, the same DAG moves the file both ways.
sluice_test!(s3_over_https_checks_the_servers_certificate, |p| {
    let s3 = TlsS3::start(p.path());
    p.set_env("SLUICE_CONN_SECURE", &format!("s3://testkey:testsecret@127.0.0.1:{}?region=us-east-1", s3.port));
    p.write("files/a.txt", "over tls");
    p.write(
        "dags/tls.yaml",
        r#"
tasks:
  - { id: put, type: s3, conn: secure, op: put, src: files/a.txt, dst: "s3://secure/in/", retries: 2 }
  - { id: get, type: s3, conn: secure, op: get, src: "s3://secure/in/a.txt", dst: out/a.txt, depends_on: [put] }
"#,
    );
    p.sluice(&["run", "tls", "--date", "2024-01-01"]).code(1);
    let put = p.task_json(p.last_run("tls"), "put");
    let err = put["error"].as_str().unwrap();
    assert!(err.contains("TLS certificate is not trusted") && err.contains("SSL_CERT_FILE"), "{err}");
    assert_eq!((put["error_kind"].as_str(), put["try_number"].as_i64()), (Some("permanent"), Some(1)), "not retried: {put}");
    p.set_env("SSL_CERT_FILE", s3.ca.to_str().unwrap());
    let out = p.sluice(&["run", "tls", "--date", "2024-01-02"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(std::fs::read_to_string(p.path().join("out/a.txt")).unwrap(), "over tls");
});

sluice_test!(unreachable_services_give_clear_errors, |p| {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    p.set_env("SLUICE_CONN_LAKE", &format!("s3://k:s3cr3t-key@127.0.0.1:{closed}?tls=false"));
    p.set_env("SLUICE_CONN_BROKENDB", &format!("postgres://u:pw-secret@127.0.0.1:{closed}/x"));
    p.write(
        "dags/u.yaml",
        &format!(
            r#"
tasks:
  - {{ id: s3, type: extract, source: "s3://b/x.csv", conn: lake, retries: 0 }}
  - {{ id: db, type: sql, conn: brokendb, sql: SELECT 1 }}
  - {{ id: http, type: extract, source: "http://127.0.0.1:{closed}/x.csv" }}
"#
        ),
    );
    let out = p.sluice(&["run", "u"]).code(1);
    let run = p.last_run("u");
    let json = p.run_json(run);
    let err =
        |id: &str| json["tasks"].as_array().unwrap().iter().find(|t| t["task_id"] == id).unwrap()["error"].as_str().unwrap().to_string();
    assert!(err("s3").contains(&format!("S3 connection `lake` (http://127.0.0.1:{closed})")), "{}", err("s3"));
    assert!(err("db").contains(&format!("cannot connect to Postgres connection `brokendb` (127.0.0.1:{closed})")), "{}", err("db"));
    assert!(err("http").contains(&format!("GET http://127.0.0.1:{closed}/x.csv")), "{}", err("http"));
    for text in [out.all(), json.to_string()] {
        assert!(!text.contains("s3cr3t-key") && !text.contains("pw-secret"), "secret leaked: {text}");
    }
});

sluice_test!(a_wrong_http_token_fails_with_the_status, |p| {
    p.write("data/x.csv", "a\n1\n");
    let base = http_server(p.path().join("data"), "right");
    p.write(
        "dags/h.yaml",
        &format!("tasks:\n  - {{ id: x, type: extract, source: \"{base}/x.csv\", headers: {{ Authorization: Bearer wrong }} }}\n"),
    );
    p.sluice(&["run", "h"]).code(1);
    let json = p.run_json(p.last_run("h"));
    let e = json["tasks"][0]["error"].as_str().unwrap().to_string();
    assert!(e.contains("HTTP 401 Unauthorized: missing or wrong token"), "{e}");
});

// A COPY error names a row of the dataset; the load says which line of
// which source file it came from (bad rows and blank lines before it make
// the two differ).
sluice_test!(a_copy_error_names_the_source_file_and_line, |p| {
    p.write("data/pay.csv", "id,amount\n1,10\n2,oops\n\n3,30\n4,-40\n5,50\n");
    p.write(
        "dags/pay.yaml",
        r#"
tasks:
  - id: table
    type: sql
    conn: warehouse
    sql: CREATE TABLE pay (id int PRIMARY KEY, amount int NOT NULL CHECK (amount >= 0))
  - id: pay
    type: extract
    source: data/pay.csv
    schema: { id: int, amount: int }
    on_bad_rows: quarantine
    max_bad_ratio: 0.5
  - { id: load, type: load, input: pay, conn: warehouse, table: pay, mode: append, depends_on: [table] }
  - id: moved
    type: transform
    inputs: [pay]
    sql: SELECT * FROM pay ORDER BY id DESC
  - { id: load_moved, type: load, input: moved, conn: warehouse, table: pay, mode: append, depends_on: [load], trigger_rule: all_done }
"#,
    );
    p.sluice(&["run", "pay", "--date", "2024-01-05"]).code(1);
    let run = p.last_run("pay");
    let e = p.task_json(run, "load")["error"].as_str().unwrap().to_string();
    // Dataset row 3 (COPY's "line 3") is line 6 of the file.
    assert!(e.contains("pay_amount_check") && e.contains("the row COPY calls line 3 is data/pay.csv, line 6"), "{e}");
    let e = p.task_json(run, "load_moved")["error"].as_str().unwrap().to_string();
    assert!(e.contains("row 2 of dataset `moved`"), "{e}");
    assert_eq!(p.scalar("SELECT count(*) FROM pay"), "0");
});
