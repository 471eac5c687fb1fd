//! The shipped e-commerce job: the generator, the daily ETL and the grade
//! update, against a real PostgreSQL.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::harness::{Project, wait_until};

fn sha_tree(dir: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

/// Reads an orders.csv, UTF-8 or CP949, into (line number, fields).
fn read_orders(path: &Path) -> Vec<(u64, Vec<String>)> {
    let bytes = std::fs::read(path).unwrap();
    let text = match String::from_utf8(bytes.clone()) {
        Ok(t) => t,
        Err(_) => encoding_rs::EUC_KR.decode(&bytes).0.into_owned(),
    };
    text.lines().enumerate().skip(1).map(|(i, l)| (i as u64 + 1, l.split(',').map(str::to_string).collect())).collect()
}

sluice_test!(the_generator_is_deterministic_and_follows_the_shop_rules, |p| {
    let generate = |out: &str, seed: &str| {
        p.sluice(&["generate", "--out", out, "--seed", seed, "--days", "90", "--users", "10000", "--products", "20000"]).ok();
    };
    generate("a", "42");
    generate("b", "42");
    generate("c", "7");
    let (a, b, c) = (sha_tree(&p.path().join("a")), sha_tree(&p.path().join("b")), sha_tree(&p.path().join("c")));
    let differ: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    assert!(differ.is_empty() && a.len() == b.len(), "the same seed gave different bytes: {differ:?}");
    assert_ne!(a.get("2024-10-01/orders.csv"), c.get("2024-10-01/orders.csv"));

    // Sizes: about 100k orders at the defaults.
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.path().join("a/manifest.json")).unwrap()).unwrap();
    let orders = manifest["summary"]["orders"].as_u64().unwrap();
    assert!((80_000..130_000).contains(&orders), "{orders} orders");

    let day_orders = |d: &str| -> BTreeMap<String, Vec<Vec<String>>> {
        let mut by: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        for (_, f) in read_orders(&p.path().join(format!("a/{d}/orders.csv"))) {
            by.entry(f[0].clone()).or_default().push(f);
        }
        by
    };
    // Black Friday (2024-11-29) triples the orders of the Friday before.
    let bf = day_orders("2024-11-29").len();
    let before = day_orders("2024-11-22").len();
    assert!(bf as f64 >= 2.4 * before as f64, "Black Friday {bf} vs {before}");

    // Sign-ups: an S-curve, fast at first.
    let signups = |d: u32| -> usize {
        let date = chrono::NaiveDate::from_ymd_opt(2024, 9, 1).unwrap() + chrono::Duration::days(d as i64);
        std::fs::read_to_string(p.path().join(format!("a/{date}/users.ndjson"))).unwrap().lines().count()
    };
    let first: usize = (1..30).map(signups).sum();
    let last: usize = (60..90).map(signups).sum();
    assert!(first > 2 * last, "sign-ups {first} in the first month vs {last} in the last");

    // Users: birth dates for age bands.
    let mut birth: HashMap<String, i32> = HashMap::new();
    for d in 0..90 {
        let date = chrono::NaiveDate::from_ymd_opt(2024, 9, 1).unwrap() + chrono::Duration::days(d);
        for l in std::fs::read_to_string(p.path().join(format!("a/{date}/users.ndjson"))).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let year: i32 = v["birth_date"].as_str().unwrap()[..4].parse().unwrap();
            birth.insert(v["id"].to_string(), year);
        }
    }
    // Over all orders: cancellations ~3%, first-time buyers ~40%, peak hours by age band.
    let mut seen_users: BTreeSet<String> = BTreeSet::new();
    let (mut n, mut cancelled, mut first_time) = (0u64, 0u64, 0u64);
    let mut hours: [[u64; 24]; 2] = [[0; 24]; 2];
    for d in 0..90 {
        let date = chrono::NaiveDate::from_ymd_opt(2024, 9, 1).unwrap() + chrono::Duration::days(d);
        for (_, lines) in day_orders(&date.to_string()) {
            let f = &lines[0];
            n += 1;
            if f[3] != "paid" {
                cancelled += 1;
            }
            if seen_users.insert(f[1].clone()) {
                first_time += 1;
            }
            let hour: usize = f[2][11..13].parse().unwrap();
            let age = 2024 - birth[&f[1]];
            if (20..30).contains(&age) {
                hours[0][hour] += 1;
            } else if (50..60).contains(&age) {
                hours[1][hour] += 1;
            }
        }
    }
    let rate = cancelled as f64 / n as f64;
    assert!((0.02..0.04).contains(&rate), "cancelled or refunded: {rate}");
    let share = first_time as f64 / n as f64;
    assert!((0.05..0.5).contains(&share), "first-time buyers: {share}");
    let peak = |h: &[u64; 24]| (0..24).max_by_key(|&i| h[i]).unwrap();
    assert!((20..=22).contains(&peak(&hours[0])), "20s peak at {}", peak(&hours[0]));
    assert!((9..=11).contains(&peak(&hours[1])), "50s peak at {}", peak(&hours[1]));
});

