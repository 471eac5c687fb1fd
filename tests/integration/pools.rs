//! Pools enforced by the state store across processes, priority_weight,
//! and a pool that does not exist.

use std::collections::BTreeMap;

/// (task, start, end) of every try in the given runs, in seconds.
fn tries(p: &crate::harness::Project, runs: &[i64]) -> Vec<(String, f64, f64)> {
    let ids = runs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
    p.state_sql(&format!(
        "SELECT task_id || '|' || extract(epoch FROM started_at) || '|' || extract(epoch FROM ended_at)
         FROM task_tries WHERE run_id IN ({ids}) ORDER BY started_at"
    ))
    .iter()
    .map(|l| {
        let v: Vec<&str> = l.split('|').collect();
        (v[0].to_string(), v[1].parse().unwrap(), v[2].parse().unwrap())
    })
    .collect()
}

/// The most tries running at one time. A try's start is its claim
/// transaction's start, which may precede by a fraction of a millisecond
/// the commit of the end that freed its slot: ends within 50 ms of a start
/// count as before it (the tries here last a second, so a real third try at
/// once would overlap by most of one).
fn most_at_once(tries: &[(String, f64, f64)]) -> usize {
    tries.iter().map(|(_, start, _)| tries.iter().filter(|(_, s, e)| s <= start && *e > start + 0.05).count()).max().unwrap_or(0)
}

sluice_test!(a_pool_of_two_never_runs_three_across_processes, |p| {
    p.write("config/pools.yaml", "two:\n  slots: 2\n  description: the warehouse's big loads\n");
    for dag in ["first", "second"] {
        p.write(
            &format!("dags/{dag}.yaml"),
            "default_args: { pool: two }\ntasks:\n  - { id: a, type: shell, command: 'sleep 1' }\n  - { id: b, type: shell, command: 'sleep 1' }\n  - { id: c, type: shell, command: 'sleep 1' }\n",
        );
    }
    // Two processes, each with room for all its tasks: only the pool holds them back.
    let mut one = p.command(&["run", "first"]).spawn().unwrap();
    let mut two = p.command(&["run", "second"]).spawn().unwrap();
    assert!(one.wait().unwrap().success() && two.wait().unwrap().success());
    let runs = [p.last_run("first"), p.last_run("second")];
    let all = tries(&p, &runs);
    assert_eq!(all.len(), 6);
    assert_eq!(most_at_once(&all), 2, "{all:?}");
    let list = p.sluice(&["pools", "list"]).ok().stdout;
    assert!(list.contains("| two  | 2     | 0       | 0       | the warehouse's big loads |"), "{list}");
    // `pools set` changes a pool in the store.
    p.sluice(&["pools", "set", "extra", "5"]).ok();
    assert!(p.sluice(&["pools", "list"]).ok().stdout.contains("| extra | 5"), "set");
    p.sluice(&["pools", "delete", "extra"]).ok();
    p.sluice(&["pools", "delete", "extra"]).code(78);
});

sluice_test!(priority_weight_orders_who_gets_a_free_slot, |p| {
    p.write("config/pools.yaml", "one: { slots: 1 }\n");
    p.write(
        "dags/ordered.yaml",
        r#"
default_args: { pool: one }
tasks:
  - { id: low, type: shell, command: "sleep 0.2", priority_weight: 1 }
  - { id: high, type: shell, command: "sleep 0.2", priority_weight: 10 }
  - { id: mid, type: shell, command: "sleep 0.2", priority_weight: 5 }
"#,
    );
    p.sluice(&["run", "ordered"]).ok();
    let order: Vec<String> = tries(&p, &[p.last_run("ordered")]).into_iter().map(|t| t.0).collect();
    assert_eq!(order, vec!["high", "mid", "low"]);
});

sluice_test!(a_task_in_a_pool_that_does_not_exist_fails_and_says_how_to_fix_it, |p| {
    p.write(
        "dags/lost.yaml",
        "tasks:\n  - { id: a, type: shell, command: 'true', pool: nosuch }\n  - { id: b, type: shell, command: 'true', depends_on: [a] }\n",
    );
    let v = p.sluice(&["dags", "validate"]).ok();
    assert!(v.stdout.contains("warning: tasks[0].pool: pool `nosuch` is not declared in config/pools.yaml"), "{}", v.stdout);
    p.sluice(&["run", "lost"]).code(1);
    let run = p.last_run("lost");
    let states: BTreeMap<String, (String, i64)> = p.states(run);
    assert_eq!((states["a"].0.as_str(), states["b"].0.as_str()), ("failed", "upstream_failed"));
    let err = p.task_json(run, "a")["error"].as_str().unwrap().to_string();
    assert!(err.contains("pool `nosuch` does not exist") && err.contains("sluice pools set nosuch N"), "{err}");
});
