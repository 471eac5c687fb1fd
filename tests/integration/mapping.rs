//! Dynamic task mapping (`expand`): one instance per element of a list
//! known at run time, each with its own tries and log; downstream tasks
//! wait for all of them and read their outputs as a list.

use crate::harness::{Project, wait_until};

/// (start, end) in seconds of every try of a mapped task's instances.
fn spans(p: &Project, run: i64, task: &str) -> Vec<(f64, f64)> {
    p.state_sql(&format!(
        "SELECT extract(epoch FROM started_at) || '|' || extract(epoch FROM ended_at) FROM task_tries
         WHERE run_id = {run} AND task_id LIKE '{task}[%' ORDER BY started_at"
    ))
    .iter()
    .map(|l| {
        let (a, b) = l.split_once('|').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    })
    .collect()
}

sluice_test!(expand_makes_one_instance_per_element_from_every_source, |p| {
    p.write("in/a.csv", "x\n1\n2\n");
    p.write("in/b.csv", "x\n1\n");
    p.write(
        "dags/mapped.yaml",
        r#"
params: { regions: [seoul, busan, jeju] }
tasks:
  - id: per_region
    type: shell
    expand: "{{ params.regions }}"
    max_active_tis_per_dagrun: 1
    command: "echo {{ map_index }}={{ item }} >> regions.txt; sleep 0.3"
  - id: per_file
    type: shell
    expand: { glob: "in/*.csv" }
    command: "wc -l < {{ item }} > {{ item }}.count"
  - id: read
    type: extract
    source: in/a.csv
    schema: { x: int }
  - id: per_column
    type: shell
    expand: { upstream: read, field: /dataset/schema }
    command: "echo column {{ item[0] }} {{ item[1] }}"
  - id: flaky
    type: shell
    expand: [1, 2]
    retries: 1
    retry_delay: 1s
    command: "test {{ ti.try_number }} -gt 1 || test {{ item }} = 1"
  - id: nothing
    type: shell
    expand: { glob: "none/*.csv" }
    command: "false"
  - id: after_nothing
    type: shell
    depends_on: [nothing]
    command: "false"
  - id: summary
    type: shell
    depends_on: [per_region, per_file, per_column, flaky]
    command: "echo {{ upstream.per_region | length }} {{ upstream.per_file | length }} > summary.txt"
"#,
    );
    let out = p.sluice(&["run", "mapped"]).ok();
    let run = p.last_run("mapped");
    let s = p.states(run);
    let want = [
        ("per_region", "success", 1),
        ("per_region[0]", "success", 1),
        ("per_region[1]", "success", 1),
        ("per_region[2]", "success", 1),
        ("per_file[0]", "success", 1),
        ("per_file[1]", "success", 1),
        ("per_column[0]", "success", 1),
        ("flaky[0]", "success", 1),
        ("flaky[1]", "success", 2),
        ("nothing", "skipped", 1),
        ("after_nothing", "skipped", 0),
        ("summary", "success", 1),
    ];
    for (task, state, tries) in want {
        assert_eq!(s.get(task).map(|(a, b)| (a.as_str(), *b)), Some((state, tries)), "{task}: {s:?}\n{}", out.all());
    }
    assert!(!s.contains_key("per_file[2]") && !s.contains_key("per_column[1]"), "{s:?}");
    let mut regions: Vec<String> = std::fs::read_to_string(p.path().join("regions.txt")).unwrap().lines().map(String::from).collect();
    regions.sort();
    assert_eq!(regions, vec!["0=seoul", "1=busan", "2=jeju"]);
    assert_eq!(std::fs::read_to_string(p.path().join("in/b.csv.count")).unwrap().trim(), "2");
    assert_eq!(std::fs::read_to_string(p.path().join("summary.txt")).unwrap().trim(), "3 2");
    // max_active_tis_per_dagrun: 1: the regions ran one at a time.
    let t = spans(&p, run, "per_region");
    assert_eq!(t.len(), 3);
    assert!(t.windows(2).all(|w| w[1].0 >= w[0].1 - 0.05), "{t:?}");
    // Each instance has its own log.
    let log = p.sluice(&["logs", &run.to_string(), "per_region", "--map-index", "2"]).ok().stdout;
    assert!(log.contains("echo 2=jeju"), "{log}");
    let log = p.sluice(&["logs", &run.to_string(), "flaky", "--map-index", "1", "--try", "1"]).ok().stdout;
    assert!(log.contains("try 1/2 failed"), "{log}");

    // Clearing the mapped task expands it again, from the list as it is now.
    std::fs::remove_file(p.path().join("in/b.csv")).unwrap();
    p.sluice(&["tasks", "clear", "mapped", "--run", &run.to_string(), "--task", "^per_file$", "--downstream"]).ok();
    p.sluice(&["run", "mapped", "--resume", &run.to_string()]).ok();
    let s = p.states(run);
    assert_eq!(s["per_file[0]"].0, "success");
    assert!(!s.contains_key("per_file[1]"), "the instance of the removed file is gone: {s:?}");
    wait_until("the run to finish", std::time::Duration::from_secs(5), || p.run_json(run)["run"]["state"] == "success");
});

sluice_test!(expand_over_something_that_is_not_a_list_fails_clearly, |p| {
    p.write(
        "dags/bad.yaml",
        "params: { one: x.csv }\ntasks:\n  - { id: each, type: shell, expand: \"{{ params.one }}\", command: 'true', retries: 3 }\n",
    );
    p.sluice(&["run", "bad"]).code(1);
    let run = p.last_run("bad");
    assert_eq!(p.states(run)["each"], ("failed".to_string(), 1), "a config error is not retried");
    let err = p.task_json(run, "each")["error"].as_str().unwrap().to_string();
    assert!(err.contains("expand: `{{ params.one }}` is a string, not a list"), "{err}");
    // Caught before the run where it can be: a plain string, an unknown upstream.
    p.write(
        "dags/bad.yaml",
        "tasks:\n  - { id: each, type: shell, expand: x.csv, command: 'true' }\n  - { id: other, type: shell, expand: { upstream: nope }, command: 'true' }\n",
    );
    let v = p.sluice(&["dags", "validate"]).code(78).stdout;
    assert!(v.contains("tasks[0].expand: `expand: x.csv` is not a list"), "{v}");
    assert!(v.contains("tasks[1].expand.upstream: `nope` is not a task of this DAG"), "{v}");
});