sluice_test!(the_generator_keeps_time_ids_and_noise_realistic, |p| {
    p.sluice(&["generate", "--out", "g", "--days", "14", "--users", "2000", "--products", "800", "--seed", "3"]).ok();
    let root = p.path().join("g");
    // Products are never sold before they exist.
    let mut created: HashMap<String, String> = HashMap::new();
    let mut days: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|d| d.is_dir()).collect();
    days.sort();
    for d in &days {
        let bytes = std::fs::read(d.join("products.csv")).unwrap();
        let text = match String::from_utf8(bytes.clone()) {
            Ok(t) => t,
            Err(_) => encoding_rs::EUC_KR.decode(&bytes).0.into_owned(),
        };
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split(',').collect();
            created.insert(f[0].to_string(), f[5].to_string());
        }
    }
    let mut lines = 0;
    for d in &days {
        for (_, f) in read_orders(&d.join("orders.csv")) {
            let product_created = created.get(&f[6]).unwrap_or_else(|| panic!("product {} is in no export", f[6]));
            assert!(
                product_created.as_str() <= f[2].as_str(),
                "order {} at {} has product {} created at {product_created}",
                f[0],
                f[2],
                f[6]
            );
            lines += 1;
        }
    }
    assert!(lines > 1000);
    // A session id belongs to one user, across days.
    let mut owner: HashMap<String, String> = HashMap::new();
    for d in &days {
        for l in std::fs::read_to_string(d.join("visits.log")).unwrap().lines() {
            let (Some(s), Some(u)) = (l.split("session=").nth(1), l.split("user=").nth(1)) else { continue };
            let (s, u) = (s.split(' ').next().unwrap().to_string(), u.split(' ').next().unwrap().to_string());
            let prev = owner.entry(s.clone()).or_insert_with(|| u.clone());
            assert_eq!(*prev, u, "session {s} has two users");
        }
    }
    // Two weekdays do not repeat each other's hourly pattern: the orders of
    // each hour are drawn, not copied.
    let hours = |d: &Path| -> Vec<usize> {
        let mut h = vec![0usize; 24];
        for (_, f) in read_orders(&d.join("orders.csv")) {
            h[f[2][11..13].parse::<usize>().unwrap()] += 1;
        }
        h
    };
    assert_ne!(hours(&days[7]), hours(&days[8]));
});

