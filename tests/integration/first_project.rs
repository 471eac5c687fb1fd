//! A new user's path: `sluice init`, then validate, run and test one task
//! of the example, as the README's "Your first project" says.

use crate::harness::Project;

fn in_dir(p: &Project, dir: &str, args: &[&str]) -> std::process::Output {
    p.command(args).current_dir(p.path().join(dir)).output().unwrap()
}

sluice_test!(init_makes_a_project_that_validates_runs_and_tests_a_task, |p| {
    let out = p.sluice(&["init", "first"]).ok();
    for f in
        ["dags/example.yaml", "config/connections.yaml", "config/variables.yaml", "sql/daily_totals.sql", ".gitignore", "dag.schema.json"]
    {
        assert!(p.path().join("first").join(f).exists(), "{f} missing; {}", out.stdout);
    }
    let v = in_dir(&p, "first", &["dags", "validate"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));

    let run = in_dir(&p, "first", &["run", "example"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("12 rows read from 1 file: 11 loaded, 1 quarantined, 0 skipped (1 unparsable value)"), "{stdout}");
    assert!(stdout.contains("example: 4 success"), "{stdout}");

    // Testing a task that reads an upstream dataset: without a run, the
    // error says how; with `--run`, it reads that run's data.
    let alone = in_dir(&p, "first", &["tasks", "test", "example", "daily_totals"]);
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success() && err.contains("--run RUN_ID"), "{err}");
    let run_id = p.last_run("example").to_string();
    let tested = in_dir(&p, "first", &["tasks", "test", "example", "daily_totals", "--run", &run_id]);
    assert!(tested.status.success(), "{}", String::from_utf8_lossy(&tested.stderr));
    assert!(String::from_utf8_lossy(&tested.stdout).contains("\"rows\": 4"));

    // A second init into the same folder refuses rather than overwrite.
    let again = p.sluice(&["init", "first"]);
    assert_eq!(again.code, 78, "{}", again.all());
});
