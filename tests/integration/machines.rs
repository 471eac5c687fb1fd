//! Several machines: daemons in separate copies of the project that share
//! only the PostgreSQL state store and an S3 staging prefix.

use std::time::Duration;

use crate::harness::{Project, copy_dir, create_bucket, s3_uri, term, wait_until};

/// The shipped project with only the daily ETL, bounded to four days.
fn shop_copy(p: &Project) {
    p.copy_shipped();
    for f in ["grade_update.yaml", "weekly_report.yaml", "example_basics.yaml"] {
        std::fs::remove_file(p.path().join("dags").join(f)).unwrap();
    }
    let path = p.path().join("dags/ecommerce_etl.yaml");
    let dag = std::fs::read_to_string(&path).unwrap().replace("start_date: 2024-09-01\n", "start_date: 2024-09-01\nend_date: 2024-09-04\n");
    std::fs::write(path, dag).unwrap();
}

const TABLES: [(&str, &str); 7] = [
    ("shop.users", "id"),
    ("shop.products", "id"),
    ("shop.orders", "id"),
    ("shop.events", "ts, session_id, event, x::text"),
    ("shop.order_items", "order_id, line_no"),
    ("shop.funnel_daily", "day, stage"),
    ("shop.quarantine", "x::text"),
];

fn digests(p: &Project) -> Vec<String> {
    TABLES
        .iter()
        .map(|(t, order)| {
            p.scalar(&format!(
                "SELECT '{t} ' || count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' ORDER BY {order}), '')) FROM {t} x"
            ))
        })
        .collect()
}

sluice_test!(two_machines_share_only_the_database_and_an_s3_staging_prefix, |a| {
    let url = a.own_database();
    let mut b = Project::new("machines_b");
    b.use_database(&url);
    b.schema = a.schema.clone();
    shop_copy(&a);
    shop_copy(&b);
    a.sluice(&["generate", "--days", "4", "--users", "800", "--products", "600", "--seed", "11", "--dirty"]).ok();
    // No shared folders: the other machine has its own copy of the exports.
    copy_dir(&a.path().join("data/raw"), &b.path().join("data/raw"));
    let bucket = a.schema.replace('_', "-").to_lowercase();
    create_bucket(&bucket);
    for p in [&mut a, &mut b] {
        p.set_env("SLUICE_STAGING", &format!("s3://{bucket}/staging"));
        p.set_env("SLUICE_STAGING_CONN", "lake");
        p.set_env("SLUICE_CONN_LAKE", &s3_uri());
    }
    let mut da = a.daemon("a", &["--parallelism", "2"]);
    let mut db = b.daemon("b", &["--parallelism", "2"]);
    let done = |p: &Project| p.count("SELECT count(*) FROM dag_runs WHERE state IN ('success', 'failed')") == 4;
    wait_until("four daily runs to finish", Duration::from_secs(300), || done(&a));
    let states = a.state_sql(
        "SELECT run_id || ' ' || task_id || ' ' || state || ' ' || coalesce(error, '') FROM task_instances WHERE state <> 'success'
         AND NOT (task_id = 'wait_for_export_s3' AND state = 'skipped') ORDER BY 1",
    );
    assert!(states.is_empty(), "{}\n--- a\n{}", states.join("\n"), std::fs::read_to_string(a.path().join("daemon-a.log")).unwrap());
    assert!(term(&mut da).success() && term(&mut db).success());
    assert_eq!(a.count("SELECT count(*) FROM dag_runs WHERE state <> 'success'"), 0);
    // Tasks ran on both machines, and datasets crossed between them.
    assert_eq!(a.count("SELECT count(DISTINCT worker_id) FROM task_tries WHERE state = 'success'"), 2);
    let crossed = a.count(
        "SELECT count(*) FROM task_tries d JOIN task_tries u ON u.run_id = d.run_id AND u.state = 'success' AND d.state = 'success'
         JOIN (VALUES ('extract_users', 'users_clean'), ('extract_products', 'products_clean'), ('order_lines', 'orders_clean'),
                      ('order_lines', 'items_clean'), ('extract_partner', 'orders_clean'), ('users_clean', 'load_users'),
                      ('orders_clean', 'load_orders'), ('items_clean', 'load_items'), ('quarantine', 'load_quarantine')) AS e(up, down)
           ON u.task_id = e.up AND d.task_id = e.down
         WHERE u.worker_id <> d.worker_id",
    );
    assert!(crossed > 0, "no dataset was read by the other machine");
    for p in [&a, &b] {
        let local = p.path().join(".sluice/staging");
        assert!(!local.exists() || std::fs::read_dir(&local).unwrap().next().is_none(), "a dataset was staged locally");
    }

    // The warehouse is what one machine alone makes.
    let mut one = Project::new("machines_one");
    one.own_database();
    shop_copy(&one);
    copy_dir(&a.path().join("data/raw"), &one.path().join("data/raw"));
    one.sluice(&["backfill", "ecommerce_etl", "--from", "2024-09-01", "--to", "2024-09-04"]).ok();
    assert_eq!(digests(&a), digests(&one));
    drop(b);
});

sluice_test!(an_unreachable_or_invalid_staging_area_is_an_error_at_start, |p| {
    p.write("dags/a.yaml", "tasks:\n  - { id: a, type: shell, command: 'true' }\n");
    p.set_env("SLUICE_STAGING", "s3:/typo/staging");
    let out = p.sluice(&["run", "a"]).code(78);
    assert!(out.stderr.contains("SLUICE_STAGING"), "{}", out.stderr);
    p.env.clear();
    p.set_env("SLUICE_STAGING", "s3://nowhere/staging");
    p.set_env("SLUICE_STAGING_CONN", "lake");
    p.set_env("SLUICE_CONN_LAKE", "s3://k:s@127.0.0.1:1?region=us-east-1&tls=false");
    let out = p.sluice(&["daemon", "--health-addr", "off"]).code(78);
    assert!(out.stderr.contains("connection `lake`") && out.stderr.contains("http://127.0.0.1:1"), "{}", out.stderr);
    assert!(out.stderr.contains("cannot reach the S3 server"), "{}", out.stderr);
});