sluice_test!(the_etl_loads_exactly_the_generated_rows_and_quarantines_exactly_the_faults, |p| {
    p.own_database();
    p.copy_shipped();
    p.sluice(&["generate", "--days", "10", "--users", "800", "--products", "600", "--seed", "11", "--dirty"]).ok();
    let out = p.sluice(&["backfill", "ecommerce_etl", "--from", "2024-09-01", "--to", "2024-09-10"]).ok();
    assert!(out.stderr.contains("10 ran (0 failed)"), "{}", out.all());
    let raw = p.path().join("data/raw");
    let faults: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(raw.join("faults.json")).unwrap()).unwrap();
    let fault_orders =
        |kind: &str| -> BTreeSet<i64> { faults.iter().filter(|f| f["kind"] == kind).filter_map(|f| f["order_id"].as_i64()).collect() };
    let bad_orders: BTreeSet<i64> =
        ["unknown product", "negative quantity", "unknown user", "product not yet created"].iter().flat_map(|k| fault_orders(k)).collect();
    assert!(!bad_orders.is_empty() && faults.iter().any(|f| f["kind"] == "cp949 file"), "the dirty data has faults of every kind");

    // What should land, computed from the raw files.
    let (mut users, mut products) = (0u64, 0u64);
    let mut lines: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut visit_lines = 0u64;
    for d in 0..10 {
        let date = chrono::NaiveDate::from_ymd_opt(2024, 9, 1).unwrap() + chrono::Duration::days(d);
        let dir = raw.join(date.to_string());
        users += std::fs::read_to_string(dir.join("users.ndjson")).unwrap().lines().count() as u64;
        let prod_bytes = std::fs::read(dir.join("products.csv")).unwrap();
        let (prod, _, _) = encoding_rs::EUC_KR.decode(&prod_bytes);
        products += prod.lines().count() as u64 - 1;
        for (_, f) in read_orders(&dir.join("orders.csv")) {
            let well_formed = f.len() == 9 && f[7].parse::<i64>().is_ok();
            if well_formed && !bad_orders.contains(&f[0].parse::<i64>().unwrap()) {
                lines.insert(f);
            }
        }
        visit_lines += std::fs::read_to_string(dir.join("visits.log")).unwrap().lines().filter(|l| l.contains(" INFO ")).count() as u64;
    }
    let order_ids: BTreeSet<&String> = lines.iter().map(|f| &f[0]).collect();
    let total: i64 = lines.iter().map(|f| f[7].parse::<i64>().unwrap() * f[8].parse::<i64>().unwrap()).sum();
    assert_eq!(p.sql("SELECT count(*) FROM shop.users"), vec![users.to_string()]);
    assert_eq!(p.sql("SELECT count(*) FROM shop.products"), vec![products.to_string()]);
    assert_eq!(p.sql("SELECT count(*), sum(total_amount) FROM shop.orders"), vec![format!("{}|{total}", order_ids.len())]);
    assert_eq!(p.sql("SELECT count(*), sum(quantity * unit_price) FROM shop.order_items"), vec![format!("{}|{total}", lines.len())]);
    assert_eq!(p.sql("SELECT count(*) FROM shop.events"), vec![visit_lines.to_string()]);
    // The daily funnel agrees with the events it summarises, day by day.
    let recount = p.sql(
        "SELECT day || ' ' || event || ' ' || n FROM (SELECT (ts AT TIME ZONE 'Asia/Seoul')::date AS day, event, count(DISTINCT session_id) AS n FROM shop.events GROUP BY 1, 2) x ORDER BY 1",
    );
    assert!(!recount.is_empty());
    assert_eq!(p.sql("SELECT day || ' ' || stage || ' ' || sessions FROM shop.funnel_daily ORDER BY 1"), recount);

    // The daily aggregates the report reads add up to the orders and lines.
    assert_eq!(
        p.sql("SELECT sum(orders) || '|' || sum(paid_orders) || '|' || sum(paid_revenue) || '|' || sum(cancelled_orders) || '|' || sum(lines) FROM shop.sales_hourly"),
        p.sql("SELECT count(*) || '|' || count(*) FILTER (WHERE status = 'paid') || '|' || sum(total_amount) FILTER (WHERE status = 'paid') || '|' || count(*) FILTER (WHERE status <> 'paid') || '|' || (SELECT count(*) FROM shop.order_items) FROM shop.orders"),
    );
    assert_eq!(
        p.sql("SELECT sum(paid_orders) || '|' || sum(paid_revenue) || '|' || count(DISTINCT user_id) FROM shop.customer_daily"),
        p.sql("SELECT count(*) || '|' || sum(total_amount) || '|' || count(DISTINCT user_id) FROM shop.orders WHERE status = 'paid'"),
    );
    assert_eq!(
        p.sql("SELECT sum(units) || '|' || sum(revenue) FROM shop.product_sales_daily"),
        p.sql("SELECT sum(i.quantity) || '|' || sum(i.quantity * i.unit_price) FROM shop.order_items i JOIN shop.orders o ON o.id = i.order_id WHERE o.status = 'paid'"),
    );

    // The CP949 day was read, not lost: its Korean payment methods decode.
    let cp949_day = faults.iter().find(|f| f["kind"] == "cp949 file").unwrap()["date"].as_str().unwrap().to_string();
    let methods = p.sql(&format!("SELECT DISTINCT payment_method FROM shop.orders WHERE ordered_at::date = '{cp949_day}' ORDER BY 1"));
    assert!(
        !methods.is_empty() && methods.iter().all(|m| ["간편결제", "계좌이체", "무통장입금", "카드"].contains(&m.as_str())),
        "{methods:?}"
    );

    // Every fault is in quarantine with its reason, and nothing else is.
    // (An order for a product created after it is caught too.)
    assert!(!fault_orders("product not yet created").is_empty(), "the dirty data has an order for a product not yet created");
    for kind in ["unknown product", "negative quantity", "unknown user", "duplicate line", "product not yet created"] {
        let got: BTreeSet<i64> = p
            .sql(&format!("SELECT DISTINCT order_id FROM shop.quarantine WHERE reason = '{kind}'"))
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, fault_orders(kind), "{kind}");
    }
    for (kind, file) in [("wrong field count", "orders.csv"), ("unparsable value", "orders.csv"), ("log noise", "visits.log")] {
        let want: BTreeSet<String> =
            faults.iter().filter(|f| f["kind"] == kind).map(|f| format!("{}|{}", f["date"].as_str().unwrap(), f["line"])).collect();
        let reason = if kind == "log noise" { "line does not match the pattern" } else { kind };
        let got: BTreeSet<String> = p
            .sql(&format!("SELECT ds || '|' || line FROM shop.quarantine WHERE source = '{file}' AND reason = '{reason}'"))
            .into_iter()
            .collect();
        assert_eq!(got, want, "{kind}");
    }
    let reasons: BTreeSet<String> = p.sql("SELECT DISTINCT reason FROM shop.quarantine").into_iter().collect();
    assert!(reasons.len() <= 8, "{reasons:?}");

    // Rerunning a day leaves the warehouse as it was.
    let digest =
        |t: &str, order: &str| p.sql(&format!("SELECT count(*) || ':' || md5(string_agg(x::text, '|' ORDER BY {order})) FROM {t} x"));
    let tables = [
        ("shop.orders", "id"),
        ("shop.order_items", "order_id, line_no"),
        ("shop.users", "id"),
        ("shop.products", "id"),
        ("shop.quarantine", "ds, source, line, order_id, reason, detail"),
        ("shop.events", "ts, session_id, event"),
        ("shop.funnel_daily", "day, stage"),
        ("shop.sales_hourly", "day, hour"),
        ("shop.product_sales_daily", "day, product_id"),
        ("shop.customer_daily", "day, user_id"),
        ("shop.customer_weekly", "week, user_id"),
    ];
    let before: Vec<_> = tables.iter().map(|(t, o)| digest(t, o)).collect();
    p.sluice(&["run", "ecommerce_etl", "--date", "2024-09-05", "--rerun"]).ok();
    p.sluice(&["run", "ecommerce_etl", "--date", &cp949_day, "--rerun"]).ok();
    let after: Vec<_> = tables.iter().map(|(t, o)| digest(t, o)).collect();
    assert_eq!(before, after);
});

sluice_test!(a_warehouse_loaded_before_the_daily_aggregates_gets_them_for_every_day, |p| {
    p.own_database();
    p.copy_shipped();
    p.sluice(&["generate", "--days", "3", "--users", "300", "--products", "200", "--seed", "4"]).ok();
    p.sluice(&["backfill", "ecommerce_etl", "--from", "2024-09-01", "--to", "2024-09-03"]).ok();
    let digest = || -> Vec<String> {
        ["shop.sales_hourly", "shop.product_sales_daily", "shop.customer_daily", "shop.customer_weekly", "shop.events_daily"]
            .iter()
            .map(|t| {
                p.scalar(&format!("SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"))
            })
            .collect()
    };
    let kept = digest();
    assert!(kept.iter().all(|d| !d.starts_with("0:")), "{kept:?}");
    // As a warehouse loaded by an older sluice: orders, and no aggregates.
    p.sql("DROP TABLE shop.sales_hourly, shop.product_sales_daily, shop.customer_daily, shop.customer_weekly, shop.events_daily");
    // Any run of the ETL applies the schema, which rebuilds every day's.
    p.sluice(&["run", "ecommerce_etl", "--date", "2024-09-02", "--rerun"]).ok();
    assert_eq!(digest(), kept);
    // A warehouse with the daily aggregates but not the customers' weeks
    // gets them from the days.
    p.sql("DROP TABLE shop.customer_weekly");
    p.sluice(&["run", "ecommerce_etl", "--date", "2024-09-02", "--rerun"]).ok();
    assert_eq!(digest(), kept);
});

/// Inserts a user and `n` paid orders of `amount` won each (the last one
/// rounding the total to `spend`), `days_ago` days before 2024-12-01.
fn customer(p: &Project, id: i64, grade: &str, spend: i64, n: i64) {
    p.sql(&format!("INSERT INTO shop.users (id, name, signup_at, grade) VALUES ({id}, 'u{id}', '2024-01-01', '{grade}')"));
    if n == 0 {
        return;
    }
    let each = spend / n;
    let last = spend - each * (n - 1);
    p.sql(&format!(
        "INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         SELECT {id} * 1000 + g, {id}, timestamp '2024-11-30 12:00' - (g || ' hours')::interval, 'paid',
                CASE WHEN g = {n} THEN {last} ELSE {each} END, 1
         FROM generate_series(1, {n}) g"
    ));
}

sluice_test!(grade_update_respects_every_threshold_demotes_one_step_and_writes_history, |p| {
    p.own_database();
    p.copy_shipped();
    p.sql(&std::fs::read_to_string(p.path().join("sql/schema/warehouse.sql")).unwrap());
    // (id, current grade, spend, orders) -> expected grade
    let cases: &[(i64, &str, i64, i64, &str)] = &[
        (1, "BRONZE", 5_000_000, 30, "VIP"),
        (2, "BRONZE", 4_999_999, 30, "GOLD"),
        (3, "BRONZE", 5_000_000, 29, "GOLD"),
        (4, "BRONZE", 2_000_000, 15, "GOLD"),
        (5, "BRONZE", 1_999_999, 15, "SILVER"),
        (6, "BRONZE", 2_000_000, 14, "SILVER"),
        (7, "BRONZE", 500_000, 5, "SILVER"),
        (8, "BRONZE", 499_999, 5, "BRONZE"),
        (9, "BRONZE", 500_000, 4, "BRONZE"),
        // Downgrades move one step per update.
        (10, "VIP", 0, 0, "GOLD"),
        (11, "GOLD", 600_000, 6, "SILVER"),
        (12, "SILVER", 499_999, 5, "BRONZE"),
        (13, "VIP", 5_000_000, 30, "VIP"),
    ];
    for (id, grade, spend, n, _) in cases {
        customer(&p, *id, grade, *spend, *n);
    }
    // Orders that must not count: older than six months, and not paid.
    p.sql(
        "INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count) VALUES
           (990001, 8, '2024-05-31 23:00', 'paid', 1000000, 1),
           (990002, 9, '2024-11-01', 'refunded', 1000000, 1),
           (990003, 9, '2024-11-01', 'cancelled', 1000000, 1)",
    );
    // As of 2024-12-01 00:00 KST (the interval ending then).
    let run = || p.sluice(&["run", "grade_update", "--logical-date", "2024-11-30T14:50:00Z"]);
    run().ok();
    let got: BTreeMap<i64, String> = p
        .sql("SELECT id, grade FROM shop.users ORDER BY id")
        .iter()
        .map(|l| {
            let (a, b) = l.split_once('|').unwrap();
            (a.parse().unwrap(), b.to_string())
        })
        .collect();
    for (id, _, spend, n, want) in cases {
        assert_eq!(got[id], *want, "user {id} with {spend} won over {n} orders");
    }
    assert_eq!(
        p.sql("SELECT user_id, old_grade, new_grade, reason, spend_6m, orders_6m, changed_at FROM shop.grade_history WHERE user_id IN (1, 10) ORDER BY user_id"),
        vec!["1|BRONZE|VIP|upgrade|5000000|30|2024-12-01 00:00:00", "10|VIP|GOLD|downgrade|0|0|2024-12-01 00:00:00"]
    );
    let changed = cases.iter().filter(|(_, g, _, _, w)| g != w).count();
    assert_eq!(p.sql("SELECT count(*) FROM shop.grade_history"), vec![changed.to_string()]);
    // A rerun of the same interval changes nothing more...
    p.sluice(&["run", "grade_update", "--logical-date", "2024-11-30T14:50:00Z", "--rerun"]).ok();
    assert_eq!(p.sql("SELECT count(*) FROM shop.grade_history"), vec![changed.to_string()]);
    assert_eq!(p.sql("SELECT grade FROM shop.users WHERE id = 10"), vec!["GOLD"]);
    // ...and the next interval moves the demoted user one more step.
    p.sluice(&["run", "grade_update", "--logical-date", "2024-11-30T15:00:00Z"]).ok();
    assert_eq!(p.sql("SELECT grade FROM shop.users WHERE id = 10"), vec!["SILVER"]);
    // Thresholds are params: a lower VIP bar promotes user 2.
    p.sluice(&["run", "grade_update", "--logical-date", "2024-11-30T15:10:00Z", "--conf", "vip_spend=4999999"]).ok();
    assert_eq!(p.sql("SELECT grade FROM shop.users WHERE id = 2"), vec!["VIP"]);
});

/// One step of the incremental-grading test: the shipped grade update as of
/// `as_of` (with `conf` params), then the reference, which grades every
/// customer (tests/data/update_grades_everyone.sql), on its own copy of the
/// grades; both must leave the same grades and the same history.
fn grade_both(p: &Project, as_of: &str, conf: &[(&str, &str)]) {
    let mut args = vec!["run".to_string(), "grade_update".into(), "--conf".into(), format!("as_of={as_of}")];
    for (k, v) in conf {
        args.extend(["--conf".into(), format!("{k}={v}")]);
    }
    p.sluice(&args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    // The same params: the shipped DAG's, with the run's overrides.
    let dag: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(p.path().join("dags/grade_update.yaml")).unwrap()).unwrap();
    let param = |k: &str| match conf.iter().find(|(n, _)| *n == k) {
        Some((_, v)) => v.to_string(),
        None => serde_yaml::to_string(&dag["params"][k]).unwrap().trim().to_string(),
    };
    let names = ["vip_spend", "vip_orders", "gold_spend", "gold_orders", "silver_spend", "silver_orders", "window_months"];
    let values: Vec<String> = std::iter::once(format!("'{as_of}'")).chain(names.iter().map(|k| param(k))).collect();
    let mut reference = std::fs::read_to_string(crate::harness::repo().join("tests/data/update_grades_everyone.sql")).unwrap();
    for (i, v) in values.iter().enumerate().rev() {
        reference = reference.replace(&format!("${}", i + 1), v);
    }
    p.sql(&reference);
    // The rows one side has and the other has not (none, or the first 20).
    let differ = |columns: &str, table: &str| {
        p.sql(&format!(
            "(SELECT 'shipped', {columns} FROM shop.{table} EXCEPT ALL SELECT 'shipped', {columns} FROM ref.{table})
             UNION ALL
             (SELECT 'reference', {columns} FROM ref.{table} EXCEPT ALL SELECT 'reference', {columns} FROM shop.{table})
             ORDER BY 2 LIMIT 20"
        ))
    };
    let none: Vec<String> = Vec::new();
    assert_eq!(differ("id, grade, grade_updated_at", "users"), none, "grades as of {as_of}");
    let history = "user_id, old_grade, new_grade, changed_at, reason, spend_6m, orders_6m";
    assert_eq!(differ(history, "grade_history"), none, "history as of {as_of}");
}

/// Runs `sql` on the shop's users and on the reference's copy of them.
fn edit_users(p: &Project, sql: &str) {
    p.sql(&sql.replace("{users}", "shop.users"));
    p.sql(&sql.replace("{users}", "ref.users"));
}

sluice_test!(grading_only_the_changed_customers_decides_what_grading_everyone_does, |p| {
    p.own_database();
    p.copy_shipped();
    p.sql(&std::fs::read_to_string(p.path().join("sql/schema/warehouse.sql")).unwrap());
    // 2,000 customers, the lower ids buying far more often: 40,000 orders
    // over 2024, one in ten cancelled or refunded; a third of the customers
    // start with a grade, so that some come down step by step.
    p.sql(
        "SELECT setseed(0.25);
         INSERT INTO shop.users (id, name, signup_at, grade)
         SELECT g, 'u' || g, '2024-01-01', (ARRAY['BRONZE', 'BRONZE', 'BRONZE', 'SILVER', 'GOLD', 'VIP'])[1 + g % 6]
         FROM generate_series(1, 2000) g;
         INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         SELECT g, 1 + floor(2000 * random() ^ 3)::int,
                timestamp '2024-01-01' + random() * interval '366 days',
                CASE WHEN random() < 0.9 THEN 'paid' WHEN random() < 0.5 THEN 'cancelled' ELSE 'refunded' END,
                10000 + floor(random() * 390000), 1
         FROM generate_series(1, 40000) g",
    );
    p.sql(
        "CREATE SCHEMA ref;
         CREATE VIEW ref.orders AS SELECT * FROM shop.orders;
         CREATE TABLE ref.users AS SELECT * FROM shop.users;
         CREATE TABLE ref.grade_history (LIKE shop.grade_history INCLUDING DEFAULTS)",
    );
    // Customers whose orders enter the window at the first tick (after the
    // first grading's time) or leave it (just after its start).
    p.sql(
        "INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         SELECT 100000 + g, 1500 + g % 20, timestamp '2024-12-01 00:01' + (g % 6) * interval '1 minute', 'paid', 1000000, 1
         FROM generate_series(0, 119) g;
         INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         SELECT 110000 + g, 1400 + g % 10, timestamp '2024-06-01 00:01' + (g % 6) * interval '1 minute', 'paid', 100000, 1
         FROM generate_series(0, 59) g",
    );
    let last = || p.sql("SELECT everyone, coalesce(candidates, -1) FROM shop.grade_state")[0].clone();
    let changes = || p.scalar("SELECT count(*) FROM shop.grade_history").parse::<u64>().unwrap();

    // The first grading grades everyone.
    grade_both(&p, "2024-12-01 00:00:00", &[]);
    assert_eq!(last(), "t|-1");
    let first = changes();
    assert!(first > 300, "{first} grade changes in the first grading");

    // The next tick looks at those customers and the pending ones only.
    grade_both(&p, "2024-12-01 00:10:00", &[]);
    let (everyone, looked_at) = last().split_once('|').map(|(a, b)| (a.to_string(), b.parse::<i64>().unwrap())).unwrap();
    assert_eq!(everyone, "f");
    assert!(looked_at > 0 && looked_at < 2000, "a tick looked at {looked_at} of 2,000 customers");
    assert!(changes() > first, "the tick changed no grade");
    let moved = |users: &str, reason: &str| {
        p.scalar(&format!(
            "SELECT count(*) FROM shop.grade_history WHERE changed_at = '2024-12-01 00:10' AND user_id {users} AND reason = '{reason}'"
        ))
    };
    assert_ne!(moved("BETWEEN 1500 AND 1519", "upgrade"), "0", "orders entering the window");
    assert_ne!(moved("BETWEEN 1400 AND 1409", "downgrade"), "0", "orders leaving the window");

    // What a load does between ticks: refunds, deleted orders, a new day of
    // orders; and grades set by hand.
    p.sql(
        "UPDATE shop.orders SET status = 'refunded' WHERE status = 'paid' AND id % 17 = 0 AND ordered_at >= '2024-07-01';
         DELETE FROM shop.orders WHERE id % 101 = 0;
         INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         SELECT 200000 + g, 1 + g % 400, timestamp '2024-11-28' + g * interval '1 minute', 'paid', 250000, 1
         FROM generate_series(1, 1200) g",
    );
    edit_users(&p, "INSERT INTO {users} (id, name, signup_at, grade) VALUES (5001, 'new', '2024-11-30', 'GOLD')");
    edit_users(&p, "UPDATE {users} SET grade = 'VIP' WHERE id IN (1999, 1998)");
    let before = changes();
    grade_both(&p, "2024-12-01 00:20:00", &[]);
    assert_eq!(last().split_once('|').unwrap().0, "f");
    assert!(changes() > before + 3, "the loads and edits changed too few grades");
    // A rerun of the same time after more refunds leaves the customers
    // graded at that time alone, and grades the others.
    p.sql("UPDATE shop.orders SET status = 'refunded' WHERE status = 'paid' AND user_id IN (3, 4, 1600) AND ordered_at >= '2024-09-01'");
    grade_both(&p, "2024-12-01 00:20:00", &[]);
    // Earlier the same day, then ticks that walk the downgrades down.
    grade_both(&p, "2024-11-30 18:00:00", &[]);
    assert_eq!(last().split_once('|').unwrap().0, "f");
    for t in ["2024-12-01 00:30:00", "2024-12-01 00:40:00", "2024-12-01 00:50:00"] {
        grade_both(&p, t, &[]);
    }

    // More than a day later: everyone. Then a month's end, where the
    // window's start moves back (30 August - 6 months is 29 February 23:50,
    // 31 August's is 29 February 00:00), over customers who bought much that day.
    p.sql(
        "INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         SELECT 300000 + g, 1700 + g % 10, timestamp '2024-02-29 01:00' + g * interval '10 minutes', 'paid', 300000, 1
         FROM generate_series(1, 100) g",
    );
    grade_both(&p, "2024-08-30 23:50:00", &[]);
    assert_eq!(last(), "t|-1");
    let before = changes();
    grade_both(&p, "2024-08-31 00:00:00", &[]);
    assert_eq!(last().split_once('|').unwrap().0, "f");
    assert!(changes() > before, "the month's end changed no grade");
    // New thresholds: everyone.
    grade_both(&p, "2024-08-31 00:10:00", &[("vip_spend", "3000000")]);
    assert_eq!(last(), "t|-1");
    grade_both(&p, "2024-08-31 00:20:00", &[("vip_spend", "3000000")]);
    assert_eq!(last().split_once('|').unwrap().0, "f");
    // A truncated table leaves nothing to compare with.
    p.sql("TRUNCATE shop.orders CASCADE");
    grade_both(&p, "2024-08-31 00:30:00", &[("vip_spend", "3000000")]);
    assert_eq!(last(), "t|-1");
});

sluice_test!(a_load_open_during_a_tick_neither_waits_for_it_nor_is_lost, |p| {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let url = p.own_database();
    p.copy_shipped();
    p.sql(&std::fs::read_to_string(p.path().join("sql/schema/warehouse.sql")).unwrap());
    // Four paid orders of 200,000 won: BRONZE (SILVER takes five).
    customer(&p, 1, "BRONZE", 800_000, 4);
    let tick = |t: &str| p.sluice_within(&["run", "grade_update", "--conf", &format!("as_of={t}")], Duration::from_secs(60)).ok();
    tick("2024-12-01 00:00:00");
    // A load marks customer 1 and commits; another, still open, adds their
    // fifth order (and marks them again).
    p.sql("UPDATE shop.orders SET total_amount = total_amount WHERE user_id = 1");
    let mut load = std::process::Command::new("psql")
        .args([url.as_str(), "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_load = load.stdin.take().unwrap();
    let mut from_load = std::io::BufReader::new(load.stdout.take().unwrap());
    writeln!(
        to_load,
        "BEGIN; INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         VALUES (9001, 1, '2024-11-30 20:00', 'paid', 200000, 1); SELECT 'inserted';"
    )
    .unwrap();
    let mut line = String::new();
    while !line.contains("inserted") {
        line.clear();
        assert!(from_load.read_line(&mut line).unwrap() > 0, "the load's psql ended");
    }
    // A tick meanwhile ends without waiting for the load (sluice_within
    // fails the test if it hangs), and cannot see the fifth order.
    tick("2024-12-01 00:10:00");
    assert_eq!(p.scalar("SELECT grade FROM shop.users WHERE id = 1"), "BRONZE");
    writeln!(to_load, "COMMIT;").unwrap();
    drop(to_load);
    assert!(load.wait().unwrap().success());
    // The load's mark outlived that tick: the next one grades its order.
    tick("2024-12-01 00:20:00");
    assert_eq!(p.scalar("SELECT grade FROM shop.users WHERE id = 1"), "SILVER");
    assert_eq!(p.scalar("SELECT count(*) FROM shop.grade_dirty"), "0");
});

sluice_test!(grading_a_warehouse_older_than_its_tables_says_what_to_do, |p| {
    p.own_database();
    p.copy_shipped();
    p.sql(&std::fs::read_to_string(p.path().join("sql/schema/warehouse.sql")).unwrap());
    p.sql("DROP TABLE shop.grade_state");
    // One try, without the DAG's retries.
    let out = p.sluice(&["tasks", "test", "grade_update", "update_grades", "--conf", "as_of=2024-12-01 00:00:00"]);
    assert_ne!(out.code, 0);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("predates incremental grading"), "{text}");
    assert!(text.contains("any run of ecommerce_etl does"), "{text}");
});

sluice_test!(grades_change_in_place_and_an_older_warehouse_is_brought_to_that, |p| {
    p.own_database();
    p.copy_shipped();
    let schema = std::fs::read_to_string(p.path().join("sql/schema/warehouse.sql")).unwrap();
    p.sql(&schema);
    // As a warehouse made by an older sluice: customers' pages filled to the
    // brim, and a key from the grade history to the customers.
    p.sql(
        "ALTER TABLE shop.users RESET (fillfactor);
         ALTER TABLE shop.grade_history ADD FOREIGN KEY (user_id) REFERENCES shop.users (id)",
    );
    p.sql(&schema);
    let users_options =
        || p.scalar("SELECT coalesce(reloptions::text, '') || ' ' || xmin FROM pg_class WHERE oid = 'shop.users'::regclass");
    let keys = || p.scalar("SELECT count(*) FROM pg_constraint WHERE conrelid = 'shop.grade_history'::regclass AND contype = 'f'");
    let done = users_options();
    assert!(done.starts_with("{fillfactor=70} "), "{done}");
    assert_eq!(keys(), "0");
    // Once done, applying the schema again alters nothing (no lock taken).
    p.sql(&schema);
    assert_eq!(users_options(), done);
    // A fill factor chosen by hand stays.
    p.sql("ALTER TABLE shop.users SET (fillfactor = 60)");
    p.sql(&schema);
    assert!(users_options().starts_with("{fillfactor=60} "));
    p.sql("ALTER TABLE shop.users SET (fillfactor = 70)");

    // A first grading of 2,000 customers, a quarter of whom move up (every
    // fourth): each new version of a customer's row stays on its page (a
    // HOT update), so that no index entry is written for it.
    p.sql(
        "SELECT setseed(0.5);
         INSERT INTO shop.users (id, name, signup_at) SELECT g, 'u' || g, '2024-01-01' FROM generate_series(1, 2000) g;
         INSERT INTO shop.orders (id, user_id, ordered_at, status, total_amount, item_count)
         SELECT g, 1 + 4 * (g % 500), timestamp '2024-06-01' + random() * interval '180 days', 'paid',
                10000 + floor(random() * 390000), 1
         FROM generate_series(1, 20000) g",
    );
    p.sluice(&["run", "grade_update", "--conf", "as_of=2024-12-01 00:00:00"]).ok();
    let changed: i64 = p.scalar("SELECT count(*) FROM shop.grade_history").parse().unwrap();
    assert_eq!(changed, 500);
    // The server's statistics arrive after the run's connection ends.
    let stat = |c: &str| -> i64 {
        p.scalar(&format!("SELECT {c} FROM pg_stat_user_tables WHERE relid = 'shop.users'::regclass")).parse().unwrap()
    };
    wait_until("the grading's updates in the statistics", Duration::from_secs(60), || stat("n_tup_upd") >= changed);
    let (updated, in_place) = (stat("n_tup_upd"), stat("n_tup_hot_upd"));
    assert_eq!(updated, changed);
    assert!(in_place * 100 >= updated * 95, "{in_place} of {updated} grade changes in place");
});
